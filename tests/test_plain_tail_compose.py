"""PlainTailCompose: file-checked head keeps MetaTensors, random tail runs untracked, seeds as a flat Compose."""

from __future__ import annotations

import pytest
import torch
from monai.data import CacheDataset, MetaTensor, get_track_meta
from monai.transforms import Compose, EnsureChannelFirstd, EnsureTyped, Lambdad, RandAffined, RandFlipd

from medcnn.transforms import PlainTailCompose


def _items(n: int = 4) -> list[dict]:
    """``n`` items with a (H, W) MetaTensor image whose channel layout is only in its metadata."""
    g = torch.Generator().manual_seed(0)
    return [{"image": MetaTensor(torch.rand(16, 16, generator=g), meta={"original_channel_dim": "no_channel"})}
            for _ in range(n)]


def _transforms(seen: list) -> list:
    """Head needing metadata (EnsureChannelFirstd), plain-tensor step, random tail recording its input types."""
    return [EnsureChannelFirstd("image"), EnsureTyped("image", track_meta=False),
            Lambdad("image", lambda x: seen.append((type(x), get_track_meta())) or x),
            RandFlipd("image", prob=0.5, spatial_axis=0), RandAffined("image", prob=1.0, rotate_range=0.5)]


@pytest.mark.parametrize("cache_rate", [1.0, 0.0])
def test_tail_runs_untracked_and_seeds_like_a_flat_compose(cache_rate):
    seen: list = []
    plain = PlainTailCompose(_transforms(seen), untracked_from=2)
    flat = Compose(_transforms([]))
    plain.set_random_state(seed=7)
    flat.set_random_state(seed=7)
    ds = CacheDataset(_items(), plain, cache_rate=cache_rate, progress=False)
    ref = CacheDataset(_items(), flat, cache_rate=cache_rate, progress=False)
    for i in range(len(ds)):
        out, expected = ds[i]["image"], ref[i]["image"]
        assert type(out) is torch.Tensor and isinstance(expected, MetaTensor)
        assert torch.equal(out, expected.as_tensor())
    assert seen and all(t is torch.Tensor and not tracked for t, tracked in seen)
    assert get_track_meta()


def test_default_tail_starts_at_the_first_random_transform_and_tracking_is_restored_on_error():
    plain = PlainTailCompose(_transforms([]))
    assert plain.untracked_from == 3

    def fail(_):
        assert not get_track_meta()
        raise RuntimeError("augmentation failed")

    broken = PlainTailCompose([EnsureChannelFirstd("image"), RandFlipd("image", prob=1.0), fail], untracked_from=1)
    with pytest.raises(RuntimeError):
        broken(_items(1)[0])
    assert get_track_meta()


def test_untracked_from_outside_the_list_is_refused():
    with pytest.raises(ValueError, match="untracked_from=5"):
        PlainTailCompose([RandFlipd("image", prob=1.0)], untracked_from=5)
