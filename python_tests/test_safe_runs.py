"""Runs that lose nothing and report nothing false: a run killed with SIGKILL anywhere resumes to the uninterrupted
result (mid-epoch checkpoints included), a diverged run stops with the last finite checkpoint, an evaluated
checkpoint is evaluated with the masks it was trained with, and checkpoints are read without running code."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wtext.train import NonFiniteLoss, TrainConfig, run
from wtext.train.checkpoint import load_checkpoint
from wtext.train.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
# 4 steps per epoch, 3 epochs; periodic checkpoints every 3 steps (not aligned with the epochs).
OPTIONS = ["--width", "8", "--depth", "2", "--synthetic-train", "128", "--synthetic-test", "64", "--batch-size", "32",
           "--epochs", "3", "--no-progress", "--deterministic", "--device", "cpu", "--checkpoint-every-steps", "3",
           "--checkpoint-every-seconds", "0"]
TIMING_KEYS = ("time_s", "images_per_second", "eval_time_s")


def train_process(run_dir, *extra, crash_at=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("WTEXT_CRASH_AT", None)
    if crash_at:
        env["WTEXT_CRASH_AT"] = crash_at
    return subprocess.run([sys.executable, "-m", "wtext.train", *OPTIONS, "--run-dir", str(run_dir), *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def outcome(run_dir):
    """What a finished run leaves: its final weights, metrics without timings, and summary accuracies."""
    state = load_checkpoint(Path(run_dir) / "checkpoint.pt")
    records = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    records = [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    return state["model"], records, (summary["final_test_accuracy"], summary["best_test_accuracy"])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    result = train_process(run_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    return outcome(run_dir)


# Checkpoint events of the run: 1 at the start, then steps 3, 6, 9 (periodic, mid-epoch) and the ends of epochs 1,
# 2, 3 at steps 4, 8, 12: in order start=1, step3=2, epoch1=3, step6=4, epoch2=5, step9=6, epoch3=7.
KILLS = [
    ("step:1", "before the first periodic checkpoint and before the first epoch ends"),
    ("step:5", "mid-epoch, two steps after a periodic checkpoint"),
    ("checkpoint:3", "after the end-of-epoch-1 checkpoint, before its metrics line"),
    ("metrics:2", "right after the metrics line of epoch 2"),
    ("checkpoint:7", "after the last checkpoint, before the summary"),
]


@pytest.mark.parametrize("crash_at, where", KILLS, ids=[k for k, _ in KILLS])
def test_a_run_killed_anywhere_resumes_to_the_uninterrupted_result(tmp_path, uninterrupted, crash_at, where):
    run_dir = tmp_path / "run"
    killed = train_process(run_dir, crash_at=crash_at)
    assert killed.returncode == -signal.SIGKILL, f"not killed {where}: {killed.stderr[-1000:]}"
    resumed = train_process(run_dir, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    weights, records, accuracies = outcome(run_dir)
    whole_weights, whole_records, whole_accuracies = uninterrupted
    for key in whole_weights:
        assert torch.equal(weights[key], whole_weights[key]), f"{key} differs after a kill {where}"
    assert records == whole_records, where
    assert accuracies == whole_accuracies


def test_a_run_killed_twice_resumes_twice(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    assert train_process(run_dir, crash_at="step:2").returncode == -signal.SIGKILL
    assert train_process(run_dir, "--resume", crash_at="step:5").returncode == -signal.SIGKILL
    resumed = train_process(run_dir, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    weights, records, _ = outcome(run_dir)
    assert records == uninterrupted[1]
    assert all(torch.equal(weights[k], v) for k, v in uninterrupted[0].items())


TINY = dict(model="resnet-tiny", width=8, depth=2, synthetic_train=128, synthetic_test=64, batch_size=32, epochs=2,
            progress=False, deterministic=True, device="cpu", checkpoint_every_seconds=0.0)


@pytest.fixture(autouse=True)
def _restore_determinism():
    yield
    torch.use_deterministic_algorithms(False)


def test_a_diverging_run_stops_with_the_last_finite_checkpoint(tmp_path, monkeypatch, capsys):
    """The model's logits turn to NaN at the 6th step: the run stops with exit 3, names the cause, and the
    checkpoint it leaves is finite and resumable."""
    import wtext.train.trainer as trainer_module

    calls = {"n": 0}
    real_model_for = trainer_module.model_for

    def poisoned_model_for(config, num_classes):
        model = real_model_for(config, num_classes)
        real_forward = model.forward

        def forward(images):
            logits = real_forward(images)
            if model.training:
                calls["n"] += 1
                if calls["n"] >= 6:
                    return logits * float("nan")
            return logits

        model.forward = forward
        return model

    monkeypatch.setattr(trainer_module, "model_for", poisoned_model_for)
    run_dir = tmp_path / "run"
    argv = ["--width", "8", "--depth", "2", "--synthetic-train", "128", "--synthetic-test", "64", "--batch-size", "32",
            "--epochs", "3", "--no-progress", "--device", "cpu", "--run-dir", str(run_dir)]
    assert main(argv) == 3
    error = capsys.readouterr().err
    assert "the training loss became non-finite in epoch 2" in error and "Lower --lr" in error
    state = load_checkpoint(run_dir / "checkpoint.pt")
    assert (state["epoch"], state["step_in_epoch"]) == (1, 0)  # the end of epoch 1: the last finite state
    assert all(tensor.isfinite().all() for tensor in state["model"].values() if tensor.is_floating_point())
    assert [r["epoch"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())] == [1]


def test_non_finite_check_reads_parameters_too(tmp_path):
    from wtext.train import Trainer

    trainer = Trainer(TrainConfig(**TINY, run_dir=str(tmp_path / "run")))
    trainer.check_finite()
    with torch.no_grad():
        next(trainer.core.parameters())[0] = float("inf")
    with pytest.raises(NonFiniteLoss, match=r"holds the last finite state"):
        trainer.check_finite()


def test_eval_only_uses_the_checkpoints_mask_settings(tmp_path):
    run(TrainConfig(**TINY, run_dir=str(tmp_path / "run"), density=0.7, mask_seed=5, pattern="exact"))
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["test_accuracy"]
    # Options left at their defaults take the trained values: the same network, the same accuracy.
    result = run(TrainConfig(**TINY, run_dir=str(tmp_path / "run"), eval_only=True))
    assert result["test_accuracy"] == last
    for option, value in [("mask_seed", 6), ("density", 0.5), ("pattern", "nm"), ("mask_mode", "same"),
                          ("width", 16)]:
        with pytest.raises(ValueError, match=rf"was trained with {option}=.*--eval-only evaluates the model as it "
                                             rf"was trained, so {option}={value!r} cannot apply"):
            run(TrainConfig(**{**TINY, option: value}, run_dir=str(tmp_path / "run"), eval_only=True))


def test_a_checkpoint_whose_weights_do_not_fit_is_a_clear_error(tmp_path):
    run(TrainConfig(**{**TINY, "epochs": 1}, run_dir=str(tmp_path / "run")))
    path = tmp_path / "run" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    state["model"] = {k: v[..., :1] if v.dim() else v for k, v in state["model"].items()}
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"checkpoint.pt: its weights do not fit the model of this run "
                                         r"\(resnet-tiny\): size mismatch"):
        run(TrainConfig(**TINY, run_dir=str(tmp_path / "run"), eval_only=True))


def test_checkpoints_of_the_old_format_are_refused_clearly(tmp_path):
    import numpy as np

    path = tmp_path / "old.pt"
    torch.save({"model": {}, "rng": {"numpy": np.random.get_state()}}, path)  # format 1 pickled numpy arrays
    with pytest.raises(ValueError, match=r"old.pt: refused to load: it names the Python object numpy"):
        load_checkpoint(path)
    torch.save({"model": {}}, path)
    with pytest.raises(ValueError, match=r"checkpoint format 1, this wtext reads format 2"):
        load_checkpoint(path)


def test_time_based_checkpoints_resume_to_the_uninterrupted_result(tmp_path):
    """Checkpoints by time are decided at the every-10-steps host reads: with a tiny interval, steps 10 and 20 of a
    22-step epoch. A kill after the second (checkpoint 3, counting the start) resumes exactly."""
    timed = ["--synthetic-train", "704", "--epochs", "1", "--checkpoint-every-steps", "0",
             "--checkpoint-every-seconds", "1e-6"]
    whole = train_process(tmp_path / "whole", *timed)
    assert whole.returncode == 0, whole.stderr[-2000:]
    assert train_process(tmp_path / "split", *timed, crash_at="checkpoint:3").returncode == -signal.SIGKILL
    state = load_checkpoint(tmp_path / "split" / "checkpoint.pt")
    assert (state["epoch"], state["step_in_epoch"]) == (0, 20)
    resumed = train_process(tmp_path / "split", *timed, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    weights, records, accuracies = outcome(tmp_path / "split")
    whole_weights, whole_records, whole_accuracies = outcome(tmp_path / "whole")
    assert all(torch.equal(weights[k], v) for k, v in whole_weights.items())
    assert (records, accuracies) == (whole_records, whole_accuracies)


def test_eval_only_takes_the_data_of_the_run_unless_given(tmp_path):
    run(TrainConfig(**{**TINY, "epochs": 1, "synthetic_test": 48}, run_dir=str(tmp_path / "run")))
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["test_accuracy"]
    # Nothing but the run directory: model, masks and data (48 test images) come from the checkpoint.
    result = run(TrainConfig(eval_only=True, run_dir=str(tmp_path / "run"), device="cpu", progress=False))
    assert (result["test_accuracy"], result["test_images"]) == (last, 48)
    other = run(TrainConfig(eval_only=True, run_dir=str(tmp_path / "run"), device="cpu", progress=False,
                            synthetic_test=32))
    assert other["test_images"] == 32
