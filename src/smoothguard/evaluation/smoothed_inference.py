"""Tables and plots of a smoothed-inference evaluation (``smoothguard smooth-eval``).

The per-image result file holds, for every combination (sigma, m, vote method) of the
grid, the smoothed prediction on the clean image and on the adversarial point of each
attack. This module turns those rows into accuracies per combination and draws accuracy
against m and against sigma (Nemcovsky et al.: accuracy grows with m and has an optimum
in sigma).

Accuracy under an attack counts a point only if the smoothed classifier is right on the
clean image *and* on the attacked one (the attack could have returned x itself, which
lies in the threat model), so it never exceeds the clean accuracy; ``worst`` counts the
points right under every attack of the row.
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from smoothguard.defaults import SMOOTH_EVAL_BATCH

CLEAN = "clean"
WORST = "worst"
SMOOTH_ATTACKS = ("pgd", "epgd", "transfer", "nattack")
ATTACK_DESCRIPTIONS = {
    "pgd": "PGD on the smoothed model with one noise draw per step (the paper's evaluation; highest-loss iterate)",
    "epgd": "EPGD: PGD on the CE loss averaged over m noise draws per step (EOT)",
    "transfer": "PGD crafted on the base model without noise, evaluated on the smoothed classifier",
    "nattack": "NAttack (score-based) on the smoothed model's probabilities (m draws per query)",
}
TABLE_FORMATS = ("table", "markdown", "csv", "json")


def prediction_column(sigma: float, m: int, method: str, attack: str) -> str:
    """Name of the result-file column holding the smoothed prediction of one combination."""
    return f"s{sigma:g}_m{m}_{method}_{attack}"


@dataclass(frozen=True)
class SmoothEvalGrid:
    """The combinations of a smoothed-inference evaluation: sigma (pixel units, 0 = base
    model), m (noise draws per prediction), vote methods and attacks."""

    sigmas: tuple[float, ...]
    ms: tuple[int, ...]
    methods: tuple[str, ...]
    attacks: tuple[str, ...]

    def combinations(self) -> list[tuple[float, int, str]]:
        return [(s, m, meth) for s in self.sigmas for m in self.ms for meth in self.methods]

    @property
    def evaluations(self) -> tuple[str, ...]:
        return (CLEAN, *self.attacks)

    def columns(self) -> list[str]:
        """Result-file header: idx, label, one prediction column per combination and
        evaluation, time (seconds per image)."""
        return (["idx", "label"]
                + [prediction_column(s, m, meth, a) for s, m, meth in self.combinations() for a in self.evaluations]
                + ["time"])


@dataclass
class SmoothEvalRow:
    """Accuracies (fractions) of one combination over ``n`` images: ``accuracy`` maps
    ``clean``, each attack and ``worst`` (right under every attack) to a fraction."""

    sigma: float
    m: int
    method: str
    n: int
    accuracy: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"sigma": self.sigma, "m": self.m, "method": self.method, "n": self.n, "accuracy": dict(self.accuracy)}


def summarize(rows: Sequence[Sequence[str]], grid: SmoothEvalGrid) -> list[SmoothEvalRow]:
    """Accuracy per combination from result-file rows (lists of strings in the order of
    ``grid.columns()``)."""
    columns = grid.columns()
    pos = {c: i for i, c in enumerate(columns)}
    out = []
    for s, m, meth in grid.combinations():
        labels = [int(r[1]) for r in rows]

        def right(attack: str) -> list[bool]:
            col = pos[prediction_column(s, m, meth, attack)]
            return [int(r[col]) == lab for r, lab in zip(rows, labels)]

        n = len(rows)
        clean = right(CLEAN)
        acc = {CLEAN: sum(clean) / n if n else math.nan}
        every = list(clean)
        for a in grid.attacks:
            ok = [c and v for c, v in zip(clean, right(a))]
            every = [e and v for e, v in zip(every, ok)]
            acc[a] = sum(ok) / n if n else math.nan
        if len(grid.attacks) > 1:
            acc[WORST] = sum(every) / n if n else math.nan
        out.append(SmoothEvalRow(s, m, meth, n, acc))
    return out


def _keys(rows: Sequence[SmoothEvalRow]) -> list[str]:
    return list(rows[0].accuracy) if rows else [CLEAN]


def _pct(v: float) -> str:
    return "-" if v is None or math.isnan(v) else f"{100.0 * v:.1f}"


def render_table(rows: Sequence[SmoothEvalRow], fmt: str = "table", title: str | None = None,
                 notes: Sequence[str] = ()) -> str:
    """The accuracy table as ``table`` (aligned text), ``markdown``, ``csv`` (fractions,
    full precision) or ``json``. Accuracies in percent except in CSV/JSON."""
    if fmt not in TABLE_FORMATS:
        raise ValueError(f"unknown table format {fmt!r}; allowed: {', '.join(TABLE_FORMATS)}")
    keys = _keys(rows)
    if fmt == "json":
        return json.dumps({"title": title, "rows": [r.to_dict() for r in rows], "notes": list(notes)},
                          indent=2) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["sigma", "m", "method", "n"] + keys)
        for r in rows:
            w.writerow([repr(r.sigma), r.m, r.method, r.n] + [repr(float(r.accuracy[k])) for k in keys])
        return buf.getvalue()
    header = ["sigma", "m", "method", "n"] + keys
    body = [[f"{r.sigma:g}", str(r.m), r.method, str(r.n)] + [_pct(r.accuracy[k]) for k in keys] for r in rows]
    legend = ("accuracy of the smoothed classifier in %; an attacked point counts only if the clean one is right too; "
              "sigma 0 = the base model")
    if fmt == "markdown":
        lines = [f"### {title}", ""] if title else []
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---:", "---:", ":---", "---:"] + ["---:"] * len(keys)) + "|")
        lines += ["| " + " | ".join(b) + " |" for b in body]
        lines += ["", legend[0].upper() + legend[1:] + "."]
        lines += [f"- {n}" for n in notes]
        return "\n".join(lines) + "\n"
    widths = [max(len(line[j]) for line in [header] + body) for j in range(len(header))]

    def fmt_line(line: list[str]) -> str:
        return "  ".join(s.ljust(w) if j == 2 else s.rjust(w) for j, (s, w) in enumerate(zip(line, widths))).rstrip()

    lines = [title] if title else []
    lines += [fmt_line(header), "  ".join("-" * w for w in widths)] + [fmt_line(b) for b in body]
    lines.append(f"({legend})")
    lines += [f"  {n}" for n in notes]
    return "\n".join(lines) + "\n"


_STYLES = ("-", "--", ":", "-.")


def plot_accuracy_vs(rows: Sequence[SmoothEvalRow], grid: SmoothEvalGrid, x: str, stem: str | Path,
                     title: str | None = None) -> list[Path]:
    """Accuracy (%) against ``x`` (``"m"``, log2 axis, or ``"sigma"``), one panel per
    evaluation (clean, each attack, worst), one line per value of the other parameter
    (colour) and vote method (line style). Writes ``STEM.png`` and ``STEM.svg``."""
    from smoothguard.evaluation.attack_plots import _new_figure, _save

    if x not in ("m", "sigma"):
        raise ValueError(f"x must be 'm' or 'sigma'; got {x!r}")
    if not rows:
        raise ValueError("nothing to plot: no rows")
    keys = _keys(rows)
    other = grid.sigmas if x == "m" else grid.ms
    fig = _new_figure(3.3 * len(keys) + 1.6, 3.4)
    axes = fig.subplots(1, len(keys), sharey=True, squeeze=False)[0]
    colors = [f"C{i % 10}" for i in range(len(other))]
    for ax, key in zip(axes, keys):
        for oi, ov in enumerate(other):
            for mi, meth in enumerate(grid.methods):
                sel = [r for r in rows if r.method == meth and (r.sigma == ov if x == "m" else r.m == ov)]
                sel.sort(key=lambda r: r.m if x == "m" else r.sigma)
                xs = [r.m if x == "m" else r.sigma for r in sel]
                ys = [100.0 * r.accuracy[key] for r in sel]
                lab = (f"σ={ov:g}" if x == "m" else f"m={ov}") + f" {meth}"
                ax.plot(xs, ys, color=colors[oi], linestyle=_STYLES[mi % len(_STYLES)], marker="o",
                        markersize=3, linewidth=1.3, label=lab)
        if x == "m" and max(grid.ms) > 1:
            ax.set_xscale("log", base=2)
            ax.set_xticks(list(grid.ms), [str(v) for v in grid.ms])
            ax.minorticks_off()
        ax.set_title(key if key in (CLEAN, WORST) else f"under {key}", fontsize=10)
        ax.set_xlabel("m (noise draws per prediction)" if x == "m" else "σ (pixel units)")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    axes[0].set_ylim(-2, 102)
    axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    if title:
        fig.suptitle(title, fontsize=10, y=1.04)
    return _save(fig, stem)


# --------------------------------------------------------------------------- the evaluation


@dataclass(frozen=True)
class SmoothEvalOptions:
    """The attack and run settings of a smoothed-inference evaluation: threat model
    (``norm``, ``eps`` in pixel units), PGD ``steps`` / ``step_size`` (None: 2.5 eps /
    steps), NAttack ``queries`` / ``population``, noisy images per forward pass
    (``batch``) and per attack step (``attack_batch``), the ``seed`` and the ``device``."""

    norm: str = "linf"
    eps: float = 0.1
    steps: int = 20
    step_size: float | None = None
    queries: int = 2000
    population: int = 100
    batch: int = SMOOTH_EVAL_BATCH["cpu"]
    attack_batch: int = 4096
    seed: int = 0
    device: Any = "cpu"


def _chunked(attack, x: torch.Tensor, y: torch.Tensor, chunk: int) -> torch.Tensor:
    return torch.cat([attack.run(x[i:i + chunk], y[i:i + chunk]).x_adv for i in range(0, x.shape[0], chunk)])


def make_compute(opts: SmoothEvalOptions, grid: SmoothEvalGrid, base: torch.nn.Module, num_classes: int,
                 caught: dict[str, int]):
    """The per-group function of a smoothed-inference evaluation: (images, labels, dataset
    indices) -> rows of predictions in the order of ``grid.columns()`` (without the time
    column); the warnings the attacks raise are counted into ``caught`` by message.

    Vote noise comes from the per-image seed ``image_seed(--seed, idx)``, the same for the
    clean image, every attacked point, every m and every method (common random numbers:
    an attack that returns x changes nothing). Attack randomness is seeded per group.
    """
    from smoothguard import attacks as A
    from smoothguard.models.noise import set_noise_injection
    from smoothguard.smoothing import SmoothedClassifier, SmoothedModel, image_seed, vote_scores
    from smoothguard.utils import derive_seed

    device = opts.device
    smoothed = {s: SmoothedClassifier(base, num_classes, s, memory_format="contiguous") for s in grid.sigmas if s > 0}
    pgd_kw = dict(norm=opts.norm, eps=opts.eps, steps=opts.steps, step_size=opts.step_size)
    stochastic: list[bool] = []  # is the base model itself noisy (PNI / CNI)? decided on the first group

    def compute(x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> list[list]:
        x, y = x.to(device), y.to(device)
        first = int(idx[0])
        seeds = [image_seed(opts.seed, int(i)) for i in idx.tolist()]

        def aseed(*parts) -> int:
            return derive_seed(opts.seed, "smooth-eval", *parts, first) & ((1 << 62) - 1)

        if not stochastic:
            with torch.no_grad():
                stochastic.append(not torch.equal(base(x[:8]), base(x[:8])))
        noisy_base = stochastic[0]
        base_pred: dict[str, torch.Tensor] = {}

        def predict(s: float, xx: torch.Tensor, m: int, method: str, key: str) -> torch.Tensor:
            if s == 0 and noisy_base:  # the model's own noise only: m separate forward passes
                with torch.no_grad():
                    return vote_scores(torch.stack([base(xx) for _ in range(m)]), method).argmax(1).cpu()
            if s == 0:  # a deterministic model: every m and method is its argmax (``key`` names xx)
                if key not in base_pred:
                    with torch.no_grad():
                        base_pred[key] = torch.cat([base(c).argmax(1) for c in xx.split(opts.batch)]).cpu()
                return base_pred[key]
            return smoothed[s].vote(xx, m, method, opts.batch, seeds=seeds)

        preds: dict[tuple, torch.Tensor] = {}
        with warnings.catch_warnings(record=True) as wlist:
            warnings.simplefilter("always", A.RobustnessWarning)
            x_tr = None
            if grid.attacks:
                # PGD on the base model without noise (noise-injection layers switched off while it
                # runs): the transfer attack, and for a deterministic model at sigma 0 also pgd and epgd
                switched = set_noise_injection(base, False) if noisy_base else 0
                try:
                    x_tr = _chunked(A.PGD(base, **pgd_kw, seed=aseed("transfer")), x, y, len(x))
                finally:
                    if switched:
                        set_noise_injection(base, True)
            for s in grid.sigmas:
                x_pgd = None
                if "pgd" in grid.attacks:
                    # one noise draw per step (the paper's evaluation); no stop at a first success,
                    # which under noise is often a lucky draw (the paper's loop runs all its steps)
                    if s > 0 or noisy_base:  # at sigma 0: a draw of the model's own noise per step
                        target = base if s == 0 else SmoothedModel(base, s, 1, "soft", batch_size=opts.batch,
                                                                   seed=aseed("pgd-noise", s))
                        pgd = A.PGD(target, **pgd_kw, seed=aseed("pgd", s))
                        pgd.stop_on_success = False
                        x_pgd = _chunked(pgd, x, y, len(x))
                    else:
                        x_pgd = x_tr
                na_cache: dict[tuple, torch.Tensor] = {}
                for m in grid.ms:
                    x_ep = None
                    if "epgd" in grid.attacks:
                        if s == 0:  # EOT over the model's own noise, or plain PGD on a deterministic model
                            x_ep = _chunked(A.PGD(base, **pgd_kw, eot=m, seed=aseed("epgd", s, m)), x, y,
                                            max(1, opts.attack_batch // m)) if noisy_base and m > 1 else x_tr
                        else:
                            epgd = A.EPGD(base, **pgd_kw, sigma=s, num_noise=m, seed=aseed("epgd", s, m))
                            x_ep = _chunked(epgd, x, y, max(1, opts.attack_batch // m))
                    for meth in grid.methods:
                        adv = {"pgd": x_pgd, "epgd": x_ep, "transfer": x_tr}
                        if "nattack" in grid.attacks:
                            key = (meth,) if s == 0 else (meth, m)
                            if key not in na_cache:
                                m_eff = 1 if s == 0 else m
                                target = SmoothedModel(base, s, m_eff, meth, batch_size=opts.batch,
                                                       seed=aseed("nattack-noise", s, m, meth))
                                atk = A.NAttack(target, norm=opts.norm, eps=opts.eps, max_queries=opts.queries,
                                                population=opts.population,
                                                batch_size=opts.population * max(1, opts.attack_batch
                                                                                 // (opts.population * m_eff)),
                                                seed=aseed("nattack", s, m, meth))
                                na_cache[key] = atk.run(x, y).x_adv
                            adv["nattack"] = na_cache[key]
                        preds[(s, m, meth, "clean")] = predict(s, x, m, meth, "clean")
                        for a in grid.attacks:
                            # names the tensor for the sigma-0 cache of a deterministic model
                            key = f"nattack:{meth}" if a == "nattack" else a if a != "epgd" else f"epgd:{m}"
                            preds[(s, m, meth, a)] = predict(s, adv[a], m, meth, key)
        for w in wlist:
            msg = str(w.message)
            caught[msg] = caught.get(msg, 0) + 1
        rows = []
        for j, (i, lab) in enumerate(zip(idx.tolist(), y.tolist())):
            row = [int(i), int(lab)]
            for s, m, meth in grid.combinations():
                row += [int(preds[(s, m, meth, a)][j]) for a in grid.evaluations]
            rows.append(row)
        return rows

    return compute
