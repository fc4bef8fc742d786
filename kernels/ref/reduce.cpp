// kernels/ref/reduce.cpp — reference reductions over [outer, reduce, inner]: plain loops, the
// specification the fast twins are tested against (see kernels/reduce.h).
#include "kernels/reduce.h"

#include <algorithm>
#include <cmath>

namespace tb::kernels {
namespace {

template <typename T>
void sum_impl(const T* x, T* out, int64_t outer, int64_t reduce, int64_t inner, double scale) {
  for (int64_t o = 0; o < outer; o++)
    for (int64_t i = 0; i < inner; i++) {
      double acc = 0;
      for (int64_t r = 0; r < reduce; r++) acc += (double)x[(o * reduce + r) * inner + i];
      out[o * inner + i] = (T)(acc * scale);
    }
}

void sum_int64(const int64_t* x, int64_t* out, int64_t outer, int64_t reduce, int64_t inner) {
  for (int64_t o = 0; o < outer; o++)
    for (int64_t i = 0; i < inner; i++) {
      int64_t acc = 0;
      for (int64_t r = 0; r < reduce; r++) acc += x[(o * reduce + r) * inner + i];
      out[o * inner + i] = acc;
    }
}

// Is v a better max (or min) than the current best? NaN beats everything but an earlier NaN.
template <typename T> bool better(ArgReduceOp op, T v, T best) {
  if constexpr (std::is_floating_point_v<T>) {
    if (std::isnan(best)) return false;
    if (std::isnan(v)) return true;
  }
  return op == ArgReduceOp::Max ? v > best : v < best;
}

template <typename T>
void arg_impl(ArgReduceOp op, const T* x, T* values, int64_t* indices, int64_t outer,
              int64_t reduce, int64_t inner) {
  for (int64_t o = 0; o < outer; o++)
    for (int64_t i = 0; i < inner; i++) {
      const T* p = x + o * reduce * inner + i;
      T best = p[0];
      int64_t best_r = 0;
      for (int64_t r = 1; r < reduce; r++)
        if (better(op, p[r * inner], best)) best = p[r * inner], best_r = r;
      if (values) values[o * inner + i] = best;
      if (indices) indices[o * inner + i] = best_r;
    }
}

template <typename T>
void arg_backward_impl(const T* dy, const int64_t* indices, T* dx, int64_t outer, int64_t reduce,
                       int64_t inner) {
  for (int64_t o = 0; o < outer; o++)
    for (int64_t r = 0; r < reduce; r++)
      for (int64_t i = 0; i < inner; i++)
        dx[(o * reduce + r) * inner + i] = indices[o * inner + i] == r ? dy[o * inner + i] : T(0);
}

template <typename T>
void var_impl(const T* x, T* var, T* mean, int64_t outer, int64_t reduce, int64_t inner,
              int64_t correction) {
  for (int64_t o = 0; o < outer; o++)
    for (int64_t i = 0; i < inner; i++) {
      const T* p = x + o * reduce * inner + i;
      double s = 0;
      for (int64_t r = 0; r < reduce; r++) s += (double)p[r * inner];
      double m = s / (double)reduce;
      double ss = 0;
      for (int64_t r = 0; r < reduce; r++) {
        double d = (double)p[r * inner] - m;
        ss += d * d;
      }
      var[o * inner + i] = (T)(ss / (double)std::max<int64_t>(0, reduce - correction));
      if (mean) mean[o * inner + i] = (T)m;
    }
}

void ref_reduce_sum(DType dtype, const void* x, void* out, int64_t outer, int64_t reduce,
                    int64_t inner, double scale) {
  switch (dtype) {
    case kFloat32:
      return sum_impl((const float*)x, (float*)out, outer, reduce, inner, scale);
    case kFloat64:
      return sum_impl((const double*)x, (double*)out, outer, reduce, inner, scale);
    case kInt64:
      TB_CHECK(scale == 1.0, "ref_reduce_sum: int64 sums take scale 1, got {}", scale);
      return sum_int64((const int64_t*)x, (int64_t*)out, outer, reduce, inner);
    default:
      TB_CHECK(false, "ref_reduce_sum: no kernel for dtype {} on cpu", dtype);
  }
}

void ref_reduce_arg(ArgReduceOp op, DType dtype, const void* x, void* values, int64_t* indices,
                    int64_t outer, int64_t reduce, int64_t inner) {
  TB_CHECK(reduce > 0, "ref_reduce_arg: cannot reduce an empty dim");
  switch (dtype) {
    case kFloat32:
      return arg_impl(op, (const float*)x, (float*)values, indices, outer, reduce, inner);
    case kFloat64:
      return arg_impl(op, (const double*)x, (double*)values, indices, outer, reduce, inner);
    case kInt64:
      return arg_impl(op, (const int64_t*)x, (int64_t*)values, indices, outer, reduce, inner);
    default:
      TB_CHECK(false, "ref_reduce_arg: no kernel for dtype {} on cpu", dtype);
  }
}

void ref_reduce_arg_backward(DType dtype, const void* dy, const int64_t* indices, void* dx,
                             int64_t outer, int64_t reduce, int64_t inner) {
  switch (dtype) {
    case kFloat32:
      return arg_backward_impl((const float*)dy, indices, (float*)dx, outer, reduce, inner);
    case kFloat64:
      return arg_backward_impl((const double*)dy, indices, (double*)dx, outer, reduce, inner);
    default:
      TB_CHECK(false, "ref_reduce_arg_backward: no kernel for dtype {} on cpu", dtype);
  }
}

void ref_reduce_var(DType dtype, const void* x, void* var, void* mean, int64_t outer,
                    int64_t reduce, int64_t inner, int64_t correction) {
  switch (dtype) {
    case kFloat32:
      return var_impl((const float*)x, (float*)var, (float*)mean, outer, reduce, inner,
                      correction);
    case kFloat64:
      return var_impl((const double*)x, (double*)var, (double*)mean, outer, reduce, inner,
                      correction);
    default:
      TB_CHECK(false, "ref_reduce_var: no kernel for dtype {} on cpu", dtype);
  }
}

} // namespace

const ReduceKernels ReduceKernels::ref = {
    .sum = ref_reduce_sum,
    .arg = ref_reduce_arg,
    .arg_backward = ref_reduce_arg_backward,
    .var = ref_reduce_var,
};

} // namespace tb::kernels
