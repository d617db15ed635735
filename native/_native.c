/* Thin CPython binding over the kernels in native/src.
 *
 * Each function takes C-contiguous uint8 buffers (anything exporting the buffer protocol; the
 * Python layer in native/kernels.py validates and allocates), the shape, this call's thread
 * count / schedule / passes, and kernel parameters. Sizes are re-checked here so a wrong call
 * can raise but never read or write out of bounds. The GIL is released for the whole
 * computation, so concurrent calls from Python threads overlap.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "sc_common.h"

typedef struct {
    Py_buffer src, dst;
    int h, w, c, threads, sched, passes;
} call_args;

static int check_common(call_args *a, Py_ssize_t dst_len)
{
    if (a->h < 1 || a->w < 1 || (a->c != 1 && a->c != 3 && a->c != 4)) {
        PyErr_Format(PyExc_ValueError, "bad shape %dx%dx%d", a->h, a->w, a->c);
        return -1;
    }
    if (a->src.len != (Py_ssize_t)a->h * a->w * a->c) {
        PyErr_Format(PyExc_ValueError, "source buffer has %zd bytes, shape needs %zd", a->src.len,
                     (Py_ssize_t)a->h * a->w * a->c);
        return -1;
    }
    if (dst_len >= 0 && a->dst.len != dst_len) {
        PyErr_Format(PyExc_ValueError, "destination buffer has %zd bytes, expected %zd",
                     a->dst.len, dst_len);
        return -1;
    }
    if (a->threads < 1 || a->sched < 0 || a->sched > 2 || a->passes < 1) {
        PyErr_SetString(PyExc_ValueError, "threads and passes must be >= 1, schedule 0..2");
        return -1;
    }
    return 0;
}

static void release(call_args *a, int has_dst)
{
    PyBuffer_Release(&a->src);
    if (has_dst)
        PyBuffer_Release(&a->dst);
}

static PyObject *finish(call_args *a, int rc, int has_dst)
{
    release(a, has_dst);
    if (rc == SC_ENOMEM)
        return PyErr_NoMemory();
    if (rc != SC_OK) {
        PyErr_Format(PyExc_ValueError, "kernel rejected its arguments (code %d)", rc);
        return NULL;
    }
    Py_RETURN_NONE;
}

#define SHAPE_OF(a) ((sc_shape){(a).h, (a).w, (a).c})
#define EXEC_OF(a) ((sc_exec){(a).threads, (sc_schedule)(a).sched})

/* Runs CALL `passes` times without the GIL; stops at the first error. */
#define RUN_PASSES(a, rc, CALL)                                                                 \
    do {                                                                                        \
        Py_BEGIN_ALLOW_THREADS for (int p_ = 0; p_ < (a).passes && rc == SC_OK; p_++) rc = CALL; \
        Py_END_ALLOW_THREADS                                                                    \
    } while (0)

#define PARSE_BASE "y*w*iiiiii"
#define BASE_REFS &a.src, &a.dst, &a.h, &a.w, &a.c, &a.threads, &a.sched, &a.passes

static PyObject *simple_kernel(PyObject *args, int out_c_is_one,
                               int (*fn)(const uint8_t *, uint8_t *, sc_shape, const sc_exec *))
{
    call_args a;
    if (!PyArg_ParseTuple(args, PARSE_BASE, BASE_REFS))
        return NULL;
    Py_ssize_t out = (Py_ssize_t)a.h * a.w * (out_c_is_one ? 1 : a.c);
    if (check_common(&a, out) < 0)
        {
        release(&a, 1);
        return NULL;
    }
    int rc = SC_OK;
    sc_shape s = SHAPE_OF(a);
    sc_exec ex = EXEC_OF(a);
    RUN_PASSES(a, rc, fn(a.src.buf, a.dst.buf, s, &ex));
    return finish(&a, rc, 1);
}

static PyObject *py_identity(PyObject *self, PyObject *args) { return simple_kernel(args, 0, sc_identity); }
static PyObject *py_grayscale(PyObject *self, PyObject *args) { return simple_kernel(args, 1, sc_grayscale); }
static PyObject *py_edges(PyObject *self, PyObject *args) { return simple_kernel(args, 0, sc_edges); }

static PyObject *py_brightness(PyObject *self, PyObject *args)
{
    call_args a;
    double factor, contrast;
    if (!PyArg_ParseTuple(args, PARSE_BASE "dd", BASE_REFS, &factor, &contrast))
        return NULL;
    if (check_common(&a, (Py_ssize_t)a.h * a.w * a.c) < 0)
        {
        release(&a, 1);
        return NULL;
    }
    int rc = SC_OK;
    sc_shape s = SHAPE_OF(a);
    sc_exec ex = EXEC_OF(a);
    RUN_PASSES(a, rc, sc_brightness(a.src.buf, a.dst.buf, s, factor, contrast, &ex));
    return finish(&a, rc, 1);
}

