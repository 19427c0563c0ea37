"""Training CLI (model/train.py) and evaluation CLI (model/evaluate.py) on a tiny model (dim 32,
1 layer) and a tiny data directory laid out like ../shared/data, built here: the losses' sanity and
closed forms, the teacher cache's resume, short runs lowering the contrastive and the distillation
losses, resume after completion and mid-stage, and the evaluation report."""

from __future__ import annotations

import argparse
import gzip
import json
import math
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import dataclasses

import numpy as np

from model import evaluate, stages, train
from model.data import caption_groups, read_sentences
from model.encoder import EncoderConfig, SentenceEncoder
from model.losses import cosent, info_nce, pair_cosine_mse, similarity_matrix_mse
from model.teacher import TeacherCache
from model.tokenizer import SPECIAL_TOKENS, tokenizer_from_vocab

torch.set_num_threads(1)

# ---- a tiny data directory ------------------------------------------------------------------------
SUBJECTS = ["man", "woman", "child", "dog", "girl", "boy", "cat", "chef", "player", "band", "horse", "bird"]
ACTIONS = ["playing a guitar", "riding a bike", "eating an apple", "running on the beach", "reading a book",
           "cooking dinner", "jumping over a fence", "sleeping on a couch", "kicking a ball", "singing a song",
           "crossing a river", "flying over the lake"]
GROUPS = [[f"A {s} is {a}.", f"The {s} is {a} outside.", f"There is a {s} {a} here."]
          for s, a in zip(SUBJECTS, ACTIONS)]


def nli_rows(i: int) -> list[tuple[str, str, str]]:
    """(premise, hypothesis, label) for caption group i: one pair per label."""
    s, a = SUBJECTS[i], ACTIONS[i]
    p = GROUPS[i][0]
    return [(p, f"Someone is {a}.", "entailment"), (p, f"The {s} is happy.", "neutral"),
            (p, f"Nobody is {a}.", "contradiction")]


def sts_rows(offset: int) -> list[tuple[str, str, float]]:
    rows = []
    for i in range(len(GROUPS)):
        j = (i + offset) % len(GROUPS)
        rows += [(GROUPS[i][0], GROUPS[i][1 + offset % 2], 4.0 + 0.1 * i / len(GROUPS)),
                 (GROUPS[i][0], GROUPS[j][0], 1.0 + 0.1 * i / len(GROUPS))]
    return rows


