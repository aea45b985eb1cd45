"""``scripts/cv_classifier.py --ensemble NAME=A+B``: the patient-CV figure of an ensemble of finished recipe runs
(mean log-odds of the members on the same held-out slices), refused naming the file when the members did not score
the same slices."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.test_slice_scoring import cv_script

BUNDLE = "lgg_tumour_localisation"
LABEL = np.asarray([0, 0, 1, 1])


def _member(out: Path, name: str, whole: list[float], z=(0, 1, 2, 3), train_s: float = 10.0, cams: bool = True) -> None:
    d = out / name / "fold0"
    d.mkdir(parents=True)
    cam = {"cam:layercam:blocks.0": np.full((2, 1, 4, 4), float(whole[2]), dtype=np.float16)} if cams else {}
    np.savez(d / "heldout.npz", whole=np.asarray(whole), flip=np.asarray(whole), label=LABEL,
             case=np.asarray(["P"] * 4), z=np.asarray(z), **cam)
    (d / "fold.json").write_text(json.dumps({"heldout_patients": ["P"], "epochs": 5, "train_s": train_s}))


def test_the_ensemble_scores_the_mean_log_odds_and_beats_both_members(tmp_path):
    # each member misorders one pair (AUC 0.75); their errors are on different slices, the mean orders all four
    _member(tmp_path, "a", [-1.0, 2.0, 1.0, 3.0])
    _member(tmp_path, "b", [-1.0, -3.0, 1.0, -2.0])
    cv_script().main(["--bundle", BUNDLE, "--out", str(tmp_path), "--no_cam", "--ensemble", "ab=a+b",
                      "--summarise", "a", "b"])
    merged = np.load(tmp_path / "ab" / "fold0" / "heldout.npz")
    np.testing.assert_allclose(merged["whole"], [-1.0, -0.5, 1.0, 0.5])
    np.testing.assert_array_equal(merged["label"], LABEL)
    np.testing.assert_allclose(merged["cam:layercam:blocks.0"].astype(np.float32), 1.0)
    auc = {n: json.loads((tmp_path / n / "summary.json").read_text())["scoring"]["whole"]["auc_mean"]
           for n in ("a", "b", "ab")}
    assert auc == {"a": 0.75, "b": 0.75, "ab": 1.0}
    fold = json.loads((tmp_path / "ab" / "fold0" / "fold.json").read_text())
    assert fold["members"] == ["a", "b"] and fold["train_s"] == 20.0  # both members' training time


def test_a_member_trained_without_cams_gives_an_ensemble_of_the_scores_only(tmp_path):
    _member(tmp_path, "a", [-1.0, 2.0, 1.0, 3.0])
    _member(tmp_path, "b", [-1.0, -3.0, 1.0, -2.0], cams=False)
    cv_script().main(["--bundle", BUNDLE, "--out", str(tmp_path), "--no_cam", "--ensemble", "ab=a+b"])
    merged = np.load(tmp_path / "ab" / "fold0" / "heldout.npz")
    np.testing.assert_allclose(merged["whole"], [-1.0, -0.5, 1.0, 0.5])
    assert not [k for k in merged.files if k.startswith("cam:")]
    dropped = json.loads((tmp_path / "ab" / "cv.json").read_text())["cams_not_in_every_member"]
    assert dropped == ["cam:layercam:blocks.0"]


def test_members_that_scored_other_slices_are_refused_naming_the_file(tmp_path):
    _member(tmp_path, "a", [-1.0, 2.0, 1.0, 3.0])
    _member(tmp_path, "b", [-1.0, -3.0, 1.0, -2.0], z=(0, 1, 3, 2))
    with pytest.raises(ValueError, match=r"b/fold0/heldout\.npz.*other held-out slices.*'z'"):
        cv_script().main(["--bundle", BUNDLE, "--out", str(tmp_path), "--no_cam", "--ensemble", "ab=a+b"])


@pytest.mark.parametrize("value", ["a", "a+missing"])
def test_an_ensemble_without_two_finished_members_is_refused(tmp_path, value):
    _member(tmp_path, "a", [-1.0, 2.0, 1.0, 3.0])
    with pytest.raises((ValueError, FileNotFoundError), match="--ensemble ab"):
        cv_script().main(["--bundle", BUNDLE, "--out", str(tmp_path), "--no_cam", "--ensemble", f"ab={value}"])
