"""Sparse coefficient rows for CROWN through convolutional layers ("patches").

A CROWN backward pass started from the neurons of a convolutional feature map carries one
coefficient row per neuron. Densely, a row of a layer with map (C, H, W) has C*H*W
entries, but a neuron of a convolution depends only on its receptive field: after going
back through a k x k convolution of stride s the nonzero part of a row is a window of
C_in x k x k, after a second one C x ((k-1)s + k') x ..., and so on. :class:`Patches`
stores only that window per row, plus where it sits in the map:

    coef   (B or 1, S, C, kh, kw)   the window of each of the S rows
    anchor (S,), (S,)               the row's start neuron's position (h0, w0) on the start map
    stride, pad                     row r's window starts at (h0 * stride - pad) on the current map

All rows share (kh, kw, stride, pad), so going back through a convolution is one
``conv_transpose2d`` over the windows (batched over the rows) and an elementwise
relaxation needs its per-neuron slopes gathered into the windows (one strided view and
one index). Entries of a window that fall outside the map (the convolution's zero
padding) are kept at zero, which makes every bias term and the final minimization over
the input the same sums as for the dense rows. The batch dimension of ``coef`` stays 1
until the first relaxation multiplies in per-image slopes.

auto_LiRPA (Xu et al., "Automatic Perturbation Analysis for Scalable Certified Robustness
and Beyond", NeurIPS 2020) calls the same idea its "patches" mode; this is our own
implementation (the rows here are only the neurons that need refining).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class Patches:
    """Coefficient rows that are zero outside a window of the current map (see module doc)."""

    def __init__(self, coef: torch.Tensor, ah: torch.Tensor, aw: torch.Tensor, stride: tuple[int, int],
                 pad: tuple[int, int], shape: tuple[int, int, int]) -> None:
        self.coef, self.ah, self.aw = coef, ah, aw
        self.stride, self.pad, self.shape = (int(stride[0]), int(stride[1])), (int(pad[0]), int(pad[1])), tuple(shape)

    @classmethod
    def start(cls, sel: torch.Tensor, shape: tuple[int, int, int], dtype: torch.dtype) -> Patches:
        """Rows +e_i then -e_i for the flat neuron indices ``sel`` of a (C, H, W) map."""
        c, h, w = shape
        s = sel.numel()
        ch, pos = sel // (h * w), sel % (h * w)
        coef = torch.zeros(1, 2 * s, c, 1, 1, device=sel.device, dtype=dtype)
        rows = torch.arange(s, device=sel.device)
        coef[0, rows, ch, 0, 0] = 1
        coef[0, rows + s, ch, 0, 0] = -1
        return cls(coef, (pos // w).repeat(2), (pos % w).repeat(2), (1, 1), (0, 0), shape)

    @property
    def kernel(self) -> tuple[int, int]:
        return int(self.coef.shape[-2]), int(self.coef.shape[-1])

    def moved(self, coef: torch.Tensor, stride: tuple[int, int], pad: tuple[int, int],
              shape: tuple[int, ...]) -> Patches:
        """The same rows on a map one layer further back."""
        return Patches(coef, self.ah, self.aw, stride, pad, tuple(shape))

    def _index(self, kh: int, kw: int, h: int, w: int) -> tuple[tuple[int, int, int, int], torch.Tensor, torch.Tensor]:
        """Padding (left, right, top, bottom) that puts every window inside the map."""
        (sh, sw), (ph, pw) = self.stride, self.pad
        top, left = max(0, ph), max(0, pw)
        mh = int(self.ah.max()) if self.ah.numel() else 0
        mw = int(self.aw.max()) if self.aw.numel() else 0
        bottom = max(0, mh * sh - ph + kh - h)
        right = max(0, mw * sw - pw + kw - w)
        # window starts in the padded map (>= 0 since top >= ph)
        return (left, right, top, bottom), self.ah * sh - ph + top, self.aw * sw - pw + left

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Per-neuron values t (B', C', H, W) of the current map into the rows' windows:
        (B', S, C', kh, kw), zero where a window leaves the map."""
        kh, kw = self.kernel
        (left, right, top, bottom), _, _ = self._index(kh, kw, t.shape[-2], t.shape[-1])
        if left or right or top or bottom:
            t = F.pad(t, (left, right, top, bottom))
        # with the padding above, row r's window starts at (ah * sh, aw * sw) of the padded
        # map: the windows at the anchor grid's stride, then one row gather of contiguous
        # windows (faster than indexing a strided view)
        lw = (t.shape[-1] - kw) // self.stride[1] + 1
        u = F.unfold(t, (kh, kw), stride=self.stride).transpose(1, 2).contiguous()  # (B', L, C' kh kw)
        return u.index_select(1, self.ah * lw + self.aw).view(t.shape[0], -1, t.shape[1], kh, kw)

    def mask(self) -> torch.Tensor:
        """(1, S, 1, kh, kw): 1 where a window entry lies inside the map."""
        ones = torch.ones(1, 1, *self.shape[1:], device=self.coef.device, dtype=self.coef.dtype)
        return self.gather(ones)

    def numel_per_row(self) -> int:
        return int(self.coef.shape[2]) * self.kernel[0] * self.kernel[1]

    def to_dense(self) -> torch.Tensor:
        """The rows as a dense (B', S, C, H, W) tensor."""
        b, s, c, kh, kw = self.coef.shape
        h, w = self.shape[1:]
        (left, right, top, bottom), hs, ws = self._index(kh, kw, h, w)
        hp, wp = h + top + bottom, w + left + right
        rows = (hs.view(s, 1) + torch.arange(kh, device=hs.device).view(1, kh)).view(s, kh, 1)
        cols = (ws.view(s, 1) + torch.arange(kw, device=ws.device).view(1, kw)).view(s, 1, kw)
        idx = (rows * wp + cols).view(1, s, 1, kh * kw).expand(b, s, c, kh * kw)
        out = torch.zeros(b, s, c, hp * wp, device=self.coef.device, dtype=self.coef.dtype)
        out = out.scatter(3, idx, self.coef.reshape(b, s, c, kh * kw))
        return out.view(b, s, c, hp, wp)[..., top:top + h, left:left + w]


