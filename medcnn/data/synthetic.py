"""Synthetic weak-localisation data: noise images, some with a noisy circle (2D) or sphere (3D) in them.

The study's data: a random noise background, and in a fraction of the images one object of random radius
that is brighter (``contrast``) and noisier (``object_noise``) than the background. Every sample comes with
its class label (1 = object present) and the ground-truth object mask, so a classifier trained on the labels
alone can be scored on how well its class activation maps find the object.

- :func:`ball_mask` draws a circle / sphere.
- :class:`SyntheticObjectGenerator` is a MONAI ``Randomizable`` transform producing one sample dict.
- :func:`synthetic_datalist` makes a fixed, seeded list of sample dicts, and :class:`SyntheticObjectDataset`
  wraps it as a MONAI ``Dataset``.
- :func:`load_labelled_arrays` reads a user datalist (image / label / mask files) into the same form.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from monai.data import Dataset
from monai.transforms import Randomizable

__all__ = [
    "ball_mask",
    "SyntheticObjectGenerator",
    "SyntheticObjectDataset",
    "synthetic_datalist",
    "load_labelled_arrays",
]

logger = logging.getLogger(__name__)


def ball_mask(spatial_size: Sequence[int], center: Sequence[float], radius: float) -> np.ndarray:
    """Boolean mask ``spatial_size`` (2D circle or 3D sphere) of voxels whose centre lies within ``radius``."""
    if len(center) != len(spatial_size):
        raise ValueError(f"ball_mask: center {tuple(center)} does not match spatial_size {tuple(spatial_size)}")
    grids = np.ogrid[tuple(slice(0, int(s)) for s in spatial_size)]
    dist2 = sum((g - float(c)) ** 2 for g, c in zip(grids, center, strict=True))
    return np.asarray(dist2 <= float(radius) ** 2)


class SyntheticObjectGenerator(Randomizable):
    """Randomizable transform: ``__call__(data=None)`` -> ``{"image": (1, *S), "label": int, "mask": (1, *S)}``.

    Background: Gaussian noise ``N(0, noise**2)``. Positive samples (probability ``positive_fraction``)
    contain one circle/sphere of radius in ``radius_range`` (fully inside the image) whose voxels get
    ``+ contrast`` and extra noise ``N(0, object_noise**2)``. ``image`` is float32, ``mask`` uint8 (all zero for
    negatives), ``label`` 0/1. When ``data`` is a dict its entries are kept (and ``"label"`` forces the class).

    Args:
        spatial_size: (H, W) or (H, W, D).
        radius_range: (min, max) radius in voxels, ``min <= max``, object must fit in the image.
        contrast: mean intensity added inside the object.
        noise: standard deviation of the background noise.
        object_noise: standard deviation of the extra noise inside the object.
        positive_fraction: probability that a sample contains an object, in [0, 1].
        keys: output keys for image, label and mask.
    """

    def __init__(
        self,
        spatial_size: Sequence[int] = (64, 64),
        radius_range: Sequence[float] = (5.0, 14.0),
        contrast: float = 1.0,
        noise: float = 1.0,
        object_noise: float = 0.5,
        positive_fraction: float = 0.5,
        keys: Sequence[str] = ("image", "label", "mask"),
    ) -> None:
        spatial_size = tuple(int(s) for s in np.atleast_1d(spatial_size))
        if len(spatial_size) not in (2, 3):
            raise ValueError(f"spatial_size must have 2 (circles) or 3 (spheres) dims, got {spatial_size}")
        if min(spatial_size) < 3:
            raise ValueError(f"spatial_size must be at least 3 per dim, got {spatial_size}")
        if len(radius_range) != 2:
            raise ValueError(f"radius_range must be (min, max), got {radius_range!r}")
        r_min, r_max = float(radius_range[0]), float(radius_range[1])
        if not 0 < r_min <= r_max:
            raise ValueError(f"radius_range must satisfy 0 < min <= max, got an empty range {radius_range!r}")
        if 2 * r_max + 1 > min(spatial_size):
            raise ValueError(
                f"radius_range max {r_max} does not fit in spatial_size {spatial_size} (needs 2*max+1 <= min size)"
            )
        if not 0.0 <= float(positive_fraction) <= 1.0:
            raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction!r}")
        if noise < 0 or object_noise < 0:
            raise ValueError(f"noise and object_noise must be >= 0, got {noise!r}, {object_noise!r}")
        if len(keys) != 3:
            raise ValueError(f"keys must name (image, label, mask), got {keys!r}")
        self.spatial_size = spatial_size
        self.radius_range = (r_min, r_max)
        self.contrast = float(contrast)
        self.noise = float(noise)
        self.object_noise = float(object_noise)
        self.positive_fraction = float(positive_fraction)
        self.keys = tuple(keys)
        self._positive = False
        self._radius = 0.0
        self._center: tuple[float, ...] = ()

    @property
    def spatial_dims(self) -> int:
        return len(self.spatial_size)

    def randomize(self, data: Any = None, positive: bool | None = None) -> None:
        """Draw presence, radius and centre (noise is drawn in ``__call__`` from the same random state)."""
        draw = self.R.random_sample() < self.positive_fraction
        self._positive = bool(draw) if positive is None else bool(positive)
        self._radius = float(self.R.uniform(*self.radius_range))
        self._center = tuple(float(self.R.uniform(self._radius, s - 1 - self._radius)) for s in self.spatial_size)

    def __call__(self, data: dict | None = None, positive: bool | None = None) -> dict:
        """One sample dict; ``positive`` (or ``data["label"]``) forces the class."""
        d = dict(data) if data is not None else {}
        image_key, label_key, mask_key = self.keys
        if positive is None and label_key in d:
            positive = bool(int(np.asarray(d[label_key]).reshape(-1)[0]))
        self.randomize(positive=positive)
        image = self.R.normal(0.0, self.noise, size=self.spatial_size)
        if self._positive:
            mask = ball_mask(self.spatial_size, self._center, self._radius)
            image[mask] += self.contrast + self.R.normal(0.0, self.object_noise, size=int(mask.sum()))
        else:
            mask = np.zeros(self.spatial_size, dtype=bool)
        d[image_key] = image[None].astype(np.float32)
        d[label_key] = int(self._positive)
        d[mask_key] = mask[None].astype(np.uint8)
        return d


def synthetic_datalist(
    num_samples: int = 100,
    seed: int = 0,
    spatial_size: Sequence[int] = (64, 64),
    radius_range: Sequence[float] = (5.0, 14.0),
    contrast: float = 1.0,
    noise: float = 1.0,
    object_noise: float = 0.5,
    positive_fraction: float = 0.5,
    keys: Sequence[str] = ("image", "label", "mask"),
) -> list[dict]:
    """``num_samples`` sample dicts (see :class:`SyntheticObjectGenerator`), reproducible from ``seed``.

    Exactly ``round(positive_fraction * num_samples)`` samples are positive (in a seeded random order); the
    pixels of item ``i`` depend only on ``(seed, i)`` and its class, whatever the order items are read in.
    """
    if int(num_samples) < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples!r}")
    gen = SyntheticObjectGenerator(spatial_size, radius_range, contrast, noise, object_noise, positive_fraction, keys)
    n_pos = int(round(positive_fraction * num_samples))
    order = np.random.default_rng([int(seed), 1_000_003]).random(int(num_samples))
    positive = np.zeros(int(num_samples), dtype=bool)
    positive[np.argsort(order)[:n_pos]] = True
    items = []
    for i in range(int(num_samples)):
        gen.set_random_state(seed=int(np.random.SeedSequence([int(seed), i]).generate_state(1)[0]))
        item = gen(positive=bool(positive[i]))
        item["id"] = f"synthetic_s{seed}_{i:05d}"
        items.append(item)
    logger.debug("synthetic_datalist: %d samples (%d positive), seed %d", num_samples, n_pos, seed)
    return items


class SyntheticObjectDataset(Dataset):
    """MONAI ``Dataset`` of :func:`synthetic_datalist` samples (generated once, in memory), with ``transform``."""

    def __init__(self, num_samples: int = 100, seed: int = 0, transform: Callable | None = None, **params: Any) -> None:
        super().__init__(data=synthetic_datalist(num_samples=num_samples, seed=seed, **params), transform=transform)


def load_labelled_arrays(
    datalist: str | os.PathLike | Sequence[dict],
    keys: Sequence[str] = ("image", "label", "mask"),
    require_label: bool = True,
    spatial_size: Sequence[int] | None = None,
) -> list[dict]:
    """Read a user datalist (MSD ``dataset.json`` or JSON list, or a list of dicts) into in-memory sample dicts.

    ``image`` and ``mask`` are file paths (any format MONAI ``LoadImage`` reads; mask optional) loaded
    channel-first as float32 / uint8; ``label`` is the class (0/1). When ``label`` is missing it is derived
    from the mask (1 if any voxel is set); with ``require_label=False`` (inference / localisation of unlabelled
    images) it is then -1. Every entry is checked, and a bad one raises
    :class:`medcnn.transforms.InvalidInputError` naming its file: unreadable file, NaN / infinite voxels, a
    spatial size other than ``spatial_size`` (the bundle's training size, when given), a mask of another size, a
    label other than 0 / 1, or a positive image without a mask while other entries have one (its CAM Dice could
    not be scored; a negative image without a mask gets an empty one).
    """
    from medcnn.data.datalist import load_datalist
    from medcnn.transforms.io import LoadImageChecked
    from medcnn.transforms.validation import CheckImage, InvalidInputError

    image_key, label_key, mask_key = keys
    if isinstance(datalist, (str, os.PathLike)):
        entries = load_datalist(datalist, keys=[image_key], path_keys=[image_key, mask_key])
    else:
        entries = [dict(e) for e in datalist]
    loader = LoadImageChecked(image_only=True, ensure_channel_first=True)
    dims = len(spatial_size) if spatial_size is not None else None
    check_image = CheckImage(spatial_dims=dims, name="image")
    items, sources = [], []
    for entry in entries:
        if image_key not in entry:
            raise InvalidInputError(f"datalist entry {entry!r} has no {image_key!r}")
        src = str(entry[image_key])
        item = dict(entry)
        item.setdefault("id", os.path.basename(src).split(".")[0])
        image = check_image(loader(entry[image_key]), source=src)
        item[image_key] = np.asarray(image, dtype=np.float32)
        if spatial_size is not None and tuple(item[image_key].shape[1:]) != tuple(int(v) for v in spatial_size):
            raise InvalidInputError(
                f"{src}: image size {tuple(item[image_key].shape[1:])} differs from the bundle's "
                f"{tuple(int(v) for v in spatial_size)} (its training size); resample the image first"
            )
        if entry.get(mask_key) is not None:
            mask = np.asarray(loader(entry[mask_key]))
            if not np.isfinite(mask).all():
                raise InvalidInputError(f"{entry[mask_key]}: mask contains NaN or infinite values")
            mask = mask > 0
            if mask.shape[1:] != item[image_key].shape[1:]:
                raise InvalidInputError(
                    f"{entry[mask_key]}: mask size {mask.shape[1:]} differs from its image {src} "
                    f"{item[image_key].shape[1:]}"
                )
            item[mask_key] = mask[:1].astype(np.uint8)
        if label_key not in entry or entry[label_key] is None:
            if mask_key not in item and not require_label:
                item[label_key] = -1
                items.append(item)
                sources.append(src)
                continue
            if mask_key not in item:
                raise InvalidInputError(f"{src}: the entry has neither {label_key!r} nor {mask_key!r}")
            item[label_key] = int(item[mask_key].any())
        else:
            value = entry[label_key]
            if isinstance(value, bool) or value not in (0, 1):
                raise InvalidInputError(f"{src}: {label_key} must be 0 (no object) or 1 (object), got {value!r}")
            item[label_key] = int(value)
        items.append(item)
        sources.append(src)
    with_mask = [it for it in items if mask_key in it]
    if with_mask and len(with_mask) < len(items):
        for it, src in zip(items, sources, strict=True):
            if mask_key in it:
                continue
            if it[label_key] == 1:
                raise InvalidInputError(
                    f"{src}: positive image without a "
                    f"{mask_key!r} while {len(with_mask)} other entries have one; give every positive image a mask, "
                    "or none"
                )
            it[mask_key] = np.zeros((1, *it[image_key].shape[1:]), np.uint8)  # a negative image: no object
    return items
