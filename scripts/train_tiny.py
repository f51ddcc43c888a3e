"""Train the tiny Shakespeare LLaMA shipped in engine/data, and export it to GGUF.

    python -m scripts.train_tiny CORPUS [--steps N] [--resume]

Steps: a SentencePiece BPE vocabulary (byte fallback, unk=0 bos=1 eos=2) on the
first 95% of the corpus; a small LLaMA (RMSNorm, adjacent-pair RoPE as llama.cpp's
LLAMA_ROPE_TYPE_NORM uses, GQA, SwiGLU, untied output) trained with AdamW on random
BOS-led windows of the training tokens; an F32 GGUF export with the gguf writer,
then llama.cpp's quantiser makes the shipped Q8_0 file. torch is needed here only,
never by the package.
"""
from __future__ import annotations

import argparse
import io
import math
import time
from dataclasses import asdict
from pathlib import Path

import gguf
import numpy as np
import sentencepiece as spm
import torch
import torch.nn.functional as F
from torch import nn

from tests.model_files import ModelSpec, add_hyperparameters, quantize_model
from tests.tiny_shakespeare import MODEL_PATH, TOKENIZER_PATH, split_corpus


SPEC = ModelSpec(dim=256, n_layers=4, n_heads=8, n_kv_heads=4, ffn=768, n_ctx=256, seed=1337)
N_VOCAB = 2048


# ---------------------------------------------------------------- tokenizer

def train_tokenizer(train_text: str, n_vocab: int, seed: int, path: Path) -> spm.SentencePieceProcessor:
    """A SentencePiece BPE model over the training lines, llama-style ids and no normalisation."""
    model = io.BytesIO()
    spm.set_random_generator_seed(seed)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(train_text.splitlines()), model_writer=model,
        model_type="bpe", vocab_size=n_vocab, byte_fallback=True, character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, split_digits=True,
        num_threads=2, minloglevel=2)
    path.write_bytes(model.getvalue())
    return spm.SentencePieceProcessor(model_proto=model.getvalue())


def token_type(sp: spm.SentencePieceProcessor, i: int) -> gguf.TokenType:
    """The GGUF token type of piece ``i`` (normal, unknown, control, user-defined, unused, byte)."""
    if sp.is_unknown(i):
        return gguf.TokenType.UNKNOWN
    if sp.is_control(i):
        return gguf.TokenType.CONTROL
    if sp.is_byte(i):
        return gguf.TokenType.BYTE
    if sp.is_unused(i):
        return gguf.TokenType.UNUSED
    return gguf.TokenType.NORMAL


# ---------------------------------------------------------------- model

def rope(x: torch.Tensor, base: float) -> torch.Tensor:
    """Rotate each adjacent pair (2i, 2i+1) of every head by pos * base^(-2i/head_dim)."""
    _, n_tokens, _, head_dim = x.shape  # (batch, n_tokens, n_heads, head_dim)
    freqs = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.arange(n_tokens, dtype=torch.float32)[:, None] * freqs  # (n_tokens, head_dim/2)
    cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Block(nn.Module):
    def __init__(self, c: ModelSpec):
        super().__init__()
        self.c = c
        self.head_dim = c.dim // c.n_heads
        self.attn_norm = RMSNorm(c.dim, c.rms_eps)
        self.attn_q = nn.Linear(c.dim, c.n_heads * self.head_dim, bias=False)
        self.attn_k = nn.Linear(c.dim, c.n_kv_heads * self.head_dim, bias=False)
        self.attn_v = nn.Linear(c.dim, c.n_kv_heads * self.head_dim, bias=False)
        self.attn_output = nn.Linear(c.n_heads * self.head_dim, c.dim, bias=False)
        self.ffn_norm = RMSNorm(c.dim, c.rms_eps)
        self.ffn_gate = nn.Linear(c.dim, c.ffn, bias=False)
        self.ffn_up = nn.Linear(c.dim, c.ffn, bias=False)
        self.ffn_down = nn.Linear(c.ffn, c.dim, bias=False)

    def attention(self, x):
        c = self.c
        b, n, _ = x.shape  # (batch, n_tokens, dim)
        q = rope(self.attn_q(x).view(b, n, c.n_heads, self.head_dim), c.rope_base)
        k = rope(self.attn_k(x).view(b, n, c.n_kv_heads, self.head_dim), c.rope_base)
        v = self.attn_v(x).view(b, n, c.n_kv_heads, self.head_dim)
        # query head h reads kv head h // (n_heads / n_kv_heads), as llama.cpp broadcasts
        group = c.n_heads // c.n_kv_heads
        k, v = (t.repeat_interleave(group, dim=2).transpose(1, 2) for t in (k, v))  # (b, n_heads, n, head_dim)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, is_causal=True)
        return self.attn_output(out.transpose(1, 2).reshape(b, n, c.dim))

    def forward(self, x):
        x = x + self.attention(self.attn_norm(x))
        h = self.ffn_norm(x)
        return x + self.ffn_down(F.silu(self.ffn_gate(h)) * self.ffn_up(h))