def gz(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(text)


def snli_jsonl(rows) -> str:
    return "".join(json.dumps({"sentence1": p, "sentence2": h, "gold_label": y, "pairID": str(k)}) + "\n"
                   for k, (p, h, y) in enumerate(rows))


def all_texts() -> list[str]:
    return [t for g in GROUPS for t in g] + [t for i in range(len(GROUPS)) for r in nli_rows(i) for t in r[:2]]


def tiny_vocab() -> list[str]:
    words = sorted({w for t in all_texts() for w in re.findall(r"\w+|[^\w\s]", t.lower())})
    return list(SPECIAL_TOKENS) + words


def build_data_dir(root: Path) -> Path:
    """Every file that pete-train (no teacher stages) and pete-evaluate read, in the shared layout."""
    gz(root / "bert-base-uncased" / "vocab.txt.gz", "\n".join(tiny_vocab()) + "\n")
    lines = ["source\tsentence\timage_id"]
    lines += [f"flickr\t{t}\timg{i}" for i, g in enumerate(GROUPS) for t in g]
    lines += ["trec\tWhat is a guitar?\t"]
    gz(root / "sentences.tsv.gz", "\n".join(lines) + "\n")
    for split, offset in (("train", 1), ("dev", 2), ("test", 3)):
        gz(root / "stsbenchmark" / f"sts-{split}.csv.gz",
           "".join(f"main-captions\tMSRvid\t2012\t{k:04d}\t{y:.3f}\t{a}\t{b}\n"
                   for k, (a, b, y) in enumerate(sts_rows(offset))))
    pairs = [r for i in range(len(GROUPS)) for r in nli_rows(i)]
    gz(root / "nli_train.tsv.gz", "source\tpremise\thypothesis\tlabel\tlabel_space\n"
       + "".join(f"conjnli\t{p}\t{h}\t{y}\t3way\n" for p, h, y in pairs[:24])
       + "rte\tA dog runs.\tA cat runs.\tnot_entailment\t2way\n")
    gz(root / "snli" / "snli_1.0_train_0.01.jsonl.gz", snli_jsonl(pairs[24:30]))
    gz(root / "snli" / "snli_1.0_dev.jsonl.gz", snli_jsonl(pairs[18:36] + [("x", "y", "-")]))
    gz(root / "snli" / "snli_1.0_test.jsonl.gz", snli_jsonl(pairs[:12]))
    for split in ("matched", "mismatched"):
        gz(root / "mnli" / f"multinli_1.0_dev_{split}.csv.gz",
           "pairID,sentence1,sentence2,label\n" + "".join(f"{k},{p},{h},{y}\n" for k, (p, h, y) in enumerate(pairs)))
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return build_data_dir(tmp_path_factory.mktemp("data"))


TINY = ["--threads", "1", "--tokenizer", "bert", "--dim", "32", "--layers", "1", "--heads", "2", "--ffn-dim", "64",
        "--embedding-options", '{"mlp_hidden": 32}', "--nli-hidden", "16", "--caption-batch", "8",
        "--triplet-batch", "4", "--sts-batch", "8", "--nli-batch", "8", "--max-tokens", "32", "--warmup", "5",
        "--log-every", "10", "--save-every", "10", "--lr", "3e-3"]


def tiny_encoder(**config) -> SentenceEncoder:
    """A fresh model of TINY's shape over ``tiny_vocab()``; ``config`` sets other EncoderConfig fields."""
    vocab = tiny_vocab()
    cfg = EncoderConfig(vocab_size=len(vocab), dim=32, n_layers=1, n_heads=2, ffn_dim=64,
                        embedding_options={"mlp_hidden": 32}, nli_hidden=16, **config)
    return SentenceEncoder(cfg, tokenizer_from_vocab(vocab))


def run_train(data_dir: Path, out: Path, *extra: str, stage_table=stages.STAGES) -> None:
    train.main(["--data-dir", str(data_dir), "--out", str(out), *TINY, *extra], stages=stage_table)


def with_loss(table, name: str, loss) -> dict:
    """A copy of the stage table ``table`` with stage ``name``'s loss replaced by ``loss``."""
    return {**table, name: dataclasses.replace(table[name], loss=loss)}


def fixed_batch_loss(model: SentenceEncoder) -> float:
    """InfoNCE (scale 20) of first vs second caption of every group: lower = paraphrases closer."""
    anchors = model.encode([g[0] for g in GROUPS])
    positives = model.encode([g[1] for g in GROUPS])
    return float(info_nce(anchors, positives, torch.tensor(math.log(20.0))))


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


# ---- losses ----------------------------------------------------------------------------------------
def test_info_nce_matches_its_closed_form_and_prefers_aligned_pairs():
    n, s = 6, 20.0
    eye = torch.eye(n)
    # orthonormal anchors, candidate i = anchor i: each row's logits are s on the diagonal, 0 elsewhere
    expected = math.log(math.exp(s) + n - 1) - s
    torch.testing.assert_close(info_nce(eye, eye, torch.tensor(math.log(s))), torch.tensor(expected))
    torch.manual_seed(0)
    a = torch.randn(16, 8)
    aligned = a + 0.05 * torch.randn(16, 8)
    shuffled = aligned[torch.randperm(16)]
    scale = torch.tensor(math.log(20.0))
    assert info_nce(a, aligned, scale) < 0.1 < info_nce(a, shuffled, scale)
    # hard negatives (extra candidates) can only add to the loss
    hard = torch.randn(4, 8)
    assert info_nce(a, torch.cat((aligned, hard)), scale) >= info_nce(a, aligned, scale)
    # the scale is exp(logit_scale), clamped at 100
    assert torch.equal(info_nce(a, shuffled, torch.tensor(10.0)), info_nce(a, shuffled, torch.tensor(math.log(100.0))))


def test_cosent_matches_its_closed_form_and_prefers_correct_order():
    # two pairs, gold says pair 0 is more similar: loss = log(1 + exp(s * (cos_1 - cos_0)))
    u = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    v = torch.tensor([[1.0, 0.0], [0.6, 0.8]])  # cos 1.0 and 0.6
    gold = torch.tensor([5.0, 1.0])
    torch.testing.assert_close(cosent(u, v, gold), torch.tensor(math.log1p(math.exp(20 * (0.6 - 1.0)))))
    torch.testing.assert_close(cosent(u, v, gold.flip(0)), torch.tensor(math.log1p(math.exp(20 * 0.4))))
    # equal gold scores impose no order: loss log(1) = 0
    torch.testing.assert_close(cosent(u, v, torch.tensor([3.0, 3.0])), torch.tensor(0.0))
    torch.manual_seed(0)
    x = torch.randn(10, 8)
    gold = torch.linspace(0, 5, 10)
    aligned = x + (5 - gold)[:, None] * 0.2 * torch.randn(10, 8)  # more noise = less similar = lower gold
    assert cosent(x, aligned, gold) < cosent(x, aligned, gold.flip(0))


def test_parse_stages():
    assert train.parse_stages("token_init:1500,contrastive:40") == [("token_init", 1500), ("contrastive", 40)]
    for bad in ("contrastive", "warmup:10", "sts:-1", "sts:x"):
        with pytest.raises(argparse.ArgumentTypeError):
            train.parse_stages(bad)


# ---- training runs ----------------------------------------------------------------------------------
def test_tiny_data_dir_is_what_the_readers_expect(data_dir):
    groups = caption_groups(read_sentences(data_dir / "sentences.tsv.gz"))
    assert len(groups) == len(GROUPS) and all(len(g) == 3 for g in groups)


def test_contrastive_training_lowers_the_loss(data_dir, tmp_path):
    torch.manual_seed(0)
    init = tiny_encoder().eval()
    init.save_pretrained(tmp_path / "init")
    before = fixed_batch_loss(init)

    run_train(data_dir, tmp_path / "run", "--init", str(tmp_path / "init"), "--stages", "contrastive:40")
    trained = SentenceEncoder.from_pretrained(tmp_path / "run" / "final")
    after = fixed_batch_loss(trained)
    assert after < before - 0.5, (before, after)
    assert trained.config == init.config
    dev = json.loads((tmp_path / "run" / "dev_scores.json").read_text())
    assert set(dev) == {"contrastive"} and math.isfinite(dev["contrastive"]["sts_dev_spearman"])
    assert (tmp_path / "run" / "after_0_contrastive" / "model.safetensors").is_file()


def test_fresh_run_all_stages_then_rerun_does_not_retrain(data_dir, tmp_path):
    out = tmp_path / "run"
    args = ("--stages", "contrastive:3,sts:3,nli:3", "--tokenizer", "frequency", "--nli-aux-weight", "0.5")
    run_train(data_dir, out, *args)
    final = SentenceEncoder.from_pretrained(out / "final")
    assert (final.config.dim, final.config.n_layers, final.config.tokenizer_kind) == (32, 1, "frequency")
    assert final.config.vocab_size == len(tiny_vocab())
    # the frequency-ranked tokenizer: the most frequent caption token ("a") right after the 5 specials
    perm = json.loads((out / "vocab_perm.json").read_text())
    assert final.tokenizer.token_to_id("a") == 5 and tiny_vocab()[perm[5]] == "a"
    state = torch.load(out / "state.pt", weights_only=False)
    assert (state["stage_idx"], state["step"]) == (3, 0)
    assert set(json.loads((out / "dev_scores.json").read_text())) == {"contrastive", "sts", "nli"}
    assert "snli_valid_acc" in json.loads((out / "dev_scores.json").read_text())["nli"]
    assert (out / "command.txt").read_text().startswith("pete-train --data-dir")
    saved = weights(out / "final")

    def must_not_train(*a, **k):
        raise AssertionError("a completed run trained again")

    never_again = stages.STAGES
    for name in stages.STAGES:
        never_again = with_loss(never_again, name, must_not_train)
    run_train(data_dir, out, *args, stage_table=never_again)
    again = weights(out / "final")
    assert saved.keys() == again.keys() and all(torch.equal(saved[k], again[k]) for k in saved)
    SentenceEncoder.from_pretrained(out / "final").encode(["A dog is running."])


def test_interrupted_run_resumes_to_the_same_model(data_dir, tmp_path):
    args = ("--stages", "contrastive:6", "--save-every", "2")
    run_train(data_dir, tmp_path / "straight", *args)

    original, calls = stages.STAGES["contrastive"].loss, []

    def crash_at_step_5(ctx, rng):
        calls.append(1)
        if len(calls) == 5:  # steps 1-4 done, state saved at step 4
            raise KeyboardInterrupt
        return original(ctx, rng)

    with pytest.raises(KeyboardInterrupt):
        run_train(data_dir, tmp_path / "resumed", *args,
                  stage_table=with_loss(stages.STAGES, "contrastive", crash_at_step_5))
    assert not (tmp_path / "resumed" / "final").exists()
    assert torch.load(tmp_path / "resumed" / "state.pt", weights_only=False)["step"] == 4
    run_train(data_dir, tmp_path / "resumed", *args)
    a, b = weights(tmp_path / "straight" / "final"), weights(tmp_path / "resumed" / "final")
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=0, msg=k)


