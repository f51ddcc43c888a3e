"""The pieces of GCC 12's C++ standard library whose exact results llama.cpp's sampling depends on.

Reproducing llama.cpp's seeded picks needs more than the same probabilities:
the same random numbers (std::mt19937, turned into doubles by
std::generate_canonical, and into an index by std::discrete_distribution) and
the same candidate order, which for equal logits is whatever std::sort and
std::partial_sort happen to leave (neither is stable).  The sorts here return
that order for keys compared with ``<``; when the keys that matter are all
distinct the order is unique and NumPy computes it, otherwise the libstdc++
algorithm is replayed step by step.
"""
import math

import numpy as np

_TWO_32 = 4294967296.0
_THRESHOLD = 16  # libstdc++'s _S_threshold: introsort hands runs this short to insertion sort


class MT19937:
    """std::mt19937 seeded with ``std::mt19937(seed)`` (init_genrand), on NumPy's MT19937 core."""

    def __init__(self, seed: int):
        key = [seed & 0xFFFFFFFF]
        for i in range(1, 624):
            key.append((1812433253 * (key[-1] ^ (key[-1] >> 30)) + i) & 0xFFFFFFFF)
        self._bits = np.random.MT19937()
        self._bits.state = {"bit_generator": "MT19937",
                            "state": {"key": np.array(key, dtype=np.uint32), "pos": 624}}

    def __call__(self) -> int:
        """The next 32-bit output."""
        return int(self._bits.random_raw())


def generate_canonical(rng: MT19937) -> float:
    """std::generate_canonical<double, 53>: a double in [0, 1) from two 32-bit outputs a, b.

    (a + b * 2**32) / 2**64 in double arithmetic; a result that rounds to 1 is
    replaced by the largest double below 1.  This is also
    std::uniform_real_distribution<double>(0, 1).
    """
    low = float(rng())
    high = float(rng())
    u = (low + high * _TWO_32) / (_TWO_32 * _TWO_32)
    return u if u < 1.0 else math.nextafter(1.0, 0.0)


def discrete_distribution(weights: np.ndarray, rng: MT19937) -> int:
    """std::discrete_distribution<int>(weights)(rng).

    With fewer than two weights the answer is 0 and no number is drawn.
    Otherwise the weights are normalised in double, summed left to right, the
    last sum set to exactly 1, and the first index whose sum is >= u returned.
    """
    if weights.size < 2:
        return 0
    w = weights.astype(np.float64)
    cumulative = np.cumsum(w / np.cumsum(w)[-1])
    cumulative[-1] = 1.0
    return int(np.searchsorted(cumulative, generate_canonical(rng), side="left"))


# ---------------------------------------------------------------------------
# Sort orders


def _unique_order(keys: np.ndarray, sorted_keys: np.ndarray) -> bool:
    """Whether ``sorted_keys`` has no equal neighbours and ``keys`` no NaN (which compares false to all)."""
    return not (np.any(sorted_keys[1:] == sorted_keys[:-1]) or np.isnan(keys).any())


def sort_order(keys: np.ndarray) -> np.ndarray:
    """The positions of ``keys`` in the order ``std::sort(first, last, less)`` leaves them."""
    order = np.argsort(keys, kind="stable")
    if _unique_order(keys, keys[order]):
        return order
    items = list(range(keys.size))
    _Replay(keys.tolist(), items).sort(0, len(items))
    return np.array(items, dtype=np.intp)


def partial_sort_order(keys: np.ndarray, middle: int) -> np.ndarray:
    """The first ``middle`` positions after ``std::partial_sort(first, first + middle, last, less)``."""
    middle = min(middle, keys.size)
    smallest = np.argpartition(keys, middle)[:middle + 1] if middle < keys.size else np.arange(keys.size)
    order = smallest[np.argsort(keys[smallest], kind="stable")]
    if _unique_order(keys, keys[order]):
        return order[:middle]
    items = list(range(keys.size))
    _Replay(keys.tolist(), items).partial_sort(0, middle, len(items))
    return np.array(items[:middle], dtype=np.intp)


