/* ggml's block layouts, f16 and bf16 conversion, and the Q8 activation quantisers.
 *
 * The quantisers reproduce what ggml's x86 backend computes, value for value:
 * Q8_0/Q8_1 scale by 127/amax and round half to even (quantize_row_q8_0/_q8_1 on
 * AVX2); Q8_K takes the sign of its scale from the first value of largest magnitude
 * (quantize_row_q8_K_ref) or, for activations of repacked Q4_K weights, from whether
 * +amax occurs at all (ggml_quantize_mat_q8_K_4x8).  Every AVX2 path has a scalar twin
 * with the same arithmetic, used when the compiler does not target AVX2.
 */
#ifndef LLAMANP_QBLOCKS_H
#define LLAMANP_QBLOCKS_H

#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif

#define QK 32
#define QK_K 256

typedef struct { uint16_t d; uint8_t qs[QK / 2]; } block_q4_0;
typedef struct { uint16_t d, m; uint8_t qs[QK / 2]; } block_q4_1;
typedef struct { uint16_t d; uint8_t qh[4]; uint8_t qs[QK / 2]; } block_q5_0;
typedef struct { uint16_t d, m; uint8_t qh[4]; uint8_t qs[QK / 2]; } block_q5_1;
typedef struct { uint16_t d; int8_t qs[QK]; } block_q8_0;
typedef struct { uint16_t d, s; int8_t qs[QK]; } block_q8_1;
typedef struct { uint8_t scales[QK_K / 16]; uint8_t qs[QK_K / 4]; uint16_t d, dmin; } block_q2_K;
typedef struct { uint8_t hmask[QK_K / 8]; uint8_t qs[QK_K / 4]; uint8_t scales[12]; uint16_t d; } block_q3_K;
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[QK_K / 2]; } block_q4_K;
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[QK_K / 8]; uint8_t qs[QK_K / 2]; } block_q5_K;
typedef struct { uint8_t ql[QK_K / 2]; uint8_t qh[QK_K / 4]; int8_t scales[QK_K / 16]; uint16_t d; } block_q6_K;
typedef struct { float d; int8_t qs[QK_K]; int16_t bsums[QK_K / 16]; } block_q8_K;

/* ggml type ids */
enum {
    T_F32 = 0, T_F16 = 1, T_Q4_0 = 2, T_Q4_1 = 3, T_Q5_0 = 6, T_Q5_1 = 7, T_Q8_0 = 8, T_Q8_1 = 9,
    T_Q2_K = 10, T_Q3_K = 11, T_Q4_K = 12, T_Q5_K = 13, T_Q6_K = 14, T_Q8_K = 15, T_BF16 = 30,
};

/* ---------------------------------------------------------------- f16 */

/* Ask the cache for the lines of [p + PREFETCH_AHEAD, p + PREFETCH_AHEAD + bytes): the weights a
 * product will read about 2 KiB after the ``bytes`` at p.  Streaming one token's product over a
 * matrix from DRAM, the hardware prefetcher alone leaves the core waiting on loads (15-40% of
 * the time here); asking this far ahead overlaps them with the arithmetic.  A prefetch never
 * faults, so reading past the end of the weights is harmless. */
enum { PREFETCH_AHEAD = 2048 };

/* Ask the cache for the lines of [p, p + bytes), into L1 (prefetcht0). */
static inline void prefetch_lines(const void *p, size_t bytes) {
    const uintptr_t start = (uintptr_t)p;
    for (uintptr_t line = start & ~(uintptr_t)63; line < start + bytes; line += 64)
        __builtin_prefetch((const void *)line, 0, 3);
}

static inline void prefetch_ahead(const void *p, size_t bytes) {
    prefetch_lines((const uint8_t *)p + PREFETCH_AHEAD, bytes);
}

/* How far ahead the repacked kernels (Q4_0x8, Q4_Kx8, Q2_Kx8) ask for their weights, into L2 only
 * (prefetcht1): with both cores streaming a decode token from DRAM, prefetches into L1 left the
 * repacked Q4_0 and Q4_K products 10-20% slower, where the row-at-a-time kernels, on weights the L3
 * holds (SmolLM2's Q8_0 and Q4_1), were slower into L2 (docs/performance.md, "Prefetching").  Each
 * line is asked for once, 3 KiB ahead: a two-thread Q4_0 token took 23.55 ms (median of eight)
 * against 24.22 asking 2 KiB ahead again for the lines two blocks share, and Q4_K_M's 26.86 against
 * 27.20 (28.08 at 4 KiB). */
enum { REPACKED_AHEAD = 3072 };

/* Ask L2 for the lines that start in [p + REPACKED_AHEAD, p + REPACKED_AHEAD + bytes): called on the
 * consecutive pieces of a stream, it asks for every line once. */
