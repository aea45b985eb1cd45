"""Inference backends: a bundle's network run eagerly, as TorchScript, or through ONNX Runtime.

:func:`backend_network` wraps a loaded ``torch.nn.Module`` so that any MONAI inferer (``SimpleInferer``,
``SlidingWindowInferer``, medcnn's flip / dihedral ensembles) calls it unchanged. ONNX export uses MONAI's
``monai.networks.utils.convert_to_onnx`` (the function behind ``python -m monai.bundle onnx_export``) with the
TorchScript-based exporter and dynamic batch and spatial axes, so one export serves every input size the network
accepts. The wrapper exports lazily, at its first call: inside a bundle the weights are loaded by the evaluator's
``CheckpointLoader`` after the network is built, so exporting earlier would freeze untrained weights.

In ``inference.json``::

    "backend": "torch",
    "evaluator": {..., "network": "$medcnn.networks.export.backend_network(@network, @backend)"}

and ``--backend onnxruntime`` on the command line (or ``medcnn predict --backend onnxruntime``).
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch

from medcnn.networks.autocast import autocast_disabled

__all__ = ["BACKENDS", "OnnxRuntimeNetwork", "TorchScriptNetwork", "backend_network", "export_onnx"]

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "torchscript", "onnxruntime")


def export_onnx(
    network: torch.nn.Module, example: torch.Tensor, path: str | os.PathLike, opset_version: int = 17
) -> Path:
    """Export ``network`` for inputs like ``example`` ``(B, C, *S)`` to ``path``; batch and spatial axes dynamic.

    Always the float32 network: a network running under ``autocast_forward`` (``--autocast bf16``) is exported
    without it, since ONNX Runtime's CPU provider has no bfloat16 convolution (TorchScript: see
    :class:`TorchScriptNetwork`).
    """
    from monai.networks.utils import convert_to_onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {0: "batch", **{d: f"spatial_{d - 2}" for d in range(2, example.ndim)}}
    with warnings.catch_warnings(), autocast_disabled(network):
        warnings.simplefilter("ignore")  # the exporter's deprecation notices and tracer warnings
        convert_to_onnx(
            network,
            (example,),
            input_names=["image"],
            output_names=["pred"],
            opset_version=opset_version,
            dynamic_axes={"image": axes, "pred": axes},
            filename=str(path),
            verify=False,
            use_trace=True,
            dynamo=False,
        )
    return path


class OnnxRuntimeNetwork(torch.nn.Module):
    """``network`` executed by ONNX Runtime: ``(B, C, *S)`` tensor in, ``(B, K, *S)`` float tensor out.

    Exported at the first call (see the module docstring) to ``onnx_path`` or a temporary file. ``providers``
    defaults to CUDA when ONNX Runtime has it, else CPU; ``num_threads`` (intra-op) defaults to torch's thread
    count so that both backends are compared with the same cores.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        onnx_path: str | os.PathLike | None = None,
        providers: list[str] | None = None,
        num_threads: int | None = None,
    ) -> None:
        super().__init__()
        self.network = network
        self.onnx_path = Path(onnx_path) if onnx_path else None
        self.providers = providers
        self.num_threads = num_threads
        self.session = None

    def build(self, example: torch.Tensor) -> None:
        """Export the network for inputs like ``example`` and open the ONNX Runtime session."""
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ImportError("the onnxruntime backend needs: pip install 'medcnn[onnx]'") from exc
        if self.onnx_path is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="medcnn-onnx-")
            self.onnx_path = Path(self._tmp.name) / "model.onnx"
        was_training = self.network.training
        self.network.eval()
        export_onnx(self.network.cpu() if example.device.type == "cpu" else self.network, example, self.onnx_path)
        self.network.train(was_training)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(self.num_threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        available = ort.get_available_providers()
        providers = self.providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.session = ort.InferenceSession(str(self.onnx_path), options, providers=providers)
        logger.info("ONNX Runtime session on %s (%s, %d thread(s))", self.onnx_path, providers[0],
                    options.intra_op_num_threads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run ONNX Runtime on ``x`` ``(B, C, *S)``; the result is on ``x``'s device."""
        if self.session is None:
            self.build(x.detach()[:1].float())
        out = self.session.run(None, {"image": x.detach().float().cpu().contiguous().numpy()})[0]
        return torch.from_numpy(out).to(x.device)


class TorchScriptNetwork(torch.nn.Module):
    """``network`` traced to TorchScript and frozen at the first call (same interface as the eager network).

    The trace is of the float32 network, also when the eager network runs under ``--autocast bf16``."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network
        self.scripted = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Trace at the first call, then run the frozen module on ``x`` ``(B, C, *S)``."""
        if self.scripted is None:
            self.network.eval()
            # traced in float32, like the ONNX export: a trace recorded under autocast (``--autocast bf16``) bakes
            # its casts into the graph and the frozen module then fails on layers such as Linear
            with torch.no_grad(), warnings.catch_warnings(), autocast_disabled(self.network):
                warnings.simplefilter("ignore")
                self.scripted = torch.jit.freeze(torch.jit.trace(self.network, x[:1]))
        with torch.no_grad():
            return self.scripted(x)


def backend_network(network: torch.nn.Module, backend: str = "torch", **kwargs) -> torch.nn.Module:
    """``network`` itself (``"torch"``), or wrapped to run as ``"torchscript"`` / ``"onnxruntime"``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown inference backend {backend!r}; choose one of {BACKENDS}")
    if backend == "torch":
        return network
    if backend == "torchscript":
        return TorchScriptNetwork(network)
    return OnnxRuntimeNetwork(network, **kwargs)
