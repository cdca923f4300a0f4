"""The command line's conventions, declared once: output options (``--out`` for a file,
``--out-dir`` for a folder), ``--max`` for a count of images, the default ``--data``, and
the old spellings that keep working for one release with a deprecation message on stderr.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

#: ``--data`` of every command that reads test images: the 500 Fashion-MNIST test images
#: bundled in the package, so each command runs right after install.
DEFAULT_DATA = "demo"
#: ``--data`` of the training commands: the bundled set has no training split, so they
#: default to the full Fashion-MNIST (``apt-get install dataset-fashion-mnist``).
DEFAULT_TRAIN_DATA = "fashion-mnist"
#: Commands that train (and so read a training split).
TRAINING_COMMANDS = ("train", "train-denoiser")

#: The release after which the deprecated spellings below are removed.
REMOVED_IN = "0.2"

#: (command, old spelling) -> the spelling to use instead. Every entry is an option that
#: still parses, prints a deprecation message and fills the new option's value.
DEPRECATED: dict[tuple[str, str], str] = {
    ("train", "--out"): "--out-dir",
    ("train-denoiser", "--out"): "--out-dir",
    ("analyze", "--out-table"): "--out",
    ("report", "-o"): "--out",
    ("report", "--output"): "--out",
    ("demo", "--count"): "--max",
}


class _Deprecated(argparse.Action):
    """Stores the value under the new option's dest and says on stderr which spelling to use."""

    def __init__(self, option_strings, dest, new: str = "", command: str = "", **kwargs: Any) -> None:
        self.new, self.command = new, command
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"smoothguard {self.command}: warning: {option_string} is deprecated and will be removed in "
              f"{REMOVED_IN}; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_deprecated(parser: argparse.ArgumentParser | argparse._ArgumentGroup, command: str, new_dest: str,
                   **kwargs: Any) -> None:
    """Add the old spellings that :data:`DEPRECATED` lists for ``command`` and that stand for
    the option with ``new_dest`` (hidden from --help; ``kwargs``: its ``type`` etc.)."""
    for (cmd, old), new in DEPRECATED.items():
        if cmd == command and new.lstrip("-").replace("-", "_") == new_dest:
            parser.add_argument(old, dest=new_dest, action=_Deprecated, new=new, command=command,
                                default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)
