"""MixUpBatch: every training image is a pairwise mixture whose one-hot label mixture carries the same weight."""

from __future__ import annotations

import pytest
import torch
from monai.engines import SupervisedTrainer

from medcnn.data import MixUpBatch


def _batch(n: int = 6):
    # image i is the constant i + 1 in every pixel; label i is class i, so a target row names both partners
    images = torch.arange(1, n + 1, dtype=torch.float32)[:, None, None, None].expand(n, 3, 4, 4).clone()
    return {"image": images, "label": torch.arange(n)}


def test_each_image_is_the_mixture_its_label_describes():
    batch = _batch()
    images, targets = MixUpBatch(alpha=0.4, num_classes=6, seed=3)(batch)
    assert images.shape == batch["image"].shape and targets.shape == (6, 6)
    assert torch.allclose(targets.sum(1), torch.ones(6))
    mixed_any = False
    for i in range(6):
        w = float(targets[i, i])
        others = [j for j in range(6) if j != i and targets[i, j] > 0]
        assert len(others) <= 1
        j = others[0] if others else i
        assert float(targets[i, j]) == pytest.approx(1 - w if j != i else 1.0, abs=1e-6)
        expected = w * (i + 1) + (1 - w) * (j + 1) if j != i else float(i + 1)
        assert torch.allclose(images[i], torch.full_like(images[i], expected), atol=1e-5)
        mixed_any |= 0.01 < w < 0.99 and j != i
    assert mixed_any, "no image was mixed with another"


def test_the_seed_makes_the_draws_reproducible():
    a = MixUpBatch(seed=1)(_batch(8) | {"label": torch.tensor([0, 1] * 4)})
    b = MixUpBatch(seed=1)(_batch(8) | {"label": torch.tensor([0, 1] * 4)})
    c = MixUpBatch(seed=2)(_batch(8) | {"label": torch.tensor([0, 1] * 4)})
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_a_trainer_takes_it_and_cross_entropy_takes_the_soft_targets():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
    data = [{"image": torch.randn(3, 4, 4), "label": torch.tensor(i % 2)} for i in range(8)]
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=1, train_data_loader=loader, network=net,
                                optimizer=torch.optim.SGD(net.parameters(), 0.1),
                                loss_function=torch.nn.CrossEntropyLoss(),
                                prepare_batch=MixUpBatch(alpha=0.2, seed=0))
    trainer.run()
    output = trainer.state.output  # decollated: one dict per image of the last batch
    label = torch.stack([torch.as_tensor(o["label"]) for o in output])
    assert label.shape == (4, 2) and label.dtype == torch.float32
    assert torch.allclose(label.sum(1), torch.ones(4))
    assert all(torch.isfinite(torch.as_tensor(o["loss"])) for o in output)


def test_bad_labels_and_parameters_are_named():
    with pytest.raises(ValueError, match=r"labels must lie in 0 \.\. 1, got \[0, 2\]"):
        MixUpBatch()({"image": torch.zeros(2, 1, 4, 4), "label": torch.tensor([0, 2])})
    with pytest.raises(ValueError, match="3 labels for a batch of 2 images"):
        MixUpBatch()({"image": torch.zeros(2, 1, 4, 4), "label": torch.tensor([0, 1, 1])})
    with pytest.raises(ValueError, match="no 'label'"):
        MixUpBatch()({"image": torch.zeros(2, 1, 4, 4)})
    with pytest.raises(ValueError, match="alpha must be > 0"):
        MixUpBatch(alpha=0)
