"""`smoothguard evaluate` (defaults) against the reference AutoAttack (Croce & Hein 2020,
github.com/fra31/auto-attack, "standard" version), side by side, per image.

For each model the first N test images are attacked by

* our whole command, as a user runs it with no attack flags:
  ``python -m smoothguard evaluate --model CKPT --data fashion-mnist --split test --max N
  --norm N --eps E --threads T --out-dir DIR`` (start-up, model preparation, the cascade, the
  tables and the example grid: the wall time of the process), and
* AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square 5000) in a process of its own
  (``benchmarks/_autoattack_run.py``: start-up, the same checkpoint loaded the safe way,
  ``run_standard_evaluation``), on the model as loaded;

the two alternate in order from model to model, so a drift in the machine's load hits both.
Reported per model: robust accuracy of each, the images robust under evaluate but broken by
AutoAttack (target 0) and the reverse, and the ratio of summed wall times (target <= 0.5).

AutoAttack is never a dependency of smoothguard: pass the folder that holds its
``autoattack`` package (a checkout of the repository, e.g. fetched to /tmp/aa) with
``--autoattack-src``. Results are appended per model to ``--out`` (JSON lines) and a rerun
with the same ``--out`` skips the models already there.

    python benchmarks/bench_evaluate.py --autoattack-src /tmp/aa \\
        --model standard=runs/standard/model.pt --model pgd_at=runs/pgd_at/model.pt \\
        --model trades=runs/trades/model.pt --n 500 --out runs/bench_evaluate.jsonl
    python benchmarks/bench_evaluate.py ... --norm l2 --eps 1.0 --model pgd_at=...
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _timed(cmd: list[str], what: str) -> float:
    """Run ``cmd`` (a whole process: start-up included); its wall time."""
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed:\n{proc.stderr[-3000:]}")
    return wall


def run_ours(model: str | None, a, out_dir: Path, flags: list[str]) -> tuple[float, list[int], dict]:
    cmd = [sys.executable, "-m", "smoothguard", "evaluate", "--data", a.data, "--split", "test", "--max", str(a.n),
           "--norm", a.norm, "--eps", str(a.eps), "--threads", str(a.threads), "--out-dir", str(out_dir), *flags]
    wall = _timed(cmd + (["--model", model] if model else []), "evaluate")
    lines = (out_dir / "per_example.tsv").read_text().splitlines()
    col = lines[0].split("\t").index("robust")
    robust = [int(line.split("\t")[col]) for line in lines[1:]]
    table = json.loads((out_dir / "table.json").read_text())
    rows = {r["key"]: {"attacked": r["attacked"], "fooled": r["fooled"], "seconds": r["seconds"]}
            for r in table["evaluation"]["rows"]}
    return wall, robust, rows


def run_autoattack(model: str | None, a, out_json: Path) -> tuple[float, list[int]]:
    cmd = [sys.executable, str(HERE / "_autoattack_run.py"), "--autoattack-src", a.autoattack_src,
           "--data", a.data, "--max", str(a.n), "--norm", a.norm, "--eps", str(a.eps),
           "--threads", str(a.threads), "--out", str(out_json)]
    wall = _timed(cmd + (["--model", model] if model else []), "AutoAttack")
    return wall, json.loads(out_json.read_text())["robust"]


def cpu_flags() -> str:
    from smoothguard.runtime import cpu_flags as flags

    return " ".join(flags()) or "none of avx2/avx512"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", default=[],
                   help="NAME=CHECKPOINT (repeatable); NAME=embedded: the bundled model")
    p.add_argument("--autoattack-src", required=True, help="folder holding the reference `autoattack` package")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--n", type=int, default=500, help="test images (the first N)")
    p.add_argument("--norm", default="linf", choices=["linf", "l2"])
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True, help="JSON lines, one per model; resumed when present")
    p.add_argument("--also", action="append", default=[], metavar="FLAGS",
                   help="also time our command with these extra flags (e.g. '--no-conv-grad'), right after the "
                        "default run, against the same AutoAttack run; repeatable")
    a = p.parse_args(argv)
    if not a.model:
        p.error("give at least one --model NAME=CHECKPOINT")
    if not (Path(a.autoattack_src) / "autoattack" / "__init__.py").exists():
        p.error(f"--autoattack-src {a.autoattack_src!r} holds no autoattack/__init__.py")
    out = Path(a.out)
    done = {}
    if out.exists():
        for line in out.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done[(r["model"], r["norm"], r["eps"], r["count"])] = r
    models = []
    for spec in a.model:
        name, _, path = spec.partition("=")
        models.append((name, None if path in ("", "embedded") else path))
    for k, (name, path) in enumerate(models):
        key = (name, a.norm, a.eps, a.n)
        if key in done:
            continue
        order = ("ours", "aa") if k % 2 == 0 else ("aa", "ours")  # alternate which half runs first
        res, also = {}, {}
        with tempfile.TemporaryDirectory() as tmp:
            for who in order:
                if who == "ours":
                    res[who] = run_ours(path, a, Path(tmp) / "ev", [])
                    for i, flags in enumerate(a.also):  # the variants right after the default run
                        w, r, rw = run_ours(path, a, Path(tmp) / f"ev{i}", flags.split())
                        also[flags] = {"seconds": w, "robust": r, "rows": rw}
                else:
                    res[who] = run_autoattack(path, a, Path(tmp) / "aa.json")
        (w_ours, r_ours, rows), (w_aa, r_aa) = res["ours"], res["aa"]
        rec = {"model": name, "checkpoint": path, "norm": a.norm, "eps": a.eps, "skip": 0, "count": a.n,
               "order": list(order), "ours_seconds": w_ours, "aa_seconds": w_aa, "ours_robust": r_ours,
               "aa_robust": r_aa, "ours_rows": rows, "also": also, "threads": a.threads, "cpu_flags": cpu_flags(),
               "loadavg": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d %H:%M")}
        with out.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        done[key] = rec
        print(f"{name}, {a.n} images: ours {w_ours:.1f} s, AutoAttack {w_aa:.1f} s, "
              f"robust {sum(r_ours)} vs {sum(r_aa)}", file=sys.stderr, flush=True)

    print(f"\n{a.data} test images, {a.norm} eps {a.eps:g}; torch threads {a.threads}; CPU flags: {cpu_flags()}\n")
    print("| model | images | robust acc. evaluate (%) | robust acc. AutoAttack (%) | robust under evaluate, "
          "broken by AutoAttack | the reverse | evaluate wall (s) | AutoAttack wall (s) | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, _ in models:
        recs = [r for k, r in done.items() if k[0] == name and k[1] == a.norm and k[2] == a.eps]
        if not recs:
            continue
        ours = [v for r in recs for v in r["ours_robust"]]
        aa = [v for r in recs for v in r["aa_robust"]]
        missed = sum(1 for o, q in zip(ours, aa) if o and not q)
        reverse = sum(1 for o, q in zip(ours, aa) if q and not o)
        t_o, t_a = sum(r["ours_seconds"] for r in recs), sum(r["aa_seconds"] for r in recs)
        print(f"| {name} | {len(ours)} | {100 * sum(ours) / len(ours):.1f} | {100 * sum(aa) / len(aa):.1f} | "
              f"{missed} | {reverse} | {t_o:.0f} | {t_a:.0f} | {t_o / t_a:.2f} |")
        for flags in sorted({f for r in recs for f in r.get("also", {})}):
            got = [r for r in recs if flags in r.get("also", {})]
            ours_v = [v for r in got for v in r["also"][flags]["robust"]]
            aa_v = [v for r in got for v in r["aa_robust"]]
            t_v, t_av = sum(r["also"][flags]["seconds"] for r in got), sum(r["aa_seconds"] for r in got)
            print(f"| {name}, evaluate {flags} | {len(ours_v)} | {100 * sum(ours_v) / len(ours_v):.1f} | "
                  f"{100 * sum(aa_v) / len(aa_v):.1f} | {sum(1 for o, q in zip(ours_v, aa_v) if o and not q)} | "
                  f"{sum(1 for o, q in zip(ours_v, aa_v) if q and not o)} | {t_v:.0f} | {t_av:.0f} | "
                  f"{t_v / t_av:.2f} |")
    print("\ncommand: python benchmarks/bench_evaluate.py " + " ".join(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
