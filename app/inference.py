"""Model side of a batch: tokenizer -> encoder -> head, on the inference thread.

``TorchRunner`` is the torch backend of the model-runner seam (``app.runner.ModelRunner``) and the
batcher's ``compute``: it turns a list of ``WorkItem``s into one output each.
Texts to embed (and, with the pair and align NLI heads, both sides of every NLI pair) are tokenized
together, sorted by length and split into forward passes of at most ``max_batch_size`` sequences and
``max_batch_tokens`` padded tokens; cross-head NLI pairs are tokenized jointly and encoded the same
way. The align head reads the token states of both sides (kept from the same forward passes), the
pair head their pooled vectors. Every row is computed as if it were alone (padding never reaches the
pooled vector or the alignment; an int8 model quantizes each token with its own scale), so a result
does not depend on its batch-mates (float32: to ~1e-6; int8: to ~1e-4, when a float32 rounding
difference moves a value across an int8 rounding boundary).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from app.batching import WorkItem
from app.runner import PassObserver, RunnerInfo
from app.settings import Settings
from model.encoder import NLI_LABELS, SentenceEncoder, TokenBatch, mean_pool_packed, pad_states
from model.quantize import resolve_quantization


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


def model_nbytes(model: torch.nn.Module) -> int:
    """Bytes held by the model's parameters and buffers (a materialized embedding table and the int8
    weights of a quantized model, which are buffers, included)."""
    tensors = list(model.parameters()) + [b for b in model.buffers() if b is not None]
    return sum(t.numel() * t.element_size() for t in tensors)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two (d,) vectors in [-1, 1], computed in float64; 0.0 for a zero vector."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    denom = max(float(np.linalg.norm(a64) * np.linalg.norm(b64)), 1e-12)
    return float(np.clip(np.dot(a64, b64) / denom, -1.0, 1.0))


class TorchRunner:
    """The torch backend of the model-runner seam: a ``SentenceEncoder`` computing batches of
    ``WorkItem``s (the batcher's ``compute``).

    Args:
        model_path: the checkpoint directory, read by ``load_model`` in ``load()``.
        max_tokens: token limit per sequence, special tokens included (capped by ``config.max_len``).
        max_batch_size: most sequences per forward pass.
        max_batch_tokens: most padded tokens (rows x longest row) per forward pass; a single longer
            row still gets its own pass.
        quantize: ``"none"``, ``"int8"`` (``SentenceEncoder.quantize``) or ``"auto"`` (int8 where this
            CPU runs it faster: ``model.quantize.resolve_quantization``), applied at load.
        materialize: precompute the PETE embedding table at load (before quantizing).
        threads: torch intra-op threads set at load (0: torch's default).
        observe_pass: ``observe_pass(sequences, padded_tokens)`` after each forward pass (metrics).
        load_model: ``load_model(model_path)`` returns the model (default
            ``SentenceEncoder.from_pretrained``; anything with the same inference interface works,
            e.g. the benchmark's MiniLM wrapper).
    Not thread-safe (the tokenizer's truncation setting is shared): call from one thread only.
    """

    def __init__(self, model_path: str | Path | None, *, max_tokens: int, max_batch_size: int, max_batch_tokens: int,
                 quantize: str = "none", materialize: bool = False, threads: int = 0,
                 observe_pass: PassObserver | None = None,
                 load_model: Callable[[Path], SentenceEncoder] = SentenceEncoder.from_pretrained) -> None:
        self.model_path = None if model_path is None else Path(model_path)
        self.requested_max_tokens = max_tokens
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.quantize, self.materialize, self.threads = quantize, materialize, threads
        self.observe_pass = observe_pass
        self.load_model = load_model
        self.model: SentenceEncoder | None = None
        self.materialized = False

    @classmethod
    def from_settings(cls, settings: Settings, observe_pass: PassObserver | None = None,
                      **overrides) -> "TorchRunner":
        """The service's default ``RunnerFactory``: limits, quantization, materialization and threads
        from ``settings``; ``overrides`` (e.g. ``load_model``) passed on."""
        return cls(settings.model_path, max_tokens=settings.max_tokens_per_text,
                   max_batch_size=settings.max_batch_size, max_batch_tokens=settings.max_batch_tokens,
                   quantize=settings.quantize, materialize=settings.materialize_embeddings,
                   threads=settings.torch_threads, observe_pass=observe_pass, **overrides)

    @classmethod
    def for_model(cls, model: SentenceEncoder, **limits) -> "TorchRunner":
        """A loaded runner around a model in hand, used as it is (no quantizing or materializing):
        for tests and benchmarks. ``limits``: ``max_tokens``, ``max_batch_size``, ``max_batch_tokens``
        and optionally ``observe_pass``."""
        runner = cls(None, load_model=lambda _: model, **limits)
        runner.load()
        return runner

    def load(self) -> None:
        """Load the model, then materialize (float32 table first) and quantize as configured.

        Raises:
            FileNotFoundError, ValueError: from ``load_model`` (missing or unreadable checkpoint file).
        """
        if self.threads:
            torch.set_num_threads(self.threads)
        model = self.load_model(self.model_path)
        if self.materialize:
            self.materialized = model.materialize_embeddings()
        model.quantize(resolve_quantization(self.quantize, model.config.dim, model.config.ffn_dim))
        self.model = model
        self.max_tokens = min(self.requested_max_tokens, model.config.max_len)
        self.separate = not model.nli_joint  # NLI sides encoded alone, like texts to embed
        self.align = model.config.nli_head == "align"

    def parameter_counts(self) -> dict[str, int]:
        """The model's ``{"total", "embedding", "encoder", "nli_head"}`` parameter counts."""
        return self.model.parameter_counts()

    def info(self) -> RunnerInfo:
        """Facts about the loaded model for /info and the metrics."""
        cfg = self.model.config
        return RunnerInfo(embedding_kind=cfg.embedding, nli_head=cfg.nli_head, dimensions=cfg.dim,
                          max_tokens_per_text=self.max_tokens, model_bytes=model_nbytes(self.model),
                          materialized_embeddings=self.materialized, quantization=self.model.quantization)

    def __call__(self, items: list[WorkItem]) -> list[EmbedOutput | NliOutput | NonFiniteOutput]:
        """One output per item, in order; an item whose output is not finite gets a ``NonFiniteOutput``
        instead (the batcher fails that item only). Raises whatever the tokenizer or the model raises."""
        return self.compute(items, record=True)

    @torch.inference_mode()
    def compute(self, items: Sequence[WorkItem], record: bool = True) -> list[EmbedOutput | NliOutput]:
        """Like ``__call__``; ``record=False`` skips ``observe_pass`` (warm-up)."""
        texts: list[str] = []            # sequences encoded alone
        text_slot: list[int] = []        # item i -> index of its (first) sequence in texts
        pairs: list[tuple[str, str]] = []  # cross-head NLI pairs, encoded jointly
        for it in items:
            if it.kind == "embed" or self.separate:
                text_slot.append(len(texts))
                texts.append(it.text)
                if it.kind == "nli":
                    texts.append(it.text_pair)
            elif it.kind == "nli":
                text_slot.append(len(pairs))
                pairs.append((it.text, it.text_pair))
            else:
                raise ValueError(f"unknown work item kind {it.kind!r}")

        nli_idx = [i for i, it in enumerate(items) if it.kind == "nli"]
        vecs = tb = pooled = pb = states = None
        if texts:
            tb = self.model.tokenize(texts, max_tokens=self.max_tokens)
            keep = {text_slot[i] + side for i in nli_idx for side in (0, 1)} if self.align else set()
            vecs, states = self._encode(tb, record, keep)
        if pairs:
            pb = self.model.tokenize([p for p, _ in pairs], [h for _, h in pairs], max_tokens=self.max_tokens)
            pooled, _ = self._encode(pb, record)

        # NLI heads, one call for all NLI items of the batch (row-wise, so batch-independent).
        probs: dict[int, np.ndarray] = {}
        if nli_idx:
            first = [text_slot[i] for i in nli_idx]
            if self.align:
                a, mask_a = pad_states([states[s] for s in first])
                b, mask_b = pad_states([states[s + 1] for s in first])
                logits = self.model.nli_head(a, mask_a, b, mask_b)
            elif self.separate:
                logits = self.model.nli_head(vecs[first], vecs[[s + 1 for s in first]])
            else:
                logits = self.model.nli_head(pooled[first])
            p = F.softmax(logits.float(), dim=-1).numpy()
            probs = {i: p[k] for k, i in enumerate(nli_idx)}

        out: list[EmbedOutput | NliOutput | NonFiniteOutput] = []
        for i, it in enumerate(items):
            s = text_slot[i]
            if it.kind == "embed":
                o = EmbedOutput(vecs[s].numpy().copy(), tb.truncated[s], tb.lengths[s])
            elif self.separate:
                o = NliOutput(probs[i], tb.truncated[s] or tb.truncated[s + 1], tb.lengths[s] + tb.lengths[s + 1])
            else:
                o = NliOutput(probs[i], pb.truncated[s], pb.lengths[s])
            finite = np.isfinite(o.vector if it.kind == "embed" else o.probabilities).all()
            out.append(o if finite else NonFiniteOutput(f"non-finite {it.kind} output"))
        return out

    def warmup(self) -> None:
        """Run a worst-case batch once (``max_batch_size`` sequences at the token limit, both kinds)
        without recording metrics, so the first real requests do not pay one-off costs."""
        long_text = " ".join(["a"] * self.max_tokens)
        n = self.max_batch_size
        self.compute([WorkItem("embed", long_text) for _ in range(n)]
                     + [WorkItem("nli", long_text, long_text) for _ in range(n)], record=False)
        self.check_answers()

    def check_answers(self) -> None:
        """Readiness that checks answers: a plain sentence and an NLI pair must give finite outputs of
        the expected shapes (vector (d,), probabilities (3,) summing to 1).

        Raises:
            NonFiniteOutput: NaN or Inf (e.g. a checkpoint with NaN weights).
            RuntimeError: an output of the wrong shape.
        """
        text = "A man is playing a guitar."
        embed_out, nli = self.compute([WorkItem("embed", text), WorkItem("nli", text, "Someone plays music.")], record=False)
        for o in (embed_out, nli):
            if isinstance(o, NonFiniteOutput):
                raise NonFiniteOutput("the model gives NaN/Inf for a plain sentence: the checkpoint's weights are "
                                      "corrupt (non-finite)")
        if embed_out.vector.shape != (self.model.config.dim,) or nli.probabilities.shape != (3,) \
                or abs(float(nli.probabilities.sum()) - 1) > 1e-3:
            raise RuntimeError(f"unexpected output shapes: vector {embed_out.vector.shape}, "
                               f"probabilities {nli.probabilities.shape}")

    # ---- helpers --------------------------------------------------------------------------
    def _encode(self, tb: TokenBatch, record: bool,
                keep_states: set[int] = frozenset()) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Pooled vectors (N, d) float32 for a tokenized batch, computed in length-sorted passes, and
        the token states (L_i, d) float32 of the rows in ``keep_states``."""
        n = len(tb.lengths)
        out = torch.empty(n, self.model.config.dim)
        states: dict[int, torch.Tensor] = {}
        order = sorted(range(n), key=tb.lengths.__getitem__)
        for chunk in self._chunks(order, tb.lengths):
            T = max(tb.lengths[i] for i in chunk)
            idx = torch.tensor(chunk, dtype=torch.int64)
            ids, mask = tb.input_ids[idx, :T], tb.attention_mask[idx, :T]
            if keep_states.isdisjoint(chunk):
                out[idx] = self.model.embed(ids, mask).float()
            else:
                packed, packing = self.model.encoder.forward_packed(ids, mask)
                out[idx] = mean_pool_packed(packed, packing).float()
                for row, s in zip(chunk, packed.float().split(packing.counts.flatten().long().tolist())):
                    if row in keep_states:
                        states[row] = s
            if record and self.observe_pass is not None:
                self.observe_pass(len(chunk), len(chunk) * T)
        return out, states

    def _chunks(self, order: list[int], lengths: list[int]) -> Iterator[list[int]]:
        """Split ascending-length ``order`` greedily under the size and padded-token limits."""
        chunk: list[int] = []
        for i in order:
            rows = len(chunk) + 1
            if chunk and (rows > self.max_batch_size or rows * lengths[i] > self.max_batch_tokens):
                yield chunk
                chunk = []
            chunk.append(i)
        if chunk:
            yield chunk


def nli_label(probabilities: np.ndarray) -> str:
    """The most probable label of a (3,) probability vector in ``NLI_LABELS`` order."""
    return NLI_LABELS[int(np.argmax(probabilities))]

