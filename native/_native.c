/* Thin CPython binding over the kernels in native/src: one generic wrapper and a table.
 *
 * Every function takes C-contiguous uint8 buffers (anything exporting the buffer protocol; the
 * Python layer in native/kernels.py validates and allocates), the shape, this call's thread
 * count / schedule / chunk / passes, then the kernel's own parameters:
 *
 *     kernel(src, dst, h, w, c, threads, schedule, chunk, passes, *params)
 *     classify(src, h, w, c, threads, schedule, chunk, passes) -> (lap_var, mean_luma, colour)
 *
 * Sizes are re-checked here so a wrong call can raise but never read or write out of bounds.
 * The GIL is released for the whole computation, so concurrent calls from Python threads
 * overlap. Adding a kernel is one KERNEL(...) adapter and one row of `kernels[]`.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "sc_common.h"

/* A kernel parameter after the common ones: 'd' (double) or 'i' (int), per the row's format. */
typedef union {
    double d;
    int i;
} kparam;

enum { MAX_PARAMS = 3 };

/* Size of the destination buffer the kernel writes. */
typedef enum {
    OUT_SAME,   /* h x w x c */
    OUT_ONE,    /* h x w x 1 */
    OUT_RESIZE, /* p[0].i x p[1].i x c (resize: out_h, out_w, method) */
    OUT_NONE,   /* no destination: a measure kernel (classify) */
} out_kind;

typedef struct {
    const uint8_t *src;
    uint8_t *dst;
    sc_shape s;
    const kparam *p;
    sc_measures *m; /* OUT_NONE kernels only */
} kcall;

typedef int (*kernel_fn)(const kcall *k, const sc_exec *ex);

/* Adapts one kernel to kernel_fn: KERNEL(name, expression using k->src, k->dst, k->s, k->p, ex). */
#define KERNEL(NAME, EXPR) \
    static int call_##NAME(const kcall *k, const sc_exec *ex) { return (EXPR); }

KERNEL(identity, sc_identity(k->src, k->dst, k->s, ex))
KERNEL(grayscale, sc_grayscale(k->src, k->dst, k->s, ex))
KERNEL(edges, sc_edges(k->src, k->dst, k->s, ex))
KERNEL(brightness, sc_brightness(k->src, k->dst, k->s, k->p[0].d, k->p[1].d, ex))
KERNEL(gaussian_blur, sc_gaussian_blur(k->src, k->dst, k->s, k->p[0].d, k->p[1].i, ex))
KERNEL(sharpen, sc_sharpen(k->src, k->dst, k->s, k->p[0].d, k->p[1].d, k->p[2].i, ex))
KERNEL(deblur, sc_deblur(k->src, k->dst, k->s, k->p[0].d, k->p[1].i, k->p[2].i, ex))
KERNEL(resize, sc_resize(k->src, k->dst, k->s, k->p[0].i, k->p[1].i, k->p[2].i, ex))
KERNEL(classify, sc_classify(k->src, k->s, k->m, ex))

typedef struct {
    const char *name;
    const char *format; /* PyArg_ParseTuple format: common arguments, params, ":name" */
    out_kind out;
    kernel_fn fn;
    const char *doc;
} kernel_row;

#define COMMON "y*w*iiiiiii"      /* src, dst, h, w, c, threads, schedule, chunk, passes */
#define COMMON_NODST "y*iiiiiii" /* classify: no dst */
#define SIG "(src, dst, h, w, c, threads, schedule, chunk, passes"

static const kernel_row kernels[] = {
    {"identity", COMMON ":identity", OUT_SAME, call_identity, "identity" SIG ")"},
    {"grayscale", COMMON ":grayscale", OUT_ONE, call_grayscale, "grayscale" SIG ")"},
    {"edges", COMMON ":edges", OUT_SAME, call_edges, "edges" SIG ")"},
    {"brightness", COMMON "dd:brightness", OUT_SAME, call_brightness,
     "brightness" SIG ", factor, contrast)"},
    {"gaussian_blur", COMMON "di:gaussian_blur", OUT_SAME, call_gaussian_blur,
     "gaussian_blur" SIG ", sigma, radius)"},
    {"sharpen", COMMON "ddi:sharpen", OUT_SAME, call_sharpen,
     "sharpen" SIG ", amount, sigma, radius)"},
    {"deblur", COMMON "dii:deblur", OUT_SAME, call_deblur,
     "deblur" SIG ", sigma, radius, iterations)"},
    {"resize", COMMON "iii:resize", OUT_RESIZE, call_resize,
     "resize" SIG ", out_h, out_w, method)  method: 0 bilinear, 1 bicubic"},
    {"classify", COMMON_NODST ":classify", OUT_NONE, call_classify,
     "classify(src, h, w, c, threads, schedule, chunk, passes) "
     "-> (laplacian_var, mean_luma, colorfulness)"},
};
enum { N_KERNELS = sizeof kernels / sizeof kernels[0] };

