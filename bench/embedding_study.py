"""Embedding study: same encoder, same data, same steps, same seed; only the token embedding differs.

    .venv/bin/python -m bench.embedding_study                      # all kinds at d=256
    .venv/bin/python -m bench.embedding_study --sizes 256,512      # and at d=512

Kinds (``model/embeddings.py``): ``fourier`` (PETE as the paper writes it), ``fourier_ref`` (PETE as
the reference code computes it: ids normalised by 127), ``fourier_geo`` and ``fourier_hash`` (our
variants), ``factorized`` (ALBERT), ``hashed`` and ``hashed_notable`` (HashFormers-style),
``learned`` (the V x d table).

Each (kind, size) is trained by the training CLI in a subprocess (``python -m model.train``) with one
fixed short recipe: ``--stages contrastive:N,sts:N/4`` (``--steps``), no teacher stage (no
token_init, no distillation: they would hand the kinds different amounts of teacher knowledge),
``--tokenizer frequency``, 2 layers (``--layers``), d in ``--sizes``, d/64 heads, FFN 4d, the same
seed. ``--nli-steps K`` adds an ``nli:K`` stage that trains the NLI head on the frozen encoder
(``--nli-freeze-encoder``, so STS numbers are unaffected) and reports SNLI test accuracy.

Scored per run (test splits only here; the CLI's own model selection uses dev):
embedding and total parameters (module count, and ``embedding_parameter_count``'s closed form),
STS-B dev and test Spearman x100, SNLI test accuracy (with --nli-steps), training time per step
(from the ``train.log`` timestamps) and its ratio to the learned table at the same size, encode
throughput (sentences/s, STS-B test sentences, batch 64, ``--threads`` threads) with the PETE table
materialized and computed, and the inference table's bytes.

Resumable: a (kind, size) whose result file ``OUT/embedding_study/<kind>_d<dim>.json`` holds the same
recipe is skipped; an interrupted training run resumes from its ``state.pt`` (run directories live
under ``--work-dir``, default runs/embedding_study, git-ignored). Writes
``OUT/embedding_study.json``, ``.md`` and ``.png`` (STS-B test vs total parameters).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from bench.common import DEFAULT_DATA_DIR, REPO_ROOT, RESULTS_DIR, fmt_num, markdown_table
from loadtest.results import machine_info, write_json
from model.embeddings import EMBEDDINGS

KINDS = tuple(EMBEDDINGS)  # every registered kind (model/embeddings.py), in registry order
DESCRIPTIONS = {k: kind.description for k, kind in EMBEDDINGS.items()}
STEP_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO (\w+) step (\d+)/(\d+) "
                       r".*\((\d+(?:\.\d+)?)s/step(?:, [^)]*)?\)\s*$")


# ---- recipe --------------------------------------------------------------------------------------
def stage_spec(steps: str, nli_steps: int = 0) -> str:
    """``"600"`` -> ``"contrastive:600,sts:150"``; a full stage spec is kept; ``nli:K`` appended
    when ``nli_steps``."""
    steps = str(steps).strip()
    if steps.isdigit():
        n = int(steps)
        spec = f"contrastive:{n},sts:{max(1, n // 4)}"
    else:
        spec = steps
    if nli_steps:
        spec += f",nli:{nli_steps}"
    return spec


def run_name(kind: str, dim: int) -> str:
    return f"{kind}_d{dim}"


def recipe_for(kind: str, dim: int, args: argparse.Namespace) -> dict[str, Any]:
    """Everything that defines one run's training; its hash names the run directory."""
    heads = args.heads or max(1, dim // 64)
    return {"kind": kind, "dim": dim, "layers": args.layers, "heads": heads, "ffn_dim": args.ffn_mult * dim,
            "stages": stage_spec(args.steps, args.nli_steps), "seed": args.seed, "tokenizer": "frequency",
            "embedding_options": args.kind_options.get(kind, {}), "extra_train_args": list(args.extra_train_args),
            "data_dir": str(Path(args.data_dir).resolve())}


def recipe_hash(recipe: dict[str, Any]) -> str:
    """Short hash of the recipe, without the data directory's path (the same data may live elsewhere
    on another machine; committed results stay valid there)."""
    key = {k: v for k, v in recipe.items() if k != "data_dir"}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]


