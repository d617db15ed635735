/* The CPython binding: stepchain/python.h parses the common arguments, checks the buffers and
 * turns return codes into exceptions; the GIL is released while the kernel runs.
 *
 *     box_blur(src, dst, h, w, c, out_h, out_w, out_c, threads, schedule, chunk, passes, radius)
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stepchain/python.h>

#include "box_blur.h"

static PyObject *box_blur(PyObject *self, PyObject *args)
{
    sc_py_call k = {0};
    sc_exec ex;
    int radius;
    if (!PyArg_ParseTuple(args, SC_PY_CALL_FORMAT "i:box_blur", SC_PY_CALL_ARGS(k), &radius))
        return NULL;
    int rc = sc_py_check(&k, &ex);
    if (rc == SC_OK && (k.out.h != k.in.h || k.out.w != k.in.w || k.out.c != k.in.c)) {
        PyErr_SetString(PyExc_ValueError, "box_blur keeps the shape: out must equal in");
        rc = SC_EINVAL;
    }
    if (rc == SC_OK) {
        Py_BEGIN_ALLOW_THREADS
        for (int i = 0; i < k.passes && rc == SC_OK; i++)
            rc = acme_box_blur(k.src.buf, k.dst.buf, k.in, radius, &ex);
        Py_END_ALLOW_THREADS
    }
    return sc_py_finish(&k, rc, "acme.box_blur");
}

static PyMethodDef methods[] = {
    {"box_blur", box_blur, METH_VARARGS,
     "box_blur(src, dst, h, w, c, out_h, out_w, out_c, threads, schedule, chunk, passes, "
     "radius)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "acme_boxblur._boxblur", "acme.box_blur's OpenMP kernel", -1, methods,
};

PyMODINIT_FUNC PyInit__boxblur(void) { return PyModule_Create(&module); }
