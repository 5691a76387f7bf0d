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
    /* contiguous in its own dtype first (a cast int32 -> uint32 is refused as unsafe), then a view */
    PyArrayObject *out = (PyArrayObject *)PyArray_FromArray(in, NULL, NPY_ARRAY_IN_ARRAY);
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

/* Defined with the W4A16 bindings below: isa keyword (None / "avx512" / "avx2" / "generic"). */
static int parse_isa(const char *name, awq_isa *isa);

/* Shape check helper: sets a ValueError naming the op and argument and returns 0 when cond fails. */
#define REQUIRE(cond, ...)                                                                         \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            PyErr_Format(PyExc_ValueError, __VA_ARGS__);                                           \
            goto done;                                                                             \
        }                                                                                          \
    } while (0)

PyDoc_STRVAR(linear_doc, "linear(x[M,K] f32, w[N,K] f32, bias[N] f32 or None = None) -> [M,N] f32:\n"
                         "x @ w.T + bias through the BLAS provider (see cpu_info()['blas']).");
static PyObject *py_linear(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"x", "w", "bias", NULL};
    PyObject *xo, *wo, *bo = Py_None, *res = NULL;
    PyArrayObject *x = NULL, *w = NULL, *b = NULL, *out = NULL;
    awq_err err = {{0}};
    int ok = 1, st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|O:linear", kwlist, &xo, &wo, &bo)) return NULL;
    if (!(x = as_array(xo, NPY_FLOAT32, 2, "linear x"))) goto done;
    if (!(w = as_array(wo, NPY_FLOAT32, 2, "linear w"))) goto done;
    b = as_optional(bo, NPY_FLOAT32, 1, "linear bias", &ok);
    if (!ok) goto done;
    REQUIRE(DIM(w, 1) == DIM(x, 1), "linear: x has %lld input features but w is [%lld, %lld]",
            (long long)DIM(x, 1), (long long)DIM(w, 0), (long long)DIM(w, 1));
    REQUIRE(!b || DIM(b, 0) == DIM(w, 0), "linear: bias has %lld entries, w has %lld rows",
            (long long)(b ? DIM(b, 0) : 0), (long long)DIM(w, 0));
    npy_intp dims[2] = {PyArray_DIM(x, 0), PyArray_DIM(w, 0)};
    if (!(out = NEW_F32(2, dims))) goto done;
    Py_BEGIN_ALLOW_THREADS st = awq_linear_f32(F32(x), F32(w), b ? F32(b) : NULL, F32(out),
                                               DIM(x, 0), DIM(x, 1), DIM(w, 0), &err);
    Py_END_ALLOW_THREADS if (st) {
        raise_status(st, &err);
        goto done;
    }
    res = (PyObject *)out;
    out = NULL;
done:
    Py_XDECREF(x);
    Py_XDECREF(w);
    Py_XDECREF(b);
    Py_XDECREF(out);
    return res;
}

PyDoc_STRVAR(rmsnorm_doc,
             "rmsnorm(x[M,D] f32, w[D] f32, eps: float, unit_offset: float = 0.0) -> [M,D] f32:\n"
             "x / sqrt(mean(x^2) + eps) * (w + unit_offset) (unit_offset 1 for Gemma-style norms).");
static PyObject *py_rmsnorm(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"x", "w", "eps", "unit_offset", NULL};
    PyObject *xo, *wo, *res = NULL;
    PyArrayObject *x = NULL, *w = NULL, *out = NULL;
    double eps, off = 0.0;
    awq_err err = {{0}};
    int st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOd|d:rmsnorm", kwlist, &xo, &wo, &eps, &off))
        return NULL;
    if (!(x = as_array(xo, NPY_FLOAT32, 2, "rmsnorm x"))) goto done;
    if (!(w = as_array(wo, NPY_FLOAT32, 1, "rmsnorm w"))) goto done;
    REQUIRE(DIM(w, 0) == DIM(x, 1), "rmsnorm: w has %lld entries but x rows have %lld",
            (long long)DIM(w, 0), (long long)DIM(x, 1));
    if (!(out = NEW_F32(2, PyArray_DIMS(x)))) goto done;
    Py_BEGIN_ALLOW_THREADS st = awq_rmsnorm_f32(F32(x), F32(w), F32(out), DIM(x, 0), DIM(x, 1),
                                                (float)eps, (float)off, &err);
    Py_END_ALLOW_THREADS if (st) {
        raise_status(st, &err);
        goto done;
    }
    res = (PyObject *)out;
    out = NULL;
done:
    Py_XDECREF(x);
    Py_XDECREF(w);
    Py_XDECREF(out);
    return res;
}

PyDoc_STRVAR(layernorm_doc,
             "layernorm(x[M,D] f32, w[D] f32 or None, b[D] f32 or None, eps: float) -> [M,D] f32:\n"
             "(x - mean) / sqrt(var + eps) * w + b per row, var the population variance (statistics\n"
             "two-pass in double). w None = ones, b None = zeros; eps finite and >= 0.");
static PyObject *py_layernorm(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"x", "w", "b", "eps", NULL};
    PyObject *xo, *wo, *bo, *res = NULL;
    PyArrayObject *x = NULL, *w = NULL, *b = NULL, *out = NULL;
    double eps;
    awq_err err = {{0}};
    int ok = 1, st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOd:layernorm", kwlist, &xo, &wo, &bo, &eps))
        return NULL;
    if (!(x = as_array(xo, NPY_FLOAT32, 2, "layernorm x"))) goto done;
    w = as_optional(wo, NPY_FLOAT32, 1, "layernorm w", &ok);
    if (!ok) goto done;
    b = as_optional(bo, NPY_FLOAT32, 1, "layernorm b", &ok);
    if (!ok) goto done;
    REQUIRE(!w || DIM(w, 0) == DIM(x, 1), "layernorm: w has %lld entries but x rows have %lld",
            (long long)(w ? DIM(w, 0) : 0), (long long)DIM(x, 1));
    REQUIRE(!b || DIM(b, 0) == DIM(x, 1), "layernorm: b has %lld entries but x rows have %lld",
            (long long)(b ? DIM(b, 0) : 0), (long long)DIM(x, 1));
    if (!(out = NEW_F32(2, PyArray_DIMS(x)))) goto done;
    Py_BEGIN_ALLOW_THREADS st = awq_layernorm_f32(F32(x), w ? F32(w) : NULL, b ? F32(b) : NULL,
                                                  F32(out), DIM(x, 0), DIM(x, 1), (float)eps, &err);
    Py_END_ALLOW_THREADS if (st) {
        raise_status(st, &err);
        goto done;
    }
    res = (PyObject *)out;
    out = NULL;
done:
    Py_XDECREF(x);
    Py_XDECREF(w);
    Py_XDECREF(b);
    Py_XDECREF(out);
    return res;
}

PyDoc_STRVAR(rope_doc,
             "rope_(x[M,H,d] f32, cos[M,rot/2] f32, sin[M,rot/2] f32, rot: int,\n"
             "      interleaved: bool = False) -> None:\n"
             "rotary embedding in place on the first rot dims of each head. interleaved=False: HF\n"
             "rotate_half (neox) pairs (i, i + rot/2); interleaved=True: GPT-J rotate_every_two pairs\n"
             "(2i, 2i+1). x must be a writeable C-contiguous float32 ndarray.");
static PyObject *py_rope(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"x", "cos", "sin", "rot", "interleaved", NULL};
    PyObject *xo, *co, *so, *res = NULL;
    PyArrayObject *x, *c = NULL, *s = NULL;
    long long rot;
    int interleaved = 0;
    awq_err err = {{0}};
    int st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOL|p:rope_", kwlist, &xo, &co, &so, &rot,
                                     &interleaved))
        return NULL;
    x = (PyArrayObject *)xo; /* borrowed: written in place, so never converted */
    REQUIRE(PyArray_Check(xo) && PyArray_TYPE(x) == NPY_FLOAT32 && PyArray_NDIM(x) == 3 &&
                PyArray_IS_C_CONTIGUOUS(x) && PyArray_ISWRITEABLE(x),
            "rope_ x: expected a writeable C-contiguous 3-d float32 ndarray [M, H, d] (it is "
            "rotated in place, so it cannot be converted)");
    if (!(c = as_array(co, NPY_FLOAT32, 2, "rope_ cos"))) goto done;
    if (!(s = as_array(so, NPY_FLOAT32, 2, "rope_ sin"))) goto done;
    REQUIRE(DIM(c, 0) == DIM(x, 0) && DIM(c, 1) == rot / 2 && DIM(s, 0) == DIM(x, 0) &&
                DIM(s, 1) == rot / 2,
            "rope_: cos and sin must be [M=%lld, rot/2=%lld], got [%lld, %lld] and [%lld, %lld]",
            (long long)DIM(x, 0), rot / 2, (long long)DIM(c, 0), (long long)DIM(c, 1),
            (long long)DIM(s, 0), (long long)DIM(s, 1));
    Py_BEGIN_ALLOW_THREADS st = awq_rope_f32_ex(F32(x), F32(c), F32(s), DIM(x, 0), DIM(x, 1),
                                                DIM(x, 2), rot, interleaved, &err);
    Py_END_ALLOW_THREADS if (st) {
        raise_status(st, &err);
        goto done;
    }
    Py_INCREF(Py_None);
    res = Py_None;
done:
    Py_XDECREF(c);
    Py_XDECREF(s);
    return res;
}

PyDoc_STRVAR(attention_doc,
             "attention(q[B,T,Hq,d], k[B,S,Hkv,d], v[B,S,Hkv,dv], scale: float, q_pos0: int,\n"
             "          window: int = 0, kv_len: int64[B] or None = None, isa: str or None = None,\n"
             "          alibi: f32[Hq] or None = None, softcap: float = 0.0) -> [B,T,Hq,dv] f32:\n"
             "causal grouped-query attention; query t sits at position p = q_pos0 + t and sees keys\n"
             "j <= p (and j > p - window if window > 0, and j < kv_len[b]). Score of key j for head h:\n"
             "s = (q * scale) . k; if softcap > 0: s = softcap * tanh(s / softcap) (Gemma2); with\n"
             "alibi: s += alibi[h] * (j - p) (BLOOM / MPT slopes); then the mask and an fp32 softmax.\n"
             "v's head dim dv may differ from d (DeepSeek MLA); v must match k on B, S, Hkv.\n"
             "Rows that see no key output 0. isa pins the kernel family ('avx512', 'avx2',\n"
             "'generic'; tests), None = the best this CPU has.");
static PyObject *py_attention(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"q",   "k",   "v",     "scale",   "q_pos0", "window",
                             "kv_len", "isa", "alibi", "softcap", NULL};
    PyObject *qo, *ko, *vo, *lo = Py_None, *ao = Py_None, *res = NULL;
    PyArrayObject *q = NULL, *k = NULL, *v = NULL, *kvl = NULL, *al = NULL, *out = NULL;
    double scale, softcap = 0.0;
    long long q_pos0, window = 0;
    const char *isa_name = NULL;
    awq_isa isa;
    awq_err err = {{0}};
    int ok = 1, st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOdL|LOzOd:attention", kwlist, &qo, &ko, &vo,
                                     &scale, &q_pos0, &window, &lo, &isa_name, &ao, &softcap))
        return NULL;
    if (parse_isa(isa_name, &isa) < 0) return NULL;
    if (!(q = as_array(qo, NPY_FLOAT32, 4, "attention q"))) goto done;
    if (!(k = as_array(ko, NPY_FLOAT32, 4, "attention k"))) goto done;
    if (!(v = as_array(vo, NPY_FLOAT32, 4, "attention v"))) goto done;
    kvl = as_optional(lo, NPY_INT64, 1, "attention kv_len", &ok);
    if (!ok) goto done;
    al = as_optional(ao, NPY_FLOAT32, 1, "attention alibi", &ok);
    if (!ok) goto done;
    const int64_t B = DIM(q, 0), T = DIM(q, 1), Hq = DIM(q, 2), d = DIM(q, 3);
    REQUIRE(DIM(k, 0) == B && DIM(k, 3) == d,
            "attention: k is [%lld, %lld, %lld, %lld] but q is [B=%lld, T, Hq, d=%lld]",
            (long long)DIM(k, 0), (long long)DIM(k, 1), (long long)DIM(k, 2), (long long)DIM(k, 3),
            (long long)B, (long long)d);
    REQUIRE(DIM(v, 0) == DIM(k, 0) && DIM(v, 1) == DIM(k, 1) && DIM(v, 2) == DIM(k, 2),
            "attention: v is [%lld, %lld, %lld, %lld] but k is [%lld, %lld, %lld, %lld] (v must "
            "match k on B, S, Hkv; its head dim may differ)",
            (long long)DIM(v, 0), (long long)DIM(v, 1), (long long)DIM(v, 2), (long long)DIM(v, 3),
            (long long)DIM(k, 0), (long long)DIM(k, 1), (long long)DIM(k, 2), (long long)DIM(k, 3));
    REQUIRE(!kvl || DIM(kvl, 0) == B, "attention: kv_len has %lld entries, batch is %lld",
            (long long)(kvl ? DIM(kvl, 0) : 0), (long long)B);
    REQUIRE(!al || DIM(al, 0) == Hq, "attention: alibi has %lld slopes, there are Hq=%lld query heads",
            (long long)(al ? DIM(al, 0) : 0), (long long)Hq);
    /* softcap's range (finite, >= 0) is checked by the core, after the cast to float. */
    npy_intp odims[4] = {PyArray_DIM(q, 0), PyArray_DIM(q, 1), PyArray_DIM(q, 2), PyArray_DIM(v, 3)};
    if (!(out = NEW_F32(4, odims))) goto done;
    awq_attention_opts opt = AWQ_ATTENTION_OPTS_INIT;
    opt.window = window;
    opt.kv_len = kvl ? (const int64_t *)PyArray_DATA(kvl) : NULL;
    opt.alibi = al ? F32(al) : NULL;
    opt.softcap = (float)softcap;
    opt.dv = DIM(v, 3);
    opt.isa = (int)isa;
    Py_BEGIN_ALLOW_THREADS st = awq_attention_f32_ex(F32(q), F32(k), F32(v), F32(out), B, T,
                                                     DIM(k, 1), Hq, DIM(k, 2), d, (float)scale,
                                                     q_pos0, &opt, &err);
    Py_END_ALLOW_THREADS if (st) {
        raise_status(st, &err);
        goto done;
    }
    res = (PyObject *)out;
    out = NULL;
