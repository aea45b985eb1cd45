"""End to end: the medcnn bundles served by MONAI Label 0.8.5, called exactly as the 3D Slicer plugin calls it.

Starts ``scripts/monailabel_server.py`` (:mod:`medcnn.monailabel.launcher`) on 127.0.0.1 (a free port) with a
temporary studies folder, then
``GET /info/``, ``PUT /datastore/?image=<id>`` (multipart upload), ``POST /infer/<model>?image=<id>`` (multipart
answer: ``params`` JSON + the label NIfTI) and checks the label has the input's shape and affine and only the
model's declared label values. The server is always stopped (fixture teardown).

Served: a snapshot of every repository bundle and its variants, each of which must have its committed weights (a
bundle without weights, or not served, is a failure, not a skip): hippocampus 3D and BraTS whole-tumour 3D (on a
FLAIR+T1c 4D volume, the card's held-out case) and EM membranes with the Dice of the model card's
``docs/metrics_test.json`` minus ``DICE_TOLERANCE`` as the floor (hippocampus: the mean of 4 held-out cases); COCO
tumour segmentation on two test JPEGs as grey slices, whose served Dice must be the card's Dice of that image
(``docs/image_dice_test.csv``, within 0.01: dihedral averaging, resampling and the filled largest region as in
``evaluate.json``); the
synthetic 3D sphere CAM model, every 2D bundle on a Slicer-style (H, W, 1) volume, the BraTS slice classifier on a
4D slab), plus three tiny
fixture bundles made here with random weights (3D segmentation, 2D segmentation, 2D classifier served as a CAM
region) so that each path of the medcnn MONAI Label app is exercised whatever bundles the repository has.

Bad requests: an unknown model or image, an image the bundle cannot take, a corrupt or non-NIfTI upload answer 4xx
with the reason naming the file, and a refused upload leaves nothing in the studies folder; a PNG in the studies
folder is not listed (it would reach Slicer on a grid perpendicular to the image).

Needs the separate MONAI Label environment (scripts/monailabel_env.sh); skipped with the reason when it is
missing, a failure with ``MEDCNN_REQUIRE_MONAILABEL=1`` (CI). Marker: ``monailabel``.
"""

from __future__ import annotations

import email.parser
import email.policy
import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "monailabel_server.py"
OVERRIDES = ROOT / "medcnn" / "monailabel" / "overrides"
VENV = Path(os.environ.get("MEDCNN_MONAILABEL_VENV", ROOT / ".venv-monailabel"))
STARTUP_TIMEOUT = float(os.environ.get("MEDCNN_MONAILABEL_STARTUP_TIMEOUT", "600"))
INFER_TIMEOUT = 900
# a served result may differ from the card's evaluation by this much Dice (one case instead of the test set's mean,
# the served single-file preprocessing): the floor of every Dice check below is the card's figure minus this
DICE_TOLERANCE = 0.05

pytestmark = [pytest.mark.monailabel, pytest.mark.slow]


from medcnn.monailabel import launcher  # noqa: E402


def card_figure(bundle: str, key: str) -> float:
    """A figure of the bundle's model card (``docs/metrics_test.json``, the evaluation the card reports)."""
    return float(json.loads((ROOT / "bundles" / bundle / "docs" / "metrics_test.json").read_text())[key])


try:
    launcher.check_venv(VENV)
    if not (VENV / "medcnn-monailabel-env.json").is_file():
        raise launcher.LaunchError(f"{VENV} is incomplete (its build did not finish): rerun scripts/monailabel_env.sh")
except launcher.LaunchError as e:
    if os.environ.get("MEDCNN_REQUIRE_MONAILABEL") == "1":  # CI builds the environment: its absence is a failure
        pytest.fail(f"MEDCNN_REQUIRE_MONAILABEL=1 but the MONAI Label environment is not usable: {e}", pytrace=False)
    pytest.skip(f"MONAI Label environment not usable: {e}", allow_module_level=True)


# ----------------------------------------------------------------------------------------------- fixture bundles
def _metadata(spatial_shape, out_type: str, channel_def: dict, description: str) -> dict:
    return {"version": "0.0.1", "monai_version": "1.6.1", "description": description,
            "required_packages_version": {"medcnn": "0.1.0"},
            "network_data_format": {
                "inputs": {"image": {"type": "image", "num_channels": 1, "spatial_shape": spatial_shape}},
                "outputs": {"pred": {"type": out_type, "num_channels": len(channel_def), "channel_def": channel_def}}}}


