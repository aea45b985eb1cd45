"""scripts/weak_pseudo_mask_table.py --out_of_fold: each training patient's pseudo-masks come from the CV fold model
that held the patient out, and are scored against the same masks as the committed classifier's."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from medcnn.weak import load_classifier

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "lgg_tumour_localisation"


def _script():
    path = REPO / "scripts" / "weak_pseudo_mask_table.py"
    spec = importlib.util.spec_from_file_location("weak_pseudo_mask_table", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def setup():
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / "train.json"), str(BUNDLE / "configs" / "weak_pseudo_masks.json")])
    parser["bundle_root"] = str(BUNDLE)
    parser["device"] = "$torch.device('cpu')"

    def make_network():
        return parser.get_parsed_content("network_def", lazy=False)

    committed = load_classifier(make_network(), BUNDLE / "models" / "model.pt")
    g = torch.Generator().manual_seed(0)
    items = []
    for p, patient in enumerate(["A", "B", "C"]):
        for k in range(4):
            image = torch.randn(3, 128, 128, generator=g)
            mask = torch.zeros(1, 128, 128)
            if k % 2:
                y, x = 20 + 15 * p + 5 * k, 30 + 10 * k
                mask[:, y: y + 30, x: x + 25] = 1
                image[:, y: y + 30, x: x + 25] += 2.5
            items.append({"image": image, "label": int(k % 2), "mask": mask, "patient": patient,
                          "id": f"{patient}_{k}"})
    return make_network, committed, parser.get_parsed_content("cam_rule"), items


def _fold(cv: Path, name: str, heldout: list[str], weights: Path | dict) -> None:
    (cv / name).mkdir(parents=True)
    (cv / name / "fold.json").write_text(json.dumps({"heldout_patients": heldout}))
    if isinstance(weights, Path):
        shutil.copy(weights, cv / name / "model.pt")
    else:
        torch.save(weights, cv / name / "model.pt")


def test_fold_models_equal_to_the_committed_one_give_its_figures(setup, tmp_path):
    make_network, committed, rule, items = setup
    _fold(tmp_path, "fold0", ["A", "Z"], BUNDLE / "models" / "model.pt")
    _fold(tmp_path, "fold1", ["B", "C"], BUNDLE / "models" / "model.pt")
    res = _script()._out_of_fold(tmp_path, make_network, committed, items, rule, {"raw CAM": []})
    by = res["overall"]["raw CAM"]
    assert by["out_of_fold"]["n_images"] == by["committed"]["n_images"] == 6
    assert by["committed"]["dice"] > 0.05  # the committed CAM finds the bright boxes: the comparison means something
    assert by["out_of_fold"]["dice"] == pytest.approx(by["committed"]["dice"], abs=1e-12)
    assert res["folds"]["fold0"]["patients"] == ["A"] and res["folds"]["fold1"]["patients"] == ["B", "C"]


def test_a_patient_is_scored_with_the_fold_model_that_held_it_out(setup, tmp_path):
    """Another network in the fold that holds out A changes A's pseudo-masks only."""
    make_network, committed, rule, items = setup
    torch.manual_seed(1)
    other = make_network().state_dict()
    _fold(tmp_path, "fold0", ["A"], other)
    _fold(tmp_path, "fold1", ["B", "C"], BUNDLE / "models" / "model.pt")
    res = _script()._out_of_fold(tmp_path, make_network, committed, items, rule, {"raw CAM": []})
    f0, f1 = res["folds"]["fold0"], res["folds"]["fold1"]
    assert f1["raw CAM | out_of_fold"] == pytest.approx(f1["raw CAM | committed"], abs=1e-12)
    assert f0["raw CAM | out_of_fold"] != pytest.approx(f0["raw CAM | committed"], abs=1e-3)


def test_a_training_patient_no_fold_holds_out_is_an_error(setup, tmp_path):
    make_network, committed, rule, items = setup
    _fold(tmp_path, "fold0", ["A", "B"], BUNDLE / "models" / "model.pt")
    with pytest.raises(ValueError, match=r"no fold holds out the training patients \['C'\]"):
        _script()._out_of_fold(tmp_path, make_network, committed, items, rule, {"raw CAM": []})
    with pytest.raises(FileNotFoundError, match="no fold"):
        _script()._out_of_fold(tmp_path / "empty", make_network, committed, items, rule, {"raw CAM": []})
