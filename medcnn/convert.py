"""Lossless stack conversion: multi-page TIFF -> folder of PNG slices, and folder of slices -> multi-page TIFF.

``medcnn convert volume.tif slices/`` writes ``slices/0.png, 1.png, ...``; ``medcnn convert slices/ volume.tif``
stacks the folder's slices in natural order (``2.png`` before ``10.png``). The written result is read back and
compared bit for bit before the command reports success. The input is never modified; existing outputs are
only replaced with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import numpy as np

from medcnn.data.tiff import STACK_SUFFIXES, png_slice_names, read_stack, write_png_folder, write_tiff_stack

__all__ = ["tiff_to_png_folder", "png_folder_to_tiff", "convert_stack", "add_parser"]

logger = logging.getLogger(__name__)


def _check_same(src: Path, dst: Path, a: np.ndarray, b: np.ndarray) -> None:
    if a.dtype != b.dtype or a.shape != b.shape or not np.array_equal(a, b):
        raise ValueError(
            f"{dst}: read-back differs from {src} (dtype {a.dtype}->{b.dtype}, shape {a.shape}->{b.shape})"
        )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _refuse_same_place(src: Path, dst: Path, outputs: list[Path] | None = None) -> None:
    """Refuse to write ``dst`` (or any of ``outputs``) onto the input ``src`` or into the input folder."""
    s = src.resolve()
    for out in [dst, *(outputs or [])]:
        if _same_file(src, out) or (s.is_dir() and out.resolve().is_relative_to(s)):
            raise ValueError(
                f"output {out} would be written onto the input {src}; the input is never modified, choose "
                "another output"
            )


def tiff_to_png_folder(
    tiff: str | os.PathLike, folder: str | os.PathLike, name_format: str = "{index}.png", overwrite: bool = False
) -> list[Path]:
    """Write every page of a multi-page TIFF ``(N, H, W)`` as ``folder/<name_format>`` PNGs; verified lossless."""
    src, dst = Path(tiff).expanduser(), Path(folder).expanduser()
    _refuse_same_place(src, dst)
    stack = read_stack(src)
    _refuse_same_place(src, dst, png_slice_names(dst, name_format, stack.shape[0]))
    names = write_png_folder(stack, dst, name_format=name_format, overwrite=overwrite)
    back = np.stack([read_stack(n)[0] for n in names])
    _check_same(src, dst, stack, back)
    logger.info("%s: %d slices %s %s -> %s", src, len(names), stack.shape[1:], stack.dtype, dst)
    return names


def png_folder_to_tiff(
    folder: str | os.PathLike,
    tiff: str | os.PathLike,
    indices: list[int] | None = None,
    overwrite: bool = False,
) -> Path:
    """Stack a folder's slices (natural order; ``indices`` picks a subset) into one multi-page TIFF; verified."""
    src, dst = Path(folder).expanduser(), Path(tiff).expanduser()
    _refuse_same_place(src, dst)
    stack = read_stack(src)
    if indices is not None:
        stack = stack[list(indices)]
    write_tiff_stack(stack, dst, overwrite=overwrite)
    _check_same(src, dst, stack, read_stack(dst))
    logger.info("%s: %d slices %s %s -> %s", src, stack.shape[0], stack.shape[1:], stack.dtype, dst)
    return dst


def build_stack(src: str | os.PathLike, dst: str | os.PathLike) -> str:
    """Make ``dst`` a multi-page TIFF holding the stack ``src`` (a PNG folder), rewriting it only if it differs.

    Bundles call this at run time to build their TIFF input from a PNG dataset into their output folder;
    returns ``dst`` as a string for use in datalists.
    """
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    stack = read_stack(src)
    if dst.exists():
        try:
            existing = read_stack(dst)
            if existing.dtype == stack.dtype and np.array_equal(existing, stack):
                return str(dst)
        except ValueError:
            pass  # unreadable or not a stack: rebuild it
    _refuse_same_place(src, dst)
    write_tiff_stack(stack, dst, overwrite=True)
    logger.info("built %s (%d slices) from %s", dst, stack.shape[0], src)
    return str(dst)


def convert_stack(
    src: str | os.PathLike, dst: str | os.PathLike, name_format: str = "{index}.png", overwrite: bool = False
) -> list[Path] | Path:
    """TIFF file -> PNG folder, or folder (or PNG) -> TIFF file, chosen from ``src`` and ``dst``."""
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or folder")
    dst_is_tiff = dst.suffix.lower() in STACK_SUFFIXES
    if src.is_file() and src.suffix.lower() in STACK_SUFFIXES and not dst_is_tiff:
        return tiff_to_png_folder(src, dst, name_format=name_format, overwrite=overwrite)
    if dst_is_tiff:
        return png_folder_to_tiff(src, dst, overwrite=overwrite)
    raise ValueError(
        f"cannot tell the direction from {src} -> {dst}: convert a .tif/.tiff stack to a folder, "
        "or a folder of slices to a .tif/.tiff file"
    )


def _run(args: argparse.Namespace) -> int:
    try:
        out = convert_stack(args.input, args.output, name_format=args.name_format, overwrite=args.overwrite)
    except FileExistsError as exc:  # the CLI reports ValueErrors as one clean line
        raise ValueError(str(exc)) from exc
    n = len(out) if isinstance(out, list) else read_stack(out).shape[0]
    print(f"{args.input} -> {args.output}: {n} slices, verified bit-exact")
    return 0


def add_parser(parser: argparse.ArgumentParser) -> None:
    """``medcnn convert INPUT OUTPUT``: TIFF stack <-> folder of PNG slices, lossless and verified."""
    parser.description = __doc__.splitlines()[0]
    parser.add_argument("input", help="multi-page .tif/.tiff stack, or a folder of .png/.tif slices")
    parser.add_argument("output", help="folder for the PNG slices, or the .tif/.tiff file to write")
    parser.add_argument(
        "--name-format", default="{index}.png", help="PNG file names, formatted with index=N (default: %(default)s)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.set_defaults(run=_run)
