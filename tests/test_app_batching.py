"""MicroBatcher (with a fake compute) and TorchRunner (with a tiny model): batching, failures,
dropping, draining, and batching invariance."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
import torch

from app.batching import (AGING_TOKENS_PER_S, BatchFailed, Closed, DeadlineExceeded, MicroBatcher, Overloaded,
                          WorkItem, pass_cost)
from app.inference import TorchRunner
from app.metrics import Metrics
from app.outputs import cosine
from app.settings import Settings
from model.encoder import EncoderConfig, SentenceEncoder
from model.tokenizer import tokenizer_from_vocab
from conftest import TINY_VOCAB

torch.set_num_threads(1)

VOCAB = TINY_VOCAB


def tiny_model(nli_head: str = "pair", seed: int = 0) -> SentenceEncoder:
    torch.manual_seed(seed)
    cfg = EncoderConfig(vocab_size=len(VOCAB), dim=32, n_layers=1, n_heads=2, ffn_dim=64, max_len=32,
                        nli_head=nli_head, nli_hidden=16, embedding_options={"mlp_hidden": 32})
    return SentenceEncoder(cfg, tokenizer_from_vocab(VOCAB)).eval()


class Recorder:
    """Fake compute: upper-cases texts, records batch sizes, can block or fail on demand."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def __call__(self, items: list[WorkItem]) -> list[str]:
        self.batches.append([it.text for it in items])
        self.entered.set()
        assert self.release.wait(5), "test forgot to release the batch"
        if any(it.text == "boom" for it in items):
            raise RuntimeError("injected failure")
        return [it.text.upper() for it in items]


