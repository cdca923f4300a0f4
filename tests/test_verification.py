"""Soundness and oracle tests of the deterministic bounds (smoothguard.verification).

Every bound must contain the model's output at every admissible input (sampled points,
vertices, and points found by gradient attacks pushing each logit up and down), CROWN
must beat IBP where that is a theorem, closed forms must be met exactly, and unsupported
layers must be refused by name.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from smoothguard.contract import ContractError
from smoothguard.models import get_model, set_noise_injection
from smoothguard.models.layers import Normalize
from smoothguard.verification import (METHODS, VerificationError, bounds, input_box, margin_spec, spec_bounds,
                                      to_ops, verify)

TOL = 1e-5


@pytest.fixture(autouse=True)
def _one_thread():
    """These models are tiny: a second intra-op thread only adds synchronization, and on
    a busy machine spinning threads made this file 30x slower. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _randomize_bn(model: nn.Module, gen: torch.Generator) -> nn.Module:
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.3)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=gen))
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.3)
    return model.eval()


def small_models() -> dict[str, nn.Module]:
    """Small random networks covering every supported layer kind (inputs 1x8x8 or 2x6x6)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    conv = nn.Sequential(
        Normalize([0.4], [0.3]),
        nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(),   # 4x4x4
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2, stride=1),                                               # overlapping windows: 3x3
        nn.Flatten(), nn.Linear(54, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Identity(), nn.Linear(16, 5))
    pool = nn.Sequential(
        Normalize([0.5, 0.4], [0.25, 0.2]),
        nn.Conv2d(2, 5, 3, padding=1, dilation=1), nn.ReLU(),
        nn.AvgPool2d(2),                                                         # 5x3x3
        nn.Sequential(nn.Conv2d(5, 4, 2, stride=1), nn.ReLU()),                  # nested: 4x2x2
        nn.MaxPool2d(2, padding=1),                                              # padded pool
        nn.Flatten(), nn.Linear(16, 3))
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 20), nn.ReLU(), nn.Linear(20, 20), nn.ReLU(), nn.Linear(20, 4))
    return {"conv": _randomize_bn(conv, gen), "pool": pool.eval(), "mlp": mlp.eval()}


SHAPES = {"conv": (1, 8, 8), "pool": (2, 6, 6), "mlp": (1, 8, 8)}


def _inputs(name: str, n: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *SHAPES[name], generator=g)
    x[0].clamp_(max=0.05)  # an image near the box edge: the [0, 1] clip matters
    return x


def _ball_samples(x: torch.Tensor, eps: float, norm: str, k: int, gen: torch.Generator) -> torch.Tensor:
    """k admissible points per image: uniform in the box, and (l_inf) box vertices."""
    xs = x.unsqueeze(1).expand(-1, k, *x.shape[1:])
    if norm == "linf":
        u = torch.rand(xs.shape, generator=gen) * 2 - 1
        u[:, : k // 2] = u[:, : k // 2].sign()  # vertices: where the extremes of an affine map are
        pts = xs + eps * u
    else:
        d = torch.randn(xs.shape, generator=gen)
        d = d / d.flatten(2).norm(dim=2).view(*d.shape[:2], 1, 1, 1)
        r = torch.rand(*xs.shape[:2], 1, 1, 1, generator=gen) ** 0.1
        pts = xs + eps * r * d
    # clipping into [0, 1] only moves a point closer to x (x is in the box)
    return pts.clamp(0, 1).reshape(-1, *x.shape[1:])


def _extreme_points(model: nn.Module, x: torch.Tensor, eps: float, norm: str, steps: int = 30) -> torch.Tensor:
    """Projected-gradient points pushing every logit up and down: (2K, N, C, H, W)."""
    with torch.no_grad():
        k = model(x).shape[1]
    out = []
    lo, hi = input_box(x, eps, norm)
    for j in range(k):
        for sign in (1.0, -1.0):
            z = x.clone()
            for _ in range(steps):
                z.requires_grad_(True)
                g, = torch.autograd.grad(sign * model(z)[:, j].sum(), z)
                with torch.no_grad():
                    if norm == "linf":
                        z = torch.minimum(torch.maximum(z + eps / 8 * g.sign(), lo), hi)
                    else:
                        g = g / g.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1, 1, 1)
                        d = z + eps / 8 * g - x
                        d = d * (eps / d.flatten(1).norm(dim=1).clamp(min=eps)).view(-1, 1, 1, 1)
                        z = (x + d).clamp(0, 1)
            out.append(z.detach())
    return torch.stack(out)


@pytest.mark.parametrize("name", ["conv", "pool", "mlp"])
@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.3)])
def test_bounds_contain_sampled_and_attacked_points(name, norm, eps):
    model = small_models()[name]
    x = _inputs(name)
    gen = torch.Generator().manual_seed(2)
    pts = _ball_samples(x, eps, norm, 64, gen)
    extreme = _extreme_points(model, x, eps, norm)
    with torch.no_grad():
        z = model(pts).view(x.shape[0], 64, -1)
        z_ext = model(extreme.flatten(0, 1)).view(extreme.shape[0], x.shape[0], -1)
    for method in METHODS:
        lo, hi = bounds(model, x, eps, norm, method)
        assert (z >= lo.unsqueeze(1) - TOL).all() and (z <= hi.unsqueeze(1) + TOL).all(), method
        assert (z_ext >= lo - TOL).all() and (z_ext <= hi + TOL).all(), method
        # and the bounds are not vacuous: the attack gets within a finite distance of them
        assert torch.isfinite(lo).all() and (hi - lo).max() < 1e4
    # margins: the attacked points' true margins never undercut the margin bounds
    y = model(x).argmax(1)
    for method in METHODS:
        m = verify(model, x, y, eps, norm, method).margins
        true_m = z_ext.gather(2, y.view(1, -1, 1).expand(z_ext.shape[0], -1, 1)) - z_ext
        true_m[..., :] = torch.where(F.one_hot(y, z_ext.shape[2]).bool().unsqueeze(0), float("inf"), true_m)
        assert (true_m >= m.unsqueeze(0) - TOL).all(), method


@pytest.mark.parametrize("name", ["conv", "pool", "mlp"])
def test_crown_never_looser_than_ibp_and_raw_crown_much_tighter(name):
    """Raw CROWN is not tighter than IBP output by output in every network (a lower
    slope of 1 can cost), so bounds()/verify() keep the tighter of the two: never looser
    than IBP, elementwise. The raw CROWN bounds must still be much tighter overall."""
    model = small_models()[name]
    x = _inputs(name, n=4)
    y = model(x).argmax(1)
    lo_i, hi_i = bounds(model, x, 0.03, "linf", "ibp")
    for method in ("crown", "crown-ibp"):
        lo, hi = bounds(model, x, 0.03, "linf", method)
        assert (lo >= lo_i).all() and (hi <= hi_i).all()
        m_i, m = verify(model, x, y, 0.03, method="ibp").margins, verify(model, x, y, 0.03, method=method).margins
        assert (m >= m_i).all()
    ops = to_ops(model, SHAPES[name])
    C = torch.eye(lo_i.shape[1]).expand(4, -1, -1)
    raw = spec_bounds(ops, x, C, 0.03, "linf", "crown")
    assert (raw[1] - raw[0]).sum() < 0.9 * (hi_i - lo_i).sum()


def test_margin_bound_folded_into_last_layer_is_tighter_than_logit_difference():
    model = small_models()["mlp"]
    x = _inputs("mlp")
    y = model(x).argmax(1)
    for method in METHODS:
        lo, hi = bounds(model, x, 0.05, "linf", method)
        naive = lo.gather(1, y.view(-1, 1)) - hi
        m = verify(model, x, y, 0.05, "linf", method).margins
        other = ~F.one_hot(y, 4).bool()
        assert (m[other] >= naive[other] - TOL).all()
        assert (m[other] > naive[other] + 1e-3).any(), method


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_single_linear_layer_bounds_are_exact(norm):
    torch.manual_seed(3)
    lin = nn.Linear(12, 5)
    model = nn.Sequential(nn.Flatten(), lin).eval()
    x = torch.rand(4, 1, 3, 4) * 0.5 + 0.25  # interior: for l_2 eps 0.2 the ball stays inside [0, 1]
    eps = 0.2
    W, b = lin.weight.detach(), lin.bias.detach()
    xf = x.flatten(1)
    if norm == "linf":
        lo_box, hi_box = (xf - eps).clamp(0, 1), (xf + eps).clamp(0, 1)
        # the maximizing vertex of each logit, which the model attains
        vert = torch.where(W.unsqueeze(0) > 0, hi_box.unsqueeze(1), lo_box.unsqueeze(1))  # (N, K, d)
        exact_hi = (vert * W).sum(-1) + b
        vert_lo = torch.where(W.unsqueeze(0) > 0, lo_box.unsqueeze(1), hi_box.unsqueeze(1))
        exact_lo = (vert_lo * W).sum(-1) + b
    else:
        centre = xf @ W.t() + b
        exact_hi, exact_lo = centre + eps * W.norm(dim=1), centre - eps * W.norm(dim=1)
    methods = METHODS if norm == "linf" else ("crown", "crown-ibp")  # IBP on l_2 uses the enclosing box
    for method in methods:
        lo, hi = bounds(model, x, eps, norm, method)
        torch.testing.assert_close(lo, exact_lo, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(hi, exact_hi, rtol=1e-5, atol=1e-5)
    if norm == "l2":
        lo, hi = bounds(model, x, eps, norm, "ibp")
        assert (lo < exact_lo - 1e-3).all() and (hi > exact_hi + 1e-3).all()  # sound but loose


def test_relu_with_known_signs_is_exact():
    """All ReLUs active: the network is affine and CROWN is exact; all inactive: the
    output is the last bias, exactly, for every method."""
    torch.manual_seed(4)
    l1, l2 = nn.Linear(6, 8), nn.Linear(8, 3)
    x = torch.rand(2, 1, 2, 3)
    eps = 0.05
    with torch.no_grad():
        l1.weight.mul_(0.1)
        l1.bias.fill_(5.0)  # pre-activations in [5 - 0.1*6*1.05, ...] > 0
    model = nn.Sequential(nn.Flatten(), l1, nn.ReLU(), l2).eval()
    W = (l2.weight @ l1.weight).detach()
    c = (l2.weight @ l1.bias + l2.bias).detach()
    lo_box, hi_box = input_box(x, eps, "linf")
    mid, rad = ((lo_box + hi_box) / 2).flatten(1), ((hi_box - lo_box) / 2).flatten(1)
    exact_lo, exact_hi = mid @ W.t() + c - rad @ W.abs().t(), mid @ W.t() + c + rad @ W.abs().t()
    for method in ("crown", "crown-ibp"):
        lo, hi = bounds(model, x, eps, "linf", method)
        torch.testing.assert_close(lo, exact_lo, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(hi, exact_hi, rtol=1e-5, atol=1e-5)
    lo_ibp, hi_ibp = bounds(model, x, eps, "linf", "ibp")
    assert (lo_ibp <= exact_lo + 1e-5).all() and (hi_ibp >= exact_hi - 1e-5).all()
    with torch.no_grad():
        l1.bias.fill_(-5.0)
    for method in METHODS:
        lo, hi = bounds(model, x, eps, "linf", method)
        expect = l2.bias.detach().expand(2, 3)
        torch.testing.assert_close(lo, expect)
        torch.testing.assert_close(hi, expect)


def test_unstable_relu_matches_the_hand_computed_crown_bound():
    """One unstable neuron z in [-1, 3] (from x in [0, 1], z = 4x - 1), output relu(z):
    CROWN's upper line through (-1, 0) and (3, 3) gives 3 at x = 1; the lower line has
    slope 1 (u > -l), so the lower bound is min z = -1; IBP gives [0, 3]. And -relu(z):
    bounds [-3, 0] for IBP, [-3, 1] for CROWN's lower-slope-1 relaxation."""
    l1, l2 = nn.Linear(1, 1), nn.Linear(1, 2)
    with torch.no_grad():
        l1.weight.fill_(4.0), l1.bias.fill_(-1.0)
        l2.weight.copy_(torch.tensor([[1.0], [-1.0]])), l2.bias.zero_()
    model = nn.Sequential(nn.Flatten(), l1, nn.ReLU(), l2).eval()
    x = torch.full((1, 1, 1, 1), 0.5)
    lo, hi = bounds(model, x, 0.5, "linf", "ibp")
    torch.testing.assert_close(lo, torch.tensor([[0.0, -3.0]]))
    torch.testing.assert_close(hi, torch.tensor([[3.0, 0.0]]))
    lo, hi = spec_bounds(to_ops(model, (1, 1, 1)), x, torch.eye(2).unsqueeze(0), 0.5, "linf", "crown")
    torch.testing.assert_close(lo, torch.tensor([[-1.0, -3.0]]))
    torch.testing.assert_close(hi, torch.tensor([[3.0, 1.0]]))
    # the public bounds keep the tighter of CROWN's and IBP's here: IBP's
    lo, hi = bounds(model, x, 0.5, "linf", "crown")
    torch.testing.assert_close(lo, torch.tensor([[0.0, -3.0]]))
    torch.testing.assert_close(hi, torch.tensor([[3.0, 0.0]]))


