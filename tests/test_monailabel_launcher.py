"""Pre-flight checks of medcnn.monailabel.launcher (scripts/monailabel_server.py): bad input is refused with a clear
message before any server starts. Runs in the main environment (the launcher's checks need only the standard
library)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "monailabel_server.py"

from medcnn.monailabel import launcher  # noqa: E402


def _bundle(root: Path, name: str, weights: bool = True, inference: bool = True) -> Path:
    b = root / name
    (b / "configs").mkdir(parents=True)
    (b / "models").mkdir()
    fmt = {"inputs": {"image": {"spatial_shape": [64, 64]}}, "outputs": {"pred": {"type": "image"}}}
    (b / "configs" / "metadata.json").write_text(json.dumps({"version": "0.1.0", "network_data_format": fmt}))
    if inference:
        (b / "configs" / "inference.json").write_text("{}")
    if weights:
        (b / "models" / "model.pt").write_bytes(b"weights")
    return b


@pytest.fixture
def layout(tmp_path):
    bundles = tmp_path / "bundles"
    _bundle(bundles, "seg_a")
    _bundle(bundles, "cls_b")
    _bundle(bundles, "untrained_c", weights=False)
    studies = tmp_path / "studies"
    studies.mkdir()
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
    (venv / "bin" / "python").chmod(0o755)
    (venv / "lib" / "python3.11" / "site-packages" / "monailabel").mkdir(parents=True)
    (venv / "lib" / "python3.11" / "site-packages" / "monailabel" / "__init__.py").write_text("")
    return {"bundles": bundles, "studies": studies, "venv": venv, "tmp": tmp_path}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(layout, *extra):
    return ["--studies", str(layout["studies"]), "--bundles-dir", str(layout["bundles"]), "--venv",
            str(layout["venv"]), "--app-dir", str(layout["tmp"] / "app"), "--port", str(_free_port()), *extra]


def test_discovery_serves_only_bundles_with_weights(layout, caplog):
    chosen = launcher.select_bundles(None, layout["bundles"])
    assert [b.name for b in chosen] == ["cls_b", "seg_a"]
    assert "untrained_c" in caplog.text and "no trained weights" in caplog.text


@pytest.mark.parametrize("weights,inference,msg", [(False, True, "no trained weights"),
                                                   (True, False, "no configs/inference.json")])
def test_requested_bundle_without_weights_or_inference_is_refused(layout, weights, inference, msg):
    _bundle(layout["bundles"], "broken", weights=weights, inference=inference)
    with pytest.raises(launcher.LaunchError, match=msg):
        launcher.select_bundles(["broken"], layout["bundles"])
    with pytest.raises(launcher.LaunchError, match="not found"):
        launcher.select_bundles(["no_such_bundle"], layout["bundles"])


def test_bundle_with_broken_config_is_refused_by_name(layout):
    broken = _bundle(layout["bundles"], "broken_json")
    (broken / "configs" / "inference.json").write_text("{not json")
    with pytest.raises(launcher.LaunchError, match="broken_json.*unreadable config"):
        launcher.select_bundles(["broken_json"], layout["bundles"])
    (broken / "configs" / "inference.json").write_text("{}")
    (broken / "configs" / "metadata.json").write_text("{}")
    with pytest.raises(launcher.LaunchError, match="network_data_format"):
        launcher.select_bundles(["broken_json"], layout["bundles"])
    assert "broken_json" not in [b.name for b in launcher.select_bundles(None, layout["bundles"])]


def test_no_servable_bundle_is_refused(tmp_path):
    _bundle(tmp_path, "untrained", weights=False)
    with pytest.raises(launcher.LaunchError, match="no servable bundle"):
        launcher.select_bundles(None, tmp_path)


def test_missing_studies_folder_is_refused(tmp_path):
    with pytest.raises(launcher.LaunchError, match="does not exist"):
        launcher.check_studies(tmp_path / "missing")
    (tmp_path / "file.nii.gz").write_bytes(b"")
    with pytest.raises(launcher.LaunchError, match="is not a folder"):
        launcher.check_studies(tmp_path / "file.nii.gz")


def test_port_in_use_is_refused():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(launcher.LaunchError, match=f"port {port} .* not free"):
            launcher.check_port("127.0.0.1", port)
    launcher.check_port("127.0.0.1", port)  # free again once the listener is closed


def test_required_package_missing_from_environment_is_refused(layout):
    meta_file = layout["bundles"] / "seg_a" / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["required_packages_version"] = {"numpy": "0.0.1", "no-such-package-for-medcnn": "1.0"}
    meta_file.write_text(json.dumps(meta))
    python = launcher.check_venv(layout["venv"])
    with pytest.raises(launcher.LaunchError, match="seg_a.*'no-such-package-for-medcnn'.*not installed"):
        launcher.check_requirements(python, launcher.select_bundles(["seg_a"], layout["bundles"]))
    meta["required_packages_version"] = {"numpy": "0.0.1"}  # another version only: served
    meta_file.write_text(json.dumps(meta))
    launcher.check_requirements(python, launcher.select_bundles(["seg_a"], layout["bundles"]))


def test_variant_of_a_bundle_is_served_when_its_weights_exist(layout, tmp_path):
    overrides = tmp_path / "overrides"
    overrides.mkdir()
    (overrides / "seg_a_3d.json").write_text(json.dumps({"monailabel": {"variant_of": "seg_a",
                                                                        "model_file": "model_3d.pt"}}))
    (overrides / "cls_b.json").write_text(json.dumps({"preprocessing": {}}))  # a plain override: no variant
    chosen = launcher.select_bundles(None, layout["bundles"])
    assert [b.name for b in launcher.with_variants(chosen, overrides)] == ["cls_b", "seg_a"]  # no model_3d.pt yet
    (layout["bundles"] / "seg_a" / "models" / "model_3d.pt").write_bytes(b"weights")
    served = launcher.with_variants(chosen, overrides)
    assert [b.name for b in served] == ["cls_b", "seg_a", "seg_a_3d"]
    assert served[2].path == served[1].path and served[2].weights.name == "model_3d.pt"
    app = launcher.assemble_app(layout["tmp"] / "app", served)
    assert (app / "model" / "seg_a_3d").resolve() == (layout["bundles"] / "seg_a").resolve()


def test_missing_environment_is_refused(tmp_path):
    with pytest.raises(launcher.LaunchError, match="scripts/monailabel_env.sh"):
        launcher.check_venv(tmp_path / "nothing")


def test_check_assembles_local_app_and_command(layout, capsys):
    assert launcher.main(_args(layout, "--check")) == 0
    cmd = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["command"]
    assert cmd[1:4] == ["-m", "monailabel.main", "start_server"]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--conf") + 2] == "cls_b,seg_a"
    app = Path(cmd[cmd.index("--app") + 1])
    assert "from medcnn.monailabel.app import MedcnnApp" in (app / "main.py").read_text()
    assert sorted(p.name for p in (app / "model").iterdir()) == ["cls_b", "seg_a"]
    assert (app / "model" / "seg_a").resolve() == (layout["bundles"] / "seg_a").resolve()
    env = launcher.server_env({"PYTHONPATH": "/elsewhere"}, threads=2)
    assert env["MONAI_ZOO_SOURCE"] == "local" and env["OMP_NUM_THREADS"] == "2"
    # the server imports this medcnn (a checkout / worktree), before another one installed in its environment
    assert env["PYTHONPATH"].split(":") == [str(ROOT), "/elsewhere"]
    assert "OMP_NUM_THREADS" not in launcher.server_env({})


def test_app_folder_not_made_by_launcher_is_not_overwritten(layout):
    foreign = layout["tmp"] / "app"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("user data")
    with pytest.raises(launcher.LaunchError, match="not made by this launcher"):
        launcher.prepare(launcher.parse_args(_args(layout)))
    assert (foreign / "precious.txt").read_text() == "user data"


@pytest.mark.parametrize("case", ["studies", "port", "weights"])
def test_command_line_exits_2_with_message_before_starting(layout, case):
    args = _args(layout)
    busy = None
    if case == "studies":
        args[1] = str(layout["tmp"] / "no_studies")
        expected = "does not exist"
    elif case == "port":
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        args[args.index("--port") + 1] = str(busy.getsockname()[1])
        expected = "not free"
    else:
        args += ["--bundles", "untrained_c"]
        expected = "no trained weights"
    try:
        res = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)
    finally:
        if busy is not None:
            busy.close()
    assert res.returncode == 2
    assert "error:" in res.stderr and expected in res.stderr
    assert "start_server" not in res.stdout


def test_medcnn_monailabel_command_runs_the_same_checks(layout, capsys):
    from medcnn.cli import main as cli_main

    assert cli_main(["monailabel", *_args(layout, "--check")]) == 0
    cmd = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["command"]
    assert cmd[cmd.index("--conf") + 2] == "cls_b,seg_a"
    assert cli_main(["monailabel", *_args(layout, "--bundles", "untrained_c")]) == 2
    assert "no trained weights" in capsys.readouterr().err


def _installed_copy(site: Path) -> Path:
    """medcnn's launcher as a wheel installs it: ``<site>/medcnn/monailabel`` without the repository around it."""
    package = site / "medcnn" / "monailabel"
    package.mkdir(parents=True)
    (site / "medcnn" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    for item in ("launcher.py", "app_template", "overrides"):
        src = ROOT / "medcnn" / "monailabel" / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, package / item)
    return site


