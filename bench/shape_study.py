"""Shape study: where the parameters go at equal size (<= 2.5 M), same data, same steps, same seed.

    .venv/bin/python -m bench.shape_study --teacher-cache ~/.cache/pete-serve/teacher

Shapes (``--shapes``, ``LxD/FFN``): 2x256/1024 (the bundled shape), 3x224/768, 4x192/640: 2.26-2.38 M
parameters each with the PETE ``fourier_geo`` embedding, the pair NLI head included, head width 56-64.
Each is trained from scratch by the training CLI in a subprocess with one recipe: ``token_init:T``
(PETE MLP onto the teacher's word embeddings) then ``distill:N`` (knowledge distillation on the
teacher cache: projected cosine + in-batch cosine-matrix MSE), ``--distill-batch 128``, peak lr
``--lr``, the frequency-ranked tokenizer, seed 0, ``--threads`` threads.

Scored per shape: parameters, STS-B dev and test Spearman x100 (overall and per genre: captions,
news, forums), the median cosine of unrelated (gold < 1) and paraphrase (gold >= 4) test pairs,
training seconds per step (from ``train.log``), encode sentences/s (STS-B test sentences, batch
64, float32, ``--threads`` threads; every shape measured round-robin in one process at the end, best
of 5) and its ratio to the first shape.
The default shape is picked by mean per-genre STS-B dev Spearman; speed is shown beside it.

Resumable: finished shapes (same recipe) are skipped, an interrupted training resumes from its
state.pt (run directories under ``--work-dir``, default runs/shape_study, git-ignored). Writes
``OUT/shape_study.json`` and ``OUT/shape_study.md``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.common import DEFAULT_DATA_DIR, RESULTS_DIR, markdown_table
from bench.embedding_study import encode_throughput, prepare_vocab_perm, recipe_hash, train_run
from loadtest.results import machine_info, write_json

DEFAULT_SHAPES = "2x256/1024,3x224/768,4x192/640"
SHAPE = re.compile(r"^(\d+)x(\d+)/(\d+)$")


def parse_shapes(text: str) -> list[tuple[int, int, int]]:
    """``"2x256/1024,4x192/640"`` -> [(2, 256, 1024), (4, 192, 640)]: (layers, width, FFN width).

    Raises:
        argparse.ArgumentTypeError: a shape not written LxD/FFN, or a width not divisible into
        heads of an even size >= 32.
    """
    out = []
    for part in text.split(","):
        m = SHAPE.match(part.strip())
        if not m:
            raise argparse.ArgumentTypeError(f"bad shape {part!r}; use LAYERSxWIDTH/FFN, e.g. 4x192/640")
        layers, dim, ffn = map(int, m.groups())
        if heads_for(dim) is None:
            raise argparse.ArgumentTypeError(f"width {dim}: no head count gives an even head size of 32-64")
        out.append((layers, dim, ffn))
    return out


def heads_for(dim: int) -> int | None:
    """Fewest heads whose size is even and at most 64 (RoPE rotates pairs of dimensions)."""
    for h in range(1, dim // 32 + 1):
        if dim % h == 0 and (dim // h) % 2 == 0 and dim // h <= 64:
            return h
    return None


def shape_name(layers: int, dim: int, ffn: int) -> str:
    return f"{layers}x{dim}_ffn{ffn}"


def recipe_for(shape: tuple[int, int, int], args: argparse.Namespace) -> dict[str, Any]:
    """The run's recipe in the form ``bench.embedding_study.train_command`` reads."""
    layers, dim, ffn = shape
    return {"kind": "fourier_geo", "dim": dim, "layers": layers, "heads": heads_for(dim), "ffn_dim": ffn,
            "stages": f"token_init:{args.token_steps},distill:{args.steps}", "seed": args.seed,
            "tokenizer": "frequency", "embedding_options": {"mlp_hidden": 256},
            "extra_train_args": ["--distill-batch", "128", "--lr-distill", str(args.lr),
                                 "--teacher-cache", str(args.teacher_cache),
                                 "--distill-sentences", str(args.distill_sentences),
                                 "--eval-every", str(args.eval_every)],
            "data_dir": str(Path(args.data_dir).resolve())}


