"""Timing helpers shared by the benchmarks: warm-up, then the median of repeated runs (CUDA events on a GPU)."""

import statistics
import time
from dataclasses import dataclass

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


@dataclass
class Timing:
    """latency: one call from an idle device to its last kernel (synchronized before and after each call);
    steady: the cost per call when calls run back to back, as in training, where the host queues work ahead of the
    device (events around a run of calls, one synchronization at the end); host: the host's time to issue one call
    (queueing only), which bounds steady from below when a call is launch-bound."""

    latency: float
    steady: float
    host: float


def measure(fn, device: torch.device, warmup: int = 5, repeats: int = 20) -> Timing:
    """Timing of fn() in milliseconds (medians over `repeats`; CPU: all three are the wall time)."""
    return measure_interleaved({"fn": fn}, device, warmup, repeats)["fn"]


def measure_interleaved(cases: dict, device: torch.device, warmup: int = 5, repeats: int = 20,
                        rounds: int = 5) -> dict:
    """Timing of each case (name -> fn) like `measure`, with the steady-state runs of all cases taken in turns
    (round r times every case once), so that a drift of the device (clocks, temperature) or of the host over the
    measurement reaches every case alike instead of the ones measured last."""
    latency = {name: median_ms(fn, device, warmup, repeats) for name, fn in cases.items()}
    if device.type != "cuda":
        return {name: Timing(ms, ms, ms) for name, ms in latency.items()}
    steady = {name: [] for name in cases}
    host = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            torch.cuda.synchronize(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            host_start = time.perf_counter()
            start.record()
            for _ in range(repeats):
                fn()
            end.record()
            host[name].append((time.perf_counter() - host_start) * 1e3 / repeats)
            end.synchronize()
            steady[name].append(start.elapsed_time(end) / repeats)
    return {name: Timing(latency[name], statistics.median(steady[name]), statistics.median(host[name]))
            for name in cases}


def print_timing_table(title: str, rows: list[tuple[str, Timing]], baseline: str) -> None:
    """Prints latency, steady-state and host times, and the steady-state ratio to the named baseline row."""
    base = dict(rows)[baseline].steady
    print(f"\n{title}")
    print(f"{'case':<40} {'latency ms':>11} {'steady ms':>10} {'host ms':>8} {'steady vs ' + baseline:>30}")
    for name, timing in rows:
        print(f"{name:<40} {timing.latency:>11.3f} {timing.steady:>10.3f} {timing.host:>8.3f} "
              f"{timing.steady / base:>29.2f}x")


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


def add_interleaving_options(parser, warmup: int, repeats: int, rounds: int) -> None:
    """--warmup, --repeats and --rounds of interleaved_round_ms, with this benchmark's defaults."""
    parser.add_argument("--warmup", type=int, default=warmup, help=f"untimed calls per case (default {warmup})")
    parser.add_argument("--repeats", type=int, default=repeats,
                        help=f"calls per case and round (default {repeats})")
    parser.add_argument("--rounds", type=int, default=rounds, help=f"rounds of all cases in turn (default {rounds})")


def interleaved_round_ms(cases: dict, device: torch.device, warmup: int = 5, repeats: int = 10,
                         rounds: int = 7) -> dict[str, list[float]]:
    """Per-call time of each case (name -> fn) in milliseconds in every round, on CPU and CUDA alike: every case
    is warmed up, then each round runs every case `repeats` times back to back, in turn, so a drift of clocks or
    load over the measurement reaches all cases alike."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(repeats):
                    fn()
                end.record()
                end.synchronize()
                times[name].append(start.elapsed_time(end) / repeats)
            else:
                start = time.perf_counter()
                for _ in range(repeats):
                    fn()
                times[name].append((time.perf_counter() - start) * 1e3 / repeats)
    return times


def interleaved_median_ms(cases: dict, device: torch.device, warmup: int = 5, repeats: int = 10,
                          rounds: int = 7) -> dict[str, float]:
    """The median over rounds of interleaved_round_ms."""
    times = interleaved_round_ms(cases, device, warmup, repeats, rounds)
    return {name: statistics.median(values) for name, values in times.items()}
