// kernels/cpu/onednn_common.cpp — oneDNN engine/stream singletons, scratchpad buffers and cached
// reorders (see onednn_common.h).
#include "kernels/cpu/onednn_common.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <string>

#include <tb/core.h>

namespace tb::kernels::onednn {

dnnl::engine& engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

dnnl::stream& stream() {
  static dnnl::stream s(engine());
  return s;
}

dnnl::primitive_attr scratchpad_attr() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

int64_t num_threads() { return omp_get_max_threads(); }

Buffer::Buffer(size_t nbytes) : nbytes_(nbytes) {
  if (nbytes_ > 0) data_ = device_alloc(kCPU, nbytes_);
}

Buffer::~Buffer() {
  if (data_) device_free(kCPU, data_, nbytes_);
}

dnnl::memory Buffer::memory(const dnnl::memory::desc& md) const {
  TB_CHECK(md.get_size() <= nbytes_, "onednn: buffer of {} bytes too small for {} bytes", nbytes_,
           md.get_size());
  return dnnl::memory(md, engine(), data_);
}

void execute(const dnnl::primitive& prim, const dnnl::memory::desc& scratchpad_md,
             std::unordered_map<int, dnnl::memory> args) {
  Buffer scratch(scratchpad_md.get_size());
  if (scratchpad_md.get_size() > 0) args[DNNL_ARG_SCRATCHPAD] = scratch.memory(scratchpad_md);
  prim.execute(stream(), args);
  stream().wait();
}

Bound::Bound(const dnnl::primitive& prim, const dnnl::memory::desc& scratchpad_md) : prim_(prim) {
  if (scratchpad_md.get_size() > 0) {
    scratch_ = std::make_unique<Buffer>(scratchpad_md.get_size());
    args_.push_back({DNNL_ARG_SCRATCHPAD, scratch_->memory(scratchpad_md)});
  }
}

void Bound::bind(int arg, const dnnl::memory::desc& md, const void* data) {
  args_.push_back({arg, dnnl::memory(md, engine(), const_cast<void*>(data))});
}

void Bound::run(std::initializer_list<std::pair<int, const void*>> data) const {
  std::lock_guard<std::mutex> lock(mutex_);
  dnnl_exec_arg_t c_args[16];
  TB_CHECK(args_.size() <= 16, "onednn::Bound: {} arguments, at most 16", args_.size());
  int n = 0;
  for (const auto& [arg, mem] : args_) {
    for (const auto& [a, ptr] : data)
      if (a == arg) const_cast<dnnl::memory&>(mem).set_data_handle(const_cast<void*>(ptr));
    c_args[n++] = {arg, mem.get()};
  }
  // The C call: the C++ one takes an unordered_map (allocations per call).
  dnnl::error::wrap_c_api(dnnl_primitive_execute(prim_.get(), stream().get(), n, c_args),
                          "could not execute a primitive");
  stream().wait();
}

Reorder::Reorder(const dnnl::memory::desc& from_, const dnnl::memory::desc& to_)
    : needed(from_ != to_), from(from_), to(to_) {
  if (!needed) return;
  dnnl::reorder::primitive_desc pd(engine(), from, engine(), to, scratchpad_attr());
  prim = dnnl::reorder(pd);
  scratchpad_md = pd.scratchpad_desc();
  count_primitive_created();
}

dnnl::memory Reorder::input(const void* user, std::optional<Buffer>& tmp) const {
  dnnl::memory user_mem(from, engine(), const_cast<void*>(user));
  if (!needed) return user_mem;
  tmp.emplace(to.get_size());
  dnnl::memory mem = tmp->memory(to);
  execute(prim, scratchpad_md, {{DNNL_ARG_FROM, user_mem}, {DNNL_ARG_TO, mem}});
  return mem;
}

dnnl::memory Reorder::output(void* user, std::optional<Buffer>& tmp) const {
  if (!needed) return dnnl::memory(from, engine(), user);
  tmp.emplace(from.get_size());
  return tmp->memory(from);
}

void Reorder::commit(const dnnl::memory& written, void* user) const {
  if (!needed) return;
  dnnl::memory user_mem(to, engine(), user);
  execute(prim, scratchpad_md, {{DNNL_ARG_FROM, written}, {DNNL_ARG_TO, user_mem}});
}

bool autotune_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("TB_ONEDNN_AUTOTUNE");
    return v == nullptr || std::string(v) != "0";
  }();
  return on;
}

double time_runs_ms(const std::function<void()>& run) {
  run();
  double best = 1e300;
  for (int i = 0; i < 3; i++) {
    auto t0 = std::chrono::steady_clock::now();
    run();
    best = std::min(best, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

static std::atomic<int64_t> g_created{0};
int64_t primitives_created() { return g_created.load(); }
void count_primitive_created() { g_created++; }

} // namespace tb::kernels::onednn
