"""The file-named medcnn error is what a user sees last on the terminal, also through MONAI's wrappers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from medcnn.errors import format_user_error, install_error_handler, user_error
from medcnn.transforms.validation import InvalidInputError
from tests.bundle_helpers import BUNDLES


def _wrapped() -> RuntimeError:
    try:
        try:
            try:
                raise InvalidInputError("/data/case_1.nii.gz: image contains 3 NaN or infinite value(s)")
            except InvalidInputError as e:
                raise RuntimeError("applying transform <CheckImageLabeld>") from e
        except RuntimeError as e:
            raise RuntimeError("Failed to evaluate ConfigExpression") from e
    except RuntimeError as e:
        return e


def test_user_error_is_found_under_monai_wrappers():
    exc = _wrapped()
    assert isinstance(user_error(exc), InvalidInputError)
    assert format_user_error(exc) == "error: /data/case_1.nii.gz: image contains 3 NaN or infinite value(s)"
    assert user_error(RuntimeError("torch internals")) is None


def test_installed_hook_prints_the_file_named_line_last(capsys, monkeypatch):
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    monkeypatch.delenv("MEDCNN_TRACEBACK", raising=False)
    install_error_handler()
    install_error_handler()  # idempotent: one line, not two
    exc = _wrapped()
    sys.excepthook(type(exc), exc, exc.__traceback__)
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: /data/case_1.nii.gz: image contains 3 NaN or infinite value(s)"
    assert sum(line.startswith("error:") for line in err) == 1 and "Traceback" not in "\n".join(err)


def test_bundle_run_on_the_command_line_ends_with_the_file_named_error(tmp_path):
    """``python -m monai.bundle run`` with a truncated checkpoint: the last line names the file."""
    bad = tmp_path / "model.pt"
    bad.write_bytes((BUNDLES / "synthetic_localisation" / "models" / "model.pt").read_bytes()[:4096])
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file",
           "['configs/train.json','configs/evaluate.json']", "--ckpt_path", str(bad),
           "--output_dir", str(tmp_path / "out"), "--num_test", "4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MEDCNN_TRACEBACK", None)
    proc = subprocess.run(cmd, cwd=BUNDLES / "synthetic_localisation", env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {bad}: not a readable PyTorch weights file"), proc.stderr[-2000:]


@pytest.mark.parametrize("argv", [["convert", "/no/such/stack.tif", "out"]])
def test_cli_reports_one_line(argv, capsys):
    from medcnn.cli import main

    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("medcnn convert: error: /no/such/stack.tif")
