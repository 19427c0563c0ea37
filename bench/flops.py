"""How close to the machine's limit does the encoder run?  FLOP/s and a profile of the batch compute.

    .venv/bin/python -m bench.flops --model model/checkpoints/default --threads 1,2

1. The machine: fp32 ``torch.mm`` FLOP/s for square matrices (n = 1024 by default) and for the
   encoder's own GEMM shapes, per torch thread count.
2. The encoder: a forward pass's FLOPs are counted analytically (``encoder_forward_flops``) for the
   work actually done (PETE's packed encoder: the real tokens; a padded encoder: the (B, T) grid),
   and divided by the measured time of ``model.embed`` on realistic batches (STS-B test sentences
   in random order, as concurrent requests bring them, tokenized like the service does) -> achieved
   FLOP/s and its fraction of the best matmul rate measured at the same thread count. The same work timed
   through ``TorchRunner`` (tokenize + encode + copy out, i.e. the service's batch compute) gives the
   fraction the serving path reaches.
3. The profile: cProfile (Python-level hot spots) and ``torch.profiler`` (operator-level) of
   ``TorchRunner`` computing realistic batches.

FLOP counting (``encoder_forward_flops``), per forward of B sequences padded to T tokens, N of
them real (N = B*T for a padded encoder, which computes the padding too):

- linear layers: 2 * P_lin * N, with P_lin = n_layers * (4 d^2 + m * d * f) the weights a token
  meets (qkv 3d^2, out d^2, feed-forward m*d*f: m = 3 for GeGLU (up 2f, down f), 2 for BERT's FFN);
- attention: n_layers * 4 * B * T^2 * d (Q K^T and A V, all heads together);
- embedding: each kind's own count (``flops`` of its class in ``model/embeddings.py``): 0 for a table
  lookup (a materialized PETE table included); when PETE is computed per request its MLP runs once
  per distinct id in the batch: 4 * d * h * U (U distinct ids); a factorized / hash-signature
  embedding projects every token (2 * E * d per token, N tokens).

An int8-quantized model (``SentenceEncoder.quantize``) does the same arithmetic in int8; its rows
show fp32-equivalent FLOP/s against the fp32 peak (they can pass 100%).
Norms, RoPE, GELU, softmax, pooling and the Fourier features are elementwise (O(B*T*d)) and left out,
so the count is a slight underestimate of the work done (the achieved fraction is conservative).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from bench.common import DEFAULT_DATA_DIR, REPO_ROOT, RESULTS_DIR, load_sentence_pairs, markdown_table
from loadtest.results import machine_info, write_json


# ---- analytic FLOP count ---------------------------------------------------------------------------
def flop_spec(model: Any) -> dict[str, Any]:
    """The shape facts ``encoder_forward_flops`` needs, from a ``SentenceEncoder`` (or anything with
    the same ``config``; ``ffn_matrices`` attribute: 3 for GeGLU, 2 for a plain FFN;
    ``flops_embedding_kind``: the registry kind whose FLOPs its embedding has, when its own kind is
    not in ``model.embeddings.EMBEDDINGS``)."""
    cfg = model.config
    return {"dim": cfg.dim, "ffn_dim": cfg.ffn_dim, "n_layers": cfg.n_layers,
            "ffn_matrices": getattr(model, "ffn_matrices", 3),
            "embedding": getattr(model, "flops_embedding_kind", cfg.embedding),
            "embedding_options": dict(getattr(cfg, "embedding_options", {}) or {}),
            "packed": hasattr(getattr(model, "encoder", None), "forward_packed")}


def linear_params_per_token(spec: dict[str, Any]) -> int:
    """Weights of the transformer's linear layers that every token is multiplied by."""
    d, f = spec["dim"], spec["ffn_dim"]
    return spec["n_layers"] * (4 * d * d + spec.get("ffn_matrices", 3) * d * f)


def embedding_flops(spec: dict[str, Any], tokens: int, unique_ids: int, materialized: bool) -> int:
    """FLOPs of the token embedding for a batch of ``tokens`` tokens with ``unique_ids`` distinct ids:
    the embedding kind's own count (``model.embeddings.embedding_flops``; ValueError for a kind the
    registry does not know)."""
    from model.embeddings import embedding_flops as kind_flops

    return kind_flops(spec["embedding"], spec["dim"], tokens, unique_ids, materialized,
                      **spec.get("embedding_options", {}))


