/* acme.box_blur: separable box blur in exact integer sums, parallel over rows with stepchain's
 * conventions: sc_parallel_rows runs this call's team size and schedule (no process-global
 * OpenMP state), and the binding releases the GIL around it.
 *
 * Pass 1 (rows): hsum[y][x] = sum of src[y][x-r .. x+r] (replicate border), a running sum.
 * Pass 2 (rows): out[y][x] = round(sum of hsum[y-r .. y+r][x] / (2r+1)^2), replicate border;
 * the inner loop runs along the row so it vectorises. Sums are exact integers, so the result
 * does not depend on the thread count or schedule. */
#include <stdlib.h>

#include "box_blur.h"

typedef struct {
    const uint8_t *src;
    uint8_t *dst;
    uint32_t *hsum;
    int h, w, c, r;
} box_ctx;

static void hsum_rows(const void *p, int y0, int y1, void *scratch)
{
    const box_ctx *b = p;
    const int w = b->w, c = b->c, r = b->r;
    for (int y = y0; y < y1; y++) {
        const uint8_t *in = b->src + (size_t)y * w * c;
        uint32_t *out = b->hsum + (size_t)y * w * c;
        for (int ch = 0; ch < c; ch++) {
            uint32_t acc = 0;
            for (int k = -r; k <= r; k++)
                acc += in[(size_t)sc_clampi(k, 0, w - 1) * c + ch];
            out[ch] = acc;
            for (int x = 1; x < w; x++) {
                acc += in[(size_t)sc_clampi(x + r, 0, w - 1) * c + ch];
                acc -= in[(size_t)sc_clampi(x - r - 1, 0, w - 1) * c + ch];
                out[(size_t)x * c + ch] = acc;
            }
        }
    }
}

SC_HOT static void vsum_rows(const void *p, int y0, int y1, void *scratch)
{
    const box_ctx *b = p;
    const size_t n = (size_t)b->w * b->c;
    const int r = b->r, h = b->h;
    const uint32_t area = (uint32_t)(2 * r + 1) * (uint32_t)(2 * r + 1);
    uint32_t *restrict acc = scratch;
    for (int y = y0; y < y1; y++) {
        for (size_t i = 0; i < n; i++)
            acc[i] = 0;
        for (int k = -r; k <= r; k++) {
            const uint32_t *restrict row = b->hsum + (size_t)sc_clampi(y + k, 0, h - 1) * n;
            for (size_t i = 0; i < n; i++)
                acc[i] += row[i];
        }
        uint8_t *restrict out = b->dst + (size_t)y * n;
        for (size_t i = 0; i < n; i++)
            out[i] = (uint8_t)((acc[i] + area / 2) / area);
    }
}

int acme_box_blur(const uint8_t *src, uint8_t *dst, sc_shape s, int radius, const sc_exec *ex)
{
    if (radius < 1 || radius > 100)
        return SC_EINVAL;
    const size_t n = (size_t)s.w * s.c;
    uint32_t *hsum = malloc((size_t)s.h * n * sizeof *hsum);
    if (hsum == NULL)
        return SC_ENOMEM;
    box_ctx b = {src, dst, hsum, s.h, s.w, s.c, radius};
    const int chunk = sc_chunk_rows(8, n);
    int rc = sc_parallel_rows(ex, s.h, chunk, hsum_rows, &b, 0);
    if (rc == SC_OK)
        rc = sc_parallel_rows(ex, s.h, chunk, vsum_rows, &b, n * sizeof(uint32_t));
    free(hsum);
    return rc;
}
