"""Readers for the standard dataset formats -> plain records.

- SNLI jsonl (``snli_1.0_*.jsonl[.gz]``) and MultiNLI jsonl (``multinli_1.0_*.jsonl``): one JSON object
  a line with sentence1, sentence2, gold_label; pairs with gold_label "-" are dropped.
- MultiNLI / GLUE tsv (``dev_matched.tsv``...; header with sentence1, sentence2, gold_label/label)
  and the csv export in ../shared/data/mnli (header: pairID, sentence1, sentence2, label).
- STS Benchmark csv (tab-separated, no header, no quoting; score in field 4, sentences in 5 and 6).
- ../shared/data tsv files: nli_train.tsv.gz (source, premise, hypothesis, label, label_space),
  sentences.tsv.gz (source, sentence, image_id) and text/*.tsv.gz (source, sentence).

All readers accept plain or gzip files (chosen by the ``.gz`` suffix) and return lists of
NamedTuples. ``read_nli`` picks the reader by file name.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
from pathlib import Path
from typing import Iterator, NamedTuple

NLI_LABEL_IDS = {"entailment": 0, "neutral": 1, "contradiction": 2}


class NLIPair(NamedTuple):
    """A labelled premise/hypothesis pair; label in {entailment, neutral, contradiction,
    not_entailment} (the last only for 2-way sources)."""

    premise: str
    hypothesis: str
    label: str
    source: str = ""


class STSPair(NamedTuple):
    """An STS pair with its gold similarity score in [0, 5] and its STS-B genre
    (``main-captions``, ``main-news``, ``main-forum(s)``; "" when unknown)."""

    sentence1: str
    sentence2: str
    score: float
    genre: str = ""


class Sentence(NamedTuple):
    """An unlabelled sentence; captions of the same image share ``image_id`` ("" when none)."""

    text: str
    source: str
    image_id: str


def open_text(path: str | Path) -> io.TextIOBase:
    """Open a text file for reading, transparently gunzipping ``*.gz``.

    Raises:
        FileNotFoundError: the file is missing.
    """
    path = Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, "rt", encoding="utf-8", newline="")


def read_snli_jsonl(path: str | Path, source: str = "snli") -> list[NLIPair]:
    """SNLI or MultiNLI jsonl: keeps pairs whose gold_label is one of the three labels."""
    out = []
    with open_text(path) as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            if r.get("gold_label") in NLI_LABEL_IDS:
                out.append(NLIPair(r["sentence1"], r["sentence2"], r["gold_label"], source))
    return out


def read_nli_table(path: str | Path, source: str = "mnli") -> list[NLIPair]:
    """MultiNLI/GLUE tsv or the csv export: a header naming sentence1, sentence2 and
    gold_label or label (GLUE's MNLI tsv has both; gold_label wins). Unlabelled rows are dropped.

    Raises:
        ValueError: the header lacks the needed columns.
    """
    name = Path(path).name.removesuffix(".gz")
    delimiter = "\t" if name.endswith(".tsv") else ","
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    out = []
    with open_text(path) as f:
        reader = csv.DictReader(f, delimiter=delimiter, quoting=quoting)
        fields = reader.fieldnames or []
        label_key = "gold_label" if "gold_label" in fields else "label"
        if not {"sentence1", "sentence2", label_key} <= set(fields):
            raise ValueError(f"{path}: expected sentence1, sentence2, label columns, got {fields}")
        for r in reader:
            if r[label_key] in NLI_LABEL_IDS:
                out.append(NLIPair(r["sentence1"], r["sentence2"], r[label_key], source))
    return out


def read_nli(path: str | Path) -> list[NLIPair]:
    """Read any supported NLI file, by name: ``*.jsonl[.gz]`` -> SNLI/MultiNLI jsonl,
    ``*.tsv``/``*.csv`` -> MultiNLI/GLUE table, ``nli_train.tsv[.gz]`` -> the shared labelled set."""
    name = Path(path).name.removesuffix(".gz")
    if name.endswith(".jsonl"):
        return read_snli_jsonl(path, "mnli" if "multinli" in name else "snli")
    if name.startswith("nli_train"):
        return read_nli_train(path)
    return read_nli_table(path)


def read_nli_train(path: str | Path) -> list[NLIPair]:
    """../shared/data/nli_train.tsv.gz: source, premise, hypothesis, label, label_space."""
    with open_text(path) as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [NLIPair(r["premise"], r["hypothesis"], r["label"], r["source"]) for r in reader
                if r["premise"] and r["hypothesis"]]


def read_sts(path: str | Path) -> list[STSPair]:
    """STS Benchmark csv (original release): tab-separated, no header, no quoting; field 0 is the
    genre, fields 4-6 are score, sentence1, sentence2 (some rows carry extra trailing columns, ignored)."""
    out = []
    with open_text(path) as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) >= 7:
                out.append(STSPair(row[5], row[6], float(row[4]), row[0]))
    return out


def sts_genre(genre: str) -> str:
    """Short genre name of an STS-B row: ``main-forums``/``main-forum`` -> ``forums``,
    ``main-captions`` -> ``captions``, ``main-news`` -> ``news``; "" stays ""."""
    g = genre.removeprefix("main-")
    return "forums" if g == "forum" else g


def split_snli_dev(dev: list[NLIPair], train_fraction: float, seed: int = 1234) -> tuple[list[NLIPair], list[NLIPair]]:
    """SNLI dev split in two by a seeded shuffle: (trained-on part, held-back validation part).

    ``pete-train`` trains on the first part; ``pete-evaluate`` reports the second as ``snli_dev_heldout``.
    """
    rng = random.Random(seed)
    idx = list(range(len(dev)))
    rng.shuffle(idx)
    n = int(len(dev) * train_fraction)
    return [dev[i] for i in idx[:n]], [dev[i] for i in idx[n:]]


def iter_sentences(path: str | Path) -> Iterator[Sentence]:
    """Stream ../shared/data/sentences.tsv.gz: source, sentence, image_id."""
    with open_text(path) as f:
        for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if r["sentence"]:
                yield Sentence(r["sentence"], r["source"], r.get("image_id") or "")


def iter_text_sentences(path: str | Path) -> Iterator[str]:
    """Stream one ``text/*.tsv.gz`` file of ../shared/data (header ``source<TAB>sentence``)."""
    with open_text(path) as f:
        for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if r.get("sentence"):
                yield r["sentence"]


def read_sentences(path: str | Path) -> list[Sentence]:
    """All of ``iter_sentences(path)`` as a list."""
    return list(iter_sentences(path))


def caption_groups(sentences: list[Sentence]) -> list[list[str]]:
    """Group captions by image_id: a list of groups with at least two distinct captions each."""
    groups: dict[str, list[str]] = {}
    for s in sentences:
        if s.image_id:
            groups.setdefault(s.image_id, []).append(s.text)
    return [sorted(set(g)) for g in groups.values() if len(set(g)) >= 2]


def read_mrpc(path: str | Path) -> list[tuple[str, str, int]]:
    """MRPC txt (tab-separated: quality, id1, id2, string1, string2; header line may be missing)."""
    out = []
    with open_text(path) as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) >= 5 and row[0] in ("0", "1"):
                out.append((row[3], row[4], int(row[0])))
    return out


class DataPaths:
    """Standard file locations inside a data directory laid out like ../shared/data."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __getattr__(self, name: str) -> Path:
        rel = {
            "sts_train": "stsbenchmark/sts-train.csv.gz",
            "sts_dev": "stsbenchmark/sts-dev.csv.gz",
            "sts_test": "stsbenchmark/sts-test.csv.gz",
            "snli_dev": "snli/snli_1.0_dev.jsonl.gz",
            "snli_test": "snli/snli_1.0_test.jsonl.gz",
            "snli_train_sample": "snli/snli_1.0_train_0.01.jsonl.gz",
            "mnli_dev_matched": "mnli/multinli_1.0_dev_matched.csv.gz",
            "mnli_dev_mismatched": "mnli/multinli_1.0_dev_mismatched.csv.gz",
            "nli_train": "nli_train.tsv.gz",
            "sentences": "sentences.tsv.gz",
            "bert_vocab": "bert-base-uncased/vocab.txt.gz",
            "mrpc_train": "mrpc/msr_paraphrase_train.txt.gz",
            "text_dir": "text",
        }.get(name)
        if rel is None:
            raise AttributeError(name)
        return self.root / rel
