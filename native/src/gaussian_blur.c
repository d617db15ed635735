/* gaussian_blur: separable Gaussian with replicate border.
 *
 * Per output row: a vertical pass over the 2r+1 source rows (folded pairwise, the kernel is
 * symmetric) writes one float row into the middle of a replicate-padded buffer, then a
 * horizontal pass over that buffer produces the output row. Both passes run over the row as
 * one contiguous W*C array, tap-major, so the inner loops are plain multiply-adds that
 * vectorise; the replicate border costs 2r pixels of copying per row instead of clamped
 * indices in the hot loop. Each thread keeps its buffers in sc_parallel_rows' scratch.
 *
 * The same row machinery serves sharpen (unsharp mask fused into the last loop) and the float
 * Gaussian used by deblur. */
#include <math.h>
#include <stdlib.h>

#include "sc_common.h"

void sc_gaussian_weights(float *k, int radius, double sigma)
{
    /* summed and divided in double so the float weights add up to 1 within rounding */
    double sum = 0.0;
    for (int i = -radius; i <= radius; i++)
        sum += exp(-(double)i * i / (2.0 * sigma * sigma));
    for (int i = -radius; i <= radius; i++)
        k[i + radius] = (float)(exp(-(double)i * i / (2.0 * sigma * sigma)) / sum);
}

typedef struct {
    const void *src; /* uint8_t or float rows */
    void *dst;
    int h, w, c, r;
    const float *k;  /* 2r+1 weights */
    float amount;    /* sharpen strength; 0 = plain blur */
    int sharpen;
} blur_ctx;

/* Scratch layout per thread: padded row (W + 2r) * C floats, then an accumulator of W * C. */
static size_t blur_scratch(int w, int c, int r)
{
    return ((size_t)(w + 2 * r) * c + (size_t)w * c) * sizeof(float) + 64;
}

/* Copies the edge pixels of the row at pad + r*C into the r-pixel margins on both sides. */
static inline void replicate_margins(float *pad, int w, int c, int r)
{
    const float *first = pad + (size_t)r * c, *last = pad + (size_t)(r + w - 1) * c;
    for (int j = 0; j < r; j++)
        for (int ch = 0; ch < c; ch++) {
            pad[(size_t)j * c + ch] = first[ch];
            pad[(size_t)(r + w + j) * c + ch] = last[ch];
        }
}

/* Horizontal pass: acc[i] = sum_j k[j] * pad[i + j*C], folded around the centre tap. */
SC_HOT static void horizontal(const float *restrict pad, float *restrict acc, size_t n, int c,
                              int r, const float *restrict kc)
{
    const float *restrict mid = pad + (size_t)r * c;
    const float k0 = kc[0];
    for (size_t i = 0; i < n; i++)
        acc[i] = k0 * mid[i];
    for (int j = 1; j <= r; j++) {
        const float kj = kc[j];
        const float *restrict lo = mid - (size_t)j * c, *restrict hi = mid + (size_t)j * c;
        for (size_t i = 0; i < n; i++)
            acc[i] += kj * (lo[i] + hi[i]);
    }
}

SC_HOT static void blur_rows_u8(const void *p, int y0, int y1, void *scratch)
{
    const blur_ctx *b = p;
    const int c = b->c, r = b->r, h = b->h;
    const size_t n = (size_t)b->w * c;
    const float *restrict kc = b->k + r;
    float *restrict pad = scratch;
    float *restrict row = pad + (size_t)r * c;
    float *restrict acc = pad + (size_t)(b->w + 2 * r) * c;
    const uint8_t *src = b->src;
    uint8_t *dst = b->dst;
    for (int y = y0; y < y1; y++) {
        const uint8_t *restrict centre = src + (size_t)y * n;
        const float k0 = kc[0];
        for (size_t i = 0; i < n; i++)
            row[i] = k0 * (float)centre[i];
        for (int j = 1; j <= r; j++) {
            const uint8_t *restrict up = src + (size_t)sc_clampi(y - j, 0, h - 1) * n;
            const uint8_t *restrict dn = src + (size_t)sc_clampi(y + j, 0, h - 1) * n;
            const float kj = kc[j];
            for (size_t i = 0; i < n; i++)
                row[i] += kj * (float)(up[i] + dn[i]);
        }
        replicate_margins(pad, b->w, c, r);
        horizontal(pad, acc, n, c, r, kc);
        uint8_t *restrict out = dst + (size_t)y * n;
        if (b->sharpen) {
            const float a = b->amount, a1 = 1.0f + b->amount;
            for (size_t i = 0; i < n; i++)
                out[i] = sc_clamp_u8f(a1 * (float)centre[i] - a * acc[i]);
        } else {
            for (size_t i = 0; i < n; i++)
                out[i] = sc_clamp_u8f(acc[i]);
        }
    }
}

SC_HOT static void blur_rows_f32(const void *p, int y0, int y1, void *scratch)
{
    const blur_ctx *b = p;
    const int c = b->c, r = b->r, h = b->h;
    const size_t n = (size_t)b->w * c;
    const float *restrict kc = b->k + r;
    float *restrict pad = scratch;
    float *restrict row = pad + (size_t)r * c;
    const float *src = b->src;
    float *dst = b->dst;
    for (int y = y0; y < y1; y++) {
        const float *restrict centre = src + (size_t)y * n;
        const float k0 = kc[0];
        for (size_t i = 0; i < n; i++)
            row[i] = k0 * centre[i];
        for (int j = 1; j <= r; j++) {
            const float *restrict up = src + (size_t)sc_clampi(y - j, 0, h - 1) * n;
            const float *restrict dn = src + (size_t)sc_clampi(y + j, 0, h - 1) * n;
            const float kj = kc[j];
            for (size_t i = 0; i < n; i++)
                row[i] += kj * (up[i] + dn[i]);
        }
        replicate_margins(pad, b->w, c, r);
        horizontal(pad, dst + (size_t)y * n, n, c, r, kc);
    }
}

int sc_gaussian_f32(const float *src, float *dst, sc_shape s, const float *k, int radius,
                    const sc_exec *ex)
{
    blur_ctx b = {src, dst, s.h, s.w, s.c, radius, k, 0.0f, 0};
    return sc_parallel_rows(ex, s.h, 8, blur_rows_f32, &b, blur_scratch(s.w, s.c, radius));
}

/* u8 -> u8 Gaussian; with `sharpen` the output is clamp(in + amount * (in - blur)). */
int sc_gaussian_u8(const uint8_t *src, uint8_t *dst, sc_shape s, double sigma, int radius,
                   int sharpen, double amount, const sc_exec *ex)
{
    if (radius < 1 || !(sigma > 0.0))
        return SC_EINVAL;
    float *k = malloc(sizeof(float) * (size_t)(2 * radius + 1));
    if (k == NULL)
        return SC_ENOMEM;
    sc_gaussian_weights(k, radius, sigma);
    blur_ctx b = {src, dst, s.h, s.w, s.c, radius, k, (float)amount, sharpen};
    int rc = sc_parallel_rows(ex, s.h, 8, blur_rows_u8, &b, blur_scratch(s.w, s.c, radius));
    free(k);
    return rc;
}

int sc_gaussian_blur(const uint8_t *src, uint8_t *dst, sc_shape s, double sigma, int radius,
                     const sc_exec *ex)
{
    return sc_gaussian_u8(src, dst, s, sigma, radius, 0, 0.0, ex);
}
