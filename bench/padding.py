"""How much padding a forward pass may hold before a batch is split: ``max_padding`` per backend.

    .venv/bin/python -m bench.padding            # ~2 min: torch and ONNX Runtime, 4 alternating rounds

Both runners compute batches of 32 shuffled STS-B test sentences (as concurrent single-pair requests
bring them), 1 thread, float32, at several ``max_padding`` values (1 = never split for padding), the
values alternating round by round so that drifting machine load hits all alike. Reports sentences/s
(best of 3 timings per round). The ONNX graph comes from ``pete-export`` into ``--out``/tmp/.
Writes ``--out``/padding.json and padding.md.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, load_sentence_pairs, markdown_table
from loadtest.results import machine_info, write_json

VALUES = (1.0, 0.2, 0.25, 0.3)


def sentences_per_s(runner: Any, batches: list, repeats: int = 3) -> float:
    """Sentences/s of ``runner.compute`` over ``batches`` (best of ``repeats``)."""
    runner.compute(batches[0], record=False)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for b in batches:
            runner.compute(b, record=False)
        best = min(best, time.perf_counter() - t)
    return sum(len(b) for b in batches) / best


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m bench.padding", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="model/checkpoints/default")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "padding")
    args = p.parse_args(argv)
    import torch

    from app.batching import WorkItem
    from app.inference import TorchRunner
    from app.onnx_runner import OnnxRunner
    from bench.serving import onnx_export

    torch.set_num_threads(1)
    export = onnx_export(Path(args.model), args.out / "tmp" / "onnx_export")
    pairs, source = load_sentence_pairs()
    texts = [t for pair in pairs for t in pair]
    rng = random.Random(0)
    batches = [[WorkItem("embed", t) for t in rng.sample(texts, 32)] for _ in range(args.batches)]
    limits = dict(max_tokens=128, max_batch_size=32, max_batch_tokens=2048, threads=1)
    runners = {"torch": TorchRunner(args.model, quantize="none", **limits), "onnx": OnnxRunner(export, **limits)}
    results: dict[str, dict[float, list[float]]] = {name: {v: [] for v in VALUES} for name in runners}
    for name, runner in runners.items():
        runner.load()
        for _ in range(args.rounds):
            for v in VALUES:
                runner.max_padding = v
                results[name][v].append(sentences_per_s(runner, batches))
    rows = [{"backend": name, "max_padding": v, "rounds": ", ".join(f"{x:.0f}" for x in xs),
             "mean": sum(xs) / len(xs)} for name, by in results.items() for v, xs in by.items()]
    out = {"command": "python -m bench.padding " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": machine_info(), "texts": source, "rows": rows}
    write_json(args.out / "padding.json", out)
    (args.out / "padding.md").write_text(
        "# Padding per forward pass\n\n" + __doc__.split("\n\n", 2)[2].split("Writes")[0] + "\n"
        + f"`{out['command']}`; {source}.\n\n"
        + markdown_table(rows, [("backend", "backend"), ("max_padding", "max_padding"),
                                ("rounds", "sentences/s per round"), ("mean", "mean")]))
    for r in rows:
        print(f"{r['backend']:>5} max_padding {r['max_padding']:<4}: {r['rounds']}  (mean {r['mean']:.0f})")
    return out


if __name__ == "__main__":
    main()