done:
    Py_XDECREF(q);
    Py_XDECREF(k);
    Py_XDECREF(v);
    Py_XDECREF(kvl);
    Py_XDECREF(al);
    Py_XDECREF(out);
    return res;
}

PyDoc_STRVAR(silu_mul_doc, "silu_mul(gate f32, up f32) -> f32 array of gate's shape:\n"
                           "silu(gate) * up element-wise (any shapes of the same size).");
static PyObject *py_silu_mul(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"gate", "up", NULL};
    PyObject *go, *uo, *res = NULL;
    PyArrayObject *g = NULL, *u = NULL, *out = NULL;
    awq_err err = {{0}};
    int st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO:silu_mul", kwlist, &go, &uo)) return NULL;
    if (!(g = as_array(go, NPY_FLOAT32, -1, "silu_mul gate"))) goto done;
    if (!(u = as_array(uo, NPY_FLOAT32, -1, "silu_mul up"))) goto done;
    REQUIRE(PyArray_SIZE(g) == PyArray_SIZE(u), "silu_mul: gate has %lld elements, up has %lld",
            (long long)PyArray_SIZE(g), (long long)PyArray_SIZE(u));
    if (!(out = NEW_F32(PyArray_NDIM(g), PyArray_DIMS(g)))) goto done;
    Py_BEGIN_ALLOW_THREADS st =
        awq_silu_mul_f32(F32(g), F32(u), F32(out), (int64_t)PyArray_SIZE(g), &err);
    Py_END_ALLOW_THREADS if (st) {
        raise_status(st, &err);
        goto done;
    }
    res = (PyObject *)out;
    out = NULL;
done:
    Py_XDECREF(g);
    Py_XDECREF(u);
    Py_XDECREF(out);
    return res;
}

/* kind name -> awq_act, or -1 with a ValueError naming the op and the unknown kind. */
static int parse_act(const char *name, const char *op, awq_act *kind) {
    awq_err err = {{0}};
    if (awq_act_from_name(name, kind, &err) == AWQ_OK) return 0;
    PyErr_Format(PyExc_ValueError, "%s: %s", op, err.msg);
    return -1;
}

PyDoc_STRVAR(act_doc,
             "act(x f32 any shape, kind: str) -> f32 array of x's shape: element-wise activation.\n"
             "kind: 'silu' x*sigmoid(x); 'gelu' 0.5x(1+erf(x/sqrt2)) (exact-erf GELU; erf to 1.5e-7);\n"
             "'gelu_tanh' 0.5x(1+tanh(sqrt(2/pi)(x+0.044715x^3))) (HF gelu_new, gelu_pytorch_tanh,\n"
             "gelu_fast); 'relu' max(x, 0).");
static PyObject *py_act(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"x", "kind", NULL};
    PyObject *xo, *res = NULL;
    PyArrayObject *x = NULL, *out = NULL;
    const char *kind_name;
    awq_act kind;
    awq_err err = {{0}};
    int st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Os:act", kwlist, &xo, &kind_name)) return NULL;
    if (parse_act(kind_name, "act", &kind) < 0) return NULL;
    if (!(x = as_array(xo, NPY_FLOAT32, -1, "act x"))) goto done;
    if (!(out = NEW_F32(PyArray_NDIM(x), PyArray_DIMS(x)))) goto done;
    Py_BEGIN_ALLOW_THREADS st = awq_act_f32(F32(x), F32(out), (int64_t)PyArray_SIZE(x), kind, &err);
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

PyDoc_STRVAR(act_mul_doc,
             "act_mul(gate f32, up f32, kind: str) -> f32 array of gate's shape: act(gate) * up\n"
             "element-wise (any shapes of the same size; kinds as in act()). act_mul(g, u, 'silu')\n"
             "equals silu_mul(g, u) bit for bit.");
static PyObject *py_act_mul(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"gate", "up", "kind", NULL};
    PyObject *go, *uo, *res = NULL;
    PyArrayObject *g = NULL, *u = NULL, *out = NULL;
    const char *kind_name;
    awq_act kind;
    awq_err err = {{0}};
    int st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOs:act_mul", kwlist, &go, &uo, &kind_name))
        return NULL;
    if (parse_act(kind_name, "act_mul", &kind) < 0) return NULL;
    if (!(g = as_array(go, NPY_FLOAT32, -1, "act_mul gate"))) goto done;
    if (!(u = as_array(uo, NPY_FLOAT32, -1, "act_mul up"))) goto done;
    REQUIRE(PyArray_SIZE(g) == PyArray_SIZE(u), "act_mul: gate has %lld elements, up has %lld",
            (long long)PyArray_SIZE(g), (long long)PyArray_SIZE(u));
    if (!(out = NEW_F32(PyArray_NDIM(g), PyArray_DIMS(g)))) goto done;
    Py_BEGIN_ALLOW_THREADS st =
        awq_act_mul_f32(F32(g), F32(u), F32(out), (int64_t)PyArray_SIZE(g), kind, &err);
    Py_END_ALLOW_THREADS if (st) {
        raise_status(st, &err);
        goto done;
    }
    res = (PyObject *)out;
    out = NULL;
done:
    Py_XDECREF(g);
    Py_XDECREF(u);
    Py_XDECREF(out);
    return res;
}

/* ---------------------------------------------------------------- quantization math (quant.h) */

PyDoc_STRVAR(pseudo_quantize_doc,
             "pseudo_quantize(w[N,K] f32, group_size: int, w_bit: int, zero_point: bool) -> [N,K] f32:\n"
             "dequant(quant(w)) per group of group_size input columns (AutoAWQ formulas, round half\n"
             "to even). group_size must divide K (pass K for -1). NaN/Inf -> FloatingPointError.");
static PyObject *py_pseudo_quantize(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"w", "group_size", "w_bit", "zero_point", NULL};
    PyObject *wo, *res = NULL;
    PyArrayObject *w = NULL, *out = NULL;
    long long g;
    int bits, zp, st;
    awq_err err = {{0}};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OLip:pseudo_quantize", kwlist, &wo, &g, &bits, &zp))
        return NULL;
    if (!(w = as_array(wo, NPY_FLOAT32, 2, "pseudo_quantize w"))) goto done;
    if (!(out = NEW_F32(2, PyArray_DIMS(w)))) goto done;
    Py_BEGIN_ALLOW_THREADS st = awq_pseudo_quantize_f32(F32(w), F32(out), DIM(w, 0), DIM(w, 1), g,
                                                        bits, zp, &err);
    Py_END_ALLOW_THREADS if (st) {
        raise_status(st, &err);
        goto done;
    }
    res = (PyObject *)out;
    out = NULL;
done:
    Py_XDECREF(w);
    Py_XDECREF(out);
    return res;
}

PyDoc_STRVAR(quantize_codes_doc,
             "quantize_codes(w[N,K] f32, group_size: int, w_bit: int, zero_point: bool)\n"
             "-> (codes uint8 [N,K], scales f32 [N,G], zeros uint8 [N,G]), G = K / group_size.\n"
             "Symmetric mode stores codes offset by 2^(w_bit-1) with that as the zero.");
static PyObject *py_quantize_codes(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"w", "group_size", "w_bit", "zero_point", NULL};
    PyObject *wo, *res = NULL;
    PyArrayObject *w = NULL, *codes = NULL, *scales = NULL, *zeros = NULL;
    long long g;
    int bits, zp, st;
    awq_err err = {{0}};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OLip:quantize_codes", kwlist, &wo, &g, &bits, &zp))
        return NULL;
    if (!(w = as_array(wo, NPY_FLOAT32, 2, "quantize_codes w"))) goto done;
    /* An invalid group size is reported by the core before anything is written. */
    npy_intp G = g > 0 && DIM(w, 1) % g == 0 ? (npy_intp)(DIM(w, 1) / g) : 0;
    npy_intp gdims[2] = {PyArray_DIM(w, 0), G};
    if (!(codes = (PyArrayObject *)PyArray_SimpleNew(2, PyArray_DIMS(w), NPY_UINT8))) goto done;
    if (!(scales = NEW_F32(2, gdims))) goto done;
    if (!(zeros = (PyArrayObject *)PyArray_SimpleNew(2, gdims, NPY_UINT8))) goto done;
    Py_BEGIN_ALLOW_THREADS st = awq_quantize_codes_f32(
        F32(w), (uint8_t *)PyArray_DATA(codes), F32(scales), (uint8_t *)PyArray_DATA(zeros),
        DIM(w, 0), DIM(w, 1), g, bits, zp, &err);
    Py_END_ALLOW_THREADS if (st) {
        raise_status(st, &err);
        goto done;
    }
    res = Py_BuildValue("(OOO)", codes, scales, zeros);
done:
    Py_XDECREF(w);
    Py_XDECREF(codes);
    Py_XDECREF(scales);
    Py_XDECREF(zeros);
    return res;
}

PyDoc_STRVAR(pack_gemm_doc,
             "pack_gemm(codes uint8 [R,C]) -> int32 [R, C/8]: AutoAWQ GEMM order, nibble i of word j\n"
             "= column 8j + [0,2,4,6,1,3,5,7][i]. C % 8 != 0 or a code > 15 -> ValueError.");
static PyObject *py_pack_gemm(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *co, *res = NULL;
    PyArrayObject *c = NULL, *out = NULL;
    awq_err err = {{0}};
    int st;
    if (!PyArg_ParseTuple(args, "O:pack_gemm", &co)) return NULL;
    if (!(c = as_array(co, NPY_UINT8, 2, "pack_gemm codes"))) goto done;
    REQUIRE(DIM(c, 1) % 8 == 0, "pack_gemm: codes has %lld columns, not a multiple of 8",
            (long long)DIM(c, 1));
    npy_intp dims[2] = {PyArray_DIM(c, 0), PyArray_DIM(c, 1) / 8};
    if (!(out = (PyArrayObject *)PyArray_SimpleNew(2, dims, NPY_INT32))) goto done;
    Py_BEGIN_ALLOW_THREADS st = awq_pack_gemm((const uint8_t *)PyArray_DATA(c),
                                              (uint32_t *)PyArray_DATA(out), DIM(c, 0), DIM(c, 1),
                                              &err);
    Py_END_ALLOW_THREADS if (st) {
        raise_status(st, &err);
        goto done;
    }
    res = (PyObject *)out;
    out = NULL;
done:
    Py_XDECREF(c);
    Py_XDECREF(out);
    return res;
}

PyDoc_STRVAR(unpack_gemm_doc,
             "unpack_gemm(packed int32 or uint32 [R, C/8]) -> uint8 [R, C]: inverse of pack_gemm.");
static PyObject *py_unpack_gemm(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *po, *res = NULL;
    PyArrayObject *p = NULL, *out = NULL;
    awq_err err = {{0}};
    int st;
    if (!PyArg_ParseTuple(args, "O:unpack_gemm", &po)) return NULL;
    if (!(p = as_bits(po, NPY_UINT32, 2, "unpack_gemm packed"))) goto done;
    npy_intp dims[2] = {PyArray_DIM(p, 0), PyArray_DIM(p, 1) * 8};
    if (!(out = (PyArrayObject *)PyArray_SimpleNew(2, dims, NPY_UINT8))) goto done;
    Py_BEGIN_ALLOW_THREADS st = awq_unpack_gemm((const uint32_t *)PyArray_DATA(p),
                                                (uint8_t *)PyArray_DATA(out), DIM(p, 0),
                                                DIM(p, 1) * 8, &err);
    Py_END_ALLOW_THREADS if (st) {
        raise_status(st, &err);
        goto done;
    }
    res = (PyObject *)out;
    out = NULL;
done:
    Py_XDECREF(p);
    Py_XDECREF(out);
    return res;
}

PyDoc_STRVAR(clip_search_doc,
             "clip_search(w[N,K] f32, x[T,K] f32, group_size: int, w_bit: int, zero_point: bool,\n"
             "            n_grid: int = 20, max_shrink: float = 0.5) -> max_val f32 [N, G]:\n"
             "AWQ clip search (AutoAWQ _compute_best_clip) on already subsampled tokens x.");
static PyObject *py_clip_search(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"w",          "x",      "group_size", "w_bit",
                             "zero_point", "n_grid", "max_shrink", NULL};
    PyObject *wo, *xo, *res = NULL;
    PyArrayObject *w = NULL, *x = NULL, *out = NULL;
    long long g;
    int bits, zp, n_grid = 20, st;
    double max_shrink = 0.5;
    awq_err err = {{0}};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOLip|id:clip_search", kwlist, &wo, &xo, &g, &bits,
                                     &zp, &n_grid, &max_shrink))
        return NULL;
    if (!(w = as_array(wo, NPY_FLOAT32, 2, "clip_search w"))) goto done;
    if (!(x = as_array(xo, NPY_FLOAT32, 2, "clip_search x"))) goto done;
    REQUIRE(DIM(x, 1) == DIM(w, 1), "clip_search: x has %lld features but w is [%lld, %lld]",
            (long long)DIM(x, 1), (long long)DIM(w, 0), (long long)DIM(w, 1));
    npy_intp dims[2] = {PyArray_DIM(w, 0),
                        g > 0 && DIM(w, 1) % g == 0 ? (npy_intp)(DIM(w, 1) / g) : 0};
    if (!(out = NEW_F32(2, dims))) goto done;
    Py_BEGIN_ALLOW_THREADS st =
        awq_clip_search_f32(F32(w), F32(x), F32(out), DIM(w, 0), DIM(w, 1), DIM(x, 0), g, bits, zp,
                            n_grid, (float)max_shrink, &err);
    Py_END_ALLOW_THREADS if (st) {
        raise_status(st, &err);
        goto done;
    }
    res = (PyObject *)out;
    out = NULL;
