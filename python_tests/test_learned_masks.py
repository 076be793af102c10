"""Learned masks (MaskSpec mode "learned"): step 0 is the static multi-mask model, the straight-through and gumbel
estimators train the scores, frozen bits give the same logits, and runs with learned or frozen masks resume,
evaluate and initialize others like any run. (The ops themselves: test_learned_ops.py.)"""

import dataclasses
import math
import signal
from pathlib import Path

import pytest
import torch

from wtext import models
from wtext.analysis.mask_statistics import learned_mask_statistics
from wtext.masks import freeze_checkpoint
from wtext.masks.__main__ import main as masks_main
from wtext.nn import MaskSpec, TiedMaskedWeight, freeze_masks, match_frozen_masks, pack_masks, unpack_masks
from wtext.nn.learned_model import density_penalty, set_mask_progress
from wtext.train import TrainConfig, run
from wtext.train.checkpoint import load_checkpoint, save_atomic
from wtext.train.fusion_groups import unfusable_reason
from wtext.train.trainer import MASK_SCORES_GROUP, Trainer

from test_safe_runs import outcome, train_process

TINY = dict(model="resnet-tiny", width=8, depth=2, synthetic_train=128, synthetic_test=64, batch_size=32, epochs=2,
            progress=False, deterministic=True, device="cpu", checkpoint_every_seconds=0.0, pattern="exact")


@pytest.fixture(autouse=True)
def _restore_determinism():
    yield
    torch.use_deterministic_algorithms(False)


def learned_model(name="resnet-tiny", learning="ste", density=None, **overrides):
    density = density or models.preset_config(name).mask.density
    return models.build_model(name, mask=MaskSpec(mode="learned", density=density, pattern="exact",
                                                  learning=learning, seed=3), **overrides)


def static_twin(model, name="resnet-tiny"):
    """The static multi-mask model (pattern exact, same seed) with the learned model's weights."""
    spec = dataclasses.replace(model.config.mask, mode="multi")
    twin = models.build_model(name, mask=spec)
    twin.load_state_dict({k: v for k, v in model.state_dict().items() if ".learned." not in k})
    return twin.eval()


@pytest.mark.parametrize("name", ["resnet-tiny", "vit-tiny"])
def test_step_zero_of_a_learned_model_is_the_static_multi_mask_model(name):
    model = learned_model(name).eval()
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(images), static_twin(model, name)(images))
    rows = learned_mask_statistics(model)
    assert rows and all(row["equal_to_start"] == 1.0 for row in rows)


@pytest.mark.parametrize("learning", ["ste", "gumbel"])
def test_frozen_masks_give_the_learned_models_logits_bit_for_bit(learning):
    model = learned_model(learning=learning)
    with torch.no_grad():  # move the scores away from their start
        for tied in model.tied_weights():
            tied.learned.scores.add_(torch.randn_like(tied.learned.scores))
    model.eval()
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        before = model(images)
        masks = [tied.learned.masks() for tied in model.tied_weights()]
    assert freeze_masks(model) == len(masks)
    assert not any(".scores" in name for name, _ in model.named_parameters())
    with torch.no_grad():
        assert torch.equal(model(images), before)
    for tied, mask in zip(model.tied_weights(), masks):
        assert torch.equal(tied.learned.masks(), mask)
        assert tied.learned.bits.dtype == torch.uint8
        assert tied.learned.bits.shape == (tied.applications, math.ceil(tied.weight.numel() / 8))


def test_learned_masks_keep_exactly_the_density_after_any_scores():
    model = learned_model(density=0.3)
    for tied in model.tied_weights():
        with torch.no_grad():
            tied.learned.scores.copy_(torch.randint(0, 3, tied.learned.scores.shape).float())  # many ties
        kept = tied.learned.masks().flatten(1).sum(1)
        assert kept.tolist() == [round(0.3 * tied.weight.numel())] * tied.applications


