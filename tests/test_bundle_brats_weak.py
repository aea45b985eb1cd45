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


def test_weak_configs_read_slices_through_the_volume_pipeline(tmp_path):
    """Pseudo-mask items: every whole slice of the training blocks with its slice label (mask not empty) and no mask;
    the segmenter validates on every whole validation-block slice with its true mask, on the classifier's grid."""
    from bundle_helpers import make_workflow
    from test_brats_data import make_brats_cases

    from medcnn.transforms import slice_block_indices

    make_brats_cases(tmp_path, (32, 32, 16), range(3, 9), names=("s1", "s2"))
    common = {"dataset_dir": str(tmp_path), "output_dir": str(tmp_path / "out"), "train_cases": ["s1", "s2"],
              "crop_size": [32, 32], "spatial_size": [16, 16], "min_tumour_pixels": 5,
              "validation_blocks#block": 4}
    wf = make_workflow(NAME, ["train.json", "weak_pseudo_masks.json"], "train", **common)
    items = list(wf.parser.get_parsed_content("pseudo_mask_items"))
    # brain on slices 1-15 (slice 0 has none), slice 10 ambiguous (1 tumour pixel), training blocks of 4
    kept = [z for z in slice_block_indices(16, 4, 4, 2, validation=False) if z not in (0, 10)]
    assert [i["slice_index"] for i in items] == kept + kept
    assert [i["id"] for i in items[:2]] == [f"s1_slice{kept[0]:03d}", f"s1_slice{kept[1]:03d}"]
    assert [int(i["label"]) for i in items[: len(kept)]] == [int(3 <= z <= 8) for z in kept]
    assert all(i["label"].ndim == 0 and "mask" not in i for i in items)  # the mask never reaches the pseudo-masks
    wf = make_workflow(NAME, ["train.json", "weak_train_segmenter.json"], "train", **common)
    val = list(wf.parser.get_parsed_content("validate#dataset"))
    val_kept = [z for z in slice_block_indices(16, 4, 4, 2, validation=True) if z not in (0, 10)]
    assert len(val) == 2 * len(val_kept) and tuple(val[0]["image"].shape) == (2, 16, 16)
    assert [bool(v["label"].sum() > 0) for v in val[: len(val_kept)]] == [3 <= z <= 8 for z in val_kept]


def test_a_second_round_runs_on_the_volume_pipeline(tmp_path):
    """weak_pseudo_masks_from_segmenter.json on this bundle's stack: the round-1 segmenter (here one that calls every
    pixel tumour) makes the pseudo-masks of the same slice items; tumour slices get its mask, tumour-free slices stay
    empty, and the provenance names the segmenter file."""
    import nibabel as nib
    import torch
    from bundle_helpers import make_workflow
    from test_brats_data import make_brats_cases

    from medcnn.weak import file_sha256

    make_brats_cases(tmp_path, (32, 32, 16), range(3, 9), names=("s1", "s2"))
    common = {"dataset_dir": str(tmp_path), "train_cases": ["s1", "s2"], "crop_size": [32, 32],
              "spatial_size": [16, 16], "min_tumour_pixels": 5, "validation_blocks#block": 4, "num_threads": 1}
    seg_files = ["train.json", "weak_train_segmenter.json"]
    net = make_workflow(NAME, seg_files, "train", output_dir=str(tmp_path / "r1"), **common).parser.get_parsed_content(
        "network_def", lazy=False)
    last = [m for m in net.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)][-1]
    with torch.no_grad():
        last.bias.copy_(torch.tensor([-20.0, 20.0]))  # tumour everywhere, whatever the image
    weights = tmp_path / "r1" / "segmenter" / "model_segmenter.pt"
    weights.parent.mkdir(parents=True)
    torch.save(net.state_dict(), weights)
    files = ["train.json", "weak_pseudo_masks.json", *seg_files[1:], "weak_pseudo_masks_from_segmenter.json"]
    out = tmp_path / "r2"
    run_workflow(NAME, files, None, output_dir=str(out), previous_round=str(tmp_path / "r1"), **common)
    prov = json.loads((out / "pseudo_masks" / "pseudo_masks.json").read_text())
    assert prov["heatmap"] == "segmenter" and prov["classifier"]["sha256"] == file_sha256(weights)
    assert prov["n_positive"] > 0 and prov["n_positive_nonempty"] == prov["n_positive"]
    for e in prov["training"]:
        mask = nib.load(out / "pseudo_masks" / e["label"]).get_fdata()
        assert mask.shape == (16, 16) and bool(mask.any()) == (e["class"] == 1)
