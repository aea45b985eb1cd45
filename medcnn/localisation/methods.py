"""Class activation map methods behind one interface.

:class:`CAMMethod` does what every method shares (modelled on ``pytorch_grad_cam.base_cam.BaseCAM``):
resolve and check the target layer, run in eval mode with gradients enabled, upsample the raw map to the
input size (bilinear / trilinear), normalise every map to [0, 1], restore the model's train/eval mode and
remove every hook the backend registered. A method only implements :meth:`CAMMethod.raw_maps`, which
returns maps of shape ``(B, *S')`` at any resolution.

Backends: MONAI's ``GradCAM`` / ``GradCAMpp`` and the ``grad-cam`` package (``pytorch_grad_cam``) methods.
``CAM_METHODS`` lists them by name; :func:`get_cam_method` builds one, :func:`available_cam_methods` says
which work for a dimensionality.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CAMMethod",
    "EnsembleCAM",
    "MonaiCAM",
    "GradCAMPackageCAM",
    "CAM_METHODS",
    "UnsupportedCAMError",
    "get_cam_method",
    "available_cam_methods",
    "resolve_target_layer",
]

logger = logging.getLogger(__name__)


class UnsupportedCAMError(ValueError):
    """A CAM method does not support the requested dimensionality (or model)."""


def resolve_target_layer(model: nn.Module, target_layer: str | None) -> str:
    """Module name of the CAM target layer; ``None`` -> the model's ``cam_target_layer_name``.

    Raises:
        ValueError: naming the layer and listing valid choices when it does not exist.
    """
    if _is_ensemble(model):  # a layer of an ensemble is named as in its members
        return resolve_target_layer(model.members[0], target_layer)
    if target_layer is None:
        target_layer = getattr(model, "cam_target_layer_name", None)
        if target_layer is None:
            raise ValueError("target_layer is required: the model has no default `cam_target_layer_name`")
    names = dict(model.named_modules())
    if not isinstance(target_layer, str) or target_layer not in names or target_layer == "":
        if hasattr(model, "cam_layer_names"):
            choices = model.cam_layer_names()
        else:
            choices = [n for n in names if n][:30]
        raise ValueError(f"unknown CAM target_layer {target_layer!r}; choose a module name such as {choices}")
    return target_layer


def _is_ensemble(model: nn.Module) -> bool:
    from medcnn.networks.ensemble import ClassifierEnsemble

    return isinstance(model, ClassifierEnsemble)


def normalise_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise every map of ``(B, 1, *S)`` to [0, 1] (a constant map becomes all zeros)."""
    flat = maps.reshape(maps.shape[0], -1)
    lo = flat.min(dim=1, keepdim=True).values
    hi = flat.max(dim=1, keepdim=True).values
    scale = torch.where(hi - lo > 1e-12, hi - lo, torch.ones_like(hi))
    out = (flat - lo) / scale
    out = torch.where(hi - lo > 1e-12, out, torch.zeros_like(out))
    return out.reshape(maps.shape)


