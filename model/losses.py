"""Training losses. Each takes float32 tensors and returns a scalar float32 tensor.

- ``info_nce``: contrastive loss with in-batch negatives (van den Oord et al. 2018; Henderson et al. 2017).
- ``cosent``: ranking loss on cosine similarities for graded pairs (Su 2022).
- ``distill_cosine``: knowledge distillation of sentence embeddings (Reimers & Gurevych 2020,
  "Making monolingual sentence embeddings multilingual"), 1 - cos through a learned projection.
- ``pair_cosine_mse``: the student's cosine of given sentence pairs regresses the teacher's.
- ``cosine_mse``: the student's cosine of given sentence pairs regresses given target cosines
  (SBERT's CosineSimilarityLoss, Reimers & Gurevych 2019).
- ``similarity_matrix_mse``: relational distillation: the student's in-batch cosine matrix regresses
  the teacher's (Park et al. 2019, "Relational knowledge distillation", distance-wise loss with cosine
  similarity), in the student's own space, which is the space the service computes cosines in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(anchors: torch.Tensor, candidates: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """InfoNCE with in-batch negatives: anchors (n, d), candidates (m >= n, d) where candidate i is
    anchor i's positive and the rest (other positives, hard negatives) are negatives.

    Symmetric: also each positive against all anchors. ``logit_scale`` is log(1/temperature); the
    scale is clamped at 100. Returns a scalar float32.
    """
    a, c = F.normalize(anchors, dim=-1), F.normalize(candidates, dim=-1)
    scale = logit_scale.exp().clamp(max=100.0)
    logits = scale * a @ c.T  # (n, m)
    target = torch.arange(a.shape[0])
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits[:, : a.shape[0]].T, target))


def cosent(u: torch.Tensor, v: torch.Tensor, gold: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    """CoSENT loss (Su 2022): log(1 + sum exp(s * (cos_kl - cos_ij))) over pairs whose gold score
    orders (i, j) above (k, l). u, v (n, d) float32, gold (n,) scores. Scalar float32."""
    cos = F.cosine_similarity(u, v, dim=-1) * scale
    diff = cos[None, :] - cos[:, None]  # diff[i, j] = cos_j - cos_i, penalised where gold_i > gold_j
    diff = diff - (1 - (gold[:, None] > gold[None, :]).float()) * 1e12
    return torch.logsumexp(torch.cat((torch.zeros(1), diff.flatten())), dim=0)


def distill_cosine(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cos(pred_i, target_i): pred (n, D) the projected student vectors, target (n, D)
    the teacher's. 0 when every row points the teacher's way."""
    return (1 - F.cosine_similarity(pred, target.to(pred.dtype), dim=-1)).mean()


def cosine_matrix(x: torch.Tensor) -> torch.Tensor:
    """(n, d) -> (n, n) cosine similarities of every pair of rows."""
    x = F.normalize(x, dim=-1)
    return x @ x.T


def similarity_matrix_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the off-diagonal in-batch cosine matrices.

    student (n, d) and teacher (n, D) need not share a width: only their n x n cosine matrices are
    compared, so the student's own cosines (what /similarity returns) take the teacher's values,
    unrelated pairs low and paraphrases high. Requires n >= 2.
    """
    n = student.shape[0]
    off = ~torch.eye(n, dtype=torch.bool)
    diff = cosine_matrix(student) - cosine_matrix(teacher.to(student.dtype))
    return diff[off].pow(2).mean()


def pair_cosine_mse(student_a: torch.Tensor, student_b: torch.Tensor, teacher_a: torch.Tensor,
                    teacher_b: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between cos(student_a_i, student_b_i) and cos(teacher_a_i, teacher_b_i).

    student_* (k, d) and teacher_* (k, D) float; the pair-wise counterpart of
    ``similarity_matrix_mse`` for chosen (related) pairs. Returns a scalar float32.
    """
    s = F.cosine_similarity(student_a, student_b, dim=-1)
    t = F.cosine_similarity(teacher_a, teacher_b, dim=-1).to(s.dtype)
    return (s - t).pow(2).mean()


def cosine_mse(u: torch.Tensor, v: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between cos(u_i, v_i) and target_i: u, v (n, d) float32, target (n,)
    cosines in [-1, 1]. Returns a scalar float32 (Reimers & Gurevych 2019, CosineSimilarityLoss)."""
    return (F.cosine_similarity(u, v, dim=-1) - target.to(u.dtype)).pow(2).mean()
