"""coco_tumour_segmentation bundle: metadata, the fixed split, the checks of its tiny train + evaluate on
synthetic COCO images (run by tests/test_bundles.py), the network variants, inference to PNG + COCO and back, COCO
bad-input errors on the real annotations, and the committed weights against the model card on a subset of the test
split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_helpers import TinyRun, bundle_root, export_matches_eager, make_workflow, read_metrics, run_workflow
from PIL import Image

from medcnn.data.coco import CocoFormatError, load_coco_datalist, load_coco_eval_datalist, split_coco_datalist
from medcnn.transforms.coco import CocoToMaskd
from medcnn.transforms.validation import InvalidInputError

NAME = "coco_tumour_segmentation"
ROOT = bundle_root(NAME)
WEIGHTS = ROOT / "models" / "model.pt"
TINY = {"spatial_size": [32, 32], "batch_size": 4}


def make_coco_images(root: Path, n: int, seed: int, size: tuple[int, int] = (48, 64)) -> Path:
    """``n`` RGB PNG images (H, W) = ``size``: noise plus one bright rectangle, labelled as a COCO box polygon."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    h, w = size
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "tumour"}]}
    for i in range(n):
        img = rng.normal(60, 15, size=(h, w)).clip(0, 255)
        bh, bw = int(rng.integers(10, 20)), int(rng.integers(10, 24))
        y, x = int(rng.integers(2, h - bh - 2)), int(rng.integers(2, w - bw - 2))
        img[y:y + bh, x:x + bw] += 120
        rgb = np.repeat(img.clip(0, 255).astype(np.uint8)[..., None], 3, axis=-1)
        Image.fromarray(rgb).save(root / f"img{i:03d}.png")
        coco["images"].append({"id": i + 1, "file_name": f"img{i:03d}.png", "height": h, "width": w})
        coco["annotations"].append({"id": i + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                                    "segmentation": [[x, y, x + bw, y, x + bw, y + bh, x, y + bh, x, y]],
                                    "bbox": [x, y, bw, bh], "area": bw * bh})
    (root / "_annotations.coco.json").write_text(json.dumps(coco))
    return root / "_annotations.coco.json"


def make_synthetic_coco(root: Path) -> Path:
    """A dataset folder laid out like the Roboflow export: train/ and valid/ with one COCO JSON each."""
    make_coco_images(root / "train", 40, seed=0)
    make_coco_images(root / "valid", 6, seed=1)
    return root


def check_tiny_run(run: TinyRun) -> None:
    """The tiny evaluation of tests/test_bundles.py: scored on each image's own grid, one report per image."""
    m, out = run.metrics, run.out
    assert len(run.curves["val_dice"]) == 4
    assert np.sum(m["confusion_matrix"]) == 6 * 48 * 64  # scored on each image's own grid
    assert m["dice"] == pytest.approx(m["tumour_f1"], abs=1e-6)
    assert (out / "confusion_matrix.png").is_file()
    assert len(list((out / "reports").glob("img00*_report.pdf"))) == 6


