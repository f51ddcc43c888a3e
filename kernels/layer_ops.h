/* The non-matrix steps of a LLaMA layer, bit for bit as the NumPy reference computes them
 * (engine/exact.py, NumpyBackend), which in turn follows ggml's CPU kernels built for AVX2
 * or, where ``isa`` is ISA_AVX512, for AVX-512 (16-lane sums and its own vector exp):
 *  - RMSNorm sums the fp32 squares left to right in double, as ggml does;
 *  - RoPE takes the C library's cosf/sinf of angles built by repeated fp32 multiplication,
 *    and rotates each pair in double with one of its two products rounded to fp32 first;
 *  - SwiGLU and the softmax use ggml_v_expf (a range reduction and a degree-5 polynomial);
 *  - GEGLU looks GELU up in ggml's f16 table (GGML_GELU_FP16), as ggml_vec_geglu_f32 does;
 *  - attention rounds q and the probabilities to f16 and sums both of its products in the
 *    order of ggml's kernels: ggml_vec_dot_f16 (32 lanes) for one query row, llamafile's
 *    tinyBLAS (8 lanes) for several; a single dot is float_rows.h's, as the matrix products'.
 * Every AVX2 path has a scalar twin that gives the same bits.
 */
#ifndef LLAMANP_LAYER_OPS_H
#define LLAMANP_LAYER_OPS_H

#include "float_rows.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define LAYER_SIMD 1
#else
#define LAYER_SIMD 0
#endif

/* The reference's fp32 fused multiply-add (engine.ggml_math.fma_f32): the product (exact in double)
 * plus c, rounded to double and then to fp32.  The scalar paths use it; the AVX2 paths use
 * the fma instruction, which rounds once, and both give the same bits here: the products
 * are of f16 values, whose sums with an fp32 value are exact in double (or far from an
 * fp32 rounding tie), or the arguments are ggml_v_expf's, where the two agree on all 2^32
 * inputs (checked exhaustively against each other). */
static inline float fma_f32(float a, float b, float c) { return (float)((double)a * b + c); }

/* ---------------------------------------------------------------- RMSNorm */

#define RMS_NORM_ROWS 4  /* rows normalised together */

/* y = x * (1 / sqrt(mean(x^2) + eps)) * w for each of `rows` (at most RMS_NORM_ROWS) rows of
 * n, one after another in x and in y; each mean rounded to fp32.  Each row's squares, rounded
 * to fp32, are added left to right in double, as ggml does; a full set of rows takes its sums
 * side by side, so each add waits on the other rows' adds rather than on its own previous one. */
static inline void rms_norm_rows(const float *x, const float *w, int rows, int64_t n, float eps, float *y) {
    double sum[RMS_NORM_ROWS] = {0.0};
    if (rows == RMS_NORM_ROWS)
        for (int64_t i = 0; i < n; i++)
            for (int r = 0; r < RMS_NORM_ROWS; r++) sum[r] += (double)(x[r * n + i] * x[r * n + i]);
    else
        for (int r = 0; r < rows; r++) {
            double row_sum = 0.0;  /* in a register, not in sum[r] */
            for (int64_t i = 0; i < n; i++) row_sum += (double)(x[r * n + i] * x[r * n + i]);
            sum[r] = row_sum;
        }
    for (int r = 0; r < rows; r++) {
        const float mean = (float)(sum[r] / (double)n);
        const float scale = 1.0f / sqrtf(mean + eps);
        for (int64_t i = 0; i < n; i++) y[r * n + i] = x[r * n + i] * scale * w[i];
    }
}

/* ---------------------------------------------------------------- RoPE */

/* The C library's cosf and sinf, each called on its own: GCC would merge a cosf and a sinf
 * of one argument into a sincosf call, which the reference (calling cosf and sinf) does not make. */
static __attribute__((noinline)) float libm_cosf(float x) { return cosf(x); }
static __attribute__((noinline)) float libm_sinf(float x) { return sinf(x); }

/* cos and sin of the n_dims/2 angles of one position, as ggml's rope cache builds them:
 * theta starts at the position and is multiplied by theta_scale once per pair in fp32;
 * the angle is freq_scale * (theta / factors[i]) (Llama 3's per-pair frequency factors;
 * 1 when factors is NULL), and cosf/sinf are the C library's (not correctly rounded). */
static inline void rope_cos_sin_at(float pos, int n_dims, float theta_scale, float freq_scale, const float *factors,
                               float *cs, float *sn) {
    float theta = pos;
    for (int i = 0; i < n_dims / 2; i++) {
        const float angle = freq_scale * (theta / (factors ? factors[i] : 1.0f));
        cs[i] = libm_cosf(angle);
        sn[i] = libm_sinf(angle);
        theta *= theta_scale;
    }
}

/* Rotate the adjacent pairs (x0, x1) of the first n_dims values of each of the heads
 * (rows of hd values) of one position, in place:
 * x0' = x0 cos - fp32(x1 sin), x1' = x0 sin + fp32(x1 cos), each sum in double rounded to
 * fp32 (the reference's model of the rotation ggml's compiler fuses). */
static inline void rope_row(float *x, int heads, int hd, int n_dims, const float *cs, const float *sn) {
    int i = 0;
#if LAYER_SIMD
    for (; i + 4 <= n_dims / 2; i += 4) {  /* four pairs of every head: even lanes x0', odd lanes x1' */
        const __m128 c = _mm_loadu_ps(cs + i), s = _mm_loadu_ps(sn + i);
        const __m256 sin_cos = _mm256_set_m128(_mm_unpackhi_ps(s, c), _mm_unpacklo_ps(s, c));
        const __m256d cos_sin[2] = {_mm256_cvtps_pd(_mm_unpacklo_ps(c, s)), _mm256_cvtps_pd(_mm_unpackhi_ps(c, s))};
        for (int h = 0; h < heads; h++) {
            float *xh = x + (int64_t)h * hd + 2 * i;
            const __m256 xv = _mm256_loadu_ps(xh);
            const __m256 x0 = _mm256_moveldup_ps(xv);
            const __m256 x1_rounded = _mm256_mul_ps(_mm256_movehdup_ps(xv), sin_cos);  /* fp32(x1 sin), fp32(x1 cos) */
            /* x0 * (cos, sin) is exact in double: one rounding to double, one to fp32 */
            const __m128 lo = _mm256_cvtpd_ps(_mm256_fmaddsub_pd(
                _mm256_cvtps_pd(_mm256_castps256_ps128(x0)), cos_sin[0],
                _mm256_cvtps_pd(_mm256_castps256_ps128(x1_rounded))));
            const __m128 hi = _mm256_cvtpd_ps(_mm256_fmaddsub_pd(
                _mm256_cvtps_pd(_mm256_extractf128_ps(x0, 1)), cos_sin[1],
                _mm256_cvtps_pd(_mm256_extractf128_ps(x1_rounded, 1))));
            _mm256_storeu_ps(xh, _mm256_set_m128(hi, lo));
        }
    }
#endif
    for (int h = 0; h < heads; h++)
        for (int r = i; r < n_dims / 2; r++) {
            float *xh = x + (int64_t)h * hd;
            const float x0 = xh[2 * r], x1 = xh[2 * r + 1];
            const float x1_sin = x1 * sn[r], x1_cos = x1 * cs[r];
            xh[2 * r] = (float)((double)x0 * cs[r] - (double)x1_sin);
            xh[2 * r + 1] = (float)((double)x0 * sn[r] + (double)x1_cos);
        }
}

