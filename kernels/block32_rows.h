/* Rows of 32-weight blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) against several tokens at once.
 *
 * ggml takes these products one (row, token) pair at a time: tinyBLAS (Q4_0, Q5_0, Q8_0
 * with several tokens) and vec_dot (Q4_1, Q5_1, and every type for one token) both keep
 * eight int32 lanes of four products per block, fold them into eight float lanes with one
 * fma by d_w * d_a, and add the lanes in hsum8_ps's order at the end; Q4_1/Q5_1 add
 * m_w * s_a through a separate scalar fma chain.  Every pair's float steps depend only on
 * its own row and token, so the pairs may be computed in any order.
 *
 * Here a chunk of rows is unpacked once into plain int8 quants and float scales, and each
 * pass takes two rows (four where AVX-512VL gives 32 vector registers) against four tokens:
 * a block of each row is loaded once for the four tokens, a token's block once for the
 * rows, and the (row, token) accumulators stay in registers.  The d_w * d_a of a row's four
 * pairs come from one multiply.  Where the compiler targets VNNI, a lane's four products
 * and their sum are one instruction (the integers are the same).  The min chains are summed
 * apart, a row's for all tokens at once.
 */
#ifndef LLAMANP_BLOCK32_ROWS_H
#define LLAMANP_BLOCK32_ROWS_H

#include <stdlib.h>

#include "lanes.h"
#include "vnni.h"

/* Rows x tokens per pass: their accumulators, the rows' quants and the scales must stay in registers,
 * so four rows where AVX-512VL gives 32 of them, two with AVX2's 16. */
#if defined(__AVX512VL__)
enum { B32_TILE_ROWS = 4 };
#else
enum { B32_TILE_ROWS = 2 };
#endif
enum { B32_TILE_TOKENS = 4 };

static inline int block32_has_min(int type) { return type == T_Q4_1 || type == T_Q5_1; }

/* Bytes of a block of ``type`` (a 32-weight type or an activation type Q8_0/Q8_1). */
static inline size_t block32_bytes(int type) {
    switch (type) {
        case T_Q4_0: return sizeof(block_q4_0);
        case T_Q4_1: return sizeof(block_q4_1);
        case T_Q5_0: return sizeof(block_q5_0);
        case T_Q5_1: return sizeof(block_q5_1);
        case T_Q8_1: return sizeof(block_q8_1);
        default:     return sizeof(block_q8_0);
    }
}

/* The 32 quants of one block, as int8 (Q4_1/Q5_1 stay unsigned: 0..31 fits). */
static inline void block32_quants(int type, const uint8_t *b, int8_t *q) {
    const int has_min = block32_has_min(type);
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

#if defined(__AVX2__)
/* 32 bytes of 4-bit values from 16 packed bytes: low nibbles first, then high */
static inline __m256i nibbles_32(const uint8_t *p) {
    const __m128i t = _mm_loadu_si128((const __m128i *)p);
    const __m256i b = _mm256_inserti128_si256(_mm256_castsi128_si256(t), _mm_srli_epi16(t, 4), 1);
    return _mm256_and_si256(b, _mm256_set1_epi8(0x0F));
}

/* 0x10 in byte j where bit j of the 32 bits at p is set, 0 elsewhere (Q5's fifth bits) */
static inline __m256i fifth_bits_32(const uint8_t *p) {
    uint32_t h;
    memcpy(&h, p, 4);
    /* byte j takes byte j / 8 of h, then keeps bit j % 8 of it */
    const __m256i byte_of_bit = _mm256_setr_epi64x(0, 0x0101010101010101, 0x0202020202020202, 0x0303030303030303);
    const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32((int)h), byte_of_bit);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit), _mm256_set1_epi8(0x10));
}

