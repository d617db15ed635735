/* Shared definitions for stepchain's native kernels.
 *
 * The threading conventions (sc_exec, sc_parallel_rows: per-call team size and schedule, no
 * process-global OpenMP state) are in native/include/stepchain/kernel.h, the header plugin
 * authors build against, so built-ins and C plugins share one implementation.
 */
#ifndef SC_COMMON_H
#define SC_COMMON_H

#include "stepchain/kernel.h" /* sc_exec, sc_shape, sc_parallel_rows: shared with plugins */

/* A work buffer of at least `bytes` (64-byte aligned) for one call, NULL when out of memory.
 * sc_workspace_give keeps one buffer of up to SC_WORKSPACE_KEEP_MAX bytes for the next call
 * (any thread), so a kernel called again at the same size neither allocates nor page-faults:
 * first-touch faults of fresh pages were the serial part of deblur. Thread-safe; a second
 * concurrent caller simply allocates its own. */
#define SC_WORKSPACE_KEEP_MAX ((size_t)512 << 20)
void *sc_workspace_take(size_t bytes);
void sc_workspace_give(void *p);

/* Largest Gaussian radius the kernels accept (the registry's limit for `radius`). */
#define SC_MAX_RADIUS 300

/* Normalised 1-D Gaussian weights for taps -radius..radius into k[0..2*radius]. */
void sc_gaussian_weights(float *k, int radius, double sigma);

/* What sc_gaussian_f32 does with each blurred value g: store it (dst = g), store the
 * Richardson-Lucy ratio dst = obs / max(g, eps) (obs: uint8 image of the same shape), or
 * multiply it into dst (dst *= g). */
typedef enum { SC_F32_STORE = 0, SC_F32_RL_RATIO = 1, SC_F32_MUL_INTO = 2 } sc_f32_epilogue;

/* Float image Gaussian (separable, replicate border) used by deblur; `k` holds 2*radius+1
 * weights. src and dst are H x W x C float planes (interleaved); they may not alias. */
int sc_gaussian_f32(const float *src, float *dst, sc_shape s, const float *k, int radius,
                    int epilogue, const uint8_t *obs, float eps, const sc_exec *ex);

/* uint8 Gaussian (blur, and sharpen when `sharpen` != 0: clamp(in + amount * (in - blur))). */
int sc_gaussian_u8(const uint8_t *src, uint8_t *dst, sc_shape s, double sigma, int radius,
                   int sharpen, double amount, const sc_exec *ex);

/* ---- kernels (one per file) ---- */
int sc_identity(const uint8_t *src, uint8_t *dst, sc_shape s, const sc_exec *ex);
int sc_grayscale(const uint8_t *src, uint8_t *dst, sc_shape s, const sc_exec *ex);
int sc_brightness(const uint8_t *src, uint8_t *dst, sc_shape s, double factor, double contrast,
                  const sc_exec *ex);
int sc_gaussian_blur(const uint8_t *src, uint8_t *dst, sc_shape s, double sigma, int radius,
                     const sc_exec *ex);
int sc_sharpen(const uint8_t *src, uint8_t *dst, sc_shape s, double amount, double sigma,
               int radius, const sc_exec *ex);
int sc_edges(const uint8_t *src, uint8_t *dst, sc_shape s, const sc_exec *ex);
/* method: 0 = bilinear, 1 = bicubic. dst is oh x ow x s.c */
int sc_resize(const uint8_t *src, uint8_t *dst, sc_shape s, int oh, int ow, int method,
              const sc_exec *ex);
int sc_deblur(const uint8_t *src, uint8_t *dst, sc_shape s, double sigma, int radius,
              int iterations, const sc_exec *ex);

/* classify: measurements only; the image is not modified. */
typedef struct {
    double laplacian_var; /* variance of the 4-neighbour Laplacian of luma */
    double mean_luma;     /* 0..255 */
    double colorfulness;  /* Hasler & Suesstrunk 2003 metric, 0 for C == 1 */
} sc_measures;
int sc_classify(const uint8_t *src, sc_shape s, sc_measures *out, const sc_exec *ex);

#endif
