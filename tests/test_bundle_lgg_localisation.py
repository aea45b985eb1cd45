"""lgg_tumour_localisation bundle: metadata, the checks of its tiny training + evaluation on synthetic patients (CAM
Dice per patient, one PDF per patient; run by tests/test_bundles.py), TorchScript export, and the committed weights on
real test patients: the model card's per-patient figures, and a patient as one multi-page TIFF volume giving the
figures of its slice files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from bundle_helpers import TinyRun, bundle_root, export_matches_eager, read_metrics, run_workflow
from test_lgg_data import make_patient

from medcnn.data.lgg import lgg_patient_slices
from medcnn.data.tiff_pages import write_tiff_pages

NAME = "lgg_tumour_localisation"
ROOT = bundle_root(NAME)
WEIGHTS = ROOT / "models" / "model.pt"
TINY = {"spatial_size": [32, 32], "network_def#num_blocks": 3, "batch_size": 8, "report_max_cases": 5}
# the two smallest test patients (20 and 21 slices) keep the real-data tests to seconds
FEW_TEST_PATIENTS = ["TCGA_CS_5393_19990606", "TCGA_HT_7694_19950404"]


def make_synthetic_patients(root: Path, size: int = 32) -> dict:
    """Four synthetic patients of 12 slices of ``size`` x ``size`` (tumour on slices 3-8) in ``root`` and a split
    file (2 train, 1 validation, 1 test); returns the overrides that point the bundle at them."""
    names = [f"TCGA_S{i}_000{i}_20000101" for i in range(4)]
    for i, name in enumerate(names):
        make_patient(root, name, n_slices=12, tumour=range(3, 9), size=size, seed=i)
    split = root / "split.json"
    split.write_text(json.dumps({"train": names[:2], "validation": names[2:3], "test": names[3:]}))
    return {"dataset_dir": str(root), "split_file": str(split)}


def synthetic_volume(folder: Path, n_slices: int = 8, size: int = 64) -> tuple[Path, np.ndarray]:
    """A synthetic patient ``U1`` as one multi-page 3-channel TIFF ``folder/U1.tif``; returns it and its pages
    ``(N, H, W, 3)`` (for a 4D NIfTI of the same slices)."""
    make_patient(folder / "slices", "U1", n_slices=n_slices, tumour=range(3, 6), size=size)
    pages = np.stack([tifffile.imread(s["image"]) for s in lgg_patient_slices(folder / "slices" / "U1")])
    return write_tiff_pages(pages, folder / "U1.tif"), pages


def check_tiny_run(run: TinyRun) -> None:
    """The tiny evaluation of tests/test_bundles.py: CAM Dice per patient and one PDF per patient (slices stacked)."""
    m, out = run.metrics, run.out
    patient = "TCGA_S3_0003_20000101"
    assert set(m["cam_dice_per_patient"]) == {patient}
    assert m["cam_dice_per_patient"][patient] == pytest.approx(m["cam_dice"])
    reports = sorted(p.name for p in (out / "reports").glob("*.pdf"))
    assert reports == [f"{patient}_report.pdf"]  # one report per patient, slices stacked as a volume
    import pypdf  # a declared test dependency (setup.cfg [test]): missing, the test fails rather than skips
    text = " ".join(page.extract_text() for page in pypdf.PdfReader(str(out / "reports" / reports[0])).pages)
    assert "of 12" in " ".join(text.split())


def test_torchscript_export_matches_eager(tmp_path, weights):
    x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    out = export_matches_eager(NAME, weights, x, tmp_path, atol=1e-4)
    assert tuple(out.shape) == (2, 2)


def test_configs_use_the_rule_chosen_on_validation_patients():
    """evaluate.json / inference.json repeat numbers chosen on validation patients (docs/cam_selection.json)."""
    sel = json.loads((ROOT / "docs" / "cam_selection.json").read_text())
    split = json.loads((ROOT / "configs" / "split.json").read_text())
    assert sel["validation_groups"] == split["validation"]
    best = sel["best"]
    train = json.loads((ROOT / "configs" / "train.json").read_text())
    for cfg in ("evaluate.json", "inference.json"):
        c = json.loads((ROOT / "configs" / cfg).read_text())
        layer = c.get("cam_layer", train["cam_layer"])
        assert (c["cam_method"], layer) == (best["method"], best["target_layer"]), cfg
        assert c["cam_threshold"] == pytest.approx(best["threshold"]) and c["cam_threshold_mode"] == best["mode"]
        assert c["cam_largest_component"] == best["largest_component"], cfg
        # sigma is in pixels of the grid the rule is applied on: evaluate.json scores on the native 256 x 256 masks,
        # inference.json (and MONAI Label) threshold on the network's grid
        grid = 1.0 if cfg == "evaluate.json" else train["spatial_size"][0] / 256
        assert c["cam_smooth_sigma"] == pytest.approx(best.get("smooth_sigma", 0.0) * grid), cfg
    evaluate = json.loads((ROOT / "configs" / "evaluate.json").read_text())
    native = sel.get("cam_dice_grid", "").startswith("native")
    assert (evaluate["cam_native_mask_key"] is not None) == native  # the rule was chosen on the grid it is scored on


def _evaluate(tmp_path, lgg, **override) -> dict:
    out = tmp_path / "eval"
    run_workflow(NAME, ["train.json", "evaluate.json"], "eval", dataset_dir=str(lgg), output_dir=str(out),
                 report_max_cases=0, **override)
    return read_metrics(out)


@pytest.mark.realdata
@pytest.mark.slow
def test_committed_weights_reproduce_the_model_card_per_patient(tmp_path, data_dir, weights):
    """The card's per-patient CAM Dice of two test patients, to 0.005 (same weights, same data, CPU)."""
    card = json.loads((ROOT / "docs" / "metrics_test.json").read_text())
    m = _evaluate(tmp_path, data_dir("lgg_flair_tiff"), test_patients=FEW_TEST_PATIENTS)
    assert m["patients"] == FEW_TEST_PATIENTS
    for p in FEW_TEST_PATIENTS:
        assert m["cam_dice_per_patient"][p] == pytest.approx(card["cam_dice_per_patient"][p], abs=0.005), p
    assert m["n_images"] == 41 and m["cam_n_images"] == 8 + 14  # SOURCE.md: 20 + 21 slices, 8 + 14 with tumour
    assert m["auc"] >= 0.9  # the card's test AUC is measured on all 6 test patients; two must not fall apart