class TinyLlama(nn.Module):
    def __init__(self, c: ModelSpec, n_vocab: int):
        super().__init__()
        self.c = c
        self.token_embd = nn.Embedding(n_vocab, c.dim)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layers))
        self.output_norm = RMSNorm(c.dim, c.rms_eps)
        self.output = nn.Linear(c.dim, n_vocab, bias=False)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                residual_out = name.endswith(("attn_output.weight", "ffn_down.weight"))
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * c.n_layers) if residual_out else 0.02)

    def forward(self, tokens):
        x = self.token_embd(tokens)  # (batch, n_tokens, dim)
        for block in self.blocks:
            x = block(x)
        return self.output(self.output_norm(x))  # (batch, n_tokens, n_vocab)


# ---------------------------------------------------------------- training

def batch(ids: np.ndarray, c: ModelSpec, size: int, rng: np.random.Generator):
    """Random windows: inputs BOS + n_ctx-1 tokens, targets the n_ctx tokens that follow BOS."""
    starts = rng.integers(0, len(ids) - c.n_ctx, size)
    targets = np.stack([ids[s:s + c.n_ctx] for s in starts])  # (size, n_ctx)
    inputs = np.concatenate([np.full((size, 1), 1), targets[:, :-1]], axis=1)
    return torch.from_numpy(inputs).long(), torch.from_numpy(targets).long()


def learning_rate(step: int, steps: int, peak: float) -> float:
    """Linear warm-up over the first tenth of the steps, then cosine decay to a tenth of the peak."""
    warmup = max(1, steps // 10)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def held_out_loss(model: TinyLlama, ids: np.ndarray, n_batches: int = 2, size: int = 8) -> float:
    model.eval()
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(n_batches):
        x, y = batch(ids, model.c, size, rng)
        losses.append(F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item())
    model.train()
    return sum(losses) / len(losses)


def train(model: TinyLlama, train_ids, held_ids, args, checkpoint: Path) -> None:
    decay = [p for p in model.parameters() if p.dim() == 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95))
    start = 0
    if args.resume and checkpoint.exists():
        state = torch.load(checkpoint)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["step"]
        print(f"resumed at step {start}", flush=True)
    t0 = time.time()
    for step in range(start, args.steps):
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr)
        x, y = batch(train_ids, model.c, args.batch, np.random.default_rng([model.c.seed, step]))
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 10 == 0 or step == args.steps - 1:
            rate = (time.time() - t0) / (step - start + 1)
            print(f"step {step} loss {loss.item():.4f} {rate:.3f} s/step", flush=True)
        if (step + 1) % args.eval_every == 0 or step == args.steps - 1:
            print(f"step {step + 1} held-out loss {held_out_loss(model, held_ids):.4f}", flush=True)
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step + 1}, checkpoint)
    print(f"trained {args.steps - start} steps in {time.time() - t0:.0f} s", flush=True)


# ---------------------------------------------------------------- export

def export_gguf(model: TinyLlama, sp: spm.SentencePieceProcessor, path: Path) -> None:
    """Write the model as an F32 llama GGUF (norms are F32 in every later quantisation too)."""
    c, n_vocab = model.c, sp.get_piece_size()
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-shakespeare")
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    add_hyperparameters(w, c)
    w.add_vocab_size(n_vocab)
    w.add_tokenizer_model("llama")
    w.add_token_list([sp.id_to_piece(i).encode() for i in range(n_vocab)])
    w.add_token_scores([sp.get_score(i) for i in range(n_vocab)])
    w.add_token_types([token_type(sp, i) for i in range(n_vocab)])
    w.add_unk_token_id(sp.unk_id())
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(True)
    for name, tensor in model.state_dict().items():
        name = name.replace("blocks.", "blk.")
        w.add_tensor(name, tensor.float().numpy())  # numpy (rows, row_len) -> GGUF dims (row_len, rows)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", type=Path)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--checkpoint", type=Path, default=Path("/tmp/train_tiny.pt"))
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--out", type=Path, default=MODEL_PATH)
    ap.add_argument("--tokenizer", type=Path, default=TOKENIZER_PATH)
    ap.add_argument("--f32", type=Path, default=Path("/tmp/tiny-shakespeare-f32.gguf"), help="F32 export kept here")
    args = ap.parse_args()

    torch.manual_seed(SPEC.seed)
    torch.set_num_threads(args.threads)
    print(asdict(SPEC), flush=True)
    train_text, held_text = split_corpus(args.corpus.read_text(encoding="utf-8"))
    sp = train_tokenizer(train_text, N_VOCAB, SPEC.seed, args.tokenizer)
    train_ids = np.array(sp.encode(train_text), dtype=np.int64)
    held_ids = np.array(sp.encode(held_text), dtype=np.int64)
    print(f"{len(train_ids)} training tokens, {len(held_ids)} held-out tokens", flush=True)

    model = TinyLlama(SPEC, N_VOCAB)
    print(f"{sum(p.numel() for p in model.parameters())} parameters", flush=True)
    train(model, train_ids, held_ids, args, args.checkpoint)
    export_gguf(model, sp, args.f32)
    quantize_model(args.f32, args.out, "Q8_0")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)", flush=True)


if __name__ == "__main__":
    main()
