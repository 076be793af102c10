"""python -m wtext.train: run directory, resume after an interruption equals the uninterrupted run, evaluation of a
checkpoint, config file and CLI precedence, bad options, and data-parallel training against one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wtext.train import Interrupted, TrainConfig, read_config_file, resolve_config, run

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(model="resnet-tiny", width=8, depth=2, synthetic_train=128, synthetic_test=64, batch_size=32,
            epochs=2, progress=False, deterministic=True)


@pytest.fixture(autouse=True)
def _restore_determinism():
    yield
    torch.use_deterministic_algorithms(False)


def tiny_config(tmp_path, name="run", **overrides):
    return TrainConfig(**{**TINY, "run_dir": str(tmp_path / name), **overrides})


def model_state(run_dir):
    return torch.load(Path(run_dir) / "checkpoint.pt", weights_only=False)["model"]


def comparable(records):
    return [{k: v for k, v in r.items() if k not in ("time_s", "images_per_second", "eval_time_s")} for r in records]


def read_records(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_a_run_leaves_config_metrics_summary_checkpoint_and_plot(tmp_path):
    summary = run(tiny_config(tmp_path))
    run_dir = tmp_path / "run"
    for name in ("config.json", "metrics.jsonl", "summary.json", "checkpoint.pt", "curves.png"):
        assert (run_dir / name).is_file(), name
    records = read_records(run_dir)
    assert [r["epoch"] for r in records] == [1, 2]
    assert {"train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr", "time_s",
            "images_per_second"} <= records[0].keys()
    assert json.loads((run_dir / "config.json").read_text())["width"] == 8
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved["final_test_accuracy"] == records[-1]["test_accuracy"] == summary["final_test_accuracy"]
    assert saved["parameters"] > 0 and saved["wall_time_s"] > 0


@pytest.mark.parametrize("deq", [None, "reversible"])
def test_resume_after_interruption_equals_the_uninterrupted_run(tmp_path, deq):
    run(tiny_config(tmp_path, "whole", deq=deq))
    interrupted = tiny_config(tmp_path, "split", stop_after_steps=5, deq=deq)  # 4 steps per epoch: stops in epoch 2
    with pytest.raises(Interrupted):
        run(interrupted)
    checkpoint = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=False)
    assert (checkpoint["epoch"], checkpoint["step_in_epoch"]) == (1, 1)
    run(tiny_config(tmp_path, "split", resume=True, deq=deq))
    whole, split = model_state(tmp_path / "whole"), model_state(tmp_path / "split")
    assert whole.keys() == split.keys()
    for key in whole:
        assert torch.equal(whole[key], split[key]), key
    assert comparable(read_records(tmp_path / "whole")) == comparable(read_records(tmp_path / "split"))


def test_resume_refuses_changed_options(tmp_path):
    with pytest.raises(Interrupted):
        run(tiny_config(tmp_path, stop_after_steps=2))
    with pytest.raises(ValueError, match=r"was written with lr=0.001, this run has lr=0.01"):
        run(tiny_config(tmp_path, resume=True, lr=0.01))


def test_eval_only_reproduces_the_last_test_accuracy(tmp_path):
    run(tiny_config(tmp_path))
    result = run(tiny_config(tmp_path, eval_only=True))
    assert result["test_accuracy"] == read_records(tmp_path / "run")[-1]["test_accuracy"]
    with pytest.raises(FileNotFoundError, match=r"checkpoint not found"):
        run(tiny_config(tmp_path, eval_only=True, checkpoint=str(tmp_path / "none.pt")))


def test_deq_twin_trains_and_logs_solver_statistics(tmp_path):
    run(tiny_config(tmp_path, deq="phantom", epochs=1))
    record = read_records(tmp_path / "run")[0]
    assert record["solver_steps"] >= 1 and record["solver_residual"] >= 0
    assert "backward_solver_steps" not in record  # the phantom gradient has no adjoint solve


def test_reversible_deq_twin_logs_its_reconstruction_error(tmp_path, capsys):
    run(tiny_config(tmp_path, deq="reversible", epochs=1, deq_check_every=2))
    record = read_records(tmp_path / "run")[0]
    assert 0 <= record["reconstruction_error"] <= 1e-4  # within the variant's bound
    assert 1 <= record["solver_steps"] <= 8
    assert "backward_solver_steps" not in record
    assert "reconstruction error" in capsys.readouterr().out


def test_deq_check_every_ends_solves_early_with_the_same_training(tmp_path, monkeypatch):
    """--deq-check-every 2 reaches both the forward and the adjoint solves (their steps land in the metrics, within
    the implicit variant's budgets of 18 and 20) and changes nothing but the time: same weights, same metrics.
    The tolerances are loosened so that this tiny model's solves do end early (at the variant's own, 1e-3 and
    1e-6, its solves run the whole budget at the start of training)."""
    import dataclasses

    from wtext.deq.tracking import ConvergenceTracker
    from wtext.models import presets

    loose = dataclasses.replace(presets.DEQ_VARIANTS["implicit"], f_tol=0.1, b_tol=0.2)
    monkeypatch.setitem(presets.DEQ_VARIANTS, "implicit", loose)
    ended = []  # max_iter of each solve that ended early
    all_stopped = ConvergenceTracker.all_stopped

    def counted(self, step, z):
        stopped = all_stopped(self, step, z)
        if stopped:
            ended.append(self.max_iter)
        return stopped

    monkeypatch.setattr(ConvergenceTracker, "all_stopped", counted)
    run(tiny_config(tmp_path, "early", deq="implicit", deq_check_every=2, epochs=1))
    assert {18, 20} <= set(ended)  # forward (budget 18) and adjoint (budget 20) solves both ended early
    ended.clear()
    run(tiny_config(tmp_path, "full", deq="implicit", epochs=1))
    assert not ended
    early, full = read_records(tmp_path / "early")[0], read_records(tmp_path / "full")[0]
    assert 0 < early["solver_steps"] <= 18 and 0 < early["backward_solver_steps"] <= 20
    assert comparable([early]) == comparable([full])
    early_state, full_state = model_state(tmp_path / "early"), model_state(tmp_path / "full")
    for key in full_state:
        assert torch.equal(early_state[key], full_state[key]), key


def test_deq_check_every_is_checked():
    with pytest.raises(ValueError, match=r"deq_check_every applies to DEQ twins only; got deq_check_every=2 without"):
        TrainConfig(deq_check_every=2)
    with pytest.raises(ValueError, match=r"deq_check_every must be >= 0; got deq_check_every=-1"):
        TrainConfig(deq="implicit", deq_check_every=-1)
    with pytest.raises(ValueError, match=r"deq_check_every must be int; got deq_check_every=1.5"):
        TrainConfig(deq="implicit", deq_check_every=1.5)
    from wtext.train.model_builder import model_for
    model = model_for(TrainConfig(model="resnet-tiny", deq="phantom", deq_check_every=3), 10)
    assert (model.config.deq.f_check_every, model.config.deq.b_check_every) == (3, 3)
    assert model.config.deq.backward == "phantom"  # the rest of the variant is kept


def test_a_checkpoint_with_fewer_running_sums_resumes(tmp_path):
    """Checkpoints written before backward_solver_steps / backward_solves existed hold 6 running sums: they are
    padded with zeros, and the resumed run ends where the uninterrupted one does; more sums than this wtext knows is
    a clear error."""
    from wtext.train.running import RUNNING_KEYS, restore_running

    run(tiny_config(tmp_path, "whole"))
    with pytest.raises(Interrupted):
        run(tiny_config(tmp_path, "split", stop_after_steps=5))
    path = tmp_path / "split" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    assert state["running"].shape == (len(RUNNING_KEYS),)
    state["running"] = state["running"][:6]  # the older layout
    torch.save(state, path)
    run(tiny_config(tmp_path, "split", resume=True))
    assert comparable(read_records(tmp_path / "whole")) == comparable(read_records(tmp_path / "split"))
    too_many = len(RUNNING_KEYS) + 1
    with pytest.raises(ValueError, match=rf"holds {too_many} running sums, this wtext knows {too_many - 1} .*newer"):
        restore_running(torch.zeros(too_many, dtype=torch.float64), torch.device("cpu"))


def test_config_file_then_command_line(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('epochs = 3\nlr = 0.01\nmask_mode = "same"\ndensity = 0.7\n')
    config = resolve_config(["--config", str(toml), "--lr", "0.02", "--augment", "none"])
    assert (config.epochs, config.lr, config.mask_mode, config.density, config.augment) == (3, 0.02, "same", 0.7,
                                                                                           "none")
    assert resolve_config([]).lr == 1e-3
    yaml = pytest.importorskip("yaml")
    yml = tmp_path / "run.yaml"
    yml.write_text(yaml.safe_dump({"epochs": 5, "pattern": "nm"}))
    config = resolve_config(["--config", str(yml), "--epochs", "2"])
    assert (config.epochs, config.pattern) == (2, "nm")


def test_bad_config_files_and_options(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("epoch = 3\n")
    with pytest.raises(ValueError, match=r"bad.toml: unknown option 'epoch'"):
        read_config_file(bad)
    bad.write_text("epochs = [\n")
    with pytest.raises(ValueError, match=r"not valid TOML"):
        read_config_file(bad)
    with pytest.raises(ValueError, match=r"config files must end in .toml, .yaml or .yml"):
        read_config_file(tmp_path / "x.json") if (tmp_path / "x.json").write_text("{}") else None
    for argv, message in [(["--density", "1.5"], "density must be in (0, 1]; got density=1.5"),
                          (["--epochs", "0"], "epochs must be >= 1; got epochs=0"),
                          (["--nm", "2-4"], "nm must look like N:M"),
                          (["--model", "resnet-huge"], "invalid choice: 'resnet-huge'")]:
        with pytest.raises(SystemExit):
            resolve_config(argv)
        assert message in capsys.readouterr().err


def run_module(*args, env_extra=None, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_data_parallel_training_matches_one_process_with_the_same_global_batch(tmp_path):
    options = ["--model", "resnet-tiny", "--width", "8", "--depth", "2", "--synthetic-train", "128",
               "--synthetic-test", "64", "--batch-size", "32", "--epochs", "2", "--no-progress", "--device", "cpu"]
    parallel = run_module("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "wtext.train",
                          *options, "--run-dir", str(tmp_path / "ddp"), env_extra={"OMP_NUM_THREADS": "1"})
    assert parallel.returncode == 0, parallel.stderr[-3000:]
    single = run_module("-m", "wtext.train", *options, "--interleave", "2", "--run-dir", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr[-3000:]
    ddp, one = model_state(tmp_path / "ddp"), model_state(tmp_path / "one")
    for key in one:
        torch.testing.assert_close(ddp[key], one[key], rtol=1e-4, atol=1e-5, msg=key)
    ddp_records, one_records = read_records(tmp_path / "ddp"), read_records(tmp_path / "one")
    for a, b in zip(ddp_records, one_records):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)


def test_the_main_job_command_line_runs(tmp_path):
    result = run_module("-m", "wtext.train", "--synthetic-train", "64", "--synthetic-test", "32", "--epochs", "1",
                        "--width", "8", "--batch-size", "32", "--run-dir", str(tmp_path / "cli"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "best test accuracy" in result.stdout
    missing = run_module("-m", "wtext.train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "data directory not found" in missing.stderr


def test_ctrl_c_checkpoints_and_the_run_resumes(tmp_path):
    import signal
    import time

    run_dir = tmp_path / "sigint"
    options = ["-m", "wtext.train", "--width", "8", "--depth", "2", "--synthetic-train", "2048", "--synthetic-test",
               "64", "--epochs", "2", "--batch-size", "32", "--no-progress", "--run-dir", str(run_dir)]
    process = subprocess.Popen([sys.executable, *options], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:  # wait until training has started
        if "parameters" in line:
            break
    time.sleep(1.5)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    assert "checkpoint saved" in out
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert state["epoch"] * 64 + state["step_in_epoch"] > 0
    resumed = run_module(*options, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [r["epoch"] for r in read_records(run_dir)] == [1, 2]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_training_on_cuda_with_bf16_autocast_and_channels_last(tmp_path):
    summary = run(tiny_config(tmp_path, device="cuda", bf16=True, channels_last=True, deterministic=False,
                              synthetic_train=512, epochs=2))
    assert summary["final_test_accuracy"] > 0.1
    records = read_records(tmp_path / "run")
    assert records[-1]["train_loss"] < records[0]["train_loss"]
