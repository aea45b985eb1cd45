"""LGG TIFF data: datalist of patient folders and TIFF volumes, the colour TIFF reader, mask -> slice label, the
recorded patient split, and bad input (each error names the file)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
from bundle_helpers import bundle_root
from monai.bundle import ConfigParser

from medcnn.data.lgg import (
    LGGDataError,
    expand_volume_datalist,
    lgg_datalist,
    lgg_patient_slices,
    lgg_patient_split,
    lgg_patients,
    load_lgg_datalist,
    load_split,
)
from medcnn.data.tiff import StackReadError
from medcnn.data.tiff_pages import read_tiff_pages, write_tiff_pages
from medcnn.transforms import InvalidInputError
from medcnn.transforms.mask import BinaryMask, MaskPresence

ROOT = bundle_root("lgg_tumour_localisation")


def write_slice(folder, patient: str, n: int, image: np.ndarray, mask: np.ndarray):
    """Write slice ``n`` of ``patient`` as the LGG dataset does (RGB image TIFF + grey mask TIFF)."""
    folder.mkdir(parents=True, exist_ok=True)
    img = folder / f"{patient}_{n}.tif"
    msk = folder / f"{patient}_{n}_mask.tif"
    tifffile.imwrite(img, image, photometric="rgb" if image.ndim == 3 else "minisblack")
    tifffile.imwrite(msk, mask, photometric="minisblack")
    return img, msk


def make_patient(root, patient: str, n_slices: int = 6, tumour=range(2, 4), size: int = 32, seed: int = 0):
    """A synthetic patient folder: a bright disc in every slice (brain), a brighter blob in the tumour slices."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    brain = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.4 * size) ** 2
    for n in range(1, n_slices + 1):
        img = (brain[..., None] * 80 + rng.integers(0, 20, (size, size, 3))).astype(np.uint8)
        mask = np.zeros((size, size), np.uint8)
        if n - 1 in tumour:
            cy, cx = rng.integers(size // 3, 2 * size // 3, 2)
            blob = (yy - cy) ** 2 + (xx - cx) ** 2 < (size / 8) ** 2
            img[blob] = 230
            mask[blob] = 255
        write_slice(root / patient, patient, n, img, mask)
    return root / patient


def _bundle_preprocessing(**override):
    """The bundle's deterministic transform list (``validate#preprocessing`` of train.json) at 16 x 16."""
    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "train.json"))
    parser["bundle_root"] = str(ROOT)
    parser["spatial_size"] = [16, 16]
    for key, value in override.items():
        parser[key] = value
    return parser.get_parsed_content("validate#preprocessing")


@pytest.fixture(scope="module")
def preprocessing():
    """The bundle's deterministic transform list (2D input)."""
    return _bundle_preprocessing()


def _invalid(exc: BaseException) -> BaseException:
    """The file-naming error inside MONAI's ``applying transform`` wrappers."""
    while exc is not None and not isinstance(exc, (InvalidInputError, StackReadError, LGGDataError)):
        exc = exc.__cause__
    assert exc is not None
    return exc


def test_patient_folder_gives_ordered_slices_with_labels(tmp_path, preprocessing):
    make_patient(tmp_path, "TCGA_AA_0001_20000101", n_slices=11, tumour=[9, 10])
    items = lgg_datalist(tmp_path)
    assert [i["id"] for i in items][:3] == [f"TCGA_AA_0001_20000101_{n}" for n in (1, 2, 3)]
    assert [i["slice_index"] for i in items] == list(range(11))  # 2 before 10 (numeric order)
    out = [preprocessing(i) for i in items]
    assert [int(o["label"]) for o in out] == [0] * 9 + [1, 1]
    assert tuple(out[0]["image"].shape) == (3, 16, 16) and tuple(out[0]["mask"].shape) == (1, 16, 16)
    assert out[0]["image"].dtype == torch.float32 and set(torch.unique(out[9]["mask"]).tolist()) == {0.0, 1.0}


