// kernels/cpu/softmax.cpp — fast softmax / log_softmax and cross-entropy / nll (see
// kernels/softmax.h). OpenMP over rows (inner == 1) or over (outer, inner-block) tasks; exp is
// evaluated in the dtype, row sums accumulate in double.
#include "kernels/softmax.h"

#include <algorithm>
#include <cmath>

namespace tb::kernels {
namespace {

constexpr int64_t kIB = 64;             // inner elements per task when inner > 1
constexpr int64_t kParallelMin = 16384; // below this many elements, one thread

// One contiguous row of length dim (inner == 1): the common case (softmax over the last dim).
template <typename T> void softmax_row(bool log, const T* x, T* y, int64_t dim) {
  T m = -INFINITY;
  for (int64_t j = 0; j < dim; j++) m = std::max(m, x[j]);
  double s = 0;
  if (log) {
    for (int64_t j = 0; j < dim; j++) s += (double)std::exp(x[j] - m);
    T lse = (T)((double)m + std::log(s));
    for (int64_t j = 0; j < dim; j++) y[j] = x[j] - lse;
  } else {
    for (int64_t j = 0; j < dim; j++) {
      T e = std::exp(x[j] - m);
      y[j] = e;
      s += (double)e;
    }
    T inv = (T)(1.0 / s);
    for (int64_t j = 0; j < dim; j++) y[j] *= inv;
  }
}

// A block [i0, i1) of inner positions of one outer slice: the j loop walks rows of `inner`.
template <typename T>
void softmax_block(bool log, const T* x, T* y, int64_t dim, int64_t inner, int64_t i0,
                   int64_t i1) {
  T m[kIB];
  double s[kIB];
  int64_t w = i1 - i0;
  for (int64_t i = 0; i < w; i++) m[i] = -INFINITY, s[i] = 0;
  for (int64_t j = 0; j < dim; j++)
    for (int64_t i = 0; i < w; i++) m[i] = std::max(m[i], x[j * inner + i0 + i]);
  for (int64_t j = 0; j < dim; j++)
    for (int64_t i = 0; i < w; i++) s[i] += (double)std::exp(x[j * inner + i0 + i] - m[i]);
  for (int64_t i = 0; i < w; i++) s[i] = log ? std::log(s[i]) : 1.0 / s[i];
  for (int64_t j = 0; j < dim; j++)
    for (int64_t i = 0; i < w; i++) {
      T v = x[j * inner + i0 + i] - m[i];
      y[j * inner + i0 + i] = log ? (T)((double)v - s[i]) : (T)(std::exp(v) * s[i]);
    }
}

template <typename T>
void softmax_impl(bool log, const T* x, T* y, int64_t outer, int64_t dim, int64_t inner) {
  int64_t total = outer * dim * inner;
  if (inner == 1) {
#pragma omp parallel for schedule(static) if (total > kParallelMin)
    for (int64_t o = 0; o < outer; o++) softmax_row(log, x + o * dim, y + o * dim, dim);
    return;
  }
  int64_t nib = (inner + kIB - 1) / kIB;
#pragma omp parallel for schedule(static) if (total > kParallelMin)
  for (int64_t t = 0; t < outer * nib; t++) {
    int64_t o = t / nib, b = t % nib;
    softmax_block(log, x + o * dim * inner, y + o * dim * inner, dim, inner, b * kIB,
                  std::min(inner, (b + 1) * kIB));
  }
}

// dx_j = y_j (dy_j - sum dy y)  or, for log_softmax, dx_j = dy_j - exp(y_j) sum dy.
template <typename T>
void softmax_backward_impl(bool log, const T* y, const T* dy, T* dx, int64_t outer, int64_t dim,
                           int64_t inner) {
  int64_t total = outer * dim * inner;
  int64_t nib = inner == 1 ? 1 : (inner + kIB - 1) / kIB;
  int64_t ib = inner == 1 ? 1 : kIB;
#pragma omp parallel for schedule(static) if (total > kParallelMin)
  for (int64_t t = 0; t < outer * nib; t++) {
    int64_t o = t / nib, b = t % nib;
    int64_t i0 = b * ib, i1 = std::min(inner, i0 + ib), w = i1 - i0;
    const T* ys = y + o * dim * inner + i0;
    const T* gs = dy + o * dim * inner + i0;
    T* ds = dx + o * dim * inner + i0;
    double s[kIB] = {};
    for (int64_t j = 0; j < dim; j++)
      for (int64_t i = 0; i < w; i++)
        s[i] += log ? (double)gs[j * inner + i] : (double)gs[j * inner + i] * ys[j * inner + i];
    for (int64_t j = 0; j < dim; j++)
      for (int64_t i = 0; i < w; i++) {
        int64_t e = j * inner + i;
        ds[e] = log ? (T)(gs[e] - std::exp(ys[e]) * (T)s[i]) : (T)(ys[e] * (gs[e] - (T)s[i]));
      }
  }
}

template <typename T>
void ce_forward_impl(const T* x, const int64_t* target, T* loss, T* lse, int64_t n, int64_t c,
                     double eps, int64_t ignore_index) {
#pragma omp parallel for schedule(static) if (n * c > kParallelMin)
  for (int64_t r = 0; r < n; r++) {
    const T* xr = x + r * c;
    T m = -INFINITY;
    for (int64_t j = 0; j < c; j++) m = std::max(m, xr[j]);
    double s = 0, sum_x = 0;
    for (int64_t j = 0; j < c; j++) s += (double)std::exp(xr[j] - m), sum_x += (double)xr[j];
    double l = (double)m + std::log(s);
    lse[r] = (T)l;
    int64_t t = target[r];
    loss[r] = t == ignore_index
                  ? T(0)
                  : (T)((1 - eps) * (l - (double)xr[t]) + eps * (l - sum_x / (double)c));
  }
}

template <typename T>
void ce_backward_impl(const T* x, const int64_t* target, const T* lse, const T* dloss,
                      int64_t dloss_step, double scale, T* dx, int64_t n, int64_t c, double eps,
                      int64_t ignore_index) {
#pragma omp parallel for schedule(static) if (n * c > kParallelMin)
  for (int64_t r = 0; r < n; r++) {
    int64_t t = target[r];
    T* d = dx + r * c;
    if (t == ignore_index) {
      std::fill(d, d + c, T(0));
      continue;
    }
    T g = (T)(scale * (double)dloss[r * dloss_step]);
    T l = lse[r], off = (T)(eps / (double)c);
    const T* xr = x + r * c;
    for (int64_t j = 0; j < c; j++) d[j] = g * (std::exp(xr[j] - l) - off);
    d[t] -= g * (T)(1 - eps);
  }
}

template <typename T>
void nll_forward_impl(const T* logp, const int64_t* target, T* loss, int64_t n, int64_t c,
                      int64_t ignore_index) {
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (int64_t r = 0; r < n; r++)
    loss[r] = target[r] == ignore_index ? T(0) : -logp[r * c + target[r]];
}

template <typename T>
void nll_backward_impl(const int64_t* target, const T* dloss, int64_t dloss_step, double scale,
                       T* dlogp, int64_t n, int64_t c, int64_t ignore_index) {
#pragma omp parallel for schedule(static) if (n * c > kParallelMin)
  for (int64_t r = 0; r < n; r++) {
    T* d = dlogp + r * c;
    std::fill(d, d + c, T(0));
    if (target[r] != ignore_index) d[target[r]] = (T)(-scale * (double)dloss[r * dloss_step]);
  }
}

void cpu_softmax_forward(DType dtype, bool log, const void* x, void* y, int64_t outer,
                         int64_t dim, int64_t inner) {
  switch (dtype) {
    case kFloat32: return softmax_impl(log, (const float*)x, (float*)y, outer, dim, inner);
    case kFloat64: return softmax_impl(log, (const double*)x, (double*)y, outer, dim, inner);
    default: TB_CHECK(false, "cpu_softmax_forward: no kernel for dtype {} on cpu", dtype);
  }
}

void cpu_softmax_backward(DType dtype, bool log, const void* y, const void* dy, void* dx,
                          int64_t outer, int64_t dim, int64_t inner) {
  switch (dtype) {
    case kFloat32:
      return softmax_backward_impl(log, (const float*)y, (const float*)dy, (float*)dx, outer, dim,
                                   inner);
    case kFloat64:
      return softmax_backward_impl(log, (const double*)y, (const double*)dy, (double*)dx, outer,
                                   dim, inner);
    default: TB_CHECK(false, "cpu_softmax_backward: no kernel for dtype {} on cpu", dtype);
  }
}

void cpu_cross_entropy_forward(DType dtype, const void* x, const int64_t* target, void* loss,
                               void* lse, int64_t n, int64_t c, double label_smoothing,
                               int64_t ignore_index) {
  switch (dtype) {
    case kFloat32:
      return ce_forward_impl((const float*)x, target, (float*)loss, (float*)lse, n, c,
                             label_smoothing, ignore_index);
    case kFloat64:
      return ce_forward_impl((const double*)x, target, (double*)loss, (double*)lse, n, c,
                             label_smoothing, ignore_index);
    default: TB_CHECK(false, "cpu_cross_entropy_forward: no kernel for dtype {} on cpu", dtype);
  }
}

void cpu_cross_entropy_backward(DType dtype, const void* x, const int64_t* target,
                                const void* lse, const void* dloss, int64_t dloss_step,
                                double scale, void* dx, int64_t n, int64_t c,
                                double label_smoothing, int64_t ignore_index) {
  switch (dtype) {
    case kFloat32:
      return ce_backward_impl((const float*)x, target, (const float*)lse, (const float*)dloss,
                              dloss_step, scale, (float*)dx, n, c, label_smoothing, ignore_index);
    case kFloat64:
      return ce_backward_impl((const double*)x, target, (const double*)lse, (const double*)dloss,
                              dloss_step, scale, (double*)dx, n, c, label_smoothing,
                              ignore_index);
    default: TB_CHECK(false, "cpu_cross_entropy_backward: no kernel for dtype {} on cpu", dtype);
  }
}

void cpu_nll_forward(DType dtype, const void* logp, const int64_t* target, void* loss, int64_t n,
                     int64_t c, int64_t ignore_index) {
  switch (dtype) {
    case kFloat32:
      return nll_forward_impl((const float*)logp, target, (float*)loss, n, c, ignore_index);
    case kFloat64:
      return nll_forward_impl((const double*)logp, target, (double*)loss, n, c, ignore_index);
    default: TB_CHECK(false, "cpu_nll_forward: no kernel for dtype {} on cpu", dtype);
  }
}

void cpu_nll_backward(DType dtype, const int64_t* target, const void* dloss, int64_t dloss_step,
                      double scale, void* dlogp, int64_t n, int64_t c, int64_t ignore_index) {
  switch (dtype) {
    case kFloat32:
      return nll_backward_impl(target, (const float*)dloss, dloss_step, scale, (float*)dlogp, n,
                               c, ignore_index);
    case kFloat64:
      return nll_backward_impl(target, (const double*)dloss, dloss_step, scale, (double*)dlogp, n,
                               c, ignore_index);
    default: TB_CHECK(false, "cpu_nll_backward: no kernel for dtype {} on cpu", dtype);
  }
}

} // namespace

const SoftmaxKernels SoftmaxKernels::cpu = {
    .forward = cpu_softmax_forward,
    .backward = cpu_softmax_backward,
    .cross_entropy_forward = cpu_cross_entropy_forward,
    .cross_entropy_backward = cpu_cross_entropy_backward,
    .nll_forward = cpu_nll_forward,
    .nll_backward = cpu_nll_backward,
};

} // namespace tb::kernels
