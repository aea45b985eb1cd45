"""COCO masks: RLE codec (pinned to pycocotools output), polygons, round trips and bad COCO files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged
from PIL import Image

from medcnn.data.coco import CocoFormatError, load_coco_datalist, masks_to_coco
from medcnn.transforms.coco import (
    CocoAnnotationError,
    CocoToMask,
    CocoToMaskd,
    annotation_to_mask,
    mask_to_polygons,
    polygons_to_mask,
    rle_decode,
    rle_encode,
)
from medcnn.transforms.validation import InvalidInputError


def iou(a, b) -> float:
    a, b = np.asarray(a) != 0, np.asarray(b) != 0
    return float((a & b).sum() / max((a | b).sum(), 1))


def blobs(h: int = 48, w: int = 64) -> np.ndarray:
    """A (H, W) label mask with two categories: an ellipse (1) and a rotated square + small ellipse (2)."""
    yy, xx = np.mgrid[:h, :w]
    lab = np.zeros((h, w), np.uint8)
    lab[((yy - 20) / 14) ** 2 + ((xx - 20) / 10) ** 2 < 1] = 1
    lab[np.abs((yy - 30) + (xx - 48)) + np.abs((yy - 30) - (xx - 48)) < 18] = 2
    lab[((yy - 6) / 4) ** 2 + ((xx - 56) / 6) ** 2 < 1] = 2
    return lab


def test_rle_matches_pycocotools_strings():
    # reference strings produced by pycocotools 2.0.11 mask.encode on the same masks
    m = np.zeros((7, 9), np.uint8)
    m[1:4, 2:6] = 1
    m[5, 0] = m[6, 8] = m[0, 0] = 1
    assert rle_encode(m) == {"size": [7, 9], "counts": "014052K00000c0N"}
    m2 = np.zeros((40, 50), np.uint8)
    m2[3:30, 10:45] = 1
    m2[10:20, 20:30] = 0
    expected = "c<k0=000000000000000000\\OM33MM33MM33MM33MM33MM33MM33MM33MM33MM33a00000000000000000000000000000U6"
    assert rle_encode(m2)["counts"] == expected
    np.testing.assert_array_equal(rle_decode({"size": [40, 50], "counts": expected.encode()}), m2)
    # pycocotools rasterises this polygon to rows 1..3, columns 2..5
    ref = np.zeros((7, 9), np.uint8)
    ref[1:4, 2:6] = 1
    np.testing.assert_array_equal(polygons_to_mask([[2, 1, 6, 1, 6, 4, 2, 4]], 7, 9), ref)


@pytest.mark.parametrize("seed", range(5))
def test_rle_round_trip_exact(seed):
    rng = np.random.default_rng(seed)
    m = rng.random((int(rng.integers(1, 60)), int(rng.integers(1, 60)))) > rng.random()
    for compressed in (True, False):
        rle = rle_encode(m, compressed=compressed)
        assert isinstance(rle["counts"], str if compressed else list)
        np.testing.assert_array_equal(rle_decode(rle), m.astype(np.uint8))
    full, empty = np.ones((5, 4)), np.zeros((5, 4))
    assert rle_encode(full, compressed=False)["counts"] == [0, 20]
    np.testing.assert_array_equal(rle_decode(rle_encode(full)), full)
    np.testing.assert_array_equal(rle_decode(rle_encode(empty)), empty)


def _write_dataset(tmp_path, mode: str, compressed: bool = True):
    labels = {"a.png": blobs(), "b.png": np.flipud(blobs()).copy()}
    for name, lab in labels.items():
        Image.fromarray((lab * 80).astype(np.uint8)).save(tmp_path / name)
    coco = masks_to_coco(list(labels.items()), {1: "tumour", 2: "oedema"}, mode=mode, compressed=compressed)
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    return labels, coco


@pytest.mark.parametrize("mode,compressed", [("rle", True), ("rle", False), ("polygon", True)])
def test_masks_to_coco_to_masks_round_trip(tmp_path, mode, compressed):
    labels, _ = _write_dataset(tmp_path, mode, compressed)
    datalist = load_coco_datalist(tmp_path / "ann.json")
    assert [e["file_name"] for e in datalist] == ["a.png", "b.png"]
    pipeline = Compose([
        LoadImaged(keys="image", image_only=True),  # MONAI's PIL reader gives (W, H)
        EnsureChannelFirstd(keys="image", channel_dim="no_channel"),
        CocoToMaskd(keys="annotations", label_key="label", ref_key="image", mode="label", category_ids=[1, 2],
                    layout="WH"),
    ])
    for entry in datalist:
        out = pipeline(entry)
        assert out["label"].shape == out["image"].shape == (1, 64, 48)
        got = out["label"][0].numpy().T  # back to (H, W)
        ref = labels[entry["file_name"]]
        assert out["label"].meta["filename_or_obj"] == entry["image"]
        if mode == "rle":
            np.testing.assert_array_equal(got, ref)
        else:
            for c in (1, 2):
                assert iou(got == c, ref == c) > 0.95
        # the image itself encodes the label (value * 80): mask and image lie on the same pixels
        assert iou(out["image"][0].numpy() > 0, out["label"][0].numpy()) > (0.999 if mode == "rle" else 0.95)
    # per-category channels and a binary union in (H, W) layout from the datalist's height/width
    entry = load_coco_datalist(tmp_path / "ann.json")[0]
    multi = CocoToMaskd(keys="annotations", mode="multichannel", category_ids=[1, 2])(entry)["label"]
    binary = CocoToMaskd(keys="annotations")(entry)["label"]
    assert multi.shape == (2, 48, 64) and binary.shape == (1, 48, 64)
    assert iou(binary[0], labels["a.png"] > 0) > (0.999 if mode == "rle" else 0.95)
    assert iou(multi[1], labels["a.png"] == 2) > (0.999 if mode == "rle" else 0.95)


def test_polygons_of_smooth_shapes_iou():
    lab = blobs(96, 128)
    polys = mask_to_polygons(lab == 1)
    assert len(polys) == 1 and iou(polygons_to_mask(polys, 96, 128), lab == 1) > 0.99
    simple = mask_to_polygons(lab == 2, tolerance=0.5)
    assert len(simple) == 2 and iou(polygons_to_mask(simple, 96, 128), lab == 2) > 0.95


def test_bad_coco_files(tmp_path):
    _, coco = _write_dataset(tmp_path, "polygon")
    # missing image file
    bad = json.loads(json.dumps(coco))
    bad["images"][1]["file_name"] = "missing.png"
    (tmp_path / "missing.json").write_text(json.dumps(bad))
    with pytest.raises(CocoFormatError, match="missing.png.*does not exist") as info:
        load_coco_datalist(tmp_path / "missing.json")
    assert "missing.json" in str(info.value) and isinstance(info.value, InvalidInputError)
    # polygon outside the image
    bad = json.loads(json.dumps(coco))
    bad["annotations"][0]["segmentation"][0][0] = 200.0
    (tmp_path / "outside.json").write_text(json.dumps(bad))
    with pytest.raises(CocoFormatError, match="outside the image") as info:
        load_coco_datalist(tmp_path / "outside.json")
    assert "a.png" in str(info.value) and "annotation id 1" in str(info.value)
    # annotation for an unknown image id
    bad = json.loads(json.dumps(coco))
    bad["annotations"][2]["image_id"] = 99
    (tmp_path / "unknown.json").write_text(json.dumps(bad))
    with pytest.raises(CocoFormatError, match="image id 99, which is not in 'images'") as info:
        load_coco_datalist(tmp_path / "unknown.json")
    assert "unknown.json" in str(info.value)
    # unknown category, unreadable JSON, missing JSON
    bad = json.loads(json.dumps(coco))
    bad["annotations"][0]["category_id"] = 7
    (tmp_path / "cat.json").write_text(json.dumps(bad))
    with pytest.raises(CocoFormatError, match="unknown category 7"):
        load_coco_datalist(tmp_path / "cat.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(CocoFormatError, match="broken.json"):
        load_coco_datalist(tmp_path / "broken.json")
    with pytest.raises(CocoFormatError, match="not found"):
        load_coco_datalist(tmp_path / "nothing.json")


def test_bad_annotations_in_transform():
    rle = rle_encode(np.ones((4, 5)))
    with pytest.raises(CocoAnnotationError, match="scan.png: annotation id 3: RLE size"):
        annotation_to_mask({"id": 3, "segmentation": rle}, 5, 4, name="scan.png")
    with pytest.raises(CocoAnnotationError, match=">= 3 finite"):
        CocoToMask((10, 10))([{"id": 1, "segmentation": [[1, 1, 2, 2]]}])
    with pytest.raises(CocoAnnotationError, match="outside the image"):
        CocoToMask((10, 10))([{"id": 1, "segmentation": [[1, 1, 20, 1, 20, 5]]}])
    with pytest.raises(ValueError, match="multichannel"):
        CocoToMask((10, 10), mode="multichannel")
    # mask layout that does not match the loaded image is refused (non-square image)
    import torch
    from monai.data import MetaTensor

    img = MetaTensor(torch.zeros(1, 12, 8), meta={"filename_or_obj": "slice_007.png"})
    data = {"image": img, "annotations": [{"id": 1, "segmentation": [[1, 1, 5, 1, 5, 5]]}], "height": 8, "width": 12}
    with pytest.raises(InvalidInputError, match="slice_007.png.*layout='WH'"):
        CocoToMaskd(keys="annotations", ref_key="image")(data)
    assert CocoToMaskd(keys="annotations", ref_key="image", layout="WH")(data)["label"].shape == (1, 12, 8)


def test_label_values_and_pickling():
    import pickle

    anns = [{"id": 1, "category_id": 7, "segmentation": rle_encode(np.pad(np.ones((4, 4)), 2))},
            {"id": 2, "category_id": 3, "segmentation": [[0, 0, 3, 0, 3, 3, 0, 3]]}]
    out = CocoToMask((8, 8), mode="label")(anns)  # category ids as labels; later annotations win on overlap
    assert out.dtype == torch.uint8 and set(np.unique(out.numpy())) == {0, 3, 7}
    assert out[0, 2, 2] == 3 and out[0, 5, 5] == 7
    restored = pickle.loads(pickle.dumps(CocoToMaskd(keys="annotations", mode="label", category_ids=[3, 7])))
    lab = restored({"annotations": anns, "height": 8, "width": 8})["label"]
    assert set(np.unique(lab.numpy())) == {0, 1, 2}
