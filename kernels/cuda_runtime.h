// kernels/cuda_runtime.h — the CUDA runtime as the core sees it (kernels/cuda/runtime.cu; without
// nvcc, kernels/cuda/stubs.cpp raises tb::Error). The caching allocator in src/core/allocator.cpp
// calls cuda_malloc/cuda_free underneath, so the same caching code serves every device.
// All kernels run on one stream per device; copies to the host synchronise that stream.
#pragma once

#include <cstddef>

namespace tb::kernels {
bool cuda_built();
bool cuda_available();      // cached after the first call
int cuda_device_count();
void cuda_set_device(int index);
void* cuda_malloc(size_t nbytes);
void cuda_free(void* p);
void cuda_memcpy_h2d(void* dst, const void* src, size_t nbytes);
void cuda_memcpy_d2h(void* dst, const void* src, size_t nbytes);
void cuda_memcpy_d2d(void* dst, const void* src, size_t nbytes);
void cuda_synchronize();
const char* cuda_device_name(int index);
} // namespace tb::kernels
