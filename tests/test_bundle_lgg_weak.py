"""The weak -> dense config set of bundles/lgg_tumour_localisation: slice labels only -> pseudo-masks of the committed
classifier -> a UNet, through monai.bundle. Synthetic patients check the wiring (no mask reaches the pseudo-mask step,
the segmenter validates on true masks, the Dice is computed on the native grid); the real test patients check the
committed segmenter against the model card and the CAM masks of the same classifier."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_helpers import bundle_root, make_workflow, read_metrics, run_workflow
from test_bundle_lgg_localisation import make_synthetic_patients

NAME = "lgg_tumour_localisation"
ROOT = bundle_root(NAME)
PSEUDO = ["train.json", "weak_pseudo_masks.json"]
SEGMENTER = ["train.json", "weak_train_segmenter.json"]
EVALUATE = ["train.json", "weak_train_segmenter.json", "weak_evaluate_segmenter.json"]
# synthetic slices of 64 x 64 on a 32 x 32 network grid: the native-grid scoring has something to undo
TINY = {"spatial_size": [32, 32], "num_threads": 1}
SEG_TINY = {**TINY, "segmenter#channels": [8, 16, 32], "segmenter#strides": [2, 2]}


@pytest.fixture(scope="module")
def weak_run(tmp_path_factory):
    """Synthetic patients (tumour on slices 3-8) -> pseudo-masks of the committed classifier -> a 3-epoch segmenter."""
    root = tmp_path_factory.mktemp("lgg_weak")
    data = make_synthetic_patients(root / "data", size=64)
    out = root / "out"
    run_workflow(NAME, PSEUDO, None, output_dir=str(out), **data, **TINY)
    run_workflow(NAME, SEGMENTER, "train", output_dir=str(out), segmenter_epochs=3, **data, **SEG_TINY)
    return root, data, out


def test_pseudo_mask_items_are_slice_labels_without_masks(weak_run):
    root, data, out = weak_run
    wf = make_workflow(NAME, PSEUDO, "train", output_dir=str(root / "other"), **data, **TINY)
    items = list(wf.parser.get_parsed_content("pseudo_mask_items"))
    patients = json.loads((root / "data" / "split.json").read_text())["train"]
    assert [i["id"] for i in items] == [f"{p}_{n}" for p in patients for n in range(1, 13)]
    assert [int(i["label"]) for i in items] == [int(3 <= k <= 8) for _ in patients for k in range(12)]
    assert all("mask" not in i and tuple(i["image"].shape) == (3, 32, 32) for i in items)
    prov = json.loads((out / "pseudo_masks" / "pseudo_masks.json").read_text())
    assert prov["n_images"] == 24 and prov["n_positive"] == 12
    assert prov["rule"]["method"] == "layercam" and prov["rule"]["target_layer"] == "blocks.0"  # the card's rule
    assert [s["name"] for s in prov["refinement"]] == ["dense_crf", "ignore_band"]


def test_no_pixel_label_of_a_training_slice_is_read(weak_run, tmp_path):
    """The training patients' masks replaced by noise masks with the same slice labels -> identical pseudo-masks."""
    root, data, out = weak_run
    import shutil

    import tifffile

    scrambled = tmp_path / "data"
    shutil.copytree(root / "data", scrambled)
    rng = np.random.default_rng(0)
    for name in json.loads((scrambled / "split.json").read_text())["train"]:
        for mask_file in (scrambled / name).glob("*_mask.tif"):
            mask = tifffile.imread(mask_file)
            if mask.any():  # a tumour slice keeps a tumour, anywhere: the slice label does not change
                tifffile.imwrite(mask_file, (rng.random(mask.shape) < 0.3).astype(np.uint8) * 255)
    split = {**data, "dataset_dir": str(scrambled), "split_file": str(scrambled / "split.json")}
    run_workflow(NAME, PSEUDO, None, output_dir=str(tmp_path / "out"), **split, **TINY)
    for e in json.loads((out / "pseudo_masks" / "pseudo_masks.json").read_text())["training"]:
        a = nib.load(out / "pseudo_masks" / e["label"]).get_fdata()
        b = nib.load(tmp_path / "out" / "pseudo_masks" / e["label"]).get_fdata()
        np.testing.assert_array_equal(a, b)


