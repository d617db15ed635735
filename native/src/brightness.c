/* brightness: out = clamp(round(((in * factor) - 128) * contrast + 128)).
 *
 * The map depends only on the input value, so it is folded into a 256-entry table once per
 * call and the image loop is a pure lookup. Alpha (C == 4) is passed through unchanged. */
#include <math.h>

#include "sc_common.h"

typedef struct {
    const uint8_t *src;
    uint8_t *dst;
    int w, c;
    uint8_t lut[256];
} bright_ctx;

static void bright_rows(const void *p, int y0, int y1, void *scratch)
{
    const bright_ctx *b = p;
    const size_t row = (size_t)b->w * b->c;
    for (int y = y0; y < y1; y++) {
        const uint8_t *restrict in = b->src + (size_t)y * row;
        uint8_t *restrict out = b->dst + (size_t)y * row;
        if (b->c == 4) {
            for (int x = 0; x < b->w; x++) {
                out[4 * x] = b->lut[in[4 * x]];
                out[4 * x + 1] = b->lut[in[4 * x + 1]];
                out[4 * x + 2] = b->lut[in[4 * x + 2]];
                out[4 * x + 3] = in[4 * x + 3];
            }
        } else {
            for (size_t i = 0; i < row; i++)
                out[i] = b->lut[in[i]];
        }
    }
}

int sc_brightness(const uint8_t *src, uint8_t *dst, sc_shape s, double factor, double contrast,
                  const sc_exec *ex)
{
    bright_ctx b = {.src = src, .dst = dst, .w = s.w, .c = s.c};
    for (int v = 0; v < 256; v++) {
        double o = ((double)v * factor - 128.0) * contrast + 128.0;
        o = o < 0.0 ? 0.0 : (o > 255.0 ? 255.0 : o);
        b.lut[v] = (uint8_t)floor(o + 0.5);
    }
    return sc_parallel_rows(ex, s.h, sc_chunk_rows(32, (size_t)s.w * s.c), bright_rows, &b, 0);
}
