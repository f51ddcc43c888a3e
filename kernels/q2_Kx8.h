/* Q2_K weights regrouped eight rows at a time, and their products with Q8_K activations:
 * the rows that llama.cpp built for AVX-512 repacks (block_q2_Kx8).
 *
 * Per super-block column a group holds the eight rows' d and dmin, their scale bytes
 * (min << 4 | scale) with the two of a sub-block pair side by side ([pair k][2 * row +
 * sub-block - 2k]: one widening load gives every row both), and the 2-bit quants
 * interleaved as in q4_Kx8.h: for half h (weights 128h..128h+127) vector i holds, at byte
 * 4r + e, row r's quant byte 32h + 4i + e, whose bits 2j..2j+1 are weight 128h + 32j + 4i + e
 * (sub-block 8h + 2j + i / 4).  maddubs against four activations broadcast to every lane
 * then leaves one row per 32-bit lane.  The group is 8 x 84 bytes, the size of its rows.
 *
 * Per row the float steps are those of ggml's q2_K_8x8 kernels (the NumPy reference's
 * _k_repacked, and the scalar twin below): per part the exact sum of scale * (sub-block
 * dot) goes into one fma chain by d * d_a and the exact sum of min * (activation sums)
 * into another by dmin * d_a, and the result is their difference.  Tiles of four tokens
 * run the gemm kernel, a part per 128 weights (eight sub-blocks); single tokens the gemv
 * kernel, one part per super-block.
 */
#ifndef LLAMANP_Q2_KX8_H
#define LLAMANP_Q2_KX8_H

#include "vec_dot.h"
#include "vnni.h"

typedef struct {
    uint16_t d[8], dmin[8];
    uint8_t scales[8][16];     /* [sub-block pair k][2 * row + sub-block - 2k] */
    uint8_t qs[2][8][32];      /* [half][4-weight chunk][4 * row + e] */
} block_q2_Kx8;

static inline void repack_q2_Kx8_group(const block_q2_K *src, int64_t nb, int64_t g, block_q2_Kx8 *dst) {
    for (int64_t b = 0; b < nb; b++) {
        block_q2_Kx8 *out = dst + g * nb + b;
        for (int r = 0; r < 8; r++) {
            const block_q2_K *in = src + (8 * g + r) * nb + b;
            out->d[r] = in->d;
            out->dmin[r] = in->dmin;
            for (int s = 0; s < 16; s++) out->scales[s / 2][2 * r + s % 2] = in->scales[s];
            for (int h = 0; h < 2; h++)
                for (int i = 0; i < 8; i++) memcpy(&out->qs[h][i][4 * r], in->qs + 32 * h + 4 * i, 4);
        }
    }
}

#if defined(__AVX2__)
/* isum[t] += scale * (token t's dot with the sub-block at bits 2j.. of the 4 vectors at qs),
 * against the 16 activations at a[t].  Each quant vector is unpacked and multiplied by its row's
 * scale once for all N tokens (3 * 15 fits a byte, and the 16-bit multiply cannot carry into the
 * next byte); dpbusd then sums four products per row lane exactly. */
static inline __attribute__((always_inline)) void q2_sub_block(const uint8_t (*qs)[32], int shift,
                                                               const int8_t *const *a, const int N, __m256i scale,
                                                               __m256i *isum) {
    const __m256i low2 = _mm256_set1_epi8(3);
    for (int i = 0; i < 4; i++) {
        const __m256i q = _mm256_and_si256(_mm256_srli_epi16(_mm256_loadu_si256((const __m256i *)qs[i]), shift), low2);
        const __m256i qsc = _mm256_mullo_epi16(q, scale);
        for (int t = 0; t < N; t++) isum[t] = in_register(dpbusd(isum[t], qsc, broadcast_i8x4(a[t] + 4 * i)));
    }
}

/* Block column b of a group against N (1 or 4) tokens: per part the integer sums of every
 * row (8 lanes), then the part's fma into acc and acc_min. */
