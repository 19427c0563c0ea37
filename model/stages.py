"""The training stages, each one record: name, loss, trainable parameters, learning-rate schedule.

- ``token_init``  initialise the token embedding from what the teacher knows: regress E(p) onto the
                  teacher's (all-MiniLM-L6-v2) word embedding of token p, reduced to d dims by PCA
                  (ids mapped through the tokenizer's permutation).
- ``distill``     knowledge distillation on the teacher cache (every unlabelled sentence we have):
                  1 - cos between a 256->384 projection of the student's sentence vector and the
                  teacher's, plus ``relational_weight`` x the MSE between the student's own in-batch
                  cosine matrix and the teacher's (so the served cosines spread like the teacher's),
                  plus optionally ``distill_words`` single words per batch (word-level distillation,
                  ``model.teacher.word_corpus``) in the same two losses,
                  plus optionally ``distill_pairs`` near pairs (``model.near_pairs``) per batch whose
                  cosines regress the teacher's (``pair_weight``),
                  plus optionally ``infonce_weight`` x the caption/triplet InfoNCE,
                  plus optionally ``gold_weight`` x the MSE between the student's cosine of STS-B
                  train pairs and their gold score on the teacher's cosine scale (the human order,
                  the teacher's spread: ``model.train_data.gold_on_teacher_scale``).
- ``contrastive`` InfoNCE with in-batch negatives and a learnable temperature on caption pairs (same
                  image_id) and NLI entailment pairs with their contradiction as a hard negative;
                  optionally plus distillation (``distill_weight``) and an auxiliary NLI loss.
- ``sts``         CoSENT on STS-B train, optionally plus distillation (``distill_weight``) to keep the
                  teacher's geometry while ranking STS-B pairs.
- ``nli``         3-way NLI cross-entropy for the model's head (pair, align or cross-encoder), the
                  encoder frozen with ``nli_freeze_encoder``; with the NLI teacher's cached logits
                  (``model.nli_teacher``), plus soft-label KL on the labelled pairs
                  (``nli_kd_weight``) and on pseudo-labelled unlabelled pairs (``nli_pseudo``).

A loss takes the ``StageContext`` and a ``random.Random`` seeded by (seed, stage, step), and returns
named scalar losses that are summed. The schedule maps (step, steps, cfg) to a multiplier of the
stage's peak learning rate.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from model.data import NLI_LABEL_IDS
from model.encoder import SentenceEncoder
from model.losses import cosent, cosine_mse, distill_cosine, info_nce, pair_cosine_mse, similarity_matrix_mse
from model.teacher import TEACHER_DIM
from model.train_config import TrainConfig
from model.train_data import TeacherTargets, TrainData, gold_on_teacher_scale

Losses = dict[str, torch.Tensor]


@dataclass
class StageContext:
    """What the losses work on: the model, its training-only modules, the data and the config.

    ``aux`` holds the distillation projection (d -> 384) and the InfoNCE log-scale; both are saved
    in the training state, never in the checkpoint. ``teacher`` and ``token_targets`` are loaded by
    the stages that need them.
    """

    cfg: TrainConfig
    model: SentenceEncoder
    data: TrainData
    aux: nn.ModuleDict = None
    teacher: TeacherTargets | None = None
    words: TeacherTargets | None = None  # single words (cfg.distill_words or cfg.word_pairs > 0)
    token_targets: torch.Tensor | None = None
    gold_targets: torch.Tensor | None = None  # (len(sts_train),) float32, see load_teacher
    vocab_perm: list[int] | None = None
    sentences: int = 0  # sentences embedded so far (throughput logging)

    def __post_init__(self) -> None:
        if self.aux is None:
            self.aux = nn.ModuleDict({
                "distill_proj": nn.Linear(self.model.config.dim, TEACHER_DIM),
                "logit_scale": nn.ParameterDict({"v": nn.Parameter(torch.tensor(math.log(20.0)))}),
            })

    def embed(self, texts: list[str], chunk: int = 64) -> torch.Tensor:
        """Sentence vectors (N, d) float32 with gradients; texts are embedded in length-sorted chunks
        so short captions are not padded to the longest premise (results are padding-invariant)."""
        self.sentences += len(texts)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        parts = []
        for s in range(0, len(order), chunk):
            b = self.model.tokenize([texts[i] for i in order[s : s + chunk]], max_tokens=self.cfg.max_tokens)
            parts.append(self.model.embed(b.input_ids, b.attention_mask))
        return torch.cat(parts)[torch.tensor(order).argsort()]


# ---- losses ----------------------------------------------------------------------------------------
def infonce_loss(ctx: StageContext, rng: random.Random) -> torch.Tensor:
    """InfoNCE over ``caption_batch`` caption pairs and ``triplet_batch`` NLI triplets."""
    cfg = ctx.cfg
    groups = rng.sample(ctx.data.groups, cfg.caption_batch) if cfg.caption_batch else []
    trip = rng.sample(ctx.data.triplets, cfg.triplet_batch) if cfg.triplet_batch else []
    anchors, positives, negatives = [], [], []
    for g in groups:
        x, y = rng.sample(g, 2)
        anchors.append(x), positives.append(y)
    for p, e, c in trip:
        anchors.append(p), positives.append(e)
        if c is not None:
            negatives.append(c)
    n = len(anchors)
    e_all = ctx.embed(anchors + positives + negatives)
    return info_nce(e_all[:n], e_all[n:], ctx.aux["logit_scale"]["v"])


def distill_losses(ctx: StageContext, rng: random.Random) -> Losses:
    """Distillation on ``distill_batch`` cached sentences (+ ``distill_words`` single words): projected
    cosine + relational MSE; + the cosine MSE of ``distill_pairs`` near sentence pairs and of
    ``word_pairs`` near word pairs (teacher neighbours among the words), both at ``pair_weight``."""
    cfg = ctx.cfg
    texts, target = ctx.teacher.sample(rng, cfg.distill_batch)
    if cfg.distill_words:
        word_texts, word_target = ctx.words.sample(rng, cfg.distill_words)
        texts, target = texts + word_texts, torch.cat((target, word_target))
    pair_rows = []  # (loss name, first row, k): k first sides, then their k second sides
    for name, k, source in (("pair", cfg.distill_pairs, ctx.teacher), ("word_pair", cfg.word_pairs, ctx.words)):
        if k:
            pair_texts, pair_target = source.sample_pairs(rng, k)
            pair_rows.append((name, len(texts), k))
            texts, target = texts + pair_texts, torch.cat((target, pair_target))
    student = ctx.embed(texts)
    out = {"distill": distill_cosine(ctx.aux["distill_proj"](student), target)}
    if cfg.relational_weight > 0:
        out["relational"] = cfg.relational_weight * similarity_matrix_mse(student, target)
    for name, start, k in pair_rows:
        s, t = student[start : start + 2 * k], target[start : start + 2 * k]
        out[name] = cfg.pair_weight * pair_cosine_mse(s[:k], s[k:], t[:k], t[k:])
    return out


def scaled(losses: Losses, weight: float) -> Losses:
    """Every loss of ``losses`` times ``weight`` (names kept)."""
    return {k: weight * v for k, v in losses.items()}


def gold_loss(ctx: StageContext, rng: random.Random) -> torch.Tensor:
    """MSE between the student's cosines of ``gold_batch`` STS-B train pairs and their targets."""
    n = len(ctx.data.sts_train)
    if ctx.cfg.gold_balanced:  # each genre equally often (with replacement)
        idx = rng.choices(range(n), weights=genre_balanced_weights(ctx.data.sts_train), k=ctx.cfg.gold_batch)
    else:
        idx = rng.sample(range(n), ctx.cfg.gold_batch)
    batch = [ctx.data.sts_train[i] for i in idx]
    e = ctx.embed([p.sentence1 for p in batch] + [p.sentence2 for p in batch])
    return cosine_mse(e[: len(batch)], e[len(batch):], ctx.gold_targets[idx])


