"""One PDF per case: summary, metrics table, confusion matrix, slices with mask and CAM overlays, training curves.

Written with matplotlib's ``PdfPages``; no external service. The text stays text (extractable with pypdf,
searchable); ``font_type=42`` embeds TrueType subsets instead of matplotlib's default Type 3 fonts (nicer text
selection in some viewers, about 1 s slower per report). Figures from :mod:`medcnn.report.plots` (confusion
matrix, curves) are reused as embedded images.
Arrays follow MONAI's layout: ``(X, Y[, Z])`` or channel-first ``(1, X, Y[, Z])``, slices along the last axis;
a 2D image is one slice. ``transpose=True`` (default) shows ``array[:, :, k].T`` so an image loaded by MONAI
(x first) appears with rows downwards, as in a DICOM viewer.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import tempfile
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from string import Template
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402

from medcnn import __version__  # noqa: E402
from medcnn.metrics.segmentation import pixel_confusion_matrix, segmentation_report  # noqa: E402
from medcnn.report.plots import plot_confusion_matrix, plot_curves  # noqa: E402
from medcnn.report.summary import case_facts, render_summary  # noqa: E402

__all__ = [
    "write_case_report", "write_case_reports", "load_json_or_none", "select_slices", "load_report_volume",
    "on_image_grid", "run_report",
    "add_parser",
]

logger = logging.getLogger(__name__)

A4 = (8.27, 11.69)


def load_json_or_none(value: str | os.PathLike | Mapping | None, what: str) -> dict | None:
    """A dict as is, a JSON file's content, or None; an unreadable file raises ValueError naming it."""
    if value is None or isinstance(value, Mapping):
        return dict(value) if value is not None else None
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"{what} file {path}: not found")
    try:
        content = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{what} file {path}: not readable as JSON ({exc})") from exc
    if not isinstance(content, dict):
        raise ValueError(f"{what} file {path}: expected a JSON object")
    return content


def _volume(a, name: str) -> np.ndarray | None:
    """To a float ``(X, Y, Z)`` numpy array (2D -> one slice; a single channel is dropped)."""
    if a is None:
        return None
    a = np.asarray(a.detach().cpu() if hasattr(a, "detach") else a, dtype=np.float32)
    if a.ndim in (3, 4) and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3:
        raise ValueError(f"report: {name} must be (X, Y[, Z]) with at most one channel, got shape {a.shape}")
    return a


def select_slices(pred: np.ndarray, label=None, cam=None, max_slices: int = 6) -> list[int]:
    """Slice indices to show, in order: the slice with the largest predicted (else reference, else CAM) area and
    slices spread evenly from the first to the last slice of the finding, so the pages show its whole extent
    rather than six neighbouring, nearly identical slices."""
    n = pred.shape[-1]
    scores = [(pred > 0).reshape(-1, n).sum(0)]
    if label is not None:
        scores.append((np.asarray(label) > 0).reshape(-1, n).sum(0))
    if cam is not None:
        cam = np.asarray(cam, dtype=float)
        scores.append(cam.reshape(-1, n).max(0) - cam.min())
    for score in scores:
        if score.max() > 0:
            found = np.flatnonzero(score > 0)
            if len(found) <= max_slices:
                return [int(i) for i in found]
            spread = [int(found[int(round(q))]) for q in np.linspace(0, len(found) - 1, max_slices)]
            largest = int(np.argmax(score))
            if largest not in spread:  # it replaces the nearest inner position (the two ends stay)
                inner = range(1, len(spread) - 1) if len(spread) > 2 else range(len(spread))
                spread[min(inner, key=lambda i: abs(spread[i] - largest))] = largest
            return sorted(set(spread))
    return sorted({int(round(v)) for v in np.linspace(0, n - 1, min(max_slices, n) + 2)[1:-1]}) or [0]


def _window(img: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(img, [0.5, 99.5]) if img.size else (0.0, 1.0)
    return float(lo), float(max(hi, lo + 1e-6))


def _scalar_rows(metrics: Mapping[str, Any], limit: int = 26) -> list[list[str]]:
    rows = []
    for key, value in metrics.items():
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, (int, float)):
            rows.append([str(key), f"{value:.4f}" if isinstance(value, float) else str(value)])
        if len(rows) >= limit:
            break
    return rows


def _embed_png(ax, png: Path) -> None:
    ax.imshow(plt.imread(png))
    ax.axis("off")


def _text_block(fig, x: float, y: float, text: str, width: int, **kw) -> None:
    fig.text(x, y, "\n".join(textwrap.wrap(text, width)), va="top", ha="left", **kw)


