"""Training CLI: stages over one loop, seeded, resumable, with a log of losses, throughput and dev scores.

    pete-train --data-dir ../shared/data --out runs/default \
        --stages token_init:1500,contrastive:4000,sts:600,nli:1500

The stages are records in ``model.stages`` (name, loss, trainable parameters, learning-rate
schedule); every option is a field of ``model.train_config.TrainConfig``. Each step draws a fresh
batch from a generator seeded by (seed, stage, step), so a resumed run draws the batches it would
have drawn (the distill stage samples from the teacher-cache rows finished at the time).

State (model, optimizer, auxiliary modules, stage, step, training seconds) is written to
``OUT/state.pt`` every --save-every steps and at least every --save-minutes; re-running the same
command resumes. Dev scores (STS-B dev overall and per genre, the SNLI held-back half for NLI
stages) go to ``OUT/dev_curve.jsonl`` with the training hours so far; each stage's best checkpoint
by ``selection_score`` is kept in ``OUT/best_<stage>``. The final model is
saved with ``save_pretrained`` to ``OUT/final`` and its dev scores to ``OUT/dev_scores.json``.
"""

from __future__ import annotations

import json
import logging
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Mapping

import torch

from model.encoder import EncoderConfig, SentenceEncoder
from model.scoring import nli_accuracy, sts_scores
from model.stages import STAGES, Stage, StageContext
from model.tokenizer import build_bert_tokenizer, build_frequency_ranked_tokenizer, read_vocab, tokenizer_from_vocab
from model.train_config import TrainConfig, config_from_args, parse_stages  # noqa: F401  (parse_stages: public)
from model.train_data import TrainData

log = logging.getLogger("pete.train")
DEFAULT_NLI_HIDDEN = 128  # a new NLI head's hidden width when --nli-hidden is not given


def selection_score(stage: str, scores: dict) -> float:
    """What model selection maximises: for the nli stage, accuracy on the held-back half of SNLI
    dev; otherwise the mean over STS-B dev genres of Spearman (the overall Spearman when the split
    has no genres), so one genre cannot carry the choice."""
    if stage == "nli":
        return scores["snli_valid_acc"]
    genres = scores.get("sts_dev_genres") or {}
    return sum(genres.values()) / len(genres) if genres else scores["sts_dev_spearman"]


