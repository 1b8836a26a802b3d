#!/usr/bin/env bash
# Run THERE, on the GPU machine, from the repository root (after training/gpu/prepare.sh here). One device call per
# data part, on a warm machine (it keeps /tmp for 30 s after a call), the last one training:
#
#     run(command="bash training/gpu/run.sh receive .gpu-data/part-1.tar", carry=[".gpu-data/part-1.tar"])
#     ... the same for each part ...
#     run(command="bash training/gpu/run.sh receive .gpu-data/part-4.tar && bash training/gpu/run.sh train",
#         carry=[".whl", ".gpu-data/part-4.tar"], timeout_s=560)
#
# (Measured on an H200, 2026-12-04: the first call ~35 s with the machine's start, each further part ~4 s.)
#
# `train` fits the segmenter, then a classifier per seed, on Keras's JAX backend with the arguments below (the CPU
# recipes, more batch-preparing threads, a time budget each), and leaves in $OUT train.log and per run RUN.tar and
# RUN.keras.part-* (see pack). A run cut short goes on here, on TensorFlow:
#     mkdir -p runs/NAME && tar -xf RUN.tar -C runs/NAME && cat RUN.keras.part-* > runs/NAME/last.keras
#     python -m training.train --resume runs/NAME --data-root ../shared/lgg/kaggle_3m_dev --workers 2
# Evaluation and export run on the CPU machine:
#     python -m training.evaluate ... --classifier-weights <cla>/best.weights.h5 --segmenter-weights <seg>/...
# Dry run on a CPU (tiny data, JAX on CPU; GPU_TRAIN_SITE names a folder with a keras/ in it, so that the x86-64
# CPython 3.12 wheels are not installed here):
#     GPU_TRAIN_DATA=/tmp/tiny/data GPU_TRAIN_SPLIT=/tmp/tiny/split.json GPU_TRAIN_EPOCHS=1 OUT=/tmp/out \
#         GPU_TRAIN_SITE=/tmp/fake PATH=.venv/bin:$PATH bash training/gpu/run.sh train
set -euo pipefail

cd "$(dirname "$0")/../.."
SITE="${GPU_TRAIN_SITE:-/tmp/site}"
DATA="${GPU_TRAIN_DATA:-/tmp/lgg}"
OUT="${OUT:-runs/gpu}"
mkdir -p "$OUT" "$DATA"

if [ ! -d "$SITE/keras" ] && [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" KERAS_BACKEND="${KERAS_BACKEND:-jax}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1

# pack RUN: what comes back from a device call is at most 8 files of 16 MiB each (a run's folder holds 7, and the
# segmenter's checkpoints are 25 MB), so each run is packed as soon as it ends, in case the call runs out of time: RUN.tar (the best checkpoint without its optimizer state, which
# is two thirds of it, and the small files) and the resumable last.keras in parts of 15 MiB (RUN.keras.part-aa, ...).
pack() {
    local run=$1
    [ -f "$OUT/$run/best.weights.h5" ] || return 0
    python3 -c 'import sys, h5py
with h5py.File(sys.argv[1]) as checkpoint, h5py.File(sys.argv[2], "w") as weights:
    weights.attrs.update(checkpoint.attrs)
    for name in checkpoint:
        if name != "optimizer":
            checkpoint.copy(name, weights)' "$OUT/$run/best.weights.h5" "$OUT/$run/weights.h5"
    mv "$OUT/$run/weights.h5" "$OUT/$run/best.weights.h5"
    [ -f "$OUT/$run/last.keras" ] && split -b 15M "$OUT/$run/last.keras" "$OUT/$run.keras.part-"
    tar -cf "$OUT/$run.tar" -C "$OUT/$run" --exclude last.keras --exclude epochs .
    rm -rf "${OUT:?}/$run"
}

case "${1:-}" in
receive)
    tar -xf "$2" -C "$DATA"
    echo "$(find "$DATA" -mindepth 1 -maxdepth 1 -type d | wc -l) patients in $DATA"
    ;;
train)
    # One segmenter, then one classifier per seed: the CPU recipes of the served models from scratch (segmenter
    # 1.2.0's, classifier 1.3.0's long run), each within its own wall-clock budget in minutes, counted from the start
    # of its invocation (measured on an H200: about 70 s of each goes to starting JAX, loading the slices and the
    # first validation), so that the whole script ends inside one device call.
    common=(--data-root "$DATA" --split "${GPU_TRAIN_SPLIT:-models/split.json}" --reference-model-dir models
        --workers "${GPU_TRAIN_WORKERS:-14}")
    python3 -m training.train --model segmenter --output-dir "$OUT/seg" "${common[@]}" --alpha 0.5 \
        --crop-size 128 --batch-size 32 --epochs "${GPU_TRAIN_EPOCHS:-60}" --learning-rate 1e-3 --patience 15 \
        --seed 2701 --max-minutes "${GPU_TRAIN_SEGMENTER_MINUTES:-4.5}" 2>&1 | tee "$OUT/train.log" ||
        echo "segmenter: exit status $?"
    pack seg
    for seed in ${GPU_TRAIN_CLASSIFIER_SEEDS:-2711}; do
        python3 -m training.train --model classifier --output-dir "$OUT/cla_$seed" "${common[@]}" \
            --augmentation strong --monitor val_auc --batch-size 32 --epochs "${GPU_TRAIN_EPOCHS:-50}" \
            --learning-rate 5e-4 --patience 15 --seed "$seed" --max-minutes "${GPU_TRAIN_CLASSIFIER_MINUTES:-4.0}" \
            2>&1 | tee -a "$OUT/train.log" || echo "classifier $seed: exit status $?"
        pack "cla_$seed"
    done
    ;;
*)
    echo "usage: bash training/gpu/run.sh receive PART.tar | train" >&2
    exit 2
    ;;
esac
