/* awq_cuda.h: the one portability header between the C core and the GPU kernels.
 *
 * The .cu sources name the GPU runtime and BLAS only through the vendor-neutral names defined here
 * (gpuMalloc, gpuStream_t, gpublasGemmEx, GPU_R_16F, gpu_bf16, GPU_SHFL_XOR, ...). CUDA maps them
 * to cuda* / cublas*; a HIP build (hipcc defines __HIP_PLATFORM_AMD__, or -DAWQ_HIP) maps them to
 * hip* / hipblas* (hipBLAS v2 API). Inline PTX (mma.sync, ldmatrix, cp.async, lop3) exists only
 * on NVIDIA: AWQ_GPU_PTX is 1 there and 0 on HIP, where cp.async and lop3 fall back to plain code
 * and the host side never launches the mma.sync kernels (W4A16 takes the GEMV / dequantize + BLAS
 * paths, attention the CUDA-core kernel). The warp code assumes 32 lanes (RDNA wave32 on AMD).
 *
 * The bottom half is a plain C interface, callable from module.c, which never includes a vendor
 * header. */
#ifndef AWQ_CUDA_H
#define AWQ_CUDA_H
#include "../awq.h"

#if defined(__CUDACC__) || defined(__HIPCC__)
#if defined(__HIP_PLATFORM_AMD__) || defined(AWQ_HIP)
/* ------------------------------------------------------------------ HIP (ROCm) */
#ifndef HIPBLAS_V2
#define HIPBLAS_V2
#endif
#include <hip/hip_bf16.h>
#include <hip/hip_fp16.h>
#include <hip/hip_runtime.h>
#include <hipblas/hipblas.h>
#define AWQ_GPU_PTX 0
#define GPU_API "hip"
#define GPUBLAS_API "hipblas"
typedef hipError_t gpuError_t;
typedef hipStream_t gpuStream_t;
typedef hipEvent_t gpuEvent_t;
typedef hipDeviceProp_t gpuDeviceProp;
typedef hipMemcpyKind gpuMemcpyKind;
typedef hipStreamCaptureStatus gpuStreamCaptureStatus;
typedef hipblasHandle_t gpublasHandle_t;
typedef hipblasStatus_t gpublasStatus_t;
typedef hipDataType gpuDataType_t;
typedef __hip_bfloat16 gpu_bf16;
typedef __hip_bfloat162 gpu_bf162;
typedef hipGraph_t gpuGraph_t;
typedef hipGraphExec_t gpuGraphExec_t;
#define gpuStreamCreateWithFlags hipStreamCreateWithFlags
#define gpuStreamNonBlocking hipStreamNonBlocking
#define gpuStreamDestroy hipStreamDestroy
#define gpuStreamBeginCapture hipStreamBeginCapture
#define gpuStreamCaptureModeThreadLocal hipStreamCaptureModeThreadLocal
#define gpuStreamEndCapture hipStreamEndCapture
#define gpuGraphInstantiate(exec, graph) hipGraphInstantiate((exec), (graph), NULL, NULL, 0)
#define gpuGraphLaunch hipGraphLaunch
#define gpuGraphDestroy hipGraphDestroy
#define gpuGraphExecDestroy hipGraphExecDestroy
#define gpuSuccess hipSuccess
#define gpuErrorMemoryAllocation hipErrorOutOfMemory
#define gpuGetErrorString hipGetErrorString
#define gpuGetLastError hipGetLastError
#define gpuGetDeviceCount hipGetDeviceCount
#define gpuGetDevice hipGetDevice
#define gpuSetDevice hipSetDevice
#define gpuGetDeviceProperties hipGetDeviceProperties
#define gpuDeviceGetAttribute hipDeviceGetAttribute
#define gpuDevAttrMultiProcessorCount hipDeviceAttributeMultiprocessorCount
#define gpuDeviceSynchronize hipDeviceSynchronize
#define gpuMalloc hipMalloc
#define gpuFree hipFree
#define gpuMemGetInfo hipMemGetInfo
#define gpuMemset hipMemset
#define gpuMemsetAsync hipMemsetAsync
#define gpuMemcpyAsync hipMemcpyAsync
#define gpuMemcpyHostToDevice hipMemcpyHostToDevice
#define gpuMemcpyDeviceToHost hipMemcpyDeviceToHost
#define gpuMemcpyDeviceToDevice hipMemcpyDeviceToDevice
#define gpuStreamSynchronize hipStreamSynchronize
#define gpuStreamWaitEvent hipStreamWaitEvent
#define gpuStreamIsCapturing hipStreamIsCapturing
#define gpuStreamCaptureStatusNone hipStreamCaptureStatusNone
#define gpuEventCreateWithFlags hipEventCreateWithFlags
#define gpuEventDisableTiming hipEventDisableTiming
#define gpuEventRecord hipEventRecord
#define gpuEventDestroy hipEventDestroy
#define gpuFuncSetAttribute(f, a, v) hipFuncSetAttribute((const void *)(f), a, v)
#define gpuFuncAttributeMaxDynamicSharedMemorySize hipFuncAttributeMaxDynamicSharedMemorySize
#define gpuOccupancyMaxActiveBlocksPerMultiprocessor hipOccupancyMaxActiveBlocksPerMultiprocessor
#define gpublasCreate hipblasCreate
#define gpublasDestroy hipblasDestroy
#define gpublasSetStream hipblasSetStream
#define gpublasSetWorkspace hipblasSetWorkspace
#define gpublasGetStatusString hipblasStatusToString
#define gpublasGemmEx hipblasGemmEx
#define gpublasGemmStridedBatchedEx hipblasGemmStridedBatchedEx
#define GPUBLAS_STATUS_SUCCESS HIPBLAS_STATUS_SUCCESS
#define GPUBLAS_STATUS_ALLOC_FAILED HIPBLAS_STATUS_ALLOC_FAILED
#define GPUBLAS_OP_N HIPBLAS_OP_N
#define GPUBLAS_OP_T HIPBLAS_OP_T
#define GPUBLAS_COMPUTE_32F HIPBLAS_COMPUTE_32F
#define GPUBLAS_GEMM_DEFAULT HIPBLAS_GEMM_DEFAULT
#define GPU_R_32F HIP_R_32F
#define GPU_R_16F HIP_R_16F
#define GPU_R_16BF HIP_R_16BF
#define GPU_SHFL_XOR(v, o) __shfl_xor((v), (o), 32)
#define GPU_SHFL(v, lane) __shfl((v), (lane), 32)
#define GPU_ALL(p) __all(p)
#else
/* ------------------------------------------------------------------ CUDA */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#define AWQ_GPU_PTX 1
#define GPU_API "cuda"
#define GPUBLAS_API "cublas"
typedef cudaError_t gpuError_t;
typedef cudaStream_t gpuStream_t;
typedef cudaEvent_t gpuEvent_t;
typedef cudaDeviceProp gpuDeviceProp;
typedef cudaMemcpyKind gpuMemcpyKind;
typedef cudaStreamCaptureStatus gpuStreamCaptureStatus;
typedef cublasHandle_t gpublasHandle_t;
typedef cublasStatus_t gpublasStatus_t;
typedef cudaDataType_t gpuDataType_t;
typedef __nv_bfloat16 gpu_bf16;
typedef __nv_bfloat162 gpu_bf162;
typedef cudaGraph_t gpuGraph_t;
typedef cudaGraphExec_t gpuGraphExec_t;
#define gpuStreamCreateWithFlags cudaStreamCreateWithFlags
#define gpuStreamNonBlocking cudaStreamNonBlocking
#define gpuStreamDestroy cudaStreamDestroy
#define gpuStreamBeginCapture cudaStreamBeginCapture
#define gpuStreamCaptureModeThreadLocal cudaStreamCaptureModeThreadLocal
#define gpuStreamEndCapture cudaStreamEndCapture
#define gpuGraphInstantiate(exec, graph) cudaGraphInstantiate((exec), (graph), 0)
#define gpuGraphLaunch cudaGraphLaunch
#define gpuGraphDestroy cudaGraphDestroy
#define gpuGraphExecDestroy cudaGraphExecDestroy
#define gpuSuccess cudaSuccess
#define gpuErrorMemoryAllocation cudaErrorMemoryAllocation
#define gpuGetErrorString cudaGetErrorString
#define gpuGetLastError cudaGetLastError
#define gpuGetDeviceCount cudaGetDeviceCount
#define gpuGetDevice cudaGetDevice
#define gpuSetDevice cudaSetDevice
#define gpuGetDeviceProperties cudaGetDeviceProperties
#define gpuDeviceGetAttribute cudaDeviceGetAttribute
#define gpuDevAttrMultiProcessorCount cudaDevAttrMultiProcessorCount
#define gpuDeviceSynchronize cudaDeviceSynchronize
#define gpuMalloc cudaMalloc
#define gpuFree cudaFree
#define gpuMemGetInfo cudaMemGetInfo
#define gpuMemset cudaMemset
#define gpuMemsetAsync cudaMemsetAsync
#define gpuMemcpyAsync cudaMemcpyAsync
#define gpuMemcpyHostToDevice cudaMemcpyHostToDevice
#define gpuMemcpyDeviceToHost cudaMemcpyDeviceToHost
#define gpuMemcpyDeviceToDevice cudaMemcpyDeviceToDevice
#define gpuStreamSynchronize cudaStreamSynchronize
#define gpuStreamWaitEvent cudaStreamWaitEvent
#define gpuStreamIsCapturing cudaStreamIsCapturing
#define gpuStreamCaptureStatusNone cudaStreamCaptureStatusNone
#define gpuEventCreateWithFlags cudaEventCreateWithFlags
#define gpuEventDisableTiming cudaEventDisableTiming
#define gpuEventRecord cudaEventRecord
#define gpuEventDestroy cudaEventDestroy
#define gpuFuncSetAttribute cudaFuncSetAttribute
#define gpuFuncAttributeMaxDynamicSharedMemorySize cudaFuncAttributeMaxDynamicSharedMemorySize
#define gpuOccupancyMaxActiveBlocksPerMultiprocessor cudaOccupancyMaxActiveBlocksPerMultiprocessor
#define gpublasCreate cublasCreate
#define gpublasDestroy cublasDestroy
#define gpublasSetStream cublasSetStream
#define gpublasSetWorkspace cublasSetWorkspace
#define gpublasGetStatusString cublasGetStatusString
#define gpublasGemmEx cublasGemmEx
#define gpublasGemmStridedBatchedEx cublasGemmStridedBatchedEx
#define GPUBLAS_STATUS_SUCCESS CUBLAS_STATUS_SUCCESS
#define GPUBLAS_STATUS_ALLOC_FAILED CUBLAS_STATUS_ALLOC_FAILED
#define GPUBLAS_OP_N CUBLAS_OP_N
#define GPUBLAS_OP_T CUBLAS_OP_T
#define GPUBLAS_COMPUTE_32F CUBLAS_COMPUTE_32F
#define GPUBLAS_GEMM_DEFAULT CUBLAS_GEMM_DEFAULT
#define GPU_R_32F CUDA_R_32F
#define GPU_R_16F CUDA_R_16F
#define GPU_R_16BF CUDA_R_16BF
#define GPU_SHFL_XOR(v, o) __shfl_xor_sync(0xffffffffu, (v), (o))
#define GPU_SHFL(v, lane) __shfl_sync(0xffffffffu, (v), (lane))
#define GPU_ALL(p) __all_sync(0xffffffffu, (p))
#endif

