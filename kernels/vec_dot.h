/* Dot products of one weight row with one quantised activation row, ggml's pairing:
 * Q4_0/Q5_0/Q8_0 with Q8_0, Q4_1/Q5_1 with Q8_1, the K-quants with Q8_K, F16 with F16,
 * BF16 with BF16 and F32 with F32 -- in the float order of ggml's AVX2 vec_dot kernels, as the NumPy
 * reference (engine/quant_dots.py, engine/float_dots.py) states it:
 *
 *   32-weight blocks: eight int32 lanes of four products each, folded into eight float
 *     accumulators with one fma by d_w * d_a per block, then the fixed horizontal sum;
 *     Q4_1/Q5_1 add m_w * s_a through a separate scalar fma chain;
 *   K-quants: per super-block the integer lanes of kquant_rows.h and its kq_vec_add;
 *   floats: float_rows.h.
 *
 * The integer parts are exact.  Every type has a scalar version giving the same bits;
 * when the compiler targets AVX2 the integer sums run in AVX2 (the 32-weight types, Q4_K,
 * Q5_K and Q6_K unpack in registers, the others via a small buffer).
 */
#ifndef LLAMANP_VEC_DOT_H
#define LLAMANP_VEC_DOT_H

#include "float_rows.h"
#include "block32_rows.h"
#include "kquant_rows.h"

/* ---------------------------------------------------------------- sizes */

/* Bytes of a row of ``n`` values stored as ``type`` (0 for an unknown type). */
static inline int64_t type_row_bytes(int type, int64_t n) {
    switch (type) {
        case T_F32:  return 4 * n;
        case T_F16:  return 2 * n;
        case T_BF16: return 2 * n;
        case T_Q4_0: return n / QK * (int64_t)sizeof(block_q4_0);
        case T_Q4_1: return n / QK * (int64_t)sizeof(block_q4_1);
        case T_Q5_0: return n / QK * (int64_t)sizeof(block_q5_0);
        case T_Q5_1: return n / QK * (int64_t)sizeof(block_q5_1);
        case T_Q8_0: return n / QK * (int64_t)sizeof(block_q8_0);
        case T_Q8_1: return n / QK * (int64_t)sizeof(block_q8_1);
        case T_Q2_K: return n / QK_K * (int64_t)sizeof(block_q2_K);
        case T_Q3_K: return n / QK_K * (int64_t)sizeof(block_q3_K);
        case T_Q4_K: return n / QK_K * (int64_t)sizeof(block_q4_K);
        case T_Q5_K: return n / QK_K * (int64_t)sizeof(block_q5_K);
        case T_Q6_K: return n / QK_K * (int64_t)sizeof(block_q6_K);
        case T_Q8_K: return n / QK_K * (int64_t)sizeof(block_q8_K);
        default:     return 0;
    }
}

static inline int type_block_size(int type) {
    if (type == T_F32 || type == T_F16 || type == T_BF16) return 1;
    if (type >= T_Q2_K && type <= T_Q8_K) return QK_K;
    return QK;
}

#if defined(__AVX2__)
/* 8 int32 sums of x[i] * y[i] over groups of 4 bytes, x and y signed */
static inline __m256i dot_i8_epi32(__m256i x, __m256i y) {
    const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}
#endif

/* ---------------------------------------------------------------- 32-weight blocks */

/* The 8 lanes of one block's products: lane l = sum of q[j] * y[j] over j = 4l..4l+3. */
static inline lanes_i32 block32_lanes(int type, const uint8_t *x, const int8_t *y) {
#if defined(__AVX2__)
    return dot_i8_epi32(block32_quants_avx2(type, x), _mm256_loadu_si256((const __m256i *)y));
#else
    int8_t q[QK];
    block32_quants(type, x, q);
    lanes_i32 lanes;
    for (int l = 0; l < 8; l++) {
        lanes.v[l] = 0;
        for (int e = 0; e < 4; e++) lanes.v[l] += q[4 * l + e] * y[4 * l + e];
    }
    return lanes;
#endif
}

/* vec_dot_q*_0_q8_0 / _q*_1_q8_1: the activation block is Q8_1 (d, s, quants) for
 * Q4_1/Q5_1, Q8_0 (d, quants) otherwise. */
