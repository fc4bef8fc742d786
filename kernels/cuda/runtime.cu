// kernels/cuda/runtime.cu — the CUDA runtime behind kernels/cuda_runtime.h: device discovery,
// raw allocations (src/core/allocator.cpp caches them), copies, and one stream plus one cuBLAS
// handle per device.
//
// Ordering: every kernel, cuBLAS call and device-side copy goes on the device's one stream, so they
// run in issue order and a block freed to the caching allocator can be reused at once (the next
// user is queued behind the last one). Copies that touch host memory wait for the stream: after
// cuda_memcpy_h2d the host buffer may be reused, after cuda_memcpy_d2h the data is there.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda_runtime.h"

#include <mutex>
#include <string>

namespace tb::kernels {

void cuda_check(cudaError_t err, const char* op) {
  if (err == cudaSuccess) return;
  cudaGetLastError(); // clear a non-sticky error so the next call starts clean
  throw Error(
      fmt::format("{}: CUDA error: {} ({})", op, cudaGetErrorString(err), cudaGetErrorName(err)));
}

static const char* cublas_status_name(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
  }
  return "unknown cuBLAS status";
}

void cublas_check(cublasStatus_t status, const char* op) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  throw Error(fmt::format("{}: cuBLAS error: {}", op, cublas_status_name(status)));
}

// ---- devices -----------------------------------------------------------------------------------

bool cuda_built() { return true; }

// Counted once. Without a driver or GPU cudaGetDeviceCount returns an error code (it never
// aborts), which simply means "not available".
static int device_count_cached() {
  static const int count = [] {
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
      cudaGetLastError();
      return 0;
    }
    return n;
  }();
  return count;
}

bool cuda_available() { return device_count_cached() > 0; }
int cuda_device_count() { return device_count_cached(); }

static void check_index(const char* op, int index) {
  TB_CHECK(cuda_available(), "{}: no CUDA device is available", op);
  TB_CHECK(index >= 0 && index < cuda_device_count(),
           "{}: CUDA device index {} out of range ({} device(s))", op, index, cuda_device_count());
}

void cuda_set_device(int index) {
  check_index("cuda_set_device", index);
  cuda_check(cudaSetDevice(index), "cuda_set_device");
}

// Per-device state, created lazily and kept for the life of the process (never destroyed: tensors
// freed during static destruction may still need the stream).
namespace {
constexpr int kMaxDevices = 64;
struct DeviceState {
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  std::string name;
};
std::mutex g_mu;
DeviceState* g_devices = new DeviceState[kMaxDevices];

int current_device() {
  TB_CHECK(cuda_available(), "cuda: no CUDA device is available");
  int d = 0;
  cuda_check(cudaGetDevice(&d), "cudaGetDevice");
  TB_CHECK(d >= 0 && d < kMaxDevices, "cuda: device index {} beyond the {} supported", d,
           kMaxDevices);
  return d;
}
} // namespace

cudaStream_t cuda_stream() {
  int d = current_device();
  std::lock_guard<std::mutex> lock(g_mu);
  DeviceState& s = g_devices[d];
  if (!s.stream)
    cuda_check(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking), "cudaStreamCreate");
  return s.stream;
}

cublasHandle_t cuda_cublas() {
  cudaStream_t stream = cuda_stream();
  int d = current_device();
  std::lock_guard<std::mutex> lock(g_mu);
  DeviceState& s = g_devices[d];
  if (!s.cublas) {
    cublasHandle_t h = nullptr;
    cublas_check(cublasCreate(&h), "cublasCreate");
    cublas_check(cublasSetStream(h, stream), "cublasSetStream");
    s.cublas = h;
  }
  return s.cublas;
}

const char* cuda_device_name(int index) {
  check_index("cuda_device_name", index);
  std::lock_guard<std::mutex> lock(g_mu);
  DeviceState& s = g_devices[index];
  if (s.name.empty()) {
    cudaDeviceProp prop;
    cuda_check(cudaGetDeviceProperties(&prop, index), "cuda_device_name");
    s.name = prop.name;
  }
  return s.name.c_str();
}

void cuda_synchronize() { cuda_check(cudaStreamSynchronize(cuda_stream()), "cuda_synchronize"); }

// ---- memory ------------------------------------------------------------------------------------

void* cuda_malloc(size_t nbytes) {
  void* p = nullptr;
  cudaError_t err = cudaMalloc(&p, nbytes);
  if (err != cudaSuccess) {
    cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    cudaGetLastError();
    throw Error(fmt::format("cuda_malloc: cannot allocate {} bytes on cuda:{} ({}; {} of {} bytes "
                            "free)",
                            nbytes, current_device(), cudaGetErrorString(err), free_b, total_b));
  }
  return p;
}

// cudaFree waits for the device, so no kernel still reading the block can be cut short.
void cuda_free(void* p) {
  if (p) cuda_check(cudaFree(p), "cuda_free");
}

void cuda_memcpy_h2d(void* dst, const void* src, size_t nbytes) {
  if (nbytes == 0) return;
  cudaStream_t s = cuda_stream();
  cuda_check(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyHostToDevice, s), "cuda_memcpy_h2d");
  cuda_check(cudaStreamSynchronize(s), "cuda_memcpy_h2d");
}

void cuda_memcpy_d2h(void* dst, const void* src, size_t nbytes) {
  if (nbytes == 0) return;
  cudaStream_t s = cuda_stream();
  cuda_check(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToHost, s), "cuda_memcpy_d2h");
  cuda_check(cudaStreamSynchronize(s), "cuda_memcpy_d2h");
}

void cuda_memcpy_d2d(void* dst, const void* src, size_t nbytes) {
  if (nbytes == 0) return;
  cuda_check(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToDevice, cuda_stream()),
             "cuda_memcpy_d2d");
}

} // namespace tb::kernels
