"""Matrix products with ggml weights, copied once from the file onto huge pages (regrouped, where the kernel wants).

``Matrix(data, type, n_in)`` wraps a weight as ``GGUFFile.tensor`` returns it (an array in
memory is used in place; one mapped from a file is copied);
``Matrix.matmul(x)`` quantises the activations to the type's ``vec_dot_type`` exactly
as ggml's x86 backend does, then takes the integer block dot products on OpenMP threads,
split over output rows.  Weights that llama.cpp repacks (the caller says which:
``engine.operands.Weight.repacked``) run its repacked kernels' order and are regrouped
eight rows at a time, so one pass over the weights serves four tokens at once.  Everything is
checked here, at the Python boundary; the loops below run without the GIL and without bounds checks.
"""
import mmap
import weakref

import numpy as np

cimport numpy as cnp
from cython.parallel cimport parallel, prange, threadid
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uintptr_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

from kernels.ndarrays cimport empty, is_native_c
from kernels.parallel import check_threads

cnp.import_array()

cdef extern from "omp_compat.h" nogil:
    int omp_get_num_threads()

cdef extern from "stdlib.h" nogil:
    int posix_memalign(void **memptr, size_t alignment, size_t size)

cdef extern from "sys/mman.h" nogil:
    int madvise(void *addr, size_t length, int advice)
    int MADV_DONTNEED, MADV_HUGEPAGE

cdef extern from "vec_dot.h" nogil:
    vec_dot_fn vec_dot_for(int type, int *act_type, int isa)
    void block32_dot_rows(int type, int n, const uint8_t *w, int64_t row_bytes, int64_t n_rows, const uint8_t *y,
                          float *out)
    float dot_q4_0_q8_0_repacked(int n, const void *w, const void *a)
    int64_t type_row_bytes(int type, int64_t n)
    int type_block_size(int type)
    void quantize_row(int act_type, const float *x, void *y, int64_t k, int grouped)
    enum:
        T_F32, T_F16, T_BF16, T_Q4_0, T_Q4_1, T_Q5_0, T_Q5_1, T_Q2_K, T_Q3_K, T_Q4_K, T_Q5_K, T_Q6_K,
        T_Q8_0, T_Q8_1, T_Q8_K

cdef extern from "float_rows.h" nogil:
    bint tinyblas_accepts(int64_t n_tok, int64_t n_out, int64_t n_in, int type, int isa)
    void tinyblas_widen(int type, int isa, const float *x, int64_t k, float *dst)
    int64_t tinyblas_chunk_rows(int64_t n_out, int64_t row_bytes, int nt)
    void tinyblas_rows(int type, int k, const uint8_t *w, int64_t row_bytes, int64_t r0, int64_t r1,
                       const float *acts, int64_t n_tok, float *out, int64_t ldo, int isa)

cdef extern from "block32_rows.h" nogil:
    const int B32_VNNI
    void block32_act_scales(int act_type, const uint8_t *acts, int64_t act_bytes, int64_t n_tok, int nb,
                            float *ad, float *as)
    void block32_act_sums(int act_type, const uint8_t *acts, int64_t act_bytes, int64_t n_tok, int nb,
                          int32_t *nsum)
    int block32_rows(int type, const uint8_t *w, int64_t row_bytes, int64_t r0, int64_t r1, int n_in,
                     int act_type, const uint8_t *acts, int64_t act_bytes, int64_t n_tok, const float *ad,
                     const float *as, const int32_t *nsum, int64_t scale_stride, float *out, int64_t ldo)

cdef extern from "kquant_rows.h" nogil:
    ctypedef struct kq_codes:
        pass
    enum:
        KQ_CODE_TOKENS
    size_t kq_codes_bytes(int64_t n_tok, int nb)
    void kq_make_codes(const uint8_t *acts, int64_t act_bytes, int64_t n_tok, int nb, int64_t k, kq_codes *codes)
    int kq_rows(int type, const uint8_t *w, int64_t row_bytes, int64_t r0, int64_t r1, int n_in,
                const uint8_t *acts, int64_t act_bytes, const kq_codes *codes, int64_t n_tok, float *out, int64_t ldo)

cdef extern from "dequant.h" nogil:
    int dequantize_row(int type, const uint8_t *x, int64_t n, float *y)

cdef extern from "kquant_x8.h" nogil:
    ctypedef struct block_q8_K:
        pass
    int64_t kx8_group_bytes(int type, int64_t nb)
    void kx8_repack_group(int type, const void *src, int64_t nb, int64_t g, void *dst)
    void kx8_dot(int type, const void *grp, int64_t nb, const block_q8_K *const *act, int n_act, float *out,
                 int64_t ldo)

cdef extern from "q4_0x8.h" nogil:
    ctypedef struct block_q4_0x8:
        pass
    ctypedef struct block_q4_0:
        pass
    ctypedef struct act_q8_0:
        const int8_t *qs
        const float *d
        const int32_t *bias
    void repack_q4_0x8_group(const block_q4_0 *src, int64_t nb, int64_t g, block_q4_0x8 *dst)
    void quantize_act_q8_0(const float *x, int64_t k, int8_t *qs, float *d, int32_t *bias)
    void q4_0x8_dot(const block_q4_0x8 *grp, int64_t nb, const act_q8_0 *act, int n_act, float *out, int64_t ldo)

cdef enum:
    TILE = 4          # tokens sharing one pass over a group of weights
    MIN_PARALLEL_ROWS = 8  # activation rows below which quantising them is not worth waking threads
    MIN_PARALLEL_BYTES = 1 << 17  # weight bytes x tokens below which a product runs on one thread
    CHUNK_ROWS = 16   # output rows a thread takes at a time
    TOKEN_BLOCK = 64  # tokens whose activations stay in L2 while the unpacked rows pass over them
    B32_MIN_TOKENS = 3  # tokens from which unpacking 32-weight rows once beats a vec_dot per (row, token)
    KQ_CODES_L2 = 1 << 20  # bytes of K-quant codes (kq_make_codes) that a block of tokens keeps in L2
    KERNEL_Q4_0X8 = 0    # the kernels of a Matrix, by type and layout: regrouped Q4_0 (q4_0x8.h),
    KERNEL_KX8 = 1       # repacked Q4_K or Q2_K (kquant_x8.h),
    KERNEL_BLOCKS32 = 2  # other 32-weight blocks (block32_rows.h; one row: block32_dot_rows),
    KERNEL_ROWS = 3      # every other type: matmul_rows or tinyBLAS (one row: a vec_dot per row)


def activation_type(int type):
    """The ggml type id that activations are quantised to for weights of ``type`` (ValueError if unsupported)."""
    cdef int act = -1
    if vec_dot_for(type, &act, 0) == NULL:
        raise ValueError(f"matrix products with ggml type {type} are not supported")
    return act


cdef cnp.ndarray float_rows(x, int64_t n_in, str what):
    """x as a C-contiguous float32 (n, n_in) array; 1-D input becomes one row."""
    if is_native_c(x, cnp.NPY_FLOAT32, 2) and cnp.PyArray_DIM(<cnp.ndarray>x, 1) == n_in:
        return <cnp.ndarray>x  # the usual case: no conversion
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x.reshape(1, -1)
    if x.ndim != 2 or x.shape[1] != n_in:
        raise ValueError(f"{what}: expected activations of shape (n, {n_in}), got {x.shape}")
    return x


