"""``medcnn predict`` end to end: real DICOM in -> NIfTI mask, DICOM SEG, report, summary on the input's grid."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from test_dicom_seg import dciodvfy

import medcnn
from medcnn.cli import main
from medcnn.data.dicom import load_dicom_series, read_dicom_seg, save_like
from medcnn.data.synthetic import synthetic_datalist

pytestmark = pytest.mark.realdata

REPO = Path(__file__).resolve().parents[1]
HIPPOCAMPUS = REPO / "bundles" / "hippocampus_segmentation"
SYNTHETIC = REPO / "bundles" / "synthetic_localisation"


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` -> SHA-256: the inputs must come out of predict unchanged."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def hippocrop(data_dir) -> Path:
    return data_dir("tcia_brain_tumor_progression_dicom") / "hippocrop"


def test_predict_dicom_series_writes_seg_nifti_report_and_summary(hippocrop, tmp_path, capsys):
    inputs = [hippocrop / "PGBM-002", hippocrop / "PGBM-003"]
    before = snapshot(hippocrop)
    out = tmp_path / "out"
    assert main(["predict", "--bundle", str(HIPPOCAMPUS), "--input", *map(str, inputs), "--output", str(out),
                 "--quiet"]) == 0
    assert snapshot(hippocrop) == before  # nothing under the input folders changed
    printed = capsys.readouterr().out.split()
    assert printed == [str(out / c / f"{c}_summary.json") for c in ("PGBM-002", "PGBM-003")]
    for series in inputs:
        case = out / series.name
        image = load_dicom_series(series)
        nifti = nib.load(case / f"{series.name}_seg.nii.gz")
        mask = np.asarray(nifti.dataobj)
        assert mask.shape == tuple(image.shape[1:])
        # on the input's grid: the NIfTI affine is the DICOM series' (RAS) affine
        np.testing.assert_allclose(nifti.affine, image.affine.numpy(), atol=1e-4)
        assert set(np.unique(mask)) == {0, 1, 2}
        # the DICOM SEG is valid and holds the same voxels on the source series
        seg_path = case / f"{series.name}_seg.dcm"
        assert dciodvfy(seg_path) == []
        np.testing.assert_array_equal(read_dicom_seg(seg_path, series)[0].numpy(), mask)
        seg = pydicom.dcmread(seg_path)
        assert [s.SegmentLabel for s in seg.SegmentSequence] == ["anterior hippocampus", "posterior hippocampus"]
        version = json.loads((HIPPOCAMPUS / "configs" / "metadata.json").read_text())["version"]
        assert seg.SeriesDescription == f"hippocampus_segmentation {version}"
        summary = json.loads((case / f"{series.name}_summary.json").read_text())
        assert summary["model"]["bundle"] == "hippocampus_segmentation" and summary["model"]["version"] == version
        assert summary["model"]["medcnn_version"] == medcnn.__version__
        for k, name in ((1, "anterior hippocampus"), (2, "posterior hippocampus")):
            assert summary["labels"][name]["voxels"] == int((mask == k).sum())
            assert summary["labels"][name]["volume_ml"] == pytest.approx((mask == k).sum() / 1000.0)  # 1 mm voxels
        assert (case / f"{series.name}_report.pdf").read_bytes()[:5] == b"%PDF-"


def test_predict_nifti_gives_the_same_mask_as_the_dicom_series(hippocrop, tmp_path):
    series = hippocrop / "PGBM-006"
    image = load_dicom_series(series)
    save_like(image, image, tmp_path / "PGBM-006.nii.gz", dtype=np.int16)  # the same volume as NIfTI
    assert main(["predict", "--bundle", str(HIPPOCAMPUS), "--input", str(series), "--output", str(tmp_path / "a"),
                 "--quiet", "--no-report"]) == 0
    assert main(["predict", "--bundle", str(HIPPOCAMPUS), "--input", str(tmp_path / "PGBM-006.nii.gz"),
                 "--output", str(tmp_path / "b"), "--quiet", "--no-report"]) == 0
    a = nib.load(tmp_path / "a" / "PGBM-006" / "PGBM-006_seg.nii.gz")
    b = nib.load(tmp_path / "b" / "PGBM-006" / "PGBM-006_seg.nii.gz")
    np.testing.assert_allclose(b.affine, a.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(b.dataobj), np.asarray(a.dataobj))
    assert not (tmp_path / "b" / "PGBM-006" / "PGBM-006_seg.dcm").exists()  # a SEG only for DICOM input


def test_predict_classifier_writes_the_cam_region_of_positive_images_only(tmp_path):
    """Weakly supervised bundle: the mask is the CAM region (bundle's validated rule), empty when negative."""
    items = synthetic_datalist(4, 2, spatial_size=[64, 64], radius_range=[5.0, 14.0], contrast=1.5, noise=1.0,
                               object_noise=0.5, positive_fraction=0.5)
    paths = []
    for i, item in enumerate(items):
        paths.append(tmp_path / f"img{i}.nii.gz")
        nib.save(nib.Nifti1Image(np.asarray(item["image"])[0].astype(np.float32), np.eye(4)), paths[-1])
    assert main(["predict", "--bundle", str(SYNTHETIC), "--input", *map(str, paths), "--output",
                 str(tmp_path / "out"), "--quiet", "--no-report"]) == 0
    dices = []
    for i, item in enumerate(items):
        summary = json.loads((tmp_path / "out" / f"img{i}" / f"img{i}_summary.json").read_text())
        mask = np.asarray(nib.load(tmp_path / "out" / f"img{i}" / f"img{i}_seg.nii.gz").dataobj)
        truth = np.asarray(item["mask"])[0] > 0
        assert summary["cam"]["method"] == "scorecam" and summary["cam"]["source"] == "docs/results_2d.json"
        assert summary["predicted_class"] == ("object present" if int(item["label"]) else "no object")
        if int(item["label"]):
            dices.append(2 * (mask.astype(bool) & truth).sum() / (mask.astype(bool).sum() + truth.sum()))
        else:
            assert mask.sum() == 0 and summary["labels"]["object present"]["voxels"] == 0
    assert dices and min(dices) > 0.6  # model card: CAM Dice 0.90 on average


# ------------------------------------------------------------------------------------------------ bad inputs
def _mixed_series(src: Path, dst: Path) -> Path:
    shutil.copytree(src / "PGBM-002", dst)
    for f in sorted((src / "PGBM-003").iterdir())[:3]:
        shutil.copy(f, dst / f"other_{f.name}")
    return dst


def _missing_slice(src: Path, dst: Path) -> Path:
    shutil.copytree(src / "PGBM-002", dst)
    files = sorted(dst.iterdir(), key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    files[len(files) // 2].unlink()
    return dst


def _with_object(modality: str):
    def make(src: Path, dst: Path) -> Path:
        shutil.copytree(src / "PGBM-002", dst)
        ds = pydicom.dcmread(next(dst.iterdir()), stop_before_pixels=True)
        ds.Modality = modality
        ds.SOPClassUID = pydicom.uid.BasicTextSRStorage if modality == "SR" else pydicom.uid.SegmentationStorage
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        if modality == "SEG":
            ds.NumberOfFrames, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 1, 1, 0
            ds.add_new(0x7FE00010, "OB", np.packbits(np.zeros(ds.Rows * ds.Columns + 16, np.uint8)).tobytes())
        ds.save_as(dst / f"zz_{modality.lower()}.dcm")
        return dst
    return make


def _wrong_modality(src: Path, dst: Path) -> Path:
    shutil.copytree(src / "PGBM-002", dst)
    for f in dst.iterdir():
        ds = pydicom.dcmread(f)
        ds.Modality = "CT"
        ds.save_as(f)
    return dst


def _nifti(shape, nan: bool = False):
    def make(src: Path, dst: Path) -> Path:
        dst.mkdir()
        path = dst / "image.nii.gz"
        data = np.random.default_rng(0).normal(size=shape).astype(np.float32)
        if nan:
            data[3, 4, 5] = np.nan
        nib.save(nib.Nifti1Image(data, np.eye(4)), path)
        return path
    return make


def _single_file(src: Path, dst: Path) -> Path:
    shutil.copytree(src / "PGBM-002", dst)
    return next(dst.iterdir())


BAD_INPUTS = {
    "one DICOM file instead of the series folder": (_single_file, "a single DICOM file; pass the folder"),
    "several series": (_mixed_series, "holds 2 series"),
    "missing slice": (_missing_slice, "missing slice"),
    "SEG object in the series": (_with_object("SEG"), "zz_seg.dcm: a SEG object"),
    "SR object in the series": (_with_object("SR"), "zz_sr.dcm: a SR object"),
    "wrong modality": (_wrong_modality, "modality CT, but bundle hippocampus_segmentation takes MR"),
    "2D image for a 3D bundle": (_nifti((40, 48)), "bundle hippocampus_segmentation takes 3D volumes"),
    "two channels for a one-channel bundle": (_nifti((32, 40, 32, 2)), "2 channel(s)"),
    "NaN voxel (the bundle's own check)": (_nifti((32, 40, 32), nan=True), "1 NaN or infinite value(s)"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_by_name_and_nothing_is_written(case, hippocrop, tmp_path, capsys):
    make, message = BAD_INPUTS[case]
    bad = make(hippocrop, tmp_path / "input")
    before = snapshot(tmp_path / "input")
    out = tmp_path / "out"
    code = main(["predict", "--bundle", str(HIPPOCAMPUS), "--input", str(bad), "--output", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert message in err and str(bad) in err  # the problem and the file or folder, in one line
    assert "Traceback" not in err
    assert not out.exists()  # nothing written
    assert snapshot(tmp_path / "input") == before  # input untouched


def test_output_equal_to_input_folder_or_a_study_folder_is_refused(hippocrop, data_dir, tmp_path, capsys):
    series = tmp_path / "PGBM-002"
    shutil.copytree(hippocrop / "PGBM-002", series)
    before = snapshot(series)
    for out in (series, series / "results"):
        assert main(["predict", "--bundle", str(HIPPOCAMPUS), "--input", str(series), "--output", str(out)]) == 1
        assert "input folder" in capsys.readouterr().err
    assert snapshot(series) == before and not (series / "results").exists()
    study = data_dir("tcia_brain_tumor_progression_dicom") / "PGBM-001" / "1992-04-02"
    assert main(["predict", "--bundle", str(HIPPOCAMPUS), "--input", str(study), "--output",
                 str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert str(study) in err and "pass one series folder" in err and not (tmp_path / "o").exists()


def test_existing_results_are_not_overwritten(hippocrop, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "PGBM-002").mkdir(parents=True)
    (out / "PGBM-002" / "mine.txt").write_text("keep")
    assert main(["predict", "--bundle", str(HIPPOCAMPUS), "--input", str(hippocrop / "PGBM-002"), "--output",
                 str(out), "--quiet"]) == 1
    assert "nothing is overwritten" in capsys.readouterr().err
    assert [p.name for p in (out / "PGBM-002").iterdir()] == ["mine.txt"]


def test_onnxruntime_backend_matches_eager_on_a_real_volume(hippocrop):
    """ONNX Runtime logits equal eager PyTorch within 1e-4 (float32), and the label maps are identical."""
    from medcnn.predict import BundlePredictor, load_input

    torch_pred = BundlePredictor.from_bundle(HIPPOCAMPUS, backend="torch", device="cpu")
    ort_pred = BundlePredictor.from_bundle(HIPPOCAMPUS, backend="onnxruntime", device="cpu")
    item = load_input(hippocrop / "PGBM-003")
    x = torch_pred.preprocessing({"image": item.image})["image"][None].float()
    with torch.no_grad():
        eager = torch_pred.network(x)
    onnx = ort_pred.model(x)
    assert onnx.shape == eager.shape
    assert float((onnx - eager).abs().max()) < 1e-4
    a = torch_pred.predict_item(item)["mask"]
    b = ort_pred.predict_item(load_input(hippocrop / "PGBM-003"))["mask"]
    assert torch.equal(a, b)


def test_inference_json_backend_onnxruntime_gives_the_eager_labels(data_dir, tmp_path):
    """``--backend onnxruntime`` of the bundle's own inference.json (monai.bundle) writes the same label map."""
    from bundle_helpers import run_workflow

    ds = data_dir("msd_hippocampus")
    split = json.loads((HIPPOCAMPUS / "configs" / "split.json").read_text())
    image = str(ds / split["test"][0]["image"])
    preds = {}
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / backend
        wf = run_workflow("hippocampus_segmentation", ["inference.json"], "infer", dataset_dir=str(ds),
                          output_dir=str(out), input_files=[image], backend=backend)
        assert type(wf.parser.get_parsed_content("evaluator").network).__name__ == (
            "OnnxRuntimeNetwork" if backend == "onnxruntime" else "UNet")
        preds[backend] = np.asarray(nib.load(next((out / "predictions").glob("*_seg.nii.gz"))).dataobj)
    assert preds["torch"].any()
    np.testing.assert_array_equal(preds["onnxruntime"], preds["torch"])


def test_predict_png_gives_the_bundle_probabilities_of_the_npz_arrays(data_dir, tmp_path):
    """pneumonia_classification via configs/predict.json: a PNG of a test image gets the probabilities that the
    bundle's own .npz pipeline gives the same image (8-bit scaling and resizing are not silently different)."""
    from PIL import Image

    from medcnn.predict import BundlePredictor

    bundle = REPO / "bundles" / "pneumonia_classification"
    images = np.load(data_dir("pneumoniamnist") / "pneumoniamnist.npz")["test_images"][:4]
    paths = []
    for i, img in enumerate(images):
        paths.append(tmp_path / f"xray{i}.png")
        Image.fromarray(img).save(paths[-1])
    assert main(["predict", "--bundle", str(bundle), "--input", *map(str, paths), "--output", str(tmp_path / "out"),
                 "--quiet", "--no-report"]) == 0
    predictor = BundlePredictor.from_bundle(bundle, device="cpu")
    with torch.no_grad():  # the bundle's own scaling (medcnn.data.medmnist: uint8 / 255) and network
        x = torch.as_tensor(images[:, None].astype(np.float32) / 255.0)
        x = torch.nn.functional.interpolate(x, size=(28, 28), mode="area")
        reference = torch.softmax(predictor.network(x), 1)[:, 1]
    positive_masks = []
    for i, path in enumerate(paths):
        summary = json.loads((tmp_path / "out" / path.stem / f"{path.stem}_summary.json").read_text())
        assert summary["class_probabilities"]["pneumonia"] == pytest.approx(float(reference[i]), abs=1e-5)
        mask = np.asarray(nib.load(tmp_path / "out" / path.stem / f"{path.stem}_seg.nii.gz").dataobj)
        assert mask.shape in {(28, 28), (1, 28, 28)}  # the PNG's own grid
        if summary["predicted_class"] == "pneumonia":
            positive_masks.append(int(mask.sum()))
        else:
            assert not mask.any()
    # Grad-CAM of this small network can vanish for a positive image (image 1 here), but not for all of them
    assert len(positive_masks) == 3 and sum(m > 0 for m in positive_masks) >= 2


BRATS = REPO / "bundles" / "brats_tumour_segmentation"


def test_predict_brats_4d_nifti_on_the_input_grid_with_the_card_dice(data_dir, tmp_path, capsys):
    """configs/predict.json: one FLAIR+T1c 4D NIfTI of the card's held-out case -> whole-tumour mask on its grid, with
    the card's Dice minus 0.05; a FLAIR-only volume is refused by name and nothing is written."""
    case = data_dir("brats2015_deepmedic_subset") / "brats_2013_pat0004_1"
    flair, t1c = nib.load(case / "Flair_subtrMeanDivStd.nii.gz"), nib.load(case / "T1c_subtrMeanDivStd.nii.gz")
    volume = np.stack([np.asarray(flair.dataobj), np.asarray(t1c.dataobj)], axis=-1).astype(np.float32)
    affine = flair.affine.copy()
    affine[:3, 3] += [-7.5, 3.25, 11.0]  # an origin of its own: the result must carry the input's affine
    src = tmp_path / "input" / "pat0004.nii.gz"
    src.parent.mkdir()
    nib.save(nib.Nifti1Image(volume, affine), src)
    out = tmp_path / "out"
    assert main(["predict", "--bundle", str(BRATS), "--input", str(src), "--output", str(out), "--quiet",
                 "--no-report"]) == 0
    result = nib.load(out / "pat0004" / "pat0004_seg.nii.gz")
    assert result.shape == volume.shape[:3]
    np.testing.assert_allclose(result.affine, affine, atol=1e-4)
    pred, truth = np.asarray(result.dataobj) > 0, np.asarray(nib.load(case / "OTMultiClass.nii.gz").dataobj) > 0
    dice = 2 * np.sum(pred & truth) / (pred.sum() + truth.sum())
    card = json.loads((BRATS / "docs" / "metrics_test.json").read_text())["dice"]
    assert dice >= card - 0.05, f"whole-tumour Dice {dice:.4f}, card {card:.4f}"
    summary = json.loads((out / "pat0004" / "pat0004_summary.json").read_text())
    assert summary["labels"]["whole tumour"]["voxels"] == int(pred.sum())

    flair_only = tmp_path / "input" / "flair_only.nii.gz"
    nib.save(nib.Nifti1Image(volume[..., 0], affine), flair_only)
    assert main(["predict", "--bundle", str(BRATS), "--input", str(flair_only), "--output", str(tmp_path / "o2"),
                 "--quiet"]) == 1
    err = capsys.readouterr().err
    assert str(flair_only) in err and "1 channel(s)" in err and not (tmp_path / "o2").exists()


BRATS_LOC = REPO / "bundles" / "brats_tumour_localisation"


def test_predict_brats_localisation_runs_the_2d_classifier_over_a_4d_nifti(data_dir, tmp_path, capsys):
    """configs/predict.json of the slice classifier: one FLAIR+T1c 4D NIfTI of the card's held-out case -> a
    probability per axial slice and the CAM region of every positive slice, stacked on the input grid (its affine).

    Held to docs/metrics_test.json on the card's slices (the 119 slices of evaluate.json): accuracy within 0.03 of
    the card, and the per-slice CAM Dice on its 69 tumour slices within 0.05 of the card (the card scores the CAM
    at the network's 96 x 96, here it is inverted to the 240 x 240 input grid, and the brain used for the
    normalisation is "above the channel minimum" instead of the case's brain mask file). A FLAIR-only volume is
    refused by name and nothing is written.
    """
    from medcnn.data import brats_case_datalist, brats_slices

    root = data_dir("brats2015_deepmedic_subset")
    case = root / "brats_2013_pat0004_1"
    flair, t1c = nib.load(case / "Flair_subtrMeanDivStd.nii.gz"), nib.load(case / "T1c_subtrMeanDivStd.nii.gz")
    volume = np.stack([np.asarray(flair.dataobj), np.asarray(t1c.dataobj)], axis=-1).astype(np.float32)
    affine = flair.affine.copy()
    affine[:3, 3] += [12.0, -4.5, 30.25]  # an origin of its own: the result must carry the input's affine
    affine[2, 2] = 1.5  # and its own slice spacing: the volume in mL follows it
    src = tmp_path / "input" / "pat0004.nii.gz"
    src.parent.mkdir()
    nib.save(nib.Nifti1Image(volume, affine), src)
    before = snapshot(src.parent)
    out = tmp_path / "out"
    assert main(["predict", "--bundle", str(BRATS_LOC), "--input", str(src), "--output", str(out), "--quiet",
                 "--no-report"]) == 0
    assert snapshot(src.parent) == before
    result = nib.load(out / "pat0004" / "pat0004_seg.nii.gz")
    assert result.shape == volume.shape[:3]
    np.testing.assert_allclose(result.affine, affine, atol=1e-4)
    mask = np.asarray(result.dataobj) > 0
    summary = json.loads((out / "pat0004" / "pat0004_summary.json").read_text())
    probs = np.array([s["class_probabilities"]["tumour present"] for s in summary["slices"]])
    assert [s["slice"] for s in summary["slices"]] == list(range(volume.shape[2]))
    positive = probs >= 0.5
    assert summary["positive_slices"] == np.flatnonzero(positive).tolist()
    assert not mask[:, :, ~positive].any()  # a region only on slices called tumour
    tumour = summary["labels"]["tumour present"]
    assert tumour["voxels"] == int(mask.sum()) and tumour["volume_ml"] == pytest.approx(mask.sum() * 1.5e-3, abs=1e-3)

    card = json.loads((BRATS_LOC / "docs" / "metrics_test.json").read_text())
    items = brats_slices(brats_case_datalist(root, card["test_cases"]), min_brain_fraction=0.1,
                         drop_ambiguous=True, normalise="brain_zscore")
    index = np.array([i["slice_index"] for i in items])
    label = np.array([int(i["label"]) for i in items])
    assert len(index) == card["n_images"] and label.sum() == card["n_positive"]
    accuracy = float(np.mean(positive[index] == (label == 1)))
    assert accuracy >= card["accuracy"] - 0.03, f"slice accuracy {accuracy:.4f}, card {card['accuracy']:.4f}"
    truth = np.asarray(nib.load(case / "OTMultiClass.nii.gz").dataobj) > 0
    dice = [2 * np.sum(mask[:, :, k] & truth[:, :, k]) / (mask[:, :, k].sum() + truth[:, :, k].sum())
            for k in index[label == 1]]
    assert np.mean(dice) >= card["cam_dice"] - 0.05, f"CAM Dice {np.mean(dice):.4f}, card {card['cam_dice']:.4f}"

    flair_only = tmp_path / "input" / "flair_only.nii.gz"
    nib.save(nib.Nifti1Image(volume[..., 0], affine), flair_only)
    assert main(["predict", "--bundle", str(BRATS_LOC), "--input", str(flair_only), "--output",
                 str(tmp_path / "o2"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert str(flair_only) in err and "1 channel(s)" in err and not (tmp_path / "o2").exists()


def test_predict_brats_localisation_on_a_flair_t1post_dicom_study(data_dir, hippocrop, tmp_path, capsys):
    """The PGBM-001 study's FLAIRreg and T1post series joined by '+' as the bundle's two channels -> a probability per
    slice, a mask on the FLAIR series' grid and a valid DICOM SEG that reads back voxel for voxel on that series.

    No accuracy is asserted here: these series are not skull-stripped and have 0.69 mm pixels, unlike the BraTS
    volumes the classifier was trained on (see the model card). Series on different grids are refused by name.
    """
    study = data_dir("tcia_brain_tumor_progression_dicom") / "PGBM-001" / "1992-04-02"
    flair, t1post = study / "FLAIRreg", study / "T1post"
    before = snapshot(study)
    out = tmp_path / "out"
    assert main(["predict", "--bundle", str(BRATS_LOC), "--input", f"{flair}+{t1post}", "--output", str(out),
                 "--quiet", "--no-report"]) == 0
    assert snapshot(study) == before
    case = out / "1992-04-02"
    image = load_dicom_series(flair)
    nifti = nib.load(case / "1992-04-02_seg.nii.gz")
    mask = np.asarray(nifti.dataobj)
    assert mask.shape == tuple(image.shape[1:]) == (260, 320, 24)
    np.testing.assert_allclose(nifti.affine, image.affine.numpy(), atol=1e-4)
    summary = json.loads((case / "1992-04-02_summary.json").read_text())
    assert summary["channel_series"] == [str(flair), str(t1post)] and len(summary["slices"]) == 24
    positive = [s["slice"] for s in summary["slices"] if s["class_probabilities"]["tumour present"] >= 0.5]
    assert summary["positive_slices"] == positive and positive  # something to write into the SEG
    assert not mask[:, :, [k for k in range(24) if k not in positive]].any()
    seg_path = case / "1992-04-02_seg.dcm"
    source = pydicom.dcmread(sorted(flair.iterdir())[0], stop_before_pixels=True)
    # no errors; the two warnings are the study's own attributes, which a SEG must copy unchanged: an empty Study ID
    # and the one-component Patient's Name of the TCIA export
    assert source.StudyID == "" and str(source.PatientName) == "PGBM-001"
    warnings = dciodvfy(seg_path)
    assert len(warnings) == 2 and all(w.startswith("Warning") for w in warnings), warnings
    assert "Study ID" in warnings[0] + warnings[1] and "Patient's Name" in warnings[0] + warnings[1], warnings
    np.testing.assert_array_equal(read_dicom_seg(seg_path, flair)[0].numpy(), mask)
    seg = pydicom.dcmread(seg_path)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["tumour"]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert seg.StudyInstanceUID == source.StudyInstanceUID and seg.PatientID == source.PatientID

    other = hippocrop / "PGBM-002"  # a series on another grid as the second channel
    assert main(["predict", "--bundle", str(BRATS_LOC), "--input", f"{flair}+{other}", "--output",
                 str(tmp_path / "o2"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert str(other) in err and "one grid" in err and not (tmp_path / "o2").exists()
    assert main(["predict", "--bundle", str(BRATS_LOC), "--input", str(flair), "--output", str(tmp_path / "o3"),
                 "--quiet"]) == 1  # one series for a two-channel bundle
    err = capsys.readouterr().err
    assert str(flair) in err and "1 channel(s)" in err and not (tmp_path / "o3").exists()


LGG_LOC = REPO / "bundles" / "lgg_tumour_localisation"


def test_predict_lgg_localisation_on_multipage_tiff_volumes_of_the_test_patients(data_dir, tmp_path, capsys):
    """The LGG slice classifier on each test patient's slices as one multi-page 3-channel TIFF (one call, six inputs):
    a decision and CAM region per page on the page grid, held to docs/metrics_test.json over the 175 test slices
    (as many correct slices as evaluate.json: one slice-scoring rule decides both; CAM Dice on the tumour slices
    within 0.05 of the card's Dice times its sensitivity: the card scores the CAM of every tumour slice, called or
    not, predict draws a region only on the slices it calls tumour, on the 256 x 256 pages). A grey (1-channel)
    TIFF is refused by name and nothing is written."""
    from medcnn.data.lgg import lgg_datalist, load_split
    from medcnn.data.tiff_pages import read_tiff_pages, write_tiff_pages

    root = data_dir("lgg_flair_tiff")
    card = json.loads((LGG_LOC / "docs" / "metrics_test.json").read_text())
    patients = load_split(LGG_LOC / "configs" / "split.json")["test"]
    inputs, truths = [], {}
    for patient in patients:
        items = lgg_datalist(root, [patient])
        volume = np.concatenate([read_tiff_pages(i["image"]) for i in items])  # (N, 256, 256, 3)
        truths[patient] = np.concatenate([read_tiff_pages(i["mask"]) for i in items]) > 0  # (N, 256, 256)
        inputs.append(write_tiff_pages(volume, tmp_path / "input" / f"{patient}.tif"))
    out = tmp_path / "out"
    assert main(["predict", "--bundle", str(LGG_LOC), "--input", *map(str, inputs), "--output", str(out),
                 "--quiet", "--no-report"]) == 0
    correct, dice = [], []
    for patient, truth in truths.items():
        mask = np.asarray(nib.load(out / patient / f"{patient}_seg.nii.gz").dataobj) > 0
        assert mask.shape == truth.shape
        summary = json.loads((out / patient / f"{patient}_summary.json").read_text())
        probs = np.array([s["class_probabilities"]["tumour present"] for s in summary["slices"]])
        assert summary["positive_slices"] == np.flatnonzero(probs >= 0.5).tolist()
        assert not mask[probs < 0.5].any()
        has_tumour = truth.any(axis=(1, 2))
        correct += list((probs >= 0.5) == has_tumour)
        dice += [2 * np.sum(mask[k] & truth[k]) / (mask[k].sum() + truth[k].sum()) for k in np.flatnonzero(has_tumour)]
    assert len(correct) == card["n_images"] and len(dice) == card["cam_n_images"]
    # one slice-scoring rule (mirror + neighbour mean) decides the pages here and the slices in evaluate.json
    assert card["slice_scoring"] == {"flip": True, "neighbour_radius": 1}
    assert sum(correct) == round(card["accuracy"] * card["n_images"]), f"accuracy {np.mean(correct):.4f}, card " \
                                                                       f"{card['accuracy']:.4f}"
    # the card scores the CAM of every tumour slice; predict draws none on a slice it calls negative (Dice 0 here),
    # so the card's figure is scaled by the card's sensitivity (the fraction of tumour slices called positive)
    floor = card["cam_dice"] * card["sensitivity"] - 0.05
    assert np.mean(dice) >= floor, f"CAM Dice {np.mean(dice):.4f}, floor {floor:.4f}"

    grey = tmp_path / "input" / "grey.tif"
    write_tiff_pages(read_tiff_pages(inputs[0])[..., 1], grey)
    assert main(["predict", "--bundle", str(LGG_LOC), "--input", str(grey), "--output", str(tmp_path / "o2"),
                 "--quiet"]) == 1
    err = capsys.readouterr().err
    assert str(grey) in err and "1 channel(s)" in err and not (tmp_path / "o2").exists()


def test_predict_pages_get_the_probabilities_of_inference_json(tmp_path, capsys):
    """One slice-scoring rule: ``medcnn predict`` on a multi-page TIFF volume gives each page the probability that
    the bundle's inference.json gives that slice (mirror + neighbour mean), and calls a page tumour iff it is >= 0.5;
    the PDF report titles the slices shown with those probabilities."""
    import csv

    from test_bundle_lgg_localisation import synthetic_volume

    from medcnn.bench import bundle_workflow

    volume, _ = synthetic_volume(tmp_path / "in")
    out = tmp_path / "out"
    assert main(["predict", "--bundle", str(LGG_LOC), "--input", str(volume), "--output", str(out), "--quiet"]) == 0
    summary = json.loads((out / "U1" / "U1_summary.json").read_text())
    probs = np.array([s["class_probabilities"]["tumour present"] for s in summary["slices"]])
    (tmp_path / "list.json").write_text(json.dumps([{"image": str(volume)}]))
    wf = bundle_workflow("lgg_tumour_localisation", ["inference.json"], "infer",
                         datalist=str(tmp_path / "list.json"), output_dir=str(tmp_path / "inf"))
    wf.initialize()
    wf.run()
    wf.finalize()
    rows = {r[0]: float(r[2]) for r in csv.reader((tmp_path / "inf" / "predictions.csv").open())}
    np.testing.assert_allclose(probs, [rows[f"U1_{k}"] for k in range(1, len(probs) + 1)], atol=1e-5)
    assert summary["positive_slices"] == np.flatnonzero(probs >= 0.5).tolist()
    mask = np.asarray(nib.load(out / "U1" / "U1_seg.nii.gz").dataobj)
    assert not mask[probs < 0.5].any()
    import pypdf  # a declared test dependency: missing, it fails

    pdf = pypdf.PdfReader(str(out / "U1" / "U1_report.pdf"))
    text = " ".join(" ".join(p.extract_text() for p in pdf.pages).split())
    shown = [k for k in range(len(probs)) if f"slice {k + 1} of {len(probs)}: p = " in text]
    assert shown and all(f"slice {k + 1} of {len(probs)}: p = {probs[k]:.3f}" in text for k in shown)
    assert "colour overlay: LayerCAM attention" in text  # the bundle's CAM method, named in the legend


def test_score_network_decides_and_the_cam_stays_on_the_network(tmp_path):
    """A bundle's ``score_network`` id (here a wrapper that calls every image negative) scores the images, as in
    MONAI Label: the positive image is then called 'no object' with an empty region, though its CAM is not empty."""
    items = synthetic_datalist(1, 2, spatial_size=[64, 64], radius_range=[10.0, 14.0], contrast=1.5, noise=1.0,
                               object_noise=0.5, positive_fraction=1.0)
    from medcnn.predict import BundlePredictor, load_input

    path = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(items[0]["image"])[0].astype(np.float32), np.eye(4)), path)
    plain = BundlePredictor.from_bundle(SYNTHETIC, device="cpu").predict_item(load_input(path))
    assert plain["result"]["predicted_class"] == "object present" and plain["mask"].any()
    negative = "$lambda net: (lambda x: torch.stack([net(x)[:, 0] * 0 + 9.0, net(x)[:, 1] * 0], 1))"
    gated = BundlePredictor.from_bundle(SYNTHETIC, device="cpu", overrides={"score_network": negative})
    out = gated.predict_item(load_input(path))
    assert out["result"]["predicted_class"] == "no object" and not out["mask"].any()
    assert out["cam"] is not None and torch.equal(out["cam"], plain["cam"])  # CAM on the network itself
