"""medcnn.weak: refinement steps with known answers, pseudo-mask files + provenance, bad inputs, and the
"no pixel label of a training image is read" property."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from medcnn.data.synthetic import synthetic_datalist
from medcnn.localisation import CAMRule
from medcnn.losses import PixelWeightedDiceCELoss
from medcnn.networks import ResNetClassifier
from medcnn.weak import (
    DenseCRF,
    IgnoreBand,
    PseudoMaskGenerator,
    PseudoMaskRefiner,
    build_refiners,
    compute_pseudo_masks,
    file_sha256,
    load_classifier,
    pseudo_mask_datalist,
    pseudo_mask_quality,
    refine,
)

SYNTH = {"spatial_size": (32, 32), "radius_range": (4.0, 8.0), "contrast": 3.0}
RULE = CAMRule(method="gradcam", target_layer="blocks.0", threshold=0.4)


def _square(size: int = 24, lo: int = 8, hi: int = 16) -> torch.Tensor:
    m = torch.zeros(1, size, size, dtype=torch.uint8)
    m[0, lo:hi, lo:hi] = 1
    return m


def test_dense_crf_snaps_a_shifted_mask_to_the_object():
    true = _square()
    image = true.float() * 4.0  # a noise-free bright square
    shifted = torch.roll(true, shifts=(2, 2), dims=(1, 2))  # the CAM region misses the object by 2 pixels
    weight = torch.ones(1, 24, 24)
    out, w = DenseCRF(iterations=10, confidence=0.6, spatial_sigma=8.0, intensity_sigma=0.5,
                      appearance_weight=5.0)(image, shifted.float(), shifted, weight)
    assert torch.equal(out, true)
    assert torch.equal(w, weight)
    # an empty mask stays empty (nothing to refine)
    empty = torch.zeros_like(true)
    assert int(DenseCRF()(image, empty.float(), empty, weight)[0].sum()) == 0


def test_dense_crf_3d_keeps_a_correct_mask():
    true = torch.zeros(1, 12, 12, 12, dtype=torch.uint8)
    true[0, 3:8, 3:8, 3:8] = 1
    out, _ = DenseCRF()(true.float() * 3, true.float(), true, torch.ones(1, 12, 12, 12))
    assert torch.equal(out, true)


def test_ignore_band_known_pixels():
    mask = torch.zeros(1, 9, 9, dtype=torch.uint8)
    mask[0, 3:6, 3:6] = 1
    heat = torch.zeros(1, 9, 9)
    heat[0, 0, 0] = 0.5  # inside the heatmap band
    _, w = IgnoreBand(width=1)(torch.zeros(1, 9, 9), heat, mask, torch.ones(1, 9, 9))
    expected = torch.ones(1, 9, 9)
    expected[0, 2:7, 2:7] = 0  # one pixel either side of the boundary ...
    expected[0, 4, 4] = 1  # ... except the square's centre
    assert torch.equal(w, expected)
    m2, w2 = IgnoreBand(width=0, heatmap_low=0.3, heatmap_high=0.6)(torch.zeros(1, 9, 9), heat, mask,
                                                                      torch.ones(1, 9, 9))
    assert torch.equal(m2, mask) and float(w2.sum()) == 80 and float(w2[0, 0, 0]) == 0


def test_refiner_specs_and_chain():
    steps = build_refiners([{"name": "dense_crf", "iterations": 2}, {"name": "ignore_band", "width": 1}])
    assert [s.describe()["name"] for s in steps] == ["dense_crf", "ignore_band"]
    with pytest.raises(ValueError, match="step 0: unknown name 'crf'"):
        build_refiners([{"name": "crf"}])
    with pytest.raises(ValueError, match="confidence"):
        DenseCRF(confidence=0.4)
    mask = _square()
    m, w = refine(steps, mask.float() * 4, mask.float(), mask)
    assert torch.equal(m, mask) and float(w.sum()) < 24 * 24


def test_masked_dice_loss_ignores_weight_zero_pixels():
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 8, 8)
    label = (torch.rand(2, 1, 8, 8) > 0.5).float()
    weight = torch.ones(2, 1, 8, 8)
    weight[:, :, :3] = 0
    loss = PixelWeightedDiceCELoss(mask_dice=True)
    changed = logits.clone()
    changed[:, :, :3] = torch.randn(2, 2, 3, 8) * 10  # any prediction in the ignored rows
    a = loss(logits, torch.cat([label, weight], 1))
    b = loss(changed, torch.cat([label, weight], 1))
    torch.testing.assert_close(a, b)
    # without the mask the Dice term does see them
    plain = PixelWeightedDiceCELoss()
    target = torch.cat([label, weight], 1)
    assert not torch.isclose(plain(logits, target), plain(changed, target))


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A small 2D classifier trained a few steps on synthetic circles, and its weights file."""
    torch.manual_seed(0)
    net = ResNetClassifier(spatial_dims=2, in_channels=1, num_classes=2, num_blocks=2, channels=8, strides=[2, 1],
                           cam_layer="blocks.0")
    data = synthetic_datalist(32, 5, **SYNTH)
    x = torch.stack([torch.as_tensor(d["image"]) for d in data])
    y = torch.tensor([d["label"] for d in data])
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(15):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    path = tmp_path_factory.mktemp("clf") / "classifier.pt"
    torch.save(net.state_dict(), path)
    return net.eval(), path


