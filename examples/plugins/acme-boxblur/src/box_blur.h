#ifndef ACME_BOX_BLUR_H
#define ACME_BOX_BLUR_H
#include <stepchain/kernel.h>

/* Mean of the (2 radius + 1)^2 window around each pixel, replicate border, per channel
 * (alpha included), rounded to nearest. Returns SC_OK, SC_ENOMEM or SC_EINVAL. */
int acme_box_blur(const uint8_t *src, uint8_t *dst, sc_shape s, int radius, const sc_exec *ex);

#endif
