"""The synthetic bundle's --eval_datalist path checks its inputs: each bad entry is refused naming its file."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from medcnn.data.synthetic import load_labelled_arrays, synthetic_datalist
from medcnn.errors import user_error
from medcnn.transforms import InvalidInputError
from tests.bundle_helpers import read_metrics, run_workflow

SIZE = (64, 64)  # the bundle's training size


@pytest.fixture
def cases(tmp_path):
    """Four images of the bundle's own generator (test seed 2) as NIfTI image / mask files, two positive."""
    items = synthetic_datalist(4, 2, spatial_size=SIZE, positive_fraction=0.5)
    entries = []
    for i, item in enumerate(items):
        nib.save(nib.Nifti1Image(item["image"][0].astype(np.float32), np.eye(4)), tmp_path / f"img{i}.nii.gz")
        nib.save(nib.Nifti1Image(item["mask"][0].astype(np.uint8), np.eye(4)), tmp_path / f"msk{i}.nii.gz")
        entries.append({"image": str(tmp_path / f"img{i}.nii.gz"), "mask": str(tmp_path / f"msk{i}.nii.gz"),
                        "label": int(item["label"])})
    assert sorted(e["label"] for e in entries) == [0, 0, 1, 1]
    return entries


def _bad(entries, tmp_path, problem):
    entries = [dict(e) for e in entries]
    first_pos = next(i for i, e in enumerate(entries) if e["label"] == 1)
    target = entries[first_pos]
    if problem == "nan":
        arr = nib.load(target["image"]).get_fdata().astype(np.float32)
        arr[3, 4] = np.nan
        nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp_path / "nan.nii.gz")
        target["image"] = str(tmp_path / "nan.nii.gz")
    elif problem == "size":
        arr = nib.load(target["image"]).get_fdata().astype(np.float32)[:48, :48]
        nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp_path / "small.nii.gz")
        target["image"] = str(tmp_path / "small.nii.gz")
    elif problem == "label5":
        target["label"] = 5
    elif problem == "missing_mask":
        del target["mask"]
    elif problem == "truncated":
        data = open(target["image"], "rb").read()
        (tmp_path / "cut.nii.gz").write_bytes(data[: len(data) // 2])
        target["image"] = str(tmp_path / "cut.nii.gz")
    return entries, target["image"]


@pytest.mark.parametrize("problem,message", [
    ("nan", "NaN or infinite"), ("size", "differs from the bundle's (64, 64)"), ("label5", "must be 0"),
    ("missing_mask", "positive image without a 'mask'"), ("truncated", "cannot read image"),
])
def test_bad_entry_is_refused_by_name(cases, tmp_path, problem, message):
    entries, named = _bad(cases, tmp_path, problem)
    with pytest.raises(InvalidInputError) as info:
        load_labelled_arrays(entries, spatial_size=SIZE)
    assert str(info.value).startswith(named) and message in str(info.value), str(info.value)


def test_negative_without_mask_gets_an_empty_one(cases):
    entries = [dict(e) for e in cases]
    neg = next(e for e in entries if e["label"] == 0)
    del neg["mask"]
    items = load_labelled_arrays(entries, spatial_size=SIZE)
    assert all(it["mask"].shape == (1, *SIZE) for it in items)


def test_bundle_evaluation_names_the_bad_file_and_writes_no_metrics(cases, tmp_path):
    entries, named = _bad(cases, tmp_path, "nan")
    (tmp_path / "mine.json").write_text(json.dumps(entries))
    with pytest.raises(Exception) as info:
        run_workflow("synthetic_localisation", ["train.json", "evaluate.json"], "eval",
                     eval_datalist=str(tmp_path / "mine.json"), output_dir=str(tmp_path / "out"))
    assert str(user_error(info.value)).startswith(named)
    assert not (tmp_path / "out" / "metrics.json").exists()
    (tmp_path / "good.json").write_text(json.dumps(cases))
    run_workflow("synthetic_localisation", ["train.json", "evaluate.json"], "eval",
                 eval_datalist=str(tmp_path / "good.json"), output_dir=str(tmp_path / "ok"))
    m = read_metrics(tmp_path / "ok")
    assert m["n_images"] == 4 and m["accuracy"] >= 0.75  # the committed model on its own kind of images
