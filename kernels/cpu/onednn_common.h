// kernels/cpu/onednn_common.h — what every oneDNN-backed kernel shares: the one CPU engine and
// stream, temporary buffers from tb's caching allocator (scratchpads, reordered weights), and a
// primitive cache.
//
// Why a cache: creating a oneDNN primitive costs 0.3-1.3 ms (it JIT-compiles code for the exact
// shapes), executing a cached one about 1 us of overhead. A training step runs the same shapes
// every time, so each kernel keys its primitives by (op, shapes, strides, dtypes, params, threads)
// and builds them once per process.
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <vector>

#include <dnnl.hpp>

namespace tb::kernels::onednn {

dnnl::engine& engine(); // dnnl::engine(cpu, 0), created on first use
dnnl::stream& stream(); // one stream on that engine; oneDNN's CPU stream runs synchronously

// Every primitive is created with user-managed scratchpad, so its temporary memory comes from
// tb's caching allocator (a Buffer per execution) instead of a fresh malloc inside oneDNN.
dnnl::primitive_attr scratchpad_attr();

// A temporary CPU buffer from tb::device_alloc, returned to the cache on scope exit.
class Buffer {
 public:
  explicit Buffer(size_t nbytes);
  ~Buffer();
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  void* data() const { return data_; }
  // A dnnl::memory over this buffer (md.get_size() must fit).
  dnnl::memory memory(const dnnl::memory::desc& md) const;

 private:
  void* data_ = nullptr;
  size_t nbytes_ = 0;
};

// Runs `prim` with `args` plus a scratchpad of the size its primitive descriptor asks for, and
// waits for it.
void execute(const dnnl::primitive& prim, const dnnl::memory::desc& scratchpad_md,
             std::unordered_map<int, dnnl::memory> args);

// A reorder between two fixed layouts (a user's activation or OIHW weights <-> the layout a
// primitive runs in), built once next to the primitive that needs it; a no-op when the layouts
// are equal. Temporaries come from tb's caching allocator and live in `tmp`, which must outlive
// the returned memory.
struct Reorder {
  Reorder() = default;
  Reorder(const dnnl::memory::desc& from, const dnnl::memory::desc& to);
  bool needed = false;
  dnnl::memory::desc from, to, scratchpad_md;
  dnnl::reorder prim;
  // An input: the data at `user` (layout `from`) seen in layout `to`.
  dnnl::memory input(const void* user, std::optional<Buffer>& tmp) const;
  // An output: where the primitive should write (layout `from`): `user` itself when no reorder
  // is needed, else a temporary that commit() then copies to `user` (layout `to`).
  dnnl::memory output(void* user, std::optional<Buffer>& tmp) const;
  void commit(const dnnl::memory& written, void* user) const;
};

// Primitive cache: key = a flat list of integers that fully determine the primitive.
using Key = std::vector<int64_t>;
struct KeyHash {
  size_t operator()(const Key& k) const {
    size_t h = 1469598103934665603ull;
    for (int64_t v : k) h = (h ^ (size_t)v) * 1099511628211ull;
    return h;
  }
};
// Entries are never removed, so references stay valid (unordered_map nodes do not move).
template <typename Entry>
class Cache {
 public:
  template <typename Make>
  const Entry& get(const Key& key, Make make) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = map_.find(key);
    if (it == map_.end()) it = map_.emplace(key, make()).first;
    return it->second;
  }

 private:
  std::mutex mutex_;
  std::unordered_map<Key, Entry, KeyHash> map_;
};

// The number of OpenMP threads now: part of every key, since oneDNN picks its work split (and
// sometimes its implementation) for the thread count at creation time.
int64_t num_threads();

// How many primitives (convolutions, reorders, ...) this process has created: tests check that
// repeated calls with the same geometry hit the cache.
int64_t primitives_created();
void count_primitive_created();

} // namespace tb::kernels::onednn
