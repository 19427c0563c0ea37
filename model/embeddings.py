"""Token embeddings: token ids (B, T) int64 -> vectors (B, T, d) float32.

Every kind shares one interface, so the encoder above stays the same and the kinds stay
comparable (see bench/embedding_study.py):

- ``fourier``     PETE as the paper writes it (Ndubuaku & Talhi 2025, arXiv 2505.02266, Sec. 3):
                  x = 2p/(V-1) - 1, T_i(p) = sin((floor(i/2)+1)*pi*x) for even i, cos(...) for odd i,
                  E(p) = MLP(T(p)) + T(p).
- ``fourier_ref`` the same, normalised as the reference code does (x = 2p/127 - 1), so ids p and
                  p+127 collide; kept only to show what the published numbers measured.
- ``fourier_geo`` PETE with a geometric frequency ladder applied to the raw token id
                  (angle_k = p * base^(-2k/d), as sinusoidal position encodings do), so every one of
                  the V ids gets a distinct input to the MLP.
- ``fourier_hash`` the geometric PETE plus a small hashed table (discrete identity + smooth
                  Fourier features).
- ``learned``     the reference: an ``nn.Embedding(V, d)`` table.
- ``factorized``  ALBERT (Lan et al. 2020, Sec. 3.1): a V x E table then an E x d projection.
- ``hashed``      HashFormers-style (Xue & Aletras 2022): k universal hash functions map each id
                  into B << V shared buckets; the k bucket vectors are summed.
- ``hashed_notable`` HashFormers-style with no table at all: each id's k-function hash signature,
                  as +-1 bits, is projected by one linear layer.

``build_embedding(kind, vocab_size, dim, **options)`` is the registry; ``embedding_parameter_count``
gives each kind's parameter count in closed form (tested against the modules).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F

# A Mersenne prime larger than any vocabulary: the modulus of the universal hash family.
_HASH_PRIME = 2_147_483_647


def _universal_hash_coefficients(num_hashes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Coefficients (a, b) of h_j(p) = ((a_j * p + b_j) mod P) mod B (Carter & Wegman 1979).

    Returns two int64 tensors of shape (num_hashes,), drawn from a seeded generator so the
    hashing is a pure function of the config.
    """
    gen = torch.Generator().manual_seed(seed)
    # a, b over the whole field [1, P) x [0, P): small coefficients leave a*p+b < P for small ids,
    # so "mod P" does nothing and the hash degenerates (e.g. to the id's parity for 2 buckets).
    # a*p+b < 2**31 * 2**31 fits in int64.
    a = torch.randint(1, _HASH_PRIME, (num_hashes,), generator=gen, dtype=torch.int64)
    b = torch.randint(0, _HASH_PRIME, (num_hashes,), generator=gen, dtype=torch.int64)
    return a, b


def universal_hash(ids: torch.Tensor, a: torch.Tensor, b: torch.Tensor, buckets: int) -> torch.Tensor:
    """Hash token ids with k universal hash functions.

    Args:
        ids: (...,) int64 token ids, 0 <= id < 2**31.
        a, b: (k,) int64 coefficients from ``_universal_hash_coefficients``.
        buckets: number of buckets B.
    Returns:
        (..., k) int64 bucket indices in [0, B).
    """
    return ((ids.unsqueeze(-1) * a + b) % _HASH_PRIME) % buckets


