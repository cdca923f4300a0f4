import pickle

import numpy as np
import pytest
import torch

from smoothguard.data import DataError, load_dataset, read_idx, select_indices, write_idx
from smoothguard.data.core import FASHION_MNIST_ROOT


def test_idx_round_trip_plain_and_gzip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a", arr)
    write_idx(tmp_path / "a.gz", arr)
    assert (tmp_path / "a.gz").read_bytes()[:2] == b"\x1f\x8b"
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), arr)


def test_idx_bytes_match_the_published_layout(tmp_path):
    arr = np.array([[1, 2], [3, 4]], dtype=np.uint8)
    write_idx(tmp_path / "b", arr)
    raw = (tmp_path / "b").read_bytes()
    assert raw == bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 2, 1, 2, 3, 4])


def test_load_mnist_from_idx_files(tiny_idx_root):
    train = load_dataset("mnist", "train", root=tiny_idx_root)
    test = load_dataset("fashion-mnist", "test", root=tiny_idx_root)
    assert train.images.shape == (60, 1, 28, 28) and test.images.shape == (20, 1, 28, 28)
    assert train.images.dtype == torch.float32 and train.labels.dtype == torch.int64
    assert 0.0 <= float(train.images.min()) and float(train.images.max()) <= 1.0
    raw = read_idx(tiny_idx_root / "t10k-images-idx3-ubyte")
    np.testing.assert_allclose(test.images[:, 0].numpy(), raw / 255.0, atol=1e-7)
    assert test.labels.tolist() == [i % 10 for i in range(20)]
    assert test.info.num_classes == 10 and test.info.input_shape == (1, 28, 28)
    assert test.info.class_names[0] == "T-shirt/top" and len(test.info.mean) == 1


def test_missing_data_names_files_root_and_how_to_get_them(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", "train", root=tmp_path)
    msg = str(err.value)
    assert "train-images-idx3-ubyte" in msg and "train-labels-idx1-ubyte" in msg
    assert str(tmp_path) in msg
    assert "apt-get install -y dataset-fashion-mnist" in msg and "--root" in msg


def test_malformed_idx_is_reported(tiny_idx_root):
    path = tiny_idx_root / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        load_dataset("mnist", "test", root=tiny_idx_root)


def test_unknown_names_list_the_allowed_values():
    with pytest.raises(ValueError, match="allowed: fashion-mnist, mnist, cifar10, imagefolder, demo"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="allowed: train, test"):
        load_dataset("demo", "val")


def _write_cifar(root, rng):
    for name, n in [(f"data_batch_{i}", 4) for i in range(1, 6)] + [("test_batch", 6)]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = list(rng.integers(0, 10, size=n))
        labels = [int(v) for v in labels]
        with open(root / name, "wb") as fh:
            pickle.dump({b"batch_label": b"x", b"labels": labels, b"data": data, b"filenames": [b"f"] * n}, fh)


def test_cifar_reader_on_batches_written_by_the_test(tmp_path):
    rng = np.random.default_rng(1)
    _write_cifar(tmp_path, rng)
    train = load_dataset("cifar10", "train", root=tmp_path)
    test = load_dataset("cifar10", "test", root=tmp_path)
    assert train.images.shape == (20, 3, 32, 32) and test.images.shape == (6, 3, 32, 32)
    with open(tmp_path / "test_batch", "rb") as fh:
        raw = pickle.load(fh)
    expected = raw[b"data"].reshape(-1, 3, 32, 32) / 255.0
    np.testing.assert_allclose(test.images.numpy(), expected, atol=1e-7)
    assert test.labels.tolist() == raw[b"labels"]


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


def test_cifar_reader_refuses_pickles_that_run_code(tmp_path):
    _write_cifar(tmp_path, np.random.default_rng(2))
    with open(tmp_path / "test_batch", "wb") as fh:
        pickle.dump({b"labels": [1], b"data": _Evil()}, fh)
    with pytest.raises(DataError, match="refusing to load posix.system|refusing to load os.system|refusing"):
        load_dataset("cifar10", "test", root=tmp_path)


def test_cifar_missing_names_the_batches(tmp_path):
    with pytest.raises(DataError, match="data_batch_1.*--root"):
        load_dataset("cifar10", "train", root=tmp_path)


def test_imagefolder_reads_and_resizes(tmp_path):
    from PIL import Image

    for cls, value in (("cat", 10), ("dog", 200)):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.new("RGB", (40, 30), (value, value, value)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    ds = load_dataset("imagefolder", root=tmp_path, image_size=16)
    assert ds.images.shape == (6, 3, 16, 16)
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.info.class_names == ("cat", "dog")
    assert abs(float(ds.images[0].mean()) - 10 / 255) < 1e-6
    gray = load_dataset("imagefolder", root=tmp_path, image_size=8, channels=1)
    assert gray.images.shape == (6, 1, 8, 8)


def test_demo_set_loads_without_installed_data(monkeypatch, tmp_path):
    monkeypatch.setenv("SMOOTHGUARD_FASHION_MNIST", str(tmp_path / "nothing-here"))
    ds = load_dataset("demo")
    assert ds.images.shape == (500, 1, 28, 28)
    assert ds.indices.tolist()[:3] == [0, 20, 40]
    assert set(ds.labels.tolist()) == set(range(10))
    assert ds.info.num_classes == 10


@pytest.mark.skipif(not __import__("os").path.isdir(FASHION_MNIST_ROOT), reason="dataset-fashion-mnist not installed")
def test_demo_set_is_the_fashion_mnist_test_images_it_names():
    full = load_dataset("fashion-mnist", "test")
    demo = load_dataset("demo")
    assert len(full) == 10000
    assert torch.equal(full.images[demo.indices], demo.images)
    assert torch.equal(full.labels[demo.indices], demo.labels)


def test_select_indices_skip_and_max():
    assert select_indices(10, skip=3).tolist() == [0, 3, 6, 9]
    assert select_indices(10, skip=3, max_count=2).tolist() == [0, 3]
    assert select_indices(10000, skip=20).shape[0] == 500
    with pytest.raises(ValueError, match="skip"):
        select_indices(10, skip=0)
    with pytest.raises(ValueError, match="max"):
        select_indices(10, max_count=0)


def test_subset_keeps_original_indices():
    ds = load_dataset("demo").subset(skip=5, max_count=4)
    assert ds.indices.tolist() == [0, 100, 200, 300]
    assert len(ds) == 4
