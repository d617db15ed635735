/* sharpen: unsharp mask, out = clamp(round(in + amount * (in - gaussian(in, sigma)))).
 *
 * Computed in float and fused into the Gaussian's last per-row loop (see gaussian_blur.c), so
 * the blurred image is never materialised. */
#include "sc_common.h"

int sc_sharpen(const uint8_t *src, uint8_t *dst, sc_shape s, double amount, double sigma,
               int radius, const sc_exec *ex)
{
    return sc_gaussian_u8(src, dst, s, sigma, radius, 1, amount, ex);
}
