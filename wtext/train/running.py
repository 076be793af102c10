"""The running sums of an epoch: what every training step adds (step_sums), how a checkpoint's sums are read back,
and the epoch's metrics they give."""

import torch

# The running sums, in the order of the tensors that hold them; code reads them by name (RUNNING_KEYS.index or
# as_dict), never by position. solver_steps: the batch mean of each forward solve's steps, summed over solves (solves
# counts them); backward_solver_steps: the same for the adjoint solves of implicit backward (backward_solves counts
# them); reconstruction_error: the worst sample's reconstruction error of each reversible backward pass, summed
# (reversible_backwards counts them). New sums go at the end: a checkpoint holds the tensor, and one written with fewer keys is padded on restore
# (see restore_running).
RUNNING_KEYS = ("loss", "correct", "images", "solver_steps", "solver_residual", "solves", "backward_solver_steps",
                "backward_solves", "reconstruction_error", "reversible_backwards")
SOLVER_KEYS = RUNNING_KEYS[RUNNING_KEYS.index("solver_steps"):]


def zero_sums(device: torch.device) -> torch.Tensor:
    """A run's running sums at the start of an epoch: [len(RUNNING_KEYS)] float64 on `device`. Accumulated on the
    device in float64 and checkpointed as they are, so a resumed epoch adds the same numbers in the same order as an
    uninterrupted one."""
    return torch.zeros(len(RUNNING_KEYS), dtype=torch.float64, device=device)


def as_dict(sums: list[float]) -> dict[str, float]:
    """Host values of one run's running sums, by name."""
    return dict(zip(RUNNING_KEYS, sums))


def sum_of(sums: torch.Tensor, key: str) -> torch.Tensor:
    """One running sum of a [..., len(RUNNING_KEYS)] tensor, by name (a device tensor: no host read)."""
    return sums[..., RUNNING_KEYS.index(key)]


def device_scalar(value: float, device: torch.device) -> torch.Tensor:
    """A float32 scalar made on the device by a fill kernel (torch.tensor would copy a host value, which can
    synchronize)."""
    return torch.full((), float(value), device=device)


def solver_sums(solves: list, device: torch.device) -> dict[str, torch.Tensor]:
    """The DEQ sums of one run's step: `solves` are its DEQ outputs (each with stats, and the adjoint solves' stats
    in backward_stats, filled by the backward pass of implicit gradients, or the ReconstructionStats of reversible
    ones in reconstruction; phantom and one-step gradients have neither)."""
    zero = device_scalar(0, device)
    adjoint = [stats for out in solves for stats in out.backward_stats]
    reversed_walks = [stats for out in solves for stats in out.reconstruction]
    return {
        "solver_steps": sum((out.stats.steps.float().mean().to(device) for out in solves), zero),
        "solver_residual": sum((out.stats.lowest.float().mean().to(device) for out in solves), zero),
        "solves": device_scalar(len(solves), device),
        "backward_solver_steps": sum((stats.steps.float().mean().to(device) for stats in adjoint), zero),
        "backward_solves": device_scalar(len(adjoint), device),
        "reconstruction_error": sum((stats.error.max().float().to(device) for stats in reversed_walks), zero),
        "reversible_backwards": device_scalar(len(reversed_walks), device),
    }


def step_sums(losses: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
              solves: list[list] | None = None) -> torch.Tensor:
    """What one training step adds to the running sums of each of its K runs: [K, len(RUNNING_KEYS)] float64.

    losses: [K] the runs' mean losses; logits: [K, N, classes]; labels: [K, N]; solves: per run, the DEQ outputs of
    the step (None or empty lists for weight-tied models). Device tensors only: nothing is read back."""
    count = labels.shape[-1]
    correct = (logits.argmax(-1) == labels).sum(-1).float()
    sums = {"loss": losses.float() * count, "correct": correct, "images": torch.full_like(correct, count)}
    if solves is None or not any(solves):
        zero = torch.zeros_like(correct)
        sums.update({key: zero for key in SOLVER_KEYS})
    else:
        per_run = [solver_sums(run_solves, labels.device) for run_solves in solves]
        sums.update({key: torch.stack([run[key] for run in per_run]) for key in SOLVER_KEYS})
    return torch.stack([sums[key] for key in RUNNING_KEYS], dim=1).double()


def restore_running(saved: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The running sums of a checkpoint as a [len(RUNNING_KEYS)] float64 tensor on `device`. A checkpoint written
    before the last keys existed (e.g. backward_solver_steps, backward_solves) holds a prefix of them: the missing sums
    start at zero, so the resumed epoch's means of those keys cover the steps after the resumption (sum and count
    alike), and the other keys continue exactly."""
    saved = saved.to(device, torch.float64).flatten()
    if saved.numel() > len(RUNNING_KEYS):
        raise ValueError(f"the checkpoint holds {saved.numel()} running sums, this wtext knows {len(RUNNING_KEYS)} "
                         f"({', '.join(RUNNING_KEYS)}): it was written by a newer wtext; resume it with that version")
    missing = len(RUNNING_KEYS) - saved.numel()
    return torch.cat([saved, saved.new_zeros(missing)]) if missing else saved


def solver_metrics(totals: dict[str, float]) -> dict[str, float]:
    """An epoch's DEQ solver metrics from its summed running sums (empty for weight-tied models)."""
    metrics = {}
    if totals["solves"]:
        metrics["solver_steps"] = totals["solver_steps"] / totals["solves"]
        metrics["solver_residual"] = totals["solver_residual"] / totals["solves"]
    if totals["backward_solves"]:
        metrics["backward_solver_steps"] = totals["backward_solver_steps"] / totals["backward_solves"]
    if totals["reversible_backwards"]:
        metrics["reconstruction_error"] = totals["reconstruction_error"] / totals["reversible_backwards"]
    return metrics
