"""COCO JSON + image folder -> MONAI datalist (one entry per image with its annotations), validated up front."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medcnn.config import flag
from medcnn.transforms.coco import CocoAnnotationError, annotation_to_mask, mask_to_annotation
from medcnn.transforms.validation import InvalidInputError

__all__ = [
    "CocoFormatError",
    "load_coco_datalist",
    "load_coco_eval_datalist",
    "split_coco_datalist",
    "coco_categories",
    "masks_to_coco",
]

logger = logging.getLogger(__name__)


class CocoFormatError(InvalidInputError):
    """A COCO JSON file is unreadable or inconsistent (missing image, unknown id, bad annotation)."""


def _read(json_path: Path) -> dict:
    if not json_path.is_file():
        raise CocoFormatError(f"COCO file {json_path}: not found")
    try:
        content = json.loads(json_path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CocoFormatError(f"COCO file {json_path}: not readable as JSON ({exc})") from exc
    if not isinstance(content, dict) or not isinstance(content.get("images"), list):
        raise CocoFormatError(f"COCO file {json_path}: needs an 'images' list (and 'annotations', 'categories')")
    if not isinstance(content.get("annotations", []), list):
        raise CocoFormatError(f"COCO file {json_path}: 'annotations' must be a list")
    return content


def coco_categories(json_path: str | os.PathLike) -> dict[int, str]:
    """Category id -> name of a COCO file."""
    content = _read(Path(json_path).expanduser())
    return {int(c["id"]): str(c.get("name", c["id"])) for c in content.get("categories", [])}


def _check_image_size(path: Path, height: int, width: int, json_path: Path, img_id: int) -> None:
    """The image file's own size (read from its header) must be the ``height`` x ``width`` the JSON declares."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
    except (UnidentifiedImageError, OSError):  # not a Pillow format: its loader checks it later
        return
    if (h, w) != (height, width):
        raise CocoFormatError(
            f"{path}: the image is {h} x {w} px (H x W) but COCO file {json_path} declares {height} x {width} for "
            f"image id {img_id}; masks drawn at the declared size would not overlay the image"
        )


def load_coco_datalist(
    json_path: str | os.PathLike,
    image_dir: str | os.PathLike | None = None,
    category_ids: Sequence[int] | None = None,
    check_files: bool = True,
    check_annotations: bool = True,
    bounds_tolerance: float = 1.0,
    include_empty: bool = True,
) -> list[dict[str, Any]]:
    """Read a COCO instances/segmentation file into a list of dicts for a MONAI ``Dataset``.

    Each entry: ``{"image": <absolute path>, "annotations": [...], "height": H, "width": W, "image_id": id,
    "file_name": <as in the JSON>}``; feed it to ``LoadImaged(keys="image")`` and
    :class:`medcnn.transforms.coco.CocoToMaskd` (which reads ``height`` / ``width``). ``image_dir`` defaults to
    the JSON's folder; relative ``file_name`` values resolve against it. ``category_ids`` keeps only those
    annotations. Images without (kept) annotations are included unless ``include_empty`` is False.

    Raises :class:`CocoFormatError` naming the JSON and the image file / annotation id when an image file is
    missing or (``check_files``) its size differs from the JSON's ``height`` / ``width``, ids are duplicated, an
    annotation refers to an unknown image or category, or (``check_annotations``)
    an annotation does not decode within its image (polygon outside the image, RLE of another size).
    """
    json_path = Path(json_path).expanduser()
    include_empty = flag(include_empty, f"COCO file {json_path}: include_empty")
    content = _read(json_path)
    image_dir = Path(image_dir).expanduser() if image_dir is not None else json_path.parent
    categories = {int(c["id"]) for c in content.get("categories", []) if "id" in c}
    images: dict[int, dict] = {}
    for i, img in enumerate(content["images"]):
        missing = [k for k in ("id", "file_name", "height", "width") if k not in img]
        if missing:
            raise CocoFormatError(f"COCO file {json_path}: images[{i}] lacks {missing}")
        img_id = int(img["id"])
        if img_id in images:
            raise CocoFormatError(f"COCO file {json_path}: image id {img_id} appears twice ({img['file_name']})")
        path = Path(img["file_name"])
        path = path if path.is_absolute() else image_dir / path
        if check_files and not path.is_file():
            raise CocoFormatError(
                f"COCO file {json_path}: image id {img_id} refers to {path}, which does not exist"
            )
        if check_files:
            _check_image_size(path, int(img["height"]), int(img["width"]), json_path, img_id)
        images[img_id] = {
            "image": str(path.resolve()),
            "annotations": [],
            "height": int(img["height"]),
            "width": int(img["width"]),
            "image_id": img_id,
            "file_name": str(img["file_name"]),
        }
    for j, ann in enumerate(content.get("annotations", [])):
        ann_id = ann.get("id", f"#{j}")
        if "image_id" not in ann or int(ann["image_id"]) not in images:
            raise CocoFormatError(
                f"COCO file {json_path}: annotation id {ann_id} refers to image id {ann.get('image_id')}, which is not "
                f"in 'images'"
            )
        entry = images[int(ann["image_id"])]
        cat = ann.get("category_id")
        if categories and cat not in categories:
            raise CocoFormatError(
                f"COCO file {json_path}: annotation id {ann_id} ({entry['file_name']}) has unknown category {cat}"
            )
        if category_ids is not None and cat not in category_ids:
            continue
        if check_annotations:
            try:
                annotation_to_mask(ann, entry["height"], entry["width"], bounds_tolerance, name=entry["image"])
            except CocoAnnotationError as exc:
                raise CocoFormatError(f"COCO file {json_path}: {exc}") from exc
        entry["annotations"].append(ann)
    out = [e for e in images.values() if include_empty or e["annotations"]]
    dropped = [e["file_name"] for e in images.values() if not include_empty and not e["annotations"]]
    if dropped:
        logger.warning("COCO %s: %d image(s) without annotations left out (label missing, not negative): %s",
                       json_path, len(dropped), ", ".join(dropped[:5]) + (" ..." if len(dropped) > 5 else ""))
    if not out:
        raise CocoFormatError(f"COCO file {json_path}: no images (with annotations of {category_ids})")
    logger.info("COCO %s: %d images, %d annotations", json_path, len(out), sum(len(e["annotations"]) for e in out))
    return out


