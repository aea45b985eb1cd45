"""A label whose affine differs from its image is refused by name, not compared voxel by voxel (real MSD cases)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigParser

from medcnn.errors import user_error
from medcnn.transforms import CheckImageLabeld, InvalidInputError
from tests.bundle_helpers import BUNDLES, run_workflow

HIPPO = BUNDLES / "hippocampus_segmentation"


@pytest.fixture
def case(data_dir, tmp_path) -> dict:
    """A held-out hippocampus case, plus its label saved with the first axis flipped in the header only."""
    ds = data_dir("msd_hippocampus")
    entry = json.loads((HIPPO / "configs" / "split.json").read_text())["test"][0]
    label = nib.load(ds / entry["label"])
    flipped = label.affine.copy()
    flipped[:3, 0] *= -1  # axis 0 runs the other way: same voxels, mirrored in space
    bad = tmp_path / "label_flipped.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj), flipped), bad)
    shifted = label.affine.copy()
    shifted[:3, 3] += 5.0
    moved = tmp_path / "label_shifted.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj), shifted), moved)
    return {"image": str(ds / entry["image"]), "label": str(ds / entry["label"]), "flipped": str(bad),
            "shifted": str(moved)}


@pytest.fixture(scope="module")
def preprocessing():
    parser = ConfigParser()
    parser.read_config([str(HIPPO / "configs" / "train.json"), str(HIPPO / "configs" / "evaluate.json")])
    parser["bundle_root"] = str(HIPPO)
    return parser.get_parsed_content("validate#preprocessing")


def test_label_on_the_image_grid_passes(case, preprocessing):
    out = preprocessing({"image": case["image"], "label": case["label"]})
    assert out["image"].shape[1:] == out["label"].shape[1:]


@pytest.mark.parametrize("which,hint", [("flipped", "axis [0] flipped"), ("shifted", "by up to 5")])
def test_label_with_another_affine_is_refused_by_name(case, preprocessing, which, hint):
    with pytest.raises(Exception) as info:
        preprocessing({"image": case["image"], "label": case[which]})
    err = user_error(info.value)
    assert isinstance(err, InvalidInputError), info.value
    assert str(err).startswith(case[which]) and case["image"] in str(err) and hint in str(err)


def test_affine_check_can_be_switched_off_for_arrays_the_user_aligned(case):
    from monai.transforms import EnsureChannelFirstd, LoadImaged

    d = EnsureChannelFirstd(["image", "label"], channel_dim="no_channel")(
        LoadImaged(["image", "label"], image_only=True)({"image": case["image"], "label": case["flipped"]}))
    CheckImageLabeld(["image", "label"], same_affine=False)(d)
    with pytest.raises(InvalidInputError):
        CheckImageLabeld(["image", "label"])(d)


def test_bundle_evaluation_of_a_flipped_label_names_it(case, tmp_path):
    (tmp_path / "mine.json").write_text(json.dumps([{"image": case["image"], "label": case["flipped"]}]))
    with pytest.raises(Exception) as info:
        run_workflow("hippocampus_segmentation", ["train.json", "evaluate.json"], "train",
                     eval_datalist=str(tmp_path / "mine.json"), output_dir=str(tmp_path / "out"))
    assert str(user_error(info.value)).startswith(case["flipped"])
    assert not (tmp_path / "out" / "metrics.json").exists()