def test_the_ops_path_and_the_plain_pytorch_path_agree_in_values_and_gradients():
    model = learned_model()
    reference = learned_model()
    reference.load_state_dict(model.state_dict())
    for tied in reference.tied_weights():
        tied.use_reference = True
    images, labels = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    for m in (model, reference):
        torch.nn.functional.cross_entropy(m(images), labels).backward()
    for (name, a), (_, b) in zip(model.named_parameters(), reference.named_parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6), name
    scores = [p for n, p in model.named_parameters() if n.endswith(".scores")]
    assert scores and all(p.grad.abs().sum() > 0 for p in scores)  # straight-through: every score gets a gradient


def test_gumbel_trains_relaxed_gates_and_evaluates_the_top_k():
    model = learned_model(learning="gumbel")
    tied = model.tied_weights()[0]
    tied.learned.configure((2 / 3, 0.1), penalty_weight=1.0)
    model.train()
    first, second = tied(), tied()
    assert not torch.equal(first, second)  # fresh noise every forward
    gates = first / tied.weight.unsqueeze(0)
    assert gates.min() >= 0 and gates.max() <= 1 + 1e-6
    model.eval()
    assert torch.equal(tied(), tied.weight.unsqueeze(0) * tied.learned.masks())
    set_mask_progress(model, 1.0)
    assert tied.learned.temperature.item() == pytest.approx(0.1)
    set_mask_progress(model, 0.5)
    assert tied.learned.temperature.item() == pytest.approx(2 / 3 * (0.1 / (2 / 3)) ** 0.5)
    penalty = density_penalty(model)
    penalty.backward()
    assert penalty.item() >= 0 and tied.learned.scores.grad.abs().sum() > 0


def test_packed_masks_round_trip_for_every_model_weight_and_odd_sizes():
    shapes = [tuple(t.weight.shape) for name in ("resnet-tiny", "vit-tiny") for t in learned_model(name).tied_weights()]
    shapes += [(3, 5), (7, 1, 3, 3), (1, 1), (129, 3), (4, 8)]
    for shape in shapes:
        for applications in (1, 3, 6):
            masks = torch.rand(applications, *shape) < 0.4
            bits = pack_masks(masks)
            assert bits.shape == (applications, math.ceil(math.prod(shape) / 8))
            assert torch.equal(unpack_masks(bits, shape), masks), shape


def test_bad_learned_mask_settings_are_clear_errors():
    with pytest.raises(ValueError, match="not 'nm'"):
        MaskSpec(mode="learned", pattern="nm")
    with pytest.raises(ValueError, match="mask learning must be one of"):
        MaskSpec(mode="learned", learning="adam")
    with pytest.raises(ValueError, match="overlap > 0 needs mode 'multi'"):
        MaskSpec(mode="learned", overlap=0.5)
    with pytest.raises(ValueError, match="density must be in"):
        MaskSpec(mode="learned", density=1.5)
    with pytest.raises(ValueError, match="mask_learning applies to learned masks only"):
        TrainConfig(mask_learning="gumbel")
    with pytest.raises(ValueError, match="freeze_masks applies to learned masks only"):
        TrainConfig(freeze_masks=True)
    with pytest.raises(ValueError, match="use --pattern exact"):
        TrainConfig(mask_mode="learned", pattern="nm")
    with pytest.raises(ValueError, match="mask_final_temperature must be > 0"):
        TrainConfig(mask_mode="learned", mask_final_temperature=0.0)
    model = learned_model()
    state = model.state_dict()
    key = "cells.0.conv1.learned"
    bad = {k: v for k, v in state.items() if k != key + ".scores"}
    bad[key + ".bits"] = torch.zeros(2, 5, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"cells.0.conv1.learned.bits must be packed masks uint8 \[3, 576\]"):
        match_frozen_masks(learned_model(), bad)
    both = {**state, key + ".bits": torch.zeros(3, 576, dtype=torch.uint8)}
    with pytest.raises(ValueError, match="both"):
        match_frozen_masks(learned_model(), both)
    assert "mask_mode learned" in unfusable_reason(TrainConfig(mask_mode="learned"))


