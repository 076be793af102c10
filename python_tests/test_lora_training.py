"""Transfer runs of python -m wtext.train: --init-from another run's checkpoint, --lora adapters (only adapters and
head train; resume and --eval-only work; adapter.pt written), --train-only, and clear errors for bad inputs."""

import json
from pathlib import Path

import pytest
import torch

from wtext.lora import read_adapter
from wtext.train import Interrupted, TrainConfig, run
from wtext.train.__main__ import main

TINY = dict(model="resnet-tiny", dataset="synthetic", width=8, depth=2, synthetic_train=128, synthetic_test=64,
            batch_size=32, epochs=1, progress=False, device="cpu", deterministic=True)
LORA = "r=2,copies=2,density=0.5"


@pytest.fixture(autouse=True)
def _restore_determinism():
    yield
    torch.use_deterministic_algorithms(False)


def tiny_config(tmp_path, name, **overrides):
    return TrainConfig(**{**TINY, "run_dir": str(tmp_path / name), **overrides})


def checkpoint_model(run_dir) -> dict:
    return torch.load(Path(run_dir) / "checkpoint.pt", weights_only=True)["model"]


def comparable(records):
    return [{k: v for k, v in r.items() if k not in ("time_s", "images_per_second", "eval_time_s")} for r in records]


