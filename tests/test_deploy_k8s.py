"""deploy/k8s/: validated against the Kubernetes OpenAPI schemas bundled in kubernetes-validate
(offline, strict: unknown fields are errors), then checked for the things that make the
Deployment, Service, HPA and PDB work together."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate not installed (dev extra)")

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.30.0"  # oldest version we claim to support; validated against the newest too


def _docs() -> list[tuple[Path, dict]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path, doc))
    return out


def _by_kind() -> dict[str, dict]:
    kinds: dict[str, dict] = {}
    for _, doc in _docs():
        assert doc["kind"] not in kinds, f"two {doc['kind']} manifests"
        kinds[doc["kind"]] = doc
    return kinds


@pytest.mark.parametrize("version", [K8S_VERSION, None])
def test_manifests_validate_against_kubernetes_schema(version):
    version = version or kubernetes_validate.utils.latest_version()
    docs = _docs()
    assert {d["kind"] for _, d in docs} == {"Deployment", "Service", "HorizontalPodAutoscaler",
                                            "PodDisruptionBudget", "ConfigMap"}
    for path, doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{path.name}: {doc['kind']} invalid for Kubernetes {version}: {e.message} "
                        f"at {'.'.join(map(str, e.path))}")


def test_validator_rejects_a_broken_manifest():
    """Guard against a validator that accepts anything (e.g. schemas missing offline)."""
    dep = _by_kind()["Deployment"]
    bad = yaml.safe_load(yaml.safe_dump(dep))
    bad["spec"]["replicas"] = "two"
    bad["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["bogus"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_api_versions():
    kinds = _by_kind()
    assert kinds["Deployment"]["apiVersion"] == "apps/v1"
    assert kinds["Service"]["apiVersion"] == "v1"
    assert kinds["HorizontalPodAutoscaler"]["apiVersion"] == "autoscaling/v2"
    assert kinds["PodDisruptionBudget"]["apiVersion"] == "policy/v1"


def _container(dep: dict, name: str = "pete-serve") -> dict:
    (c,) = [c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return c


def test_deployment_probes_resources_security():
    dep = _by_kind()["Deployment"]
    pod = dep["spec"]["template"]
    c = _container(dep)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == 8000
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] in ("http", 8000)
    res = c["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(res[kind])
    env = {e["name"]: e for e in c["env"]}
    # one worker per core of the CPU limit, one torch thread each (bench/results/workers: the best
    # measured split of 2 cores)
    assert env["PETE_TORCH_THREADS"]["value"] == "1"
    assert env["PETE_WORKERS"]["value"] == str(res["limits"]["cpu"])
    assert env["PETE_PORT"]["value"] == str(ports["http"])
    # the drain fits the grace period: preStop sleep + pete-serve's shutdown bound + 5 s margin
    pre_stop = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    drain = float(env["PETE_SHUTDOWN_TIMEOUT_S"]["value"])
    assert pre_stop + drain + 5 <= pod["spec"]["terminationGracePeriodSeconds"], (pre_stop, drain)
    from app.settings import Settings
    assert drain == Settings.model_fields["shutdown_timeout_s"].default  # the same bound as the service default
    assert env["PETE_API_KEY"]["valueFrom"]["secretKeyRef"]["optional"] is True
    ann = pod["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert ann["prometheus.io/port"] == str(ports["http"])
    assert ann["prometheus.io/path"] == "/metrics"
    psc = pod["spec"]["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
    csc = c["securityContext"]
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"]["drop"] == ["ALL"]
    if csc.get("readOnlyRootFilesystem"):
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        assert "/tmp" in mounts, "a read-only root filesystem needs a writable /tmp"


def test_uid_and_port_match_the_dockerfile():
    docker = (ROOT / "Dockerfile").read_text()
    uid = re.search(r"^USER (\d+)", docker, re.M).group(1)
    dep = _by_kind()["Deployment"]
    assert dep["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(uid)
    assert re.search(r"^EXPOSE 8000$", docker, re.M)


def test_service_hpa_pdb_select_the_deployment():
    kinds = _by_kind()
    dep = kinds["Deployment"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    sel = dep["spec"]["selector"]["matchLabels"]
    assert sel.items() <= pod_labels.items()
    svc = kinds["Service"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    (port,) = svc["spec"]["ports"]
    # clients go through the proxy sidecar, never straight to the service
    proxy_ports = {p["name"]: p["containerPort"] for p in _container(dep, "proxy")["ports"]}
    assert port["targetPort"] in proxy_ports or port["targetPort"] in proxy_ports.values()
    pdb = kinds["PodDisruptionBudget"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    hpa = kinds["HorizontalPodAutoscaler"]
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == ("apps/v1", "Deployment", dep["metadata"]["name"])
    assert 1 <= pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert hpa["spec"]["minReplicas"] <= dep["spec"]["replicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    # utilization targets need CPU requests on the container
    assert "cpu" in _container(dep)["resources"]["requests"]


def test_proxy_sidecar_runs_the_shipped_nginx_conf():
    """The pod's ``proxy`` container runs deploy/nginx/nginx.conf (from the generated ConfigMap,
    in sync with the file), listens where the Service points, forwards to the service's port, and
    drains within the same bound as the service."""
    import subprocess
    import sys
    kinds = _by_kind()
    dep, cm = kinds["Deployment"], kinds["ConfigMap"]
    pod = dep["spec"]["template"]["spec"]
    proxy, app = _container(dep, "proxy"), _container(dep)
    conf_path = ROOT / "deploy" / "nginx" / "nginx.conf"
    conf = conf_path.read_text()
    # the ConfigMap holds the file verbatim, and the generator agrees
    assert cm["data"]["nginx.conf"] == conf
    r = subprocess.run([sys.executable, str(ROOT / "deploy" / "nginx" / "render_configmap.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # mounted where the command reads it
    (vol,) = [v for v in pod["volumes"] if v.get("configMap", {}).get("name") == cm["metadata"]["name"]]
    (mount,) = [m for m in proxy["volumeMounts"] if m["name"] == vol["name"]]
    assert proxy["command"][-1] == mount["mountPath"] + "/nginx.conf"
    # ports: the proxy listens on its containerPort and forwards to the service's
    listen = int(re.search(r"^\s*listen (\d+);", conf, re.M).group(1))
    upstream = int(re.search(r"^\s*server 127\.0\.0\.1:(\d+);", conf, re.M).group(1))
    assert {p["name"]: p["containerPort"] for p in proxy["ports"]} == {"proxy": listen}
    assert upstream == {p["name"]: p["containerPort"] for p in app["ports"]}["http"]
    # nginx writes only its pid and temp files, all under /tmp: a writable emptyDir there
    assert {m["mountPath"] for m in proxy["volumeMounts"]} >= {"/tmp"}
    assert proxy["securityContext"]["readOnlyRootFilesystem"] is True
    written = re.findall(r"^\s*(?:pid|\w+_temp_path) (\S+);", conf, re.M)
    assert len(written) == 6 and all(p.startswith("/tmp/") for p in written), written
    # drains like the service: preStop waits as long, then quits gracefully; nginx's own
    # worker_shutdown_timeout equals the service's shutdown bound, all within the grace period
    assert proxy["lifecycle"]["preStop"]["exec"]["command"][-1].startswith(
        f"sleep {app['lifecycle']['preStop']['exec']['command'][-1]};")
    assert "-s quit" in proxy["lifecycle"]["preStop"]["exec"]["command"][-1]
    env = {e["name"]: e for e in app["env"]}
    nginx_drain = int(re.search(r"^worker_shutdown_timeout (\d+)s;", conf, re.M).group(1))
    assert nginx_drain == float(env["PETE_SHUTDOWN_TIMEOUT_S"]["value"])
    assert {"requests", "limits"} <= set(proxy["resources"])
