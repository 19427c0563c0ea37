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

from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from app.batching import WorkItem
from app.outputs import (BatchPlan, EmbedOutput, NliOutput, NonFiniteOutput, check_answers, length_chunks,
                         warmup_items)
from app.runner import PassObserver, RunnerInfo
from app.settings import Settings
from model.encoder import SentenceEncoder, TokenBatch, mean_pool_packed, pad_states
from model.quantize import resolve_quantization


def model_nbytes(model: torch.nn.Module) -> int:
    """Bytes held by the model's parameters and buffers (a materialized embedding table and the int8
    weights of a quantized model, which are buffers, included)."""
    tensors = list(model.parameters()) + [b for b in model.buffers() if b is not None]
    return sum(t.numel() * t.element_size() for t in tensors)


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
        max_padding: split a length-sorted batch into another pass before padding exceeds this
            fraction of a pass's tokens (``app.outputs.length_chunks``; default ``DEFAULT_MAX_PADDING``).
    Not thread-safe (the tokenizer's truncation setting is shared): call from one thread only.
    """

    # No split: the packed encoder spends padding only in attention, and splitting did not pay
    # (bench/results/padding/padding.md: 770 sentences/s unsplit, 774 at 0.3, 719 at 0.2).
    DEFAULT_MAX_PADDING = 1.0

    def __init__(self, model_path: str | Path | None, *, max_tokens: int, max_batch_size: int, max_batch_tokens: int,
                 quantize: str = "none", materialize: bool = False, threads: int = 0,
                 observe_pass: PassObserver | None = None,
                 load_model: Callable[[Path], SentenceEncoder] = SentenceEncoder.from_pretrained,
                 max_padding: float | None = None) -> None:
        self.max_padding = self.DEFAULT_MAX_PADDING if max_padding is None else max_padding
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
                   threads=settings.torch_threads, observe_pass=observe_pass, max_padding=settings.max_padding,
                   **overrides)

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
    def compute(self, items: Sequence[WorkItem], record: bool = True) -> list[EmbedOutput | NliOutput | NonFiniteOutput]:
        """Like ``__call__``; ``record=False`` skips ``observe_pass`` (warm-up)."""
        plan = BatchPlan.of(items, self.separate)
        vecs = tb = pb = pooled = states = None
        if plan.texts:
            tb = self.model.tokenize(plan.texts, max_tokens=self.max_tokens)
            keep = {row for side in plan.nli_sides() for row in side} if self.align else set()
            vecs, states = self._encode(tb, record, keep)
        if plan.pairs:
            pb = self.model.tokenize([p for p, _ in plan.pairs], [h for _, h in plan.pairs], max_tokens=self.max_tokens)
            pooled, _ = self._encode(pb, record)
        probs = None
        if plan.nli:  # one head call for all NLI items of the batch (row-wise, so batch-independent)
            premises, hypotheses = plan.nli_sides()
            if self.align:
                a, mask_a = pad_states([states[s] for s in premises])
                b, mask_b = pad_states([states[s] for s in hypotheses])
                logits = self.model.nli_head(a, mask_a, b, mask_b)
            elif self.separate:
                logits = self.model.nli_head(vecs[premises], vecs[hypotheses])
            else:
                logits = self.model.nli_head(pooled[[plan.slot[i] for i in plan.nli]])
            probs = F.softmax(logits.float(), dim=-1).numpy()
        return plan.outputs(items, None if vecs is None else vecs.numpy(), tb.truncated if tb else (),
                            tb.lengths if tb else (), pb.truncated if pb else (), pb.lengths if pb else (), probs)

    def warmup(self) -> None:
        """Run a worst-case batch once (``max_batch_size`` sequences at the token limit, both kinds)
        without recording metrics, so the first real requests do not pay one-off costs; then check
        the answers (``app.outputs.check_answers``)."""
        self.compute(warmup_items(self.max_tokens, self.max_batch_size), record=False)
        check_answers(lambda items: self.compute(items, record=False), self.model.config.dim)

    # ---- helpers --------------------------------------------------------------------------
    def _encode(self, tb: TokenBatch, record: bool,
                keep_states: set[int] = frozenset()) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Pooled vectors (N, d) float32 for a tokenized batch, computed in length-sorted passes, and
        the token states (L_i, d) float32 of the rows in ``keep_states``."""
        n = len(tb.lengths)
        out = torch.empty(n, self.model.config.dim)
        states: dict[int, torch.Tensor] = {}
        order = sorted(range(n), key=tb.lengths.__getitem__)
        for chunk in length_chunks(order, tb.lengths, self.max_batch_size, self.max_batch_tokens, self.max_padding):
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
