"""DICOM series: load a folder of slices as one 3D MetaTensor with its patient geometry, validated.

MONAI 1.6's :class:`monai.data.PydicomReader` already decodes pixels, applies RescaleSlope/Intercept, builds the
affine from ImageOrientationPatient / PixelSpacing / first and last ImagePositionPatient, converts LPS to RAS and
plugs into ``LoadImage``. What it does not do for a series folder, and what :class:`DicomSeriesReader` replaces:

- it sorts slices by ``InstanceNumber``; slice order must come from the geometry (ImagePositionPatient projected
  on the slice normal), as InstanceNumber is only a counter and is often not anatomical;
- it only *warns* on slices of different sizes or spacings (then fails deep in ``np.stack``), silently skips
  unreadable files, and does not notice missing slices, mixed orientations or two series in one folder: a gap in
  the position sequence gives a volume whose slice spacing is wrong everywhere, with no error.

:class:`DicomSeriesReader` subclasses ``PydicomReader`` and keeps everything else (pixel decoding, rescale,
affine, ``swap_ij``, metadata). ``ITKReader`` (GDCM) sorts by position correctly but reports bad series poorly
and cannot be told to fail on gaps, so it is not used here.

Use :func:`load_dicom_series` for one folder, :class:`LoadDicomSeriesd` in a dictionary pipeline (errors reach the
caller unwrapped; ``LoadImaged(reader=DicomSeriesReader())`` also works but wraps errors into a RuntimeError), and
:func:`save_like` (NIfTI), :func:`write_dicom_series_like` (a derived image series) or :func:`write_dicom_seg`
(a binary DICOM SEG object, written by highdicom with coded segment descriptions) to write a prediction back with the
input geometry; :func:`read_dicom_seg` reads a SEG back onto its source series' grid. Folders holding non-image
objects (SEG, SR, RTSTRUCT, ...) are refused by name.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import torch
from monai.data import MetaTensor, PydicomReader
from monai.transforms import LoadImage, LoadImaged, SaveImage
from pydicom.uid import generate_uid

from medcnn.transforms.validation import InvalidInputError

__all__ = [
    "DicomSeriesError",
    "DicomSeries",
    "DicomSeriesReader",
    "LoadDicomSeries",
    "LoadDicomSeriesd",
    "read_dicom_series",
    "load_dicom_series",
    "save_like",
    "write_dicom_series_like",
    "write_dicom_seg",
    "segment_descriptions",
    "read_dicom_seg",
    "DEFAULT_SEGMENT_CODE",
    "NON_IMAGE_MODALITIES",
]

logger = logging.getLogger(__name__)


# Modalities of DICOM objects that are not image slices (segmentations, reports, structure sets, states, ...)
NON_IMAGE_MODALITIES = frozenset({"SEG", "SR", "RTSTRUCT", "RTPLAN", "RTRECORD", "PR", "KO", "DOC", "REG", "FID",
                                  "PLAN", "AU", "ECG"})


class DicomSeriesError(InvalidInputError):
    """A DICOM folder is not one complete, consistent series; the message names the folder or file."""


@dataclass
class DicomSeries:
    """One validated series: datasets and files sorted along the slice normal, with the geometry checks' results."""

    folder: Path
    datasets: list = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    normal: np.ndarray | None = None
    positions: np.ndarray | None = None  # projected on the normal (mm), ascending
    slice_spacing: float | None = None


def _floats(ds, tag: str, n: int, path: str) -> np.ndarray:
    value = getattr(ds, tag, None)
    if value is None:
        raise DicomSeriesError(f"{path}: DICOM tag {tag} is missing; the slice geometry cannot be derived")
    try:
        arr = np.asarray([float(v) for v in value], dtype=float)
    except (TypeError, ValueError) as exc:
        raise DicomSeriesError(f"{path}: DICOM tag {tag} is not numeric ({value!r})") from exc
    if arr.size != n or not np.isfinite(arr).all():
        raise DicomSeriesError(f"{path}: DICOM tag {tag} must hold {n} finite numbers, got {list(value)}")
    return arr


