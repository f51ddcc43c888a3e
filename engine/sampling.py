"""Turning next-token logits into a token id, with the exact arithmetic and random draws of llama.cpp.

A sampler is any callable ``sampler(logits) -> token_id`` taking the model's
(n_vocab,) logits for the next position.  ``greedy`` is the simplest one.  A
stateful sampler may also define

* ``accept(token_id)``: told of each token that was actually appended to the
  sequence (the caller does this after every pick, because a custom sampler may
  override what an inner sampler chose); the repetition penalties read it;
* ``reset(seed=None)``: forget accepted tokens and adaptive state and restart the
  random stream (from ``seed``, or the constructor's seed when omitted).

Samplers never accept their own picks.  Whoever runs generation calls
``arguments.check_token(token_id, n_vocab)`` on every pick, so a custom sampler returning
an id outside the vocabulary fails with a TokenizerError (a ValueError) that names it.

``MirostatV2`` (the default), ``MirostatV1`` and ``Chain`` (llama.cpp's common
sampler: logit bias, penalties, top-k, typical-p, top-p, min-p, temperature,
then a seeded draw) reproduce llama.cpp's choice token for token for the same
seed.  Each chain stage is a function or small class over ``Candidates``, the
counterpart of ``llama_token_data_array``: a list of (id, logit, p) in some
order plus a flag saying whether it is sorted by descending logit.  The order
matters, because the draws walk the cumulative probabilities in list order.

Where llama.cpp computes in float (f32) we do too, and where it uses double we
use float64, accumulating in the same order.  The f32 maths goes through the C
library's own expf/logf/log2f/powf (``engine.libm``), and GCC's std::mt19937,
generate_canonical, discrete_distribution, std::sort and std::partial_sort are
replayed exactly (``engine.libstdcxx``), down to the order in which std::sort
leaves equal logits.
"""
import inspect
import math
import secrets
from collections import Counter, deque

import numpy as np

from engine import libm
from engine.arguments import check_int
from engine.errors import ArgumentError
from engine.libstdcxx import MT19937, discrete_distribution, generate_canonical, partial_sort_order, sort_order

DEFAULT_SEED = 0xFFFFFFFF
"""llama.cpp's LLAMA_DEFAULT_SEED: like ``seed=None``, it asks for a random seed."""

# ---------------------------------------------------------------------------
# Whole-vocabulary helpers


def _as_logits(logits) -> np.ndarray:
    """The logits as a non-empty 1-D array without NaN, or ArgumentError."""
    logits = np.asarray(logits)
    if logits.ndim != 1 or logits.size == 0 or not np.issubdtype(logits.dtype, np.number):
        raise ArgumentError(f"logits must be a non-empty 1-D numeric array, got shape {logits.shape} "
                            f"and dtype {logits.dtype}")
    if np.isnan(logits).any():
        raise ArgumentError(f"logits contain NaN (at token id {int(np.flatnonzero(np.isnan(logits))[0])})")
    return logits


def _check_some_token_left(best_logit) -> None:
    """ArgumentError if the largest logit is -inf: every token is banned, none can be picked
    (llama.cpp would pick one of them all the same)."""
    if best_logit == -np.inf:
        raise ArgumentError("every logit is -inf (every token banned): there is no token to pick")


def _shifted(logits) -> np.ndarray:
    """The logits (float64) less their maximum along the last axis, where +inf logits are
    their limit: the +inf ones equal (0), the rest impossible (-inf)."""
    x = np.asarray(logits, dtype=np.float64)
    top = x.max(axis=-1, keepdims=True)
    _check_some_token_left(top.min(initial=np.inf))
    infinite = top == np.inf
    return np.where(infinite, np.where(x == np.inf, 0.0, -np.inf), x - np.where(infinite, 0.0, top))


def probabilities(logits) -> np.ndarray:
    """Probabilities exp(x_i) / sum_j exp(x_j) along the last axis, in float64.

    The maximum is subtracted first, so large logits cannot overflow; +inf logits
    share all the probability, and logits all -inf are an ArgumentError.
    """
    e = np.exp(_shifted(logits))
    return e / e.sum(axis=-1, keepdims=True)


