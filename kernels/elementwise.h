// kernels/elementwise.h — flat elementwise kernels: raw pointers and a length, never a Tensor.
//
// The op layer (src/ops/elementwise.cpp, activation.cpp) broadcasts and lays out the inputs; these
// kernels only walk n elements. An input "step" is 1 (one element per output) or 0 (one value for
// all outputs: a scalar broadcast). Three tables of the same kernels:
//   ElementwiseKernels::ref  — kernels/ref/elementwise.cpp: plain loops, the specification;
//   ElementwiseKernels::cpu  — kernels/cpu/elementwise.cpp: OpenMP + vectorisable loops;
//   ElementwiseKernels::cuda — kernels/cuda/elementwise.cu: one thread per element, on the
//                              device's stream.
// Supported dtypes: float32 and float64 for everything; int32/int64 for Add/Sub/Mul/Maximum/
// Minimum and comparisons; comparisons write bool. ref and cpu also take float16/bfloat16 for
// everything (each element computed in float32 and rounded once: the values of converting to
// float32, computing and converting back); cuda does not (the op layer converts for it).
#pragma once

#include <cstdint>

#include <tb/core.h>

namespace tb::kernels {

enum class BinaryOp { Add, Sub, Mul, Div, Pow, Maximum, Minimum, Eq, Ne, Lt, Le, Gt, Ge };

enum class UnaryOp {
  Neg, Exp, Log, Sqrt, Rsqrt, Abs, Sign, Square, Reciprocal, Round, Floor,
  Relu, Relu6, LeakyRelu, Sigmoid, Tanh, Silu, Hardswish, Hardsigmoid, Gelu, GeluTanh,
  Clamp,     // p0 = lo (or -inf), p1 = hi (or +inf)
  PowScalar, // p0 = exponent
};

struct ElementwiseKernels {
  // out = a (op) b; for Add/Sub the second operand is scaled: a + alpha*b.
  void (*binary)(BinaryOp op, DType dtype, const void* a, int64_t a_step, const void* b,
                 int64_t b_step, void* out, int64_t n, double alpha);

  // out = f(x; p0, p1) (p0: leaky slope, clamp lo, exponent; p1: clamp hi).
  void (*unary)(UnaryOp op, DType dtype, const void* x, void* out, int64_t n, double p0,
                double p1);

  // dx = dy * f'(x) for the unary ops above (x is the forward input; same parameters).
  void (*unary_backward)(UnaryOp op, DType dtype, const void* x, const void* dy, void* dx,
                         int64_t n, double p0, double p1);

  // out = cond ? a : b (cond bool; steps as above).
  void (*where)(DType dtype, const bool* cond, int64_t c_step, const void* a, int64_t a_step,
                const void* b, int64_t b_step, void* out, int64_t n);

  static const ElementwiseKernels ref, cpu, cuda;
};

} // namespace tb::kernels
