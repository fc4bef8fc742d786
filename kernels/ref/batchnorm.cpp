// kernels/ref/batchnorm.cpp — batch normalisation as plain loops: the specification the OpenMP
// kernel is tested against. One channel at a time, accumulation in double.
//
// x seen as [N, C, S]; channel c holds M = N*S values. xhat = (x - mean_c) inv_std_c,
// y = w_c xhat + b_c. Backward through the batch statistics (training): with
//   mean = (1/M) sum x,  var = (1/M) sum (x - mean)^2,  inv_std = (var + eps)^(-1/2),
//   d xhat_i / d x_j = inv_std (delta_ij - 1/M - xhat_i xhat_j / M)
// so for g_i = dy_i w (the gradient reaching xhat):
//   dx_j = sum_i g_i d xhat_i / d x_j = w inv_std (dy_j - (1/M) sum dy - xhat_j (1/M) sum dy xhat)
// With fixed (running) statistics the normalisation is affine in x: dx = w inv_std dy.
// Always: dw = sum dy xhat, db = sum dy.
// float16/bfloat16 activations (x, y, dy, dx) come with float32 per-channel vectors (weight, bias,
// running and saved statistics, dw, db); their values are read exactly (kernels/ref/half.h), the
// same double loops run, and each y and dx is rounded once to the half type.
#include <cmath>

#include "kernels/batchnorm.h"
#include "kernels/ref/half.h"

namespace tb::kernels {
namespace {

using ref_half::load;
using ref_half::store;

// Calls f(offset) for every element of channel c.
template <typename F>
void for_each_in_channel(const BatchNormLayout& l, int64_t c, F f) {
  for (int64_t n = 0; n < l.N; n++)
    for (int64_t s = 0; s < l.S; s++) f(n * l.sn + c * l.sc + s * l.ss);
}

// X: the activations' storage type; P: the per-channel vectors' (float32 for half X).
template <typename X, typename P>
void forward(const BatchNormLayout& l, const X* x, const P* w, const P* b, bool use_batch_stats,
             double momentum, double eps, P* running_mean, P* running_var, X* y, P* save_mean,
             P* save_invstd) {
  double M = double(l.N * l.S);
  for (int64_t c = 0; c < l.C; c++) {
    double mean, var;
    if (use_batch_stats) {
      double sum = 0, sq = 0;
      for_each_in_channel(l, c, [&](int64_t i) { sum += load(x[i]); });
      mean = sum / M;
      for_each_in_channel(l, c, [&](int64_t i) { sq += (load(x[i]) - mean) * (load(x[i]) - mean); });
      var = sq / M;
      if (running_mean) {
        running_mean[c] = P((1 - momentum) * running_mean[c] + momentum * mean);
        running_var[c] = P((1 - momentum) * running_var[c] + momentum * var * M / (M - 1));
      }
    } else {
      mean = running_mean[c];
      var = running_var[c];
    }
    double inv_std = 1.0 / std::sqrt(var + eps);
    double wc = w ? double(w[c]) : 1.0, bc = b ? double(b[c]) : 0.0;
    for_each_in_channel(l, c, [&](int64_t i) { store(y[i], (load(x[i]) - mean) * inv_std * wc + bc); });
    save_mean[c] = P(mean);
    save_invstd[c] = P(inv_std);
  }
}

template <typename X, typename P>
void backward(const BatchNormLayout& l, const X* x, const X* dy, const P* w, const P* save_mean,
              const P* save_invstd, bool use_batch_stats, X* dx, P* dw, P* db) {
  double M = double(l.N * l.S);
  for (int64_t c = 0; c < l.C; c++) {
    double mean = save_mean[c], inv_std = save_invstd[c], wc = w ? double(w[c]) : 1.0;
    double sum_dy = 0, sum_dy_xhat = 0;
    for_each_in_channel(l, c, [&](int64_t i) {
      sum_dy += load(dy[i]);
      sum_dy_xhat += load(dy[i]) * (load(x[i]) - mean) * inv_std;
    });
    if (dw) dw[c] = P(sum_dy_xhat);
    if (db) db[c] = P(sum_dy);
    if (!dx) continue;
    for_each_in_channel(l, c, [&](int64_t i) {
      double xhat = (load(x[i]) - mean) * inv_std;
      double g = use_batch_stats ? load(dy[i]) - sum_dy / M - xhat * sum_dy_xhat / M : load(dy[i]);
      store(dx[i], wc * inv_std * g);
    });
  }
}

void ref_batch_norm_forward(DType dtype, const BatchNormLayout& l, const void* x, const void* w,
                            const void* b, bool use_batch_stats, double momentum, double eps,
                            void* running_mean, void* running_var, void* y, void* save_mean,
                            void* save_invstd) {
  switch (dtype) {
    case kFloat32:
      return forward(l, (const float*)x, (const float*)w, (const float*)b, use_batch_stats,
                     momentum, eps, (float*)running_mean, (float*)running_var, (float*)y,
                     (float*)save_mean, (float*)save_invstd);
    case kFloat64:
      return forward(l, (const double*)x, (const double*)w, (const double*)b, use_batch_stats,
                     momentum, eps, (double*)running_mean, (double*)running_var, (double*)y,
                     (double*)save_mean, (double*)save_invstd);
    case kBFloat16:
      return forward(l, (const ref_half::BF16*)x, (const float*)w, (const float*)b,
                     use_batch_stats, momentum, eps, (float*)running_mean, (float*)running_var,
                     (ref_half::BF16*)y, (float*)save_mean, (float*)save_invstd);
    case kFloat16:
      return forward(l, (const ref_half::F16*)x, (const float*)w, (const float*)b,
                     use_batch_stats, momentum, eps, (float*)running_mean, (float*)running_var,
                     (ref_half::F16*)y, (float*)save_mean, (float*)save_invstd);
    default: TB_CHECK(false, "ref_batch_norm_forward: no kernel for dtype {}", dtype);
  }
}

void ref_batch_norm_backward(DType dtype, const BatchNormLayout& l, const void* x, const void* dy,
                             const void* w, const void* save_mean, const void* save_invstd,
                             bool use_batch_stats, void* dx, void* dw, void* db) {
  switch (dtype) {
    case kFloat32:
      return backward(l, (const float*)x, (const float*)dy, (const float*)w,
                      (const float*)save_mean, (const float*)save_invstd, use_batch_stats,
                      (float*)dx, (float*)dw, (float*)db);
    case kFloat64:
      return backward(l, (const double*)x, (const double*)dy, (const double*)w,
                      (const double*)save_mean, (const double*)save_invstd, use_batch_stats,
                      (double*)dx, (double*)dw, (double*)db);
    case kBFloat16:
      return backward(l, (const ref_half::BF16*)x, (const ref_half::BF16*)dy, (const float*)w,
                      (const float*)save_mean, (const float*)save_invstd, use_batch_stats,
                      (ref_half::BF16*)dx, (float*)dw, (float*)db);
    case kFloat16:
      return backward(l, (const ref_half::F16*)x, (const ref_half::F16*)dy, (const float*)w,
                      (const float*)save_mean, (const float*)save_invstd, use_batch_stats,
                      (ref_half::F16*)dx, (float*)dw, (float*)db);
    default: TB_CHECK(false, "ref_batch_norm_backward: no kernel for dtype {}", dtype);
  }
}

} // namespace

const BatchNormKernels BatchNormKernels::ref = {
    .forward = ref_batch_norm_forward,
    .backward = ref_batch_norm_backward,
};

} // namespace tb::kernels
