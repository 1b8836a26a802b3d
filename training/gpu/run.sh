#!/usr/bin/env bash
# Run THERE, on the GPU machine, from the repository root (after training/gpu/prepare.sh here). One device call per
# data part, on a warm machine (it keeps /tmp for 30 s after a call), the last one training:
#
#     run(command="bash training/gpu/run.sh receive .gpu-data/part-1.tar", carry=[".whl", ".gpu-data/part-1.tar"])
#     ... the same for each part ...
#     run(command="bash training/gpu/run.sh receive .gpu-data/part-4.tar && bash training/gpu/run.sh train",
#         carry=[".whl", ".gpu-data/part-4.tar"], timeout_s=560)
#
# `train` fits the segmenter, then a classifier per seed, on Keras's JAX backend with the arguments below (the CPU
# recipes, more batch-preparing threads, a time budget each), and leaves in $OUT one tar per run (best.weights.h5,
# history.csv, run.json) and train.log. Export and evaluation run on the CPU machine afterwards:
#     python -m training.evaluate ... --classifier-weights <cla>/best.weights.h5 --segmenter-weights <seg>/...
# Dry run on a CPU (tiny data, JAX on CPU):
#     GPU_TRAIN_DATA=/tmp/tiny/data GPU_TRAIN_SPLIT=/tmp/tiny/split.json GPU_TRAIN_EPOCHS=1 OUT=/tmp/out \
#         PATH=.venv/bin:$PATH bash training/gpu/run.sh train
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

case "${1:-}" in
receive)
    tar -xf "$2" -C "$DATA"
    echo "$(find "$DATA" -mindepth 1 -maxdepth 1 -type d | wc -l) patients in $DATA"
    ;;
train)
    # One segmenter, then one classifier per seed, each within its own wall-clock budget (minutes; the script ends
    # inside a device call's limit) and cosine schedule: the CPU recipes of the served models (segmenter 1.2.0's
    # from scratch, classifier 1.3.0's long run from scratch).
    common=(--data-root "$DATA" --split "${GPU_TRAIN_SPLIT:-models/split.json}" --reference-model-dir models
        --workers "${GPU_TRAIN_WORKERS:-14}")
    runs=(seg)
    python3 -m training.train --model segmenter --output-dir "$OUT/seg" "${common[@]}" --alpha 0.5 \
        --crop-size 128 --batch-size 32 --epochs "${GPU_TRAIN_EPOCHS:-60}" --learning-rate 1e-3 --patience 15 \
        --seed 2701 --max-minutes "${GPU_TRAIN_SEGMENTER_MINUTES:-3.5}" 2>&1 | tee "$OUT/train.log" ||
        echo "segmenter: exit status $?"
    for seed in ${GPU_TRAIN_CLASSIFIER_SEEDS:-2711 2712}; do
        python3 -m training.train --model classifier --output-dir "$OUT/cla_$seed" "${common[@]}" \
            --augmentation strong --monitor val_auc --batch-size 32 --epochs "${GPU_TRAIN_EPOCHS:-50}" \
            --learning-rate 5e-4 --patience 15 --seed "$seed" --max-minutes "${GPU_TRAIN_CLASSIFIER_MINUTES:-1.9}" \
            2>&1 | tee -a "$OUT/train.log" || echo "classifier $seed: exit status $?"
        runs+=("cla_$seed")
    done
    # What comes back is at most 8 files of 16 MiB: one tar per run, not last.keras, and the best checkpoint without
    # its optimizer state (a third of the segmenter's 25 MB; evaluation and export need only the weights).
    for run in "${runs[@]}"; do
        [ -f "$OUT/$run/best.weights.h5" ] || continue
        python3 -c 'import sys, h5py
with h5py.File(sys.argv[1]) as checkpoint, h5py.File(sys.argv[2], "w") as weights:
    weights.attrs.update(checkpoint.attrs)
    for name in checkpoint:
        if name != "optimizer":
            checkpoint.copy(name, weights)' "$OUT/$run/best.weights.h5" "$OUT/$run/weights.h5"
        mv "$OUT/$run/weights.h5" "$OUT/$run/best.weights.h5"
        tar -cf "$OUT/$run.tar" -C "$OUT/$run" best.weights.h5 history.csv run.json
        rm -rf "${OUT:?}/$run"
    done
    ;;
*)
    echo "usage: bash training/gpu/run.sh receive PART.tar | train" >&2
    exit 2
    ;;
esac