done:
    Py_XDECREF(w);
    Py_XDECREF(x);
    Py_XDECREF(out);
    return res;
}

#undef REQUIRE

/* ---------------------------------------------------------------- W4A16 (w4a16.h) */

/* isa keyword of the matmul bindings: None -> the best family this CPU has (what callers want);
 * "avx512" / "avx2" / "generic" pin one family (how the tests cover them all). 0 or -1 + error. */
static int parse_isa(const char *name, awq_isa *isa) {
    if (!name) {
        *isa = awq_cpu_isa();
        return 0;
    }
    if (!strcmp(name, "avx512")) *isa = AWQ_ISA_AVX512;
    else if (!strcmp(name, "avx2")) *isa = AWQ_ISA_AVX2;
    else if (!strcmp(name, "generic")) *isa = AWQ_ISA_GENERIC;
    else {
        PyErr_Format(PyExc_ValueError, "isa: expected None, 'avx512', 'avx2' or 'generic', got '%s'",
                     name);
        return -1;
    }
    return 0;
}

/* Shared body of w4a16_matmul / w4a16_matmul_ref: converts and checks the AutoAWQ tensors, runs
 * the core with the GIL released, returns y[M, N] or NULL with an exception. */
static PyObject *w4a16_call(const char *who, PyObject *xo, PyObject *qo, PyObject *zo,
                            PyObject *so, PyObject *bo, long long g, const char *isa_name,
                            int ref) {
    PyObject *res = NULL;
    PyArrayObject *x = NULL, *qw = NULL, *qz = NULL, *sc = NULL, *bias = NULL, *out = NULL;
    awq_err err = {{0}};
    awq_isa isa;
    int ok = 1, st;
    if (parse_isa(isa_name, &isa) < 0) return NULL;
    if (!(x = as_array(xo, NPY_FLOAT32, 2, "x"))) goto done;
    if (!(qw = as_bits(qo, NPY_UINT32, 2, "qweight"))) goto done;
    if (!(qz = as_bits(zo, NPY_UINT32, 2, "qzeros"))) goto done;
    if (!(sc = as_bits(so, NPY_UINT16, 2, "scales"))) goto done;
    bias = as_optional(bo, NPY_FLOAT32, 1, "bias", &ok);
    if (!ok) goto done;
    const int64_t M = DIM(x, 0), K = DIM(x, 1), W = DIM(qw, 1), N = 8 * W;
    if (DIM(qw, 0) != K) {
        PyErr_Format(PyExc_ValueError, "%s: qweight has %lld rows but x has K=%lld columns", who,
                     (long long)DIM(qw, 0), (long long)K);
        goto done;
    }
    if (g <= 0 || K % g) {
        PyErr_Format(PyExc_ValueError, "%s: group_size %lld does not divide K=%lld", who, g,
                     (long long)K);
        goto done;
    }
    const int64_t G = K / g;
    if (DIM(qz, 0) != G || DIM(qz, 1) != W) {
        PyErr_Format(PyExc_ValueError, "%s: qzeros has shape (%lld, %lld), expected (%lld, %lld)",
                     who, (long long)DIM(qz, 0), (long long)DIM(qz, 1), (long long)G, (long long)W);
        goto done;
    }
    if (DIM(sc, 0) != G || DIM(sc, 1) != N) {
        PyErr_Format(PyExc_ValueError, "%s: scales has shape (%lld, %lld), expected (%lld, %lld)",
                     who, (long long)DIM(sc, 0), (long long)DIM(sc, 1), (long long)G, (long long)N);
        goto done;
    }
    if (bias && DIM(bias, 0) != N) {
        PyErr_Format(PyExc_ValueError, "%s: bias has %lld entries, expected N=%lld", who,
                     (long long)DIM(bias, 0), (long long)N);
        goto done;
    }
    npy_intp dims[2] = {(npy_intp)M, (npy_intp)N};
    if (!(out = NEW_F32(2, dims))) goto done;
    {
        const float *xp = F32(x), *bp = bias ? F32(bias) : NULL;
        const uint32_t *qp = PyArray_DATA(qw), *zp = PyArray_DATA(qz);
        const uint16_t *sp = PyArray_DATA(sc);
        float *yp = F32(out);
        Py_BEGIN_ALLOW_THREADS
        st = ref ? awq_w4a16_matmul_ref(xp, qp, zp, sp, bp, yp, M, K, N, g, &err)
                 : awq_w4a16_matmul_isa(xp, qp, zp, sp, bp, yp, M, K, N, g, isa, &err);
        Py_END_ALLOW_THREADS
    }
    if (st) {
        raise_status(st, &err);
        goto done;
    }
    res = (PyObject *)out;
    out = NULL;
done:
    Py_XDECREF(x);
    Py_XDECREF(qw);
    Py_XDECREF(qz);
    Py_XDECREF(sc);
    Py_XDECREF(bias);
    Py_XDECREF(out);
    return res;
}

PyDoc_STRVAR(w4a16_matmul_doc,
             "w4a16_matmul(x[M,K] f32, qweight[K,N/8] int32, qzeros[G,N/8] int32, scales[G,N] f16,\n"
             "             bias[N] f32 or None, group_size, *, isa=None) -> [M,N] f32\n"
             "x @ W + bias on the AutoAWQ GEMM layout, W[k,n] = (q[k,n] - z[k//g,n]) * s[k//g,n],\n"
             "fp32 accumulation. isa (None = best for this CPU, or 'avx512'/'avx2'/'generic') pins a\n"
             "kernel family.");
static PyObject *py_w4a16_matmul(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"x", "qweight", "qzeros", "scales", "bias", "group_size", "isa", NULL};
    PyObject *xo, *qo, *zo, *so, *bo;
    long long g;
    const char *isa = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOL|$z:w4a16_matmul", kwlist, &xo, &qo, &zo,
                                     &so, &bo, &g, &isa))
        return NULL;
    return w4a16_call("w4a16_matmul", xo, qo, zo, so, bo, g, isa, 0);
}

PyDoc_STRVAR(w4a16_matmul_ref_doc,
             "w4a16_matmul_ref(x, qweight, qzeros, scales, bias, group_size) -> [M,N] f32\n"
             "Scalar reference of w4a16_matmul (double accumulation), same arguments.");
static PyObject *py_w4a16_matmul_ref(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"x", "qweight", "qzeros", "scales", "bias", "group_size", NULL};
    PyObject *xo, *qo, *zo, *so, *bo;
    long long g;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOL:w4a16_matmul_ref", kwlist, &xo, &qo, &zo,
                                     &so, &bo, &g))
        return NULL;
    return w4a16_call("w4a16_matmul_ref", xo, qo, zo, so, bo, g, NULL, 1);
}

PyDoc_STRVAR(f16_matmul_doc,
             "f16_matmul(x[M,K] f32, w[N,K] f16, bias[N] f32 or None, *, isa=None) -> [M,N] f32\n"
             "x @ w.T + bias with fp16 weights (tied embedding as lm_head, unquantized linears).");
static PyObject *py_f16_matmul(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"x", "w", "bias", "isa", NULL};
    PyObject *xo, *wo, *bo, *res = NULL;
    PyArrayObject *x = NULL, *w = NULL, *bias = NULL, *out = NULL;
    const char *isa_name = NULL;
    awq_err err = {{0}};
    awq_isa isa;
    int ok = 1, st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|$z:f16_matmul", kwlist, &xo, &wo, &bo,
                                     &isa_name))
        return NULL;
    if (parse_isa(isa_name, &isa) < 0) return NULL;
    if (!(x = as_array(xo, NPY_FLOAT32, 2, "x"))) goto done;
    if (!(w = as_bits(wo, NPY_UINT16, 2, "w"))) goto done;
    bias = as_optional(bo, NPY_FLOAT32, 1, "bias", &ok);
    if (!ok) goto done;
    const int64_t M = DIM(x, 0), K = DIM(x, 1), N = DIM(w, 0);
    if (DIM(w, 1) != K) {
        PyErr_Format(PyExc_ValueError, "f16_matmul: w has %lld columns but x has K=%lld",
                     (long long)DIM(w, 1), (long long)K);
        goto done;
    }
    if (bias && DIM(bias, 0) != N) {
        PyErr_Format(PyExc_ValueError, "f16_matmul: bias has %lld entries, expected N=%lld",
                     (long long)DIM(bias, 0), (long long)N);
        goto done;
    }
    npy_intp dims[2] = {(npy_intp)M, (npy_intp)N};
    if (!(out = NEW_F32(2, dims))) goto done;
    {
        const float *xp = F32(x), *bp = bias ? F32(bias) : NULL;
        const uint16_t *wp = PyArray_DATA(w);
        float *yp = F32(out);
        Py_BEGIN_ALLOW_THREADS
        st = awq_f16_matmul_isa(xp, wp, bp, yp, M, K, N, isa, &err);
        Py_END_ALLOW_THREADS
    }
    if (st) {
        raise_status(st, &err);
        goto done;
    }
    res = (PyObject *)out;
    out = NULL;
done:
    Py_XDECREF(x);
    Py_XDECREF(w);
    Py_XDECREF(bias);
    Py_XDECREF(out);
    return res;
}

/* ---- CUDA tensors and ops ---- */
/* Bindings of csrc/kernels/ops_cuda.h for awq/gpu.py: the per-device context (a capsule owning the
 * caching allocator and the cuBLAS handle), device blocks (capsules that give their memory back to
 * the context's cache when collected), copies, DLPack capsules in and out, and the dense ops.
 * GPU tensors are Python objects (awq.gpu.GpuTensor); these bindings take their raw device
 * pointers (Python ints) and sizes, which awq/gpu.py checks (dtype, shape, device) before calling.
 * `stream` arguments are cudaStream_t handles as ints (0 = the legacy default stream). */
#ifdef AWQ_WITH_CUDA
#include "kernels/ops_cuda.h"

#define CTX_CAPSULE "awq.cuda_context"
#define BLOCK_CAPSULE "awq.cuda_block"
#define DL_OWNER_CAPSULE "awq.dlpack_owner"

static void ctx_capsule_free(PyObject *cap) {
    awq_cuda_ctx *ctx = (awq_cuda_ctx *)PyCapsule_GetPointer(cap, CTX_CAPSULE);
    if (ctx) awq_cuda_ctx_destroy(ctx);
    else PyErr_Clear();
}

/* Context pointer of a context capsule (borrowed), or NULL with a TypeError. */
static awq_cuda_ctx *ctx_of(PyObject *obj) {
    if (!PyCapsule_IsValid(obj, CTX_CAPSULE)) {
        PyErr_SetString(PyExc_TypeError, "expected a CUDA context capsule (awq.gpu.context(d).handle)");
        return NULL;
    }
    return (awq_cuda_ctx *)PyCapsule_GetPointer(obj, CTX_CAPSULE);
}

#define PTR(v) ((void *)(uintptr_t)(v))

/* Runs a core call with the GIL released; on failure raises and jumps to `done`. */
#define CUDA_CALL(call)                                                                            \
    do {                                                                                           \
        int st_;                                                                                   \
        Py_BEGIN_ALLOW_THREADS st_ = (call);                                                       \
        Py_END_ALLOW_THREADS if (st_) {                                                            \
            raise_status(st_, &err);                                                               \
            goto done;                                                                             \
        }                                                                                          \
    } while (0)

PyDoc_STRVAR(cuda_context_new_doc,
             "cuda_context_new(device: int) -> capsule: a CUDA context (caching allocator, cuBLAS\n"
             "handle) for one device. RuntimeError naming the CUDA call when the device is unusable.");
static PyObject *py_cuda_context_new(PyObject *self, PyObject *args) {
    (void)self;
    int device;
    awq_cuda_ctx *ctx = NULL;
    awq_err err = {{0}};
    PyObject *res = NULL;
    if (!PyArg_ParseTuple(args, "i:cuda_context_new", &device)) return NULL;
    CUDA_CALL(awq_cuda_ctx_create(device, &ctx, &err));
    res = PyCapsule_New(ctx, CTX_CAPSULE, ctx_capsule_free);
    if (!res) awq_cuda_ctx_destroy(ctx);
done:
    return res;
}

/* A device block: memory from the context's allocator, returned to its cache by the capsule's
 * destructor; holds a reference to the context capsule so the context outlives its blocks. */
typedef struct {
    PyObject *ctx_cap;
    awq_cuda_ctx *ctx;
    void *ptr;
    size_t nbytes;
} cuda_block;

static void block_capsule_free(PyObject *cap) {
    cuda_block *b = (cuda_block *)PyCapsule_GetPointer(cap, BLOCK_CAPSULE);
    if (!b) {
        PyErr_Clear();
        return;
    }
    awq_cuda_free(b->ctx, b->ptr, b->nbytes);
    Py_DECREF(b->ctx_cap);
    PyMem_RawFree(b);
}

PyDoc_STRVAR(cuda_alloc_doc,
             "cuda_alloc(ctx, nbytes: int, what: str) -> (block capsule, device pointer int).\n"
             "The memory goes back to ctx's cache when the capsule is collected. Out of memory ->\n"
             "MemoryError naming `what` and the size.");
