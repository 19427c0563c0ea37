"""/docs (Swagger UI) and /redoc (ReDoc) render offline: the live service serves their assets itself
(fastapi-offline), and a real headless browser (Debian's chromium), with every host but 127.0.0.1
unresolvable, renders the operations. The rendered DOM is checked, not the HTML source (which names
no operation). docs/swagger-ui.png was taken with the same command (``chromium_args`` +
``--window-size=1280,1500 --screenshot=docs/swagger-ui.png``)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import httpx
import pytest

REQUIRE_TOOLS = os.environ.get("PETE_REQUIRE_DEPLOY_TOOLS") == "1"
OPERATIONS = ("/similarity", "/nli", "/v1/embeddings", "/embeddings", "/healthz", "/readyz", "/info", "/metrics")


@pytest.fixture(scope="module")
def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if REQUIRE_TOOLS:
            pytest.fail("chromium not found (Debian package chromium; `make test` installs it as root)")
        pytest.skip("chromium not found: install Debian's `chromium` package (make test does when run as root "
                    "with apt-get)")
    return exe


def chromium_args(exe: str, url: str, *extra: str) -> list[str]:
    """Headless chromium with no network but 127.0.0.1 (any CDN request fails), JS given 15 s of
    virtual time to render."""
    return [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1", "--virtual-time-budget=15000",
            *extra, url]


def rendered_dom(exe: str, url: str) -> str:
    r = subprocess.run(chromium_args(exe, url, "--dump-dom"), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_swagger_ui_renders_every_operation_offline(bundled_server, chromium, tmp_path):
    source = httpx.get(f"{bundled_server}/docs", timeout=10).text
    assert "cdn" not in source.lower() and "/similarity" not in source  # the page itself names no operation
    dom = rendered_dom(chromium, f"{bundled_server}/docs")
    paths = set(re.findall(r'class="opblock-summary-path" data-path="([^"]+)"', dom))
    assert paths == set(OPERATIONS), paths
    assert "Cosine similarity of text pairs" in dom
    shot = tmp_path / "docs.png"
    r = subprocess.run(chromium_args(chromium, f"{bundled_server}/docs", "--window-size=1280,900",
                                     f"--screenshot={shot}"), capture_output=True, timeout=120)
    assert r.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_redoc_renders_offline(bundled_server, chromium):
    source = httpx.get(f"{bundled_server}/redoc", timeout=10).text
    assert "cdn" not in source.lower() and "fonts.googleapis" not in source
    dom = rendered_dom(chromium, f"{bundled_server}/redoc")
    for summary in ("Cosine similarity of text pairs", "Entailment / neutral / contradiction",
                    "Sentence vectors (OpenAI-compatible)"):
        assert summary in dom, summary
