"""The "digits" data set: scikit-learn's 1,797 real handwritten digits (8x8, 17 grey levels, UCI optical
recognition set), upsampled to 32x32 RGB so every model of wtext takes them unchanged. It ships inside the
scikit-learn package: real images with no download, for tests and quick checks of learning.

The split is fixed (a permutation drawn once from a constant seed, not from the run's seed): 1,437 training and 360
test images, the same on every machine and in every run, so accuracies are comparable across runs and seeds.
"""

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DatasetError

TEST_IMAGES = 360
SPLIT_SEED = 20_230_717  # fixed forever: changing it changes every reported digits accuracy
IMAGE_SIZE = 32


def _load_sklearn_digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DatasetError("digits", "needs scikit-learn, which ships the images: pip install scikit-learn") from None
    return load_digits(return_X_y=True)


def load_digits_splits() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """((train images uint8 [1437, 3, 32, 32], labels int64), (test images [360, 3, 32, 32], labels)).

    Upsampling is bilinear from the 8x8 grid (grey levels 0..16 scaled to 0..255), the grey value copied into the
    three channels."""
    pixels, labels = _load_sklearn_digits()
    images = torch.from_numpy(np.asarray(pixels, dtype=np.float32)).view(-1, 1, 8, 8) * (255.0 / 16.0)
    images = F.interpolate(images, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    images = images.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SPLIT_SEED))
    test, train = order[:TEST_IMAGES], order[TEST_IMAGES:]
    return (images[train], labels[train]), (images[test], labels[test])