def _write_bundle(folder: Path, meta: dict, inference: dict, network) -> Path:
    import torch

    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    (folder / "configs" / "metadata.json").write_text(json.dumps(meta, indent=1))
    (folder / "configs" / "inference.json").write_text(json.dumps(inference, indent=1))
    torch.save(network.state_dict(), folder / "models" / "model.pt")
    return folder


def make_fixture_bundles(root: Path) -> dict[str, Path]:
    """Three tiny bundles with random weights, wired like the repository's bundles."""
    import torch

    from medcnn.networks import ResNetClassifier, build_segmentation_network

    torch.manual_seed(0)
    device = "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')"
    seg3 = {
        "imports": ["$import medcnn.networks"], "bundle_root": ".", "device": device,
        "network_def": {"_target_": "medcnn.networks.build_segmentation_network", "name": "unet",
                        "spatial_dims": 3, "in_channels": 1, "out_channels": 3},
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True},
            {"_target_": "DivisiblePadd", "keys": "image", "k": 16}]},
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image"},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True}]}}
    seg2 = json.loads(json.dumps(seg3))
    seg2["network_def"].update(spatial_dims=2, out_channels=2)
    seg2["preprocessing"]["transforms"] = [t for t in seg2["preprocessing"]["transforms"]
                                           if t["_target_"] != "Orientationd"]
    cls = {
        "imports": ["$import medcnn.networks"], "bundle_root": ".", "device": device,
        "network_def": {"_target_": "medcnn.networks.ResNetClassifier", "spatial_dims": 2, "in_channels": 1,
                        "num_classes": 2, "num_blocks": 3, "cam_layer": "blocks.1"},
        "network": "$@network_def.to(@device)",
        "cam_method": "gradcam", "cam_threshold": 0.5,
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"}, {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "ScaleIntensityd", "keys": "image"},
            {"_target_": "Resized", "keys": "image", "spatial_size": [64, 64]}]},
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True}]}}
    # a classifier whose positive class wins on any input, so that its CAM mask is not empty
    clf = ResNetClassifier(2, 1, 2, num_blocks=3, cam_layer="blocks.1")
    with torch.no_grad():
        clf.fc2.bias.copy_(torch.tensor([-20.0, 20.0]))
    return {
        "fixture3d_segmentation": _write_bundle(
            root / "fixture3d_segmentation", _metadata(["16*n"] * 3, "image",
                                                       {"0": "background", "1": "anterior", "2": "posterior"},
                                                       "fixture 3D segmentation"),
            seg3, build_segmentation_network("unet", 3, 1, 3)),
        "fixture2d_segmentation": _write_bundle(
            root / "fixture2d_segmentation", _metadata(["16*n"] * 2, "image", {"0": "background", "1": "membrane"},
                                                       "fixture 2D segmentation"),
            seg2, build_segmentation_network("unet", 2, 1, 2)),
        "fixture2d_localisation": _write_bundle(
            root / "fixture2d_localisation", _metadata([64, 64], "probabilities", {"0": "absent", "1": "object"},
                                                       "fixture 2D classifier"),
            cls, clf),
    }


