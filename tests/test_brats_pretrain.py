"""LGG pre-training of the BraTS localiser (configs/pretrain_lgg.json) and fine-tuning from a state dict
(configs/finetune.json): the LGG patients it may read, the LGG volume in the BraTS network's input form, the head
mask, the list-of-files TIFF volume, strict loading of pre-trained weights (a wrong state dict is refused naming the
file), and a tiny pre-train -> fine-tune run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
from bundle_helpers import bundle_root, error_messages, make_workflow
from monai.bundle import ConfigParser
from test_brats_data import make_brats_cases
from test_lgg_data import make_patient

from medcnn.data.lgg import lgg_volume_datalist
from medcnn.data.tiff import StackReadError
from medcnn.data.tiff_pages import LoadTiffPagesd
from medcnn.networks import CheckpointError, ResNetClassifier, load_pretrained
from medcnn.transforms import HeadMask

NAME = "brats_tumour_localisation"
ROOT = bundle_root(NAME)
LGG_SPLIT = bundle_root("lgg_tumour_localisation") / "configs" / "split.json"
PRETRAIN = ["train.json", "pretrain_lgg.json"]
FINETUNE = ["train.json", "finetune.json"]
#: the BraTS bundle's tiny sizes (tests/test_bundle_brats_localisation.py) and a tiny LGG grid
TINY = {"crop_size": [32, 32], "spatial_size": [32, 32], "hemisphere_crop_size": [-1, 32],
        "hemisphere_size": [16, 32], "batch_size": 8, "min_tumour_pixels": 5}


def _parser(*configs: str, **override) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(ROOT / "configs" / c) for c in configs])
    parser["bundle_root"] = str(ROOT)
    for key, value in override.items():
        parser[key] = value
    return parser


def test_pretraining_reads_only_lgg_train_and_validation_patients():
    split = json.loads(LGG_SPLIT.read_text())
    cfg = json.loads((ROOT / "configs" / "pretrain_lgg.json").read_text())
    train, val, left_out = cfg["lgg_train_patients"], cfg["lgg_validation_patients"], set(cfg["lgg_left_out"])
    assert set(train) <= set(split["train"]) and set(val) <= set(split["validation"])
    assert set(train) | set(val) | left_out == set(split["train"]) | set(split["validation"])
    assert not (set(train) | set(val) | left_out) & set(split["test"])
    # the left-out patients are those whose post-contrast T1 (the second input channel) is a copy of FLAIR
    assert left_out == {"TCGA_HT_8105_19980826", "TCGA_HT_A616_19991226", "TCGA_DU_6407_19860514"}


def test_a_list_of_slice_files_is_read_as_one_volume(tmp_path):
    folder = make_patient(tmp_path, "P1", n_slices=4, size=16)
    entry = lgg_volume_datalist(tmp_path, ["P1"], mask_key="label")[0]
    assert entry["patient"] == "P1" and len(entry["image"]) == 4
    out = LoadTiffPagesd(["image", "label"])(entry)
    expected = np.stack([tifffile.imread(folder / f"P1_{n}.tif") for n in range(1, 5)])
    assert tuple(out["image"].shape) == (4, 16, 16, 3) and tuple(out["label"].shape) == (4, 16, 16)
    np.testing.assert_array_equal(np.asarray(out["image"]), expected)
    tifffile.imwrite(folder / "P1_3.tif", np.zeros((8, 8, 3), np.uint8), photometric="rgb")  # a smaller slice
    with pytest.raises(Exception) as info:
        LoadTiffPagesd(["image"])({"image": entry["image"]})
    assert "P1_3.tif" in error_messages(info.value) and isinstance(_chain(info.value, StackReadError), StackReadError)


def _chain(exc, kind):
    while exc is not None and not isinstance(exc, kind):
        exc = exc.__cause__ or exc.__context__
    return exc


def test_head_mask_fills_the_dark_inside_of_the_head_and_drops_background_noise():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    r = np.hypot(yy - 32, xx - 32)
    img = rng.integers(0, 5, (64, 64)).astype(np.float32)  # noisy, non-zero background
    img[r < 26] = 120  # scalp / brain
    img[(r > 20) & (r < 23)] = 5  # dark skull ring
    img[r < 8] = 3  # dark CSF inside
    mask = HeadMask(channel=0)(torch.as_tensor(img)[None])
    assert tuple(mask.shape) == (1, 64, 64)
    assert torch.equal(mask[0].bool(), torch.as_tensor(r < 26))
    vol = HeadMask(channel=1)(np.stack([np.zeros_like(img), img])[..., None].repeat(3, -1))
    assert vol.shape == (1, 64, 64, 3) and (vol[0, ..., 2] == (r < 26)).all()
    with pytest.raises(ValueError, match="constant"):
        HeadMask()(np.ones((1, 8, 8), np.float32))


def test_lgg_volume_reaches_the_network_in_the_brats_input_form(data_dir):
    """FLAIR and post-contrast as the two channels, BraTS axis order, z-score inside the head, zero background,
    the bundle's own half-slices."""
    lgg = data_dir("lgg_flair_tiff")
    patient = "TCGA_HT_7874_19950902"  # a validation patient, 20 slices
    parser = _parser(*PRETRAIN, dataset_dir=str(lgg), lgg_validation_patients=[patient])
    entry = parser.get_parsed_content("validation_datalist")[0]
    from monai.transforms import Compose

    volume = Compose(parser.get_parsed_content("volume_transforms"))(dict(entry))
    image, label = volume["image"], volume["label"]
    assert image.shape[:3] == (2, 240, 240) and label.shape[:3] == (1, 240, 240)
    kept = volume["image"].meta["slice_indices"]
    head = (image != 0).any(0)
    assert 0.05 < float((~head).float().mean()) < 0.8  # a zero background, as in BraTS after the z-score
    for c in range(2):  # z-scored over the head (the resize's interpolated rim included)
        values = image[c][head]
        assert abs(float(values.mean())) < 0.05 and abs(float(values.std()) - 1) < 0.05
    # channel 0 is the FLAIR (LGG channel 1), transposed: left-right first, anterior at index 0
    raw = np.stack([tifffile.imread(lgg / patient / f"{patient}_{n + 1}.tif") for n in kept], axis=-1)
    flair = torch.nn.functional.interpolate(torch.as_tensor(raw[:, :, 1].transpose(1, 0, 2), dtype=torch.float32)
                                            .permute(2, 0, 1)[None], size=(240, 240), mode="area")[0].permute(1, 2, 0)
    for c, expect_high in ((0, True), (1, False)):
        r = np.corrcoef(np.asarray(image[c][head]), np.asarray(flair[head]))[0, 1]
        assert (r > 0.99) == expect_high, (c, r)
    masks = np.stack([tifffile.imread(lgg / patient / f"{patient}_{n + 1}_mask.tif") for n in kept], axis=-1) > 0
    np.testing.assert_array_equal(label[0].numpy().sum((0, 1)) > 0, masks.sum((0, 1)) > 0)
    halves = Compose(parser.get_parsed_content("validate#volume_preprocessing#transforms"))(dict(entry))
    assert tuple(halves["image"].shape[:3]) == (2, 60, 96)


