"""Membrane probability -> cell instances by a seeded watershed, the MONAI way (array + dictionary versions).

Seeds are the connected regions where the (optionally Gaussian-smoothed) membrane probability stays below
``seed_threshold``, dropping seeds smaller than ``min_seed_area`` pixels (specks inside membranes and
organelles); the watershed of the smoothed probability floods from them (:func:`skimage.segmentation.watershed`)
until every pixel belongs to a cell, so the output has no boundary pixels: neighbouring cells simply carry
different labels. This is the classic CNN-boundary-map + watershed step of EM neuron segmentation; its three
parameters are meant to be chosen on validation data (the EM bundle's ``configs/instances.json``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_tensor

from medcnn.transforms.validation import InvalidInputError, source_name

__all__ = ["membrane_to_instances", "MembraneToInstances", "MembraneToInstancesd"]


def membrane_to_instances(
    membrane_probability, seed_threshold: float = 0.3, sigma: float = 1.0, min_seed_area: int = 20
) -> np.ndarray:
    """Cell instance labels ``(H, W)`` int32 (1..K, no 0) from a membrane probability map ``(H, W)`` in [0, 1].

    A map without any seed (membrane everywhere above ``seed_threshold``) gives one cell, label 1.
    """
    from scipy.ndimage import gaussian_filter
    from skimage.measure import label
    from skimage.segmentation import relabel_sequential, watershed

    prob = np.asarray(membrane_probability, dtype=np.float32)
    if prob.ndim != 2:
        raise ValueError(f"membrane probability must be (H, W), got shape {prob.shape}")
    if not np.isfinite(prob).all():
        raise ValueError("membrane probability contains NaN or infinite values")
    relief = gaussian_filter(prob, float(sigma)) if sigma > 0 else prob
    seeds = label(relief < seed_threshold, connectivity=1)
    if min_seed_area > 1 and seeds.any():
        small = np.bincount(seeds.ravel()) < int(min_seed_area)
        small[0] = False
        seeds[small[seeds]] = 0
        seeds = relabel_sequential(seeds)[0]
    if not seeds.any():
        return np.ones(prob.shape, np.int32)
    return watershed(relief, seeds, connectivity=1).astype(np.int32)


class MembraneToInstances(Transform):
    """``(C, H, W)`` class probabilities (membrane in channel ``membrane_channel``) -> ``(1, H, W)`` int32 cells.

    See :func:`membrane_to_instances` for the parameters. A MetaTensor input keeps its metadata. NaN
    probabilities or a non-2D input raise :class:`InvalidInputError` naming the source file.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self, membrane_channel: int = 1, seed_threshold: float = 0.3, sigma: float = 1.0, min_seed_area: int = 20
    ) -> None:
        if not 0.0 < float(seed_threshold) <= 1.0:
            raise ValueError(f"seed_threshold must be in (0, 1], got {seed_threshold}")
        if float(sigma) < 0 or int(min_seed_area) < 0:
            raise ValueError(f"sigma and min_seed_area must be >= 0, got {sigma} and {min_seed_area}")
        self.membrane_channel = int(membrane_channel)
        self.seed_threshold, self.sigma, self.min_seed_area = float(seed_threshold), float(sigma), int(min_seed_area)

    def __call__(self, img):
        src = source_name(img)
        shape = tuple(img.shape)
        if len(shape) != 3 or shape[0] <= self.membrane_channel:
            raise InvalidInputError(
                f"{src}: expected class probabilities (C, H, W) with membrane channel {self.membrane_channel}, "
                f"got shape {shape}"
            )
        prob = convert_to_tensor(img, track_meta=False)[self.membrane_channel].detach().cpu().numpy()
        if not np.isfinite(prob).all():
            raise InvalidInputError(f"{src}: membrane probability has NaN or infinite values")
        cells = membrane_to_instances(prob, self.seed_threshold, self.sigma, self.min_seed_area)
        out = torch.from_numpy(cells[None])
        if isinstance(img, MetaTensor):
            out = MetaTensor(out, meta=dict(img.meta))
        return out


class MembraneToInstancesd(MapTransform):
    """Dictionary version of :class:`MembraneToInstances`: replaces each of ``keys`` by its cell instances.

    Keep the probabilities under another key first if they are still needed (``CopyItemsd``).
    """

    backend = MembraneToInstances.backend

    def __init__(
        self,
        keys: KeysCollection,
        membrane_channel: int = 1,
        seed_threshold: float = 0.3,
        sigma: float = 1.0,
        min_seed_area: int = 20,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = MembraneToInstances(membrane_channel, seed_threshold, sigma, min_seed_area)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d
