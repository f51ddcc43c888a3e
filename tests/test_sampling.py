"""Sampling against llama.cpp itself: each stage, each seeded sampler and the full chain are run side by
side with llama.cpp's samplers (through llama_cpp's C API, on candidate arrays we build with ctypes) and
must agree exactly: same candidates in the same order, bit-identical logits and probabilities, same picks.
"""

import llama_cpp as lc
import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from engine import libstdcxx
from engine import sampling as S
from engine.arguments import check_token
from engine.errors import TokenizerError
from tests.sampler_reference import Ref, random_logits, ref_chain

def ref_logit_bias(n_vocab, bias: dict):
    entries = (lc.llama_logit_bias * len(bias))(*[lc.llama_logit_bias(t, b) for t, b in bias.items()])
    return lc.llama_sampler_init_logit_bias, n_vocab, len(bias), entries


def assert_same(ours: S.Candidates, ref: S.Candidates):
    np.testing.assert_array_equal(ours.ids, ref.ids)
    np.testing.assert_array_equal(ours.logits.view(np.uint32), ref.logits.view(np.uint32))
    np.testing.assert_array_equal(ours.p.view(np.uint32), ref.p.view(np.uint32))
    assert ours.sorted == ref.sorted
    assert ours.selected == ref.selected


def copy(cand: S.Candidates) -> S.Candidates:
    return S.Candidates(cand.ids.copy(), cand.logits.copy(), cand.p.copy(), cand.sorted)


# ---------------------------------------------------------------------------
# Stages on llama.cpp's own test vectors (tests/test-sampling.cpp): the probabilities after the stage and
# a dist draw must equal both llama.cpp's live result and the values its test file expects.

STAGES = {  # name: (our stage, llama.cpp's constructor), both taking the same parameters
    "temperature": (S.temperature, lc.llama_sampler_init_temp),
    "top_k": (S.top_k, lc.llama_sampler_init_top_k),
    "top_p": (S.top_p, lc.llama_sampler_init_top_p),
    "min_p": (S.min_p, lc.llama_sampler_init_min_p),
    "typical_p": (S.typical_p, lc.llama_sampler_init_typical),
}

P4 = [0.1, 0.2, 0.3, 0.4]
VECTORS = [  # (stage, parameters, probs, expected probs from test-sampling.cpp)
    ("temperature", (1.0,), P4, P4),
    ("temperature", (0.0,), P4, [0, 0, 0, 1]),
    ("top_k", (1,), P4, [1]),
    ("top_k", (3,), P4, [0.44444, 0.33333, 0.22222]),
    ("top_k", (4,), P4, [0.4, 0.3, 0.2, 0.1]),
    ("top_k", (0,), P4, P4),
    ("top_p", (0, 0), P4, [1]),
    ("top_p", (0.7, 0), P4, [0.571429, 0.428571]),
    ("top_p", (0.8, 0), P4, [0.44444, 0.33333, 0.22222]),
    ("top_p", (1.0, 0), P4, P4),
    ("min_p", (0.0, 0), P4, P4),
    ("min_p", (0.24, 0), P4, P4),
    ("min_p", (0.26, 0), P4, [2 / 9, 3 / 9, 4 / 9]),
    ("min_p", (0.49, 0), P4, [2 / 9, 3 / 9, 4 / 9]),
    ("min_p", (0.51, 0), P4, [3 / 7, 4 / 7]),
    ("min_p", (0.74, 0), P4, [3 / 7, 4 / 7]),
    ("min_p", (0.76, 0), P4, [1]),
    ("min_p", (1.0, 0), P4, [1]),
    ("min_p", (1.05, 0), P4, [1]),
    ("typical_p", (0.5, 0), [0.97, 0.01, 0.01, 0.01], [0.97]),
    ("typical_p", (0.5, 0), [0.4, 0.2, 0.2, 0.2], [0.2] * 3),
]


