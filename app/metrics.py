"""Prometheus metrics, defined once per app on the app's own ``CollectorRegistry``.

A per-app registry (rather than prometheus_client's global one) lets several apps live in one
process (tests) without duplicate-metric errors. The registry also carries the standard process
collector (``process_resident_memory_bytes``, CPU seconds, open fds) and platform collector
(``python_info``). All durations are in seconds, sizes in bytes.

Several worker processes (``PETE_WORKERS`` > 1): ``pete-serve`` points ``PROMETHEUS_MULTIPROC_DIR``
at an empty directory before the workers start, and prometheus-client's multiprocess mode keeps
every value in a file there; whichever worker answers /metrics renders all workers' values:
counters and histograms summed, ``pete_queue_depth`` summed over live workers, the high-water
marks, model figures and peak RSS as the maximum. The per-process collectors cannot be merged that
way, so in that mode ``process_resident_memory_bytes`` is a gauge summed over live workers
(refreshed at every forward pass and scrape) and ``python_info`` is omitted.
"""

from __future__ import annotations

import os
import resource
import sys

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               PlatformCollector, ProcessCollector, generate_latest, multiprocess)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768)


def peak_rss_bytes() -> float:
    """Peak resident set size of this process in bytes (``getrusage``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(peak if sys.platform == "darwin" else peak * 1024)


def rss_bytes() -> float:
    """Resident set size of this process now, in bytes (``/proc/self/statm``; the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return float(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, IndexError):
        return peak_rss_bytes()


def multiprocess_dir() -> str | None:
    """The prometheus-client multiprocess directory of this process, or None (one process)."""
    return os.environ.get(MULTIPROC_ENV) or os.environ.get(MULTIPROC_ENV.lower())


class Metrics:
    """Every metric the service exports, registered on ``self.registry``.

    Attributes (Prometheus names in brackets):
        request_duration [pete_request_duration_seconds{endpoint,status}]: HTTP request latency.
        queue_wait [pete_queue_wait_seconds]: per work item, enqueue to start of its batch.
        inference_duration [pete_inference_duration_seconds]: per batch, wall time of the compute.
        batch_size [pete_batch_size]: sequences per encoder forward pass.
        batch_tokens [pete_batch_tokens]: padded tokens (rows x longest row) per forward pass.
        queue_depth [pete_queue_depth]: work items waiting now.
        queue_depth_max [pete_queue_depth_max]: most work items ever waiting at once (high-water mark).
        rejected [pete_rejected_requests_total{reason}]: requests refused (4xx/5xx by the service).
        dropped [pete_dropped_items_total]: work items dropped before compute (client gone, timed out).
        batch_failures [pete_batch_failures_total]: batches whose compute raised.
        model_parameters [pete_model_parameters{part}]: parameter counts (total, embedding, ...).
        model_bytes [pete_model_bytes]: bytes of parameters and buffers (incl. a materialized table).
        peak_rss [pete_process_peak_rss_bytes]: peak resident memory of the process.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.multiprocess = multiprocess_dir() is not None
        r = self.registry
        self.rss = None
        if self.multiprocess:
            self.rss = Gauge("process_resident_memory_bytes", "Resident memory size in bytes, summed over the "
                             "live worker processes.", registry=r, multiprocess_mode="livesum")
        else:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
        self.request_duration = Histogram(
            "pete_request_duration_seconds", "HTTP request duration in seconds, by endpoint and status.",
            ["endpoint", "status"], buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram(
            "pete_queue_wait_seconds", "Seconds a work item waited in the queue before its batch started.",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.inference_duration = Histogram(
            "pete_inference_duration_seconds", "Seconds spent computing one batch (tokenize, encode, heads).",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram(
            "pete_batch_size", "Sequences per encoder forward pass.", buckets=_SIZE_BUCKETS, registry=r)
        self.batch_tokens = Histogram(
            "pete_batch_tokens", "Padded tokens (rows x longest row) per encoder forward pass.",
            buckets=_TOKEN_BUCKETS, registry=r)
        self.queue_depth = Gauge("pete_queue_depth", "Work items waiting in the batch queue.", registry=r,
                                 multiprocess_mode="livesum")
        self.queue_depth_max = Gauge(
            "pete_queue_depth_max", "Most work items ever waiting in the batch queue at once (high-water mark "
            "since start; never above the queue capacity).", registry=r, multiprocess_mode="max")
        self.rejected = Counter(
            "pete_rejected_requests", "Requests refused by the service, by reason.", ["reason"], registry=r)
        self.dropped = Counter(
            "pete_dropped_items", "Work items dropped before compute because their request was gone "
            "(client disconnected or timed out).", registry=r)
        self.batch_failures = Counter("pete_batch_failures", "Batches whose compute raised.", registry=r)
        self.model_parameters = Gauge(
            "pete_model_parameters", "Model parameter count, by part.", ["part"], registry=r, multiprocess_mode="max")
        self.model_bytes = Gauge(
            "pete_model_bytes", "Bytes held by the model's parameters and buffers.", registry=r,
            multiprocess_mode="max")
        self.peak_rss = Gauge(
            "pete_process_peak_rss_bytes", "Peak resident set size of the process in bytes (of the largest "
            "worker).", registry=r, multiprocess_mode="max")
        if self.multiprocess:
            self._refresh_memory()
        else:
            self.peak_rss.set_function(peak_rss_bytes)

    def _refresh_memory(self) -> None:
        """Multiprocess mode: store this worker's memory readings (function gauges cannot be merged)."""
        self.peak_rss.set(peak_rss_bytes())
        self.rss.set(rss_bytes())

    def observe_pass(self, sequences: int, padded_tokens: int) -> None:
        """Record one encoder forward pass: ``sequences`` rows, ``padded_tokens`` = rows x T.

        Thread-safe (called from the inference thread).
        """
        self.batch_size.observe(sequences)
        self.batch_tokens.observe(padded_tokens)
        if self.multiprocess:
            self._refresh_memory()

    def set_model(self, parameter_counts: dict[str, int], nbytes: int) -> None:
        """Publish the loaded model's parameter counts (by part) and its size in bytes."""
        for part, n in parameter_counts.items():
            self.model_parameters.labels(part=part).set(n)
        self.model_bytes.set(nbytes)

    def render(self) -> tuple[bytes, str]:
        """The registry in Prometheus text exposition format: (body, content type); in multiprocess
        mode, every worker's values merged."""
        if not self.multiprocess:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        self._refresh_memory()
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        return generate_latest(merged), CONTENT_TYPE_LATEST

    def worker_exit(self) -> None:
        """Multiprocess mode: drop this worker's live gauges (queue depth, RSS) from the merged view."""
        if self.multiprocess:
            multiprocess.mark_process_dead(os.getpid())
