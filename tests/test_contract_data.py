"""The data door of the contract (issue 17, item 6): every loader refuses what would turn
into a wrong result (labels outside [0, K), zero images, overflowing IDX headers,
decompression bombs, empty folder variables) with a DataError naming the file, the
problem and the allowed values; the CLI turns each into exit 2, a message and no file."""

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from smoothguard.cli import main
from smoothguard.contract import ContractError
from smoothguard.data import DataError, load_dataset, read_idx, write_idx
from smoothguard.data.idx import IDXError

torch.set_num_threads(1)


def _idx_bytes(code: int, shape, payload: bytes) -> bytes:
    return bytes([0, 0, code, len(shape)]) + struct.pack(">" + "I" * len(shape), *shape) + payload


def _write_split(root, images: np.ndarray, labels: np.ndarray, split="t10k"):
    write_idx(root / f"{split}-images-idx3-ubyte", images)
    write_idx(root / f"{split}-labels-idx1-ubyte", labels)


def test_data_error_is_still_a_file_not_found_error_and_a_contract_error():
    err = DataError("x")
    assert isinstance(err, FileNotFoundError) and isinstance(err, ContractError) and isinstance(err, ValueError)
    assert str(err) == "x"
    assert issubclass(IDXError, ContractError)


# ------------------------------------------------------------------------------- IDX files


@pytest.mark.parametrize("gz", [False, True])
def test_an_idx_header_whose_dimensions_overflow_names_the_file(tmp_path, gz):
    path = tmp_path / ("bad-idx.gz" if gz else "bad-idx")
    # 3 dimensions of 2**32 - 1: 2**96 bytes, more than the file and than any int64 size
    raw = _idx_bytes(0x08, (2 ** 32 - 1,) * 3, b"\0" * 64)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(IDXError, match=rf"{path.name}.*IDX header says shape \(4294967295, 4294967295, 4294967295\)"):
        read_idx(path)


def test_an_idx_header_whose_product_wraps_int64_is_still_refused(tmp_path):
    # (2**32-1)**2 * 2**32 wraps around int64 arithmetic; the check uses exact integers
    path = tmp_path / "wrap"
    path.write_bytes(_idx_bytes(0x08, (2 ** 32 - 1, 2 ** 32 - 1, 2 ** 32 - 1, 2 ** 32 - 1), b"\0" * 16))
    with pytest.raises(IDXError, match="wrap: IDX header says shape"):
        read_idx(path)


def test_a_gzip_idx_that_inflates_past_its_header_is_refused_without_inflating_it_all(tmp_path):
    path = tmp_path / "more.gz"
    path.write_bytes(gzip.compress(_idx_bytes(0x08, (1, 2, 2), b"\0" * (50 << 20))))  # 50 MiB behind 4 bytes
    with pytest.raises(IDXError, match=r"more.gz: IDX header says shape \(1, 2, 2\) \(4 bytes of data\) but the "
                                       "file holds more"):
        read_idx(path)


def test_overflowing_idx_header_through_load_dataset_names_the_file(tmp_path):
    _write_split(tmp_path, np.zeros((3, 28, 28), np.uint8), np.zeros(3, np.uint8))
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(0x08, (2 ** 31, 2 ** 31, 28), b"\0" * 784))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte: IDX header says shape"):
        load_dataset("mnist", "test", root=tmp_path)


@pytest.mark.parametrize("dtype,value", [(np.int8, -1), (np.uint8, 255), (np.uint8, 10)])
def test_idx_labels_outside_the_classes_are_refused_naming_file_and_range(tmp_path, dtype, value):
    labels = (np.arange(6) % 10).astype(dtype)
    labels[4] = value
    _write_split(tmp_path, np.zeros((6, 28, 28), np.uint8), labels)
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", "test", root=tmp_path)
    msg = str(err.value)
    assert "t10k-labels-idx1-ubyte" in msg and f"e.g. {value} at position 4" in msg
    assert "must be integers in [0, 10)" in msg


def test_float_idx_labels_and_images_are_refused(tmp_path):
    _write_split(tmp_path, np.zeros((2, 28, 28), np.uint8), np.zeros(2, np.uint8))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(0x0D, (2,), np.array([0.5, 1], ">f4").tobytes()))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: labels have type float32; labels must be integers"):
        load_dataset("mnist", "test", root=tmp_path)
    _write_split(tmp_path, np.zeros((2, 28, 28), np.uint8), np.zeros(2, np.uint8))
    nan_images = np.full((2, 28, 28), np.nan, ">f4")
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(0x0D, (2, 28, 28), nan_images.tobytes()))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: IDX images of type float32.*0\.\.255"):
        load_dataset("mnist", "test", root=tmp_path)