def sampler_tester_candidates(probs) -> S.Candidates:
    """test-sampling.cpp's sampler_tester: logits log(p), probabilities p, in id order."""
    probs = np.array(probs, dtype=np.float32)
    with np.errstate(divide="ignore"):
        return S.Candidates(np.arange(probs.size), np.log(probs), probs)


def assert_same_after_dist(llama, cand, after_ref):
    """Both sides' candidates after a dist draw seeded with 0, as test-sampling.cpp does."""
    drawn_ref = llama(lc.llama_sampler_init_dist, 0).apply(after_ref)
    S.Dist(0)(cand)
    assert_same(cand, drawn_ref)


@pytest.mark.parametrize("stage, params, probs, expected", VECTORS)
def test_stage_on_llama_cpp_vectors(llama, stage, params, probs, expected):
    ours, init = STAGES[stage]
    cand = sampler_tester_candidates(probs)
    after_ref = llama(init, *params).apply(cand)
    ours(cand, *params)
    assert_same(cand, after_ref)
    if stage != "typical_p":  # test-sampling.cpp checks typical-p's own output, the others' after a draw
        assert_same_after_dist(llama, cand, after_ref)
    np.testing.assert_allclose(cand.p, expected, atol=1e-5)


@pytest.mark.parametrize("penalties, history, expected", [  # expected probs from test-sampling.cpp
    ((50.0, 0.0, 0.0), [0], [0, 0.25, 0.25, 0.25, 0.25]),
    ((50.0, 0.0, 0.0), [0, 1, 2], [0, 0, 0, 0.5, 0.5]),
    ((50.0, 0.0, 0.0), [0, 1, 2, 0, 0], [0, 0, 0, 0.5, 0.5]),
    ((1.0, 5.0, 5.0), [0], [0.000011, 0.249997, 0.249997, 0.249997, 0.249997]),
    ((1.0, 5.0, 5.0), [0, 1, 2], [0.000023, 0.000023, 0.000023, 0.499966, 0.499966]),
    ((1.0, 5.0, 5.0), [0, 1, 2, 0, 0], [0, 0.000023, 0.000023, 0.499977, 0.499977]),
])
def test_penalties_on_llama_cpp_vectors(llama, penalties, history, expected):
    """Repeat, frequency and presence penalties over a window holding exactly ``history``."""
    cand = sampler_tester_candidates([0.2] * 5)
    ours = S.Penalties(len(history), *penalties)
    ref = llama(lc.llama_sampler_init_penalties, cand.size, len(history), *penalties)
    for token in history:
        ours.accept(token)
        ref.accept(token)
    after_ref = ref.apply(cand)
    ours(cand)
    assert_same(cand, after_ref)
    assert_same_after_dist(llama, cand, after_ref)
    np.testing.assert_allclose(cand.p, expected, atol=1e-5)


# ---------------------------------------------------------------------------
# Stages on random logits, with and without ties, sorted and unsorted input


@settings(max_examples=60, deadline=None)
@given(stage=st.sampled_from(sorted(STAGES)), seed=st.integers(0, 2 ** 32 - 1),
       n=st.sampled_from([2, 7, 100, 128, 129, 1000, 1025, 5000]), ties=st.booleans(), presorted=st.booleans(),
       k=st.integers(0, 300), p=st.floats(0.01, 1.0), min_keep=st.integers(0, 5),
       t=st.sampled_from([0.0, 0.3, 0.8, 1.0, 1.7]))
# p rounds to 1.0f
@example(stage="top_p", seed=0, n=2, ties=False, presorted=False, k=0, p=1 - 2 ** -53, min_keep=0, t=0.0)
@example(stage="typical_p", seed=0, n=2, ties=False, presorted=False, k=0, p=1 - 2 ** -53, min_keep=0, t=0.0)
# the buckets from the top hold exactly k: llama.cpp heap-sorts the last one whole rather than std::sort it
@example(stage="top_k", seed=881903, n=1025, ties=True, presorted=False, k=289, p=1.0, min_keep=0, t=0.0)
def test_stage_matches_llama_cpp(stage, seed, n, ties, presorted, k, p, min_keep, t):
    ours, init = STAGES[stage]
    params = {"temperature": (t,), "top_k": (k,)}.get(stage, (p, min_keep))
    cand = S.Candidates.from_logits(random_logits(seed, n, ties))
    if presorted:
        cand = apply_once(lc.llama_sampler_init_top_k(n), cand)
        assert cand.sorted
    expected = apply_once(init(*params), cand)
    ours(cand, *params)
    assert_same(cand, expected)


