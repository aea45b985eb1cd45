"""COCO segmentation annotations <-> masks: polygons and RLE (compressed and uncompressed), in numpy only.

COCO stores a segmentation as polygons ``[[x1, y1, x2, y2, ...], ...]`` in pixel coordinates (pixel ``(r, c)``
covers ``[c, c+1) x [r, r+1)``) or as run-length encoding ``{"size": [H, W], "counts": ...}`` over the mask in
column-major (Fortran) order, starting with a run of zeros; ``counts`` is a list of ints (uncompressed, used for
``iscrowd`` annotations) or the LEB128-like string of the COCO API (compressed). The codec here is a numpy
re-implementation of the COCO API's ``maskApi.c`` (no ``pycocotools`` dependency); tests pin its output to
strings produced by ``pycocotools``.

:class:`CocoToMask` / :class:`CocoToMaskd` turn a list of annotations of one image into a ``(1, H, W)`` binary or
label mask, or a ``(C, H, W)`` one-channel-per-category mask.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends
from skimage.draw import polygon as draw_polygon
from skimage.measure import approximate_polygon, find_contours

from medcnn.config import flag
from medcnn.transforms.validation import InvalidInputError, source_name

__all__ = [
    "CocoAnnotationError",
    "rle_encode",
    "rle_decode",
    "rle_counts_to_string",
    "rle_string_to_counts",
    "polygons_to_mask",
    "mask_to_polygons",
    "annotation_to_mask",
    "mask_to_annotation",
    "CocoToMask",
    "CocoToMaskd",
    "MaskToBoxes",
    "MaskToBoxesd",
]

MASK_MODES = ("binary", "label", "multichannel")


class CocoAnnotationError(InvalidInputError):
    """A COCO annotation cannot be turned into a mask (bad polygon/RLE, outside the image, wrong size)."""


# ---------------------------------------------------------------------------------------------------- RLE codec
def rle_encode(mask: np.ndarray, compressed: bool = True) -> dict:
    """Encode a ``(H, W)`` mask (non-zero = foreground) as COCO RLE; ``counts`` is a str if ``compressed``."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"rle_encode: expected a (H, W) mask, got shape {mask.shape}")
    h, w = mask.shape
    flat = (mask != 0).ravel(order="F").astype(np.int8)
    if flat.size == 0:
        counts = [0]
    else:
        change = np.flatnonzero(np.diff(flat)) + 1
        bounds = np.concatenate([[0], change, [flat.size]])
        counts = np.diff(bounds).tolist()
        if flat[0] == 1:  # COCO RLE always starts with a (possibly empty) run of zeros
            counts = [0] + counts
    return {"size": [int(h), int(w)], "counts": rle_counts_to_string(counts) if compressed else counts}