def encoder_forward_flops(spec: dict[str, Any], batch: int, seq_len: int, *, real_tokens: int | None = None,
                          unique_ids: int | None = None, materialized: bool = True) -> dict[str, int]:
    """FLOPs (multiply-add = 2) of one encoder forward on a (batch, seq_len) padded batch.

    A packed encoder (``spec["packed"]``: PETE's ``Encoder.forward_packed``) runs the per-token work
    on the ``real_tokens`` real tokens only; attention is counted on the padded (B, T) grid either way.
    Returns {"linear", "attention", "embedding", "total"} (see the module docstring for the terms).
    """
    tokens = batch * seq_len
    if spec.get("packed") and real_tokens is not None:
        tokens = real_tokens
    linear = 2 * linear_params_per_token(spec) * tokens
    attention = spec["n_layers"] * 4 * batch * seq_len * seq_len * spec["dim"]
    embedding = embedding_flops(spec, tokens, tokens if unique_ids is None else unique_ids, materialized)
    return {"linear": linear, "attention": attention, "embedding": embedding, "total": linear + attention + embedding}


# ---- the machine ---------------------------------------------------------------------------------
def measure_matmul(m: int, k: int, n: int, threads: int, seconds: float = 1.0) -> dict[str, float]:
    """fp32 ``torch.mm`` of (m, k) @ (k, n) on ``threads`` threads: best-of-5 GFLOP/s over ~``seconds``."""
    import torch

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
    out = torch.empty(m, n)
    torch.mm(a, b, out=out)  # warm-up
    t0 = time.perf_counter()
    torch.mm(a, b, out=out)
    one = max(time.perf_counter() - t0, 1e-6)
    reps = max(1, int(seconds / 5 / one))
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        best = min(best, (time.perf_counter() - t0) / reps)
    return {"m": m, "k": k, "n": n, "threads": threads, "gflops": 2.0 * m * k * n / best / 1e9}


# ---- the encoder ---------------------------------------------------------------------------------
def batches_of(texts: Sequence[str], batch_size: int, count: int, seed: int = 0) -> list[list[str]]:
    """``count`` batches of ``batch_size`` texts drawn from ``texts`` in a seeded random order (as
    concurrent requests arrive: neighbouring STS-B rows have similar lengths, which would understate
    the padding a served batch carries)."""
    import random

    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    return [[texts[order[(k * batch_size + j) % len(order)]] for j in range(batch_size)] for k in range(count)]


def measure_encoder(model: Any, texts: Sequence[str], *, batch_size: int, threads: int, seconds: float = 2.0,
                    n_batches: int = 8, max_tokens: int = 128, materialized: bool = True) -> dict[str, Any]:
    """Achieved FLOP/s of ``model.embed`` and of the service's batch compute (``TorchRunner``).

    Each batch is tokenized like the service does it (one pass, right-padded to the longest row).
    Returns FLOP counts per batch, achieved GFLOP/s of the encoder alone and of the runner
    (tokenization and the rest included), sequences/s, and the padding fraction.
    """
    import torch

    from app.batching import WorkItem
    from app.inference import TorchRunner

    torch.set_num_threads(threads)
    spec = flop_spec(model)
    batches = batches_of(texts, batch_size, n_batches)
    toks = [model.tokenize(b, max_tokens=max_tokens) for b in batches]
    flops, real_tokens, padded_tokens = 0, 0, 0
    for tb in toks:
        B, T = tb.input_ids.shape
        u = int(torch.unique(tb.input_ids).numel())
        n_real = sum(tb.lengths)
        flops += encoder_forward_flops(spec, B, T, real_tokens=n_real, unique_ids=u, materialized=materialized)["total"]
        real_tokens += n_real
        padded_tokens += B * T

    with torch.inference_mode():
        t_embed = _timed(lambda: [model.embed(tb.input_ids, tb.attention_mask) for tb in toks], seconds)
    runner = TorchRunner.for_model(model, max_tokens=max_tokens, max_batch_size=batch_size, max_batch_tokens=1 << 30)
    items = [[WorkItem("embed", t) for t in b] for b in batches]
    t_runner = _timed(lambda: [runner.compute(it, record=False) for it in items], seconds)
    n_seq = batch_size * n_batches
    return {
        "batch_size": batch_size, "threads": threads, "materialized": materialized,
        "mean_padded_len": padded_tokens / n_seq, "padding_fraction": 1 - real_tokens / padded_tokens,
        "flops_per_batch": flops / n_batches,
        "embed_ms_per_batch": 1000 * t_embed / n_batches, "embed_gflops": flops / t_embed / 1e9,
        "runner_ms_per_batch": 1000 * t_runner / n_batches, "runner_gflops": flops / t_runner / 1e9,
        "embed_seq_per_s": n_seq / t_embed, "runner_seq_per_s": n_seq / t_runner,
    }


