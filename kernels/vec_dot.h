/* Dot products of one weight row with one quantised activation row, ggml's pairing:
 * Q4_0/Q5_0/Q8_0 with Q8_0, Q4_1/Q5_1 with Q8_1, the K-quants with Q8_K, F16 with F16
 * and F32 with F32.  The integer block sums are exact; their fp32 scaling and
 * accumulation follow ggml's order up to float re-association.
 *
 * F16/F32 rows sum in double (see dot_rows_f64).  Every type has a scalar version; when the compiler targets AVX2 the integer block
 * sums run in AVX2 (Q4_0, Q8_0 and the K-quants unpack in registers, the others via a
 * small buffer).
 */
#ifndef LLAMANP_VEC_DOT_H
#define LLAMANP_VEC_DOT_H

#include "qblocks.h"

#if defined(__AVX2__)
static inline float hsum_ps(__m256 v) {
    __m128 r = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

static inline int hsum_epi32(__m256i v) {
    __m128i r = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    r = _mm_add_epi32(r, _mm_unpackhi_epi64(r, r));
    r = _mm_add_epi32(r, _mm_shuffle_epi32(r, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(r);
}

/* 8 int32 sums of x[i] * y[i] over groups of 4 bytes, x and y signed */
static inline __m256i dot_i8_epi32(__m256i x, __m256i y) {
    const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

/* 32 bytes of 4-bit values from 16 packed bytes: low nibbles first, then high */
static inline __m256i nibbles_32(const uint8_t *p) {
    const __m128i t = _mm_loadu_si128((const __m128i *)p);
    const __m256i b = _mm256_inserti128_si256(_mm256_castsi128_si256(t), _mm_srli_epi16(t, 4), 1);
    return _mm256_and_si256(b, _mm256_set1_epi8(0x0F));
}
#endif

/* ---------------------------------------------------------------- 32-weight blocks */

/* The 32 quants of one block, as int8 (Q4_1/Q5_1 stay unsigned: 0..31 fits). */
static inline void block32_quants(int type, const uint8_t *b, int8_t *q) {
    const int has_min = type == T_Q4_1 || type == T_Q5_1;
    const uint8_t *qh = b + (has_min ? 4 : 2), *qs = qh + (type == T_Q5_0 || type == T_Q5_1 ? 4 : 0);
    if (type == T_Q8_0) {
        memcpy(q, b + 2, QK);
        return;
    }
    uint32_t h = 0;
    if (type == T_Q5_0 || type == T_Q5_1) memcpy(&h, qh, 4);
    const int offset = type == T_Q4_0 ? 8 : type == T_Q5_0 ? 16 : 0;
    for (int j = 0; j < QK; j++) {
        const int nib = j < QK / 2 ? (qs[j] & 0x0F) : (qs[j - QK / 2] >> 4);
        q[j] = (int8_t)((nib | (int)(((h >> j) & 1) << 4)) - offset);
    }
}

/* sum over blocks of d_w * d_a * (integer block dot) [+ m_w * s_a for Q4_1/Q5_1]; the
 * activation block is Q8_1 (d, s, quants) for those two, Q8_0 (d, quants) otherwise. */
static inline float dot_block32(int type, int n, const uint8_t *x, size_t block_bytes, const uint8_t *y) {
    const int has_min = type == T_Q4_1 || type == T_Q5_1;
    const size_t y_bytes = has_min ? sizeof(block_q8_1) : sizeof(block_q8_0);
    float sum = 0.0f;
#if defined(__AVX2__)
    __m256 acc = _mm256_setzero_ps();
#endif
    for (int i = 0; i < n / QK; i++, x += block_bytes, y += y_bytes) {
        uint16_t dx, dy, m, s;
        memcpy(&dx, x, 2);
        memcpy(&dy, y, 2);
        const int8_t *yq = (const int8_t *)(y + (has_min ? 4 : 2));
        const float d = fp16_to_fp32(dx) * fp16_to_fp32(dy);
        if (has_min) {
            memcpy(&m, x + 2, 2);
            memcpy(&s, y + 2, 2);
            sum += fp16_to_fp32(m) * fp16_to_fp32(s);
        }
#if defined(__AVX2__)
        __m256i q;
        if (type == T_Q4_0) {
            q = _mm256_sub_epi8(nibbles_32(x + 2), _mm256_set1_epi8(8));
        } else if (type == T_Q8_0) {
            q = _mm256_loadu_si256((const __m256i *)(x + 2));
        } else {
            int8_t tmp[QK];
            block32_quants(type, x, tmp);
            q = _mm256_loadu_si256((const __m256i *)tmp);
        }
        const __m256i isum = dot_i8_epi32(q, _mm256_loadu_si256((const __m256i *)yq));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(isum), acc);
#else
        int8_t q[QK];
        block32_quants(type, x, q);
        int isum = 0;
        for (int j = 0; j < QK; j++) isum += q[j] * yq[j];
        sum += d * (float)isum;
#endif
    }
#if defined(__AVX2__)
    sum += hsum_ps(acc);
#endif
    return sum;
}

static inline float dot_q4_0_q8_0(int n, const void *x, const void *y) { return dot_block32(T_Q4_0, n, x, sizeof(block_q4_0), y); }
static inline float dot_q4_1_q8_1(int n, const void *x, const void *y) { return dot_block32(T_Q4_1, n, x, sizeof(block_q4_1), y); }
static inline float dot_q5_0_q8_0(int n, const void *x, const void *y) { return dot_block32(T_Q5_0, n, x, sizeof(block_q5_0), y); }
static inline float dot_q5_1_q8_1(int n, const void *x, const void *y) { return dot_block32(T_Q5_1, n, x, sizeof(block_q5_1), y); }
static inline float dot_q8_0_q8_0(int n, const void *x, const void *y) { return dot_block32(T_Q8_0, n, x, sizeof(block_q8_0), y); }

/* ---------------------------------------------------------------- K-quants */

/* Q4_K/Q5_K: eight 6-bit scales and mins packed in 12 bytes.  Scale j < 4 is the low 6
 * bits of byte j, min j < 4 those of byte 4 + j; scale and min 4 + j take a nibble of
 * byte 8 + j for their low 4 bits and the top 2 bits of bytes j and 4 + j, four at a
 * time as 32-bit words. */
static inline void k4_scales_mins(const uint8_t *p, uint8_t *sc, uint8_t *mn) {
    const uint32_t low6 = 0x3F3F3F3Fu, low4 = 0x0F0F0F0Fu, low2 = 0x03030303u;
    uint32_t w[3], out[4];
    memcpy(w, p, 12);
    out[0] = w[0] & low6;                                        /* scales 0..3 */
    out[1] = (w[2] & low4) | (((w[0] >> 6) & low2) << 4);        /* scales 4..7 */
    out[2] = w[1] & low6;                                        /* mins 0..3 */
    out[3] = ((w[2] >> 4) & low4) | (((w[1] >> 6) & low2) << 4); /* mins 4..7 */
    memcpy(sc, out, 8);
    memcpy(mn, out + 2, 8);
}

/* sum over sub-blocks of 32 of min * (sum of the activations under it) */
static inline int k4_min_sum(const uint8_t *mn, const int16_t *bsums) {
    int s = 0;
    for (int j = 0; j < 8; j++) s += mn[j] * (bsums[2 * j] + bsums[2 * j + 1]);
    return s;
}

static inline float dot_q2_K_q8_K(int n, const void *vx, const void *vy) {
    const block_q2_K *x = vx;
    const block_q8_K *y = vy;
    float sum = 0.0f;
    for (int i = 0; i < n / QK_K; i++) {
        int summ = 0, isum = 0;
        for (int j = 0; j < 16; j++) summ += (x[i].scales[j] >> 4) * y[i].bsums[j];
        for (int h = 0; h < 2; h++)
            for (int j = 0; j < 4; j++)
                for (int half = 0; half < 2; half++) {
                    const int sub = 8 * h + 2 * j + half, base = 128 * h + 32 * j + 16 * half;
                    int s = 0;
                    for (int l = 0; l < 16; l++) s += ((x[i].qs[32 * h + 16 * half + l] >> (2 * j)) & 3) * y[i].qs[base + l];
                    isum += (x[i].scales[sub] & 0x0F) * s;
                }
        sum += y[i].d * fp16_to_fp32(x[i].d) * (float)isum - y[i].d * fp16_to_fp32(x[i].dmin) * (float)summ;
    }
    return sum;
}

static inline float dot_q3_K_q8_K(int n, const void *vx, const void *vy) {
    const block_q3_K *x = vx;
    const block_q8_K *y = vy;
    float sum = 0.0f;
    for (int i = 0; i < n / QK_K; i++) {
        int isum = 0;
        for (int sub = 0; sub < 16; sub++) {
            const int lo = (x[i].scales[sub % 8] >> (4 * (sub / 8))) & 0x0F;
            const int hi = (x[i].scales[8 + sub % 4] >> (2 * (sub / 4))) & 3;
            const int scale = (lo | (hi << 4)) - 32;
            const int h = sub / 8, j = (sub % 8) / 2, half = sub % 2;
            int s = 0;
            for (int l = 0; l < 16; l++) {
                const int idx = 16 * half + l;
                const int low = (x[i].qs[32 * h + idx] >> (2 * j)) & 3;
                const int q = (x[i].hmask[idx] >> (4 * h + j)) & 1 ? low : low - 4;
                s += q * y[i].qs[16 * sub + l];
            }
            isum += scale * s;
        }
        sum += y[i].d * fp16_to_fp32(x[i].d) * (float)isum;
    }
    return sum;
}

/* Q4_K and Q5_K share their layout up to the fifth bit: d, dmin, 12 bytes of scales and
 * mins, [32 bytes of fifth bits,] 128 bytes of nibbles. */
static inline float dot_k4_family(int n, const uint8_t *x, size_t block_bytes, int has_qh, const block_q8_K *y) {
    float sum = 0.0f;
#if defined(__AVX2__)
    __m256 acc = _mm256_setzero_ps();
#endif
    for (int i = 0; i < n / QK_K; i++, x += block_bytes) {
        uint16_t d, dmin;
        memcpy(&d, x, 2);
        memcpy(&dmin, x + 2, 2);
        uint8_t sc[8], mn[8];
        k4_scales_mins(x + 4, sc, mn);
        const uint8_t *qs = x + 16 + (has_qh ? 32 : 0), *qh = has_qh ? x + 16 : 0;
#if defined(__AVX2__)
        /* sum of min * (activations under its sub-block): bsums of 16 added in pairs */
        const __m128i pairs = _mm_hadd_epi16(_mm_loadu_si128((const __m128i *)y[i].bsums),
                                             _mm_loadu_si128((const __m128i *)(y[i].bsums + 8)));
        __m128i m = _mm_madd_epi16(_mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)mn)), pairs);
        m = _mm_add_epi32(m, _mm_unpackhi_epi64(m, m));
        const int summ = _mm_cvtsi128_si32(_mm_add_epi32(m, _mm_shuffle_epi32(m, 1)));
        const __m256i low4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
        const __m256i high = qh ? _mm256_loadu_si256((const __m256i *)qh) : _mm256_setzero_si256();
        __m256i isum = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
            const __m256i hlo = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(high, 2 * c), one), 4);
            const __m256i hhi = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(high, 2 * c + 1), one), 4);
            const __m256i lo = _mm256_or_si256(_mm256_and_si256(q, low4), hlo);
            const __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), low4), hhi);
            const __m256i plo = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)(y[i].qs + 64 * c)));
            const __m256i phi = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(y[i].qs + 64 * c + 32)));
            isum = _mm256_add_epi32(isum, _mm256_madd_epi16(plo, _mm256_set1_epi16(sc[2 * c])));
            isum = _mm256_add_epi32(isum, _mm256_madd_epi16(phi, _mm256_set1_epi16(sc[2 * c + 1])));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(y[i].d * fp16_to_fp32(d)), _mm256_cvtepi32_ps(isum), acc);
        sum -= y[i].d * fp16_to_fp32(dmin) * (float)summ;
