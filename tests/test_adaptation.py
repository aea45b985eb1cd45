"""adapt_batch_norm (AdaBN) and ``scripts/cv_classifier.py --adapt_bn``: batch norm re-estimated on one group of
images, the original network untouched, and CV runs re-scored per patient from their stored fold models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from medcnn.networks import ResNetClassifier, adapt_batch_norm
from tests.conftest import real_data_dir
from tests.test_slice_scoring import cv_script

BUNDLE = "lgg_tumour_localisation"


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.Flatten())


def test_batch_norm_holds_the_statistics_of_the_group_and_the_original_is_untouched():
    net = _net().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = 3.0 + 2.0 * torch.randn(10, 2, 8, 8)
    adapted = adapt_batch_norm(net, x)
    with torch.no_grad():
        features = net[0](x)
    bn = adapted[1]
    torch.testing.assert_close(bn.running_mean, features.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(bn.running_var, features.transpose(0, 1).reshape(4, -1).var(dim=1))
    assert not adapted.training and not bn.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    # eval mode: dropout off, the answer is deterministic, and it is the group normalised with its own statistics
    with torch.no_grad():
        y1, y2 = adapted(x), adapted(x)
        normalised = adapted[1](features)
    assert torch.equal(y1, y2)
    assert abs(float(normalised.mean())) < 0.05 and abs(float(normalised.std()) - 1.0) < 0.05


def test_batches_of_equal_size_give_the_same_mean():
    net = _net().eval()
    x = torch.randn(12, 2, 8, 8)
    whole, batched = adapt_batch_norm(net, x), adapt_batch_norm(net, x, batch_size=4)
    torch.testing.assert_close(batched[1].running_mean, whole[1].running_mean)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="no batch-norm layer"):
        adapt_batch_norm(nn.Linear(2, 2), torch.zeros(3, 2, 1))
    with pytest.raises(ValueError, match="at least one image"):
        adapt_batch_norm(_net(), torch.zeros(0, 2, 8, 8))


def _fake_run(out, dataset_dir, heldout):
    """A finished one-fold recipe run of the LGG bundle with an untrained network (no training needed)."""
    cv = cv_script()
    bundle = cv.REPO / "bundles" / BUNDLE
    src = out / "src"
    fold_dir = src / "fold0"
    fold_dir.mkdir(parents=True)
    (src / "cv.json").write_text(json.dumps({"bundle": BUNDLE, "recipe": "src", "overrides": {"seed": 3}}))
    (fold_dir / "fold.json").write_text(json.dumps({"train_patients": [], "heldout_patients": heldout,
                                                    "epochs": 1, "train_s": 1.0, "curves": {"loss": [0.7]}}))
    config = cv.bundle_config(bundle, str(dataset_dir), fold_dir, {"train_patients": [],
                                                                   "validation_patients": heldout})
    net = config.get_parsed_content("network")
    assert isinstance(net, ResNetClassifier)
    with torch.no_grad():  # running statistics far from any patient's, so that adaptation must change the scores
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.fill_(0.5)
                m.running_var.fill_(4.0)
    torch.save(net.state_dict(), fold_dir / "model.pt")
    held = config.get_parsed_content("validate#dataset")
    np.savez(fold_dir / "heldout.npz", **cv.slice_scores(net.eval(), held))
    return cv, net, held


def test_adapt_bn_rescores_each_patient_with_its_own_statistics(tmp_path):
    dataset_dir = real_data_dir("lgg_flair_tiff")
    heldout = ["TCGA_CS_4941_19960909", "TCGA_DU_6407_19860514"]
    cv, net, held = _fake_run(tmp_path, dataset_dir, heldout)
    cv.main(["--bundle", BUNDLE, "--out", str(tmp_path), "--dataset_dir", str(dataset_dir), "--no_cam",
             "--adapt_bn", "ada=src"])
    stored = np.load(tmp_path / "src" / "fold0" / "heldout.npz")
    adapted = np.load(tmp_path / "ada" / "fold0" / "heldout.npz")
    for key in ("label", "case", "z"):
        np.testing.assert_array_equal(adapted[key], stored[key])
    assert not np.allclose(adapted["whole"], stored["whole"], atol=1e-2)
    # each patient's scores are those of the network adapted to that patient alone
    idx = np.flatnonzero(adapted["case"] == heldout[1])
    x = torch.stack([torch.as_tensor(held[int(i)]["image"]).float() for i in idx])
    with torch.no_grad():
        logits = adapt_batch_norm(net, x)(x)
    np.testing.assert_allclose(adapted["whole"][idx], (logits[:, 1] - logits[:, 0]).numpy(), atol=1e-4)
    summary = json.loads((tmp_path / "ada" / "summary.json").read_text())
    assert summary["n_folds"] == 1 and "flip_mean_z3" in summary["scoring"]
    meta = json.loads((tmp_path / "ada" / "cv.json").read_text())
    assert meta["adapted_from"] == "src" and "--adapt_bn ada=src" in meta["command"]
    assert "curves" not in json.loads((tmp_path / "ada" / "fold0" / "fold.json").read_text())


def test_a_fold_model_that_does_not_reproduce_its_scores_is_refused_naming_the_file(tmp_path):
    dataset_dir = real_data_dir("lgg_flair_tiff")
    _fake_run(tmp_path, dataset_dir, ["TCGA_CS_4941_19960909"])
    path = tmp_path / "src" / "fold0" / "heldout.npz"
    stored = dict(np.load(path))
    stored["whole"] = stored["whole"] + 1.0
    np.savez(path, **stored)
    with pytest.raises(ValueError, match=r"src/fold0/heldout\.npz: the fold model does not reproduce"):
        cv_script().main(["--bundle", BUNDLE, "--out", str(tmp_path), "--dataset_dir", str(dataset_dir),
                          "--no_cam", "--adapt_bn", "ada=src"])
    with pytest.raises(FileNotFoundError, match="has no finished fold"):
        cv_script().main(["--bundle", BUNDLE, "--out", str(tmp_path), "--no_cam", "--adapt_bn", "b=missing"])
