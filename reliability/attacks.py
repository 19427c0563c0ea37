"""One client must not hurt the others: attacks by one client while a normal client measures.

    .venv/bin/python -m reliability.attacks                   # ~4 min; --short: ~1 min (the suite's)

The service runs as shipped (``pete-serve``, the bundled checkpoint, an open-file limit of 1,024 as
in many containers) behind the deploy's reverse proxy (``deploy/nginx/nginx.conf`` with Debian's
nginx, ``loadtest.proxy``). For each attack, one normal client (closed loop, one single-pair
``POST /similarity`` at a time) first measures a quiet p50 for ``--quiet`` s, then the attack starts
in a separate process (its own CPU, its own event loop, connecting from 127.0.0.2 so that it is
"another client" to the proxy's per-client limit) and the normal client measures again for
``--duration`` s. Attacks (front: where the attacker and the normal client connect):

- ``header_bomb`` (proxy): 4 connections each stream a header line of up to 100 MB, starting a new
  one 0.1 s after each is refused (uvicorn alone parsed a 100 MB header for 22-28 s, stalling
  everyone);
- ``slowloris`` (proxy): ``--slowloris`` connections (default 1,100: past the service's 1,024 open
  files) each send a partial header one byte a second;
- ``slow_bodies`` (proxy and direct): 500 uploads at 1 KB/s; behind the proxy nginx buffers them
  (and refuses a client's 65th concurrent request with 429), direct the service's body timeout
  answers 408 (``PETE_BODY_TIMEOUT_S``);
- ``expect_no_body`` (proxy and direct): 300 requests with ``Expect: 100-continue`` that never
  send their body;
- ``expensive_texts`` (direct and proxy): 6 clients back to back, alternating /embeddings of 64
  texts of 10,000 characters ("a a a ...") and /similarity of 64 pairs of 8,000 "!";
- ``disconnects`` (direct): 8 clients send a 4-pair /similarity request and close the connection
  20 ms later, before its answer (half of them mid-body), ~110 times a second in all.

Checks per attack: the normal client's p50 within 2x its quiet p50 (``--max-ratio``), none of its
requests failed, and no new 5xx in the service's own metrics (``pete_request_duration_seconds_count``
with a 5xx status, scraped directly). Writes ``reliability/results/attacks.json``; exits 1 when a
check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from loadtest.fixtures import similarity_bodies
from loadtest.http import HOST, build_request
from loadtest.load import closed_loop
from loadtest.prom import scrape
from loadtest.proxy import NginxProcess, nginx_binary
from loadtest.results import machine_info, write_json
from loadtest.server import ServerProcess
from loadtest.stats import latency_ms
from reliability.common import RESULTS_DIR, check, print_checks, resolve_model

ATTACKER_ADDR = "127.0.0.2"  # another client, as the proxy sees it (all of 127/8 is loopback on Linux)
CONTAINER_NOFILE = 1024  # a common container default for the open-file limit

Tally = dict[str, int]


def _count(tally: Tally, key: str, n: int = 1) -> None:
    tally[key] = tally.get(key, 0) + n


async def _connect(port: int, tally: Tally) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """A connection from ``ATTACKER_ADDR``; None when it failed (counted in ``tally``, after a 0.5 s pause)."""
    try:
        return await asyncio.wait_for(asyncio.open_connection(HOST, port, local_addr=(ATTACKER_ADDR, 0)), 5)
    except (OSError, TimeoutError) as e:
        _count(tally, f"connect_{type(e).__name__}")
        await asyncio.sleep(0.5)
        return None


async def final_status(reader: asyncio.StreamReader, timeout: float, tally: Tally) -> str:
    """The status code of the server's final answer (an interim ``100 Continue`` is counted in
    ``tally`` and read past), or how the connection ended without one."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                parts = head.split(maxsplit=2)
                if len(parts) < 2:
                    return "closed"
                if not parts[1].startswith(b"1"):
                    return parts[1].decode()
                _count(tally, "interim_" + parts[1].decode())
    except TimeoutError:
        return "no_answer"
    except asyncio.IncompleteReadError:
        return "closed"
    except (OSError, asyncio.LimitOverrunError) as e:
        return type(e).__name__