def rle_counts_to_string(counts: Sequence[int]) -> str:
    """COCO API compressed form of RLE counts (``rleToString``): 5-bit groups, delta from the run two back."""
    out = []
    for i, value in enumerate(counts):
        x = int(value)
        if i > 2:
            x -= int(counts[i - 2])
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = not ((c & 0x10) == 0 and x == 0) if x >= 0 else not ((c & 0x10) != 0 and x == -1)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def rle_string_to_counts(s: str | bytes) -> list[int]:
    """Inverse of :func:`rle_counts_to_string` (``rleFrString``)."""
    if isinstance(s, bytes):
        s = s.decode("ascii")
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            if p >= len(s):
                raise ValueError("compressed RLE string ends in the middle of a number")
            c = ord(s[p]) - 48
            if c < 0 or c > 63:
                raise ValueError(f"compressed RLE string has an invalid character {s[p]!r}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_decode(rle: Mapping, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Decode COCO RLE (compressed or uncompressed counts) to a ``(H, W)`` uint8 mask.

    ``shape``, when given, must equal the RLE's ``size``; a mismatch or counts that do not sum to ``H * W`` raise.
    """
    if not isinstance(rle, Mapping) or "size" not in rle or "counts" not in rle:
        raise ValueError("RLE must be a dict with 'size' [H, W] and 'counts'")
    h, w = (int(v) for v in rle["size"])
    if shape is not None and (h, w) != tuple(int(v) for v in shape):
        raise ValueError(f"RLE size {[h, w]} does not match the image size {list(shape)} (H, W)")
    counts = rle["counts"]
    counts = rle_string_to_counts(counts) if isinstance(counts, (str, bytes)) else [int(c) for c in counts]
    if any(c < 0 for c in counts) or sum(counts) != h * w:
        raise ValueError(f"RLE counts sum to {sum(counts)} (or contain negatives) but size {[h, w]} needs {h * w}")
    values = np.zeros(len(counts), dtype=np.uint8)
    values[1::2] = 1
    flat = np.repeat(values, counts)
    return flat.reshape((h, w), order="F")


# ------------------------------------------------------------------------------------------------------ polygons
def polygons_to_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Rasterise COCO polygons ``[[x1, y1, ...], ...]`` to a ``(H, W)`` uint8 mask (pixel centre inside)."""
    mask = np.zeros((height, width), dtype=np.uint8)
    for poly in polygons:
        xy = np.asarray(poly, dtype=float).reshape(-1, 2)
        rr, cc = draw_polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape=(height, width))
        mask[rr, cc] = 1
    return mask


