"""The encoder's configuration and file names: what a checkpoint directory holds and how to read
it, with no torch (the ONNX Runtime backend serves a checkpoint without importing torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

NLI_LABELS = ("entailment", "neutral", "contradiction")
CONFIG_NAME, WEIGHTS_NAME, TOKENIZER_NAME = "config.json", "model.safetensors", "tokenizer.json"
# What ``pete-export`` (model/export.py) writes beside them for the ONNX Runtime backend.
ENCODER_ONNX, HEAD_ONNX, EXPORT_INFO = "model.onnx", "nli_head.onnx", "onnx_export.json"
# The encoder graph with int8 linear layers (model/onnx_int8.py), served when PETE_QUANTIZE picks int8.
ENCODER_INT8_ONNX = "model_int8.onnx"
# Its weights' bits (7: no int16 overflow in ONNX Runtime's uint8 x int8 kernel on CPUs without VNNI,
# model/onnx_int8.py); ``pete-export`` records it in onnx_export.json, and the ONNX runner serves no
# int8 graph from an export that lacks it (an older 8-bit one, wrong on such CPUs).
INT8_WEIGHT_BITS = 7
# The files each backend (``PETE_BACKEND``) reads from a checkpoint directory.
CHECKPOINT_FILES = {"torch": (CONFIG_NAME, WEIGHTS_NAME, TOKENIZER_NAME),
                    "onnx": (CONFIG_NAME, TOKENIZER_NAME, ENCODER_ONNX, HEAD_ONNX, EXPORT_INFO)}

QUANTIZATION_MODES = ("none", "int8")
# ``"auto"`` (``resolve_quantization_mode``): int8 where this CPU runs it at least this much faster.
INT8_MIN_SPEEDUP = 1.1


def resolve_quantization_mode(mode: str, speedup: Callable[[], float]) -> str:
    """The quantization to serve for a setting of ``mode`` (``PETE_QUANTIZE``), for both backends:
    ``"auto"`` becomes ``"int8"`` when ``speedup()`` (float32 time over int8 time, measured by the
    caller) is at least ``INT8_MIN_SPEEDUP``, else ``"none"``; ``"none"`` and ``"int8"`` stay as they
    are (``speedup`` is not called). Raises ValueError for another ``mode``."""
    if mode == "auto":
        return "int8" if speedup() >= INT8_MIN_SPEEDUP else "none"
    if mode not in QUANTIZATION_MODES:
        raise ValueError(f"unknown quantization {mode!r}; choose from {QUANTIZATION_MODES + ('auto',)}")
    return mode


@dataclass
class EncoderConfig:
    """Everything needed to rebuild the model; saved as config.json.

    ``nli_head``: ``"pair"`` classifies (u, v, |u-v|, u*v) of the two sentence vectors
    (Conneau et al. 2017); ``"align"`` soft-aligns the two sentences' token states (``AlignHead``,
    after Parikh et al. 2016 and Chen et al. 2017); ``"cross"`` encodes
    ``[CLS] premise [SEP] hypothesis [SEP]`` jointly. ``nli_hidden`` is the head's hidden width.
    """

    vocab_size: int = 30522
    dim: int = 256
    n_layers: int = 2
    n_heads: int = 4
    ffn_dim: int = 1024
    max_len: int = 128
    rope_base: float = 10000.0
    norm_eps: float = 1e-6
    embedding: str = "fourier_geo"
    embedding_options: dict = field(default_factory=lambda: {"mlp_hidden": 256})
    nli_head: str = "pair"
    nli_hidden: int = 128
    tokenizer_kind: str = "bert"  # "bert" or "frequency"; informational

    @classmethod
    def from_dict(cls, d: dict) -> "EncoderConfig":
        """Build from a dict, ignoring keys this version does not know."""
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)