def _classifier(in_channels: int = 2) -> ResNetClassifier:
    return ResNetClassifier(spatial_dims=2, in_channels=in_channels, num_classes=2, num_blocks=3, channels=32,
                            max_channels=128, dropout=0.1, cam_layer="blocks.0")


def test_load_pretrained_loads_strictly_and_refuses_a_wrong_state_dict_naming_the_file(tmp_path):
    good, wrong = tmp_path / "good.pt", tmp_path / "three_channels.pt"
    torch.save(_classifier().state_dict(), good)
    torch.save(_classifier(in_channels=3).state_dict(), wrong)
    net = load_pretrained(_classifier(), good)
    for k, v in torch.load(good, weights_only=True).items():
        assert torch.equal(net.state_dict()[k], v)
    target = _classifier()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError, match="three_channels.pt") as info:
        load_pretrained(target, wrong)
    assert "(32, 3, 3, 3) in the file, (32, 2, 3, 3) in the network" in str(info.value)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())  # nothing loaded
    partial = {k: v for k, v in torch.load(good, weights_only=True).items() if not k.startswith("fc")}
    torch.save(partial, tmp_path / "no_head.pt")
    with pytest.raises(CheckpointError, match="no_head.pt.*missing fc"):
        load_pretrained(_classifier(), tmp_path / "no_head.pt")
    with pytest.raises(CheckpointError, match="absent.pt: weights file not found"):
        load_pretrained(_classifier(), tmp_path / "absent.pt")


