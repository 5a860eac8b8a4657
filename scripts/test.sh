#!/usr/bin/env bash
# The test suite: installs daps with its test dependencies, then runs pytest. Real-data tests read
# $DAPS_DATA_DIR and are skipped when it is unset; -rs lists every skipped test with its reason at the end.
# First the linter (ruff) over the package, tests, benchmarks and scripts, and the type checker (mypy) over the
# package; both are configured in pyproject.toml.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
bash scripts/install.sh test
"$PY" -m ruff check daps tests benchmarks scripts
"$PY" -m mypy
exec "$PY" -m pytest -q -rs "$@"
