"""Deterministic bounds on a network's outputs over an eps-ball: IBP, CROWN, CROWN-IBP.

Every input x' with ||x' - x||_p <= eps and x' in [0, 1]^d (docs/algorithms.md sections 0 and
7) maps to logits inside the bounds returned here; a *specification* C (rows c) is bounded
directly, c^T f(x') >= lower, which for the margins c = e_y - e_j is tighter than
subtracting logit bounds (the specification is folded into the last affine layer).

* **IBP** (Gowal et al., "On the Effectiveness of Interval Bound Propagation for Training
  Verifiably Robust Models", 2018; Mirman et al. 2018): propagate the box [l, u] layer by
  layer, affine layers through centre and radius (mu' = W mu + b, r' = |W| r), monotone
  layers elementwise. Exact for one affine layer; cost ~2 forward passes.
* **CROWN** (Zhang et al., "Efficient Neural Network Robustness Certification with General
  Activation Functions", NeurIPS 2018): bound c^T f(x') by a linear function of x' built
  backwards through the network, affine layers by their transpose, each ReLU by two lines
  (upper: the chord through (l, 0) and (u, u); lower: slope 1 if u > -l else 0), each max
  pool by :class:`~smoothguard.verification.layers.MaxPool`'s lines; then minimize that
  linear function over the input set in closed form: for l_inf (a box) A^+ x_lo + A^- x_up;
  for l_2 the dual norm, A x - eps ||A||_2, and the better of that and the box bound (the
  set is the ball intersected with [0, 1]). The relaxations need bounds on every ReLU's
  and max pool's input ("intermediate bounds"): CROWN computes them by the same backward
  pass from each of those layers, only for the neurons interval arithmetic leaves unstable
  (l < 0 < u); the others keep the interval bounds (the relaxation of a stable ReLU is
  exact either way), as auto_LiRPA does by default. The first affine layer's bounds are
  interval bounds for l_inf (exact there).
* **CROWN-IBP** (Zhang et al., "Towards Stable and Efficient Training of Verifiably Robust
  Neural Networks", ICLR 2020): intermediate bounds by IBP, the final specification by one
  CROWN backward pass. Cheap enough for training; between IBP and CROWN in tightness.

Memory and time: a CROWN backward pass holds one coefficient matrix A of shape (batch,
rows, *layer) at a time. For the output specification that is small (K rows), but the
intermediate bounds of a layer with n neurons start from n rows (only the neurons that
interval bounds leave unstable, for any image of the batch) and reach layers of m
neurons, so dense rows hold batch * n * m floats: quadratic in the widest layers.
Rows that start at a convolutional map are therefore stored as *windows*
(:mod:`~smoothguard.verification.patches`, auto_LiRPA's "patches" idea): a neuron's
row is nonzero only on its receptive field, so LeNet's conv2 rows take 20 x 10 x 10
floats at conv1's output instead of 20 x 24 x 24, and going back through a convolution
is one transposed convolution of the windows; a window that would grow past its map
continues as a dense row. Rows that start at a dense layer (fully connected, and the
specification) stay dense. A max pool with disjoint windows right after a ReLU is
relaxed together with it on the pool's chosen inputs (the same bound, a quarter of the
work for 2 x 2 pooling). The rows are processed in chunks so that one block stays below
``max_floats`` (default 2**23 floats, 32 MiB in float32, which on CPU was also faster
than larger blocks); memory is bounded, time stays quadratic for dense rows. IBP and
CROWN-IBP are linear in the width.

Soundness is in exact arithmetic; float32 rounding can move a bound by ~1e-6 relative,
so a margin lower bound within that of 0 should not be trusted as a proof.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from smoothguard.contract import check_choice, check_eps, check_images, check_labels, check_int
from smoothguard.verification.layers import (Conv, Dense, MaxPool, Op, ReLU, Scale, VerificationError, run_ops,
                                             to_ops)
from smoothguard.verification.patches import Patches, lower_over_input

METHODS = ("ibp", "crown", "crown-ibp")
NORMS = ("linf", "l2")
MAX_FLOATS = 2 ** 23


def input_box(x: torch.Tensor, eps: float, norm: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The smallest box holding the eps-ball around x intersected with [0, 1] (for l_2
    the ball is inside the l_inf ball of the same radius)."""
    return (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)


