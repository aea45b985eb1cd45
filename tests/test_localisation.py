"""Localisation pipeline: heatmap shapes, Dice of known cases, every method runs or is reported unsupported."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from medcnn.data.synthetic import ball_mask
from medcnn.localisation import (
    CAM_METHODS,
    UnsupportedCAMError,
    available_cam_methods,
    cam_dice,
    cam_to_mask,
    get_cam_method,
    localise,
    select_threshold,
)
from medcnn.networks import ResNetClassifier


class PassThroughClassifier(nn.Module):
    """features = image (1x1 conv, weight 1) -> global average -> logits (-mean, +mean): CAM of class 1 = image."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.features = conv(1, 2, 1, bias=False)
        nn.init.ones_(self.features.weight)
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x).mean(dim=tuple(range(2, x.ndim))), 1))


def _disk_images(dims: int, n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    size = (32, 32) if dims == 2 else (12, 12, 12)
    centres = [(10, 12), (20, 18)] if dims == 2 else [(5, 6, 6), (6, 6, 5)]
    masks = torch.stack([torch.as_tensor(ball_mask(size, c, 5 if dims == 2 else 3))[None] for c in centres[:n]])
    return masks.float(), masks.to(torch.uint8)


def _hook_count(model: nn.Module) -> int:
    """Hooks on ``model``'s modules (torch keeps them in these dicts; the test fails loudly if that changes)."""
    return sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("method", ["monai_gradcam", "monai_gradcampp", "gradcam"])
def test_a_cam_method_reused_after_a_weight_update_maps_with_the_new_weights(method):
    """MONAI's CAM runs on a copy of the network (its hooks cannot be removed): the copy follows the network's
    current weights, and the network itself never carries a hook."""
    model = PassThroughClassifier(2)
    images, _ = _disk_images(2)
    cam = get_cam_method(method, model, "features")
    first = cam(images, 1)
    with torch.no_grad():  # class 1 now looks at the inverted image: the map must follow
        model.features.weight.mul_(-1.0)
    second = cam(images, 1)
    fresh = get_cam_method(method, model, "features")(images, 1)
    assert torch.allclose(second, fresh, atol=1e-6)
    assert not torch.allclose(first, second, atol=1e-3)
    assert _hook_count(model) == 0


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("method", sorted(CAM_METHODS))
def test_every_method_runs_or_is_reported(dims, method):
    model = PassThroughClassifier(dims)
    images, masks = _disk_images(dims)
    if method not in available_cam_methods(dims):
        with pytest.raises(UnsupportedCAMError, match=f"{method}.*{dims}D"):
            localise(model, images, method=method, target_layer="features")
        return
    before = _hook_count(model)
    heatmaps = localise(model, images, method=method, target_layer="features", class_idx=1)
    assert _hook_count(model) == before  # hooks released
    assert heatmaps.shape == images.shape  # (B, 1, *S) at the input size
    assert float(heatmaps.min()) >= 0.0 and float(heatmaps.max()) == pytest.approx(1.0)
    pred = cam_to_mask(heatmaps, 0.5, "fraction")
    dice = cam_dice(pred, masks)
    if method not in ("eigencam", "eigengradcam"):  # SVD projections have an arbitrary sign
        assert float(dice.min()) > 0.95, f"{method} {dims}D: the CAM of a pass-through model is the image"


def test_dimension_limited_method_is_reported():
    from medcnn.localisation import GradCAMPackageCAM

    cam = GradCAMPackageCAM(PassThroughClassifier(3), "features", "GradCAM", "gradcam_2d_only", spatial_dims=(2,))
    with pytest.raises(UnsupportedCAMError, match="gradcam_2d_only.*3D"):
        cam(torch.ones(1, 1, 8, 8, 8))


def test_resnet_heatmap_upsampled_to_input_and_mode_restored():
    net = ResNetClassifier(3, 1, 2, num_blocks=3, channels=4)
    net.train()
    x = torch.randn(2, 1, 20, 24, 16)
    for method in ("gradcam", "monai_gradcam", "monai_gradcampp", "layercam"):
        hm = localise(net, x, method=method, target_layer="blocks.1")
        assert hm.shape == (2, 1, 20, 24, 16)
        assert net.training
    # MONAI and grad-cam implement the same Grad-CAM
    torch.testing.assert_close(localise(net, x, "gradcam", "blocks.1"), localise(net, x, "monai_gradcam", "blocks.1"),
                               atol=1e-4, rtol=1e-4)


def test_known_dice_and_masks():
    pred = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    true = torch.zeros_like(pred)
    pred[..., 0:2, 0:2] = 1  # 4 pixels
    true[..., 0:2, 0:4] = 1  # 8 pixels, overlap 4
    assert float(cam_dice(pred, true)[0]) == pytest.approx(2 * 4 / 12)
    heat = torch.zeros(1, 8, 8)
    heat[0, 1:3, 1:3] = 1.0
    heat[0, 6, 6] = 0.9  # a second, smaller blob
    assert int(cam_to_mask(heat, 0.5).sum()) == 5
    assert int(cam_to_mask(heat, 0.5, largest_component=True).sum()) == 4
    assert int(cam_to_mask(heat, mode="otsu").sum()) == 5


def test_select_threshold_finds_the_right_fraction():
    size = (32, 32)
    masks = torch.stack([torch.as_tensor(ball_mask(size, (16, 16), r))[None] for r in (5, 8)]).to(torch.uint8)
    # a cone peaking at the centre: the right cut is where the cone crosses the radius
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    dist = ((yy - 16) ** 2 + (xx - 16) ** 2).sqrt()
    heat = torch.stack([(1 - dist / (2 * r)).clamp_min(0)[None] for r in (5, 8)])
    rule = select_threshold(heat, masks, modes=("fraction",))
    assert rule["threshold"] == pytest.approx(0.5, abs=0.05) and rule["dice"] > 0.95


@pytest.mark.parametrize(
    "call, word",
    [
        (lambda m: get_cam_method("nosuchcam", m, "features"), "nosuchcam"),
        (lambda m: get_cam_method("gradcam", m, "blocks.99"), "blocks.99"),
        (lambda m: cam_to_mask(torch.ones(1, 4, 4), 1.5), "threshold"),
        (lambda m: cam_to_mask(torch.ones(1, 4, 4), 0.5, mode="median"), "median"),
        (lambda m: localise(m, torch.ones(1, 1, 8), "gradcam", "features"), "shape"),
    ],
)
def test_bad_input(call, word):
    with pytest.raises(ValueError, match=word):
        call(PassThroughClassifier(2))


def test_cam_dice_handler_in_an_ignite_evaluation(tmp_path):
    from ignite.engine import Engine

    from medcnn.handlers.cam import CAMDiceHandler

    model = PassThroughClassifier(2)
    images, masks = _disk_images(2)
    batches = [
        {"image": images, "mask": masks, "label": torch.tensor([1, 1]), "id": ["a", "b"]},
        # decollated (MONAI) form, with a negative image that must not count in the Dice
        [{"image": images[0], "mask": masks[0] * 0, "label": torch.tensor(0), "id": "c"}],
    ]
    # evaluator output: class probabilities per item; "c" is predicted negative -> its saved mask is empty
    engine = Engine(lambda e, b: [{"pred": torch.tensor([0.1, 0.9])}] * 2 if isinstance(b, dict)
                    else [{"pred": torch.tensor([0.9, 0.1])}])
    handler = CAMDiceHandler(model, method="gradcam", target_layer="features", threshold=0.5,
                             output_dir=tmp_path, calibration_data=[
                                 {"image": images[i], "mask": masks[i], "label": 1} for i in range(2)])
    handler.attach(engine)
    engine.run(batches, max_epochs=1)
    m = engine.state.metrics
    assert m["cam_n_images"] == 2 and m["cam_dice"] > 0.95
    assert m["cam_method"] == "gradcam" and m["cam_layer"] == "features" and 0 < m["cam_threshold"] <= 1
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["a.png", "b.png", "c.png"]
    records = {r["id"]: r for r in json.loads((tmp_path / "localisation.json").read_text())["images"]}
    assert records["c"]["mask_voxels"] == 0 and records["a"]["mask_voxels"] > 0
    assert records["a"]["dice"] > 0.95 and records["c"]["dice"] is None


def test_cam_dice_handler_hands_every_heatmap_it_computed_to_the_evaluator_output():
    """With ``output_key`` every image's heatmap (negatives too) joins its output item, as scored: the PDF report
    draws that CAM instead of computing another."""
    from ignite.engine import Engine

    from medcnn.handlers.cam import CAMDiceHandler

    model = PassThroughClassifier(2)
    images, masks = _disk_images(2)
    batch = [{"image": images[0], "mask": masks[0], "label": torch.tensor(1)},
             {"image": images[1], "mask": masks[1] * 0, "label": torch.tensor(0)}]
    engine = Engine(lambda e, b: [{"pred": torch.tensor([0.1, 0.9])}, {"pred": torch.tensor([0.9, 0.1])}])
    handler = CAMDiceHandler(model, method="gradcam", target_layer="features", threshold=0.5, output_key="cam")
    handler.attach(engine)
    engine.run([batch], max_epochs=1)
    expected = localise(model, images, method="gradcam", target_layer="features", class_idx=1)
    for item, heat in zip(engine.state.output, expected, strict=True):
        assert item["cam"].shape == (1, 32, 32)
        torch.testing.assert_close(item["cam"], heat)
    assert engine.state.metrics["cam_n_images"] == 1  # only the positive image is scored
    collated = Engine(lambda e, b: {"pred": torch.tensor([[0.1, 0.9], [0.9, 0.1]])})
    handler.attach(collated)
    with pytest.raises(ValueError, match="output_key needs the evaluator's decollated output"):
        collated.run([batch], max_epochs=1)


def test_cam_dice_handler_scores_on_the_native_mask_grid():
    """With native_mask_key the heatmap (network grid, 32 x 32) is resized to the native mask (64 x 64) and scored
    there: the network-grid mask (here deliberately empty) is not used."""
    from ignite.engine import Engine

    from medcnn.handlers.cam import CAMDiceHandler

    images, masks = _disk_images(2)
    native = torch.nn.functional.interpolate(masks.float(), scale_factor=2, mode="nearest").to(torch.uint8)
    batch = {"image": images, "mask": masks * 0, "mask_native": native, "label": torch.tensor([1, 1]),
             "patient": ["p1", "p2"]}
    engine = Engine(lambda e, b: [{"pred": torch.tensor([0.1, 0.9])}] * 2)
    handler = CAMDiceHandler(PassThroughClassifier(2), method="gradcam", target_layer="features", threshold=0.5,
                             native_mask_key="mask_native", group_key="patient")
    handler.attach(engine)
    engine.run([batch], max_epochs=1)
    m = engine.state.metrics
    assert m["cam_n_images"] == 2 and m["cam_dice"] > 0.9, m["cam_dice"]
    assert set(m["cam_dice_per_patient"]) == {"p1", "p2"}


def test_localise_items_resizes_heatmaps_to_a_native_mask():
    from medcnn.localisation import calibrate_cam, localise_items

    images, masks = _disk_images(2)
    native = torch.nn.functional.interpolate(masks.float(), scale_factor=2, mode="nearest").to(torch.uint8)
    data = [{"image": images[i], "mask_native": native[i], "label": 1} for i in range(2)]
    res = localise_items(PassThroughClassifier(2), data, "gradcam", "features", keys=("image", "label", "mask_native"))
    assert tuple(res["heatmaps"].shape) == tuple(res["masks"].shape) == (2, 1, 64, 64)
    rule = calibrate_cam(PassThroughClassifier(2), data, "gradcam", "features", keys=("image", "label", "mask_native"))
    assert rule["dice"] > 0.9


def test_smoothing_before_the_threshold_recovers_a_region_under_a_speckle_peak():
    """A one-pixel spike dominates the max: without smoothing 0.5 x max keeps the spike only; a Gaussian of 2 px
    spreads the spike and keeps the broad disk, and select_threshold finds that rule."""
    from medcnn.localisation import select_threshold

    images, masks = _disk_images(2, 1)
    heat = images.clone() * 0.4
    heat[0, 0, 28, 28] = 1.0  # speckle far from the disk
    plain = cam_to_mask(heat, 0.5, "fraction", True)
    smoothed = cam_to_mask(heat, 0.5, "fraction", True, smooth_sigma=2.0)
    assert float(cam_dice(plain, masks)[0]) < 0.1
    assert float(cam_dice(smoothed, masks)[0]) > 0.8
    rule = select_threshold(heat, masks, modes=("fraction",), fractions=(0.5,), largest_component=True,
                            smooth_sigmas=(0.0, 2.0))
    assert rule["smooth_sigma"] == 2.0 and rule["dice"] > 0.8
    with pytest.raises(ValueError, match="smooth_sigma"):
        cam_to_mask(heat, 0.5, smooth_sigma=-1.0)
