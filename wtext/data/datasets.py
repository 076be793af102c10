"""Data sets by name: "synthetic" (embedded, no download), "digits" (real handwritten digits shipped with
scikit-learn, no download), "cifar10" and "imagenet32" (from --data-dir).

A data set is a pair of splits, each images uint8 [N, 3, 32, 32] and labels int64 [N], as torch tensors. Large
sets are assembled batch file by batch file into one preallocated tensor, so host memory holds the set once plus
a single batch file, never two copies (ImageNet32's 3.9 GB included); `device` places the tensor there directly.
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from . import synthetic
from .digits import load_digits_splits
from .errors import DatasetError
from .file_kind import require_regular_file
from .formats import count_batch_images, read_cifar10_batch, read_imagenet32_batch

DATASETS = ("synthetic", "digits", "cifar10", "imagenet32")

# Per-channel mean and std of the training images, for normalization.
STATISTICS = {
    "synthetic": ((0.50, 0.50, 0.50), (0.29, 0.29, 0.29)),
    "digits": ((0.3052, 0.3052, 0.3052), (0.3236, 0.3236, 0.3236)),  # of its fixed training split
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "imagenet32": ((0.4811, 0.4575, 0.4078), (0.2605, 0.2533, 0.2684)),
}


@dataclass
class Split:
    images: torch.Tensor  # uint8 [N, 3, 32, 32]
    labels: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return self.labels.shape[0]


@dataclass
class Dataset:
    name: str
    train: Split
    test: Split
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    flip: bool = True  # whether a horizontal flip keeps an image's class (it does not for digits)


def _assemble(paths: list[Path], reader, device, shard: tuple[int, int]) -> Split:
    """Reads batch files into one preallocated tensor. shard=(rank, world) keeps images rank, rank + world, ...

    A first pass counts the images (an npz's labels only; a pickle must be read whole and dropped), so the second
    pass can copy each file into place as it is read: memory holds the set once plus one batch file.
    """
    rank, world = shard
    counts = [count_batch_images(path) for path in paths]
    starts = [sum(counts[:i]) for i in range(len(counts))]
    keep_total = len(range(rank, sum(counts), world))
    images = torch.empty((keep_total, 3, 32, 32), dtype=torch.uint8, device=device)
    labels = torch.empty(keep_total, dtype=torch.int64, device=device)
    written = 0
    for path, start, count in zip(paths, starts, counts):
        file_images, file_labels = reader(path)
        if len(file_labels) != count:
            raise DatasetError(path, f"changed while being read ({count} images, then {len(file_labels)})")
        first = (rank - start) % world  # the first index in this file that belongs to the shard
        local = slice(first, count, world)
        kept = len(range(first, count, world))
        images[written:written + kept] = torch.from_numpy(file_images[local]).to(device)
        labels[written:written + kept] = torch.from_numpy(file_labels[local]).to(device)
        written += kept
    return Split(images, labels)


def _batch_files(data_dir: Path, names: list[str], what: str) -> list[Path]:
    paths = [data_dir / name for name in names]
    for path in paths:
        if path.exists():
            require_regular_file(path)
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise DatasetError(missing[0], f"file not found ({what} expects {', '.join(names)} in {data_dir})")
    return paths


def _imagenet32_files(data_dir: Path) -> tuple[list[Path], list[Path]]:
    def pick(stem: str) -> str:  # whatever is named .npz is meant as the batch, and checked as one
        return f"{stem}.npz" if (data_dir / f"{stem}.npz").exists() else stem

    train = [pick(f"train_data_batch_{i}") for i in range(1, 11)]
    return (_batch_files(data_dir, train, "ImageNet32"), _batch_files(data_dir, [pick("val_data")], "ImageNet32"))


def load_dataset(name: str, data_dir: str | Path | None = None, *, device: torch.device | str = "cpu",
                 synthetic_train: int = 10000, synthetic_test: int = 2000, seed: int = 0,
                 shard: tuple[int, int] = (0, 1)) -> Dataset:
    """The named data set on `device`; shard=(rank, world) keeps every world-th training image from rank (the test
    split is kept whole, so every rank evaluates on the same images)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; datasets: {', '.join(DATASETS)}")
    mean, std = STATISTICS[name]
    if name in ("synthetic", "digits"):  # made in memory: every rank makes the whole set, keeps its shard
        if name == "synthetic":
            train_set = synthetic.generate(synthetic_train, seed)
            test_set = synthetic.generate(synthetic_test, seed + 1)
        else:
            train_set, test_set = load_digits_splits()
        rank, world = shard
        train = Split(train_set[0][rank::world].to(device), train_set[1][rank::world].to(device))
        test = Split(test_set[0].to(device), test_set[1].to(device))
        return Dataset(name, train, test, 10, mean, std, flip=name != "digits")
    if data_dir is None:
        raise ValueError(f"dataset {name!r} is read from files: give --data-dir (no download happens here)")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DatasetError(data_dir, "data directory not found")
    if name == "cifar10":
        folder = data_dir / "cifar-10-batches-py" if (data_dir / "cifar-10-batches-py").is_dir() else data_dir
        train_files = _batch_files(folder, [f"data_batch_{i}" for i in range(1, 6)], "CIFAR-10")
        test_files = _batch_files(folder, ["test_batch"], "CIFAR-10")
        reader, classes = read_cifar10_batch, 10
    else:
        train_files, test_files = _imagenet32_files(data_dir)
        reader, classes = read_imagenet32_batch, 1000
    train = _assemble(train_files, reader, device, shard)
    test = _assemble(test_files, reader, device, (0, 1))
    for split, files, what in ((train, train_files, "training"), (test, test_files, "test")):
        if len(split) == 0:
            raise DatasetError(files[0].parent, f"the {what} files ({', '.join(p.name for p in files)}) hold no "
                                                f"images")
    return Dataset(name, train, test, classes, mean, std)