static PyObject *py_gaussian_blur(PyObject *self, PyObject *args)
{
    call_args a;
    double sigma;
    int radius;
    if (!PyArg_ParseTuple(args, PARSE_BASE "di", BASE_REFS, &sigma, &radius))
        return NULL;
    if (check_common(&a, (Py_ssize_t)a.h * a.w * a.c) < 0)
        {
        release(&a, 1);
        return NULL;
    }
    int rc = SC_OK;
    sc_shape s = SHAPE_OF(a);
    sc_exec ex = EXEC_OF(a);
    RUN_PASSES(a, rc, sc_gaussian_blur(a.src.buf, a.dst.buf, s, sigma, radius, &ex));
    return finish(&a, rc, 1);
}

static PyObject *py_sharpen(PyObject *self, PyObject *args)
{
    call_args a;
    double amount, sigma;
    int radius;
    if (!PyArg_ParseTuple(args, PARSE_BASE "ddi", BASE_REFS, &amount, &sigma, &radius))
        return NULL;
    if (check_common(&a, (Py_ssize_t)a.h * a.w * a.c) < 0)
        {
        release(&a, 1);
        return NULL;
    }
    int rc = SC_OK;
    sc_shape s = SHAPE_OF(a);
    sc_exec ex = EXEC_OF(a);
    RUN_PASSES(a, rc, sc_sharpen(a.src.buf, a.dst.buf, s, amount, sigma, radius, &ex));
    return finish(&a, rc, 1);
}

static PyObject *py_deblur(PyObject *self, PyObject *args)
{
    call_args a;
    double sigma;
    int radius, iterations;
    if (!PyArg_ParseTuple(args, PARSE_BASE "dii", BASE_REFS, &sigma, &radius, &iterations))
        return NULL;
    if (check_common(&a, (Py_ssize_t)a.h * a.w * a.c) < 0)
        {
        release(&a, 1);
        return NULL;
    }
    int rc = SC_OK;
    sc_shape s = SHAPE_OF(a);
    sc_exec ex = EXEC_OF(a);
    RUN_PASSES(a, rc, sc_deblur(a.src.buf, a.dst.buf, s, sigma, radius, iterations, &ex));
    return finish(&a, rc, 1);
}

static PyObject *py_resize(PyObject *self, PyObject *args)
{
    call_args a;
    int oh, ow, method;
    if (!PyArg_ParseTuple(args, PARSE_BASE "iii", BASE_REFS, &oh, &ow, &method))
        return NULL;
    if (oh < 1 || ow < 1 || method < 0 || method > 1) {
        PyErr_Format(PyExc_ValueError, "bad resize target %dx%d method %d", oh, ow, method);
        {
        release(&a, 1);
        return NULL;
    }
    }
    if (check_common(&a, (Py_ssize_t)oh * ow * a.c) < 0)
        {
        release(&a, 1);
        return NULL;
    }
    int rc = SC_OK;
    sc_shape s = SHAPE_OF(a);
    sc_exec ex = EXEC_OF(a);
    RUN_PASSES(a, rc, sc_resize(a.src.buf, a.dst.buf, s, oh, ow, method, &ex));
    return finish(&a, rc, 1);
}

static PyObject *py_classify(PyObject *self, PyObject *args)
{
    call_args a;
    if (!PyArg_ParseTuple(args, "y*iiiiii", &a.src, &a.h, &a.w, &a.c, &a.threads, &a.sched,
                          &a.passes))
        return NULL;
    if (check_common(&a, -1) < 0)
        {
        release(&a, 0);
        return NULL;
    }
    int rc = SC_OK;
    sc_shape s = SHAPE_OF(a);
    sc_exec ex = EXEC_OF(a);
    sc_measures m = {0};
    RUN_PASSES(a, rc, sc_classify(a.src.buf, s, &m, &ex));
    PyObject *done = finish(&a, rc, 0);
    if (done == NULL)
        return NULL;
    Py_DECREF(done);
    return Py_BuildValue("(ddd)", m.laplacian_var, m.mean_luma, m.colorfulness);
}

static PyMethodDef methods[] = {
    {"identity", py_identity, METH_VARARGS, "identity(src, dst, h, w, c, threads, schedule, passes)"},
    {"grayscale", py_grayscale, METH_VARARGS, "grayscale(src, dst, h, w, c, threads, schedule, passes)"},
    {"edges", py_edges, METH_VARARGS, "edges(src, dst, h, w, c, threads, schedule, passes)"},
    {"brightness", py_brightness, METH_VARARGS, "brightness(..., factor, contrast)"},
    {"gaussian_blur", py_gaussian_blur, METH_VARARGS, "gaussian_blur(..., sigma, radius)"},
    {"sharpen", py_sharpen, METH_VARARGS, "sharpen(..., amount, sigma, radius)"},
    {"deblur", py_deblur, METH_VARARGS, "deblur(..., sigma, radius, iterations)"},
    {"resize", py_resize, METH_VARARGS, "resize(..., out_h, out_w, method)"},
    {"classify", py_classify, METH_VARARGS,
     "classify(src, h, w, c, threads, schedule, passes) -> (laplacian_var, mean_luma, colorfulness)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "native._native",
    .m_doc = "stepchain's OpenMP image kernels (raw binding)",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
