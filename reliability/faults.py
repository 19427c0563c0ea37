"""Faults against the real process: SIGTERM under load, clients that disconnect while queued.

    .venv/bin/python -m reliability.faults                    # ~40 s

(The in-process faults, an exception in one batch and one slow batch, are exact only with the
batch hook (model-runner seam) in the test's own event loop: tests/test_reliability_faults.py.)

1. SIGTERM under load, ``--rounds`` times for each entry point (``pete-serve`` = ``app.cli.main``;
   ``uvicorn`` = ``uvicorn --factory ...``, the Dockerfile's command): ``--clients`` closed-loop
   clients send ``POST /similarity?rid=N`` (every request numbered) to a server whose every batch
   takes ``--batch-delay-ms`` longer (``RELIABILITY_BATCH_DELAY_MS``, so work is always queued and
   in flight); SIGTERM after ``--pre`` s; the clients go on (reconnecting) for ``--post`` s. The
   server's access log names every request it answered, so each request's fate is known on both
   sides: lost = answered by the server (logged) but not received by its client.
   With ``--slow-bodies N`` (default 20) one more round per entry point adds N connections that
   upload a 1 MB body at 1 KB/s from the start: the body timeout (``PETE_BODY_TIMEOUT_S``, 408;
   the settings keep it below ``PETE_SHUTDOWN_TIMEOUT_S``) must end them, and the process exit
   within the bound, with no accepted request lost (uvicorn alone kept a process 43-55 s past
   SIGTERM for one such client).
2. Disconnect storm: while 8 clients load the server, ``--abandon`` clients each send a request
   and close the socket 20 ms later (their work is queued): the work must be skipped
   (``pete_dropped_items_total``, ``pete_rejected_requests_total{reason="client_gone"}``) and
   every other request answered 200.

Writes ``reliability/results/faults.json``; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.fixtures import similarity_bodies
from loadtest.http import Conn, HOST, HttpError, build_request, request
from loadtest.load import closed_loop
from loadtest.prom import metric, scrape
from loadtest.results import machine_info, write_json
from loadtest.server import ServerProcess
from reliability.attacks import final_status, slow_upload
from reliability.common import HARNESS_APP, RESULTS_DIR, check, print_checks, resolve_model

_ACCESS = re.compile(r'"POST /similarity\?rid=(\d+) HTTP/1\.1" (\d{3})')


async def _numbered_clients(port: int, bodies: list[bytes], clients: int, until: float,
                            max_requests: int) -> list[dict[str, Any]]:
    """Closed-loop clients sending numbered requests until ``until`` (perf_counter); a client whose
    connection fails reconnects for its next request (after 20 ms)."""
    rids = iter(range(max_requests))
    records: list[dict[str, Any]] = []

    async def client(k: int) -> None:
        conn: Conn | None = None
        for rid in rids:
            if time.perf_counter() >= until:
                break
            raw = build_request("POST", f"/similarity?rid={rid}", bodies[rid % len(bodies)], port=port)
            sent = time.perf_counter()
            rec: dict[str, Any] = {"rid": rid, "sent": sent}
            try:
                if conn is None or conn.closed:
                    conn = await Conn.open(port, timeout=2)
                    rec["new_connection"] = True
                r = await conn.send(raw, timeout=60)
                rec["status"] = r.status
            except (OSError, TimeoutError) as e:
                rec["status"], rec["error"] = 0, f"connect {type(e).__name__}"
                conn = None
                await asyncio.sleep(0.02)
            except HttpError as e:
                rec["status"], rec["error"] = 0, str(e).split(":")[0]
                conn = None
                await asyncio.sleep(0.02)
            rec["done"] = time.perf_counter()
            records.append(rec)
        if conn is not None:
            conn.close()

    await asyncio.gather(*(client(k) for k in range(clients)))
    return records


@dataclass
class SigtermRound:
    """What one SIGTERM-under-load round measured (times: ``time.perf_counter()`` seconds)."""

    command: str
    records: list[dict[str, Any]]  # one per client request: rid, sent, done, status or error
    t_sig: float
    refused_after_s: float | None  # when the listening socket stopped taking connections
    exit_code: int | None
    exit_after_s: float
    log: str  # the server's log (access lines name each answered rid)
    slow_bodies: list[dict[str, Any]]  # per slow upload: how it ended, seconds after SIGTERM


async def sigterm_under_load(model: Path, work: Path, *, entry: str = "pete-serve", clients: int = 16, pairs: int = 4,
                             pre_s: float = 1.5, post_s: float = 2.0, batch_delay_ms: int = 30,
                             graceful_s: int = 20, slow_bodies: int = 0,
                             body_timeout_s: float | None = None) -> dict[str, Any]:
    """One SIGTERM-under-load round (with ``slow_bodies`` slow uploads open): figures and checks
    (measure -> summarise -> judge)."""
    r = await measure_sigterm(model, work, entry=entry, clients=clients, pairs=pairs, pre_s=pre_s, post_s=post_s,
                              batch_delay_ms=batch_delay_ms, graceful_s=graceful_s, slow_bodies=slow_bodies,
                              body_timeout_s=body_timeout_s)
    out = {"entry": entry, "command": r.command, "clients": clients, "batch_delay_ms": batch_delay_ms,
           "graceful_s": graceful_s, "slow_bodies": slow_bodies, **summarise_sigterm(r)}
    out["checks"] = judge_sigterm(out, r, entry=entry, graceful_s=graceful_s)
    return out


async def measure_sigterm(model: Path, work: Path, *, entry: str, clients: int, pairs: int, pre_s: float, post_s: float,
                          batch_delay_ms: int, graceful_s: int, slow_bodies: int = 0,
                          body_timeout_s: float | None = None) -> SigtermRound:
    """Numbered closed-loop clients against a server with slow batches, and ``slow_bodies`` uploads
    at 1 KB/s opened at the start; SIGTERM after ``pre_s``; the clients go on for ``post_s``. Also
    watches when new connections start being refused. ``body_timeout_s``: ``PETE_BODY_TIMEOUT_S``
    (None: the default, which must be below ``graceful_s``)."""
    env = {"PETE_LOG_LEVEL": "info", "RELIABILITY_BATCH_DELAY_MS": str(batch_delay_ms),
           "PETE_SHUTDOWN_TIMEOUT_S": str(graceful_s)}
    if body_timeout_s is not None:
        env["PETE_BODY_TIMEOUT_S"] = str(body_timeout_s)
    log = work / f"sigterm-{entry}-{time.time_ns()}.log"
    srv = ServerProcess(model, factory=HARNESS_APP, env=env, entry=entry, log_path=log, graceful_s=graceful_s)
    bodies = similarity_bodies(100, pairs, seed=7)
    try:
        srv.start()
        t_start = time.perf_counter()
        loop = asyncio.ensure_future(_numbered_clients(srv.port, bodies, clients, t_start + pre_s + post_s, 1_000_000))
        slow = [asyncio.ensure_future(_slow_upload(srv.port, graceful_s * 2 + 30)) for _ in range(slow_bodies)]
        await asyncio.sleep(pre_s)
        t_sig = time.perf_counter()
        srv.terminate()

        async def wait_exit() -> tuple[int | None, float]:
            rc = await asyncio.to_thread(srv.wait, graceful_s * 2 + 30)
            return rc, time.perf_counter() - t_sig

        exit_task = asyncio.ensure_future(wait_exit())
        refused_after = await _refused_after(srv.port, t_sig)
        records = await loop
        rc, t_exit = await exit_task
        ended = [{"end": end, "after_sigterm_s": round(t - t_sig, 3)} for end, t in await asyncio.gather(*slow)]
    finally:
        srv.kill()
    return SigtermRound(" ".join(srv.command()[1:]), records, t_sig, refused_after, rc, t_exit,
                        log.read_text(errors="replace") if log.is_file() else "", ended)


async def _slow_upload(port: int, timeout_s: float) -> tuple[str, float]:
    """A slow upload (``reliability.attacks.slow_upload``: a 1 MB body at 1 KB/s); how it ended (the
    status of the answer, "closed" without one, "no_answer" after ``timeout_s``, or the error) and
    when."""
    reader, writer = await asyncio.open_connection(HOST, port)
    head, hold = slow_upload(port)
    writer.write(head)
    upload = asyncio.ensure_future(hold(writer))
    try:
        end = await final_status(reader, timeout_s, {})
    finally:
        upload.cancel()
        writer.close()
    return end, time.perf_counter()


async def _refused_after(port: int, since: float, tries: int = 400) -> float | None:
    """Seconds from ``since`` until a new connection is refused (None: still accepted after ``tries``)."""
    for _ in range(tries):
        try:
            c = await Conn.open(port, timeout=1)
            c.close()
        except OSError:
            return time.perf_counter() - since
        await asyncio.sleep(0.005)
    return None


def _tally(records: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in records:
        key = str(r["status"]) if r["status"] else r.get("error", "error")
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


def summarise_sigterm(r: SigtermRound) -> dict[str, Any]:
    """Each request's fate on both sides: lost = answered by the server (logged) but not received."""
    server_answered = {int(rid): int(st) for rid, st in _ACCESS.findall(r.log)}
    client = {rec["rid"]: rec for rec in r.records}
    before = [rec for rec in r.records if rec["sent"] < r.t_sig]
    in_flight = [rec for rec in before if rec["done"] > r.t_sig]  # sent before SIGTERM, answered after it
    lost = [rid for rid, st in server_answered.items() if rid in client and client[rid]["status"] != st]
    return {
        "requests": len(r.records), "before_sigterm": _tally(before), "in_flight_at_sigterm": _tally(in_flight),
        "after_sigterm": _tally([rec for rec in r.records if rec["sent"] >= r.t_sig]),
        "server_answered": {str(s): sum(1 for v in server_answered.values() if v == s)
                            for s in sorted(set(server_answered.values()))},
        "lost": len(lost), "lost_rids": lost[:20],
        "reset_unread": sum(1 for rec in r.records if not rec["status"] and not rec.get("error", "").startswith("connect")),
        "server_logged_unknown_rids": sum(1 for rid in server_answered if rid not in client),
        "listening_socket_closed_after_s": None if r.refused_after_s is None else round(r.refused_after_s, 4),
        "exit_code": r.exit_code, "exit_after_s": round(r.exit_after_s, 3),
        "graceful_timeout_hit": "timeout graceful shutdown exceeded" in r.log,
        "slow_bodies_ended": _tally([{"status": 0, "error": b["end"]} for b in r.slow_bodies]),
        "slow_bodies_last_end_after_sigterm_s": max((b["after_sigterm_s"] for b in r.slow_bodies), default=None),
        "log_tail": r.log[-1200:],
    }