def read_dicom_series(
    folder: str | os.PathLike,
    series_uid: str | None = None,
    ignore_non_dicom: bool = False,
    spacing_tolerance: float = 0.25,
    orientation_tolerance: float = 1e-4,
    **dcmread_kwargs,
) -> DicomSeries:
    """Read every file of ``folder`` and return the series sorted by ImagePositionPatient along the slice normal.

    Raises :class:`DicomSeriesError` naming the folder or file when the folder is missing or empty, a file is
    not DICOM or is corrupt (unless ``ignore_non_dicom``, which skips non-DICOM files), the folder holds several
    series (pass ``series_uid`` to pick one), slices differ in orientation (direction cosines differ by more than
    ``orientation_tolerance``), size (Rows/Columns) or PixelSpacing, two slices share a position, or the
    spacing between neighbouring slices departs from the median spacing by more than ``spacing_tolerance``
    (a relative fraction: a missing slice doubles one step).
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DicomSeriesError(f"DICOM series folder {folder}: not found or not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise DicomSeriesError(f"DICOM series folder {folder}: empty (no files)")
    items = []
    for f in files:
        try:
            ds = pydicom.dcmread(f, **dcmread_kwargs)
        except pydicom.errors.InvalidDicomError as exc:
            if ignore_non_dicom:
                logger.warning("%s: not a DICOM file, skipped", f)
                continue
            raise DicomSeriesError(f"{f}: not a DICOM file ({exc}); remove it from the series folder") from exc
        except Exception as exc:  # truncated / corrupt files surface as many different pydicom errors
            raise DicomSeriesError(f"{f}: corrupt DICOM file ({type(exc).__name__}: {exc})") from exc
        modality = str(getattr(ds, "Modality", "")).upper()
        if modality in NON_IMAGE_MODALITIES:
            kind = getattr(getattr(ds, "SOPClassUID", None), "name", "") or modality
            if ignore_non_dicom:
                logger.warning("%s: %s object (%s), not an image slice, skipped", f, modality, kind)
                continue
            raise DicomSeriesError(
                f"{f}: a {modality} object ({kind}), not an image slice; a series folder must hold the image "
                "slices of one series (move derived objects such as SEG, SR or RTSTRUCT elsewhere)"
            )
        if "PixelData" not in ds:
            if ignore_non_dicom:
                logger.warning("%s: DICOM object without pixel data (e.g. DICOMDIR), skipped", f)
                continue
            raise DicomSeriesError(f"{f}: DICOM file without pixel data; a series folder must hold image slices only")
        items.append((ds, str(f)))
    if not items:
        raise DicomSeriesError(f"DICOM series folder {folder}: no DICOM image files")

    uids = sorted({str(getattr(ds, "SeriesInstanceUID", "")) for ds, _ in items})
    if series_uid is not None:
        items = [(ds, f) for ds, f in items if str(getattr(ds, "SeriesInstanceUID", "")) == series_uid]
        if not items:
            raise DicomSeriesError(f"DICOM series folder {folder}: no slice of series {series_uid} (found {uids})")
    elif len(uids) > 1:
        raise DicomSeriesError(
            f"DICOM series folder {folder}: holds {len(uids)} series {uids}; move each series to a folder of its own "
            "(or pass series_uid to read one)"
        )

    ds0, f0 = items[0]
    iop0 = _floats(ds0, "ImageOrientationPatient", 6, f0)
    ps0 = _floats(ds0, "PixelSpacing", 2, f0)
    size0 = (int(getattr(ds0, "Rows", 0)), int(getattr(ds0, "Columns", 0)))
    normal = np.cross(iop0[:3], iop0[3:])
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        raise DicomSeriesError(f"{f0}: ImageOrientationPatient {list(iop0)} is not two orthonormal directions")
    positions = []
    for ds, f in items:
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1 and len(items) > 1:
            raise DicomSeriesError(f"{f}: multi-frame file inside a slice-per-file series folder {folder}")
        iop = _floats(ds, "ImageOrientationPatient", 6, f)
        if np.abs(iop - iop0).max() > orientation_tolerance:
            raise DicomSeriesError(
                f"{f}: mixed orientations in series {folder}: ImageOrientationPatient {list(iop)} differs from "
                f"{list(iop0)} of {Path(f0).name}"
            )
        size = (int(getattr(ds, "Rows", 0)), int(getattr(ds, "Columns", 0)))
        if size != size0:
            raise DicomSeriesError(
                f"{f}: mixed sizes in series {folder}: Rows x Columns {size[0]}x{size[1]} differs from "
                f"{size0[0]}x{size0[1]} of {Path(f0).name}"
            )
        ps = _floats(ds, "PixelSpacing", 2, f)
        if np.abs(ps - ps0).max() > 1e-3 * max(ps0.max(), 1e-6):
            raise DicomSeriesError(f"{f}: PixelSpacing {list(ps)} differs from {list(ps0)} of {Path(f0).name}")
        positions.append(float(np.dot(normal, _floats(ds, "ImagePositionPatient", 3, f))))

    order = np.argsort(positions, kind="stable")
    items = [items[i] for i in order]
    pos = np.asarray(positions)[order]
    spacing = None
    if len(items) > 1:
        steps = np.diff(pos)
        for i, step in enumerate(steps):
            if step < 1e-4:
                raise DicomSeriesError(
                    f"DICOM series folder {folder}: {Path(items[i][1]).name} and {Path(items[i + 1][1]).name} "
                    f"lie at the same position {pos[i]:.4f} mm along the slice normal (duplicate slice or two series)"
                )
        spacing = float(np.median(steps))
        for i, step in enumerate(steps):
            if abs(step - spacing) > spacing_tolerance * spacing:
                kind = "missing slice(s)" if step > spacing else "irregular slice spacing"
                missing = f", about {round(step / spacing) - 1} slice(s) missing" if step > spacing else ""
                raise DicomSeriesError(
                    f"DICOM series folder {folder}: {kind} between {Path(items[i][1]).name} ({pos[i]:.3f} mm) and "
                    f"{Path(items[i + 1][1]).name} ({pos[i + 1]:.3f} mm): step {step:.3f} mm vs median spacing "
                    f"{spacing:.3f} mm{missing}"
                )
    return DicomSeries(
        folder=folder,
        datasets=[ds for ds, _ in items],
        files=[f for _, f in items],
        normal=normal,
        positions=pos,
        slice_spacing=spacing,
    )


class DicomSeriesReader(PydicomReader):
    """``PydicomReader`` whose series folders are validated and sorted along the slice normal.

    A folder gives a ``(W, H, N)`` array (``swap_ij`` as MONAI readers do) with the RAS affine, slices ordered by
    ImagePositionPatient projected on the normal. A list of folders gives one channel per series; they must have
    the same shape. Single files behave as in ``PydicomReader``. Extra arguments are those of
    :func:`read_dicom_series` (``series_uid``, ``ignore_non_dicom``, ``spacing_tolerance``,
    ``orientation_tolerance``) and of ``PydicomReader``.
    """

    def __init__(
        self,
        series_uid: str | None = None,
        ignore_non_dicom: bool = False,
        spacing_tolerance: float = 0.25,
        orientation_tolerance: float = 1e-4,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.series_kwargs = {
            "series_uid": series_uid,
            "ignore_non_dicom": ignore_non_dicom,
            "spacing_tolerance": spacing_tolerance,
            "orientation_tolerance": orientation_tolerance,
        }

    def verify_suffix(self, filename: Sequence[os.PathLike] | os.PathLike) -> bool:
        """Folders and ``.dcm`` files."""
        names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
        return all(Path(n).is_dir() or str(n).lower().endswith((".dcm", ".dicom")) for n in names)

    def read(self, data: Sequence[os.PathLike] | os.PathLike, **kwargs):
        """Read folders as validated series (sorted datasets) and files as single datasets."""
        names = [data] if isinstance(data, (str, os.PathLike)) else list(data)
        for n in names:
            if not Path(n).exists():
                raise DicomSeriesError(f"DICOM input {n}: not found")
        if not any(Path(n).is_dir() for n in names):
            return super().read(data, **kwargs)
        kwargs_ = {**self.kwargs, **kwargs}
        self.filenames = []
        self._series_names = []
        self.has_series = False
        out = []
        for name in names:
            if not Path(name).is_dir():
                raise DicomSeriesError(f"{name}: mix of a file and series folders in one input {names}")
            series = read_dicom_series(name, **self.series_kwargs, **kwargs_)
            self._series_names.append(str(name))
            if len(series.datasets) > 1:
                self.has_series = True
                out.append(series.datasets)
                self.filenames.append(series.files)
            else:
                out.append(series.datasets[0])
                self.filenames.append(series.files[0])
        if self.has_series and not all(isinstance(o, list) for o in out):
            raise DicomSeriesError(f"cannot stack single-slice and multi-slice series as channels: {names}")
        return out[0] if len(out) == 1 else out

    def get_data(self, data) -> tuple[np.ndarray, dict]:
        """Stack the (already sorted) series; several series must share a shape, else the folders are named."""
        if self.has_series and isinstance(data, list) and data and isinstance(data[0], list):
            sizes = {(int(s[0].Rows), int(s[0].Columns), len(s)) for s in data}
            if len(sizes) > 1:
                shapes = [
                    f"{n}: {int(s[0].Rows)}x{int(s[0].Columns)}x{len(s)}"
                    for n, s in zip(self._series_names, data, strict=True)
                ]
                raise DicomSeriesError(f"series of different shapes cannot be stacked as channels: {shapes}")
        return super().get_data(data)

    # The one private hook kept: MONAI's PydicomReader.get_data stacks a series in its private _combine_dicom_series,
    # which re-sorts the slices by InstanceNumber (dropping slices without one) and measures the slice step on the z
    # coordinate only, wrong for sagittal / coronal / oblique series. The public API has no way to hand it a
    # validated geometric order, so this method replaces it, using PydicomReader's _get_array_data (rescale,
    # swap_ij) and _get_meta_dict (tags) so that pixel values and metadata stay MONAI's.
    # tests/test_dicom.py::test_monai_pydicom_reader_still_stacks_series_through_the_overridden_hook fails if
    # MONAI renames or re-signs any of the three.
    def _combine_dicom_series(self, data, filenames):
        """Stack slices in the given (geometric) order; slice step = distance between first and last / (N - 1)."""
        arrays = []
        for ds, f in zip(data, filenames, strict=True):
            try:
                arrays.append(self._get_array_data(ds, f))
            except Exception as exc:
                raise DicomSeriesError(f"{f}: pixel data cannot be decoded ({type(exc).__name__}: {exc})") from exc
        first, last = data[0], data[-1]
        stack = np.stack(arrays, axis=-1)
        meta = self._get_meta_dict(first)
        spacing = [float(v) for v in first.PixelSpacing]
        p0 = np.asarray([float(v) for v in first.ImagePositionPatient])
        p1 = np.asarray([float(v) for v in last.ImagePositionPatient])
        spacing.append(float(np.linalg.norm(p1 - p0) / (len(data) - 1)))
        meta["spacing"] = np.asarray(spacing)
        meta["lastImagePositionPatient"] = p1
        meta["spatial_shape"] = arrays[0].shape + (len(data),)
        for tag in ("SeriesInstanceUID", "Modality", "SeriesDescription"):
            if tag in first:
                meta[tag] = str(first.data_element(tag).value)
        return stack, meta


class LoadDicomSeries(LoadImage):
    """``LoadImage`` with :class:`DicomSeriesReader`: a folder -> validated ``(W, H, N)`` MetaTensor (RAS affine).

    Unlike ``LoadImage(reader=...)`` validation errors reach the caller as :class:`DicomSeriesError` instead of
    being wrapped in a RuntimeError. Keyword arguments of ``DicomSeriesReader`` go in ``reader_kwargs``.
    """

    def __init__(self, image_only: bool = True, ensure_channel_first: bool = False, reader_kwargs=None, **kwargs):
        self.dicom_reader = DicomSeriesReader(**(reader_kwargs or {}))
        super().__init__(self.dicom_reader, image_only=image_only, ensure_channel_first=ensure_channel_first, **kwargs)

    def __call__(self, filename, reader=None):
        return super().__call__(filename, reader=reader or self.dicom_reader)


class LoadDicomSeriesd(LoadImaged):
    """Dictionary version of :class:`LoadDicomSeries` (same arguments as ``LoadImaged`` plus ``reader_kwargs``)."""

    def __init__(self, keys, reader_kwargs=None, **kwargs):
        kwargs.setdefault("image_only", True)
        self.dicom_reader = DicomSeriesReader(**(reader_kwargs or {}))
        super().__init__(keys, reader=self.dicom_reader, **kwargs)

    def __call__(self, data, reader=None):
        return super().__call__(data, reader=reader or self.dicom_reader)


def load_dicom_series(folder: str | os.PathLike, ensure_channel_first: bool = True, **reader_kwargs) -> MetaTensor:
    """Load one DICOM series folder as a ``(1, W, H, N)`` MetaTensor (``(W, H, N)`` without channel), RAS affine."""
    return LoadDicomSeries(ensure_channel_first=ensure_channel_first, reader_kwargs=reader_kwargs)(str(folder))


def save_like(
    array: torch.Tensor | np.ndarray,
    reference: MetaTensor,
    output_path: str | os.PathLike,
    dtype=np.uint8,
) -> Path:
    """Write a ``(C, *spatial)`` prediction on ``reference``'s grid as NIfTI (``.nii``/``.nii.gz``) with its affine.

    ``reference`` is the loaded input (e.g. from :func:`load_dicom_series`), so a DICOM input gives a NIfTI output
    that lies on the same voxels in patient space. Never overwrites ``reference``'s source.
    """
    output_path = Path(output_path)
    name = output_path.name
    ext = ".nii.gz" if name.endswith(".nii.gz") else output_path.suffix
    if ext not in (".nii", ".nii.gz"):
        raise ValueError(f"output {output_path}: use a .nii or .nii.gz file name")
    src = reference.meta.get("filename_or_obj") if isinstance(reference, MetaTensor) else None
    if src and Path(str(src)).resolve() == output_path.resolve():
        raise ValueError(f"output {output_path}: would overwrite the input image")
    arr = torch.as_tensor(np.asarray(array) if not isinstance(array, torch.Tensor) else array.detach().cpu())
    if tuple(arr.shape[1:]) != tuple(reference.shape[1:]):
        raise ValueError(
            f"output {output_path}: prediction shape {tuple(arr.shape)} does not match the reference image "
            f"{tuple(reference.shape)} ({src})"
        )
    meta = {k: v for k, v in reference.meta.items() if k != "affine"}
    out = MetaTensor(arr, affine=reference.affine.clone(), meta=meta)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    stem = str(output_path)[: -len(ext)]
    SaveImage(output_ext=ext, output_dtype=dtype, resample=False, separate_folder=False, print_log=False)(
        out, filename=stem
    )
    return output_path


def _series_and_mask(reference_folder, mask) -> tuple[DicomSeries, np.ndarray]:
    """Read the reference series and check ``mask`` ((1,) W, H, slices) lies on its grid; -> (series, (W, H, N))."""
    series = read_dicom_series(reference_folder)
    arr = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask)
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise ValueError(f"mask for {reference_folder}: one channel expected, got shape {arr.shape}")
        arr = arr[0]
    rows, cols, n = int(series.datasets[0].Rows), int(series.datasets[0].Columns), len(series.datasets)
    if arr.shape != (cols, rows, n):
        raise ValueError(
            f"mask for {reference_folder}: shape {arr.shape} does not match the series ({cols}, {rows}, {n}) "
            "(W, H, slices)"
        )
    return series, arr


def write_dicom_series_like(
    mask: torch.Tensor | np.ndarray,
    reference_folder: str | os.PathLike,
    output_folder: str | os.PathLike,
    series_description: str = "medcnn prediction",
    series_number: int = 9901,
) -> list[Path]:
    """Write a ``(1, W, H, N)`` or ``(W, H, N)`` mask as a DICOM series with the geometry of ``reference_folder``.

    Each output slice copies the reference slice's header (patient, study, frame of reference, position and
    orientation), gets new Series/SOP Instance UIDs and 16-bit unsigned pixel data, so the result loads back on
    exactly the reference grid (:func:`load_dicom_series`). The mask axes are those of the loaded reference.
    """
    series, arr = _series_and_mask(reference_folder, mask)
    output_folder = Path(output_folder)
    if output_folder.resolve() == series.folder.resolve():
        raise ValueError(f"output {output_folder}: would overwrite the input series")
    output_folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    written = []
    for k, src in enumerate(series.datasets):
        ds = copy.deepcopy(src)
        pixels = np.ascontiguousarray(arr[:, :, k].T).astype(np.uint16)  # (W, H) -> (Rows, Columns)
        for tag in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth", "LargestImagePixelValue",
                    "SmallestImagePixelValue"):
            if tag in ds:
                delattr(ds, tag)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesDescription = series_description
        ds.SeriesNumber = series_number
        ds.InstanceNumber = k + 1
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.PixelData = pixels.tobytes()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        path = output_folder / f"{k:06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    logger.info("wrote %d DICOM slices to %s", len(written), output_folder)
    return written


# Default coding of a segment given only by name: SNOMED CT "Morphologically Altered Structure" / "Neoplasm"
# (DICOM CID 7150 / 7151), the right codes for a tumour mask. Anything else (anatomy, objects) needs its own codes:
# pass ``segment_codes`` (a bundle declares them in its metadata.json, ``dicom_seg`` section).
DEFAULT_SEGMENT_CODE = {
    "category": ["49755003", "SCT", "Morphologically Altered Structure"],
    "type": ["108369006", "SCT", "Neoplasm"],
}
_CODE_KEYS = ("category", "type", "type_modifier", "anatomic_region")


def _highdicom():
    """The highdicom module, or an ImportError that says how to install it."""
    try:
        import highdicom
    except ImportError as exc:
        raise ImportError("DICOM SEG needs highdicom: pip install 'medcnn[dicom]' (or highdicom>=0.28)") from exc
    return highdicom


def _coded(spec, where: str):
    """``[value, scheme, meaning]`` (or a dict with those keys) -> ``highdicom.sr.CodedConcept``."""
    CodedConcept = _highdicom().sr.CodedConcept

    if isinstance(spec, dict):
        spec = [spec.get("value"), spec.get("scheme"), spec.get("meaning")]
    if not isinstance(spec, (list, tuple)) or len(spec) != 3 or not all(isinstance(v, str) and v for v in spec):
        raise ValueError(f"{where}: a code is [value, scheme, meaning] (e.g. [\"5366008\", \"SCT\", \"Hippocampus\"]), "
                         f"got {spec!r}")
    return CodedConcept(value=spec[0], scheme_designator=spec[1], meaning=spec[2])


def segment_descriptions(
    segment_labels: Sequence[str],
    segment_codes: Sequence[dict] | None = None,
    algorithm_name: str = "medcnn",
    algorithm_version: str | None = None,
) -> list:
    """``highdicom.seg.SegmentDescription`` of label values 1..K (``segment_labels[k-1]``, ``segment_codes[k-1]``).

    A code spec is a dict with ``category`` and ``type`` (``[value, scheme, meaning]``, SNOMED CT ``SCT`` or DICOM
    ``DCM`` as in CID 7150 / 7151, e.g. from ``pydicom.sr.codedict.codes``), and optionally ``type_modifier``
    (e.g. SCT 255549009 "Anterior") and ``anatomic_region``. Without ``segment_codes`` every segment gets
    :data:`DEFAULT_SEGMENT_CODE` (a neoplasm).
    """
    from pydicom.sr.codedict import codes

    from medcnn import __version__

    hd = _highdicom()

    if segment_codes is not None and len(segment_codes) != len(segment_labels):
        raise ValueError(f"{len(segment_labels)} segment labels {list(segment_labels)} but {len(segment_codes)} codes")
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, family=codes.cid7162.ArtificialIntelligence, version=algorithm_version or __version__
    )
    out = []
    for k, label in enumerate(segment_labels, start=1):
        spec = dict(DEFAULT_SEGMENT_CODE if segment_codes is None else segment_codes[k - 1])
        where = f"segment {k} ({label})"
        unknown = set(spec) - set(_CODE_KEYS) - {"label"}
        if unknown or "category" not in spec or "type" not in spec:
            raise ValueError(f"{where}: codes need 'category' and 'type' (optional 'type_modifier', "
                             f"'anatomic_region'); got keys {sorted(spec)}")
        region = spec.get("anatomic_region")
        desc = hd.seg.SegmentDescription(
            segment_number=k,
            segment_label=str(label),
            segmented_property_category=_coded(spec["category"], where),
            segmented_property_type=_coded(spec["type"], where),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            anatomic_regions=[_coded(region, where)] if region else None,
        )
        if spec.get("type_modifier"):  # e.g. anterior / posterior part of a structure (CID 7151 modifiers)
            desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                _coded(spec["type_modifier"], where)
            ]
        out.append(desc)
    return out


# Type 2 attributes (present, may be empty) of the Patient / General Study modules that highdicom copies into the SEG
_TYPE2_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                        "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _with_type2_attributes(datasets: list) -> list:
    """Copies of the source slices with empty values for the Patient / Study type 2 attributes they lack.

    Many exported series omit e.g. PatientBirthDate; a SEG must carry them (empty is allowed). The copies live in
    memory only: the input files are never touched.
    """
    missing = [t for t in _TYPE2_PATIENT_STUDY if any(t not in ds for ds in datasets)]
    if not missing:
        return datasets
    out = []
    for ds in datasets:
        ds = copy.deepcopy(ds)
        for tag in missing:
            if tag not in ds:
                setattr(ds, tag, "")
        out.append(ds)
    return out


def write_dicom_seg(
    mask: torch.Tensor | np.ndarray,
    reference_folder: str | os.PathLike,
    output_path: str | os.PathLike,
    segment_labels: Sequence[str] = ("tumour",),
    series_description: str = "medcnn segmentation",
    algorithm_name: str = "medcnn",
    series_number: int = 9902,
    segment_codes: Sequence[dict] | None = None,
    algorithm_version: str | None = None,
) -> Path:
    """Write a label mask ``(1, W, H, N)`` / ``(W, H, N)`` (values 0..K) as one binary DICOM SEG object (highdicom).

    Segment ``k`` (label value ``k``, named ``segment_labels[k-1]``, coded by ``segment_codes[k-1]``: see
    :func:`segment_descriptions`) gets one frame per reference slice, empty frames included, with the reference's
    patient, study, frame of reference, orientation, positions and pixel spacing, so viewers (3D Slicer, OHIF),
    highdicom and MONAI's ``PydicomReader`` place it on the input grid. Software version and algorithm version are
    the medcnn version unless ``algorithm_version`` names the model's. Nothing is written on error.
    """
    from medcnn import __version__

    hd = _highdicom()
    series, arr = _series_and_mask(reference_folder, mask)
    labels = [int(v) for v in np.unique(arr) if v != 0]
    if any(v < 0 or v > len(segment_labels) for v in labels):
        raise ValueError(f"mask for {reference_folder}: label values {labels} need names in segment_labels")
    output_path = Path(output_path)
    if output_path.suffix.lower() != ".dcm":
        raise ValueError(f"output {output_path}: use a .dcm file name")
    if output_path.resolve().parent == series.folder.resolve():
        raise ValueError(f"output {output_path}: would write into the input series folder {series.folder}")
    descriptions = segment_descriptions(segment_labels, segment_codes, algorithm_name, algorithm_version)
    frames = np.ascontiguousarray(np.transpose(arr, (2, 1, 0))).astype(np.uint8)  # (W, H, N) -> (N, Rows, Cols)
    seg = hd.seg.Segmentation(
        source_images=_with_type2_attributes(series.datasets),
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="medcnn",
        manufacturer_model_name=algorithm_name,
        software_versions=f"medcnn {__version__}",
        device_serial_number="0",
        series_description=series_description,
        content_label="SEGMENTATION",
        content_description=f"{algorithm_name} segmentation"[:64],
        omit_empty_frames=False,
    )
    output_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_path.with_name(f".{output_path.name}.part")
    seg.save_as(tmp, enforce_file_format=True)
    os.replace(tmp, output_path)
    logger.info("wrote DICOM SEG with %d segment(s), %d frames to %s", len(descriptions), int(seg.NumberOfFrames),
                output_path)
    return output_path


def read_dicom_seg(seg_path: str | os.PathLike, reference_folder: str | os.PathLike) -> MetaTensor:
    """Read a DICOM SEG back onto the grid of its source series: a ``(1, W, H, N)`` label map (segment numbers).

    Frames are matched to the series' slices by their referenced SOP Instance UIDs (highdicom), so the result lies
    voxel-for-voxel on :func:`load_dicom_series` of ``reference_folder`` and carries its affine. Raises
    :class:`DicomSeriesError` naming the file when it is not a SEG or does not reference that series.
    """
    hd = _highdicom()
    seg_path = Path(seg_path)
    try:
        seg = hd.seg.segread(seg_path)
    except Exception as exc:  # not DICOM, not a SEG, corrupt
        raise DicomSeriesError(f"{seg_path}: not a readable DICOM SEG ({type(exc).__name__}: {exc})") from exc
    series = read_dicom_series(reference_folder)
    uids = [str(ds.SOPInstanceUID) for ds in series.datasets]
    referenced = {str(uid) for _, _, uid in seg.get_source_image_uids()}
    if not set(uids) & referenced:
        raise DicomSeriesError(f"{seg_path}: references none of the {len(uids)} slices of series {series.folder}")
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True)  # (N, R, C)
    ref = load_dicom_series(reference_folder)
    arr = torch.as_tensor(np.ascontiguousarray(np.transpose(frames, (2, 1, 0))))[None]  # -> (1, W, H, N)
    return MetaTensor(arr, affine=ref.affine.clone(), meta={"filename_or_obj": str(seg_path)})