def log_softmax(logits) -> np.ndarray:
    """Log-probabilities x_i - log(sum_j exp(x_j)) along the last axis, in float64 (stable, and
    +inf and -inf as ``probabilities`` takes them)."""
    shifted = _shifted(logits)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def greedy(logits) -> int:
    """The id of the largest logit; ties go to the lowest id (as llama.cpp's greedy sampler).
    Logits all -inf are an ArgumentError."""
    logits = _as_logits(logits)
    best = int(np.argmax(logits))
    _check_some_token_left(logits[best])
    return best


# ---------------------------------------------------------------------------
# f32 arithmetic as llama.cpp's C++ does it


_FLT_MAX = np.finfo(np.float32).max


def _f32(x) -> np.float32:
    return np.float32(x)


def _truncate_to_int(x) -> int:
    """C++ ``int(x)`` on x86-64: toward zero, and INT_MIN when x is NaN or out of range."""
    x = float(x)
    if not math.isfinite(x) or not -2147483648.0 <= math.trunc(x) <= 2147483647.0:
        return -2147483648
    return math.trunc(x)


# ---------------------------------------------------------------------------
# Candidates: llama_token_data_array


class Candidates:
    """The tokens still in the running for one pick: ``ids`` (int32), ``logits`` and ``p`` (f32).

    ``sorted`` tells whether the list is in descending-logit order (stages that
    know it can skip sorting); ``selected`` is the index (into this list, not a
    token id) a final stage picked, or -1.
    """

    def __init__(self, ids, logits, p=None, sorted=False):
        self.ids = np.asarray(ids, dtype=np.int32)
        self.logits = np.array(logits, dtype=np.float32)
        self.p = np.zeros_like(self.logits) if p is None else np.array(p, dtype=np.float32)
        self.sorted = sorted
        self.selected = -1

    @classmethod
    def from_logits(cls, logits) -> "Candidates":
        """Every token of the vocabulary, in id order, unsorted."""
        logits = _as_logits(logits)
        return cls(np.arange(logits.size, dtype=np.int32), logits)

    @property
    def size(self) -> int:
        return self.ids.size

    @property
    def token(self) -> int:
        """The token id at ``selected``."""
        return int(self.ids[self.selected])

    def take(self, index) -> None:
        """Keep only the entries at ``index`` (a slice or positions), in that order."""
        self.ids, self.logits, self.p = self.ids[index], self.logits[index], self.p[index]

    def force_infinite(self) -> None:
        """Keep only the first candidate of logit +inf, if there is one, with a finite logit: a
        logit_bias of +inf forces its token. (llama.cpp's softmax turns +inf into NaN, and its
        stages then keep and pick tokens by accident.) Logits all -inf are an ArgumentError."""
        best = int(np.argmax(self.logits))
        _check_some_token_left(self.logits[best])
        if self.logits[best] == np.inf:
            self.take([best])
            self.logits[0] = 0

    def sort_descending(self, n: int) -> None:
        """Keep the ``n`` largest logits, largest first (llama_token_data_array_partial_sort_inplace:
        std::partial_sort for n <= 128, the bucket sort beyond)."""
        self.take(partial_sort_order(-self.logits, n) if n <= 128 else _bucket_order(self.logits, n))
        self.sorted = True


def _bucket_order(logits: np.ndarray, n: int, prefix: int = None) -> np.ndarray:
    """Positions of the first ``prefix`` (default all n) of the ``n`` largest logits, in the order
    llama.cpp's bucket sort leaves them.

    That sort (llama_token_data_array_partial_sort) spreads the logits over 128
    buckets covering [-10, 10) (values outside, and non-finite ones, land in the
    end buckets as C++'s float-to-int conversion puts them), takes buckets from
    the top until they hold n, std::sorts each bucket before the last and std::partial_sorts
    the last one (a heap sort even when all of it is kept).  Only buckets reaching into the prefix are replayed.
    """
    prefix = n if prefix is None else prefix
    head = _bucket_value_order(logits, prefix + 1)
    values = logits[head]
    if not (np.isnan(logits).any() or np.any(values[1:] == values[:-1])):
        return head[:prefix]
    buckets = _buckets(logits)
    by_bucket = np.argsort(-buckets, kind="stable")  # buckets from the top, original order within each
    ends = np.cumsum(np.bincount(buckets, minlength=128)[::-1])
    parts, start = [], 0
    for end in ends[:int(np.argmax(ends >= n)) + 1]:
        if start >= prefix:
            break
        members = by_bucket[start:end]
        keys = -logits[members]
        parts.append(members[sort_order(keys) if end < n else partial_sort_order(keys, n - start)])
        start = end
    return np.concatenate(parts)[:prefix]