/* The same rotation in ggml's NEOX mode: the pairs are (x[r], x[r + n_dims/2]). */
static inline void rope_row_neox(float *x, int heads, int hd, int n_dims, const float *cs, const float *sn) {
    const int half = n_dims / 2;
    for (int h = 0; h < heads; h++) {
        float *x0s = x + (int64_t)h * hd, *x1s = x0s + half;
        int r = 0;
#if LAYER_SIMD
        for (; r + 4 <= half; r += 4) {  /* four pairs: x0' = x0 cos - fp32(x1 sin), x1' = x0 sin + fp32(x1 cos) */
            const __m128 c = _mm_loadu_ps(cs + r), s = _mm_loadu_ps(sn + r);
            const __m128 x0 = _mm_loadu_ps(x0s + r), x1 = _mm_loadu_ps(x1s + r);
            const __m256d x0d = _mm256_cvtps_pd(x0);
            const __m256d x1_sin = _mm256_cvtps_pd(_mm_mul_ps(x1, s)), x1_cos = _mm256_cvtps_pd(_mm_mul_ps(x1, c));
            _mm_storeu_ps(x0s + r, _mm256_cvtpd_ps(_mm256_fmsub_pd(x0d, _mm256_cvtps_pd(c), x1_sin)));
            _mm_storeu_ps(x1s + r, _mm256_cvtpd_ps(_mm256_fmadd_pd(x0d, _mm256_cvtps_pd(s), x1_cos)));
        }
#endif
        for (; r < half; r++) {
            const float x0 = x0s[r], x1 = x1s[r];
            const float x1_sin = x1 * sn[r], x1_cos = x1 * cs[r];
            x0s[r] = (float)((double)x0 * cs[r] - (double)x1_sin);
            x1s[r] = (float)((double)x0 * sn[r] + (double)x1_cos);
        }
    }
}

/* ---------------------------------------------------------------- ggml_v_expf */

/* ggml_v_expf: e^x = 2^n (1 + j), n = round(x log2 e) (by adding and subtracting 1.5 * 2^23),
 * b = x - n ln2 in two fma steps (ln2 split in a short high part and a low part), and
 * j ~ e^b - 1 the degree-5 polynomial C1 b + C2 b^2 + ... + C5 b^5 in Estrin's scheme.
 * 2^n is built in the exponent bits; for |n| > 126 it is split in two factors s1 * s2 so
 * neither overflows, and past |n| > 192 the result is s1 * s1 (0 or infinity). */
#define EXP_SHIFTER 0x1.8p23f
#define EXP_LOG2E 0x1.715476p+0f
#define EXP_LN2_HI 0x1.62e4p-1f
#define EXP_LN2_LO 0x1.7f7d1cp-20f
#define EXP_C1 0x1.ffffecp-1f
#define EXP_C2 0x1.fffdb6p-2f
#define EXP_C3 0x1.555e66p-3f
#define EXP_C4 0x1.573e2ep-5f
#define EXP_C5 0x1.0e4020p-7f
#define EXP_ONE_BITS 0x3F800000u    /* 1.0f */
#define EXP_S1_BITS 0x7F000000u     /* n > 0: s1 = 2^127, s2 = 2^(n - 127) */
#define EXP_SPLIT_BITS 0x82000000u  /* n <= 0, added to s1 and taken from s2: s1 = 2^-125, s2 = 2^(n + 125) */

/* Both builds' range reduction, x = n ln2 + b with n whole (z holds n in its low mantissa bits),
 * and the polynomial's upper terms C2 + C3 b + (C4 + C5 b) b^2 that both fold in by u = b^2. */
static inline float exp_reduce(float x, float *z, float *n) {
    *z = fma_f32(x, EXP_LOG2E, EXP_SHIFTER);
    *n = *z - EXP_SHIFTER;
    return fma_f32(-*n, EXP_LN2_LO, fma_f32(-*n, EXP_LN2_HI, x));
}

static inline float exp_upper_terms(float b, float u) {
    return fma_f32(fma_f32(EXP_C5, b, EXP_C4), u, fma_f32(EXP_C3, b, EXP_C2));
}

static inline float ggml_expf(float x) {
    float z, n;
    const float b = exp_reduce(x, &z, &n);
    const uint32_t e = f32_bits(z) << 23;
    const float k = f32_from_bits(e + EXP_ONE_BITS);
    const float u = b * b;
    const float j = fma_f32(exp_upper_terms(b, u), u, EXP_C1 * b);
    if (!(fabsf(n) > 126.0f)) return fma_f32(k, j, k);
    const uint32_t g = n <= 0.0f ? EXP_SPLIT_BITS : 0u;
    const float s1 = f32_from_bits(g + EXP_S1_BITS);
    if (fabsf(n) > 192.0f) return s1 * s1;
    const float s2 = f32_from_bits(e - g);
    return fma_f32(s2, j, s2) * s1;
}

#if LAYER_SIMD
/* exp_reduce and exp_upper_terms on eight lanes */
static inline __m256 exp_reduce8(__m256 x, __m256 *z, __m256 *n) {
    const __m256 shifter = _mm256_set1_ps(EXP_SHIFTER);
    *z = _mm256_fmadd_ps(x, _mm256_set1_ps(EXP_LOG2E), shifter);
    *n = _mm256_sub_ps(*z, shifter);
    return _mm256_fnmadd_ps(*n, _mm256_set1_ps(EXP_LN2_LO), _mm256_fnmadd_ps(*n, _mm256_set1_ps(EXP_LN2_HI), x));
}

static inline __m256 exp_upper_terms8(__m256 b, __m256 u) {
    return _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_set1_ps(EXP_C5), b, _mm256_set1_ps(EXP_C4)), u,
                           _mm256_fmadd_ps(_mm256_set1_ps(EXP_C3), b, _mm256_set1_ps(EXP_C2)));
}

static inline __m256 ggml_expf8(__m256 x) {
    __m256 z, n;
    const __m256 b = exp_reduce8(x, &z, &n);
    const __m256i e = _mm256_slli_epi32(_mm256_castps_si256(z), 23);
    const __m256 k = _mm256_castsi256_ps(_mm256_add_epi32(e, _mm256_set1_epi32((int)EXP_ONE_BITS)));
    const __m256 u = _mm256_mul_ps(b, b);
    const __m256 j = _mm256_fmadd_ps(exp_upper_terms8(b, u), u, _mm256_mul_ps(_mm256_set1_ps(EXP_C1), b));
    const __m256 result = _mm256_fmadd_ps(k, j, k);
    const __m256 abs_n = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), n);
    const __m256 large = _mm256_cmp_ps(abs_n, _mm256_set1_ps(126.0f), _CMP_GT_OQ);
    if (!_mm256_movemask_ps(large)) return result;
    const __m256i g = _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(n, _mm256_setzero_ps(), _CMP_LE_OQ)),
                                       _mm256_set1_epi32((int)EXP_SPLIT_BITS));
    const __m256 s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32((int)EXP_S1_BITS)));
    const __m256 s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
    const __m256 scaled = _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1);
    const __m256 huge = _mm256_cmp_ps(abs_n, _mm256_set1_ps(192.0f), _CMP_GT_OQ);
    return _mm256_blendv_ps(_mm256_blendv_ps(result, scaled, large), _mm256_mul_ps(s1, s1), huge);
}
#endif