def _run_installed(layout, code: str, env_name: str, option: str | None, env_value: str | None):
    """Run ``code`` with ``_args(layout, "--check")`` against an installed (non-checkout) copy of the launcher, with
    ``option`` and its value left out of the arguments and ``env_name`` unset, or set to ``env_value``."""
    import os

    site = _installed_copy(layout["tmp"] / "site-packages")
    args = _args(layout, "--check")
    if option is not None:
        i = args.index(option)
        del args[i:i + 2]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", env_name)}
    env["PYTHONPATH"] = str(site)
    if env_value is not None:
        env[env_name] = env_value
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60,
                          cwd=layout["tmp"], env=env)


@pytest.mark.parametrize("how", ["nothing", "bundles-dir", "env"])
def test_installed_launcher_needs_a_bundles_folder_and_says_which(layout, how):
    """Installed outside the repository there is no bundles/ beside the package: without --bundles-dir (or
    MEDCNN_BUNDLES_DIR) the launcher says what to pass; with either it serves those bundles, and the server's
    PYTHONPATH does not get the installing environment's site-packages."""
    code = ("import json, sys; from medcnn.monailabel import launcher; assert not launcher.IN_CHECKOUT, "
            "launcher.__file__; rc = launcher.main(sys.argv[1:]); "
            "print(json.dumps({'pythonpath': launcher.server_env({}).get('PYTHONPATH')})); sys.exit(rc)")
    res = _run_installed(layout, code, launcher.BUNDLES_ENV,
                         option=None if how == "bundles-dir" else "--bundles-dir",
                         env_value=str(layout["bundles"]) if how == "env" else None)
    if how == "nothing":
        assert res.returncode == 2, res.stderr
        assert "error: no bundles folder" in res.stderr and "--bundles-dir" in res.stderr, res.stderr
        assert launcher.BUNDLES_ENV in res.stderr and "start_server" not in res.stdout
        return
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    cmd = json.loads(lines[-2])["command"]
    assert cmd[cmd.index("--conf") + 2] == "cls_b,seg_a"
    assert json.loads(lines[-1])["pythonpath"] is None  # not <site>: the MONAI Label environment's own medcnn


@pytest.mark.parametrize("how", ["nothing", "env"])
def test_installed_launcher_needs_a_monailabel_environment_and_says_which(layout, how):
    """Installed outside the repository, the launcher does not invent <site-packages>/../.venv-monailabel: without
    --venv (or MEDCNN_MONAILABEL_VENV) it says what to pass; with the variable it uses that environment."""
    code = ("import sys; from medcnn.monailabel import launcher; assert not launcher.IN_CHECKOUT, "
            "launcher.__file__; sys.exit(launcher.main(sys.argv[1:]))")
    res = _run_installed(layout, code, launcher.VENV_ENV, option="--venv",
                         env_value=str(layout["venv"]) if how == "env" else None)
    if how == "nothing":
        assert res.returncode == 2, res.stderr
        assert "no MONAI Label environment" in res.stderr and "--venv" in res.stderr, res.stderr
        assert launcher.VENV_ENV in res.stderr and ".venv-monailabel" not in res.stderr
        return
    assert res.returncode == 0, res.stderr
    assert "start_server" in res.stdout
