"""Datalists of the LGG FLAIR-abnormality TIFF data: patient folders of per-slice TIFFs, or multi-page TIFF volumes.

Folder layout (the LGG segmentation dataset of Buda et al. 2019)::

    <dataset_dir>/<patient>/<patient>_<n>.tif        3-channel slice n (pre-contrast, FLAIR, post-contrast)
    <dataset_dir>/<patient>/<patient>_<n>_mask.tif   its FLAIR-abnormality mask (0 / 255), empty ones included

Every datalist item is one slice::

    {"image": <tif>, "mask": <tif>, "patient": <name>, "slice": <page of the file>, "slice_index": <0-based
     position in the patient's volume>, "id": "<patient>_<n>"}

so per-slice files (``slice`` = 0) and a patient stored as one multi-page TIFF volume with a mask stack
(``slice`` = ``slice_index`` = page) go through the same transforms (:class:`medcnn.data.TiffPagesReader` +
``SelectSliced``). Problems (a slice without its mask, a patient folder without masks, two files with the same
slice number, image and mask volumes of different lengths) raise :class:`LGGDataError` naming the file.

2.5D input: with ``context=k`` every item also names its ``k`` neighbouring slices on either side,
``"image_neighbours": [[file, page], ...]`` ordered z-k .. z-1, z+1 .. z+k (slices beyond the first or last one
repeat the item's own slice), which :class:`medcnn.transforms.LoadNeighbourSlicesd` reads and appends as
channels. The neighbours of a slice file are the patient's adjacent slice files, those of a volume page the
adjacent pages, so both layouts give the same input.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Sequence
from pathlib import Path

from medcnn.data.datalist import DatalistError, load_datalist
from medcnn.data.tiff_pages import tiff_page_count

__all__ = [
    "LGGDataError",
    "LGG_KEYS",
    "lgg_patients",
    "lgg_patient_slices",
    "lgg_datalist",
    "lgg_volume_datalist",
    "add_slice_neighbours",
    "expand_volume_datalist",
    "load_lgg_datalist",
    "lgg_patient_split",
    "load_split",
]

LGG_KEYS = ("image", "mask")
_SLICE = re.compile(r"^(?P<stem>.+)_(?P<n>\d+)(?P<mask>_mask)?\.tiff?$", re.IGNORECASE)


class LGGDataError(DatalistError):
    """An LGG patient folder or datalist entry is unusable; the message names the file or folder."""


def lgg_patients(dataset_dir: str | os.PathLike) -> list[str]:
    """Sorted names of the patient folders of ``dataset_dir`` (every sub-folder holding ``.tif`` files)."""
    root = Path(dataset_dir).expanduser()
    if not root.is_dir():
        raise LGGDataError(f"{root}: LGG dataset folder not found (set dataset_dir or MEDCNN_DATA_DIR)")
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*.tif*")))
    if not names:
        raise LGGDataError(f"{root}: no patient folders with .tif slices")
    return names


def lgg_patient_slices(folder: str | os.PathLike, patient: str | None = None) -> list[dict]:
    """The slice items of one patient folder, ordered by slice number (see the module docstring).

    Raises :class:`LGGDataError` naming the file for a slice without a mask (or a mask without a slice), two
    files with one slice number, a folder with no masks, or a folder with no slices.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise LGGDataError(f"{folder}: patient folder not found")
    patient = patient or folder.name
    images: dict[int, Path] = {}
    masks: dict[int, Path] = {}
    for f in sorted(folder.iterdir()):
        m = _SLICE.match(f.name)
        if not f.is_file() or m is None:
            continue
        table = masks if m.group("mask") else images
        n = int(m.group("n"))
        if n in table:
            raise LGGDataError(f"{f}: duplicate slice number {n} (also {table[n]}); each slice number must be unique")
        table[n] = f
    if not images:
        raise LGGDataError(f"{folder}: no slice TIFFs named <patient>_<n>.tif")
    if not masks:
        raise LGGDataError(f"{folder}: patient folder has no masks (<patient>_<n>_mask.tif); "
                           "every slice needs a mask, empty ones included")
    for n, f in sorted(images.items()):
        if n not in masks:
            raise LGGDataError(f"{f}: slice {n} has no mask ({f.with_name(f.stem + '_mask' + f.suffix).name})")
    for n, f in sorted(masks.items()):
        if n not in images:
            raise LGGDataError(f"{f}: mask of slice {n} has no image")
    return [{"image": str(images[n]), "mask": str(masks[n]), "patient": patient, "slice": 0, "slice_index": i,
             "id": f"{patient}_{n}"} for i, n in enumerate(sorted(images))]