static PyObject *py_cuda_alloc(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap, *res = NULL;
    unsigned long long nbytes;
    const char *what;
    void *ptr = NULL;
    awq_err err = {{0}};
    if (!PyArg_ParseTuple(args, "OKs:cuda_alloc", &cap, &nbytes, &what)) return NULL;
    awq_cuda_ctx *ctx = ctx_of(cap);
    if (!ctx) return NULL;
    cuda_block *b = (cuda_block *)PyMem_RawMalloc(sizeof *b);
    if (!b) return PyErr_NoMemory();
    CUDA_CALL(awq_cuda_alloc(ctx, (size_t)nbytes, what, &ptr, &err));
    b->ctx_cap = cap;
    b->ctx = ctx;
    b->ptr = ptr;
    b->nbytes = (size_t)nbytes;
    Py_INCREF(cap);
    PyObject *bc = PyCapsule_New(b, BLOCK_CAPSULE, block_capsule_free);
    if (!bc) {
        awq_cuda_free(ctx, ptr, (size_t)nbytes);
        Py_DECREF(cap);
        PyMem_RawFree(b);
        return NULL;
    }
    b = NULL;
    res = Py_BuildValue("(NK)", bc, (unsigned long long)(uintptr_t)ptr);
done:
    PyMem_RawFree(b);
    return res;
}

PyDoc_STRVAR(cuda_memory_stats_doc,
             "cuda_memory_stats(ctx) -> dict of the allocator's byte and call counters: in_use,\n"
             "requested, cached, reserved, peak_in_use, peak_reserved, n_alloc, n_cache_hit,\n"
             "n_cuda_malloc, n_cuda_free.");
static PyObject *py_cuda_memory_stats(PyObject *self, PyObject *cap) {
    (void)self;
    awq_cuda_ctx *ctx = ctx_of(cap);
    if (!ctx) return NULL;
    awq_cuda_mem_stats s;
    awq_cuda_mem_stats_get(ctx, &s);
    return Py_BuildValue("{s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L}", "in_use", (long long)s.in_use,
                         "requested", (long long)s.requested, "cached", (long long)s.cached,
                         "reserved", (long long)s.reserved, "peak_in_use", (long long)s.peak_in_use,
                         "peak_reserved", (long long)s.peak_reserved, "n_alloc", (long long)s.n_alloc,
                         "n_cache_hit", (long long)s.n_cache_hit, "n_cuda_malloc",
                         (long long)s.n_cuda_malloc, "n_cuda_free", (long long)s.n_cuda_free);
}

PyDoc_STRVAR(cuda_empty_cache_doc, "cuda_empty_cache(ctx) -> None: cudaFree of every cached block.");
static PyObject *py_cuda_empty_cache(PyObject *self, PyObject *cap) {
    (void)self;
    awq_err err = {{0}};
    PyObject *res = NULL;
    awq_cuda_ctx *ctx = ctx_of(cap);
    if (!ctx) return NULL;
    CUDA_CALL(awq_cuda_empty_cache(ctx, &err));
    Py_INCREF(Py_None);
    res = Py_None;
done:
    return res;
}

PyDoc_STRVAR(cuda_size_class_doc, "cuda_size_class(nbytes) -> int: bytes the allocator reserves.");
static PyObject *py_cuda_size_class(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long n;
    if (!PyArg_ParseTuple(args, "K:cuda_size_class", &n)) return NULL;
    return PyLong_FromUnsignedLongLong((unsigned long long)awq_cuda_size_class((size_t)n));
}

PyDoc_STRVAR(cuda_dtype_names_doc,
             "cuda_dtype_names() -> tuple of dtype names indexed by the core's dtype code.");
static PyObject *py_cuda_dtype_names(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return Py_BuildValue("(ssssss)", awq_dtype_name(AWQ_DT_F32), awq_dtype_name(AWQ_DT_F16),
                         awq_dtype_name(AWQ_DT_BF16), awq_dtype_name(AWQ_DT_I32),
                         awq_dtype_name(AWQ_DT_I64), awq_dtype_name(AWQ_DT_U8));
}

PyDoc_STRVAR(cuda_copy_doc,
             "cuda_copy_htod(ctx, dst_ptr, src_buffer, stream) / cuda_copy_dtoh(ctx, dst_buffer,\n"
             "src_ptr, stream): copies a whole C-contiguous host buffer (waits for the stream);\n"
             "cuda_copy_dtod(ctx, dst_ptr, src_ptr, nbytes, stream) queues a device copy.");
static PyObject *py_cuda_copy_htod(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap, *src, *res = NULL;
    unsigned long long dst, stream;
    Py_buffer view = {0};
    awq_err err = {{0}};
    if (!PyArg_ParseTuple(args, "OKOK:cuda_copy_htod", &cap, &dst, &src, &stream)) return NULL;
    awq_cuda_ctx *ctx = ctx_of(cap);
    if (!ctx) return NULL;
    if (PyObject_GetBuffer(src, &view, PyBUF_C_CONTIGUOUS) < 0) return NULL;
    CUDA_CALL(awq_cuda_copy(ctx, PTR(dst), view.buf, (size_t)view.len, AWQ_COPY_H2D, PTR(stream), &err));
    Py_INCREF(Py_None);
    res = Py_None;
done:
    PyBuffer_Release(&view);
    return res;
}

static PyObject *py_cuda_copy_dtoh(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap, *dst, *res = NULL;
    unsigned long long src, stream;
    Py_buffer view = {0};
    awq_err err = {{0}};
    if (!PyArg_ParseTuple(args, "OOKK:cuda_copy_dtoh", &cap, &dst, &src, &stream)) return NULL;
    awq_cuda_ctx *ctx = ctx_of(cap);
    if (!ctx) return NULL;
    if (PyObject_GetBuffer(dst, &view, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) return NULL;
    CUDA_CALL(awq_cuda_copy(ctx, view.buf, PTR(src), (size_t)view.len, AWQ_COPY_D2H, PTR(stream), &err));
    Py_INCREF(Py_None);
    res = Py_None;
done:
    PyBuffer_Release(&view);
    return res;
}

static PyObject *py_cuda_copy_dtod(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap, *res = NULL;
    unsigned long long dst, src, nbytes, stream;
    awq_err err = {{0}};
    if (!PyArg_ParseTuple(args, "OKKKK:cuda_copy_dtod", &cap, &dst, &src, &nbytes, &stream)) return NULL;
    awq_cuda_ctx *ctx = ctx_of(cap);
    if (!ctx) return NULL;
    CUDA_CALL(awq_cuda_copy(ctx, PTR(dst), PTR(src), (size_t)nbytes, AWQ_COPY_D2D, PTR(stream), &err));
    Py_INCREF(Py_None);
    res = Py_None;
done:
    return res;
}

PyDoc_STRVAR(cuda_memset_doc, "cuda_memset(ctx, ptr, byte, nbytes, stream) -> None (queued).");
static PyObject *py_cuda_memset(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap, *res = NULL;
    unsigned long long ptr, nbytes, stream;
    int byte;
    awq_err err = {{0}};
    if (!PyArg_ParseTuple(args, "OKiKK:cuda_memset", &cap, &ptr, &byte, &nbytes, &stream)) return NULL;
    awq_cuda_ctx *ctx = ctx_of(cap);
    if (!ctx) return NULL;
    CUDA_CALL(awq_cuda_memset(ctx, PTR(ptr), byte, (size_t)nbytes, PTR(stream), &err));
    Py_INCREF(Py_None);
    res = Py_None;
done:
    return res;
}

PyDoc_STRVAR(cuda_sync_doc,
             "cuda_sync(ctx, stream) waits for the stream; cuda_stream_wait(ctx, waiter, signaler)\n"
             "makes stream `waiter` wait on the device for the work queued so far on `signaler`.");
static PyObject *py_cuda_sync(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap, *res = NULL;
    unsigned long long stream;
    awq_err err = {{0}};
    if (!PyArg_ParseTuple(args, "OK:cuda_sync", &cap, &stream)) return NULL;
    awq_cuda_ctx *ctx = ctx_of(cap);
    if (!ctx) return NULL;
    CUDA_CALL(awq_cuda_stream_sync(ctx, PTR(stream), &err));
    Py_INCREF(Py_None);
    res = Py_None;
done:
    return res;
}

static PyObject *py_cuda_stream_wait(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap, *res = NULL;
    unsigned long long waiter, signaler;
    awq_err err = {{0}};
    if (!PyArg_ParseTuple(args, "OKK:cuda_stream_wait", &cap, &waiter, &signaler)) return NULL;
    awq_cuda_ctx *ctx = ctx_of(cap);
    if (!ctx) return NULL;
    CUDA_CALL(awq_cuda_stream_wait(ctx, PTR(waiter), PTR(signaler), &err));
    Py_INCREF(Py_None);
    res = Py_None;
done:
    return res;
}

/* ---- DLPack in: the producer's capsule is renamed "used_..." (consumed) and its managed tensor
 * is kept by an owner capsule whose destructor calls the producer's deleter. */

typedef struct {
    void *managed;
    int versioned;
} dl_owner;

static void dl_owner_free(PyObject *cap) {
    dl_owner *o = (dl_owner *)PyCapsule_GetPointer(cap, DL_OWNER_CAPSULE);
    if (!o) {
        PyErr_Clear();
        return;
    }
    if (o->versioned) {
        awq_dl_managed_versioned *m = (awq_dl_managed_versioned *)o->managed;
        if (m->deleter) m->deleter(m);
    } else {
        awq_dl_managed *m = (awq_dl_managed *)o->managed;
        if (m->deleter) m->deleter(m);
    }
    PyMem_RawFree(o);
}

PyDoc_STRVAR(dlpack_import_doc,
             "dlpack_import(capsule) -> (owner, ptr, shape, strides or None, (code, bits, lanes),\n"
             "(device_type, device_id), readonly): consumes a 'dltensor' or 'dltensor_versioned'\n"
             "capsule; `owner` keeps the producer's memory alive (its deleter runs when owner is\n"
             "collected). ptr includes byte_offset; strides are in elements.");
static PyObject *py_dlpack_import(PyObject *self, PyObject *cap) {
    (void)self;
    int versioned;
    if (PyCapsule_IsValid(cap, "dltensor")) versioned = 0;
    else if (PyCapsule_IsValid(cap, "dltensor_versioned")) versioned = 1;
    else {
        PyErr_SetString(PyExc_ValueError, "dlpack_import: expected an unconsumed DLPack capsule "
                                          "('dltensor' or 'dltensor_versioned'); a capsule can be "
                                          "consumed only once");
        return NULL;
    }
    void *managed = PyCapsule_GetPointer(cap, versioned ? "dltensor_versioned" : "dltensor");
    if (!managed) return NULL;
    awq_dl_tensor *t;
    int readonly = 0;
    if (versioned) {
        awq_dl_managed_versioned *m = (awq_dl_managed_versioned *)managed;
        if (m->version.major != 1) {
            PyErr_Format(PyExc_BufferError, "dlpack_import: DLPack major version %u is not supported "
                         "(expected 1)", m->version.major);
            return NULL;
        }
        t = &m->dl_tensor;
        readonly = (m->flags & AWQ_DL_FLAG_READ_ONLY) != 0;
    } else {
        t = &((awq_dl_managed *)managed)->dl_tensor;
    }
    if (t->ndim < 0 || t->ndim > 8) {
        PyErr_Format(PyExc_ValueError, "dlpack_import: %d dims (at most 8)", (int)t->ndim);
        return NULL;
    }
    PyObject *shape = PyTuple_New(t->ndim), *strides = NULL, *owner = NULL, *res = NULL;
    if (!shape) return NULL;
    for (int i = 0; i < t->ndim; i++) PyTuple_SET_ITEM(shape, i, PyLong_FromLongLong(t->shape[i]));
    if (t->strides) {
        if (!(strides = PyTuple_New(t->ndim))) goto fail;
        for (int i = 0; i < t->ndim; i++)
            PyTuple_SET_ITEM(strides, i, PyLong_FromLongLong(t->strides[i]));
    } else {
        Py_INCREF(Py_None);
        strides = Py_None;
    }
    dl_owner *o = (dl_owner *)PyMem_RawMalloc(sizeof *o);
    if (!o) {
        PyErr_NoMemory();
        goto fail;
    }
    o->managed = managed;
    o->versioned = versioned;
    if (!(owner = PyCapsule_New(o, DL_OWNER_CAPSULE, dl_owner_free))) {
        PyMem_RawFree(o);
        goto fail;
    }
    /* consumed from here on: the producer's capsule destructor no longer frees the tensor */
    if (PyCapsule_SetName(cap, versioned ? "used_dltensor_versioned" : "used_dltensor") < 0) {
        o->managed = NULL; /* cannot happen for a valid capsule; never call the deleter twice */
        goto fail;
    }
    res = Py_BuildValue("(OKOO(iii)(ii)O)", owner,
                        (unsigned long long)((uintptr_t)t->data + t->byte_offset), shape, strides,
                        (int)t->dtype.code, (int)t->dtype.bits, (int)t->dtype.lanes,
                        (int)t->device.device_type, (int)t->device.device_id,
                        readonly ? Py_True : Py_False);
fail:
    Py_XDECREF(shape);
    Py_XDECREF(strides);
    Py_XDECREF(owner);
    return res;
}

/* ---- DLPack out: one malloc'd record holds the managed tensor (legacy or versioned), its shape
 * and strides and a reference to the Python owner of the memory (the GpuTensor). */

typedef struct {
    union {
        awq_dl_managed legacy;
        awq_dl_managed_versioned ver;
    } h; /* first member: the deleters cast their argument back to dl_export */
    PyObject *owner;
    int64_t dims[16]; /* shape [0, 8), strides [8, 16) */
} dl_export;

static int interpreter_alive(void) {
#if PY_VERSION_HEX >= 0x030D0000
    return !Py_IsFinalizing();
#else
    return !_Py_IsFinalizing();
#endif
}

/* Deleter called by the consumer, maybe from another thread, maybe without the GIL. */
static void dl_export_release(dl_export *e) {
    if (interpreter_alive()) {
        PyGILState_STATE g = PyGILState_Ensure();
        Py_XDECREF(e->owner);
        PyGILState_Release(g);
    }
    free(e);
}
static void dl_export_delete_legacy(awq_dl_managed *m) { dl_export_release((dl_export *)m); }
static void dl_export_delete_versioned(awq_dl_managed_versioned *m) {
    dl_export_release((dl_export *)m);
}

/* Destructor of an exported capsule: frees the tensor only if no consumer took it. */
static void dl_export_capsule_free(PyObject *cap) {
    if (PyCapsule_IsValid(cap, "dltensor")) {
        awq_dl_managed *m = (awq_dl_managed *)PyCapsule_GetPointer(cap, "dltensor");
        if (m && m->deleter) m->deleter(m);
    } else if (PyCapsule_IsValid(cap, "dltensor_versioned")) {
        awq_dl_managed_versioned *m =
            (awq_dl_managed_versioned *)PyCapsule_GetPointer(cap, "dltensor_versioned");
        if (m && m->deleter) m->deleter(m);
    }
}

PyDoc_STRVAR(dlpack_export_doc,
             "dlpack_export(owner, ptr, shape, (code, bits, lanes), device_id, versioned: bool)\n"
             "-> DLPack capsule ('dltensor_versioned' v1.0 when versioned, else 'dltensor') of a\n"
             "C-contiguous CUDA tensor; the capsule (then its consumer) holds a reference to owner.");
static PyObject *py_dlpack_export(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *owner, *shape_obj, *cap = NULL;
    unsigned long long ptr;
    int code, bits, lanes, device, versioned;
    if (!PyArg_ParseTuple(args, "OKO(iii)ip:dlpack_export", &owner, &ptr, &shape_obj, &code, &bits,
                          &lanes, &device, &versioned))
        return NULL;
    PyObject *shape = PySequence_Fast(shape_obj, "dlpack_export: shape must be a sequence");
    if (!shape) return NULL;
    const Py_ssize_t nd = PySequence_Fast_GET_SIZE(shape);
    dl_export *e = NULL;
    if (nd > 8) {
        PyErr_Format(PyExc_ValueError, "dlpack_export: %zd dims (at most 8)", nd);
        goto fail;
    }
    if (!(e = (dl_export *)calloc(1, sizeof *e))) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t i = 0; i < nd; i++) {
        e->dims[i] = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(shape, i));
        if (e->dims[i] == -1 && PyErr_Occurred()) goto fail;
    }
    for (Py_ssize_t i = nd - 1, stride = 1; i >= 0; i--) { /* C-contiguous strides in elements */
        e->dims[8 + i] = stride;
        stride *= e->dims[i];
    }
    awq_dl_tensor *t = versioned ? &e->h.ver.dl_tensor : &e->h.legacy.dl_tensor;
    t->data = PTR(ptr);
    t->device.device_type = AWQ_DL_CUDA;
    t->device.device_id = device;
    t->ndim = (int32_t)nd;
    t->dtype.code = (uint8_t)code;
    t->dtype.bits = (uint8_t)bits;
    t->dtype.lanes = (uint16_t)lanes;
    t->shape = e->dims;
    t->strides = e->dims + 8;
    t->byte_offset = 0;
    if (versioned) {
        e->h.ver.version.major = 1;
        e->h.ver.version.minor = 0;
        e->h.ver.manager_ctx = e;
        e->h.ver.deleter = dl_export_delete_versioned;
        e->h.ver.flags = 0;
    } else {
        e->h.legacy.manager_ctx = e;
        e->h.legacy.deleter = dl_export_delete_legacy;
    }
    if (!(cap = PyCapsule_New(e, versioned ? "dltensor_versioned" : "dltensor",
                              dl_export_capsule_free)))
        goto fail;
    Py_INCREF(owner);
    e->owner = owner;
    Py_DECREF(shape);
    return cap;
