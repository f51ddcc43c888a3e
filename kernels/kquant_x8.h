/* The K-quant weights regrouped eight rows at a time (q4_Kx8.h: Q4_K; q2_Kx8.h: Q2_K, which
 * llama.cpp built for AVX-512 repacks), behind one interface chosen by ggml type, so one
 * product loop (matmul.pyx's matmul_kx8) serves both. */
#ifndef LLAMANP_KQUANT_X8_H
#define LLAMANP_KQUANT_X8_H

#include "q4_Kx8.h"
#include "q2_Kx8.h"

/* Bytes of one group (eight rows) of ``nb`` super-block columns. */
static inline int64_t kx8_group_bytes(int type, int64_t nb) {
    return nb * (int64_t)(type == T_Q2_K ? sizeof(block_q2_Kx8) : sizeof(block_q4_Kx8));
}

/* Group g of the rows at src (each ``nb`` super-blocks) regrouped into group g of dst. */
static inline void kx8_repack_group(int type, const void *src, int64_t nb, int64_t g, void *dst) {
    if (type == T_Q2_K)
        repack_q2_Kx8_group((const block_q2_K *)src, nb, g, (block_q2_Kx8 *)dst);
    else
        repack_q4_Kx8_group((const block_q4_K *)src, nb, g, (block_q4_Kx8 *)dst);
}

static inline __attribute__((always_inline)) void kx8_dot_n(int type, const void *grp, int64_t nb,
                                                            const block_q8_K *const *act, const int N, float *out,
                                                            int64_t ldo) {
    if (type == T_Q2_K)
        q2_Kx8_dot_n((const block_q2_Kx8 *)grp, nb, act, N, out, ldo);
    else
        q4_Kx8_dot_n((const block_q4_Kx8 *)grp, nb, act, N, out, ldo);
}

/* Eight outputs of group ``grp`` against ``n_act`` (at most 4) Q8_K rows, out[t * ldo + r]: four
 * tokens in the gemm kernel's order, fewer one at a time in the gemv's (as ggml's repacked path
 * takes a batch: whole groups of four rows by gemm, the rest by gemv). */
static inline void kx8_dot(int type, const void *grp, int64_t nb, const block_q8_K *const *act, int n_act,
                           float *out, int64_t ldo) {
    if (n_act == 4) {  /* N a constant at each call, so the kernels keep their per-token sums in registers */
        kx8_dot_n(type, grp, nb, act, 4, out, ldo);
        return;
    }
    for (int t = 0; t < n_act; t++) kx8_dot_n(type, grp, nb, act + t, 1, out + t * ldo, ldo);
}

#endif