_BUCKET_OVERFLOW = 3e8  # from about 3.36e8 up, 6.4 * logit + 64 overflows int32 and C++ gives bucket 0


def _bucket_value_order(logits: np.ndarray, m: int) -> np.ndarray:
    """The first ``m`` positions by bucket, then by logit, both descending (ties in any order)."""
    if logits.max() >= _BUCKET_OVERFLOW:
        return np.lexsort((-logits, -_buckets(logits)))[:m]
    if m >= logits.size:  # the buckets are then in logit order
        return np.argsort(-logits, kind="stable")
    top = np.argpartition(-logits, m - 1)[:m]
    return top[np.argsort(-logits[top], kind="stable")]


def _bucket_sorted_values(logits: np.ndarray) -> np.ndarray:
    """The logits in bucket-then-value order, as llama.cpp's bucket sort of all of them leaves them."""
    if logits.max() >= _BUCKET_OVERFLOW:
        return logits[_bucket_value_order(logits, logits.size)]
    return np.sort(logits)[::-1]


def _buckets(logits: np.ndarray) -> np.ndarray:
    """Each logit's bucket in llama.cpp's bucket sort: int(6.4 * logit + 64) clamped to [0, 127], in f32."""
    scaled = _f32(128 / 20) * logits + _f32(10) * _f32(128 / 20)  # (n_cand,) f32
    in_range = np.isfinite(scaled) & (np.abs(scaled) < 2.0 ** 31)
    truncated = np.where(in_range, np.trunc(np.where(in_range, scaled, 0)), -2.0 ** 31)  # C++ gives INT_MIN
    return np.clip(truncated, 0, 127).astype(np.intp)


def _f32_softmax(logits: np.ndarray, max_logit: np.float32) -> np.ndarray:
    """llama.cpp's f32 softmax: expf of the shifted logits over their left-to-right f32 sum."""
    e = libm.expf(logits - max_logit)
    return e / np.cumsum(e)[-1]


def softmax_candidates(cand: Candidates, sort: bool) -> None:
    """Set ``p`` to the f32 softmax of the logits, first sorting them when ``sort`` (llama_sampler_softmax_impl)."""
    if sort and not cand.sorted:
        cand.sort_descending(cand.size)
    cand.p = _f32_softmax(cand.logits, cand.logits[0] if cand.sorted else cand.logits.max())


def _sort_softmax_keep(cand: Candidates, n_kept) -> None:
    """``softmax_candidates(cand, sort=True)``, then keep the first ``n_kept(p)`` candidates.

    The probabilities depend only on the sorted values, so llama.cpp's order of
    equal logits is replayed only for the candidates kept.
    """
    if cand.sorted or cand.size <= 128:
        softmax_candidates(cand, sort=True)
        cand.take(slice(0, n_kept(cand.p)))
        return
    values = _bucket_sorted_values(cand.logits)
    p = _f32_softmax(values, values[0])
    n = n_kept(p)
    cand.take(_bucket_order(cand.logits, cand.size, prefix=n))
    cand.p = p[:n]
    cand.sorted = True


# ---------------------------------------------------------------------------
# Chain stages


def apply_logit_bias(cand: Candidates, bias: dict) -> None:
    """Add ``bias[token]`` to each listed token's logit."""
    for token, b in bias.items():
        cand.logits[cand.ids == token] += _f32(b)


