"""deploy/nginx/nginx.conf run for real (Debian's nginx, ``loadtest.proxy``) in front of the live
service: what it forwards, what it refuses itself and how (the service's JSON error shape), and a
short version of ``python -m reliability.attacks``: one client attacking while another measures.

Skipped, with the reason, where nginx is not installed (``make deploy-tools`` installs it)."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from loadtest.fixtures import similarity_bodies
from loadtest.http import HOST, Conn, build_request, request
from loadtest.proxy import NginxProcess, nginx_binary
from loadtest.server import ServerProcess, free_port
from reliability.attacks import SHORT_DURATION_S, SHORT_OPTIONS, SHORT_QUIET_S, run_all
from reliability.common import resolve_model

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(nginx_binary() is None, reason="nginx not installed (make deploy-tools)")]

LIMIT_CONN = 64  # limit_conn per_client in nginx.conf
# The attacks' p50 bound here; the script's (python -m reliability.attacks) is 2x. Since the lean
# request path the quiet p50 is ~4 ms, one forward pass of a worst-case batch the normal request
# waits behind; the worst-case-text attack sat at 1.6-1.9x in 6-s samples (1.24x direct in the
# 15-s run), so 2x failed 2 runs in 8 here.
SUITE_MAX_RATIO = 2.5


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """(service, proxy) on free ports: the bundled checkpoint when present, as shipped."""
    work = tmp_path_factory.mktemp("nginx")
    model, _ = resolve_model("auto", work)
    with ServerProcess(model, log_path=work / "server.log") as srv, NginxProcess(srv.port, work / "nginx") as proxy:
        yield srv, proxy


def _error(resp) -> dict:
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    body = json.loads(resp.body)
    assert set(body) == {"error", "message", "detail"}, body
    return body


def test_proxy_forwards_the_same_answers(stack):
    srv, proxy = stack
    body = similarity_bodies(1, 3, seed=2)[0]

    async def both():
        return (await request(srv.port, "POST", "/similarity", body),
                await request(proxy.port, "POST", "/similarity", body))
    direct, proxied = asyncio.run(both())
    assert direct.status == proxied.status == 200
    assert json.loads(direct.body) == json.loads(proxied.body)


def test_proxy_refuses_large_bodies_and_headers_itself(stack):
    srv, proxy = stack

    async def go():
        big = await request(proxy.port, "POST", "/similarity", b"{" + b" " * (1 << 20) + b"}")
        long_header = await request(proxy.port, "GET", "/healthz", headers={"X-Long": "a" * 9000})
        many_headers = await request(proxy.port, "GET", "/healthz",
                                     headers={f"X-H{i}": "a" * 7000 for i in range(6)})
        return big, long_header, many_headers
    big, long_header, many_headers = asyncio.run(go())
    assert big.status == 413 and _error(big)["error"] == "body_too_large"
    for r in (long_header, many_headers):
        assert r.status == 400 and _error(r)["error"] == "bad_request", (r.status, r.body)


def test_proxy_limits_requests_in_progress_per_client_with_retry_after(stack):
    """64 uploads in progress from one address: the 65th request gets 429 with Retry-After at once;
    once they end, the next one is served."""
    srv, proxy = stack
    head = build_request("POST", "/similarity", None, {"Content-Length": "1000"}, port=proxy.port)

    async def go():
        held = []
        for _ in range(LIMIT_CONN):
            reader, writer = await asyncio.open_connection(HOST, proxy.port)
            writer.write(head + b"{")
            await writer.drain()
            held.append(writer)
        await asyncio.sleep(0.3)
        refused = await request(proxy.port, "POST", "/similarity", similarity_bodies(1, 1)[0])
        for w in held:
            w.close()
        await asyncio.sleep(0.3)
        after = await request(proxy.port, "POST", "/similarity", similarity_bodies(1, 1)[0])
        return refused, after
    refused, after = asyncio.run(go())
    assert refused.status == 429 and refused.headers.get("retry-after") == "1"
    assert _error(refused)["error"] == "overloaded"
    assert after.status == 200


def test_proxy_answers_503_with_retry_after_when_the_service_is_down(tmp_path):
    dead = free_port()  # nothing listens there
    with NginxProcess(dead, tmp_path / "nginx") as proxy:
        r = asyncio.run(request(proxy.port, "GET", "/healthz"))
    assert r.status == 503 and r.headers.get("retry-after") == "1"
    assert _error(r)["error"] == "unavailable"


def test_proxy_closes_a_connection_whose_header_never_ends(stack):
    """A partial header is not held open forever: nginx closes it after client_header_timeout (10 s)
    while complete requests on other connections are answered."""
    srv, proxy = stack
    sock = socket.create_connection((HOST, proxy.port))
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: a")
    sock.settimeout(15)

    async def normal():
        conn = await Conn.open(proxy.port)
        try:
            return (await conn.send(build_request("GET", "/healthz", port=proxy.port))).status
        finally:
            conn.close()
    assert asyncio.run(normal()) == 200
    try:
        assert sock.recv(100) == b""  # closed without an answer (reset_timedout_connection may RST)
    except ConnectionResetError:
        pass
    finally:
        sock.close()


@pytest.mark.slow
def test_attacks_short(tmp_path):
    """Each attack against the shipped service behind the shipped proxy (or direct, where the service
    itself bounds it): the normal client's p50 within SUITE_MAX_RATIO of quiet, none of its requests failed, no
    new 5xx in the service's metrics (``python -m reliability.attacks --short``, fewer attacks)."""
    model, _ = resolve_model("auto", tmp_path)
    plan = [("header_bomb", "proxy"), ("slowloris", "proxy"), ("slow_bodies", "direct"),
            ("expect_no_body", "proxy"), ("expensive_texts", "direct"), ("disconnects", "direct")]
    out = asyncio.run(run_all(model, tmp_path, plan=plan, quiet_s=SHORT_QUIET_S, duration_s=SHORT_DURATION_S,
                              max_ratio=SUITE_MAX_RATIO, options=SHORT_OPTIONS))
    failed = {k: v for k, v in out["checks"].items() if not v["ok"]}
    assert not failed, (failed, {k: (r["p50_ratio"], r["attacker"]) for k, r in out["results"].items()})
    # the attacks really happened: the attacker was refused or held, not idle
    a = {k: r["attacker"] for k, r in out["results"].items()}
    bomb = a["header_bomb@proxy"]  # bytes count per finished 64 KB write; a bomb cut off earlier counts 0
    assert bomb.get("header_bytes_sent", 0) > 1 << 20 or bomb.get("400", 0) >= 10, bomb
    assert a["slowloris@proxy"].get("connections", 0) >= 1100
    assert a["expensive_texts@direct"].get("200", 0) > 0
    assert a["disconnects@direct"].get("abandoned", 0) > 50
