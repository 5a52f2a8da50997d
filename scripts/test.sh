#!/usr/bin/env bash
# The test command: installs what the tests need (idempotent), then lint, types and the suite.
#   scripts/test.sh                 everything (what CI runs)
#   scripts/test.sh tests/test_x.py extra arguments go to pytest
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
scripts/bootstrap.sh --test
venv=${WAKERTC_VENV:-$root/.venv}
echo "== ruff check" && "$venv/bin/ruff" check daemon tests scripts
echo "== ruff format --check" && "$venv/bin/ruff" format --check daemon tests scripts
echo "== mypy" && "$venv/bin/mypy"
echo "== pytest" && exec "$venv/bin/python" -m pytest "$@"
