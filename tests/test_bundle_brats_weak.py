"""The weak -> dense config set of bundles/brats_tumour_localisation on the real data: the committed segmenter
reproduces the model card's held-out Dice, which beats the raw CAM masks of the same classifier."""

from __future__ import annotations

import json

import pytest
from bundle_helpers import bundle_root, read_metrics, run_workflow

NAME = "brats_tumour_localisation"
ROOT = bundle_root(NAME)
EVALUATE = ["train.json", "weak_train_segmenter.json", "weak_evaluate_segmenter.json"]


@pytest.mark.slow
def test_committed_segmenter_reproduces_model_card(tmp_path, data_dir):
    card = json.loads((ROOT / "docs" / "weak_metrics_test.json").read_text())
    cam = json.loads((ROOT / "docs" / "metrics_test.json").read_text())
    run_workflow(NAME, EVALUATE, "eval", dataset_dir=str(data_dir("brats2015_deepmedic_subset")),
                 output_dir=str(tmp_path), num_threads=1)
    m = read_metrics(tmp_path)
    assert m["test_cases"] == card["test_cases"] == cam["test_cases"]
    assert m["n_images"] == card["n_images"] == cam["n_images"]
    assert m["dice"] == pytest.approx(card["dice"], abs=0.01)
    assert m["dice"] >= 0.78 and m["dice"] > cam["cam_dice"]  # the target, and above the CAM masks
