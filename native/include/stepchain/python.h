/* stepchain/python.h: the CPython side of a C kernel, as the built-ins' binding does it.
 * Header-only; include after <Python.h> (with PY_SSIZE_T_CLEAN defined).
 *
 * The Python wrapper (validated by the registry) passes
 *     (src, dst, h, w, c, out_h, out_w, out_c, threads, schedule, chunk, passes, *params)
 * where src/dst are C-contiguous uint8 buffers, schedule is 0 static, 1 dynamic, 2 guided
 * (native.exec_args gives threads, schedule, chunk and passes in this order). One call:
 *
 *     static PyObject *median(PyObject *self, PyObject *args)
 *     {
 *         sc_py_call k = {0};
 *         sc_exec ex;
 *         if (!PyArg_ParseTuple(args, SC_PY_CALL_FORMAT ":median", SC_PY_CALL_ARGS(k)))
 *             return NULL;
 *         int rc = sc_py_check(&k, &ex);
 *         if (rc == SC_OK) {
 *             Py_BEGIN_ALLOW_THREADS              // the GIL is released while computing
 *             for (int i = 0; i < k.passes && rc == SC_OK; i++)
 *                 rc = my_kernel(k.src.buf, k.dst.buf, k.in, &ex);
 *             Py_END_ALLOW_THREADS
 *         }
 *         return sc_py_finish(&k, rc, "median");
 *     }
 *
 * Sizes are re-checked here so a wrong call raises ValueError but never reads or writes out
 * of bounds.
 */
#ifndef STEPCHAIN_PYTHON_H
#define STEPCHAIN_PYTHON_H

#include "stepchain/kernel.h"

typedef struct {
    Py_buffer src, dst;
    sc_shape in, out;
    int threads, schedule, chunk, passes;
} sc_py_call;

/* src (read), dst (written), h, w, c, out_h, out_w, out_c, threads, schedule, chunk, passes */
#define SC_PY_CALL_FORMAT "y*w*iiiiiiiiii"
#define SC_PY_CALL_ARGS(k)                                                                      \
    &(k).src, &(k).dst, &(k).in.h, &(k).in.w, &(k).in.c, &(k).out.h, &(k).out.w, &(k).out.c,    \
        &(k).threads, &(k).schedule, &(k).chunk, &(k).passes

static inline int sc_py_shape_ok_(sc_shape s)
{
    return s.h >= 1 && s.w >= 1 && (s.c == 1 || s.c == 3 || s.c == 4);
}

/* Checks the parsed call (shapes against buffer sizes, execution parameters) and fills `ex`.
 * Returns SC_OK, or SC_EINVAL with a ValueError set. */
static inline int sc_py_check(const sc_py_call *k, sc_exec *ex)
{
    if (!sc_py_shape_ok_(k->in) || !sc_py_shape_ok_(k->out)) {
        PyErr_Format(PyExc_ValueError, "bad shape %dx%dx%d -> %dx%dx%d", k->in.h, k->in.w,
                     k->in.c, k->out.h, k->out.w, k->out.c);
        return SC_EINVAL;
    }
    const Py_ssize_t need = (Py_ssize_t)k->in.h * k->in.w * k->in.c;
    const Py_ssize_t want = (Py_ssize_t)k->out.h * k->out.w * k->out.c;
    if (k->src.len != need || k->dst.len != want) {
        PyErr_Format(PyExc_ValueError,
                     "buffers hold %zd and %zd bytes; the shapes need %zd (source) and %zd "
                     "(destination)", k->src.len, k->dst.len, need, want);
        return SC_EINVAL;
    }
    if (k->threads < 1 || k->schedule < 0 || k->schedule > 2 || k->chunk < 0 || k->passes < 1) {
        PyErr_SetString(PyExc_ValueError,
                        "threads and passes must be >= 1, schedule 0..2, chunk >= 0");
        return SC_EINVAL;
    }
    ex->threads = k->threads;
    ex->schedule = (sc_schedule)k->schedule;
    ex->chunk = k->chunk;
    return SC_OK;
}

/* Releases the buffers and turns `rc` into the call's result: None, or NULL with MemoryError
 * (SC_ENOMEM) or ValueError (any other code; kept when sc_py_check already set one). */
static inline PyObject *sc_py_finish(sc_py_call *k, int rc, const char *name)
{
    PyBuffer_Release(&k->src);
    PyBuffer_Release(&k->dst);
    if (rc == SC_OK)
        Py_RETURN_NONE;
    if (PyErr_Occurred())
        return NULL;
    if (rc == SC_ENOMEM)
        return PyErr_NoMemory();
    return PyErr_Format(PyExc_ValueError, "%s rejected its arguments (code %d)", name, rc);
}

#endif
