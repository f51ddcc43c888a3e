"""The per-row steps of a LLaMA layer: RMSNorm, RoPE, SwiGLU and attention over the f16 KV cache.

Same shapes and dtypes as the NumPy reference in ``engine.ggml_ops``, and the same bits
(its summation orders, ggml's vector exp, the C library's cosf/sinf; see layer_ops.h);
inputs are checked here, then the loops run on OpenMP threads without the GIL.
"""
import numpy as np

from cython.parallel cimport prange
from libc.stdint cimport int64_t, uint16_t

from kernels.parallel import check_threads

cdef extern from "omp_compat.h" nogil:
    int omp_get_thread_num()

cdef extern from "layer_ops.h" nogil:
    enum: RMS_NORM_ROWS
    void rms_norm_rows(const float *x, const float *w, int rows, int64_t n, float eps, float *y)
    void rope_angles_row "rope_angles"(float pos, int n_dims, float theta_scale, float freq_scale, float *cs, float *sn)
    void rope_row(float *x, int heads, int hd, int n_dims, const float *cs, const float *sn)
    void swiglu_row(const float *g, const float *u, int64_t n, float *y)
    void attend(const float *q, const uint16_t *k, const uint16_t *v, int m, int hd, float scale,
                int qk_lanes, int pv_lanes, float *scores, uint16_t *half, float *acc, float *out)


cdef enum:
    MIN_PARALLEL_WORK = 65536  # values below which a step runs on one thread: waking the team costs more


cdef int team(int n_threads, Py_ssize_t work):
    """The threads worth using for ``work`` values of cheap arithmetic."""
    return n_threads if work >= MIN_PARALLEL_WORK else 1


cdef object f32(x, int ndim, str what, bint copy=False):
    """x as a C-contiguous float32 array of ``ndim`` dimensions; a fresh one if ``copy``."""
    x = np.array(x, dtype=np.float32, order="C") if copy else np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != ndim:
        raise ValueError(f"{what} must have {ndim} dimensions, got shape {x.shape}")
    return x


cdef object f32_rows(x, str what):
    """x as float32 rows (n, d) whose values are adjacent: a view with any row stride (a column
    slice of a wider array, say) is taken as it is, anything else is converted to C order."""
    x = np.asarray(x)
    if x.dtype != np.float32 or x.ndim != 2 or x.strides[1] != sizeof(float):
        x = f32(x, 2, what)
    return x


def rms_norm(x, weight, float eps, n_threads=None):
    """x / sqrt(mean(x^2) + eps) * weight for each row of x (n, d); weight (d,)."""
    x = f32(x, 2, "rms_norm input")
    weight = f32(weight, 1, "rms_norm weight")
    if weight.shape[0] != x.shape[1]:
        raise ValueError(f"rms_norm: weight of {weight.shape[0]} values for rows of {x.shape[1]}")
    cdef int nt = team(check_threads(n_threads), x.size)
    out = np.empty_like(x)
    cdef const float[:, ::1] xs = x
    cdef const float[::1] w = weight
    cdef float[:, ::1] o = out
    cdef Py_ssize_t b, n_blocks = (xs.shape[0] + RMS_NORM_ROWS - 1) // RMS_NORM_ROWS
    if x.shape[0] and x.shape[1]:
        for b in prange(n_blocks, nogil=True, schedule="static", num_threads=nt):
            rms_norm_rows(&xs[b * RMS_NORM_ROWS, 0], &w[0], min(RMS_NORM_ROWS, xs.shape[0] - b * RMS_NORM_ROWS),
                          xs.shape[1], eps, &o[b * RMS_NORM_ROWS, 0])
    return out


