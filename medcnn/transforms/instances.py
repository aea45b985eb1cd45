"""Membrane probability -> cell instances: seeded watershed plus agglomeration, the MONAI way (array + dictionary).

1. *Seeds*: the regional minima of the Gaussian-smoothed membrane probability that are at least ``seed_depth``
   deep (:func:`skimage.morphology.h_minima`), so noise dips inside a cell do not each become a seed while a
   cell whose membrane has a gap still gets its own minimum (thresholded seeds would leak through the gap).
2. *Watershed*: the smoothed probability is flooded from the seeds (:func:`skimage.segmentation.watershed`)
   until every pixel belongs to a region: no boundary pixels, neighbouring cells carry different labels.
3. *Agglomeration* (optional): neighbouring regions whose mean membrane probability along their shared
   boundary (over the pixels on both sides of it) is below ``merge_threshold`` are merged (region adjacency
   graph of :func:`skimage.graph.rag_boundary` cut by :func:`skimage.graph.cut_threshold`), which undoes the
   over-segmentation of a shallow ``seed_depth``.

This is the classic CNN-boundary-map + watershed + agglomeration step of EM neuron segmentation; the parameters
are chosen on validation data (the EM bundle's ``configs/instances.json``, ``scripts/em_instances.py``).
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
    membrane_probability, sigma: float = 1.0, seed_depth: float = 0.02, merge_threshold: float = 0.0
) -> np.ndarray:
    """Cell instance labels ``(H, W)`` int32 (1..K, no 0) from a membrane probability map ``(H, W)`` in [0, 1].

    ``sigma``: Gaussian smoothing in pixels (0 = none); ``seed_depth``: minimal depth of a seed minimum;
    ``merge_threshold``: merge neighbours whose boundary's mean (unsmoothed) probability is below it (0 = off).
    """
    from scipy.ndimage import gaussian_filter
    from skimage.measure import label
    from skimage.morphology import h_minima
    from skimage.segmentation import relabel_sequential, watershed

    prob = np.asarray(membrane_probability, dtype=np.float64)
    if prob.ndim != 2:
        raise ValueError(f"membrane probability must be (H, W), got shape {prob.shape}")
    if not np.isfinite(prob).all():
        raise ValueError("membrane probability contains NaN or infinite values")
    relief = gaussian_filter(prob, float(sigma)) if sigma > 0 else prob
    seeds = label(h_minima(relief, float(seed_depth)), connectivity=2)
    if not seeds.any():  # a flat map: one cell
        return np.ones(prob.shape, np.int32)
    regions = watershed(relief, seeds, connectivity=1)
    if merge_threshold > 0 and regions.max() > 1:
        from skimage import graph

        rag = graph.rag_boundary(regions, prob, connectivity=1)
        regions = relabel_sequential(graph.cut_threshold(regions, rag, float(merge_threshold)) + 1)[0]
    return regions.astype(np.int32)


class MembraneToInstances(Transform):
    """``(C, H, W)`` class probabilities (membrane in channel ``membrane_channel``) -> ``(1, H, W)`` int32 cells.

    See :func:`membrane_to_instances` for the parameters. A MetaTensor input keeps its metadata. NaN
    probabilities or a non-2D input raise :class:`InvalidInputError` naming the source file.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self, membrane_channel: int = 1, sigma: float = 1.0, seed_depth: float = 0.02, merge_threshold: float = 0.0
    ) -> None:
        if not 0.0 < float(seed_depth) <= 1.0:
            raise ValueError(f"seed_depth must be in (0, 1], got {seed_depth}")
        if float(sigma) < 0 or not 0.0 <= float(merge_threshold) <= 1.0:
            raise ValueError(f"sigma must be >= 0 and merge_threshold in [0, 1], got {sigma} and {merge_threshold}")
        self.membrane_channel = int(membrane_channel)
        self.sigma, self.seed_depth, self.merge_threshold = float(sigma), float(seed_depth), float(merge_threshold)

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
        cells = membrane_to_instances(prob, self.sigma, self.seed_depth, self.merge_threshold)
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
        sigma: float = 1.0,
        seed_depth: float = 0.02,
        merge_threshold: float = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = MembraneToInstances(membrane_channel, sigma, seed_depth, merge_threshold)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d
