/* Rows of weights back to float32, value for value as ggml's dequantize_row_* (for embedding lookups). */
#ifndef LLAMANP_DEQUANT_H
#define LLAMANP_DEQUANT_H

#include "vec_dot.h"

/* y = the n weights of row x; returns 0, or -1 for a type without a compiled dequantiser. */
static inline int dequantize_row(int type, const uint8_t *x, int64_t n, float *y) {
    switch (type) {
        case T_F32: memcpy(y, x, (size_t)n * sizeof(float)); return 0;
        case T_F16: {
            const uint16_t *h = (const uint16_t *)x;
            for (int64_t i = 0; i < n; i++) y[i] = fp16_to_fp32(h[i]);
            return 0;
        }
        case T_BF16: {
            const uint16_t *h = (const uint16_t *)x;
            for (int64_t i = 0; i < n; i++) y[i] = bf16_to_fp32(h[i]);
            return 0;
        }
        case T_Q4_0: case T_Q4_1: case T_Q5_0: case T_Q5_1: case T_Q8_0: {
            const int has_min = type == T_Q4_1 || type == T_Q5_1;
            const int64_t block_bytes = type_row_bytes(type, QK);
            for (int64_t b = 0; b < n / QK; b++, x += block_bytes, y += QK) {
                uint16_t d, m = 0;
                int8_t q[QK];
                memcpy(&d, x, 2);
                if (has_min) memcpy(&m, x + 2, 2);
                block32_quants(type, x, q);
                for (int j = 0; j < QK; j++)
                    y[j] = has_min ? (float)q[j] * fp16_to_fp32(d) + fp16_to_fp32(m) : (float)q[j] * fp16_to_fp32(d);
            }
            return 0;
        }
        case T_Q4_K: case T_Q5_K: case T_Q6_K: {
            const int64_t block_bytes = type_row_bytes(type, QK_K);
            kq_block u;
            for (int64_t b = 0; b < n / QK_K; b++, x += block_bytes, y += QK_K) {
                kq_unpack(type, x, &u);
                for (int j = 0; j < QK_K; j++) {
                    const float scale = u.d * (float)u.sc[j / 16];
                    y[j] = type == T_Q6_K ? scale * (float)(u.q[j] - 32)
                                       : scale * (float)u.q[j] - u.dmin * (float)u.mn[j / 16];
                }
            }
            return 0;
        }
        default: return -1;
    }
}

#endif
