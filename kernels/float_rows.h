/* Float weight rows (F32, or F16/BF16 against activations rounded to f16/bf16) in ggml's
 * summation orders; ``type`` (T_F32, T_F16 or T_BF16) says how both rows are stored, ``isa``
 * (ISA_AVX2 or ISA_AVX512) which llama.cpp build's orders.
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
 *
 * The AVX-512 build (engine.float_dots' isa "avx512") widens both: ggml_vec_dot_f32/_f16
 * take four 16-lane accumulators over steps of 64, added (0 + 2) + (1 + 3) and reduced
 * by hsum16 (_mm512_reduce_add_ps); ggml_vec_dot_bf16 feeds two 16-lane vdpbf16ps
 * accumulators with alternate halves of each 64 values and adds their hsum16s in double;
 * tinyBLAS takes 16-lane accumulators over steps of 16 (BF16: vdpbf16ps over steps of 32).
 * Compiled for AVX-512 the tiles hold them in zmm registers (vdpbf16ps itself where
 * compiled for AVX512_BF16); elsewhere the 16 lanes are two 8-lane registers, and vdpbf16ps
 * is two fmas per lane (its odd product, then its even one: exact bf16 products, each sum
 * rounded).
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

/* The values tinyBLAS takes per step (it declines rows of other lengths). */
static inline int tinyblas_step(int type, int isa) {
    return isa == ISA_AVX512 ? (type == T_BF16 ? 32 : 16) : 8;
}

/* Whether tinyBLAS takes a product of n_tok activation rows with n_out weight rows of n_in values. */
static inline int tinyblas_accepts(int64_t n_tok, int64_t n_out, int64_t n_in, int type, int isa) {
    return n_tok > 1 && n_in % tinyblas_step(type, isa) == 0 && n_out % 4 == 0;
}

/* The horizontal sum of 16 fp32 lanes as GCC's _mm512_reduce_add_ps: lanes 8..15 plus 0..7, then hsum8. */
static inline float hsum16(const float *v) {
    float octet[8];
    for (int i = 0; i < 8; i++) octet[i] = v[8 + i] + v[i];
    return hsum8(octet);
}

/* vdpbf16ps on one lane: acc plus the odd product, rounded, plus the even one, rounded (both exact) */
static inline float dpbf16(float acc, const void *w, const void *a, int64_t i) {
    acc = fmaf(bf16_to_fp32(((const uint16_t *)w)[i + 1]), bf16_to_fp32(((const uint16_t *)a)[i + 1]), acc);
    return fmaf(bf16_to_fp32(((const uint16_t *)w)[i]), bf16_to_fp32(((const uint16_t *)a)[i]), acc);
}

#if defined(LLAMANP_FLOAT_SIMD)
static inline float hsum16_ps(__m256 lo, __m256 hi) { return hsum8_ps(_mm256_add_ps(hi, lo)); }

/* vdpbf16ps on 8 lanes over the 16 bf16 values from i: lane j takes values i + 2j + 1, then i + 2j */
static inline __m256 dpbf16_ps(__m256 acc, const void *w, const void *a, int64_t i) {
    const __m256i ww = _mm256_loadu_si256((const __m256i *)((const uint16_t *)w + i));
    const __m256i aw = _mm256_loadu_si256((const __m256i *)((const uint16_t *)a + i));
    const __m256i high = _mm256_set1_epi32((int)0xFFFF0000u);
    acc = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(ww, high)),
                          _mm256_castsi256_ps(_mm256_and_si256(aw, high)), acc);
    return _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(ww, 16)),
                           _mm256_castsi256_ps(_mm256_slli_epi32(aw, 16)), acc);
}
#endif

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
                    acc[e] = fmaf(float_at(w + i * w_bytes, l + e, type), float_at(a + j * a_bytes, l + e, type),
                                  acc[e]);
            out[j * ldo + i] = hsum8(acc);
        }
#endif
}

#if defined(LLAMANP_FLOAT_SIMD) && defined(__AVX512F__)
#define LLAMANP_FLOAT_ZMM 1
/* Activation rows a tinyBLAS tile takes in the AVX-512 build's order: with 32 zmm registers a
 * 4 x 6 tile's 24 accumulators, 6 activation vectors and a weight vector fit.  (Any tile gives
 * the same bits: every output has its own accumulator.) */
#define TILE16_RN 6

static inline __m512 float_load16(const void *p, int64_t i, int type) {
    const __m256i *h = (const __m256i *)((const uint16_t *)p + i);
    switch (type) {
        case T_F16: return _mm512_cvtph_ps(_mm256_loadu_si256(h));
        case T_BF16: return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(h)), 16));
        default: return _mm512_loadu_ps((const float *)p + i);
    }
}

