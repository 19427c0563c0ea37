"""NLI v2 on tiny models: the align head learns negation from a toy set, and the nli stage learns from
the NLI teacher's cached logits (soft labels on labelled pairs, pseudo-labels on unlabelled pairs)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.encoder import NLI_LABELS, EncoderConfig, SentenceEncoder
from model.nli_teacher import epoch_batches, pair_key, read_pairs_file
from model.stages import soft_label_kl
from model.teacher import TeacherCache
from model.tokenizer import tokenizer_from_vocab
from test_model_train import GROUPS, all_texts, data_dir, nli_rows, run_train  # noqa: F401 (data_dir: fixture)

torch.set_num_threads(1)

SUBJECTS = ["man", "woman", "child", "dog", "girl", "boy", "cat", "chef", "bird", "horse"]
VERBS = ["sleeping", "running", "eating", "singing", "jumping", "reading", "swimming", "cooking", "dancing", "walking"]
ENT, CON = NLI_LABELS.index("entailment"), NLI_LABELS.index("contradiction")


def negation_pairs(combos) -> tuple[list[str], list[str], torch.Tensor]:
    """'a S is V' -> 'the S is V' (entailment) and 'the S is not V' (contradiction)."""
    p, h, y = [], [], []
    for s, v in combos:
        p += [f"a {s} is {v}"] * 2
        h += [f"the {s} is {v}", f"the {s} is not {v}"]
        y += [ENT, CON]
    return p, h, torch.tensor(y)


@pytest.mark.parametrize("seed", [0, 1])
def test_align_head_learns_that_not_flips_entailment_to_contradiction(seed):
    torch.manual_seed(seed)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "the", "is", "not"] + SUBJECTS + VERBS
    cfg = EncoderConfig(vocab_size=len(vocab), dim=32, n_layers=1, n_heads=2, ffn_dim=64, max_len=32,
                        embedding_options={"mlp_hidden": 32}, nli_head="align", nli_hidden=16)
    model = SentenceEncoder(cfg, tokenizer_from_vocab(vocab))
    combos = [(s, v) for s in SUBJECTS for v in VERBS]
    train_p, train_h, train_y = negation_pairs(c for k, c in enumerate(combos) if k % 4)
    test_p, test_h, test_y = negation_pairs(c for k, c in enumerate(combos) if k % 4 == 0)  # unseen pairs

    def accuracy() -> float:
        model.eval()
        return float((model.predict_nli(test_p, test_h).argmax(-1) == test_y).float().mean())

    before = accuracy()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(60):
        loss = F.cross_entropy(model.nli_logits(train_p, train_h), train_y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert before <= 0.5 and accuracy() >= 0.9, (before, accuracy())


def test_soft_label_kl_is_zero_at_the_teacher_and_positive_elsewhere():
    t = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 3.0]])
    assert float(soft_label_kl(t, t)) == pytest.approx(0.0, abs=1e-7)
    assert float(soft_label_kl(t + 5.0, t)) == pytest.approx(0.0, abs=1e-6)  # logits are shift-invariant
    assert float(soft_label_kl(t.flip(1), t)) > 0.5
    assert float(soft_label_kl(torch.empty(0, 3), torch.empty(0, 3))) == 0.0


def test_epoch_batches_cover_every_pair_once_and_replay_with_the_seed():
    lengths = [int(x) for x in np.random.default_rng(0).integers(5, 90, 1000)]
    batches = epoch_batches(lengths, 32, seed=3)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert batches == epoch_batches(lengths, 32, seed=3) and batches != epoch_batches(lengths, 32, seed=4)
    spread = np.mean([np.ptp([lengths[i] for i in b]) for b in batches])
    assert spread < 0.2 * np.ptp(lengths)  # length-sorted inside windows: little padding


def test_pair_files_and_keys_keep_one_pair_a_line(tmp_path):
    assert pair_key("a\tb  c", "d\ne") == "a b c\td e"
    f = tmp_path / "pairs.tsv"
    f.write_text("A man sleeps.\tA man is awake.\nno tab here\nTwo dogs.\tAnimals.\tneighbour\n")
    assert read_pairs_file(f) == [("A man sleeps.", "A man is awake."), ("Two dogs.", "Animals.")]


def test_pseudo_pairs_mix_the_kinds_and_pick_neighbours_from_other_images():
    from model.nli_pseudo import build_pairs, nearest_other

    groups = [[f"a {c} dog runs", f"the {c} dog is running", f"one {c} dog"] for c in ("red", "blue", "big", "old")]
    groups += [[f"a man cooks {f}", f"someone makes {f}"] for f in ("rice", "soup", "bread", "cake")]
    texts = [f"the market fell {k} points" for k in range(10)] + [f"he wrote {k} books" for k in range(10)]
    vocab = sorted({w for g in groups for t in g for w in t.split()} | {w for t in texts for w in t.split()})
    enc = lambda ts: torch.stack([torch.tensor([float(w in t.split()) for w in vocab]) for t in ts])  # noqa: E731
    pairs = build_pairs(groups, texts, enc, n=20, seed=0, k=1)
    kinds = {k for *_, k in pairs}
    assert kinds == {"same_image", "neighbour", "random", "text"}
    image = {t: i for i, g in enumerate(groups) for t in g}
    for p, h, kind in pairs:
        assert p != h
        if kind == "same_image":
            assert image[p] == image[h]
        elif kind in ("neighbour", "random"):
            assert image[p] != image[h]
    assert len({(p, h) for p, h, _ in pairs}) == len(pairs) == len(build_pairs(groups, texts, enc, 20, seed=0, k=1))
    # the nearest other-owner row by cosine, never a row of the same owner
    v = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.8, 0.2]])
    assert nearest_other(v, [0, 0, 1, 2], k=1, rng=random.Random(0)) == [3, 3, 3, 1]


def test_pseudo_label_yield_counts_labels_and_confident_pairs_per_kind(tmp_path):
    from model.nli_teacher import pseudo_label_yield

    f = tmp_path / "pairs.tsv"
    f.write_text("a\tb\tsame_image\nc\td\tsame_image\ne\tf\tneighbour\n")
    logits = {"a\tb": [5.0, 0.0, 0.0], "c\td": [0.1, 0.0, 0.0], "e\tf": [0.0, 0.0, 5.0]}
    cache = TeacherCache.create(tmp_path / "logits_pairs", list(logits), dim=3)
    cache.fill(lambda rows: np.array([logits[r] for r in rows], dtype=np.float32))
    y = pseudo_label_yield(f, cache)
    assert y["same_image"]["pairs"] == 2 and y["same_image"]["label_share"]["entailment"] == 100.0
    assert y["same_image"]["confident_share_p0.7"] == 50.0
    assert y["neighbour"]["label_share"]["contradiction"] == 100.0


def student_contradiction(directory, pairs) -> float:
    model = SentenceEncoder.from_pretrained(directory)
    return float(model.predict_nli([p for p, _ in pairs], [h for _, h in pairs])[:, CON].mean())


def test_nli_stage_learns_the_teachers_labels_on_pseudo_labelled_pairs(data_dir, tmp_path):  # noqa: F811
    """A fake teacher says 'contradiction' on unlabelled pairs; the student follows it there, and the
    KD term on labelled pairs finds their cached logits."""
    texts = sorted(set(all_texts()))
    pseudo = [(a, b) for a, b in zip(texts[::2], texts[1::2])]
    teacher = tmp_path / "nli_teacher"
    strong = np.array([-4.0, -4.0, 4.0], dtype=np.float32)  # contradiction
    TeacherCache.create(teacher / "logits_toy", [pair_key(a, b) for a, b in pseudo], dim=3).fill(
        lambda rows: np.tile(strong, (len(rows), 1)))
    labelled = [r for i in range(len(GROUPS)) for r in nli_rows(i)]
    gold = {"entailment": [4.0, -4.0, -4.0], "neutral": [-4.0, 4.0, -4.0], "contradiction": [-4.0, -4.0, 4.0]}
    keys = [pair_key(p, h) for p, h, _ in labelled]
    by_key = {k: gold[y] for k, (_, _, y) in zip(keys, labelled)}
    TeacherCache.create(teacher / "logits_train", sorted(set(keys)), dim=3).fill(
        lambda rows: np.array([by_key[r] for r in rows], dtype=np.float32))

    common = ["--tokenizer", "bert", "--nli-head", "align", "--nli-hidden", "16", "--nli-teacher", str(teacher),
              "--lr-nli", "1e-2", "--seed", "1"]
    run_train(data_dir, tmp_path / "init", "--stages", "nli:1", *common)
    before = student_contradiction(tmp_path / "init" / "final", pseudo)
    run_train(data_dir, tmp_path / "run", "--stages", "nli:60", "--init", str(tmp_path / "init" / "final"),
              "--nli-pseudo", "toy", "--nli-pseudo-batch", "8", "--nli-kd-weight", "1.0", *common)
    after = student_contradiction(tmp_path / "run" / "final", pseudo)
    assert after > max(0.8, before + 0.3), (before, after)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "nli_kd" in log and "nli_pseudo" in log


def test_missing_teacher_logits_say_how_to_make_them(data_dir, tmp_path):  # noqa: F811
    with pytest.raises(FileNotFoundError, match="model.nli_teacher label"):
        run_train(data_dir, tmp_path / "run", "--stages", "nli:2", "--nli-teacher", str(tmp_path / "none"),
                  "--nli-pseudo", "toy")
