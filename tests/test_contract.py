"""The one input contract (smoothguard.contract): unit tests of each check, and fuzzing of
every library door (sampler, each attack, evaluate_robustness, the smoothed model) with
hypothesis: for any input the answer is a ContractError or a valid result, and a
non-finite or out-of-range input never gets a certificate."""

import math
import os
import stat

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from smoothguard import ABSTAIN
from smoothguard.contract import (
    ContractError,
    OutputError,
    atomic_output,
    check_alpha,
    check_eps,
    check_images,
    check_int,
    check_labels,
    check_logits,
    check_model_data,
    check_model_finite,
    check_output_path,
    check_positive,
    check_sigma,
    write_text_atomic,
)
from smoothguard.models import get_model
from smoothguard.models.layers import Normalize

IN_SHAPE, K = (1, 6, 6), 3


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, K)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def tiny_model():
    torch.manual_seed(0)
    m = nn.Sequential(Normalize((0.5,), (0.5,)), Tiny()).eval()
    m.in_shape = IN_SHAPE
    return m


# ---------------------------------------------------------------------------------------
# unit tests of the checks

def test_images_accept_float_in_the_unit_box_and_a_single_image():
    x = torch.rand(2, *IN_SHAPE)
    assert check_images(x) is x
    one = check_images(x[0])
    assert one.shape == (1, *IN_SHAPE)
    assert check_images(x.double(), in_shape=IN_SHAPE).dtype == torch.float64
    assert check_images(torch.zeros(0, *IN_SHAPE)).shape[0] == 0


@pytest.mark.parametrize("x,match", [
    (torch.randint(0, 256, (2, *IN_SHAPE), dtype=torch.uint8), r"uint8.*x.float\(\) / 255"),
    (torch.randint(0, 2, (2, *IN_SHAPE)), "int64.*float32 or float64"),
    (torch.zeros(2, *IN_SHAPE, dtype=torch.bool), "bool"),
    (torch.rand(2, *IN_SHAPE).half(), r"float16.*x.float\(\)"),
    (torch.rand(2, *IN_SHAPE) * 255, "0..255 pixels: divide by 255"),
    (torch.rand(2, *IN_SHAPE) - 0.5, "normalization belongs inside the model"),
    (torch.full((2, *IN_SHAPE), float("nan")), "non-finite"),
    (torch.tensor([[[[0.5, float("inf")]]]]), "non-finite"),
    (torch.rand(6, 6), r"shape \(N, C, H, W\)"),
    (torch.rand(1, 1, 1, 6, 6), r"shape \(N, C, H, W\)"),
    (np.zeros((1, 1, 6, 6), np.float32), r"torch.as_tensor"),
])
def test_images_refused_with_the_conversion_to_use(x, match):
    with pytest.raises(ContractError, match=match):
        check_images(x)


def test_images_against_the_model_shape():
    with pytest.raises(ContractError, match=r"the model expects \(C, H, W\) = \(1, 6, 6\)"):
        check_images(torch.rand(2, 1, 7, 6), in_shape=IN_SHAPE)
    with pytest.raises(ContractError, match=r"must have shape \(N, C, H, W\); got shape \(1, 6, 6\)"):
        check_images(torch.rand(1, 6, 6), single=False)


def test_labels_are_integers_in_range_one_per_image():
    assert check_labels(torch.tensor([0, 2]), K).tolist() == [0, 2]
    assert check_labels(torch.tensor(1), K).shape == (1,)
    # int8 -1 would equal ABSTAIN in a result row: refused
    with pytest.raises(ContractError, match=r"labels in \[-1, 1\]; labels must lie in \[0, 3\)"):
        check_labels(torch.tensor([-1, 1], dtype=torch.int8), K)
    with pytest.raises(ContractError, match=r"\[0, 3\)"):
        check_labels(torch.tensor([3]), K)
    with pytest.raises(ContractError, match="integer tensor"):
        check_labels(torch.tensor([0.0, 1.0]), K)
    with pytest.raises(ContractError, match="2 labels for 3 images"):
        check_labels(torch.tensor([0, 1]), K, count=3)