def judge_sigterm(out: dict[str, Any], r: SigtermRound, *, entry: str, graceful_s: int) -> dict[str, dict[str, Any]]:
    """The SIGTERM checks (module docstring)."""
    in_flight = [rec for rec in r.records if rec["sent"] < r.t_sig < rec["done"]]
    statuses = {rec["status"] for rec in r.records if rec["status"]}
    rc, t_exit = r.exit_code, r.exit_after_s
    return {
        "zero_lost": check(not out["lost"] and not out["server_logged_unknown_rids"],
                           out["lost"] + out["server_logged_unknown_rids"], 0),
        # a request written onto an idle keep-alive connection in the instant uvicorn closes it is
        # reset unread (never processed, never logged: retry-safe); every other one must be a 200
        "in_flight_completed_200": check(any(rec["status"] == 200 for rec in in_flight)
                                         and all(rec["status"] == 200 for rec in in_flight if rec["status"]),
                                         out["in_flight_at_sigterm"], "all 200 (resets unread excepted)"),
        "no_5xx_but_503": check(all(s < 500 or s == 503 for s in statuses), sorted(statuses), "200/503 only"),
        "new_connections_refused": check(r.refused_after_s is not None, r.refused_after_s, "refused after SIGTERM"),
        "exits_within_grace": check(rc is not None and t_exit <= graceful_s, round(t_exit, 3), f"<= {graceful_s} s"),
        "no_graceful_timeout": check(not out["graceful_timeout_hit"], out["graceful_timeout_hit"], False),
        "exit_code": check(rc == 0 if entry == "pete-serve" else rc is not None, rc,
                           0 if entry == "pete-serve" else "any (uvicorn CLI re-raises SIGTERM: -15)"),
        # slow uploads: ended by the body timeout (408), before the graceful timeout
        "slow_bodies_ended": check(all(b["end"] == "408" for b in r.slow_bodies), out["slow_bodies_ended"], "408"),
    }


