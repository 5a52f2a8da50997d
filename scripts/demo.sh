#!/usr/bin/env bash
# One command for the demo: installs what it needs (idempotent), then runs `wakertc demo`.
#   scripts/demo.sh [--json] [--fault NAME] [--wav IN] [--out OUT]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/bootstrap.sh"
exec "${WAKERTC_VENV:-$root/.venv}/bin/wakertc" demo --models-dir "${WAKERTC_MODELS:-$root/models}" "$@"
