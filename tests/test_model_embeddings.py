"""Token embeddings (model/embeddings.py): the PETE formulas against the paper's equations
(Ndubuaku & Talhi 2025, arXiv 2505.02266, Sec. 3) computed independently here, the reference
normalisation's collisions, materialization, and every kind's parameter count and output."""

from __future__ import annotations

import math

import pytest
import torch

from model.embeddings import (
    EMBEDDINGS,
    FourierEmbedding,
    HashedEmbedding,
    HashedNoTableEmbedding,
    build_embedding,
    embedding_flops,
    embedding_parameter_count,
    universal_hash,
)

torch.set_num_threads(1)
V = 30522  # BERT's vocabulary size: the collisions of the reference normalisation need V > 127


def paper_features(p: int, vocab_size: int, dim: int) -> list[float]:
    """T(p) from the paper: x = 2p/(V-1) - 1; T_i = sin((floor(i/2)+1)*pi*x) for even i, cos for odd i."""
    x = 2 * p / (vocab_size - 1) - 1
    return [(math.sin if i % 2 == 0 else math.cos)((i // 2 + 1) * math.pi * x) for i in range(dim)]


@pytest.mark.parametrize("p", [0, 1, 127, 4096, V // 2, V - 2, V - 1])
def test_fourier_features_equal_the_papers_equation(p):
    emb = FourierEmbedding(V, 16)
    got = emb.features(torch.tensor([p]))[0]
    assert got.dtype == torch.float32 and got.shape == (16,)
    torch.testing.assert_close(got, torch.tensor(paper_features(p, V, 16)), atol=1e-6, rtol=0)


def test_fourier_endpoints_span_minus_one_to_one():
    # x(0) = -1 and x(V-1) = +1: sin(k*pi*x) = 0 and cos(k*pi*x) = (-1)^k at both ends, so with the
    # paper's integer multiples of pi the first and the last id ([PAD] and BERT's last token) share T(p)
    emb = FourierEmbedding(V, 8)
    t = emb.features(torch.tensor([0, V - 1]))
    expected = torch.tensor([[0.0, -1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 1.0]] * 2)
    torch.testing.assert_close(t, expected, atol=1e-6, rtol=0)


def test_pete_output_is_mlp_of_features_plus_features():
    torch.manual_seed(0)
    emb = build_embedding("fourier", V, 16, mlp_hidden=24)
    ids = torch.tensor([[0, 5, 5, 300], [V - 1, 2, 0, 0]])
    t = emb.features(ids)
    expected = emb.mlp(t) + t
    out = emb(ids)
    assert out.shape == (2, 4, 16) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    # the MLP is not the identity/zero map: E differs from T
    assert (out - t).abs().max() > 1e-3


def test_reference_normalisation_collides_at_period_127_but_the_papers_does_not():
    ids = torch.tensor([3, 3 + 127, 1000, 1000 + 127, 1000 + 5 * 127])
    paper = build_embedding("fourier", V, 32).features(ids)
    ref = build_embedding("fourier_ref", V, 32).features(ids)
    # reference code: x = 2p/127 - 1, so p -> p + 127 shifts every angle by a multiple of 2*pi
    torch.testing.assert_close(ref[0], ref[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(ref[2], ref[3], atol=1e-5, rtol=0)
    torch.testing.assert_close(ref[2], ref[4], atol=1e-5, rtol=0)
    # the paper's x = 2p/(V-1) - 1 keeps them apart
    assert (paper[0] - paper[1]).abs().max() > 0.1
    assert (paper[2] - paper[3]).abs().max() > 0.1
    # and the whole modules (MLP + residual) inherit the collision
    torch.manual_seed(0)
    ref_emb = build_embedding("fourier_ref", V, 32)
    out = ref_emb(ids.unsqueeze(0))[0]
    torch.testing.assert_close(out[0], out[1], atol=1e-5, rtol=0)


def test_geometric_ladder_gives_every_id_distinct_features_and_neighbours_differ():
    emb = build_embedding("fourier_geo", V, 64)
    t = emb.features(torch.arange(V))  # (V, d)
    neighbour_gap = (t[1:] - t[:-1]).norm(dim=-1)
    assert neighbour_gap.min() > 0.5  # the k=0 pair alone moves by |e^{i}-1| ~ 0.96 per step
    assert torch.unique(t, dim=0).shape[0] == V
    # the geometric ladder's angle_k = p * base^(-2k/d): check one id by hand
    p, d = 777, 64
    manual = [(math.sin if i % 2 == 0 else math.cos)(p * 10000.0 ** (-2 * (i // 2) / d)) for i in range(d)]
    torch.testing.assert_close(t[p], torch.tensor(manual), atol=1e-6, rtol=0)


def test_paper_ladder_gives_neighbouring_ids_nearly_equal_features():
    # what motivates the geometric ladder: with x = 2p/(V-1) - 1 neighbours differ by O(d/V)
    t = build_embedding("fourier", V, 64).features(torch.arange(1000, 1010))
    assert (t[1:] - t[:-1]).norm(dim=-1).max() < 0.05


@pytest.mark.parametrize("kind", ["fourier", "fourier_ref", "fourier_geo", "fourier_hash"])
def test_materialized_table_equals_computed(kind):
    torch.manual_seed(0)
    emb = build_embedding(kind, 5000, 16, mlp_hidden=32).eval()
    ids = torch.randint(0, 5000, (3, 7))
    with torch.no_grad():
        computed = emb(ids)
        emb.materialize()
        fourier = emb.fourier if kind == "fourier_hash" else emb
        assert fourier.table.shape == (5000, 16)
        table = emb(ids)
    torch.testing.assert_close(table, computed, atol=1e-6, rtol=1e-6)
    # with gradients enabled (training) the table is bypassed and gradients reach the MLP
    out = emb(ids)
    assert out.requires_grad
    out.sum().backward()
    assert fourier.mlp[0].weight.grad is not None and fourier.mlp[0].weight.grad.abs().sum() > 0
    emb.dematerialize()
    assert fourier.table is None


# (kind, options, independent closed form of the parameter count with V, d)
KINDS = [
    ("fourier", {"mlp_hidden": 24}, lambda V, d: 2 * d * 24 + 24 + d),
    ("fourier_ref", {"mlp_hidden": 24}, lambda V, d: 2 * d * 24 + 24 + d),
    ("fourier_geo", {}, lambda V, d: 2 * d * 256 + 256 + d),
    ("fourier_hash", {"mlp_hidden": 24, "buckets": 50}, lambda V, d: 2 * d * 24 + 24 + d + 50 * d),
    ("learned", {}, lambda V, d: V * d),
    ("factorized", {"factor_dim": 8}, lambda V, d: V * 8 + 8 * d),
    ("hashed", {"buckets": 64, "num_hashes": 3}, lambda V, d: 64 * d),
    ("hashed_notable", {"num_bits": 20}, lambda V, d: 20 * d + d),
]


def test_every_registered_kind_is_covered():
    assert {k for k, _, _ in KINDS} == set(EMBEDDINGS)


@pytest.mark.parametrize("kind,options,formula", KINDS, ids=[k for k, _, _ in KINDS])
def test_parameter_count_shape_and_dtype(kind, options, formula):
    vocab, d = 1000, 16
    emb = build_embedding(kind, vocab, d, **options)
    actual = sum(p.numel() for p in emb.parameters())
    assert actual == formula(vocab, d)
    assert embedding_parameter_count(kind, vocab, d, **options) == actual
    ids = torch.tensor([[0, 1, 2, 500], [7, 7, 0, 0], [999, 3, 998, 1]])
    out = emb(ids)
    assert out.shape == (3, 4, d) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # equal ids give equal vectors, neighbouring ids different ones 
    torch.testing.assert_close(out[1, 0], out[1, 1])
    assert (out[0, 0] - out[0, 1]).abs().max() > 1e-6


def test_registry_rejects_unknown_kind_and_option():
    with pytest.raises(ValueError):
        build_embedding("nope", 10, 4)
    with pytest.raises(ValueError):
        embedding_parameter_count("nope", 10, 4)
    with pytest.raises(TypeError):
        build_embedding("learned", 10, 4, mlp_hidden=3)
    with pytest.raises(TypeError, match="ladder"):  # an option the registry name fixes
        build_embedding("fourier_geo", 10, 4, ladder="linear")
    with pytest.raises(ValueError):
        embedding_flops("nope", 4, 10, 10, False)
    with pytest.raises(ValueError):
        FourierEmbedding(10, 5)  # odd width


def test_universal_hash_range_and_determinism():
    ids = torch.arange(V)
    h1, h2 = HashedEmbedding(V, 4, buckets=97, num_hashes=3), HashedEmbedding(V, 4, buckets=97, num_hashes=3)
    b = universal_hash(ids, h1.a, h1.b, 97)
    assert b.shape == (V, 3) and b.min() >= 0 and b.max() < 97
    assert torch.equal(b, universal_hash(ids, h2.a, h2.b, 97))  # seeded: a pure function of the config


# Regression: hash coefficients drawn from [1, 2^20) left a*p + b < P for small ids, so "mod P" did
# nothing and h(p) was affine in p (with B = 2 a function of p's parity). Drawing a in [1, P) and
# b in [0, P) makes all 30522 ids distinct in both kinds.
def test_hash_signatures_distinguish_frequent_ids():
    emb = HashedNoTableEmbedding(V, 8, num_bits=128)
    bits = universal_hash(torch.arange(2048), emb.a, emb.b, 2)
    assert torch.unique(bits, dim=0).shape[0] == 2048


def test_hashed_buckets_distinguish_almost_all_ids():
    emb = HashedEmbedding(V, 8)  # defaults: 2048 buckets, 2 hashes -> 4M bucket pairs for 30522 ids
    pairs = universal_hash(torch.arange(V), emb.a, emb.b, emb.buckets)
    assert torch.unique(pairs, dim=0).shape[0] > 0.99 * V


@pytest.mark.parametrize("kind,options", [(k, o) for k, o, _ in KINDS], ids=[k for k, _, _ in KINDS])
def test_each_kind_counts_the_flops_torch_counts(kind, options):
    """Each kind's own FLOP formula (what the benchmarks report) equals torch's FLOP counter on a
    batch with repeated ids, computed per batch and, for kinds with a table, materialized."""
    from torch.utils.flop_counter import FlopCounterMode

    d = 16
    emb = build_embedding(kind, 1000, d, **options).eval()
    ids = torch.tensor([[0, 1, 2, 500, 7], [7, 7, 0, 0, 3]])
    tokens, unique = ids.numel(), len(torch.unique(ids))
    for materialized in (False, True):
        if materialized:
            if not hasattr(emb, "materialize"):
                continue
            emb.materialize()
        counter = FlopCounterMode(display=False)
        with torch.inference_mode(), counter:
            emb(ids)
        assert counter.get_total_flops() == embedding_flops(kind, d, tokens, unique, materialized, **options), materialized
