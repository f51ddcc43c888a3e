"""SmolLM2-135M-Instruct, a real chat model, against llama.cpp (llama-cpp-python 0.3.36) on the same ids.

The file as shipped (Q4_1, fetched by the pinned download ``llamanp pull`` uses) and
llama.cpp's own requantisations of it to Q8_0, Q4_0, Q4_K_M, Q5_K_M and Q6_K: the logits
of every position are bit-identical to llama.cpp's for prompts of 1, 7, 37 and 512 tokens
on each file; 128 greedy tokens, decoded one at a time, carry identical logits at every
step on each file; seeded Mirostat v2 draws llama.cpp's 64 tokens for three seeds. The
logit tests feed both engines llama.cpp's token ids; the engine's own byte-level BPE
tokenizer and chat template give the same ids (the first two tests). Both engines run
one thread (llama.cpp also for batches): neither's results depend on it, and on a busy
two-core machine spinning workers cost more than they bring.
"""
import llama_cpp  # the reference: a missing llama_cpp fails this module, it does not skip it
import numpy as np
import pytest
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from engine import Llama
from engine.chat import Chat
from engine.sampling import MirostatV2
from tests.model_files import quiet_llama_cpp

N_CTX = 640  # the 512-token prompt, or a chat prompt and 128 generated tokens
FILES = [None, "Q8_0", "Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K"]  # None: the Q4_1 file as shipped
CHAT_PROMPT = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
               "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")


def file_id(quant: str | None) -> str:
    return quant or "Q4_1"


class Pair:
    """Our Llama (compiled backend) and llama.cpp's on one file; ours on two threads, so each
    decoded token's products are shared out (the bits do not depend on the team)."""

    def __init__(self, path):
        quiet_llama_cpp()
        self.ref = llama_cpp.Llama(str(path), n_ctx=N_CTX, logits_all=True, n_threads=1, n_threads_batch=1,
                                   verbose=False)
        self.ours = Llama(path, n_ctx=N_CTX, n_threads=2, backend="cython")

    def tokenize(self, text: str) -> list[int]:
        """llama.cpp's ids for ``text``, with its control tokens parsed, no BOS added."""
        return self.ref.tokenize(text.encode(), add_bos=False, special=True)

    def ref_logits(self, tokens: list[int]) -> np.ndarray:
        """llama.cpp's logits of every position of a fresh evaluation: (len(tokens), n_vocab)."""
        self.ref.reset()
        self.ref.eval(tokens)
        return np.array(self.ref.scores[:len(tokens)], dtype=np.float32)

    def start(self, prompt: list[int]) -> None:
        """Both engines evaluate ``prompt`` from an empty cache."""
        self.ours.update(prompt, n_past=0)
        self.ref.reset()
        self.ref.eval(prompt)

    def ref_last_logits(self) -> np.ndarray:
        return np.array(self.ref.scores[self.ref.n_tokens - 1], dtype=np.float32)

    def close(self) -> None:
        self.ours.close()
        self.ref.close()


@pytest.fixture(scope="module")
def pairs(smollm2):
    """``pairs(quant)``: the Pair of a file, built on first use; one is open at a time, to bound memory."""
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
def shakespeare(data_dir, smollm2) -> list[int]:
    """512 ids of English text, tokenized by llama.cpp."""
    text = (data_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")[:6000]
    quiet_llama_cpp()
    vocab = llama_cpp.Llama(str(smollm2()), vocab_only=True, verbose=False)
    tokens = vocab.tokenize(text.encode(), add_bos=False, special=False)
    vocab.close()
    assert len(tokens) >= 512
    return tokens[:512]


def test_engine_tokenizes_text_like_llama_cpp(pairs, data_dir):
    pair = pairs(None)
    text = (data_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")[:20000]
    assert pair.ours.tokenize(text, add_bos=True) == pair.ref.tokenize(text.encode(), add_bos=True, special=False)


def test_chat_prompt_rendered_and_tokenized_like_llama_cpp_python(pairs):
    """The GGUF's template rendered by the engine's sandbox and by llama-cpp-python's Jinja2 formatter,
    each tokenized by its own engine with control tokens parsed: the same ids."""
    pair = pairs(None)
    template = pair.ours.metadata["tokenizer.chat_template"]
    formatter = Jinja2ChatFormatter(template, eos_token="<|im_end|>", bos_token="<|im_start|>")
    question = [{"role": "user", "content": "What is the capital of France?"}]
    for messages in (question,
                     [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Café? 🍰"}]):
        reference = pair.tokenize(formatter(messages=messages).prompt)
        assert Chat(pair.ours).prompt_tokens(messages) == reference
    assert Chat(pair.ours).prompt_tokens(question) == pair.tokenize(CHAT_PROMPT)  # the prompt the logit tests use


@pytest.mark.parametrize("quant", FILES, ids=file_id)
def test_logits_equal_llama_cpp(pairs, shakespeare, quant):
    pair = pairs(quant)
    for tokens in (shakespeare[:1], shakespeare[:7], pair.tokenize(CHAT_PROMPT)):
        assert np.array_equal(pair.ours.eval_logits(tokens), pair.ref_logits(tokens)), len(tokens)


@pytest.mark.parametrize("quant", FILES, ids=file_id)
def test_512_token_prompt_logits_equal_llama_cpp(pairs, shakespeare, quant):
    pair = pairs(quant)
    assert np.array_equal(pair.ours.eval_logits(shakespeare), pair.ref_logits(shakespeare))


def test_numpy_reference_equals_llama_cpp(pairs, shakespeare):
    """The readable NumPy path gives the same bits on the shipped file."""
    pair = pairs(None)
    tokens = shakespeare[:7]
    with Llama(pair.ours.path, n_ctx=16, backend="numpy") as reference:
        assert np.array_equal(reference.eval_logits(tokens), pair.ref_logits(tokens))


@pytest.mark.parametrize("quant", FILES, ids=file_id)
def test_greedy_128_tokens_equal_llama_cpp(pairs, quant):
    """Each engine decodes its own argmax, one token at a time; the logits agree at every step."""
    pair = pairs(quant)
    pair.start(pair.tokenize(CHAT_PROMPT))
    ours, ref = [], []
    for step in range(128):
        assert np.array_equal(pair.ours.logits, pair.ref_last_logits()), step
        ours.append(int(np.argmax(pair.ours.logits)))
        ref.append(int(np.argmax(pair.ref_last_logits())))
        pair.ours.update([ours[-1]])
        pair.ref.eval([ref[-1]])
    assert ours == ref
    assert len(set(ours)) > 10  # a real answer, not one token repeated


def test_mirostat_v2_tokens_equal_llama_cpp(pairs):
    """Our engine and MirostatV2 against llama.cpp and its mirostat v2 sampler, three seeds."""
    pair = pairs(None)
    prompt = pair.tokenize(CHAT_PROMPT)
    draws = {}
    for seed in (1, 42, 2024):
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_mirostat_v2(seed, 5.0, 0.1))
        sampler = MirostatV2(5.0, 0.1, seed)
        pair.start(prompt)
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
        draws[seed] = ours
    assert len({tuple(d) for d in draws.values()}) == 3  # the seeds matter
