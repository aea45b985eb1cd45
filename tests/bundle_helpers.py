"""Run medcnn bundles in-process the way ``python -m monai.bundle run`` does, with config overrides."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from monai.bundle import ConfigWorkflow

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES = REPO_ROOT / "bundles"
META_SCHEMA = BUNDLES / "meta_schema.json"


def bundle_root(name: str) -> Path:
    return BUNDLES / name


def make_workflow(
    name: str, configs: Sequence[str], workflow_type: str = "train", **override
) -> ConfigWorkflow:
    """A ``ConfigWorkflow`` of bundle ``name`` built from ``configs`` (file names in ``configs/``)."""
    root = bundle_root(name)
    files = [str(root / "configs" / c) for c in configs]
    return ConfigWorkflow(
        config_file=files if len(files) > 1 else files[0],
        meta_file=str(root / "configs" / "metadata.json"),
        logging_file=str(root / "configs" / "logging.conf") if (root / "configs" / "logging.conf").exists() else None,
        workflow_type=workflow_type,
        bundle_root=str(root),
        **override,
    )


def run_workflow(name: str, configs: Sequence[str], workflow_type: str = "train", **override) -> ConfigWorkflow:
    """Initialise, check the required properties, run and finalise a bundle workflow (model zoo style)."""
    wf = make_workflow(name, configs, workflow_type, **override)
    wf.initialize()
    missing = wf.check_properties()
    assert not missing, f"{name} {configs}: missing required properties {missing}"
    wf.run()
    wf.finalize()
    return wf


def read_metrics(output_dir: str | Path) -> dict:
    return json.loads((Path(output_dir) / "metrics.json").read_text())
