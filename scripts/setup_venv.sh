#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install medcnn with the given extras into it.
# Usage: scripts/setup_venv.sh [extras]      e.g. scripts/setup_venv.sh test
# The environment lives in $MEDCNN_VENV (default: .venv in the repository root). Nothing outside it is used.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MEDCNN_VENV:-$root/.venv}"
extras="${1:-}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "medcnn: creating virtual environment $venv"
  "$python" -m venv "$venv"
fi
spec="$root"
[ -n "$extras" ] && spec="$root[$extras]"
# The torch / torchvision pins live in setup.cfg; pip resolves them from the configured indexes.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$spec"
echo "medcnn: environment ready in $venv"
