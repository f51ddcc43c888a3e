/* The non-matrix steps of a LLaMA layer, row by row, with ggml's rounding points:
 * RMSNorm sums squares in double; RoPE builds its angles by repeated float
 * multiplication; attention rounds q and the softmax probabilities to f16 before their
 * products with the f16 cache and sums the softmax normaliser in double.
 */
#ifndef LLAMANP_LAYER_OPS_H
#define LLAMANP_LAYER_OPS_H

#include "vec_dot.h"

/* y = x / sqrt(mean(x^2) + eps) * w for one row of n */
static inline void rms_norm_row(const float *x, const float *w, int64_t n, float eps, float *y) {
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += (double)(x[i] * x[i]);
    const float mean = (float)(sum / (double)n);
    const float scale = 1.0f / sqrtf(mean + eps);
    for (int64_t i = 0; i < n; i++) y[i] = x[i] * scale * w[i];
}

/* cos and sin of the n_dims/2 angles of one position */
static inline void rope_angles(float pos, int n_dims, float theta_scale, float freq_scale, float *cs, float *sn) {
    float theta = pos;
    for (int i = 0; i < n_dims / 2; i++) {
        const double t = (double)(freq_scale * theta);
        cs[i] = (float)cos(t);
        sn[i] = (float)sin(t);
        theta *= theta_scale;
    }
}

/* rotate the adjacent pairs of the first n_dims values of one head, in place */
static inline void rope_head(float *x, int n_dims, const float *cs, const float *sn) {
    for (int i = 0; i < n_dims / 2; i++) {
        const float x0 = x[2 * i], x1 = x[2 * i + 1];
        const float a = x0 * cs[i], b = x1 * sn[i], c = x0 * sn[i], d = x1 * cs[i];
        x[2 * i] = a - b;
        x[2 * i + 1] = c + d;
    }
}

#if defined(__AVX2__)
/* exp of 8 floats to about 1 ulp: 2^n * p(r) with x = n ln2 + r, |r| <= ln2 / 2, p a degree-7 fit */
static inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.7f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
#endif

static inline void swiglu_row(const float *g, const float *u, int64_t n, float *y) {
    int64_t i = 0;
#if defined(__AVX2__)
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) {
        const __m256 gv = _mm256_loadu_ps(g + i);
        const __m256 silu = _mm256_div_ps(gv, _mm256_add_ps(one, exp8(_mm256_sub_ps(zero, gv))));
        _mm256_storeu_ps(y + i, _mm256_mul_ps(silu, _mm256_loadu_ps(u + i)));
    }
#endif
    for (; i < n; i++) y[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

/* One query head at one position over keys [0, n_keys) of its kv head.
 * k, v: (n_ctx, hd) f16 rows; scratch: n_keys floats, n_keys + hd halves. */
static inline void attend(const float *q, const uint16_t *k, const uint16_t *v, int n_keys, int hd, float scale,
                          float *scores, uint16_t *half, float *out) {
    uint16_t *qh = half, *probs = half + hd;
    for (int d = 0; d < hd; d++) qh[d] = fp32_to_fp16(q[d]);
    float max = -INFINITY;
    for (int j = 0; j < n_keys; j++) {
        scores[j] = dot_f16_f16(hd, k + (int64_t)j * hd, qh) * scale;
        if (scores[j] > max) max = scores[j];
    }
    double sum = 0.0;
    int j = 0;
#if defined(__AVX2__)
    for (; j + 8 <= n_keys; j += 8)
        _mm256_storeu_ps(scores + j, exp8(_mm256_sub_ps(_mm256_loadu_ps(scores + j), _mm256_set1_ps(max))));
#endif
    for (; j < n_keys; j++) scores[j] = expf(scores[j] - max);
    for (j = 0; j < n_keys; j++) sum += (double)scores[j];
    const float inv = (float)(1.0 / sum);
    for (j = 0; j < n_keys; j++) probs[j] = fp32_to_fp16(scores[j] * inv);
    for (int d = 0; d < hd; d++) out[d] = 0.0f;
    for (j = 0; j < n_keys; j++) {
        const float p = fp16_to_fp32(probs[j]);
        const uint16_t *vj = v + (int64_t)j * hd;
        int d = 0;
#if defined(__AVX2__) && defined(__F16C__)
        const __m256 pv = _mm256_set1_ps(p);
        for (; d + 8 <= hd; d += 8)
            _mm256_storeu_ps(out + d, _mm256_fmadd_ps(pv, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(vj + d))),
                                                      _mm256_loadu_ps(out + d)));
#endif
        for (; d < hd; d++) out[d] += p * fp16_to_fp32(vj[d]);
    }
}

#endif
