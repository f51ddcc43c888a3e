"""The per-row steps of a decoder layer: RMSNorm, RoPE, SwiGLU, GEGLU and attention over the f16 KV cache.

Same shapes and dtypes as the NumPy reference in ``engine.exact``, and the same bits
(its summation orders, ggml's vector exp, the C library's cosf/sinf; see layer_ops.h);
inputs are checked here, then the loops run on OpenMP threads without the GIL.
"""
import numpy as np

cimport numpy as cnp
from cython.parallel cimport prange
from libc.stdint cimport int64_t, uint16_t
from libc.math cimport pow
from libc.stdlib cimport free, malloc

from kernels.ndarrays cimport empty, is_native, is_native_c
from kernels.parallel import check_threads

cnp.import_array()

cdef extern from "omp_compat.h" nogil:
    int omp_get_thread_num()

cdef extern from "layer_ops.h" nogil:
    enum: RMS_NORM_ROWS
    void rms_norm_rows(const float *x, const float *w, int rows, int64_t n, float eps, float *y)
    void rope_cos_sin_at(float pos, int n_dims, float theta_scale, float freq_scale, const float *factors,
                         float *cs, float *sn)
    void rope_row(float *x, int heads, int hd, int n_dims, const float *cs, const float *sn)
    void rope_row_neox(float *x, int heads, int hd, int n_dims, const float *cs, const float *sn)
    void swiglu_row(const float *g, const float *u, int64_t n, float *y, int isa)
    void geglu_row(const float *g, const float *u, int64_t n, const uint16_t *table, float *y)
    void attend_heads(const float *q, int heads, const uint16_t *k, const uint16_t *v, int m, int masked, int hd,
                      float scale, int qk_lanes, int pv_lanes, float *scores, uint16_t *half, float *acc, float *out)
    enum: ATTEND_GROUP
    void transpose_keys16(const uint16_t *k, int m, int hd, int b, float *kt)
    void attend_group(const float *q, int heads, const float *kt, const uint16_t *v, int m, int masked, int hd,
                      float scale, float *qf, float *scores, float *probs, uint16_t *half, float *acc, float *out)


cdef enum:
    MIN_PARALLEL_WORK = 65536  # values below which a step runs on one thread: waking the team costs more


cdef int team(int n_threads, Py_ssize_t work) noexcept nogil:
    """The threads worth using for ``work`` values of cheap arithmetic."""
    return n_threads if work >= MIN_PARALLEL_WORK else 1


cdef cnp.ndarray f32(x, int ndim, str what, bint copy=False):
    """x as a C-contiguous float32 array of ``ndim`` dimensions; a fresh one if ``copy``."""
    if is_native_c(x, cnp.NPY_FLOAT32, ndim):  # the usual case: no conversion
        return cnp.PyArray_NewCopy(<cnp.ndarray>x, cnp.NPY_CORDER) if copy else <cnp.ndarray>x
    x = np.array(x, dtype=np.float32, order="C") if copy else np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != ndim:
        raise ValueError(f"{what} must have {ndim} dimensions, got shape {x.shape}")
    return x


cdef cnp.ndarray f32_rows(x, str what):
    """x as float32 rows (n, d) whose values are adjacent: a view with any row stride (a column
    slice of a wider array, say) is taken as it is, anything else is converted to C order."""
    if is_native(x, cnp.NPY_FLOAT32, 2) and cnp.PyArray_STRIDE(<cnp.ndarray>x, 1) == sizeof(float):
        return <cnp.ndarray>x
    return f32(x, 2, what)


def rms_norm(x, weight, float eps, n_threads=None):
    """x / sqrt(mean(x^2) + eps) * weight for each row of x (n, d); weight (d,)."""
    cdef cnp.ndarray xa = f32(x, 2, "rms_norm input"), wa = f32(weight, 1, "rms_norm weight")
    cdef Py_ssize_t n = xa.shape[0], d = xa.shape[1]
    if wa.shape[0] != d:
        raise ValueError(f"rms_norm: weight of {wa.shape[0]} values for rows of {d}")
    cdef cnp.ndarray out = empty(2, xa.shape, cnp.NPY_FLOAT32)
    if n and d:
        rms_norm_into(<const float *>cnp.PyArray_DATA(xa), <const float *>cnp.PyArray_DATA(wa), n, d, eps,
                      <float *>cnp.PyArray_DATA(out), check_threads(n_threads))
    return out