def test_logits_must_be_finite_and_sized():
    ok = torch.randn(4, K)
    assert check_logits(ok, num_classes=K, count=4) is ok
    with pytest.raises(ContractError, match="non-finite logits"):
        check_logits(torch.tensor([[float("nan"), 0.0, 0.0]]))
    with pytest.raises(ContractError, match="returned 3 logits per input; expected num_classes=5"):
        check_logits(ok, num_classes=5)
    with pytest.raises(ContractError, match="4 rows of logits for 2 inputs"):
        check_logits(ok, count=2)


def test_numbers_accept_numpy_scalars_and_refuse_bool_and_strings():
    assert check_sigma(np.float32(0.25)) == pytest.approx(0.25)
    assert check_sigma(torch.tensor(0.5)) == 0.5
    assert check_int("n", np.int64(7)) == 7
    assert check_int("n", 8.0) == 8
    assert check_alpha(np.float64(0.001)) == 0.001
    for bad in (True, "0.25", None, float("nan"), float("inf"), -1.0, 0.0):
        with pytest.raises(ContractError):
            check_sigma(bad)
    with pytest.raises(ContractError, match="integer >= 1"):
        check_int("n", 2.5)
    with pytest.raises(ContractError, match=r"\(0, 1\)"):
        check_alpha(1.0)
    assert check_positive("x", math.inf, allow_inf=True) == math.inf


def test_eps_in_pixel_units():
    assert check_eps(0.1, "linf") == 0.1
    assert check_eps(3.0, "l2") == 3.0  # an l_2 ball may be larger than 1
    with pytest.raises(ContractError, match="did you mean eps/255"):
        check_eps(8, "linf")
    with pytest.raises(ContractError, match="norm must be one of linf, l2"):
        check_eps(0.1, "l1")


def test_model_and_data_must_agree():
    check_model_data(10, (1, 28, 28), 10, (1, 28, 28))
    with pytest.raises(ContractError, match="5 classes but the data has 10"):
        check_model_data(5, (1, 28, 28), 10, (1, 28, 28))
    with pytest.raises(ContractError, match=r"expects images of shape \(3, 32, 32\)"):
        check_model_data(10, (3, 32, 32), 10, (1, 28, 28))


def test_model_with_nan_weights_or_zero_std_is_refused():
    m = tiny_model()
    check_model_finite(m)
    with torch.no_grad():
        m[1].fc.weight[0, 0] = float("nan")
    with pytest.raises(ContractError, match="non-finite values in 1.fc.weight"):
        check_model_finite(m)
    m = tiny_model()
    m[0].std.zero_()
    with pytest.raises(ContractError, match="std has a zero entry"):
        check_model_finite(m)


# ---------------------------------------------------------------------------------------
# safe writes

def test_atomic_write_replaces_a_file_and_keeps_the_old_one_on_failure(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    write_text_atomic(target, "first\n")
    assert target.read_text() == "first\n"
    mode = stat.S_IMODE(target.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # like open(): not mkstemp's 0600
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "first\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]  # no temporary left behind


def test_special_targets_are_refused_and_left_alone(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match="is a FIFO"):
        write_text_atomic(fifo, "x")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    with pytest.raises(OutputError, match="is a folder"):
        check_output_path(tmp_path)
    with pytest.raises(OutputError, match="is a device"):
        check_output_path("/dev/null")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="not a folder|Not a directory"):
        write_text_atomic(blocker / "out.txt", "x")
    with pytest.raises(OutputError, match="empty"):
        check_output_path("")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "pipe"]


# ---------------------------------------------------------------------------------------
# fuzzing the library doors

DTYPES = [torch.float32, torch.float64, torch.float16, torch.uint8, torch.int64, torch.bool]


@st.composite
def images(draw):
    """Images that are sometimes valid and often not: dtype, shape, range, NaN/inf."""
    dtype = draw(st.sampled_from(DTYPES))
    n = draw(st.integers(1, 3))
    shape = draw(st.sampled_from([(n, *IN_SHAPE), IN_SHAPE, (n, 1, 5, 6), (n, 2, 6, 6), (6, 6), (n, 1, 1, 6, 6)]))
    kind = draw(st.sampled_from(["unit", "unit", "255", "negative", "nan", "inf"]))
    x = torch.rand(shape, generator=torch.Generator().manual_seed(draw(st.integers(0, 2**16))), dtype=torch.float64)
    if kind == "255":
        x = x * 255
    elif kind == "negative":
        x = x - 0.6
    elif kind in ("nan", "inf") and x.numel():
        x.view(-1)[draw(st.integers(0, x.numel() - 1))] = float(kind)
    if dtype in (torch.uint8, torch.int64, torch.bool):
        x = x.nan_to_num(0.0, 0.0, 0.0).clamp(0, 255).round()
    return x.to(dtype)