/* ggml_v_expf as llama.cpp's AVX-512 build has it: n and b as above, but the constant 1 joins
 * the polynomial in its last fma, j = 1 + C1 b + ... + C5 b^5, and e^x = j * 2^n scaled
 * exactly (vscalefps: one rounding, also into subnormals); |n| > 192 gives 0 or infinity.
 * The last fma is the reference's fma_f32 (via double), here and in the vector twin. */
static inline float ggml_expf_avx512(float x) {
    float z, n;
    const float b = exp_reduce(x, &z, &n);
    const float u = b * b;
    const float j = fma_f32(exp_upper_terms(b, u), u, fma_f32(EXP_C1, b, 1.0f));
    if (fabsf(n) > 192.0f) return n <= 0.0f ? 0.0f : INFINITY;
    if (n != n) return j;  /* NaN in, NaN out */
    return (float)((double)j * ldexp(1.0, (int)n));
}

#if LAYER_SIMD
/* (double)v * 2^n for the four lanes of v and n (|n| <= 192, whole numbers), rounded once to fp32 */
static inline __m128 scale_pow2_4(__m128 v, __m128 n) {
    const __m256i bits = _mm256_slli_epi64(_mm256_add_epi64(_mm256_cvtepi32_epi64(_mm_cvtps_epi32(n)),
                                                            _mm256_set1_epi64x(1023)), 52);
    return _mm256_cvtpd_ps(_mm256_mul_pd(_mm256_cvtps_pd(v), _mm256_castsi256_pd(bits)));
}

/* fma_f32(a, b, c) on four lanes: the product exact in double, plus c, rounded to double, then to fp32 */
static inline __m128 fma_f32_4(__m128 a, __m128 b, __m128 c) {
    return _mm256_cvtpd_ps(_mm256_fmadd_pd(_mm256_cvtps_pd(a), _mm256_cvtps_pd(b), _mm256_cvtps_pd(c)));
}

static inline __m256 ggml_expf8_avx512(__m256 x) {
    __m256 z, n;
    const __m256 b = exp_reduce8(x, &z, &n);
    const __m256 u = _mm256_mul_ps(b, b);
    const __m256 high = exp_upper_terms8(b, u);
    const __m256 one_c1b = _mm256_fmadd_ps(_mm256_set1_ps(EXP_C1), b, _mm256_set1_ps(1.0f));
    const __m256 abs_n = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), n);
    const __m256 huge = _mm256_cmp_ps(abs_n, _mm256_set1_ps(192.0f), _CMP_GT_OQ);
    const __m256 nc = _mm256_blendv_ps(n, _mm256_setzero_ps(), _mm256_or_ps(huge, _mm256_cmp_ps(n, n, _CMP_UNORD_Q)));
#if defined(__AVX512F__) && defined(__AVX512VL__)
    /* the fma_f32 on eight lanes of doubles, and vscalefps itself: j * 2^n rounded once */
    const __m256 j = _mm512_cvtpd_ps(_mm512_fmadd_pd(_mm512_cvtps_pd(high), _mm512_cvtps_pd(u),
                                                     _mm512_cvtps_pd(one_c1b)));
    const __m256 result = _mm256_scalef_ps(j, nc);
#else
    __m128 half[2];
    for (int h = 0; h < 2; h++) {
        const __m128 j = fma_f32_4(h ? _mm256_extractf128_ps(high, 1) : _mm256_castps256_ps128(high),
                                   h ? _mm256_extractf128_ps(u, 1) : _mm256_castps256_ps128(u),
                                   h ? _mm256_extractf128_ps(one_c1b, 1) : _mm256_castps256_ps128(one_c1b));
        half[h] = scale_pow2_4(j, h ? _mm256_extractf128_ps(nc, 1) : _mm256_castps256_ps128(nc));
    }
    const __m256 result = _mm256_set_m128(half[1], half[0]);
#endif
    const __m256 limit = _mm256_blendv_ps(_mm256_set1_ps(INFINITY), _mm256_setzero_ps(),
                                          _mm256_cmp_ps(n, _mm256_setzero_ps(), _CMP_LE_OQ));
    return _mm256_blendv_ps(result, limit, huge);
}
#endif

/* ggml_v_expf of llama.cpp built for ``isa`` */
static inline float ggml_expf_isa(float x, int isa) { return isa == ISA_AVX512 ? ggml_expf_avx512(x) : ggml_expf(x); }

/* ---------------------------------------------------------------- SwiGLU */

/* y = g / (1 + e^(0 - g)) * u for one row of n, e^ as llama.cpp built for ``isa`` has it */
static inline void swiglu_row(const float *g, const float *u, int64_t n, float *y, int isa) {
    int64_t i = 0;
#if LAYER_SIMD
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) {
        const __m256 gv = _mm256_loadu_ps(g + i), neg = _mm256_sub_ps(zero, gv);
        const __m256 e = isa == ISA_AVX512 ? ggml_expf8_avx512(neg) : ggml_expf8(neg);
        _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_div_ps(gv, _mm256_add_ps(one, e)), _mm256_loadu_ps(u + i)));
    }
#endif
    for (; i < n; i++) y[i] = g[i] / (1.0f + ggml_expf_isa(0.0f - g[i], isa)) * u[i];
}

/* ---------------------------------------------------------------- GEGLU */

/* y = gelu(g) * u for one row of n, as ggml_vec_geglu_f32 with GGML_GELU_FP16: 0 for g <= -10,
 * g * u for g >= 10, else table[f16(g)] * u; table: ggml's 65536 f16 GELU values. */
static inline void geglu_row(const float *g, const float *u, int64_t n, const uint16_t *table, float *y) {
    for (int64_t i = 0; i < n; i++) {
        const float x = g[i];
        y[i] = x <= -10.0f ? 0.0f : x >= 10.0f ? x * u[i] : fp16_to_fp32(table[fp32_to_fp16(x)]) * u[i];
    }
}

/* ---------------------------------------------------------------- horizontal sums */

#if LAYER_SIMD
/* quads of v[a] and v[b] side by side: low half + high half of each */
static inline __m256 quads2(__m256 a, __m256 b) {
    return _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
}

/* sum32's last steps (strided = 0) or hsum8 (strided = 1) of eight vectors at once:
 * lane i of the result sums v[i].  Two rounds of horizontal adds pair quad elements
 * (0, 1) and (2, 3); for the strided order each quad is first reordered to 0, 2, 1, 3. */
