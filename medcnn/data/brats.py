"""BraTS-style brain-tumour cases -> 2D axial slice items (FLAIR + T1c channels, slice label, whole-tumour mask).

A BraTS case is a folder (or a datalist entry) with co-registered NIfTI volumes of the same shape
``(H, W, D)``, axial slices along the last axis:

========== ================================== =====================================================
key        default file name in a case folder content
========== ================================== =====================================================
flair      ``Flair_subtrMeanDivStd.nii.gz``   FLAIR, float
t1c        ``T1c_subtrMeanDivStd.nii.gz``     T1 post-contrast, float
label      ``OTMultiClass.nii.gz``            0 background, 1 necrosis, 2 oedema, 3 non-enhancing, 4 enhancing
brainmask  ``brainmask.nii.gz`` (optional)    brain > 0.5; without it, brain = any channel above its minimum
========== ================================== =====================================================

Slices are kept when their brain area is at least ``min_brain_fraction`` of the case's largest axial
brain area (drops the skull-cap slices with a few brain pixels). A slice is tumour-positive (``label`` 1)
when its whole-tumour area (labels 1-4) is at least ``min_tumour_pixels``; slices with a smaller, non-zero
tumour area are *ambiguous* (flag ``ambiguous``): a classifier should not be taught that they are tumour-free,
so :func:`brats_slices` can drop them (``drop_ambiguous=True``) while segmentation keeps them (their mask is
exact). Splits are by case, never by slice; :func:`split_slices_by_block` carves a validation subset out of
the training cases in contiguous slice blocks.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from medcnn.transforms.intensity import zscore_in_brain
from medcnn.transforms.stack import SelectSlice

__all__ = [
    "BRATS_FILE_NAMES",
    "BRATS_KEYS",
    "BRATS_OPTIONAL_KEYS",
    "BRATS_MODALITIES",
    "BratsDataError",
    "brats_case_datalist",
    "name_brats_cases",
    "load_brats_case",
    "extract_brats_slices",
    "brats_slices",
    "split_slices_by_block",
    "brats_hemispheres",
    "normalise_in_brain",
    "slice_summary",
    "brats_volume_transforms",
]

logger = logging.getLogger(__name__)

BRATS_MODALITIES: tuple[str, ...] = ("flair", "t1c")
BRATS_KEYS: tuple[str, ...] = ("flair", "t1c", "label")  # required keys of a datalist entry ("brainmask" optional)
BRATS_OPTIONAL_KEYS: tuple[str, ...] = ("brainmask",)  # optional file keys, resolved like the required ones
BRATS_FILE_NAMES: dict[str, str] = {
    "flair": "Flair_subtrMeanDivStd.nii.gz",
    "t1c": "T1c_subtrMeanDivStd.nii.gz",
    "label": "OTMultiClass.nii.gz",
    "brainmask": "brainmask.nii.gz",
}
BRATS_LABELS = (0, 1, 2, 3, 4)
NORMALISATIONS = (None, "brain_zscore")


class BratsDataError(ValueError):
    """A BraTS case is unusable: a file is missing/unreadable, shapes differ, or label values are invalid."""


def brats_case_datalist(
    dataset_dir: str | os.PathLike,
    cases: Sequence[str],
    file_names: Mapping[str, str] | None = None,
    require_label: bool = True,
) -> list[dict]:
    """Datalist entries ``{"case", "flair", "t1c", "label"[, "brainmask"]}`` for case folders under ``dataset_dir``.

    Raises :class:`BratsDataError` naming the missing folder or file. ``brainmask`` is included when present,
    and ``label`` too when ``require_label`` is False (unlabelled cases for inference).
    """
    names = {**BRATS_FILE_NAMES, **(file_names or {})}
    root = Path(dataset_dir).expanduser()
    if isinstance(cases, str):
        cases = [cases]
    entries = []
    for case in cases:
        folder = root / case
        if not folder.is_dir():
            raise BratsDataError(f"{folder}: BraTS case folder not found (dataset_dir={root})")
        entry: dict = {"case": str(case)}
        for key in (*BRATS_KEYS, "brainmask"):
            path = folder / names[key]
            if path.is_file():
                entry[key] = str(path)
            elif key != "brainmask" and (key != "label" or require_label):
                raise BratsDataError(f"{path}: missing {key} file of BraTS case {case}")
        entries.append(entry)
    return entries


def name_brats_cases(entries: Sequence[Mapping], key: str = "flair") -> list[dict]:
    """Datalist entries with a ``case`` name: kept when present, else the folder of the ``key`` file (BraTS case
    folders hold identically named files, so file names do not tell cases apart in reports and metrics)."""
    out = []
    for entry in entries:
        entry = dict(entry)
        if not entry.get("case"):
            if key not in entry:
                raise BratsDataError(f"BraTS datalist entry {entry}: no '{key}' file to name the case by")
            entry["case"] = Path(str(entry[key])).parent.name
        out.append(entry)
    return out


def _read(path: str | os.PathLike, key: str) -> np.ndarray:
    path = str(path)
    if not os.path.isfile(path):
        raise BratsDataError(f"{path}: missing {key} file")
    try:
        data = np.asarray(nib.load(path).dataobj)
    except Exception as exc:  # nibabel raises several types for corrupt files
        raise BratsDataError(f"{path}: cannot read {key} as NIfTI ({exc})") from exc
    data = np.squeeze(data)
    if data.ndim != 3:
        raise BratsDataError(f"{path}: {key} must be a 3D volume (H, W, D), got shape {data.shape}")
    return data


def load_brats_case(
    entry: Mapping, modalities: Sequence[str] = BRATS_MODALITIES, require_label: bool = True
) -> dict:
    """Read one case: ``image`` (C, H, W, D) float32, ``label`` (H, W, D) uint8 in 0-4, ``brainmask`` (H, W, D) bool.

    Raises :class:`BratsDataError` naming the file when a file is missing or unreadable, when a modality,
    the label or the brain mask has a different shape from the first modality, when an image holds NaN/inf,
    or when the label has values outside 0-4. Without ``label`` in ``entry`` and ``require_label=False`` the
    label is all zeros and ``has_label`` is False (slice classes become -1).
    """
    case = str(entry.get("case") or Path(str(entry[modalities[0]])).parent.name)
    has_label = bool(entry.get("label"))
    for key in (*modalities, "label") if require_label or has_label else modalities:
        if key not in entry:
            raise BratsDataError(f"BraTS case {case}: datalist entry lacks key '{key}'")
    channels = []
    ref_shape, ref_path = None, None
    for key in modalities:
        img = _read(entry[key], key)
        if ref_shape is None:
            ref_shape, ref_path = img.shape, entry[key]
        elif img.shape != ref_shape:
            raise BratsDataError(
                f"{entry[key]}: {key} has shape {img.shape} but {ref_path} has {ref_shape}; modalities must match"
            )
        if not np.all(np.isfinite(img)):
            raise BratsDataError(f"{entry[key]}: {key} contains NaN or infinite values")
        channels.append(img.astype(np.float32, copy=False))
    image = np.stack(channels)
    if not has_label:
        label = np.zeros(ref_shape, np.uint8)
    else:
        label = _read(entry["label"], "label")
        _check_label(label, entry["label"], ref_shape, ref_path)
    if entry.get("brainmask"):
        mask = _read(entry["brainmask"], "brainmask")
        if mask.shape != ref_shape:
            raise BratsDataError(
                f"{entry['brainmask']}: brainmask has shape {mask.shape} but {ref_path} has {ref_shape}"
            )
        brain = mask > 0.5
    else:  # background outside the brain is each channel's constant minimum in normalised BraTS data
        brain = np.any(image > image.reshape(len(channels), -1).min(axis=1)[:, None, None, None], axis=0)
    return {"case": case, "image": image, "label": label.astype(np.uint8), "brainmask": brain, "has_label": has_label}


def _check_label(label: np.ndarray, path, ref_shape: tuple, ref_path) -> None:
    if label.shape != ref_shape:
        raise BratsDataError(f"{path}: label has shape {label.shape} but {ref_path} has {ref_shape}")
    if not np.all(np.isfinite(label)):
        raise BratsDataError(f"{path}: label contains NaN or infinite values")
    bad = [v for v in np.unique(label).tolist() if v not in BRATS_LABELS]
    if bad:
        raise BratsDataError(
            f"{path}: label values {bad[:10]} outside the BraTS labels 0-4 "
            "(0 background, 1 necrosis, 2 oedema, 3 non-enhancing, 4 enhancing)"
        )


def normalise_in_brain(image: np.ndarray, brain: np.ndarray, case: str = "") -> np.ndarray:
    """Z-score each channel of ``image`` (C, H, W, D) over the voxels of ``brain`` (H, W, D) and set everything
    outside the brain to 0 (the brain's mean): :func:`medcnn.transforms.intensity.zscore_in_brain` with errors
    naming the BraTS case.

    DeepMedic's ``subtrMeanDivStd`` volumes are normalised over a different region per case (in-brain standard
    deviations of 1.27-1.75 in the shared cases) and their background is a per-case constant (-3.5 to -6.2):
    a globally pooled classifier reads the large background area too, and its log-odds on a new case shift by
    tens, so no decision threshold transfers between cases. After this, tissue and background have the same
    values in every case.
    """
    try:
        return zscore_in_brain(image, brain)
    except ValueError as exc:
        raise BratsDataError(f"BraTS case {case}: {exc}") from exc


def extract_brats_slices(
    volume: Mapping,
    min_brain_fraction: float = 0.1,
    min_tumour_pixels: int = 50,
    drop_ambiguous: bool = False,
    mask_key: str = "mask",
    class_key: str = "label",
    context: int = 0,
) -> list[dict]:
    """Axial slice items of a case loaded by :func:`load_brats_case`.

    Each item: ``image`` (C * (2 * context + 1), H, W) float32 (with ``context`` > 0 every modality brings its
    slices z - context ... z + context, edge slices repeated: a 2.5D input), ``<mask_key>`` (1, H, W) uint8 whole
    tumour (labels 1-4),
    ``<class_key>`` int (1 when the tumour area >= ``min_tumour_pixels``), ``ambiguous`` (0 < area <
    ``min_tumour_pixels``), ``case``, ``slice_index``, ``id`` (``<case>_slice<zzz>``), ``tumour_pixels``,
    ``brain_pixels``; the class is -1 for an unlabelled case. A classifier uses the
    defaults (``label`` = slice class); a segmentation bundle passes ``mask_key="label"`` and another ``class_key``.
    """
    if mask_key == class_key:
        raise ValueError(f"mask_key and class_key must differ, both are {mask_key!r}")
    if not 0.0 <= min_brain_fraction <= 1.0:
        raise ValueError(f"min_brain_fraction must be in [0, 1], got {min_brain_fraction}")
    if min_tumour_pixels < 1:
        raise ValueError(f"min_tumour_pixels must be >= 1, got {min_tumour_pixels}")
    select_axial = SelectSlice(dim=2, context=context)  # (C, H, W, D) -> (C * (2 * context + 1), H, W)
    image, label, brain = volume["image"], volume["label"], volume["brainmask"]
    brain_area = brain.sum(axis=(0, 1))
    tumour = label > 0
    tumour_area = tumour.sum(axis=(0, 1))
    keep = (brain_area > 0) & (brain_area >= min_brain_fraction * brain_area.max())
    items = []
    for z in np.nonzero(keep)[0]:
        area = int(tumour_area[z])
        ambiguous = 0 < area < min_tumour_pixels
        if ambiguous and drop_ambiguous:
            continue
        items.append({
            "image": np.ascontiguousarray(select_axial(image, int(z)).numpy()),
            mask_key: tumour[None, :, :, z].astype(np.uint8),
            class_key: int(area >= min_tumour_pixels) if volume.get("has_label", True) else -1,
            "ambiguous": bool(ambiguous),
            "case": volume["case"],
            "id": f"{volume['case']}_slice{int(z):03d}",
            "slice_index": int(z),
            "tumour_pixels": area,
            "brain_pixels": int(brain_area[z]),
        })
    return items


def brats_slices(
    cases: Sequence[Mapping],
    min_brain_fraction: float = 0.1,
    min_tumour_pixels: int = 50,
    drop_ambiguous: bool = False,
    modalities: Sequence[str] = BRATS_MODALITIES,
    mask_key: str = "mask",
    class_key: str = "label",
    require_label: bool = True,
    normalise: str | None = None,
    context: int = 0,
) -> list[dict]:
    """Slice items (see :func:`extract_brats_slices`) of every case entry, in case then slice order.

    ``normalise="brain_zscore"`` z-scores every modality inside the case's brain mask first
    (:func:`normalise_in_brain`); ``context`` adds neighbouring slices as channels.
    """
    if normalise not in NORMALISATIONS:
        raise ValueError(f"normalise must be one of {NORMALISATIONS}, got {normalise!r}")
    if isinstance(cases, Mapping):
        cases = [cases]
    if not cases:
        raise BratsDataError("no BraTS cases given")
    items: list[dict] = []
    for entry in cases:
        volume = load_brats_case(entry, modalities, require_label)
        if normalise == "brain_zscore":
            volume["image"] = normalise_in_brain(volume["image"], volume["brainmask"], volume["case"])
        case_items = extract_brats_slices(
            volume, min_brain_fraction, min_tumour_pixels, drop_ambiguous, mask_key=mask_key, class_key=class_key,
            context=context,
        )
        logger.info("%s: %s", volume["case"], slice_summary(case_items, class_key))
        items += case_items
    return items


def split_slices_by_block(
    items: Sequence[Mapping], block: int = 10, every: int = 4, offset: int = 2, validation: bool = False
) -> list[dict]:
    """Training or validation part of ``items``: slices whose ``slice_index // block % every == offset`` validate.

    Contiguous blocks keep neighbouring (nearly identical) slices on the same side, so validation is less
    optimistic than a random slice split; the test case is never among ``items``.
    """
    if block < 1 or every < 2 or not 0 <= offset < every:
        raise ValueError(f"split_slices_by_block: need block >= 1, every >= 2, 0 <= offset < every; got "
                         f"{block}, {every}, {offset}")
    return [dict(i) for i in items if ((i["slice_index"] // block) % every == offset) == validation]


def brats_hemispheres(
    items: Sequence[Mapping],
    min_tumour_pixels: int = 50,
    drop_ambiguous: bool = True,
    mask_key: str = "mask",
    class_key: str = "label",
) -> list[dict]:
    """Left and right half-slice items of slice items ``image`` (C, H, W): halves (C, H // 2, W) along the first
    spatial axis (left-right in BraTS), each with its own whole-tumour mask and class (area >= ``min_tumour_pixels``).

    A slice classifier on this data can separate tumour from tumour-free slices by the brain's shape alone
    (tumour-free slices are the top and bottom of the brain), and its CAM then lights up anatomy. The
    contralateral half of a tumour slice is a tumour-free image at the same level, so training on halves
    forces the classifier to use the tumour itself; it still sees one label per image, never a mask.
    Item ``id`` gets ``_L`` / ``_R`` (first / second half) and ``hemisphere`` says which half.
    """
    out: list[dict] = []
    for item in items:
        h = item["image"].shape[1]
        for side, sl in (("L", slice(0, h // 2)), ("R", slice(h // 2, h))):
            mask = np.ascontiguousarray(item[mask_key][:, sl])
            area = int(mask.sum())
            ambiguous = 0 < area < min_tumour_pixels
            if ambiguous and drop_ambiguous:
                continue
            half = dict(item)
            half.update({
                "image": np.ascontiguousarray(item["image"][:, sl]),
                mask_key: mask,
                class_key: int(area >= min_tumour_pixels) if int(item[class_key]) >= 0 else -1,
                "ambiguous": bool(ambiguous),
                "tumour_pixels": area,
                "hemisphere": side,
                "id": f"{item.get('id', item.get('case', 'slice'))}_{side}",
            })
            out.append(half)
    return out


def slice_summary(items: Sequence[Mapping], class_key: str = "label") -> dict:
    """Counts of slices, tumour-positive, negative, ambiguous and unlabelled (class < 0) slices, and the cases."""
    classes = [int(i[class_key]) for i in items]
    summary = {
        "n_slices": len(items),
        "n_positive": sum(1 for c in classes if c > 0),
        "n_negative": sum(1 for c, i in zip(classes, items, strict=True) if c == 0 and not i["ambiguous"]),
        "n_ambiguous": sum(1 for i in items if i["ambiguous"]),
        "cases": sorted({i["case"] for i in items}),
    }
    unlabelled = sum(1 for c in classes if c < 0)
    if unlabelled:  # slices of cases without a label file (inference): neither positive nor negative
        summary["n_unlabelled"] = unlabelled
    return summary


def brats_volume_transforms(
    volume_keys: Sequence[str] = ("flair", "t1c", "label", "brainmask"),
    modalities: Sequence[str] = BRATS_MODALITIES,
    label_key: str = "label",
    brainmask_key: str = "brainmask",
) -> list:
    """The MONAI transforms that read one BraTS case of a file datalist into ``image`` (C, H, W, D) and ``label``.

    ``LoadImageCheckedd`` (errors name the file) -> ``EnsureChannelFirstd`` -> ``CheckImageLabeld`` (3D, one
    channel, labels 0-4, same shapes) -> ``ConcatItemsd`` (modalities -> ``image``) -> ``BrainZScored`` (inside the
    brain mask when the entry has one, else where a channel is above its minimum; background 0) -> the modality
    and brain-mask keys deleted -> ``label`` = whole tumour (labels 1-4 -> 1). Missing optional keys (the brain
    mask; the label of an unlabelled case) are allowed. Shared by the BraTS segmentation and localisation bundles.
    """
    from monai.transforms import AsDiscreted, ConcatItemsd, DeleteItemsd, EnsureChannelFirstd

    from medcnn.transforms import BrainZScored, CheckImageLabeld, LoadImageCheckedd

    keys = list(volume_keys)
    return [
        LoadImageCheckedd(keys=keys, image_only=True, allow_missing_keys=True),
        EnsureChannelFirstd(keys=keys, allow_missing_keys=True),
        CheckImageLabeld(keys=keys, label_key=label_key, spatial_dims=3, num_channels=1,
                         allowed_labels=list(BRATS_LABELS), allow_missing_keys=True),
        ConcatItemsd(keys=list(modalities), name="image"),
        BrainZScored(keys="image", mask_key=brainmask_key),
        DeleteItemsd(keys=[*modalities, brainmask_key]),
        AsDiscreted(keys=label_key, threshold=0.5, allow_missing_keys=True),
    ]
