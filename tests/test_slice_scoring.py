"""The slice-scoring rule of slice classifiers run over a volume (medcnn.networks.SliceScoreInferer with
medcnn.data.PatientSliceBatchSampler): equal to the CV's ``flip_mean_z3`` (scripts/cv_classifier.py), independent of
the dataset order, refusing batches it cannot score, deciding the same way slice by slice (medcnn predict, MONAI
Label: medcnn.predict.decide_slices), and the probability each PDF report slice is titled with."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.engines import PrepareBatchExtraInput

from medcnn.data import PatientSliceBatchSampler
from medcnn.networks import ResNetClassifier, SliceBatchError, SliceScoreInferer

REPO = Path(__file__).resolve().parents[1]


def cv_script():
    """scripts/cv_classifier.py as a module (its z_smooth / flip scoring is what the CV measured)."""
    path = REPO / "scripts" / "cv_classifier.py"
    if "cv_classifier" in sys.modules:
        return sys.modules["cv_classifier"]
    spec = importlib.util.spec_from_file_location("cv_classifier", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["cv_classifier"] = module
    spec.loader.exec_module(module)
    return module


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    net = ResNetClassifier(2, 3, 2, num_blocks=2, channels=4, cam_layer="blocks.0")
    with torch.no_grad():  # a bias that puts the probabilities near 0.5, so the rule moves decisions
        net.fc2.bias.add_(torch.tensor([0.0, 0.05]))
    return net.eval()


def _items(sizes=(5, 7), order: int = 0) -> list[dict]:
    """Slices of patients ``P0``, ``P1``, ... (3 x 16 x 16, not mirror-symmetric), interleaved, shuffled (``order``
    seeds the shuffle only: the slices are the same for every ``order``)."""
    g = torch.Generator().manual_seed(0)
    items = [{"image": torch.rand(3, 16, 16, generator=g) * torch.linspace(0, 2, 16), "label": torch.tensor(z % 2),
              "patient": f"P{p}", "slice_index": z, "id": f"P{p}_{z}"}
             for p, n in enumerate(sizes) for z in range(n)]
    random.Random(order).shuffle(items)
    return items


def _rule_logodds(items: list[dict], inferer: SliceScoreInferer, net) -> dict[str, float]:
    """Each slice's rule log-odds (l1 - l0) through the evaluation path: sampler batches + PrepareBatchExtraInput."""
    prepare = PrepareBatchExtraInput(extra_keys={"slice_index": "slice_index", "group": "patient"})
    out = {}
    with torch.no_grad():
        for batch in DataLoader(Dataset(items), batch_sampler=PatientSliceBatchSampler(items)):
            x, _, args, kwargs = prepare(batch)
            logits = inferer(x, net, *args, **kwargs)
            out.update(zip(batch["id"], (logits[:, 1] - logits[:, 0]).tolist(), strict=True))
    return out


def test_the_rule_is_the_cv_flip_mean_z3():
    """SliceScoreInferer(flip, radius 1) gives the log-odds of flip_mean_z3 of scripts/cv_classifier.py; flip only
    gives flip_mean, radius 0 without flip the whole-slice log-odds."""
    cv = cv_script()
    net, items = _net(), _items()
    s = cv.slice_scores(net, items)  # the CV's own scoring, batches of 32 in list order
    rules = cv._z_smooth_scores(s)
    ids = [f"{c}_{z}" for c, z in zip(s["case"], s["z"], strict=True)]
    for inferer, name in ((SliceScoreInferer(), "flip_mean_z3"), (SliceScoreInferer(neighbour_radius=0), "flip_mean"),
                          (SliceScoreInferer(flip=False, neighbour_radius=0), "whole"),
                          (SliceScoreInferer(flip=False), "whole_z3")):
        ours = _rule_logodds(items, inferer, net)
        np.testing.assert_allclose([ours[i] for i in ids], rules[name], atol=1e-5, err_msg=name)
    assert np.abs(rules["flip_mean_z3"] - rules["whole"]).max() > 1e-3  # the rule does change the scores


