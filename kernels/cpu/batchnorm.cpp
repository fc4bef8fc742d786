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
// float16/bfloat16 activations (x, y, dy, dx; kernels/cpu/half.h) with float32 per-channel vectors:
// the same two sweeps and coefficients, on blocks widened to float32 in L1: the rows sums in
// float32 per chunk of rows, then double (channel_sums_rows_half), y and dx computed in float32
// and rounded once (affine_pass). The half tensors are read and written in their 2 bytes, so a
// pass moves half the bytes of float32's.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "kernels/batchnorm.h"
#include "kernels/cpu/half.h"

namespace tb::kernels {
namespace {

using cpu_half::BF16;
using cpu_half::compute_t;
using cpu_half::F16;
using cpu_half::load;
using cpu_half::narrow;
using cpu_half::store;
using cpu_half::widen;

template <typename T> constexpr bool is_half_v = std::is_same_v<T, BF16> || std::is_same_v<T, F16>;

// Half activations are processed in blocks of up to kBlock values widened into float32 buffers
// on the stack (L1), and results narrowed back from one (kernels/cpu/half.h).
constexpr int64_t kBlock = 256;

// Rows (channel stride 1) unless the spatial stride is 1: with C = 1 both hold, and planes of S
// values beat rows of one value.
bool rows_layout(const BatchNormLayout& l) { return l.ss != 1; }

// Dense rows: the [N S, C] values are one contiguous run (channels-last or [N, C] tensors).
bool dense_rows(const BatchNormLayout& l) { return l.ss == l.C && l.sn == l.S * l.C; }

// Rows layout, half X: the sums of channel_sums_rows (below). Values are widened to float32 a
// block at a time and summed in float32 over a chunk of rows (about 64 terms a sum, each of the
// size of a standard deviation: ~1e-6 relative, far below the data's own 2^-8 or 2^-11); each
// chunk's float32 sums then go into the double totals. The shifts must be float32 values (callers
// pass the first row and the saved float32 mean), so u - cu in float32 is the exact difference
// rounded once.
// Dense rows with C <= kBlock / 2 (MobileNetV2's big early layers have 16 to 96 channels) are
// taken as one flat run, rep = kBlock / C rows per block of L = rep C values: s1, s2 hold rep
// copies of the C channels' sums, folded when the chunk ends. Otherwise each row is widened a
// block of channels at a time (C >= 128 values per call).
template <typename X>
void channel_sums_rows_half(const BatchNormLayout& l, const X* u, const double* cu, const X* v,
                            const double* cv, double* out) {
  const int64_t C = l.C, rows = l.N * l.S;
  const bool flat = dense_rows(l) && C <= kBlock / 2;
  const int64_t rep = flat ? kBlock / C : 1, L = rep * C;
  const int64_t chunk_rows = 64 * rep, chunks = (rows + chunk_rows - 1) / chunk_rows;
  int nt = omp_get_max_threads();
  std::vector<double> partial(nt * 2 * C, 0.0);
#pragma omp parallel num_threads(nt)
  {
    double* acc = partial.data() + omp_get_thread_num() * 2 * C;
    float ub[kBlock], vb[kBlock], s1[kBlock], s2[kBlock], a[kBlock], b[kBlock];
    if (flat)
      for (int64_t j = 0; j < L; j++) a[j] = (float)cu[j % C], b[j] = (float)cv[j % C];
#pragma omp for schedule(static)
    for (int64_t q = 0; q < chunks; q++) {
      const int64_t r0 = q * chunk_rows, count = std::min(chunk_rows, rows - r0);
      if (flat) {
        for (int64_t j = 0; j < L; j++) s1[j] = 0, s2[j] = 0;
        const int64_t total = count * C;
        for (int64_t i = 0; i < total; i += L) {
          const int64_t len = std::min(L, total - i); // whole rows
          widen(u + r0 * C + i, ub, len);
          const float* vr = ub;
          if (v != u) {
            widen(v + r0 * C + i, vb, len);
            vr = vb;
          }
#pragma omp simd simdlen(16)
          for (int64_t j = 0; j < len; j++) {
            float du = ub[j] - a[j];
            s1[j] += du;
            s2[j] += du * (vr[j] - b[j]);
          }
        }
        for (int64_t j = 0; j < L; j++) acc[j % C] += s1[j], acc[C + j % C] += s2[j];
        continue;
      }
      for (int64_t c0 = 0; c0 < C; c0 += kBlock) {
        const int64_t len = std::min(kBlock, C - c0);
        for (int64_t j = 0; j < len; j++)
          a[j] = (float)cu[c0 + j], b[j] = (float)cv[c0 + j], s1[j] = 0, s2[j] = 0;
        for (int64_t r = r0; r < r0 + count; r++) {
          const int64_t off = (r / l.S) * l.sn + (r % l.S) * l.ss + c0;
          widen(u + off, ub, len);
          const float* vr = ub;
          if (v != u) {
            widen(v + off, vb, len);
            vr = vb;
          }
#pragma omp simd simdlen(16)
          for (int64_t j = 0; j < len; j++) {
            float du = ub[j] - a[j];
            s1[j] += du;
            s2[j] += du * (vr[j] - b[j]);
          }
        }
        for (int64_t j = 0; j < len; j++) acc[c0 + j] += s1[j], acc[C + c0 + j] += s2[j];
      }
    }
  }
  for (int64_t i = 0; i < 2 * C; i++) out[i] = 0;
  for (int t = 0; t < nt; t++)
    for (int64_t i = 0; i < 2 * C; i++) out[i] += partial[t * 2 * C + i];
}

// Rows layout, the two per-channel sums both passes need, in double:
//   out[c]     = sum over rows of (u - cu_c)
//   out[C + c] = sum over rows of (u - cu_c) (v - cv_c)
// (forward: u = v = x, cu = cv = a shift; backward: u = dy, cu = 0, v = x, cv = mean).
// Threads split the rows into chunks of kChunk rows; within a chunk the running sums of a vector's
// worth of channels stay in registers across the rows (summing straight into a C-long array would
// load and store it for every row of only C values). Chunks go to threads in a fixed order and
// the per-thread partials are added in thread order, so the result does not depend on timing.
template <typename X>
void channel_sums_rows(const BatchNormLayout& l, const X* u, const double* cu, const X* v,
                       const double* cv, double* out) {
  if constexpr (is_half_v<X>) return channel_sums_rows_half(l, u, cu, v, cv, out);
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
          const X* ur = u + offsets[i] + c0;
          const X* vr = v + offsets[i] + c0;
#pragma omp simd
          for (int64_t j = 0; j < kLanes; j++) {
            double du = load(ur[j]) - a[j];
            s1[j] += du;
            s2[j] += du * (load(vr[j]) - b[j]);
          }
        }
        for (int64_t j = 0; j < kLanes; j++) acc[c0 + j] += s1[j], acc[C + c0 + j] += s2[j];
      }
      for (int64_t c = c0; c < C; c++)
        for (int64_t i = 0; i < count; i++) {
          double du = load(u[offsets[i] + c]) - cu[c];
          acc[c] += du;
          acc[C + c] += du * (load(v[offsets[i] + c]) - cv[c]);
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

// out = x * a_c + y * b_c + k_c for every element (y may be nullptr: then b is unused); x, y, out
// of storage type X, the coefficients in its compute type T.
template <typename X, typename T = compute_t<X>>
void affine_pass(const BatchNormLayout& l, const X* x, const T* a, const X* y, const T* b,
                 const T* k, X* out) {
  if constexpr (is_half_v<X>) {
    // out[i] = x[i] a[i] + y[i] b[i] + k[i] over a run of len <= kBlock contiguous values, the
    // coefficients given per element (rows: a[c]) or as one value (step 0, planes: a_c).
    auto run = [](const X* xr, const X* yr, const T* ar, const T* br, const T* kr, int64_t step,
                  X* o, int64_t len) {
      float xb[kBlock], yb[kBlock], r[kBlock];
      widen(xr, xb, len);
      if (yr) {
        widen(yr, yb, len);
#pragma omp simd simdlen(16)
        for (int64_t j = 0; j < len; j++)
          r[j] = xb[j] * ar[j * step] + yb[j] * br[j * step] + kr[j * step];
      } else {
#pragma omp simd simdlen(16)
        for (int64_t j = 0; j < len; j++) r[j] = xb[j] * ar[j * step] + kr[j * step];
      }
      narrow(r, o, len);
    };
    if (rows_layout(l) && dense_rows(l) && l.C <= kBlock / 2) {
      // One flat run in blocks of whole rows, rep = kBlock / C of them, with the coefficients
      // repeated rep times (as in channel_sums_rows_half).
      const int64_t C = l.C, L = (kBlock / C) * C, total = l.N * l.S * C;
      T ar[kBlock], br[kBlock], kr[kBlock];
      for (int64_t j = 0; j < L; j++)
        ar[j] = a[j % C], br[j] = b ? b[j % C] : T(0), kr[j] = k[j % C];
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < total; i += L)
        run(x + i, y ? y + i : nullptr, ar, br, kr, 1, out + i, std::min(L, total - i));
    } else if (rows_layout(l)) {
#pragma omp parallel for collapse(2) schedule(static)
      for (int64_t n = 0; n < l.N; n++)
        for (int64_t s = 0; s < l.S; s++) {
          int64_t off = n * l.sn + s * l.ss;
          for (int64_t c0 = 0; c0 < l.C; c0 += kBlock)
            run(x + off + c0, y ? y + off + c0 : nullptr, a + c0, y ? b + c0 : nullptr, k + c0, 1,
                out + off + c0, std::min(kBlock, l.C - c0));
        }
    } else {
#pragma omp parallel for collapse(2) schedule(static)
      for (int64_t c = 0; c < l.C; c++)
        for (int64_t n = 0; n < l.N; n++) {
          int64_t off = n * l.sn + c * l.sc;
          for (int64_t s0 = 0; s0 < l.S; s0 += kBlock)
            run(x + off + s0, y ? y + off + s0 : nullptr, a + c, y ? b + c : nullptr, k + c, 0,
                out + off + s0, std::min(kBlock, l.S - s0));
        }
    }
    return;
  }
  if (rows_layout(l)) {
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t n = 0; n < l.N; n++)
      for (int64_t s = 0; s < l.S; s++) {
        int64_t off = n * l.sn + s * l.ss;
        const X* xr = x + off;
        X* o = out + off;
        if (y) {
          const X* yr = y + off;
#pragma omp simd
          for (int64_t c = 0; c < l.C; c++)
            store(o[c], load(xr[c]) * a[c] + load(yr[c]) * b[c] + k[c]);
        } else {
#pragma omp simd
          for (int64_t c = 0; c < l.C; c++) store(o[c], load(xr[c]) * a[c] + k[c]);
        }
      }
    return;
  }
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t c = 0; c < l.C; c++)
    for (int64_t n = 0; n < l.N; n++) {
      int64_t off = n * l.sn + c * l.sc;
      const X *xp = x + off, *yp = y ? y + off : nullptr;
      X* o = out + off;
      T ac = a[c], bc = b ? b[c] : T(0), kc = k[c];
      if (yp)
        for (int64_t s = 0; s < l.S; s++) store(o[s], load(xp[s]) * ac + load(yp[s]) * bc + kc);
      else
        for (int64_t s = 0; s < l.S; s++) store(o[s], load(xp[s]) * ac + kc);
    }
}

