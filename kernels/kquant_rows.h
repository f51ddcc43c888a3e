/* K-quant rows (Q2_K..Q6_K) against Q8_K activations, in the float order of ggml's kernels.
 *
 * A super-block's products are exact integers; what differs between ggml's kernels is
 * how they are split and scaled in fp32, and the NumPy reference
 * (engine/quant_dots.py, QuantDot.rows) follows each:
 *
 *   vec_dot_qN_K_q8_K (fewer than 8 activation rows): eight int32 lanes per
 *     super-block, lane l holding the scaled products of weights 4l..4l+3 of each
 *     32-weight chunk, folded in with one fma by d_y * d (kq_vec_add);
 *   the tiled kernel (8 rows or more): S = the super-block's whole scaled sum and
 *     M = its mins sum, r = d * S - dmin * M (fused), acc = fma(r, dy, acc) (kq_tiled_add).
 *
 * Here each weight row is unpacked into plain bytes and sixteen integer scales (kq_block):
 * once per row for few tokens, then dotted with every token; for the tiled kernel, one
 * super-block of sixteen rows at a time, taken two rows against four tokens per pass
 * (kq_tile_add); where the compiler targets AVX-512 VNNI, sixteen tokens at a time instead, one
 * per 32-bit lane of a dpbusd against four broadcast weights (kq_codes_tile).  Q4_K rows that
 * llama.cpp repacks (a multiple of 8) go through q4_Kx8.h instead.
 */
#ifndef LLAMANP_KQUANT_ROWS_H
#define LLAMANP_KQUANT_ROWS_H

#include <stdlib.h>

#include "lanes.h"
#include "vnni.h"

enum { KQ_TILED_MIN_ROWS = 8 };  /* activation rows from which ggml runs the tiled kernel */

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

/* Q3_K's sixteen 6-bit scales (stored offset by 32) from 12 bytes: scale s takes nibble s / 8 of
 * byte s % 8 for its low 4 bits and bits 2 (s / 4), +1 of byte 8 + s % 4 for its top 2, four
 * scales at a time as 32-bit words. */
static inline void q3_K_scales(const uint8_t *p, int8_t *sc) {
    const uint32_t low4 = 0x0F0F0F0Fu, low2 = 0x03030303u;
    uint32_t w[3], out[4];
    uint8_t u[16];
    memcpy(w, p, 12);
    for (int k = 0; k < 4; k++)  /* scales 4k..4k+3 */
        out[k] = ((w[k % 2] >> (4 * (k / 2))) & low4) | (((w[2] >> (2 * k)) & low2) << 4);
    memcpy(u, out, 16);
    for (int i = 0; i < 16; i++) sc[i] = (int8_t)(u[i] - 32);
}

typedef struct {
    uint8_t q[QK_K];   /* unsigned quants: Q2_K 0..3, Q3_K 0..7 (offset 4), Q4_K 0..15, Q5_K 0..31,
                          Q6_K 0..63 (offset 32) */
    int16_t sc[16];    /* integer scale of each run of 16 quants */
    int16_t scv[8][16];  /* per 32-quant chunk c: sc[2c] eight times, then sc[2c + 1] eight times (madd's operand) */
    int16_t mn[16];    /* per run of 16: the min (Q2_K; Q4_K/Q5_K: their run of 32's), or the offset times the
                        * scale (Q3_K 4 * scale, Q6_K 32 * scale) */
    float d, dmin;
} kq_block;

/* 256 quants, chunk c = weights 32c..32c+31: 2-bit fields 2j of bytes 32h.. (c = 4h + j), plus bit c of hmask (Q3_K) */
#if defined(__AVX2__)
/* chunk c of the crumbs at qs, with bit c of the hmask bytes hb on top (Q3_K; zero for Q2_K) */
static inline __m256i crumb_chunk(const uint8_t *qs, __m256i hb, int c) {
    const __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * (c / 4)));
    const __m256i low = _mm256_and_si256(_mm256_srli_epi16(q, 2 * (c % 4)), _mm256_set1_epi8(3));
    return _mm256_or_si256(low, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, c), _mm256_set1_epi8(1)), 2));
}
#endif

