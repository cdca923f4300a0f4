"""Empirical robustness evaluation: a cascade of attacks and the worst case per example.

The evaluation follows Madry et al. (ICLR 2018, Table 1) and Croce & Hein's AutoAttack
(ICML 2020): several attacks of different kinds (single step, multi-step PGD with random
restarts, the C&W margin loss, APGD with CE and DLR losses, the score-based Square
attack, transfer from surrogate models) are run against one model within one threat
model (norm, eps in [0, 1] pixel units), and an example counts as robust only if *every*
attack failed on it.

Running every attack on every point is wasteful: once a point is fooled, nothing more is
learned from attacking it. :func:`evaluate_robustness` therefore runs the attacks as a
**cascade**: each attack only on the points still robust after the previous ones. Each
table row reports the *running worst case* (accuracy against the union of the attacks so
far), and the final row the worst case per example. With ``independent=True`` every
attack runs on every clean-correct point instead, so each row also reports the attack's
own accuracy (the costly way, useful to compare attacks).

Gradient masking check (Athalye et al. 2018; Carlini et al. 2019's checklist): a
black-box or transfer attack should never find adversarial examples that the white-box
attacks missed. When it does (beyond ``masking_tolerance``), a
:class:`~smoothguard.attacks.RobustnessWarning` is raised and recorded.

Also here: :func:`accuracy_vs_eps` (robust accuracy on an eps grid, monotone by
construction) and :func:`restart_loss_distribution` (final PGD losses over many random
restarts, Madry et al. Figure 2). Nothing here imports matplotlib or tqdm: plots live in
:mod:`smoothguard.evaluation.attack_plots`, progress bars in the CLI.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from smoothguard.attacks import (
    APGD,
    FAB,
    FGM,
    FGSM,
    NORMS,
    PGD,
    Attack,
    RobustnessWarning,
    Square,
    TransferAttack,
    check_blackbox_vs_whitebox,
)
from smoothguard.attacks.base import eval_mode
from smoothguard.defaults import APGD_STEPS, ATTACK_BATCH, FAB_STEPS, N_TARGETS, PGD_STEPS, SQUARE_QUERIES, batch_for
from smoothguard.contract import (check_fraction, check_images, check_int, check_labels, check_logits, forward_errors,
                                  model_in_shape)
from smoothguard.utils import model_device

WHITE_BOX, BLACK_BOX, TRANSFER = "white-box", "black-box", "transfer"
KINDS = (WHITE_BOX, BLACK_BOX, TRANSFER)

# Keys of the attacks :func:`build_cascade` knows, in cascade order (cheap to expensive,
# white-box before black-box). "fgsm" is FGM (the l_2 step) when norm == "l2".
CASCADE_ATTACKS = ("fgsm", "pgd", "pgd-cw", "apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square")
# The default: AutoAttack's standard suite (APGD-CE, APGD-T with 9 targets, FAB-T with 9
# targets, Square with 5000 queries; Croce & Hein 2020) behind one FGSM step that removes the
# points a single gradient step already fools, for about one gradient evaluation each.
DEFAULT_CASCADE = ("fgsm", "apgd-ce", "apgd-t", "fab-t", "square")

ProgressFn = Callable[[str, int], None]


# ---------------------------------------------------------------------------------------
# what the cascade runs


@dataclass
class CascadeAttack:
    """One row of the evaluation table.

    Attributes:
        key: short identifier (``pgd``, ``apgd-dlr``, ``transfer:NAME``...).
        label: the row's name in the table.
        attack: a :class:`~smoothguard.attacks.Attack` built on the evaluated model (for
            transfer: a :class:`~smoothguard.attacks.TransferAttack` whose target is it).
        kind: ``"white-box"``, ``"black-box"`` or ``"transfer"``.
        n_targets: 0 for an untargeted attack; k > 0 runs the attack in targeted mode
            against the k highest-scoring wrong classes in turn (AutoAttack's APGD-T),
            each on the points not yet fooled; success is counted untargeted.
    """

    key: str
    label: str
    attack: Attack
    kind: str = WHITE_BOX
    n_targets: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {self.kind!r}")
        if not isinstance(self.attack, Attack):
            raise TypeError(f"attack must be a smoothguard Attack; got {type(self.attack).__name__}")
        if isinstance(self.n_targets, bool) or not isinstance(self.n_targets, int) or self.n_targets < 0:
            raise ValueError(f"n_targets must be an integer >= 0; got {self.n_targets!r}")


def build_cascade(
    model: nn.Module,
    norm: str,
    eps: float,
    *,
    attacks: Sequence[str] = DEFAULT_CASCADE,
    steps: int = PGD_STEPS,
    restarts: int = 10,
    step_size: float | None = None,
    apgd_steps: int = APGD_STEPS,
    apgd_targets: int = N_TARGETS,
    fab_steps: int = FAB_STEPS,
    square_queries: int = SQUARE_QUERIES,
    sources: Sequence[tuple[str, nn.Module]] = (),
    transfer_steps: int | None = None,
    eot: int = 1,
    seed: int | None = 0,
    force: bool = False,
) -> list[CascadeAttack]:
    """The standard rows of the table for ``model`` at (norm, eps), in cascade order.

    ``attacks`` picks among :data:`CASCADE_ATTACKS`:

    * ``fgsm``: FGSM (l_inf) / FGM (l_2), one step of size eps (Goodfellow et al. 2015);
    * ``pgd``: PGD with ``steps`` steps of ``step_size`` (default 2.5 eps / steps),
      random start, ``restarts`` restarts, cross-entropy (Madry et al. 2018);
    * ``pgd-cw``: the same PGD with the C&W margin loss, one restart (Madry's Table 1);
    * ``apgd-ce`` / ``apgd-dlr``: APGD with ``apgd_steps`` iterations (paper: 100);
    * ``apgd-t``: targeted APGD-DLR against the ``apgd_targets`` highest wrong classes
      (AutoAttack standard: 9);
    * ``fab-t``: targeted FAB (Croce & Hein 2020), ``fab_steps`` iterations against the same
      ``apgd_targets`` classes, eps-bounded (a point stops once broken within eps);
    * ``square``: the Square attack with ``square_queries`` queries per point and p_init 0.8
      (AutoAttack standard; paper: 10,000 queries).

    The default, :data:`DEFAULT_CASCADE`, is FGSM then AutoAttack's standard suite.

    ``sources``: (name, surrogate model) pairs; each adds a transfer row: PGD-``steps``
    (one restart) crafted on the surrogate, evaluated on ``model``. Transfer rows come
    after the white-box rows and before Square. ``seed`` seeds every attack (None: fresh
    entropy).
    """
    unknown = [a for a in attacks if a not in CASCADE_ATTACKS + ("fgm",)]
    if unknown:
        raise ValueError(f"unknown attack {unknown[0]!r}; allowed: {', '.join(CASCADE_ATTACKS)}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}; got {norm!r}")
    want = {"fgsm" if a == "fgm" else a for a in attacks}
    common = dict(eps=eps, seed=seed, force=force)
    rows: list[CascadeAttack] = []
    if "fgsm" in want:
        if norm == "linf":
            rows.append(CascadeAttack("fgsm", "FGSM", FGSM(model, loss="ce", eot=eot, **common)))
        else:
            rows.append(CascadeAttack("fgm", "FGM (l2 step)", FGM(model, loss="ce", eot=eot, **common)))
    pgd_kw = dict(norm=norm, steps=steps, step_size=step_size, random_start=True, eot=eot, **common)
    if "pgd" in want:
        r = f", {restarts} restarts" if restarts > 1 else ""
        rows.append(CascadeAttack("pgd", f"PGD-{steps}{r} (CE)", PGD(model, restarts=restarts, loss="ce", **pgd_kw)))
    if "pgd-cw" in want:
        rows.append(CascadeAttack("pgd-cw", f"PGD-{steps} (CW loss)", PGD(model, restarts=1, loss="cw", **pgd_kw)))
    apgd_kw = dict(norm=norm, steps=apgd_steps, eot=eot, **common)
    if "apgd-ce" in want:
        rows.append(CascadeAttack("apgd-ce", f"APGD-CE ({apgd_steps})", APGD(model, loss="ce", **apgd_kw)))
    if "apgd-dlr" in want:
        rows.append(CascadeAttack("apgd-dlr", f"APGD-DLR ({apgd_steps})", APGD(model, loss="dlr", **apgd_kw)))
    if "apgd-t" in want:
        rows.append(CascadeAttack("apgd-t", f"APGD-T ({apgd_steps}, {apgd_targets} targets)",
                                  APGD(model, loss="dlr", **apgd_kw), n_targets=apgd_targets))
    if "fab-t" in want:
        rows.append(CascadeAttack("fab-t", f"FAB-T ({fab_steps}, {apgd_targets} targets)",
                                  FAB(model, norm=norm, eps=eps, steps=fab_steps, seed=seed, force=force),
                                  n_targets=apgd_targets))
    for name, source in sources:
        src = PGD(source, norm=norm, eps=eps, steps=transfer_steps or steps, step_size=step_size,
                  restarts=1, loss="ce", seed=seed, force=force)
        rows.append(CascadeAttack(f"transfer:{name}", f"transfer: PGD-{transfer_steps or steps} on {name}",
                                  TransferAttack(src, model), kind=TRANSFER))
    if "square" in want:
        rows.append(CascadeAttack("square", f"Square ({square_queries} queries)",
                                  Square(model, norm=norm, eps=eps, max_queries=square_queries, seed=seed,
                                         force=force), kind=BLACK_BOX))
    return rows


# ---------------------------------------------------------------------------------------
# results


@dataclass
class CascadeRow:
    """One row of the table: what one attack did inside the cascade.

    ``accuracy`` is the running worst case (robust accuracy against this attack and all
    rows above it); ``alone_accuracy`` the attack's own robust accuracy over all points
    (only with ``independent=True``; None otherwise). ``fooled`` counts the points this
    row fooled first. ``queries``: mean model queries per attacked point (black-box).
    """

    key: str
    label: str
    kind: str
    attacked: int
    fooled: int
    accuracy: float
    seconds: float
    alone_accuracy: float | None = None
    mean_norm: float | None = None
    queries: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class RobustnessEvaluation:
    """The outcome of :func:`evaluate_robustness`.

    Per example (N,): ``clean_pred``, ``adv_pred`` (prediction on the worst case found),
    ``x_adv`` (the adversarial point of the attack that fooled it first; x itself for
    robust and clean-misclassified points), ``norms`` (||x_adv - x||), ``fooled_by``
    (row index of that attack, -1: robust, -2: misclassified without attack),
    ``robust`` (bool: correct and no attack succeeded). ``success[key]`` (N,) bool: where
    that row's attack succeeded (False where it did not run). ``losses[key]``: the
    attack's per-restart losses (N, restarts), NaN where it did not run.
    """

    norm: str
    eps: float
    y: torch.Tensor
    clean_pred: torch.Tensor
    adv_pred: torch.Tensor
    x_adv: torch.Tensor
    norms: torch.Tensor
    fooled_by: torch.Tensor
    robust: torch.Tensor
    rows: list[CascadeRow]
    mode: str = "cascade"
    success: dict[str, torch.Tensor] = field(default_factory=dict)
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def n(self) -> int:
        return int(self.y.shape[0])

    @property
    def clean_accuracy(self) -> float:
        return float((self.clean_pred == self.y).float().mean()) if self.n else float("nan")

    @property
    def robust_accuracy(self) -> float:
        """Worst case over all attacks: fraction of points no attack fooled."""
        return float(self.robust.float().mean()) if self.n else float("nan")

    def fooled_by_name(self, i: int) -> str:
        k = int(self.fooled_by[i])
        return "" if k == -1 else "clean" if k == -2 else self.rows[k].key

    # -- tables -------------------------------------------------------------------------

    def table(self) -> list[dict[str, Any]]:
        """Rows as dicts: clean, one per attack, and the final worst case (accuracies in
        percent, the way the table is printed)."""

        def pct(v: float | None) -> float | None:
            return None if v is None else round(100.0 * v, 2)

        out = [{"attack": "clean (no attack)", "kind": "", "attacked": self.n, "fooled": "",
                "accuracy_pct": pct(self.clean_accuracy), "alone_pct": pct(self.clean_accuracy),
                "mean_norm": "", "queries": "", "seconds": ""}]
        for r in self.rows:
            out.append({"attack": r.label, "kind": r.kind, "attacked": r.attacked, "fooled": r.fooled,
                        "accuracy_pct": pct(r.accuracy), "alone_pct": pct(r.alone_accuracy),
                        "mean_norm": "" if r.mean_norm is None else round(r.mean_norm, 4),
                        "queries": "" if r.queries is None else round(r.queries, 1),
                        "seconds": round(r.seconds, 2)})
        out.append({"attack": "worst case (all attacks)", "kind": "", "attacked": self.n,
                    "fooled": int((self.fooled_by >= 0).sum()), "accuracy_pct": pct(self.robust_accuracy),
                    "alone_pct": "", "mean_norm": "", "queries": "", "seconds": round(self.seconds, 2)})
        return out

    _HEADERS = {
        "attack": "attack", "kind": "kind", "attacked": "points attacked", "fooled": "newly fooled",
        "accuracy_pct": "robust acc. % (running worst case)", "alone_pct": "acc. % (attack alone)",
        "mean_norm": "mean norm", "queries": "queries/pt", "seconds": "time (s)",
    }

    def _columns(self) -> list[str]:
        cols = list(self._HEADERS)
        if self.mode == "cascade":
            cols.remove("alone_pct")
        return cols

    def to_markdown(self, title: str | None = None) -> str:
        cols = self._columns()
        lines = []
        if title:
            lines += [f"### {title}", ""]
        lines.append("| " + " | ".join(self._HEADERS[c] for c in cols) + " |")
        lines.append("|" + "|".join("---:" if c not in ("attack", "kind") else "---" for c in cols) + "|")
        for row in self.table():
            cells = []
            for c in cols:
                v = row[c]
                cells.append("" if v is None else f"{v:.2f}" if c in ("accuracy_pct", "alone_pct") and v != ""
                             else str(v))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines.append(f"Threat model: {self.norm} eps = {self.eps:g} (pixel units), {self.n} points, {self.mode}: "
                     + ("each attack runs only on the points still robust after the rows above it."
                        if self.mode == "cascade" else "each attack runs on every clean-correct point."))
        for w in self.warnings:
            lines.append(f"\n**Warning:** {w}")
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        buf = io.StringIO()
        cols = self._columns()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(cols)
        for row in self.table():
            w.writerow(["" if row[c] is None else row[c] for c in cols])
        return buf.getvalue()

    def to_dict(self) -> dict[str, Any]:
        return {
            "norm": self.norm, "eps": self.eps, "n": self.n, "mode": self.mode,
            "clean_accuracy": self.clean_accuracy, "robust_accuracy": self.robust_accuracy,
            "seconds": self.seconds, "rows": [r.to_dict() for r in self.rows], "table": self.table(),
            "warnings": list(self.warnings),
        }

    def to_json(self) -> str:
        return json.dumps(json_safe(self.to_dict()), indent=2, allow_nan=False) + "\n"


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN / inf floats replaced by None (strict JSON), recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------
# the cascade


def _predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    with torch.no_grad(), eval_mode(model):
        # finite logits only: the argmax of a NaN row would be class 0
        with forward_errors(x.shape[1:]):
            return torch.cat([check_logits(model(c), count=len(c)).argmax(1) for c in x.split(batch_size)]) \
                if len(x) else torch.zeros(0, dtype=torch.long, device=x.device)


def _top_wrong_classes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int, batch_size: int) -> torch.Tensor:
    """(N, k) the k highest-scoring classes other than y on the clean points."""
    with torch.no_grad(), eval_mode(model):
        logits = torch.cat([model(c) for c in x.split(batch_size)])
    logits = logits.scatter(1, y.unsqueeze(1), float("-inf"))
    k = min(k, logits.shape[1] - 1)
    return logits.topk(k, dim=1).indices


def _run_rows_attack(ca: CascadeAttack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                     progress: ProgressFn | None):
    """Run one row's attack on (x, y) in chunks; returns (success, x_adv, adv_pred, norms, losses, queries)."""
    n = x.shape[0]
    success = torch.zeros(n, dtype=torch.bool, device=x.device)
    x_adv, adv_pred = x.clone(), y.clone()
    norms = torch.zeros(n, device=x.device)
    losses: torch.Tensor | None = None
    queries = torch.zeros(n, dtype=torch.long, device=x.device)
    any_queries = False
    passes: list[torch.Tensor | None] = [None]
    if ca.n_targets:
        top = _top_wrong_classes(model, x, y, ca.n_targets, batch_size)
        passes = [top[:, j] for j in range(top.shape[1])]
    start_row = getattr(progress, "start_row", None)  # optional: a bar's total, known only here
    if callable(start_row):
        start_row(ca.label, n * len(passes))  # targeted passes: at most n points each
    iteration = getattr(progress, "iteration", None)  # optional: Square reports its query loop to it
    if callable(iteration):
        ca.attack.on_iteration = lambda i, total: iteration(ca.label, i, total)
    for targets in passes:
        todo = (~success).nonzero().squeeze(1)
        for chunk in todo.split(batch_size):
            if chunk.numel() == 0:
                continue
            res = ca.attack.run(x[chunk], y[chunk], None if targets is None else targets[chunk])
            ok = res.adv_pred != y[chunk]  # untargeted sense, also for targeted passes
            # a failed point keeps the best (here: latest) candidate; a fooled point its example
            x_adv[chunk] = res.x_adv.to(x.dtype)
            adv_pred[chunk] = res.adv_pred
            norms[chunk] = res.norms.to(norms.dtype)
            success[chunk] = ok
            if res.losses is not None:
                rl = res.losses.to(x.device, torch.float32)
                if losses is None or losses.shape[1] < rl.shape[1]:
                    grown = torch.full((n, rl.shape[1]), float("nan"), device=x.device)
                    if losses is not None:
                        grown[:, :losses.shape[1]] = losses
                    losses = grown
                losses[chunk, :rl.shape[1]] = torch.where(
                    torch.isnan(losses[chunk, :rl.shape[1]]), rl,
                    torch.fmax(losses[chunk, :rl.shape[1]], rl))
            if res.queries is not None:
                any_queries = True
                queries[chunk] += res.queries.to(queries.device)
            if progress is not None:
                progress(ca.label, int(chunk.numel()))
    if callable(iteration):
        ca.attack.on_iteration = None
    return success, x_adv, adv_pred, norms, losses, (queries if any_queries else None)


def evaluate_robustness(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: Sequence[CascadeAttack],
    *,
    batch_size: int | None = None,
    independent: bool = False,
    masking_tolerance: float = 0.005,
    progress: ProgressFn | None = None,
) -> RobustnessEvaluation:
    """Run ``attacks`` against ``model`` on (x, y) and report the worst case per example.

    Args:
        model: images in [0, 1] -> logits; every attack in ``attacks`` must target it.
        x, y: images (N, C, H, W) in [0, 1] and labels (N,).
        attacks: the rows, in order (see :func:`build_cascade`).
        batch_size: most points per attack call (None: ``smoothguard.defaults.ATTACK_BATCH``
            for the model's device).
        independent: run every attack on every clean-correct point (each row then also
            has its own accuracy) instead of only on the points still robust.
        masking_tolerance: fraction of the points that black-box / transfer rows may fool
            beyond the white-box rows before the gradient-masking warning is raised.
        progress: called as ``progress(row_label, points_done)`` after each chunk; if it has a
            ``start_row(row_label, total)`` method, that is called first with the row's number
            of points to attack (times the target classes of a targeted row); if it has an
            ``iteration(row_label, i, n_iters)`` method, Square calls it every 100 queries.

    Every robust accuracy counts a clean misclassification as a failure. Each row's
    ``accuracy`` is the running worst case; the final worst case equals, per example,
    "correct and no attack succeeded" (the OR of the rows' successes).
    """
    # None: the default of the device the model runs on
    batch_size = check_int("batch_size", batch_for(ATTACK_BATCH, model_device(model), batch_size), minimum=1)
    masking_tolerance = check_fraction("masking_tolerance", masking_tolerance, low_open=False, high_open=True)
    attacks = list(attacks)
    for ca in attacks:
        if not isinstance(ca, CascadeAttack):
            raise TypeError(f"attacks must be CascadeAttack rows; got {type(ca).__name__}")
        target = ca.attack.model
        if target is not model:
            raise ValueError(f"row {ca.label!r} attacks another model than the one evaluated "
                             "(for transfer, wrap the surrogate's attack in TransferAttack(src, model))")
    keys = [ca.key for ca in attacks]
    if len(set(keys)) != len(keys):
        raise ValueError(f"row keys must be unique; got {keys}")

    t_start = time.perf_counter()
    device = model_device(model)
    x = check_images(x, "x", single=False, in_shape=model_in_shape(model))
    y = check_labels(y, count=x.shape[0], name="y")
    x = x.detach().to(device)
    y = y.to(device=device, dtype=torch.long)
    n = x.shape[0]
    clean_pred = _predict(model, x, batch_size)
    correct = clean_pred == y
    robust = correct.clone()
    x_adv = x.clone()
    adv_pred = clean_pred.clone()
    norms = torch.zeros(n, device=device)
    fooled_by = torch.full((n,), -1, dtype=torch.long, device=device)
    fooled_by[~correct] = -2
    ev = RobustnessEvaluation(
        norm=attacks[0].attack.norm if attacks else "linf", eps=float(attacks[0].attack.eps or 0) if attacks else 0.0,
        y=y, clean_pred=clean_pred, adv_pred=adv_pred, x_adv=x_adv, norms=norms, fooled_by=fooled_by,
        robust=robust, rows=[], mode="independent" if independent else "cascade")
    seen_warnings: set[str] = set()

    for i, ca in enumerate(attacks):
        if (ca.attack.norm, ca.attack.eps) != (attacks[0].attack.norm, attacks[0].attack.eps):
            raise ValueError(f"row {ca.label!r} uses {ca.attack.norm} eps={ca.attack.eps}, the first row "
                             f"{attacks[0].attack.norm} eps={attacks[0].attack.eps}: one threat model per table")
        active = (correct if independent else robust).nonzero().squeeze(1)
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RobustnessWarning)
            if active.numel():
                ok, xa, pa, na, la, qa = _run_rows_attack(ca, model, x[active], y[active], batch_size, progress)
            else:
                ok = torch.zeros(0, dtype=torch.bool, device=device)
                xa, pa, na, la, qa = x[:0], y[:0], norms[:0], None, None
        for w in caught:
            msg = f"{ca.label}: {w.message}" if issubclass(w.category, RobustnessWarning) else None
            if msg is None:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
                continue
            if msg not in seen_warnings:
                seen_warnings.add(msg)
                ev.warnings.append(msg)
                warnings.warn(msg, RobustnessWarning, stacklevel=2)
        seconds = time.perf_counter() - t0

        succ_full = torch.zeros(n, dtype=torch.bool, device=device)
        succ_full[active] = ok
        ev.success[ca.key] = succ_full
        new = succ_full & robust  # points this row fooled first
        pos = new[active]
        x_adv[active[pos]] = xa[pos]
        adv_pred[active[pos]] = pa[pos]
        norms[active[pos]] = na[pos]
        fooled_by[new] = i
        robust &= ~succ_full
        if la is not None:
            full = torch.full((n, la.shape[1]), float("nan"), device=device)
            full[active] = la
            ev.losses[ca.key] = full
        ev.rows.append(CascadeRow(
            key=ca.key, label=ca.label, kind=ca.kind, attacked=int(active.numel()), fooled=int(new.sum()),
            accuracy=float(robust.float().mean()) if n else float("nan"), seconds=seconds,
            alone_accuracy=float((correct & ~succ_full).float().mean()) if independent and n else None,
            mean_norm=float(na[ok].mean()) if bool(ok.any()) else None,
            queries=float(qa.float().mean()) if qa is not None and qa.numel() else None,
        ))
    ev.seconds = time.perf_counter() - t_start
    _masking_check(ev, attacks, masking_tolerance)
    return ev


def _masking_check(ev: RobustnessEvaluation, attacks: Sequence[CascadeAttack], tolerance: float) -> None:
    """Warn when black-box / transfer rows beat the white-box ones (gradient masking)."""
    if not ev.n:
        return
    wb = [ca for ca in attacks if ca.kind == WHITE_BOX]
    bb = [ca for ca in attacks if ca.kind != WHITE_BOX]
    if not wb or not bb:
        return
    msg = None
    if ev.mode == "independent":
        acc = {r.key: r.alone_accuracy for r in ev.rows if r.alone_accuracy is not None}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RobustnessWarning)
            check_blackbox_vs_whitebox(acc, blackbox=("square", "nattack", "transfer"), tolerance=tolerance)
        if caught:
            msg = str(caught[0].message)
    wb_fooled = torch.zeros_like(ev.robust)
    for ca in wb:
        wb_fooled |= ev.success[ca.key]
    correct = ev.clean_pred == ev.y
    extra = torch.zeros_like(ev.robust)
    for ca in bb:
        extra |= ev.success[ca.key]
    extra &= correct & ~wb_fooled
    k = int(extra.sum())
    if msg is None and k / ev.n > tolerance:
        names = ", ".join(ca.label for ca in bb if bool((ev.success[ca.key] & extra).any()))
        msg = (f"gradient masking is likely: black-box/transfer attacks ({names}) fooled {k} points "
               f"({100.0 * k / ev.n:.2f}% of {ev.n}) that every white-box attack missed. The worst case "
               "includes them; treat the white-box rows as unreliable for this model.")
    if msg is not None:
        ev.warnings.append(msg)
        warnings.warn(msg, RobustnessWarning, stacklevel=3)


