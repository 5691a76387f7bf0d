/* module.c: the only file of the core that knows Python.
 *
 * Each binding: parse arguments, convert every array to the dtype and C-contiguity the core needs
 * (PyArray_FROMANY with NPY_ARRAY_IN_ARRAY; a copy only when the input is not already right),
 * check shapes, allocate the output, release the GIL around the core call, and turn a core status
 * code into a Python exception that carries the core's message. Owned references start as NULL and
 * every failure path goes through one `done:` label.
 * Multi-phase initialisation; no module-level mutable state.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include "awq.h"
#include "ops.h"
#include "quant.h"
#include "w4a16.h"

#ifdef AWQ_WITH_CUDA
#include "kernels/awq_cuda.h"
#endif

/* ---------------------------------------------------------------- error translation */

/* Raises the Python exception matching a core status; returns NULL for `return raise_status(...)`. */
static PyObject *raise_status(int status, const awq_err *err) {
    PyObject *type;
    switch (status) {
    case AWQ_ERR_VALUE: type = PyExc_ValueError; break;
    case AWQ_ERR_NOMEM: type = PyExc_MemoryError; break;
    case AWQ_ERR_NUMERIC: type = PyExc_FloatingPointError; break;
    default: type = PyExc_RuntimeError; break;
    }
    PyErr_SetString(type, err->msg[0] ? err->msg : "awq core error");
    return NULL;
}

/* ---------------------------------------------------------------- argument helpers */

/* New reference to `obj` as a C-contiguous array of `type` with `ndim` dims (-1: any), or NULL with
 * a ValueError naming `what`. */
static PyArrayObject *as_array(PyObject *obj, int type, int ndim, const char *what) {
    PyArrayObject *arr = (PyArrayObject *)PyArray_FROMANY(
        obj, type, ndim < 0 ? 0 : ndim, ndim < 0 ? 0 : ndim, NPY_ARRAY_IN_ARRAY);
    if (!arr) {
        PyObject *t, *v, *tb;
        PyErr_Fetch(&t, &v, &tb);
        PyObject *vs = v ? PyObject_Str(v) : NULL;
        PyErr_Format(PyExc_ValueError, "%s: expected a %d-d %s array (%s)", what, ndim,
                     type == NPY_FLOAT32   ? "float32"
                     : type == NPY_UINT16  ? "float16/uint16"
                     : type == NPY_FLOAT16 ? "float16"
                     : type == NPY_UINT32  ? "uint32/int32"
                     : type == NPY_UINT8   ? "uint8"
                     : type == NPY_INT64   ? "int64"
                                           : "numeric",
                     vs ? PyUnicode_AsUTF8(vs) : "conversion failed");
        Py_XDECREF(vs);
        Py_XDECREF(t);
        Py_XDECREF(v);
        Py_XDECREF(tb);
    }
    return arr;
}

/* Like as_array but None -> NULL without error (*ok stays 1); failure sets *ok = 0. */
static PyArrayObject *as_optional(PyObject *obj, int type, int ndim, const char *what, int *ok) {
    if (obj == NULL || obj == Py_None) return NULL;
    PyArrayObject *a = as_array(obj, type, ndim, what);
    if (!a) *ok = 0;
    return a;
}

/* Reinterprets an int32 / uint32 / float16 array as the same-size unsigned type, zero-copy when it
 * is already contiguous; used for packed words and raw fp16 bits. */
static PyArrayObject *as_bits(PyObject *obj, int bits_type, int ndim, const char *what) {
    PyArrayObject *in = (PyArrayObject *)PyArray_FROMANY(obj, NPY_NOTYPE, 0, 0, 0);
    if (!in) return as_array(obj, bits_type, ndim, what);
    int want_size = bits_type == NPY_UINT32 ? 4 : 2;
    if (PyArray_ITEMSIZE(in) != want_size || PyArray_NDIM(in) != ndim ||
        !(PyArray_ISINTEGER(in) || PyArray_TYPE(in) == NPY_FLOAT16)) {
        PyErr_Format(PyExc_ValueError, "%s: expected a %d-d array of %d-byte %s, got %d-d %s", what,
                     ndim, want_size, bits_type == NPY_UINT32 ? "int32/uint32 words" : "float16",
                     PyArray_NDIM(in), PyArray_DESCR(in)->typeobj->tp_name);
        Py_DECREF(in);
        return NULL;
    }
    PyArray_Descr *d = PyArray_DescrFromType(bits_type);
    PyArrayObject *out = (PyArrayObject *)PyArray_FromArray(in, d, NPY_ARRAY_IN_ARRAY);
    Py_DECREF(in);
    if (out && PyArray_TYPE(out) != bits_type) { /* same size, different type: view the bits */
        PyArrayObject *v = (PyArrayObject *)PyArray_View(out, PyArray_DescrFromType(bits_type), NULL);
        Py_DECREF(out);
        out = v;
    }
    return out;
}

