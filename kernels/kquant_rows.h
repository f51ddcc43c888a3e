/* Q4_K, Q5_K and Q6_K rows against many tokens: each weight row is unpacked once into
 * plain bytes and 16-wide integer scales, then dotted with every token's Q8_K row.
 *
 * Per super-block the result is ggml's: d_a * (d * sum(scale * q.a) - dmin * sum(min * bsum))
 * for Q4_K/Q5_K, and d_a * d * (sum(scale * q.a) - 32 * sum(scale * bsum)) for Q6_K, whose
 * quants are stored offset by 32.  The integer parts are exact.
 */
#ifndef LLAMANP_KQUANT_ROWS_H
#define LLAMANP_KQUANT_ROWS_H

#include <stdlib.h>

#include "vec_dot.h"

typedef struct {
    uint8_t q[QK_K];   /* unsigned quants: 0..15, 0..31 or 0..63 */
    int16_t sc[16];    /* integer scale of each run of 16 quants */
    int16_t mn[16];    /* integer min (Q4_K/Q5_K) or 32 * scale (Q6_K) of each run */
    float d, dmin;
    int offset_shares_d; /* Q6_K: the offset is scaled by d, not by a dmin */
} kq_block;

static inline void kq_unpack(int type, const uint8_t *x, kq_block *u) {
    uint16_t d, dmin = 0;
    if (type == T_Q6_K) {
        const block_q6_K *b = (const block_q6_K *)x;
        for (int h = 0; h < 2; h++)
            for (int k = 0; k < 4; k++)
                for (int i = 0; i < 32; i++) {
                    const uint8_t lb = b->ql[64 * h + 32 * (k % 2) + i];
                    const int low = k / 2 ? lb >> 4 : lb & 0x0F;
                    u->q[128 * h + 32 * k + i] = (uint8_t)(low | (((b->qh[32 * h + i] >> (2 * k)) & 3) << 4));
                }
        for (int s = 0; s < 16; s++) {
            u->sc[s] = b->scales[s];
            u->mn[s] = (int16_t)(32 * b->scales[s]);
        }
        memcpy(&d, &b->d, 2);
    } else {
        const int has_qh = type == T_Q5_K;
        const uint8_t *qh = x + 16, *qs = x + 16 + (has_qh ? 32 : 0);
        uint8_t sc[8], mn[8];
        k4_scales_mins(x + 4, sc, mn);
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++) {
                const int hlo = has_qh ? ((qh[l] >> (2 * c)) & 1) << 4 : 0;
                const int hhi = has_qh ? ((qh[l] >> (2 * c + 1)) & 1) << 4 : 0;
                u->q[64 * c + l] = (uint8_t)((qs[32 * c + l] & 0x0F) | hlo);
                u->q[64 * c + 32 + l] = (uint8_t)((qs[32 * c + l] >> 4) | hhi);
            }
        for (int s = 0; s < 16; s++) {
            u->sc[s] = sc[s / 2];
            u->mn[s] = mn[s / 2];
        }
        memcpy(&d, x, 2);
        memcpy(&dmin, x + 2, 2);
    }
    u->d = fp16_to_fp32(d);
    u->dmin = fp16_to_fp32(dmin);
    u->offset_shares_d = type == T_Q6_K;
}

static inline float kq_dot(const kq_block *u, int nb, const block_q8_K *y) {
    float sum = 0.0f;
    for (int i = 0; i < nb; i++) {
        int isum, msum;
#if defined(__AVX2__)
        __m256i acc = _mm256_setzero_si256();
        for (int c = 0; c < 8; c++) {
            const __m256i p = _mm256_maddubs_epi16(_mm256_loadu_si256((const __m256i *)(u[i].q + 32 * c)),
                                                   _mm256_loadu_si256((const __m256i *)(y[i].qs + 32 * c)));
            const __m256i scale = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_set1_epi16(u[i].sc[2 * c])),
                                                          _mm_set1_epi16(u[i].sc[2 * c + 1]), 1);
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, scale));
        }
        isum = hsum_epi32(acc);
        msum = hsum_epi32(_mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)u[i].mn),
                                            _mm256_loadu_si256((const __m256i *)y[i].bsums)));
#else
        isum = msum = 0;
        for (int s = 0; s < 16; s++) {
            int dot = 0;
            for (int l = 0; l < 16; l++) dot += u[i].q[16 * s + l] * y[i].qs[16 * s + l];
            isum += u[i].sc[s] * dot;
            msum += u[i].mn[s] * y[i].bsums[s];
        }
#endif
        if (u[i].offset_shares_d)
            sum += y[i].d * u[i].d * (float)(isum - msum);
        else
            sum += y[i].d * u[i].d * (float)isum - y[i].d * u[i].dmin * (float)msum;
    }
    return sum;
}

/* out[t * ldo + r] for rows [r0, r1) and tokens [0, n_tok); returns 0, or -1 if out of memory. */
static inline int kq_rows(int type, const uint8_t *w, int64_t row_bytes, int64_t r0, int64_t r1, int n_in,
                          const uint8_t *acts, int64_t act_bytes, int64_t n_tok, float *out, int64_t ldo) {
    const int nb = n_in / QK_K;
    const size_t block_bytes = (size_t)row_bytes / (size_t)nb;
    kq_block *u = malloc(sizeof(kq_block) * (size_t)nb);
    if (!u) return -1;
    for (int64_t r = r0; r < r1; r++) {
        for (int i = 0; i < nb; i++) kq_unpack(type, w + r * row_bytes + (size_t)i * block_bytes, &u[i]);
        for (int64_t t = 0; t < n_tok; t++)
            out[t * ldo + r] = kq_dot(u, nb, (const block_q8_K *)(acts + t * act_bytes));
    }
    free(u);
    return 0;
}

#endif
