#!/usr/bin/env bash
# One script for a lent GPU machine (preinstalled torch, no package registry), run from the repository root:
#     bash benchmarks/gpu_check.sh
# It builds wtext against the machine's torch, runs the whole test suite (the CUDA tests run here, and only here),
# the op benchmarks, the DEQ benchmark and the C++ benchmark, and ends with a short summary. Budget: under 8 minutes on an H100.
# Logs go to $OUT (the device tool's output folder) or ./gpu_check_out.
set -uo pipefail
cd "$(dirname "$0")/.."
LOG_DIR="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$LOG_DIR"
export WTEXT_CUDA=1 MAX_JOBS="${MAX_JOBS:-16}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
PYTHON="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # wtext is built in place, not installed
declare -a SUMMARY=()

step() {  # step NAME TIMEOUT_SECONDS COMMAND...: runs one stage, logs it, records pass/fail and its duration
  local name="$1" limit="$2"; shift 2
  local start=$SECONDS
  echo "== $name"
  timeout "$limit" "$@" 2>&1 | tee "$LOG_DIR/$name.log"
  local status=${PIPESTATUS[0]}
  SUMMARY+=("$(printf '%-14s %-6s %4ds' "$name" "$([ "$status" = 0 ] && echo ok || echo FAIL:$status)" $((SECONDS - start)))")
  return "$status"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$LOG_DIR/gpu.txt"
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

step build 240 "$PYTHON" setup.py build_ext --inplace || { printf '%s\n' "${SUMMARY[@]}"; exit 1; }
step tests 150 "$PYTHON" -m pytest python_tests -q --maxfail=10 -p no:cacheprovider
step bench_ops 150 "$PYTHON" benchmarks/bench_ops.py --device cuda
step bench_deq 120 "$PYTHON" benchmarks/bench_deq.py --device cuda
step bench_loader 60 "$PYTHON" benchmarks/bench_loader.py --device cuda
step train 90 "$PYTHON" -m wtext.train --no-progress --epochs 2 --run-dir /tmp/wtext_gpu_run
step cmake_bench 150 bash -c "cmake -S . -B build-gpu -G Ninja -DWTEXT_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DCMAKE_CUDA_COMPILER=$CUDA_HOME/bin/nvcc -DPython_EXECUTABLE=$(command -v "$PYTHON") > /dev/null \
  && cmake --build build-gpu -j $MAX_JOBS > /dev/null && ./build-gpu/bench_masked_weights --device cuda"

echo
echo "== summary (logs in $LOG_DIR)"
printf '%s\n' "${SUMMARY[@]}"
grep -h -E "passed|failed" "$LOG_DIR/tests.log" | tail -1
grep -h -A6 -E "^workload A|^tied_masked_weights" "$LOG_DIR/bench_ops.log" 2>/dev/null
grep -h -A4 -E "^workload B|^host reads" "$LOG_DIR/bench_deq.log" 2>/dev/null
grep -h -A2 -E "^crop" "$LOG_DIR/bench_loader.log" 2>/dev/null
grep -h -E "^epoch [0-9]+:" "$LOG_DIR/train.log" 2>/dev/null
