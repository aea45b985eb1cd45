"""medcnn.monailabel in the main environment (no MONAI Label installed): what the app serves and decides.

The served configs of every repository bundle resolve and feed their network; the CAM rule MONAI Label serves is the
one ``medcnn predict`` uses; a classifier's empty CAM region on a positive image says so; uploads, HTTP errors and
result files as the app handles them. The REST path itself is tested by test_monailabel_e2e.py.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from medcnn.monailabel import adapter, launcher
from medcnn.predict import bundle_cam_rule, classify_with_cam
from medcnn.transforms.validation import InvalidInputError

ROOT = Path(__file__).resolve().parent.parent
SERVED = launcher.with_variants(launcher.select_bundles(None, ROOT / "bundles"))


def _served_folder(tmp_path: Path, info) -> Path:
    """The bundle as the app sees it: linked under its served name (a variant's name picks its override)."""
    link = tmp_path / "model" / info.name
    link.parent.mkdir(exist_ok=True)
    link.symlink_to(info.path, target_is_directory=True)
    return link


def test_package_imports_without_monailabel():
    """adapter and launcher (imported above) pull in neither MONAI Label nor its web framework."""
    assert not [m for m in sys.modules if m.split(".")[0] in ("monailabel", "fastapi")]


def test_every_repository_bundle_is_served():
    names = {b.name for b in SERVED}
    expected = {p.parent.parent.name for p in (ROOT / "bundles").glob("*/configs/inference.json")}
    assert expected <= names, f"not servable: {sorted(expected - names)}"
    assert "synthetic_localisation_3d" in names  # the 3D variant, from its override and models/model_3d.pt


def _synthetic_input(info, parser: ConfigParser, meta: dict, tmp_path: Path) -> tuple[Path, int]:
    """A NIfTI of the shape the served task hands the bundle's preprocessing; returns (file, network spatial dims)."""
    inp = next(iter(meta["network_data_format"]["inputs"].values()))
    channels = int(inp.get("num_channels", 1))
    dims = len(inp["spatial_shape"])
    if parser.get("spatial_dims") is not None:  # a variant with another network (synthetic_localisation_3d)
        dims = int(parser.get_parsed_content("spatial_dims"))
    side = [int(s) if isinstance(s, int) else 40 for s in inp["spatial_shape"]][0]
    if parser.get("crop_size") is not None:
        side = max(side, max(parser.get_parsed_content("crop_size")) + 8)
    shape = [side] * dims
    if adapter.served_dimension(parser, dims) == 3 and dims == 2:
        shape += [3]  # a 2D network run over a volume by the bundle's SliceInferer
    if channels > 1:
        shape += [channels]  # channels last, as one 4D NIfTI (or one (H, W, C) slice of it)
    rng = np.random.default_rng(0)
    arr = (rng.random(shape) * 255).astype(np.uint8) if info.name.startswith("pneumonia") else \
        rng.normal(size=shape).astype(np.float32)
    f = tmp_path / f"{info.name}.nii.gz"
    nib.save(nib.Nifti1Image(arr, np.eye(4)), f)
    return f, dims


@pytest.mark.parametrize("info", SERVED, ids=[b.name for b in SERVED])
def test_served_config_reads_one_image_and_feeds_the_network(info, tmp_path):
    folder = _served_folder(tmp_path, info)
    meta = adapter.bundle_metadata(folder)
    parser = adapter.read_served_config(folder)
    image, dims = _synthetic_input(info, parser, meta, tmp_path)
    data = parser.get_parsed_content("preprocessing", instantiate=True)({"image": str(image)})
    x = torch.as_tensor(data["image"]).float()[None]
    inp = next(iter(meta["network_data_format"]["inputs"].values()))
    assert x.shape[1] == int(inp.get("num_channels", 1)), f"{info.name}: {tuple(x.shape)}"
    network = parser.get_parsed_content("network_def", instantiate=True).eval()
    with torch.no_grad():
        if adapter.is_classifier(meta):
            assert x.ndim - 2 == dims, f"{info.name}: network input {tuple(x.shape)}"
            out = network(x)
            assert out.shape == (1, len(adapter.class_names(meta)))
        else:
            out = parser.get_parsed_content("inferer", instantiate=True)(x, network)
            assert out.shape[2:] == x.shape[2:], f"{info.name}: {tuple(out.shape)} for input {tuple(x.shape)}"
    labels = {v: int(k) for k, v in next(iter(meta["network_data_format"]["outputs"].values()))["channel_def"].items()}
    if not adapter.is_classifier(meta):
        assert adapter.served_labels(labels) == {k: v for k, v in labels.items() if v > 0}


# medcnn predict runs a bundle's inference.json (+ predict.json), not the variants MONAI Label serves besides it
CLASSIFIERS = [b for b in SERVED if adapter.is_classifier(adapter.bundle_metadata(b.path)) and b.path.name == b.name]


@pytest.mark.parametrize("info", CLASSIFIERS, ids=[b.name for b in CLASSIFIERS])
def test_served_cam_rule_is_the_rule_medcnn_predict_uses(info, tmp_path):
    folder = _served_folder(tmp_path, info)
    served = adapter.served_cam_rule(folder, adapter.read_served_config(folder))
    files = [info.path / "configs" / f for f in ("inference.json", "predict.json")
             if (info.path / "configs" / f).is_file()]
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    parser["bundle_root"] = str(info.path)
    predicted = bundle_cam_rule(info.path, parser)
    keys = ("method", "target_layer", "threshold", "mode", "largest_component", "class_idx", "decision_threshold")
    assert {k: served[k] for k in keys} == {k: predicted[k] for k in keys}, info.name


def test_cam_rule_of_each_classifier_is_the_one_its_card_reports():
    lgg = adapter.served_cam_rule(ROOT / "bundles" / "lgg_tumour_localisation",
                                  adapter.read_served_config(ROOT / "bundles" / "lgg_tumour_localisation"))
    card = json.loads((ROOT / "bundles" / "lgg_tumour_localisation" / "docs" / "metrics_test.json").read_text())
    assert (lgg["threshold"], lgg["largest_component"]) == (card["cam_threshold"], card["cam_largest_component"])
    synthetic = adapter.served_cam_rule(ROOT / "bundles" / "synthetic_localisation",
                                        adapter.read_served_config(ROOT / "bundles" / "synthetic_localisation"))
    assert synthetic["source"] == "docs/results_2d.json"
    chosen = json.loads((ROOT / "bundles" / "synthetic_localisation" / "docs" / "results_2d.json").read_text())
    assert synthetic["method"] == chosen["cam_method"] and synthetic["threshold"] == chosen["cam_threshold"]


# ------------------------------------------------------------------------------------------ classifier result
def _classifier(bias: tuple[float, float], zero_features: bool = False) -> torch.nn.Module:
    from medcnn.networks import ResNetClassifier

    torch.manual_seed(0)
    net = ResNetClassifier(2, 1, 2, num_blocks=3, cam_layer="blocks.1")
    with torch.no_grad():
        if zero_features:  # every activation zero: the CAM of any class is zero everywhere
            for p in net.parameters():
                p.zero_()
        net.fc2.bias.copy_(torch.tensor(bias))
    return net.eval()


RULE = {"method": "gradcam", "target_layer": "blocks.1", "threshold": 0.5, "mode": "fraction",
        "largest_component": True, "class_idx": 1, "decision_threshold": None}
NAMES = {0: "normal", 1: "pneumonia"}


def _run(net, rule=RULE):
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        logits = net(x)[0]
    return classify_with_cam(net, x, logits, rule, NAMES)


def test_positive_image_with_zero_cam_says_so():
    mask, _, result = _run(_classifier((-20.0, 20.0), zero_features=True))
    assert result["predicted_class"] == "pneumonia" and not mask.any()
    assert result["cam_region_empty"] is True
    assert "does NOT mean pneumonia is absent" in result["warning"]


def test_positive_image_with_cam_gives_region_and_negative_image_an_empty_one():
    mask, heat, result = _run(_classifier((-20.0, 20.0)))
    assert result["predicted_class"] == "pneumonia" and mask.any() and result["cam_region_empty"] is False
    assert "warning" not in result and mask.shape == heat.shape == (1, 32, 32)
    mask, _, result = _run(_classifier((20.0, -20.0)))
    assert result["predicted_class"] == "normal" and not mask.any()
    assert result["cam_region_empty"] is False and "warning" not in result  # empty because negative: no warning
    assert abs(sum(result["class_probabilities"].values()) - 1) < 1e-5


def test_decision_threshold_replaces_argmax():
    net = _classifier((0.0, -0.5))  # p(pneumonia) ~ 0.38: arg-max says normal
    _, _, result = _run(net, dict(RULE, decision_threshold=0.3))
    assert result["predicted_class"] == "pneumonia" and result["decision_threshold"] == 0.3


def test_slices_summary_lists_positive_and_empty_cam_slices():
    res = [{"class_probabilities": {"no": 0.9, "yes": 0.1}, "predicted_class": "no", "cam_region_empty": False},
           {"class_probabilities": {"no": 0.2, "yes": 0.8}, "predicted_class": "yes", "cam_region_empty": True},
           {"class_probabilities": {"no": 0.4, "yes": 0.6}, "predicted_class": "yes", "cam_region_empty": False}]
    out = adapter.summarise_slices(res, "yes")
    assert out["most_positive_slice"] == 1 and out["positive_slices"] == [1, 2] and out["empty_cam_slices"] == [1]
    assert [s["slice"] for s in out["slices"]] == [0, 1, 2]
    assert adapter.summarise_slices(res[:1]) == res[0]


def test_served_lgg_slices_are_decided_by_the_bundle_slice_scoring_rule(tmp_path):
    """MONAI Label serves the LGG localiser slice by slice (a 4D NIfTI, each slice written to its own file and run
    through the served preprocessing, as MedcnnCAMGridTask does): with the bundle's slice-scoring rule
    (served_slice_scorer -> score per slice, decide_slices over the volume) every slice gets the probability that
    ``medcnn predict`` gives the same volume as a TIFF, a slice is called positive iff that probability reaches the
    decision threshold, and only those keep their CAM region."""
    from test_bundle_lgg_localisation import synthetic_volume

    from medcnn.networks import SliceScoreInferer
    from medcnn.predict import decide_slices, predict

    bundle = ROOT / "bundles" / "lgg_tumour_localisation"
    parser = adapter.read_served_config(bundle)
    scorer = adapter.served_slice_scorer(parser)
    assert isinstance(scorer, SliceScoreInferer) and scorer.flip and scorer.neighbour_radius == 1
    rule = adapter.served_cam_rule(bundle, parser)
    names = adapter.class_names(adapter.bundle_metadata(bundle))
    net = parser.get_parsed_content("network_def", instantiate=True)
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True))
    net.eval()
    pre = parser.get_parsed_content("preprocessing", instantiate=True)
    tif, pages = synthetic_volume(tmp_path)
    volume = np.moveaxis(pages, 0, 2).astype(np.float32)  # (H, W, D, 3), as Slicer uploads it
    masks, logits = [], []
    for k in range(volume.shape[2]):  # _NiftiGridMixin: one NIfTI per slice through the served preprocessing
        f = tmp_path / f"slice_{k:04d}.nii.gz"
        nib.save(nib.Nifti1Image(np.ascontiguousarray(volume[:, :, k]), np.eye(4)), f)
        x = torch.as_tensor(pre({"image": str(f)})["image"]).float()[None]
        with torch.no_grad():
            scores = scorer.score(x, net)[0]  # MedcnnCAMTask.run_inferer
        mask, _, _ = classify_with_cam(net, x, scores, rule, names, gate=False)
        masks.append(mask)
        logits.append(scores)
    gated, results, _ = decide_slices(masks, torch.stack(logits), rule, names, scorer)
    probs = np.array([r["class_probabilities"][names[1]] for r in results])
    summary = predict(bundle, [tif], tmp_path / "out", report=False, progress=False)[0]
    np.testing.assert_allclose(probs, [s["class_probabilities"][names[1]] for s in summary["slices"]], atol=1e-4)
    called = probs >= rule["decision_threshold"]
    assert [r["predicted_class"] == names[1] for r in results] == called.tolist()
    assert not any(bool(m.any()) for m, c in zip(gated, called, strict=True) if not c)
    assert [bool(m.any()) for m, c in zip(gated, called, strict=True) if c] == [bool(m.any()) for m, c in
                                                                                 zip(masks, called, strict=True) if c]


