/* deblur: Richardson-Lucy deconvolution with a Gaussian PSF, per channel, in float.
 *
 *   u_0 = d;  u_{k+1} = u_k * G(d / max(G(u_k), eps))
 *
 * G is the normalised separable Gaussian with replicate border (sc_gaussian_f32); the PSF is
 * symmetric, so its adjoint is G itself. The division and the multiplication are fused into
 * the blurs' per-row output (sc_gaussian_f32 epilogues), so an iteration is two passes over the
 * image, all with this call's threads and schedule. The two float planes come from the cached
 * workspace (sc_workspace_take), so a repeated call does not fault in 8 bytes per sample. */
#include <stdlib.h>

#include "sc_common.h"

/* Guards the division where the re-blurred estimate is (near) zero; the ratio is 0 there. */
#define RL_EPS 1e-6f

typedef struct {
    const uint8_t *obs;
    float *u, *t; /* estimate and work buffer */
    uint8_t *dst;
    size_t row;   /* W * C */
} rl_ctx;

SC_HOT static void rl_init(const void *p, int y0, int y1, void *scratch)
{
    const rl_ctx *r = p;
    for (size_t i = (size_t)y0 * r->row; i < (size_t)y1 * r->row; i++)
        r->u[i] = (float)r->obs[i];
}

SC_HOT static void rl_store(const void *p, int y0, int y1, void *scratch)
{
    const rl_ctx *r = p;
    const float *restrict u = r->u;
    uint8_t *restrict out = r->dst;
    /* bounds in locals: byte stores may alias *r, which would block vectorising */
    const size_t i0 = (size_t)y0 * r->row, i1 = (size_t)y1 * r->row;
    for (size_t i = i0; i < i1; i++)
        out[i] = sc_clamp_u8f(u[i]);
}

int sc_deblur(const uint8_t *src, uint8_t *dst, sc_shape s, double sigma, int radius,
              int iterations, const sc_exec *ex)
{
    if (radius < 1 || !(sigma > 0.0) || iterations < 1)
        return SC_EINVAL;
    const size_t n = (size_t)s.h * s.w * s.c;
    float k[2 * SC_MAX_RADIUS + 1];
    if (radius > SC_MAX_RADIUS || n > SIZE_MAX / (2 * sizeof(float)))
        return SC_EINVAL;
    /* u and t share one cached workspace: no allocation and no page faults on a repeat call */
    float *u = sc_workspace_take(2 * sizeof(float) * n), *t = u + n;
    int rc = SC_ENOMEM;
    if (u == NULL)
        goto done;
    sc_gaussian_weights(k, radius, sigma);
    rl_ctx r = {src, u, t, dst, (size_t)s.w * s.c};
    const int chunk = sc_chunk_rows(16, r.row);
    rc = sc_parallel_rows(ex, s.h, chunk, rl_init, &r, 0);
    for (int it = 0; it < iterations && rc == SC_OK; it++) {
        /* t = d / max(G(u), eps), then u *= G(t): the element-wise steps ride on the blurs */
        rc = sc_gaussian_f32(u, t, s, k, radius, SC_F32_RL_RATIO, src, RL_EPS, ex);
        if (rc == SC_OK)
            rc = sc_gaussian_f32(t, u, s, k, radius, SC_F32_MUL_INTO, NULL, 0.0f, ex);
    }
    if (rc == SC_OK)
        rc = sc_parallel_rows(ex, s.h, chunk, rl_store, &r, 0);
done:
    sc_workspace_give(u);
    return rc;
}