/* block32_quants in a register */
static inline __m256i block32_quants_avx2(int type, const uint8_t *b) {
    switch (type) {
        case T_Q8_0: return _mm256_loadu_si256((const __m256i *)(b + 2));
        case T_Q4_0: return _mm256_sub_epi8(nibbles_32(b + 2), _mm256_set1_epi8(8));
        case T_Q4_1: return nibbles_32(b + 4);
        case T_Q5_0:
            return _mm256_sub_epi8(_mm256_or_si256(nibbles_32(b + 6), fifth_bits_32(b + 2)), _mm256_set1_epi8(16));
        default:     return _mm256_or_si256(nibbles_32(b + 8), fifth_bits_32(b + 4));  /* Q5_1 */
    }
}
#endif

/* With VNNI (vnni.h) one instruction takes a lane's four u8 x s8 products and their sum, exactly as
 * maddubs then madd do (whose int16 pairs cannot saturate here: |w| <= 128 against |a| <= 127).  The rows
 * are then kept unsigned, q + 2^k (Q4_0: 8, Q5_0: 16, Q8_0: 128, wrapping to 0..255), and the 2^k * (a's
 * four-sums) that this adds is taken back by starting the sum at -2^k times them (block32_act_sums):
 * one instruction per (row, token) where the sign trick takes three. */
#define B32_VNNI HAVE_VNNI

/* k of the offset 2^k that makes the quants of ``type`` unsigned (0: none needed, Q4_1 and Q5_1). */
static inline int block32_offset_shift(int type) {
    return type == T_Q4_0 ? 3 : type == T_Q5_0 ? 4 : type == T_Q8_0 ? 7 : 0;
}

/* A chunk of rows unpacked: row i's quants at q + i * n_in, its block scales (and mins) at d (m) + i * nb. */
typedef struct {
    int8_t *q;
    float *d, *m;
} block32_unpacked;

static inline void block32_unpack_rows(int type, const uint8_t *w, int64_t row_bytes, int rows, int nb,
                                       block32_unpacked u) {
    const size_t bytes = block32_bytes(type);
    for (int i = 0; i < rows; i++)
        for (int b = 0; b < nb; b++) {
            const uint8_t *x = w + i * row_bytes + (size_t)b * bytes;
            uint16_t h[2];
            memcpy(h, x, 4);
            u.d[i * nb + b] = fp16_to_fp32(h[0]);
            if (u.m) u.m[i * nb + b] = fp16_to_fp32(h[1]);
#if defined(__AVX2__)
            __m256i q = block32_quants_avx2(type, x);
            if (B32_VNNI && block32_offset_shift(type))
                q = _mm256_add_epi8(q, _mm256_set1_epi8((char)(1 << block32_offset_shift(type))));
            _mm256_storeu_si256((__m256i *)(u.q + ((size_t)i * nb + b) * QK), q);
#else
            block32_quants(type, x, u.q + ((size_t)i * nb + b) * QK);
#endif
        }
}

/* Token scales block-major, for all rows' tiles to share: ad[b * n_tok + t] = d of token t's block b
 * (and as = its s, for Q8_1).  The tiles read four tokens' scales at once, so ad needs 4 floats to spare
 * past its end. */
static inline void block32_act_scales(int act_type, const uint8_t *acts, int64_t act_bytes, int64_t n_tok, int nb,
                                      float *ad, float *as) {
    const size_t bytes = block32_bytes(act_type);
    for (int64_t t = 0; t < n_tok; t++)
        for (int b = 0; b < nb; b++) {
            uint16_t h[2];
            memcpy(h, acts + t * act_bytes + (size_t)b * bytes, 4);
            ad[b * n_tok + t] = fp16_to_fp32(h[0]);
            if (as) as[b * n_tok + t] = fp16_to_fp32(h[1]);
        }
}

