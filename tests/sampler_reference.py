"""llama.cpp's samplers wrapped to run on our Candidates, and random logits to feed both."""
import ctypes

import llama_cpp as lc
import numpy as np

from engine import sampling as S

TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])


class Ref:
    """A llama.cpp sampler, applied to copies of our Candidates."""

    def __init__(self, ptr):
        assert ptr, "llama.cpp returned no sampler"
        self.ptr = ptr

    def apply(self, cand: S.Candidates) -> S.Candidates:
        data = np.zeros(cand.size, dtype=TOKEN_DATA)
        data["id"], data["logit"], data["p"] = cand.ids, cand.logits, cand.p
        arr = lc.llama_token_data_array(data=data.ctypes.data_as(lc.llama_token_data_p), size=cand.size,
                                        selected=-1, sorted=cand.sorted)
        lc.llama_sampler_apply(self.ptr, ctypes.byref(arr))
        assert ctypes.cast(arr.data, ctypes.c_void_p).value == data.ctypes.data
        out = data[:arr.size]
        result = S.Candidates(out["id"], out["logit"], out["p"], sorted=bool(arr.sorted))
        result.selected = arr.selected
        return result

    def pick(self, logits) -> int:
        return self.apply(S.Candidates.from_logits(logits)).token

    def accept(self, token: int) -> None:
        lc.llama_sampler_accept(self.ptr, token)

    def reset(self) -> None:
        lc.llama_sampler_reset(self.ptr)


def ref_chain(llama, *stages):
    """A llama.cpp sampler chain owning ``stages`` (each a (init, *args) tuple)."""
    chain = llama(lc.llama_sampler_chain_init, lc.llama_sampler_chain_default_params())
    for init, *args in stages:
        lc.llama_sampler_chain_add(chain.ptr, init(*args))
    return chain


def random_logits(seed: int, n: int, ties: bool = False, scale: float = 3.0) -> np.ndarray:
    """Normal logits; with ``ties``, rounded to a coarse grid so that many are equal."""
    logits = np.random.default_rng(seed).standard_normal(n) * scale
    return (np.round(logits * 4) / 4 if ties else logits).astype(np.float32)
