"""COCO round trip on real tumour outlines (BraTS whole-tumour masks, irregular and sometimes with holes)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import binary_fill_holes

from medcnn.transforms.coco import (
    annotation_to_mask,
    mask_to_annotation,
    mask_to_polygons,
    polygons_to_mask,
    rle_decode,
    rle_encode,
)

pytestmark = pytest.mark.realdata


def test_brats_whole_tumour_slices_round_trip(data_dir):
    lab = np.asarray(nib.load(data_dir("brats2015_deepmedic_subset") / "brats_2013_pat0005_1" / "OTMultiClass.nii.gz")
                     .dataobj)
    tumour = lab > 0
    slices = np.flatnonzero(tumour.reshape(-1, tumour.shape[2]).sum(0))
    assert len(slices) > 50
    inter = union = 0
    modes = set()
    for k in slices[::4]:
        m = tumour[:, :, k]
        np.testing.assert_array_equal(rle_decode(rle_encode(m)), m)  # RLE is lossless
        back = polygons_to_mask(mask_to_polygons(m), *m.shape).astype(bool)
        inter, union = inter + (back & m).sum(), union + (back | m).sum()
        if (binary_fill_holes(m) == m).all():  # polygons cannot carry holes; without holes they are exact
            np.testing.assert_array_equal(back, m)
        else:
            assert (back & ~binary_fill_holes(m)).sum() == 0  # only the holes get filled
        ann = mask_to_annotation(m, image_id=int(k), mode="auto")  # polygons where exact, else RLE: lossless
        modes.add("rle" if isinstance(ann["segmentation"], dict) else "polygon")
        np.testing.assert_array_equal(annotation_to_mask(ann, *m.shape), m)
    assert inter / union > 0.95
    assert modes == {"polygon", "rle"}  # this case has slices with and without holes
