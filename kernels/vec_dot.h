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

/* dot_block32 of ``n_rows`` rows (``row_bytes`` apart from w) with one activation row y, into
 * out[0..n_rows): the one-token product.  Each row keeps dot_block32's float steps, in its order;
 * four rows share a pass, so an activation block and its scale are loaded once for the four and
 * the rows' fma chains overlap (one row alone waits on its chain's latency every block).  Where the
 * compiler targets VNNI, a row's lanes are one dpbusd of its quants made unsigned (the offset of
 * block32_offset_shift) started from minus the offset times the activations' four-sums, the same
 * integers as the sign trick's three instructions. */
static inline __attribute__((always_inline)) void block32_dot_rows_of(
    int type, int n, const uint8_t *w, int64_t row_bytes, int64_t n_rows, const uint8_t *y, float *out) {
    const size_t bytes = block32_bytes(type);
    int64_t r = 0;
#if defined(__AVX2__)
    const int has_min = block32_has_min(type), shift = HAVE_VNNI ? block32_offset_shift(type) : 0;
    const size_t y_bytes = has_min ? sizeof(block_q8_1) : sizeof(block_q8_0);
    for (; r + 4 <= n_rows; r += 4) {
        __m256 acc[4];
        float acc_min[4];
        for (int i = 0; i < 4; i++) {
            acc[i] = _mm256_setzero_ps();
            acc_min[i] = 0.0f;
        }
        const uint8_t *x = w + r * row_bytes, *yb = y;
        for (int b = 0; b < n / QK; b++, x += bytes, yb += y_bytes) {
            uint16_t h[2];
            memcpy(h, yb, 4);
            const float dy = fp16_to_fp32(h[0]), sy = has_min ? fp16_to_fp32(h[1]) : 0.0f;
            const __m256i a = _mm256_loadu_si256((const __m256i *)(yb + (has_min ? 4 : 2)));
            /* minus offset x the four-sums of a (zero for unsigned quants or without VNNI) */
            const __m256i start = shift ? _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(
                dpbusd(_mm256_setzero_si256(), _mm256_set1_epi8(1), a), shift)) : _mm256_setzero_si256();
            for (int i = 0; i < 4; i++) {
                const uint8_t *xi = x + i * row_bytes;
                prefetch_lines(xi + 4 * row_bytes, bytes);  /* the next pass's rows */
                memcpy(h, xi, 4);
                __m256i lanes;
                if (HAVE_VNNI)
                    lanes = dpbusd(start, _mm256_add_epi8(block32_quants_avx2(type, xi),
                                                          _mm256_set1_epi8((char)(shift ? 1 << shift : 0))), a);
                else
                    lanes = dot_i8_epi32(block32_quants_avx2(type, xi), a);
                acc[i] = _mm256_fmadd_ps(_mm256_set1_ps(fp16_to_fp32(h[0]) * dy), _mm256_cvtepi32_ps(lanes), acc[i]);
                if (has_min) acc_min[i] = fmaf(fp16_to_fp32(h[1]), sy, acc_min[i]);
            }
        }
        for (int i = 0; i < 4; i++) out[r + i] = has_min ? hsum8_ps(acc[i]) + acc_min[i] : hsum8_ps(acc[i]);
    }
#endif
    for (; r < n_rows; r++) out[r] = dot_block32(type, n, w + r * row_bytes, bytes, y);
}

