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


# --------------------------------------------------------------------------- issue 19: one spelling per idea

from smoothguard.cli._conventions import DEPRECATED, REMOVED_IN  # noqa: E402


def _visible(p):
    """The options --help shows (deprecated spellings are hidden)."""
    import argparse

    return [o for a in p._actions if a.help != argparse.SUPPRESS for o in a.option_strings]


@pytest.mark.parametrize("command", [name for name, _ in COMMANDS])
def test_outputs_are_out_for_a_file_and_out_dir_for_a_folder(command):
    import argparse

    p = SUBPARSERS[command]
    shown = _visible(p)
    assert not {"-o", "--output", "--out-table", "--output-dir", "--outdir"} & set(shown)
    assert all(o in ("--out", "--out-dir") for o in shown if o.startswith("--out")), shown
    for a in p._actions:
        if a.help == argparse.SUPPRESS:
            continue
        if "--out-dir" in a.option_strings:
            assert "folder" in a.help.lower(), (command, a.help)
        if "--out" in a.option_strings:
            assert "folder" not in a.help.lower().split("(")[0], (command, a.help)  # a file, not a folder


@pytest.mark.parametrize("command", [name for name, _ in COMMANDS])
def test_a_count_of_images_is_max(command):
    shown = set(_visible(SUBPARSERS[command]))
    assert not {"--count", "--n-images", "--num-images", "--limit"} & shown
    if "--max-images" in shown:  # the torchrun spelling is the same option as --max
        p = SUBPARSERS[command]
        assert next(a for a in p._actions if "--max-images" in a.option_strings).option_strings[0] == "--max"


def test_every_deprecated_spelling_is_hidden_and_names_an_option_that_exists():
    for (command, old), new in DEPRECATED.items():
        p = SUBPARSERS[command]
        assert old in {o for a in p._actions for o in a.option_strings}, (command, old)
        assert old not in _visible(p) and old not in p.format_help().replace(new, ""), (command, old)
        assert new in _visible(p), (command, new)


def _positional(command, tmp_path):
    return {"analyze": [str(tmp_path / "x.tsv")], "report": [str(tmp_path)], "run": ["x.toml"],
            "import-model": [], "serve": []}.get(command, [])


@pytest.mark.parametrize("command,old", list(DEPRECATED))
def test_old_spellings_still_parse_into_the_new_option_with_a_message_on_stderr(command, old, tmp_path, capsys):
    new = DEPRECATED[(command, old)]
    p = SUBPARSERS[command]
    dest = next(a.dest for a in p._actions if new in a.option_strings)
    value = "7" if new == "--max" else str(tmp_path / "target")
    args, extras = p.parse_known_args(_positional(command, tmp_path) + [old, value])
    assert not extras
    assert str(getattr(args, dest)) == value
    err = capsys.readouterr().err
    assert f"{old} is deprecated" in err and f"use {new}" in err and REMOVED_IN in err
    # the new spelling says nothing
    args, _ = p.parse_known_args(_positional(command, tmp_path) + [new, value])
    assert str(getattr(args, dest)) == value
    assert "deprecated" not in capsys.readouterr().err


CERTIFY_ROWS = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\t0.1\n1\t2\t-1\t0.0\t0\t0.1\n"


def test_analyze_out_table_still_writes_the_table_and_warns(tmp_path, capsys):
    tsv = tmp_path / "c.tsv"
    tsv.write_text(CERTIFY_ROWS)
    assert main(["analyze", str(tsv), "--out-table", str(tmp_path / "old.md")]) == 0
    assert "--out-table is deprecated" in capsys.readouterr().err
    assert main(["analyze", str(tsv), "--out", str(tmp_path / "new.md")]) == 0
    assert "deprecated" not in capsys.readouterr().err
    assert (tmp_path / "old.md").read_text() == (tmp_path / "new.md").read_text()
    assert "| 50.0" in (tmp_path / "new.md").read_text()  # certified at r = 0: 1 of 2 (the other abstains)


def test_train_without_out_dir_is_refused_before_any_work(capsys):
    assert main(["train", "--data", "demo", "--epochs", "1"]) == 2
    assert "--out-dir is required" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["analyze", "report"])
def test_commands_without_a_device_take_no_device_seed_or_threads(command, tmp_path, capsys):
    # they read files and draw plots: the options would be accepted and do nothing
    shown = set(_visible(SUBPARSERS[command]))
    assert not {"--device", "--seed", "--threads"} & shown
    with pytest.raises(SystemExit) as exc:
        main([command, str(tmp_path), "--threads", "2"])
    assert exc.value.code == 2
    assert f"usage: smoothguard {command}" in capsys.readouterr().err


def test_every_other_command_takes_the_common_options():
    for name, _ in COMMANDS:
        if name not in ("analyze", "report"):
            assert {"--device", "--seed", "--threads"} <= set(_visible(SUBPARSERS[name])), name


def test_data_defaults_to_the_bundled_set_except_where_a_training_split_is_needed():
    from smoothguard.cli._conventions import DEFAULT_DATA, DEFAULT_TRAIN_DATA, TRAINING_COMMANDS
    from smoothguard.data import load_dataset

    seen = {}
    for name, _ in COMMANDS:
        act = next((a for a in SUBPARSERS[name]._actions if "--data" in a.option_strings), None)
        if act is not None:
            seen[name] = act.default
    assert {n for n, d in seen.items() if d != DEFAULT_DATA} == set(TRAINING_COMMANDS) & set(seen)
    assert all(seen[n] == DEFAULT_TRAIN_DATA for n in TRAINING_COMMANDS)
    assert len(load_dataset(DEFAULT_DATA, "test")) == 500  # runs right after install, no files needed
    with pytest.raises(ValueError, match="only split 'test'"):  # why training cannot default to it
        load_dataset(DEFAULT_DATA, "train")
