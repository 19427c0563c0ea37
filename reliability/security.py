"""Security checks: API key on every POST route, open routes, body limit before parsing, key
comparison, container user, dependency audit.

    .venv/bin/python -m reliability.security                  # ~15 s (pip-audit needs the package index)

Against the real service (``pete-serve`` entry, tiny synthetic checkpoint) with ``PETE_API_KEY`` set:

- every POST operation of /openapi.json answers 401 to each ``BAD_CREDENTIALS`` variant (no key,
  wrong key, empty, other scheme, key + suffix, prefix, other case, key in the query string ...)
  and 200 to the right key (``Authorization: Bearer`` and ``X-API-Key``); the key appears in no
  response;
- every other route is a GET and is in ``OPEN_ROUTES`` (the documented open set), answering
  without a key;
- the body limit comes before JSON parsing and before auth: an oversize body of invalid JSON with
  Content-Length gets 413 (not 422/401); a chunked body without Content-Length over the limit gets
  413; a Content-Length over the limit gets 413 before the body is sent;

and, without a server: ``app/auth.py`` compares keys with ``hmac.compare_digest`` only; the
top-level Dockerfile's final stage runs as a non-root USER; ``pip-audit`` over requirements.lock
(findings must be fixed or listed in ``ACCEPTED_VULNS`` and the report).

Writes ``reliability/results/security.json``; exits 1 when a check fails (an audit that could not
run is reported, not failed).
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import inspect
import json
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from loadtest.http import HOST, request
from loadtest.results import machine_info, write_json
from loadtest.server import ServerProcess
from reliability.common import REPO_ROOT, RESULTS_DIR, check, print_checks, resolve_model

# GET routes that need no key, on purpose: probes and scrapers must work without it (app/auth.py),
# and FastAPI's schema and docs pages (they describe the API, they do not use it).
OPEN_ROUTES = {"/healthz", "/readyz", "/info", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}

# A valid body for every POST route; a new POST route must be added here (the tests fail otherwise).
SAMPLE_BODIES = {
    "/similarity": {"pairs": [{"text_a": "a man plays the guitar", "text_b": "a man plays music"}]},
    "/nli": {"pairs": [{"premise": "a dog runs in the park", "hypothesis": "a dog sleeps"}]},
    "/embeddings": {"input": ["a cat sits on the mat"]},
    "/v1/embeddings": {"input": "a cat sits on the mat", "model": "default"},
}

# pip-audit findings accepted for now: {vulnerability id: why}. Keep in step with REPORT.md.
ACCEPTED_VULNS: dict[str, str] = {}


def bad_credentials(key: str) -> dict[str, dict[str, str]]:
    """Header sets that must all be refused (401) for a configured ``key``."""
    return {
        "none": {},
        "wrong_bearer": {"Authorization": "Bearer wrong-key"},
        "wrong_x_api_key": {"X-API-Key": "wrong-key"},
        "empty_bearer": {"Authorization": "Bearer "},
        "empty_x_api_key": {"X-API-Key": ""},
        "scheme_only": {"Authorization": "Bearer"},
        "basic_scheme": {"Authorization": f"Basic {key}"},
        "raw_key_no_scheme": {"Authorization": key},
        "key_prefix": {"Authorization": f"Bearer {key[:-1]}"},
        "key_suffix": {"X-API-Key": key + "x"},
        "key_upper": {"X-API-Key": key.upper()},
        "key_padded": {"X-API-Key": f" {key}  x"},
        "other_header": {"Api-Key": key},
        "cookie": {"Cookie": f"api_key={key}"},
        "wrong_bearer_right_nothing_else": {"Authorization": "Bearer x", "X-API-Key": "y"},
    }


GOOD_CREDENTIALS = {
    "bearer": lambda key: {"Authorization": f"Bearer {key}"},
    "x_api_key": lambda key: {"X-API-Key": key},
    "lowercase_scheme": lambda key: {"Authorization": f"bearer {key}"},
    "one_right_one_wrong": lambda key: {"Authorization": "Bearer wrong", "X-API-Key": key},
}


def iter_routes(routes, prefix: str = "") -> list[tuple[str, frozenset[str], Any]]:
    """(path, methods, route) for every endpoint under ``routes`` (``app.routes``), descending into
    included routers (FastAPI keeps them nested as ``_IncludedRouter``) and mounts."""
    out = []
    for r in routes:
        if hasattr(r, "original_router"):  # fastapi: router.include_router(...)
            ctx = getattr(r, "include_context", None)
            out += iter_routes(r.original_router.routes, prefix + (getattr(ctx, "prefix", "") or ""))
        elif getattr(r, "methods", None) is None and hasattr(r, "routes"):  # starlette Mount
            out += iter_routes(r.routes, prefix + getattr(r, "path", ""))
        else:
            out.append((prefix + r.path, frozenset(getattr(r, "methods", None) or ()), r))
    return out


# ---- static checks -----------------------------------------------------------------------------------
def key_comparison_findings() -> dict[str, Any]:
    """How ``app.auth.key_matches`` (the service's one key check, used by
    ``app.middleware.ApiKeyMiddleware``) compares keys: calls of ``hmac.compare_digest`` and any
    ``==`` / ``!=`` / ``in`` comparison in the function (there must be none on the key)."""
    import app.auth

    src = inspect.getsource(app.auth.key_matches)
    tree = ast.parse(src)
    compare_digest = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == "hmac.compare_digest"]
    plain = [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Compare)
             and any(isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) for op in n.ops)]
    return {"compare_digest_calls": len(compare_digest), "plain_comparisons": plain,
            "startswith_calls": len(re.findall(r"\.startswith\(|\.endswith\(", src))}


def dockerfile_user(path: Path = REPO_ROOT / "Dockerfile") -> dict[str, Any] | None:
    """The USER of the final stage of ``path`` (None when there is no Dockerfile).

    Returns {"stage": FROM line, "user": the last USER value or None, "non_root": bool}.
    """
    if not path.is_file():
        return None
    text = re.sub(r"\\\r?\n", " ", path.read_text())  # join continuation lines
    stage, user = None, None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            stage, user = rest.strip(), None  # USER does not carry over into a new stage
        elif word.upper() == "USER":
            user = rest.strip()
    name = (user or "").split(":")[0].strip()
    return {"stage": stage, "user": user, "non_root": bool(name) and name not in ("root", "0")}


def run_pip_audit(lock: Path = REPO_ROOT / "requirements.lock", timeout_s: float = 300.0) -> dict[str, Any]:
    """``pip-audit -r lock --no-deps --disable-pip -f json``. ``status``: ``ok`` (every pinned package
    audited, nothing unaccepted found), ``vulnerable``, ``missing_tool``, ``no_lock``,
    ``unreachable`` (the index or the vulnerability service could not be reached),
    ``not_audited`` (the index answered but without per-release data: every package was skipped)."""
    if not lock.is_file():
        return {"status": "no_lock", "reason": f"{lock.name} not found"}
    try:
        import pip_audit  # noqa: F401
    except ImportError:
        return {"status": "missing_tool", "reason": "pip-audit is not installed (.venv/bin/pip install pip-audit)"}
    cmd = [sys.executable, "-m", "pip_audit", "-r", str(lock), "--no-deps", "--disable-pip", "--progress-spinner",
           "off", "-f", "json", "--timeout", "20"]
    for vid in ACCEPTED_VULNS:
        cmd += ["--ignore-vuln", vid]
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=REPO_ROOT)
    except subprocess.TimeoutExpired:
        return {"status": "unreachable", "reason": f"pip-audit took more than {timeout_s:.0f} s"}
    out: dict[str, Any] = {"command": "pip-audit " + " ".join(cmd[3:]), "exit_code": proc.returncode,
                           "seconds": round(time.perf_counter() - t, 1)}
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        err = (proc.stderr or proc.stdout).strip().splitlines()
        out.update(status="unreachable", reason=(err[-1] if err else "no output")[:300])
        return out
    deps = report.get("dependencies", [])
    skipped = [d for d in deps if d.get("skip_reason")]
    vulns = [{"package": d["name"], "version": d.get("version"), "id": v.get("id"), "fix_versions": v.get("fix_versions"),
              "aliases": v.get("aliases")} for d in deps for v in d.get("vulns", [])]
    out.update(packages=len(deps), audited=len(deps) - len(skipped), skipped=len(skipped),
               skip_reasons=sorted({d["skip_reason"].split(":")[0] for d in skipped}), vulns=vulns,
               accepted=ACCEPTED_VULNS)
    if vulns:
        out["status"] = "vulnerable"
    elif deps and len(skipped) == len(deps):
        out.update(status="not_audited", reason=f"every one of the {len(deps)} pinned packages was skipped "
                   f"({out['skip_reasons'][0] if out['skip_reasons'] else '?'}): the index reached serves no per-release data")
    else:
        out["status"] = "ok"
    return out


# ---- against a live server -----------------------------------------------------------------------------
def _raw_exchange(port: int, head: bytes, body_parts: list[bytes], read_timeout: float = 10.0) -> tuple[int, bytes]:
    """Send ``head`` then ``body_parts`` on a plain socket (stops sending once a response arrives or
    the server closes), return (status, response bytes)."""
    with socket.create_connection((HOST, port), timeout=read_timeout) as s:
        s.sendall(head)
        for part in body_parts:
            try:
                s.sendall(part)
            except OSError:  # the server answered and closed before the whole body was sent
                break
        s.settimeout(read_timeout)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
    return status, data


def body_limit_cases(port: int, limit: int, path: str = "/similarity", key: str | None = None) -> dict[str, dict[str, Any]]:
    """Oversize bodies against a live server whose ``max_body_bytes`` is ``limit`` (sent without the
    key: the limit must come first); then a small chunked body, with ``key`` when given."""
    junk = b"{" + b"x" * (limit + 100)  # not JSON
    hp = f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
    cases = {}
    status, data = _raw_exchange(port, (hp + f"Content-Length: {len(junk)}\r\n\r\n").encode(), [junk])
    cases["oversize_invalid_json_with_content_length"] = {"status": status, "expected": 413}
    chunks = [f"{len(junk[i:i + 4096]):x}\r\n".encode() + junk[i:i + 4096] + b"\r\n" for i in range(0, len(junk), 4096)]
    status, data = _raw_exchange(port, (hp + "Transfer-Encoding: chunked\r\n\r\n").encode(), chunks + [b"0\r\n\r\n"])
    cases["oversize_chunked_without_content_length"] = {"status": status, "expected": 413}
    status, data = _raw_exchange(port, (hp + f"Content-Length: {limit * 100}\r\n\r\n").encode(), [b'{"pairs": ['])
    cases["declared_oversize_partial_body"] = {"status": status, "expected": 413}
    small = json.dumps(SAMPLE_BODIES[path]).encode() if path in SAMPLE_BODIES else b"{}"
    chunks = [f"{len(small[i:i + 7]):x}\r\n".encode() + small[i:i + 7] + b"\r\n" for i in range(0, len(small), 7)]
    auth = f"X-API-Key: {key}\r\n" if key else ""
    status, data = _raw_exchange(port, (hp + auth + "Transfer-Encoding: chunked\r\n\r\n").encode(),
                                 chunks + [b"0\r\n\r\n"])
    cases["small_chunked_body_still_parsed"] = {"status": status, "expected": 200}
    for c in cases.values():
        c["ok"] = c["status"] == c["expected"]
    return cases


async def auth_sweep(port: int, key: str) -> dict[str, Any]:
    """Every route of the live server's /openapi.json against the credential variants."""
    spec = json.loads((await request(port, "GET", "/openapi.json")).body)
    routes = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    post = sorted(p for m, p in routes if m == "POST")
    other = sorted(f"{m} {p}" for m, p in routes if m not in ("POST", "GET"))
    gets = sorted(p for m, p in routes if m == "GET")
    results: dict[str, Any] = {"post_routes": post, "get_routes": gets, "other_methods": other, "post": {}, "get": {}}
    leaks = []
    for path in post:
        body = json.dumps(SAMPLE_BODIES.get(path, {})).encode()
        row = {}
        for name, headers in bad_credentials(key).items():
            r = await request(port, "POST", path, body, headers)
            row[name] = r.status
            if key.encode() in r.body:
                leaks.append(f"{path} {name}")
        r = await request(port, "POST", f"{path}?api_key={key}", body)
        row["key_in_query"] = r.status
        for name, make in GOOD_CREDENTIALS.items():
            r = await request(port, "POST", path, body, make(key))
            row[f"good:{name}"] = r.status
        results["post"][path] = row
    for path in gets + ["/docs", "/redoc", "/docs/oauth2-redirect"]:
        r = await request(port, "GET", path)
        results["get"][path] = r.status
        if key.encode() in r.body:
            leaks.append(f"GET {path}")
    results["key_leaks"] = leaks
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="auto | bundled | tiny | reference | checkpoint dir (default tiny)")
    ap.add_argument("--skip-audit", action="store_true", help="do not run pip-audit")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "security.json")
    args = ap.parse_args(argv)

    tmp = tempfile.TemporaryDirectory(prefix="pete-security-")  # removed at exit (checkpoints, server logs)
    work = Path(tmp.name)
    model, model_desc = resolve_model(args.model, work)
    key, limit = "reliability-s3cret-key", 4096
    t0 = time.perf_counter()
    with ServerProcess(model, env={"PETE_API_KEY": key, "PETE_MAX_BODY_BYTES": str(limit)},
                       log_path=work / "server.log") as srv:
        sweep = asyncio.run(auth_sweep(srv.port, key))
        limits = body_limit_cases(srv.port, limit, key=key)
    cmp_ = key_comparison_findings()
    docker = dockerfile_user()
    audit = {"status": "skipped"} if args.skip_audit else run_pip_audit()
    bad = {p: {k: v for k, v in row.items() if not k.startswith("good:") and v != 401} for p, row in sweep["post"].items()}
    good = {p: {k: v for k, v in row.items() if k.startswith("good:") and v != 200} for p, row in sweep["post"].items()}
    checks = {
        "every_post_route_refuses_bad_credentials": check(not any(bad.values()), bad, "401 for every variant"),
        "right_key_accepted": check(not any(good.values()), good, 200),
        "only_get_routes_are_open_and_documented": check(
            not sweep["other_methods"] and set(sweep["get_routes"]) <= OPEN_ROUTES
            and all(v == 200 for v in sweep["get"].values()), sweep["get"], sorted(OPEN_ROUTES)),
        "key_never_echoed": check(not sweep["key_leaks"], sweep["key_leaks"], []),
        "constant_time_comparison": check(cmp_["compare_digest_calls"] >= 1 and not cmp_["plain_comparisons"]
                                          and not cmp_["startswith_calls"], cmp_, "hmac.compare_digest only"),
        "body_limit_before_parsing": check(all(c["ok"] for c in limits.values()),
                                           {k: c["status"] for k, c in limits.items()}, "413"),
        "container_non_root": check(docker is None or docker["non_root"], docker, "USER not root"),
        "dependency_audit": check(audit["status"] in ("ok", "not_audited", "unreachable", "skipped", "missing_tool",
                                                       "no_lock"), audit["status"], "no unaccepted finding"),
    }
    out = {"model": model_desc, "machine": machine_info(), "auth_sweep": sweep, "body_limit": limits,
           "key_comparison": cmp_, "dockerfile": docker, "pip_audit": audit, "checks": checks,
           "seconds": round(time.perf_counter() - t0, 1)}
    write_json(args.out, out)
    print(f"pip-audit: {audit['status']} {audit.get('reason', '')} -> {args.out}")
    ok = print_checks(checks)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