cdef void rms_norm_into(const float *x, const float *w, Py_ssize_t n, Py_ssize_t d, float eps, float *y,
                        int n_threads) noexcept nogil:
    """rms_norm of the rows x (n, d) into y (n, d); n and d positive."""
    cdef Py_ssize_t b, n_blocks = (n + RMS_NORM_ROWS - 1) // RMS_NORM_ROWS
    for b in prange(n_blocks, schedule="static", num_threads=team(n_threads, n * d)):
        rms_norm_rows(x + b * RMS_NORM_ROWS * d, w, min(RMS_NORM_ROWS, n - b * RMS_NORM_ROWS), d, eps,
                      y + b * RMS_NORM_ROWS * d)


def rope_cos_sin(positions, int n_dims, float freq_base, float freq_scale=1.0, freq_factors=None):
    """cos and sin (n, n_dims / 2) of every position's angles, as ggml's rope cache builds them.

    The angles start at the position and are multiplied by powf(base, -2 / n_dims) once
    per pair in float32, each divided by its pair's ``freq_factors`` entry when given
    (Llama 3's rope_freqs, (n_dims / 2,)); their cos and sin are the C library's cosf and sinf.
    """
    if not is_native_c(positions, cnp.NPY_INT64, 1):
        positions = np.ascontiguousarray(positions, dtype=np.int64)
        if positions.ndim != 1:
            raise ValueError(f"rope: positions must be 1-D, got shape {positions.shape}")
    if n_dims <= 0 or n_dims % 2:
        raise ValueError(f"rope: n_dims {n_dims} must be even and positive")
    cdef cnp.ndarray factors = None if freq_factors is None else f32(freq_factors, 1, "rope freq_factors")
    if factors is not None and factors.shape[0] != n_dims // 2:
        raise ValueError(f"rope: {factors.shape[0]} frequency factors for {n_dims // 2} pairs")
    cdef const float *ff = NULL if factors is None else <const float *>cnp.PyArray_DATA(factors)
    # the reference's float64 power of float32 operands, rounded to float32
    cdef float theta_scale = <float>pow(<double>freq_base, <double>(<float>-2.0 / <float>n_dims))
    cdef cnp.ndarray pos = positions
    cdef cnp.npy_intp shape[2]
    shape[0], shape[1] = pos.shape[0], n_dims // 2
    cdef cnp.ndarray cos = empty(2, shape, cnp.NPY_FLOAT32), sin = empty(2, shape, cnp.NPY_FLOAT32)
    cdef const int64_t *p = <const int64_t *>cnp.PyArray_DATA(pos)
    cdef float *cs = <float *>cnp.PyArray_DATA(cos)
    cdef float *sn = <float *>cnp.PyArray_DATA(sin)
    cdef Py_ssize_t i
    for i in range(shape[0]):
        rope_cos_sin_at(<float>p[i], n_dims, theta_scale, freq_scale, ff, cs + i * shape[1], sn + i * shape[1])
    return cos, sin


def rope(x, cos, sin, n_threads=None, bint neox=False):
    """Rotate the pairs of the first n_dims values of every head of x (n, heads, hd) by the angles
    whose ``cos`` and ``sin`` (n, n_dims / 2) ``rope_cos_sin`` gives: adjacent pairs, or with ``neox``
    the pairs (x[i], x[i + n_dims / 2])."""
    cdef cnp.ndarray cs = f32(cos, 2, "rope cos"), sn = f32(sin, 2, "rope sin")
    cdef cnp.ndarray out = rope_copy(x, cs, sn)
    cdef float *o = <float *>cnp.PyArray_DATA(out)
    cdef const float *c = <const float *>cnp.PyArray_DATA(cs)
    cdef const float *s = <const float *>cnp.PyArray_DATA(sn)
    cdef Py_ssize_t i, n = out.shape[0], heads = out.shape[1], hd = out.shape[2], half = cs.shape[1]
    cdef int nt = team(check_threads(n_threads), out.size)
    for i in prange(n, nogil=True, schedule="static", num_threads=nt):
        rope_heads(o + i * heads * hd, heads, hd, half, c + i * half, s + i * half, neox)
    return out