async def wait_until(cond, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not met in time"
        await asyncio.sleep(0.005)


def embed_items(*texts: str) -> list[WorkItem]:
    return [WorkItem("embed", t) for t in texts]


async def held_batcher(first: list[WorkItem] | None = None, **limits) -> tuple[Recorder, MicroBatcher, asyncio.Task]:
    """A started ``MicroBatcher`` (``max_wait_s`` 0, ``limits`` as given) over a ``Recorder`` whose
    first pass, over ``first`` (default one item "first"), is running and held: later submits queue
    until ``rec.release.set()``. Returns (recorder, batcher, the first submit's task)."""
    rec = Recorder()
    b = MicroBatcher(rec, max_wait_s=0.0, **limits)
    b.start()
    rec.release.clear()
    task = asyncio.create_task(b.submit(first if first is not None else embed_items("first")))
    await asyncio.to_thread(rec.entered.wait, 5)
    return rec, b, task


@pytest.mark.anyio
async def test_concurrent_submits_are_coalesced_and_ordered():
    rec = Recorder()
    b = MicroBatcher(rec, max_batch_size=16, max_wait_s=0.05, capacity=64)
    b.start()
    outs = await asyncio.gather(*(b.submit(embed_items(f"t{i}a", f"t{i}b")) for i in range(6)))
    await b.stop()
    assert outs == [[f"T{i}A", f"T{i}B"] for i in range(6)]
    assert max(len(x) for x in rec.batches) > 2  # items of several requests shared a batch
    assert all(len(x) <= 16 for x in rec.batches)


@pytest.mark.anyio
async def test_exception_fails_only_its_batch_and_worker_goes_on():
    rec, metrics = Recorder(), Metrics()
    b = MicroBatcher(rec, max_batch_size=1, max_wait_s=0.0, capacity=8, metrics=metrics)
    b.start()
    bad, good = await asyncio.gather(b.submit(embed_items("boom")), b.submit(embed_items("fine")),
                                     return_exceptions=True)
    assert isinstance(bad, BatchFailed) and good == ["FINE"]
    assert await b.submit(embed_items("after")) == ["AFTER"]
    assert metrics.registry.get_sample_value("pete_batch_failures_total") == 1
    await b.stop()


@pytest.mark.anyio
async def test_cancelled_items_are_dropped_before_compute():
    metrics = Metrics()
    rec, b, first = await held_batcher(max_batch_size=4, capacity=8, metrics=metrics)
    gone = asyncio.create_task(b.submit(embed_items("gone1", "gone2")))
    await wait_until(lambda: b.depth == 2)
    gone.cancel()  # the client went away while its items waited
    kept = asyncio.create_task(b.submit(embed_items("kept")))
    rec.release.set()
    assert await first == ["FIRST"] and await kept == ["KEPT"]
    assert all("gone1" not in batch and "gone2" not in batch for batch in rec.batches)
    assert metrics.registry.get_sample_value("pete_dropped_items_total") == 2
    await b.stop()


@pytest.mark.anyio
async def test_full_queue_raises_overloaded_all_or_none():
    rec, b, running = await held_batcher(embed_items("x"), max_batch_size=1, capacity=3)
    queued = asyncio.create_task(b.submit(embed_items("y", "z")))
    await wait_until(lambda: b.depth == 2)
    with pytest.raises(Overloaded):
        await b.submit(embed_items("p", "q"))  # 2 items, 1 slot left: refused whole
    assert b.depth == 2
    rec.release.set()
    assert await running == ["X"] and await queued == ["Y", "Z"]
    await b.stop()


def costly(text: str, cost: int) -> WorkItem:
    return WorkItem("embed", text, cost=cost)


@pytest.mark.anyio
async def test_the_shortest_request_goes_first_so_a_short_request_rides_in_the_next_batch():
    """A 2-item request queued behind a 12-item one of the same cost per item (100 tokens) is not
    served after it (FIFO) but first in the next batch, the long request's items filling it; every
    output still goes to its own request, in order."""
    rec, b, first = await held_batcher(max_batch_size=4, capacity=64)
    long = asyncio.create_task(b.submit([costly(f"l{i}", 100) for i in range(12)]))
    await wait_until(lambda: b.depth == 12)
    short = asyncio.create_task(b.submit([costly("s0", 100), costly("s1", 100)]))
    await wait_until(lambda: b.depth == 14)
    rec.release.set()
    assert await short == ["S0", "S1"] and await first == ["FIRST"]
    assert await long == [f"L{i}" for i in range(12)]
    assert rec.batches[1] == ["s0", "s1", "l0", "l1"]  # each request's items in order
    assert rec.batches[2:] == [["l2", "l3", "l4", "l5"], ["l6", "l7", "l8", "l9"], ["l10", "l11"]]
    await b.stop()


@pytest.mark.anyio
async def test_cheap_requests_go_first_and_long_texts_run_four_per_pass_under_the_default_budget():
    """Behind a request of eight 128-token texts (1,024 tokens), requests of 2 and 40 14-token texts
    (560) arriving later go first (shortest first; a long text would take the pass past the budget)
    in one pass (pass_cost 15.5 each, 65 would fit), then the long texts four per pass."""
    budget = Settings().batch_token_budget
    assert pass_cost(4, 128) <= budget < pass_cost(5, 128) and pass_cost(65, 14) <= budget < pass_cost(66, 14)
    rec, b, first = await held_batcher(max_batch_size=128, capacity=256, max_batch_cost=budget)
    long = asyncio.create_task(b.submit([costly(f"l{i}", 128) for i in range(8)]))
    await wait_until(lambda: b.depth == 8)
    short = asyncio.create_task(b.submit([costly("s0", 14), costly("s1", 14)]))
    many = asyncio.create_task(b.submit([costly(f"m{i}", 14) for i in range(40)]))
    await wait_until(lambda: b.depth == 50)
    rec.release.set()
    assert await first == ["FIRST"] and len(await long) == 8 and await short == ["S0", "S1"] and len(await many) == 40
    assert rec.batches[1] == ["s0", "s1"] + [f"m{i}" for i in range(40)]  # the shortest first
    assert rec.batches[2:] == [[f"l{i}" for i in range(4)], [f"l{i}" for i in range(4, 8)]]
    await b.stop()


@pytest.mark.anyio
async def test_an_expensive_request_is_not_passed_for_ever():
    """Aging: a request costing 500 tokens (0.05 s at AGING_TOKENS_PER_S) goes after a cheap one
    that arrives at once, but before a cheap one that arrives 0.1 s later (pure shortest-first
    let such requests wait behind a stream of cheaper ones until they timed out)."""
    assert 500 / AGING_TOKENS_PER_S < 0.08
    for delay, expected in ((0.0, ["cheap", "big"]), (0.1, ["big", "cheap"])):
        rec, b, first = await held_batcher(max_batch_size=1, capacity=64)
        big = asyncio.create_task(b.submit([costly("big", 500)]))
        await wait_until(lambda: b.depth == 1)
        await asyncio.sleep(delay)
        cheap = asyncio.create_task(b.submit([costly("cheap", 20)]))
        await wait_until(lambda: b.depth == 2)
        rec.release.set()
        assert await first == ["FIRST"] and await big == ["BIG"] and await cheap == ["CHEAP"]
        assert [x for (x,) in rec.batches[1:]] == expected, delay
        await b.stop()


@pytest.mark.anyio
async def test_a_costly_item_over_the_budget_still_runs_alone():
    rec, b, first = await held_batcher(max_batch_size=16, capacity=64, max_batch_cost=100)
    work = asyncio.create_task(b.submit([costly("big", 500)]))
    await wait_until(lambda: b.depth == 1)
    rec.release.set()
    assert await first == ["FIRST"] and await work == ["BIG"]
    assert rec.batches[1:] == [["big"]]
    await b.stop()


@pytest.mark.anyio
async def test_admission_charges_cost_as_well_as_items():
    """A queue with room for 64 items but 100 tokens refuses a request whose cost does not fit
    (all or none), keeps its last eighth (12 tokens) from requests of an eighth or more, and
    takes a cheap one there."""
    # running: no longer charged to the queue
    rec, b, running = await held_batcher([costly("x", 88)], max_batch_size=1, capacity=64, cost_capacity=100)
    queued = asyncio.create_task(b.submit([costly("y", 80)]))
    await wait_until(lambda: b.depth == 1)
    assert b.queued_cost == 80
    with pytest.raises(Overloaded):
        await b.submit([costly("p", 10), costly("q", 20)])  # 2 of 64 items, but 110 > 100 tokens
    assert b.depth == 1 and b.queued_cost == 80
    with pytest.raises(Overloaded):
        await b.submit([costly("r", 15)])  # 95 <= 100, but 15 >= 12.5 may not use the reserve: 95 > 88
    assert not b.admits(1, 13) and b.admits(1, 12) and b.admits(1, 8)
    cheap = asyncio.create_task(b.submit([costly("c", 12)]))  # into the reserve
    await wait_until(lambda: b.depth == 2)
    rec.release.set()
    assert await running == ["X"] and await queued == ["Y"] and await cheap == ["C"]
    assert b.queued_cost == 0
    await b.stop()


@pytest.mark.anyio
async def test_continuous_batching_runs_a_lone_item_at_once_and_batches_what_arrives_meanwhile():
    """max_wait 0 (the default): a request on an idle model runs without waiting for company, even
    with a large wait budget elsewhere; work arriving during that forward pass forms the next batch."""
    rec = Recorder()
    b = MicroBatcher(rec, max_batch_size=16, max_wait_s=0.0, capacity=64)
    b.start()
    rec.release.clear()
    first = asyncio.create_task(b.submit(embed_items("a")))
    assert await asyncio.to_thread(rec.entered.wait, 2)  # computing "a" alone, nothing else was queued
    later = [asyncio.create_task(b.submit(embed_items(t))) for t in ("b", "c", "d")]
    await wait_until(lambda: b.depth == 3)
    rec.release.set()
    assert await first == ["A"] and [await t for t in later] == [["B"], ["C"], ["D"]]
    await b.stop()
    assert rec.batches == [["a"], ["b", "c", "d"]]

    waiting = Recorder()  # a positive max_wait: the idle model waits for the next items
    b = MicroBatcher(waiting, max_batch_size=16, max_wait_s=0.5, capacity=64)
    b.start()
    first = asyncio.create_task(b.submit(embed_items("a")))
    await asyncio.sleep(0.05)
    assert waiting.batches == []  # still gathering
    await b.submit(embed_items("b"))
    await first
    await b.stop()
    assert waiting.batches == [["a", "b"]]


@pytest.mark.anyio
async def test_deadline_exceeded_then_recovers():
    def slow(items):
        if items[0].text == "slow":
            time.sleep(0.3)
        return [it.text for it in items]

    b = MicroBatcher(slow, max_batch_size=4, max_wait_s=0.0, capacity=8)
    b.start()
    with pytest.raises(DeadlineExceeded):
        await b.submit(embed_items("slow"), timeout_s=0.05)
    assert await b.submit(embed_items("fast"), timeout_s=2) == ["fast"]
    await b.stop()


@pytest.mark.anyio
async def test_stop_drains_accepted_work_and_refuses_new():
    rec = Recorder()
    b = MicroBatcher(rec, max_batch_size=1, max_wait_s=0.0, capacity=8)
    b.start()
    rec.release.clear()
    accepted = [asyncio.create_task(b.submit(embed_items(f"w{i}"))) for i in range(3)]
    await asyncio.to_thread(rec.entered.wait, 5)
    stopping = asyncio.create_task(b.stop(timeout_s=5))
    await asyncio.sleep(0.01)
    with pytest.raises(Closed):
        await b.submit(embed_items("late"))
    rec.release.set()
    await stopping
    assert [await t for t in accepted] == [["W0"], ["W1"], ["W2"]]


@pytest.mark.anyio
async def test_stop_timeout_fails_leftovers_with_closed():
    rec = Recorder()
    b = MicroBatcher(rec, max_batch_size=1, max_wait_s=0.0, capacity=8)
    b.start()
    rec.release.clear()
    tasks = [asyncio.create_task(b.submit(embed_items(f"w{i}"))) for i in range(2)]
    await asyncio.to_thread(rec.entered.wait, 5)
    await b.stop(timeout_s=0.05)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, Closed) for r in results)
    rec.release.set()