class Penalties:
    """Repetition, frequency and presence penalties over the last ``last_n`` accepted tokens.

    A token seen c > 0 times in the window has its logit divided by ``repeat``
    (multiplied, when the logit is <= 0, so it still drops), then lowered by
    c * frequency + presence.
    """

    def __init__(self, last_n: int = 64, repeat: float = 1.0, frequency: float = 0.0, presence: float = 0.0):
        self.last_n = check_int(last_n, "penalty_last_n", 0)
        _check_range("repeat_penalty", repeat, 0, None, "a finite number > 0", low_open=True)
        _check_range("frequency_penalty", frequency, None, None, "a finite number")
        _check_range("presence_penalty", presence, None, None, "a finite number")
        self.repeat, self.frequency, self.presence = _f32(repeat), _f32(frequency), _f32(presence)
        self.reset()

    @property
    def disabled(self) -> bool:
        return self.last_n == 0 or (self.repeat == 1 and self.frequency == 0 and self.presence == 0)

    def reset(self) -> None:
        self.window = deque(maxlen=self.last_n)
        self.counts = Counter()

    def accept(self, token_id: int) -> None:
        if self.last_n == 0:
            return
        if len(self.window) == self.last_n:
            oldest = self.window[0]
            self.counts[oldest] -= 1
            if self.counts[oldest] == 0:
                del self.counts[oldest]
        self.window.append(token_id)
        self.counts[token_id] += 1

    def __call__(self, cand: Candidates) -> None:
        if self.disabled:
            return
        seen = np.flatnonzero(np.isin(cand.ids, list(self.counts)))
        for i in seen:
            count = _f32(self.counts[int(cand.ids[i])])
            logit = cand.logits[i]
            logit = logit * self.repeat if logit <= 0 else logit / self.repeat
            cand.logits[i] = logit - (count * self.frequency + _f32(1) * self.presence)
        cand.sorted = False


def top_k(cand: Candidates, k: int) -> None:
    """Keep the ``k`` most likely tokens (k <= 0 keeps all)."""
    if k <= 0:
        return
    k = min(k, cand.size)
    if not cand.sorted:
        cand.sort_descending(k)
    cand.take(slice(0, k))


def typical_p(cand: Candidates, p: float, min_keep: int = 0) -> None:
    """Locally typical sampling: keep the tokens whose surprise is closest to the entropy, up to mass ``p``."""
    p = _f32(p)  # llama.cpp keeps its parameters as floats: 1 - 1e-16 is 1
    if p >= 1:
        return
    softmax_candidates(cand, sort=True)
    log_p = libm.logf(cand.p)
    with np.errstate(invalid="ignore"):
        entropy = np.cumsum(-cand.p * log_p)[-1]
        shifted = np.abs(-log_p - entropy)
    order = sort_order(shifted)
    mass = np.cumsum(cand.p[order])
    enough = (mass > p) & (np.arange(cand.size) >= min_keep - 1)
    last = int(np.argmax(enough)) + 1 if enough.any() else cand.size
    cand.take(order[:last])
    cand.sorted = False


def top_p(cand: Candidates, p: float, min_keep: int = 0) -> None:
    """Nucleus sampling: keep the most likely tokens until their probability mass reaches ``p``."""
    p = _f32(p)
    if p >= 1:
        return
    softmax_candidates(cand, sort=False)
    mass = np.cumsum(cand.p if cand.sorted else np.sort(cand.p)[::-1])
    enough = (mass >= p) & (np.arange(1, cand.size + 1) >= min_keep)
    last = int(np.argmax(enough)) + 1 if enough.any() else cand.size
    if cand.sorted:
        cand.take(slice(0, last))
    elif cand.size <= 128:
        cand.sort_descending(cand.size)
        cand.take(slice(0, last))
    else:  # beyond 1024 candidates llama.cpp sorts the top 256 first, and everything only if those fall short
        n_sorted = 256 if cand.size > 1024 and last <= 256 else cand.size
        cand.take(_bucket_order(cand.logits, n_sorted, prefix=last))
    cand.sorted = True


def min_p(cand: Candidates, p: float, min_keep: int = 0) -> None:
    """Keep the tokens at least ``p`` times as likely as the most likely one."""
    p = _f32(p)
    if p <= 0 or cand.size == 0:
        return
    if not cand.sorted:
        keep = cand.logits >= np.max(cand.logits, initial=-_FLT_MAX) + libm.logf(p)
        n_keep = int(keep.sum())
        if n_keep > 0 and n_keep >= min_keep:
            cand.take(keep)
            return
        cand.sort_descending(cand.size)
    below = (cand.logits < cand.logits[0] + libm.logf(p)) & (np.arange(cand.size) >= min_keep)
    below[0] = False
    cand.take(slice(0, int(np.argmax(below)) if below.any() else cand.size))


