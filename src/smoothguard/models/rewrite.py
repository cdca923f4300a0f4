"""Exact rewrites that make a model's forward pass cheaper without changing what it computes.

:func:`pool_before_relu` moves every ``ReLU -> MaxPool`` pair of an ``nn.Sequential`` to
``MaxPool -> ReLU``. ReLU is monotone and max pooling takes maxima, so
``maxpool(relu(x)) == relu(maxpool(x))`` for every tensor x, bit for bit (no arithmetic is
rounded: both operations only select or clamp values; a pooling window always holds at
least one element of x, so ``-inf`` padding never reaches the output; NaN propagates
through both orders alike). The ReLU then runs on a quarter of the elements (a 2 x 2 pool)
and in place on the pool's fresh output. Gradients agree too: a window's gradient goes to
the same argmax element, and where the maximum is <= 0 both orders give zero.

On the 2-core CPU of the development machine ReLU was a quarter of LeNet's forward time
at batch 400 (a memory-bound pass over 400 x 20 x 24 x 24 activations); the rewritten
LeNet ran 1.5x faster (``benchmarks/bench_certify.py``, BENCHMARKS.md).

The rewrite builds a new module tree that *shares* every parameter, buffer and leaf
module with the original (no weights are copied, training the one trains the other);
the original model is left untouched. Only plain ``nn.Sequential`` containers are
rewritten (a subclass may have its own forward), and never around a module that has
hooks (they would see other tensors).

:func:`strided_max_pools` is for inference only: it replaces each max pooling over
non-overlapping windows (``nn.MaxPool2d`` with stride == kernel size, no padding, no
dilation, floor mode) by :class:`StridedMaxPool2d`, which takes the same maxima with
elementwise ``torch.maximum`` over strided views instead of aten's pooling kernel, which
also writes an int64 index per output even when nobody asks for it. The values are equal
(``==`` everywhere, NaN where the window holds a NaN; a maximum of ``-0.0`` and ``0.0``
may come out with the other sign, which no later sum or comparison can tell apart). Its
gradient, however, splits ties evenly where ``MaxPool2d`` sends it to one element, so it
is used where no gradient is taken: the sampler of ``SmoothedClassifier`` (always under
``torch.inference_mode``). LeNet's 400 x 20 x 24 x 24 pooling ran 2x faster on the AVX2
machine, the whole forward ~1.1x (BENCHMARKS.md).

:func:`input_grad_convs` is for attacks, which take the gradient with respect to the input
only: it wraps each ``nn.Conv2d`` with few input channels (<= 3: a network's first layer)
in :class:`InputGradConv2d`, whose forward is the convolution's own (``F.conv2d``, the
same kernel: equal logits bit for bit) and whose backward computes the input gradient as
one matrix product (weights^T x output gradient: the columns of every window) followed by
``kh * kw`` shifted additions into the input's shape, in chunks of images that stay in
cache. That is the transposed convolution summed in another order, so the gradient agrees
up to float rounding (relative differences ~1e-7), not bit for bit: ``runtime.for_gradients``
applies it only when asked (``conv_grad=True``). On the AVX2 machine, one thread, it ran ~2x
faster than oneDNN's ``convolution_backward`` for LeNet's first layer (1 -> 20 channels,
5 x 5, batch 267: ~25 vs ~45 ms under load), which is slow for a 1-channel output; at two
threads the two were even (28 vs 27 ms), the additions being single-threaded. It applies only where no
weight gradient is asked for (frozen weights and bias; otherwise the plain convolution
runs) and on CPU float32/float64 tensors outside autocast; a second-order gradient
(``create_graph=True``) takes ``torch.nn.grad.conv2d_input``, the standard formula.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)


def _hooked(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                or getattr(m, "_backward_pre_hooks", None))


def _swappable(a: nn.Module, b: nn.Module) -> bool:
    return (type(a) is nn.ReLU and type(b) in _POOLS and not b.return_indices
            and not _hooked(a) and not _hooked(b))


def _with_children(module: nn.Module, children: dict) -> nn.Module:
    """A shallow copy of ``module`` (sharing its parameters and buffers) with new children."""
    clone = copy.copy(module)
    clone._modules = children
    return clone


def _rewrite(module: nn.Module) -> tuple[nn.Module, int]:
    children = dict(module._modules)
    swaps = 0
    for name, child in children.items():
        if child is not None:
            new, k = _rewrite(child)
            children[name] = new
            swaps += k
    if type(module) is nn.Sequential and not _hooked(module):
        seq = list(children.values())
        out, i = [], 0
        while i < len(seq):
            if i + 1 < len(seq) and _swappable(seq[i], seq[i + 1]):
                out += [seq[i + 1], nn.ReLU(inplace=True)]
                i += 2
                swaps += 1
            else:
                out.append(seq[i])
                i += 1
        children = dict(zip(children.keys(), out))
    if not swaps:
        return module, 0
    return _with_children(module, children), swaps


def pool_before_relu(module: nn.Module) -> tuple[nn.Module, int]:
    """A module computing exactly ``module``'s function with each ``ReLU -> MaxPool`` of
    its ``nn.Sequential`` containers swapped (see the module docstring); returns it and
    the number of pairs swapped (0: ``module`` itself is returned)."""
    return _rewrite(module)


class StridedMaxPool2d(nn.Module):
    """Max pooling over non-overlapping ``kernel_size`` windows (stride = kernel size, no
    padding, floor mode) as elementwise maxima of strided views: the values of
    ``nn.MaxPool2d(kernel_size)`` without its index tensor. For inference: its gradient
    splits ties evenly (see the module docstring)."""

    def __init__(self, kernel_size: int | tuple[int, int]) -> None:
        super().__init__()
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        if kh < 1 or kw < 1:
            raise ValueError(f"kernel_size must be >= 1, got {kernel_size!r}")
        self.kernel_size = (int(kh), int(kw))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() not in (3, 4):
            raise ValueError(f"StridedMaxPool2d expects (C, H, W) or (N, C, H, W), got shape {tuple(x.shape)}")
        kh, kw = self.kernel_size
        h, w = x.shape[-2] // kh * kh, x.shape[-1] // kw * kw
        if not torch.jit.is_tracing() and (h == 0 or w == 0):  # (a traced check would bake in the shape)
            raise ValueError(f"input {tuple(x.shape)} is smaller than the pooling window {self.kernel_size}")
        # rows first: in channels_last memory each row slice is one contiguous run
        out = x[..., 0:h:kh, :w]
        for a in range(1, kh):
            out = torch.maximum(out, x[..., a:h:kh, :w])
        cols = out
        out = cols[..., 0::kw]
        for b in range(1, kw):
            out = torch.maximum(out, cols[..., b::kw])
        return out if (kh, kw) != (1, 1) else out.clone()

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _strided(m: nn.Module) -> bool:
    if type(m) is not nn.MaxPool2d or m.return_indices or m.ceil_mode or _hooked(m):
        return False
    stride = _pair(m.stride if m.stride is not None else m.kernel_size)
    return (stride == _pair(m.kernel_size) and _pair(m.padding) == (0, 0) and _pair(m.dilation) == (1, 1))


def _replace_children(module: nn.Module, match, make) -> tuple[nn.Module, int]:
    """``module`` with each descendant for which ``match`` holds replaced by ``make(it)``
    (recursively; not inside a hooked module); the number replaced."""
    children = dict(module._modules)
    count = 0
    for name, child in children.items():
        if child is None:
            continue
        if match(child):
            children[name] = make(child)
            count += 1
        else:
            children[name], k = _replace_children(child, match, make)
            count += k
    if not count or _hooked(module):  # a hooked parent keeps the children its hooks expect
        return module, 0
    return _with_children(module, children), count


def strided_max_pools(module: nn.Module) -> tuple[nn.Module, int]:
    """For inference: a module with each non-overlapping ``nn.MaxPool2d`` of ``module``
    replaced by :class:`StridedMaxPool2d` (equal values, faster; its gradient differs at
    ties, see the module docstring), sharing every other module, parameter and buffer;
    returns it and the number of pools replaced (0: ``module`` itself is returned)."""
    if _strided(module):
        return StridedMaxPool2d(_pair(module.kernel_size)), 1
    return _replace_children(module, _strided, lambda pool: StridedMaxPool2d(_pair(pool.kernel_size)))


class GradAwareMaxPool2d(nn.Module):
    """A non-overlapping ``nn.MaxPool2d`` that takes :class:`StridedMaxPool2d`'s faster path
    on the forward passes that take no gradient (``torch.no_grad``/``inference_mode``, or an
    input that does not require grad) and the original pooling otherwise, so the values are
    those of ``MaxPool2d`` always and the gradient is ``MaxPool2d``'s. For attacks, which mix
    gradient steps with decision-only forward passes (Square's queries, FAB's decisions, the
    clean and final predictions)."""

    def __init__(self, pool: nn.MaxPool2d) -> None:
        super().__init__()
        self.pool = pool
        self.fast = StridedMaxPool2d(_pair(pool.kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return self.pool(x)
        return self.fast(x)


def grad_aware_max_pools(module: nn.Module) -> tuple[nn.Module, int]:
    """A module with each non-overlapping ``nn.MaxPool2d`` of ``module`` wrapped in
    :class:`GradAwareMaxPool2d` (sharing every other module, parameter and buffer); returns
    it and the number of pools wrapped (0: ``module`` itself is returned)."""
    if _strided(module):
        return GradAwareMaxPool2d(module), 1
    return _replace_children(module, _strided, GradAwareMaxPool2d)


# how many elements of the window columns one chunk of images produces (1 MiB of float32):
# small enough to be added from cache, large enough that each matrix product is efficient
_COLUMN_CHUNK = 1 << 18
MAX_INPUT_CHANNELS = 3  # InputGradConv2d's rule: a first layer (images have 1 or 3 channels)


def _conv_input_grad(g: torch.Tensor, weight: torch.Tensor, in_hw: tuple[int, int],
                     stride: tuple[int, int], padding: tuple[int, int]) -> torch.Tensor:
    """The gradient of ``F.conv2d(x, weight, stride=stride, padding=padding)`` (groups 1,
    dilation 1) with respect to x, for the output gradient ``g``: the window columns
    ``weight^T @ g`` added back at each window's place (col2im)."""
    n, co, ho, wo = g.shape
    ci, kh, kw = weight.shape[1:]
    (sh, sw), (ph, pw), (h, w) = stride, padding, in_hw
    k, spots = ci * kh * kw, ho * wo
    wt = weight.reshape(co, k).t()  # (k, co)
    gm = g.permute(0, 2, 3, 1).reshape(n * spots, co)  # a view of a channels_last g, else one copy
    out = g.new_zeros(n, ci, h + 2 * ph, w + 2 * pw)
    per = max(1, _COLUMN_CHUNK // (k * spots))
    rows, cols_ = sh * (ho - 1) + 1, sw * (wo - 1) + 1
    for s in range(0, n, per):
        e = min(n, s + per)
        cols = torch.mm(wt, gm[s * spots:e * spots].t()).view(ci, kh, kw, e - s, ho, wo)
        o = out[s:e]
        for c in range(ci):
            oc = o[:, c]
            for i in range(kh):
                for j in range(kw):
                    oc[:, i:i + rows:sh, j:j + cols_:sw] += cols[c, i, j]
    if ph or pw:
        out = out[:, :, ph:ph + h, pw:pw + w].contiguous()
    return out


class _ConvInputGrad(torch.autograd.Function):
    """``F.conv2d`` whose backward returns the input gradient only (the weight and bias
    must not require grad: :class:`InputGradConv2d` checks)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):  # noqa: D102
        ctx.save_for_backward(weight)
        ctx.geometry = (tuple(x.shape), stride, padding)
        return F.conv2d(x, weight, bias, stride, padding)

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        (weight,) = ctx.saved_tensors
        shape, stride, padding = ctx.geometry
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        if torch.is_grad_enabled():  # create_graph: the standard (twice differentiable) formula
            gx = torch.nn.grad.conv2d_input(shape, weight, g, stride, padding)
        else:
            gx = _conv_input_grad(g, weight, shape[-2:], stride, padding)
        return gx, None, None, None, None


def _padding_pair(conv: nn.Conv2d) -> tuple[int, int] | None:
    if conv.padding == "valid":
        return (0, 0)
    if isinstance(conv.padding, str):  # "same": possibly asymmetric, not handled
        return None
    return _pair(conv.padding)


def _input_grad_convertible(m: nn.Module) -> bool:
    return (type(m) is nn.Conv2d and m.in_channels <= MAX_INPUT_CHANNELS and m.groups == 1
            and _pair(m.dilation) == (1, 1) and m.padding_mode == "zeros" and _padding_pair(m) is not None
            and not _hooked(m))


class InputGradConv2d(nn.Module):
    """An ``nn.Conv2d`` (shared, not copied) whose input gradient is computed as a matrix
    product and col2im (see the module docstring) whenever that is exact and asked for: the
    input requires grad, the weight and bias do not, a CPU float32/float64 tensor outside
    autocast; otherwise the convolution itself runs. The forward values are the
    convolution's always."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if not _input_grad_convertible(conv):
            raise ValueError(f"InputGradConv2d takes an unhooked nn.Conv2d with <= {MAX_INPUT_CHANNELS} input "
                             f"channels, groups 1, dilation 1, zero padding given as numbers or 'valid'; "
                             f"got {conv!r}")
        self.conv = conv

    def _fast(self, x: torch.Tensor) -> bool:
        c = self.conv
        return (torch.is_grad_enabled() and x.requires_grad and x.dim() == 4 and x.device.type == "cpu"
                and x.dtype in (torch.float32, torch.float64) and c.weight.dtype == x.dtype
                and not c.weight.requires_grad and not (c.bias is not None and c.bias.requires_grad)
                and not torch.is_autocast_enabled("cpu"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        if not self._fast(x):
            return c(x)
        return _ConvInputGrad.apply(x, c.weight, c.bias, _pair(c.stride), _padding_pair(c))


def input_grad_convs(module: nn.Module) -> tuple[nn.Module, int]:
    """A module with each ``nn.Conv2d`` of ``module`` that has <= 3 input channels (groups
    1, dilation 1, zero padding, no hooks) wrapped in :class:`InputGradConv2d` (sharing
    every other module, parameter and buffer); returns it and the number wrapped (0:
    ``module`` itself is returned). Only faster where the weights are frozen (attacks)."""
    if _input_grad_convertible(module):
        return InputGradConv2d(module), 1
    return _replace_children(module, _input_grad_convertible, InputGradConv2d)
