/* device.cu: GPU discovery. The W4A16 kernels, allocator and streams arrive with the GPU backend;
 * this file makes the CUDA build path real and lets Python report why a GPU is unusable. */
#include <stdio.h>

#include "awq_cuda.h"

extern "C" int awq_cuda_device_count(int *count, awq_err *err) {
    *count = 0;
    AWQ_CUDA_CHECK(gpuGetDeviceCount(count), err);
    return AWQ_OK;
}

extern "C" int awq_cuda_device_info(int dev, char *name, int *major, int *minor, awq_err *err) {
    gpuDeviceProp prop;
    AWQ_CUDA_CHECK(gpuGetDeviceProperties(&prop, dev), err);
    snprintf(name, 256, "%s", prop.name);
    *major = prop.major;
    *minor = prop.minor;
    return AWQ_OK;
}