class Trainer:
    """Runs the stages over one loop; owns the ``StageContext`` and the resumable state.

    ``stages``: the stage records by name (default ``model.stages.STAGES``; tests pass a table with a
    stage's loss replaced)."""

    def __init__(self, cfg: TrainConfig, model: SentenceEncoder, data: TrainData,
                 stages: Mapping[str, Stage] = STAGES) -> None:
        self.cfg, self.model, self.data, self.stages = cfg, model, data, stages
        self.out = cfg.out_dir
        perm_path = self.out / "vocab_perm.json"
        self.ctx = StageContext(cfg, model, data,
                                vocab_perm=json.loads(perm_path.read_text()) if perm_path.exists() else None)
        self.stage_idx, self.step, self.train_seconds = 0, 0, 0.0
        self.best: dict[str, dict] = {}

    # -- state ---------------------------------------------------------------------------------
    def state_path(self) -> Path:
        return self.out / "state.pt"

    def save_state(self, opt: torch.optim.Optimizer | None) -> None:
        tmp = self.out / "state.pt.tmp"
        torch.save({"model": self.model.state_dict(), "aux": self.ctx.aux.state_dict(),
                    "opt": opt.state_dict() if opt else None, "stage_idx": self.stage_idx,
                    "step": self.step, "best": self.best, "train_seconds": self.train_seconds}, tmp)
        tmp.replace(self.state_path())

    def load_state(self) -> dict | None:
        if not self.state_path().exists():
            return None
        st = torch.load(self.state_path(), weights_only=False)
        self.model.load_state_dict(st["model"])
        self.ctx.aux.load_state_dict(st["aux"])
        self.stage_idx, self.step, self.best = st["stage_idx"], st["step"], st.get("best", {})
        self.train_seconds = st.get("train_seconds", 0.0)
        log.info("resumed at stage %d step %d (%.2f h trained)", self.stage_idx, self.step, self.train_seconds / 3600)
        return st

    def rng(self) -> random.Random:
        return random.Random(self.cfg.seed * 1_000_003 + self.stage_idx * 10_007 + self.step)

    # -- evaluation for selection (dev splits only) ----------------------------------------------------------
    def dev_scores(self, stage: str) -> dict:
        sts = sts_scores(self.model, self.data.sts_dev)
        out = {"sts_dev_spearman": sts["spearman"],
               "sts_dev_genres": {g: v["spearman"] for g, v in sts["genres"].items()},
               "sts_dev_cosine_by_gold": {b: v["median"] for b, v in sts["cosine_by_gold"].items()}}
        if stage == "nli" or self.cfg.nli_aux_weight > 0:
            out["snli_valid_acc"] = nli_accuracy(self.model, self.data.nli_valid)["accuracy"]
        return out

    def record_dev(self, stage: str) -> dict:
        """Dev scores now: appended to dev_curve.jsonl; the stage's best checkpoint kept."""
        scores = self.dev_scores(stage)
        row = {"stage": stage, "step": self.step, "hours": round(self.train_seconds / 3600, 4), **scores}
        with open(self.out / "dev_curve.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        best = self.best.get(f"best_{stage}")
        if best is None or selection_score(stage, scores) > selection_score(stage, best):
            self.best[f"best_{stage}"] = {"step": self.step, **scores}
            self.model.save_pretrained(self.out / f"best_{stage}")
        log.info("%s step %d dev %s", stage, self.step, json.dumps(scores))
        return scores

    # -- the loop ------------------------------------------------------------------------------------
    def run_stage(self, stage: Stage, steps: int, resume: dict | None) -> None:
        cfg, ctx = self.cfg, self.ctx
        stage.setup(ctx, self.step)
        params = stage.trainable(ctx)
        for p in list(self.model.parameters()) + list(ctx.aux.parameters()):
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        base_lr = stage.lr(cfg)
        opt = torch.optim.AdamW(params, lr=base_lr, weight_decay=cfg.weight_decay)
        if resume is not None and resume.get("opt") is not None and self.step > 0:
            opt.load_state_dict(resume["opt"])
        self.model.train()
        running: dict[str, float] = {}
        t_log, step_log, sent_log = time.perf_counter(), self.step, ctx.sentences
        t_save = time.perf_counter()
        while self.step < steps:
            t_step = time.perf_counter()
            lr = base_lr * stage.schedule(self.step, steps, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            losses = stage.loss(ctx, self.rng())
            loss = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            self.step += 1
            self.train_seconds += time.perf_counter() - t_step
            for k, v in losses.items():
                running[k] = 0.98 * running.get(k, v.item()) + 0.02 * v.item()
            if self.step % cfg.log_every == 0 or self.step == steps:
                dt = time.perf_counter() - t_log
                log.info("%s step %d/%d lr %.2e %s scale %.1f (%.2fs/step, %.0f sentences/s, %.2f h)", stage.name,
                         self.step, steps, lr, " ".join(f"{k} {v:.4f}" for k, v in running.items()),
                         float(ctx.aux["logit_scale"]["v"].detach().exp()), dt / max(1, self.step - step_log),
                         (ctx.sentences - sent_log) / max(dt, 1e-9), self.train_seconds / 3600)
                t_log, step_log, sent_log = time.perf_counter(), self.step, ctx.sentences
            if cfg.eval_every and self.step % cfg.eval_every == 0 and stage.evaluate and self.step < steps:
                self.record_dev(stage.name)
                self.model.train()
            if self.step % cfg.save_every == 0 or time.perf_counter() - t_save > 60 * cfg.save_minutes:
                self.save_state(opt)
                t_save = time.perf_counter()
                if ctx.teacher is not None:
                    ctx.teacher.refresh()  # pick up rows a caching run finished since

    def run(self) -> None:
        stages = self.cfg.stages
        resume = self.load_state()
        while self.stage_idx < len(stages):
            name, steps = stages[self.stage_idx]
            stage = self.stages[name]
            self.run_stage(stage, steps, resume)
            resume = None
            if stage.evaluate:
                scores = self.record_dev(name)
                self.best[name] = scores
                log.info("end of %s: dev %s", name, json.dumps(scores))
                self.model.save_pretrained(self.out / f"after_{self.stage_idx}_{name}")
            self.stage_idx, self.step = self.stage_idx + 1, 0
            self.save_state(None)
        self.model.eval()
        self.model.save_pretrained(self.out / "final")
        final = {k: v for k, v in self.best.items() if not k.startswith("best_")}
        (self.out / "dev_scores.json").write_text(json.dumps(final, indent=2) + "\n")
        log.info("saved %s; dev scores %s", self.out / "final", final)


def build_model(cfg: TrainConfig, data: TrainData) -> SentenceEncoder:
    """A fresh model from the config (or the ``init`` checkpoint), with the chosen tokenizer.

    A frequency-ranked tokenizer's id permutation is written to OUT/vocab_perm.json (and reused on
    resume, so ids stay the same).
    """
    if cfg.init:
        model = SentenceEncoder.from_pretrained(cfg.init).train()
        kind = cfg.nli_head or model.config.nli_head
        hidden = cfg.nli_hidden or (model.config.nli_hidden if kind == model.config.nli_head else DEFAULT_NLI_HIDDEN)
        if (kind, hidden) != (model.config.nli_head, model.config.nli_hidden):
            model.set_nli_head(kind, hidden)  # a new head on a trained encoder, only when asked for
        return model
    vocab_path = data.paths.bert_vocab
    if cfg.tokenizer == "frequency":
        perm_path = cfg.out_dir / "vocab_perm.json"
        if perm_path.exists():  # resume: same ids as before
            vocab = read_vocab(vocab_path)
            tok = tokenizer_from_vocab([vocab[i] for i in json.loads(perm_path.read_text())])
        else:
            tok, perm = build_frequency_ranked_tokenizer(vocab_path, (s.text for s in data.sentences))
            perm_path.write_text(json.dumps(perm))
    else:
        tok = build_bert_tokenizer(vocab_path)
    config = EncoderConfig(
        vocab_size=tok.get_vocab_size(), dim=cfg.dim, n_layers=cfg.layers, n_heads=cfg.heads,
        ffn_dim=cfg.ffn_dim, max_len=cfg.max_len, embedding=cfg.embedding,
        embedding_options=cfg.embedding_options_dict(), nli_head=cfg.nli_head or "pair",
        nli_hidden=cfg.nli_hidden or DEFAULT_NLI_HIDDEN, tokenizer_kind=cfg.tokenizer)
    return SentenceEncoder(config, tok)


def main(argv: list[str] | None = None, stages: Mapping[str, Stage] = STAGES) -> None:
    """Entry point of ``pete-train`` (``stages``: see ``Trainer``)."""
    cfg = config_from_args(argv, __doc__)
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        handlers=[logging.FileHandler(out / "train.log"), logging.StreamHandler(sys.stderr)],
                        force=True)
    logging.getLogger("pete").setLevel(logging.INFO)  # the run's log, whatever an app in this process set
    (out / "command.txt").write_text("pete-train " + " ".join(argv if argv is not None else sys.argv[1:]) + "\n")
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    log.info("config %s", json.dumps(asdict(cfg)))
    data = TrainData(cfg)
    model = build_model(cfg, data)
    log.info("model %s params %s", asdict(model.config), model.parameter_counts())
    Trainer(cfg, model, data, stages).run()


if __name__ == "__main__":
    main()
