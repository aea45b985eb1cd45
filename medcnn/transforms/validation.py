"""Input validation transforms: catch bad images and labels right after loading, with the file named.

A bad case (NaN voxels, a label value outside the declared classes, an empty mask, image and label of
different shapes, a 4D volume where 3D is expected) otherwise surfaces as a shape error deep inside torch, or
worse, as a silently wrong Dice. These transforms are identity maps that raise :class:`InvalidInputError` with a
message that starts with the source file, so they can sit in any MONAI pipeline after ``LoadImaged`` /
``EnsureChannelFirstd``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends

__all__ = ["InvalidInputError", "CheckImage", "CheckImaged", "CheckImageLabeld", "source_name"]


class InvalidInputError(ValueError):
    """An input image or label is unusable; the message names the file and the problem."""


def source_name(img, default: str = "<array>") -> str:
    """The file an image was loaded from (``filename_or_obj`` of a MetaTensor), else ``default``."""
    if isinstance(img, MetaTensor):
        name = img.meta.get("filename_or_obj")
        if isinstance(name, (list, tuple)):
            name = name[0] if name else None
        if name:
            return str(name)
    return default


class CheckImage(Transform):
    """Validate one channel-first array ``(C, *spatial)`` and return it unchanged.

    Args:
        spatial_dims: required number of spatial dimensions (2 or 3), or ``None`` to skip the check.
        allowed_values: if given, every value must be in this set (for labels, e.g. ``(0, 1, 2)``).
        allow_nan: accept NaN / infinite values.
        require_nonempty: at least one non-zero value (a mask with foreground).
        num_channels: required channel count, or ``None``.
        name: what the array is, used in messages ("image", "label").
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        spatial_dims: int | None = None,
        allowed_values: Sequence[float] | None = None,
        allow_nan: bool = False,
        require_nonempty: bool = False,
        num_channels: int | None = None,
        name: str = "image",
    ) -> None:
        if spatial_dims is not None and spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}")
        self.spatial_dims = spatial_dims
        self.allowed_values = None if allowed_values is None else np.asarray(sorted(allowed_values), dtype=float)
        self.allow_nan = allow_nan
        self.require_nonempty = require_nonempty
        self.num_channels = num_channels
        self.name = name

    def __call__(self, img, source: str | None = None):
        src = source or source_name(img)
        shape = tuple(img.shape)
        if self.spatial_dims is not None and len(shape) != self.spatial_dims + 1:
            raise InvalidInputError(
                f"{src}: {self.name} has shape {shape} (channel-first); expected 1 channel axis + "
                f"{self.spatial_dims} spatial axes, i.e. a {self.spatial_dims}D {self.name}"
            )
        if self.num_channels is not None and shape[0] != self.num_channels:
            raise InvalidInputError(
                f"{src}: {self.name} has {shape[0]} channel(s) (shape {shape}, channel first), expected "
                f"{self.num_channels}{' (a 4D file where a 3D volume is expected?)' if self.num_channels == 1 else ''}"
            )
        if any(s == 0 for s in shape):
            raise InvalidInputError(f"{src}: {self.name} is empty (shape {shape})")
        arr = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
        if not self.allow_nan and arr.dtype.kind == "f":
            bad = int(np.count_nonzero(~np.isfinite(arr)))
            if bad:
                raise InvalidInputError(f"{src}: {self.name} contains {bad} NaN or infinite value(s)")
        if self.allowed_values is not None:
            values = np.unique(arr)
            unexpected = values[~np.isin(values, self.allowed_values)]
            if unexpected.size:
                shown = ", ".join(f"{v:g}" for v in unexpected[:10])
                allowed = ", ".join(f"{v:g}" for v in self.allowed_values)
                raise InvalidInputError(
                    f"{src}: {self.name} has value(s) {shown}{' ...' if unexpected.size > 10 else ''} "
                    f"outside the declared classes {{{allowed}}}"
                )
        if self.require_nonempty and not np.any(arr):
            raise InvalidInputError(f"{src}: {self.name} is empty (no foreground voxel)")
        return img