static inline void kq_unpack_crumbs(const uint8_t *qs, const uint8_t *hmask, uint8_t *q) {
#if defined(__AVX2__)
    const __m256i hb = hmask ? _mm256_loadu_si256((const __m256i *)hmask) : _mm256_setzero_si256();
    for (int c = 0; c < 8; c++) _mm256_storeu_si256((__m256i *)(q + 32 * c), crumb_chunk(qs, hb, c));
#else
    for (int c = 0; c < 8; c++)
        for (int i = 0; i < 32; i++) {
            const int low = (qs[32 * (c / 4) + i] >> (2 * (c % 4))) & 3;
            q[32 * c + i] = (uint8_t)(hmask ? low | (((hmask[i] >> c) & 1) << 2) : low);
        }
#endif
}

/* Q6_K's 256 quants, chunk k of half h = weights 128h + 32k..: the low nibbles of ql bytes
 * 64h.. (k = 0) and 64h + 32.. (k = 1), the high nibbles of the same (k = 2, 3), each with
 * bits 2k, 2k + 1 of qh bytes 32h.. on top. */
#if defined(__AVX2__)
static inline void q6_K_half(const uint8_t *ql, const uint8_t *qh, int h, __m256i chunk[4]) {
    const __m256i low4 = _mm256_set1_epi8(0x0F), bits45 = _mm256_set1_epi8(0x30);
    const __m256i l0 = _mm256_loadu_si256((const __m256i *)(ql + 64 * h));
    const __m256i l1 = _mm256_loadu_si256((const __m256i *)(ql + 64 * h + 32));
    const __m256i hb = _mm256_loadu_si256((const __m256i *)(qh + 32 * h));
    chunk[0] = _mm256_or_si256(_mm256_and_si256(l0, low4), _mm256_and_si256(_mm256_slli_epi16(hb, 4), bits45));
    chunk[1] = _mm256_or_si256(_mm256_and_si256(l1, low4), _mm256_and_si256(_mm256_slli_epi16(hb, 2), bits45));
    chunk[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), low4), _mm256_and_si256(hb, bits45));
    chunk[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), low4),
                               _mm256_and_si256(_mm256_srli_epi16(hb, 2), bits45));
}
#endif

static inline void kq_unpack_q6_K(const uint8_t *ql, const uint8_t *qh, uint8_t *q) {
    for (int h = 0; h < 2; h++) {
#if defined(__AVX2__)
        __m256i chunk[4];
        q6_K_half(ql, qh, h, chunk);
        for (int k = 0; k < 4; k++) _mm256_storeu_si256((__m256i *)(q + 128 * h + 32 * k), chunk[k]);
#else
        for (int k = 0; k < 4; k++)
            for (int i = 0; i < 32; i++) {
                const uint8_t lb = ql[64 * h + 32 * (k % 2) + i];
                const int low = k / 2 ? lb >> 4 : lb & 0x0F;
                q[128 * h + 32 * k + i] = (uint8_t)(low | (((qh[32 * h + i] >> (2 * k)) & 3) << 4));
            }
#endif
    }
}