def test_a_zero_image_idx_dataset_is_an_error_naming_the_file(tmp_path):
    _write_split(tmp_path, np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.uint8))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: holds no images \(shape \(0, 28, 28\)\)"):
        load_dataset("mnist", "test", root=tmp_path)


def test_a_folder_variable_set_to_empty_is_an_error_not_the_current_folder(tmp_path, monkeypatch):
    _write_split(tmp_path, np.zeros((2, 28, 28), np.uint8), np.zeros(2, np.uint8))
    monkeypatch.chdir(tmp_path)  # the current folder holds valid files: "" must not find them
    for var, name in (("SMOOTHGUARD_MNIST", "mnist"), ("SMOOTHGUARD_FASHION_MNIST", "fashion-mnist"),
                      ("SMOOTHGUARD_CIFAR10", "cifar10")):
        monkeypatch.setenv(var, "")
        with pytest.raises(DataError, match=f"environment variable {var} is set but empty"):
            load_dataset(name, "test")
        monkeypatch.setenv(var, "  ")
        with pytest.raises(DataError, match=f"{var} is set but empty"):
            load_dataset(name, "test")
        monkeypatch.delenv(var)
    for name in ("mnist", "cifar10", "imagefolder"):
        with pytest.raises(DataError, match=r"--root \(Python: root=\) is empty"):
            load_dataset(name, "test", root="")
    assert len(load_dataset("mnist", "test", root=tmp_path)) == 2  # a real folder still works


def test_wrong_types_for_name_split_and_root_are_contract_errors():
    with pytest.raises(ContractError, match="unknown dataset None; allowed: fashion-mnist"):
        load_dataset(None)
    with pytest.raises(ContractError, match=r"unknown split \['test'\]; allowed: train, test"):
        load_dataset("demo", ["test"])
    with pytest.raises(DataError, match="root=\\) must be a folder path; got int 3"):
        load_dataset("mnist", "test", root=3)


# ------------------------------------------------------------------------------- CIFAR-10


def _cifar(root, labels, data=None, n_train=0):
    n = len(labels)
    data = np.zeros((n, 3072), np.uint8) if data is None else data
    with open(root / "test_batch", "wb") as fh:
        pickle.dump({b"labels": labels, b"data": data}, fh)


@pytest.mark.parametrize("labels,shown", [([0, -1], "-1"), ([10, 0], "10"), ([0, 10 ** 30], "integers")])
def test_cifar_labels_outside_the_classes_are_refused_naming_the_batch(tmp_path, labels, shown):
    _cifar(tmp_path, labels)
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", "test", root=tmp_path)
    msg = str(err.value)
    assert "test_batch" in msg and "'labels'" in msg and "[0, 9]" in msg and shown in msg


def test_cifar_pixels_are_never_wrapped_into_bytes(tmp_path):
    data = np.zeros((1, 3072), np.int64)
    data[0, 5] = -1  # np.uint8 would silently make this 255
    _cifar(tmp_path, [0], data)
    with pytest.raises(DataError, match=r"test_batch: CIFAR-10 batch 'data' has 1 value\(s\) outside \[0, 255\]"):
        load_dataset("cifar10", "test", root=tmp_path)


def test_a_zero_image_cifar_split_is_an_error(tmp_path):
    _cifar(tmp_path, [], np.zeros((0, 3072), np.uint8))
    with pytest.raises(DataError, match=r"cifar10 \(test\) in .*: no images; a dataset needs at least one"):
        load_dataset("cifar10", "test", root=tmp_path)


# ---------------------------------------------------------------------------- imagefolder


def _folder(tmp_path, size=(6, 5)):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        Image.new("L", size, 7).save(tmp_path / cls / "0.png")
    return tmp_path


@pytest.mark.parametrize("pixels", [1200, 10000])  # Pillow warns between 1x and 2x its limit, raises above
def test_imagefolder_refuses_a_decompression_bomb_naming_the_file(tmp_path, monkeypatch, pixels):
    from PIL import Image

    root = _folder(tmp_path)
    Image.new("L", (pixels // 10, 10), 0).save(root / "b" / "bomb.png")  # small on disk
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DataError) as err:
        load_dataset("imagefolder", root=root, image_size=8)
    msg = str(err.value)
    assert "bomb.png" in msg and "decompression-bomb limit of 1000 pixels" in msg
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100000)
    assert len(load_dataset("imagefolder", root=root, image_size=8)) == 3


