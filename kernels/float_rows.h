/* Float weight rows (F32, or F16/BF16 against activations rounded to f16/bf16) in ggml's
 * AVX2 summation orders; ``type`` (T_F32, T_F16 or T_BF16) says how both rows are stored.
 *
 * One activation row runs ggml_vec_dot_f32/_f16/_bf16: four 8-lane fma accumulators over
 * steps of 32 (ggml_vec_dot_bf16's source multiplies, then adds, but the compiler fuses
 * the two into an fma in llama.cpp's build), added (0 + 2) + (1 + 3), their lanes
 * reduced low half plus high half and then (0 + 1) + (2 + 3) (BF16: hsum8_ps's
 * (0 + 2) + (1 + 3)); the products past the last multiple of 32 are added one at a time,
 * fused into the float sum for F32, in double for F16 and BF16.  Several rows run llamafile's
 * tinyBLAS when it accepts the shape (rows of a multiple of 8 values, a multiple of 4
 * weight rows): one 8-lane fma accumulator per output over steps of 8, then hsum8_ps.
 * Every output has its own accumulator, so tiling rows and tokens changes no bits.
 */
#ifndef LLAMANP_FLOAT_ROWS_H
#define LLAMANP_FLOAT_ROWS_H

#include "lanes.h"

/* value i of a row of ``type`` */
static inline float float_at(const void *p, int64_t i, int type) {
    switch (type) {
        case T_F16: return fp16_to_fp32(((const uint16_t *)p)[i]);
        case T_BF16: return bf16_to_fp32(((const uint16_t *)p)[i]);
        default: return ((const float *)p)[i];
    }
}

#if defined(__AVX2__) && defined(__F16C__)
#define LLAMANP_FLOAT_SIMD 1
static inline __m256 float_load8(const void *p, int64_t i, int type) {
    const __m128i *h = (const __m128i *)((const uint16_t *)p + i);
    switch (type) {
        case T_F16: return _mm256_cvtph_ps(_mm_loadu_si128(h));
        case T_BF16: return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(h)), 16));
        default: return _mm256_loadu_ps((const float *)p + i);
    }
}
#endif

/* Whether tinyBLAS takes a product of n_tok activation rows with n_out weight rows of n_in values. */
static inline int tinyblas_accepts(int64_t n_tok, int64_t n_out, int64_t n_in) {
    return n_tok > 1 && n_in % 8 == 0 && n_out % 4 == 0;
}

/* tinyBLAS's sum for RM (<= 4) weight rows x RN (<= 3) activation rows: out[j * ldo + i]. */
static inline __attribute__((always_inline)) void tinyblas_tile(
        int k, int type, const uint8_t *w, int64_t w_bytes, const uint8_t *a, int64_t a_bytes,
        const int RM, const int RN, float *out, int64_t ldo) {
#if defined(LLAMANP_FLOAT_SIMD)
    __m256 acc[3][4];
    for (int j = 0; j < RN; j++)
        for (int i = 0; i < RM; i++) acc[j][i] = _mm256_setzero_ps();
    for (int l = 0; l < k; l += 8) {
        __m256 av[3];
        for (int j = 0; j < RN; j++) av[j] = float_load8(a + j * a_bytes, l, type);
        for (int i = 0; i < RM; i++) {
            const __m256 wv = float_load8(w + i * w_bytes, l, type);
            for (int j = 0; j < RN; j++) acc[j][i] = _mm256_fmadd_ps(wv, av[j], acc[j][i]);
        }
    }
    for (int j = 0; j < RN; j++)
        for (int i = 0; i < RM; i++) out[j * ldo + i] = hsum8_ps(acc[j][i]);
#else
    for (int j = 0; j < RN; j++)
        for (int i = 0; i < RM; i++) {
            float acc[8] = {0};
            for (int l = 0; l < k; l += 8)
                for (int e = 0; e < 8; e++)
                    acc[e] = fmaf(float_at(w + i * w_bytes, l + e, type), float_at(a + j * a_bytes, l + e, type), acc[e]);
            out[j * ldo + i] = hsum8(acc);
        }
#endif
}

/* One output of engine.float_dots.float_dots: the dot of two rows of n values of ``type`` in
 * tinyBLAS's order (``tiny_blas``: n a multiple of 8; a 1 x 1 tile), or else in
 * ggml_vec_dot_f32's, _f16's or _bf16's (by ``type``). */
static inline float float_dot(int n, const void *w, const void *a, int type, int tiny_blas) {
    if (tiny_blas) {
        float out;
        tinyblas_tile(n, type, (const uint8_t *)w, 0, (const uint8_t *)a, 0, 1, 1, &out, 1);
        return out;
    }
    const int body = n - n % 32;
    float total;
#if defined(LLAMANP_FLOAT_SIMD)
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int i = 0; i < body; i += 32)
        for (int j = 0; j < 4; j++)
            acc[j] = _mm256_fmadd_ps(float_load8(w, i + 8 * j, type), float_load8(a, i + 8 * j, type), acc[j]);
    const __m256 octet = _mm256_add_ps(_mm256_add_ps(acc[0], acc[2]), _mm256_add_ps(acc[1], acc[3]));
    if (type == T_BF16) {
        total = hsum8_ps(octet);
    } else {
        __m128 quad = _mm_add_ps(_mm256_castps256_ps128(octet), _mm256_extractf128_ps(octet, 1));
        quad = _mm_hadd_ps(quad, quad);
        total = _mm_cvtss_f32(_mm_hadd_ps(quad, quad));
    }
#else
    float acc[32] = {0};
    for (int i = 0; i < body; i += 32)
        for (int l = 0; l < 32; l++) acc[l] = fmaf(float_at(w, i + l, type), float_at(a, i + l, type), acc[l]);
    if (type == T_BF16) {
        float octet[8];
        for (int l = 0; l < 8; l++) octet[l] = (acc[l] + acc[16 + l]) + (acc[8 + l] + acc[24 + l]);
        total = hsum8(octet);
    } else {
        total = sum32(acc);
    }
#endif
    if (type != T_F32) {
        double sum = total;
        for (int i = body; i < n; i++) sum += (double)(float_at(w, i, type) * float_at(a, i, type));
        return (float)sum;
    }
    for (int i = body; i < n; i++) total = fmaf(float_at(w, i, T_F32), float_at(a, i, T_F32), total);
    return total;
}

/* Weight rows [r0, r1) (a multiple of 4 apart) against activation rows [0, n_tok) in
 * tinyBLAS's order, in tiles of 4 weight rows x 3 activation rows: out[t * ldo + r]. */
static inline void tinyblas_rows(int type, int k, const uint8_t *w, int64_t row_bytes, int64_t r0, int64_t r1,
                                 const uint8_t *acts, int64_t act_bytes, int64_t n_tok, float *out, int64_t ldo) {
    for (int64_t r = r0; r < r1; r += 4)
        for (int64_t t = 0; t < n_tok; t += 3) {
            const uint8_t *wr = w + r * row_bytes, *at = acts + t * act_bytes;
            float *o = out + t * ldo + r;
            switch (n_tok - t) {
                case 1: tinyblas_tile(k, type, wr, row_bytes, at, act_bytes, 4, 1, o, ldo); break;
                case 2: tinyblas_tile(k, type, wr, row_bytes, at, act_bytes, 4, 2, o, ldo); break;
                default: tinyblas_tile(k, type, wr, row_bytes, at, act_bytes, 4, 3, o, ldo); break;
            }
        }
}

#endif