fail:
    free(e);
    Py_DECREF(shape);
    return NULL;
}

/* ---- ops: one binding per ops_cuda.h entry point */

PyDoc_STRVAR(cuda_rmsnorm_doc,
             "cuda_rmsnorm(ctx, dt, x, w_f32, y, M, D, eps, unit_offset, stream): y = rmsnorm(x).");
static PyObject *py_cuda_rmsnorm(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap, *res = NULL;
    int dt;
    unsigned long long x, w, y, stream;
    long long M, D;
    double eps, off;
    awq_err err = {{0}};
    if (!PyArg_ParseTuple(args, "OiKKKLLddK:cuda_rmsnorm", &cap, &dt, &x, &w, &y, &M, &D, &eps, &off,
                          &stream))
        return NULL;
    awq_cuda_ctx *ctx = ctx_of(cap);
    if (!ctx) return NULL;
    CUDA_CALL(awq_cuda_rmsnorm(ctx, dt, PTR(x), (const float *)PTR(w), PTR(y), M, D, (float)eps,
                               (float)off, PTR(stream), &err));
    Py_INCREF(Py_None);
    res = Py_None;
done:
    return res;
}

PyDoc_STRVAR(cuda_layernorm_doc,
             "cuda_layernorm(ctx, dt, x, w_f32_or_0, b_f32_or_0, y, M, D, eps, stream): y = layernorm(x)\n"
             "(w 0 = ones, b 0 = zeros).");
static PyObject *py_cuda_layernorm(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap, *res = NULL;
    int dt;
    unsigned long long x, w, b, y, stream;
    long long M, D;
    double eps;
    awq_err err = {{0}};
    if (!PyArg_ParseTuple(args, "OiKKKKLLdK:cuda_layernorm", &cap, &dt, &x, &w, &b, &y, &M, &D, &eps,
                          &stream))
        return NULL;
    awq_cuda_ctx *ctx = ctx_of(cap);
    if (!ctx) return NULL;
    CUDA_CALL(awq_cuda_layernorm(ctx, dt, PTR(x), (const float *)PTR(w), (const float *)PTR(b),
                                 PTR(y), M, D, (float)eps, PTR(stream), &err));
    Py_INCREF(Py_None);
    res = Py_None;
done:
    return res;
}

PyDoc_STRVAR(cuda_act_doc,
             "cuda_act(ctx, dt, x, y, n, kind: str, stream): y = act(x) (kinds of act()).\n"
             "cuda_act_mul(ctx, dt, gate, up, y, n, kind: str, stream): y = act(gate) * up.");
static PyObject *cuda_act_call(PyObject *args, int with_up) {
    PyObject *cap, *res = NULL;
    int dt;
    unsigned long long x, up = 0, y, stream;
    long long n;
    const char *kind_name;
    awq_act kind;
    awq_err err = {{0}};
    if (with_up ? !PyArg_ParseTuple(args, "OiKKKLsK:cuda_act_mul", &cap, &dt, &x, &up, &y, &n,
                                    &kind_name, &stream)
                : !PyArg_ParseTuple(args, "OiKKLsK:cuda_act", &cap, &dt, &x, &y, &n, &kind_name,
                                    &stream))
        return NULL;
    if (parse_act(kind_name, with_up ? "cuda_act_mul" : "cuda_act", &kind) < 0) return NULL;
    awq_cuda_ctx *ctx = ctx_of(cap);
    if (!ctx) return NULL;
    CUDA_CALL(with_up ? awq_cuda_act_mul(ctx, dt, PTR(x), PTR(up), PTR(y), n, (int)kind, PTR(stream), &err)
                      : awq_cuda_act(ctx, dt, PTR(x), PTR(y), n, (int)kind, PTR(stream), &err));
    Py_INCREF(Py_None);
    res = Py_None;
done:
    return res;
}
static PyObject *py_cuda_act(PyObject *self, PyObject *args) {
    (void)self;
    return cuda_act_call(args, 0);
}
static PyObject *py_cuda_act_mul(PyObject *self, PyObject *args) {
    (void)self;
    return cuda_act_call(args, 1);
}

PyDoc_STRVAR(cuda_rope_doc,
             "cuda_rope(ctx, dt, x, cos_f32, sin_f32, M, H, d, rot, stream, interleaved=False): rope\n"
             "in place (interleaved: GPT-J rotate_every_two pairs).");
static PyObject *py_cuda_rope(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap, *res = NULL;
    int dt, interleaved = 0;
    unsigned long long x, c, s, stream;
    long long M, H, d, rot;
    awq_err err = {{0}};
    if (!PyArg_ParseTuple(args, "OiKKKLLLLK|p:cuda_rope", &cap, &dt, &x, &c, &s, &M, &H, &d, &rot,
                          &stream, &interleaved))
        return NULL;
    awq_cuda_ctx *ctx = ctx_of(cap);
    if (!ctx) return NULL;
    CUDA_CALL(awq_cuda_rope_ex(ctx, dt, PTR(x), (const float *)PTR(c), (const float *)PTR(s), M, H,
                               d, rot, interleaved, PTR(stream), &err));
    Py_INCREF(Py_None);
    res = Py_None;
done:
    return res;
}

PyDoc_STRVAR(cuda_attention_doc,
             "cuda_attention(ctx, dt, q, k, v, out, B, T, S, Hq, Hkv, d, scale, q_pos0, window,\n"
             "               kv_len_i64_or_0, stream, alibi_f32_or_0=0, softcap=0.0, dv=0): causal\n"
             "GQA attention; alibi: device fp32 [Hq] slopes; softcap > 0: tanh capping; dv: v / out\n"
             "head dim (0 = d).");
static PyObject *py_cuda_attention(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap, *res = NULL;
    int dt;
    unsigned long long q, k, v, out, kvl, stream, alibi = 0;
    long long B, T, S, Hq, Hkv, d, q_pos0, window, dv = 0;
    double scale, softcap = 0.0;
    awq_err err = {{0}};
    if (!PyArg_ParseTuple(args, "OiKKKKLLLLLLdLLKK|KdL:cuda_attention", &cap, &dt, &q, &k, &v, &out,
                          &B, &T, &S, &Hq, &Hkv, &d, &scale, &q_pos0, &window, &kvl, &stream,
                          &alibi, &softcap, &dv))
        return NULL;
    awq_cuda_ctx *ctx = ctx_of(cap);
    if (!ctx) return NULL;
    awq_cuda_attention_opts opt;
    memset(&opt, 0, sizeof opt);
    opt.window = window;
    opt.kv_len = (const int64_t *)PTR(kvl);
    opt.alibi = (const float *)PTR(alibi);
    opt.softcap = (float)softcap;
    opt.dv = dv;
    CUDA_CALL(awq_cuda_attention_ex(ctx, dt, PTR(q), PTR(k), PTR(v), PTR(out), B, T, S, Hq, Hkv, d,
                                    (float)scale, q_pos0, &opt, PTR(stream), &err));
    Py_INCREF(Py_None);
    res = Py_None;
done:
    return res;
}

PyDoc_STRVAR(cuda_binary_doc,
             "cuda_silu_mul(ctx, dt, gate, up, y, n, stream) / cuda_add(ctx, dt, a, b, y, n, stream).");
static PyObject *cuda_binary(PyObject *args, int which) {
    PyObject *cap, *res = NULL;
    int dt;
    unsigned long long a, b, y, stream;
    long long n;
    awq_err err = {{0}};
    if (!PyArg_ParseTuple(args, which ? "OiKKKLK:cuda_add" : "OiKKKLK:cuda_silu_mul", &cap, &dt, &a,
                          &b, &y, &n, &stream))
        return NULL;
    awq_cuda_ctx *ctx = ctx_of(cap);
    if (!ctx) return NULL;
    CUDA_CALL(which ? awq_cuda_add(ctx, dt, PTR(a), PTR(b), PTR(y), n, PTR(stream), &err)
                    : awq_cuda_silu_mul(ctx, dt, PTR(a), PTR(b), PTR(y), n, PTR(stream), &err));
    Py_INCREF(Py_None);
    res = Py_None;
done:
    return res;
}
static PyObject *py_cuda_silu_mul(PyObject *self, PyObject *args) {
    (void)self;
    return cuda_binary(args, 0);
}
static PyObject *py_cuda_add(PyObject *self, PyObject *args) {
    (void)self;
    return cuda_binary(args, 1);
}

PyDoc_STRVAR(cuda_abs_mean_doc, "cuda_abs_mean(ctx, dt, x, out_f32, M, K, stream).");
static PyObject *py_cuda_abs_mean(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap, *res = NULL;
    int dt;
    unsigned long long x, out, stream;
    long long M, K;
    awq_err err = {{0}};
    if (!PyArg_ParseTuple(args, "OiKKLLK:cuda_abs_mean", &cap, &dt, &x, &out, &M, &K, &stream))
        return NULL;
    awq_cuda_ctx *ctx = ctx_of(cap);
    if (!ctx) return NULL;
    CUDA_CALL(awq_cuda_abs_mean(ctx, dt, PTR(x), (float *)PTR(out), M, K, PTR(stream), &err));
    Py_INCREF(Py_None);
    res = Py_None;
done:
    return res;
}

