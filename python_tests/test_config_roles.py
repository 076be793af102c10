"""An option's role is declared once, where the option is declared: a new TrainConfig field with a role is treated
by that role in resumption, evaluation, fusion and sweeps, with no other edit."""

import dataclasses
import json

import pytest

from wtext.experiments.sweep import Sweep, estimate_key
from wtext.json_files import DamagedFile
from wtext.train import Role, TrainConfig, options_with
from wtext.train.config import option
from wtext.train.fusion_groups import describe_member, explain_groups, group_for_fusion
from wtext.train.run_dir import changed_options, finished_summary, same_config, settings_for_evaluation

TINY = dict(model="resnet-tiny", width=8, depth=2, synthetic_train=64, synthetic_test=32, batch_size=32, epochs=1,
            device="cpu", progress=False)


@dataclasses.dataclass
class WithNewOptions(TrainConfig):
    """TrainConfig plus four options, each added by one declaration."""

    note: str = option("", Role.RESUMABLE | Role.COST_NEUTRAL, "a free-text note on the run")
    group_knob: int = option(1, Role.SHARED | Role.BUDGET, "something every fused member must share")
    member_knob: float = option(0.0, Role.NONE, "something each run owns")
    shape_knob: int = option(0, Role.MODEL, "something that defines the network")


def test_every_option_declares_a_role():
    for field in dataclasses.fields(TrainConfig):
        assert isinstance(field.metadata.get("role"), Role), field.name
    assert "epochs" in options_with(Role.RESUMABLE) and "lr" not in options_with(Role.RESUMABLE)
    assert options_with(Role.MASK) == ("mask_mode", "density", "pattern", "nm", "mask_seed", "mask_overlap")


def test_resumption_follows_the_role(tmp_path):
    config = WithNewOptions(**TINY, run_dir=str(tmp_path))
    saved = dataclasses.asdict(config)
    assert changed_options(saved, dataclasses.replace(config, note="resumed on Tuesday")) == []
    assert changed_options(saved, dataclasses.replace(config, member_knob=0.5)) == ["member_knob"]
    assert changed_options(saved, dataclasses.replace(config, group_knob=2)) == ["group_knob"]
    # A config saved before the options existed was made with their defaults.
    before = {k: v for k, v in saved.items() if k not in ("note", "group_knob", "member_knob", "shape_knob")}
    assert changed_options(before, config) == []
    assert changed_options(before, dataclasses.replace(config, member_knob=0.5)) == ["member_knob"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert same_config(tmp_path, dataclasses.replace(config, note="x"))
    assert not same_config(tmp_path, dataclasses.replace(config, shape_knob=3))


def test_evaluation_takes_model_options_from_the_checkpoint(tmp_path):
    config = WithNewOptions(**TINY, run_dir=str(tmp_path))
    trained = dataclasses.asdict(dataclasses.replace(config, shape_knob=4, member_knob=9.0))
    evaluated = settings_for_evaluation(config, trained, tmp_path / "checkpoint.pt")
    assert evaluated.shape_knob == 4 and evaluated.member_knob == 0.0


def test_fusion_follows_the_role(tmp_path):
    base = WithNewOptions(**TINY, run_dir=str(tmp_path / "a"))
    runs = [base,
            dataclasses.replace(base, member_knob=0.5, note="b", run_dir=str(tmp_path / "b")),
            dataclasses.replace(base, group_knob=2, run_dir=str(tmp_path / "c"))]
    groups = group_for_fusion(runs)
    assert groups == [[0, 1], [2]]
    assert "group_knob=2 vs 1" in explain_groups(runs, groups)[1]
    shown = describe_member(runs[1])
    assert "member_knob=0.5" in shown and "note" not in shown


def test_sweeps_follow_the_role(tmp_path):
    runs = {"a": {"group_knob": 5, "member_knob": 1.0}, "b": {}}
    sweep = Sweep(tmp_path, dict(TINY), log=lambda message: None, given={"group_knob": 3, "member_knob": 2.0},
                  config_type=WithNewOptions)
    jobs = {job.name: job.config for job in sweep.jobs(runs)}
    assert jobs["a"].group_knob == jobs["b"].group_knob == 3  # a budget option: the command line wins
    assert jobs["a"].member_knob == 1.0 and jobs["b"].member_knob == 2.0  # any other: a run's own value wins
    assert estimate_key(jobs["b"]) == estimate_key(dataclasses.replace(jobs["b"], note="cost-free"))
    assert estimate_key(jobs["b"]) != estimate_key(dataclasses.replace(jobs["b"], member_knob=7.0))


def test_a_damaged_run_file_is_named_where_training_reads_it(tmp_path):
    # Fused training skips a finished run by this rule (the experiments' sweeps too): a summary.json or config.json
    # cut short must be an error naming the file and the remedy, not a bare JSON error.
    config = WithNewOptions(**TINY, run_dir=str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(dataclasses.asdict(config)))
    (tmp_path / "summary.json").write_text('{"epochs": ')
    with pytest.raises(DamagedFile, match=r"summary\.json: is not valid JSON .*delete the folder"):
        finished_summary(config)
    (tmp_path / "summary.json").write_text(json.dumps({"epochs": config.epochs}))
    assert finished_summary(config) == {"epochs": config.epochs}
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(DamagedFile, match=r"config\.json: holds a JSON list, not a JSON object"):
        finished_summary(config)