def is_valid(x: torch.Tensor) -> bool:
    return (x.dtype in (torch.float32, torch.float64) and x.dim() in (3, 4) and tuple(x.shape[-3:]) == IN_SHAPE
            and bool(torch.isfinite(x).all()) and float(x.min()) >= 0 and float(x.max()) <= 1)


FUZZ = settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(x=images())
def test_sampler_certifies_only_valid_images(x):
    from smoothguard.smoothing import SmoothedClassifier

    g = SmoothedClassifier(tiny_model(), K, 0.25, rewrite=False, memory_format="contiguous")
    valid = is_valid(x)
    batch = x if x.dim() == 4 else x.unsqueeze(0) if x.dim() == 3 else x
    try:
        res = g.certify_batch(x, 10, 100, 0.01, seeds=list(range(batch.shape[0])) if batch.dim() == 4 else None)
    except ContractError:
        assert not valid
    else:
        assert valid, "a certificate was issued for an input that breaks the contract"
        assert res.prediction.shape == (batch.shape[0],)
        assert ((res.prediction == ABSTAIN) | ((res.prediction >= 0) & (res.prediction < K))).all()
        assert torch.isfinite(res.radius).all() and (res.radius >= 0).all()
    try:
        g.predict_batch(x, 20, 0.01)
    except ContractError:
        assert not valid
    else:
        assert valid
    if valid and batch.shape[0] > 1:  # one-image verbs refuse a batch instead of answering for image 0
        with pytest.raises(ContractError, match="certify_batch"):
            g.certify(batch, 10, 100, 0.01)
        with pytest.raises(ContractError, match="predict_batch"):
            g.predict(batch, 20, 0.01)


def _attacks(model):
    from smoothguard import attacks as A

    return [
        A.FGSM(model, eps=0.1, seed=0), A.FGM(model, eps=0.5, seed=0),
        A.PGD(model, norm="linf", eps=0.1, steps=3, seed=0), A.PGD(model, norm="l2", eps=0.5, steps=3, seed=0),
        A.APGD(model, norm="linf", eps=0.1, steps=3, seed=0), A.CW(model, steps=3, seed=0),
        A.DDN(model, steps=3, seed=0), A.Square(model, norm="linf", eps=0.1, max_queries=5, seed=0),
        A.NAttack(model, eps=0.1, max_queries=40, population=10, seed=0),
        A.EPGD(model, norm="l2", eps=0.5, sigma=0.1, num_noise=2, steps=2, seed=0),
    ]


@FUZZ
@given(x=images(), y_kind=st.sampled_from(["ok", "ok", "out_of_range", "float", "count"]))
def test_every_attack_answers_a_contract_error_or_a_valid_result(x, y_kind):
    model = tiny_model()
    n = x.shape[0] if x.dim() == 4 else 1
    y = {"ok": torch.arange(n) % K, "out_of_range": torch.full((n,), K), "float": torch.zeros(n),
         "count": torch.zeros(n + 1, dtype=torch.long)}[y_kind]
    valid = is_valid(x) and x.dim() == 4 and y_kind == "ok"
    for atk in _attacks(model):
        try:
            res = atk.run(x, y)
        except ContractError:
            assert not valid, f"{type(atk).__name__} refused a valid input"
        else:
            assert valid, f"{type(atk).__name__} accepted an input that breaks the contract"
            assert res.x_adv.shape == x.shape and torch.isfinite(res.x_adv).all()
            assert float(res.x_adv.min()) >= 0 and float(res.x_adv.max()) <= 1


