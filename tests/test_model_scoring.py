"""STS scoring: per-genre Spearman and the median cosine per gold-score bin (what a cosine means)."""

from __future__ import annotations

import math

import numpy as np

from model.data import STSPair
from model.scoring import GOLD_BINS, cosine_by_gold_bin, summarize_sts


def test_cosine_by_gold_bin_medians_on_a_toy_set():
    gold = np.array([0.0, 0.5, 0.9, 1.0, 2.5, 3.99, 4.0, 5.0, 5.0])
    cos = np.array([0.1, 0.3, 0.2, 0.4, 0.6, 0.7, 0.8, 0.9, 1.0])
    bins = cosine_by_gold_bin(cos, gold)
    assert list(bins) == [f"{lo:g}-{hi:g}" for lo, hi in GOLD_BINS] == ["0-1", "1-2", "2-3", "3-4", "4-5"]
    assert bins["0-1"]["median"] == 0.2 and bins["0-1"]["n"] == 3
    assert bins["1-2"] == {"median": 0.4, "q25": 0.4, "q75": 0.4, "n": 1}
    assert bins["3-4"]["median"] == 0.7  # 3.99 belongs to 3-4, 4.0 to 4-5
    assert bins["4-5"]["median"] == 0.9 and bins["4-5"]["n"] == 3  # 5.0 is in the last bin
    assert math.isclose(bins["4-5"]["q25"], 0.85) and math.isclose(bins["4-5"]["q75"], 0.95)


def test_empty_bin_is_reported_as_nan_with_zero_pairs():
    bins = cosine_by_gold_bin(np.array([0.5]), np.array([4.5]))
    assert bins["0-1"]["n"] == 0 and math.isnan(bins["0-1"]["median"])


def test_summarize_sts_splits_by_genre():
    pairs = [STSPair("a", "b", float(i % 5), "main-captions" if i < 10 else "main-forum") for i in range(20)]
    cos = np.array([i % 5 for i in range(10)] + [-(i % 5) for i in range(10, 20)], dtype=np.float32)
    s = summarize_sts(cos, pairs)
    assert s["n"] == 20 and set(s["genres"]) == {"captions", "forums"}
    assert math.isclose(s["genres"]["captions"]["spearman"], 100.0) and s["genres"]["captions"]["n"] == 10
    assert math.isclose(s["genres"]["forums"]["spearman"], -100.0)
    assert set(s["cosine_by_gold"]) == {"0-1", "1-2", "2-3", "3-4", "4-5"}


def test_nli_summary_precision_recall_and_confusion():
    import torch

    from model.scoring import nli_summary

    # ids: 0 entailment, 1 neutral, 2 contradiction
    gold = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    pred = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0])
    s = nli_summary(pred, gold)
    assert s["confusion"] == [[2, 1, 0], [0, 1, 1], [1, 0, 2]]
    assert math.isclose(s["accuracy"], 100 * 5 / 8) and s["n"] == 8
    assert math.isclose(s["per_class"]["entailment"]["precision"], 100 * 2 / 3)
    assert math.isclose(s["per_class"]["entailment"]["recall"], 100 * 2 / 3)
    assert math.isclose(s["per_class"]["neutral"]["precision"], 50.0) and s["per_class"]["neutral"]["n"] == 2
    assert math.isclose(s["per_class"]["contradiction"]["recall"], 100 * 2 / 3)
    never_predicted = nli_summary(torch.tensor([0, 0]), torch.tensor([0, 1]))
    assert math.isnan(never_predicted["per_class"]["contradiction"]["precision"])