def test_an_ensemble_classifier_writes_the_pseudo_masks_of_its_cam_member(weak_run, tmp_path):
    """A medcnn train-ensemble checkpoint is read too (members from the file, CAM of member cam_member): two copies
    of the committed network give the committed network's pseudo-masks, and the provenance names the ensemble."""
    from medcnn.networks import assemble_ensemble

    root, data, out = weak_run
    ensemble = tmp_path / "ensemble.pt"
    assemble_ensemble([ROOT / "models" / "model.pt"] * 2, ensemble)
    run_workflow(NAME, PSEUDO, None, output_dir=str(tmp_path / "out"), classifier_path=str(ensemble), **data, **TINY)
    prov = json.loads((tmp_path / "out" / "pseudo_masks" / "pseudo_masks.json").read_text())
    assert prov["classifier"]["network"] == "ClassifierEnsemble"
    assert prov["classifier"]["weights"] == str(ensemble.resolve())
    for e in json.loads((out / "pseudo_masks" / "pseudo_masks.json").read_text())["training"]:
        a = nib.load(out / "pseudo_masks" / e["label"]).get_fdata()
        b = nib.load(tmp_path / "out" / "pseudo_masks" / e["label"]).get_fdata()
        np.testing.assert_array_equal(a, b)


def test_segmenter_validates_on_true_masks_and_keeps_its_own_state(weak_run):
    root, data, out = weak_run
    wf = make_workflow(NAME, SEGMENTER, "train", output_dir=str(root / "other"), **data, **SEG_TINY)
    val = list(wf.parser.get_parsed_content("validate#dataset"))
    assert len(val) == 12 and tuple(val[0]["image"].shape) == (3, 32, 32)
    assert tuple(val[0]["label"].shape) == (1, 32, 32)
    assert [bool(v["label"].sum() > 0) for v in val] == [3 <= k <= 8 for k in range(12)]
    curves = json.loads((out / "segmenter" / "curves.json").read_text())
    assert curves["epoch"] == [1, 2, 3] and len(curves["val_mean_dice"]) == 3
    assert (out / "segmenter" / "model_segmenter.pt").is_file()
    assert (out / "segmenter" / "training_state_segmenter.pt").is_file() and not (out / "models").exists()


def test_evaluation_scores_the_native_masks_per_patient(weak_run):
    """metrics.json equals the Dice this test computes itself: segmenter on the resized image, class probabilities
    resized back to the 64 x 64 mask (bilinear), arg-max, Dice on the tumour slices."""
    root, data, out = weak_run
    weights = out / "segmenter" / "model_segmenter.pt"
    # the same --output_dir as the training: the evaluation finds the segmenter there by default
    wf = run_workflow(NAME, EVALUATE, "eval", output_dir=str(out), **data, **SEG_TINY)
    m = read_metrics(out)
    patient = json.loads((root / "data" / "split.json").read_text())["test"][0]
    assert m["n_images"] == 12 and m["n_tumour_slices"] == 6 and m["patients"] == [patient]
    assert m["weights"] == "model_segmenter.pt" and m["dice_per_patient"][patient] == pytest.approx(m["dice"])

    import tifffile
    from monai.transforms import Resize

    from medcnn.data.lgg import lgg_patient_slices

    net = wf.parser.get_parsed_content("network").eval()
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    prep = wf.parser.get_parsed_content("validate#preprocessing")
    dice = []
    for item in lgg_patient_slices(root / "data" / patient):
        mask = tifffile.imread(item["mask"]) > 0
        if not mask.any():
            continue
        x = prep(dict(item))["image"].as_tensor()
        with torch.no_grad():
            prob = torch.softmax(net(x[None]), 1)[0]
        pred = Resize(mask.shape, mode="bilinear")(prob).argmax(0).numpy().astype(bool)
        dice.append(2 * (pred & mask).sum() / (pred.sum() + mask.sum()))
    assert len(dice) == 6 and m["dice"] == pytest.approx(float(np.mean(dice)), abs=1e-4)


ROUND2 = ["train.json", "weak_pseudo_masks.json", "weak_train_segmenter.json", "weak_pseudo_masks_from_segmenter.json"]


