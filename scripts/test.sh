#!/usr/bin/env bash
# Install medcnn with its test extras into its own venv, lint, and run the test suite.
# MEDCNN_DATA_DIR (default ../shared/data beside the repository) holds the real datasets; when it is set,
# a missing dataset fails the tests that need it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup_venv.sh" test
venv="${MEDCNN_VENV:-$root/.venv}"
cd "$root"
"$venv/bin/ruff" check medcnn tests scripts
"$venv/bin/python" -m pytest "$@"