#define DIM(a, i) ((int64_t)PyArray_DIM((a), (i)))
#define F32(a) ((float *)PyArray_DATA(a))
#define NEW_F32(nd, dims) ((PyArrayObject *)PyArray_SimpleNew((nd), (dims), NPY_FLOAT32))

/* ---------------------------------------------------------------- info */

PyDoc_STRVAR(cpu_info_doc, "cpu_info() -> dict: isa, threads, blas, cuda_built.");
static PyObject *py_cpu_info(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
#ifdef AWQ_WITH_CUDA
    PyObject *cuda = Py_True;
#else
    PyObject *cuda = Py_False;
#endif
    return Py_BuildValue("{s:s,s:i,s:s,s:O}", "isa", awq_isa_name(awq_cpu_isa()), "threads",
                         awq_num_threads(), "blas", awq_blas_name(), "cuda_built", cuda);
}

PyDoc_STRVAR(cuda_info_doc,
             "cuda_info() -> dict: built, devices (list of (name, major, minor)), error (str or None).");
static PyObject *py_cuda_info(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
#ifdef AWQ_WITH_CUDA
    awq_err err = {{0}};
    int count = 0, st;
    Py_BEGIN_ALLOW_THREADS st = awq_cuda_device_count(&count, &err);
    Py_END_ALLOW_THREADS if (st) return Py_BuildValue("{s:O,s:[],s:s}", "built", Py_True, "devices",
                                                      "error", err.msg);
    PyObject *devs = PyList_New(0);
    if (!devs) return NULL;
    for (int i = 0; i < count; i++) {
        char name[256] = {0};
        int major = 0, minor = 0;
        if (awq_cuda_device_info(i, name, &major, &minor, &err)) {
            Py_DECREF(devs);
            return raise_status(AWQ_ERR_RUNTIME, &err);
        }
        PyObject *t = Py_BuildValue("(sii)", name, major, minor);
        if (!t || PyList_Append(devs, t) < 0) {
            Py_XDECREF(t);
            Py_DECREF(devs);
            return NULL;
        }
        Py_DECREF(t);
    }
    PyObject *r = Py_BuildValue("{s:O,s:N,s:O}", "built", Py_True, "devices", devs, "error", Py_None);
    return r;
#else
    return Py_BuildValue("{s:O,s:[],s:s}", "built", Py_False, "devices", "error",
                         "awq was built without CUDA (nvcc was not found at build time)");
#endif
}

/* ---------------------------------------------------------------- dense ops (ops.h) */

PyDoc_STRVAR(abs_mean_doc, "abs_mean(x[M,K] f32) -> [K] f32: mean over rows of |x|.");
static PyObject *py_abs_mean(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo, *res = NULL;
    PyArrayObject *x = NULL, *out = NULL;
    awq_err err = {{0}};
    if (!PyArg_ParseTuple(args, "O:abs_mean", &xo)) return NULL;
    if (!(x = as_array(xo, NPY_FLOAT32, 2, "abs_mean x"))) goto done;
    npy_intp dims[1] = {PyArray_DIM(x, 1)};
    if (!(out = NEW_F32(1, dims))) goto done;
    int st;
    Py_BEGIN_ALLOW_THREADS st = awq_abs_mean_f32(F32(x), F32(out), DIM(x, 0), DIM(x, 1), &err);
    Py_END_ALLOW_THREADS if (st) {
        raise_status(st, &err);
        goto done;
    }
    res = (PyObject *)out;
    out = NULL;
done:
    Py_XDECREF(x);
    Py_XDECREF(out);
    return res;
}

/* ---------------------------------------------------------------- module */

static PyMethodDef methods[] = {
    {"cpu_info", py_cpu_info, METH_NOARGS, cpu_info_doc},
    {"cuda_info", py_cuda_info, METH_NOARGS, cuda_info_doc},
    {"abs_mean", py_abs_mean, METH_VARARGS, abs_mean_doc},
    /* AWQ_METHODS_END (keep: new entries go above this line) */
    {NULL, NULL, 0, NULL},
};

static int exec_module(PyObject *m) {
    import_array1(-1);
    if (PyModule_AddStringConstant(m, "ISA", awq_isa_name(awq_cpu_isa())) < 0) return -1;
    return 0;
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, exec_module},
    {0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_awq_C", "awq C core: tensor ops, AWQ quantization math, W4A16 kernels.",
    0, methods, slots, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__awq_C(void) { return PyModuleDef_Init(&moduledef); }
