#!/usr/bin/env bash
# The test suite: installs daps with its test dependencies, then runs pytest. Real-data tests read
# $DAPS_DATA_DIR and are skipped when it is unset; -rs lists every skipped test with its reason at the end.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
bash scripts/install.sh test
exec "$PY" -m pytest -q -rs "$@"