/* vdpbf16ps on 16 lanes over the 32 bf16 values from i (its two fmas where not compiled for it) */
static inline __m512 dpbf16_ps16(__m512 acc, const void *w, const void *a, int64_t i) {
    const __m512i ww = _mm512_loadu_si512((const void *)((const uint16_t *)w + i));
    const __m512i aw = _mm512_loadu_si512((const void *)((const uint16_t *)a + i));
#if defined(__AVX512BF16__)
    return _mm512_dpbf16_ps(acc, (__m512bh)ww, (__m512bh)aw);
#else
    const __m512i high = _mm512_set1_epi32((int)0xFFFF0000u);
    acc = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(ww, high)),
                          _mm512_castsi512_ps(_mm512_and_si512(aw, high)), acc);
    return _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(ww, 16)),
                           _mm512_castsi512_ps(_mm512_slli_epi32(aw, 16)), acc);
#endif
}

/* the high 8 lanes of a zmm (AVX-512F's 64-bit extract: the 32-bit one needs AVX-512DQ) */
static inline __m256 high8_ps(__m512 v) { return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)); }

/* hsum16 of a zmm: its high 8 lanes plus its low 8, then hsum8_ps */
static inline float hsum16_zmm(__m512 v) { return hsum16_ps(_mm512_castps512_ps256(v), high8_ps(v)); }
#else
#define TILE16_RN 3
#endif

/* tinyblas_tile in the AVX-512 build's order: 16-lane accumulators (F32, F16: steps of 16;
 * BF16: vdpbf16ps over steps of 32), then hsum16.  RM <= 4, RN <= TILE16_RN. */
static inline __attribute__((always_inline)) void tinyblas_tile16(
        int k, int type, const uint8_t *w, int64_t w_bytes, const uint8_t *a, int64_t a_bytes,
        const int RM, const int RN, float *out, int64_t ldo) {
#if defined(LLAMANP_FLOAT_ZMM)
    __m512 acc[TILE16_RN][4];
    for (int j = 0; j < RN; j++)
        for (int i = 0; i < RM; i++) acc[j][i] = _mm512_setzero_ps();
    if (type == T_BF16) {
        for (int l = 0; l < k; l += 32)
            for (int i = 0; i < RM; i++)
                for (int j = 0; j < RN; j++) acc[j][i] = dpbf16_ps16(acc[j][i], w + i * w_bytes, a + j * a_bytes, l);
    } else {
        for (int l = 0; l < k; l += 16) {
            __m512 av[TILE16_RN];
            for (int j = 0; j < RN; j++) av[j] = float_load16(a + j * a_bytes, l, type);
            for (int i = 0; i < RM; i++) {
                const __m512 wv = float_load16(w + i * w_bytes, l, type);
                for (int j = 0; j < RN; j++) acc[j][i] = _mm512_fmadd_ps(wv, av[j], acc[j][i]);
            }
        }
    }
    for (int j = 0; j < RN; j++)
        for (int i = 0; i < RM; i++) out[j * ldo + i] = hsum16_zmm(acc[j][i]);
#elif defined(LLAMANP_FLOAT_SIMD)
    __m256 acc[3][4][2];
    for (int j = 0; j < RN; j++)
        for (int i = 0; i < RM; i++) acc[j][i][0] = acc[j][i][1] = _mm256_setzero_ps();
    if (type == T_BF16) {
        for (int l = 0; l < k; l += 32)
            for (int i = 0; i < RM; i++)
                for (int j = 0; j < RN; j++)
                    for (int h = 0; h < 2; h++)
                        acc[j][i][h] = dpbf16_ps(acc[j][i][h], w + i * w_bytes, a + j * a_bytes, l + 16 * h);
    } else {
        for (int l = 0; l < k; l += 16) {
            __m256 av[3][2];
            for (int j = 0; j < RN; j++)
                for (int h = 0; h < 2; h++) av[j][h] = float_load8(a + j * a_bytes, l + 8 * h, type);
            for (int i = 0; i < RM; i++)
                for (int h = 0; h < 2; h++) {
                    const __m256 wv = float_load8(w + i * w_bytes, l + 8 * h, type);
                    for (int j = 0; j < RN; j++) acc[j][i][h] = _mm256_fmadd_ps(wv, av[j][h], acc[j][i][h]);
                }
        }
    }
    for (int j = 0; j < RN; j++)
        for (int i = 0; i < RM; i++) out[j * ldo + i] = hsum16_ps(acc[j][i][0], acc[j][i][1]);
#else
    for (int j = 0; j < RN; j++)
        for (int i = 0; i < RM; i++) {
            const uint8_t *wi = w + i * w_bytes, *aj = a + j * a_bytes;
            float acc[16] = {0};
            if (type == T_BF16) {
                for (int l = 0; l < k; l += 32)
                    for (int e = 0; e < 16; e++) acc[e] = dpbf16(acc[e], wi, aj, l + 2 * e);
            } else {
                for (int l = 0; l < k; l += 16)
                    for (int e = 0; e < 16; e++)
                        acc[e] = fmaf(float_at(wi, l + e, type), float_at(aj, l + e, type), acc[e]);
            }
            out[j * ldo + i] = hsum16(acc);
        }
#endif
}

