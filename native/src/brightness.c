/* brightness: out = clamp(round(((in * factor) - 128) * contrast + 128)).
 *
 * The map depends only on the input value. It is built as an exact 256-entry table (double
 * maths, round half up) and then, when an affine fixed-point form reproduces that table for all
 * 256 inputs, the image loop evaluates (A * in + B) >> 12 in 32-bit lanes, which vectorises
 * (a table lookup per byte does not). If no such form matches, the loop uses the table. Either
 * way the output equals the table. Alpha (C == 4) is passed through unchanged. */
#include <math.h>

#include "sc_common.h"

enum { FRAC = 12 };

typedef struct {
    const uint8_t *src;
    uint8_t *dst;
    int w, c;
    int affine;   /* use a * v + b instead of the table */
    int32_t a, b; /* out = clamp((a * v + b) >> FRAC) */
    uint8_t lut[256];
} bright_ctx;

static inline uint8_t affine_u8(int32_t a, int32_t b, int v)
{
    int32_t q = (a * v + b) >> FRAC;
    q = q > 0 ? q : 0;
    return (uint8_t)(q < 255 ? q : 255);
}

SC_HOT static void bright_rows(const void *p, int y0, int y1, void *scratch)
{
    const bright_ctx *b = p;
    /* locals: byte stores may alias *b, which would block vectorising */
    const size_t w = (size_t)b->w, row = w * b->c;
    const int32_t a = b->a, off = b->b;
    const int affine = b->affine, alpha = b->c == 4;
    for (int y = y0; y < y1; y++) {
        const uint8_t *restrict in = b->src + (size_t)y * row;
        uint8_t *restrict out = b->dst + (size_t)y * row;
        if (affine)
            for (size_t i = 0; i < row; i++)
                out[i] = affine_u8(a, off, in[i]);
        else
            for (size_t i = 0; i < row; i++)
                out[i] = b->lut[in[i]];
        if (alpha)
            for (size_t x = 0; x < w; x++)
                out[4 * x + 3] = in[4 * x + 3];
    }
}

/* Finds a, b with affine_u8(a, b, v) == lut[v] for every v; returns 0 when there is none near
 * the real-valued map. */
static int fit_affine(const uint8_t *lut, double slope, double offset, int32_t *a, int32_t *b)
{
    const double scale = (double)(1 << FRAC);
    const int32_t a0 = (int32_t)lround(slope * scale);
    const int32_t b0 = (int32_t)lround((offset + 0.5) * scale);
    for (int da = -2; da <= 2; da++)
        for (int db = -8; db <= 8; db++) {
            int ok = 1;
            for (int v = 0; v < 256 && ok; v++)
                ok = affine_u8(a0 + da, b0 + db, v) == lut[v];
            if (ok) {
                *a = a0 + da;
                *b = b0 + db;
                return 1;
            }
        }
    return 0;
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
    /* |slope| <= 256 and v <= 255 keep a * v + b inside int32 with 12 fractional bits */
    const double slope = factor * contrast, offset = 128.0 - 128.0 * contrast;
    b.affine = fabs(slope) <= 256.0 && fit_affine(b.lut, slope, offset, &b.a, &b.b);
    return sc_parallel_rows(ex, s.h, sc_chunk_rows(32, (size_t)s.w * s.c), bright_rows, &b, 0);
}
