/* awq_cuda.h: the one portability header between the C core and the GPU kernels.
 * CUDA today; HIP later maps the same names (hipMalloc, hipStream_t, ...) here, so the .cu sources
 * never name a vendor API directly except through these macros. Plain C interface: callable from
 * module.c, which never includes a CUDA header. */
#ifndef AWQ_CUDA_H
#define AWQ_CUDA_H
#include "../awq.h"

#ifdef __CUDACC__
#include <cuda_runtime.h>
/* The one CUDA check macro: on failure records the statement, file and line and returns an error
 * status from the enclosing function (which takes an `awq_err *` named by err). */
#ifndef AWQ_CUDA_CHECK
#define AWQ_CUDA_CHECK(stmt, err)                                                                 \
    do {                                                                                          \
        cudaError_t e_ = (stmt);                                                                  \
        if (e_ != cudaSuccess)                                                                    \
            return awq_set_err((err), AWQ_ERR_RUNTIME, "%s failed at %s:%d: %s", #stmt, __FILE__, \
                               __LINE__, cudaGetErrorString(e_));                                 \
    } while (0)
#endif
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Number of usable GPUs; 0 with a message in err when there is no driver or device. */
int awq_cuda_device_count(int *count, awq_err *err);
/* Name and compute capability of device `dev` (name: at least 256 bytes). */
int awq_cuda_device_info(int dev, char *name, int *major, int *minor, awq_err *err);

#ifdef __cplusplus
}
#endif
#endif
