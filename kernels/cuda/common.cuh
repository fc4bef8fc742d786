// kernels/cuda/common.cuh — what every CUDA kernel file shares: the device's stream and cuBLAS
// handle (kernels/cuda/runtime.cu), error checks that raise tb::Error, launch geometry, and the
// element types behind tb's float16/bfloat16 storage. Include it first in every .cu file.
#pragma once

// fmt 9 decides whether its helpers are constexpr by looking for __NVCC__, which nvcc's host pass
// sees but g++ does not; under C++20 that mix fails to compile. Host code only formats messages,
// so give it the same answer g++ gets.
#define FMT_USE_CONSTEXPR 1

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include <tb/core.h>

namespace tb::kernels {

// The stream all kernels of the current device run on (created once per device, non-blocking).
cudaStream_t cuda_stream();
// The current device's cuBLAS handle, bound to cuda_stream() (created on first use).
cublasHandle_t cuda_cublas();

// Throw tb::Error("op: CUDA error: <text> (<name>)") when a CUDA/cuBLAS call failed.
void cuda_check(cudaError_t err, const char* op);
void cublas_check(cublasStatus_t status, const char* op);
// After a kernel launch: a bad configuration is reported by cudaGetLastError.
inline void cuda_check_launch(const char* op) { cuda_check(cudaGetLastError(), op); }

// Launch geometry for grid-stride loops: 256 threads a block, enough blocks to cover n but no more
// than 65536 (each thread then loops over several elements).
constexpr int kBlock = 256;
inline unsigned grid_for(int64_t n) {
  int64_t blocks = (n + kBlock - 1) / kBlock;
  if (blocks < 1) blocks = 1;
  return (unsigned)(blocks < 65536 ? blocks : 65536);
}

// for (i = this thread; i < n; i += all threads): the body of every flat kernel.
#define TB_GRID_STRIDE_LOOP(i, n)                                                          \
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);              \
       i += (int64_t)blockDim.x * gridDim.x)

// Block-wide reduction for kernels launched with kBlock threads: a tree over shared memory, so
// the order of the additions (and thus the rounding) is the same on every run. Every thread gets
// the result. Call it from all threads of the block (it synchronises).
template <typename T, typename Op> __device__ T block_reduce(T v, Op op) {
  __shared__ T buf[kBlock];
  buf[threadIdx.x] = v;
  __syncthreads();
  for (int s = kBlock / 2; s > 0; s >>= 1) {
    if ((int)threadIdx.x < s) buf[threadIdx.x] = op(buf[threadIdx.x], buf[threadIdx.x + s]);
    __syncthreads();
  }
  T r = buf[0];
  __syncthreads(); // buf may be reused by the next call
  return r;
}
struct SumOp {
  template <typename T> __device__ T operator()(T a, T b) const { return a + b; }
};
struct MaxOp { // NaN wins, as PyTorch's max
  template <typename T> __device__ T operator()(T a, T b) const {
    return (a != a || a > b) ? a : b;
  }
};

// Temporary device memory for a kernel's partial results, from the caching allocator, freed when
// it goes out of scope. Freeing right after the launches is safe: every kernel runs on the one
// stream, so the next user of the block runs after them.
struct DeviceScratch {
  Device device;
  size_t nbytes;
  void* data;
  explicit DeviceScratch(size_t bytes) : nbytes(bytes) {
    int d = 0;
    cuda_check(cudaGetDevice(&d), "cudaGetDevice");
    device = cuda_device(d);
    data = device_alloc(device, nbytes);
  }
  ~DeviceScratch() { device_free(device, data, nbytes); }
  DeviceScratch(const DeviceScratch&) = delete;
  DeviceScratch& operator=(const DeviceScratch&) = delete;
  template <typename T> T* as() const { return (T*)data; }
};

// The error for a dtype a CUDA kernel does not handle.
[[noreturn]] inline void cuda_no_kernel(const char* op, DType dtype) {
  throw Error(fmt::format("{}: no CUDA kernel for dtype {}", op, dtype_name(dtype)));
}

} // namespace tb::kernels