/* For the VNNI tiles, nsum[(b * n_tok + t) * 8 + l] = minus the sum of token t's quants 4l..4l+3 in block b. */
static inline void block32_act_sums(int act_type, const uint8_t *acts, int64_t act_bytes, int64_t n_tok, int nb,
                                    int32_t *nsum) {
    const size_t bytes = block32_bytes(act_type), offset = act_type == T_Q8_1 ? 4 : 2;
    for (int64_t t = 0; t < n_tok; t++)
        for (int b = 0; b < nb; b++) {
            const int8_t *a = (const int8_t *)(acts + t * act_bytes + (size_t)b * bytes + offset);
            for (int l = 0; l < 8; l++)
                nsum[(b * n_tok + t) * 8 + l] = -(a[4 * l] + a[4 * l + 1] + a[4 * l + 2] + a[4 * l + 3]);
        }
}

/* Rows q[0..nr) against tokens y[0..nt): sums[i * 4 + j] = the hsum of row i's lanes with token j.
 * ``wsigned``: the quants are signed (Q4_0, Q5_0, Q8_0), so the products go through the sign trick of ggml's
 * AVX2 dots; unsigned quants (Q4_1, Q5_1) multiply straight. */
static inline __attribute__((always_inline)) void block32_tile(
    int wsigned, int nr, int nt, const int8_t *const q[B32_TILE_ROWS], const float *const dw[B32_TILE_ROWS],
    const uint8_t *const y[4], size_t y_bytes, const float *ad, const int32_t *nsum, int shift,
    int64_t scale_stride, int nb, float *sums) {
#if B32_VNNI
    (void)wsigned;
    __m256 acc[B32_TILE_ROWS][4];
    for (int i = 0; i < nr; i++)
        for (int j = 0; j < nt; j++) acc[i][j] = _mm256_setzero_ps();
    const __m128i count = _mm_cvtsi32_si128(shift);
    for (int b = 0; b < nb; b++) {
        __m256i wu[B32_TILE_ROWS];  /* the quants made unsigned */
        __m256 d[B32_TILE_ROWS];    /* d_w * d_a of row i with the four tokens, in both halves */
        const __m256 da = _mm256_broadcast_ps((const __m128 *)(ad + b * scale_stride));
        for (int i = 0; i < nr; i++) {
            wu[i] = _mm256_loadu_si256((const __m256i *)(q[i] + (size_t)b * QK));
            d[i] = _mm256_mul_ps(_mm256_broadcast_ss(dw[i] + b), da);
        }
        for (int j = 0; j < nt; j++) {
            const __m256i a = _mm256_loadu_si256((const __m256i *)(y[j] + (size_t)b * y_bytes));
            const __m256i start = shift ? _mm256_sll_epi32(_mm256_loadu_si256(
                                              (const __m256i *)(nsum + (b * scale_stride + j) * 8)), count)
                                        : _mm256_setzero_si256();
            for (int i = 0; i < nr; i++) {
                const __m256 lanes = _mm256_cvtepi32_ps(dpbusd(start, wu[i], a));
                acc[i][j] = _mm256_fmadd_ps(_mm256_shuffle_ps(d[i], d[i], 0x55 * j), lanes, acc[i][j]);
            }
        }
    }
    for (int i = 0; i < nr; i++)
        for (int j = 0; j < nt; j++) sums[i * 4 + j] = hsum8_ps(acc[i][j]);
#elif defined(__AVX2__)
    (void)nsum, (void)shift;
    __m256 acc[B32_TILE_ROWS][4];
    for (int i = 0; i < nr; i++)
        for (int j = 0; j < nt; j++) acc[i][j] = _mm256_setzero_ps();
    const __m256i ones = _mm256_set1_epi16(1);
    for (int b = 0; b < nb; b++) {
        __m256i wq[B32_TILE_ROWS], wu[B32_TILE_ROWS];  /* the quants, and what maddubs takes unsigned */
        __m256 d[B32_TILE_ROWS];  /* d_w * d_a of row i with the four tokens, in both halves */
        const __m256 da = _mm256_broadcast_ps((const __m128 *)(ad + b * scale_stride));
        for (int i = 0; i < nr; i++) {
            wq[i] = _mm256_loadu_si256((const __m256i *)(q[i] + (size_t)b * QK));
            wu[i] = wsigned ? _mm256_sign_epi8(wq[i], wq[i]) : wq[i];
            d[i] = _mm256_mul_ps(_mm256_broadcast_ss(dw[i] + b), da);
        }
        for (int j = 0; j < nt; j++) {
            const __m256i a = _mm256_loadu_si256((const __m256i *)(y[j] + (size_t)b * y_bytes));
            for (int i = 0; i < nr; i++) {
                const __m256i p = _mm256_maddubs_epi16(wu[i], wsigned ? _mm256_sign_epi8(a, wq[i]) : a);
                const __m256 lanes = _mm256_cvtepi32_ps(_mm256_madd_epi16(p, ones));
                /* token j's product in every lane: a shuffle, off the ports the multiplies use */
                const __m256 dj = _mm256_shuffle_ps(d[i], d[i], 0x55 * j);
                acc[i][j] = _mm256_fmadd_ps(dj, lanes, acc[i][j]);
            }
        }
    }
    for (int i = 0; i < nr; i++)
        for (int j = 0; j < nt; j++) sums[i * 4 + j] = hsum8_ps(acc[i][j]);
#else
    (void)wsigned, (void)nsum, (void)shift;
    for (int i = 0; i < nr; i++)
        for (int j = 0; j < nt; j++) {
            lanes_f32 acc = lanes_f32_zero();
            for (int b = 0; b < nb; b++) {
                const int8_t *x = q[i] + (size_t)b * QK, *a = (const int8_t *)(y[j] + (size_t)b * y_bytes);
                lanes_i32 lanes;
                for (int l = 0; l < 8; l++) {
                    lanes.v[l] = 0;
                    for (int e = 0; e < 4; e++) lanes.v[l] += x[4 * l + e] * a[4 * l + e];
                }
                acc = lanes_fma(dw[i][b] * ad[b * scale_stride + j], lanes, acc);
            }
            sums[i * 4 + j] = lanes_hsum(acc);
        }
#endif
}

