"""BraTS slice extraction: labels and masks agree, splits are by case / slice block, bad cases are named."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medcnn.data import (
    BRATS_FILE_NAMES,
    BratsDataError,
    brats_case_datalist,
    brats_slices,
    load_brats_case,
    split_slices_by_block,
)
from medcnn.data.brats import extract_brats_slices, slice_summary

AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])


def _save(path: Path, data: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(data, AFFINE), str(path))


def make_brats_case(
    root: Path, name: str, shape=(40, 40, 12), tumour_slices=range(4, 9), seed: int = 0, brainmask: bool = True
) -> Path:
    """Write a small synthetic BraTS-style case: ellipse brain, a bright multi-label 'tumour' on some slices."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    h, w, d = shape
    yy, xx = np.mgrid[:h, :w]
    brain2d = ((yy - h / 2) / (0.42 * h)) ** 2 + ((xx - w / 2) / (0.38 * w)) ** 2 <= 1
    brain = np.repeat(brain2d[..., None], d, axis=2)
    brain[..., 0] = False  # first slice outside the brain
    label = np.zeros(shape, np.float32)
    cy, cx = h // 2 + 3, w // 2 - 4
    for z in tumour_slices:
        r = 3 + (z % 3)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        core = (yy - cy) ** 2 + (xx - cx) ** 2 <= max(1, r - 2) ** 2
        label[..., z][disc] = 2
        label[..., z][core] = 4
    if d > 10:
        label[cy, cx, 10] = 1  # one-pixel tumour: an ambiguous slice
    flair = np.where(brain, rng.normal(0, 1, shape), -5.0).astype(np.float32)
    flair[label > 0] += 4.0
    t1c = np.where(brain, rng.normal(0, 1, shape), -4.0).astype(np.float32)
    t1c[label == 4] += 3.0
    _save(folder / BRATS_FILE_NAMES["flair"], flair)
    _save(folder / BRATS_FILE_NAMES["t1c"], t1c)
    _save(folder / BRATS_FILE_NAMES["label"], label)
    if brainmask:
        _save(folder / BRATS_FILE_NAMES["brainmask"], brain.astype(np.float64))
    return folder


def make_brats_cases(root: Path, shape: tuple[int, int, int], tumour_slices: range, names=("s1", "s2", "s3")) -> Path:
    """Write one :func:`make_brats_case` per name (seeds 0, 1, ...) into ``root``; returns ``root``."""
    for seed, name in enumerate(names):
        make_brats_case(root, name, shape=shape, tumour_slices=tumour_slices, seed=seed)
    return Path(root)


def test_slices_labels_and_masks_agree(tmp_path):
    make_brats_case(tmp_path, "caseA")
    entry = brats_case_datalist(tmp_path, ["caseA"])[0]
    assert set(entry) == {"case", "flair", "t1c", "label", "brainmask"}
    volume = load_brats_case(entry)
    assert volume["image"].shape == (2, 40, 40, 12) and volume["label"].dtype == np.uint8
    items = extract_brats_slices(volume, min_tumour_pixels=5)
    assert [i["slice_index"] for i in items] == list(range(1, 12))  # slice 0 has no brain
    for it in items:
        z = it["slice_index"]
        assert it["image"].shape == (2, 40, 40) and it["mask"].shape == (1, 40, 40)
        np.testing.assert_array_equal(it["mask"][0], volume["label"][..., z] > 0)
        np.testing.assert_array_equal(it["image"], volume["image"][..., z])
        assert it["tumour_pixels"] == int(it["mask"].sum())
        assert it["label"] == int(it["tumour_pixels"] >= 5)
        assert it["ambiguous"] == (0 < it["tumour_pixels"] < 5)
    assert [i["slice_index"] for i in items if i["label"]] == [4, 5, 6, 7, 8]
    assert [i["slice_index"] for i in items if i["ambiguous"]] == [10]
    # a classifier drops the ambiguous slice; a segmentation keeps it with its exact mask under another key
    kept = brats_slices([entry], min_tumour_pixels=5, drop_ambiguous=True)
    assert 10 not in [i["slice_index"] for i in kept] and len(kept) == 10
    seg = brats_slices([entry], min_tumour_pixels=5, mask_key="label", class_key="tumour_present")
    assert seg[9]["label"].sum() == 1 and seg[9]["tumour_present"] == 0
    assert slice_summary(items) == {"n_slices": 11, "n_positive": 5, "n_negative": 5, "n_ambiguous": 1,
                                    "cases": ["caseA"]}


