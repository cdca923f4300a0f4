"""What the runner needs to know of the commands its steps run, handed to it by the
command line (:mod:`smoothguard.cli.run`), so that the runner imports nothing above it.

A step type is a :class:`StepCommand`: how its options are declared (``add_arguments``,
the same function that builds the command-line parser), the function that runs it
(``run(namespace) -> exit code``), its option checks that need no model or data
(``validate``) and where it writes (:class:`OutputSpec`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable


class ArgError(Exception):
    """An option the command's parser refuses (raised instead of printing usage and exiting)."""


class RaisingParser(argparse.ArgumentParser):
    """An argparse parser that raises :class:`ArgError` instead of printing usage and exiting."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise ArgError(message)


@dataclass(frozen=True)
class OutputSpec:
    """Where a step type writes. ``options``: option dest -> path template
    (``{step_dir}``, ``{run_dir}``); ``primary``: the path ``@TYPE.NAME`` resolves to,
    relative to the step folder ("" = the folder); ``resume``: (flag dest, file in the
    step folder) -- the flag is passed when the file exists (train's ``--resume``);
    ``complete``: files that a finished step must have."""

    options: dict[str, str]
    primary: str = ""
    resume: tuple[str, str] | None = None
    complete: tuple[str, ...] = ()


@dataclass(frozen=True)
class StepCommand:
    """One step type: a sub-command as the runner sees it."""

    name: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    validate: Callable[[argparse.Namespace], object] | None = None
    outputs: OutputSpec | None = None  # None: --out-dir, else --out, pointed at the step folder
    common: bool = True  # takes the common options (--device, --seed, --threads) and their preparation


@dataclass(frozen=True)
class CommandSet:
    """The step types (in ``smoothguard --help`` order) and what every step shares:
    ``common_parent`` (the options every command takes: --device, --seed, --threads),
    ``prepare`` (applies them before a step runs in this process) and ``user_errors``
    (exceptions that fail a step with their message instead of stopping the runner)."""

    commands: dict[str, StepCommand]
    common_parent: Callable[[], argparse.ArgumentParser]
    prepare: Callable[[argparse.Namespace], None] = lambda args: None
    user_errors: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError)
    program: str = "smoothguard"

    def __getitem__(self, name: str) -> StepCommand:
        return self.commands[name]

    def names(self) -> list[str]:
        return list(self.commands)

    def parser(self, name: str) -> argparse.ArgumentParser:
        """The command's own parser (options as on the command line), raising on errors."""
        parents = [self.common_parent()] if self.commands[name].common else []
        p = RaisingParser(prog=f"{self.program} {name}", parents=parents, add_help=False)
        self.commands[name].add_arguments(p)
        return p

    def output_spec(self, name: str, parser: argparse.ArgumentParser | None = None) -> OutputSpec:
        spec = self.commands[name].outputs
        if spec is not None:
            return spec
        dests = {a.dest for a in (parser or self.parser(name))._actions}
        if "out_dir" in dests:
            return OutputSpec({"out_dir": "{step_dir}"})
        if "out" in dests:
            return OutputSpec({"out": "{step_dir}"})
        return OutputSpec({})
