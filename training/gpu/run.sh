#!/usr/bin/env bash
# Run THERE, on the GPU machine, from the repository root (after training/gpu/prepare.sh here). One device call per
# data part, on a warm machine (it keeps /tmp for 30 s after a call), the last one training:
#
#     run(command="bash training/gpu/run.sh receive .gpu-data/part-1.tar", carry=[".whl", ".gpu-data/part-1.tar"])
#     ... the same for each part ...
#     run(command="bash training/gpu/run.sh train", carry=[".whl"], timeout_s=590)
#
# `train` fits the segmenter, then the classifier, for the full schedule on Keras's JAX backend with the arguments
# below (the CPU recipe, more batch-preparing threads), and leaves in $OUT per model best.weights.h5, history.csv and
# run.json, plus train.log. Export and evaluation run on the CPU machine afterwards:
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
    epochs="${GPU_TRAIN_EPOCHS:-}"
    common=(--data-root "$DATA" --split "${GPU_TRAIN_SPLIT:-models/split.json}" --reference-model-dir models
        --workers "${GPU_TRAIN_WORKERS:-12}")
    python3 -m training.train --model segmenter --output-dir "$OUT/seg" "${common[@]}" --alpha 0.5 \
        --crop-size 128 --batch-size 32 --epochs "${epochs:-60}" --learning-rate 1e-3 --patience 15 \
        2>&1 | tee "$OUT/train.log"
    python3 -m training.train --model classifier --output-dir "$OUT/cla" "${common[@]}" \
        --batch-size 32 --epochs "${epochs:-40}" --learning-rate 1e-3 --patience 12 2>&1 | tee -a "$OUT/train.log"
    # Only what comes back fits the device's limits (8 files of at most 16 MiB): not last.keras.
    for model in seg cla; do
        for name in best.weights.h5 history.csv run.json; do
            cp "$OUT/$model/$name" "$OUT/${model}_$name"
        done
        rm -rf "${OUT:?}/$model"
    done
    ;;
*)
    echo "usage: bash training/gpu/run.sh receive PART.tar | train" >&2
    exit 2
    ;;
esac
