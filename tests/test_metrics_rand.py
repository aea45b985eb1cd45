"""V_rand / V_info (medcnn.metrics.rand): known answers worked out by hand from the challenge definition, the
border thinning, the threshold sweep, cross-checks against scikit-image, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import variation_of_information

from medcnn.metrics import best_rand_info, foreground_restricted_scores, rand_info_sweep, thin_boundaries
from medcnn.metrics.rand import SCORE_KEYS


def _cells(*sizes: int) -> np.ndarray:
    """One row of cells of the given widths (labels 1, 2, ...), each followed by a one-pixel membrane (0); (2, W)."""
    row: list[int] = []
    for k, size in enumerate(sizes, start=1):
        row += [k] * size + [0]
    return np.array([row, row])


def test_identical_segmentations_score_one():
    gt = _cells(4, 6, 3)
    s = foreground_restricted_scores(gt, gt)
    for key in SCORE_KEYS:
        assert s[key] == 1.0, key
    # relabelling the proposal changes nothing; neither do proposal boundary pixels on the reference membrane
    pred = np.where(gt > 0, 10 - gt, 0)
    assert foreground_restricted_scores(gt, pred)["v_rand"] == 1.0
    assert foreground_restricted_scores(gt, pred)["v_info"] == 1.0


def test_split_cell_lowers_the_scores_by_the_definition():
    # two reference cells of 8 pixels (2 x 4 each); the proposal cuts the first one into two halves of 4 pixels
    gt = _cells(4, 4)
    pred = gt.copy()
    pred[1, :4] = 3
    s = foreground_restricted_scores(gt, pred)
    # n = 16: sum a_i^2 = (64 + 64) / 256 = 1/2, sum b_j^2 = (16 + 16 + 64) / 256 = 3/8 = sum p_ij^2
    assert s["v_rand_split"] == pytest.approx((3 / 8) / (1 / 2))
    assert s["v_rand_merge"] == pytest.approx(1.0)
    assert s["v_rand"] == pytest.approx((3 / 8) / (0.5 * 1 / 2 + 0.5 * 3 / 8))  # = 6/7
    # H(A) = log 2, H(B) = 1/4 log 4 + 1/4 log 4 + 1/2 log 2 = 3/2 log 2, I = H(A) (B refines A)
    assert s["v_info"] == pytest.approx(2 * math.log(2) / (math.log(2) + 1.5 * math.log(2)))  # = 0.8
    assert s["v_info_split"] == pytest.approx(1 / 1.5) and s["v_info_merge"] == pytest.approx(1.0)


def test_merged_cells_lower_the_scores_by_the_definition():
    # three reference cells of 8 pixels; the proposal joins the first two across their membrane
    gt = _cells(4, 4, 4)
    pred = gt.copy()
    pred[pred == 2] = 1
    pred[:, 4] = 1
    s = foreground_restricted_scores(gt, pred)
    # n = 24: sum a_i^2 = 3 * 64 / 576 = 1/3 = sum p_ij^2, sum b_j^2 = (256 + 64) / 576 = 5/9
    assert s["v_rand_merge"] == pytest.approx((1 / 3) / (5 / 9))
    assert s["v_rand_split"] == pytest.approx(1.0)
    assert s["v_rand"] == pytest.approx((1 / 3) / (0.5 * 1 / 3 + 0.5 * 5 / 9))  # = 3/4
    h_a = math.log(3)
    h_b = -(2 / 3) * math.log(2 / 3) - (1 / 3) * math.log(1 / 3)  # I = H(B): A refines B
    assert s["v_info"] == pytest.approx(2 * h_b / (h_a + h_b))
    assert s["v_info_merge"] == pytest.approx(h_b / h_a) and s["v_info_split"] == pytest.approx(1.0)


def test_proposal_boundary_inside_a_cell_counts_as_singletons():
    gt = _cells(2, 2)  # two cells of 4 pixels
    pred = gt.copy()
    pred[0, 0] = 0  # one pixel of cell 1 marked boundary by the proposal
    s = foreground_restricted_scores(gt, pred)
    # sum a^2 = 16 + 16, sum b^2 = 9 + 16 + 1 (singleton) = sum p^2 (all over n^2 = 64)
    assert s["v_rand"] == pytest.approx(26 / (0.5 * 32 + 0.5 * 26))
    assert s["n_pixels"] == 8


def test_v_info_agrees_with_scikit_image_conditional_entropies():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 5, (40, 40))  # 0 = reference boundary, ignored
    pred = rng.integers(0, 7, (40, 40))
    s = foreground_restricted_scores(gt, pred)
    # scikit-image treats proposal label 0 as one object; give every proposal boundary pixel its own label
    singles = np.where(pred == 0, 1000 + np.arange(pred.size).reshape(pred.shape), pred)
    # scikit-image returns (H(image1 | image0), H(image0 | image1)) in bits; medcnn works in nats
    h_b_given_a, h_a_given_b = variation_of_information(gt, singles, ignore_labels=(0,)) * math.log(2)
    fg = gt > 0
    q_a = np.unique(gt[fg], return_counts=True)[1] / fg.sum()
    q_b = np.unique(singles[fg], return_counts=True)[1] / fg.sum()
    h_a, h_b = -(q_a * np.log(q_a)).sum(), -(q_b * np.log(q_b)).sum()
    mutual = h_a - h_a_given_b
    assert mutual == pytest.approx(h_b - h_b_given_a)
    assert s["v_info"] == pytest.approx(2 * mutual / (h_a + h_b))


def test_thinning_makes_a_thick_centred_membrane_free_but_not_a_shifted_one():
    gt = np.zeros((6, 21), int)
    gt[:, :10], gt[:, 11:] = 1, 2  # membrane at column 10
    cells = np.ones((6, 21), bool)
    cells[:, 9:12] = False  # the proposal draws it three pixels wide, centred
    thinned = thin_boundaries(cells)
    assert (thinned[:, 10] == 0).all() and (thinned[:, :10] == 1).all() and (thinned[:, 11:] == 2).all()
    prob = np.where(cells, 0.9, 0.2)
    thin = best_rand_info(rand_info_sweep(prob, gt > 0))
    assert thin["v_rand"] == 1.0 and thin["v_info"] == 1.0
    assert 0.2 <= thin["v_rand_threshold"] < 0.9
    # without thinning the two extra membrane columns are 12 singletons inside reference cells
    raw = best_rand_info(rand_info_sweep(prob, gt > 0, thin=False))
    assert raw["v_rand"] < 1.0 and raw["v_info"] < 1.0
    # a membrane drawn in the wrong place cuts a reference cell: thinning does not forgive that
    shifted = np.ones((6, 21), bool)
    shifted[:, 4] = False
    assert best_rand_info(rand_info_sweep(np.where(shifted, 0.9, 0.2), gt > 0))["v_rand"] < 1.0


def test_sweep_takes_the_best_slice_mean_per_score():
    thresholds = (0.2, 0.5)
    sweeps = np.zeros((2, 2, len(SCORE_KEYS)))
    sweeps[0, :, 0], sweeps[1, :, 0] = [0.9, 0.7], [0.7, 0.8]  # v_rand: means 0.8, 0.75 -> 0.2
    sweeps[0, :, 3], sweeps[1, :, 3] = [0.5, 0.9], [0.5, 0.7]  # v_info: means 0.5, 0.8 -> 0.5
    out = best_rand_info(sweeps, thresholds)
    assert out["v_rand"] == pytest.approx(0.8) and out["v_rand_threshold"] == 0.2
    assert out["v_info"] == pytest.approx(0.8) and out["v_info_threshold"] == 0.5


def test_no_reference_cell_is_nan_and_bad_input_is_named():
    empty = np.zeros((4, 4), int)
    assert math.isnan(foreground_restricted_scores(empty, empty)["v_rand"])
    assert math.isnan(best_rand_info(rand_info_sweep(np.ones((4, 4)), empty))["v_info"])
    with pytest.raises(ValueError, match="NaN"):
        rand_info_sweep(np.full((4, 4), np.nan), np.ones((4, 4)))
    with pytest.raises(ValueError, match="differ in shape"):
        foreground_restricted_scores(np.ones((4, 4), int), np.ones((4, 5), int))
    with pytest.raises(ValueError, match="non-negative"):
        foreground_restricted_scores(np.ones((4, 4), int), -np.ones((4, 4), int))
    with pytest.raises(ValueError, match=r"2D slice"):
        foreground_restricted_scores(np.ones((2, 4, 4), int), np.ones((2, 4, 4), int))
