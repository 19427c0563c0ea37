"""The sentence encoder: token ids -> embedding (PETE or a baseline) -> pre-norm transformer ->
masked mean pooling -> sentence vector, plus a 3-way NLI head.

Read top to bottom in the order data flows: config, rotary position embedding, attention,
feed-forward, block, encoder, pooling, heads, and ``SentenceEncoder`` (tokenizer + model +
save/load + the inference API the service calls).

Blocks are pre-norm (RMSNorm, Zhang & Sennrich 2019), attention uses RoPE (Su et al. 2021) and
``scaled_dot_product_attention`` with a key padding mask, the feed-forward is GeGLU (Shazeer 2020).
No dropout. Padding never reaches the pooled vector: the per-token ops (embedding, norms,
projections, feed-forward) run on the real tokens only (``Packing``), keys at padded positions are
masked out of attention, and pooling averages real tokens only, so extra padding leaves the
embedding unchanged and costs no FLOPs outside attention.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
from torch import nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from model.embeddings import build_embedding
from model.quantize import apply_quantization, is_quantized, weight_tensors
from model.config import CHECKPOINT_FILES, CONFIG_NAME, NLI_LABELS, TOKENIZER_NAME, WEIGHTS_NAME, EncoderConfig  # noqa: F401
from model.tokenizer import encode_texts

class TokenBatch(NamedTuple):
    """A tokenized, right-padded batch.

    input_ids (B, T) int64, attention_mask (B, T) bool, truncated: one bool per row (the text was
    longer than the token limit and was cut), lengths: real tokens per row.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    truncated: list[bool]
    lengths: list[int]


def tokenize_batch(tokenizer: Tokenizer, texts: Sequence[str], pair: Sequence[str] | None = None, *,
                   max_tokens: int) -> TokenBatch:
    """``model.tokenizer.encode_texts`` as torch tensors (the arrays are shared, not copied)."""
    enc = encode_texts(tokenizer, texts, pair, max_tokens=max_tokens)
    return TokenBatch(torch.from_numpy(enc.input_ids), torch.from_numpy(enc.attention_mask), enc.truncated,
                      enc.lengths)


class Rotary(nn.Module):
    """Rotary position embedding (RoPE, Su et al. 2021, Eq. 34) on (..., T, head_dim) tensors.

    Dimension pairs (2i, 2i+1) at position t are rotated by the angle t * base^(-2i/head_dim)
    (Su et al. 2021, Eq. 12, written with real cosines and sines, which ONNX can express).
    """

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.arange(x.shape[-2], device=x.device, dtype=torch.float32)
        angles = torch.outer(t, self.inv_freq)  # (T, head_dim/2)
        cos, sin = angles.cos(), angles.sin()
        pairs = x.float().unflatten(-1, (-1, 2))  # (..., T, head_dim/2, 2)
        even, odd = pairs[..., 0], pairs[..., 1]
        return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2).to(x.dtype)


class Packing(NamedTuple):
    """Where the N real tokens of a right-padded (B, T) batch sit, for the unpadded ("packed") forward.

    Every op of a block except attention is per token, so the encoder runs them on the (N, d)
    real tokens only and never spends FLOPs on padding (a batch of mixed-length sentences is ~60%
    padding: bench/results/serving.md). Attention scatters q, k, v back to (B, T) for
    ``scaled_dot_product_attention`` and gathers its output again.

    mask (B, T) bool (True = real token); index (N,) int64: flat positions in the row-major B*T
    grid; row (N,) int64: the row of each token; counts (B, 1) float32: real tokens per row.
    """

    mask: torch.Tensor
    index: torch.Tensor
    row: torch.Tensor
    counts: torch.Tensor

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> "Packing":
        """Build from an attention mask (B, T) bool."""
        T = mask.shape[1]
        index = mask.reshape(-1).nonzero().squeeze(1)
        return cls(mask, index, torch.div(index, T, rounding_mode="floor"), mask.sum(1, keepdim=True).float())

    @classmethod
    def padded(cls, mask: torch.Tensor) -> "Packing":
        """Every position of a (B, T) batch, padding included, computed; ``mask`` still keeps padded
        keys out of attention. The per-token ops then run on the whole grid (more FLOPs, the same
        results at the real tokens) with no data-dependent shapes: the form ONNX export needs."""
        B, T = mask.shape
        index = torch.arange(B * T, device=mask.device)
        return cls(mask, index, torch.div(index, T, rounding_mode="floor"), mask.sum(1, keepdim=True).float())

    @property
    def dense(self) -> bool:
        """True when there is no padding (packed and padded layouts coincide)."""
        return self.index.numel() == self.mask.numel()

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """(N, k) packed rows -> (B, T, k), zeros at padded positions."""
        B, T = self.mask.shape
        if self.dense:
            return x.view(B, T, -1)
        return x.new_zeros(B * T, x.shape[-1]).index_copy(0, self.index, x).view(B, T, -1)

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, k) -> (N, k) rows at real tokens."""
        flat = x.reshape(-1, x.shape[-1])
        return flat if self.dense else flat.index_select(0, self.index)


class SelfAttention(nn.Module):
    """Multi-head self-attention with RoPE and a key padding mask.

    Input (N, d) float32 packed tokens and their ``Packing``; output (N, d).
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        if cfg.dim % cfg.n_heads:
            raise ValueError("dim must be divisible by n_heads")
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.out = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.rotary = Rotary(cfg.dim // cfg.n_heads, cfg.rope_base)

    def forward(self, x: torch.Tensor, packing: Packing) -> torch.Tensor:
        (B, T), d = packing.mask.shape, x.shape[-1]
        qkv = packing.unpack(self.qkv(x))  # (B, T, 3d)
        qkv = qkv.view(B, T, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)  # (3, B, H, T, hd)
        (q, k), v = self.rotary(qkv[:2]), qkv[2]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=packing.mask[:, None, None, :])
        return self.out(packing.pack(y.transpose(1, 2).reshape(B, T, d)))


