"""Integration: the real service (uvicorn subprocess, tiny checkpoint built here) scraped by a real
Prometheus server with the project's alert rules loaded, everything on 127.0.0.1.

Checks that the metrics the deploy files rely on (dashboard, alerts) are what the service exports,
that Prometheus scrapes them, and that the recording rules evaluate on real series. Every wait is
bounded; both processes are always stopped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
REQUIRE_TOOLS = os.environ.get("PETE_REQUIRE_DEPLOY_TOOLS") == "1"
HOST = "127.0.0.1"
STARTUP_TIMEOUT_S = 90.0   # torch import + model load on a busy 2-core machine
SCRAPE_TIMEOUT_S = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    assert url.startswith(f"http://{HOST}:"), url  # loopback only
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError):  # not listening (yet), reset, timed out
        return 0, b""


def _post(url: str, body: dict, timeout: float = 30.0) -> tuple[int, dict]:
    assert url.startswith(f"http://{HOST}:"), url
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else "(no log)"


def _wait_until(predicate, timeout: float, what: str, procs: dict[str, tuple[subprocess.Popen, Path]],
                interval: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        for name, (proc, log) in procs.items():
            if proc.poll() is not None:
                pytest.fail(f"{name} exited with {proc.returncode} while waiting for {what}:\n{_tail(log)}")
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    logs = "\n".join(f"--- {n} log:\n{_tail(log)}" for n, (_, log) in procs.items())
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{logs}")


def _metric_names(expr: str) -> set[str]:
    """Metric-like identifiers of a PromQL expression (same rule as test_deploy_monitoring)."""
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r'"[^"]*"', "", expr)
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr))
    skip = {"sum", "by", "rate", "histogram_quantile", "max", "min", "avg", "without", "le", "on",
            "ignoring", "bool", "and", "or", "unless", "count", "increase", "irate"}
    return {w for w in words if w not in skip and not w.startswith("$") and not re.fullmatch(r"e\d*", w)}


def _exported_series(exposition: str) -> set[str]:
    """Series names a /metrics exposition can carry, from its # TYPE lines."""
    names = set()
    suffixes = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count", ""),
                "counter": ("_total", "_created"), "gauge": ("",), "untyped": ("",), "info": ("_info",)}
    for m in re.finditer(r"^# TYPE (\S+) (\S+)$", exposition, re.M):
        name, kind = m.groups()
        names |= {name + s for s in suffixes.get(kind, ("",))}
        if kind == "counter" and name.endswith("_total"):
            names.add(name)
    return names


@pytest.fixture(scope="module")
def prometheus_bin() -> str:
    exe = shutil.which("prometheus")
    if exe is None:
        if REQUIRE_TOOLS:
            pytest.fail("prometheus not found (Debian package prometheus; `make test` installs it as root)")
        pytest.skip("prometheus server binary not found: install Debian's `prometheus` package "
                    "(make test does when run as root with apt-get)")
    return exe


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    if not (ROOT / "app" / "main.py").exists():
        pytest.skip("app/main.py not written yet")
    from model.encoder import EncoderConfig, SentenceEncoder
    from model.tokenizer import tokenizer_from_vocab

    d = tmp_path_factory.mktemp("tiny-ckpt")
    tok = tokenizer_from_vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "man", "dog"])
    SentenceEncoder(EncoderConfig(vocab_size=8, dim=32, n_layers=1, n_heads=2, ffn_dim=64,
                                  embedding_options={"mlp_hidden": 32}), tok).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def stack(prometheus_bin, tiny_checkpoint, tmp_path_factory):
    """uvicorn (the app factory) + Prometheus scraping it every second; yields their URLs."""
    work = tmp_path_factory.mktemp("stack")
    app_port, prom_port = _free_port(), _free_port()
    while prom_port == app_port:
        prom_port = _free_port()
    app_url, prom_url = f"http://{HOST}:{app_port}", f"http://{HOST}:{prom_port}"

    env = {k: v for k, v in os.environ.items() if not k.startswith("PETE_")}
    env.update(PETE_MODEL_PATH=str(tiny_checkpoint), PETE_TORCH_THREADS="1", PETE_MAX_WAIT_MS="2",
               PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    app_log = work / "uvicorn.log"
    prom_log = work / "prometheus.log"

    # Same scrape job name as deploy/prometheus/prometheus.yml, our alert rules, fast intervals.
    shutil.copy(DEPLOY / "prometheus" / "alerts.yml", work / "alerts.yml")
    (work / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": ["alerts.yml"],
        "scrape_configs": [{"job_name": "pete-serve", "metrics_path": "/metrics",
                            "static_configs": [{"targets": [f"{HOST}:{app_port}"]}]}],
    }))

    app_proc = prom_proc = None
    try:
        with open(app_log, "wb") as out:
            app_proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app",
                 "--host", HOST, "--port", str(app_port), "--workers", "1", "--log-level", "warning"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        procs = {"uvicorn": (app_proc, app_log)}
        _wait_until(lambda: _get(f"{app_url}/readyz", timeout=2)[0] == 200 if _port_open(app_port) else False,
                    STARTUP_TIMEOUT_S, "the service's /readyz", procs)

        with open(prom_log, "wb") as out:
            prom_proc = subprocess.Popen(
                [prometheus_bin, f"--config.file={work / 'prometheus.yml'}",
                 f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address={HOST}:{prom_port}",
                 "--log.level=warn"],
                cwd=work, stdout=out, stderr=subprocess.STDOUT)
        procs["prometheus"] = (prom_proc, prom_log)
        _wait_until(lambda: _port_open(prom_port) and _get(f"{prom_url}/-/ready", timeout=2)[0] == 200,
                    STARTUP_TIMEOUT_S, "Prometheus /-/ready", procs)
        yield {"app": app_url, "prom": prom_url, "procs": procs}
    finally:
        _stop(prom_proc)
        _stop(app_proc)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