static inline __m256 sum8x8_ps(const __m256 *v, int strided) {
    __m256 q[4];
    for (int i = 0; i < 4; i++) {
        q[i] = quads2(v[2 * i], v[2 * i + 1]);
        if (strided) q[i] = _mm256_permute_ps(q[i], _MM_SHUFFLE(3, 1, 2, 0));
    }
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(q[0], q[1]), _mm256_hadd_ps(q[2], q[3]));  /* 0 2 4 6 | 1 3 5 7 */
    return _mm256_permutevar8x32_ps(h, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

#if defined(__AVX512F__)
/* hsum16 of eight zmm at once: lane i of the result sums v[i], as its high 8 lanes plus its
 * low 8, then hsum8 */
static inline __m256 hsum16x8_zmm(const __m512 *v) {
    __m256 octet[8];
    for (int r = 0; r < 8; r++) octet[r] = _mm256_add_ps(high8_ps(v[r]), _mm512_castps512_ps256(v[r]));
    return sum8x8_ps(octet, 1);
}
#endif
#endif

/* ---------------------------------------------------------------- attention */

/* The order a float_dots ``lanes`` count names: tinyBLAS's (8 on AVX2, 16 on AVX-512) or
 * ggml_vec_dot_f16's (32 on AVX2, 64 on AVX-512). */
static inline int lanes_isa(int lanes) { return lanes == 16 || lanes == 64 ? ISA_AVX512 : ISA_AVX2; }
static inline int lanes_tiny_blas(int lanes) { return lanes == 8 || lanes == 16; }

/* scores[j] = dot(q, k_j) * scale for the m keys (rows of hd f16 values) in the order that
 * ``lanes`` names (lanes_isa, lanes_tiny_blas: tinyblas_dot's or float_dot's); qh: q rounded to
 * f16, qf: the same values as floats.  Blocks of eight keys share one reduction (vec_dot_f16's
 * 64 lanes in zmm registers where compiled for AVX-512); the other keys take the single-row dots
 * of float_rows.h.  Compiled for AVX-512, tinyBLAS's 16 lanes over a head size that is a
 * multiple of 16 never come here: attend_group scores those. */
static inline void score_keys(const uint16_t *qh, const float *qf, const uint16_t *k, int m, int hd, float scale,
                              int lanes, float *scores) {
    int j = 0;
#if LAYER_SIMD
    const __m256 sv = _mm256_set1_ps(scale);
    if (lanes == 8) {  /* eight keys at a time: eight independent fma chains, then eight hsums at once */
        for (; j + 8 <= m; j += 8) {
            __m256 acc[8];
            for (int r = 0; r < 8; r++) acc[r] = _mm256_setzero_ps();
            for (int c = 0; c < hd; c += 8) {
                const __m256 qv = _mm256_loadu_ps(qf + c);
                for (int r = 0; r < 8; r++) {
                    const __m128i kr = _mm_loadu_si128((const __m128i *)(k + (int64_t)(j + r) * hd + c));
                    acc[r] = _mm256_fmadd_ps(qv, _mm256_cvtph_ps(kr), acc[r]);
                }
            }
            _mm256_storeu_ps(scores + j, _mm256_mul_ps(sum8x8_ps(acc, 1), sv));
        }
    } else if (lanes == 32 && hd % 32 == 0) {  /* per key its 32 lanes folded to an octet; eight reduced at once */
        for (; j + 8 <= m; j += 8) {
            __m256 octet[8];
            for (int r = 0; r < 8; r++) {
                const uint16_t *kr = k + (int64_t)(j + r) * hd;
                __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
                for (int c = 0; c < hd; c += 32)
                    for (int l = 0; l < 4; l++)
                        a[l] = _mm256_fmadd_ps(_mm256_loadu_ps(qf + c + 8 * l),
                                               _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(kr + c + 8 * l))),
                                               a[l]);
                octet[r] = _mm256_add_ps(_mm256_add_ps(a[0], a[2]), _mm256_add_ps(a[1], a[3]));
            }
            _mm256_storeu_ps(scores + j, _mm256_mul_ps(sum8x8_ps(octet, 0), sv));
        }
    }
#if defined(__AVX512F__)
    else if (lanes == 64 && hd % 64 == 0) {  /* vec_dot_f16: per key four accumulators, (0 + 2) + (1 + 3) */
        for (; j + 8 <= m; j += 8) {
            __m512 folded[8];
            for (int r = 0; r < 8; r++) {
                const uint16_t *kr = k + (int64_t)(j + r) * hd;
                __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
                for (int c = 0; c < hd; c += 64)
                    for (int l = 0; l < 4; l++)
                        a[l] = _mm512_fmadd_ps(_mm512_loadu_ps(qf + c + 16 * l),
                                               _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(kr + c + 16 * l))),
                                               a[l]);
                folded[r] = _mm512_add_ps(_mm512_add_ps(a[0], a[2]), _mm512_add_ps(a[1], a[3]));
            }
            _mm256_storeu_ps(scores + j, _mm256_mul_ps(hsum16x8_zmm(folded), sv));
        }
    }
#endif
    else if (lanes == 64) {  /* vec_dot_f16 with a tail past the last 64 (a head size of 32, 96):
                                the tail is a serial chain of double adds per key; eight keys'
                                chains side by side in two registers of doubles */
        const int body = hd - hd % 64;
        for (; j + 8 <= m; j += 8) {
            float head[8];  /* each key's sum over the body, as vec_dot_f16 leaves it before its tail */
            for (int r = 0; r < 8; r++)
                head[r] = body ? float_dot(body, qh, k + (int64_t)(j + r) * hd, T_F16, ISA_AVX512) : 0.0f;
            __m256d lo = _mm256_cvtps_pd(_mm_loadu_ps(head)), hi = _mm256_cvtps_pd(_mm_loadu_ps(head + 4));
            for (int c = body; c < hd; c++) {
                uint16_t kc[8];  /* column c of the eight keys */
                for (int r = 0; r < 8; r++) kc[r] = k[(int64_t)(j + r) * hd + c];
                /* f16 times f16 is exact in fp32, and so in double */
                const __m256 kv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)kc));
                const __m256 p = _mm256_mul_ps(_mm256_set1_ps(qf[c]), kv);
                lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(p)));
                hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(p, 1)));
            }
            _mm256_storeu_ps(scores + j, _mm256_mul_ps(_mm256_set_m128(_mm256_cvtpd_ps(hi), _mm256_cvtpd_ps(lo)), sv));
        }
    }
#endif
    for (; j < m; j++) {
        const uint16_t *kj = k + (int64_t)j * hd;
        const int isa = lanes_isa(lanes);
        scores[j] = (lanes_tiny_blas(lanes) ? tinyblas_dot(hd, T_F16, isa, kj, qf) : float_dot(hd, qh, kj, T_F16, isa))
                    * scale;
    }
}

/* Softmax of m scores into f16 probabilities, as the reference's softmax runs over a row
 * (ggml_vec_soft_max_f32 on AVX2): e = ggml_expf(s - max), each aligned group of 8 summed
 * in fp32 (hsum8, the last group padded with zeros), the group sums added in turn
 * in double, and e * fp32(1 / total) rounded to f16.  s is overwritten with e.  On AVX-512
 * (``isa``) the exp is ggml_expf_avx512 and the groups are of 16 (hsum16). */
