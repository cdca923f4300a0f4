"""The input contract's refusals, each with its whole message (issue 24).

contract.py promises that every refusal names the argument, the problem and what is
allowed. These tests pin each message from its first to its last character (an anchored
match), the exact boundaries of every range (0 and 1 for fractions, the 0..255 hint,
integer bounds), which parameters are accepted as numbers, and the safe-write rules
(temporary beside the target, removed on failure, parents created, collisions retried).
"""

import math
import os
import re
import socket
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from smoothguard import contract
from smoothguard.contract import (
    ContractError,
    OutputError,
    as_number,
    atomic_output,
    check_alpha,
    check_choice,
    check_eps,
    check_fraction,
    check_images,
    check_int,
    check_labels,
    check_logits,
    check_model_data,
    check_model_finite,
    check_noisy_images,
    check_nonnegative,
    check_norm,
    check_output_path,
    check_positive,
    check_sigma,
    forward_errors,
    model_in_shape,
    write_bytes_atomic,
    write_text_atomic,
)


def refused(fn, message, exc=ContractError):
    """``fn()`` raises ``exc`` whose message is exactly ``message``."""
    with pytest.raises(exc) as info:
        fn()
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)  # every contract error is a ValueError too


# ---------------------------------------------------------------------------------------
# numbers


def test_numbers_are_python_numpy_and_one_element_tensors_only():
    assert as_number("a", 3) == 3.0 and type(as_number("a", 3)) is float
    assert as_number("a", np.float32(0.5)) == 0.5 and as_number("a", np.int64(2)) == 2.0
    assert as_number("a", torch.tensor(0.25)) == 0.25 and as_number("a", torch.tensor([7])) == 7.0
    refused(lambda: as_number("sigma", True), "sigma must be a number; got the boolean True")
    refused(lambda: as_number("sigma", np.bool_(False)), f"sigma must be a number; got the boolean {np.bool_(False)!r}")
    refused(lambda: as_number("sigma", torch.tensor(True)), "sigma must be a number; got the boolean tensor(True)")
    refused(lambda: as_number("eps", torch.tensor([1.0, 2.0])), "eps must be a real number; got a tensor of shape (2,)")
    refused(lambda: as_number("eps", torch.tensor(1 + 2j)), "eps must be a real number; got a tensor of shape ()")
    refused(lambda: as_number("eps", "0.25"), "eps must be a number; got str '0.25'")
    refused(lambda: as_number("eps", None), "eps must be a number; got NoneType None")


def test_choice_names_every_allowed_value():
    check_choice("loss", "ce", ("ce", "dlr"))
    refused(lambda: check_choice("loss", "mse", ("ce", "dlr")), "loss must be one of 'ce', 'dlr'; got 'mse'")
    # an unhashable value against a set is a refusal, not a TypeError
    refused(lambda: check_choice("loss", ["ce"], {"ce"}), "loss must be one of 'ce'; got ['ce']")


def test_positive_and_nonnegative_boundaries_and_infinity():
    assert check_positive("step_size", 1e-300) == 1e-300
    for bad in (0.0, -1.0, math.nan):
        refused(lambda: check_positive("step_size", bad), f"step_size must be a positive finite number; got {bad!r}")
    refused(lambda: check_positive("kappa", math.inf), "kappa must be a positive finite number; got inf")
    assert check_positive("kappa", math.inf, allow_inf=True) == math.inf
    refused(lambda: check_positive("kappa", -math.inf, allow_inf=True), "kappa must be a positive number; got -inf")
    assert check_nonnegative("beta", 0.0) == 0.0 and check_nonnegative("beta", 2) == 2.0
    for bad in (-1e-12, math.nan, math.inf):
        refused(lambda: check_nonnegative("beta", bad), f"beta must be a non-negative finite number; got {bad!r}")
    assert check_nonnegative("beta", math.inf, allow_inf=True) == math.inf
    refused(lambda: check_nonnegative("beta", -1, allow_inf=True), "beta must be a non-negative number; got -1")
    assert check_sigma(0.25) == 0.25
    refused(lambda: check_sigma(0), "sigma must be a positive finite number; got 0")
    refused(lambda: check_sigma(-1, "noise_sd"), "noise_sd must be a positive finite number; got -1")


