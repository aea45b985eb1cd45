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
    # the draws are random: seed them as the bundle's `run` list does before training, so the counts below are those
    # of one reproducible draw (unseeded, 40 draws gave 6-15 tumour-free slices in 30 repeats and 4 once in CI)
    parser.get_parsed_content("train#slice_sampler").set_random_state(seed=0)
    parser.get_parsed_content("train#preprocessing").set_random_state(seed=0)
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
    assert train["load_transforms"] == "$medcnn.data.brats_volume_transforms(@volume_keys)"  # shared with the localiser
    wf = make_workflow(NAME, ["train.json", "evaluate.json"], "eval")
    names = [type(t).__name__ for t in wf.parser.get_parsed_content("load_transforms")]
    assert names[0] == "LoadImageCheckedd" and "BrainZScored" in names
    steps = [type(t).__name__ for t in wf.parser.get_parsed_content("validate#preprocessing").transforms]
    assert steps[:2] == ["LoadImageCheckedd", "EnsureChannelFirstd"] and "CopyItemsd" in steps  # native copies


def test_brain_zscore_of_a_constant_modality_names_the_file(tmp_path):
    from monai.data import MetaTensor

    img = MetaTensor(torch.ones(2, 4, 4, 3), meta={"filename_or_obj": "/data/case7/T1c.nii.gz"})
    with pytest.raises(InvalidInputError, match=r"/data/case7/T1c.nii.gz: .*constant inside the brain"):
        BrainZScored("image", mask_key="brainmask")({"image": img, "brainmask": torch.ones(1, 4, 4, 3)})


# --- the localiser's slice pieces: selection, hemispheres, slice-class sampling, every-slice iteration ---------------

LOC = "brats_tumour_localisation"


def _volume(depth: int = 12, tumour=(4, 5, 6), ambiguous=(8,)):
    """(2, 8, 6, D) image with brain on slices 1 ... D - 2, (1, 8, 6, D) label: a 6-pixel tumour in the first half
    of ``tumour`` slices, a 1-pixel one on ``ambiguous`` slices; slice z of the image holds the value z + 1."""
    from monai.data import MetaTensor

    img = torch.zeros(2, 8, 6, depth)
    for z in range(1, depth - 1):
        img[:, 1:7, 1:5, z] = z + 1
    label = torch.zeros(1, 8, 6, depth)
    for z in tumour:
        label[0, 1:3, 1:4, z] = 1
    for z in ambiguous:
        label[0, 2, 2, z] = 1
    meta = {"filename_or_obj": "/data/c1/flair.nii.gz"}
    return {"image": MetaTensor(img, meta=dict(meta)), "label": MetaTensor(label, meta=dict(meta)), "case": "c1"}


def test_select_slices_keeps_brain_and_unambiguous_slices_with_their_original_numbers():
    from medcnn.transforms import SelectSlicesd

    d = SelectSlicesd(["image", "label"], min_brain_fraction=0.1, min_label_pixels=3)(_volume())
    kept = [z for z in range(1, 11) if z != 8]  # slices 0 and 11 have no brain, 8 has a 1-pixel tumour
    assert d["image"].meta["slice_indices"] == d["label"].meta["slice_indices"] == kept
    assert d["image"].meta["volume_depth"] == 12  # the volume's slice count, not the last kept slice + 1 (11)
    assert d["image"][0, 3, 3].tolist() == [z + 1 for z in kept]
    # the block split that follows speaks of the volume's own slice numbers, not of positions
    val = SliceBlocksd(["image", "label"], block=3, every=2, offset=1, validation=True)(d)
    assert val["image"].meta["slice_indices"] == [3, 4, 5, 9, 10]
    assert val["image"][0, 3, 3].tolist() == [4.0, 5.0, 6.0, 10.0, 11.0]
    assert val["image"].meta["volume_depth"] == 12
    with pytest.raises(InvalidInputError, match=r"/data/c1/flair.nii.gz: no slice with brain"):
        SelectSlicesd(["image", "label"])({k: (v[..., :1] if k != "case" else v) for k, v in _volume().items()})


def test_hemisphere_stack_puts_left_then_right_halves_along_the_slice_axis():
    from medcnn.transforms import HemisphereStackd, SelectSlicesd

    d = SelectSlicesd(["image", "label"], min_label_pixels=3)(_volume())
    h = HemisphereStackd(["image", "label"])(d)
    n = d["image"].shape[-1]
    assert tuple(h["image"].shape) == (2, 4, 6, 2 * n)
    torch.testing.assert_close(h["image"][..., :n].as_tensor(), d["image"][:, :4].as_tensor())
    torch.testing.assert_close(h["image"][..., n:].as_tensor(), d["image"][:, 4:].as_tensor())
    assert h["label"].meta["hemisphere"] == ["L"] * n + ["R"] * n and h["label"].meta["volume_depth"] == 12
    # the tumour lies in the first half: left halves of tumour slices positive, every right half negative
    presence = [int(h["label"][..., k].sum() > 0) for k in range(2 * n)]
    assert presence[:n] == [int(z in (4, 5, 6)) for z in d["label"].meta["slice_indices"]] and sum(presence[n:]) == 0


