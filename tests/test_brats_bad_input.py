"""BraTS segmenter: a truncated or 4D FLAIR is refused by name, not a bare EOFError or a channel-count error."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigParser

from medcnn.errors import user_error
from medcnn.transforms import InvalidInputError
from tests.bundle_helpers import BUNDLES

ROOT = BUNDLES / "brats_tumour_segmentation"
CASE = "brats_2013_pat0004_1"


@pytest.fixture(scope="module")
def preprocessing():
    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "inference.json"))
    parser["bundle_root"] = str(ROOT)
    return parser.get_parsed_content("preprocessing")


@pytest.fixture
def case(data_dir):
    folder = data_dir("brats2015_deepmedic_subset") / CASE
    return {"flair": str(folder / "Flair_subtrMeanDivStd.nii.gz"), "t1c": str(folder / "T1c_subtrMeanDivStd.nii.gz")}


def test_real_case_passes(case, preprocessing):
    out = preprocessing(case)
    assert out["image"].shape[0] == 2


def test_truncated_flair_is_named(case, preprocessing, tmp_path):
    data = open(case["flair"], "rb").read()
    cut = tmp_path / "Flair_truncated.nii.gz"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(Exception) as info:
        preprocessing({**case, "flair": str(cut)})
    err = user_error(info.value)
    assert isinstance(err, InvalidInputError) and str(err).startswith(str(cut)), info.value
    assert "cannot read image" in str(err)


def test_4d_flair_is_named(case, preprocessing, tmp_path):
    flair, t1c = nib.load(case["flair"]), nib.load(case["t1c"])
    both = np.stack([np.asarray(flair.dataobj), np.asarray(t1c.dataobj)], axis=-1)  # (H, W, D, 2): two modalities
    four_d = tmp_path / "Flair_4d.nii.gz"
    nib.save(nib.Nifti1Image(both, flair.affine), four_d)
    with pytest.raises(Exception) as info:
        preprocessing({**case, "flair": str(four_d)})
    err = user_error(info.value)
    assert isinstance(err, InvalidInputError) and str(err).startswith(str(four_d)), info.value
    assert "has 2 channel(s)" in str(err) and "4D file" in str(err)
