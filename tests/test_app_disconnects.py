"""A client that pipelines two requests and closes the connection (issue 15 item 5): the server marks
only the newest request as disconnected, so the answer to the other one is written to a closed
transport. That write is dropped and counted as 499: no stack trace, no internal error, no 5xx."""

from __future__ import annotations

import json
import socket
import time

import httpx

from loadtest.fixtures import random_checkpoint
from loadtest.prom import metric, parse_metrics
from loadtest.server import ServerProcess


def test_pipelined_requests_then_disconnect_log_no_trace_and_count_499(tmp_path):
    body = json.dumps({"pairs": [{"text_a": "a cat", "text_b": "a dog"}]}).encode()
    req = (b"POST /similarity HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    rounds = 5
    with ServerProcess(random_checkpoint(tmp_path / "tiny"), env={"PETE_LOG_LEVEL": "info"},
                       log_path=tmp_path / "server.log") as srv:
        for _ in range(rounds):
            with socket.create_connection(("127.0.0.1", srv.port)) as s:
                s.sendall(req * 2)
            time.sleep(0.2)
        text = httpx.get(f"http://127.0.0.1:{srv.port}/metrics", timeout=10).text
        log = srv.log_tail(100_000)
    assert "Traceback" not in log and "unhandled error" not in log, log[-3000:]
    samples = parse_metrics(text)
    assert metric(samples, "pete_request_duration_seconds_count", endpoint="/similarity", status="499") >= rounds
    assert not [k for k in samples if k.startswith("pete_request_duration_seconds_count") and 'status="5' in k]
    assert "pete_rejected_requests_total{" not in text  # no internal_error (nor anything else) counted
