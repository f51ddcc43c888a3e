"""SmolLM2-135M-Instruct, a real chat model, against llama.cpp (llama-cpp-python 0.3.36) on the same ids.

The file as shipped (Q4_1, pulled with the pinned download ``llamanp pull`` uses) and
llama.cpp's own requantisations of it: for each, the logits of a 512-token prompt and of
short chat prompts are bit-identical to llama.cpp's, and so are 128 greedy tokens; on two
of them, seeded Mirostat v2 draws the same 64 tokens for three seeds.

Prompts are token ids made by llama.cpp's tokenizer: our byte-level BPE tokenizer is not
there yet. The one text-based test is marked as an expected failure until it is (strict: once
it passes, the mark must go).
"""
import llama_cpp  # the reference: a missing llama_cpp fails this module, it does not skip it
import numpy as np
import pytest

from engine import Llama
from engine.errors import ModelError
from engine.sampling import MirostatV2

N_CTX = 640  # the 512-token prompt, or a chat prompt and 128 generated tokens
FILES = [None, "Q8_0", "Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K"]  # None: the Q4_1 file as shipped
MIROSTAT_FILES = [None, "Q8_0"]
CHAT_PROMPTS = [
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n",
]


class Pair:
    """Our Llama (compiled backend) and llama.cpp's on one file."""

    def __init__(self, path):
        self.ref = llama_cpp.Llama(str(path), n_ctx=N_CTX, logits_all=True, n_threads=2, verbose=False)
        self.ours = Llama(path, n_ctx=N_CTX, n_threads=2, backend="cython")

    def tokenize(self, text: str) -> list[int]:
        """llama.cpp's ids for ``text``, with its control tokens parsed, no BOS added."""
        return self.ref.tokenize(text.encode(), add_bos=False, special=True)

    def ref_logits(self, tokens: list[int]) -> np.ndarray:
        """llama.cpp's logits of every position of a fresh evaluation: (len(tokens), n_vocab)."""
        self.ref.reset()
        self.ref.eval(tokens)
        return np.array(self.ref.scores[:len(tokens)], dtype=np.float32)

    def close(self) -> None:
        self.ours.close()
        self.ref.close()


@pytest.fixture(scope="module")
def pairs(smollm2):
    """One Pair per file, built on first use; only one is open at a time, to bound memory."""
    current: dict = {}

    def get(quant: str | None) -> Pair:
        if quant not in current:
            for pair in current.values():
                pair.close()
            current.clear()
            current[quant] = Pair(smollm2(quant))
        return current[quant]

    yield get
    for pair in current.values():
        pair.close()


@pytest.fixture(scope="module")
def long_prompt(data_dir, smollm2) -> list[int]:
    """512 ids of English text (Shakespeare), tokenized by llama.cpp."""
    text = (data_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")[:6000]
    vocab = llama_cpp.Llama(str(smollm2()), vocab_only=True, verbose=False)
    tokens = vocab.tokenize(text.encode(), add_bos=False, special=False)
    vocab.close()
    assert len(tokens) >= 512
    return tokens[:512]


@pytest.mark.parametrize("quant", FILES, ids=lambda q: q or "Q4_1")
def test_logits_equal_llama_cpp(pairs, long_prompt, quant):
    pair = pairs(quant)
    for tokens in [long_prompt, pair.tokenize("Hello"), *map(pair.tokenize, CHAT_PROMPTS)]:
        assert np.array_equal(pair.ours.eval_logits(tokens), pair.ref_logits(tokens)), len(tokens)


def test_numpy_reference_equals_llama_cpp(pairs):
    """The readable NumPy path gives the same bits on the shipped file."""
    pair = pairs(None)
    tokens = pair.tokenize(CHAT_PROMPTS[1])
    with Llama(pair.ours.path, n_ctx=64, backend="numpy") as reference:
        assert np.array_equal(reference.eval_logits(tokens), pair.ref_logits(tokens))


@pytest.mark.parametrize("quant", FILES, ids=lambda q: q or "Q4_1")
def test_greedy_128_tokens_equal_llama_cpp(pairs, quant):
    pair = pairs(quant)
    prompt = pair.tokenize(CHAT_PROMPTS[0])
    pair.ours.update(prompt, n_past=0)
    pair.ref.reset()
    pair.ref.eval(prompt)
    ours, ref = [], []
    for _ in range(128):
        ours.append(int(np.argmax(pair.ours.logits)))
        ref.append(int(np.argmax(pair.ref.scores[pair.ref.n_tokens - 1])))
        pair.ours.update([ours[-1]])
        pair.ref.eval([ref[-1]])
    assert ours == ref


@pytest.mark.parametrize("quant", MIROSTAT_FILES, ids=lambda q: q or "Q4_1")
def test_mirostat_v2_tokens_equal_llama_cpp(pairs, quant):
    """Our MirostatV2 on our logits against llama.cpp's mirostat v2 sampler on its own."""
    pair = pairs(quant)
    prompt = pair.tokenize(CHAT_PROMPTS[1])
    for seed in (1, 42, 2024):
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_mirostat_v2(seed, 5.0, 0.1))
        sampler = MirostatV2(5.0, 0.1, seed)
        pair.ours.update(prompt, n_past=0)
        pair.ref.reset()
        pair.ref.eval(prompt)
        ours, ref = [], []
        try:
            for _ in range(64):
                ours.append(int(sampler(pair.ours.logits)))
                ref.append(int(llama_cpp.llama_sampler_sample(chain, pair.ref.ctx, -1)))
                pair.ours.update([ours[-1]])
                pair.ref.eval([ref[-1]])
        finally:
            llama_cpp.llama_sampler_free(chain)
        assert ours == ref, seed


@pytest.mark.xfail(raises=ModelError, strict=True, reason="needs the byte-level BPE tokenizer (branch bpe)")
def test_text_prompt_tokenizes_like_llama_cpp(pairs):
    """Enable once the byte-level BPE tokenizer lands: our ids for a chat prompt are llama.cpp's."""
    pair = pairs(None)
    assert pair.ours.tokenize(CHAT_PROMPTS[0], add_bos=False, special=True) == pair.tokenize(CHAT_PROMPTS[0])
