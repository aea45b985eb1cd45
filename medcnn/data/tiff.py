"""Stacks of 2D slices: multi-page TIFF files and folders of PNG/TIFF slices, as a MONAI ``ImageReader``.

``TiffStackReader`` plugs into MONAI's loaders the usual way::

    LoadImage(reader="medcnn.data.TiffStackReader")            # located by name, like a built-in reader
    LoadImaged(keys=["image", "label"], reader=TiffStackReader())

A stack is returned as one ``(N, H, W)`` array (N pages/slices, rows, columns - the order of ``tifffile`` and
PIL, not MONAI's reversed PIL order), in the file's own dtype, with an identity affine; a single PNG or a
single-page TIFF is a stack of one. ``EnsureChannelFirst`` then gives ``(1, N, H, W)``, and
:class:`medcnn.transforms.stack.SelectSliced` picks one ``(1, H, W)`` slice per datalist item
(see :func:`expand_stack_datalist`). Bad stacks (pages of different sizes or dtypes, colour pages,
unreadable files, empty folders) raise :class:`StackReadError` naming the file.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader
from monai.transforms import LoadImaged
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

__all__ = [
    "StackReadError",
    "TiffStackReader",
    "LoadStackd",
    "read_stack",
    "stack_page_count",
    "write_tiff_stack",
    "write_png_folder",
    "png_slice_names",
    "expand_stack_datalist",
    "SLICE_SUFFIXES",
    "STACK_SUFFIXES",
]

logger = logging.getLogger(__name__)

STACK_SUFFIXES = (".tif", ".tiff")
SLICE_SUFFIXES = (".png", ".tif", ".tiff")
PNG_DTYPES = (np.uint8, np.uint16)


class StackReadError(ValueError):
    """A stack file or folder cannot be read as a stack of equally sized single-channel 2D slices."""


def _natural_key(path: Path) -> list:
    """Sort ``2.png`` before ``10.png``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def slice_files(folder: str | os.PathLike) -> list[Path]:
    """The slice files (``.png``, ``.tif``, ``.tiff``) of ``folder`` in natural order (``2.png`` < ``10.png``)."""
    folder = Path(folder)
    files = sorted(
        (f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in SLICE_SUFFIXES), key=_natural_key
    )
    if not files:
        raise StackReadError(f"{folder}: folder holds no slice files ({', '.join(SLICE_SUFFIXES)})")
    return files


class _TifffileProblems(logging.Handler):
    """Collects what ``tifffile`` logs at ERROR level while a file is read (it skips broken pages with a log line)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _tifffile_problems():
    log = logging.getLogger("tifffile")
    handler = _TifffileProblems()
    log.addHandler(handler)
    try:
        yield handler.messages
    finally:
        log.removeHandler(handler)


def _read_tiff_pages(path: Path, decode: bool = True) -> list[np.ndarray] | int:
    """The pages of a TIFF file (or only their number with ``decode=False``); a broken page chain is an error.

    ``tifffile`` stops at a page offset beyond the end of a truncated file and only logs it, which would make a
    truncated stack a shorter one; here anything it logs as an error, and an ImageJ page count that differs from the
    pages found, raise :class:`StackReadError`.
    """
    import tifffile

    try:
        with _tifffile_problems() as problems, tifffile.TiffFile(path) as tif:
            pages = [page.asarray() for page in tif.pages] if decode else list(tif.pages)
            expected = (tif.imagej_metadata or {}).get("images") if tif.is_imagej else None
    except Exception as exc:  # tifffile raises many types for corrupt input
        raise StackReadError(f"{path}: not readable as a TIFF file ({type(exc).__name__}: {exc})") from exc
    if problems:
        raise StackReadError(
            f"{path}: truncated or corrupt TIFF, only {len(pages)} page(s) readable ({problems[0]}); "
            "refusing to read it as a shorter stack"
        )
    if expected is not None and int(expected) != len(pages):
        raise StackReadError(f"{path}: the file declares {expected} images (ImageJ) but holds {len(pages)} pages")
    return pages if decode else len(pages)


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.array(im)
    except Exception as exc:
        raise StackReadError(f"{path}: not readable as an image ({type(exc).__name__}: {exc})") from exc


def read_stack(path: str | os.PathLike) -> np.ndarray:
    """Read a multi-page TIFF, a single PNG/TIFF, or a folder of PNG/TIFF slices as one ``(N, H, W)`` array.

    The dtype of the file is kept. Raises :class:`StackReadError` naming the file when it is missing or
    unreadable, when pages are not single-channel 2D, or when pages differ in size or dtype.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise StackReadError(f"{path}: no such file or folder")
    if path.is_dir():
        pages, sources = [], []
        for f in slice_files(path):
            sub = _read_tiff_pages(f) if f.suffix.lower() in STACK_SUFFIXES else [_read_png(f)]
            pages += sub
            sources += [f] * len(sub)
    elif path.suffix.lower() in STACK_SUFFIXES:
        pages = _read_tiff_pages(path)
        sources = [path] * len(pages)
    elif path.suffix.lower() == ".png":
        pages, sources = [_read_png(path)], [path]
    else:
        raise StackReadError(f"{path}: not a stack (expected {', '.join(SLICE_SUFFIXES)} or a folder of them)")
    if not pages:
        raise StackReadError(f"{path}: the file holds no image pages")
    first = pages[0]
    for i, (page, src) in enumerate(zip(pages, sources, strict=True)):
        where = f"{path} page {i}" if src == path else f"{src} (slice {i} of {path})"
        if page.ndim != 2:
            raise StackReadError(f"{where}: expected a single-channel 2D page, got shape {page.shape}")
        if page.shape != first.shape:
            raise StackReadError(
                f"{where}: page size {page.shape[0]}x{page.shape[1]} differs from page 0 "
                f"({first.shape[0]}x{first.shape[1]}); all pages of a stack must have one size"
            )
        if page.dtype != first.dtype:
            raise StackReadError(f"{where}: dtype {page.dtype} differs from page 0 ({first.dtype})")
    return np.stack(pages)


