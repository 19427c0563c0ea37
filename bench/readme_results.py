"""README's figures for the bundled checkpoint, rendered from the report files (never typed by hand).

    .venv/bin/python -m bench.readme_results           # rewrite the generated blocks of README.md
    .venv/bin/python -m bench.readme_results --check   # exit 1 when README.md differs from the reports

Sources: ``model/checkpoints/default/report.json`` (float32), ``.../int8/report.json`` (as served,
``PETE_QUANTIZE=int8``), ``bench/results/teacher/report.json`` (all-MiniLM-L6-v2), all written by
``pete-evaluate``. Each block sits between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->``
in README.md; ``tests/test_readme_results.py`` fails when a block and its reports disagree.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Callable

from bench.common import REPO_ROOT

CHECKPOINT = REPO_ROOT / "model" / "checkpoints" / "default"
REPORTS = {"fp32": CHECKPOINT / "report.json", "int8": CHECKPOINT / "int8" / "report.json",
           "teacher": REPO_ROOT / "bench" / "results" / "teacher" / "report.json"}
README = REPO_ROOT / "README.md"
GENRES = ("captions", "news", "forums")


def load_reports() -> dict[str, dict]:
    """The three report.json files by name (``fp32``, ``int8``, ``teacher``).

    Raises:
        FileNotFoundError: a report is missing (run ``pete-evaluate``).
    """
    return {name: json.loads(path.read_text()) for name, path in REPORTS.items()}


def _sts(r: dict, split: str) -> str:
    return f"{r['sts'][split]['spearman']:.2f}"


def _genres(r: dict) -> str:
    g = r["sts"]["test"].get("genres", {})
    return " / ".join(f"{g[k]['spearman']:.1f}" if k in g else "–" for k in GENRES)


def _spread(r: dict) -> str:
    b = r["sts"]["test"].get("cosine_by_gold")
    return f"{b['0-1']['median']:.2f} / {b['4-5']['median']:.2f}" if b else "–"


def _nli(r: dict, split: str) -> str:
    return f"{r['nli'][split]['accuracy']:.2f} %" if split in r.get("nli", {}) else "–"


def _speed(r: dict) -> str:
    t = r["throughput"]
    return f"{t['computed']['sentences_per_s']:,.0f} ({t['threads']} thread{'s' if t['threads'] > 1 else ''})"


ROWS: list[tuple[str, Callable[[dict], str], str]] = [
    ("parameters (total / embedding)",
     lambda r: f"{r['parameters']['total'] / 1e6:.2f} M / {r['parameters'].get('embedding', 0) / 1e6:.2f} M"
     if "embedding" in r["parameters"] else f"{r['parameters']['total'] / 1e6:.1f} M", "<= 2.5 M"),
    ("`model.safetensors`", lambda r: f"{r['bytes']['model_safetensors'] / 1e6:.2f} MB" if "bytes" in r else "–",
     "<= 10 MB"),
    ("STS-B dev / test Spearman", lambda r: f"{_sts(r, 'dev')} / **{_sts(r, 'test')}**", "test >= 80 (77 expected)"),
    ("STS-B test by genre: captions / news / forums", _genres, "each >= 70"),
    ("median cosine on STS-B test: unrelated (gold < 1) / paraphrase (gold >= 4)", _spread,
     "<= 0.35 / >= 0.80"),
    ("SNLI test accuracy", lambda r: _nli(r, "snli_test"), ">= 80 %"),
    ("SNLI dev, held-back half", lambda r: _nli(r, "snli_dev_heldout"), ""),
    ("MNLI dev matched / mismatched", lambda r: f"{_nli(r, 'mnli_dev_matched')} / {_nli(r, 'mnli_dev_mismatched')}",
     "matched >= 65 %"),
    ("encode sentences/s (threads)", _speed, ""),
]


def results_block(reports: dict[str, dict]) -> str:
    """The results table: bundled checkpoint fp32, as served (int8), teacher, target."""
    lines = ["| | bundled checkpoint (float32) | as served (int8) | all-MiniLM-L6-v2 (teacher) | target |",
             "|---|---|---|---|---|"]
    for label, cell, target in ROWS:
        lines.append(f"| {label} | {cell(reports['fp32'])} | {cell(reports['int8'])} | "
                     f"{cell(reports['teacher'])} | {target} |")
    return "\n".join(lines) + "\n"


def thresholds_block(reports: dict[str, dict]) -> str:
    """What a cosine means for the served model: quartiles per gold bin on STS-B test, and a rule of thumb."""
    bins = reports["int8"]["sts"]["test"]["cosine_by_gold"]
    teacher = reports["teacher"]["sts"]["test"]["cosine_by_gold"]
    lines = ["| STS-B gold score | meaning | served model: median [25th, 75th percentile] | teacher median | pairs |",
             "|---|---|---|---|---|"]
    meaning = {"0-1": "unrelated / different topics", "1-2": "same topic, different content",
               "2-3": "roughly related, important details differ", "3-4": "mostly equivalent",
               "4-5": "paraphrase"}
    for b, v in bins.items():
        lines.append(f"| {b} | {meaning.get(b, '')} | {v['median']:.2f} [{v['q25']:.2f}, {v['q75']:.2f}] | "
                     f"{teacher[b]['median']:.2f} | {v['n']} |")
    lo, hi = bins["0-1"], bins["4-5"]
    lines += ["", f"Rule of thumb for the bundled model: a cosine below **{lo['q75']:.2f}** is what three in four "
              f"unrelated pairs score; above **{hi['q25']:.2f}**, what three in four paraphrases score; "
              f"in between, the middle bins overlap, so rank by score or tune a threshold on labelled pairs "
              f"of your own domain."]
    return "\n".join(lines) + "\n"


BLOCKS: dict[str, Callable[[dict[str, dict]], str]] = {"results": results_block, "thresholds": thresholds_block}


def block_pattern(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- generated:{name} [^>]*-->\n)(.*?)(<!-- /generated:{name} -->)", re.S)


def render_readme(text: str, reports: dict[str, dict]) -> str:
    """README text with every generated block replaced by its rendering.

    Raises:
        ValueError: a block's markers are missing from the text.
    """
    for name, render in BLOCKS.items():
        pat = block_pattern(name)
        if not pat.search(text):
            raise ValueError(f"README has no <!-- generated:{name} ... --> block")
        text = pat.sub(lambda m: m.group(1) + render(reports) + m.group(3), text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.readme_results", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="exit 1 when README.md is not what the reports give")
    args = p.parse_args(argv)
    text = README.read_text()
    new = render_readme(text, load_reports())
    if args.check:
        if new != text:
            print("README.md differs from the report files: run python -m bench.readme_results", file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