class CAMMethod:
    """Base class: ``method(images, class_idx)`` -> heatmaps ``(B, 1, *S)`` in [0, 1] at the input size.

    Args:
        model: a classifier ``(B, C, *S) -> (B, num_classes)`` logits.
        target_layer: module name (``dict(model.named_modules())`` key); ``None`` uses the model's
            ``cam_target_layer_name`` (see :class:`medcnn.networks.ResNetClassifier`).
    """

    name = "base"
    #: dimensionalities (2, 3) the method supports
    spatial_dims: tuple[int, ...] = (2, 3)

    def __init__(self, model: nn.Module, target_layer: str | None = None) -> None:
        self.model = model
        self.target_layer = resolve_target_layer(model, target_layer)

    def raw_maps(self, images: torch.Tensor, class_idx: list[int]) -> torch.Tensor:
        """Unnormalised, non-negative maps ``(B, *S')`` at any resolution (implemented by each method)."""
        raise NotImplementedError

    def check_supported(self, images: torch.Tensor) -> None:
        """Raise :class:`UnsupportedCAMError` / ``ValueError`` when ``images`` cannot be processed."""
        if images.ndim not in (4, 5):
            raise ValueError(f"CAM images must be (B, C, H, W) or (B, C, H, W, D), got shape {tuple(images.shape)}")
        dims = images.ndim - 2
        if dims not in self.spatial_dims:
            raise UnsupportedCAMError(
                f"CAM method {self.name!r} does not support {dims}D images (supports {self.spatial_dims}D); "
                f"use one of {available_cam_methods(dims)}"
            )

    def __call__(self, images: torch.Tensor, class_idx: int | Sequence[int] | None = None) -> torch.Tensor:
        """Heatmaps ``(B, 1, *S)`` in [0, 1] for ``images`` ``(B, C, *S)``; ``class_idx`` None = predicted class."""
        images = torch.as_tensor(images)
        self.check_supported(images)
        images = images.detach().clone().float()
        if hasattr(images, "as_tensor"):
            images = images.as_tensor()
        device = next(self.model.parameters()).device
        images = images.to(device)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.enable_grad(), torch.inference_mode(False):
                if class_idx is None:
                    with torch.no_grad():
                        class_idx = self.model(images).argmax(dim=1).tolist()
                elif isinstance(class_idx, int):
                    class_idx = [class_idx] * images.shape[0]
                class_idx = [int(c) for c in class_idx]
                if len(class_idx) != images.shape[0]:
                    raise ValueError(f"class_idx has {len(class_idx)} entries for a batch of {images.shape[0]}")
                maps = self.raw_maps(images, class_idx)
        finally:
            self.model.train(was_training)
            self.model.zero_grad(set_to_none=True)
        maps = torch.as_tensor(maps, dtype=torch.float32, device=device).detach()
        maps = maps.reshape(images.shape[0], 1, *maps.shape[-(images.ndim - 2):])
        maps = torch.nan_to_num(maps.clamp_min(0.0))
        if tuple(maps.shape[2:]) != tuple(images.shape[2:]):
            mode = "bilinear" if images.ndim == 4 else "trilinear"
            maps = F.interpolate(maps, size=images.shape[2:], mode=mode, align_corners=False)
        return normalise_maps(maps)


class MonaiCAM(CAMMethod):
    """MONAI ``monai.visualize`` CAM (``GradCAM`` or ``GradCAMpp``); raw map at the target layer's resolution."""

    def __init__(self, model: nn.Module, target_layer: str | None = None, variant: str = "GradCAM") -> None:
        super().__init__(model, target_layer)
        import monai.visualize

        self.cam_class = getattr(monai.visualize, variant)
        self._hooked: nn.Module | None = None
        self._cam = None
        self.name = {"GradCAM": "monai_gradcam", "GradCAMpp": "monai_gradcampp"}.get(variant, variant)

    def raw_maps(self, images: torch.Tensor, class_idx: list[int]) -> torch.Tensor:
        # MONAI's CAM registers forward / backward hooks on the target layer and drops the RemovableHandle objects,
        # so they cannot be removed: it runs on a private copy of the network (the caller's network stays free of
        # hooks), refreshed with the current weights on every call
        if self._hooked is None:
            self._hooked = copy.deepcopy(self.model)
            self._cam = self.cam_class(nn_module=self._hooked, target_layers=self.target_layer)
        self._hooked.load_state_dict(self.model.state_dict())
        self._hooked.to(images.device).eval()
        cam = self._cam
        # MONAI scores one class index per call: group the batch by class
        maps: list[torch.Tensor | None] = [None] * images.shape[0]
        # MONAI's GradCAMpp broadcasts the class score against the gradient wrongly for batches > 1: one by one
        groups = ([[i] for i in range(len(class_idx))] if self.cam_class.__name__ == "GradCAMpp"
                  else [[i for i, k in enumerate(class_idx) if k == c] for c in sorted(set(class_idx))])
        for idx in groups:
            m = cam.compute_map(images[idx], class_idx=class_idx[idx[0]])
            for j, i in enumerate(idx):
                maps[i] = m[j]
        out = torch.stack([m.reshape(m.shape[-(images.ndim - 2):]) for m in maps])  # type: ignore[union-attr]
        return out.detach()