class GeGLU(nn.Module):
    """Feed-forward GeGLU(x) = W_o (GELU(W_a x) * W_b x) (Shazeer 2020, Eq. 5): (..., d) -> (..., d)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.up = nn.Linear(cfg.dim, 2 * cfg.ffn_dim, bias=False)
        self.down = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.up(x).chunk(2, dim=-1)
        return self.down(F.gelu(a) * b)


class Block(nn.Module):
    """Pre-norm block: x + Attn(RMSNorm(x)), then + GeGLU(RMSNorm(x)); both outputs are kept.

    Input and output (N, d) float32 packed tokens (see ``Packing``)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.norm1 = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.attn = SelfAttention(cfg)
        self.norm2 = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.ffn = GeGLU(cfg)

    def forward(self, x: torch.Tensor, packing: Packing) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), packing)
        return x + self.ffn(self.norm2(x))


def mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over time: states (B, T, d) float32, mask (B, T) bool -> (B, d).

    Padding positions are excluded; a row with no valid position yields zeros.
    """
    m = mask.unsqueeze(-1).to(states.dtype)
    return (states * m).sum(1) / m.sum(1).clamp(min=1.0)


def mean_pool_packed(states: torch.Tensor, packing: Packing) -> torch.Tensor:
    """``mean_pool`` on packed token states (N, d) float32 -> (B, d); a row with no token yields zeros."""
    B = packing.mask.shape[0]
    sums = states.new_zeros(B, states.shape[-1]).index_add(0, packing.row, states)
    return sums / packing.counts.clamp(min=1.0)


class Encoder(nn.Module):
    """Token ids (B, T) int64 + attention mask (B, T) bool -> token states (B, T, d) float32.

    Computed unpadded (``forward_packed``): padded positions cost nothing and come out as zeros.
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.embedding = build_embedding(cfg.embedding, cfg.vocab_size, cfg.dim, **cfg.embedding_options)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states, packing = self.forward_packed(input_ids, attention_mask)
        return packing.unpack(states)

    def forward_padded(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token states (B, T, d) float32 computed on the whole padded grid (``Packing.padded``): the
        same values as ``forward`` at real tokens (to float rounding), other values at padding. For
        ONNX export; ``forward`` is faster."""
        packing = Packing.padded(attention_mask)
        x = self.embedding(input_ids.reshape(-1))  # (B*T, d)
        for block in self.blocks:
            x = block(x, packing)
        return self.norm(x).view(*input_ids.shape, -1)

    def forward_packed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, Packing]:
        """Token states of the real tokens only: (N, d) float32, N = attention_mask.sum(), in
        row-major order, and the ``Packing`` that locates them."""
        packing = Packing.from_mask(attention_mask)
        x = self.embedding(packing.pack(input_ids.unsqueeze(-1)).squeeze(-1))  # (N, d)
        for block in self.blocks:
            x = block(x, packing)
        return self.norm(x), packing


class PairHead(nn.Module):
    """NLI head on two sentence vectors: [u, v, |u-v|, u*v] (B, 4d) -> MLP -> logits (B, 3)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(4 * dim, hidden), nn.GELU(), nn.Linear(hidden, len(NLI_LABELS)))

    def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat((u, v, (u - v).abs(), u * v), dim=-1))