def test_rand_slice_by_pos_neg_samples_by_slice_class_and_is_seeded():
    from medcnn.transforms import RandSliceByPosNegd

    vol = _volume(depth=40, tumour=(4,), ambiguous=())  # 1 tumour slice of 40: a voxel sampler would rarely hit it
    sampler = RandSliceByPosNegd(["image", "label"], label_key="label", num_samples=400, pos=1, neg=3)
    sampler.set_random_state(seed=0)
    items = sampler(vol)
    assert len(items) == 400 and tuple(items[0]["image"].shape) == (2, 8, 6) and items[0]["case"] == "c1"
    positive = [int(i["label"].sum() > 0) for i in items]
    assert all(i["slice_index"] == 4 for i, p in zip(items, positive, strict=True) if p)
    assert 70 <= sum(positive) <= 130  # pos / (pos + neg) = 1/4 of 400
    again = RandSliceByPosNegd(["image", "label"], label_key="label", num_samples=400, pos=1, neg=3)
    again.set_random_state(seed=0)
    assert [i["slice_index"] for i in again(vol)] == [i["slice_index"] for i in items]
    only_negative = _volume(depth=6, tumour=(), ambiguous=())
    assert all(int(i["label"].sum()) == 0 for i in sampler(only_negative))  # one class present: sample from it


def test_slice_iter_yields_every_slice_with_its_number_and_shares_other_keys():
    from monai.data import DataLoader, GridPatchDataset

    from medcnn.transforms import SelectSlicesd, SliceIterd

    d = SelectSlicesd(["image", "label"], min_label_pixels=3)(_volume())
    ds = GridPatchDataset([d, d], patch_iter=SliceIterd(["image", "label"], id_format="{case}_slice{slice_index:03d}"),
                          with_coordinates=False)
    items = list(ds)
    kept = d["image"].meta["slice_indices"]
    assert [i["slice_index"] for i in items] == kept + kept and items[0]["id"] == f"c1_slice{kept[0]:03d}"
    assert tuple(items[0]["image"].shape) == (2, 8, 6) and "slice_indices" not in items[0]["image"].meta
    assert {i["image"].meta["volume_depth"] for i in items} == {12}  # what a report numbers its slices against
    batch = next(iter(DataLoader(ds, batch_size=len(items))))  # slices of volumes of any depth collate
    assert tuple(batch["image"].shape) == (2 * len(kept), 2, 8, 6)


def test_localiser_training_samples_half_slices_from_cached_volumes(cases):
    wf = make_workflow(LOC, ["train.json"], "train", dataset_dir=str(cases), train_cases=["s1", "s2"],
                       slices_per_case=20, min_tumour_pixels=5, **{"validation_blocks#block": 4},
                       crop_size=[32, 32], spatial_size=[32, 32], hemisphere_crop_size=[-1, 32],
                       hemisphere_size=[16, 32], batch_size=8)
    wf.initialize()
    parser = wf.parser
    volumes = parser.get_parsed_content("train#volume_dataset")
    assert len(volumes) == 2  # one cached item per case, not per slice
    assert tuple(volumes[0]["image"].shape[:3]) == (2, 16, 32) and not hasattr(volumes[0]["image"], "meta")
    batches = list(parser.get_parsed_content("train#dataloader"))
    labels = torch.cat([b["label"] for b in batches])
    assert labels.shape == (40,) and set(labels.tolist()) <= {0, 1}
    assert 10 <= int(labels.sum()) <= 30  # pos = neg = 1: about half the draws are tumour half-slices
    assert tuple(batches[0]["image"].shape[1:]) == (2, 16, 32)
    val = list(parser.get_parsed_content("validate#dataset"))  # every validation half-slice, labelled
    assert len(val) > 0 and all(int(v["label"]) in (0, 1) for v in val)


def test_localiser_training_validation_and_evaluation_share_the_volume_transforms():
    import json

    from bundle_helpers import bundle_root

    configs = bundle_root(LOC) / "configs"
    train = json.loads((configs / "train.json").read_text())
    evaluate = json.loads((configs / "evaluate.json").read_text())
    assert train["volume_transforms"] == "$@load_transforms + @slice_selection"
    assert train["load_transforms"] == "$medcnn.data.brats_volume_transforms(@volume_keys)"
    assert train["train"]["deterministic_transforms"].startswith("$@volume_transforms + ")
    assert train["validate"]["volume_preprocessing"]["transforms"].startswith("$@volume_transforms + ")
    assert evaluate["validate#volume_dataset"]["transform"]["transforms"] == "@volume_transforms"
    assert evaluate["calibration"]["dataset"]["data"]["transform"]["transforms"].startswith("$@volume_transforms + ")
    assert "brats_slices" not in json.dumps(train) + json.dumps(evaluate)  # no Python-side slice lists
