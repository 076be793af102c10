"""Fused sweep vs the same runs one after another: wall time of 4 quick ResNet runs.

    .venv/bin/python benchmarks/bench_fused.py [--repeats 2] [--threads N] [--train 3072 --test 1024] [--device cuda]

Each case runs in a fresh process (same imports, matplotlib included, done before the clock starts), in turns
(fused, solo, fused, solo, ...), so a machine shared with other work slows both alike. Reported: wall time of the
training calls, the ratio solo / fused, and the training time per step (sum over members of metrics time_s /
steps: for the fused case, the time of one fused step of all members).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The sweep: one architecture, members differing in mask mode and seeds (seed 1 has its own data and masks).
BASE = dict(model="resnet-tiny", width=8, depth=3, batch_size=32, epochs=1, device="cpu", progress=False)
MEMBERS = [dict(mask_mode="multi"), dict(mask_mode="same"), dict(mask_mode="dense"),
           dict(mask_mode="multi", seed=1, mask_seed=1)]

CASE = r"""
import contextlib, io, json, sys, time
import matplotlib.pyplot  # both cases plot curves; the import is not what is measured
from wtext.train import TrainConfig, run
from wtext.train.fused import train_fused
spec = json.loads(sys.argv[1])
configs = [TrainConfig(**spec["base"], **member, run_dir=f"{spec['out']}/run{i}")
           for i, member in enumerate(spec["members"])]
start = time.perf_counter()
with contextlib.redirect_stdout(io.StringIO()):
    if spec["case"] == "fused":
        train_fused(configs, log=lambda message: None)
    else:
        for config in configs:
            run(config)
wall = time.perf_counter() - start
records = [json.loads(open(f"{c.run_dir}/metrics.jsonl").readline()) for c in configs]
print(json.dumps({"wall": wall, "train_s": sum(r["time_s"] for r in records),
                  "accuracy": [r["test_accuracy"] for r in records]}))
"""


def run_case(case: str, base: dict, threads: int | None) -> dict:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory() as out:
        spec = json.dumps({"case": case, "base": base, "members": MEMBERS, "out": out})
        done = subprocess.run([sys.executable, "-c", CASE, spec], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{case} case failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS (default: torch's choice)")
    parser.add_argument("--train", type=int, default=3072, help="synthetic training images")
    parser.add_argument("--test", type=int, default=1024, help="synthetic test images")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    args = parser.parse_args()
    base = {**BASE, "synthetic_train": args.train, "synthetic_test": args.test, "device": args.device}
    steps = args.train // base["batch_size"]
    print(f"{len(MEMBERS)} runs: resnet-tiny width {base['width']} depth {base['depth']}, {args.train} train / "
          f"{args.test} test synthetic images, batch {base['batch_size']}, 1 epoch ({steps} steps), {args.device}, "
          f"threads {args.threads or 'default'}")
    rows = []
    for repeat in range(args.repeats):
        fused = run_case("fused", base, args.threads)
        solo = run_case("solo", base, args.threads)
        rows.append((repeat + 1, fused, solo))
        print(f"repeat {repeat + 1}: fused {fused['wall']:.2f} s, 4 solo runs {solo['wall']:.2f} s, "
              f"ratio {solo['wall'] / fused['wall']:.2f}x | per step: fused {fused['train_s'] / steps * 1e3:.1f} ms, "
              f"solo (sum of members) {solo['train_s'] / steps * 1e3:.1f} ms | same accuracies: "
              f"{fused['accuracy'] == solo['accuracy']} {fused['accuracy']} {solo['accuracy']}", flush=True)
    best_fused = min(f["wall"] for _, f, _ in rows)
    best_solo = min(s["wall"] for _, _, s in rows)
    print(f"best of {args.repeats}: fused {best_fused:.2f} s, solo {best_solo:.2f} s, ratio "
          f"{best_solo / best_fused:.2f}x")


if __name__ == "__main__":
    main()