def mask_to_polygons(mask: np.ndarray, tolerance: float = 0.0, min_area: float = 0.0) -> list[list[float]]:
    """Outer boundaries of a ``(H, W)`` mask as COCO polygons (sub-pixel contours; holes are not represented).

    ``tolerance`` > 0 simplifies each polygon (Douglas-Peucker, in pixels); regions below ``min_area`` px are
    dropped. Polygons cannot encode holes: use RLE when the mask has them.
    """
    mask = np.asarray(mask) != 0
    padded = np.pad(mask, 1).astype(np.float32)
    polygons: list[list[float]] = []
    for contour in find_contours(padded, 0.5):
        if tolerance > 0:
            contour = approximate_polygon(contour, tolerance)
        rc = contour - 1.0 + 0.5  # undo the padding; array index -> COCO pixel coordinate (centre at +0.5)
        if len(rc) < 3:
            continue
        x, y = rc[:, 1], rc[:, 0]
        signed = 0.5 * (np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
        # find_contours winds outer boundaries and hole boundaries in opposite directions: holes are skipped
        if signed >= 0 or -signed < min_area:
            continue
        polygons.append(np.stack([x, y], axis=1).ravel().round(2).tolist())
    return polygons


# --------------------------------------------------------------------------------------------------- annotations
def _check_bounds(poly: np.ndarray, height: int, width: int, tol: float, where: str) -> None:
    xy = poly.reshape(-1, 2)
    out = (xy[:, 0] < -tol) | (xy[:, 0] > width + tol) | (xy[:, 1] < -tol) | (xy[:, 1] > height + tol)
    if out.any():
        x, y = xy[np.argmax(out)]
        raise CocoAnnotationError(
            f"{where}: polygon point ({x:g}, {y:g}) lies outside the image ({width} x {height} px, x in [0, {width}],"
            f" y in [0, {height}]); {int(out.sum())} of {len(xy)} points are outside"
        )


def annotation_to_mask(
    annotation: Mapping[str, Any], height: int, width: int, bounds_tolerance: float = 1.0, name: str = "annotation"
) -> np.ndarray:
    """One COCO annotation (polygons, compressed or uncompressed RLE) -> ``(H, W)`` uint8 mask.

    Polygon points more than ``bounds_tolerance`` px outside the image, malformed polygons and RLE of another
    size raise :class:`CocoAnnotationError` whose message starts with ``name`` and the annotation id.
    """
    where = f"{name}: annotation id {annotation.get('id', '?')}"
    seg = annotation.get("segmentation")
    if seg is None:
        raise CocoAnnotationError(f"{where}: no 'segmentation'")
    if isinstance(seg, Mapping):
        try:
            return rle_decode(seg, (height, width))
        except ValueError as exc:
            raise CocoAnnotationError(f"{where}: {exc}") from exc
    if not isinstance(seg, (list, tuple)) or (seg and not isinstance(seg[0], (list, tuple))):
        raise CocoAnnotationError(f"{where}: 'segmentation' must be a list of polygons or an RLE dict")
    polys = []
    for poly in seg:
        try:
            arr = np.asarray(poly, dtype=float)
        except (TypeError, ValueError) as exc:
            raise CocoAnnotationError(f"{where}: polygon is not a list of numbers") from exc
        if arr.ndim != 1 or arr.size < 6 or arr.size % 2 or not np.isfinite(arr).all():
            raise CocoAnnotationError(f"{where}: a polygon needs >= 3 finite (x, y) pairs, got {arr.size} values")
        _check_bounds(arr, height, width, bounds_tolerance, where)
        polys.append(arr)
    return polygons_to_mask(polys, height, width)


def mask_to_annotation(
    mask: np.ndarray,
    image_id: int,
    category_id: int = 1,
    annotation_id: int = 1,
    mode: str = "polygon",
    compressed: bool = True,
) -> dict:
    """A ``(H, W)`` mask -> one COCO annotation dict, with area and bbox.

    ``mode``: "polygon", "rle", or "auto" (polygons when they reproduce the mask exactly, else RLE: polygons
    cannot carry holes).
    """
    mask = np.asarray(mask) != 0
    if mode == "auto":
        polys = mask_to_polygons(mask)
        exact = np.array_equal(polygons_to_mask(polys, *mask.shape).astype(bool), mask)
        mode = "polygon" if exact else "rle"
    if mode == "polygon":
        seg: Any = mask_to_polygons(mask)
        iscrowd = 0
    elif mode == "rle":
        seg = rle_encode(mask, compressed=compressed)
        iscrowd = 1
    else:
        raise ValueError(f"mask_to_annotation: mode must be 'polygon', 'rle' or 'auto', got {mode!r}")
    rows, cols = np.nonzero(mask)
    bbox = [0.0, 0.0, 0.0, 0.0]
    if rows.size:
        bbox = [float(cols.min()), float(rows.min()), float(cols.max() - cols.min() + 1),
                float(rows.max() - rows.min() + 1)]
    return {"id": int(annotation_id), "image_id": int(image_id), "category_id": int(category_id),
            "segmentation": seg, "area": float(mask.sum()), "bbox": bbox, "iscrowd": iscrowd}


# ---------------------------------------------------------------------------------------------------- transforms
class CocoToMask(Transform):
    """COCO annotations of one image -> mask MetaTensor.

    Args:
        spatial_size: ``(H, W)`` of the image; may instead be given per call.
        mode: ``"binary"`` -> ``(1, H, W)`` union of the annotations (uint8 0/1); ``"label"`` -> ``(1, H, W)``
            with each pixel set to its category's label (later annotations win where they overlap);
            ``"multichannel"`` -> ``(C, H, W)``, one binary channel per entry of ``category_ids``.
        category_ids: categories to use (others ignored). In ``"label"`` mode category ``category_ids[i]`` gets
            label ``i + 1``; without ``category_ids`` the category id itself is the label.
        layout: ``"HW"`` (rows first, numpy/COCO) or ``"WH"`` (x first, as MONAI's 2D readers load PNG/JPEG).
        bounds_tolerance: polygon points may lie this many px outside the image before it is an error.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        spatial_size: Sequence[int] | None = None,
        mode: str = "binary",
        category_ids: Sequence[int] | None = None,
        layout: str = "HW",
        bounds_tolerance: float = 1.0,
    ) -> None:
        if mode not in MASK_MODES:
            raise ValueError(f"CocoToMask: mode must be one of {MASK_MODES}, got {mode!r}")
        if mode == "multichannel" and not category_ids:
            raise ValueError("CocoToMask: mode 'multichannel' needs category_ids (one channel per category)")
        if layout not in ("HW", "WH"):
            raise ValueError(f"CocoToMask: layout must be 'HW' or 'WH', got {layout!r}")
        self.spatial_size = tuple(spatial_size) if spatial_size is not None else None
        self.mode = mode
        self.category_ids = list(category_ids) if category_ids is not None else None
        self.layout = layout
        self.bounds_tolerance = bounds_tolerance

    def __call__(
        self, annotations: Sequence[Mapping[str, Any]], spatial_size: Sequence[int] | None = None, name: str = "image"
    ) -> MetaTensor:
        """``annotations``: list of COCO annotation dicts of one image; returns ``(1|C, H, W)`` (``W, H`` if WH)."""
        size = tuple(spatial_size) if spatial_size is not None else self.spatial_size
        if size is None or len(size) != 2:
            raise ValueError(f"{name}: CocoToMask needs the image size (H, W), got {size}")
        h, w = (int(v) for v in size)
        if isinstance(annotations, Mapping):
            annotations = [annotations]
        n_ch = len(self.category_ids) if self.mode == "multichannel" else 1
        out = np.zeros((n_ch, h, w), dtype=np.int32)
        for ann in annotations:
            cat = ann.get("category_id")
            if self.category_ids is not None and cat not in self.category_ids:
                continue
            m = annotation_to_mask(ann, h, w, self.bounds_tolerance, name=name).astype(bool)
            if self.mode == "binary":
                out[0][m] = 1
            elif self.mode == "label":
                out[0][m] = (self.category_ids.index(cat) + 1) if self.category_ids is not None else int(cat)
            else:
                out[self.category_ids.index(cat)][m] = 1
        if out.max(initial=0) < 256:
            out = out.astype(np.uint8)
        if self.layout == "WH":
            out = np.ascontiguousarray(out.transpose(0, 2, 1))
        return MetaTensor(torch.from_numpy(out))


class CocoToMaskd(MapTransform):
    """Dictionary version of :class:`CocoToMask`: ``data[key]`` (annotation list) -> ``data[label_key]``.

    The image size comes from ``data[ref_key]`` (a loaded image, whose affine and file name the mask inherits;
    its spatial shape must equal the mask's in the chosen ``layout``) or from ``data["height"]`` and
    ``data["width"]`` (as written by :func:`medcnn.data.coco.load_coco_datalist`).
    """

    backend = CocoToMask.backend

    def __init__(
        self,
        keys: KeysCollection = "annotations",
        label_key: str | None = "label",
        ref_key: str | None = None,
        height_key: str = "height",
        width_key: str = "width",
        mode: str = "binary",
        category_ids: Sequence[int] | None = None,
        layout: str = "HW",
        bounds_tolerance: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if label_key is not None and len(self.keys) > 1:
            raise ValueError("CocoToMaskd: label_key can only be used with a single annotation key")
        self.label_key = label_key
        self.ref_key = ref_key
        self.height_key, self.width_key = height_key, width_key
        self.converter = CocoToMask(mode=mode, category_ids=category_ids, layout=layout,
                                    bounds_tolerance=bounds_tolerance)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        ref = d.get(self.ref_key) if self.ref_key is not None else None
        name = source_name(ref, default=str(d.get("image", d.get("file_name", "image"))))
        if self.height_key in d and self.width_key in d:
            size = (int(d[self.height_key]), int(d[self.width_key]))
        elif ref is not None:
            spatial = tuple(ref.shape[-2:])
            size = spatial[::-1] if self.converter.layout == "WH" else spatial
        else:
            raise ValueError(f"{name}: CocoToMaskd needs '{self.height_key}'/'{self.width_key}' or ref_key")
        for key in self.key_iterator(d):
            mask = self.converter(d[key], spatial_size=size, name=name)
            if ref is not None:
                if tuple(ref.shape[-2:]) != tuple(mask.shape[-2:]):
                    raise InvalidInputError(
                        f"{name}: image spatial shape {tuple(ref.shape[-2:])} does not match the COCO mask "
                        f"{tuple(mask.shape[-2:])} in layout {self.converter.layout!r} (COCO size H={size[0]}, "
                        f"W={size[1]}); MONAI's 2D readers load images as (W, H): use layout='WH'"
                    )
                if isinstance(ref, MetaTensor):
                    mask = MetaTensor(mask.as_tensor(), affine=ref.affine.clone(),
                                      meta={k: v for k, v in ref.meta.items() if k != "affine"})
            d[self.label_key or key] = mask
        return d



# ------------------------------------------------------------------------------------------- box-level labels
class MaskToBoxes(Transform):
    """Fill the bounding box of each connected foreground region: predictions in the shape of box-level labels.

    COCO exports whose polygons are axis-aligned rectangles (e.g. Roboflow's tumour sets) teach a network to
    predict rounded boxes; scoring them against the rectangles penalises the rounded corners. This maps a
    ``(1, *S)`` class-index map (or a ``(*S)`` mask) to the same shape with every connected region of
    ``foreground`` (8-/26-connected) replaced by its filled bounding box; regions smaller than ``min_size``
    pixels are removed, and with ``largest_only`` only the largest region is kept. Other classes become 0.
    With ``boxes=False`` the kept regions stay as they are (only the size / largest-region filter applies), or, with
    ``fill_holes``, have their enclosed holes filled (``scipy.ndimage.binary_fill_holes`` per region).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self, foreground: int = 1, min_size: int = 0, largest_only: bool = False, boxes: bool = True,
        fill_holes: bool = False,
    ) -> None:
        self.foreground, self.min_size = int(foreground), int(min_size)
        self.largest_only = flag(largest_only, "MaskToBoxes: largest_only")
        self.boxes, self.fill_holes = flag(boxes, "MaskToBoxes: boxes"), flag(fill_holes, "MaskToBoxes: fill_holes")

    def __call__(self, img):
        """``img`` ``(1, *S)`` or ``(*S)`` -> same shape and type, values 0 / ``foreground``."""
        from scipy import ndimage

        arr = np.asarray(img.detach().cpu() if isinstance(img, torch.Tensor) else img)
        fg = arr == self.foreground
        labels, n = ndimage.label(fg, structure=np.ones((3,) * fg.ndim))
        out = np.zeros_like(arr)
        if n:
            sizes = np.bincount(labels.ravel())[1:]
            keep = [i for i in range(n) if sizes[i] >= max(self.min_size, 1)]
            if self.largest_only and keep:
                keep = [max(keep, key=lambda i: sizes[i])]
            slices = ndimage.find_objects(labels)
            for i in keep:
                if self.boxes:
                    out[slices[i]] = self.foreground
                    continue
                region = labels[slices[i]] == i + 1
                if self.fill_holes:  # on the region's non-singleton axes: a (1, H, W) channel axis is no depth
                    region = ndimage.binary_fill_holes(region.squeeze()).reshape(region.shape)
                out[slices[i]][region] = self.foreground
        if isinstance(img, MetaTensor):
            return MetaTensor(torch.as_tensor(out), meta=img.meta, applied_operations=img.applied_operations)
        return torch.as_tensor(out) if isinstance(img, torch.Tensor) else out


class MaskToBoxesd(MapTransform):
    """Dictionary version of :class:`MaskToBoxes`."""

    backend = MaskToBoxes.backend

    def __init__(
        self, keys: KeysCollection, foreground: int = 1, min_size: int = 0, largest_only: bool = False,
        boxes: bool = True, fill_holes: bool = False, allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = MaskToBoxes(foreground, min_size, largest_only, boxes, fill_holes)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d
