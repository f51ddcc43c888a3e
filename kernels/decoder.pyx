"""One token through every decoder layer in one call: the forward pass of ``engine.model.Model`` for a
single row, on the same compiled products and layer steps, in the same order, into buffers allocated once.

Decode evaluates one token at a time, and each of a layer's steps is small: at the Python
boundary each would check its operands, allocate its result and wake the threads, some 10 calls
per layer.  Here the layer's weights and norms are checked once, when the ``Decoder`` is built,
and a token runs in one parallel region: every thread takes its share of each product
(``Product.row_share``), of the attention heads and of the gated units, and waits for the others
where a step needs the whole of the previous one.  The small steps between (norms, residual
adds) every thread repeats on its own copy of the row, which costs less than waiting.  The same
bits come out as from the layer loop: each value is computed by the same arithmetic, only
elsewhere.
"""
import numpy as np

cimport numpy as cnp
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cython.parallel cimport parallel, threadid
from libc.stdint cimport int64_t, uint8_t, uint16_t
from libc.stdlib cimport free
from libc.string cimport memcpy

from kernels.layers cimport ROW_GROUP, attend_kv_head, glu_row, rope_heads
from kernels.matmul cimport LINE, Product, lines
from kernels.ndarrays cimport is_native_c
from kernels.parallel import check_threads

cnp.import_array()

cdef extern from "stdlib.h" nogil:
    int posix_memalign(void **memptr, size_t alignment, size_t size)

cdef extern from "omp_compat.h" nogil:
    int omp_get_num_threads()
    void team_barrier()

cdef extern from "qblocks.h" nogil:
    uint16_t fp32_to_fp16(float f)

cdef extern from "layer_ops.h" nogil:
    void rms_norm_rows(const float *x, const float *w, int rows, int64_t n, float eps, float *y)

cdef enum:
    GLU_STEP = 64    # the gated units are shared out in runs of this many (swiglu_row's vectors fit in them)
    MAX_PARTS = 3    # products that fill one step's columns: q, k and v; gate and up


cdef struct token:  # what every thread reads of one decoded token: the caches, its position, its angles
    uint16_t *k_cache           # (n_layers, n_kv_heads, n_ctx, head_dim) f16 bits
    uint16_t *v_cache
    int64_t per_layer           # values of one layer's cache
    int n_ctx, position
    const float *cos[2]         # per rope, (head_dim / 2,)
    const float *sin[2]


# one thread's buffers: its copy of the residual row x and of the normed row h (dim,), the
# post-normed output y (dim,), attention's scratch (attend_kv_head) and a product's activations
cdef struct own:
    float *x
    float *h
    float *y
    float *scores              # (2 * ROW_GROUP * n_ctx,)
    float *acc                 # (ROW_GROUP * 64 * head_dim,)
    uint16_t *half             # (ROW_GROUP * (n_ctx + head_dim),)
    uint8_t *acts              # (act_bytes,), the largest that any product takes