static inline void kq_unpack(int type, const uint8_t *x, kq_block *u) {
    uint16_t d, dmin = 0;
    if (type == T_Q2_K) {
        const block_q2_K *b = (const block_q2_K *)x;
        kq_unpack_crumbs(b->qs, 0, u->q);
        for (int s = 0; s < 16; s++) {
            u->sc[s] = b->scales[s] & 0x0F;
            u->mn[s] = b->scales[s] >> 4;
        }
        d = b->d;
        dmin = b->dmin;
    } else if (type == T_Q3_K) {
        const block_q3_K *b = (const block_q3_K *)x;
        int8_t sc[16];
        kq_unpack_crumbs(b->qs, b->hmask, u->q);
        q3_K_scales(b->scales, sc);
        for (int s = 0; s < 16; s++) {
            u->sc[s] = sc[s];
            u->mn[s] = (int16_t)(4 * sc[s]);
        }
        d = b->d;
    } else if (type == T_Q6_K) {
        const block_q6_K *b = (const block_q6_K *)x;
        kq_unpack_q6_K(b->ql, b->qh, u->q);
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
    for (int c = 0; c < 8; c++)
        for (int i = 0; i < 16; i++) u->scv[c][i] = u->sc[2 * c + i / 8];
    u->d = fp16_to_fp32(d);
    u->dmin = fp16_to_fp32(dmin);
}

/* A super-block's integer lanes: lane l = sum over chunks c of sc[2c + l / 4] times the
 * products of weights 32c + 4l..4l+3 (Q3_K's quants shifted back to -4..3 in the lane,
 * as ggml does), and min lane l = mn[2l] * bsums[2l] + mn[2l + 1] * bsums[2l + 1]. */
static inline __attribute__((always_inline))
void kq_lanes(int type, const kq_block *u, const block_q8_K *y, lanes_i32 *lanes, lanes_i32 *minlanes) {
    const int offset = type == T_Q3_K ? 4 : 0;
#if defined(__AVX2__)
    const __m256i shift = _mm256_set1_epi8((char)offset);
    __m256i acc = _mm256_setzero_si256();
    for (int c = 0; c < 8; c++) {
        const __m256i a = _mm256_loadu_si256((const __m256i *)(y->qs + 32 * c));
        __m256i p = _mm256_maddubs_epi16(_mm256_loadu_si256((const __m256i *)(u->q + 32 * c)), a);
        if (offset) p = _mm256_sub_epi16(p, _mm256_maddubs_epi16(shift, a));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_loadu_si256((const __m256i *)u->scv[c])));
    }
    *lanes = acc;
    *minlanes = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)u->mn),
                                  _mm256_loadu_si256((const __m256i *)y->bsums));
#else
    for (int l = 0; l < 8; l++) {
        int sum = 0;
        for (int c = 0; c < 8; c++) {
            int s = 0;
            for (int e = 0; e < 4; e++) s += (u->q[32 * c + 4 * l + e] - offset) * y->qs[32 * c + 4 * l + e];
            sum += u->sc[2 * c + l / 4] * s;
        }
        lanes->v[l] = sum;
        minlanes->v[l] = u->mn[2 * l] * y->bsums[2 * l] + u->mn[2 * l + 1] * y->bsums[2 * l + 1];
    }
#endif
}

/* ---------------------------------------------------------------- fewer than 8 activation rows */

/* The float state of a vec_dot_qN_K_q8_K row. */
typedef struct {
    lanes_f32 acc;
    float acc_min;  /* Q5_K: the mins, fma'd into a scalar */
    double sum;     /* Q4_K: see kq_vec_add */
} kq_vec_acc;

static inline kq_vec_acc kq_vec_start(void) {
    kq_vec_acc a = {lanes_f32_zero(), 0.0f, 0.0};
    return a;
}

/* One super-block with scales d, dmin against an activation block of scale dy:
 *   Q2_K: the min lanes fma'd by -(dy * dmin), then the lanes by dy * d, on one accumulator;
 *   Q3_K: the lanes fma'd by dy * d;  Q6_K: the same after taking off the min lanes (its offset of 32);
 *   Q5_K: the lanes fma'd by dy * d, and the whole mins sum by -(dy * dmin) into a scalar;
 *   Q4_K: (dy * d) * S - (dy * dmin) * M in double, summed in double -- the reference's
 *         stand-in for ggml's few-row Q4_K kernel, which llama.cpp only runs on rows it does not repack. */
static inline __attribute__((always_inline))
void kq_vec_add(int type, kq_vec_acc *a, lanes_i32 lanes, lanes_i32 minlanes, float dy, float d, float dmin) {
    switch (type) {
        case T_Q2_K:
            a->acc = lanes_fma(-(dy * dmin), minlanes, a->acc);
            a->acc = lanes_fma(dy * d, lanes, a->acc);
            break;
        case T_Q3_K:
            a->acc = lanes_fma(dy * d, lanes, a->acc);
            break;
        case T_Q6_K:
            a->acc = lanes_fma(dy * d, lanes_sub(lanes, minlanes), a->acc);
            break;
        case T_Q5_K:
            a->acc = lanes_fma(dy * d, lanes, a->acc);
            a->acc_min = fmaf(-(dy * dmin), (float)lanes_isum(minlanes), a->acc_min);
            break;
        default:  /* T_Q4_K */
            a->sum += (double)(dy * d) * lanes_isum(lanes) - (double)(dy * dmin) * lanes_isum(minlanes);
            break;
    }
}

