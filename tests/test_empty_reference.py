"""Empty references: Dice / HD95 are NaN (null in metrics.json), left out of the means and counted, never 0.0.

Real-data-derived fixtures: held-out MSD hippocampus cases with their label emptied (the same header), and a real
ISBI 2012 EM label slice made all-cell."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medcnn.handlers import EmptyReferenceCount, HausdorffDistance, MeanDice
from medcnn.handlers.segmentation import MaxFPixelErrorMetric, PixelConfusionMetric
from medcnn.metrics.segmentation import empty_classes
from tests.bundle_helpers import BUNDLES, read_metrics, run_workflow

HIPPO = "hippocampus_segmentation"


def _test_cases() -> list[dict]:
    return json.loads((BUNDLES / HIPPO / "configs" / "split.json").read_text())["test"]


@pytest.fixture
def hippo_cases(tmp_path, data_dir) -> dict[str, dict]:
    """Two held-out cases: ``good`` as shipped, ``empty`` with an all-zero label on the image's own header."""
    ds = data_dir("msd_hippocampus")
    good, other = _test_cases()[:2]
    src = nib.load(ds / other["label"])
    empty_label = tmp_path / "empty_label.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(src.shape, np.uint8), src.affine, src.header), empty_label)
    return {
        "good": {"image": str(ds / good["image"]), "label": str(ds / good["label"])},
        "empty": {"image": str(ds / other["image"]), "label": str(empty_label)},
    }


def _evaluate(tmp_path: Path, entries: list[dict], name: str) -> dict:
    datalist = tmp_path / f"{name}.json"
    datalist.write_text(json.dumps(entries))
    out = tmp_path / name
    run_workflow(HIPPO, ["train.json", "evaluate.json"], "train", eval_datalist=str(datalist), output_dir=str(out))
    return read_metrics(out)


def test_hippocampus_empty_label_alone_gives_null_not_zero(tmp_path, hippo_cases):
    m = _evaluate(tmp_path, [hippo_cases["empty"]], "empty_only")
    assert m["n_cases"] == 1 and m["n_empty_reference"] == 1
    assert m["n_empty_reference_anterior"] == 1 and m["n_empty_reference_posterior"] == 1
    for key in ("mean_dice", "dice_anterior", "dice_posterior", "hd95_mean"):
        assert m[key] is None, (key, m[key])  # NaN -> null: undefined, not a perfect or a failed case


def test_hippocampus_empty_label_next_to_a_good_case_is_counted_and_left_out(tmp_path, hippo_cases):
    alone = _evaluate(tmp_path, [hippo_cases["good"]], "good_only")
    both = _evaluate(tmp_path, [hippo_cases["good"], hippo_cases["empty"]], "both")
    assert both["n_cases"] == 2 and both["n_empty_reference"] == 1 and alone["n_empty_reference"] == 0
    assert alone["mean_dice"] > 0.6  # the committed model on a real held-out case
    for key in ("mean_dice", "dice_anterior", "dice_posterior", "hd95_mean"):
        assert both[key] == pytest.approx(alone[key], rel=1e-6), key


def _onehot(index_map: np.ndarray, c: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.as_tensor(index_map).long(), c).movedim(-1, 0).float()


def test_monai_metric_handlers_give_nan_when_no_case_is_defined():
    empty = torch.zeros(3, 6, 6, 6)
    empty[0] = 1
    pred = empty.clone()
    pred[0, 1:3, 1:3, 1:3], pred[1, 1:3, 1:3, 1:3] = 0, 1
    for handler in (MeanDice(include_background=False), HausdorffDistance(include_background=False, percentile=95)):
        handler.reset()
        handler.update(([pred], [empty]))
        assert math.isnan(handler.compute())


def test_empty_reference_count_and_empty_prediction(data_dir):
    ref = np.zeros((8, 8, 8), np.int64)
    ref[1:3, 1:3, 1:3] = 1  # class 2 absent from the reference
    pred = np.zeros_like(ref)  # class 1 missed by the prediction
    metric = EmptyReferenceCount(num_classes=3, class_names=["anterior", "posterior"])
    metric.reset()
    metric.update(([_onehot(pred, 3)], [_onehot(ref, 3)]))
    metric.update(([_onehot(ref, 3)], [_onehot(ref, 3)]))
    assert metric.compute() == {"n_empty_reference": 2, "n_empty_reference_anterior": 0,
                                "n_empty_reference_posterior": 2, "n_empty_prediction_anterior": 1,
                                "n_empty_prediction_posterior": 0}
    assert empty_classes(_onehot(ref, 3), 3) == [2] and empty_classes(ref[None], 3) == [2]


@pytest.fixture
def em_label(data_dir) -> np.ndarray:
    """A real ISBI 2012 label slice as classes (0 = cell, 1 = membrane, the bundle's convention)."""
    from medcnn.data.tiff import read_stack

    labels = read_stack(data_dir("isbi2012_em_membranes") / "train" / "labels")[0]
    return (labels == 0).astype(np.int64)


def test_all_cell_em_label_gives_no_pixel_error_of_zero(em_label):
    all_cell = np.zeros_like(em_label)
    prob = torch.stack([torch.full(all_cell.shape, 0.9), torch.full(all_cell.shape, 0.1)])  # (C, H, W), all cell
    pixel_error = MaxFPixelErrorMetric(scored_class=0)
    pixel_error.reset()
    pixel_error.update(([prob], [torch.as_tensor(all_cell)[None]]))
    assert math.isnan(pixel_error.compute()["isbi_pixel_error"])  # was 0.0: a trivial all-cell answer
    # next to a real slice the pooled reference holds both classes and the figure is defined again
    pixel_error.update(([prob], [torch.as_tensor(em_label)[None]]))
    assert 0.0 < pixel_error.compute()["isbi_pixel_error"] < 1.0

    confusion = PixelConfusionMetric(num_classes=2, class_names=["cell", "membrane"], count_name="n_slices")
    confusion.reset()
    confusion.update(([torch.as_tensor(all_cell)[None]], [torch.as_tensor(all_cell)[None]]))
    report = confusion.compute()
    assert report["n_empty_reference"] == 1 and report["n_empty_reference_membrane"] == 1
    assert math.isnan(report["membrane_dice"]) and report["n_slices"] == 1
    confusion.update(([torch.as_tensor(em_label)[None]], [torch.as_tensor(em_label)[None]]))
    report = confusion.compute()
    assert report["n_empty_reference"] == 1 and report["membrane_dice"] == 1.0 and report["n_slices"] == 2
