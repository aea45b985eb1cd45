import json

import numpy as np
import pytest
from ignite.engine import Engine, Events
from PIL import Image

from medcnn.handlers import TrainingCurvesHandler
from medcnn.report.plots import plot_confusion_matrix, plot_curves, plot_roc, save_error_overlay, save_mask_overlay


def _nonblank(path):
    a = np.asarray(Image.open(path).convert("L"), dtype=float)
    return a.std() > 1.0


def test_figures_are_written(tmp_path):
    plot_confusion_matrix([[50, 5], [3, 42]], ["normal", "pneumonia"], tmp_path / "cm.png")
    plot_curves({"epoch": [1, 2, 3], "loss": [1.0, 0.6, 0.4], "dice": [0.5, 0.7], "dice_x": [1, 3]}, tmp_path / "c.png")
    auc = plot_roc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], tmp_path / "roc.png")
    assert auc == pytest.approx(0.75)
    for f in ("cm.png", "c.png", "roc.png"):
        assert _nonblank(tmp_path / f)


def test_error_overlay_counts_wrong_pixels(tmp_path):
    img = np.random.rand(20, 20)
    label = np.zeros((20, 20))
    pred = label.copy()
    pred[:2] = 1  # 40 of 400 pixels wrong
    frac = save_error_overlay(img, pred, label, tmp_path / "err.png", title="slice 3")
    assert frac == pytest.approx(0.1)
    rgb = np.asarray(Image.open(tmp_path / "err.png").convert("RGB"), dtype=int)
    red = (rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)
    assert red.sum() > 50
    save_mask_overlay(img, label, tmp_path / "m.png", heatmap2d=img)
    with pytest.raises(ValueError, match="same shape"):
        save_error_overlay(img, pred[:5], label, tmp_path / "x.png")


def test_curves_handler_records_loss_and_validation(tmp_path):
    trainer = None

    def eval_step(engine, batch):
        engine.state.metrics = {"val_dice": 0.2 * trainer.state.epoch, "name": "not a number"}

    evaluator = Engine(eval_step)

    def step(engine, batch):
        return [{"loss": 1.0 / engine.state.epoch}]

    trainer = Engine(step)
    handler = TrainingCurvesHandler(tmp_path, evaluator=evaluator)
    handler.attach(trainer)

    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: evaluator.run([0]))

    trainer.run([0, 1], max_epochs=3)
    hist = json.loads((tmp_path / "curves.json").read_text())
    assert hist["epoch"] == [1, 2, 3]
    assert hist["loss"] == pytest.approx([1.0, 0.5, 1 / 3])
    assert len(hist["time_s"]) == 3 and hist["time_s"] == sorted(hist["time_s"])
    assert hist["val_dice"] == pytest.approx([0.2, 0.4, 0.6]) and hist["val_dice_x"] == [1, 2, 3]
    assert "name" not in hist
    assert (tmp_path / "curves.png").exists()


def test_report_slices_span_the_finding():
    import numpy as np

    from medcnn.report.pdf import select_slices

    pred = np.zeros((8, 8, 40), np.uint8)
    for z in range(10, 31):
        pred[: 1 + (z == 20) * 6, :2, z] = 1  # a finding on slices 10-30, largest on slice 20
    picked = select_slices(pred, max_slices=6)
    assert len(picked) == 6 and picked == sorted(picked)
    assert picked[0] == 10 and picked[-1] == 30 and 20 in picked  # both ends of the finding and its largest slice
    assert select_slices(pred[..., 9:13], max_slices=6) == [1, 2, 3]  # few positive slices: all of them
    assert select_slices(np.zeros((4, 4, 5))) == [1, 2, 3]  # nothing found: evenly spaced slices