def temperature(cand: Candidates, t: float) -> None:
    """Divide the logits by ``t``; t <= 0 keeps only the first largest logit (all others -inf)."""
    t = _f32(t)
    if cand.size == 0 or t == 1:
        return
    if t <= 0:
        best = int(np.argmax(cand.logits))
        kept = cand.logits[best]
        cand.logits[:] = -np.inf
        cand.logits[best] = kept
        return
    cand.logits = cand.logits / t


# ---------------------------------------------------------------------------
# Final stages: seeded draws


def check_seed(seed) -> int | None:
    """``seed`` as an int in [0, 2**32) (DEFAULT_SEED among them) or None, else ArgumentError."""
    return None if seed is None else check_int(seed, "seed", 0, DEFAULT_SEED)


def resolve_seed(seed) -> int:
    """The 32-bit seed to use: ``seed`` itself, or a fresh random one for None / DEFAULT_SEED."""
    seed = check_seed(seed)
    return secrets.randbits(32) if seed is None or seed == DEFAULT_SEED else seed


class _Seeded:
    """A random stream that restarts from the constructor's seed (or a given one) on ``reset``.

    ``seed`` is the seed in use: with a seed of None each restart draws a new
    random one, as llama.cpp does for LLAMA_DEFAULT_SEED.
    """

    def _restart_rng(self, seed) -> None:
        if seed is not None:
            self.seed_arg = seed
        self.seed = resolve_seed(self.seed_arg)
        self.rng = MT19937(self.seed)


class Dist(_Seeded):
    """llama.cpp's dist sampler: softmax the candidates and draw one with a seeded std::mt19937.

    The draw walks the cumulative (double) sum of the unnormalised f32 weights
    in list order and stops at the first that reaches u * total, u uniform in
    [0, 1).  One u is drawn even when a single candidate is left.
    """

    def __init__(self, seed=None):
        self.seed_arg = seed
        self.reset()

    def reset(self, seed=None) -> None:
        self._restart_rng(seed)

    def __call__(self, cand: Candidates) -> None:
        if cand.size == 0:
            cand.selected = -1
            return
        cand.selected = 0
        u = generate_canonical(self.rng)
        if cand.size == 1:
            cand.p[0] = 1
            return
        max_logit = cand.logits[0] if cand.sorted else cand.logits.max()
        weights = libm.expf(cand.logits - max_logit)
        running = np.cumsum(weights, dtype=np.float64)
        total = running[-1]
        cand.selected = min(int(np.searchsorted(running, total * u, side="left")), cand.size - 1)
        cand.p = (weights / total).astype(np.float32)


def _check_mirostat(tau: float, eta: float) -> None:
    _check_range("mirostat tau (target surprise)", tau, 0, None, "a finite number > 0", low_open=True)
    _check_range("mirostat eta (learning rate)", eta, 0, None, "a finite number >= 0")


class _Mirostat(_Seeded):
    """Shared state of both Mirostat versions: target surprise tau, learning rate eta, running mu, RNG."""

    def __init__(self, tau: float, eta: float, seed):
        _check_mirostat(tau, eta)
        self.tau, self.eta = _f32(tau), _f32(eta)
        self.seed_arg = seed
        self.reset()

    def reset(self, seed=None) -> None:
        """Restart: mu = 2 * tau and the RNG from ``seed`` (default: the constructor's seed)."""
        self.mu = _f32(2) * self.tau
        self._restart_rng(seed)

    def _draw_and_learn(self, cand: Candidates) -> int:
        """Renormalise the kept candidates, draw one, and move mu toward the target surprise."""
        softmax_candidates(cand, sort=True)
        cand.selected = discrete_distribution(cand.p, self.rng)
        surprise = -libm.log2f(cand.p[cand.selected])
        self.mu = _f32(self.mu - self.eta * (surprise - self.tau))
        return cand.token

    def __call__(self, logits) -> int:
        return self.apply(Candidates.from_logits(logits))


