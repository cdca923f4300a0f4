"""A model as a flat chain of operations that the bound propagators understand.

Interval bound propagation and CROWN need, for every layer, its interval image (IBP) and
either its transpose (affine layers) or a linear relaxation (ReLU, max pooling). This
module turns a model into a list of such operations once per call:

* affine: ``nn.Linear``, ``nn.Conv2d`` (any stride, padding, dilation, groups; zero
  padding), ``nn.AvgPool2d`` (as a depthwise convolution), the project's ``Normalize``
  and ``nn.BatchNorm1d/2d`` in eval mode (per-channel scale and shift), ``nn.Flatten``;
* piecewise linear: ``nn.ReLU``, ``nn.MaxPool2d`` (and the project's
  ``StridedMaxPool2d``);
* skipped: ``nn.Identity``, ``nn.Dropout`` in eval mode;
* containers: nested ``nn.Sequential``, and the project's ``LeNet`` and ``MadryCNN``
  (whose ``forward`` is the chain features -> flatten -> fc1 -> ReLU -> fc2).

Anything else is refused with a :class:`VerificationError` naming the layer; so are
noise-injection layers (PNI/CNI: a stochastic model has no deterministic bounds) and
batch norm in training mode (its output depends on the rest of the batch).

The operations keep references to the modules' parameters (never copies), so bounds are
differentiable in the weights: certified training back-propagates through them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from smoothguard.contract import ContractError
from smoothguard.models.archs import LeNet, MadryCNN
from smoothguard.models.layers import Normalize
from smoothguard.models.noise import NoiseInjection
from smoothguard.models.rewrite import StridedMaxPool2d
from smoothguard.verification.patches import Patches, conv_back, pool_back, pool_window


class VerificationError(ContractError):
    """The model cannot be verified as given (an unsupported or stochastic layer)."""


SUPPORTED = ("Linear", "Conv2d", "ReLU", "Normalize", "Flatten", "BatchNorm1d/2d (eval)", "MaxPool2d",
             "AvgPool2d", "Identity", "Dropout (eval)", "Sequential", "LeNet", "MadryCNN")


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class Op:
    """One operation of the chain. ``in_shape`` / ``out_shape`` exclude the batch."""

    linear = True
    name = "op"

    def __init__(self, in_shape: tuple[int, ...]) -> None:
        self.in_shape = tuple(in_shape)
        with torch.no_grad():
            ref = self._ref()
            probe = torch.zeros(1, *self.in_shape) if ref is None else ref.new_zeros(1, *self.in_shape)
            self.out_shape = tuple(self.forward(probe).shape[1:])

    def _ref(self) -> torch.Tensor | None:
        """A parameter of the operation: the device and dtype of the shape probe."""
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def ibp(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Elementwise bounds of the output over the box [lo, hi] (exact for one affine op)."""
        raise NotImplementedError

    # affine operations: out = M in + c
    def back(self, A: torch.Tensor) -> torch.Tensor:
        """A M for A of shape (B, S, *out_shape) -> (B, S, *in_shape)."""
        raise NotImplementedError

    def bias_term(self, A: torch.Tensor) -> torch.Tensor | None:
        """A c, shape (B, S), or None where c = 0."""
        return None

    # the same for rows stored as windows of a (C, H, W) map (verification.patches);
    # only the operations that can precede a convolutional feature map have them
    def back_patches(self, p: Patches) -> Patches:
        raise NotImplementedError(f"{self.name} has no windowed backward pass")

    def bias_patches(self, p: Patches) -> torch.Tensor | None:
        return None


class Dense(Op):
    name = "Linear"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, in_shape) -> None:
        self.weight, self.bias = weight, bias
        super().__init__(in_shape)

    def _ref(self):
        return self.weight

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def ibp(self, lo, hi):
        mid, rad = (hi + lo) / 2, (hi - lo) / 2
        return _centre_radius(F.linear(mid, self.weight, self.bias), F.linear(rad, self.weight.abs()))

    def back(self, A):
        return A.matmul(self.weight)

    def bias_term(self, A):
        return None if self.bias is None else A.matmul(self.bias)


