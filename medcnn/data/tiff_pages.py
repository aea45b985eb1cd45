"""TIFF files of grey or colour 2D pages (one page = a slice, several pages = a volume), as a MONAI ``ImageReader``.

:class:`medcnn.data.TiffStackReader` reads single-channel stacks only. :class:`TiffPagesReader` also reads colour
pages, such as the 3-channel LGG slices (pre-contrast, FLAIR, post-contrast stored as the R, G, B samples)::

    LoadTiffPagesd(keys=["image", "mask"])                       # LoadImaged + TiffPagesReader: (N, H, W, 3), (N, H, W)
    EnsureChannelFirstd(keys=["image", "mask"])                  # (3, N, H, W) and (1, N, H, W)
    SelectSliced(keys=["image", "mask"], index_key="slice")      # (3, H, W) and (1, H, W)

A file is returned as ``(N, H, W)`` (grey pages, no channel axis) or ``(N, H, W, C)`` (colour pages, channel last,
``original_channel_dim = -1``) in its own dtype, with an identity affine. A single-page TIFF is a stack of one, so a
folder of slice files and one multi-page volume go through the same transforms. Pages of different sizes, sample
counts or dtypes and unreadable files raise :class:`medcnn.data.StackReadError` naming the file and the page.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader
from monai.transforms import LoadImaged
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

from medcnn.data.tiff import STACK_SUFFIXES, StackReadError

__all__ = ["TiffPagesReader", "LoadTiffPagesd", "read_tiff_pages", "tiff_page_count", "write_tiff_pages"]


def read_tiff_pages(path: str | os.PathLike) -> np.ndarray:
    """Every page of a TIFF file as ``(N, H, W)`` (grey) or ``(N, H, W, C)`` (colour), in the file's dtype.

    Raises :class:`StackReadError` naming the file when it is missing, unreadable or truncated, or when its
    pages differ in size, sample count or dtype.
    """
    import tifffile

    path = Path(path).expanduser()
    if not path.is_file():
        raise StackReadError(f"{path}: no such file")
    if path.suffix.lower() not in STACK_SUFFIXES:
        raise StackReadError(f"{path}: not a TIFF file (expected {', '.join(STACK_SUFFIXES)})")
    try:
        with tifffile.TiffFile(path) as tif:
            pages = [page.asarray() for page in tif.pages]
    except Exception as exc:  # tifffile raises many types for corrupt or truncated input
        raise StackReadError(f"{path}: not readable as a TIFF file ({type(exc).__name__}: {exc})") from exc
    if not pages:
        raise StackReadError(f"{path}: the file holds no image pages")
    first = pages[0]
    for i, page in enumerate(pages):
        if page.ndim not in (2, 3):
            raise StackReadError(f"{path} page {i}: expected a 2D grey or colour page, got shape {page.shape}")
        if page.shape != first.shape:
            raise StackReadError(
                f"{path} page {i}: shape {page.shape} differs from page 0 {first.shape}; all pages of a "
                "volume must have one size and one number of channels"
            )
        if page.dtype != first.dtype:
            raise StackReadError(f"{path} page {i}: dtype {page.dtype} differs from page 0 ({first.dtype})")
    return np.stack(pages)


def tiff_page_count(path: str | os.PathLike) -> int:
    """Number of pages of a TIFF file without decoding the pixels."""
    import tifffile

    path = Path(path).expanduser()
    if not path.is_file():
        raise StackReadError(f"{path}: no such file")
    try:
        with tifffile.TiffFile(path) as tif:
            return len(tif.pages)
    except Exception as exc:
        raise StackReadError(f"{path}: not readable as a TIFF file ({type(exc).__name__}: {exc})") from exc


def write_tiff_pages(array, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``(N, H, W)`` grey or ``(N, H, W, 3)`` RGB pages as one zlib-compressed multi-page TIFF (lossless).

    Written to a temporary name and renamed; an existing file is only replaced with ``overwrite=True``.
    """
    import tifffile

    path = Path(path).expanduser()
    arr = np.asarray(array)
    if arr.ndim not in (3, 4) or (arr.ndim == 4 and arr.shape[-1] != 3):
        raise ValueError(f"{path}: pages must be (N, H, W) or (N, H, W, 3), got shape {arr.shape}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        photometric = "rgb" if arr.ndim == 4 else "minisblack"
        with tifffile.TiffWriter(tmp) as tw:
            for page in arr:
                tw.write(np.ascontiguousarray(page), photometric=photometric, compression="zlib",
                         contiguous=False, metadata=None)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


class TiffPagesReader(ImageReader):
    """MONAI image reader for TIFF files of grey or colour 2D pages (see the module docstring).

    ``get_data`` returns ``(N, H, W)`` or ``(N, H, W, C)`` (several files: their pages in order, one volume);
    ``meta["n_slices"]`` records N and
    ``original_channel_dim`` is ``-1`` for colour pages (``nan`` for grey), so ``EnsureChannelFirst`` gives
    ``(C, N, H, W)`` either way.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.kwargs = kwargs

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        """True for ``.tif`` / ``.tiff`` files."""
        return all(Path(f).suffix.lower() in STACK_SUFFIXES for f in ensure_tuple(filename))

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any):
        """Read each TIFF of ``data`` as an ``(N, H, W[, C])`` array (a list of ``(file, array)`` when several are
        given)."""
        files = ensure_tuple(data)
        if len(files) == 1:
            return read_tiff_pages(files[0])
        return [(str(f), read_tiff_pages(f)) for f in files]

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        """``(array, meta)`` of one file; several files (e.g. a patient's slice files in slice order) are one
        volume: their pages concatenated in the given order, ``(sum N, H, W[, C])``.

        MONAI's default for a list of files, stacking them on a new channel axis, would mix the pages' colour
        channels with the files; a file whose pages differ in size, channels or dtype from the first file's raises
        :class:`StackReadError` naming both files.
        """
        if isinstance(img, list):
            first_file, first = img[0]
            for f, arr in img[1:]:
                if arr.shape[1:] != first.shape[1:] or arr.dtype != first.dtype:
                    raise StackReadError(
                        f"{f}: pages of shape {arr.shape[1:]} / {arr.dtype} do not match {first_file} "
                        f"({first.shape[1:]} / {first.dtype}); the files of one volume need one page size and type")
            arr = np.concatenate([a for _, a in img])
        else:
            arr = img
        colour = arr.ndim == 4
        header = {
            MetaKeys.SPATIAL_SHAPE: np.asarray(arr.shape[:3]),
            MetaKeys.ORIGINAL_CHANNEL_DIM: -1 if colour else float("nan"),
            MetaKeys.AFFINE: np.eye(4),
            MetaKeys.ORIGINAL_AFFINE: np.eye(4),
            MetaKeys.SPACE: SpaceKeys.RAS,
            "n_slices": int(arr.shape[0]),
        }
        return arr, header


class LoadTiffPagesd(LoadImaged):
    """``LoadImaged`` that reads every key with :class:`TiffPagesReader` only (``image_only=True`` by default).

    ``LoadImaged(reader=TiffPagesReader())`` falls back to MONAI's other readers when this reader refuses a file,
    and the error a user sees is then "cannot find a suitable reader"; this loader never falls back, so a truncated
    file or a ragged volume stops with the :class:`StackReadError` that names the file.
    """

    def __init__(self, keys, image_only: bool = True, **kwargs: Any) -> None:
        self.pages_reader = TiffPagesReader()
        super().__init__(keys, reader=self.pages_reader, image_only=image_only, **kwargs)

    def __call__(self, data, reader: ImageReader | None = None) -> dict:
        return super().__call__(data, reader or self.pages_reader)
