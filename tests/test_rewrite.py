"""The exact ReLU -> MaxPool rewrite: same outputs and gradients bit for bit, shared
weights, the original untouched, and no rewrite where it would not be safe; and the
inference-only strided max pooling: the values of nn.MaxPool2d wherever it is used."""

import copy

import pytest
import torch
from torch import nn

from smoothguard.models import StridedMaxPool2d, get_model, pool_before_relu, strided_max_pools
from smoothguard.smoothing import SmoothedClassifier


def _assert_identical(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def _special_values(x: torch.Tensor) -> torch.Tensor:
    flat = x.view(-1)
    flat[::7] = float("nan")
    flat[3::11] = -float("inf")
    flat[5::13] = float("inf")
    flat[2::17] = 0.0
    flat[4::19] = -0.0
    return x


@pytest.mark.parametrize("arch,swaps", [("lenet", 2), ("madry_cnn", 2)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_rewritten_model_gives_identical_logits_and_input_gradients(arch, swaps, channels_last):
    torch.manual_seed(0)
    model = get_model(arch, 10, (1, 28, 28), (0.5,), (0.25,)).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    fast, k = pool_before_relu(model)
    assert k == swaps
    # pixels well outside [0, 1] too, so that many pooling windows hold only negative pre-activations
    x = (torch.randn(33, 1, 28, 28) * 3).requires_grad_(True)
    out_ref = model(x)
    g_ref, = torch.autograd.grad(out_ref.logsumexp(1).sum() + out_ref[:, 3].sum(), x)
    out = fast(x)
    g, = torch.autograd.grad(out.logsumexp(1).sum() + out[:, 3].sum(), x)
    _assert_identical(out, out_ref)
    _assert_identical(g, g_ref)
    with torch.inference_mode():
        _assert_identical(fast(x.detach()), model(x.detach()))


def test_rewrite_shares_weights_and_leaves_the_original_alone():
    model = get_model("lenet", 10, (1, 28, 28), (0.5,), (0.25,))
    before = [type(m) for m in model[1].features]
    fast, _ = pool_before_relu(model)
    assert [type(m) for m in model[1].features] == before == [nn.Conv2d, nn.ReLU, nn.MaxPool2d] * 2
    assert [type(m) for m in fast[1].features][:3] == [nn.Conv2d, nn.MaxPool2d, nn.ReLU]
    assert all(p is q for p, q in zip(model.parameters(), fast.parameters()))
    with torch.no_grad():
        model[1].fc2.bias += 1.0  # a change to the original is seen by the rewrite
    x = torch.rand(4, 1, 28, 28)
    _assert_identical(fast(x), model(x))


@pytest.mark.parametrize("pool", [
    nn.MaxPool2d(2), nn.MaxPool2d(3, stride=2, padding=1), nn.MaxPool2d(3, stride=2, ceil_mode=True),
    nn.MaxPool2d(2, dilation=2), nn.MaxPool1d(3, padding=1), nn.MaxPool3d(2),
])
def test_swap_is_exact_for_every_pooling_configuration(pool):
    torch.manual_seed(1)
    shape = {nn.MaxPool1d: (5, 3, 17), nn.MaxPool2d: (5, 3, 11, 13), nn.MaxPool3d: (5, 3, 6, 7, 8)}[type(pool)]
    x = _special_values(torch.randn(shape))
    seq = nn.Sequential(nn.ReLU(), pool)
    fast, k = pool_before_relu(seq)
    assert k == 1
    _assert_identical(fast(x.clone()), seq(x.clone()))


def test_no_rewrite_where_it_would_not_be_safe():
    hooked = nn.Sequential(nn.ReLU(), nn.MaxPool2d(2))
    hooked[0].register_forward_hook(lambda m, i, o: None)
    indices = nn.Sequential(nn.ReLU(), nn.MaxPool2d(2, return_indices=True))

    class MySequential(nn.Sequential):  # a subclass may have a forward of its own
        pass

    avg = nn.Sequential(nn.ReLU(), nn.AvgPool2d(2))  # average pooling does not commute with ReLU
    resnet = get_model("cifar_resnet20", 10, (3, 32, 32), (0.5,) * 3, (0.25,) * 3)
    for m in (hooked, indices, MySequential(nn.ReLU(), nn.MaxPool2d(2)), avg, resnet):
        fast, k = pool_before_relu(m)
        assert k == 0 and fast is m


def test_smoothed_classifier_counts_are_identical_with_and_without_the_rewrite():
    torch.manual_seed(0)
    model = get_model("lenet", 10, (1, 28, 28), (0.5,), (0.25,))
    x = torch.rand(3, 1, 28, 28)
    fast = SmoothedClassifier(copy.deepcopy(model), 10, 0.5)
    plain = SmoothedClassifier(copy.deepcopy(model), 10, 0.5, rewrite=False)
    assert fast.sampler.module is not fast.base_classifier and plain.sampler.module is plain.base_classifier
    assert [type(m) for m in fast.sampler.module[1].features][1:3] == [StridedMaxPool2d, nn.ReLU]
    a = fast.sample_counts(x, 700, 300, seeds=[1, 2, 3])
    b = plain.sample_counts(x, 700, 300, seeds=[1, 2, 3])
    assert torch.equal(a, b)


@pytest.mark.parametrize("kernel", [1, 2, 3, (2, 3), (3, 1)])
@pytest.mark.parametrize("shape", [(5, 3, 12, 12), (4, 6, 11, 13), (3, 7, 9)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_strided_max_pool_takes_the_values_of_max_pool2d(kernel, shape, channels_last):
    torch.manual_seed(2)
    x, special = torch.randn(shape), _special_values(torch.randn(shape))
    if channels_last and x.dim() == 4:
        x, special = (t.contiguous(memory_format=torch.channels_last) for t in (x, special))
    ref = nn.MaxPool2d(kernel)(x)
    out = StridedMaxPool2d(kernel)(x)
    _assert_identical(out, ref)  # floor mode on the odd sizes too
    _assert_identical(StridedMaxPool2d(kernel)(special), nn.MaxPool2d(kernel)(special))
    if channels_last and x.dim() == 4:
        assert out.is_contiguous(memory_format=torch.channels_last)  # the next conv gets the layout it wants
    assert out.data_ptr() != x.data_ptr()  # a new tensor, never a view the next in-place ReLU would write through


def test_strided_max_pool_rejects_bad_input():
    with pytest.raises(ValueError, match="kernel_size must be >= 1"):
        StridedMaxPool2d(0)
    with pytest.raises(ValueError, match=r"expects \(C, H, W\) or \(N, C, H, W\)"):
        StridedMaxPool2d(2)(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="smaller than the pooling window"):
        StridedMaxPool2d(3)(torch.zeros(1, 1, 2, 5))


@pytest.mark.parametrize("arch", ["lenet", "madry_cnn"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_both_rewrites_give_the_models_logits_under_inference_mode(arch, channels_last):
    torch.manual_seed(0)
    model = get_model(arch, 10, (1, 28, 28), (0.5,), (0.25,)).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    fast, k = strided_max_pools(pool_before_relu(model)[0])
    assert k == 2
    assert all(p is q for p, q in zip(model.parameters(), fast.parameters()))
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 2  # the original keeps its pools
    x = torch.randn(33, 1, 28, 28) * 3
    x[:3] = 0.0  # constant images: every pooling window is a tie
    with torch.inference_mode():
        _assert_identical(fast(x), model(x))


def test_strided_max_pools_replaces_only_non_overlapping_unhooked_pools():
    class Net(nn.Module):  # a pool held as an attribute of a module with its own forward
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.pool = nn.MaxPool2d(2, stride=2)

        def forward(self, x):
            return self.pool(self.conv(x))

    net = Net()
    fast, k = strided_max_pools(net)
    assert k == 1 and isinstance(fast.pool, StridedMaxPool2d) and type(net.pool) is nn.MaxPool2d
    assert fast.conv is net.conv
    x = torch.randn(2, 1, 15, 15)
    _assert_identical(fast(x), net(x))
    assert isinstance(strided_max_pools(nn.MaxPool2d(3, stride=3))[0], StridedMaxPool2d)

    hooked = nn.MaxPool2d(2)
    hooked.register_forward_hook(lambda m, i, o: None)
    unsafe = [nn.MaxPool2d(3, stride=2), nn.MaxPool2d(2, padding=1), nn.MaxPool2d(2, dilation=2),
              nn.MaxPool2d(2, ceil_mode=True), nn.MaxPool2d(2, return_indices=True), nn.MaxPool1d(2),
              nn.AvgPool2d(2), hooked]
    for pool in unsafe:
        seq = nn.Sequential(nn.Conv2d(1, 2, 3), pool)
        fast, k = strided_max_pools(seq)
        assert k == 0 and fast is seq


@pytest.mark.parametrize("arch", ["lenet", "madry_cnn"])
def test_grad_aware_pools_keep_values_and_gradients_and_take_the_fast_path_without_grad(arch):
    """for_gradients' model: MaxPool2d's logits and input gradients; the strided path runs
    exactly on the forward passes that take no gradient."""
    from smoothguard import runtime
    from smoothguard.models.rewrite import GradAwareMaxPool2d

    torch.manual_seed(0)
    model = get_model(arch, 10, (1, 28, 28), (0.3,), (0.35,)).eval()
    module, _ = runtime.for_gradients(model, conv_grad=False)  # oneDNN's backward: gradients bit for bit
    ref = model  # the original tree (laid out in place like the module): no rewrite
    pools = [m for m in module.modules() if isinstance(m, GradAwareMaxPool2d)]
    assert pools, "no pool was wrapped"
    calls = []
    for p in pools:
        p.fast.register_forward_hook(lambda *a: calls.append("fast"))
        p.pool.register_forward_hook(lambda *a: calls.append("pool"))
    x = torch.rand(6, 1, 28, 28)
    x[0, 0, :4, :4] = 0.5  # flat windows: ties, where the strided path's gradient would differ
    xg = x.clone().requires_grad_(True)
    out = module(xg)
    (g,) = torch.autograd.grad(out[:, 3].sum(), xg)
    assert set(calls) == {"pool"}
    xr = x.clone().requires_grad_(True)
    out_ref = ref(xr)
    (g_ref,) = torch.autograd.grad(out_ref[:, 3].sum(), xr)
    assert torch.equal(out, out_ref) and torch.equal(g, g_ref)
    calls.clear()
    with torch.no_grad():
        assert torch.equal(module(x), out_ref.detach())
    assert set(calls) == {"fast"}
