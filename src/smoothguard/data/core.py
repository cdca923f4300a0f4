"""``load_dataset`` and the in-memory :class:`Dataset` every consumer uses."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from smoothguard.contract import ContractError, check_choice, check_images, check_int, check_labels
from smoothguard.data import cifar as _cifar
from smoothguard.data.idx import IDXError, read_idx

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
MNIST_CLASSES = [str(i) for i in range(10)]

# Channel statistics of the training sets (used by the model's Normalize layer).
_STATS = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SPLITS = ("train", "test")
DATASETS = ("fashion-mnist", "mnist", "cifar10", "imagefolder", "demo")
IMAGE_SIZE_RANGE = (1, 1024)  # imagefolder's --image-size, in pixels per side


class DataError(FileNotFoundError, ContractError):
    """Data is missing or malformed; the message says what was expected and how to get it.

    A FileNotFoundError (as it always was) and a :class:`~smoothguard.contract.ContractError`
    (hence a ValueError): data that breaks the contract (labels outside [0, K), no images,
    pixels outside [0, 1], a corrupt or hostile file) is refused at load time."""


def _env_root(var: str, default: str | None = None) -> str | None:
    """The folder named by environment variable ``var``; set but empty is an error, not
    the current folder."""
    value = os.environ.get(var)
    if value is None:
        return default
    if not value.strip():
        raise DataError(f"environment variable {var} is set but empty; set it to the folder with the data "
                        "files or unset it (an empty value is not taken to mean the current folder)")
    return value


def _check_root(root: str | os.PathLike | None) -> None:
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise DataError(f"--root (Python: root=) must be a folder path; got {type(root).__name__} {root!r}")
    if root is not None and not str(root).strip():
        raise DataError("--root (Python: root=) is empty; give the folder with the data files "
                        "(an empty value is not taken to mean the current folder)")


def _check_label_values(labels: np.ndarray, num_classes: int, source: str) -> None:
    """Every label an integer in [0, num_classes): a label -1 would equal ABSTAIN."""
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{source}: labels have type {labels.dtype}; labels must be integers in [0, {num_classes})")
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise DataError(f"{source}: {bad.size} label(s) outside [0, {num_classes}), e.g. {int(labels[bad[0]])} "
                        f"at position {int(bad[0])}; labels must be integers in [0, {num_classes}) "
                        f"(the dataset has {num_classes} classes)")


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset."""

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "mean": list(self.mean),
            "std": list(self.std),
            "class_names": list(self.class_names),
        }


@dataclass(repr=False, eq=False)
class Dataset(torch.utils.data.Dataset):
    """Images float32 (N, C, H, W) in [0, 1], labels int64 (N,), and the original indices.

    ``indices[i]`` is the position of example i in the full split, so result files can
    name examples by their index in the published dataset even after subset selection.

    A ``torch.utils.data.Dataset``: ``len(ds)``, ``ds[i] -> (image (C, H, W), label)``, so
    ``DataLoader(ds, batch_size=128)`` works; the whole split is also at hand as
    ``ds.images`` / ``ds.labels``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    info: DatasetInfo
    indices: torch.Tensor = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.indices is None:
            self.indices = torch.arange(len(self.labels))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Example ``i`` (a position in this dataset, negative counts from the end) as
        ``(image (C, H, W) float32 in [0, 1], label int64 scalar)``."""
        if isinstance(i, torch.Tensor) and i.numel() == 1 and not i.is_floating_point():
            i = int(i.item())
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"Dataset index must be an integer position; got {type(i).__name__} {i!r} "
                            "(for a selection use ds.subset(skip=, max_count=) or ds.images[...])")
        n = len(self)
        if not -n <= int(i) < n:
            raise IndexError(f"Dataset index {int(i)} out of range for {n} examples")
        return self.images[int(i)], self.labels[int(i)]

    def __repr__(self) -> str:
        c, h, w = self.info.input_shape
        return (f"Dataset({self.info.name!r}, {len(self)} images {c}x{h}x{w} in [0, 1], "
                f"{self.info.num_classes} classes)")

    def subset(self, skip: int = 1, max_count: int = -1, start: int = 0) -> "Dataset":
        """Every ``skip``-th example from ``start``, at most ``max_count`` of them (-1: all)."""
        sel = select_indices(len(self), skip=skip, max_count=max_count, start=start)
        return Dataset(self.images[sel], self.labels[sel], self.info, self.indices[sel])


