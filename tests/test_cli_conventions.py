"""Conventions every sub-command's parser keeps (walked over all of them): no help line
contradicts the default it states, abbreviated options are refused, and an unknown
option is reported by the sub-command with the closest options it takes."""

import pytest

from smoothguard.cli import COMMANDS, build_parser, main

PARSER = build_parser()
SUBPARSERS = PARSER._subparsers._group_actions[0].choices


@pytest.mark.parametrize("command", [name for name, _ in COMMANDS])
def test_help_never_says_default_none(command):
    text = SUBPARSERS[command].format_help()
    assert "(default: None)" not in text
    assert "(default: False)" not in text


@pytest.mark.parametrize("command", [name for name, _ in COMMANDS])
def test_abbreviated_options_are_refused(command):
    p = SUBPARSERS[command]
    longs = [o for a in p._actions for o in a.option_strings if o.startswith("--") and len(o) > 6
             and a.nargs != 0 and not a.required]
    if not longs:
        pytest.skip("no long option with a value")
    # a unique prefix of a real option: argparse's default would take it silently
    flag = longs[0]
    prefix = flag[:-2]
    assert prefix not in {o for a in p._actions for o in a.option_strings}
    with pytest.raises(SystemExit) as exc:
        p.parse_args([prefix, "1"])
    assert exc.value.code == 2


def test_unknown_option_is_reported_by_the_sub_command_with_a_suggestion(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["certify", "--alhpa", "0.01"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage: smoothguard certify" in err
    assert "unrecognized arguments: --alhpa (did you mean --alpha" in err
    with pytest.raises(SystemExit):
        main(["attack", "--step", "3"])  # once an abbreviation of --steps / --step-size, now refused
    err = capsys.readouterr().err
    assert "usage: smoothguard attack" in err and "did you mean" in err