static inline float dot_block32(int type, int n, const uint8_t *x, size_t block_bytes, const uint8_t *y) {
    const int has_min = type == T_Q4_1 || type == T_Q5_1;
    const size_t y_bytes = has_min ? sizeof(block_q8_1) : sizeof(block_q8_0);
    lanes_f32 acc = lanes_f32_zero();
    float acc_min = 0.0f;
    for (int i = 0; i < n / QK; i++, x += block_bytes, y += y_bytes) {
        uint16_t dx, dy, m, s;
        prefetch_ahead(x, block_bytes);
        memcpy(&dx, x, 2);
        memcpy(&dy, y, 2);
        if (has_min) {
            memcpy(&m, x + 2, 2);
            memcpy(&s, y + 2, 2);
            acc_min = fmaf(fp16_to_fp32(m), fp16_to_fp32(s), acc_min);
        }
        const int8_t *qy = (const int8_t *)(y + (has_min ? 4 : 2));
        acc = lanes_fma(fp16_to_fp32(dx) * fp16_to_fp32(dy), block32_lanes(type, x, qy), acc);
    }
    return has_min ? lanes_hsum(acc) + acc_min : lanes_hsum(acc);
}

static inline float dot_q4_0_q8_0(int n, const void *x, const void *y) {
    return dot_block32(T_Q4_0, n, x, sizeof(block_q4_0), y);
}
static inline float dot_q4_1_q8_1(int n, const void *x, const void *y) {
    return dot_block32(T_Q4_1, n, x, sizeof(block_q4_1), y);
}
static inline float dot_q5_0_q8_0(int n, const void *x, const void *y) {
    return dot_block32(T_Q5_0, n, x, sizeof(block_q5_0), y);
}
static inline float dot_q5_1_q8_1(int n, const void *x, const void *y) {
    return dot_block32(T_Q5_1, n, x, sizeof(block_q5_1), y);
}
static inline float dot_q8_0_q8_0(int n, const void *x, const void *y) {
    return dot_block32(T_Q8_0, n, x, sizeof(block_q8_0), y);
}

/* Q4_0 rows that llama.cpp repacks, taken one at a time: the q4_0_8x8 kernels' order,
 * one fma per block of its whole integer sum by d_w * d_a into a scalar. */
static inline float dot_q4_0_q8_0_repacked(int n, const void *vx, const void *vy) {
    const block_q4_0 *x = vx;
    const block_q8_0 *y = vy;
    float acc = 0.0f;
    for (int i = 0; i < n / QK; i++) {
        const int isum = lanes_isum(block32_lanes(T_Q4_0, (const uint8_t *)&x[i], y[i].qs));
        acc = fmaf((float)isum, fp16_to_fp32(x[i].d) * fp16_to_fp32(y[i].d), acc);
    }
    return acc;
}

/* ---------------------------------------------------------------- K-quants */

#if defined(__AVX2__)
/* pshufb controls spreading scales 2c and 2c + 1 over the low and high halves of a vector */
static const uint8_t scale_pair_index[8][16] = {
    {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1},         {2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3},
    {4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5},         {6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7},
    {8, 8, 8, 8, 8, 8, 8, 8, 9, 9, 9, 9, 9, 9, 9, 9},
    {10, 10, 10, 10, 10, 10, 10, 10, 11, 11, 11, 11, 11, 11, 11, 11},
    {12, 12, 12, 12, 12, 12, 12, 12, 13, 13, 13, 13, 13, 13, 13, 13},
    {14, 14, 14, 14, 14, 14, 14, 14, 15, 15, 15, 15, 15, 15, 15, 15},
};

/* Q4_K/Q5_K super-block lanes straight from the packed block (kq_lanes' numbers); the
 * min lanes hold min j times the activations under sub-block j. */
static inline void k4_packed_lanes(const uint8_t *x, int has_qh, const block_q8_K *y, lanes_i32 *lanes,
                                   lanes_i32 *minlanes) {
    uint8_t sc[8], mn[8];
    k4_scales_mins(x + 4, sc, mn);
    const __m128i mn8 = _mm_loadl_epi64((const __m128i *)mn);
    *minlanes = _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mn8, mn8)),
                                  _mm256_loadu_si256((const __m256i *)y->bsums));
    const uint8_t *qs = x + 16 + (has_qh ? 32 : 0);
    const __m256i low4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
    const __m256i high = has_qh ? _mm256_loadu_si256((const __m256i *)(x + 16)) : _mm256_setzero_si256();
    __m256i isum = _mm256_setzero_si256();
    for (int c = 0; c < 4; c++) {
        const __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
        const __m256i hlo = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(high, 2 * c), one), 4);
        const __m256i hhi = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(high, 2 * c + 1), one), 4);
        const __m256i lo = _mm256_or_si256(_mm256_and_si256(q, low4), hlo);
        const __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), low4), hhi);
        const __m256i plo = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)(y->qs + 64 * c)));
        const __m256i phi = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(y->qs + 64 * c + 32)));
        isum = _mm256_add_epi32(isum, _mm256_madd_epi16(plo, _mm256_set1_epi16(sc[2 * c])));
        isum = _mm256_add_epi32(isum, _mm256_madd_epi16(phi, _mm256_set1_epi16(sc[2 * c + 1])));
    }
    *lanes = isum;
}

