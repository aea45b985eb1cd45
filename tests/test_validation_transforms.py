import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medcnn.transforms import CheckImage, CheckImaged, CheckImageLabeld, InvalidInputError


def _mt(arr, name):
    return MetaTensor(torch.as_tensor(arr), meta={"filename_or_obj": name})


def test_valid_pair_passes_unchanged():
    img = _mt(np.random.rand(1, 4, 5, 6).astype(np.float32), "case1_img.nii.gz")
    lab = _mt(np.random.randint(0, 3, (1, 4, 5, 6)), "case1_lab.nii.gz")
    out = CheckImageLabeld(spatial_dims=3, allowed_labels=(0, 1, 2))({"image": img, "label": lab})
    assert out["image"] is img and out["label"] is lab


@pytest.mark.parametrize(
    "image,label,kwargs,msg",
    [
        (np.full((1, 4, 4, 4), np.nan, np.float32), np.zeros((1, 4, 4, 4)), {}, r"img\.nii\.gz: image contains 64 NaN"),
        (np.zeros((1, 4, 4, 4), np.float32), np.full((1, 4, 4, 4), 7), {"allowed_labels": (0, 1, 2)},
         r"lab\.nii\.gz: label has value\(s\) 7 outside the declared classes \{0, 1, 2\}"),
        (np.zeros((1, 4, 4, 4), np.float32), np.zeros((1, 4, 4, 5)), {},
         r"img\.nii\.gz: image has spatial shape \(4, 4, 4\) but label"),
        (np.zeros((1, 2, 4, 4, 4), np.float32), np.zeros((1, 2, 4, 4, 4)), {"spatial_dims": 3},
         r"img\.nii\.gz: image has shape \(1, 2, 4, 4, 4\) .* a 3D image"),
        (np.zeros((1, 4, 4), np.float32), np.zeros((1, 4, 4)), {"require_foreground": True},
         r"lab\.nii\.gz: label is empty"),
    ],
)
def test_bad_inputs_name_the_file(image, label, kwargs, msg):
    data = {"image": _mt(image, "/data/img.nii.gz"), "label": _mt(label, "/data/lab.nii.gz")}
    with pytest.raises(InvalidInputError, match=msg):
        CheckImageLabeld(**kwargs)(data)


def test_array_and_dict_versions_agree():
    arr = np.zeros((2, 3, 3), np.float32)
    arr[0, 0, 0] = np.inf
    with pytest.raises(InvalidInputError, match="<array>: image contains 1 NaN or infinite"):
        CheckImage()(arr)
    with pytest.raises(InvalidInputError, match="<array>: flair contains 1 NaN"):
        CheckImaged(keys="flair")({"flair": arr})
    with pytest.raises(InvalidInputError, match="2 channel"):
        CheckImage(num_channels=1)(arr)