static inline void prefetch_ahead_l2(const void *p, size_t bytes) {
    const uintptr_t start = (uintptr_t)p + REPACKED_AHEAD;
    for (uintptr_t line = (start + 63) & ~(uintptr_t)63; line < start + bytes; line += 64)
        __builtin_prefetch((const void *)line, 0, 2);
}

/* prefetch_ahead_l2 of quarter q of the ``bytes`` at p, for the repacked K-quant kernels, which ask
 * for a block column's lines a quarter at a time as they reach each quarter: the whole column at
 * once (Q4_K's 18 lines) left the two-thread one-token product streaming 4-7% slower
 * (docs/performance.md, "Prefetching"), more requests than a core's fill buffers hold. */
static inline void prefetch_quarter_l2(const void *p, size_t bytes, int q) {
    prefetch_ahead_l2((const uint8_t *)p + q * bytes / 4, bytes / 4);
}

static inline float fp16_to_fp32(uint16_t h) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
    if (exp == 0x1F) {
        bits = sign | 0x7F800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else {  /* subnormal: renormalise */
        int e = -1;
        do { man <<= 1; e++; } while (!(man & 0x400));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3FF) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
#endif
}

/* Round to nearest, ties to even, like _cvtss_sh(x, 0). */
static inline uint16_t fp32_to_fp16(float f) {
#if defined(__F16C__)
    return _cvtss_sh(f, 0);
#else
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000, ax = x & 0x7FFFFFFF;
    if (ax >= 0x7F800000u) return (uint16_t)(sign | 0x7C00 | (ax > 0x7F800000u ? 0x200 : 0));
    if (ax >= 0x477FF000u) return (uint16_t)(sign | 0x7C00);  /* rounds to infinity */
    if (ax < 0x38800000u) {                                      /* f16 subnormal or zero */
        if (ax < 0x33000000u) return (uint16_t)sign;
        uint32_t e = ax >> 23, m = (ax & 0x7FFFFF) | 0x800000, shift = 126 - e;
        uint32_t q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1))) q++;
        return (uint16_t)(sign | q);
    }
    uint32_t q = (ax >> 13) - (112u << 10), rem = ax & 0x1FFF;
    if (rem > 0x1000 || (rem == 0x1000 && (q & 1))) q++;
    return (uint16_t)(sign | q);
#endif
}

/* ggml's nearest_int: round half to even for |x| < 2^22. */
static inline int nearest_int(float x) {
    float v = x + 12582912.f;
    int i;
    memcpy(&i, &v, 4);
    return (i & 0x007fffff) - 0x00400000;
}

#if defined(__AVX2__)
/* v unchanged, but as a value gcc must hold in a register at this point.  Integer adds being
 * associative, gcc may otherwise rebuild per-token sum chains into one tree over all their
 * products, or fold one loaded vector into every instruction that uses it as a fresh load;
 * both run out of the 16 ymm registers or of load slots in the product kernels. */
static inline __m256i in_register(__m256i v) {
    __asm__("" : "+x"(v));
    return v;
}

/* Four int8 values at a, repeated in all eight 32-bit lanes.  A float broadcast from memory
 * is a plain load on the Zen cores here; an integer set1 compiles to a load and a shuffle, and the
 * regrouped kernels make one per 32 multiply-adds (one-token Q4_K products +17-25%). */
static inline __m256i broadcast_i8x4(const int8_t *a) {
    return _mm256_castps_si256(_mm256_broadcast_ss((const float *)a));
}
#endif

/* ---------------------------------------------------------------- Q8_0 / Q8_1 */

/* One block of 32: q = round_even(x * (127 / amax)); returns d = amax / 127 (before f16 rounding). */
static inline float q8_block(const float *x, int8_t *q) {
#if defined(__AVX2__)
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 v0 = _mm256_loadu_ps(x), v1 = _mm256_loadu_ps(x + 8);
    __m256 v2 = _mm256_loadu_ps(x + 16), v3 = _mm256_loadu_ps(x + 24);
    __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                             _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
    __m128 m4 = _mm_max_ps(_mm256_extractf128_ps(m, 1), _mm256_castps256_ps128(m));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float amax = _mm_cvtss_f32(m4);
    const __m256 mul = _mm256_set1_ps(amax != 0.0f ? 127.f / amax : 0.0f);
    const int mode = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    __m256i i0 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v0, mul), mode));
    __m256i i1 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v1, mul), mode));
    __m256i i2 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v2, mul), mode));
    __m256i i3 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v3, mul), mode));
    __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
    p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)q, p);
    return amax / 127.f;
#else
    float amax = 0.0f;
    for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(x[j]));
    const float mul = amax != 0.0f ? 127.f / amax : 0.0f;
    for (int j = 0; j < QK; j++) q[j] = (int8_t)nearest_int(x[j] * mul);
    return amax / 127.f;
