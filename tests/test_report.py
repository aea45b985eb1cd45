"""PDF case report: text read back with pypdf, pages rendered to PNG with pypdfium2, CLI and Ignite handler."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pypdf
import pypdfium2 as pdfium
import pytest
import torch
from monai.data import MetaTensor

from medcnn.report.cases import ReportCases
from medcnn.report.pdf import write_case_report
from medcnn.report.summary import case_facts, render_summary

METRICS = {"auc": 0.9731, "accuracy": 0.9412, "sensitivity": 0.9, "specificity": 0.95, "cam_dice": 0.6123,
           "n_cases": 3, "confusion_matrix": [[50, 3], [4, 40]]}
CURVES = {"epoch": [1, 2, 3], "time_s": [4.0, 8.1, 12.2], "loss": [0.9, 0.5, 0.3], "dice": [0.4, 0.7],
          "dice_x": [1, 3], "dice_time_s": [4.0, 12.2]}


def phantom(shape=(48, 40, 6)):
    """A head-like ellipse with a bright 'tumour' ball on slices 2-4; returns image, label, pred, cam."""
    x, y, z = np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij")
    image = 100.0 * (((x - 24) / 20) ** 2 + ((y - 20) / 17) ** 2 < 1)
    ball = ((x - 30) / 6) ** 2 + ((y - 14) / 6) ** 2 + ((z - 3) / 1.2) ** 2 < 1
    image[ball] += 150
    pred = ball.copy()
    if shape[2] > 4:
        pred[:, :, 4] = False  # the model misses one slice
    cam = np.exp(-(((x - 30) / 8) ** 2 + ((y - 14) / 8) ** 2 + ((z - 3) / 2) ** 2))
    return image.astype(np.float32), ball.astype(np.uint8), pred.astype(np.uint8), cam.astype(np.float32)


def pdf_text(path) -> str:
    return "\n".join(page.extract_text() for page in pypdf.PdfReader(str(path)).pages)


def render(path, page: int) -> np.ndarray:
    doc = pdfium.PdfDocument(str(path))
    try:
        return np.asarray(doc[page].render(scale=1.0).to_pil().convert("RGB"))
    finally:
        doc.close()


def test_summary_template():
    _, label, pred, cam = phantom()
    facts = case_facts(pred, spacing=(1.0, 1.0, 2.0), label=label, cam=cam, metrics=METRICS)
    text = render_summary(facts)
    n_pos = int((pred.reshape(-1, 6).sum(0) > 0).sum())
    assert f"found a tumour-like region in {n_pos} of 6 slices" in text
    assert "AUC 0.97" in text and "not a diagnosis" in text
    assert f"{2 * (pred & label).sum() / (pred.sum() + label.sum()):.2f}" in text  # the case Dice
    empty = render_summary(case_facts(np.zeros((8, 8, 3))))
    assert "The model found no tumour-like region in any of the 3 slices" in empty
    assert render_summary(facts, "$n_positive/$n_slices positive") == f"{n_pos}/6 positive"
    with pytest.raises(ValueError, match="unknown or malformed field"):
        render_summary(facts, "$no_such_field")


def test_pdf_report_text_and_rendering(tmp_path):
    image, label, pred, cam = phantom()
    img = MetaTensor(torch.from_numpy(image)[None], affine=torch.diag(torch.tensor([0.9, 0.9, 3.0, 1.0])))
    out = write_case_report(tmp_path / "case7.pdf", img, pred[None], cam=cam, label=label, metrics=METRICS,
                            curves=CURVES, case_id="case-007")
    text = pdf_text(out)
    assert len(pypdf.PdfReader(str(out)).pages) == 3
    assert "medcnn case report: case-007" in text
    assert "The model found a tumour-like region in 2 of 6 slices (slices 3 to 4)" in " ".join(text.split())
    for value in ("0.9731", "0.9412", "0.6123", "cam_dice"):  # the metrics table
        assert value in text
    dice = 2 * (pred & label).sum() / (pred.sum() + label.sum())
    assert f"{dice:.4f}" in text  # per-case Dice in the table
    assert "best dice 0.7000 at epoch 3" in text  # curves page
    # page 1 (summary, table, confusion matrix) and page 2 (overlays) render to non-blank images
    page0, page1 = render(out, 0), render(out, 1)
    assert page0.shape[0] > 500 and (page0.min(axis=2) < 200).mean() > 0.02
    green = (page1[..., 1] > 180) & (page1[..., 0] < 120) & (page1[..., 2] < 120)
    assert green.sum() > 30  # the predicted-region outline is drawn
    assert (page1.std(axis=2) > 40).sum() > 100  # and the CAM colours
    with pytest.raises(ValueError, match="does not match the image shape"):
        write_case_report(tmp_path / "bad.pdf", img, pred[:10], metrics=METRICS)


def test_cli_report_from_nifti_and_dicom(tmp_path, capsys):
    from medcnn.cli import main

    image, label, pred, cam = phantom()
    affine = np.diag([0.9, 0.9, 3.0, 1.0])
    for name, arr in (("img", image), ("pred", pred), ("cam", cam), ("label", label)):
        nib.save(nib.Nifti1Image(arr, affine), tmp_path / f"{name}.nii.gz")
    (tmp_path / "metrics.json").write_text(json.dumps(METRICS))
    (tmp_path / "curves.json").write_text(json.dumps(CURVES))
    rc = main(["report", "--image", str(tmp_path / "img.nii.gz"), "--pred", str(tmp_path / "pred.nii.gz"),
               "--cam", str(tmp_path / "cam.nii.gz"), "--label", str(tmp_path / "label.nii.gz"),
               "--metrics", str(tmp_path / "metrics.json"), "--curves", str(tmp_path / "curves.json"),
               "--output", str(tmp_path / "out" / "r.pdf"), "--case-id", "PHANTOM-1"])
    assert rc == 0
    text = " ".join(pdf_text(tmp_path / "out" / "r.pdf").split())
    assert "PHANTOM-1" in text and "2 of 6 slices" in text and "0.9731" in text
    volume = pred.sum() * 0.9 * 0.9 * 3.0 / 1000
    assert f"measures {volume:.1f} mL" in text  # spacing from the NIfTI header gives the volume
    # a prediction on another grid is refused with the file named
    nib.save(nib.Nifti1Image(pred[:20], affine), tmp_path / "small.nii.gz")
    rc = main(["report", "--image", str(tmp_path / "img.nii.gz"), "--pred", str(tmp_path / "small.nii.gz"),
               "--output", str(tmp_path / "x.pdf")])
    assert rc == 1 and "small.nii.gz" in capsys.readouterr().err
    # a DICOM series folder as the image
    from test_dicom import make_series  # tests/ is on sys.path (pytest rootdir-less test modules)

    from medcnn.data.dicom import load_dicom_series

    make_series(tmp_path / "dcm", n=6, rows=12, cols=10)
    dicom_affine = load_dicom_series(tmp_path / "dcm").affine.numpy()
    mask = np.zeros((10, 12, 6), np.uint8)
    mask[3:6, 4:8, 2:4] = 1
    nib.save(nib.Nifti1Image(mask, dicom_affine), tmp_path / "dmask.nii.gz")
    rc = main(["report", "--image", str(tmp_path / "dcm"), "--pred", str(tmp_path / "dmask.nii.gz"),
               "--output", str(tmp_path / "d.pdf")])
    assert rc == 0 and "2 of 6 slices" in " ".join(pdf_text(tmp_path / "d.pdf").split())
    # same shape but another geometry (identity affine): refused, since the overlay would be on the wrong voxels
    nib.save(nib.Nifti1Image(mask, np.eye(4)), tmp_path / "eye.nii.gz")
    rc = main(["report", "--image", str(tmp_path / "dcm"), "--pred", str(tmp_path / "eye.nii.gz"),
               "--output", str(tmp_path / "e.pdf")])
    assert rc == 1 and "eye.nii.gz: affine" in capsys.readouterr().err
    # --resample puts a prediction saved on a 2x coarser grid back onto the image grid
    coarse = dicom_affine @ np.diag([2.0, 2.0, 1.0, 1.0])
    nib.save(nib.Nifti1Image(mask[::2, ::2], coarse), tmp_path / "coarse.nii.gz")
    rc = main(["report", "--image", str(tmp_path / "dcm"), "--pred", str(tmp_path / "coarse.nii.gz"),
               "--output", str(tmp_path / "c.pdf"), "--resample"])
    assert rc == 0 and "2 of 6 slices" in " ".join(pdf_text(tmp_path / "c.pdf").split())


def test_handler_writes_one_report_per_case(tmp_path):
    from monai.bundle import ConfigParser
    from monai.engines import SupervisedEvaluator
    from monai.handlers import MeanDice, from_engine
    from monai.transforms import AsDiscreted

    image, label, _, _ = phantom((32, 28, 5))
    data = [{"image": MetaTensor(torch.from_numpy(image)[None], meta={"filename_or_obj": f"/data/case{i}.nii.gz"}),
             "label": torch.from_numpy(label)[None]} for i in range(2)]

    class Threshold(torch.nn.Module):
        def forward(self, x):  # two-channel "logits": foreground where the image is bright
            return torch.cat([200 - x, x - 200], dim=1)

    (tmp_path / "curves.json").write_text(json.dumps(CURVES))
    handler = ConfigParser({"h": {"_target_": "medcnn.handlers.report.PDFReportHandler",
                                  "output_dir": str(tmp_path / "reports"), "curves_json": str(tmp_path / "curves.json"),
                                  "cases": {"_target_": "medcnn.report.cases.ReportCases", "label_key": "label"}}}
                          ).get_parsed_content("h")
    loader = torch.utils.data.DataLoader(data, batch_size=2, collate_fn=__import__("monai").data.list_data_collate)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=loader, network=Threshold(),
        postprocessing=AsDiscreted(keys=["pred", "label"], argmax=[True, False], to_onehot=[2, 2]),
        key_val_metric={
            "val_dice": MeanDice(include_background=False, output_transform=from_engine(["pred", "label"]))
        },
        val_handlers=[handler],
    )
    evaluator.run()
    assert [p.name for p in handler.written] == ["case0_report.pdf", "case1_report.pdf"]
    text = " ".join(pdf_text(handler.written[0]).split())
    assert "val_dice" in text and f"{evaluator.state.metrics['val_dice']:.4f}" in text
    n_pos = int((label.reshape(-1, 5).sum(0) > 0).sum())
    assert f"The model found a tumour-like region in {n_pos} of 5 slices" in text
    assert "Training curves" in text


def test_handler_for_a_classifier_with_cam(tmp_path):
    """Weakly supervised path: pred = class probabilities, mask from the CAM, reference mask from the batch."""
    from ignite.engine import Engine

    from medcnn.handlers.report import PDFReportHandler

    image, label, _, _ = phantom((36, 30, 7))
    image2d, mask2d = torch.from_numpy(image[..., 3])[None], torch.from_numpy(label[..., 3])[None]
    assert mask2d.sum() > 50
    batch = [{"image": MetaTensor(image2d, meta={"filename_or_obj": "/data/slice_012.png"}), "mask": mask2d,
              "label": torch.tensor([1])}]

    cam = image2d / image2d.amax()  # bright pixels = evidence, like a CAM (1, H, W) in [0, 1]

    def step(engine, b):  # the CAM comes with the evaluator's output (a CAMDiceHandler with output_key="cam")
        return [{"image": b[0]["image"], "label": b[0]["label"], "pred": torch.tensor([0.08, 0.92]), "cam": cam}]

    handler = PDFReportHandler(tmp_path, ReportCases(label_key="mask", cam_key="cam"), {"max_slices": 1},
                               cam_rule={"threshold": 0.9, "method": "layercam"})
    engine = Engine(step)
    handler.attach(engine)
    engine.run([batch], max_epochs=1)
    assert [p.name for p in handler.written] == ["slice_012_report.pdf"]
    np.testing.assert_array_equal(handler.cases[0]["cam"], cam.numpy())  # drawn as given, not recomputed
    text = " ".join(pdf_text(handler.written[0]).split())
    assert "The classifier gives a probability of 0.92 that this image shows a tumour-like region" in text
    assert "found a tumour-like region in this image" in text
    assert "Dice score, where 1 is perfect agreement) is 1.00" in text  # CAM mask (>= 0.9 max) = bright ball
    assert "colour overlay: LayerCAM attention" in text  # the legend names the rule's method, not always Grad-CAM
    # a classifier that says "absent" gets no predicted region, whatever the CAM shows
    def step_absent(engine, b):
        return [{"image": b[0]["image"], "label": b[0]["label"], "pred": torch.tensor([0.8, 0.2]), "cam": cam}]

    absent = PDFReportHandler(tmp_path / "absent", ReportCases(label_key="mask", cam_key="cam"), {"max_slices": 1})
    engine = Engine(step_absent)
    absent.attach(engine)
    engine.run([batch], max_epochs=1)
    text = " ".join(pdf_text(absent.written[0]).split())
    assert "probability of 0.20" in text and "The model found no tumour-like region in this image" in text
    assert "colour overlay: Grad-CAM attention" in text  # no rule given: the default method's name
    # a classifier output without any CAM is refused with the case named
    bad = PDFReportHandler(tmp_path / "bad", ReportCases(label_key="mask", cam_key="heatmap"))
    engine = Engine(step)
    bad.attach(engine)
    with pytest.raises(ValueError, match="slice_012.png.*no CAM under cam_key='heatmap'"):
        engine.run([batch], max_epochs=1)


def test_handler_groups_slices_and_draws_on_the_native_grid(tmp_path):
    """Slice items of one case -> one report; the CAM computed on the cropped, resized input is mapped back."""
    from ignite.engine import Engine
    from monai.transforms import CenterSpatialCropd, Compose, CopyItemsd, EnsureTyped, Resized

    from medcnn.handlers.report import PDFReportHandler

    image, label, _, _ = phantom((48, 40, 6))
    prep = Compose([CopyItemsd(["image", "mask"], names=["image_native", "mask_native"]),
                    EnsureTyped(["image", "mask"]), CenterSpatialCropd(["image", "mask"], roi_size=(40, 32)),
                    Resized(["image", "mask"], spatial_size=(20, 16), mode=["area", "nearest"])])
    in_plane = torch.diag(torch.tensor([0.8, 0.6, 1.0], dtype=torch.float64))  # a 2D slice's affine: no z step
    items = [prep({"image": MetaTensor(torch.from_numpy(image[None, :, :, z]), affine=in_plane),
                   "mask": label[None, :, :, z], "case": "pat7", "slice_index": z}) for z in (1, 2, 3, 4)]

    def step(engine, b):  # CAM on the network input grid, as a CAMDiceHandler with output_key="cam" adds it
        return [{"image": i["image"], "pred": torch.tensor([0.1, 0.9]), "cam": i["image"] / i["image"].amax()}
                for i in b]

    cases = ReportCases(label_key="mask", native_image_key="image_native", native_label_key="mask_native",
                        invert_transform=prep, group_key="case", name_key="case", cam_key="cam")
    handler = PDFReportHandler(tmp_path, cases, cam_rule={"threshold": 0.9}, presence_threshold=0.5)
    engine = Engine(step)
    handler.attach(engine)
    engine.run([items[:2], items[2:]], max_epochs=1)
    assert [p.name for p in handler.written] == ["pat7_report.pdf"]
    assert all(c["cam"].shape == c["pred"].shape == (1, 48, 40) for c in handler.cases)  # native grid
    ball = label[:, :, 3] > 0
    pred = handler.cases[2]["pred"][0] > 0  # slice 3: the bright ball, found through crop + resize and back
    assert 2 * (pred & ball).sum() / (pred.sum() + ball.sum()) > 0.6
    text = " ".join(pdf_text(handler.written[0]).split())
    assert "medcnn case report: pat7" in text and "of 5 slices" in text
    # the slices give their in-plane spacing, not the distance between them: no volume from an assumed 1 mm step
    assert handler.collector.grouped()[0]["spacing"] == pytest.approx([0.8, 0.6])
    voxels = int(sum(c["pred"].sum() for c in handler.cases))
    assert " mL" not in text and " cm²" in text and f"measures {voxels} voxels" in text
    with pytest.raises(ValueError, match="native_image_key"):
        ReportCases(invert_transform=prep)


@pytest.mark.parametrize("spacing", [(0.5, 0.7, 3.0), (0.9, 0.9, 1.5)])
def test_volume_uses_the_image_spacing(tmp_path, spacing):
    """The volume in the report comes from the image's own voxel size (a MetaTensor's affine), slice step too."""
    image, label, pred, _ = phantom((32, 28, 5))
    affine = torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))
    out = write_case_report(tmp_path / "case.pdf", MetaTensor(torch.from_numpy(image)[None], affine=affine), pred)
    volume = pred.sum() * np.prod(spacing) / 1000.0
    assert f"measures {volume:.1f} mL" in " ".join(pdf_text(out).split())


def test_pdf_report_with_an_undefined_curve(tmp_path):
    """A validation figure that is NaN every epoch (PPV while no image was called positive) does not stop the report."""
    image, label, pred, cam = phantom()
    curves = {**CURVES, "val_ppv": [None, None], "val_ppv_x": [2, 3]}
    out = write_case_report(tmp_path / "nan.pdf", image[None], pred[None], cam=cam, label=label, curves=curves,
                            case_id="nan-curve")
    text = pdf_text(out)
    assert len(pypdf.PdfReader(str(out)).pages) == 3 and "best val_ppv" not in text and "best dice" in text


def test_slices_cut_from_a_volume_report_the_volume_in_ml(tmp_path):
    """Slices from medcnn.transforms.SliceIterd carry the distance between slices from the NIfTI affine: the grouped
    report gives the region's volume in mL (in-plane 0.8 x 0.6 mm, 2.0 mm between slices)."""
    from ignite.engine import Engine
    from monai.data import DataLoader, GridPatchDataset, decollate_batch
    from monai.transforms import CenterSpatialCropd, Compose, CopyItemsd, Resized

    from medcnn.handlers.report import PDFReportHandler
    from medcnn.report.cases import ReportCases
    from medcnn.transforms import SliceIterd

    image, label, _, _ = phantom((48, 40, 6))
    affine = torch.diag(torch.tensor([0.8, 0.6, 2.0, 1.0], dtype=torch.float64))
    volume = {"image": MetaTensor(torch.from_numpy(image[None]), affine=affine),
              "mask": MetaTensor(torch.from_numpy(label[None]).float(), affine=affine), "case": "pat8"}
    prep = Compose([CopyItemsd(["image", "mask"], names=["image_native", "mask_native"]),
                    CenterSpatialCropd(["image", "mask"], roi_size=(40, 32)),
                    Resized(["image", "mask"], spatial_size=(20, 16), mode=["area", "nearest"])])
    ds = GridPatchDataset([volume], patch_iter=SliceIterd(["image", "mask"]), transform=prep, with_coordinates=False)

    def step(engine, b):
        return [{"image": i["image"], "pred": torch.tensor([0.1, 0.9]), "cam": i["image"] / i["image"].amax()}
                for i in decollate_batch(b)]

    cases = ReportCases(label_key="mask", native_image_key="image_native", native_label_key="mask_native",
                        invert_transform=prep, group_key="case", name_key="case", cam_key="cam")
    handler = PDFReportHandler(tmp_path, cases=cases, cam_rule={"threshold": 0.9}, presence_threshold=0.5)
    engine = Engine(step)
    handler.attach(engine)
    engine.run(DataLoader(ds, batch_size=3), max_epochs=1)
    assert handler.collector.grouped()[0]["spacing"] == pytest.approx([0.8, 0.6, 2.0])
    voxels = int(sum(c["pred"].sum() for c in handler.cases))
    assert voxels > 0
    text = " ".join(pdf_text(handler.written[0]).split())
    assert f"measures {voxels * 0.8 * 0.6 * 2.0 / 1000.0:.1f} mL" in text


