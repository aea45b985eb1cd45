"""The segmentation network registry: every entry in 2D and 3D, deep supervision, bad names."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SlidingWindowInferer
from monai.losses import DiceCELoss

from medcnn.networks import (
    SEGMENTATION_NETWORKS,
    SEGMENTATION_NETWORKS_3D,
    DihedralEnsembleInferer,
    FlipEnsembleInferer,
    build_segmentation_network,
    deep_supervision_loss,
    segmentation_divisor,
)


def _size(name: str, dims: int) -> tuple[int, ...]:
    d = segmentation_divisor(name)
    side = max(d, 16)
    return (side,) * dims if dims == 2 else (side, side + d, side)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", SEGMENTATION_NETWORKS)
def test_output_shape(name: str, dims: int) -> None:
    kw = {"backbone": "resnet10", "decoder_channels": (16, 16, 8, 8, 8)} if name == "flexible_unet" else {}
    if name == "resnext_unet" and dims == 3:  # torchvision's ResNeXt is 2D only: refused with a clear error
        with pytest.raises(ValueError, match="2D only"):
            build_segmentation_network(name, spatial_dims=3, in_channels=2, out_channels=3)
        return
    net = build_segmentation_network(name, spatial_dims=dims, in_channels=2, out_channels=3, **kw)
    x = torch.randn(2, 2, *_size(name, dims))
    net.train()
    out = net(x)
    if name == "segresnet_ds":
        assert isinstance(out, list) and len(out) > 1
        assert out[0].shape == (2, 3, *x.shape[2:])
        assert out[1].shape[2:] == tuple(s // 2 for s in x.shape[2:])
    else:
        assert isinstance(out, torch.Tensor) and out.shape == (2, 3, *x.shape[2:])
    net.eval()
    with torch.no_grad():
        out = net(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, *x.shape[2:])
    assert torch.isfinite(out).all()


def test_deep_supervision_loss_trains_segresnet_ds() -> None:
    torch.manual_seed(0)
    net = build_segmentation_network("segresnet_ds", 3, 1, 3, init_filters=8)
    loss_fn = deep_supervision_loss(DiceCELoss(to_onehot_y=True, softmax=True))
    x = torch.randn(2, 1, 16, 16, 16)
    y = (x > 0.5).long() + (x > 1.0).long()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    # the same wrapper accepts the plain eval-mode tensor
    net.eval()
    with torch.no_grad():
        assert torch.isfinite(loss_fn(net(x), y))


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError) as err:
        build_segmentation_network("vnet_xl", 3, 1, 2)
    for name in SEGMENTATION_NETWORKS:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="valid names"):
        segmentation_divisor("nope")


def test_bad_spatial_dims_and_pretrained() -> None:
    with pytest.raises(ValueError, match="spatial_dims"):
        build_segmentation_network("unet", 4, 1, 2)
    with pytest.raises(ValueError, match="pretrained"):
        build_segmentation_network("flexible_unet", 2, 1, 2, pretrained=True)
    with pytest.raises(ValueError, match="pretrained"):
        build_segmentation_network("resnext_unet", 2, 1, 2, pretrained=True)


def test_overrides_and_divisor() -> None:
    net = build_segmentation_network("unet", 3, 1, 3, channels=(8, 16), strides=(2,))
    assert segmentation_divisor("unet", strides=(2,)) == 2
    assert net(torch.randn(1, 1, 6, 6, 6)).shape == (1, 3, 6, 6, 6)
    assert segmentation_divisor("segresnet") == 8
    assert "flexible_unet" in SEGMENTATION_NETWORKS and "flexible_unet" not in SEGMENTATION_NETWORKS_3D
    # names are case/dash tolerant, as a command-line override might spell them
    assert isinstance(build_segmentation_network("SegResNet", 2, 1, 2), torch.nn.Module)


def _asymmetric_net() -> torch.nn.Module:
    """A conv net with no rotational symmetry, so a single view depends on the input's orientation."""
    torch.manual_seed(0)
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1))


@pytest.mark.parametrize("activation", [None, "softmax"])
def test_dihedral_ensemble_is_rotation_and_mirror_equivariant(activation) -> None:
    net = _asymmetric_net().eval()
    ens = DihedralEnsembleInferer(activation=activation)
    x = torch.randn(2, 1, 24, 24)
    with torch.no_grad():
        out = ens(x, net)
        single = net(x)
        assert out.shape == single.shape
        assert not torch.allclose(torch.rot90(net(torch.rot90(x, 1, (2, 3))), -1, (2, 3)), single, atol=1e-4)
        assert torch.allclose(torch.rot90(ens(torch.rot90(x, 1, (2, 3)), net), -1, (2, 3)), out, atol=1e-5)
        assert torch.allclose(torch.flip(ens(torch.flip(x, (3,)), net), (3,)), out, atol=1e-5)
    if activation == "softmax":
        assert torch.allclose(out.sum(1), torch.ones(2, 24, 24), atol=1e-5)


def test_ensembles_wrap_a_sliding_window_and_reject_bad_planes() -> None:
    net = _asymmetric_net().eval()
    x = torch.randn(1, 1, 40, 40)
    sw = SlidingWindowInferer(roi_size=(16, 16), sw_batch_size=4, overlap=0.5)
    with torch.no_grad():
        dihedral = DihedralEnsembleInferer(base_inferer=sw)(x, net)
        flips = FlipEnsembleInferer(spatial_axes=(0, 1), base_inferer=sw)(x, net)
    assert dihedral.shape == flips.shape == (1, 2, 40, 40)
    with pytest.raises(ValueError, match="plane"):
        DihedralEnsembleInferer(plane=(1, 1))
    with pytest.raises(ValueError, match="activation"):
        DihedralEnsembleInferer(activation="relu")