def write_case_report(
    output_path: str | os.PathLike,
    image,
    pred,
    cam=None,
    label=None,
    metrics: Mapping[str, Any] | str | os.PathLike | None = None,
    curves: Mapping[str, Sequence[float]] | str | os.PathLike | None = None,
    case_id: str | None = None,
    spacing: Sequence[float] | None = None,
    class_names: Sequence[str] = ("background", "tumour"),
    max_slices: int = 6,
    template: Template | str | None = None,
    finding_name: str = "tumour-like region",
    sources: Mapping[str, str] | None = None,
    transpose: bool = True,
    font_type: int = 3,
    probability: float | None = None,
    slice_probabilities: Sequence[float | None] | None = None,
    cam_name: str = "Grad-CAM",
) -> Path:
    """Write the PDF report of one case and return its path.

    Args:
        output_path: the ``.pdf`` to write (parents created; refuses to overwrite an input file).
        image: the input image; pred: the predicted mask (non-zero = finding); cam: optional heatmap;
            label: optional reference mask. All ``(X, Y[, Z])`` or ``(1, X, Y[, Z])`` of the same shape.
        metrics: evaluation figures (dict or ``metrics.json`` path) for the table, the summary and the
            confusion matrix (``confusion_matrix``) when no ``label`` gives a per-case one.
        curves: training history (dict or ``curves.json`` of ``TrainingCurvesHandler``).
        spacing: voxel size in mm (default: the MetaTensor's ``pixdim``) for areas and volumes.
        template: summary template text (``string.Template`` fields of :data:`medcnn.report.summary.SUMMARY_FIELDS`).
        sources: names shown in the header, e.g. ``{"image": path, "prediction": path}``.
        transpose: show ``array[:, :, k].T`` (MONAI x-first arrays appear rows-down, as in a DICOM viewer).
        font_type: 3 (matplotlib default, fast) or 42 (TrueType).
        probability: a classifier's probability that the finding is present (weakly supervised bundles).
        slice_probabilities: a slice classifier's probability of every slice (along the last axis; ``None`` where
            unknown), printed above each slice shown: the probability the slice's decision was made on.
        cam_name: how the legend names the heatmap's method (``medcnn.localisation.methods.cam_display_name``).
    """
    output_path = Path(output_path)
    if output_path.suffix.lower() != ".pdf":
        raise ValueError(f"report output {output_path}: the file name must end in .pdf")
    for what, src in (sources or {}).items():
        if src and Path(str(src)).exists() and Path(str(src)).resolve() == output_path.resolve():
            raise ValueError(f"report output {output_path}: would overwrite the {what} input")
    if spacing is None and hasattr(image, "pixdim"):
        spacing = [float(v) for v in image.pixdim]
    img = _volume(image, "image")
    mask = _volume(pred, "prediction")
    heat = _volume(cam, "CAM")
    ref = _volume(label, "label")
    for name, arr in (("prediction", mask), ("CAM", heat), ("label", ref)):
        if arr is not None and arr.shape != img.shape:
            raise ValueError(f"report: {name} shape {arr.shape} does not match the image shape {img.shape}")
    metrics_d = load_json_or_none(metrics, "metrics") or {}
    curves_d = load_json_or_none(curves, "curves")
    case_id = case_id or output_path.stem

    facts = case_facts(mask, spacing, label=ref, cam=heat, metrics=metrics_d, case_id=case_id,
                       finding_name=finding_name, probability=probability)
    summary = render_summary(facts, template)

    case_metrics: dict[str, Any] = {}
    matrices: list[tuple[np.ndarray, str]] = []
    if ref is not None:
        cm_arr = pixel_confusion_matrix(ref > 0, mask > 0, 2)
        rep = segmentation_report(cm_arr, [str(c) for c in class_names[:2]])
        fg = str(class_names[1]) if len(class_names) > 1 else "foreground"
        for key in (f"{fg}_dice", f"{fg}_precision", f"{fg}_recall", "pixel_accuracy"):
            case_metrics[key] = rep[key]
        matrices.append((cm_arr, "this case: pixel confusion matrix"))
    if isinstance(metrics_d.get("confusion_matrix"), list):
        matrices.append((np.asarray(metrics_d["confusion_matrix"], dtype=float), "evaluation set: confusion matrix"))
    if probability is not None:
        case_metrics["classifier probability"] = float(probability)
    case_metrics["predicted slices"] = f"{facts['n_positive']} of {facts['n_slices']}"
    case_metrics["predicted volume"] = facts["volume"]

    output_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, plt.rc_context({"pdf.fonttype": font_type, "font.size": 9}):
        tmp = Path(tmp)
        meta = {"Title": f"medcnn case report {case_id}", "Author": "medcnn", "Subject": summary[:200],
                "Creator": f"medcnn {__version__}"}
        with PdfPages(output_path, metadata=meta) as pdf:
            _summary_page(pdf, tmp, case_id, summary, case_metrics, metrics_d, matrices, class_names, sources)
            _slices_page(pdf, case_id, img, mask, ref, heat, max_slices, transpose, slice_probabilities, cam_name)
            if curves_d:
                _curves_page(pdf, tmp, curves_d)
    logger.info("report written to %s", output_path)
    return output_path


