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
 * One-row dots use vdpbf16ps itself where compiled for AVX512_BF16; elsewhere, and in the
 * tiles, vdpbf16ps is two fmas per lane (its odd product, then its even one: exact bf16
 * products, each sum rounded): on the AVX-512 Xeon here vdpbf16ps issues at a quarter of the
 * fma rate, so its two fmas take half its time.
 *
 * tinyBLAS's tiles take the activations as floats, rounded to the weights' type and widened
 * once per product (tinyblas_widen; for AVX-512's BF16 each 32 values' odd ones, then their
 * even ones, so that every 16 values are one fma per lane); the weight rows are read as
 * stored and widened in the tile.  Compiled for AVX-512 a tile is 4 weight rows x 6 tokens
 * of zmm (or ymm, for the AVX2 build's 8 lanes) accumulators; elsewhere 4 x 3, the 16 lanes
 * in two 8-lane registers.
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

#if defined(LLAMANP_FLOAT_SIMD) && defined(__AVX512F__)
#define LLAMANP_FLOAT_ZMM 1

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
#endif

/* ---------------------------------------------------------------- tinyBLAS */

/* Which value of a row tinyBLAS's lanes meet at position p of a widened row (tinyblas_widen):
 * the same one, but for AVX-512's BF16, whose 32-value steps feed vdpbf16ps's lane e value
 * 2e + 1 and then value 2e; a widened row holds each 32 values' odd ones, then their even
 * ones, so that each 16 positions are one fma per lane, lane p % 16. */
static inline int64_t tinyblas_source(int64_t p, int type, int isa) {
    if (type != T_BF16 || isa != ISA_AVX512) return p;
    return (p & ~(int64_t)31) + 2 * (p & 15) + !(p & 16);
}

/* v rounded to ``type`` (f16, bf16, or f32: itself) and widened back, exactly */
static inline float rounded_to(int type, float v) {
    switch (type) {
        case T_F16: return fp16_to_fp32(fp32_to_fp16(v));
        case T_BF16: return bf16_to_fp32(fp32_to_bf16(v));
        default: return v;
    }
}

#if defined(__AVX512F__)
/* fp32_to_bf16 on 16 lanes, widened back: the bf16 in each lane's high half */
static inline __m512 bf16_round16(__m512 x) {
    const __m512i b = _mm512_castps_si512(x);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(b, _mm512_set1_epi32(0x7FFFFFFF)),
                                                  _mm512_set1_epi32(0x7F800000));
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));  /* ties to even */
    const __m512i rounded = _mm512_add_epi32(b, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), lsb));
    const __m512i quiet = _mm512_or_si512(b, _mm512_set1_epi32(0x400000));  /* a NaN: (bits >> 16) | 64 */
    return _mm512_castsi512_ps(_mm512_and_si512(_mm512_mask_mov_epi32(rounded, nan, quiet),
                                                _mm512_set1_epi32((int)0xFFFF0000u)));
}
#endif

/* Activation row x (k floats) as tinyBLAS's tiles read it: at position p value
 * tinyblas_source(p) of x rounded to ``type`` (ggml's vec_dot_type: f16 for F16 weights, bf16
 * for BF16) and widened back to a float, exactly. */
static inline void tinyblas_widen(int type, int isa, const float *x, int64_t k, float *dst) {
    int64_t p = 0;
#if defined(__AVX512F__)
    if (type == T_F16)
        for (; p + 16 <= k; p += 16)
            _mm512_storeu_ps(dst + p, _mm512_cvtph_ps(_mm512_cvtps_ph(_mm512_loadu_ps(x + p),
                                                                        _MM_FROUND_TO_NEAREST_INT)));
    if (type == T_BF16) {
        const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        const __m512i even = _mm512_sub_epi32(odd, _mm512_set1_epi32(1));
        for (; p + 32 <= k; p += 32) {
            const __m512 lo = bf16_round16(_mm512_loadu_ps(x + p)), hi = bf16_round16(_mm512_loadu_ps(x + p + 16));
            const int split = isa == ISA_AVX512;
            _mm512_storeu_ps(dst + p, split ? _mm512_permutex2var_ps(lo, odd, hi) : lo);
            _mm512_storeu_ps(dst + p + 16, split ? _mm512_permutex2var_ps(lo, even, hi) : hi);
        }
    }
#elif defined(LLAMANP_FLOAT_SIMD)
    if (type == T_F16)
        for (; p + 8 <= k; p += 8)
            _mm256_storeu_ps(dst + p, _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_loadu_ps(x + p),
                                                                        _MM_FROUND_TO_NEAREST_INT)));