class MirostatV2(_Mirostat):
    """Mirostat 2.0 (llama_sampler_init_mirostat_v2): keep tokens whose surprise -log2 p is at most mu,
    draw one, then mu -= eta * (surprise - tau).

    mu starts at 2 * tau and carries over between calls until ``reset``.
    ``seed=None`` (or DEFAULT_SEED) picks a random seed, kept in ``.seed``.
    """

    def __init__(self, tau: float = 5.0, eta: float = 0.1, seed=None):
        super().__init__(tau, eta, seed)

    def apply(self, cand: Candidates) -> int:
        """Pick from ``cand`` (setting ``cand.selected``) and return the token id."""
        cand.force_infinite()
        _sort_softmax_keep(cand, self._n_unsurprising)
        return self._draw_and_learn(cand)

    def _n_unsurprising(self, p: np.ndarray) -> int:
        """How many of the (descending) probabilities precede the first with -log2 p > mu; at least 1."""
        too_surprising = _surprise_above(p, self.mu)
        return max(int(np.argmax(too_surprising)) if too_surprising.any() else p.size, 1)


def _surprise_above(p: np.ndarray, mu: np.float32) -> np.ndarray:
    """Whether -log2f(p) > mu for each p; log2f is asked only where float64 log2 cannot tell."""
    with np.errstate(divide="ignore"):
        approx = -np.log2(p.astype(np.float64))
    above = approx > mu
    unsure = np.abs(approx - mu) <= 1e-4 * max(1.0, abs(float(mu)))
    above[unsure] = -libm.log2f(p[unsure]) > mu
    return above


class MirostatV1(_Mirostat):
    """Mirostat 1.0 (llama_sampler_init_mirostat): estimate the Zipf exponent s from the ``m`` most
    likely tokens, keep the top k that a target surprise of mu implies, draw one, then update mu.
    """

    def __init__(self, n_vocab: int, tau: float = 5.0, eta: float = 0.1, m: int = 100, seed=None):
        self.n_vocab = check_int(n_vocab, "n_vocab", 1)
        self.m = check_int(m, "mirostat m (tokens used to estimate s)", 2)
        super().__init__(tau, eta, seed)

    def apply(self, cand: Candidates) -> int:
        """Pick from ``cand`` (setting ``cand.selected``) and return the token id."""
        cand.force_infinite()
        _sort_softmax_keep(cand, self._zipf_top_k)
        return self._draw_and_learn(cand)

    def _zipf_top_k(self, p: np.ndarray) -> int:
        """The k for which the top-k tokens of a Zipf law fitted to p[:m] have expected surprise mu."""
        n = min(self.m - 1, p.size - 1)
        i = np.arange(n, dtype=np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = libm.logf((i + 2) / (i + 1))
            b = libm.logf(p[:n] / p[1:n + 1])
            s_hat = np.cumsum(t * b)[-1] / np.cumsum(t * t)[-1] if n else _f32(np.nan)
        epsilon_hat = s_hat - _f32(1)
        with np.errstate(all="ignore"):
            zipf_scale = (epsilon_hat * libm.powf(2, self.mu)) / (_f32(1) - libm.powf(self.n_vocab, -epsilon_hat))
            k = libm.powf(zipf_scale, _f32(1) / s_hat)
        return min(max(_truncate_to_int(k), 1), p.size)


class Chain:
    """llama.cpp's common sampler without a grammar: logit bias, penalties, top-k, typical-p, top-p,
    min-p, temperature, then a seeded draw (``Dist``).  Defaults are llama.cpp's.

    ``logit_bias`` maps token ids to amounts added to their logits (-inf bans a
    token, +inf forces it).  Call ``accept(token)`` with each token appended to
    the sequence so the penalties see it.
    """

    def __init__(self, *, seed=None, logit_bias=None, penalty_last_n: int = 64, repeat_penalty: float = 1.0,
                 frequency_penalty: float = 0.0, presence_penalty: float = 0.0, top_k: int = 40,
                 typical_p: float = 1.0, top_p: float = 0.95, min_p: float = 0.05, temperature: float = 0.8,
                 min_keep: int = 0):
        check_chain_options(top_k=top_k, typical_p=typical_p, top_p=top_p, min_p=min_p)
        _check_range("temperature", temperature, 0, None, "a number >= 0 (0 is greedy)")
        check_int(min_keep, "min_keep", 0)
        self.logit_bias = _check_bias(logit_bias or {})
        self.penalties = Penalties(penalty_last_n, repeat_penalty, frequency_penalty, presence_penalty)
        self.top_k, self.typical_p, self.top_p, self.min_p = top_k, typical_p, top_p, min_p
        self.temperature, self.min_keep = temperature, min_keep
        self.dist = Dist(seed)

    @property
    def seed(self) -> int:
        return self.dist.seed

    def accept(self, token_id: int) -> None:
        self.penalties.accept(token_id)

    def reset(self, seed=None) -> None:
        self.penalties.reset()
        self.dist.reset(seed)

    def apply(self, cand: Candidates) -> int:
        """Run every stage on ``cand`` (setting ``cand.selected``) and return the token id."""
        apply_logit_bias(cand, self.logit_bias)
        cand.force_infinite()
        self.penalties(cand)
        top_k(cand, self.top_k)
        typical_p(cand, self.typical_p, self.min_keep)
        top_p(cand, self.top_p, self.min_keep)
        min_p(cand, self.min_p, self.min_keep)
        temperature(cand, self.temperature)
        self.dist(cand)
        return cand.token

    def __call__(self, logits) -> int:
        cand = Candidates.from_logits(logits)
        outside = [token for token in self.logit_bias if token >= cand.size]
        if outside:
            raise ArgumentError(f"logit_bias names token id {outside[0]}, outside the vocabulary [0, {cand.size})")
        return self.apply(cand)


def check_chain_options(*, top_k, typical_p, top_p, min_p) -> None:
    """ArgumentError unless the truncation stages' parameters are in range."""
    check_int(top_k, "top_k (0 keeps every token)", 0)
    _check_range("typical_p", typical_p, 0, 1, "in (0, 1]", low_open=True)
    _check_range("top_p", top_p, 0, 1, "in (0, 1]", low_open=True)
    _check_range("min_p", min_p, 0, 1, "in [0, 1]")


def _check_range(name, value, low, high, wanted, *, low_open=False) -> None:
    """ArgumentError unless ``value`` is a finite number above ``low`` (or equal, unless ``low_open``)
    and at most ``high`` (None: no bound)."""
    ok = isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_)) and math.isfinite(value)
    ok = ok and (low is None or (value > low if low_open else value >= low)) and (high is None or value <= high)
    if not ok:
        raise ArgumentError(f"{name} must be {wanted}, got {value!r}")