def add_slice_neighbours(items: Sequence[dict], context: int = 1, key: str = "image_neighbours") -> list[dict]:
    """Copies of slice ``items`` naming, under ``key``, the ``[file, page]`` of their ``context`` neighbouring
    slices on either side within the same patient (ordered by ``slice_index``; the ends repeat the item itself).

    ``context`` 0 returns the items unchanged.
    """
    if int(context) < 0:
        raise ValueError(f"context must be >= 0 neighbouring slices, got {context}")
    if not context:
        return [dict(i) for i in items]
    by_patient: dict[str, list[int]] = {}
    for n, item in enumerate(items):
        by_patient.setdefault(str(item["patient"]), []).append(n)
    out = [dict(i) for i in items]
    for members in by_patient.values():
        members = sorted(members, key=lambda n: int(items[n]["slice_index"]))
        for pos, n in enumerate(members):
            offsets = [*range(-context, 0), *range(1, context + 1)]
            picks = [items[members[min(max(pos + o, 0), len(members) - 1)]] for o in offsets]
            out[n][key] = [[str(p["image"]), int(p.get("slice", 0))] for p in picks]
    return out


def lgg_datalist(
    dataset_dir: str | os.PathLike, patients: Sequence[str] | None = None, keys: Sequence[str] = LGG_KEYS,
    context: int = 0,
) -> list[dict]:
    """Slice items of ``patients`` (default: all patient folders of ``dataset_dir``), patient by patient.

    ``keys`` are the file keys kept (``["image"]`` for inference without masks); ``context`` > 0 names each
    slice's neighbouring slices (:func:`add_slice_neighbours`) for 2.5D input.
    """
    root = Path(dataset_dir).expanduser()
    if not root.is_dir():
        raise LGGDataError(f"{root}: LGG dataset folder not found (set dataset_dir or MEDCNN_DATA_DIR)")
    names = list(patients) if patients is not None else lgg_patients(root)
    drop = [k for k in LGG_KEYS if k not in keys]
    items: list[dict] = []
    for name in names:
        items += [{k: v for k, v in i.items() if k not in drop} for i in lgg_patient_slices(root / name, name)]
    return add_slice_neighbours(items, context)


def lgg_volume_datalist(
    dataset_dir: str | os.PathLike, patients: Sequence[str] | None = None, mask_key: str = "mask"
) -> list[dict]:
    """One entry per patient whose slice files, in slice order, form one volume: ``{"image": [tif, ...],
    <mask_key>: [mask tif, ...], "patient": name, "id": name}``.

    ``LoadTiffPagesd`` reads such a list of one-page files as one stack (``(C, D, H, W)`` after
    ``EnsureChannelFirstd``), so a per-volume pipeline (e.g. the BraTS localiser's brain z-score over the whole
    case and its slice sampler) can run on LGG patients. The folder checks are those of :func:`lgg_datalist`.
    """
    by_patient: dict[str, list[dict]] = {}
    for item in lgg_datalist(dataset_dir, patients):
        by_patient.setdefault(item["patient"], []).append(item)
    return [{"image": [i["image"] for i in items], mask_key: [i["mask"] for i in items], "patient": name, "id": name}
            for name, items in by_patient.items()]


