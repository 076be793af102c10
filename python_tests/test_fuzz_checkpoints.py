"""A hostile user's checkpoints and adapters, given to `python -m wtext.train` and to wtext.lora, each classified as in
test_fuzz_cli_data:

    clear    the run stops with a one-line error that names the problem, with the expected exit status
    unclear  it stops, but the message does not name the problem, the exit status is another, or a traceback is
             printed
    crash    an exception escapes the command instead of an error message
    wrong    it does not stop (evaluates, trains or loads) although the input is bad

Every case must be clear. On failure the test prints the table of the cases that were not. The checkpoints are
those of one tiny run, each damaged in one way: NaN or infinite weights, entries missing or of the wrong type.
"""

import copy
import dataclasses
import shutil

import pytest
import torch

from wtext import lora
from wtext.models import build_model
from wtext.train import TrainConfig
from wtext.train.__main__ import main
from wtext.train.run_dir import settings_for_evaluation

from cli_verdicts import classify_command
from test_fuzz_cli_data import FAST

BAD_OPTION = 2  # the exit status of a bad option, file or checkpoint (wtext.train.__main__)
RESUME = ["--epochs", "2"]  # the tiny run trained one epoch: a wrongly accepted resumption trains a second one


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(folder, state): a tiny ResNet run of FAST's options and its checkpoint, and a tiny ViT run beside it."""
    folder = tmp_path_factory.mktemp("runs")
    assert main([*FAST, "--run-dir", str(folder / "resnet")]) == 0
    vit = ["--model", "vit-tiny", "--depth", "1", "--epochs", "1", "--synthetic-train", "64", "--synthetic-test", "32",
           "--batch-size", "32", "--no-progress", "--device", "cpu", "--run-dir", str(folder / "vit")]
    assert main(vit) == 0
    return folder, torch.load(folder / "resnet" / "checkpoint.pt", weights_only=True)


def damaged(state: dict, change) -> dict:
    """A deep copy of a checkpoint with `change` applied (a function of the copy, returning nothing)."""
    state = copy.deepcopy(state)
    change(state)
    return state


def without(key):
    return lambda state: state.pop(key)


def setting(key, value):
    return lambda state: state.__setitem__(key, value)


def poisoned(key_part: str, value: float):
    """Sets every model tensor whose name contains key_part to `value` (NaN or an infinity)."""
    def change(state):
        for name, tensor in state["model"].items():
            if key_part in name and tensor.is_floating_point():
                tensor.fill_(value)
    return change


def poisoned_moment(state):
    first = next(iter(state["optimizer"]["state"].values()))
    first["exp_avg"].fill_(float("nan"))


def structure_cases():
    """(name, change, words the error must contain): a checkpoint entry missing or of the wrong type."""
    return [
        ("config a list", setting("config", [1]), ["'config' entry must be a dict"]),
        ("config with int keys", setting("config", {1: 2}), ["'config' entry must be a dict"]),
        ("model a list", setting("model", [torch.zeros(2)]), ["'model' entry must be a dict of named tensors"]),
        ("model holds a number", setting("model", {"stem.0.weight": 1.0}), ["'model' entry must be a dict"]),
        ("optimizer a list", setting("optimizer", []), ["'optimizer' entry must be an optimizer state"]),
        ("optimizer without groups", lambda s: s["optimizer"].pop("param_groups"), ["'optimizer' entry must be"]),
        ("scheduler a string", setting("scheduler", "cosine"), ["'scheduler' entry must be a scheduler state"]),
        ("scheduler step a string", lambda s: s["scheduler"].__setitem__("last_epoch", "2"),
         ["'scheduler' entry must be"]),
        ("epoch a string", setting("epoch", "1"), ["'epoch' entry must be an int >= 0; got '1' (str)"]),
        ("epoch negative", setting("epoch", -1), ["'epoch' entry must be an int >= 0; got -1"]),
        ("epoch a bool", setting("epoch", True), ["'epoch' entry must be an int >= 0; got True (bool)"]),
        ("step a float", setting("step_in_epoch", 1.5), ["'step_in_epoch' entry must be an int >= 0"]),
        ("steps done None", setting("steps_done", None), ["'steps_done' entry must be an int >= 0; got None"]),
        ("seconds NaN", setting("seconds", float("nan")), ["'seconds' entry must be a finite number"]),
        ("history a dict", setting("history", {}), ["'history' entry must be a list"]),
        ("history of tensors", lambda s: s["history"][0].__setitem__("test_loss", torch.ones(1)),
         ["'history' entry must be a list"]),
        ("best one number", setting("best", [0.5]), ["'best' entry must be [best test accuracy, its epoch]"]),
        ("best strings", setting("best", ["a", "b"]), ["'best' entry must be"]),
        ("rng a tensor", setting("rng", torch.zeros(3)), ["'rng' entry must be the RNG states"]),
        ("rng torch state float", lambda s: s["rng"].__setitem__("torch", torch.zeros(3)), ["'rng' entry must be"]),
        ("running a list", setting("running", [0.0]), ["'running' entry must be the epoch's running sums"]),
        ("running 2-d", setting("running", torch.zeros(2, 10, dtype=torch.float64)), ["'running' entry must be"]),
    ]


