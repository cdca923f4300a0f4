#!/usr/bin/env python3
"""Mutation testing of the critical modules (issue 24), with mutmut 3.

Usage (from the repository root; ``make mutation`` installs mutmut and runs all targets):

    .venv/bin/python scripts/mutation.py                 # every target
    .venv/bin/python scripts/mutation.py stats core      # some targets
    .venv/bin/python scripts/mutation.py --list          # targets, files, functions, tests

Safe in a shared working tree: each target is run in its own fresh copy of ``src/`` and
``tests/`` under ``--workdir`` (default: a new temporary folder), and mutmut itself only
writes mutated files into that copy's ``mutants/`` folder. Nothing in the repository is
modified. The copies are kept for inspection (``cd WORKDIR/TARGET && mutmut show NAME``).

Each target mutates one file, restricted to the functions that carry the guarantees when
``functions`` is given (mutmut's mutant-name globs), and runs a small, fast test subset
(mutmut runs, per mutant, only the tests that call the mutated function). The summary
line per target counts the target's mutants from mutmut's own results
(``mutmut results --all true``); survivors are listed with ``mutmut show``-able names.
Not part of CI (minutes of CPU per target); run on demand. Exit status 0 when every
target reaches ``--min-score`` percent killed (default 90), else 1.

``--report`` (with ``--workdir``) prints the summary of the runs kept there without
running anything. ``--resume`` (with ``--workdir`` of an earlier run) reruns only the
mutants that were not killed, against the current ``tests/`` and ``src/`` of the working
tree (or of ``--rev``), copied over the kept copy except the mutated file, which must be
unchanged: adding tests can only kill more mutants, so the other verdicts stand, and
mutmut collects coverage for the new tests before the rerun. The summary is again mutmut's own count over all of the target's
mutants. A target's test selection must not change between the two runs (mutmut then
discards every verdict).
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = "src/smoothguard"

# the fast tests of tests/test_attacks.py that run PGD/APGD (or validate any attack)
ATTACK_TESTS = ("guarantees or pgd or checkpoints or validation or targets_equal or force or input_validation "
                "or already_misclassified or eval_mode or zero_gradients")

# name -> (file to mutate, functions to mutate (None: all), tests)
# functions: "name" for a module-level function, "Class.method" for a method.
TARGETS: dict[str, tuple[str, list[str] | None, list[str]]] = {
    "stats": (f"{PKG}/smoothing/stats.py", None, [
        "tests/test_guarantees.py",
        "tests/test_smoothing.py::test_lower_bound_equals_beta_ppf_over_a_grid",
        "tests/test_smoothing.py::test_lower_bound_undercovers_with_frequency_at_most_alpha",
        "tests/test_smoothing.py::test_r_max_table_of_algorithms_md",
        "tests/test_smoothing.py::test_binomial_pvalue_matches_scipy_and_small_n_cannot_reach_alpha",
        "tests/test_smoothing.py::test_certified_accuracy_lower_bound_is_theorem_6_as_printed",
        "tests/test_smoothing.py::test_constant_classifier_certifies_r_max_exactly",
        "tests/test_adaptive.py::test_vectorized_binomial_pvalues_equal_scipys_exact_test",
    ]),
    "core": (f"{PKG}/smoothing/core.py", [
        "SmoothedClassifier.predict_batch", "SmoothedClassifier.predict",
        "SmoothedClassifier.certify_batch", "SmoothedClassifier.certify", "_one_image",
    ], [
        "tests/test_guarantees.py",
        "tests/test_smoothing.py::test_constant_classifier_certifies_r_max_exactly",
        "tests/test_smoothing.py::test_uniformly_random_classifier_abstains",
        "tests/test_smoothing.py::test_predict_abstains_for_ten_or_fewer_samples",
        "tests/test_smoothing.py::test_argument_validation_names_the_problem",
        "tests/test_smoothing.py::test_linear_oracle_radius_is_tight_for_large_n",
    ]),
    "projection": (f"{PKG}/attacks/base.py", [
        "project", "project_exact", "lp_norms", "_bcast", "random_start", "normalize_grad", "is_adversarial",
    ], [
        "tests/test_projection.py",
        "tests/test_guarantees.py",
        "tests/test_mutation_kills_projection.py",
    ]),
    "pgd": (f"{PKG}/attacks/pgd.py", None, [
        "tests/test_guarantees.py",
        "tests/test_attacks.py", "-k", ATTACK_TESTS,
    ]),
    "apgd": (f"{PKG}/attacks/apgd.py", None, [
        "tests/test_guarantees.py", "tests/test_mutation_kills_apgd.py",
        "tests/test_attacks.py", "-k", ATTACK_TESTS,
    ]),
    "objectives": (f"{PKG}/training/adversarial.py", [
        "kl_div_rows", "TradesPGD._objective", "TradesPGD._start", "TRADES.__call__", "TRADES._build_attack",
        "PGDAT.__call__", "PGDAT._build_attack",
    ], [
        "tests/test_guarantees.py",
        "tests/test_mutation_kills_objectives.py",
    ]),
    "resultfile": (f"{PKG}/evaluation/resultfile.py", None, [
        "tests/test_resultfile.py",
    ]),
    "adaptive": (f"{PKG}/smoothing/adaptive.py", None, [
        # test_adaptive.py's two CLI tests (a certify run per mutant) are left out
        "tests/test_adaptive.py", "tests/test_mutation_sequential.py", "tests/test_mutation_kills_adaptive.py",
        "tests/test_guarantees.py::test_adaptive_certify_with_one_look_has_the_same_boundary", "-k", "not cli",
    ]),
    "sequential": (f"{PKG}/smoothing/sequential.py", None, [
        "tests/test_sequential.py",
        "tests/test_mutation_sequential.py",
        "tests/test_mutation_kills_sequential.py",
    ]),
    "contract": (f"{PKG}/contract.py", None, [
        # test_contract.py's hypothesis fuzzing of every library door is left out (a minute per mutant)
        "tests/test_contract.py", "tests/test_mutation_contract.py", "-k",
        "not sampler_certifies_only_valid and not every_attack_answers and not evaluate_and_the_smoothed_model",
    ]),
}

STATUS_RE = re.compile(r"^\s+(\S+): (.+)$")


def mutant_globs(file: str, functions: list[str] | None) -> list[str]:
    """mutmut 3 mutant-name globs for ``functions`` of ``file`` (``x_f`` / ``xǁClassǁm``)."""
    module = file[len("src/"):-len(".py")].replace("/", ".")
    if functions is None:
        return [f"{module}.*"]
    globs = []
    for f in functions:
        cls, _, meth = f.rpartition(".")
        mangled = f"x\u01c1{cls}\u01c1{meth}" if cls else f"x_{meth}"
        globs.append(f"{module}.{mangled}__mutmut_*")
    return globs


def prepare(work: Path, file: str, tests: list[str], rev: str | None) -> None:
    """A fresh copy of src/ and tests/ (the working tree's, or git revision ``rev``'s)
    with a mutmut config for one target."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    if rev:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src", "tests"], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(work)], input=archive, check=True)
    else:
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
        shutil.copytree(ROOT / "src", work / "src", ignore=ignore)
        shutil.copytree(ROOT / "tests", work / "tests", ignore=ignore)
    lines = ["[mutmut]", "source_paths = src", f"only_mutate = {file}",
             "pytest_add_cli_args = -p no:cacheprovider -q -W ignore::DeprecationWarning",
             "pytest_add_cli_args_test_selection ="]
    lines += [f"    {t}" for t in tests]
    lines += ["", "[tool:pytest]", "markers = slow: a slow test", ""]
    (work / "setup.cfg").write_text("\n".join(lines))


