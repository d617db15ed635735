/* stepchain/kernel.h: the threading conventions every stepchain kernel follows, built-in or
 * plugin. Header-only (nothing to link against); C11 with OpenMP (-fopenmp).
 *
 * A kernel is a pure function of its input buffer and an sc_exec describing *this call's*
 * OpenMP team size, loop schedule and chunk. Nothing here touches process-global OpenMP state
 * (no omp_set_num_threads / omp_set_schedule): the team size is a num_threads clause and the
 * schedule a switch over three loops, so concurrent calls from different Python threads with
 * different settings never interfere. The binding releases the GIL around the call
 * (stepchain/python.h).
 *
 * Images are tightly packed, row-major H x W x C uint8 (C in {1, 3, 4}).
 *
 * Usage: write a row function `rows(ctx, y0, y1, scratch)` computing output rows [y0, y1) and
 * call sc_parallel_rows(ex, height, sc_chunk_rows(16, w * c), rows, &ctx, scratch_bytes).
 */
#ifndef STEPCHAIN_KERNEL_H
#define STEPCHAIN_KERNEL_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

typedef enum { SC_SCHED_STATIC = 0, SC_SCHED_DYNAMIC = 1, SC_SCHED_GUIDED = 2 } sc_schedule;

typedef struct {
    int threads;          /* OpenMP team size for this call only (>= 1) */
    sc_schedule schedule; /* loop schedule for this call's parallel loops */
    int chunk;            /* rows per OpenMP chunk (guided: the smallest); 0 = the kernel's own */
} sc_exec;

typedef struct {
    int h, w, c;
} sc_shape;

/* Return codes. The binding turns them into Python exceptions (sc_py_result). */
enum { SC_OK = 0, SC_ENOMEM = -1, SC_EINVAL = -2 };

/* A row task: process rows [y0, y1) using `ctx`; `scratch` is a per-thread buffer of
 * `scratch_bytes` bytes (NULL when 0), so row functions never allocate. */
typedef void (*sc_rows_fn)(const void *ctx, int y0, int y1, void *scratch);

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

#define SC_ROW_LOOP_(SCHED)                                                                     \
    _Pragma(SCHED) for (int b = 0; b < nchunks; b++)                                            \
    {                                                                                           \
        int y0 = b * chunk, y1 = y0 + chunk < n ? y0 + chunk : n;                               \
        fn(ctx, y0, y1, scratch);                                                               \
    }

/* Runs fn over rows [0, n) in chunks of `chunk` rows (ex->chunk rows when the caller set one)
 * with ex's thread count and schedule. The team never outnumbers the kernel's own `chunk`-row
 * blocks, so a small image stays on few threads whatever chunk the caller asks for.
 * Returns SC_ENOMEM if a per-thread scratch buffer could not be allocated. */
static inline int sc_parallel_rows(const sc_exec *ex, int n, int chunk, sc_rows_fn fn,
                                   const void *ctx, size_t scratch_bytes)
{
    if (n <= 0)
        return SC_OK;
    if (chunk < 1)
        chunk = 1;
    int threads = ex->threads < 1 ? 1 : ex->threads;
    if (threads > (n + chunk - 1) / chunk)
        threads = (n + chunk - 1) / chunk;
    /* a caller's chunk: blocks of that many rows, taken one at a time (schedule(kind, 1) over
     * blocks = schedule(kind, chunk) over rows); static without one splits the blocks evenly */
    const int fixed = ex->chunk > 0;
    if (fixed)
        chunk = ex->chunk;
    const int nchunks = (n + chunk - 1) / chunk;
    int failed = 0; /* shared: every thread must agree before entering the worksharing loop */

#pragma omp parallel num_threads(threads)
    {
        void *scratch = NULL;
        if (scratch_bytes) {
            /* 64-byte aligned so vector loads on scratch rows never split cache lines */
            size_t bytes = (scratch_bytes + 63) & ~(size_t)63;
            scratch = aligned_alloc(64, bytes);
            if (scratch == NULL) {
#pragma omp atomic write
                failed = 1;
            }
        }
#pragma omp barrier
        int any_failed;
#pragma omp atomic read
        any_failed = failed;
        if (!any_failed) {
            switch (ex->schedule) {
            case SC_SCHED_DYNAMIC:
                SC_ROW_LOOP_("omp for schedule(dynamic, 1) nowait")
                break;
            case SC_SCHED_GUIDED:
                SC_ROW_LOOP_("omp for schedule(guided) nowait")
                break;
            default:
                if (fixed) {
                    SC_ROW_LOOP_("omp for schedule(static, 1) nowait")
                } else {
                    SC_ROW_LOOP_("omp for schedule(static) nowait")
                }
                break;
            }
        }
        free(scratch);
    }
    return failed ? SC_ENOMEM : SC_OK;
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
     * vectorises when built with -fno-trapping-math) */
    v = v > 0.0f ? v : 0.0f;
    v = v < 255.0f ? v : 255.0f;
    return (uint8_t)(int)(v + 0.5f);
}

static inline int sc_clampi(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

#endif
