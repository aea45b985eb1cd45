"""brats_tumour_segmentation bundle: the checks of its tiny train + evaluate on synthetic cases (run by
tests/test_bundles.py), the network variants by override, TorchScript export, inference and the model card's
figures on the real data."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_helpers import TinyRun, bundle_root, export_matches_eager, make_workflow, read_metrics, run_workflow
from test_brats_data import make_brats_case, make_brats_cases

NAME = "brats_tumour_segmentation"
ROOT = bundle_root(NAME)
WEIGHTS = ROOT / "models" / "model.pt"
TINY = {"crop_size": [32, 32], "spatial_size": [32, 32], "batch_size": 4}
#: three synthetic cases s1-s3 (32 x 32 x 16, tumour on slices 3-12)
SYNTHETIC = {"shape": (32, 32, 16), "tumour_slices": range(3, 13)}


@pytest.fixture(scope="module")
def synthetic_cases(tmp_path_factory):
    return make_brats_cases(tmp_path_factory.mktemp("brats_synth"), **SYNTHETIC)


def check_tiny_run(run: TinyRun) -> None:
    """The tiny volume evaluation of tests/test_bundles.py: scored on the native voxel grid, the case report, and the
    same case through --eval_datalist."""
    m, out = run.metrics, run.out
    assert len(run.curves["val_dice"]) == 3
    assert np.sum(m["confusion_matrix"]) == 32 * 32 * 16  # scored on the native voxel grid, whole volume
    assert m["dice"] == pytest.approx(m["tumour_f1"], abs=1e-6)
    assert (out / "confusion_matrix.png").is_file()
    check_case_report(out / "reports" / "s3_report.pdf", "s3", m)
    # the same case through --eval_datalist (no "case" key): the report is named by the case folder
    cases = run.common["dataset_dir"]
    datalist = run.tmp_path / "eval.json"
    datalist.write_text(json.dumps([{k: f"{cases}/s3/{f}" for k, f in (
        ("flair", "Flair_subtrMeanDivStd.nii.gz"), ("t1c", "T1c_subtrMeanDivStd.nii.gz"),
        ("label", "OTMultiClass.nii.gz"))}]))
    run_workflow(NAME, ["train.json", "evaluate.json"], "eval",
                 **{**run.common, "output_dir": str(run.tmp_path / "dl")}, eval_datalist=str(datalist))
    assert [p.name for p in (run.tmp_path / "dl" / "reports").glob("*.pdf")] == ["s3_report.pdf"]


def check_case_report(pdf, case: str, metrics: dict) -> None:
    """The evaluation's PDF: case id, this case's Dice and the set's Dice as text; overlays on the native grid."""
    import pypdf
    import pypdfium2 as pdfium
    assert pdf.is_file(), sorted(p.name for p in pdf.parent.glob("*"))
    reader = pypdf.PdfReader(str(pdf))
    text = " ".join(" ".join(page.extract_text() for page in reader.pages).split())
    assert f"medcnn case report: {case}" in text
    assert f"{metrics['dice']:.4f}" in text  # one case evaluated: its Dice is the set's Dice
    assert "Training curves" in text and len(reader.pages) == 3
    doc = pdfium.PdfDocument(str(pdf))
    try:
        page = np.asarray(doc[0].render(scale=1.0).to_pil().convert("L"), dtype=float)
        overlay = np.asarray(doc[1].render(scale=1.0).to_pil().convert("RGB"), dtype=float)
    finally:
        doc.close()
    assert page.shape[0] > page.shape[1] and page.std() > 10  # an A4 page with text and figures, not blank
    green = (overlay[..., 1] > 150) & (overlay[..., 0] < 100) & (overlay[..., 2] < 100)
    assert green.sum() > 20  # predicted-mask outlines drawn on the slices


@pytest.mark.parametrize("name", ["segresnet", "flexible_unet"])
def test_network_variants_by_override(name):
    wf = make_workflow(NAME, ["train.json"], "train", network_name=name)
    net = wf.parser.get_parsed_content("network_def")
    with torch.no_grad():
        assert net.eval()(torch.zeros(1, 2, 96, 96)).shape == (1, 2, 96, 96)
    if name == "flexible_unet":
        assert type(net).__name__ == "FlexibleUNet" and not wf.parser["network_kwargs"].get("pretrained")


def test_torchscript_export_matches_eager(tmp_path, weights):
    x = torch.randn(2, 2, 96, 96, generator=torch.Generator().manual_seed(0))
    export_matches_eager(NAME, weights, x, tmp_path, atol=1e-4)


def test_inference_writes_a_mask_on_the_input_grid(tmp_path, synthetic_cases, weights):
    out = tmp_path / "inf"
    run_workflow(NAME, ["inference.json"], "infer", dataset_dir=str(synthetic_cases), test_cases=["s3"],
                 output_dir=str(out))
    files = list(out.glob("s3/s3_wholetumour.nii.gz"))
    assert len(files) == 1
    pred = nib.load(str(files[0]))
    src = nib.load(str(synthetic_cases / "s3" / "Flair_subtrMeanDivStd.nii.gz"))
    assert pred.shape == src.shape and np.allclose(pred.affine, src.affine)
    assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= {0, 1}


def test_eval_datalist_with_mismatched_modalities_names_the_file(tmp_path, synthetic_cases, weights):
    bad = make_brats_case(tmp_path, "bad", shape=(32, 32, 16))
    nib.save(nib.Nifti1Image(np.zeros((32, 30, 16), np.float32), np.eye(4)), str(bad / "T1c_subtrMeanDivStd.nii.gz"))
    datalist = tmp_path / "eval.json"
    entry = {"flair": "bad/Flair_subtrMeanDivStd.nii.gz", "t1c": "bad/T1c_subtrMeanDivStd.nii.gz",
             "label": "bad/OTMultiClass.nii.gz"}
    datalist.write_text(json.dumps([entry]))
    with pytest.raises(Exception) as err:
        run_workflow(NAME, ["train.json", "evaluate.json"], "eval", eval_datalist=str(datalist),
                     output_dir=str(tmp_path / "out"))
    chain, exc = [], err.value
    while exc is not None:
        chain.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    assert any("T1c_subtrMeanDivStd.nii.gz: t1c has spatial shape (32, 30, 16)" in c for c in chain), chain


@pytest.mark.realdata
@pytest.mark.slow
def test_committed_weights_reproduce_the_model_card(tmp_path, data_dir, weights):
    card = json.loads((ROOT / "docs" / "metrics_test.json").read_text())
    out = tmp_path / "eval"
    run_workflow(NAME, ["train.json", "evaluate.json"], "eval",
                 dataset_dir=str(data_dir("brats2015_deepmedic_subset")), output_dir=str(out))
    m = read_metrics(out)
    assert m["eval_cases"] == card["eval_cases"] == ["brats_2013_pat0004_1"]
    for key in ("dice", "pixel_accuracy", "tumour_precision", "tumour_recall"):
        assert m[key] == pytest.approx(card[key], abs=0.005), key
    np.testing.assert_allclose(m["confusion_matrix"], card["confusion_matrix"], rtol=0.01)