def _gen(classifier, data, out, **kw):
    net, path = classifier
    kw.setdefault("rule", RULE)
    return PseudoMaskGenerator(net, path, data, out, progress=False, **kw)


def test_generator_writes_masks_with_provenance_and_never_overwrites(classifier, tmp_path):
    data = synthetic_datalist(8, 0, **SYNTH)
    prov = _gen(classifier, data, tmp_path / "pm", refinement=[{"name": "ignore_band", "width": 1}]).run()
    assert prov["classifier"]["sha256"] == file_sha256(classifier[1])
    assert prov["rule"] == RULE.to_dict() and prov["refinement"][0]["name"] == "ignore_band"
    assert prov["n_images"] == 8 and prov["n_positive"] == 4 and prov["images_per_second"] > 0
    on_disk = json.loads((tmp_path / "pm" / "pseudo_masks.json").read_text())
    assert on_disk["created"] == prov["created"]
    items = pseudo_mask_datalist(tmp_path / "pm")
    for it, d in zip(items, data, strict=True):
        mask = nib.load(it["label"]).get_fdata()
        assert mask.shape == (32, 32) and it["class"] == d["label"]
        if d["label"] == 0:
            assert not mask.any() and nib.load(it["weight"]).get_fdata().min() == 1
        np.testing.assert_allclose(nib.load(it["image"]).get_fdata(), d["image"][0], atol=1e-6)
    # the CAM masks of this classifier overlap the circles (a figure, not only "it ran")
    quality = pseudo_mask_quality(
        [{"class": it["class"], "label": torch.as_tensor(nib.load(it["label"]).get_fdata())[None],
          "weight": torch.as_tensor(nib.load(it["weight"]).get_fdata())[None]} for it in items],
        [d["mask"] for d in data])
    assert quality["dice"] > 0.3
    before = (tmp_path / "pm" / items[0]["label"]).read_bytes()
    with pytest.raises(FileExistsError, match="already exist.*overwrite"):
        _gen(classifier, data, tmp_path / "pm").run()
    assert (tmp_path / "pm" / items[0]["label"]).read_bytes() == before
    _gen(classifier, data, tmp_path / "pm", overwrite=True).run()


