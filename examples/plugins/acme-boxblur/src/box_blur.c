/* acme.box_blur: separable box blur in exact integer sums, parallel over rows with stepchain's
 * conventions: sc_parallel_rows runs this call's team size and schedule (no process-global
 * OpenMP state), and the binding releases the GIL around it.
 *
 * Pass 1 (rows): hsum[y][x] = sum of src[y][x-r .. x+r] (replicate border), from a padded copy
 *   of the row: 2r+1 shifted adds over the whole row, which vectorise (uint16: at most
 *   255 * 201 = 51255).
 * Pass 2 (blocks of rows): a running column sum over 2r+1 hsum rows (one row added, one
 *   dropped per output row), out = floor((sum + area/2) / area). The float division is exact
 *   here: sum < 2^24 and a quotient at least 1/area below an integer never rounds up to it.
 * Sums are exact integers, so the result does not depend on the thread count or schedule. */
#include <string.h>

#include "box_blur.h"

typedef struct {
    const uint8_t *src;
    uint8_t *dst;
    uint16_t *hsum;
    int h, w, c, r;
} box_ctx;

SC_HOT static void hsum_rows(const void *p, int y0, int y1, void *scratch)
{
    const box_ctx *b = p;
    const int w = b->w, c = b->c, r = b->r;
    const size_t n = (size_t)w * c;
    uint16_t *restrict pad = scratch; /* (w + 2r) * c */
    for (int y = y0; y < y1; y++) {
        const uint8_t *restrict in = b->src + (size_t)y * n;
        for (int x = -r; x < w + r; x++) {
            const uint8_t *px = in + (size_t)sc_clampi(x, 0, w - 1) * c;
            for (int ch = 0; ch < c; ch++)
                pad[(size_t)(x + r) * c + ch] = px[ch];
        }
        uint16_t *restrict out = b->hsum + (size_t)y * n;
        memcpy(out, pad, n * sizeof *out);
        for (int k = 1; k <= 2 * r; k++) {
            const uint16_t *restrict shifted = pad + (size_t)k * c;
            for (size_t i = 0; i < n; i++)
                out[i] += shifted[i];
        }
    }
}

SC_HOT static void vsum_rows(const void *p, int y0, int y1, void *scratch)
{
    const box_ctx *b = p;
    const size_t n = (size_t)b->w * b->c;
    const int r = b->r, h = b->h;
    const float area = (float)((2 * r + 1) * (2 * r + 1));
    const uint32_t half = (uint32_t)((2 * r + 1) * (2 * r + 1) / 2);
    uint32_t *restrict acc = scratch;
    for (size_t i = 0; i < n; i++)
        acc[i] = 0;
    for (int k = -r; k <= r; k++) {
        const uint16_t *restrict row = b->hsum + (size_t)sc_clampi(y0 + k, 0, h - 1) * n;
        for (size_t i = 0; i < n; i++)
            acc[i] += row[i];
    }
    for (int y = y0; y < y1; y++) {
        uint8_t *restrict out = b->dst + (size_t)y * n;
        for (size_t i = 0; i < n; i++)
            out[i] = (uint8_t)(int)((float)(acc[i] + half) / area);
        if (y + 1 == y1)
            break;
        const uint16_t *restrict add = b->hsum + (size_t)sc_clampi(y + r + 1, 0, h - 1) * n;
        const uint16_t *restrict drop = b->hsum + (size_t)sc_clampi(y - r, 0, h - 1) * n;
        for (size_t i = 0; i < n; i++)
            acc[i] = acc[i] + add[i] - drop[i];
    }
}

int acme_box_blur(const uint8_t *src, uint8_t *dst, sc_shape s, int radius, const sc_exec *ex)
{
    if (radius < 1 || radius > 100)
        return SC_EINVAL;
    const size_t n = (size_t)s.w * s.c;
    uint16_t *hsum = malloc((size_t)s.h * n * sizeof *hsum);
    if (hsum == NULL)
        return SC_ENOMEM;
    box_ctx b = {src, dst, hsum, s.h, s.w, s.c, radius};
    const int chunk = sc_chunk_rows(8, n);
    const size_t pad_bytes = ((size_t)s.w + 2 * (size_t)radius) * s.c * sizeof(uint16_t);
    int rc = sc_parallel_rows(ex, s.h, chunk, hsum_rows, &b, pad_bytes);
    if (rc == SC_OK)
        rc = sc_parallel_rows(ex, s.h, chunk, vsum_rows, &b, n * sizeof(uint32_t));
    free(hsum);
    return rc;
}