static inline float kq_vec_result(int type, const kq_vec_acc *a) {
    if (type == T_Q4_K) return (float)a->sum;
    if (type == T_Q5_K) return lanes_hsum(a->acc) + a->acc_min;
    return lanes_hsum(a->acc);
}

static inline __attribute__((always_inline))
float kq_dot_vec(int type, const kq_block *u, int nb, const block_q8_K *y) {
    kq_vec_acc a = kq_vec_start();
    for (int i = 0; i < nb; i++) {
        lanes_i32 lanes, minlanes;
        kq_lanes(type, &u[i], &y[i], &lanes, &minlanes);
        kq_vec_add(type, &a, lanes, minlanes, y[i].d, u[i].d, u[i].dmin);
    }
    return kq_vec_result(type, &a);
}

/* ---------------------------------------------------------------- 8 activation rows or more */

static inline int kq_has_mins(int type) { return type == T_Q2_K || type == T_Q4_K || type == T_Q5_K; }

/* One super-block of the tiled kernel for one row and token: r = d * S, minus dmin * M fused
 * for the types with mins, then folded in with one fma by dy.  S is net of Q3_K's and Q6_K's
 * offsets (Q6_K's taken off as its min lanes). */
static inline __attribute__((always_inline))
float kq_tiled_add(int type, float acc, lanes_i32 lanes, lanes_i32 minlanes, float dy, float d, float dmin) {
    const int m = lanes_isum(minlanes);
    const int s = lanes_isum(lanes) - (type == T_Q6_K ? m : 0);
    float r = d * (float)s;
    if (kq_has_mins(type)) r = fmaf(-dmin, (float)m, r);
    return fmaf(r, dy, acc);
}

#if defined(__AVX2__)
/* lane k = the sum of v[k]'s eight lanes */
static inline __m256i kq_sum_lanes8(const __m256i *v) {
    const __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    const __m256i b = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
}
#endif

enum { KQ_TILE_ROWS = 16 };  /* rows whose super-blocks are unpacked together in the tiled kernel */

/* Super-block b of rows [g, g + rows) unpacked into u[0..rows), asking the cache for each row's
 * next super-block (after the last, the next sixteen rows' first): the tiled kernels take a
 * matrix sixteen rows and one super-block at a time, a stride the hardware prefetcher leaves
 * waiting on loads. */
static inline __attribute__((always_inline))
void kq_unpack_rows(int type, const uint8_t *w, int64_t row_bytes, int64_t g, int rows, int b, int nb, kq_block *u) {
    const size_t block_bytes = (size_t)row_bytes / (size_t)nb;
    for (int i = 0; i < rows; i++) {
        const uint8_t *x = w + (g + i) * row_bytes + (size_t)b * block_bytes;
        const uint8_t *next = b + 1 < nb ? x + block_bytes : w + (g + KQ_TILE_ROWS + i) * row_bytes;
        for (size_t line = 0; line < block_bytes; line += 64) __builtin_prefetch(next + line, 0, 3);
        kq_unpack(type, x, &u[i]);
    }
}

/* One super-block of rows u0, u1 against tokens y[0..n) (n <= 4) through kq_tiled_add's steps,
 * into acc[4 * row + token].  Each weight vector serves every token and each activation vector
 * both rows; the (row, token) sums are exact integers, S net of the offsets taken as mins
 * (mn = offset * scale), so only their float steps need ggml's order. */
