/* grayscale: ITU-R BT.601 luma, Y = 0.299 R + 0.587 G + 0.114 B.
 *
 * Fixed point with 14 fractional bits and round-half-up, the same constants OpenCV's
 * cvtColor(RGB2GRAY) uses, so results are bit-identical to it. Output has one channel;
 * alpha (C == 4) is dropped; a one-channel input is copied. */
#include <string.h>

#include "sc_common.h"

enum { R_W = 4899, G_W = 9617, B_W = 1868, SHIFT = 14 };

typedef struct {
    const uint8_t *src;
    uint8_t *dst;
    int w, c;
} gray_ctx;

SC_HOT static void gray_rows_rgb(const void *p, int y0, int y1, void *scratch)
{
    const gray_ctx *g = p;
    for (int y = y0; y < y1; y++) {
        const uint8_t *restrict in = g->src + (size_t)y * g->w * 3;
        uint8_t *restrict out = g->dst + (size_t)y * g->w;
        for (int x = 0; x < g->w; x++)
            out[x] = (uint8_t)((in[3 * x] * R_W + in[3 * x + 1] * G_W + in[3 * x + 2] * B_W +
                                (1 << (SHIFT - 1))) >> SHIFT);
    }
}

SC_HOT static void gray_rows_rgba(const void *p, int y0, int y1, void *scratch)
{
    const gray_ctx *g = p;
    for (int y = y0; y < y1; y++) {
        const uint8_t *restrict in = g->src + (size_t)y * g->w * 4;
        uint8_t *restrict out = g->dst + (size_t)y * g->w;
        for (int x = 0; x < g->w; x++)
            out[x] = (uint8_t)((in[4 * x] * R_W + in[4 * x + 1] * G_W + in[4 * x + 2] * B_W +
                                (1 << (SHIFT - 1))) >> SHIFT);
    }
}

int sc_grayscale(const uint8_t *src, uint8_t *dst, sc_shape s, const sc_exec *ex)
{
    if (s.c == 1)
        return sc_identity(src, dst, s, ex);
    gray_ctx g = {src, dst, s.w, s.c};
    return sc_parallel_rows(ex, s.h, 32, s.c == 3 ? gray_rows_rgb : gray_rows_rgba, &g, 0);
}