class _Replay:
    """libstdc++'s introsort, heap and insertion-sort steps on ``items`` (positions into ``keys``)."""

    def __init__(self, keys: list, items: list):
        self.keys, self.items = keys, items

    def less(self, a, b) -> bool:
        return self.keys[a] < self.keys[b]

    # heap operations (stl_heap.h)

    def push_heap(self, first, hole, top, value):
        items, parent = self.items, (hole - 1) // 2
        while hole > top and self.less(items[first + parent], value):
            items[first + hole] = items[first + parent]
            hole, parent = parent, (parent - 1) // 2
        items[first + hole] = value

    def adjust_heap(self, first, hole, length, value):
        items, top, child = self.items, hole, hole
        while child < (length - 1) // 2:
            child = 2 * (child + 1)
            if self.less(items[first + child], items[first + child - 1]):
                child -= 1
            items[first + hole] = items[first + child]
            hole = child
        if length % 2 == 0 and child == (length - 2) // 2:
            child = 2 * (child + 1)
            items[first + hole] = items[first + child - 1]
            hole = child - 1
        self.push_heap(first, hole, top, value)

    def pop_heap(self, first, last, result):
        value = self.items[result]
        self.items[result] = self.items[first]
        self.adjust_heap(first, 0, last - first, value)

    def make_heap(self, first, last):
        length = last - first
        if length < 2:
            return
        for parent in range((length - 2) // 2, -1, -1):
            self.adjust_heap(first, parent, length, self.items[first + parent])

    def partial_sort(self, first, middle, last):
        self.make_heap(first, middle)
        for i in range(middle, last):
            if self.less(self.items[i], self.items[first]):
                self.pop_heap(first, middle, i)
        while middle - first > 1:
            middle -= 1
            self.pop_heap(first, middle, middle)

    # introsort (stl_algo.h)

    def sort(self, first, last):
        if last - first > 0:
            self.introsort_loop(first, last, 2 * ((last - first).bit_length() - 1))
            self.final_insertion_sort(first, last)

    def introsort_loop(self, first, last, depth_limit):
        while last - first > _THRESHOLD:
            if depth_limit == 0:
                self.partial_sort(first, last, last)
                return
            depth_limit -= 1
            cut = self.partition_pivot(first, last)
            self.introsort_loop(cut, last, depth_limit)
            last = cut

    def partition_pivot(self, first, last):
        self.move_median_to_first(first, first + 1, first + (last - first) // 2, last - 1)
        return self.unguarded_partition(first + 1, last, first)

    def move_median_to_first(self, result, a, b, c):
        items, less = self.items, self.less
        if less(items[a], items[b]):
            pick = b if less(items[b], items[c]) else c if less(items[a], items[c]) else a
        else:
            pick = a if less(items[a], items[c]) else c if less(items[b], items[c]) else b
        items[result], items[pick] = items[pick], items[result]

    def unguarded_partition(self, first, last, pivot):
        items, less = self.items, self.less
        while True:
            while less(items[first], items[pivot]):
                first += 1
            last -= 1
            while less(items[pivot], items[last]):
                last -= 1
            if not first < last:
                return first
            items[first], items[last] = items[last], items[first]
            first += 1

    def final_insertion_sort(self, first, last):
        if last - first > _THRESHOLD:
            self.insertion_sort(first, first + _THRESHOLD)
            for i in range(first + _THRESHOLD, last):
                self.linear_insert(i)
        else:
            self.insertion_sort(first, last)

    def insertion_sort(self, first, last):
        items = self.items
        for i in range(first + 1, last):
            if self.less(items[i], items[first]):
                items[first:i + 1] = [items[i]] + items[first:i]
            else:
                self.linear_insert(i)

    def linear_insert(self, last):
        items, value = self.items, self.items[last]
        while self.less(value, items[last - 1]):
            items[last] = items[last - 1]
            last -= 1
        items[last] = value
