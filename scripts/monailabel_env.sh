#!/usr/bin/env bash
# Create (or reuse) the separate, pinned environment that serves the medcnn bundles through MONAI Label 0.8.5.
#
# Why a second environment: MONAI Label 0.8.5 needs pydicom < 3 (pydicom-seg breaks on pydicom 3), numpy < 2
# and jsonschema < 4 (both via pydicom-seg), and dicomweb-client 0.59.1, which conflict with the main
# environment (pydicom 3, numpy 2, jsonschema >= 4.20). The main .venv is never touched.
#
# Usage: scripts/monailabel_env.sh            (environment in $MEDCNN_MONAILABEL_VENV, default <repo>/.venv-monailabel)
#        MEDCNN_MONAILABEL_VENV=/some/dir scripts/monailabel_env.sh
#        PYTHON=python3.11 scripts/monailabel_env.sh
# Every package is pinned by scripts/monailabel_constraints.txt (the set tested together).
# Steps: torch/torchvision (the project's pins) -> sam2 built without CUDA extension and without build isolation
# (monailabel declares it; only its SAM2 tasks import it) -> monailabel==0.8.5 and medcnn's runtime dependencies
# (read from setup.cfg, all but jsonschema) under the constraints below -> medcnn itself, editable, with --no-deps (its jsonschema>=4.20 pin is only for
# bundle metadata verification, which is not needed to serve) -> an import smoke check (medcnn.monailabel.app).
# The server runs the medcnn of the checkout that starts it (medcnn.monailabel.launcher puts it first on PYTHONPATH).
# Writes <venv>/medcnn-monailabel-env.json with the installed versions and the build time in seconds.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MEDCNN_MONAILABEL_VENV:-$root/.venv-monailabel}"
python="${PYTHON:-python3}"
start=$(date +%s)

constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
# the full tested set (scripts/monailabel_constraints.txt) plus the pins that motivate this environment
cat "$root/scripts/monailabel_constraints.txt" >"$constraints"
cat >>"$constraints" <<'EOF'
torch==2.14.1
torchvision==0.29.1
monai==1.6.1
monailabel==0.8.5
numpy<2
pydicom<3
dicomweb-client==0.59.1
jsonschema<4
sam2==1.1.0
EOF

if [ ! -x "$venv/bin/python" ]; then
  echo "medcnn-monailabel: creating virtual environment $venv"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
step() { echo "medcnn-monailabel: [$1] $2 (at $(( $(date +%s) - start )) s)"; }

step 1/4 "torch, torchvision"
"${pip[@]}" install --quiet -c "$constraints" torch==2.14.1 torchvision==0.29.1 'numpy<2' 'setuptools>=61' wheel

step 2/4 "sam2 (no CUDA extension, built against the installed torch)"
SAM2_BUILD_CUDA=0 "${pip[@]}" install --quiet --no-build-isolation -c "$constraints" sam2==1.1.0

step 3/4 "monailabel 0.8.5 and medcnn's runtime dependencies (setup.cfg install_requires but jsonschema)"
mapfile -t medcnn_reqs < <("$venv/bin/python" - "$root/setup.cfg" <<'PY'
import configparser
import sys

cfg = configparser.ConfigParser()
cfg.read(sys.argv[1])
for line in cfg["options"]["install_requires"].splitlines():
    req = line.split("#")[0].strip()
    if req and not req.lower().startswith("jsonschema"):  # pydicom-seg needs jsonschema < 4
        print(req)
PY
)
"${pip[@]}" install --quiet -c "$constraints" monailabel==0.8.5 "${medcnn_reqs[@]}"

step 4/4 "medcnn (editable, --no-deps)"
"${pip[@]}" install --quiet --no-deps -e "$root"

elapsed=$(( $(date +%s) - start ))
"$venv/bin/python" - "$venv" "$elapsed" <<'EOF'
import json
import sys
from importlib.metadata import version

import numpy
import pydicom

import medcnn
import medcnn.monailabel.app  # noqa: F401  (the app the server runs: MONAI Label, FastAPI and medcnn together)
import monailabel  # noqa: F401

names = ["monailabel", "monai", "torch", "torchvision", "numpy", "pydicom", "dicomweb-client", "pydicom-seg",
         "jsonschema", "sam2", "pytorch-ignite", "nibabel", "grad-cam", "fastapi", "uvicorn", "medcnn"]
versions = {n: version(n) for n in names}
assert int(numpy.__version__.split(".")[0]) < 2, numpy.__version__
assert int(pydicom.__version__.split(".")[0]) < 3, pydicom.__version__
assert versions["monailabel"] == "0.8.5", versions["monailabel"]
assert medcnn.__version__
out = {"versions": versions, "build_seconds": int(sys.argv[2])}
with open(f"{sys.argv[1]}/medcnn-monailabel-env.json", "w") as f:
    json.dump(out, f, indent=1)
print(json.dumps(out))
EOF
echo "medcnn-monailabel: environment ready in $venv (${elapsed} s)"