def quantize(x, int act_type, bint grouped=False, n_threads=None):
    """Rows of f32 activations (n, k) as raw ``act_type`` rows (n, row_bytes), uint8.

    ``act_type`` is F32, F16, BF16, Q8_0, Q8_1 or Q8_K; for Q8_K, ``grouped`` quantises the
    first n - n % 4 rows as ggml_quantize_mat_q8_K_4x8 does (see qblocks.h).
    """
    if act_type not in (T_F32, T_F16, T_BF16, T_Q8_0, T_Q8_1, T_Q8_K):
        raise ValueError(f"ggml type {act_type} is not an activation type")
    cdef int bs = type_block_size(act_type)
    x = np.asarray(x, dtype=np.float32)
    k = x.shape[x.ndim - 1] if x.ndim else 0
    if k == 0 or k % bs:
        raise ValueError(f"rows to quantise must have a positive multiple of {bs} values, got shape {x.shape}")
    lead = x.shape[:x.ndim - 1]
    cdef const float[:, ::1] xs = np.ascontiguousarray(x.reshape(-1, k))
    out = np.empty((xs.shape[0], type_row_bytes(act_type, xs.shape[1])), np.uint8)
    cdef uint8_t[:, ::1] o = out
    cdef int nt = check_threads(n_threads)
    if xs.shape[0]:
        quantize_into(&xs[0, 0], xs.shape[0], k, act_type, grouped, &o[0, 0], o.shape[1], nt)
    return out.reshape(*lead, out.shape[1])


cdef void quantize_into(const float *x, int64_t n, int64_t k, int act_type, bint grouped, uint8_t *out,
                        int64_t stride, int nt) noexcept nogil:
    """Rows x (n, k) as ``act_type`` rows ``stride`` bytes apart at ``out``."""
    cdef Py_ssize_t t
    cdef int64_t n_grouped = n - n % 4 if grouped else 0
    for t in prange(n, schedule="static", num_threads=nt if n >= MIN_PARALLEL_ROWS else 1):
        quantize_row(act_type, x + t * k, out + t * stride, k, t < n_grouped)


cdef void make_codes(const uint8_t *acts, int64_t act_bytes, int64_t n, int nb, kq_codes *codes, int nt) noexcept nogil:
    """The Q8_K rows acts (n of act_bytes) transposed for the VNNI K-quant tile (kq_make_codes), a block of
    sixteen tokens per task."""
    cdef Py_ssize_t k, n_blocks = (n + KQ_CODE_TOKENS - 1) // KQ_CODE_TOKENS
    for k in prange(n_blocks, schedule="static", num_threads=nt if n_blocks > 1 else 1):
        kq_make_codes(acts, act_bytes, n, nb, k, codes)


def vec_dot(int type, w, a, int isa=0):
    """Dot of one raw weight row with one raw activation row of the paired type, in the order of
    llama.cpp built for ``isa`` (0: AVX2, 1: AVX-512; for tests)."""
    cdef int act = activation_type(type)
    wb = np.ascontiguousarray(w).view(np.uint8).reshape(-1)
    ab = np.ascontiguousarray(a).view(np.uint8).reshape(-1)
    cdef int64_t bs = type_block_size(type)
    cdef int64_t n = wb.shape[0] // type_row_bytes(type, bs) * bs
    if n == 0 or type_row_bytes(type, n) != wb.shape[0] or type_row_bytes(act, n) != ab.shape[0]:
        raise ValueError(f"rows of {wb.shape[0]} and {ab.shape[0]} bytes do not pair as ggml types {type} and {act}")
    cdef const uint8_t[::1] wv = wb
    cdef const uint8_t[::1] av = ab
    return vec_dot_for(type, &act, isa)(<int>n, &wv[0], &av[0])


def get_rows(data, int type, int64_t n_in, ids):
    """Rows ``ids`` of a weight (as ``Matrix`` takes it) dequantised to float32 (len(ids), n_in).

    Bit-identical to ggml's dequantize_row_*; returns None for a type without a compiled
    dequantiser (Q2_K, Q3_K), so the caller can fall back to the NumPy one.
    """
    if not (isinstance(data, np.ndarray) and cnp.PyArray_NDIM(<cnp.ndarray>data) == 2
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>data)):
        raise ValueError("weight data must be a C-contiguous 2-D NumPy array")
    cdef cnp.ndarray w = data
    cdef int64_t row_bytes = type_row_bytes(type, n_in), n_rows = w.shape[0]
    if row_bytes <= 0 or n_in % type_block_size(type) or w.shape[1] * cnp.PyArray_ITEMSIZE(w) != row_bytes:
        raise ValueError(f"weight rows of {w.shape[1] * cnp.PyArray_ITEMSIZE(w)} bytes do not hold {n_in} values "
                         f"of ggml type {type}")
    cdef cnp.ndarray r = row_ids(ids, n_rows)
    cdef const int64_t *rows = <const int64_t *>cnp.PyArray_DATA(r)
    cdef const uint8_t *src = <const uint8_t *>cnp.PyArray_DATA(w)
    cdef cnp.npy_intp shape[2]
    shape[0], shape[1] = r.shape[0], n_in
    cdef cnp.ndarray out = empty(2, shape, cnp.NPY_FLOAT32)
    cdef float *o = <float *>cnp.PyArray_DATA(out)
    cdef Py_ssize_t i
    for i in range(shape[0]):
        if dequantize_row(type, src + rows[i] * row_bytes, n_in, o + i * n_in) != 0:
            return None
    return out


cdef cnp.ndarray row_ids(ids, int64_t n_rows):
    """ids as a C-contiguous int64 array, checked to be 1-D integers in [0, n_rows)."""
    if not is_native_c(ids, cnp.NPY_INT64, 1):
        ids = np.asarray(ids)
        if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
            raise ValueError(f"row ids must be a 1-D array of integers in [0, {n_rows})")
        ids = np.ascontiguousarray(ids, dtype=np.int64)  # uint64 ids past int64's range wrap negative
    cdef cnp.ndarray r = ids
    cdef const int64_t *p = <const int64_t *>cnp.PyArray_DATA(r)
    cdef Py_ssize_t i
    for i in range(r.shape[0]):
        if not 0 <= p[i] < n_rows:
            raise ValueError(f"row ids must be a 1-D array of integers in [0, {n_rows})")
    return r


