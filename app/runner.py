"""The model-runner seam: what the service is given to turn a batch of work items into outputs.

The service (``app.service.Service``) knows a model only through this protocol; ``create_app``
takes a ``RunnerFactory`` (default: ``app.inference.TorchRunner.from_settings``). The torch backend,
the MiniLM baseline of the benchmark (``bench.teacher_backend``) and the fault-injection wrapper of
the reliability runs (``reliability.harness``) all plug in here; nothing patches a module.

Life cycle, as the service drives it: ``factory(settings, observe_pass)`` (cheap, on the event loop)
-> ``load()`` (in a worker thread) -> ``warmup()`` (on the inference thread) -> ``__call__(items)``
for every batch (on the inference thread, one batch at a time) -> ``info()`` / ``parameter_counts()``
(any time after ``load``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

from app.batching import WorkItem
from app.settings import Settings

PassObserver = Callable[[int, int], None]
"""``observe_pass(sequences, padded_tokens)``, called after each forward pass (metrics)."""


@dataclass(frozen=True)
class RunnerInfo:
    """What /info and the metrics report about the loaded model.

    ``dimensions``: width d of the vectors; ``max_tokens_per_text``: the token limit actually applied
    (special tokens included); ``model_bytes``: bytes held by parameters and buffers;
    ``quantization``: ``"none"`` or ``"int8"``.
    """

    embedding_kind: str
    nli_head: str
    dimensions: int
    max_tokens_per_text: int
    model_bytes: int
    materialized_embeddings: bool
    quantization: str


class ModelRunner(Protocol):
    """Turns a batch of ``WorkItem``s into one output each (``app.inference.EmbedOutput`` for
    ``"embed"``, ``NliOutput`` for ``"nli"``, or an exception instance that fails that item only)."""

    def load(self) -> None:
        """Load the model (blocking; the service calls it in a worker thread).

        Raises:
            FileNotFoundError, ValueError: the checkpoint is missing or unreadable.
        """

    def warmup(self) -> None:
        """Run a worst-case batch once and check the answers are finite.

        Raises:
            app.outputs.NonFiniteOutput: the model gives NaN/Inf (start-up must fail).
        """

    def __call__(self, items: list[WorkItem]) -> list[Any]:
        """One output per item, in order."""

    def parameter_counts(self) -> dict[str, int]:
        """``{"total", "embedding", "encoder", "nli_head"}`` parameter counts."""

    def info(self) -> RunnerInfo:
        """Facts about the loaded model (after ``load``)."""


RunnerFactory = Callable[[Settings, PassObserver | None], ModelRunner]
"""Builds a runner from the service settings and the forward-pass observer; must not load yet."""
