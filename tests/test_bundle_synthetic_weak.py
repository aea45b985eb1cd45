"""Workflow check of the weak -> dense config set of bundles/synthetic_localisation through monai.bundle: the
committed classifier's pseudo-masks of a tiny training set, a segmenter trained on them (Dice above a floor on
the tiny test set), and the "no pixel labels used" property through the bundle."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from bundle_helpers import bundle_root, make_workflow, read_metrics, run_workflow

from medcnn.weak import file_sha256

NAME = "synthetic_localisation"
ROOT = bundle_root(NAME)

TINY = {
    "num_train": 24,
    "num_val": 8,
    "num_test": 12,
    "synthetic#spatial_size": [32, 32],
    "synthetic#radius_range": [4.0, 8.0],
    "synthetic#contrast": 3.0,
}
PSEUDO = ["train.json", "weak_pseudo_masks.json"]
SEGMENTER = ["train.json", "weak_train_segmenter.json"]
EVALUATE = ["train.json", "weak_train_segmenter.json", "weak_evaluate_segmenter.json"]
# a small UNet, small batches: ~80 optimiser steps
SEG_TINY = {"segmenter#channels": [8, 16, 32], "segmenter#strides": [2, 2], "train#dataloader#batch_size": 4}


@pytest.fixture(scope="module")
def weak_run(tmp_path_factory):
    """Committed classifier -> pseudo-masks of a tiny training set -> segmenter, all through the bundle configs."""
    out = tmp_path_factory.mktemp("synthetic_weak")
    run_workflow(NAME, PSEUDO, None, output_dir=str(out), **TINY)
    wf = make_workflow(NAME, SEGMENTER, "train", output_dir=str(out), max_epochs=14, **TINY, **SEG_TINY)
    wf.initialize()
    assert not wf.check_properties()
    losses: list[float] = []
    from ignite.engine import Events

    trainer = wf.parser.get_parsed_content("train#trainer")
    def loss_of(output):  # the trainer output is a batch-level dict, or a list of per-item dicts if decollated
        return (output[0] if isinstance(output, list) else output)["loss"]

    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: losses.append(float(loss_of(e.state.output))))
    wf.run()
    wf.finalize()
    return out, losses


def test_pseudo_masks_have_provenance_and_refinement(weak_run):
    out, _ = weak_run
    prov = json.loads((out / "pseudo_masks_2d" / "pseudo_masks.json").read_text())
    assert prov["classifier"]["weights"] == str((ROOT / "models" / "model.pt").resolve())
    assert prov["classifier"]["sha256"] == file_sha256(ROOT / "models" / "model.pt")
    assert [s["name"] for s in prov["refinement"]] == ["dense_crf", "ignore_band"]
    assert prov["n_images"] == 24 and prov["n_positive"] == 12 and prov["n_positive_nonempty"] >= 10
    with pytest.raises(RuntimeError) as err:  # monai.bundle wraps the error of a "run" expression
        run_workflow(NAME, PSEUDO, None, output_dir=str(out), **TINY)
    assert isinstance(err.value.__cause__, FileExistsError) and "--overwrite true" in str(err.value.__cause__)


def test_segmenter_learns_from_pseudo_masks(weak_run, tmp_path):
    out, losses = weak_run
    assert losses[-1] < losses[0], losses
    weights = out / "segmenter_2d" / "model_segmenter.pt"
    assert weights.is_file()
    run_workflow(NAME, EVALUATE, "eval", output_dir=str(tmp_path), segmenter_path=str(weights), **TINY, **SEG_TINY)
    m = read_metrics(tmp_path)
    assert m["n_images"] == 12 and m["weights"] == "model_segmenter.pt"
    assert m["dice"] > 0.6, m  # the tiny test set's floor (an untrained UNet scores < 0.3)


def test_no_pixel_label_is_read_through_the_bundle(weak_run, tmp_path):
    """Training masks scrambled in the bundle's datalist -> byte-identical pseudo-masks."""
    out, _ = weak_run
    from medcnn.data.synthetic import synthetic_datalist

    rng = np.random.default_rng(1)
    scrambled = [{**d, "mask": rng.permutation(d["mask"].reshape(-1)).reshape(d["mask"].shape)}
                 for d in synthetic_datalist(24, 0, spatial_size=(32, 32), radius_range=(4.0, 8.0), contrast=3.0)]
    run_workflow(NAME, PSEUDO, None, output_dir=str(tmp_path), pseudo_mask_items=scrambled, **TINY)
    ref = json.loads((out / "pseudo_masks_2d" / "pseudo_masks.json").read_text())["training"]
    for e in ref:
        a = nib.load(out / "pseudo_masks_2d" / e["label"]).get_fdata()
        b = nib.load(tmp_path / "pseudo_masks_2d" / e["label"]).get_fdata()
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("dims, override, target", [(2, [], 0.93), (3, ["3d.json"], 0.90)])
def test_committed_segmenter_reproduces_model_card(tmp_path, dims, override, target):
    """The committed segmenter on the default test seed gives the model card's Dice (and the issue's target)."""
    card_file = ROOT / "docs" / f"weak_results_{dims}d.json"
    if not card_file.is_file():
        pytest.fail(f"{card_file} is missing: the {dims}D segmenter has no model card figure")
    card = json.loads(card_file.read_text())
    files = ["train.json", *override, "weak_train_segmenter.json", "weak_evaluate_segmenter.json"]
    run_workflow(NAME, files, "eval", output_dir=str(tmp_path), num_threads=1)
    m = read_metrics(tmp_path)
    assert m["dice"] == pytest.approx(card["dice"], abs=0.01) and m["n_images"] == card["n_images"]
    assert m["dice"] >= target