PyDoc_STRVAR(cuda_scale_cols_doc, "cuda_scale_cols(ctx, dt, x, s, y, M, K, inverse, stream).");
static PyObject *py_cuda_scale_cols(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap, *res = NULL;
    int dt, inverse;
    unsigned long long x, s, y, stream;
    long long M, K;
    awq_err err = {{0}};
    if (!PyArg_ParseTuple(args, "OiKKKLLpK:cuda_scale_cols", &cap, &dt, &x, &s, &y, &M, &K, &inverse,
                          &stream))
        return NULL;
    awq_cuda_ctx *ctx = ctx_of(cap);
    if (!ctx) return NULL;
    CUDA_CALL(awq_cuda_scale_cols(ctx, dt, PTR(x), (const float *)PTR(s), PTR(y), M, K, inverse,
                                  PTR(stream), &err));
    Py_INCREF(Py_None);
    res = Py_None;
done:
    return res;
}

PyDoc_STRVAR(cuda_scale_rows_doc, "cuda_scale_rows(ctx, dt, x, s, y, M, K, inverse, stream): row m * s[m].");
static PyObject *py_cuda_scale_rows(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap, *res = NULL;
    int dt, inverse;
    unsigned long long x, s, y, stream;
    long long M, K;
    awq_err err = {{0}};
    if (!PyArg_ParseTuple(args, "OiKKKLLpK:cuda_scale_rows", &cap, &dt, &x, &s, &y, &M, &K, &inverse,
                          &stream))
        return NULL;
    awq_cuda_ctx *ctx = ctx_of(cap);
    if (!ctx) return NULL;
    CUDA_CALL(awq_cuda_scale_rows(ctx, dt, PTR(x), (const float *)PTR(s), PTR(y), M, K, inverse,
                                  PTR(stream), &err));
    Py_INCREF(Py_None);
    res = Py_None;
done:
    return res;
}

PyDoc_STRVAR(cuda_index_rows_doc,
             "cuda_index_rows(ctx, dt, src, M, idx, n, K, dst, stream): dst[i] = src[idx[i]] (rows of K).");
static PyObject *py_cuda_index_rows(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap, *res = NULL;
    int dt;
    unsigned long long src, idx, dst, stream;
    long long M, n, K;
    awq_err err = {{0}};
    if (!PyArg_ParseTuple(args, "OiKLKLLKK:cuda_index_rows", &cap, &dt, &src, &M, &idx, &n, &K, &dst, &stream))
        return NULL;
    awq_cuda_ctx *ctx = ctx_of(cap);
    if (!ctx) return NULL;
    CUDA_CALL(awq_cuda_index_rows(ctx, dt, PTR(src), M, (const int64_t *)PTR(idx), n, K, PTR(dst), PTR(stream),
                                  &err));
    Py_INCREF(Py_None);
    res = Py_None;
done:
    return res;
}

PyDoc_STRVAR(cuda_index_add_rows_doc,
             "cuda_index_add_rows(ctx, dt, dst, M, idx, src, w_f32_or_0, n, K, stream):\n"
             "dst[idx[i]] += w[i] * src[i] (distinct indices).");
static PyObject *py_cuda_index_add_rows(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap, *res = NULL;
    int dt;
    unsigned long long dst, idx, src, w, stream;
    long long M, n, K;
    awq_err err = {{0}};
    if (!PyArg_ParseTuple(args, "OiKLKKKLLK:cuda_index_add_rows", &cap, &dt, &dst, &M, &idx, &src, &w, &n, &K,
                          &stream))
        return NULL;
    awq_cuda_ctx *ctx = ctx_of(cap);
    if (!ctx) return NULL;
    CUDA_CALL(awq_cuda_index_add_rows(ctx, dt, PTR(dst), M, (const int64_t *)PTR(idx), PTR(src),
                                      (const float *)PTR(w), n, K, PTR(stream), &err));
    Py_INCREF(Py_None);
    res = Py_None;
done:
    return res;
}

PyDoc_STRVAR(cuda_concat_cols_doc,
             "cuda_concat_cols(ctx, dt, x, y, out, M, a, b, y_group, stream): out[i] = [x[i] | y[i / y_group]].");
static PyObject *py_cuda_concat_cols(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap, *res = NULL;
    int dt;
    unsigned long long x, y, out, stream;
    long long M, a, b, grp;
    awq_err err = {{0}};
    if (!PyArg_ParseTuple(args, "OiKKKLLLLK:cuda_concat_cols", &cap, &dt, &x, &y, &out, &M, &a, &b, &grp, &stream))
        return NULL;
    awq_cuda_ctx *ctx = ctx_of(cap);
    if (!ctx) return NULL;
    CUDA_CALL(awq_cuda_concat_cols(ctx, dt, PTR(x), PTR(y), PTR(out), M, a, b, grp, PTR(stream), &err));
    Py_INCREF(Py_None);
    res = Py_None;
done:
    return res;
}

PyDoc_STRVAR(cuda_weight_mean_doc,
             "cuda_weight_mean(ctx, dt, w, N, K, g, acc, stream): acc[K] (float64) += the w_mean sums.");
static PyObject *py_cuda_weight_mean(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap, *res = NULL;
    int dt;
    unsigned long long w, acc, stream;
    long long N, K, g;
    awq_err err = {{0}};
    if (!PyArg_ParseTuple(args, "OiKLLLKK:cuda_weight_mean", &cap, &dt, &w, &N, &K, &g, &acc, &stream))
        return NULL;
    awq_cuda_ctx *ctx = ctx_of(cap);
    if (!ctx) return NULL;
    CUDA_CALL(awq_cuda_weight_mean(ctx, dt, PTR(w), N, K, g, (double *)PTR(acc), PTR(stream), &err));
    Py_INCREF(Py_None);
    res = Py_None;
done:
    return res;
}

PyDoc_STRVAR(cuda_clamp_groups_doc, "cuda_clamp_groups(ctx, dt, w, max_val, y, N, K, g, stream).");
static PyObject *py_cuda_clamp_groups(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap, *res = NULL;
    int dt;
    unsigned long long w, mv, y, stream;
    long long N, K, g;
    awq_err err = {{0}};
    if (!PyArg_ParseTuple(args, "OiKKKLLLK:cuda_clamp_groups", &cap, &dt, &w, &mv, &y, &N, &K, &g, &stream))
        return NULL;
    awq_cuda_ctx *ctx = ctx_of(cap);
    if (!ctx) return NULL;
    CUDA_CALL(awq_cuda_clamp_groups(ctx, dt, PTR(w), (const float *)PTR(mv), PTR(y), N, K, g, PTR(stream),
                                    &err));
    Py_INCREF(Py_None);
    res = Py_None;
done:
    return res;
}

PyDoc_STRVAR(cuda_quantize_gemm_doc,
             "cuda_quantize_gemm(ctx, dt, w, N, K, g, zero_point, qweight, scales, zeros, stream): 4-bit\n"
             "AutoAWQ GEMM qweight [K, N/8] plus fp32 scales and uint8 zero codes [N, K/g] (device).");
static PyObject *py_cuda_quantize_gemm(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap, *res = NULL;
    int dt, zp;
    unsigned long long w, qw, sc, zr, stream;
    long long N, K, g;
    awq_err err = {{0}};
    if (!PyArg_ParseTuple(args, "OiKLLLpKKKK:cuda_quantize_gemm", &cap, &dt, &w, &N, &K, &g, &zp, &qw, &sc, &zr,
                          &stream))
        return NULL;
    awq_cuda_ctx *ctx = ctx_of(cap);
    if (!ctx) return NULL;
    CUDA_CALL(awq_cuda_quantize_gemm(ctx, dt, PTR(w), N, K, g, zp, (uint32_t *)PTR(qw), (float *)PTR(sc),
                                     (uint8_t *)PTR(zr), PTR(stream), &err));
    Py_INCREF(Py_None);
    res = Py_None;
done:
    return res;
}

PyDoc_STRVAR(cuda_sq_diff_sum_doc, "cuda_sq_diff_sum(ctx, dt, a, b, n, stream) -> float: sum (a-b)^2.");
static PyObject *py_cuda_sq_diff_sum(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap, *res = NULL;
    int dt;
    unsigned long long a, b, stream;
    long long n;
    double out = 0.0;
    awq_err err = {{0}};
    if (!PyArg_ParseTuple(args, "OiKKLK:cuda_sq_diff_sum", &cap, &dt, &a, &b, &n, &stream)) return NULL;
    awq_cuda_ctx *ctx = ctx_of(cap);
    if (!ctx) return NULL;
    CUDA_CALL(awq_cuda_sq_diff_sum(ctx, dt, PTR(a), PTR(b), n, &out, PTR(stream), &err));
    res = PyFloat_FromDouble(out);
done:
    return res;
}

PyDoc_STRVAR(cuda_cast_doc, "cuda_cast(ctx, src_dt, src, dst_dt, dst, n, stream).");
static PyObject *py_cuda_cast(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap, *res = NULL;
    int sdt, ddt;
    unsigned long long src, dst, stream;
    long long n;
    awq_err err = {{0}};
    if (!PyArg_ParseTuple(args, "OiKiKLK:cuda_cast", &cap, &sdt, &src, &ddt, &dst, &n, &stream))
        return NULL;
    awq_cuda_ctx *ctx = ctx_of(cap);
    if (!ctx) return NULL;
    CUDA_CALL(awq_cuda_cast(ctx, sdt, PTR(src), ddt, PTR(dst), n, PTR(stream), &err));
    Py_INCREF(Py_None);
    res = Py_None;
done:
    return res;
}

PyDoc_STRVAR(cuda_copy_strided_doc,
             "cuda_copy_strided(ctx, elem_size, src, shape, strides, dst, stream): gathers a strided\n"
             "tensor (strides in elements) into C-contiguous dst.");
static PyObject *py_cuda_copy_strided(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap, *shape_o, *strides_o, *res = NULL, *shape = NULL, *strides = NULL;
    int es;
    unsigned long long src, dst, stream;
    int64_t sh[8], sd[8];
    awq_err err = {{0}};
    if (!PyArg_ParseTuple(args, "OiKOOKK:cuda_copy_strided", &cap, &es, &src, &shape_o, &strides_o,
                          &dst, &stream))
        return NULL;
    awq_cuda_ctx *ctx = ctx_of(cap);
    if (!ctx) return NULL;
    if (!(shape = PySequence_Fast(shape_o, "shape must be a sequence"))) goto done;
    if (!(strides = PySequence_Fast(strides_o, "strides must be a sequence"))) goto done;
    const Py_ssize_t nd = PySequence_Fast_GET_SIZE(shape);
    if (nd > 8 || PySequence_Fast_GET_SIZE(strides) != nd) {
        PyErr_SetString(PyExc_ValueError,
                        "cuda_copy_strided: shape and strides must have the same length <= 8");
        goto done;
    }
    for (Py_ssize_t i = 0; i < nd; i++) {
        sh[i] = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(shape, i));
        sd[i] = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(strides, i));
        if (PyErr_Occurred()) goto done;
    }
    CUDA_CALL(awq_cuda_copy_strided(ctx, es, PTR(src), sh, sd, (int)nd, PTR(dst), PTR(stream), &err));
    Py_INCREF(Py_None);
    res = Py_None;
done:
    Py_XDECREF(shape);
    Py_XDECREF(strides);
    return res;
}

PyDoc_STRVAR(cuda_linear_doc,
             "cuda_linear(ctx, dt, x, w, bias_f32_or_0, y_dt, y, M, K, N, stream): y = x @ w.T + b\n"
             "through cuBLAS with fp32 accumulation.");
static PyObject *py_cuda_linear(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap, *res = NULL;
    int dt, ydt;
    unsigned long long x, w, b, y, stream;
    long long M, K, N;
    awq_err err = {{0}};
    if (!PyArg_ParseTuple(args, "OiKKKiKLLLK:cuda_linear", &cap, &dt, &x, &w, &b, &ydt, &y, &M, &K,
                          &N, &stream))
        return NULL;
    awq_cuda_ctx *ctx = ctx_of(cap);
    if (!ctx) return NULL;
    CUDA_CALL(awq_cuda_linear(ctx, dt, PTR(x), PTR(w), (const float *)PTR(b), ydt, PTR(y), M, K, N,
                              PTR(stream), &err));
    Py_INCREF(Py_None);
    res = Py_None;
done:
    return res;
}

PyDoc_STRVAR(cuda_pseudo_quantize_doc,
             "cuda_pseudo_quantize(ctx, dt, w, w_dq, N, K, group_size, w_bit, zero_point,\n"
             "                     check_finite, stream).");
static PyObject *py_cuda_pseudo_quantize(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap, *res = NULL;
    int dt, bits, zp, check;
    unsigned long long w, wdq, stream;
    long long N, K, g;
    awq_err err = {{0}};
    if (!PyArg_ParseTuple(args, "OiKKLLLippK:cuda_pseudo_quantize", &cap, &dt, &w, &wdq, &N, &K, &g,
                          &bits, &zp, &check, &stream))
        return NULL;
    awq_cuda_ctx *ctx = ctx_of(cap);
    if (!ctx) return NULL;
    CUDA_CALL(awq_cuda_pseudo_quantize(ctx, dt, PTR(w), PTR(wdq), N, K, g, bits, zp, check,
                                       PTR(stream), &err));
    Py_INCREF(Py_None);
    res = Py_None;
done:
    return res;
}

PyDoc_STRVAR(cuda_clip_search_doc,
             "cuda_clip_search(ctx, dt, w, x, max_val_f32, N, K, T, group_size, w_bit, zero_point,\n"
             "                 n_grid, max_shrink, stream).");