def rope_qk(q, k, cos, sin, n_threads=None, bint neox=False):
    """``rope`` of q (n, n_heads, hd) and of k (n, n_kv_heads, hd) at the same positions, in one pass."""
    cdef cnp.ndarray cs = f32(cos, 2, "rope cos"), sn = f32(sin, 2, "rope sin")
    cdef cnp.ndarray qo = rope_copy(q, cs, sn), ko = rope_copy(k, cs, sn)
    if qo.shape[2] != ko.shape[2]:
        raise ValueError(f"rope: q {np.shape(qo)} and k {np.shape(ko)} differ in head size")
    cdef float *oq = <float *>cnp.PyArray_DATA(qo)
    cdef float *ok = <float *>cnp.PyArray_DATA(ko)
    cdef const float *c = <const float *>cnp.PyArray_DATA(cs)
    cdef const float *s = <const float *>cnp.PyArray_DATA(sn)
    cdef Py_ssize_t i, n = qo.shape[0], hq = qo.shape[1], hk = ko.shape[1], hd = qo.shape[2], half = cs.shape[1]
    cdef int nt = team(check_threads(n_threads), qo.size + ko.size)
    for i in prange(n, nogil=True, schedule="static", num_threads=nt):
        rope_heads(oq + i * hq * hd, hq, hd, half, c + i * half, s + i * half, neox)
        rope_heads(ok + i * hk * hd, hk, hd, half, c + i * half, s + i * half, neox)
    return qo, ko


cdef cnp.ndarray rope_copy(x, cnp.ndarray cs, cnp.ndarray sn):
    """x (n, heads, hd) as a fresh C-contiguous float32 copy to rotate in place, checked against the
    angles cs, sn (n, n_dims / 2)."""
    cdef cnp.ndarray out = f32(x, 3, "rope input", copy=True)  # one copy whatever x's layout
    cdef Py_ssize_t n = out.shape[0], hd = out.shape[2], half = cs.shape[1]
    if sn.shape[0] != cs.shape[0] or sn.shape[1] != half or cs.shape[0] != n or not 0 < 2 * half <= hd:
        raise ValueError(f"rope: angles {np.shape(cs)} and {np.shape(sn)} do not fit rows of shape {np.shape(out)}")
    return out


cdef void rope_heads(float *x, Py_ssize_t heads, Py_ssize_t hd, Py_ssize_t half, const float *c,
                     const float *s, bint neox) noexcept nogil:
    """One row's heads rotated in place (rope_row, or rope_row_neox)."""
    if heads == 0:
        return
    if neox:
        rope_row_neox(x, <int>heads, <int>hd, <int>(2 * half), c, s)
    else:
        rope_row(x, <int>heads, <int>hd, <int>(2 * half), c, s)


def swiglu(gate, up, n_threads=None, int isa=0):
    """silu(gate) * up, elementwise over (n, f), with the vector exp of llama.cpp built for ``isa``
    (0: AVX2, 1: AVX-512).

    Rows may lie at any stride, so the two halves of one stacked product's output are read in
    place rather than copied.
    """
    return _glu(gate, up, None, n_threads, isa)


def geglu(gate, up, table, n_threads=None):
    """gelu(gate) * up, elementwise over (n, f), GELU read from ``table`` (ggml's (65536,) float16
    GELU of every f16 value, ``engine.ggml_math.gelu_table``) as ggml does; rows as in ``swiglu``."""
    if not is_native_c(table, cnp.NPY_FLOAT16, 1) or table.shape[0] != 1 << 16:
        raise ValueError("geglu: table must be a C-contiguous float16 array of 65536 values")
    return _glu(gate, up, table, n_threads, 0)


