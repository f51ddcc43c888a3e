/* Q4_K weights regrouped eight rows at a time, and their products with Q8_K activations.
 *
 * Per super-block column a group holds the eight rows' d and dmin, their eight 6-bit
 * scales unpacked ([sub-block][row]), their mins unpacked with the two of a sub-block
 * pair side by side (one madd takes both), and the nibbles interleaved as in
 * q4_0x8.h: for sub-block pair c (weights 64c..64c+63) vector i holds, at byte 4r + e,
 * row r's byte 32c + 4i + e, whose low nibble is weight 64c + 4i + e (sub-block 2c) and
 * high nibble weight 64c + 32 + 4i + e (sub-block 2c + 1).  maddubs against four
 * activations broadcast to every lane then leaves one row per 32-bit lane.
 *
 * Per row the float steps are those of ggml's q4_K_8x8 kernels (the NumPy reference's
 * _q4_K_repacked): the scaled sums go into one fma chain by d_a * d and the mins sums
 * into another by d_a * dmin, and the result is their difference.  Tiles of four
 * tokens run the gemm kernel, a part of the chains per 64 weights (sub-blocks 2p and
 * 2p + 1); single tokens the gemv kernel, one part per super-block.
 */
#ifndef LLAMANP_Q4_KX8_H
#define LLAMANP_Q4_KX8_H

#include "vec_dot.h"
#include "vnni.h"

typedef struct {
    uint16_t d[8], dmin[8];
    uint8_t sc[8][8];          /* [sub-block][row] */
    uint8_t mn[4][16];         /* [sub-block pair c][2 * row + sub-block - 2c] */
    uint8_t qs[4][8][32];      /* [sub-block pair][4-weight chunk][4 * row + e] */
} block_q4_Kx8;

static inline void repack_q4_Kx8_group(const block_q4_K *src, int64_t nb, int64_t g, block_q4_Kx8 *dst) {
    for (int64_t b = 0; b < nb; b++) {
        block_q4_Kx8 *out = dst + g * nb + b;
        for (int r = 0; r < 8; r++) {
            const block_q4_K *in = src + (8 * g + r) * nb + b;
            uint8_t sc[8], mn[8];
            k4_scales_mins(in->scales, sc, mn);
            out->d[r] = in->d;
            out->dmin[r] = in->dmin;
            for (int s = 0; s < 8; s++) {
                out->sc[s][r] = sc[s];
                out->mn[s / 2][2 * r + s % 2] = mn[s];
            }
            for (int c = 0; c < 4; c++)
                for (int i = 0; i < 8; i++) memcpy(&out->qs[c][i][4 * r], in->qs + 32 * c + 4 * i, 4);
        }
    }
}

#if defined(__AVX2__)
/* a row's 8-bit value v in both 16-bit halves of its 32-bit lane, for madd */
static inline __m256i k8_pairs(const uint8_t *v) {
    const __m256i x = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)v));
    return _mm256_or_si256(x, _mm256_slli_epi32(x, 16));
}

/* isum[t] += madd(16-bit sums of token t's products with one nibble half of a sub-block
 * pair, scale): the low nibbles (shift 0) or the high (shift 4) of the 8 vectors at qs,
 * against the 32 activations at a[t].  Each nibble vector is unpacked once and serves all
 * N tokens.  Taking the halves one after the other (not both per vector) keeps the inner
 * loop's N sums (8 x 2 x 15 x 128 fits 16 bits), nibbles, broadcast and mask, with the N
 * isum, within the 16 ymm registers (in_register: without it four-token products ran 20-25%
 * slower); only the float chains spill, between parts. */
static inline void k4_half(const uint8_t (*qs)[32], int shift, const int8_t *const *a, const int N, __m256i scale,
                           __m256i *isum) {
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    __m256i s[4];
    for (int t = 0; t < N; t++) s[t] = _mm256_setzero_si256();
    for (int i = 0; i < 8; i++) {
        const __m256i q = _mm256_and_si256(_mm256_srli_epi16(_mm256_loadu_si256((const __m256i *)qs[i]), shift), low4);
        for (int t = 0; t < N; t++)
            s[t] = in_register(_mm256_add_epi16(s[t], _mm256_maddubs_epi16(q, broadcast_i8x4(a[t] + 4 * i))));
    }
    for (int t = 0; t < N; t++) isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(s[t], scale));
}

#if HAVE_VNNI
/* One token's scaled sums of block column blk, one row per lane: the sum over its eight sub-blocks j
 * of sc[j] times the sub-block's nibbles dotted with the 32 activations at a + 32j, as the gemv takes
 * it in one part.  dpbusd adds a lane's four products in 32 bits, so the high nibbles are used where
 * they lie, 16 times their value (v & 0xF0, no shift: 240 x 128 x 32 x 63 x 4 fits), and their scaled
 * sum is divided by 16 once at the end, exactly; a scale multiplies each sub-block's sum once.  Half
 * the instructions of k4_half's maddubs, 16-bit adds and madd by the scale pairs. */