# ------------------------------------------------------------------------------------------ uploads and errors
def test_check_upload_accepts_nifti_and_refuses_the_rest_naming_it(tmp_path):
    good = tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.float32), np.eye(4)), good)
    assert adapter.check_upload(good, "upload 'case1'") == (8, 8, 4)
    truncated = tmp_path / "t.nii.gz"
    truncated.write_bytes(good.read_bytes()[:60])
    text = tmp_path / "x.nii.gz"
    text.write_bytes(gzip.compress(b"not an image" * 40))
    nan = tmp_path / "nan.nii"
    nib.save(nib.Nifti1Image(np.full((4, 4, 2), np.nan, np.float32), np.eye(4)), nan)
    five = tmp_path / "five.nii"
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, 2, 2), np.float32), np.eye(4)), five)
    png = tmp_path / "photo.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    for f, msg in [(truncated, "not a readable NIfTI"), (text, "not a readable NIfTI"), (nan, "NaN"),
                   (five, "2D, 3D or 4D"), (png, "only NIfTI")]:
        with pytest.raises(InvalidInputError, match=msg) as err:
            adapter.check_upload(f, f"upload '{f.stem}'")
        assert str(err.value).startswith(f"upload '{f.stem}'")


def test_only_nifti_is_listed_in_the_studies_folder():
    import fnmatch

    listed = [n for n in ("a.nii.gz", "b.nii", "c.png", "d.jpg", "e.nrrd")
              if any(fnmatch.fnmatch(n, p) for p in adapter.STUDY_EXTENSIONS)]
    assert listed == ["a.nii.gz", "b.nii"]


