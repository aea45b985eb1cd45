"""EM bundle Ignite pieces: pixel-confusion metric, error overlays + confusion heatmap, TIFF prediction writer."""

import json

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor
from monai.networks.utils import one_hot

from medcnn.data.tiff import read_stack
from medcnn.handlers.segmentation import (
    MaxFPixelErrorMetric,
    PixelConfusionMetric,
    SegmentationFiguresHandler,
    StackPredictionWriter,
)


def _items():
    """Two 2D items: label has a vertical membrane line; prediction misses half of it on the second."""
    out = []
    for k in range(2):
        label = torch.zeros(1, 16, 16)
        label[0, :, 8] = 1
        pred = label.clone()
        if k == 1:
            pred[0, :8, 8] = 0
        meta = {"filename_or_obj": "/data/vol.tif", "slice_index": 3 + k}
        out.append(
            {
                "image": MetaTensor(torch.rand(1, 16, 16), meta=dict(meta)),
                "pred": MetaTensor(one_hot(pred[None], 2)[0], meta=dict(meta)),
                "label": MetaTensor(one_hot(label[None], 2)[0], meta=dict(meta)),
            }
        )
    return out


def test_metric_figures_handler_and_writer_on_an_engine(tmp_path):
    items = _items()
    engine = Engine(lambda e, batch: batch)
    PixelConfusionMetric(2, ["cell", "membrane"], boundary_class=1, count_name="n_slices").attach(engine, "seg")
    SegmentationFiguresHandler(tmp_path, ["cell", "membrane"]).attach(engine)
    writer = StackPredictionWriter(tmp_path / "pred", value_map={1: 0, 0: 255})
    writer.attach(engine)
    state = engine.run([items[:1], items[1:]], max_epochs=1)
    m = state.metrics
    # membrane: 32 true pixels, 24 found, no false positives
    assert m["confusion_matrix"] == [[480, 0], [8, 24]]
    assert m["pixel_accuracy"] == pytest.approx(504 / 512)
    assert m["membrane_dice"] == pytest.approx(48 / 56)
    assert m["n_slices"] == 2
    assert m["adapted_rand_error"] > 0  # the broken membrane merges the two cells on the second slice
    assert (tmp_path / "confusion_matrix.png").is_file()
    assert (tmp_path / "error_overlays" / "vol_slice004_error.png").is_file()
    errors = json.loads((tmp_path / "error_overlays" / "pixel_errors.json").read_text())
    assert errors == {"vol_slice003": 0.0, "vol_slice004": pytest.approx(8 / 256)}
    stack = read_stack(tmp_path / "pred" / "vol_pred.tif")
    assert stack.shape == (2, 16, 16) and set(np.unique(stack).tolist()) == {0, 255}
    assert (stack[1, :8, 8] == 255).all() and (stack[0, :, 8] == 0).all()


def test_metric_rejects_wrong_class_count():
    with pytest.raises(ValueError, match="class names"):
        PixelConfusionMetric(3, ["a", "b"])


def test_isbi_pixel_error_metric_scores_cell_probabilities_over_all_items():
    engine = Engine(lambda e, batch: batch)
    MaxFPixelErrorMetric(scored_class=0).attach(engine, "isbi")
    items = []
    for k in range(2):
        label = torch.zeros(1, 8, 8)
        label[0, :, 4] = 1  # membrane column; cells elsewhere
        prob_membrane = label.clone() * 0.8 + 0.1
        if k == 1:
            prob_membrane[0, :, 5] = 0.6  # a membrane-ish column the reference calls cell
        items.append({"prob": torch.cat([1 - prob_membrane, prob_membrane]), "label": one_hot(label[None], 2)[0]})
    m = engine.run([items], max_epochs=1).metrics
    # cell probability 0.9 on true cells except 0.4 on the doubtful column, 0.1 on membrane:
    # a threshold in [0.1, 0.4) keeps every true cell and drops the membrane -> F = 1, error 0
    assert m["isbi_pixel_error"] == pytest.approx(0.0) and 0.1 <= m["isbi_pixel_error_threshold"] < 0.4
    with pytest.raises(ValueError, match="class probabilities"):
        MaxFPixelErrorMetric(scored_class=1).update(([torch.rand(1, 4, 4)], [torch.zeros(1, 4, 4)]))


def test_key_figure_makes_the_report_the_evaluators_key_metric():
    """One confusion matrix gives the key metric: the figure MONAI's ConfusionMatrix handler gave, best tracked."""
    from monai.engines import SupervisedEvaluator
    from monai.handlers import ConfusionMatrix, from_engine

    items = _items()

    class Identity(torch.nn.Module):
        def forward(self, x):
            return x

    def run(key_metric, additional=None):
        loader = torch.utils.data.DataLoader([{"image": i["pred"], "label": i["label"]} for i in items], batch_size=1)
        evaluator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=loader, network=Identity(),
                                        key_val_metric={"dice": key_metric}, additional_metrics=additional)
        evaluator.run()
        return evaluator.state

    ours = run(PixelConfusionMetric(2, ["cell", "membrane"], key_figure="membrane_dice"))
    monai = run(ConfusionMatrix(include_background=False, metric_name="f1", reduction="sum",
                                output_transform=from_engine(["pred", "label"])))
    assert ours.metrics["dice"] == pytest.approx(48 / 56) and ours.metrics["dice"] == pytest.approx(
        monai.metrics["dice"], abs=1e-7)
    assert ours.best_metric == pytest.approx(48 / 56) and ours.metrics["confusion_matrix"] == [[480, 0], [8, 24]]
    with pytest.raises(KeyError, match="key_figure 'tumour_dice' is not a figure of the report.*membrane_dice"):
        run(PixelConfusionMetric(2, ["cell", "membrane"], key_figure="tumour_dice"))
