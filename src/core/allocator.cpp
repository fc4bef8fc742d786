// The caching allocator: one per device, the same code for CPU and CUDA.
//
// Why: a training step allocates the same activation sizes every step. Fresh large blocks cost
// page faults on the CPU (about 200 ms for 150 MB here) and a synchronising cudaMalloc on the GPU.
// So a freed block is not returned to the system but kept in a free list ordered by size; the next
// request takes the smallest cached block that is big enough (and not more than twice too big,
// so a small tensor does not pin a huge block). empty_cache() gives everything back.
#include <tb/core.h>

#include <kernels/cuda_runtime.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <unordered_map>

namespace tb {

namespace {

struct CachingAllocator {
  Device device;
  std::mutex mu;
  std::multimap<size_t, void*> free_blocks;        // size -> block, cached for reuse
  std::unordered_map<void*, size_t> block_size;     // every live or cached block we own
  MemoryStats stats;

  static size_t round_size(size_t n) {
    if (n < 512) return 512;
    if (n < (1u << 20)) return (n + 511) & ~size_t(511);   // 512 B granules below 1 MiB
    return (n + (1u << 20) - 1) & ~size_t((1u << 20) - 1); // 1 MiB granules above
  }

  void* system_alloc(size_t n) {
    if (device.is_cpu()) {
      void* p = std::aligned_alloc(64, n);
      TB_CHECK(p, "allocator: out of CPU memory allocating {} bytes ({} in use, {} cached)", n,
               stats.in_use, stats.reserved - stats.in_use);
      return p;
    }
    kernels::cuda_set_device(device.index);
    return kernels::cuda_malloc(n);
  }
  void system_free(void* p) {
    if (device.is_cpu()) std::free(p);
    else kernels::cuda_free(p);
  }

  void* alloc(size_t nbytes) {
    size_t n = round_size(nbytes);
    std::lock_guard<std::mutex> lock(mu);
    stats.allocations++;
    auto it = free_blocks.lower_bound(n);
    void* p = nullptr;
    size_t size = n;
    if (it != free_blocks.end() && it->first <= 2 * n) {
      p = it->second;
      size = it->first;
      free_blocks.erase(it);
      stats.cache_hits++;
    } else {
      try {
        p = system_alloc(n);
      } catch (const Error&) { // out of memory: give the cache back and try once more
        release_cached_locked();
        p = system_alloc(n);
      }
      block_size[p] = n;
      stats.reserved += n;
    }
    stats.in_use += size;
    stats.peak = std::max(stats.peak, stats.in_use);
    return p;
  }

  void free(void* p) {
    std::lock_guard<std::mutex> lock(mu);
    auto it = block_size.find(p);
    if (it == block_size.end()) return; // not ours: nothing to do (never happens in tb)
    stats.in_use -= it->second;
    free_blocks.emplace(it->second, p);
  }

  void release_cached_locked() {
    for (auto& [size, p] : free_blocks) {
      system_free(p);
      block_size.erase(p);
      stats.reserved -= size;
    }
    free_blocks.clear();
  }
};

CachingAllocator& allocator_for(Device d) {
  // Never destroyed: tensors held by static objects may be freed during exit.
  static auto* mu = new std::mutex;
  static auto* allocators = new std::map<std::pair<int, int>, std::unique_ptr<CachingAllocator>>;
  std::lock_guard<std::mutex> lock(*mu);
  auto& a = (*allocators)[{(int)d.type, d.index}];
  if (!a) {
    a = std::make_unique<CachingAllocator>();
    a->device = d;
  }
  return *a;
}

} // namespace

static void check_device_usable(Device d) {
  if (d.is_cuda()) {
    TB_CHECK(kernels::cuda_available(),
             "device: {} requested but no CUDA device is available ({})", d.str(),
             kernels::cuda_built() ? "no GPU or driver found" : "tensorbrain was built without CUDA");
    TB_CHECK(d.index >= 0 && d.index < kernels::cuda_device_count(),
             "device: {} requested but only {} CUDA device(s) exist", d.str(),
             kernels::cuda_device_count());
  }
}

void* device_alloc(Device d, size_t nbytes) {
  check_device_usable(d);
  return allocator_for(d).alloc(nbytes);
}

void device_free(Device d, void* p, size_t) {
  if (p) allocator_for(d).free(p);
}

MemoryStats memory_stats(Device d) {
  auto& a = allocator_for(d);
  std::lock_guard<std::mutex> lock(a.mu);
  return a.stats;
}

void reset_peak_memory(Device d) {
  auto& a = allocator_for(d);
  std::lock_guard<std::mutex> lock(a.mu);
  a.stats.peak = a.stats.in_use;
}

void empty_cache(Device d) {
  auto& a = allocator_for(d);
  std::lock_guard<std::mutex> lock(a.mu);
  a.release_cached_locked();
}

Storage::Storage(Device d, size_t n) : nbytes(n), device(d) { data = device_alloc(d, n); }
Storage::Storage(void* user_data, size_t n, Device d)
    : data(user_data), nbytes(n), device(d), owned(false) {}
Storage::~Storage() {
  if (owned) device_free(device, data, nbytes);
}

} // namespace tb