def test_each_run_writes_its_own_train_log(data_dir, tmp_path):
    for name in ("first", "second"):
        run_train(data_dir, tmp_path / name, "--stages", "contrastive:2")
        assert "contrastive step 2/2" in (tmp_path / name / "train.log").read_text()


# ---- evaluation CLI ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval_run")
    run_train(data_dir, out, "--stages", "contrastive:2,nli:2")
    return out / "final"


def test_evaluate_writes_report_with_all_metrics(checkpoint, data_dir, tmp_path, capsys):
    report = evaluate.main([str(checkpoint), "--data-dir", str(data_dir), "--out", str(tmp_path / "eval"),
                            "--threads", "1", "--speed-sentences", "30"])
    assert json.loads((tmp_path / "eval" / "report.json").read_text()) == json.loads(json.dumps(report))
    assert report["sts"]["dev"]["n"] == report["sts"]["test"]["n"] == 2 * len(GROUPS)
    assert all(-100 <= report["sts"][s][m] <= 100 for s in ("dev", "test") for m in ("spearman", "pearson"))
    nli = report["nli"]
    assert set(nli) == {"snli_dev", "snli_dev_heldout", "snli_test", "mnli_dev_matched", "mnli_dev_mismatched"}
    assert nli["snli_dev"]["n"] == 18 and nli["snli_dev_heldout"]["n"] == 9  # default fraction 0.5 held back half
    assert all(0 <= v["accuracy"] <= 100 for v in nli.values())
    assert sum(map(sum, nli["snli_test"]["confusion"])) == nli["snli_test"]["n"]
    assert report["snli_dev_train_fraction"] == 0.5
    model = SentenceEncoder.from_pretrained(checkpoint)
    p = report["parameters"]
    assert p["embedding"] == model.parameter_counts()["embedding"] and p["non_embedding"] == p["total"] - p["embedding"]
    sizes = {f.name: f.stat().st_size for f in checkpoint.iterdir()}
    assert report["bytes"] == {"checkpoint_dir": sum(sizes.values()), "model_safetensors": sizes["model.safetensors"]}
    speed = report["throughput"]
    assert speed["sentences"] == 30 and speed["threads"] == 1
    assert speed["computed"]["sentences_per_s"] > 0 and speed["materialized"]["sentences_per_s"] > 0
    assert speed["materialized_max_abs_diff"] < 1e-4
    md = (tmp_path / "eval" / "REPORT.md").read_text()
    assert md == capsys.readouterr().out
    assert "| STS-B test Spearman / Pearson (x100) |" in md and "| snli_dev_heldout accuracy (%) |" in md
    assert "SNLI dev was partly trained on" in md and "never used for model selection" in md
    assert "NLI per class: precision / recall" in md and "| snli_test | " in md
    assert "pete-train --data-dir" in md
    assert set(report["sts"]["test"]["genres"]) == {"captions"}
    assert set(report["sts"]["test"]["cosine_by_gold"]) == {"0-1", "1-2", "2-3", "3-4", "4-5"}
    assert "| STS-B test captions Spearman (x100) |" in md and "| 4-5 |" in md and "What a cosine means" in md
    assert (tmp_path / "eval" / "sts_test_cosine.png").read_bytes()[:4] == b"\x89PNG"
    # the run's dev_curve.jsonl sits in the checkpoint's parent: the curve is reported and plotted
    assert [c["stage"] for c in report["dev_curve"]] == ["contrastive", "nli"]
    assert (tmp_path / "eval" / "dev_curve.png").is_file() and "Dev scores during training" in md