def _check_bias(bias: dict) -> dict:
    for token, b in bias.items():
        if isinstance(token, bool) or not isinstance(token, (int, np.integer)) or token < 0:
            raise ArgumentError(f"logit_bias keys must be token ids (ints >= 0), got {token!r}")
        if isinstance(b, bool) or not isinstance(b, (int, float, np.number)) or math.isnan(b):
            raise ArgumentError(f"logit_bias[{token}] must be a number, got {b!r}")
    return {int(t): float(b) for t, b in bias.items()}


SAMPLER_CLASSES = {"mirostat_v2": MirostatV2, "mirostat_v1": MirostatV1, "chain": Chain}


def make_sampler(kind: str = "mirostat_v2", **options):
    """A sampler by name: "greedy", "mirostat_v2" (the default), "mirostat_v1" or "chain", with options.

    Unknown kinds, unknown options and bad values raise ArgumentError (a ValueError).
    """
    if kind == "greedy":
        if options:
            raise ArgumentError(f"the greedy sampler takes no options, got {', '.join(options)}")
        return greedy
    if kind not in SAMPLER_CLASSES:
        raise ArgumentError(f"unknown sampler {kind!r}; choose one of greedy, {', '.join(SAMPLER_CLASSES)}")
    known = list(inspect.signature(SAMPLER_CLASSES[kind]).parameters)
    unknown = [name for name in options if name not in known]
    if unknown:
        raise ArgumentError(f"unknown option {unknown[0]!r} for sampler {kind!r}; it takes {', '.join(known)}")
    return SAMPLER_CLASSES[kind](**options)
