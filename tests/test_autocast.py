"""autocast_forward: the network computes in bfloat16, everything around it sees float32 and the same weights."""

from __future__ import annotations

import copy

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.losses import DiceCELoss
from monai.networks.nets import UNet

from medcnn.networks import autocast_disabled, autocast_dtype, autocast_forward, small_image_classifier
from tests.bundle_helpers import BUNDLES, bundle_root


def _unet(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(2, 1, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1, norm="batch")


def _conv_output_dtypes(net: torch.nn.Module, x: torch.Tensor) -> set[torch.dtype]:
    seen: set[torch.dtype] = set()
    handles = [m.register_forward_hook(lambda m, a, o: seen.add(o.dtype))
               for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    net(x)
    for h in handles:
        h.remove()
    return seen


def test_convolutions_run_in_bf16_and_the_output_is_float32_and_close():
    x = torch.randn(2, 1, 32, 32)
    plain = _unet().eval()
    fast = autocast_forward(copy.deepcopy(plain), "bf16")
    assert autocast_dtype(fast) == torch.bfloat16 and autocast_dtype(plain) is None
    assert _conv_output_dtypes(plain, x) == {torch.float32}
    assert _conv_output_dtypes(fast, x) == {torch.bfloat16}
    with torch.no_grad():
        a, b = plain(x), fast(x)
    assert b.dtype == torch.float32
    # bfloat16 keeps 8 bits of mantissa: the logits agree to about 1 % of their spread, not bit for bit
    assert float((a - b).abs().max()) < 0.05 * float(a.std())
    assert not torch.equal(a, b)
    assert not torch.is_autocast_enabled("cpu"), "the autocast context leaked out of forward"


def test_weights_and_state_dict_keys_are_unchanged_and_checkpoints_load_both_ways():
    plain = _unet()
    fast = autocast_forward(_unet(), "bf16")
    assert list(fast.state_dict()) == list(plain.state_dict())
    assert all(p.dtype == torch.float32 for p in fast.parameters())
    fast.load_state_dict(plain.state_dict())
    _unet(1).load_state_dict(fast.state_dict())


def test_off_values_return_the_network_untouched_and_bad_dtypes_are_named():
    net = _unet()
    for off in (None, False, "none", "None", "fp32", torch.float32):
        assert autocast_forward(net, off) is net and autocast_dtype(net) is None
    assert not net._forward_hooks and not net._forward_pre_hooks
    with pytest.raises(ValueError, match="'fp16' is not supported.*amp"):
        autocast_forward(net, "fp16")
    autocast_forward(net, "bf16")
    assert autocast_forward(net, "bfloat16") is net and len(net._forward_hooks) == 1  # not hooked twice


def test_a_forward_that_raises_leaves_no_autocast_behind():
    net = autocast_forward(_unet(), "bf16")
    with pytest.raises(RuntimeError):
        net(torch.randn(1, 3, 32, 32))  # 3 channels into a 1-channel network
    assert not torch.is_autocast_enabled("cpu")


def test_a_copy_has_hooks_of_its_own():
    net = autocast_forward(_unet(), "bf16")
    twin = copy.deepcopy(net)
    assert autocast_dtype(twin) == torch.bfloat16
    assert twin._medcnn_autocast is not net._medcnn_autocast
    assert _conv_output_dtypes(twin, torch.randn(1, 1, 32, 32)) == {torch.bfloat16}


def test_a_monai_trainer_trains_it_with_float32_gradients_and_a_falling_loss():
    net = autocast_forward(_unet(), "bf16")
    torch.manual_seed(0)
    images = torch.randn(8, 1, 32, 32)
    labels = (images > 0.8).float()  # a mask the network can learn from the image alone
    data = [{"image": images[i], "label": labels[i]} for i in range(8)]
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    losses: list[float] = []
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=15, train_data_loader=loader, network=net,
                                optimizer=torch.optim.Adam(net.parameters(), 1e-2),
                                loss_function=DiceCELoss(to_onehot_y=True, softmax=True))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: losses.append(float(e.state.output[0]["loss"])))
    trainer.run()
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in net.parameters())
    assert losses[-1] < 0.6 * losses[0], losses


def test_autocast_disabled_runs_float32_inside_and_restores_after():
    x = torch.randn(1, 1, 32, 32)
    net = autocast_forward(_unet().eval(), "bf16")
    with autocast_disabled(net):
        assert _conv_output_dtypes(net, x) == {torch.float32}
        with torch.no_grad():
            assert torch.allclose(net(x), _unet().eval()(x), atol=1e-6)
    assert _conv_output_dtypes(net, x) == {torch.bfloat16}
    with autocast_disabled(_unet()) as plain:  # a network without autocast: nothing to do
        assert autocast_dtype(plain) is None


@pytest.mark.parametrize("backend", ["onnxruntime", "torchscript"])
@pytest.mark.parametrize("make", [_unet, lambda: small_image_classifier("classic_cnn", 2, 1, 2, spatial_size=28)])
def test_exported_backends_of_an_autocast_network_are_the_float32_network(backend, make):
    """ONNX Runtime's CPU provider has no bfloat16 convolution, and a TorchScript trace recorded under autocast fails
    on Linear layers once frozen: both backends export the float32 network, the eager one keeps its autocast."""
    from medcnn.networks.export import backend_network

    x = torch.randn(2, 1, 32, 32) if make is _unet else torch.randn(3, 1, 28, 28)
    torch.manual_seed(0)
    net = autocast_forward(make().eval(), "bf16")
    reference = copy.deepcopy(net)
    with torch.no_grad(), autocast_disabled(reference):
        expected = reference(x)
        out = backend_network(net, backend)(x)
    assert out.dtype == torch.float32 and torch.allclose(out, expected, atol=1e-4)
    assert _conv_output_dtypes(net, x) == {torch.bfloat16}  # the eager network keeps its autocast


BUNDLE_NAMES = sorted(p.parent.parent.name for p in BUNDLES.glob("*/configs/train.json"))


@pytest.mark.parametrize("config", ["train.json", "inference.json"])
@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_every_bundle_takes_autocast_as_an_id_and_defaults_to_float32(bundle, config):
    """``--autocast bf16`` reaches the network every bundle trains and infers with; without it nothing changes."""
    from monai.bundle import ConfigParser

    root = bundle_root(bundle)
    for value, expected in ((None, None), ("bf16", torch.bfloat16)):
        parser = ConfigParser()
        parser.read_config(str(root / "configs" / config))
        parser.update({"bundle_root": str(root)} | ({"autocast": value} if value else {}))
        net = parser.get_parsed_content("network")
        assert autocast_dtype(net) == expected, (bundle, config, value)


def test_only_reduced_precision_outputs_are_cast_float64_stays_float64():
    class TwoOutputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 3)

        def forward(self, x):
            return {"logits": self.conv(x), "score": x.double().mean(), "index": torch.tensor([1])}

    out = autocast_forward(TwoOutputs(), "bf16")(torch.randn(1, 1, 8, 8))
    assert out["logits"].dtype == torch.float32  # bf16 inside, float32 out
    assert out["score"].dtype == torch.float64 and out["index"].dtype == torch.int64