# ---- TorchRunner: batching does not change results ------------------------------------------
OTHERS = ["a dog", "the woman plays the piano in the park and the child sleeps on the mat",
          "red", "a big blue dog runs in the street", "no", "the cat is not playing music"]


@pytest.mark.parametrize("head", ["pair", "align", "cross"])
def test_batching_invariance(head):
    model = tiny_model(head)
    passes: list[tuple[int, int]] = []
    runner = TorchRunner.for_model(model, max_tokens=32, max_batch_size=4, max_batch_tokens=40,
                         observe_pass=lambda n, t: passes.append((n, t)))
    a, b = "a man is playing a guitar", "the man plays music"
    alone = runner([WorkItem("embed", a), WorkItem("embed", b), WorkItem("nli", a, b)])
    mixed_items = ([WorkItem("embed", t) for t in OTHERS[:3]] + [WorkItem("nli", OTHERS[3], OTHERS[1])]
                   + [WorkItem("embed", b), WorkItem("nli", a, b)] + [WorkItem("embed", t) for t in OTHERS[3:]]
                   + [WorkItem("embed", a)])
    mixed = runner(mixed_items)
    va, vb, nli = mixed[-1], mixed[4], mixed[5]
    np.testing.assert_allclose(va.vector, alone[0].vector, atol=1e-5)
    np.testing.assert_allclose(vb.vector, alone[1].vector, atol=1e-5)
    np.testing.assert_allclose(nli.probabilities, alone[2].probabilities, atol=1e-5)
    assert abs(cosine(va.vector, vb.vector) - cosine(alone[0].vector, alone[1].vector)) < 1e-5
    # and both agree with the model's own API
    ref = model.similarity([a], [b])[0].item()
    assert abs(cosine(va.vector, vb.vector) - ref) < 1e-5
    np.testing.assert_allclose(nli.probabilities, model.predict_nli([a], [b])[0].numpy(), atol=1e-5)
    assert abs(float(nli.probabilities.sum()) - 1.0) < 1e-5
    # forward passes respected the limits (a single row may exceed the token budget alone)
    assert len(passes) > 2
    assert all(n <= 4 and (t <= 40 or n == 1) for n, t in passes)


