"""``TrainData``: everything the training stages sample from, loaded lazily from a directory laid out
like ../shared/data (plus ``--nli-file`` files and the teacher embedding cache)."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import torch

from model.data import (NLI_LABEL_IDS, DataPaths, NLIPair, STSPair, caption_groups, read_nli, read_sentences,
                        read_sts, split_snli_dev)
from model.near_pairs import near_pairs
from model.nli_teacher import pair_key
from model.teacher import TeacherCache
from model.train_config import TrainConfig

log = logging.getLogger("pete.train")
IN_DOMAIN_SOURCES = ("snli", "cad_snli", "mpe", "mnli")


class TrainData:
    """The stages' data. Each property is read on first use and kept.

    ``nli_file`` entries of the config add full-scale NLI files (SNLI/MultiNLI train jsonl or GLUE
    tsv) when a user has them.
    """

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.paths = DataPaths(cfg.data_dir)

    @functools.cached_property
    def sentences(self):
        return read_sentences(self.paths.sentences)

    @functools.cached_property
    def groups(self) -> list[list[str]]:
        """Captions grouped by image (each group >= 2 distinct captions): natural paraphrases."""
        return caption_groups(self.sentences)

    @functools.cached_property
    def sts_train(self) -> list[STSPair]:
        return read_sts(self.paths.sts_train)

    @functools.cached_property
    def sts_dev(self) -> list[STSPair]:
        return read_sts(self.paths.sts_dev)

    @functools.cached_property
    def _snli_dev_parts(self) -> tuple[list[NLIPair], list[NLIPair]]:
        return split_snli_dev(read_nli(self.paths.snli_dev), self.cfg.snli_dev_train_fraction)

    @property
    def nli_valid(self) -> list[NLIPair]:
        """Validation for NLI model selection: the held-back part of SNLI dev."""
        return self._snli_dev_parts[1]

    @functools.cached_property
    def nli_train(self) -> tuple[list[NLIPair], torch.Tensor]:
        """3-way labelled pairs and their sampling weights (in-domain sources up-weighted)."""
        pairs = [p for p in read_nli(self.paths.nli_train) if p.label in NLI_LABEL_IDS]
        pairs += read_nli(self.paths.snli_train_sample)
        pairs += self._snli_dev_parts[0]
        for f in self.cfg.nli_file:
            pairs += read_nli(f)
        w = torch.tensor([self.cfg.in_domain_weight if p.source.startswith(IN_DOMAIN_SOURCES) else 1.0
                          for p in pairs], dtype=torch.float64)
        log.info("nli train: %d pairs (%d weighted x%.1f)", len(pairs), int((w > 1).sum()), self.cfg.in_domain_weight)
        return pairs, w

    @functools.cached_property
    def nli_teacher(self) -> "NliTeacherLogits":
        """The NLI teacher's cached logits (labelled and pseudo-labelled pairs)."""
        return NliTeacherLogits(self.cfg)

    @functools.cached_property
    def triplets(self) -> list[tuple[str, str, str | None]]:
        """(premise, entailed hypothesis, contradicted hypothesis or None) from the NLI training pairs."""
        by_premise: dict[str, dict[str, list[str]]] = {}
        for p in self.nli_train[0]:
            by_premise.setdefault(p.premise, {}).setdefault(p.label, []).append(p.hypothesis)
        out = []
        for prem, d in by_premise.items():
            for e in d.get("entailment", []):
                for c in d.get("contradiction", [])[:1] or [None]:
                    out.append((prem, e, c))
        log.info("contrastive nli triplets: %d", len(out))
        return out


