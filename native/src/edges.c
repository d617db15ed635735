/* edges: Sobel gradient magnitude per channel, sqrt(gx^2 + gy^2) clamped to 255, replicate
 * border. Alpha (C == 4) is copied.
 *
 * Separable: per output row, one pass over the three source rows gives the vertical
 * smoothing s = up + 2*mid + down and difference d = down - up into replicate-padded float rows;
 * then gx = s[x+1] - s[x-1] and gy = d[x-1] + 2*d[x] + d[x+1]. All loops run over the row as one
 * contiguous W*C array, so they vectorise. */
#include <math.h>

#include "sc_common.h"

typedef struct {
    const uint8_t *src;
    uint8_t *dst;
    int h, w, c;
} edges_ctx;

SC_HOT static void edges_rows(const void *p, int y0, int y1, void *scratch)
{
    const edges_ctx *e = p;
    const int c = e->c, w = e->w, h = e->h;
    const size_t n = (size_t)w * c;
    /* two padded rows: one pixel of margin on each side */
    float *restrict sp = scratch;
    float *restrict dp = sp + n + 2 * (size_t)c;
    float *restrict s = sp + c, *restrict d = dp + c;
    for (int y = y0; y < y1; y++) {
        const uint8_t *restrict up = e->src + (size_t)sc_clampi(y - 1, 0, h - 1) * n;
        const uint8_t *restrict mid = e->src + (size_t)y * n;
        const uint8_t *restrict dn = e->src + (size_t)sc_clampi(y + 1, 0, h - 1) * n;
        for (size_t i = 0; i < n; i++) {
            s[i] = (float)(up[i] + 2 * mid[i] + dn[i]);
            d[i] = (float)(dn[i] - up[i]);
        }
        for (int ch = 0; ch < c; ch++) {
            sp[ch] = s[ch];
            dp[ch] = d[ch];
            s[n + ch] = s[n - c + ch];
            d[n + ch] = d[n - c + ch];
        }
        uint8_t *restrict out = e->dst + (size_t)y * n;
        for (size_t i = 0; i < n; i++) {
            const float gx = s[i + c] - s[i - c];
            const float gy = d[i - c] + 2.0f * d[i] + d[i + c];
            const float m = sqrtf(gx * gx + gy * gy);
            out[i] = (uint8_t)((m > 255.0f ? 255.0f : m) + 0.5f);
        }
        if (c == 4)
            for (int x = 0; x < w; x++)
                out[4 * x + 3] = mid[4 * x + 3];
    }
}

int sc_edges(const uint8_t *src, uint8_t *dst, sc_shape s, const sc_exec *ex)
{
    edges_ctx e = {src, dst, s.h, s.w, s.c};
    size_t scratch = 2 * ((size_t)s.w * s.c + 2 * (size_t)s.c) * sizeof(float);
    return sc_parallel_rows(ex, s.h, sc_chunk_rows(16, (size_t)s.w * s.c), edges_rows, &e, scratch);
}