def test_maxpool_relaxation_is_exact_when_one_input_dominates():
    """Window of two inputs a = x + 2, b = x (x in [0, 1]): a always wins, max = a."""
    lin = nn.Linear(1, 2)
    with torch.no_grad():
        lin.weight.fill_(1.0), lin.bias.copy_(torch.tensor([2.0, 0.0]))

    model = nn.Sequential(nn.Flatten(), lin, nn.Unflatten(1, (1, 1, 2)), nn.MaxPool2d((1, 2)), nn.Flatten())
    ops = None
    with pytest.raises(VerificationError, match="Unflatten"):
        ops = to_ops(model, (1, 1, 1))
    assert ops is None
    # the same with a conv producing the two inputs
    conv = nn.Conv2d(1, 1, (1, 1))
    with torch.no_grad():
        conv.weight.fill_(1.0), conv.bias.fill_(0.0)
    x = torch.tensor([[[[0.5, 0.0]]]])  # a 1x1x2 image: left pixel = x, right pixel fixed near 0
    model = nn.Sequential(conv, nn.MaxPool2d((1, 2)), nn.Flatten()).eval()
    lo, hi = bounds(model, x, 0.2, "linf", "crown")
    # left in [0.3, 0.7], right in [0, 0.2]: left dominates, so max = left exactly
    torch.testing.assert_close(lo, torch.tensor([[0.3]]))
    torch.testing.assert_close(hi, torch.tensor([[0.7]]))


