/* classify: image measures behind the sharpness / exposure / colour labels.
 *
 * - luma Y = 0.299 R + 0.587 G + 0.114 B (BT.601; C == 1: the value itself)
 * - variance of the 4-neighbour Laplacian [0 1 0; 1 -4 1; 0 1 0] of Y, replicate border
 * - mean of Y
 * - Hasler & Suesstrunk colourfulness: rg = R - G, yb = (R + G) / 2 - B,
 *   sqrt(var_rg + var_yb) + 0.3 * sqrt(mean_rg^2 + mean_yb^2)  (0 for one channel)
 *
 * One fused pass over the image, in exact integer arithmetic: luma is kept as
 * L = 299 R + 587 G + 114 B (= 1000 Y exactly), its Laplacian is an integer, and 2 yb =
 * R + G - 2 B is one too. Each thread keeps the luma of three rows (above, centre, below) in its
 * scratch, so luma is computed about once per row and never stored for the whole image. Every
 * row's sums are exact integers (int32 within 256-pixel blocks, int64 across them), stored in
 * the row's own slot and added up serially in row order afterwards: the result does not depend
 * on thread count, schedule or the order of the vectorised additions. */
#include <math.h>
#include <stdlib.h>

#include "sc_common.h"

enum { S_LUMA, S_RG, S_RG2, S_YB, S_YB2, S_LAP, S_LAP2, S_COUNT };
enum { BLOCK = 256 }; /* pixels whose int32 partial sums cannot overflow */

typedef struct {
    const uint8_t *src;
    int64_t *sums; /* H x S_COUNT */
    int h, w, c;
} cls_ctx;

/* L = 1000 Y of pixels [x0, x1) (at most BLOCK) with C = cs, and their colour sums into s.
 * Inlined with a literal cs so the strided loads vectorise. */
static inline __attribute__((always_inline)) void luma_block(const uint8_t *restrict in,
                                                             int32_t *restrict l, int x0, int x1,
                                                             int cs, int64_t *restrict s)
{
    int32_t rg = 0, rg2 = 0, yb = 0, yb2 = 0;
    for (int x = x0; x < x1; x++) {
        const int32_t r = in[cs * x], g = in[cs * x + 1], b = in[cs * x + 2];
        l[x] = 299 * r + 587 * g + 114 * b;
        const int32_t a = r - g, d = r + g - 2 * b;
        rg += a;
        rg2 += a * a;
        yb += d;
        yb2 += d * d;
    }
    s[S_RG] += rg;
    s[S_RG2] += rg2;
    s[S_YB] += yb;
    s[S_YB2] += yb2;
}

/* L = 1000 Y of one row; adds the row's colour sums into s. */
SC_HOT static void luma_row(const uint8_t *restrict in, int32_t *restrict l, int w, int c,
                            int64_t *restrict s)
{
    if (c == 1) {
        for (int x = 0; x < w; x++)
            l[x] = 1000 * (int32_t)in[x];
        return;
    }
    for (int x0 = 0; x0 < w; x0 += BLOCK) {
        const int x1 = x0 + BLOCK < w ? x0 + BLOCK : w;
        if (c == 3)
            luma_block(in, l, x0, x1, 3, s);
        else
            luma_block(in, l, x0, x1, 4, s);
    }
}

/* Luma and Laplacian sums of the centre row `mid` (up/dn: the rows above and below). */
SC_HOT static void lap_row(const int32_t *restrict up, const int32_t *restrict mid,
                           const int32_t *restrict dn, int w, int64_t *restrict s)
{
    int64_t sl = 0, s1 = 0, s2 = 0; /* L <= 255000: an int64 sum never overflows */
    for (int x0 = 0; x0 < w; x0 += BLOCK) {
        const int x1 = x0 + BLOCK < w ? x0 + BLOCK : w;
        /* interior pixels; the two border pixels (replicate) are added below */
        const int a = x0 > 1 ? x0 : 1, b = x1 < w - 1 ? x1 : w - 1;
        int32_t b1 = 0;
        int64_t b2 = 0;
        for (int x = a; x < b; x++) {
            const int32_t v = up[x] + dn[x] + mid[x - 1] + mid[x + 1] - 4 * mid[x];
            b1 += v;
            b2 += (int64_t)v * v;
        }
        s1 += b1;
        s2 += b2;
    }
    for (int x = 0; x < w; x++)
        sl += mid[x];
    const int last = w - 1;
    for (int k = 0; k < (w > 1 ? 2 : 1); k++) {
        const int x = k ? last : 0;
        const int32_t left = mid[x > 0 ? x - 1 : 0], right = mid[x < last ? x + 1 : last];
        const int32_t v = up[x] + dn[x] + left + right - 4 * mid[x];
        s1 += v;
        s2 += (int64_t)v * v;
    }
    s[S_LUMA] = sl;
    s[S_LAP] = s1;
    s[S_LAP2] = s2;
}