/* block32_dot_rows_of compiled for each type (``type`` a constant inside) */
static inline void block32_dot_rows(int type, int n, const uint8_t *w, int64_t row_bytes, int64_t n_rows,
                                    const uint8_t *y, float *out) {
    switch (type) {
        case T_Q4_0: block32_dot_rows_of(T_Q4_0, n, w, row_bytes, n_rows, y, out); break;
        case T_Q4_1: block32_dot_rows_of(T_Q4_1, n, w, row_bytes, n_rows, y, out); break;
        case T_Q5_0: block32_dot_rows_of(T_Q5_0, n, w, row_bytes, n_rows, y, out); break;
        case T_Q5_1: block32_dot_rows_of(T_Q5_1, n, w, row_bytes, n_rows, y, out); break;
        default:     block32_dot_rows_of(T_Q8_0, n, w, row_bytes, n_rows, y, out); break;
    }
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

/* Q2_K/Q3_K super-block lanes straight from the packed block (kq_lanes' numbers): Q3_K's quants
 * shifted back by 4 in each pair's sum, its min lanes 4 * scale times the activation sums. */
static inline void crumbs_packed_lanes(int type, const uint8_t *x, const block_q8_K *y, lanes_i32 *lanes,
                                       lanes_i32 *minlanes) {
    const __m256i bsums = _mm256_loadu_si256((const __m256i *)y->bsums);
    const uint8_t *qs;
    __m256i hb = _mm256_setzero_si256();
    __m128i sc8;  /* the sixteen scales, int8 */
    if (type == T_Q2_K) {
        const block_q2_K *b = (const block_q2_K *)x;
        const __m128i packed = _mm_loadu_si128((const __m128i *)b->scales), low4 = _mm_set1_epi8(0x0F);
        sc8 = _mm_and_si128(packed, low4);
        *minlanes = _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(packed, 4), low4)), bsums);
        qs = b->qs;
    } else {
        const block_q3_K *b = (const block_q3_K *)x;
        int8_t sc[16];
        q3_K_scales(b->scales, sc);
        sc8 = _mm_loadu_si128((const __m128i *)sc);
        *minlanes = _mm256_madd_epi16(_mm256_slli_epi16(_mm256_cvtepi8_epi16(sc8), 2), bsums);
        qs = b->qs;
        hb = _mm256_loadu_si256((const __m256i *)b->hmask);
    }
    __m256i acc = _mm256_setzero_si256();
    for (int c = 0; c < 8; c++) {
        const __m256i a = _mm256_loadu_si256((const __m256i *)(y->qs + 32 * c));
        __m256i p = _mm256_maddubs_epi16(crumb_chunk(qs, hb, c), a);
        if (type == T_Q3_K) p = _mm256_sub_epi16(p, _mm256_maddubs_epi16(_mm256_set1_epi8(4), a));
        const __m128i index = _mm_loadu_si128((const __m128i *)scale_pair_index[c]);
        const __m256i scale = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc8, index));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, scale));
    }
    *lanes = acc;
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
        uint16_t d[2] = {0, 0};  /* d, and dmin for Q2_K/Q4_K/Q5_K */
        if (type == T_Q6_K) {
            q6_K_packed_lanes((const block_q6_K *)x, &y[i], &lanes, &minlanes);
            memcpy(d, &((const block_q6_K *)x)->d, 2);
        } else if (type == T_Q2_K) {
            crumbs_packed_lanes(type, x, &y[i], &lanes, &minlanes);
            d[0] = ((const block_q2_K *)x)->d;
            d[1] = ((const block_q2_K *)x)->dmin;
        } else if (type == T_Q3_K) {
            crumbs_packed_lanes(type, x, &y[i], &lanes, &minlanes);
            d[0] = ((const block_q3_K *)x)->d;
        } else {
            k4_packed_lanes(x, type == T_Q5_K, &y[i], &lanes, &minlanes);
            memcpy(d, x, 4);
        }
        kq_vec_add(type, &a, lanes, minlanes, y[i].d, fp16_to_fp32(d[0]), fp16_to_fp32(d[1]));
#else
        kq_block u;
        kq_unpack(type, x, &u);
        kq_lanes(type, &u, &y[i], &lanes, &minlanes);
        kq_vec_add(type, &a, lanes, minlanes, y[i].d, u.d, u.dmin);
#endif
    }
    return kq_vec_result(type, &a);
}

static inline float dot_q2_K_q8_K(int n, const void *x, const void *y) { return dot_kquant(T_Q2_K, n, x, y); }
static inline float dot_q3_K_q8_K(int n, const void *x, const void *y) { return dot_kquant(T_Q3_K, n, x, y); }
static inline float dot_q4_K_q8_K(int n, const void *x, const void *y) { return dot_kquant(T_Q4_K, n, x, y); }
static inline float dot_q5_K_q8_K(int n, const void *x, const void *y) { return dot_kquant(T_Q5_K, n, x, y); }
static inline float dot_q6_K_q8_K(int n, const void *x, const void *y) { return dot_kquant(T_Q6_K, n, x, y); }

/* ---------------------------------------------------------------- float rows */

static inline float dot_f32_f32(int n, const void *x, const void *y) { return float_dot(n, x, y, T_F32, ISA_AVX2); }
static inline float dot_f16_f16(int n, const void *x, const void *y) { return float_dot(n, x, y, T_F16, ISA_AVX2); }
static inline float dot_bf16_bf16(int n, const void *x, const void *y) {
    return float_dot(n, x, y, T_BF16, ISA_AVX2);
}
/* the same in the orders of llama.cpp built for AVX-512 */
static inline float dot_f32_f32_avx512(int n, const void *x, const void *y) {
    return float_dot(n, x, y, T_F32, ISA_AVX512);
}
static inline float dot_f16_f16_avx512(int n, const void *x, const void *y) {
    return float_dot(n, x, y, T_F16, ISA_AVX512);
}
static inline float dot_bf16_bf16_avx512(int n, const void *x, const void *y) {
    return float_dot(n, x, y, T_BF16, ISA_AVX512);
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
