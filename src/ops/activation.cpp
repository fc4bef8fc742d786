// src/ops/activation.cpp — pointwise activations. Each is one unary kernel forward and its
// unary_backward kernel (dx = dy f'(x), from the saved input) in the backward; the formulas and
// their derivatives are written out in kernels/ref/elementwise.cpp. The output keeps the input's
// layout when it is dense, so channels-last activations stay channels-last.
#include <tb/ops.h>

#include "kernels/elementwise.h"

namespace tb {

namespace detail {
// Defined in src/ops/elementwise.cpp: checks a floating input, runs the unary kernel, records the
// autograd node whose backward runs the matching unary_backward kernel.
Tensor unary_op(const char* name, kernels::UnaryOp op, const Tensor& x, double p0, double p1);
} // namespace detail

using detail::unary_op;
using kernels::UnaryOp;

// relu(x) = max(x, 0); relu'(x) = [x > 0].
Tensor relu(const Tensor& x) { return unary_op("relu", UnaryOp::Relu, x, 0, 0); }

// relu6(x) = min(max(x, 0), 6); gradient 1 on the open interval (0, 6) (PyTorch's hardtanh).
Tensor relu6(const Tensor& x) { return unary_op("relu6", UnaryOp::Relu6, x, 0, 0); }

// leaky_relu(x) = x for x >= 0, slope x below; gradient slope for x <= 0.
Tensor leaky_relu(const Tensor& x, double negative_slope) {
  return unary_op("leaky_relu", UnaryOp::LeakyRelu, x, negative_slope, 0);
}

// sigmoid(x) = 1 / (1 + e^-x); sigmoid' = s (1 - s).
Tensor sigmoid(const Tensor& x) { return unary_op("sigmoid", UnaryOp::Sigmoid, x, 0, 0); }

// tanh' = 1 - tanh^2.
Tensor tanh(const Tensor& x) { return unary_op("tanh", UnaryOp::Tanh, x, 0, 0); }

// silu(x) = x sigmoid(x); silu' = s (1 + x (1 - s)).
Tensor silu(const Tensor& x) { return unary_op("silu", UnaryOp::Silu, x, 0, 0); }

// hardswish(x) = x relu6(x + 3) / 6; gradient 0 below -3, x/3 + 1/2 on [-3, 3], 1 above.
Tensor hardswish(const Tensor& x) { return unary_op("hardswish", UnaryOp::Hardswish, x, 0, 0); }

// hardsigmoid(x) = relu6(x + 3) / 6; gradient 1/6 on the open interval (-3, 3).
Tensor hardsigmoid(const Tensor& x) {
  return unary_op("hardsigmoid", UnaryOp::Hardsigmoid, x, 0, 0);
}

// gelu "none": x Phi(x) = x (1 + erf(x / sqrt 2)) / 2;  gelu' = Phi(x) + x phi(x).
// gelu "tanh": x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2, differentiated exactly.
Tensor gelu(const Tensor& x, const std::string& approximate) {
  TB_CHECK(approximate == "none" || approximate == "tanh",
           "gelu: approximate must be \"none\" or \"tanh\", got \"{}\"", approximate);
  return unary_op("gelu", approximate == "tanh" ? UnaryOp::GeluTanh : UnaryOp::Gelu, x, 0, 0);
}

} // namespace tb
