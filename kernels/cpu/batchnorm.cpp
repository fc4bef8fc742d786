// kernels/cpu/batchnorm.cpp — batch normalisation with OpenMP; same math as
// kernels/ref/batchnorm.cpp (the specification, with the derivation), laid out for speed.
//
// Two layouts (the op layer passes one of them):
//   rows   (sc == 1, ss != 1: channels-last [N, H, W, C] or [N, C]): M = N*S rows of C
//          contiguous values. Threads split the rows; each keeps per-channel partial sums (double) and the partials
//          are added in thread order, so results do not depend on timing. Inner loops run over
//          C contiguous values and vectorise.
//   planes (ss == 1: NCHW): channel c is N planes of S contiguous values; threads split channels.
// Each pass is then one elementwise sweep: y = x scale_c + shift_c and
// dx = A_c dy + B_c x + K_c, with per-channel coefficients computed in double:
//   scale = w inv_std, shift = b - mean scale;  A = w inv_std;
//   batch stats: B = -A inv_std^2 sum(dy (x - mean)) / M, K = -B mean - A sum(dy) / M
//   fixed stats: B = K = 0
#include <omp.h>

#include <cmath>
#include <vector>

#include "kernels/batchnorm.h"

namespace tb::kernels {
namespace {

// Rows (channel stride 1) unless the spatial stride is 1: with C = 1 both hold, and planes of S
// values beat rows of one value.
bool rows_layout(const BatchNormLayout& l) { return l.ss != 1; }

// total[0..width) = sum over every row of what body(row_offset, acc) adds to acc.
template <typename Body>
void reduce_rows(const BatchNormLayout& l, int64_t width, double* total, Body body) {
  int64_t rows = l.N * l.S;
  int nt = omp_get_max_threads();
  std::vector<double> partial(nt * width, 0.0);
#pragma omp parallel num_threads(nt)
  {
    double* acc = partial.data() + omp_get_thread_num() * width;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; r++) body((r / l.S) * l.sn + (r % l.S) * l.ss, acc);
  }
  for (int64_t i = 0; i < width; i++) total[i] = 0;
  for (int t = 0; t < nt; t++)
    for (int64_t i = 0; i < width; i++) total[i] += partial[t * width + i];
}

// Calls body(offset, count) for the N contiguous runs of channel c (planes layout).
template <typename Body>
void for_each_plane(const BatchNormLayout& l, int64_t c, Body body) {
  for (int64_t n = 0; n < l.N; n++) body(n * l.sn + c * l.sc, l.S);
}

// out = x * a_c + y * b_c + k_c for every element (y may be nullptr: then b is unused).
template <typename T>
void affine_pass(const BatchNormLayout& l, const T* x, const T* a, const T* y, const T* b,
                 const T* k, T* out) {
  if (rows_layout(l)) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < l.N * l.S; r++) {
      int64_t off = (r / l.S) * l.sn + (r % l.S) * l.ss;
      const T* xr = x + off;
      T* o = out + off;
      if (y) {
        const T* yr = y + off;
        for (int64_t c = 0; c < l.C; c++) o[c] = xr[c] * a[c] + yr[c] * b[c] + k[c];
      } else {
        for (int64_t c = 0; c < l.C; c++) o[c] = xr[c] * a[c] + k[c];
      }
    }
    return;
  }
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t c = 0; c < l.C; c++)
    for (int64_t n = 0; n < l.N; n++) {
      int64_t off = n * l.sn + c * l.sc;
      const T *xp = x + off, *yp = y ? y + off : nullptr;
      T* o = out + off;
      T ac = a[c], bc = b ? b[c] : T(0), kc = k[c];
      if (yp)
        for (int64_t s = 0; s < l.S; s++) o[s] = xp[s] * ac + yp[s] * bc + kc;
      else
        for (int64_t s = 0; s < l.S; s++) o[s] = xp[s] * ac + kc;
    }
}

template <typename T>
void forward(const BatchNormLayout& l, const T* x, const T* w, const T* b, bool use_batch_stats,
             double momentum, double eps, T* running_mean, T* running_var, T* y, T* save_mean,
             T* save_invstd) {
  double M = double(l.N * l.S);
  std::vector<double> mean(l.C), var(l.C);
  if (use_batch_stats && rows_layout(l)) {
    reduce_rows(l, l.C, mean.data(), [&](int64_t off, double* acc) {
      for (int64_t c = 0; c < l.C; c++) acc[c] += x[off + c];
    });
    for (auto& m : mean) m /= M;
    const double* mu = mean.data();
    reduce_rows(l, l.C, var.data(), [&](int64_t off, double* acc) {
      for (int64_t c = 0; c < l.C; c++) {
        double d = x[off + c] - mu[c];
        acc[c] += d * d;
      }
    });
    for (auto& v : var) v /= M;
  } else if (use_batch_stats) {
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < l.C; c++) {
      double sum = 0, sq = 0;
      for_each_plane(l, c, [&](int64_t off, int64_t len) {
#pragma omp simd reduction(+ : sum)
        for (int64_t s = 0; s < len; s++) sum += x[off + s];
      });
      double mu = sum / M;
      for_each_plane(l, c, [&](int64_t off, int64_t len) {
#pragma omp simd reduction(+ : sq)
        for (int64_t s = 0; s < len; s++) sq += (x[off + s] - mu) * (x[off + s] - mu);
      });
      mean[c] = mu, var[c] = sq / M;
    }
  } else {
    for (int64_t c = 0; c < l.C; c++) mean[c] = running_mean[c], var[c] = running_var[c];
  }
  if (use_batch_stats && running_mean)
    for (int64_t c = 0; c < l.C; c++) {
      running_mean[c] = T((1 - momentum) * running_mean[c] + momentum * mean[c]);
      running_var[c] = T((1 - momentum) * running_var[c] + momentum * var[c] * M / (M - 1));
    }
  std::vector<T> scale(l.C), shift(l.C);
  for (int64_t c = 0; c < l.C; c++) {
    double inv_std = 1.0 / std::sqrt(var[c] + eps);
    double sc = (w ? double(w[c]) : 1.0) * inv_std;
    scale[c] = T(sc);
    shift[c] = T((b ? double(b[c]) : 0.0) - mean[c] * sc);
    save_mean[c] = T(mean[c]);
    save_invstd[c] = T(inv_std);
  }
  affine_pass<T>(l, x, scale.data(), nullptr, nullptr, shift.data(), y);
}