def test_volume_and_slice_files_give_the_same_samples(tmp_path, preprocessing):
    folder = make_patient(tmp_path / "slices", "P1", n_slices=5, tumour=[1, 2])
    slices = lgg_patient_slices(folder)
    images = np.stack([tifffile.imread(i["image"]) for i in slices])
    masks = np.stack([tifffile.imread(i["mask"]) for i in slices])
    write_tiff_pages(images, tmp_path / "vol" / "P1.tif")
    write_tiff_pages(masks, tmp_path / "vol" / "P1_mask.tif")
    np.testing.assert_array_equal(read_tiff_pages(tmp_path / "vol" / "P1.tif"), images)
    (tmp_path / "vol" / "list.json").write_text(json.dumps([{"image": "P1.tif", "mask": "P1_mask.tif"}]))
    volume = load_lgg_datalist(tmp_path / "vol" / "list.json")
    assert [(v["patient"], v["slice"], v["slice_index"]) for v in volume] == [("P1", k, k) for k in range(5)]
    for a, b in zip(slices, volume, strict=True):
        pa, pb = preprocessing(a), preprocessing(b)
        torch.testing.assert_close(pa["image"].as_tensor(), pb["image"].as_tensor())
        torch.testing.assert_close(pa["mask"].as_tensor(), pb["mask"].as_tensor())
        assert int(pa["label"]) == int(pb["label"])


def test_patient_split_is_stratified_disjoint_and_recorded():
    patients = [f"TCGA_{site}_{i:04d}_2000" for site in ("CS", "DU", "FG", "HT") for i in range(5)]
    split = lgg_patient_split(patients, n_validation=4, n_test=4, seed=0)
    assert {p.split("_")[1] for p in split["test"]} == {"CS", "DU", "FG", "HT"}
    assert sorted(split["train"] + split["validation"] + split["test"]) == sorted(patients)
    assert split == lgg_patient_split(patients, n_validation=4, n_test=4, seed=0)
    recorded = json.loads((ROOT / "configs" / "split.json").read_text())
    again = lgg_patient_split(recorded["train"] + recorded["validation"] + recorded["test"],
                              recorded["n_validation"], recorded["n_test"], recorded["seed"])
    assert {k: recorded[k] for k in ("train", "validation", "test")} == again  # the file is what the function made
    assert load_split(ROOT / "configs" / "split.json")["test"] == recorded["test"]


@pytest.mark.realdata
def test_real_dataset_counts_match_its_source(data_dir):
    root = data_dir("lgg_flair_tiff")
    items = lgg_datalist(root)
    assert len(lgg_patients(root)) == 30 and len(items) == 1025  # SOURCE.md
    split = load_split(ROOT / "configs" / "split.json")
    assert sorted(split["train"] + split["validation"] + split["test"]) == lgg_patients(root)
    masks = [tifffile.imread(i["mask"]) for i in items if i["patient"] == "TCGA_CS_4941_19960909"]
    assert sum(bool(m.any()) for m in masks) == 8  # SOURCE.md: 8 tumour slices of 23


def test_binary_mask_and_presence():
    m = torch.zeros(1, 4, 4, dtype=torch.uint8)
    assert int(MaskPresence()(m)) == 0
    m[0, 1, 1] = 255
    assert BinaryMask()(m).max() == 1 and int(MaskPresence()(m)) == 1
    assert int(MaskPresence(min_pixels=2)(m)) == 0
    m[0, 2, 2] = 1
    with pytest.raises(InvalidInputError, match="binary mask"):
        BinaryMask()(m)  # 0/1 mixed with 0/255


# -- bad input: every error names the file ------------------------------------------------------------------------