@pytest.mark.realdata
@pytest.mark.slow
def test_a_tiff_volume_gives_the_figures_of_its_slice_files(tmp_path, data_dir, weights):
    lgg = data_dir("lgg_flair_tiff")
    patient = FEW_TEST_PATIENTS[0]
    slices = lgg_patient_slices(lgg / patient)
    vol = tmp_path / "volumes"
    write_tiff_pages(np.stack([tifffile.imread(s["image"]) for s in slices]), vol / f"{patient}.tif")
    write_tiff_pages(np.stack([tifffile.imread(s["mask"]) for s in slices]), vol / f"{patient}_mask.tif")
    (vol / "datalist.json").write_text(json.dumps([{"image": f"{patient}.tif", "mask": f"{patient}_mask.tif"}]))
    from_slices = _evaluate(tmp_path / "a", lgg, test_patients=[patient])
    from_volume = _evaluate(tmp_path / "b", lgg, eval_datalist=str(vol / "datalist.json"))
    assert from_volume["patients"] == from_slices["patients"] == [patient]
    assert from_volume["n_images"] == from_slices["n_images"] == 20
    for key in ("auc", "accuracy", "sensitivity", "specificity", "ppv", "npv", "cam_dice", "cam_dice_std"):
        assert from_volume[key] == pytest.approx(from_slices[key], abs=1e-6), key