def apply_once(ptr, cand: S.Candidates) -> S.Candidates:
    """llama.cpp's result of one sampler, which is then freed (hypothesis tests cannot use the fixture)."""
    try:
        return Ref(ptr).apply(cand)
    finally:
        lc.llama_sampler_free(ptr)


@pytest.mark.parametrize("n", [100, 3000])
@pytest.mark.parametrize("ties", [False, True])
def test_softmax_candidates_matches_llama_cpp(llama, n, ties):
    """llama_sampler_softmax_impl(sort=True) shows as top-k (the sort) then top-p keeping all (the softmax)."""
    cand = S.Candidates.from_logits(random_logits(n, n, ties))
    expected = ref_chain(llama, (lc.llama_sampler_init_top_k, n),
                         (lc.llama_sampler_init_top_p, 0.999999, n)).apply(cand)
    S.softmax_candidates(cand, sort=True)
    assert_same(cand, expected)


def test_penalties_window_matches_llama_cpp(llama):
    """Repetition, frequency and presence penalties over a sliding window of accepted tokens."""
    rng = np.random.default_rng(7)
    ours = S.Penalties(last_n=6, repeat=1.3, frequency=0.4, presence=0.25)
    ref = llama(lc.llama_sampler_init_penalties, 20, 6, 1.3, 0.4, 0.25)
    for _ in range(40):
        token = int(rng.integers(0, 20))
        ours.accept(token)
        ref.accept(token)
        cand = S.Candidates.from_logits(random_logits(int(rng.integers(1 << 30)), 20))
        expected = ref.apply(cand)
        ours(cand)
        assert_same(cand, expected)


@pytest.mark.parametrize("k", [50, 200])
def test_top_k_with_out_of_range_logits_matches_llama_cpp(llama, k):
    """Logits beyond ~3.4e8 (and +-inf) overflow llama.cpp's bucket index and sort into the lowest bucket."""
    logits = random_logits(5, 300, ties=True)
    logits[[3, 50, 90]] = [np.inf, 1e9, -np.inf]
    cand = S.Candidates.from_logits(logits)
    expected = llama(lc.llama_sampler_init_top_k, k).apply(cand)
    S.top_k(cand, k)
    assert_same(cand, expected)


def test_min_p_when_every_logit_is_minus_infinity(llama):
    cand = S.Candidates.from_logits(np.full(8, -np.inf, np.float32))
    expected = llama(lc.llama_sampler_init_min_p, 0.1, 0).apply(cand)
    S.min_p(cand, 0.1)
    assert_same(cand, expected)


def test_logit_bias_matches_llama_cpp(llama):
    bias = {3: 2.5, 0: -np.inf, 17: -1.25}
    cand = S.Candidates.from_logits(random_logits(3, 20))
    expected = llama(*ref_logit_bias(20, bias)).apply(cand)
    S.apply_logit_bias(cand, bias)
    assert_same(cand, expected)


# ---------------------------------------------------------------------------
# Seeded draws


def test_generate_canonical_matches_llama_cpp_dist(llama):
    """With N equal logits llama.cpp's dist picks index ceil(N * u) - 1, which exposes each uniform u."""
    n = 1 << 16
    ours, ref = libstdcxx.MT19937(2024), llama(lc.llama_sampler_init_dist, 2024)
    for _ in range(20):
        u = libstdcxx.generate_canonical(ours)
        assert ref.apply(S.Candidates.from_logits(np.zeros(n, np.float32))).selected == int(np.ceil(n * u)) - 1


