"""Datalists for bundles: the bundle's own split, or any user-supplied labelled list (``--eval_datalist``)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["load_datalist", "read_datalist_json", "resolve_data_dir", "DatalistError", "common_parent"]


class DatalistError(ValueError):
    """A datalist file is missing, unreadable, or its entries lack required keys or files."""


def resolve_data_dir(subdir: str, bundle_root: str | os.PathLike) -> str:
    """Folder of one dataset: ``$MEDCNN_DATA_DIR/<subdir>`` when that exists, else ``<bundle_root>/data``.

    Bundles use this for their ``dataset_dir`` default, so the same config runs on a user's machine (put the data
    in the bundle's ``data/`` folder, set ``MEDCNN_DATA_DIR`` to the folder holding one sub-folder per dataset, or
    override ``dataset_dir`` on the command line), in this repository's tests and in CI. When neither folder
    exists a warning names both places and the override, and the bundle's ``data/`` folder is returned: MONAI
    resolves every ``@dataset_dir`` of a config expression eagerly, also where only ``--eval_datalist`` is read,
    so raising here would stop users who evaluate their own cases without the bundle's dataset.
    """
    candidates = []
    env = os.environ.get("MEDCNN_DATA_DIR")
    if env:
        candidates.append(Path(env).expanduser().resolve() / subdir)
    bundle_data = Path(bundle_root).expanduser().resolve() / "data"
    candidates.append(bundle_data)
    for folder in candidates:
        if folder.is_dir():
            return str(folder)
    looked = " nor ".join(str(c) for c in candidates)
    hint = "" if env else " (MEDCNN_DATA_DIR is not set)"
    logging.getLogger(__name__).warning(
        "dataset %r: neither %s exists%s; set MEDCNN_DATA_DIR to the folder holding %s/, put the dataset in the "
        "bundle's data/ folder, or pass --dataset_dir /path/to/%s", subdir, looked, hint, subdir, subdir)
    return str(bundle_data)


def _resolve(value, base: Path):
    if isinstance(value, str) and value and not os.path.isabs(value) and not value.startswith(("http:", "https:")):
        return str((base / value).resolve())
    if isinstance(value, list):
        return [_resolve(v, base) for v in value]
    return value


def read_datalist_json(path: str | os.PathLike):
    """The parsed content of a datalist JSON file; :class:`DatalistError` naming the file if absent or invalid."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatalistError(f"datalist {path}: file not found")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatalistError(f"datalist {path}: not readable as JSON ({exc})") from exc


def load_datalist(
    path: str | os.PathLike,
    keys: Sequence[str] = ("image", "label"),
    path_keys: Sequence[str] | None = None,
    data_list_key: str = "training",
    check_files: bool = True,
    optional_keys: Sequence[str] = (),
) -> list[dict]:
    """Load a labelled datalist for evaluation or training.

    ``path`` is either an MSD-style ``dataset.json`` (every entry of its ``data_list_key`` list is used) or a
    plain JSON list of dicts. Every entry must have all ``keys``; the values of ``path_keys`` (default: all
    string-valued ``keys``) are file paths resolved against the JSON file's folder when relative. ``optional_keys``
    (e.g. BraTS's ``brainmask``) are file paths too, resolved and checked the same way when an entry has them.
    Raises :class:`DatalistError` naming the file and the entry on any problem.
    """
    path = Path(path).expanduser()
    content = read_datalist_json(path)
    if isinstance(content, dict):
        if data_list_key not in content:
            raise DatalistError(f"datalist {path}: an MSD-style dataset.json needs a '{data_list_key}' list")
        entries = content[data_list_key]
    else:
        entries = content
    if not isinstance(entries, list) or not entries:
        raise DatalistError(f"datalist {path}: expected a non-empty list of entries")
    base = path.parent.resolve()
    out = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DatalistError(f"datalist {path}: entry {i} is not a JSON object")
        missing = [k for k in keys if k not in entry]
        if missing:
            raise DatalistError(f"datalist {path}: entry {i} lacks key(s) {missing}")
        item = dict(entry)
        pkeys = path_keys if path_keys is not None else [k for k in keys if isinstance(entry[k], (str, list))]
        pkeys = [*pkeys, *(k for k in optional_keys if entry.get(k) and k not in pkeys)]
        for k in pkeys:
            item[k] = _resolve(entry[k], base)
            if check_files:
                for f in item[k] if isinstance(item[k], list) else [item[k]]:
                    if not os.path.exists(f):
                        raise DatalistError(f"datalist {path}: entry {i} key '{k}': file {f} does not exist")
        out.append(item)
    return out


def common_parent(items: Sequence, key: str = "image") -> str:
    """The deepest folder holding every input file (``items``: paths, or datalist dicts read at ``key``).

    Given to ``SaveImaged(data_root_dir=...)``, outputs keep the inputs' sub-folders below it: inputs from one folder
    are written side by side as before, while ``a/case.nii.gz`` and ``b/case.nii.gz`` become ``a/case_seg.nii.gz``
    and ``b/case_seg.nii.gz`` instead of one file overwriting the other. ``""`` for no items.
    """
    paths = []
    for item in items:
        value = item.get(key) if isinstance(item, dict) else item
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        if isinstance(value, (str, os.PathLike)):
            paths.append(os.path.dirname(os.path.abspath(os.path.expanduser(str(value)))))
    return os.path.commonpath(paths) if paths else ""