class CheckImaged(MapTransform):
    """Dictionary version of :class:`CheckImage`: the same checks applied to every key."""

    backend = CheckImage.backend

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **check_kwargs) -> None:
        super().__init__(keys, allow_missing_keys)
        self.checker = CheckImage(**check_kwargs)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            self.checker.name = str(key)
            self.checker(d[key])
        return d


class CheckImageLabeld(MapTransform):
    """Validate an image / label pair ``(C, *spatial)``: dims, NaN, label classes, empty mask, equal shapes, one grid.

    The image keys get the finite-value and dimension checks; ``label_key`` additionally gets the
    ``allowed_labels`` and ``require_foreground`` checks, and with ``same_shape`` every key must share the
    label's spatial shape; ``num_channels`` (e.g. 1) is required of every key, so a 4D file given for a 3D
    modality is named instead of failing later as a wrong channel count of the network. With ``same_affine``
    (default) every MetaTensor key must have the label's affine (within ``affine_atol`` mm): a label with a flipped
    or shifted header would otherwise be compared voxel by voxel with an image it does not overlay. Returns the
    data unchanged.
    """

    backend = CheckImage.backend

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        label_key: str = "label",
        spatial_dims: int | None = None,
        allowed_labels: Sequence[float] | None = None,
        allow_nan: bool = False,
        require_foreground: bool = False,
        same_shape: bool = True,
        allow_missing_keys: bool = False,
        same_affine: bool = True,
        affine_atol: float = 1e-3,
        num_channels: int | None = None,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_key = label_key
        self.same_shape = same_shape
        self.same_affine = same_affine
        self.affine_atol = float(affine_atol)
        self.image_check = CheckImage(spatial_dims=spatial_dims, allow_nan=allow_nan, num_channels=num_channels)
        self.label_check = CheckImage(
            spatial_dims=spatial_dims,
            num_channels=num_channels,
            allowed_values=allowed_labels,
            allow_nan=False,
            require_nonempty=require_foreground,
            name="label",
        )

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        shapes = {}
        for key in self.key_iterator(d):
            checker = self.label_check if key == self.label_key else self.image_check
            if key != self.label_key:
                checker.name = str(key)
            checker(d[key])
            shapes[key] = tuple(d[key].shape[1:])
        if self.same_shape and len(set(shapes.values())) > 1:
            ref = self.label_key if self.label_key in shapes else next(iter(shapes))
            for key, shape in shapes.items():
                if shape != shapes[ref]:
                    raise InvalidInputError(
                        f"{source_name(d[key])}: {key} has spatial shape {shape} but {ref} "
                        f"({source_name(d[ref])}) has {shapes[ref]}"
                    )
        if self.same_affine:
            self._check_affines(d, list(shapes))
        return d

    def _check_affines(self, d: dict, keys: list) -> None:
        affines = {k: np.asarray(d[k].affine, dtype=float) for k in keys if isinstance(d[k], MetaTensor)}
        ref = self.label_key if self.label_key in affines else next(iter(affines), None)
        for key, affine in affines.items():
            if key == ref or affine.shape != affines[ref].shape:
                continue
            diff = float(np.abs(affine - affines[ref]).max())
            if diff > self.affine_atol:
                flipped = [i for i in range(affine.shape[0] - 1)
                           if np.sign(affine[i, i]) != np.sign(affines[ref][i, i])]
                hint = f" (axis {flipped} flipped)" if flipped else ""
                raise InvalidInputError(
                    f"{source_name(d[ref])}: {ref} affine differs from the affine of {key} "
                    f"({source_name(d[key])}) by up to {diff:.3g}{hint}; the two are not on one voxel grid, so a "
                    f"voxel-by-voxel comparison would be wrong. Resample the {ref} onto the {key} grid "
                    f"(e.g. with the image as reference) first. {ref} affine {np.round(affines[ref], 3).tolist()}, "
                    f"{key} affine {np.round(affine, 3).tolist()}"
                )
