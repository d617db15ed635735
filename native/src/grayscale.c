/* grayscale: ITU-R BT.601 luma, Y = 0.299 R + 0.587 G + 0.114 B.
 *
 * Fixed point with 15 fractional bits and round-half-up: the weights 9798 + 19235 + 3735 = 2^15
 * are the ones OpenCV 5's cvtColor(RGB2GRAY) uses, so results are bit-identical to it. Output has
 * one channel; alpha (C == 4) is dropped; a one-channel input is copied. */
#include <string.h>

#include "sc_common.h"

enum { R_W = 9798, G_W = 19235, B_W = 3735, SHIFT = 15 };

typedef struct {
    const uint8_t *src;
    uint8_t *dst;
    int w, c;
} gray_ctx;

/* The weights split as w = 256 * hi + lo so every product and sum fits 16 bits (twice the lanes
 * of 32-bit math). Exact: (256 A + B) >> 15 == (A + (B >> 8)) >> 7 for A, B >= 0; the rounding
 * term 1 << 14 = 64 * 256 moves into A, and lo weights sum to 256 so B <= 255 * 256. */
enum { R_HI = R_W >> 8, G_HI = G_W >> 8, B_HI = B_W >> 8 };
enum { R_LO = R_W & 255, G_LO = G_W & 255, B_LO = B_W & 255 };

static inline uint8_t luma_u8(unsigned r, unsigned g, unsigned b)
{
    const uint16_t hi = (uint16_t)(r * R_HI + g * G_HI + b * B_HI + (1 << (SHIFT - 9)));
    const uint16_t lo = (uint16_t)(r * R_LO + g * G_LO + b * B_LO);
    return (uint8_t)((uint16_t)(hi + (lo >> 8)) >> (SHIFT - 8));
}

SC_HOT static void gray_rows_rgb(const void *p, int y0, int y1, void *scratch)
{
    const gray_ctx *g = p;
    const size_t w = (size_t)g->w; /* a local: uint8_t stores may alias *g and block vectorising */
    for (int y = y0; y < y1; y++) {
        const uint8_t *restrict in = g->src + (size_t)y * w * 3;
        uint8_t *restrict out = g->dst + (size_t)y * w;
        for (size_t x = 0; x < w; x++)
            out[x] = luma_u8(in[3 * x], in[3 * x + 1], in[3 * x + 2]);
    }
}

SC_HOT static void gray_rows_rgba(const void *p, int y0, int y1, void *scratch)
{
    const gray_ctx *g = p;
    const size_t w = (size_t)g->w;
    for (int y = y0; y < y1; y++) {
        const uint8_t *restrict in = g->src + (size_t)y * w * 4;
        uint8_t *restrict out = g->dst + (size_t)y * w;
        for (size_t x = 0; x < w; x++)
            out[x] = luma_u8(in[4 * x], in[4 * x + 1], in[4 * x + 2]);
    }
}

int sc_grayscale(const uint8_t *src, uint8_t *dst, sc_shape s, const sc_exec *ex)
{
    if (s.c == 1)
        return sc_identity(src, dst, s, ex);
    gray_ctx g = {src, dst, s.w, s.c};
    return sc_parallel_rows(ex, s.h, sc_chunk_rows(32, (size_t)s.w * s.c),
                            s.c == 3 ? gray_rows_rgb : gray_rows_rgba, &g, 0);
}
