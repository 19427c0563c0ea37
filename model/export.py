"""``pete-export``: a checkpoint as ONNX graphs, for the ONNX Runtime backend (``PETE_BACKEND=onnx``).

    pete-export model/checkpoints/default            # writes model.onnx, model_int8.onnx, nli_head.onnx beside it
    pete-export CHECKPOINT --out DIR                  # elsewhere (config.json and tokenizer.json copied)

Three graphs (torch.onnx, dynamic batch and sequence axes; float32 but for the int8 one):

- ``model.onnx``, the encoder: ``input_ids`` (B, T) int64 and ``attention_mask`` (B, T) int64 (1 =
  real token) -> ``sentence_embedding`` (B, d), the masked mean of ``token_states`` (B, T, d). The
  PETE embedding stays computed (Fourier features and MLP, 8.7 MB of graph for the bundled model;
  exporting the materialized (V, d) table made it 38 MB for a 3 % faster pass), and the encoder
  computes the padded grid (``Encoder.forward_padded``: no data-dependent shapes); results at real
  tokens equal the torch backend's to float rounding (1e-6 on the bundled checkpoint).
- ``model_int8.onnx``: the same encoder with the transformer blocks' linear layers as int8, per-row
  activation scales and 7-bit weights (``model.onnx_int8``: batch-invariant, the torch int8 model's
  answers to within the coarser weights, exact integer sums on every x86 CPU); the runner serves it when ``PETE_QUANTIZE`` is ``int8``, or ``auto`` and it measures faster.
- ``onnx_export.json``: the checkpoint's parameter counts (what /info reports), the opset, the
  number of int8 layers and their weights' bits.
- ``nli_head.onnx``, the checkpoint's NLI head: ``align``: premise states ``a`` (B, Ta, d),
  ``mask_a`` (B, Ta) int64, hypothesis ``b``, ``mask_b`` -> ``logits`` (B, 3); ``pair``: ``u``, ``v``
  (B, d) -> ``logits``; ``cross``: ``pooled`` (B, d) -> ``logits``.

The serving side (``app.onnx_runner``) reads these with config.json and tokenizer.json and never
imports torch. Export needs torch and the ``onnx`` + ``onnxscript`` packages (dev extra).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from model.config import (CONFIG_NAME, ENCODER_INT8_ONNX, ENCODER_ONNX, EXPORT_INFO, HEAD_ONNX, INT8_WEIGHT_BITS,
                          TOKENIZER_NAME)
from model.encoder import SentenceEncoder, mean_pool
from model.onnx_int8 import quantize_encoder_graph

OPSET = 18


class EncoderGraph(nn.Module):
    """What ``model.onnx`` computes: ids, mask (B, T) int64 -> (sentence embedding (B, d), token
    states (B, T, d)), float32."""

    def __init__(self, model: SentenceEncoder) -> None:
        super().__init__()
        self.encoder = model.encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = attention_mask.bool()
        states = self.encoder.forward_padded(input_ids, mask)
        return mean_pool(states, mask), states


class AlignGraph(nn.Module):
    """The align head with int64 masks (ONNX inputs): (a, mask_a, b, mask_b) -> logits (B, 3)."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, a, mask_a, b, mask_b) -> torch.Tensor:
        return self.head(a, mask_a.bool(), b, mask_b.bool())


def _export(module: nn.Module, args: tuple, path: Path, names: list[str], outputs: list[str],
            dynamic: dict[str, dict[int, str]]) -> None:
    with warnings.catch_warnings():  # the exporter's notes on axis names and deprecations
        warnings.simplefilter("ignore")
        _quiet_export(module, args, path, names, outputs, dynamic)


def _quiet_export(module, args, path, names, outputs, dynamic) -> None:
    torch.onnx.export(module, args, str(path), input_names=names, output_names=outputs, dynamic_axes=dynamic,
                      opset_version=OPSET, dynamo=True, external_data=False, verbose=False)


@torch.no_grad()
def export_onnx(checkpoint: str | Path, out: str | Path | None = None) -> list[Path]:
    """Write ``model.onnx``, ``model_int8.onnx``, ``nli_head.onnx`` and ``onnx_export.json`` for a ``save_pretrained`` checkpoint into ``out``
    (default: the checkpoint directory; elsewhere, config.json and tokenizer.json are copied too).
    Returns the paths written.

    Raises:
        FileNotFoundError, ValueError: the checkpoint is missing or unreadable (``from_pretrained``).
    """
    checkpoint = Path(checkpoint)
    out = Path(out) if out is not None else checkpoint
    out.mkdir(parents=True, exist_ok=True)
    model = SentenceEncoder.from_pretrained(checkpoint)
    d, kind = model.config.dim, model.config.nli_head
    ids = torch.tensor([[2, 5, 6, 3], [2, 7, 3, 0]], dtype=torch.int64)
    mask = (ids != 0).to(torch.int64)
    seq = {0: "batch", 1: "tokens"}
    _export(EncoderGraph(model).eval(), (ids, mask), out / ENCODER_ONNX, ["input_ids", "attention_mask"],
            ["sentence_embedding", "token_states"],
            {"input_ids": seq, "attention_mask": seq, "sentence_embedding": {0: "batch"}, "token_states": seq})
    int8_layers = quantize_encoder_graph(out / ENCODER_ONNX, out / ENCODER_INT8_ONNX)
    head = model.nli_head.eval()
    if kind == "align":
        a, b = torch.randn(2, 4, d), torch.randn(2, 3, d)
        ma, mb = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]), torch.tensor([[1, 1, 0], [1, 1, 1]])
        _export(AlignGraph(head), (a, ma, b, mb), out / HEAD_ONNX, ["a", "mask_a", "b", "mask_b"], ["logits"],
                {"a": {0: "batch", 1: "tokens_a"}, "mask_a": {0: "batch", 1: "tokens_a"},
                 "b": {0: "batch", 1: "tokens_b"}, "mask_b": {0: "batch", 1: "tokens_b"}, "logits": {0: "batch"}})
    elif kind == "pair":
        _export(head, (torch.randn(2, d), torch.randn(2, d)), out / HEAD_ONNX, ["u", "v"], ["logits"],
                {"u": {0: "batch"}, "v": {0: "batch"}, "logits": {0: "batch"}})
    else:
        _export(head, (torch.randn(2, d),), out / HEAD_ONNX, ["pooled"], ["logits"],
                {"pooled": {0: "batch"}, "logits": {0: "batch"}})
    if out.resolve() != checkpoint.resolve():
        for name in (CONFIG_NAME, TOKENIZER_NAME):
            shutil.copyfile(checkpoint / name, out / name)
    info = {"parameter_counts": model.parameter_counts(), "opset": OPSET, "torch": torch.__version__,
            "materialized_embeddings": False, "int8_layers": int8_layers,
            "int8_weight_bits": INT8_WEIGHT_BITS}
    (out / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n")
    return [out / ENCODER_ONNX, out / ENCODER_INT8_ONNX, out / HEAD_ONNX, out / EXPORT_INFO]


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``pete-export``."""
    p = argparse.ArgumentParser(prog="pete-export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="checkpoint directory (save_pretrained layout)")
    p.add_argument("--out", type=Path, default=None, help="output directory (default: the checkpoint's)")
    args = p.parse_args(argv)
    for path in export_onnx(args.checkpoint, args.out):
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
