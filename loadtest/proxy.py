"""The deploy's reverse proxy (``deploy/nginx/nginx.conf``) run here with Debian's nginx, in front of
a service on 127.0.0.1, for the tests and attack runs that check what it bounds."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from loadtest.http import HOST
from loadtest.server import REPO_ROOT, free_port

NGINX_CONF = REPO_ROOT / "deploy" / "nginx" / "nginx.conf"
LISTEN = "listen 8080;"
UPSTREAM = "server 127.0.0.1:8000;"


def nginx_binary() -> str | None:
    """The nginx executable on PATH or in /usr/sbin (Debian's package), None without one."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def render_conf(upstream_port: int, listen_port: int, workdir: Path, conf: Path = NGINX_CONF) -> str:
    """The shipped config with only its listen port, upstream port and /tmp paths changed.

    Raises:
        ValueError: the config no longer has the lines this function replaces.
    """
    text = conf.read_text()
    for needle in (LISTEN, UPSTREAM, "/tmp/"):
        if needle not in text:
            raise ValueError(f"{conf} has no {needle!r}")
    return (text.replace(LISTEN, f"listen {HOST}:{listen_port};")
                .replace(UPSTREAM, f"server {HOST}:{upstream_port};")
                .replace("/tmp/", f"{workdir}/"))


class NginxProcess:
    """nginx with ``deploy/nginx/nginx.conf`` on a free port, proxying to ``upstream_port``; a
    context manager that always ends it.

    Raises (``start``):
        FileNotFoundError: no nginx installed.
        RuntimeError: nginx exited or did not listen within 10 s (the message holds its stderr).
    """

    def __init__(self, upstream_port: int, workdir: str | Path) -> None:
        self.upstream_port, self.workdir = upstream_port, Path(workdir)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> "NginxProcess":
        binary = nginx_binary()
        if binary is None:
            raise FileNotFoundError("nginx not installed (Debian package nginx; make deploy-tools)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "nginx.conf"
        conf.write_text(render_conf(self.upstream_port, self.port, self.workdir))
        self.log = open(self.workdir / "nginx.log", "wb")
        self.proc = subprocess.Popen([binary, "-p", str(self.workdir), "-c", str(conf)], stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                socket.create_connection((HOST, self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not start: {(self.workdir / 'nginx.log').read_text()[-2000:]}")

    def stop(self) -> None:
        """Quit gracefully (SIGQUIT: finish in-flight requests), kill after 10 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(3)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()

    def __enter__(self) -> "NginxProcess":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