#endif
    for (; p < k; p++) dst[p] = rounded_to(type, x[tinyblas_source(p, type, isa)]);
}

/* One output in tinyBLAS's order, lane by lane: lane p % 8 (AVX-512: p % 16) adds the product of
 * the weight tinyblas_source(p) names and the widened activation at p (tinyblas_widen) with one
 * fma, then hsum8 (hsum16). */
static inline float tinyblas_lanes(int k, int type, int isa, const void *w, const float *a) {
    const int lanes = isa == ISA_AVX512 ? 16 : 8;
    float acc[16] = {0};
    for (int p = 0; p < k; p++)
        acc[p % lanes] = fmaf(float_at(w, tinyblas_source(p, type, isa), type), a[p], acc[p % lanes]);
    return lanes == 16 ? hsum16(acc) : hsum8(acc);
}

#if defined(LLAMANP_FLOAT_SIMD)
/* Tokens a tile takes: with 32 vector registers (AVX-512) a 4 x 6 tile's 24 accumulators, a
 * weight vector per row and an activation vector fit; with 16 a 4 x 3 tile's.  (Any tile gives
 * the same bits: every output has its own accumulator.) */
#if defined(__AVX512F__) && defined(__AVX512VL__)
#define TILE_RN 6
#else
#define TILE_RN 3
#endif

/* The weights at positions [l + h, l + h + 8) of a row widened in AVX-512's order (tinyblas_source;
 * l a multiple of the step): for BF16 the odd (h < 16) or even values of the 16 from l + 2 * (h & 8). */
static inline __m256 tinyblas_load8(const void *p, int64_t l, int64_t h, int type) {
    if (type != T_BF16) return float_load8(p, l + h, type);
    const __m256i v = _mm256_loadu_si256((const __m256i *)((const uint16_t *)p + l + 2 * (h & 8)));
    const __m256i high = _mm256_set1_epi32((int)0xFFFF0000u);
    return _mm256_castsi256_ps(h & 16 ? _mm256_slli_epi32(v, 16) : _mm256_and_si256(v, high));
}

/* tinyBLAS's sum for RM (<= 4) weight rows of ``type`` x RN (<= TILE_RN) widened activation rows,
 * 8 lanes over steps of 8: out[j * ldo + i]. */
static inline __attribute__((always_inline)) void tinyblas_tile(
        int k, int type, const uint8_t *w, int64_t w_bytes, const float *a, int64_t lda,
        const int RM, const int RN, float *out, int64_t ldo) {
    __m256 acc[TILE_RN][4];
    for (int j = 0; j < RN; j++)
        for (int i = 0; i < RM; i++) acc[j][i] = _mm256_setzero_ps();
    for (int64_t l = 0; l < k; l += 8) {
        __m256 av[TILE_RN];
        for (int j = 0; j < RN; j++) av[j] = _mm256_loadu_ps(a + j * lda + l);
        for (int i = 0; i < RM; i++) {
            const __m256 wv = float_load8(w + i * w_bytes, l, type);
            for (int j = 0; j < RN; j++) acc[j][i] = _mm256_fmadd_ps(wv, av[j], acc[j][i]);
        }
    }
    for (int j = 0; j < RN; j++)
        for (int i = 0; i < RM; i++) out[j * ldo + i] = hsum8_ps(acc[j][i]);
}

#if defined(LLAMANP_FLOAT_ZMM)
/* tinyblas_load8 on 16 positions: [l + h, l + h + 16), h 0 or 16 */
static inline __m512 tinyblas_load16(const void *p, int64_t l, int64_t h, int type) {
    if (type != T_BF16) return float_load16(p, l + h, type);
    const __m512i v = _mm512_loadu_si512((const void *)((const uint16_t *)p + l));
    const __m512i high = _mm512_set1_epi32((int)0xFFFF0000u);
    return _mm512_castsi512_ps(h ? _mm512_slli_epi32(v, 16) : _mm512_and_si512(v, high));
}
#endif