#include <string.h>
/* A statement's text as the vendor names it ("gpuMalloc(p, n)" -> "cuda" "Malloc(p, n)"): two
 * arguments for a "%s%s" format, so messages name the real call. */
#define AWQ_GPU_CALL_NAME(s)                                                                        \
    (strncmp((s), "gpublas", 7) == 0 ? GPUBLAS_API : strncmp((s), "gpu", 3) == 0 ? GPU_API : ""),   \
        ((s) + (strncmp((s), "gpublas", 7) == 0 ? 7 : strncmp((s), "gpu", 3) == 0 ? 3 : 0))

/* The GPU check macros: on failure record the call (by its vendor name), file and line and return
 * an error status from the enclosing function (which takes an `awq_err *` named by err); an
 * allocation failure is AWQ_ERR_NOMEM (MemoryError in Python). */
#define AWQ_CUDA_CHECK(stmt, err)                                                                  \
    do {                                                                                           \
        gpuError_t e_ = (stmt);                                                                    \
        if (e_ != gpuSuccess)                                                                      \
            return awq_set_err((err), e_ == gpuErrorMemoryAllocation ? AWQ_ERR_NOMEM : AWQ_ERR_RUNTIME, \
                               "%s%s failed at %s:%d: %s", AWQ_GPU_CALL_NAME(#stmt), __FILE__, __LINE__, \
                               gpuGetErrorString(e_));                                             \
    } while (0)
#define AWQ_GPUBLAS_CHECK(stmt, err)                                                               \
    do {                                                                                           \
        gpublasStatus_t s_ = (stmt);                                                               \
        if (s_ != GPUBLAS_STATUS_SUCCESS)                                                          \
            return awq_set_err((err), s_ == GPUBLAS_STATUS_ALLOC_FAILED ? AWQ_ERR_NOMEM : AWQ_ERR_RUNTIME, \
                               "%s%s failed at %s:%d: %s", AWQ_GPU_CALL_NAME(#stmt), __FILE__, __LINE__, \
                               gpublasGetStatusString(s_));                                        \
    } while (0)
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