def test_integers_and_their_bounds():
    assert check_int("n", 1) == 1 and check_int("n", 8.0) == 8 and type(check_int("n", 8.0)) is int
    assert check_int("n", np.int32(3)) == 3 and check_int("n", torch.tensor(4)) == 4
    assert check_int("k", 0, minimum=0) == 0
    assert check_int("k", 5, 0, 5) == 5 and check_int("k", 0, 0, 5) == 0
    refused(lambda: check_int("n", 0), "n must be an integer >= 1; got 0")
    refused(lambda: check_int("n", 2.5), "n must be an integer >= 1; got 2.5")
    refused(lambda: check_int("n", True), "n must be an integer >= 1; got True")
    refused(lambda: check_int("n", "3"), "n must be an integer >= 1; got '3'")
    refused(lambda: check_int("n", torch.tensor(2.0)), "n must be an integer >= 1; got tensor(2.)")
    refused(lambda: check_int("n", torch.tensor(True)), "n must be an integer >= 1; got tensor(True)")
    refused(lambda: check_int("n", torch.tensor([1, 2])), "n must be an integer >= 1; got tensor([1, 2])")
    refused(lambda: check_int("k", 6, 0, 5), "k must be an integer in [0, 5]; got 6")
    refused(lambda: check_int("k", -1, 0, 5), "k must be an integer in [0, 5]; got -1")
    refused(lambda: check_int("k", -1, minimum=0), "k must be an integer >= 0; got -1")


def test_fractions_open_and_closed_ends():
    assert check_fraction("rho", 1) == 1.0 and check_fraction("rho", 1e-12) == 1e-12
    refused(lambda: check_fraction("rho", 0), "rho must lie in (0, 1]; got 0")
    refused(lambda: check_fraction("rho", 1 + 1e-12), f"rho must lie in (0, 1]; got {1 + 1e-12!r}")
    assert check_fraction("p", 0, low_open=False) == 0.0
    refused(lambda: check_fraction("p", -0.5, low_open=False), "p must lie in [0, 1]; got -0.5")
    refused(lambda: check_fraction("p", 1, high_open=True), "p must lie in (0, 1); got 1")
    assert check_fraction("p", 0.999, high_open=True) == 0.999
    refused(lambda: check_fraction("p", 1.0, low_open=False, high_open=True), "p must lie in [0, 1); got 1.0")
    refused(lambda: check_fraction("p", math.nan), "p must lie in (0, 1]; got nan")
    assert check_alpha(0.5) == 0.5
    refused(lambda: check_alpha(0.0), "alpha must lie in (0, 1); got 0.0")
    refused(lambda: check_alpha(1.0, "futility_alpha"), "futility_alpha must lie in (0, 1); got 1.0")


def test_norms_and_eps_in_pixel_units():
    assert check_norm("l2") == "l2" and check_norm("l1", ("l1", "l2")) == "l1"
    refused(lambda: check_norm("l1"), "norm must be one of linf, l2; got 'l1'")
    refused(lambda: check_norm(None), "norm must be one of linf, l2; got None")
    refused(lambda: check_norm("linf", ("l1",), "noise"), "noise must be one of l1; got 'linf'")
    assert check_eps(1, "linf") == 1.0 and check_eps(4.5, "l2") == 4.5
    refused(lambda: check_eps(8, "linf"), "eps 8.0 > 1 covers the whole [0, 1] box for linf; eps is in [0, 1] pixel "
            "units (did you mean eps/255?); allowed: (0, 1]")
    refused(lambda: check_eps(1.5, "linf", "radius"), "radius 1.5 > 1 covers the whole [0, 1] box for linf; eps is "
            "in [0, 1] pixel units (did you mean eps/255?); allowed: (0, 1]")
    refused(lambda: check_eps(0, "l2"), "eps must be a positive finite number; got 0")
    refused(lambda: check_eps(0.1, "l0"), "norm must be one of linf, l2; got 'l0'")


