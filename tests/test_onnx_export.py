"""Every bundle's network, exported to ONNX and run by ONNX Runtime, equals the eager network within 1e-4."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from medcnn.networks.export import OnnxRuntimeNetwork, TorchScriptNetwork, backend_network

BUNDLES = sorted(p for p in (Path(__file__).resolve().parents[1] / "bundles").iterdir()
                 if (p / "configs" / "inference.json").is_file())
TOLERANCE = 1e-4  # float32 logits; measured max |difference| 1e-6 .. 1.3e-5


@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
def test_onnxruntime_equals_eager(bundle, tmp_path):
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    inp = next(iter(meta["network_data_format"]["inputs"].values()))
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    net = parser.get_parsed_content("network_def", instantiate=True)
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True))
    net.eval()
    channels = parser.get_parsed_content("network_def#in_channels") if isinstance(parser["network_def"], dict) \
        and "in_channels" in parser["network_def"] else inp["num_channels"]
    shape = [s if isinstance(s, int) else 32 for s in inp["spatial_shape"]]  # "8*n" sides: 32
    x = torch.randn(2, int(channels), *shape, generator=torch.Generator().manual_seed(0))
    runner = OnnxRuntimeNetwork(net, onnx_path=tmp_path / "model.onnx", num_threads=1)
    with torch.no_grad():
        eager = net(x)
        onnx = runner(x)
        again = runner(x[:1])  # dynamic batch axis: a second, smaller batch runs on the same session
    assert (tmp_path / "model.onnx").is_file()
    assert onnx.shape == eager.shape
    assert float((onnx - eager).abs().max()) < TOLERANCE
    assert float((again - eager[:1]).abs().max()) < TOLERANCE
    assert float((TorchScriptNetwork(net)(x) - eager).abs().max()) < TOLERANCE


def test_backend_names():
    net = torch.nn.Conv2d(1, 2, 3)
    assert backend_network(net, "torch") is net
    assert isinstance(backend_network(net, "onnxruntime"), OnnxRuntimeNetwork)
    with pytest.raises(ValueError, match="unknown inference backend 'tensorrt'"):
        backend_network(net, "tensorrt")