def test_http_error_gives_4xx_with_the_named_file_for_request_errors():
    bad = InvalidInputError("/studies/case.nii.gz: image has shape (1, 32, 40); expected a 3D image")
    try:
        try:
            raise bad
        except InvalidInputError as e:
            raise RuntimeError("applying transform <CheckImaged>") from e
    except RuntimeError as wrapped:
        assert adapter.http_error(wrapped) == (422, str(bad))

    class MONAILabelException(Exception):  # the shape of MONAI Label's exception (msg + error)
        def __init__(self, msg):
            self.msg = msg

    assert adapter.http_error(MONAILabelException("There is no model 'x' available"))[0] == 404
    assert adapter.http_error(MONAILabelException("Model is not provided"))[0] == 400
    assert adapter.http_error(ZeroDivisionError("bug")) is None  # a server fault stays a 500


# ------------------------------------------------------------------------------------------ result files
def test_result_is_written_on_the_input_grid(tmp_path):
    aff = np.array([[0, -0.8, 0, 12.5], [1.2, 0, 0, -3.0], [0, 0, 2.5, 7.0], [0, 0, 0, 1]])
    ref = nib.Nifti1Image(np.zeros((6, 5, 4), np.float32), aff)
    ref.set_qform(aff, code=1)
    ref.set_sform(aff, code=2)
    ref.header.set_xyzt_units("mm", "sec")
    src = tmp_path / "in.nii.gz"
    nib.save(ref, src)
    label = adapter.label_array(torch.randint(0, 2, (1, 6, 5, 4)).float(), 3)
    out = tmp_path / "out.nii.gz"
    adapter.save_on_input_grid(label, nib.load(src), out)
    back = nib.load(out)
    assert back.shape == (6, 5, 4) and back.get_data_dtype() == np.uint8
    np.testing.assert_allclose(back.affine, aff)
    assert (int(back.header["qform_code"]), int(back.header["sform_code"])) == (1, 2)
    assert back.header.get_xyzt_units() == ("mm", "sec")
    assert set(np.unique(np.asarray(back.dataobj)).tolist()) <= {0, 1}


