"""InputGradConv2d (models/rewrite.py) and for_gradients' frozen weights (runtime.py): the
convolution's values bit for bit, its input gradient up to float rounding (against the
plain convolution, the standard formula), the plain convolution wherever the fast path
would not be exact or is not asked for, and no rewrite where it would not be safe."""

import itertools

import pytest
import torch
from torch import nn

from smoothguard import runtime
from smoothguard.contract import ContractError
from smoothguard.models import get_model
from smoothguard.models import rewrite
from smoothguard.models.rewrite import InputGradConv2d, input_grad_convs

REL = 1e-5  # the input gradient is summed in another order: float rounding only


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _grads(module, x, g):
    xg = x.detach().clone().requires_grad_(True)
    out = module(xg)
    (gx,) = torch.autograd.grad(out, xg, g)
    return out.detach(), gx


CASES = list(itertools.product((1, 2, 3), (1, 5), (1, 3, 4), (1, 2, 3), (0, 1, (2, 0))))


@pytest.mark.parametrize("cin,cout,k,stride,padding", CASES)
def test_values_equal_and_input_gradient_agrees_with_the_plain_convolution(cin, cout, k, stride, padding):
    torch.manual_seed(cin * 100 + cout * 10 + k)
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding).requires_grad_(False)
    fast = InputGradConv2d(conv)
    for n, layout in ((1, "contiguous"), (4, "channels_last"), (7, "strided")):
        x = torch.randn(n, cin, 13, 11)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        elif layout == "strided":  # a non-contiguous view: every other column of a wider image
            x = torch.randn(n, cin, 13, 22)[..., ::2]
        out_ref = conv(x)
        g = torch.randn_like(out_ref)
        o_ref, gx_ref = _grads(conv, x, g)
        o, gx = _grads(fast, x, g)
        assert torch.equal(o, o_ref), layout
        assert gx.shape == x.shape and _rel(gx, gx_ref) <= REL, (layout, _rel(gx, gx_ref))
        # the fast path ran (not the convolution's own backward)
        assert type(fast(x.clone().requires_grad_(True)).grad_fn).__name__ == "_ConvInputGradBackward"


def test_many_chunks_with_a_partial_last_one_and_float64(monkeypatch):
    torch.manual_seed(1)
    monkeypatch.setattr(rewrite, "_COLUMN_CHUNK", 25 * 24 * 24 * 3)  # 3 images a chunk
    conv = nn.Conv2d(1, 6, 5).double().requires_grad_(False)
    x = torch.rand(11, 1, 28, 28, dtype=torch.float64)
    g = torch.randn(11, 6, 24, 24, dtype=torch.float64)
    (o_ref, gx_ref), (o, gx) = _grads(conv, x, g), _grads(InputGradConv2d(conv), x, g)
    assert torch.equal(o, o_ref) and _rel(gx, gx_ref) <= 1e-12


