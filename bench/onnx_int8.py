"""The ONNX int8 graph (``model_int8.onnx``, ``model/onnx_int8.py``) against float32 and torch int8.

    .venv/bin/python -m bench.onnx_int8            # ~3 min on 2 cores

For the checkpoint (``--model``): STS-B dev and test Spearman's rho x100, overall and per genre, of
four runners (torch float32, torch int8, ONNX float32, ONNX int8: the answers as served); batch
invariance of the ONNX int8 graph (max |score difference| of each of 32 STS-B test pairs alone and
in one batch); and compute time, 1 thread, of one pair (2 texts, a lone client's request) and of a
batch of 32 shuffled STS-B test texts (a batch at saturation), best of ``--repeats``, the runners
alternating round by round so that drifting machine load hits all alike. The graphs come from
``pete-export`` into ``--out``/tmp/. Writes ``--out``/int8.json and int8.md.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS_DIR, markdown_table
from loadtest.results import machine_info, write_json

GENRES = ("captions", "news", "forums")


def pair_scores(runner: Any, pairs: list[tuple[str, str]], batch_pairs: int = 16) -> np.ndarray:
    """Cosine of each (text_a, text_b) as ``/similarity`` computes it, ``batch_pairs`` pairs per call."""
    from app.batching import WorkItem
    from app.outputs import cosine

    out = []
    for i in range(0, len(pairs), batch_pairs):
        chunk = pairs[i:i + batch_pairs]
        res = runner.compute([WorkItem("embed", t) for p in chunk for t in p], record=False)
        out += [cosine(res[2 * k].vector, res[2 * k + 1].vector) for k in range(len(chunk))]
    return np.array(out)


def spearman_rows(runners: dict[str, Any], data_dir: str) -> list[dict[str, Any]]:
    """STS-B dev/test Spearman x100, overall and per genre, for each runner."""
    from scipy.stats import spearmanr

    from model.data import DataPaths, read_sts, sts_genre

    paths = DataPaths(data_dir)
    rows = []
    for split, path in (("dev", paths.sts_dev), ("test", paths.sts_test)):
        sts = read_sts(path)
        gold = np.array([p.score for p in sts])
        genre = np.array([sts_genre(p.genre) for p in sts])
        for name, runner in runners.items():
            s = pair_scores(runner, [(p.sentence1, p.sentence2) for p in sts])
            row = {"split": split, "runner": name, "all": 100 * spearmanr(s, gold)[0]}
            row.update({g: 100 * spearmanr(s[genre == g], gold[genre == g])[0] for g in GENRES})
            rows.append(row)
    return rows


def compute_ms(runners: dict[str, Any], batches: dict[str, list], rounds: int, repeats: int) -> list[dict[str, Any]]:
    """Milliseconds per ``compute`` call for each runner and batch (best over rounds x repeats)."""
    best = {(r, b): float("inf") for r in runners for b in batches}
    for name, runner in runners.items():
        for items in batches.values():
            runner.compute(items, record=False)
    for _ in range(rounds):
        for name, runner in runners.items():
            for bname, items in batches.items():
                for _ in range(repeats):
                    t = time.perf_counter()
                    runner.compute(items, record=False)
                    best[name, bname] = min(best[name, bname], time.perf_counter() - t)
    return [{"runner": name, **{f"{b}_ms": 1e3 * best[name, b] for b in batches}} for name in runners]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m bench.onnx_int8", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="model/checkpoints/default")
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "onnx")
    args = p.parse_args(argv)
    import torch

    from app.batching import WorkItem
    from app.inference import TorchRunner
    from app.onnx_runner import OnnxRunner
    from bench.serving import onnx_export
    from model.data import DataPaths, read_sts

    torch.set_num_threads(1)
    export = onnx_export(Path(args.model), args.out / "tmp" / "onnx_export")
    limits = dict(max_tokens=128, max_batch_size=32, max_batch_tokens=2048, threads=1)
    runners = {"torch float32": TorchRunner(args.model, quantize="none", **limits),
               "torch int8": TorchRunner(args.model, quantize="int8", **limits),
               "onnx float32": OnnxRunner(export, quantize="none", **limits),
               "onnx int8": OnnxRunner(export, quantize="int8", **limits)}
    for r in runners.values():
        r.load()
    accuracy = spearman_rows(runners, args.data_dir)

    test = [(s.sentence1, s.sentence2) for s in read_sts(DataPaths(args.data_dir).sts_test)]
    rng = random.Random(0)
    sample = rng.sample(test, 32)
    int8 = runners["onnx int8"]
    alone = np.array([pair_scores(int8, [pair])[0] for pair in sample])
    together = pair_scores(int8, sample, batch_pairs=32)
    invariance = float(np.abs(alone - together).max())

    texts = [t for pair in test for t in pair]
    batches = {"pair": [WorkItem("embed", t) for t in sample[0]],
               "batch32": [WorkItem("embed", t) for t in rng.sample(texts, 32)]}
    speed = compute_ms(runners, batches, args.rounds, args.repeats)
    ref = next(r for r in speed if r["runner"] == "onnx float32")
    for r in speed:
        r["pair_speedup"] = ref["pair_ms"] / r["pair_ms"]
        r["batch32_speedup"] = ref["batch32_ms"] / r["batch32_ms"]

    result = {"command": " ".join(["python -m bench.onnx_int8", *(argv if argv is not None else sys.argv[1:])]),
              "machine": machine_info(), "model": str(args.model), "accuracy": accuracy,
              "batch_invariance_max_abs_diff": invariance, "speed": speed,
              "model_bytes": {name: r.info().model_bytes for name, r in runners.items() if name.startswith("onnx")}}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "int8.json", result)
    (args.out / "int8.md").write_text(markdown(result))
    print(markdown(result))
    return result


def markdown(r: dict[str, Any]) -> str:
    """int8.md: the accuracy table, batch invariance, the speed table, and how it was made."""
    m = r["machine"]
    acc = markdown_table(r["accuracy"], [("split", "STS-B split"), ("runner", "runner"), ("all", "Spearman x100", lambda v: f"{v:.2f}")]
                         + [(g, g, lambda v: f"{v:.2f}") for g in GENRES])
    speed = markdown_table(r["speed"], [("runner", "runner"), ("pair_ms", "one pair ms", lambda v: f"{v:.2f}"),
                                        ("pair_speedup", "vs onnx float32", lambda v: f"{v:.2f}x"),
                                        ("batch32_ms", "batch of 32 texts ms", lambda v: f"{v:.1f}"),
                                        ("batch32_speedup", "vs onnx float32", lambda v: f"{v:.2f}x")])
    sizes = ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in r["model_bytes"].items())
    return ("# ONNX int8 graph vs float32 and torch int8\n\n"
            f"Checkpoint `{r['model']}`; served graphs: {sizes}.\n\n"
            "## Accuracy (the answers as served)\n\n" + acc +
            f"\nBatch invariance of the ONNX int8 graph: 32 STS-B test pairs alone vs in one batch, max |score "
            f"difference| {r['batch_invariance_max_abs_diff']:.1e}.\n\n"
            "## Compute time, 1 thread (best of rounds x repeats, runners alternating)\n\n" + speed +
            f"\n{m.get('cpu')} ({m.get('cpu_count')} CPUs; int8 instructions: {m.get('cpu_int8', 'not recorded')}), "
            f"`{r['command']}`.\n\n"
            "The ONNX int8 graph has 7-bit weights (model/onnx_int8.py: ONNX Runtime's uint8 x int8 kernel "
            "overflows int16 with 8-bit weights on CPUs without VNNI); torch int8 keeps 8 bits. Without VNNI, "
            "torch's `_int_mm` takes a slow path, which `PETE_QUANTIZE=auto` measures at load and avoids.\n")


if __name__ == "__main__":
    main()
