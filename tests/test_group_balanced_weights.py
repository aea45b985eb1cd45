"""group_balanced_weights: with torch's WeightedRandomSampler every site is drawn equally often, whatever its size."""

from __future__ import annotations

import collections

import pytest
import torch
from monai.data import Dataset
from torch.utils.data import WeightedRandomSampler

from medcnn.data import group_balanced_weights
from medcnn.networks import tcga_site


def _items():
    # 30 slices from 6 DU patients, 6 slices from one FG patient, 12 from two CS patients
    return ([{"patient": f"TCGA_DU_{i // 5}_2000", "image": f"du{i}.tif"} for i in range(30)]
            + [{"patient": "TCGA_FG_9_2001", "image": f"fg{i}.tif"} for i in range(6)]
            + [{"patient": f"TCGA_CS_{i // 6}_2002", "image": f"cs{i}.tif"} for i in range(12)])


def test_every_site_gets_the_same_share_of_the_draws():
    items = _items()
    weights = group_balanced_weights(Dataset(items), tcga_site)
    assert sum(weights) == pytest.approx(len(items))
    by_site = collections.defaultdict(float)
    for item, w in zip(items, weights, strict=True):
        by_site[tcga_site(item["patient"])] += w
    assert by_site == pytest.approx({"DU": 16.0, "FG": 16.0, "CS": 16.0})
    torch.manual_seed(0)
    draws = collections.Counter(tcga_site(items[i]["patient"])
                                for i in WeightedRandomSampler(weights, 30000, replacement=True))
    assert all(abs(n / 30000 - 1 / 3) < 0.02 for n in draws.values()), draws


def test_without_a_group_function_the_key_itself_is_the_group():
    weights = group_balanced_weights([{"patient": "a"}, {"patient": "a"}, {"patient": "b"}])
    assert weights == pytest.approx([0.75, 0.75, 1.5])


def test_an_item_without_the_key_is_named():
    with pytest.raises(ValueError, match="fg0.tif has no 'patient'"):
        group_balanced_weights([{"patient": "a"}, {"image": "fg0.tif"}])
    with pytest.raises(ValueError, match="no items"):
        group_balanced_weights([])
