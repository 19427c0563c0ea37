"""The ONNX Runtime backend (PETE_BACKEND=onnx): pete-export's graphs answer like the torch backend
(float32, within 1e-4; int8, like the torch int8 model) on real sentences, for every NLI head kind;
results do not depend on the batch (both backends, float32 and int8); PETE_QUANTIZE picks the graph;
the onnx serving path never imports torch; a missing export is a clear error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.batching import WorkItem
from app.inference import TorchRunner
from app.onnx_runner import OnnxRunner
from app.outputs import cosine
from bench.common import BUILTIN_PAIRS
from loadtest.fixtures import random_checkpoint
from model.encoder import SentenceEncoder
from model.export import export_onnx

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "model" / "checkpoints" / "default"
LIMITS = dict(max_tokens=128, max_batch_size=32, max_batch_tokens=4096)


@pytest.fixture(scope="module")
def bundled_onnx(tmp_path_factory) -> Path:
    if not (BUNDLED / "model.safetensors").is_file():
        pytest.skip("no bundled checkpoint")
    out = tmp_path_factory.mktemp("onnx") / "default"
    export_onnx(BUNDLED, out)
    return out


def runners(checkpoint: Path, exported: Path, quantize: str = "none") -> tuple[TorchRunner, OnnxRunner]:
    torch_runner = TorchRunner(checkpoint, quantize=quantize, threads=1, **LIMITS)
    onnx_runner = OnnxRunner(exported, threads=1, quantize=quantize, **LIMITS)
    torch_runner.load()
    onnx_runner.load()
    return torch_runner, onnx_runner


def work(pairs) -> list[WorkItem]:
    return [WorkItem("embed", t) for pair in pairs for t in pair] + [WorkItem("nli", a, b) for a, b in pairs]


def assert_same_answers(a, b, atol: float) -> None:
    for x, y in zip(a, b):
        if hasattr(x, "vector"):
            np.testing.assert_allclose(x.vector, y.vector, atol=atol, rtol=0)
        else:
            np.testing.assert_allclose(x.probabilities, y.probabilities, atol=atol, rtol=0)
        assert (x.truncated, x.tokens) == (y.truncated, y.tokens)


def test_onnx_answers_like_torch_on_real_sentences(bundled_onnx):
    torch_runner, onnx_runner = runners(BUNDLED, bundled_onnx)
    items = work(BUILTIN_PAIRS)
    t_out, o_out = torch_runner(items), onnx_runner(items)
    assert_same_answers(t_out, o_out, atol=1e-4)
    n = len(BUILTIN_PAIRS)
    for i in range(n):  # the /similarity scores themselves
        assert cosine(t_out[2 * i].vector, t_out[2 * i + 1].vector) == pytest.approx(
            cosine(o_out[2 * i].vector, o_out[2 * i + 1].vector), abs=1e-5)
    assert onnx_runner.parameter_counts() == SentenceEncoder.from_pretrained(BUNDLED).parameter_counts()
    info = onnx_runner.info()
    assert (info.dimensions, info.nli_head, info.quantization) == (256, "align", "none")


def test_onnx_int8_answers_like_torch_int8_and_near_float32(bundled_onnx):
    torch_int8, onnx_int8 = runners(BUNDLED, bundled_onnx, quantize="int8")
    _, onnx_fp32 = runners(BUNDLED, bundled_onnx)
    assert (onnx_int8.info().quantization, onnx_fp32.info().quantization) == ("int8", "none")
    assert onnx_int8.info().model_bytes < onnx_fp32.info().model_bytes / 2
    items = work(BUILTIN_PAIRS)
    t8, o8, o32 = torch_int8(items), onnx_int8(items), onnx_fp32(items)
    n = len(BUILTIN_PAIRS)
    scores = {name: np.array([cosine(out[2 * i].vector, out[2 * i + 1].vector) for i in range(n)])
              for name, out in (("torch_int8", t8), ("onnx_int8", o8), ("onnx_fp32", o32))}
    # The scheme of torch's Int8Linear with 7-bit weights (model.onnx_int8): the two int8 models differ
    # by about the quantization noise itself (bundled checkpoint: scores 0.006 apart, NLI probabilities
    # 0.028; each int8 model is 0.009-0.012 and 0.033-0.034 from float32).
    np.testing.assert_allclose(scores["onnx_int8"], scores["torch_int8"], atol=0.01, rtol=0)
    delta = np.abs(scores["onnx_int8"] - scores["onnx_fp32"])
    assert 1e-6 < delta.max() < 0.03  # quantized (not the float32 graph again), and close to it
    for a, b, c in zip(t8[2 * n:], o8[2 * n:], o32[2 * n:]):
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=0.04, rtol=0)
        np.testing.assert_allclose(b.probabilities, c.probabilities, atol=0.05, rtol=0)


def test_int8_graph_weights_fit_the_u8s8_kernel_without_overflow(bundled_onnx):
    """ONNX Runtime's uint8 x int8 kernel on CPUs without VNNI adds two products in int16: with
    activations up to 255, weights must stay within 63 (255 x 63 x 2 < 32,768) or sums saturate.
    The exported graph's weights are checked, and a product at the limits is computed exactly here."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    graph = onnx.load(str(bundled_onnx / "model_int8.onnx")).graph
    int8_weights = [numpy_helper.to_array(t) for t in graph.initializer if t.data_type == TensorProto.INT8]
    assert len(int8_weights) == 8 and max(int(np.abs(w).max()) for w in int8_weights) == 63
    assert json.loads((bundled_onnx / "onnx_export.json").read_text())["int8_weight_bits"] == 7
    w = np.full((256, 8), 63, np.int8)  # the largest weights, both signs: each pair of products at +-32,130
    w[:, ::2] = -63
    x = np.stack([np.full(256, 255), np.zeros(256), np.random.default_rng(0).integers(0, 256, 256)]).astype(np.uint8)
    g = helper.make_graph([helper.make_node("MatMulInteger", ["x", "w", "z"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.UINT8, [None, 256])],
                          [helper.make_tensor_value_info("y", TensorProto.INT32, [None, 8])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(128, np.uint8), "z")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(y, (x.astype(np.int64) - 128) @ w.astype(np.int64))


def test_pete_quantize_picks_the_onnx_graph(bundled_onnx, tmp_path):
    from app.onnx_runner import int8_speedup

    for speedup, picked in ((1.0, "none"), (3.0, "int8")):
        runner = OnnxRunner(bundled_onnx, threads=1, quantize="auto", speedup=lambda *a, s=speedup: s, **LIMITS)
        runner.load()
        assert runner.info().quantization == picked
    fp32, int8 = (OnnxRunner(bundled_onnx, threads=1, quantize=q, **LIMITS) for q in ("none", "int8"))
    fp32.load()
    int8.load()
    measured = int8_speedup(fp32.encoder, int8.encoder, 30522, repeats=1)
    assert np.isfinite(measured) and measured > 0
    # an export without the int8 graph (made before it existed): auto serves float32, int8 is an error
    old = tmp_path / "old_export"
    old.mkdir()
    for f in bundled_onnx.iterdir():
        if f.name != "model_int8.onnx":
            (old / f.name).write_bytes(f.read_bytes())
    runner = OnnxRunner(old, threads=1, quantize="auto", **LIMITS)
    runner.load()
    assert runner.info().quantization == "none"
    with pytest.raises(FileNotFoundError, match="model_int8.onnx.*pete-export"):
        OnnxRunner(old, threads=1, quantize="int8", **LIMITS).load()
    with pytest.raises(ValueError, match="unknown quantization"):
        OnnxRunner(old, threads=1, quantize="int4", **LIMITS).load()
    # an int8 graph from before 7-bit weights (onnx_export.json without int8_weight_bits): the same
    (old / "model_int8.onnx").write_bytes((bundled_onnx / "model_int8.onnx").read_bytes())
    info = json.loads((old / "onnx_export.json").read_text())
    del info["int8_weight_bits"]
    (old / "onnx_export.json").write_text(json.dumps(info))
    runner = OnnxRunner(old, threads=1, quantize="auto", speedup=lambda *a: 3.0, **LIMITS)
    runner.load()
    assert runner.info().quantization == "none"
    with pytest.raises(FileNotFoundError, match="older pete-export.*run: pete-export"):
        OnnxRunner(old, threads=1, quantize="int8", **LIMITS).load()


@pytest.mark.parametrize("backend", ["torch", "onnx", "onnx_int8"])
def test_a_pair_scores_the_same_alone_and_in_a_batch_of_32(bundled_onnx, backend):
    torch_runner, onnx_runner = runners(BUNDLED, bundled_onnx, quantize="int8" if backend == "onnx_int8" else "none")
    runner = torch_runner if backend == "torch" else onnx_runner
    pair = ("A child is riding a red bicycle down the street.", "A kid rides a bike.")
    alone = runner(work([pair]))
    others = [p for p in BUILTIN_PAIRS * 3][:31]
    batch = runner(work(others[:15] + [pair] + others[15:]))
    k = len(others[:15])
    in_batch = [batch[2 * k], batch[2 * k + 1], batch[2 * len(others) + 2 + k]]
    assert cosine(alone[0].vector, alone[1].vector) == pytest.approx(
        cosine(in_batch[0].vector, in_batch[1].vector), abs=1e-5)
    np.testing.assert_allclose(alone[2].probabilities, in_batch[2].probabilities, atol=1e-5, rtol=0)


@pytest.mark.parametrize("head", ["pair", "cross"])
def test_the_other_nli_heads_export_and_agree(tmp_path, head):
    ckpt = random_checkpoint(tmp_path / head, "tiny", nli_head=head, vocab=[w.strip(".,").lower() for p in BUILTIN_PAIRS
                                                                           for t in p for w in t.split()])
    export_onnx(ckpt)
    torch_runner, onnx_runner = runners(ckpt, ckpt)
    assert_same_answers(torch_runner(work(BUILTIN_PAIRS)), onnx_runner(work(BUILTIN_PAIRS)), atol=1e-4)


def test_a_checkpoint_without_its_export_is_a_clear_error(tmp_path):
    ckpt = random_checkpoint(tmp_path / "plain", "tiny")
    with pytest.raises(FileNotFoundError, match="pete-export"):
        OnnxRunner(ckpt, **LIMITS).load()
    env = {"PETE_BACKEND": "onnx", "PETE_MODEL_PATH": str(ckpt), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "app.cli"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "model.onnx" in r.stderr and f"pete-export {ckpt}" in r.stderr, r.stderr


def test_the_onnx_serving_path_imports_no_torch(bundled_onnx):
    script = f"""
import asyncio, json, sys
import httpx
from asgi_lifespan import LifespanManager
from app.main import create_app
from app.settings import Settings

async def main():
    app = create_app(Settings(model_path={str(bundled_onnx)!r}, backend="onnx", torch_threads=1))
    async with LifespanManager(app) as m:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=m.app), base_url="http://t") as c:
            sim = await c.post("/similarity", json={{"pairs": [{{"text_a": "A man plays a guitar.", "text_b": "A cat sleeps."}}]}})
            nli = await c.post("/nli", json={{"pairs": [{{"premise": "A man plays a guitar.", "hypothesis": "A man sleeps."}}]}})
            emb = await c.post("/embeddings", json={{"input": ["A man plays a guitar."]}})
            return [sim.status_code, nli.status_code, emb.status_code]

codes = asyncio.run(main())
print(json.dumps({{"codes": codes, "torch": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))}}))
"""
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out == {"codes": [200, 200, 200], "torch": []}


def test_flops_of_the_onnx_backend_are_measured(bundled_onnx):
    from bench.flops import measure_onnx

    texts = [t for pair in BUILTIN_PAIRS for t in pair]
    r = measure_onnx(bundled_onnx, texts, batch_size=4, threads=1, seconds=0.05, n_batches=2)
    assert r["quantization"] == "onnx" and r["flops_per_batch"] > 0 and r["embed_gflops"] > 0
    assert r["runner_ms_per_batch"] >= r["embed_ms_per_batch"] * 0.5 and 0 <= r["padding_fraction"] < 1