@pytest.mark.parametrize("seed", [0, 1, 42, 2 ** 31 + 7, 2 ** 32 - 2])
def test_dist_matches_llama_cpp(llama, seed):
    ours, ref = S.Dist(seed), llama(lc.llama_sampler_init_dist, seed)
    for step in range(60):
        cand = S.Candidates.from_logits(random_logits(seed + step, 1 + step * 37 % 500, ties=step % 3 == 0))
        expected = ref.apply(cand)
        ours(cand)
        assert_same(cand, expected)


def test_dist_draws_once_for_a_single_candidate(llama):
    """llama.cpp's test_dist_singleton_rng: one candidate still consumes a draw."""
    single, pair = S.Dist(4242), S.Dist(4242)
    single(S.Candidates.from_logits([0.0]))
    pair(S.Candidates.from_logits([0.0, 0.0]))
    ref = llama(lc.llama_sampler_init_dist, 4242)
    ref.apply(S.Candidates.from_logits([0.0]))
    for step in range(4):
        logits = random_logits(step, 256, ties=True)
        a, b = S.Candidates.from_logits(logits), S.Candidates.from_logits(logits)
        single(a)
        pair(b)
        assert a.token == b.token == ref.pick(logits)


@pytest.mark.parametrize("seed", [0, 1, 42, 1234, 2 ** 32 - 2])
@pytest.mark.parametrize("tau, eta", [(5.0, 0.1), (3.0, 0.3), (0.5, 1.0)])
def test_mirostat_v2_matches_llama_cpp(llama, seed, tau, eta):
    ours, ref = S.MirostatV2(tau, eta, seed), llama(lc.llama_sampler_init_mirostat_v2, seed, tau, eta)
    for step in range(120):
        logits = random_logits(seed * 1000 + step, 3000, ties=step % 4 == 0, scale=1 + step % 5)
        assert ours(logits) == ref.pick(logits), f"step {step}"


@pytest.mark.parametrize("seed", [0, 7, 99, 2 ** 32 - 2])
@pytest.mark.parametrize("tau, eta, m", [(5.0, 0.1, 100), (2.0, 0.5, 10), (8.0, 0.2, 2)])
def test_mirostat_v1_matches_llama_cpp(llama, seed, tau, eta, m):
    n_vocab = 2000
    ours = S.MirostatV1(n_vocab, tau, eta, m, seed)
    ref = llama(lc.llama_sampler_init_mirostat, n_vocab, seed, tau, eta, m)
    for step in range(80):
        logits = random_logits(seed * 1000 + step, n_vocab, ties=step % 4 == 0, scale=1 + step % 5)
        assert ours(logits) == ref.pick(logits), f"step {step}"


def test_reset_restarts_like_llama_cpp(llama):
    ours, ref = S.MirostatV2(seed=11), llama(lc.llama_sampler_init_mirostat_v2, 11, 5.0, 0.1)
    first = [ours(random_logits(s, 500)) for s in range(10)]
    assert first == [ref.pick(random_logits(s, 500)) for s in range(10)]
    ours.reset()
    ref.reset()
    again = [ours(random_logits(s, 500)) for s in range(10)]
    assert again == first == [ref.pick(random_logits(s, 500)) for s in range(10)]


def test_mu_persists_between_calls():
    """Picks depend on the history: a sampler that has run differs from a fresh one with the same seed."""
    warmed, fresh = S.MirostatV2(seed=5), S.MirostatV2(seed=5)
    for s in range(30):
        warmed(random_logits(s, 500))
    assert warmed.mu != fresh.mu == np.float32(10)
    warmed.reset(seed=6)
    assert (warmed.mu, warmed.seed) == (np.float32(10), 6)


def test_random_seed_is_recorded_and_reproducible():
    for seed in (None, S.DEFAULT_SEED):
        sampler = S.MirostatV2(seed=seed)
        replay = S.MirostatV2(seed=sampler.seed)
        assert [sampler(random_logits(s, 300)) for s in range(20)] == [replay(random_logits(s, 300))
                                                                        for s in range(20)]


