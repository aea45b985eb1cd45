"""Intensity normalisation inside a brain (foreground) mask: array and dictionary transforms."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type

from medcnn.transforms.validation import InvalidInputError, source_name

__all__ = ["BrainZScore", "BrainZScored", "HeadMask", "HeadMaskd", "zscore_in_brain"]


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


class HeadMask(Transform):
    """Foreground (head) mask of an MRI volume that is not skull-stripped: ``(C, H, W[, D])`` -> ``(1, H, W[, D])``.

    A pixel is foreground when channel ``channel`` is above the Otsu threshold of the whole image; then, slice by
    slice along the last axis (``D``; a 2D image is one slice), holes are filled and only the largest connected
    region is kept. Scanner noise makes the background of such images non-zero (the LGG TIFFs: median 2-20 of 255
    outside the head), so "non-zero pixels" is not the head; the dark CSF and bone inside the head are below the
    threshold but enclosed, hence the filling. Used as the ``mask`` of :class:`BrainZScore` to give such images the
    zero background of skull-stripped BraTS volumes (the skull and scalp stay in the image).

    Why not MONAI's: ``ForegroundMask`` thresholds RGB pathology slides (dark foreground, every channel) and fills
    no holes; ``FillHoles`` / ``KeepLargestConnectedComponent`` on a volume work in 3D, where a thick-slice stack
    cut through the head leaves interior regions open at its first and last slice.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, channel: int = 0) -> None:
        self.channel = int(channel)

    def __call__(self, img):
        """``img`` (C, H, W[, D]) -> head mask (1, H, W[, D]) of ``img``'s type, float 0 / 1."""
        from scipy import ndimage
        from skimage.filters import threshold_otsu

        arr = np.asarray(img.detach().cpu() if isinstance(img, torch.Tensor) else img, dtype=np.float32)
        if arr.ndim not in (3, 4) or not 0 <= self.channel < arr.shape[0]:
            raise ValueError(f"HeadMask: expected (C, H, W[, D]) with channel {self.channel}, got shape {arr.shape}")
        x = arr[self.channel]
        if float(x.max()) <= float(x.min()):
            raise ValueError(f"HeadMask: channel {self.channel} is constant, no head to find")
        fg = x > threshold_otsu(x.ravel())
        fg = fg[..., None] if fg.ndim == 2 else fg
        for z in range(fg.shape[-1]):
            s = ndimage.binary_fill_holes(fg[..., z])
            labels, n = ndimage.label(s)
            if n > 1:
                s = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
            fg[..., z] = s
        mask = fg.reshape(x.shape)[None].astype(np.float32)
        return convert_to_dst_type(mask, img, dtype=torch.float32 if isinstance(img, torch.Tensor) else np.float32)[0]


class HeadMaskd(MapTransform):
    """Dictionary version of :class:`HeadMask`: the mask of ``keys`` (one image key) is stored under ``mask_key``;
    errors name the image's source file."""

    backend = HeadMask.backend

    def __init__(self, keys: KeysCollection, mask_key: str = "brainmask", channel: int = 0,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key
        self.masker = HeadMask(channel)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            try:
                d[self.mask_key] = self.masker(d[key])
            except ValueError as exc:
                raise InvalidInputError(f"{source_name(d[key], str(key))}: {exc}") from exc
        return d