def _query(prom_url: str, q: str) -> list[dict]:
    status, body = _get(f"{prom_url}/api/v1/query?" + urllib.parse.urlencode({"query": q}))
    assert status == 200, body[:500]
    data = json.loads(body)
    assert data["status"] == "success", data
    return data["data"]["result"]


def test_prometheus_scrapes_request_metrics(stack):
    app, prom = stack["app"], stack["prom"]
    sent = {"/similarity": 0, "/nli": 0, "/embeddings": 0}
    for _ in range(3):
        code, body = _post(f"{app}/similarity", {"pairs": [{"text_a": "a man", "text_b": "a dog"}]})
        assert code == 200, body
        assert len(body["scores"]) == 1
        sent["/similarity"] += 1
        code, body = _post(f"{app}/nli", {"pairs": [{"premise": "a man", "hypothesis": "a dog"}]})
        assert code == 200, body
        sent["/nli"] += 1
        code, body = _post(f"{app}/embeddings", {"input": ["a man", "a dog"]})
        assert code == 200, body
        assert body["dimensions"] == 32
        sent["/embeddings"] += 1
    code, body = _post(f"{app}/similarity", {"pairs": []})
    assert 400 <= code < 500  # a client error is also counted, with its status

    def scraped():
        result = _query(prom, "pete_request_duration_seconds_count")
        got = {}
        for r in result:
            if r["metric"].get("status") == "200" and r["metric"].get("endpoint") in sent:
                got[r["metric"]["endpoint"]] = float(r["value"][1])
        return result if all(got.get(e, 0) >= n for e, n in sent.items()) else None

    result = _wait_until(scraped, SCRAPE_TIMEOUT_S, "pete_request_duration_seconds_count in Prometheus",
                         stack["procs"])
    for r in result:
        m = r["metric"]
        assert m["__name__"] == "pete_request_duration_seconds_count"
        assert m["job"] == "pete-serve"
        assert m["instance"] == app.removeprefix("http://")
        assert {"endpoint", "status"} <= set(m)
        assert re.fullmatch(r"[1-5]\d\d", m["status"])
    assert any(r["metric"]["status"].startswith("4") for r in result), "the 4xx request is missing"

    targets = json.loads(_get(f"{prom}/api/v1/targets")[1])["data"]["activeTargets"]
    assert [t["health"] for t in targets if t["labels"]["job"] == "pete-serve"] == ["up"]


def test_recording_rules_evaluate_on_real_series(stack):
    """alerts.yml loaded by the real server: the rules are healthy and the request-rate and p99
    recording rules produce series from the service's own metrics."""
    prom = stack["prom"]
    for _ in range(2):
        assert _post(f"{stack['app']}/embeddings", {"input": ["a man"]})[0] == 200

    def recorded():
        rate = _query(prom, "job:pete_requests:rate5m")
        p99 = _query(prom, "job:pete_request_duration_seconds:p99_5m")
        ok = rate and float(rate[0]["value"][1]) > 0 and p99 and p99[0]["value"][1] not in ("NaN",)
        return (rate, p99) if ok else None

    rate, p99 = _wait_until(recorded, SCRAPE_TIMEOUT_S, "recording rules to produce series", stack["procs"])
    assert rate[0]["metric"]["job"] == "pete-serve"
    assert 0 < float(p99[0]["value"][1]) < 30  # seconds, within the histogram's buckets
    groups = json.loads(_get(f"{prom}/api/v1/rules")[1])["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == sum(len(g["rules"]) for g in
                             yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"])
    bad = [(r["name"], r.get("lastError")) for r in rules if r.get("health") == "err"]
    assert not bad, bad


def test_deploy_files_only_use_exported_metrics(stack):
    """Every metric the Grafana dashboard and the alert rules query is one the service exports."""
    status, body = _get(f"{stack['app']}/metrics")
    assert status == 200
    exported = _exported_series(body.decode()) | {"up"}
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "pete-serve.json").read_text())
    rules = [r for g in yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
             for r in g["rules"]]
    records = {r["record"] for r in rules if "record" in r}
    used: dict[str, str] = {}
    for p in dash["panels"]:
        for t in p["targets"]:
            for n in _metric_names(t["expr"]):
                used[n] = f"dashboard panel {p['title']!r}"
    for r in rules:
        for n in _metric_names(r["expr"]) - records:
            used[n] = f"rule {r.get('alert') or r.get('record')}"
    missing = {n: where for n, where in used.items() if n not in exported}
    assert not missing, f"queried but not exported by the service: {missing}"
