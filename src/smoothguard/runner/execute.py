"""Running an experiment's steps in dependency order into a run folder (``smoothguard run``).

Each step is one sub-command (train, certify, predict, attack, evaluate, analyze, report,
...) with the options of its TOML table (see :mod:`smoothguard.runner.experiment`). Every
step writes into ``RUN_DIR/COMMAND/NAME/`` and keeps a ``manifest.json`` there: the
settings hash, the fingerprints of its inputs (the outputs of the steps it reads, and
any input file), the command line, seed, versions, wall time and status. Rerunning:

* **skipped**: status complete, same settings, same inputs, outputs unchanged;
* **rerun**: the settings or inputs changed (the step folder is cleared first);
* **resumed**: the step was interrupted (status running/failed/interrupted); the command
  is run again on the same outputs and continues itself (certify/predict/attack keep
  their complete rows, train continues from ``checkpoint.pt`` with ``--resume``).

Steps run in this process by default: each command's own parser builds its arguments
(so checks and defaults are exactly those of the command line) and its ``run(args)``
(from the :class:`~smoothguard.runner.commands.CommandSet` the command line hands over)
does the work, with no cost of starting Python and importing torch per step.
``--subprocess`` runs each step as ``python -m smoothguard COMMAND ...`` instead
(isolation: a crash or leak in one step cannot affect the runner; the same argv).
In-process steps start with Python's, NumPy's and torch's global generators seeded with
the step's ``--seed`` (what a fresh process would leave to chance, e.g. the initial
weights of ``train``, is then reproducible and independent of the steps before it).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import smoothguard
from smoothguard.contract import write_bytes_atomic, write_text_atomic
from smoothguard.evaluation.resultfile import file_sha256
from smoothguard.runner.commands import CommandSet
from smoothguard.runner.experiment import Experiment, Step, load_experiment

MANIFEST = "manifest.json"
RUN_SUMMARY = "run.json"


@dataclass(frozen=True)
class RunOptions:
    """How to run an experiment file. ``run_dir``: the run folder (None: the file's
    ``[experiment] run_dir``, else ``runs/<file stem>``); ``subprocess``: each step in its
    own Python process; ``dry_run``: print the plan, run nothing; ``force``: step ids to
    rerun from scratch; ``threads`` / ``device``: for the steps that do not set them
    (``device`` as the user wrote it, ``auto`` = the steps' own default)."""

    experiment: str | Path
    run_dir: str | Path | None = None
    subprocess: bool = False
    dry_run: bool = False
    force: tuple[str, ...] = ()
    threads: int | None = None
    device: str = "auto"


# --------------------------------------------------------------------------- fingerprints


def output_files(step_dir: Path) -> dict[str, dict[str, Any]]:
    """{relative path: {size, sha256}} of every file a step wrote (its manifest and
    temporary files excluded)."""
    out: dict[str, dict[str, Any]] = {}
    if not step_dir.is_dir():
        return out
    for p in sorted(step_dir.rglob("*")):
        if p.is_file() and p.name != MANIFEST and not p.name.endswith(".tmp"):
            out[p.relative_to(step_dir).as_posix()] = {"size": p.stat().st_size, "sha256": file_sha256(p)}
    return out


def outputs_digest(outputs: dict[str, dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(outputs, sort_keys=True).encode()).hexdigest()


def read_manifest(step_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((step_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", "manifest")


def step_inputs(exp: Experiment, step: Step) -> dict[str, str]:
    """What a step reads: each dependency's outputs digest, and the sha256 of every
    existing file named in its options (the embedded model when a ``model`` option is
    left at its default)."""
    inputs: dict[str, str] = {}
    for dep in step.deps:
        m = read_manifest(exp.step_dir(exp.step(dep)))
        inputs["step:" + dep] = (m or {}).get("outputs_digest", "missing")
    for key, value in step.options.items():
        for v in (value if isinstance(value, list) else [value]):
            if isinstance(v, str) and not v.startswith("@") and len(v) < 4096:
                p = Path(v)
                if p.is_file():
                    inputs["file:" + str(p.resolve())] = file_sha256(p)
    parser = exp.commands.parser(step.command)
    if "model" in {a.dest for a in parser._actions} and "model" not in step.options:
        from smoothguard.models.checkpoint import default_model_path

        inputs["embedded-model"] = file_sha256(default_model_path())
    return inputs


# --------------------------------------------------------------------------- planning


def decide(exp: Experiment, step: Step, inputs: dict[str, str], forced: bool) -> tuple[str, str]:
    """(action, reason): action is skip, resume, rerun or run."""
    d = exp.step_dir(step)
    old = read_manifest(d)
    has_files = d.is_dir() and any(d.iterdir())
    if forced:
        return ("rerun" if has_files else "run"), "forced"
    if old is None:
        return ("rerun", "no readable manifest: starting afresh") if has_files else ("run", "new")
    if old.get("settings_hash") != step.settings_hash():
        return "rerun", "settings changed"
    if old.get("inputs") != inputs:
        changed = sorted(k for k in set(inputs) | set(old.get("inputs") or {})
                         if inputs.get(k) != (old.get("inputs") or {}).get(k))
        names = [c.split(":", 1)[-1] for c in changed]
        return "rerun", "inputs changed: " + ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3
                                                                    else "")
    if old.get("status") == "complete":
        now = output_files(d)
        if now == old.get("outputs") and all((d / f).exists() for f in step.spec.complete):
            return "skip", "complete"
        return "rerun", "outputs changed or missing"
    return "resume", f"previous attempt {old.get('status', 'unknown')}"


# --------------------------------------------------------------------------- executing


def _execute_inprocess(commands: CommandSet, command: str, argv: list[str]) -> tuple[int, str | None, dict[str, Any]]:
    parser = commands.parser(command)
    ns = parser.parse_args(argv)
    ns.command = command
    ns.argv = [command] + argv
    info: dict[str, Any] = {}
    if getattr(ns, "seed", None) is not None:
        # Global generators (e.g. a model's initial weights) start from the step's seed, so a
        # step's results do not depend on which steps ran before it in this process.
        from smoothguard.utils import seed_everything

        seed_everything(ns.seed)
    try:
        if commands[command].common:
            commands.prepare(ns)
        info = {"seed": getattr(ns, "seed", None), "device": str(getattr(ns, "device", "")),
                "threads": _torch_threads()}
        rc = int(commands[command].run(ns) or 0)
        return rc, None if rc == 0 else f"exit code {rc}", info
    except commands.user_errors as exc:
        return 2, str(exc), info
    except OSError as exc:  # as the command line does: a file-system refusal fails the step, not the runner
        return 2, f"{exc.strerror or exc}" + (f" ({exc.filename})" if getattr(exc, "filename", None) else ""), info


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _execute_subprocess(command: str, argv: list[str]) -> tuple[int, str | None, dict[str, Any]]:
    proc = subprocess.run([sys.executable, "-m", "smoothguard", command, *argv])
    if proc.returncode in (130, -2):
        raise KeyboardInterrupt
    return proc.returncode, (None if proc.returncode == 0 else f"exit code {proc.returncode}"), {}


def _step_overrides(opts: RunOptions) -> dict[str, Any]:
    """--threads/--device given to ``smoothguard run``, for steps that do not set them."""
    extra: dict[str, Any] = {}
    if opts.threads is not None:
        extra["threads"] = opts.threads
    if opts.device != "auto":
        extra["device"] = opts.device
    return extra


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_experiment(opts: RunOptions, commands: CommandSet) -> int:
    """Run the steps of ``opts.experiment`` (validated first, against ``commands``);
    returns 0, 1 when a step failed, 130 on an interrupt (re-raised)."""
    exp = load_experiment(opts.experiment, commands, opts.run_dir)  # validates everything; raises before any write
    forced = set()
    ids = [s.id for s in exp.steps]
    for f in opts.force:
        if f not in ids:
            raise ValueError(f"--force: no step {f!r}; steps: {', '.join(ids)}")
        forced.add(f)
    n = len(exp.steps)
    print(f"experiment {exp.name} ({exp.path}): {n} steps into {exp.run_dir}", flush=True)
    if opts.dry_run:
        for i, step in enumerate(exp.steps, 1):
            action, reason = decide(exp, step, step_inputs(exp, step), step.id in forced)
            argv = exp.argv(step, extra=_step_overrides(opts))
            print(f"[{i}/{n}] {step.id}: would {action} ({reason})\n    smoothguard {step.command} "
                  + " ".join(shlex.quote(a) for a in argv))
        return 0

    write_bytes_atomic(exp.run_dir / "experiment.toml", Path(exp.path).read_bytes(), "experiment copy")
    summary: list[dict[str, Any]] = []
    t_run = time.perf_counter()
    exit_code = 0
    failed: set[str] = set()  # failed steps and the steps that depend on them
    try:
        for i, step in enumerate(exp.steps, 1):
            blocked = [d for d in step.deps if d in failed]
            if blocked:  # its inputs are missing; the steps that do not need them still run
                failed.add(step.id)
                print(f"[{i}/{n}] {step.id}: not run (depends on failed {', '.join(blocked)})", flush=True)
                summary.append({"step": step.id, "status": "blocked", "wall_s": 0.0,
                                "reason": "depends on failed " + ", ".join(blocked)})
                continue
            res = _run_step(exp, step, i, n, opts, step.id in forced)
            summary.append(res)
            if res["status"] == "failed":
                exit_code = 1
                failed.add(step.id)
    except KeyboardInterrupt:
        exit_code = 130
        raise
    finally:
        _print_summary(exp, summary, time.perf_counter() - t_run)
        _write_json(exp.run_dir / RUN_SUMMARY, {
            "experiment": exp.name, "file": str(exp.path), "finished": _now(), "exit_code": exit_code,
            "wall_s": time.perf_counter() - t_run, "steps": summary,
            "smoothguard_version": smoothguard.__version__})
    return exit_code


def _run_step(exp: Experiment, step: Step, i: int, n: int, opts: RunOptions, forced: bool) -> dict[str, Any]:
    d = exp.step_dir(step)
    inputs = step_inputs(exp, step)
    action, reason = decide(exp, step, inputs, forced)
    head = f"[{i}/{n}] {step.id}"
    old = read_manifest(d) or {}
    if action == "skip":
        print(f"{head}: skipped (complete, settings and inputs unchanged; took {_fmt_s(old.get('wall_s_total'))})",
              flush=True)
        return {"step": step.id, "status": "skipped", "wall_s": 0.0, "reason": reason}
    if action == "rerun" and d.exists():
        shutil.rmtree(d)
        old = {}
    d.mkdir(parents=True, exist_ok=True)
    resume = bool(step.spec.resume and (d / step.spec.resume[1]).exists())
    argv = exp.argv(step, resume=resume, extra=_step_overrides(opts))
    cmdline = "smoothguard " + step.command + " " + " ".join(shlex.quote(a) for a in argv)
    print(f"{head}: {action} ({reason})\n    {cmdline}", flush=True)
    import torch

    attempts = list(old.get("attempts", [])) if action == "resume" else []
    manifest: dict[str, Any] = {
        "step": step.id, "command": step.command, "name": step.name, "options": step.options,
        "settings_hash": step.settings_hash(), "inputs": inputs, "argv": ["smoothguard", step.command] + argv,
        "command_line": cmdline, "cwd": os.getcwd(), "experiment": str(exp.path), "status": "running",
        "started": _now(), "smoothguard_version": smoothguard.__version__, "torch_version": torch.__version__,
        "python_version": platform.python_version(), "platform": platform.platform(),
        "seed": step.options.get("seed", 0) if "seed" in {a.dest for a in exp.commands.parser(step.command)._actions}
        else None,
        "attempts": attempts, "wall_s_total": float(old.get("wall_s_total", 0.0)) if action == "resume" else 0.0,
    }
    _write_json(d / MANIFEST, manifest)
    t0 = time.perf_counter()
    outcome, error, info = "failed", None, {}
    try:
        if opts.subprocess:
            rc, error, info = _execute_subprocess(step.command, argv)
        else:
            rc, error, info = _execute_inprocess(exp.commands, step.command, argv)
        if rc == 0:
            missing = [f for f in step.spec.complete if not (d / f).exists()]
            if missing:
                rc, error = 1, f"finished without writing {', '.join(missing)}"
        outcome = "complete" if rc == 0 else "failed"
    except KeyboardInterrupt:
        outcome = "interrupted"
        raise
    except Exception:
        error = traceback.format_exc()
        raise
    finally:
        wall = time.perf_counter() - t0
        manifest.update(info)
        manifest["status"] = outcome
        manifest["finished"] = _now()
        manifest["wall_s"] = wall
        manifest["wall_s_total"] = manifest["wall_s_total"] + wall
        manifest["attempts"] = attempts + [{"action": action, "reason": reason, "started": manifest["started"],
                                            "wall_s": wall, "outcome": outcome}]
        if error:
            manifest["error"] = error
        if outcome == "complete":
            manifest["outputs"] = output_files(d)
            manifest["outputs_digest"] = outputs_digest(manifest["outputs"])
        _write_json(d / MANIFEST, manifest)
    status = {"run": "ran", "rerun": "ran", "resume": "resumed"}[action] if outcome == "complete" else "failed"
    if outcome == "complete":
        print(f"{head}: {status} in {_fmt_s(wall)}" + (f" ({reason})" if action != "run" else ""), flush=True)
    else:
        print(f"{head}: FAILED after {_fmt_s(wall)}: {error}", file=sys.stderr, flush=True)
    return {"step": step.id, "status": status, "wall_s": wall, "reason": reason, "error": error}


def _print_summary(exp: Experiment, summary: list[dict[str, Any]], wall: float) -> None:
    if not summary:
        return
    done = {s["step"] for s in summary}
    rows = [(s["step"], s["status"], _fmt_s(s["wall_s"]) if s["status"] not in ("skipped", "blocked") else "-")
            for s in summary]
    rows += [(s.id, "not run", "-") for s in exp.steps if s.id not in done]
    w = max(len(r[0]) for r in rows)
    lines = [f"{'step'.ljust(w)}  {'status':<8}  wall"] + [f"{a.ljust(w)}  {b:<8}  {c}" for a, b, c in rows]
    counts = {k: sum(1 for s in summary if s["status"] == k)
              for k in ("ran", "resumed", "skipped", "failed", "blocked")}
    lines.append(f"{len(summary)}/{len(exp.steps)} steps: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v)
                 + f"; total {_fmt_s(wall)}; run folder {exp.run_dir}")
    print("\n".join(lines), flush=True)