# ---------------------------------------------------------------------------------------
# curves and loss landscapes


DEFAULT_EPS_GRID = {
    "linf": (0.0, 0.02, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3),
    "l2": (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0),
}


@dataclass
class EpsCurve:
    """Robust accuracy against an attack set at each eps of a grid (one norm)."""

    norm: str
    eps: list[float]
    accuracy: list[float]
    attacks: list[str]
    n: int
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def accuracy_vs_eps(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    norm: str,
    eps_grid: Sequence[float],
    make_attacks: Callable[[float], Sequence[CascadeAttack]] | None = None,
    *,
    steps: int = 20,
    seed: int | None = 0,
    batch_size: int | None = None,
    progress: ProgressFn | None = None,
) -> EpsCurve:
    """Robust accuracy at every eps of ``eps_grid`` (sorted increasingly; eps = 0 is the
    clean accuracy).

    ``make_attacks(eps)`` builds the rows at one eps (default: PGD-``steps`` with CE and
    one restart, then APGD-DLR with ``steps`` iterations). The eps-balls are nested, so a
    point fooled at some eps is fooled at every larger one: each eps only attacks the
    points robust at the previous eps, which makes the curve monotone and cheaper.
    """
    grid = sorted(float(e) for e in eps_grid)
    if not grid:
        raise ValueError("eps_grid must hold at least one value")
    if grid[0] < 0:
        raise ValueError(f"eps values must be >= 0; got {grid[0]}")
    if make_attacks is None:
        def make_attacks(e: float) -> list[CascadeAttack]:
            return build_cascade(model, norm, e, attacks=("pgd", "apgd-dlr"), steps=steps, restarts=1,
                                 apgd_steps=steps, seed=seed, force=True)
    t0 = time.perf_counter()
    device = model_device(model)
    x = x.detach().to(device)
    y = torch.as_tensor(y).to(device=device, dtype=torch.long)
    batch_size = batch_for(ATTACK_BATCH, device, batch_size)  # None: the default of the model's device
    robust = _predict(model, x, batch_size) == y
    accs: list[float] = []
    names: list[str] = []
    for e in grid:
        if e > 0 and bool(robust.any()):
            rows = list(make_attacks(e))
            names = names or [r.label for r in rows]
            idx = robust.nonzero().squeeze(1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RobustnessWarning)  # reported by the main table
                sub = evaluate_robustness(model, x[idx], y[idx], rows, batch_size=batch_size,
                                          masking_tolerance=0.999, progress=progress)
            robust[idx] = sub.robust
        accs.append(float(robust.float().mean()) if len(y) else float("nan"))
    return EpsCurve(norm=norm, eps=grid, accuracy=accs, attacks=names, n=int(len(y)),
                    seconds=time.perf_counter() - t0)