/* Q6_K super-block lanes straight from the packed block (kq_lanes' numbers). */
static inline void q6_K_packed_lanes(const block_q6_K *x, const block_q8_K *y, lanes_i32 *lanes, lanes_i32 *minlanes) {
    const __m128i sc8 = _mm_loadu_si128((const __m128i *)x->scales);
    /* the offset of 32 of every quant, through the activation sums */
    *minlanes = _mm256_slli_epi32(
        _mm256_madd_epi16(_mm256_cvtepi8_epi16(sc8), _mm256_loadu_si256((const __m256i *)y->bsums)), 5);
    __m256i acc = _mm256_setzero_si256();
    for (int h = 0; h < 2; h++) {
        __m256i q[4];  /* 6-bit quants of weights 128h + 32k .. + 31 */
        q6_K_half(x->ql, x->qh, h, q);
        for (int k = 0; k < 4; k++) {
            const __m256i a = _mm256_loadu_si256((const __m256i *)(y->qs + 128 * h + 32 * k));
            const __m256i p = _mm256_maddubs_epi16(q[k], a);
            const __m256i scale = _mm256_cvtepi8_epi16(
                _mm_shuffle_epi8(sc8, _mm_loadu_si128((const __m128i *)scale_pair_index[4 * h + k])));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, scale));
        }
    }
    *lanes = acc;
}
#endif

/* vec_dot_qN_K_q8_K: each super-block's lanes, then kq_vec_add. */
static inline __attribute__((always_inline)) float dot_kquant(int type, int n, const uint8_t *x, const block_q8_K *y) {
    const size_t block_bytes = (size_t)type_row_bytes(type, QK_K);
    kq_vec_acc a = kq_vec_start();
    for (int i = 0; i < n / QK_K; i++, x += block_bytes) {
        lanes_i32 lanes, minlanes;
        prefetch_ahead(x, block_bytes);
#if defined(__AVX2__)
        if (type == T_Q6_K || type == T_Q4_K || type == T_Q5_K) {
            uint16_t d[2] = {0, 0};  /* d, and dmin for Q4_K/Q5_K */
            if (type == T_Q6_K) {
                q6_K_packed_lanes((const block_q6_K *)x, &y[i], &lanes, &minlanes);
                memcpy(d, &((const block_q6_K *)x)->d, 2);
            } else {
                k4_packed_lanes(x, type == T_Q5_K, &y[i], &lanes, &minlanes);
                memcpy(d, x, 4);
            }
            kq_vec_add(type, &a, lanes, minlanes, y[i].d, fp16_to_fp32(d[0]), fp16_to_fp32(d[1]));
            continue;
        }
#endif
        kq_block u;
        kq_unpack(type, x, &u);
        kq_lanes(type, &u, &y[i], &lanes, &minlanes);
        kq_vec_add(type, &a, lanes, minlanes, y[i].d, u.d, u.dmin);
    }
    return kq_vec_result(type, &a);
}

static inline float dot_q2_K_q8_K(int n, const void *x, const void *y) { return dot_kquant(T_Q2_K, n, x, y); }
static inline float dot_q3_K_q8_K(int n, const void *x, const void *y) { return dot_kquant(T_Q3_K, n, x, y); }
static inline float dot_q4_K_q8_K(int n, const void *x, const void *y) { return dot_kquant(T_Q4_K, n, x, y); }
static inline float dot_q5_K_q8_K(int n, const void *x, const void *y) { return dot_kquant(T_Q5_K, n, x, y); }
static inline float dot_q6_K_q8_K(int n, const void *x, const void *y) { return dot_kquant(T_Q6_K, n, x, y); }

/* Q2_K rows that llama.cpp built for AVX-512 repacks, in its q2_K_8x8 kernels' float steps
 * (the reference's _k_repacked): per part -- a super-block in the gemv kernel, 128 weights
 * (eight sub-blocks) in the gemm kernel -- the exact sum of scale * (sub-block dot) goes
 * into one fma chain by d_w * d_a and the exact sum of min * bsum into another by
 * dmin_w * d_a; the result is their difference.  Weight 128h + 32j + i is bits 2j..2j+1
 * of quant byte 32h + i. */
