#!/usr/bin/env python3
"""Serve the medcnn bundles to 3D Slicer through MONAI Label 0.8.5, offline.

Usage (from the repository root)::

    scripts/monailabel_env.sh                                   # once: builds .venv-monailabel (pinned)
    python scripts/monailabel_server.py --studies /path/to/images [--port 8000] [--bundles a,b] [--device cpu]
    python -m medcnn.monailabel.launcher --studies ... --bundles-dir /path/to/medcnn/bundles
                                                                # the same, from a pip-installed medcnn (the
                                                                # bundles stay in the repository; or set
                                                                # MEDCNN_BUNDLES_DIR)

Then in 3D Slicer: MONAI Label module -> server http://127.0.0.1:8000 -> fetch -> choose a model -> Run.

What it does: finds every ``bundles/*/configs/metadata.json`` whose bundle has ``configs/inference.json`` and
trained weights (``models/model.pt`` or ``models/model.ts``), checks the studies folder, the port and the
MONAI Label environment, assembles a MONAI Label app (``main.py`` of ``medcnn/monailabel/app_template``, which
serves :class:`medcnn.monailabel.app.MedcnnApp`; the bundles are linked as local models under
``<app>/model/<name>``, the ``monaibundle`` layout, so nothing is fetched from a model zoo; a variant such as
``synthetic_localisation_3d`` is served under its own name when its override config in
``medcnn/monailabel/overrides`` names it and its weights exist), checks that every package a bundle's
metadata requires (medcnn included) is installed in that environment, then replaces itself with
``<venv>/bin/python -m monailabel.main start_server``.

The pre-flight checks use only the standard library, so this module runs (and is tested) in any Python, without
medcnn's dependencies; only the server itself needs the MONAI Label environment, and it runs the medcnn this
module belongs to (its folder is put first on the server's ``PYTHONPATH``). Exit code 2 and a one-line ``error:``
message for bad input (missing studies folder, port in use, bundle without weights, missing environment).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("medcnn.monailabel")

PACKAGE_DIR = Path(__file__).resolve().parent
MEDCNN_ROOT = PACKAGE_DIR.parent.parent  # the folder holding the medcnn package (the repository in a checkout)
REPO_ROOT = MEDCNN_ROOT
#: a source checkout (or an editable install of one): the repository's bundles/ and this medcnn serve; a wheel
#: installed into site-packages ships neither bundles nor a place to look for them
IN_CHECKOUT = (MEDCNN_ROOT / "setup.cfg").is_file() and (MEDCNN_ROOT / "medcnn" / "__init__.py").is_file()
BUNDLES_ENV = "MEDCNN_BUNDLES_DIR"
APP_TEMPLATE = PACKAGE_DIR / "app_template"
OVERRIDES_DIR = PACKAGE_DIR / "overrides"
VENV_ENV = "MEDCNN_MONAILABEL_VENV"
DEFAULT_VENV = REPO_ROOT / ".venv-monailabel"  # only meaningful in a checkout (scripts/monailabel_env.sh builds it)
WEIGHT_FILES = ("model.pt", "model.ts")


class LaunchError(ValueError):
    """A problem found before the server starts (bad studies folder, port, bundle or environment)."""


@dataclass(frozen=True)
class BundleInfo:
    """One bundle as MONAI Label will see it: folder, name and whether it can be served."""

    name: str
    path: Path
    has_inference: bool
    weights: Path | None
    config_error: str = ""

    @property
    def servable(self) -> bool:
        return self.has_inference and self.weights is not None and not self.config_error

    def problem(self) -> str:
        """Why this bundle cannot be served ('' when it can)."""
        if self.config_error:
            return f"bundle {self.name!r} ({self.path}): {self.config_error}"
        if not self.has_inference:
            return f"bundle {self.name!r} ({self.path}) has no configs/inference.json"
        if self.weights is None:
            return (f"bundle {self.name!r} ({self.path}) has no trained weights: expected models/model.pt "
                    f"(or models/model.ts); train it first with its configs/train.json")
        return ""


def inspect_bundle(path: str | os.PathLike) -> BundleInfo:
    """Describe the bundle folder ``path`` (raises LaunchError when it is not a bundle at all)."""
    p = Path(path).resolve()
    if not (p / "configs" / "metadata.json").is_file():
        raise LaunchError(f"{p} is not a MONAI bundle: configs/metadata.json is missing")
    weights = next((p / "models" / w for w in WEIGHT_FILES if (p / "models" / w).is_file()), None)
    has_inf = any((p / "configs" / c).is_file() for c in ("inference.json", "inference.yaml"))
    return BundleInfo(name=p.name, path=p, has_inference=has_inf, weights=weights, config_error=_config_error(p))


def _config_error(bundle: Path) -> str:
    """What MONAI Label would trip on in the bundle's JSON configs ('' when they look servable)."""
    try:
        meta = json.loads((bundle / "configs" / "metadata.json").read_text())
        for f in ("inference.json", "monailabel.json"):
            if (bundle / "configs" / f).is_file():
                json.loads((bundle / "configs" / f).read_text())
    except (OSError, ValueError) as e:
        return f"unreadable config ({type(e).__name__}: {e})"
    fmt = meta.get("network_data_format", {}) if isinstance(meta, dict) else {}
    if not fmt.get("inputs") or not fmt.get("outputs"):
        return "configs/metadata.json has no network_data_format inputs/outputs (MONAI Label reads them)"
    return ""


