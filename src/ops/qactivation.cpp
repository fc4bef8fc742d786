// src/ops/qactivation.cpp — the record of quantized activations (src/ops/qactivation.h): one map
// from storage to grid for the process, under a mutex (a quantized model may run on any thread;
// one lookup per integer layer). Entries whose storage is gone are swept every 256 insertions.
#include "src/ops/qactivation.h"

#include <mutex>
#include <unordered_map>

namespace tb {

namespace {
struct Entry {
  std::weak_ptr<Storage> storage;
  ActivationGrid grid;
};
std::mutex g_mutex;
std::unordered_map<const Storage*, Entry> g_grids;
size_t g_inserts = 0;
} // namespace

void mark_quantized_activation(const Tensor& t, ActivationGrid g) {
  TB_CHECK(t.defined() && t.dtype() == kUInt8,
           "mark_quantized_activation: a quantized activation is a uint8 tensor, got {}",
           t.defined() ? dtype_name(t.dtype()) : "an undefined tensor");
  std::lock_guard<std::mutex> lock(g_mutex);
  if (++g_inserts % 256 == 0)
    for (auto it = g_grids.begin(); it != g_grids.end();)
      it = it->second.storage.expired() ? g_grids.erase(it) : std::next(it);
  g_grids[t.storage().get()] = {t.storage(), g};
}

std::optional<ActivationGrid> quantized_activation_grid(const Tensor& t) {
  if (!t.defined() || t.dtype() != kUInt8) return std::nullopt;
  std::lock_guard<std::mutex> lock(g_mutex);
  auto it = g_grids.find(t.storage().get());
  if (it == g_grids.end()) return std::nullopt;
  // A freed storage's address can be reused: the entry counts only for the same storage.
  if (it->second.storage.lock() != t.storage()) return std::nullopt;
  return it->second.grid;
}

void check_not_quantized(const char* op, const Tensor& t) {
  std::optional<ActivationGrid> g = quantized_activation_grid(t);
  TB_CHECK(!g, "{}: the input {} is a quantized activation (uint8 levels on the grid scale {} "
           "zero point {}, made by an integer layer), not a float tensor: dequantize it first "
           "(tb::quant::dequantize, or a DeQuantStub before this op)", op, shape_str(t.shape()),
           g ? g->scale : 0.0f, g ? g->zero_point : 0);
}

} // namespace tb