cdef cnp.ndarray _glu(gate, up, cnp.ndarray table, n_threads, int isa):
    """swiglu, or with a GELU table geglu."""
    what = "swiglu" if table is None else "geglu"
    cdef cnp.ndarray g = f32_rows(gate, f"{what} gate"), u = f32_rows(up, f"{what} up")
    cdef Py_ssize_t n = g.shape[0], f = g.shape[1]
    if u.shape[0] != n or u.shape[1] != f:
        raise ValueError(f"{what}: gate {np.shape(g)} and up {np.shape(u)} differ")
    cdef cnp.ndarray out = empty(2, g.shape, cnp.NPY_FLOAT32)
    if n and f:  # rows at any stride, values adjacent (f32_rows)
        glu_into(cnp.PyArray_BYTES(g), g.strides[0], cnp.PyArray_BYTES(u), u.strides[0], n, f,
                 NULL if table is None else <const uint16_t *>cnp.PyArray_DATA(table), isa,
                 <float *>cnp.PyArray_DATA(out), check_threads(n_threads))
    return out


cdef void glu_into(const char *gate, Py_ssize_t gate_stride, const char *up, Py_ssize_t up_stride, Py_ssize_t n,
                   Py_ssize_t f, const uint16_t *table, int isa, float *y, int n_threads) noexcept nogil:
    """swiglu (``table`` NULL) or geglu of n rows of f values, ``gate_stride`` and ``up_stride`` bytes
    apart, into y (n, f); n and f positive."""
    cdef Py_ssize_t i
    for i in prange(n, schedule="static", num_threads=team(n_threads, n * f)):
        glu_row(<const float *>(gate + i * gate_stride), <const float *>(up + i * up_stride), f, table, isa, y + i * f)


cdef void glu_row(const float *gate, const float *up, Py_ssize_t f, const uint16_t *table, int isa,
                  float *y) noexcept nogil:
    """swiglu (``table`` NULL) or geglu of one row of f values (or of a run of a row's values that
    starts at a multiple of 8: each value's arithmetic is the same) into y."""
    if table == NULL:
        swiglu_row(gate, up, f, y, isa)
    else:
        geglu_row(gate, up, f, table, y)


def attention(q, k_cache, v_cache, int start, float scale, n_threads=None, int window=0, bint rowwise=False,
              int isa=0):
    """Causal attention of q (n, n_heads, hd) at positions [start, start + n) over f16 caches;
    with a ``window``, position p sees keys (p - window, p] only; ``rowwise``: every row summed
    as a one-row call sums it, whatever n is; in the orders of llama.cpp built for ``isa``
    (0: AVX2, 1: AVX-512).

    ``k_cache``/``v_cache``: float16 (n_kv_heads, n_ctx, hd) holding positions [0, start + n);
    query head h reads kv head h // (n_heads / n_kv_heads).  Returns (n, n_heads * hd).
    """
    cdef cnp.ndarray qa = f32(q, 3, "attention q")
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        if not is_native_c(c, cnp.NPY_FLOAT16, 3):
            raise ValueError(f"attention: {name} must be a C-contiguous float16 (n_kv_heads, n_ctx, hd) array")
    cdef cnp.ndarray kc = k_cache, vc = v_cache
    if kc.shape[0] != vc.shape[0] or kc.shape[1] != vc.shape[1] or kc.shape[2] != vc.shape[2]:
        raise ValueError(f"attention: k_cache {np.shape(kc)} and v_cache {np.shape(vc)} differ")
    cdef int n = qa.shape[0], n_heads = qa.shape[1], hd = qa.shape[2]
    cdef int n_kv = kc.shape[0], n_ctx = kc.shape[1]
    if kc.shape[2] != hd or n_kv == 0 or n_heads % n_kv:
        raise ValueError(f"attention: q {np.shape(qa)} does not fit caches of shape {np.shape(kc)}")
    if window < 0:
        raise ValueError(f"attention: window {window} is negative")
    if start < 0 or start + n > n_ctx:
        raise ValueError(f"attention: positions [{start}, {start + n}) exceed the cache's {n_ctx}")
    if isa not in (0, 1):
        raise ValueError(f"attention: isa must be 0 (AVX2) or 1 (AVX-512), got {isa}")
    cdef cnp.npy_intp shape[2]
    shape[0], shape[1] = n, n_heads * hd
    cdef cnp.ndarray out = empty(2, shape, cnp.NPY_FLOAT32)
    if n and hd:
        attention_into(<const float *>cnp.PyArray_DATA(qa), <const uint16_t *>cnp.PyArray_DATA(kc),
                       <const uint16_t *>cnp.PyArray_DATA(vc), n, n_heads, n_kv, hd, n_ctx, start, scale, window,
                       check_threads(n_threads), rowwise, isa, <float *>cnp.PyArray_DATA(out))
    return out