template <typename T>
void backward(const BatchNormLayout& l, const T* x, const T* dy, const T* w, const T* save_mean,
              const T* save_invstd, bool use_batch_stats, T* dx, T* dw, T* db) {
  double M = double(l.N * l.S);
  // sums[c] = sum dy, sums[C + c] = sum dy (x - mean)
  std::vector<double> sums(2 * l.C);
  std::vector<double> mean(save_mean, save_mean + l.C);
  if (rows_layout(l)) {
    const double* mu = mean.data();
    reduce_rows(l, 2 * l.C, sums.data(), [&](int64_t off, double* acc) {
      for (int64_t c = 0; c < l.C; c++) {
        double d = dy[off + c];
        acc[c] += d;
        acc[l.C + c] += d * (x[off + c] - mu[c]);
      }
    });
  } else {
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < l.C; c++) {
      double s_dy = 0, s_dyx = 0, mu = mean[c];
      for_each_plane(l, c, [&](int64_t off, int64_t len) {
#pragma omp simd reduction(+ : s_dy, s_dyx)
        for (int64_t s = 0; s < len; s++) {
          s_dy += dy[off + s];
          s_dyx += dy[off + s] * (x[off + s] - mu);
        }
      });
      sums[c] = s_dy, sums[l.C + c] = s_dyx;
    }
  }
  std::vector<T> A(l.C), B(l.C), K(l.C);
  for (int64_t c = 0; c < l.C; c++) {
    double inv_std = save_invstd[c], a = (w ? double(w[c]) : 1.0) * inv_std;
    double sum_dy = sums[c], sum_dy_xmu = sums[l.C + c];
    if (dw) dw[c] = T(sum_dy_xmu * inv_std);
    if (db) db[c] = T(sum_dy);
    double bcoef = use_batch_stats ? -a * inv_std * inv_std * sum_dy_xmu / M : 0.0;
    double k = use_batch_stats ? -bcoef * mean[c] - a * sum_dy / M : 0.0;
    A[c] = T(a), B[c] = T(bcoef), K[c] = T(k);
  }
  if (dx) affine_pass<T>(l, dy, A.data(), x, B.data(), K.data(), dx);
}

} // namespace

void cpu_batch_norm_forward(DType dtype, const BatchNormLayout& l, const void* x, const void* w,
                            const void* b, bool use_batch_stats, double momentum, double eps,
                            void* running_mean, void* running_var, void* y, void* save_mean,
                            void* save_invstd) {
  TB_CHECK(l.sc == 1 || l.ss == 1, "cpu_batch_norm_forward: expected channel stride 1 or "
           "spatial stride 1, got strides ({}, {}, {})", l.sn, l.sc, l.ss);
  switch (dtype) {
    case kFloat32:
      return forward(l, (const float*)x, (const float*)w, (const float*)b, use_batch_stats,
                     momentum, eps, (float*)running_mean, (float*)running_var, (float*)y,
                     (float*)save_mean, (float*)save_invstd);
    case kFloat64:
      return forward(l, (const double*)x, (const double*)w, (const double*)b, use_batch_stats,
                     momentum, eps, (double*)running_mean, (double*)running_var, (double*)y,
                     (double*)save_mean, (double*)save_invstd);
    default: TB_CHECK(false, "cpu_batch_norm_forward: no kernel for dtype {}", dtype);
  }
}

void cpu_batch_norm_backward(DType dtype, const BatchNormLayout& l, const void* x, const void* dy,
                             const void* w, const void* save_mean, const void* save_invstd,
                             bool use_batch_stats, void* dx, void* dw, void* db) {
  TB_CHECK(l.sc == 1 || l.ss == 1, "cpu_batch_norm_backward: expected channel stride 1 or "
           "spatial stride 1, got strides ({}, {}, {})", l.sn, l.sc, l.ss);
  switch (dtype) {
    case kFloat32:
      return backward(l, (const float*)x, (const float*)dy, (const float*)w,
                      (const float*)save_mean, (const float*)save_invstd, use_batch_stats,
                      (float*)dx, (float*)dw, (float*)db);
    case kFloat64:
      return backward(l, (const double*)x, (const double*)dy, (const double*)w,
                      (const double*)save_mean, (const double*)save_invstd, use_batch_stats,
                      (double*)dx, (double*)dw, (double*)db);
    default: TB_CHECK(false, "cpu_batch_norm_backward: no kernel for dtype {}", dtype);
  }
}

} // namespace tb::kernels
