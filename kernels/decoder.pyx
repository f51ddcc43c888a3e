"""One token through every decoder layer in one call: the forward pass of ``engine.model.Model`` for a
single row, on the same compiled products and layer steps, in the same order, into buffers allocated once.

Decode evaluates one token at a time, and each of a layer's steps is small: at the Python
boundary each would check its operands, allocate its result and wake the threads, some 10 calls
per layer.  Here the layer's weights and norms are checked once, when the ``Decoder`` is built,
and a token runs them back to back, so the same bits come out with the kernels' time only.
"""
import numpy as np

cimport numpy as cnp
from libc.stdint cimport int64_t, uint16_t

from kernels.layers cimport attention_into, glu_into, rms_norm_into, rope_heads
from kernels.matmul cimport Product
from kernels.ndarrays cimport is_native_c
from kernels.parallel import check_threads

cnp.import_array()

cdef extern from "qblocks.h" nogil:
    uint16_t fp32_to_fp16(float f)


cdef const float *floats(x, Py_ssize_t n, str what) except NULL:
    """The data of ``x``, checked to be a C-contiguous float32 vector of ``n`` values."""
    if not is_native_c(x, cnp.NPY_FLOAT32, 1) or cnp.PyArray_DIM(<cnp.ndarray>x, 0) != n:
        raise ValueError(f"decoder: {what} must be a C-contiguous float32 vector of {n} values")
    return <const float *>cnp.PyArray_DATA(<cnp.ndarray>x)


cdef class DecoderLayer:
    """One layer's weights as the decoder runs them: products as ``kernels.matmul.Product`` objects,
    each with the first column it fills of its step's output; vectors as float32 arrays (None where
    the layer has none)."""

    cdef list qkv, gate_up    # (Product, first column) pairs: q, k, v's columns; gate's then up's
    cdef Product wo, down
    cdef object vectors       # the arrays below point into, kept alive
    cdef const float *attn_norm
    cdef const float *ffn_norm
    cdef const float *bias[3]  # q, k and v biases, or NULL
    cdef const float *q_norm
    cdef const float *k_norm
    cdef const float *attn_post_norm
    cdef const float *ffn_post_norm
    cdef readonly int window   # 0, or the sliding window
    cdef readonly int rope     # which of the decoder's ropes rotates q and k

    def __init__(self, qkv, Product wo, gate_up, Product down, attn_norm, ffn_norm, biases, q_norm, k_norm,
                 attn_post_norm, ffn_post_norm, int window, int rope):
        """``qkv``, ``gate_up``: (Product, first column) pairs; ``biases``: q's, k's and v's, each None or
        a vector; the shapes are checked against the decoder's when it takes the layer."""
        self.qkv, self.gate_up, self.wo, self.down = list(qkv), list(gate_up), wo, down
        self.vectors = (attn_norm, ffn_norm, tuple(biases), q_norm, k_norm, attn_post_norm, ffn_post_norm)
        if window < 0 or rope not in (0, 1) or len(self.vectors[2]) != 3:
            raise ValueError("decoder: a layer needs a window >= 0, rope 0 or 1, and three biases (or None)")
        self.window, self.rope = window, rope