def expand_volume_datalist(entries: Sequence[dict]) -> list[dict]:
    """One item per slice from entries that are per-slice files or multi-page TIFF volumes (image + mask stack).

    An entry whose image has N > 1 pages becomes N items (``slice`` = ``slice_index`` = page); a one-page entry
    is one item (``slice`` 0, ``slice_index`` from the entry or its position among its patient's entries).
    ``patient`` defaults to the volume's file stem (volumes) or the slice's folder name (slice files). Entries
    without ``mask`` (unlabelled data) are expanded by their image alone.
    """
    out: list[dict] = []
    seen: dict[str, int] = {}
    for entry in entries:
        image = str(entry["image"])
        n_image = tiff_page_count(image)
        mask = str(entry["mask"]) if entry.get("mask") else None
        n_mask = n_image if mask is None else tiff_page_count(mask)
        if n_image != n_mask:
            raise LGGDataError(f"{image}: image volume has {n_image} slices but its mask {mask} has {n_mask}")
        if n_image > 1:
            patient = str(entry.get("patient") or Path(image).name.split(".")[0])
            out += [{**entry, "patient": patient, "slice": k, "slice_index": k, "id": f"{patient}_{k + 1}"}
                    for k in range(n_image)]
            continue
        patient = str(entry.get("patient") or Path(image).parent.name)
        index = int(entry["slice_index"]) if "slice_index" in entry else seen.get(patient, 0)
        seen[patient] = index + 1
        out.append({**entry, "patient": patient, "slice": 0, "slice_index": index,
                    "id": str(entry.get("id") or Path(image).name.split(".")[0])})
    keys = [(i["patient"], i["slice_index"]) for i in out]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        files = [i["image"] for i in out if (i["patient"], i["slice_index"]) == dup]
        raise LGGDataError(f"{files[-1]}: duplicate slice {dup[1]} of patient {dup[0]} (also {files[0]})")
    return out


def load_lgg_datalist(path: str | os.PathLike, keys: Sequence[str] = LGG_KEYS, context: int = 0) -> list[dict]:
    """Slice items of a user datalist JSON (``--eval_datalist``): entries ``{"image", "mask"[, "patient"]}`` that
    are slice TIFFs or multi-page volumes, paths relative to the JSON file (see :func:`expand_volume_datalist`);
    ``keys=["image"]`` for unlabelled data; ``context`` as in :func:`lgg_datalist`."""
    return add_slice_neighbours(expand_volume_datalist(load_datalist(path, keys=keys)), context)


def lgg_patient_split(
    patients: Sequence[str], n_validation: int, n_test: int, seed: int = 0
) -> dict[str, list[str]]:
    """A patient-level train / validation / test split, stratified by institution (``TCGA_<inst>_...``).

    Patients of each institution are shuffled with ``seed`` and dealt round-robin to test, validation and
    train until the test and validation sets are full, so each set covers the institutions (scanners).
    """
    by_site: dict[str, list[str]] = {}
    for p in sorted(patients):
        parts = p.split("_")
        by_site.setdefault(parts[1] if len(parts) > 2 else "", []).append(p)
    rng = random.Random(seed)
    for names in by_site.values():
        rng.shuffle(names)
    order = [names[i] for i in range(max(map(len, by_site.values()))) for names in by_site.values()
             if i < len(names)]
    if n_validation + n_test >= len(order):
        raise ValueError(f"{len(order)} patients cannot give {n_validation} validation and {n_test} test patients")
    test, validation = sorted(order[:n_test]), sorted(order[n_test:n_test + n_validation])
    return {"train": sorted(order[n_test + n_validation:]), "validation": validation, "test": test}


def load_split(path: str | os.PathLike) -> dict[str, list[str]]:
    """The recorded patient split ``{"train": [...], "validation": [...], "test": [...]}`` of a bundle."""
    path = Path(path).expanduser()
    try:
        split = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise LGGDataError(f"{path}: split file not readable ({exc})") from exc
    missing = [k for k in ("train", "validation", "test") if not isinstance(split.get(k), list)]
    if missing:
        raise LGGDataError(f"{path}: split needs patient lists {missing}")
    sets = [set(split[k]) for k in ("train", "validation", "test")]
    if sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2]:
        raise LGGDataError(f"{path}: a patient is in more than one of train / validation / test")
    return split