# ---------------------------------------------------------------------------------------
# tensors

SHAPE = (1, 6, 6)


def test_image_refusals_say_what_to_do():
    refused(lambda: check_images([0.5]), "x must be a torch.Tensor of images in [0, 1]; got list")
    refused(lambda: check_images(np.zeros((1, 1, 6, 6)), "batch"), "batch must be a torch.Tensor of images in [0, 1]; "
            "got ndarray (convert with torch.as_tensor(x, dtype=torch.float32))")
    refused(lambda: check_images(torch.zeros(1, *SHAPE, dtype=torch.uint8)), "x has dtype torch.uint8; images must "
            "be float32 or float64 in [0, 1] (convert with x.float() / 255)")
    refused(lambda: check_images(torch.zeros(1, *SHAPE, dtype=torch.int32)), "x has dtype torch.int32; images must "
            "be float32 or float64 in [0, 1] (convert with x.float() (scaled to [0, 1]))")
    refused(lambda: check_images(torch.zeros(1, *SHAPE, dtype=torch.bfloat16)), "x has dtype torch.bfloat16; images "
            "must be float32 or float64 in [0, 1] (convert with x.float())")
    refused(lambda: check_images(torch.zeros(1, *SHAPE, dtype=torch.complex64)), "x has dtype torch.complex64; "
            "images must be float32 or float64 in [0, 1] (convert with x.float())")
    refused(lambda: check_images(torch.zeros(1, 1, 1, 6, 6)), "x must have shape (N, C, H, W) or one image "
            "(C, H, W); got shape (1, 1, 1, 6, 6)")
    refused(lambda: check_images(torch.zeros(*SHAPE), single=False), "x must have shape (N, C, H, W); got shape "
            "(1, 6, 6)")
    refused(lambda: check_images(torch.zeros(0, *SHAPE), allow_empty=False), "x holds no images (shape (0, 1, 6, 6))")
    refused(lambda: check_images(torch.zeros(2, 1, 7, 6), in_shape=[1, 6, 6]), "x has images of shape (1, 7, 6); "
            "the model expects (C, H, W) = (1, 6, 6)")
    bad = torch.zeros(2, *SHAPE)
    bad[0, 0, 0, :2] = torch.tensor([math.nan, math.inf])
    bad[1, 0, 5, 5] = -math.inf
    refused(lambda: check_images(bad), "x has 3 non-finite pixel value(s) (NaN or inf); images must be finite and "
            "in [0, 1]")


@pytest.mark.parametrize("lo,hi,hint", [
    (0.0, 255.0, " (it looks like 0..255 pixels: divide by 255)"),
    (0.0, 1.5, " (it looks like 0..255 pixels: divide by 255)"),
    (0.0, 256.0, " (normalization belongs inside the model: pass [0, 1] pixels)"),
    (-0.5, 0.5, " (normalization belongs inside the model: pass [0, 1] pixels)"),
    (-1.0, 200.0, " (normalization belongs inside the model: pass [0, 1] pixels)"),
])
def test_image_range_refusal_and_its_hint(lo, hi, hint):
    x = torch.full((1, *SHAPE), (lo + hi) / 2)
    x[0, 0, 0, 0], x[0, 0, 0, 1] = lo, hi
    refused(lambda: check_images(x), f"x has pixel values in [{lo:g}, {hi:g}]; images must lie in [0, 1]{hint}")