@pytest.mark.realdata
@pytest.mark.slow
def test_evaluate_figures_equal_the_cv_flip_mean_z3_computation(tmp_path, data_dir, weights):
    """evaluate.json scores slices with the rule the patient CV measured: its figures on two test patients equal those
    of ``flip_mean_z3`` computed by scripts/cv_classifier.py (slice_scores + z_smooth) on the same slices."""
    from monai.bundle import ConfigParser
    from test_slice_scoring import cv_script

    from medcnn.metrics import binary_classification_report

    lgg = data_dir("lgg_flair_tiff")
    m = _evaluate(tmp_path, lgg, test_patients=FEW_TEST_PATIENTS)
    parser = ConfigParser()
    parser.read_config([str(ROOT / "configs" / "train.json"), str(ROOT / "configs" / "evaluate.json")])
    parser.update({"bundle_root": str(ROOT), "dataset_dir": str(lgg), "test_patients": FEW_TEST_PATIENTS})
    assert (parser.get_parsed_content("score_flip"), parser.get_parsed_content("score_neighbour_radius")) == (True, 1)
    net = parser.get_parsed_content("network")
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    cv = cv_script()
    s = cv.slice_scores(net.eval(), parser.get_parsed_content("validate#dataset"))
    ref = binary_classification_report(s["label"].tolist(), cv._z_smooth_scores(s)["flip_mean_z3"].tolist(), 0.0)
    for key in ("auc", "accuracy", "sensitivity", "specificity", "ppv", "npv"):
        assert m[key] == pytest.approx(ref[key], abs=1e-6), key
    plain = binary_classification_report(s["label"].tolist(), s["whole"].tolist(), 0.0)
    assert (ref["auc"], ref["accuracy"]) != (plain["auc"], plain["accuracy"])  # the rule is not the plain network


def test_inference_probabilities_do_not_depend_on_the_dataset_order(tmp_path, weights):
    """inference.json batches one patient at a time in slice order: the same slices listed in another order (two
    patients interleaved) give identical per-slice probabilities."""
    import csv
    import random

    from medcnn.data.lgg import lgg_datalist

    for i, name in enumerate(("TCGA_S0_0000_20000101", "TCGA_S1_0001_20000101")):
        make_patient(tmp_path / "data", name, n_slices=6, tumour=range(2, 4), size=64, seed=i)
    items = lgg_datalist(tmp_path / "data", keys=["image"])
    shuffled = list(items)
    random.Random(3).shuffle(shuffled)
    assert [i["id"] for i in shuffled] != [i["id"] for i in items]
    rows = []
    for k, data in enumerate((items, shuffled)):
        out = tmp_path / f"inf{k}"
        run_workflow(NAME, ["inference.json"], "infer", data=data, output_dir=str(out), dataset_dir=str(tmp_path))
        rows.append({r[0]: [float(v) for v in r[1:]] for r in csv.reader((out / "predictions.csv").open())})
    assert len(rows[0]) == 12 and rows[0] == rows[1]


def test_inference_on_an_unlabelled_tiff_volume(tmp_path, weights):
    """inference.json on a user's multi-page TIFF volume without masks: one probability row and CAM per slice."""
    import csv

    make_patient(tmp_path / "slices", "U1", n_slices=4, tumour=[1, 2], size=64)
    slices = lgg_patient_slices(tmp_path / "slices" / "U1")
    write_tiff_pages(np.stack([tifffile.imread(s["image"]) for s in slices]), tmp_path / "U1.tif")
    (tmp_path / "list.json").write_text(json.dumps([{"image": "U1.tif"}]))
    out = tmp_path / "inf"
    run_workflow(NAME, ["inference.json"], "infer", datalist=str(tmp_path / "list.json"), output_dir=str(out))
    rows = list(csv.reader((out / "predictions.csv").open()))
    assert [r[0] for r in rows] == [f"U1_{k}" for k in range(1, 5)]
    probs = np.asarray([[float(v) for v in r[1:]] for r in rows])
    assert probs.shape == (4, 2) and np.allclose(probs.sum(1), 1.0, atol=1e-4)
    assert len(list((out / "cam").glob("U1_*.png"))) == 4