def train_command(recipe: dict[str, Any], run_dir: Path, threads: int) -> list[str]:
    """The ``python -m model.train`` command line for one run."""
    cmd = [sys.executable, "-m", "model.train", "--data-dir", recipe["data_dir"], "--out", str(run_dir),
           "--embedding", recipe["kind"], "--embedding-options", json.dumps(recipe["embedding_options"]),
           "--dim", str(recipe["dim"]), "--layers", str(recipe["layers"]), "--heads", str(recipe["heads"]),
           "--ffn-dim", str(recipe["ffn_dim"]), "--stages", recipe["stages"], "--seed", str(recipe["seed"]),
           "--tokenizer", recipe["tokenizer"], "--threads", str(threads), "--log-every", "10",
           "--save-every", "100"]
    if ",nli:" in "," + recipe["stages"]:
        cmd.append("--nli-freeze-encoder")
    return cmd + list(recipe["extra_train_args"])


# ---- log parsing ---------------------------------------------------------------------------------
def parse_step_times(log_text: str) -> dict[str, dict[str, float]]:
    """Seconds per training step per stage from ``train.log``.

    Uses the timestamps of the periodic ``<stage> step k/N ... (x.xxs/step)`` lines: (t_last - t_first)
    / (k_last - k_first) over the last uninterrupted run of the stage (a resume restarts the count);
    with a single line, its own ``x.xx s/step`` figure. Returns {stage: {"s_per_step", "steps"}}.
    """
    points: dict[str, list[tuple[float, int, int, float]]] = {}
    for line in log_text.splitlines():
        m = STEP_LINE.match(line)
        if not m:
            continue
        ts = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        stage, step, total, sps = m.group(2), int(m.group(3)), int(m.group(4)), float(m.group(5))
        pts = points.setdefault(stage, [])
        if pts and step <= pts[-1][1]:  # resumed (or re-run): keep the latest run only
            pts.clear()
        pts.append((ts, step, total, sps))
    out = {}
    for stage, pts in points.items():
        total = pts[-1][2]
        if len(pts) >= 2 and pts[-1][1] > pts[0][1]:
            sps = (pts[-1][0] - pts[0][0]) / (pts[-1][1] - pts[0][1])
        else:
            sps = pts[-1][3]
        out[stage] = {"s_per_step": sps, "steps": total}
    return out


def mean_step_time(step_times: dict[str, dict[str, float]]) -> float:
    """Seconds per step over all stages, weighted by their step counts (NaN when none)."""
    steps = sum(v["steps"] for v in step_times.values())
    if not steps:
        return float("nan")
    return sum(v["s_per_step"] * v["steps"] for v in step_times.values()) / steps


# ---- one run ---------------------------------------------------------------------------------------
def prepare_vocab_perm(data_dir: Path, work_dir: Path) -> Path:
    """The frequency-ranked id permutation, computed once for all runs (the CLI computes the same
    from the same sentences; each run directory gets a copy, which the CLI then reuses)."""
    path = work_dir / "vocab_perm.json"
    if not path.exists():
        from model.data import DataPaths, iter_sentences
        from model.tokenizer import frequency_rank, read_vocab

        paths = DataPaths(data_dir)
        perm = frequency_rank(read_vocab(paths.bert_vocab), (s.text for s in iter_sentences(paths.sentences)))
        work_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(perm))
    return path