def test_a_large_declared_png_is_refused_before_it_is_decoded(tmp_path):
    """A real bomb: a 20000 x 20000 PNG header (400 M pixels, over twice Pillow's default
    limit) in front of a few bytes; refused from the header alone."""
    import zlib

    root = _folder(tmp_path)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))
    (root / "a" / "huge.png").write_bytes(png)
    with pytest.raises(DataError, match=r"huge.png.*decompression-bomb limit"):
        load_dataset("imagefolder", root=root, image_size=8)


@pytest.mark.parametrize("size", [0, -3, 1025, 10 ** 6, (8, 0), (8, 8, 8)])
def test_imagefolder_image_size_is_bounded(tmp_path, size):
    root = _folder(tmp_path)
    with pytest.raises(ContractError, match=r"image_size \(--image-size"):
        load_dataset("imagefolder", root=root, image_size=size)


def test_imagefolder_image_size_bounds_are_inclusive(tmp_path):
    root = _folder(tmp_path)
    assert load_dataset("imagefolder", root=root, image_size=1).images.shape == (2, 3, 1, 1)
    assert load_dataset("imagefolder", root=root, image_size=(4, 6), channels=1).images.shape == (2, 1, 4, 6)


def test_imagefolder_refuses_a_fifo_named_like_an_image(tmp_path):
    root = _folder(tmp_path)
    os.mkfifo(root / "a" / "pipe.png")  # opening it would block forever
    with pytest.raises(DataError, match="pipe.png is not a regular file"):
        load_dataset("imagefolder", root=root, image_size=8)


def test_imagefolder_with_class_folders_but_no_images_is_an_error(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
    (tmp_path / "a" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="imagefolder: no images"):
        load_dataset("imagefolder", root=tmp_path)


def test_a_corrupt_image_names_the_file(tmp_path):
    root = _folder(tmp_path)
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(DataError, match="cannot read image .*broken.png"):
        load_dataset("imagefolder", root=root, image_size=8)


# ------------------------------------------------------------------------------------ CLI


def _bad_labels_root(tmp_path):
    labels = np.zeros(4, np.int8)
    labels[2] = -1  # would equal ABSTAIN in a result row
    _write_split(tmp_path, np.zeros((4, 28, 28), np.uint8), labels)
    return tmp_path


def _bad_header_root(tmp_path):
    _write_split(tmp_path, np.zeros((2, 28, 28), np.uint8), np.zeros(2, np.uint8))
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(0x08, (2 ** 32 - 1, 28, 28), b"\0" * 99))
    return tmp_path


def _bomb_root(tmp_path):
    from PIL import Image

    root = _folder(tmp_path)
    Image.new("L", (20000, 10), 0).save(root / "a" / "bomb.png")
    return root


CLI_CASES = [
    ("labels_minus_one", _bad_labels_root, ["--data", "mnist"], {},
     ["t10k-labels-idx1-ubyte", "-1 at position 2", "[0, 10)"]),
    ("idx_header", _bad_header_root, ["--data", "mnist"], {}, ["t10k-images-idx3-ubyte: IDX header says shape"]),
    ("zero_images", lambda p: (_write_split(p, np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.uint8)), p)[1],
     ["--data", "fashion-mnist"], {}, ["holds no images"]),
    ("bomb", _bomb_root, ["--data", "imagefolder", "--channels", "1", "--image-size", "28"], {"MAX": 100000},
     ["bomb.png", "decompression-bomb limit"]),
    ("image_size", _folder, ["--data", "imagefolder", "--image-size", "0"], {}, ["--image-size", "[1, 1024]"]),
    ("empty_env", None, ["--data", "mnist"], {"SMOOTHGUARD_MNIST": ""}, ["SMOOTHGUARD_MNIST is set but empty"]),
    ("empty_root", None, ["--data", "mnist", "--root", ""], {}, ["--root", "is empty"]),
]


@pytest.mark.parametrize("name,make,flags,env,expected", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_data_exits_2_with_a_message_and_writes_nothing(tmp_path, monkeypatch, capsys, name, make, flags,
                                                                env, expected):
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    root = ["--root", str(make(data))] if make is not None else []
    for key, value in env.items():
        if key == "MAX":
            monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", value)
        else:
            monkeypatch.setenv(key, value)
    out = tmp_path / "out.tsv"
    rc = main(["certify", *flags, *root, "--max", "2", "--n0", "10", "--n", "20", "--threads", "1",
               "--device", "cpu", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "error:" in err and "Traceback" not in err
    for piece in expected:
        assert piece in err, (piece, err)
    assert not out.exists() and not (tmp_path / "out.tsv.json").exists()