static inline __attribute__((always_inline)) void q2_Kx8_block(const block_q2_Kx8 *blk, const block_q8_K *const *act,
                                                               int64_t b, const int N, __m256 *acc, __m256 *acc_min) {
    const int part = N == 4 ? 4 : 8;  /* sub-block pairs per part: gemm or gemv */
    const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)blk->d));
    const __m256 dmin = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)blk->dmin));
    const __m256i low_half = _mm256_set1_epi32(0xFFFF);
    __m256i isum[4], imin[4];
    for (int t = 0; t < N; t++) isum[t] = imin[t] = _mm256_setzero_si256();
    for (int k = 0; k < 8; k++) {  /* sub-block pair k: sub-blocks 2k and 2k + 1, weights 32k.. */
        if (k % 2 == 0) prefetch_quarter_l2(blk, sizeof(block_q2_Kx8), k / 2);
        const __m256i raw = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)blk->scales[k]));
        const __m256i sc = _mm256_and_si256(raw, _mm256_set1_epi16(0xF));  /* (scale 2k, scale 2k + 1) per row */
        const __m256i mins = _mm256_srli_epi16(raw, 4);
        /* each sub-block's scale in both 16-bit halves of its row's lane */
        const __m256i sc_even = _mm256_or_si256(_mm256_and_si256(sc, low_half), _mm256_slli_epi32(sc, 16));
        const __m256i sc_odd = _mm256_or_si256(_mm256_srli_epi32(sc, 16), _mm256_andnot_si256(low_half, sc));
        const uint8_t (*qs)[32] = blk->qs[k / 4];
        const int shift = 2 * (k % 4);
        const int8_t *a[4];
        for (int t = 0; t < N; t++) {
            const block_q8_K *y = act[t] + b;
            int32_t bsum_pair;
            memcpy(&bsum_pair, y->bsums + 2 * k, 4);
            imin[t] = dpwssd(imin[t], mins, _mm256_set1_epi32(bsum_pair));
            a[t] = y->qs + 32 * k;
        }
        q2_sub_block(qs, shift, a, N, sc_even, isum);
        for (int t = 0; t < N; t++) a[t] += 16;
        q2_sub_block(qs + 4, shift, a, N, sc_odd, isum);
        if ((k + 1) % part) continue;
        for (int t = 0; t < N; t++) {  /* the end of a part */
            const __m256 dy = _mm256_set1_ps(act[t][b].d);
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_mul_ps(d, dy), acc[t]);
            acc_min[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(imin[t]), _mm256_mul_ps(dmin, dy), acc_min[t]);
            isum[t] = imin[t] = _mm256_setzero_si256();
        }
    }
}

#endif

/* Eight outputs of group ``grp`` against N (1 or 4) Q8_K rows, out[t * ldo + r]: the gemm
 * kernel's order for 4 tokens, the gemv's for 1 (kquant_x8.h's kx8_dot picks). */
static inline __attribute__((always_inline)) void q2_Kx8_dot_n(const block_q2_Kx8 *grp, int64_t nb,
                                                               const block_q8_K *const *act, const int N, float *out,
                                                               int64_t ldo) {
#if defined(__AVX2__)
    __m256 acc[4], acc_min[4];
    for (int t = 0; t < N; t++) acc[t] = acc_min[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        q2_Kx8_block(grp + b, act, b, N, acc, acc_min);
    }
    for (int t = 0; t < N; t++) _mm256_storeu_ps(out + t * ldo, _mm256_sub_ps(acc[t], acc_min[t]));
#else
    const int part = N == 4 ? 8 : 16;  /* sub-blocks per part */
    for (int t = 0; t < N; t++)
        for (int r = 0; r < 8; r++) {
            float acc = 0.0f, acc_min = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                const block_q8_K *y = act[t] + b;
                const float d = fp16_to_fp32(grp[b].d[r]) * y->d, dmin = fp16_to_fp32(grp[b].dmin[r]) * y->d;
                int32_t isum = 0, imin = 0;
                for (int s = 0; s < 16; s++) {
                    const uint8_t scale = grp[b].scales[s / 2][2 * r + s % 2];
                    const int shift = 2 * (s % 8 / 2);
                    int32_t dot = 0;
                    for (int i = 4 * (s % 2); i < 4 * (s % 2) + 4; i++)
                        for (int e = 0; e < 4; e++)
                            dot += ((grp[b].qs[s / 8][i][4 * r + e] >> shift) & 3) * y->qs[16 * s + 4 * (i % 4) + e];
                    isum += (scale & 0xF) * dot;
                    imin += (scale >> 4) * y->bsums[s];
                    if ((s + 1) % part) continue;
                    acc = fmaf((float)isum, d, acc);
                    acc_min = fmaf((float)imin, dmin, acc_min);
                    isum = imin = 0;
                }
            }
            out[t * ldo + r] = acc - acc_min;
        }
#endif
}

#endif