/* The products past ``body`` added to the vector part one at a time: fused into the float
 * sum for F32, in double for F16 and BF16 (ggml's vec_dot tails). */
static inline float add_tail(double total, int body, int n, const void *w, const void *a, int type) {
    if (type != T_F32) {
        for (int i = body; i < n; i++) total += (double)(float_at(w, i, type) * float_at(a, i, type));
        return (float)total;
    }
    float sum = (float)total;
    for (int i = body; i < n; i++) sum = fmaf(float_at(w, i, T_F32), float_at(a, i, T_F32), sum);
    return sum;
}

/* ggml_vec_dot_f32/_f16/_bf16 as the AVX-512 build runs them (see the top of this file). */
static inline float vec_dot16(int n, const void *w, const void *a, int type) {
    const int body = n - n % 64;
    if (type == T_BF16) {
        double sum = 0.0;
#if defined(LLAMANP_FLOAT_ZMM)
        __m512 acc[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};  /* in one pass over the row */
        for (int i = 0; i < body; i += 64)
            for (int h = 0; h < 2; h++) acc[h] = dpbf16_ps16(acc[h], w, a, i + 32 * h);
        for (int h = 0; h < 2; h++) sum += (double)hsum16_zmm(acc[h]);
        return add_tail(sum, body, n, w, a, type);
#endif
        for (int h = 0; h < 2; h++) {  /* the two accumulators: values [64i + 32h, 64i + 32h + 32) */
#if defined(LLAMANP_FLOAT_SIMD)
            __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
            for (int i = 0; i < body; i += 64)
                for (int g = 0; g < 2; g++) acc[g] = dpbf16_ps(acc[g], w, a, i + 32 * h + 16 * g);
            sum += (double)hsum16_ps(acc[0], acc[1]);
#else
            float acc[16] = {0};
            for (int i = 0; i < body; i += 64)
                for (int e = 0; e < 16; e++) acc[e] = dpbf16(acc[e], w, a, i + 32 * h + 2 * e);
            sum += (double)hsum16(acc);
#endif
        }
        return add_tail(sum, body, n, w, a, type);
    }
#if defined(LLAMANP_FLOAT_ZMM)
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int i = 0; i < body; i += 64)
        for (int j = 0; j < 4; j++)
            acc[j] = _mm512_fmadd_ps(float_load16(w, i + 16 * j, type), float_load16(a, i + 16 * j, type), acc[j]);
    const float total = hsum16_zmm(_mm512_add_ps(_mm512_add_ps(acc[0], acc[2]), _mm512_add_ps(acc[1], acc[3])));
#elif defined(LLAMANP_FLOAT_SIMD)
    __m256 acc[4][2];
    for (int j = 0; j < 4; j++) acc[j][0] = acc[j][1] = _mm256_setzero_ps();
    for (int i = 0; i < body; i += 64)
        for (int j = 0; j < 4; j++)
            for (int h = 0; h < 2; h++)
                acc[j][h] = _mm256_fmadd_ps(float_load8(w, i + 16 * j + 8 * h, type),
                                            float_load8(a, i + 16 * j + 8 * h, type), acc[j][h]);
    __m256 v[2];
    for (int h = 0; h < 2; h++)
        v[h] = _mm256_add_ps(_mm256_add_ps(acc[0][h], acc[2][h]), _mm256_add_ps(acc[1][h], acc[3][h]));
    const float total = hsum16_ps(v[0], v[1]);
#else
    float acc[64] = {0};
    for (int i = 0; i < body; i += 64)
        for (int l = 0; l < 64; l++) acc[l] = fmaf(float_at(w, i + l, type), float_at(a, i + l, type), acc[l]);
    float v[16];
    for (int e = 0; e < 16; e++) v[e] = (acc[e] + acc[32 + e]) + (acc[16 + e] + acc[48 + e]);
    const float total = hsum16(v);
#endif
    return add_tail(total, body, n, w, a, type);
}

/* One output of engine.float_dots.float_dots: the dot of two rows of n values of ``type`` in
 * tinyBLAS's order (``tiny_blas``: n a multiple of its step; a 1 x 1 tile), or else in
 * ggml_vec_dot_f32's, _f16's or _bf16's (by ``type``), as llama.cpp built for ``isa`` runs them. */