def read_records(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A pretrained run's checkpoint (module-wide: every test starts from it)."""
    root = tmp_path_factory.mktemp("pretrain")
    run(tiny_config(root, "pretrain"))
    torch.use_deterministic_algorithms(False)
    return root / "pretrain" / "checkpoint.pt"


def test_a_lora_run_trains_only_adapters_and_head(tmp_path, pretrained):
    summary = run(tiny_config(tmp_path, "lora", init_from=str(pretrained), lora=LORA, train_only="head",
                              epochs=2))
    base, trained = checkpoint_model(pretrained.parent), checkpoint_model(tmp_path / "lora")
    adapter_keys = [key for key in trained if ".lora." in key]
    assert adapter_keys and set(trained) == set(base) | set(adapter_keys)
    for key, value in base.items():
        if key.startswith("head."):
            assert not torch.equal(value, trained[key]), key  # the head trained
        else:
            assert torch.equal(value, trained[key]), key  # every base weight bit-identical to the pretrained one
    assert any(not torch.equal(trained[key], torch.zeros_like(trained[key])) for key in adapter_keys if
               key.endswith(".B"))  # the adapters trained (B starts at zero)
    saved = json.loads((tmp_path / "lora" / "summary.json").read_text())
    assert saved["trainable_parameters"] == summary["trainable_parameters"] < saved["parameters"]
    config, tensors = read_adapter(tmp_path / "lora" / "adapter.pt")
    assert config.train_modules == ("head",) and config.rank == 2 and config.seed == 0  # the masks follow mask_seed
    assert set(tensors) == set(adapter_keys) | {"head.weight", "head.bias"}
    assert sum(t.numel() for t in tensors.values()) == saved["trainable_parameters"]
    assert (tmp_path / "lora" / "adapter.pt").stat().st_size < 64_000
    assert json.loads((tmp_path / "lora" / "config.json").read_text())["init_from"] == str(pretrained)


def test_a_plain_run_reports_every_parameter_trainable_and_writes_no_adapter(tmp_path):
    summary = run(tiny_config(tmp_path, "plain"))
    assert summary["trainable_parameters"] == summary["parameters"] > 0
    assert not (tmp_path / "plain" / "adapter.pt").exists()


def test_train_only_freezes_everything_else(tmp_path, pretrained):
    summary = run(tiny_config(tmp_path, "head", init_from=str(pretrained), train_only="head"))
    base, trained = checkpoint_model(pretrained.parent), checkpoint_model(tmp_path / "head")
    assert set(base) == set(trained)
    assert all(torch.equal(value, trained[key]) != key.startswith("head.") for key, value in base.items())
    assert summary["trainable_parameters"] == sum(base[k].numel() for k in ("head.weight", "head.bias"))


def test_resume_of_an_interrupted_lora_run_equals_the_uninterrupted_run(tmp_path, pretrained):
    options = dict(init_from=str(pretrained), lora=LORA, train_only="head", epochs=2)
    whole = run(tiny_config(tmp_path, "whole", **options))
    with pytest.raises(Interrupted):
        run(tiny_config(tmp_path, "split", stop_after_steps=5, **options))  # 4 steps per epoch: inside epoch 2
    resumed = run(tiny_config(tmp_path, "split", resume=True, **options))
    assert comparable(read_records(tmp_path / "whole")) == comparable(read_records(tmp_path / "split"))
    assert whole["final_test_accuracy"] == resumed["final_test_accuracy"]
    a, b = checkpoint_model(tmp_path / "whole"), checkpoint_model(tmp_path / "split")
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_resume_does_not_reapply_init_from(tmp_path, pretrained):
    options = dict(init_from=str(tmp_path / "copy.pt"), lora=LORA, epochs=2)
    (tmp_path / "copy.pt").write_bytes(pretrained.read_bytes())
    with pytest.raises(Interrupted):
        run(tiny_config(tmp_path, "run", stop_after_steps=5, **options))
    (tmp_path / "copy.pt").unlink()  # the resumed run needs only its own checkpoint
    summary = run(tiny_config(tmp_path, "run", resume=True, **options))
    assert summary["epochs"] == 2


def test_eval_only_of_a_lora_checkpoint(tmp_path, pretrained, capsys):
    summary = run(tiny_config(tmp_path, "lora", init_from=str(pretrained), lora=LORA, train_only="head"))
    # The LoRA options come from the checkpoint (model options), so the plain command evaluates the adapted model.
    result = run(TrainConfig(run_dir=str(tmp_path / "lora"), eval_only=True, device="cpu", progress=False))
    assert result["test_accuracy"] == summary["final_test_accuracy"]
    assert main(["--run-dir", str(tmp_path / "lora"), "--eval-only", "--device", "cpu"]) == 0
    with pytest.raises(ValueError, match="trained with lora='r=2,copies=2,density=0.5'"):
        run(TrainConfig(run_dir=str(tmp_path / "lora"), eval_only=True, device="cpu", lora="r=3"))


def test_a_head_of_another_shape_starts_fresh(tmp_path, pretrained, capsys):
    state = torch.load(pretrained, weights_only=True)
    state["model"]["head.weight"] = torch.zeros(3, state["model"]["head.weight"].shape[1])
    state["model"]["head.bias"] = torch.zeros(3)
    torch.save(state, tmp_path / "three-classes.pt")
    run(tiny_config(tmp_path, "run", init_from=str(tmp_path / "three-classes.pt"), train_only="head"))
    assert "the classifier head has another shape (head.weight (3, 256) -> (10, 256)" in capsys.readouterr().out
    trained = checkpoint_model(tmp_path / "run")
    assert all(torch.equal(value, trained[key]) for key, value in state["model"].items() if not key.startswith("head"))


@pytest.mark.parametrize("options, message", [
    (dict(lora="r=0"), "lora: rank must be an int >= 1; got rank=0"),
    (dict(lora="r=4,colour=red"), "unknown LoRA option 'colour'"),
    (dict(lora="r=4,density=2"), "lora: density"),
    (dict(lora_targets="cells.*.conv1"), "lora_targets applies to LoRA runs only"),
    (dict(lora="r=4,train_modules=head", train_only="head"), "set them once"),
    (dict(train_only=","), "train_only must hold at least one module-name pattern"),
])
def test_bad_lora_options_are_clear_errors_at_construction(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(tmp_path, "run", **options)


def test_bad_inputs_at_build_time_are_clear_errors(tmp_path, pretrained):
    with pytest.raises(ValueError, match=r"LoRA targets \['nothing\.\*'\] match no module of the TiedResNet"):
        run(tiny_config(tmp_path, "a", lora="r=2", lora_targets="nothing.*"))
    with pytest.raises(ValueError, match="train_only pattern 'neck' matches no module"):
        run(tiny_config(tmp_path, "b", train_only="neck"))
    with pytest.raises(FileNotFoundError, match="--init-from .*missing.pt: no such checkpoint file"):
        run(tiny_config(tmp_path, "c", init_from=str(tmp_path / "missing.pt")))
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="notes.pt: not a readable checkpoint"):
        run(tiny_config(tmp_path, "d", init_from=str(tmp_path / "notes.pt")))
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: not a wtext checkpoint"):
        run(tiny_config(tmp_path, "e", init_from=str(tmp_path / "other.pt")))
    with pytest.raises(ValueError, match=r"do not fit this run's model \(resnet-tiny\): shapes differ: "):
        run(tiny_config(tmp_path, "f", init_from=str(pretrained), width=16))
    with pytest.raises(ValueError, match="it was trained with mask_seed=0, this run has mask_seed=1"):
        run(tiny_config(tmp_path, "g", init_from=str(pretrained), mask_seed=1))
    with pytest.raises(ValueError, match="it was trained with density=None, this run has density=0.3"):
        run(tiny_config(tmp_path, "g2", init_from=str(pretrained), density=0.3))
    run(tiny_config(tmp_path, "g3", init_from=str(pretrained), density=0.5))  # the preset's density: same masks
    lora_run = tiny_config(tmp_path, "h", init_from=str(pretrained), lora="r=2")
    run(lora_run)  # a LoRA run's checkpoint has adapter keys a plain model lacks
    with pytest.raises(ValueError, match=r"not in this model: cells\.0\.conv1\.lora\.A"):
        run(tiny_config(tmp_path, "i", init_from=str(tmp_path / "h" / "checkpoint.pt")))


def test_the_command_line_takes_the_transfer_options(tmp_path, pretrained, capsys):
    args = ["--dataset", "synthetic", "--synthetic-train", "64", "--synthetic-test", "32", "--epochs", "1",
            "--width", "8", "--depth", "2", "--device", "cpu", "--no-progress", "--run-dir", str(tmp_path / "cli"),
            "--init-from", str(pretrained), "--lora", LORA, "--lora-targets", "cells.*.conv1", "--train-only", "head"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "trainable parameters" in out and "initialized from" in out
    config, _ = read_adapter(tmp_path / "cli" / "adapter.pt")
    assert config.targets == ("cells.*.conv1",)
    with pytest.raises(SystemExit):
        main([*args[:-8], "--lora", "r=0"])
    assert "lora: rank must be an int >= 1" in capsys.readouterr().err


def test_sweep_options_may_be_functions_of_the_seed(tmp_path):
    from wtext.experiments.sweep import Sweep

    sweep = Sweep(tmp_path, TINY, log=lambda message: None, seeds=(0, 1))
    jobs = sweep.jobs({"transfer": {"init_from": lambda seed: f"pretrain/seed-{seed}/checkpoint.pt"}})
    assert [job.config.init_from for job in jobs] == ["pretrain/seed-0/checkpoint.pt", "pretrain/seed-1/checkpoint.pt"]


def test_staged_sweep_transfers_from_the_same_seed_and_workers_go_stage_by_stage(tmp_path):
    from wtext.experiments.sweep import PlanShown, Sweep, WorkerFinished, run_dir_of

    stages = [{"pretrain": {}},
              {"transfer": {"lora": "r=2", "train_only": "head", "init_from":
                            lambda seed: str(run_dir_of(tmp_path, "pretrain", seed) / "checkpoint.pt")}}]
    log = []
    with pytest.raises(PlanShown):  # a dry run plans every stage (the later one's weights do not exist yet)
        Sweep(tmp_path, TINY, log=log.append, seeds=(0, 1), dry_run=True).run_stages(stages)
    assert sum(" seed " in line and "~" in line for line in log) == 4 and "trainable)" in log[-2]
    for stage in ("pretrain", "transfer"):  # one stage per round of workers
        log.clear()
        with pytest.raises(WorkerFinished):
            Sweep(tmp_path, TINY, log=log.append, seeds=(0, 1), worker=(0, 1)).run_stages(stages)
        assert [line.split("] ")[1] for line in log if line.endswith(": training")] == [
            f"{stage} seed 0: training", f"{stage} seed 1: training"]
    results = Sweep(tmp_path, TINY, log=lambda message: None, seeds=(0, 1), train=False).run_stages(stages)
    assert [r["config"]["init_from"] for r in results["transfer"]] == [
        str(run_dir_of(tmp_path, "pretrain", seed) / "checkpoint.pt") for seed in (0, 1)]
    for seed in (0, 1):  # each transfer's frozen base is the pretraining run of its own seed
        base = checkpoint_model(run_dir_of(tmp_path, "pretrain", seed))
        trained = checkpoint_model(run_dir_of(tmp_path, "transfer", seed))
        assert all(torch.equal(value, trained[key]) for key, value in base.items() if not key.startswith("head."))
