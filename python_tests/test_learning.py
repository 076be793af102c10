"""The shipped models learn, at small budgets on real and synthetic images: the default preset close to a plain
CNN on real handwritten digits, the ViT-like preset and the Jacobian-regularized DEQ twin far above chance.
(docs/model-quality.md has the full table over seeds; these are its floor, checked on every change.)"""

import pytest
import torch

from wtext.train import TrainConfig, run

pytest.importorskip("sklearn")
CHANCE = 0.1


@pytest.fixture(autouse=True)
def _one_thread():
    # The thresholds were measured with one thread; other thread counts change float sums, not learning.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def final_accuracy(tmp_path, name, **options) -> float:
    config = TrainConfig(**{"progress": False, "device": "cpu", "run_dir": str(tmp_path / name), **options})
    return run(config)["final_test_accuracy"]


def test_default_preset_learns_real_digits_close_to_the_plain_cnn(tmp_path):
    tied = final_accuracy(tmp_path, "tied", dataset="digits", epochs=2)
    cnn = final_accuracy(tmp_path, "cnn", dataset="digits", epochs=2, model="cnn-reference")
    assert tied >= 0.85, f"resnet-tiny reached {tied:.3f} on digits after 2 epochs"
    assert tied >= cnn - 0.08, f"resnet-tiny {tied:.3f} against the plain CNN's {cnn:.3f}"


def test_vit_preset_learns_the_synthetic_set(tmp_path):
    accuracy = final_accuracy(tmp_path, "vit", model="vit-tiny", depth=3, synthetic_train=2048, synthetic_test=512,
                              epochs=4, batch_size=32)
    assert accuracy >= 0.35, f"vit-tiny reached {accuracy:.3f}"


def test_jacobian_regularized_deq_trains_as_well_as_the_plain_implicit_one(tmp_path):
    common = dict(width=8, depth=3, synthetic_train=1536, synthetic_test=256, epochs=2, batch_size=32, lr=3e-3,
                  mask_mode="same")
    implicit = final_accuracy(tmp_path, "implicit", deq="implicit", **common)
    regularized = final_accuracy(tmp_path, "jr", deq="implicit_jr", **common)
    assert regularized > 3 * CHANCE, f"implicit_jr reached {regularized:.3f}"
    assert regularized >= implicit - 0.1, f"implicit_jr {regularized:.3f} against implicit {implicit:.3f}"
