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


def test_overlapping_tails_in_threads_restore_tracking_once():
    """Loader threads whose tails overlap (A enters, B enters, A leaves, B leaves): B must not restore A's "off"."""
    import threading

    entered = {name: threading.Event() for name in "AB"}
    leave_a, finished_a = threading.Event(), threading.Event()
    inside: dict = {}

    def hold(name):
        def step(x):
            entered[name].set()
            inside[name] = get_track_meta()
            if name == "A":
                assert entered["B"].wait(10)
            else:
                leave_a.set()
                assert finished_a.wait(10)
            return x
        return step

    def run(name):
        PlainTailCompose([RandFlipd("image", prob=1.0), hold(name)], untracked_from=0)(_items(1)[0])
        if name == "A":
            finished_a.set()

    a = threading.Thread(target=run, args=("A",))
    a.start()
    assert entered["A"].wait(10)
    b = threading.Thread(target=run, args=("B",))
    b.start()
    a.join(10)
    b.join(10)
    assert inside == {"A": False, "B": False}
    assert get_track_meta(), "tracking left off after the last tail ended"


@pytest.mark.parametrize("cache_rate", [1.0, 0.5])
def test_thread_data_loader_gets_plain_tensors_like_a_flat_compose(cache_rate):
    """The hippocampus pattern: CacheDataset + ThreadDataLoader (transforms in a thread), partly uncached."""
    from monai.data import ThreadDataLoader

    def batches(compose_cls):
        ds = CacheDataset(_items(6), compose_cls(_transforms([])), cache_rate=cache_rate, progress=False)
        torch.manual_seed(3)  # MONAI's loader seeds the transforms from torch's generator
        return [b["image"] for b in ThreadDataLoader(ds, batch_size=2, num_workers=0)]

    plain, flat = batches(PlainTailCompose), batches(Compose)
    assert all(type(p) is torch.Tensor for p in plain) and all(isinstance(f, MetaTensor) for f in flat)
    assert all(torch.equal(p, f.as_tensor()) for p, f in zip(plain, flat, strict=True))
    assert get_track_meta()
