"""MedMNIST-style ``.npz`` files (any MedMNIST 2D set) as MONAI-style datalists of ``{"image", "label"}`` dicts.

A MedMNIST ``.npz`` holds, per split ``<split>`` (``train``, ``val``, ``test``), an array ``<split>_images`` of shape
``(N, H, W)`` (grey) or ``(N, H, W, C)`` (colour), and ``<split>_labels`` of shape ``(N,)`` or ``(N, 1)`` with
integer class indices. :func:`load_medmnist_split` reads and validates one split; :func:`medmnist_datalist` turns it
into a list of dicts whose ``image`` is a channel-first float MetaTensor ``(C, H, W)`` in ``[0, 1]`` that remembers
its origin (``filename_or_obj`` = ``"<file>:<split>_images[<i>]"``), and whose ``label`` is an ``int``;
:func:`classification_datalist` also reads a user's JSON list of ``{"image": png, "label": int}`` entries or a JSON
pointer ``{"npz": file, "split": name}`` (``--eval_datalist``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor

from medcnn.data.datalist import load_datalist, read_datalist_json

__all__ = [
    "MedMNISTError",
    "load_medmnist_split",
    "medmnist_datalist",
    "png_datalist",
    "classification_datalist",
    "class_weights",
    "check_intensity_range",
]

logger = logging.getLogger(__name__)


class MedMNISTError(ValueError):
    """A MedMNIST-style file is missing, lacks a key, or holds inconsistent images / labels."""


def _n_classes(n_classes: int | None, class_names: Sequence[str] | None, where: str) -> int | None:
    if class_names is not None:
        if n_classes is not None and n_classes != len(class_names):
            raise MedMNISTError(
                f"{where}: n_classes={n_classes} but {len(class_names)} class names {list(class_names)}"
            )
        return len(class_names)
    if n_classes is not None and n_classes < 2:
        raise MedMNISTError(f"{where}: n_classes must be >= 2, got {n_classes}")
    return n_classes


def _check_labels(labels: np.ndarray, n_classes: int | None, where: str) -> np.ndarray:
    """Integer class indices ``(N,)`` from ``(N,)`` / ``(N, 1)`` labels, all in ``[0, n_classes)``."""
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise MedMNISTError(
            f"{where}: labels must have shape (N,) or (N, 1) (single-label classification), got {labels.shape}"
        )
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
            raise MedMNISTError(f"{where}: labels must be integer class indices, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if n_classes is not None:
        bad = np.flatnonzero((labels < 0) | (labels >= n_classes))
        if bad.size:
            raise MedMNISTError(
                f"{where}: {bad.size} label(s) outside the declared classes 0..{n_classes - 1}, "
                f"e.g. index {int(bad[0])} has label {int(labels[bad[0]])}"
            )
    elif labels.size and labels.min() < 0:
        raise MedMNISTError(f"{where}: negative label {int(labels.min())}")
    return labels


def load_medmnist_split(
    path: str | os.PathLike,
    split: str = "train",
    n_classes: int | None = None,
    class_names: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, H, W)`` / ``(N, H, W, C)`` (as stored) and labels ``(N,)`` int64 of one split of an ``.npz``.

    Raises :class:`MedMNISTError` naming the file and key when the file is missing or not an ``.npz``, a
    ``<split>_images`` / ``<split>_labels`` key is missing, the image array is not ``(N, H, W[, C])``, the two arrays
    have different lengths, or a label is outside the declared classes (``n_classes``, or ``len(class_names)``).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MedMNISTError(f"MedMNIST file {path}: not found")
    n_classes = _n_classes(n_classes, class_names, f"MedMNIST file {path}")
    if path.stat().st_size == 0:
        raise MedMNISTError(f"MedMNIST file {path}: empty file (0 bytes); was a download or copy interrupted?")
    img_key, lbl_key = f"{split}_images", f"{split}_labels"
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:  # OSError, ValueError, EOFError, zipfile.BadZipFile ... for a truncated or foreign file
        raise MedMNISTError(
            f"MedMNIST file {path}: not a readable .npz archive, truncated or corrupt? ({type(exc).__name__}: {exc})"
        ) from exc
    if not hasattr(archive, "files"):
        raise MedMNISTError(f"MedMNIST file {path}: expected an .npz archive of named arrays, got a single array")
    with archive:
        missing = [k for k in (img_key, lbl_key) if k not in archive.files]
        if missing:
            raise MedMNISTError(
                f"MedMNIST file {path}: missing key(s) {missing} for split '{split}' (keys present: {archive.files})"
            )
        try:
            images, labels = archive[img_key], archive[lbl_key]
        except Exception as exc:  # a member cut short: zlib / CRC / EOF errors
            raise MedMNISTError(
                f"MedMNIST file {path}: cannot read '{img_key}' / '{lbl_key}', the archive is truncated or corrupt "
                f"({type(exc).__name__}: {exc})"
            ) from exc
    if images.ndim not in (3, 4) or images.shape[0] == 0:
        raise MedMNISTError(
            f"MedMNIST file {path} key '{img_key}': expected a non-empty (N, H, W) or (N, H, W, C) array, "
            f"got shape {images.shape}"
        )
    if labels.shape[0] != images.shape[0]:
        raise MedMNISTError(
            f"MedMNIST file {path}: '{img_key}' has {images.shape[0]} images but '{lbl_key}' has "
            f"{labels.shape[0]} labels"
        )
    labels = _check_labels(labels, n_classes, f"MedMNIST file {path} key '{lbl_key}'")
    check_intensity_range(images, f"MedMNIST file {path} key '{img_key}'")
    return images, labels


def check_intensity_range(images: np.ndarray, where: str) -> None:
    """Refuse images outside the range the classifiers expect: 8-bit grey levels.

    Accepted: ``uint8`` (0-255), any other integer dtype whose values lie in 0-255 (8-bit values stored wide),
    and floating point already in ``[0, 1]``. Refused with :class:`MedMNISTError` naming ``where``: NaN or infinite
    values, integers beyond 0-255 (16-bit data: rescaling it would guess a window), floats outside ``[0, 1]``
    (e.g. 0-255 stored as float: divide by 255 first), and booleans.
    """
    arr = np.asarray(images)
    if arr.dtype == np.bool_ or arr.dtype.kind not in "uif":
        raise MedMNISTError(f"{where}: images must be 8-bit grey levels, got dtype {arr.dtype}")
    if arr.size == 0 or arr.dtype == np.uint8:
        return
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise MedMNISTError(f"{where}: {bad} NaN or infinite pixel value(s)")
    lo, hi = float(arr.min()), float(arr.max())
    if arr.dtype.kind in "ui" and not (lo >= 0 and hi <= 255):
        raise MedMNISTError(
            f"{where}: {arr.dtype} values {lo:g}..{hi:g} are not 8-bit grey levels (0-255); the classifier was "
            "trained on 8-bit images, convert them with your own window to uint8 first"
        )
    if arr.dtype.kind == "f" and not (lo >= 0.0 and hi <= 1.0):
        hint = " (they look like 0-255 grey levels: divide by 255)" if lo >= 0 and hi <= 255 else ""
        raise MedMNISTError(f"{where}: float values {lo:g}..{hi:g} are outside [0, 1]{hint}")


def _unit_scale(arr: np.ndarray) -> float:
    """Divisor that maps checked images (see :func:`check_intensity_range`) to ``[0, 1]``: 255 for integers."""
    return 255.0 if arr.dtype.kind in "ui" else 1.0


def _to_channel_first(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` -> ``(1, H, W)``; ``(H, W, C)`` -> ``(C, H, W)``; float32 in ``[0, 1]`` (integers / 255).

    ``image`` must have passed :func:`check_intensity_range`.
    """
    arr = image[None] if image.ndim == 2 else np.moveaxis(image, -1, 0)
    return np.ascontiguousarray(arr, dtype=np.float32) / _unit_scale(arr)