def restart_loss_distribution(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    norm: str,
    eps: float,
    *,
    steps: int = 40,
    restarts: int = 50,
    step_size: float | None = None,
    loss: str = "ce",
    seed: int | None = 0,
) -> torch.Tensor:
    """The highest loss reached by each of ``restarts`` PGD runs from independent random
    starts, per example: (N, restarts) (Madry et al. 2018, Figure 2).

    Unlike the evaluation's PGD, these runs do not stop at the first success: each
    restart ascends for all ``steps`` steps, so every entry is a finished restart. A
    tight distribution (no outliers far above the bulk) indicates that PGD's local
    maxima are of similar quality, which is what makes PGD a reliable first-order attack.
    """
    atk = PGD(model, norm=norm, eps=eps, steps=steps, step_size=step_size, random_start=True,
              restarts=restarts, loss=loss, seed=seed, sanity_checks=False)
    atk.stop_on_success = False  # keep ascending: we want the loss landscape, not one success
    res = atk.run(x, y)
    assert res.losses is not None
    return res.losses.detach().cpu()


def select_grid_examples(ev: RobustnessEvaluation, count: int = 8) -> torch.Tensor:
    """Indices for the clean / perturbation / adversarial image grid: points an attack
    fooled first (by attack row order), then robust points."""
    fooled = (ev.fooled_by >= 0).nonzero().squeeze(1)
    rest = (ev.fooled_by == -1).nonzero().squeeze(1)
    return torch.cat([fooled, rest])[:count].cpu()