def _statuses(work: Path, env: dict, mutmut: list[str], globs: list[str]) -> dict[str, str]:
    """mutmut's own verdict per mutant of the target (``mutmut results --all true``)."""
    out = subprocess.run([*mutmut, "results", "--all", "true"], cwd=work, env=env, capture_output=True,
                         text=True).stdout
    statuses: dict[str, str] = {}
    for line in out.splitlines():
        m = STATUS_RE.match(line)
        if m and any(fnmatch.fnmatchcase(m.group(1), g) for g in globs):
            statuses[m.group(1)] = m.group(2).strip()
    return statuses


def refresh_copy(work: Path, file: str, rev: str | None) -> None:
    """``--resume``: bring the kept copy's tests/ and src/ (all but the mutated ``file``) up
    to the working tree (or git revision ``rev``), so that the current tests import. The
    mutated file must be unchanged, else its mutants no longer match and a fresh run is
    needed."""
    fresh = Path(tempfile.mkdtemp(prefix="smoothguard-mutation-fresh-"))
    try:
        if rev:
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src", "tests"], capture_output=True,
                                     check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(fresh)], input=archive, check=True)
        else:
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
            shutil.copytree(ROOT / "src", fresh / "src", ignore=ignore)
            shutil.copytree(ROOT / "tests", fresh / "tests", ignore=ignore)
        if (fresh / file).read_bytes() != (work / file).read_bytes():
            raise SystemExit(f"--resume: {file} changed since the run in {work}; run the target afresh")
        for top in ("src", "tests"):
            for path in (fresh / top).rglob("*"):
                rel = path.relative_to(fresh)
                if path.is_dir() or "__pycache__" in rel.parts or str(rel) == file:
                    continue
                for dest in (work / rel, work / "mutants" / rel):
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, dest)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)