def test_scores_train_in_their_own_group_with_their_own_rate(tmp_path):
    config = TrainConfig(**{**TINY, "mask_mode": "learned", "lr": 2e-3, "mask_lr": 5e-2, "mask_weight_decay": 0.1,
                            "run_dir": str(tmp_path / "run")})
    trainer = Trainer(config)
    groups = trainer.optimizer.param_groups
    assert [g.get("name") for g in groups] == [None, MASK_SCORES_GROUP]
    assert groups[1]["weight_decay"] == 0.1 and groups[0]["weight_decay"] == 0.0
    scores = {id(t.learned.scores) for t in trainer.core.tied_weights()}
    assert {id(p) for p in groups[1]["params"]} == scores
    assert TrainConfig(mask_mode="learned", lr=3e-3).learned_mask_lr() == pytest.approx(3e-2)


@pytest.mark.parametrize("learning", ["ste", "gumbel"])
def test_learned_runs_train_freeze_and_evaluate_to_the_same_accuracy(tmp_path, learning):
    config = TrainConfig(**{**TINY, "mask_mode": "learned", "mask_learning": learning,
                            "run_dir": str(tmp_path / "learned")})
    run(config)
    model = load_checkpoint(tmp_path / "learned" / "checkpoint.pt")["model"]
    assert any(k.endswith(".scores") for k in model)
    learned = run(dataclasses.replace(config, eval_only=True))
    report = freeze_checkpoint(tmp_path / "learned")
    assert report.masks == 4 and report.bytes_after < report.bytes_before
    frozen_state = load_checkpoint(tmp_path / "learned" / "checkpoint.pt")
    assert not any(k.endswith(".scores") for k in frozen_state["model"])
    assert [g.get("name") for g in frozen_state["optimizer"]["param_groups"]] == [None]
    frozen = run(dataclasses.replace(config, eval_only=True))
    assert (frozen["test_loss"], frozen["test_accuracy"]) == (learned["test_loss"], learned["test_accuracy"])
    with pytest.raises(ValueError, match="frozen already"):
        freeze_checkpoint(tmp_path / "learned")


def test_learned_masks_learn_real_digits_like_static_masks(tmp_path):
    pytest.importorskip("sklearn")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        accuracy = {}
        for name, options in {"static": {"mask_mode": "multi"}, "ste": {"mask_mode": "learned"},
                              "gumbel": {"mask_mode": "learned", "mask_learning": "gumbel"}}.items():
            config = TrainConfig(dataset="digits", epochs=2, pattern="exact", progress=False, device="cpu",
                                 run_dir=str(tmp_path / name), **options)
            accuracy[name] = run(config)["final_test_accuracy"]
    finally:
        torch.set_num_threads(threads)
    for name in ("ste", "gumbel"):
        assert accuracy[name] >= 0.8, f"learned masks ({name}) reached {accuracy[name]:.3f} on digits (chance 0.1)"
        assert accuracy[name] >= accuracy["static"] - 0.08, accuracy


def test_a_frozen_checkpoint_is_at_most_1_plus_l_over_32_times_the_static_one(tmp_path):
    common = {**TINY, "epochs": 1, "width": 32, "depth": 6}
    run(TrainConfig(**{**common, "mask_mode": "multi", "run_dir": str(tmp_path / "static")}))
    run(TrainConfig(**{**common, "mask_mode": "learned", "freeze_masks": True, "run_dir": str(tmp_path / "frozen")}))
    static = (tmp_path / "static" / "checkpoint.pt").stat().st_size
    frozen = (tmp_path / "frozen" / "checkpoint.pt").stat().st_size
    assert frozen <= (1 + 6 / 32) * static, (frozen, static)
    assert frozen > static  # the bits are there


