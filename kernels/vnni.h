/* The VNNI forms of AVX2's integer multiply-adds, where the compiler targets them (AVX-VNNI, or
 * AVX-512 VNNI with VL), with the AVX2 sequences they replace otherwise.
 *
 * Both give the same integers whenever the AVX2 sequence cannot saturate: dpbusd sums a lane's
 * four u8 x s8 products in 32 bits, where maddubs adds them in pairs with int16 saturation first;
 * dpwssd is madd then add.  The kernels call them only on values where the pairs fit in int16.
 */
#ifndef LLAMANP_VNNI_H
#define LLAMANP_VNNI_H

#include "qblocks.h"

#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define HAVE_VNNI 1
#define VNNI_DPBUSD _mm256_dpbusd_epi32
#define VNNI_DPWSSD _mm256_dpwssd_epi32
#elif defined(__AVXVNNI__)
#define HAVE_VNNI 1
#define VNNI_DPBUSD _mm256_dpbusd_avx_epi32
#define VNNI_DPWSSD _mm256_dpwssd_avx_epi32
#else
#define HAVE_VNNI 0
#endif

#if defined(__AVX2__)
/* acc + the sums of each 32-bit lane's four products u[i] * s[i], u unsigned, s signed */
static inline __m256i dpbusd(__m256i acc, __m256i u, __m256i s) {
#if HAVE_VNNI
    return VNNI_DPBUSD(acc, u, s);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
}

/* acc + the sums of each 32-bit lane's two int16 products a[i] * b[i] */
static inline __m256i dpwssd(__m256i acc, __m256i a, __m256i b) {
#if HAVE_VNNI
    return VNNI_DPWSSD(acc, a, b);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b));
#endif
}
#endif

#endif
