"""Batch invariance and continuous batching (engine.scheduler): a sequence's logits and tokens are the
same bits whether it runs alone or beside other sequences joining at any step, and they are llama.cpp's
for the same tokens evaluated one at a time."""
import threading

import llama_cpp
import numpy as np
import pytest

from engine import Llama, scheduler
from engine.completion import completion_sampler
from engine.isa import ISAS
from engine.operands import Weight
from engine.scheduler import Scheduler
from kernels import layers
from kernels.matmul import Matrix
from tests.helpers import random_tokens
from tests.kernel_inputs import PRODUCT_TYPES, activations, random_weights
from tests.model_files import quiet_llama_cpp

SPEC = dict(dim=256, n_layers=2, n_heads=4, n_kv_heads=2, ffn=512)  # its Q4_K_M file mixes Q4_K and Q6_K


@pytest.fixture(scope="module")
def k_quant_model(make_model):
    return make_model("Q4_K_M", **SPEC)


@pytest.fixture(scope="module")
def q2_K_model(make_model):
    """Q2_K beside Q3_K and Q4_K: the Q2_K that llama.cpp built for AVX-512 repacks."""
    return make_model("Q2_K", **SPEC)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("type_", PRODUCT_TYPES, ids=lambda t: t.name)
def test_rowwise_product_rows_are_one_row_products(type_, isa):
    """In the orders of either llama.cpp build: its repacked kernels (Q2_K's too on AVX-512), tinyBLAS's tiles."""
    rng = np.random.default_rng(int(type_))
    data = random_weights(rng, type_, 24, 512)
    w = Matrix(data, int(type_), 512, repacked=Weight("w", type_, 512, 24, data).repacked(isa), isa=ISAS.index(isa))
    x = activations(rng, 9, 512)
    alone = np.concatenate([w.matmul(x[t:t + 1]) for t in range(9)])   # (9, 24)
    assert np.array_equal(w.matmul(x, 2, rowwise=True), alone)
    assert np.array_equal(w.matmul(x[3:5], 1, rowwise=True), alone[3:5])


@pytest.mark.parametrize("isa", ISAS)
def test_rowwise_attention_rows_are_one_row_calls(isa):
    rng = np.random.default_rng(1)
    k, v = (rng.standard_normal((2, 80, 64)).astype(np.float16) for _ in range(2))
    q = rng.standard_normal((9, 4, 64)).astype(np.float32)
    i = ISAS.index(isa)
    alone = np.concatenate([layers.attention(q[t:t + 1], k, v, 40 + t, 0.125, 1, isa=i) for t in range(9)])
    assert np.array_equal(layers.attention(q, k, v, 40, 0.125, 2, rowwise=True, isa=i), alone)
    assert not np.array_equal(layers.attention(q, k, v, 40, 0.125, 2, isa=i), alone)  # what the flag changes


@pytest.mark.parametrize("backend", ["cython", "numpy"])
def test_batch_invariant_logits_are_llama_cpp_one_token_at_a_time(k_quant_model, backend):
    """The invariant path's logits for a whole prompt are llama.cpp's decode path: every token its own batch."""
    tokens = random_tokens(3, 12)
    quiet_llama_cpp()
    ref = llama_cpp.Llama(str(k_quant_model), n_ctx=64, n_batch=1, n_ubatch=1, logits_all=True, n_threads=1,
                          verbose=False)
    ref.eval(tokens)
    want = np.array(ref.scores[:len(tokens)], np.float32)
    ref.close()
    with Llama(k_quant_model, n_ctx=64, backend=backend, batch_invariant=True) as llm:
        assert np.array_equal(llm.eval_logits(tokens), want)
    with Llama(k_quant_model, n_ctx=64, backend=backend) as llm:  # the prompt-batch path is another sum
        assert not np.array_equal(llm.eval_logits(tokens), want)


def test_plain_backend_is_not_batch_invariant(k_quant_model):
    with pytest.raises(ValueError):
        Llama(k_quant_model, backend="plain", batch_invariant=True)


class Recorder:
    """A sampler that keeps a copy of every logits vector it is shown; ``on_call(i)`` runs before call i."""

    def __init__(self, sampler, on_call=lambda i: None):
        self.sampler, self.on_call, self.seen = sampler, on_call, []

    def __call__(self, logits):
        self.on_call(len(self.seen))
        self.seen.append(logits.copy())
        return self.sampler(logits)

    def accept(self, token):
        self.sampler.accept(token)