static void cls_rows(const void *p, int y0, int y1, void *scratch)
{
    const cls_ctx *k = p;
    const int w = k->w, h = k->h, c = k->c;
    const size_t n = (size_t)w * c;
    int32_t *ring = scratch; /* three luma rows; row r lives in slot r % 3 */
    int tag[3] = {-1, -1, -1};
    int64_t spare[S_COUNT] = {0};
    for (int y = y0; y < y1; y++)
        for (int j = 0; j < S_COUNT; j++)
            k->sums[(size_t)y * S_COUNT + j] = 0;
    for (int y = y0; y < y1; y++) {
        const int rows[3] = {sc_clampi(y - 1, 0, h - 1), y, sc_clampi(y + 1, 0, h - 1)};
        for (int j = 0; j < 3; j++) {
            const int r = rows[j], slot = r % 3;
            if (tag[slot] == r)
                continue;
            /* the rows are visited in order, so each row of [y0, y1) is computed once here and
             * its colour sums go to its own slot; the rows just outside are the neighbours of
             * another chunk, whose sums it counts */
            int64_t *into = r >= y0 && r < y1 ? k->sums + (size_t)r * S_COUNT : spare;
            luma_row(k->src + (size_t)r * n, ring + (size_t)slot * w, w, c, into);
            tag[slot] = r;
        }
        lap_row(ring + (size_t)(rows[0] % 3) * w, ring + (size_t)(y % 3) * w,
                ring + (size_t)(rows[2] % 3) * w, w, k->sums + (size_t)y * S_COUNT);
    }
}

int sc_classify(const uint8_t *src, sc_shape s, sc_measures *out, const sc_exec *ex)
{
    int64_t *sums = malloc(sizeof(int64_t) * (size_t)s.h * S_COUNT);
    if (sums == NULL)
        return SC_ENOMEM;
    cls_ctx k = {src, sums, s.h, s.w, s.c};
    const int rc = sc_parallel_rows(ex, s.h, sc_chunk_rows(16, (size_t)s.w * s.c), cls_rows, &k,
                                    sizeof(int32_t) * 3 * (size_t)s.w);
    if (rc != SC_OK) {
        free(sums);
        return rc;
    }
    double t[S_COUNT] = {0};
    for (int y = 0; y < s.h; y++) /* serial, in row order: the same sum for any thread count */
        for (int j = 0; j < S_COUNT; j++)
            t[j] += (double)sums[(size_t)y * S_COUNT + j];
    free(sums);
    const double n = (double)s.h * s.w;
    /* L, its Laplacian and 2 yb are 1000 Y, 1000 lap(Y) and 2 yb */
    const double lap_mean = t[S_LAP] / (1000.0 * n);
    out->laplacian_var = fmax(0.0, t[S_LAP2] / (1e6 * n) - lap_mean * lap_mean);
    out->mean_luma = t[S_LUMA] / (1000.0 * n);
    if (s.c == 1) {
        out->colorfulness = 0.0;
    } else {
        const double mrg = t[S_RG] / n, myb = t[S_YB] / (2.0 * n);
        const double vrg = fmax(0.0, t[S_RG2] / n - mrg * mrg);
        const double vyb = fmax(0.0, t[S_YB2] / (4.0 * n) - myb * myb);
        out->colorfulness = sqrt(vrg + vyb) + 0.3 * sqrt(mrg * mrg + myb * myb);
    }
    return SC_OK;
}
