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

``EMBEDDINGS`` is the registry: each name maps to its class, the options the name fixes, and a
one-line description. Each class owns its option defaults (its ``__init__``), its parameter count in
closed form (``parameter_count``, tested against the modules) and its FLOPs (``flops``), so a new kind
is one class and one registry line: ``build_embedding``, ``embedding_parameter_count``,
``embedding_flops``, the embedding study and the FLOP counting of the benchmarks all read the registry.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any

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

    @staticmethod
    def parameter_count(vocab_size: int, dim: int, *, mlp_hidden: int, **_: Any) -> int:
        """The MLP's weights and biases: d*h + h + h*d + d (no table)."""
        return dim * mlp_hidden + mlp_hidden + mlp_hidden * dim + dim

    @staticmethod
    def flops(dim: int, tokens: int, unique_ids: int, materialized: bool, *, mlp_hidden: int, **_: Any) -> int:
        """0 with a materialized table (a lookup); else the MLP once per distinct id: 4*d*h*U."""
        return 0 if materialized else 4 * dim * mlp_hidden * unique_ids

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

    @staticmethod
    def parameter_count(vocab_size: int, dim: int, *, buckets: int, **_: Any) -> int:
        """The shared table: B*d."""
        return buckets * dim

    @staticmethod
    def flops(dim: int, tokens: int, unique_ids: int, materialized: bool, **_: Any) -> int:
        """Lookups and a sum of k vectors per token: 0 multiply-adds."""
        return 0

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(universal_hash(ids, self.a, self.b, self.buckets), self.weight).sum(-2)


class HashedNoTableEmbedding(nn.Module):
    """HashFormers-style embedding with no table (registry name ``hashed_notable``): an id's hash
    signature, projected.

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

    @staticmethod
    def parameter_count(vocab_size: int, dim: int, *, num_bits: int, **_: Any) -> int:
        """The projection: num_bits*d + d."""
        return num_bits * dim + dim

    @staticmethod
    def flops(dim: int, tokens: int, unique_ids: int, materialized: bool, *, num_bits: int, **_: Any) -> int:
        """The projection of every token's signature: 2*num_bits*d per token."""
        return 2 * num_bits * dim * tokens

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        bits = universal_hash(ids, self.a, self.b, 2).to(torch.float32) * 2.0 - 1.0
        return self.proj(bits)


class FourierHashEmbedding(nn.Module):
    """Geometric PETE plus a small hashed table (registry name ``fourier_hash``):
    E(p) = PETE(p) + Hashed(p).

    The Fourier part gives smooth features, the hashed part discrete identity.
    Input (B, T) int64; output (B, T, d) float32.
    """

    def __init__(self, vocab_size: int, dim: int, mlp_hidden: int = 256, buckets: int = 1024,
                 num_hashes: int = 2, seed: int = 0) -> None:
        super().__init__()
        self.fourier = FourierEmbedding(vocab_size, dim, mlp_hidden, ladder="geometric")
        self.hashed = HashedEmbedding(vocab_size, dim, buckets, num_hashes, seed)

    @staticmethod
    def parameter_count(vocab_size: int, dim: int, *, mlp_hidden: int, buckets: int, **_: Any) -> int:
        """The PETE MLP plus the hashed table: (d*h + h + h*d + d) + B*d."""
        return FourierEmbedding.parameter_count(vocab_size, dim, mlp_hidden=mlp_hidden) + buckets * dim

    @staticmethod
    def flops(dim: int, tokens: int, unique_ids: int, materialized: bool, *, mlp_hidden: int, **_: Any) -> int:
        """The PETE part's (``FourierEmbedding.flops``); the hashed part is lookups."""
        return FourierEmbedding.flops(dim, tokens, unique_ids, materialized, mlp_hidden=mlp_hidden)

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

    @staticmethod
    def parameter_count(vocab_size: int, dim: int, *, factor_dim: int, **_: Any) -> int:
        """The table and the projection: V*E + E*d."""
        return vocab_size * factor_dim + factor_dim * dim

    @staticmethod
    def flops(dim: int, tokens: int, unique_ids: int, materialized: bool, *, factor_dim: int, **_: Any) -> int:
        """The projection of every token: 2*E*d per token."""
        return 2 * factor_dim * dim * tokens

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.proj(self.table(ids))