cdef class Decoder:
    """Every layer of one model for one row at a time (``decode``), one call at a time: the steps'
    outputs are buffers of the decoder's own (a ``Llama`` evaluates under its lock)."""

    cdef list layers
    cdef int n_layers, n_ropes, dim, n_heads, n_kv_heads, head_dim, ffn, isa
    cdef float eps, attn_scale
    cdef bint neox, scale_q, rowwise
    cdef object table                  # geglu's f16 GELU table, or None for swiglu
    cdef const uint16_t *gelu
    cdef cnp.ndarray h, qkv, att, y, gu, glu  # the steps' outputs, (dim,) (q+k+v,) (q,) (dim,) (2 ffn,) (ffn,)

    def __init__(self, layers, int dim, int n_heads, int n_kv_heads, int head_dim, int ffn, float eps,
                 float attn_scale, bint neox, bint scale_q, gelu_table, int isa, bint rowwise):
        """``layers``: DecoderLayer objects; the hyperparameters as ``engine.model.HParams`` holds them;
        ``gelu_table``: None (the layers gate with SiLU) or ggml's (65536,) float16 GELU table; ``isa``
        and ``rowwise`` as the layer steps and products take them."""
        if min(dim, n_heads, n_kv_heads, head_dim, ffn) <= 0 or n_heads % n_kv_heads or head_dim % 2 or \
                isa not in (0, 1):
            raise ValueError("decoder: hyperparameters out of range")
        self.dim, self.n_heads, self.n_kv_heads, self.head_dim, self.ffn = dim, n_heads, n_kv_heads, head_dim, ffn
        self.eps, self.attn_scale, self.neox, self.scale_q, self.isa = eps, attn_scale, neox, scale_q, isa
        self.rowwise = rowwise
        if gelu_table is not None and not (is_native_c(gelu_table, cnp.NPY_FLOAT16, 1)
                                           and gelu_table.shape[0] == 1 << 16):
            raise ValueError("decoder: gelu_table must be a C-contiguous float16 array of 65536 values")
        self.table = gelu_table
        self.gelu = NULL if gelu_table is None else <const uint16_t *>cnp.PyArray_DATA(<cnp.ndarray>gelu_table)
        cdef int q_dim = n_heads * head_dim, kv_dim = n_kv_heads * head_dim
        self.layers = []
        for layer in layers:
            self.layers.append(self.checked(layer, q_dim, kv_dim))
        self.n_layers = len(self.layers)
        self.n_ropes = 1 + max([(<DecoderLayer>layer).rope for layer in self.layers], default=0)  # angles needed
        self.h, self.qkv, self.att = np.empty(dim, np.float32), np.empty(q_dim + 2 * kv_dim, np.float32), \
            np.empty(q_dim, np.float32)
        self.y, self.gu, self.glu = np.empty(dim, np.float32), np.empty(2 * ffn, np.float32), np.empty(ffn, np.float32)

    cdef DecoderLayer checked(self, DecoderLayer layer, int q_dim, int kv_dim):
        """``layer`` with its vectors' pointers set, once its products and vectors fit this decoder."""
        attn_norm, ffn_norm, biases, q_norm, k_norm, attn_post_norm, ffn_post_norm = layer.vectors
        layer.attn_norm = floats(attn_norm, self.dim, "attn_norm")
        layer.ffn_norm = floats(ffn_norm, self.dim, "ffn_norm")
        for i, (bias, n) in enumerate(zip(biases, (q_dim, kv_dim, kv_dim))):
            layer.bias[i] = NULL if bias is None else floats(bias, n, "a q, k or v bias")
        if (q_norm is None) != (k_norm is None) or (attn_post_norm is None) != (ffn_post_norm is None):
            raise ValueError("decoder: q_norm and k_norm, and the two post norms, come in pairs")
        layer.q_norm = NULL if q_norm is None else floats(q_norm, self.head_dim, "q_norm")
        layer.k_norm = NULL if k_norm is None else floats(k_norm, self.head_dim, "k_norm")
        layer.attn_post_norm = NULL if attn_post_norm is None else floats(attn_post_norm, self.dim, "post norm")
        layer.ffn_post_norm = NULL if ffn_post_norm is None else floats(ffn_post_norm, self.dim, "post norm")
        cdef int64_t column
        for parts, n_out in ((layer.qkv, q_dim + 2 * kv_dim), (layer.gate_up, 2 * self.ffn)):
            column = 0
            for product, first in parts:
                if not isinstance(product, Product) or first != column or (<Product>product).n_in != self.dim:
                    break
                column += (<Product>product).n_out
            else:
                if column == n_out:
                    continue
            raise ValueError(f"decoder: products of {self.dim} inputs must fill {n_out} columns in turn")
        if layer.wo.n_in != q_dim or layer.wo.n_out != self.dim or layer.down.n_in != self.ffn \
                or layer.down.n_out != self.dim:
            raise ValueError("decoder: attn_output or ffn_down does not fit the layer's shape")
        return layer

    def decode(self, x, k_cache, v_cache, int position, angles, n_threads=None):
        """The row x (1, dim) after every layer, a new (1, dim) array; the layers' keys and values at
        ``position`` are written into the f16 caches (n_layers, n_kv_heads, n_ctx, head_dim) first.

        ``angles``: per rope, (cos, sin) (1, head_dim / 2) of ``position``, as
        ``kernels.layers.rope_cos_sin`` gives them.
        """
        cdef cnp.ndarray out = np.array(x, dtype=np.float32, order="C", ndmin=2)  # the residual stream, updated
        if out.shape[0] != 1 or out.shape[1] != self.dim:
            raise ValueError(f"decoder: expected one row of {self.dim} values, got {np.shape(x)}")
        for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
            if not (is_native_c(c, cnp.NPY_FLOAT16, 4) and c.shape[0] == self.n_layers
                    and c.shape[1] == self.n_kv_heads and c.shape[3] == self.head_dim and c.flags.writeable):
                raise ValueError(f"decoder: {name} must be a writeable C-contiguous float16 array of shape "
                                 f"({self.n_layers}, {self.n_kv_heads}, n_ctx, {self.head_dim})")
        if k_cache.shape[2] != v_cache.shape[2] or not 0 <= position < k_cache.shape[2]:
            raise ValueError(f"decoder: position {position} outside caches of shapes {k_cache.shape}, {v_cache.shape}")
        cdef const float *cs[2]
        cdef const float *sn[2]
        cdef int i
        if not self.n_ropes <= len(angles) <= 2:
            raise ValueError(f"decoder: angles must hold a (cos, sin) pair per rope the layers use, "
                             f"{self.n_ropes} to 2 pairs")
        for i, (cos, sin) in enumerate(angles):
            if not (is_native_c(cos, cnp.NPY_FLOAT32, 2) and is_native_c(sin, cnp.NPY_FLOAT32, 2)
                    and cos.shape == (1, self.head_dim // 2) and sin.shape == cos.shape):
                raise ValueError(f"decoder: cos and sin must be float32 arrays of shape (1, {self.head_dim // 2})")
            cs[i] = <const float *>cnp.PyArray_DATA(<cnp.ndarray>cos)
            sn[i] = <const float *>cnp.PyArray_DATA(<cnp.ndarray>sin)
        cdef int nt = check_threads(n_threads)
        cdef int n_ctx = k_cache.shape[2]
        cdef int64_t per_layer = <int64_t>self.n_kv_heads * n_ctx * self.head_dim
        cdef uint16_t *ks = <uint16_t *>cnp.PyArray_DATA(<cnp.ndarray>k_cache)
        cdef uint16_t *vs = <uint16_t *>cnp.PyArray_DATA(<cnp.ndarray>v_cache)
        cdef DecoderLayer layer
        for i in range(self.n_layers):
            layer = self.layers[i]
            self.attention(layer, <float *>cnp.PyArray_DATA(out), ks + i * per_layer, vs + i * per_layer, n_ctx,
                           position, cs[layer.rope], sn[layer.rope], nt)
            self.feed_forward(layer, <float *>cnp.PyArray_DATA(out), nt)
        return out

    cdef int attention(self, DecoderLayer layer, float *x, uint16_t *k_cache, uint16_t *v_cache, int n_ctx,
                       int position, const float *cos, const float *sin, int nt) except -1:
        """x += Wo · attention(rope(Wq · norm(x)), rope(Wk · norm(x)), Wv · norm(x)), post-normed where
        the family norms it; the layer's key and value at ``position`` written into its caches
        (n_kv_heads, n_ctx, head_dim) first."""
        cdef int hd = self.head_dim, q_dim = self.n_heads * hd, kv_dim = self.n_kv_heads * hd, h, j
        cdef float *h_ = <float *>cnp.PyArray_DATA(self.h)
        cdef float *q = <float *>cnp.PyArray_DATA(self.qkv)           # (n_heads, hd), then k and v (n_kv_heads, hd)
        cdef float *k = q + q_dim
        cdef float *v = k + kv_dim
        cdef float *att = <float *>cnp.PyArray_DATA(self.att)         # (n_heads * hd,)
        cdef float *y = <float *>cnp.PyArray_DATA(self.y)             # (dim,)
        cdef float scale = self.attn_scale
        rms_norm_into(x, layer.attn_norm, 1, self.dim, self.eps, h_, nt)
        self.products(layer.qkv, h_, q, nt)
        cdef float *rows[3]
        cdef int sizes[3]
        rows[0], rows[1], rows[2] = q, k, v
        sizes[0], sizes[1], sizes[2] = q_dim, kv_dim, kv_dim
        for j in range(3):
            if layer.bias[j] != NULL:
                add_into(rows[j], layer.bias[j], sizes[j])
        if layer.q_norm != NULL:                                      # each head normed, in place
            rms_norm_into(q, layer.q_norm, self.n_heads, hd, self.eps, q, nt)
            rms_norm_into(k, layer.k_norm, self.n_kv_heads, hd, self.eps, k, nt)
        rope_heads(q, self.n_heads, hd, hd // 2, cos, sin, self.neox)
        rope_heads(k, self.n_kv_heads, hd, hd // 2, cos, sin, self.neox)
        if self.scale_q:                                              # q scaled, then q·k by 1
            for j in range(q_dim):
                q[j] = q[j] * scale
            scale = 1.0
        for h in range(self.n_kv_heads):                              # the cache rounds to f16
            for j in range(hd):
                k_cache[(<int64_t>h * n_ctx + position) * hd + j] = fp32_to_fp16(k[h * hd + j])
                v_cache[(<int64_t>h * n_ctx + position) * hd + j] = fp32_to_fp16(v[h * hd + j])
        attention_into(q, k_cache, v_cache, 1, self.n_heads, self.n_kv_heads, hd, n_ctx, position, scale,
                       layer.window, nt, self.rowwise, self.isa, att)
        layer.wo.product(att, 1, y, nt, self.rowwise)
        self.residual(layer.attn_post_norm, y, x, nt)
        return 0

    cdef int feed_forward(self, DecoderLayer layer, float *x, int nt) except -1:
        """x += W_down · (act(W_gate · norm(x)) * (W_up · norm(x))), post-normed where the family norms it."""
        cdef float *h_ = <float *>cnp.PyArray_DATA(self.h)
        cdef float *gu = <float *>cnp.PyArray_DATA(self.gu)           # gate (ffn,), then up (ffn,)
        cdef float *glu = <float *>cnp.PyArray_DATA(self.glu)
        cdef float *y = <float *>cnp.PyArray_DATA(self.y)
        rms_norm_into(x, layer.ffn_norm, 1, self.dim, self.eps, h_, nt)
        self.products(layer.gate_up, h_, gu, nt)
        glu_into(<const char *>gu, 0, <const char *>(gu + self.ffn), 0, 1, self.ffn, self.gelu, self.isa, glu, nt)
        layer.down.product(glu, 1, y, nt, self.rowwise)
        self.residual(layer.ffn_post_norm, y, x, nt)
        return 0

    cdef int products(self, list parts, const float *x, float *out, int nt) except -1:
        """Each (Product, first column) of ``parts`` times the row x, into its columns of the row out."""
        for part, column in parts:
            (<Product>part).product(x, 1, out + <int64_t>column, nt, self.rowwise)
        return 0

    cdef void residual(self, const float *post_norm, float *y, float *x, int nt) noexcept:
        """x += y, y RMS-normed in place first where ``post_norm`` is given."""
        if post_norm != NULL:
            rms_norm_into(y, post_norm, 1, self.dim, self.eps, y, nt)
        add_into(x, y, self.dim)


cdef inline void add_into(float *x, const float *y, Py_ssize_t n) noexcept nogil:
    """x += y, float32."""
    cdef Py_ssize_t i
    for i in range(n):
        x[i] = x[i] + y[i]