def resume_only_cases():
    """(name, change, words): damage that only a resumed run meets (evaluation reads model and config only)."""
    missing = [(f"no {key}", without(key), [f"it has no {key!r} entry, which a resumed run needs"])
               for key in ("config", "optimizer", "scheduler", "epoch", "rng", "running", "history", "best")]
    return missing + [
        ("optimizer of another model", lambda s: s["optimizer"]["param_groups"].append(
            dict(s["optimizer"]["param_groups"][0])), ["'optimizer' entry does not fit this run"]),
        ("scheduler without lambdas", lambda s: s["scheduler"].pop("lr_lambdas"),
         ["'scheduler' entry does not fit this run"]),
        ("torch RNG state cut", lambda s: s["rng"].__setitem__("torch", s["rng"]["torch"][:10]),
         ["'rng' entry does not fit this run"]),
        ("python RNG state wrong", lambda s: s["rng"].__setitem__("python", [3, [1, 2], None]),
         ["'rng' entry does not fit this run"]),
        ("running sums of a newer wtext", setting("running", torch.zeros(40, dtype=torch.float64)),
         ["'running' entry does not fit this run", "newer wtext"]),
        ("step past the epoch", setting("step_in_epoch", 1000), ["'step_in_epoch' entry is 1000, past the 2 steps"]),
        ("NaN Adam moment", poisoned_moment, ["training state is not finite", "exp_avg"]),
        ("NaN running sums", lambda s: s["running"].fill_(float("nan")), ["training state is not finite",
                                                                         "running sums"]),
    ]


def non_finite_cases():
    """(name, change, words): weights holding NaN or infinities. Training checkpoints only finite weights, so
    evaluation, --init-from and --resume refuse them, naming the tensors."""
    return [
        ("NaN weights", poisoned("", float("nan")),
         ["its weights are not finite", "stem.0.weight", "(24 of 24 tensors)"]),
        ("one infinite tensor", poisoned("head.weight", float("inf")),
         ["its weights are not finite: NaN or infinite values in head.weight (1 of 24 tensors)"]),
        ("-inf in a tied weight", poisoned("cells.0.conv1.weight", -float("inf")),
         ["its weights are not finite", "cells.0.conv1.weight"]),
    ]


def checkpoint_cases(folder, state):
    """(name, argv, words, exit status) of every damaged checkpoint under every command that reads it."""
    cases = []
    for index, (name, change, words) in enumerate(structure_cases() + non_finite_cases()):
        path = folder / f"case-{index}" / "checkpoint.pt"
        path.parent.mkdir()
        torch.save(damaged(state, change), path)
        words = [str(path), *words]
        cases.append((f"--eval-only: {name}", ["--eval-only", "--checkpoint", str(path)], words, BAD_OPTION))
        cases.append((f"--resume: {name}", ["--resume", "--run-dir", str(path.parent), *RESUME], words, BAD_OPTION))
        if name == "NaN weights":  # --init-from reads a checkpoint as evaluation does: one case shows it
            cases.append((f"--init-from: {name}", ["--init-from", str(path), "--run-dir", str(folder / "init")],
                          words, BAD_OPTION))
    for index, (name, change, words) in enumerate(resume_only_cases()):
        path = folder / f"resume-{index}" / "checkpoint.pt"
        path.parent.mkdir()
        torch.save(damaged(state, change), path)
        cases.append((f"--resume: {name}", ["--resume", "--run-dir", str(path.parent), *RESUME], [str(path), *words],
                      BAD_OPTION))
    bad_config = folder / "bad-config.pt"
    torch.save(damaged(state, lambda s: s["config"].__setitem__("model", 3)), bad_config)
    cases.append(("--eval-only: config model a number", ["--eval-only", "--checkpoint", str(bad_config)],
                  [str(bad_config), "its config is not a valid run's: model must be str"], BAD_OPTION))
    return cases


