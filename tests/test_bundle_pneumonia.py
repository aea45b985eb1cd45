"""Workflow checks of bundles/pneumonia_classification: the checks of its tiny training + evaluation (run by
tests/test_bundles.py), inference, export, weights."""

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_helpers import TinyRun, bundle_root, export_matches_eager, read_metrics, run_workflow
from monai.bundle import verify_net_in_out
from PIL import Image

from medcnn.data.medmnist import MedMNISTError
from medcnn.networks import ClassicCNN

NAME = "pneumonia_classification"
ROOT = bundle_root(NAME)
pytestmark = pytest.mark.realdata


@pytest.fixture
def pneumonia_dir(data_dir):
    return data_dir("pneumoniamnist")


def write_small_test_npz(pneumonia_dir: Path, path: Path) -> Path:
    """48 real test images (24 per class) as a separate MedMNIST-style file, for a fast --eval_datalist."""
    d = np.load(pneumonia_dir / "pneumoniamnist.npz")
    y = d["test_labels"][:, 0]
    idx = np.r_[np.flatnonzero(y == 0)[:24], np.flatnonzero(y == 1)[:24]]
    np.savez(path, test_images=d["test_images"][idx], test_labels=d["test_labels"][idx])
    return path


def check_tiny_run(run: TinyRun) -> None:
    """The tiny training and evaluation of tests/test_bundles.py: validation AUC above chance, the figures, Grad-CAM
    images and one prediction per test image."""
    m, out = run.metrics, run.out
    assert "classifier.5.weight" in torch.load(out / "models" / "model.pt", weights_only=True)
    assert run.curves["epoch"] == [1, 2]
    assert max(run.curves["val_auc"]) > 0.7, run.curves["val_auc"]  # chance is 0.5
    assert sum(map(sum, m["confusion_matrix"])) == 48
    for png in ("roc.png", "confusion_matrix.png"):
        assert (out / png).stat().st_size > 1000
    assert len(list((out / "gradcam").glob("test_*.png"))) == 4
    with open(out / "predictions.csv") as f:
        assert len(list(csv.reader(f))) == 48


def test_resnet_selected_by_override(pneumonia_dir, tmp_path):
    run_workflow(
        NAME, ["train.json"], "train", dataset_dir=str(pneumonia_dir), network_name="resnet", train_limit=128,
        val_limit=64, max_epochs=1, ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "out"),
    )
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert any(k.startswith("blocks.3.") for k in state) and "fc2.weight" in state


def test_eval_datalist_with_a_bad_label_names_the_entry(pneumonia_dir, tmp_path):
    """(A good PNG datalist with relative paths: tests/test_bundles.py, for every bundle.)"""
    d = np.load(pneumonia_dir / "pneumoniamnist.npz")
    entries = []
    for i in range(6):
        Image.fromarray(d["test_images"][i]).save(tmp_path / f"x{i}.png")
        entries.append({"image": f"x{i}.png", "label": int(d["test_labels"][i, 0])})
    entries[0]["label"] = 3
    (tmp_path / "bad.json").write_text(json.dumps(entries))
    with pytest.raises(Exception) as info:
        run_workflow(
            NAME, ["train.json", "evaluate.json"], "eval", dataset_dir=str(pneumonia_dir),
            eval_datalist=str(tmp_path / "bad.json"), num_gradcam=0, output_dir=str(tmp_path / "out2"),
        )
    chain, exc = [], info.value
    while exc is not None:  # MONAI wraps the reader's error in "Failed to evaluate ..."
        chain.append(exc)
        exc = exc.__cause__
    pattern = r"bad.json: entry 0 .*label 3 is outside the declared classes"
    assert any(isinstance(e, MedMNISTError) and re.search(pattern, str(e)) for e in chain), chain


def test_inference_on_committed_weights_matches_the_network(pneumonia_dir, tmp_path):
    d = np.load(pneumonia_dir / "pneumoniamnist.npz")
    images = d["test_images"][:8]
    for i, img in enumerate(images):
        Image.fromarray(img).save(tmp_path / f"case{i}.png")
    (tmp_path / "input.json").write_text(json.dumps([{"image": f"case{i}.png"} for i in range(8)]))
    run_workflow(
        NAME, ["inference.json"], "infer", dataset_dir=str(pneumonia_dir),
        input_datalist=str(tmp_path / "input.json"), output_dir=str(tmp_path / "out"),
    )
    with open(tmp_path / "out" / "predictions.csv") as f:
        rows = {r[0]: [float(v) for v in r[1:]] for r in csv.reader(f)}
    net = ClassicCNN().eval()
    net.load_state_dict(torch.load(ROOT / "models" / "model.pt", weights_only=True))
    with torch.no_grad():
        expected = torch.softmax(net(torch.from_numpy(images[:, None] / 255.0).float()), 1).numpy()
    got = np.asarray([rows[f"case{i}"] for i in range(8)])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_net_in_out_and_torchscript_export(tmp_path):
    cfg, meta = str(ROOT / "configs" / "inference.json"), str(ROOT / "configs" / "metadata.json")
    verify_net_in_out(net_id="network_def", meta_file=meta, config_file=cfg, bundle_root=str(ROOT), n=2, any=8)
    export_matches_eager(NAME, ROOT / "models" / "model.pt", torch.rand(4, 1, 28, 28), tmp_path, atol=1e-6)


def test_committed_weights_reach_model_card_figures(pneumonia_dir, tmp_path):
    """Evaluate models/model.pt on the official 624-image test split; figures as in metadata.json / the card."""
    card = json.loads((ROOT / "configs" / "metadata.json").read_text())["eval_metrics"]
    run_workflow(
        NAME, ["train.json", "evaluate.json"], "eval", dataset_dir=str(pneumonia_dir), num_gradcam=0,
        output_dir=str(tmp_path),
    )
    m = read_metrics(tmp_path)
    assert m["n_images"] == 624
    for key, value in card.items():
        assert m[key] == pytest.approx(value, abs=0.005), key
    readme = (ROOT / "docs" / "README.md").read_text()
    assert f"{card['accuracy']:.3f}" in readme and f"{card['auc']:.3f}" in readme
