"""Robust and non-robust training sets (Ilyas et al. 2019): representation matching lowers
||g(x') - g(x)|| inside [0, 1]; the non-robust set stays within eps, is labelled (y + 1) mod K
and is classified as its target by the source model; bad input is refused."""

import pytest
import torch
from torch import nn

from smoothguard.contract import ContractError
from smoothguard.data import Dataset
from smoothguard.data.core import DatasetInfo
from smoothguard.models import get_model
from smoothguard.training.robust_features import (
    Representation,
    match_representation,
    next_class_targets,
    non_robust_dataset,
    non_robust_examples,
    robust_dataset,
)

SHAPE = (1, 4, 4)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread (two threads on a loaded 2-core machine made a
    4x4 forward/backward take ~40 ms of thread hand-off instead of ~1 ms); restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
INFO = DatasetInfo("tiny", 3, SHAPE, (0.0,), (1.0,), ("a", "b", "c"))


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 3))


def test_representation_is_the_input_of_the_last_linear_layer():
    torch.manual_seed(0)
    model = get_model("lenet", 10, (1, 28, 28), (0.3,), (0.35,))
    x = torch.rand(3, 1, 28, 28)
    norm, net = model[0], model[1]
    expected = torch.relu(net.fc1(net.features(norm(x)).flatten(1)))
    got = Representation(model)(x)
    assert got.shape == (3, 500)
    assert torch.allclose(got, expected, atol=1e-6)


def test_matching_lowers_the_distance_and_stays_in_the_box():
    model = _mlp()
    model.train()
    gen = torch.Generator().manual_seed(1)
    x, x0 = torch.rand(6, *SHAPE, generator=gen), torch.rand(6, *SHAPE, generator=gen)
    res = match_representation(model, x, x0, steps=300, step_size=0.05)
    g = lambda z: model[2](model[1](model[0](z)))  # the hidden tanh layer, computed by hand
    with torch.no_grad():
        start = (g(x0) - g(x)).norm(dim=1)
        final = (g(res.images) - g(x)).norm(dim=1)
    assert torch.allclose(res.start_distance, start, atol=1e-5)
    assert torch.allclose(res.distance, final, atol=1e-5)
    assert bool((start > 0.1).all())
    assert bool((final < 0.2 * start).all()), (start, final)
    assert float(res.images.min()) >= 0.0 and float(res.images.max()) <= 1.0
    assert model.training  # the module's mode is restored
    assert all(p.grad is None for p in model.parameters())  # only input gradients were taken


def test_robust_dataset_starts_each_image_from_another_image_and_keeps_labels():
    model = _mlp()
    gen = torch.Generator().manual_seed(2)
    images = torch.rand(7, *SHAPE, generator=gen)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    data = Dataset(images, labels, INFO)
    # one tiny step: each result is (within the step) the start, which must be another image
    out, res = robust_dataset(model, data, steps=1, step_size=1e-6, batch_size=3, seed=5)
    assert torch.equal(out.labels, labels)
    d = torch.cdist(out.images.flatten(1), images.flatten(1))  # (result i, image j)
    src = d.argmin(1)
    assert bool((d.min(1).values < 1e-5).all())
    assert bool((src != torch.arange(7)).all())
    assert sorted(src.tolist()) == list(range(7))  # a permutation: every image used once
    noise, _ = robust_dataset(model, data, steps=1, step_size=1e-6, start="noise", seed=5)
    assert float(torch.cdist(noise.images.flatten(1), images.flatten(1)).min()) > 0.1


class BlockModel(nn.Module):
    """Three classes on 4x4 images: the logit of class k is 10 x the sum of pixel row k."""

    in_shape, num_classes = SHAPE, 3

    def forward(self, x):
        return 10.0 * x[:, 0, :3, :].sum(dim=2)


def _block_data(n=30, seed=3):
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = 0.5 + 0.02 * torch.randn(n, *SHAPE, generator=gen)
    x[torch.arange(n), 0, y, :] += 0.1  # row y brighter: class y by a margin of about 0.4 / 10
    return x.clamp(0, 1), y


def test_non_robust_examples_are_within_eps_labelled_next_class_and_hit_the_target():
    model = BlockModel()
    x, y = _block_data()
    assert bool((model(x).argmax(1) == y).all())
    data = Dataset(x, y, INFO)
    out, stats = non_robust_dataset(model, data, eps=0.5, steps=20, batch_size=8)
    assert torch.equal(out.labels, (y + 1) % 3)
    norms = (out.images - x).flatten(1).norm(dim=1)
    assert bool((norms <= 0.5 * (1 + 1e-6)).all())
    assert torch.allclose(stats.norms, norms, atol=1e-6)
    assert float(out.images.min()) >= 0 and float(out.images.max()) <= 1
    hit = model(out.images).argmax(1) == out.labels
    assert float(hit.float().mean()) >= 0.9
    assert torch.equal(stats.target_hit, hit)
    # a far smaller budget cannot cross the margin: the target is (almost) never reached
    _, t, pred = non_robust_examples(model, x, y, eps=0.02, steps=20)
    assert float((pred == t).float().mean()) <= 0.1


def test_next_class_targets():
    assert next_class_targets(torch.tensor([0, 1, 9, 4]), 10).tolist() == [1, 2, 0, 5]


@pytest.mark.parametrize("kwargs, words", [
    ({"steps": 0}, "steps"),
    ({"step_size": 0.0}, "step_size"),
    ({"step_size": -0.1}, "step_size"),
])
def test_matching_refuses_bad_parameters(kwargs, words):
    x = torch.rand(2, *SHAPE)
    with pytest.raises(ContractError, match=words):
        match_representation(_mlp(), x, x.flip(0), **kwargs)


def test_matching_refuses_bad_images_and_models():
    x = torch.rand(2, *SHAPE)
    with pytest.raises(ContractError, match="x0"):
        match_representation(_mlp(), x, torch.rand(3, *SHAPE))
    with pytest.raises(ContractError, match="x"):
        match_representation(_mlp(), x * 3, x)
    with pytest.raises(ContractError, match="nn.Linear"):
        Representation(nn.Sequential(nn.Flatten()))
    with pytest.raises(ContractError, match="start"):
        robust_dataset(_mlp(), Dataset(x, torch.tensor([0, 1]), INFO), start="gaussian")
    with pytest.raises(ContractError, match="batch_size"):
        robust_dataset(_mlp(), Dataset(x, torch.tensor([0, 1]), INFO), batch_size=0)


@pytest.mark.parametrize("kwargs, words", [
    ({"eps": -0.5}, "eps"),
    ({"eps": 0.0}, "eps"),
    ({"eps": 0.5, "steps": 0}, "steps"),
    ({"eps": 0.5, "step_size": -1.0}, "step_size"),
])
def test_non_robust_refuses_bad_parameters(kwargs, words):
    x, y = _block_data(6)
    with pytest.raises(ContractError, match=words):
        non_robust_examples(BlockModel(), x, y, **kwargs)