static inline __attribute__((always_inline)) void kq_tile_add(int type, const kq_block *u0, const kq_block *u1,
                                                             const block_q8_K *const *y, int n, float *acc) {
#if defined(__AVX2__)
    __m256i s[8], m[8];
    for (int k = 0; k < 8; k++) s[k] = m[k] = _mm256_setzero_si256();
#pragma GCC unroll 1  /* unrolled, gcc hoists every chunk's loads ahead and spills the sums */
    for (int c = 0; c < 8; c++) {
        /* one load of each vector for all its uses (in_register), so loads stay under the multiplies */
        const __m256i q0 = in_register(_mm256_loadu_si256((const __m256i *)(u0->q + 32 * c)));
        const __m256i q1 = in_register(_mm256_loadu_si256((const __m256i *)(u1->q + 32 * c)));
        const __m256i sc0 = in_register(_mm256_loadu_si256((const __m256i *)u0->scv[c]));
        const __m256i sc1 = in_register(_mm256_loadu_si256((const __m256i *)u1->scv[c]));
#pragma GCC unroll 4  /* each token's sums stay in their registers */
        for (int t = 0; t < n; t++) {
            const __m256i a = in_register(_mm256_loadu_si256((const __m256i *)(y[t]->qs + 32 * c)));
            s[t] = dpwssd(s[t], _mm256_maddubs_epi16(q0, a), sc0);
            s[4 + t] = dpwssd(s[4 + t], _mm256_maddubs_epi16(q1, a), sc1);
        }
    }
    const __m256i mn0 = _mm256_loadu_si256((const __m256i *)u0->mn), mn1 = _mm256_loadu_si256((const __m256i *)u1->mn);
    float dy[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int t = 0; t < n; t++) {
        const __m256i bsums = _mm256_loadu_si256((const __m256i *)y[t]->bsums);
        m[t] = _mm256_madd_epi16(mn0, bsums);
        m[4 + t] = _mm256_madd_epi16(mn1, bsums);
        dy[t] = y[t]->d;
    }
    const __m256 d = _mm256_setr_ps(u0->d, u0->d, u0->d, u0->d, u1->d, u1->d, u1->d, u1->d);
    __m256 r;
    if (kq_has_mins(type)) {
        const __m256 dmin = _mm256_setr_ps(u0->dmin, u0->dmin, u0->dmin, u0->dmin,
                                           u1->dmin, u1->dmin, u1->dmin, u1->dmin);
        const __m256 neg_dmin = _mm256_xor_ps(dmin, _mm256_set1_ps(-0.0f));  /* -dmin, signed zeros included */
        r = _mm256_fmadd_ps(neg_dmin, _mm256_cvtepi32_ps(kq_sum_lanes8(m)),
                            _mm256_mul_ps(d, _mm256_cvtepi32_ps(kq_sum_lanes8(s))));
    } else {
        for (int k = 0; k < 8; k++) s[k] = _mm256_sub_epi32(s[k], m[k]);
        r = _mm256_mul_ps(d, _mm256_cvtepi32_ps(kq_sum_lanes8(s)));
    }
    const __m256 dyv = _mm256_setr_ps(dy[0], dy[1], dy[2], dy[3], dy[0], dy[1], dy[2], dy[3]);
    _mm256_storeu_ps(acc, _mm256_fmadd_ps(r, dyv, _mm256_loadu_ps(acc)));
#else
    for (int row = 0; row < 2; row++) {
        const kq_block *u = row ? u1 : u0;
        for (int t = 0; t < n; t++) {
            lanes_i32 lanes, minlanes;
            kq_lanes(type, u, y[t], &lanes, &minlanes);
            acc[4 * row + t] = kq_tiled_add(type, acc[4 * row + t], lanes, minlanes, y[t]->d, u->d, u->dmin);
        }
    }
#endif
}

/* Rows [r0, r1) against n_tok tokens in the tiled kernel's order.  Sixteen rows at a time,
 * super-block by super-block: their blocks are unpacked once, then each tile of four tokens
 * meets every pair of rows while it is in L1.  The running sums wait in acc, eight per
 * (pair, tile). */
