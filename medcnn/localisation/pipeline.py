"""The weakly supervised localisation pipeline: model + CAM method -> heatmap -> threshold -> mask -> Dice.

Typical use::

    heatmaps = localise(model, images, method="layercam", target_layer="blocks.1", class_idx=1)  # (B, 1, *S)
    rule = calibrate_cam(model, val_items, method="layercam", target_layer="blocks.1")              # validation
    result = evaluate_cam(model, test_items, method="layercam", target_layer="blocks.1", **mask_rule(rule))
    masks = cam_to_mask(heatmaps, rule["threshold"], rule["mode"], rule["largest_component"])
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import DataLoader, list_data_collate
from torch import nn

from medcnn.localisation.masks import THRESHOLD_MODES, cam_dice, cam_to_mask, resize_heatmaps, select_threshold
from medcnn.localisation.methods import get_cam_method

__all__ = ["localise", "localise_items", "calibrate_cam", "evaluate_cam", "mask_rule"]

logger = logging.getLogger(__name__)


def localise(
    model: nn.Module,
    images: torch.Tensor,
    method: str = "gradcam",
    target_layer: str | None = None,
    class_idx: int | Sequence[int] | None = 1,
) -> torch.Tensor:
    """Heatmaps ``(B, 1, *S)`` in [0, 1] at the input size for ``images`` ``(B, C, *S)`` (2D or 3D).

    ``method`` is a name from :data:`medcnn.localisation.CAM_METHODS`, ``target_layer`` a module name (None:
    the model's ``cam_target_layer_name``), ``class_idx`` the class whose evidence is mapped (1 = object
    present; ``None`` = each image's predicted class). Hooks are removed and the model's mode restored.
    """
    return get_cam_method(method, model, target_layer)(images, class_idx)


def _batches(data: Any, batch_size: int) -> Iterable[dict]:
    if isinstance(data, torch.utils.data.DataLoader):
        return data
    return DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=list_data_collate)


def localise_items(
    model: nn.Module,
    data: Any,
    method: str = "gradcam",
    target_layer: str | None = None,
    class_idx: int | None = 1,
    positives_only: bool = True,
    batch_size: int = 16,
    keys: Sequence[str] = ("image", "label", "mask"),
) -> dict[str, torch.Tensor]:
    """Heatmaps of a labelled dataset: ``{"heatmaps": (N, 1, *S), "masks": (N, 1, *S), "labels": (N,)}``.

    ``data`` is a sequence of sample dicts (e.g. :func:`medcnn.data.synthetic.synthetic_datalist`), a
    dataset of them, or a ``DataLoader`` yielding batched dicts. With ``positives_only`` only images with
    label 1 are kept (the Dice of a CAM is defined on images that contain the object). When the masks are on
    another grid than the images (e.g. a native-resolution copy, ``keys[2] = "mask_native"``), the heatmaps are
    resized to it (:func:`medcnn.localisation.masks.resize_heatmaps`).
    """
    image_key, label_key, mask_key = keys
    device = next(model.parameters()).device
    cam = get_cam_method(method, model, target_layer)
    heatmaps, masks, labels = [], [], []
    for batch in _batches(data, batch_size):
        images = torch.as_tensor(batch[image_key])
        lab = torch.as_tensor(batch[label_key]).reshape(-1).long()
        keep = lab == 1 if positives_only else torch.ones_like(lab, dtype=torch.bool)
        if not bool(keep.any()):
            continue
        images = images[keep].to(device)
        maps = cam(images, class_idx).cpu()
        if mask_key in batch:
            masks.append(torch.as_tensor(batch[mask_key])[keep].cpu())
            maps = resize_heatmaps(maps, masks[-1].shape[2:])
        heatmaps.append(maps)
        labels.append(lab[keep])
    if not heatmaps:
        raise ValueError(f"localise_items: no {'positive ' if positives_only else ''}images in the data")
    out = {"heatmaps": torch.cat(heatmaps), "labels": torch.cat(labels)}
    if masks:
        out["masks"] = torch.cat(masks)
    return out


def calibrate_cam(
    model: nn.Module,
    data: Any,
    method: str = "gradcam",
    target_layer: str | None = None,
    class_idx: int | None = 1,
    modes: Sequence[str] = THRESHOLD_MODES,
    fractions: Sequence[float] | None = None,
    largest_component: bool | Sequence[bool] = (False, True),
    batch_size: int = 16,
    keys: Sequence[str] = ("image", "label", "mask"),
    smooth_sigmas: Sequence[float] = (0.0,),
) -> dict:
    """Choose the threshold rule (mode, fraction, largest component, smoothing) with the best mean Dice on ``data``.

    ``data`` must be validation data (positives are used), never the test set. Returns the dict of
    :func:`medcnn.localisation.select_threshold` plus ``method``, ``target_layer`` and ``n_images``.
    """
    res = localise_items(model, data, method, target_layer, class_idx, True, batch_size, keys)
    if "masks" not in res:
        raise ValueError(f"calibrate_cam: the validation data has no {keys[2]!r} masks")
    kwargs = {} if fractions is None else {"fractions": fractions}
    rule = select_threshold(res["heatmaps"], res["masks"], modes=modes, largest_component=largest_component,
                            smooth_sigmas=smooth_sigmas, **kwargs)
    rule.update(method=str(method), target_layer=target_layer or getattr(model, "cam_target_layer_name", None),
                n_images=int(res["heatmaps"].shape[0]))
    return rule


def mask_rule(rule: dict) -> dict:
    """The ``threshold`` / ``mode`` / ``largest_component`` arguments of :func:`cam_to_mask` from a rule dict."""
    return {"threshold": 0.5 if rule.get("threshold") is None else float(rule["threshold"]),
            "mode": rule.get("mode", "fraction"), "largest_component": bool(rule.get("largest_component", False)),
            "smooth_sigma": float(rule.get("smooth_sigma", 0.0))}


def evaluate_cam(
    model: nn.Module,
    data: Any,
    method: str = "gradcam",
    target_layer: str | None = None,
    threshold: float = 0.5,
    mode: str = "fraction",
    largest_component: bool = False,
    class_idx: int | None = 1,
    batch_size: int = 16,
    keys: Sequence[str] = ("image", "label", "mask"),
    smooth_sigma: float = 0.0,
) -> dict:
    """CAM Dice on the positive images of ``data``: ``{"dice", "dice_std", "n_images", "per_image"}``."""
    res = localise_items(model, data, method, target_layer, class_idx, True, batch_size, keys)
    if "masks" not in res:
        raise ValueError(f"evaluate_cam: the data has no {keys[2]!r} masks")
    dice = cam_dice(cam_to_mask(res["heatmaps"], threshold, mode, largest_component, smooth_sigma), res["masks"])
    return {"dice": float(dice.mean()), "dice_std": float(dice.std(unbiased=False)),
            "n_images": int(dice.numel()), "per_image": np.asarray(dice).tolist()}
