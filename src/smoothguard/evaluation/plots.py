"""Plots of certification results (matplotlib, imported only when a plot is drawn)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from smoothguard.contract import atomic_output
from smoothguard.evaluation.analysis import Results, certified_accuracy, legends, radius_norm, run_r_max

_GRID_POINTS = 2000


def plot_certified_accuracy(results_list: Sequence[Results], labels: Sequence[str] | None,
                            path_stem: str | Path, radii_max: float | None = None,
                            empirical: Sequence[tuple[str, Sequence[float], Sequence[float], int | None]] = (),
                            ) -> list[Path]:
    """Plot approximate certified accuracy against l2 radius (pixel units), one curve per
    certify file, and write ``PATH_STEM.png`` and ``PATH_STEM.svg``; returns both paths.

    Each curve is evaluated on a fine radius grid (plus the file's own radii, so every
    drop is exact) from 0 to ``radii_max`` (default: the largest R_max or certified radius
    over the files, plus 2 %) and drawn as a step curve. A dotted vertical line marks each
    run's R_max where its settings are known: no radius beyond it can be certified.
    ``labels`` default to the legends built from the settings. Predict files have no
    radii and are left out; a list with no certify file is an error.

    ``empirical``: (label, l2 eps values, accuracies, curve index or None) drawn as dashed
    lines with markers on the same axes: the empirical robust accuracy of the smoothed
    classifier under attack (an upper bound on what could be certified; Salman et al.
    2019, Figure 1 style); the index picks the colour of the certified curve it belongs to.

    Drawing uses matplotlib's Agg canvas on a standalone ``Figure``: no pyplot state and
    no change to the process-wide backend (safe next to an interactive session).
    """
    fig = certified_accuracy_figure(results_list, labels, radii_max, empirical)
    stem = Path(path_stem)
    if stem.suffix.lower() in (".png", ".svg"):
        stem = stem.with_suffix("")
    out = []
    for ext in (".png", ".svg"):
        target = stem.with_name(stem.name + ext)
        with atomic_output(target, "figure") as tmp:  # tight: a legend outside the axes is kept whole
            fig.savefig(tmp, format=ext[1:], metadata={"Date": None} if ext == ".svg" else None, bbox_inches="tight")
        out.append(target)
    return out


# legend entries that fit inside the axes (upper right, where certified-accuracy curves are
# low); more go outside, right of the axes, where they cannot cover an axis label or a curve
_LEGEND_INSIDE_MAX = 4


def certified_accuracy_figure(results_list: Sequence[Results], labels: Sequence[str] | None,
                              radii_max: float | None = None,
                              empirical: Sequence[tuple[str, Sequence[float], Sequence[float], int | None]] = ()):
    """The matplotlib ``Figure`` that :func:`plot_certified_accuracy` writes (y axis in %)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    results_list = list(results_list)
    if labels is None:
        labels = legends(results_list)
    labels = list(labels)
    if len(labels) != len(results_list):
        raise ValueError(f"got {len(labels)} labels for {len(results_list)} result files")
    pairs = [(r, lab) for r, lab in zip(results_list, labels) if r.kind == "certify"]
    if not pairs:
        raise ValueError("nothing to plot: certified accuracy needs at least one certify file (with radii)")

    norms = sorted({radius_norm(r) for r, _ in pairs})
    if len(norms) > 1:  # one axis, one norm: an l1 radius and an l2 radius are not comparable
        raise ValueError(f"these files certify radii in different norms ({', '.join(norms)}); plot each norm "
                         "separately")
    r_maxes = [run_r_max(r) for r, _ in pairs]
    if radii_max is None:
        top = max([float(r.radius.max()) for r, _ in pairs if len(r)] + [m for m in r_maxes if m is not None]
                  + [0.0])
        radii_max = 1.02 * top if top > 0 else 1.0
    if not radii_max > 0:
        raise ValueError(f"radii_max must be > 0, got {radii_max}")

    fig = Figure(figsize=(6.4, 4.2), dpi=150)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for _, eps, acc, _k in empirical:
        if len(eps):
            radii_max = max(radii_max, 1.02 * float(max(eps)))
    base = np.linspace(0.0, radii_max, _GRID_POINTS)
    colors = []
    for (res, lab), rm in zip(pairs, r_maxes):
        own = res.radius[(res.radius > 0) & (res.radius <= radii_max)]
        # The curve drops just after each certified radius: sample each radius and a point
        # right after it, so the steps are exact at any zoom.
        grid = np.unique(np.concatenate([base, own, np.nextafter(own, np.inf)]))
        acc = certified_accuracy(res, grid) if len(res) else np.zeros_like(grid)
        (line,) = ax.plot(grid, acc, label=lab, linewidth=1.6)
        colors.append(line.get_color())
        if rm is not None and rm <= radii_max:
            ax.axvline(rm, color=line.get_color(), linestyle=":", linewidth=1.0)
    for j, (lab, eps, acc, k) in enumerate(empirical):
        color = colors[k] if k is not None and 0 <= k < len(colors) else f"C{(len(colors) + j) % 10}"
        order = np.argsort(np.asarray(eps, dtype=float))
        ax.plot(np.asarray(eps, dtype=float)[order], np.asarray(acc, dtype=float)[order], linestyle="--",
                marker="o", markersize=3, linewidth=1.3, color=color, label=lab)
    ax.set_xlim(0.0, radii_max)
    ax.set_ylim(-0.01, 1.01)  # keep curves at 0 and 1 off the frame
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))  # every table is in %
    ax.set_xlabel(rf"$\ell_{{{norms[0][1:]}}}$ radius (pixel units, inputs in [0, 1])")
    ax.set_ylabel("certified accuracy (%)")
    ax.set_title("Certified (solid) and empirical (dashed, under attack) accuracy; dotted: $R_{max}$"
                 if len(empirical) else "Approximate certified accuracy (dotted: $R_{max}$ of the run)", fontsize=10)
    ax.grid(True, alpha=0.3)
    if len(pairs) + len(empirical) <= _LEGEND_INSIDE_MAX and not len(empirical):
        ax.legend(fontsize=8, loc="upper right")
    else:  # many entries: outside, right of the axes (below them they collided with the x label)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return fig
