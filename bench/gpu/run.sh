#!/usr/bin/env bash
# Run THERE, on the GPU machine, from the repository root, in one device call that carries .whl and .bench-data
# (made here by bench/gpu/prepare.sh):
#
#     bash bench/gpu/run.sh
#
# The same Keras models on the JAX backend (the GPU machine has JAX with CUDA, no TensorFlow), GPU memory taken as
# needed (XLA_PYTHON_CLIENT_PREALLOCATE=false): the model ceiling (bench.model_limit), the service over HTTP at
# concurrency 1, 16 and 64 (bench.http_load --server service), and concurrency 64 again with micro-batches of 64.
# Everything lands in $OUT: run_gpu.log (this output), model_limit_gpu.json, http_load_gpu.json,
# http_load_gpu_batch64.json, the servers' own logs (service_gpu*.log.gz) and gpu_memory.csv (nvidia-smi once a
# second). JAX compiles each model once per padded batch size (1, 2, 4, ... 64), all in model_limit's warm-up; the
# services reuse those compilations through a persistent cache. Each step has a time limit (GPU_BENCH_*_TIMEOUT),
# so the script ends within about 8.5 minutes however slow compiling is: give the device call timeout_s=540.
#
# Environment (defaults in brackets):
#   GPU_BENCH_SECONDS [20]         seconds per HTTP concurrency level
#   GPU_BENCH_CELL_SECONDS [3]     seconds per model_limit (mode, batch size)
#   GPU_BENCH_BATCH_SIZES [1 8 16 32 64]  model_limit batch sizes (16 is the service's micro-batch size)
#   GPU_BENCH_WARMUP_BATCHES [96]  model_limit's untimed batches per cell: 96 runs every distinct batch of the
#                                  96-slice mix once, so no JAX compilation lands in a timed loop
#   GPU_BENCH_REQUESTS [100000]    HTTP requests per level at most (the seconds bound it first)
#   GPU_BENCH_WARMUP_REQUESTS [64] uncounted HTTP requests before the first level
#   GPU_BENCH_REQUIRE_GPU [1]      0 lets it run on a CPU-only JAX (a dry run; its numbers mean nothing)
#   GPU_BENCH_LIMIT_TIMEOUT [230], GPU_BENCH_HTTP_TIMEOUT [170], GPU_BENCH_HTTP64_TIMEOUT [100]
#                                  seconds each step may take in all
#   PYTHON [python3], GPU_BENCH_SITE [/tmp/site] (where the wheels go), OUT [bench/results/gpu]
set -euo pipefail

cd "$(dirname "$0")/../.."
OUT="${OUT:-bench/results/gpu}"
PYTHON="${PYTHON:-python3}"
SITE="${GPU_BENCH_SITE:-/tmp/site}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

# step NAME SECONDS COMMAND...: run COMMAND under a time limit (its whole process group: the server too), say how
# it ended.
step() {
    local name=$1 limit=$2 code=0
    shift 2
    echo "== $name"
    timeout -k 10 "$limit" "$@" || code=$?
    if [ "$code" -eq 124 ] || [ "$code" -eq 137 ]; then
        echo "$name: stopped at its time limit of $limit s"
    elif [ "$code" -ne 0 ]; then
        echo "$name: exit status $code"
    fi
    return "$code"
}

main() {
    local status=0

    echo "== install .whl/ into $SITE"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
    export PYTHONPATH="$SITE:$PWD"
    export KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
    # One compilation cache for both steps: the service (a new process) reuses what model_limit compiled.
    export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-/tmp/jax-cache}"
    export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0

    echo "== devices"
    nvidia-smi -L 2>/dev/null || echo "(no nvidia-smi)"
    "$PYTHON" - <<'EOF'
import os
import sys

import jax
import keras

import app.main  # noqa: F401  (the service imports: fails here, not after minutes of compiling)

print("python", sys.version.split()[0], "| jax", jax.__version__, "| keras", keras.__version__, keras.backend.backend())
print("jax.devices():", jax.devices())
if os.environ.get("GPU_BENCH_REQUIRE_GPU", "1") != "0" and jax.default_backend() != "gpu":
    raise SystemExit(f"JAX runs on {jax.default_backend()}, not a GPU (GPU_BENCH_REQUIRE_GPU=0 to run anyway)")
EOF

    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=timestamp,memory.used,memory.total,utilization.gpu --format=csv -l 1 \
            >"$OUT/gpu_memory.csv" 2>&1 &
        local sampler=$!
    fi

    # shellcheck disable=SC2086  # the batch sizes are a list
    step bench.model_limit "${GPU_BENCH_LIMIT_TIMEOUT:-230}" "$PYTHON" -m bench.model_limit --model-dir models \
        --data-root .bench-data/kaggle_3m_dev --batch-sizes ${GPU_BENCH_BATCH_SIZES:-1 8 16 32 64} \
        --seconds "${GPU_BENCH_CELL_SECONDS:-3}" --warmup-batches "${GPU_BENCH_WARMUP_BATCHES:-96}" \
        --json-out "$OUT/model_limit_gpu.json" --quiet || status=$?

    rm -f /tmp/service_gpu*.log  # a warm machine may hold the last run's
    step "bench.http_load --server service" "${GPU_BENCH_HTTP_TIMEOUT:-170}" \
        "$PYTHON" -m bench.http_load --server service --model-dir models \
        --data-root .bench-data/kaggle_3m_dev --concurrency 1 16 64 --seconds "${GPU_BENCH_SECONDS:-20}" \
        --requests "${GPU_BENCH_REQUESTS:-100000}" --warmup-requests "${GPU_BENCH_WARMUP_REQUESTS:-64}" \
        --server-log /tmp/service_gpu.log --json-out "$OUT/http_load_gpu.json" --quiet || status=$?
    # The service's micro-batches hold 16 slices by default (sized for a CPU); on a GPU a batch of 64 costs little
    # more than one of 16, so measure concurrency 64 again with INFERENCE_BATCH_SIZE=64.
    step "bench.http_load --server service, INFERENCE_BATCH_SIZE=64" "${GPU_BENCH_HTTP64_TIMEOUT:-100}" \
        env INFERENCE_BATCH_SIZE=64 "$PYTHON" -m bench.http_load --server service --model-dir models \
        --data-root .bench-data/kaggle_3m_dev --concurrency 64 --seconds "${GPU_BENCH_SECONDS:-20}" \
        --requests "${GPU_BENCH_REQUESTS:-100000}" --warmup-requests "${GPU_BENCH_WARMUP_REQUESTS:-64}" \
        --server-log /tmp/service_gpu_batch64.log --json-out "$OUT/http_load_gpu_batch64.json" --quiet || status=$?
    # Every request is logged (twice: access and audit): past 15 MB compressed (a file over 16 MiB does not come
    # back), keep its start and end only.
    local log
    for log in /tmp/service_gpu*.log; do
        gzip -c "$log" >"$OUT/$(basename "$log").gz" || true
        if [ "$(stat -c %s "$OUT/$(basename "$log").gz")" -gt 15000000 ]; then
            { head -n 500 "$log"; echo "[...]"; tail -n 500 "$log"; } | gzip >"$OUT/$(basename "$log").gz"
        fi
    done

    if [ -n "${sampler:-}" ]; then
        kill "$sampler" || true
    fi
    echo "== done (exit status $status); results in $OUT"
    return "$status"
}

main 2>&1 | tee "$OUT/run_gpu.log"
