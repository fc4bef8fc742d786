// kernels/ref/softmax.cpp — reference softmax / log_softmax over [outer, dim, inner], and the
// cross-entropy / nll kernels on [n, c] rows: plain loops, the specification (kernels/softmax.h).
#include "kernels/softmax.h"

#include <cmath>

namespace tb::kernels {
namespace {

template <typename T>
void softmax_impl(bool log, const T* x, T* y, int64_t outer, int64_t dim, int64_t inner) {
  for (int64_t o = 0; o < outer; o++)
    for (int64_t i = 0; i < inner; i++) {
      const T* xs = x + o * dim * inner + i;
      T* ys = y + o * dim * inner + i;
      T m = -INFINITY;
      for (int64_t j = 0; j < dim; j++) m = std::max(m, xs[j * inner]);
      double s = 0;
      for (int64_t j = 0; j < dim; j++) s += std::exp((double)(xs[j * inner] - m));
      for (int64_t j = 0; j < dim; j++) {
        double v = (double)(xs[j * inner] - m);
        ys[j * inner] = log ? (T)(v - std::log(s)) : (T)(std::exp(v) / s);
      }
    }
}

template <typename T>
void softmax_backward_impl(bool log, const T* y, const T* dy, T* dx, int64_t outer, int64_t dim,
                           int64_t inner) {
  for (int64_t o = 0; o < outer; o++)
    for (int64_t i = 0; i < inner; i++) {
      int64_t base = o * dim * inner + i;
      double s = 0;  // softmax: sum dy*y; log_softmax: sum dy
      for (int64_t j = 0; j < dim; j++) {
        int64_t e = base + j * inner;
        s += log ? (double)dy[e] : (double)dy[e] * (double)y[e];
      }
      for (int64_t j = 0; j < dim; j++) {
        int64_t e = base + j * inner;
        dx[e] = log ? (T)(dy[e] - std::exp((double)y[e]) * s) : (T)(y[e] * (dy[e] - s));
      }
    }
}

template <typename T>
void ce_forward_impl(const T* x, const int64_t* target, T* loss, T* lse, int64_t n, int64_t c,
                     double eps, int64_t ignore_index) {
  for (int64_t r = 0; r < n; r++) {
    const T* xr = x + r * c;
    double m = -INFINITY, s = 0, mean = 0;
    for (int64_t j = 0; j < c; j++) m = std::max(m, (double)xr[j]);
    for (int64_t j = 0; j < c; j++) s += std::exp((double)xr[j] - m), mean += (double)xr[j];
    mean /= (double)c;
    double l = m + std::log(s);
    lse[r] = (T)l;
    int64_t t = target[r];
    loss[r] = t == ignore_index ? T(0) : (T)((1 - eps) * (l - (double)xr[t]) + eps * (l - mean));
  }
}

template <typename T>
void ce_backward_impl(const T* x, const int64_t* target, const T* lse, const T* dloss,
                      int64_t dloss_step, double scale, T* dx, int64_t n, int64_t c, double eps,
                      int64_t ignore_index) {
  for (int64_t r = 0; r < n; r++) {
    int64_t t = target[r];
    double g = t == ignore_index ? 0.0 : scale * (double)dloss[r * dloss_step];
    for (int64_t j = 0; j < c; j++) {
      double p = std::exp((double)x[r * c + j] - (double)lse[r]);
      double q = (j == t ? 1 - eps : 0.0) + eps / (double)c;  // the smoothed target
      dx[r * c + j] = (T)(g * (p - q));
    }
  }
}

template <typename T>
void nll_forward_impl(const T* logp, const int64_t* target, T* loss, int64_t n, int64_t c,
                      int64_t ignore_index) {
  for (int64_t r = 0; r < n; r++)
    loss[r] = target[r] == ignore_index ? T(0) : -logp[r * c + target[r]];
}

template <typename T>
void nll_backward_impl(const int64_t* target, const T* dloss, int64_t dloss_step, double scale,
                       T* dlogp, int64_t n, int64_t c, int64_t ignore_index) {
  for (int64_t r = 0; r < n; r++)
    for (int64_t j = 0; j < c; j++)
      dlogp[r * c + j] = (j == target[r] && target[r] != ignore_index)
                             ? (T)(-scale * (double)dloss[r * dloss_step])
                             : T(0);
}

void ref_softmax_forward(DType dtype, bool log, const void* x, void* y, int64_t outer,
                         int64_t dim, int64_t inner) {
  switch (dtype) {
    case kFloat32: return softmax_impl(log, (const float*)x, (float*)y, outer, dim, inner);
    case kFloat64: return softmax_impl(log, (const double*)x, (double*)y, outer, dim, inner);
    default: TB_CHECK(false, "ref_softmax_forward: no kernel for dtype {} on cpu", dtype);
  }
}

void ref_softmax_backward(DType dtype, bool log, const void* y, const void* dy, void* dx,
                          int64_t outer, int64_t dim, int64_t inner) {
  switch (dtype) {
    case kFloat32:
      return softmax_backward_impl(log, (const float*)y, (const float*)dy, (float*)dx, outer, dim,
                                   inner);
    case kFloat64:
      return softmax_backward_impl(log, (const double*)y, (const double*)dy, (double*)dx, outer,
                                   dim, inner);
    default: TB_CHECK(false, "ref_softmax_backward: no kernel for dtype {} on cpu", dtype);
  }
}

void ref_cross_entropy_forward(DType dtype, const void* x, const int64_t* target, void* loss,
                               void* lse, int64_t n, int64_t c, double label_smoothing,
                               int64_t ignore_index) {
  switch (dtype) {
    case kFloat32:
      return ce_forward_impl((const float*)x, target, (float*)loss, (float*)lse, n, c,
                             label_smoothing, ignore_index);
    case kFloat64:
      return ce_forward_impl((const double*)x, target, (double*)loss, (double*)lse, n, c,
                             label_smoothing, ignore_index);
    default: TB_CHECK(false, "ref_cross_entropy_forward: no kernel for dtype {} on cpu", dtype);
  }
}

void ref_cross_entropy_backward(DType dtype, const void* x, const int64_t* target,
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
    default: TB_CHECK(false, "ref_cross_entropy_backward: no kernel for dtype {} on cpu", dtype);
  }
}

void ref_nll_forward(DType dtype, const void* logp, const int64_t* target, void* loss, int64_t n,
                     int64_t c, int64_t ignore_index) {
  switch (dtype) {
    case kFloat32:
      return nll_forward_impl((const float*)logp, target, (float*)loss, n, c, ignore_index);
    case kFloat64:
      return nll_forward_impl((const double*)logp, target, (double*)loss, n, c, ignore_index);
    default: TB_CHECK(false, "ref_nll_forward: no kernel for dtype {} on cpu", dtype);
  }
}

void ref_nll_backward(DType dtype, const int64_t* target, const void* dloss, int64_t dloss_step,
                      double scale, void* dlogp, int64_t n, int64_t c, int64_t ignore_index) {
  switch (dtype) {
    case kFloat32:
      return nll_backward_impl(target, (const float*)dloss, dloss_step, scale, (float*)dlogp, n,
                               c, ignore_index);
    case kFloat64:
      return nll_backward_impl(target, (const double*)dloss, dloss_step, scale, (double*)dlogp, n,
                               c, ignore_index);
    default: TB_CHECK(false, "ref_nll_backward: no kernel for dtype {} on cpu", dtype);
  }
}

} // namespace

const SoftmaxKernels SoftmaxKernels::ref = {
    .forward = ref_softmax_forward,
    .backward = ref_softmax_backward,
    .cross_entropy_forward = ref_cross_entropy_forward,
    .cross_entropy_backward = ref_cross_entropy_backward,
    .nll_forward = ref_nll_forward,
    .nll_backward = ref_nll_backward,
};

} // namespace tb::kernels
