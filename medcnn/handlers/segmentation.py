"""Ignite pieces for segmentation evaluators: a pixel-confusion metric and per-item error-overlay figures."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import ignite.distributed as idist
import monai.handlers
import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from monai.data import MetaTensor
from monai.handlers.utils import from_engine

from medcnn.distributed import gather_lists, is_distributed
from medcnn.errors import OutputCollisionError
from medcnn.handlers.metrics_json import write_metrics_json
from medcnn.metrics.rand import SCORE_KEYS, best_rand_info, foreground_restricted_scores, rand_info_sweep
from medcnn.metrics.segmentation import (
    ISBI_THRESHOLDS,
    adapted_rand_error_2d,
    empty_classes,
    max_f_pixel_error,
    pixel_confusion_matrix,
    segmentation_report,
    threshold_counts,
)
from medcnn.report.plots import plot_confusion_matrix, save_error_overlay

__all__ = [
    "EmptyReferenceCount",
    "HausdorffDistance",
    "InstanceRandInfoMetric",
    "MaxFPixelErrorMetric",
    "MeanDice",
    "ThinnedRandInfoMetric",
    "PixelConfusionMetric",
    "SegmentationFiguresHandler",
    "StackPredictionWriter",
    "as_class_map",
]

logger = logging.getLogger(__name__)


def as_class_map(x) -> np.ndarray:
    """Class-index map ``(*spatial)`` from an index map ``(1, *spatial)`` or one-hot/probabilities ``(C, *spatial)``."""
    x = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    x = x.argmax(0) if x.shape[0] > 1 else x[0]
    return x.numpy().astype(np.int64)


class PixelConfusionMetric(Metric):
    """Accumulate a ``(C, C)`` pixel confusion matrix over an evaluation and publish a segmentation report.

    Each update takes ``(pred, label)`` as batches ``(B, C, *spatial)`` or lists of items ``(C, *spatial)``
    (MONAI's decollated output; Ignite passes it item by item with a batch dimension of 1), where ``C`` = 1
    means class-index maps and ``C`` > 1 one-hot or probabilities. ``compute`` returns the flat
    :func:`medcnn.metrics.segmentation.segmentation_report` (``pixel_accuracy``, ``<class>_dice`` ...,
    ``confusion_matrix``, ``confusion_matrix_normalised``) plus the item count ``count_name``; Ignite puts each key into
    ``engine.state.metrics``. With ``boundary_class`` set, 2D items also get the ISBI adapted Rand error of
    the regions enclosed by that class (mean over items: ``adapted_rand_error``).

    With ``key_figure`` (one of the report's keys, e.g. ``"tumour_dice"``) the name the metric is attached under
    holds that figure, so the one confusion matrix of an evaluation also gives the evaluator's key metric: a
    MONAI ``ConfusionMatrix`` handler next to this metric would count the same pixels again for one of its
    figures. MONAI's handler stays the choice where one pooled figure is all an evaluator needs (training-time
    validation); it does not give the ``(C, C)`` matrix, the pixel accuracy or the empty-reference counts.
    """

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        boundary_class: int | None = None,
        output_transform: Callable = from_engine(["pred", "label"]),
        count_name: str = "n_items",
        device: str | torch.device = "cpu",
        key_figure: str | None = None,
    ) -> None:
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {num_classes} classes")
        self.boundary_class = boundary_class
        self.count_name = count_name
        self.key_figure = key_figure
        super().__init__(output_transform=output_transform, device=device)

    def completed(self, engine: Engine, name: str) -> None:
        """Put every report key into ``engine.state.metrics``; ``name`` holds ``key_figure`` when given."""
        super().completed(engine, name)
        if self.key_figure is not None:
            if self.key_figure not in engine.state.metrics:
                raise KeyError(f"PixelConfusionMetric: key_figure {self.key_figure!r} is not a figure of the "
                               f"report (figures: {sorted(k for k in self.compute() if k != name)})")
            engine.state.metrics[name] = engine.state.metrics[self.key_figure]

    def reset(self) -> None:
        self._cm = np.zeros((self.num_classes, self.num_classes), np.int64)
        self._rand: list[float] = []
        self._n = 0
        self._empty = np.zeros(self.num_classes, np.int64)
        self._n_any_empty = 0

    def update(self, output) -> None:
        preds, labels = output  # Ignite hands over batched tensors (B, C, *spatial); lists are per item
        for p, y in zip(preds, labels, strict=True):
            p_map, y_map = as_class_map(p), as_class_map(y)
            self._cm += pixel_confusion_matrix(y_map, p_map, self.num_classes)
            missing = empty_classes(y_map, self.num_classes, include_background=True, one_hot=False)
            self._empty[missing] += 1
            self._n_any_empty += bool(missing)
            if self.boundary_class is not None and y_map.ndim == 2:
                err, _, _ = adapted_rand_error_2d(y_map == self.boundary_class, p_map == self.boundary_class)
                self._rand.append(err)
            self._n += 1

    def compute(self) -> dict:
        if self._n == 0:
            raise RuntimeError("PixelConfusionMetric needs at least one update before compute")
        cm, rand, n = self._cm, self._rand, self._n
        empty, n_any_empty = self._empty, self._n_any_empty
        if is_distributed():  # under torchrun each rank saw its share of the items: add them up
            cm = idist.all_reduce(torch.as_tensor(cm)).cpu().numpy()
            n = int(idist.all_reduce(n))
            empty = idist.all_reduce(torch.as_tensor(empty)).cpu().numpy()
            n_any_empty = int(idist.all_reduce(n_any_empty))
            (rand,) = gather_lists(rand)
        report = segmentation_report(cm, self.class_names)
        if self.boundary_class is not None:  # NaN for a reference without regions, left out of the mean
            valid = [r for r in rand if not math.isnan(r)]
            report["adapted_rand_error"] = float(np.mean(valid)) if valid else math.nan
        report[self.count_name] = n
        report["n_empty_reference"] = n_any_empty  # items whose reference lacks a class (still pooled)
        for name, count in zip(self.class_names, empty.tolist(), strict=True):
            report[f"n_empty_reference_{name}"] = int(count)
        return report


class MaxFPixelErrorMetric(Metric):
    """The ISBI 2012 challenge's pixel error (:func:`medcnn.metrics.segmentation.max_f_pixel_error`) of one class.

    Each update takes ``(prob, label)``: probabilities ``(C, *spatial)`` before any argmax (keep a copy of the
    network output, e.g. ``CopyItemsd(keys="pred", names="prob")`` after the softmax) and the reference as an
    index map ``(1, *spatial)`` or one-hot ``(C, *spatial)``. ``compute`` returns ``{name: error,
    name + "_threshold": best threshold}``, the threshold sweep summed over all items, so the figure can be
    set beside published challenge results (for ISBI 2012 the scored class is the cell interior). When the pooled
    reference holds only one class (e.g. one all-cell label) the error is NaN, not the 0.0 of a trivial prediction.
    """

    def __init__(
        self,
        scored_class: int,
        name: str = "isbi_pixel_error",
        thresholds: Sequence[float] = ISBI_THRESHOLDS,
        output_transform: Callable = from_engine(["prob", "label"]),
        device: str | torch.device = "cpu",
    ) -> None:
        self.scored_class, self.name, self.thresholds = int(scored_class), name, tuple(float(t) for t in thresholds)
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self._counts = np.zeros((len(self.thresholds), 3), np.int64)
        self._n = 0
        self._n_pixels = 0

    def update(self, output) -> None:
        probs, labels = output
        for p, y in zip(probs, labels, strict=True):
            p = p.detach().cpu() if isinstance(p, torch.Tensor) else torch.as_tensor(np.asarray(p))
            if p.shape[0] <= self.scored_class:
                want = f"(C > {self.scored_class}, *spatial)"
                raise ValueError(f"{self.name}: expected class probabilities {want}, got {tuple(p.shape)}")
            truth = as_class_map(y) == self.scored_class
            self._counts += threshold_counts(p[self.scored_class].numpy(), truth, self.thresholds)
            self._n_pixels += int(truth.size)
            self._n += 1

    def compute(self) -> dict:
        if self._n == 0:
            raise RuntimeError(f"{type(self).__name__} needs at least one update before compute")
        tp, fn = int(self._counts[0, 0]), int(self._counts[0, 2])
        if tp + fn == 0 or self._n_pixels == tp + fn:  # the pooled reference holds one class only: undefined
            return {self.name: math.nan, f"{self.name}_threshold": math.nan}
        error, threshold = max_f_pixel_error(self._counts, self.thresholds)
        return {self.name: error, f"{self.name}_threshold": threshold}


class ThinnedRandInfoMetric(Metric):
    """The ISBI 2012 challenge's V_rand / V_info of one class's probability map (:mod:`medcnn.metrics.rand`).

    Each update takes ``(prob, label)``: probabilities ``(C, H, W)`` before any argmax (e.g. a ``CopyItemsd``
    copy after the softmax) and the reference as an index map ``(1, H, W)`` or one-hot ``(C, H, W)``; the scored
    class is the cell interior (the challenge thresholds a cell-probability map). Every item is swept over
    ``thresholds`` (proposal borders thinned, foreground-restricted); ``compute`` averages the items per threshold
    and returns ``{prefix}v_rand``, ``{prefix}v_info``, each with its best ``_threshold`` and its ``_split`` /
    ``_merge`` parts there. Only 2D items are accepted.
    """

    def __init__(
        self,
        scored_class: int,
        prefix: str = "",
        thresholds: Sequence[float] = ISBI_THRESHOLDS,
        output_transform: Callable = from_engine(["prob", "label"]),
        device: str | torch.device = "cpu",
    ) -> None:
        self.scored_class, self.prefix = int(scored_class), prefix
        self.thresholds = tuple(float(t) for t in thresholds)
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self._sweeps: list[np.ndarray] = []

    def update(self, output) -> None:
        probs, labels = output
        for p, y in zip(probs, labels, strict=True):
            p = p.detach().cpu() if isinstance(p, torch.Tensor) else torch.as_tensor(np.asarray(p))
            if p.ndim != 3 or p.shape[0] <= self.scored_class:
                want = f"(C > {self.scored_class}, H, W)"
                raise ValueError(f"{self.prefix}v_rand: expected 2D class probabilities {want}, got {tuple(p.shape)}")
            truth = as_class_map(y) == self.scored_class
            self._sweeps.append(rand_info_sweep(p[self.scored_class].numpy(), truth, self.thresholds))

    def compute(self) -> dict:
        if not self._sweeps:
            raise RuntimeError(f"{type(self).__name__} needs at least one update before compute")
        best = best_rand_info(np.stack(self._sweeps), self.thresholds)
        return {f"{self.prefix}{k}": v for k, v in best.items()}


class InstanceRandInfoMetric(Metric):
    """V_rand / V_info of cell instance labels (e.g. :class:`medcnn.transforms.MembraneToInstancesd` output).

    Each update takes ``(instances, label)``: instance labels ``(1, H, W)`` (0 = boundary, scored as singletons)
    and the reference as an index map ``(1, H, W)`` or one-hot ``(C, H, W)`` whose ``cell_class`` pixels form
    the reference cells (4-connected components). No threshold and no thinning: the labels are the
    segmentation. ``compute`` returns the mean over items of :data:`medcnn.metrics.rand.SCORE_KEYS`, prefixed.
    """

    def __init__(
        self,
        cell_class: int,
        prefix: str = "instance_",
        output_transform: Callable = from_engine(["instances", "label"]),
        device: str | torch.device = "cpu",
    ) -> None:
        self.cell_class, self.prefix = int(cell_class), prefix
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self._scores: list[dict] = []

    def update(self, output) -> None:
        from skimage.measure import label

        instances, labels = output
        for inst, y in zip(instances, labels, strict=True):
            inst = inst.detach().cpu().numpy() if isinstance(inst, torch.Tensor) else np.asarray(inst)
            if inst.ndim != 3 or inst.shape[0] != 1:
                raise ValueError(f"{self.prefix}v_rand: expected instance labels (1, H, W), got {inst.shape}")
            truth = label(as_class_map(y) == self.cell_class, connectivity=1)
            self._scores.append(foreground_restricted_scores(truth, inst[0].astype(np.int64)))

    def compute(self) -> dict:
        if not self._scores:
            raise RuntimeError(f"{type(self).__name__} needs at least one update before compute")
        out = {}
        for k in SCORE_KEYS:
            vals = [s[k] for s in self._scores if not math.isnan(s[k])]
            out[f"{self.prefix}{k}"] = float(np.mean(vals)) if vals else math.nan
        return out


class _UndefinedIsNaN:
    """``compute`` gives NaN when every (case, class) value is undefined, where MONAI's reduction gives 0.0."""

    def compute(self):
        buffer = self.metric_fn.get_buffer()
        if isinstance(buffer, torch.Tensor) and buffer.numel() and bool(torch.isnan(buffer).all()):
            self._is_reduced = True
            return math.nan
        return super().compute()


class MeanDice(_UndefinedIsNaN, monai.handlers.MeanDice):
    """``monai.handlers.MeanDice`` (``ignore_empty``: a case with an empty reference class is NaN and left out of the
    mean) whose mean over no defined case is NaN instead of 0.0; count the left-out cases with
    :class:`EmptyReferenceCount`."""


class HausdorffDistance(_UndefinedIsNaN, monai.handlers.HausdorffDistance):
    """``monai.handlers.HausdorffDistance`` (empty reference or empty prediction: NaN, left out of the mean) whose mean
    over no defined case is NaN instead of 0.0."""


class EmptyReferenceCount(Metric):
    """Count the cases whose reference (or prediction) has no voxel of a foreground class.

    ``update`` takes ``(pred, label)`` items ``(C, *spatial)`` (one-hot, or index maps with C = 1). ``compute``
    returns ``n_empty_reference`` (cases with at least one empty reference class), ``n_empty_reference_<class>``
    and ``n_empty_prediction_<class>`` (empty prediction where the reference is not: no finite HD95) for the
    foreground classes: the cases that the Dice / HD95 means of :class:`MeanDice` / :class:`HausdorffDistance` leave
    out (see :mod:`medcnn.metrics.segmentation`).
    """

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        output_transform: Callable = from_engine(["pred", "label"]),
        device: str | torch.device = "cpu",
    ) -> None:
        self.num_classes = int(num_classes)
        names = list(class_names) if class_names is not None else [str(i) for i in range(1, self.num_classes)]
        if len(names) == self.num_classes:  # names given with background: drop it
            names = names[1:]
        if len(names) != self.num_classes - 1:
            raise ValueError(f"{len(names)} foreground class names for {num_classes} classes (background included)")
        self.class_names = names
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self._ref = np.zeros(self.num_classes, np.int64)
        self._pred = np.zeros(self.num_classes, np.int64)
        self._any = 0

    def update(self, output) -> None:
        preds, labels = output
        for p, y in zip(preds, labels, strict=True):
            ref_missing = empty_classes(y, self.num_classes)
            pred_missing = set(empty_classes(p, self.num_classes)) - set(ref_missing)
            self._ref[ref_missing] += 1
            self._pred[sorted(pred_missing)] += 1
            self._any += bool(ref_missing)

    def compute(self) -> dict:
        ref, pred, any_empty = self._ref, self._pred, self._any
        if is_distributed():  # each rank counted its share of the cases
            ref = idist.all_reduce(torch.as_tensor(ref)).cpu().numpy()
            pred = idist.all_reduce(torch.as_tensor(pred)).cpu().numpy()
            any_empty = int(idist.all_reduce(any_empty))
        out = {"n_empty_reference": int(any_empty)}
        for c, name in enumerate(self.class_names, start=1):
            out[f"n_empty_reference_{name}"] = int(ref[c])
            out[f"n_empty_prediction_{name}"] = int(pred[c])
        return out


