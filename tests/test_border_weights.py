"""U-Net border weight map and the pixel-weighted Dice-CE loss that carries it in the label."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss
from scipy import ndimage
from skimage.measure import label as connected_components

from medcnn.losses import PixelWeightedDiceCELoss
from medcnn.transforms import BorderWeightMap, BorderWeightMapd, border_weight_map


def _three_cells() -> np.ndarray:
    """Membrane mask (True = membrane) 40x60: a 2-px membrane between cells A|B, a 12-px one between B|C."""
    sep = np.zeros((40, 60), dtype=bool)
    sep[:, 20:22] = True  # thin gap A|B
    sep[:, 38:50] = True  # wide gap B|C
    return sep


def _exact(sep: np.ndarray, w0: float, sigma: float) -> np.ndarray:
    """The definition, with full-image distance transforms for every region."""
    regions = connected_components(~sep, connectivity=1)
    d = np.stack([ndimage.distance_transform_edt(regions != k) for k in range(1, regions.max() + 1)])
    d.sort(axis=0)
    return 1 + w0 * np.exp(-((d[0] + d[1]) ** 2) / (2 * sigma**2)) * sep


def test_thin_gaps_weigh_more_than_wide_ones_and_match_the_definition() -> None:
    sep = _three_cells()
    w = border_weight_map(sep, w0=10, sigma=5)
    assert w.dtype == np.float32 and w.shape == sep.shape
    assert np.all(w[~sep] == 1)  # cells keep weight 1
    thin, wide = w[:, 20:22].mean(), w[:, 43:45].mean()
    assert thin > 8 and wide < 3, (thin, wide)
    np.testing.assert_allclose(w, _exact(sep, 10, 5), atol=1e-3)


def test_real_sized_label_matches_the_exact_unbounded_map() -> None:
    rng = np.random.default_rng(0)
    sep = np.zeros((128, 128), dtype=bool)
    for _ in range(12):  # random straight membranes cut the square into many cells
        if rng.random() < 0.5:
            sep[rng.integers(0, 128), :] = True
        else:
            sep[:, rng.integers(0, 128)] = True
    np.testing.assert_allclose(border_weight_map(sep, 10, 5), _exact(sep, 10, 5), atol=1e-3)


def test_dictionary_transform_adds_a_weight_key_and_rejects_bad_shapes() -> None:
    label = torch.as_tensor(_three_cells()[None].astype(np.float32))
    out = BorderWeightMapd(keys="label", weight_key="w")({"label": label})
    assert out["w"].shape == (1, 40, 60) and torch.equal(out["label"], label)
    with pytest.raises(ValueError, match=r"\(1, H, W\)"):
        BorderWeightMap()(label[0])
    with pytest.raises(ValueError, match="sigma"):
        BorderWeightMap(sigma=0)


def test_loss_with_unit_weights_equals_monai_dice_ce_and_weights_change_it() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 16, 16)
    label = (torch.rand(2, 1, 16, 16) > 0.7).float()
    ours = PixelWeightedDiceCELoss(lambda_dice=0.5)
    ref = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.5)(logits, label)
    assert torch.allclose(ours(logits, torch.cat([label, torch.ones_like(label)], 1)), ref, atol=1e-6)
    heavy = torch.cat([label, 1 + 9 * label], 1)  # membrane pixels x10
    assert ours(logits, heavy) > ref
    with pytest.raises(ValueError, match="class index and weight map"):
        ours(logits, label)
