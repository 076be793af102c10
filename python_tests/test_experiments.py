"""Every experiment runs end to end at a reduced quick scale over seeds, writes its tables (mean ± std, verdicts),
plot and raw metrics, and skips finished runs when started again; sweeps pair their runs by seed, resume per
(run, seed), estimate their cost, and spread over workers."""

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wtext.experiments import EXPERIMENTS, SCALES
from wtext.experiments.__main__ import main
from wtext.experiments.statistics import seeds_needed
from wtext.experiments.sweep import PlanShown, Sweep, parse_worker
from wtext.train import Interrupted, Trainer
from wtext.train.model_builder import model_for

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--epochs", "1", "--train-images", "128", "--test-images", "64", "--device", "cpu", "--seeds", "2"]
TINY_BASE = dict(dataset="synthetic", synthetic_train=128, synthetic_test=64, epochs=1, batch_size=32, lr=3e-3,
                 model="resnet-tiny", width=8, depth=2, progress=False, device="cpu")
PLOTS = {"masks": "masks.png", "density": "density.png", "width-depth": "width_depth.png", "deq": "deq.png",
         "cka": "cka.png", "quality": "quality.png", "mask-overlap": "mask_overlap.png", "lora": "lora.png",
         "learned-masks": "learned_masks.png"}
# Experiments with too many runs for the shared tests below (learned-masks: 10 arms, and learned masks of
# paper-sized models take minutes of a dry run's timed steps on the 2-core CPU); each has tests of its own at a
# smaller budget.
OWN_TEST = {"learned-masks"}
HEADERS = {"quality": "| data |", "mask-overlap": "| overlap |"}
RUNS_PER_ROW = {"quality": 1}


def first_table(text: str) -> list[str]:
    """The rows (header included) of the first markdown table in text."""
    rows = []
    for line in text.splitlines():
        if line.startswith("| "):
            rows.append(line)
        elif rows and not line.startswith("|"):
            break
    return rows


@pytest.mark.parametrize("name", sorted(set(EXPERIMENTS) - OWN_TEST))
def test_experiment_writes_tables_plot_and_raw_metrics(tmp_path, name, capsys):
    out = tmp_path / name
    assert main([name, "--out", str(out), *SMALL]) == 0
    report = (out / "results.md").read_text()
    assert EXPERIMENTS[name].claim in report and HEADERS.get(name, "| run |") in report
    assert "## Verdicts" in report and "| claim (A − B > 0) |" in report
    assert (out / PLOTS[name]).stat().st_size > 1000
    results = json.loads((out / "results.json").read_text())
    runs = results["runs"]
    # every run holds every seed's metrics, in seed order
    assert runs and all([r["seed"] for r in seeds] == [0, 1] for seeds in runs.values())
    assert all(r["metrics"] and "final_test_accuracy" in r["summary"] for seeds in runs.values() for r in seeds)
    for comparison in results["comparisons"]:
        assert len(comparison["differences"]) == 2 and comparison["low"] <= comparison["mean"] <= comparison["high"]
        assert comparison["verdict"] in ("supported", "contradicted", "inconclusive")
    verdict_rows = first_table(report.split("## Verdicts")[1])
    assert len(verdict_rows) == len(results["comparisons"]) + 1 and results["comparisons"]
    run_rows = [line for line in report.split("## Verdicts")[0].splitlines() if line.startswith("| ")
                and not line.startswith(HEADERS.get(name, "| run |"))]
    assert len(run_rows) == len(runs)
    assert all(" ± " in row for row in run_rows)
    if name == "cka":
        matrices = json.loads((out / "cka_matrices.json").read_text())
        assert set(matrices) == {"resnet-dense", "resnet-same", "resnet-multi"}
        assert all(len(entry["cka_per_seed"]) == 2 for entry in matrices.values())
    capsys.readouterr()
    assert main([name, "--out", str(out), *SMALL]) == 0  # a second start skips every finished run
    assert capsys.readouterr().out.count("done before, skipped") == 2 * len(runs)


