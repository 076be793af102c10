"""Readers of the on-disk formats: CIFAR-10 (python pickle batches) and ImageNet32 (npz or pickle batches).

Every reader checks what it reads and raises DatasetError naming the file and the problem: a missing file, a
truncated or unreadable one, a wrong array size, labels out of range.
"""

import zipfile
from pathlib import Path

import numpy as np

from .errors import DatasetError
from .safe_pickle import RefusedPickle, load_batch_pickle

IMAGE_BYTES = 3 * 32 * 32


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise DatasetError(path, "file not found")
    try:
        with path.open("rb") as handle:
            batch = load_batch_pickle(handle)
    except RefusedPickle as error:
        raise DatasetError(path, str(error)) from None
    except OSError as error:
        raise DatasetError(path, f"cannot read: {error.strerror or error}") from None
    except Exception as error:  # a damaged pickle raises almost any type
        raise DatasetError(path, f"not a readable pickle batch (truncated or corrupt?): "
                                 f"{type(error).__name__}: {error}") from None
    if not isinstance(batch, dict):
        raise DatasetError(path, f"expected a pickled dict, found {type(batch).__name__}")
    try:
        return {key.decode() if isinstance(key, bytes) else key: value for key, value in batch.items()}
    except UnicodeDecodeError:
        raise DatasetError(path, "a key of the pickled dict is not text") from None


def _load_npz(path: Path) -> dict:
    if not path.is_file():
        raise DatasetError(path, "file not found")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        raise DatasetError(path, f"not a readable npz archive (truncated or corrupt?): {error}") from None


def _check_batch(path: Path, batch: dict, num_classes: int, label_offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Images as uint8 [N, 3, 32, 32] and labels as int64 in [0, num_classes), after validation."""
    for key in ("data", "labels"):
        if key not in batch:
            raise DatasetError(path, f"missing key {key!r} (found {sorted(map(str, batch))})")
    data, labels = batch["data"], batch["labels"]
    if not isinstance(data, np.ndarray):
        raise DatasetError(path, f"'data' must be a numpy array, found {type(data).__name__}")
    if isinstance(labels, (list, tuple)):
        odd = next((label for label in labels
                    if isinstance(label, bool) or not isinstance(label, (int, np.integer))), None)
        if odd is not None:
            raise DatasetError(path, f"'labels' must be integers, found {odd!r} ({type(odd).__name__})")
        labels = np.asarray(labels, dtype=np.int64)
    elif not isinstance(labels, np.ndarray):
        raise DatasetError(path, f"'labels' must be a list or numpy array of integers, found "
                                 f"{type(labels).__name__}")
    if data.dtype != np.uint8:
        raise DatasetError(path, f"'data' must be uint8, found {data.dtype}")
    if data.ndim != 2 or data.shape[1] != IMAGE_BYTES:
        raise DatasetError(path, f"'data' must have shape [N, {IMAGE_BYTES}] (3x32x32, CHW), found {data.shape}")
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise DatasetError(path, f"'labels' must hold one label per image ({data.shape[0]}), found shape "
                                 f"{labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_:
        raise DatasetError(path, f"'labels' must be integers, found {labels.dtype}")
    labels = labels.astype(np.int64) - label_offset
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        low, high = labels.min() + label_offset, labels.max() + label_offset
        raise DatasetError(path, f"labels out of range: found {low}..{high}, expected "
                                 f"{label_offset}..{num_classes - 1 + label_offset}")
    return data.reshape(-1, 3, 32, 32), labels


def read_cifar10_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch (data_batch_1..5, test_batch): labels 0..9."""
    return _check_batch(path, _unpickle(path), num_classes=10, label_offset=0)


def read_imagenet32_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One ImageNet32 batch, npz or pickle (train_data_batch_1..10, val_data): labels 1..1000 become 0..999."""
    batch = _load_npz(path) if path.suffix == ".npz" else _unpickle(path)
    return _check_batch(path, batch, num_classes=1000, label_offset=1)


def count_batch_images(path: Path) -> int:
    """Images in a batch file, reading as little as the format allows (an npz's labels only)."""
    if path.suffix == ".npz":
        if not path.is_file():
            raise DatasetError(path, "file not found")
        try:
            with np.load(path, allow_pickle=False) as archive:
                if "labels" not in archive.files:
                    raise DatasetError(path, f"missing key 'labels' (found {sorted(archive.files)})")
                return int(archive["labels"].shape[0])
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
            raise DatasetError(path, f"not a readable npz archive (truncated or corrupt?): {error}") from None
    batch = _unpickle(path)
    if "labels" not in batch:
        raise DatasetError(path, f"missing key 'labels' (found {sorted(map(str, batch))})")
    try:
        return len(batch["labels"])
    except TypeError:
        raise DatasetError(path, f"'labels' must be a list or numpy array of integers, found "
                                 f"{type(batch['labels']).__name__}") from None