def _lower_over_input(A: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                      eps: float, norm: str) -> torch.Tensor:
    """min of A x' + bias over the input set; A is (B, S, *in), the result (B, S)."""
    b, s = A.shape[:2]
    flat = A.reshape(b, s, -1)
    mid = ((hi + lo) / 2).reshape(b, -1, 1)
    rad = ((hi - lo) / 2).reshape(b, -1, 1)
    out = bias + flat.bmm(mid).squeeze(-1) - flat.abs().bmm(rad).squeeze(-1)
    if norm == "l2":
        # Hoelder: min over the ball is A x - eps ||A||_2; the set is ball & box, so both
        # bounds hold and the larger one is kept
        ball = bias + flat.bmm(x.reshape(b, -1, 1)).squeeze(-1) - eps * flat.norm(dim=-1)
        out = torch.maximum(out, ball)
    return out


@dataclass
class _Problem:
    ops: list[Op]
    x: torch.Tensor
    lo: torch.Tensor  # the input box
    hi: torch.Tensor
    eps: float
    norm: str
    max_floats: int
    patches: bool = True  # CROWN rows from convolutional maps stored as windows


def _backward_lower(p: _Problem, k: int, A: torch.Tensor, inter: dict[int, tuple[torch.Tensor, torch.Tensor]]
                    ) -> torch.Tensor:
    """Lower bound of A f_k(x') over the input set, f_k = ops[:k]; A is (B, S, *out of op k-1)."""
    bias = torch.zeros(A.shape[:2], device=A.device, dtype=A.dtype)
    return _backward_from(p, k, A, bias, inter)


