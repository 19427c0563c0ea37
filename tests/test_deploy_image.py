"""The container images really built and run (``make image``: deploy/image/build.sh, docker when its
daemon answers, else podman prepared by deploy/image/prepare.sh): started on 127.0.0.1, ready, the
same /similarity and /nli answers as the service on the host, a non-root uid, a working
healthcheck, a clean stop; the slim target (``make image-slim``) answers like the float32 torch
model on the host, without torch. Skips with a reason where no engine can be had (not root with apt-get);
``PETE_REQUIRE_DEPLOY_TOOLS=1`` (CI) turns the skip into a failure."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from loadtest.server import free_port
from bench.readme_examples import EXAMPLE_SETTINGS, same
from conftest import wait_ready

# On a new machine the first build also installs podman and bootstraps the base image: 3-5 min,
# past the suite's default 180 s per test (the module-scoped build runs in the first test's setup).
pytestmark = pytest.mark.timeout(900)

ROOT = Path(__file__).resolve().parents[1]
REQUIRE_TOOLS = os.environ.get("PETE_REQUIRE_DEPLOY_TOOLS") == "1"
TAG = "pete-serve:test"
SLIM_TAG = "pete-serve:test-slim"
SIM = {"pairs": [{"text_a": "A man is playing a guitar.", "text_b": "Someone plays an instrument."},
                 {"text_a": "A cat sleeps.", "text_b": "The stock market fell sharply today."}]}
NLI = {"pairs": [{"premise": "A man is playing a guitar on stage.", "hypothesis": "The man is sleeping at home."}]}


def sh(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    assert not check or r.returncode == 0, (args, r.stdout[-2000:], r.stderr[-2000:])
    return r


def build(*args: str) -> str:
    """Build with the project's script (layers cached between runs); the engine used."""
    r = subprocess.run(["bash", "deploy/image/build.sh", *args], cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if r.returncode == 3 or "prepare.sh:" in r.stderr and r.returncode != 0:
        reason = f"no container engine here: {r.stderr.strip().splitlines()[-1]}"
        if REQUIRE_TOOLS:
            pytest.fail(reason)
        pytest.skip(reason)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    return r.stdout.strip().splitlines()[-1].split(" with ")[1].split()[0]


@pytest.fixture(scope="module")
def engine() -> str:
    return build(TAG)


@pytest.fixture(scope="module")
def slim_engine() -> str:
    return build("--target", "slim", SLIM_TAG)


def test_image_runs_answers_like_the_host_and_stops_cleanly(engine, bundled_server):
    port = free_port()
    name = f"pete-serve-test-{port}"
    same_settings = [a for k, v in EXAMPLE_SETTINGS.items() for a in ("-e", f"{k}={v}")]  # as bundled_server
    sh(engine, "run", "-d", "--name", name, "--network", "host", "-e", "PETE_HOST=127.0.0.1",
       "-e", f"PETE_PORT={port}", *same_settings, TAG)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, why=lambda: sh(engine, "logs", name, check=False).stderr[-2000:])
        for path, body in (("/similarity", SIM), ("/nli", NLI)):
            got = httpx.post(f"{url}{path}", json=body, timeout=30).json()
            want = httpx.post(f"{bundled_server}{path}", json=body, timeout=30).json()
            assert same(want, got, tol=1e-6), (path, got, want)
        assert sh(engine, "exec", name, "id", "-u").stdout.strip() == "10001"
        health = json.loads(sh(engine, "inspect", "--format", "{{json .Config.Healthcheck}}", name).stdout)
        assert health and "/healthz" in " ".join(health["Test"]), health  # kept: built in the docker format
        assert sh(engine, "exec", name, *health["Test"][1:]).returncode == 0  # the probe itself passes
        if engine == "podman":
            assert sh(engine, "healthcheck", "run", name).returncode == 0
        start = time.monotonic()
        sh(engine, "stop", "--time", "30", name)
        stopped_s = time.monotonic() - start
        state = json.loads(sh(engine, "inspect", "--format", "{{json .State}}", name).stdout)
        assert state["ExitCode"] == 0 and stopped_s < 15, (state, stopped_s)
        logs = sh(engine, "logs", name).stdout + sh(engine, "logs", name).stderr
        assert "Application shutdown complete" in logs
    finally:
        sh(engine, "rm", "-f", name, check=False)


def test_image_report_is_what_make_image_measured():
    report = json.loads((ROOT / "deploy" / "image" / "report.json").read_text())
    assert report["engine"] in ("docker", "podman") and report["size_bytes"] > 100_000_000


def test_slim_image_answers_like_torch_without_torch(slim_engine):
    from app.inference import TorchRunner
    from app.outputs import cosine
    from app.batching import WorkItem

    port = free_port()
    name = f"pete-serve-slim-test-{port}"
    sh(slim_engine, "run", "-d", "--name", name, "--network", "host", "-e", "PETE_HOST=127.0.0.1",
       "-e", f"PETE_PORT={port}", SLIM_TAG)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, why=lambda: sh(slim_engine, "logs", name, check=False).stderr[-2000:])
        info = httpx.get(f"{url}/info", timeout=10).json()
        # PETE_QUANTIZE=auto: the int8 graph where this CPU runs it faster, else float32
        assert info["quantization"] in ("none", "int8") and info["nli_head"] == "align"
        got = httpx.post(f"{url}/similarity", json=SIM, timeout=30).json()["scores"]
        runner = TorchRunner(ROOT / "model" / "checkpoints" / "default", max_tokens=128, max_batch_size=32,
                             max_batch_tokens=2048, quantize=info["quantization"], threads=1)
        runner.load()
        outs = runner([WorkItem("embed", t) for p in SIM["pairs"] for t in (p["text_a"], p["text_b"])])
        want = [cosine(outs[2 * i].vector, outs[2 * i + 1].vector) for i in range(len(SIM["pairs"]))]
        # float32: the same computation; int8: the same scheme, within a fraction of its noise (test_onnx_backend)
        assert got == pytest.approx(want, abs=1e-4 if info["quantization"] == "none" else 0.01)
        assert httpx.post(f"{url}/nli", json=NLI, timeout=30).json()["results"][0]["label"] == "contradiction"
        no_torch = sh(slim_engine, "exec", name, "python", "-c", "import torch", check=False)
        assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
        assert sh(slim_engine, "exec", name, "id", "-u").stdout.strip() == "10001"
        sh(slim_engine, "stop", "--time", "30", name)
        assert json.loads(sh(slim_engine, "inspect", "--format", "{{json .State}}", name).stdout)["ExitCode"] == 0
    finally:
        sh(slim_engine, "rm", "-f", name, check=False)


def test_slim_image_report_is_what_make_image_slim_measured():
    report = json.loads((ROOT / "deploy" / "image" / "report-slim.json").read_text())
    full = json.loads((ROOT / "deploy" / "image" / "report.json").read_text())
    assert report["tag"].endswith("-slim") and 50_000_000 < report["size_bytes"] < full["size_bytes"]
