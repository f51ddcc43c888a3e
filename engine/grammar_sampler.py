"""Grammar-constrained sampling: which tokens can continue a grammar, and a sampler wrapper.

The vocabulary's pieces go into a byte trie once; a token mask is one walk of
the trie from the grammar state, where a branch dies as soon as the grammar
rejects a byte, so pieces that share a prefix share its matching.

Masks follow llama.cpp's llama_grammar_apply_impl: an end-of-generation token
is allowed only where the grammar may end; a token whose piece is empty (or
starts with NUL) never is; any other token is allowed when its bytes (up to a
NUL) continue the grammar, a trailing unfinished UTF-8 sequence included if
some live terminal could still complete it. Whole-token terminals (<[id]>)
match by id.
"""
from __future__ import annotations

import functools
from typing import Callable, Iterable, Sequence

import numpy as np

from .errors import GrammarError
from .grammar import UTF8_FOLLOW, Grammar, Gre


class VocabTrie:
    """The pieces of a vocabulary as a byte trie in flat arrays, nodes numbered breadth first.

    Node 0 is the root; the nodes at depth d are levels[d] <= n < levels[d + 1]; parent[n]
    and byte[n] are the node above n and the byte on the edge between them; the tokens
    whose piece ends at node n are token_ids[first_end[n] : first_end[n] + n_ends[n]].
    """

    def __init__(self, pieces: Sequence[bytes], excluded: Iterable[int] = ()):
        self.n_vocab = len(pieces)
        skip = set(excluded)
        index: list[dict[int, int]] = [{}]  # node -> {byte: child}, numbered as inserted
        ends: list[list[int]] = [[]]
        for token_id, piece in enumerate(pieces):
            piece = piece.split(b"\0", 1)[0]
            if token_id in skip or not piece:
                continue
            node = 0
            for b in piece:
                child = index[node].get(b)
                if child is None:
                    child = index[node][b] = len(index)
                    index.append({})
                    ends.append([])
                node = child
            ends[node].append(token_id)
        # breadth-first renumbering: (old node, new parent, byte, depth)
        order, parent, edge_byte, depth = [0], [0], [0], [0]
        for new_id, node in enumerate(order):
            for b, child in sorted(index[node].items()):
                order.append(child)
                parent.append(new_id)
                edge_byte.append(b)
                depth.append(depth[new_id] + 1)
        self.parent = np.array(parent, dtype=np.int64)
        self.byte = np.array(edge_byte, dtype=np.int64)
        self.levels = np.searchsorted(depth, np.arange(depth[-1] + 2)).tolist()
        self.n_ends = np.array([len(ends[n]) for n in order], dtype=np.int64)
        self.first_end = np.cumsum(self.n_ends) - self.n_ends
        self.token_ids = np.array([t for n in order for t in ends[n]], dtype=np.int64)
        # tokens a whole-token terminal may match: llama.cpp needs a complete first character and no
        # byte that cannot start one (it does not check continuation bytes inside a piece)
        self.matchable = np.zeros(self.n_vocab, dtype=bool)
        self.matchable[[t for t in self.token_ids.tolist() if _starts_with_character(pieces[t])]] = True


@functools.lru_cache(maxsize=4)
def vocab_trie(pieces: tuple[bytes, ...], excluded: tuple[int, ...]) -> VocabTrie:
    """The trie of a vocabulary, built once and shared by every grammar that uses it."""
    return VocabTrie(pieces, excluded)


def _starts_with_character(piece: bytes) -> bool:
    piece = piece.split(b"\0", 1)[0]
    pos = 0
    while pos < len(piece):
        n_follow = UTF8_FOLLOW[piece[pos] >> 4]
        if n_follow < 0:
            return False
        pos += 1 + n_follow
    return bool(piece) and 1 + UTF8_FOLLOW[piece[0] >> 4] <= len(piece)


