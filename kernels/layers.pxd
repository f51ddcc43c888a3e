"""The decoder-layer steps' C-level interface, for other kernel modules (``kernels.decoder``): each
runs on raw rows whose shapes the caller has checked; ``layers.pyx`` documents them."""
from libc.stdint cimport uint16_t

cdef void rope_heads(float *x, Py_ssize_t heads, Py_ssize_t hd, Py_ssize_t half, const float *c, const float *s,
                     bint neox) noexcept nogil
cdef void glu_row(const float *gate, const float *up, Py_ssize_t f, const uint16_t *table, int isa,
                  float *y) noexcept nogil
cdef extern from "layer_ops.h" nogil:
    enum: ROW_GROUP
cdef void attend_kv_head(const float *q, int heads, const uint16_t *k, const uint16_t *v, int position, int window,
                         int hd, float scale, int qk_lanes, int pv_lanes, float *scores, uint16_t *half, float *acc,
                         float *out) noexcept nogil
