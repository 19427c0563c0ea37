"""The ``pete-serve`` command line (app/cli.py) and ``make serve``: help and version without starting a
server, options over the environment, a clear exit 2 on a bad checkpoint or setting, a real start on
127.0.0.1 and a clean SIGTERM stop."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest

from app.cli import OPTIONS, apply_options, build_parser
from loadtest.server import free_port
from conftest import nan_checkpoint, wait_ready

ROOT = Path(__file__).resolve().parents[1]
PETE_SERVE = Path(sys.executable).parent / "pete-serve"
CHECKPOINT = ROOT / "model" / "checkpoints" / "default"


def run(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(PETE_SERVE), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=ROOT)


def test_help_and_version_answer_without_starting_a_server():
    r = run("--help", timeout=30)
    assert r.returncode == 0 and "usage: pete-serve" in r.stdout
    for flag in ("--host", "--port", "--workers", "--model", "--version"):
        assert flag in r.stdout
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    r = run("--version", timeout=30)
    assert r.returncode == 0 and r.stdout.strip() == f"pete-serve {version}"


def test_a_bad_checkpoint_path_or_setting_exits_2_with_one_clear_line(tmp_path):
    r = run("--model", str(tmp_path / "nowhere"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == (f"pete-serve: no checkpoint at {tmp_path / 'nowhere'} (missing config.json, "
                                "model.safetensors, tokenizer.json); pass --model DIR or set PETE_MODEL_PATH")
    r = run(env={"PETE_PORT": "99999"})
    assert r.returncode == 2 and r.stderr.startswith("pete-serve: invalid setting: port:")
    r = run("--port", "eighty")
    assert r.returncode == 2 and "invalid int value" in r.stderr


def test_options_become_the_settings_environment_and_absent_ones_leave_it():
    env = {"PETE_PORT": "8100", "PETE_HOST": "0.0.0.0"}
    apply_options(build_parser().parse_args(["--port", "9001", "--model", "/m"]), env)
    assert env == {"PETE_PORT": "9001", "PETE_HOST": "0.0.0.0", "PETE_MODEL_PATH": "/m"}
    assert {var for var, _, _ in OPTIONS.values()} == {"PETE_HOST", "PETE_PORT", "PETE_WORKERS", "PETE_MODEL_PATH"}
    assert isinstance(build_parser().parse_args([]), argparse.Namespace)


@pytest.mark.skipif(not (CHECKPOINT / "model.safetensors").is_file(), reason="no bundled checkpoint")
def test_pete_serve_starts_on_the_given_port_and_stops_cleanly_on_sigterm():
    port = free_port()
    proc = subprocess.Popen([str(PETE_SERVE), "--host", "127.0.0.1", "--port", str(port)], cwd=ROOT,
                            env={**os.environ, "PETE_PORT": "1", "PETE_LOG_LEVEL": "warning"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}", alive=lambda: proc.poll() is None)
        r = httpx.post(f"http://127.0.0.1:{port}/nli", timeout=10,
                       json={"pairs": [{"premise": "A man is sleeping.", "hypothesis": "A man is awake."}]})
        assert r.status_code == 200 and r.json()["results"][0]["label"] == "contradiction"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out


@pytest.mark.parametrize("env, args, host, port", [
    ({}, [], "127.0.0.1", "8000"),
    ({"PETE_HOST": "0.0.0.0", "PETE_PORT": "9123"}, [], "0.0.0.0", "9123"),
    ({"PETE_PORT": "9123"}, ["PORT=9124"], "127.0.0.1", "9124"),
])
def test_make_serve_honours_pete_host_and_port_and_make_variables_win(env, args, host, port):
    drop = ("PETE_HOST", "PETE_PORT", "HOST", "PORT", "MAKEFLAGS", "MAKELEVEL", "MFLAGS")  # also under `make test`
    clean = {k: v for k, v in os.environ.items() if k not in drop}
    r = subprocess.run(["make", "--no-print-directory", "-n", "serve", *args], capture_output=True, text=True,
                       cwd=ROOT, env={**clean, **env}, timeout=60)
    assert r.returncode == 0, r.stderr
    (line,) = [x for x in r.stdout.splitlines() if "bin/pete-serve" in x]
    assert f'--host "{host}"' in line and f'--port "{port}"' in line


def test_a_checkpoint_with_nan_weights_stops_start_up_with_a_clear_message(tmp_path):
    from loadtest.fixtures import random_checkpoint

    nan_checkpoint(random_checkpoint(tmp_path / "tiny"), tmp_path / "nan")
    r = run("--model", str(tmp_path / "nan"), "--port", str(free_port()), env={"PETE_TORCH_THREADS": "1"}, timeout=120)
    assert r.returncode != 0
    assert "checkpoint's weights are corrupt (non-finite)" in r.stdout + r.stderr


ARENA_PROBE = """
import ctypes, sys, tempfile, threading
from app.cli import limit_malloc_arenas
env = {} if sys.argv[1] == "default" else {"MALLOC_ARENA_MAX": sys.argv[1]}
applied = limit_malloc_arenas(env)
barrier = threading.Barrier(4)
def work():  # four threads allocating from glibc's heap (50 kB: below the mmap threshold) at once
    barrier.wait()
    keep = [bytearray(50_000) for _ in range(50)]
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
libc = ctypes.CDLL("libc.so.6")
libc.fopen.restype = ctypes.c_void_p
with tempfile.NamedTemporaryFile("r") as f:
    fp = ctypes.c_void_p(libc.fopen(f.name.encode(), b"w"))
    libc.malloc_info(0, fp)
    libc.fclose(fp)
    print(applied, env.get("MALLOC_ARENA_MAX"), f.read().count("<heap nr="))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_malloc_arenas_are_capped_at_one_unless_the_operator_set_the_variable():
    def probe(arg: str) -> list[str]:
        return subprocess.run([sys.executable, "-c", ARENA_PROBE, arg], capture_output=True, text=True,
                              check=True, cwd=ROOT, timeout=60).stdout.split()

    assert probe("default") == ["1", "1", "1"]  # the variable set for the workers, one heap in this process
    applied, value, heaps = probe("0")  # 0: glibc's own default (8 per core), left alone
    assert (applied, value) == ("None", "0") and int(heaps) > 1
    assert probe("3")[:2] == ["3", "3"]