def measure_onnx(export_dir: Path, texts: Sequence[str], *, batch_size: int, threads: int, seconds: float = 2.0,
                 n_batches: int = 8, max_tokens: int = 128) -> dict[str, Any]:
    """``measure_encoder`` for the ONNX Runtime backend (``pete-export`` graphs in ``export_dir``):
    the encoder session alone (the whole batch in one pass) and ``OnnxRunner``'s batch compute (split
    into passes by padding, ``max_padding``). Its graph computes every padded position, so FLOPs are
    counted on the padded grid of each pass actually run (a padded, not packed, encoder)."""
    import numpy as np

    from app.batching import WorkItem
    from app.onnx_runner import OnnxRunner

    runner = OnnxRunner(export_dir, max_tokens=max_tokens, max_batch_size=batch_size, max_batch_tokens=1 << 30,
                        threads=threads)
    runner.load()
    spec = flop_spec(runner)  # its .config is the checkpoint's; no forward_packed: a padded encoder
    from model.tokenizer import encode_texts

    batches = batches_of(texts, batch_size, n_batches)
    encs = [encode_texts(runner.tokenizer, b, max_tokens=runner.max_tokens) for b in batches]
    feeds = [{"input_ids": e.input_ids, "attention_mask": e.attention_mask.astype(np.int64)} for e in encs]
    flops, real_tokens, padded_tokens = 0, 0, 0
    for e in encs:
        B, T = e.input_ids.shape
        flops += encoder_forward_flops(spec, B, T, unique_ids=len(np.unique(e.input_ids)), materialized=False)["total"]
        real_tokens += sum(e.lengths)
        padded_tokens += B * T
    # the runner splits a batch into passes by padding (OnnxRunner.max_padding): count what it computes
    from app.outputs import length_chunks

    runner_flops = 0
    for e in encs:
        order = sorted(range(len(e.lengths)), key=e.lengths.__getitem__)
        for chunk in length_chunks(order, e.lengths, batch_size, 1 << 30, runner.max_padding):
            T = max(e.lengths[i] for i in chunk)
            u = len(np.unique(e.input_ids[chunk, :T]))
            runner_flops += encoder_forward_flops(spec, len(chunk), T, unique_ids=u, materialized=False)["total"]
    t_embed = _timed(lambda: [runner.encoder.run(["sentence_embedding"], f) for f in feeds], seconds)
    items = [[WorkItem("embed", t) for t in b] for b in batches]
    t_runner = _timed(lambda: [runner.compute(it, record=False) for it in items], seconds)
    n_seq = batch_size * n_batches
    return {
        "batch_size": batch_size, "threads": threads, "materialized": False, "quantization": "onnx",
        "mean_padded_len": padded_tokens / n_seq, "padding_fraction": 1 - real_tokens / padded_tokens,
        "flops_per_batch": flops / n_batches,
        "embed_ms_per_batch": 1000 * t_embed / n_batches, "embed_gflops": flops / t_embed / 1e9,
        "runner_ms_per_batch": 1000 * t_runner / n_batches, "runner_gflops": runner_flops / t_runner / 1e9,
        "embed_seq_per_s": n_seq / t_embed, "runner_seq_per_s": n_seq / t_runner,
    }


def _timed(fn, seconds: float) -> float:
    """Seconds per call of ``fn``: best of 3 blocks of ~seconds/3 (robust to other load)."""
    fn()  # warm-up
    best = float("inf")
    for _ in range(3):
        reps, elapsed = 0, 0.0
        t0 = time.perf_counter()
        while elapsed < seconds / 3 or reps == 0:
            fn()
            reps += 1
            elapsed = time.perf_counter() - t0
        best = min(best, elapsed / reps)
    return best


def set_materialized(model: Any, on: bool) -> bool:
    """Materialize (or drop) a PETE embedding table; returns whether the kind has one."""
    embedding = model.encoder.embedding if hasattr(model, "encoder") else None
    if embedding is None or not hasattr(embedding, "materialize"):
        return False
    embedding.materialize() if on else embedding.dematerialize()
    return True


