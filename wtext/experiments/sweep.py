"""Running a sweep of training runs over seeds into one results directory.

Every (run, seed) trains into OUT/runs/RUN/seed-S. A finished one (summary.json, same options) is skipped and an
interrupted one resumes from its checkpoint, so a sweep stopped anywhere continues where it stopped. Compared runs
share their seed: the same data order, initialization and mask seed (paired runs). Workers (worker=(i, n)) each
train the i-th of every n jobs and stop; the same command without a worker then merges the results.

An option of a run may be a function of the seed (`{"init_from": lambda seed: ...}`): it is called once per seed,
e.g. to start each seed's transfer run from the pretraining run of the same seed. Runs that need other runs'
results are a later stage (Sweep.run_stages).
"""

import contextlib
import dataclasses
import io
import json
import math
import tempfile
import time
from pathlib import Path

from wtext.train import Role, TrainConfig, options_with, run
from wtext.train.run_dir import finished_summary, same_config

from .run_files import read_finished_run


class PlanShown(Exception):
    """Raised by a dry-run sweep once it has shown its plan."""


class WorkerFinished(Exception):
    """Raised by a worker's sweep once it has trained its share of the runs."""


@dataclasses.dataclass(frozen=True)
class Job:
    """One (run, seed) of a sweep."""

    name: str
    seed: int
    config: TrainConfig

    @property
    def label(self) -> str:
        return f"{self.name} seed {self.seed}"


def run_dir_of(out_dir: Path, name: str, seed: int) -> Path:
    return out_dir / "runs" / name / f"seed-{seed}"


def finished(job: Job) -> bool:
    """Whether the job's run directory holds a finished run of its options and epochs (the rule training itself
    skips a run by; a damaged file there is an error naming it)."""
    return finished_summary(job.config) is not None


def load_result(job: Job) -> dict:
    """A finished job's summary, metrics per epoch, resolved config and seed."""
    summary, metrics = read_finished_run(Path(job.config.run_dir))
    return {"seed": job.seed, "summary": summary, "metrics": metrics, "config": dataclasses.asdict(job.config)}


def resumable(job: Job) -> bool:
    """Whether the job's run directory holds a checkpoint of the same options to continue from."""
    run_dir = Path(job.config.run_dir)
    return (run_dir / "checkpoint.pt").is_file() and same_config(run_dir, job.config)


def train_job(job: Job) -> None:
    """Trains a job, resuming it when its run directory holds a checkpoint of the same options."""
    run(dataclasses.replace(job.config, resume=resumable(job)))


def train_fused_jobs(jobs: list[Job], log, max_members: int | None = None) -> None:
    """Trains jobs that share an architecture as horizontally fused groups (wtext.train.fused), the others alone;
    says how they were grouped and why."""
    from wtext.train.fused import train_fused
    from wtext.train.fusion_groups import explain_groups, group_for_fusion

    configs = [dataclasses.replace(job.config, resume=resumable(job)) for job in jobs]
    groups = group_for_fusion(configs, max_members=max_members)
    for line in explain_groups(configs, groups):
        log(line)
    for group in groups:
        if len(group) == 1:
            train_job(jobs[group[0]])
        else:
            train_fused([configs[i] for i in group], log=log)


def markdown_table(header: list[str], rows: list[list]) -> str:
    def cell(value):
        if isinstance(value, float):
            return f"{value:.4g}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