def test_lenet_and_madry_cnn_work_and_are_sound():
    torch.manual_seed(5)
    # full CROWN on a random 28x28 LeNet takes seconds (every neuron is unstable), so it
    # runs on a 16x16 LeNet; the 28x28 one (the Fashion-MNIST shape) runs IBP and CROWN-IBP
    cases = (("lenet", (1, 28, 28), ("ibp", "crown-ibp")), ("lenet", (1, 16, 16), METHODS),
             ("madry_cnn", (1, 12, 12), METHODS))
    for arch, shape, methods in cases:
        model = get_model(arch, 10, shape, (0.3,), (0.35,)).eval()
        x = torch.rand(2, *shape)
        pts = _ball_samples(x, 0.002, "linf", 16, torch.Generator().manual_seed(0))
        with torch.no_grad():
            z = model(pts).view(2, 16, -1)
        for method in methods:
            lo, hi = bounds(model, x, 0.002, "linf", method)
            assert (z >= lo.unsqueeze(1) - TOL).all() and (z <= hi.unsqueeze(1) + TOL).all(), (arch, method)


def test_noise_injection_batchnorm_training_and_other_layers_are_refused_by_name():
    noisy = get_model("lenet", 10, (1, 28, 28), noise_injection="pni-w").eval()
    x = torch.rand(1, 1, 28, 28)
    with pytest.raises(VerificationError, match="noise"):
        bounds(noisy, x, 0.1)
    set_noise_injection(noisy, False)  # the noise-free network can be bounded
    bounds(noisy, x, 0.01)
    with pytest.raises(VerificationError, match="Tanh"):
        bounds(nn.Sequential(nn.Flatten(), nn.Linear(784, 3), nn.Tanh()), x, 0.1)
    with pytest.raises(VerificationError, match="CifarResNet"):
        bounds(get_model("cifar_resnet20", 10, (3, 8, 8)).eval(), torch.rand(1, 3, 8, 8), 0.1)
    bn = nn.Sequential(nn.Flatten(), nn.Linear(784, 3), nn.BatchNorm1d(3))
    with pytest.raises(VerificationError, match="eval mode"):
        bounds(bn.train(), torch.rand(2, 1, 28, 28), 0.1)

    class Skip(nn.Sequential):  # a Sequential whose forward is not the chain
        def forward(self, x):
            return super().forward(x) + x.flatten(1)[:, :3]

    with pytest.raises(VerificationError, match="chain"):
        bounds(Skip(nn.Flatten(), nn.Linear(784, 3)), x, 0.1)


