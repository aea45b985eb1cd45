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
(a binary DICOM SEG object) to write a prediction back with the input geometry.
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
]

logger = logging.getLogger(__name__)


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
            f"DICOM series folder {folder}: holds {len(uids)} series {uids}; split them or pass series_uid"
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


# (code value, coding scheme, meaning) for SegmentedPropertyCategory / Type, SNOMED CT as in DICOM CID 7150/7151
_SEG_CATEGORY = ("49755003", "SCT", "Morphologically Altered Structure")
_SEG_TYPE = ("108369006", "SCT", "Neoplasm")


def _code(value: str, scheme: str, meaning: str) -> pydicom.Dataset:
    item = pydicom.Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def write_dicom_seg(
    mask: torch.Tensor | np.ndarray,
    reference_folder: str | os.PathLike,
    output_path: str | os.PathLike,
    segment_labels: Sequence[str] = ("tumour",),
    series_description: str = "medcnn segmentation",
    algorithm_name: str = "medcnn",
    series_number: int = 9902,
) -> Path:
    """Write a label mask ``(1, W, H, N)`` / ``(W, H, N)`` (values 0..K) as one binary DICOM SEG object.

    Segment ``k`` (label value ``k``, named ``segment_labels[k-1]``) gets one frame per reference slice, in
    slice order, with the reference's orientation, positions, pixel spacing, patient, study and frame of reference,
    so viewers (3D Slicer, OHIF) and MONAI's ``PydicomReader`` place it on the input grid. Written by hand with
    pydicom (no highdicom dependency): category "Morphologically Altered Structure", type "Neoplasm" (SNOMED CT).
    """
    series, arr = _series_and_mask(reference_folder, mask)
    src0 = series.datasets[0]
    cols, rows, _ = arr.shape
    labels = [int(v) for v in np.unique(arr) if v != 0]
    if any(v < 0 or v > len(segment_labels) for v in labels):
        raise ValueError(f"mask for {reference_folder}: label values {labels} need names in segment_labels")
    output_path = Path(output_path)
    if output_path.suffix.lower() != ".dcm":
        raise ValueError(f"output {output_path}: use a .dcm file name")
    output_path.parent.mkdir(parents=True, exist_ok=True)

    meta = pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID = pydicom.uid.SegmentationStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    for tag in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName", "FrameOfReferenceUID"):
        if tag in src0:
            setattr(ds, tag, src0.data_element(tag).value)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = "SEG", generate_uid(), series_number, 1
    ds.SeriesDescription, ds.ContentLabel, ds.ContentDescription = series_description, "SEGMENTATION", algorithm_name
    ds.ContentCreatorName = algorithm_name
    ds.Manufacturer, ds.ManufacturerModelName, ds.SoftwareVersions = "medcnn", "medcnn", "0.1.0"
    ds.DeviceSerialNumber = "0"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.SegmentationType = "BINARY"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 1, 0, 0
    ds.LossyImageCompression = "00"
    ds.PositionReferenceIndicator = ""

    segments = []
    for k in range(1, len(segment_labels) + 1):
        seg = pydicom.Dataset()
        seg.SegmentNumber, seg.SegmentLabel = k, str(segment_labels[k - 1])
        seg.SegmentAlgorithmType, seg.SegmentAlgorithmName = "AUTOMATIC", algorithm_name
        seg.SegmentedPropertyCategoryCodeSequence = [_code(*_SEG_CATEGORY)]
        seg.SegmentedPropertyTypeCodeSequence = [_code(*_SEG_TYPE)]
        segments.append(seg)
    ds.SegmentSequence = segments

    dim_org_uid = generate_uid()
    org = pydicom.Dataset()
    org.DimensionOrganizationUID = dim_org_uid
    ds.DimensionOrganizationSequence = [org]
    idx_seg, idx_pos = pydicom.Dataset(), pydicom.Dataset()
    idx_seg.DimensionOrganizationUID = idx_pos.DimensionOrganizationUID = dim_org_uid
    idx_seg.DimensionIndexPointer = pydicom.tag.Tag(0x0062, 0x000B)  # ReferencedSegmentNumber
    idx_seg.FunctionalGroupPointer = pydicom.tag.Tag(0x0062, 0x000A)  # SegmentIdentificationSequence
    idx_pos.DimensionIndexPointer = pydicom.tag.Tag(0x0020, 0x0032)  # ImagePositionPatient
    idx_pos.FunctionalGroupPointer = pydicom.tag.Tag(0x0020, 0x9113)  # PlanePositionSequence
    ds.DimensionIndexSequence = [idx_seg, idx_pos]

    shared = pydicom.Dataset()
    orient, measures = pydicom.Dataset(), pydicom.Dataset()
    orient.ImageOrientationPatient = list(src0.ImageOrientationPatient)
    measures.PixelSpacing = list(src0.PixelSpacing)
    measures.SliceThickness = src0.get("SliceThickness", series.slice_spacing)
    measures.SpacingBetweenSlices = f"{series.slice_spacing:.6g}"
    shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = [orient], [measures]
    ds.SharedFunctionalGroupsSequence = [shared]

    ref_series = pydicom.Dataset()
    ref_series.SeriesInstanceUID = src0.SeriesInstanceUID
    ref_series.ReferencedInstanceSequence = []
    for src in series.datasets:
        ref = pydicom.Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = src.SOPClassUID, src.SOPInstanceUID
        ref_series.ReferencedInstanceSequence.append(ref)
    ds.ReferencedSeriesSequence = [ref_series]

    frames, per_frame = [], []
    for k in range(1, len(segment_labels) + 1):
        for z, src in enumerate(series.datasets):
            frames.append((arr[:, :, z].T == k).astype(np.uint8))  # (W, H) -> (Rows, Columns)
            item, content, pos, ident, deriv = (pydicom.Dataset() for _ in range(5))
            content.DimensionIndexValues = [k, z + 1]
            pos.ImagePositionPatient = list(src.ImagePositionPatient)
            ident.ReferencedSegmentNumber = k
            src_img = pydicom.Dataset()
            src_img.ReferencedSOPClassUID, src_img.ReferencedSOPInstanceUID = src.SOPClassUID, src.SOPInstanceUID
            purpose = _code("121322", "DCM", "Source image for image processing operation")
            src_img.PurposeOfReferenceCodeSequence = [purpose]
            deriv.SourceImageSequence = [src_img]
            deriv.DerivationCodeSequence = [_code("113076", "DCM", "Segmentation")]
            item.FrameContentSequence, item.PlanePositionSequence = [content], [pos]
            item.SegmentIdentificationSequence, item.DerivationImageSequence = [ident], [deriv]
            per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.NumberOfFrames = len(frames)
    bits = np.packbits(np.stack(frames).ravel(), bitorder="little")
    ds.PixelData = bits.tobytes() + (b"\0" if bits.size % 2 else b"")
    ds.save_as(output_path, enforce_file_format=True)
    logger.info("wrote DICOM SEG with %d segment(s), %d frames to %s", len(segment_labels), len(frames), output_path)
    return output_path