def split_coco_datalist(
    datalist: Sequence[dict[str, Any]], validation_fraction: float = 0.15, seed: int = 0
) -> dict[str, list[dict[str, Any]]]:
    """Fixed split of a COCO datalist into ``{"training": [...], "validation": [...]}`` by image id.

    The entries are sorted by ``image_id`` and ``round(validation_fraction * n)`` of them are drawn with
    ``random.Random(seed).sample``, so the split depends only on the set of image ids, the fraction and the seed
    (not on the order of the JSON). Both lists keep the image-id order.
    """
    import random

    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"split_coco_datalist: validation_fraction must be in (0, 1), got {validation_fraction}")
    entries = sorted(datalist, key=lambda e: int(e["image_id"]))
    ids = [int(e["image_id"]) for e in entries]
    if len(set(ids)) != len(ids):
        raise ValueError("split_coco_datalist: image ids are not unique")
    n_val = round(validation_fraction * len(entries))
    if n_val < 1 or n_val >= len(entries):
        raise ValueError(f"split_coco_datalist: {len(entries)} images cannot be split with fraction "
                         f"{validation_fraction} (validation would hold {n_val})")
    val_ids = set(random.Random(seed).sample(ids, n_val))
    return {"training": [e for e in entries if int(e["image_id"]) not in val_ids],
            "validation": [e for e in entries if int(e["image_id"]) in val_ids]}


def load_coco_eval_datalist(
    path: str | os.PathLike, image_dir: str | os.PathLike | None = None, include_empty: bool = False
) -> list[dict[str, Any]]:
    """Labelled images of any COCO JSON for evaluation (``--eval_datalist``): :func:`load_coco_datalist`, checked.

    Every image file must exist and every annotation must decode inside its image (errors name the JSON, the
    image file and the annotation id). Images without annotations are left out by default: in a COCO export an
    image without a polygon usually means a missing label, not a negative; pass ``include_empty=True`` when
    your file marks negatives that way.
    """
    return load_coco_datalist(path, image_dir=image_dir, check_files=True, check_annotations=True,
                              include_empty=include_empty)


def masks_to_coco(
    items: Sequence[tuple[str, np.ndarray]],
    categories: dict[int, str] | None = None,
    mode: str = "rle",
    compressed: bool = True,
) -> dict[str, Any]:
    """``[(file_name, (H, W) label mask), ...]`` -> a COCO dict; one annotation per non-zero label value.

    ``mode`` is "rle", "polygon" or "auto" (polygons where exact, RLE for masks with holes). Label values are the
    category ids. Useful to export predictions.
    """
    categories = categories or {1: "foreground"}
    coco: dict[str, Any] = {"images": [], "annotations": [],
                            "categories": [{"id": int(k), "name": v} for k, v in categories.items()]}
    ann_id = 1
    for img_id, (file_name, mask) in enumerate(items, start=1):
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise ValueError(f"masks_to_coco: {file_name}: expected a (H, W) label mask, got shape {mask.shape}")
        coco["images"].append({"id": img_id, "file_name": file_name, "height": int(mask.shape[0]),
                               "width": int(mask.shape[1])})
        for value in np.unique(mask):
            if value == 0:
                continue
            if int(value) not in categories:
                raise ValueError(f"masks_to_coco: {file_name}: label {value} is not a category id {list(categories)}")
            coco["annotations"].append(
                mask_to_annotation(mask == value, img_id, int(value), ann_id, mode=mode, compressed=compressed)
            )
            ann_id += 1
    return coco