class LearnedEmbedding(nn.Embedding):
    """The reference: a learned V x d table. Input (B, T) int64; output (B, T, d) float32."""

    def __init__(self, vocab_size: int, dim: int) -> None:
        super().__init__(vocab_size, dim)
        nn.init.normal_(self.weight, std=0.02)

    @staticmethod
    def parameter_count(vocab_size: int, dim: int, **_: Any) -> int:
        """The table: V*d."""
        return vocab_size * dim

    @staticmethod
    def flops(dim: int, tokens: int, unique_ids: int, materialized: bool, **_: Any) -> int:
        """A lookup: 0."""
        return 0


@dataclass(frozen=True)
class EmbeddingKind:
    """A registry entry: the class, the constructor options the name fixes, a one-line description."""

    cls: type[nn.Module]
    description: str
    fixed: dict[str, Any] = field(default_factory=dict)

    def options(self, options: dict[str, Any]) -> dict[str, Any]:
        """Every constructor option of this kind: the given ones over the class defaults, plus the
        fixed ones. Raises TypeError for an option the kind does not take (or one its name fixes)."""
        params = inspect.signature(self.cls.__init__).parameters
        free = [n for n in params if n not in ("self", "vocab_size", "dim") and n not in self.fixed]
        unknown = sorted(set(options) - set(free))
        if unknown:
            raise TypeError(f"{self.cls.__name__} takes no option {unknown}; options: {free}")
        defaults = {n: params[n].default for n in free}
        return {**defaults, **options, **self.fixed}


EMBEDDINGS: dict[str, EmbeddingKind] = {
    "fourier": EmbeddingKind(FourierEmbedding, "PETE as the paper writes it (x = 2p/(V-1) - 1, linear frequency ladder)",
                             {"ladder": "linear", "norm_divisor": None}),
    "fourier_ref": EmbeddingKind(FourierEmbedding, "PETE as the reference code computes it (x = 2p/127 - 1: ids p, "
                                                   "p+127 collide)", {"ladder": "linear", "norm_divisor": 127}),
    "fourier_geo": EmbeddingKind(FourierEmbedding, "PETE, geometric frequency ladder on the raw id (ours)",
                                 {"ladder": "geometric", "norm_divisor": None}),
    "fourier_hash": EmbeddingKind(FourierHashEmbedding, "geometric PETE + a hashed table (ours; 1024 buckets by default)"),
    "learned": EmbeddingKind(LearnedEmbedding, "a learned V x d table (the reference)"),
    "factorized": EmbeddingKind(FactorizedEmbedding, "ALBERT factorized table (V x 64, then 64 x d by default)"),
    "hashed": EmbeddingKind(HashedEmbedding, "HashFormers-style: 2 hashes into 2048 shared buckets, summed (default)"),
    "hashed_notable": EmbeddingKind(HashedNoTableEmbedding, "HashFormers-style, no table: 128 hash bits projected "
                                                            "to d (default)"),
}


def _kind(kind: str) -> EmbeddingKind:
    if kind not in EMBEDDINGS:
        raise ValueError(f"unknown embedding kind {kind!r}; choose from {sorted(EMBEDDINGS)}")
    return EMBEDDINGS[kind]


def build_embedding(kind: str, vocab_size: int, dim: int, **options) -> nn.Module:
    """Build an embedding module by registry name (``EMBEDDINGS``).

    Raises:
        ValueError: unknown ``kind``.
        TypeError: an option that the kind does not take.
    """
    k = _kind(kind)
    return k.cls(vocab_size, dim, **k.options(options))


def embedding_parameter_count(kind: str, vocab_size: int, dim: int, **options) -> int:
    """Closed-form parameter count of an embedding kind (its class's ``parameter_count``).

    Raises:
        ValueError: unknown ``kind``. TypeError: an option that the kind does not take.
    """
    k = _kind(kind)
    return k.cls.parameter_count(vocab_size, dim, **k.options(options))


def embedding_flops(kind: str, dim: int, tokens: int, unique_ids: int, materialized: bool, **options) -> int:
    """FLOPs (multiply-add = 2) of embedding a batch of ``tokens`` tokens with ``unique_ids`` distinct ids
    (its class's ``flops``); a table lookup counts 0.

    Raises:
        ValueError: unknown ``kind``. TypeError: an option that the kind does not take.
    """
    k = _kind(kind)
    return k.cls.flops(dim, tokens, unique_ids, materialized, **k.options(options))