static inline float float_dot(int n, const void *w, const void *a, int type, int tiny_blas, int isa) {
    if (tiny_blas) {
        float out;
        if (isa == ISA_AVX512)
            tinyblas_tile16(n, type, (const uint8_t *)w, 0, (const uint8_t *)a, 0, 1, 1, &out, 1);
        else
            tinyblas_tile(n, type, (const uint8_t *)w, 0, (const uint8_t *)a, 0, 1, 1, &out, 1);
        return out;
    }
    if (isa == ISA_AVX512) return vec_dot16(n, w, a, type);
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
    return add_tail(total, body, n, w, a, type);
}

/* Activation bytes a pass of tinyblas_rows keeps in the core's L2 while its weight rows go by. */
enum { TINYBLAS_ACT_BYTES = 192 << 10 };

/* Weight rows [r0, r1) (a multiple of 4 apart) against activation rows [0, n_tok) in
 * tinyBLAS's order for ``isa``, in tiles of 4 weight rows x 3 activation rows (AVX-512's
 * order: x TILE16_RN): out[t * ldo + r].  The activations are taken a block at a time, small
 * enough to stay in L2 while the weight rows pass over them (all of them, re-read per row
 * tile, would spill to L3 in a long prefill). */
static inline __attribute__((always_inline)) void tinyblas_rows_of(
        int type, int k, const uint8_t *w, int64_t row_bytes, int64_t r0, int64_t r1, const uint8_t *acts,
        int64_t act_bytes, int64_t n_tok, float *out, int64_t ldo, int isa) {
    const int rn = isa == ISA_AVX512 ? TILE16_RN : 3;
    const int64_t tiles = TINYBLAS_ACT_BYTES / act_bytes / rn, block = rn * (tiles > 1 ? tiles : 1);
    for (int64_t t0 = 0; t0 < n_tok; t0 += block) {
        const int64_t t1 = t0 + block < n_tok ? t0 + block : n_tok;
        for (int64_t r = r0; r < r1; r += 4)
            for (int64_t t = t0; t < t1; t += rn) {
                const uint8_t *wr = w + r * row_bytes, *at = acts + t * act_bytes;
                float *o = out + t * ldo + r;
                if (isa == ISA_AVX512) {
                    switch (t1 - t) {
                        case 1: tinyblas_tile16(k, type, wr, row_bytes, at, act_bytes, 4, 1, o, ldo); break;
                        case 2: tinyblas_tile16(k, type, wr, row_bytes, at, act_bytes, 4, 2, o, ldo); break;
#if TILE16_RN == 6
                        case 3: tinyblas_tile16(k, type, wr, row_bytes, at, act_bytes, 4, 3, o, ldo); break;
                        case 4: tinyblas_tile16(k, type, wr, row_bytes, at, act_bytes, 4, 4, o, ldo); break;
                        case 5: tinyblas_tile16(k, type, wr, row_bytes, at, act_bytes, 4, 5, o, ldo); break;
#endif
                        default: tinyblas_tile16(k, type, wr, row_bytes, at, act_bytes, 4, TILE16_RN, o, ldo); break;
                    }
                    continue;
                }
                switch (t1 - t) {
                    case 1: tinyblas_tile(k, type, wr, row_bytes, at, act_bytes, 4, 1, o, ldo); break;
                    case 2: tinyblas_tile(k, type, wr, row_bytes, at, act_bytes, 4, 2, o, ldo); break;
                    default: tinyblas_tile(k, type, wr, row_bytes, at, act_bytes, 4, 3, o, ldo); break;
                }
            }
    }
}

/* tinyblas_rows_of with the type a constant, so the tiles' loads need no branch and their
 * accumulators stay in registers (with the type read in the loop they went through the stack) */
static inline void tinyblas_rows(int type, int k, const uint8_t *w, int64_t row_bytes, int64_t r0, int64_t r1,
                                 const uint8_t *acts, int64_t act_bytes, int64_t n_tok, float *out, int64_t ldo,
                                 int isa) {
    switch (type) {
        case T_F16: tinyblas_rows_of(T_F16, k, w, row_bytes, r0, r1, acts, act_bytes, n_tok, out, ldo, isa); break;
        case T_BF16: tinyblas_rows_of(T_BF16, k, w, row_bytes, r0, r1, acts, act_bytes, n_tok, out, ldo, isa); break;
        default: tinyblas_rows_of(T_F32, k, w, row_bytes, r0, r1, acts, act_bytes, n_tok, out, ldo, isa); break;
    }
}

#endif