def test_evaluate_options(checkpoint, data_dir, tmp_path):
    report = evaluate.main([str(checkpoint), "--data-dir", str(data_dir), "--out", str(tmp_path / "a"),
                            "--threads", "1", "--limit", "3", "--speed-sentences", "10",
                            "--command", "pete-train --snli-dev-train-fraction 0 --out x"])
    assert report["sts"]["dev"]["n"] == 3 and report["nli"]["mnli_dev_matched"]["n"] == 3
    assert report["snli_dev_train_fraction"] == 0.0 and "snli_dev_heldout" not in report["nli"]
    md = (tmp_path / "a" / "REPORT.md").read_text()
    assert "partly trained on" not in md and "first 3 rows" in md
    report = evaluate.main([str(checkpoint), "--data-dir", str(data_dir), "--out", str(tmp_path / "b"),
                            "--threads", "1", "--skip-nli", "--speed-sentences", "10"])
    assert "nli" not in report and "sts" in report
    with pytest.raises(SystemExit):
        evaluate.main(["--data-dir", str(data_dir), "--out", str(tmp_path / "c")])  # neither checkpoint nor --teacher


# ---- teacher cache and distillation ---------------------------------------------------------------------
def fake_teacher_vector(text: str, dim: int) -> np.ndarray:
    """A deterministic unit vector per text: captions of one group share most of their direction."""
    group = next((i for i, g in enumerate(GROUPS) if text in g), None)
    seed = int.from_bytes(text.encode()[:8].ljust(8, b"\0"), "little")
    noise = np.random.default_rng(seed).standard_normal(dim)
    base = np.random.default_rng(1000 + group).standard_normal(dim) if group is not None else 0 * noise
    v = 3 * base + noise
    return (v / np.linalg.norm(v)).astype(np.float32)


def counting_encoder(dim: int, calls: list, fail_on_call: int | None = None):
    def encode(texts):
        calls.append(list(texts))
        if fail_on_call is not None and len(calls) == fail_on_call:
            raise KeyboardInterrupt
        return np.stack([fake_teacher_vector(t, dim) for t in texts])

    return encode


def test_teacher_cache_resumes_without_recomputing_finished_rows(tmp_path):
    texts = [f"sentence number {i}" for i in range(10)]
    cache = TeacherCache.create(tmp_path / "c", texts, dim=8)
    first: list = []
    with pytest.raises(KeyboardInterrupt):  # interrupted while encoding rows 6..8
        cache.fill(counting_encoder(8, first, fail_on_call=3), chunk=3)
    assert TeacherCache(tmp_path / "c").done == 6

    again = TeacherCache.create(tmp_path / "c", texts, dim=8)  # same texts: the same cache, resumed
    second: list = []
    assert again.fill(counting_encoder(8, second), chunk=3) == 10
    assert second == [texts[6:9], texts[9:10]]  # finished rows are not encoded again
    emb = again.embeddings()
    assert emb.dtype == np.float16 and emb.shape == (10, 8)
    expected = np.stack([fake_teacher_vector(t, 8) for t in texts])
    np.testing.assert_allclose(emb.astype(np.float32), expected, atol=1e-3)
    with pytest.raises(ValueError, match="other texts"):
        TeacherCache.create(tmp_path / "c", texts[::-1], dim=8)


