"""Plots of a robustness evaluation (``smoothguard evaluate``).

* :func:`plot_accuracy_vs_eps`: robust accuracy against eps, one panel per norm;
* :func:`plot_restart_losses`: histograms of the final PGD loss over random restarts
  (Madry et al. 2018, Figure 2);
* :func:`plot_adversarial_grid`: clean image / perturbation / adversarial image.

Each writes ``STEM.png`` and ``STEM.svg`` atomically (a temporary file renamed into
place) and returns both paths. matplotlib is imported only inside the functions, and
drawing uses a standalone ``Figure`` with the Agg canvas: no pyplot global state and no
change to the process-wide backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from smoothguard.contract import atomic_output
from smoothguard.evaluation.robustness import EpsCurve, RobustnessEvaluation

_NORM_TITLE = {"linf": r"$\ell_\infty$", "l2": r"$\ell_2$"}


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=150)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, stem: str | Path) -> list[Path]:
    stem = Path(stem)
    paths = []
    for ext in ("png", "svg"):
        final = stem.with_name(stem.name + "." + ext)
        with atomic_output(final, "figure") as tmp:
            fig.savefig(tmp, format=ext, bbox_inches="tight")
        paths.append(final)
    return paths


def plot_accuracy_vs_eps(curves: Sequence[EpsCurve], stem: str | Path,
                         marks: Sequence[tuple[str, float, float, str]] = ()) -> list[Path]:
    """One panel per curve (norm): robust accuracy (%) against eps (pixel units).

    ``marks``: (norm, eps, accuracy, label) points drawn on the matching panel, e.g. the
    full evaluation's worst case, which is at most the curve's value at that eps.
    """
    curves = list(curves)
    if not curves:
        raise ValueError("nothing to plot: no accuracy-vs-eps curve")
    fig = _new_figure(4.2 * len(curves), 3.6)
    for i, c in enumerate(curves):
        ax = fig.add_subplot(1, len(curves), i + 1)
        ax.plot(c.eps, [100 * a for a in c.accuracy], marker="o", label=" + ".join(c.attacks) or "attack")
        for norm, e, acc, lab in marks:
            if norm == c.norm:
                ax.plot([e], [100 * acc], marker="*", markersize=12, linestyle="none", color="C3", label=lab)
        ax.set_xlabel(f"eps ({_NORM_TITLE.get(c.norm, c.norm)}, pixel units)")
        ax.set_ylabel("robust accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.set_title(f"{_NORM_TITLE.get(c.norm, c.norm)} threat model, {c.n} images")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return _save(fig, stem)


def plot_restart_losses(losses: torch.Tensor | np.ndarray, stem: str | Path, loss_name: str = "cross-entropy",
                        labels: Sequence[str] | None = None, pooled: torch.Tensor | np.ndarray | None = None,
                        bins: int = 30) -> list[Path]:
    """Histograms of final losses over random restarts, one panel per example (rows of
    ``losses``, shape (n_examples, restarts)), log-scale counts as in Madry et al.'s
    Figure 2 (linear when no bin reaches 20). ``pooled``: optional extra panel with every restart loss of the evaluation's
    PGD (NaN entries, restarts that were skipped, are dropped)."""
    arr = np.asarray(torch.as_tensor(losses).detach().cpu().float().numpy())
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"losses must have shape (examples, restarts) with examples >= 1; got {arr.shape}")
    panels = [(arr[i][np.isfinite(arr[i])], labels[i] if labels else f"example {i}") for i in range(arr.shape[0])]
    if pooled is not None:
        p = np.asarray(torch.as_tensor(pooled).detach().cpu().float().numpy()).ravel()
        panels.append((p[np.isfinite(p)], "all points, evaluation PGD"))
    from matplotlib.ticker import FuncFormatter, MaxNLocator, NullLocator

    cols = min(len(panels), 3)
    rows = (len(panels) + cols - 1) // cols
    fig = _new_figure(3.4 * cols, 2.7 * rows)
    for i, (vals, title) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        log = False
        if vals.size:
            counts, _ = np.histogram(vals, bins=bins)
            # log counts (as in Madry et al.) only where the counts span a range worth it
            log = bool(counts.max() >= 20)
            ax.hist(vals, bins=bins, log=log, color="C0" if i < arr.shape[0] else "C1")
        ax.set_title(title, fontsize=8)
        ax.set_xlabel(f"final {loss_name} loss", fontsize=8)
        ax.set_ylabel("restarts (count)", fontsize=8)
        ax.tick_params(labelsize=7)
        # a few x ticks (long loss values overlapped), counts as whole numbers (never 0.5 or 10^0.5)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
        if log:
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}" if v >= 1 else ""))
            ax.yaxis.set_minor_locator(NullLocator())
        else:
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"Loss after PGD over {arr.shape[1]} random restarts", fontsize=9)
    fig.tight_layout()
    return _save(fig, stem)


def plot_adversarial_grid(ev: RobustnessEvaluation, x: torch.Tensor, indices: Sequence[int], stem: str | Path,
                          class_names: Sequence[str] | None = None) -> list[Path]:
    """Rows: clean image, perturbation (x_adv - x, diverging colours scaled to eps for
    l_inf and to the largest |delta| for l_2), adversarial image; one column per example
    in ``indices`` (positions in the evaluated batch)."""
    idx = [int(i) for i in indices]
    if not idx:
        raise ValueError("nothing to plot: no example selected")
    xs = x.detach().cpu().float()
    xa = ev.x_adv.detach().cpu().float()
    names = list(class_names) if class_names else None

    def cname(k: int) -> str:
        return names[k] if names and 0 <= k < len(names) else str(k)

    fig = _new_figure(1.5 * len(idx) + 0.6, 4.9)
    for j, i in enumerate(idx):
        clean, adv = xs[i], xa[i]
        delta = (adv - clean)
        scale = ev.eps if ev.norm == "linf" else max(float(delta.abs().max()), 1e-12)
        for r, (img, title) in enumerate((
            (clean, f"{cname(int(ev.y[i]))}\n(pred {cname(int(ev.clean_pred[i]))})"),
            (delta, f"{ev.norm} norm {float(ev.norms[i]):.3f}"),
            (adv, f"-> {cname(int(ev.adv_pred[i]))}" + (f"\n{ev.fooled_by_name(i)}" if ev.fooled_by[i] >= 0
                                                         else "\n(robust)")),
        )):
            ax = fig.add_subplot(3, len(idx), r * len(idx) + j + 1)
            arr = img.numpy()
            if arr.shape[0] == 1:
                arr = arr[0]
                cmap = "seismic" if r == 1 else "gray"
            else:
                arr = np.transpose(arr, (1, 2, 0))
                if r == 1:
                    arr = arr.mean(axis=2)
                cmap = "seismic" if r == 1 else None
            if r == 1:
                ax.imshow(arr, cmap=cmap, vmin=-scale, vmax=scale)
            else:
                ax.imshow(np.clip(arr, 0, 1), cmap=cmap, vmin=0, vmax=1)
            ax.set_title(title, fontsize=6)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"clean / perturbation / adversarial ({ev.norm}, eps = {ev.eps:g})", fontsize=8)
    fig.tight_layout()
    return _save(fig, stem)