class NliTeacherLogits:
    """The NLI teacher's cached logits (``model.nli_teacher``), read from ``cfg.nli_teacher``.

    ``for_pairs(premises, hypotheses)`` looks up the labelled training pairs' logits (the
    ``logits_train`` cache); ``pseudo`` holds the unlabelled pairs of the ``cfg.nli_pseudo`` caches
    and their logits. Only finished rows of a cache are used.

    Raises:
        FileNotFoundError: a cache named by the config is missing (label it with
            ``python -m model.nli_teacher label``).
    """

    def __init__(self, cfg: TrainConfig) -> None:
        root = Path(cfg.nli_teacher)
        self.by_pair: dict[str, np.ndarray] = {}
        if cfg.nli_kd_weight > 0:
            keys, logits = self._open(root / "logits_train")
            self.by_pair = dict(zip(keys, logits))
            log.info("nli teacher: logits of %d labelled pairs", len(self.by_pair))
        self.pseudo: list[tuple[str, str]] = []
        parts = []
        for name in cfg.nli_pseudo:
            keys, logits = self._open(root / f"logits_{name}")
            self.pseudo += [tuple(k.split("\t", 1)) for k in keys]
            parts.append(logits)
            log.info("nli teacher: %d pseudo-labelled pairs from %s", len(keys), name)
        self.pseudo_logits = torch.from_numpy(np.concatenate(parts)) if parts else torch.empty(0, 3)

    @staticmethod
    def _open(directory: Path) -> tuple[list[str], np.ndarray]:
        if not (directory / "meta.json").exists():
            raise FileNotFoundError(f"no NLI teacher logit cache at {directory}: run "
                                    f"`python -m model.nli_teacher label` first")
        cache = TeacherCache(directory)
        n = cache.done
        return cache.texts()[:n], np.asarray(cache.embeddings()[:n], dtype=np.float32)

    def for_pairs(self, premises: list[str], hypotheses: list[str]) -> tuple[list[int], torch.Tensor]:
        """Rows that have a cached teacher logit, and those logits (len(rows), 3) float32."""
        rows, found = [], []
        for i, (p, h) in enumerate(zip(premises, hypotheses)):
            t = self.by_pair.get(pair_key(p, h))
            if t is not None:
                rows.append(i)
                found.append(t)
        return rows, torch.from_numpy(np.stack(found)) if found else torch.empty(0, 3)