class Sweep:
    """What an experiment trains its runs with: run(runs) trains every run at every seed and returns
    {name: [result of seed s for s in seeds]}.

    base: the scale's options; given: options from the command line: those of the training budget and the data's
    location (Role.BUDGET) always win; any other (model, width, depth, dataset ...) is the base of every run, but an
    experiment that varies it keeps its own values (a width-vs-depth sweep keeps its widths); seeds: the seeds every
    run is trained with; worker: (i, n) to train only the jobs j with j % n == i and stop; dry_run: list the jobs
    with measured time estimates and stop; train: False to refuse training (merging workers' results only: an error
    names the jobs still missing); config_type: the runs' config class (TrainConfig, or a subclass with more
    options, treated by their declared roles); effect: a difference the verdict tables size the seeds for (--effect).
    """

    def __init__(self, out_dir: Path, base: dict, log=print, dry_run: bool = False, given: dict | None = None,
                 seeds: tuple[int, ...] = (0,), worker: tuple[int, int] | None = None, train: bool = True,
                 fuse: bool = False, fuse_max: int | None = None, config_type: type = TrainConfig,
                 effect: float | None = None):
        if not seeds:
            raise ValueError("a sweep needs at least one seed")
        self.out_dir, self.base, self.log, self.dry_run = out_dir, base, log, dry_run
        self.given = given or {}
        self.seeds, self.worker, self.train = tuple(seeds), worker, train
        self.fuse, self.fuse_max = fuse, fuse_max
        self.config_type = config_type
        self.noted: set[str] = set()
        self.effect = effect  # a difference to size the seeds for in the verdicts (--effect)
        self.estimated_seconds: float | None = None  # set by a dry run: every job's estimated wall time, summed

    def jobs(self, runs: dict[str, dict]) -> list[Job]:
        jobs = []
        budget = options_with(Role.BUDGET, self.config_type)
        for name, overrides in runs.items():
            options = {**self.base}
            for key, value in self.given.items():
                if key in overrides and key not in budget and overrides[key] != value:
                    self.note(f"note: this experiment sets {key} per run (e.g. {name}: {key}={overrides[key]}); "
                              f"the given {key}={value} is the base of the runs that do not")
                else:
                    options[key] = value
            options.update({k: v for k, v in overrides.items() if k not in self.given or k not in budget})
            for seed in self.seeds:
                resolved = {k: v(seed) if callable(v) else v for k, v in options.items()}  # per-seed options
                # The seed sets data order, initialization and augmentation, and the mask seed is the seed too: the
                # spread over seeds includes the masks' draw, while compared runs of one seed share their masks.
                resolved.update(seed=seed, mask_seed=seed, run_dir=str(run_dir_of(self.out_dir, name, seed)))
                config = self.config_type(**resolved)
                jobs.append(Job(name, seed, config))
        return jobs

    def note(self, message: str) -> None:
        if message not in self.noted:
            self.noted.add(message)
            self.log(message)

    def run(self, runs: dict[str, dict]) -> dict[str, list[dict]]:
        return self.run_stages([runs])

    def run_stages(self, stages: list[dict[str, dict]]) -> dict[str, list[dict]]:
        """Trains stage after stage (each a `runs` dict of run()), for runs that start from earlier stages' runs
        (--init-from their checkpoints), and returns every stage's results in one dict. A dry run lists the jobs of
        every stage; a worker trains its share of the first stage not finished yet and stops, so the workers are
        started once per stage (each round after the previous one has finished)."""
        job_lists = [self.jobs(runs) for runs in stages]
        if self.dry_run:
            self.show_plan([job for jobs in job_lists for job in jobs])
            raise PlanShown
        results: dict[str, list[dict]] = {}
        for number, jobs in enumerate(job_lists, start=1):
            if self.worker is not None:
                if number < len(job_lists) and all(finished(job) for job in jobs):
                    self.log(f"stage {number} of {len(job_lists)}: every run finished")
                    results.update(self.results_of(jobs))
                    continue
                self.train_share(jobs)
                if number < len(job_lists):
                    self.log(f"stage {number} of {len(job_lists)}: when every worker has finished it, start the "
                             f"workers again for the next stage")
                raise WorkerFinished
            results.update(self.train_jobs(jobs))
        return results

    def train_jobs(self, jobs: list[Job]) -> dict[str, list[dict]]:
        missing = [job for job in jobs if not finished(job)]
        if missing and not self.train:
            raise ValueError(f"{len(missing)} of {len(jobs)} runs are not finished (e.g. "
                             f"{', '.join(job.label for job in missing[:4])}); run the workers first, or merge "
                             f"without --no-train to train them here")
        self.train_all([(f"[{index}/{len(jobs)}]", job) for index, job in enumerate(jobs, start=1)])
        return self.results_of(jobs)

    def train_all(self, numbered: list[tuple[str, Job]]) -> None:
        """Trains the unfinished jobs of (label, job) pairs, alone or, with fuse, in fused groups."""
        todo = []
        for number, job in numbered:
            if finished(job):
                self.log(f"{number} {job.label}: done before, skipped")
            else:
                self.log(f"{number} {job.label}: training")
                todo.append(job)
        if self.fuse and todo:
            train_fused_jobs(todo, self.log, self.fuse_max)
        else:
            for job in todo:
                train_job(job)

    @staticmethod
    def results_of(jobs: list[Job]) -> dict[str, list[dict]]:
        results: dict[str, list[dict]] = {}
        for job in jobs:
            results.setdefault(job.name, []).append(load_result(job))
        return results

    def train_share(self, jobs: list[Job]) -> None:
        index, count = self.worker
        share = jobs[index::count]
        self.log(f"worker {index + 1} of {count}: {len(share)} of {len(jobs)} runs")
        self.train_all([(f"[{number}/{len(share)}]", job) for number, job in enumerate(share, start=1)])
        self.log(f"worker {index + 1} of {count}: done; when every worker has finished, run the same command "
                 f"without --worker to merge the results")

    def show_plan(self, jobs: list[Job]) -> None:
        """Lists the jobs with a wall-time estimate each, from a few measured training and evaluation steps of
        every distinct model on the chosen device."""
        from wtext.models import describe
        from wtext.train.model_builder import adapt_for_training, model_for

        estimates: dict[str, dict] = {}
        total, remaining = 0.0, 0.0
        self.log(f"{len(jobs)} runs ({len(self.seeds)} seed(s) each); estimating from measured steps:")
        for job in jobs:
            key = estimate_key(job.config)
            if key not in estimates:
                estimates[key] = measure_run_cost(job.config)
            cost = estimates[key]
            done = finished(job)
            total += cost["seconds"]
            remaining += 0.0 if done else cost["seconds"]
            model = model_for(job.config, cost["classes"])
            adapt_for_training(model, job.config)  # LoRA adapters count; frozen weights are noted
            facts = describe(model)
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            frozen = f" ({trainable:,} trainable)" if trainable < facts["stored"] else ""
            self.log(f"{job.label:<30} {facts['stored']:>10,} params{frozen}  {job.config.epochs} epochs x "
                     f"{cost['steps_per_epoch']} steps on {job.config.dataset}  ~{format_seconds(cost['seconds'])}"
                     f"{'  (done)' if done else ''}")
        self.estimated_seconds = total
        self.log(f"estimated total {format_seconds(total)} on {estimates[next(iter(estimates))]['device']}; "
                 f"still to run {format_seconds(remaining)} ({len(estimates)} distinct models measured)")


