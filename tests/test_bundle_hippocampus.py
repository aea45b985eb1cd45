"""hippocampus_segmentation bundle: metadata, the checks of its tiny training + evaluation + inference (run by
tests/test_bundles.py), saved predictions aligned with the input, TorchScript export, and the model card's held-out
Dice reproduced by the committed weights."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_helpers import TinyRun, bundle_root, export_matches_eager, read_metrics, run_workflow

NAME = "hippocampus_segmentation"
ROOT = bundle_root(NAME)
WEIGHTS = ROOT / "models" / "model.pt"
#: evaluate.json on the first 12 held-out test cases with the committed weights (command in docs/README.md)
SUBSET_METRICS = ROOT / "docs" / "metrics_test_first12.json"
DATASET = "msd_hippocampus"
pytestmark = [pytest.mark.realdata]


def _split(key: str) -> list[dict]:
    return json.loads((ROOT / "configs" / "split.json").read_text())[key]


def test_split_is_disjoint():
    parts = {k: {d["image"] for d in _split(k)} for k in ("training", "validation", "test")}
    assert [len(v) for v in parts.values()] == [156, 20, 44]
    assert not parts["training"] & parts["test"] and not parts["validation"] & parts["test"]
    assert not parts["training"] & parts["validation"]


def check_tiny_run(run: TinyRun) -> None:
    """The tiny evaluation of tests/test_bundles.py on two held-out cases, then inference with its checkpoint: a saved
    prediction has the input's affine and shape, and labels in {0, 1, 2}."""
    metrics = run.metrics
    assert "val_mean_dice" in run.curves
    for key in ("mean_dice", "dice_anterior", "dice_posterior"):
        assert 0.0 <= metrics[key] <= 1.0, metrics
    assert metrics["mean_dice"] == pytest.approx((metrics["dice_anterior"] + metrics["dice_posterior"]) / 2, 1e-4)
    case = _split("test")[0]
    image = f"{run.common['dataset_dir']}/{case['image']}"
    run_workflow(NAME, ["inference.json"], "infer", **run.common, input_files=[image])
    pred_file = run.out / "predictions" / case["image"].split("/")[-1].replace(".nii.gz", "_seg.nii.gz")
    src, pred = nib.load(image), nib.load(pred_file)
    assert pred.shape == src.shape
    np.testing.assert_allclose(pred.affine, src.affine)
    assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= {0, 1, 2}


def test_committed_weights_reproduce_the_model_card(tmp_path, data_dir, weights):
    """The first 12 held-out test cases (a documented subset, to keep the test fast) within 0.01 Dice."""
    ref = json.loads(SUBSET_METRICS.read_text())
    ds = str(data_dir(DATASET))
    out = tmp_path / "out"
    run_workflow(
        NAME,
        ["train.json", "evaluate.json"],
        "train",
        dataset_dir=ds,
        output_dir=str(out),
        **{"validate#dataset#data": f"$@test_datalist[:{ref['n_cases']}]"},
    )
    metrics = read_metrics(out)
    assert metrics["n_cases"] == ref["n_cases"]
    assert metrics["mean_dice"] > 0.8, metrics  # a sanity floor well below the card's figure
    for key in ("mean_dice", "dice_anterior", "dice_posterior"):
        assert metrics[key] == pytest.approx(ref[key], abs=0.01), (key, metrics, ref)
    # a saved prediction on the input's grid: same affine and shape as the image
    case = _split("test")[0]
    src = nib.load(f"{ds}/{case['image']}")
    pred = nib.load(out / "predictions" / case["image"].split("/")[-1].replace(".nii.gz", "_seg.nii.gz"))
    assert pred.shape == src.shape
    np.testing.assert_allclose(pred.affine, src.affine)


def test_torchscript_export_matches_eager_and_net_in_out(tmp_path, weights):
    from monai.bundle import verify_net_in_out

    meta, cfg = str(ROOT / "configs" / "metadata.json"), str(ROOT / "configs" / "inference.json")
    verify_net_in_out(net_id="network_def", meta_file=meta, config_file=cfg, n=5, bundle_root=str(ROOT))
    x = torch.randn(1, 1, 40, 56, 40, generator=torch.Generator().manual_seed(0))
    assert export_matches_eager(NAME, weights, x, tmp_path).shape == (1, 3, 40, 56, 40)