cdef int blocks32_product(const blocks32_part *parts, int n_parts, int act_type, const float *x, int64_t n,
                          int64_t n_in, float *out, int nt) except -1:
    """out (n, rows of all parts) = x (n, n_in) times the rows of ``parts`` one after another, each part
    of a 32-weight type, in vec_dot's and tinyBLAS's order for its type.  From B32_MIN_TOKENS tokens
    the activations are quantised once to ``act_type``, then each part's rows unpacked once per block of
    tokens and taken in tiles of rows x tokens (block32_rows.h); below, each row meets each token in
    its own type's vec_dot."""
    if n < B32_MIN_TOKENS:
        return blocks32_dots(parts, n_parts, x, n, n_in, out, nt)
    cdef int64_t nb = n_in // 32, act_bytes = type_row_bytes(act_type, n_in), n_out = 0
    cdef int p
    cdef Py_ssize_t n_items = 0
    cdef bint sums = False  # whether the VNNI tiles need the activations' four-sums (a part of signed quants)
    for p in range(n_parts):
        n_out += parts[p].n_rows
        n_items += (parts[p].n_rows + CHUNK_ROWS - 1) // CHUNK_ROWS
        sums |= B32_VNNI and parts[p].type not in (T_Q4_1, T_Q5_1)
    cdef bint has_min = act_type == T_Q8_1
    cdef uint8_t *acts = <uint8_t *>malloc(n * act_bytes)                             # (n, act_bytes)
    cdef float *ad = <float *>malloc((n * nb * (2 if has_min else 1) + 4) * sizeof(float))  # (nb, n) scales, sums
    cdef int64_t *items = chunk_items(parts, n_parts, n_items)                      # (part, first row, first column)
    cdef int32_t *nsum = <int32_t *>malloc(n * nb * 8 * sizeof(int32_t)) if sums else NULL  # (nb, n, 8)
    cdef Py_ssize_t item
    cdef int64_t tb, t0, n_t, r0
    cdef int failed = 0
    try:
        if acts == NULL or ad == NULL or items == NULL or (sums and nsum == NULL):
            raise MemoryError()
        with nogil:
            quantize_into(x, n, n_in, act_type, False, acts, act_bytes, nt)
            block32_act_scales(act_type, acts, act_bytes, n, <int>nb, ad, ad + n * nb if has_min else NULL)
            if sums:
                block32_act_sums(act_type, acts, act_bytes, n, <int>nb, nsum)
            for tb in range((n + TOKEN_BLOCK - 1) // TOKEN_BLOCK):
                t0 = tb * TOKEN_BLOCK
                n_t = min(TOKEN_BLOCK, n - t0)
                for item in prange(n_items, schedule="static", num_threads=nt):
                    p, r0 = <int>items[3 * item], items[3 * item + 1]
                    failed += block32_rows(parts[p].type, parts[p].w, parts[p].row_bytes, r0,
                                           min(r0 + CHUNK_ROWS, parts[p].n_rows), <int>n_in, act_type,
                                           acts + t0 * act_bytes, act_bytes, n_t, ad + t0,
                                           ad + n * nb + t0 if has_min else NULL,
                                           nsum + t0 * 8 if sums else NULL, n,
                                           out + t0 * n_out + items[3 * item + 2], n_out)
        if failed:
            raise MemoryError("no memory for unpacked weight rows")
    finally:
        free(acts)
        free(ad)
        free(items)
        free(nsum)
    return 0


cdef int64_t *chunk_items(const blocks32_part *parts, int n_parts, Py_ssize_t n_items):
    """The threads' work: (part, first row, first output column) of every CHUNK_ROWS rows of each part,
    a malloc'd (n_items, 3) array (NULL if out of memory)."""
    cdef int64_t *items = <int64_t *>malloc(n_items * 3 * sizeof(int64_t))
    cdef int64_t r0, col = 0, k = 0
    cdef int p
    if items != NULL:
        for p in range(n_parts):
            for r0 in range(0, parts[p].n_rows, CHUNK_ROWS):
                items[3 * k], items[3 * k + 1], items[3 * k + 2] = p, r0, col
                k += 1
            col += parts[p].n_rows
    return items


cdef int blocks32_dots(const blocks32_part *parts, int n_parts, const float *x, int64_t n, int64_t n_in,
                       float *out, int nt) except -1:
    """blocks32_product for few tokens: every row with every token in its type's vec_dot arithmetic,
    four rows at a time (block32_dot_rows), the activations quantised once for each activation type
    the parts pair with (Q8_0, Q8_1)."""
    cdef int64_t n_out = 0, t, r0, bytes0 = type_row_bytes(T_Q8_0, n_in), bytes1 = type_row_bytes(T_Q8_1, n_in)
    cdef int p
    cdef bint need0 = False, need1 = False
    cdef Py_ssize_t n_items = 0, item
    for p in range(n_parts):
        n_out += parts[p].n_rows
        n_items += (parts[p].n_rows + CHUNK_ROWS - 1) // CHUNK_ROWS
        need0 |= parts[p].act_type == T_Q8_0
        need1 |= parts[p].act_type == T_Q8_1
    cdef uint8_t *acts0 = <uint8_t *>malloc(n * bytes0) if need0 else NULL  # (n, bytes0) as Q8_0
    cdef uint8_t *acts1 = <uint8_t *>malloc(n * bytes1) if need1 else NULL  # (n, bytes1) as Q8_1
    cdef int64_t *items = chunk_items(parts, n_parts, n_items)
    cdef const blocks32_part *part
    cdef const uint8_t *a
    cdef int64_t a_bytes
    try:
        if (need0 and acts0 == NULL) or (need1 and acts1 == NULL) or items == NULL:
            raise MemoryError()
        with nogil:
            if need0:
                quantize_into(x, n, n_in, T_Q8_0, False, acts0, bytes0, 1)
            if need1:
                quantize_into(x, n, n_in, T_Q8_1, False, acts1, bytes1, 1)
            for item in prange(n_items, schedule="static", num_threads=nt):
                part = &parts[items[3 * item]]
                a = acts1 if part.act_type == T_Q8_1 else acts0
                a_bytes = bytes1 if part.act_type == T_Q8_1 else bytes0
                r0 = items[3 * item + 1]
                for t in range(n):
                    block32_dot_rows(part.type, <int>n_in, part.w + r0 * part.row_bytes, part.row_bytes,
                                     min(CHUNK_ROWS, part.n_rows - r0), a + t * a_bytes,
                                     out + t * n_out + items[3 * item + 2] + r0)
    finally:
        free(acts0)
        free(acts1)
        free(items)
    return 0


cdef class Product:
    """Weights that multiply activations: ``matmul`` checks the activations at the Python boundary
    and allocates the result; ``product`` fills it.  Several rows take each kind's own ``rows_product``;
    one row (a decoded token) is quantised, then shared out to the threads in tasks (``row_share``),
    the same way here as inside ``kernels.decoder``'s parallel region."""

    def matmul(self, x, n_threads=None, bint rowwise=False):
        """x (n, n_in) float32 -> x @ W.T, (n, n_out) float32, with ggml's activation rounding.

        ``rowwise``: every row gets the arithmetic a one-row product gives it (the kernels ggml
        picks for a single token, activations quantised row by row), so no row's result depends
        on the rows beside it; each weight row or group is still read once for all of them.
        """
        cdef cnp.ndarray xa = float_rows(x, self.n_in, "matmul")
        cdef int nt = check_threads(n_threads)
        cdef cnp.npy_intp shape[2]
        shape[0], shape[1] = xa.shape[0], self.n_out
        cdef cnp.ndarray out = empty(2, shape, cnp.NPY_FLOAT32)
        if shape[0] and self.n_out:
            self.product(<const float *>cnp.PyArray_DATA(xa), shape[0], <float *>cnp.PyArray_DATA(out), nt, rowwise)
        return out

    cdef int product(self, const float *x, int64_t n, float *out, int nt, bint rowwise) except -1:
        """out (n, n_out) = x (n, n_in) @ W.T on up to ``nt`` threads; n and n_out positive.  A single
        row has the same arithmetic whether ``rowwise`` or not."""
        if n > 1:
            return self.rows_product(x, n, out, nt, rowwise)
        if self.one_thread:
            nt = 1
        cdef uint8_t *acts = <uint8_t *>malloc(nt * self.act_bytes)  # (nt, act_bytes): each thread's activations
        if acts == NULL:
            raise MemoryError()
        cdef int me
        with nogil, parallel(num_threads=nt):
            me = threadid()
            self.row_share(x, acts + me * self.act_bytes, out, me, omp_get_num_threads())
        free(acts)
        return 0

    cdef int rows_product(self, const float *x, int64_t n, float *out, int nt, bint rowwise) except -1:
        """``product`` of n >= 2 rows, each kind's own."""
        raise NotImplementedError

    def __dealloc__(self):
        free(self.bytes_before)

    cdef int share_tasks(self, task_bytes) except -1:
        """Sets n_tasks and bytes_before from each task's weight bytes, in task order."""
        self.n_tasks = len(task_bytes)
        free(self.bytes_before)
        self.bytes_before = <int64_t *>malloc((self.n_tasks + 1) * sizeof(int64_t))
        if self.bytes_before == NULL:
            raise MemoryError()
        self.bytes_before[0] = 0
        for t, b in enumerate(task_bytes):
            self.bytes_before[t + 1] = self.bytes_before[t] + b
        return 0

    def row_shares(self, int n_threads):
        """The weight bytes each of ``n_threads`` threads streams in a one-row product."""
        nt = 1 if self.one_thread else n_threads
        return [self.bytes_before[self.first_task(me + 1, nt)] - self.bytes_before[self.first_task(me, nt)]
                if me < nt else 0 for me in range(n_threads)]

    cdef int64_t first_task(self, int me, int nt) noexcept nogil:
        """Thread ``me``'s first task (``nt``: the last's end): the first task at or past me / nt of the
        weight bytes, so that stacks of types with different task sizes share their bytes evenly."""
        cdef int64_t goal = self.bytes_before[self.n_tasks] * me // nt, lo = 0, hi = self.n_tasks, mid
        while lo < hi:  # the first t with bytes_before[t] >= goal
            mid = (lo + hi) // 2
            if self.bytes_before[mid] < goal:
                lo = mid + 1
            else:
                hi = mid
        return lo

    cdef void row_share(self, const float *x, uint8_t *acts, float *out, int me, int nt) noexcept nogil:
        """Thread ``me`` of a team of ``nt``: its share of out (n_out,) = W · x (n_in,).  It quantises x
        into its own ``acts`` (act_bytes), then runs its contiguous run of the tasks, about 1 / nt of
        the weight bytes; a product of few weight bytes falls to thread 0 alone.  Every thread of
        the team must call it."""
        if self.one_thread:
            nt = 1
        if me >= nt:
            return
        cdef int64_t first = self.first_task(me, nt), last = self.first_task(me + 1, nt)
        if first < last:
            self.row_acts(x, acts)
            self.row_tasks(acts, out, first, last)

    cdef void row_acts(self, const float *x, uint8_t *acts) noexcept nogil:
        """The row x quantised as the row tasks take it, into ``acts``; each kind's own."""
        pass

    cdef void row_tasks(self, uint8_t *acts, float *out, int64_t first, int64_t last) noexcept nogil:
        """Tasks [first, last) of the one-row product, from the quantised row ``acts``; each kind's own."""
        pass


cdef class Matrix(Product):
    """A weight matrix (n_out rows of n_in) of ggml ``type``, multiplied without copying or dequantising."""

    def __init__(self, data, int type, int64_t n_in, bint repacked=False, bint regroup=True,
                 bint release_source=False, int isa=0):
        """``data``: (n_out, bytes_per_row) uint8, or typed (n_out, n_in) for F32/F16/BF16 (uint16), C-contiguous;
        or a list of such arrays, whose rows are stacked one after another.

        ``repacked``: llama.cpp repacks these rows (``Weight.repacked`` decides; only Q4_0 and Q4_K
        rows in groups of 8 can be, and for ``isa`` 1 Q2_K), so products follow its repacked
        kernels.  ``regroup`` then lets them be regrouped eight rows at a time (a copy the size of
        the weight).  Other rows read from a file mapping, and stacked rows, are copied onto huge
        pages (``huge_page_bytes``).  ``release_source`` tells the kernel to drop the mmap'd pages
        of the original, so resident memory stays at one copy.  Products are the same bits with or
        without regrouping.  ``isa``: whose float orders (0: llama.cpp built for AVX2, 1: for AVX-512).
        """
        if isa not in (0, 1):
            raise ValueError(f"isa must be 0 (AVX2) or 1 (AVX-512), got {isa}")
        self.isa = isa
        self.dot = vec_dot_for(type, &self.act_type, isa)
        if self.dot == NULL:
            raise ValueError(f"matrix products with ggml type {type} are not supported")
        if n_in <= 0 or n_in % type_block_size(type):
            raise ValueError(f"row length {n_in} is not a positive multiple of the block size {type_block_size(type)}")
        self.type, self.n_in = type, n_in
        self.row_bytes = type_row_bytes(type, n_in)
        parts = [self.raw_rows(part) for part in (data if isinstance(data, list) else [data])]
        if not parts:
            raise ValueError("no weight rows given: an empty list of arrays")
        self.n_out = sum(part.shape[0] for part in parts)
        if repacked and (type not in (T_Q4_0, T_Q4_K) and not (isa and type == T_Q2_K)
                         or any(part.shape[0] % 8 for part in parts)):
            raise ValueError(f"ggml type {type} rows in blocks of {[part.shape[0] for part in parts]} "
                             "have no repacked kernel (Q4_0 and Q4_K, on AVX-512 Q2_K, in groups of 8 rows only)")
        self.repacked = repacked
        self.regrouped = repacked and regroup and self.n_out > 0
        if self.regrouped:
            self.data = regroup_rows(parts, type, n_in, release_source)
        elif len(parts) > 1 or is_file_mapping(parts[0]):
            self.data = copy_rows(parts, release_source)
        else:
            self.data = parts[0]
        cdef const uint8_t[:, ::1] view = (self.data.reshape(self.n_out, -1) if self.n_out
                                           else np.zeros((1, 1), np.uint8))
        self.ptr = &view[0, 0]
        self.one_thread = self.n_out * self.row_bytes < MIN_PARALLEL_BYTES
        self.act_bytes = lines(type_row_bytes(self.act_type, n_in))
        cdef int64_t task_rows = CHUNK_ROWS
        if self.regrouped and type == T_Q4_0:
            self.kernel, task_rows = KERNEL_Q4_0X8, 8
            self.act_bytes = lines(n_in // 32 * (sizeof(float) + sizeof(int32_t)) + n_in)  # d, bias, then qs
        elif repacked and type in (T_Q4_K, T_Q2_K):
            self.kernel, task_rows = KERNEL_KX8, 8
            if not self.regrouped:  # room to regroup a group of 8 rows after the activations
                self.act_bytes += lines(kx8_group_bytes(type, n_in // type_block_size(type)))
        elif type in (T_Q4_1, T_Q5_0, T_Q5_1, T_Q8_0) or type == T_Q4_0 and not repacked:
            self.kernel = KERNEL_BLOCKS32
        else:
            self.kernel = KERNEL_ROWS
        self.share_tasks([min(task_rows, self.n_out - r) * self.row_bytes for r in range(0, self.n_out, task_rows)])

    cdef object raw_rows(self, data):
        """One array of weight rows, checked against the type and row length, as uint8 (rows, row_bytes)."""
        if not isinstance(data, np.ndarray) or data.ndim != 2 or not data.flags.c_contiguous:
            raise ValueError("weight data must be a C-contiguous 2-D NumPy array")
        expected = {T_F32: np.float32, T_F16: np.float16, T_BF16: np.uint16}.get(self.type, np.uint8)
        if data.dtype != expected and data.dtype != np.uint8:
            raise ValueError(f"weight data of ggml type {self.type} must be {np.dtype(expected).name} or uint8, "
                             f"got {data.dtype}")
        if data.shape[1] * data.itemsize != self.row_bytes:
            raise ValueError(f"weight rows hold {data.shape[1] * data.itemsize} bytes, "
                             f"expected {self.row_bytes} for {self.n_in} values of ggml type {self.type}")
        return data.view(np.uint8)

    cdef void row_acts(self, const float *x, uint8_t *acts) noexcept nogil:
        cdef int64_t nb = self.n_in // 32
        if self.kernel == KERNEL_Q4_0X8:
            quantize_act_q8_0(x, self.n_in, <int8_t *>(acts + 8 * nb), <float *>acts, <int32_t *>(acts + 4 * nb))
        else:
            quantize_row(self.act_type, x, acts, self.n_in, 0)

    cdef void row_tasks(self, uint8_t *acts, float *out, int64_t first, int64_t last) noexcept nogil:
        """A task is a group of 8 rows (KERNEL_Q4_0X8, KERNEL_KX8) or a chunk of CHUNK_ROWS rows, in the
        kernel a one-token product of this type and layout takes in ggml."""
        cdef int64_t nb = self.n_in // type_block_size(self.type), t, r
        cdef act_q8_0 act
        cdef const block_q8_K *row = <const block_q8_K *>acts
        cdef uint8_t *group = acts + lines(type_row_bytes(T_Q8_K, self.n_in))  # KERNEL_KX8 not regrouped: a group
        cdef vec_dot_fn dot = dot_q4_0_q8_0_repacked if self.repacked else self.dot  # KERNEL_ROWS
        if self.kernel == KERNEL_Q4_0X8:
            act.d, act.bias = <const float *>acts, <const int32_t *>(acts + 4 * nb)
            act.qs = <const int8_t *>(acts + 8 * nb)
            for t in range(first, last):
                q4_0x8_dot(<const block_q4_0x8 *>self.ptr + t * nb, nb, &act, 1, out + 8 * t, self.n_out)
        elif self.kernel == KERNEL_KX8:
            for t in range(first, last):
                if self.regrouped:
                    kx8_dot(self.type, self.ptr + t * kx8_group_bytes(self.type, nb), nb, &row, 1, out + 8 * t,
                            self.n_out)
                else:
                    kx8_repack_group(self.type, self.ptr + 8 * t * self.row_bytes, nb, 0, group)
                    kx8_dot(self.type, group, nb, &row, 1, out + 8 * t, self.n_out)
        elif self.kernel == KERNEL_BLOCKS32:
            for t in range(first, last):
                block32_dot_rows(self.type, <int>self.n_in, self.ptr + t * CHUNK_ROWS * self.row_bytes, self.row_bytes,
                                 min(CHUNK_ROWS, self.n_out - t * CHUNK_ROWS), acts, out + t * CHUNK_ROWS)
        else:
            for r in range(first * CHUNK_ROWS, min(last * CHUNK_ROWS, self.n_out)):
                out[r] = dot(<int>self.n_in, self.ptr + r * self.row_bytes, acts)

    cdef int rows_product(self, const float *x, int64_t n, float *out, int nt, bint rowwise) except -1:
        """The kernel that this type, layout and number of tokens select (``rowwise`` as in ``matmul``)."""
        if n * self.n_out * self.row_bytes < MIN_PARALLEL_BYTES:
            nt = 1
        if self.kernel == KERNEL_Q4_0X8:  # the same arithmetic per token in tiles of any size
            self.matmul_q4_0x8(x, n, out, nt)
        elif self.kernel == KERNEL_KX8:
            self.matmul_kx8(x, n, out, nt, 1 if rowwise else TILE)
        elif self.kernel == KERNEL_BLOCKS32:
            self.matmul_blocks32(x, n, out, nt)  # vec_dot's arithmetic per (row, token): rowwise as it is
        elif (self.type in (T_F32, T_F16, T_BF16) and not rowwise
              and tinyblas_accepts(n, self.n_out, self.n_in, self.type, self.isa)):
            self.matmul_tinyblas(x, n, out, nt)
        else:
            self.matmul_rows(x, n, out, nt, rowwise)
        return 0

    # The products below read x (n, n_in) and write out (n, n_out), both C-contiguous float32.

    cdef int matmul_rows(self, const float *x, int64_t n, float *out, int nt, bint rowwise) except -1:
        """Generic path: quantise the activations, then every row against every token, in the
        order of the ggml kernel that this type and number of tokens select.

        K-quant rows are unpacked once for all tokens when there is more than one (kq_rows);
        ``rowwise`` takes the one-token order (vec_dot) for every token.
        """
        cdef int64_t act_bytes = type_row_bytes(self.act_type, self.n_in)
        cdef bint unpack_once = n > 1 and T_Q2_K <= self.type <= T_Q6_K and not rowwise
        # Q4_0 rows that llama.cpp repacks, not regrouped here: its repacked kernels' order, one row at a time
        cdef vec_dot_fn dot = dot_q4_0_q8_0_repacked if self.repacked else self.dot
        # the tiled K-quant rows' activations, transposed for their kernel where it takes them (kq_codes_bytes)
        cdef int nb = <int>(self.n_in // type_block_size(self.type))
        cdef size_t codes_bytes = kq_codes_bytes(n, nb) if unpack_once else 0
        cdef kq_codes *codes = <kq_codes *>malloc(codes_bytes) if codes_bytes else NULL
        cdef uint8_t *acts = <uint8_t *>malloc(n * act_bytes)
        if acts == NULL or (codes_bytes and codes == NULL):
            free(acts)
            free(codes)
            raise MemoryError()
        cdef Py_ssize_t chunk, n_chunks = (self.n_out + 15) // 16
        cdef int64_t r, t, r_end, t0
        cdef int failed = 0
        # with codes, the rows meet the tokens a block at a time, whose codes stay in L2 meanwhile
        # (a 512-token ffn_down's are 3 MiB); every other product takes all the tokens at once
        cdef size_t tile_bytes = kq_codes_bytes(KQ_CODE_TOKENS, nb) if codes != NULL else 0
        cdef int64_t block = KQ_CODE_TOKENS * max(1, KQ_CODES_L2 // tile_bytes) if codes != NULL else n
        with nogil:
            quantize_into(x, n, self.n_in, self.act_type, False, acts, act_bytes, nt)
            if codes != NULL:
                make_codes(acts, act_bytes, n, nb, codes, nt)
            t0 = 0
            while t0 < n:
                for chunk in prange(n_chunks, schedule="static", num_threads=nt):
                    r_end = min(chunk * 16 + 16, self.n_out)
                    if unpack_once:
                        failed += kq_rows(self.type, self.ptr, self.row_bytes, chunk * 16, r_end, <int>self.n_in,
                                          acts + t0 * act_bytes, act_bytes,
                                          <kq_codes *>(<uint8_t *>codes + t0 // KQ_CODE_TOKENS * tile_bytes),
                                          min(block, n - t0), out + t0 * self.n_out, self.n_out)
                    else:
                        for r in range(chunk * 16, r_end):
                            for t in range(n):
                                out[t * self.n_out + r] = dot(<int>self.n_in, self.ptr + r * self.row_bytes,
                                                              acts + t * act_bytes)
                t0 += block
        free(acts)
        free(codes)
        if failed:
            raise MemoryError("no memory for unpacked weight rows")
        return 0

    cdef int matmul_tinyblas(self, const float *x, int64_t n, float *out, int nt) except -1:
        """Float rows in llamafile's tinyBLAS order (float_rows.h): the activations rounded to the
        weights' type and widened back to floats once (tinyblas_widen), then each thread's chunks
        of rows against all of them."""
        cdef float *acts = NULL  # (n, n_in) widened, on cache lines: a vector load that spans two costs double
        if posix_memalign(<void **>&acts, 64, n * self.n_in * sizeof(float)):
            raise MemoryError()
        cdef int64_t rows = tinyblas_chunk_rows(self.n_out, self.row_bytes, nt)
        cdef Py_ssize_t t, chunk, n_chunks = (self.n_out + rows - 1) // rows
        with nogil:
            for t in prange(n, schedule="static", num_threads=nt if n >= MIN_PARALLEL_ROWS else 1):
                tinyblas_widen(self.type, self.isa, x + t * self.n_in, self.n_in, acts + t * self.n_in)
            for chunk in prange(n_chunks, schedule="static", num_threads=nt):
                tinyblas_rows(self.type, <int>self.n_in, self.ptr, self.row_bytes, chunk * rows,
                              min(chunk * rows + rows, self.n_out), acts, n, out, self.n_out, self.isa)
        free(acts)
        return 0

    cdef int matmul_blocks32(self, const float *x, int64_t n, float *out, int nt) except -1:
        """32-weight blocks that llama.cpp does not repack (blocks32_product)."""
        cdef blocks32_part part
        part.type, part.w, part.row_bytes, part.n_rows = self.type, self.ptr, self.row_bytes, self.n_out
        part.act_type = self.act_type
        return blocks32_product(&part, 1, self.act_type, x, n, self.n_in, out, nt)

    cdef void matmul_q4_0x8(self, const float *x, int64_t n, float *out, int nt):
        """Regrouped Q4_0: each group of 8 rows is read once per tile of 4 tokens."""
        cdef int64_t nb = self.n_in // type_block_size(T_Q4_0), n_groups = self.n_out // 8
        cdef int8_t *qs = <int8_t *>malloc(n * self.n_in)                 # (n, n_in) quants
        cdef float *d = <float *>malloc(n * nb * sizeof(float))            # (n, nb) block scales
        cdef int32_t *bias = <int32_t *>malloc(n * nb * sizeof(int32_t))   # (n, nb) block sums
        cdef act_q8_0 *acts = <act_q8_0 *>malloc(n * sizeof(act_q8_0))
        cdef Py_ssize_t t, g
        cdef int64_t t0, tt, tile = TILE, n_tiles = (n + TILE - 1) // TILE
        cdef const block_q4_0x8 *packed = <const block_q4_0x8 *>self.ptr
        try:
            if qs == NULL or d == NULL or bias == NULL or acts == NULL:
                raise MemoryError()
            with nogil:
                for t in prange(n, schedule="static", num_threads=nt if n >= MIN_PARALLEL_ROWS else 1):
                    quantize_act_q8_0(x + t * self.n_in, self.n_in, qs + t * self.n_in, d + t * nb, bias + t * nb)
                    acts[t].qs = qs + t * self.n_in
                    acts[t].d = d + t * nb
                    acts[t].bias = bias + t * nb
                for g in prange(n_groups, schedule="static", num_threads=nt):
                    for tt in range(n_tiles):
                        t0 = tt * tile
                        q4_0x8_dot(packed + g * nb, nb, acts + t0, <int>min(tile, n - t0),
                                   out + t0 * self.n_out + 8 * g, self.n_out)
        finally:
            free(qs)
            free(d)
            free(bias)
            free(acts)

    cdef void matmul_kx8(self, const float *x, int64_t n, float *out, int nt, int64_t tile):
        """Repacked Q4_K or Q2_K (kquant_x8.h), as ggml's repacked kernels: Q8_K activations (four rows
        at a time, as ggml's repacked path), 8 rows x ``tile`` tokens; with a tile of 1, every
        token as ggml's one-token path (gemv, activations quantised alone).

        An unregrouped matrix is regrouped here a group at a time, into a buffer per thread.
        """
        cdef int64_t nb = self.n_in // type_block_size(self.type), n_groups = self.n_out // 8
        cdef int64_t act_bytes = type_row_bytes(T_Q8_K, self.n_in), scratch_bytes = kx8_group_bytes(self.type, nb)
        cdef uint8_t *acts = <uint8_t *>malloc(n * act_bytes)                                       # (n, act_bytes)
        cdef uint8_t *scratch = NULL if self.regrouped else <uint8_t *>malloc(nt * scratch_bytes)  # a group per thread
        cdef const block_q8_K **rows = <const block_q8_K **>malloc(n * sizeof(void *))
        cdef Py_ssize_t t, g
        cdef int64_t t0, tt, n_tiles = (n + tile - 1) // tile
        cdef const uint8_t *grp
        cdef uint8_t *buf
        try:
            if acts == NULL or rows == NULL or (scratch == NULL and not self.regrouped):
                raise MemoryError()
            with nogil:
                quantize_into(x, n, self.n_in, T_Q8_K, tile == TILE, acts, act_bytes, nt)
                for t in range(n):
                    rows[t] = <const block_q8_K *>(acts + t * act_bytes)
                for g in prange(n_groups, schedule="static", num_threads=nt):
                    if self.regrouped:
                        grp = self.ptr + g * scratch_bytes
                    else:
                        buf = scratch + threadid() * scratch_bytes
                        kx8_repack_group(self.type, self.ptr + 8 * g * self.row_bytes, nb, 0, buf)
                        grp = buf
                    for tt in range(n_tiles):
                        t0 = tt * tile
                        kx8_dot(self.type, grp, nb, rows + t0, <int>min(tile, n - t0), out + t0 * self.n_out + 8 * g,
                                self.n_out)
        finally:
            free(acts)
            free(scratch)
            free(rows)


BLOCK32_TYPES = (T_Q4_1, T_Q5_0, T_Q5_1, T_Q8_0)  # the types a Blocks32Stack mixes (llama.cpp repacks most Q4_0)


cdef class Blocks32Stack(Product):
    """Weights of different 32-weight types (``BLOCK32_TYPES``) with one row length, multiplied as one matrix.

    Each row keeps its type's kernel and float order, so the columns are the separate
    products' bits; the activations are quantised once (to Q8_1 when a Q4_1 or Q5_1 part
    needs their sums: Q8_1's quants and scales are Q8_0's) and the threads woken once.
    Q4_K_M and Q5_K_M files of narrow models mix them so (a Q8_0 attn_v beside Q5_0 or Q5_1
    attn_q and attn_k).
    """

    def __init__(self, arrays, types, int64_t n_in):
        """``arrays``: (rows, bytes_per_row) uint8 C-contiguous weights, one per part, of ``types`` in turn."""
        if len(arrays) != len(types) or not arrays:
            raise ValueError("a stack needs one type per weight array, and at least one array")
        if any(type not in BLOCK32_TYPES for type in types):
            raise ValueError(f"stacked types must be among {BLOCK32_TYPES}, got {list(types)}")
        if n_in <= 0 or n_in % 32:
            raise ValueError(f"row length {n_in} is not a positive multiple of 32")
        cdef Matrix checked
        self.arrays = []
        for a, t in zip(arrays, types):
            checked = Matrix(a, t, n_in, regroup=False)  # the checks of a Matrix; its rows as uint8 (or a copy)
            self.arrays.append(checked.data.reshape(checked.n_out, checked.row_bytes))
        self.n_in, self.n_parts = n_in, len(types)
        self.act_type = T_Q8_1 if any(t in (T_Q4_1, T_Q5_1) for t in types) else T_Q8_0
        self.parts = <blocks32_part *>malloc(self.n_parts * sizeof(blocks32_part))
        if self.parts == NULL:
            raise MemoryError()
        cdef const uint8_t[:, ::1] view
        self.n_out = 0
        task_bytes = []
        for p, (a, t) in enumerate(zip(self.arrays, types)):
            view = a if a.shape[0] else np.zeros((1, 1), np.uint8)
            self.parts[p].type, self.parts[p].w = t, &view[0, 0]
            self.parts[p].row_bytes, self.parts[p].n_rows = type_row_bytes(t, n_in), a.shape[0]
            vec_dot_for(t, &self.parts[p].act_type, 0)  # its activation type (32-weight types: the same in both builds)
            self.n_out += a.shape[0]
            task_bytes += [min(CHUNK_ROWS, a.shape[0] - r) * self.parts[p].row_bytes
                           for r in range(0, a.shape[0], CHUNK_ROWS)]
            if self.parts[p].act_type == T_Q8_0:
                self.bytes0 = type_row_bytes(T_Q8_0, n_in)
            else:
                self.bytes1 = type_row_bytes(T_Q8_1, n_in)
        self.share_tasks(task_bytes)
        self.items = chunk_items(self.parts, self.n_parts, max(self.n_tasks, 1))
        if self.items == NULL:
            raise MemoryError()
        self.act_bytes = lines(self.bytes0 + self.bytes1)  # Q8_0's row, then Q8_1's
        self.one_thread = self.n_out * type_row_bytes(T_Q8_0, n_in) < MIN_PARALLEL_BYTES

    def __dealloc__(self):
        free(self.parts)
        free(self.items)

    cdef int rows_product(self, const float *x, int64_t n, float *out, int nt, bint rowwise) except -1:
        """The parts' columns one after another.  Every (row, token) pair takes the arithmetic of a
        one-token product whatever ``n``, so ``rowwise`` holds already."""
        if n * self.n_out * type_row_bytes(T_Q8_0, self.n_in) < MIN_PARALLEL_BYTES:
            nt = 1
        return blocks32_product(self.parts, self.n_parts, self.act_type, x, n, self.n_in, out, nt)

    cdef void row_acts(self, const float *x, uint8_t *acts) noexcept nogil:
        if self.bytes0:
            quantize_row(T_Q8_0, x, acts, self.n_in, 0)
        if self.bytes1:
            quantize_row(T_Q8_1, x, acts + self.bytes0, self.n_in, 0)

    cdef void row_tasks(self, uint8_t *acts, float *out, int64_t first, int64_t last) noexcept nogil:
        """A task is a chunk of CHUNK_ROWS rows of one part, with the activations its type pairs with."""
        cdef const blocks32_part *part
        cdef int64_t t, r0
        for t in range(first, last):
            part = &self.parts[self.items[3 * t]]
            r0 = self.items[3 * t + 1]
            block32_dot_rows(part.type, <int>self.n_in, part.w + r0 * part.row_bytes, part.row_bytes,
                             min(CHUNK_ROWS, part.n_rows - r0), acts + self.bytes0 if part.act_type == T_Q8_1 else acts,
                             out + self.items[3 * t + 2] + r0)


K_QUANT_TYPES = (T_Q2_K, T_Q3_K, T_Q4_K, T_Q5_K, T_Q6_K)


cdef class KQuantStack(Product):
    """K-quant matrices of different types with one row length, multiplied as one matrix: the
    repacked Q4_K attn_q and attn_k beside a Q6_K attn_v of Q4_K_M files.

    Each part keeps its own product's kernel and float order, so the columns are the separate
    products' bits: the activations are quantised once as Q8_K and once more in the repacked
    kernels' grouped rounding (which changes the whole groups of four tokens only), and the
    threads are woken once, over the repacked parts' groups of 8 rows and the others' chunks.
    """

    def __init__(self, matrices):
        """``matrices``: Matrix objects of K-quant types with one row length; a repacked one must be
        regrouped."""
        cdef Matrix m
        if not matrices or any(not isinstance(m, Matrix) for m in matrices):
            raise ValueError("a K-quant stack needs at least one Matrix")
        self.matrices = list(matrices)
        self.n_in = self.matrices[0].n_in
        for m in self.matrices:
            if m.n_in != self.n_in or m.type not in K_QUANT_TYPES or (m.repacked and not m.regrouped):
                raise ValueError("stacked K-quant matrices need one row length, K-quant types, and repacked "
                                 "rows regrouped")
        self.parts = <kquant_part *>malloc(len(self.matrices) * sizeof(kquant_part))
        if self.parts == NULL:
            raise MemoryError()
        items = []
        self.n_out = 0
        for p, m in enumerate(self.matrices):
            self.parts[p] = kquant_part(m.type, m.repacked, m.ptr, m.row_bytes, m.n_out, self.n_out, m.dot)
            step = 8 if m.repacked else CHUNK_ROWS
            items += [(p, r, min(step, m.n_out - r) * m.row_bytes) for r in range(0, m.n_out, step)]
            self.has_repacked |= m.repacked
            self.has_rows |= not m.repacked
            self.n_out += m.n_out
        self.share_tasks([task_bytes for p, r, task_bytes in items])
        self.items = <int64_t *>malloc(max(self.n_tasks, 1) * 2 * sizeof(int64_t))
        if self.items == NULL:
            raise MemoryError()
        for i, (p, r, _) in enumerate(items):
            self.items[2 * i], self.items[2 * i + 1] = p, r
        self.act_bytes = lines(type_row_bytes(T_Q8_K, self.n_in))
        self.one_thread = self.bytes_before[self.n_tasks] < MIN_PARALLEL_BYTES

    def __dealloc__(self):
        free(self.parts)
        free(self.items)

    cdef void row_acts(self, const float *x, uint8_t *acts) noexcept nogil:
        quantize_row(T_Q8_K, x, acts, self.n_in, 0)

    cdef void row_tasks(self, uint8_t *acts, float *out, int64_t first, int64_t last) noexcept nogil:
        """A task is a group of 8 rows of a repacked part (kx8_dot), or a chunk of CHUNK_ROWS rows of
        another (its vec_dot per row)."""
        cdef int64_t nb = self.n_in // type_block_size(T_Q8_K), t, r0, r
        cdef const block_q8_K *row = <const block_q8_K *>acts
        cdef const kquant_part *part
        for t in range(first, last):
            part = &self.parts[self.items[2 * t]]
            r0 = self.items[2 * t + 1]
            if part.repacked:
                kx8_dot(part.type, part.w + r0 // 8 * kx8_group_bytes(part.type, nb), nb, &row, 1,
                        out + part.column + r0, self.n_out)
            else:
                for r in range(r0, min(r0 + CHUNK_ROWS, part.n_rows)):
                    out[part.column + r] = part.dot(<int>self.n_in, part.w + r * part.row_bytes, acts)

    cdef int rows_product(self, const float *xs, int64_t n, float *o, int nt, bint rowwise) except -1:
        """The parts' columns one after another, each in its own matrix's kernel."""
        cdef int64_t n_out = self.n_out, n_in = self.n_in
        if n * self.bytes_before[self.n_tasks] < MIN_PARALLEL_BYTES:
            nt = 1
        cdef int nb = <int>(n_in // type_block_size(T_Q8_K))
        cdef int64_t act_bytes = type_row_bytes(T_Q8_K, n_in), tile = 1 if rowwise else TILE
        cdef bint tiled_rows = n > 1 and not rowwise  # the other parts' rows unpacked once (kq_rows)
        cdef bint grouped = self.has_repacked and not rowwise and n >= TILE
        cdef size_t codes_bytes = kq_codes_bytes(n, nb) if self.has_rows and tiled_rows else 0
        cdef uint8_t *acts = <uint8_t *>malloc(n * act_bytes)                                # (n, act_bytes) Q8_K
        cdef uint8_t *acts_grouped = <uint8_t *>malloc(n * act_bytes) if grouped else acts  # the repacked parts'
        cdef const block_q8_K **rows = <const block_q8_K **>malloc(n * sizeof(void *))
        cdef kq_codes *codes = <kq_codes *>malloc(codes_bytes) if codes_bytes else NULL
        cdef Py_ssize_t item
        cdef const kquant_part *part
        cdef int64_t r0, r, t, tt, t0, n_tiles = (n + tile - 1) // tile
        cdef int failed = 0
        try:
            if acts == NULL or acts_grouped == NULL or rows == NULL or (codes_bytes and codes == NULL):
                raise MemoryError()
            with nogil:
                quantize_into(xs, n, n_in, T_Q8_K, False, acts, act_bytes, nt)
                if grouped:
                    quantize_into(xs, n, n_in, T_Q8_K, True, acts_grouped, act_bytes, nt)
                if codes != NULL:
                    make_codes(acts, act_bytes, n, nb, codes, nt)
                for t in range(n):
                    rows[t] = <const block_q8_K *>(acts_grouped + t * act_bytes)
                for item in prange(self.n_tasks, schedule="static", num_threads=nt):
                    part = &self.parts[self.items[2 * item]]
                    r0 = self.items[2 * item + 1]
                    if part.repacked:
                        for tt in range(n_tiles):
                            t0 = tt * tile
                            kx8_dot(part.type, part.w + r0 // 8 * kx8_group_bytes(part.type, nb), nb, rows + t0,
                                    <int>min(tile, n - t0), o + t0 * n_out + part.column + r0, n_out)
                    elif tiled_rows:
                        failed += kq_rows(part.type, part.w, part.row_bytes, r0, min(r0 + CHUNK_ROWS, part.n_rows),
                                          <int>n_in, acts, act_bytes, codes, n, o + part.column, n_out)
                    else:
                        for r in range(r0, min(r0 + CHUNK_ROWS, part.n_rows)):
                            for t in range(n):
                                o[t * n_out + part.column + r] = part.dot(<int>n_in, part.w + r * part.row_bytes,
                                                                          acts + t * act_bytes)
        finally:
            if acts_grouped != acts:
                free(acts_grouped)
            free(acts)
            free(rows)
            free(codes)
        if failed:
            raise MemoryError("no memory for unpacked weight rows")
        return 0


cdef object regroup_rows(parts, int type, int64_t n_in, bint release_source):
    """Q4_0, Q4_K or Q2_K rows, arrays (rows, bytes) each a multiple of 8 rows, stacked and regrouped
    eight rows at a time (q4_0x8.h, kquant_x8.h) into one flat uint8 array."""
    cdef bint k_quant = type != T_Q4_0
    cdef int64_t nb = n_in // type_block_size(type)
    # a group's block columns: 8 rows' blocks interleaved
    cdef int64_t group_bytes = kx8_group_bytes(type, nb) if k_quant else nb * sizeof(block_q4_0x8)
    out = huge_page_bytes(sum(part.shape[0] for part in parts) // 8 * group_bytes)
    cdef uint8_t[::1] dst = out
    cdef const uint8_t[:, ::1] src
    cdef int64_t first = 0, n_groups
    cdef Py_ssize_t g
    for part in parts:
        src = part
        n_groups = part.shape[0] // 8
        with nogil:
            for g in prange(n_groups, schedule="static"):
                if k_quant:
                    kx8_repack_group(type, &src[0, 0], nb, g, &dst[first * group_bytes])
                else:
                    repack_q4_0x8_group(<const block_q4_0 *>&src[0, 0], nb, g,
                                        <block_q4_0x8 *>&dst[first * group_bytes])
        if release_source and is_file_mapping(part):
            release_pages(&src[0, 0], part.nbytes)
        first += n_groups
    return out


cdef enum:
    HUGE_PAGE = 1 << 21      # x86-64's transparent huge page
    ARENA_BYTES = 256 << 20  # address space the weights are laid out in, one after another
    ARENA_ALIGN = 64         # where each weight starts in it: a cache line
    COPY_SLAB = 16 << 20     # bytes copied before the source's pages are released


cdef object huge_page_bytes(int64_t n):
    """An uninitialised uint8 array of ``n`` bytes on memory asked to be transparent huge pages
    (where the system allows them on request): the next ``n`` bytes of an arena that the weights
    fill one after another, or of a new arena (ARENA_BYTES, or ``n`` in whole huge pages if more)
    when the current one has no room left.

    A one-token product streams every weight once per token: on 4 KiB pages each page costs a
    TLB miss and stops the hardware prefetcher (a 1-thread stream of 2.8 MiB Q4_0 matrices ran
    25-30% faster on huge pages).  A whole arena is advised huge, so each weight lies on huge
    pages to its last byte: a weight with its own buffer kept its tail past the last whole huge
    page on small pages, and the thread that streamed that half of it took up to 28% longer
    than the other (the TinyLlama shape's q+k+v stack, two threads).  Untouched address space
    stays unmapped, so an arena costs resident memory for the weights in it, plus at most the
    rest of the huge page its last one ends in.  NumPy itself asks for huge pages only for
    arrays of 4 MiB or more, and only for the 2 MiB pages its unaligned allocation happens to span.
    """
    global _arena, _arena_start, _arena_used, _arena_bytes
    owner = _arena()
    if owner is None or _arena_used + n > _arena_bytes:
        _arena_bytes = max(ARENA_BYTES, (n + HUGE_PAGE - 1) // HUGE_PAGE * HUGE_PAGE)
        arena = huge_page_buffer(_arena_bytes)
        owner = arena.base  # what each slice keeps alive
        _arena = weakref.ref(owner)  # freed with the last weight in it
        _arena_start = <uintptr_t>cnp.PyArray_DATA(<cnp.ndarray>arena) - <uintptr_t>cnp.PyArray_DATA(<cnp.ndarray>owner)
        _arena_used = 0
    out = owner[_arena_start + _arena_used:_arena_start + _arena_used + n]
    _arena_used += (n + ARENA_ALIGN - 1) // ARENA_ALIGN * ARENA_ALIGN
    return out


_arena = lambda: None  # a weak reference to the buffer holding the current arena
_arena_start = 0       # where the arena starts in it (a 2 MiB boundary)
_arena_used = 0        # bytes of the arena handed out
_arena_bytes = 0       # its size


cdef object huge_page_buffer(int64_t n):
    """``n`` bytes (whole huge pages) from a 2 MiB boundary, advised huge."""
    buf = np.empty(n + HUGE_PAGE, np.uint8)
    cdef uintptr_t start = <uintptr_t>cnp.PyArray_DATA(<cnp.ndarray>buf)
    cdef uintptr_t offset = (HUGE_PAGE - start % HUGE_PAGE) % HUGE_PAGE
    madvise(<void *>(start + offset), n, MADV_HUGEPAGE)
    return buf[offset:offset + n]


cdef object copy_rows(parts, bint release_source):
    """Weight rows, arrays (rows, bytes), copied one after another into one flat uint8 array on huge
    pages (``huge_page_bytes``), a 2 MiB chunk per thread at a time (the page faults of the mapping
    and of the copy are most of the cost); with ``release_source``, the mmap'd pages of the originals
    are dropped a slab at a time, so the two copies are resident together for one slab only."""
    out = huge_page_bytes(sum(part.nbytes for part in parts))
    cdef uint8_t *dst = <uint8_t *>cnp.PyArray_DATA(<cnp.ndarray>out)
    cdef const uint8_t *src
    cdef int64_t size, k, slab, first = 0
    cdef Py_ssize_t c
    cdef bint release
    for part in parts:
        src = <const uint8_t *>cnp.PyArray_DATA(<cnp.ndarray>part)
        size = part.nbytes
        release = release_source and is_file_mapping(part)
        with nogil:
            for k in range((size + COPY_SLAB - 1) // COPY_SLAB):
                slab = k * COPY_SLAB
                for c in prange((min(COPY_SLAB, size - slab) + HUGE_PAGE - 1) // HUGE_PAGE, schedule="static"):
                    memcpy(dst + first + slab + c * HUGE_PAGE, src + slab + c * HUGE_PAGE,
                           min(HUGE_PAGE, size - slab - c * HUGE_PAGE))
                if release:
                    release_pages(src + slab, min(COPY_SLAB, size - slab))
        if release:
            release_file_pages([part])  # the pages across slab boundaries
        first += size
    return out


def release_file_pages(arrays) -> None:
    """Drop from the resident set the pages spanned by read-only mmap views ``arrays``, in one call.

    One call for the whole span (pages between the views included, which simply fault
    back in from the page cache if read) costs one TLB shootdown instead of one per view.
    """
    cdef uintptr_t lo = 0, hi = 0, start
    for a in arrays:
        if not is_file_mapping(a):
            raise ValueError("only read-only views of an mmap may be released")
        start = a.__array_interface__["data"][0]
        lo = start if lo == 0 else min(lo, start)
        hi = max(hi, start + a.nbytes)
    if hi > lo:
        release_pages(<const uint8_t *>lo, hi - lo)


def is_file_mapping(a) -> bool:
    """Whether ``a`` is a read-only view into an mmap (whose pages may be dropped and re-read)."""
    if a.flags.writeable:
        return False
    base = a
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return isinstance(base, mmap.mmap)


cdef void release_pages(const uint8_t *start, size_t size) noexcept nogil:
    """Drop the whole pages of a read-only file mapping from this process's resident set.

    They stay in the page cache and fault back in if read again, so this is safe on
    any mapping; on anonymous memory it would discard data, so callers pass mmap views only.
    """
    cdef uintptr_t page = 4096
    cdef uintptr_t lo = (<uintptr_t>start + page - 1) & ~(page - 1)
    cdef uintptr_t hi = (<uintptr_t>start + size) & ~(page - 1)
    if hi > lo:
        madvise(<void *>lo, hi - lo, MADV_DONTNEED)