class FourierEmbedding(nn.Module):
    """PETE: Fourier features of the token id refined by an MLP with a residual.

    E(p) = MLP(T(p)) + T(p)  (arXiv 2505.02266, Eq. 1-3), MLP = Linear(d, h) -> GELU -> Linear(h, d).

    Args:
        vocab_size: V, number of token ids.
        dim: d, output width (must be even).
        mlp_hidden: h, width of the MLP's hidden layer.
        ladder: ``"linear"`` for the paper's frequencies (floor(i/2)+1)*pi on x in [-1, 1];
            ``"geometric"`` for angle_k = p * base^(-2k/d) on the raw id p.
        norm_divisor: the paper uses V-1 (None means V-1); the reference code uses 127.
        base: the geometric ladder's base.

    Input (B, T) int64 ids in [0, V); output (B, T, d) float32.
    ``materialize()`` computes E for all V ids once into a (V, d) table for fast inference.
    """

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        mlp_hidden: int = 256,
        ladder: str = "linear",
        norm_divisor: float | None = None,
        base: float = 10000.0,
    ) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"dim must be even, got {dim}")
        if ladder not in ("linear", "geometric"):
            raise ValueError(f"unknown ladder {ladder!r}")
        self.vocab_size, self.dim, self.ladder = vocab_size, dim, ladder
        self.norm_divisor = float(vocab_size - 1 if norm_divisor is None else norm_divisor)
        k = torch.arange(dim // 2, dtype=torch.float64)
        if ladder == "linear":
            freqs = (k + 1) * math.pi  # (floor(i/2)+1) * pi, one per sin/cos pair
        else:
            freqs = base ** (-2.0 * k / dim)
        self.register_buffer("freqs", freqs, persistent=False)  # (d/2,) float64
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_hidden), nn.GELU(), nn.Linear(mlp_hidden, dim))
        self.register_buffer("table", None, persistent=False)

    def features(self, ids: torch.Tensor) -> torch.Tensor:
        """T(p): (…,) int64 ids -> (…, d) float32 Fourier features, even i sin, odd i cos."""
        p = ids.to(torch.float64)
        x = 2.0 * p / self.norm_divisor - 1.0 if self.ladder == "linear" else p
        angles = x.unsqueeze(-1) * self.freqs  # (…, d/2), float64 keeps large ids exact
        feats = torch.stack((torch.sin(angles), torch.cos(angles)), dim=-1)  # (…, d/2, 2)
        return feats.flatten(-2).to(torch.float32)

    def compute(self, ids: torch.Tensor) -> torch.Tensor:
        """E(p) = MLP(T(p)) + T(p) computed from scratch: (B, T) int64 -> (B, T, d) float32.

        The MLP runs once per distinct id in the batch (a batch repeats ids: padding, "a", ".").
        """
        uniq, inverse = torch.unique(ids, return_inverse=True)
        t = self.features(uniq)
        return F.embedding(inverse, self.mlp(t) + t)

    @torch.no_grad()
    def materialize(self, chunk: int = 2048) -> None:
        """Precompute E for every id into a (V, d) float32 buffer (V*d*4 bytes); forward then
        indexes it. Ids are computed ``chunk`` at a time so the MLP's intermediates stay small
        (the allocator keeps freed memory: one pass over all V ids costs ~190 MB of RSS at d=256).
        Call after training; ``dematerialize()`` goes back to computing."""
        table = torch.empty(self.vocab_size, self.dim, device=self.freqs.device)
        for s in range(0, self.vocab_size, chunk):
            ids = torch.arange(s, min(s + chunk, self.vocab_size), device=self.freqs.device)
            table[s : s + len(ids)] = self.compute(ids)
        self.table = table

    def dematerialize(self) -> None:
        """Drop the precomputed table (e.g. before training again)."""
        self.table = None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.table is not None and not torch.is_grad_enabled():
            return F.embedding(ids, self.table)
        return self.compute(ids)


