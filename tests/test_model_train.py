"""Training CLI (model/train.py) and evaluation CLI (model/evaluate.py) on a tiny model (dim 32,
1 layer) and a tiny data directory laid out like ../shared/data, built here: the losses' sanity and
closed forms, a short run lowering the contrastive loss, resume after completion and mid-stage,
and the evaluation report."""

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

from model import evaluate, train
from model.data import caption_groups, read_sentences
from model.encoder import EncoderConfig, SentenceEncoder
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


def run_train(data_dir: Path, out: Path, *extra: str) -> None:
    train.main(["--data-dir", str(data_dir), "--out", str(out), *TINY, *extra])


def fixed_batch_loss(model: SentenceEncoder) -> float:
    """InfoNCE (scale 20) of first vs second caption of every group: lower = paraphrases closer."""
    anchors = model.encode([g[0] for g in GROUPS])
    positives = model.encode([g[1] for g in GROUPS])
    return float(train.info_nce(anchors, positives, torch.tensor(math.log(20.0))))


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


# ---- losses ----------------------------------------------------------------------------------------
def test_info_nce_matches_its_closed_form_and_prefers_aligned_pairs():
    n, s = 6, 20.0
    eye = torch.eye(n)
    # orthonormal anchors, candidate i = anchor i: each row's logits are s on the diagonal, 0 elsewhere
    expected = math.log(math.exp(s) + n - 1) - s
    torch.testing.assert_close(train.info_nce(eye, eye, torch.tensor(math.log(s))), torch.tensor(expected))
    torch.manual_seed(0)
    a = torch.randn(16, 8)
    aligned = a + 0.05 * torch.randn(16, 8)
    shuffled = aligned[torch.randperm(16)]
    scale = torch.tensor(math.log(20.0))
    assert train.info_nce(a, aligned, scale) < 0.1 < train.info_nce(a, shuffled, scale)
    # hard negatives (extra candidates) can only add to the loss
    hard = torch.randn(4, 8)
    assert train.info_nce(a, torch.cat((aligned, hard)), scale) >= train.info_nce(a, aligned, scale)
    # the scale is exp(logit_scale), clamped at 100
    assert torch.equal(train.info_nce(a, shuffled, torch.tensor(10.0)), train.info_nce(a, shuffled, torch.tensor(math.log(100.0))))


def test_cosent_matches_its_closed_form_and_prefers_correct_order():
    # two pairs, gold says pair 0 is more similar: loss = log(1 + exp(s * (cos_1 - cos_0)))
    u = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    v = torch.tensor([[1.0, 0.0], [0.6, 0.8]])  # cos 1.0 and 0.6
    gold = torch.tensor([5.0, 1.0])
    torch.testing.assert_close(train.cosent(u, v, gold), torch.tensor(math.log1p(math.exp(20 * (0.6 - 1.0)))))
    torch.testing.assert_close(train.cosent(u, v, gold.flip(0)), torch.tensor(math.log1p(math.exp(20 * 0.4))))
    # equal gold scores impose no order: loss log(1) = 0
    torch.testing.assert_close(train.cosent(u, v, torch.tensor([3.0, 3.0])), torch.tensor(0.0))
    torch.manual_seed(0)
    x = torch.randn(10, 8)
    gold = torch.linspace(0, 5, 10)
    aligned = x + (5 - gold)[:, None] * 0.2 * torch.randn(10, 8)  # more noise = less similar = lower gold
    assert train.cosent(x, aligned, gold) < train.cosent(x, aligned, gold.flip(0))


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
    vocab = tiny_vocab()
    cfg = EncoderConfig(vocab_size=len(vocab), dim=32, n_layers=1, n_heads=2, ffn_dim=64,
                        embedding_options={"mlp_hidden": 32}, nli_hidden=16)
    init = SentenceEncoder(cfg, tokenizer_from_vocab(vocab)).eval()
    init.save_pretrained(tmp_path / "init")
    before = fixed_batch_loss(init)

    run_train(data_dir, tmp_path / "run", "--init", str(tmp_path / "init"), "--stages", "contrastive:40")
    trained = SentenceEncoder.from_pretrained(tmp_path / "run" / "final")
    after = fixed_batch_loss(trained)
    assert after < before - 0.5, (before, after)
    assert trained.config == cfg
    dev = json.loads((tmp_path / "run" / "dev_scores.json").read_text())
    assert set(dev) == {"contrastive"} and math.isfinite(dev["contrastive"]["sts_dev_spearman"])
    assert (tmp_path / "run" / "after_0_contrastive" / "model.safetensors").is_file()


def test_fresh_run_all_stages_then_rerun_does_not_retrain(data_dir, tmp_path, monkeypatch):
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

    for name in ("loss_contrastive", "loss_sts", "loss_nli", "loss_distill", "loss_token_init"):
        monkeypatch.setattr(train.Trainer, name, must_not_train)
    run_train(data_dir, out, *args)
    again = weights(out / "final")
    assert saved.keys() == again.keys() and all(torch.equal(saved[k], again[k]) for k in saved)
    SentenceEncoder.from_pretrained(out / "final").encode(["A dog is running."])


def test_interrupted_run_resumes_to_the_same_model(data_dir, tmp_path, monkeypatch):
    args = ("--stages", "contrastive:6", "--save-every", "2")
    run_train(data_dir, tmp_path / "straight", *args)

    original, calls = train.Trainer.loss_contrastive, []

    def crash_at_step_5(self, rng):
        calls.append(self.step)
        if self.step == 4:  # steps 1-4 done, state saved at step 4
            raise KeyboardInterrupt
        return original(self, rng)

    monkeypatch.setattr(train.Trainer, "loss_contrastive", crash_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        run_train(data_dir, tmp_path / "resumed", *args)
    assert not (tmp_path / "resumed" / "final").exists()
    assert torch.load(tmp_path / "resumed" / "state.pt", weights_only=False)["step"] == 4
    monkeypatch.setattr(train.Trainer, "loss_contrastive", original)
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
    assert "pete-train --data-dir" in md


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
