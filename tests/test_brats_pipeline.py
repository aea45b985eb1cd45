"""The BraTS segmentation bundle's MONAI data pipeline: file datalist -> LoadImaged -> BrainZScored -> slice blocks ->
positive / negative slice sampling, with training and evaluation sharing one deterministic transform list."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_helpers import make_workflow
from test_brats_data import make_brats_case

from medcnn.data import split_slices_by_block
from medcnn.transforms import BrainZScored, InvalidInputError, SliceBlocks, SliceBlocksd, slice_block_indices

NAME = "brats_tumour_segmentation"
TINY = {"crop_size": [32, 32], "spatial_size": [32, 32], "batch_size": 4, "validation_blocks#block": 4}


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("brats_pipeline")
    for i, name in enumerate(("s1", "s2")):
        make_brats_case(root, name, shape=(32, 32, 16), tumour_slices=range(3, 9), seed=i)
    return root


def test_slice_blocks_keep_the_split_of_the_slice_lists():
    vol = torch.arange(30, dtype=torch.float32).reshape(1, 1, 1, 30).repeat(2, 3, 3, 1)  # slice z holds the value z
    items = [{"slice_index": z} for z in range(30)]
    for validation in (False, True):
        expected = [i["slice_index"] for i in split_slices_by_block(items, 5, 3, 1, validation=validation)]
        out = SliceBlocks(block=5, every=3, offset=1, validation=validation)(vol)
        assert out.shape[:3] == (2, 3, 3) and out[0, 0, 0].tolist() == expected
        assert slice_block_indices(30, 5, 3, 1, validation) == expected
    d = SliceBlocksd(["image", "label"], block=5, every=3, offset=1, validation=True)({"image": vol, "label": vol[:1]})
    assert d["image"].shape[-1] == d["label"].shape[-1] == 10
    with pytest.raises(InvalidInputError, match="no validation slices among its 3 slices"):
        SliceBlocks(block=5, every=3, offset=1, validation=True)(vol[..., :3])


def test_training_draws_tumour_and_brain_slices_from_cached_volumes(cases):
    wf = make_workflow(NAME, ["train.json"], "train", dataset_dir=str(cases), train_cases=["s1", "s2"],
                       slices_per_case=20, **TINY)
    wf.initialize()
    parser = wf.parser
    volumes = parser.get_parsed_content("train#volume_dataset")
    assert len(volumes) == 2  # one cached item per case, not per slice
    vol = volumes[0]
    n_train = len(slice_block_indices(16, 4, 4, 2, validation=False))
    assert tuple(vol["image"].shape) == (2, 32, 32, n_train) and tuple(vol["label"].shape) == (1, 32, 32, n_train)
    brain = nib.load(str(cases / "s1" / "brainmask.nii.gz")).get_fdata() > 0.5
    inside = torch.as_tensor(brain)[None, ..., slice_block_indices(16, 4, 4, 2)]
    assert float(vol["image"][:, inside[0]].abs().sum()) > 0 and float(vol["image"][0][~inside[0]].abs().max()) == 0
    slices = [b for batch in parser.get_parsed_content("train#dataloader") for b in torch.unbind(batch["label"], 0)]
    images = [i for batch in parser.get_parsed_content("train#dataloader") for i in torch.unbind(batch["image"], 0)]
    assert len(slices) == 40 and tuple(slices[0].shape) == (1, 32, 32)
    tumour = np.array([bool(s.sum() > 0) for s in slices])
    # pos = neg = 1: half the draws centre on tumour; a negative draw centres on a non-tumour brain voxel, which may
    # lie on a tumour slice too (MONAI RandCropByPosNegLabeld), so tumour-free slices are a smaller share
    assert tumour.sum() >= 15 and (~tumour).sum() >= 5, tumour
    assert all(float(i.abs().sum()) > 0 for i in images)  # negatives come from brain slices, never empty ones
    val = parser.get_parsed_content("validate#dataset")
    assert tuple(val[0]["image"].shape) == (2, 32, 32, 16 - n_train)  # validation slices of the same volume


def test_training_and_evaluation_share_the_deterministic_transforms():
    import json

    from bundle_helpers import bundle_root

    configs = bundle_root(NAME) / "configs"
    train = json.loads((configs / "train.json").read_text())
    evaluate = json.loads((configs / "evaluate.json").read_text())
    assert train["train"]["deterministic_transforms"].startswith("$@volume_transforms + ")
    assert train["validate"]["preprocessing"]["transforms"].startswith("$@volume_transforms + ")
    assert evaluate["validate#preprocessing"]["transforms"] == "@volume_transforms"
    assert "volume_transforms" not in evaluate and "load_transforms" not in evaluate  # one list, in train.json
    names = [t["_target_"] for t in train["load_transforms"]]
    assert names[0] == "medcnn.transforms.LoadImageCheckedd" and "medcnn.transforms.BrainZScored" in names
    wf = make_workflow(NAME, ["train.json", "evaluate.json"], "eval")
    steps = [type(t).__name__ for t in wf.parser.get_parsed_content("validate#preprocessing").transforms]
    assert steps[:2] == ["LoadImageCheckedd", "EnsureChannelFirstd"] and "CopyItemsd" in steps  # native copies


def test_brain_zscore_of_a_constant_modality_names_the_file(tmp_path):
    from monai.data import MetaTensor

    img = MetaTensor(torch.ones(2, 4, 4, 3), meta={"filename_or_obj": "/data/case7/T1c.nii.gz"})
    with pytest.raises(InvalidInputError, match=r"/data/case7/T1c.nii.gz: .*constant inside the brain"):
        BrainZScored("image", mask_key="brainmask")({"image": img, "brainmask": torch.ones(1, 4, 4, 3)})
