"""Statistics of load runs: percentiles and latency summaries."""

from __future__ import annotations

import math
from typing import Iterable, Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0 <= q <= 100) with linear interpolation between closest ranks
    (numpy's default "linear" method). NaN for an empty sequence.

    Raises:
        ValueError: q outside [0, 100].
    """
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def latency_ms(values_s: Iterable[float]) -> dict[str, float]:
    """Latencies in seconds -> {"count", "mean", "p50", "p90", "p95", "p99", "p99.9", "max"} in
    milliseconds, rounded to the microsecond (only "count" for no values)."""
    v = [x * 1000.0 for x in values_s]
    out: dict[str, float] = {"count": len(v)}
    if v:
        out["mean"] = sum(v) / len(v)
        for q in (50, 90, 95, 99, 99.9):
            out[f"p{q:g}"] = percentile(v, q)
        out["max"] = max(v)
    return {k: round(x, 3) if isinstance(x, float) else x for k, x in out.items()}
