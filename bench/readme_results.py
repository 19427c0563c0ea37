"""README's figures for the bundled checkpoint, rendered from the report files (never typed by hand).

    .venv/bin/python -m bench.readme_results           # rewrite the generated blocks of README.md
    .venv/bin/python -m bench.readme_results --check   # exit 1 when README.md differs from the reports

Sources: ``model/checkpoints/default/report.json`` (float32), ``.../int8/report.json`` (as served,
``PETE_QUANTIZE=int8``), ``bench/results/teacher/report.json`` (all-MiniLM-L6-v2), all written by
``pete-evaluate``; ``bench/results/nli_teacher/report.json`` (the NLI cross-encoder teacher,
``python -m model.nli_teacher evaluate``) fills the teacher column's NLI rows; every
``bench/results/nli_v2/<variant>/report.json`` (``pete-evaluate`` of an NLI head variant, described in
``bench/results/nli_v2/variants.json``) is a row of the NLI variants table; ``deploy/image/report.json``
(``make image``) gives the image size; ``app.settings.Settings`` gives the configuration table; ``bench/results/onnx/serving.json``
(``python -m bench.serving``) the backends table, ``bench/results/serving.json`` the serving table and its targets. Each block sits between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->``
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
NLI_TEACHER_REPORT = REPO_ROOT / "bench" / "results" / "nli_teacher" / "report.json"
NLI_VARIANTS = REPO_ROOT / "bench" / "results" / "nli_v2"
IMAGE_REPORT = REPO_ROOT / "deploy" / "image" / "report.json"
IMAGE_SLIM_REPORT = REPO_ROOT / "deploy" / "image" / "report-slim.json"
BACKENDS_RUN = REPO_ROOT / "bench" / "results" / "onnx" / "serving.json"
SERVING_RUN = REPO_ROOT / "bench" / "results" / "serving.json"
README = REPO_ROOT / "README.md"
GENRES = ("captions", "news", "forums")


def load_reports() -> dict[str, dict]:
    """The three report.json files by name (``fp32``, ``int8``, ``teacher``; the NLI teacher's
    accuracies, when its report exists, as the teacher's ``nli``), plus ``nli_variants``:
    {variant: {"about": text, "report": report}} from ``bench/results/nli_v2``.

    Raises:
        FileNotFoundError: a report is missing (run ``pete-evaluate``).
    """
    reports = {name: json.loads(path.read_text()) for name, path in REPORTS.items()}
    if NLI_TEACHER_REPORT.exists():
        nli_teacher = json.loads(NLI_TEACHER_REPORT.read_text())
        reports["teacher"]["nli"] = nli_teacher["sets"]
        reports["teacher"]["nli_splits_trained_on"] = nli_teacher.get("trained_on", [])
    about = json.loads((NLI_VARIANTS / "variants.json").read_text()) if (NLI_VARIANTS / "variants.json").exists() else {}
    reports["image"] = json.loads(IMAGE_REPORT.read_text())
    reports["image_slim"] = json.loads(IMAGE_SLIM_REPORT.read_text())
    reports["backends"] = json.loads(BACKENDS_RUN.read_text())
    reports["serving"] = json.loads(SERVING_RUN.read_text())
    reports["nli_variants"] = {name: {"about": text, "report": json.loads((NLI_VARIANTS / name / "report.json").read_text())}
                               for name, text in about.items()}
    return reports


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
    ("SNLI test accuracy", lambda r: _nli(r, "snli_test"), ">= 80 % (68 expected)"),
    ("SNLI dev, held-back half", lambda r: _nli(r, "snli_dev_heldout"), ""),
    ("MNLI dev matched / mismatched (trained on)",
     lambda r: f"{_nli(r, 'mnli_dev_matched')} / {_nli(r, 'mnli_dev_mismatched')}", "matched >= 65 % (55 expected)"),
    ("NLI head: kind, parameters",
     lambda r: f"{r['nli_head']}, {r['parameters']['nli_head']:,}" if "nli_head" in r else "–", "<= 600 k"),
    ("encode sentences/s (threads)", _speed, ""),
]


def results_block(reports: dict[str, dict]) -> str:
    """The results table: bundled checkpoint fp32, as served (int8), teacher, target."""
    lines = ["| | bundled checkpoint (float32) | as served (int8) | all-MiniLM-L6-v2 (teacher; NLI rows: "
             "its cross-encoder fine-tune) | target |",
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


def nli_variants_block(reports: dict[str, dict]) -> str:
    """NLI head variants on the shipped encoder (frozen), one row per ``bench/results/nli_v2`` report,
    and the NLI teacher for reference. Selection: SNLI dev held-back half only."""
    lines = ["| variant | head parameters | SNLI dev held-back | SNLI test | MNLI matched | MNLI mismatched (trained on) |",
             "|---|---|---|---|---|---|"]
    for name, v in reports.get("nli_variants", {}).items():
        r = v["report"]
        lines.append(f"| `{name}`: {v['about']} | {r['parameters']['nli_head']:,} | {_nli(r, 'snli_dev_heldout')} | "
                     f"{_nli(r, 'snli_test')} | {_nli(r, 'mnli_dev_matched')} | {_nli(r, 'mnli_dev_mismatched')} |")
    t = reports["teacher"]
    if "nli" in t:
        lines.append(f"| NLI teacher: all-MiniLM-L6-v2 cross-encoder, 22.7 M | – | {_nli(t, 'snli_dev_heldout')} | "
                     f"{_nli(t, 'snli_test')} | {_nli(t, 'mnli_dev_matched')} | {_nli(t, 'mnli_dev_mismatched')} |")
    return "\n".join(lines) + "\n"


def image_block(reports: dict[str, dict]) -> str:
    """The container images' sizes and build times, as ``make image`` and ``make image-slim`` last
    measured them."""
    r, slim = reports["image"], reports["image_slim"]
    layers = slim.get("layer_bytes", [])  # podman only: the pruned base, then the service
    if len(layers) == 2:
        parts = (f": `python:3.11-slim` pruned of what a server never reads, as one layer of {layers[0] / 1e6:.0f} MB "
                 f"(the base image as this machine has it: {slim.get('base_image_bytes', 0) / 1e6:.0f} MB), and the "
                 f"service, {layers[1] / 1e6:.0f} MB (ONNX Runtime and numpy are two thirds of it)")
    else:  # the slim image holds a pruned copy of the base, so the base image's size would not split it
        parts = " (its layer sizes were not recorded: the build script reads them from podman)"
    return (f"Measured by `make image` (`deploy/image/report.json`): **{r['size_bytes'] / 1e9:.2f} GB**, built with "
            f"{r['engine_version']} in {r['build_seconds']} s (that build's wall time, cached layers included). Nearly all of it is the "
            f"virtual environment, mostly torch. The slim target (`make image-slim`, `deploy/image/report-slim.json`: "
            f"ONNX Runtime, no torch): **{slim['size_bytes'] / 1e6:.0f} MB**, built in {slim['build_seconds']} s{parts}.\n")


def backends_block(reports: dict[str, dict]) -> str:
    """The backends table from ``bench/results/onnx/serving.json`` (``python -m bench.serving``)."""
    return serving_table(reports["backends"])


def serving_block(reports: dict[str, dict]) -> str:
    """The serving benchmark of the shipped defaults, ``bench/results/serving.json``: its targets
    (value, goal, met), then the per-scenario table (``serving_table``)."""
    run = reports["serving"]
    lines = ["| target | measured | goal | met |", "|---|---|---|---|"]
    for t in run["targets"]:
        value = "–" if t["value"] is None else f"{t['value']:,.1f}" + ("x" if t["goal"].endswith("x") else "")
        met = "–" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {t['target']} | {value} | {t['goal']} | {met} |")
    return "\n".join(lines) + "\n\n" + serving_table(run)


def serving_table(run: dict) -> str:
    """One ``python -m bench.serving`` run as a table: per scenario, pairs/s at each closed-loop
    client count, latency at half saturation, server cores, memory; then when, where and how."""
    clients = run["config"]["clients"]
    head = ("| scenario | " + " | ".join(f"pairs/s, {c} client{'s' if c > 1 else ''}" for c in clients)
            + " | p50 / p99 ms at half saturation | server cores at 32 clients | RSS after load MiB (all processes) |")
    lines = [head, "|" + "---|" * (len(clients) + 4)]
    for name, sc in run["scenarios"].items():
        closed = {p["clients"]: p for p in sc["phases"] if p["loop"] == "closed"}
        opened = next((p for p in sc["phases"] if p["loop"] == "open"), None)
        half = f"{opened['p50_ms']:.1f} / {opened['p99_ms']:.1f}" if opened else "–"
        cores = f"{closed[max(clients)]['server_cpu_cores']:.2f}" if max(clients) in closed else "–"
        lines.append(f"| `{name}` | " + " | ".join(f"{closed[c]['pairs_per_s']:.0f}" for c in clients)
                     + f" | {half} | {cores} | {sc['memory_end']['rss_bytes'] / 2**20:.0f} |")
    m = run["machine"]
    return "\n".join(lines) + (f"\n\n{run['started_at']}, {m.get('cpu')} ({m.get('cpu_count')} CPUs), "
                               f"`{run['command']}`.\n")


def settings_block(_: dict[str, dict]) -> str:
    """The configuration table: every ``app.settings.Settings`` field, its ``PETE_*`` variable, default
    and description (the settings module is the one place they are written)."""
    from app.settings import DEFAULT_MODEL_PATH, Settings

    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for name, f in Settings.model_fields.items():
        env = f"PETE_{name.upper()}"
        default = f.default
        if default == DEFAULT_MODEL_PATH:
            default = f"{DEFAULT_MODEL_PATH.relative_to(REPO_ROOT)} (bundled)"
        text = f.description.replace("|", "\\|")
        lines.append(f"| `{env}` | `{default}` | {text} |")
    return "\n".join(lines) + "\n"


BLOCKS: dict[str, Callable[[dict[str, dict]], str]] = {"results": results_block, "thresholds": thresholds_block,
                                                        "nli_variants": nli_variants_block, "image": image_block,
                                                        "settings": settings_block, "backends": backends_block,
                                                        "serving": serving_block}


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
