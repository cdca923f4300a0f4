"""Experiment files: loading, validating and planning the steps (``smoothguard run``).

An experiment file (TOML) names steps; each step is one ``smoothguard`` sub-command with
its options, written as a table ``[COMMAND.NAME]`` whose keys are the command's long
options with ``_`` for ``-`` (``noise_sd = 0.25`` is ``--noise-sd 0.25``)::

    [experiment]
    name = "quick"
    [defaults]                      # applied to every step whose command has the option
    threads = 1
    [train.gauss025]
    data = "fashion-mnist"
    noise_sd = 0.25
    epochs = 1
    [certify.gauss025]
    model = "@train.gauss025"       # the output of another step (here its model.pt)
    sigma = 0.25
    [analyze.all]
    files = ["@certify.*"]          # every certify step, in file order
    [report]                        # a single step of a type needs no name

Every option is parsed by the command's own argparse parser and checked by its own
``validate(args)`` (where the command has one) when the file is loaded, so an experiment
file is validated exactly like the command line, before any step runs. Output options
(``--out``, ``--out-dir``, ...) are set by the runner: every step writes into its own
folder ``RUN_DIR/COMMAND/NAME/``.

The step types come from a :class:`~smoothguard.runner.commands.CommandSet` that the
command line builds (:func:`smoothguard.cli.run.step_commands`: every command except
demo, info, run and serve): the runner itself imports nothing above it. A command's
outputs are its ``StepCommand.outputs`` (option dest -> path template with
``{step_dir}`` and ``{run_dir}``, the file ``@COMMAND.NAME`` resolves to, the resume flag,
the files a finished step holds), else ``--out-dir`` or ``--out`` is pointed at the step
folder.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smoothguard.runner.commands import ArgError, CommandSet, OutputSpec

#: Top-level tables that are not steps.
RESERVED_TABLES = ("experiment", "defaults")
#: Keys of the ``[experiment]`` table.
EXPERIMENT_KEYS = ("name", "description", "run_dir")
#: Step keys read by the runner itself (not passed to the command).
RUNNER_KEYS = ("after",)
#: Options left out of a step's settings hash: they change speed, not results.
NON_RESULT_OPTIONS = ("threads", "device", "workers")


class ExperimentError(ValueError):
    """A problem in an experiment file; the message names the file, the TOML path of the
    key and the allowed values."""


def load_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file with ``tomllib`` (Python >= 3.11) or ``tomli`` (Python 3.10)."""
    try:
        import tomllib  # type: ignore[import-not-found]
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise ExperimentError("reading experiment files needs Python >= 3.11 (tomllib) or the tomli package "
                                  "on Python 3.10: pip install tomli") from None
    path = Path(path)
    if not path.is_file():
        raise ExperimentError(f"{path}: no such experiment file")
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ExperimentError(f"{path}: not valid TOML: {exc}") from None


# --------------------------------------------------------------------------- steps