static inline __m256i k4_sums_vnni(const block_q4_Kx8 *blk, const int8_t *a) {
    const __m256i low4 = _mm256_set1_epi8(0x0F), high4 = _mm256_set1_epi8((char)0xF0);
    __m256i lo_acc = _mm256_setzero_si256(), hi_acc = _mm256_setzero_si256();  /* sub-blocks 2c, 2c + 1 */
    for (int c = 0; c < 4; c++, a += 64) {
        prefetch_quarter_l2(blk, sizeof(block_q4_Kx8), c);
        __m256i lo = _mm256_setzero_si256(), hi = _mm256_setzero_si256();
        for (int i = 0; i < 8; i++) {
            const __m256i v = _mm256_loadu_si256((const __m256i *)blk->qs[c][i]);
            lo = dpbusd(lo, _mm256_and_si256(v, low4), broadcast_i8x4(a + 4 * i));
            hi = dpbusd(hi, _mm256_and_si256(v, high4), broadcast_i8x4(a + 32 + 4 * i));
        }
        const __m256i sc_lo = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)blk->sc[2 * c]));
        const __m256i sc_hi = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)blk->sc[2 * c + 1]));
        lo_acc = _mm256_add_epi32(lo_acc, _mm256_mullo_epi32(lo, sc_lo));
        hi_acc = _mm256_add_epi32(hi_acc, _mm256_mullo_epi32(hi, sc_hi));
    }
    return _mm256_add_epi32(lo_acc, _mm256_srai_epi32(hi_acc, 4));
}
#endif

/* The mins chains of block column b: acc_min[t] per row, one fma per part by d_a * dmin
 * of the mins times the sums of token t's activations under their sub-blocks. */
static inline void k4_mins(const block_q4_Kx8 *blk, int64_t b, const block_q8_K *const *act, const int N, int part,
                           __m256 *acc_min) {
    const __m256 dmin = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)blk->dmin));
    for (int t = 0; t < N; t++) {  /* two 16-bit activation sums per lane, those of a sub-block pair */
        const block_q8_K *y = act[t] + b;
        int32_t pairs[4];
        _mm_storeu_si128((__m128i *)pairs, _mm_hadd_epi16(_mm_loadu_si128((const __m128i *)y->bsums),
                                                          _mm_loadu_si128((const __m128i *)(y->bsums + 8))));
        const __m256 scale_min = _mm256_mul_ps(dmin, _mm256_set1_ps(y->d));
        __m256i msum = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            const __m256i mins = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)blk->mn[c]));
            msum = _mm256_add_epi32(msum, _mm256_madd_epi16(mins, _mm256_set1_epi32(pairs[c])));
            if ((2 * c + 2) % part) continue;
            acc_min[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(msum), scale_min, acc_min[t]);
            msum = _mm256_setzero_si256();
        }
    }
}

#endif

/* Eight outputs of group ``grp`` against N (1 or 4) Q8_K rows, out[t * ldo + r]: the gemm
 * kernel's order for 4 tokens, the gemv's for 1 (kquant_x8.h's kx8_dot picks). */
static inline __attribute__((always_inline)) void q4_Kx8_dot_n(const block_q4_Kx8 *grp, int64_t nb,
                                                               const block_q8_K *const *act, const int N, float *out,
                                                               int64_t ldo) {
#if defined(__AVX2__)
    const int part = N == 4 ? 2 : 8;  /* sub-blocks per part: gemm or gemv */
    __m256 acc[4], acc_min[4];
    for (int t = 0; t < N; t++) acc[t] = acc_min[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const block_q4_Kx8 *blk = grp + b;
        const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)blk->d));
        __m256i isum[4];
        for (int t = 0; t < N; t++) isum[t] = _mm256_setzero_si256();
#if HAVE_VNNI
        if (N == 1) {  /* the gemv: one part, the whole super-block */
            acc[0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(k4_sums_vnni(blk, act[0][b].qs)),
                                     _mm256_mul_ps(d, _mm256_set1_ps(act[0][b].d)), acc[0]);
            k4_mins(blk, b, act, N, part, acc_min);
            continue;
        }
#endif
        for (int c = 0; c < 4; c++) {  /* sub-block pair c: sub-block 2c in the low nibbles, 2c + 1 in the high */
            prefetch_quarter_l2(blk, sizeof(block_q4_Kx8), c);
            const int8_t *a[4];
            for (int t = 0; t < N; t++) a[t] = act[t][b].qs + 64 * c;
            k4_half(blk->qs[c], 0, a, N, k8_pairs(blk->sc[2 * c]), isum);
            for (int t = 0; t < N; t++) a[t] += 32;
            k4_half(blk->qs[c], 4, a, N, k8_pairs(blk->sc[2 * c + 1]), isum);
            if ((2 * c + 2) % part) continue;
            for (int t = 0; t < N; t++) {  /* the end of a part */
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_mul_ps(d, _mm256_set1_ps(act[t][b].d)),
                                         acc[t]);
                isum[t] = _mm256_setzero_si256();
            }
        }
        k4_mins(blk, b, act, N, part, acc_min);
    }
    for (int t = 0; t < N; t++) _mm256_storeu_ps(out + t * ldo, _mm256_sub_ps(acc[t], acc_min[t]));
#else
    const int part = N == 4 ? 2 : 8;
    for (int t = 0; t < N; t++)
        for (int r = 0; r < 8; r++) {
            float acc = 0.0f, acc_min = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                const block_q8_K *y = act[t] + b;
                const float dy = y->d;
                int isum = 0, msum = 0;
                for (int half = 0; half < 8; half++) {
                    const int c = half / 2, shift = 4 * (half % 2);
                    int s = 0;
                    for (int i = 0; i < 8; i++)
                        for (int e = 0; e < 4; e++)
                            s += ((grp[b].qs[c][i][4 * r + e] >> shift) & 0x0F) * y->qs[32 * half + 4 * i + e];
                    isum += grp[b].sc[half][r] * s;
                    msum += grp[b].mn[c][2 * r + half % 2] * (y->bsums[2 * half] + y->bsums[2 * half + 1]);
                    if ((half + 1) % part) continue;
                    acc = fmaf((float)isum, fp16_to_fp32(grp[b].d[r]) * dy, acc);
                    acc_min = fmaf((float)msum, fp16_to_fp32(grp[b].dmin[r]) * dy, acc_min);
                    isum = msum = 0;
                }
            }
            out[t * ldo + r] = acc - acc_min;
        }
#endif
}

#endif