static PyObject *py_cuda_clip_search(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap, *res = NULL;
    int dt, bits, zp, n_grid;
    unsigned long long w, x, mv, stream;
    long long N, K, T, g;
    double max_shrink;
    awq_err err = {{0}};
    if (!PyArg_ParseTuple(args, "OiKKKLLLLipidK:cuda_clip_search", &cap, &dt, &w, &x, &mv, &N, &K,
                          &T, &g, &bits, &zp, &n_grid, &max_shrink, &stream))
        return NULL;
    awq_cuda_ctx *ctx = ctx_of(cap);
    if (!ctx) return NULL;
    CUDA_CALL(awq_cuda_clip_search(ctx, dt, PTR(w), PTR(x), (float *)PTR(mv), N, K, T, g, bits, zp,
                                   n_grid, (float)max_shrink, PTR(stream), &err));
    Py_INCREF(Py_None);
    res = Py_None;
done:
    return res;
}

#define METH_V(name) {#name, py_##name, METH_VARARGS, name##_doc}
#define METH_O1(name) {#name, py_##name, METH_O, name##_doc}
#define AWQ_CUDA_OPS_METHODS                                                                       \
    METH_V(cuda_context_new), METH_V(cuda_alloc), METH_O1(cuda_memory_stats),                      \
        METH_O1(cuda_empty_cache), METH_V(cuda_size_class),                                        \
        {"cuda_dtype_names", py_cuda_dtype_names, METH_NOARGS, cuda_dtype_names_doc},              \
        {"cuda_copy_htod", py_cuda_copy_htod, METH_VARARGS, cuda_copy_doc},                        \
        {"cuda_copy_dtoh", py_cuda_copy_dtoh, METH_VARARGS, cuda_copy_doc},                        \
        {"cuda_copy_dtod", py_cuda_copy_dtod, METH_VARARGS, cuda_copy_doc}, METH_V(cuda_memset),   \
        METH_V(cuda_sync), {"cuda_stream_wait", py_cuda_stream_wait, METH_VARARGS, cuda_sync_doc}, \
        METH_O1(dlpack_import), METH_V(dlpack_export), METH_V(cuda_rmsnorm), METH_V(cuda_rope),    \
        METH_V(cuda_attention), {"cuda_silu_mul", py_cuda_silu_mul, METH_VARARGS, cuda_binary_doc}, \
        METH_V(cuda_layernorm), {"cuda_act", py_cuda_act, METH_VARARGS, cuda_act_doc},             \
        {"cuda_act_mul", py_cuda_act_mul, METH_VARARGS, cuda_act_doc},                             \
        {"cuda_add", py_cuda_add, METH_VARARGS, cuda_binary_doc}, METH_V(cuda_abs_mean),           \
        METH_V(cuda_cast), METH_V(cuda_copy_strided), METH_V(cuda_linear),                         \
        METH_V(cuda_pseudo_quantize), METH_V(cuda_clip_search), METH_V(cuda_scale_cols),          \
        METH_V(cuda_sq_diff_sum), METH_V(cuda_scale_rows), METH_V(cuda_index_rows), METH_V(cuda_index_add_rows),   \
        METH_V(cuda_concat_cols), METH_V(cuda_weight_mean),                \
        METH_V(cuda_clamp_groups), METH_V(cuda_quantize_gemm),
#else
#define AWQ_CUDA_OPS_METHODS
#endif /* AWQ_WITH_CUDA */
/* ---- end CUDA tensors and ops ---- */

/* ---- CUDA W4A16 ---- */
/* Bindings of csrc/kernels/w4a16_cuda.h. Raw device pointers come in as Python ints (torch's
 * .data_ptr(), awq.gpu tensors, cupy), so these calls do not depend on any tensor type; the caller
 * keeps the memory alive until the stream has run the call. `stream` is a cudaStream_t as an int
 * (0 = the legacy default stream). Without a CUDA build every entry raises RuntimeError. */
#define W4_CTX_CAPSULE "awq.cuda_w4a16_ctx"
#ifdef AWQ_WITH_CUDA
#include "kernels/w4a16_cuda.h"

static void w4_ctx_capsule_free(PyObject *cap) {
    awq_w4a16_ctx *ctx = (awq_w4a16_ctx *)PyCapsule_GetPointer(cap, W4_CTX_CAPSULE);
    if (ctx) awq_cuda_w4a16_ctx_free(ctx);
    else PyErr_Clear();
}

/* ctx: None -> NULL (ok), a context capsule -> its pointer; anything else -> TypeError, *ok = 0. */
static awq_w4a16_ctx *w4_ctx_of(PyObject *obj, int *ok) {
    if (!obj || obj == Py_None) return NULL;
    if (!PyCapsule_IsValid(obj, W4_CTX_CAPSULE)) {
        PyErr_SetString(PyExc_TypeError, "ctx: expected None or a cuda_w4a16_context() capsule");
        *ok = 0;
        return NULL;
    }
    return (awq_w4a16_ctx *)PyCapsule_GetPointer(obj, W4_CTX_CAPSULE);
}

static int w4_dtype(const char *name, const char *what) {
    if (!strcmp(name, "float16")) return AWQ_W4_F16;
    if (!strcmp(name, "bfloat16")) return AWQ_W4_BF16;
    PyErr_Format(PyExc_ValueError, "%s: expected \"float16\" or \"bfloat16\", got \"%s\"", what, name);
    return -1;
}

static const char *W4_PATHS[] = {"auto", "gemv", "mma", "cublas", "ref"};
#endif

#define W4_NO_CUDA()                                                                               \
    PyErr_SetString(PyExc_RuntimeError, "awq was built without CUDA (nvcc was not found at build time)")

PyDoc_STRVAR(cuda_w4a16_context_doc,
             "cuda_w4a16_context() -> capsule: workspaces, stream-K counters and the cuBLAS handle of\n"
             "the W4A16 kernels on the current device. One stream at a time; its buffers grow on the\n"
             "first call of each shape (not allowed during CUDA-graph capture).");
static PyObject *py_cuda_w4a16_context(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
#ifdef AWQ_WITH_CUDA
    awq_err err = {{0}};
    awq_w4a16_ctx *ctx = NULL;
    int st;
    Py_BEGIN_ALLOW_THREADS st = awq_cuda_w4a16_ctx_new(&ctx, &err);
    Py_END_ALLOW_THREADS if (st) return raise_status(st, &err);
    PyObject *cap = PyCapsule_New(ctx, W4_CTX_CAPSULE, w4_ctx_capsule_free);
    if (!cap) awq_cuda_w4a16_ctx_free(ctx);
    return cap;
#else
    W4_NO_CUDA();
    return NULL;
#endif
}

PyDoc_STRVAR(cuda_w4a16_repack_nbytes_doc,
             "cuda_w4a16_repack_nbytes(K, N) -> int: bytes of the repacked qweight of a K x N layer.");
static PyObject *py_cuda_w4a16_repack_nbytes(PyObject *self, PyObject *args) {
    (void)self;
    long long K, N;
    if (!PyArg_ParseTuple(args, "LL:cuda_w4a16_repack_nbytes", &K, &N)) return NULL;
#ifdef AWQ_WITH_CUDA
    if (K <= 0 || N <= 0 || N % 8) {
        PyErr_Format(PyExc_ValueError, "cuda_w4a16_repack_nbytes: bad shape K=%lld N=%lld", K, N);
        return NULL;
    }
    return PyLong_FromLongLong(awq_cuda_w4a16_repack_nbytes(K, N));
#else
    W4_NO_CUDA();
    return NULL;
#endif
}

PyDoc_STRVAR(cuda_w4a16_repack_doc,
             "cuda_w4a16_repack(qweight_ptr, out_ptr, K, N, stream=0): checkpoint qweight [K, N/8] int32\n"
             "-> the kernels' layout (cuda_w4a16_repack_nbytes(K, N) bytes at out_ptr, 16-byte aligned).");
static PyObject *py_cuda_w4a16_repack(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"qweight_ptr", "out_ptr", "K", "N", "stream", NULL};
    unsigned long long qp, op, sp = 0;
    long long K, N;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "KKLL|K:cuda_w4a16_repack", kwlist, &qp, &op, &K, &N, &sp))
        return NULL;
#ifdef AWQ_WITH_CUDA
    awq_err err = {{0}};
    int st;
    Py_BEGIN_ALLOW_THREADS st = awq_cuda_w4a16_repack((const int32_t *)(uintptr_t)qp, (void *)(uintptr_t)op, K,
                                                      N, (void *)(uintptr_t)sp, &err);
    Py_END_ALLOW_THREADS if (st) return raise_status(st, &err);
    Py_RETURN_NONE;
#else
    W4_NO_CUDA();
    return NULL;
#endif
}

PyDoc_STRVAR(cuda_w4a16_doc,
             "cuda_w4a16(x_ptr, qweight_ptr, qzeros_ptr, scales_ptr, bias_ptr, y_ptr, M, K, N, group_size,\n"
             "           dtype, stream=0, path=\"auto\", ctx=None, scales_dtype=None, config=None) -> str\n"
             "y[M,N] = x[M,K] @ W + bias on the GPU (fp32 accumulation); returns the path that ran.\n"
             "qweight_ptr: the repacked layout (cuda_w4a16_repack); qzeros [G, N/8] int32 and scales\n"
             "[G, N] as in the checkpoint; bias_ptr 0 for none. dtype: \"float16\" | \"bfloat16\" (x, y,\n"
             "bias); scales_dtype: None (= dtype) or \"float16\" with bfloat16 activations.\n"
             "path: \"auto\" | \"gemv\" (decode kernel, M <= 8) | \"mma\" (tensor cores) | \"cublas\"\n"
             "(dequantize + cuBLAS, needs ctx) | \"ref\" (naive). ctx: cuda_w4a16_context() enables\n"
             "split-K and the cuBLAS path. config: (wn, blocks[, stages[, tm]]) overrides the gemv/mma\n"
             "heuristic (0 = heuristic; meanings per path in csrc/kernels/w4a16_cuda.h), for tests and\n"
             "tuning.");
static PyObject *py_cuda_w4a16(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"x_ptr", "qweight_ptr", "qzeros_ptr", "scales_ptr", "bias_ptr", "y_ptr",
                             "M", "K", "N", "group_size", "dtype", "stream", "path", "ctx",
                             "scales_dtype", "config", NULL};
    unsigned long long xp, qp, zp, sp, bp, yp, stream = 0;
    long long M, K, N, g;
    const char *dtype, *path = "auto", *sdtype = NULL;
    PyObject *ctxo = Py_None, *cfgo = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "KKKKKKLLLLs|KsOzO:cuda_w4a16", kwlist, &xp, &qp, &zp, &sp,
                                     &bp, &yp, &M, &K, &N, &g, &dtype, &stream, &path, &ctxo, &sdtype,
                                     &cfgo))
        return NULL;
#ifdef AWQ_WITH_CUDA
    int ok = 1, pi = -1, used = -1, st;
    awq_err err = {{0}};
    awq_w4a16_cfg cfg = {0, 0, 0, 0};
    const int xd = w4_dtype(dtype, "dtype");
    if (xd < 0) return NULL;
    const int sd = sdtype ? w4_dtype(sdtype, "scales_dtype") : xd;
    if (sd < 0) return NULL;
    for (int i = 0; i < (int)(sizeof(W4_PATHS) / sizeof(W4_PATHS[0])); i++)
        if (!strcmp(path, W4_PATHS[i])) pi = i;
    if (pi < 0) {
        PyErr_Format(PyExc_ValueError, "path: expected auto, gemv, mma, cublas or ref, got \"%s\"", path);
        return NULL;
    }
    awq_w4a16_ctx *ctx = w4_ctx_of(ctxo, &ok);
    if (!ok) return NULL;
    if (cfgo != Py_None && !PyArg_ParseTuple(cfgo, "ii|ii;config: expected (wn, blocks[, stages[, tm]])",
                                             &cfg.wn, &cfg.blocks, &cfg.stages, &cfg.tm))
        return NULL;
    Py_BEGIN_ALLOW_THREADS st = awq_cuda_w4a16(
        (const void *)(uintptr_t)xp, xd, (const void *)(uintptr_t)qp, (const int32_t *)(uintptr_t)zp,
        (const void *)(uintptr_t)sp, sd, (const void *)(uintptr_t)bp, (void *)(uintptr_t)yp, M, K, N, g, pi,
        cfgo == Py_None ? NULL : &cfg, ctx, (void *)(uintptr_t)stream, &used, &err);
    Py_END_ALLOW_THREADS if (st) return raise_status(st, &err);
    return PyUnicode_FromString(used >= 0 ? W4_PATHS[used] : "none");
#else
    (void)ctxo;
    (void)cfgo;
    W4_NO_CUDA();
    return NULL;
#endif
}

PyDoc_STRVAR(cuda_w4a16_plan_doc,
             "cuda_w4a16_plan(M, K, N, group_size, ctx=None) -> dict: the path and (gemv/mma) the\n"
             "kernel configuration (wn, blocks, stages, tm) that cuda_w4a16(path=\"auto\") runs.");
static PyObject *py_cuda_w4a16_plan(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"M", "K", "N", "group_size", "ctx", NULL};
    long long M, K, N, g;
    PyObject *ctxo = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "LLLL|O:cuda_w4a16_plan", kwlist, &M, &K, &N, &g, &ctxo))
        return NULL;
#ifdef AWQ_WITH_CUDA
    int ok = 1, path = 0, st;
    awq_err err = {{0}};
    awq_w4a16_cfg cfg;
    awq_w4a16_ctx *ctx = w4_ctx_of(ctxo, &ok);
    if (!ok) return NULL;
    Py_BEGIN_ALLOW_THREADS st = awq_cuda_w4a16_plan(M, K, N, g, ctx, &path, &cfg, &err);
    Py_END_ALLOW_THREADS if (st) return raise_status(st, &err);
    return Py_BuildValue("{s:s,s:i,s:i,s:i,s:i}", "path", W4_PATHS[path], "wn", cfg.wn, "blocks", cfg.blocks,
                         "stages", cfg.stages, "tm", cfg.tm);
