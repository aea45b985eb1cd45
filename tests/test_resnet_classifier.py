"""ResNetClassifier: 2D/3D output shapes, small inputs, CAM target layer, TorchScript, bad parameters."""

from __future__ import annotations

import pytest
import torch

from medcnn.networks import ResNetClassifier


@pytest.mark.parametrize(
    "dims, size, kwargs",
    [
        (2, (64, 64), {}),
        (2, (28, 28), {"num_blocks": 4}),
        (2, (28, 28), {}),  # 8 blocks on 28x28: feature map stays at 1x1 once reached
        (3, (24, 24, 24), {"num_blocks": 3, "channels": 4}),
    ],
)
def test_output_shape(dims, size, kwargs):
    net = ResNetClassifier(dims, in_channels=2, num_classes=3, **kwargs)
    out = net(torch.randn(2, 2, *size))
    assert out.shape == (2, 3)
    assert torch.isfinite(out).all()


def test_cam_target_layer_and_stride():
    net = ResNetClassifier(2, 1, 2, num_blocks=4, channels=8, cam_layer="blocks.1")
    assert net.cam_target_layer is net.blocks[1]
    assert "blocks.1.identity" in net.cam_layer_names()
    feats = {}
    handle = net.cam_target_layer.register_forward_hook(lambda m, i, o: feats.setdefault("x", o))
    net.eval()
    net(torch.randn(1, 1, 64, 64))
    handle.remove()
    assert feats["x"].shape == (1, 16, 16, 16)  # stride 4 at blocks.1


def test_kaiming_init_and_channels():
    net = ResNetClassifier(2, 1, 2, num_blocks=3, channels=[4, 8, 8])
    assert net.channels == (4, 8, 8)
    w = net.blocks[0].conv.conv.weight
    # kaiming normal, fan_out = 4 * 3 * 3 -> std = sqrt(2 / 36)
    assert abs(float(w.detach().std()) - (2 / 36) ** 0.5) < 0.15


@pytest.mark.parametrize("dims", [2, 3])
def test_zero_init_residual_starts_every_identity_block_as_the_identity(dims):
    torch.manual_seed(0)
    net = ResNetClassifier(dims, 1, 2, num_blocks=3, channels=4, zero_init_residual=True).train()
    for block in net.blocks:
        assert float(block.identity.norm.weight.abs().sum()) == 0.0
        x = torch.randn(2, block.identity.norm.weight.numel(), *([8] * dims))
        torch.testing.assert_close(block.identity(x), torch.relu(x))  # act(x + 0)
        assert float(block.conv.adn.N.weight.min()) == 1.0  # the strided convolution's norm is untouched
    default = ResNetClassifier(dims, 1, 2, num_blocks=3, channels=4)
    assert all(float(b.identity.norm.weight.min()) == 1.0 for b in default.blocks)  # the study's network unchanged
    torch.jit.script(net.eval())  # still exportable


def test_zero_init_residual_without_a_norm_is_refused():
    with pytest.raises(ValueError, match="zero_init_residual needs a normalisation"):
        ResNetClassifier(2, 1, 2, num_blocks=2, channels=4, norm=None, zero_init_residual=True)


def test_torchscript_matches_eager():
    net = ResNetClassifier(2, 1, 2, num_blocks=3, channels=4).eval()
    x = torch.randn(2, 1, 32, 32)
    scripted = torch.jit.script(net)
    torch.testing.assert_close(scripted(x), net(x))


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"spatial_dims": 4}, "spatial_dims"),
        ({"num_blocks": 0}, "num_blocks"),
        ({"channels": [4, 8]}, "channels"),
        ({"strides": [2, 2, 0, 2, 2, 2, 2, 2]}, "strides"),
        ({"dropout": 1.5}, "dropout"),
        ({"cam_layer": "blocks.99"}, "cam_layer"),
    ],
)
def test_bad_parameters(kwargs, word):
    args = {"spatial_dims": 2, "in_channels": 1, "num_classes": 2, **kwargs}
    with pytest.raises(ValueError, match=word):
        ResNetClassifier(**args)


@pytest.mark.parametrize("channels", [8, 7])
def test_paired_stem_gives_every_first_filter_an_opposite_and_draws_everything_else_as_before(channels):
    kwargs = dict(spatial_dims=2, in_channels=3, num_classes=2, num_blocks=3, channels=channels)
    torch.manual_seed(1)
    plain = ResNetClassifier(**kwargs)
    torch.manual_seed(1)
    paired = ResNetClassifier(**kwargs, paired_stem=True)
    stem = "blocks.0.conv.conv.weight"
    names = [n for n, p in paired.named_parameters() if p.ndim == 4]
    assert names[0] == stem  # the stride-2 convolution on the input is the first convolution
    w, w0 = dict(paired.named_parameters())[stem], dict(plain.named_parameters())[stem]
    half = channels // 2
    assert torch.equal(w[:half], w0[:half]) and torch.equal(w[half: 2 * half], -w0[:half])
    if channels % 2:
        assert torch.equal(w[-1], w0[-1])
    # both polarities of every input channel: for each filter that brightens with a channel, one that darkens
    response = w[: 2 * half].sum(dim=(2, 3))
    assert ((response > 0).sum(0) == half).all()
    for (name, a), (_, b) in zip(paired.state_dict().items(), plain.state_dict().items(), strict=True):
        if name != stem:
            assert torch.equal(a, b), name
