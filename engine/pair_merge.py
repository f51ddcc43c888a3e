"""What SentencePiece BPE (engine.spm) and byte-level BPE (engine.bpe) share: the merge loop,
and encoding text word by word."""
from __future__ import annotations

import heapq
from itertools import chain
from typing import Callable


def encode_words(words: list[str], encode_word: Callable[[str], list[int]]) -> list[int]:
    """The ids of ``words`` in order, each distinct word encoded once: text repeats its words,
    so most of a long text is looked up, not merged. The memo lives for one call, so
    tokenizing shares nothing between calls (or threads) and holds no memory after."""
    ids_of = {word: encode_word(word) for word in set(words)}
    return list(chain.from_iterable(map(ids_of.__getitem__, words)))


def merge_pairs(symbols: list[str], priority: dict[tuple[str, str], float]) -> list[str]:
    """Repeatedly join the adjacent pair of symbols that ``priority`` ranks first (lowest value;
    the leftmost pair on a tie) until no adjacent pair is in ``priority``; the symbols left.

    A heap of candidate pairs makes this O(n log n). Symbol i starts at input symbol i
    and only ever grows rightwards, so a queued pair whose two sides no longer have
    the lengths they had when it was queued is stale, and is skipped when popped.
    """
    piece = list(symbols)                                   # '' once merged into its left neighbour
    n = len(piece)
    prev = list(range(-1, n - 1))
    next_ = list(range(1, n + 1))
    if n:
        next_[-1] = -1
    heap: list[tuple[float, int, int, int]] = []            # (priority, left, right, merged length)

    def push(left: int, right: int) -> None:
        if left >= 0 and right >= 0:
            rank = priority.get((piece[left], piece[right]))
            if rank is not None:
                heapq.heappush(heap, (rank, left, right, len(piece[left]) + len(piece[right])))

    for i in range(1, n):
        push(i - 1, i)
    while heap:
        _, left, right, length = heapq.heappop(heap)
        if not piece[left] or not piece[right] or len(piece[left]) + len(piece[right]) != length:
            continue
        piece[left] += piece[right]
        piece[right] = ""
        next_[left] = next_[right]
        if next_[left] >= 0:
            prev[next_[left]] = left
        push(prev[left], left)
        push(left, next_[left])
    return [p for p in piece if p]