def test_metadata_declares_one_input_channel():
    meta = json.loads((ROOT / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == 1


def test_defaults_are_the_recorded_choices():
    """Training, evaluation, inference and metadata agree on the resolution, and evaluation and inference use the
    post-processing chosen on the validation split (docs/postprocessing_validation.json), not another one."""
    cfg = {n: json.loads((ROOT / "configs" / f"{n}.json").read_text()) for n in ("train", "evaluate", "inference")}
    meta = json.loads((ROOT / "configs" / "metadata.json").read_text())
    size = cfg["train"]["spatial_size"]
    assert cfg["inference"]["spatial_size"] == size
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == size
    assert meta["network_data_format"]["outputs"]["pred"]["spatial_shape"] == size
    choice = json.loads((ROOT / "docs" / "postprocessing_validation.json").read_text())
    assert choice["split"].startswith("validation")
    rule = choice["rows"][choice["chosen"]]
    for name in ("evaluate", "inference"):
        for key in ("box_postprocessing", "largest_region_only", "fill_holes", "dihedral_tta"):
            assert cfg[name][key] == rule[key], (name, key)


@pytest.mark.realdata
def test_split_is_the_recorded_one(data_dir):
    """The split the bundle computes equals docs/split.json (image ids and file names), and leaves out the one
    train image without a polygon (label missing, not negative)."""
    recorded = json.loads((ROOT / "docs" / "split.json").read_text())
    pool = load_coco_datalist(data_dir("coco_brain_tumour") / "train" / "_annotations.coco.json", include_empty=False,
                              check_annotations=False)
    split = split_coco_datalist(pool, recorded["validation_fraction"], recorded["seed"])
    for part in ("training", "validation"):
        assert [e["image_id"] for e in split[part]] == [e["image_id"] for e in recorded[part]], part
        assert [e["file_name"] for e in split[part]] == [e["file_name"] for e in recorded[part]], part
    assert len(split["training"]) + len(split["validation"]) == 999
    assert 1380 not in {e["image_id"] for e in split["training"] + split["validation"]}
    # the split depends on the ids, not on the order of the JSON
    again = split_coco_datalist(list(reversed(pool)), recorded["validation_fraction"], recorded["seed"])
    assert [e["image_id"] for e in again["validation"]] == [e["image_id"] for e in split["validation"]]


@pytest.mark.parametrize("name", ["resnext_unet", "resunetpp"])
def test_network_variants_by_override(name):
    wf = make_workflow(NAME, ["train.json"], "train", network_name=name)
    net = wf.parser.get_parsed_content("network_def")
    with torch.no_grad():
        assert net.eval()(torch.zeros(1, 1, 128, 128)).shape == (1, 2, 128, 128)
    if name == "resnext_unet":
        assert type(net).__name__ == "FlexibleUNet" and type(net.encoder).__name__ == "ResNeXtEncoder"
        groups = {m.groups for m in net.encoder.modules() if isinstance(m, torch.nn.Conv2d)}
        assert 32 in groups  # grouped 3x3 convolutions: ResNeXt (32x4d), not ResNet


def test_torchscript_export_matches_eager(tmp_path, weights):
    x = torch.randn(2, 1, 128, 128, generator=torch.Generator().manual_seed(0))
    export_matches_eager(NAME, weights, x, tmp_path, atol=1e-4)


@pytest.mark.realdata
def test_inference_writes_png_and_coco_that_read_back(tmp_path, data_dir, weights):
    """Predicted masks as PNG on the native grid, and the COCO file of them decodes to the same pixels."""
    valid = data_dir("coco_brain_tumour") / "valid"
    files = sorted(valid.glob("*.jpg"))[:3]
    src = tmp_path / "in"
    src.mkdir()
    for f in files:
        (src / f.name).symlink_to(f)
    out = tmp_path / "pred"
    run_workflow(NAME, ["inference.json"], "infer", input_dir=str(src), output_dir=str(out))
    pngs = sorted(out.glob("*_tumour.png"))
    assert len(pngs) == 3
    coco_file = out / "predictions.coco.json"
    items = {e["file_name"]: e for e in load_coco_datalist(coco_file, image_dir=src)}
    assert sorted(items) == [f.name for f in files]
    found = 0
    for f in files:
        png = np.asarray(Image.open(out / f"{f.stem}_tumour.png"))
        assert png.shape == (640, 640) and set(np.unique(png)) <= {0, 255}
        back = CocoToMaskd(keys="annotations")(items[f.name])["label"][0].numpy()
        np.testing.assert_array_equal(back, png > 0)  # lossless round trip (polygons where exact, else RLE)
        found += int(png.any())
    assert found >= 2  # every test image has a tumour box; the committed model finds most of them


def _real_subset(data_dir, n: int = 4) -> dict:
    """The first ``n`` images of the real valid/ COCO file with absolute file names (so it can be edited)."""
    valid = data_dir("coco_brain_tumour") / "valid"
    coco = json.loads((valid / "_annotations.coco.json").read_text())
    coco["images"] = coco["images"][:n]
    ids = {img["id"] for img in coco["images"]}
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in ids]
    for img in coco["images"]:
        img["file_name"] = str(valid / img["file_name"])
    return coco


@pytest.mark.realdata
@pytest.mark.parametrize("problem", ["polygon_outside", "unknown_image_id", "missing_image_file", "rle_size"])
def test_bad_coco_on_real_annotations_names_the_file(tmp_path, data_dir, problem):
    coco = _real_subset(data_dir)
    ann, img = coco["annotations"][1], coco["images"][1]
    target = next(i for i in coco["images"] if i["id"] == ann["image_id"])
    expected = [Path(target["file_name"]).name]
    if problem == "polygon_outside":
        ann["segmentation"][0][0] = target["width"] + 40.0
        expected += ["outside the image", f"annotation id {ann['id']}"]
    elif problem == "unknown_image_id":
        ann["image_id"] = 99999
        expected = [f"annotation id {ann['id']}", "image id 99999", "not in 'images'"]
    elif problem == "missing_image_file":
        img["file_name"] = str(Path(img["file_name"]).with_name("no_such_slice.jpg"))
        expected = ["no_such_slice.jpg", "does not exist"]
    else:
        from medcnn.transforms.coco import rle_encode

        ann["segmentation"] = rle_encode(np.ones((target["height"] // 2, target["width"]), np.uint8))
        expected += ["RLE size", f"annotation id {ann['id']}"]
    path = tmp_path / f"{problem}.json"
    path.write_text(json.dumps(coco))
    with pytest.raises(CocoFormatError) as err:
        load_coco_eval_datalist(path)
    message = str(err.value)
    assert str(path) in message and isinstance(err.value, InvalidInputError)
    for part in expected:
        assert part in message, (part, message)


@pytest.mark.realdata
def test_eval_datalist_with_a_bad_coco_file_fails_before_running(tmp_path, data_dir):
    coco = _real_subset(data_dir)
    coco["annotations"][0]["segmentation"][0][1] = -50.0
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(coco))
    with pytest.raises(Exception) as err:
        run_workflow(NAME, ["train.json", "evaluate.json"], "eval", eval_datalist=str(path),
                     output_dir=str(tmp_path / "out"))
    chain, exc = [], err.value
    while exc is not None:
        chain.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    name = Path(coco["images"][0]["file_name"]).name
    assert any("mine.json" in c and name in c and "outside the image" in c for c in chain), chain
    assert not (tmp_path / "out" / "metrics.json").exists()


@pytest.mark.realdata
@pytest.mark.slow
def test_committed_weights_reproduce_the_model_card(tmp_path, data_dir, weights):
    """The first 40 test images, evaluated with the committed weights, give the figures in docs/ (abs 0.002)."""
    card = json.loads((ROOT / "docs" / "metrics_test_first40.json").read_text())
    out = tmp_path / "eval"
    run_workflow(NAME, ["train.json", "evaluate.json"], "eval", dataset_dir=str(data_dir("coco_brain_tumour")),
                 output_dir=str(out), report_max_cases=0,
                 eval_items="$medcnn.data.load_coco_eval_datalist(@test_json)[:40]")
    m = read_metrics(out)
    assert m["n_items"] == card["n_items"] == 40
    for key in ("dice", "pixel_accuracy", "tumour_precision", "tumour_recall", "image_dice_median"):
        assert m[key] == pytest.approx(card[key], abs=0.002), key
    np.testing.assert_allclose(m["confusion_matrix"], card["confusion_matrix"], rtol=0.002)


def _postprocessing_script():
    import importlib.util

    path = ROOT.parents[1] / "scripts" / "select_coco_postprocessing.py"
    spec = importlib.util.spec_from_file_location("select_coco_postprocessing", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_postprocessing_sweep_rules_on_a_known_map():
    """The sweep's rules (scripts/select_coco_postprocessing.py --sweep): threshold, largest vs most probable
    region, box fits, the fallback for an empty map, and the Dice they score against a known box."""
    sweep = _postprocessing_script()
    prob = np.zeros((40, 40), np.float32)
    prob[2:14, 2:14] = 0.55  # large, unsure region: 144 px, summed probability 79.2
    prob[25:34, 25:34] = 0.99  # smaller, sure region: 81 px, summed probability 80.2
    prob[24, 25:34] = 0.6  # a less sure rim on the sure region
    ref = np.zeros((40, 40), bool)
    ref[25:34, 25:34] = True
    largest = sweep.rule_mask(prob, 0.5, "largest", "filled")
    mass = sweep.rule_mask(prob, 0.5, "mass", "filled")
    assert largest.sum() == 144 and not (largest & ref).any()
    assert mass.sum() == 90 and (mass & ref).sum() == 81
    assert sweep.rule_mask(prob, 0.7, "largest", "filled").sum() == 81  # the unsure region is below 0.7
    core = sweep.rule_mask(prob, 0.5, "mass", "core_box", level=0.9)
    np.testing.assert_array_equal(core, ref)  # the box of the sure pixels drops the rim
    assert sweep.rule_mask(prob, 0.5, "all", "box").sum() == 144 + 90
    faint = np.where(ref, 0.3, 0.01).astype(np.float32)
    assert not sweep.rule_mask(faint, 0.5, "largest", "filled").any()
    np.testing.assert_array_equal(sweep.rule_mask(faint, 0.5, "largest", "filled", empty="relative"), ref)
    scores = sweep.score_masks([largest, mass], [ref, ref])
    assert scores["per_image"][0] == 0.0 and scores["per_image"][1] == pytest.approx(2 * 81 / (90 + 81))
    assert scores["dice"] == pytest.approx(2 * 81 / (144 + 90 + 2 * 81)) and scores["images_at_dice_0"] == 1
    same = sweep.paired_bootstrap(scores["counts"], scores["counts"], n=50)
    assert same["observed"] == 0.0 and same["share_not_better"] == 1.0
    better = sweep.paired_bootstrap([(81, 9, 0)] * 3, [(0, 144, 81)] * 3, n=50)
    assert better["q2.5"] > 0.9 and better["share_not_better"] == 0.0