def _backward_from(p: _Problem, k: int, A: torch.Tensor, bias: torch.Tensor,
                   inter: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The rest of :func:`_backward_lower` from the output of ops[:k] with the bias so far."""
    i = k - 1
    while i >= 0:
        op = p.ops[i]
        if op.linear:
            t = op.bias_term(A)
            if t is not None:
                bias = bias + t
            A = op.back(A)
        elif _fused(p.ops, i):
            A, t = op.relax_back(A, *inter[i], relu=inter[i - 1])
            bias = bias + t
            i -= 1
        else:
            A, t = op.relax_back(A, *inter[i])
            bias = bias + t
        i -= 1
    return _lower_over_input(A, bias, p.x, p.lo, p.hi, p.eps, p.norm)


def _fused(ops: list[Op], i: int) -> bool:
    """Whether ops[i] is a max pool with disjoint windows right after a ReLU: then the
    ReLU is relaxed on the pool's chosen inputs only (the same bound, a quarter of the
    work for 2x2 pooling; see MaxPool.relax_back)."""
    return i >= 1 and isinstance(ops[i], MaxPool) and ops[i].disjoint and isinstance(ops[i - 1], ReLU)


def _widest(p: _Problem, k: int) -> int:
    return max(max(_numel(op.in_shape), _numel(op.out_shape)) for op in p.ops[:k])


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _patch_width(p: _Problem, k: int) -> int | None:
    """The largest row (floats per image) of a windowed backward pass from the output of
    ops[:k] (a (C, H, W) map), or None where windows cannot be used (a non-spatial
    operation on the way back)."""
    c, kh, kw = p.ops[k - 1].out_shape[0], 1, 1
    widest = c
    for op in reversed(p.ops[:k]):
        if len(op.in_shape) != 3 or len(op.out_shape) != 3 or not isinstance(op, (Conv, Scale, ReLU, MaxPool)):
            return None
        dense = _numel(op.in_shape)
        if isinstance(op, (Conv, MaxPool)):
            ker = op.weight.shape[-2:] if isinstance(op, Conv) else op.kernel
            kh = (kh - 1) * op.stride[0] + op.dilation[0] * (ker[0] - 1) + 1
            kw = (kw - 1) * op.stride[1] + op.dilation[1] * (ker[1] - 1) + 1
            c = op.in_shape[0]
        widest = max(widest, min(c * kh * kw, dense))
    return widest


def _backward_lower_patches(p: _Problem, k: int, sel: torch.Tensor, b: int,
                            inter: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """:func:`_backward_lower` for the rows +e_i, -e_i (i in ``sel``) of the (C, H, W)
    output of ops[:k], the rows stored as windows (:mod:`~smoothguard.verification.patches`);
    a row whose window would grow past its map continues as a dense row."""
    P = Patches.start(sel, p.ops[k - 1].out_shape, p.x.dtype)
    bias = torch.zeros(b, P.coef.shape[1], device=p.x.device, dtype=p.x.dtype)
    i = k - 1
    while i >= 0:
        op = p.ops[i]
        if op.linear:
            t = op.bias_patches(P)
            if t is not None:
                bias = bias + t
            P = op.back_patches(P)
        elif _fused(p.ops, i):
            P, t = op.relax_patches(P, *inter[i], relu=inter[i - 1])
            bias = bias + t
            i -= 1
        else:
            P, t = op.relax_patches(P, *inter[i])
            bias = bias + t
        i -= 1
        if i >= 0 and P.numel_per_row() >= _numel(P.shape):
            A = P.to_dense().expand(b, *P.coef.shape[1:2], *P.shape)
            return _backward_from(p, i + 1, A, bias, inter)
    return lower_over_input(P, bias, p.x, p.lo, p.hi, p.eps, p.norm).expand(b, -1)


def _refine(p: _Problem, k: int, lo: torch.Tensor, hi: torch.Tensor, need: torch.Tensor,
            inter: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """CROWN bounds of the output of ops[:k] for the neurons where ``need`` (B, *shape)
    holds; elsewhere the given (interval) bounds stay."""
    b = lo.shape[0]
    shape = lo.shape[1:]
    need = need.reshape(b, -1)
    idx = need.any(0).nonzero().squeeze(1)  # neurons some image needs: one pass serves the batch
    if idx.numel() == 0:
        return lo, hi
    lo_f, hi_f = lo.reshape(b, -1), hi.reshape(b, -1)
    new_lo, new_hi = lo_f.clone(), hi_f.clone()
    n = lo_f.shape[1]
    width = _patch_width(p, k) if p.patches and len(shape) == 3 else None
    chunk = max(1, p.max_floats // (2 * b * (width or _widest(p, k))))
    for start in range(0, idx.numel(), chunk):
        sel = idx[start:start + chunk]
        s = sel.numel()
        if width is not None:
            res = _backward_lower_patches(p, k, sel, b, inter)
        else:
            # rows +e_i (lower bounds) and -e_i (minus the upper bounds) in one pass
            A = torch.zeros(b, 2 * s, n, device=lo.device, dtype=lo.dtype)
            rows = torch.arange(s, device=lo.device)
            A[:, rows, sel] = 1
            A[:, rows + s, sel] = -1
            res = _backward_lower(p, k, A.view(b, 2 * s, *shape), inter)
        use = need[:, sel]
        new_lo[:, sel] = torch.where(use, res[:, :s], lo_f[:, sel])
        new_hi[:, sel] = torch.where(use, -res[:, s:], hi_f[:, sel])
    return new_lo.view_as(lo), new_hi.view_as(hi)


def _intermediate(p: _Problem, method: str, upto: int) -> tuple[dict[int, tuple[torch.Tensor, torch.Tensor]],
                                                                 tuple[torch.Tensor, torch.Tensor]]:
    """Bounds of the input of every ReLU / max pool among ops[:upto] (by index), and the
    interval bounds of the output of ops[:upto] (computed from the refined bounds)."""
    inter: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    lo, hi = p.lo, p.hi
    affine_since_input = 0  # Dense/Conv layers met so far with no nonlinearity before them
    seen_nonlinear = False
    for i, op in enumerate(p.ops[:upto]):
        if not op.linear:
            prev_linear = i > 0 and p.ops[i - 1].linear
            # interval bounds are exact after one affine layer on a box (l_inf), and
            # bounds propagated through a monotone layer keep the refined ones
            exact = p.norm == "linf" and not seen_nonlinear and affine_since_input <= 1
            if method == "crown" and prev_linear and not exact:
                if isinstance(op, ReLU):
                    need = (lo < 0) & (hi > 0)
                else:
                    need = torch.ones_like(lo, dtype=torch.bool)
                lo, hi = _refine(p, i, lo, hi, need, inter)
            inter[i] = (lo, hi)
            seen_nonlinear = True
        elif isinstance(op, (Dense, Conv)):
            affine_since_input += 1
        lo, hi = op.ibp(lo, hi)
    return inter, (lo, hi)


def _interval_spec(W: torch.Tensor, c: torch.Tensor | None, lo: torch.Tensor, hi: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds of W z + c over z in [lo, hi]: W (B, S, n), c (B, S) or None."""
    b = lo.shape[0]
    mid, rad = ((hi + lo) / 2).reshape(b, -1, 1), ((hi - lo) / 2).reshape(b, -1, 1)
    centre = W.bmm(mid).squeeze(-1)
    if c is not None:
        centre = centre + c
    r = W.abs().bmm(rad).squeeze(-1)
    return centre - r, centre + r