static inline void softmax_f16(float *s, int m, uint16_t *p, int isa) {
    float max = -INFINITY;
    int j = 0;
#if LAYER_SIMD
    /* the max in eight lanes first (one serial chain of maxss per score would cost as much as the exps) */
    __m256 maxes = _mm256_set1_ps(-INFINITY);
    for (; j + 8 <= m; j += 8) maxes = _mm256_max_ps(_mm256_loadu_ps(s + j), maxes);
    float lane[8];
    _mm256_storeu_ps(lane, maxes);
    for (int i = 0; i < 8; i++) max = lane[i] > max ? lane[i] : max;
#endif
    for (; j < m; j++) max = s[j] > max ? s[j] : max;
    double total = 0.0;
    j = 0;
    if (isa == ISA_AVX512) {
#if LAYER_SIMD
        const __m256 maxv = _mm256_set1_ps(max);
        for (; j + 128 <= m; j += 128) {  /* eight groups, their hsum16s taken at once and added in order */
            __m256 octet[8];
            float sums[8];
            for (int g = 0; g < 8; g++) {
                const __m256 lo = ggml_expf8_avx512(_mm256_sub_ps(_mm256_loadu_ps(s + j + 16 * g), maxv));
                const __m256 hi = ggml_expf8_avx512(_mm256_sub_ps(_mm256_loadu_ps(s + j + 16 * g + 8), maxv));
                _mm256_storeu_ps(s + j + 16 * g, lo);
                _mm256_storeu_ps(s + j + 16 * g + 8, hi);
                octet[g] = _mm256_add_ps(hi, lo);
            }
            _mm256_storeu_ps(sums, sum8x8_ps(octet, 1));
            for (int g = 0; g < 8; g++) total += (double)sums[g];
        }
        for (; j + 16 <= m; j += 16) {
            const __m256 lo = ggml_expf8_avx512(_mm256_sub_ps(_mm256_loadu_ps(s + j), maxv));
            const __m256 hi = ggml_expf8_avx512(_mm256_sub_ps(_mm256_loadu_ps(s + j + 8), maxv));
            _mm256_storeu_ps(s + j, lo);
            _mm256_storeu_ps(s + j + 8, hi);
            total += (double)hsum16_ps(lo, hi);
        }
#endif
        for (; j < m; j += 16) {
            float group[16] = {0};
            for (int i = 0; i < 16 && j + i < m; i++) group[i] = s[j + i] = ggml_expf_avx512(s[j + i] - max);
            total += (double)hsum16(group);
        }
    }
#if LAYER_SIMD
    const __m256 maxv = _mm256_set1_ps(max);
    for (; j + 64 <= m; j += 64) {  /* eight groups, their sums taken at once and added in order */
        __m256 e[8];
        float sums[8];
        for (int g = 0; g < 8; g++) {
            e[g] = ggml_expf8(_mm256_sub_ps(_mm256_loadu_ps(s + j + 8 * g), maxv));
            _mm256_storeu_ps(s + j + 8 * g, e[g]);
        }
        _mm256_storeu_ps(sums, sum8x8_ps(e, 1));
        for (int g = 0; g < 8; g++) total += (double)sums[g];
    }
    for (; j + 8 <= m; j += 8) {
        const __m256 e = ggml_expf8(_mm256_sub_ps(_mm256_loadu_ps(s + j), maxv));
        _mm256_storeu_ps(s + j, e);
        total += (double)hsum8_ps(e);
    }
#endif
    for (; j < m; j += 8) {
        float group[8] = {0};
        for (int i = 0; i < 8 && j + i < m; i++) group[i] = s[j + i] = ggml_expf(s[j + i] - max);
        total += (double)hsum8(group);
    }
    const float inv = (float)(1.0 / total);
    j = 0;
#if LAYER_SIMD
    for (; j + 8 <= m; j += 8)
        _mm_storeu_si128((__m128i *)(p + j),
                         _mm256_cvtps_ph(_mm256_mul_ps(_mm256_loadu_ps(s + j), _mm256_set1_ps(inv)),
                                         _MM_FROUND_TO_NEAREST_INT));
#endif
    for (; j < m; j++) p[j] = fp32_to_fp16(s[j] * inv);
}

/* The reduction of AVX-512's 64 vec_dot lanes (to 16 as sum32 folds 32 to 8, then hsum16)
 * or of its 16 tinyBLAS lanes (hsum16). */
static inline float sum_lanes16(const float *a, int lanes) {
    float v[16];
    for (int i = 0; i < 16; i++) v[i] = lanes == 64 ? (a[i] + a[32 + i]) + (a[16 + i] + a[48 + i]) : a[i];
    return hsum16(v);
}

/* out[d] = the reduction (sum32 for 32 lanes, hsum8 for 8, sum_lanes16 for 16 and 64) of
 * acc[l * hd + d] over the lanes l */
static inline void reduce_lanes(const float *acc, int hd, int lanes, float *out) {
    int d = 0;
    if (lanes == 16 || lanes == 64) {
#if LAYER_SIMD
        for (; d + 8 <= hd; d += 8) {  /* sum_lanes16 for eight d at once */
            __m256 v[16];
            for (int i = 0; i < 16; i++) {
                const float *a = acc + d;
                v[i] = _mm256_loadu_ps(a + (size_t)i * hd);
                if (lanes == 64)
                    v[i] = _mm256_add_ps(_mm256_add_ps(v[i], _mm256_loadu_ps(a + (size_t)(32 + i) * hd)),
                                         _mm256_add_ps(_mm256_loadu_ps(a + (size_t)(16 + i) * hd),
                                                       _mm256_loadu_ps(a + (size_t)(48 + i) * hd)));
            }
            __m256 q[4];
            for (int i = 0; i < 4; i++)
                q[i] = _mm256_add_ps(_mm256_add_ps(v[8 + i], v[i]), _mm256_add_ps(v[12 + i], v[4 + i]));
            _mm256_storeu_ps(out + d, _mm256_add_ps(_mm256_add_ps(q[0], q[2]), _mm256_add_ps(q[1], q[3])));
        }
#endif
        for (; d < hd; d++) {
            float lane[64];
            for (int l = 0; l < lanes; l++) lane[l] = acc[(size_t)l * hd + d];
            out[d] = sum_lanes16(lane, lanes);
        }
        return;
    }
#if LAYER_SIMD
    for (; d + 8 <= hd; d += 8) {
        __m256 r[32];
        for (int l = 0; l < lanes; l++) r[l] = _mm256_loadu_ps(acc + (size_t)l * hd + d);
        if (lanes == 32)
            for (int i = 0; i < 8; i++)
                r[i] = _mm256_add_ps(_mm256_add_ps(r[i], r[16 + i]), _mm256_add_ps(r[8 + i], r[24 + i]));
        const __m256 q0 = _mm256_add_ps(r[0], r[4]), q1 = _mm256_add_ps(r[1], r[5]);
        const __m256 q2 = _mm256_add_ps(r[2], r[6]), q3 = _mm256_add_ps(r[3], r[7]);
        _mm256_storeu_ps(out + d, lanes == 32 ? _mm256_add_ps(_mm256_add_ps(q0, q1), _mm256_add_ps(q2, q3))
                                              : _mm256_add_ps(_mm256_add_ps(q0, q2), _mm256_add_ps(q1, q3)));
    }
#endif
    for (; d < hd; d++) {
        float lane[32];
        for (int l = 0; l < lanes; l++) lane[l] = acc[(size_t)l * hd + d];
        out[d] = lanes == 32 ? sum32(lane) : hsum8(lane);
    }
}

