"""Every experiment runs end to end at a reduced quick scale over seeds, writes its tables (mean ± std, verdicts),
plot and raw metrics, and skips finished runs when started again; sweeps pair their runs by seed, resume per
(run, seed), estimate their cost, and spread over workers."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wtext.experiments import EXPERIMENTS
from wtext.experiments.__main__ import main
from wtext.experiments.sweep import Sweep, parse_worker
from wtext.train import Interrupted, Trainer

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--epochs", "1", "--train-images", "128", "--test-images", "64", "--device", "cpu", "--seeds", "2"]
TINY_BASE = dict(dataset="synthetic", synthetic_train=128, synthetic_test=64, epochs=1, batch_size=32, lr=3e-3,
                 model="resnet-tiny", width=8, depth=2, progress=False, device="cpu")
PLOTS = {"masks": "masks.png", "density": "density.png", "width-depth": "width_depth.png", "deq": "deq.png",
         "cka": "cka.png", "quality": "quality.png", "mask-overlap": "mask_overlap.png", "lora": "lora.png"}
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


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
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


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_paper_scale_plans_are_valid_and_estimated(tmp_path, name, capsys):
    # Paper scale needs a GPU and CIFAR-10; a dry run builds every run's trainer and times a few steps of each
    # distinct model on synthetic images of CIFAR's shape, without the files and without training.
    assert main([name, "--scale", "paper", "--data-dir", str(tmp_path), "--dry-run", "--out", str(tmp_path / "o"),
                 "--seeds", "1", "--device", "cpu", "--width", "8", "--batch-size", "2"]) == 0
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
