"""bench/: the pieces the benchmark reports are built from (tables, FLOP counting, log parsing,
target evaluation). Fast, no servers, no training."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import fmt_num, markdown_table
from bench.embedding_study import add_ratios, mean_step_time, parse_step_times, stage_spec, study_markdown
from bench.flops import (encoder_forward_flops, flop_spec, flops_markdown, linear_params_per_token, measure_matmul,
                         run_flops_section)
from bench.serving import evaluate_targets, probe_agreement
from loadtest.fixtures import random_checkpoint

torch.set_num_threads(1)


# ---- tables ---------------------------------------------------------------------------------------
def test_markdown_table_formats_and_escapes():
    rows = [{"a": 1234567, "b": 0.12345, "c": "x|y"}, {"a": None, "b": float("nan")}]
    md = markdown_table(rows, [("a", "A"), ("b", "B", lambda v: fmt_num(v, 3)), ("c", "C")])
    lines = md.splitlines()
    assert lines[0] == "| A | B | C |"
    assert lines[1] == "|---|---|---|"
    assert lines[2] == "| 1,234,567 | 0.123 | x\\|y |"
    assert lines[3] == "| – | – | – |"
    assert fmt_num(True) == "yes"


# ---- FLOP counting ---------------------------------------------------------------------------------
SPEC = {"dim": 4, "ffn_dim": 8, "n_layers": 1, "ffn_matrices": 3, "embedding": "fourier",
        "embedding_options": {"mlp_hidden": 3}}


def test_flops_hand_count():
    # Per token: qkv 4*12 + out 4*4 + up 4*16 + down 8*4 = 48 + 16 + 64 + 32 = 160 weights.
    assert linear_params_per_token(SPEC) == 160
    f = encoder_forward_flops(SPEC, batch=1, seq_len=2)
    assert f["linear"] == 2 * 160 * 2  # 640
    assert f["attention"] == 2 * 2 * 2 * 2 * 4  # QK^T (2x2 scores, 4 MACs each) + AV (same) = 64
    assert f["embedding"] == 0  # materialized table: a lookup
    assert f["total"] == 704
    g = encoder_forward_flops(SPEC, batch=1, seq_len=2, unique_ids=2, materialized=False)
    assert g["embedding"] == 2 * 2 * (4 * 3 + 3 * 4)  # MLP d->h->d once per distinct id: 96
    packed = encoder_forward_flops({**SPEC, "packed": True}, batch=2, seq_len=2, real_tokens=3)
    assert packed["linear"] == 2 * 160 * 3 and packed["attention"] == 2 * 64  # attention on the padded grid
    assert encoder_forward_flops(SPEC, batch=2, seq_len=2, real_tokens=3)["linear"] == 2 * 160 * 4  # padded model
    two = encoder_forward_flops({**SPEC, "n_layers": 2}, batch=3, seq_len=5)
    one = encoder_forward_flops(SPEC, batch=3, seq_len=5)
    assert two["total"] == 2 * one["total"]


def test_flops_linear_part_matches_torch_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    from model.encoder import Encoder, EncoderConfig

    cfg = EncoderConfig(vocab_size=50, dim=32, n_layers=2, n_heads=2, ffn_dim=48, embedding="learned",
                        embedding_options={})
    enc = Encoder(cfg).eval()
    ids = torch.randint(0, 50, (3, 7))
    spec = {"dim": 32, "ffn_dim": 48, "n_layers": 2, "ffn_matrices": 3, "embedding": "learned", "packed": True}
    for lengths in ([7, 7, 7], [7, 2, 4]):  # no padding; padding (the packed encoder skips it)
        mask = torch.arange(7) < torch.tensor(lengths).unsqueeze(1)
        counter = FlopCounterMode(display=False)
        with torch.inference_mode(), counter:
            enc(ids, mask)
        mm = sum(v for k, v in counter.get_flop_counts()["Global"].items() if "mm" in str(k))
        assert mm == encoder_forward_flops(spec, 3, 7, real_tokens=sum(lengths))["linear"]


def test_flop_spec_reads_the_config(tmp_path):
    from model.encoder import SentenceEncoder

    model = SentenceEncoder.from_pretrained(random_checkpoint(tmp_path / "ck", dim=16, ffn_dim=24))
    spec = flop_spec(model)
    assert (spec["dim"], spec["ffn_dim"], spec["n_layers"], spec["ffn_matrices"]) == (16, 24, 1, 3)
    assert spec["embedding"] == "fourier_geo" and spec["embedding_options"] == {"mlp_hidden": 16}


def test_flops_section_smoke(tmp_path):
    from model.encoder import SentenceEncoder

    model = SentenceEncoder.from_pretrained(random_checkpoint(tmp_path / "ck", dim=16, ffn_dim=24))
    texts = ["a man plays a guitar .", "a dog runs in the park", "two children sit"]
    sec = run_flops_section(model, texts, threads=[1], batch_sizes=[2], seconds=0.03, matmul_n=32,
                            profile_iterations=2, quantize=("none", "int8"), int8_speedup=lambda k, n: 2.0)
    assert len(sec["encoder"]) == 3  # table materialized and computed, then int8 (computed)
    assert [r["quantization"] for r in sec["encoder"]] == ["none", "none", "int8"] and sec["skipped"] == []
    assert model.quantization == "none"  # the int8 rows used a copy
    assert flop_spec(model)["packed"] is True
    for r in sec["encoder"]:
        assert r["embed_gflops"] > 0 and r["peak_gflops"] > 0 and r["runner_ms_per_batch"] > 0
    assert sec["profile"]["cprofile"] and sec["profile"]["torch_ops"]
    md = flops_markdown(sec)
    assert "How close to the limit" in md and "aten::" in md
    assert measure_matmul(16, 16, 16, 1, seconds=0.01)["gflops"] > 0
    # where int8 is slower than float32 (a CPU without VNNI), the service's auto would not serve it: not measured
    probed = []
    slow = run_flops_section(model, texts, threads=[1], batch_sizes=[2], seconds=0.03, matmul_n=32, profile=False,
                             quantize=("none", "int8"), int8_speedup=lambda k, n: probed.append((k, n)) or 0.05)
    assert probed == [(16, 24)] and [r["quantization"] for r in slow["encoder"]] == ["none", "none"]
    assert [k["quantization"] for k in slow["skipped"]] == ["int8"]
    assert "Not measured: int8 (int8 0.05x float32" in flops_markdown(slow)


# ---- embedding study bookkeeping --------------------------------------------------------------------
LOG = """\
2026-01-01 10:00:00,000 INFO args {...}
2026-01-01 10:00:10,000 INFO contrastive step 10/30 lr 1e-3 infonce 3.1 scale 20.0 (1.00s/step)
2026-01-01 10:00:20,000 INFO contrastive step 20/30 lr 1e-3 infonce 3.0 scale 20.0 (1.00s/step)
2026-01-01 10:00:22,000 INFO resumed at stage 0 step 20
2026-01-01 10:01:00,000 INFO contrastive step 10/30 lr 1e-3 infonce 3.1 scale 20.0 (9.00s/step)
2026-01-01 10:01:05,000 INFO contrastive step 20/30 lr 1e-3 infonce 3.0 scale 20.0 (7.00s/step)
2026-01-01 10:01:10,000 INFO contrastive step 30/30 lr 1e-3 infonce 2.9 scale 20.0 (6.00s/step)
2026-01-01 10:01:11,500 INFO sts step 5/5 lr 1e-4 cosent 2.0 scale 20.0 (0.25s/step)
"""


def test_parse_step_times_uses_timestamps_of_the_last_run():
    st = parse_step_times(LOG)
    assert st["contrastive"] == {"s_per_step": pytest.approx(0.5), "steps": 30}  # 10 s over 20 steps
    assert st["sts"] == {"s_per_step": 0.25, "steps": 5}  # one line: the logged mean
    assert mean_step_time(st) == pytest.approx((0.5 * 30 + 0.25 * 5) / 35)
    assert math.isnan(mean_step_time({}))


def test_stage_spec():
    assert stage_spec("400") == "contrastive:400,sts:100"
    assert stage_spec("2", nli_steps=3) == "contrastive:2,sts:1,nli:3"
    assert stage_spec("contrastive:5,sts:2") == "contrastive:5,sts:2"


def test_study_markdown_and_ratios():
    results = add_ratios([
        {"kind": "learned", "dim": 256, "embedding_params": 100, "embedding_params_closed_form": 100,
         "total_params": 1000, "sts_test_spearman": 70.0, "train_s_per_step": 2.0, "encode_sps": 100.0},
        {"kind": "fourier", "dim": 256, "embedding_params": 10, "embedding_params_closed_form": 10,
         "total_params": 910, "sts_test_spearman": 65.0, "train_s_per_step": 3.0, "encode_sps": 100.0,
         "encode_sps_computed": 50.0, "inference_table_bytes": 2**20},
        {"kind": "hashed", "dim": 256, "error": "RuntimeError: boom"},
    ])
    assert results[1]["step_time_vs_learned"] == pytest.approx(1.5)
    md = study_markdown({"results": results, "machine": {"cpu": "x", "cpu_count": 2}, "threads": 2,
                         "recipe": {"stages": "contrastive:1,sts:1", "layers": 2, "ffn_mult": 4, "seed": 0},
                         "command": "python -m bench.embedding_study"})
    assert "| 256 | `fourier` | 10 | 910 |" in md
    assert "1.50x" in md and "1.0" in md  # step ratio, table MiB
    assert "## Failed runs" in md and "boom" in md


# ---- serving bookkeeping ---------------------------------------------------------------------------
def test_the_baseline_scenario_serves_the_other_checkpoint():
    from bench.serving import build_scenarios

    with pytest.raises(ValueError, match="--baseline-model"):
        build_scenarios(["pete_baseline"], "new", 1, {})
    sc = build_scenarios(["pete", "pete_baseline"], "new", 1, {}, baseline_model="old")
    assert [s.env["PETE_MODEL_PATH"] for s in sc] == ["new", "old"]


def test_the_slim_image_configuration_is_a_scenario_serving_one_onnx_export(tmp_path):
    from bench.serving import build_scenarios, onnx_export
    from model.config import ENCODER_INT8_ONNX, ENCODER_ONNX, EXPORT_INFO, HEAD_ONNX

    exports = []
    for name in (ENCODER_ONNX, HEAD_ONNX, EXPORT_INFO):  # an export made before the int8 graph existed
        (tmp_path / name).write_text("{}")
    onnx_export(Path("new"), tmp_path, export=lambda ckpt, out: exports.append((ckpt, out)))
    assert exports == [(Path("new"), tmp_path)]  # is redone
    (tmp_path / ENCODER_INT8_ONNX).write_text("{}")  # a complete export already there is reused, not redone
    onnx_export(Path("new"), tmp_path, export=lambda ckpt, out: exports.append((ckpt, out)))
    assert len(exports) == 1
    sc = build_scenarios(["pete_onnx", "pete_onnx_2workers"], "new", 1, {}, export_dir=tmp_path)
    assert [s.env["PETE_MODEL_PATH"] for s in sc] == [str(tmp_path)] * 2
    assert sc[1].env["PETE_BACKEND"] == "onnx" and sc[1].env["PETE_WORKERS"] == "2"
    dockerfile = (Path(__file__).resolve().parents[1] / "Dockerfile").read_text()
    slim = dockerfile.split("AS slim\n", 1)[1].split("\nFROM ", 1)[0]
    assert "PETE_BACKEND=onnx" in slim and "PETE_WORKERS=2" in slim  # what the scenario claims to measure


def _scenario(sat, p32=None, p99=None, hwm=None, probe=None):
    phases = [{"loop": "closed", "clients": 32, "pairs_per_s": p32 if p32 is not None else sat}]
    if p99 is not None:
        phases.append({"loop": "open", "n": 100, "p99_ms": p99})
    return {"saturation_pairs_per_s": sat, "phases": phases, "memory_end": {"hwm_bytes": hwm} if hwm else {},
            "probe_scores": probe or [0.5]}


def test_evaluate_targets():
    one = {"loop": "closed", "clients": 1, "pairs_per_s": 300.0, "p50_ms": 3.0}
    pete = _scenario(1000.0, p99=40.0, hwm=300 * 2**20, probe=[0.5, 0.25])
    pete["phases"].append(one)
    two = _scenario(1600.0, p99=60.0, hwm=200 * 2**20)
    two["phases"].append({**one, "p50_ms": 6.0})
    rows = evaluate_targets({"pete": pete, "pete_2workers": two,
                             "pete_nobatch": _scenario(300.0, probe=[0.5, 0.25 + 1e-7]),
                             "minilm": _scenario(250.0)})
    by = {r["target"]: r for r in rows}
    assert by["pete / minilm pairs/s (saturation)"]["value"] == pytest.approx(4.0)
    assert by["pete / minilm pairs/s (saturation)"]["met"] is False
    assert by["pete / pete_nobatch pairs/s at 32 clients"]["value"] == pytest.approx(1000 / 300)
    met = {k: r["met"] for k, r in by.items() if k.startswith("pete ") or k.startswith("pete_2workers ")}
    assert met == {"pete / minilm pairs/s (saturation)": False, "pete / pete_nobatch pairs/s at 32 clients": False,
                   "pete pairs/s at saturation": False, "pete p50 latency, one client (ms)": True,
                   "pete p99 latency at half saturation (ms)": True,
                   "pete service peak RSS, all processes (MiB)": False,  # 300 MiB > 250
                   "pete_2workers pairs/s at saturation": True, "pete_2workers p50 latency, one client (ms)": False,
                   "pete_2workers p99 latency at half saturation (ms)": False,
                   "pete_2workers service peak RSS, all processes (MiB)": True}
    onnx = _scenario(1500.0)  # another one-worker PETE scenario gets its own ratio to the same MiniLM run
    rows = evaluate_targets({"pete": pete, "pete_onnx": onnx, "pete_2workers": two, "minilm": _scenario(250.0)})
    ratios = {r["target"]: (r["value"], r["met"]) for r in rows if "/ minilm" in r["target"]}
    assert ratios == {"pete / minilm pairs/s (saturation)": (pytest.approx(4.0), False),
                      "pete_onnx / minilm pairs/s (saturation)": (pytest.approx(6.0), True)}  # 2 workers: not like for like
    none = evaluate_targets({"pete": _scenario(10.0)})  # no minilm, no batching-off run, no latency or memory
    assert [r["met"] for r in none] == [None, None, False, None, None, None]
    agree = probe_agreement({"pete": _scenario(1.0, probe=[0.5, 0.25]),
                             "pete_nobatch": _scenario(1.0, probe=[0.5, 0.25 + 1e-7])})
    assert agree[0]["max_abs_diff"] == pytest.approx(1e-7)


# ---- shape study -----------------------------------------------------------------------------------
def test_shape_parsing_and_head_counts():
    from bench.shape_study import heads_for, parse_shapes

    assert parse_shapes("2x256/1024,4x192/640") == [(2, 256, 1024), (4, 192, 640)]
    assert (heads_for(256), heads_for(224), heads_for(192)) == (4, 4, 3)  # head sizes 64, 56, 64
    for bad in ("2x256", "x256/1024", "2x66/256"):  # 66: no even head size of 32-64
        with pytest.raises(argparse.ArgumentTypeError):
            parse_shapes(bad)


def test_shape_study_markdown_picks_by_dev_genre_mean_and_shows_speed_ratio():
    from bench.shape_study import study_markdown

    def row(name, dev_mean, sps):
        return {"shape": name, "total_params": 2_000_000, "sts_dev": 70.0, "sts_dev_genre_mean": dev_mean,
                "sts_test": 60.0, "test_cos_unrelated": 0.3, "test_cos_paraphrase": 0.8,
                "train_s_per_step": 0.4, "encode_sps": sps}

    md = study_markdown({"recipe": {"stages": "token_init:1,distill:2", "lr": 1e-3, "seed": 0, "threads": 1,
                                    "distill_sentences": 10},
                         "results": [row("2x256_ffn1024", 60.0, 2000.0), row("4x192_ffn640", 61.0, 1000.0)],
                         "notes": ["a note"]})
    assert "**4x192_ffn640** (61.0)" in md and "0.50x" in md and "- a note" in md


def test_request_path_benchmark_runs_both_handlers(capsys):
    """bench.request_path: every variant measured (positive CPU per request) and the table printed."""
    from bench.request_path import main

    assert main(["--requests", "30", "--rounds", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| lean") or line.startswith("| FastAPI")]
    assert len(rows) == 4
    assert all(float(r.split("|")[3]) > 0 for r in rows)


# ---- agreement with the teacher outside STS-B ----------------------------------------------------
def test_teacher_agreement_pairs_each_row_with_its_teacher_nearest_then_random_rows():
    import random

    from bench.teacher_agreement import pair_rows

    # rows 0-1 and 2-3 are near-duplicates; every other pair is orthogonal
    t = torch.nn.functional.normalize(torch.tensor([[1.0, 0, 0, 0], [0.9, 0.1, 0, 0], [0, 0, 1.0, 0],
                                                    [0, 0, 0.9, 0.1], [0, 1.0, 0, 0]]), dim=-1)
    rows = pair_rows(t, 4, random.Random(0))
    assert rows.shape == (8, 2)
    assert rows[:4].tolist() == [[0, 1], [1, 0], [2, 3], [3, 2]]  # nearest, never itself
    assert all(a != b for a, b in rows[4:].tolist())  # random pairs of distinct rows
    assert pair_rows(t, 3, random.Random(0), nearest=False).shape == (3, 2)


def test_teacher_agreement_samples_only_sentences_the_runs_never_sampled(tmp_path):
    import gzip

    from bench.teacher_agreement import held_out_sets
    from model.data import DataPaths
    from model.teacher import TeacherCache

    root = tmp_path / "data"
    (root / "text").mkdir(parents=True)
    (root / "bert-base-uncased").mkdir()
    with gzip.open(root / "bert-base-uncased" / "vocab.txt.gz", "wt") as f:
        f.write("[PAD]\n##ing\nguitar\nhorse\ncat\n")
    texts = [f"sentence {i}" for i in range(20)]
    with gzip.open(root / "text" / "news.tsv.gz", "wt") as f:
        f.write("source\tsentence\n" + "".join(f"bbc\t{t}\n" for t in texts))
    TeacherCache.create(tmp_path / "cache", texts, dim=4)
    sets = held_out_sets(DataPaths(root), tmp_path / "cache", trained_rows=12, n=5, words=2)
    assert len(sets["news"]) == 5 and set(sets["news"]) <= set(texts[12:])
    assert len(sets["words"]) == 2 and set(sets["words"]) <= {"guitar", "horse"}  # 4+ letters, whole words
    with pytest.raises(ValueError, match="only 8 held-out"):
        held_out_sets(DataPaths(root), tmp_path / "cache", trained_rows=12, n=9, words=2)
