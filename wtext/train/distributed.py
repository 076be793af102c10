"""Data-parallel set-up from torchrun's environment: NCCL on GPUs, gloo on CPUs; nothing when run plainly."""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Cluster:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def init_cluster(device_kind: str) -> Cluster:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Cluster()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device_kind == "cuda" else "gloo"
    if device_kind == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    return Cluster(rank, world, local_rank)


def all_reduce_sum(values: list[float], device: torch.device, cluster: Cluster) -> list[float]:
    if not cluster.active:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def finish_together(cluster: Cluster) -> None:
    """Waits until every rank has finished its work. Rank 0 writes the last checkpoint, summary and plots alone; a
    rank that tore its process group down meanwhile was seen to abort in CI (gloo, 'terminate called without an
    active exception'). Only after a normal end: a rank that failed alone would leave the others waiting here."""
    if cluster.active and dist.is_initialized():
        dist.barrier()


def shutdown(cluster: Cluster) -> None:
    if cluster.active and dist.is_initialized():
        dist.destroy_process_group()