def sampler(seeded: bool, n_vocab: int):
    return completion_sampler(n_vocab, temperature=0.8 if seeded else 0, top_p=0.95, top_k=40, min_p=0.05,
                              typical_p=1.0, repeat_penalty=1.1, frequency_penalty=0.0, presence_penalty=0.0,
                              mirostat_mode=0, mirostat_tau=5.0, mirostat_eta=0.1, seed=7)


def generate(sched: Scheduler, prompt: list[int], max_tokens: int, seeded: bool, on_call=lambda i: None,
             cached: bool = True):
    """(tokens, logits seen) of one generation on a slot of ``sched``; not ``cached``, the slot's cache
    is cut to the prompt's first token first, so the rest of the prompt is evaluated afresh."""
    with sched.lease(prompt) as llm:
        if not cached:
            llm.update(prompt[:1], n_past=0)
        recorder = Recorder(sampler(seeded, llm.n_vocab), on_call)
        tokens = list(llm.generate_tokens(prompt, recorder, max_tokens=max_tokens))
    return tokens, recorder.seen


@pytest.mark.parametrize("isa, model", [("avx2", "k_quant_model"), ("avx512", "q2_K_model")])
@pytest.mark.parametrize("seeded", [False, True], ids=["greedy", "seeded"])
def test_a_sequence_beside_others_gets_the_bits_it_gets_alone(request, monkeypatch, seeded, isa, model):
    """The same request alone, then beside 1..7 others that join before it and at its steps 0..6 with
    prompts of 1 to 45 tokens; with steps of 16 rows the prompts are cut differently each time, and
    every other time the request's prompt is evaluated afresh rather than found in the slot's cache.
    In the orders of either llama.cpp build (the guarantee is the engine's own, whichever is installed)."""
    monkeypatch.setattr(scheduler, "STEP_ROWS", 16)
    model = request.getfixturevalue(model)
    prompt = random_tokens(0, 21)
    sched = Scheduler(Llama(model, n_ctx=128, batch_invariant=True, ggml_isa=isa), 8)
    try:
        want_tokens, want_logits = generate(sched, prompt, 12, seeded)
        with Llama(model, n_ctx=128, batch_invariant=True, ggml_isa=isa) as library:  # the library's invariant path
            recorder = Recorder(sampler(seeded, library.n_vocab))
            assert list(library.generate_tokens(prompt, recorder, max_tokens=12)) == want_tokens
            assert all(np.array_equal(a, b) for a, b in zip(recorder.seen, want_logits))
        for k in range(1, 8):
            others = [random_tokens(100 * k + i, 1 + (9 * i + 5 * k) % 45) for i in range(k)]
            threads = [threading.Thread(target=generate, args=(sched, p, 4 + i, not seeded))
                       for i, p in enumerate(others)]
            early = k // 2  # these start first; the others join at the target's steps

            def join(step):
                if early + step < k:
                    threads[early + step].start()

            for t in threads[:early]:
                t.start()
            got_tokens, got_logits = generate(sched, prompt, 12, seeded, join, cached=k % 2 == 0)
            for t in threads:
                t.join()
            assert got_tokens == want_tokens, k
            assert len(got_logits) == len(want_logits) and all(np.array_equal(a, b) for a, b in
                                                               zip(got_logits, want_logits)), k
    finally:
        sched.close()


def test_a_leased_slot_that_hands_in_nothing_holds_up_no_step(k_quant_model, monkeypatch):
    """A request busy elsewhere (preparing its prompt, building its response) leaves the generating
    ones to step without it: with a gather wait of a minute, eight tokens beside it still come at once,
    and they are the tokens the request gets alone."""
    monkeypatch.setattr(scheduler, "GATHER_S", 60.0)
    prompt = random_tokens(5, 9)
    sched = Scheduler(Llama(k_quant_model, n_ctx=64, batch_invariant=True), 2)
    try:
        want, _ = generate(sched, prompt, 8, True)
        got = []
        with sched.lease():
            worker = threading.Thread(target=lambda: got.append(generate(sched, prompt, 8, True)[0]))
            worker.start()
            worker.join(timeout=30)
            assert not worker.is_alive(), "the steps waited for the idle lease"
        assert got == [want]
    finally:
        sched.close()
