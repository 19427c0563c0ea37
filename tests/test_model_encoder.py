"""SentenceEncoder (model/encoder.py) and tokenizers (model/tokenizer.py) on tiny models: padding
invariance, masked mean pooling, save/load round trip, NLI probabilities, the frequency-ranked
tokenizer, and the bundled checkpoint when it exists."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from app.inference import model_nbytes
from model.encoder import (NLI_LABELS, AlignHead, EncoderConfig, Packing, SentenceEncoder, mean_pool,
                           mean_pool_packed)
from model.quantize import Int8Linear, quantize_linear_int8, weight_tensors
from model.tokenizer import (
    SPECIAL_TOKENS,
    build_bert_tokenizer,
    build_frequency_ranked_tokenizer,
    tokenizer_from_vocab,
)

torch.set_num_threads(1)
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BERT_VOCAB = SHARED_DATA / "bert-base-uncased" / "vocab.txt.gz"
CHECKPOINT = Path(__file__).resolve().parents[1] / "model" / "checkpoints" / "default"

TEXTS = [
    "A man is playing a guitar.",
    "A person plays the guitar.",
    "The stock market fell sharply today.",
    "Two dogs run across the snowy field while a child watches them from the porch.",
    "a",
]


def tiny_vocab(texts) -> list[str]:
    """Special tokens, every lower-cased word and punctuation mark of ``texts``, and a few pieces."""
    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())})
    return list(SPECIAL_TOKENS) + words + ["##s", "##ing", "play"]


def tiny_model(nli_head: str = "pair", embedding: str = "fourier_geo", seed: int = 0) -> SentenceEncoder:
    """dim 32, 1 layer; weights re-drawn with a large std so that any leak of padding shows."""
    torch.manual_seed(seed)
    vocab = tiny_vocab(TEXTS)
    options = {"mlp_hidden": 32} if embedding.startswith("fourier") else {}
    cfg = EncoderConfig(vocab_size=len(vocab), dim=32, n_layers=1, n_heads=2, ffn_dim=64, max_len=128,
                        embedding=embedding, embedding_options=options, nli_head=nli_head, nli_hidden=16)
    model = SentenceEncoder(cfg, tokenizer_from_vocab(vocab))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


def test_mean_pool_averages_valid_positions_only():
    states = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [1e6, -1e6]],
                           [[5.0, 6.0], [9e9, 9e9], [9e9, 9e9]],
                           [[7.0, 7.0], [7.0, 7.0], [7.0, 7.0]]])
    mask = torch.tensor([[True, True, False], [True, False, False], [False, False, False]])
    pooled = mean_pool(states, mask)
    torch.testing.assert_close(pooled, torch.tensor([[2.0, 3.0], [5.0, 6.0], [0.0, 0.0]]))


@pytest.mark.parametrize("embedding", ["fourier_geo", "learned", "hashed"])
def test_encoding_alone_equals_encoding_next_to_a_much_longer_text(embedding):
    model = tiny_model(embedding=embedding)
    long = " ".join(TEXTS * 3)  # ~60 tokens: the short text gets ~50 padding positions
    alone = model.encode([TEXTS[0]])[0]
    batched = model.encode([TEXTS[0], long], batch_size=2)[0]
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)
    # control: the padding would change the vector if it were pooled (the check above can fail)
    b = model.tokenize([TEXTS[0], long])
    assert b.attention_mask[0].sum() < b.attention_mask.shape[1] - 40
    states = model.encoder(b.input_ids, b.attention_mask)
    assert (states[0].mean(0) - alone).abs().max() > 1e-3


def test_packed_forward_skips_padding_and_matches_each_row_alone():
    model = tiny_model(embedding="learned")
    b = model.tokenize([TEXTS[4], TEXTS[3], TEXTS[0]])  # lengths 3, 17, 8: two rows padded
    with torch.inference_mode():
        states = model.encoder(b.input_ids, b.attention_mask)  # (B, T, d)
        packed, packing = model.encoder.forward_packed(b.input_ids, b.attention_mask)
        assert packed.shape == (sum(b.lengths), 32) and not packing.dense
        assert states[~b.attention_mask].abs().max() == 0  # padded positions: zeros, never computed
        for i, n in enumerate(b.lengths):
            alone = model.encoder(b.input_ids[i : i + 1, :n], b.attention_mask[i : i + 1, :n])[0]
            torch.testing.assert_close(states[i, :n], alone, atol=1e-5, rtol=0)
        torch.testing.assert_close(mean_pool_packed(packed, packing), mean_pool(states, b.attention_mask),
                                   atol=1e-5, rtol=0)
    p = Packing.from_mask(torch.tensor([[True, True, False], [True, False, False]]))
    assert p.index.tolist() == [0, 1, 3] and p.row.tolist() == [0, 0, 1] and p.counts.squeeze(1).tolist() == [2, 1]
    x = torch.arange(3.0).unsqueeze(1)
    torch.testing.assert_close(p.unpack(x).squeeze(-1), torch.tensor([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0]]))
    torch.testing.assert_close(p.pack(p.unpack(x)), x)


def test_int8_quantization_stays_close_and_counts_the_same_parameters(tmp_path):
    model = tiny_model()
    ref = model.encode(TEXTS)
    counts, nbytes = model.parameter_counts(), model_nbytes(model)
    with pytest.raises(ValueError, match="unknown quantization"):
        model.quantize("int4")
    assert model.quantize("none") is False and model.quantization == "none"
    assert model.quantize("int8") is True and model.quantization == "int8"
    assert model.quantize("int8") is True  # idempotent
    got = model.encode(TEXTS)
    assert not torch.equal(got, ref)
    assert F.cosine_similarity(got, ref).min() > 0.99
    assert model.parameter_counts() == counts
    # 4 linear weights of the block: 4 bytes -> 1 byte each (+ per-channel scales); the rest stays fp32
    block_weights = sum(m.weight.numel() for m in tiny_model().encoder.blocks.modules() if isinstance(m, torch.nn.Linear))
    assert nbytes - model_nbytes(model) >= 3 * block_weights - 8 * 1024
    probs = model.predict_nli(TEXTS[:2], TEXTS[1:3])
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))
    with pytest.raises(ValueError, match="quantized"):
        model.save_pretrained(tmp_path / "q")
    assert not (tmp_path / "q").exists()


def test_int8_linear_rows_do_not_depend_on_their_batch_mates():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48)
    q = Int8Linear(lin)
    x = torch.randn(10, 64)
    x[3] *= 1000.0  # one row with huge activations: a per-batch scale would crush the others
    with torch.inference_mode():
        together = q(x)
        for i in range(len(x)):
            assert torch.equal(q(x[i : i + 1])[0], together[i])  # exact: integer products, per-row scales
        ref = lin(x)
    rel = (together - ref).norm(dim=1) / ref.norm(dim=1)
    assert rel.max() < 0.02  # int8 error, every row (row 3 did not spoil the others)
    assert q.qweight.dtype == torch.int8 and q.qweight.shape == (64, 48) and q.bias.shape == (48,)
    blocks = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Sequential(torch.nn.Linear(8, 4, bias=False)))
    quantize_linear_int8(blocks)
    assert [type(m).__name__ for m in blocks.modules()].count("Int8Linear") == 2
    assert sum(t.numel() for t in weight_tensors(blocks)) == 8 * 8 + 8 + 8 * 4


def test_int8_model_keeps_a_sentence_independent_of_its_batch():
    model = tiny_model()
    model.quantize("int8")
    long = " ".join(TEXTS * 3)
    alone = model.encode([TEXTS[0]])[0]
    batched = model.encode([TEXTS[0], long, TEXTS[3]], batch_size=3)[0]
    torch.testing.assert_close(batched, alone, atol=1e-3 * alone.abs().max().item(), rtol=0)


@pytest.mark.parametrize("nli_head", ["pair", "align"])
def test_padding_invariance_of_nli_probabilities(nli_head):
    model = tiny_model(nli_head)
    long = " ".join(TEXTS * 3)
    alone = model.predict_nli([TEXTS[0]], [TEXTS[1]])
    batched = model.predict_nli([TEXTS[0], long], [TEXTS[1], long])[:1]
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)


def test_encode_keeps_input_order_and_batching_does_not_matter():
    model = tiny_model()
    one_by_one = torch.cat([model.encode([t]) for t in TEXTS])
    torch.testing.assert_close(model.encode(TEXTS, batch_size=2), one_by_one, atol=1e-5, rtol=0)
    normed = model.encode(TEXTS, normalize=True)
    torch.testing.assert_close(normed.norm(dim=-1), torch.ones(len(TEXTS)))
    sim = model.similarity(TEXTS[:2], TEXTS[1:3])
    torch.testing.assert_close(sim, F.cosine_similarity(one_by_one[:2], one_by_one[1:3]), atol=1e-5, rtol=0)


def test_tokenize_truncates_and_flags():
    model = tiny_model()
    b = model.tokenize([TEXTS[3], TEXTS[4]], max_tokens=6)
    assert b.input_ids.shape == (2, 6) and b.truncated == [True, False]
    assert b.lengths == [6, 3]
    sep = model.tokenizer.token_to_id("[SEP]")
    assert b.input_ids[0, -1] == sep and b.input_ids[1, 2] == sep and b.input_ids[1, 3:].eq(0).all()
    # max_tokens never exceeds config.max_len
    assert model.tokenize([" ".join(TEXTS * 5)], max_tokens=1000).input_ids.shape[1] == model.config.max_len


@pytest.mark.parametrize("nli_head", ["pair", "align", "cross"])
def test_predict_nli_returns_probabilities(nli_head):
    model = tiny_model(nli_head)
    premises, hypotheses = TEXTS[:4], TEXTS[1:5]
    probs = model.predict_nli(premises, hypotheses, batch_size=3)
    assert probs.shape == (4, len(NLI_LABELS)) and probs.dtype == torch.float32
    assert (probs >= 0).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(4))
    torch.testing.assert_close(probs, F.softmax(model.nli_logits(premises, hypotheses), -1), atol=1e-6, rtol=0)
    assert (probs[0] - probs[2]).abs().max() > 1e-4  # depends on the input
    assert model.predict_nli([], []).shape == (0, 3)
    with pytest.raises(ValueError):
        model.predict_nli(premises, hypotheses[:2])


def test_cross_head_reads_the_pair_jointly():
    model = tiny_model("cross")
    b = model.tokenize([TEXTS[0]], [TEXTS[1]])
    assert (b.input_ids[0] == model.tokenizer.token_to_id("[SEP]")).sum() == 2
    assert model.parameter_counts()["nli_head"] == 32 * 16 + 16 + 16 * 3 + 3


def test_align_head_is_not_symmetric_and_counts_its_parameters():
    model = tiny_model("align")
    forward = model.predict_nli([TEXTS[0]], [TEXTS[2]])
    swapped = model.predict_nli([TEXTS[2]], [TEXTS[0]])
    assert (forward - swapped).abs().max() > 1e-3
    d, h = model.config.dim, model.config.nli_hidden
    assert model.parameter_counts()["nli_head"] == 4 * d * h + 5 * h * h + 6 * h + 3
    assert sum(p.numel() for p in AlignHead(256, 192).parameters()) == 382_083  # the docstring's figure


def test_align_head_ignores_padding_in_its_inputs():
    """Padded positions of either side change nothing, whatever their values."""
    torch.manual_seed(0)
    head = AlignHead(8, 6).eval()
    a, b = torch.randn(1, 3, 8), torch.randn(1, 4, 8)
    ones_a, ones_b = torch.ones(1, 3, dtype=torch.bool), torch.ones(1, 4, dtype=torch.bool)
    ref = head(a, ones_a, b, ones_b)
    pad = lambda x, n: torch.cat((x, 1e3 * torch.randn(1, n, 8)), dim=1)  # noqa: E731
    mask = lambda m, n: torch.cat((m, torch.zeros(1, n, dtype=torch.bool)), dim=1)  # noqa: E731
    torch.testing.assert_close(head(pad(a, 5), mask(ones_a, 5), pad(b, 2), mask(ones_b, 2)), ref, atol=1e-5, rtol=0)


def test_set_nli_head_replaces_the_head_and_rejects_unknown_kinds():
    model = tiny_model("pair")
    model.set_nli_head("align", 12)
    assert isinstance(model.nli_head, AlignHead) and model.config.nli_head == "align"
    assert model.config.nli_hidden == 12 and not model.nli_joint
    assert model.predict_nli(TEXTS[:2], TEXTS[1:3]).shape == (2, 3)
    with pytest.raises(ValueError, match="unknown nli_head"):
        model.set_nli_head("bilinear")


@pytest.mark.parametrize("nli_head", ["pair", "align", "cross"])
def test_save_load_round_trip(tmp_path, nli_head):
    model = tiny_model(nli_head)
    before_vec = model.encode(TEXTS)
    before_nli = model.predict_nli(TEXTS[:3], TEXTS[2:5])
    model.tokenize(TEXTS, max_tokens=4)  # a truncation setting must not leak into the saved tokenizer
    model.save_pretrained(tmp_path / "ckpt")
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {"config.json", "model.safetensors", "tokenizer.json"}
    loaded = SentenceEncoder.from_pretrained(tmp_path / "ckpt")
    assert not loaded.training
    assert loaded.config == model.config
    assert loaded.tokenizer.get_vocab() == model.tokenizer.get_vocab()
    assert loaded.tokenizer.truncation is None
    for text in TEXTS:
        assert loaded.tokenizer.encode(text).ids == model.tokenizer.encode(text).ids
    assert torch.equal(loaded.encode(TEXTS), before_vec)
    assert torch.equal(loaded.predict_nli(TEXTS[:3], TEXTS[2:5]), before_nli)
    assert loaded.parameter_counts() == model.parameter_counts()


def test_from_pretrained_reports_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        SentenceEncoder.from_pretrained(tmp_path)


@pytest.mark.parametrize("name", ["tokenizer.json", "config.json", "model.safetensors"])
def test_from_pretrained_names_the_corrupt_file(tmp_path, name):
    tiny_model().save_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / name).write_text("{not what it should be")
    with pytest.raises(ValueError, match=f"{tmp_path / 'ckpt' / name} is not a valid {name}"):
        SentenceEncoder.from_pretrained(tmp_path / "ckpt")


def test_materialize_embeddings_keeps_outputs():
    model = tiny_model()
    before = model.encode(TEXTS)
    assert model.materialize_embeddings() is True
    torch.testing.assert_close(model.encode(TEXTS), before, atol=1e-5, rtol=0)
    assert tiny_model(embedding="learned").materialize_embeddings() is False


def test_parameter_counts_add_up():
    model = tiny_model()
    c = model.parameter_counts()
    assert c["total"] == sum(p.numel() for p in model.parameters())
    assert c["total"] == c["embedding"] + c["encoder"] + c["nli_head"]
    assert c["embedding"] == 2 * 32 * 32 + 32 + 32  # PETE MLP 32 -> 32 -> 32, independent of V


# ---- tokenizers ----------------------------------------------------------------------------------
RANK_SENTENCES = [
    "The dog chased the cat across the garden.",
    "The children are playing football in the park.",
    "A woman reads the newspaper; the man is cooking dinner.",
    "Unbelievably, the xylophonist played the zither!",
]


VOCAB_SOURCES = [
    pytest.param("tiny", id="tiny-vocab"),
    pytest.param("bert", id="bert-vocab", marks=pytest.mark.skipif(
        not BERT_VOCAB.is_file(), reason=f"BERT vocab not found at {BERT_VOCAB} (shared data absent)")),
]


@pytest.mark.parametrize("source", VOCAB_SOURCES)
def test_frequency_ranked_tokenizer_permutes_bert_ids(tmp_path, source):
    if source == "bert":
        vocab_path = BERT_VOCAB
        bert = build_bert_tokenizer(vocab_path)
    else:
        vocab = ["[PAD]", "zebra", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + tiny_vocab(RANK_SENTENCES)[5:]
        vocab_path = tmp_path / "vocab.txt"
        vocab_path.write_text("\n".join(vocab) + "\n")
        bert = tokenizer_from_vocab(vocab)
    ranked, perm = build_frequency_ranked_tokenizer(vocab_path, RANK_SENTENCES)
    assert sorted(perm) == list(range(bert.get_vocab_size()))  # a permutation
    probe = RANK_SENTENCES + ["An unseen qwertyuiop word, THE Dog!", "the the the"]
    for text in probe:
        e_bert, e_ranked = bert.encode(text), ranked.encode(text)
        assert e_ranked.tokens == e_bert.tokens  # same segmentation
        assert [perm[i] for i in e_ranked.ids] == e_bert.ids  # ids permuted: perm[new] = bert id
    for new_id, tok in enumerate(SPECIAL_TOKENS):
        assert ranked.token_to_id(tok) == new_id
    counts = Counter(t for s in RANK_SENTENCES for t in bert.encode(s, add_special_tokens=False).tokens)
    assert counts.most_common(2) == [("the", 9), (".", 3)]
    assert ranked.token_to_id("the") == 5
    # ids follow descending counts over the seen tokens
    seen = sorted(counts, key=lambda t: ranked.token_to_id(t))
    assert [counts[t] for t in seen] == sorted(counts.values(), reverse=True)
    assert max(ranked.token_to_id(t) for t in seen) == 4 + len(counts)


def test_tokenizer_from_vocab_requires_special_tokens():
    with pytest.raises(ValueError, match="special"):
        tokenizer_from_vocab(["[PAD]", "[UNK]", "hello"])


# ---- the bundled checkpoint ----------------------------------------------------------------------
@pytest.mark.skipif(not (CHECKPOINT / "config.json").is_file(),
                    reason=f"bundled checkpoint {CHECKPOINT} not there yet (being trained)")
@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_bundled_checkpoint_ranks_a_paraphrase_above_an_unrelated_pair_and_scores_it_low(quantize):
    model = SentenceEncoder.from_pretrained(CHECKPOINT)
    model.quantize(quantize)
    sim = model.similarity(["A man is playing a guitar.", "A man is playing a guitar."],
                           ["A person plays the guitar.", "The stock market fell sharply today."])
    assert sim[0] > sim[1]
    assert sim[1] < 0.5 < sim[0]  # cosines spread like the teacher's: unrelated low, paraphrase high
    probs = model.predict_nli(["A man is playing a guitar."], ["A person plays the guitar."])
    torch.testing.assert_close(probs.sum(-1), torch.ones(1))


NLI_EXAMPLES = [  # (premise, hypothesis, label): README's example and plain variations of it
    ("A man is playing a guitar on stage.", "A man is performing music.", "entailment"),
    ("A man is playing a guitar on stage.", "Nobody is playing an instrument.", "contradiction"),
    ("A man is playing a guitar on stage.", "The man is a famous musician.", "neutral"),
    ("Two dogs are running through a field.", "The dogs are sleeping.", "contradiction"),
    ("Two dogs are running through a field.", "Animals are outdoors.", "entailment"),
    ("A woman is reading a book in a park.", "A woman is reading a novel for a class.", "neutral"),
    ("A man is sleeping.", "A man is awake.", "contradiction"),
]


@pytest.mark.skipif(not (CHECKPOINT / "model.safetensors").is_file(), reason="no bundled checkpoint")
@pytest.mark.parametrize("quantize", [False, True], ids=["fp32", "int8"])
def test_bundled_checkpoint_answers_plain_nli_pairs(quantize):
    """The shipped NLI head, as evaluated and as served (int8), on pairs a user would try first."""
    model = SentenceEncoder.from_pretrained(CHECKPOINT)
    if quantize:
        model.quantize("int8")
    probs = model.predict_nli([p for p, _, _ in NLI_EXAMPLES], [h for _, h, _ in NLI_EXAMPLES])
    predicted = [NLI_LABELS[i] for i in probs.argmax(-1).tolist()]
    assert predicted == [y for *_, y in NLI_EXAMPLES]


def test_long_texts_are_cut_to_the_character_budget_before_tokenizing():
    from model.tokenizer import CHARS_PER_TOKEN

    model = tiny_model()
    budget = 8 * CHARS_PER_TOKEN
    prose = " ".join(["the cat sat on the mat"] * 200)  # far over the budget, and over 8 tokens long before it
    cut_by_hand = model.tokenize([prose[:budget]], max_tokens=8)
    tb = model.tokenize([prose, "a cat"], max_tokens=8)
    assert torch.equal(tb.input_ids[0], cut_by_hand.input_ids[0])  # what the model sees is unchanged
    assert tb.truncated == [True, False]
    spaced = "cat" + " " * (budget + 10) + "dog"  # few tokens, but longer than the budget: cut and flagged
    tb = model.tokenize([spaced], max_tokens=8)
    assert tb.truncated == [True] and tb.lengths == [3]  # [CLS] cat [SEP]: "dog" lay beyond the budget
    pair = model.tokenize(["a cat"], [spaced], max_tokens=8)
    assert pair.truncated == [True]


def test_auto_quantization_takes_int8_only_where_it_measures_faster():
    from model.quantize import INT8_MIN_SPEEDUP, int8_speedup, resolve_quantization

    calls = []

    def speedup(value):
        return lambda i, o: calls.append((i, o)) or value

    assert resolve_quantization("auto", 256, 1024, speedup(2.5)) == "int8"
    assert resolve_quantization("auto", 256, 1024, speedup(INT8_MIN_SPEEDUP - 0.01)) == "none"
    assert calls == [(256, 1024), (256, 1024)]  # measured at the model's feed-forward shape
    assert resolve_quantization("none", 256, 1024, speedup(9.0)) == "none"  # explicit settings: kept
    assert resolve_quantization("int8", 256, 1024, speedup(0.1)) == "int8"
    with pytest.raises(ValueError, match="unknown quantization"):
        resolve_quantization("int4", 256, 1024)
    assert int8_speedup(32, 64, rows=8, repeats=1) > 0  # a real measurement: a positive time ratio
