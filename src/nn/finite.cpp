// Non-finite gradient detection (include/tb/nn_checks.h).
//
// A float is NaN or ±Inf exactly when all its exponent bits are set, so the scan tests bit
// patterns: it is immune to -ffast-math, treats every float width alike, and the counting loop
// vectorises. The first bad index is searched only when the count is non-zero.
#include <tb/nn_checks.h>

#include <cmath>
#include <cstring>

namespace tb::nn {

namespace {

struct Scan {
  int64_t count = 0, first = -1;
  double value = 0;
};

// Counts elements whose exponent bits (mask) are all set; finds the first one.
template <class U>
void scan_bits(const U* p, int64_t n, U mask, Scan& s) {
  int64_t count = 0;
  for (int64_t i = 0; i < n; i++) count += (p[i] & mask) == mask;
  s.count = count;
  if (count)
    for (int64_t i = 0; i < n; i++)
      if ((p[i] & mask) == mask) {
        s.first = i;
        break;
      }
}

// Scans a CPU tensor of any dtype (integers and bool are always finite).
Scan scan_cpu(const Tensor& t_in) {
  Scan s;
  if (!is_floating(t_in.dtype())) return s;
  Tensor t = t_in.contiguous();
  const int64_t n = t.numel();
  switch (t.dtype()) {
    case kFloat32: {
      const auto* p = static_cast<const uint32_t*>(t.raw_data());
      scan_bits<uint32_t>(p, n, 0x7f800000u, s);
      if (s.count) {
        float f;
        std::memcpy(&f, p + s.first, 4);
        s.value = f;
      }
      break;
    }
    case kFloat64: {
      const auto* p = static_cast<const uint64_t*>(t.raw_data());
      scan_bits<uint64_t>(p, n, 0x7ff0000000000000ull, s);
      if (s.count) std::memcpy(&s.value, p + s.first, 8);
      break;
    }
    case kFloat16: {
      const auto* p = static_cast<const uint16_t*>(t.raw_data());
      scan_bits<uint16_t>(p, n, uint16_t(0x7c00), s);
      if (s.count) s.value = half_to_float(p[s.first]);
      break;
    }
    case kBFloat16: {
      const auto* p = static_cast<const uint16_t*>(t.raw_data());
      scan_bits<uint16_t>(p, n, uint16_t(0x7f80), s);
      if (s.count) s.value = bfloat16_to_float(p[s.first]);
      break;
    }
    default: break;
  }
  return s;
}

// "[0, 17]": the multi-index of a row-major flat index.
std::string index_str(const Shape& shape, int64_t flat) {
  Shape idx(shape.size());
  for (int64_t d = (int64_t)shape.size() - 1; d >= 0; d--) {
    idx[d] = shape[d] ? flat % shape[d] : 0;
    flat = shape[d] ? flat / shape[d] : 0;
  }
  return shape_str(idx);
}

} // namespace

std::string NonFiniteGrad::str() const {
  return fmt::format("the gradient of '{}' {} has {} NaN/Inf value{} (first: {} at {})", name,
                     shape_str(shape), count, count == 1 ? "" : "s", value, index_str(shape, first));
}

bool all_finite(const Tensor& t) {
  check_defined("all_finite", t, "input");
  if (!is_floating(t.dtype()) || t.numel() == 0) return true;
  if (t.device().is_cpu()) return scan_cpu(t.detach()).count == 0;
  // Other devices: x * 0 is 0 for finite x and NaN for NaN/Inf, so the sum is finite iff all are.
  return std::isfinite(sum(mul(t.detach(), 0.0)).item());
}

std::vector<NonFiniteGrad> nonfinite_grads(const Module& m) {
  std::vector<NonFiniteGrad> bad;
  for (auto& [name, p] : m.named_parameters()) {
    Tensor g = p.grad();
    if (!g.defined() || all_finite(g)) continue;
    Scan s = scan_cpu(g.detach().cpu());
    bad.push_back({name, g.shape(), s.count, s.first, s.value});
  }
  return bad;
}

void check_finite_grads(const Module& m, int64_t step) {
  std::vector<NonFiniteGrad> bad = nonfinite_grads(m);
  if (bad.empty()) return;
  std::string others;
  for (size_t i = 1; i < bad.size(); i++) others += fmt::format("{}'{}'", i > 1 ? ", " : "", bad[i].name);
  throw Error(fmt::format("check_finite_grads: {}{}{}", step >= 0 ? fmt::format("step {}: ", step) : "",
                          bad[0].str(),
                          bad.size() > 1 ? fmt::format("; {} more parameter{} with NaN/Inf gradients: {}",
                                                       bad.size() - 1, bad.size() > 2 ? "s" : "", others)
                                         : ""));
}

} // namespace tb::nn
