import os

import pytest
import torch

os.environ.setdefault("SMOOTHGUARD_NO_PROGRESS", "1")


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)
    yield


@pytest.fixture
def tiny_idx_root(tmp_path):
    """A fake Fashion-MNIST/MNIST folder: 60 train and 20 test images of 28x28."""
    import numpy as np

    from smoothguard.data import write_idx

    rng = np.random.default_rng(0)
    for split, n, gz in (("train", 60, True), ("t10k", 20, False)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        ext = ".gz" if gz else ""
        write_idx(tmp_path / f"{split}-images-idx3-ubyte{ext}", images)
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte{ext}", labels)
    return tmp_path
