"""``smoothguard run``: run an experiment file's steps (the runner: :mod:`smoothguard.runner`).

This module hands the runner its step types (:func:`step_commands`: every sub-command but
demo, info, run and serve, with its parser, ``run``, option checks and outputs) and turns
the command line into :class:`~smoothguard.runner.RunOptions`.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from smoothguard.evaluation.formats import ATTACK, CERTIFY, EVALUATE, PREDICT, SMOOTH_EVAL, VERIFY, ResultFormat
from smoothguard.runner import CommandSet, OutputSpec, RunOptions, StepCommand, run_experiment
from smoothguard.runner import load_experiment as _load_experiment

HELP = "run an experiment file (TOML): train/certify/attack/evaluate/analyze/report steps, resumable"
DESCRIPTION = (
    "Runs the steps of EXPERIMENT.toml in dependency order into a run folder (default runs/<file stem>). "
    "All settings are validated before anything runs. A step whose outputs are complete and whose "
    "settings and inputs have not changed is skipped; a step whose settings changed is rerun from "
    "scratch; an interrupted step resumes. --threads and --device apply to steps that do not set them."
)

#: Sub-commands that cannot be steps.
EXCLUDED_COMMANDS = ("demo", "info", "run", "serve")


def _result_file(fmt: ResultFormat, option: str = "out") -> OutputSpec:
    """A command that writes one result file of ``fmt`` with ``--out``."""
    return OutputSpec({option: "{step_dir}/" + fmt.file}, fmt.file, None, fmt.complete)


#: Where each step type writes (option dest -> path template), the file ``@TYPE.NAME``
#: resolves to, its resume flag and the files a finished step holds (the result formats'
#: own rule, from smoothguard.evaluation.formats). Commands not listed write with
#: --out-dir (else --out) into the step folder.
OUTPUTS: dict[str, OutputSpec] = {
    "train": OutputSpec({"out_dir": "{step_dir}"}, "model.pt", ("resume", "checkpoint.pt"), ("model.pt", "log.tsv")),
    "train-denoiser": OutputSpec({"out_dir": "{step_dir}"}, "model.pt", ("resume", "checkpoint.pt"), ("model.pt",)),
    "certify": _result_file(CERTIFY),
    "predict": _result_file(PREDICT),
    "attack": _result_file(ATTACK),
    "verify": _result_file(VERIFY),
    "evaluate": OutputSpec({"out_dir": "{step_dir}"}, "", None, EVALUATE.complete),
    "smooth-eval": OutputSpec({"out_dir": "{step_dir}"}, SMOOTH_EVAL.file, None, SMOOTH_EVAL.complete),
    "analyze": OutputSpec({"out": "{step_dir}/table.md", "plot": "{step_dir}/certified_accuracy"},
                          "table.md", None, ("table.md",)),
    "report": OutputSpec({"run_dir": "{run_dir}", "out": "{step_dir}/report.html"}, "report.html", None,
                         ("report.html",)),
}


def _validator(name: str, mod):
    """The option checks of a command that need no model or data (its ``validate``, if any)."""
    if callable(getattr(mod, "validate", None)):
        return mod.validate
    return None


def step_commands() -> CommandSet:
    """The sub-commands as step types of the runner, in ``smoothguard --help`` order."""
    from smoothguard.cli import COMMANDS, CLIError, takes_common_options
    from smoothguard.cli.common import apply_common, common_parent
    from smoothguard.data import DataError
    from smoothguard.models import CheckpointError

    table = {}
    for name, modname in COMMANDS:
        if name in EXCLUDED_COMMANDS:
            continue
        mod = importlib.import_module(modname)
        table[name] = StepCommand(name, mod.add_arguments, mod.run, _validator(name, mod), OUTPUTS.get(name),
                                  takes_common_options(mod))
    return CommandSet(table, common_parent, apply_common,
                      (CLIError, DataError, CheckpointError, ValueError, FileNotFoundError))


def load_experiment(path: str | Path, run_dir: str | Path | None = None):
    """Load and validate an experiment file against the CLI's commands (nothing is written)."""
    return _load_experiment(path, step_commands(), run_dir)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", metavar="EXPERIMENT.toml", help="the experiment file")
    p.add_argument("--run-dir", default=None,
                   help="run folder (default: [experiment] run_dir, else runs/<experiment file stem>)")
    p.add_argument("--subprocess", action="store_true",
                   help="run each step in its own Python process (isolation; costs the torch import per step)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate, print each step's command line and what would happen; run nothing")
    p.add_argument("--force", default=None, metavar="STEP[,STEP]",
                   help="rerun these steps from scratch (ids such as certify.gauss025), and what depends on them")


def _device_text(argv: list[str]) -> str:
    """--device as the user wrote it (the common options already resolved it into a torch.device)."""
    for i, a in enumerate(argv):
        if a.startswith("--device="):
            return a.split("=", 1)[1]
        if a == "--device" and i + 1 < len(argv):
            return argv[i + 1]
    return "auto"


def options(args: argparse.Namespace) -> RunOptions:
    """The typed options of ``smoothguard run``."""
    force = tuple(x.strip() for x in (args.force or "").split(",") if x.strip())
    return RunOptions(experiment=args.experiment, run_dir=args.run_dir, subprocess=args.subprocess,
                      dry_run=args.dry_run, force=force, threads=args.threads,
                      device=_device_text(list(getattr(args, "argv", []))))


def run(args: argparse.Namespace) -> int:
    return run_experiment(options(args), step_commands())