def test_a_second_round_writes_the_pseudo_masks_of_the_first_rounds_segmenter(weak_run, tmp_path):
    """--previous_round: every tumour slice's pseudo-mask is the round-1 segmenter's softmax >= 0.5 on the image the
    file holds (refinement off here), tumour-free slices stay empty, the provenance names the segmenter; the round
    never writes into the round it learns from."""
    from medcnn.weak import file_sha256

    root, data, out = weak_run
    weights = out / "segmenter" / "model_segmenter.pt"
    before = {p: p.read_bytes() for p in (out / "pseudo_masks").iterdir()}
    r2 = tmp_path / "round2"
    wf = run_workflow(NAME, ROUND2, None, output_dir=str(r2), previous_round=str(out), refinement=[], **data,
                      **SEG_TINY)
    prov = json.loads((r2 / "pseudo_masks" / "pseudo_masks.json").read_text())
    assert prov["heatmap"] == "segmenter" and prov["ignore_empty_positives"] is True
    assert prov["classifier"]["sha256"] == file_sha256(weights) and prov["rule"]["mode"] == "probability"
    net = wf.parser.get_parsed_content("network_def", lazy=False).eval()
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    n_tumour_pixels = 0
    for e in prov["training"]:
        mask = nib.load(r2 / "pseudo_masks" / e["label"]).get_fdata()
        if e["class"] == 0:
            assert not mask.any()
            continue
        image = torch.as_tensor(nib.load(r2 / "pseudo_masks" / e["image"]).get_fdata(), dtype=torch.float32)
        with torch.no_grad():
            prob = torch.softmax(net(image.permute(2, 0, 1)[None]), 1)[0, 1]  # the file is channels-last
        np.testing.assert_array_equal(mask > 0, (prob >= 0.5).numpy())
        n_tumour_pixels += int(mask.sum())
    assert n_tumour_pixels > 0  # the 3-epoch segmenter finds something: the comparison above means something
    assert {p: p.read_bytes() for p in (out / "pseudo_masks").iterdir()} == before

    with pytest.raises(Exception) as err:
        run_workflow(NAME, ROUND2, None, output_dir=str(out), previous_round=str(out), **data, **SEG_TINY)
    chain, exc = [], err.value
    while exc is not None:
        chain.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    assert any(f"--previous_round {out} is (in) this run's --output_dir" in c for c in chain), chain
    assert {p: p.read_bytes() for p in (out / "pseudo_masks").iterdir()} == before


@pytest.mark.slow
def test_pseudo_masks_of_the_real_training_patients_reproduce_the_model_card(tmp_path, data_dir):
    """The committed classifier's refined pseudo-masks of the 19 training patients, written by the bundle, against
    the true masks (read here only): the Dice and counts of docs/weak_pseudo_masks.json."""
    from monai.transforms import Compose

    from medcnn.data.lgg import lgg_datalist
    from medcnn.weak import pseudo_mask_quality

    card = json.loads((ROOT / "docs" / "weak_pseudo_masks.json").read_text())
    row = next(r for r in card["training"] if r["stage"] == "dense_crf + ignore_band")
    wf = run_workflow(NAME, PSEUDO, None, dataset_dir=str(data_dir("lgg_flair_tiff")), output_dir=str(tmp_path),
                      num_threads=1)
    prov = json.loads((tmp_path / "pseudo_masks" / "pseudo_masks.json").read_text())
    assert prov["n_positive"] == row["n_images"] and prov["rule"] == card["rule"]
    assert wf.parser.get_parsed_content("refinement") == card["refinement"]  # the chain the card measured
    assert [s["name"] for s in prov["refinement"]] == ["dense_crf", "ignore_band"]
    get = wf.parser.get_parsed_content
    to_grid = Compose(get("load_transforms") + get("resize_transforms"))
    truth = {i["id"]: to_grid(dict(i))["mask"] for i in lgg_datalist(get("dataset_dir"), get("train_patients"))}

    def load(entry: dict, key: str) -> torch.Tensor:
        return torch.as_tensor(nib.load(tmp_path / "pseudo_masks" / entry[key]).get_fdata())[None]

    records = [{"class": e["class"], "label": load(e, "label").to(torch.uint8), "weight": load(e, "weight")}
               for e in prov["training"]]
    quality = pseudo_mask_quality(records, [truth[e["id"]] for e in prov["training"]])
    assert quality["dice"] == pytest.approx(row["dice"], abs=1e-3)
    assert quality["ignored_fraction"] == pytest.approx(row["ignored_fraction"], abs=1e-3)