/* The expected destination size, or -1 with an exception set. */
static Py_ssize_t dst_bytes(const kernel_row *row, sc_shape s, const kparam *p)
{
    switch (row->out) {
    case OUT_ONE:
        return (Py_ssize_t)s.h * s.w;
    case OUT_RESIZE:
        if (p[0].i < 1 || p[1].i < 1 || p[2].i < 0 || p[2].i > 1) {
            PyErr_Format(PyExc_ValueError, "bad resize target %dx%d method %d", p[0].i, p[1].i,
                         p[2].i);
            return -1;
        }
        return (Py_ssize_t)p[0].i * p[1].i * s.c;
    default:
        return (Py_ssize_t)s.h * s.w * s.c;
    }
}

static int check_args(const kernel_row *row, const Py_buffer *src, const Py_buffer *dst,
                      sc_shape s, const sc_exec *ex, int passes, const kparam *p)
{
    if (s.h < 1 || s.w < 1 || (s.c != 1 && s.c != 3 && s.c != 4)) {
        PyErr_Format(PyExc_ValueError, "bad shape %dx%dx%d", s.h, s.w, s.c);
        return -1;
    }
    const Py_ssize_t need = (Py_ssize_t)s.h * s.w * s.c;
    if (src->len != need) {
        PyErr_Format(PyExc_ValueError, "source buffer has %zd bytes, shape needs %zd", src->len,
                     need);
        return -1;
    }
    if (ex->threads < 1 || (int)ex->schedule < 0 || (int)ex->schedule > 2 || ex->chunk < 0 ||
        passes < 1) {
        PyErr_SetString(PyExc_ValueError,
                        "threads and passes must be >= 1, schedule 0..2, chunk >= 0");
        return -1;
    }
    if (row->out == OUT_NONE)
        return 0;
    const Py_ssize_t want = dst_bytes(row, s, p);
    if (want < 0)
        return -1;
    if (dst->len != want) {
        PyErr_Format(PyExc_ValueError, "destination buffer has %zd bytes, expected %zd",
                     dst->len, want);
        return -1;
    }
    return 0;
}

/* The one wrapper: `self` is a capsule holding this function's kernel_row. */
static PyObject *call_kernel(PyObject *self, PyObject *args)
{
    const kernel_row *row = PyCapsule_GetPointer(self, "native._native.kernel");
    if (row == NULL)
        return NULL;
    Py_buffer src = {0}, dst = {0};
    int h, w, c, threads, sched, chunk, passes;
    kparam p[MAX_PARAMS] = {{0}};
    int ok = row->out == OUT_NONE
                 ? PyArg_ParseTuple(args, row->format, &src, &h, &w, &c, &threads, &sched, &chunk,
                                    &passes)
                 : PyArg_ParseTuple(args, row->format, &src, &dst, &h, &w, &c, &threads, &sched,
                                    &chunk, &passes, &p[0], &p[1], &p[2]);
    if (!ok)
        return NULL;
    const sc_shape s = {h, w, c};
    const sc_exec ex = {threads, (sc_schedule)sched, chunk};
    sc_measures m = {0};
    int rc = SC_OK;
    if (check_args(row, &src, &dst, s, &ex, passes, p) < 0) {
        rc = SC_EINVAL;
    } else {
        const kcall k = {src.buf, dst.buf, s, p, &m};
        Py_BEGIN_ALLOW_THREADS
        for (int i = 0; i < passes && rc == SC_OK; i++)
            rc = row->fn(&k, &ex);
        Py_END_ALLOW_THREADS
        if (rc == SC_ENOMEM)
            PyErr_NoMemory();
        else if (rc != SC_OK)
            PyErr_Format(PyExc_ValueError, "%s rejected its arguments (code %d)", row->name, rc);
    }
    PyBuffer_Release(&src);
    if (row->out != OUT_NONE)
        PyBuffer_Release(&dst);
    if (rc != SC_OK)
        return NULL;
    if (row->out == OUT_NONE)
        return Py_BuildValue("(ddd)", m.laplacian_var, m.mean_luma, m.colorfulness);
    Py_RETURN_NONE;
}

static PyMethodDef defs[N_KERNELS];

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "native._native",
    .m_doc = "stepchain's OpenMP image kernels (raw binding)",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__native(void)
{
    PyObject *mod = PyModule_Create(&module);
    if (mod == NULL)
        return NULL;
    PyObject *modname = PyModule_GetNameObject(mod);
    if (modname == NULL)
        goto fail;
    for (int i = 0; i < N_KERNELS; i++) {
        defs[i] = (PyMethodDef){kernels[i].name, call_kernel, METH_VARARGS, kernels[i].doc};
        PyObject *capsule = PyCapsule_New((void *)&kernels[i], "native._native.kernel", NULL);
        PyObject *fn = capsule ? PyCFunction_NewEx(&defs[i], capsule, modname) : NULL;
        Py_XDECREF(capsule);
        if (fn == NULL || PyModule_AddObject(mod, kernels[i].name, fn) < 0) {
            Py_XDECREF(fn);
            Py_DECREF(modname);
            goto fail;
        }
    }
    Py_DECREF(modname);
    return mod;
fail:
    Py_DECREF(mod);
    return NULL;
}
