import pytest
import torch

from medcnn.networks import ClassicCNN, ResNetClassifier, small_image_classifier


@pytest.mark.parametrize(
    "dims,size,in_ch,out_ch",
    [(2, (28, 28), 1, 2), (2, (32, 24), 3, 5), (3, (16, 16, 16), 1, 2)],
)
def test_output_shape(dims, size, in_ch, out_ch):
    net = ClassicCNN(dims, in_ch, out_ch, spatial_size=size, channels=(4, 4, 8, 8, 8), hidden=16).eval()
    assert net(torch.randn(3, in_ch, *size)).shape == (3, out_ch)


def test_recipe_layers_and_init():
    net = ClassicCNN()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    pools = [m for m in net.modules() if isinstance(m, torch.nn.MaxPool2d)]
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    drops = [m for m in net.modules() if isinstance(m, (torch.nn.Dropout, torch.nn.Dropout2d))]
    assert (len(convs), len(pools), len(linears)) == (5, 3, 2)
    assert all(d.p == 0.25 for d in drops) and len(drops) == 4
    assert sum(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)) for m in net.modules()) == 6
    # Kaiming normal (fan_in, ReLU): std = sqrt(2 / fan_in)
    w = net.features.block3.conv.weight
    assert w.std().item() == pytest.approx((2 / (16 * 9)) ** 0.5, rel=0.1)
    assert net.cam_target_layer_name == "features.block5"
    assert "features.block5" in net.cam_layer_names()


def test_torchscript_matches_eager():
    net = ClassicCNN(channels=(4, 4, 8, 8, 8), hidden=16).eval()
    x = torch.randn(2, 1, 28, 28)
    scripted = torch.jit.script(net)
    assert torch.allclose(scripted(x), net(x), atol=1e-6)


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        ({"spatial_dims": 1}, "spatial_dims"),
        ({"channels": (8, 8)}, "5 convolution widths"),
        ({"spatial_size": (28, 28, 28)}, "dimensions"),
        ({"spatial_size": 4}, "too small"),
        ({"dropout": 1.0}, "dropout"),
        ({"cam_layer": "nope"}, "cam_layer"),
    ],
)
def test_bad_parameters(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        ClassicCNN(**kwargs)


def test_wrong_input_size_is_named():
    net = ClassicCNN(channels=(4, 4, 8, 8, 8), hidden=16).eval()
    with pytest.raises(ValueError, match=r"expected input \(B, 1, \[28, 28\]\)"):
        net(torch.randn(1, 1, 32, 32))


def test_selection_by_name():
    assert isinstance(small_image_classifier("classic_cnn"), ClassicCNN)
    resnet = small_image_classifier("resnet").eval()
    assert isinstance(resnet, ResNetClassifier)
    assert resnet(torch.randn(2, 1, 28, 28)).shape == (2, 2)
    with pytest.raises(ValueError, match="unknown network name"):
        small_image_classifier("vgg")
