"""``smoothguard analyze``: summary table and certified-accuracy plot of result files."""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from smoothguard.cli._conventions import add_deprecated
from smoothguard.contract import write_text_atomic

HELP = "summarize certify/predict result files: certified-accuracy table and plot"

DESCRIPTION = """\
Summarize certification (or prediction) result files: approximate certified accuracy at
each radius, average certified radius (ACR), abstention rate, clean accuracy of the
smoothed classifier, R_max of the run and mean time per image; optionally the
high-probability lower bound on certified accuracy (Cohen et al., Appendix D, Theorem 6).
Reads smoothguard's files (settings from FILE.tsv.json) and Cohen et al.'s original files
(give --sigma/--n/--alpha for R_max and the lower bound). Radii are l2, in [0,1] pixel
units. Best value per column: '*' in the terminal table, bold in Markdown/LaTeX, not
marked in CSV. With --plot, also writes a certified-accuracy plot (PNG and SVG): next to
the first certify file, or at --plot PATH_STEM."""

_SUFFIX_FORMATS = {".md": "markdown", ".markdown": "markdown", ".tex": "latex", ".csv": "csv",
                   ".txt": "table"}

COMMON_OPTIONS = False  # reads files and draws plots: no device, seed or threads


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="certify or predict result files (.tsv); verify and attack files make a table of "
                        "verified vs robust accuracy per eps")
    p.add_argument("--radii", default="0,0.25,0.5,0.75,1.0",
                   help="comma-separated l2 radii (pixel units) of the certified-accuracy columns")
    p.add_argument("--format", default=None, choices=["table", "markdown", "latex", "csv"],
                   help="table format (default: table; with --out, guessed from its suffix "
                        ".md/.tex/.csv/.txt)")
    p.add_argument("--out", default=None, metavar="PATH",
                   help="write the table in --format to PATH (the terminal table is still printed)")
    add_deprecated(p, "analyze", "out")
    p.add_argument("--plot", nargs="?", const="", default=None, metavar="PATH_STEM",
                   help="also write the certified-accuracy plot: to PATH_STEM.png and PATH_STEM.svg, or with no "
                        "value next to the first certify file (results/certify.tsv -> "
                        "results/certify_certified_accuracy.png). Default: no plot")
    p.add_argument("--no-plot", action="store_true", help="write no plot even with --plot (the default without "
                                                          "--plot; kept for older scripts)")
    g = p.add_argument_group("settings for files without a sidecar (a sidecar's values win)")
    g.add_argument("--sigma", type=float, default=None, help="noise level sigma of the run (pixel units)")
    g.add_argument("--n", type=int, default=None, help="number of estimation samples n of the run")
    g.add_argument("--alpha", type=float, default=None, help="failure probability alpha of CERTIFY")
    p.add_argument("--rho", type=float, default=0.001,
                   help="the lower bound holds with probability 1 - rho over the test set")
    p.add_argument("--lower-bound", action="store_true",
                   help="add columns with the high-probability lower bound on certified accuracy")


def validate(args: argparse.Namespace) -> list[float]:
    """The option checks (no file is read); returns the radii."""
    from smoothguard.cli.common import parse_floats

    radii = parse_floats(args.radii, "--radii")
    if not radii:
        raise ValueError("--radii needs at least one radius, e.g. --radii 0,0.25,0.5")
    bad = [r for r in radii if not math.isfinite(r) or r < 0]
    if bad:
        raise ValueError(f"--radii must be finite and >= 0, got {bad}")
    if args.sigma is not None and not args.sigma > 0:
        raise ValueError(f"--sigma must be > 0, got {args.sigma}")
    if args.n is not None and args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    if args.alpha is not None and not 0 < args.alpha < 1:
        raise ValueError(f"--alpha must be in (0, 1), got {args.alpha}")
    if not 0 < args.rho < 1:
        raise ValueError(f"--rho must be in (0, 1), got {args.rho}")
    return radii


def _ends_line(text: str) -> str:
    """``text`` ending in a newline, so the next message (stderr's "wrote ...") starts a line."""
    return text if text.endswith("\n") else text + "\n"


def _default_stem(path: Path) -> Path:
    name = path.name[: -len(".tsv")] if path.name.lower().endswith(".tsv") else path.name
    return path.with_name(name + "_certified_accuracy")


