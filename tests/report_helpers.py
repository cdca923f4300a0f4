"""A tiny experiment with every step type, shared by test_report.py and
test_report_browser.py (not a test module itself)."""

from pathlib import Path

import numpy as np

TINY_ALL = """
[experiment]
name = "tiny-all"

[defaults]
threads = 1
seed = 0

[train.tiny]
data = "fashion-mnist"
root = "{root}"
epochs = 2
batch = 32
noise_sd = 0.25

[certify.s025]
model = "@train.tiny"
sigma = 0.25
n0 = 20
n = 200
max = 5

[certify.s050]
model = "@train.tiny"
sigma = 0.5
n0 = 20
n = 200
max = 5

[predict.s025]
model = "@train.tiny"
sigma = 0.25
n = 100
max = 5

[attack.l2_025]
model = "@train.tiny"
attack = "pgd"
norm = "l2"
eps = 0.25
steps = 3
max = 6

[attack.l2_05]
model = "@train.tiny"
attack = "pgd"
norm = "l2"
eps = 0.5
steps = 3
max = 6

[evaluate.tiny]  # the embedded model: the tiny one may classify no point right (no example grid then)
norm = "linf"
eps = 0.1
attacks = "fgsm,pgd"
steps = 3
restarts = 1
max = 8
curves = true
curve_steps = 2
eps_grid_linf = "0,0.1"
eps_grid_l2 = "0,1"
loss_restarts = 4
loss_examples = 2
grid_examples = 3

[smooth-eval.l2]
model = "@train.tiny"
sigmas = "0.25,0.5"
m = "1,2"
methods = "hard"
attacks = "epgd"
norm = "l2"
eps = 0.25
steps = 2
max = 4

[analyze.all]
files = ["@certify.*"]

[report]
title = "tiny report"
"""


def make_idx_root(root: Path) -> Path:
    """A fake Fashion-MNIST folder: 64 train and 16 test images of 28x28."""
    from smoothguard.data import write_idx

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 64), ("t10k", 16)):
        write_idx(root / f"{split}-images-idx3-ubyte", rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8))
        write_idx(root / f"{split}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))
    return root


def run_tiny_experiment(base: Path) -> Path:
    """Run the tiny experiment into base/run and return the run folder."""
    from smoothguard.cli import main

    root = make_idx_root(base / "idx")
    exp = base / "tiny.toml"
    exp.write_text(TINY_ALL.format(root=root))
    run_dir = base / "run"
    assert main(["run", str(exp), "--run-dir", str(run_dir)]) == 0
    return run_dir