class CrossHead(nn.Module):
    """NLI head on the pooled joint encoding of premise [SEP] hypothesis: (B, d) -> logits (B, 3)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, len(NLI_LABELS)))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.mlp(pooled)


class AlignHead(nn.Module):
    """Token-alignment NLI head on the two sentences' token states (decomposable attention, Parikh et
    al. 2016, arXiv 1606.01933, with ESIM's enhanced comparison, Chen et al. 2017, arXiv 1609.06038).

    Inputs: premise states a (B, Ta, d) float32 with mask_a (B, Ta) bool, hypothesis states b
    (B, Tb, d) with mask_b (B, Tb) bool (the encoder's final token states, as /similarity computes
    them). Output: logits (B, 3) float32.

    1. Attend: e_ij = a_i . b_j / sqrt(d); beta_i = sum_j softmax_j(e_ij) b_j (the part of the
       hypothesis aligned to premise token i), alpha_j = sum_i softmax_i(e_ij) a_i; padded positions
       get no weight.
    2. Compare: v_a,i = G([a_i; beta_i; a_i - beta_i; a_i * beta_i]), v_b,j likewise with alpha_j;
       G: Linear(4d, h) -> GELU -> Linear(h, h) -> GELU, shared by both sides.
    3. Aggregate: masked mean and max over tokens of each side; classify
       [mean v_a; max v_a; mean v_b; max v_b] (4h) with Linear(4h, h) -> GELU -> Linear(h, 3).
    Padding-invariant (padding neither receives nor gives weight) and row-wise (a pair's logits do not
    depend on its batch-mates); not symmetric in premise and hypothesis. Parameters:
    4dh + 5h^2 + 6h + 3 (d = 256, h = 192: 382,083).

    Keeps PyTorch's default (Kaiming-uniform) initialisation: with the N(0, 0.02) init of the other
    heads, its four stacked layers pass almost no gradient and a toy negation task stalled at
    chance (tests/test_model_nli.py).
    """

    small_init = False

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.scale = dim ** -0.5
        self.compare = nn.Sequential(nn.Linear(4 * dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU())
        self.classify = nn.Sequential(nn.Linear(4 * hidden, hidden), nn.GELU(), nn.Linear(hidden, len(NLI_LABELS)))

    def forward(self, a: torch.Tensor, mask_a: torch.Tensor, b: torch.Tensor, mask_b: torch.Tensor) -> torch.Tensor:
        neg = torch.finfo(a.dtype).min
        e = torch.einsum("bid,bjd->bij", a, b) * self.scale  # (B, Ta, Tb)
        beta = e.masked_fill(~mask_b.unsqueeze(1), neg).softmax(dim=2) @ b  # (B, Ta, d)
        alpha = e.masked_fill(~mask_a.unsqueeze(2), neg).softmax(dim=1).transpose(1, 2) @ a  # (B, Tb, d)
        va = self.compare(torch.cat((a, beta, a - beta, a * beta), dim=-1))  # (B, Ta, h)
        vb = self.compare(torch.cat((b, alpha, b - alpha, b * alpha), dim=-1))  # (B, Tb, h)
        return self.classify(torch.cat((*_mean_max(va, mask_a), *_mean_max(vb, mask_b)), dim=-1))


def _mean_max(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked mean and max over time of x (B, T, h) with mask (B, T) bool -> two (B, h); zeros for a
    row without a valid position."""
    m = mask.unsqueeze(-1)
    mean = mean_pool(x, mask)
    mx = x.masked_fill(~m, torch.finfo(x.dtype).min).amax(dim=1)
    return mean, torch.where(m.any(dim=1), mx, torch.zeros_like(mx))


