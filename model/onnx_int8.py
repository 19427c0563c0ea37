"""Int8 linear layers in an exported ONNX encoder graph, with results that do not depend on the batch.

``quantize_encoder_graph`` rewrites each float32 ``Gemm`` of the encoder blocks (``x @ W^T + b``,
``x`` (rows, in) float32, ``W`` (out, in) an initializer) into the W8A8 per-token scheme of
``model.quantize.Int8Linear`` (LLM.int8()'s vector-wise quantization, Dettmers et al. 2022, without
its outlier decomposition; SmoothQuant's W8A8 per-token, Xiao et al. 2023):

    s_x = max(max_j |x_ij|, 1e-12) / 127                  (rows, 1): one scale per row (token)
    q_x = round(x / s_x) + 128                            uint8 (zero point 128)
    y   = float(MatMulInteger(q_x, q_W, 128)) * s_x * s_W + b

with ``q_W`` (in, out) int8 and ``s_W`` (out,) the per-output-channel weight scales: absmax / 63,
i.e. 7-bit weights (``Int8Linear`` takes absmax / 127), so the int8 ONNX graph answers like the
torch int8 model to within the weights' coarser rounding. The activations go in as uint8 with zero
point 128 because ONNX Runtime's CPU kernels are fast for uint8 x int8 and slow for int8 x int8
(measured on the bundled checkpoint, one pair, 1 thread, AMD EPYC: float32 2.2 ms, u8 x s8 1.4 ms,
s8 x s8 8.7 ms).

Why 7-bit weights: on x86 CPUs without VNNI (AVX2, AVX-512 without VNNI), ONNX Runtime's uint8 x
int8 kernel (``vpmaddubsw``) adds pairs of products in int16 and saturates: 255 x 127 x 2 = 64,770
> 32,767, and a layer's result is silently wrong (measured on an AVX2 AMD EPYC with ONNX Runtime
1.32: 99 % of a random u8 x s8 product's entries off, bundled checkpoint's scores off by up to
0.013 against torch int8). With |q_W| <= 63, 255 x 63 x 2 = 32,130 fits, on every CPU; this is ONNX
Runtime's own ``reduce_range`` advice for U8S8 on such CPUs. The cost in accuracy is in
``bench/results/onnx/int8.md``.

Why not ``onnxruntime.quantization.quantize_dynamic``: its ``DynamicQuantizeLinear`` takes one
activation scale per *tensor*, i.e. per batch, so a sentence's vector would depend on what it was
batched with; here a row's result depends on that row only (integer accumulation is exact).

Needs the ``onnx`` package (dev extra, as ``pete-export``) and numpy; no torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model.config import INT8_WEIGHT_BITS

QMAX = 127.0  # activations: int8 range, per row
QMAX_WEIGHT = float(2 ** (INT8_WEIGHT_BITS - 1) - 1)  # 63: no pair of u8 x s8 products overflows int16 (docstring)
ZERO_POINT = 128
_EPS = 1e-12


def _weight_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(out, in) float32 weights -> (q (in, out) int8 within [-63, 63], per-output-channel scales
    (out,) float32): symmetric absmax / 63 (``model.quantize.Int8Linear``'s scheme at 7 bits)."""
    w = w.astype(np.float32)
    scale = (np.maximum(np.abs(w).max(axis=1), _EPS) / np.float32(QMAX_WEIGHT)).astype(np.float32)
    q = np.round(w / scale[:, None]).astype(np.int8)
    return np.ascontiguousarray(q.T), scale


def quantize_encoder_graph(src: str | Path, dst: str | Path, prefix: str = "encoder.blocks.") -> int:
    """Write a copy of the ONNX graph ``src`` to ``dst`` with every ``Gemm`` whose weight initializer
    is named ``prefix...`` running as W8A8 with per-row activation scales (module docstring).

    Args:
        src: a float32 graph written by ``pete-export`` (``model.onnx``).
        dst: where the int8 graph goes (``model_int8.onnx``).
        prefix: the initializer-name prefix of the layers to quantize; the default matches what
            ``SentenceEncoder.quantize`` quantizes in torch (the transformer blocks' linear layers,
            not the PETE embedding's MLP).
    Returns:
        the number of layers rewritten.
    Raises:
        ValueError: no layer matched, or a matching ``Gemm`` is not ``x @ W^T (+ b)`` (transA,
            alpha or beta other than the defaults, transB other than 1).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    consts = [numpy_helper.from_array(np.array(QMAX, np.float32), "q8_qmax"),
              numpy_helper.from_array(np.array(_EPS, np.float32), "q8_eps"),
              numpy_helper.from_array(np.array(float(ZERO_POINT), np.float32), "q8_shift"),
              numpy_helper.from_array(np.array(ZERO_POINT, np.uint8), "q8_zero_point"),
              numpy_helper.from_array(np.array([-1], np.int64), "q8_last_axis")]
    nodes, replaced, added = [], set(), []
    for node in graph.node:
        if node.op_type != "Gemm" or len(node.input) < 2 or not node.input[1].startswith(prefix):
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (attrs.get("transB", 0) != 1 or attrs.get("transA", 0) != 0 or attrs.get("alpha", 1.0) != 1.0
                or attrs.get("beta", 1.0) != 1.0 or node.input[1] not in weights):
            raise ValueError(f"{node.name}: not x @ W^T + b with W an initializer ({attrs})")
        q, scale = _weight_int8(numpy_helper.to_array(weights[node.input[1]]))
        p, x = node.name, node.input[0]
        added += [numpy_helper.from_array(q, f"{p}_wq"), numpy_helper.from_array(scale, f"{p}_ws")]
        replaced.add(node.input[1])
        has_bias = len(node.input) > 2 and node.input[2] != ""
        nodes += [
            helper.make_node("Abs", [x], [f"{p}_abs"]),
            helper.make_node("ReduceMax", [f"{p}_abs", "q8_last_axis"], [f"{p}_absmax"], keepdims=1),
            helper.make_node("Max", [f"{p}_absmax", "q8_eps"], [f"{p}_absmax_eps"]),
            helper.make_node("Div", [f"{p}_absmax_eps", "q8_qmax"], [f"{p}_sx"]),
            helper.make_node("Div", [x, f"{p}_sx"], [f"{p}_scaled"]),
            helper.make_node("Round", [f"{p}_scaled"], [f"{p}_rounded"]),
            helper.make_node("Add", [f"{p}_rounded", "q8_shift"], [f"{p}_shifted"]),
            helper.make_node("Cast", [f"{p}_shifted"], [f"{p}_xq"], to=TensorProto.UINT8),
            helper.make_node("MatMulInteger", [f"{p}_xq", f"{p}_wq", "q8_zero_point"], [f"{p}_acc"]),
            helper.make_node("Cast", [f"{p}_acc"], [f"{p}_accf"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"{p}_accf", f"{p}_sx"], [f"{p}_y_rows"]),
            helper.make_node("Mul", [f"{p}_y_rows", f"{p}_ws"], [f"{p}_y" if has_bias else node.output[0]]),
        ]
        if has_bias:
            nodes.append(helper.make_node("Add", [f"{p}_y", node.input[2]], [node.output[0]]))
    if not replaced:
        raise ValueError(f"no Gemm with a weight named {prefix}* in {src}")
    kept = [t for t in graph.initializer if t.name not in replaced]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept + consts + added)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return len(replaced)
