"""Fixtures of the runs: random-weight checkpoints and synthetic request bodies."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Sequence

# A small English vocabulary: the random checkpoints' word-level vocab and the load texts.
WORDS = ("the a an is are was on in of and not no to with at by from for it this that "
         "cat dog man woman child boy girl people group bird horse plays playing played sits sat mat "
         "runs running walks walking park street music guitar piano song sleeps eats food red blue green "
         "big small old young happy sad two three many some water beach field city house car bike train "
         "ball game team player stage crowd table chair book reads writes talks looks stands jumps "
         "swims rides drives cooks kitchen dinner morning night day sun rain snow tree flower "
         "white black yellow fast slow quietly loudly together near under over").split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = SPECIALS + WORDS

SIZES: dict[str, dict[str, Any]] = {
    # what the app tests use: instant to load, inference is nearly free
    "tiny": dict(dim=32, n_layers=1, n_heads=2, ffn_dim=64, max_len=32, nli_hidden=16),
    # the compute shape of the default config (model/encoder.py EncoderConfig) with a small vocab
    "reference": dict(dim=256, n_layers=2, n_heads=4, ffn_dim=1024, max_len=128, nli_hidden=128),
}


def random_checkpoint(path: str | Path, size: str = "tiny", *, vocab: Sequence[str] | None = None, seed: int = 0,
                      **config: Any) -> Path:
    """Write a random-weight ``SentenceEncoder`` checkpoint (``save_pretrained``) to ``path`` and return
    ``path``; nothing is written when ``path/config.json`` exists already.

    Args:
        size: a preset of ``SIZES`` ("tiny" or "reference").
        vocab: the word-level vocabulary (special tokens are added in front when missing; default ``WORDS``).
        config: ``EncoderConfig`` fields over the preset (e.g. ``dim=16``, ``embedding="learned"``); a
            Fourier kind's ``mlp_hidden`` defaults to ``dim``, other kinds take their own defaults.
    Raises:
        KeyError: unknown ``size``.
    """
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    import torch

    from model.encoder import EncoderConfig, SentenceEncoder
    from model.tokenizer import tokenizer_from_vocab

    cfg = {**SIZES[size], **config}
    if "embedding_options" not in cfg:
        cfg["embedding_options"] = ({"mlp_hidden": cfg["dim"]} if cfg.get("embedding", "fourier_geo").startswith("fourier")
                                    else {})
    words = list(WORDS if vocab is None else vocab)
    tokens = [t for t in SPECIALS if t not in words] + words
    torch.manual_seed(seed)
    SentenceEncoder(EncoderConfig(vocab_size=len(tokens), **cfg), tokenizer_from_vocab(tokens)).save_pretrained(path)
    return path


def sentence(rng: random.Random, lo: int = 6, hi: int = 14) -> str:
    """A random sentence of ``lo`` to ``hi`` words of ``WORDS``."""
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def similarity_bodies(n: int, pairs: int, seed: int = 0) -> list[bytes]:
    """``n`` distinct /similarity bodies of ``pairs`` random pairs each."""
    rng = random.Random(seed)
    return [json.dumps({"pairs": [{"text_a": sentence(rng), "text_b": sentence(rng)} for _ in range(pairs)]}).encode()
            for _ in range(n)]


def pair_bodies(pairs: Sequence[tuple[str, str]], pairs_per_request: int, limit: int = 4096,
                endpoint: str = "similarity") -> list[bytes]:
    """Request bodies for ``POST /similarity`` or ``POST /nli`` from real sentence pairs: consecutive
    groups of ``pairs_per_request`` pairs (cycling), at most ``limit`` bodies; /nli takes the first
    text as the premise.

    Raises:
        KeyError: unknown ``endpoint``.
    """
    keys = {"similarity": ("text_a", "text_b"), "nli": ("premise", "hypothesis")}[endpoint]
    n = min(limit, max(1, len(pairs) // pairs_per_request))
    out = []
    for i in range(n):
        group = [pairs[(i * pairs_per_request + j) % len(pairs)] for j in range(pairs_per_request)]
        out.append(json.dumps({"pairs": [dict(zip(keys, pair)) for pair in group]}).encode())
    return out
