"""The brain-fraction gate: slices with (almost) no brain are never called tumour, by the BraTS localiser's
evaluate/inference network and by the score network the MONAI Label app reads from its inference config."""

from __future__ import annotations

import json

import pytest
import torch
from bundle_helpers import bundle_root, make_workflow
from monai.transforms import CenterSpatialCrop, Resize

from medcnn.data.brats import brats_case_datalist, load_brats_case
from medcnn.monailabel.adapter import read_served_config
from medcnn.networks import BrainFractionGate, brain_fraction, slice_classifier
from medcnn.transforms import BrainZScore

NAME = "brats_tumour_localisation"
ROOT = bundle_root(NAME)
WEIGHTS = ROOT / "models" / "model.pt"


class _ConstantClassifier(torch.nn.Module):
    """Says 'tumour' (p = 0.88) for every image, like a classifier that never saw an empty slice."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([[0.0, 2.0]]).repeat(x.shape[0], 1)


def test_gate_negates_only_images_below_the_brain_fraction():
    x = torch.zeros(3, 2, 10, 10)
    x[1, 0, :5] = 1.0  # half brain
    x[2, 1, 0, 0] = -0.7  # 1 % brain
    assert brain_fraction(x).tolist() == pytest.approx([0.0, 0.5, 0.01])
    gate = BrainFractionGate(_ConstantClassifier(), min_brain_fraction=0.02)
    p = torch.softmax(gate(x), dim=1)[:, 1]
    assert p[0] < 1e-9 and p[2] < 1e-9  # below the gate: 'no tumour'
    assert p[1] == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item())  # above it: the classifier's own answer
    assert torch.softmax(slice_classifier(_ConstantClassifier(), min_brain_fraction=0)(x), 1)[0, 1] > 0.5
    with pytest.raises(ValueError, match="min_brain_fraction"):
        BrainFractionGate(_ConstantClassifier(), min_brain_fraction=1.5)
    with pytest.raises(ValueError, match="slice_score"):
        slice_classifier(_ConstantClassifier(), slice_score="max")


@pytest.mark.realdata
def test_empty_slices_of_a_real_brats_volume_are_no_tumour(data_dir, weights):
    """Every slice of the held-out case with no brain in the network input: p about 0 after the gate (the committed
    classifier alone gives them all one arbitrary p, 0.41; 0.66 from the earlier weights), through the bundle's
    evaluate network and the MONAI Label score network; tumour slices keep the classifier's answer."""
    entry = brats_case_datalist(data_dir("brats2015_deepmedic_subset"), ["brats_2013_pat0004_1"])[0]
    case = load_brats_case(entry)
    wf = make_workflow(NAME, ["train.json", "evaluate.json"], "eval")
    parser = wf.parser
    net = parser.get_parsed_content("network")
    net.load_state_dict(torch.load(weights, weights_only=True, map_location="cpu"))
    net.eval()
    threshold = float(parser.get_parsed_content("decision_threshold"))
    crop, size = parser.get_parsed_content("crop_size"), parser.get_parsed_content("spatial_size")

    # the MONAI Label app: the uploaded volume z-scored in the brain, cut into slices, cropped and resized
    volume = BrainZScore()(torch.from_numpy(case["image"]))  # (C, H, W, D)
    x = torch.as_tensor(Resize([*size, -1], mode="area")(CenterSpatialCrop([*crop, -1])(volume)))
    x = x.permute(3, 0, 1, 2).float()  # (D, C, h, w)
    empty = brain_fraction(x) == 0
    tumour = torch.as_tensor((case["label"] > 0).sum(axis=(0, 1)) >= 50)
    assert int(empty.sum()) >= 20 and not bool((empty & tumour).any())
    every_4th_tumour = tumour & (torch.arange(len(x)) % 4 == 0)
    keep = empty | every_4th_tumour  # a few dozen slices keep the test fast
    x, empty, tumour = x[keep], empty[keep], every_4th_tumour[keep]

    app = read_served_config(ROOT)  # what MONAI Label (and medcnn predict) serve: inference.json + predict.json
    score_net = app.get_parsed_content("score_network", instantiate=True)(net)
    evaluate_net = parser.get_parsed_content("slice_network")
    with torch.no_grad():
        p_plain = torch.softmax(net(x), 1)[:, 1]
        p_app = torch.softmax(score_net(x), 1)[:, 1]
        p_eval = torch.softmax(evaluate_net(x), 1)[:, 1]
    # the classifier alone answers anything on a slice it never saw: one constant p for every empty input (0.66 from
    # the earlier weights, 0.41 from the current ones); the gate answers "no tumour" with certainty, not by chance
    assert float(p_plain[empty].max() - p_plain[empty].min()) < 1e-5 and float(p_plain[empty].max()) > 0.01
    assert bool((p_app[empty] < 1e-6).all()) and bool((p_eval[empty] < 1e-6).all())
    assert bool((p_app[empty] < threshold).all())
    torch.testing.assert_close(p_app[tumour], p_plain[tumour])  # above the gate: the classifier's own answer
    assert (p_eval[tumour] >= threshold).float().mean() > 0.8  # tumour slices still found


def test_gate_threshold_is_recorded_with_its_source():
    cfg = json.loads((ROOT / "configs" / "inference.json").read_text())
    train = json.loads((ROOT / "configs" / "train.json").read_text())
    assert cfg["gate_min_brain_fraction"] == train["gate_min_brain_fraction"] == 0.005
    report = json.loads((ROOT / "docs" / "brain_gate.json").read_text())
    train_cases = [c for c in report["cases"].values() if c["role"] == "train"]
    assert report["threshold"] == cfg["gate_min_brain_fraction"]
    assert all(c["n_tumour_slices_below_threshold"] == 0 for c in train_cases)
    assert min(c["min_brain_fraction_of_tumour_slices"] for c in train_cases) > report["threshold"]