def run_target(name: str, work: Path, max_children: int, mutmut: list[str], rev: str | None,
               resume: bool = False, report: bool = False, survivors_only: bool = False,
               only: list[str] | None = None) -> dict:
    file, functions, tests = TARGETS[name]
    globs = mutant_globs(file, functions)
    env = dict(os.environ)
    # one intra-op thread per worker: forked workers stay fork-safe and do not oversubscribe
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", SMOOTHGUARD_NO_PROGRESS="1", PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONPATH", None)
    names = globs
    if report:
        if not (work / "mutants").is_dir():
            raise SystemExit(f"--report: no earlier run of {name} in {work}")
        names = []
    elif resume and (work / "mutants").is_dir():
        refresh_copy(work, file, rev)
        skip = ("killed", "timeout", "not checked") if survivors_only else ("killed", "timeout")
        names = sorted(k for k, v in _statuses(work, env, mutmut, globs).items() if v not in skip
                       and (not only or any(fnmatch.fnmatchcase(k, g) for g in only)))
    else:
        prepare(work, file, tests, rev)
    log = work / ("mutmut-run.log" if names is globs or report else "mutmut-resume.log")
    t0 = time.time()
    rc = 0
    if names:
        with open(log, "w") as fh:
            rc = subprocess.run([*mutmut, "run", "--max-children", str(max_children), *names], cwd=work, env=env,
                                stdout=fh, stderr=subprocess.STDOUT).returncode
    elapsed = time.time() - t0
    statuses = _statuses(work, env, mutmut, globs)
    counts: dict[str, int] = {}
    for s in statuses.values():
        counts[s] = counts.get(s, 0) + 1
    tested = sum(v for k, v in counts.items() if k not in ("skipped", "not checked"))
    killed = counts.get("killed", 0) + counts.get("timeout", 0)
    score = 100.0 * killed / tested if tested else 0.0
    tool_line = ""
    log_text = log.read_text(errors="replace") if log.exists() else ""
    for line in log_text.replace("\r", "\n").splitlines():
        m = re.search(r"(\d+/\d+\s+\U0001f389.*)$", line)  # mutmut's progress line: done/total, counts
        if m:
            tool_line = m.group(1).strip()
    return dict(name=name, file=file, rc=rc, counts=counts, total=len(statuses), score=score, elapsed=elapsed,
                survivors=sorted(k for k, v in statuses.items() if v not in ("killed", "timeout")),
                statuses=statuses, tool_line=tool_line, work=work)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("targets", nargs="*", help=f"targets to run (default: all): {', '.join(TARGETS)}")
    ap.add_argument("--workdir", type=Path, default=None, help="where the copies go (default: a new temp folder)")
    ap.add_argument("--max-children", type=int, default=os.cpu_count() or 2, help="parallel mutant runs")
    ap.add_argument("--min-score", type=float, default=90.0, help="percent killed each target must reach")
    ap.add_argument("--rev", default=None, help="mutate this git revision's src/ and tests/ (default: the "
                    "working tree, uncommitted edits included)")
    ap.add_argument("--resume", action="store_true", help="rerun only the mutants an earlier run in --workdir "
                    "left alive, against the current tests/")
    ap.add_argument("--survivors-only", action="store_true", help="with --resume: rerun the survivors only, "
                    "not the mutants an interrupted run never checked")
    ap.add_argument("--only", nargs="+", default=None, metavar="GLOB", help="with --resume: rerun only the "
                    "mutants whose names match these globs (e.g. '*_default_menu*')")
    ap.add_argument("--report", action="store_true", help="only summarize the earlier runs kept in --workdir "
                    "(nothing is run)")
    ap.add_argument("--show", action="store_true", help="print the diff of every surviving mutant")
    ap.add_argument("--list", action="store_true", help="list the targets and exit")
    args = ap.parse_args(argv)
    if args.list:
        for name, (file, functions, tests) in TARGETS.items():
            print(f"{name}: {file}\n  functions: {functions or 'all'}\n  tests: {' '.join(tests)}")
        return 0
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        ap.error(f"unknown target(s) {unknown}; choose from {', '.join(TARGETS)}")
    try:
        import mutmut  # noqa: F401
    except ImportError:
        print("mutmut is not installed: `make mutation` installs it, or pip install 'mutmut>=3.3,<4'",
              file=sys.stderr)
        return 2
    mutmut = [str(Path(sys.executable).with_name("mutmut"))]
    if not Path(mutmut[0]).exists():
        mutmut = [sys.executable, "-m", "mutmut"]
    if (args.resume or args.report) and args.workdir is None:
        ap.error("--resume and --report need the --workdir of the earlier run")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="smoothguard-mutation-"))
    workdir = workdir.resolve()
    if workdir == ROOT or ROOT in workdir.parents:
        ap.error("--workdir must lie outside the repository")
    print(f"working copies in {workdir}", flush=True)
    results = []
    for name in args.targets or list(TARGETS):
        r = run_target(name, workdir / name, args.max_children, mutmut, args.rev, args.resume, args.report,
                       args.survivors_only, args.only)
        results.append(r)
        c = r["counts"]
        print(f"{name:<11} {r['file']}: {c.get('killed', 0) + c.get('timeout', 0)}/"
              f"{r['total'] - c.get('skipped', 0) - c.get('not checked', 0)} killed ({r['score']:.1f}%), "
              f"{c} in {r['elapsed']:.0f} s [mutmut rc {r['rc']}; its summary: {r['tool_line']}]", flush=True)
        for s in r["survivors"]:
            print(f"    {r['statuses'][s]}: {s}", flush=True)
            if args.show:
                diff = subprocess.run([*mutmut, "show", s], cwd=r["work"], capture_output=True, text=True).stdout
                print("        " + diff.strip().replace("\n", "\n        "), flush=True)
    bad = [r["name"] for r in results if r["score"] < args.min_score or r["total"] == 0]
    total = sum(r["total"] - r["counts"].get("skipped", 0) - r["counts"].get("not checked", 0) for r in results)
    unchecked = sum(r["counts"].get("not checked", 0) for r in results)
    killed = sum(r["counts"].get("killed", 0) + r["counts"].get("timeout", 0) for r in results)
    print(f"all targets: {killed}/{total} killed ({100.0 * killed / max(total, 1):.1f}%)"
          + (f"; {unchecked} mutants not checked (an interrupted run)" if unchecked else "")
          + (f"; below {args.min_score}%: {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
