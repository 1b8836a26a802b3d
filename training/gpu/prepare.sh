#!/usr/bin/env bash
# Run HERE (a machine with PyPI and ../shared), from the repository root, before training on a GPU machine:
#
#     bash training/gpu/prepare.sh
#
# The GPU machine has JAX but no Keras and no TensorFlow, no network and no ../shared, and a device call carries at
# most 64 MiB of the working tree (28 MiB of it tracked files). This fills two git-ignored folders:
#   .whl/       keras, namex, optree, pydantic (and its needs) wheels for CPython 3.12 (x86-64): Keras runs there
#               on its JAX backend;
#   .gpu-data/  the development pool as tar parts of at most PART_MB (default 28) MiB, whole patients each.
# Then send each part in its own call, and train in the last one (training/gpu/run.sh says how).
#
# Environment: DATA_ROOT (default ../shared/lgg/kaggle_3m_dev), PART_MB (28), PIP_PYTHON (python3).
set -euo pipefail

cd "$(dirname "$0")/../.."
DATA_ROOT="${DATA_ROOT:-../shared/lgg/kaggle_3m_dev}"
PART_MB="${PART_MB:-28}"
PIP_PYTHON="${PIP_PYTHON:-python3}"
grep -qxF '/.gpu-data/' .git/info/exclude 2>/dev/null || echo '/.gpu-data/' >> .git/info/exclude

echo "== wheels -> .whl/"
rm -rf .whl
# Keras and what training imports beyond the GPU machine's packages (app.core.model_store's pydantic), each at the
# version this checkout's environment runs.
pins=$(.venv/bin/python -c 'from importlib.metadata import version
names = ["keras", "namex", "optree", "pydantic", "pydantic_core", "annotated-types", "typing-inspection",
         "typing_extensions"]
print(" ".join(f"{name}=={version(name)}" for name in names))')
"$PIP_PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 \
    -d .whl $pins

echo "== $DATA_ROOT -> .gpu-data/part-*.tar (whole patients, at most $PART_MB MiB each)"
rm -rf .gpu-data && mkdir -p .gpu-data
part=0 size=0 list=()
flush() {
    [ "${#list[@]}" -eq 0 ] && return
    part=$((part + 1))
    tar -cf ".gpu-data/part-$part.tar" -C "$DATA_ROOT" "${list[@]}"
    list=() size=0
}
for folder in "$DATA_ROOT"/TCGA_*/; do
    name=$(basename "$folder")
    folder_kb=$(du -sk "$folder" | cut -f1)
    if [ $(((size + folder_kb) / 1024)) -ge "$PART_MB" ]; then flush; fi
    list+=("$name")
    size=$((size + folder_kb))
done
flush
du -sh .whl .gpu-data/*
git ls-files -z | du -ch --files0-from=- | tail -1 | sed 's/total/tracked files/'
