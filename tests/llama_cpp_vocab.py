"""llama.cpp's tokenizer for a GGUF vocabulary, through llama_cpp's low-level API, in the shape of ours;
and llama.cpp's test vectors for its vocabularies."""
import ctypes

import llama_cpp


class LlamaCppVocab:
    """llama.cpp (vocab_only) on one vocabulary file: the reference the tokenizer tests compare with."""

    def __init__(self, path):
        self.llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.buffer = ctypes.create_string_buffer(256)

    def tokenize(self, text: str, add_bos: bool = False, special: bool = False) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=add_bos, special=special)

    def token_to_piece(self, token: int, special: bool) -> bytes:
        n = llama_cpp.llama_token_to_piece(self.vocab, token, self.buffer, len(self.buffer), 0, special)
        if n < 0:  # the buffer is -n bytes short of the piece
            self.buffer = ctypes.create_string_buffer(-n)
            return self.token_to_piece(token, special)
        return self.buffer.raw[:n]

    def pieces_text(self, ids: list[int], special: bool) -> str:
        """The pieces joined, as llama.cpp's streaming output shows them, invalid UTF-8 as U+FFFD."""
        return b"".join(self.token_to_piece(t, special) for t in ids).decode("utf-8", errors="replace")

    def untokenize(self, ids: list[int], special: bool = False) -> str:
        """llama_detokenize, which common_detokenize and llama.cpp's tests use (for byte-level
        vocabularies it also removes spaces before punctuation, which ours does not)."""
        buf = ctypes.create_string_buffer(64 * len(ids) + 1)
        n = llama_cpp.llama_detokenize(self.vocab, (llama_cpp.llama_token * len(ids))(*ids), len(ids),
                                       buf, len(buf), False, special)
        assert n >= 0
        return buf.raw[:n].decode("utf-8", errors="replace")


def read_vectors(folder, name):
    """llama.cpp's tests/test-tokenizer-0 cases: inputs split by a marker line, one line of ids per input."""
    inputs = (folder / f"ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    outputs = (folder / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8").splitlines()
    if inputs[-1] == "":
        inputs.pop()  # the file ends with the marker
    assert len(inputs) == len(outputs) > 40
    return [(text, [int(i) for i in ids.split()]) for text, ids in zip(inputs, outputs)]