#endif
}

static inline void quantize_row_q8_0(const float *x, block_q8_0 *y, int64_t k) {
    for (int64_t i = 0; i < k / QK; i++) y[i].d = fp32_to_fp16(q8_block(x + i * QK, y[i].qs));
}

static inline void quantize_row_q8_1(const float *x, block_q8_1 *y, int64_t k) {
    for (int64_t i = 0; i < k / QK; i++) {
        const float d = q8_block(x + i * QK, y[i].qs);
        int sum = 0;
        for (int j = 0; j < QK; j++) sum += y[i].qs[j];
        y[i].d = fp32_to_fp16(d);
        y[i].s = fp32_to_fp16(d * (float)sum);
    }
}

/* ---------------------------------------------------------------- Q8_K */

/* ``grouped`` selects ggml_quantize_mat_q8_K_4x8's choice of sign (see the file comment). */
static inline void quantize_row_q8_K(const float *x, block_q8_K *y, int64_t k, int grouped) {
    for (int64_t i = 0; i < k / QK_K; i++, x += QK_K) {
        /* amax, then max: the first value of that magnitude (max_ps, like the compare, passes NaN by) */
        float amax = 0.0f, max = 0.0f;
        int j = 0;
#if defined(__AVX2__)
        const __m256 sign = _mm256_set1_ps(-0.0f);
        __m256 amax8 = _mm256_setzero_ps();
        for (; j < QK_K; j += 8) amax8 = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + j)), amax8);
        float lanes[8];
        _mm256_storeu_ps(lanes, amax8);
        for (int l = 0; l < 8; l++) amax = lanes[l] > amax ? lanes[l] : amax;
#endif
        for (; j < QK_K; j++) amax = fabsf(x[j]) > amax ? fabsf(x[j]) : amax;
        for (j = 0; j < QK_K && amax > 0.0f; j++)
            if (fabsf(x[j]) == amax) { max = x[j]; break; }
        if (amax == 0.0f) {
            memset(&y[i], 0, sizeof(block_q8_K));
            continue;
        }
        float iscale = -127.f / max;
        if (grouped) {
            int positive = 0;
            for (int j = 0; j < QK_K; j++) positive |= x[j] == amax;
            iscale = positive ? -127.f / amax : 127.f / amax;
        }
        for (int j = 0; j < QK_K; j++) {
            const int v = nearest_int(iscale * x[j]);
            y[i].qs[j] = (int8_t)(v < 127 ? v : 127);
        }
        for (int j = 0; j < QK_K / 16; j++) {
            int sum = 0;
            for (int l = 0; l < 16; l++) sum += y[i].qs[16 * j + l];
            y[i].bsums[j] = (int16_t)sum;
        }
        y[i].d = 1.0f / iscale;
    }
}

/* ---------------------------------------------------------------- bf16 */

/* the bits of a float32 and back */
static inline float f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* bfloat16 is the top half of a float32: widening is exact */
static inline float bf16_to_fp32(uint16_t h) { return f32_from_bits((uint32_t)h << 16); }

/* GGML_FP32_TO_BF16: round to nearest, ties to even, by an integer add on the bits (past
 * the largest bf16 that gives infinity); a NaN keeps its top bits and is made quiet. */
static inline uint16_t fp32_to_bf16(float f) {
    const uint32_t bits = f32_bits(f);
    if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((bits >> 16) | 64);
    return (uint16_t)((bits + (0x7FFFu + ((bits >> 16) & 1))) >> 16);
}

/* ---------------------------------------------------------------- any activation type */

/* One row of k activations as ``act_type`` (F32, F16, BF16, Q8_0, Q8_1 or Q8_K). */
static inline void quantize_row(int act_type, const float *x, void *y, int64_t k, int grouped) {
    switch (act_type) {
        case T_F32: memcpy(y, x, (size_t)k * sizeof(float)); break;
        case T_F16: {
            uint16_t *h = y;
            int64_t i = 0;
#if defined(__F16C__) && defined(__AVX2__)
            for (; i + 8 <= k; i += 8)
                _mm_storeu_si128((__m128i *)(h + i),
                                 _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
#endif
            for (; i < k; i++) h[i] = fp32_to_fp16(x[i]);
            break;
        }
        case T_BF16: {
            uint16_t *h = y;
            for (int64_t i = 0; i < k; i++) h[i] = fp32_to_bf16(x[i]);
            break;
        }
        case T_Q8_0: quantize_row_q8_0(x, y, k); break;
        case T_Q8_1: quantize_row_q8_1(x, y, k); break;
        case T_Q8_K: quantize_row_q8_K(x, y, k, grouped); break;
        default: break;
    }
}

#endif
