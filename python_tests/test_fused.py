"""Fused sweeps (wtext.train.fused): a fused step equals each member's solo step, a fused training run equals the
members' solo runs and leaves the same files, grouping and refusals, evaluation of a member's checkpoint, skipping
finished members and resuming an interrupted group."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from wtext.models.fused_resnet import FusedTiedResNet
from wtext.train import Interrupted, TrainConfig, run
from wtext.train.fused import train_fused
from wtext.train.fusion_groups import FusionError, explain_groups, group_for_fusion
from wtext.train.model_builder import model_for

TINY = dict(model="resnet-tiny", width=8, depth=2, synthetic_train=128, synthetic_test=64, batch_size=32,
            epochs=1, device="cpu", progress=False)
# Mixed members: every mask mode, two densities, other mask seeds, seeds, optimizers and learning rates.
MEMBERS = [dict(mask_mode="multi", density=0.5),
           dict(mask_mode="same", density=0.3, mask_seed=3),
           dict(mask_mode="dense", seed=2, lr=3e-3),
           dict(mask_mode="multi", density=0.3, seed=1, mask_seed=5, optimizer="sgd", lr=0.01)]
TIMING = ("time_s", "images_per_second", "eval_time_s")


def configs(root: Path, prefix: str, **overrides) -> list[TrainConfig]:
    return [TrainConfig(**{**TINY, **member, **overrides, "run_dir": str(root / f"{prefix}{i}")})
            for i, member in enumerate(MEMBERS)]


def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def checkpoint(run_dir) -> dict:
    return torch.load(Path(run_dir) / "checkpoint.pt", weights_only=True)


def quiet(message):
    pass


@pytest.mark.parametrize("channels_last", [False, True])
def test_a_fused_step_gives_each_member_its_solo_logits_and_gradients(channels_last):
    models = []
    for index, member in enumerate(MEMBERS):
        torch.manual_seed(index)
        models.append(model_for(TrainConfig(**{**TINY, **member}), 10))
    fused = FusedTiedResNet(models)
    generator = torch.Generator().manual_seed(0)
    images = [torch.randn(8, 3, 32, 32, generator=generator) for _ in models]
    labels = [torch.randint(0, 10, (8,), generator=generator) for _ in models]
    stacked = torch.cat(images, dim=1)
    if channels_last:
        stacked = stacked.contiguous(memory_format=torch.channels_last)
    logits = fused(stacked)
    assert logits.shape == (len(models), 8, 10)
    sum(F.cross_entropy(logits[k], labels[k]) for k in range(len(models))).backward()
    fused_grads = [[p.grad.clone() for p in model.parameters()] for model in models]
    for k, model in enumerate(models):
        model.zero_grad()
        alone = model(images[k])
        torch.testing.assert_close(logits[k], alone, atol=1e-5, rtol=1e-5)
        F.cross_entropy(alone, labels[k]).backward()
        for (name, parameter), grad in zip(model.named_parameters(), fused_grads[k]):
            torch.testing.assert_close(grad, parameter.grad, atol=1e-5, rtol=1e-4, msg=lambda m: f"{k} {name}: {m}")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The 4 members trained fused, and the same 4 runs trained alone."""
    root = tmp_path_factory.mktemp("fused")
    fused_configs, solo_configs = configs(root, "fused"), configs(root, "solo")
    fused = train_fused(fused_configs, log=quiet)
    solo = [run(config) for config in solo_configs]
    return fused_configs, solo_configs, fused, solo


def test_b_a_fused_run_matches_each_member_trained_alone(trained):
    fused_configs, solo_configs, fused, solo = trained
    for fused_config, solo_config, fused_summary, solo_summary in zip(fused_configs, solo_configs, fused, solo):
        fused_dir, solo_dir = Path(fused_config.run_dir), Path(solo_config.run_dir)
        for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "summary.json", "curves.png"):
            assert (fused_dir / name).is_file(), name
        assert fused_summary.keys() == solo_summary.keys()
        assert json.loads((fused_dir / "summary.json").read_text()) == fused_summary
        (mine,), (alone,) = records(fused_dir), records(solo_dir)
        assert mine.keys() == alone.keys()
        assert mine["epoch"] == alone["epoch"] == 1 and mine["lr"] == alone["lr"]
        assert abs(mine["test_accuracy"] - alone["test_accuracy"]) <= 1 / TINY["synthetic_test"] + 1e-12
        assert abs(mine["train_accuracy"] - alone["train_accuracy"]) <= 1 / TINY["synthetic_train"] + 1e-12
        for key in ("train_loss", "test_loss"):
            assert mine[key] == pytest.approx(alone[key], rel=1e-4), key
        ours, theirs = checkpoint(fused_dir), checkpoint(solo_dir)
        assert ours.keys() == theirs.keys()
        assert ours["model"].keys() == theirs["model"].keys()
        # Float-level differences (grouped, channels_last convolutions sum in another order) grow over the steps:
        # a GroupNorm bias that starts at 0 sits at a ReLU kink (in a by-hand probe, 4e-9 after one step and up to
        # 7e-4 after four, with SGD at lr 0.05). Hence absolute and relative tolerances that are a fraction of what
        # 4 steps move the weights.
        for key in ours["model"]:
            torch.testing.assert_close(ours["model"][key], theirs["model"][key], atol=5e-4, rtol=1e-3)
        assert ours["optimizer"]["param_groups"] == theirs["optimizer"]["param_groups"]
        assert ours["scheduler"] == theirs["scheduler"]
        assert (ours["epoch"], ours["step_in_epoch"], ours["steps_done"]) == (1, 0, 4)