def medmnist_datalist(
    path: str | os.PathLike,
    split: str = "train",
    n_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    limit: int | None = None,
) -> list[dict]:
    """MONAI-style items ``{"image": MetaTensor (C, H, W) float32 in [0, 1], "label": int, "id": str}`` of one split.

    ``id`` is ``"<split>_<index>"``. ``limit`` keeps ``limit`` images evenly spaced over the split (tiny runs in
    tests; files sorted by class, like the PneumoniaMNIST train split, keep their class mix). Validation as in
    :func:`load_medmnist_split`.
    """
    images, labels = load_medmnist_split(path, split, n_classes, class_names)
    index = np.arange(len(labels))
    if limit is not None and limit < len(labels):
        if limit < 1:
            raise MedMNISTError(f"MedMNIST file {path}: limit must be >= 1, got {limit}")
        index = np.unique(np.linspace(0, len(labels) - 1, int(limit)).round().astype(int))
    name = str(Path(path).expanduser().resolve())
    return [
        {
            "image": MetaTensor(
                torch.from_numpy(_to_channel_first(images[i])), meta={"filename_or_obj": f"{name}:{split}_images[{i}]"}
            ),
            "label": int(labels[i]),
            "id": f"{split}_{i:05d}",
        }
        for i in index
    ]