def test_plain_convolution_where_a_weight_gradient_or_no_gradient_is_wanted():
    torch.manual_seed(2)
    conv = nn.Conv2d(3, 4, 3)
    fast = InputGradConv2d(conv)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    # trainable weight: the convolution itself, so training through the wrapper still works
    out = fast(x)
    assert type(out.grad_fn).__name__ == "ConvolutionBackward0"
    out.sum().backward()
    assert conv.weight.grad is not None and conv.bias.grad is not None
    conv.weight.requires_grad_(False)  # a trainable bias alone also keeps the plain convolution
    assert type(fast(x).grad_fn).__name__ == "ConvolutionBackward0"
    conv.requires_grad_(False)
    assert type(fast(x).grad_fn).__name__ == "_ConvInputGradBackward"
    assert fast(x.detach()).grad_fn is None  # no gradient asked for
    with torch.no_grad():
        assert torch.equal(fast(x), conv(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast: the convolution as autocast runs it
        assert type(fast(x).grad_fn).__name__ != "_ConvInputGradBackward"


def test_second_order_gradients_take_the_standard_formula():
    torch.manual_seed(3)
    conv = nn.Conv2d(1, 3, 3, padding=1).requires_grad_(False)
    x = torch.randn(2, 1, 6, 6)

    def gradient_penalty(m):
        xg = x.clone().requires_grad_(True)
        (gx,) = torch.autograd.grad(torch.tanh(m(xg)).pow(2).sum(), xg, create_graph=True)
        (h,) = torch.autograd.grad(gx.pow(2).sum(), xg)
        return gx.detach(), h

    (gx_ref, h_ref), (gx, h) = gradient_penalty(conv), gradient_penalty(InputGradConv2d(conv))
    assert _rel(gx, gx_ref) <= REL and _rel(h, h_ref) <= REL


def test_in_place_relu_after_the_wrapped_convolution():
    torch.manual_seed(4)
    plain = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(4 * 36, 3))
    plain.requires_grad_(False)
    fast, k = input_grad_convs(plain)
    assert k == 1 and isinstance(fast[0], InputGradConv2d) and fast[0].conv is plain[0]
    x = torch.randn(5, 1, 8, 8)
    g = torch.randn(5, 3)
    (o_ref, gx_ref), (o, gx) = _grads(plain, x, g), _grads(fast, x, g)
    assert torch.equal(o, o_ref) and _rel(gx, gx_ref) <= REL


def test_no_rewrite_where_it_would_not_be_safe():
    hooked = nn.Conv2d(1, 2, 3)
    hooked.register_forward_hook(lambda *a: None)

    class MyConv(nn.Conv2d):
        pass

    unsafe = [nn.Conv2d(4, 2, 3), nn.Conv2d(2, 2, 3, groups=2), nn.Conv2d(1, 2, 3, dilation=2),
              nn.Conv2d(1, 2, 3, padding="same"), nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"),
              MyConv(1, 2, 3), hooked, nn.Conv1d(1, 2, 3)]
    for conv in unsafe:
        seq = nn.Sequential(conv, nn.ReLU())
        fast, k = input_grad_convs(seq)
        assert k == 0 and fast is seq, conv
        if isinstance(conv, nn.Conv2d):
            with pytest.raises(ValueError, match="InputGradConv2d takes an unhooked nn.Conv2d"):
                InputGradConv2d(conv)
    parent = nn.Sequential(nn.Conv2d(1, 2, 3))
    parent.register_forward_pre_hook(lambda *a: None)  # a hooked parent keeps the children its hooks expect
    assert input_grad_convs(parent) == (parent, 0)
    valid = nn.Conv2d(1, 2, 3, padding="valid")
    fast, k = input_grad_convs(nn.Sequential(valid))
    assert k == 1 and fast[0].conv is valid
    # a deeper network: only the first layer (<= 3 input channels) is wrapped
    lenet = get_model("lenet", 10, (1, 28, 28), (0.5,), (0.25,))
    fast, k = input_grad_convs(lenet)
    assert k == 1 and sum(isinstance(m, InputGradConv2d) for m in fast.modules()) == 1


@pytest.mark.parametrize("arch", ["lenet", "madry_cnn"])
def test_for_gradients_freezes_the_weights_and_conv_grad_is_the_cpu_default(arch):
    torch.manual_seed(5)
    model = get_model(arch, 10, (1, 28, 28), (0.3,), (0.35,)).eval()
    module, config = runtime.for_gradients(model, conv_grad=False)
    assert not any(p.requires_grad for p in model.parameters())  # frozen in place (shared)
    assert not config.conv_grad and not any(isinstance(m, InputGradConv2d) for m in module.modules())
    fast, fconfig = runtime.for_gradients(model)  # the rule: on for a model on the CPU
    assert fconfig.conv_grad and fconfig.settings()["conv_grad"] is True
    assert sum(isinstance(m, InputGradConv2d) for m in fast.modules()) == 1  # the 1-channel first conv only
    assert runtime.for_gradients(model, conv_grad=True)[1] == fconfig
    x = torch.rand(9, 1, 28, 28)
    g = torch.randn(9, 10)
    (o_ref, gx_ref), (o, gx) = _grads(module, x, g), _grads(fast, x, g)
    assert torch.equal(o, o_ref) and _rel(gx, gx_ref) <= REL
    xg = x.clone().requires_grad_(True)  # even .backward() leaves no weight gradient anywhere
    fast(xg).sum().backward()
    assert xg.grad is not None and all(p.grad is None for p in model.parameters())
    with pytest.raises(ContractError, match="conv_grad must be True, False or None"):
        runtime.for_gradients(model, conv_grad="yes")
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))  # nothing to wrap: recorded as not applied
    assert not runtime.for_gradients(mlp)[1].conv_grad
    assert not runtime.for_gradients(mlp, conv_grad=True)[1].conv_grad


def test_for_gradients_conv_grad_rule_is_off_off_the_cpu():
    """The GEMM path is written for the CPU (InputGradConv2d runs it there only): a model on
    another device (here torch's shape-only 'meta' device) is not wrapped by the rule, and
    the config says so; asking explicitly still wraps (the wrapper falls back to the
    convolution off the CPU)."""
    model = get_model("lenet", 10, (1, 28, 28), (0.3,), (0.35,)).to("meta")
    module, config = runtime.for_gradients(model)
    assert not config.conv_grad and not any(isinstance(m, InputGradConv2d) for m in module.modules())
    assert runtime.for_gradients(model, conv_grad=True)[1].conv_grad
