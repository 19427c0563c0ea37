"""deploy/: docker-compose, Prometheus scrape config and alert rules (checked and unit-tested with
the real promtool), Grafana provisioning and dashboard."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PROM = DEPLOY / "prometheus"
REQUIRE_TOOLS = os.environ.get("PETE_REQUIRE_DEPLOY_TOOLS") == "1"

# Metric families the service exports (app/metrics.py) plus prometheus_client's process collector
# and Prometheus' own `up`. Histograms expose _bucket/_sum/_count, counters _total.
HISTOGRAMS = {"pete_request_duration_seconds", "pete_queue_wait_seconds",
              "pete_inference_duration_seconds", "pete_batch_size", "pete_batch_tokens"}
COUNTERS = {"pete_rejected_requests", "pete_dropped_items", "pete_batch_failures"}
GAUGES = {"pete_queue_depth", "pete_model_parameters", "pete_model_bytes",
          "pete_process_peak_rss_bytes", "process_resident_memory_bytes"}
KNOWN_SERIES = (
    {f"{h}{s}" for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}
    | {f"{c}_total" for c in COUNTERS} | GAUGES | {"up"}
)
PROMQL_WORDS = {"sum", "by", "rate", "histogram_quantile", "max", "min", "avg", "without", "le",
                "increase", "irate", "on", "ignoring", "bool", "and", "or", "unless", "count",
                "group_left", "group_right", "offset", "topk", "bottomk", "clamp_min", "clamp_max"}


def metric_names(expr: str) -> set[str]:
    """Metric-like identifiers in a PromQL expression (labels, functions, keywords removed)."""
    expr = re.sub(r"\{[^}]*\}", "", expr)                 # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping label lists
    expr = re.sub(r"\[[^\]]*\]", "", expr)                # range selectors
    expr = re.sub(r'"[^"]*"', "", expr)
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr))
    return {w for w in words if w not in PROMQL_WORDS and not w.startswith("$")
            and not re.fullmatch(r"e\d*", w)}


def _promtool() -> str:
    exe = shutil.which("promtool")
    if exe is None:
        if REQUIRE_TOOLS:
            pytest.fail("promtool not found (Debian package prometheus; `make test` installs it as root)")
        pytest.skip("promtool not found: install Debian's `prometheus` package (make test does, as root)")
    return exe


def _run(*argv: str, cwd: Path = PROM) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=cwd)


# ---------------------------------------------------------------- docker-compose

def test_compose_parses_and_references_existing_files():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"pete-serve", "prometheus", "grafana"} <= set(services)
    build = services["pete-serve"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == ROOT / "Dockerfile"
    # clients reach the service through the proxy, which shares its network namespace and
    # forwards to 127.0.0.1:8000 with deploy/nginx/nginx.conf
    assert services["pete-serve"]["ports"] == ["127.0.0.1:8080:8080"]
    proxy = services["proxy"]
    assert proxy["network_mode"] == "service:pete-serve"
    assert "./nginx/nginx.conf:/etc/nginx/pete/nginx.conf:ro" in proxy["volumes"]
    assert proxy["entrypoint"][-1] == "/etc/nginx/pete/nginx.conf"
    conf = (DEPLOY / "nginx" / "nginx.conf").read_text()
    assert "listen 8080;" in conf and "server 127.0.0.1:8000;" in conf
    assert services["prometheus"]["depends_on"]["pete-serve"]["condition"] == "service_healthy"
    named_volumes = set(compose.get("volumes") or {})
    mounted = []
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            src, dst = vol.split(":")[:2]
            if src.startswith((".", "/")):
                path = (DEPLOY / src).resolve()
                assert path.exists(), f"{name}: {src} does not exist"
                assert DEPLOY in path.parents, f"{name}: {src} mounts something outside deploy/"
                mounted.append((path, dst))
            else:
                assert src in named_volumes, f"{name}: undeclared named volume {src}"
    sources = {p for p, _ in mounted}
    assert PROM / "prometheus.yml" in sources and PROM / "alerts.yml" in sources
    assert DEPLOY / "grafana" / "dashboards" in sources
    # prometheus.yml names alerts.yml relative to itself: it must land beside it in the container
    dst = dict(mounted)
    assert Path(dst[PROM / "alerts.yml"]).parent == Path(dst[PROM / "prometheus.yml"]).parent
    # the compose prometheus config scrapes the compose service name on the container port
    prom = yaml.safe_load((PROM / "prometheus.yml").read_text())
    targets = [t for sc in prom["scrape_configs"] if sc["job_name"] == "pete-serve"
               for s in sc["static_configs"] for t in s["targets"]]
    assert targets == ["pete-serve:8000"]
    # grafana provisioning points at the mounted dashboard dir and the compose prometheus
    prov = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/pete-serve.yml").read_text())
    assert prov["providers"][0]["options"]["path"] == dst[DEPLOY / "grafana" / "dashboards"]
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"


# ---------------------------------------------------------------- prometheus

def test_promtool_check_config():
    exe = _promtool()
    proc = _run(exe, "check", "config", "prometheus.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_promtool_check_k8s_config(tmp_path):
    """prometheus-k8s.yml uses kubernetes_sd_configs; Debian's promtool is built without
    Kubernetes discovery, so where it is, check everything else with a static target instead."""
    exe = _promtool()
    proc = _run(exe, "check", "config", "prometheus-k8s.yml")
    if proc.returncode == 0:
        return
    out = proc.stdout + proc.stderr
    assert "kubernetes_sd_configs not found" in out, out
    cfg = yaml.safe_load((PROM / "prometheus-k8s.yml").read_text())
    (job,) = cfg["scrape_configs"]
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    job["static_configs"] = [{"targets": ["127.0.0.1:8000"]}]
    del job["kubernetes_sd_configs"]
    cfg["rule_files"] = [str(PROM / "alerts.yml")]
    (tmp_path / "p.yml").write_text(yaml.safe_dump(cfg))
    proc = _run(exe, "check", "config", str(tmp_path / "p.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_k8s_scrape_config_matches_pod_annotations():
    cfg = yaml.safe_load((PROM / "prometheus-k8s.yml").read_text())
    relabel = cfg["scrape_configs"][0]["relabel_configs"]
    used = {lbl for r in relabel for lbl in r.get("source_labels", [])}
    dep = yaml.safe_load((DEPLOY / "k8s" / "deployment.yaml").read_text())
    ann = dep["spec"]["template"]["metadata"]["annotations"]
    for key in ("prometheus.io/scrape", "prometheus.io/port", "prometheus.io/path"):
        sd_label = "__meta_kubernetes_pod_annotation_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)
        assert sd_label in used, f"scrape config ignores the {key} annotation"
        assert key in ann
    assert cfg["scrape_configs"][0]["job_name"] == "pete-serve"  # alerts select job="pete-serve"


def test_promtool_check_rules():
    exe = _promtool()
    proc = _run(exe, "check", "rules", "alerts.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_alert_unit_tests():
    """alerts_test.yml feeds synthetic series and expects each alert to fire (or not)."""
    exe = _promtool()
    proc = _run(exe, "test", "rules", "alerts_test.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tested = {t["alertname"] for case in yaml.safe_load((PROM / "alerts_test.yml").read_text())["tests"]
              for t in case["alert_rule_test"]}
    assert tested == set(_alert_names())


def _rules() -> list[dict]:
    return [r for g in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"] for r in g["rules"]]


def _alert_names() -> list[str]:
    return [r["alert"] for r in _rules() if "alert" in r]


def test_alert_rules_cover_latency_errors_memory():
    rules = _rules()
    names = set(_alert_names())
    assert {"PeteServeHighP99Latency", "PeteServeHigh5xxRate", "PeteServeHighMemory"} <= names
    records = {r["record"] for r in rules if "record" in r}
    for r in rules:
        for name in metric_names(r["expr"]) - records:
            assert name in KNOWN_SERIES, f"rule {r.get('alert') or r.get('record')}: unknown metric {name}"
        if "alert" in r:
            assert r["labels"]["severity"] in {"warning", "critical"}
            assert r["annotations"]["summary"]
    exprs = {r.get("record") or r["alert"]: r["expr"] for r in rules}
    assert "histogram_quantile(0.99" in exprs["job:pete_request_duration_seconds:p99_5m"]
    assert 'status=~"5.."' in exprs["job:pete_requests_5xx:rate5m"]


# ---------------------------------------------------------------- grafana

def _dashboard() -> dict:
    return json.loads((DEPLOY / "grafana" / "dashboards" / "pete-serve.json").read_text())


def test_grafana_dashboard_queries_reference_service_metrics():
    dash = _dashboard()
    ds_uid = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"][0]["uid"]
    exprs = []
    ids = set()
    for panel in dash["panels"]:
        assert panel["id"] not in ids
        ids.add(panel["id"])
        assert panel["datasource"]["uid"] == ds_uid
        assert panel["targets"], panel["title"]
        for t in panel["targets"]:
            assert t["datasource"]["uid"] == ds_uid
            names = metric_names(t["expr"])
            assert names, t["expr"]
            assert names <= KNOWN_SERIES, f"{panel['title']}: unknown metrics {names - KNOWN_SERIES}"
            exprs.append(t["expr"])
    joined = "\n".join(exprs)
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le) (rate(pete_request_duration_seconds_bucket" in joined
    for needed in ("rate(pete_request_duration_seconds_count", "pete_batch_size", "pete_queue_depth",
                   "process_resident_memory_bytes", "pete_process_peak_rss_bytes",
                   "pete_rejected_requests_total"):
        assert needed in joined, f"dashboard lacks a panel on {needed}"


def test_metric_name_extraction():
    assert metric_names('histogram_quantile(0.99, sum by (le, endpoint) '
                        '(rate(pete_request_duration_seconds_bucket{endpoint!~"/h.*"}[$__rate_interval])))') \
        == {"pete_request_duration_seconds_bucket"}
    assert metric_names("max by (job) (process_resident_memory_bytes) > 1.6e9") == {"process_resident_memory_bytes"}
