"""The ``smoothguard`` command line: one module per sub-command.

Each module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``;
``COMMON_OPTIONS = False`` where the command has no use for --device, --seed and --threads
(analyze and report read files and draw plots: those options would be accepted and inert).
"""

from __future__ import annotations

import argparse
import importlib
import sys

import smoothguard

# (name, module): the order is the order of ``smoothguard --help``.
COMMANDS = [
    ("demo", "smoothguard.cli.demo"),
    ("train", "smoothguard.cli.train"),
    ("train-denoiser", "smoothguard.cli.train_denoiser"),
    ("certify", "smoothguard.cli.certify"),
    ("predict", "smoothguard.cli.predict"),
    ("attack", "smoothguard.cli.attack"),
    ("verify", "smoothguard.cli.verify"),
    ("evaluate", "smoothguard.cli.evaluate"),
    ("smooth-eval", "smoothguard.cli.smooth_eval"),
    ("analyze", "smoothguard.cli.analyze"),
    ("report", "smoothguard.cli.report"),
    ("run", "smoothguard.cli.run"),
    ("info", "smoothguard.cli.info"),
    ("import-model", "smoothguard.cli.import_model"),
    ("serve", "smoothguard.cli.serve"),
]


class CLIError(Exception):
    """A user error: printed as ``smoothguard: error: ...`` with exit code 2."""


class _CommandListFormatter(argparse.HelpFormatter):
    """Puts every command's help on the command's own line: argparse sizes the column
    from the sub-command names without their extra indent, so the longest names
    (train-denoiser) would otherwise wrap."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)
        self._action_max_length = 20


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" only where it says something: not for options without a
    default (None: the help text says what happens then), flags, or a help text that
    already states its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text.lower():
            return text
        return super()._get_help_string(action)


class _CommandParser(argparse.ArgumentParser):
    """A sub-command's parser: an unknown option is reported with this command's usage and
    the closest options it does take."""

    def unknown(self, extras: list[str]) -> None:
        import difflib

        options = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
        hints = []
        for arg in extras:
            flag = arg.split("=", 1)[0]
            close = difflib.get_close_matches(flag, options, n=2, cutoff=0.6) if flag.startswith("-") else []
            hints.append(f"{arg}" + (f" (did you mean {' or '.join(close)}?)" if close else ""))
        self.error("unrecognized arguments: " + ", ".join(hints))


def takes_common_options(mod) -> bool:
    """Whether a command module takes --device, --seed and --threads."""
    return bool(getattr(mod, "COMMON_OPTIONS", True))


def build_parser() -> argparse.ArgumentParser:
    from smoothguard.cli.common import common_parent

    parser = argparse.ArgumentParser(
        prog="smoothguard", allow_abbrev=False,
        description="Adversarial robustness for PyTorch: attack, train and certify models "
        "(randomized smoothing). All eps/sigma/radius values are in [0,1] pixel units.",
        formatter_class=_CommandListFormatter,
    )
    parser.add_argument("--version", action="version", version=f"smoothguard {smoothguard.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_CommandParser)
    parent = common_parent()
    for name, modname in COMMANDS:
        mod = importlib.import_module(modname)
        # allow_abbrev=False: --alp is not silently --alpha (a later option could make it ambiguous)
        common = takes_common_options(mod)
        p = sub.add_parser(
            name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP), parents=[parent] if common else [],
            formatter_class=_DefaultsFormatter, allow_abbrev=False,
        )
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run, _common=common)
    return parser


def main(argv: list[str] | None = None) -> int:
    from smoothguard.cli.common import apply_common
    from smoothguard.data import DataError
    from smoothguard.models import CheckpointError

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extras = parser.parse_known_args(argv)
    if extras:  # reported by the sub-command, with its usage and the closest options it takes
        command_parser = parser._subparsers._group_actions[0].choices.get(getattr(args, "command", None))
        if command_parser is None:
            parser.error("unrecognized arguments: " + " ".join(extras))
        command_parser.unknown(extras)
    args.argv = argv  # recorded in checkpoints and result files so a reader can rerun
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        if args._common:
            apply_common(args)
        return int(args._run(args) or 0)
    except (CLIError, DataError, CheckpointError, ValueError, FileNotFoundError) as exc:
        # ContractError, OutputError, APIError, ResultFileError ... are ValueErrors: the contract's messages
        print(f"smoothguard {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an output or input the file system refuses (permission, disk full, ...)
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"smoothguard {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # a command may say what a rerun does (train: --resume)
        print(f"smoothguard {args.command}: interrupted ({exc or 'results written so far are kept; rerun to resume'})",
              file=sys.stderr)
        return 130
    finally:
        from smoothguard.distributed import shutdown

        shutdown()


if __name__ == "__main__":
    sys.exit(main())