def evaluate_shape(final_dir: Path, data_dir: Path, threads: int, encode_sentences: int) -> dict[str, Any]:
    """Parameters, STS-B dev/test (overall, per genre, cosine per gold bin) and encode sentences/s."""
    import torch

    from model.data import DataPaths, read_sts
    from model.encoder import SentenceEncoder
    from model.scoring import sts_scores

    torch.set_num_threads(threads)
    paths = DataPaths(data_dir)
    model = SentenceEncoder.from_pretrained(final_dir)
    out: dict[str, Any] = {"params": model.parameter_counts()}
    test_rows = read_sts(paths.sts_test)
    for split, rows in (("dev", read_sts(paths.sts_dev)), ("test", test_rows)):
        s = sts_scores(model, rows)
        out[f"sts_{split}"] = s["spearman"]
        out.update({f"sts_{split}_{g}": v["spearman"] for g, v in s["genres"].items()})
        out[f"sts_{split}_genre_mean"] = sum(v["spearman"] for v in s["genres"].values()) / len(s["genres"])
        out[f"{split}_cos_unrelated"] = s["cosine_by_gold"]["0-1"]["median"]
        out[f"{split}_cos_paraphrase"] = s["cosine_by_gold"]["4-5"]["median"]
    texts = list(dict.fromkeys(t for p in test_rows for t in (p.sentence1, p.sentence2)))[:encode_sentences]
    out["encode_sps"] = encode_throughput(model, texts, threads)
    return out


def measure_speeds(results: list[dict[str, Any]], data_dir: Path, threads: int, encode_sentences: int,
                   rounds: int = 5) -> None:
    """Encode sentences/s of every shape's final checkpoint, measured round-robin in one process (so
    all shapes see the same machine load), best of ``rounds``; sets ``encode_sps`` on each result."""
    from model.data import DataPaths, read_sts
    from model.encoder import SentenceEncoder

    rows = read_sts(DataPaths(data_dir).sts_test)
    texts = list(dict.fromkeys(t for p in rows for t in (p.sentence1, p.sentence2)))[:encode_sentences]
    models = [SentenceEncoder.from_pretrained(Path(r["run_dir"]) / "final") for r in results]
    best = [0.0] * len(models)
    for _ in range(rounds):
        for i, m in enumerate(models):
            best[i] = max(best[i], encode_throughput(m, texts, threads, repeats=1))
    for r, sps in zip(results, best):
        r["encode_sps"] = sps


def run_shape(shape: tuple[int, int, int], args: argparse.Namespace, vocab_perm: Path) -> dict[str, Any]:
    """Train (or resume) and score one shape; a result with the same recipe is reused."""
    name = shape_name(*shape)
    recipe = recipe_for(shape, args)
    h = recipe_hash(recipe)
    result_path = Path(args.out) / "shape_study" / f"{name}.json"
    if result_path.exists() and json.loads(result_path.read_text()).get("recipe_hash") == h:
        print(f"[{name}] done already, skipped", file=sys.stderr)
        return json.loads(result_path.read_text())
    run_dir = Path(args.work_dir) / f"{name}_{h}"
    print(f"[{name}] training in {run_dir}", file=sys.stderr, flush=True)
    res: dict[str, Any] = {"shape": name, "layers": shape[0], "dim": shape[1], "ffn_dim": shape[2],
                           "heads": recipe["heads"], "recipe": recipe, "recipe_hash": h, "run_dir": str(run_dir)}
    res.update(train_run(recipe, run_dir, args.threads, vocab_perm))
    res.update(evaluate_shape(run_dir / "final", Path(args.data_dir), args.threads, args.encode_sentences))
    res["total_params"] = res["params"]["total"]
    res["finished_at"] = datetime.now().isoformat(timespec="seconds")
    write_json(result_path, res)
    print(f"[{name}] STS-B dev {res['sts_dev']:.1f} test {res['sts_test']:.1f}, {res['encode_sps']:.0f} sent/s",
          file=sys.stderr, flush=True)
    return res


