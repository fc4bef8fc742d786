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
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
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

// A primitive whose argument memories are made once, for a plan that runs it many times. Making
// a dnnl::memory allocates (an aligned malloc inside oneDNN); with six of them, an argument map
// and a scratchpad per call, that was half of the time around a MobileNetV2-sized int8 conv
// (measured 5.3 us of overhead per layer against a 5.4 us primitive on 96 -> 96 at 7x7).
// bind() adds an argument (its data may be set later); run() points the given arguments at the
// caller's data and executes. One run at a time per Bound (a mutex): the memories are shared.
class Bound {
 public:
  Bound(const dnnl::primitive& prim, const dnnl::memory::desc& scratchpad_md);
  void bind(int arg, const dnnl::memory::desc& md, const void* data = nullptr);
  // `data`: (argument, pointer) for each argument whose data changes per call.
  void run(std::initializer_list<std::pair<int, const void*>> data) const;

 private:
  dnnl::primitive prim_;
  std::vector<std::pair<int, dnnl::memory>> args_;
  std::unique_ptr<Buffer> scratch_;
  mutable std::mutex mutex_;
};

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

// Choosing among oneDNN's implementations by measurement. For one problem oneDNN offers a list of
// implementations, best first by its own heuristic (pd.next_impl() walks it). On this CPU (AVX-512
// VNNI and AMX) the heuristic puts the AMX kernels first, which measured slower than the AVX-512
// VNNI ones on most of MobileNetV2's small int8 1x1 convs (0.35 against 0.19 ms on 16 -> 96 at
// 1x112x112) and faster on ResNet-18's int8 3x3 ones (the model 4.9 against 6.9 ms). So the
// inference kernels time the first kMaxImpls implementations (oneDNN's reference loops left out)
// on the layer's own shape when they create its primitive, and keep the fastest.
// `make()` builds the descriptor at oneDNN's first choice (from an operation descriptor that
// outlives it: oneDNN 2.6's implementation list keeps a pointer to that); `time_ms(pd)` runs pd's primitive on
// buffers of its layouts and returns the time of one run. Returns the position of the fastest
// (0 = oneDNN's choice); at_impl() rebuilds that one. TB_ONEDNN_AUTOTUNE=0 in the environment
// turns the timing off (always position 0), for runs that must pick the same kernels every time.
constexpr int kMaxImpls = 4;
bool autotune_enabled();
// Best of 3 timed runs after one warm-up, in milliseconds.
double time_runs_ms(const std::function<void()>& run);
template <class PD>
int fastest_impl(const std::function<PD()>& make, const std::function<double(const PD&)>& time_ms) {
  PD pd = make();
  if (!autotune_enabled()) return 0;
  int best = 0;
  double best_ms = 1e300;
  for (int pos = 0; pos < kMaxImpls; pos++) {
    if (std::string(pd.impl_info_str()).rfind("ref", 0) != 0) {
      double ms = time_ms(pd);
      if (ms < best_ms) best_ms = ms, best = pos;
    }
    if (!pd.next_impl()) break;
  }
  return best;
}
// The descriptor make() builds, moved on to implementation `position` (as far as the list goes).
template <class PD> PD at_impl(PD pd, int position) {
  for (int i = 0; i < position && pd.next_impl(); i++) {
  }
  return pd;
}
// The names of the first kMaxImpls implementations oneDNN offers for make()'s problem, in its order.
template <class PD> std::vector<std::string> impl_names(PD pd) {
  std::vector<std::string> names{pd.impl_info_str()};
  while ((int)names.size() < kMaxImpls && pd.next_impl()) names.push_back(pd.impl_info_str());
  return names;
}

// The number of OpenMP threads now: part of every key, since oneDNN picks its work split (and
// sometimes its implementation) for the thread count at creation time.
int64_t num_threads();

// How many primitives (convolutions, reorders, ...) this process has created: tests check that
// repeated calls with the same geometry hit the cache.
int64_t primitives_created();
void count_primitive_created();

} // namespace tb::kernels::onednn
