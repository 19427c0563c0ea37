"""Scorers shared by training (model selection on dev splits) and the evaluation CLI.

STS: Spearman's rho and Pearson's r (x100) between cosine similarity and the gold score, over the
whole split in file order (no shuffling, no dropped rows). NLI: accuracy over all labelled pairs.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import pearsonr, spearmanr

from model.data import NLI_LABEL_IDS, NLIPair, STSPair


@torch.inference_mode()
def sts_scores(model, pairs: Sequence[STSPair], batch_size: int = 128) -> dict[str, float]:
    """Spearman and Pearson (x100) of cosine(encode(s1), encode(s2)) against gold scores.

    Args:
        model: a ``SentenceEncoder`` (anything with ``encode(texts) -> (N, d)``).
        pairs: the split, every row used.
    Returns:
        {"spearman": float, "pearson": float, "n": int}
    """
    was_training = model.training
    model.eval()
    a = model.encode([p.sentence1 for p in pairs], batch_size=batch_size)
    b = model.encode([p.sentence2 for p in pairs], batch_size=batch_size)
    model.train(was_training)
    cos = F.cosine_similarity(a, b, dim=-1).numpy()
    gold = np.array([p.score for p in pairs])
    return {"spearman": 100 * float(spearmanr(cos, gold).statistic),
            "pearson": 100 * float(pearsonr(cos, gold).statistic), "n": len(pairs)}


@torch.inference_mode()
def nli_accuracy(model, pairs: Sequence[NLIPair], batch_size: int = 128) -> dict[str, float]:
    """3-way accuracy (%) of ``model.predict_nli`` on pairs labelled entailment/neutral/contradiction.

    Returns:
        {"accuracy": float (percent), "n": int}
    """
    pairs = [p for p in pairs if p.label in NLI_LABEL_IDS]
    was_training = model.training
    model.eval()
    probs = model.predict_nli([p.premise for p in pairs], [p.hypothesis for p in pairs], batch_size=batch_size)
    model.train(was_training)
    gold = torch.tensor([NLI_LABEL_IDS[p.label] for p in pairs])
    return {"accuracy": 100 * float((probs.argmax(-1) == gold).float().mean()), "n": len(pairs)}
