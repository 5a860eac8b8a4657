#!/usr/bin/env bash
# Installs daps (editable) and what it needs. Keeps an installed torch (e.g. a GPU build); installs the
# pinned CPU build only when `import torch` fails. Usage: bash scripts/install.sh [extra]   (extra: test)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "[daps] torch not found: installing torch==2.13.0"
  "$PY" -m pip install --quiet torch==2.13.0
fi
spec="."
[ "${1:-}" = "test" ] && spec=".[test]"
"$PY" -m pip install --quiet -e "$spec"
