"""A hostile results folder for `python -m wtext.experiments`: damaged files in a run's folder (config.json,
summary.json, metrics.jsonl), a damaged folder record, another experiment's folder. Each case is classified as in
test_fuzz_cli_data.py:

    clear    the command stops with exit 2 and one line that names the file and the problem (and what to do)
    unclear  it stops, but the message does not name them, or a traceback is printed
    crash    an exception escapes the command instead of an error message
    wrong    it does not stop although the folder is damaged

Every case must be clear. The sweeps here "train" with a stand-in that writes a finished run's files at once, so a
case costs milliseconds; test_experiments.py trains for real.
"""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from wtext.experiments import sweep
from wtext.experiments.__main__ import main

from cli_verdicts import classify_command

# One seed of the masks experiment: 6 runs, whose tables read only summary.json and metrics.jsonl.
ARGV = ["masks", "--seeds", "1", "--epochs", "2", "--device", "cpu"]
RUN = Path("runs") / "resnet-same" / "seed-0"


def write_finished_run(config) -> dict:
    """What a finished training run leaves in its folder: config.json, metrics.jsonl (one record per epoch) and
    summary.json, with accuracies that differ per run and seed."""
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
    accuracy = 0.3 + 0.01 * len(config.mask_mode) + 0.001 * config.seed
    records = [{"epoch": epoch, "train_loss": 1.0 / epoch, "train_accuracy": accuracy, "test_loss": 1.0 / epoch,
                "test_accuracy": accuracy, "lr": 0.001, "time_s": 0.5, "images_per_second": 100.0,
                "eval_time_s": 0.1} for epoch in range(1, config.epochs + 1)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    summary = {"model": config.model, "parameters": 1000, "trainable_parameters": 1000, "effective_parameters": 1000,
               "flops_per_image": 10_000, "epochs": config.epochs, "best_test_accuracy": accuracy, "best_epoch": 1,
               "final_test_accuracy": accuracy, "images_per_second": 100.0, "wall_time_s": 1.0,
               "run_dir": str(run_dir)}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


@pytest.fixture(autouse=True)
def instant_training(monkeypatch):
    """Sweeps train with write_finished_run and dry runs estimate without timing a step, so that a case the command
    wrongly accepts costs nothing either; returns the list of the run folders 'trained'."""
    trained = []

    def train(config):
        trained.append(Path(config.run_dir))
        return write_finished_run(config)

    monkeypatch.setattr(sweep, "run", train)
    monkeypatch.setattr(sweep, "measure_run_cost", lambda config: {"seconds": 1.0, "step_seconds": 0.1,
                                                                   "steps_per_epoch": 4, "classes": 10,
                                                                   "device": "cpu"})
    return trained


def run_folder_cases():
    """(name, file under the run's folder, its new content: text, bytes, "dir" or None to delete it, words the error
    must contain besides the file's path)."""
    garbage = 'garbage {"epoch": 1}\n'
    return [
        ("config not JSON", "config.json", "{not json", ["is not valid JSON"]),
        ("config a list", "config.json", "[1, 2]", ["holds a JSON list, not a JSON object"]),
        ("config empty", "config.json", "", ["is empty"]),
        ("config a string", "config.json", '"dense"', ["holds a JSON string"]),
        ("config not UTF-8", "config.json", b"\xff\xfe{}", ["cannot be read"]),
        ("config a directory", "config.json", "dir", ["is not a regular file"]),
        ("config nested absurdly", "config.json", "[" * 100_000, ["is not valid JSON"]),
        ("summary empty", "summary.json", "", ["is empty"]),
        ("summary not JSON", "summary.json", '{"epochs": 2,', ["is not valid JSON"]),
        ("summary null", "summary.json", "null", ["holds JSON null"]),
        ("summary without accuracies", "summary.json", '{"epochs": 2}', ["has no parameters"]),
        ("metrics garbage", "metrics.jsonl", garbage, ["line 1 is not valid JSON"]),
        ("metrics a list per line", "metrics.jsonl", "[1]\n[2]\n", ["line 1 holds a JSON list"]),
        ("metrics empty", "metrics.jsonl", "", ["holds 0 epochs' records, but summary.json says 2 epochs"]),
        ("metrics short records", "metrics.jsonl", '{"epoch": 1}\n{"epoch": 2}\n', ["line 1 has no train_loss"]),
        ("metrics missing", "metrics.jsonl", None, ["not found although the run is finished"]),
    ]


def damage(path: Path, content) -> None:
    if path.is_dir():
        path.rmdir()
    else:
        path.unlink(missing_ok=True)
    if content == "dir":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)


def classify(argv, words, capsys) -> tuple[str, str]:
    return classify_command(main, argv, words, capsys, status=2, one_line=True)


def test_every_damaged_run_file_is_a_clear_error_naming_it(tmp_path, instant_training, capsys):
    out = tmp_path / "finished"
    assert main([*ARGV, "--out", str(out)]) == 0 and len(instant_training) == 6
    findings, cases = [], run_folder_cases()
    for case, name, content, words in cases:
        folder = tmp_path / case.replace(" ", "-")
        shutil.copytree(out, folder)
        damage(folder / RUN / name, content)
        trained = len(instant_training)
        verdict, message = classify([*ARGV, "--out", str(folder)], [f"{folder / RUN / name}: ", *words,
                                                                    f"delete the folder {folder / RUN}"], capsys)
        if len(instant_training) > trained:  # the damaged run was trained over: its files replaced in silence
            verdict, message = "wrong", f"retrained ({verdict}: {message})"
        if verdict != "clear":
            findings.append(f"{verdict:8} {case:28} {message}")
    assert not findings, f"{len(findings)} of {len(cases)} cases not clear:\n" + "\n".join(findings)


