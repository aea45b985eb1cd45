"""Batches that are one patient's slices in slice order (for :class:`medcnn.networks.SliceScoreInferer`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from torch.utils.data import Sampler

__all__ = ["PatientSliceBatchSampler"]


def _name(item: Any, position: int) -> str:
    if isinstance(item, dict):
        for key in ("id", "image"):
            if key in item:
                return f"{item[key]}"
    return f"item {position}"


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
