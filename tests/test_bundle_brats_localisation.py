"""brats_tumour_localisation bundle: the Grad-CAM Dice and case report of its tiny hemisphere training + slice
evaluation on synthetic cases (run by tests/test_bundles.py), TorchScript export, inference and the model card's
figures on the real data."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from bundle_helpers import TinyRun, bundle_root, export_matches_eager, read_metrics, run_workflow
from test_brats_data import make_brats_case, make_brats_cases

NAME = "brats_tumour_localisation"
ROOT = bundle_root(NAME)
WEIGHTS = ROOT / "models" / "model.pt"
TINY = {"crop_size": [32, 32], "spatial_size": [32, 32], "hemisphere_crop_size": [-1, 32],
        "hemisphere_size": [16, 32], "batch_size": 8, "min_tumour_pixels": 5}
#: three synthetic cases s1-s3 (32 x 32 x 40, tumour on slices 8-31)
SYNTHETIC = {"shape": (32, 32, 40), "tumour_slices": range(8, 32)}


@pytest.fixture(scope="module")
def synthetic_cases(tmp_path_factory):
    return make_brats_cases(tmp_path_factory.mktemp("brats_loc_synth"), **SYNTHETIC)


def check_tiny_run(run: TinyRun) -> None:
    """The tiny slice evaluation of tests/test_bundles.py: CAM Dice of the tumour slices, one PDF per case."""
    assert 0.0 <= run.metrics["cam_dice"] <= 1.0
    check_case_report(run.out / "reports" / "s3_report.pdf", "s3", run.metrics, n_slices=40)


def check_case_report(pdf, case: str, metrics: dict, n_slices: int) -> None:
    """One PDF per case (slices stacked back into the volume), CAM and mask drawn on the native slices."""
    import pypdf
    import pypdfium2 as pdfium
    assert sorted(p.name for p in pdf.parent.glob("*.pdf")) == [pdf.name]  # one report for the case, not per slice
    reader = pypdf.PdfReader(str(pdf))
    text = " ".join(" ".join(page.extract_text() for page in reader.pages).split())
    assert f"medcnn case report: {case}" in text and f"{metrics['cam_dice']:.4f}" in text
    assert f"of {n_slices}" in text  # slice numbers of the native volume
    doc = pdfium.PdfDocument(str(pdf))
    try:
        page = np.asarray(doc[0].render(scale=1.0).to_pil().convert("L"), dtype=float)
    finally:
        doc.close()
    assert page.std() > 10


def test_report_numbers_slices_of_the_whole_volume(tmp_path, weights):
    """A case whose last slices hold no brain (not evaluated) is still reported as "slice z of <its depth>", not of
    the last kept slice number + 1 (BraTS: "of 155", once "of 136")."""
    import nibabel as nib
    from test_brats_data import AFFINE

    from medcnn.data import BRATS_FILE_NAMES

    data = make_brats_cases(tmp_path / "data", shape=(32, 32, 24), tumour_slices=range(4, 12))
    for key in ("flair", "t1c", "brainmask"):
        path = data / "s3" / BRATS_FILE_NAMES[key]
        volume = nib.load(str(path)).get_fdata()
        volume[..., 18:] = 0.0 if key == "brainmask" else volume[0, 0, 0]  # background: no brain
        nib.save(nib.Nifti1Image(volume.astype(np.float32), AFFINE), str(path))
    out = tmp_path / "eval"
    run_workflow(NAME, ["train.json", "evaluate.json"], "eval", dataset_dir=str(data), train_cases=["s1", "s2"],
                 test_cases=["s3"], output_dir=str(out), **{**TINY, "validation_blocks#block": 5})
    m = read_metrics(out)
    assert m["n_images"] == 17  # the brain slices 1-17 are evaluated, 18-23 are not
    check_case_report(out / "reports" / "s3_report.pdf", "s3", m, n_slices=24)


def test_torchscript_export_matches_eager(tmp_path, weights):
    x = torch.randn(3, 2, 96, 96, generator=torch.Generator().manual_seed(0))
    export_matches_eager(NAME, weights, x, tmp_path, atol=1e-4)


def test_inference_on_an_unlabelled_case(tmp_path, synthetic_cases, weights):
    case = tmp_path / "data"
    folder = make_brats_case(case, "u1", shape=(32, 32, 12))
    (folder / "OTMultiClass.nii.gz").unlink()
    out = tmp_path / "inf"
    run_workflow(NAME, ["inference.json"], "infer", dataset_dir=str(case), test_cases=["u1"], output_dir=str(out))
    rows = list(csv.reader((out / "predictions.csv").open()))
    assert len(rows) == 11 and rows[0][0] == "u1_slice001"
    probs = np.asarray([[float(v) for v in r[1:]] for r in rows])
    assert probs.shape == (11, 2) and np.allclose(probs.sum(1), 1.0, atol=1e-4)
    assert len(list((out / "cam").glob("u1_slice*.png"))) == 11


@pytest.mark.realdata
@pytest.mark.slow
def test_committed_weights_reproduce_the_model_card(tmp_path, data_dir, weights):
    card = json.loads((ROOT / "docs" / "metrics_test.json").read_text())
    out = tmp_path / "eval"
    run_workflow(NAME, ["train.json", "evaluate.json"], "eval",
                 dataset_dir=str(data_dir("brats2015_deepmedic_subset")), output_dir=str(out))
    m = read_metrics(out)
    assert m["test_cases"] == card["test_cases"] == ["brats_2013_pat0004_1"]
    assert m["n_images"] == card["n_images"] and m["cam_n_images"] == card["cam_n_images"]
    assert m["cam_method"] == card["cam_method"] and m["cam_threshold"] == pytest.approx(card["cam_threshold"])
    for key in ("auc", "accuracy", "sensitivity", "specificity", "cam_dice"):
        assert m[key] == pytest.approx(card[key], abs=0.01), key
    # slices numbered in the 155-slice volume (the last kept brain slice is 135: the report once said "of 136")
    check_case_report(out / "reports" / "brats_2013_pat0004_1_report.pdf", "brats_2013_pat0004_1", m, n_slices=155)


def test_youden_threshold_separates_validation_scores():
    from medcnn.handlers.classification import youden_threshold

    # slice probabilities of a hemisphere-trained classifier on whole slices are shrunk towards 0: 0.5 would
    # call every tumour slice negative, the validation-chosen threshold separates them
    t = youden_threshold([0, 0, 0, 1, 1, 1], [0.01, 0.02, 0.04, 0.08, 0.2, 0.45])
    assert 0.04 < t < 0.08
    with pytest.raises(ValueError, match="both classes"):
        youden_threshold([1, 1], [0.2, 0.3])


def test_hemisphere_max_classifier_keeps_the_more_tumour_like_half():
    from medcnn.networks import ResNetClassifier
    from medcnn.networks.hemisphere import HemisphereMaxClassifier

    torch.manual_seed(0)
    net = ResNetClassifier(2, 2, 2, num_blocks=3, channels=8).eval()
    wrapper = HemisphereMaxClassifier(net, axis=2)
    x = torch.randn(3, 2, 32, 32)
    with torch.no_grad():
        out = wrapper(x)
        first, second = net(x[:, :, :16]), net(x[:, :, 16:])
    p1, p2 = torch.softmax(first, 1)[:, 1], torch.softmax(second, 1)[:, 1]
    expected = torch.where((p1 >= p2)[:, None], first, second)
    torch.testing.assert_close(out, expected)
    assert set(wrapper.state_dict()) == {"classifier." + k for k in net.state_dict()}
    with pytest.raises(ValueError, match="spatial axis"):
        HemisphereMaxClassifier(net, axis=1)


def test_inference_uses_the_validated_cam_rule_and_decision_threshold():
    """inference.json repeats numbers chosen elsewhere (CAM rule on validation slices, threshold by case-level CV)."""
    infer = json.loads((ROOT / "configs" / "inference.json").read_text())
    train = json.loads((ROOT / "configs" / "train.json").read_text())
    best = json.loads((ROOT / "docs" / "cam_selection.json").read_text())["best"]
    card = json.loads((ROOT / "docs" / "metrics_test.json").read_text())
    assert (infer["cam_method"], infer["cam_layer"]) == (best["method"], best["target_layer"])
    assert infer["cam_threshold"] == pytest.approx(best["threshold"]) == pytest.approx(card["cam_threshold"])
    assert infer["cam_threshold_mode"] == best["mode"] and infer["cam_largest_component"] == best["largest_component"]
    for key in ("decision_threshold", "slice_score", "intensity_normalisation", "slice_context"):
        assert infer[key] == train[key] == card[key], key
