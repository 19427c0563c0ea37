"""Prometheus metrics, defined once per app on the app's own ``CollectorRegistry``.

A per-app registry (rather than prometheus_client's global one) lets several apps live in one
process (tests) without duplicate-metric errors. The registry also carries the standard process
collector (``process_resident_memory_bytes``, CPU seconds, open fds) and platform collector
(``python_info``). All durations are in seconds, sizes in bytes.
"""

from __future__ import annotations

import resource
import sys

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               PlatformCollector, ProcessCollector, generate_latest)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768)


def peak_rss_bytes() -> float:
    """Peak resident set size of this process in bytes (``getrusage``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(peak if sys.platform == "darwin" else peak * 1024)


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
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        r = self.registry
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
        self.queue_depth = Gauge("pete_queue_depth", "Work items waiting in the batch queue.", registry=r)
        self.queue_depth_max = Gauge(
            "pete_queue_depth_max", "Most work items ever waiting in the batch queue at once (high-water mark "
            "since start; never above the queue capacity).", registry=r)
        self.rejected = Counter(
            "pete_rejected_requests", "Requests refused by the service, by reason.", ["reason"], registry=r)
        self.dropped = Counter(
            "pete_dropped_items", "Work items dropped before compute because their request was gone "
            "(client disconnected or timed out).", registry=r)
        self.batch_failures = Counter("pete_batch_failures", "Batches whose compute raised.", registry=r)
        self.model_parameters = Gauge(
            "pete_model_parameters", "Model parameter count, by part.", ["part"], registry=r)
        self.model_bytes = Gauge(
            "pete_model_bytes", "Bytes held by the model's parameters and buffers.", registry=r)
        self.peak_rss = Gauge(
            "pete_process_peak_rss_bytes", "Peak resident set size of the process in bytes.", registry=r)
        self.peak_rss.set_function(peak_rss_bytes)

    def observe_pass(self, sequences: int, padded_tokens: int) -> None:
        """Record one encoder forward pass: ``sequences`` rows, ``padded_tokens`` = rows x T.

        Thread-safe (called from the inference thread).
        """
        self.batch_size.observe(sequences)
        self.batch_tokens.observe(padded_tokens)

    def set_model(self, parameter_counts: dict[str, int], nbytes: int) -> None:
        """Publish the loaded model's parameter counts (by part) and its size in bytes."""
        for part, n in parameter_counts.items():
            self.model_parameters.labels(part=part).set(n)
        self.model_bytes.set(nbytes)

    def render(self) -> tuple[bytes, str]:
        """The registry in Prometheus text exposition format: (body, content type)."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