def test_brain_fallback_without_mask_and_brain_fraction(tmp_path):
    make_brats_case(tmp_path, "nomask", brainmask=False)
    entry = brats_case_datalist(tmp_path, ["nomask"])[0]
    assert "brainmask" not in entry
    volume = load_brats_case(entry)
    assert not volume["brainmask"][..., 0].any() and volume["brainmask"][..., 5].sum() > 500
    assert len(extract_brats_slices(volume, min_brain_fraction=1.0)) == 11  # all brain slices are equal


def test_split_by_case_and_by_slice_block(tmp_path):
    for i, name in enumerate(["c1", "c2", "c3"]):
        make_brats_case(tmp_path, name, shape=(32, 32, 40), tumour_slices=range(10, 30), seed=i)
    train = brats_slices(brats_case_datalist(tmp_path, ["c1", "c2"]))
    test = brats_slices(brats_case_datalist(tmp_path, ["c3"]))
    assert {i["case"] for i in train} == {"c1", "c2"} and {i["case"] for i in test} == {"c3"}
    fit = split_slices_by_block(train, block=5, every=4, offset=2)
    val = split_slices_by_block(train, block=5, every=4, offset=2, validation=True)
    key = lambda items: {(i["case"], i["slice_index"]) for i in items}  # noqa: E731
    assert key(fit).isdisjoint(key(val)) and key(fit) | key(val) == key(train)
    assert {i["slice_index"] // 5 % 4 for i in val} == {2}
    assert {i["label"] for i in val} == {0, 1}
    with pytest.raises(ValueError, match="offset"):
        split_slices_by_block(train, every=4, offset=4)


def test_missing_case_and_file_are_named(tmp_path):
    with pytest.raises(BratsDataError, match="nothere"):
        brats_case_datalist(tmp_path, ["nothere"])
    folder = make_brats_case(tmp_path, "caseB")
    (folder / BRATS_FILE_NAMES["t1c"]).unlink()
    with pytest.raises(BratsDataError, match=r"T1c_subtrMeanDivStd\.nii\.gz: missing t1c"):
        brats_case_datalist(tmp_path, ["caseB"])
    entry = {"case": "caseB", "flair": str(folder / BRATS_FILE_NAMES["flair"]),
             "t1c": str(folder / "gone.nii.gz"), "label": str(folder / BRATS_FILE_NAMES["label"])}
    with pytest.raises(BratsDataError, match=r"gone\.nii\.gz: missing t1c file"):
        load_brats_case(entry)


def test_modality_shape_mismatch_is_named(tmp_path):
    folder = make_brats_case(tmp_path, "caseC")
    _save(folder / BRATS_FILE_NAMES["t1c"], np.zeros((40, 38, 12), np.float32))
    with pytest.raises(BratsDataError, match=r"T1c_subtrMeanDivStd\.nii\.gz: t1c has shape \(40, 38, 12\) but .*Flair"):
        load_brats_case(brats_case_datalist(tmp_path, ["caseC"])[0])
    folder = make_brats_case(tmp_path, "caseD")
    _save(folder / BRATS_FILE_NAMES["label"], np.zeros((40, 40, 11), np.float32))
    with pytest.raises(BratsDataError, match=r"OTMultiClass\.nii\.gz: label has shape"):
        load_brats_case(brats_case_datalist(tmp_path, ["caseD"])[0])


def test_bad_label_values_and_nan_are_named(tmp_path):
    folder = make_brats_case(tmp_path, "caseE")
    label = np.zeros((40, 40, 12), np.float32)
    label[5, 5, 5] = 7
    label[6, 6, 6] = 2.5
    _save(folder / BRATS_FILE_NAMES["label"], label)
    with pytest.raises(BratsDataError, match=r"OTMultiClass\.nii\.gz: label values \[2\.5, 7\.0\] outside"):
        load_brats_case(brats_case_datalist(tmp_path, ["caseE"])[0])
    folder = make_brats_case(tmp_path, "caseF")
    flair = np.zeros((40, 40, 12), np.float32)
    flair[1, 1, 1] = np.nan
    _save(folder / BRATS_FILE_NAMES["flair"], flair)
    with pytest.raises(BratsDataError, match=r"Flair_subtrMeanDivStd\.nii\.gz: flair contains NaN"):
        load_brats_case(brats_case_datalist(tmp_path, ["caseF"])[0])
    (folder / "broken.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(BratsDataError, match=r"broken\.nii\.gz: cannot read flair"):
        load_brats_case({"case": "x", "flair": str(folder / "broken.nii.gz"), "t1c": "", "label": ""})


def test_real_cases_slice_counts(data_dir):
    root = data_dir("brats2015_deepmedic_subset")
    items = brats_slices(brats_case_datalist(root, ["brats_2013_pat0004_1"]))
    summary = slice_summary(items)
    # SOURCE.md: 73 tumour slices, 130 brain slices; min_brain_fraction 0.1 drops 7 skull-cap slices
    assert summary == {"n_slices": 123, "n_positive": 69, "n_negative": 50, "n_ambiguous": 4,
                       "cases": ["brats_2013_pat0004_1"]}
    assert sum(1 for i in items if i["tumour_pixels"] > 0) == 73


def test_unlabelled_case_for_inference(tmp_path):
    folder = make_brats_case(tmp_path, "unlab")
    (folder / BRATS_FILE_NAMES["label"]).unlink()
    with pytest.raises(BratsDataError, match="missing label"):
        brats_case_datalist(tmp_path, ["unlab"])
    entries = brats_case_datalist(tmp_path, ["unlab"], require_label=False)
    assert "label" not in entries[0]
    items = brats_slices(entries, require_label=False)
    assert len(items) == 11 and {i["label"] for i in items} == {-1} and not any(i["mask"].any() for i in items)
    assert items[0]["id"] == "unlab_slice001"
    # unlabelled slices are neither positive nor negative (they were once counted as -1 positives each)
    summary = slice_summary(items)
    assert summary["n_positive"] == 0 and summary["n_negative"] == 0 and summary["n_unlabelled"] == 11


def test_hemispheres_split_masks_and_labels(tmp_path):
    from medcnn.data import brats_hemispheres

    make_brats_case(tmp_path, "caseH")
    slices = brats_slices(brats_case_datalist(tmp_path, ["caseH"]), min_tumour_pixels=5)
    halves = brats_hemispheres(slices, min_tumour_pixels=5, drop_ambiguous=False)
    assert len(halves) == 2 * len(slices)
    for whole, (left, right) in zip(slices, zip(halves[::2], halves[1::2], strict=True), strict=True):
        assert left["image"].shape == (2, 20, 40) and left["id"].endswith("_L") and right["hemisphere"] == "R"
        np.testing.assert_array_equal(np.concatenate([left["mask"], right["mask"]], axis=1), whole["mask"])
        np.testing.assert_array_equal(np.concatenate([left["image"], right["image"]], axis=1), whole["image"])
        for half in (left, right):
            assert half["tumour_pixels"] == int(half["mask"].sum())
            assert half["label"] == int(half["tumour_pixels"] >= 5)
    # the synthetic tumour is centred on row 23 with radius 3-5: slice 6 (radius 3) lies in the second half only,
    # slice 5 (radius 5) reaches 8 pixels into the first half
    assert [h["label"] for h in halves if h["slice_index"] == 6] == [0, 1]
    assert [h["tumour_pixels"] for h in halves if h["slice_index"] == 5][0] == 8


def test_brain_zscore_and_neighbouring_slices(tmp_path):
    from medcnn.data.brats import load_brats_case, normalise_in_brain

    make_brats_case(tmp_path, "c1", shape=(24, 24, 8), tumour_slices=range(2, 6))
    entry = brats_case_datalist(tmp_path, ["c1"])[0]
    volume = load_brats_case(entry)
    brain = volume["brainmask"]
    scaled = dict(volume, image=3.0 * volume["image"] - 7.0)  # another scanner / normalisation of the same case
    for vol in (volume, scaled):
        z = normalise_in_brain(vol["image"], brain)
        for c in range(2):
            assert abs(z[c][brain].mean()) < 1e-4 and abs(z[c][brain].std() - 1) < 1e-3
            assert np.all(z[c][~brain] == 0)  # background identical in every case
    np.testing.assert_allclose(normalise_in_brain(volume["image"], brain), normalise_in_brain(scaled["image"], brain),
                               atol=1e-4)
    with pytest.raises(BratsDataError, match="empty brain"):
        normalise_in_brain(volume["image"], np.zeros_like(brain))

    flat = brats_slices([entry], min_brain_fraction=0.0)
    ctx = brats_slices([entry], min_brain_fraction=0.0, context=1, normalise="brain_zscore")
    assert [i["slice_index"] for i in ctx] == [i["slice_index"] for i in flat]
    assert ctx[0]["image"].shape == (6, 24, 24)  # (FLAIR z-1, z, z+1, T1c z-1, z, z+1)
    zn = normalise_in_brain(volume["image"], brain)
    k = 3
    item = next(i for i in ctx if i["slice_index"] == k)
    np.testing.assert_allclose(item["image"][[0, 1, 2]], zn[0][..., [k - 1, k, k + 1]].transpose(2, 0, 1))
    np.testing.assert_allclose(item["image"][4], zn[1][..., k])
    last = next(i for i in ctx if i["slice_index"] == 7)
    np.testing.assert_allclose(last["image"][2], last["image"][1])  # edge slice repeated
    with pytest.raises(ValueError, match="normalise must be one of"):
        brats_slices([entry], normalise="minmax")


def test_brain_zscore_transform_matches_the_slice_normalisation(tmp_path):
    import torch
    from monai.data import MetaTensor

    from medcnn.data.brats import load_brats_case, normalise_in_brain
    from medcnn.transforms import BrainZScore, BrainZScored

    make_brats_case(tmp_path, "c1", shape=(24, 24, 8), tumour_slices=range(2, 6))
    volume = load_brats_case(brats_case_datalist(tmp_path, ["c1"])[0])
    expected = normalise_in_brain(volume["image"], volume["brainmask"])
    img = MetaTensor(torch.from_numpy(volume["image"]))
    out = BrainZScore()(img, volume["brainmask"][None])
    assert isinstance(out, MetaTensor) and out.shape == img.shape
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)
    # without a mask: the brain is where a channel is above its (background) minimum, as in load_brats_case
    derived = np.any(volume["image"] > volume["image"].min(axis=(1, 2, 3), keepdims=True), axis=0)
    np.testing.assert_allclose(BrainZScored("image")({"image": volume["image"]})["image"],
                               normalise_in_brain(volume["image"], derived), atol=1e-5)
    np.testing.assert_allclose(BrainZScored("image", mask_key="brain")(
        {"image": volume["image"], "brain": volume["brainmask"]})["image"], expected, atol=1e-5)
    with pytest.raises(ValueError, match="mask shape"):
        BrainZScore()(img, np.ones((3, 3)))
    with pytest.raises(ValueError, match="empty brain"):
        BrainZScore()(img, np.zeros((24, 24, 8)))


def test_datalist_entries_are_named_by_their_case_folder(tmp_path):
    from medcnn.data.brats import name_brats_cases

    entries = [{"flair": str(tmp_path / "caseA" / "Flair.nii.gz"), "t1c": "x", "label": "y"},
               {"case": "mine", "flair": str(tmp_path / "caseB" / "Flair.nii.gz")}]
    named = name_brats_cases(entries)
    assert [e["case"] for e in named] == ["caseA", "mine"] and "case" not in entries[0]  # input untouched
    with pytest.raises(BratsDataError, match="no 'flair' file"):
        name_brats_cases([{"t1c": "x"}])
