"""Run medcnn bundles in-process the way ``python -m monai.bundle run`` does, with config overrides."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from monai.bundle import ConfigWorkflow

from medcnn.bench import bundle_workflow

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES = REPO_ROOT / "bundles"
META_SCHEMA = BUNDLES / "meta_schema.json"


def bundle_root(name: str) -> Path:
    return BUNDLES / name


def make_workflow(
    name: str, configs: Sequence[str], workflow_type: str = "train", **override
) -> ConfigWorkflow:
    """A ``ConfigWorkflow`` of bundle ``name`` built from ``configs`` (file names in ``configs/``)."""
    return bundle_workflow(name, configs, workflow_type, **override)


def run_workflow(name: str, configs: Sequence[str], workflow_type: str = "train", **override) -> ConfigWorkflow:
    """Initialise, check the required properties, run and finalise a bundle workflow (model zoo style)."""
    wf = make_workflow(name, configs, workflow_type, **override)
    wf.initialize()
    missing = wf.check_properties()
    assert not missing, f"{name} {configs}: missing required properties {missing}"
    wf.run()
    wf.finalize()
    return wf


class TinyRun(NamedTuple):
    """What a tiny training then evaluation of a bundle left behind (tests/test_bundles.py runs it once per bundle
    and hands it to the bundle's own ``check_tiny_run``)."""

    out: Path  #: the output_dir of both runs (curves.json, models/model.pt, metrics.json, figures, reports)
    common: dict  #: the overrides both runs got: data, output_dir, ckpt_path and the bundle's tiny sizes
    curves: dict  #: curves.json of the training run
    metrics: dict  #: metrics.json of the evaluation run
    tmp_path: Path  #: the test's own folder, for further runs


def read_metrics(output_dir: str | Path) -> dict:
    return json.loads((Path(output_dir) / "metrics.json").read_text())


def export_matches_eager(
    name: str, weights: str | Path, example, tmp_path: Path, config: str = "inference.json", atol: float = 1e-5
):
    """``ckpt_export`` the bundle's ``network_def`` to TorchScript and assert it equals the eager network on
    ``example``; returns the eager output (for shape checks)."""
    import torch
    from monai.bundle import ConfigParser, ckpt_export

    root = bundle_root(name)
    cfg = str(root / "configs" / config)
    ts = Path(tmp_path) / "model.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(ts),
        ckpt_file=str(weights),
        meta_file=str(root / "configs" / "metadata.json"),
        config_file=cfg,
        bundle_root=str(root),
    )
    parser = ConfigParser()
    parser.read_config(cfg)
    parser["bundle_root"] = str(root)
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(weights, weights_only=True))
    with torch.no_grad():
        expected = net.eval()(example)
        torch.testing.assert_close(torch.jit.load(str(ts))(example), expected, rtol=1e-4, atol=atol)
    return expected


def error_messages(exc: BaseException) -> str:
    """The messages of ``exc`` and of every exception it was raised from, one per line: MONAI's config parser wraps
    the file-named error of a medcnn component in ``RuntimeError("Failed to evaluate ...")``, and the command line
    shows the whole chain."""
    messages = []
    while exc is not None:
        messages.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__
    return "\n".join(messages)


class Killed(Exception):
    """Stands for a SIGKILL right after an epoch's training state was written (``engine.terminate()`` would not: it
    ends the run, as an early stop does, and the training state records that the run ended)."""


def kill(engine) -> None:
    """An Ignite handler that 'kills' the run: attach it after the bundle's handlers, e.g. at
    ``Events.EPOCH_COMPLETED(once=k)``; ``run()`` then raises an error whose chain contains :class:`Killed`."""
    raise Killed(f"after epoch {engine.state.epoch}")