@pytest.mark.parametrize("head", ["pair", "align"])
def test_a_pair_alone_and_in_a_batch_of_32_gets_the_same_probabilities(head):
    model = tiny_model(head)
    with torch.no_grad():  # a head far from uniform, so that a leak between rows would show
        for p in model.parameters():
            p.normal_(0, 0.3)
    runner = TorchRunner.for_model(model, max_tokens=32, max_batch_size=8, max_batch_tokens=200)
    a, b = "a man is playing a guitar", "the man plays music"
    alone = runner([WorkItem("nli", a, b)])[0].probabilities
    rng = np.random.default_rng(0)
    items = [WorkItem("nli", OTHERS[i], OTHERS[j]) for i, j in rng.integers(0, len(OTHERS), (31, 2))]
    items.insert(17, WorkItem("nli", a, b))
    batched = runner(items)
    np.testing.assert_allclose(batched[17].probabilities, alone, atol=1e-5, rtol=0)
    assert max(abs(o.probabilities - alone).max() for o in batched[:17]) > 1e-4  # other pairs differ


def test_truncation_is_flagged_not_rejected():
    model = tiny_model()
    runner = TorchRunner.for_model(model, max_tokens=6, max_batch_size=8, max_batch_tokens=1000)
    long = "the cat sat on the mat and the dog runs in the park"
    out = runner([WorkItem("embed", long), WorkItem("embed", "a cat"), WorkItem("nli", "a cat", long)])
    assert [o.truncated for o in out] == [True, False, True]
    assert out[0].tokens == 6 and out[1].tokens == 4


