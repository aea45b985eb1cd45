"""Real DICOM study (TCIA Brain-Tumor-Progression PGBM-001): the tumour mask lands on the T1post / FLAIR voxels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import PydicomReader
from monai.transforms import Compose, EnsureChannelFirstd, LoadImage, ResampleToMatchd
from test_dicom_seg import dciodvfy

from medcnn.data.dicom import (
    LoadDicomSeriesd,
    load_dicom_series,
    read_dicom_seg,
    write_dicom_seg,
    write_dicom_series_like,
)

pytestmark = pytest.mark.realdata

STUDY = "PGBM-001/1992-04-02"


@pytest.fixture
def study(data_dir):
    root = data_dir("tcia_brain_tumor_progression_dicom") / STUDY
    keys = ["t1post", "flair", "mask"]
    data = {"t1post": str(root / "T1post"), "flair": str(root / "FLAIRreg"), "mask": str(root / "MaskTumor")}
    loaded = Compose([LoadDicomSeriesd(keys=keys), EnsureChannelFirstd(keys=keys)])(data)
    return root, loaded


def test_mask_on_same_grid_as_t1post_and_flair(study):
    _, d = study
    t1, flair, mask = d["t1post"], d["flair"], d["mask"]
    assert t1.shape == flair.shape == mask.shape == (1, 260, 320, 24)
    # same voxels in patient space: affines agree to 1e-3 mm / direction units
    np.testing.assert_allclose(flair.affine, t1.affine, atol=1e-3)
    np.testing.assert_allclose(mask.affine, t1.affine, atol=1e-3)
    np.testing.assert_allclose(t1.pixdim.numpy(), [0.6875, 0.6875, 6.5], atol=1e-3)  # slice step along the normal
    # resampling the mask into T1post's grid is (numerically) the identity
    out = ResampleToMatchd(keys="mask", key_dst="t1post", mode="nearest")({"mask": mask, "t1post": t1})
    assert torch.equal(out["mask"].as_tensor(), mask.as_tensor())

    m = mask[0].numpy() > 0
    assert set(np.unique(mask.numpy())) == {0.0, 1.0} and m.sum() == 6809
    assert sorted(set(np.nonzero(m)[2])) == list(range(13, 21))  # 8 contiguous slices in geometric order
    fl = flair[0].numpy()
    for img in (t1[0].numpy(), fl):
        head = img > 0.1 * np.percentile(img, 99)
        assert head[m].mean() > 0.99  # every tumour voxel lies inside the head on both series
    # FLAIR is hyperintense in the tumour compared with the rest of the head
    head = fl > 0.1 * np.percentile(fl, 99)
    ratio = fl[m].mean() / fl[head & ~m].mean()
    assert ratio > 1.05
    # negative control: the same check fails for a mask mirrored left-right or shifted, so it can detect misalignment
    for wrong in (np.flip(m, 0), np.roll(m, 60, 1)):
        assert fl[wrong].mean() / fl[head & ~wrong].mean() < ratio - 0.2 or head[wrong].mean() < 0.9


def test_mask_written_as_dicom_reloads_on_same_voxels(study, tmp_path):
    root, d = study
    # in this study InstanceNumber happens to follow the geometry, so MONAI's PydicomReader must agree with ours
    # (ITKReader/GDCM agrees as well; not run here because importing itk takes ~8 s)
    ref = LoadImage(reader=PydicomReader(), image_only=True)(str(root / "T1post"))
    np.testing.assert_array_equal(np.asarray(ref), d["t1post"][0].numpy())
    np.testing.assert_allclose(ref.affine, d["t1post"].affine, atol=1e-4)
    pred = (d["mask"] > 0).to(torch.uint8)
    write_dicom_series_like(pred, root / "T1post", tmp_path / "pred")
    back = load_dicom_series(tmp_path / "pred")
    np.testing.assert_allclose(back.affine, d["t1post"].affine, atol=1e-4)
    np.testing.assert_array_equal(back.numpy(), pred.numpy())
    # and as a DICOM SEG object, read back by MONAI's own PydicomReader
    seg_path = write_dicom_seg(pred, root / "T1post", tmp_path / "seg.dcm")
    # valid on the real oblique 24-slice series too: no error, and its only warnings are those of the source slices
    # (single-component PatientName, empty StudyID), whose patient / study values a SEG must copy unchanged
    source_warnings = set(dciodvfy(root / "T1post" / "000000.dcm"))
    assert [m for m in dciodvfy(seg_path) if m not in source_warnings] == []
    seg = read_dicom_seg(seg_path, root / "T1post")  # frames matched to slices by SOP Instance UID (highdicom)
    np.testing.assert_allclose(seg.affine, d["t1post"].affine, atol=1e-4)
    np.testing.assert_array_equal(seg.numpy(), pred.numpy())
    # (MONAI 1.6's PydicomReader cannot read this one-segment SEG: it wants SegmentIdentificationSequence per frame,
    # while highdicom puts it, validly, in the shared functional groups; tests/test_dicom.py reads a two-segment one)


@pytest.mark.parametrize("case,n_slices", [("PGBM-002", 32), ("PGBM-003", 40), ("PGBM-006", 35)])
def test_hippocampus_crops_load_as_1mm_volumes(data_dir, case, n_slices):
    img = load_dicom_series(data_dir("tcia_brain_tumor_progression_dicom") / "hippocrop" / case)
    assert img.shape[-1] == n_slices and img.shape[1:3] in {(35, 51), (34, 50), (36, 48)}
    np.testing.assert_allclose(img.pixdim.numpy(), [1.0, 1.0, 1.0], atol=1e-4)