/* tinyblas_tile in the AVX-512 build's order: 16 lanes over steps of 16 (BF16: of 32, their
 * odd values, then their even ones), then hsum16. */
static inline __attribute__((always_inline)) void tinyblas_tile16(
        int k, int type, const uint8_t *w, int64_t w_bytes, const float *a, int64_t lda,
        const int RM, const int RN, float *out, int64_t ldo) {
    const int step = tinyblas_step(type, ISA_AVX512);
#if defined(LLAMANP_FLOAT_ZMM)
    __m512 acc[TILE_RN][4];
    for (int j = 0; j < RN; j++)
        for (int i = 0; i < RM; i++) acc[j][i] = _mm512_setzero_ps();
    for (int64_t l = 0; l < k; l += step)
        for (int64_t h = 0; h < step; h += 16) {
            __m512 wv[4];
            for (int i = 0; i < RM; i++) wv[i] = tinyblas_load16(w + i * w_bytes, l, h, type);
            for (int j = 0; j < RN; j++) {
                const __m512 av = _mm512_loadu_ps(a + j * lda + l + h);
                for (int i = 0; i < RM; i++) acc[j][i] = _mm512_fmadd_ps(wv[i], av, acc[j][i]);
            }
        }
    for (int j = 0; j < RN; j++)
        for (int i = 0; i < RM; i++) out[j * ldo + i] = hsum16_zmm(acc[j][i]);
#else
    __m256 acc[TILE_RN][4][2];  /* lanes 0..7 and 8..15 */
    for (int j = 0; j < RN; j++)
        for (int i = 0; i < RM; i++) acc[j][i][0] = acc[j][i][1] = _mm256_setzero_ps();
    for (int64_t l = 0; l < k; l += step)
        for (int64_t h = 0; h < step; h += 8) {
            const int half = (h >> 3) & 1;
            for (int i = 0; i < RM; i++) {
                const __m256 wv = tinyblas_load8(w + i * w_bytes, l, h, type);
                for (int j = 0; j < RN; j++)
                    acc[j][i][half] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(a + j * lda + l + h), acc[j][i][half]);
            }
        }
    for (int j = 0; j < RN; j++)
        for (int i = 0; i < RM; i++) out[j * ldo + i] = hsum16_ps(acc[j][i][0], acc[j][i][1]);
#endif
}

/* A 4 x rn tile (rn <= TILE_RN) in the order of ``isa``; rn a constant in each call, so the
 * tiles' accumulators stay in registers. */
static inline __attribute__((always_inline)) void tinyblas_tile_of(
        int isa, int k, int type, const uint8_t *w, int64_t w_bytes, const float *a, int64_t lda, int64_t rn,
        float *out, int64_t ldo) {
#define TINYBLAS_TILE(RN) (isa == ISA_AVX512 ? tinyblas_tile16(k, type, w, w_bytes, a, lda, 4, RN, out, ldo) \
                                             : tinyblas_tile(k, type, w, w_bytes, a, lda, 4, RN, out, ldo))
    switch (rn) {
        case 1: TINYBLAS_TILE(1); break;
        case 2: TINYBLAS_TILE(2); break;
#if TILE_RN == 6
        case 3: TINYBLAS_TILE(3); break;
        case 4: TINYBLAS_TILE(4); break;
        case 5: TINYBLAS_TILE(5); break;
#endif
        default: TINYBLAS_TILE(TILE_RN); break;
    }
#undef TINYBLAS_TILE
}
#else
#define TILE_RN 3
#endif

/* One output of tinyBLAS (a 1 x 1 tile): weight row w of ``type``, activation row a widened. */
static inline float tinyblas_dot(int k, int type, int isa, const void *w, const float *a) {
#if defined(LLAMANP_FLOAT_SIMD)
    float out;
    if (isa == ISA_AVX512)
        tinyblas_tile16(k, type, (const uint8_t *)w, 0, a, 0, 1, 1, &out, 1);
    else
        tinyblas_tile(k, type, (const uint8_t *)w, 0, a, 0, 1, 1, &out, 1);
    return out;
#else
    return tinyblas_lanes(k, type, isa, w, a);
#endif
}

/* Bytes of weight rows (as stored) a thread takes at a time, and of widened activations a pass
 * over them takes at a time: both stay in the core's L2 (2 MiB here) while the tiles run, so the
 * weights come from memory once per product and the activations from L3 once per chunk. */
