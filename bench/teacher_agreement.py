"""Agreement with the teacher outside STS-B: a check for tuning to one benchmark.

For each ``text/`` genre file, ``--sentences`` sentences that the distillation never sampled (rows of
the teacher cache at or after ``--trained-rows``: the cache order is a seeded shuffle, so they are a
uniform sample), paired two ways: each of the first ``--pairs`` with its teacher-nearest other sentence
(the related range STS measures) and ``--pairs`` random pairs. The score is Spearman's rho x100 between
the student's and the teacher's (all-MiniLM-L6-v2) cosines of those pairs, per file and averaged; a
row ``words`` does the same for random pairs of single vocabulary words (word-level knowledge).

    .venv/bin/python -m bench.teacher_agreement model/checkpoints/default runs/x/best_distill \\
        --trained-rows 155648 --out bench/results/recipe_probes/teacher_agreement

Writes OUT.json and OUT.md (one row per checkpoint). Training-only: needs the ``train`` extra
(the teacher) and a teacher cache (``python -m model.teacher``).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from model.data import DataPaths, iter_text_sentences
from model.teacher import DEFAULT_CACHE_DIR, TeacherCache
from model.tokenizer import read_vocab


def held_out_sets(paths: DataPaths, cache_dir: Path, trained_rows: int, n: int, words: int,
                  seed: int = 0) -> dict[str, list[str]]:
    """``n`` sentences per ``text/`` file among cache rows >= ``trained_rows`` and ``words`` words.

    Raises:
        ValueError: a file has fewer than ``n`` such sentences.
    """
    later = set(TeacherCache(cache_dir).texts()[trained_rows:])
    rng = random.Random(seed)
    sets = {}
    for f in sorted(paths.text_dir.glob("*.tsv.gz")):
        rows = [t for t in (s.strip() for s in iter_text_sentences(f)) if t in later]
        if len(rows) < n:
            raise ValueError(f"{f.name}: only {len(rows)} held-out sentences (need {n})")
        sets[f.name.split(".")[0]] = rng.sample(rows, n)
    vocab = [w for w in read_vocab(paths.bert_vocab) if w.isalpha() and len(w) > 3]
    rng.shuffle(vocab)
    sets["words"] = vocab[:words]
    return sets


def pair_rows(teacher: torch.Tensor, pairs: int, rng: random.Random, nearest: bool = True) -> np.ndarray:
    """(m, 2) int row pairs: the first ``pairs`` rows with their teacher-nearest row (if ``nearest``),
    then ``pairs`` random pairs. ``teacher``: (n, 384) unit-norm float32."""
    n = len(teacher)
    out = []
    if nearest:
        sims = teacher @ teacher.T
        sims.fill_diagonal_(-2.0)
        out += [(i, int(sims[i].argmax())) for i in range(min(pairs, n))]
    out += [tuple(rng.sample(range(n), 2)) for _ in range(pairs)]
    return np.asarray(out)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.teacher_agreement", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR))
    p.add_argument("--trained-rows", type=int, required=True, help="cache rows the runs could sample")
    p.add_argument("--sentences", type=int, default=600)
    p.add_argument("--pairs", type=int, default=300)
    p.add_argument("--words", type=int, default=3000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True, help="OUT.json and OUT.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from model.encoder import SentenceEncoder
    from model.evaluate import TeacherModel

    sets = held_out_sets(DataPaths(args.data_dir), Path(args.cache_dir), args.trained_rows, args.sentences, args.words)
    teacher = TeacherModel()
    rng = random.Random(0)
    with torch.inference_mode():
        t_vec = {k: F.normalize(teacher.encode(v), dim=-1) for k, v in sets.items()}
    rows = {k: pair_rows(v, args.words if k == "words" else args.pairs, rng, nearest=k != "words")
            for k, v in t_vec.items()}
    results = []
    for ck in args.checkpoints:
        model = SentenceEncoder.from_pretrained(ck).eval()
        scores = {}
        with torch.inference_mode():
            for k, texts in sets.items():
                s_vec = F.normalize(model.encode(texts), dim=-1)
                r = rows[k]
                cs = (s_vec[r[:, 0]] * s_vec[r[:, 1]]).sum(-1).numpy()
                ct = (t_vec[k][r[:, 0]] * t_vec[k][r[:, 1]]).sum(-1).numpy()
                scores[k] = round(100 * float(spearmanr(cs, ct)[0]), 2)
        sentence = [v for k, v in scores.items() if k != "words"]
        results.append({"checkpoint": ck, "scores": scores, "sentence_mean": round(float(np.mean(sentence)), 2)})
    report = {"trained_rows": args.trained_rows, "sentences": args.sentences, "pairs": args.pairs,
              "words": args.words, "results": results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    names = [k for k in sets if k != "words"]
    md = ["# Agreement with the teacher outside STS-B\n",
          f"`python -m bench.teacher_agreement {' '.join(args.checkpoints)} --trained-rows {args.trained_rows}`: "
          f"Spearman x100 of student vs teacher cosines; per `text/` file {args.sentences} held-out sentences, "
          f"{args.pairs} teacher-nearest + {args.pairs} random pairs; `words`: {args.words} random pairs of "
          f"{args.words} vocabulary words.\n",
          "| checkpoint | " + " | ".join(names) + " | sentence mean | words |",
          "|---|" + "---|" * (len(names) + 2)]
    for r in results:
        md.append(f"| `{r['checkpoint']}` | " + " | ".join(f"{r['scores'][k]:.1f}" for k in names)
                  + f" | {r['sentence_mean']:.2f} | {r['scores']['words']:.1f} |")
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    sys.stdout.write("\n".join(md) + "\n")
    return report


if __name__ == "__main__":
    main()
