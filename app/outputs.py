"""What a model runner returns per work item, and the plan of a batch: which sequences a batch of
work items asks the encoder for and how the results map back. No torch: every backend shares it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from app.batching import WorkItem
from model.config import NLI_LABELS


class NonFiniteOutput(RuntimeError):
    """The model produced NaN or Inf for this item (corrupt weights, or a numeric overflow): the item
    fails (500), never a ``null`` in a 200."""


@dataclass(frozen=True)
class EmbedOutput:
    """Output of an ``"embed"`` item: ``vector`` (d,) float32 (not normalised), ``truncated`` (the text
    was cut to the token limit), ``tokens`` (tokens encoded, special tokens included)."""

    vector: np.ndarray
    truncated: bool
    tokens: int


@dataclass(frozen=True)
class NliOutput:
    """Output of an ``"nli"`` item: ``probabilities`` (3,) float32 in ``NLI_LABELS`` order, summing to
    1; ``truncated``: the premise or the hypothesis was cut; ``tokens``: tokens encoded."""

    probabilities: np.ndarray
    truncated: bool
    tokens: int


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two (d,) vectors in [-1, 1], computed in float64; 0.0 for a zero vector."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    denom = max(float(np.linalg.norm(a64) * np.linalg.norm(b64)), 1e-12)
    return float(np.clip(np.dot(a64, b64) / denom, -1.0, 1.0))


def nli_label(probabilities: np.ndarray) -> str:
    """The most probable label of a (3,) probability vector in ``NLI_LABELS`` order."""
    return NLI_LABELS[int(np.argmax(probabilities))]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (B, k) logits, float32."""
    z = logits.astype(np.float32) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass
class BatchPlan:
    """The sequences a batch of work items needs encoded.

    ``texts``: sequences encoded alone (texts to embed, and both sides of every NLI pair when the
    NLI head reads them ``separate``ly); ``pairs``: NLI pairs encoded jointly (cross head);
    ``slot[i]``: where item i's (first) sequence is in ``texts`` or ``pairs``; ``nli``: the indices of
    the NLI items.
    """

    texts: list[str]
    pairs: list[tuple[str, str]]
    slot: list[int]
    nli: list[int]
    separate: bool

    @classmethod
    def of(cls, items: Sequence[WorkItem], separate: bool) -> "BatchPlan":
        """Plan ``items``; ``separate``: the NLI head reads premise and hypothesis encoded alone.

        Raises:
            ValueError: an item of an unknown kind.
        """
        plan = cls([], [], [], [], separate)
        for i, it in enumerate(items):
            if it.kind == "embed" or (separate and it.kind == "nli"):
                plan.slot.append(len(plan.texts))
                plan.texts.append(it.text)
                if it.kind == "nli":
                    plan.texts.append(it.text_pair)
            elif it.kind == "nli":
                plan.slot.append(len(plan.pairs))
                plan.pairs.append((it.text, it.text_pair))
            else:
                raise ValueError(f"unknown work item kind {it.kind!r}")
            if it.kind == "nli":
                plan.nli.append(i)
        return plan

    def nli_sides(self) -> tuple[list[int], list[int]]:
        """Rows of ``texts`` holding the premises and the hypotheses of the NLI items (separate heads)."""
        first = [self.slot[i] for i in self.nli]
        return first, [s + 1 for s in first]

    def outputs(self, items: Sequence[WorkItem], vectors: np.ndarray | None, text_truncated: Sequence[bool],
                text_lengths: Sequence[int], pair_truncated: Sequence[bool], pair_lengths: Sequence[int],
                probabilities: np.ndarray | None) -> list[EmbedOutput | NliOutput | NonFiniteOutput]:
        """One output per item, in order. ``vectors`` (len(texts), d) float32; ``probabilities``
        (len(nli), 3) float32 in ``nli`` order. An item whose output is not finite gets a
        ``NonFiniteOutput`` instead (the batcher fails that item only)."""
        probs = {i: probabilities[k] for k, i in enumerate(self.nli)}
        out: list[EmbedOutput | NliOutput | NonFiniteOutput] = []
        for i, it in enumerate(items):
            s = self.slot[i]
            if it.kind == "embed":
                o = EmbedOutput(np.array(vectors[s], dtype=np.float32), text_truncated[s], text_lengths[s])
            elif self.separate:
                o = NliOutput(probs[i], text_truncated[s] or text_truncated[s + 1],
                              text_lengths[s] + text_lengths[s + 1])
            else:
                o = NliOutput(probs[i], pair_truncated[s], pair_lengths[s])
            finite = np.isfinite(o.vector if it.kind == "embed" else o.probabilities).all()
            out.append(o if finite else NonFiniteOutput(f"non-finite {it.kind} output"))
        return out


def length_chunks(order: Sequence[int], lengths: Sequence[int], max_rows: int, max_padded_tokens: int,
                  max_padding: float | None = None) -> Iterator[list[int]]:
    """Split rows ``order`` (ascending length) greedily into forward passes of at most ``max_rows``
    rows and ``max_padded_tokens`` padded tokens (rows x longest row); a single longer row still
    gets its own pass. ``max_padding``: also start a new pass when padding would exceed this
    fraction of the pass's tokens (for an encoder that computes padding)."""
    chunk: list[int] = []
    real = 0  # real tokens in the chunk
    for i in order:
        rows = len(chunk) + 1
        padded = rows * lengths[i]
        if chunk and (rows > max_rows or padded > max_padded_tokens
                      or (max_padding is not None and padded - real - lengths[i] > max_padding * padded)):
            yield chunk
            chunk, real = [], 0
        chunk.append(i)
        real += lengths[i]
    if chunk:
        yield chunk


def warmup_items(max_tokens: int, max_batch_size: int) -> list[WorkItem]:
    """A worst-case batch: ``max_batch_size`` texts at the token limit to embed, as many NLI pairs."""
    long_text = " ".join(["a"] * max_tokens)
    return [WorkItem("embed", long_text) for _ in range(max_batch_size)] + \
        [WorkItem("nli", long_text, long_text) for _ in range(max_batch_size)]


def check_answers(compute, dim: int) -> None:
    """Readiness that checks answers: ``compute`` (items -> outputs) gives finite outputs of the
    expected shapes (vector (``dim``,), probabilities (3,) summing to 1) for a plain sentence and an
    NLI pair.

    Raises:
        NonFiniteOutput: NaN or Inf (e.g. a checkpoint with NaN weights).
        RuntimeError: an output of the wrong shape.
    """
    text = "A man is playing a guitar."
    emb, nli = compute([WorkItem("embed", text), WorkItem("nli", text, "Someone plays music.")])
    for o in (emb, nli):
        if isinstance(o, NonFiniteOutput):
            raise NonFiniteOutput("the model gives NaN/Inf for a plain sentence: the checkpoint's weights are "
                                  "corrupt (non-finite)")
    if emb.vector.shape != (dim,) or nli.probabilities.shape != (3,) or abs(float(nli.probabilities.sum()) - 1) > 1e-3:
        raise RuntimeError(f"unexpected output shapes: vector {emb.vector.shape}, probabilities {nli.probabilities.shape}")