cdef int attention_into(const float *qs, const uint16_t *ks, const uint16_t *vs, int n, int n_heads, int n_kv, int hd,
                        int n_ctx, int start, float scale, int window, int n_threads, bint rowwise, int isa,
                        float *o) except -1:
    """attention of the rows q (n, n_heads, hd) over the f16 bits of the caches (n_kv, n_ctx, hd) into
    o (n, n_heads * hd); the arguments checked as ``attention`` checks them, n and hd positive."""
    cdef int group = n_heads // n_kv, n_keys_max = start + n
    # the lanes of the reference's float_dots: tinyBLAS's (AVX2 8, AVX-512 16) for several query
    # rows where it takes the shape (q.K: hd a multiple of its lanes; P.V: hd a multiple of 4),
    # else ggml_vec_dot_f16's (AVX2 32, AVX-512 64)
    cdef int tiny = 16 if isa else 8, vec = 64 if isa else 32
    cdef int qk_lanes = tiny if n > 1 and hd % tiny == 0 and not rowwise else vec
    cdef int pv_lanes = tiny if n > 1 and hd % 4 == 0 and not rowwise else vec
    cdef int nt = team(n_threads, <Py_ssize_t>n * n_heads * hd * n_keys_max)
    if ATTEND_GROUP and qk_lanes == 16:  # AVX-512's tinyBLAS orders: each kv head's query heads together
        return attend_groups(qs, ks, vs, n, n_heads, n_kv, hd, n_ctx, start, scale, window, nt, o)
    cdef Py_ssize_t kv_stride = <Py_ssize_t>n_ctx * hd  # values per kv head
    # scratch per thread (see attend_heads): the scores, the queries and probabilities in f16, the value lanes
    cdef float *scores = <float *>malloc(<size_t>nt * 2 * ROW_GROUP * n_keys_max * sizeof(float))
    cdef uint16_t *half = <uint16_t *>malloc(<size_t>nt * ROW_GROUP * (n_keys_max + hd) * sizeof(uint16_t))
    cdef float *acc = <float *>malloc(<size_t>nt * ROW_GROUP * 64 * hd * sizeof(float))
    cdef Py_ssize_t task
    cdef int t, h, h1, g, end, me
    # row t attends to start + t + 1 keys, so several rows are dealt to the threads in turn, a
    # row's heads at once (each thread writes whole output rows), rather than in contiguous
    # shares, which would give the last thread the longest rows; one row's heads are shared out,
    # a run of them to each thread, attended a kv head's query heads at a time
    cdef int per = n_heads if n > 1 else (n_heads + nt - 1) // nt  # heads per task
    cdef int runs = (n_heads + per - 1) // per                      # tasks per row
    try:
        if scores == NULL or half == NULL or acc == NULL:
            raise MemoryError("no memory for attention's scratch rows")
        for task in prange(n * runs, nogil=True, schedule="static", chunksize=1, num_threads=nt):
            t = task // runs
            h = task % runs * per
            h1 = min(n_heads, h + per)
            me = omp_get_thread_num()
            while h < h1:
                g = h // group
                end = min(h1, (g + 1) * group)
                attend_kv_head(qs + (<Py_ssize_t>t * n_heads + h) * hd, end - h, ks + g * kv_stride, vs + g * kv_stride,
                               start + t, window, hd, scale, qk_lanes, pv_lanes,
                               scores + <Py_ssize_t>me * 2 * ROW_GROUP * n_keys_max,
                               half + <Py_ssize_t>me * ROW_GROUP * (n_keys_max + hd),
                               acc + <Py_ssize_t>me * ROW_GROUP * 64 * hd, o + (<Py_ssize_t>t * n_heads + h) * hd)
                h = end
    finally:
        free(scores)
        free(half)
        free(acc)
    return 0


