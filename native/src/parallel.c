/* The one place kernels go parallel: a row loop with a per-call team size and schedule. */
#include <stdint.h>
#include <stdlib.h>

#include "sc_common.h"

#define SC_ROW_LOOP(SCHED)                                                                      \
    _Pragma(SCHED) for (int b = 0; b < nchunks; b++)                                            \
    {                                                                                           \
        int y0 = b * chunk, y1 = y0 + chunk < n ? y0 + chunk : n;                               \
        fn(ctx, y0, y1, scratch);                                                               \
    }

int sc_parallel_rows(const sc_exec *ex, int n, int chunk, sc_rows_fn fn, const void *ctx,
                     size_t scratch_bytes)
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
                SC_ROW_LOOP("omp for schedule(dynamic, 1) nowait")
                break;
            case SC_SCHED_GUIDED:
                SC_ROW_LOOP("omp for schedule(guided) nowait")
                break;
            default:
                if (fixed) {
                    SC_ROW_LOOP("omp for schedule(static, 1) nowait")
                } else {
                    SC_ROW_LOOP("omp for schedule(static) nowait")
                }
                break;
            }
        }
        free(scratch);
    }
    return failed ? SC_ENOMEM : SC_OK;
}

/* ---- the cached workspace ---- */

/* One buffer kept between calls: [size_t bytes | padding to 64 | data]. */
static void *workspace_cache;

void *sc_workspace_take(size_t bytes)
{
    char *base = __atomic_exchange_n((void **)&workspace_cache, NULL, __ATOMIC_ACQ_REL);
    if (base != NULL && *(size_t *)base >= bytes)
        return base + 64;
    free(base);
    if (bytes > SIZE_MAX - 128)
        return NULL;
    base = aligned_alloc(64, (bytes + 64 + 63) & ~(size_t)63);
    if (base == NULL)
        return NULL;
    *(size_t *)base = bytes;
    return base + 64;
}

void sc_workspace_give(void *p)
{
    if (p == NULL)
        return;
    char *base = (char *)p - 64;
    if (*(size_t *)base > SC_WORKSPACE_KEEP_MAX) {
        free(base);
        return;
    }
    free(__atomic_exchange_n((void **)&workspace_cache, base, __ATOMIC_ACQ_REL));
}
