"""Shared fixtures: the real-data folder and a runner for bundle workflows."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"


def real_data_dir(name: str) -> Path:
    """Folder of one real dataset.

    With ``MEDCNN_DATA_DIR`` set (CI does this), a missing dataset fails the test: CI must never pass by
    skipping. Without it, ``../shared/data`` beside the repository is used and a missing dataset skips.
    """
    env = os.environ.get("MEDCNN_DATA_DIR")
    root = Path(env).expanduser().resolve() if env else DEFAULT_DATA_DIR
    path = root / name
    if not path.is_dir():
        if env:
            pytest.fail(f"MEDCNN_DATA_DIR={env} is set but the dataset folder {path} is missing")
        pytest.skip(f"real dataset {name} not found at {path} (set MEDCNN_DATA_DIR)")
    return path


@pytest.fixture
def data_dir():
    """Call ``data_dir('msd_hippocampus')`` to get that dataset's folder (see :func:`real_data_dir`)."""
    return real_data_dir


@pytest.fixture(autouse=True)
def _few_threads():
    """Keep each test on the machine's cores without oversubscription."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(min(n, os.cpu_count() or 1))
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _metatensor_tracking_restored():
    """MONAI's MetaTensor tracking is process-wide: a test (or the training it runs) that leaves it off would make
    every later test's transforms drop their metadata (affines, file names). Fail the test that did it."""
    from monai.data import get_track_meta, set_track_meta

    yield
    if not get_track_meta():
        set_track_meta(True)
        pytest.fail("the test left MONAI's MetaTensor tracking off (monai.data.set_track_meta(False) without restore)")


@pytest.fixture
def weights(request) -> Path:
    """The committed ``models/model.pt`` named by the test module's ``WEIGHTS``; missing weights fail the test."""
    path = Path(request.module.WEIGHTS)
    if not path.is_file():
        pytest.fail(f"committed weights {path} are missing")
    return path