def test_c_grouping_and_refusals(tmp_path):
    base = TrainConfig(**{**TINY, "run_dir": str(tmp_path / "a")})
    runs = [base,
            dataclasses.replace(base, seed=1, run_dir=str(tmp_path / "b")),
            dataclasses.replace(base, width=16, run_dir=str(tmp_path / "c")),
            dataclasses.replace(base, model="vit-tiny", width=None, run_dir=str(tmp_path / "d")),
            dataclasses.replace(base, deq="implicit", run_dir=str(tmp_path / "e")),
            dataclasses.replace(base, mask_mode="same", lr=3e-3, run_dir=str(tmp_path / "f"))]
    groups = group_for_fusion(runs)
    assert groups == [[0, 1, 5], [2], [3], [4]]
    assert group_for_fusion(runs, max_members=2) == [[0, 1], [2], [3], [4], [5]]
    lines = explain_groups(runs, groups)
    assert "3 runs fused" in lines[0]
    assert "width=16 vs 8" in lines[1]
    assert "ResNets" in lines[2] and "DEQ" in lines[3]
    with pytest.raises(FusionError, match=r"differ in width=16 vs 8"):
        train_fused([runs[0], runs[2]], log=quiet)
    with pytest.raises(FusionError, match=r"/d cannot train fused: model vit-tiny"):
        train_fused([runs[0], runs[3]], log=quiet)
    with pytest.raises(FusionError, match="own run directory"):
        train_fused([runs[0], dataclasses.replace(runs[1], run_dir=runs[0].run_dir)], log=quiet)
    with pytest.raises(FusionError, match="no runs"):
        train_fused([], log=quiet)
    assert not (tmp_path / "a").exists()  # refused before anything was written


def test_d_a_members_checkpoint_is_evaluable_alone(trained):
    fused_configs, _, _, _ = trained
    for config in fused_configs[:2]:
        result = run(dataclasses.replace(config, eval_only=True))
        (record,) = records(config.run_dir)
        assert abs(result["test_accuracy"] - record["test_accuracy"]) <= 1 / TINY["synthetic_test"] + 1e-12
        assert result["test_loss"] == pytest.approx(record["test_loss"], rel=1e-5)


def test_finished_members_are_skipped(trained):
    fused_configs, _, fused, _ = trained
    stamps = [(Path(c.run_dir) / "checkpoint.pt").stat().st_mtime_ns for c in fused_configs]
    again = train_fused(fused_configs, log=quiet)
    assert again == fused
    assert stamps == [(Path(c.run_dir) / "checkpoint.pt").stat().st_mtime_ns for c in fused_configs]


def test_an_interrupted_fused_group_resumes_to_the_uninterrupted_result(tmp_path):
    whole = configs(tmp_path, "whole", epochs=2)[:2]
    train_fused(whole, log=quiet)
    split = configs(tmp_path, "split", epochs=2, stop_after_steps=5)[:2]  # 4 steps per epoch: inside epoch 2
    with pytest.raises(Interrupted):
        train_fused(split, log=quiet)
    assert all(checkpoint(c.run_dir)["steps_done"] == 5 for c in split)
    assert [len(records(c.run_dir)) for c in split] == [1, 1]
    resumed = [dataclasses.replace(c, stop_after_steps=0, resume=True) for c in split]
    train_fused(resumed, log=quiet)
    for a, b in zip(whole, resumed):
        strip = [[{k: v for k, v in r.items() if k not in TIMING} for r in records(c.run_dir)] for c in (a, b)]
        assert strip[0] == strip[1]
        for key, value in checkpoint(a.run_dir)["model"].items():
            torch.testing.assert_close(checkpoint(b.run_dir)["model"][key], value, atol=0, rtol=0)


def test_a_member_whose_checkpoint_holds_every_epoch_is_only_summarized(tmp_path):
    done, other = configs(tmp_path, "m")[:2]
    run(done)
    (Path(done.run_dir) / "summary.json").unlink()
    before = checkpoint(done.run_dir)["model"]
    summaries = train_fused([dataclasses.replace(done, resume=True), other], log=quiet)
    assert summaries[0]["epochs"] == 1 and (Path(done.run_dir) / "summary.json").is_file()
    for key, value in checkpoint(done.run_dir)["model"].items():
        assert torch.equal(value, before[key])
    assert records(other.run_dir)[0]["epoch"] == 1