def test_finetune_config_refuses_weights_of_another_network_naming_the_file(tmp_path):
    wrong = tmp_path / "lgg_3ch.pt"
    torch.save(_classifier(in_channels=3).state_dict(), wrong)
    with pytest.raises(Exception) as info:
        _parser(*FINETUNE, pretrained=str(wrong)).get_parsed_content("network")
    assert isinstance(_chain(info.value, CheckpointError), CheckpointError)
    assert f"{wrong}: the weights do not fit the network" in error_messages(info.value)


def test_tiny_pretraining_on_lgg_then_finetuning_starts_from_its_weights(tmp_path):
    """pretrain_lgg.json on three synthetic LGG patients writes a checkpoint the fine-tuning run starts from; the
    pre-training validates on its LGG validation patient's half-slices only."""
    lgg = tmp_path / "lgg"
    names = ["P1", "P2", "P3"]
    for seed, name in enumerate(names):
        make_patient(lgg, name, n_slices=8, tumour=range(2, 6), size=48, seed=seed)
    out = tmp_path / "pre"
    wf = make_workflow(NAME, PRETRAIN, "train", dataset_dir=str(lgg), lgg_train_patients=names[:2],
                       lgg_validation_patients=names[2:], lgg_grid=[40, 40], slices_per_case=16,
                       output_dir=str(out), ckpt_dir=str(out / "models"), **{**TINY, "train#trainer#max_epochs": 2})
    wf.initialize()
    wf.run()
    wf.finalize()
    curves = json.loads((out / "curves.json").read_text())
    assert len(curves["val_loss"]) == 2
    assert curves["val_n_images"] == [16.0, 16.0]  # 8 slices x 2 halves of P3, nothing of P1 / P2
    pretrained = out / "models" / "model.pt"
    brats = make_brats_cases(tmp_path / "brats", shape=(32, 32, 40), tumour_slices=range(8, 32))
    ft = make_workflow(NAME, FINETUNE, "train", dataset_dir=str(brats), train_cases=["s1", "s2"],
                       pretrained=str(pretrained), output_dir=str(tmp_path / "ft"), **TINY)
    ft.initialize()
    state = torch.load(pretrained, weights_only=True)
    assert all(torch.equal(ft.parser.get_parsed_content("network").state_dict()[k], v) for k, v in state.items())


def test_evaluate_checkpoint_loader_names_the_file_of_weights_of_another_network(tmp_path):
    """``--ckpt_path`` of another network's weights (the evaluate / inference loader) stops with the file named,
    not with PyTorch's size-mismatch list only."""
    from ignite.engine import Engine

    from medcnn.handlers import CheckpointLoader

    wrong = tmp_path / "lgg_3ch.pt"
    torch.save(_classifier(in_channels=3).state_dict(), wrong)
    loader = CheckpointLoader(load_path=str(wrong), load_dict={"model": _classifier()}, map_location="cpu")
    with pytest.raises(CheckpointError, match="lgg_3ch.pt: the weights do not fit the network.*size mismatch"):
        loader(Engine(lambda engine, batch: None))
    good = tmp_path / "good.pt"
    torch.save(_classifier().state_dict(), good)
    net = _classifier()
    CheckpointLoader(load_path=str(good), load_dict={"model": net}, map_location="cpu")(Engine(lambda e, b: None))
    assert all(torch.equal(net.state_dict()[k], v) for k, v in torch.load(good, weights_only=True).items())
