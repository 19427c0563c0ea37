"""What the reliability runs share beyond the load-testing tools (``loadtest``): where results go,
which checkpoint to serve, leak patterns, and PASS/FAIL checks."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from loadtest.fixtures import SIZES, VOCAB, random_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "reliability" / "results"
BUNDLED_CHECKPOINT = REPO_ROOT / "model" / "checkpoints" / "default"
HARNESS_APP = "reliability.harness:create_app"  # the service plus the RELIABILITY_* fault switches

# Stack traces and file system paths must never reach a client.
LEAK_PATTERNS = [
    re.compile(r"Traceback \(most recent call last\)"),
    re.compile(r'File "[^"]+", line \d+'),
    re.compile(r"(?:/[\w.@+-]+){2,}\.py\b"),
    re.compile(r"site-packages|dist-packages"),
    re.compile(re.escape(str(REPO_ROOT))),
    re.compile(r"/(?:home|root|usr|opt|srv|tmp|work)/[\w.-]+/"),
]


def find_leaks(text: str) -> list[str]:
    """The leak patterns (stack trace, file path) that match ``text``."""
    return [p.pattern for p in LEAK_PATTERNS if p.search(text)]


def resolve_model(spec: str, workdir: str | Path) -> tuple[Path, str]:
    """``spec``: "auto" (the bundled checkpoint when present, else a synthetic "reference" one),
    "bundled", "tiny", "reference", or a checkpoint directory. Returns (path, description).

    Raises:
        FileNotFoundError: no checkpoint where ``spec`` says.
    """
    workdir = Path(workdir)
    if spec == "auto":
        spec = "bundled" if (BUNDLED_CHECKPOINT / "config.json").is_file() else "reference"
    if spec == "bundled":
        if not (BUNDLED_CHECKPOINT / "config.json").is_file():
            raise FileNotFoundError(f"no bundled checkpoint at {BUNDLED_CHECKPOINT}")
        return BUNDLED_CHECKPOINT, "bundled checkpoint model/checkpoints/default"
    if spec in SIZES:
        path = random_checkpoint(workdir / f"ckpt-{spec}", spec)
        return path, f"synthetic {spec} checkpoint ({SIZES[spec]['dim']}-d, {SIZES[spec]['n_layers']} layers, " \
                     f"{len(VOCAB)}-word vocab, random weights)"
    path = Path(spec)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return path, f"checkpoint {path}"


def check(ok: bool, value: Any, limit: Any) -> dict[str, Any]:
    """One check's record: passed or not, the measured value and the limit it was held to."""
    return {"ok": bool(ok), "value": value, "limit": limit}


def print_checks(checks: dict[str, dict[str, Any]]) -> bool:
    """Print each check as PASS/FAIL with its measured value; True when all pass."""
    for name, c in checks.items():
        print(f"  {'PASS' if c['ok'] else 'FAIL'}  {name}: {c.get('value')} (limit {c.get('limit')})")
    return all(c["ok"] for c in checks.values())
