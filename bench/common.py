"""Helpers shared by the benchmarks: Markdown tables, benchmark sentences and a miniature dataset.
Load generation, server processes, statistics and result files are in ``loadtest``.

Nothing here imports scipy, matplotlib or sentence-transformers, so the tests can use it with the
runtime + dev dependencies only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
RESULTS_DIR = REPO_ROOT / "bench" / "results"

# Used when the STS-B files are not there (tests, a machine without ../shared/data).
BUILTIN_PAIRS: tuple[tuple[str, str], ...] = (
    ("A man is playing a guitar.", "Someone is playing an instrument."),
    ("A woman is slicing an onion.", "A woman is cutting vegetables in the kitchen."),
    ("Two dogs run through a snowy field.", "The dogs are playing in the snow."),
    ("A child is riding a red bicycle down the street.", "A kid rides a bike."),
    ("The stock market fell sharply on Monday.", "A cat is sleeping on the couch."),
    ("A group of people are sitting at a table eating dinner.", "People are having a meal together."),
    ("The plane is taking off.", "An airplane departs from the runway."),
    ("A man is not playing the piano.", "A man plays the piano."),
    ("Three men are climbing a steep rocky mountain on a sunny day.", "Men climb a mountain."),
    ("A boy jumps into the swimming pool.", "The girl reads a book in the library."),
    ("The government announced new taxes on imported cars.", "New import taxes were announced for cars."),
    ("A small white dog is chasing a ball on the grass.", "A puppy runs after a ball."),
)


# ---- output ------------------------------------------------------------------------------------
def fmt_num(value: Any, digits: int = 1) -> str:
    """Human formatting for tables: None/NaN -> "–", ints with thousands separators, floats with
    ``digits`` decimals, anything else via str()."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:,.{digits}f}"
    return str(value)


Column = tuple[str, str] | tuple[str, str, Callable[[Any], str]]


def markdown_table(rows: Iterable[dict], columns: Sequence[Column]) -> str:
    """A GitHub Markdown table: one row per dict, ``columns`` = (key, header[, formatter]).

    Missing keys show as "–"; "|" inside a cell is escaped. Returns the table text ending in a newline.
    """
    head = "| " + " | ".join(c[1] for c in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    lines = [head, rule]
    for row in rows:
        cells = []
        for col in columns:
            fmt = col[2] if len(col) > 2 else fmt_num
            cells.append(fmt(row.get(col[0])).replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ---- data ----------------------------------------------------------------------------------------
def load_sentence_pairs(data_dir: str | Path | None = None, limit: int | None = None) -> tuple[list[tuple[str, str]], str]:
    """Realistic request texts: the STS-B test pairs (sentence1, sentence2) in file order, else the
    built-in pairs. Returns (pairs, source description)."""
    path = Path(data_dir or DEFAULT_DATA_DIR) / "stsbenchmark" / "sts-test.csv.gz"
    if path.is_file():
        from model.data import read_sts

        pairs = [(p.sentence1, p.sentence2) for p in read_sts(path)]
        if pairs:
            return (pairs[:limit] if limit else pairs), f"STS-B test ({path})"
    pairs = list(BUILTIN_PAIRS)
    return (pairs[:limit] if limit else pairs), "built-in sentence pairs"


def write_tiny_dataset(root: str | Path, seed: int = 0) -> Path:
    """A miniature copy of ../shared/data's layout (every file the training CLI and the study read),
    made from the built-in sentences: for smoke runs and tests. Returns ``root``."""
    import csv
    import gzip
    import io
    import random

    from model.tokenizer import SPECIAL_TOKENS

    root = Path(root)
    rng = random.Random(seed)
    sents = [s for pair in BUILTIN_PAIRS for s in pair]
    words = sorted({w for s in sents for w in s.lower().replace(".", " .").replace(",", " ,").split()})

    def put(rel: str, text: str) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)

    def tsv(rows: list[list[str]]) -> str:
        buf = io.StringIO()
        csv.writer(buf, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\", lineterminator="\n").writerows(rows)
        return buf.getvalue()

    put("bert-base-uncased/vocab.txt.gz", "\n".join(list(SPECIAL_TOKENS) + words) + "\n")
    for split in ("train", "dev", "test"):
        rows = [["main-captions", "MSRvid", "2012test", f"{i:04d}", f"{rng.uniform(0, 5):.3f}", a, b]
                for i, (a, b) in enumerate(BUILTIN_PAIRS * 2)]
        put(f"stsbenchmark/sts-{split}.csv.gz", tsv(rows))
    labels = ("entailment", "neutral", "contradiction")
    nli = [(a, b, labels[i % 3]) for i, (a, b) in enumerate(BUILTIN_PAIRS * 3)]
    jsonl = "".join(json.dumps({"sentence1": a, "sentence2": b, "gold_label": lab}) + "\n" for a, b, lab in nli)
    for name in ("snli_1.0_dev", "snli_1.0_test", "snli_1.0_train_0.01"):
        put(f"snli/{name}.jsonl.gz", jsonl)
    put("nli_train.tsv.gz", tsv([["source", "premise", "hypothesis", "label", "label_space"]]
                                + [["tiny", a, b, lab, "3way"] for a, b, lab in nli]))
    caps = [["source", "sentence", "image_id"]]
    for i, (a, b) in enumerate(BUILTIN_PAIRS):
        caps += [["flickr", a, f"img{i}"], ["flickr", b, f"img{i}"]]
    put("sentences.tsv.gz", tsv(caps))
    return root
