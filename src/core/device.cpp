// Devices, the thread setting and the CPU-kernel switch.
#include <tb/core.h>
#include <tb/cuda.h>

#include <kernels/cuda_runtime.h>

#include <atomic>
#include <thread>

#include <omp.h>

extern "C" void openblas_set_num_threads(int);

namespace tb {

std::string Device::str() const {
  return is_cpu() ? std::string("cpu") : fmt::format("cuda:{}", index);
}

Device parse_device(const std::string& s) {
  if (s == "cpu") return kCPU;
  if (s == "cuda") return cuda_device(0);
  if (s.rfind("cuda:", 0) == 0) {
    try {
      size_t used = 0;
      int idx = std::stoi(s.substr(5), &used);
      if (used == s.size() - 5 && idx >= 0) return cuda_device(idx);
    } catch (const std::exception&) {
    }
  }
  throw Error(fmt::format("parse_device: expected 'cpu', 'cuda' or 'cuda:N', got '{}'", s));
}

// One thread setting for everything: OpenMP's pool is shared by our kernels, oneDNN and the
// OpenMP build of OpenBLAS, so setting it (and OpenBLAS's own counter) is enough.
static std::atomic<int> g_num_threads{0};

void set_num_threads(int n) {
  TB_CHECK(n >= 1, "set_num_threads: expected n >= 1, got {}", n);
  g_num_threads = n;
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}

int get_num_threads() {
  if (g_num_threads == 0) return (int)std::max(1u, std::thread::hardware_concurrency());
  return g_num_threads;
}

static std::atomic<CpuKernels> g_cpu_kernels{CpuKernels::Fast};
void set_cpu_kernels(CpuKernels k) { g_cpu_kernels = k; }
CpuKernels cpu_kernels() { return g_cpu_kernels; }

namespace cuda {
bool is_built() { return kernels::cuda_built(); }
bool is_available() { return kernels::cuda_available(); }
int device_count() { return is_available() ? kernels::cuda_device_count() : 0; }
void synchronize() {
  if (is_available()) kernels::cuda_synchronize();
}
std::string device_name(int index) {
  TB_CHECK(is_available(), "cuda::device_name: no CUDA device available");
  return kernels::cuda_device_name(index);
}
} // namespace cuda

} // namespace tb