def train_run(recipe: dict[str, Any], run_dir: Path, threads: int, vocab_perm: Path | None,
              timeout_s: float | None = None) -> dict[str, Any]:
    """Train one run with the CLI in a subprocess (resumes if the directory holds a state).

    Raises:
        RuntimeError: the CLI failed (message carries the log's tail).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    if vocab_perm is not None and not (run_dir / "vocab_perm.json").exists():
        shutil.copyfile(vocab_perm, run_dir / "vocab_perm.json")
    cmd = train_command(recipe, run_dir, threads)
    (run_dir / "study_command.txt").write_text(" ".join(cmd) + "\n")
    t0 = time.perf_counter()
    with open(run_dir / "study_stdout.log", "ab") as log:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not (run_dir / "final" / "config.json").is_file():
        tail = (run_dir / "study_stdout.log").read_bytes()[-3000:].decode(errors="replace")
        raise RuntimeError(f"training exited with {proc.returncode}:\n{tail}")
    log_text = (run_dir / "train.log").read_text() if (run_dir / "train.log").exists() else ""
    step_times = parse_step_times(log_text)
    dev = json.loads((run_dir / "dev_scores.json").read_text()) if (run_dir / "dev_scores.json").exists() else {}
    return {"train_wall_s": wall, "step_times": step_times, "train_s_per_step": mean_step_time(step_times),
            "cli_dev_scores": dev}


def encode_throughput(model: Any, texts: Sequence[str], threads: int, repeats: int = 2) -> float:
    """Sentences/s of ``model.encode(texts, batch_size=64)`` (best of ``repeats``, after a warm-up)."""
    import torch

    torch.set_num_threads(threads)
    model.encode(list(texts[:64]))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.encode(list(texts), batch_size=64)
        best = min(best, time.perf_counter() - t0)
    return len(texts) / best


def evaluate_run(final_dir: Path, kind: str, data_dir: Path, threads: int, nli: bool,
                 encode_sentences: int = 2000) -> dict[str, Any]:
    """Scores of a trained checkpoint: parameters, STS-B dev/test Spearman, SNLI test accuracy (when
    ``nli``), encode sentences/s (table materialized and computed for PETE kinds)."""
    import torch

    from model.data import DataPaths, read_nli, read_sts
    from model.embeddings import embedding_parameter_count
    from model.encoder import SentenceEncoder
    from model.scoring import nli_accuracy, sts_scores

    torch.set_num_threads(threads)
    paths = DataPaths(data_dir)
    model = SentenceEncoder.from_pretrained(final_dir)
    cfg = model.config
    counts = model.parameter_counts()
    out: dict[str, Any] = {
        "vocab_size": cfg.vocab_size, "embedding_params": counts["embedding"], "encoder_params": counts["encoder"],
        "nli_head_params": counts["nli_head"], "total_params": counts["total"],
        "total_params_no_head": counts["embedding"] + counts["encoder"],
        "embedding_params_closed_form": embedding_parameter_count(kind, cfg.vocab_size, cfg.dim,
                                                                  **cfg.embedding_options),
    }
    sts_test = read_sts(paths.sts_test)
    out["sts_dev_spearman"] = sts_scores(model, read_sts(paths.sts_dev))["spearman"]
    test = sts_scores(model, sts_test)
    out["sts_test_spearman"], out["sts_test_pearson"] = test["spearman"], test["pearson"]
    if nli:
        out["snli_test_accuracy"] = nli_accuracy(model, read_nli(paths.snli_test))["accuracy"]
    texts = list(dict.fromkeys(t for p in sts_test for t in (p.sentence1, p.sentence2)))[:encode_sentences]
    if model.materialize_embeddings():
        out["inference_table_bytes"] = cfg.vocab_size * cfg.dim * 4
        out["encode_sps_materialized"] = encode_throughput(model, texts, threads)
        model.encoder.embedding.dematerialize()
        out["encode_sps_computed"] = encode_throughput(model, texts, threads)
        out["encode_sps"] = out["encode_sps_materialized"]
    else:
        out["encode_sps"] = encode_throughput(model, texts, threads)
    out["encode_sentences"] = len(texts)
    return out


def run_one(kind: str, dim: int, args: argparse.Namespace, vocab_perm: Path | None) -> dict[str, Any]:
    """Train (or resume) and score one (kind, size); writes and returns its result dict.

    A result file with the same recipe is returned as is (the run is skipped).
    """
    recipe = recipe_for(kind, dim, args)
    h = recipe_hash(recipe)
    result_path = Path(args.out) / "embedding_study" / f"{run_name(kind, dim)}.json"
    if result_path.exists() and not args.force:
        old = json.loads(result_path.read_text())
        if old.get("recipe_hash") == h:
            print(f"[{run_name(kind, dim)}] done already, skipped ({result_path})", file=sys.stderr)
            return old
    run_dir = Path(args.work_dir) / f"{run_name(kind, dim)}_{h}"
    print(f"[{run_name(kind, dim)}] training in {run_dir}", file=sys.stderr, flush=True)
    res: dict[str, Any] = {"kind": kind, "dim": dim, "description": DESCRIPTIONS.get(kind, kind),
                           "recipe": recipe, "recipe_hash": h, "run_dir": str(run_dir),
                           "train_threads": args.threads}
    res.update(train_run(recipe, run_dir, args.threads, vocab_perm, timeout_s=args.run_timeout))
    res.update(evaluate_run(run_dir / "final", kind, Path(args.data_dir), args.threads, nli=args.nli_steps > 0,
                            encode_sentences=args.encode_sentences))
    res["finished_at"] = datetime.now().isoformat(timespec="seconds")
    write_json(result_path, res)
    print(f"[{run_name(kind, dim)}] STS-B test {res['sts_test_spearman']:.1f}, "
          f"{res['train_s_per_step']:.3f} s/step, {res['encode_sps']:.0f} sent/s", file=sys.stderr, flush=True)
    return res


# ---- aggregate ---------------------------------------------------------------------------------------
def add_ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Set ``step_time_vs_learned`` (train s/step / learned's at the same d) and
    ``encode_vs_learned`` on every result that has a learned counterpart."""
    learned = {r["dim"]: r for r in results if r.get("kind") == "learned" and "error" not in r}
    for r in results:
        ref = learned.get(r.get("dim"))
        if ref and "error" not in r:
            if ref.get("train_s_per_step"):
                r["step_time_vs_learned"] = r["train_s_per_step"] / ref["train_s_per_step"]
            if ref.get("encode_sps"):
                r["encode_vs_learned"] = r["encode_sps"] / ref["encode_sps"]
    return results