def option_cases(folder):
    """(name, argv, words, exit status): options that conflict with a checkpoint, and a LoRA rank no layer can use."""
    vit = folder / "vit" / "checkpoint.pt"
    resnet_toml = folder / "resnet.toml"
    resnet_toml.write_text('model = "resnet-tiny"\n')
    vit_copy = folder / "vit-resumed"
    if not vit_copy.exists():
        shutil.copytree(folder / "vit", vit_copy)
    conflict = [str(vit), "was trained with model='vit-tiny'", "so model='resnet-tiny' cannot apply"]
    return [
        # The given --model is the default; before, it was taken for an option left out and the ViT was evaluated.
        ("--eval-only --model DEFAULT of a ViT", ["--eval-only", "--model", "resnet-tiny", "--checkpoint", str(vit)],
         conflict, BAD_OPTION),
        ("--eval-only, config file sets the default model", ["--eval-only", "--config", str(resnet_toml),
                                                             "--checkpoint", str(vit)], conflict, BAD_OPTION),
        # --resume compares every option, given or not: the same rule holds there.
        ("--resume --model DEFAULT of a ViT run", ["--resume", "--model", "resnet-tiny", "--run-dir", str(vit_copy)],
         ["was written with model='vit-tiny', this run has model='resnet-tiny'"], BAD_OPTION),
        ("--lora rank 10^9", ["--lora", "r=1000000000", "--run-dir", str(folder / "lora")],
         ["LoRA rank 1000000000 is more than module 'cells.0.conv1' can use", "<= min(out, in*kh*kw) = 16"],
         BAD_OPTION),
        ("--lora rank above one layer's", ["--lora", "r=17", "--run-dir", str(folder / "lora")],
         ["LoRA rank 17 is more than module 'cells.0.conv1' can use", "= 16"], BAD_OPTION),
    ]


def classify_cli(argv, words, status, capsys) -> tuple[str, str]:
    return classify_command(main, [*FAST, *argv], words, capsys, status=status)


def test_every_damaged_checkpoint_is_a_clear_one_line_error(trained, capsys):
    folder, state = trained
    findings = []
    cases = checkpoint_cases(folder, state) + option_cases(folder)
    for name, argv, words, status in cases:
        verdict, message = classify_cli(argv, words, status, capsys)
        if verdict != "clear":
            findings.append(f"{verdict:8} {name:48} {message}")
    assert not findings, f"{len(findings)} of {len(cases)} cases not clear:\n" + "\n".join(findings)
    assert len(cases) >= 70


def test_the_checks_pass_what_training_writes(trained, capsys):
    """A checkpoint without optimizer state still evaluates (evaluation reads model and config only); the good
    checkpoint resumes (read on the CPU before the data, then moved to the run's device)."""
    folder, state = trained
    stripped = folder / "stripped.pt"
    torch.save({key: state[key] for key in ("model", "config", "format")}, stripped)
    assert main([*FAST, "--eval-only", "--checkpoint", str(stripped)]) == 0
    resumed = folder / "resumed"
    shutil.copytree(folder / "resnet", resumed)
    assert main([*FAST, "--resume", "--run-dir", str(resumed), *RESUME]) == 0
    assert "epoch 2:" in capsys.readouterr().out


def test_given_options_are_the_users_even_at_their_defaults(tmp_path):
    """settings_for_evaluation: a given option (command line, config file) is the user's at any value; without
    `given` (a TrainConfig built in Python) the options at their defaults count as not given."""
    config = TrainConfig(eval_only=True, run_dir=str(tmp_path))
    trained = dataclasses.asdict(dataclasses.replace(config, model="vit-tiny", synthetic_test=48))
    path = tmp_path / "checkpoint.pt"
    assert settings_for_evaluation(config, trained, path).model == "vit-tiny"
    assert settings_for_evaluation(config, trained, path, given=set()).synthetic_test == 48
    assert settings_for_evaluation(config, trained, path, given={"synthetic_test"}).synthetic_test == 2000
    with pytest.raises(ValueError, match=r"trained with model='vit-tiny'; .* so model='resnet-tiny' cannot apply"):
        settings_for_evaluation(config, trained, path, given={"model"})


# --- wtext.lora: the library refuses what the command line refuses ---------------------------------------------

def base_model():
    """A tiny ResNet whose smallest tied weight, cells.0.conv1, is 16 x 72: LoRA ranks up to 16 fit it."""
    return build_model("resnet-tiny", width=8, depth=1)