cdef void attend_kv_head(const float *q, int heads, const uint16_t *k, const uint16_t *v, int position, int window,
                         int hd, float scale, int qk_lanes, int pv_lanes, float *scores, uint16_t *half, float *acc,
                         float *out) noexcept nogil:
    """The ``heads`` query heads (one after another in q and out) that read one kv head, at ``position``,
    over its cached keys and values (n_ctx, hd), those up to ``position`` (and within the ``window``, if
    any); scratch as ``attend_heads`` takes it: scores (2 * ROW_GROUP * (position + 1)), half
    (ROW_GROUP * (position + 1 + hd)), acc (ROW_GROUP * 64 * hd)."""
    cdef int lo = max(0, position + 1 - window) if window else 0  # the first key in the window
    cdef int first = lo - lo % 64  # where attend starts: a multiple of 64 keys, as it requires
    attend_heads(q, heads, k + <Py_ssize_t>first * hd, v + <Py_ssize_t>first * hd, position + 1 - first, lo - first,
                 hd, scale, qk_lanes, pv_lanes, scores, half, acc, out)


cdef int attend_groups(const float *qs, const uint16_t *ks, const uint16_t *vs, int n, int n_heads, int n_kv, int hd,
                       int n_ctx, int start, float scale, int window, int nt, float *o) except -1:
    """attention's several-row tinyBLAS case on AVX-512 (attend_group): the keys that any row sees
    transposed sixteen at a time once for all rows, then each (row, kv head) task scores, softmaxes
    and weighs the values of the kv head's query heads together."""
    cdef int lo = max(0, start + 1 - window) if window else 0  # the first row's first key
    cdef int base = lo - lo % 64, group = n_heads // n_kv  # keys from base on: the first row's first block of 64
    cdef int n_keys = start + n - base, n_blocks = (n_keys + 15) // 16
    cdef Py_ssize_t kv_stride = <Py_ssize_t>n_ctx * hd, kt_stride = <Py_ssize_t>n_blocks * 16 * hd
    # the transposed keys (n_kv, n_blocks, hd, 16), then per thread the scratch of attend_group
    cdef Py_ssize_t per_thread = group * (hd + 16 * n_blocks + n_keys + 16 * hd) + n_keys // 2 + 1
    cdef float *kt = <float *>malloc(<size_t>n_kv * kt_stride * sizeof(float))
    cdef float *scratch = <float *>malloc(<size_t>nt * per_thread * sizeof(float))
    cdef float *mine
    cdef Py_ssize_t task
    cdef int t, g, first
    try:
        if kt == NULL or scratch == NULL:
            raise MemoryError("no memory for attention's scratch rows")
        for task in prange(n_kv * n_blocks, nogil=True, schedule="static", num_threads=nt):
            transpose_keys16(ks + task // n_blocks * kv_stride + base * hd, n_keys, hd, task % n_blocks,
                             kt + task * 16 * hd)
        # as in attention: whole rows dealt to the threads in turn
        for task in prange(n * n_kv, nogil=True, schedule="static", chunksize=n_kv, num_threads=nt):
            t = task // n_kv
            g = task % n_kv
            mine = scratch + omp_get_thread_num() * per_thread
            lo = max(0, start + t + 1 - window) if window else 0
            first = lo - lo % 64
            attend_group(qs + (t * n_heads + g * group) * hd, group, kt + g * kt_stride + (first - base) * hd,
                         vs + g * kv_stride + first * hd, start + t + 1 - first, lo - first, hd, scale,
                         mine, mine + group * hd, mine + group * (hd + 16 * n_blocks),
                         <uint16_t *>(mine + group * (hd + 16 * n_blocks + n_keys + 16 * hd)),
                         mine + group * (hd + 16 * n_blocks + n_keys), o + (t * n_heads + g * group) * hd)
    finally:
        free(kt)
        free(scratch)
    return 0
