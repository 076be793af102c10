"""--tensorboard: the event files a run writes, read back with TensorBoard's own reader; their values against
metrics.jsonl; a resumed run's curves; a fused group's runs; the message when the package is missing."""

import builtins
import json
import math
from pathlib import Path

import pytest

from wtext.train import Interrupted, TrainConfig, run
from wtext.train.__main__ import main
from wtext.train.fused import train_fused

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

# 320 images in batches of 16: 20 steps per epoch, host reads (and step scalars) every 10 steps.
TINY = dict(synthetic_train=320, synthetic_test=64, batch_size=16, epochs=2, width=8, depth=1, device="cpu",
            progress=False, tensorboard=True, deterministic=True)
STEP_TAGS = {"train/loss", "train/accuracy", "train/learning_rate", "train/images_per_second"}
EPOCH_TAGS = {"epoch/train_loss", "epoch/train_accuracy", "epoch/test_loss", "epoch/test_accuracy", "epoch/lr",
              "epoch/images_per_second"}


def scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of the run's event files, as TensorBoard shows them: (step, value) in step order."""
    accumulator = event_accumulator.EventAccumulator(str(Path(run_dir) / "tensorboard"),
                                                     size_guidance={event_accumulator.SCALARS: 0})
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_a_run_writes_step_and_epoch_scalars_that_match_its_metrics(tmp_path):
    run_dir = tmp_path / "run"
    run(TrainConfig(**TINY, run_dir=str(run_dir)))
    series = scalars(run_dir)
    assert STEP_TAGS | EPOCH_TAGS <= set(series), sorted(series)
    assert [step for step, _ in series["train/loss"]] == [10, 20, 30, 40]
    for record, (step, accuracy) in zip(records(run_dir), series["epoch/test_accuracy"], strict=True):
        assert step == 20 * record["epoch"]
        assert accuracy == pytest.approx(record["test_accuracy"], rel=1e-6)
    # an epoch's training loss is the image-weighted mean of its two windows (equal windows of 160 images)
    windows = dict(series["train/loss"])
    for record in records(run_dir):
        end = 20 * record["epoch"]
        assert (windows[end - 10] + windows[end]) / 2 == pytest.approx(record["train_loss"], rel=1e-5)
    assert all(0 <= value <= 1 for _, value in series["train/accuracy"])
    assert all(value > 0 for _, value in series["train/images_per_second"])


def test_a_deq_run_logs_its_solver_steps_and_residuals(tmp_path):
    run_dir = tmp_path / "deq"
    run(TrainConfig(**{**TINY, "epochs": 1}, deq="phantom", run_dir=str(run_dir)))
    series = scalars(run_dir)
    assert {"train/solver_steps", "train/solver_residual", "epoch/solver_steps", "epoch/solver_residual"} <= set(series)
    (_, steps), = series["epoch/solver_steps"]
    assert steps == pytest.approx(records(run_dir)[0]["solver_steps"], rel=1e-6)
    assert all(value >= 1 for _, value in series["train/solver_steps"])


def test_a_resumed_run_continues_its_curves_and_drops_what_a_killed_run_logged_late(tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    run(TrainConfig(**TINY, run_dir=str(whole)))
    with pytest.raises(Interrupted):
        run(TrainConfig(**TINY, run_dir=str(split), stop_after_steps=25))
    # What a run killed after its checkpoint would have left: events past the checkpoint's step (25).
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(split / "tensorboard")) as orphan:
        orphan.add_scalar("train/loss", 99.0, 30)
        orphan.add_scalar("epoch/test_accuracy", 99.0, 40)
    run(TrainConfig(**TINY, run_dir=str(split), resume=True))
    expected, resumed = scalars(whole), scalars(split)
    for tag in STEP_TAGS | EPOCH_TAGS:
        assert [step for step, _ in resumed[tag]] == [step for step, _ in expected[tag]], tag
    assert 99.0 not in [value for _, value in resumed["train/loss"] + resumed["epoch/test_accuracy"]]
    # deterministic CPU runs: the resumed run's numbers are the uninterrupted run's
    for tag in ("train/loss", "epoch/test_loss", "epoch/train_loss"):
        assert [value for _, value in resumed[tag]] == pytest.approx([value for _, value in expected[tag]], rel=1e-5)


def test_each_member_of_a_fused_group_writes_its_own_events(tmp_path):
    configs = [TrainConfig(**{**TINY, "epochs": 1}, seed=seed, run_dir=str(tmp_path / f"seed-{seed}"))
               for seed in (0, 1)]
    train_fused(configs, log=lambda line: None)
    for config in configs:
        series = scalars(config.run_dir)
        assert STEP_TAGS | EPOCH_TAGS <= set(series)
        (_, accuracy), = series["epoch/test_accuracy"]
        assert accuracy == pytest.approx(records(config.run_dir)[0]["test_accuracy"], rel=1e-6)


def test_without_tensorboard_the_flag_is_a_clear_error_before_any_work(tmp_path, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    status = main(["--tensorboard", "--run-dir", str(tmp_path / "run"), "--epochs", "1", "--synthetic-train", "32",
                   "--synthetic-test", "16", "--width", "8", "--depth", "1", "--no-progress", "--device", "cpu"])
    error = capsys.readouterr().err.strip()
    assert status == 2
    assert error.count("\n") == 0 and "--tensorboard needs the tensorboard package: pip install tensorboard" in error
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_off_by_default_no_event_files(tmp_path):
    run(TrainConfig(**{**TINY, "epochs": 1, "tensorboard": False}, run_dir=str(tmp_path / "run")))
    assert not (tmp_path / "run" / "tensorboard").exists()
    assert not math.isnan(records(tmp_path / "run")[0]["test_accuracy"])


def test_an_experiments_runs_share_one_log_root(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    from wtext.experiments.__main__ import main as experiments

    out = tmp_path / "masks"
    assert experiments(["masks", "--seeds", "1", "--epochs", "1", "--train-images", "64", "--test-images", "32",
                        "--device", "cpu", "--tensorboard", "--out", str(out)]) == 0
    assert f"tensorboard --logdir {out / 'runs'}" in capsys.readouterr().out
    multiplexer = EventMultiplexer().AddRunsFromDirectory(str(out / "runs"))
    multiplexer.Reload()
    run_names = sorted(multiplexer.Runs())
    finished = sorted(path.parent.relative_to(out / "runs") for path in (out / "runs").glob("*/seed-0/summary.json"))
    assert run_names == [str(run / "tensorboard") for run in finished] and len(run_names) == 6
    for name in run_names:
        assert "epoch/test_accuracy" in multiplexer.GetAccumulator(name).Tags()["scalars"]