async def _holder(port: int, until: float, tally: Tally, hold: Callable[[asyncio.StreamWriter], Awaitable[None]],
                  head: bytes, pause_s: float = 0.0) -> None:
    """One attacker connection, re-opened (after ``pause_s``) whenever the server ends it, until
    ``until``: sends ``head``, then ``hold(writer)`` trickles what the attack trickles while the
    answer is awaited."""
    while time.perf_counter() < until:
        if (streams := await _connect(port, tally)) is None:
            continue
        reader, writer = streams
        _count(tally, "connections")
        trickle = None
        try:
            writer.write(head)
            trickle = asyncio.ensure_future(hold(writer))
            _count(tally, await final_status(reader, max(0.0, until - time.perf_counter()), tally))
        finally:
            if trickle is not None:
                trickle.cancel()
            writer.close()
        await asyncio.sleep(pause_s)


def trickle(chunk: bytes, every_s: float) -> Callable[[asyncio.StreamWriter], Awaitable[None]]:
    async def hold(writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await asyncio.sleep(every_s)
                writer.write(chunk)
                await writer.drain()
        except OSError:
            pass
    return hold


async def header_bomb(port: int, until: float, tally: Tally, streams: int = 4, size: int = 100 << 20,
                      pause_s: float = 0.1) -> None:
    """Header lines of up to ``size`` bytes, as fast as the server reads them; each stream starts its
    next bomb ``pause_s`` after the last one ended (with none, refused bombs become a flood of
    connections, another attack: a rate limit's, not a header limit's)."""
    block = b"a" * 65536

    async def stream(writer: asyncio.StreamWriter) -> None:
        sent = 0
        try:
            while sent < size:
                writer.write(block)
                await writer.drain()
                sent += len(block)
        except OSError:
            pass
        _count(tally, "header_bytes_sent", sent)

    head = f"POST /similarity HTTP/1.1\r\nHost: {HOST}\r\nX-Bomb: ".encode()
    await asyncio.gather(*(_holder(port, until, tally, stream, head, pause_s) for _ in range(streams)))


async def slowloris(port: int, until: float, tally: Tally, connections: int = 1100) -> None:
    """``connections`` partial headers, one more byte a second each."""
    head = f"POST /similarity HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: ".encode()
    await asyncio.gather(*(_holder(port, until, tally, trickle(b"a", 1.0), head) for _ in range(connections)))


def slow_upload(port: int) -> tuple[bytes, Callable[[asyncio.StreamWriter], Awaitable[None]]]:
    """A slow upload: the request head announcing a 1 MB JSON body, and the ``trickle`` that sends
    it at 1 KB/s (also ``reliability.faults``' SIGTERM round)."""
    head = build_request("POST", "/similarity", None, {"Content-Type": "application/json",
                                                       "Content-Length": str(1 << 20)}, port=port)
    return head, trickle(b" " * 100, 0.1)


async def slow_bodies(port: int, until: float, tally: Tally, connections: int = 500) -> None:
    """``connections`` uploads of a 1 MB JSON body at 1 KB/s each."""
    head, hold = slow_upload(port)
    await asyncio.gather(*(_holder(port, until, tally, hold, head) for _ in range(connections)))


async def expect_no_body(port: int, until: float, tally: Tally, connections: int = 300) -> None:
    """``connections`` requests announcing a body with ``Expect: 100-continue`` and never sending it."""
    head = build_request("POST", "/similarity", None, {"Content-Type": "application/json", "Content-Length": "100",
                                                       "Expect": "100-continue"}, port=port)

    async def idle(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(3600)
    await asyncio.gather(*(_holder(port, until, tally, idle, head) for _ in range(connections)))


def expensive_bodies() -> list[tuple[str, bytes]]:
    """The worst-case requests within the limits: (path, body)."""
    words = ("a " * 5000)[:10_000]
    return [("/embeddings", json.dumps({"input": [words] * 64}).encode()),
            ("/similarity", json.dumps({"pairs": [{"text_a": "!" * 8000, "text_b": "!" * 8000}] * 64}).encode())]


async def expensive_texts(port: int, until: float, tally: Tally, clients: int = 6) -> None:
    """``clients`` closed-loop clients sending ``expensive_bodies`` back to back, on keep-alive
    connections (reopened when closed)."""
    raws = [build_request("POST", path, body, port=port) for path, body in expensive_bodies()]

    async def client(k: int) -> None:
        i = k
        reader = writer = None
        while time.perf_counter() < until:
            if writer is None or writer.is_closing():
                if (streams := await _connect(port, tally)) is None:
                    continue
                reader, writer = streams
            writer.write(raws[i % len(raws)])
            i += 1
            status = await _read_response(reader, max(0.1, until - time.perf_counter()))
            _count(tally, status)
            if not status.isdigit():
                writer.close()
                writer = None
        if writer is not None:
            writer.close()

    await asyncio.gather(*(client(k) for k in range(clients)))


async def _read_response(reader: asyncio.StreamReader, timeout: float) -> str:
    """Read one whole response (Content-Length framing); its status, or how it failed."""
    try:
        async with asyncio.timeout(timeout):
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            length = next((int(h.split(":", 1)[1]) for h in lines if h.lower().startswith("content-length:")), 0)
            await reader.readexactly(length)
            return lines[0].split()[1]
    except TimeoutError:
        return "no_answer"
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, IndexError, ValueError) as e:
        return type(e).__name__


async def disconnects(port: int, until: float, tally: Tally, clients: int = 8, pairs: int = 4,
                      pause_s: float = 0.05) -> None:
    """``clients`` clients each send a ``pairs``-pair /similarity request (every other one only
    half its body), close the connection 20 ms later, and start again ``pause_s`` later: ~110
    abandoned requests a second."""
    raw = build_request("POST", "/similarity", similarity_bodies(1, pairs, seed=5)[0], port=port)

    async def client(k: int) -> None:
        i = k
        while time.perf_counter() < until:
            if (streams := await _connect(port, tally)) is None:
                continue
            _, writer = streams
            writer.write(raw if i % 2 == 0 else raw[: len(raw) - 200])
            _count(tally, "abandoned" if i % 2 == 0 else "abandoned_mid_body")
            i += 1
            await asyncio.sleep(0.02)
            writer.close()
            await asyncio.sleep(pause_s)

    await asyncio.gather(*(client(k) for k in range(clients)))


ATTACKS: dict[str, Callable[..., Awaitable[None]]] = {
    "header_bomb": header_bomb, "slowloris": slowloris, "slow_bodies": slow_bodies,
    "expect_no_body": expect_no_body, "expensive_texts": expensive_texts, "disconnects": disconnects,
}
# (attack, front) in the order run; the front is where both the attacker and the normal client connect
PLAN = [("header_bomb", "proxy"), ("slowloris", "proxy"), ("slow_bodies", "proxy"), ("slow_bodies", "direct"),
        ("expect_no_body", "proxy"), ("expect_no_body", "direct"), ("expensive_texts", "direct"),
        ("expensive_texts", "proxy"), ("disconnects", "direct")]


def _attack_process(name: str, port: int, seconds: float, options: dict[str, Any], out: Any) -> None:
    """Entry point of the attacker process: run attack ``name`` for ``seconds``; put its tally on ``out``."""
    tally: Tally = {}

    async def go() -> None:
        task = asyncio.ensure_future(ATTACKS[name](port, time.perf_counter() + seconds, tally, **options))
        try:
            await asyncio.wait_for(task, seconds + 15)
        except TimeoutError:
            _count(tally, "attacker_overran")
    asyncio.run(go())
    out.put(tally)


def _fives(samples: dict[str, float]) -> float:
    return sum(v for k, v in samples.items()
               if k.startswith("pete_request_duration_seconds_count{") and 'status="5' in k)


async def run_attack(name: str, front_port: int, direct_port: int, *, quiet_s: float, duration_s: float,
                     settle_s: float, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Quiet p50, then the attack (another process) with the normal client measuring; figures."""
    bodies = similarity_bodies(50, 1, seed=11)
    quiet = await closed_loop(front_port, bodies, clients=1, duration_s=quiet_s, max_requests=100_000)
    before = await scrape(direct_port)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    attacker = ctx.Process(target=_attack_process, args=(name, front_port, settle_s + duration_s, options or {}, out))
    attacker.start()
    await asyncio.sleep(settle_s)
    during = await closed_loop(front_port, bodies, clients=1, duration_s=duration_s, max_requests=100_000)
    tally = await asyncio.to_thread(out.get, True, duration_s + settle_s + 60)
    await asyncio.to_thread(attacker.join, 30)
    after = await scrape(direct_port)
    q, d = latency_ms(quiet.latencies()), latency_ms(during.latencies())
    return {"quiet": {**q, "requests": quiet.count(), "failures": quiet.failures()},
            "during": {**d, "requests": during.count(), "failures": during.failures()},
            "p50_ratio": round(d["p50"] / q["p50"], 2) if q.get("p50") else None,
            "new_5xx": _fives(after) - _fives(before), "attacker": dict(sorted(tally.items()))}


def judge(r: dict[str, Any], max_ratio: float) -> dict[str, dict[str, Any]]:
    """The three checks of one attack (module docstring)."""
    return {"p50_within_ratio": check(r["p50_ratio"] is not None and r["p50_ratio"] <= max_ratio,
                                      r["p50_ratio"], f"<= {max_ratio}x quiet p50"),
            "normal_failures": check(not r["during"]["failures"] and not r["quiet"]["failures"],
                                     r["during"]["failures"], "none"),
            "phantom_5xx": check(r["new_5xx"] == 0, r["new_5xx"], 0)}


async def run_all(model: Path, work: Path, *, plan: list[tuple[str, str]], quiet_s: float, duration_s: float,
                  max_ratio: float, options: dict[str, dict[str, Any]], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Every (attack, front) of ``plan`` against one service (its settings: the defaults, plus
    ``env``) and proxy; results and checks."""
    results: dict[str, Any] = {}
    checks: dict[str, Any] = {}
    with ServerProcess(model, nofile=CONTAINER_NOFILE, log_path=work / "server.log", env=env) as srv, \
            NginxProcess(srv.port, work / "nginx") as proxy:
        for name, front in plan:
            port = proxy.port if front == "proxy" else srv.port
            settle_s = 3.0 if name == "slowloris" else 1.0
            r = await run_attack(name, port, srv.port, quiet_s=quiet_s, duration_s=duration_s, settle_s=settle_s,
                                 options=options.get(name))
            key = f"{name}@{front}"
            results[key] = r
            print(f"{key}: quiet p50 {r['quiet'].get('p50')} ms, during p50 {r['during'].get('p50')} ms "
                  f"(x{r['p50_ratio']}), failures {r['during']['failures']}, new 5xx {r['new_5xx']}, "
                  f"attacker {r['attacker']}", flush=True)
            checks.update({f"{key}.{k}": v for k, v in judge(r, max_ratio).items()})
        server_log = srv.log_tail(20_000)
    return {"results": results, "checks": checks, "server_log_tail": server_log[-3000:]}


SHORT_QUIET_S, SHORT_DURATION_S = 3.0, 6.0  # --short (and tests/test_deploy_nginx.py)
SHORT_OPTIONS = {"slowloris": {"connections": 1100}, "slow_bodies": {"connections": 200},
                 "expect_no_body": {"connections": 100}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="auto", help="auto | bundled | tiny | reference | checkpoint dir")
    ap.add_argument("--quiet", type=float, default=5.0, help="seconds of the quiet measurement before each attack")
    ap.add_argument("--duration", type=float, default=15.0, help="seconds measured during each attack")
    ap.add_argument("--max-ratio", type=float, default=2.0, help="largest p50 during / quiet p50")
    ap.add_argument("--attacks", default=",".join(f"{a}@{f}" for a, f in PLAN), help="attack@front, comma-separated")
    ap.add_argument("--short", action="store_true", help="3 s quiet, 6 s attacks, fewer slow connections")
    ap.add_argument("--env", action="append", default=[], metavar="PETE_X=V", help="a service setting (repeatable)")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "attacks.json")
    args = ap.parse_args(argv)
    env = dict(kv.split("=", 1) for kv in args.env)
    if nginx_binary() is None:
        print("nginx not installed (Debian package nginx): make deploy-tools", file=sys.stderr)
        return 2
    plan = [tuple(spec.split("@")) for spec in args.attacks.split(",")]
    quiet_s, duration_s = (SHORT_QUIET_S, SHORT_DURATION_S) if args.short else (args.quiet, args.duration)
    tmp = tempfile.TemporaryDirectory(prefix="pete-attacks-")
    work = Path(tmp.name)
    model, model_desc = resolve_model(args.model, work)
    t0 = time.perf_counter()
    out = asyncio.run(run_all(model, work, plan=plan, quiet_s=quiet_s, duration_s=duration_s,
                              max_ratio=args.max_ratio, options=SHORT_OPTIONS if args.short else {}, env=env))
    out = {"model": model_desc, "machine": machine_info(), "settings": env, "quiet_s": quiet_s, "duration_s": duration_s,
           "server_nofile": CONTAINER_NOFILE, **out, "seconds": round(time.perf_counter() - t0, 1)}
    write_json(args.out, out)
    print(f"-> {args.out}")
    return 0 if print_checks(out["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
