"""Unlabelled NLI pairs for pseudo-labelling by the NLI teacher (``model.nli_teacher label``).

SNLI's premises are image captions and its hypotheses were written about the same scene; the closest
unlabelled material we have is caption pairs (sentences.tsv.gz, which excludes every caption of an
SNLI dev/test image). MultiNLI's premises are everyday prose; the closest is ``text/``. Four kinds:

- ``same_image``  two captions of one image (mostly entailment or neutral);
- ``neighbour``   a caption and one of its nearest captions of *another* image by the student's cosine
                  (similar scenes that differ in a detail: many contradictions);
- ``random``      a caption and a caption of a random other image;
- ``text``        a ``text/`` sentence (news, wiki, forum, definitions, quotes) and one of its nearest
                  neighbours among the sampled ones.

The student encoder only picks neighbours; labels come from the teacher. Deterministic in the seed::

    python -m model.nli_pseudo --data-dir ../shared/data --encoder model/checkpoints/default \\
        --out ~/.cache/pete-serve/nli_teacher/pairs_pseudo.tsv --pairs 60000
"""

from __future__ import annotations

import argparse
import itertools
import logging
import random
import sys
from pathlib import Path
from typing import Sequence

import torch

from model.data import DataPaths, caption_groups, iter_text_sentences, read_sentences
from model.nli_teacher import pair_key

log = logging.getLogger("pete.nli_pseudo")
KIND_SHARES = {"same_image": 0.35, "neighbour": 0.35, "random": 0.1, "text": 0.2}
TEXT_FILES = ("news", "wiki", "forum", "definitions", "quotes")


@torch.inference_mode()
def nearest_other(vectors: torch.Tensor, owner: Sequence[int], k: int, rng: random.Random,
                  chunk: int = 2048) -> list[int]:
    """For each row of ``vectors`` (N, d) float32, one of its ``k`` most cosine-similar rows with a
    different ``owner`` (e.g. another image), picked at random; -1 where there is none."""
    v = torch.nn.functional.normalize(vectors, dim=-1)
    own = torch.as_tensor(list(owner))
    out: list[int] = []
    for s in range(0, len(v), chunk):
        sims = v[s : s + chunk] @ v.T  # (c, N)
        sims[own[s : s + chunk].unsqueeze(1) == own.unsqueeze(0)] = -2.0  # same owner (and self)
        top = sims.topk(min(k, len(v)), dim=1)
        for vals, idx in zip(top.values.tolist(), top.indices.tolist()):
            ok = [j for val, j in zip(vals, idx) if val > -2.0]
            out.append(rng.choice(ok) if ok else -1)
    return out


def build_pairs(groups: list[list[str]], texts: list[str], encode, n: int, seed: int = 0,
                k: int = 5) -> list[tuple[str, str, str]]:
    """``n`` distinct (premise, hypothesis, kind) pairs in ``KIND_SHARES`` proportions (fewer where
    the inputs run out), shuffled. ``encode``: texts -> (N, d) float32 sentence vectors."""
    rng = random.Random(seed)
    want = {kind: round(n * share) for kind, share in KIND_SHARES.items()}
    groups = [g for g in groups if len(g) >= 2]
    pool_groups = rng.sample(groups, min(len(groups), want["neighbour"] + want["random"]))
    captions = [rng.choice(g) for g in pool_groups]
    out: list[tuple[str, str, str]] = []
    for g in rng.sample(groups, min(len(groups), want["same_image"])):
        a, b = rng.sample(g, 2)
        out.append((a, b, "same_image"))
    if captions:
        near = nearest_other(encode(captions), range(len(captions)), k, rng)
        order = list(range(len(captions)))
        rng.shuffle(order)
        for i in order[: want["neighbour"]]:
            if near[i] >= 0:
                out.append((captions[i], captions[near[i]], "neighbour"))
        for i in order[want["neighbour"] :][: want["random"]]:
            j = rng.randrange(len(captions))
            if j != i:
                out.append((captions[i], captions[j], "random"))
    sample = rng.sample(texts, min(len(texts), want["text"]))
    if len(sample) > 1:
        near = nearest_other(encode(sample), range(len(sample)), k, rng)
        out += [(sample[i], sample[j], "text") for i, j in enumerate(near) if j >= 0]
    seen: set[str] = set()
    unique = []
    for p, h, kind in out:
        key = pair_key(p, h)
        if p != h and key not in seen:
            seen.add(key)
            unique.append((p, h, kind))
    rng.shuffle(unique)
    return unique


def main(argv: list[str] | None = None) -> None:
    """``python -m model.nli_pseudo``: write premise<TAB>hypothesis<TAB>kind lines."""
    p = argparse.ArgumentParser(prog="python -m model.nli_pseudo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--encoder", default="model/checkpoints/default", help="student checkpoint that picks neighbours")
    p.add_argument("--out", required=True)
    p.add_argument("--pairs", type=int, default=60000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--text-pool", type=int, default=200000, help="text/ sentences read before sampling")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    from model.encoder import SentenceEncoder

    paths = DataPaths(args.data_dir)
    groups = caption_groups(read_sentences(paths.sentences))
    per_file = args.text_pool // len(TEXT_FILES)
    texts = [t for name in TEXT_FILES if (paths.text_dir / f"{name}.tsv.gz").exists()
             for t in itertools.islice(iter_text_sentences(paths.text_dir / f"{name}.tsv.gz"), per_file)]
    model = SentenceEncoder.from_pretrained(args.encoder)
    pairs = build_pairs(groups, texts, lambda ts: model.encode(ts, batch_size=256), args.pairs, args.seed)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("".join(f"{pair_key(a, b)}\t{kind}\n" for a, b, kind in pairs), encoding="utf-8")
    counts = {k: sum(1 for *_, kind in pairs if kind == k) for k in KIND_SHARES}
    log.info("%d pairs written to %s: %s", len(pairs), args.out, counts)


if __name__ == "__main__":
    main()