def test_bad_arguments_name_the_problem():
    model = small_models()["mlp"]
    x = _inputs("mlp")
    with pytest.raises(ContractError, match="method"):
        bounds(model, x, 0.1, method="deeppoly")
    with pytest.raises(ContractError, match="norm"):
        bounds(model, x, 0.1, norm="l1")
    with pytest.raises(ContractError, match="eps"):
        bounds(model, x, 8.0)
    with pytest.raises(ContractError, match="eps"):
        bounds(model, x, -0.1)
    with pytest.raises(ContractError):
        bounds(model, x * 255, 0.1)
    with pytest.raises(ContractError, match="labels"):
        verify(model, x, torch.tensor([0, 1, 9]), 0.1)


def test_chunked_crown_equals_unchunked_and_is_batch_independent():
    model = small_models()["conv"]
    x = _inputs("conv", n=3)
    lo, hi = bounds(model, x, 0.03, "linf", "crown")
    lo2, hi2 = bounds(model, x, 0.03, "linf", "crown", max_floats=1)  # one row at a time
    torch.testing.assert_close(lo, lo2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hi, hi2, rtol=1e-5, atol=1e-5)
    lo1, hi1 = bounds(model, x[1:2], 0.03, "linf", "crown")
    torch.testing.assert_close(lo[1:2], lo1, rtol=1e-5, atol=1e-5)


