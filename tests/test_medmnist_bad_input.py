"""PneumoniaMNIST-derived bad inputs: wrong intensity ranges and truncated archives are refused by name.

Before: a uint16 or float 0-255 ``.npz`` was not rescaled (every image called pneumonia, AUC 0.5) and a 16-bit PNG
became a constant image."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from medcnn.data.medmnist import MedMNISTError, classification_datalist, load_medmnist_split, medmnist_datalist


@pytest.fixture
def real_test_split(data_dir):
    """The first 8 official PneumoniaMNIST test images (28 x 28 uint8) and labels."""
    with np.load(data_dir("pneumoniamnist") / "pneumoniamnist.npz") as z:
        return z["test_images"][:8], z["test_labels"][:8]


def _npz(path, images, labels):
    np.savez_compressed(path, test_images=images, test_labels=labels)
    return path


@pytest.mark.parametrize("variant,problem", [
    ("uint16_12bit", "are not 8-bit grey levels"),
    ("float_0_255", "outside [0, 1] (they look like 0-255 grey levels: divide by 255)"),
    ("float_nan", "NaN or infinite"),
    ("int16_negative", "are not 8-bit grey levels"),
    ("bool", "must be 8-bit grey levels"),
])
def test_npz_out_of_range_is_refused_by_name(tmp_path, real_test_split, variant, problem):
    images, labels = real_test_split
    bad = {
        "uint16_12bit": images.astype(np.uint16) * 16,
        "float_0_255": images.astype(np.float32),
        "float_nan": np.where(np.arange(images.size).reshape(images.shape) == 100, np.nan, images / 255.0),
        "int16_negative": images.astype(np.int16) - 128,
        "bool": images > 128,
    }[variant]
    path = _npz(tmp_path / f"{variant}.npz", bad, labels)
    with pytest.raises(MedMNISTError) as info:
        medmnist_datalist(path, "test", n_classes=2)
    assert str(path) in str(info.value) and problem in str(info.value)


@pytest.mark.parametrize("variant", ["uint8", "uint16_values_0_255", "float_unit"])
def test_npz_in_range_gives_the_same_images(tmp_path, real_test_split, variant):
    images, labels = real_test_split
    stored = {"uint8": images, "uint16_values_0_255": images.astype(np.uint16),
              "float_unit": (images / 255.0).astype(np.float64)}[variant]
    items = medmnist_datalist(_npz(tmp_path / f"{variant}.npz", stored, labels), "test", n_classes=2)
    expected = torch.from_numpy(images / 255.0).float()
    got = torch.stack([it["image"][0].as_tensor() for it in items])
    assert torch.allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("cut", ["empty", "half", "missing_tail"])
def test_truncated_npz_is_refused_by_name(tmp_path, real_test_split, cut):
    path = _npz(tmp_path / "full.npz", *real_test_split)
    data = path.read_bytes()
    bad = tmp_path / f"{cut}.npz"
    bad.write_bytes({"empty": b"", "half": data[: len(data) // 2], "missing_tail": data[:-30]}[cut])
    with pytest.raises(MedMNISTError) as info:
        load_medmnist_split(bad, "test")
    assert str(bad) in str(info.value)
    assert "empty file" in str(info.value) if cut == "empty" else "truncated or corrupt" in str(info.value)


def test_16bit_png_is_refused_not_flattened(tmp_path, real_test_split):
    images, _ = real_test_split
    Image.fromarray(images[0].astype(np.uint16) * 257).save(tmp_path / "x16.png")  # a real 16-bit PNG (I;16)
    Image.fromarray(images[1]).save(tmp_path / "x8.png")
    Image.fromarray(images[2].astype(np.uint16)).save(tmp_path / "x16_in_8bit_range.png")
    entries = [{"image": "x8.png", "label": 0}, {"image": "x16_in_8bit_range.png", "label": 1}]
    (tmp_path / "ok.json").write_text(json.dumps(entries))
    items = classification_datalist(tmp_path / "ok.json", n_classes=2)
    assert torch.allclose(items[0]["image"][0], torch.from_numpy(images[1] / 255.0).float(), atol=1e-6)
    assert torch.allclose(items[1]["image"][0], torch.from_numpy(images[2] / 255.0).float(), atol=1e-6)
    (tmp_path / "bad.json").write_text(json.dumps([*entries, {"image": "x16.png", "label": 1}]))
    with pytest.raises(MedMNISTError) as info:
        classification_datalist(tmp_path / "bad.json", n_classes=2)
    assert "x16.png" in str(info.value) and "not 8-bit grey levels" in str(info.value)
