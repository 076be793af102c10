"""Every experiment runs end to end at a reduced quick scale, writes its table, plot and raw metrics, and skips
finished runs when started again."""

import json

import pytest

from wtext.experiments import EXPERIMENTS
from wtext.experiments.__main__ import main

SMALL = ["--epochs", "1", "--train-images", "128", "--test-images", "64", "--device", "cpu"]
PLOTS = {"masks": "masks.png", "density": "density.png", "width-depth": "width_depth.png", "deq": "deq.png",
         "cka": "cka.png", "quality": "quality.png"}
HEADERS = {"quality": "| data |"}
RUNS_PER_ROW = {"quality": 3}  # one row per (data, model), over 3 seeds


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_experiment_writes_table_plot_and_raw_metrics(tmp_path, name, capsys):
    out = tmp_path / name
    assert main([name, "--out", str(out), *SMALL]) == 0
    report = (out / "results.md").read_text()
    assert EXPERIMENTS[name].claim in report and HEADERS.get(name, "| run |") in report
    assert (out / PLOTS[name]).stat().st_size > 1000
    results = json.loads((out / "results.json").read_text())
    assert results and all(r["metrics"] and "best_test_accuracy" in r["summary"] for r in results.values())
    table_rows = [line for line in report.splitlines() if line.startswith("| ")
                  and not line.startswith(HEADERS.get(name, "| run |"))]
    assert len(table_rows) == len(results) // RUNS_PER_ROW.get(name, 1)
    if name == "cka":
        matrices = json.loads((out / "cka_matrices.json").read_text())
        assert set(matrices) == {"resnet-dense", "resnet-same", "resnet-multi"}
    capsys.readouterr()
    assert main([name, "--out", str(out), *SMALL]) == 0  # a second start skips every finished run
    assert capsys.readouterr().out.count("done before, skipped") == len(results)


def test_paper_scale_needs_data(capsys):
    with pytest.raises(SystemExit):
        main(["masks", "--scale", "paper"])
    assert "give --data-dir" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_paper_scale_plans_are_valid(tmp_path, name, capsys):
    # Paper scale needs a GPU and CIFAR-10; a dry run builds every run's config and model without training.
    assert main([name, "--scale", "paper", "--data-dir", str(tmp_path), "--dry-run", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "params" in out and ("on cifar10" in out or name == "quality")
    assert not (tmp_path / "o").exists()