def write_case_reports(
    cases: Sequence[Mapping[str, Any]],
    output_dir: str | os.PathLike,
    metrics: Mapping[str, Any] | None = None,
    curves: Mapping[str, Any] | None = None,
    **report_kwargs: Any,
) -> list[Path]:
    """Write ``<output_dir>/<name>_report.pdf`` for every case of :class:`medcnn.report.cases.ReportCases` (a
    repeated name gets ``_2``, ``_3`` ...) with the evaluation's ``metrics`` and ``curves``; returns the paths."""
    names: dict[str, int] = {}
    written = []
    for case in cases:
        name = case["name"]
        names[name] = names.get(name, 0) + 1
        if names[name] > 1:
            name = f"{name}_{names[name]}"
        written.append(write_case_report(
            Path(output_dir) / f"{name}_report.pdf", case["image"], case["pred"], cam=case.get("cam"),
            label=case.get("label"), metrics=metrics, curves=curves, case_id=name, spacing=case["spacing"],
            sources={"image": case["source"]}, probability=case.get("probability"),
            slice_probabilities=case.get("slice_probabilities"), **report_kwargs,
        ))
    return written


def _summary_page(pdf: PdfPages, tmp: Path, case_id: str, summary: str, case_metrics: Mapping[str, Any],
                  metrics_d: Mapping[str, Any], matrices: list, class_names: Sequence[str],
                  sources: Mapping[str, str] | None) -> None:
    """Page 1: header, summary, metrics table (this case, evaluation set), confusion matrices."""
    fig = plt.figure(figsize=A4)
    fig.text(0.06, 0.965, f"medcnn case report: {case_id}", fontsize=16, weight="bold", va="top")
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = [f"generated {stamp} by medcnn {__version__}"]
    header += [f"{k}: {v}" for k, v in (sources or {}).items() if v]
    _text_block(fig, 0.06, 0.935, " | ".join(header[:1]), 110, fontsize=8, color="dimgray")
    for i, line in enumerate(header[1:6]):
        fig.text(0.06, 0.918 - 0.013 * i, textwrap.shorten(line, 120), fontsize=7.5, color="dimgray",
                 va="top")
    fig.text(0.06, 0.84, "Summary", fontsize=12, weight="bold", va="top")
    _text_block(fig, 0.06, 0.815, summary, 95, fontsize=10, linespacing=1.5)
    ax_t = fig.add_axes((0.06, 0.08, 0.42, 0.50))
    ax_t.axis("off")
    rows = [[k, v if isinstance(v, str) else f"{v:.4f}"] for k, v in case_metrics.items()]
    section = len(rows)
    rows += _scalar_rows(metrics_d)
    if rows:
        table = ax_t.table(cellText=rows, colLabels=["metric", "value"], loc="upper left",
                           colWidths=[0.68, 0.32])
        table.auto_set_font_size(False)
        table.set_fontsize(8)
        table.scale(1, 1.25)
        for (r, _c), cell in table.get_celld().items():
            if r == 0:
                cell.set_facecolor("#dde6f0")
            elif r <= section:
                cell.set_facecolor("#f3f7ee")
    ax_t.set_title("metrics (green: this case; white: evaluation set, metrics.json)", fontsize=8.5,
                   loc="left")
    height = 0.52 / max(len(matrices), 1)
    for i, (cm, title) in enumerate(matrices):
        names = list(class_names) if len(class_names) == cm.shape[0] else [str(c) for c in range(len(cm))]
        png = tmp / f"cm{i}.png"
        plot_confusion_matrix(cm, names, png, normalise=True, title=title)
        ax_cm = fig.add_axes((0.52, 0.58 - (i + 1) * height, 0.44, height - 0.01))
        ax_cm.set_anchor("N")
        _embed_png(ax_cm, png)
    pdf.savefig(fig)
    plt.close(fig)


