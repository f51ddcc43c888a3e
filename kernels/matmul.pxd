"""The matrix products' C-level interface: ``Product.product`` takes and fills raw float rows, so other
kernel modules (``kernels.decoder``) run products without a Python call; ``matmul.pyx`` documents each class."""
from libc.stdint cimport int64_t, uint8_t

cdef extern from "vec_dot.h" nogil:
    ctypedef float (*vec_dot_fn)(int n, const void *w, const void *a)

cdef enum:
    LINE = 64         # bytes a thread's scratch is rounded up to, so no two threads write one cache line


cdef inline int64_t lines(int64_t n) noexcept nogil:
    """n bytes rounded up to whole cache lines."""
    return (n + LINE - 1) // LINE * LINE


cdef struct blocks32_part:
    int type
    const uint8_t *w
    int64_t row_bytes, n_rows
    int act_type    # the activation type its vec_dot pairs with


cdef struct kquant_part:
    int type
    bint repacked    # regrouped Q4_K or Q2_K, in llama.cpp's repacked kernels' order
    const uint8_t *w
    int64_t row_bytes, n_rows, column  # its first column in the stack's product
    vec_dot_fn dot


cdef class Product:
    cdef readonly int64_t n_in, n_out
    cdef int64_t n_tasks     # one row's product in tasks the threads share (groups of 8 rows, or chunks)
    cdef int64_t *bytes_before  # (n_tasks + 1,) the weight bytes of the tasks before each: the shares' measure
    cdef int64_t act_bytes   # a thread's scratch for one row: its activations as the tasks take them
    cdef bint one_thread     # too few weight bytes to share (MIN_PARALLEL_BYTES)
    cdef int product(self, const float *x, int64_t n, float *out, int nt, bint rowwise) except -1
    cdef int rows_product(self, const float *x, int64_t n, float *out, int nt, bint rowwise) except -1
    cdef void row_acts(self, const float *x, uint8_t *acts) noexcept nogil
    cdef void row_tasks(self, uint8_t *acts, float *out, int64_t first, int64_t last) noexcept nogil
    cdef void row_share(self, const float *x, uint8_t *acts, float *out, int me, int nt) noexcept nogil
    cdef int64_t first_task(self, int me, int nt) noexcept nogil
    cdef int share_tasks(self, task_bytes) except -1


cdef class Matrix(Product):
    cdef readonly int type
    cdef readonly bint repacked   # runs llama.cpp's repacked kernels' order
    cdef readonly bint regrouped  # holds its rows regrouped eight at a time (a copy)
    cdef object data         # keeps the weight bytes (mmap view or regrouped copy) alive
    cdef const uint8_t *ptr
    cdef int64_t row_bytes
    cdef int act_type
    cdef readonly int isa    # 0: llama.cpp built for AVX2, 1: for AVX-512 (engine.isa)
    cdef vec_dot_fn dot
    cdef int kernel          # the kernels its products take (KERNEL_Q4_0X8, KERNEL_KX8, KERNEL_BLOCKS32, KERNEL_ROWS)

    cdef object raw_rows(self, data)
    cdef int matmul_rows(self, const float *x, int64_t n, float *out, int nt, bint rowwise) except -1
    cdef int matmul_tinyblas(self, const float *x, int64_t n, float *out, int nt) except -1
    cdef int matmul_blocks32(self, const float *x, int64_t n, float *out, int nt) except -1
    cdef void matmul_q4_0x8(self, const float *x, int64_t n, float *out, int nt)
    cdef void matmul_kx8(self, const float *x, int64_t n, float *out, int nt, int64_t tile)


cdef class Blocks32Stack(Product):
    cdef object arrays       # the weight arrays, kept alive
    cdef blocks32_part *parts
    cdef int n_parts, act_type
    cdef int64_t *items      # (part, first row, first column) per task (chunk_items)
    cdef int64_t bytes0, bytes1  # a row's Q8_0 and Q8_1 activations (0 where no part pairs with the type)


cdef class KQuantStack(Product):
    cdef object matrices      # the parts, kept alive
    cdef kquant_part *parts
    cdef int64_t *items       # (part, first row) per task: 8-row groups of repacked parts, 16-row chunks else
    cdef bint has_repacked, has_rows
