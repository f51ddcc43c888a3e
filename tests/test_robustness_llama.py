"""The Llama object under misuse: thread counts, interrupted evaluations, threads, seeds, the logits
array, the default context, and state after close or from a bad snapshot."""
import threading

import numpy as np
import pytest

from engine import DEFAULT_MODEL, ArgumentError, ContextOverflowError, Llama, LlamaError, LlamaState
from engine.errors import TokenizerError
from engine.sampling import greedy
from engine.threads import MAX_THREADS

SMALL = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn=128, n_ctx=128)
BOS = 1


@pytest.fixture(scope="module")
def small_model(make_model):
    return make_model(**SMALL)


@pytest.fixture
def llm(small_model):
    with Llama(small_model, n_ctx=64, backend="numpy") as llm:
        yield llm


@pytest.fixture(scope="module")
def fresh(small_model):
    """A second Llama on the same file: what evaluating tokens from scratch gives."""
    with Llama(small_model, n_ctx=64, backend="numpy") as fresh:
        yield fresh


@pytest.fixture(scope="module")
def shakespeare():
    with Llama(DEFAULT_MODEL, n_ctx=256, n_threads=1) as llm:
        yield llm


# -- 1. thread counts

@pytest.mark.parametrize("n_threads", [MAX_THREADS + 1, 50_000, 100_000, 2**31 - 1, 0, -1, True, 2.0])
def test_thread_counts_past_the_bound_are_refused_at_construction(n_threads):
    with pytest.raises(ArgumentError, match=f"n_threads must be an integer from 1 to {MAX_THREADS}"):
        Llama(DEFAULT_MODEL, n_threads=n_threads)


def test_the_compiled_backend_applies_the_same_bound():
    backend = pytest.importorskip("engine.compiled")
    from kernels import parallel
    with pytest.raises(ArgumentError, match="n_threads"):
        backend.CythonBackend(n_threads=MAX_THREADS + 1)
    with pytest.raises(ValueError, match=f"n_threads must be an integer from 1 to {MAX_THREADS}"):
        parallel.parallel_sum(np.ones(4, np.float32), 100_000)  # the kernels' own check, the same bound
    assert parallel.MAX_THREADS == MAX_THREADS
    assert backend.CythonBackend(n_threads=np.int64(2)).n_threads == 2


def test_the_bound_itself_runs(small_model, fresh):
    with Llama(small_model, n_ctx=16, n_threads=MAX_THREADS) as llm:
        np.testing.assert_array_equal(llm.get_logits([BOS, 5, 6]), fresh.get_logits([BOS, 5, 6]))


# -- 3. an exception inside the forward pass

def interrupt_at(monkeypatch, llm, call):
    """Raise KeyboardInterrupt from the ``call``-th feed-forward block (1-based), after that
    layer's attention has written its keys and values for the batch."""
    calls = iter(range(1, 10**6))
    real = llm.model.feed_forward

    def feed_forward(*args):
        if next(calls) == call:
            raise KeyboardInterrupt
        return real(*args)
    monkeypatch.setattr(llm.model, "feed_forward", feed_forward)


def test_interrupted_rewind_cuts_back_to_the_rewind_point(llm, fresh, monkeypatch):
    old, new = [BOS, 10, 11, 12, 13, 14, 15, 16], [20, 21, 22]
    llm.update(old)
    with monkeypatch.context() as m:
        interrupt_at(m, llm, call=2)  # layer 1 of the only batch: layer 0 has overwritten rows 3..5
        with pytest.raises(KeyboardInterrupt):
            llm.update(new, n_past=3)
    assert llm.n_past == 3 and llm.cached_tokens == old[:3]
    with pytest.raises(LlamaError, match="no logits"):
        llm.logits
    llm.update(new)
    np.testing.assert_array_equal(llm.logits, fresh.get_logits(old[:3] + new))


@pytest.mark.parametrize("method", ["update", "eval_logits"])
def test_interrupted_second_batch_keeps_the_first(llm, fresh, monkeypatch, method):
    monkeypatch.setattr("engine.llama.BATCH", 4)
    tokens = [BOS] + list(range(30, 39))                                   # 10 tokens: batches of 4, 4, 2
    llm.update([BOS, 7, 8])
    with monkeypatch.context() as m:
        interrupt_at(m, llm, call=SMALL["n_layers"] + 1)                    # layer 0 of the second batch
        with pytest.raises(KeyboardInterrupt):
            getattr(llm, method)(tokens, n_past=0)
    assert llm.n_past == 4 and llm.cached_tokens == tokens[:4] and llm.n_evaluated == 3 + 4
    # the logits of a whole batch's last row, as eval_logits computes them, or of that row alone
    expected = fresh.eval_logits(tokens[:4])[-1] if method == "eval_logits" else fresh.get_logits(tokens[:4])
    np.testing.assert_array_equal(llm.logits, expected)
    llm.update(tokens[4:])
    np.testing.assert_array_equal(llm.logits, fresh.get_logits(tokens))