def genre_balanced_weights(pairs) -> list[float]:
    """Sampling weight 1 / (pairs of its genre) for each pair: every genre equally likely."""
    counts: dict[str, int] = {}
    for p in pairs:
        counts[p.genre] = counts.get(p.genre, 0) + 1
    return [1.0 / counts[p.genre] for p in pairs]


def loss_distill(ctx: StageContext, rng: random.Random) -> Losses:
    out = distill_losses(ctx, rng)
    if ctx.cfg.infonce_weight > 0:
        out["infonce"] = ctx.cfg.infonce_weight * infonce_loss(ctx, rng)
    if ctx.cfg.gold_weight > 0:
        out["gold"] = ctx.cfg.gold_weight * gold_loss(ctx, rng)
    return out


def loss_contrastive(ctx: StageContext, rng: random.Random) -> Losses:
    cfg = ctx.cfg
    out = {"infonce": infonce_loss(ctx, rng)}
    if cfg.distill_weight > 0:
        out.update(scaled(distill_losses(ctx, rng), cfg.distill_weight))
    if cfg.nli_aux_weight > 0:
        out["nli_aux"] = cfg.nli_aux_weight * loss_nli(ctx, rng, cfg.nli_aux_batch)["nli"]
    return out


def loss_sts(ctx: StageContext, rng: random.Random) -> Losses:
    batch = rng.sample(ctx.data.sts_train, ctx.cfg.sts_batch)
    e = ctx.embed([p.sentence1 for p in batch] + [p.sentence2 for p in batch])
    gold = torch.tensor([p.score for p in batch])
    out = {"cosent": cosent(e[: len(batch)], e[len(batch):], gold)}
    if ctx.cfg.distill_weight > 0:
        out.update(scaled(distill_losses(ctx, rng), ctx.cfg.distill_weight))
    return out


