"""Int8 linear layers for CPU inference, with results that do not depend on the batch.

``Int8Linear`` replaces an ``nn.Linear`` by a W8A8 one: weights are int8 with one scale per output
channel (symmetric, absmax / 127), and each *row* (token) of the input is quantized to int8 with its
own scale at run time; the product runs as an int8 x int8 -> int32 matrix multiply
(``torch._int_mm``) and is rescaled to float32. This is the vector-wise quantization of LLM.int8()
(Dettmers et al. 2022: a scale per row of X and per column of W^T) without its outlier
decomposition, i.e. the per-token dynamic activation scheme that SmoothQuant (Xiao et al. 2023)
calls W8A8 per-token.

Why not ``torch.ao.quantization.quantize_dynamic``: it quantizes the activations with one scale per
*tensor*, i.e. per batch, so a sentence's vector depends on what it was batched with (measured on
the bundled checkpoint: cosine scores moved by up to 0.02 between "alone" and "in a batch of 32"),
and the service promises that batching never changes an answer. Here a row's result depends on that
row only (integer accumulation is exact), and the scheme is also slightly more accurate.
"""

from __future__ import annotations

import time
from typing import Callable, Iterator

import torch
from torch import nn

from model.config import INT8_MIN_SPEEDUP, QUANTIZATION_MODES, resolve_quantization_mode

__all__ = ["INT8_MIN_SPEEDUP", "QUANTIZATION_MODES", "Int8Linear", "apply_quantization", "int8_speedup",
           "is_quantized", "quantize_linear_int8", "resolve_quantization", "weight_tensors"]

_QMAX = 127.0


class Int8Linear(nn.Module):
    """W8A8 linear layer: ``y = (q(x) @ q(W)^T) * s_x * s_w + b``, inference only.

    Input (..., in_features) float32; output (..., out_features) float32. Buffers: ``qweight``
    (in_features, out_features) int8 (transposed for ``torch._int_mm``), ``weight_scale``
    (out_features,) float32, ``bias`` (out_features,) float32 or None. 1 byte per weight instead of 4.

    Raises RuntimeError (from torch) when called with gradients required: it cannot be trained.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / _QMAX
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("qweight", torch.round(w / scale[:, None]).to(torch.int8).t().contiguous())
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        # (abs().amax() and a float() copy before scaling: on CPU both are ~10x faster than
        # linalg.vector_norm(ord=inf) and a mixed int32 * float32 multiply; bench/results/serving.md)
        scale = x2.abs().amax(dim=1, keepdim=True).clamp_(min=1e-12).div_(_QMAX)  # (rows, 1)
        q = (x2 / scale).round_().to(torch.int8)
        y = torch._int_mm(q, self.qweight).float().mul_(scale).mul_(self.weight_scale)
        if self.bias is not None:
            y.add_(self.bias)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def quantize_linear_int8(module: nn.Module) -> nn.Module:
    """Replace every ``nn.Linear`` inside ``module`` (in place, recursively) by an ``Int8Linear``;
    returns ``module``. ``module`` itself is not replaced (pass its parent to quantize a bare
    Linear)."""
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, Int8Linear(child))
        else:
            quantize_linear_int8(child)
    return module


def apply_quantization(target: nn.Module, mode: str) -> bool:
    """Quantize ``target``'s linear layers for ``mode`` in ``QUANTIZATION_MODES``: ``"int8"`` runs
    ``quantize_linear_int8`` (a no-op on layers already quantized), ``"none"`` changes nothing.
    Returns ``mode == "int8"``. Raises ValueError for an unknown ``mode``."""
    if mode not in QUANTIZATION_MODES:
        raise ValueError(f"unknown quantization {mode!r}; choose from {QUANTIZATION_MODES}")
    if mode == "int8":
        quantize_linear_int8(target)
    return mode == "int8"


def int8_speedup(in_features: int, out_features: int, rows: int = 128, repeats: int = 3) -> float:
    """Measured time of a float32 ``nn.Linear`` over that of its ``Int8Linear``, for a (rows,
    in_features) float32 input on this CPU with torch's current thread count (best of ``repeats``
    after one warm-up call). > 1: int8 is faster. ``torch._int_mm`` is fast only where the CPU has
    int8 dot-product instructions (AVX512-VNNI, AMX); on an AVX2-only CPU it falls back to a slow
    path, measured here 34x slower than float32 (64 x 256 x 1024)."""
    torch.manual_seed(0)
    fp32 = nn.Linear(in_features, out_features).eval()
    int8 = Int8Linear(fp32)
    x = torch.randn(rows, in_features)

    def best(layer: nn.Module) -> float:
        times = []
        with torch.inference_mode():
            layer(x)
            for _ in range(repeats):
                t = time.perf_counter()
                layer(x)
                times.append(time.perf_counter() - t)
        return min(times)

    return best(fp32) / best(int8)


def resolve_quantization(mode: str, in_features: int, out_features: int,
                         speedup: Callable[[int, int], float] = int8_speedup) -> str:
    """The quantization to apply for a setting of ``mode``: ``"auto"`` becomes ``"int8"`` when
    ``speedup(in_features, out_features)`` (default: measured, ``int8_speedup``) at the model's
    feed-forward shape is at least ``INT8_MIN_SPEEDUP``, else ``"none"``; ``"none"`` and ``"int8"``
    stay as they are (``model.config.resolve_quantization_mode``). Raises ValueError for another ``mode``."""
    return resolve_quantization_mode(mode, lambda: speedup(in_features, out_features))


def is_quantized(module: nn.Module) -> bool:
    """True when ``module`` holds at least one ``Int8Linear``."""
    return any(isinstance(m, Int8Linear) for m in module.modules())


def weight_tensors(module: nn.Module) -> Iterator[torch.Tensor]:
    """The module's parameters, plus the int8 weights and biases of its ``Int8Linear`` layers
    (buffers, which ``parameters()`` does not list): for counting parameters."""
    yield from module.parameters()
    for m in module.modules():
        if isinstance(m, Int8Linear):
            yield m.qweight
            if m.bias is not None:
                yield m.bias
