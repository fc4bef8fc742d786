// src/ops/dropout.cpp — inverted dropout, as torch.nn.functional.dropout.
//
// training: y = x * m / (1 - p), m_i ~ Bernoulli(1 - p) drawn from the generator (the default one
// unless given); dx = dy * m / (1 - p), which the composition x * mask records by itself.
// p = 0 or eval: y = x (the same tensor). p = 1: y = x * 0 (PyTorch multiplies by zero too, so
// inf/NaN inputs stay NaN).
#include <tb/ops.h>

namespace tb {

Tensor dropout(const Tensor& x, double p, bool training, Generator* g) {
  const char* op = "dropout";
  check_defined(op, x, "input");
  TB_CHECK(p >= 0.0 && p <= 1.0, "dropout: probability has to be between 0 and 1, got {}", p);
  if (!training || p == 0.0 || x.numel() == 0) return x;
  check_floating(op, x);
  if (p == 1.0) return mul(x, 0.0);
  // The uniform draws are made in x's dtype on x's device; keep where u < 1 - p.
  Tensor u = rand(x.shape(), TensorOptions(x.dtype(), x.device()), g);
  Tensor mask = mul(lt(u, 1.0 - p).to(x.dtype()), 1.0 / (1.0 - p));
  return mul(x, mask);
}

} // namespace tb