#if LAYER_SIMD
/* Lane l's sums for the nv * 8 values from d0: keys l, l + lanes, ... in turn, held in registers */
static inline __attribute__((always_inline)) void weigh_lane(const uint16_t *p, const uint16_t *v, int m, int hd,
                                                             int lanes, int l, int d0, const int nv, float *row) {
    __m256 a[8];
    for (int c = 0; c < nv; c++) a[c] = _mm256_setzero_ps();
    for (int j = l; j < m; j += lanes) {
        const __m256 pj = _mm256_set1_ps(fp16_to_fp32(p[j]));
        const uint16_t *vj = v + (int64_t)j * hd + d0;
        for (int c = 0; c < nv; c++)
            a[c] = _mm256_fmadd_ps(pj, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(vj + 8 * c))), a[c]);
    }
    for (int c = 0; c < nv; c++) _mm256_storeu_ps(row + d0 + 8 * c, a[c]);
}
#endif

/* out[d] = sum over keys j < m of p[j] * v[j][d], in float_dots' order with the keys as
 * its k axis: key j feeds lane j % lanes of each d, in turn (lanes 32: ggml_vec_dot_f16,
 * reduced by sum32; lanes 8: tinyBLAS, reduced by hsum8; AVX-512's 64 and 16 alike, reduced
 * by sum_lanes16).  acc: lanes * hd floats of scratch, lane l's sums in row l.  The zeros
 * the reference pads the keys with (to a multiple of 64, so vec_dot has no tail) add
 * nothing, so they are left out. */
static inline void weigh_values(const uint16_t *p, const uint16_t *v, int m, int hd, int lanes, float *acc,
                                float *out) {
    const int used = m < lanes ? m : lanes;
    for (int l = 0; l < used; l++) {
        float *row = acc + (size_t)l * hd;
        int d = 0;
#if LAYER_SIMD
        for (; d + 64 <= hd; d += 64) weigh_lane(p, v, m, hd, lanes, l, d, 8, row);
        if (d + 32 <= hd) { weigh_lane(p, v, m, hd, lanes, l, d, 4, row); d += 32; }
        if (d + 16 <= hd) { weigh_lane(p, v, m, hd, lanes, l, d, 2, row); d += 16; }
        if (d + 8 <= hd) { weigh_lane(p, v, m, hd, lanes, l, d, 1, row); d += 8; }
#endif
        for (; d < hd; d++) {
            float a = 0.0f;
            for (int j = l; j < m; j += lanes) a = fma_f32(fp16_to_fp32(p[j]), fp16_to_fp32(v[(int64_t)j * hd + d]), a);
            row[d] = a;
        }
    }
    memset(acc + (size_t)used * hd, 0, sizeof(float) * (size_t)(lanes - used) * hd);
    reduce_lanes(acc, hd, lanes, out);
}

/* One query head at one position over keys [0, m) of its kv head, the first `masked` of them
 * hidden (a sliding window's start): q rounded to f16, scores by score_keys(qk_lanes) (tinyBLAS's
 * only when hd is a multiple of its step), times scale, the hidden ones -inf, softmax to f16
 * (in the order of qk_lanes' build), then weigh_values(pv_lanes).  k, v: (n_ctx, hd)
 * f16 rows.  The caller starts k and v at a multiple of 64 keys, so every key keeps its lane
 * and its softmax group (the hidden keys before it, whose probabilities are 0, add nothing anywhere).
 * Scratch: scores m floats, half hd + m halves, acc 64 * hd floats. */
static inline void attend(const float *q, const uint16_t *k, const uint16_t *v, int m, int masked, int hd, float scale,
                          int qk_lanes, int pv_lanes, float *scores, uint16_t *half, float *acc, float *out) {
    uint16_t *qh = half, *probs = half + hd;
    float *qf = acc;  /* q as f16-rounded floats, before acc is needed for the values */
    for (int d = 0; d < hd; d++) {
        qh[d] = fp32_to_fp16(q[d]);
        qf[d] = fp16_to_fp32(qh[d]);
    }
    score_keys(qh, qf, k, m, hd, scale, qk_lanes, scores);
    for (int j = 0; j < masked; j++) scores[j] = -INFINITY;
    softmax_f16(scores, m, probs, lanes_isa(qk_lanes));
    weigh_values(probs, v, m, hd, pv_lanes, acc, out);
}

/* ---------------------------------------------------------------- one row's attention, a kv head's query heads */

enum { ROW_GROUP = 4 };         /* query heads that attend_heads attends together over one conversion of the keys */
enum { VALUES_TOGETHER = 256 };  /* keys from which it weighs their values together too (attend_heads64) */

#if defined(__AVX512F__)
/* scores[h * m + j] = q_h.k_j * scale for `heads` (at most ROW_GROUP) query heads over the m keys at k,
 * in score_keys' order for 64 lanes (ggml_vec_dot_f16 on AVX-512; hd a multiple of 64): qh the heads'
 * queries rounded to f16 (heads * hd), qf the same as floats.  Each key is converted once for all the
 * heads; blocks of eight keys share the reductions, the keys after them take float_dot. */
static inline void score_keys64_heads(const uint16_t *qh, const float *qf, int heads, const uint16_t *k, int m,
                                      int hd, float scale, float *scores) {
    const __m256 sv = _mm256_set1_ps(scale);
    int j = 0;
    for (; j + 8 <= m; j += 8) {
        __m512 folded[ROW_GROUP][8];
        for (int r = 0; r < 8; r++) {
            const uint16_t *kr = k + (int64_t)(j + r) * hd;
            __m512 a[ROW_GROUP][4];
            for (int h = 0; h < ROW_GROUP; h++)
                for (int l = 0; l < 4; l++) a[h][l] = _mm512_setzero_ps();
            for (int c = 0; c < hd; c += 64) {
                __m512 kv[4];
                for (int l = 0; l < 4; l++)
                    kv[l] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(kr + c + 16 * l)));
                for (int h = 0; h < ROW_GROUP; h++)
                    if (h < heads)
                        for (int l = 0; l < 4; l++)
                            a[h][l] = _mm512_fmadd_ps(_mm512_loadu_ps(qf + h * hd + c + 16 * l), kv[l], a[h][l]);
            }
            for (int h = 0; h < heads; h++)
                folded[h][r] = _mm512_add_ps(_mm512_add_ps(a[h][0], a[h][2]), _mm512_add_ps(a[h][1], a[h][3]));
        }
        for (int h = 0; h < heads; h++)
            _mm256_storeu_ps(scores + (int64_t)h * m + j, _mm256_mul_ps(hsum16x8_zmm(folded[h]), sv));
    }
    for (; j < m; j++)
        for (int h = 0; h < heads; h++)
            scores[(int64_t)h * m + j] = float_dot(hd, qh + h * hd, k + (int64_t)j * hd, T_F16, ISA_AVX512) * scale;
}

