"""Helpers shared by the benchmarks: percentiles, Markdown tables, process memory/CPU from /proc,
free ports, machine facts, benchmark sentences, and a random checkpoint for smoke runs.

Nothing here imports scipy, matplotlib or sentence-transformers, so the tests can use it with the
runtime + dev dependencies only.
"""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import sys
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


# ---- statistics --------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0 <= q <= 100) with linear interpolation between closest ranks
    (numpy's default "linear" method). NaN for an empty sequence.

    Raises:
        ValueError: q outside [0, 100].
    """
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    if not values:
        return float("nan")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def latency_summary(latencies_s: Sequence[float]) -> dict[str, float]:
    """Latencies in seconds -> {"n", "mean_ms", "p50_ms", "p95_ms", "p99_ms", "max_ms"}."""
    ms = [1000.0 * x for x in latencies_s]
    return {
        "n": len(ms),
        "mean_ms": sum(ms) / len(ms) if ms else float("nan"),
        "p50_ms": percentile(ms, 50),
        "p95_ms": percentile(ms, 95),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms) if ms else float("nan"),
    }


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


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):  # numpy / torch scalars
        return o.item()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically (tmp file + rename); NaN becomes null."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_nan_to_none(obj), indent=2, default=_json_default) + "\n")
    tmp.replace(path)
    return path


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


# ---- processes -----------------------------------------------------------------------------------
def proc_memory(pid: int) -> dict[str, int]:
    """Resident memory of a Linux process from /proc/PID/status: {"rss_bytes", "hwm_bytes"} (HWM =
    peak RSS). Empty dict if the process is gone or /proc is missing."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            parts = rest.split()
            out["rss_bytes" if key == "VmRSS" else "hwm_bytes"] = int(parts[0]) * 1024  # kB
    return out


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by a Linux process (all threads); NaN if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)"; fields[0] is state (field 3)
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime (14), stime (15)


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (Linux /proc), e.g. a uvicorn supervisor and its workers."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))  # fields[1]: ppid
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def tree_memory(pid: int) -> dict[str, int]:
    """``proc_memory`` summed over ``process_tree(pid)`` (HWM: the sum of each process's peak, an upper
    bound of the tree's peak)."""
    out = {"rss_bytes": 0, "hwm_bytes": 0}
    for p in process_tree(pid):
        for k, v in proc_memory(p).items():
            out[k] += v
    return out if out["rss_bytes"] else {}


def tree_cpu_seconds(pid: int) -> float:
    """``proc_cpu_seconds`` summed over the live ``process_tree(pid)``."""
    return sum(c for p in process_tree(pid) if (c := proc_cpu_seconds(p)) == c)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def machine_info() -> dict[str, Any]:
    """CPU model and count, load average, Python/torch versions: what a reader needs to compare runs."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
                            "platform": platform.platform()}
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_default_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


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


def make_random_checkpoint(directory: str | Path, *, vocab: Sequence[str] | None = None,
                           vocab_path: str | Path | None = None, dim: int = 32, n_layers: int = 1,
                           n_heads: int = 2, ffn_dim: int = 64, embedding: str = "fourier_geo",
                           embedding_options: dict | None = None, max_len: int = 128, seed: int = 0) -> Path:
    """Save an untrained ``SentenceEncoder`` (for smoke runs and tests) with ``save_pretrained``.

    The vocabulary is ``vocab`` (special tokens are added in front when missing), or the file at
    ``vocab_path`` (e.g. ../shared/data/bert-base-uncased/vocab.txt.gz), or the words of the
    built-in pairs. Returns the directory.
    """
    import torch

    from model.encoder import EncoderConfig, SentenceEncoder
    from model.tokenizer import SPECIAL_TOKENS, read_vocab, tokenizer_from_vocab

    if vocab_path is not None:
        tokens = read_vocab(vocab_path)
    else:
        words = list(vocab) if vocab is not None else sorted(
            {w.strip(".,").lower() for a, b in BUILTIN_PAIRS for w in (a + " " + b).split()})
        tokens = [t for t in SPECIAL_TOKENS if t not in words] + [w for w in words if w]
        tokens += [".", ","]
    torch.manual_seed(seed)
    if embedding_options is None:
        embedding_options = {"mlp_hidden": max(8, dim)} if embedding.startswith("fourier") else {}
    cfg = EncoderConfig(vocab_size=len(tokens), dim=dim, n_layers=n_layers, n_heads=n_heads, ffn_dim=ffn_dim,
                        max_len=max_len, embedding=embedding, embedding_options=embedding_options)
    model = SentenceEncoder(cfg, tokenizer_from_vocab(tokens)).eval()
    model.save_pretrained(directory)
    return Path(directory)


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
