"""Scorers shared by training (model selection on dev splits) and the evaluation CLI.

STS: Spearman's rho and Pearson's r (x100) between cosine similarity and the gold score, over the
whole split in file order (no shuffling, no dropped rows), per STS-B genre, and the median cosine per
gold-score bin (is 0.8 a paraphrase or an unrelated pair?). NLI: accuracy over all labelled pairs.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import pearsonr, spearmanr

from model.data import NLI_LABEL_IDS, NLIPair, STSPair, sts_genre


GOLD_BINS = ((0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 4.0), (4.0, 5.0))


@torch.inference_mode()
def sts_cosines(model, pairs: Sequence[STSPair], batch_size: int = 128) -> np.ndarray:
    """cosine(encode(s1), encode(s2)) for every pair: (N,) float32 numpy array, file order.

    Args:
        model: a ``SentenceEncoder`` (anything with ``encode(texts) -> (N, d)``, ``training``, ``train``).
    """
    was_training = model.training
    model.eval()
    a = model.encode([p.sentence1 for p in pairs], batch_size=batch_size)
    b = model.encode([p.sentence2 for p in pairs], batch_size=batch_size)
    model.train(was_training)
    return F.cosine_similarity(a, b, dim=-1).float().numpy()


def cosine_by_gold_bin(cos: np.ndarray, gold: np.ndarray) -> dict[str, dict[str, float]]:
    """Median (and quartiles) of the cosine per gold-score bin ``GOLD_BINS``: [0,1), [1,2), ... [4,5].

    Returns {"0-1": {"median", "q25", "q75", "n"}, ...}; a bin without pairs has NaN figures and n 0.
    """
    out = {}
    for lo, hi in GOLD_BINS:
        sel = (gold >= lo) & ((gold < hi) if hi < 5 else (gold <= hi))
        c = cos[sel]
        q = np.percentile(c, [25, 50, 75]) if len(c) else [float("nan")] * 3
        out[f"{lo:g}-{hi:g}"] = {"median": float(q[1]), "q25": float(q[0]), "q75": float(q[2]), "n": int(sel.sum())}
    return out


def summarize_sts(cos: np.ndarray, pairs: Sequence[STSPair]) -> dict:
    """Spearman and Pearson (x100) of ``cos`` against the gold scores, overall and per STS-B genre
    (``model.data.sts_genre``), and the cosine per gold bin.

    Returns:
        {"spearman", "pearson", "n", "genres": {genre: {"spearman", "n"}}, "cosine_by_gold": ...}
    """
    gold = np.array([p.score for p in pairs])
    genres: dict[str, dict[str, float]] = {}
    names = np.array([sts_genre(p.genre) for p in pairs])
    for g in sorted(set(names) - {""}):
        sel = names == g
        genres[str(g)] = {"spearman": 100 * float(spearmanr(cos[sel], gold[sel]).statistic), "n": int(sel.sum())}
    return {"spearman": 100 * float(spearmanr(cos, gold).statistic),
            "pearson": 100 * float(pearsonr(cos, gold).statistic), "n": len(pairs),
            "genres": genres, "cosine_by_gold": cosine_by_gold_bin(cos, gold)}


def sts_scores(model, pairs: Sequence[STSPair], batch_size: int = 128) -> dict:
    """``summarize_sts`` of the model's cosines on ``pairs`` (every row used)."""
    return summarize_sts(sts_cosines(model, pairs, batch_size), pairs)


@torch.inference_mode()
def nli_accuracy(model, pairs: Sequence[NLIPair], batch_size: int = 128) -> dict[str, float]:
    """3-way accuracy (%) of ``model.predict_nli`` on pairs labelled entailment/neutral/contradiction,
    with per-class precision and recall (%) and the confusion matrix.

    Returns:
        {"accuracy": float (percent), "n": int, "per_class": {label: {"precision", "recall", "n"}},
         "confusion": 3 x 3 list of counts, rows gold and columns predicted, in ``NLI_LABEL_IDS`` order}
    """
    pairs = [p for p in pairs if p.label in NLI_LABEL_IDS]
    was_training = model.training
    model.eval()
    probs = model.predict_nli([p.premise for p in pairs], [p.hypothesis for p in pairs], batch_size=batch_size)
    model.train(was_training)
    gold = torch.tensor([NLI_LABEL_IDS[p.label] for p in pairs], dtype=torch.int64)
    return nli_summary(probs.argmax(-1), gold)


def nli_summary(pred: torch.Tensor, gold: torch.Tensor) -> dict:
    """Accuracy, per-class precision/recall (%) and confusion matrix of predicted vs gold label ids,
    (N,) int64 each, ids in ``NLI_LABEL_IDS`` order. An empty class has NaN precision or recall."""
    k = len(NLI_LABEL_IDS)
    confusion = torch.bincount(gold * k + pred, minlength=k * k).reshape(k, k)
    per_class = {}
    for label, i in NLI_LABEL_IDS.items():
        tp, predicted, actual = int(confusion[i, i]), int(confusion[:, i].sum()), int(confusion[i].sum())
        per_class[label] = {"precision": 100 * tp / predicted if predicted else float("nan"),
                            "recall": 100 * tp / actual if actual else float("nan"), "n": actual}
    accuracy = 100 * float((pred == gold).float().mean()) if len(gold) else float("nan")
    return {"accuracy": accuracy, "n": len(gold), "per_class": per_class, "confusion": confusion.tolist()}