def study_markdown(study: dict[str, Any]) -> str:
    """shape_study.md: recipe, one row per shape, the pick and why."""
    rows = study["results"]
    base = rows[0]["encode_sps"] if rows else None
    for r in rows:
        r["encode_vs_first"] = r["encode_sps"] / base if base else float("nan")
        r["train_vs_first"] = r["train_s_per_step"] / rows[0]["train_s_per_step"]
    cols = [("shape", "layers x width / FFN"), ("total_params", "params"),
            ("sts_dev", "STS-B dev"), ("sts_dev_genre_mean", "dev genre mean"),
            ("sts_test", "STS-B test"), ("sts_test_captions", "test captions"), ("sts_test_news", "test news"),
            ("sts_test_forums", "test forums"), ("test_cos_unrelated", "cos gold<1", lambda v: f"{v:.2f}"),
            ("test_cos_paraphrase", "cos gold>=4", lambda v: f"{v:.2f}"), ("train_s_per_step", "train s/step", lambda v: f"{v:.2f}"),
            ("encode_sps", "encode sent/s", lambda v: f"{v:,.0f}"), ("encode_vs_first", "encode vs first", lambda v: f"{v:.2f}x")]
    pick = max(rows, key=lambda r: r["sts_dev_genre_mean"]) if rows else None
    r0 = study["recipe"]
    lines = ["# Shape study: where the parameters go at equal size", "",
             f"One recipe for every shape, from scratch: `{r0['stages']}`, distillation batch 128, "
             f"peak lr {r0['lr']}, seed {r0['seed']}, {r0['threads']} torch thread(s), "
             f"teacher cache rows used: {r0['distill_sentences'] or 'all finished'}. "
             "STS-B is Spearman x100; `cos gold<1` / `cos gold>=4` are the median test cosines of "
             "unrelated pairs and paraphrases (teacher: 0.23 / 0.87). Encode speed is float32, batch 64, "
             "all shapes measured round-robin in one process at the end (best of 5). Training s/step "
             "comes from each run's log, under whatever else the machine ran then (see notes).", "",
             markdown_table(rows, cols)]
    if pick:
        lines += [f"Pick by mean per-genre STS-B dev Spearman: **{pick['shape']}** "
                  f"({pick['sts_dev_genre_mean']:.1f}); encode speed {pick['encode_vs_first']:.2f}x "
                  f"of {rows[0]['shape']}.", ""]
    lines += [f"- {n}" for n in study.get("notes", [])]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.shape_study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", type=parse_shapes, default=parse_shapes(DEFAULT_SHAPES))
    p.add_argument("--steps", type=int, default=1500, help="distill steps per shape")
    p.add_argument("--token-steps", type=int, default=300, help="token_init steps per shape")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of the distill stage")
    p.add_argument("--distill-sentences", type=int, default=0, help="cached rows used (0: all finished)")
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--teacher-cache", required=True)
    p.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    p.add_argument("--work-dir", default="runs/shape_study")
    p.add_argument("--out", default=str(RESULTS_DIR))
    p.add_argument("--encode-sentences", type=int, default=2000)
    p.add_argument("--note", action="append", default=[], help="a line for the notes under the table")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    vocab_perm = prepare_vocab_perm(Path(args.data_dir), Path(args.work_dir))
    results = [run_shape(s, args, vocab_perm) for s in args.shapes]
    measure_speeds(results, Path(args.data_dir), args.threads, args.encode_sentences)
    recipe = {"stages": f"token_init:{args.token_steps},distill:{args.steps}", "lr": args.lr, "seed": args.seed,
              "threads": args.threads, "distill_sentences": args.distill_sentences}
    study = {"recipe": recipe, "machine": machine_info(), "results": results, "notes": args.note,
             "written_at": datetime.now().isoformat(timespec="seconds")}
    md = study_markdown(study)
    write_json(Path(args.out) / "shape_study.json", study)
    (Path(args.out) / "shape_study.md").write_text(md)
    sys.stdout.write(md)
    return study


if __name__ == "__main__":
    main()