@dataclass(frozen=True)
class AnalyzeOptions:
    """What ``smoothguard analyze`` does: summarize ``files`` at ``radii``; write the table
    to ``out`` in ``format`` (None: from out's suffix, else the terminal table); ``plot``:
    None for no plot, "" for one next to the first certify file, else the path stem;
    ``sigma`` / ``n`` / ``alpha`` for files without a sidecar; the lower bound at ``rho``."""

    files: tuple[str, ...]
    radii: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    format: str | None = None
    out: Path | None = None
    plot: str | None = None
    sigma: float | None = None
    n: int | None = None
    alpha: float | None = None
    rho: float = 0.001
    lower_bound: bool = False


def options(args: argparse.Namespace) -> AnalyzeOptions:
    """The checked, typed options of the command line."""
    radii = validate(args)
    return AnalyzeOptions(files=tuple(args.files), radii=tuple(radii), format=args.format,
                          out=Path(args.out) if args.out is not None else None,
                          plot=None if args.no_plot else args.plot, sigma=args.sigma, n=args.n, alpha=args.alpha,
                          rho=args.rho, lower_bound=args.lower_bound)


def run(args: argparse.Namespace) -> int:
    return analyze(options(args))


def analyze(opts: AnalyzeOptions) -> int:
    from smoothguard.evaluation.analysis import read_results, summary_table
    from smoothguard.evaluation.formats import ATTACK, VERIFY, read_header

    files = list(opts.files)
    # verify and attack files (issue 20): verified accuracy beside robust accuracy per eps
    sandwich = [p for p in files if tuple(read_header(p)) in (VERIFY.columns, ATTACK.columns)]
    if sandwich:
        from smoothguard.evaluation.verified import format_sandwich, read_runs

        fmt = opts.format or (_SUFFIX_FORMATS.get(opts.out.suffix.lower(), "table") if opts.out else "table")
        text = format_sandwich(read_runs(sandwich), "csv" if fmt == "csv" else
                               "markdown" if fmt == "markdown" else "table")
        print(_ends_line(text), end="")
        files = [p for p in files if p not in sandwich]
        if not files:
            if opts.out is not None:
                write_text_atomic(opts.out, text, "--out")
                print(f"wrote {opts.out}", file=sys.stderr)
            return 0
    results = [read_results(p).with_settings(sigma=opts.sigma, n=opts.n, alpha=opts.alpha) for p in files]
    for res in results:
        if res.skipped_partial_line is not None:
            print(f"note: {res.path}: skipped the unfinished last line {res.skipped_partial_line} "
                  "(file still being written?)", file=sys.stderr)
        if len(res) == 0:
            print(f"note: {res.path}: no result rows yet", file=sys.stderr)
    if opts.lower_bound:
        for res in results:
            if res.kind == "certify" and res.settings.get("alpha") is None:
                print(f"note: {res.path}: alpha unknown (no sidecar): give --alpha for the lower bound",
                      file=sys.stderr)
    table = summary_table(results, list(opts.radii), rho=opts.rho, lower_bound=opts.lower_bound)

    fmt = opts.format
    if opts.out is not None:
        fmt = fmt or _SUFFIX_FORMATS.get(opts.out.suffix.lower(), "table")
        write_text_atomic(opts.out, table.render(fmt), "--out")
        print(_ends_line(table.render("table")), end="", flush=True)
        print(f"wrote {opts.out} ({fmt})", file=sys.stderr)
    else:
        print(_ends_line(table.render(fmt or "table")), end="", flush=True)

    if opts.plot is not None:
        certify = [r for r in results if r.kind == "certify"]
        if not certify:
            print("note: no certify file among the inputs: no certified-accuracy plot", file=sys.stderr)
        else:
            from smoothguard.evaluation.plots import plot_certified_accuracy

            labels = [row.label for row, r in zip(table.rows, results) if r.kind == "certify"]
            stem = Path(opts.plot) if opts.plot else _default_stem(Path(certify[0].path))  # --plot alone: beside
            paths = plot_certified_accuracy(certify, labels, stem)
            print("wrote " + " and ".join(str(p) for p in paths), file=sys.stderr)
    return 0
