import json
import math

import pytest
import torch
from ignite.engine import Engine

from medcnn.handlers import ClassificationReport, MetricsJSONWriter
from medcnn.handlers.metrics_json import to_jsonable


def test_to_jsonable_turns_nan_into_null_and_tensors_into_numbers():
    out = to_jsonable({"a": torch.tensor(0.5), "b": float("nan"), "c": torch.tensor([[1, 2]]), "d": (1.0, math.inf)})
    assert out == {"a": 0.5, "b": None, "c": [[1, 2]], "d": [1.0, None]}


def test_report_and_json_writer_on_an_evaluator(tmp_path):
    # 4 batches of 2 items: probabilities for class 1 and labels, MONAI decollated style
    batches = [
        [(0.9, 1), (0.2, 0)],
        [(0.6, 1), (0.7, 0)],
        [(0.1, 0), (0.4, 1)],
        [(0.8, 1), (0.3, 0)],
    ]

    def step(engine, batch):
        return [{"pred": torch.tensor([1 - p, p]), "label": torch.tensor(y)} for p, y in batch]

    evaluator = Engine(step)
    ClassificationReport().attach(evaluator)
    MetricsJSONWriter(tmp_path, extra=lambda e: {"n_batches": e.state.iteration}).attach(evaluator)
    evaluator.run(batches)
    m = json.loads((tmp_path / "metrics.json").read_text())
    # tp: 0.9, 0.6, 0.8 ; fn: 0.4 ; fp: 0.7 ; tn: 0.2, 0.1, 0.3
    assert m["confusion_matrix"] == [[3, 1], [1, 3]]
    assert m["sensitivity"] == pytest.approx(0.75) and m["specificity"] == pytest.approx(0.75)
    assert m["n_images"] == 8 and m["n_batches"] == 4
    # AUC: positives 0.9,0.6,0.4,0.8 vs negatives 0.2,0.7,0.1,0.3 -> 4+3+3+4 = 14 of 16 pairs ordered
    assert m["auc"] == pytest.approx(14 / 16)
