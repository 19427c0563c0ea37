"""Tokenizers: BERT's uncased WordPiece, and the same vocabulary with ids ranked by frequency.

PETE computes a token's embedding from its id, so the id order carries meaning: with
``build_frequency_ranked_tokenizer`` ids are ranked by how often the token occurs in the training
sentences (frequent tokens get small ids, neighbouring ids have similar frequency). Segmentation
is identical to BERT's (WordPiece's greedy longest match does not depend on ids); only the ids
are permuted, so the permutation also maps BERT-indexed tables (e.g. a teacher's word
embeddings) to the new ids.

Everything is built with the ``tokenizers`` library and saved as a single ``tokenizer.json``.
"""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import numpy as np
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Characters per token of the limit that ``encode_texts`` reads of a text at most: English prose
# runs at ~5 characters per token, so 16 cuts only text the token limit drops anyway (for 128
# tokens: 2,048 characters; a 10,000-character text tokenizes ~4x faster).
CHARS_PER_TOKEN = 16


class EncodedTexts(NamedTuple):
    """A tokenized, right-padded batch as numpy arrays.

    input_ids (B, T) int64 (0 = [PAD] after each row's end), attention_mask (B, T) bool, truncated:
    one bool per row (the text was longer than the token limit and was cut), lengths: real tokens
    per row (special tokens included).
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    truncated: list[bool]
    lengths: list[int]


def encode_texts(tokenizer: Tokenizer, texts: Sequence[str], pair: Sequence[str] | None = None, *,
                 max_tokens: int) -> EncodedTexts:
    """Tokenize texts (or text pairs, ``[CLS] a [SEP] b [SEP]``) and right-pad to the longest row.

    ``max_tokens`` counts special tokens; longer inputs are truncated (longest-first for pairs) and
    flagged, never rejected. Each text is first cut to ``max_tokens x CHARS_PER_TOKEN`` characters
    (also flagged), so tokenizing costs at most that much per text whatever its length; a text of
    ordinary words reaches the token limit well before the cut, so what the model sees does not
    change. Sets the tokenizer's truncation to ``max_tokens`` (kept until another limit is asked for).
    """
    truncation = tokenizer.truncation
    if truncation is None or truncation.get("max_length") != max_tokens:
        tokenizer.enable_truncation(max_length=max_tokens, strategy="longest_first")
    budget = max_tokens * CHARS_PER_TOKEN
    cut = [len(t) > budget or (pair is not None and len(pair[i]) > budget) for i, t in enumerate(texts)]
    texts = [t[:budget] for t in texts]
    if pair is None:
        encs = tokenizer.encode_batch(texts)
    else:
        encs = tokenizer.encode_batch(list(zip(texts, [h[:budget] for h in pair])))
    lengths = [len(e.ids) for e in encs]
    T = max(lengths, default=1)
    ids = np.zeros((len(encs), T), dtype=np.int64)
    for i, e in enumerate(encs):
        ids[i, : lengths[i]] = e.ids
    mask = np.arange(T)[None, :] < np.asarray(lengths, dtype=np.int64)[:, None]
    return EncodedTexts(ids, mask, [bool(e.overflowing) or c for e, c in zip(encs, cut)], lengths)


def read_vocab(path: str | Path) -> list[str]:
    """Read a WordPiece vocab file (one token a line, line n is id n-1; ``.gz`` allowed).

    Raises:
        FileNotFoundError: the file is missing.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.rstrip("\n")]


def tokenizer_from_vocab(tokens: list[str]) -> Tokenizer:
    """A BERT-uncased style WordPiece tokenizer over ``tokens`` (id = list index).

    Single texts become ``[CLS] text [SEP]``, pairs ``[CLS] a [SEP] b [SEP]``.

    Raises:
        ValueError: a special token ([PAD], [UNK], [CLS], [SEP]) is missing from ``tokens``.
    """
    vocab = {tok: i for i, tok in enumerate(tokens)}
    missing = [t for t in SPECIAL_TOKENS[:4] if t not in vocab]
    if missing:
        raise ValueError(f"vocabulary lacks special tokens {missing}")
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=None, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def build_bert_tokenizer(vocab_path: str | Path) -> Tokenizer:
    """BERT uncased WordPiece with BERT's ids (e.g. ../shared/data/bert-base-uncased/vocab.txt.gz)."""
    return tokenizer_from_vocab(read_vocab(vocab_path))


def frequency_rank(vocab: list[str], sentences: Iterable[str], batch_size: int = 4096) -> list[int]:
    """Order of BERT ids by frequency in ``sentences``: returns ``perm`` with ``perm[new_id] = old_id``.

    Special tokens keep ids 0..4 (so [PAD] stays 0); the rest are sorted by descending count,
    ties broken by the original id (tokens never seen keep BERT's relative order at the end).
    """
    tok = tokenizer_from_vocab(vocab)
    counts: Counter[int] = Counter()
    batch: list[str] = []

    def flush() -> None:
        for enc in tok.encode_batch(batch, add_special_tokens=False):
            counts.update(enc.ids)
        batch.clear()

    for s in sentences:
        batch.append(s)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    specials = [vocab.index(t) for t in SPECIAL_TOKENS if t in vocab]
    rest = sorted((i for i in range(len(vocab)) if i not in set(specials)), key=lambda i: (-counts[i], i))
    return specials + rest


def build_frequency_ranked_tokenizer(vocab_path: str | Path, sentences: Iterable[str]) -> tuple[Tokenizer, list[int]]:
    """The BERT vocabulary re-indexed by token frequency on ``sentences``.

    Returns:
        (tokenizer, perm) with ``perm[new_id] = bert_id``; segmentation equals BERT's.
    """
    vocab = read_vocab(vocab_path)
    perm = frequency_rank(vocab, sentences)
    return tokenizer_from_vocab([vocab[i] for i in perm]), perm
