"""Domain-adversarial training: the site head learns the site, the trunk gets the reversed gradient, and outside
training the network is the plain classifier."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator, SupervisedTrainer

from medcnn.networks import (
    DomainAdversarialClassifier,
    DomainAdversarialLoss,
    DomainBatch,
    GradientReversal,
    ResNetClassifier,
    autocast_forward,
    tcga_site,
)


def _classifier(seed: int = 0) -> ResNetClassifier:
    torch.manual_seed(seed)
    return ResNetClassifier(2, 3, 2, num_blocks=3, channels=4, cam_layer="blocks.0")


def _dann(seed: int = 0, **kwargs) -> DomainAdversarialClassifier:
    net = DomainAdversarialClassifier(_classifier(seed), num_domains=3, **kwargs)
    torch.manual_seed(seed + 100)
    for p in net.domain_head.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return net


def test_resnet_classifier_forward_is_head_of_embed():
    net = _classifier().eval()
    x = torch.randn(2, 3, 32, 32)
    z = net.embed(x)
    assert z.shape == (2, net.embedding_size) == (2, 16)
    assert torch.equal(net(x), net.head(z))


def test_gradient_reversal_is_the_identity_forward_and_negates_the_gradient_backward():
    x = torch.randn(5, requires_grad=True)
    y = GradientReversal()(x, 0.3)
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.allclose(x.grad, torch.full((5,), -0.3))


def test_eval_mode_is_the_plain_classifier_and_training_mode_adds_site_logits():
    net = _dann()
    x = torch.randn(4, 3, 32, 32)
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), net.classifier(x))
    assert net.cam_target_layer is net.classifier.blocks[0]
    net.train()
    out = net(x)
    assert out.shape == (4, 2 + 3)
    assert int(net.step) == 1
    # the class logits in training are the classifier's own (same batch statistics, no dropout difference)
    torch.manual_seed(0)
    a = net(x)[:, :2]
    torch.manual_seed(0)
    b = net.classifier(x)
    assert torch.allclose(a, b, atol=1e-6)


def test_reversal_strength_follows_the_schedule_and_is_resumed_from_the_state_dict():
    net = _dann(weight=0.5, ramp_steps=100)
    assert net.reversal_strength() == 0.0
    net.step.fill_(10)
    assert math.isclose(net.reversal_strength(), 0.5 * (2 / (1 + math.exp(-1.0)) - 1))
    net.step.fill_(250)
    assert net.reversal_strength() == pytest.approx(0.5 * (2 / (1 + math.exp(-10.0)) - 1))
    resumed = _dann(1, weight=0.5, ramp_steps=100)
    resumed.load_state_dict(net.state_dict())
    assert int(resumed.step) == 250
    assert _dann(weight=0.7).reversal_strength() == 0.7  # no ramp: full strength at once


def test_trunk_receives_the_negated_site_gradient_and_the_site_head_the_plain_one():
    x, site = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2])
    net = _dann(weight=0.4).train()
    torch.manual_seed(1)
    F.cross_entropy(net(x)[:, 2:], site).backward()
    reversed_grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}

    plain = _dann(weight=0.4).train()  # the same weights, site head without the reversal
    torch.manual_seed(1)
    F.cross_entropy(plain.domain_head(plain.classifier.embed(x)), site).backward()
    trunk = [n for n in reversed_grads if n.startswith("classifier.blocks")]
    head = [n for n in reversed_grads if n.startswith("domain_head")]
    assert trunk and head
    for n in trunk:
        assert torch.allclose(reversed_grads[n], -0.4 * plain.get_parameter(n).grad, atol=1e-6), n
    for n in head:
        assert torch.allclose(reversed_grads[n], plain.get_parameter(n).grad, atol=1e-6), n
    # the class head gets no gradient from the site loss
    assert all(not g.any() for n, g in reversed_grads.items() if n.startswith("classifier.fc"))


def test_classifier_weights_load_into_a_plain_classifier():
    net = _dann()
    plain = _classifier(5)
    inner = {k[len("classifier."):]: v for k, v in net.state_dict().items() if k.startswith("classifier.")}
    plain.load_state_dict(inner)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(plain.eval()(x), net.eval()(x))


def test_loss_is_class_plus_site_cross_entropy_and_class_only_in_eval():
    torch.manual_seed(0)
    pred, target = torch.randn(4, 5), torch.tensor([[0, 2], [1, 0], [1, 1], [0, 2]])
    loss = DomainAdversarialLoss(num_classes=2)
    expected = F.cross_entropy(pred[:, :2], target[:, 0]) + F.cross_entropy(pred[:, 2:], target[:, 1])
    assert torch.allclose(loss(pred, target), expected)
    assert torch.allclose(loss(pred[:, :2], target), F.cross_entropy(pred[:, :2], target[:, 0]))
    with pytest.raises(ValueError, match=r"target must be \(B, 2\)"):
        loss(pred, target[:, 0])
    with pytest.raises(ValueError, match="predictions must be"):
        loss(pred[:, :1], target)


def test_domain_batch_maps_patients_to_site_indices_and_names_the_unknown_patient():
    prepare = DomainBatch(["CS", "DU", "HT"])
    batch = {"image": torch.zeros(3, 1, 4, 4), "label": torch.tensor([1, 0, 1]),
             "patient": ["TCGA_HT_7475_19970918", "TCGA_CS_6665_20010817", "TCGA_DU_5871_19941206"]}
    image, label = prepare(batch)
    assert image.shape == (3, 1, 4, 4)
    assert label.tolist() == [[1, 2], [0, 0], [1, 1]]
    batch["patient"][1] = "TCGA_FG_5964_20010511"
    with pytest.raises(ValueError, match="TCGA_FG_5964_20010511: domain 'FG' is not one of the training domains"):
        prepare(batch)
    with pytest.raises(ValueError, match="no 'patient' key"):
        prepare({"image": batch["image"], "label": batch["label"]})
    with pytest.raises(ValueError, match="not a TCGA patient id"):
        tcga_site("patient_7")
    with pytest.raises(ValueError, match="2 distinct domains"):
        DomainBatch(["CS", "CS"])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="has no"):
        DomainAdversarialClassifier(torch.nn.Linear(2, 2), 3)
    with pytest.raises(ValueError, match="at least 2 domains"):
        DomainAdversarialClassifier(_classifier(), 1)
    with pytest.raises(ValueError, match=">= 0"):
        DomainAdversarialClassifier(_classifier(), 3, weight=-1.0)


def _site_data(n: int = 24) -> list[dict]:
    """Bright-square class on three sites; each site adds its own intensity offset."""
    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(n):
        site, label = ["CS", "DU", "HT"][i % 3], (i // 3) % 2
        image = 0.3 * torch.randn(3, 32, 32, generator=g) + {"CS": 0.0, "DU": 0.5, "HT": -0.5}[site]
        if label:
            image[:, 8:20, 8:20] += 2.0
        items.append({"image": image, "label": torch.tensor(label), "patient": f"TCGA_{site}_{i:04d}_2000"})
    return items


def test_stock_trainer_and_evaluator_train_it_with_the_site_label():
    """MONAI's SupervisedTrainer trains class + site with DomainBatch; its evaluator sees two class logits."""
    data = _site_data()
    net = autocast_forward(_dann(weight=0.3, ramp_steps=20), None)
    loader = DataLoader(Dataset(data), batch_size=8, shuffle=True)
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=8, train_data_loader=loader, network=net,
                                optimizer=torch.optim.Adam(net.parameters(), 1e-2),
                                loss_function=DomainAdversarialLoss(2), prepare_batch=DomainBatch(["CS", "DU", "HT"]))
    outputs: list = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(e.state.output[0]))
    trainer.run()
    assert int(net.step) == 8 * 3
    assert outputs[-1]["pred"].shape == (5,) and outputs[-1]["label"].shape == (2,)
    evaluator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=DataLoader(Dataset(data), batch_size=8),
                                    network=net)
    evaluator.run()
    assert evaluator.state.output[0]["pred"].shape == (2,)
    with torch.no_grad():
        logits = net.eval()(torch.stack([d["image"] for d in data]))
    labels = torch.stack([d["label"] for d in data])
    assert (logits.argmax(1) == labels).float().mean() >= 0.9  # the class is learnt through the site loss


def test_a_deep_copy_keeps_its_own_step():
    net = _dann(ramp_steps=10).train()
    twin = copy.deepcopy(net)
    net(torch.randn(2, 3, 32, 32))
    assert int(net.step) == 1 and int(twin.step) == 0