# ---------------------------------------------------------------------------
# The full chain

CHAINS = [
    dict(),  # llama.cpp's defaults
    dict(repeat_penalty=1.5, frequency_penalty=0.3, presence_penalty=0.6, penalty_last_n=8, top_k=10,
         top_p=0.9, min_p=0.02, temperature=1.2),
    dict(top_k=0, top_p=0.7, min_p=0.0, temperature=0.6, typical_p=0.8, min_keep=2, penalty_last_n=16,
         repeat_penalty=1.1),
    dict(temperature=0.0, logit_bias={5: 3.0, 9: -np.inf}),
    dict(top_k=3, top_p=1.0, min_p=0.0, temperature=1.0, logit_bias={1: 0.5}, typical_p=0.95),
]


@pytest.mark.parametrize("options", CHAINS)
@pytest.mark.parametrize("seed", [3, 2 ** 32 - 2])
@pytest.mark.parametrize("n_vocab", [40, 2000])
def test_chain_matches_llama_cpp(llama, options, seed, n_vocab):
    ours = S.Chain(seed=seed, **options)
    o = {**dict(logit_bias={}, penalty_last_n=64, repeat_penalty=1.0, frequency_penalty=0.0,
                presence_penalty=0.0, top_k=40, typical_p=1.0, top_p=0.95, min_p=0.05, temperature=0.8,
                min_keep=0), **options}
    stages = [ref_logit_bias(n_vocab, o["logit_bias"])] if o["logit_bias"] else []
    ref = ref_chain(llama, *stages,
                    (lc.llama_sampler_init_penalties, n_vocab, o["penalty_last_n"], o["repeat_penalty"],
                     o["frequency_penalty"], o["presence_penalty"]),
                    (lc.llama_sampler_init_top_k, o["top_k"]),
                    (lc.llama_sampler_init_typical, o["typical_p"], o["min_keep"]),
                    (lc.llama_sampler_init_top_p, o["top_p"], o["min_keep"]),
                    (lc.llama_sampler_init_min_p, o["min_p"], o["min_keep"]),
                    (lc.llama_sampler_init_temp_ext, o["temperature"], 0.0, 1.0),
                    (lc.llama_sampler_init_dist, seed))
    for step in range(60):
        logits = random_logits(seed % 1000 + step, n_vocab, ties=step % 3 == 0, scale=0.5 + step % 4)
        token = ours(logits)
        assert token == ref.pick(logits), f"step {step}"
        ours.accept(token)
        ref.accept(token)


# ---------------------------------------------------------------------------
# Whole-vocabulary helpers


def test_greedy_matches_llama_cpp_including_ties(llama):
    ref = llama(lc.llama_sampler_init_greedy)
    for seed in range(20):
        logits = random_logits(seed, 50, ties=True)
        assert S.greedy(logits) == ref.pick(logits) == int(np.flatnonzero(logits == logits.max())[0])


def test_softmax_and_log_softmax_match_llama_cpp():
    logits = random_logits(0, 1000, scale=8)
    probs = S.probabilities(logits)
    drawn = apply_once(lc.llama_sampler_init_dist(1), S.Candidates.from_logits(logits))
    np.testing.assert_allclose(probs, drawn.p, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(S.log_softmax(logits), lc.Llama.logits_to_logprobs(logits), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.exp(S.log_softmax(logits)), probs, rtol=1e-12)


def test_probabilities_are_stable_and_work_on_batches():
    huge = np.array([[1000.0, 1001.0, 999.0], [-1e4, -1e4, -1e4]])
    probs, logprobs = S.probabilities(huge), S.log_softmax(huge)
    assert np.all(np.isfinite(probs)) and np.all(np.isfinite(logprobs))
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0)
    np.testing.assert_allclose(probs[0], S.probabilities([0.0, 1.0, -1.0]))
    np.testing.assert_allclose(logprobs[1], np.log(1 / 3))