def test_valid_images_pass_unchanged_and_the_unit_box_is_closed():
    x = torch.rand(3, *SHAPE)
    x[0, 0, 0, 0], x[0, 0, 0, 1] = 0.0, 1.0
    assert check_images(x) is x
    one = check_images(x[0])
    assert one.shape == (1, *SHAPE) and one.data_ptr() == x.data_ptr()
    empty = torch.zeros(0, *SHAPE)
    assert check_images(empty) is empty
    assert check_images(x.double(), in_shape=(1, 6, 6)).dtype == torch.float64
    g = torch.rand(2, *SHAPE, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_images(g) is g
    # noisy images may leave [0, 1] but stay finite and 4-D
    noisy = torch.randn(2, *SHAPE) * 3
    assert check_noisy_images(noisy) is noisy
    refused(lambda: check_noisy_images(noisy[0]), "x must have shape (N, C, H, W); got shape (1, 6, 6)")
    refused(lambda: check_noisy_images(noisy, "batch", in_shape=(3, 6, 6)), "batch has images of shape (1, 6, 6); "
            "the model expects (C, H, W) = (3, 6, 6)")
    noisy[0, 0, 0, 0] = math.nan
    refused(lambda: check_noisy_images(noisy), "x has 1 non-finite pixel value(s) (NaN or inf); images must be "
            "finite and in [0, 1]")


def test_label_refusals():
    y = torch.tensor([0, 2])
    assert check_labels(y, 3) is y and check_labels(y, 3, count=2) is y
    assert check_labels(torch.tensor(2), 3).tolist() == [2]
    assert check_labels(torch.zeros(0, dtype=torch.int64), 3).shape == (0,)
    assert check_labels(torch.tensor([5, 9])).tolist() == [5, 9]  # no class count: no range check
    refused(lambda: check_labels([0, 1], 3), "y must be a torch.Tensor of integer class labels; got list")
    refused(lambda: check_labels(torch.tensor([0.0]), 3), "y has dtype torch.float32; labels must be an integer "
            "tensor (e.g. torch.int64)")
    refused(lambda: check_labels(torch.tensor([True]), 3, name="targets"), "targets has dtype torch.bool; labels "
            "must be an integer tensor (e.g. torch.int64)")
    refused(lambda: check_labels(torch.zeros(2, 1, dtype=torch.int64), 3), "y must be a 1-D tensor of labels (N,); "
            "got shape (2, 1)")
    refused(lambda: check_labels(y, 3, count=3), "y has 2 labels for 3 images; need one label per image")
    refused(lambda: check_labels(torch.tensor([0, 3]), 3), "y has labels in [0, 3]; labels must lie in [0, 3) for a "
            "3-class model")
    refused(lambda: check_labels(torch.tensor([-1, 0]), 3), "y has labels in [-1, 0]; labels must lie in [0, 3) for "
            "a 3-class model")


def test_logit_refusals():
    out = torch.zeros(4, 3)
    assert check_logits(out, num_classes=3, count=4) is out
    ints = torch.zeros(2, 3, dtype=torch.int64)
    assert check_logits(ints) is ints
    assert check_logits(torch.zeros(0, 3), num_classes=3, count=0).shape == (0, 3)
    refused(lambda: check_logits([1.0]), "the model must return a tensor of logits (N, K); got list")
    refused(lambda: check_logits(torch.zeros(4), name="f"), "f must return logits of shape (N, K); got shape (4,)")
    refused(lambda: check_logits(out, count=2), "the model returned 4 rows of logits for 2 inputs")
    refused(lambda: check_logits(out, num_classes=5), "the model returned 3 logits per input; expected num_classes=5")
    bad = out.clone()
    bad[3, 2] = -math.inf
    refused(lambda: check_logits(bad), "the model returned non-finite logits (NaN or inf); check its weights and "
            "inputs (a model with NaN weights cannot be certified or attacked)")


def test_model_shape_and_forward_errors():
    m = nn.Linear(36, 3)
    assert model_in_shape(m) is None
    m.in_shape = [1.0, 6.0, 6.0]
    assert model_in_shape(m) == (1, 6, 6) and all(type(v) is int for v in model_in_shape(m))
    with pytest.raises(ContractError) as info:
        with forward_errors((1, 7, 6)):
            m(torch.zeros(1, 42))
    first = str(info.value.__cause__).splitlines()[0]
    assert "shape" in first
    assert str(info.value) == f"the model cannot run on images of shape (1, 7, 6): {first} (pass images of the " \
                              "shape it was built for)"
    for word in ("size", "Expected", "channels"):
        with pytest.raises(ContractError, match=rf"^the base model cannot run on images of shape \(3,\): x{word}y"):
            with forward_errors([3], "the base model"):
                raise RuntimeError(f"x{word}y\nsecond line")
    with pytest.raises(RuntimeError, match="^out of memory$"):  # other runtime errors are not the input's fault
        with forward_errors((1, 6, 6)):
            raise RuntimeError("out of memory")


def test_model_and_data_agreement_messages():
    check_model_data(10, None, 10, (3, 32, 32))
    check_model_data(10, [1, 28, 28], 10, (1, 28, 28))
    refused(lambda: check_model_data(5, None, 10, (1, 28, 28)), "the model has 5 classes but the data has 10; use a "
            "model trained on this dataset")
    refused(lambda: check_model_data(10, (3, 32, 32), 10, (1, 28, 28), model="lenet.pt", data="fashion-mnist"),
            "lenet.pt expects images of shape (3, 32, 32) but fashion-mnist has (1, 28, 28)")


def test_model_finiteness_names_the_tensor():
    class Norm(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("std", torch.tensor([0.5, 0.25]))
            self.register_buffer("steps", torch.tensor([0, 1]))  # an integer buffer is not checked
            self.lin = nn.Linear(2, 2)

    m = Norm()
    check_model_finite(m)
    m.std[1] = 0.0
    refused(lambda: check_model_finite(m), "the model: the model.std has a zero entry (division by zero in "
            "normalization); std must be positive")
    wrapped = nn.Sequential(nn.Identity(), Norm())
    wrapped[1].std[0] = 0.0
    refused(lambda: check_model_finite(wrapped, "net.pt"), "net.pt: 1.std has a zero entry (division by zero in "
            "normalization); std must be positive")
    m = Norm()
    with torch.no_grad():
        m.lin.bias[1] = math.nan
    refused(lambda: check_model_finite(m), "the model has non-finite values in lin.bias; it cannot be evaluated")
    m = Norm()
    m.std[0] = math.inf
    refused(lambda: check_model_finite(m), "the model has non-finite values in std; it cannot be evaluated")


# ---------------------------------------------------------------------------------------
# outputs


def test_output_path_refusals_name_the_path_and_the_kind(tmp_path):
    assert check_output_path(tmp_path / "new" / "deeper" / "out.tsv") == tmp_path / "new" / "deeper" / "out.tsv"
    existing = tmp_path / "old.tsv"
    existing.write_text("x")
    assert check_output_path(str(existing)) == existing
    refused(lambda: check_output_path(""), "output path is empty; give a file name", OutputError)
    refused(lambda: check_output_path(None, "report"), "report path is empty; give a file name", OutputError)
    refused(lambda: check_output_path(tmp_path, "figure"), f"refusing to write figure {tmp_path}: it exists and is a "
            "folder; give the path of a regular file", OutputError)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    refused(lambda: check_output_path(fifo), f"refusing to write output {fifo}: it exists and is a FIFO; give the "
            "path of a regular file", OutputError)
    refused(lambda: check_output_path("/dev/null"), "refusing to write output /dev/null: it exists and is a device; "
            "give the path of a regular file", OutputError)
    sock_path = tmp_path / "s"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock_path))
        refused(lambda: check_output_path(sock_path), f"refusing to write output {sock_path}: it exists and is a "
                "socket; give the path of a regular file", OutputError)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    refused(lambda: check_output_path(blocker / "a" / "out.tsv", "result"), f"cannot write result "
            f"{blocker / 'a' / 'out.tsv'}: {blocker} is not a folder", OutputError)


