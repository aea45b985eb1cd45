"""``medcnn.networks.ClassifierEnsemble`` (mean logits, its CAM the mean of the members' CAMs, TorchScript), the
state dict :func:`assemble_ensemble` writes from member checkpoints (refused naming the file when members differ or
the output exists), :func:`checkpoint_members`, and ``medcnn train-ensemble`` on the LGG bundle with synthetic
patients: two members trained by the bundle's own train.json, assembled, evaluated by its evaluate.json."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from bundle_helpers import bundle_root, error_messages, kill, make_workflow, read_metrics, run_workflow
from test_bundle_lgg_localisation import TINY, make_synthetic_patients

from medcnn.localisation.methods import get_cam_method, normalise_maps
from medcnn.networks import (
    CheckpointError,
    ClassifierEnsemble,
    ResNetClassifier,
    assemble_ensemble,
    checkpoint_members,
    ensemble_or_member,
)


def _member(seed: int) -> ResNetClassifier:
    torch.manual_seed(seed)
    return ResNetClassifier(2, 3, 2, num_blocks=3, channels=4, cam_layer="blocks.0").eval()


def _ensemble(*members: ResNetClassifier) -> ClassifierEnsemble:
    ens = ClassifierEnsemble(members[0], len(members))
    for slot, m in zip(ens.members, members, strict=True):
        slot.load_state_dict(m.state_dict())
    return ens.eval()


def test_the_ensemble_outputs_the_mean_of_its_members_logits_also_as_torchscript():
    members = [_member(s) for s in (0, 1, 2)]
    ens = _ensemble(*members)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    mean = torch.stack([m(x) for m in members]).mean(0)
    assert not torch.allclose(members[0](x), members[1](x))  # the members differ
    torch.testing.assert_close(ens(x), mean)
    torch.testing.assert_close(torch.jit.script(ens)(x), mean)


def test_the_ensemble_cam_is_the_mean_of_the_members_cams_at_the_members_layer():
    members = [_member(s) for s in (0, 1)]
    ens = _ensemble(*members)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    cam = get_cam_method("layercam", ens, "blocks.0")
    assert cam.target_layer == "blocks.0" and ens.cam_target_layer_name == "blocks.0"
    each = [get_cam_method("layercam", m, "blocks.0")(x, 1) for m in members]
    assert not torch.allclose(each[0], each[1])
    torch.testing.assert_close(cam(x, 1), normalise_maps(torch.stack(each).mean(0)))
    with pytest.raises(ValueError, match="unknown CAM target_layer 'members.0.blocks.9'"):
        get_cam_method("layercam", ens, "members.0.blocks.9")


def test_a_chosen_cam_member_gives_the_ensemble_cam_of_that_member_alone():
    members = [_member(s) for s in (0, 1, 2)]
    ens = _ensemble(*members)
    ens.cam_member = 2
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(get_cam_method("hirescam", ens, "blocks.1")(x, 1),
                               get_cam_method("hirescam", members[2], "blocks.1")(x, 1))
    torch.testing.assert_close(ens(x), torch.stack([m(x) for m in members]).mean(0))  # classification: all three
    assert ensemble_or_member(members[0], 3, cam_member=1).cam_member == 1
    with pytest.raises(ValueError, match="cam_member must be None or 0 .. 2, got 3"):
        ClassifierEnsemble(members[0], 3, cam_member=3)


def test_one_member_is_the_member_itself_and_zero_is_refused():
    m = _member(0)
    assert ensemble_or_member(m, 1) is m
    assert isinstance(ensemble_or_member(m, 2), ClassifierEnsemble)
    with pytest.raises(ValueError, match="num_members must be >= 1"):
        ensemble_or_member(m, 0)


def test_assembled_checkpoint_loads_into_the_ensemble_and_counts_its_members(tmp_path):
    members = [_member(s) for s in (0, 1, 2)]
    paths = []
    for k, m in enumerate(members):
        paths.append(tmp_path / f"m{k}.pt")
        torch.save(m.state_dict() if k else {"model": m.state_dict()}, paths[-1])  # both layouts of model.pt
    out = tmp_path / "ens" / "model.pt"
    assemble_ensemble(paths, out)
    ens = ClassifierEnsemble(_member(9), 3)
    ens.load_state_dict(torch.load(out, weights_only=True))
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(ens.eval()(x), torch.stack([m(x) for m in members]).mean(0))
    assert (checkpoint_members(out), checkpoint_members(paths[0]), checkpoint_members(paths[1])) == (3, 1, 1)
    assert checkpoint_members(tmp_path / "missing.pt", default=3) == 3
    with pytest.raises(FileExistsError, match="model.pt exists"):
        assemble_ensemble(paths, out)  # never replaces weights


def test_members_of_different_networks_or_unreadable_files_are_refused_naming_the_file(tmp_path):
    torch.save(_member(0).state_dict(), tmp_path / "a.pt")
    torch.save(ResNetClassifier(2, 3, 2, num_blocks=3, channels=8).state_dict(), tmp_path / "wide.pt")
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"wide\.pt: its keys / shapes differ from .*a\.pt"):
        assemble_ensemble([tmp_path / "a.pt", tmp_path / "wide.pt"], tmp_path / "o1.pt")
    with pytest.raises(CheckpointError, match=r"broken\.pt: not a readable PyTorch checkpoint"):
        assemble_ensemble([tmp_path / "a.pt", tmp_path / "broken.pt"], tmp_path / "o2.pt")
    with pytest.raises(CheckpointError, match=r"gone\.pt: member checkpoint not found"):
        assemble_ensemble([tmp_path / "a.pt", tmp_path / "gone.pt"], tmp_path / "o3.pt")
    assert not any((tmp_path / f"o{k}.pt").exists() for k in (1, 2, 3))


@pytest.mark.slow
def test_train_ensemble_trains_members_with_train_json_and_evaluate_json_loads_the_ensemble(tmp_path, capsys,
                                                                                          monkeypatch):
    import logging

    from medcnn.cli import main

    # the command configures logging on this test's captured stderr: keep that handler out of later tests
    monkeypatch.setattr(logging.root, "handlers", [])

    data = make_synthetic_patients(tmp_path / "data")
    tiny = {**data, **TINY, "train#trainer#max_epochs": 2}
    overrides = [a for k, v in tiny.items() for a in (f"--{k}", json.dumps(v) if not isinstance(v, str) else v)]
    out = tmp_path / "ens"
    assert main(["train-ensemble", "--bundle", str(bundle_root("lgg_tumour_localisation")), "--seeds", "0", "1",
                 "--output_dir", str(out), "--jobs", "2", "--", *overrides]) == 0
    record = json.loads((out / "ensemble.json").read_text())
    assert record["seeds"] == [0, 1] and [m["seed"] for m in record["members"]] == [0, 1]
    for m in record["members"]:  # each member's own training as its curves recorded it, also printed
        curves = json.loads((out / f"member_{m['seed']}" / "curves.json").read_text())
        best = curves["val_loss"].index(min(curves["val_loss"]))
        assert (m["epochs"], m["best_epoch"]) == (2, curves["val_loss_x"][best])
        assert m["best_val_loss"] == pytest.approx(curves["val_loss"][best], abs=1e-4)
        assert m["val_auc_at_best"] == pytest.approx(curves["val_auc"][best], abs=1e-4)
    assert capsys.readouterr().out.count("epochs 2, best_epoch") == 2
    member_states = [torch.load(out / f"member_{s}" / "models" / "model.pt", weights_only=True) for s in (0, 1)]
    ens_state = torch.load(out / "models" / "model.pt", weights_only=True)
    for k, state in enumerate(member_states):
        for name, value in state.items():
            torch.testing.assert_close(ens_state[f"members.{k}.{name}"], value)
    assert not torch.equal(*(s["fc2.weight"] for s in member_states))  # the seeds gave two different networks
    # evaluate.json reads the number of members from the checkpoint: the ensemble and one member both evaluate
    for ckpt, n in ((out / "models" / "model.pt", 2), (out / "member_0" / "models" / "model.pt", 1)):
        wf = run_workflow("lgg_tumour_localisation", ["train.json", "evaluate.json"], "eval",
                          **{**data, **TINY, "report_max_cases": 0}, ckpt_path=str(ckpt),
                          output_dir=str(tmp_path / f"eval{n}"))
        net = wf.parser.get_parsed_content("network")
        assert (len(net.members) if isinstance(net, ClassifierEnsemble) else 1) == n
        assert read_metrics(tmp_path / f"eval{n}")["n_images"] == 12
    # inference.json: the ensemble's slice log-odds (after the slice-scoring rule, linear in the logits) are the
    # mean of its members' (one run each on the same test patient)
    log_odds = {}
    # in inference.json network_def is the ensemble (or the member itself) built from member_def
    inference_tiny = {k.replace("network_def#", "member_def#"): v for k, v in TINY.items()}
    for name, ckpt in (("ens", out / "models" / "model.pt"), ("m0", out / "member_0" / "models" / "model.pt"),
                       ("m1", out / "member_1" / "models" / "model.pt")):
        run_workflow("lgg_tumour_localisation", ["inference.json"], "infer", **{**data, **inference_tiny},
                     ckpt_path=str(ckpt), output_dir=str(tmp_path / f"inf_{name}"))
        rows = list(csv.reader((tmp_path / f"inf_{name}" / "predictions.csv").open()))
        log_odds[name] = np.log(np.asarray([float(r[2]) for r in rows]) / np.asarray([float(r[1]) for r in rows]))
    assert len(log_odds["ens"]) == 12 and not np.allclose(log_odds["m0"], log_odds["m1"], atol=1e-3)
    np.testing.assert_allclose(log_odds["ens"], (log_odds["m0"] + log_odds["m1"]) / 2, atol=1e-3)
    # repeating the command keeps the trained members and refuses to replace the ensemble's weights
    before = (out / "models" / "model.pt").read_bytes()
    assert main(["train-ensemble", "--bundle", str(bundle_root("lgg_tumour_localisation")), "--seeds", "0", "1",
                 "--output_dir", str(out), "--", *overrides]) == 1
    assert "model.pt exists: the ensemble's weights are never replaced" in capsys.readouterr().err
    assert (out / "models" / "model.pt").read_bytes() == before
    (out / "models" / "model.pt").rename(out / "first.pt")
    assert main(["train-ensemble", "--bundle", str(bundle_root("lgg_tumour_localisation")), "--seeds", "0", "1",
                 "--output_dir", str(out), "--", *overrides]) == 0
    assert capsys.readouterr().out.count("already trained") == 2
    assert (out / "models" / "model.pt").read_bytes() == before
    # a member killed after its first epoch (training_state.pt written, no member.json) is resumed by the next call
    # and ends with the weights of the uninterrupted member
    from ignite.engine import Events

    uninterrupted = torch.load(out / "member_1" / "models" / "model.pt", weights_only=True)
    shutil.rmtree(out / "member_1")
    (out / "models" / "model.pt").unlink()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the command's members run (2 CPUs / 2 jobs), so the arithmetic is the same
    try:
        wf = make_workflow("lgg_tumour_localisation", ["train.json"], "train", **tiny, seed=1,
                           output_dir=str(out / "member_1"))
        wf.initialize()
        wf.parser.get_parsed_content("train#trainer").add_event_handler(Events.EPOCH_COMPLETED(once=1), kill)
        with pytest.raises(Exception) as info:  # a kill: engine.terminate() would mark the run as ended
            wf.run()
        assert "Killed" in error_messages(info.value)
        wf.finalize()
    finally:
        torch.set_num_threads(threads)
    assert main(["train-ensemble", "--bundle", str(bundle_root("lgg_tumour_localisation")), "--seeds", "0", "1",
                 "--output_dir", str(out), "--jobs", "2", "--", *overrides]) == 0
    assert "member seed 1: resumed" in capsys.readouterr().out
    resumed = json.loads((out / "member_1" / "member.json").read_text())
    assert resumed["resumed"] and resumed["epochs"] == 2 and "--resume" in resumed["command"]
    log = (out / "member_1.log").read_text()  # the first call's training, then the resumed one: epoch 2 only
    assert "resumed from" in log and log.count("SupervisedTrainer - INFO - Epoch[1] Complete") == 1
    final = torch.load(out / "member_1" / "models" / "model.pt", weights_only=True)
    for name, value in uninterrupted.items():
        torch.testing.assert_close(final[name], value, rtol=0, atol=0)
    # a member killed after its training ended but before its record was written: the next call writes the record
    # from the finished run and does not train it again (a resumed early-stopped run would train past its stop)
    (out / "member_1" / "member.json").unlink()
    (out / "models" / "model.pt").unlink()
    weights = (out / "member_1" / "models" / "model.pt").read_bytes()
    log_before = (out / "member_1.log").read_text()
    assert main(["train-ensemble", "--bundle", str(bundle_root("lgg_tumour_localisation")), "--seeds", "0", "1",
                 "--output_dir", str(out), "--", *overrides]) == 0
    assert "member seed 1: its training had ended" in capsys.readouterr().out
    record = json.loads((out / "member_1" / "member.json").read_text())
    assert record["record_written_after_the_run"] and not record["resumed"] and record["epochs"] == 2
    assert (out / "member_1" / "models" / "model.pt").read_bytes() == weights
    assert (out / "member_1.log").read_text() == log_before  # nothing was run