class GradCAMPackageCAM(CAMMethod):
    """A ``pytorch_grad_cam`` method (``GradCAM``, ``HiResCAM``, ``LayerCAM``, ...) at feature resolution.

    The package's own resizing (cv2 for 2D, spline zoom for 3D) is bypassed so every method shares the same
    upsampling in :class:`CAMMethod`.
    """

    def __init__(
        self, model: nn.Module, target_layer: str | None = None, cam_class: str | type = "GradCAM",
        name: str | None = None, spatial_dims: tuple[int, ...] = (2, 3),
    ) -> None:
        super().__init__(model, target_layer)
        import pytorch_grad_cam

        base = getattr(pytorch_grad_cam, cam_class) if isinstance(cam_class, str) else cam_class
        self.cam_class = type(f"FeatureRes{base.__name__}", (_FeatureResolutionMixin, base), {})
        self.name = name or base.__name__.lower()
        self.spatial_dims = spatial_dims

    def raw_maps(self, images: torch.Tensor, class_idx: list[int]) -> torch.Tensor:
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        layer = self.model.get_submodule(self.target_layer)
        with self.cam_class(model=self.model, target_layers=[layer]) as cam:
            maps = cam(input_tensor=images, targets=[ClassifierOutputTarget(c) for c in class_idx])
        return torch.as_tensor(np.asarray(maps))


class _FeatureResolutionMixin:
    """Override ``BaseCAM.compute_cam_per_layer`` to keep maps at the target layer's resolution (no resize)."""

    def compute_cam_per_layer(self, input_tensor, targets, eigen_smooth):  # noqa: D401 - grad-cam API
        acts = [a.cpu().data.numpy() for a in self.activations_and_grads.activations]
        grads = [g.cpu().data.numpy() for g in self.activations_and_grads.gradients]
        out = []
        for i, layer in enumerate(self.target_layers):
            a = acts[i] if i < len(acts) else None
            g = grads[i] if i < len(grads) else None
            cam = self.get_cam_image(input_tensor, layer, targets, a, g, eigen_smooth)
            out.append(np.maximum(cam, 0)[:, None])
        return out

    def aggregate_multi_layers(self, cam_per_target_layer):
        return np.mean(np.concatenate(cam_per_target_layer, axis=1), axis=1)


def _nd_score_cam():
    """grad-cam's ScoreCAM with the activation upsampling generalised to 3D and without per-image progress bars."""
    from pytorch_grad_cam import ScoreCAM

    class NDScoreCAM(ScoreCAM):
        batch_size = 16

        def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
            with torch.no_grad():
                acts = torch.from_numpy(activations).to(self.device)
                mode = "bilinear" if acts.ndim == 4 else "trilinear"
                # same grid as the package's UpsamplingBilinear2d (align_corners=True)
                up = F.interpolate(acts, size=input_tensor.shape[2:], mode=mode, align_corners=True)
                flat = up.flatten(2)
                lo, hi = flat.min(-1)[0], flat.max(-1)[0]
                shape = (*lo.shape, *([1] * (up.ndim - 2)))
                up = (up - lo.view(shape)) / (hi - lo + 1e-8).view(shape)
                masked = input_tensor[:, None] * up[:, :, None]  # (B, K, C, *S): the input seen through each map
                scores = []
                for target, tensor in zip(targets, masked, strict=True):
                    for i in range(0, tensor.shape[0], self.batch_size):
                        scores += [target(o).cpu().item() for o in self.model(tensor[i: i + self.batch_size])]
                scores = torch.tensor(scores).view(activations.shape[0], activations.shape[1])
                return torch.softmax(scores, dim=-1).numpy()

    return NDScoreCAM


def _monai(variant: str):
    return lambda model, target_layer=None: MonaiCAM(model, target_layer, variant)


def _package(cam_class: str, name: str, dims: tuple[int, ...] = (2, 3)):
    return lambda model, target_layer=None: GradCAMPackageCAM(model, target_layer, cam_class, name, dims)