class TeacherTargets:
    """The finished rows of a ``TeacherCache``: texts and (n, 384) float16 embeddings, memory-mapped.

    ``refresh()`` picks up rows that a caching run still in progress has finished since.

    Args:
        cfg: the run's config; the cache is ``cfg.teacher_cache`` (sentences, at most
            ``cfg.distill_sentences`` rows) unless ``words`` is set.
        words: open ``cfg.words_cache`` instead (single words, ``model.teacher.word_corpus``), every row.
    Raises:
        FileNotFoundError: no cache there (build it with ``python -m model.teacher``).
        ValueError: the cache has no finished row yet.
    """

    def __init__(self, cfg: TrainConfig, words: bool = False) -> None:
        directory = cfg.words_cache if words else cfg.teacher_cache
        try:
            self.cache = TeacherCache(directory)
        except FileNotFoundError:
            corpus = " --corpus words" if words else ""
            raise FileNotFoundError(f"no teacher cache at {directory}: run "
                                    f"`python -m model.teacher{corpus} --cache-dir {directory}` first") from None
        self.cfg, self.words = cfg, words
        self.limit = (0 if words else cfg.distill_sentences) or self.cache.rows
        self._texts = self.cache.texts()
        self.embeddings = self.cache.embeddings()
        self.n = 0
        self.refresh()

    def refresh(self) -> int:
        """Re-read how many rows are finished; returns the number of rows sampled from."""
        n = min(self.cache.done, self.limit)
        if n == 0:
            raise ValueError(f"teacher cache {self.cache.dir} has no finished row")
        if n != self.n:
            log.info("distillation: %d of %d cached sentences usable", n, self.cache.rows)
        self.n = n
        return n

    @functools.cached_property
    def pairs(self) -> np.ndarray:
        """(m, 2) int64 near pairs among the usable rows (``model.near_pairs``; for a words cache, teacher
        neighbours among all words), computed on first use."""
        return near_pairs(self.cache.dir, self.embeddings, self._texts, DataPaths(self.cfg.data_dir), self.n,
                          pool=self.cfg.pair_pool, seed=self.cfg.seed,
                          sources=None if self.words else self.cfg.pair_sources)

    def sample_pairs(self, rng, k: int) -> tuple[list[str], torch.Tensor]:
        """``k`` near pairs: (first sides then second sides, 2k texts; (2k, 384) float32 embeddings)."""
        pick = self.pairs[rng.sample(range(len(self.pairs)), k)]
        return self._rows(np.concatenate((pick[:, 0], pick[:, 1])))

    def text_embeddings(self, texts: list[str], encode=None) -> torch.Tensor:
        """Teacher embeddings (len(texts), 384) float32 of ``texts``: finished cache rows where the text
        is cached, else ``encode(missing texts)`` (default: the teacher itself, ``teacher_encoder``)."""
        row_of = self._row_of
        missing = sorted({t for t in texts if row_of.get(t, self.n) >= self.n})
        found = {}
        if missing:
            if encode is None:
                from model.teacher import teacher_encoder

                encode = teacher_encoder()
            log.info("teacher: encoding %d texts not (yet) in the cache", len(missing))
            found = dict(zip(missing, np.asarray(encode(missing), dtype=np.float32)))
        rows = [found[t] if t in found else np.asarray(self.embeddings[row_of[t]], dtype=np.float32) for t in texts]
        return torch.from_numpy(np.stack(rows))

    @functools.cached_property
    def _row_of(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self._texts)}

    def sample(self, rng, k: int) -> tuple[list[str], torch.Tensor]:
        """``k`` distinct rows (fewer where the two draws overlap): (texts, (k, 384) float32 teacher
        embeddings). With ``distill_sources``,
        ``round(k * distill_source_fraction)`` of them come from those ``text/`` files' rows."""
        m = round(k * self.cfg.distill_source_fraction) if self.cfg.distill_sources and not self.words else 0
        rows = set(rng.sample(range(self.n), k - m))
        if m:
            pool = self.source_rows
            rows.update(int(r) for r in pool[rng.sample(range(len(pool)), min(m, len(pool)))])
        return self._rows(sorted(rows))

    @functools.cached_property
    def source_rows(self) -> np.ndarray:
        """Usable rows of the ``distill_sources`` text/ files (int64, sorted)."""
        from model.near_pairs import source_rows

        rows = source_rows(DataPaths(self.cfg.data_dir), self._row_of, self.cfg.distill_sources)
        rows = rows[rows < self.n]
        log.info("distillation: %d usable rows from %s", len(rows), ", ".join(self.cfg.distill_sources))
        return rows

    def _rows(self, idx) -> tuple[list[str], torch.Tensor]:
        """The texts and (len(idx), 384) float32 teacher embeddings of cache rows ``idx``."""
        return [self._texts[i] for i in idx], torch.from_numpy(np.asarray(self.embeddings[idx], dtype=np.float32))


def gold_on_teacher_scale(gold: np.ndarray, teacher_cos: np.ndarray) -> np.ndarray:
    """Gold similarity scores mapped onto the teacher's cosine scale by quantile matching.

    The pairs sorted by gold score get the teacher's cosines of the same pairs sorted: the human
    order with the teacher's spread (an unrelated pair gets what the teacher gives unrelated pairs,
    ~0.2 for all-MiniLM-L6-v2, not 0). Tied gold scores get the mean of their quantiles, so equal
    gold means an equal target.

    Args:
        gold: (n,) gold scores (any scale; only their order is used).
        teacher_cos: (n,) the teacher's cosines of the same pairs.
    Returns:
        (n,) float32 targets, non-decreasing in gold, with the teacher's cosine distribution.
    Raises:
        ValueError: the arrays differ in length or are empty.
    """
    from scipy.stats import rankdata

    gold, teacher_cos = np.asarray(gold, dtype=np.float64), np.asarray(teacher_cos, dtype=np.float64)
    if len(gold) != len(teacher_cos) or len(gold) == 0:
        raise ValueError(f"need as many gold scores as teacher cosines (got {len(gold)} and {len(teacher_cos)})")
    ranks = rankdata(gold, method="average") - 1  # 0 .. n-1, ties averaged
    return np.interp(ranks, np.arange(len(gold)), np.sort(teacher_cos)).astype(np.float32)
