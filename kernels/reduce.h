// kernels/reduce.h — reductions over the middle dim of a contiguous tensor viewed as
// [outer, reduce, inner]: element (o, r, i) lives at x[(o * reduce + r) * inner + i] and the result
// (o, i) at out[o * inner + i]. Raw pointers and sizes, never a Tensor.
//
// The op layer (src/ops/reduce.cpp) brings any reduction into this form: reduced dims that are
// adjacent in a contiguous tensor collapse into one `reduce` extent; otherwise it permutes the
// reduced dims to the end and makes the tensor contiguous (inner = 1). Three tables of the same
// kernels:
//   ReduceKernels::ref  — kernels/ref/reduce.cpp: plain loops, the specification;
//   ReduceKernels::cpu  — kernels/cpu/reduce.cpp: OpenMP over outer/inner blocks, deterministic
//                         partial sums;
//   ReduceKernels::cuda — kernels/cuda/reduce.cu.
// Floating sums accumulate in double. reduce may be 0 (sum of nothing is 0; max/min need reduce > 0,
// the op layer checks). All sizes >= 0.
#pragma once

#include <cstdint>

#include <tb/core.h>

namespace tb::kernels {

enum class ArgReduceOp { Max, Min };

struct ReduceKernels {
  // out[o, i] = scale * sum_r x[o, r, i]. dtype float32, float64 or int64 (int64: scale must be
  // 1). mean is sum with scale = 1 / reduce.
  void (*sum)(DType dtype, const void* x, void* out, int64_t outer, int64_t reduce, int64_t inner,
              double scale);

  // values[o, i] = max_r (or min_r) x[o, r, i] and indices[o, i] = the r where it is attained:
  // the FIRST such r on ties, as PyTorch's CPU max(dim)/argmax. NaN propagates: the first NaN
  // wins. `values` or `indices` may be null when not wanted. dtype float32, float64 or int64.
  // reduce > 0.
  void (*arg)(ArgReduceOp op, DType dtype, const void* x, void* values, int64_t* indices,
              int64_t outer, int64_t reduce, int64_t inner);

  // Backward of max/min over a dim: the gradient goes to the returned index, zero elsewhere.
  // dx[o, r, i] = (r == indices[o, i]) ? dy[o, i] : 0 — writes every element of dx.
  // dtype float32 or float64.
  void (*arg_backward)(DType dtype, const void* dy, const int64_t* indices, void* dx,
                       int64_t outer, int64_t reduce, int64_t inner);

  // Variance (two-pass, in double): mean[o, i] = sum_r x / reduce,
  // var[o, i] = sum_r (x - mean)^2 / max(0, reduce - correction) (a zero divisor gives inf/nan,
  // as PyTorch). `mean` may be null. dtype float32 or float64.
  void (*var)(DType dtype, const void* x, void* var, void* mean, int64_t outer, int64_t reduce,
              int64_t inner, int64_t correction);

  static const ReduceKernels ref, cpu, cuda;
};

} // namespace tb::kernels