def test_interrupted_append_keeps_the_previous_logits(llm, fresh, monkeypatch):
    llm.update([BOS, 40, 41])
    with monkeypatch.context() as m:
        interrupt_at(m, llm, call=1)
        with pytest.raises(KeyboardInterrupt):
            llm.update([42, 43])
    assert llm.n_past == 3 and llm.cached_tokens == [BOS, 40, 41]
    np.testing.assert_array_equal(llm.logits, fresh.get_logits([BOS, 40, 41]))
    llm.update([42, 43])
    np.testing.assert_array_equal(llm.logits, fresh.get_logits([BOS, 40, 41, 42, 43]))


# -- 5. one Llama, several threads

PROMPTS = ["ROMEO:", "JULIET:\nO", "First Citizen:\nWe are", "KING HENRY:\nNow", "To be, or"]


def run_threads(target, args_list, timeout=120):
    threads = [threading.Thread(target=target, args=args, daemon=True) for args in args_list]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a thread is still waiting: deadlock"


def test_threads_sharing_a_llama_get_the_texts_one_thread_gets(shakespeare):
    alone = [shakespeare.generate_string(p, sampler=greedy, max_tokens=24) for p in PROMPTS]
    results, start = {}, threading.Barrier(len(PROMPTS))

    def generate(i):
        start.wait()
        for repeat in range(3):
            results[i, repeat] = shakespeare.generate_string(PROMPTS[i], sampler=greedy, max_tokens=24)
    run_threads(generate, [(i,) for i in range(len(PROMPTS))])
    assert results == {(i, r): alone[i] for i in range(len(PROMPTS)) for r in range(3)}


def test_a_generation_holds_the_llama_until_closed_or_collected(shakespeare):
    prompt_logits = shakespeare.get_logits("ROMEO:").copy()
    for finish in ("close", "del"):
        gen = shakespeare.generate("ROMEO:", sampler=greedy, max_tokens=8)
        next(gen)
        waiter = threading.Thread(target=shakespeare.get_logits, args=("ROMEO:",), daemon=True)
        waiter.start()
        waiter.join(0.2)
        assert waiter.is_alive()  # waits for the open generation
        if finish == "close":
            gen.close()
        del gen
        waiter.join(30)
        assert not waiter.is_alive()
        np.testing.assert_array_equal(shakespeare.logits, prompt_logits)


def test_a_generation_resumed_on_another_thread_finishes(shakespeare):
    whole = shakespeare.generate_string("JULIET:", sampler=greedy, max_tokens=12)
    gen = shakespeare.generate("JULIET:", sampler=greedy, max_tokens=12)
    first = next(gen)
    rest = []
    run_threads(lambda: rest.extend(gen), [()], timeout=60)
    assert first + "".join(rest) == whole
    run_threads(shakespeare.get_logits, [("JULIET:",)], timeout=30)  # released on the other thread


def test_a_sampler_may_call_back_into_the_llama(shakespeare):
    def peeking(logits):
        assert shakespeare.save_state().n_past == shakespeare.n_past
        return greedy(logits)
    assert (shakespeare.generate_string("ROMEO:", sampler=peeking, max_tokens=6)
            == shakespeare.generate_string("ROMEO:", sampler=greedy, max_tokens=6))


# -- 6. the Llama's seed

def test_the_llama_seed_seeds_generation():
    def text(seed):
        with Llama(DEFAULT_MODEL, n_ctx=128, n_threads=1, seed=seed) as llm:
            return [llm.generate_string("ROMEO:", max_tokens=40) for _ in range(2)]
    first, again, other = text(1), text(1), text(2)
    assert first[0] == first[1] == again[0] == again[1]
    assert other[0] == other[1] != first[0]


@pytest.mark.parametrize("seed", [-5, -1, 2**32, 1.5, True, "1"])
def test_bad_seeds_are_refused(seed):
    with pytest.raises(ArgumentError, match="seed"):
        Llama(DEFAULT_MODEL, seed=seed)


# -- 10. the logits array

def test_logits_cannot_be_written_through(llm):
    llm.update([BOS, 50, 51])
    for logits in (llm.logits, llm.get_logits([BOS, 50, 51])):
        with pytest.raises(ValueError, match="read-only"):
            logits[0] = 0
    logits = llm.logits
    with pytest.raises(ValueError, match="read-only"):
        logits /= 2


def test_a_sampler_editing_its_logits_changes_nothing_else(llm):
    llm.update([BOS], n_past=0)  # each run below then evaluates the same [60, 61] after the cached BOS
    plain = list(llm.steps([BOS, 60, 61], sampler=greedy, max_tokens=4))
    after = llm.logits.copy()

    def sharpening(logits):
        logits /= 0.1
        return greedy(logits)
    llm.update([BOS], n_past=0)
    sharpened = list(llm.steps([BOS, 60, 61], sampler=sharpening, max_tokens=4))
    assert sharpened == plain
    np.testing.assert_array_equal(llm.logits, after)


# -- 11. the default context