async def disconnect_storm(model: Path, work: Path, *, abandon: int = 40, clients: int = 8, duration_s: float = 4.0,
                           batch_delay_ms: int = 50, pairs: int = 4) -> dict[str, Any]:
    """Abandoning clients while others load the server; figures and checks."""
    bodies = similarity_bodies(50, pairs, seed=3)
    env = {"RELIABILITY_BATCH_DELAY_MS": str(batch_delay_ms)}
    with ServerProcess(model, factory=HARNESS_APP, env=env, log_path=work / "disconnect.log") as srv:
        before = await scrape(srv.port)

        async def abandoner(i: int) -> str:
            await asyncio.sleep(duration_s * 0.8 * i / abandon)
            try:
                reader, writer = await asyncio.open_connection(HOST, srv.port)
                writer.write(build_request("POST", "/similarity", bodies[i % len(bodies)], port=srv.port))
                await writer.drain()
                await asyncio.sleep(0.02)
                writer.close()  # gone while its request waits in the queue
                return "abandoned"
            except OSError as e:
                return f"error {type(e).__name__}"

        load, abandoned = await asyncio.gather(
            closed_loop(srv.port, bodies, clients=clients, duration_s=duration_s, max_requests=100_000),
            asyncio.gather(*(abandoner(i) for i in range(abandon))))
        await asyncio.sleep(1.0)  # let the worker reach (and skip) the abandoned items
        after = await scrape(srv.port)
        probe = await request(srv.port, "POST", "/similarity", bodies[0])
    dropped = metric(after, "pete_dropped_items_total") - metric(before, "pete_dropped_items_total")
    gone = metric(after, "pete_rejected_requests_total", reason="client_gone")
    out = {"abandoned": len([a for a in abandoned if a == "abandoned"]), "abandon_errors": [a for a in abandoned if a != "abandoned"],
           "load_statuses": load.statuses(), "load_errors": load.errors(), "dropped_items": dropped,
           "client_gone": gone, "status_499_seen_by_server": metric(after, "pete_request_duration_seconds_count",
                                                                   status="499"),
           "probe_after": probe.status}
    out["checks"] = {
        "others_unaffected": check(set(load.statuses()) == {"200"} and not load.errors(), load.statuses(), "all 200"),
        "work_skipped": check(dropped > 0 and gone > 0, {"dropped_items": dropped, "client_gone": gone}, "> 0"),
        "healthy_after": check(probe.status == 200, probe.status, 200),
    }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="auto | bundled | tiny | reference | checkpoint dir (default tiny)")
    ap.add_argument("--rounds", type=int, default=3, help="SIGTERM rounds per entry point (default 3)")
    ap.add_argument("--entries", default="pete-serve,uvicorn")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--pre", type=float, default=1.5, help="seconds of load before SIGTERM")
    ap.add_argument("--post", type=float, default=2.0, help="seconds the clients go on after SIGTERM")
    ap.add_argument("--batch-delay-ms", type=int, default=30)
    ap.add_argument("--graceful", type=int, default=20, help="grace period in seconds (uvicorn and the batcher; default 20, the service default)")
    ap.add_argument("--slow-bodies", type=int, default=20,
                    help="slow uploads in one more round per entry point (0: no such round)")
    ap.add_argument("--abandon", type=int, default=40, help="abandoning clients in the disconnect storm")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "faults.json")
    args = ap.parse_args(argv)

    tmp = tempfile.TemporaryDirectory(prefix="pete-faults-")  # removed at exit (checkpoints, server logs)
    work = Path(tmp.name)
    model, model_desc = resolve_model(args.model, work)
    t0 = time.perf_counter()
    rounds = []
    for entry in args.entries.split(","):
        for i in range(args.rounds + (args.slow_bodies > 0)):
            slow = args.slow_bodies if i == args.rounds else 0
            r = asyncio.run(sigterm_under_load(model, work, entry=entry, clients=args.clients, pre_s=args.pre,
                                               post_s=args.post, batch_delay_ms=args.batch_delay_ms,
                                               graceful_s=args.graceful, slow_bodies=slow))
            uploads = f", {slow} slow uploads: {r['slow_bodies_ended']}" if slow else ""
            print(f"SIGTERM {entry} round {i + 1}: before {r['before_sigterm']} in flight {r['in_flight_at_sigterm']} "
                  f"after {r['after_sigterm']} lost {r['lost']} rc {r['exit_code']} exit {r['exit_after_s']} s{uploads}")
            rounds.append(r)
    storm = asyncio.run(disconnect_storm(model, work, abandon=args.abandon))
    print(f"disconnect storm: {storm['abandoned']} abandoned, dropped items {storm['dropped_items']}, client_gone "
          f"{storm['client_gone']}, others {storm['load_statuses']}")
    checks: dict[str, Any] = {}
    per_entry = args.rounds + (args.slow_bodies > 0)
    for i, r in enumerate(rounds):
        tag = "slow_bodies" if r["slow_bodies"] else str(i % per_entry + 1)
        for name, c in r["checks"].items():
            checks[f"sigterm[{r['entry']}#{tag}].{name}"] = c
    checks.update({f"disconnect.{k}": v for k, v in storm["checks"].items()})
    out = {"model": model_desc, "machine": machine_info(), "sigterm_rounds": rounds, "disconnect_storm": storm,
           "checks": checks, "seconds": round(time.perf_counter() - t0, 1)}
    write_json(args.out, out)
    print(f"-> {args.out}")
    ok = print_checks(checks)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