def nli_logits(ctx: StageContext, premises: list[str], hypotheses: list[str]) -> torch.Tensor:
    """The model's NLI logits (B, 3) for a training batch (pair head: length-sorted ``ctx.embed``)."""
    model = ctx.model
    if model.config.nli_head == "pair":
        return model.nli_head(ctx.embed(premises), ctx.embed(hypotheses))
    ctx.sentences += 2 * len(premises)
    return model.nli_logits(premises, hypotheses, max_tokens=ctx.cfg.max_tokens)


def soft_label_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of the two (B, 3) logit sets' softmax, averaged over rows (knowledge
    distillation with soft labels, Hinton et al. 2015, temperature 1); 0 for an empty batch."""
    if len(student_logits) == 0:
        return student_logits.sum()
    return F.kl_div(F.log_softmax(student_logits, -1), F.log_softmax(teacher_logits, -1),
                    reduction="batchmean", log_target=True)


def loss_nli(ctx: StageContext, rng: random.Random, batch_size: int | None = None) -> Losses:
    """Cross-entropy on sampled labelled pairs; with an NLI teacher, plus ``nli_kd_weight`` x the KL to
    its probabilities on the same pairs and ``nli_pseudo_weight`` x the KL on pseudo-labelled pairs."""
    cfg = ctx.cfg
    pairs, weights = ctx.data.nli_train
    g = torch.Generator().manual_seed(rng.randrange(2**62))
    idx = torch.multinomial(weights, batch_size or cfg.nli_batch, replacement=True, generator=g).tolist()
    batch = [pairs[i] for i in idx]
    premises, hypotheses = [p.premise for p in batch], [p.hypothesis for p in batch]
    logits = nli_logits(ctx, premises, hypotheses)
    gold = torch.tensor([NLI_LABEL_IDS[p.label] for p in batch])
    out = {"nli": F.cross_entropy(logits, gold)}
    if batch_size is None and cfg.nli_kd_weight > 0:
        rows, teacher = ctx.data.nli_teacher.for_pairs(premises, hypotheses)
        out["nli_kd"] = cfg.nli_kd_weight * soft_label_kl(logits[rows], teacher)
    if batch_size is None and cfg.nli_pseudo and cfg.nli_pseudo_weight > 0:
        t = ctx.data.nli_teacher
        pick = rng.sample(range(len(t.pseudo)), min(cfg.nli_pseudo_batch, len(t.pseudo)))
        student = nli_logits(ctx, [t.pseudo[i][0] for i in pick], [t.pseudo[i][1] for i in pick])
        out["nli_pseudo"] = cfg.nli_pseudo_weight * soft_label_kl(student, t.pseudo_logits[pick])
    return out


def loss_token_init(ctx: StageContext, rng: random.Random) -> Losses:
    ids = torch.tensor(rng.sample(range(ctx.model.config.vocab_size), ctx.cfg.token_batch))
    pred = ctx.model.encoder.embedding(ids.unsqueeze(0)).squeeze(0)
    return {"token_mse": F.mse_loss(pred, ctx.token_targets[ids])}


# ---- set-up the stages need --------------------------------------------------------------------------
def load_token_targets(ctx: StageContext, step: int = 0) -> None:
    """PCA-d of the teacher's word embeddings in the model's id order, scaled to the RMS of the
    Fourier features (1/sqrt 2)."""
    from model.teacher import teacher_word_embeddings

    w = teacher_word_embeddings()  # (30522, 384), BERT ids
    perm = ctx.vocab_perm or list(range(ctx.model.config.vocab_size))
    w = w[perm] - w.mean(0)
    _, _, v = torch.pca_lowrank(w, q=ctx.model.config.dim, center=False, niter=4)
    t = w @ v  # (V, d)
    ctx.token_targets = t * (0.7071 / t.pow(2).mean().sqrt())


def load_teacher(ctx: StageContext, step: int = 0) -> None:
    """Open the teacher cache (or pick up rows finished since); at step 0 of a stage, fit the
    distillation projection to the student's current vectors."""
    if ctx.teacher is None:
        ctx.teacher = TeacherTargets(ctx.cfg)
    else:
        ctx.teacher.refresh()
    if (ctx.cfg.distill_words or ctx.cfg.word_pairs) and ctx.words is None:
        ctx.words = TeacherTargets(ctx.cfg, words=True)
    if step == 0:
        fit_projection(ctx)
    if ctx.cfg.gold_weight > 0 and ctx.gold_targets is None:
        ctx.gold_targets = gold_targets(ctx)


