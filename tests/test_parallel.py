"""The OpenMP plumbing of the compiled kernels: the build has OpenMP and honours a thread count."""
import math

import numpy as np
import pytest

from kernels import parallel


def test_built_with_openmp():
    assert parallel.openmp_enabled()


@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_parallel_sum_uses_the_requested_threads(n_threads):
    x = np.random.default_rng(n_threads).standard_normal(100_000).astype(np.float32)
    total, used = parallel.parallel_sum(x, n_threads)
    assert used == n_threads
    assert total == pytest.approx(math.fsum(x.astype(np.float64)), rel=1e-9, abs=1e-6)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_thread_count_is_validated(bad):
    with pytest.raises(ValueError, match="n_threads"):
        parallel.parallel_sum(np.ones(4, np.float32), bad)
