/* Q4_0 weights regrouped eight rows at a time, and their products with Q8_0 activations.
 *
 * A group holds, for each 32-weight block column b, the eight rows' f16 scales and
 * then 128 bytes of nibbles arranged so that one 32-byte load covers 4 consecutive
 * weights of all eight rows: byte 32i + 4r + e holds weight 8i + e of row r in its low
 * nibble and weight 8i + 4 + e in its high nibble.  maddubs of such a vector with four
 * activations broadcast to every lane leaves one row per 32-bit lane, so a block
 * column of 8 rows costs one scale multiply and no horizontal sums.
 *
 * Nibbles stay unsigned (0..15): sum((n - 8) * a) is computed as sum(n * a) - 8 * sum(a),
 * exactly, with sum(a) prepared once per activation block.  Each row then accumulates
 * one fused multiply-add per block column, in block order, of its integer block sum by
 * d_w * d_a: the float steps of ggml's repacked 8x8 gemv and gemm, so the result is
 * bit-identical to llama.cpp's for any number of tokens.
 */
#ifndef LLAMANP_Q4_0X8_H
#define LLAMANP_Q4_0X8_H

#include "qblocks.h"
#include "vnni.h"

typedef struct { uint16_t d[8]; uint8_t qs[128]; } block_q4_0x8;

/* Q8_0 activations split into arrays: quants, f16-rounded scales, 8 * block sums. */
typedef struct { const int8_t *qs; const float *d; const int32_t *bias; } act_q8_0;

/* Repack rows [8g, 8g + 8) of a Q4_0 matrix with ``nb`` blocks per row.
 *
 * Read as four little-endian words Q0..Q3, a Q4_0 block's bytes hold weights 0..15 in
 * their low nibbles and 16..31 in their high nibbles; each output word takes the low or
 * high nibbles of two of those words. */
static inline void repack_q4_0x8_group(const block_q4_0 *src, int64_t nb, int64_t g, block_q4_0x8 *dst) {
    const uint32_t lo = 0x0F0F0F0Fu, hi = 0xF0F0F0F0u;
    for (int64_t b = 0; b < nb; b++) {
        block_q4_0x8 *out = dst + g * nb + b;
        for (int r = 0; r < 8; r++) {
            const block_q4_0 *in = src + (8 * g + r) * nb + b;
            uint32_t q[4], w[4];
            memcpy(q, in->qs, 16);
            w[0] = (q[0] & lo) | ((q[1] & lo) << 4);         /* weights 0..3 and 4..7 */
            w[1] = (q[2] & lo) | ((q[3] & lo) << 4);         /* 8..11 and 12..15 */
            w[2] = ((q[0] >> 4) & lo) | (q[1] & hi);         /* 16..19 and 20..23 */
            w[3] = ((q[2] >> 4) & lo) | (q[3] & hi);         /* 24..27 and 28..31 */
            out->d[r] = in->d;
            for (int i = 0; i < 4; i++) memcpy(out->qs + 32 * i + 4 * r, &w[i], 4);
        }
    }
}

/* Quantise one row to the split Q8_0 form (same numbers as quantize_row_q8_0). */
static inline void quantize_act_q8_0(const float *x, int64_t k, int8_t *qs, float *d, int32_t *bias) {
    for (int64_t b = 0; b < k / QK; b++) {
        const float scale = q8_block(x + b * QK, qs + b * QK);
        int sum = 0;
        for (int j = 0; j < QK; j++) sum += qs[b * QK + j];
        d[b] = fp16_to_fp32(fp32_to_fp16(scale));
        bias[b] = 8 * sum;
    }
}

#if defined(__AVX2__)
/* s[t] = token t's 16-bit sums of n * a over block column blk's 32 weights, two per row
 * lane (8 x 2 x 15 x 128 fits 16 bits), for the N tokens at act.  Each 32-byte load is
 * unpacked into its two nibble halves once and serves all N tokens.  in_register keeps
 * every s[t] one add chain, so the N sums, the halves, the mask and a broadcast fit beside
 * the N float accumulators in the 16 ymm registers (without it gcc loaded all broadcasts
 * first and spilled the accumulators and the scales: four-token products ran 25% slower). */
