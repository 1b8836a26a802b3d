#!/usr/bin/env bash
# Run HERE (a machine with PyPI and ../shared), from the repository root, before a GPU session:
#
#     bash bench/gpu/prepare.sh
#
# Fills the two git-ignored folders that bench/gpu/run.sh needs on the GPU machine, which has no network and no
# ../shared: .whl/ (the wheels of bench/gpu/wheels.txt, for CPython 3.12 on x86-64) and .bench-data/kaggle_3m_dev/
# (the benchmark's slice mix, as bench.slice_mix.select_mix picks it with the default arguments, with their masks, in
# the kaggle_3m layout). Prints what would travel: tracked files + both folders must stay under 64 MiB.
#
# Environment: DATA_ROOT (default ../shared/lgg/kaggle_3m_dev), PYTHON (runs bench.slice_mix; default .venv/bin/python),
# PIP_PYTHON (runs pip download; default python3).
set -euo pipefail

cd "$(dirname "$0")/../.."
DATA_ROOT="${DATA_ROOT:-../shared/lgg/kaggle_3m_dev}"
PYTHON="${PYTHON:-.venv/bin/python}"
PIP_PYTHON="${PIP_PYTHON:-python3}"

echo "== wheels -> .whl/"
rm -rf .whl
# pip matches manylinux_2_N exactly: name every N the wheels use. Pure-Python wheels (py3-none-any) match any of them.
"$PIP_PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 \
    -d .whl -r bench/gpu/wheels.txt
expected=$(grep -cE '^[A-Za-z0-9]' bench/gpu/wheels.txt)
got=$(find .whl -type f -name '*.whl' | wc -l)
if [ "$got" -ne "$expected" ]; then
    echo "expected $expected wheels in .whl/, found $got (two versions of one package stop the install there)" >&2
    exit 1
fi

echo "== slice mix -> .bench-data/kaggle_3m_dev/"
rm -rf .bench-data
"$PYTHON" - "$DATA_ROOT" .bench-data/kaggle_3m_dev <<'EOF'
import shutil
import sys
from pathlib import Path

from bench.slice_mix import mask_of, select_mix

source, target = Path(sys.argv[1]), Path(sys.argv[2])
mix = select_mix(source)
for item in mix:
    folder = target / item.path.parent.name
    folder.mkdir(parents=True, exist_ok=True)
    for path in (item.path, mask_of(item.path)):
        shutil.copy2(path, folder / path.name)
# The copy holds exactly the mix, so select_mix picks the same slices from it (the order may differ: it shuffles
# the folder's own list).
copied = select_mix(target)
assert sorted(i.path.name for i in copied) == sorted(i.path.name for i in mix), "the copy gives another mix"
print(f"{len(mix)} slices ({sum(i.tumor for i in mix)} with tumor) and their masks from {source}")
EOF

echo "== sizes"
du -sh .whl .bench-data
git ls-files -z | du -ch --files0-from=- | tail -1 | sed 's/total/tracked files/'
{ git ls-files -z; find .whl .bench-data -type f -print0; } | du -ch --files0-from=- | tail -1 |
    sed 's/total/all that travels (limit 64 MiB; untracked files that git does not ignore travel too)/'