def select_indices(n: int, skip: int = 1, max_count: int = -1, start: int = 0) -> torch.Tensor:
    """Positions ``start, start + skip, ...`` below n, at most ``max_count`` (-1 = no cap).

    This is the ``--skip/--max`` selection of every command: ``--skip 20`` on the 10,000
    Fashion-MNIST test images selects the 500 images 0, 20, 40, ... (Cohen et al.'s
    convention).
    """
    if skip < 1:
        raise ValueError(f"skip must be >= 1, got {skip}")
    if max_count < -1 or max_count == 0:
        raise ValueError(f"max must be a positive count or -1 (all), got {max_count}")
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    sel = torch.arange(start, n, skip)
    if max_count != -1:
        sel = sel[:max_count]
    return sel


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)


def _find(root: Path, stem: str) -> Path | None:
    for cand in (root / stem, root / (stem + ".gz")):
        if cand.is_file():
            return cand
    return None


def _load_idx_dataset(name: str, split: str, root: str | os.PathLike | None) -> Dataset:
    _check_root(root)
    if root is None:
        if name == "fashion-mnist":
            root = _env_root("SMOOTHGUARD_FASHION_MNIST", FASHION_MNIST_ROOT)
        else:
            root = _env_root("SMOOTHGUARD_MNIST")
    how = (
        "Install it with `apt-get install -y dataset-fashion-mnist` (files land in "
        f"{FASHION_MNIST_ROOT}) or pass --root DIR (Python: root=DIR) naming a folder with these files."
        if name == "fashion-mnist"
        else "Put the four MNIST IDX files (as published, gzipped or not) in a folder and pass "
        "--root DIR (Python: root=DIR) or set SMOOTHGUARD_MNIST."
    )
    img_stem, lab_stem = _IDX_FILES[split]
    if root is None:
        raise DataError(f"{name}: no data folder given. Expected {img_stem}[.gz] and {lab_stem}[.gz]. {how}")
    root = Path(root)
    img_path, lab_path = _find(root, img_stem), _find(root, lab_stem)
    missing = [s + "[.gz]" for s, p in ((img_stem, img_path), (lab_stem, lab_path)) if p is None]
    if missing:
        raise DataError(
            f"{name} ({split}): missing {', '.join(missing)} in {root} "
            f"(searched {root}/<name> and {root}/<name>.gz). {how}"
        )
    try:
        images, labels = read_idx(img_path), read_idx(lab_path)
    except IDXError as exc:
        raise DataError(f"{name} ({split}): malformed file: {exc}. {how}") from exc
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{name} ({split}): images of shape {images.shape} and labels of shape {labels.shape} "
            f"in {root}; expected (N, 28, 28) and (N,). {how}"
        )
    if images.dtype != np.uint8:
        raise DataError(f"{img_path}: IDX images of type {images.dtype}; {name} images must be unsigned bytes "
                        "0..255 (IDX type code 0x08)")
    if images.shape[0] == 0 or 0 in images.shape[1:]:
        raise DataError(f"{img_path}: holds no images (shape {images.shape}); a dataset needs at least one "
                        "image of at least 1x1 pixels")
    _check_label_values(labels, 10, str(lab_path))
    mean, std = _STATS[name]
    classes = FASHION_CLASSES if name == "fashion-mnist" else MNIST_CLASSES
    info = DatasetInfo(name, 10, (1, images.shape[1], images.shape[2]), mean, std, tuple(classes))
    return Dataset(_to_tensor(images[:, None]), torch.from_numpy(labels.astype(np.int64)), info)