@pytest.fixture(scope="module")
def teacher_cache(tmp_path_factory) -> Path:
    texts = sorted(set(all_texts()))
    d = tmp_path_factory.mktemp("teacher")
    TeacherCache.create(d, texts).fill(counting_encoder(384, []))
    return d


def relational_loss(model: SentenceEncoder, cache_dir: Path) -> float:
    cache = TeacherCache(cache_dir)
    return float(similarity_matrix_mse(model.encode(cache.texts()), torch.from_numpy(cache.embeddings().astype(np.float32))))


def test_distillation_moves_the_students_cosines_towards_the_teachers(data_dir, teacher_cache, tmp_path):
    torch.manual_seed(0)
    tiny_encoder().eval().save_pretrained(tmp_path / "init")
    before = relational_loss(SentenceEncoder.from_pretrained(tmp_path / "init"), teacher_cache)
    run_train(data_dir, tmp_path / "run", "--init", str(tmp_path / "init"), "--stages", "distill:40",
              "--teacher-cache", str(teacher_cache), "--distill-batch", "16", "--lr-distill", "3e-3",
              "--eval-every", "20")
    after = relational_loss(SentenceEncoder.from_pretrained(tmp_path / "run" / "final"), teacher_cache)
    assert after < 0.5 * before, (before, after)
    curve = [json.loads(line) for line in (tmp_path / "run" / "dev_curve.jsonl").read_text().splitlines()]
    assert [r["step"] for r in curve] == [20, 40] and all(r["stage"] == "distill" for r in curve)
    assert set(curve[-1]["sts_dev_cosine_by_gold"]) == {"0-1", "1-2", "2-3", "3-4", "4-5"}
    assert (tmp_path / "run" / "best_distill" / "model.safetensors").is_file()


def test_pair_cosine_mse_is_zero_for_matching_cosines_and_the_squared_gap_otherwise():
    a, b = torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    assert float(pair_cosine_mse(a, b, 3 * a, 2 * b)) == pytest.approx(0.0, abs=1e-7)  # scale-free
    # student cosines (0, 0.7071) vs teacher (1, 1): ((1)^2 + (1 - 0.7071)^2) / 2
    assert float(pair_cosine_mse(a, b, a, a)) == pytest.approx((1 + (1 - 2 ** -0.5) ** 2) / 2, rel=1e-5)