# ---- profile ---------------------------------------------------------------------------------------
def _short_path(path: str) -> str:
    for marker in ("site-packages/", str(REPO_ROOT) + "/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def pstats_rows(stats: pstats.Stats, top: int = 15) -> list[dict[str, Any]]:
    """The ``top`` functions of a cProfile run by own time: {function, ncalls, tottime_s, cumtime_s,
    tottime_pct} (percent of all own time recorded)."""
    total_tt = sum(v[2] for v in stats.stats.values()) or 1.0
    rows = []
    for (file, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():
        name = f"{func} ({_short_path(file)}:{line})" if file != "~" else func
        rows.append({"function": name, "ncalls": nc, "tottime_s": tt, "cumtime_s": ct,
                     "tottime_pct": 100 * tt / total_tt})
    rows.sort(key=lambda r: -r["tottime_s"])
    return rows[:top]


CPROFILE_COLUMNS = [("function", "function", lambda v: f"`{v}`"), ("ncalls", "calls"),
                    ("tottime_s", "own s", lambda v: f"{v:.3f}"), ("tottime_pct", "own %", lambda v: f"{v:.1f}"),
                    ("cumtime_s", "cum s", lambda v: f"{v:.3f}")]


def profile_runner(model: Any, texts: Sequence[str], *, batch_size: int, threads: int, iterations: int = 20,
                   top: int = 15, max_tokens: int = 128) -> dict[str, Any]:
    """cProfile and torch.profiler of ``TorchRunner`` computing ``iterations`` realistic batches.

    Returns {"cprofile": [{function, ncalls, tottime_s, cumtime_s, tottime_pct}], "torch_ops":
    [{op, calls, self_cpu_ms, self_cpu_pct}], "wall_s"} with the ``top`` entries of each by self time.
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    from app.batching import WorkItem
    from app.inference import TorchRunner

    torch.set_num_threads(threads)
    runner = TorchRunner.for_model(model, max_tokens=max_tokens, max_batch_size=batch_size, max_batch_tokens=8192)
    items = [[WorkItem("embed", t) for t in b] for b in batches_of(texts, batch_size, iterations)]
    runner.compute(items[0], record=False)  # warm-up

    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for it in items:
        runner.compute(it, record=False)
    prof.disable()
    wall = time.perf_counter() - t0
    rows = pstats_rows(pstats.Stats(prof, stream=io.StringIO()), top)

    with profile(activities=[ProfilerActivity.CPU]) as tprof:
        for it in items:
            runner.compute(it, record=False)
    ops = [e for e in tprof.key_averages() if e.self_cpu_time_total > 0]
    total_self = sum(e.self_cpu_time_total for e in ops) or 1.0
    op_rows = sorted(({"op": e.key, "calls": e.count, "self_cpu_ms": e.self_cpu_time_total / 1000,
                       "self_cpu_pct": 100 * e.self_cpu_time_total / total_self} for e in ops),
                     key=lambda r: -r["self_cpu_ms"])
    return {"batch_size": batch_size, "threads": threads, "iterations": iterations, "wall_s": wall,
            "cprofile": rows, "torch_ops": op_rows[:top]}


# ---- the whole section -------------------------------------------------------------------------------
def run_flops_section(model: Any, texts: Sequence[str], *, threads: Sequence[int], batch_sizes: Sequence[int],
                      seconds: float = 2.0, matmul_n: int = 1024, profile: bool = True,
                      profile_iterations: int = 20, name: str = "pete",
                      quantize: Sequence[str] = ("none",), onnx_dir: Path | None = None,
                      int8_speedup: Callable[[int, int], float] | None = None) -> dict[str, Any]:
    """Peak matmul, encoder achieved FLOP/s (materialized and not, when the kind has a table; and for
    each mode in ``quantize`` other than "none", a quantized copy as the service runs it, table
    computed; with ``onnx_dir``, the ONNX Runtime backend on those ``pete-export`` graphs), the
    fraction of peak, and a profile (of ``model`` as given) at the largest batch size and thread count.

    int8 is measured only where the service's ``PETE_QUANTIZE=auto`` would serve it
    (``model.config.resolve_quantization_mode`` on ``int8_speedup(in_features, out_features)``, default
    ``model.quantize.int8_speedup``: float32 time over int8 time of one layer); otherwise the section's ``skipped``
    says so (without VNNI, torch's int8 matmul is ~30x slower and a MiniLM sweep takes many minutes)."""
    spec = flop_spec(model)
    peaks, shapes = {}, []
    d, f = spec["dim"], spec["ffn_dim"]
    for t in threads:
        peaks[t] = measure_matmul(matmul_n, matmul_n, matmul_n, t, seconds / 2)
        m = max(batch_sizes) * 24  # ~ a batch of short sentences (B*T rows)
        up_n = 2 * f if spec["ffn_matrices"] == 3 else f  # GeGLU's up projection is d -> 2f
        for (k, n) in ((d, 3 * d), (d, up_n), (f, d)):
            shapes.append(measure_matmul(m, k, n, t, seconds / 4))
    peak_at = {t: max(x["gflops"] for x in [peaks[t]] + [x for x in shapes if x["threads"] == t]) for t in threads}
    encoder = []

    def sweep(m: Any, materialized: bool, quantization: str) -> None:
        """Measure ``m`` at every thread count and batch size; rows go to ``encoder``."""
        for t in threads:
            for bs in batch_sizes:
                r = measure_encoder(m, texts, batch_size=bs, threads=t, seconds=seconds, materialized=materialized)
                r.update(materialized=materialized if has_table else None,  # None: a plain lookup table
                         quantization=quantization, peak_gflops=peak_at[t],
                         embed_fraction_of_peak=r["embed_gflops"] / peak_at[t],
                         runner_fraction_of_peak=r["runner_gflops"] / peak_at[t])
                encoder.append(r)

    has_table = set_materialized(model, True)
    for mat in ([True, False] if has_table else [True]):
        set_materialized(model, mat)
        sweep(model, mat, "none")
    set_materialized(model, True)
    skipped = []
    for mode in [q for q in quantize if q != "none" and hasattr(model, "quantize")]:
        import copy

        from model.config import resolve_quantization_mode
        from model.quantize import int8_speedup as measured_speedup

        if mode == "int8":  # the service's own rule for auto, on this CPU's measurement
            speedup = (int8_speedup or measured_speedup)(d, f)
            if resolve_quantization_mode("auto", lambda: speedup) != "int8":
                skipped.append({"quantization": mode, "int8_speedup": speedup,
                                "why": f"int8 {speedup:.2f}x float32 on this CPU's layer probe: not served by auto"})
                continue

        qmodel = copy.deepcopy(model)  # the service quantizes a model whose table is computed
        set_materialized(qmodel, False)
        qmodel.quantize(mode)
        sweep(qmodel, not has_table, mode)
        del qmodel
    if onnx_dir is not None:  # the ONNX Runtime backend on the exported graphs
        for t in threads:
            for bs in batch_sizes:
                r = measure_onnx(onnx_dir, texts, batch_size=bs, threads=t, seconds=seconds)
                r.update(peak_gflops=peak_at[t], embed_fraction_of_peak=r["embed_gflops"] / peak_at[t],
                         runner_fraction_of_peak=r["runner_gflops"] / peak_at[t])
                encoder.append(r)
    out = {"model": name, "spec": spec, "matmul_peak": list(peaks.values()), "matmul_shapes": shapes,
           "encoder": encoder, "skipped": skipped}
    if profile:
        out["profile"] = profile_runner(model, texts, batch_size=max(batch_sizes), threads=max(threads),
                                        iterations=profile_iterations)
    return out


def flops_markdown(section: dict[str, Any], title_level: str = "##") -> str:
    """The FLOP/s section as Markdown (matmul peak, encoder fraction of peak, profile hot spots)."""
    s = section
    lines = [f"{title_level} How close to the limit: {s['model']}\n",
             f"Analytic FLOPs per forward (`bench/flops.py:encoder_forward_flops`): spec `{s['spec']}`.\n",
             "Machine fp32 matmul (torch.mm), GFLOP/s:\n",
             markdown_table(s["matmul_peak"] + s["matmul_shapes"],
                            [("m", "m"), ("k", "k"), ("n", "n"), ("threads", "threads"), ("gflops", "GFLOP/s")]),
             "\nEncoder forward (`model.embed`) and the service batch compute (`TorchRunner`: tokenize + "
             "encode), achieved GFLOP/s and fraction of the peak (the best matmul above at the same thread "
             "count). *table*: PETE embedding table materialized (yes) or computed per batch (no); *weights*: "
             "fp32, or int8 (fp32-equivalent FLOP/s, so the fraction can pass 100%), or onnx (the ONNX Runtime "
             "backend, fp32; its graph computes the padded grid, counted as such; its runner splits a batch into "
             "passes by padding, and its FLOPs are those of the passes it runs; *MFLOP/batch* is the unsplit "
             "batch's):\n",
             markdown_table(s["encoder"], [
                 ("batch_size", "batch"), ("threads", "threads"), ("materialized", "table"),
                 ("quantization", "weights", lambda v: "fp32" if v in (None, "none") else v),
                 ("mean_padded_len", "T (padded)"), ("padding_fraction", "pad frac", lambda v: f"{v:.2f}"),
                 ("flops_per_batch", "MFLOP/batch", lambda v: f"{v / 1e6:,.1f}"),
                 ("embed_ms_per_batch", "embed ms", lambda v: f"{v:.2f}"),
                 ("embed_gflops", "embed GFLOP/s"),
                 ("embed_fraction_of_peak", "embed % peak", lambda v: f"{100 * v:.1f}%"),
                 ("runner_ms_per_batch", "runner ms", lambda v: f"{v:.2f}"),
                 ("runner_fraction_of_peak", "runner % peak", lambda v: f"{100 * v:.1f}%"),
                 ("runner_seq_per_s", "runner seq/s", lambda v: f"{v:,.0f}")])]
    lines += [f"\nNot measured: {k['quantization']} ({k['why']}).\n" for k in s.get("skipped", ())]
    p = s.get("profile")
    if p:
        lines += [f"\nProfile of `TorchRunner.compute` ({p['iterations']} batches of {p['batch_size']} texts, "
                  f"{p['threads']} thread(s), {p['wall_s']:.2f} s under cProfile). Python-level hot spots "
                  "(cProfile, by own time):\n",
                  markdown_table(p["cprofile"], CPROFILE_COLUMNS),
                  "\nOperator-level hot spots (torch.profiler, by self CPU time):\n",
                  markdown_table(p["torch_ops"], [("op", "op", lambda v: f"`{v}`"), ("calls", "calls"),
                                                  ("self_cpu_ms", "self ms", lambda v: f"{v:.1f}"),
                                                  ("self_cpu_pct", "self %", lambda v: f"{v:.1f}")])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m bench.flops", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(REPO_ROOT / "model" / "checkpoints" / "default"))
    p.add_argument("--teacher", action="store_true", help="also measure all-MiniLM-L6-v2 (needs the train extra)")
    p.add_argument("--threads", default="1,2", help="torch thread counts, comma-separated")
    p.add_argument("--batch-sizes", default="1,32", help="sequences per forward, comma-separated")
    p.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    p.add_argument("--matmul-n", type=int, default=1024)
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    p.add_argument("--out", default=str(RESULTS_DIR))
    args = p.parse_args(argv)
    from model.encoder import SentenceEncoder

    threads = [int(x) for x in args.threads.split(",")]
    sizes = [int(x) for x in args.batch_sizes.split(",")]
    pairs, source = load_sentence_pairs(args.data_dir)
    texts = [t for pair in pairs for t in pair]
    model = SentenceEncoder.from_pretrained(args.model)
    result = {"machine": machine_info(), "texts": source, "model_path": args.model,
              "sections": [run_flops_section(model, texts, threads=threads, batch_sizes=sizes, seconds=args.seconds,
                                             matmul_n=args.matmul_n, profile=not args.no_profile,
                                             name=Path(args.model).name)]}
    if args.teacher:
        from bench.teacher_backend import TeacherEncoder

        teacher = TeacherEncoder.load()
        result["sections"].append(run_flops_section(teacher, texts, threads=threads, batch_sizes=sizes,
                                                    seconds=args.seconds, matmul_n=args.matmul_n,
                                                    profile=not args.no_profile, name="all-MiniLM-L6-v2"))
    out = Path(args.out)
    write_json(out / "flops.json", result)
    mi = result["machine"]
    md = [f"# FLOP/s and profile\n\nMachine: {mi.get('cpu')} ({mi.get('cpu_count')} CPUs), torch {mi.get('torch')}, "
          f"load average at start {mi.get('load_average')}. Texts: {source}.\n"]
    md += [flops_markdown(s) for s in result["sections"]]
    (out / "flops.md").write_text("\n".join(md) + "\n")
    print(f"wrote {out / 'flops.json'} and {out / 'flops.md'}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