def _report_fingerprints(handler) -> list[dict]:
    """Per written report: file name, digest of its text (generation stamp removed) and of the drawn arrays."""
    import hashlib
    import re

    out = []
    for path, case in zip(handler.written, handler.collector.grouped(), strict=True):
        text = re.sub(r"generated \S+ \S+ UTC by medcnn \S+", "generated", " ".join(pdf_text(path).split()))
        drawn = {k: np.round(case[k], 5) if k == "cam" else case[k] for k in ("image", "pred", "label", "cam")
                 if k in case}
        arrays = {k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()[:16] for k, v in drawn.items()}
        out.append({"file": path.name, "text": hashlib.sha256(text.encode()).hexdigest()[:16], "arrays": arrays,
                    "probability": round(case.get("probability", -1.0), 6), "spacing": case.get("spacing")})
    return out


#: recorded with the 24-argument PDFReportHandler (commit 74a41f5) on the two scenarios below; the classifier
#: report's text re-recorded when each slice shown got its own probability in its title (arrays unchanged)
REPORTS_BEFORE = {
    "classifier": [{"file": "pat7_report.pdf", "text": "716a98dc9b850b21", "probability": 0.7, "spacing": [0.8, 0.6],
                    "arrays": {"image": "61534a717819e387", "pred": "25de4a88f439b357", "label": "ad4679eb1fde38d0",
                               "cam": "b7970e6b37f466d1"}}],
    "segmentation": [
        {"file": "c0_report.pdf", "text": "03bcc8fa1478cb12", "probability": -1.0, "spacing": [0.9, 0.9, 2.5],
         "arrays": {"image": "0fce09f0a6c2db73", "pred": "90a7e19a6316b45a", "label": "307de86bd8ca70c9"}},
        {"file": "c1_report.pdf", "text": "d3c207c61ffedda9", "probability": -1.0, "spacing": [0.9, 0.9, 2.5],
         "arrays": {"image": "0a772d486f7c32cb", "pred": "90a7e19a6316b45a", "label": "307de86bd8ca70c9"}},
    ],
}


