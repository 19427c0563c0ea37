"""Near pairs for distillation: pairs of cached sentences that the teacher finds related.

A random distillation batch is almost all unrelated pairs (teacher cosine ~0.0-0.3), so the relational
loss teaches the student little about the range STS measures: which of two *related* sentences is the
closer paraphrase. Near pairs fill that range. Two sources, both given as row pairs of a
``model.teacher.TeacherCache``:

- human-made pairs of the training splits: STS-B train and MRPC train (news and forum sentence
  pairs; only their texts are used, the gold scores are not);
- teacher neighbours: each row of a random pool with its ``k`` nearest other pool rows by teacher
  cosine (exact and near duplicates above ``max_cos`` skipped). The pool is drawn from every usable
  row, or only from the sentences of chosen ``text/`` files (``sources``, e.g. news and forum: the
  genres the student trails the teacher most on).

The pairs are computed once per (pool, k, seed, sources) and saved beside the cache
(``near_pairs_<pool>_<k>_<seed>[_<sources>].npy``), so a resumed run reads them back.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model.data import DataPaths, iter_text_sentences, read_mrpc, read_sts

log = logging.getLogger("pete.train")


@torch.no_grad()
def mine_neighbours(embeddings: np.ndarray, rows: np.ndarray, k: int = 2, max_cos: float = 0.95,
                    chunk: int = 1024) -> np.ndarray:
    """Each of ``rows`` paired with its ``k`` nearest other rows of ``rows`` by cosine of ``embeddings``.

    Args:
        embeddings: (N, D) embeddings (float16 or float32, e.g. the cache memmap).
        rows: (n,) int row indices into ``embeddings``: the pool searched.
        k: neighbours kept per row.
        max_cos: candidates with a cosine above this are skipped as duplicates.
        chunk: rows scored at once (memory: chunk x n float32).
    Returns:
        (m, 2) int64 row pairs (a < b), unique, m <= n * k.
    """
    ids = np.sort(rows).astype(np.int64)
    x = F.normalize(torch.from_numpy(np.asarray(embeddings[ids], dtype=np.float32)), dim=-1)
    ids = torch.from_numpy(ids)
    out = []
    for s in range(0, len(x), chunk):
        sims = x[s : s + chunk] @ x.T  # (c, n)
        sims[sims > max_cos] = -2.0  # self (cos 1) and near duplicates
        top = sims.topk(min(k, len(x) - 1), dim=1).indices  # (c, k)
        a = ids[s : s + chunk, None].expand_as(top)
        out.append(torch.stack((a.flatten(), ids[top].flatten()), dim=1))
    pairs = torch.cat(out).numpy()
    return np.unique(np.sort(pairs, axis=1), axis=0)


def dataset_pairs(paths: DataPaths, row_of: dict[str, int]) -> np.ndarray:
    """STS-B train and MRPC train sentence pairs as (m, 2) int64 cache rows (pairs with a side missing
    from the cache are dropped)."""
    texts = [(p.sentence1.strip(), p.sentence2.strip()) for p in read_sts(paths.sts_train)]
    if paths.mrpc_train.exists():
        texts += [(a.strip(), b.strip()) for a, b, _ in read_mrpc(paths.mrpc_train)]
    pairs = [(row_of[a], row_of[b]) for a, b in texts if a in row_of and b in row_of and a != b]
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def source_rows(paths: DataPaths, row_of: dict[str, int], sources: list[str]) -> np.ndarray:
    """Cache rows of the sentences of ``text/<source>.tsv.gz`` for each of ``sources``.

    Raises:
        FileNotFoundError: a source has no file in ``text/``.
    """
    rows = set()
    for name in sources:
        f = paths.text_dir / f"{name}.tsv.gz"
        if not f.is_file():
            available = sorted(p.name for p in paths.text_dir.glob("*.tsv.gz"))
            raise FileNotFoundError(f"no text source {f}; available: {available}")
        rows.update(row_of[t] for t in (s.strip() for s in iter_text_sentences(f)) if t in row_of)
    return np.asarray(sorted(rows), dtype=np.int64)


def near_pairs(cache_dir: str | Path, embeddings: np.ndarray, texts: list[str], paths: DataPaths, n: int,
               pool: int = 150_000, k: int = 2, seed: int = 0, sources: list[str] | None = None) -> np.ndarray:
    """The near pairs among the first ``n`` cache rows, read from or written to ``cache_dir``.

    Args:
        cache_dir: the teacher cache directory (the pairs file is saved there).
        embeddings: (rows, D) teacher embeddings; texts: the cached texts in row order.
        paths: where STS-B train and MRPC train are.
        n: rows usable (finished); pool: rows searched for neighbours; k: neighbours per pool row.
        sources: draw the pool from these ``text/`` files only (default: every usable row).
    Returns:
        (m, 2) int64 row pairs, both rows < n.
    """
    tag = "_" + "+".join(sorted(sources)) if sources else ""
    f = Path(cache_dir) / f"near_pairs_{pool}_{k}_{seed}{tag}.npy"
    if f.exists():
        pairs = np.load(f)
    else:
        rng = np.random.default_rng(seed)
        row_of = {t: i for i, t in enumerate(texts[:n])}
        candidates = source_rows(paths, row_of, sources) if sources else np.arange(n)
        rows = rng.choice(candidates, size=min(pool, len(candidates)), replace=False)
        mined = mine_neighbours(embeddings, rows, k=k)
        human = dataset_pairs(paths, row_of)
        pairs = np.concatenate((human, mined))
        log.info("near pairs: %d from STS-B/MRPC train, %d teacher neighbours (pool %d from %s, k %d)",
                 len(human), len(mined), len(rows), ", ".join(sources or ["every row"]), k)
        tmp = f.with_suffix(".tmp.npy")
        np.save(tmp, pairs)
        os.replace(tmp, f)
    return pairs[(pairs < n).all(axis=1)]