def test_label_array_takes_argmax_of_one_hot_and_refuses_the_wrong_rank():
    probs = torch.zeros(3, 4, 4)
    probs[2, 1, 1] = 1
    probs[1, 0, 0] = 1
    arr = adapter.label_array(probs, 2)
    assert arr[1, 1] == 2 and arr[0, 0] == 1 and arr.dtype == np.uint8
    with pytest.raises(ValueError, match="2 spatial dimensions"):
        adapter.label_array(torch.zeros(4, 4, 4, 4), 2)


def test_override_of_the_served_name_is_found(tmp_path):
    info = next(b for b in SERVED if b.name == "synthetic_localisation_3d")
    folder = _served_folder(tmp_path, info)
    assert adapter.override_files(folder) == [str(adapter.OVERRIDES_DIR / "synthetic_localisation_3d.json")]
    assert adapter.override_settings(folder)["model_file"] == "model_3d.pt"
    assert adapter.served_dimension(adapter.read_served_config(folder), 2) == 3
    brats = ROOT / "bundles" / "brats_tumour_segmentation"  # no override: its predict.json, as medcnn predict runs
    assert adapter.override_files(brats) == [str(brats / "configs" / "predict.json")]
    assert adapter.served_dimension(adapter.read_served_config(brats), 2) == 3
    pneumonia = ROOT / "bundles" / "pneumonia_classification"  # predict.json without a loader: one put in front
    assert adapter.override_files(pneumonia) == [str(pneumonia / "configs" / "predict.json")]
    steps = adapter.read_served_config(pneumonia)["preprocessing"]["transforms"]
    assert [t["_target_"] for t in steps[:3]] == ["LoadImaged", "EnsureChannelFirstd", "Lambdad"]
    own = tmp_path / "own_bundle"
    (own / "configs").mkdir(parents=True)
    (own / "configs" / "monailabel.json").write_text(json.dumps({"monailabel": {"dimension": 3}}))
    assert adapter.override_files(own) == [str(own / "configs" / "monailabel.json")]