def _window_models() -> dict[str, tuple[nn.Module, tuple[int, int, int]]]:
    """Convolutional chains for the windowed CROWN rows: stride, padding, dilation, groups,
    batch norm, a max pool right after a convolution (the windows reach the pool before
    any per-image slope), disjoint pools after a ReLU (relaxed together), overlapping and
    padded pools, average pooling, a first layer with one input channel."""
    torch.manual_seed(3)
    gen = torch.Generator().manual_seed(4)
    a = nn.Sequential(
        Normalize([0.4, 0.5], [0.3, 0.2]),
        nn.Conv2d(2, 6, 3, stride=2, padding=1), nn.ReLU(),                        # 6x6x6
        nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=2), nn.BatchNorm2d(6), nn.ReLU(),
        nn.MaxPool2d(2),                                                          # disjoint after ReLU: 6x3x3
        nn.Conv2d(6, 4, 2, padding=1), nn.MaxPool2d(2, stride=1),                 # conv -> pool: 4x3x3
        nn.Flatten(), nn.Linear(36, 8), nn.ReLU(), nn.Linear(8, 3))
    b = nn.Sequential(
        nn.Conv2d(1, 5, 3), nn.ReLU(),                                            # 5x11x11
        nn.MaxPool2d(3, stride=2, padding=1),                                     # overlapping, padded: 5x6x6
        nn.AvgPool2d(2), nn.Conv2d(5, 3, 2), nn.ReLU(),                           # 3x2x2
        nn.Flatten(), nn.Linear(12, 4))
    return {"a": (_randomize_bn(a, gen), (2, 12, 12)), "b": (b.eval(), (1, 13, 13))}


@pytest.mark.parametrize("name", ["a", "b"])
@pytest.mark.parametrize("norm,eps", [("linf", 0.04), ("l2", 0.4)])
def test_windowed_crown_equals_a_dense_matrix_reference(name, norm, eps, monkeypatch):
    """CROWN through convolutions with rows stored as windows (verification.patches) and
    the fused ReLU + max-pool relaxation give the bounds of the plain computation: dense
    rows, every convolution as its explicit matrix, every relaxation on its own."""
    import importlib

    impl = importlib.import_module("smoothguard.verification.bounds")
    from smoothguard.verification.layers import Conv

    model, shape = _window_models()[name]
    x = torch.rand(3, *shape, generator=torch.Generator().manual_seed(5))
    x[0].clamp_(max=0.05)
    ops = to_ops(model, shape)
    C = torch.eye(model(x).shape[1]).expand(3, -1, -1)
    calls = {"windows": 0, "fused": 0}
    windowed, fused = impl._backward_lower_patches, impl._fused

    def count_windows(*a):
        calls["windows"] += 1
        return windowed(*a)

    def count_fused(ops_, i):
        calls["fused"] += fused(ops_, i)
        return fused(ops_, i)

    monkeypatch.setattr(impl, "_backward_lower_patches", count_windows)
    monkeypatch.setattr(impl, "_fused", count_fused)
    with torch.inference_mode():
        lo, hi = spec_bounds(ops, x, C, eps, norm, "crown")
    assert calls["windows"] > 0  # the windowed rows were used (not only the dense ones)
    assert calls["fused"] > 0 or name == "b"  # model b's pools overlap: never fused

    def matrix_back(self, A):
        n_in = 1
        for d in self.in_shape:
            n_in *= d
        basis = torch.eye(n_in, dtype=A.dtype).view(n_in, *self.in_shape)
        M = F.conv2d(basis, self.weight, None, self.stride, self.padding, self.dilation, self.groups)
        return A.flatten(2).matmul(M.flatten(1).t()).view(*A.shape[:2], *self.in_shape)

    monkeypatch.setattr(Conv, "back", matrix_back)
    monkeypatch.setattr(impl, "_fused", lambda ops_, i: False)
    with torch.inference_mode():
        lo_ref, hi_ref = spec_bounds(ops, x, C, eps, norm, "crown", patches=False)
    lo_ibp, _ = spec_bounds(ops, x, C, eps, norm, "ibp")
    assert (lo_ref - lo_ibp).abs().max() > 1e-2  # unstable neurons: the relaxations and refinements matter
    torch.testing.assert_close(lo, lo_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hi, hi_ref, rtol=1e-5, atol=1e-5)