static inline __attribute__((always_inline))
void kq_rows_tiled(int type, const uint8_t *w, int64_t row_bytes, int64_t r0, int64_t r1, int nb,
                   const uint8_t *acts, int64_t act_bytes, int64_t n_tok, kq_block *u, float *acc, float *out,
                   int64_t ldo) {
    const int64_t n_tiles = (n_tok + 3) / 4;
    for (int64_t g = r0; g < r1; g += KQ_TILE_ROWS) {
        const int rows = (int)(r1 - g < KQ_TILE_ROWS ? r1 - g : KQ_TILE_ROWS), pairs = (rows + 1) / 2;
        memset(acc, 0, sizeof(float) * 8 * (size_t)(pairs * n_tiles));
        for (int b = 0; b < nb; b++) {
            kq_unpack_rows(type, w, row_bytes, g, rows, b, nb, u);
            for (int64_t k = 0; k < n_tiles; k++) {
                const int n = (int)(n_tok - 4 * k < 4 ? n_tok - 4 * k : 4);
                const block_q8_K *y[4];
                for (int t = 0; t < n; t++) y[t] = (const block_q8_K *)(acts + (4 * k + t) * act_bytes) + b;
                for (int p = 0; p < pairs; p++) {
                    /* a lone last row pairs with itself */
                    const kq_block *u1 = &u[2 * p + 1 < rows ? 2 * p + 1 : 2 * p];
                    if (n == 4) kq_tile_add(type, &u[2 * p], u1, y, 4, acc + 8 * (p * n_tiles + k));
                    else kq_tile_add(type, &u[2 * p], u1, y, n, acc + 8 * (p * n_tiles + k));
                }
            }
        }
        for (int64_t t = 0; t < n_tok; t++)  /* token by token: each writes its rows' outputs side by side */
            for (int i = 0; i < rows; i++)
                out[t * ldo + g + i] = acc[8 * ((i / 2) * n_tiles + t / 4) + 4 * (i % 2) + t % 4];
    }
}

enum { KQ_CODE_TOKENS = 16 };  /* tokens of a code block, one per 32-bit lane of a zmm */

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define KQ_CODES 1

/* One super-block of sixteen tokens' Q8_K activations, transposed for dpbusd: q[g] holds
 * activations 4g..4g+3 of token j in lane j; bsums[p] the pair (bsums 2p, 2p + 1) of token j
 * in lane j; d the tokens' scales.  Lanes past the last token are zero. */
typedef struct {
    int8_t q[QK_K / 4][4 * KQ_CODE_TOKENS];
    int16_t bsums[QK_K / 32][2 * KQ_CODE_TOKENS];
    float d[KQ_CODE_TOKENS];
} kq_codes;

/* codes[k * nb + b] for every block b of tokens 16k..16k+15 of the Q8_K rows acts (n_tok rows of act_bytes) */
static inline void kq_make_codes(const uint8_t *acts, int64_t act_bytes, int64_t n_tok, int nb, int64_t k,
                                 kq_codes *codes) {
    for (int b = 0; b < nb; b++) {
        kq_codes *c = &codes[k * nb + b];
        memset(c, 0, sizeof *c);
        for (int64_t j = 0; j < KQ_CODE_TOKENS && KQ_CODE_TOKENS * k + j < n_tok; j++) {
            const block_q8_K *y = (const block_q8_K *)(acts + (KQ_CODE_TOKENS * k + j) * act_bytes) + b;
            for (int g = 0; g < QK_K / 4; g++) memcpy(&c->q[g][4 * j], y->qs + 4 * g, 4);
            for (int p = 0; p < QK_K / 32; p++) memcpy(&c->bsums[p][2 * j], y->bsums + 2 * p, 4);
            c->d[j] = y->d;
        }
    }
}

/* One super-block of eight rows u[0..8) against the sixteen tokens of c through kq_tiled_add's
 * float steps, into acc[r][0..16).  Per run of 16 weights (32 for Q4_K/Q5_K, whose pairs of
 * runs share a scale) each row's four-weight groups are broadcast against the tokens' codes,
 * and the run's sums multiplied by its scale; M from the bsums pairs in one dpwssd each. */