def test_config_built_handler_writes_the_same_reports_as_before(tmp_path):
    """The handler built from a bundle-style config block (nested ReportCases + page_options) writes the reports
    the 24-argument handler wrote: same files, text, drawn arrays, probability and spacing."""
    from ignite.engine import Engine
    from monai.bundle import ConfigParser
    from monai.transforms import CenterSpatialCropd, Compose, CopyItemsd, EnsureTyped, Resized

    image, label, _, _ = phantom((48, 40, 6))
    prep = Compose([CopyItemsd(["image", "mask"], names=["image_native", "mask_native"]),
                    EnsureTyped(["image", "mask"]), CenterSpatialCropd(["image", "mask"], roi_size=(40, 32)),
                    Resized(["image", "mask"], spatial_size=(20, 16), mode=["area", "nearest"])])
    in_plane = torch.diag(torch.tensor([0.8, 0.6, 1.0], dtype=torch.float64))
    items = [prep({"image": MetaTensor(torch.from_numpy(np.stack([image[:, :, z] * 0.5, image[:, :, z]])),
                                       affine=in_plane),
                   "mask": label[None, :, :, z], "case": case, "slice_index": z})
             for case in ("pat7", "pat8") for z in (1, 2, 3, 4)]

    def step(engine, b):  # slice 2 called absent; CAM of the displayed channel on the network grid
        return [{"image": i["image"], "pred": torch.tensor([0.3, 0.7 if i["slice_index"] != 2 else 0.4]),
                 "cam": i["image"][1:] / i["image"][1:].amax()} for i in b]

    (tmp_path / "metrics.json").write_text(json.dumps(METRICS))
    (tmp_path / "curves.json").write_text(json.dumps(CURVES))
    # the LGG / BraTS localiser block of evaluate.json
    config = {"prep": prep, "handler": {
        "_target_": "medcnn.handlers.PDFReportHandler", "output_dir": str(tmp_path / "cls"),
        "cases": {"_target_": "medcnn.report.cases.ReportCases", "label_key": "mask", "cam_key": "cam",
                  "native_image_key": "image_native", "native_label_key": "mask_native",
                  "invert_transform": "@prep", "group_key": "case", "order_key": "slice_index",
                  "name_key": "case", "display_channel": 1, "max_cases": 1},
        "cam_rule": {"threshold": 0.9}, "presence_threshold": 0.5,
        "metrics_json": str(tmp_path / "metrics.json"), "curves_json": str(tmp_path / "curves.json"),
        "page_options": {"finding_name": "FLAIR abnormality", "max_slices": 2}}}
    handler = ConfigParser(config).get_parsed_content("handler")
    engine = Engine(step)
    handler.attach(engine)
    engine.run([items[:3], items[3:6], items[6:]], max_epochs=1)
    assert handler.collector.skipped == 4  # pat8 beyond max_cases
    assert _report_fingerprints(handler) == REPORTS_BEFORE["classifier"]

    # the BraTS segmentation / COCO block
    image, label, pred, _ = phantom((32, 28, 5))
    volume = [{"image": MetaTensor(torch.from_numpy(image)[None] * (1 + i), meta={"filename_or_obj": f"/d/c{i}.nii.gz"},
                                   affine=torch.diag(torch.tensor([0.9, 0.9, 2.5, 1.0], dtype=torch.float64))),
               "pred": torch.from_numpy(np.stack([1 - pred, pred])).float(), "label": torch.from_numpy(label)[None]}
              for i in range(3)]
    config = {"handler": {
        "_target_": "medcnn.handlers.PDFReportHandler", "output_dir": str(tmp_path / "seg"),
        "cases": {"_target_": "medcnn.report.cases.ReportCases", "label_key": "label", "max_cases": 2},
        "curves_json": str(tmp_path / "curves.json"),
        "page_options": {"class_names": ["background", "whole tumour"], "finding_name": "whole-tumour region",
                         "max_slices": 3}}}
    handler = ConfigParser(config).get_parsed_content("handler")
    engine = Engine(lambda e, b: b)
    handler.attach(engine)
    engine.run([volume[:2], volume[2:]], max_epochs=1)
    assert _report_fingerprints(handler) == REPORTS_BEFORE["segmentation"]


