"""CAMRule and the CAMToMask / CAMToMaskd post-processing transform on small arrays with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medcnn.localisation import CAMRule, CAMToMask, CAMToMaskd, class_present


def _two_blobs() -> torch.Tensor:
    """(1, 8, 8) heatmap: a 2x2 blob at 1.0 and a separate single pixel at 0.6, the rest 0.1."""
    h = torch.full((1, 8, 8), 0.1)
    h[0, 1:3, 1:3] = 1.0
    h[0, 6, 6] = 0.6
    return h


def test_rule_validates_fields_and_names_them():
    with pytest.raises(ValueError, match="mode"):
        CAMRule(mode="median")
    with pytest.raises(ValueError, match="threshold"):
        CAMRule(threshold=1.5)
    with pytest.raises(ValueError, match="decision_threshold"):
        CAMRule(decision_threshold=2.0)


def test_rule_from_results_json_and_calibration_dicts():
    results = {"cam_method": "scorecam", "cam_layer": "blocks.1", "cam_threshold": 0.4,
               "cam_threshold_mode": "fraction", "cam_largest_component": True, "accuracy": 1.0,
               "threshold": 0.5}  # a results JSON's "threshold" is the classifier's, not the CAM's
    rule = CAMRule.from_dict(results)
    assert rule == CAMRule("scorecam", "blocks.1", 1, 0.4, "fraction", True, 0.5)
    otsu = CAMRule.from_dict({"method": "gradcam", "threshold": None, "mode": "otsu", "table": []})
    assert otsu.mode == "otsu" and otsu.threshold == 0.5
    assert CAMRule.from_dict(rule.to_dict()) == rule


def test_rule_checks_layer_against_network():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    CAMRule(target_layer="0").check(net)
    with pytest.raises(ValueError, match="target_layer.*'blocks.9'"):
        CAMRule(target_layer="blocks.9").check(net)
    with pytest.raises(ValueError, match="unknown CAM method 'nocam'"):
        CAMRule(method="nocam", target_layer="0").check(net)


def test_class_present_decisions():
    assert class_present(None)
    assert class_present(torch.tensor([0.3, 0.7])) and not class_present(torch.tensor([0.6, 0.4]))
    assert not class_present(torch.tensor([0.3, 0.7]), decision_threshold=0.8)
    assert class_present(0.5) and not class_present(0.49)
    # arg-max decision of a 3-class vector when no threshold is set
    assert not class_present(torch.tensor([0.5, 0.3, 0.2]), 1, None)
    assert class_present(torch.tensor([0.2, 0.45, 0.35]), 1, None)
    with pytest.raises(ValueError, match="finite"):
        class_present(float("nan"))


def test_cam_to_mask_threshold_component_and_absent():
    h = _two_blobs()
    mask = CAMToMask(threshold=0.5)(h)
    assert mask.dtype == torch.uint8 and int(mask.sum()) == 5
    lcc = CAMToMask(threshold=0.5, largest_component=True)(h)
    assert int(lcc.sum()) == 4 and int(lcc[0, 6, 6]) == 0
    assert int(CAMToMask(threshold=0.7)(h).sum()) == 4
    # the classifier says absent: empty mask; present: the same mask
    absent = CAMToMask(threshold=0.5)(h, torch.tensor([0.9, 0.1]))
    assert int(absent.sum()) == 0
    assert torch.equal(CAMToMask(threshold=0.5)(h, torch.tensor([0.1, 0.9])), mask)


def test_cam_to_mask_batch_numpy_and_metatensor():
    h = torch.stack([_two_blobs(), _two_blobs()])  # (2, 1, 8, 8)
    masks = CAMToMask(threshold=0.5)(h, [0.9, 0.2])
    assert masks.shape == (2, 1, 8, 8) and int(masks[0].sum()) == 5 and int(masks[1].sum()) == 0
    with pytest.raises(ValueError, match="2 heatmaps"):
        CAMToMask()(h, [0.9])
    out = CAMToMask(threshold=0.5)(_two_blobs().numpy())
    assert isinstance(out, np.ndarray) and out.sum() == 5
    meta = MetaTensor(_two_blobs(), meta={"filename_or_obj": "case1.nii.gz"})
    m = CAMToMask(threshold=0.5)(meta)
    assert isinstance(m, MetaTensor) and m.meta["filename_or_obj"] == "case1.nii.gz"
    nan = _two_blobs()
    nan[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        CAMToMask()(nan)


def test_cam_to_mask_otsu_3d():
    h = torch.zeros(1, 6, 6, 6)
    h[0, 1:4, 1:4, 1:4] = 0.8
    assert int(CAMToMask(mode="otsu")(h).sum()) == 27


def test_dictionary_version_reads_probability_key():
    t = CAMToMaskd(keys="cam", rule=CAMRule(threshold=0.5), prob_key="pred", names="cam_mask")
    d = t({"cam": _two_blobs(), "pred": torch.tensor([0.2, 0.8])})
    assert int(d["cam_mask"].sum()) == 5 and d["cam"].dtype == torch.float32
    d = t({"cam": _two_blobs(), "pred": torch.tensor([0.8, 0.2])})
    assert int(d["cam_mask"].sum()) == 0
    assert t.rule.threshold == 0.5


def test_a_rule_scaled_to_a_coarser_grid_smooths_the_same_extent():
    """smooth_sigma is in pixels: chosen on 256 x 256 masks, applied to 128 x 128 heatmaps, it halves; the rest of
    the rule does not depend on the grid."""
    from medcnn.localisation import CAMRule

    rule = CAMRule(method="layercam", threshold=0.2, largest_component=True, smooth_sigma=4.0)
    coarse = rule.scaled_to_grid(256, 128)
    assert coarse.smooth_sigma == 2.0 and coarse.threshold == 0.2 and coarse.largest_component
    assert rule.smooth_sigma == 4.0  # the rule itself is unchanged
    with pytest.raises(ValueError, match="sizes must be > 0"):
        rule.scaled_to_grid(0, 128)