def test_atomic_output_writes_beside_the_target_and_cleans_up(tmp_path, monkeypatch):
    target = tmp_path / "a" / "b" / "out.txt"
    assert write_text_atomic(target, "h\u00e9llo\n") == target  # parents created, UTF-8
    assert target.read_bytes() == "h\u00e9llo\n".encode("utf-8")
    assert write_bytes_atomic(str(target), b"\x00\x01") == target and target.read_bytes() == b"\x00\x01"
    seen = []
    with atomic_output(target) as tmp:
        seen.append(tmp)
        assert tmp.parent == target.parent and re.fullmatch(r"\.out\.txt\.[0-9a-f]{8}\.tmp", tmp.name)
        assert tmp.exists() and tmp.read_bytes() == b""
        tmp.write_text("new")
        assert target.read_bytes() == b"\x00\x01"  # not replaced before the block ends
    assert target.read_text() == "new" and not seen[0].exists()
    # a name that is taken is skipped, not overwritten
    names = iter(["dead", "beef"])
    monkeypatch.setattr(contract.secrets, "token_hex", lambda n: next(names))
    taken = target.parent / ".out.txt.dead.tmp"
    taken.write_text("someone else's")
    with atomic_output(target) as tmp:
        assert tmp.name == ".out.txt.beef.tmp" and taken.exists()
        tmp.write_text("third")
    assert target.read_text() == "third" and taken.read_text() == "someone else's"
    taken.unlink()
    monkeypatch.undo()
    # an OS failure inside the block is an OutputError naming the target; nothing is left
    with pytest.raises(OutputError) as info:
        with atomic_output(target, "table") as tmp:
            raise OSError(28, "No space left on device")
    assert str(info.value) == f"cannot write table {target}: No space left on device"
    assert target.read_text() == "third"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]
    # the target turned into a folder meanwhile: refused, the temporary removed
    other = tmp_path / "c" / "x.txt"
    with pytest.raises(OutputError, match=r"it exists and is a folder"):
        with atomic_output(other) as tmp:
            tmp.write_text("y")
            other.mkdir()
    assert sorted(p.name for p in other.parent.iterdir()) == ["x.txt"]


