"""Datasets as in-memory tensors: images float32 (N, C, H, W) in [0, 1], labels int64.

No function here ever downloads anything. Readers:

* ``fashion-mnist`` / ``mnist``: IDX files, gzipped or plain (default root for
  Fashion-MNIST is the Debian package ``dataset-fashion-mnist``);
* ``cifar10``: the standard python pickle batches (``data_batch_1`` ... ``test_batch``);
* ``imagefolder``: a folder of class sub-folders of images, read with Pillow;
* ``demo``: 500 Fashion-MNIST test images bundled inside the package.
"""

from smoothguard.data.core import (
    DATASETS,
    DataError,
    Dataset,
    DatasetInfo,
    load_dataset,
    select_indices,
)
from smoothguard.data.idx import read_idx, write_idx
from smoothguard.data.cifar import read_cifar10

__all__ = [
    "DATASETS",
    "DataError",
    "Dataset",
    "DatasetInfo",
    "load_dataset",
    "select_indices",
    "read_idx",
    "write_idx",
    "read_cifar10",
]