/* block32_tile with the row and token counts as constants, so that its loops unroll */
static inline __attribute__((always_inline)) void block32_tile_fixed(
    int wsigned, int nr, int nt, const int8_t *const q[B32_TILE_ROWS], const float *const dw[B32_TILE_ROWS],
    const uint8_t *const y[4], size_t y_bytes, const float *ad, const int32_t *nsum, int shift,
    int64_t scale_stride, int nb, float *sums) {
#define B32_TILE(R, T) \
    if (nr == R && nt == T) { \
        block32_tile(wsigned, R, T, q, dw, y, y_bytes, ad, nsum, shift, scale_stride, nb, sums); \
        return; \
    }
#if defined(__AVX512VL__)
    B32_TILE(4, 4) B32_TILE(4, 3) B32_TILE(4, 2) B32_TILE(4, 1)
    B32_TILE(3, 4) B32_TILE(3, 3) B32_TILE(3, 2) B32_TILE(3, 1)
#endif
    B32_TILE(2, 4) B32_TILE(2, 3) B32_TILE(2, 2) B32_TILE(2, 1)
    B32_TILE(1, 4) B32_TILE(1, 3) B32_TILE(1, 2) B32_TILE(1, 1)
#undef B32_TILE
}

/* Every tile of the unpacked rows u against every token; ``wsigned`` as in block32_tile. */
static inline __attribute__((always_inline)) void block32_rows_tiled(
    int wsigned, int shift, int act_type, int rows, int nb, block32_unpacked u, const uint8_t *acts,
    int64_t act_bytes, int64_t n_tok, const float *ad, const int32_t *nsum, int64_t scale_stride, float *out,
    int64_t ldo) {
    const size_t y_bytes = block32_bytes(act_type), y_offset = act_type == T_Q8_1 ? 4 : 2;
    for (int64_t t0 = 0; t0 < n_tok; t0 += B32_TILE_TOKENS) {
        const int nt = (int)(n_tok - t0 < B32_TILE_TOKENS ? n_tok - t0 : B32_TILE_TOKENS);
        const uint8_t *y[4];
        for (int j = 0; j < nt; j++) y[j] = acts + (t0 + j) * act_bytes + y_offset;
        for (int i0 = 0; i0 < rows; i0 += B32_TILE_ROWS) {
            const int nr = rows - i0 < B32_TILE_ROWS ? rows - i0 : B32_TILE_ROWS;
            const int8_t *q[B32_TILE_ROWS];
            const float *dw[B32_TILE_ROWS];
            for (int i = 0; i < nr; i++) {
                q[i] = u.q + (size_t)(i0 + i) * nb * QK;
                dw[i] = u.d + (i0 + i) * nb;
            }
            float sums[4 * B32_TILE_ROWS];
            block32_tile_fixed(wsigned, nr, nt, q, dw, y, y_bytes, ad + t0, nsum ? nsum + t0 * 8 : NULL, shift,
                               scale_stride, nb, sums);
            for (int i = 0; i < nr; i++)
                for (int j = 0; j < nt; j++) out[(t0 + j) * ldo + i0 + i] = sums[i * 4 + j];
        }
    }
}

