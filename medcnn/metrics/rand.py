"""The ISBI 2012 challenge's segmentation scores: foreground-restricted Rand and information-theoretic scores after
border thinning (V_rand, V_info), maximised over a threshold sweep of a cell-probability map.

Definition implemented (Arganda-Carreras et al. 2015, "Crowdsourcing the creation of image segmentation
algorithms for connectomics", Front. Neuroanat. 9:142, eqs. 3-6; Fiji Trainable Segmentation
``RandError.getMaximalVRandAfterThinning`` / ``VariationOfInformation.getMaximalVInfoAfterThinning``, run by the
challenge's ``Segmentation evaluation after border thinning`` script with thresholds 0.0-1.0 in steps of 0.1):

1. *Binarise*: the proposal's cells are the pixels whose cell probability is ``> t``; the reference's cells are
   its non-boundary pixels. Each binary map is split into 4-connected components (the cells).
2. *Thin*: the proposal's boundary is thinned to one-pixel watershed lines by growing its cells into it (a seeded
   watershed of the binary boundary map, 4-connectivity, :func:`thin_boundaries`), so a membrane drawn three
   pixels wide costs nothing when its middle lies where the reference's membrane is.
3. *Restrict to the foreground*: only pixels that are cell in the reference are scored (the reference's
   boundary pixels are dropped); a proposal boundary pixel left inside a reference cell counts as a cell of its
   own (a singleton), as in Fiji's ``p_i0`` term.
4. *Score* with the joint distribution ``p_ij`` of (reference cell i, proposed cell j) over those ``n`` pixels,
   ``a_i = sum_j p_ij``, ``b_j = sum_i p_ij`` (N^2 normalisation: a pixel pairs with itself too):
   ``V_rand = sum p_ij^2 / (0.5 sum a_i^2 + 0.5 sum b_j^2)``, the harmonic mean of the split score
   ``sum p_ij^2 / sum a_i^2`` (1 when no reference cell is split) and the merge score
   ``sum p_ij^2 / sum b_j^2`` (1 when no proposed cell merges reference cells);
   ``V_info = 2 I(A; B) / (H(A) + H(B))`` (entropies in nats), the harmonic mean of the split score
   ``I / H(B)`` and the merge score ``I / H(A)``.
5. *Sweep*: every threshold is scored on every slice, slice scores are averaged (Fiji averages per slice), and
   the best mean over the thresholds is reported, each score at its own best threshold.

Sources: the scoring formulas (N^2 normalisation, the ``p_i0`` singleton terms, entropies in nats) follow Fiji's
``RandError.getForegroundRestrictedRandIndexStatsN2`` and ``VariationOfInformation.foregroundRestrictedVI``, read
for this implementation; the source of Fiji's thinning step was not available, so steps 2 and 5 follow the
challenge paper's description (borders thinned to one pixel, best score over the threshold sweep) and a MATLAB
port of the challenge scorer (watershed of the binary boundary map, 4-connectivity, proposal only).

Where this can differ from the official Fiji scorer:
- The thinning uses scikit-image's seeded watershed; Fiji's own watershed may place a line one pixel
  differently where a flat boundary is exactly equidistant from two cells, and if Fiji also thins the
  reference's borders (not done here: they are dropped by the foreground restriction anyway, but thinning them
  first would add their pixels to the neighbouring reference cells), its scores count those pixels too.
- The reference is binarised once (``label > 0``); Fiji binarises it with the same threshold as the proposal,
  which only matters at ``t = 1.0``, where Fiji's reference becomes empty (score undefined, never the maximum)
  and here the all-boundary proposal scores low.
- Stack figures average per-slice scores; were Fiji to pool pair counts over slices for V_rand, a stack's
  figure would move slightly (one slice: identical).

Not the same as :func:`skimage.metrics.adapted_rand_error` (SNEMI3D): that one counts pairs without self-pairs
(``n(n - 1)``) and treats the proposal's label 0 as one object instead of singletons; ``variation_of_information``
gives the two conditional entropies but not the normalised score. Both are used in the tests as cross-checks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from medcnn.metrics.segmentation import ISBI_THRESHOLDS  # the challenge script's sweep: 0.0, 0.1, ..., 1.0

__all__ = [
    "ISBI_THRESHOLDS",
    "thin_boundaries",
    "foreground_restricted_scores",
    "rand_info_sweep",
    "best_rand_info",
]

SCORE_KEYS = ("v_rand", "v_rand_split", "v_rand_merge", "v_info", "v_info_split", "v_info_merge")


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _as_2d(x, name: str) -> np.ndarray:
    a = _to_numpy(x)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2D slice (H, W) or (1, H, W), got shape {a.shape}")
    return a


def thin_boundaries(cell_mask, connectivity: int = 1) -> np.ndarray:
    """Cells of a binary map ``(H, W)`` (True = cell) grown into the boundary until it is one-pixel watershed lines.

    Returns ``(H, W)`` int32 labels: 1..K for the ``connectivity``-connected cells (1 = 4-connected), 0 on the
    remaining lines. A map without any cell pixel stays all 0 (all boundary).
    """
    from skimage.measure import label
    from skimage.segmentation import watershed

    cells = _as_2d(cell_mask, "cell_mask").astype(bool)
    markers = label(cells, connectivity=connectivity).astype(np.int32)
    if markers.max() == 0 or cells.all():
        return markers
    # flat landscape: cells at 0, boundary at 1, so the boundary is split by distance from the cells
    grown = watershed((~cells).astype(np.uint8), markers, connectivity=connectivity, watershed_line=True)
    return grown.astype(np.int32)


def foreground_restricted_scores(true_labels, pred_labels) -> dict[str, float]:
    """V_rand, V_info and their split / merge parts of proposed labels against reference labels, both ``(H, W)``.

    ``true_labels``: reference cells 1..K, 0 = boundary (not scored). ``pred_labels``: proposed cells (any
    integers), 0 = boundary: each such pixel inside a reference cell is a singleton. Returns the six
    :data:`SCORE_KEYS` (1.0 = identical cells) plus ``n_pixels`` (scored pixels); scores are NaN without any
    reference cell pixel.
    """
    t = _as_2d(true_labels, "true_labels")
    p = _as_2d(pred_labels, "pred_labels")
    if t.shape != p.shape:
        raise ValueError(f"reference labels {t.shape} and proposed labels {p.shape} differ in shape")
    if (t.size and t.min() < 0) or (p.size and p.min() < 0):
        raise ValueError("label images must be non-negative (0 = boundary, 1..K = cells)")
    fg = t != 0
    n = int(fg.sum())
    if n == 0:
        return {**dict.fromkeys(SCORE_KEYS, math.nan), "n_pixels": 0}
    ti, pj = t[fg].astype(np.int64), p[fg].astype(np.int64)
    singletons = int(np.count_nonzero(pj == 0))
    _, a = np.unique(ti, return_counts=True)  # reference cell sizes
    labelled = pj != 0
    _, b = np.unique(pj[labelled], return_counts=True)  # proposed cell sizes inside the reference foreground
    pairs = ti[labelled] * (int(pj.max()) + 1) + pj[labelled]
    _, ab = np.unique(pairs, return_counts=True)  # overlaps of reference cell i and proposed cell j
    a, b, ab = a.astype(np.float64), b.astype(np.float64), ab.astype(np.float64)

    # Rand: sums of squared (pair) counts; a singleton pairs only with itself
    sum_a2 = float(a @ a)
    sum_b2 = float(b @ b) + singletons
    sum_ab2 = float(ab @ ab) + singletons
    rand_split, rand_merge = sum_ab2 / sum_a2, sum_ab2 / sum_b2
    v_rand = sum_ab2 / (0.5 * sum_a2 + 0.5 * sum_b2)

    # information: entropies of the normalised counts; s singletons of probability 1/n add (s/n) log n
    def entropy(counts: np.ndarray, extra: int) -> float:
        q = counts / n
        return float(-(q * np.log(q)).sum()) + (extra / n) * math.log(n)

    h_a, h_b, h_ab = entropy(a, 0), entropy(b, singletons), entropy(ab, singletons)
    mutual = max(h_a + h_b - h_ab, 0.0)
    if h_a + h_b <= 0.0:  # one reference cell, one proposed cell: identical
        v_info = info_split = info_merge = 1.0
    else:
        v_info = 2.0 * mutual / (h_a + h_b)
        info_split = mutual / h_b if h_b > 0 else 1.0
        info_merge = mutual / h_a if h_a > 0 else 1.0
    return {
        "v_rand": v_rand,
        "v_rand_split": rand_split,
        "v_rand_merge": rand_merge,
        "v_info": v_info,
        "v_info_split": info_split,
        "v_info_merge": info_merge,
        "n_pixels": n,
    }


def rand_info_sweep(
    cell_probability,
    true_cells,
    thresholds: Sequence[float] = ISBI_THRESHOLDS,
    thin: bool = True,
    connectivity: int = 1,
) -> np.ndarray:
    """``(T, 6)`` scores (:data:`SCORE_KEYS` order) of one slice for every threshold of its cell probability.

    ``cell_probability`` ``(H, W)``: probability of *cell* (not membrane) in [0, 1]; ``true_cells`` ``(H, W)``:
    the reference cell mask (nonzero = cell). The proposal at threshold ``t`` is ``cell_probability > t``,
    thinned (:func:`thin_boundaries`) unless ``thin`` is False; the reference cells are the connected
    components of ``true_cells``.
    """
    from skimage.measure import label

    prob = _as_2d(cell_probability, "cell_probability").astype(np.float64, copy=False)
    truth = _as_2d(true_cells, "true_cells") != 0
    if prob.shape != truth.shape:
        raise ValueError(f"cell probability {prob.shape} and reference {truth.shape} differ in shape")
    if not np.isfinite(prob).all():
        raise ValueError("cell probability map contains NaN or infinite values")
    true_labels = label(truth, connectivity=connectivity)
    out = np.empty((len(thresholds), len(SCORE_KEYS)))
    for k, thr in enumerate(thresholds):
        cells = prob > thr
        pred = thin_boundaries(cells, connectivity) if thin else label(cells, connectivity=connectivity)
        scores = foreground_restricted_scores(true_labels, pred)
        out[k] = [scores[key] for key in SCORE_KEYS]
    return out


def best_rand_info(sweeps, thresholds: Sequence[float] = ISBI_THRESHOLDS) -> dict[str, float]:
    """Challenge figures from per-slice sweeps ``(S, T, 6)`` (or one ``(T, 6)``): slice means, best threshold each.

    Returns ``v_rand`` with ``v_rand_threshold`` and the split / merge parts at that threshold, and the same for
    ``v_info``; NaN when no slice has a reference cell.
    """
    s = _to_numpy(sweeps).astype(np.float64)
    s = s[None] if s.ndim == 2 else s
    if s.ndim != 3 or s.shape[1:] != (len(thresholds), len(SCORE_KEYS)):
        raise ValueError(f"expected sweeps (S, {len(thresholds)}, {len(SCORE_KEYS)}), got shape {s.shape}")
    valid = ~np.isnan(s[:, :, 0]).all(axis=1)
    out: dict[str, float] = {}
    if not valid.any():
        for name in ("v_rand", "v_info"):
            out.update({name: math.nan, f"{name}_threshold": math.nan})
            out.update({f"{name}_split": math.nan, f"{name}_merge": math.nan})
        return out
    mean = s[valid].mean(axis=0)  # (T, 6)
    for name in ("v_rand", "v_info"):
        col = SCORE_KEYS.index(name)
        best = int(np.argmax(mean[:, col]))
        out[name] = float(mean[best, col])
        out[f"{name}_threshold"] = float(thresholds[best])
        out[f"{name}_split"] = float(mean[best, col + 1])
        out[f"{name}_merge"] = float(mean[best, col + 2])
    return out
