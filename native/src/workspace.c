/* The cached workspace: one large work buffer kept between kernel calls (see sc_common.h).
 * The parallel row loop itself is sc_parallel_rows in stepchain/kernel.h, shared with plugins. */
#include <stdint.h>
#include <stdlib.h>

#include "sc_common.h"

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
