"""The ONNX Runtime backend of the model-runner seam (``PETE_BACKEND=onnx``): no torch.

Serves a checkpoint directory holding config.json, tokenizer.json and the graphs ``pete-export``
writes (``model.onnx``: the encoder; ``model_int8.onnx``: the encoder with int8 linear layers and
per-row activation scales, ``model.onnx_int8``; ``nli_head.onnx``: the NLI head; ``onnx_export.json``).
``PETE_QUANTIZE`` picks the encoder graph as for the torch backend: ``int8``, ``none`` (float32), or
``auto``: int8 where it runs at least ``INT8_MIN_SPEEDUP`` times faster on probe batches at load. The batch
is planned, chunked by length and assembled exactly as by the torch runner (``app.outputs``); the
encoder runs on the padded grid of each chunk (its graph has no data-dependent shapes), which equals
the torch backend's packed computation at the real tokens to float rounding. Rows never mix (masked
attention, masked pooling), so a result does not depend on its batch-mates.

This module, and everything it imports, must not import torch (``tests/test_onnx_backend.py``
checks in a subprocess).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from app.batching import WorkItem
from app.outputs import (BatchPlan, EmbedOutput, NliOutput, NonFiniteOutput, check_answers, length_chunks, softmax,
                         warmup_items)
from app.runner import PassObserver, RunnerInfo
from app.settings import Settings
from model.config import (CHECKPOINT_FILES, CONFIG_NAME, ENCODER_INT8_ONNX, ENCODER_ONNX, EXPORT_INFO, HEAD_ONNX,
                          INT8_WEIGHT_BITS, TOKENIZER_NAME, EncoderConfig, resolve_quantization_mode)
from model.tokenizer import EncodedTexts, encode_texts


def pad_rows(rows: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad per-sentence token states, each (L_i, d) float32 -> (B, max L_i, d) with zeros at
    the padding, and the mask (B, max L_i) int64 (1 = real token)."""
    longest = max(len(r) for r in rows)
    padded = np.zeros((len(rows), longest, rows[0].shape[-1]), dtype=np.float32)
    mask = np.zeros((len(rows), longest), dtype=np.int64)
    for i, r in enumerate(rows):
        padded[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return padded, mask


def int8_speedup(fp32, int8, vocab_size: int, repeats: int = 3, seed: int = 0) -> float:
    """Time of the float32 encoder session over the int8 one (best of ``repeats`` each), summed over
    two probe batches of random token ids: a pair (2 x 16 tokens) and a full batch (32 x 32), the
    shapes of one client's request and of a batch at saturation."""
    rng = np.random.default_rng(seed)
    probes = []
    for rows, tokens in ((2, 16), (32, 32)):
        ids = rng.integers(5, vocab_size, size=(rows, tokens), dtype=np.int64)
        probes.append({"input_ids": ids, "attention_mask": np.ones_like(ids)})

    def best(session) -> float:
        total = 0.0
        for feeds in probes:
            session.run(["sentence_embedding"], feeds)
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                session.run(["sentence_embedding"], feeds)
                times.append(time.perf_counter() - t)
            total += min(times)
        return total

    return best(fp32) / best(int8)


class OnnxRunner:
    """Computes batches of ``WorkItem``s with ONNX Runtime sessions of an exported checkpoint.

    Args:
        model_path: the checkpoint directory (with the ``pete-export`` files).
        max_tokens, max_batch_size, max_batch_tokens: as ``app.inference.TorchRunner``.
        threads: ONNX Runtime intra-op threads (0: its default, one per core).
        quantize: ``"none"`` (``model.onnx``), ``"int8"`` (``model_int8.onnx``) or ``"auto"`` (int8
            when ``int8_speedup`` is at least ``INT8_MIN_SPEEDUP``; float32 when the export has no int8
            graph), resolved at load; ``info().quantization`` says which.
        observe_pass: ``observe_pass(sequences, padded_tokens)`` after each encoder pass (metrics).
        max_padding: as ``TorchRunner`` (default ``DEFAULT_MAX_PADDING``).
        speedup: ``speedup(float32 session, int8 session, vocab_size)`` -> float32 time over int8 time,
            for ``quantize="auto"`` (default ``int8_speedup``, measured).
    Not thread-safe (the tokenizer's truncation setting is shared): call from one thread only.
    """

    # The graph computes every padded position: 363 sentences/s unsplit, 859 at 0.2, 837 at 0.25, 802
    # at 0.3 (bench/results/padding/padding.md: shuffled STS-B batches of 32, 1 thread).
    DEFAULT_MAX_PADDING = 0.2

    def __init__(self, model_path: str | Path, *, max_tokens: int, max_batch_size: int, max_batch_tokens: int,
                 threads: int = 0, quantize: str = "none", observe_pass: PassObserver | None = None,
                 max_padding: float | None = None, speedup: Callable[[Any, Any, int], float] | None = None) -> None:
        self.quantize, self.quantization = quantize, "none"
        self.speedup = speedup or int8_speedup
        self.max_padding = self.DEFAULT_MAX_PADDING if max_padding is None else max_padding
        self.model_path = Path(model_path)
        self.requested_max_tokens = max_tokens
        self.max_batch_size, self.max_batch_tokens = max_batch_size, max_batch_tokens
        self.threads, self.observe_pass = threads, observe_pass

    @classmethod
    def from_settings(cls, settings: Settings, observe_pass: PassObserver | None = None) -> "OnnxRunner":
        """``RunnerFactory`` for ``PETE_BACKEND=onnx``: limits and threads from ``settings``."""
        return cls(settings.model_path, max_tokens=settings.max_tokens_per_text, max_batch_size=settings.max_batch_size,
                   max_batch_tokens=settings.max_batch_tokens, threads=settings.torch_threads,
                   quantize=settings.quantize, observe_pass=observe_pass, max_padding=settings.max_padding)

    def load(self) -> None:
        """Read config.json, tokenizer.json and the export, and open the encoder session (the graph
        ``quantize`` resolves to) and the head's.

        Raises:
            FileNotFoundError: a file is missing (the graphs: run ``pete-export`` on the checkpoint),
                including ``model_int8.onnx`` when ``quantize`` is ``"int8"``, or it is from an older
                ``pete-export`` (``onnx_export.json`` without 7 ``int8_weight_bits``); ``"auto"`` then
                serves float32.
            ImportError: ONNX Runtime is not installed (the ``onnx`` extra).
            ValueError: ``quantize`` is not ``"none"``, ``"int8"`` or ``"auto"``.
        """
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError("PETE_BACKEND=onnx needs ONNX Runtime: pip install 'pete-serve[onnx]' (or run the "
                              "slim image, make image-slim)") from e
        from tokenizers import Tokenizer

        d = self.model_path
        for name in CHECKPOINT_FILES["onnx"]:
            if not (d / name).is_file():
                hint = f" (run: pete-export {d})" if name not in (CONFIG_NAME, TOKENIZER_NAME) else ""
                raise FileNotFoundError(f"{d / name} not found{hint}")
        self.config = EncoderConfig.from_dict(json.loads((d / CONFIG_NAME).read_text()))
        self.export_info = json.loads((d / EXPORT_INFO).read_text())
        self.tokenizer = Tokenizer.from_file(str(d / TOKENIZER_NAME))
        self.tokenizer.no_padding()
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        # No memory arena: the warm-up's worst-case batch would keep ~250 MB of it for good (RSS 395 vs
        # 145 MiB after the warm-up; the same run time per batch, measured on the bundled checkpoint).
        options.enable_cpu_mem_arena = False

        def session(name: str):
            return ort.InferenceSession(str(d / name), options, providers=["CPUExecutionProvider"])

        int8_path = d / ENCODER_INT8_ONNX
        if self.quantize == "int8" and not int8_path.is_file():
            raise FileNotFoundError(f"{int8_path} not found (PETE_QUANTIZE=int8; run: pete-export {d})")
        # An int8 graph from before 7-bit weights overflows on CPUs without VNNI: not served.
        int8_current = self.export_info.get("int8_weight_bits") == INT8_WEIGHT_BITS
        if self.quantize == "int8" and not int8_current:
            raise FileNotFoundError(f"{int8_path} is from an older pete-export (8-bit weights: wrong answers on "
                                    f"CPUs without VNNI); run: pete-export {d}")
        self.encoder, int8 = session(ENCODER_ONNX), None

        def speedup() -> float:  # auto only
            nonlocal int8
            if not (int8_path.is_file() and int8_current):
                return 0.0  # an export without the (current) int8 graph: float32
            int8 = session(ENCODER_INT8_ONNX)
            return self.speedup(self.encoder, int8, self.config.vocab_size)

        self.quantization = resolve_quantization_mode(self.quantize, speedup)
        if self.quantization == "int8":
            self.encoder = int8 or session(ENCODER_INT8_ONNX)
        self.head = ort.InferenceSession(str(d / HEAD_ONNX), options, providers=["CPUExecutionProvider"])
        self.max_tokens = min(self.requested_max_tokens, self.config.max_len)
        self.separate = self.config.nli_head != "cross"
        self.align = self.config.nli_head == "align"

    def __call__(self, items: list[WorkItem]) -> list[EmbedOutput | NliOutput | NonFiniteOutput]:
        """One output per item, in order (``app.outputs.BatchPlan.outputs``)."""
        return self.compute(items, record=True)

    def compute(self, items: Sequence[WorkItem], record: bool = True) -> list[EmbedOutput | NliOutput | NonFiniteOutput]:
        """Like ``__call__``; ``record=False`` skips ``observe_pass`` (warm-up)."""
        plan = BatchPlan.of(items, self.separate)
        vecs = enc = penc = pooled = states = None
        if plan.texts:
            enc = encode_texts(self.tokenizer, plan.texts, max_tokens=self.max_tokens)
            keep = {row for side in plan.nli_sides() for row in side} if self.align else set()
            vecs, states = self._encode(enc, record, keep)
        if plan.pairs:
            penc = encode_texts(self.tokenizer, [p for p, _ in plan.pairs], [h for _, h in plan.pairs],
                                max_tokens=self.max_tokens)
            pooled, _ = self._encode(penc, record)
        probs = None
        if plan.nli:
            premises, hypotheses = plan.nli_sides()
            if self.align:
                a, mask_a = pad_rows([states[s] for s in premises])
                b, mask_b = pad_rows([states[s] for s in hypotheses])
                feeds = {"a": a, "mask_a": mask_a, "b": b, "mask_b": mask_b}
            elif self.separate:
                feeds = {"u": vecs[premises], "v": vecs[hypotheses]}
            else:
                feeds = {"pooled": pooled[[plan.slot[i] for i in plan.nli]]}
            probs = softmax(self.head.run(["logits"], feeds)[0])
        return plan.outputs(items, vecs, enc.truncated if enc else (), enc.lengths if enc else (),
                            penc.truncated if penc else (), penc.lengths if penc else (), probs)

    def warmup(self) -> None:
        """A worst-case batch without metrics, then the answer check (``app.outputs.check_answers``).

        Raises:
            app.outputs.NonFiniteOutput: the model gives NaN/Inf.
        """
        self.compute(warmup_items(self.max_tokens, self.max_batch_size), record=False)
        check_answers(lambda items: self.compute(items, record=False), self.config.dim)

    def parameter_counts(self) -> dict[str, int]:
        """The checkpoint's parameter counts, as ``pete-export`` recorded them."""
        return dict(self.export_info["parameter_counts"])

    def info(self) -> RunnerInfo:
        """Facts about the loaded model; ``model_bytes``: the served graphs' file sizes (their weights)."""
        encoder = ENCODER_INT8_ONNX if self.quantization == "int8" else ENCODER_ONNX
        nbytes = sum((self.model_path / n).stat().st_size for n in (encoder, HEAD_ONNX))
        return RunnerInfo(embedding_kind=self.config.embedding, nli_head=self.config.nli_head,
                          dimensions=self.config.dim, max_tokens_per_text=self.max_tokens, model_bytes=nbytes,
                          materialized_embeddings=bool(self.export_info.get("materialized_embeddings")),
                          quantization=self.quantization)

    def _encode(self, enc: EncodedTexts, record: bool,
                keep_states: set[int] = frozenset()) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """Sentence vectors (N, d) float32 in length-sorted passes, and the token states (L_i, d) of the
        rows in ``keep_states``."""
        n = len(enc.lengths)
        out = np.empty((n, self.config.dim), dtype=np.float32)
        states: dict[int, np.ndarray] = {}
        order = sorted(range(n), key=enc.lengths.__getitem__)
        for chunk in length_chunks(order, enc.lengths, self.max_batch_size, self.max_batch_tokens, self.max_padding):
            T = max(enc.lengths[i] for i in chunk)
            feeds = {"input_ids": enc.input_ids[chunk, :T], "attention_mask": enc.attention_mask[chunk, :T].astype(np.int64)}
            want_states = not keep_states.isdisjoint(chunk)
            results = self.encoder.run(["sentence_embedding", "token_states"] if want_states else ["sentence_embedding"],
                                       feeds)
            out[chunk] = results[0]
            if want_states:
                for k, row in enumerate(chunk):
                    if row in keep_states:
                        states[row] = results[1][k, : enc.lengths[row]]
            if record and self.observe_pass is not None:
                self.observe_pass(len(chunk), len(chunk) * T)
        return out, states
