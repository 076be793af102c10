"""What an experiment measures once its runs are trained: accuracies and times from each run's metrics, and, from a
run reloaded from its checkpoint, the CKA between its tied applications and the Hamming distance between their
masks; learned-mask runs' per-epoch mask statistics from their metrics.

A result is what the sweep returns per (run, seed): {"seed", "config", "summary", "metrics"}; results maps a run's
name to its results in seed order.
"""

import statistics
from pathlib import Path

import torch

from wtext import models
from wtext.analysis import cka_matrix
from wtext.analysis.mask_statistics import mean_pairwise_hamming
from wtext.data import DatasetCache, DeviceLoader
from wtext.nn import match_frozen_masks
from wtext.nn.mask_overlap import consecutive_hamming
from wtext.nn.tied_weight import TiedMaskedWeight
from wtext.train import TrainConfig
from wtext.train.checkpoint import load_checkpoint
from wtext.train.model_builder import model_for


def final_accuracies(results: dict, name: str) -> list[float]:
    """The run's final test accuracy per seed (the last epoch's: nothing is selected on the test set)."""
    return [r["summary"]["final_test_accuracy"] for r in results[name]]


def best_accuracies(results: dict, name: str) -> list[float]:
    return [r["summary"]["best_test_accuracy"] for r in results[name]]


def epoch_seconds(result: dict) -> float:
    """Mean training time of the run's epochs, in seconds."""
    return statistics.mean(m["time_s"] for m in result["metrics"])


def final_metric(result: dict, key: str) -> float:
    """A per-epoch metric's value in the run's last epoch (nan where the run does not record it, e.g. a static-mask
    run's mask_hamming)."""
    return result["metrics"][-1].get(key, float("nan"))


def metric_curve(result: dict, key: str) -> list[float]:
    """A per-epoch metric over the run's epochs (nan in epochs without it)."""
    return [m.get(key, float("nan")) for m in result["metrics"]]


def mean_metric(result: dict, key: str) -> float:
    """Mean of a per-epoch metric over the epochs that have it (nan where none has, e.g. a weight-tied run's solver
    steps)."""
    values = [m[key] for m in result["metrics"] if key in m]
    return statistics.mean(values) if values else float("nan")


def trained_run(result: dict, datasets: DatasetCache):
    """(config, model with the run's trained weights, data) of a finished run. datasets: shared by the runs of an
    experiment, so each distinct data set is loaded once."""
    config = TrainConfig(**{**result["config"], "progress": False})
    data = datasets(config.dataset, config.data_dir, synthetic_train=config.synthetic_train,
                    synthetic_test=config.synthetic_test, seed=config.seed)
    model = model_for(config, data.num_classes)
    state = load_checkpoint(Path(config.run_dir) / "checkpoint.pt")["model"]
    match_frozen_masks(model, state)  # a run trained with --freeze-masks keeps its learned masks as bits
    model.load_state_dict(state)
    return config, model, data


def cka_of_run(result: dict, log, datasets: DatasetCache) -> tuple[list[str], torch.Tensor]:
    """Minibatch linear CKA between every pair of tied applications of a trained run (its checkpoint)."""
    config, model, data = trained_run(result, datasets)
    return cka_of_model(model, data, config, log)


def cka_of_model(model, data, config: TrainConfig, log) -> tuple[list[str], torch.Tensor]:
    """The representations' names and their (n, n) CKA matrix, on at most 20 test batches of 128 images."""
    loader = DeviceLoader(data.test, 128, data.mean, data.std, train=False)
    log(f"CKA of {config.run_dir} on {len(data.test)} test images")
    return cka_matrix(model, loader.epoch(0), max_batches=20)


def off_diagonal_mean(matrix: torch.Tensor) -> float:
    """Mean of an (n, n) matrix's entries off its diagonal."""
    count = matrix.shape[0]
    return ((matrix.sum() - matrix.diagonal().sum()) / (count * count - count)).item()


def mask_hamming(model, config: TrainConfig) -> float:
    """Measured mean fraction of weights whose mask differs between consecutive applications, over the model's tied
    weights (masks regenerated from the run's spec)."""
    tied = [module for module in model.modules() if isinstance(module, TiedMaskedWeight)]
    if not tied:
        raise ValueError(f"mask-overlap needs a model with tied weights; {config.model} has none (drop --model)")
    return statistics.mean(consecutive_hamming(module.application_masks()) for module in tied)


def applications_hamming(model) -> float:
    """Mean over the model's tied weights of the mean pairwise Hamming distance between the masks its applications
    use, measured on the masks: 0 where every application reads one mask (same-mask, dense), nan for a model with a
    single application per weight (a DEQ twin). The quantity a learned run records per epoch as mask_hamming."""
    tied = [module for module in model.modules() if isinstance(module, TiedMaskedWeight)]
    if not tied:
        raise ValueError(f"mask Hamming distances need a model with tied weights; {type(model).__name__} has none")
    values = []
    for module in tied:
        masks = module.application_masks()
        # One view serves every application (same-mask, dense): identical masks, distance 0.
        values.append(0.0 if masks.shape[0] == 1 and module.applications > 1 else mean_pairwise_hamming(masks))
    return statistics.mean(values)


def mask_density(config: dict) -> float:
    """The share p of each weight a run's masks keep: its density, or its preset's when unset; 1 for dense runs
    and models without masks."""
    preset = models.preset_config(config["model"])
    if config["mask_mode"] == "dense" or not hasattr(preset, "mask"):
        return 1.0
    return preset.mask.density if config["density"] is None else config["density"]


def independent_hamming(density: float) -> float:
    """Expected Hamming distance between two independent random masks of density p: 2p(1 − p) (an element differs
    when one mask keeps it and the other does not)."""
    return 2 * density * (1 - density)
