"""The decoder-layer steps' C-level interface, for other kernel modules (``kernels.decoder``): each
runs on raw rows whose shapes the caller has checked; ``layers.pyx`` documents them."""
from libc.stdint cimport uint16_t

cdef void rms_norm_into(const float *x, const float *w, Py_ssize_t n, Py_ssize_t d, float eps, float *y,
                        int n_threads) noexcept nogil
cdef void rope_heads(float *x, Py_ssize_t heads, Py_ssize_t hd, Py_ssize_t half, const float *c, const float *s,
                     bint neox) noexcept nogil
cdef void glu_row(const float *gate, const float *up, Py_ssize_t f, const uint16_t *table, int isa,
                  float *y) noexcept nogil
cdef void glu_into(const char *gate, Py_ssize_t gate_stride, const char *up, Py_ssize_t up_stride, Py_ssize_t n,
                   Py_ssize_t f, const uint16_t *table, int isa, float *y, int n_threads) noexcept nogil
cdef extern from "layer_ops.h" nogil:
    enum: ROW_GROUP
cdef void attend_kv_head(const float *q, int heads, const uint16_t *k, const uint16_t *v, int position, int window,
                         int hd, float scale, int qk_lanes, int pv_lanes, float *scores, uint16_t *half, float *acc,
                         float *out) noexcept nogil
cdef int attention_into(const float *qs, const uint16_t *ks, const uint16_t *vs, int n, int n_heads, int n_kv, int hd,
                        int n_ctx, int start, float scale, int window, int n_threads, bint rowwise, int isa,
                        float *o) except -1
