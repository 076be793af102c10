"""train_fused: the runs of a sweep that share an architecture, trained as one horizontally fused model (HFTA).

Each member is a real Trainer, built exactly as `wtext.train.run` builds it (seeded with its own seed, its own
data order and augmentation, model, masks, optimizer and schedule); only its steps and evaluations run fused
(wtext.train.steps.FusedStep), driven by the epoch driver every run has (wtext.train.loop.fit). Its run directory
receives what a solo run writes: config.json, metrics.jsonl, checkpoint.pt (the same payload, so --eval-only and
--resume of wtext.train accept it), summary.json and curves.png.

Timing: a fused step trains every member at once, so its time is split evenly among the members: time_s,
images_per_second, eval_time_s and wall_time_s of a member are its share (the group's time / K), and a sweep's
summed times stay the wall time it took.
"""

from itertools import groupby

from wtext.data import DatasetCache

from .config import TrainConfig
from .fusion_groups import check_fusable, describe_member
from .loop import fit
from .run_dir import finished_summary
from .steps import FusedStep
from .trainer import Trainer


def train_fused(configs: list[TrainConfig], log=print) -> list[dict]:
    """Trains the runs `configs` (one fused group: see wtext.train.fusion_groups.check_fusable) and returns their
    summaries, in order, as wtext.train.run would. A run finished before with the same options is skipped (its
    summary is returned); a run with resume=True continues from its checkpoint (members at different positions
    train as separate fused groups, one after another). A member whose loss diverges stops the group with
    NonFiniteLoss, as it stops its solo run; every checkpoint holds the last finite state."""
    configs = list(configs)
    check_fusable(configs)
    results: list[dict | None] = [None] * len(configs)
    datasets = DatasetCache()  # members with the same data share one copy on the device instead of holding K
    members: list[tuple[int, Trainer]] = []
    for index, config in enumerate(configs):
        summary = finished_summary(config)
        if summary is not None:
            log(f"[{config.run_dir}] finished before with the same options: skipped")
            results[index] = summary
            continue
        members.append((index, Trainer(config, load_data=datasets, tag=config.run_dir, write=log)))
    try:
        for _, member in members:
            member.start()
            member.log(f"fused member: {describe_member(member.config)}")
        active = []
        for index, member in members:
            if member.state.epoch >= member.config.epochs:  # its checkpoint already holds every epoch: summarized only
                results[index] = member.summarize(0.0)
            else:
                active.append((index, member))
        position = lambda item: (item[1].state.epoch, item[1].state.step_in_epoch)  # noqa: E731
        for (epoch, step), part in groupby(sorted(active, key=position), key=position):
            part = list(part)
            group = [member for _, member in part]
            fused = FusedStep(group)
            first = group[0]
            log(f"fused group of {len(group)} {first.config.model} runs (width {first.config.width}, depth "
                f"{first.config.depth}) from epoch {epoch + 1}, step {step}, on {fused.device}")
            wall = fit(group, fused)
            for index, member in part:
                results[index] = member.summarize(wall / len(group))
    finally:
        for _, member in members:
            member.close_logs()
    return results