def test_no_pixel_label_of_a_training_image_is_read(classifier, tmp_path):
    """Scrambled, deleted or unreadable training masks give identical pseudo-masks."""
    data = synthetic_datalist(8, 3, **SYNTH)
    rng = np.random.default_rng(0)
    scrambled = [{**d, "mask": rng.permutation(d["mask"].reshape(-1)).reshape(d["mask"].shape)} for d in data]
    deleted = [{k: v for k, v in d.items() if k != "mask"} for d in data]
    # file-based training set whose mask files do not exist (and a corrupt one)
    files = []
    for d in data:
        p = tmp_path / f"{d['id']}.nii.gz"
        nib.save(nib.Nifti1Image(d["image"][0], np.diag([0.5, 0.5, 1.0, 1.0])), p)
        files.append({"image": str(p), "label": d["label"], "id": d["id"], "mask": str(tmp_path / "gone.nii.gz")})
    (tmp_path / "corrupt.nii.gz").write_bytes(b"not a nifti")
    files[0]["seg"] = str(tmp_path / "corrupt.nii.gz")
    outputs = []
    for name, items in (("orig", data), ("scrambled", scrambled), ("deleted", deleted), ("files", files)):
        _gen(classifier, items, tmp_path / name).run()
        outputs.append([nib.load(e["label"]).get_fdata() for e in pseudo_mask_datalist(tmp_path / name)])
    for other in outputs[1:]:
        for a, b in zip(outputs[0], other, strict=True):
            np.testing.assert_array_equal(a, b)
    # the image geometry is kept
    entry = pseudo_mask_datalist(tmp_path / "files")[0]
    np.testing.assert_allclose(nib.load(entry["label"]).affine, np.diag([0.5, 0.5, 1.0, 1.0]))


def test_bad_inputs_fail_before_any_file_is_written(classifier, tmp_path):
    net, path = classifier
    data = synthetic_datalist(6, 0, **SYNTH)
    out = tmp_path / "pm"
    with pytest.raises(ValueError, match="target_layer.*'blocks.7'"):
        _gen(classifier, data, out, rule=CAMRule(target_layer="blocks.7")).run()
    other = ResNetClassifier(spatial_dims=2, in_channels=1, num_classes=2, num_blocks=3, channels=8)
    with pytest.raises(ValueError, match=f"classifier weights {path} do not match"):
        load_classifier(other, path)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=f"classifier weights {bad}: not a readable"):
        PseudoMaskGenerator(net, bad, data, out, RULE).run()
    negatives = [{**d, "label": 0} for d in data]
    with pytest.raises(ValueError, match="no positive images"):
        _gen(classifier, negatives, out).run()
    with pytest.raises(ValueError, match="training item synthetic_s0_00000: no image-level label"):
        _gen(classifier, [{k: v for k, v in d.items() if k != "label"} for d in data], out).run()

    class Eraser(PseudoMaskRefiner):
        name = "eraser"

        def __call__(self, image, heatmap, mask, weight):
            return torch.zeros_like(mask), weight

    with pytest.raises(ValueError, match="all 3 positive images got an empty mask"):
        _gen(classifier, data, out, refinement=[Eraser()]).run()
    assert not out.exists()


def test_compute_pseudo_masks_3d(tmp_path):
    torch.manual_seed(0)
    net = ResNetClassifier(spatial_dims=3, in_channels=1, num_classes=2, num_blocks=2, channels=4, strides=[2, 1],
                           cam_layer="blocks.0").eval()
    data = synthetic_datalist(2, 0, spatial_size=(16, 16, 16), radius_range=(3.0, 5.0))
    records = list(compute_pseudo_masks(net, data, RULE, [{"name": "dense_crf", "iterations": 2}]))
    assert [r["label"].shape for r in records] == [(1, 16, 16, 16)] * 2
    assert sum(int(r["label"].sum()) for r in records if r["class"] == 0) == 0