static inline void q4x8_sums(const block_q4_0x8 *blk, const act_q8_0 *act, int64_t b, const int N, __m256i *s) {
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    for (int t = 0; t < N; t++) s[t] = _mm256_setzero_si256();
    for (int i = 0; i < 4; i++) {
        const __m256i v = _mm256_loadu_si256((const __m256i *)(blk->qs + 32 * i));
        const __m256i lo = _mm256_and_si256(v, low4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
        for (int t = 0; t < N; t++) {
            const int8_t *y = act[t].qs + b * QK + 8 * i;
            s[t] = in_register(_mm256_add_epi16(s[t], _mm256_maddubs_epi16(lo, broadcast_i8x4(y))));
            s[t] = in_register(_mm256_add_epi16(s[t], _mm256_maddubs_epi16(hi, broadcast_i8x4(y + 4))));
        }
    }
}

#if HAVE_VNNI
/* One token's 32-bit sums of n * a over block column blk, one row per lane, where VNNI
 * multiplies and adds a lane's four products in one instruction (the same integers as
 * maddubs into 16 bits then madd): the low and the high nibbles in two chains, so that
 * the four-instruction chains of consecutive block columns overlap.  The high nibbles are
 * used where they lie, 16 times their value (v & 0xF0, no shift; 240 x 128 x 16 fits), and
 * their sum divided by 16 exactly.  Without VNNI, q4x8_sums is faster. */
static inline __m256i q4x8_sum_vnni(const block_q4_0x8 *blk, const int8_t *y) {
    const __m256i low4 = _mm256_set1_epi8(0x0F), high4 = _mm256_set1_epi8((char)0xF0);
    __m256i lo_sum = _mm256_setzero_si256(), hi_sum = _mm256_setzero_si256();
    for (int i = 0; i < 4; i++) {
        const __m256i v = _mm256_loadu_si256((const __m256i *)(blk->qs + 32 * i));
        lo_sum = dpbusd(lo_sum, _mm256_and_si256(v, low4), broadcast_i8x4(y + 8 * i));
        hi_sum = dpbusd(hi_sum, _mm256_and_si256(v, high4), broadcast_i8x4(y + 8 * i + 4));
    }
    return _mm256_add_epi32(lo_sum, _mm256_srai_epi32(hi_sum, 4));
}
#endif

/* Groups of ``nb`` block columns against N (1 or 4) tokens; N is a constant at each call.
 * Per row and token one fma per block column: acc += (isum - bias) * (d_w * d_a). */
static inline void q4_0x8_dot_n(const block_q4_0x8 *grp, int64_t nb, const act_q8_0 *act, const int N,
                                float *out, int64_t ldo) {
    __m256 acc[4];
    for (int t = 0; t < N; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        prefetch_ahead_l2(grp + b, sizeof(block_q4_0x8));
        __m256i s[4];
#if HAVE_VNNI
        if (N == 1)
            s[0] = q4x8_sum_vnni(grp + b, act[0].qs + b * QK);
        else
#endif
            q4x8_sums(grp + b, act, b, N, s);
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)grp[b].d));
        for (int t = 0; t < N; t++) {
            const __m256i sum = HAVE_VNNI && N == 1 ? s[t] : _mm256_madd_epi16(s[t], _mm256_set1_epi16(1));
            const __m256i isum = _mm256_sub_epi32(sum, _mm256_set1_epi32(act[t].bias[b]));
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(dw, _mm256_set1_ps(act[t].d[b])), acc[t]);
        }
    }
    for (int t = 0; t < N; t++) _mm256_storeu_ps(out + t * ldo, acc[t]);
}
#endif

/* Eight outputs of group ``grp`` (nb blocks) against ``n_act`` activation rows (at most 4):
 * out[t * ldo + r] for r < 8. */
static inline void q4_0x8_dot(const block_q4_0x8 *grp, int64_t nb, const act_q8_0 *act, int n_act,
                              float *out, int64_t ldo) {
#if defined(__AVX2__)
    if (n_act == 4) {
        q4_0x8_dot_n(grp, nb, act, 4, out, ldo);
        return;
    }
    for (int t = 0; t < n_act; t++) q4_0x8_dot_n(grp, nb, act + t, 1, out + t * ldo, ldo);
#else
    for (int t = 0; t < n_act; t++)
        for (int r = 0; r < 8; r++) {
            float sum = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                int s = 0;
                for (int i = 0; i < 4; i++)
                    for (int e = 0; e < 4; e++) {
                        const uint8_t q = grp[b].qs[32 * i + 4 * r + e];
                        s += (q & 0x0F) * act[t].qs[b * QK + 8 * i + e] + (q >> 4) * act[t].qs[b * QK + 8 * i + 4 + e];
                    }
                sum = fmaf((float)(s - act[t].bias[b]), fp16_to_fp32(grp[b].d[r]) * act[t].d[b], sum);
            }
            out[t * ldo + r] = sum;
        }
#endif
}

#endif