def test_shuffled_dataset_order_gives_identical_probabilities():
    net = _net()
    a = _rule_logodds(_items(order=0), SliceScoreInferer(), net)
    b = _rule_logodds(_items(order=1), SliceScoreInferer(), net)  # the same slices in another order
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)


def test_batches_the_rule_cannot_score_are_refused():
    net, inferer = _net(), SliceScoreInferer()
    x = torch.rand(4, 3, 16, 16)
    with pytest.raises(SliceBatchError, match=r"several patients \['A', 'B'\]"):
        inferer(x, net, slice_index=[0, 1, 0, 1], group=["A", "A", "B", "B"])
    with pytest.raises(SliceBatchError, match=r"patient A are not in strictly increasing slice order \(\[0, 2, 1, 3\]"):
        inferer(x, net, slice_index=[0, 2, 1, 3], group=["A"] * 4)
    with pytest.raises(SliceBatchError, match="not in strictly increasing"):  # a duplicated slice
        inferer(x, net, slice_index=[0, 1, 1, 2])
    with pytest.raises(SliceBatchError, match="needs the slice index"):
        inferer(x, net)
    complete = inferer.with_expected_slices({"A": [0, 1, 2, 3, 4, 5]})  # a patient split over two batches
    with pytest.raises(SliceBatchError, match=r"batch of patient A holds slices \[0, 1, 2, 3\], the patient has"):
        complete(x, net, slice_index=[0, 1, 2, 3], group=["A"] * 4)
    assert SliceScoreInferer(neighbour_radius=0)(x, net).shape == (4, 2)  # no neighbours: any batch
    with pytest.raises(ValueError, match="neighbour_radius must be >= 0"):
        SliceScoreInferer(neighbour_radius=-1)
    # a command-line override gives strings: "false" must switch the mirror mean off, not on (bool("false"))
    assert SliceScoreInferer(flip="false").flip is False and SliceScoreInferer(flip="True").flip is True
    with pytest.raises(ValueError, match=r"SliceScoreInferer: flip must be true or false .*, got 'maybe'"):
        SliceScoreInferer(flip="maybe")


def test_batch_sampler_groups_by_patient_in_slice_order_and_names_bad_items():
    items = [{"patient": "B", "slice_index": 1, "id": "b1"}, {"patient": "A", "slice_index": 2, "id": "a2"},
             {"patient": "B", "slice_index": 0, "id": "b0"}, {"patient": "A", "slice_index": 0, "id": "a0"}]
    sampler = PatientSliceBatchSampler(items)
    assert list(sampler) == [[2, 0], [3, 1]] and len(sampler) == 2
    assert sampler.slices == {"B": [0, 1], "A": [0, 2]}
    with pytest.raises(ValueError, match="/d/A_3.tif: patient A has two slices with slice_index 2 .*a2"):
        PatientSliceBatchSampler(items + [{"patient": "A", "slice_index": 2, "image": "/d/A_3.tif"}])
    with pytest.raises(ValueError, match="x7: a patient batch needs 'patient' and an integer 'slice_index'"):
        PatientSliceBatchSampler([{"id": "x7", "slice_index": 0}])