@dataclass
class Step:
    """One planned step: ``command`` with ``options`` (TOML key -> value, defaults merged),
    ``refs`` (step ids it reads), and after :meth:`Experiment.resolve` the ``argv``."""

    command: str
    name: str
    options: dict[str, Any]
    where: str  # TOML path, e.g. "certify.gauss025"
    after: list[str] = field(default_factory=list)
    refs: list[str] = field(default_factory=list)
    spec: OutputSpec | None = None

    @property
    def id(self) -> str:
        return f"{self.command}.{self.name}" if self.name else self.command

    @property
    def deps(self) -> list[str]:
        return list(dict.fromkeys(self.refs + self.after))

    def settings_hash(self) -> str:
        settings = {k: v for k, v in self.options.items() if k not in NON_RESULT_OPTIONS}
        blob = json.dumps({"command": self.command, "options": settings}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()


_REF = re.compile(r"^@(?P<type>[A-Za-z][\w-]*)(?:\.(?P<name>\*|[\w-]+))?(?P<sub>/.*)?$")


@dataclass
class Experiment:
    path: Path
    name: str
    description: str
    run_dir: Path
    steps: list[Step]  # in execution (dependency) order
    raw: dict[str, Any]
    commands: CommandSet | None = None  # the step types it was validated against

    def step(self, step_id: str) -> Step:
        return next(s for s in self.steps if s.id == step_id)

    def step_dir(self, step: Step) -> Path:
        return self.run_dir / step.command / step.name if step.name else self.run_dir / step.command

    def primary_output(self, step: Step) -> Path:
        d = self.step_dir(step)
        return d / step.spec.primary if step.spec and step.spec.primary else d

    def _resolve_value(self, value: Any) -> Any:
        if isinstance(value, str) and value.startswith("@"):
            m = _REF.match(value)
            assert m is not None  # checked at load time
            targets = self._targets(m)
            paths = [str(self.step_dir(t) / m.group("sub")[1:]) if m.group("sub") else str(self.primary_output(t))
                     for t in targets]
            return paths if m.group("name") == "*" else paths[0]
        if isinstance(value, list):
            out: list[Any] = []
            for v in value:
                r = self._resolve_value(v)
                out.extend(r if _is_wildcard(v) else [r])
            return out
        return value

    def _targets(self, m: re.Match) -> list[Step]:
        typ, name = m.group("type"), m.group("name")
        if name == "*":
            return [s for s in self.steps if s.command == typ]
        sid = f"{typ}.{name}" if name else typ
        return [s for s in self.steps if s.id == sid]

    def argv(self, step: Step, resume: bool = False, extra: dict[str, Any] | None = None) -> list[str]:
        """The command line of ``step`` (without the leading command name), with
        references replaced by paths and the runner's output options added; ``extra``:
        options (dest -> value) used where the step does not set them."""
        opts = {k: self._resolve_value(v) for k, v in step.options.items()}
        parser = self.commands.parser(step.command)
        dests = {a.dest for a in parser._actions}
        for k, v in (extra or {}).items():
            if k in dests:  # --threads / --device of the run, for the steps whose command takes them
                opts.setdefault(k, v)
        for dest, template in step.spec.options.items():
            opts[dest] = template.format(step_dir=self.step_dir(step), run_dir=self.run_dir)
        if step.spec.resume and resume:
            opts[step.spec.resume[0]] = True
        return options_to_argv(parser, opts, step.where)


def _is_wildcard(v: Any) -> bool:
    m = _REF.match(v) if isinstance(v, str) else None
    return bool(m and m.group("name") == "*")


def _suggest(word: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(word, allowed, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _action_for(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """dest -> the option that sets it (a hidden old spelling of the same dest, kept for one
    release, is never the one a step's argv uses)."""
    out: dict[str, argparse.Action] = {}
    for a in parser._actions:
        if a.dest in ("help", argparse.SUPPRESS):
            continue
        if a.dest not in out or out[a.dest].help == argparse.SUPPRESS:
            out[a.dest] = a
    return out


def _fmt_scalar(v: Any) -> str:
    if isinstance(v, float):
        return repr(v)
    return str(v)


def options_to_argv(parser: argparse.ArgumentParser, opts: dict[str, Any], where: str) -> list[str]:
    """Map {dest: value} to the argv the parser understands. Booleans become flags
    (``--x`` / ``--no-x`` for optional booleans), lists become repeated positionals or
    comma-separated values, numbers their text."""
    actions = _action_for(parser)
    argv: list[str] = []
    positional: list[str] = []
    for dest, value in opts.items():
        act = actions[dest]
        if not act.option_strings:
            positional.extend(_fmt_scalar(v) for v in (value if isinstance(value, list) else [value]))
            continue
        opt = next((o for o in act.option_strings if o.startswith("--")), act.option_strings[0])
        if isinstance(act, argparse.BooleanOptionalAction):
            if not isinstance(value, bool):
                raise ExperimentError(f"[{where}] {dest}: expected true or false, got {value!r}")
            argv.append(opt if value else "--no-" + opt[2:])
        elif act.nargs == 0:  # store_true / store_false / store_const
            if not isinstance(value, bool):
                raise ExperimentError(f"[{where}] {dest}: expected true or false (a flag), got {value!r}")
            if value == bool(act.const if act.const is not None else True):
                argv.append(opt)
        elif isinstance(value, bool):
            raise ExperimentError(f"[{where}] {dest}: expected a value, not {str(value).lower()}")
        elif isinstance(value, list):
            if act.nargs in ("+", "*") or isinstance(act.nargs, int):
                argv += [opt] + [_fmt_scalar(v) for v in value]
            else:
                argv += [opt, ",".join(_fmt_scalar(v) for v in value)]
        elif isinstance(value, dict):
            raise ExperimentError(f"[{where}] {dest}: expected a value, got a table")
        else:
            argv += [opt, _fmt_scalar(value)]
    return argv + (["--"] + positional if positional else [])


_ARG_RE = re.compile(r"argument (?P<opts>[^:]+): (?P<msg>.*)", re.S)


def _arg_error_message(message: str, where: str, parser: argparse.ArgumentParser) -> str:
    m = _ARG_RE.match(message)
    if not m:
        return f"[{where}] {message}"
    first = m.group("opts").split("/")[0].strip()
    dest = next((a.dest for a in parser._actions if first in a.option_strings or a.dest == first
                 or (a.metavar and str(a.metavar) == first)), first.lstrip("-").replace("-", "_"))
    msg = m.group("msg").replace("invalid choice:", "invalid choice").replace("(choose from", "; allowed:")
    msg = msg.rstrip(")") if "; allowed:" in msg else msg
    return f"[{where}] {dest}: {msg}"


def _translate_option_names(message: str, parser: argparse.ArgumentParser) -> str:
    """Name TOML keys instead of command-line options in a validation message."""
    for a in parser._actions:
        for o in sorted(a.option_strings, key=len, reverse=True):
            if o.startswith("--"):
                message = re.sub(re.escape(o) + r"(?![\w-])", f"{a.dest} ({o})", message)
    return message


def load_experiment(path: str | Path, commands: CommandSet, run_dir: str | Path | None = None) -> Experiment:
    """Load and fully validate an experiment file against the step types ``commands``.
    Nothing is written.

    Raises :class:`ExperimentError` naming the TOML path of the offending key and the
    allowed values: unknown tables or keys, bad values (parsed and checked by each
    command's own parser and validator), references to missing steps, cycles.
    """
    path = Path(path)
    raw = load_toml(path)
    step_types = commands.names()
    allowed_tables = list(RESERVED_TABLES) + step_types
    exp = raw.get("experiment", {})
    defaults = raw.get("defaults", {})
    for key, value in raw.items():
        if key not in allowed_tables:
            raise ExperimentError(f"{path}: unknown table [{key}]{_suggest(key, allowed_tables)}; allowed: "
                                  f"{', '.join(allowed_tables)}")
        if not isinstance(value, dict):
            raise ExperimentError(f"{path}: '{key}' must be a table ([{key}] or [{key}.NAME]), got {value!r}")
    for key in exp:
        if key not in EXPERIMENT_KEYS:
            raise ExperimentError(f"{path}: [experiment] unknown key {key!r}{_suggest(key, list(EXPERIMENT_KEYS))}; "
                                  f"allowed: {', '.join(EXPERIMENT_KEYS)}")
    for key in ("name", "description", "run_dir"):
        if key in exp and not isinstance(exp[key], str):
            raise ExperimentError(f"{path}: [experiment] {key} must be a string, got {exp[key]!r}")

    # collect steps in file order
    steps: list[Step] = []
    for cmd in raw:
        if cmd in RESERVED_TABLES:
            continue
        table = raw[cmd]
        subtables = {k: v for k, v in table.items() if isinstance(v, dict)}
        if subtables and len(subtables) != len(table):
            scalars = [k for k in table if k not in subtables]
            raise ExperimentError(
                f"{path}: [{cmd}] mixes named steps ({', '.join(f'[{cmd}.{k}]' for k in subtables)}) with keys "
                f"({', '.join(scalars)}); put the keys into a named step or into [defaults]")
        named = subtables.items() if subtables else [("", table)]
        for name, opts in named:
            if name and not re.fullmatch(r"[\w-]+", name):
                raise ExperimentError(f"{path}: [{cmd}.{name}]: step names may hold letters, digits, _ and - only")
            steps.append(Step(cmd, name, dict(opts), f"{cmd}.{name}" if name else cmd))
    if not steps:
        raise ExperimentError(f"{path}: no steps; add tables such as [train.NAME], [certify.NAME], [report] "
                              f"(step types: {', '.join(step_types)})")
    ids = [s.id for s in steps]

    # per-step checks with the command's own parser and validator
    for step in steps:
        parser = commands.parser(step.command)
        step.spec = commands.output_spec(step.command, parser)
        actions = _action_for(parser)
        controlled = set(step.spec.options) | ({step.spec.resume[0]} if step.spec.resume else set()) | \
            {"overwrite"}
        allowed = sorted(d for d, a in actions.items() if d not in controlled and not d.startswith("_"))
        merged: dict[str, Any] = {}
        for key, value in defaults.items():
            if key.replace("-", "_") in actions and key.replace("-", "_") not in controlled:
                merged[key.replace("-", "_")] = value
        after = step.options.pop("after", [])
        if isinstance(after, str):
            after = [after]
        if not isinstance(after, list) or not all(isinstance(a, str) for a in after):
            raise ExperimentError(f"{path}: [{step.where}] after: expected a list of step ids, e.g. "
                                  f"[\"train.main\"]; got {after!r}")
        for a in after:
            if a.lstrip("@") not in ids:
                raise ExperimentError(f"{path}: [{step.where}] after: no step {a!r}; steps: {', '.join(ids)}")
        step.after = [a.lstrip("@") for a in after]
        for key, value in step.options.items():
            dest = key.replace("-", "_")
            if dest in controlled:
                raise ExperimentError(f"{path}: [{step.where}] {key}: set by the runner (every step writes into "
                                      f"RUN_DIR/{step.command}/{step.name}/); remove it")
            if dest not in actions:
                raise ExperimentError(f"{path}: [{step.where}] unknown key {key!r}{_suggest(dest, allowed)}; "
                                      f"allowed for {step.command}: {', '.join(allowed + list(RUNNER_KEYS))}")
            merged[dest] = value
        step.options = merged
        # references
        refs: list[str] = []
        for key, value in merged.items():
            for v in (value if isinstance(value, list) else [value]):
                if isinstance(v, str) and v.startswith("@"):
                    m = _REF.match(v)
                    if not m:
                        raise ExperimentError(f"{path}: [{step.where}] {key}: bad reference {v!r}; write "
                                              "@TYPE.NAME, @TYPE (a single unnamed step), @TYPE.* (all steps of "
                                              "a type) or @TYPE.NAME/FILE")
                    typ, name = m.group("type"), m.group("name")
                    if name == "*":
                        found = [s.id for s in steps if s.command == typ]
                        if not found:
                            raise ExperimentError(f"{path}: [{step.where}] {key}: {v!r} matches no step; "
                                                  f"steps: {', '.join(ids)}")
                        if not isinstance(value, list):
                            raise ExperimentError(f"{path}: [{step.where}] {key}: {v!r} stands for several "
                                                  "steps and needs a list value, e.g. [\"" + v + "\"]")
                        refs += found
                    else:
                        sid = f"{typ}.{name}" if name else typ
                        if sid not in ids:
                            raise ExperimentError(f"{path}: [{step.where}] {key}: no step {sid!r}"
                                                  f"{_suggest(sid, ids)}; steps: {', '.join(ids)}")
                        refs.append(sid)
        if step.id in refs or step.id in step.after:
            raise ExperimentError(f"{path}: [{step.where}] refers to itself")
        step.refs = list(dict.fromkeys(refs))
        if step.command == "report":  # the report reads everything else in the run
            step.after = list(dict.fromkeys(step.after + [s.id for s in steps if s.command != "report"]))

    used = set()
    for step in steps:
        used |= set(_action_for(commands.parser(step.command)))
    for key in defaults:
        if key.replace("-", "_") not in used:
            raise ExperimentError(f"{path}: [defaults] unknown key {key!r}{_suggest(key, sorted(used))}: no step's "
                                  f"command has this option")
    order = _toposort(steps, path)
    rd = Path(run_dir) if run_dir else Path(exp.get("run_dir") or Path("runs") / path.stem)
    experiment = Experiment(path=path, name=exp.get("name", path.stem), description=exp.get("description", ""),
                            run_dir=rd, steps=order, raw=raw, commands=commands)
    # parse every step's argv with the command's parser, then its validator
    for step in order:
        parser = commands.parser(step.command)
        try:
            argv = experiment.argv(step)
            args = parser.parse_args(argv)
        except ArgError as exc:
            raise ExperimentError(f"{path}: {_arg_error_message(str(exc), step.where, parser)}") from None
        _prevalidate(step, args, parser, path, commands)
    return experiment


def _prevalidate(step: Step, args: argparse.Namespace, parser: argparse.ArgumentParser, path: Path,
                 commands: CommandSet) -> None:
    """Run the command's option checks that need no model or data."""
    args = copy.copy(args)
    args.command = step.command
    args.argv = []
    validate = commands[step.command].validate
    checks = [validate] if validate is not None else []
    if getattr(args, "threads", None) is not None and args.threads < 1:
        raise ExperimentError(f"{path}: [{step.where}] threads: must be >= 1, got {args.threads}")
    for check in checks:
        try:
            check(args)
        except FileNotFoundError as exc:
            if step.refs:  # a file another step has not written yet
                continue
            raise ExperimentError(f"{path}: [{step.where}] {_translate_option_names(str(exc), parser)}") from None
        except ValueError as exc:
            raise ExperimentError(f"{path}: [{step.where}] {_translate_option_names(str(exc), parser)}") from None
    for key, value in step.options.items():
        for v in (value if isinstance(value, list) else [value]):
            if isinstance(v, str) and not v.startswith("@") and v.endswith((".pt", ".pth", ".tsv")) \
                    and not Path(v).exists():
                raise ExperimentError(f"{path}: [{step.where}] {key}: no such file {v!r} (relative paths are "
                                      f"relative to the folder where smoothguard run is started)")


def _toposort(steps: list[Step], path: Path) -> list[Step]:
    by_id = {s.id: s for s in steps}
    order: list[Step] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(s: Step, chain: list[str]) -> None:
        if state.get(s.id) == 2:
            return
        if state.get(s.id) == 1:
            cycle = chain[chain.index(s.id):] + [s.id]
            raise ExperimentError(f"{path}: steps depend on each other in a cycle: {' -> '.join(cycle)}")
        state[s.id] = 1
        for d in s.deps:
            visit(by_id[d], chain + [s.id])
        state[s.id] = 2
        order.append(s)

    for s in steps:
        visit(s, [])
    return order
