"""The one source of speed choices (smoothguard.runtime), the sampler's per-image time, and
rows written as images finish.

No wall-clock assertions: the time shares are checked with a counting clock (each reading
advances it by one second), so the expected values follow from the batching alone.
"""

import json

import numpy as np
import pytest
import torch
from torch import nn

from smoothguard import runtime
from smoothguard.cli import main
from smoothguard.models import load_default_model
from smoothguard.smoothing import SmoothedClassifier, sampler as sampler_module


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def counting_clock(monkeypatch):
    now = [0.0]

    def tick():
        now[0] += 1.0
        return now[0]

    monkeypatch.setattr(sampler_module, "clock", tick)
    return now


def test_the_rules_read_the_model_and_the_machine_not_a_timing(two_threads):
    lenet = load_default_model()[0]
    auto = runtime.fastest_exact(lenet)
    assert (auto.memory_format, auto.rewrite, auto.workers, auto.threads, auto.jit, auto.rule) == (
        "channels_last", True, 2, 1, False, "fastest-exact")
    assert runtime.fastest_exact(lenet) == auto  # the same answer every time
    one = runtime.fastest_exact(lenet, threads=1)
    assert (one.workers, one.threads) == (1, 1)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))  # no convolution: nothing to gain from channels_last
    assert runtime.fastest_exact(mlp).memory_format == "contiguous"
    api = runtime.fastest_exact(lambda b: torch.zeros(b.shape[0], dtype=torch.long))
    assert (api.rewrite, api.workers, api.memory_format) == (False, 1, "contiguous")
    assert runtime.resolve(lenet, "plain").rule == "plain"
    assert runtime.resolve(lenet, "auto", workers=1) == runtime.SpeedConfig(
        "channels_last", True, 1, 2, False, "given")  # one worker keeps all the threads
    with pytest.raises(ValueError, match="memory_format must be one of"):
        runtime.SpeedConfig(memory_format="nhwc")
    with pytest.raises(ValueError, match="speed must be 'auto', 'plain' or a SpeedConfig"):
        runtime.resolve(lenet, "fastest")


def test_library_defaults_and_the_cli_run_the_model_the_same_way(tmp_path, two_threads):
    out = tmp_path / "c.tsv"
    assert main(["certify", "--max", "1", "--n", "200", "--threads", "2", "--out", str(out)]) == 0
    recorded = json.loads((tmp_path / "c.tsv.json").read_text())["settings"]["speed"]
    g = SmoothedClassifier(load_default_model()[0], 10, 0.25)  # the README's snippet
    assert g.speed.settings() == recorded
    assert (recorded["workers"], recorded["threads"], recorded["jit"], recorded["rule"]) == (2, 1, False,
                                                                                            "fastest-exact")
    assert set(recorded) >= {"memory_format", "rewrite", "cpu_flags", "allocator", "torch"}
    res = g.certify_batch(torch.rand(1, 1, 28, 28), 10, 100, 0.001, seeds=[0])
    assert res.speed == recorded  # the library's result says how it ran


@pytest.mark.parametrize("workers", [1, 2])
def test_each_image_is_charged_its_share_of_every_batch_it_took_part_in(counting_clock, workers):
    g = SmoothedClassifier(load_default_model()[0], 10, 0.25, workers=workers)
    res = g.certify_batch(torch.rand(3, 1, 28, 28), 100, 300, 0.001, batch_size=200, seeds=[1, 2, 3])
    # selection (100 each): [0 0 | 1 1] [2 2]; estimation (300 each, blocks of 100):
    # [0 0] [0 1] [1 1] [2 2] [2]; every batch lasts one tick of the counting clock
    assert res.seconds.tolist() == [0.5 + 1.5, 0.5 + 1.5, 1.0 + 2.0]
    assert res.seconds.sum() == 7.0  # the batches' wall time: 2 + 5 batches


def test_the_time_column_is_the_per_image_share_and_sums_to_the_batches_time(counting_clock, tmp_path):
    out = tmp_path / "c.tsv"
    assert main(["certify", "--max", "3", "--n0", "100", "--n", "300", "--batch", "200", "--threads", "1",
                 "--out", str(out)]) == 0
    times = [float(line.split("\t")[-1]) for line in out.read_text().splitlines()[1:]]
    # groups of 200 // 100 = 2 images: [0, 1] as in the library test above, then [2] alone:
    # selection [2] (1 tick), estimation [2 2] [2] (2 ticks)
    assert times == [2.0, 2.0, 3.0]


def test_real_time_shares_add_up_to_at_most_the_call(two_threads):
    import time

    g = SmoothedClassifier(load_default_model()[0], 10, 0.25)
    t0 = time.perf_counter()
    res = g.predict_batch(torch.rand(3, 1, 28, 28), 500, 0.001, seeds=[1, 2, 3])
    wall = time.perf_counter() - t0
    assert (res.seconds > 0).all() and res.seconds.sum() <= wall


@pytest.mark.parametrize("argv", [
    ["predict", "--adaptive", "--n-max", "2000"],
    ["certify", "--radii", "0.25,0.5,1.0", "--n-max", "3000"],
])
def test_adaptive_rows_are_in_the_file_before_the_group_finishes(argv, tmp_path, monkeypatch):
    out = tmp_path / "rows.tsv"
    seen = []  # rows in the file (read from disk) at each forward pass
    labels = sampler_module.Sampler.labels

    def counting_labels(self, batch):
        seen.append(len(out.read_text().splitlines()) - 1 if out.exists() else 0)
        return labels(self, batch)

    monkeypatch.setattr(sampler_module.Sampler, "labels", counting_labels)
    # sigma 0.5 on these four demo images: they stop after 100 to 1,800 samples (pinned rows)
    assert main([*argv, "--max", "4", "--skip", "13", "--sigma", "0.5", "--threads", "1", "--seed", "11",
                 "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 5
    assert max(seen) >= 2  # forward passes still ran while two rows of the one group were on disk
    assert seen == sorted(seen)


def test_the_public_sampler_alone_gives_the_classifiers_counts():
    from smoothguard.noise import get_noise
    from smoothguard.smoothing import Sampler

    lenet = load_default_model()[0]
    x = torch.rand(3, 1, 28, 28)
    speed = runtime.fastest_exact(lenet)
    s = Sampler(lenet, 10, get_noise("gaussian", 0.25), speed, in_shape=(1, 28, 28))
    alone = s.counts(x, 300, 200, seeds=[7, 8, 9])
    assert alone.sum(1).tolist() == [300, 300, 300]
    # each image's counts depend on its seed only, not on the other images of the call
    assert torch.equal(s.counts(x[1:2], 300, 200, seeds=[8])[0], alone[1])
    assert torch.equal(SmoothedClassifier(lenet, 10, 0.25).sample_counts(x, 300, 200, seeds=[7, 8, 9]), alone)