def study_markdown(study: dict[str, Any]) -> str:
    """embedding_study.md: recipe, one table row per (size, kind), kind descriptions, notes."""
    rows = study["results"]
    ok = [r for r in rows if "error" not in r]
    failed = [r for r in rows if "error" in r]
    rec = study.get("recipe", {})
    lines = ["# Embedding study\n",
             f"Same encoder, data, steps and seed; only the token embedding differs. Recipe: stages "
             f"`{rec.get('stages')}`, {rec.get('layers')} layers, {rec.get('heads') or 'd/64'} heads, FFN {rec.get('ffn_mult')}d, "
             f"seed {rec.get('seed')}, frequency-ranked BERT vocabulary, no teacher stage; training and "
             f"evaluation on {study.get('threads')} torch thread(s). Command: `{study.get('command')}`.\n",
             f"Machine: {study['machine'].get('cpu')} ({study['machine'].get('cpu_count')} CPUs), torch "
             f"{study['machine'].get('torch')}.\n",
             markdown_table(ok, [
                 ("dim", "d"), ("kind", "kind", lambda v: f"`{v}`"),
                 ("embedding_params", "embedding params"), ("total_params", "total params"),
                 ("sts_dev_spearman", "STS-B dev ρ"), ("sts_test_spearman", "STS-B test ρ"),
                 ("snli_test_accuracy", "SNLI test acc %"),
                 ("train_s_per_step", "train s/step", lambda v: fmt_num(v, 3)),
                 ("step_time_vs_learned", "step time vs learned", lambda v: "–" if v is None else f"{v:.2f}x"),
                 ("encode_sps", "encode sent/s", lambda v: fmt_num(v, 0)),
                 ("encode_sps_computed", "encode sent/s (PETE computed)", lambda v: fmt_num(v, 0)),
                 ("inference_table_bytes", "inference table MiB",
                  lambda v: "–" if v is None else f"{v / 2**20:.1f}")]),
             "\nSpearman ρ x100 of cosine similarity vs gold (every pair of the split). Total parameters "
             "include the NLI head. *encode sent/s*: `SentenceEncoder.encode` on STS-B test sentences, "
             "batch 64; for PETE kinds with the embedding table materialized (as served) and, in the next "
             "column, computed per batch. *train s/step* from the train.log timestamps over all stages.\n",
             "\n## Kinds\n"]
    lines += [f"- `{k}`: {DESCRIPTIONS[k]}" for k in KINDS if any(r.get("kind") == k for r in rows)]
    mismatch = [r for r in ok if r.get("embedding_params") != r.get("embedding_params_closed_form")]
    if mismatch:
        lines.append("\nClosed-form embedding parameter count differs from the module for: "
                     + ", ".join(f"`{r['kind']}` d={r['dim']}" for r in mismatch))
    if failed:
        lines.append("\n## Failed runs\n")
        lines += [f"- `{r['kind']}` d={r['dim']}: {r['error'][:300]}" for r in failed]
    if study.get("plot"):
        lines.append(f"\n![STS-B test vs total parameters]({Path(study['plot']).name})\n")
    return "\n".join(lines) + "\n"