# -------------------------------------------------------------------------------------------------- HTTP client
def _multipart(fields: dict[str, str], files: dict[str, Path]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    out = bytearray()
    for k, v in fields.items():
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n").encode()
    for k, p in files.items():
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"; filename=\"{p.name}\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode()
        out += p.read_bytes() + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def _request(method: str, url: str, body: bytes | None = None, content_type: str | None = None,
             timeout: float = 60) -> tuple[int, str, bytes]:
    req = urllib.request.Request(url, data=body, method=method)
    if content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def _parse_multipart(content_type: str, body: bytes) -> dict[str, bytes]:
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    return {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
            for part in msg.iter_parts()}


class SlicerLikeClient:
    """The REST calls the 3D Slicer MONAI Label plugin makes (its MONAILabelClient), with urllib only."""

    def __init__(self, base: str):
        self.base = base

    def info(self) -> dict:
        status, _, body = _request("GET", f"{self.base}/info/")
        assert status == 200, body[:500]
        return json.loads(body)

    def upload_image(self, path: Path, image_id: str) -> dict:
        body, ct = _multipart({"params": "{}"}, {"file": path})
        q = urllib.parse.quote_plus(image_id)
        status, _, resp = _request("PUT", f"{self.base}/datastore/?image={q}", body, ct)
        assert status == 200, resp[:500]
        return json.loads(resp)

    def infer(self, model: str, image_id: str, tmp: Path) -> tuple[Path, dict]:
        body, ct = _multipart({"params": "{}"}, {})
        url = f"{self.base}/infer/{urllib.parse.quote_plus(model)}?image={urllib.parse.quote_plus(image_id)}"
        status, rct, resp = _request("POST", url, body, ct, timeout=INFER_TIMEOUT)
        assert status == 200, f"{model}: HTTP {status}: {resp[:2000]!r}"
        assert rct.startswith("multipart/"), f"{model}: expected a label image, got {rct}: {resp[:500]!r}"
        parts = _parse_multipart(rct, resp)
        out = tmp / f"{model}_{image_id}_result.nii.gz"
        out.write_bytes(parts["image"])
        return out, json.loads(parts["params"])


# ------------------------------------------------------------------------------------------------ inputs
def _hippocampus_cases(data_dir, n: int = 4) -> list[tuple[Path, Path]]:
    """The first ``n`` held-out cases of the hippocampus bundle's split (first MSD training cases without a split)."""
    root = Path(data_dir("msd_hippocampus"))
    split = ROOT / "bundles" / "hippocampus_segmentation" / "configs" / "split.json"
    if split.is_file():
        entries = json.loads(split.read_text())["test"][:n]
    else:
        entries = json.loads((root / "dataset.json").read_text())["training"][:n]
    return [((root / e["image"]).resolve(), (root / e["label"]).resolve()) for e in entries]


def _brats_4d(data_dir, out: Path) -> tuple[Path, Path]:
    """A BraTS case as one 4D NIfTI (H, W, D, 2: FLAIR, T1c), the input of the tumour segmentation model."""
    case = Path(data_dir("brats2015_deepmedic_subset")) / "brats_2013_pat0004_1"
    flair, t1c = nib.load(case / "Flair_subtrMeanDivStd.nii.gz"), nib.load(case / "T1c_subtrMeanDivStd.nii.gz")
    arr = np.stack([np.asarray(flair.dataobj), np.asarray(t1c.dataobj)], axis=-1).astype(np.float32)
    nib.save(nib.Nifti1Image(arr, flair.affine), out)
    return out, case / "OTMultiClass.nii.gz"


def _expected_dimension(name: str, folder: Path, meta: dict) -> int:
    """Dimension MONAI Label reports: the served override's ``monailabel.dimension`` / ``input_spatial_dims``, else
    the input's spatial rank."""
    for f in (folder / "configs" / "monailabel.json", OVERRIDES / f"{name}.json", folder / "configs" / "predict.json"):
        if f.is_file():
            conf = json.loads(f.read_text())
            dim = conf.get("monailabel", {}).get("dimension") or conf.get("input_spatial_dims")
            if dim:
                return int(dim)
            break
    return len(next(iter(meta["network_data_format"]["inputs"].values()))["spatial_shape"])


def _moved(src_array: np.ndarray, out: Path, affine: np.ndarray | None = None) -> Path:
    """Save ``src_array`` as NIfTI with the given affine (identity by default) and its origin moved."""
    aff = np.eye(4) if affine is None else affine.copy()
    aff[:3, 3] = [-17.5, 12.25, 3.0]
    nib.save(nib.Nifti1Image(src_array, aff), out)
    return out


def _slicer_2d_volume(image2d: np.ndarray, out: Path) -> Path:
    """A 2D image as 3D Slicer uploads it: an ``(H, W, 1)`` NIfTI volume."""
    return _moved(np.ascontiguousarray(image2d)[..., None], out)


def _coco_inputs(data_dir, tmp: Path) -> list[tuple[Path, np.ndarray, float]]:
    """The first two test images the model card scores >= 0.8 (``docs/image_dice_test.csv``), read by the bundle's
    own load transforms (JPEG -> grey, COCO boxes -> mask, both on MONAI's grid), uploaded as a Slicer-style
    ``(H, W, 1)`` volume; expected: the card's Dice of that image."""
    import csv

    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    from medcnn.data import load_coco_eval_datalist

    bundle = ROOT / "bundles" / "coco_tumour_segmentation"
    with open(bundle / "docs" / "image_dice_test.csv") as f:
        card = {Path(r["filename"]).name: float(r["mean"]) for r in csv.DictReader(f)}
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    parser["bundle_root"], parser["dataset_dir"] = str(bundle), str(data_dir("coco_brain_tumour"))
    load = Compose(parser.get_parsed_content("load_transforms"))
    items = [i for i in load_coco_eval_datalist(parser.get_parsed_content("test_json"))
             if card.get(Path(i["image"]).name, 0.0) >= 0.8][:2]
    out = []
    for k, item in enumerate(items):
        d = load(dict(item))
        grey, box = np.asarray(d["image"])[0], np.asarray(d["label"])[0] > 0
        out.append((_slicer_2d_volume(grey.astype(np.float32), tmp / f"coco_{k}.nii.gz"), box,
                    card[Path(item["image"]).name]))
    return out


def _reference_probabilities(bundle: Path, images: np.ndarray) -> np.ndarray:
    """Class probabilities ``(N, K)`` of the bundle's network and weights run directly (main environment)."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True))
    with torch.no_grad():
        return torch.softmax(net.eval()(torch.as_tensor(images, dtype=torch.float32)), dim=1).numpy()


def _2d_inputs(name: str, meta: dict, data_dir, tmp: Path) -> list[tuple[Path, np.ndarray | None, object]]:
    """Realistic 2D inputs for the bundle ``name`` as ``(file, reference mask or None, expected or None)``
    (the mask: the object for a classifier's CAM, the foreground label for a segmentation; expected: the class
    name, or the positive-class probability of the bundle run directly), or noise of its size."""
    if name == "em_membrane_segmentation":  # slice 0 of the ISBI stack, membrane reference (label value 0)
        from medcnn.data.tiff import read_stack

        root = Path(data_dir("isbi2012_em_membranes")) / "train"
        image, label = read_stack(root / "images")[0], read_stack(root / "labels")[0]  # (H, W) as trained
        return [(_slicer_2d_volume(image, tmp / f"{name}.nii.gz"), (label == 0).astype(np.uint8), None)]
    if name == "pneumonia_classification":  # two normal and two pneumonia images of the official test split
        npz = np.load(Path(data_dir("pneumoniamnist")) / "pneumoniamnist.npz")
        labels = npz["test_labels"].ravel()
        picks = [*np.flatnonzero(labels == 0)[:2], *np.flatnonzero(labels == 1)[:2]]
        ref = _reference_probabilities(tmp / "repo_bundles" / name, npz["test_images"][picks][:, None] / 255.0)
        return [(_slicer_2d_volume(npz["test_images"][i], tmp / f"{name}_{i}.nii.gz"), None, float(p))
                for i, p in zip(picks, ref[:, 1], strict=True)]
    if name == "brats_tumour_localisation":  # a 12-slice FLAIR+T1c slab through the tumour, as one 4D NIfTI
        full, truth_file = _brats_4d(data_dir, tmp / "brats_full.nii.gz")
        img, truth = nib.load(full), np.asarray(nib.load(truth_file).dataobj) > 0
        z = int(np.argmax(truth.sum(axis=(0, 1))))
        slab = _moved(np.asarray(img.dataobj)[:, :, z - 6:z + 6], tmp / f"{name}.nii.gz", img.affine)
        return [(slab, truth[:, :, z - 6:z + 6], "tumour present")]
    if name == "lgg_tumour_localisation":  # 6 slices through the tumour of a test patient, channels last (0..255)
        import tifffile

        from medcnn.data.lgg import lgg_patient_slices

        slices = lgg_patient_slices(Path(data_dir("lgg_flair_tiff")) / "TCGA_CS_5393_19990606")
        masks = np.stack([tifffile.imread(s["mask"]) > 0 for s in slices], axis=-1)
        z = int(np.argmax(masks.sum(axis=(0, 1))))
        picked = slices[z - 3:z + 3]
        vol = np.stack([tifffile.imread(s["image"]) for s in picked], axis=2).astype(np.float32)  # (H, W, 6, 3)
        return [(_moved(vol, tmp / f"{name}.nii.gz"), masks[:, :, z - 3:z + 3], "tumour present")]
    if name == "coco_tumour_segmentation":  # two test JPEGs as grey slices, their box as reference
        return _coco_inputs(data_dir, tmp)
    if name == "synthetic_localisation":  # four positive images of a seed the bundle never trains on
        from medcnn.data.synthetic import synthetic_datalist

        items = [i for i in synthetic_datalist(12, seed=4242) if int(np.asarray(i["label"]).ravel()[0]) == 1][:4]
        return [(_slicer_2d_volume(np.asarray(it["image"], dtype=np.float32).squeeze(), tmp / f"{name}_{k}.nii.gz"),
                 np.asarray(it["mask"]).squeeze(), "object present") for k, it in enumerate(items)]
    inp = next(iter(meta["network_data_format"]["inputs"].values()))
    if int(inp.get("num_channels", 1)) != 1:
        return []
    size = [s if isinstance(s, int) else 64 for s in inp["spatial_shape"]]
    rng = np.random.default_rng(0)
    return [(_slicer_2d_volume(rng.normal(size=size[:2]).astype(np.float32), tmp / f"{name}.nii.gz"), None, None)]


# ---------------------------------------------------------------------------------------------------- server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Start the server (repository bundles with weights + fixture bundles); always stop it."""
    tmp = tmp_path_factory.mktemp("monailabel")
    fixtures = make_fixture_bundles(tmp / "fixture_bundles")
    # every repository bundle is served: one without its committed weights (or unservable) fails here
    names = [b.name for b in launcher.discover_bundles()]
    try:
        found = launcher.select_bundles(names)
    except launcher.LaunchError as e:
        pytest.fail(f"a repository bundle cannot be served: {e}")
    # a snapshot of configs + weights, so that a bundle retrained meanwhile does not change what is served
    snap = tmp / "repo_bundles"
    for b in found:
        for sub in ("configs", "models", "docs"):  # docs: results files that record a chosen CAM rule
            if (b.path / sub).is_dir():
                shutil.copytree(b.path / sub, snap / b.name / sub)
    repo = [launcher.inspect_bundle(snap / b.name) for b in found]
    studies = tmp / "studies"
    studies.mkdir()
    from PIL import Image

    Image.fromarray(np.arange(48 * 64, dtype=np.uint8).reshape(48, 64)).save(studies / "photo.png")  # not listed
    port = _free_port()
    log = tmp / "server.log"
    bundles = [str(b.path) for b in repo] + [str(p) for p in fixtures.values()]
    cmd = [sys.executable, str(SCRIPT), "--studies", str(studies), "--host", "127.0.0.1", "--port", str(port),
           "--venv", str(VENV), "--app-dir", str(tmp / "app"), "--device", "cpu", "--threads", "1",
           "--bundles", ",".join(bundles)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with open(log, "w") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        t0 = time.time()
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                status, _, _ = _request("GET", f"{base}/info/", timeout=10)
                if status == 200:
                    break
            except OSError:
                pass
            if time.time() - t0 > STARTUP_TIMEOUT:
                pytest.fail(f"server not up after {STARTUP_TIMEOUT} s:\n{log.read_text()[-4000:]}")
            time.sleep(1)
        startup = time.time() - t0
        print(f"MONAI Label server up in {startup:.1f} s with {len(bundles)} bundles")
        variants = {b.name: b for b in launcher.with_variants(repo)[len(repo):]}
        yield {"client": SlicerLikeClient(base), "repo": {b.name: b for b in repo}, "variants": variants,
               "fixtures": fixtures, "studies": studies, "tmp": tmp, "log": log}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        assert proc.poll() is not None


def _check_label(result: Path, reference: Path, labels: dict, spatial_shape: tuple[int, ...]) -> np.ndarray:
    ref, out = nib.load(reference), nib.load(result)
    assert out.shape == spatial_shape, f"{result.name}: shape {out.shape} != input {spatial_shape}"
    np.testing.assert_allclose(out.affine, ref.affine, atol=1e-4, err_msg=f"{result.name}: affine differs")
    arr = np.asarray(out.dataobj)
    allowed = {0, *(int(v) for v in labels.values())}
    assert set(np.unique(arr).astype(int).tolist()) <= allowed, f"{result.name}: values outside {allowed}"
    return arr


# ------------------------------------------------------------------------------------------------------ tests
def test_info_lists_every_bundle_with_labels_and_dimension(served):
    info = served["client"].info()
    models = info["models"]
    for name, folder in [*((n, b.path) for n, b in {**served["repo"], **served["variants"]}.items()),
                         *served["fixtures"].items()]:
        assert name in models, f"{name} missing from /info/: {sorted(models)}"
        m = models[name]
        meta = json.loads((Path(folder) / "configs" / "metadata.json").read_text())
        assert m["type"] == "segmentation"
        assert m["dimension"] == _expected_dimension(name, Path(folder), meta), name
        assert m["labels"] and all(isinstance(v, int) and v > 0 for v in m["labels"].values()), m["labels"]
    assert models["fixture3d_segmentation"]["labels"] == {"anterior": 1, "posterior": 2}
    assert models["fixture2d_localisation"]["labels"] == {"object": 1}
    assert not any(k.startswith("sam") for k in models), "SAM2 (downloads weights) must be off"


def test_brats_tumour_3d_upload_and_infer(served, data_dir):
    name = "brats_tumour_segmentation"
    assert name in served["repo"], f"{name} is not served"
    client, tmp = served["client"], served["tmp"]
    upload, truth_file = _brats_4d(data_dir, tmp / "brats_case.nii.gz")
    client.upload_image(upload, "brats_case")
    models = client.info()["models"]
    result, _ = client.infer(name, "brats_case", tmp)
    arr = _check_label(result, upload, models[name]["labels"], nib.load(upload).shape[:3])
    truth = np.asarray(nib.load(truth_file).dataobj) > 0
    dice = 2 * np.sum((arr > 0) & truth) / max(1, np.sum(arr > 0) + np.sum(truth))
    floor = card_figure(name, "dice") - DICE_TOLERANCE  # the card's held-out case is this case
    print(f"{name}: served whole-tumour Dice {dice:.4f} (floor {floor:.4f})")
    assert dice >= floor, f"whole tumour Dice {dice:.4f} with the reference, below the card's figure - tolerance"


def test_synthetic_3d_cam_upload_and_infer(served):
    name = "synthetic_localisation_3d"
    assert name in served["variants"], f"{name} (models/model_3d.pt of synthetic_localisation) is not served"
    from medcnn.data.synthetic import synthetic_datalist

    client, tmp = served["client"], served["tmp"]
    labels = client.info()["models"][name]["labels"]
    items = [i for i in synthetic_datalist(6, seed=4242, spatial_size=(32, 32, 32), radius_range=(4.0, 10.0))
             if int(np.asarray(i["label"]).ravel()[0]) == 1][:2]
    hits = 0
    for k, item in enumerate(items):
        upload = _moved(np.asarray(item["image"], dtype=np.float32).squeeze(), tmp / f"sphere_{k}.nii.gz")
        client.upload_image(upload, f"sphere_{k}")
        result, params = client.infer(name, f"sphere_{k}", tmp)
        arr = _check_label(result, upload, labels, (32, 32, 32))
        assert params["cam"].get("source") in (None, "docs/results_3d.json"), params["cam"]
        hits += int(params["predicted_class"] == "object present"
                    and np.sum((arr > 0) & (np.asarray(item["mask"]).squeeze() > 0)) > 0)
    assert hits >= 1, f"{name}: no positive sphere found and localised"


def test_hippocampus_3d_upload_and_infer(served, data_dir):
    client, tmp = served["client"], served["tmp"]
    names = ["hippocampus_segmentation", "fixture3d_segmentation"]
    models = client.info()["models"]
    assert set(names) <= set(models), f"not served: {sorted(set(names) - set(models))}"
    dices: dict[int, list[float]] = {1: [], 2: []}
    for c, (image, label) in enumerate(_hippocampus_cases(data_dir)):
        src = nib.load(image)
        upload = _moved(np.asarray(src.dataobj), tmp / f"hippo_case{c}.nii.gz", src.affine)
        assert client.upload_image(upload, f"hippo_case{c}")
        for name in names if c == 0 else names[:1]:
            result, params = client.infer(name, f"hippo_case{c}", tmp)
            arr = _check_label(result, upload, models[name]["labels"], src.shape)
            assert params["label_names"] == models[name]["labels"]
            if name == "hippocampus_segmentation":  # on the input's grid (catches flips / shifts)
                truth = np.asarray(nib.load(label).dataobj).astype(int)
                for k in (1, 2):
                    both = np.sum(arr == k) + np.sum(truth == k)
                    dices[k].append(2 * np.sum((arr == k) & (truth == k)) / max(1, both))
    for k, key in ((1, "dice_anterior"), (2, "dice_posterior")):  # mean over the cases, as the card's figure
        mean, floor = float(np.mean(dices[k])), card_figure("hippocampus_segmentation", key) - DICE_TOLERANCE
        shown = [round(float(d), 4) for d in dices[k]]
        print(f"hippocampus_segmentation label {k}: served Dice {shown}, mean {mean:.4f} (floor {floor:.4f})")
        assert mean >= floor, f"hippocampus label {k}: mean Dice {mean:.4f}, below the card's {key} - tolerance"


def test_2d_bundles_upload_and_infer(served, data_dir):
    client, tmp = served["client"], served["tmp"]
    models = client.info()["models"]
    folders = {**{n: b.path for n, b in served["repo"].items()}, **served["fixtures"]}
    ran = []
    for name, folder in folders.items():
        if models[name]["dimension"] != 2:
            continue
        meta = json.loads((Path(folder) / "configs" / "metadata.json").read_text())
        inputs = _2d_inputs(name, meta, data_dir, tmp)
        if not inputs:
            print(f"{name}: no single-channel 2D input known, not run")
            continue
        hits = 0
        for k, (inp, mask, expected) in enumerate(inputs):
            image_id = f"{name}_input{k}"
            client.upload_image(inp, image_id)
            result, params = client.infer(name, image_id, tmp)
            arr = _check_label(result, inp, models[name]["labels"], nib.load(inp).shape[:3])
            if "probabilities" not in str(meta["network_data_format"]["outputs"]):
                if mask is not None:  # segmentation on the input's grid overlaps the reference (catches flips)
                    pred = arr.reshape(mask.shape) > 0
                    dice = 2 * np.sum(pred & (mask > 0)) / max(1, np.sum(pred) + np.sum(mask > 0))
                    if isinstance(expected, float):  # COCO: the evaluation's own Dice of this image, served the same
                        print(f"{name}: served Dice {dice:.4f} (model card, this image: {expected:.4f})")
                        assert abs(dice - expected) <= 0.01, f"{name}: served Dice {dice:.4f}, card {expected:.4f}"
                        continue
                    floor = card_figure(name, "membrane_dice") - DICE_TOLERANCE  # EM membranes: the stack's Dice
                    print(f"{name}: served Dice {dice:.4f} (floor {floor:.4f})")
                    assert dice >= floor, f"{name}: Dice {dice:.4f} with the reference, below the card - tolerance"
                continue
            probs = params["class_probabilities"]
            assert abs(sum(probs.values()) - 1) < 1e-4 and params["predicted_class"] in probs
            positive = params["predicted_class"] == next(iter(models[name]["labels"]))
            assert positive or not arr.any(), f"{name}: CAM region on an image predicted negative: {params}"
            if isinstance(expected, float):  # served = the bundle's own network on the training-time scaling
                served_p = probs[next(iter(models[name]["labels"]))]
                assert abs(served_p - expected) < 1e-3, f"{name}: served p={served_p:.4f}, direct p={expected:.4f}"
            elif expected is not None:
                assert params["predicted_class"] == expected or name == "synthetic_localisation", params
            if name == "fixture2d_localisation":  # biased to the positive class: a non-empty CAM region
                assert positive and arr.any()
            if mask is not None:  # on the input's grid the CAM region of a positive image touches the object
                hits += int(positive and np.sum((arr.reshape(mask.shape) > 0) & (mask > 0)) > 0)
            if name == "synthetic_localisation" and (Path(folder) / "docs" / "results_2d.json").is_file():
                assert params["cam"].get("source") == "docs/results_2d.json", params["cam"]  # the validated rule
            if name == "brats_tumour_localisation":  # slices through the tumour: found and localised
                assert len(params["slices"]) == arr.shape[2] and params["positive_slices"], params
            if name == "lgg_tumour_localisation":  # the bundle's slice-scoring rule, as medcnn predict applies it
                _check_lgg_slice_rule(params, arr, inp, tmp)
        if name == "brats_tumour_localisation":
            assert hits == 1, f"{name}: the CAM region of the positive slices misses the tumour"
        if name == "synthetic_localisation":
            assert hits >= len(inputs) - 1, f"{name}: only {hits}/{len(inputs)} positive images found and localised"
        ran.append(name)
    assert {"fixture2d_segmentation", "fixture2d_localisation"} <= set(ran)
    repo_2d = [n for n in served["repo"] if models[n]["dimension"] == 2]
    assert not repo_2d or set(repo_2d) & set(ran), f"no repository 2D bundle was run ({repo_2d})"
    print(f"2D bundles run: {ran}")


def _check_lgg_slice_rule(params: dict, label: np.ndarray, upload: Path, tmp: Path) -> None:
    """The served LGG slices carry the probabilities ``medcnn predict`` gives the same slices as a multi-page TIFF
    (mirror mean, then the mean over neighbouring uploaded slices), a slice is called positive iff that probability
    is >= the decision threshold, and only those slices have a CAM region."""
    from medcnn.data.tiff_pages import write_tiff_pages
    from medcnn.predict import predict

    volume = np.asarray(nib.load(upload).dataobj)  # (H, W, D, 3), 0..255
    tif = write_tiff_pages(np.moveaxis(volume, 2, 0).round().astype(np.uint8), tmp / "lgg_pages" / "lgg.tif")
    bundle = ROOT / "bundles" / "lgg_tumour_localisation"
    local = predict(bundle, [tif], tmp / "lgg_predict", report=False, progress=False)[0]
    served = np.array([s["class_probabilities"]["tumour present"] for s in params["slices"]])
    expected = np.array([s["class_probabilities"]["tumour present"] for s in local["slices"]])
    np.testing.assert_allclose(served, expected, atol=1e-4)
    threshold = float(params["decision_threshold"])
    assert params["positive_slices"] == np.flatnonzero(served >= threshold).tolist(), params
    regions = label.reshape(label.shape[0], label.shape[1], -1).any(axis=(0, 1))
    assert not regions[served < threshold].any(), "CAM region on a slice the rule calls negative"


def _detail(body: bytes) -> str:
    return str(json.loads(body).get("detail"))


def test_bad_requests_answer_4xx_with_the_reason(served):
    client, tmp = served["client"], served["tmp"]
    body, ct = _multipart({"params": "{}"}, {})
    status, _, resp = _request("POST", f"{client.base}/infer/no_such_model?image=hippo_case0", body, ct)
    assert status == 404 and "no_such_model" in _detail(resp), (status, resp[:500])
    status, _, resp = _request("POST", f"{client.base}/infer/fixture3d_segmentation?image=not_uploaded", body, ct)
    assert status == 404 and "not_uploaded" in _detail(resp), (status, resp[:500])
    # a 2D image for the 3D hippocampus model: the bundle's own input check, naming the stored file
    flat = _moved(np.ones((32, 40), dtype=np.float32), tmp / "flat_2d.nii.gz")
    client.upload_image(flat, "flat_2d")
    status, _, resp = _request("POST", f"{client.base}/infer/hippocampus_segmentation?image=flat_2d", body, ct,
                               timeout=INFER_TIMEOUT)
    assert status == 422, (status, resp[:1000])
    assert "flat_2d.nii.gz" in _detail(resp) and "3D" in _detail(resp), _detail(resp)
    # a corrupt file sent with the inference request itself (no datastore)
    broken = tmp / "broken.nii.gz"
    broken.write_bytes(flat.read_bytes()[:40])
    body, ct = _multipart({"params": "{}"}, {"file": broken})
    status, _, resp = _request("POST", f"{client.base}/infer/hippocampus_segmentation", body, ct)
    assert status == 422 and "not a readable NIfTI" in _detail(resp), (status, resp[:500])
    assert client.info()["models"]  # still serving


@pytest.mark.parametrize("kind", ["truncated", "not_nifti", "nan", "png"])
def test_bad_upload_is_refused_before_it_is_stored(served, kind):
    client, tmp, studies = served["client"], served["tmp"], served["studies"]
    good = _moved(np.random.default_rng(0).normal(size=(16, 16, 8)).astype(np.float32), tmp / "good.nii.gz")
    upload, expected = tmp / f"bad_{kind}.nii.gz", "not a readable NIfTI"
    if kind == "truncated":
        upload.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    elif kind == "not_nifti":
        upload.write_bytes(gzip.compress(b"this is a text file, not an image" * 20))
    elif kind == "nan":
        nib.save(nib.Nifti1Image(np.full((8, 8, 4), np.nan, dtype=np.float32), np.eye(4)), upload)
        expected = "NaN"
    else:
        upload = tmp / "bad_png.png"
        from PIL import Image

        Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(upload)
        expected = "only NIfTI"
    before = sorted(p.name for p in studies.iterdir())
    body, ct = _multipart({"params": "{}"}, {"file": upload})
    status, _, resp = _request("PUT", f"{client.base}/datastore/?image=bad_{kind}", body, ct)
    assert status == 422, (status, resp[:500])
    assert f"bad_{kind}" in _detail(resp) and expected in _detail(resp), _detail(resp)
    assert sorted(p.name for p in studies.iterdir()) == before  # nothing stored
    status, _, resp = _request("GET", f"{client.base}/datastore/?output=all")
    assert status == 200 and f"bad_{kind}" not in resp.decode()


def test_png_in_studies_folder_is_not_listed(served):
    status, _, resp = _request("GET", f"{served['client'].base}/datastore/?output=all")
    assert status == 200
    listing = json.loads(resp)
    assert "photo" not in json.dumps(listing), listing
    assert (served["studies"] / "photo.png").is_file()  # left where the user put it
