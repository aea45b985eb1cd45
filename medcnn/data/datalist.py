"""Datalists for bundles: the bundle's own split, or any user-supplied labelled list (``--eval_datalist``)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["load_datalist", "read_datalist_json", "resolve_data_dir", "DatalistError"]


class DatalistError(ValueError):
    """A datalist file is missing, unreadable, or its entries lack required keys or files."""


def resolve_data_dir(subdir: str, default_root: str | os.PathLike) -> str:
    """Folder of one dataset: ``$MEDCNN_DATA_DIR/<subdir>`` when the variable is set, else ``<default_root>/<subdir>``.

    Bundles use this for their ``dataset_dir`` default, so the same config runs on a user's machine (override
    ``dataset_dir`` on the command line, or set ``MEDCNN_DATA_DIR``), in this repository's tests and in CI.
    """
    root = os.environ.get("MEDCNN_DATA_DIR") or default_root
    return str(Path(root).expanduser().resolve() / subdir)


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