def _good_slice():
    img = np.full((32, 32, 3), 50, np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[10:14, 10:14] = 255
    return img, mask


@pytest.mark.parametrize("problem, named, pattern", [
    ("mask_size", "P_1.tif", r"spatial shape .* but mask"),
    ("mask_values", "P_1_mask.tif", r"values \{0, 128, 255\}; expected a binary mask"),
    ("one_channel", "P_1.tif", r"1 channel\(s\) .*expected 3"),
    ("truncated", "P_1.tif", r"not readable as a TIFF"),
])
def test_bad_slice_is_refused_with_the_file_named(tmp_path, preprocessing, problem, named, pattern):
    img, mask = _good_slice()
    if problem == "mask_size":
        mask = mask[:30, :30]
    elif problem == "mask_values":
        mask[0, 0] = 128
    elif problem == "one_channel":
        img = img[..., 0]
    image_file, mask_file = write_slice(tmp_path / "P", "P", 1, img, mask)
    if problem == "truncated":
        image_file.write_bytes(image_file.read_bytes()[:200])
    item = lgg_patient_slices(tmp_path / "P")[0]
    with pytest.raises(Exception) as info:
        preprocessing(item)
    err = str(_invalid(info.value))
    import re

    assert err.split(":")[0].endswith(named), err
    assert re.search(pattern, err), err


def test_patient_folder_without_masks_is_refused(tmp_path):
    img, mask = _good_slice()
    _, m = write_slice(tmp_path / "P", "P", 1, img, mask)
    m.unlink()
    with pytest.raises(LGGDataError, match=r"P: patient folder has no masks"):
        lgg_patient_slices(tmp_path / "P")


def test_duplicate_slice_number_and_missing_mask_are_refused(tmp_path):
    img, mask = _good_slice()
    write_slice(tmp_path / "P", "P", 5, img, mask)
    write_slice(tmp_path / "P", "P", 6, img, mask)
    tifffile.imwrite(tmp_path / "P" / "P_05.tif", img, photometric="rgb")
    with pytest.raises(LGGDataError, match=r"P_5.tif: duplicate slice number 5 \(also .*P_05.tif\)"):
        lgg_patient_slices(tmp_path / "P")
    (tmp_path / "P" / "P_5.tif").unlink()
    (tmp_path / "P" / "P_6_mask.tif").unlink()
    with pytest.raises(LGGDataError, match=r"P_6.tif: slice 6 has no mask"):
        lgg_patient_slices(tmp_path / "P")


def test_volume_with_a_mask_stack_of_another_length_is_refused(tmp_path):
    img, mask = _good_slice()
    write_tiff_pages(np.stack([img] * 4), tmp_path / "v.tif")
    write_tiff_pages(np.stack([mask] * 3), tmp_path / "v_mask.tif")
    with pytest.raises(LGGDataError, match=r"v.tif: image volume has 4 slices but its mask .*v_mask.tif has 3"):
        expand_volume_datalist([{"image": str(tmp_path / "v.tif"), "mask": str(tmp_path / "v_mask.tif")}])
    write_tiff_pages(np.stack([img] * 2), tmp_path / "w.tif")
    with pytest.raises(StackReadError, match="missing.tif: no such file"):
        expand_volume_datalist([{"image": str(tmp_path / "w.tif"), "mask": str(tmp_path / "missing.tif")}])


def test_missing_dataset_folder_is_named(tmp_path):
    with pytest.raises(LGGDataError, match=r"nowhere: LGG dataset folder not found \(set dataset_dir"):
        lgg_datalist(tmp_path / "nowhere", ["P"])


@pytest.fixture(scope="module")
def preprocessing_2p5d():
    """The bundle's deterministic transform list with 2.5D input (``context`` 1: 9 channels)."""
    return _bundle_preprocessing(context=1)


def test_neighbours_repeat_the_edge_slices_and_stack_as_channels(tmp_path, preprocessing_2p5d):
    folder = make_patient(tmp_path, "P2", n_slices=4, tumour=[1])
    items = lgg_datalist(tmp_path, context=1)
    files = [i["image"] for i in items]
    assert [i["image_neighbours"] for i in items] == [
        [[files[0], 0], [files[1], 0]], [[files[0], 0], [files[2], 0]],
        [[files[1], 0], [files[3], 0]], [[files[2], 0], [files[3], 0]]]
    assert "image_neighbours" not in lgg_datalist(tmp_path)[0]  # 2D items unchanged
    out = preprocessing_2p5d(items[1])
    assert tuple(out["image"].shape) == (9, 16, 16) and "image_neighbours" not in out
    # channels 0-2: the slice itself (the 2D input), 3-5: slice z-1, 6-8: slice z+1
    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "train.json"))
    parser["bundle_root"], parser["spatial_size"] = str(ROOT), [16, 16]
    flat, items_2d = parser.get_parsed_content("validate#preprocessing"), lgg_datalist(tmp_path)
    torch.testing.assert_close(out["image"][:3].as_tensor(), flat(items_2d[1])["image"].as_tensor())
    torch.testing.assert_close(out["image"][3:6].as_tensor(), flat(items_2d[0])["image"].as_tensor())
    torch.testing.assert_close(out["image"][6:].as_tensor(), flat(items_2d[2])["image"].as_tensor())
    assert int(out["label"]) == 1 and tuple(out["mask"].shape) == (1, 16, 16)
    # FLAIR-only neighbours (neighbour_channels [1]): the slice's 3 sequences + FLAIR of z-1 and z+1
    parser["context"], parser["neighbour_channels"] = 1, [1]
    assert parser.get_parsed_content("in_channels") == 5
    flair = parser.get_parsed_content("validate#preprocessing")(items[1])["image"]
    assert tuple(flair.shape) == (5, 16, 16)
    torch.testing.assert_close(flair[3:].as_tensor(), out["image"][[4, 7]].as_tensor())
    # a neighbour of another size is refused with its file named
    tifffile.imwrite(folder / "P2_3.tif", np.zeros((24, 24, 3), np.uint8), photometric="rgb")
    with pytest.raises(Exception) as info:
        preprocessing_2p5d(items[1])
    assert "P2_3.tif" in str(_invalid(info.value)) and "neighbouring slice" in str(_invalid(info.value))
    (folder / "P2_1.tif").unlink()  # a neighbour named by the datalist but gone: its file is named
    with pytest.raises(Exception) as info:
        preprocessing_2p5d(items[1])
    assert "P2_1.tif" in str(_invalid(info.value))


