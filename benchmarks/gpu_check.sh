#!/usr/bin/env bash
# One script for a lent GPU machine (preinstalled torch, no package registry), run from the repository root:
#     bash benchmarks/gpu_check.sh            # everything (about 6-7 minutes on an H100)
#     SKIP_BUILD=1 bash benchmarks/gpu_check.sh   # reuse a wtext/_C*.so already built on this machine
#     STAGES="kernel_tests bench_deq" bash benchmarks/gpu_check.sh   # the build, then only the stages named
#       (kernel_tests bench_ops bench_learned bench_deq bench_deq_bf16 bench_deq_check bench_deq_memory
#        bench_train other_tests bench_loader train cmake_bench sanitizer; default all)
# It builds wtext against the machine's torch, runs the CUDA tests (they run here, and only here),
# the op benchmarks (workload A), the DEQ benchmark (workload B), the DEQ early-end benchmark (which
# --deq-check-every to use), the DEQ memory benchmark (reversible against the other gradients), the training
# step of the shipped presets (bench_train), the loader benchmark, a short training run and
# the C++ benchmark, compute-sanitizer (memcheck, racecheck) over the kernels' CUDA tests, and ends with a short
# summary.
# Output goes to $OUT (the device tool's output folder) or ./gpu_check_out: the whole log, gpu_check.log, and the
# summary, summary.txt. (The built extension, ~15 MB, is over what the device tool brings back, so it is not kept.)
set -uo pipefail
cd "$(dirname "$0")/.."
LOG_DIR="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$LOG_DIR"
LOG="$LOG_DIR/gpu_check.log"
: > "$LOG"
export WTEXT_CUDA=1 MAX_JOBS="${MAX_JOBS:-16}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" PYTHONUNBUFFERED=1
# The lent machines set CC/CXX to a GCC under /opt/gcc that links libstdc++ statically into shared libraries; an
# extension built so crashes (SIGSEGV) when an op formats an error message. The system compiler was seen to give
# clean RuntimeErrors there (benchmarks/probe_exceptions.py), so prefer it when it exists.
if [ -x /usr/bin/g++ ] && [ -x /usr/bin/gcc ] && [ -z "${WTEXT_KEEP_CXX:-}" ]; then
  export CC=/usr/bin/gcc CXX=/usr/bin/g++
fi
PYTHON="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # wtext is built in place, not installed
declare -a SUMMARY=()
STAGES="${STAGES:-all}"
KNOWN_STAGES="kernel_tests bench_ops bench_learned bench_deq bench_deq_bf16 bench_deq_check bench_deq_memory"
KNOWN_STAGES+=" bench_train other_tests"
KNOWN_STAGES+=" bench_loader"
KNOWN_STAGES+=" train"
KNOWN_STAGES+=" cmake_bench sanitizer"
for stage in $STAGES; do  # a misspelt stage would select nothing and pass: refuse it
  [ "$stage" = all ] || [[ " $KNOWN_STAGES " == *" $stage "* ]] || {
    echo "gpu_check.sh: unknown stage '$stage' in STAGES; known: $KNOWN_STAGES" >&2; exit 2; }
done
want() { [ "$STAGES" = all ] || [[ " $STAGES " == *" $1 "* ]]; }  # want STAGE: whether STAGES selects it

