"""One slice-scoring rule for 2D slice classifiers run over a volume: mirror-image mean, then neighbour mean.

A slice classifier scores every slice of a patient on its own. Averaging each slice's log-odds with those of its
left-right mirror image and then with the slices ``z - r .. z + r`` of the same patient (those that exist) is a
test-time rule that needs no retraining (measured for ``lgg_tumour_localisation`` by patient-level CV:
``flip_mean_z3`` in ``scripts/cv_classifier.py``). The rule must decide the slice wherever the bundle is used
(``evaluate.json``, ``inference.json``, ``medcnn predict``, MONAI Label), so it lives here once:

- :class:`SliceScoreInferer`: a MONAI ``Inferer`` returning the rule's logits for a batch that is ONE patient's
  slices (``slice_index`` and ``group`` passed as keyword arguments, e.g. by MONAI's ``PrepareBatchExtraInput``).
  Its two stages are public: :meth:`~SliceScoreInferer.score` (per slice, the mirror mean) and
  :meth:`~SliceScoreInferer.smooth` (the neighbour mean over a whole patient), so a caller that scores slice by
  slice (``medcnn predict``, MONAI Label) applies exactly the same rule.
- :class:`PatientSliceBatchSampler` (in :mod:`medcnn.data.batching`) makes every batch of an evaluation one
  patient's slices in slice order.

Averaging the two class logits averages the log-odds exactly (``l1 - l0`` is linear in the logits), so the
softmax of the returned logits is the rule's probability. Why not MONAI's ``TestTimeAugmentation``: it draws
random transforms and inverts them per item; this is a deterministic mirror plus an average along the slice axis,
which no MONAI inferer does. Why not :class:`medcnn.networks.FlipEnsembleInferer`: it flips the output back, which
is right for a dense map and wrong for class logits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monai.inferers import Inferer

from medcnn.config import flag

__all__ = ["SliceScoreInferer", "SliceBatchError", "neighbour_mean"]


class SliceBatchError(ValueError):
    """A batch that is not one patient's slices in slice order, where the neighbour mean needs one."""


def _indices(slice_index: Any, n: int) -> torch.Tensor:
    idx = torch.as_tensor(slice_index).reshape(-1).long().cpu()
    if idx.numel() != n:
        raise SliceBatchError(f"slice scoring: {idx.numel()} slice indices for a batch of {n} slices")
    return idx


def neighbour_mean(logits: torch.Tensor, slice_index: Any, radius: int = 1) -> torch.Tensor:
    """Mean of each row of ``logits`` ``(N, K)`` over the rows whose ``slice_index`` is within ``radius`` of its own.

    Rows are slices of one patient; a neighbour that is not in the batch (the ends of the volume, a missing slice)
    is left out, as ``z_smooth`` of ``scripts/cv_classifier.py`` does. ``radius`` 0 returns ``logits``.
    """
    if radius <= 0:
        return logits
    idx = _indices(slice_index, logits.shape[0]).to(logits.device)
    weights = ((idx[:, None] - idx[None, :]).abs() <= int(radius)).to(logits.dtype)  # (N, N), 1 on the diagonal
    flat = logits.reshape(logits.shape[0], -1)
    return ((weights @ flat) / weights.sum(1, keepdim=True)).reshape(logits.shape)


