"""The experiment runner: an experiment file (TOML) of steps, each a sub-command with its
options, validated as a whole and run in dependency order into a resumable run folder.

The runner imports nothing above it: the command line hands it the step types as a
:class:`CommandSet` (``smoothguard.cli.run.step_commands()``).

>>> from smoothguard.cli.run import step_commands
>>> from smoothguard.runner import RunOptions, load_experiment, run_experiment
>>> exp = load_experiment("experiments/quick.toml", step_commands())   # validated plan
>>> run_experiment(RunOptions("experiments/quick.toml"), step_commands())
"""

from smoothguard.runner.commands import CommandSet, OutputSpec, StepCommand
from smoothguard.runner.execute import MANIFEST, RUN_SUMMARY, RunOptions, decide, run_experiment, step_inputs
from smoothguard.runner.experiment import Experiment, ExperimentError, Step, load_experiment, load_toml

__all__ = ["CommandSet", "Experiment", "ExperimentError", "MANIFEST", "OutputSpec", "RUN_SUMMARY", "RunOptions",
           "Step", "StepCommand", "decide", "load_experiment", "load_toml", "run_experiment", "step_inputs"]
