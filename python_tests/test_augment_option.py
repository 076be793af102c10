"""--augment: its parts chosen one by one (crop, flip), auto's defaults per data set, its spellings, and what the
training batches of a CIFAR-format set really hold under each choice."""

import re

import pytest
import torch
import torch.nn.functional as F

from wtext.train import TrainConfig
from wtext.train.trainer import Trainer

from test_data import write_cifar

PAD = 4  # the trainer's crop padding


def tiny_trainer(tmp_path, augment, dataset="cifar10"):
    config = TrainConfig(dataset=dataset, data_dir=str(write_cifar(tmp_path / "cifar", per_batch=8)),
                         augment=augment, batch_size=8, epochs=1, width=8, depth=1, device="cpu", progress=False,
                         run_dir=str(tmp_path / "run"))
    return Trainer(config, write=lambda line: None)


def how_each_image_was_made(trainer, epoch=0) -> list[set[tuple[int, int, bool]]]:
    """For every training image of the epoch, the (row offset, column offset, mirrored) that reproduce it from its
    source image; the source is known from the loader's order."""
    loader = trainer.train_loader
    order = loader.order(epoch)
    sources = trainer.data.train.images
    padded = F.pad(sources, (PAD, PAD, PAD, PAD))
    height, width = sources.shape[-2:]
    found = []
    for index, (batch, _) in enumerate(loader.epoch(epoch)):
        for position, image in enumerate(batch):
            source = padded[order[index * loader.batch_size + position]]
            ways = set()
            for dy in range(2 * PAD + 1):
                for dx in range(2 * PAD + 1):
                    crop = source[:, dy:dy + height, dx:dx + width]
                    for mirrored in (False, True):
                        candidate = crop.flip(-1) if mirrored else crop
                        if torch.equal(loader.normalize(candidate[None])[0], image):
                            ways.add((dy - PAD, dx - PAD, mirrored))
            assert ways, "a training image is no crop or mirror of its source"
            found.append(ways)
    return found


def test_crop_alone_never_mirrors_a_cifar_format_image(tmp_path):
    ways = how_each_image_was_made(tiny_trainer(tmp_path, "crop"))
    assert all(any(not mirrored for _, _, mirrored in way) for way in ways)
    # random images: an image and its mirror differ, so each image is made one way only
    assert all(len(way) == 1 for way in ways)
    assert any((dy, dx) != (0, 0) for way in ways for dy, dx, _ in way), "crop shifted no image"


def test_flip_alone_mirrors_without_shifting(tmp_path):
    ways = [next(iter(way)) for way in how_each_image_was_made(tiny_trainer(tmp_path, "flip"))]
    assert all((dy, dx) == (0, 0) for dy, dx, _ in ways)
    assert {mirrored for _, _, mirrored in ways} == {False, True}


def test_crop_and_flip_do_both_and_none_does_neither(tmp_path):
    both = [next(iter(way)) for way in how_each_image_was_made(tiny_trainer(tmp_path / "both", "crop,flip"))]
    assert {mirrored for _, _, mirrored in both} == {False, True}
    assert any((dy, dx) != (0, 0) for dy, dx, _ in both)
    crop_only = [next(iter(way)) for way in how_each_image_was_made(tiny_trainer(tmp_path / "crop", "crop"))]
    # the crops do not depend on whether flips are on: the same offsets, image for image
    assert [(dy, dx) for dy, dx, _ in both] == [(dy, dx) for dy, dx, _ in crop_only]
    none = [next(iter(way)) for way in how_each_image_was_made(tiny_trainer(tmp_path / "none", "none"))]
    assert none == [(0, 0, False)] * len(none)


@pytest.mark.parametrize("dataset, expected", [("cifar10", (True, True)), ("digits", (True, False)),
                                               ("synthetic", (True, True))])
def test_auto_keeps_each_data_sets_default(dataset, expected):
    flips = dataset != "digits"  # wtext.data's Dataset.flip
    assert TrainConfig(dataset=dataset).augmentation(flips) == expected


def test_an_explicit_flip_is_obeyed_even_on_digits():
    assert TrainConfig(dataset="digits", augment="crop,flip").augmentation(False) == (True, True)
    assert TrainConfig(dataset="digits", augment="flip").augmentation(False) == (False, True)


@pytest.mark.parametrize("given, stored", [("flip,crop", "crop,flip"), (" crop , flip ", "crop,flip"),
                                           ("crop,crop", "crop"), ("auto", "auto"), ("none", "none"),
                                           (True, "auto"), (False, "none")])
def test_one_spelling_is_recorded(given, stored):
    # older config files and checkpoints held a bool: true was today's auto
    assert TrainConfig(augment=given).augment == stored


@pytest.mark.parametrize("given", ["", "rotate", "crop,rotate", "crop,", "auto,crop", "none,flip", "Crop"])
def test_anything_else_is_an_error_naming_the_value(given):
    with pytest.raises(ValueError, match=re.escape("augment must be auto, none, or a comma-separated list of crop and "
                                                   f"flip; got augment={given!r}")):
        TrainConfig(augment=given)
