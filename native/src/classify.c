/* classify: image measures behind the sharpness / exposure / colour labels.
 *
 * - luma Y = 0.299 R + 0.587 G + 0.114 B (BT.601, float; C == 1: the value itself)
 * - variance of the 4-neighbour Laplacian [0 1 0; 1 -4 1; 0 1 0] of Y, replicate border
 * - mean of Y
 * - Hasler & Suesstrunk colourfulness: rg = R - G, yb = (R + G) / 2 - B,
 *   sqrt(var_rg + var_yb) + 0.3 * sqrt(mean_rg^2 + mean_yb^2)  (0 for one channel)
 *
 * Deterministic for every thread count and schedule: each row's sums (double) land in their own
 * slot of an array and are added up serially in row order afterwards, so the floating-point
 * summation order never depends on which thread ran which rows. */
#include <math.h>
#include <stdlib.h>

#include "sc_common.h"

enum { S_LUMA, S_RG, S_RG2, S_YB, S_YB2, S_LAP, S_LAP2, S_COUNT };

typedef struct {
    const uint8_t *src;
    float *luma;  /* H x W */
    double *sums; /* H x S_COUNT */
    int h, w, c;
} cls_ctx;

/* Pass 1: luma and the colour sums of each row. */
SC_HOT static void cls_luma_rows(const void *p, int y0, int y1, void *scratch)
{
    const cls_ctx *k = p;
    const int w = k->w, c = k->c;
    for (int y = y0; y < y1; y++) {
        const uint8_t *restrict in = k->src + (size_t)y * w * c;
        float *restrict l = k->luma + (size_t)y * w;
        double *s = k->sums + (size_t)y * S_COUNT;
        double sl = 0, rg = 0, rg2 = 0, yb = 0, yb2 = 0;
        if (c == 1) {
            for (int x = 0; x < w; x++) {
                l[x] = (float)in[x];
                sl += l[x];
            }
        } else {
            for (int x = 0; x < w; x++) {
                const float r = in[c * x], g = in[c * x + 1], b = in[c * x + 2];
                l[x] = 0.299f * r + 0.587f * g + 0.114f * b;
                const float a = r - g, d = 0.5f * (r + g) - b;
                sl += l[x];
                rg += a;
                rg2 += (double)a * a;
                yb += d;
                yb2 += (double)d * d;
            }
        }
        s[S_LUMA] = sl;
        s[S_RG] = rg;
        s[S_RG2] = rg2;
        s[S_YB] = yb;
        s[S_YB2] = yb2;
    }
}

/* Pass 2: Laplacian sums of each row (needs the luma of the rows above and below). */
SC_HOT static void cls_lap_rows(const void *p, int y0, int y1, void *scratch)
{
    const cls_ctx *k = p;
    const int w = k->w, h = k->h;
    float *restrict pad = scratch; /* the centre row with one replicated pixel on each side */
    float *restrict lap = pad + w + 2;
    for (int y = y0; y < y1; y++) {
        const float *restrict up = k->luma + (size_t)sc_clampi(y - 1, 0, h - 1) * w;
        const float *restrict mid = k->luma + (size_t)y * w;
        const float *restrict dn = k->luma + (size_t)sc_clampi(y + 1, 0, h - 1) * w;
        pad[0] = mid[0];
        for (int x = 0; x < w; x++)
            pad[x + 1] = mid[x];
        pad[w + 1] = mid[w - 1];
        for (int x = 0; x < w; x++)
            lap[x] = up[x] + dn[x] + pad[x] + pad[x + 2] - 4.0f * pad[x + 1];
        double s1 = 0, s2 = 0;
        for (int x = 0; x < w; x++) {
            s1 += lap[x];
            s2 += (double)lap[x] * lap[x];
        }
        k->sums[(size_t)y * S_COUNT + S_LAP] = s1;
        k->sums[(size_t)y * S_COUNT + S_LAP2] = s2;
    }
}

int sc_classify(const uint8_t *src, sc_shape s, sc_measures *out, const sc_exec *ex)
{
    float *luma = malloc(sizeof(float) * (size_t)s.h * s.w);
    double *sums = malloc(sizeof(double) * (size_t)s.h * S_COUNT);
    int rc = SC_ENOMEM;
    if (luma == NULL || sums == NULL)
        goto done;
    cls_ctx k = {src, luma, sums, s.h, s.w, s.c};
    const int chunk = sc_chunk_rows(16, (size_t)s.w * s.c);
    rc = sc_parallel_rows(ex, s.h, chunk, cls_luma_rows, &k, 0);
    if (rc == SC_OK)
        rc = sc_parallel_rows(ex, s.h, chunk, cls_lap_rows, &k,
                              sizeof(float) * (2 * (size_t)s.w + 2));
    if (rc != SC_OK)
        goto done;
    double t[S_COUNT] = {0};
    for (int y = 0; y < s.h; y++) /* serial, in row order: the same sum for any thread count */
        for (int j = 0; j < S_COUNT; j++)
            t[j] += sums[(size_t)y * S_COUNT + j];
    const double n = (double)s.h * s.w;
    const double lap_mean = t[S_LAP] / n;
    out->laplacian_var = fmax(0.0, t[S_LAP2] / n - lap_mean * lap_mean);
    out->mean_luma = t[S_LUMA] / n;
    if (s.c == 1) {
        out->colorfulness = 0.0;
    } else {
        const double mrg = t[S_RG] / n, myb = t[S_YB] / n;
        const double vrg = fmax(0.0, t[S_RG2] / n - mrg * mrg);
        const double vyb = fmax(0.0, t[S_YB2] / n - myb * myb);
        out->colorfulness = sqrt(vrg + vyb) + 0.3 * sqrt(mrg * mrg + myb * myb);
    }
done:
    free(luma);
    free(sums);
    return rc;
}