#else
    (void)ctxo;
    W4_NO_CUDA();
    return NULL;
#endif
}

#define AWQ_CUDA_W4A16_METHODS                                                                     \
    {"cuda_w4a16_context", py_cuda_w4a16_context, METH_NOARGS, cuda_w4a16_context_doc},            \
        {"cuda_w4a16_repack_nbytes", py_cuda_w4a16_repack_nbytes, METH_VARARGS,                    \
         cuda_w4a16_repack_nbytes_doc},                                                            \
        {"cuda_w4a16_repack", (PyCFunction)(void (*)(void))py_cuda_w4a16_repack,                   \
         METH_VARARGS | METH_KEYWORDS, cuda_w4a16_repack_doc},                                     \
        {"cuda_w4a16", (PyCFunction)(void (*)(void))py_cuda_w4a16, METH_VARARGS | METH_KEYWORDS,   \
         cuda_w4a16_doc},                                                                          \
        {"cuda_w4a16_plan", (PyCFunction)(void (*)(void))py_cuda_w4a16_plan,                       \
         METH_VARARGS | METH_KEYWORDS, cuda_w4a16_plan_doc},
/* ---- end CUDA W4A16 ---- */

/* ---- CUDA fused decoder ---- */
/* Bindings of csrc/kernels/decoder_cuda.h. Weights come in as device pointers (Python ints) that
 * the caller (awq/runtime/fused.py) keeps alive; the capsule keeps the CUDA context capsule alive. */
#ifdef AWQ_WITH_CUDA
#include "kernels/decoder_cuda.h"
#define DEC_CAPSULE "awq.cuda_decoder"

static void dec_capsule_free(PyObject *cap) {
    awq_decoder *d = (awq_decoder *)PyCapsule_GetPointer(cap, DEC_CAPSULE);
    PyObject *ctx = (PyObject *)PyCapsule_GetContext(cap);
    if (d) awq_decoder_free(d);
    Py_XDECREF(ctx);
}

static awq_decoder *dec_of(PyObject *obj) {
    if (!PyCapsule_IsValid(obj, DEC_CAPSULE)) {
        PyErr_SetString(PyExc_TypeError, "expected a cuda_decoder_new() capsule");
        return NULL;
    }
    return (awq_decoder *)PyCapsule_GetPointer(obj, DEC_CAPSULE);
}

static int parse_dec_linear(PyObject *t, awq_dec_linear *l, const char *what) {
    unsigned long long qw, qz, sc, bias;
    long long K, N, g;
    int sdt;
    if (!PyTuple_Check(t) || !PyArg_ParseTuple(t, "KKKKLLLi", &qw, &qz, &sc, &bias, &K, &N, &g, &sdt)) {
        PyErr_Format(PyExc_TypeError, "decoder %s: expected (qweight_rp, qzeros, scales, bias, K, N, g, s_dtype)",
                     what);
        return -1;
    }
    l->qweight_rp = PTR(qw);
    l->qzeros = (const int32_t *)PTR(qz);
    l->scales = PTR(sc);
    l->bias = PTR(bias);
    l->K = K;
    l->N = N;
    l->g = g;
    l->s_dtype = sdt;
    return 0;
}

PyDoc_STRVAR(cuda_decoder_new_doc,
             "cuda_decoder_new(ctx, dt, (L, D, Hq, Hkv, hd, rot, F, V, window), eps, norm_offset,\n"
             "                 (embed, final_norm, lm_head, inv_freq), layers) -> capsule.\n"
             "layers: L tuples (in_norm, post_norm, q_norm, k_norm, qkv, o, gate_up, down), each linear a\n"
             "tuple (qweight_rp, qzeros, scales, bias, K, N, g, s_dtype); pointers as ints (0 = none).");
static PyObject *py_cuda_decoder_new(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap, *layers_obj, *res = NULL;
    awq_dec_config c;
    memset(&c, 0, sizeof c);
    long long L, D, Hq, Hkv, hd, rot, F, V, window;
    unsigned long long embed, fnorm, head, invf;
    awq_dec_layer *layers = NULL;
    awq_decoder *dec = NULL;
    awq_err err = {{0}};
    if (!PyArg_ParseTuple(args, "Oi(LLLLLLLLL)ff(KKKK)O:cuda_decoder_new", &cap, &c.dt, &L, &D, &Hq, &Hkv, &hd, &rot,
                          &F, &V, &window, &c.eps, &c.norm_offset, &embed, &fnorm, &head, &invf, &layers_obj))
        return NULL;
    awq_cuda_ctx *ctx = ctx_of(cap);
    if (!ctx) return NULL;
    c.L = L, c.D = D, c.Hq = Hq, c.Hkv = Hkv, c.hd = hd, c.rot = rot, c.F = F, c.V = V, c.window = window;
    c.embed = PTR(embed);
    c.final_norm = (const float *)PTR(fnorm);
    c.lm_head = PTR(head);
    c.inv_freq = (const double *)PTR(invf);
    if (!PyList_Check(layers_obj) || PyList_GET_SIZE(layers_obj) != L) {
        PyErr_Format(PyExc_ValueError, "cuda_decoder_new: layers must be a list of %lld tuples", L);
        return NULL;
    }
    layers = (awq_dec_layer *)PyMem_Calloc((size_t)(L > 0 ? L : 1), sizeof *layers);
    if (!layers) return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < (Py_ssize_t)L; i++) {
        PyObject *t = PyList_GET_ITEM(layers_obj, i), *qkv, *o, *gu, *down;
        unsigned long long inn, postn, qn, kn;
        awq_dec_layer *l = layers + i;
        if (!PyTuple_Check(t) || !PyArg_ParseTuple(t, "KKKKOOOO", &inn, &postn, &qn, &kn, &qkv, &o, &gu, &down)) {
            PyErr_Format(PyExc_TypeError, "cuda_decoder_new: layer %zd is not (in_norm, post_norm, q_norm, k_norm, "
                         "qkv, o, gate_up, down)", i);
            goto done;
        }
        l->in_norm = (const float *)PTR(inn);
        l->post_norm = (const float *)PTR(postn);
        l->q_norm = (const float *)PTR(qn);
        l->k_norm = (const float *)PTR(kn);
        if (parse_dec_linear(qkv, &l->qkv, "q|k|v") || parse_dec_linear(o, &l->o, "o") ||
            parse_dec_linear(gu, &l->gate_up, "gate|up") || parse_dec_linear(down, &l->down, "down"))
            goto done;
    }
    CUDA_CALL(awq_decoder_new(ctx, &c, layers, &dec, &err));
    res = PyCapsule_New(dec, DEC_CAPSULE, dec_capsule_free);
    if (!res) {
        awq_decoder_free(dec);
        goto done;
    }
    Py_INCREF(cap);
    PyCapsule_SetContext(res, cap);
done:
    PyMem_Free(layers);
    return res;
}

PyDoc_STRVAR(cuda_decoder_state_doc,
             "cuda_decoder_state(dec, batch, max_len, max_tokens): allocate the KV cache and workspaces.");
static PyObject *py_cuda_decoder_state(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap, *res = NULL;
    long long B, S, M;
    awq_err err = {{0}};
    if (!PyArg_ParseTuple(args, "OLLL:cuda_decoder_state", &cap, &B, &S, &M)) return NULL;
    awq_decoder *d = dec_of(cap);
    if (!d) return NULL;
    CUDA_CALL(awq_decoder_state(d, B, S, M, &err));
    res = PyLong_FromLongLong(awq_decoder_state_bytes(d));
done:
    return res;
}

PyDoc_STRVAR(cuda_decoder_forward_doc,
             "cuda_decoder_forward(dec, row0, ids, pos0, logits, use_graph): ids int32 [B, T], pos0 int32\n"
             "[B], logits float32 [B, V] (written): last-token logits of cache rows row0 .. row0+B-1.");
static PyObject *py_cuda_decoder_forward(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *cap, *ids_o, *pos_o, *out_o, *res = NULL;
    PyArrayObject *ids = NULL, *pos = NULL, *out = NULL;
    long long row0;
    int use_graph;
    awq_err err = {{0}};
    if (!PyArg_ParseTuple(args, "OLOOOp:cuda_decoder_forward", &cap, &row0, &ids_o, &pos_o, &out_o, &use_graph))
        return NULL;
    awq_decoder *d = dec_of(cap);
    if (!d) return NULL;
    ids = (PyArrayObject *)PyArray_FROMANY(ids_o, NPY_INT32, 2, 2, NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED);
    pos = (PyArrayObject *)PyArray_FROMANY(pos_o, NPY_INT32, 1, 1, NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED);
    if (!ids || !pos) goto done;
    if (!PyArray_Check(out_o) || PyArray_TYPE((PyArrayObject *)out_o) != NPY_FLOAT32 ||
        PyArray_NDIM((PyArrayObject *)out_o) != 2 || !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)out_o) ||
        !PyArray_ISWRITEABLE((PyArrayObject *)out_o)) {
        PyErr_SetString(PyExc_TypeError, "cuda_decoder_forward: logits must be a writable C-contiguous float32 [B, V]");
        goto done;
    }
    out = (PyArrayObject *)out_o;
    {
        const npy_intp B = PyArray_DIM(ids, 0), T = PyArray_DIM(ids, 1);
        if (PyArray_DIM(pos, 0) != B || PyArray_DIM(out, 0) != B) {
            PyErr_Format(PyExc_ValueError, "cuda_decoder_forward: %zd sequences of ids, %zd positions, %zd logit rows",
                         (Py_ssize_t)B, (Py_ssize_t)PyArray_DIM(pos, 0), (Py_ssize_t)PyArray_DIM(out, 0));
            goto done;
        }
        CUDA_CALL(awq_decoder_forward(d, row0, B, T, (const int32_t *)PyArray_DATA(ids),
                                      (const int32_t *)PyArray_DATA(pos), (float *)PyArray_DATA(out), use_graph,
                                      &err));
    }
    Py_INCREF(Py_None);
    res = Py_None;
done:
    Py_XDECREF(ids);
    Py_XDECREF(pos);
    return res;
}

#define AWQ_CUDA_DECODER_METHODS                                                                   \
    METH_V(cuda_decoder_new), METH_V(cuda_decoder_state), METH_V(cuda_decoder_forward),
#undef CUDA_CALL
#else
#define AWQ_CUDA_DECODER_METHODS
#endif /* AWQ_WITH_CUDA */
/* ---- end CUDA fused decoder ---- */

/* ---------------------------------------------------------------- module */

static PyMethodDef methods[] = {
    {"cpu_info", py_cpu_info, METH_NOARGS, cpu_info_doc},
    {"cuda_info", py_cuda_info, METH_NOARGS, cuda_info_doc},
    {"abs_mean", py_abs_mean, METH_VARARGS, abs_mean_doc},
    {"w4a16_matmul", (PyCFunction)(void (*)(void))py_w4a16_matmul, METH_VARARGS | METH_KEYWORDS,
     w4a16_matmul_doc},
    {"w4a16_matmul_ref", (PyCFunction)(void (*)(void))py_w4a16_matmul_ref,
     METH_VARARGS | METH_KEYWORDS, w4a16_matmul_ref_doc},
    {"f16_matmul", (PyCFunction)(void (*)(void))py_f16_matmul, METH_VARARGS | METH_KEYWORDS,
     f16_matmul_doc},
    {"linear", (PyCFunction)(void (*)(void))py_linear, METH_VARARGS | METH_KEYWORDS, linear_doc},
    {"rmsnorm", (PyCFunction)(void (*)(void))py_rmsnorm, METH_VARARGS | METH_KEYWORDS, rmsnorm_doc},
    {"rope_", (PyCFunction)(void (*)(void))py_rope, METH_VARARGS | METH_KEYWORDS, rope_doc},
    {"attention", (PyCFunction)(void (*)(void))py_attention, METH_VARARGS | METH_KEYWORDS,
     attention_doc},
    {"silu_mul", (PyCFunction)(void (*)(void))py_silu_mul, METH_VARARGS | METH_KEYWORDS,
     silu_mul_doc},
    {"layernorm", (PyCFunction)(void (*)(void))py_layernorm, METH_VARARGS | METH_KEYWORDS,
     layernorm_doc},
    {"act", (PyCFunction)(void (*)(void))py_act, METH_VARARGS | METH_KEYWORDS, act_doc},
    {"act_mul", (PyCFunction)(void (*)(void))py_act_mul, METH_VARARGS | METH_KEYWORDS, act_mul_doc},
    {"pseudo_quantize", (PyCFunction)(void (*)(void))py_pseudo_quantize,
     METH_VARARGS | METH_KEYWORDS, pseudo_quantize_doc},
    {"quantize_codes", (PyCFunction)(void (*)(void))py_quantize_codes, METH_VARARGS | METH_KEYWORDS,
     quantize_codes_doc},
    {"pack_gemm", py_pack_gemm, METH_VARARGS, pack_gemm_doc},
    {"unpack_gemm", py_unpack_gemm, METH_VARARGS, unpack_gemm_doc},
    {"clip_search", (PyCFunction)(void (*)(void))py_clip_search, METH_VARARGS | METH_KEYWORDS,
     clip_search_doc},
    AWQ_CUDA_OPS_METHODS /* ---- CUDA tensors and ops (methods) ---- */
    AWQ_CUDA_W4A16_METHODS /* ---- CUDA W4A16 (methods) ---- */
    AWQ_CUDA_DECODER_METHODS /* ---- CUDA fused decoder (methods) ---- */
    /* AWQ_METHODS_END (keep: new entries go above this line) */
    {NULL, NULL, 0, NULL},
};

static int exec_module(PyObject *m) {
    import_array1(-1);
    awq_blas_configure();
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
