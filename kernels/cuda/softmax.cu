// kernels/cuda/softmax.cu — softmax / log_softmax over the middle dim of [outer, dim, inner], and
// the cross-entropy / nll kernels on [n, c] rows, on the device. The specification is
// kernels/ref/softmax.cpp (formulas in kernels/softmax.h); we follow its precision: the max in T,
// the sums and exp/log of the shifted values in double.
//
// inner == 1 (softmax over the last dim, the common case): one block per row, three block-wide
// passes (max, sum, write). inner > 1: one thread per (o, i) column, looping over the dim.
#include "kernels/cuda/common.cuh"
#include "kernels/softmax.h"

namespace tb::kernels {
namespace {

// ---- softmax / log_softmax forward ---------------------------------------------------------------
//   softmax: y_j = exp(x_j - m) / s,  log_softmax: y_j = x_j - m - log s,  s = sum_k exp(x_k - m)

template <typename T>
__global__ void softmax_rows_kernel(bool log_out, const T* x, T* y, int64_t dim) {
  const T* xr = x + (int64_t)blockIdx.x * dim;
  T* yr = y + (int64_t)blockIdx.x * dim;
  T m = -INFINITY;
  for (int64_t j = threadIdx.x; j < dim; j += kBlock) m = MaxOp{}(m, xr[j]);
  m = block_reduce(m, MaxOp{});
  double s = 0;
  for (int64_t j = threadIdx.x; j < dim; j += kBlock) s += exp((double)(xr[j] - m));
  s = block_reduce(s, SumOp{});
  double log_s = log(s);
  for (int64_t j = threadIdx.x; j < dim; j += kBlock) {
    double v = (double)(xr[j] - m);
    yr[j] = log_out ? (T)(v - log_s) : (T)(exp(v) / s);
  }
}

template <typename T>
__global__ void softmax_cols_kernel(bool log_out, const T* x, T* y, int64_t outer, int64_t dim,
                                    int64_t inner) {
  TB_GRID_STRIDE_LOOP(k, outer * inner) {
    int64_t o = k / inner, i = k % inner;
    const T* xs = x + o * dim * inner + i;
    T* ys = y + o * dim * inner + i;
    T m = -INFINITY;
    for (int64_t j = 0; j < dim; j++) m = MaxOp{}(m, xs[j * inner]);
    double s = 0;
    for (int64_t j = 0; j < dim; j++) s += exp((double)(xs[j * inner] - m));
    double log_s = log(s);
    for (int64_t j = 0; j < dim; j++) {
      double v = (double)(xs[j * inner] - m);
      ys[j * inner] = log_out ? (T)(v - log_s) : (T)(exp(v) / s);
    }
  }
}

// ---- softmax / log_softmax backward --------------------------------------------------------------
//   softmax: dx_j = y_j (dy_j - sum_k dy_k y_k),  log_softmax: dx_j = dy_j - exp(y_j) sum_k dy_k

template <typename T>
__global__ void softmax_backward_rows_kernel(bool log_out, const T* y, const T* dy, T* dx,
                                             int64_t dim) {
  int64_t base = (int64_t)blockIdx.x * dim;
  double s = 0;
  for (int64_t j = threadIdx.x; j < dim; j += kBlock)
    s += log_out ? (double)dy[base + j] : (double)dy[base + j] * (double)y[base + j];
  s = block_reduce(s, SumOp{});
  for (int64_t j = threadIdx.x; j < dim; j += kBlock) {
    int64_t e = base + j;
    dx[e] = log_out ? (T)(dy[e] - exp((double)y[e]) * s) : (T)(y[e] * (dy[e] - s));
  }
}

template <typename T>
__global__ void softmax_backward_cols_kernel(bool log_out, const T* y, const T* dy, T* dx,
                                             int64_t outer, int64_t dim, int64_t inner) {
  TB_GRID_STRIDE_LOOP(k, outer * inner) {
    int64_t base = (k / inner) * dim * inner + k % inner;
    double s = 0;
    for (int64_t j = 0; j < dim; j++) {
      int64_t e = base + j * inner;
      s += log_out ? (double)dy[e] : (double)dy[e] * (double)y[e];
    }
    for (int64_t j = 0; j < dim; j++) {
      int64_t e = base + j * inner;
      dx[e] = log_out ? (T)(dy[e] - exp((double)y[e]) * s) : (T)(y[e] * (dy[e] - s));
    }
  }
}

template <typename T>
static void launch_softmax(bool log_out, const void* x, void* y, int64_t outer, int64_t dim,
                           int64_t inner) {
  if (inner == 1 && outer < (int64_t)1 << 31)
    softmax_rows_kernel<T><<<(unsigned)outer, kBlock, 0, cuda_stream()>>>(log_out, (const T*)x,
                                                                         (T*)y, dim);
  else
    softmax_cols_kernel<T><<<grid_for(outer * inner), kBlock, 0, cuda_stream()>>>(
        log_out, (const T*)x, (T*)y, outer, dim, inner);
  cuda_check_launch(log_out ? "log_softmax" : "softmax");
}

template <typename T>
static void launch_softmax_backward(bool log_out, const void* y, const void* dy, void* dx,
                                    int64_t outer, int64_t dim, int64_t inner) {
  if (inner == 1 && outer < (int64_t)1 << 31)
    softmax_backward_rows_kernel<T><<<(unsigned)outer, kBlock, 0, cuda_stream()>>>(
        log_out, (const T*)y, (const T*)dy, (T*)dx, dim);
  else
    softmax_backward_cols_kernel<T><<<grid_for(outer * inner), kBlock, 0, cuda_stream()>>>(
        log_out, (const T*)y, (const T*)dy, (T*)dx, outer, dim, inner);
  cuda_check_launch(log_out ? "log_softmax backward" : "softmax backward");
}

void cuda_softmax_forward(DType dtype, bool log, const void* x, void* y, int64_t outer,
                          int64_t dim, int64_t inner) {
  const char* name = log ? "log_softmax" : "softmax";
  if (dtype != kFloat32 && dtype != kFloat64) cuda_no_kernel(name, dtype);
  if (outer * dim * inner == 0) return;
  if (dtype == kFloat32) launch_softmax<float>(log, x, y, outer, dim, inner);
  else launch_softmax<double>(log, x, y, outer, dim, inner);
}

void cuda_softmax_backward(DType dtype, bool log, const void* y, const void* dy, void* dx,
                           int64_t outer, int64_t dim, int64_t inner) {
  const char* name = log ? "log_softmax backward" : "softmax backward";
  if (dtype != kFloat32 && dtype != kFloat64) cuda_no_kernel(name, dtype);
  if (outer * dim * inner == 0) return;
  if (dtype == kFloat32) launch_softmax_backward<float>(log, y, dy, dx, outer, dim, inner);
  else launch_softmax_backward<double>(log, y, dy, dx, outer, dim, inner);
}

// ---- cross-entropy from logits ---------------------------------------------------------------------
// One block per row r: lse_r = m + log sum_j exp(x_rj - m), mean_r = sum_j x_rj / c,
// loss_r = (1 - eps)(lse_r - x_{r,t}) + eps (lse_r - mean_r), or 0 when t == ignore_index.

template <typename T>
__global__ void ce_forward_kernel(const T* x, const int64_t* target, T* loss, T* lse, int64_t c,
                                  double eps, int64_t ignore_index) {
  int64_t r = blockIdx.x;
  const T* xr = x + r * c;
  double m = -INFINITY;
  for (int64_t j = threadIdx.x; j < c; j += kBlock) m = MaxOp{}(m, (double)xr[j]);
  m = block_reduce(m, MaxOp{});
  double s = 0, sx = 0;
  for (int64_t j = threadIdx.x; j < c; j += kBlock) {
    s += exp((double)xr[j] - m);
    sx += (double)xr[j];
  }
  s = block_reduce(s, SumOp{});
  sx = block_reduce(sx, SumOp{});
  if (threadIdx.x == 0) {
    double l = m + log(s), mean = sx / (double)c;
    lse[r] = (T)l;
    int64_t t = target[r];
    loss[r] = t == ignore_index ? T(0) : (T)((1 - eps) * (l - (double)xr[t]) + eps * (l - mean));
  }
}

// dx_rj = g_r (exp(x_rj - lse_r) - q_rj), q = (1 - eps) onehot(t_r) + eps / c, g_r = scale dloss;
// one thread per element.
template <typename T>
__global__ void ce_backward_kernel(const T* x, const int64_t* target, const T* lse, const T* dloss,
                                   int64_t dloss_step, double scale, T* dx, int64_t n, int64_t c,
                                   double eps, int64_t ignore_index) {
  TB_GRID_STRIDE_LOOP(e, n * c) {
    int64_t r = e / c, j = e % c, t = target[r];
    double g = t == ignore_index ? 0.0 : scale * (double)dloss[r * dloss_step];
    double p = exp((double)x[e] - (double)lse[r]);
    double q = (j == t ? 1 - eps : 0.0) + eps / (double)c;
    dx[e] = (T)(g * (p - q));
  }
}

void cuda_cross_entropy_forward(DType dtype, const void* x, const int64_t* target, void* loss,
                                void* lse, int64_t n, int64_t c, double label_smoothing,
                                int64_t ignore_index) {
  if (dtype != kFloat32 && dtype != kFloat64) cuda_no_kernel("cross_entropy", dtype);
  TB_CHECK(n < (int64_t)1 << 31, "cross_entropy: {} rows is too many for one CUDA launch", n);
  if (n == 0) return;
  if (dtype == kFloat32)
    ce_forward_kernel<float><<<(unsigned)n, kBlock, 0, cuda_stream()>>>(
        (const float*)x, target, (float*)loss, (float*)lse, c, label_smoothing, ignore_index);
  else
    ce_forward_kernel<double><<<(unsigned)n, kBlock, 0, cuda_stream()>>>(
        (const double*)x, target, (double*)loss, (double*)lse, c, label_smoothing, ignore_index);
  cuda_check_launch("cross_entropy");
}

void cuda_cross_entropy_backward(DType dtype, const void* x, const int64_t* target,
                                 const void* lse, const void* dloss, int64_t dloss_step,
                                 double scale, void* dx, int64_t n, int64_t c,
                                 double label_smoothing, int64_t ignore_index) {
  if (dtype != kFloat32 && dtype != kFloat64) cuda_no_kernel("cross_entropy backward", dtype);
  if (n * c == 0) return;
  if (dtype == kFloat32)
    ce_backward_kernel<float><<<grid_for(n * c), kBlock, 0, cuda_stream()>>>(
        (const float*)x, target, (const float*)lse, (const float*)dloss, dloss_step, scale,
        (float*)dx, n, c, label_smoothing, ignore_index);
  else
    ce_backward_kernel<double><<<grid_for(n * c), kBlock, 0, cuda_stream()>>>(
        (const double*)x, target, (const double*)lse, (const double*)dloss, dloss_step, scale,
        (double*)dx, n, c, label_smoothing, ignore_index);
  cuda_check_launch("cross_entropy backward");
}

// ---- nll on log-probabilities ----------------------------------------------------------------------
// loss_r = -logp[r, t_r] (0 when ignored); dlogp[r, j] = -scale dloss_r at j == t_r, else 0.

template <typename T>
__global__ void nll_forward_kernel(const T* logp, const int64_t* target, T* loss, int64_t n,
                                   int64_t c, int64_t ignore_index) {
  TB_GRID_STRIDE_LOOP(r, n) loss[r] = target[r] == ignore_index ? T(0) : -logp[r * c + target[r]];
}

template <typename T>
__global__ void nll_backward_kernel(const int64_t* target, const T* dloss, int64_t dloss_step,
                                    double scale, T* dlogp, int64_t n, int64_t c,
                                    int64_t ignore_index) {
  TB_GRID_STRIDE_LOOP(e, n * c) {
    int64_t r = e / c, j = e % c, t = target[r];
    dlogp[e] = (j == t && t != ignore_index) ? (T)(-scale * (double)dloss[r * dloss_step]) : T(0);
  }
}

void cuda_nll_forward(DType dtype, const void* logp, const int64_t* target, void* loss, int64_t n,
                      int64_t c, int64_t ignore_index) {
  if (dtype != kFloat32 && dtype != kFloat64) cuda_no_kernel("nll_loss", dtype);
  if (n == 0) return;
  if (dtype == kFloat32)
    nll_forward_kernel<float><<<grid_for(n), kBlock, 0, cuda_stream()>>>(
        (const float*)logp, target, (float*)loss, n, c, ignore_index);
  else
    nll_forward_kernel<double><<<grid_for(n), kBlock, 0, cuda_stream()>>>(
        (const double*)logp, target, (double*)loss, n, c, ignore_index);
  cuda_check_launch("nll_loss");
}

void cuda_nll_backward(DType dtype, const int64_t* target, const void* dloss, int64_t dloss_step,
                       double scale, void* dlogp, int64_t n, int64_t c, int64_t ignore_index) {
  if (dtype != kFloat32 && dtype != kFloat64) cuda_no_kernel("nll_loss backward", dtype);
  if (n * c == 0) return;
  if (dtype == kFloat32)
    nll_backward_kernel<float><<<grid_for(n * c), kBlock, 0, cuda_stream()>>>(
        target, (const float*)dloss, dloss_step, scale, (float*)dlogp, n, c, ignore_index);
  else
    nll_backward_kernel<double><<<grid_for(n * c), kBlock, 0, cuda_stream()>>>(
        target, (const double*)dloss, dloss_step, scale, (double*)dlogp, n, c, ignore_index);
  cuda_check_launch("nll_loss backward");
}

} // namespace

const SoftmaxKernels SoftmaxKernels::cuda = {
    .forward = cuda_softmax_forward,
    .backward = cuda_softmax_backward,
    .cross_entropy_forward = cuda_cross_entropy_forward,
    .cross_entropy_backward = cuda_cross_entropy_backward,
    .nll_forward = cuda_nll_forward,
    .nll_backward = cuda_nll_backward,
};

} // namespace tb::kernels