class HashedEmbedding(nn.Module):
    """HashFormers-style hashed embedding: k hash functions into a shared (B, d) table, summed.

    Many ids share buckets; the combination of k buckets keeps most ids distinguishable.
    Input (B, T) int64; output (B, T, d) float32. Parameters: B*d.
    """

    def __init__(self, vocab_size: int, dim: int, buckets: int = 2048, num_hashes: int = 2, seed: int = 0) -> None:
        super().__init__()
        self.vocab_size, self.buckets = vocab_size, buckets
        a, b = _universal_hash_coefficients(num_hashes, seed)
        self.register_buffer("a", a, persistent=False)
        self.register_buffer("b", b, persistent=False)
        self.weight = nn.Parameter(torch.randn(buckets, dim) * 0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(universal_hash(ids, self.a, self.b, self.buckets), self.weight).sum(-2)


class HashSignatureEmbedding(nn.Module):
    """HashFormers-style embedding with no table: an id's hash signature, projected.

    Each of ``num_bits`` universal hash functions maps the id to one bit (+1 or -1); a linear
    layer maps the (num_bits,) signature to d. Input (B, T) int64; output (B, T, d) float32.
    Parameters: num_bits*d + d.
    """

    def __init__(self, vocab_size: int, dim: int, num_bits: int = 128, seed: int = 0) -> None:
        super().__init__()
        a, b = _universal_hash_coefficients(num_bits, seed)
        self.register_buffer("a", a, persistent=False)
        self.register_buffer("b", b, persistent=False)
        self.proj = nn.Linear(num_bits, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        bits = universal_hash(ids, self.a, self.b, 2).to(torch.float32) * 2.0 - 1.0
        return self.proj(bits)


class HybridEmbedding(nn.Module):
    """Geometric PETE plus a small hashed table: E(p) = PETE(p) + Hashed(p).

    The Fourier part gives smooth features, the hashed part discrete identity.
    Input (B, T) int64; output (B, T, d) float32.
    """

    def __init__(self, vocab_size: int, dim: int, mlp_hidden: int = 256, buckets: int = 1024,
                 num_hashes: int = 2, seed: int = 0) -> None:
        super().__init__()
        self.fourier = FourierEmbedding(vocab_size, dim, mlp_hidden, ladder="geometric")
        self.hashed = HashedEmbedding(vocab_size, dim, buckets, num_hashes, seed)

    def materialize(self) -> None:
        self.fourier.materialize()

    def dematerialize(self) -> None:
        self.fourier.dematerialize()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fourier(ids) + self.hashed(ids)


class FactorizedEmbedding(nn.Module):
    """ALBERT's factorized embedding (Lan et al. 2020): V x E table, then E x d projection.

    Input (B, T) int64; output (B, T, d) float32. Parameters: V*E + E*d.
    """

    def __init__(self, vocab_size: int, dim: int, factor_dim: int = 64) -> None:
        super().__init__()
        self.table = nn.Embedding(vocab_size, factor_dim)
        self.proj = nn.Linear(factor_dim, dim, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.proj(self.table(ids))


class LearnedEmbedding(nn.Embedding):
    """The reference: a learned V x d table. Input (B, T) int64; output (B, T, d) float32."""

    def __init__(self, vocab_size: int, dim: int) -> None:
        super().__init__(vocab_size, dim)
        nn.init.normal_(self.weight, std=0.02)


EMBEDDINGS: dict[str, Callable[..., nn.Module]] = {
    "fourier": lambda V, d, mlp_hidden=256: FourierEmbedding(V, d, mlp_hidden, "linear"),
    "fourier_ref": lambda V, d, mlp_hidden=256: FourierEmbedding(V, d, mlp_hidden, "linear", norm_divisor=127),
    "fourier_geo": lambda V, d, mlp_hidden=256: FourierEmbedding(V, d, mlp_hidden, "geometric"),
    "fourier_hash": lambda V, d, mlp_hidden=256, buckets=1024, num_hashes=2: HybridEmbedding(V, d, mlp_hidden, buckets, num_hashes),
    "learned": lambda V, d: LearnedEmbedding(V, d),
    "factorized": lambda V, d, factor_dim=64: FactorizedEmbedding(V, d, factor_dim),
    "hashed": lambda V, d, buckets=2048, num_hashes=2: HashedEmbedding(V, d, buckets, num_hashes),
    "hashed_notable": lambda V, d, num_bits=128: HashSignatureEmbedding(V, d, num_bits),
}


def build_embedding(kind: str, vocab_size: int, dim: int, **options) -> nn.Module:
    """Build an embedding module by registry name.

    Raises:
        ValueError: unknown ``kind``.
        TypeError: an option that the kind does not take.
    """
    if kind not in EMBEDDINGS:
        raise ValueError(f"unknown embedding kind {kind!r}; choose from {sorted(EMBEDDINGS)}")
    return EMBEDDINGS[kind](vocab_size, dim, **options)


def embedding_parameter_count(kind: str, vocab_size: int, dim: int, **options) -> int:
    """Closed-form parameter count of an embedding kind (the formulas the tests check)."""
    h = options.get("mlp_hidden", 256)
    pete = dim * h + h + h * dim + dim
    counts = {
        "fourier": pete,
        "fourier_ref": pete,
        "fourier_geo": pete,
        "fourier_hash": pete + options.get("buckets", 1024) * dim,
        "learned": vocab_size * dim,
        "factorized": vocab_size * options.get("factor_dim", 64) + options.get("factor_dim", 64) * dim,
        "hashed": options.get("buckets", 2048) * dim,
        "hashed_notable": options.get("num_bits", 128) * dim + dim,
    }
    if kind not in counts:
        raise ValueError(f"unknown embedding kind {kind!r}")
    return counts[kind]
