#!/usr/bin/env bash
# GPU check for jaxsparse, run from the repository root on a CUDA machine:
#
#   benchmarks/gpu_check.sh                  # all steps
#   benchmarks/gpu_check.sh build test       # some steps (same $OUT to collect them)
#
# Steps: info (device, versions, date), build (pip install with JAXSPARSE_CUDA=ON),
# kernels (the installed package has its CUDA targets), test (full pytest on the GPU),
# memcheck (compute-sanitizer over the kernel tests), bench (benchmarks/bench_gpu.py).
# Every step's log goes to $OUT/<step>.log and its exit code to $OUT/steps.txt; the
# script runs every step and exits non-zero if any failed.
# Python runs with -P so that `jaxsparse` is the installed package (with its
# compiled modules), not the source tree in the current directory.
#
# Through the device tool (10 minutes a call, 15 minutes of device time a session,
# the machine's start included; at most 8 files come back from $OUT, which is
# emptied before each call): the DLMC sample beside the checkout (../shared/dlmc)
# does not travel, so copy it into an ignored folder and carry it. One call, with
# the steps' limits set so that it ends inside timeout_s = 570:
#   here, once:  echo /.dlmc/ >> .git/info/exclude && cp -r ../shared/dlmc .dlmc
#   call (carry [".dlmc"]):  JAXSPARSE_DLMC=.dlmc BUILD_TIMEOUT=240 TEST_TIMEOUT=200 \
#       TESTS="tests/test_spmm.py tests/test_sddmm.py tests/test_softmax.py tests/test_transpose.py tests/test_lowering.py" \
#       BENCH_TIMEOUT=100 BENCH_ARGS=--quick benchmarks/gpu_check.sh info build kernels test bench
# and, if device time is left, the rest of the suite and memcheck in a second one
# (it starts on a bare machine unless the first is still warm: build again).
# The machine's image has jax 0.11.2 on Python 3.12 (the device tool's KINDS.md);
# session 13 ran the whole suite on the CPU with those versions (551 passed).
set -u

OUT=${OUT:-benchmarks/results/gpu-$(date +%Y%m%d-%H%M%S)}
PY=${PYTHON:-$(command -v python || command -v python3)}
mkdir -p "$OUT"
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi
export XLA_PYTHON_CLIENT_PREALLOCATE=false
failed=0

# step NAME TIMEOUT_S CMD...: runs CMD, logs it, records its exit code.
step() {
  local name=$1 limit=$2 start rc
  shift 2
  echo "=== $name: $*" | tee -a "$OUT/steps.txt"
  start=$(date +%s)
  timeout "$limit" bash -c '"$@"' _ "$@" 2>&1 | tee "$OUT/$name.log"
  rc=${PIPESTATUS[0]}
  echo "$name rc=$rc seconds=$(( $(date +%s) - start ))" | tee -a "$OUT/steps.txt"
  [ "$rc" -eq 0 ] || failed=1
}

info() {  # fails only when nvidia-smi does
  local rc=0
  date -u
  git rev-parse HEAD 2>/dev/null && git status --short
  uname -a
  nvidia-smi || rc=1
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  "$PY" --version
  "$PY" -m pip list 2>/dev/null | grep -iE '^(jax|nvidia|pybind11|scikit|cmake|ninja|pytest|hypothesis|numpy|scipy)'
  command -v nvcc && nvcc --version
  cmake --version | head -1
  command -v compute-sanitizer || echo "compute-sanitizer: not found"
  return $rc
}

kernels() {
  JAX_PLATFORMS=cuda "$PY" -P -c '
import jax, jaxsparse
from jaxsparse._src import ffi
print("jaxsparse from", jaxsparse.__file__, "| devices", jax.devices())
print("cpu kernels:", ffi.has_kernels("cpu"), "| cuda kernels:", ffi.has_kernels("cuda"))
assert ffi.has_kernels("cuda"), "the installed jaxsparse has no CUDA kernels"'
}

export -f info kernels
export OUT PY

run_step() {
  case $1 in
    info) step info 120 info ;;
    build) step build "${BUILD_TIMEOUT:-1200}" env JAXSPARSE_CUDA=ON "$PY" -m pip install --no-build-isolation -v . ;;
    kernels) step kernels 300 kernels ;;
    test) step test "${TEST_TIMEOUT:-1800}" env JAX_PLATFORMS=cuda JAXSPARSE_REQUIRE_GPU=1 \
            "$PY" -P -m pytest -q -n 0 ${TESTS:-tests} ;;
    # The platform allocator gives every buffer its own cudaMalloc, so memcheck
    # sees accesses past a buffer; autotuning off keeps XLA's own kernels quick.
    memcheck) step memcheck "${MEMCHECK_TIMEOUT:-1800}" env JAX_PLATFORMS=cuda \
                JAXSPARSE_REQUIRE_GPU=1 XLA_PYTHON_CLIENT_ALLOCATOR=platform \
                XLA_FLAGS=--xla_gpu_autotune_level=0 \
                compute-sanitizer --tool memcheck --error-exitcode 99 --report-api-errors no \
                "$PY" -P -m pytest -x -q -n 0 tests/test_spmm.py tests/test_sddmm.py tests/test_softmax.py ;;
    bench)
      if [ -f benchmarks/bench_gpu.py ]; then
        step bench "${BENCH_TIMEOUT:-1800}" env JAX_PLATFORMS=cuda "$PY" -P benchmarks/bench_gpu.py --all-ops ${BENCH_ARGS:-} --out "$OUT"
      else
        echo "bench skipped: no benchmarks/bench_gpu.py" | tee -a "$OUT/steps.txt"
      fi ;;
    *) echo "unknown step '$1'" | tee -a "$OUT/steps.txt"; failed=1 ;;
  esac
}

for s in "${@:-info build kernels test memcheck bench}"; do
  for one in $s; do run_step "$one"; done
done
echo "results in $OUT; failed=$failed"
exit "$failed"
