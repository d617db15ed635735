/* Shared definitions for stepchain's native kernels.
 *
 * Every kernel is a pure function of its input buffers and an sc_exec describing *this call's*
 * OpenMP thread count and schedule. Nothing here touches process-global OpenMP state
 * (no omp_set_num_threads / omp_set_schedule), so concurrent calls from different Python
 * threads with different settings never interfere.
 *
 * Images are tightly packed, row-major H x W x C uint8 (C in {1, 3, 4}).
 */
#ifndef SC_COMMON_H
#define SC_COMMON_H

#include <stddef.h>
#include <stdint.h>

typedef enum { SC_SCHED_STATIC = 0, SC_SCHED_DYNAMIC = 1, SC_SCHED_GUIDED = 2 } sc_schedule;

typedef struct {
    int threads;          /* OpenMP team size for this call only (>= 1) */
    sc_schedule schedule; /* loop schedule for this call's parallel loops */
    int chunk;            /* rows per OpenMP chunk (guided: the smallest); 0 = the kernel's own */
} sc_exec;

typedef struct {
    int h, w, c;
} sc_shape;

/* Return codes. The binding turns them into Python exceptions. */
enum { SC_OK = 0, SC_ENOMEM = -1, SC_EINVAL = -2 };

/* A row task: process rows [y0, y1) using `ctx`; `scratch` is a per-thread buffer of
 * `scratch_bytes` bytes (NULL when 0), so row functions never allocate. */
typedef void (*sc_rows_fn)(const void *ctx, int y0, int y1, void *scratch);

/* Runs fn over rows [0, n) in chunks of `chunk` rows (ex->chunk rows when the caller set one)
 * with ex's thread count and schedule. The team never outnumbers the kernel's own `chunk`-row
 * blocks, so a small image stays on few threads whatever chunk the caller asks for.
 * Returns SC_ENOMEM if a per-thread scratch buffer could not be allocated. */
int sc_parallel_rows(const sc_exec *ex, int n, int chunk, sc_rows_fn fn, const void *ctx,
                     size_t scratch_bytes);

/* A work buffer of at least `bytes` (64-byte aligned) for one call, NULL when out of memory.
 * sc_workspace_give keeps one buffer of up to SC_WORKSPACE_KEEP_MAX bytes for the next call
 * (any thread), so a kernel called again at the same size neither allocates nor page-faults:
 * first-touch faults of fresh pages were the serial part of deblur. Thread-safe; a second
 * concurrent caller simply allocates its own. */
#define SC_WORKSPACE_KEEP_MAX ((size_t)512 << 20)
void *sc_workspace_take(size_t bytes);
void sc_workspace_give(void *p);

/* Rows per parallel chunk: at least `base`, and enough rows that a chunk holds ~64K samples of
 * `row_samples` each. sc_parallel_rows never uses more threads than chunks, so a small image
 * runs on fewer threads (down to one) instead of paying a thread wake-up for microseconds of
 * work. Depends only on the image size, never on the thread count, so results do not change. */
static inline int sc_chunk_rows(int base, size_t row_samples)
{
    const size_t min_samples = (size_t)1 << 16;
    size_t rows = row_samples ? (min_samples + row_samples - 1) / row_samples : 1;
    return rows > (size_t)base ? (rows > (1u << 20) ? (1 << 20) : (int)rows) : base;
}

/* Hot loops are compiled twice on x86-64 (AVX2+FMA and baseline) and the best one is picked at
 * load time, so a portable build still uses wide vectors where the CPU has them. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(SC_NO_CLONES)
#define SC_HOT __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define SC_HOT
#endif

static inline uint8_t sc_clamp_u8f(float v)
{
    /* round half up after clamping; branch-free (selects + a float->int conversion, which GCC
     * vectorises when built with -fno-trapping-math as setup.py does) */
    v = v > 0.0f ? v : 0.0f;
    v = v < 255.0f ? v : 255.0f;
    return (uint8_t)(int)(v + 0.5f);
}

static inline int sc_clampi(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

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
