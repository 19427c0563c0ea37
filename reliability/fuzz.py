"""Fuzzing: schemathesis against the service's own /openapi.json, and Unicode edge cases.

    .venv/bin/python -m reliability.fuzz                      # ~1,900 generated cases + edge cases, ~1-2 min

Starts the real service (``pete-serve`` entry, tiny synthetic checkpoint unless ``--model``) on
127.0.0.1 and runs three schemathesis passes over every operation of its /openapi.json:

1. ``open``: no API key configured; positive and negative cases (``--cases-per-op`` each) for every
   POST route, the GET routes once each. Checks: not_a_server_error, status_code_conformance,
   content_type_conformance, response_headers_conformance, response_schema_conformance (and
   negative_data_rejection for negative cases).
2. ``keyed``: a second server with ``PETE_API_KEY`` set; positive cases sent with the key (in both
   declared schemes, so no generated credential rides along with the real one), plus
   schemathesis' ``ignored_auth`` check (re-sends each request without / with a wrong key and
   expects 401).
3. ``keyed_no_auth``: the same server, no key sent: no POST may answer 2xx.

Then sends the Unicode / size edge cases (``EDGE_TEXTS`` into every text field of every POST
route, plus ``RAW_BODIES``) to the service with its default limits and to one with raised limits
(``max_chars_per_text`` 2,000,000, ``max_body_bytes`` 8 MiB, so the 1 MB token and the 10,000
newlines reach the tokenizer and the model). Every response of every pass is checked for 5xx and
for stack traces / file paths (``common.find_leaks``).

Writes ``reliability/results/fuzz.json``; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from loadtest.results import machine_info, write_json
from loadtest.server import ServerProcess
from reliability.common import RESULTS_DIR, check, find_leaks, print_checks, resolve_model

MAX_FAILURES_KEPT = 20


# ---- schemathesis --------------------------------------------------------------------------------
def _checks(negative: bool, auth: bool) -> list:
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi import checks as oc

    out = [not_a_server_error, oc.status_code_conformance, oc.content_type_conformance,
           oc.response_headers_conformance, oc.response_schema_conformance]
    if negative:
        out.append(oc.negative_data_rejection)
    if auth:
        out.append(oc.ignored_auth)
    return out


@dataclass
class FuzzTally:
    """What the fuzzing saw: cases per operation and status, server errors, failures (the first
    ``MAX_FAILURES_KEPT`` kept), leaks of traces or paths."""

    by_op: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    failures: list[dict[str, str]] = field(default_factory=list)
    failure_count: int = 0
    leaks: list[dict[str, Any]] = field(default_factory=list)
    server_errors: int = 0
    cases: int = 0

    def fail(self, label: str, message: str) -> None:
        self.failure_count += 1
        if len(self.failures) < MAX_FAILURES_KEPT:
            self.failures.append({"operation": label, "message": message[:1500]})

    def record(self, label: str, response) -> None:
        """Count one response; note a 5xx and any leak in its body."""
        self.cases += 1
        self.by_op[label][str(response.status_code)] += 1
        if response.status_code >= 500:
            self.server_errors += 1
        hits = find_leaks(response.text)
        if hits:
            self.leaks.append({"operation": label, "status": response.status_code, "patterns": hits,
                               "body": response.text[:300]})

    def report(self, seconds: float) -> dict[str, Any]:
        return {"cases": self.cases,
                "by_operation": {k: dict(sorted(v.items())) for k, v in sorted(self.by_op.items())},
                "server_errors": self.server_errors, "failure_count": self.failure_count,
                "failures": self.failures, "leaks": self.leaks, "seconds": round(seconds, 2)}


def fuzz_schema(schema, *, cases_per_op: int, modes: tuple[str, ...] = ("positive", "negative"),
                headers: dict[str, str] | None = None, check_auth: bool = False,
                forbid_success_on_post: bool = False, derandomize: bool = False,
                seed: int | None = None) -> dict[str, Any]:
    """Run schemathesis-generated cases against every operation of ``schema``.

    Args:
        schema: from ``schemathesis.openapi.from_url`` / ``from_asgi``.
        cases_per_op: hypothesis ``max_examples`` per operation and mode (operations without
            parameters or body yield one case).
        headers: sent with every case (e.g. the API key).
        check_auth: also run schemathesis' ``ignored_auth`` (with ``headers`` holding a valid key).
        forbid_success_on_post: a 2xx from a POST operation is a failure (no key sent, key required).
    Returns:
        {"cases", "by_operation": {"POST /x positive": {status: n}}, "server_errors", "failures",
        "failure_count", "leaks", "seconds"}.
    """
    tally, start = FuzzTally(), time.perf_counter()
    for result in schema.get_all_operations():
        op = result.ok()
        has_input = op.method.upper() not in ("GET", "HEAD", "DELETE") or bool(list(op.iter_parameters()))
        for mode in modes:
            if mode == "negative" and not has_input:
                continue  # nothing to negate: hypothesis would report Unsatisfiable
            _fuzz_operation(op, mode, tally, max_examples=cases_per_op if has_input else 1, headers=headers,
                            check_auth=check_auth, forbid_success=forbid_success_on_post and op.method.upper() == "POST",
                            derandomize=derandomize, seed=seed)
    return tally.report(time.perf_counter() - start)


def _fuzz_operation(op, mode: str, tally: FuzzTally, *, max_examples: int, headers: dict[str, str] | None,
                    check_auth: bool, forbid_success: bool, derandomize: bool, seed: int | None) -> None:
    """Up to ``max_examples`` hypothesis cases of one operation in one generation mode, into ``tally``."""
    import hypothesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    label = f"{op.method.upper()} {op.path} {mode}"
    gen_mode = GenerationMode(mode)
    checks = _checks(gen_mode == GenerationMode.NEGATIVE, check_auth)

    @given(case=op.as_strategy(generation_mode=gen_mode))
    @settings(max_examples=max_examples, deadline=None, database=None, derandomize=derandomize,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate],
              report_multiple_bugs=False)
    def run_case(case) -> None:
        response = case.call(headers=headers)
        tally.record(label, response)
        if forbid_success and 200 <= response.status_code < 300:
            tally.fail(label, f"POST answered {response.status_code} without the API key")
        try:
            case.validate_response(response, checks=checks, headers=headers,
                                   transport_kwargs={"headers": headers} if headers else None)
        except BaseException as e:  # schemathesis' FailureGroup is a BaseExceptionGroup
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            tally.fail(label, str(e))

    try:
        (hypothesis.seed(seed)(run_case) if seed is not None else run_case)()
    except Unsatisfiable:
        pass


# ---- Unicode and size edge cases -----------------------------------------------------------------
# Text values as they appear *inside a JSON string literal*: escapes stay raw, so lone surrogates
# ("\ud800") reach the server exactly as a client would send them.
EDGE_TEXTS: dict[str, str] = {
    "nul_inside": r"a cat\u0000 sits",
    "nul_only": r"\u0000",
    "control_chars": r"\u0001\u0002\u0007\u001b[31m red \u007f",
    "lone_high_surrogate": r"a \ud800 b",
    "lone_low_surrogate": r"\udfff",
    "reversed_surrogates": r"\udc00\ud800",
    "high_surrogate_at_end": r"the dog \ud83d",
    "valid_surrogate_pair": r"a dog \ud83d\ude00",
    "rtl_marks": "\u200f\u202eplays the guitar\u202c\u200f",
    "rtl_override_only": "\u202e",
    "arabic_hebrew": "الرجل يعزف على الغيتار שלום",
    "cjk_devanagari": "一个男人在弹吉他 आदमी गिटार बजा रहा है",
    "emoji_zwj_family": "👩‍👩‍👧‍👦 plays 🏳️‍🌈 🧑🏽‍💻",
    "zero_width_joiner_only": "\u200d",
    "zero_width_space_only": "\u200b",
    "bom_inside": "\ufeffthe cat",
    "combining_marks_5000": "a" + "\u0301" * 5000,
    "one_1MB_token": "x" * 1_000_000,
    "newlines_10000": r"\n" * 10_000,
    "text_newlines_10000": "a" + r"\n" * 10_000 + "b",
    "max_chars_text": ("cat " * 2500)[:10_000],
}

ROUTE_TEMPLATES = {
    "/embeddings": '{{"input": ["{t}"]}}',
    "/v1/embeddings": '{{"input": "{t}"}}',
    "/similarity": '{{"pairs": [{{"text_a": "{t}", "text_b": "a dog runs"}}]}}',
    "/nli": '{{"pairs": [{{"premise": "{t}", "hypothesis": "a dog runs"}}]}}',
}

RAW_BODIES: dict[str, tuple[str, bytes]] = {
    "invalid_utf8": ("/embeddings", b'{"input": ["\xff\xfe cat"]}'),
    "overlong_utf8": ("/embeddings", b'{"input": ["\xc0\xaf"]}'),
    "cesu_surrogate_bytes": ("/embeddings", b'{"input": ["\xed\xa0\x80"]}'),
    "utf8_bom_prefix": ("/embeddings", b'\xef\xbb\xbf{"input": ["the cat"]}'),
    "surrogate_in_key": ("/similarity", b'{"pairs": [{"text_a": "a", "text_b": "b", "x\\ud800": "c"}]}'),
    "surrogate_as_top_key": ("/nli", b'{"pairs\\ud800": []}'),
    "nested_100000": ("/similarity", b"[" * 100_000 + b"]" * 100_000),
    "number_1e999": ("/embeddings", b'{"input": [1e999]}'),
    "nan_literal": ("/embeddings", b'{"input": [NaN]}'),
    "truncated_json": ("/nli", b'{"pairs": [{"premise": "a'),
    "empty_body": ("/similarity", b""),
    "json_null": ("/similarity", b"null"),
    "duplicate_keys": ("/embeddings", b'{"input": ["a"], "input": ["b"]}'),
}


def edge_cases() -> list[tuple[str, str, bytes]]:
    """(name, path, raw JSON body) for every edge text in every POST route, then the raw bodies."""
    out = []
    for name, text in EDGE_TEXTS.items():
        for path, tmpl in ROUTE_TEMPLATES.items():
            out.append((f"{name} {path}", path, tmpl.format(t=text).encode("utf-8", "surrogatepass")))
    out += [(name, path, body) for name, (path, body) in RAW_BODIES.items()]
    return out


def judge_edge(name: str, status: int, body: bytes) -> dict[str, Any]:
    """One edge-case response: ``ok`` when it is 200, or a 4xx with a JSON error body (``error`` and
    ``message``); never a 5xx, never a leak."""
    text = body.decode("utf-8", "replace")
    row: dict[str, Any] = {"case": name, "status": status}
    clear = False
    if 400 <= status < 500:
        try:
            err = json.loads(text)
            clear = isinstance(err, dict) and bool(err.get("error")) and bool(err.get("message"))
            row["error"] = err.get("error")
            if err.get("detail"):
                row["field"] = err["detail"][0].get("field")
        except ValueError:
            clear = False
    row["leaks"] = find_leaks(text)
    row["ok"] = (status == 200 or (400 <= status < 500 and clear)) and not row["leaks"]
    return row


def send_edge_cases(post: Callable[[str, bytes], tuple[int, bytes]]) -> list[dict[str, Any]]:
    """Send every edge case with ``post(path, body) -> (status, body)``; one judged row per case."""
    return [judge_edge(name, *post(path, body)) for name, path, body in edge_cases()]


# ---- the script ----------------------------------------------------------------------------------
def _live_post(port: int) -> Callable[[str, bytes], tuple[int, bytes]]:
    import asyncio

    from loadtest.http import request

    def post(path: str, body: bytes) -> tuple[int, bytes]:
        try:
            r = asyncio.run(request(port, "POST", path, body, timeout=60))
            return r.status, r.body
        except Exception as e:  # a dropped connection is a crash as far as the client can tell
            return 0, f"{type(e).__name__}".encode()

    return post


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="auto | bundled | tiny | reference | checkpoint dir (default tiny)")
    ap.add_argument("--cases-per-op", type=int, default=200, help="cases per POST operation and mode (open pass)")
    ap.add_argument("--keyed-cases-per-op", type=int, default=50, help="cases per POST operation (keyed passes)")
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--min-cases", type=int, default=1000, help="fail when fewer cases were generated")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "fuzz.json")
    args = ap.parse_args(argv)

    import schemathesis

    tmp = tempfile.TemporaryDirectory(prefix="pete-fuzz-")  # removed at exit (checkpoints, server logs)
    work = Path(tmp.name)
    model, model_desc = resolve_model(args.model, work)
    out: dict[str, Any] = {"model": model_desc, "machine": machine_info(), "schemathesis": schemathesis.__version__,
                           "seed": args.seed, "cases_per_op": args.cases_per_op}
    t0 = time.perf_counter()
    key = "reliability-fuzz-key"
    with ServerProcess(model, log_path=work / "open.log") as srv:
        schema = schemathesis.openapi.from_url(f"http://127.0.0.1:{srv.port}/openapi.json")
        out["operations"] = [f"{r.ok().method.upper()} {r.ok().path}" for r in schema.get_all_operations()]
        print(f"open pass: {len(out['operations'])} operations, {args.cases_per_op} cases per POST op and mode ...")
        out["open"] = fuzz_schema(schema, cases_per_op=args.cases_per_op, seed=args.seed)
        print("edge cases (default limits) ...")
        out["edge_default_limits"] = send_edge_cases(_live_post(srv.port))
    with ServerProcess(model, env={"PETE_API_KEY": key}, log_path=work / "keyed.log") as srv:
        schema = schemathesis.openapi.from_url(f"http://127.0.0.1:{srv.port}/openapi.json")
        print("keyed pass ...")
        out["keyed"] = fuzz_schema(schema, cases_per_op=args.keyed_cases_per_op, modes=("positive",),
                                   headers={"Authorization": f"Bearer {key}", "X-API-Key": key}, check_auth=True,
                                   seed=args.seed)
        out["keyed_no_auth"] = fuzz_schema(schema, cases_per_op=args.keyed_cases_per_op, modes=("positive", "negative"),
                                           forbid_success_on_post=True, seed=args.seed + 1)
    with ServerProcess(model, env={"PETE_MAX_CHARS_PER_TEXT": "2000000", "PETE_MAX_BODY_BYTES": str(8 << 20)},
                       log_path=work / "permissive.log") as srv:
        print("edge cases (raised limits) ...")
        out["edge_raised_limits"] = send_edge_cases(_live_post(srv.port))
    out["seconds"] = round(time.perf_counter() - t0, 1)

    passes = [out["open"], out["keyed"], out["keyed_no_auth"]]
    edges = out["edge_default_limits"] + out["edge_raised_limits"]
    total = sum(p["cases"] for p in passes)
    out["total_cases"] = total
    out["checks"] = {
        "generated_cases": check(total >= args.min_cases, total, f">= {args.min_cases}"),
        "schemathesis_failures": check(sum(p["failure_count"] for p in passes) == 0,
                                       sum(p["failure_count"] for p in passes), 0),
        "fuzz_5xx": check(sum(p["server_errors"] for p in passes) == 0, sum(p["server_errors"] for p in passes), 0),
        "edge_cases_200_or_clear_4xx": check(all(r["ok"] for r in edges), f"{sum(r['ok'] for r in edges)}/{len(edges)}",
                                             "all"),
        "edge_5xx_or_dropped": check(not any(r["status"] >= 500 or r["status"] == 0 for r in edges),
                                     sum(r["status"] >= 500 or r["status"] == 0 for r in edges), 0),
        "leaks": check(not any(p["leaks"] for p in passes) and not any(r["leaks"] for r in edges),
                       sum(len(p["leaks"]) for p in passes) + sum(bool(r["leaks"]) for r in edges), 0),
    }
    write_json(args.out, out)
    print(f"{total} schemathesis cases in {out['seconds']} s (open {out['open']['cases']}, keyed "
          f"{out['keyed']['cases']}, keyed without key {out['keyed_no_auth']['cases']}); "
          f"{len(edges)} edge cases -> {args.out}")
    ok = print_checks(out["checks"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