class _FixedSegmenter(torch.nn.Module):
    """A 'segmenter' whose tumour logit is +4 inside a known square of every image whose mean is > 0, -4 elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        logit = torch.full((x.shape[0], 1, *x.shape[2:]), -4.0)
        for i in range(x.shape[0]):
            if float(x[i].mean()) > 0:
                logit[i, :, 8:16, 8:16] = 4.0
        return torch.cat([torch.zeros_like(logit), logit * self.scale], 1)


PROB_RULE = CAMRule(method="segmenter_softmax", threshold=0.5, mode="probability", decision_threshold=None)


def test_a_second_round_takes_the_segmenters_probability_as_the_mask():
    """heatmap='segmenter': positives get softmax >= 0.5 of the segmenter, negatives stay empty, and a positive whose
    mask is empty is ignored (weight 0) only when asked."""
    seg = _FixedSegmenter()
    items = [{"image": torch.ones(1, 24, 24), "label": 1, "id": "found"},
             {"image": -torch.ones(1, 24, 24), "label": 1, "id": "missed"},
             {"image": torch.ones(1, 24, 24), "label": 0, "id": "negative"}]
    for ignore in (False, True):
        found, missed, negative = compute_pseudo_masks(seg, items, PROB_RULE, heatmap="segmenter",
                                                       ignore_empty_positives=ignore)
        torch.testing.assert_close(found["label"], _square())
        assert float(found["cam"][0, 10, 10]) == pytest.approx(torch.sigmoid(torch.tensor(4.0)).item(), abs=1e-6)
        assert found["weight"].min() == 1 and not negative["label"].any() and negative["weight"].min() == 1
        assert not missed["label"].any()
        assert float(missed["weight"].max()) == (0.0 if ignore else 1.0)


def test_a_second_round_refuses_a_rule_or_source_it_cannot_apply(tmp_path):
    from medcnn.weak import previous_round_segmenter

    seg, items = _FixedSegmenter(), [{"image": torch.ones(1, 24, 24), "label": 1, "id": "a"}]
    with pytest.raises(ValueError, match="mode='probability'"):
        list(compute_pseudo_masks(seg, items, CAMRule(threshold=0.5), heatmap="segmenter"))
    with pytest.raises(ValueError, match="unknown heatmap source 'softmax'"):
        list(compute_pseudo_masks(seg, items, PROB_RULE, heatmap="softmax"))
    with pytest.raises(ValueError, match="probability in \\(0, 1\\], got 1.5"):
        CAMRule(mode="probability", threshold=1.5)
    with pytest.raises(ValueError, match="needs --previous_round"):
        previous_round_segmenter(None, tmp_path / "r2")
    with pytest.raises(ValueError, match=f"--previous_round {tmp_path} is \\(in\\) this run's --output_dir"):
        previous_round_segmenter(tmp_path, tmp_path)
    missing = tmp_path / "r1" / "segmenter" / "model_segmenter.pt"
    with pytest.raises(FileNotFoundError, match=f"no segmenter {missing}"):
        previous_round_segmenter(tmp_path / "r1", tmp_path / "r2")
    (tmp_path / "r1" / "segmenter").mkdir(parents=True)
    (tmp_path / "r1" / "segmenter" / "model_segmenter.pt").write_bytes(b"x")
    assert previous_round_segmenter(tmp_path / "r1", tmp_path / "r2") == (tmp_path / "r1" / "segmenter" /
                                                                          "model_segmenter.pt").resolve()
    # a checkpoint file is taken as it is (a bundle's committed segmenter), unless the new round would write over it
    committed = tmp_path / "models" / "model_segmenter.pt"
    committed.parent.mkdir()
    committed.write_bytes(b"x")
    assert previous_round_segmenter(committed, tmp_path / "r2") == committed.resolve()
    with pytest.raises(ValueError, match="is \\(in\\) this run's --output_dir"):
        previous_round_segmenter(committed, tmp_path / "models")


def test_probability_mode_thresholds_the_value_not_the_fraction_of_the_peak():
    from medcnn.localisation import cam_to_mask

    unsure = torch.zeros(1, 8, 8)
    unsure[0, 2:4, 2:4] = 0.4  # the segmenter never reaches 0.5: nothing is tumour
    assert not cam_to_mask(unsure, 0.5, mode="probability").any()
    assert int(cam_to_mask(unsure, 0.5, mode="fraction").sum()) == 4  # relative to its own peak it would be
    unsure[0, 5, 5] = 0.5
    assert cam_to_mask(unsure, 0.5, mode="probability").nonzero().tolist() == [[0, 5, 5]]