def test_volume_and_slice_files_give_the_same_2p5d_samples(tmp_path, preprocessing_2p5d):
    folder = make_patient(tmp_path / "slices", "P1", n_slices=5, tumour=[1, 2])
    slices = lgg_patient_slices(folder)
    write_tiff_pages(np.stack([tifffile.imread(i["image"]) for i in slices]), tmp_path / "vol" / "P1.tif")
    write_tiff_pages(np.stack([tifffile.imread(i["mask"]) for i in slices]), tmp_path / "vol" / "P1_mask.tif")
    (tmp_path / "vol" / "list.json").write_text(json.dumps([{"image": "P1.tif", "mask": "P1_mask.tif"}]))
    volume = load_lgg_datalist(tmp_path / "vol" / "list.json", context=1)
    vol = str(tmp_path / "vol" / "P1.tif")
    assert volume[0]["image_neighbours"] == [[vol, 0], [vol, 1]]
    assert volume[4]["image_neighbours"] == [[vol, 3], [vol, 4]]
    for a, b in zip(lgg_datalist(tmp_path / "slices", context=1), volume, strict=True):
        pa, pb = preprocessing_2p5d(a), preprocessing_2p5d(b)
        assert tuple(pa["image"].shape) == (9, 16, 16)
        torch.testing.assert_close(pa["image"].as_tensor(), pb["image"].as_tensor())
        assert int(pa["label"]) == int(pb["label"])
