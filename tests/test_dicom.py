"""DICOM series path: geometric slice order, geometry, validation of bad series, writing predictions back."""

from __future__ import annotations

import random
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.transforms import Compose, LoadImage, LoadImaged
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from medcnn.data.dicom import (
    DicomSeriesError,
    DicomSeriesReader,
    LoadDicomSeriesd,
    load_dicom_series,
    read_dicom_series,
    save_like,
    write_dicom_seg,
    write_dicom_series_like,
)
from medcnn.transforms.validation import InvalidInputError

# An oblique orientation (rotated about x by ~10 degrees), as in the TCIA study.
ROW = np.array([1.0, 0.0, 0.0])
COL = np.array([0.0, np.cos(0.17), -np.sin(0.17)])
NORMAL = np.cross(ROW, COL)


def make_series(
    folder: Path,
    n: int = 6,
    rows: int = 12,
    cols: int = 10,
    spacing: float = 2.5,
    pixel_spacing=(0.8, 0.6),
    origin=(-10.0, 20.0, 5.0),
    slope: float | None = None,
    intercept: float | None = None,
    seed: int = 0,
    series_uid: str | None = None,
) -> list[Path]:
    """Write ``n`` slices whose pixel values encode their anatomical index (slice k -> 100 + k, corner marked).

    File names and InstanceNumbers are shuffled so that only ImagePositionPatient gives the right order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    names = [f"IM{i:04d}.dcm" for i in range(n)]
    rng.shuffle(names)
    instance = list(range(1, n + 1))
    rng.shuffle(instance)
    series_uid = series_uid or generate_uid()
    study_uid, frame_uid = generate_uid(), generate_uid()
    paths = []
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality = "MR"
        ds.PatientName, ds.PatientID = "Synthetic^Phantom", "SYN-001"
        ds.InstanceNumber = instance[k]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*ROW, *COL)]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in np.asarray(origin) + k * spacing * NORMAL]
        ds.PixelSpacing = [str(v) for v in pixel_spacing]
        ds.SliceThickness = str(spacing)
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        if slope is not None:
            ds.RescaleSlope, ds.RescaleIntercept = str(slope), str(intercept or 0.0)
        pix = np.full((rows, cols), 100 + k, dtype=np.uint16)
        pix[0, 0] = 7  # first row, first column: marks the origin corner
        ds.PixelData = pix.tobytes()
        path = folder / names[k]
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths  # in anatomical order


def expected_affine(pixel_spacing=(0.8, 0.6), spacing=2.5, origin=(-10.0, 20.0, 5.0)) -> np.ndarray:
    """RAS affine of a (W, H, N) volume: axis 0 along the row direction (columns), axis 1 along the column."""
    lps = np.eye(4)
    lps[:3, 0] = ROW * pixel_spacing[1]
    lps[:3, 1] = COL * pixel_spacing[0]
    lps[:3, 2] = NORMAL * spacing
    lps[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def test_series_sorted_by_position_with_geometry(tmp_path):
    make_series(tmp_path / "s", slope=2.0, intercept=-50.0)
    img = load_dicom_series(tmp_path / "s")
    assert img.shape == (1, 10, 12, 6)  # (C, W=Columns, H=Rows, slices)
    slice_values = img[0, 5, 5, :].numpy()
    np.testing.assert_allclose(slice_values, 2.0 * (100 + np.arange(6)) - 50.0)  # position order, rescaled
    assert img[0, 0, 0, 0].item() == pytest.approx(2.0 * 7 - 50.0)  # origin corner stays at index (0, 0)
    np.testing.assert_allclose(img.affine.numpy(), expected_affine(), atol=1e-5)
    np.testing.assert_allclose(img.pixdim.numpy(), [0.6, 0.8, 2.5], atol=1e-5)
    assert img.meta["filename_or_obj"] == str(tmp_path / "s")
    # InstanceNumber order (what PydicomReader uses) is not the anatomical order here
    series = read_dicom_series(tmp_path / "s")
    numbers = [int(ds.InstanceNumber) for ds in series.datasets]
    assert numbers != sorted(numbers)
    assert series.slice_spacing == pytest.approx(2.5, abs=1e-4)


def test_monai_pydicom_reader_still_stacks_series_through_the_overridden_hook(tmp_path, monkeypatch):
    """DicomSeriesReader overrides PydicomReader's private _combine_dicom_series (no public hook for a geometric
    slice order): fail loudly when MONAI renames it, changes its signature or stops calling it."""
    import inspect

    from monai.data import PydicomReader

    for name, params in (("_combine_dicom_series", ["self", "data", "filenames"]),
                         ("_get_array_data", ["self", "img", "filename"]), ("_get_meta_dict", ["self", "img"])):
        assert hasattr(PydicomReader, name), f"MONAI's PydicomReader no longer has {name}: update DicomSeriesReader"
        assert list(inspect.signature(getattr(PydicomReader, name)).parameters)[: len(params)] == params, name
    calls = []
    original = DicomSeriesReader._combine_dicom_series
    monkeypatch.setattr(DicomSeriesReader, "_combine_dicom_series",
                        lambda self, data, filenames: calls.append(len(data)) or original(self, data, filenames))
    make_series(tmp_path / "s")
    load_dicom_series(tmp_path / "s")
    assert calls == [6], "PydicomReader.get_data no longer stacks a series through _combine_dicom_series"


def test_dictionary_pipeline_and_loadimage(tmp_path):
    make_series(tmp_path / "img", seed=1)
    make_series(tmp_path / "lab", seed=2)
    data = {"image": str(tmp_path / "img"), "label": str(tmp_path / "lab")}
    out = Compose([LoadDicomSeriesd(keys=["image", "label"], ensure_channel_first=True)])(data)
    assert out["image"].shape == out["label"].shape == (1, 10, 12, 6)
    np.testing.assert_allclose(out["image"].affine, out["label"].affine)
    # the reader also plugs into plain LoadImage(d)
    img = LoadImaged(keys="image", reader=DicomSeriesReader(), image_only=True)(data)["image"]
    np.testing.assert_allclose(img[5, 5, :].numpy(), 100 + np.arange(6))
    # two folders -> two channels
    both = LoadImage(reader=DicomSeriesReader(), image_only=True)([data["image"], data["label"]])
    assert both.shape == (2, 10, 12, 6)


def _raises(folder: Path, match: str, **kwargs) -> str:
    with pytest.raises(DicomSeriesError, match=match) as info:
        load_dicom_series(folder, **kwargs)
    assert isinstance(info.value, InvalidInputError) and isinstance(info.value, ValueError)
    return str(info.value)


def test_missing_slice(tmp_path):
    paths = make_series(tmp_path / "s", n=8)
    paths[4].unlink()
    msg = _raises(tmp_path / "s", "missing slice")
    assert str(tmp_path / "s") in msg and "about 1 slice(s) missing" in msg


def test_mixed_orientation(tmp_path):
    paths = make_series(tmp_path / "s")
    ds = pydicom.dcmread(paths[2])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.save_as(paths[2])
    msg = _raises(tmp_path / "s", "mixed orientations")
    assert paths[2].name in msg


def test_mixed_size(tmp_path):
    paths = make_series(tmp_path / "s")
    ds = pydicom.dcmread(paths[3])
    ds.Rows, ds.Columns = 8, 10
    ds.PixelData = np.zeros((8, 10), np.uint16).tobytes()
    ds.save_as(paths[3])
    msg = _raises(tmp_path / "s", "mixed sizes")
    assert paths[3].name in msg and "8x10" in msg


def test_corrupt_and_non_dicom_files(tmp_path):
    paths = make_series(tmp_path / "s")
    raw = paths[1].read_bytes()
    paths[1].write_bytes(raw[: len(raw) // 2])  # truncated in the middle of the pixel data
    _raises(tmp_path / "s", paths[1].name)

    make_series(tmp_path / "t")
    (tmp_path / "t" / "notes.txt").write_text("not an image")
    msg = _raises(tmp_path / "t", "not a DICOM file")
    assert "notes.txt" in msg
    assert load_dicom_series(tmp_path / "t", ignore_non_dicom=True).shape == (1, 10, 12, 6)


def test_empty_missing_duplicate_and_two_series(tmp_path):
    (tmp_path / "empty").mkdir()
    _raises(tmp_path / "empty", "empty")
    _raises(tmp_path / "nowhere", "not found")
    paths = make_series(tmp_path / "dup", n=4, seed=3)
    ds = pydicom.dcmread(paths[1])
    ds.SOPInstanceUID = generate_uid()
    ds.save_as(tmp_path / "dup" / "copy.dcm")
    _raises(tmp_path / "dup", "same position")
    # a second series in the same folder
    paths = make_series(tmp_path / "two", n=4, seed=5)
    other = make_series(tmp_path / "other", n=4, seed=6)
    for p in other:
        p.rename(tmp_path / "two" / f"other_{p.name}")
    _raises(tmp_path / "two", "holds 2 series")
    uid = str(pydicom.dcmread(paths[0]).SeriesInstanceUID)
    assert load_dicom_series(tmp_path / "two", series_uid=uid).shape == (1, 10, 12, 4)


def test_channels_of_different_shapes(tmp_path):
    make_series(tmp_path / "a", n=6)
    make_series(tmp_path / "b", n=5)
    with pytest.raises(DicomSeriesError, match="different shapes") as info:
        reader = DicomSeriesReader()
        reader.get_data(reader.read([str(tmp_path / "a"), str(tmp_path / "b")]))
    assert str(tmp_path / "b") in str(info.value)


def test_write_back_nifti_and_dicom(tmp_path):
    make_series(tmp_path / "s")
    img = load_dicom_series(tmp_path / "s")
    pred = (img > 102).to(torch.uint8)
    out = save_like(pred, img, tmp_path / "pred.nii.gz")
    nii = nib.load(out)
    np.testing.assert_allclose(nii.affine, img.affine.numpy(), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(nii.dataobj), pred[0].numpy())
    with pytest.raises(ValueError, match="does not match"):
        save_like(pred[:, :5], img, tmp_path / "bad.nii.gz")

    written = write_dicom_series_like(pred, tmp_path / "s", tmp_path / "pred_dcm")
    assert len(written) == 6
    back = load_dicom_series(tmp_path / "pred_dcm")
    np.testing.assert_allclose(back.affine, img.affine, atol=1e-5)
    np.testing.assert_array_equal(back.numpy(), pred.numpy())
    src_uid = pydicom.dcmread(next((tmp_path / "s").iterdir())).SeriesInstanceUID
    assert pydicom.dcmread(written[0]).SeriesInstanceUID != src_uid
    with pytest.raises(ValueError, match="overwrite"):
        write_dicom_series_like(pred, tmp_path / "s", tmp_path / "s")


def test_dicom_seg_round_trip_through_monai(tmp_path):
    from monai.data import PydicomReader

    make_series(tmp_path / "s")
    img = load_dicom_series(tmp_path / "s")
    labels = torch.zeros_like(img, dtype=torch.uint8)
    labels[0, 2:6, 3:8, 1:4] = 1
    labels[0, 6:9, 8:11, 3:5] = 2
    path = write_dicom_seg(labels, tmp_path / "s", tmp_path / "seg" / "pred.dcm", segment_labels=["core", "edema"])
    ds = pydicom.dcmread(path)
    assert ds.Modality == "SEG" and ds.NumberOfFrames == 12 and len(ds.SegmentSequence) == 2
    seg = LoadImage(reader=PydicomReader(), image_only=True, ensure_channel_first=True)(str(path))
    assert seg.shape == (2, 10, 12, 6)
    # highdicom stores the frames sorted along its own slice normal (the reverse of the reader's here); MONAI reads
    # them in stored order with the matching affine, so voxel (i, j, N-1-k) of the SEG is voxel (i, j, k) of the input
    flip_k = np.eye(4)
    flip_k[2, 2], flip_k[2, 3] = -1.0, 5.0
    np.testing.assert_allclose(seg.affine, img.affine.numpy() @ flip_k, atol=1e-4)  # lands on the input grid
    for k in (1, 2):
        np.testing.assert_array_equal(seg[k - 1].flip(-1).numpy(), (labels[0] == k).numpy())
    with pytest.raises(ValueError, match="segment_labels"):
        write_dicom_seg(labels, tmp_path / "s", tmp_path / "x.dcm", segment_labels=["core"])


def test_loaders_pickle(tmp_path):
    import pickle

    make_series(tmp_path / "s", n=3)
    loader = pickle.loads(pickle.dumps(LoadDicomSeriesd(keys="image", reader_kwargs={"spacing_tolerance": 0.1})))
    assert loader({"image": str(tmp_path / "s")})["image"].shape == (10, 12, 3)


@pytest.mark.parametrize("writer", ["series", "seg"])
def test_writers_refuse_a_mask_off_the_series_grid(tmp_path, writer):
    make_series(tmp_path / "s")
    img = load_dicom_series(tmp_path / "s")
    off_grid = torch.zeros(1, img.shape[1], img.shape[2] - 1, img.shape[3], dtype=torch.uint8)
    two_channels = torch.zeros(2, *img.shape[1:], dtype=torch.uint8)
    for bad, message in ((off_grid, "does not match the series"), (two_channels, "one channel")):
        with pytest.raises(ValueError, match=message) as info:
            if writer == "series":
                write_dicom_series_like(bad, tmp_path / "s", tmp_path / "out")
            else:
                write_dicom_seg(bad, tmp_path / "s", tmp_path / "seg.dcm", segment_labels=["tumour"])
        assert str(tmp_path / "s") in str(info.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "seg.dcm").exists()