static inline __attribute__((always_inline))
void kq_codes_tile(int type, const kq_block *const *u, const kq_codes *c, float *const *acc) {
    const int run = type == T_Q4_K || type == T_Q5_K ? 32 : 16;
    __m512i S[8], M[8];
    for (int r = 0; r < 8; r++) S[r] = M[r] = _mm512_setzero_si512();
    for (int s = 0; s < QK_K / run; s++) {
        __m512i raw[8];
        for (int r = 0; r < 8; r++) raw[r] = _mm512_setzero_si512();
#pragma GCC unroll 8  /* rolled, gcc copies each sum out of its register and back around every dpbusd */
        for (int g = run / 4 * s; g < run / 4 * (s + 1); g++) {
            const __m512i codes = _mm512_loadu_si512(c->q[g]);
            for (int r = 0; r < 8; r++) {
                uint32_t w4;
                memcpy(&w4, u[r]->q + 4 * g, 4);
                raw[r] = _mm512_dpbusd_epi32(raw[r], _mm512_set1_epi32((int)w4), codes);
            }
        }
        for (int r = 0; r < 8; r++)
            S[r] = _mm512_add_epi32(S[r], _mm512_mullo_epi32(raw[r], _mm512_set1_epi32(u[r]->sc[run / 16 * s])));
    }
    for (int p = 0; p < QK_K / 32; p++) {
        const __m512i bsums = _mm512_loadu_si512(c->bsums[p]);
        for (int r = 0; r < 8; r++) {
            const uint32_t mn2 = (uint16_t)u[r]->mn[2 * p] | (uint32_t)(uint16_t)u[r]->mn[2 * p + 1] << 16;
            M[r] = _mm512_dpwssd_epi32(M[r], bsums, _mm512_set1_epi32((int)mn2));
        }
    }
    const __m512 dy = _mm512_loadu_ps(c->d);
    for (int r = 0; r < 8; r++) {
        __m512 x;
        if (kq_has_mins(type))
            x = _mm512_fmadd_ps(_mm512_set1_ps(-u[r]->dmin), _mm512_cvtepi32_ps(M[r]),
                                _mm512_mul_ps(_mm512_set1_ps(u[r]->d), _mm512_cvtepi32_ps(S[r])));
        else
            x = _mm512_mul_ps(_mm512_set1_ps(u[r]->d), _mm512_cvtepi32_ps(_mm512_sub_epi32(S[r], M[r])));
        _mm512_storeu_ps(acc[r], _mm512_fmadd_ps(x, dy, _mm512_loadu_ps(acc[r])));
    }
}

/* kq_rows_tiled with the tokens sixteen at a time (codes from kq_make_codes), eight rows per pass. */
static inline __attribute__((always_inline))
void kq_rows_codes(int type, const uint8_t *w, int64_t row_bytes, int64_t r0, int64_t r1, int nb,
                   const kq_codes *codes, int64_t n_tok, kq_block *u, float *acc, float *out, int64_t ldo) {
    const int64_t n_tiles = (n_tok + KQ_CODE_TOKENS - 1) / KQ_CODE_TOKENS;
    for (int64_t g = r0; g < r1; g += KQ_TILE_ROWS) {
        const int rows = (int)(r1 - g < KQ_TILE_ROWS ? r1 - g : KQ_TILE_ROWS);
        memset(acc, 0, sizeof(float) * KQ_CODE_TOKENS * (size_t)(rows * n_tiles));
        float spare[8][KQ_CODE_TOKENS] = {{0}};  /* the sums of the rows a last pass repeats, dropped */
        for (int b = 0; b < nb; b++) {
            kq_unpack_rows(type, w, row_bytes, g, rows, b, nb, u);
            for (int64_t k = 0; k < n_tiles; k++)
                for (int i0 = 0; i0 < rows; i0 += 8) {
                    const kq_block *u8[8];
                    float *acc8[8];
                    for (int r = 0; r < 8; r++) {  /* rows past the last repeat it */
                        const int i = i0 + r < rows ? i0 + r : rows - 1;
                        u8[r] = &u[i];
                        acc8[r] = i0 + r < rows ? acc + KQ_CODE_TOKENS * (i * n_tiles + k) : spare[r];
                    }
                    kq_codes_tile(type, u8, &codes[k * nb + b], acc8);
                }
        }
        for (int64_t t = 0; t < n_tok; t++)  /* token by token: each writes its rows' outputs side by side */
            for (int i = 0; i < rows; i++) out[t * ldo + g + i] = acc[KQ_CODE_TOKENS * i * n_tiles + t];
    }
}
#else
#define KQ_CODES 0
typedef struct kq_codes kq_codes;
/* never called here: kq_codes_bytes asks for no codes */
static inline void kq_make_codes(const uint8_t *acts, int64_t act_bytes, int64_t n_tok, int nb, int64_t k,
                                 kq_codes *codes) {
    (void)acts, (void)act_bytes, (void)n_tok, (void)nb, (void)k, (void)codes;
}
#endif