def test_default_context_is_capped_but_an_explicit_one_is_honoured(make_model):
    path = make_model(**(SMALL | dict(n_ctx=5_000_000)))
    with Llama(path, backend="numpy") as llm:
        assert llm.n_ctx == 4096 and llm.cache.k.shape[2] == 4096
    with Llama(path, n_ctx=8192, backend="numpy") as llm:
        assert llm.n_ctx == 8192
    with Llama(make_model(**SMALL), n_ctx=200) as llm:  # past the training context of 128
        assert llm.n_ctx == 200 and llm.eval_logits([BOS] + list(range(2, 141))).shape == (140, llm.n_vocab)


# -- 12. state, closing, and argument types

def test_every_call_after_close_raises_llama_error(small_model):
    llm = Llama(small_model, n_ctx=16, backend="numpy")
    llm.update([BOS, 5])
    state = llm.save_state()
    llm.close()
    calls = [lambda: llm.update([BOS]), lambda: llm.get_logits([BOS]), lambda: llm.eval_logits([BOS]),
             lambda: llm.logits, llm.save_state, lambda: llm.load_state(state),
             lambda: llm.generate_string([BOS], max_tokens=2), lambda: list(llm.steps([BOS], max_tokens=2))]
    for call in calls:
        with pytest.raises(LlamaError, match="closed"):
            call()
    assert llm.n_past == 0 and llm.cached_tokens == []
    llm.close()


def broken_states(state, n_vocab):
    k = state.k.copy()
    k[0, 0, 1, 0] = np.nan
    v = state.v.copy()
    v[-1, -1, 0, -1] = np.inf
    return {
        "out-of-vocabulary token": (TokenizerError, LlamaState((BOS, n_vocab), state.k, state.v, state.logits)),
        "negative token": (TokenizerError, LlamaState((BOS, -1), state.k, state.v, state.logits)),
        "short logits": (ArgumentError, LlamaState(state.tokens, state.k, state.v, state.logits[:-1])),
        "float64 logits": (ArgumentError, LlamaState(state.tokens, state.k, state.v, state.logits.astype(np.float64))),
        "float32 cache": (ArgumentError, LlamaState(state.tokens, state.k.astype(np.float32), state.v, state.logits)),
        "NaN in the keys": (ArgumentError, LlamaState(state.tokens, k, state.v, state.logits)),
        "inf in the values": (ArgumentError, LlamaState(state.tokens, state.k, v, state.logits)),
        "logits without tokens": (ArgumentError, LlamaState((), state.k[:, :, :0], state.v[:, :, :0], state.logits)),
    }


@pytest.mark.parametrize("case", ["out-of-vocabulary token", "negative token", "short logits", "float64 logits",
                                  "float32 cache", "NaN in the keys", "inf in the values", "logits without tokens"])
def test_a_broken_state_is_refused_and_changes_nothing(llm, case):
    llm.update([BOS, 70])
    error, bad = broken_states(llm.save_state(), llm.n_vocab)[case]
    llm.update([BOS, 80, 81, 82], n_past=0)
    before = llm.save_state()
    with pytest.raises(error):
        llm.load_state(bad)
    after = llm.save_state()
    assert after.tokens == before.tokens and llm.n_past == 4
    np.testing.assert_array_equal(after.k, before.k)
    np.testing.assert_array_equal(after.logits, before.logits)


@pytest.mark.parametrize("n_past", [True, False, 1.0, np.float64(1)])
def test_positions_must_be_integers(llm, n_past):
    llm.update([BOS, 2, 3])
    with pytest.raises(ArgumentError, match="n_past"):
        llm.update([5], n_past=n_past)
    with pytest.raises(ArgumentError, match="n_past"):
        llm.eval_logits([5], n_past=n_past)
    assert llm.n_past == 3


def test_numpy_integers_are_accepted(small_model, fresh):
    with Llama(small_model, n_ctx=np.int64(8), n_threads=np.int32(1), seed=np.uint32(3), backend="numpy") as llm:
        assert llm.n_ctx == 8 and type(llm.n_ctx) is int
        llm.update([BOS, 5, 6])
        llm.update([np.int64(7)], n_past=np.int64(2))
        fresh.update([BOS, 5, 6], n_past=0)
        fresh.update([7], n_past=2)
        np.testing.assert_array_equal(llm.logits, fresh.logits)
        with pytest.raises(ArgumentError, match="n_ctx"):
            Llama(small_model, n_ctx=8.0)
        with pytest.raises(ContextOverflowError):
            llm.update(list(range(2, 9)))


def test_out_of_vocabulary_ids_raise_tokenizer_errors(llm):
    with pytest.raises(TokenizerError, match="out of range"):
        llm.update([BOS, llm.n_vocab])
    with pytest.raises(TokenizerError, match="out of range"):
        llm.generate_string([BOS], sampler=lambda logits: llm.n_vocab, max_tokens=1)
    with pytest.raises(TokenizerError, match="out of range"):
        llm.generate_string([BOS], logit_bias={-3: 1.0}, max_tokens=1)