def stack_page_count(path: str | os.PathLike) -> int:
    """Number of slices in a stack without decoding the pixels (TIFF pages, or slice files of a folder)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise StackReadError(f"{path}: no such file or folder")
    if path.is_dir():
        return sum(stack_page_count(f) if f.suffix.lower() in STACK_SUFFIXES else 1 for f in slice_files(path))
    if path.suffix.lower() in STACK_SUFFIXES:
        return _read_tiff_pages(path, decode=False)
    if path.suffix.lower() == ".png":
        return 1
    raise StackReadError(f"{path}: not a stack (expected {', '.join(SLICE_SUFFIXES)} or a folder of them)")


def _atomic_target(path: Path, overwrite: bool) -> Path:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def write_tiff_stack(array, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``(N, H, W)`` (or one ``(H, W)`` slice) as an uncompressed multi-page TIFF, one page per slice.

    Lossless for every integer and float dtype; written to a temporary name and renamed, so a failed write
    never leaves a half file.
    """
    import tifffile

    path = Path(path).expanduser()
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"{path}: a stack must be (N, H, W), got shape {arr.shape}")
    tmp = _atomic_target(path, overwrite)
    try:
        with tifffile.TiffWriter(tmp) as tw:
            for page in arr:
                tw.write(np.ascontiguousarray(page), photometric="minisblack", contiguous=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def png_slice_names(folder: str | os.PathLike, name_format: str, n: int) -> list[Path]:
    """``folder / name_format.format(index=i)`` for ``i < n``: distinct plain ``.png`` file names inside ``folder``.

    Raises ``ValueError`` for a format that does not format with ``index`` alone, that gives a path (``/``,
    ``..``) rather than a file name - it would write outside ``folder`` - that does not end in ``.png``, or that
    gives the same name to several slices.
    """
    folder = Path(folder).expanduser()
    names = []
    for i in range(n):
        try:
            name = name_format.format(index=i)
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            raise ValueError(
                f"name_format {name_format!r} cannot be formatted with index={i} ({type(exc).__name__}: {exc}); "
                "use e.g. 'slice_{index:03d}.png'"
            ) from exc
        if not name or name in (".", "..") or Path(name).name != name or "/" in name or "\\" in name:
            raise ValueError(
                f"name_format {name_format!r} gives {name!r}, not a plain file name: slices are only written "
                f"inside {folder}"
            )
        if not name.lower().endswith(".png"):
            raise ValueError(f"name_format {name_format!r} gives {name!r}; slice files must end in .png")
        names.append(folder / name)
    if len(set(names)) != len(names):
        raise ValueError(f"name_format {name_format!r} gives the same file name to several slices")
    return names


def write_png_folder(
    array, folder: str | os.PathLike, name_format: str = "{index}.png", overwrite: bool = False
) -> list[Path]:
    """Write ``(N, H, W)`` as one PNG per slice into ``folder`` (created); names from ``name_format.format(index=i)``.

    PNG is lossless for ``uint8`` and ``uint16`` (and ``bool``, written as 0/255 ``uint8`` is *not* done:
    bool is refused); other dtypes raise ``ValueError`` instead of silently changing the values.
    """
    from PIL import Image

    folder = Path(folder).expanduser()
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"{folder}: a stack must be (N, H, W), got shape {arr.shape}")
    if arr.dtype not in PNG_DTYPES:
        raise ValueError(
            f"{folder}: PNG holds uint8 or uint16 slices losslessly, the stack is {arr.dtype}; keep it as TIFF"
        )
    names = png_slice_names(folder, name_format, arr.shape[0])
    clash = [n for n in names if n.exists()]
    if clash and not overwrite:
        raise FileExistsError(f"{clash[0]} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    folder.mkdir(parents=True, exist_ok=True)
    for name, page in zip(names, arr, strict=True):
        tmp = name.with_name(f".{name.name}.tmp{os.getpid()}")
        try:
            Image.fromarray(np.ascontiguousarray(page)).save(tmp, format="PNG")
            os.replace(tmp, name)
        finally:
            tmp.unlink(missing_ok=True)
    return names


def expand_stack_datalist(
    items: Sequence[dict],
    slices: Sequence[int] | None = None,
    keys: Sequence[str] = ("image", "label"),
    slice_key: str = "slice",
) -> list[dict]:
    """One datalist entry per slice: ``{"image": stack, "label": stack}`` -> ``[{..., "slice": i}, ...]``.

    ``slices`` selects slice indices (default: all). Every key of an entry must be a stack with the same
    number of slices; a mismatch or an index beyond the stack raises :class:`StackReadError` naming the files.
    Entries that already have ``slice_key`` are kept as they are.
    """
    out: list[dict] = []
    for item in items:
        if slice_key in item:
            out.append(dict(item))
            continue
        present = [k for k in keys if k in item]
        if not present:
            raise StackReadError(f"datalist entry {item} has none of the keys {list(keys)}")
        counts = {k: stack_page_count(item[k]) for k in present}
        if len(set(counts.values())) > 1:
            detail = ", ".join(f"{k} {item[k]}: {n} slices" for k, n in counts.items())
            raise StackReadError(f"image and label stacks differ in slice count ({detail})")
        n = next(iter(counts.values()))
        wanted = range(n) if slices is None else list(slices)
        bad = [i for i in wanted if not -n <= i < n]
        if bad:
            raise StackReadError(f"{item[present[0]]}: slice indices {bad} outside a stack of {n} slices")
        out += [{**item, slice_key: int(i) % n} for i in wanted]
    return out


class _FailedRead:
    """What :meth:`TiffStackReader.read` returns for a bad stack: the error, raised later by ``get_data``."""

    def __init__(self, error: StackReadError) -> None:
        self.error = error


class TiffStackReader(ImageReader):
    """MONAI image reader for multi-page TIFF stacks, single PNG/TIFF slices and folders of slices.

    ``get_data`` returns ``(N, H, W)`` in the file's dtype (several files are stacked along a new first
    dimension, as MONAI's readers do), with ``original_channel_dim`` = ``nan`` (no channel) and an identity
    affine; ``n_slices`` records N. Use ``LoadImage(..., dtype=None)`` to keep the dtype through loading.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.kwargs = kwargs

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        """True for ``.tif``, ``.tiff``, ``.png`` files and folders."""
        return all(Path(f).is_dir() or Path(f).suffix.lower() in SLICE_SUFFIXES for f in ensure_tuple(filename))

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any):
        """Read each file or folder of ``data`` as an ``(N, H, W)`` array (a list when several are given).

        A bad stack does not raise here: the :class:`StackReadError` is returned and raised by :meth:`get_data`.
        MONAI's ``LoadImage(reader=TiffStackReader())`` tries its other readers when ``read`` raises, and one of
        them reads a colour TIFF as ``(H, W, 3)`` or a truncated stack as its first page; raised from ``get_data``,
        the error reaches the user instead.
        """
        files = ensure_tuple(data)
        try:
            arrays = [read_stack(f) for f in files]
        except StackReadError as exc:
            return _FailedRead(exc)
        if len({a.shape for a in arrays}) > 1:
            detail = ", ".join(f"{f}: {a.shape}" for f, a in zip(files, arrays, strict=True))
            return _FailedRead(StackReadError(f"stacks of different shapes cannot be channels of one image ({detail})"))
        return arrays if len(arrays) > 1 else arrays[0]

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        """``(array, meta)`` for one ``(N, H, W)`` stack, or ``(K, N, H, W)`` for K stacks of one shape."""
        if isinstance(img, _FailedRead):
            raise img.error
        arrays = img if isinstance(img, list) else [img]
        first = arrays[0]
        meta = {
            MetaKeys.SPATIAL_SHAPE: np.asarray(first.shape),
            MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
            MetaKeys.AFFINE: np.eye(first.ndim + 1),
            MetaKeys.ORIGINAL_AFFINE: np.eye(first.ndim + 1),
            MetaKeys.SPACE: SpaceKeys.RAS,
            "n_slices": int(first.shape[0]),
        }
        if len(arrays) == 1:
            return first, meta
        meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0  # several stacks: channels along a new first dimension, as MONAI
        return np.stack(arrays, axis=0), meta


class LoadStackd(LoadImaged):
    """``LoadImaged`` that reads every key with :class:`TiffStackReader` only, keeping the dtype by default.

    Plain ``LoadImaged(reader=TiffStackReader())`` falls back to MONAI's other readers when the stack reader
    refuses a file, and one of them may read just the first page of a bad stack; this loader never falls back,
    so a ragged or unreadable stack stops with the :class:`StackReadError` that names the file.
    """

    def __init__(self, keys, dtype=None, **kwargs: Any) -> None:
        self.stack_reader = TiffStackReader()
        super().__init__(keys, reader=self.stack_reader, dtype=dtype, **kwargs)

    def __call__(self, data, reader: ImageReader | None = None) -> dict:
        return super().__call__(data, reader or self.stack_reader)