cdef inline int64_t share(int64_t n, int me, int nt) noexcept nogil:
    """Where thread ``me`` of ``nt``'s contiguous share of n items begins (and thread me + 1's ends)."""
    return n * me // nt


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
    cdef int n_parts[2]       # the qkv and gate_up pairs as the threads read them: how many,
    cdef void *products[2][MAX_PARTS]  # their Products (kept alive by the lists),
    cdef int64_t columns[2][MAX_PARTS]  # their first columns
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
    cdef void **layer_list             # the layers as the threads read them (kept alive by the list)
    cdef int n_layers, n_ropes, dim, n_heads, n_kv_heads, head_dim, ffn, isa
    cdef float eps, attn_scale
    cdef bint neox, scale_q
    cdef int64_t act_bytes             # the most activation bytes a product of the layers takes (row_share)
    cdef object table                  # geglu's f16 GELU table, or None for swiglu
    cdef const uint16_t *gelu
    cdef cnp.ndarray qkv, att, y, gu, glu  # the shared steps' outputs, (q+k+v,) (q,) (dim,) (2 ffn,) (ffn,)

    def __init__(self, layers, int dim, int n_heads, int n_kv_heads, int head_dim, int ffn, float eps,
                 float attn_scale, bint neox, bint scale_q, gelu_table, int isa):
        """``layers``: DecoderLayer objects; the hyperparameters as ``engine.model.HParams`` holds them;
        ``gelu_table``: None (the layers gate with SiLU) or ggml's (65536,) float16 GELU table; ``isa``
        as the layer steps take it.  (A batch-invariant backend's ``rowwise`` changes nothing here:
        one row has the same arithmetic either way.)"""
        if min(dim, n_heads, n_kv_heads, head_dim, ffn) <= 0 or n_heads % n_kv_heads or head_dim % 2 or \
                isa not in (0, 1):
            raise ValueError("decoder: hyperparameters out of range")
        self.dim, self.n_heads, self.n_kv_heads, self.head_dim, self.ffn = dim, n_heads, n_kv_heads, head_dim, ffn
        self.eps, self.attn_scale, self.neox, self.scale_q, self.isa = eps, attn_scale, neox, scale_q, isa
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
        self.layer_list = <void **>PyMem_Malloc(max(self.n_layers, 1) * sizeof(void *))
        if self.layer_list == NULL:
            raise MemoryError()
        for i, layer in enumerate(self.layers):
            self.layer_list[i] = <void *>layer
        self.qkv, self.att = np.empty(q_dim + 2 * kv_dim, np.float32), np.empty(q_dim, np.float32)
        self.y, self.gu, self.glu = np.empty(dim, np.float32), np.empty(2 * ffn, np.float32), np.empty(ffn, np.float32)

    def __dealloc__(self):
        PyMem_Free(self.layer_list)

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
        cdef int step
        for step, (parts, n_out) in enumerate(((layer.qkv, q_dim + 2 * kv_dim), (layer.gate_up, 2 * self.ffn))):
            column = 0
            for product, first in parts[:MAX_PARTS]:
                if not isinstance(product, Product) or first != column or (<Product>product).n_in != self.dim:
                    break
                column += (<Product>product).n_out
            else:
                if column == n_out and len(parts) <= MAX_PARTS:
                    layer.n_parts[step] = len(parts)
                    for i, (product, first) in enumerate(parts):
                        layer.products[step][i], layer.columns[step][i] = <void *>product, first
                        self.act_bytes = max(self.act_bytes, (<Product>product).act_bytes)
                    continue
            raise ValueError(f"decoder: up to {MAX_PARTS} products of {self.dim} inputs must fill {n_out} columns "
                             "in turn")
        if layer.wo.n_in != q_dim or layer.wo.n_out != self.dim or layer.down.n_in != self.ffn \
                or layer.down.n_out != self.dim:
            raise ValueError("decoder: attn_output or ffn_down does not fit the layer's shape")
        self.act_bytes = max(self.act_bytes, layer.wo.act_bytes, layer.down.act_bytes)
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
        cdef token tok
        cdef int i
        if not self.n_ropes <= len(angles) <= 2:
            raise ValueError(f"decoder: angles must hold a (cos, sin) pair per rope the layers use, "
                             f"{self.n_ropes} to 2 pairs")
        for i, (cos, sin) in enumerate(angles):
            if not (is_native_c(cos, cnp.NPY_FLOAT32, 2) and is_native_c(sin, cnp.NPY_FLOAT32, 2)
                    and cos.shape == (1, self.head_dim // 2) and sin.shape == cos.shape):
                raise ValueError(f"decoder: cos and sin must be float32 arrays of shape (1, {self.head_dim // 2})")
            tok.cos[i] = <const float *>cnp.PyArray_DATA(<cnp.ndarray>cos)
            tok.sin[i] = <const float *>cnp.PyArray_DATA(<cnp.ndarray>sin)
        cdef int nt = check_threads(n_threads)
        tok.k_cache = <uint16_t *>cnp.PyArray_DATA(<cnp.ndarray>k_cache)
        tok.v_cache = <uint16_t *>cnp.PyArray_DATA(<cnp.ndarray>v_cache)
        tok.n_ctx, tok.position = k_cache.shape[2], position
        tok.per_layer = <int64_t>self.n_kv_heads * tok.n_ctx * self.head_dim
        cdef int64_t acts_at
        self.own_buffers(NULL, tok.n_ctx, &acts_at)
        cdef int64_t own_bytes = acts_at + self.act_bytes  # a thread's buffers
        cdef uint8_t *scratch = NULL
        if posix_memalign(<void **>&scratch, LINE, nt * own_bytes):
            raise MemoryError("no memory for the decoder's per-thread buffers")
        cdef float *row = <float *>cnp.PyArray_DATA(out)
        cdef int me
        cdef own mine
        with nogil, parallel(num_threads=nt):
            me = threadid()
            mine = self.own_buffers(scratch + me * own_bytes, tok.n_ctx, NULL)  # assigned here: each thread's own
            self.layers_share(&tok, row, &mine, me, omp_get_num_threads())
        free(scratch)
        return out

    cdef own own_buffers(self, uint8_t *base, int64_t n_ctx, int64_t *acts_at) noexcept nogil:
        """A thread's buffers laid out one after another from ``base`` (unless NULL); where the activations
        begin, after the others, goes into ``acts_at`` (unless NULL)."""
        cdef own mine
        cdef int64_t at[7]  # where each buffer starts
        cdef int64_t dim_bytes = lines(self.dim * sizeof(float)), hd = self.head_dim
        at[0] = 0
        at[1] = at[0] + dim_bytes                                  # x, then h
        at[2] = at[1] + dim_bytes                                  # y
        at[3] = at[2] + dim_bytes                                                  # scores
        at[4] = at[3] + lines(2 * ROW_GROUP * n_ctx * sizeof(float))               # acc
        at[5] = at[4] + lines(ROW_GROUP * 64 * hd * sizeof(float))                 # half
        at[6] = at[5] + lines(ROW_GROUP * (n_ctx + hd) * sizeof(uint16_t))         # acts
        if acts_at != NULL:
            acts_at[0] = at[6]
        if base != NULL:
            mine.x, mine.h, mine.y = <float *>(base + at[0]), <float *>(base + at[1]), <float *>(base + at[2])
            mine.scores, mine.acc = <float *>(base + at[3]), <float *>(base + at[4])
            mine.half, mine.acts = <uint16_t *>(base + at[5]), base + at[6]
        return mine

    cdef void layers_share(self, const token *tok, float *x, own *mine, int me, int nt) noexcept nogil:
        """Thread ``me`` of the team of ``nt``: its share of every layer, on its own copy of the row x
        (dim,); thread 0 writes the result back into x."""
        memcpy(mine.x, x, self.dim * sizeof(float))
        cdef int i
        for i in range(self.n_layers):
            self.attention(<DecoderLayer>self.layer_list[i], tok, i, mine, me, nt)
            self.feed_forward(<DecoderLayer>self.layer_list[i], mine, me, nt)
        team_barrier()  # every thread has read x before thread 0 overwrites it
        if me == 0:
            memcpy(x, mine.x, self.dim * sizeof(float))

    cdef void attention(self, DecoderLayer layer, const token *tok, int i, own *mine, int me, int nt) noexcept nogil:
        """x += Wo · attention(rope(Wq · norm(x)), rope(Wk · norm(x)), Wv · norm(x)), post-normed where
        the family norms it; the layer's key and value at the token's position written into its
        caches first.  The threads share the kv heads, each with the query heads that read them."""
        cdef int hd = self.head_dim, q_dim = self.n_heads * hd, kv_dim = self.n_kv_heads * hd
        cdef int group = self.n_heads // self.n_kv_heads, n_ctx = tok.n_ctx, position = tok.position, h, j, g
        cdef float *q = <float *>cnp.PyArray_DATA(self.qkv)           # (n_heads, hd), then k and v (n_kv_heads, hd)
        cdef float *k = q + q_dim
        cdef float *v = k + kv_dim
        cdef float *att = <float *>cnp.PyArray_DATA(self.att)         # (n_heads * hd,)
        cdef uint16_t *k_cache = tok.k_cache + i * tok.per_layer     # (n_kv_heads, n_ctx, hd)
        cdef uint16_t *v_cache = tok.v_cache + i * tok.per_layer
        cdef const float *cos = tok.cos[layer.rope]
        cdef const float *sin = tok.sin[layer.rope]
        cdef float scale = self.attn_scale
        rms_norm_rows(mine.x, layer.attn_norm, 1, self.dim, self.eps, mine.h)
        self.products(layer, 0, mine, q, me, nt)
        team_barrier()
        cdef int g0 = <int>share(self.n_kv_heads, me, nt), g1 = <int>share(self.n_kv_heads, me + 1, nt)
        cdef int h0 = g0 * group, h1 = g1 * group                     # this thread's kv heads, and query heads
        if layer.bias[0] != NULL:
            add_into(q + h0 * hd, layer.bias[0] + h0 * hd, (h1 - h0) * hd)
        for j in range(1, 3):
            if layer.bias[j] != NULL:
                add_into(q + q_dim + (j - 1) * kv_dim + g0 * hd, layer.bias[j] + g0 * hd, (g1 - g0) * hd)
        if layer.q_norm != NULL:                                      # each head normed, in place
            for h in range(h0, h1):
                rms_norm_rows(q + h * hd, layer.q_norm, 1, hd, self.eps, q + h * hd)
            for h in range(g0, g1):
                rms_norm_rows(k + h * hd, layer.k_norm, 1, hd, self.eps, k + h * hd)
        rope_heads(q + h0 * hd, h1 - h0, hd, hd // 2, cos, sin, self.neox)
        rope_heads(k + g0 * hd, g1 - g0, hd, hd // 2, cos, sin, self.neox)
        if self.scale_q:                                              # q scaled, then q·k by 1
            for j in range(h0 * hd, h1 * hd):
                q[j] = q[j] * scale
            scale = 1.0
        for h in range(g0, g1):                                       # the cache rounds to f16
            for j in range(hd):
                k_cache[(<int64_t>h * n_ctx + position) * hd + j] = fp32_to_fp16(k[h * hd + j])
                v_cache[(<int64_t>h * n_ctx + position) * hd + j] = fp32_to_fp16(v[h * hd + j])
        cdef int lanes = 64 if self.isa else 32                       # ggml_vec_dot_f16's, for one query row
        for g in range(g0, g1):                                       # each kv head's query heads together
            attend_kv_head(q + g * group * hd, group, k_cache + <int64_t>g * n_ctx * hd,
                           v_cache + <int64_t>g * n_ctx * hd, position, layer.window, hd, scale, lanes, lanes,
                           mine.scores, mine.half, mine.acc, att + g * group * hd)
        team_barrier()
        layer.wo.row_share(att, mine.acts, <float *>cnp.PyArray_DATA(self.y), me, nt)
        team_barrier()
        self.residual(layer.attn_post_norm, mine)

    cdef void feed_forward(self, DecoderLayer layer, own *mine, int me, int nt) noexcept nogil:
        """x += W_down · (act(W_gate · norm(x)) * (W_up · norm(x))), post-normed where the family norms
        it.  The threads share the gated units in runs of GLU_STEP."""
        cdef float *gu = <float *>cnp.PyArray_DATA(self.gu)           # gate (ffn,), then up (ffn,)
        cdef float *glu = <float *>cnp.PyArray_DATA(self.glu)
        rms_norm_rows(mine.x, layer.ffn_norm, 1, self.dim, self.eps, mine.h)
        self.products(layer, 1, mine, gu, me, nt)
        team_barrier()
        cdef int64_t runs = (self.ffn + GLU_STEP - 1) // GLU_STEP
        cdef int64_t f0 = min(self.ffn, share(runs, me, nt) * GLU_STEP)
        cdef int64_t f1 = min(self.ffn, share(runs, me + 1, nt) * GLU_STEP)
        if f0 < f1:
            glu_row(gu + f0, gu + self.ffn + f0, f1 - f0, self.gelu, self.isa, glu + f0)
        team_barrier()
        layer.down.row_share(glu, mine.acts, <float *>cnp.PyArray_DATA(self.y), me, nt)
        team_barrier()
        self.residual(layer.ffn_post_norm, mine)

    cdef void products(self, DecoderLayer layer, int step, own *mine, float *out, int me, int nt) noexcept nogil:
        """This thread's share of each product of the layer's ``step`` (0: q, k, v; 1: gate, up) times
        its normed row h, into the product's columns of out."""
        cdef int j
        for j in range(layer.n_parts[step]):
            (<Product>layer.products[step][j]).row_share(mine.h, mine.acts, out + layer.columns[step][j], me, nt)

    cdef void residual(self, const float *post_norm, own *mine) noexcept nogil:
        """x += y (the shared output of the step's last product), y RMS-normed first where ``post_norm``
        is given; on the thread's own copy of x."""
        cdef float *y = <float *>cnp.PyArray_DATA(self.y)
        if post_norm != NULL:
            rms_norm_rows(y, post_norm, 1, self.dim, self.eps, mine.y)
            y = mine.y
        add_into(mine.x, y, self.dim)


cdef inline void add_into(float *x, const float *y, Py_ssize_t n) noexcept nogil:
    """x += y, float32."""
    cdef Py_ssize_t i
    for i in range(n):
        x[i] = x[i] + y[i]