class Conv(Op):
    name = "Conv2d"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, stride, padding, dilation, groups: int,
                 in_shape) -> None:
        self.weight, self.bias = weight, bias
        self.stride, self.padding, self.dilation, self.groups = _pair(stride), _pair(padding), _pair(dilation), groups
        super().__init__(in_shape)
        # conv_transpose2d needs the rows/columns the strided forward dropped back
        k = self.weight.shape[-2:]
        self.output_padding = tuple(
            self.in_shape[1 + d] - ((self.out_shape[1 + d] - 1) * self.stride[d] - 2 * self.padding[d]
                                    + self.dilation[d] * (k[d] - 1) + 1) for d in range(2))

    def _ref(self):
        return self.weight

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def ibp(self, lo, hi):
        mid, rad = (hi + lo) / 2, (hi - lo) / 2
        return _centre_radius(self.forward(mid), F.conv2d(rad, self.weight.abs(), None, self.stride, self.padding,
                                                          self.dilation, self.groups))

    def back(self, A):
        b, s = A.shape[:2]
        if self.groups == 1 and self.in_shape[0] <= 4:
            # few input channels (the first layer): one matmul to the column form and a
            # col2im is ~3x faster on CPU than conv_transpose2d, which handles such a
            # narrow output poorly
            co, h, w = self.out_shape
            wt = self.weight.reshape(co, -1).t()
            rows = A.reshape(b * s, co, h * w)
            # in slices whose column form (rows x C_in k k x h w) stays in cache: ~1.4x
            # faster than one pass over the whole block on CPU
            step = max(1, 2 ** 20 // (wt.shape[0] * h * w))
            # (split, not slices: autograd joins split's gradients in one pass, where each
            # slice's backward would write a zero tensor of the whole block)
            out = torch.cat([F.fold(torch.matmul(wt, part), self.in_shape[1:], self.weight.shape[-2:],
                                    dilation=self.dilation, padding=self.padding, stride=self.stride)
                             for part in rows.split(step)])
            return out.view(b, s, *self.in_shape)
        out = F.conv_transpose2d(A.reshape(b * s, *self.out_shape), self.weight, None, self.stride, self.padding,
                                 self.output_padding, self.groups, self.dilation)
        return out.view(b, s, *self.in_shape)

    def bias_term(self, A):
        return None if self.bias is None else A.sum(dim=(-2, -1)).matmul(self.bias)

    def back_patches(self, p):
        return conv_back(p, self.weight, self.stride, self.padding, self.dilation, self.groups, self.in_shape)

    def bias_patches(self, p):
        # windows are zero outside the map, so this sums over the row's neurons only
        return None if self.bias is None else p.coef.sum(dim=(-2, -1)).matmul(self.bias)


class Scale(Op):
    """x * scale + shift with per-channel scale and shift (Normalize, eval batch norm)."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor, in_shape, name: str) -> None:
        # broadcast over the spatial dims of (C, H, W) inputs, or (F,) for batch norm 1-d
        view = (-1,) + (1,) * (len(in_shape) - 1)
        self.scale, self.shift, self.name = scale.reshape(view), shift.reshape(view), name
        super().__init__(in_shape)

    def _ref(self):
        return self.scale

    def forward(self, x):
        return x * self.scale + self.shift

    def ibp(self, lo, hi):
        mid, rad = (hi + lo) / 2, (hi - lo) / 2
        return _centre_radius(self.forward(mid), rad * self.scale.abs())

    def back(self, A):
        return A * self.scale

    def bias_term(self, A):
        return (A * self.shift).flatten(2).sum(-1)

    def back_patches(self, p):
        return p.moved(p.coef * self.scale, p.stride, p.pad, self.in_shape)

    def bias_patches(self, p):
        return (p.coef * self.shift).sum((2, 3, 4))


class Reshape(Op):
    name = "Flatten"

    def __init__(self, in_shape, out_shape) -> None:
        self._target = tuple(out_shape)
        super().__init__(in_shape)

    def forward(self, x):
        return x.reshape(x.shape[0], *self._target)

    def ibp(self, lo, hi):
        return self.forward(lo), self.forward(hi)

    def back(self, A):
        return A.reshape(*A.shape[:2], *self.in_shape)


class ReLU(Op):
    """ReLU; CROWN's relaxation (Zhang et al. 2018) of an unstable neuron (l < 0 < u):
    upper line through (l, 0) and (u, u), lower line of slope 1 if u > -l else 0 (the
    "adaptive" choice, which minimizes the area between the two lines)."""

    linear = False
    name = "ReLU"

    def forward(self, x):
        return F.relu(x)

    def ibp(self, lo, hi):
        return F.relu(lo), F.relu(hi)

    @staticmethod
    def lines(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(lower slope, upper slope, upper intercept) per neuron for z in [lo, hi]."""
        lo_c, hi_c = lo.clamp(max=0), hi.clamp(min=0)
        # stable neurons: active (lo >= 0) -> slope 1, inactive (hi <= 0) -> 0; the 1e-12
        # only guards 0/0 at lo = hi = 0 (both lines are then exact anyway)
        up_slope = hi_c / (hi_c - lo_c).clamp(min=1e-12)
        up_icpt = -lo_c * up_slope
        lo_slope = (hi > -lo).to(lo.dtype) * (hi > 0).to(lo.dtype)
        lo_slope = torch.where(lo >= 0, torch.ones_like(lo_slope), lo_slope)
        return lo_slope, up_slope, up_icpt

    def relax_back(self, A: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower-bound relaxation of A relu(z) for z in [lo, hi]: returns (A', b) with
        A relu(z) >= A' z + b. Positive coefficients take the lower line, negative ones
        the upper line."""
        lo_slope, up_slope, up_icpt = self.lines(lo, hi)
        # A' = A lo_slope + min(A, 0) (up_slope - lo_slope): fewer passes over the large A
        a_neg = A.clamp(max=0)
        bsz, s = A.shape[:2]
        b = a_neg.reshape(bsz, s, -1).bmm(up_icpt.reshape(bsz, -1, 1)).squeeze(-1)
        return A * lo_slope.unsqueeze(1) + a_neg * (up_slope - lo_slope).unsqueeze(1), b

    def relax_patches(self, p: Patches, lo: torch.Tensor, hi: torch.Tensor) -> tuple[Patches, torch.Tensor]:
        """:meth:`relax_back` for rows stored as windows (lo, hi of shape (B, C, H, W))."""
        lo_slope, up_slope, up_icpt = self.lines(lo, hi)
        c = lo.shape[1]
        g = p.gather(torch.cat([lo_slope, up_slope - lo_slope, up_icpt], dim=1))
        a_neg = p.coef.clamp(max=0)
        bias = (a_neg * g[:, :, 2 * c:]).sum((2, 3, 4))
        return p.moved((p.coef * g[:, :, :c]).addcmul_(a_neg, g[:, :, c:2 * c]), p.stride, p.pad, p.shape), bias


class MaxPool(Op):
    """Max pooling with the relaxation of DeepPoly (Singh et al. 2019), also used by
    auto_LiRPA: lower bound max >= x_i at the window's input i with the largest lower
    bound; upper bound max <= x_i when that input dominates (l_i >= u_j for every other
    j of the window), else the constant max_j u_j. Overlapping windows are supported
    (contributions of shared inputs add up)."""

    linear = False
    name = "MaxPool2d"

    def __init__(self, kernel_size, stride, padding, dilation, in_shape) -> None:
        self.kernel, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        super().__init__(in_shape)

    def forward(self, x):
        return F.max_pool2d(x, self.kernel, self.stride, self.padding, self.dilation)

    def ibp(self, lo, hi):
        return self.forward(lo), self.forward(hi)

    def _windows(self, t: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, kh*kw, L): each output's window, padding as -inf."""
        ph, pw = self.padding
        t = F.pad(t, (pw, pw, ph, ph), value=float("-inf")) if ph or pw else t
        b, c = t.shape[:2]
        return F.unfold(t.reshape(b * c, 1, *t.shape[-2:]), self.kernel, self.dilation, 0,
                        self.stride).view(b, c, self.kernel[0] * self.kernel[1], -1)

    def relaxation(self, lo: torch.Tensor, hi: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per output (B, C, OH, OW): the flat input index of the window's largest lower
        bound, its position inside the window (row-major over the kernel), whether it
        dominates the window (float 0/1), and the constant upper bound max_j u_j."""
        b, c = lo.shape[:2]
        w = self.in_shape[2]
        lmax, idx = F.max_pool2d(lo, self.kernel, self.stride, self.padding, self.dilation, return_indices=True)
        # which window position holds idx, to exclude it from the dominance test
        oh = torch.arange(self.out_shape[1], device=lo.device).view(-1, 1)
        ow = torch.arange(self.out_shape[2], device=lo.device).view(1, -1)
        rh = (idx // w + self.padding[0] - oh * self.stride[0]) // self.dilation[0]
        rw = (idx % w + self.padding[1] - ow * self.stride[1]) // self.dilation[1]
        pos = rh * self.kernel[1] + rw
        wu = self._windows(hi).scatter(2, pos.view(b, c, 1, -1), float("-inf"))
        others = wu.max(dim=2).values.view_as(lmax)
        dominant = (lmax >= others).to(lo.dtype)
        return idx, pos, dominant, self.forward(hi)

    @property
    def disjoint(self) -> bool:
        """Whether no input lies in two windows (stride >= the dilated kernel)."""
        return all(self.stride[d] >= self.dilation[d] * (self.kernel[d] - 1) + 1 for d in range(2))

    def _coefficients(self, A: torch.Tensor, dominant: torch.Tensor, const: torch.Tensor,
                      relu: tuple[torch.Tensor, ...] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Coefficients (on each window's chosen input) and bias for A (..., C, OH, OW):
        negative coefficients of non-dominant windows take the constant upper bound
        ``const`` = (1 - dominant) max_j u_j instead; with ``relu`` = (lower slope, upper
        slope - lower slope, upper intercept) at the chosen inputs, also through the ReLU
        in front of the pool."""
        a_neg = A.clamp(max=0)
        coef = torch.addcmul(A.clamp(min=0), a_neg, dominant)  # A may have batch 1: not in place
        bias = (a_neg * const).flatten(2).sum(-1)
        if relu is not None:
            lo_slope, d_slope, icpt = relu
            c_neg = coef.clamp(max=0)
            bias = bias + (c_neg * icpt).flatten(2).sum(-1)
            coef = (coef * lo_slope).addcmul_(c_neg, d_slope)
        return coef, bias

    def relax_back(self, A: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                   relu: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower-bound relaxation of A maxpool(z) (A of shape (B, S, C, OH, OW)). With
        ``relu`` = the bounds of the input of a ReLU in front of the pool (z = relu(v)),
        the relaxation of A maxpool(relu(v)) in terms of v: the ReLU's lines are applied
        to the window's chosen input only, which equals relaxing the ReLU separately
        when the windows are :attr:`disjoint` (every other input has coefficient 0)."""
        b, s = A.shape[:2]
        c, h, w = self.in_shape
        idx, _, dominant, umax = self.relaxation(lo, hi)
        lines = None
        if relu is not None:
            flat_idx = idx.flatten(2)
            lines = tuple(t.flatten(2).gather(2, flat_idx).view_as(dominant).unsqueeze(1)
                          for t in _relu_lines(*relu))
        coef, bias = self._coefficients(A, dominant.unsqueeze(1), ((1 - dominant) * umax).unsqueeze(1), lines)
        # scattered to the chosen inputs
        flat = coef.reshape(b, s, c, -1)
        out = torch.zeros(b, s, c, h * w, device=A.device, dtype=A.dtype)
        out = out.scatter_add(3, idx.view(b, 1, c, -1).expand(b, s, c, -1), flat)
        return out.view(b, s, c, h, w), bias

    def relax_patches(self, p: Patches, lo: torch.Tensor, hi: torch.Tensor,
                      relu: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[Patches, torch.Tensor]:
        """:meth:`relax_back` for rows stored as windows."""
        idx, pos, dominant, umax = self.relaxation(lo, hi)
        c = lo.shape[1]
        _, nw = pool_window(p, self.kernel, self.stride, self.dilation)
        # where each window entry goes in the new window, relative to the entry's base
        offset = (pos // self.kernel[1]) * (self.dilation[0] * nw) + (pos % self.kernel[1]) * self.dilation[1]
        maps = [dominant, (1 - dominant) * umax, offset.to(lo.dtype)]  # offsets: small integers, exact in float
        if relu is not None:
            flat_idx = idx.flatten(2)
            maps += [t.flatten(2).gather(2, flat_idx).view_as(dominant) for t in _relu_lines(*relu)]
        g = p.gather(torch.cat(maps, dim=1))  # one gather for all maps
        lines = (g[:, :, 3 * c:4 * c], g[:, :, 4 * c:5 * c], g[:, :, 5 * c:]) if relu is not None else None
        coef, bias = self._coefficients(p.coef, g[:, :, :c], g[:, :, c:2 * c], lines)
        # window entries that leave the map have coefficient 0: their offset (0) is harmless
        return pool_back(p, coef, g[:, :, 2 * c:3 * c].round().long(), self.kernel, self.stride, self.dilation,
                         self.padding, self.in_shape), bias


def _relu_lines(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ReLU's (lower slope, upper slope - lower slope, upper intercept)."""
    lo_slope, up_slope, up_icpt = ReLU.lines(lo, hi)
    return lo_slope, up_slope - lo_slope, up_icpt


def _centre_radius(mid: torch.Tensor, rad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return mid - rad, mid + rad


def _unsupported(module: nn.Module, why: str = "") -> VerificationError:
    return VerificationError(
        f"cannot compute deterministic bounds through layer {type(module).__name__} ({module!r}){why}; "
        f"supported layers: {', '.join(SUPPORTED)}")


def _children_of(module: nn.Module) -> list[nn.Module] | None:
    """The chain a container computes, or None for a leaf."""
    if isinstance(module, nn.Sequential):
        return list(module)
    if type(module) in (LeNet, MadryCNN):
        # their forward: features(x).flatten(1) -> fc1 -> relu -> fc2
        return [*module.features, nn.Flatten(), module.fc1, nn.ReLU(), module.fc2]
    return None


def _convert(module: nn.Module, shape: tuple[int, ...]) -> list[Op]:
    if isinstance(module, NoiseInjection):
        if module.enabled:
            raise VerificationError(
                f"layer {type(module).__name__} injects random noise: the model is stochastic and has no "
                "deterministic bounds (smoothguard.models.set_noise_injection(model, False) switches the noise off "
                "to verify the noise-free network)")
        return _convert(module.layer, shape)
    if isinstance(module, (nn.Identity,)) or (isinstance(module, nn.Dropout) and not module.training):
        return []
    if isinstance(module, nn.Linear):
        return [Dense(module.weight, module.bias, shape)]
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise _unsupported(module, ": only numeric zero padding is supported")
        return [Conv(module.weight, module.bias, module.stride, module.padding, module.dilation, module.groups,
                     shape)]
    if isinstance(module, nn.ReLU):
        return [ReLU(shape)]
    if isinstance(module, Normalize):
        return [Scale(1 / module.std.flatten(), -module.mean.flatten() / module.std.flatten(), shape, "Normalize")]
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if module.training or module.running_mean is None:
            raise _unsupported(module, ": batch norm must be in eval mode with running statistics (call "
                                       "model.eval()); in training mode its output depends on the whole batch")
        inv = torch.rsqrt(module.running_var + module.eps)
        scale = inv * module.weight if module.affine else inv
        shift = -module.running_mean * scale + (module.bias if module.affine else 0)
        return [Scale(scale, shift, shape, type(module).__name__)]
    if isinstance(module, nn.Flatten):
        if module.start_dim != 1 or module.end_dim != -1:
            raise _unsupported(module, ": only Flatten(start_dim=1, end_dim=-1)")
        return [Reshape(shape, (int(torch.tensor(shape).prod()),))]
    if isinstance(module, nn.MaxPool2d):
        if module.ceil_mode or module.return_indices:
            raise _unsupported(module, ": ceil_mode and return_indices are not supported")
        return [MaxPool(module.kernel_size, module.stride or module.kernel_size, module.padding, module.dilation,
                        shape)]
    if isinstance(module, StridedMaxPool2d):
        return [MaxPool(module.kernel_size, module.kernel_size, 0, 1, shape)]
    if isinstance(module, nn.AvgPool2d):
        if module.ceil_mode or module.divisor_override is not None or (
                not module.count_include_pad and _pair(module.padding) != (0, 0)):
            raise _unsupported(module, ": only floor mode, no divisor_override, and count_include_pad=True "
                                       "when padded")
        k = _pair(module.kernel_size)
        c = shape[0]
        ref = _first_tensor(module)
        weight = torch.full((c, 1, *k), 1.0 / (k[0] * k[1]), device=ref.device if ref is not None else None)
        op = Conv(weight, None, module.stride or k, module.padding, 1, c, shape)
        op.name = "AvgPool2d"
        return [op]
    children = _children_of(module)
    if children is None:
        raise _unsupported(module)
    ops: list[Op] = []
    for child in children:
        new = _convert(child, shape)
        ops.extend(new)
        if new:
            shape = new[-1].out_shape
    return ops


def _first_tensor(module: nn.Module) -> torch.Tensor | None:
    for t in module.parameters():
        return t
    for t in module.buffers():
        return t
    return None


def to_ops(model: nn.Module, in_shape: tuple[int, ...]) -> list[Op]:
    """The model as a chain of :class:`Op` for inputs of shape ``in_shape`` (C, H, W).

    Raises:
        VerificationError: a layer is unsupported or stochastic; the message names it.
    """
    ops = _convert(model, tuple(int(s) for s in in_shape))
    if not ops:
        raise VerificationError("the model has no layers to bound")
    return ops


def run_ops(ops: list[Op], x: torch.Tensor) -> torch.Tensor:
    """The chain's output on x (to check it reproduces the model)."""
    for op in ops:
        x = op.forward(x)
    return x