class TokenMasker:
    """Token masks of one grammar over one vocabulary.

    The trie is walked one depth at a time, every node of the depth at once: a
    node's grammar state is looked up from its parent's state and its byte in a
    dense (state, byte) table mirroring the grammar's transitions, so a depth
    costs a few array operations and only unseen transitions run Python.
    """

    UNKNOWN = -1

    def __init__(self, grammar: Grammar, pieces: Sequence[bytes], eog_ids: Iterable[int]):
        self.grammar = grammar
        self.eog_ids = sorted(set(eog_ids))
        self.trie = vocab_trie(tuple(pieces), tuple(self.eog_ids))
        self._table = np.full((0, 256), self.UNKNOWN, dtype=np.int32)  # (n_states, 256) next state
        self._ok_at_end = np.zeros(0, dtype=np.int8)  # per state: 1 yes, 0 no, -1 unknown

    def allowed_tokens(self, state: int) -> np.ndarray:
        """Boolean mask (n_vocab,) of the tokens that may come next in this grammar state."""
        g = self.grammar
        mask = np.zeros(self.trie.n_vocab, dtype=bool)
        mask[self._walk(state)] = True
        for kind, token_id in g.token_terminals(state):
            in_vocab = token_id < len(mask)
            if kind == Gre.TOKEN:
                if in_vocab:
                    mask[token_id] |= self.trie.matchable[token_id]
            else:  # any token but token_id, which only the characters of its piece may still allow
                keep = mask[token_id] if in_vocab else None
                mask |= self.trie.matchable
                if in_vocab:
                    mask[token_id] = keep
        if g.can_end(state):
            mask[self.eog_ids] = True
        return mask

    def _grow(self) -> None:
        n = self.grammar.n_states
        if n > len(self._table):
            extra = max(n, 2 * len(self._table)) - len(self._table)
            self._table = np.vstack([self._table, np.full((extra, 256), self.UNKNOWN, dtype=np.int32)])
            self._ok_at_end = np.concatenate([self._ok_at_end, np.full(extra, -1, dtype=np.int8)])

    def _next_states(self, states: np.ndarray, edge_bytes: np.ndarray) -> np.ndarray:
        """The grammar state after each byte, from the state before it."""
        nxt = self._table[states, edge_bytes]
        unknown = nxt == self.UNKNOWN
        if unknown.any():
            keys = np.unique(states[unknown].astype(np.int64) * 256 + edge_bytes[unknown])
            step = self.grammar.step
            found = [step(*divmod(key, 256)) for key in keys.tolist()]
            self._grow()
            self._table[keys // 256, keys % 256] = found
            nxt = self._table[states, edge_bytes]
        return nxt

    def _walk(self, state: int) -> np.ndarray:
        """Ids of the tokens whose bytes the grammar accepts from `state`."""
        trie, dead = self.trie, self.grammar.DEAD
        self._grow()
        node_state = np.full(len(trie.parent), dead, dtype=np.int32)
        node_state[0] = state
        levels = trie.levels
        for d in range(1, len(levels) - 1):
            lo, hi = levels[d], levels[d + 1]
            before = node_state[trie.parent[lo:hi]]
            if not (before != dead).any():
                break
            node_state[lo:hi] = self._next_states(before, trie.byte[lo:hi])
        ends = np.flatnonzero((node_state != dead) & (trie.n_ends > 0))
        states = node_state[ends]
        flags = self._ok_at_end[states]
        for s in np.unique(states[flags < 0]).tolist():
            self._ok_at_end[s] = self.grammar.piece_ok_at_end(s)
        ends = ends[self._ok_at_end[states] == 1]
        owner = np.repeat(np.arange(len(ends)), trie.n_ends[ends])
        offset = np.arange(len(owner)) - (np.cumsum(trie.n_ends[ends]) - trie.n_ends[ends])[owner]
        return trie.token_ids[trie.first_end[ends][owner] + offset]


class GrammarSampler:
    """Constrains any sampler (a callable logits -> token id) to a grammar.

    A call masks the tokens the grammar forbids to -inf and lets the inner
    sampler choose among the rest. As for every sampler of engine.sampling,
    the caller then reports the token actually appended with `accept`, which
    advances the grammar and is passed on to the inner sampler's own
    `accept` (penalties); `reset` restarts both.
    """

    def __init__(self, grammar: Grammar, token_pieces: Sequence[bytes], eos_id: int | Iterable[int],
                 sampler: Callable[[np.ndarray], int]):
        eog = [eos_id] if isinstance(eos_id, (int, np.integer)) else list(eos_id)
        self.grammar = grammar
        self.pieces = list(token_pieces)
        self.eog_ids = set(int(i) for i in eog)
        self.masker = TokenMasker(grammar, self.pieces, self.eog_ids)
        self.sampler = sampler
        self.state = grammar.start_state

    def allowed_tokens(self, state: int | None = None) -> np.ndarray:
        """Boolean mask (n_vocab,) of the tokens allowed in `state` (default: the current one)."""
        return self.masker.allowed_tokens(self.state if state is None else state)

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """A copy of the logits with every forbidden token at -inf."""
        logits = np.asarray(logits, dtype=np.float32)
        if logits.shape != (len(self.pieces),):
            raise GrammarError(f"expected {len(self.pieces)} logits, got shape {logits.shape}")
        return np.where(self.allowed_tokens(), logits, np.float32(-np.inf))

    def __call__(self, logits: np.ndarray) -> int:
        masked = self.apply(logits)
        if not np.isfinite(masked).any():
            raise GrammarError("no token can continue the grammar")
        return int(self.sampler(masked))

    def accept(self, token_id: int) -> None:
        """Advance the grammar past a token (end-of-generation only where the grammar may end)."""
        if not 0 <= token_id < len(self.pieces):
            raise GrammarError(f"token id {token_id} is outside the vocabulary (0..{len(self.pieces) - 1})")
        if token_id in self.eog_ids:
            if not self.grammar.can_end(self.state):
                raise GrammarError("end of generation before the grammar is complete")
        else:
            self.state = self.grammar.accept_token(self.state, token_id, self.pieces[token_id])
        if hasattr(self.sampler, "accept"):
            self.sampler.accept(token_id)

    def is_complete(self) -> bool:
        return self.grammar.can_end(self.state)

    def reset(self, seed=None) -> None:
        self.state = self.grammar.start_state
        if hasattr(self.sampler, "reset"):
            if seed is None:
                self.sampler.reset()
            else:
                self.sampler.reset(seed)
