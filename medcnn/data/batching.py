"""Batch-level tools: one patient's slices in slice order (for :class:`medcnn.networks.SliceScoreInferer`), MixUp
of classification batches (:class:`MixUpBatch`), and sampling weights that give every group (site, patient) the
same share of the training draws (:func:`group_balanced_weights`)."""

from __future__ import annotations

import collections
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from monai.engines import default_prepare_batch
from monai.transforms import MixUp
from torch.utils.data import Sampler

__all__ = ["PatientSliceBatchSampler", "MixUpBatch", "group_balanced_weights"]


def _name(item: Any, position: int) -> str:
    if isinstance(item, dict):
        for key in ("id", "image"):
            if key in item:
                return f"{item[key]}"
    return f"item {position}"


def group_balanced_weights(data: Any, group_of: Any = None, key: str = "patient") -> list[float]:
    """Per-item sampling weights under which every group is drawn equally often, items within a group uniformly.

    ``data``: a dataset with a ``.data`` list (MONAI ``Dataset`` / ``CacheDataset``) or the list of dicts; the group
    of an item is ``group_of(item[key])`` (e.g. :func:`medcnn.networks.tcga_site` for the TCGA site of a patient id)
    or ``item[key]`` itself. Use with ``torch.utils.data.WeightedRandomSampler(weights, len(data))``: a cohort of
    10 patients from one hospital and 3 from another then trains on both hospitals alike. The weights sum to the
    number of items. An item without ``key`` is a ``ValueError`` naming it.
    """
    items: Sequence = getattr(data, "data", data)
    if len(items) == 0:
        raise ValueError("group_balanced_weights: no items")
    groups = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or key not in item:
            raise ValueError(f"group_balanced_weights: {_name(item, i)} has no {key!r} to group by")
        groups.append(group_of(item[key]) if group_of is not None else item[key])
    counts = collections.Counter(groups)
    share = len(items) / len(counts)
    return [share / counts[g] for g in groups]


class PatientSliceBatchSampler(Sampler[list[int]]):
    """A ``batch_sampler`` yielding, per patient, the dataset indices of all its slices ordered by slice index.

    ``data``: the dataset (anything with a ``.data`` list, as MONAI's ``Dataset`` / ``CacheDataset``) or its list of
    dicts; every item needs ``group_key`` (patient) and ``order_key`` (slice index). Patients come in the order of
    their first item, so the order of the list does not change any batch. :attr:`slices` maps each patient to its
    slice indices (what :class:`~medcnn.networks.SliceScoreInferer` checks a batch against). An item without the
    keys, or two slices of one patient with one slice index, is a ``ValueError`` naming the items.

    Use as ``DataLoader(dataset, batch_sampler=PatientSliceBatchSampler(dataset))`` (no ``batch_size`` /
    ``shuffle``). A batch is as large as the patient's volume (the LGG patients: 20-60 slices).
    """

    def __init__(self, data: Any, group_key: str = "patient", order_key: str = "slice_index") -> None:
        items: Sequence = getattr(data, "data", data)
        groups: dict[str, list[tuple[int, int]]] = {}
        for pos, item in enumerate(items):
            try:
                group, order = str(item[group_key]), int(item[order_key])
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{_name(item, pos)}: a patient batch needs '{group_key}' and an integer "
                                 f"'{order_key}' in every datalist item ({exc})") from None
            groups.setdefault(group, []).append((order, pos))
        self._batches: list[list[int]] = []
        self.slices: dict[str, list[int]] = {}
        for group, members in groups.items():
            members.sort()
            for (a, pa), (b, pb) in zip(members, members[1:], strict=False):
                if a == b:
                    raise ValueError(f"{_name(items[pb], pb)}: patient {group} has two slices with {order_key} {a} "
                                     f"(the other is {_name(items[pa], pa)})")
            self._batches.append([pos for _, pos in members])
            self.slices[group] = [order for order, _ in members]

    def __iter__(self) -> Iterator[list[int]]:
        return iter([list(b) for b in self._batches])

    def __len__(self) -> int:
        return len(self._batches)


class MixUpBatch:
    """``prepare_batch`` of a classification trainer that mixes each training batch (Zhang et al., *mixup: Beyond
    Empirical Risk Minimization*, ICLR 2018).

    Every image becomes ``w * x_i + (1 - w) * x_perm(i)`` with its own weight ``w ~ Beta(alpha, alpha)`` and a random
    pairing within the batch (MONAI's :class:`monai.transforms.MixUp` draws both and mixes the images); the label
    becomes the same mixture of the two one-hot labels, a ``(B, num_classes)`` float target that
    ``torch.nn.CrossEntropyLoss`` takes as class probabilities. MONAI's ``MixUp`` mixes only image-shaped labels
    (``(B, C, *spatial)``), which is why the one-hot class labels are mixed here with the weights and pairing it drew.

    Use it as ``SupervisedTrainer(prepare_batch=MixUpBatch(alpha=0.2, seed=@seed))``; the evaluator keeps MONAI's
    ``default_prepare_batch``, so validation loss, metrics and checkpoints see the real slices and labels. ``seed``
    makes the draws reproducible (MONAI's ``set_determinism`` does not reach a transform's own random state). A
    label outside ``0 .. num_classes - 1`` or a batch without labels is a ``ValueError``.
    """

    def __init__(self, alpha: float = 0.2, num_classes: int = 2, seed: int | None = 0) -> None:
        if float(alpha) <= 0:
            raise ValueError(f"MixUpBatch: alpha must be > 0, got {alpha}")
        if int(num_classes) < 2:
            raise ValueError(f"MixUpBatch: num_classes must be >= 2, got {num_classes}")
        self.alpha, self.num_classes = float(alpha), int(num_classes)
        self.random_state = np.random.RandomState(seed)

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
        # mixed on the CPU, where the loader left the batch (MixUp's weights are CPU tensors), then moved
        images, labels = default_prepare_batch(batchdata, None, non_blocking, **kwargs)
        if labels is None:
            raise ValueError("MixUpBatch: the training batch has no 'label'")
        labels = torch.as_tensor(labels).reshape(-1).long()
        if labels.numel() != images.shape[0]:
            raise ValueError(f"MixUpBatch: {labels.numel()} labels for a batch of {images.shape[0]} images "
                             "(one class index per image expected)")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"MixUpBatch: labels must lie in 0 .. {self.num_classes - 1}, got "
                             f"{sorted(set(labels.tolist()))}")
        mixer = MixUp(batch_size=images.shape[0], alpha=self.alpha)
        mixer.set_random_state(state=self.random_state)
        mixer.randomize()
        weight, perm, _ = mixer._params  # noqa: SLF001 - the draw MixUp.apply uses, reused for the labels
        one_hot = torch.nn.functional.one_hot(labels, self.num_classes).to(images.dtype)
        w = weight.to(images.dtype)[:, None]
        targets = w * one_hot + (1 - w) * one_hot[perm]
        mixed = mixer.apply(torch.as_tensor(images))
        if device is not None:
            mixed = mixed.to(device, non_blocking=non_blocking)
            targets = targets.to(device, non_blocking=non_blocking)
        return mixed, targets