/* out[t * ldo + r] for rows [r0, r1) of ``type`` and tokens [0, n_tok) of ``act_type`` activations
 * (Q8_1 for Q4_1/Q5_1; Q8_0 or Q8_1 for the others, whose quants and scales are the same in
 * either), whose scales (and sums) block32_act_scales took out into ad (as), token t's block b
 * at [b * scale_stride + t], and with VNNI (B32_VNNI) their negated four-sums block32_act_sums took out
 * into nsum at [(b * scale_stride + t) * 8]; returns 0, or -1 if out of memory. */
static inline int block32_rows(int type, const uint8_t *w, int64_t row_bytes, int64_t r0, int64_t r1, int n_in,
                               int act_type, const uint8_t *acts, int64_t act_bytes, int64_t n_tok, const float *ad,
                               const float *as, const int32_t *nsum, int64_t scale_stride, float *out, int64_t ldo) {
    const int nb = n_in / QK, rows = (int)(r1 - r0), has_min = block32_has_min(type);
    /* quants (rows, n_in); scales and mins (rows, nb); the min chains (n_tok) */
    const size_t n_floats = (size_t)rows * nb * (has_min ? 2 : 1) + (has_min ? (size_t)n_tok : 0);
    uint8_t *scratch = malloc((size_t)rows * n_in + sizeof(float) * n_floats);
    if (!scratch) return -1;
    float *f = (float *)(scratch + (size_t)rows * n_in);  /* n_in is a multiple of 32: aligned for floats */
    block32_unpacked u = {(int8_t *)scratch, f, has_min ? f + rows * nb : NULL};
    block32_unpack_rows(type, w + r0 * row_bytes, row_bytes, rows, nb, u);
    if (has_min) {
        block32_rows_tiled(0, 0, T_Q8_1, rows, nb, u, acts, act_bytes, n_tok, ad, nsum, scale_stride, out + r0, ldo);
        /* plus each pair's m_w * s_a chain, in block order, added after the lanes' sum as ggml adds it */
        float *mins = f + (size_t)rows * nb * 2;
        for (int i = 0; i < rows; i++) {
            for (int64_t t = 0; t < n_tok; t++) mins[t] = 0.0f;
            for (int b = 0; b < nb; b++) {
                const float m = u.m[i * nb + b];
                for (int64_t t = 0; t < n_tok; t++) mins[t] = fmaf(m, as[b * scale_stride + t], mins[t]);
            }
            for (int64_t t = 0; t < n_tok; t++) out[t * ldo + r0 + i] += mins[t];
        }
    } else {
        block32_rows_tiled(1, block32_offset_shift(type), act_type, rows, nb, u, acts, act_bytes, n_tok, ad, nsum,
                           scale_stride, out + r0, ldo);
    }
    free(scratch);
    return 0;
}

#endif