def conv_back(p: Patches, weight: torch.Tensor, stride: tuple[int, int], padding: tuple[int, int],
              dilation: tuple[int, int], groups: int, in_shape: tuple[int, int, int]) -> Patches:
    """Rows through a convolution: each window becomes the transposed convolution of it."""
    b, s, co, kh, kw = p.coef.shape
    cols = p.coef.reshape(b * s, co, kh, kw)
    if groups == 1 and in_shape[0] <= 4:
        # few input channels: a matmul to the column form and a col2im beat oneDNN's
        # transposed convolution with a narrow output (as in the dense Conv.back)
        k = weight.shape[-2:]
        nh, nw = (kh - 1) * stride[0] + dilation[0] * (k[0] - 1) + 1, (kw - 1) * stride[1] + dilation[1] * (k[1] - 1) + 1
        m = torch.matmul(weight.reshape(co, -1).t(), cols.reshape(b * s, co, kh * kw))
        out = F.fold(m, (nh, nw), k, dilation=dilation, padding=0, stride=stride)
    else:
        out = F.conv_transpose2d(cols, weight, None, stride, 0, 0, groups, dilation)
    out = out.view(b, s, *out.shape[1:])
    q = p.moved(out, (p.stride[0] * stride[0], p.stride[1] * stride[1]),
                (p.pad[0] * stride[0] + padding[0], p.pad[1] * stride[1] + padding[1]), in_shape)
    if padding[0] or padding[1] or _leaves_map(q):
        q.coef = q.coef * q.mask()
    return q


def _leaves_map(p: Patches) -> bool:
    """Whether some window reaches outside the map (then its entries there must be zeroed)."""
    kh, kw = p.kernel
    (left, right, top, bottom), _, _ = p._index(kh, kw, p.shape[1], p.shape[2])
    return bool(left or right or top or bottom)


def pool_back(p: Patches, coef: torch.Tensor, offset: torch.Tensor, kernel: tuple[int, int],
              stride: tuple[int, int], dilation: tuple[int, int], padding: tuple[int, int],
              in_shape: tuple[int, int, int]) -> Patches:
    """Rows through a max pool relaxed as 'output = one input of its window' (plus a
    constant): window entry (i, j) moves to (i*stride + r_h*dilation, j*stride + r_w*dilation)
    of the new window, where ``offset`` (long, like ``coef``) is r_h*dilation*nw + r_w*dilation
    for the chosen input (r_h, r_w) and nw the new window's width (:func:`pool_window`)."""
    b, s, c, kh, kw = coef.shape
    nh, nw = pool_window(p, kernel, stride, dilation)
    base = (torch.arange(kh, device=coef.device).view(kh, 1) * (stride[0] * nw)
            + torch.arange(kw, device=coef.device).view(1, kw) * stride[1])
    index = (offset + base).view(b, s, c, kh * kw)
    out = torch.zeros(b, s, c, nh * nw, device=coef.device, dtype=coef.dtype)
    # overlapping windows can send two entries to one input: add them
    out.scatter_add_(3, index, coef.reshape(b, s, c, kh * kw))
    return p.moved(out.view(b, s, c, nh, nw), (p.stride[0] * stride[0], p.stride[1] * stride[1]),
                   (p.pad[0] * stride[0] + padding[0], p.pad[1] * stride[1] + padding[1]), in_shape)


def pool_window(p: Patches, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]
                ) -> tuple[int, int]:
    """The window size of the rows after going back through a pool (or convolution)."""
    kh, kw = p.kernel
    return ((kh - 1) * stride[0] + dilation[0] * (kernel[0] - 1) + 1,
            (kw - 1) * stride[1] + dilation[1] * (kernel[1] - 1) + 1)


def lower_over_input(p: Patches, bias: torch.Tensor, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                     eps: float, norm: str) -> torch.Tensor:
    """min of the rows plus bias over the input set, as the dense version in
    :mod:`~smoothguard.verification.bounds`: the box [lo, hi] (and for l_2 the better of
    that and Hoelder's bound on the ball): (B, S)."""
    c = p.coef.shape[2]
    parts = [(hi + lo) / 2, (hi - lo) / 2] + ([x] if norm == "l2" else [])
    g = p.gather(torch.cat(parts, dim=1))
    out = bias + (p.coef * g[:, :, :c]).sum((2, 3, 4)) - (p.coef.abs() * g[:, :, c:2 * c]).sum((2, 3, 4))
    if norm == "l2":
        # the windows are zero outside the map, so their norm is the dense row's
        ball = bias + (p.coef * g[:, :, 2 * c:]).sum((2, 3, 4)) - eps * p.coef.flatten(2).norm(dim=-1)
        out = torch.maximum(out, ball)
    return out
