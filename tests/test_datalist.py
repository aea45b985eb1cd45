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


def test_dataset_dir_default_prefers_medcnn_data_dir_then_the_bundle_data_folder(tmp_path, monkeypatch):
    from medcnn.data.datalist import resolve_data_dir

    bundle, shared = tmp_path / "bundle", tmp_path / "shared"
    bundle.mkdir()
    (shared / "em").mkdir(parents=True)
    monkeypatch.setenv("MEDCNN_DATA_DIR", str(shared))
    assert resolve_data_dir("em", bundle) == str(shared / "em")
    monkeypatch.delenv("MEDCNN_DATA_DIR")
    with pytest.raises(DatalistError, match=rf"dataset 'em': neither {bundle / 'data'} exists.*--dataset_dir"):
        resolve_data_dir("em", bundle)
    monkeypatch.setenv("MEDCNN_DATA_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(DatalistError, match=rf"neither {tmp_path / 'elsewhere' / 'em'} nor {bundle / 'data'} exists"):
        resolve_data_dir("em", bundle)
    (bundle / "data").mkdir()
    assert resolve_data_dir("em", bundle) == str(bundle / "data")


def test_bundle_without_its_dataset_names_both_places(tmp_path, monkeypatch):
    """A user running a bundle without data gets the error naming where it looked, from the config itself."""
    from monai.bundle import ConfigParser

    from tests.bundle_helpers import bundle_root

    monkeypatch.setenv("MEDCNN_DATA_DIR", str(tmp_path))
    parser = ConfigParser()
    parser.read_config(str(bundle_root("em_membrane_segmentation") / "configs" / "train.json"))
    parser["bundle_root"] = str(tmp_path / "bundle")
    with pytest.raises(Exception) as info:
        parser.get_parsed_content("dataset_dir")
    chain, exc = [], info.value
    while exc is not None:  # MONAI wraps the expression's error; the user sees the whole chain
        chain.append(str(exc))
        exc = exc.__cause__
    assert any(re.search("neither .*isbi2012_em_membranes nor .*bundle/data exists", m) for m in chain), chain
