"""Mixed precision for any network, on CPUs as on GPUs, without touching its weights or its state dict.

MONAI's engines autocast on CUDA only (``SupervisedTrainer(amp=True)`` enters ``torch.autocast("cuda")``), so on a
CPU their ``amp`` does nothing. CPUs with AVX512-BF16 / AMX (Intel Xeon from Cooper Lake / Sapphire Rapids on,
AMD Zen 4) run bfloat16 convolutions up to about twice as fast as float32: on the project's 2-core machine the
bundles train 1.2-1.7x faster at one thread (``docs/benchmarks/README.md``, "Mixed precision"; the COCO bundle's
UNet 1.57x).

:func:`autocast_forward` makes a network run its ``forward`` under ``torch.autocast`` on the device its parameters
are on, whichever engine, inferer or handler calls it, and hands back float32 outputs, so losses, metrics,
post-processing and reports see what they saw before. It is mixed precision, not a bfloat16 model: parameters,
gradients, optimiser state and checkpoints stay float32, and the module keeps its class and its state-dict keys,
so a checkpoint written with it loads without it and the other way round. Bundles expose it as the ``autocast``
config id (``null`` = float32, ``"bf16"``).

Why bfloat16 only: it has float32's exponent range, so training needs no loss scaling. float16 does; on CUDA use
MONAI's ``amp=True`` (autocast + ``GradScaler``) for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = ["AUTOCAST_DTYPES", "autocast_forward", "autocast_dtype", "autocast_disabled"]

#: the names ``autocast`` accepts (config value -> dtype); ``None`` / ``False`` / ``"none"`` mean float32
AUTOCAST_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
_OFF = ("none", "null", "false", "float32", "fp32")
_REDUCED = (torch.bfloat16, torch.float16)


def _resolve(dtype: Any) -> torch.dtype | None:
    if dtype is None or dtype is False or dtype is torch.float32:
        return None
    if isinstance(dtype, str) and dtype.lower() in _OFF:
        return None
    if dtype is torch.bfloat16:
        return torch.bfloat16
    if isinstance(dtype, str) and dtype.lower() in AUTOCAST_DTYPES:
        return AUTOCAST_DTYPES[dtype.lower()]
    raise ValueError(
        f"autocast: {dtype!r} is not supported; use null (float32) or 'bf16'. float16 needs loss scaling: on a GPU "
        "use the bundle's amp option (MONAI's autocast + GradScaler) instead."
    )


def _to_float32(output: Any) -> Any:
    """``output`` with every reduced-precision floating tensor in it cast to float32 (tensors, tuples, lists, dicts)."""
    if isinstance(output, torch.Tensor):
        return output.float() if output.dtype in _REDUCED else output
    if isinstance(output, tuple) and hasattr(output, "_fields"):  # named tuple
        return type(output)(*(_to_float32(o) for o in output))
    if isinstance(output, (tuple, list)):
        return type(output)(_to_float32(o) for o in output)
    if isinstance(output, dict):
        return type(output)((k, _to_float32(v)) for k, v in output.items())
    return output


class _AutocastHooks:
    """The pair of forward hooks: enter ``torch.autocast`` before ``forward``, leave it (even when ``forward``
    raises) and cast the output to float32 after. A stack, so a module re-entered during its own forward (a shared
    block) leaves the contexts in the right order; an object rather than a closure so ``copy.deepcopy`` of the
    network (ensembles, the benchmark's plain loop) gets hooks of its own."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype
        self.enabled = True
        self._stack: list[torch.autocast | None] = []

    def _device_type(self, module: nn.Module) -> str:
        for tensor in module.parameters():
            return tensor.device.type
        for tensor in module.buffers():
            return tensor.device.type
        return "cpu"

    def enter(self, module: nn.Module, args: Any) -> None:
        if not self.enabled:
            self._stack.append(None)
            return
        context = torch.autocast(self._device_type(module), dtype=self.dtype)
        context.__enter__()
        self._stack.append(context)

    def exit(self, module: nn.Module, args: Any, output: Any) -> Any:
        context = self._stack.pop() if self._stack else None
        if context is None:
            return output
        context.__exit__(None, None, None)
        return _to_float32(output)


def autocast_forward(network: nn.Module, dtype: Any = "bf16") -> nn.Module:
    """``network`` itself, its ``forward`` from now on run under ``torch.autocast(<its device>, dtype)``.

    Args:
        network: any ``nn.Module``; moving it to another device afterwards is fine (the device is read at each call).
        dtype: ``"bf16"`` (or ``torch.bfloat16``); ``None`` / ``False`` / ``"none"`` return ``network`` unchanged,
            which lets a config pass its ``autocast`` id straight through.

    Raises:
        ValueError: an unsupported ``dtype`` (float16 included, see the module docstring).
    """
    resolved = _resolve(dtype)
    if resolved is None:
        return network
    if autocast_dtype(network) is not None:  # already hooked (bfloat16 is the only reduced dtype)
        return network
    hooks = _AutocastHooks(resolved)
    network.register_forward_pre_hook(hooks.enter)
    network.register_forward_hook(hooks.exit, always_call=True)
    network._medcnn_autocast = hooks  # type: ignore[assignment]
    return network


def autocast_dtype(network: nn.Module) -> torch.dtype | None:
    """The dtype :func:`autocast_forward` gave ``network``, or ``None`` (plain float32)."""
    hooks = getattr(network, "_medcnn_autocast", None)
    return hooks.dtype if isinstance(hooks, _AutocastHooks) else None


@contextmanager
def autocast_disabled(network: nn.Module) -> Iterator[nn.Module]:
    """Within the block ``network`` runs in float32 even if :func:`autocast_forward` hooked it (a no-op otherwise).

    For exporters whose runtime has no bfloat16 kernels: ONNX Runtime's CPU provider rejects a graph with bfloat16
    convolutions, so :func:`medcnn.networks.export.export_onnx` exports the float32 network inside this block.
    """
    hooks = getattr(network, "_medcnn_autocast", None)
    if not isinstance(hooks, _AutocastHooks):
        yield network
        return
    previous, hooks.enabled = hooks.enabled, False
    try:
        yield network
    finally:
        hooks.enabled = previous