def spec_bounds(ops: list[Op], x: torch.Tensor, C: torch.Tensor, eps: float, norm: str = "linf",
                method: str = "ibp", max_floats: int = MAX_FLOATS, upper: bool = True, patches: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Lower and upper bounds (B, S) of C f(x') over the input set, C of shape (B, S, K).

    Differentiable in the weights (used by the certified-training objectives); no input
    checks (see :func:`bounds` for the checked entry point). ``upper=False`` skips the
    upper bound where that saves work (CROWN: half the backward pass) and returns None
    for it. ``patches=False`` keeps every CROWN row dense (the slower reference for the
    windowed rows of convolutional layers; same bounds up to float rounding).
    """
    lo, hi = input_box(x, eps, norm)
    p = _Problem(ops, x, lo, hi, eps, norm, max_floats, patches)
    b = x.shape[0]
    if method == "ibp":
        last = ops[-1]
        if isinstance(last, Dense):
            # fold C into the last layer: C (W z + b) = (C W) z + C b (Gowal et al.'s elision)
            _, (zl, zu) = _intermediate(p, "ibp", len(ops) - 1)
            W = C.matmul(last.weight)
            c = C.matmul(last.bias) if last.bias is not None else None
            return _interval_spec(W, c, zl.reshape(b, -1), zu.reshape(b, -1))
        _, (zl, zu) = _intermediate(p, "ibp", len(ops))
        return _interval_spec(C, None, zl.reshape(b, -1), zu.reshape(b, -1))
    inter, _ = _intermediate(p, "crown" if method == "crown" else "ibp", len(ops))
    s = C.shape[1]
    if not upper:
        return _backward_lower(p, len(ops), C.reshape(b, s, *ops[-1].out_shape), inter), None
    out = _backward_lower(p, len(ops), torch.cat([C, -C], dim=1).view(b, 2 * s, *ops[-1].out_shape), inter)
    return out[:, :s], -out[:, s:]


def margin_spec(y: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """C (B, K, K) with row j = e_y - e_j (row y is zero)."""
    eye = torch.eye(num_classes, device=y.device, dtype=dtype)
    return eye[y].unsqueeze(1) - eye.unsqueeze(0)


def _device_of(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _prepare(model: nn.Module, x: torch.Tensor, eps: float, norm: str, method: str, max_floats: int):
    check_choice("norm", norm, NORMS)
    check_choice("method", method, METHODS)
    eps = check_eps(eps, norm)
    check_int("max_floats", max_floats, 1)
    x = check_images(x)
    x = x.to(_device_of(model))
    ops = to_ops(model, tuple(x.shape[1:]))
    logits = model(x)
    chain = run_ops(ops, x)
    # the chain must be what the model computes: a custom forward (skip connections,
    # functional ops between modules) would otherwise be bounded as something else
    if chain.shape != logits.shape or not torch.allclose(chain, logits, rtol=1e-4, atol=1e-4 * (
            1 + float(logits.abs().max()) if logits.numel() else 1)):
        raise VerificationError(
            f"{type(model).__name__}.forward does not compute the chain of its layers in order (the chain's output "
            "differs from the model's); only sequential compositions of the supported layers can be bounded")
    return ops, x, eps, logits


def _tightest(ops: list[Op], x: torch.Tensor, C: torch.Tensor, eps: float, norm: str, method: str,
              max_floats: int, upper: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The method's bounds, tightened elementwise by IBP's: CROWN's linear relaxation can
    be looser than plain intervals for some outputs (a lower slope of 1 lets an unstable
    ReLU go negative), both are sound, and IBP costs about two forward passes."""
    lo, hi = spec_bounds(ops, x, C, eps, norm, method, max_floats, upper=upper)
    if method == "ibp":
        return lo, hi
    lo_i, hi_i = spec_bounds(ops, x, C, eps, norm, "ibp")
    return torch.maximum(lo, lo_i), (torch.minimum(hi, hi_i) if hi is not None else None)


def bounds(model: nn.Module, x: torch.Tensor, eps: float, norm: str = "linf", method: str = "ibp",
           max_floats: int = MAX_FLOATS) -> tuple[torch.Tensor, torch.Tensor]:
    """Sound elementwise bounds on the logits over the eps-ball around x intersected with [0, 1].

    Args:
        model: maps [0, 1] images to logits; a chain of the supported layers (see
            :mod:`smoothguard.verification.layers`), e.g. ``get_model("lenet", ...)``.
        x: images (N, C, H, W) or one image (C, H, W) in [0, 1].
        eps: radius in [0, 1] pixel units.
        norm: ``"linf"`` or ``"l2"``.
        method: ``"ibp"`` (Gowal et al. 2018), ``"crown"`` (Zhang et al. 2018) or
            ``"crown-ibp"`` (Zhang et al. 2020).
        max_floats: cap on the coefficient matrix of a CROWN pass (floats), see the module
            docstring.

    Returns:
        (lower, upper), each (N, K), on the model's device: for every admissible x',
        lower <= model(x') <= upper. For ``crown`` and ``crown-ibp`` each bound is the
        tighter of that method's and IBP's, so they are never looser than IBP (the raw
        bounds of one method: :func:`spec_bounds`).
    """
    with torch.inference_mode():
        ops, x, eps, logits = _prepare(model, x, eps, norm, method, max_floats)
        k = logits.shape[1]
        C = torch.eye(k, device=x.device, dtype=logits.dtype).expand(x.shape[0], k, k)
        return _tightest(ops, x, C, eps, norm, method, max_floats)


@dataclass
class VerifyResult:
    """Per image: ``verified`` (bool), ``margin_lb`` (the lower bound of min_{j != y}
    logit_y - logit_j; > 0 proves that no admissible x' changes the class from y),
    ``margins`` (N, K) the bound per class j (+inf at j = y), ``clean_pred``."""

    verified: torch.Tensor
    margin_lb: torch.Tensor
    margins: torch.Tensor
    clean_pred: torch.Tensor


def verify(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "linf",
           method: str = "crown", max_floats: int = MAX_FLOATS) -> VerifyResult:
    """Prove that the model classifies every admissible x' (||x' - x||_p <= eps, x' in
    [0, 1]) as y: lower bounds on logit_y - logit_j for all j != y, computed with the
    specification folded into the last layer (for crown / crown-ibp tightened by IBP's, as
    in :func:`bounds`); verified where all are > 0. An image the model misclassifies at x
    itself is never verified (its bound is <= 0).

    Arguments as :func:`bounds`; ``y`` (N,) are the labels to verify.
    """
    with torch.inference_mode():
        ops, x, eps, logits = _prepare(model, x, eps, norm, method, max_floats)
        k = logits.shape[1]
        y = check_labels(y, k, count=x.shape[0]).to(x.device)
        C = margin_spec(y, k, logits.dtype)
        lower, _ = _tightest(ops, x, C, eps, norm, method, max_floats, upper=False)
        lower = lower.clone()
        lower[torch.arange(x.shape[0], device=x.device), y] = float("inf")
        margin_lb = lower.min(dim=1).values if k > 1 else torch.full_like(lower[:, 0], float("inf"))
        return VerifyResult(margin_lb > 0, margin_lb, lower, logits.argmax(1))


__all__ = ["METHODS", "NORMS", "MAX_FLOATS", "bounds", "verify", "VerifyResult", "spec_bounds", "margin_spec",
           "input_box", "VerificationError"]
