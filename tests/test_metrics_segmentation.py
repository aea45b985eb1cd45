import math

import numpy as np
import pytest
import torch

from medcnn.metrics.segmentation import (
    adapted_rand_error_2d,
    max_f_pixel_error,
    normalise_confusion_matrix,
    per_class_scores,
    pixel_accuracy,
    pixel_confusion_matrix,
    segmentation_report,
    threshold_counts,
)


def test_confusion_matrix_counts_rows_true_columns_pred():
    y = np.array([[0, 0, 1], [1, 2, 2]])
    p = np.array([[0, 1, 1], [2, 2, 0]])
    cm = pixel_confusion_matrix(y, p, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 1], [1, 0, 1]]
    # torch input, extra singleton dims, same result
    assert (pixel_confusion_matrix(torch.tensor(y)[None, None], torch.tensor(p)[None, None], 3) == cm).all()


def test_binary_figures_match_hand_computation():
    # tp=3 fn=1 fp=2 tn=4 for class 1
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    p = np.array([1, 1, 1, 0, 1, 1, 0, 0, 0, 0])
    cm = pixel_confusion_matrix(y, p, 2)
    assert cm.tolist() == [[4, 2], [1, 3]]
    assert pixel_accuracy(cm) == pytest.approx(0.7)
    s = per_class_scores(cm)
    assert s["precision"][1] == pytest.approx(3 / 5)
    assert s["recall"][1] == pytest.approx(3 / 4)
    assert s["dice"][1] == pytest.approx(6 / 9) == s["f1"][1]
    assert s["iou"][1] == pytest.approx(3 / 6)
    assert s["dice"][0] == pytest.approx(8 / 11)
    r = segmentation_report(cm, ["cell", "membrane"])
    assert r["membrane_dice"] == pytest.approx(6 / 9)
    assert r["cell_recall"] == pytest.approx(4 / 6)
    assert np.sum(r["confusion_matrix_normalised"]) == pytest.approx(1.0)
    assert r["confusion_matrix_normalised"][0][1] == pytest.approx(0.2)


def test_dice_matches_monai_for_one_image():
    from monai.metrics import compute_dice
    from monai.networks.utils import one_hot

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, (1, 1, 16, 16))
    p = np.where(rng.random((1, 1, 16, 16)) < 0.7, y, rng.integers(0, 3, (1, 1, 16, 16)))
    ours = per_class_scores(pixel_confusion_matrix(y, p, 3))["dice"]
    ref = compute_dice(one_hot(torch.tensor(p), 3), one_hot(torch.tensor(y), 3), include_background=True)
    assert np.allclose(ours, ref[0].numpy())


def test_normalisation_modes_and_absent_class_is_nan():
    cm = np.array([[5, 5, 0], [0, 10, 0], [0, 0, 0]])
    assert np.allclose(normalise_confusion_matrix(cm, "true")[0], [0.5, 0.5, 0.0])
    assert np.allclose(normalise_confusion_matrix(cm, "pred")[:, 1], [1 / 3, 2 / 3, 0.0])
    assert np.isnan(normalise_confusion_matrix(cm, "true")[2]).all()
    s = per_class_scores(cm)
    assert math.isnan(s["dice"][2]) and math.isnan(s["recall"][2])
    r = segmentation_report(cm, ["a", "b", "c"])
    assert r["mean_dice"] == pytest.approx(np.mean([10 / 15, 20 / 25]))
    with pytest.raises(ValueError, match="mode"):
        normalise_confusion_matrix(cm, "rows")


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="shape"):
        pixel_confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 2)
    with pytest.raises(ValueError, match=r"outside \[0, 2\)"):
        pixel_confusion_matrix(np.array([0, 255]), np.array([0, 1]), 2)
    with pytest.raises(ValueError, match="integer"):
        pixel_confusion_matrix(np.array([0.5, 1.0]), np.array([0, 1]), 2)
    with pytest.raises(ValueError, match="class names"):
        segmentation_report(np.eye(2), ["only_one"])


def test_adapted_rand_error_zero_for_identical_regions_and_positive_for_merge():
    membrane = np.zeros((20, 20), np.uint8)
    membrane[:, 10] = 1  # two cells separated by a membrane
    err, prec, rec = adapted_rand_error_2d(membrane, membrane)
    assert err == pytest.approx(0.0) and prec == pytest.approx(1.0) and rec == pytest.approx(1.0)
    merged = np.zeros_like(membrane)  # the prediction misses the membrane: the two cells merge
    err, prec, rec = adapted_rand_error_2d(membrane, merged)
    assert err > 0.2 and min(prec, rec) < 1.0 and max(prec, rec) == pytest.approx(1.0)


def test_max_f_pixel_error_is_one_minus_best_f_score_over_the_threshold_sweep():
    truth = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    prob = np.array([0.95, 0.75, 0.55, 0.35, 0.65, 0.15, 0.05, 0.0])
    counts = threshold_counts(prob, truth)
    assert counts.shape == (11, 3)
    # "> t", as the challenge's Fiji scorer binarises: at t = 0.0 every pixel above 0 counts as positive
    assert counts[0].tolist() == [4, 3, 0] and counts[10].tolist() == [0, 0, 4]
    assert counts[5].tolist() == [3, 1, 1]  # t = 0.5: 0.95, 0.75, 0.55 right; 0.65 wrong; 0.35 missed
    f1 = [2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0 for tp, fp, fn in counts]
    error, threshold = max_f_pixel_error(counts)
    # t = 0.2 and 0.3 both give tp 4, fp 1 -> F 8/9; the lower threshold is reported
    assert error == pytest.approx(1 - max(f1)) and threshold == pytest.approx(0.2)
    assert error == pytest.approx(1 / 9)
    # not 1 - accuracy: at t = 0.2 one pixel of eight is wrong (accuracy 0.875), the F-score is 8/9
    halves = threshold_counts(prob[:4], truth[:4]) + threshold_counts(prob[4:], truth[4:])
    assert np.array_equal(halves, counts)  # sums over images


def test_max_f_pixel_error_rejects_bad_input():
    with pytest.raises(ValueError, match="differ in shape"):
        threshold_counts(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        threshold_counts(np.array([0.2, np.nan]), np.array([0, 1]))
    with pytest.raises(ValueError, match="counts"):
        max_f_pixel_error(np.zeros((3, 3)))
    assert math.isnan(max_f_pixel_error(threshold_counts(np.zeros(4), np.zeros(4)))[0])