#else
        const int summ = k4_min_sum(mn, y[i].bsums);
        int isum = 0;
        for (int c = 0; c < 4; c++) {
            int slo = 0, shi = 0;
            for (int l = 0; l < 32; l++) {
                const int qlo = (qs[32 * c + l] & 0x0F) | (qh ? ((qh[l] >> (2 * c)) & 1) << 4 : 0);
                const int qhi = (qs[32 * c + l] >> 4) | (qh ? ((qh[l] >> (2 * c + 1)) & 1) << 4 : 0);
                slo += qlo * y[i].qs[64 * c + l];
                shi += qhi * y[i].qs[64 * c + 32 + l];
            }
            isum += sc[2 * c] * slo + sc[2 * c + 1] * shi;
        }
        sum += y[i].d * fp16_to_fp32(d) * (float)isum - y[i].d * fp16_to_fp32(dmin) * (float)summ;
#endif
    }
#if defined(__AVX2__)
    sum += hsum_ps(acc);
#endif
    return sum;
}

static inline float dot_q4_K_q8_K(int n, const void *vx, const void *vy) {
    return dot_k4_family(n, vx, sizeof(block_q4_K), 0, vy);
}

static inline float dot_q5_K_q8_K(int n, const void *vx, const void *vy) {
    return dot_k4_family(n, vx, sizeof(block_q5_K), 1, vy);
}