def _slices_page(pdf: PdfPages, case_id: str, img: np.ndarray, mask: np.ndarray, ref: np.ndarray | None,
                 heat: np.ndarray | None, max_slices: int, transpose: bool,
                 slice_probabilities: Sequence[float | None] | None = None, cam_name: str = "Grad-CAM") -> None:
    """Page 2: slices ``(X, Y, Z)`` with the predicted mask (green), reference (yellow dashed) and CAM overlay."""
    idx = select_slices(mask, ref, heat, max_slices)
    ncol = 2 if len(idx) > 1 else 1
    nrow = int(np.ceil(len(idx) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=A4, squeeze=False)
    if len(idx) == 1:  # one image: centred, not the full page width
        axes[0, 0].set_position((0.15, 0.35, 0.7, 0.5))
    lo, hi = _window(img)
    for ax, k in zip(axes.ravel(), idx, strict=False):
        def view(a, k=k):
            s = a[:, :, k]
            return s.T if transpose else s

        ax.imshow(view(img), cmap="gray", vmin=lo, vmax=hi)
        if heat is not None:
            h_lo, h_hi = float(heat.min()), max(float(heat.max()), float(heat.min()) + 1e-8)
            shown = np.ma.masked_less(view(heat), h_lo + 0.2 * (h_hi - h_lo))  # hide weak attention
            ax.imshow(shown, cmap="jet", alpha=0.4, vmin=h_lo, vmax=h_hi)
        if (view(mask) > 0).any():
            ax.contour(view(mask) > 0, levels=[0.5], colors="lime", linewidths=1.2)
        if ref is not None and (view(ref) > 0).any():
            ax.contour(view(ref) > 0, levels=[0.5], colors="yellow", linewidths=1.0, linestyles="--")
        area = int((mask[:, :, k] > 0).sum())
        where = f"slice {k + 1} of {img.shape[-1]}: " if img.shape[-1] > 1 else ""
        p = slice_probabilities[k] if slice_probabilities is not None and k < len(slice_probabilities) else None
        prob = f"p = {float(p):.3f}, " if p is not None else ""
        ax.set_title(f"{where}{prob}predicted region {area} px", fontsize=9)
        ax.axis("off")
    for ax in axes.ravel()[len(idx):]:
        ax.axis("off")
    legend = "green outline: predicted region"
    legend += "; yellow dashed: reference" if ref is not None else ""
    legend += f"; colour overlay: {cam_name} attention (red = strongest)" if heat is not None else ""
    what = ("slices from the first to the last with a predicted region, and its largest" if img.shape[-1] > 1
            else "image and predicted region")
    fig.suptitle(f"{case_id}: {what}\n{legend}", fontsize=10)
    if len(idx) > 1:
        fig.tight_layout(rect=(0, 0, 1, 0.95))
    pdf.savefig(fig)
    plt.close(fig)


def _curves_page(pdf: PdfPages, tmp: Path, curves_d: Mapping[str, Any]) -> None:
    """Page 3: training curves and the best value of every validation figure."""
    history = {k: v for k, v in curves_d.items() if not k.endswith("_time_s") and k != "time_s"
               and isinstance(v, list)}
    fig = plt.figure(figsize=A4)
    fig.text(0.06, 0.965, "Training curves", fontsize=14, weight="bold", va="top")
    notes = []
    if curves_d.get("time_s"):
        notes.append(f"{len(curves_d['time_s'])} epochs in {float(curves_d['time_s'][-1]):.0f} s")
    for key, val in history.items():
        if key not in ("epoch", "loss") and not key.endswith("_x") and val:
            values = np.asarray([np.nan if v is None else v for v in val], dtype=float)
            if not np.isfinite(values).any():  # e.g. PPV while no image was called positive
                continue
            best = int(np.nanargmax(values))
            at = curves_d.get(f"{key}_x", list(range(1, len(val) + 1)))[best]
            notes.append(f"best {key} {float(val[best]):.4f} at epoch {at}")
    _text_block(fig, 0.06, 0.93, "; ".join(notes) or "training history", 100, fontsize=9)
    try:
        png = tmp / "curves.png"
        plot_curves(history, png, x_key="epoch")
        ax_c = fig.add_axes((0.04, 0.45, 0.92, 0.44))
        ax_c.set_anchor("N")
        _embed_png(ax_c, png)
    except ValueError as exc:
        fig.text(0.06, 0.8, f"curves could not be plotted: {exc}", fontsize=9)
    pdf.savefig(fig)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ `medcnn report` CLI
def load_report_volume(path: str | os.PathLike, what: str):
    """Load a NIfTI / image file or a DICOM series folder as a channel-first MetaTensor for the report."""
    from monai.transforms import LoadImage

    from medcnn.data.dicom import load_dicom_series

    path = Path(path).expanduser()
    if not path.exists():
        raise ValueError(f"{what} {path}: not found")
    if path.is_dir():
        return load_dicom_series(path)
    try:
        return LoadImage(image_only=True, ensure_channel_first=True)(str(path))
    except Exception as exc:  # MONAI wraps reader errors in RuntimeError
        raise ValueError(f"{what} {path}: cannot be read as an image ({str(exc).splitlines()[0]})") from exc


def on_image_grid(arr, image, what: str, path, image_path, resample: bool = False, atol: float = 1e-3):
    """``arr`` if it lies on ``image``'s voxel grid (same shape and affine), resampled onto it if ``resample``.

    A different shape or affine without ``resample`` raises ValueError naming both files: overlaying a mask
    on the wrong voxels would be silently wrong.
    """
    import torch
    from monai.transforms import ResampleToMatch

    same_shape = tuple(arr.shape[1:]) == tuple(image.shape[1:])
    same_affine = hasattr(arr, "affine") and torch.allclose(arr.affine.double(), image.affine.double(), atol=atol)
    if same_shape and same_affine:
        return arr
    if not resample:
        problem = "shape" if not same_shape else "affine (voxel-to-patient geometry)"
        raise ValueError(
            f"{what} {path}: {problem} differs from the image {image_path} (shape {tuple(arr.shape[1:])} vs "
            f"{tuple(image.shape[1:])}); resample it onto the image grid first or pass --resample"
        )
    mode = "bilinear" if what.startswith("CAM") else "nearest"
    logger.info("resampling %s %s onto the image grid (%s)", what, path, mode)
    return ResampleToMatch(mode=mode, padding_mode="zeros")(arr, img_dst=image)


def run_report(args) -> int:
    """``medcnn report``: write the PDF of one case from files on disk."""
    image = load_report_volume(args.image, "image")
    pred = load_report_volume(args.pred, "prediction")
    cam = load_report_volume(args.cam, "CAM heatmap") if args.cam else None
    label = load_report_volume(args.label, "reference mask") if args.label else None
    checked = {}
    for what, path, arr in (("prediction", args.pred, pred), ("CAM heatmap", args.cam, cam),
                            ("reference mask", args.label, label)):
        checked[what] = None if arr is None else on_image_grid(arr, image, what, path, args.image, args.resample)
    pred, cam, label = checked["prediction"], checked["CAM heatmap"], checked["reference mask"]
    template = Path(args.template).read_text() if args.template else None
    out = write_case_report(
        args.output, image, pred, cam=cam, label=label, metrics=args.metrics, curves=args.curves,
        case_id=args.case_id, class_names=args.class_names, max_slices=args.max_slices, template=template,
        finding_name=args.finding_name,
        sources={"image": str(args.image), "prediction": str(args.pred), "CAM": args.cam, "reference": args.label},
    )
    print(out)
    return 0


def add_parser(parser) -> object:
    """Configure the ``medcnn report`` subcommand."""
    parser.description = "Write a PDF report of one case: summary, metrics, confusion matrix, overlays, curves."
    parser.add_argument("--image", required=True, help="input image: NIfTI/PNG file or DICOM series folder")
    parser.add_argument("--pred", required=True, help="predicted mask on the image grid (file or DICOM folder)")
    parser.add_argument("--cam", help="optional CAM heatmap on the image grid")
    parser.add_argument("--label", help="optional reference mask (adds per-case Dice and confusion matrix)")
    parser.add_argument("--metrics", help="metrics.json of the bundle's evaluation")
    parser.add_argument("--curves", help="curves.json written by TrainingCurvesHandler")
    parser.add_argument("--output", "-o", required=True, help="PDF to write")
    parser.add_argument("--case-id", dest="case_id", help="name shown in the report (default: output file stem)")
    parser.add_argument("--class-names", dest="class_names", nargs="+", default=["background", "tumour"])
    parser.add_argument("--finding-name", dest="finding_name", default="tumour-like region")
    parser.add_argument("--max-slices", dest="max_slices", type=int, default=6)
    parser.add_argument("--template", help="text file with a string.Template summary ($n_positive, $n_slices, ...)")
    parser.add_argument("--resample", action="store_true",
                        help="resample prediction/CAM/reference onto the image grid when their geometry differs")
    parser.set_defaults(run=run_report)
    return run_report