def _item_name(img, index: int) -> str:
    name = f"item{index:04d}"
    if isinstance(img, MetaTensor):
        src = img.meta.get("filename_or_obj")
        if src:
            name = Path(str(src)).name.split(".")[0]
        if "slice_index" in img.meta:
            name += f"_slice{int(img.meta['slice_index']):03d}"
    return name


class SegmentationFiguresHandler:
    """Write per-item error overlays (wrong pixels in red, % wrong in the title) and a confusion-matrix heatmap.

    Attach to an evaluator whose decollated output items hold ``image_key`` ``(C, H, W)`` (channel 0 is shown),
    ``pred_key`` and ``label_key`` (index maps or one-hot). Overlays go to ``<output_dir>/<overlay_dir>/
    <file>_slice<k>_error.png``; at completion ``<output_dir>/confusion_matrix.png`` is drawn from
    ``engine.state.metrics[confusion_key]`` (counts) and the per-item fractions of wrong pixels are written to
    ``<output_dir>/<overlay_dir>/pixel_errors.json`` (name -> fraction).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        class_names: Sequence[str],
        image_key: str = "image",
        pred_key: str = "pred",
        label_key: str = "label",
        overlay_dir: str = "error_overlays",
        confusion_key: str = "confusion_matrix",
        save_overlays: bool = True,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names)
        self.image_key, self.pred_key, self.label_key = image_key, pred_key, label_key
        self.overlay_dir = overlay_dir
        self.confusion_key = confusion_key
        self.save_overlays = save_overlays
        self.errors: dict[str, float] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._overlays)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._finish)

    def _reset(self, engine: Engine) -> None:
        self.errors = {}

    def _overlays(self, engine: Engine) -> None:
        if not self.save_overlays:
            return
        output = engine.state.output
        items = output if isinstance(output, list) else [output]
        for item in items:
            img = item[self.image_key]
            name = _item_name(img, len(self.errors))
            pred, label = as_class_map(item[self.pred_key]), as_class_map(item[self.label_key])
            image = img[0].detach().cpu().float().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)[0]
            path = self.output_dir / self.overlay_dir / f"{name}_error.png"
            self.errors[name] = save_error_overlay(image, pred, label, path, title=name)

    def _finish(self, engine: Engine) -> None:
        cm = engine.state.metrics.get(self.confusion_key)
        if cm is not None:
            plot_confusion_matrix(
                cm,
                self.class_names,
                self.output_dir / "confusion_matrix.png",
                normalise=True,
                title="pixel confusion matrix (row-normalised)",
            )
        if self.errors:
            write_metrics_json(self.errors, self.output_dir / self.overlay_dir / "pixel_errors.json")
            logger.info("error overlays of %d items in %s", len(self.errors), self.output_dir / self.overlay_dir)


class StackPredictionWriter:
    """Collect per-slice class maps of an inference run and write one multi-page TIFF per source stack.

    Attach to an evaluator whose decollated output items hold ``pred_key`` (``(1, H, W)`` index map or
    ``(C, H, W)`` one-hot/probabilities) as a MetaTensor with ``filename_or_obj`` and ``slice_index`` metadata.
    At completion ``<output_dir>/<stem><suffix>`` is written with the slices in index order; ``value_map``
    maps class indices to the stored values (e.g. ``{1: 0, 0: 255}`` for the ISBI convention membrane = 0).
    ``dtype`` is the stored integer type (``"uint16"`` / ``"uint32"`` for instance label images with more than 255
    cells; a label that does not fit raises). Existing files are replaced only with ``overwrite``. A prediction that
    would land on its input, inside an input folder (the next run would read it as a slice), or on the prediction of
    another input with the same name raises :class:`medcnn.errors.OutputCollisionError` naming the input, before
    anything is written.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        pred_key: str = "pred",
        suffix: str = "_pred.tif",
        value_map: dict[int, int] | None = None,
        overwrite: bool = True,
        dtype: str = "uint8",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "u":
            raise ValueError(f"dtype must be an unsigned integer type, got {dtype}")
        self.pred_key = pred_key
        self.suffix = suffix
        self.value_map = {int(k): int(v) for k, v in (value_map or {}).items()}
        self.overwrite = overwrite
        self.stacks: dict[str, dict[int, np.ndarray]] = {}
        self.written: list[Path] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.stacks, self.written = {}, []

    def target(self, source: str) -> Path:
        """The file written for the stack ``source``: ``<output_dir>/<stem><suffix>``."""
        name = Path(source).name
        for ext in (".tiff", ".tif", ".png"):
            name = name[: -len(ext)] if name.lower().endswith(ext) else name
        return self.output_dir / f"{name}{self.suffix}"

    def _check_target(self, source: str) -> None:
        """Refuse an output onto its input, inside an input folder (read back as a slice next run), or shared."""
        path, src = self.target(source).resolve(), Path(source).expanduser().resolve()
        if path == src or (src.is_dir() and path.is_relative_to(src)):
            raise OutputCollisionError(
                f"{source}: the prediction {path} would be written {'onto' if path == src else 'into'} this input, "
                "and the next run would read it as input; choose an output_dir outside the input"
            )
        for other in self.stacks:
            if other != source and self.target(other).resolve() == path:
                raise OutputCollisionError(
                    f"{source}: its prediction {path} would overwrite the prediction of {other} (same file name); "
                    "rename one of the inputs or run them separately"
                )

    def _collect(self, engine: Engine) -> None:
        output = engine.state.output
        for item in output if isinstance(output, list) else [output]:
            pred = item[self.pred_key]
            meta = pred.meta if isinstance(pred, MetaTensor) else {}
            source = str(meta.get("filename_or_obj", "prediction"))
            if source not in self.stacks:
                self._check_target(source)
            index = int(meta.get("slice_index", len(self.stacks.get(source, {}))))
            classes = as_class_map(pred)
            if classes.size and classes.max() > np.iinfo(self.dtype).max:
                raise ValueError(
                    f"{source}: label {int(classes.max())} does not fit the writer's {self.dtype} (use dtype='uint32')"
                )
            out = classes.astype(self.dtype)
            for k, v in self.value_map.items():
                out[classes == k] = v
            self.stacks.setdefault(source, {})[index] = out

    def _write(self, engine: Engine) -> None:
        from medcnn.data.tiff import write_tiff_stack

        for source, slices in self.stacks.items():
            path = self.target(source)
            write_tiff_stack(np.stack([slices[i] for i in sorted(slices)]), path, overwrite=self.overwrite)
            self.written.append(path)
            logger.info("%d predicted slices of %s written to %s", len(slices), source, path)
