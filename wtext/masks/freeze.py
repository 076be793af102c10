"""freeze_checkpoint: a learned-mask checkpoint rewritten with its masks as bits (1 per weight per application)
instead of their scores. The model entry loses `*.learned.scores` and gains `*.learned.bits`; the optimizer loses the
scores' parameter group and the schedule its entries for that group, so the frozen run can be evaluated, resumed
(training the weights under the frozen masks) and used with --init-from like any other."""

import dataclasses
from pathlib import Path

from torch import nn

from wtext import models
from wtext.nn import freeze_masks, learned_masks_of, match_frozen_masks
from wtext.train.checkpoint import load_checkpoint, save_atomic
from wtext.train.config import TrainConfig
from wtext.train.model_builder import adapt_for_training, model_for
from wtext.train.trainer import MASK_SCORES_GROUP

# LambdaLR's per-group entries of a scheduler state.
SCHEDULER_GROUP_LISTS = ("base_lrs", "_last_lr", "lr_lambdas")


@dataclasses.dataclass
class FreezeReport:
    source: Path
    output: Path
    masks: int  # learned masks frozen
    bytes_before: int
    bytes_after: int


def trained_config(saved: dict, path: Path) -> TrainConfig:
    """The TrainConfig a checkpoint was written with (options it predates take their defaults)."""
    stored = saved.get("config")
    if not isinstance(stored, dict):
        raise ValueError(f"{path}: the checkpoint has no config (a dict of the run's options)")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        return TrainConfig(**{name: value for name, value in stored.items() if name in known})
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: its config is not valid: {error}") from None


def model_of_checkpoint(saved: dict, path: Path) -> tuple[TrainConfig, nn.Module]:
    """The checkpoint's model (as trained: masks, adapters) with its weights loaded."""
    config = trained_config(saved, path)
    state = saved["model"]
    head = state.get(models.HEAD + ".weight")
    if head is None:
        raise ValueError(f"{path}: the model state has no classifier head ({models.HEAD}.weight)")
    model = model_for(config, head.shape[0])
    adapt_for_training(model, config)
    try:
        match_frozen_masks(model, state)
        model.load_state_dict(state)
    except (RuntimeError, ValueError) as error:
        raise ValueError(f"{path}: its weights do not fit the model its config describes: "
                         f"{' '.join(str(error).split())[:300]}") from None
    return config, model


def without_group(optimizer_state: dict, name: str) -> tuple[dict, int | None]:
    """optimizer_state without its parameter group `name` and that group's per-parameter state; and the group's
    index (None when there is no such group)."""
    groups = optimizer_state["param_groups"]
    found = [index for index, group in enumerate(groups) if group.get("name") == name]
    if not found:
        return optimizer_state, None
    index = found[0]
    dropped = set(groups[index]["params"])
    state = {key: value for key, value in optimizer_state["state"].items() if key not in dropped}
    return {**optimizer_state, "state": state, "param_groups": groups[:index] + groups[index + 1:]}, index


def scheduler_without_group(scheduler_state: dict, index: int) -> dict:
    result = dict(scheduler_state)
    for key in SCHEDULER_GROUP_LISTS:
        if isinstance(result.get(key), list):
            result[key] = result[key][:index] + result[key][index + 1:]
    return result


def freeze_checkpoint(source: str | Path, output: str | Path | None = None) -> FreezeReport:
    """Writes `source` (a checkpoint file, or a run directory's checkpoint.pt) with its learned masks frozen to
    `output` (default: in place), atomically. A checkpoint without learned masks, or whose masks are frozen already,
    is a ValueError saying so."""
    path = Path(source)
    if path.is_dir():
        path = path / "checkpoint.pt"
    saved = load_checkpoint(path, "cpu")
    config, model = model_of_checkpoint(saved, path)
    learned = learned_masks_of(model)
    if not learned:
        raise ValueError(f"{path}: trained with mask_mode={config.mask_mode}; only learned masks "
                         f"(--mask-mode learned) can be frozen")
    count = freeze_masks(model)
    if count == 0:
        raise ValueError(f"{path}: its learned masks are frozen already")
    saved["model"] = model.state_dict()
    for key in ("optimizer", "scheduler"):
        if not isinstance(saved.get(key), dict):
            raise ValueError(f"{path}: the checkpoint's {key!r} entry is missing or not a dict")
    saved["optimizer"], index = without_group(saved["optimizer"], MASK_SCORES_GROUP)
    if index is not None:
        saved["scheduler"] = scheduler_without_group(saved["scheduler"], index)
    target = Path(output) if output is not None else path
    before = path.stat().st_size
    save_atomic(saved, target)
    return FreezeReport(path, target, count, before, target.stat().st_size)