/* Bytes of kq_make_codes' blocks for n_tok tokens of nb super-blocks, or 0 where kq_rows takes no codes
 * (fewer tokens than the tiled kernel's, or a build without AVX-512 VNNI). */
static inline size_t kq_codes_bytes(int64_t n_tok, int nb) {
#if KQ_CODES
    if (n_tok >= KQ_TILED_MIN_ROWS)
        return sizeof(kq_codes) * (size_t)nb * (size_t)((n_tok + KQ_CODE_TOKENS - 1) / KQ_CODE_TOKENS);
#endif
    (void)n_tok, (void)nb;
    return 0;
}

/* Rows [r0, r1) against few tokens: each row unpacked once into u (nb blocks), then dotted with every token. */
static inline __attribute__((always_inline)) void kq_rows_vec(int type, const uint8_t *w, int64_t row_bytes, int64_t r0,
                                                             int64_t r1, int nb, const uint8_t *acts, int64_t act_bytes,
                                                             int64_t n_tok, kq_block *u, float *out, int64_t ldo) {
    const size_t block_bytes = (size_t)row_bytes / (size_t)nb;
    for (int64_t r = r0; r < r1; r++) {
        for (int i = 0; i < nb; i++) kq_unpack(type, w + r * row_bytes + (size_t)i * block_bytes, &u[i]);
        for (int64_t t = 0; t < n_tok; t++)
            out[t * ldo + r] = kq_dot_vec(type, u, nb, (const block_q8_K *)(acts + t * act_bytes));
    }
}

#if KQ_CODES
#define KQ_ROWS_CODES(T) \
        if (codes) { kq_rows_codes(T, w, row_bytes, r0, r1, nb, codes, n_tok, scratch, sums, out, ldo); break; }
#else
#define KQ_ROWS_CODES(T)
#endif

#define KQ_ROWS_CASE(T) \
    case T: \
        KQ_ROWS_CODES(T) \
        if (tiled) kq_rows_tiled(T, w, row_bytes, r0, r1, nb, acts, act_bytes, n_tok, scratch, sums, out, ldo); \
        else kq_rows_vec(T, w, row_bytes, r0, r1, nb, acts, act_bytes, n_tok, scratch, out, ldo); \
        break;

/* out[t * ldo + r] for rows [r0, r1) and tokens [0, n_tok), the kernel chosen by n_tok as
 * ggml chooses it; ``codes``: kq_make_codes' blocks of the same activations where kq_codes_bytes
 * asks for them (else NULL).  Returns 0, or -1 if out of memory. */
static inline int kq_rows(int type, const uint8_t *w, int64_t row_bytes, int64_t r0, int64_t r1, int n_in,
                          const uint8_t *acts, int64_t act_bytes, const kq_codes *codes, int64_t n_tok, float *out,
                          int64_t ldo) {
    const int nb = n_in / QK_K, tiled = n_tok >= KQ_TILED_MIN_ROWS;
    /* unpacked blocks: a row's (few tokens) or sixteen rows' one (tiled), then the tiled kernel's running sums
     * (sixteen rows' for four tokens a tile, or sixteen with codes) */
    const size_t blocks = tiled ? KQ_TILE_ROWS : (size_t)nb;
    const size_t n_sums = tiled ? KQ_TILE_ROWS * (size_t)((n_tok + 15) / 16 * 16) : 0;
    kq_block *scratch = malloc(sizeof(kq_block) * blocks + sizeof(float) * n_sums);
    if (!scratch) return -1;
    float *sums = (float *)(scratch + blocks);
    switch (type) {
        KQ_ROWS_CASE(T_Q2_K)
        KQ_ROWS_CASE(T_Q3_K)
        KQ_ROWS_CASE(T_Q4_K)
        KQ_ROWS_CASE(T_Q5_K)
        KQ_ROWS_CASE(T_Q6_K)
        default: break;
    }
    free(scratch);
    return 0;
}

#undef KQ_ROWS_CASE
#undef KQ_ROWS_CODES

#endif