def test_a_frozen_run_resumes_with_its_masks_fixed_and_initializes_other_runs(tmp_path):
    config = TrainConfig(**{**TINY, "mask_mode": "learned", "freeze_masks": True, "run_dir": str(tmp_path / "a")})
    run(config)
    bits = {k: v for k, v in load_checkpoint(tmp_path / "a" / "checkpoint.pt")["model"].items() if k.endswith(".bits")}
    assert len(bits) == 4
    run(dataclasses.replace(config, epochs=3, resume=True, freeze_masks=False))
    after = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    assert after["epoch"] == 3
    for key, value in bits.items():
        assert torch.equal(after["model"][key], value)
    # --init-from a frozen checkpoint: the new run trains its weights under those masks.
    other = TrainConfig(**{**TINY, "mask_mode": "learned", "epochs": 1, "init_from": str(tmp_path / "a" /
                                                                                         "checkpoint.pt"),
                           "run_dir": str(tmp_path / "b")})
    run(other)
    state = load_checkpoint(tmp_path / "b" / "checkpoint.pt")["model"]
    for key, value in bits.items():
        assert torch.equal(state[key], value)


def test_a_frozen_checkpoint_with_the_wrong_bit_count_is_refused_by_evaluation(tmp_path):
    config = TrainConfig(**{**TINY, "epochs": 1, "mask_mode": "learned", "freeze_masks": True,
                            "run_dir": str(tmp_path / "a")})
    run(config)
    path = tmp_path / "a" / "checkpoint.pt"
    saved = load_checkpoint(path)
    saved["model"]["cells.0.conv1.learned.bits"] = saved["model"]["cells.0.conv1.learned.bits"][:, :-1].clone()
    save_atomic({k: v for k, v in saved.items() if k != "format"}, path)
    with pytest.raises(ValueError, match=r"cells.0.conv1.learned.bits must be packed masks uint8"):
        run(dataclasses.replace(config, eval_only=True))


def test_the_masks_command_freezes_shows_and_refuses_clearly(tmp_path, capsys):
    run(TrainConfig(**{**TINY, "epochs": 1, "mask_mode": "learned", "run_dir": str(tmp_path / "a")}))
    assert masks_main(["show", str(tmp_path / "a")]) == 0
    shown = capsys.readouterr().out
    assert "cells.0.conv1" in shown and "scores" in shown
    assert masks_main(["freeze", str(tmp_path / "a"), "--output", str(tmp_path / "frozen.pt")]) == 0
    assert "froze 4 learned masks" in capsys.readouterr().out
    assert masks_main(["show", str(tmp_path / "frozen.pt")]) == 0
    assert "frozen" in capsys.readouterr().out
    run(TrainConfig(**{**TINY, "epochs": 1, "run_dir": str(tmp_path / "static")}))
    assert masks_main(["freeze", str(tmp_path / "static")]) == 2
    assert "only learned masks" in capsys.readouterr().err
    assert masks_main(["freeze", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err


def test_a_deq_twin_learns_its_one_mask(tmp_path):
    config = TrainConfig(**{**TINY, "epochs": 1, "mask_mode": "learned", "deq": "implicit",
                            "run_dir": str(tmp_path / "deq")})
    run(config)
    state = load_checkpoint(tmp_path / "deq" / "checkpoint.pt")["model"]
    scores = [v for k, v in state.items() if k.endswith(".scores")]
    assert scores and all(v.shape[0] == 1 for v in scores)


@pytest.mark.parametrize("learning", ["ste", "gumbel"])
def test_a_learned_run_killed_mid_epoch_resumes_to_the_uninterrupted_result(tmp_path, learning):
    extra = ["--mask-mode", "learned", "--pattern", "exact", "--mask-learning", learning]
    whole = train_process(tmp_path / "whole", *extra)
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed = train_process(tmp_path / "killed", *extra, crash_at="step:5")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-1000:]
    resumed = train_process(tmp_path / "killed", *extra, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    weights, records, accuracies = outcome(tmp_path / "killed")
    whole_weights, whole_records, whole_accuracies = outcome(tmp_path / "whole")
    assert any(key.endswith(".scores") for key in whole_weights)
    for key in whole_weights:
        assert torch.equal(weights[key], whole_weights[key]), key
    assert records == whole_records and accuracies == whole_accuracies
