"""Timing helpers shared by the benchmarks: warm-up, then the median of repeated runs (CUDA events on a GPU)."""

import statistics
import time

import torch


def median_ms(fn, device: torch.device, warmup: int = 5, repeats: int = 20) -> float:
    """Median wall time of fn() in milliseconds after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def print_table(title: str, rows: list[tuple[str, float]], baseline: str) -> None:
    """Prints times and their ratio to the named baseline row (measured in the same run)."""
    base = dict(rows)[baseline]
    print(f"\n{title}")
    print(f"{'case':<48} {'ms':>10} {'vs ' + baseline:>24}")
    for name, ms in rows:
        print(f"{name:<48} {ms:>10.3f} {ms / base:>23.2f}x")


def print_profile(title: str, step, device: torch.device, rows: int = 18) -> None:
    """The kernels of one call of step() by device time (CPU time on the CPU): where the time goes."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    step()
    with torch.profiler.profile(activities=activities) as profile:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\nprofile of {title}:")
    print(profile.key_averages().table(sort_by=sort, row_limit=rows, max_name_column_width=60))
