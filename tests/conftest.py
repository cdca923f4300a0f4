import os

import pytest
import torch
from torch import nn

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


@pytest.fixture(scope="module")
def trained():
    """A small MLP trained for a fraction of a second on 400 demo images (~70% test acc),
    and 24 held-out test images it classifies correctly."""
    from smoothguard.data import load_dataset

    ds = load_dataset("demo")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    xtr, ytr = ds.images[:400], ds.labels[:400]
    for _ in range(150):
        loss = nn.functional.cross_entropy(model(xtr), ytr)
        opt.zero_grad()
        loss.backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    model.eval()
    xte, yte = ds.images[400:], ds.labels[400:]
    with torch.no_grad():
        ok = model(xte).argmax(1) == yte
    return {"model": model, "x": xte[ok][:24].clone(), "y": yte[ok][:24].clone(), "x_all": xte, "y_all": yte}