def adapter_file(folder, change=None):
    """An adapter file of a LoRA-injected tiny ResNet (factors made non-zero), with `change` applied to its tensors."""
    model = base_model()
    lora.inject(model, lora.LoRAConfig(rank=2, train_modules=("head",)))
    with torch.no_grad():
        for _, adapter in lora.adapters(model).values():
            adapter.B.normal_()
    path = folder / "adapter.pt"
    lora.save_adapter(model, path)
    if change is not None:
        payload = torch.load(path, weights_only=True)
        change(payload["tensors"])
        torch.save(payload, path)
    return path


def lora_cases(folder):
    """(name, call, words the ValueError must contain)."""
    def fill(key, value):
        return lambda tensors: tensors[key].fill_(value)

    nan_factor = adapter_file(folder / "nan", fill("cells.0.conv1.lora.A", float("nan")))
    inf_head = adapter_file(folder / "inf", fill("head.weight", float("inf")))
    huge = lora.LoRAConfig(rank=10**9)
    diverged, kept = base_model(), folder / "kept.pt"
    lora.inject(diverged, lora.LoRAConfig(rank=2))
    kept.write_bytes(b"an older adapter")
    with torch.no_grad():
        next(iter(lora.adapters(diverged).values()))[1].A.fill_(float("inf"))

    def save_diverged():  # refused, and the older file at the path kept
        try:
            lora.save_adapter(diverged, kept)
        finally:
            assert kept.read_bytes() == b"an older adapter", "the older file was replaced"

    return [
        ("save_adapter: infinite factor", save_diverged,
         [f"cannot save the adapter to {kept}", "NaN or infinite values in", ".lora.A (1 of", "nothing was written"]),
        ("load_adapter: NaN factor", lambda: lora.load_adapter(base_model(), nan_factor),
         [str(nan_factor), "adapter tensors are not finite", "cells.0.conv1.lora.A (1 of"]),
        ("read_adapter: NaN factor", lambda: lora.read_adapter(nan_factor), [str(nan_factor), "cells.0.conv1.lora.A"]),
        ("load_adapter: infinite head", lambda: lora.load_adapter(base_model(), inf_head), [str(inf_head), "head.weight"]),
        ("inject: rank 10^9", lambda: lora.inject(base_model(), huge),
         ["LoRA rank 1000000000", "module 'cells.0.conv1'", "<= min(out, in*kh*kw) = 16"]),
        ("plan: rank 10^9", lambda: lora.plan(base_model(), huge), ["LoRA rank 1000000000"]),
        ("inject: rank above a Linear's inputs", lambda: lora.inject(torch.nn.Sequential(torch.nn.Linear(3, 40)),
                                                                     lora.LoRAConfig(rank=4, targets=("0",))),
         ["LoRA rank 4 is more than module '0' can use: its weight is 40 x 3", "= 3"]),
        ("LoRAAdapter: rank 10^9", lambda: lora.LoRAAdapter("linear", 4, (5,), huge, "fc"),
         ["LoRA rank 1000000000 is more than module 'fc' can use", "= 4"]),
    ]


def classify_call(call, words) -> tuple[str, str]:
    try:
        call()
    except ValueError as error:
        message = str(error)
        return ("clear" if all(word in message for word in words) and "\n" not in message else "unclear"), \
            message[:300]
    except BaseException as error:  # noqa: BLE001
        return "crash", f"{type(error).__name__}: {error}"[:300]
    return "wrong", "no error"


def test_every_bad_adapter_is_a_clear_value_error(tmp_path):
    findings = []
    cases = lora_cases(tmp_path)
    for name, call, words in cases:
        verdict, message = classify_call(call, words)
        if verdict != "clear":
            findings.append(f"{verdict:8} {name:40} {message}")
    assert not findings, f"{len(findings)} of {len(cases)} cases not clear:\n" + "\n".join(findings)


def test_a_finite_adapter_still_loads(tmp_path):
    path = adapter_file(tmp_path)
    model = base_model()
    assert len(lora.load_adapter(model, path)) > 0
    assert lora.lora_config(model).rank == 2


def test_the_rank_bound_admits_min_out_in():
    targets, _ = lora.plan(base_model(), lora.LoRAConfig(rank=16, targets=("cells.0.conv1",)))
    assert [(t.out_features, t.in_shape) for t in targets] == [(16, (8, 3, 3))]
    assert lora.LoRAAdapter("linear", 4, (5,), lora.LoRAConfig(rank=4), "fc").A.shape == (4, 5)
