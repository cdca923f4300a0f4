"""``smoothguard report``: one self-contained HTML report of a run folder."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
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

COMMON_OPTIONS = False  # reads files and draws plots: no device, seed or threads


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder (or any folder of result files)")
    p.add_argument("--out", default=None, metavar="PATH", help="the HTML file (default: RUN_DIR/report/report.html)")
    add_deprecated(p, "report", "out")
    p.add_argument("--title", default=None, help="report title (default: the experiment's name or the folder name)")


@dataclass(frozen=True)
class ReportOptions:
    """``smoothguard report``: the folder to scan, the HTML file (None:
    RUN_DIR/report/report.html) and the title (None: the experiment's name or the folder's)."""

    run_dir: Path
    out: Path | None = None
    title: str | None = None

    @property
    def html(self) -> Path:
        return self.out if self.out is not None else self.run_dir / "report" / "report.html"


def options(args: argparse.Namespace) -> ReportOptions:
    return ReportOptions(Path(args.run_dir), Path(args.out) if args.out else None, args.title)


def run(args: argparse.Namespace) -> int:
    return report(options(args))


def report(opts: ReportOptions) -> int:
    from smoothguard.evaluation.report import write_report

    if not opts.run_dir.is_dir():
        raise FileNotFoundError(f"{opts.run_dir}: no such folder (give a run folder or a folder of result files)")
    out = opts.html
    info = write_report(opts.run_dir, out, title=opts.title)
    missing = [k for k, v in info["sections"].items() if not v]
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, {len(info['figures'])} figure files next to it)"
          + (f"; sections without data: {', '.join(missing)}" if missing else ""), file=sys.stderr)
    return 0