def estimate_key(config: TrainConfig) -> str:
    """Runs that differ only in options that change no step's cost (Role.COST_NEUTRAL: seeds, run directory, starting
    weights ...) cost the same."""
    options = dataclasses.asdict(config)
    for name in options_with(Role.COST_NEUTRAL, type(config)):
        options.pop(name)
    return json.dumps(options, sort_keys=True)


def format_seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# Images in the training and test splits of the data sets read from files. A dry run times their steps on synthetic
# images of the same shape (3x32x32), so it needs neither the files nor the time to read them.
FILE_DATASET_SIZES = {"cifar10": (50_000, 10_000, 10), "imagenet32": (1_281_167, 50_000, 1000)}


def measure_run_cost(config: TrainConfig, warmup: int = 2, timed: int = 3) -> dict:
    """Estimated wall time of a run: a few training steps and evaluation batches of the real trainer timed on the
    configured device, scaled to the run's steps per epoch, test batches and epochs."""
    import torch

    from wtext.train import Trainer

    # Starting weights do not change the cost (and a later stage's are not trained yet when its plan is shown).
    measured = dataclasses.replace(config, progress=False, init_from=None)
    if config.dataset in FILE_DATASET_SIZES:
        images = config.batch_size * (warmup + timed)
        measured = dataclasses.replace(measured, dataset="synthetic", data_dir=None, synthetic_train=images,
                                       synthetic_test=images)
    with tempfile.TemporaryDirectory() as scratch, contextlib.redirect_stdout(io.StringIO()):
        trainer = Trainer(dataclasses.replace(measured, run_dir=str(Path(scratch) / "run")))
        device = trainer.device

        def synchronize():
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        batches = iter(trainer.train_loader.epoch(0))
        steps = min(warmup + timed, len(trainer.train_loader))
        durations = []
        for _ in range(steps):
            images, labels = next(batches)
            synchronize()
            start = time.perf_counter()
            trainer.train_step(images, labels)
            synchronize()
            durations.append(time.perf_counter() - start)
        step_seconds = min(durations[min(warmup, steps - 1):])
        trainer.model.eval()
        eval_durations = []
        with torch.no_grad():
            for number, (images, _) in enumerate(trainer.test_loader.epoch(0)):
                if number >= warmup + timed:
                    break
                synchronize()
                start = time.perf_counter()
                with trainer.autocast:
                    trainer.core(images)
                synchronize()
                eval_durations.append(time.perf_counter() - start)
        eval_seconds = min(eval_durations[min(warmup, len(eval_durations) - 1):])
        steps_per_epoch, test_batches = len(trainer.train_loader), len(trainer.test_loader)
        classes = trainer.data.num_classes
    if config.dataset in FILE_DATASET_SIZES:
        train_images, test_images, classes = FILE_DATASET_SIZES[config.dataset]
        steps_per_epoch, test_batches = train_images // config.batch_size, math.ceil(test_images / config.batch_size)
    seconds = config.epochs * (steps_per_epoch * step_seconds + test_batches * eval_seconds)
    return {"seconds": seconds, "step_seconds": step_seconds, "steps_per_epoch": steps_per_epoch,
            "classes": classes, "device": str(device)}


def parse_worker(text: str) -> tuple[int, int]:
    """'I/N' (1-based I) or 'slurm' (this Slurm array task's place in its array) -> (0-based index, count)."""
    import os

    if text == "slurm":
        try:
            task = int(os.environ["SLURM_ARRAY_TASK_ID"])
            first = int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0"))
            step = int(os.environ.get("SLURM_ARRAY_TASK_STEP", "1"))  # --array=0-14:2 numbers tasks 0, 2, ...
            count = int(os.environ["SLURM_ARRAY_TASK_COUNT"])
        except (KeyError, ValueError):
            raise ValueError("--worker slurm: SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT must be set (submit "
                             "with sbatch --array=0-N)") from None
        if step < 1 or (task - first) % step:
            raise ValueError(f"--worker slurm: task {task} is not in the array {first}-...:{step}")
        index = (task - first) // step
    else:
        parts = text.split("/")
        if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
            raise ValueError(f"--worker must be I/N (e.g. 2/4: the second of 4 workers) or slurm; got {text!r}")
        index, count = int(parts[0]) - 1, int(parts[1])
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"--worker I/N needs 1 <= I <= N; got {text!r}")
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--worker slurm: task {index} is outside an array of {count} tasks")
    return index, count