def rope_angles(positions, int n_dims, float freq_base, float freq_scale=1.0):
    """cos and sin (n, n_dims / 2) of every position's angles, as ggml's rope cache builds them.

    The angles start at the position and are multiplied by powf(base, -2 / n_dims) once
    per pair in float32; their cos and sin are the C library's cosf and sinf.
    """
    pos = np.ascontiguousarray(positions, dtype=np.int64)
    if pos.ndim != 1:
        raise ValueError(f"rope: positions must be 1-D, got shape {pos.shape}")
    if n_dims <= 0 or n_dims % 2:
        raise ValueError(f"rope: n_dims {n_dims} must be even and positive")
    cdef float theta_scale = np.float32(np.float64(freq_base) ** np.float64(np.float32(-2.0) / np.float32(n_dims)))
    cos, sin = np.empty((pos.shape[0], n_dims // 2), np.float32), np.empty((pos.shape[0], n_dims // 2), np.float32)
    cdef const int64_t[::1] p = pos
    cdef float[:, ::1] cs = cos
    cdef float[:, ::1] sn = sin
    cdef Py_ssize_t i
    for i in range(p.shape[0]):
        rope_angles_row(<float>p[i], n_dims, theta_scale, freq_scale, &cs[i, 0], &sn[i, 0])
    return cos, sin


def rope(x, cos, sin, n_threads=None):
    """Rotate adjacent pairs of the first n_dims values of every head of x (n, heads, hd) by the angles
    whose ``cos`` and ``sin`` (n, n_dims / 2) ``rope_angles`` gives."""
    out = f32(x, 3, "rope input", copy=True)  # rotated in place: one copy whatever x's layout
    cos, sin = f32(cos, 2, "rope cos"), f32(sin, 2, "rope sin")
    if cos.shape != sin.shape or cos.shape[0] != out.shape[0] or not 0 < 2 * cos.shape[1] <= out.shape[2]:
        raise ValueError(f"rope: angles {cos.shape} and {sin.shape} do not fit rows of shape {out.shape}")
    cdef int nt = team(check_threads(n_threads), out.size)
    cdef int n_dims = 2 * cos.shape[1]
    cdef float[:, :, ::1] o = out
    cdef const float[:, ::1] cs = cos
    cdef const float[:, ::1] sn = sin
    cdef Py_ssize_t i
    if o.shape[1]:
        for i in prange(o.shape[0], nogil=True, schedule="static", num_threads=nt):
            rope_row(&o[i, 0, 0], o.shape[1], o.shape[2], n_dims, &cs[i, 0], &sn[i, 0])
    return out


def swiglu(gate, up, n_threads=None):
    """silu(gate) * up, elementwise over (n, f).

    Rows may lie at any stride, so the two halves of one stacked product's output are read in
    place rather than copied.
    """
    gate = f32_rows(gate, "swiglu gate")
    up = f32_rows(up, "swiglu up")
    if gate.shape != up.shape:
        raise ValueError(f"swiglu: gate {gate.shape} and up {up.shape} differ")
    cdef int nt = team(check_threads(n_threads), gate.size)
    out = np.empty(gate.shape, np.float32)
    cdef const float[:, :] g = gate  # rows at any stride, values adjacent (f32_rows)
    cdef const float[:, :] u = up
    cdef float[:, ::1] o = out
    cdef Py_ssize_t i
    if gate.shape[1]:
        for i in prange(g.shape[0], nogil=True, schedule="static", num_threads=nt):
            swiglu_row(&g[i, 0], &u[i, 0], g.shape[1], &o[i, 0])
    return out


def attention(q, k_cache, v_cache, int start, float scale, n_threads=None):
    """Causal attention of q (n, n_heads, hd) at positions [start, start + n) over f16 caches.

    ``k_cache``/``v_cache``: float16 (n_kv_heads, n_ctx, hd) holding positions [0, start + n);
    query head h reads kv head h // (n_heads / n_kv_heads).  Returns (n, n_heads * hd).
    """
    q = f32(q, 3, "attention q")
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        if not isinstance(c, np.ndarray) or c.dtype != np.float16 or c.ndim != 3 or not c.flags.c_contiguous:
            raise ValueError(f"attention: {name} must be a C-contiguous float16 (n_kv_heads, n_ctx, hd) array")
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"attention: k_cache {k_cache.shape} and v_cache {v_cache.shape} differ")
    cdef int n = q.shape[0], n_heads = q.shape[1], hd = q.shape[2]
    cdef int n_kv = k_cache.shape[0], n_ctx = k_cache.shape[1]
    if k_cache.shape[2] != hd or n_kv == 0 or n_heads % n_kv:
        raise ValueError(f"attention: q {q.shape} does not fit caches of shape {k_cache.shape}")
    if start < 0 or start + n > n_ctx:
        raise ValueError(f"attention: positions [{start}, {start + n}) exceed the cache's {n_ctx}")
    cdef int group = n_heads // n_kv, n_keys_max = start + n
    # the lanes of the reference's float_dots: tinyBLAS's 8 for several query rows where it
    # takes the shape (q.K: hd a multiple of 8; P.V: hd a multiple of 4), else ggml_vec_dot_f16's 32
    cdef int qk_lanes = 8 if n > 1 and hd % 8 == 0 else 32
    cdef int pv_lanes = 8 if n > 1 and hd % 4 == 0 else 32
    cdef int nt = team(check_threads(n_threads), q.size * n_keys_max)
    out = np.empty((n, n_heads * hd), np.float32)
    if n == 0 or hd == 0:
        return out
    cdef const float[:, :, ::1] qs = q
    cdef const uint16_t[:, :, ::1] kc = k_cache.view(np.uint16)
    cdef const uint16_t[:, :, ::1] vc = v_cache.view(np.uint16)
    cdef float[:, ::1] o = out
    cdef float[:, ::1] scores = np.empty((nt, n_keys_max), np.float32)
    cdef uint16_t[:, ::1] half = np.empty((nt, n_keys_max + hd), np.uint16)
    cdef float[:, ::1] acc = np.empty((nt, 32 * hd), np.float32)
    cdef Py_ssize_t task
    cdef int t, h, me
    # row t attends to start + t + 1 keys, so several rows are dealt to the threads in turn, a
    # row's heads at once (each thread writes whole output rows), rather than in contiguous
    # shares, which would give the last thread the longest rows; one row's heads are shared out
    cdef int chunk = n_heads if n > 1 else (n_heads + nt - 1) // nt
    for task in prange(n * n_heads, nogil=True, schedule="static", chunksize=chunk, num_threads=nt):
        t = task // n_heads
        h = task % n_heads
        me = omp_get_thread_num()
        attend(&qs[t, h, 0], &kc[h // group, 0, 0], &vc[h // group, 0, 0], start + t + 1, hd, scale,
               qk_lanes, pv_lanes, &scores[me, 0], &half[me, 0], &acc[me, 0], &o[t, h * hd])
    return out