def test_near_pairs_are_teacher_neighbours_plus_the_training_splits_pairs(tmp_path):
    from model.data import DataPaths
    from model.near_pairs import dataset_pairs, mine_neighbours, near_pairs

    # 3 clusters of 4 rows around orthogonal directions; row 1 duplicates row 0 (cos 1)
    rng = np.random.default_rng(0)
    centres = np.eye(8)[:3] * 4
    emb = np.concatenate([c + 0.5 * rng.standard_normal((4, 8)) for c in centres]).astype(np.float16)
    emb[1] = emb[0]
    pairs = mine_neighbours(emb, np.arange(12), k=2)
    assert len(pairs) and (pairs[:, 0] < pairs[:, 1]).all() and len(np.unique(pairs, axis=0)) == len(pairs)
    assert ((pairs[:, 0] // 4) == (pairs[:, 1] // 4)).all()  # neighbours come from the same cluster
    assert not ((pairs[:, 0] == 0) & (pairs[:, 1] == 1)).any()  # the duplicate is skipped
    assert set(mine_neighbours(emb, np.array([4, 5, 6, 7]), k=1).flatten()) <= {4, 5, 6, 7}  # pool only

    root = build_data_dir(tmp_path / "data")
    texts = sorted(set(all_texts()))
    row_of = {t: i for i, t in enumerate(texts)}
    human = dataset_pairs(DataPaths(root), row_of)
    a, b, _ = sts_rows(1)[0]  # STS-B train's first pair
    assert [row_of[a], row_of[b]] in human.tolist()

    emb = np.random.default_rng(1).standard_normal((len(texts), 8)).astype(np.float16)
    first = near_pairs(tmp_path, emb, texts, DataPaths(root), n=len(texts), pool=20, k=1)
    saved = list(tmp_path.glob("near_pairs_20_1_0.npy"))
    assert saved and len(first) >= len(human)
    assert np.array_equal(near_pairs(tmp_path, emb * 0, texts, DataPaths(root), n=len(texts), pool=20, k=1), first)
    assert (near_pairs(tmp_path, emb, texts, DataPaths(root), n=10, pool=20, k=1) < 10).all()  # finished rows

    # a pool drawn from chosen text/ files only: every mined pair lies inside that file's rows
    news = GROUPS[0] + GROUPS[1]
    gz(root / "text" / "news.tsv.gz", "source\tsentence\n" + "".join(f"bbc\t{t}\n" for t in news))
    in_news = {row_of[t] for t in news}
    (tmp_path / "src").mkdir()
    pairs = near_pairs(tmp_path / "src", emb, texts, DataPaths(root), n=len(texts), pool=20, k=1, sources=["news"])
    mined = {tuple(p) for p in pairs.tolist()} - {tuple(p) for p in human.tolist()}
    assert mined and all(a in in_news and b in in_news for a, b in mined)
    with pytest.raises(FileNotFoundError, match="no text source"):
        near_pairs(tmp_path / "src", emb, texts, DataPaths(root), n=len(texts), pool=20, k=1, sources=["nope"])


def test_distillation_with_near_pairs_adds_the_pair_loss(data_dir, teacher_cache, tmp_path):
    run_train(data_dir, tmp_path / "run", "--stages", "distill:3", "--teacher-cache", str(teacher_cache),
              "--distill-batch", "8", "--distill-pairs", "4", "--pair-pool", "30", "--log-every", "1")
    steps = [line for line in (tmp_path / "run" / "train.log").read_text().splitlines() if " distill step " in line and " lr " in line]
    assert len(steps) == 3 and all(" pair " in line and "relational" in line for line in steps)
    assert (teacher_cache / "near_pairs_30_2_0.npy").is_file()


def test_distillation_without_a_teacher_cache_says_how_to_build_one(data_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m model.teacher"):
        run_train(data_dir, tmp_path / "run", "--stages", "distill:2", "--teacher-cache", str(tmp_path / "none"))


def test_config_options_come_from_the_typed_config():
    cfg = train.config_from_args(["--data-dir", "d", "--out", "o", "--stages", "distill:5,nli:2", "--dim", "64",
                                  "--nli-freeze-encoder", "--nli-file", "a.jsonl", "--nli-file", "b.tsv"])
    assert cfg.stages == [("distill", 5), ("nli", 2)] and cfg.dim == 64 and cfg.nli_freeze_encoder is True
    assert cfg.nli_file == ["a.jsonl", "b.tsv"] and cfg.lr == 1e-3 and cfg.teacher_cache
    assert set(train.STAGES) == {"token_init", "distill", "contrastive", "sts", "nli"}


def test_selection_weighs_every_genre_and_uses_nli_accuracy_for_the_nli_stage():
    lopsided = {"sts_dev_spearman": 80.0, "sts_dev_genres": {"captions": 95.0, "news": 75.0, "forums": 30.0}}
    balanced = {"sts_dev_spearman": 78.0, "sts_dev_genres": {"captions": 85.0, "news": 72.0, "forums": 60.0}}
    assert train.selection_score("distill", balanced) > train.selection_score("distill", lopsided)
    assert train.selection_score("sts", {"sts_dev_spearman": 70.0}) == 70.0  # no genres: overall figure
    assert train.selection_score("nli", {**lopsided, "snli_valid_acc": 61.5}) == 61.5


def test_evaluation_names_the_splits_that_training_added_as_nli_files():
    cmd = ("pete-train --data-dir d --out o --nli-file ../shared/data/mnli/multinli_1.0_dev_mismatched.csv.gz "
           "--nli-file /data/snli_1.0_train.jsonl")
    assert evaluate.trained_on_splits(cmd) == ["mnli_dev_mismatched"]
    assert evaluate.trained_on_splits("pete-train --data-dir d --out o") == [] == evaluate.trained_on_splits(None)
    md = evaluate.render_markdown({"checkpoint": "c", "sts": {}, "nli": {}, "parameters": {"total": 1},
                                   "throughput": {"threads": 1, "batch_size": 1, "sentences": 0},
                                   "nli_splits_trained_on": ["mnli_dev_mismatched"]})
    assert "`mnli_dev_mismatched` was trained on" in md


def test_sts_and_contrastive_stages_can_carry_the_distillation_losses(data_dir, teacher_cache, tmp_path):
    run_train(data_dir, tmp_path / "run", "--stages", "sts:2,contrastive:2", "--distill-weight", "0.5",
              "--teacher-cache", str(teacher_cache), "--distill-batch", "8", "--log-every", "1")
    lines = (tmp_path / "run" / "train.log").read_text().splitlines()
    sts = [line for line in lines if " sts step " in line and "lr" in line]
    contrastive = [line for line in lines if " contrastive step " in line and "lr" in line]
    assert sts and all("cosent" in line and "distill" in line and "relational" in line for line in sts)
    assert contrastive and all("infonce" in line and "relational" in line for line in contrastive)


def test_distillation_corpus_takes_every_training_sentence_once_in_a_seeded_order(tmp_path):
    from model.data import DataPaths
    from model.teacher import distill_corpus

    root = build_data_dir(tmp_path / "data")
    gz(root / "text" / "news.tsv.gz", "source\tsentence\nreuters\tShares rose on Monday.\nbbc\tA man is playing a guitar.\n")
    corpus = distill_corpus(DataPaths(root))
    assert len(corpus) == len(set(corpus))
    assert "Shares rose on Monday." in corpus  # text/
    assert GROUPS[3][2] in corpus and "Nobody is riding a bike." in corpus  # captions, NLI hypotheses
    assert corpus == distill_corpus(DataPaths(root)) and corpus != sorted(corpus)  # seeded shuffle
    assert "x" not in corpus  # SNLI dev (a pair of it is ("x", "y")) is not a training file


def test_gold_on_teacher_scale_keeps_the_human_order_and_the_teachers_spread():
    from model.train_data import gold_on_teacher_scale

    gold = np.array([5.0, 0.0, 2.5, 4.0, 1.0])
    teacher = np.array([0.9, 0.6, 0.1, 0.8, 0.5])  # the teacher ranks pairs 1 and 4 wrongly
    t = gold_on_teacher_scale(gold, teacher)
    assert t.dtype == np.float32
    np.testing.assert_allclose(np.sort(t), np.sort(teacher), rtol=1e-6)  # the teacher's cosines ...
    np.testing.assert_allclose(t, [0.9, 0.1, 0.6, 0.8, 0.5], rtol=1e-6)  # ... in the gold order
    tied = gold_on_teacher_scale(np.array([1.0, 1.0, 3.0]), np.array([0.2, 0.4, 0.9]))
    np.testing.assert_allclose(tied, [0.3, 0.3, 0.9], rtol=1e-6)  # equal gold, equal target
    with pytest.raises(ValueError, match="as many"):
        gold_on_teacher_scale(gold, teacher[:3])


def test_distillation_with_gold_pairs_moves_their_cosines_to_the_targets(data_dir, teacher_cache, tmp_path):
    from model.stages import StageContext, gold_targets
    from model.train_config import TrainConfig
    from model.train_data import TrainData

    # the targets: STS-B train's gold order on the (fake) teacher's cosines, read from the cache
    cfg = TrainConfig(data_dir=str(data_dir), out=str(tmp_path / "x"), teacher_cache=str(teacher_cache))
    model = tiny_encoder()
    ctx = StageContext(cfg, model, TrainData(cfg), teacher=stages.TeacherTargets(cfg))
    targets = gold_targets(ctx).numpy()
    gold = np.array([p.score for p in ctx.data.sts_train])
    assert len(targets) == len(gold) and (np.diff(targets[np.argsort(gold, kind="stable")]) >= -1e-6).all()

    def gap(directory: Path) -> float:
        m = SentenceEncoder.from_pretrained(directory).eval()
        pairs = ctx.data.sts_train
        a, b = m.encode([p.sentence1 for p in pairs]), m.encode([p.sentence2 for p in pairs])
        return float((torch.nn.functional.cosine_similarity(a, b) - torch.from_numpy(targets)).pow(2).mean())

    model.eval().save_pretrained(tmp_path / "init")
    common = ("--init", str(tmp_path / "init"), "--stages", "distill:40", "--teacher-cache", str(teacher_cache),
              "--distill-batch", "8", "--lr-distill", "3e-3", "--log-every", "10")
    run_train(data_dir, tmp_path / "gold", *common, "--gold-weight", "5", "--gold-batch", "8")
    run_train(data_dir, tmp_path / "plain", *common)
    steps = [line for line in (tmp_path / "gold" / "train.log").read_text().splitlines()
             if " distill step " in line and " lr " in line]
    assert steps and all(" gold " in line for line in steps)
    with_gold, without = gap(tmp_path / "gold" / "final"), gap(tmp_path / "plain" / "final")
    assert with_gold < 0.5 * gap(tmp_path / "init") and with_gold < without, (with_gold, without)


def test_genre_balanced_gold_sampling_draws_each_genre_equally_often():
    from model.data import STSPair
    from model.stages import genre_balanced_weights

    pairs = [STSPair("a", "b", 1.0, "main-news")] * 9 + [STSPair("c", "d", 2.0, "main-forum")]
    w = genre_balanced_weights(pairs)
    assert sum(w[:9]) == pytest.approx(sum(w[9:])) == pytest.approx(1.0)


def test_training_from_a_checkpoint_keeps_its_nli_head_unless_told_otherwise(data_dir, tmp_path):
    tiny_encoder(nli_head="align").eval().save_pretrained(tmp_path / "init")  # as TINY
    head = {k: v for k, v in weights(tmp_path / "init").items() if k.startswith("nli_head.")}
    run_train(data_dir, tmp_path / "kept", "--init", str(tmp_path / "init"), "--stages", "contrastive:2")
    kept = SentenceEncoder.from_pretrained(tmp_path / "kept" / "final")
    init = SentenceEncoder.from_pretrained(tmp_path / "init").config
    assert (kept.config.nli_head, kept.config.nli_hidden) == ("align", init.nli_hidden)
    after = weights(tmp_path / "kept" / "final")
    assert head and all(torch.equal(v, after[k]) for k, v in head.items())  # the same head, untouched
    run_train(data_dir, tmp_path / "new", "--init", str(tmp_path / "init"), "--stages", "contrastive:2",
              "--nli-head", "pair")
    new = SentenceEncoder.from_pretrained(tmp_path / "new" / "final")
    assert (new.config.nli_head, new.config.nli_hidden) == ("pair", 16)


def test_word_corpus_takes_whole_vocabulary_words_and_frequent_split_words(tmp_path):
    from model.data import DataPaths
    from model.teacher import word_corpus

    root = build_data_dir(tmp_path / "data")
    vocab = tiny_vocab() + ["##ing", "x", "42"]
    gz(root / "bert-base-uncased" / "vocab.txt.gz", "\n".join(vocab) + "\n")
    gz(root / "text" / "forum.tsv.gz", "source\tsentence\n"
       + "reddit\tMy succulents need water.\n" * 3 + "reddit\tAloe is a succulent.\n")
    words = word_corpus(DataPaths(root), min_count=3)
    assert len(words) == len(set(words))
    assert {"guitar", "horse", "succulents"} <= set(words)  # whole vocabulary words; a frequent split word
    assert "succulent" not in words  # seen once: under min_count
    assert not {"##ing", "x", "42", "[CLS]"} & set(words)  # pieces, one letter, digits, special tokens
    assert words == word_corpus(DataPaths(root), min_count=3) and words != sorted(words)  # seeded shuffle
    assert "succulents" not in word_corpus(DataPaths(root), corpus_words=0, min_count=3)


def test_distillation_with_words_moves_the_words_cosines_towards_the_teachers(data_dir, teacher_cache, tmp_path):
    # a teacher that puts the words in two clusters (the first and second half in vocabulary order),
    # which the sentences' (random) teacher vectors say nothing about
    words = sorted({w for w in tiny_vocab() if w.isalpha()})
    centres = np.random.default_rng(0).standard_normal((2, 384))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)  # words of a cluster: cosine ~0.7
    cluster = {w: centres[2 * i // len(words)] + 0.6 * fake_teacher_vector(w, 384) for i, w in enumerate(words)}
    words_cache = tmp_path / "words"
    TeacherCache.create(words_cache, words).fill(
        lambda texts: np.stack([cluster[t] / np.linalg.norm(cluster[t]) for t in texts]))
    torch.manual_seed(0)
    tiny_encoder().eval().save_pretrained(tmp_path / "init")
    common = ("--init", str(tmp_path / "init"), "--stages", "distill:40", "--teacher-cache", str(teacher_cache),
              "--words-cache", str(words_cache), "--distill-batch", "8", "--lr-distill", "3e-3", "--log-every", "10")
    run_train(data_dir, tmp_path / "words_run", *common, "--distill-words", "16")
    run_train(data_dir, tmp_path / "plain", *common)
    with_words = relational_loss(SentenceEncoder.from_pretrained(tmp_path / "words_run" / "final"), words_cache)
    without = relational_loss(SentenceEncoder.from_pretrained(tmp_path / "plain" / "final"), words_cache)
    before = relational_loss(SentenceEncoder.from_pretrained(tmp_path / "init"), words_cache)
    assert with_words < 0.5 * before and with_words < 0.5 * without, (before, with_words, without)
    # near word pairs: each word's teacher neighbours (same cluster), in their own pair loss
    run_train(data_dir, tmp_path / "word_pairs", *common, "--distill-words", "8", "--word-pairs", "4",
              "--distill-pairs", "2", "--pair-pool", "30", "--log-every", "1")
    steps = [line for line in (tmp_path / "word_pairs" / "train.log").read_text().splitlines()
             if " distill step " in line and " lr " in line]
    assert len(steps) == 40 and all(" word_pair " in line and " pair " in line for line in steps)
    mined = np.load(words_cache / "near_pairs_30_2_0.npy")
    assert len(mined) and all((2 * a // len(words)) == (2 * b // len(words)) for a, b in mined.tolist())
    with pytest.raises(FileNotFoundError, match="--corpus words"):
        run_train(data_dir, tmp_path / "missing", "--stages", "distill:2", "--teacher-cache", str(teacher_cache),
                  "--words-cache", str(tmp_path / "none"), "--distill-words", "4")


def test_distillation_batches_draw_the_chosen_part_from_the_chosen_text_files(tmp_path):
    import random

    from model.train_config import TrainConfig
    from model.train_data import TeacherTargets

    root = build_data_dir(tmp_path / "data")
    news = GROUPS[0] + GROUPS[1]
    gz(root / "text" / "news.tsv.gz", "source\tsentence\n" + "".join(f"bbc\t{t}\n" for t in news))
    texts = sorted(set(all_texts()))
    TeacherCache.create(tmp_path / "cache", texts).fill(counting_encoder(384, []))
    cfg = TrainConfig(data_dir=str(root), out=str(tmp_path / "x"), teacher_cache=str(tmp_path / "cache"),
                      distill_sources=["news"], distill_source_fraction=0.5)
    targets, rng = TeacherTargets(cfg), random.Random(0)
    drawn = [targets.sample(rng, 8)[0] for _ in range(50)]
    share = sum(t in news for batch in drawn for t in batch) / sum(len(b) for b in drawn)
    uniform = len(news) / len(texts)  # ~0.1
    assert share > 0.45 and share > 3 * uniform, share  # half the batch from news, plus news drawn uniformly
    assert all(6 <= len(b) <= 8 for b in drawn)
    everything = TeacherTargets(TrainConfig(data_dir=str(root), out=str(tmp_path / "y"),
                                            teacher_cache=str(tmp_path / "cache")))
    plain = [t for _ in range(50) for t in everything.sample(rng, 8)[0]]
    assert sum(t in news for t in plain) / len(plain) < 0.25
