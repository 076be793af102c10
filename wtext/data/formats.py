"""Readers of the on-disk formats: CIFAR-10 (python pickle batches) and ImageNet32 (npz or pickle batches).

Every reader checks what it reads and raises DatasetError naming the file and the problem: a missing file, one that
is not a regular file (a directory, a device), a truncated or unreadable one, a wrong array size, labels that are
not integers or out of range.
"""

import zipfile
from pathlib import Path

import numpy as np

from .errors import DatasetError
from .file_kind import require_regular_file
from .safe_pickle import RefusedPickle, load_batch_pickle

IMAGE_BYTES = 3 * 32 * 32

# What np.load raises for a file that is not a readable npz archive (a damaged zip, a pickle it may not load).
_NPZ_ERRORS = (zipfile.BadZipFile, OSError, ValueError, EOFError)


def _unpickle(path: Path) -> dict:
    require_regular_file(path)
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


def _load_npz(path: Path, keys: tuple[str, ...] | None = None) -> dict:
    """The arrays of an npz archive; only `keys` where given (counting images reads the labels alone)."""
    require_regular_file(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except _NPZ_ERRORS as error:
        raise DatasetError(path, f"not a readable npz archive (truncated or corrupt?): {error}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):  # np.load reads a lone .npy array whatever the file's name
        raise DatasetError(path, f"is a single .npy array (shape {archive.shape}), not an npz archive holding "
                                 f"'data' and 'labels'")
    with archive:
        wanted = archive.files if keys is None else keys
        missing = [key for key in wanted if key not in archive.files]
        if missing:
            raise DatasetError(path, f"missing key {missing[0]!r} (found {sorted(archive.files)})")
        try:
            return {key: archive[key] for key in wanted}
        except _NPZ_ERRORS as error:
            raise DatasetError(path, f"not a readable npz archive (truncated or corrupt?): {error}") from None


def _labels_array(path: Path, labels, num_classes: int, label_offset: int) -> np.ndarray:
    """A batch's labels as int64 in [0, num_classes) after subtracting label_offset; a list's elements must be
    integers, an array's dtype an integer one, both within [label_offset, label_offset + num_classes)."""
    if isinstance(labels, (list, tuple)):
        odd = next((i for i, label in enumerate(labels)
                    if isinstance(label, bool) or not isinstance(label, (int, np.integer))), None)
        if odd is not None:
            raise DatasetError(path, f"'labels' must be integers, found {labels[odd]!r} "
                                     f"({type(labels[odd]).__name__})")
    elif isinstance(labels, np.ndarray):
        if not np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_:
            raise DatasetError(path, f"'labels' must be integers, found {labels.dtype}")
        if labels.ndim != 1:
            raise DatasetError(path, f"'labels' must be a 1-d array, one label per image, found shape "
                                     f"{labels.shape}")
    else:
        raise DatasetError(path, f"'labels' must be a list or numpy array of integers, found "
                                 f"{type(labels).__name__}")
    # The range is checked on the values as read, before int64 conversion: a Python int such as 2**70, or a uint64
    # above 2**63, would overflow or wrap around in the conversion.
    if len(labels):
        bounds = (labels.min(), labels.max()) if isinstance(labels, np.ndarray) else (min(labels), max(labels))
        low, high = map(int, bounds)
        if low < label_offset or high >= label_offset + num_classes:
            raise DatasetError(path, f"labels out of range: found {low}..{high}, expected "
                                     f"{label_offset}..{num_classes - 1 + label_offset}")
    return np.asarray(labels, dtype=np.int64) - label_offset


def _check_batch(path: Path, batch: dict, num_classes: int, label_offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Images as uint8 [N, 3, 32, 32] and labels as int64 in [0, num_classes), after validation."""
    for key in ("data", "labels"):
        if key not in batch:
            raise DatasetError(path, f"missing key {key!r} (found {sorted(map(str, batch))})")
    data = batch["data"]
    if not isinstance(data, np.ndarray):
        raise DatasetError(path, f"'data' must be a numpy array, found {type(data).__name__}")
    if data.dtype != np.uint8:
        raise DatasetError(path, f"'data' must be uint8, found {data.dtype}")
    if data.ndim != 2 or data.shape[1] != IMAGE_BYTES:
        raise DatasetError(path, f"'data' must have shape [N, {IMAGE_BYTES}] (3x32x32, CHW), found {data.shape}")
    labels = _labels_array(path, batch["labels"], num_classes, label_offset)
    if labels.shape[0] != data.shape[0]:
        raise DatasetError(path, f"'labels' must hold one label per image ({data.shape[0]}), found shape "
                                 f"{labels.shape}")
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
    batch = _load_npz(path, keys=("labels",)) if path.suffix == ".npz" else _unpickle(path)
    if "labels" not in batch:
        raise DatasetError(path, f"missing key 'labels' (found {sorted(map(str, batch))})")
    labels = batch["labels"]
    if isinstance(labels, np.ndarray) and labels.ndim != 1:
        raise DatasetError(path, f"'labels' must be a 1-d array, one label per image, found shape {labels.shape}")
    if not isinstance(labels, (list, tuple, np.ndarray)):
        raise DatasetError(path, f"'labels' must be a list or numpy array of integers, found "
                                 f"{type(labels).__name__}")
    return len(labels)
