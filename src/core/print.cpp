// Printing, as PyTorch does: nested brackets, a common number format, "..." for large tensors
// (more than 1000 elements show the first and last 3 entries of every dim), then the metadata.
#include <tb/core.h>

#include <cmath>
#include <ostream>

namespace tb {

static void print_rec(std::string& out, const std::vector<double>& v, const Shape& s,
                      const Shape& st, size_t d, int64_t base, bool summarise, bool floating,
                      int indent) {
  if (s.empty()) { // a scalar
    out += floating ? fmt::format("{:.4f}", v[base]) : fmt::format("{}", (int64_t)v[base]);
    return;
  }
  out += "[";
  int64_t n = s[d];
  for (int64_t i = 0; i < n; i++) {
    if (summarise && n > 6 && i == 3) {
      out += d + 1 == s.size() ? "..., " : fmt::format("...,\n{:{}}", "", indent + 1);
      i = n - 3;
    }
    int64_t idx = base + i * st[d];
    if (d + 1 == s.size()) {
      out += floating ? fmt::format("{:.4f}", v[idx]) : fmt::format("{}", (int64_t)v[idx]);
    } else {
      print_rec(out, v, s, st, d + 1, idx, summarise, floating, indent + 1);
    }
    if (i + 1 < n) out += d + 1 == s.size() ? ", " : fmt::format(",\n{:{}}", "", indent + 1);
  }
  out += "]";
}

std::string Tensor::str() const {
  if (!defined()) return "tensor(undefined)";
  std::vector<double> v = to_vector();
  std::string out = "tensor(";
  if (dtype() == kBool) {
    for (auto& x : v) x = x != 0;
  }
  print_rec(out, v, shape(), contiguous_strides(shape()), 0, 0, numel() > 1000, is_floating(dtype()),
            7);
  out += fmt::format(", shape={}, dtype={}, device={}", shape_str(shape()), dtype_name(dtype()),
                     device().str());
  if (requires_grad()) out += grad_fn() ? fmt::format(", grad_fn={}", node_name(grad_fn().get()))
                                        : std::string(", requires_grad=True");
  return out + ")";
}

std::ostream& operator<<(std::ostream& os, const Tensor& t) { return os << t.str(); }

} // namespace tb
