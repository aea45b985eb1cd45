"""Synthetic circles / spheres: shapes, determinism, mask <-> drawn object, label <-> mask, bad parameters."""

from __future__ import annotations

import numpy as np
import pytest
from monai.data import DataLoader

from medcnn.data.synthetic import (
    SyntheticObjectDataset,
    SyntheticObjectGenerator,
    ball_mask,
    load_labelled_arrays,
    synthetic_datalist,
)


def test_ball_mask_area_2d_3d():
    circle = ball_mask((41, 41), (20, 20), 10)
    assert abs(circle.sum() - np.pi * 100) / (np.pi * 100) < 0.03
    sphere = ball_mask((31, 31, 31), (15, 15, 15), 8)
    assert abs(sphere.sum() - 4 / 3 * np.pi * 512) / (4 / 3 * np.pi * 512) < 0.05


@pytest.mark.parametrize("size", [(48, 40), (24, 24, 20)])
def test_shapes_labels_and_masks(size):
    items = synthetic_datalist(20, seed=3, spatial_size=size, radius_range=(3, 6), positive_fraction=0.3)
    assert sum(d["label"] for d in items) == 6
    for d in items:
        assert d["image"].shape == (1, *size) and d["image"].dtype == np.float32
        assert d["mask"].shape == (1, *size) and d["mask"].dtype == np.uint8
        assert d["label"] == int(d["mask"].any())  # label <-> mask
        if d["label"]:
            n = d["mask"].sum()
            r3, r6 = (np.pi * 9, np.pi * 36) if len(size) == 2 else (4 / 3 * np.pi * 27, 4 / 3 * np.pi * 216)
            assert 0.8 * r3 <= n <= 1.1 * r6


def test_mask_matches_drawn_object():
    gen = SyntheticObjectGenerator((64, 64), (8, 12), contrast=3.0, noise=0.5, object_noise=0.5)
    gen.set_random_state(seed=0)
    d = gen(positive=True)
    img, mask = d["image"][0], d["mask"][0].astype(bool)
    assert abs(img[mask].mean() - 3.0) < 0.3 and abs(img[~mask].mean()) < 0.1
    assert img[mask].std() > img[~mask].std()  # extra noise inside the object
    assert gen(positive=False)["mask"].sum() == 0


def test_deterministic_under_seed():
    a, b = synthetic_datalist(8, seed=5), synthetic_datalist(8, seed=5)
    c = synthetic_datalist(8, seed=6)
    assert all(np.array_equal(x["image"], y["image"]) and x["label"] == y["label"] for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0]["image"], c[0]["image"])
    g1, g2 = SyntheticObjectGenerator(), SyntheticObjectGenerator()
    g1.set_random_state(seed=1)
    g2.set_random_state(seed=1)
    assert np.array_equal(g1()["image"], g2()["image"])


def test_monai_dataset_and_loader():
    ds = SyntheticObjectDataset(num_samples=6, seed=0, spatial_size=(32, 32), radius_range=(3, 5))
    batch = next(iter(DataLoader(ds, batch_size=3)))
    assert batch["image"].shape == (3, 1, 32, 32) and batch["mask"].shape == (3, 1, 32, 32)
    assert batch["label"].shape == (3,)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"spatial_size": (32,)}, "spatial_size"),
        ({"spatial_size": (8, 8, 8, 8)}, "spatial_size"),
        ({"radius_range": (6, 4)}, "radius_range"),
        ({"radius_range": (0, 4)}, "radius_range"),
        ({"radius_range": (5, 40)}, "radius_range"),
        ({"positive_fraction": 1.5}, "positive_fraction"),
        ({"positive_fraction": -0.1}, "positive_fraction"),
        ({"noise": -1}, "noise"),
    ],
)
def test_bad_parameters(kwargs, word):
    with pytest.raises(ValueError, match=word):
        SyntheticObjectGenerator(**kwargs)
    with pytest.raises(ValueError, match=word):
        synthetic_datalist(4, **kwargs)


def test_load_labelled_arrays_from_files(tmp_path):
    import json

    import nibabel as nib

    d = synthetic_datalist(2, seed=0, spatial_size=(16, 16, 16), radius_range=(3, 4), positive_fraction=0.5)
    entries = []
    for i, item in enumerate(d):
        nib.save(nib.Nifti1Image(item["image"][0], np.eye(4)), tmp_path / f"img{i}.nii.gz")
        nib.save(nib.Nifti1Image(item["mask"][0], np.eye(4)), tmp_path / f"msk{i}.nii.gz")
        entries.append({"image": f"img{i}.nii.gz", "mask": f"msk{i}.nii.gz"})
    (tmp_path / "list.json").write_text(json.dumps(entries))
    items = load_labelled_arrays(tmp_path / "list.json")
    assert [x["label"] for x in items] == [x["label"] for x in d]
    assert np.allclose(items[0]["image"], d[0]["image"]) and np.array_equal(items[1]["mask"], d[1]["mask"])