def _load_cifar(split: str, root) -> Dataset:
    how = (
        "Unpack cifar-10-python.tar.gz (the 'python version' from the CIFAR-10 page) and pass "
        "--root DIR (Python: root=DIR) naming the cifar-10-batches-py folder, or set SMOOTHGUARD_CIFAR10."
    )
    _check_root(root)
    root = root if root is not None else _env_root("SMOOTHGUARD_CIFAR10")
    files = _cifar.TRAIN_FILES if split == "train" else _cifar.TEST_FILES
    if root is None:
        raise DataError(f"cifar10: no data folder given. Expected {', '.join(files)}. {how}")
    root = Path(root)
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        raise DataError(f"cifar10 ({split}): missing {', '.join(missing)} in {root}. {how}")
    try:
        images, labels = _cifar.read_cifar10(root, split)
    except ValueError as exc:
        raise DataError(f"cifar10 ({split}): malformed file: {exc}. {how}") from exc
    mean, std = _STATS["cifar10"]
    info = DatasetInfo("cifar10", 10, (3, 32, 32), mean, std, tuple(_cifar.CLASS_NAMES))
    return Dataset(_to_tensor(images), torch.from_numpy(labels), info)


_IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def _load_imagefolder(split: str, root, image_size, channels) -> Dataset:
    how = "Pass --root DIR naming a folder with one sub-folder per class (optionally DIR/train and DIR/test)."
    _check_root(root)
    if root is None:
        raise DataError(f"imagefolder: no folder given. {how}")
    lo, hi = IMAGE_SIZE_RANGE
    sides = [image_size] if not isinstance(image_size, (tuple, list)) else list(image_size)
    if len(sides) not in (1, 2):
        raise ContractError(f"imagefolder: image_size (--image-size) must be one integer or (height, width); "
                            f"got {image_size!r}")
    sides = [check_int("imagefolder: image_size (--image-size, pixels per side)", v, lo, hi) for v in sides]
    check_choice("imagefolder: channels (--channels)", channels, (1, 3))
    root = Path(root)
    if (root / split).is_dir():
        root = root / split
    if not root.is_dir():
        raise DataError(f"imagefolder: {root} is not a folder. {how}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"imagefolder: no class sub-folders in {root}. {how}")
    mode = {1: "L", 3: "RGB"}[channels]
    size = (sides[0], sides[-1])
    images, labels = [], []
    for label, cls in enumerate(classes):
        for f in sorted((root / cls).iterdir()):
            if f.suffix.lower() not in _IMAGE_EXT:
                continue
            if not f.is_file():  # a FIFO or device named *.png would block or never end
                raise DataError(f"imagefolder: {f} is not a regular file; images must be regular files")
            arr = _read_image(f, mode, size)
            images.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
            labels.append(label)
    if not images:
        raise DataError(f"imagefolder: no images ({', '.join(sorted(_IMAGE_EXT))}) under {root}. {how}")
    x = _to_tensor(np.stack(images))
    dims = (0, 2, 3)
    mean = tuple(float(v) for v in x.mean(dim=dims))
    std = tuple(max(float(v), 1e-3) for v in x.std(dim=dims))
    info = DatasetInfo("imagefolder", len(classes), tuple(x.shape[1:]), mean, std, tuple(classes))
    return Dataset(x, torch.tensor(labels, dtype=torch.int64), info)


def _read_image(path: Path, mode: str, size: tuple[int, int]) -> np.ndarray:
    """One image as uint8 (H, W) or (H, W, C), resized; a file that declares more pixels
    than Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``) is refused
    before it is decoded."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x the limit and would decode the image
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im = im.convert(mode).resize((size[1], size[0]), Image.BILINEAR)
                return np.asarray(im, dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"imagefolder: refusing {path}: it declares more pixels than the decompression-bomb "
                        f"limit of {Image.MAX_IMAGE_PIXELS} pixels (PIL.Image.MAX_IMAGE_PIXELS) ({exc}); "
                        "images must be smaller") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for a corrupt file
        raise DataError(f"imagefolder: cannot read image {path} ({type(exc).__name__}: {exc})") from None


def _check_loaded(ds: Dataset, where: str) -> Dataset:
    """The loaded data against the contract, once: at least one image, pixels finite and
    in [0, 1], one label in [0, K) per image."""
    if len(ds) == 0:
        raise DataError(f"{where}: no images; a dataset needs at least one")
    try:
        if ds.images.is_floating_point() and ds.images.numel():
            lo, hi = torch.aminmax(ds.images)  # one pass; NaN propagates, so this also proves finiteness
            if bool(lo >= 0) and bool(hi <= 1) and ds.images.dtype == torch.float32 and ds.images.dim() == 4:
                check_labels(ds.labels, ds.info.num_classes, count=int(ds.images.shape[0]),
                             name=f"the labels of {where}")
                return ds
        check_images(ds.images, f"the images of {where}", single=False, allow_empty=False)
        check_labels(ds.labels, ds.info.num_classes, count=int(ds.images.shape[0]), name=f"the labels of {where}")
    except ContractError as exc:
        raise DataError(str(exc)) from None
    return ds


def _load_demo(split: str) -> Dataset:
    if split != "test":
        raise DataError("demo: only split 'test' exists (500 bundled Fashion-MNIST test images)")
    with resources.files("smoothguard.data").joinpath("demo/fashion_mnist_demo.npz").open("rb") as fh:
        z = np.load(fh)
        images, labels, indices = z["images"], z["labels"], z["indices"]
    mean, std = _STATS["fashion-mnist"]
    info = DatasetInfo("demo", 10, (1, 28, 28), mean, std, tuple(FASHION_CLASSES))
    return Dataset(
        _to_tensor(images[:, None]),
        torch.from_numpy(labels.astype(np.int64)),
        info,
        torch.from_numpy(indices.astype(np.int64)),
    )


def load_dataset(
    name: str,
    split: str = "test",
    root: str | os.PathLike | None = None,
    *,
    image_size: int | tuple[int, int] = 32,
    channels: int = 3,
) -> Dataset:
    """Load a dataset into memory.

    Args:
        name: one of ``fashion-mnist``, ``mnist``, ``cifar10``, ``imagefolder``, ``demo``.
        split: ``train`` or ``test``.
        root: folder with the files; Fashion-MNIST defaults to the Debian package's
            ``/usr/share/datasets/fashion-mnist``; others have no default (environment
            variables ``SMOOTHGUARD_MNIST`` / ``SMOOTHGUARD_CIFAR10`` are read).
        image_size, channels: the size every image is resized to and the channel count,
            for ``imagefolder`` only: image_size an integer in [1, 1024] (pixels per side) or
            (height, width); channels 1 or 3.

    Returns a :class:`Dataset` (images float32 in [0, 1], labels int64, metadata), checked
    once here: at least one image, every pixel finite and in [0, 1], every label in
    [0, K). Raises :class:`DataError` naming the expected files, the folder searched and
    how to get them when data is missing or malformed, and naming the file when it breaks
    the contract: labels outside [0, K) (an int8 -1 would read as ABSTAIN), an IDX header
    whose dimensions exceed the file, zero images, an image over Pillow's
    decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``). ``SMOOTHGUARD_*`` folder
    variables and ``root`` set to "" are errors, never the current folder. ``image_size``
    must lie in [1, 1024] (``IMAGE_SIZE_RANGE``). Never downloads.
    """
    key = name.lower().replace("_", "-") if isinstance(name, str) else name
    if key == "fashionmnist":
        key = "fashion-mnist"
    if not isinstance(key, str) or key not in DATASETS:
        raise ContractError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    if not isinstance(split, str) or split not in SPLITS:
        raise ContractError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    if key in ("fashion-mnist", "mnist"):
        ds = _load_idx_dataset(key, split, root)
    elif key == "cifar10":
        ds = _load_cifar(split, root)
    elif key == "imagefolder":
        ds = _load_imagefolder(split, root, image_size, channels)
    else:
        ds = _load_demo(split)
    return _check_loaded(ds, f"{key} ({split})" + (f" in {root}" if root is not None else ""))