def plot_study(results: list[dict[str, Any]], path: Path) -> Path | None:
    """PNG: STS-B test Spearman vs total parameters (log x), one labelled point per (kind, size)."""
    ok = [r for r in results if "error" not in r and r.get("sts_test_spearman") is not None]
    if not ok:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6), dpi=120)
    colors = {k: plt.get_cmap("tab10")(i) for i, k in enumerate(KINDS)}
    markers = ["o", "s", "^", "D", "v"]
    dims = sorted({r["dim"] for r in ok})
    seen: dict[int, int] = {}  # kinds with equal parameter counts (the fourier family) share an x
    for r in sorted(ok, key=lambda r: -r["sts_test_spearman"]):
        k = seen[r["total_params"]] = seen.get(r["total_params"], -1) + 1
        ax.scatter(r["total_params"], r["sts_test_spearman"], color=colors.get(r["kind"], "gray"),
                   marker=markers[dims.index(r["dim"]) % len(markers)], s=60, zorder=3)
        ax.annotate(f"{r['kind']} (d={r['dim']})", (r["total_params"], r["sts_test_spearman"]),
                    textcoords="offset points", xytext=(6, 4) if k % 2 == 0 else (-6, -10),
                    ha="left" if k % 2 == 0 else "right", fontsize=8)
    for i, d in enumerate(dims):
        ax.scatter([], [], color="gray", marker=markers[i % len(markers)], label=f"d={d}")
    ax.set_xscale("log")
    ax.set_xlabel("total parameters (log scale)")
    ax.set_ylabel("STS-B test Spearman x100")
    ax.set_title("Embedding study: quality vs size (same encoder, data, steps, seed)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_study(results: list[dict[str, Any]], args: argparse.Namespace, argv: Sequence[str] | None) -> dict[str, Any]:
    """Aggregate results into embedding_study.json/.md/.png under ``args.out``."""
    out = Path(args.out)
    results = add_ratios(results)
    study = {"command": "python -m bench.embedding_study " + " ".join(argv if argv is not None else sys.argv[1:]),
             "machine": machine_info(), "threads": args.threads,
             "recipe": {"stages": stage_spec(args.steps, args.nli_steps), "layers": args.layers, "heads": args.heads,
                        "ffn_mult": args.ffn_mult, "seed": args.seed, "sizes": args.sizes, "kinds": args.kinds},
             "results": results}
    try:
        png = plot_study(results, out / "embedding_study.png")
        study["plot"] = str(png) if png else None
    except ImportError as e:  # matplotlib is in the train extra
        study["plot_error"] = str(e)
    write_json(out / "embedding_study.json", study)
    (out / "embedding_study.md").write_text(study_markdown(study))
    return study


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.embedding_study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", default="300", help="contrastive steps N (then sts:N/4), or a full stage spec")
    p.add_argument("--nli-steps", type=int, default=0, help="add nli:K (frozen encoder) and score SNLI test")
    p.add_argument("--kinds", default=",".join(KINDS), help="comma-separated embedding kinds")
    p.add_argument("--sizes", default="256", help="model widths d, comma-separated (e.g. 256,512)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=0, help="attention heads (0: d/64)")
    p.add_argument("--ffn-mult", type=int, default=4, help="FFN width = ffn_mult * d")
    p.add_argument("--kind-options", default="{}",
                   help='JSON {kind: embedding options}, e.g. \'{"fourier": {"mlp_hidden": 128}}\' (default: registry defaults)')
    p.add_argument("--extra-train-args", default="", help="appended to every training command (quoted string)")
    p.add_argument("--threads", type=int, default=2, help="torch threads for training and evaluation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--encode-sentences", type=int, default=2000, help="sentences timed for encode throughput")
    p.add_argument("--run-timeout", type=float, default=None, help="seconds before a training run is killed")
    p.add_argument("--force", action="store_true", help="re-run kinds whose result exists")
    p.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    p.add_argument("--work-dir", default=str(REPO_ROOT / "runs" / "embedding_study"), help="training run directories")
    p.add_argument("--out", default=str(RESULTS_DIR))
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import shlex

    args = build_parser().parse_args(argv)
    args.kinds = [k for k in args.kinds.split(",") if k]
    unknown = [k for k in args.kinds if k not in KINDS]
    if unknown:
        raise SystemExit(f"unknown kinds {unknown}; choose from {KINDS}")
    args.sizes = [int(x) for x in str(args.sizes).split(",") if x]
    args.kind_options = json.loads(args.kind_options)
    args.extra_train_args = shlex.split(args.extra_train_args)
    vocab_perm = prepare_vocab_perm(Path(args.data_dir), Path(args.work_dir))
    results = []
    for dim in args.sizes:
        for kind in args.kinds:
            try:
                results.append(run_one(kind, dim, args, vocab_perm))
            except Exception as e:  # keep going; the failed run is retried next time
                print(f"[{run_name(kind, dim)}] FAILED: {e}", file=sys.stderr)
                results.append({"kind": kind, "dim": dim, "error": f"{type(e).__name__}: {e}"})
            write_study(results, args, argv)  # the report grows as runs finish
    study = write_study(results, args, argv)
    print(f"wrote {Path(args.out) / 'embedding_study.md'}", file=sys.stderr)
    return study


if __name__ == "__main__":
    main()