def test_slice_by_slice_decisions_equal_the_whole_volume_rule():
    """medcnn predict and MONAI Label score each slice alone (``score``) and decide the volume with decide_slices:
    the same probabilities as the inferer over the whole volume, and a slice is called positive (its CAM region
    kept) iff the rule's probability reaches the decision threshold."""
    from medcnn.predict import decide_slices

    net, inferer = _net(), SliceScoreInferer()
    x = torch.stack([i["image"] for i in sorted(_items((9,)), key=lambda i: i["slice_index"])])
    with torch.no_grad():
        whole = torch.softmax(inferer(x, net, slice_index=torch.arange(9)), 1)[:, 1]
        per_slice = torch.cat([inferer.score(x[k:k + 1], net) for k in range(9)])
    masks = [torch.ones(1, 16, 16, dtype=torch.uint8)] * 9
    ordered = np.sort(whole.numpy())
    threshold = float(ordered[3:5].mean())  # between two slices' probabilities: some slices on either side
    rule = {"method": "gradcam", "target_layer": "blocks.0", "threshold": 0.5, "mode": "fraction",
            "largest_component": False, "class_idx": 1, "decision_threshold": threshold}
    gated, results, _ = decide_slices(masks, per_slice, rule, {0: "no", 1: "yes"}, inferer)
    probs = np.array([r["class_probabilities"]["yes"] for r in results])
    np.testing.assert_allclose(probs, whole.numpy(), atol=1e-5)
    called = whole.numpy() >= threshold
    assert 0 < called.sum() < 9
    assert [r["predicted_class"] == "yes" for r in results] == called.tolist()
    assert [bool(m.any()) for m in gated] == called.tolist()
    _, plain, _ = decide_slices(masks, per_slice, rule, {0: "no", 1: "yes"})  # without the neighbour mean
    assert not np.allclose([r["class_probabilities"]["yes"] for r in plain], probs, atol=1e-4)


def test_pdf_report_slices_show_the_rule_probability_and_region(tmp_path):
    """An evaluation with the rule (sampler + PrepareBatchExtraInput + SliceScoreInferer, as evaluate.json): the
    report's slices are titled with the rule's probability, and only slices whose rule probability reaches the
    decision threshold get a region."""
    import pypdf  # a declared test dependency: missing, it fails
    from monai.engines import SupervisedEvaluator
    from monai.transforms import Activationsd

    from medcnn.handlers import PDFReportHandler
    from medcnn.handlers.cam import CAMDiceHandler
    from medcnn.report.cases import ReportCases

    net, inferer = _net(), SliceScoreInferer()
    items = [dict(i, mask=torch.ones(1, 16, 16)) for i in _items((6,))]
    sampler = PatientSliceBatchSampler(items)
    x = torch.stack([i["image"] for i in sorted(items, key=lambda i: i["slice_index"])])
    with torch.no_grad():
        expected = torch.softmax(inferer(x, net, slice_index=torch.arange(6)), 1)[:, 1].numpy()
    threshold = float(np.sort(expected)[2:4].mean())  # between two slices' probabilities
    cam = CAMDiceHandler(net, method="gradcam", target_layer="blocks.0", threshold=0.1, output_key="cam",
                         group_key="patient", min_probability=threshold)
    report = PDFReportHandler(tmp_path, cases=ReportCases(label_key="mask", cam_key="cam", group_key="patient",
                                                          name_key="patient", max_cases=None),
                              cam_handler=cam, presence_threshold=threshold, page_options={"max_slices": 6})
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=DataLoader(Dataset(items), batch_sampler=sampler), network=net,
        inferer=inferer.with_expected_slices(sampler.slices),
        prepare_batch=PrepareBatchExtraInput(extra_keys={"slice_index": "slice_index", "group": "patient"}),
        postprocessing=Activationsd("pred", softmax=True), val_handlers=[cam, report])
    evaluator.run()
    case = report.collector.grouped()[0]
    np.testing.assert_allclose(case["slice_probabilities"], expected, atol=1e-6)
    called = [bool(case["pred"][..., k].any()) for k in range(6)]
    assert called == (expected >= threshold).tolist() and 0 < sum(called) < 6
    text = " ".join(" ".join(p.extract_text() for p in pypdf.PdfReader(str(report.written[0])).pages).split())
    for k in range(6):
        if called[k]:  # the report shows the slices with a region
            assert f"slice {k + 1} of 6: p = {expected[k]:.3f}" in text, k