class SliceScoreInferer(Inferer):
    """Slice classifier logits under the slice-scoring rule: mirror mean, then mean over neighbouring slices.

    ``inputs`` ``(N, C, H, W)`` must be the slices of ONE patient (volume) in slice order; returns ``(N, K)``
    logits. ``flip``: average the logits of each slice and of its mirror image along ``flip_spatial_axis`` (0-based
    spatial axis; 1 = the second spatial axis, the left-right axis of the LGG / BraTS slices as the bundles load
    them, the axis of their ``RandFlipd`` augmentation). ``neighbour_radius`` r: then average each slice's logits
    with those of the slices ``z - r .. z + r`` present in the batch (0 = off).

    With ``neighbour_radius`` > 0 the call needs ``slice_index`` (one per item) and accepts ``group`` (one patient id
    per item); it raises :class:`SliceBatchError` when the batch mixes patients, when the indices are not strictly
    increasing (a shuffled or duplicated slice) and, given ``expected_slices`` (``{patient: [slice indices]}``,
    e.g. :attr:`medcnn.data.batching.PatientSliceBatchSampler.slices`), when the batch is not the patient's
    complete set of slices (a patient split over two batches would lose neighbours silently otherwise).
    ``max_batch`` bounds the slices given to the network at once (the neighbour mean still spans the batch).
    """

    def __init__(
        self,
        flip: bool = True,
        flip_spatial_axis: int = 1,
        neighbour_radius: int = 1,
        expected_slices: Mapping[Any, Sequence[int]] | None = None,
        max_batch: int | None = None,
    ) -> None:
        super().__init__()
        if int(neighbour_radius) < 0:
            raise ValueError(f"SliceScoreInferer: neighbour_radius must be >= 0, got {neighbour_radius}")
        self.flip = flag(flip, "SliceScoreInferer: flip")
        self.flip_dim = int(flip_spatial_axis) + 2
        self.neighbour_radius = int(neighbour_radius)
        self.expected_slices = expected_slices
        self.max_batch = max_batch

    def with_expected_slices(self, expected_slices: Mapping[Any, Sequence[int]] | None) -> SliceScoreInferer:
        """The same rule checking every batch against ``expected_slices`` (``{patient: [slice indices]}``)."""
        return SliceScoreInferer(self.flip, self.flip_dim - 2, self.neighbour_radius, expected_slices, self.max_batch)

    def score(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args, **kwargs) -> torch.Tensor:
        """Per-slice logits ``(N, K)``: the network's, averaged with those of the mirrored slice when ``flip``."""
        step = int(self.max_batch or inputs.shape[0]) or 1
        parts = []
        for start in range(0, inputs.shape[0], step):
            x = inputs[start:start + step]
            out = network(x, *args, **kwargs)
            if self.flip:
                out = (out + network(torch.flip(x, dims=[self.flip_dim]), *args, **kwargs)) / 2
            parts.append(out)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def smooth(self, logits: torch.Tensor, slice_index: Any = None, group: Any = None) -> torch.Tensor:
        """The neighbour mean of one patient's per-slice logits ``(N, K)`` (checked as in the class docstring)."""
        if self.neighbour_radius == 0:
            return logits
        n = logits.shape[0]
        if slice_index is None:
            raise SliceBatchError(
                f"slice scoring with neighbour_radius {self.neighbour_radius} needs the slice index of each of the "
                f"{n} slices (pass slice_index=..., e.g. PrepareBatchExtraInput(extra_keys={{'slice_index': "
                "'slice_index', 'group': 'patient'}}) with a PatientSliceBatchSampler)")
        idx = _indices(slice_index, n)
        name = None
        if group is not None:
            groups = [group] * n if isinstance(group, (str, int)) else [str(g) for g in group]
            if len(set(groups)) > 1:
                raise SliceBatchError(f"slice scoring: one batch holds slices of several patients "
                                      f"{sorted(set(groups))}; batch by patient (PatientSliceBatchSampler)")
            name = groups[0] if groups else None
        where = f" of patient {name}" if name is not None else ""
        if n > 1 and not bool((idx[1:] > idx[:-1]).all()):
            raise SliceBatchError(f"slice scoring: the slices{where} are not in strictly increasing slice order "
                                  f"({idx.tolist()}); batch by patient in slice order (PatientSliceBatchSampler)")
        if self.expected_slices is not None and name is not None:
            want = [int(v) for v in self.expected_slices.get(name, [])]
            if idx.tolist() != want:
                raise SliceBatchError(f"slice scoring: the batch{where} holds slices {idx.tolist()}, the patient has "
                                      f"{want}; each batch must be one patient's complete set of slices")
        return neighbour_mean(logits, idx, self.neighbour_radius)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args,
                 slice_index: Any = None, group: Any = None, **kwargs) -> torch.Tensor:
        return self.smooth(self.score(inputs, network, *args, **kwargs), slice_index, group)