def _pil_to_8bit(im, grey: bool, where: str) -> np.ndarray:
    """An 8-bit ``(H, W)`` grey or ``(H, W, 3)`` RGB array from a Pillow image; 16-bit / float images are checked.

    Pillow's ``convert("L")`` clips a 16-bit image to 255, which turns most medical PNGs into a constant image;
    here a 16-bit (``I;16``, ``I``) or float (``F``) image is accepted only when its values are 8-bit grey levels,
    and refused with :class:`MedMNISTError` otherwise.
    """
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(im)
        if arr.dtype.kind == "f":
            if not np.isfinite(arr).all():
                raise MedMNISTError(f"{where} ({im.mode}): NaN or infinite pixel values")
            if arr.size and arr.min() >= 0 and arr.max() <= 1:
                arr = arr * 255.0  # a float image in [0, 1]
            arr = np.round(arr)
        arr = arr.astype(np.int64)
        check_intensity_range(arr, f"{where} ({im.mode})")
        arr = arr.astype(np.uint8)
        return arr if grey else np.repeat(arr[..., None], 3, axis=-1)
    return np.asarray(im.convert("L" if grey else "RGB"))


def png_datalist(
    entries: Sequence[dict],
    n_classes: int | None = None,
    source: str = "datalist",
    grey: bool = True,
    require_label: bool = True,
) -> list[dict]:
    """Read ``{"image": png/jpg path, "label": int}`` entries into items like :func:`medmnist_datalist`.

    Images are read with Pillow as grey level (``grey=True``; colour images are converted) or RGB, 8-bit scaled to
    ``[0, 1]``. Labels must be integers in ``[0, n_classes)`` (optional with ``require_label=False``, for
    inference); errors name ``source`` and the entry.
    """
    from PIL import Image

    out = []
    for i, entry in enumerate(entries):
        fname = entry["image"]
        label = entry.get("label")
        if label is None and require_label:
            raise MedMNISTError(f"{source}: entry {i} ({fname}) has no 'label'")
        if label is None:
            pass
        elif isinstance(label, bool) or not isinstance(label, (int, np.integer)):
            raise MedMNISTError(f"{source}: entry {i} ({fname}) label must be an integer class index, got {label!r}")
        elif n_classes is not None and not 0 <= int(label) < n_classes:
            raise MedMNISTError(
                f"{source}: entry {i} ({fname}) label {label} is outside the declared classes 0..{n_classes - 1}"
            )
        try:
            with Image.open(fname) as im:
                arr = _pil_to_8bit(im, grey, f"{source}: entry {i}: image {fname}")
        except OSError as exc:
            raise MedMNISTError(f"{source}: entry {i}: cannot read image {fname} ({exc})") from exc
        item = {
            "image": MetaTensor(torch.from_numpy(_to_channel_first(arr)), meta={"filename_or_obj": str(fname)}),
            "id": Path(fname).stem,
        }
        if label is not None:
            item["label"] = int(label)
        out.append(item)
    return out


def classification_datalist(
    path: str | os.PathLike,
    split: str = "test",
    n_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    require_label: bool = True,
) -> list[dict]:
    """Items for ``--eval_datalist``: a MedMNIST-style ``.npz`` (split ``split``), or a JSON file.

    The JSON is either a pointer ``{"npz": "<file.npz>", "split": "<split>"}`` (``split`` optional, default
    ``split``), or a plain list / MSD-style ``{"training": [...]}`` list of ``{"image": "<png>", "label": <int>}``
    (``label`` optional with ``require_label=False``, for inference). Relative paths resolve against the JSON
    file's folder. Errors name the file and the problem.
    """
    path = Path(path).expanduser()
    if path.suffix == ".npz":
        return medmnist_datalist(path, split, n_classes, class_names)
    content = read_datalist_json(path)
    if isinstance(content, dict) and "npz" in content:
        npz = Path(content["npz"]).expanduser()
        npz = npz if npz.is_absolute() else path.parent / npz
        logger.info("datalist %s points at %s split %s", path, npz, content.get("split", split))
        return medmnist_datalist(npz, content.get("split", split), n_classes, class_names)
    n_classes = _n_classes(n_classes, class_names, f"datalist {path}")
    keys = ("image", "label") if require_label else ("image",)
    entries = load_datalist(path, keys=keys, path_keys=("image",))
    return png_datalist(entries, n_classes, source=f"datalist {path}", require_label=require_label)


def class_weights(labels: Sequence[int] | np.ndarray, n_classes: int | None = None) -> torch.Tensor:
    """Inverse-frequency class weights ``N / (K * n_k)`` ``(K,)`` float32 (mean weight per image = 1).

    Raises ``ValueError`` when a class has no example (its weight would be infinite).
    """
    y = np.asarray([int(v["label"]) if isinstance(v, dict) else int(v) for v in labels], dtype=np.int64)
    k = int(n_classes) if n_classes is not None else int(y.max()) + 1
    counts = np.bincount(y, minlength=k)[:k]
    if np.any(counts == 0):
        raise ValueError(f"class_weights: class(es) {np.flatnonzero(counts == 0).tolist()} have no example")
    return torch.as_tensor(y.size / (k * counts), dtype=torch.float32)