/* out[h * hd + d] = sum over keys j < m of p[h * m + j] * v[j][d] for `heads` (at most ROW_GROUP) heads,
 * in weigh_values' order for 64 lanes (key j feeds lane j % 64 of each d; hd a multiple of 64), each
 * value row converted once for all the heads.  p: the heads' f16 probabilities as floats; acc:
 * heads * 64 * hd floats of scratch, head h's lane l in row 64h + l. */
static inline void weigh_values64_heads(const float *p, int heads, const uint16_t *v, int m, int hd, float *acc,
                                        float *out) {
    const int used = m < 64 ? m : 64;
    for (int l = 0; l < used; l++)
        for (int d0 = 0; d0 < hd; d0 += 64) {
            __m512 a[ROW_GROUP][4];
            for (int h = 0; h < ROW_GROUP; h++)
                for (int c = 0; c < 4; c++) a[h][c] = _mm512_setzero_ps();
            for (int j = l; j < m; j += 64) {
                const uint16_t *vj = v + (int64_t)j * hd + d0;
                __m512 vc[4];
                for (int c = 0; c < 4; c++) vc[c] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(vj + 16 * c)));
                for (int h = 0; h < ROW_GROUP; h++)
                    if (h < heads) {
                        const __m512 pj = _mm512_set1_ps(p[(int64_t)h * m + j]);
                        for (int c = 0; c < 4; c++) a[h][c] = _mm512_fmadd_ps(pj, vc[c], a[h][c]);
                    }
            }
            for (int h = 0; h < heads; h++)
                for (int c = 0; c < 4; c++) _mm512_storeu_ps(acc + ((int64_t)h * 64 + l) * hd + d0 + 16 * c, a[h][c]);
        }
    for (int h = 0; h < heads; h++) {
        float *ah = acc + (int64_t)h * 64 * hd;
        memset(ah + (size_t)used * hd, 0, sizeof(float) * (size_t)(64 - used) * hd);
        reduce_lanes(ah, hd, 64, out + (int64_t)h * hd);
    }
}

/* attend of `heads` (at most ROW_GROUP) query heads of one kv head, with 64 lanes for q.K and P.V (hd a
 * multiple of 64): the same steps, each key converted once for the heads, and from VALUES_TOGETHER keys
 * on each value row too.  With fewer keys a lane sums one or two of them, the 64 lanes' sums of the heads
 * together outgrow L1, and one head at a time is faster (at 100 keys, 4 heads: 1.1 us against 2.0; at
 * 2000, 18.4 against 9.1).  Scratch as attend_heads takes it. */
static inline void attend_heads64(const float *q, int heads, const uint16_t *k, const uint16_t *v, int m, int masked,
                                  int hd, float scale, float *scores, uint16_t *half, float *acc, float *out) {
    uint16_t *qh = half, *probs_f16 = half + heads * hd;
    float *qf = acc;                                /* before acc is needed for the values */
    float *probs = scores + (int64_t)heads * m;
    for (int i = 0; i < heads * hd; i++) {
        qh[i] = fp32_to_fp16(q[i]);
        qf[i] = fp16_to_fp32(qh[i]);
    }
    score_keys64_heads(qh, qf, heads, k, m, hd, scale, scores);
    for (int h = 0; h < heads; h++) {
        float *s = scores + (int64_t)h * m, *ph = probs + (int64_t)h * m;
        uint16_t *p16 = probs_f16 + (int64_t)h * m;
        for (int j = 0; j < masked; j++) s[j] = -INFINITY;
        softmax_f16(s, m, p16, ISA_AVX512);
        if (m < VALUES_TOGETHER) {
            weigh_values(p16, v, m, hd, 64, acc, out + (int64_t)h * hd);
            continue;
        }
        int j = 0;
        for (; j + 16 <= m; j += 16)
            _mm512_storeu_ps(ph + j, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p16 + j))));
        for (; j < m; j++) ph[j] = fp16_to_fp32(p16[j]);
    }
    if (m >= VALUES_TOGETHER)
        weigh_values64_heads(probs, heads, v, m, hd, acc, out);
}
#endif

/* attend for the `heads` query heads (one after another in q and out) that read one kv head, at one
 * position: where compiled for AVX-512 and both orders are ggml_vec_dot_f16's 64 lanes over a head
 * size that is a multiple of 64, ROW_GROUP heads at a time over one conversion of each key and value
 * (attend_heads64), else one head at a time; the same bits either way.  Scratch: scores 2 * ROW_GROUP * m
 * floats, half ROW_GROUP * (hd + m) halves, acc ROW_GROUP * 64 * hd floats. */
static inline void attend_heads(const float *q, int heads, const uint16_t *k, const uint16_t *v, int m, int masked,
                                int hd, float scale, int qk_lanes, int pv_lanes, float *scores, uint16_t *half,
                                float *acc, float *out) {
#if defined(__AVX512F__)
    if (qk_lanes == 64 && pv_lanes == 64 && hd % 64 == 0) {
        for (int h0 = 0; h0 < heads; h0 += ROW_GROUP)
            attend_heads64(q + (int64_t)h0 * hd, heads - h0 < ROW_GROUP ? heads - h0 : ROW_GROUP, k, v, m, masked, hd,
                           scale, scores, half, acc, out + (int64_t)h0 * hd);
        return;
    }
#endif
    for (int h = 0; h < heads; h++)
        attend(q + (int64_t)h * hd, k, v, m, masked, hd, scale, qk_lanes, pv_lanes, scores, half, acc,
               out + (int64_t)h * hd);
}

/* ---------------------------------------------------------------- attention of a head group (AVX-512) */

#if defined(__AVX512F__)
#define ATTEND_GROUP 1

/* Keys [16b, 16b + 16) of a kv head (rows of hd f16 values; those at or past m are zeros) transposed
 * for attend_group: kt[16c + i] = key 16b + i's value c, as floats (exact). */
static inline void transpose_keys16(const uint16_t *k, int m, int hd, int b, float *kt) {
    for (int i = 0; i < 16; i++) {
        const int j = 16 * b + i;
        for (int c = 0; c < hd; c++) kt[16 * c + i] = j < m ? fp16_to_fp32(k[(int64_t)j * hd + c]) : 0.0f;
    }
}

/* q.k of the sixteen keys of one transposed block kt, one key per lane, in tinyBLAS's 16-lane order:
 * lane l of a dot sums the products of elements l, l + 16, ... in turn (a[l], here a vector over
 * the keys), then hsum16 adds the lanes (8 + i to i, 4 + i to i, then (0 + 2) + (1 + 3)). */