def test_float64_models_are_bounded_in_float64():
    model = small_models()["conv"]
    x = _inputs("conv")
    lo, hi = bounds(model, x, 0.03, "linf", "crown")
    lo64, hi64 = bounds(model.double(), x.double(), 0.03, "linf", "crown")
    assert lo64.dtype == torch.float64
    torch.testing.assert_close(lo64.float(), lo, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(hi64.float(), hi, rtol=1e-4, atol=1e-4)


def test_spec_bounds_are_differentiable_for_training():
    model = get_model("lenet", 10, (1, 16, 16)).train()
    x, y = torch.rand(3, 1, 16, 16), torch.tensor([0, 1, 2])
    ops = to_ops(model, (1, 16, 16))
    for method in ("ibp", "crown-ibp"):  # the training methods
        lo, _ = spec_bounds(ops, x, margin_spec(y, 10), 0.05, "linf", method, upper=False)
        model.zero_grad()
        lo.sum().backward()
        assert model[1].fc1.weight.grad is not None and model[1].fc1.weight.grad.abs().sum() > 0


def _train_tiny_ibp_model():
    """A small conv net trained with the ibp objective on two separable image classes."""
    from smoothguard.training import get_objective
    from smoothguard.training.objectives import StepContext

    g = torch.Generator().manual_seed(0)
    n = 256
    y = torch.randint(0, 3, (n,), generator=g)
    x = (torch.rand(n, 1, 8, 8, generator=g) * 0.3 + 0.2)
    x[y == 1, :, :4] += 0.45  # class 1: bright top half; class 2: bright bottom half
    x[y == 2, :, 4:] += 0.45
    torch.manual_seed(0)
    model = nn.Sequential(Normalize([0.5], [0.3]), nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    obj = get_objective("ibp", eps=0.08, warmup=0.1, ramp=0.5)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    steps = 120
    for s in range(steps):
        idx = torch.randint(0, n, (64,), generator=g)
        out = obj(model, x[idx], y[idx], StepContext(0, 1, s, steps, g))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    return model.eval(), x[:64], y[:64]


def test_verified_images_are_never_broken_by_the_strongest_attack():
    from smoothguard.attacks import APGD, PGD

    model, x, y = _train_tiny_ibp_model()
    eps = 0.05
    res = verify(model, x, y, eps, "linf", "crown")
    assert res.verified.float().mean() > 0.5  # the training worked: most images are proven
    assert (res.clean_pred[res.verified] == y[res.verified]).all()
    # APGD with the DLR loss (Croce & Hein 2020) and PGD on the C&W margin: the project's
    # strongest white-box attacks on a deterministic model
    for atk in (APGD(model, norm="linf", eps=eps, steps=40, restarts=1, loss="dlr", seed=0),
                PGD(model, norm="linf", eps=eps, steps=40, restarts=1, loss="cw", seed=0)):
        adv = atk.run(x, y)
        assert not (adv.success & res.verified).any()
    # IBP verifies a subset of what CROWN verifies on this model
    res_ibp = verify(model, x, y, eps, "linf", "ibp")
    assert not (res_ibp.verified & ~res.verified).any()
    # at a huge radius nothing is verified (the bound is not vacuous in the other direction)
    assert not verify(model, x, y, 0.9, "linf", "crown").verified.any()
