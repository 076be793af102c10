"""A run directory and the rule for 'the same run': which options a resumption may change, whether a directory
already holds a finished run of a config, preparing the directory, and the settings an evaluated checkpoint
imposes."""

import dataclasses
import json
from collections.abc import Collection
from pathlib import Path

from wtext.json_files import read_json_object
from wtext.safe_files import write_text_atomic

from .config import Role, TrainConfig, options_with, upgrade_saved_options
from .report import write_metrics

# What a new run clears from its directory: files of an earlier run there would be mistaken for its own.
RUN_FILES = ("metrics.jsonl", "summary.json", "curves.png", "checkpoint.pt", "adapter.pt")


def check_run_dir(config: TrainConfig) -> Path:
    run_dir = Path(config.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"run_dir must be a directory; {run_dir} is a file")
    return run_dir


def changed_options(saved: dict, config: TrainConfig) -> list[str]:
    """The options of `config` that differ from a run's saved config, beyond those a resumption may change
    (Role.RESUMABLE). A config saved before an option existed was made with that option's default."""
    config_type = type(config)
    current, defaults = dataclasses.asdict(config), dataclasses.asdict(config_type())
    resumable = options_with(Role.RESUMABLE, config_type)
    saved = upgrade_saved_options(saved)
    return sorted(k for k in current if k not in resumable and saved.get(k, defaults[k]) != current[k])


def run_remedy(run_dir: Path) -> str:
    """What to do about a run's damaged config.json or summary.json."""
    return f"delete the folder {run_dir} and run the same command again to train that run anew"


def read_run_config(run_dir: Path) -> dict | None:
    """The options a run was trained with (its config.json), or None before it was started. A damaged file is a
    wtext.json_files.DamagedFile naming it."""
    return read_json_object(run_dir / "config.json", run_remedy(run_dir))


def read_run_summary(run_dir: Path) -> dict | None:
    """A run's summary.json, or None before it finished. A damaged file is a DamagedFile naming it."""
    return read_json_object(run_dir / "summary.json", run_remedy(run_dir))


def same_config(run_dir: Path, config: TrainConfig) -> bool:
    """Whether run_dir/config.json was written for these options (up to those a resumption may change)."""
    saved = read_run_config(run_dir)
    return saved is not None and not changed_options(saved, config)


def finished_summary(config: TrainConfig) -> dict | None:
    """The summary of a run finished before in config.run_dir with the same options and epochs, or None."""
    run_dir = Path(config.run_dir)
    summary = read_run_summary(run_dir)
    if summary is None or not same_config(run_dir, config):
        return None
    return summary if summary.get("epochs") == config.epochs else None


def prepare_run_dir(run_dir: Path, config: TrainConfig, history: list[dict]) -> None:
    """Makes the directory and writes config.json. A resumed run rewrites metrics.jsonl from its checkpoint's
    history (the checkpoint is the record of what finished: metrics written after it, or lost before it, are
    rewritten from it); a new run clears an earlier run's files."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if config.resume:
        write_metrics(run_dir, history)
    else:
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
    write_text_atomic(run_dir / "config.json", json.dumps(dataclasses.asdict(config), indent=2) + "\n")


def evaluated_checkpoint_path(config: TrainConfig) -> Path:
    return Path(config.checkpoint) if config.checkpoint else Path(config.run_dir) / "checkpoint.pt"


def settings_for_evaluation(config: TrainConfig, trained: dict, path: Path,
                            given: Collection[str] | None = None) -> TrainConfig:
    """`config` with the model and mask settings the checkpoint was trained with (Role.MODEL): a differently masked
    network would report another network's accuracy. An option the user gave with another value is an error; one
    not given takes the trained value. The data (Role.DATA) is the checkpoint's unless another is asked for
    (evaluating on other data is legitimate).

    given: the names of the options the user set (on the command line or in a config file). An option given is the
    user's even at its default value: `--model resnet-tiny` must not evaluate a ViT checkpoint. None (a TrainConfig
    built in Python, which cannot tell): the options that differ from their defaults."""
    config_type = type(config)
    defaults = config_type()
    if given is None:
        given = {f.name for f in dataclasses.fields(config) if getattr(config, f.name) != getattr(defaults, f.name)}
    updates = {name: trained[name] for name in options_with(Role.DATA, config_type)
               if name in trained and name not in given}
    for name in options_with(Role.MODEL, config_type):
        value = getattr(config, name)
        if name not in trained or trained[name] == value:
            continue
        if name in given:
            raise ValueError(f"{path} was trained with {name}={trained[name]!r}; --eval-only evaluates the model as "
                             f"it was trained, so {name}={value!r} cannot apply (drop the option)")
        updates[name] = trained[name]
    try:
        return dataclasses.replace(config, **updates) if updates else config
    except (TypeError, ValueError, OverflowError) as error:  # a hand-edited config: TrainConfig names the option
        raise ValueError(f"{path}: its config is not a valid run's: {error}") from None
