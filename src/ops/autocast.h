// src/ops/autocast.h — the two casts autocast applies at an op's entry (PyTorch's cached_cast,
// without the cache: weights are cast on every call). The state is tb::autocast_state
// (tb/autograd.h), set by tb::amp::autocast. "Eligible" is PyTorch's rule: a floating tensor that
// is not float64 (float64 is never cast, so gradchecks are unaffected). The casts are
// differentiable (Tensor::to): the gradient flows back in the tensor's own dtype, so float32
// master weights receive float32 gradients.
#pragma once

#include <tb/autograd.h>

namespace tb {

inline bool autocast_eligible(const Tensor& t) {
  return t.defined() && is_floating(t.dtype()) && t.dtype() != kFloat64;
}

// The lower-precision policy (conv2d, linear, matmul): to the autocast dtype.
inline Tensor autocast_lower(const Tensor& t) {
  if (!autocast_eligible(t)) return t;
  AutocastState s = autocast_state(t.device().type);
  return s.enabled ? t.to(s.dtype) : t;
}

// The float32 policy (softmax, log_softmax, sum, losses): to float32.
inline Tensor autocast_fp32(const Tensor& t) {
  if (!autocast_eligible(t)) return t;
  return autocast_state(t.device().type).enabled ? t.to(kFloat32) : t;
}

} // namespace tb
