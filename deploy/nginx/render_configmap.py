"""Write deploy/k8s/proxy-config.yaml: the Kubernetes ConfigMap holding deploy/nginx/nginx.conf, the
config of the pod's ``proxy`` sidecar (deploy/k8s/deployment.yaml). nginx.conf is the one source;
run this after editing it (tests/test_deploy_k8s.py fails while the two differ).

    python deploy/nginx/render_configmap.py           # rewrite the ConfigMap
    python deploy/nginx/render_configmap.py --check   # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONF = HERE / "nginx.conf"
CONFIGMAP = HERE.parent / "k8s" / "proxy-config.yaml"
NAME = "pete-serve-proxy"  # the name deployment.yaml mounts


def render(conf_text: str) -> str:
    """The ConfigMap manifest (YAML text) with ``conf_text`` as its ``nginx.conf`` key, verbatim.

    Raises:
        ValueError: a line of ``conf_text`` ends in whitespace or a tab is in it (a YAML literal
            block would not keep it verbatim).
    """
    lines = conf_text.rstrip("\n").split("\n")
    for n, line in enumerate(lines, 1):
        if line != line.rstrip() or "\t" in line:
            raise ValueError(f"nginx.conf line {n}: trailing whitespace or a tab")
    body = "\n".join(f"    {line}" if line else "" for line in lines)
    return (f"# Generated from deploy/nginx/nginx.conf by deploy/nginx/render_configmap.py; edit that file.\n"
            f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {NAME}\n  labels:\n"
            f"    app.kubernetes.io/name: pete-serve\n    app.kubernetes.io/component: proxy\n"
            f"data:\n  nginx.conf: |\n{body}\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only check that the ConfigMap is up to date")
    args = ap.parse_args(argv)
    text = render(CONF.read_text())
    if args.check:
        current = CONFIGMAP.read_text() if CONFIGMAP.exists() else ""
        if current != text:
            print(f"{CONFIGMAP} is out of date: python {Path(__file__).relative_to(HERE.parents[1])}", file=sys.stderr)
            return 1
        return 0
    CONFIGMAP.write_text(text)
    print(f"-> {CONFIGMAP}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