#if defined(__AVX2__)
/* pshufb controls spreading Q6_K scale pair j (sub-blocks 2j, 2j+1) over the two halves of a vector */
static const uint8_t q6_scale_pairs[8][16] = {
    {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1},         {2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3},
    {4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5},         {6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7},
    {8, 8, 8, 8, 8, 8, 8, 8, 9, 9, 9, 9, 9, 9, 9, 9},         {10, 10, 10, 10, 10, 10, 10, 10, 11, 11, 11, 11, 11, 11, 11, 11},
    {12, 12, 12, 12, 12, 12, 12, 12, 13, 13, 13, 13, 13, 13, 13, 13}, {14, 14, 14, 14, 14, 14, 14, 14, 15, 15, 15, 15, 15, 15, 15, 15},
};
#endif

static inline float dot_q6_K_q8_K(int n, const void *vx, const void *vy) {
    const block_q6_K *x = vx;
    const block_q8_K *y = vy;
#if defined(__AVX2__)
    const __m256i low4 = _mm256_set1_epi8(0x0F), bits45 = _mm256_set1_epi8(0x30);
    __m256 accf = _mm256_setzero_ps();
    for (int i = 0; i < n / QK_K; i++) {
        const __m128i sc8 = _mm_loadu_si128((const __m128i *)x[i].scales);
        /* start from -32 * sum(scale * bsum): the offset of every quant, through the activation sums */
        const __m256i bias = _mm256_madd_epi16(_mm256_cvtepi8_epi16(sc8), _mm256_loadu_si256((const __m256i *)y[i].bsums));
        __m256i acc = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(bias, 5));
        for (int h = 0; h < 2; h++) {
            const __m256i l0 = _mm256_loadu_si256((const __m256i *)(x[i].ql + 64 * h));
            const __m256i l1 = _mm256_loadu_si256((const __m256i *)(x[i].ql + 64 * h + 32));
            const __m256i qh = _mm256_loadu_si256((const __m256i *)(x[i].qh + 32 * h));
            const __m256i q[4] = {  /* 6-bit quants of weights 128h + 32k .. + 31 */
                _mm256_or_si256(_mm256_and_si256(l0, low4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), bits45)),
                _mm256_or_si256(_mm256_and_si256(l1, low4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), bits45)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), low4), _mm256_and_si256(qh, bits45)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), low4),
                                _mm256_and_si256(_mm256_srli_epi16(qh, 2), bits45)),
            };
            for (int k = 0; k < 4; k++) {
                const __m256i p = _mm256_maddubs_epi16(q[k], _mm256_loadu_si256((const __m256i *)(y[i].qs + 128 * h + 32 * k)));
                const __m256i scale = _mm256_cvtepi8_epi16(
                    _mm_shuffle_epi8(sc8, _mm_loadu_si128((const __m128i *)q6_scale_pairs[4 * h + k])));
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, scale));
            }
        }
        accf = _mm256_fmadd_ps(_mm256_set1_ps(y[i].d * fp16_to_fp32(x[i].d)), _mm256_cvtepi32_ps(acc), accf);
    }
    return hsum_ps(accf);