def pad_states(states: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad per-sentence token states, each (L_i, d) float32 -> (B, max L_i, d) with zeros at the
    padding, and the attention mask (B, max L_i) bool."""
    lengths = torch.tensor([len(s) for s in states])
    padded = nn.utils.rnn.pad_sequence(list(states), batch_first=True)
    return padded, torch.arange(padded.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)


NLI_HEADS = {"pair": PairHead, "align": AlignHead, "cross": CrossHead}


class SentenceEncoder(nn.Module):
    """Tokenizer + encoder + mean pooling + NLI head: what the service loads.

    Inference API (all under ``torch.inference_mode``):
        ``encode(texts) -> (N, d) float32`` sentence vectors (not normalised),
        ``similarity(a, b) -> (N,) float32`` cosine in [-1, 1],
        ``predict_nli(premises, hypotheses) -> (N, 3) float32`` probabilities in
        ``NLI_LABELS`` order (entailment, neutral, contradiction).
    Lower level (used by the batcher and training): ``tokenize``, ``embed``, ``nli_logits``.
    """

    def __init__(self, config: EncoderConfig, tokenizer: Tokenizer) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.encoder = Encoder(config)
        self.set_nli_head(config.nli_head, config.nli_hidden)

    def set_nli_head(self, kind: str, hidden: int | None = None) -> None:
        """Replace the NLI head by a freshly initialised one of ``kind`` (``NLI_HEADS``); the config
        follows. Raises ValueError for an unknown kind."""
        if kind not in NLI_HEADS:
            raise ValueError(f"unknown nli_head {kind!r}; choose one of {tuple(NLI_HEADS)}")
        self.config.nli_head, self.config.nli_hidden = kind, hidden or self.config.nli_hidden
        self.nli_head = NLI_HEADS[kind](self.config.dim, self.config.nli_hidden)
        if getattr(self.nli_head, "small_init", True):
            self.nli_head.apply(Encoder._init)

    @property
    def nli_joint(self) -> bool:
        """True when the NLI head reads premise and hypothesis encoded together (``"cross"``); the
        other heads read the two sentences encoded separately, as /similarity encodes them."""
        return self.config.nli_head == "cross"

    # ---- tokenization -------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str], pair: Sequence[str] | None = None,
                 max_tokens: int | None = None) -> TokenBatch:
        """Tokenize texts (or text pairs) and right-pad to the longest row (``tokenize_batch``).

        ``max_tokens`` (default and upper bound: ``config.max_len``) counts special tokens; longer
        inputs are truncated and flagged, never rejected.
        """
        limit = min(max_tokens or self.config.max_len, self.config.max_len)
        return tokenize_batch(self.tokenizer, texts, pair, max_tokens=limit)

    # ---- forward pieces -------------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Sentence vectors: ids (B, T) int64, mask (B, T) bool -> (B, d) float32 (mean pooled)."""
        return mean_pool_packed(*self.encoder.forward_packed(input_ids, attention_mask))

    def nli_logits_from(self, premises: TokenBatch, hypotheses: TokenBatch | None = None) -> torch.Tensor:
        """NLI logits (B, 3). Pair and align heads: two batches of single texts; cross head: one
        batch of joint pairs (``hypotheses`` None)."""
        kind = self.config.nli_head
        if kind == "cross":
            return self.nli_head(self.embed(premises.input_ids, premises.attention_mask))
        if kind == "pair":
            return self.nli_head(self.embed(premises.input_ids, premises.attention_mask),
                                 self.embed(hypotheses.input_ids, hypotheses.attention_mask))
        return self.nli_head(self.encoder(premises.input_ids, premises.attention_mask), premises.attention_mask,
                             self.encoder(hypotheses.input_ids, hypotheses.attention_mask), hypotheses.attention_mask)

    def nli_logits(self, premises: Sequence[str], hypotheses: Sequence[str], max_tokens: int | None = None) -> torch.Tensor:
        """Tokenize and classify: (N,) premise/hypothesis strings -> (N, 3) logits."""
        if self.nli_joint:
            return self.nli_logits_from(self.tokenize(premises, hypotheses, max_tokens=max_tokens))
        return self.nli_logits_from(self.tokenize(premises, max_tokens=max_tokens),
                                    self.tokenize(hypotheses, max_tokens=max_tokens))

    # ---- inference API --------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 64, normalize: bool = False) -> torch.Tensor:
        """Encode texts: N strings -> (N, d) float32, in batches sorted by length (order kept)."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), self.config.dim)
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            b = self.tokenize([texts[i] for i in idx])
            out[idx] = self.embed(b.input_ids, b.attention_mask)
        return F.normalize(out, dim=-1) if normalize else out

    @torch.inference_mode()
    def similarity(self, texts_a: Sequence[str], texts_b: Sequence[str]) -> torch.Tensor:
        """Cosine similarity of paired texts: (N,) float32 in [-1, 1]."""
        if len(texts_a) != len(texts_b):
            raise ValueError("texts_a and texts_b differ in length")
        return F.cosine_similarity(self.encode(texts_a), self.encode(texts_b), dim=-1)

    @torch.inference_mode()
    def predict_nli(self, premises: Sequence[str], hypotheses: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """NLI probabilities (N, 3) float32, columns in ``NLI_LABELS`` order; rows sum to 1."""
        if len(premises) != len(hypotheses):
            raise ValueError("premises and hypotheses differ in length")
        out = [F.softmax(self.nli_logits(premises[s : s + batch_size], hypotheses[s : s + batch_size]), dim=-1)
               for s in range(0, len(premises), batch_size)]
        return torch.cat(out) if out else torch.empty(0, len(NLI_LABELS))

    # ---- bookkeeping ----------------------------------------------------------------------
    def parameter_counts(self) -> dict[str, int]:
        """Parameter counts: total, embedding, encoder (transformer without embedding), nli_head.
        Quantized weights count like the fp32 ones they replace."""
        embedding_params = sum(t.numel() for t in weight_tensors(self.encoder.embedding))
        enc = sum(t.numel() for t in weight_tensors(self.encoder)) - embedding_params
        head = sum(t.numel() for t in weight_tensors(self.nli_head))
        return {"total": embedding_params + enc + head, "embedding": embedding_params, "encoder": enc, "nli_head": head}

    @property
    def quantization(self) -> str:
        """``"int8"`` after ``quantize("int8")``, else ``"none"``."""
        return "int8" if is_quantized(self) else "none"

    def quantize(self, mode: str = "int8") -> bool:
        """Int8 quantization of the transformer blocks' linear layers, for CPU inference.

        ``"int8"``: each ``nn.Linear`` of ``encoder.blocks`` (q/k/v, attention output, GeGLU up and
        down: all but ~1% of a forward's FLOPs) becomes a ``model.quantize.Int8Linear``: int8
        weights with one scale per output channel, each token's activations quantized with its own
        scale at run time, int8 x int8 -> int32 products. A sentence's vector still does not depend
        on its batch-mates. The embedding, the norms and the NLI head stay float32. Inference only
        and irreversible: load the checkpoint again to train. ``"none"`` leaves the model as it is.

        Measured on the bundled checkpoint (model/checkpoints/default/int8/REPORT.md and
        bench/results/serving.md): STS-B within 0.5 Spearman points of float32, faster encoding on CPU.

        Returns True for ``"int8"``. Raises ValueError for an unknown ``mode``
        (``QUANTIZATION_MODES``; ``model.quantize.apply_quantization``).
        """
        applied = apply_quantization(self.encoder.blocks, mode)
        self.eval()
        return applied

    def materialize_embeddings(self) -> bool:
        """Precompute a PETE embedding table for inference (see ``FourierEmbedding.materialize``).

        Returns True where the embedding kind supports it, False otherwise.
        """
        embedding = self.encoder.embedding
        if hasattr(embedding, "materialize"):
            embedding.materialize()
            return True
        return False

    def save_pretrained(self, directory: str | Path) -> None:
        """Write config.json, model.safetensors and tokenizer.json into ``directory``.

        Raises:
            ValueError: the model is quantized (checkpoints hold float32 weights; quantize at load).
        """
        if self.quantization != "none":
            raise ValueError("cannot save a quantized model: save the float32 model and quantize at load")
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=2) + "\n")
        state = {k: v.contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(d / WEIGHTS_NAME), metadata={"format": "pt"})
        self.tokenizer.no_truncation()
        self.tokenizer.save(str(d / TOKENIZER_NAME))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "SentenceEncoder":
        """Load a directory written by ``save_pretrained``; the model is returned in eval mode.

        Raises:
            FileNotFoundError: a required file is missing.
            ValueError: a file cannot be read as what it should be (the message names the file).
        """
        d = Path(directory)
        for name in CHECKPOINT_FILES["torch"]:
            if not (d / name).is_file():
                raise FileNotFoundError(f"{d / name} not found")
        def read(name: str, load):
            try:
                return load(d / name)
            except Exception as e:  # the libraries' messages do not name the file
                raise ValueError(f"{d / name} is not a valid {name}: {e}") from e

        config = read(CONFIG_NAME, lambda p: EncoderConfig.from_dict(json.loads(p.read_text())))
        model = cls(config, read(TOKENIZER_NAME, lambda p: Tokenizer.from_file(str(p))))
        model.load_state_dict(read(WEIGHTS_NAME, lambda p: load_file(str(p))))
        return model.eval()