static inline float dot_q2_K_repacked(int n, const void *w, const void *a, int parts) {
    const block_q2_K *x = (const block_q2_K *)w;
    const block_q8_K *y = (const block_q8_K *)a;
    float acc = 0.0f, acc_min = 0.0f;
    for (int b = 0; b < n / QK_K; b++) {
        const float d = fp16_to_fp32(x[b].d) * y[b].d, dmin = fp16_to_fp32(x[b].dmin) * y[b].d;
        for (int p = 0; p < parts; p++) {
            int32_t isum = 0, imin = 0;
            for (int s = p * 16 / parts; s < (p + 1) * 16 / parts; s++) {
                const uint8_t *q = x[b].qs + 32 * (s / 8) + 16 * (s % 2);  /* the bytes of weights 16s..16s+15 */
                const int8_t *yq = y[b].qs + 16 * s;
                const int shift = 2 * (s % 8 / 2);
                int32_t dot = 0;
                for (int k = 0; k < 16; k++)
                    dot += ((q[k] >> shift) & 3) * yq[k];
                isum += (x[b].scales[s] & 0xF) * dot;
                imin += (x[b].scales[s] >> 4) * y[b].bsums[s];
            }
            acc = fmaf((float)isum, d, acc);
            acc_min = fmaf((float)imin, dmin, acc_min);
        }
    }
    return acc - acc_min;
}

static inline float dot_q2_K_q8_K_gemv(int n, const void *x, const void *y) { return dot_q2_K_repacked(n, x, y, 1); }
static inline float dot_q2_K_q8_K_gemm(int n, const void *x, const void *y) { return dot_q2_K_repacked(n, x, y, 2); }

/* ---------------------------------------------------------------- float rows */

static inline float dot_f32_f32(int n, const void *x, const void *y) { return float_dot(n, x, y, T_F32, 0, ISA_AVX2); }
static inline float dot_f16_f16(int n, const void *x, const void *y) { return float_dot(n, x, y, T_F16, 0, ISA_AVX2); }
static inline float dot_bf16_bf16(int n, const void *x, const void *y) {
    return float_dot(n, x, y, T_BF16, 0, ISA_AVX2);
}
/* the same in the orders of llama.cpp built for AVX-512 */
static inline float dot_f32_f32_avx512(int n, const void *x, const void *y) {
    return float_dot(n, x, y, T_F32, 0, ISA_AVX512);
}
static inline float dot_f16_f16_avx512(int n, const void *x, const void *y) {
    return float_dot(n, x, y, T_F16, 0, ISA_AVX512);
}
static inline float dot_bf16_bf16_avx512(int n, const void *x, const void *y) {
    return float_dot(n, x, y, T_BF16, 0, ISA_AVX512);
}

/* ---------------------------------------------------------------- dispatch */

typedef float (*vec_dot_fn)(int n, const void *w, const void *a);

/* The dot for weights of ``type`` (NULL when unsupported) in the order of llama.cpp built for
 * ``isa`` (the builds differ in the float rows' only), and the activation type it pairs with. */
static inline vec_dot_fn vec_dot_for(int type, int *act_type, int isa) {
    const int wide = isa == ISA_AVX512;
    switch (type) {
        case T_F32:  *act_type = T_F32;  return wide ? dot_f32_f32_avx512 : dot_f32_f32;
        case T_F16:  *act_type = T_F16;  return wide ? dot_f16_f16_avx512 : dot_f16_f16;
        case T_BF16: *act_type = T_BF16; return wide ? dot_bf16_bf16_avx512 : dot_bf16_bf16;
        case T_Q4_0: *act_type = T_Q8_0; return dot_q4_0_q8_0;
        case T_Q4_1: *act_type = T_Q8_1; return dot_q4_1_q8_1;
        case T_Q5_0: *act_type = T_Q8_0; return dot_q5_0_q8_0;
        case T_Q5_1: *act_type = T_Q8_1; return dot_q5_1_q8_1;
        case T_Q8_0: *act_type = T_Q8_0; return dot_q8_0_q8_0;
        case T_Q2_K: *act_type = T_Q8_K; return dot_q2_K_q8_K;
        case T_Q3_K: *act_type = T_Q8_K; return dot_q3_K_q8_K;
        case T_Q4_K: *act_type = T_Q8_K; return dot_q4_K_q8_K;
        case T_Q5_K: *act_type = T_Q8_K; return dot_q5_K_q8_K;
        case T_Q6_K: *act_type = T_Q8_K; return dot_q6_K_q8_K;
        default:     *act_type = -1;     return 0;
    }
}

#endif