def test_width_depth_contains_the_papers_case(tmp_path, capsys):
    assert main(["width-depth", "--dry-run", "--out", str(tmp_path / "o"), *SMALL]) == 0
    out = capsys.readouterr().out
    assert "w8-d12 seed 0" in out and "w16-d2 seed 0" in out  # depth 12 at width w against depth 2 at width 2w


def test_paper_scale_needs_data(capsys):
    with pytest.raises(SystemExit):
        main(["masks", "--scale", "paper"])
    assert "give --data-dir" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(set(EXPERIMENTS) - OWN_TEST))
def test_paper_scale_plans_are_valid_and_estimated(tmp_path, name, capsys):
    # Paper scale needs a GPU and CIFAR-10; a dry run builds every run's trainer and times a few steps of each
    # distinct model on synthetic images of CIFAR's shape, without the files and without training.
    # (lora: its largest rank, 16, must fit the adapted weights: wtext.lora bounds the rank by min(out, in))
    width = "16" if name == "lora" else "8"
    assert main([name, "--scale", "paper", "--data-dir", str(tmp_path), "--dry-run", "--out", str(tmp_path / "o"),
                 "--seeds", "1", "--device", "cpu", "--width", width, "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "params" in out and ("on digits" in out if name == "quality" else "on cifar10" in out)
    assert "estimated total" in out and " steps on " in out
    assert not (tmp_path / "o").exists()


def test_dry_run_estimates_each_run_from_measured_steps(tmp_path, capsys):
    assert main(["masks", "--dry-run", "--out", str(tmp_path / "o"), *SMALL]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if " seed " in line and "~" in line]
    assert len(lines) == 12  # 6 runs x 2 seeds, each with its estimate
    assert "1 epochs x 4 steps on synthetic" in lines[0]
    assert "estimated total" in out and "6 distinct models measured" in out


@pytest.mark.parametrize("argv, message", [
    (["masks", "--seeds", "0"], "expected an integer >= 1; got 0"),
    (["masks", "--seeds", "two"], "expected an integer >= 1; got 'two'"),
    (["masks", "--worker", "3/2"], "--worker I/N needs 1 <= I <= N"),
    (["masks", "--worker", "half"], "--worker must be I/N"),
    (["masks", "--dataset", "cifar10"], "cifar10 is read from files: give --data-dir"),
    (["masks", "--epochs", "-1"], "expected an integer >= 1; got -1"),
    (["masks", "--worker", "1/2", "--no-train"], "--worker trains its share and --no-train trains nothing"),
    (["masks", "--fuse-max", "2"], "--fuse-max limits the groups of --fuse: give --fuse too"),
])
def test_bad_options_are_clear_errors(argv, message, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err


def test_out_must_be_a_directory(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit):
        main(["masks", "--out", str(tmp_path / "file")])
    assert "is a file; give a directory" in capsys.readouterr().err


def test_the_deq_experiment_refuses_fused_timing(tmp_path, capsys):
    assert main(["deq", "--out", str(tmp_path / "o"), *SMALL, "--fuse"]) == 2
    assert "compares training times; --fuse would split" in capsys.readouterr().err


def test_worker_slurm_follows_a_stepped_array(monkeypatch):
    for name, value in (("SLURM_ARRAY_TASK_ID", "6"), ("SLURM_ARRAY_TASK_MIN", "2"), ("SLURM_ARRAY_TASK_STEP", "2"),
                        ("SLURM_ARRAY_TASK_COUNT", "4")):  # --array=2-8:2: tasks 2, 4, 6, 8
        monkeypatch.setenv(name, value)
    assert parse_worker("slurm") == (2, 4)


def test_worker_slurm_reads_the_array_task(monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    assert parse_worker("slurm") == (1, 3)
    monkeypatch.delenv("SLURM_ARRAY_TASK_COUNT")
    with pytest.raises(ValueError, match="SLURM_ARRAY_TASK_COUNT must be set"):
        parse_worker("slurm")


def first_epoch_labels(trainer: Trainer) -> torch.Tensor:
    return torch.cat([labels for _, labels in trainer.train_loader.epoch(0)])


def test_compared_runs_share_data_order_and_initialization_per_seed(tmp_path):
    sweep = Sweep(tmp_path, TINY_BASE, log=lambda message: None, seeds=(0, 1))
    jobs = {(job.name, job.seed): job for job in sweep.jobs({"multi": {"mask_mode": "multi"},
                                                             "same": {"mask_mode": "same"}})}
    trainers = {key: Trainer(job.config) for key, job in jobs.items()}
    for seed in (0, 1):
        multi, same = trainers[("multi", seed)], trainers[("same", seed)]
        assert torch.equal(first_epoch_labels(multi), first_epoch_labels(same))
        for (name, a), b in zip(multi.core.state_dict().items(), same.core.state_dict().values()):
            assert torch.equal(a, b), name
        assert multi.config.mask_seed == same.config.mask_seed == seed
    # and the seeds differ from each other
    assert not torch.equal(first_epoch_labels(trainers[("multi", 0)]), first_epoch_labels(trainers[("multi", 1)]))


def untimed(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in ("time_s", "images_per_second", "eval_time_s")} for m in metrics]


def test_an_interrupted_sweep_resumes_per_run_and_seed(tmp_path):
    runs = {"multi": {"mask_mode": "multi"}, "same": {"mask_mode": "same"}}
    base = dict(TINY_BASE, epochs=2)
    reference = Sweep(tmp_path / "reference", base, log=lambda message: None, seeds=(0, 1)).run(runs)
    # Interrupt the first (run, seed) after 3 of its 8 steps: it leaves a checkpoint and the sweep stops there.
    with pytest.raises(Interrupted):
        Sweep(tmp_path / "interrupted", base, log=lambda message: None, seeds=(0, 1),
              given={"stop_after_steps": 3}).run(runs)
    log = []
    resumed = Sweep(tmp_path / "interrupted", base, log=log.append, seeds=(0, 1)).run(runs)
    assert sum("training" in line for line in log) == 4
    for name in runs:
        for a, b in zip(reference[name], resumed[name]):
            assert untimed(a["metrics"]) == untimed(b["metrics"])
            assert a["summary"]["final_test_accuracy"] == b["summary"]["final_test_accuracy"]
    # a second start trains nothing
    log.clear()
    Sweep(tmp_path / "interrupted", base, log=log.append, seeds=(0, 1)).run(runs)
    assert sum("done before, skipped" in line for line in log) == 4


def test_local_workers_share_a_sweep_and_the_merge_trains_nothing(tmp_path):
    out = tmp_path / "shared"
    common = [sys.executable, "-m", "wtext.experiments", "masks", "--out", str(out), *SMALL]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    workers = [subprocess.Popen([*common, "--worker", f"{i}/2"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for i in (1, 2)]
    outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    trained = [line for output in outputs for line in output.splitlines() if line.endswith(": training")]
    assert len(trained) == 12 and len(set(trained)) == 12  # each (run, seed) trained by exactly one worker
    assert all("6 of 12 runs" in output for output in outputs)
    assert not (out / "results.md").exists()  # workers only train
    merge = subprocess.run([*common, "--no-train"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert merge.returncode == 0, merge.stderr
    assert merge.stdout.count("done before, skipped") == 12 and (out / "results.md").is_file()


def test_merging_before_the_workers_finished_names_the_missing_runs(tmp_path, capsys):
    assert main(["masks", "--out", str(tmp_path / "o"), *SMALL, "--no-train"]) == 2
    assert "12 of 12 runs are not finished (e.g. resnet-dense seed 0" in capsys.readouterr().err


def test_a_fused_sweep_trains_the_resnet_runs_as_one_group(tmp_path, capsys):
    out = tmp_path / "fused"
    assert main(["masks", "--out", str(out), *SMALL, "--fuse"]) == 0
    printed = capsys.readouterr().out
    # 3 ResNet mask modes x 2 seeds share an architecture; the ViT runs cannot fuse and train alone
    assert "group 1: 6 runs fused" in printed and "vit-tiny" in printed
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert all(len(seeds) == 2 and seeds[0]["summary"]["epochs"] == 1 for seeds in runs.values())
    capsys.readouterr()
    assert main(["masks", "--out", str(out), *SMALL, "--fuse"]) == 0
    assert capsys.readouterr().out.count("done before, skipped") == 12


def test_learned_masks_reports_hamming_start_and_cka_and_fuses_only_static_resnets(tmp_path, capsys):
    out = tmp_path / "learned"
    # One seed of 32 training images (one step per run): 10 arms, the static ResNet arms fused.
    assert main(["learned-masks", "--out", str(out), "--epochs", "1", "--train-images", "32", "--test-images", "16",
                 "--device", "cpu", "--seeds", "1", "--fuse"]) == 0
    printed = capsys.readouterr().out
    assert "group 1: 3 runs fused" in printed and printed.count("mask_mode learned: each run trains") == 2
    report = (out / "results.md").read_text()
    header = first_table(report)[0]
    for column in ("final acc", "mask Hamming between applications", "2p(1−p)", "masks equal to start",
                   "mean off-diagonal CKA"):
        assert column in header
    rows = {line.split(" | ")[0].removeprefix("| "): line.split(" | ") for line in first_table(report)[1:]}
    families, arms = ("resnet", "vit"), ("dense", "same", "multi", "learned-ste", "learned-gumbel")
    assert set(rows) == {f"{family}-{arm}" for family in families for arm in arms}
    for family, p in (("resnet", 0.5), ("vit", 0.9)):
        # Static masks: one shared mask (dense, same) differs nowhere; independent exact masks near 2p(1-p).
        assert rows[f"{family}-same"][3].startswith("0.0000") and rows[f"{family}-same"][4] == f"{2 * p * (1 - p):.4f}"
        assert abs(float(rows[f"{family}-multi"][3].split()[0]) - 2 * p * (1 - p)) < 0.03
        assert rows[f"{family}-multi"][5] == "—"  # static masks have no start to leave
        for arm in ("learned-ste", "learned-gumbel"):
            assert 0 <= float(rows[f"{family}-{arm}"][5].split()[0]) <= 1
    verdicts = report.split("## Verdicts")[1]
    for family in families:
        for claim in ("learned-ste − multi", "learned-gumbel − multi", "learned-ste − dense",
                      "learned-gumbel − dense", "learned-gumbel − learned-ste"):
            assert f"| {family}: {claim} |" in verdicts
    assert "2p(1−p)" in report.split("| run |")[0]  # the note says how to read the Hamming distance
    results = json.loads((out / "results.json").read_text())
    assert len(results["comparisons"]) == 10 and set(results["per_run"]) == set(rows)
    learned = results["per_run"]["resnet-learned-ste"]
    assert len(learned["hamming_curve"]) == 1 and learned["hamming_curve"][0][-1] == learned["hamming"][0]
    assert (out / "learned_masks.png").stat().st_size > 1000


class RecordingSweep:
    """A sweep that records the runs an experiment asks for and stops there."""

    def __init__(self, given: dict):
        self.given, self.fuse, self.runs = given, False, None

    def run(self, runs: dict) -> dict:
        self.runs = runs
        raise PlanShown


def tied_masks(model) -> list[torch.Tensor]:
    return [module.application_masks() for module in model.tied_weights()]


@pytest.mark.parametrize("scale", ["quick", "paper"])
def test_learned_masks_arms_start_equal_and_build_at_both_scales(tmp_path, scale):
    # The plan without the timed steps of a dry run: every arm's options validate and its model builds.
    recorder = RecordingSweep({})
    with pytest.raises(PlanShown):
        EXPERIMENTS["learned-masks"].run(tmp_path, scale, recorder)
    base = dict(SCALES[scale], device="cpu", data_dir=str(tmp_path))
    jobs = Sweep(tmp_path, base, log=lambda message: None, given={"width": 8}).jobs(recorder.runs)
    models = {job.name: model_for(job.config, 10) for job in jobs}
    assert len(models) == 10 and all(job.config.pattern == "exact" for job in jobs)
    for family in ("resnet", "vit"):
        multi = tied_masks(models[f"{family}-multi"])
        for arm in ("learned-ste", "learned-gumbel"):
            # A learned arm's step 0 is the static multi-mask model of its seed: the same masks, so equal density.
            learned = tied_masks(models[f"{family}-{arm}"])
            assert len(learned) == len(multi) and all(torch.equal(a, b) for a, b in zip(learned, multi))


def test_deq_takes_a_given_mask_mode_in_every_arm(tmp_path):
    recorder = RecordingSweep({"mask_mode": "learned"})
    with pytest.raises(PlanShown):
        EXPERIMENTS["deq"].run(tmp_path, "quick", recorder)
    assert "weight-tied-learned" in recorder.runs
    jobs = Sweep(tmp_path, TINY_BASE, log=lambda message: None, given=recorder.given).jobs(recorder.runs)
    images = torch.randn(2, 3, 32, 32)
    for job in jobs:  # the weight-tied model and every DEQ twin build with learned masks and run
        assert job.config.mask_mode == "learned"
        model = model_for(job.config, 10)
        assert any(getattr(module, "learned", None) is not None for module in model.modules()), job.name
        model.eval()
        with torch.no_grad():
            assert model(images).shape == (2, 10)
    default = RecordingSweep({})
    with pytest.raises(PlanShown):
        EXPERIMENTS["deq"].run(tmp_path, "quick", default)
    assert default.runs["weight-tied-multi"]["mask_mode"] == "multi"
    assert default.runs["deq-reversible"]["deq"] == "reversible"  # the strongest DEQ baseline is one of the arms
    assert all(options["mask_mode"] == "same" for name, options in default.runs.items() if name.startswith("deq-"))


def test_plan_sizes_seeds_and_hours_from_a_pilot(tmp_path, capsys):
    pilot = tmp_path / "pilot"
    pilot.mkdir()
    differences = {"CKA: same − multi": [0.02, -0.01, 0.04], "CKA: dense − multi": [0.10, 0.12, 0.11]}
    (pilot / "results.json").write_text(json.dumps(
        {"runs": {}, "comparisons": [{"label": label, "differences": d} for label, d in differences.items()]}))
    assert main(["plan", "cka", "--effect", "0.03", "--pilot", str(pilot), "--device", "cpu", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "seeds to detect ±0.03 with power 0.8" in out and "wall, 2 worker(s)" in out
    for label, values in differences.items():
        std = statistics.stdev(values)
        row = next(line for line in out.splitlines() if line.startswith(f"| {label} |"))
        assert f"| {seeds_needed(0.03, std)} |" in row, row
    # Without --effect each claim is sized for its own observed difference.
    assert main(["plan", "cka", "--pilot", str(pilot), "--device", "cpu"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| CKA: dense − multi |"))
    assert f"| {seeds_needed(0.11, statistics.stdev(differences['CKA: dense − multi']))} |" in row


def test_plan_names_a_bad_pilot(tmp_path, capsys):
    assert main(["plan", "cka", "--pilot", str(tmp_path / "none"), "--device", "cpu"]) == 2
    assert "no results.json there" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text("{not json")
    assert main(["plan", "cka", "--pilot", str(tmp_path / "bad"), "--device", "cpu"]) == 2
    assert "bad/results.json: is not valid JSON" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["plan", "cka", "--power", "1.5"])
    assert "expected a number in (0, 1)" in capsys.readouterr().err


def test_verdict_tables_carry_power_and_holm_columns(tmp_path):
    out = tmp_path / "density"
    assert main(["density", "--out", str(out), *SMALL, "--effect", "0.02"]) == 0
    report = (out / "results.md").read_text()
    assert "| p | Holm p | Holm verdict | detectable (power 0.8) | to decide | seeds for ±0.02 |" in report
    comparisons = json.loads((out / "results.json").read_text())["comparisons"]
    assert all(c["holm_p"] >= c["p_value"] and c["effect"] == 0.02 for c in comparisons)
