"""Intensity normalisation inside a brain (foreground) mask: array and dictionary transforms."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type

from medcnn.transforms.validation import InvalidInputError, source_name

__all__ = ["BrainZScore", "BrainZScored", "zscore_in_brain"]


def zscore_in_brain(image: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """``image`` (C, *spatial) z-scored per channel over the voxels where ``brain`` (*spatial, bool) is true, 0 outside.

    Raises ``ValueError`` for an empty brain or a channel that is constant inside it.
    """
    if not brain.any():
        raise ValueError("empty brain mask, cannot normalise inside the brain")
    out = np.empty_like(image, dtype=np.float32)
    for c in range(image.shape[0]):
        values = image[c][brain]
        std = float(values.std())
        if std <= 0:
            raise ValueError(f"channel {c} is constant inside the brain")
        out[c] = np.where(brain, (image[c] - float(values.mean())) / std, 0.0)
    return out


class BrainZScore(Transform):
    """Z-score every channel of ``(C, *spatial)`` over the brain voxels and set everything outside the brain to 0.

    The brain is ``mask > 0.5`` (``(1, *spatial)`` or ``(*spatial)``) when a mask is given, otherwise every voxel
    where some channel is above that channel's minimum (skull-stripped MRI has a constant background). This is
    the normalisation (:func:`zscore_in_brain`) that the BraTS classifier is trained with;
    apply it to the whole volume, not slice by slice. Raises ``ValueError`` for an empty brain or a channel that
    is constant inside it. MONAI's ``NormalizeIntensity(nonzero=True)`` assumes a zero background; the BraTS
    volumes medcnn reads are already z-scored per case with a negative, case-dependent background (-3.5 to -6.2),
    so the brain has to come from a mask or from "above the channel minimum".
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __call__(self, img, mask=None):
        """``img`` (C, *spatial), optional ``mask`` -> normalised ``img`` of the same type and shape."""
        arr = np.asarray(img.detach().cpu() if isinstance(img, torch.Tensor) else img, dtype=np.float32)
        if arr.ndim < 2:
            raise ValueError(f"BrainZScore: expected a channel-first image (C, *spatial), got shape {arr.shape}")
        if mask is not None:
            m = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask)
            m = m[0] if m.ndim == arr.ndim else m
            if m.shape != arr.shape[1:]:
                raise ValueError(f"BrainZScore: mask shape {m.shape} does not match the image {arr.shape[1:]}")
            brain = m > 0.5
        else:
            flat = arr.reshape(arr.shape[0], -1)
            brain = np.any(flat > flat.min(axis=1, keepdims=True), axis=0).reshape(arr.shape[1:])
        try:
            out = zscore_in_brain(arr, brain)
        except ValueError as exc:
            raise ValueError(f"BrainZScore: {exc}") from exc
        return convert_to_dst_type(out, img, dtype=torch.float32 if isinstance(img, torch.Tensor) else np.float32)[0]


class BrainZScored(MapTransform):
    """Dictionary version of :class:`BrainZScore`; ``mask_key`` names an optional brain mask in the data.

    A datalist entry without the mask (``mask_key`` absent from the data) gets the "above the channel minimum"
    brain of :class:`BrainZScore`; errors name the image's source file.
    """

    backend = BrainZScore.backend

    def __init__(self, keys: KeysCollection, mask_key: str | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key
        self.normaliser = BrainZScore()

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        mask = d.get(self.mask_key) if self.mask_key else None
        for key in self.key_iterator(d):
            try:
                d[key] = self.normaliser(d[key], mask)
            except ValueError as exc:
                raise InvalidInputError(f"{source_name(d[key], str(key))}: {exc}") from exc
        return d