@FUZZ
@given(x=images())
def test_evaluate_and_the_smoothed_model_check_their_inputs(x):
    from smoothguard.evaluation.robustness import build_cascade, evaluate_robustness
    from smoothguard.smoothing.inference import SmoothedModel

    model = tiny_model()
    valid = is_valid(x) and x.dim() == 4
    y = torch.zeros(x.shape[0] if x.dim() >= 1 else 1, dtype=torch.long)
    try:
        ev = evaluate_robustness(model, x, y, build_cascade(model, "linf", 0.1, attacks=["fgsm"]))
    except ContractError:
        assert not valid
    else:
        assert valid and ev.robust.shape == (x.shape[0],)
    sm = SmoothedModel(model, sigma=0.1, m=2, seed=0)
    try:
        out = sm(x)
    except ContractError:
        assert not valid
    else:
        assert valid and torch.isfinite(out).all() and out.shape == (x.shape[0], K)


def test_a_model_returning_nan_is_an_error_not_class_0():
    from smoothguard.attacks import PGD
    from smoothguard.smoothing import SmoothedClassifier

    class NaNModel(nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], K), float("nan"))

    x = torch.rand(2, *IN_SHAPE)
    g = SmoothedClassifier(NaNModel(), K, 0.25)
    with pytest.raises(ContractError, match="non-finite logits"):
        g.certify_batch(x, 10, 100, 0.01)
    with pytest.raises(ContractError, match="non-finite logits"):
        PGD(NaNModel(), eps=0.1, steps=2).run(x, torch.zeros(2, dtype=torch.long))
    # NaN pixels into PGD: a contract error naming the input, not an "internal error"
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ContractError, match="x has 1 non-finite pixel"):
        PGD(tiny_model(), eps=0.1, steps=2).run(bad, torch.zeros(2, dtype=torch.long))


def test_a_zero_std_normalization_is_refused_before_any_vote():
    from smoothguard.smoothing import SmoothedClassifier

    m = get_model("lenet", 10, (1, 28, 28), (0.5,), (1.0,))
    m[0].std.zero_()  # (x - mean) / 0 = inf logits
    g = SmoothedClassifier(m, 10, 0.25)
    with pytest.raises(ContractError, match="non-finite logits"):
        g.certify(torch.rand(1, 28, 28), 10, 100, 0.01)


def test_sampler_checks_shape_against_the_model_and_accepts_numpy_sigma():
    from smoothguard.smoothing import SmoothedClassifier

    g = SmoothedClassifier(get_model("lenet", 10, (1, 28, 28)), 10, np.float32(0.25))
    assert g.sigma == pytest.approx(0.25)
    with pytest.raises(ContractError, match=r"the model expects \(C, H, W\) = \(1, 28, 28\)"):
        g.certify(torch.rand(1, 32, 32), 10, 100, 0.01)
    # a module without in_shape: the torch shape error becomes a contract error naming the shape
    plain = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    with pytest.raises(ContractError, match=r"cannot run on images of shape \(1, 32, 32\)"):
        SmoothedClassifier(plain, 10, 0.25).certify(torch.rand(1, 32, 32), 10, 100, 0.01)


def test_a_full_disk_is_an_output_error_and_the_old_file_survives(tmp_path, monkeypatch):
    import errno

    target = tmp_path / "table.md"
    write_text_atomic(target, "complete table\n")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OutputError, match=r"cannot write output .*table.md: No space left on device"):
        write_text_atomic(target, "new table\n")
    monkeypatch.undo()
    assert target.read_text() == "complete table\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.md"]  # the temporary was removed


def test_certify_and_predict_take_exactly_one_image():
    """They used to compute every image of a batch and return image 0's answer."""
    from smoothguard.smoothing import SmoothedClassifier

    g = SmoothedClassifier(tiny_model(), K, 0.25)
    x = torch.rand(3, *IN_SHAPE)
    with pytest.raises(ContractError, match=r"certify\(\) takes one image.*got 3 images.*certify_batch\(\)"):
        g.certify(x, 10, 100, 0.01)
    with pytest.raises(ContractError, match=r"predict\(\) takes one image.*got 3 images.*predict_batch\(\)"):
        g.predict(x, 100, 0.01)
    one = g.certify(x[1], 10, 100, 0.01, seed=4)  # (C, H, W) and (1, C, H, W) are both one image
    assert one == g.certify(x[1:2], 10, 100, 0.01, seed=4)
    batch = g.certify_batch(x, 10, 100, 0.01, seeds=[0, 4, 5])
    assert (int(batch.prediction[1]), float(batch.radius[1])) == one