#else
    float sum = 0.0f;
    for (int i = 0; i < n / QK_K; i++) {
        int bias = 0;  /* the -32 offset of every quant, through the activation sums */
        for (int j = 0; j < 16; j++) bias += x[i].scales[j] * y[i].bsums[j];
        int isum = 0;
        for (int sub = 0; sub < 16; sub++) {
            const int h = sub / 8, k = (sub % 8) / 2, half = sub % 2;
            int s = 0;
            for (int l = 0; l < 16; l++) {
                const int idx = 16 * half + l;
                const uint8_t lb = x[i].ql[64 * h + 32 * (k % 2) + idx];
                const int q = ((k / 2 ? lb >> 4 : lb & 0x0F)) | (((x[i].qh[32 * h + idx] >> (2 * k)) & 3) << 4);
                s += q * y[i].qs[16 * sub + l];
            }
            isum += x[i].scales[sub] * s;
        }
        sum += y[i].d * fp16_to_fp32(x[i].d) * (float)(isum - 32 * bias);
    }
    return sum;
#endif
}

/* ---------------------------------------------------------------- float rows */

static inline float dot_f16_f16(int n, const void *vx, const void *vy) {
    const uint16_t *x = vx, *y = vy;
    int i = 0;
    float sum = 0.0f;
#if defined(__AVX2__) && defined(__F16C__)
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (; i + 32 <= n; i += 32)
        for (int j = 0; j < 4; j++)
            acc[j] = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i + 8 * j))),
                                     _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(y + i + 8 * j))), acc[j]);
    sum = hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
