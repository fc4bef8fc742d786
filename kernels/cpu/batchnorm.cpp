// kernels/cpu/batchnorm.cpp — batch normalisation with OpenMP; same math as
// kernels/ref/batchnorm.cpp (the specification, with the derivation), laid out for speed.
//
// Two layouts (the op layer passes one of them):
//   rows   (sc == 1, ss != 1: channels-last [N, H, W, C] or [N, C]): M = N*S rows of C
//          contiguous values. Threads split the rows; each keeps per-channel partial sums
//          (double) and the partials are added in thread order, so results do not depend on
//          timing (channel_sums_rows). Inner loops run over contiguous channels and vectorise.
//   planes (ss == 1: NCHW): channel c is N planes of S contiguous values; threads split channels.
// Forward statistics take one sweep over x (sums of x - K and (x - K)^2, K a per-channel shift),
// the backward sums one sweep over x and dy. Each pass then ends with one elementwise sweep:
// y = x scale_c + shift_c and dx = A_c dy + B_c x + K_c, with per-channel coefficients in double:
//   scale = w inv_std, shift = b - mean scale;  A = w inv_std;
//   batch stats: B = -A inv_std^2 sum(dy (x - mean)) / M, K = -B mean - A sum(dy) / M
//   fixed stats: B = K = 0
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/batchnorm.h"

namespace tb::kernels {
namespace {

// Rows (channel stride 1) unless the spatial stride is 1: with C = 1 both hold, and planes of S
// values beat rows of one value.
bool rows_layout(const BatchNormLayout& l) { return l.ss != 1; }

// Rows layout, the two per-channel sums both passes need, in double:
//   out[c]     = sum over rows of (u - cu_c)
//   out[C + c] = sum over rows of (u - cu_c) (v - cv_c)
// (forward: u = v = x, cu = cv = a shift; backward: u = dy, cu = 0, v = x, cv = mean).
// Threads split the rows into chunks of kChunk rows; within a chunk the running sums of a vector's
// worth of channels stay in registers across the rows (summing straight into a C-long array would
// load and store it for every row of only C values). Chunks go to threads in a fixed order and
// the per-thread partials are added in thread order, so the result does not depend on timing.
template <typename T>
void channel_sums_rows(const BatchNormLayout& l, const T* u, const double* cu, const T* v,
                       const double* cv, double* out) {
  constexpr int64_t kChunk = 64, kLanes = 16;
  const int64_t C = l.C, rows = l.N * l.S, chunks = (rows + kChunk - 1) / kChunk;
  int nt = omp_get_max_threads();
  std::vector<double> partial(nt * 2 * C, 0.0);
#pragma omp parallel num_threads(nt)
  {
    double* acc = partial.data() + omp_get_thread_num() * 2 * C;
    int64_t offsets[kChunk];
#pragma omp for schedule(static)
    for (int64_t q = 0; q < chunks; q++) {
      int64_t r0 = q * kChunk, count = std::min(kChunk, rows - r0);
      for (int64_t i = 0, n = r0 / l.S, sp = r0 % l.S; i < count; i++) { // row r0 + i = (n, sp)
        offsets[i] = n * l.sn + sp * l.ss;
        if (++sp == l.S) sp = 0, n++;
      }
      // Channels kLanes at a time, their sums in fixed-size arrays (registers); then the last
      // C % kLanes channels one by one.
      int64_t c0 = 0;
      for (; c0 + kLanes <= C; c0 += kLanes) {
        double s1[kLanes] = {}, s2[kLanes] = {}, a[kLanes], b[kLanes];
        for (int64_t j = 0; j < kLanes; j++) a[j] = cu[c0 + j], b[j] = cv[c0 + j];
        for (int64_t i = 0; i < count; i++) {
          const T* ur = u + offsets[i] + c0;
          const T* vr = v + offsets[i] + c0;
#pragma omp simd
          for (int64_t j = 0; j < kLanes; j++) {
            double du = ur[j] - a[j];
            s1[j] += du;
            s2[j] += du * (vr[j] - b[j]);
          }
        }
        for (int64_t j = 0; j < kLanes; j++) acc[c0 + j] += s1[j], acc[C + c0 + j] += s2[j];
      }
      for (int64_t c = c0; c < C; c++)
        for (int64_t i = 0; i < count; i++) {
          double du = u[offsets[i] + c] - cu[c];
          acc[c] += du;
          acc[C + c] += du * (v[offsets[i] + c] - cv[c]);
        }
    }
  }
  for (int64_t i = 0; i < 2 * C; i++) out[i] = 0;
  for (int t = 0; t < nt; t++)
    for (int64_t i = 0; i < 2 * C; i++) out[i] += partial[t * 2 * C + i];
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
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t n = 0; n < l.N; n++)
      for (int64_t s = 0; s < l.S; s++) {
        int64_t off = n * l.sn + s * l.ss;
        const T* xr = x + off;
        T* o = out + off;
        if (y) {
          const T* yr = y + off;
#pragma omp simd
          for (int64_t c = 0; c < l.C; c++) o[c] = xr[c] * a[c] + yr[c] * b[c] + k[c];
        } else {
#pragma omp simd
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
    // One sweep over x: per-channel sums of d = x - K and d^2, with K = the first row's values
    // (a shift that keeps E[d^2] - E[d]^2 free of cancellation when |mean| >> std); then
    // mean = K + E[d], var = E[d^2] - E[d]^2.
    std::vector<double> shift(x, x + l.C), sums(2 * l.C);
    const double* K = shift.data();
    const int64_t C = l.C;
    channel_sums_rows(l, x, K, x, K, sums.data());
    for (int64_t c = 0; c < C; c++) {
      double ed = sums[c] / M;
      mean[c] = K[c] + ed;
      var[c] = std::max(0.0, sums[C + c] / M - ed * ed);
    }
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
    std::vector<double> zero(l.C, 0.0);
    channel_sums_rows(l, dy, zero.data(), x, mean.data(), sums.data());
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

} // namespace

const BatchNormKernels BatchNormKernels::cpu = {
    .forward = cpu_batch_norm_forward,
    .backward = cpu_batch_norm_backward,
};

} // namespace tb::kernels