// X: the activations' storage type; P: the per-channel vectors' (float32 for half X).
template <typename X, typename P>
void forward(const BatchNormLayout& l, const X* x, const P* w, const P* b, bool use_batch_stats,
             double momentum, double eps, P* running_mean, P* running_var, X* y, P* save_mean,
             P* save_invstd) {
  using T = compute_t<X>;
  double M = double(l.N * l.S);
  std::vector<double> mean(l.C), var(l.C);
  if (use_batch_stats && rows_layout(l)) {
    // One sweep over x: per-channel sums of d = x - K and d^2, with K = the first row's values
    // (a shift that keeps E[d^2] - E[d]^2 free of cancellation when |mean| >> std); then
    // mean = K + E[d], var = E[d^2] - E[d]^2.
    std::vector<double> shift(l.C), sums(2 * l.C);
    for (int64_t c = 0; c < l.C; c++) shift[c] = load(x[c]);
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
        for (int64_t s = 0; s < len; s++) sum += load(x[off + s]);
      });
      double mu = sum / M;
      for_each_plane(l, c, [&](int64_t off, int64_t len) {
#pragma omp simd reduction(+ : sq)
        for (int64_t s = 0; s < len; s++) {
          double d = load(x[off + s]) - mu;
          sq += d * d;
        }
      });
      mean[c] = mu, var[c] = sq / M;
    }
  } else {
    for (int64_t c = 0; c < l.C; c++) mean[c] = running_mean[c], var[c] = running_var[c];
  }
  if (use_batch_stats && running_mean)
    for (int64_t c = 0; c < l.C; c++) {
      running_mean[c] = P((1 - momentum) * running_mean[c] + momentum * mean[c]);
      running_var[c] = P((1 - momentum) * running_var[c] + momentum * var[c] * M / (M - 1));
    }
  std::vector<T> scale(l.C), shift(l.C);
  for (int64_t c = 0; c < l.C; c++) {
    double inv_std = 1.0 / std::sqrt(var[c] + eps);
    double sc = (w ? double(w[c]) : 1.0) * inv_std;
    scale[c] = T(sc);
    shift[c] = T((b ? double(b[c]) : 0.0) - mean[c] * sc);
    save_mean[c] = P(mean[c]);
    save_invstd[c] = P(inv_std);
  }
  affine_pass<X>(l, x, scale.data(), (const X*)nullptr, (const T*)nullptr, shift.data(), y);
}