@pytest.mark.parametrize("mode", ["--dry-run", "--no-train", "--worker 1/1", "resume"])
def test_every_way_of_reading_a_run_folder_names_a_damaged_config(tmp_path, capsys, mode):
    """A dry run's '(done)' marks, a merge (--no-train), a worker's share and resuming an interrupted run (a
    checkpoint there, no summary yet) all read config.json."""
    out = tmp_path / "o"
    assert main([*ARGV, "--out", str(out)]) == 0
    run_dir = out / RUN
    if mode == "resume":
        (run_dir / "summary.json").unlink()
        (run_dir / "checkpoint.pt").write_bytes(b"a checkpoint")
    (run_dir / "config.json").write_text("[1, 2]")
    verdict, message = classify([*ARGV, "--out", str(out), *([] if mode == "resume" else mode.split())],
                                [f"{run_dir / 'config.json'}: holds a JSON list, not a JSON object",
                                 f"delete the folder {run_dir}"], capsys)
    assert verdict == "clear", message


@pytest.mark.parametrize("content, words", [
    ("{not json", "is not valid JSON"), ("[1, 2]", "holds a JSON list"), ("", "is empty"),
    ('{"comparisons": 3}', "not the results.json of a wtext experiment (TypeError"),
])
def test_plan_names_a_damaged_pilot(tmp_path, capsys, content, words):
    pilot = tmp_path / "pilot"
    pilot.mkdir()
    (pilot / "results.json").write_text(content)
    verdict, message = classify(["plan", "cka", "--pilot", str(pilot), "--device", "cpu"],
                                [f"{pilot / 'results.json'}: {words}", f"delete the folder {pilot}"], capsys)
    assert verdict == "clear", message


# -- one folder, one experiment ------------------------------------------------------------------------------------

def test_another_experiment_is_refused_a_folder_with_results(tmp_path, instant_training, capsys):
    out = tmp_path / "o"
    assert main([*ARGV, "--out", str(out)]) == 0
    before = {name: (out / name).read_bytes() for name in ("results.md", "results.json", "masks.png")}
    assert json.loads((out / "experiment.json").read_text()) == {"experiment": "masks"}
    for command in (["density"], ["density", "--dry-run"], ["deq", "--no-train"]):
        verdict, message = classify([*command, "--seeds", "1", "--device", "cpu", "--out", str(out)],
                                    [f"--out {out} holds the results of the experiment 'masks', not of "
                                     f"'{command[0]}'"], capsys)
        assert verdict == "clear", (command, message)
    assert {name: (out / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(
        f"{family}-{mode}" for family in ("resnet", "vit") for mode in ("dense", "same", "multi"))
    # The same experiment again resumes: every run is skipped.
    assert main([*ARGV, "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("done before, skipped") == 6 and len(instant_training) == 6


def test_a_new_or_empty_folder_is_claimed_and_a_dry_run_claims_nothing(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*ARGV, "--out", str(empty), "--dry-run"]) == 0 and not (empty / "experiment.json").exists()
    assert main(["density", "--seeds", "1", "--epochs", "2", "--device", "cpu", "--out", str(empty)]) == 0
    assert json.loads((empty / "experiment.json").read_text()) == {"experiment": "density"}


def test_a_folder_from_before_the_record_is_known_by_its_report(tmp_path, capsys):
    out = tmp_path / "old"
    out.mkdir()
    (out / "results.md").write_text("# masks (quick scale)\n\nClaim checked: ...\n")
    verdict, message = classify(["density", "--out", str(out)],
                                [f"--out {out} holds the results of the experiment 'masks'"], capsys)
    assert verdict == "clear", message


@pytest.mark.parametrize("content, words", [
    ("{not json", "experiment.json: is not valid JSON"), ('{"experiment": 3}', "experiment.json: names no experiment"),
])
def test_a_damaged_folder_record_is_named(tmp_path, capsys, content, words):
    out = tmp_path / "o"
    out.mkdir()
    (out / "experiment.json").write_text(content)
    verdict, message = classify(["masks", "--out", str(out)], [f"{out}/{words}"], capsys)
    assert verdict == "clear", message


def test_a_pilot_of_another_experiment_is_refused(tmp_path, capsys):
    pilot = tmp_path / "pilot"
    pilot.mkdir()
    (pilot / "experiment.json").write_text('{"experiment": "masks"}')
    (pilot / "results.json").write_text(json.dumps({"runs": {}, "comparisons": [
        {"label": "resnet: multi − same", "differences": [0.01, 0.02, 0.0]}]}))
    verdict, message = classify(["plan", "cka", "--pilot", str(pilot), "--device", "cpu"],
                                [f"--pilot {pilot} holds the results of the experiment 'masks', not of 'cka'"],
                                capsys)
    assert verdict == "clear", message
