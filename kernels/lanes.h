/* Eight 32-bit lanes, the accumulator shape of ggml's AVX2 dot products, with a scalar twin.
 *
 * ggml's AVX2 quantised dots keep eight int32 partial sums per block, convert them to
 * float and fold them into eight float accumulators with one fused multiply-add, then
 * add the eight lanes in a fixed tree.  The scalar build gives the same bits with arrays
 * and fmaf.
 */
#ifndef LLAMANP_LANES_H
#define LLAMANP_LANES_H

#include "qblocks.h"

/* Which llama.cpp build's orders a kernel follows (engine.isa): AVX2, or AVX-512 (its wider float vectors) */
enum { ISA_AVX2 = 0, ISA_AVX512 = 1 };

/* The horizontal sum of 8 fp32 lanes in AVX2 order (hsum8_ps; tinyBLAS, ggml's quantised
 * dots, the softmax): quad = low half + high half, then (quad0 + quad2) + (quad1 + quad3). */
static inline float hsum8(const float *v) {
    const float q0 = v[0] + v[4], q1 = v[1] + v[5], q2 = v[2] + v[6], q3 = v[3] + v[7];
    return (q0 + q2) + (q1 + q3);
}

/* ggml_vec_dot_f32/_f16's reduction of its four 8-lane accumulators (32 lanes):
 * octet i = (a[i] + a[16+i]) + (a[8+i] + a[24+i]), quad = low half + high half of the
 * octet, then (quad0 + quad1) + (quad2 + quad3). */
static inline float sum32(const float *a) {
    float octet[8];
    for (int i = 0; i < 8; i++) octet[i] = (a[i] + a[16 + i]) + (a[8 + i] + a[24 + i]);
    const float q0 = octet[0] + octet[4], q1 = octet[1] + octet[5], q2 = octet[2] + octet[6], q3 = octet[3] + octet[7];
    return (q0 + q1) + (q2 + q3);
}

#if defined(__AVX2__)
/* The AVX2 horizontal sum: high half plus low half, then (0 + 2) + (1 + 3). */
static inline float hsum8_ps(__m256 v) {
    __m128 r = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

static inline int hsum8_epi32(__m256i v) {
    __m128i r = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    r = _mm_add_epi32(r, _mm_unpackhi_epi64(r, r));
    r = _mm_add_epi32(r, _mm_shuffle_epi32(r, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(r);
}

typedef __m256i lanes_i32;
typedef __m256 lanes_f32;

static inline lanes_f32 lanes_f32_zero(void) { return _mm256_setzero_ps(); }
static inline lanes_i32 lanes_i32_zero(void) { return _mm256_setzero_si256(); }
static inline lanes_i32 lanes_sub(lanes_i32 a, lanes_i32 b) { return _mm256_sub_epi32(a, b); }
static inline int lanes_isum(lanes_i32 v) { return hsum8_epi32(v); }
static inline float lanes_hsum(lanes_f32 v) { return hsum8_ps(v); }

/* acc + s * v in every lane, v converted to float and rounded once with the product */
static inline lanes_f32 lanes_fma(float s, lanes_i32 v, lanes_f32 acc) {
    return _mm256_fmadd_ps(_mm256_set1_ps(s), _mm256_cvtepi32_ps(v), acc);
}
#else
typedef struct { int32_t v[8]; } lanes_i32;
typedef struct { float v[8]; } lanes_f32;

static inline lanes_f32 lanes_f32_zero(void) { lanes_f32 z = {{0}}; return z; }
static inline lanes_i32 lanes_i32_zero(void) { lanes_i32 z = {{0}}; return z; }

static inline lanes_i32 lanes_sub(lanes_i32 a, lanes_i32 b) {
    for (int l = 0; l < 8; l++) a.v[l] -= b.v[l];
    return a;
}

static inline int lanes_isum(lanes_i32 a) {
    int s = 0;
    for (int l = 0; l < 8; l++) s += a.v[l];
    return s;
}

static inline float lanes_hsum(lanes_f32 a) { return hsum8(a.v); }

static inline lanes_f32 lanes_fma(float s, lanes_i32 v, lanes_f32 acc) {
    for (int l = 0; l < 8; l++) acc.v[l] = fmaf(s, (float)v.v[l], acc.v[l]);
    return acc;
}
#endif

#endif