enum { TINYBLAS_WEIGHT_BYTES = 1 << 20, TINYBLAS_ACT_BYTES = 512 << 10 };

/* The weight rows of a chunk (tinyblas_rows): TINYBLAS_WEIGHT_BYTES' worth, a multiple of 16, no
 * more than each of nt threads' share of the n_out rows. */
static inline int64_t tinyblas_chunk_rows(int64_t n_out, int64_t row_bytes, int nt) {
    const int64_t share = (n_out + nt - 1) / nt, rows = TINYBLAS_WEIGHT_BYTES / row_bytes;
    const int64_t chunk = (rows < share ? rows : share + 15) / 16 * 16;
    return chunk > 16 ? chunk : 16;
}

/* Weight rows [r0, r1) (a multiple of 4 apart) against widened activation rows [0, n_tok)
 * (tinyblas_widen, k floats each) in tinyBLAS's order for ``isa``, in 4 x TILE_RN tiles:
 * out[t * ldo + r].  The tokens go a block at a time (TINYBLAS_ACT_BYTES), so that the block
 * and the rows stay in L2 while the tiles pass over them. */
static inline __attribute__((always_inline)) void tinyblas_rows_of(
        int type, int k, const uint8_t *w, int64_t row_bytes, int64_t r0, int64_t r1, const float *acts,
        int64_t n_tok, float *out, int64_t ldo, int isa) {
    const int64_t tiles = TINYBLAS_ACT_BYTES / ((int64_t)k * (int64_t)sizeof(float)) / TILE_RN;
    const int64_t block = TILE_RN * (tiles > 1 ? tiles : 1);
    for (int64_t t0 = 0; t0 < n_tok; t0 += block) {
        const int64_t t1 = t0 + block < n_tok ? t0 + block : n_tok;
        for (int64_t r = r0; r < r1; r += 4)
            for (int64_t t = t0; t < t1; t += TILE_RN) {
                const int64_t rn = t1 - t < TILE_RN ? t1 - t : TILE_RN;
#if defined(LLAMANP_FLOAT_SIMD)
                tinyblas_tile_of(isa, k, type, w + r * row_bytes, row_bytes, acts + t * k, k, rn, out + t * ldo + r,
                                 ldo);
#else
                for (int64_t j = 0; j < rn; j++)
                    for (int64_t i = 0; i < 4; i++)
                        out[(t + j) * ldo + r + i] = tinyblas_lanes(k, type, isa, w + (r + i) * row_bytes,
                                                                    acts + (t + j) * k);
#endif
            }
    }
}

/* tinyblas_rows_of with the type and the order constants, so the tiles' loads need no branch and
 * their accumulators stay in registers (with the type read in the loop they went through the stack) */
static inline void tinyblas_rows(int type, int k, const uint8_t *w, int64_t row_bytes, int64_t r0, int64_t r1,
                                 const float *acts, int64_t n_tok, float *out, int64_t ldo, int isa) {
#define TINYBLAS_ROWS(TYPE, ISA) tinyblas_rows_of(TYPE, k, w, row_bytes, r0, r1, acts, n_tok, out, ldo, ISA)
    if (isa == ISA_AVX512) {
        switch (type) {
            case T_F16: TINYBLAS_ROWS(T_F16, ISA_AVX512); break;
            case T_BF16: TINYBLAS_ROWS(T_BF16, ISA_AVX512); break;
            default: TINYBLAS_ROWS(T_F32, ISA_AVX512); break;
        }
    } else {
        switch (type) {
            case T_F16: TINYBLAS_ROWS(T_F16, ISA_AVX2); break;
            case T_BF16: TINYBLAS_ROWS(T_BF16, ISA_AVX2); break;
            default: TINYBLAS_ROWS(T_F32, ISA_AVX2); break;
        }
    }
#undef TINYBLAS_ROWS
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

/* One output of engine.float_dots.float_dots for one activation row: the dot of two rows of n
 * values of ``type`` in ggml_vec_dot_f32's, _f16's or _bf16's order (by ``type``), as llama.cpp
 * built for ``isa`` runs them (several rows: tinyblas_rows, tinyblas_dot). */
static inline float float_dot(int n, const void *w, const void *a, int type, int isa) {
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

#endif