#endif
    for (; i < n; i++) sum += fp16_to_fp32(x[i]) * fp16_to_fp32(y[i]);
    return sum;
}

/* Float weight rows (F32, or F16 against f16-rounded activations): every product is exact
 * in double and the sum runs in double, rounded once.  A row's result then does not depend
 * on summation order, so an ulp cannot flip the f16 rounding of a cached key between
 * engines; this is what the NumPy reference computes too. */
static inline float dot_rows_f64(int n, const void *vx, const void *vy, int half) {
    double sum = 0.0;
    int i = 0;
#if defined(__AVX2__) && defined(__F16C__)
    __m256d acc0 = _mm256_setzero_pd(), acc1 = _mm256_setzero_pd();
    for (; i + 8 <= n; i += 8) {
        const __m256 x = half ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)vx + i)))
                              : _mm256_loadu_ps((const float *)vx + i);
        const __m256 y = half ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)vy + i)))
                              : _mm256_loadu_ps((const float *)vy + i);
        acc0 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(x)), _mm256_cvtps_pd(_mm256_castps256_ps128(y)), acc0);
        acc1 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(x, 1)), _mm256_cvtps_pd(_mm256_extractf128_ps(y, 1)), acc1);
    }
    const __m256d a = _mm256_add_pd(acc0, acc1);
    const __m128d b = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    sum = _mm_cvtsd_f64(_mm_add_sd(b, _mm_unpackhi_pd(b, b)));
#endif
    for (; i < n; i++) {
        const double x = half ? fp16_to_fp32(((const uint16_t *)vx)[i]) : ((const float *)vx)[i];
        const double y = half ? fp16_to_fp32(((const uint16_t *)vy)[i]) : ((const float *)vy)[i];
        sum += x * y;
    }
    return (float)sum;
}

static inline float dot_f32_rows(int n, const void *x, const void *y) { return dot_rows_f64(n, x, y, 0); }
static inline float dot_f16_rows(int n, const void *x, const void *y) { return dot_rows_f64(n, x, y, 1); }

/* ---------------------------------------------------------------- dispatch */

typedef float (*vec_dot_fn)(int n, const void *w, const void *a);

/* The dot for weights of ``type`` (NULL when unsupported) and the activation type it pairs with. */
static inline vec_dot_fn vec_dot_for(int type, int *act_type) {
    switch (type) {
        case T_F32:  *act_type = T_F32;  return dot_f32_rows;
        case T_F16:  *act_type = T_F16;  return dot_f16_rows;
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

/* Bytes of a row of ``n`` values stored as ``type`` (0 for an unknown type). */
static inline int64_t type_row_bytes(int type, int64_t n) {
    switch (type) {
        case T_F32:  return 4 * n;
        case T_F16:  return 2 * n;
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
    if (type == T_F32 || type == T_F16) return 1;
    if (type >= T_Q2_K && type <= T_Q8_K) return QK_K;
    return QK;
}

#endif
