// tb/nn_checks.h — numerical health checks for training loops: which parameter's gradient went
// NaN or Inf, by name, so a diverging run says where instead of silently training on garbage.
//
//   loss.backward();
//   tb::nn::check_finite_grads(*net, step);  // tb::Error: "check_finite_grads: step 12: the
//                                           //  gradient of 'fc.weight' [10, 784] has 3 NaN/Inf
//                                           //  values (first: nan at [0, 17]) ..."
//   // or, to skip the step instead of stopping:
//   if (!tb::nn::nonfinite_grads(*net).empty()) { net->zero_grad(); continue; }
#pragma once

#include <tb/nn.h>

#include <string>
#include <vector>

namespace tb::nn {

// A parameter whose gradient holds NaN or ±Inf.
struct NonFiniteGrad {
  std::string name;  // dotted name, as named_parameters(): "features.0.weight"
  Shape shape;       // the gradient's shape
  int64_t count = 0; // how many of its elements are NaN or ±Inf
  int64_t first = 0; // row-major flat index of the first one
  double value = 0;  // that element (nan, inf or -inf)
  // "the gradient of 'fc.weight' [10, 784] has 3 NaN/Inf values (first: nan at [0, 17])"
  std::string str() const;
};

// The parameters of m (named_parameters() order, recursive) whose gradient is not finite;
// empty when all are. Parameters without a gradient are skipped. Any device and float dtype.
std::vector<NonFiniteGrad> nonfinite_grads(const Module& m);

// Raises tb::Error naming the step (when step >= 0), the first bad parameter with its values, and
// the names of the others, if any gradient of m holds NaN or Inf.
void check_finite_grads(const Module& m, int64_t step = -1);

// True when every element of t is finite (always for integer and bool tensors); any device.
bool all_finite(const Tensor& t);

} // namespace tb::nn
