import json

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image

from medcnn.data.datalist import DatalistError
from medcnn.data.medmnist import (
    MedMNISTError,
    class_weights,
    classification_datalist,
    load_medmnist_split,
    medmnist_datalist,
)


def _npz(path, n=6, labels=None, **extra):
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
        "train_labels": np.asarray(labels if labels is not None else [i % 2 for i in range(n)], np.uint8)[:, None],
        "test_images": rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
        "test_labels": np.asarray([[0], [1], [1], [0]], np.uint8),
    }
    arrays.update(extra)
    np.savez(path, **arrays)
    return path


def test_reads_split_as_monai_items(tmp_path):
    f = _npz(tmp_path / "set.npz")
    items = medmnist_datalist(f, "train", n_classes=2)
    assert len(items) == 6 and [it["label"] for it in items] == [0, 1, 0, 1, 0, 1]
    img = items[3]["image"]
    assert isinstance(img, MetaTensor) and img.shape == (1, 28, 28) and img.dtype == torch.float32
    raw = np.load(f)["train_images"][3]
    assert torch.allclose(img[0], torch.from_numpy(raw / 255.0).float())
    assert img.meta["filename_or_obj"].endswith("set.npz:train_images[3]")
    assert items[3]["id"] == "train_00003"
    # limit keeps evenly spaced images, so a file sorted by class keeps both classes
    sorted_file = _npz(tmp_path / "sorted.npz", n=10, labels=[1] * 8 + [0] * 2)
    subset = medmnist_datalist(sorted_file, "train", limit=3)
    assert [it["id"] for it in subset] == ["train_00000", "train_00004", "train_00009"]
    assert {it["label"] for it in subset} == {0, 1}


def test_colour_images_are_channel_first(tmp_path):
    f = tmp_path / "rgb.npz"
    np.savez(f, val_images=np.zeros((3, 28, 28, 3), np.uint8), val_labels=np.array([0, 3, 6]))
    items = medmnist_datalist(f, "val", class_names=[str(i) for i in range(7)])
    assert items[0]["image"].shape == (3, 28, 28) and items[2]["label"] == 6


def test_missing_file_and_key_are_named(tmp_path):
    with pytest.raises(MedMNISTError, match="nothere.npz: not found"):
        load_medmnist_split(tmp_path / "nothere.npz")
    f = _npz(tmp_path / "set.npz")
    with pytest.raises(MedMNISTError, match=r"set.npz: missing key\(s\) \['val_images', 'val_labels'\]"):
        load_medmnist_split(f, "val")
    g = tmp_path / "nolabels.npz"
    np.savez(g, train_images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(MedMNISTError, match=r"nolabels.npz: missing key\(s\) \['train_labels'\]"):
        load_medmnist_split(g, "train")
    bad = tmp_path / "junk.npz"
    bad.write_text("not an archive")
    with pytest.raises(MedMNISTError, match="junk.npz: not a readable .npz"):
        load_medmnist_split(bad)


def test_length_mismatch_is_named(tmp_path):
    f = tmp_path / "mismatch.npz"
    np.savez(f, train_images=np.zeros((5, 28, 28), np.uint8), train_labels=np.zeros((4, 1), np.uint8))
    with pytest.raises(MedMNISTError, match="mismatch.npz: 'train_images' has 5 images but 'train_labels' has 4"):
        load_medmnist_split(f)


def test_labels_outside_declared_classes(tmp_path):
    f = _npz(tmp_path / "set.npz", labels=[0, 1, 2, 0, 1, 0])
    with pytest.raises(MedMNISTError, match=r"set.npz key 'train_labels': 1 label\(s\) outside .* 0..1, e.g. index 2"):
        load_medmnist_split(f, n_classes=2)
    with pytest.raises(MedMNISTError, match="outside the declared classes"):
        medmnist_datalist(f, class_names=["normal", "pneumonia"])
    assert load_medmnist_split(f, n_classes=3)[1].tolist() == [0, 1, 2, 0, 1, 0]
    with pytest.raises(MedMNISTError, match="n_classes=3 but 2 class names"):
        load_medmnist_split(f, n_classes=3, class_names=["a", "b"])


def test_bad_shapes(tmp_path):
    f = tmp_path / "shape.npz"
    np.savez(f, train_images=np.zeros((2, 28), np.uint8), train_labels=np.zeros(2, np.uint8))
    with pytest.raises(MedMNISTError, match=r"key 'train_images': expected a non-empty \(N, H, W\)"):
        load_medmnist_split(f)
    g = tmp_path / "multilabel.npz"
    np.savez(g, train_images=np.zeros((2, 28, 28), np.uint8), train_labels=np.zeros((2, 3), np.uint8))
    with pytest.raises(MedMNISTError, match="single-label"):
        load_medmnist_split(g)


def test_eval_datalist_forms(tmp_path):
    f = _npz(tmp_path / "other.npz")
    assert len(classification_datalist(f, "test", n_classes=2)) == 4
    pointer = tmp_path / "pointer.json"
    pointer.write_text(json.dumps({"npz": "other.npz", "split": "train"}))
    assert len(classification_datalist(pointer, n_classes=2)) == 6
    Image.fromarray(np.full((28, 28), 255, np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((56, 56, 3), np.uint8)).save(tmp_path / "b.png")
    pngs = tmp_path / "pngs.json"
    pngs.write_text(json.dumps([{"image": "a.png", "label": 1}, {"image": "b.png", "label": 0}]))
    items = classification_datalist(pngs, n_classes=2)
    assert items[0]["image"].shape == (1, 28, 28) and float(items[0]["image"].max()) == 1.0
    assert items[1]["image"].shape == (1, 56, 56) and items[1]["label"] == 0
    assert items[0]["image"].meta["filename_or_obj"].endswith("a.png")
    pngs.write_text(json.dumps([{"image": "a.png", "label": 2}]))
    with pytest.raises(MedMNISTError, match=r"pngs.json: entry 0 .*a.png\) label 2 is outside"):
        classification_datalist(pngs, n_classes=2)
    pngs.write_text(json.dumps([{"image": "missing.png", "label": 0}]))
    with pytest.raises(DatalistError, match="missing.png does not exist"):
        classification_datalist(pngs, n_classes=2)


def test_class_weights_balance_the_classes():
    w = class_weights([0] + [1] * 9)
    assert w.tolist() == pytest.approx([5.0, 10 / 18])
    # each class contributes the same total weight
    assert float(w[0] * 1) == pytest.approx(float(w[1] * 9))
    assert class_weights([{"label": 0}, {"label": 1}]).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match=r"class\(es\) \[1\] have no example"):
        class_weights([0, 0, 2])


def test_real_pneumoniamnist_counts(data_dir):
    f = data_dir("pneumoniamnist") / "pneumoniamnist.npz"
    counts = {s: np.bincount(load_medmnist_split(f, s, n_classes=2)[1]).tolist() for s in ("train", "val", "test")}
    assert counts == {"train": [388, 3494], "val": [135, 389], "test": [234, 390]}
