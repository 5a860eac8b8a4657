#!/usr/bin/env bash
# Prepares, on this (CPU) machine, what `benchmarks/gpu_check.py` needs on a lent GPU machine that reaches no
# package registry: the wheels of daps's dependencies its image lacks (in .whl/, for its Python 3.12 on x86-64
# Linux, the versions installed here) and the MNIST files (in .gpudata/mnist). Both folders are kept out of git
# (.git/info/exclude) and travel with `carry`. Prints the command to give the device tool.
#
# The paper's MNIST run continues across GPU calls: copy the `mnist-daps-run.tar` a call brought back into
# .gpurun/ (kept out of git too) before running this script; it travels in .gpudata/ and the printed command
# unpacks it where benchmarks/gpu_check.py resumes it.
#
#     DAPS_DATA_DIR=../shared/data bash scripts/gpu_prepare.sh
#
# The printed command skips the sections an H100 measured already (2026-12-06, BENCHMARKS.md), so that one call
# reaches the ones not yet measured: GPU_CHECK_SKIP (comma-separated names or patterns of benchmarks/gpu_check.py's
# sections) sets another list; GPU_CHECK_SKIP= (empty) runs every section.
#
# The image's package list (the device tool's KINDS.md) has torch, numpy, safetensors, tqdm, matplotlib, pillow,
# einops, pytest and scipy; vector-quantize-pytorch and its own needs are what it lacks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
: "${DAPS_DATA_DIR:?set DAPS_DATA_DIR to the folder holding mnist/}"
SKIP="${GPU_CHECK_SKIP-resample-*,optimizer-step,suite-*,compile-mnist,graph-lafan1-h1}"
case "$SKIP" in *[!A-Za-z0-9*,._-]*) echo "gpu_prepare.sh: error: GPU_CHECK_SKIP holds a character other than letters, digits, * , . _ -" >&2; exit 2;; esac
[ -d "$DAPS_DATA_DIR/mnist" ] || { echo "gpu_prepare.sh: error: no mnist/ in $DAPS_DATA_DIR" >&2; exit 2; }

for path in /.whl/ /.gpudata/ /.gpurun/; do
  grep -qxF "$path" .git/info/exclude 2>/dev/null || echo "$path" >> .git/info/exclude
done

packages=()
for name in vector-quantize-pytorch einx loguru frozendict torch-einops-utils; do
  version="$("$PY" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')"
  [ -n "$version" ] || { echo "gpu_prepare.sh: error: $name is not installed here (run scripts/install.sh)" >&2; exit 2; }
  packages+=("$name==$version")
done
rm -rf .whl.tmp && mkdir .whl.tmp
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl.tmp "${packages[@]}"
rm -rf .whl && mv .whl.tmp .whl

rm -rf .gpudata && mkdir -p .gpudata && cp -r "$DAPS_DATA_DIR/mnist" .gpudata/
if [ -f .gpurun/mnist-daps-run.tar ]; then
  cp .gpurun/mnist-daps-run.tar .gpudata/
  echo "the MNIST run in .gpurun/mnist-daps-run.tar travels along and is resumed"
fi
du -sh .whl .gpudata

cat <<EOF
Give the device tool (carry [".whl", ".gpudata"], timeout 600):
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; export DAPS_DATA_DIR=\$PWD/.gpudata PYTHONUNBUFFERED=1 DAPS_GIT_REVISION=$(git rev-parse --short HEAD); mkdir -p /tmp/gc; [ ! -f .gpudata/mnist-daps-run.tar ] || tar xf .gpudata/mnist-daps-run.tar -C /tmp/gc; python3 benchmarks/gpu_check.py --out /tmp/gc --budget 530 --skip '$SKIP'; cd /tmp/gc; tar czf \$OUT/details.tar.gz logs results; cp report.md report.json \$OUT/; tar cf \$OUT/mnist-daps-run.tar mnist-daps-run
EOF
