"""The MONAI Label app loads only the bundle's own weights, with ``weights_only=True``; a client cannot pick a file.

Runs a short check inside the MONAI Label environment (as the e2e test does; skipped with the reason without it,
a failure when ``MEDCNN_REQUIRE_MONAILABEL=1``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("MEDCNN_MONAILABEL_VENV", ROOT / ".venv-monailabel"))
if not (VENV / "bin" / "python").is_file():
    fallback = ROOT.parent / "main" / ".venv-monailabel"  # sibling worktrees share main's environment
    VENV = fallback if (fallback / "bin" / "python").is_file() else VENV

pytestmark = [pytest.mark.monailabel]

CHECK = r'''
import json, sys, torch
from medcnn.monailabel.infer import make_infer_task
task = make_infer_task(sys.argv[1], {"device": "cpu"})
calls = []
real_load = torch.load
def spy(*args, **kwargs):
    calls.append({"file": str(args[0]), "weights_only": kwargs.get("weights_only")})
    return real_load(*args, **kwargs)
torch.load = spy
out = {"offered": task._config.get("model_filename"), "path": task.get_path()}
task._get_network("cpu", {"model_filename": sys.argv[2]})
out["loads"] = calls
try:
    task.clear_cache() if hasattr(task, "clear_cache") else None
    open(task.get_path(), "wb").write(b"")  # the copy's weights emptied: the error names the file
    task._networks.clear()
    task._get_network("cpu", {})
except Exception as e:
    out["error"] = f"{type(e).__name__}: {e}"
print(json.dumps(out))
'''


@pytest.fixture
def env():
    if not (VENV / "bin" / "python").is_file():
        if os.environ.get("MEDCNN_REQUIRE_MONAILABEL") == "1":
            pytest.fail(f"MEDCNN_REQUIRE_MONAILABEL=1 but {VENV} is missing")
        pytest.skip(f"MONAI Label environment {VENV} not found (scripts/monailabel_env.sh)")
    return VENV / "bin" / "python"


def test_only_the_bundle_weights_are_loaded_with_weights_only(env, tmp_path):
    bundle = tmp_path / "hippocampus_segmentation"
    shutil.copytree(ROOT / "bundles" / "hippocampus_segmentation", bundle, ignore=shutil.ignore_patterns("eval"))
    other = bundle / "models" / "other.pt"
    shutil.copy(bundle / "models" / "model.pt", other)  # a second weights file a client could name
    proc = subprocess.run([str(env), "-c", CHECK, str(bundle), "other.pt"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["offered"] is None  # no client-chosen model_filename
    assert out["loads"] == [{"file": str(bundle / "models" / "model.pt"), "weights_only": True}]
    assert out["error"].startswith(f"CheckpointError: {bundle / 'models' / 'model.pt'}: weights file is empty")
