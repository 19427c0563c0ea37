"""Prometheus text exposition: parse a /metrics page, read a series summed over labels."""

from __future__ import annotations

import math
import re

from loadtest.http import request

_SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition -> {"name{labels}": value} (labels as exposed; comments skipped)."""
    out = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            try:
                out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
            except ValueError:
                pass
    return out


def metric(samples: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the series of ``name`` whose labels include ``labels`` (all of them when none is given;
    0.0 when no series matches)."""
    total = 0.0
    for key, value in samples.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


def bucket_fraction(samples: dict[str, float], name: str, le: str, **labels: str) -> float:
    """Fraction of a histogram's observations at or under the bucket bound ``le`` (NaN for none)."""
    total = metric(samples, name + "_count", **labels)
    return metric(samples, name + "_bucket", le=le, **labels) / total if total else math.nan


async def scrape(port: int) -> dict[str, float]:
    """GET /metrics of the service on 127.0.0.1:``port``, parsed (``parse_metrics``)."""
    r = await request(port, "GET", "/metrics", timeout=10)
    return parse_metrics(r.body.decode())
