"""``smoothguard report``: one self-contained HTML report of a run folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from smoothguard.cli._conventions import add_deprecated

HELP = "write one self-contained HTML report (figures embedded) of a run folder or a folder of result files"
DESCRIPTION = (
    "Scans RUN_DIR (a `smoothguard run` folder, or any folder of certify/predict/attack result files, evaluate "
    "folders and training logs) and writes one HTML file with every figure embedded as a PNG data URI, inline "
    "CSS, no scripts and no external references: certified accuracy vs radius (dashed: attacks on the smoothed "
    "classifier), the best-sigma-per-radius table, per-model tables (ACR, abstention), attack tables and "
    "curves, restart-loss histograms, adversarial examples, smoothed-inference curves, training curves and "
    "every step's settings. The figures are also written as PNG and SVG next to the report."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder (or any folder of result files)")
    p.add_argument("--out", default=None, metavar="PATH", help="the HTML file (default: RUN_DIR/report/report.html)")
    add_deprecated(p, "report", "out")
    p.add_argument("--title", default=None, help="report title (default: the experiment's name or the folder name)")


def run(args: argparse.Namespace) -> int:
    from smoothguard.evaluation.report import write_report

    root = Path(args.run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder (give a run folder or a folder of result files)")
    out = Path(args.out) if args.out else root / "report" / "report.html"
    info = write_report(root, out, title=args.title)
    missing = [k for k, v in info["sections"].items() if not v]
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, {len(info['figures'])} figure files next to it)"
          + (f"; sections without data: {', '.join(missing)}" if missing else ""), file=sys.stderr)
    return 0