def test_medcnn_predict_and_the_served_config_give_the_same_classification(data_dir, tmp_path):
    """8-bit chest X-rays as 3D Slicer uploads them ((H, W, 1) uint8 NIfTI): medcnn predict and the MONAI Label
    served config (one (H, W) slice, as the app cuts it) give the probabilities of the bundle's own .npz pipeline, and
    the result says when a positive image's CAM region is empty."""
    from medcnn.cli import main
    from medcnn.predict import BundlePredictor

    bundle = ROOT / "bundles" / "pneumonia_classification"
    npz = np.load(data_dir("pneumoniamnist") / "pneumoniamnist.npz")
    images = npz["test_images"][:4]
    parser = adapter.read_served_config(bundle)
    served_pre = parser.get_parsed_content("preprocessing", instantiate=True)
    network = BundlePredictor.from_bundle(bundle, device="cpu").network
    inputs = []
    for i, img in enumerate(images):
        inputs.append(tmp_path / f"xray{i}.nii.gz")
        nib.save(nib.Nifti1Image(np.ascontiguousarray(img)[..., None], np.eye(4)), inputs[-1])
        nib.save(nib.Nifti1Image(np.ascontiguousarray(img), np.eye(4)), tmp_path / f"slice{i}.nii.gz")
    assert main(["predict", "--bundle", str(bundle), "--input", *map(str, inputs), "--output", str(tmp_path / "out"),
                 "--quiet", "--no-report"]) == 0
    with torch.no_grad():
        x = torch.nn.functional.interpolate(torch.as_tensor(images[:, None] / 255.0, dtype=torch.float32),
                                            size=(28, 28), mode="area")
        reference = torch.softmax(network(x), 1)[:, 1]
    for i in range(len(inputs)):
        summary = json.loads((tmp_path / "out" / f"xray{i}" / f"xray{i}_summary.json").read_text())
        with torch.no_grad():
            served = served_pre({"image": str(tmp_path / f"slice{i}.nii.gz")})["image"]
            p_served = float(torch.softmax(network(torch.as_tensor(served).float()[None]), 1)[0, 1])
        p_predict = summary["class_probabilities"]["pneumonia"]
        assert p_predict == pytest.approx(float(reference[i]), abs=1e-5), (i, p_predict, float(reference[i]))
        assert p_served == pytest.approx(float(reference[i]), abs=1e-5), (i, p_served, float(reference[i]))
        mask = np.asarray(nib.load(tmp_path / "out" / f"xray{i}" / f"xray{i}_seg.nii.gz").dataobj)
        positive = summary["predicted_class"] == "pneumonia"
        assert summary["cam_region_empty"] == (positive and not mask.any())
        assert ("warning" in summary) == summary["cam_region_empty"]
