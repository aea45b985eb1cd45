import json
import re

import pytest

from medcnn.data.datalist import DatalistError, load_datalist


def test_msd_and_plain_lists_resolve_relative_paths(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.nii.gz").write_bytes(b"x")
    (tmp_path / "img" / "b.nii.gz").write_bytes(b"x")
    msd = tmp_path / "dataset.json"
    msd.write_text(json.dumps({"training": [{"image": "img/a.nii.gz", "label": "img/b.nii.gz"}]}))
    plain = tmp_path / "list.json"
    plain.write_text(json.dumps([{"image": "img/a.nii.gz", "label": "img/b.nii.gz"}]))
    for f in (msd, plain):
        (entry,) = load_datalist(f)
        assert entry["image"] == str(tmp_path / "img" / "a.nii.gz")


def test_bad_datalists_name_the_file_and_entry(tmp_path):
    with pytest.raises(DatalistError, match="file not found"):
        load_datalist(tmp_path / "nope.json")
    f = tmp_path / "d.json"
    f.write_text("{not json")
    with pytest.raises(DatalistError, match="not readable as JSON"):
        load_datalist(f)
    f.write_text(json.dumps([{"image": "a.nii.gz"}]))
    with pytest.raises(DatalistError, match=r"entry 0 lacks key\(s\) \['label'\]"):
        load_datalist(f)
    f.write_text(json.dumps([{"image": "a.nii.gz", "label": "b.nii.gz"}]))
    with pytest.raises(DatalistError, match="a.nii.gz does not exist"):
        load_datalist(f)


def test_dataset_dir_default_prefers_medcnn_data_dir_then_the_bundle_data_folder(tmp_path, monkeypatch, caplog):
    from medcnn.data.datalist import resolve_data_dir

    bundle, shared = tmp_path / "bundle", tmp_path / "shared"
    bundle.mkdir()
    (shared / "em").mkdir(parents=True)
    monkeypatch.setenv("MEDCNN_DATA_DIR", str(shared))
    assert resolve_data_dir("em", bundle) == str(shared / "em")
    assert not caplog.records
    monkeypatch.setenv("MEDCNN_DATA_DIR", str(tmp_path / "elsewhere"))
    assert resolve_data_dir("em", bundle) == str(bundle / "data")
    assert f"neither {tmp_path / 'elsewhere' / 'em'} nor {bundle / 'data'} exists" in caplog.text
    assert "--dataset_dir" in caplog.text
    (bundle / "data").mkdir()
    monkeypatch.delenv("MEDCNN_DATA_DIR")
    caplog.clear()
    assert resolve_data_dir("em", bundle) == str(bundle / "data")
    assert not caplog.records


def test_bundle_without_its_dataset_names_the_folder_it_read(tmp_path, monkeypatch):
    """A user running a bundle without its data gets an error naming the folder it looked in, not a stack of
    missing-file errors from deep inside a dataset."""
    from bundle_helpers import error_messages, run_workflow

    monkeypatch.setenv("MEDCNN_DATA_DIR", str(tmp_path))
    with pytest.raises(Exception) as info:
        run_workflow("brats_tumour_segmentation", ["train.json"], "train", output_dir=str(tmp_path / "out"))
    assert re.search(r"bundles/brats_tumour_segmentation/data/brats_2013_pat0005_1: BraTS case folder not found",
                     error_messages(info.value))


def test_optional_brats_brainmask_resolves_against_the_json_file(tmp_path):
    """An --eval_datalist with a relative brainmask path (it used to stay relative: "missing brainmask file")."""
    from medcnn.data.brats import BRATS_KEYS, BRATS_OPTIONAL_KEYS

    case = tmp_path / "cases" / "c1"
    case.mkdir(parents=True)
    for name in ("flair.nii.gz", "t1c.nii.gz", "seg.nii.gz", "brain.nii.gz"):
        (case / name).write_bytes(b"x")
    entry = {"flair": "cases/c1/flair.nii.gz", "t1c": "cases/c1/t1c.nii.gz", "label": "cases/c1/seg.nii.gz"}
    f = tmp_path / "list.json"
    f.write_text(json.dumps([{**entry, "brainmask": "cases/c1/brain.nii.gz"}, entry]))
    with_mask, without = load_datalist(f, keys=BRATS_KEYS, optional_keys=BRATS_OPTIONAL_KEYS)
    assert with_mask["brainmask"] == str(case / "brain.nii.gz") and "brainmask" not in without
    f.write_text(json.dumps([{**entry, "brainmask": "cases/c1/nope.nii.gz"}]))
    with pytest.raises(DatalistError, match=r"key 'brainmask': file .*nope.nii.gz does not exist"):
        load_datalist(f, keys=BRATS_KEYS, optional_keys=BRATS_OPTIONAL_KEYS)