def test_any_callable_is_a_sampler_and_check_token_names_bad_ids():
    def always_seven(logits):
        return 7

    assert check_token(always_seven(np.zeros(10)), 10) == 7
    assert check_token(np.int64(3), 10) == 3
    with pytest.raises(TokenizerError, match="token id 12"):
        check_token(12, 10)
    with pytest.raises(TokenizerError, match="token id -1"):
        check_token(-1, 10)
    with pytest.raises(TypeError, match="'a'"):  # not an id at all: a TypeError, as for every token id argument
        check_token("a", 10)
    with pytest.raises(TypeError, match="2.0"):
        check_token(2.0, 10)


# ---------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("make, message", [
    (lambda: S.MirostatV2(tau=0), "tau"),
    (lambda: S.MirostatV2(tau=-1), "tau"),
    (lambda: S.MirostatV2(tau=float("nan")), "tau"),
    (lambda: S.MirostatV2(eta=-0.1), "eta"),
    (lambda: S.MirostatV2(seed=-1), "seed"),
    (lambda: S.MirostatV2(seed=2 ** 32), "seed"),
    (lambda: S.MirostatV2(seed=1.5), "seed"),
    (lambda: S.MirostatV1(0), "n_vocab"),
    (lambda: S.MirostatV1(100, m=1), "m "),
    (lambda: S.MirostatV1(100, tau=0), "tau"),
    (lambda: S.Chain(top_p=0), "top_p"),
    (lambda: S.Chain(top_p=1.5), "top_p"),
    (lambda: S.Chain(top_p=float("nan")), "top_p"),
    (lambda: S.Chain(typical_p=0), "typical_p"),
    (lambda: S.Chain(min_p=-0.1), "min_p"),
    (lambda: S.Chain(temperature=-0.5), "temperature"),
    (lambda: S.Chain(top_k=-1), "top_k"),
    (lambda: S.Chain(top_k=2.5), "top_k"),
    (lambda: S.Chain(penalty_last_n=-1), "penalty_last_n"),
    (lambda: S.Chain(repeat_penalty=0), "repeat_penalty"),
    (lambda: S.Chain(logit_bias={-3: 1.0}), "logit_bias"),
    (lambda: S.Chain(logit_bias={"a": 1.0}), "logit_bias"),
    (lambda: S.Chain(logit_bias={3: "x"}), "logit_bias"),
    (lambda: S.Chain(logit_bias={12: 1.0})(np.zeros(10)), "token id 12"),
    (lambda: S.make_sampler("beam"), "unknown sampler 'beam'"),
    (lambda: S.make_sampler("chain", topk=3), "unknown option 'topk'"),
    (lambda: S.make_sampler("mirostat_v2", top_p=0.5), "unknown option 'top_p'"),
    (lambda: S.make_sampler("greedy", seed=1), "greedy"),
    (lambda: S.greedy([]), "logits"),
    (lambda: S.greedy(np.zeros((2, 3))), "logits"),
    (lambda: S.MirostatV2()(np.zeros((2, 3))), "logits"),
    (lambda: S.Chain()(np.array([0.0, np.nan, 1.0])), "NaN .*token id 1"),
])
def test_bad_input_raises_value_error(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_make_sampler_builds_each_kind():
    assert S.make_sampler("greedy") is S.greedy
    logits = [random_logits(s, 300) for s in range(10)]
    for kind, options, direct in [("mirostat_v2", dict(tau=4.0, seed=9), S.MirostatV2(tau=4.0, seed=9)),
                                  ("mirostat_v1", dict(n_vocab=300, seed=9), S.MirostatV1(300, seed=9)),
                                  ("chain", dict(top_k=5, seed=9), S.Chain(top_k=5, seed=9))]:
        made = S.make_sampler(kind, **options)
        assert type(made) is type(direct)
        assert [made(x) for x in logits] == [direct(x) for x in logits]
    assert isinstance(S.make_sampler(), S.MirostatV2)