def test_length_chunks_split_on_rows_padded_tokens_and_padding():
    from app.outputs import length_chunks

    lengths = [2, 2, 3, 10, 10]
    assert list(length_chunks(range(5), lengths, max_rows=8, max_padded_tokens=1000)) == [[0, 1, 2, 3, 4]]
    assert list(length_chunks(range(5), lengths, max_rows=2, max_padded_tokens=1000)) == [[0, 1], [2, 3], [4]]
    assert list(length_chunks(range(5), lengths, max_rows=8, max_padded_tokens=20)) == [[0, 1, 2], [3, 4]]
    # adding row 3 (10 tokens) to [2, 2, 3] would make 40 padded tokens, 23 of them padding (58%)
    assert list(length_chunks(range(5), lengths, 8, 1000, max_padding=0.5)) == [[0, 1, 2], [3, 4]]
    assert list(length_chunks(range(5), lengths, 8, 1000, max_padding=0.6)) == [[0, 1, 2, 3, 4]]
    assert list(length_chunks(range(5), lengths, 8, 1000, max_padding=1.0)) == [[0, 1, 2, 3, 4]]


def test_estimated_tokens_tracks_the_tokenizer_and_caps_worst_cases():
    from tokenizers import Tokenizer

    from app.limits import estimated_tokens

    tok = Tokenizer.from_file(str(Settings().model_path / "tokenizer.json"))
    prose = ["A man is playing a guitar.", "Stocks fell sharply on Tuesday, led by banks (down 4%).",
             "Obama's plan won't pass, senators say."]
    for text in prose:
        true = len(tok.encode(text).ids)
        assert 0.7 * true <= estimated_tokens(WorkItem("embed", text), 128) <= 1.4 * true, text
    for worst in ("a " * 5000, "!" * 8000, "x" * 10_000 + " y" * 100):
        assert estimated_tokens(WorkItem("embed", worst), 128) <= 128
    assert estimated_tokens(WorkItem("embed", "a " * 5000), 128) == 128
    assert estimated_tokens(WorkItem("embed", "!" * 8000), 128) == 128
    pair = WorkItem("nli", "a dog runs", "a cat sleeps")
    assert estimated_tokens(pair, 128) == 2 * estimated_tokens(WorkItem("embed", "a dog runs"), 128)
