/* identity: a parallel copy; measures transport overhead in a pipeline. */
#include <string.h>

#include "sc_common.h"

typedef struct {
    const uint8_t *src;
    uint8_t *dst;
    size_t row;
} identity_ctx;

static void identity_rows(const void *p, int y0, int y1, void *scratch)
{
    const identity_ctx *c = p;
    memcpy(c->dst + (size_t)y0 * c->row, c->src + (size_t)y0 * c->row, (size_t)(y1 - y0) * c->row);
}

int sc_identity(const uint8_t *src, uint8_t *dst, sc_shape s, const sc_exec *ex)
{
    identity_ctx c = {src, dst, (size_t)s.w * s.c};
    return sc_parallel_rows(ex, s.h, sc_chunk_rows(64, c.row), identity_rows, &c, 0);
}
