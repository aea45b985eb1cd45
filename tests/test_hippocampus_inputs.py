"""Bad inputs to the hippocampus bundle's preprocessing: each gives an InvalidInputError naming the case.

Small synthetic NIfTI files in a tmp dir; no real data, no network."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from bundle_helpers import bundle_root
from monai.bundle import ConfigParser

from medcnn.transforms import InvalidInputError, LoadImageChecked, LoadImageCheckedd

ROOT = bundle_root("hippocampus_segmentation")


def _causes(exc: BaseException) -> list[BaseException]:
    out = []
    while exc is not None:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def _invalid(exc: BaseException) -> InvalidInputError:
    """The InvalidInputError behind MONAI's ``RuntimeError("applying transform ...")`` wrapper."""
    found = [e for e in _causes(exc) if isinstance(e, InvalidInputError)]
    assert found, f"no InvalidInputError in the chain: {[str(e)[:200] for e in _causes(exc)]}"
    return found[0]


def _nifti(path, array, dtype=np.float32):
    nib.save(nib.Nifti1Image(np.asarray(array, dtype=dtype), np.diag([1.0, 1.0, 1.0, 1.0])), str(path))
    return str(path)


@pytest.fixture(scope="module")
def preprocessing():
    parser = ConfigParser()
    parser.read_config([str(ROOT / "configs" / "train.json"), str(ROOT / "configs" / "evaluate.json")])
    parser["bundle_root"] = str(ROOT)
    return parser.get_parsed_content("validate#preprocessing")


@pytest.fixture(scope="module")
def infer_preprocessing():
    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "inference.json"))
    parser["bundle_root"] = str(ROOT)
    return parser.get_parsed_content("preprocessing")


def _good(shape=(12, 14, 10)):
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 255, shape)
    lab = np.zeros(shape)
    lab[3:6, 4:8, 3:6] = 1
    lab[6:9, 4:8, 3:6] = 2
    return img, lab


def test_good_case_passes_and_is_padded(tmp_path, preprocessing):
    img, lab = _good()
    out = preprocessing({"image": _nifti(tmp_path / "i.nii.gz", img), "label": _nifti(tmp_path / "l.nii.gz", lab)})
    assert tuple(out["image"].shape) == (1, 16, 16, 16) and tuple(out["label"].shape) == (1, 16, 16, 16)
    # z-score normalised before the symmetric padding to a multiple of 8
    assert abs(float(out["image"][0, 2:14, 1:15, 3:13].mean())) < 1e-3
    assert float(out["image"][0, 0].abs().max()) == 0.0


@pytest.mark.parametrize(
    "problem, pattern",
    [
        ("shape_mismatch", r"spatial shape"),
        ("label_values", r"outside the declared classes"),
        ("four_d", r"3D"),
        ("nan", r"NaN"),
        ("unreadable", r"cannot read"),
    ],
)
def test_bad_case_names_the_file(tmp_path, preprocessing, problem, pattern):
    img, lab = _good()
    if problem == "shape_mismatch":
        lab = lab[:, :, :8]
    elif problem == "label_values":
        lab[0, 0, 0] = 3
    elif problem == "four_d":
        img = np.stack([img, img], axis=-1)
    elif problem == "nan":
        img[1, 2, 3] = np.nan
    case = f"hippocampus_{problem}.nii.gz"
    image = tmp_path / "imagesTr" / case
    label = tmp_path / "labelsTr" / case
    image.parent.mkdir()
    label.parent.mkdir()
    _nifti(image, img)
    _nifti(label, lab, np.uint8)
    if problem == "unreadable":
        image.write_bytes(b"this is not a nifti file")
    with pytest.raises(Exception) as info:
        preprocessing({"image": str(image), "label": str(label)})
    err = _invalid(info.value)
    assert case in str(err) and str(err).split(":")[0].endswith(case), str(err)
    import re

    assert re.search(pattern, str(err)), str(err)


def test_inference_rejects_4d_and_unreadable_images(tmp_path, infer_preprocessing):
    img, _ = _good()
    four_d = _nifti(tmp_path / "case_4d.nii.gz", np.stack([img, img], axis=-1))
    with pytest.raises(Exception) as info:
        infer_preprocessing({"image": four_d})
    assert "case_4d.nii.gz" in str(_invalid(info.value))
    broken = tmp_path / "case_broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b truncated")
    with pytest.raises(Exception) as info:
        infer_preprocessing({"image": str(broken)})
    assert "case_broken.nii.gz" in str(_invalid(info.value))


def test_checked_loaders(tmp_path):
    good = _nifti(tmp_path / "ok.nii.gz", np.ones((4, 5, 6)))
    assert tuple(LoadImageChecked(image_only=True)(good).shape) == (4, 5, 6)
    with pytest.raises(InvalidInputError, match="missing.nii.gz: cannot read"):
        LoadImageChecked()(str(tmp_path / "missing.nii.gz"))
    bad = tmp_path / "bad.nii.gz"
    bad.write_text("nope")
    loader = LoadImageCheckedd(keys=["image", "label"], image_only=True)
    with pytest.raises(InvalidInputError, match="bad.nii.gz: cannot read") as info:
        loader({"image": good, "label": str(bad)})
    assert "ok.nii.gz" not in str(info.value)  # the readable image is not blamed
    with_meta = LoadImageCheckedd(keys="image", image_only=False, ensure_channel_first=True)
    out = with_meta({"image": good})
    assert tuple(out["image"].shape) == (1, 4, 5, 6) and "image_meta_dict" in out
    with pytest.raises(InvalidInputError, match="bad.nii.gz: cannot read"):
        with_meta({"image": str(bad)})
    out = loader({"image": good, "label": good})
    assert tuple(out["label"].shape) == (4, 5, 6)
    import pickle

    pickle.loads(pickle.dumps(loader))


def test_eval_datalist_with_a_bad_case_names_it(tmp_path):
    """``--eval_datalist`` path: a user's MSD-style dataset.json with a NaN image fails naming that file."""
    from bundle_helpers import make_workflow

    img, lab = _good()
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    img[0, 0, 0] = np.nan
    _nifti(tmp_path / "imagesTr" / "case_nan.nii.gz", img)
    _nifti(tmp_path / "labelsTr" / "case_nan.nii.gz", lab, np.uint8)
    dl = tmp_path / "dataset.json"
    dl.write_text(
        json.dumps({"training": [{"image": "./imagesTr/case_nan.nii.gz", "label": "./labelsTr/case_nan.nii.gz"}]})
    )
    wf = make_workflow(
        "hippocampus_segmentation",
        ["train.json", "evaluate.json"],
        "train",
        eval_datalist=str(dl),
        output_dir=str(tmp_path / "out"),
        ckpt_dir=str(tmp_path / "models"),
    )
    wf.initialize()
    data = wf.parser.get_parsed_content("validate#dataset#data")
    assert data[0]["image"] == str(tmp_path / "imagesTr" / "case_nan.nii.gz")
    dataset = wf.parser.get_parsed_content("validate#dataset")
    with pytest.raises(Exception) as info:
        dataset[0]
    assert "case_nan.nii.gz" in str(_invalid(info.value))