static inline __attribute__((always_inline)) __m512 score16(const float *kt, const float *qf, int hd) {
    __m512 a[16];
    for (int l = 0; l < 16; l++) a[l] = _mm512_setzero_ps();
    for (const float *end = qf + hd; qf < end; qf += 16, kt += 256)
        for (int l = 0; l < 16; l++) a[l] = _mm512_fmadd_ps(_mm512_set1_ps(qf[l]), _mm512_loadu_ps(kt + 16 * l), a[l]);
    for (int i = 0; i < 8; i++) a[i] = _mm512_add_ps(a[8 + i], a[i]);
    for (int i = 0; i < 4; i++) a[i] = _mm512_add_ps(a[4 + i], a[i]);
    return _mm512_add_ps(_mm512_add_ps(a[0], a[2]), _mm512_add_ps(a[1], a[3]));
}

/* Lane l of tinyBLAS's 16-lane P.V for up to four heads (nh) and the 16 nv values from d0: per
 * head and value, keys l, l + 16, ... below m in turn; each value row is converted once for the
 * heads.  p[h]: head h's probabilities as floats; rows[h]: where head h's lane l sums go. */
static inline __attribute__((always_inline)) void weigh_lane16(const float *const *p, int nh, const uint16_t *v,
                                                               int m, int hd, int l, int d0, int nv,
                                                               float *const *rows) {
    __m512 a[4][4];
#pragma GCC unroll 4
    for (int h = 0; h < 4; h++)
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) a[h][c] = _mm512_setzero_ps();
    for (int j = l; j < m; j += 16) {
        const uint16_t *vj = v + (int64_t)j * hd + d0;
        __m512 vc[4];
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++)
            if (c < nv) vc[c] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(vj + 16 * c)));
#pragma GCC unroll 4
        for (int h = 0; h < 4; h++)
            if (h < nh) {
                const __m512 pj = _mm512_set1_ps(p[h][j]);
#pragma GCC unroll 4
                for (int c = 0; c < 4; c++)
                    if (c < nv) a[h][c] = _mm512_fmadd_ps(pj, vc[c], a[h][c]);
            }
    }
#pragma GCC unroll 4
    for (int h = 0; h < 4; h++)
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++)
            if (h < nh && c < nv) _mm512_storeu_ps(rows[h] + d0 + 16 * c, a[h][c]);
}

/* scores[h * m16 + j] = q_h.k_j * scale for the heads' f16-rounded queries qf (heads * hd) and
 * the m16 keys of kt (a multiple of 16), every block of keys scored for all heads while in L1 */
static inline void score_group(const float *kt, const float *qf, int heads, int hd, int m16, float scale,
                               float *scores) {
    const __m512 sv = _mm512_set1_ps(scale);
    for (int b = 0; b < m16 / 16; b++)
        for (int h = 0; h < heads; h++)
            _mm512_storeu_ps(scores + h * m16 + 16 * b, _mm512_mul_ps(score16(kt + 16 * hd * b, qf + h * hd, hd), sv));
}

/* One head's scores s (m) to probabilities p (m floats, f16-rounded) by AVX-512's softmax_f16,
 * the first `masked` hidden; half: m halves of scratch */
static inline void softmax_group_head(float *s, int m, int masked, uint16_t *half, float *p) {
    for (int j = 0; j < masked; j++) s[j] = -INFINITY;
    softmax_f16(s, m, half, ISA_AVX512);
    int j = 0;
    for (; j + 16 <= m; j += 16)
        _mm512_storeu_ps(p + j, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(half + j))));
    for (; j < m; j++) p[j] = fp16_to_fp32(half[j]);
}

/* out[h * hd + d] = tinyBLAS's 16-lane sum over keys j < m of probs[h * m + j] * v[j][d] for each head,
 * four heads at a time over each value row (weigh_lane16), then each head's lanes reduced as
 * weigh_values reduces them.  acc: heads * 16 * hd floats of scratch. */
static inline void weigh_values_group(const float *probs, int heads, const uint16_t *v, int m, int hd, float *acc,
                                      float *out) {
    const int used = m < 16 ? m : 16;
    for (int h0 = 0; h0 < heads; h0 += 4) {
        const int nh = heads - h0 < 4 ? heads - h0 : 4;
        const float *p[4];
        float *rows[4];
        for (int l = 0; l < used; l++) {
            for (int h = 0; h < nh; h++) {
                p[h] = probs + (int64_t)(h0 + h) * m;
                rows[h] = acc + ((int64_t)(h0 + h) * 16 + l) * hd;
            }
            for (int d0 = 0; d0 < hd; d0 += 64) {
                const int nv = (hd - d0 < 64 ? hd - d0 : 64) / 16;
                if (nh == 4 && nv == 4) weigh_lane16(p, 4, v, m, hd, l, d0, 4, rows);  /* the usual tile, unrolled */
                else weigh_lane16(p, nh, v, m, hd, l, d0, nv, rows);
            }
        }
    }
    for (int h = 0; h < heads; h++) {
        float *ah = acc + (int64_t)h * 16 * hd;
        memset(ah + (size_t)used * hd, 0, sizeof(float) * (size_t)(16 - used) * hd);
        reduce_lanes(ah, hd, 16, out + (int64_t)h * hd);
    }
}

/* attend for the `heads` query heads (one after another in q and out) of one kv head at one
 * position, in tinyBLAS's 16-lane orders (AVX-512's several-row q.K and P.V; hd a multiple of 16):
 * kt is the kv head's keys transposed by transpose_keys16 from the same first key as v.
 * Scratch: qf heads * hd floats, scores heads * (m rounded up to 16), probs heads * m floats,
 * half m halves, acc heads * 16 * hd floats. */
static inline void attend_group(const float *q, int heads, const float *kt, const uint16_t *v, int m, int masked,
                                int hd, float scale, float *qf, float *scores, float *probs, uint16_t *half,
                                float *acc, float *out) {
    const int m16 = (m + 15) / 16 * 16;
    for (int i = 0; i < heads * hd; i++) qf[i] = fp16_to_fp32(fp32_to_fp16(q[i]));
    score_group(kt, qf, heads, hd, m16, scale, scores);
    for (int h = 0; h < heads; h++) softmax_group_head(scores + h * m16, m, masked, half, probs + (int64_t)h * m);
    weigh_values_group(probs, heads, v, m, hd, acc, out);
}
#else
#define ATTEND_GROUP 0
/* never called here: the caller takes attend where ATTEND_GROUP is 0 */
static inline void transpose_keys16(const uint16_t *k, int m, int hd, int b, float *kt) {
    (void)k, (void)m, (void)hd, (void)b, (void)kt;
}
static inline void attend_group(const float *q, int heads, const float *kt, const uint16_t *v, int m, int masked,
                                int hd, float scale, float *qf, float *scores, float *probs, uint16_t *half,
                                float *acc, float *out) {
    (void)q, (void)heads, (void)kt, (void)v, (void)m, (void)masked, (void)hd, (void)scale, (void)qf, (void)scores;
    (void)probs, (void)half, (void)acc, (void)out;
}
#endif

#endif
