"""Pieces of the COCO tumour pipeline: grey conversion, the fixed split, per-image spread, ResUNet++ and the
ResNeXt encoder."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.losses import DiceCELoss
from PIL import Image

from medcnn.data.coco import split_coco_datalist
from medcnn.metrics.spread import per_item_summary
from medcnn.networks.resunetpp import ResUNetPlusPlus
from medcnn.transforms import InvalidInputError, ToGrey, ToGreyd


def test_to_grey_matches_pillow_and_keeps_metadata(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(rgb).convert("L"), dtype=float)  # Pillow rounds to uint8
    img = MetaTensor(torch.as_tensor(rgb).permute(2, 0, 1), meta={"filename_or_obj": "slice.jpg"})
    out = ToGreyd(keys="image")({"image": img})["image"]
    assert out.shape == (1, 20, 30) and out.dtype == torch.float32
    assert np.abs(out[0].numpy() - expected).max() <= 0.5 + 1e-3
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "slice.jpg"
    grey = torch.rand(1, 5, 5)
    assert torch.equal(ToGrey()(grey), grey)  # already one channel
    with pytest.raises(InvalidInputError, match="slice.jpg.*got shape \\(2, 5, 5\\)"):
        ToGrey()(MetaTensor(torch.zeros(2, 5, 5), meta={"filename_or_obj": "slice.jpg"}))
    assert pickle.loads(pickle.dumps(ToGreyd(keys="image"))).converter.weights == ToGrey().weights


def test_split_is_fixed_disjoint_and_checked():
    data = [{"image_id": i, "file_name": f"{i}.jpg"} for i in range(100, 0, -1)]
    split = split_coco_datalist(data, 0.2, seed=3)
    train, val = ([e["image_id"] for e in split[k]] for k in ("training", "validation"))
    assert len(val) == 20 and len(train) == 80 and not set(train) & set(val)
    assert train == sorted(train) and val == sorted(val)
    assert val == [e["image_id"] for e in split_coco_datalist(data[::-1], 0.2, seed=3)["validation"]]
    assert val != [e["image_id"] for e in split_coco_datalist(data, 0.2, seed=4)["validation"]]
    with pytest.raises(ValueError, match="not unique"):
        split_coco_datalist(data + data[:1], 0.2)
    with pytest.raises(ValueError, match="fraction"):
        split_coco_datalist(data, 1.5)


def test_per_item_summary():
    s = per_item_summary(torch.tensor([[0.0], [0.5], [1.0], [float("nan")], [0.9]]), "image_dice")
    assert s["image_dice_n"] == 4 and s["image_dice_n_nan"] == 1
    assert s["image_dice_median"] == pytest.approx(0.7) and s["image_dice_min"] == 0.0
    assert s["image_dice_below_0.5"] == pytest.approx(0.25) and s["image_dice_mean"] == pytest.approx(0.6)


def test_resunetpp_learns_a_box_and_checks_its_input():
    torch.manual_seed(0)
    net = ResUNetPlusPlus(2, 1, 2, features=(4, 8, 8, 16, 16))
    x = torch.randn(4, 1, 32, 32) * 0.2
    y = torch.zeros(4, 1, 32, 32, dtype=torch.long)
    x[:, :, 8:20, 10:24] += 1.0
    y[:, :, 8:20, 10:24] = 1
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.zeros(1, 1, 30, 32))
    with pytest.raises(ValueError, match="5 channel counts"):
        ResUNetPlusPlus(2, 1, 2, features=(4, 8))
    assert ResUNetPlusPlus(3, 1, 2, features=(2, 4, 4, 8, 8))(torch.zeros(1, 1, 16, 16, 16)).shape == (1, 2, 16, 16, 16)


def test_resnext_encoder_outputs_and_refusals():
    from medcnn.networks.resnext import ResNeXtEncoder

    enc = ResNeXtEncoder(in_channels=1).eval()
    with torch.no_grad():
        feats = enc(torch.zeros(1, 1, 64, 64))
    assert [f.shape[1] for f in feats] == [64, 256, 512, 1024, 2048]
    assert [f.shape[-1] for f in feats] == [32, 16, 8, 4, 2]
    with pytest.raises(ValueError, match="pretrained"):
        ResNeXtEncoder(pretrained=True)


def test_mask_to_boxes():
    from medcnn.transforms import MaskToBoxes, MaskToBoxesd

    m = np.zeros((1, 20, 20), np.uint8)
    m[0, 2:8, 3:9] = 1
    m[0, 4, 2] = 1  # touches the first region diagonally: same region, widens its box
    m[0, 12:18, 12:14] = 1
    m[0, 15, 14:16] = 1
    m[0, 0, 19] = 1  # one stray pixel
    boxes = MaskToBoxes()(m)
    assert boxes[0, 2:8, 2:9].all() and boxes[0, 12:18, 12:16].all() and boxes[0, 0, 19] == 1
    assert boxes.sum() == 6 * 7 + 6 * 4 + 1
    assert MaskToBoxes(min_size=2)(m).sum() == 6 * 7 + 6 * 4
    largest = MaskToBoxes(largest_only=True, boxes=False)(m)
    assert largest.sum() == 6 * 6 + 1 and largest[0, 12:, :].sum() == 0
    img = MetaTensor(torch.as_tensor(m), meta={"filename_or_obj": "x.jpg"})
    out = MaskToBoxesd(keys="pred")({"pred": img})["pred"]
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "x.jpg" and int(out.sum()) == boxes.sum()
    assert MaskToBoxes()(np.zeros((1, 4, 4), np.uint8)).sum() == 0


def test_mask_to_boxes_fills_holes_of_the_kept_regions_only():
    from medcnn.transforms import MaskToBoxes, MaskToBoxesd

    m = np.zeros((1, 20, 20), np.uint8)
    m[0, 2:9, 2:9] = 1
    m[0, 4:7, 4:7] = 0  # a 3x3 hole inside the large ring
    m[0, 12:16, 12:16] = 1
    m[0, 13:15, 13:15] = 0  # a 2x2 hole inside the small ring
    m[0, 2:9, 15] = 1
    m[0, 2:9, 17] = 1
    m[0, 2, 15:18] = 1  # a U open at the bottom: its gap is not enclosed, so it is not a hole
    filled = MaskToBoxes(boxes=False, fill_holes=True)(m)
    assert filled[0, 2:9, 2:9].all() and filled[0, 12:16, 12:16].all()
    assert filled[0, 3:9, 16].sum() == 0
    assert filled.sum() == m.sum() + 9 + 4
    largest = MaskToBoxesd(keys="pred", largest_only=True, boxes=False, fill_holes=True)({"pred": m})["pred"]
    assert largest.sum() == 49 and largest[0, 10:].sum() == 0 and largest[0, :, 14:].sum() == 0
    assert MaskToBoxes(boxes=False)(m).sum() == m.sum()  # without fill_holes the holes stay


def test_prediction_writer_round_trip_and_never_overwrites_an_input(tmp_path):
    from ignite.engine import Engine

    from medcnn.data.coco import load_coco_datalist
    from medcnn.handlers.coco import CocoPredictionWriter
    from medcnn.transforms import CocoToMaskd

    src = tmp_path / "slice.png"
    Image.fromarray(np.zeros((6, 10), np.uint8)).save(src)
    mask_hw = np.zeros((6, 10), np.uint8)
    mask_hw[1:4, 2:9] = 1
    mask_hw[2, 5] = 0  # a hole: not representable as a polygon, so "auto" falls back to RLE
    pred = MetaTensor(torch.as_tensor(mask_hw.T[None].copy()), meta={"filename_or_obj": str(src)})  # (1, W, H)
    engine = Engine(lambda e, b: None)
    engine.state.output = [{"pred": pred}]
    writer = CocoPredictionWriter(tmp_path / "out")
    writer._collect(engine)
    writer._write_json(engine)
    png = np.asarray(Image.open(tmp_path / "out" / "slice_tumour.png"))
    np.testing.assert_array_equal(png, mask_hw * 255)
    entry = load_coco_datalist(tmp_path / "out" / "predictions.coco.json", image_dir=tmp_path)[0]
    assert isinstance(entry["annotations"][0]["segmentation"], dict)  # RLE
    np.testing.assert_array_equal(CocoToMaskd(keys="annotations")(entry)["label"][0].numpy(), mask_hw)
    clobber = CocoPredictionWriter(tmp_path, suffix=".png")
    with pytest.raises(ValueError, match="slice.png.*overwrite the input"):
        clobber._collect(engine)
    assert np.asarray(Image.open(src)).max() == 0


def test_training_time_limit_stops_the_trainer():
    import time

    from ignite.engine import Engine

    from medcnn.handlers.budget import TrainingTimeLimit

    engine = Engine(lambda e, b: time.sleep(0.05))
    limit = TrainingTimeLimit(0.12)
    limit.attach(engine)
    engine.run(range(100), max_epochs=1)
    assert limit.stopped and engine.state.iteration < 100  # stopped long before the 100 iterations (5 s)
    unlimited = Engine(lambda e, b: None)
    TrainingTimeLimit(None).attach(unlimited)
    unlimited.run(range(5), max_epochs=2)
    assert unlimited.state.iteration == 10
