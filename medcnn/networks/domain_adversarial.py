"""Domain-adversarial training of a classifier (Ganin et al. 2016, "Domain-adversarial training of neural
networks", JMLR 17(59)): features that predict the label but not the site the image came from.

Real MRI cohorts mix scanners and protocols: the LGG patients come from five TCGA institutions (``TCGA_<site>_...``)
and a classifier trained on a few patients per site can learn a site's intensity offset as evidence. A second head
predicts the site from the same pooled features through a gradient-reversal layer: the head learns the site, the
network's trunk receives the negated gradient and unlearns it.

It fits MONAI's stock ``SupervisedTrainer``, which passes one prediction and one label to one loss:

- :class:`DomainAdversarialClassifier` returns ``[class logits | site logits]`` concatenated in training mode and
  the class logits alone in eval mode, so evaluators, CAM, inference and exports see the plain classifier;
- :class:`DomainBatch` is the trainer's ``prepare_batch``: the label becomes ``(B, 2)`` = class index and site
  index (the site read from a datalist key, by default ``patient``);
- :class:`DomainAdversarialLoss` splits both: classification loss + site cross-entropy.

The reversal strength follows the paper's schedule ``lambda(p) = weight * (2 / (1 + exp(-10 p)) - 1)``, ``p`` the
fraction of ``ramp_steps`` training steps done (a buffer in the state dict, so a resumed training continues the
ramp), which keeps the noisy early site gradients from disturbing the classifier.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.engines import default_prepare_batch
from torch import nn

__all__ = ["GradientReversal", "DomainAdversarialClassifier", "DomainAdversarialLoss", "DomainBatch"]


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, coeff: float) -> torch.Tensor:  # noqa: D102
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: D102
        return -ctx.coeff * grad, None


class GradientReversal(nn.Module):
    """Identity forward, gradient multiplied by ``-coeff`` backward."""

    def forward(self, x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:  # noqa: D102
        return _ReverseGrad.apply(x, float(coeff))


class DomainAdversarialClassifier(nn.Module):
    """A classifier with an adversarial site head on its pooled features.

    Args:
        classifier: a network with ``embed(x) -> (B, F)``, ``head(z) -> logits`` and ``embedding_size`` (e.g.
            :class:`medcnn.networks.ResNetClassifier`); its forward is what eval mode returns.
        num_domains: number of sites the head tells apart (>= 2).
        weight: final gradient-reversal strength (the paper's lambda, 1.0 there).
        ramp_steps: training steps over which the strength rises to ``weight`` (0 = at full strength at once).
        hidden: width of the site head's hidden layer.

    Raises:
        ValueError: a classifier without ``embed`` / ``head``, fewer than two domains or a negative weight.
    """

    def __init__(self, classifier: nn.Module, num_domains: int, weight: float = 1.0, ramp_steps: int = 0,
                 hidden: int = 64) -> None:
        super().__init__()
        missing = [a for a in ("embed", "head", "embedding_size") if not hasattr(classifier, a)]
        if missing:
            raise ValueError(f"DomainAdversarialClassifier: {type(classifier).__name__} has no {missing}; it needs "
                             "embed(x) -> pooled features, head(z) -> logits and embedding_size")
        if int(num_domains) < 2:
            raise ValueError(f"DomainAdversarialClassifier: needs at least 2 domains, got {num_domains}")
        if weight < 0 or ramp_steps < 0:
            raise ValueError(f"DomainAdversarialClassifier: weight and ramp_steps must be >= 0, got {weight}, "
                             f"{ramp_steps}")
        self.classifier = classifier
        self.num_domains = int(num_domains)
        self.weight, self.ramp_steps = float(weight), int(ramp_steps)
        self.reverse = GradientReversal()
        self.domain_head = nn.Sequential(nn.Linear(classifier.embedding_size, hidden), nn.ReLU(),
                                         nn.Linear(hidden, self.num_domains))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def reversal_strength(self) -> float:
        """The current lambda (the paper's schedule over ``ramp_steps``)."""
        if self.ramp_steps == 0:
            return self.weight
        p = min(1.0, int(self.step) / self.ramp_steps)
        return self.weight * (2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0)

    @property
    def cam_target_layer(self) -> nn.Module:
        """The classifier's CAM target layer (CAM runs in eval mode, where this module is the classifier)."""
        return self.classifier.cam_target_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Eval: class logits ``(B, num_classes)``. Training: ``(B, num_classes + num_domains)`` class then site
        logits, the site head behind the gradient reversal."""
        if not self.training:
            return self.classifier(x)
        z = self.classifier.embed(x)
        strength = self.reversal_strength()
        self.step += 1
        return torch.cat([self.classifier.head(z), self.domain_head(self.reverse(z, strength))], dim=1)


class DomainAdversarialLoss(nn.Module):
    """``loss(class logits, class) + CE(site logits, site)`` for :class:`DomainAdversarialClassifier`'s training
    output and :class:`DomainBatch`'s ``(B, 2)`` label; a ``(B, num_classes)`` prediction (eval mode) gets the
    classification loss alone.

    Args:
        num_classes: number of class logits at the front of the prediction.
        loss: the classification loss (cross-entropy by default).
    """

    def __init__(self, num_classes: int = 2, loss: nn.Module | None = None) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.loss = loss if loss is not None else nn.CrossEntropyLoss()
        self.domain_loss = nn.CrossEntropyLoss()

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: A002 - torch's name
        if target.ndim != 2 or target.shape[1] != 2 or target.shape[0] != input.shape[0]:
            raise ValueError(f"DomainAdversarialLoss: target must be (B, 2) = class and site index for "
                             f"predictions {tuple(input.shape)}, got {tuple(target.shape)}")
        if input.ndim != 2 or input.shape[1] < self.num_classes:
            raise ValueError(f"DomainAdversarialLoss: predictions must be (B, >= {self.num_classes}) logits, got "
                             f"{tuple(input.shape)}")
        target = target.long()
        loss = self.loss(input[:, : self.num_classes], target[:, 0])
        if input.shape[1] > self.num_classes:
            loss = loss + self.domain_loss(input[:, self.num_classes:], target[:, 1])
        return loss


def tcga_site(patient: str) -> str:
    """The TCGA tissue-source site of a patient id ``TCGA_<site>_<patient>[_<date>]`` (``"CS"``, ``"DU"``, ...)."""
    parts = str(patient).split("_")
    if len(parts) < 3 or parts[0] != "TCGA":
        raise ValueError(f"{patient!r} is not a TCGA patient id (TCGA_<site>_<patient>...): its site is unknown")
    return parts[1]


class DomainBatch:
    """``prepare_batch`` for a ``SupervisedTrainer``: ``(image, (B, 2) label)`` = class index and domain index.

    Args:
        domains: the domain names in index order (e.g. the sites of the training patients).
        key: datalist key the domain is read from.
        domain_of: maps the key's value to a domain name (default :func:`tcga_site`).

    Raises:
        ValueError: (when called) an item whose domain is not in ``domains``, naming its ``key`` value (the patient).
    """

    def __init__(self, domains: Sequence[str], key: str = "patient",
                 domain_of: Callable[[Any], str] | None = tcga_site) -> None:
        self.domains = [str(d) for d in domains]
        if len(set(self.domains)) != len(self.domains) or len(self.domains) < 2:
            raise ValueError(f"DomainBatch: needs at least 2 distinct domains, got {self.domains}")
        self.index = {d: i for i, d in enumerate(self.domains)}
        self.key, self.domain_of = key, domain_of or str

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
        image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        values = batchdata.get(self.key)
        if values is None:
            raise ValueError(f"DomainBatch: the batch has no {self.key!r} key to read the domain from")
        idx = []
        for value in values:
            name = self.domain_of(value)
            if name not in self.index:
                raise ValueError(f"{value}: domain {name!r} is not one of the training domains {self.domains}")
            idx.append(self.index[name])
        domain = torch.as_tensor(idx, dtype=torch.long, device=label.device)
        return image, torch.stack([torch.as_tensor(label).reshape(-1).long(), domain], dim=1)