def test_handler_refuses_unknown_page_options_and_a_non_collection(tmp_path):
    from medcnn.handlers.report import PDFReportHandler

    with pytest.raises(ValueError, match=r"page_options \['finding'\] are not options of write_case_report"):
        PDFReportHandler(tmp_path, page_options={"finding": "x"})
    with pytest.raises(TypeError, match="cases must be a medcnn.report.cases.ReportCases"):
        PDFReportHandler(tmp_path, cases={"label_key": "mask"})


def test_report_applies_a_native_grid_rule_where_it_was_scored(tmp_path):
    """A CAM rule scored on the native grid (CAMDiceHandler native_mask_key, sigma in native pixels) draws the
    region the Dice was computed on, not the rule applied on the 2x coarser network grid (twice as wide)."""
    from types import SimpleNamespace

    from ignite.engine import Engine
    from monai.transforms import Compose, CopyItemsd, EnsureTyped, Resized

    from medcnn.handlers.report import PDFReportHandler
    from medcnn.localisation.masks import resize_heatmaps
    from medcnn.localisation.rule import CAMRule, CAMToMask
    from medcnn.report.cases import ReportCases

    prep = Compose([CopyItemsd("image", names="image_native"), EnsureTyped("image"),
                    Resized("image", spatial_size=(32, 32), mode="area")])
    native = torch.zeros(1, 64, 64)
    native[:, 28:36, 28:36] = 1.0
    item = prep({"image": MetaTensor(native, meta={"filename_or_obj": "/data/p1_7.tif"}), "patient": "p1",
                 "slice_index": 0})
    cam = torch.zeros(1, 32, 32)
    cam[:, 15:17, 15:17] = 1.0  # a sharp CAM on the network grid
    rule = CAMRule(method="layercam", threshold=0.2, largest_component=True, smooth_sigma=4.0)
    scored = CAMToMask(rule)(resize_heatmaps(cam[None], (64, 64))[0])  # what CAMDiceHandler scores natively
    coarse = CAMToMask(rule)(cam).repeat_interleave(2, 1).repeat_interleave(2, 2)  # rule on the 32 grid, mapped back

    def step(engine, b):
        return [{"image": b[0]["image"], "pred": torch.tensor([0.1, 0.9]), "cam": cam}]

    cam_handler = SimpleNamespace(rule=rule, native_mask_key="mask_native")
    cases = ReportCases(native_image_key="image_native", invert_transform=prep, group_key="patient",
                        name_key="patient", order_key="slice_index", cam_key="cam")
    handler = PDFReportHandler(tmp_path, cases=cases, cam_handler=cam_handler)
    engine = Engine(step)
    handler.attach(engine)
    engine.run([[item]], max_epochs=1)
    drawn = handler.cases[0]["pred"]
    assert drawn.shape == (1, 64, 64)
    np.testing.assert_array_equal(drawn, scored.numpy())
    assert coarse.sum() > 1.5 * scored.sum()  # the old drawing: smoothed with 2x the sigma, a wider region