template <typename X, typename P>
void backward(const BatchNormLayout& l, const X* x, const X* dy, const P* w, const P* save_mean,
              const P* save_invstd, bool use_batch_stats, X* dx, P* dw, P* db) {
  using T = compute_t<X>;
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
          double g = load(dy[off + s]);
          s_dy += g;
          s_dyx += g * (load(x[off + s]) - mu);
        }
      });
      sums[c] = s_dy, sums[l.C + c] = s_dyx;
    }
  }
  std::vector<T> A(l.C), B(l.C), K(l.C);
  for (int64_t c = 0; c < l.C; c++) {
    double inv_std = save_invstd[c], a = (w ? double(w[c]) : 1.0) * inv_std;
    double sum_dy = sums[c], sum_dy_xmu = sums[l.C + c];
    if (dw) dw[c] = P(sum_dy_xmu * inv_std);
    if (db) db[c] = P(sum_dy);
    double bcoef = use_batch_stats ? -a * inv_std * inv_std * sum_dy_xmu / M : 0.0;
    double k = use_batch_stats ? -bcoef * mean[c] - a * sum_dy / M : 0.0;
    A[c] = T(a), B[c] = T(bcoef), K[c] = T(k);
  }
  if (dx) affine_pass<X>(l, dy, A.data(), x, B.data(), K.data(), dx);
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
    case kBFloat16:
      return forward(l, (const BF16*)x, (const float*)w, (const float*)b, use_batch_stats,
                     momentum, eps, (float*)running_mean, (float*)running_var, (BF16*)y,
                     (float*)save_mean, (float*)save_invstd);
    case kFloat16:
      return forward(l, (const F16*)x, (const float*)w, (const float*)b, use_batch_stats,
                     momentum, eps, (float*)running_mean, (float*)running_var, (F16*)y,
                     (float*)save_mean, (float*)save_invstd);
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
    case kBFloat16:
      return backward(l, (const BF16*)x, (const BF16*)dy, (const float*)w,
                      (const float*)save_mean, (const float*)save_invstd, use_batch_stats,
                      (BF16*)dx, (float*)dw, (float*)db);
    case kFloat16:
      return backward(l, (const F16*)x, (const F16*)dy, (const float*)w,
                      (const float*)save_mean, (const float*)save_invstd, use_batch_stats,
                      (F16*)dx, (float*)dw, (float*)db);
    default: TB_CHECK(false, "cpu_batch_norm_backward: no kernel for dtype {}", dtype);
  }
}

} // namespace

const BatchNormKernels BatchNormKernels::cpu = {
    .forward = cpu_batch_norm_forward,
    .backward = cpu_batch_norm_backward,
};

} // namespace tb::kernels