def test_checks_name_their_argument_when_the_value_is_not_a_number():
    refused(lambda: check_fraction("rho", "x"), "rho must be a number; got str 'x'")
    refused(lambda: check_positive("step_size", None), "step_size must be a number; got NoneType None")
    refused(lambda: check_nonnegative("beta", [1]), "beta must be a number; got list [1]")
    refused(lambda: check_alpha("0.1"), "alpha must be a number; got str '0.1'")


def test_a_single_color_image_gets_a_batch_axis_in_front():
    x = torch.rand(3, 6, 6)
    assert check_images(x).shape == (1, 3, 6, 6)
    refused(lambda: check_images(torch.rand(3, 6, 6), in_shape=(1, 6, 6)), "x has images of shape (3, 6, 6); the "
            "model expects (C, H, W) = (1, 6, 6)")


def test_safe_writes_name_what_they_write_and_odd_paths(tmp_path):
    refused(lambda: write_bytes_atomic(tmp_path, b"x", "figure"), f"refusing to write figure {tmp_path}: it exists "
            "and is a folder; give the path of a regular file", OutputError)
    refused(lambda: write_text_atomic(tmp_path, "x", "report"), f"refusing to write report {tmp_path}: it exists "
            "and is a folder; give the path of a regular file", OutputError)
    refused(lambda: write_bytes_atomic(tmp_path, b"x"), f"refusing to write output {tmp_path}: it exists and is a "
            "folder; give the path of a regular file", OutputError)
    long = tmp_path / ("x" * 300)  # an OS error other than "missing": named with the OS's words
    refused(lambda: check_output_path(long, "table"), f"cannot write table {long}: File name too long", OutputError)


def test_a_block_device_is_refused_as_a_device():
    import stat as st

    dev = next((p for p in sorted(os.listdir("/dev")) if st.S_ISBLK(os.stat(f"/dev/{p}").st_mode)), None)
    if dev is None:
        pytest.skip("no block device under /dev on this machine")
    refused(lambda: check_output_path(f"/dev/{dev}"), f"refusing to write output /dev/{dev}: it exists and is a "
            "device; give the path of a regular file", OutputError)