def default_bundles_dir() -> Path:
    """Where the bundles are when ``--bundles-dir`` is not given: ``$MEDCNN_BUNDLES_DIR``, else the checkout's
    ``bundles/``. LaunchError saying what to pass when medcnn is installed without the repository (a wheel carries
    the library, not the bundles: their weights and data licences stay with the repository)."""
    env = os.environ.get(BUNDLES_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise LaunchError(f"{BUNDLES_ENV}={env} is not a folder (give the bundles/ folder of a medcnn checkout)")
        return path
    checkout = REPO_ROOT / "bundles"
    if IN_CHECKOUT and checkout.is_dir():
        return checkout
    raise LaunchError(f"no bundles folder: medcnn is installed at {PACKAGE_DIR.parent} without the repository's "
                      f"bundles/; pass --bundles-dir /path/to/medcnn/bundles (a clone of the repository), set "
                      f"{BUNDLES_ENV}, or give bundle folders with --bundles")


def discover_bundles(bundles_dir: str | os.PathLike = REPO_ROOT / "bundles") -> list[BundleInfo]:
    """Every bundle folder under ``bundles_dir`` (one with configs/metadata.json), sorted by name."""
    root = Path(bundles_dir)
    return [inspect_bundle(m.parent.parent) for m in sorted(root.glob("*/configs/metadata.json"))]


def select_bundles(requested: list[str] | None, bundles_dir: str | os.PathLike = REPO_ROOT / "bundles"
                   ) -> list[BundleInfo]:
    """The bundles to serve.

    ``requested`` None: every discovered bundle that has weights (the others are skipped with a warning).
    ``requested`` names or folders: each must exist and have weights, else LaunchError naming it.
    """
    if requested:
        out = []
        for item in requested:
            cand = Path(item)
            folder = cand if cand.is_dir() else Path(bundles_dir) / item
            if not folder.is_dir():
                raise LaunchError(f"bundle {item!r} not found (looked for {folder})")
            info = inspect_bundle(folder)
            if not info.servable:
                raise LaunchError(info.problem())
            out.append(info)
    else:
        found = discover_bundles(bundles_dir)
        for b in found:
            if not b.servable:
                logger.warning("skipping %s", b.problem())
        out = [b for b in found if b.servable]
        if not out:
            raise LaunchError(f"no servable bundle under {bundles_dir}: none has configs/inference.json and "
                              f"models/model.pt")
    names = [b.name for b in out]
    if len(set(names)) != len(names):
        raise LaunchError(f"two bundles share a folder name: {names}")
    return out


def with_variants(bundles: list[BundleInfo], overrides_dir: Path = OVERRIDES_DIR) -> list[BundleInfo]:
    """``bundles`` plus their served variants: each override ``<variant>.json`` whose ``monailabel.variant_of``
    names a selected bundle and whose ``monailabel.model_file`` exists in that bundle's models/ (else skipped)."""
    by_name = {b.name: b for b in bundles}
    out = list(bundles)
    for f in sorted(Path(overrides_dir).glob("*.json")):
        try:
            ml = json.loads(f.read_text()).get("monailabel") or {}
        except (OSError, ValueError) as e:
            raise LaunchError(f"unreadable override config {f} ({e})") from None
        base = by_name.get(ml.get("variant_of", ""))
        if base is None or f.stem in by_name:
            continue
        weights = base.path / "models" / str(ml.get("model_file", "model.pt"))
        if not weights.is_file():
            logger.warning("skipping variant %r of %r: no %s", f.stem, base.name, weights)
            continue
        out.append(BundleInfo(name=f.stem, path=base.path, has_inference=True, weights=weights))
    return out


def check_studies(studies: str | os.PathLike) -> Path:
    """The studies folder, resolved; LaunchError when it does not exist or is not a folder."""
    p = Path(studies).expanduser()
    if not p.exists():
        raise LaunchError(f"studies folder {p} does not exist (create it, or give the folder holding your images)")
    if not p.is_dir():
        raise LaunchError(f"studies folder {p} is not a folder")
    return p.resolve()


def check_port(host: str, port: int) -> None:
    """LaunchError when ``host:port`` cannot be bound (already in use, or not a local address)."""
    if not 0 < int(port) < 65536:
        raise LaunchError(f"port {port} is out of range 1-65535")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a listener blocks, TIME_WAIT does not
        try:
            s.bind((host, int(port)))
        except OSError as e:
            raise LaunchError(f"port {port} on {host} is not free ({e.strerror}); choose another with --port, "
                              f"or stop the process that uses it") from None


def default_venv() -> Path:
    """The MONAI Label environment when ``--venv`` is not given: ``$MEDCNN_MONAILABEL_VENV``, else the checkout's
    ``.venv-monailabel``. LaunchError saying what to pass when medcnn is installed without the repository (a path
    beside site-packages would name a folder nobody made)."""
    env = os.environ.get(VENV_ENV)
    if env:
        return Path(env).expanduser()
    if IN_CHECKOUT:
        return DEFAULT_VENV
    raise LaunchError(f"no MONAI Label environment: medcnn is installed at {PACKAGE_DIR.parent} without the "
                      f"repository; pass --venv /path/to/env (made by the repository's scripts/monailabel_env.sh) "
                      f"or set {VENV_ENV}")


def check_venv(venv: str | os.PathLike | None) -> Path:
    """The MONAI Label environment's python (``venv`` None: :func:`default_venv`); LaunchError when it is missing
    or has no monailabel."""
    v = Path(venv) if venv else default_venv()
    py = v / "bin" / "python"
    if not py.exists():
        raise LaunchError(f"MONAI Label environment {v} not found: build it with scripts/monailabel_env.sh "
                          f"(or pass --venv)")
    if not list((v / "lib").glob("python3*/site-packages/monailabel/__init__.py")):
        raise LaunchError(f"{v} has no monailabel installed: rebuild it with scripts/monailabel_env.sh")
    return py


_REQUIREMENTS_PROBE = """
import json, sys
from importlib.metadata import PackageNotFoundError, version
out = {}
for name in json.loads(sys.argv[1]):
    try:
        out[name] = version(name)
    except PackageNotFoundError:
        out[name] = None
print(json.dumps(out))
"""


def check_requirements(python: Path, bundles: list[BundleInfo]) -> None:
    """LaunchError when a package of a bundle's ``required_packages_version`` is missing from the environment.

    A different version is only logged: MONAI Label's environment pins some packages apart from the main one.
    """
    required: dict[str, list[tuple[str, str]]] = {}
    for b in bundles:
        meta = json.loads((b.path / "configs" / "metadata.json").read_text())
        for pkg, ver in (meta.get("required_packages_version") or {}).items():
            required.setdefault(pkg, []).append((b.name, str(ver)))
    if not required:
        return
    try:
        res = subprocess.run([str(python), "-c", _REQUIREMENTS_PROBE, json.dumps(sorted(required))],
                             capture_output=True, text=True, timeout=120, check=True)
        found = json.loads(res.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as e:
        raise LaunchError(f"cannot run the MONAI Label environment's python {python} ({e}); rebuild it with "
                          f"scripts/monailabel_env.sh") from None
    for pkg, users in sorted(required.items()):
        have = found.get(pkg)
        if have is None:
            raise LaunchError(f"bundle {users[0][0]!r} requires package {pkg!r} (metadata required_packages_version) "
                              f"but it is not installed in {python.parent.parent}; rerun scripts/monailabel_env.sh")
        for name, want in users:
            if have != want:
                logger.info("bundle %s was made with %s %s; the MONAI Label environment has %s", name, pkg, want,
                            have)


def assemble_app(app_dir: str | os.PathLike, bundles: list[BundleInfo]) -> Path:
    """Copy the medcnn MONAI Label app to ``app_dir`` (replacing it) and link each bundle as ``model/<name>``."""
    app = Path(app_dir)
    if app.exists():
        if not (app / ".medcnn-monailabel-app").exists():
            raise LaunchError(f"app folder {app} exists and was not made by this launcher; choose another --app-dir")
        shutil.rmtree(app)
    shutil.copytree(APP_TEMPLATE, app, ignore=shutil.ignore_patterns("__pycache__"))
    (app / ".medcnn-monailabel-app").write_text("made by medcnn.monailabel.launcher; rebuilt at every start\n")
    (app / "model").mkdir()
    for b in bundles:  # a variant links to its bundle's folder under its own name
        (app / "model" / b.name).symlink_to(b.path, target_is_directory=True)
    return app


def server_command(python: Path, app: Path, studies: Path, bundles: list[BundleInfo], host: str, port: int,
                   device: str) -> list[str]:
    """The ``monailabel start_server`` command line for the assembled app."""
    return [str(python), "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies),
            "--host", host, "--port", str(port),
            "--conf", "models", ",".join(b.name for b in bundles),
            "--conf", "device", device,
            "--conf", "preload", "false",
            "--conf", "skip_trainers", "true"]


def server_env(base: dict[str, str] | None = None, threads: int | None = None) -> dict[str, str]:
    """Environment for the server: offline, no zoo, no automatic scoring; ``threads`` sets OMP_NUM_THREADS."""
    env = dict(os.environ if base is None else base)
    # the server runs this medcnn (a checkout's, or a worktree's), not another one installed in its environment; an
    # installed medcnn's folder is another environment's site-packages (numpy 2, ...): the server uses its own medcnn
    if IN_CHECKOUT:
        env["PYTHONPATH"] = os.pathsep.join([str(MEDCNN_ROOT), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                                                 if p and Path(p).resolve() != MEDCNN_ROOT]])
    if threads:
        env["OMP_NUM_THREADS"] = str(int(threads))
    env.update({
        "MONAI_ZOO_SOURCE": "local",             # never the MONAI hosting / NGC model zoo
        "MONAI_LABEL_AUTO_UPDATE_SCORING": "false",
        "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false",
        "MONAI_LABEL_TRACKING_ENABLED": "false",
        "HF_HUB_OFFLINE": "1",
        "NO_ALBUMENTATIONS_UPDATE": "1",
    })
    return env


def add_arguments(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The launcher's options on ``ap`` (``scripts/monailabel_server.py`` and ``medcnn monailabel``)."""
    ap.add_argument("--studies", required=True, help="folder of images the MONAI Label datastore serves")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--bundles", default=None,
                    help="comma-separated bundle names (under bundles/) or folders; default: every bundle with weights")
    ap.add_argument("--bundles-dir", default=None,
                    help=f"folder of the bundles (default: ${BUNDLES_ENV}, else bundles/ of this checkout; needed "
                         "when medcnn is pip-installed)")
    ap.add_argument("--venv", default=None,
                    help=f"MONAI Label environment made by scripts/monailabel_env.sh (default: ${VENV_ENV}, else "
                         ".venv-monailabel of this checkout; needed when medcnn is pip-installed)")
    ap.add_argument("--app-dir", default=None,
                    help="where the app is assembled (default: ~/.cache/medcnn/monailabel/app-<port>)")
    ap.add_argument("--device", default="auto", help="'auto' (cuda when available, else cpu), 'cpu' or 'cuda'")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads for inference (OMP_NUM_THREADS; default: the environment's or PyTorch's)")
    ap.add_argument("--check", action="store_true", help="run the checks, assemble the app, print the command, exit")
    return ap


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options of the launcher."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_arguments(ap).parse_args(argv)


def prepare(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """Run every pre-flight check and assemble the app; returns (command, environment). Raises LaunchError."""
    studies = check_studies(args.studies)
    requested = [b.strip() for b in args.bundles.split(",") if b.strip()] if args.bundles else None
    if args.bundles_dir is not None:
        bundles_dir = Path(args.bundles_dir)
        if not bundles_dir.is_dir():
            raise LaunchError(f"--bundles-dir {bundles_dir} is not a folder")
    elif requested and all(Path(b).is_dir() for b in requested):
        bundles_dir = Path.cwd()  # bundle folders given: no bundles folder needed
    else:
        bundles_dir = default_bundles_dir()
    bundles = with_variants(select_bundles(requested, bundles_dir))
    check_port(args.host, args.port)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("listening on %s: MONAI Label has no authentication here; use trusted networks only", args.host)
    python = check_venv(args.venv)
    check_requirements(python, bundles)
    if args.device not in ("auto", "cpu", "cuda") and not args.device.startswith("cuda:"):
        raise LaunchError(f"--device must be auto, cpu or cuda[:N], got {args.device!r}")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "medcnn" / "monailabel"
    app = assemble_app(args.app_dir or cache / f"app-{args.port}", bundles)
    logger.info("serving %d bundle(s): %s", len(bundles), ", ".join(b.name for b in bundles))
    if args.threads is not None and args.threads < 1:
        raise LaunchError(f"--threads must be >= 1, got {args.threads}")
    cmd = server_command(python, app, studies, bundles, args.host, args.port, args.device)
    return cmd, server_env(threads=args.threads)


def run(args: argparse.Namespace) -> int:
    """Check, assemble and exec the MONAI Label server (exit 2 with a clear message on bad input)."""
    try:
        cmd, env = prepare(args)
    except LaunchError as e:
        print(f"medcnn-monailabel: error: {e}", file=sys.stderr)
        return 2
    print("medcnn-monailabel: " + " ".join(cmd), flush=True)
    if args.check:
        print(json.dumps({"command": cmd}))
        return 0
    os.execve(cmd[0], cmd, env)
    return 0  # not reached


def add_parser(parser: argparse.ArgumentParser):
    """Configure the ``medcnn monailabel`` subcommand (the same options as ``scripts/monailabel_server.py``)."""
    parser.description = "Serve the medcnn bundles to 3D Slicer through MONAI Label (offline, local bundles only)."
    add_arguments(parser)
    parser.set_defaults(run=run)
    return run


def main(argv: list[str] | None = None) -> int:
    """``scripts/monailabel_server.py``: parse the options, then :func:`run`."""
    logging.basicConfig(level=logging.INFO, format="medcnn-monailabel: %(levelname)s: %(message)s")
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