@torch.no_grad()
def gold_targets(ctx: StageContext) -> torch.Tensor:
    """STS-B train gold scores on the teacher's cosine scale: (len(sts_train),) float32."""
    pairs = ctx.data.sts_train
    e = ctx.teacher.text_embeddings([p.sentence1.strip() for p in pairs] + [p.sentence2.strip() for p in pairs])
    cos = F.cosine_similarity(e[: len(pairs)], e[len(pairs):], dim=-1).numpy()
    return torch.from_numpy(gold_on_teacher_scale(np.array([p.score for p in pairs]), cos))


@torch.no_grad()
def fit_projection(ctx: StageContext, n: int = 4096, ridge: float = 1e-2) -> None:
    """Least-squares (ridge) fit of ``aux.distill_proj`` (d -> 384) from the student's sentence vectors
    of ``n`` cached sentences to the teacher's, so distillation starts from the best linear map
    instead of a random one (a random map's loss gradient would first move the encoder towards it).
    """
    texts, target = ctx.teacher.sample(random.Random(ctx.cfg.seed), min(n, ctx.teacher.n))
    was_training = ctx.model.training
    x = ctx.model.eval().encode(texts)  # (n, d)
    ctx.model.train(was_training)
    x1 = torch.cat((x, torch.ones(len(x), 1)), dim=1)  # bias column
    gram = x1.T @ x1 + ridge * len(x) * torch.eye(x1.shape[1])
    w = torch.linalg.solve(gram, x1.T @ target)  # (d + 1, 384)
    proj = ctx.aux["distill_proj"]
    proj.weight.copy_(w[:-1].T)
    proj.bias.copy_(w[-1])


def load_teacher_if_distilling(ctx: StageContext, step: int = 0) -> None:
    if ctx.cfg.distill_weight > 0:
        load_teacher(ctx, step)


# ---- trainable parameters -------------------------------------------------------------------------
def embedding_params(ctx: StageContext) -> list[nn.Parameter]:
    return list(ctx.model.encoder.embedding.parameters())


def distill_params(ctx: StageContext) -> list[nn.Parameter]:
    params = list(ctx.model.encoder.parameters()) + list(ctx.aux["distill_proj"].parameters())
    if ctx.cfg.infonce_weight > 0:
        params += list(ctx.aux["logit_scale"].parameters())
    return params


def contrastive_params(ctx: StageContext) -> list[nn.Parameter]:
    params = list(ctx.model.encoder.parameters()) + list(ctx.aux.parameters())
    if ctx.cfg.nli_aux_weight > 0:
        params += list(ctx.model.nli_head.parameters())
    return params


def sts_params(ctx: StageContext) -> list[nn.Parameter]:
    params = list(ctx.model.encoder.parameters())
    if ctx.cfg.distill_weight > 0:
        params += list(ctx.aux["distill_proj"].parameters())
    return params


def nli_params(ctx: StageContext) -> list[nn.Parameter]:
    head = list(ctx.model.nli_head.parameters())
    return head if ctx.cfg.nli_freeze_encoder else list(ctx.model.encoder.parameters()) + head


# ---- schedules ------------------------------------------------------------------------------------
def warmup_cosine(step: int, steps: int, cfg: TrainConfig) -> float:
    """Linear warm-up over min(cfg.warmup, steps/10 + 1) steps, then cosine decay to 10% of the peak."""
    warmup = min(cfg.warmup, steps // 10 + 1)
    return min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))


@dataclass(frozen=True)
class Stage:
    """One training stage.

    loss: (ctx, rng) -> named scalar losses (summed for the backward pass).
    trainable: ctx -> the parameters the optimizer updates (the rest are frozen).
    lr: cfg -> peak learning rate; schedule: (step, steps, cfg) -> multiplier of it.
    setup: (ctx, step) -> None, run before the stage starts (step 0) or resumes (loads targets).
    evaluate: dev scores at the end of the stage (and every ``eval_every`` steps).
    """

    name: str
    loss: Callable[[StageContext, random.Random], Losses]
    trainable: Callable[[StageContext], list[nn.Parameter]]
    lr: Callable[[TrainConfig], float]
    schedule: Callable[[int, int, TrainConfig], float] = warmup_cosine
    setup: Callable[[StageContext, int], None] = field(default=lambda ctx, step: None)
    evaluate: bool = True


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("token_init", loss_token_init, embedding_params, lambda c: c.lr_token, setup=load_token_targets,
          evaluate=False),
    Stage("distill", loss_distill, distill_params, lambda c: c.lr_distill, setup=load_teacher),
    Stage("contrastive", loss_contrastive, contrastive_params, lambda c: c.lr, setup=load_teacher_if_distilling),
    Stage("sts", loss_sts, sts_params, lambda c: c.lr_sts, setup=load_teacher_if_distilling),
    Stage("nli", loss_nli, nli_params, lambda c: c.lr_nli),
)}