step() {  # step NAME TIMEOUT_SECONDS COMMAND...: runs one stage, logs it, records pass/fail and its duration
  local name="$1" limit="$2"; shift 2
  local start=$SECONDS
  echo "== $name" | tee -a "$LOG"
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
  local status=${PIPESTATUS[0]}
  SUMMARY+=("$(printf '%-14s %-8s %4ds' "$name" "$([ "$status" = 0 ] && echo ok || echo FAIL:$status)" $((SECONDS - start)))")
  return "$status"
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader | tee -a "$LOG"
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$LOG"

if [ -z "${SKIP_BUILD:-}" ]; then
  step build 240 "$PYTHON" setup.py build_ext --inplace || { printf '%s\n' "${SUMMARY[@]}"; exit 1; }
fi

# An argument error must raise RuntimeError, not kill the interpreter (it once crashed on a lent machine whose
# toolchain differs from the dev machines'); if it crashes, collect what explains it.
ERRORS_RAISE="
import wtext.ops as ops
try:
    ops.mask((4, 4), 0, 0, 0.0)
except RuntimeError as error:
    print('argument errors raise RuntimeError:', str(error).splitlines()[0][:70])
"
if ! step errors_raise 60 "$PYTHON" -c "$ERRORS_RAISE"; then
  {
    echo "CC=${CC:-} CXX=${CXX:-}"; command -v c++ g++ gcc; c++ --version | head -1; /usr/bin/g++ --version 2>&1 | head -1
    c++ -v 2>&1 | grep -i "configured with" | tr ' ' '\n' | grep -E "libstdcxx|static|abi" || true
    "$PYTHON" -c "import torch; print('torch cxx11 abi', torch._C._GLIBCXX_USE_CXX11_ABI); print(torch.__config__.show())" | head -12
    readelf -d wtext/_C*.so | grep -E "NEEDED|RPATH|RUNPATH"
    ldd wtext/_C*.so | grep -E "stdc|gcc|gomp|c10|torch"
    nm -D --defined-only wtext/_C*.so | grep -c -E " (__cxa|_Unwind|_ZNSt)" || true
  } 2>&1 | tee -a "$LOG"
  step backtrace 90 cuda-gdb -q -batch -ex run -ex bt --args "$PYTHON" -c "import wtext.ops as o; o.mask((4, 4), 0, 0, 0.0)"
  step probe 150 "$PYTHON" benchmarks/probe_exceptions.py
fi

# The C++ benchmark compiles on spare cores during the first tests; it is done before anything is timed.
CMAKE_LOG="/tmp/wtext_cmake_build.log"
want cmake_bench && ( cmake -S . -B build-gpu -G Ninja -DWTEXT_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DCMAKE_CUDA_COMPILER="$CUDA_HOME/bin/nvcc" -DPython_EXECUTABLE="$(command -v "$PYTHON")" \
  && cmake --build build-gpu -j 6 ) > "$CMAKE_LOG" 2>&1 &
CMAKE_PID=$!

# Only the CUDA cases (--cuda-only, see python_tests/conftest.py): CI runs every other test on its CPU, and the
# whole suite never fitted one stage on a lent machine. The kernels' own tests go first, so that the benchmarks
# after them are known to time correct kernels; the rest of the CUDA cases run after the benchmarks.
WORKERS=()
"$PYTHON" -c "import xdist" 2>/dev/null && WORKERS=(-n 10)
PYTEST=("$PYTHON" -m pytest --cuda-only -q -rfE --maxfail=20 --durations=5 -p no:cacheprovider "${WORKERS[@]}")
KERNEL_TESTS=(python_tests/test_masks.py python_tests/test_tied_masked_weights.py python_tests/test_masked_layers.py
              python_tests/test_learned_ops.py python_tests/test_anderson_step.py
              python_tests/test_anderson_tracked_step.py python_tests/test_deq_cuda.py)
want kernel_tests && step kernel_tests 150 "${PYTEST[@]}" "${KERNEL_TESTS[@]}"
want cmake_bench && { wait "$CMAKE_PID"; CMAKE_STATUS=$?; }

# Timed stages run alone on the GPU.
want bench_ops && step bench_ops 120 "$PYTHON" benchmarks/bench_ops.py --device cuda --profile
want bench_learned && step bench_learned 60 "$PYTHON" benchmarks/bench_learned_ops.py --device cuda
want bench_deq && step bench_deq 100 "$PYTHON" benchmarks/bench_deq.py --device cuda --profile
want bench_deq_bf16 && step bench_deq_bf16 60 "$PYTHON" benchmarks/bench_deq.py --device cuda --bf16
# The DEQ twin's training step with a convergence test every K solver iterations (K = 0, 1, 2, 4, 8), bf16 as
# training runs on CUDA: whether the host reads cost more than the iterations they save (--deq-check-every).
want bench_deq_check && step bench_deq_check 120 "$PYTHON" benchmarks/bench_deq_check.py --device cuda --bf16
# Peak memory and time of one DEQ-twin training step by gradient (unrolled, implicit, phantom, reversible) at 4-32
# solver steps, against the weight-tied model of that depth: the reversible row must be flat in the steps.
want bench_deq_memory && step bench_deq_memory 90 "$PYTHON" benchmarks/bench_deq_memory.py --device cuda \
  --model resnet-small --batch 128
# resnet-small and vit-small (bf16, channels_last) and the DEQ twin, eager and compiled: the issue's GPU targets.
want bench_train && step bench_train 240 "$PYTHON" benchmarks/bench_train.py --device cuda --rounds 3
want other_tests && step other_tests 200 "${PYTEST[@]}" python_tests "${KERNEL_TESTS[@]/#/--ignore=}"
want bench_loader && step bench_loader 40 "$PYTHON" benchmarks/bench_loader.py --device cuda
want train && step train 60 "$PYTHON" -m wtext.train --no-progress --epochs 2 --run-dir /tmp/wtext_gpu_run
if want cmake_bench; then
  if [ "$CMAKE_STATUS" = 0 ]; then
    step cmake_bench 30 ./build-gpu/bench_masked_weights --device cuda
  else
    tail -30 "$CMAKE_LOG" | tee -a "$LOG"; SUMMARY+=("cmake_build    FAIL")
  fi
fi

# compute-sanitizer over the CUDA cases of the kernels' tests: memcheck (out-of-bounds and misaligned accesses,
# reads of uninitialized device memory through initcheck's cousin) and racecheck (shared-memory hazards). PyTorch's
# caching allocator would hide out-of-bounds accesses inside its own blocks, hence PYTORCH_NO_CUDA_MEMORY_CACHING.
# Kernels run many times slower under the tools, so the stage takes the kernels' test files only, one process.
SANITIZED_TESTS=(python_tests/test_masks.py python_tests/test_tied_masked_weights.py python_tests/test_anderson_step.py
                 python_tests/test_anderson_tracked_step.py python_tests/test_masked_layers.py
                 python_tests/test_learned_ops.py)
SANITIZER="$CUDA_HOME/bin/compute-sanitizer"
[ -x "$SANITIZER" ] || SANITIZER="$(command -v compute-sanitizer || true)"
if want sanitizer && [ -z "$SANITIZER" ]; then
  echo "== sanitizer: no compute-sanitizer in $CUDA_HOME/bin or on PATH" | tee -a "$LOG"
  SUMMARY+=("sanitizer      FAIL (compute-sanitizer not found)")
elif want sanitizer; then
  for tool in memcheck racecheck; do
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 step "sanitize_$tool" 150 "$SANITIZER" --tool "$tool" --error-exitcode 86 \
      --print-limit 20 --target-processes all "$PYTHON" -m pytest --cuda-only -q -x -p no:cacheprovider \
      "${SANITIZED_TESTS[@]}"
  done
fi

{
  echo
  echo "== summary (log: $LOG)"
  printf '%s\n' "${SUMMARY[@]}"
  grep -h -E "^[0-9]+ (passed|failed|skipped)|^=+ .*(passed|failed)" "$LOG"
  grep -h -E "^FAILED|^ERROR|argument errors raise|^(plain|wtext_flags|abi_1|static_libstdcxx|system_gxx) " "$LOG" | head -30
  grep -h -A6 -E "^workload A|^tied_masked_weights fwd" "$LOG"
  grep -h -A3 -E "^host cost" "$LOG"
  grep -h -A3 -E "^workload B" "$LOG"
  grep -h -E "^host reads|^cell alone" "$LOG"
  grep -h -A7 -E "^(the variant.s|looser) tolerances" "$LOG"
  grep -h -A2 -E "^crop" "$LOG"
  grep -h -A6 -E "^(resnet|vit)-[a-z]+( \(DEQ [a-z_]+\))?:$" "$LOG"
  grep -h -E "^epoch [0-9]+:" "$LOG"
  grep -h -E "========= (ERROR SUMMARY|RACECHECK SUMMARY)" "$LOG"
} 2>/dev/null | tee "$LOG_DIR/summary.txt"
# The exit status says whether every stage that ran passed (not whether the summary found each kind of line).
[[ "${SUMMARY[*]}" != *FAIL* ]]
