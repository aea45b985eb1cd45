"""medcnn.transforms.ResizeToMatchd: probabilities back to the native mask's grid, the size read from the item."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor

from medcnn.transforms import ResizeToMatchd


def test_resizes_to_the_reference_of_each_item_bilinearly():
    prob = torch.zeros(2, 4, 4)
    prob[1, :, 2:] = 1.0  # right half foreground
    prob[0] = 1 - prob[1]
    for shape in ((1, 8, 8), (1, 12, 6)):  # the masks of one dataset may differ in size
        out = ResizeToMatchd("pred", reference_key="label")({"pred": prob, "label": torch.zeros(shape)})
        assert tuple(out["pred"].shape) == (2, *shape[1:])
        expected = torch.nn.functional.interpolate(prob[None], size=shape[1:], mode="bilinear", align_corners=False)
        torch.testing.assert_close(out["pred"], expected[0])
        assert torch.equal(out["pred"].argmax(0)[:, : shape[2] // 2 - 1], torch.zeros(shape[1], shape[2] // 2 - 1,
                                                                                        dtype=torch.long))
    same = {"pred": prob, "label": torch.zeros(1, 4, 4)}
    assert ResizeToMatchd("pred", reference_key="label")(same)["pred"] is prob  # nothing to do


def test_a_reference_of_other_dimensionality_names_the_file():
    pred = MetaTensor(torch.zeros(2, 4, 4), meta={"filename_or_obj": "/data/p1/slice_3.tif"})
    with pytest.raises(ValueError, match=r"/data/p1/slice_3.tif: 'pred' has 2 spatial axes, reference 'label' has 3"):
        ResizeToMatchd("pred", reference_key="label")({"pred": pred, "label": torch.zeros(1, 4, 4, 4)})
    with pytest.raises(ValueError, match="2 modes for 1 keys"):
        ResizeToMatchd("pred", reference_key="label", mode=["bilinear", "nearest"])
