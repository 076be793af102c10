"""Data: the embedded synthetic set, CIFAR-10 and ImageNet32 readers, device-resident augmented batches."""

from .cache import DatasetCache
from .datasets import DATASETS, STATISTICS, Dataset, Split, load_dataset
from .errors import DatasetError
from .loader import DeviceLoader, crop_flip

__all__ = ["DATASETS", "STATISTICS", "Dataset", "DatasetCache", "DatasetError", "DeviceLoader", "Split", "crop_flip",
           "load_dataset"]