#: name -> factory ``(model, target_layer) -> CAMMethod``; ``monai_*`` use MONAI, the others pytorch_grad_cam.
CAM_METHODS = {
    "monai_gradcam": _monai("GradCAM"),
    "monai_gradcampp": _monai("GradCAMpp"),
    "gradcam": _package("GradCAM", "gradcam"),
    "gradcampp": _package("GradCAMPlusPlus", "gradcampp"),
    "hirescam": _package("HiResCAM", "hirescam"),
    "layercam": _package("LayerCAM", "layercam"),
    "xgradcam": _package("XGradCAM", "xgradcam"),
    "gradcam_elementwise": _package("GradCAMElementWise", "gradcam_elementwise"),
    "eigencam": _package("EigenCAM", "eigencam"),
    "eigengradcam": _package("EigenGradCAM", "eigengradcam"),
    # grad-cam's ScoreCAM upsamples with 2D-only code: medcnn's subclass generalises it to 3D
    "scorecam": lambda model, target_layer=None: GradCAMPackageCAM(model, target_layer, _nd_score_cam(), "scorecam"),
}


#: name -> how reports and logs name the method (the papers' spelling).
CAM_DISPLAY_NAMES = {
    "monai_gradcam": "Grad-CAM", "monai_gradcampp": "Grad-CAM++", "gradcam": "Grad-CAM", "gradcampp": "Grad-CAM++",
    "hirescam": "HiResCAM", "layercam": "LayerCAM", "xgradcam": "XGradCAM",
    "gradcam_elementwise": "Grad-CAM (element-wise)", "eigencam": "EigenCAM", "eigengradcam": "EigenGradCAM",
    "scorecam": "Score-CAM",
}


class EnsembleCAM:
    """The CAM of a :class:`medcnn.networks.ClassifierEnsemble`: the map of its ``cam_member``, or (``cam_member``
    None) the mean of all members' maps (each normalised to [0, 1] by its method) normalised again; every member
    maps the same class (the ensemble's prediction when ``class_idx`` is None). It is called like a
    :class:`CAMMethod` and has its ``name``, ``target_layer`` (named as in a member) and ``spatial_dims``."""

    def __init__(self, model: nn.Module, method: str, target_layer: str | None = None) -> None:
        self.model = model
        members = list(model.members) if model.cam_member is None else [model.members[model.cam_member]]
        self.methods = [CAM_METHODS[method](m, target_layer) for m in members]
        self.name = self.methods[0].name
        self.target_layer = self.methods[0].target_layer
        self.spatial_dims = self.methods[0].spatial_dims

    def __call__(self, images: torch.Tensor, class_idx: int | Sequence[int] | None = None) -> torch.Tensor:
        if class_idx is None:
            was_training = self.model.training
            self.model.eval()
            try:
                with torch.no_grad():
                    device = next(self.model.parameters()).device
                    class_idx = self.model(torch.as_tensor(images).float().to(device)).argmax(dim=1).tolist()
            finally:
                self.model.train(was_training)
        maps = torch.stack([method(images, class_idx) for method in self.methods]).mean(dim=0)
        return normalise_maps(maps)


def cam_display_name(method: str | None) -> str:
    """The name a report gives ``method`` (a key of ``CAM_METHODS``); ``"CAM"`` when it is not known."""
    return CAM_DISPLAY_NAMES.get(str(method).lower(), "CAM") if method else "CAM"


def available_cam_methods(spatial_dims: int | None = None) -> list[str]:
    """Names in ``CAM_METHODS`` (those supporting ``spatial_dims`` when given)."""
    if spatial_dims is None:
        return list(CAM_METHODS)
    return [n for n in CAM_METHODS if spatial_dims in _SUPPORT.get(n, (2, 3))]


#: methods limited to some dimensionalities (none at the moment: every method above runs in 2D and 3D)
_SUPPORT: dict[str, tuple[int, ...]] = {}


def get_cam_method(name: str, model: nn.Module, target_layer: str | None = None) -> CAMMethod:
    """Build CAM method ``name`` (see ``CAM_METHODS``) for ``model`` at ``target_layer``.

    Raises:
        ValueError: for an unknown method name or target layer (the message names it and lists valid ones).
    """
    if isinstance(name, CAMMethod):
        return name
    key = str(name).lower()
    if key not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {name!r}; choose one of {sorted(CAM_METHODS)}")
    if _is_ensemble(model):
        return EnsembleCAM(model, key, target_layer)
    return CAM_METHODS[key](model, target_layer)
