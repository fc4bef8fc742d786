// kernels/cuda/batchnorm.cu — batch normalisation on the device (the contract is
// kernels/batchnorm.h; the specification kernels/ref/batchnorm.cpp, whose formulas and precision
// we follow: every sum in double, the statistics and the normalisation in double, each y and dx
// rounded once to the activation type).
//
// dtypes: float32 and float64 throughout; float16/bfloat16 activations (x, y, dy, dx) with float32
// per-channel vectors, read exactly and rounded once through float as kernels/ref/half.h does.
// x is [N, C, S] with element strides (sn, sc, ss); any strides work, and the two dense layouts the
// op passes (ss = 1: NCHW and [N, C, L]; sc = 1: channels-last and [N, C]) get coalesced access.
//
// Per-channel sums, two passes (deterministic: fixed pieces, fixed order):
//   1. channel_sums_*: the M = N*S values of each channel are cut into `pieces` runs of rows
//      m = n*S + s; a block sums one run of one channel (ss = 1 layouts: 256 threads along m,
//      then a block-wide tree) or of 32 neighbouring channels (sc = 1 layouts: a 32×8 block, the
//      32 threads of a warp on 32 consecutive channels, 8 rows at a time, then the 8 partial rows
//      added in order), writing partial[piece][c] (two sums per channel).
//   2. a finish kernel, one thread per channel, adds the pieces in order and applies the formulas.
// Forward with batch statistics: sums of x -> mean; sums of (x - mean)^2 -> var (two passes over x,
// as the reference: no cancellation); running stats, save_mean / save_invstd; then y, one thread
// per element. Eval: the statistics come from the running stats, one thread per channel.
// Backward: sums of dy and dy xhat -> dw, db; then dx, one thread per element.
// All launches go on the device's stream (common.cuh).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/access.cuh" // ld, st
#include "kernels/batchnorm.h"

#include <algorithm>

namespace tb::kernels {
namespace {

__device__ inline int64_t at(const BatchNormLayout& l, int64_t n, int64_t c, int64_t s) {
  return n * l.sn + c * l.sc + s * l.ss;
}

// Which partial-sum kernel suits the layout: channels next to each other in memory (sc = 1,
// channels-last and [N, C]) or rows of one channel next to each other (ss = 1).
bool channels_adjacent(const BatchNormLayout& l) { return l.C > 1 && l.sc == 1; }

// ---- pass 1: partial sums per (piece, channel) ------------------------------------------------------
// F: f(offset, c, a, b) adds one element's terms to the two sums a and b.

constexpr int kTileC = 32, kTileRows = 8; // channels_adjacent: a 32×8 block

template <typename F>
__global__ void channel_sums_rows(BatchNormLayout l, int64_t rows_per_piece, F f,
                                  double* partial) {
  int64_t c = blockIdx.x, piece = blockIdx.y, M = l.N * l.S;
  int64_t m0 = piece * rows_per_piece, m1 = min(m0 + rows_per_piece, M);
  double a = 0, b = 0;
  for (int64_t m = m0 + threadIdx.x; m < m1; m += kBlock) f(at(l, m / l.S, c, m % l.S), c, a, b);
  a = block_reduce(a, SumOp{});
  b = block_reduce(b, SumOp{});
  if (threadIdx.x == 0) {
    partial[(piece * l.C + c) * 2] = a;
    partial[(piece * l.C + c) * 2 + 1] = b;
  }
}

template <typename F>
__global__ void channel_sums_tiles(BatchNormLayout l, int64_t rows_per_piece, F f,
                                   double* partial) {
  __shared__ double sa[kTileRows][kTileC], sb[kTileRows][kTileC];
  int64_t c = (int64_t)blockIdx.x * kTileC + threadIdx.x, piece = blockIdx.y, M = l.N * l.S;
  int64_t m0 = piece * rows_per_piece, m1 = min(m0 + rows_per_piece, M);
  double a = 0, b = 0;
  if (c < l.C)
    for (int64_t m = m0 + threadIdx.y; m < m1; m += kTileRows)
      f(at(l, m / l.S, c, m % l.S), c, a, b);
  sa[threadIdx.y][threadIdx.x] = a;
  sb[threadIdx.y][threadIdx.x] = b;
  __syncthreads();
  if (threadIdx.y == 0 && c < l.C) {
    for (int r = 1; r < kTileRows; r++) a += sa[r][threadIdx.x], b += sb[r][threadIdx.x];
    partial[(piece * l.C + c) * 2] = a;
    partial[(piece * l.C + c) * 2 + 1] = b;
  }
}

// The pieces: enough blocks to fill the GPU on few channels, each thread with a few dozen values.
struct Pieces {
  int64_t count, rows;
};
Pieces pieces_for(const BatchNormLayout& l) {
  int64_t M = l.N * l.S;
  int64_t rows = channels_adjacent(l) ? kTileRows * 64 : (int64_t)kBlock * 16;
  int64_t count = std::min<int64_t>((M + rows - 1) / rows, 1024);
  count = std::max<int64_t>(count, 1);
  rows = (M + count - 1) / count;
  return {count, rows};
}

// Runs pass 1 with f into partial[pieces.count][C][2].
template <typename F>
void channel_sums(const BatchNormLayout& l, Pieces pc, F f, double* partial, const char* op) {
  cudaStream_t s = cuda_stream();
  if (channels_adjacent(l)) {
    dim3 grid((unsigned)((l.C + kTileC - 1) / kTileC), (unsigned)pc.count);
    channel_sums_tiles<<<grid, dim3(kTileC, kTileRows), 0, s>>>(l, pc.rows, f, partial);
  } else {
    dim3 grid((unsigned)l.C, (unsigned)pc.count);
    channel_sums_rows<<<grid, kBlock, 0, s>>>(l, pc.rows, f, partial);
  }
  cuda_check_launch(op);
}

// Adds the pieces of channel c in order: sums (a, b).
__device__ inline void total_of(const double* partial, int64_t pieces, int64_t C, int64_t c,
                                double& a, double& b) {
  a = 0, b = 0;
  for (int64_t p = 0; p < pieces; p++) {
    a += partial[(p * C + c) * 2];
    b += partial[(p * C + c) * 2 + 1];
  }
}

// ---- the element functors --------------------------------------------------------------------------

template <typename X> struct SumX { // a += x
  const X* x;
  __device__ void operator()(int64_t i, int64_t, double& a, double&) const { a += ld(x[i]); }
};

template <typename X> struct SumSqDev { // a += (x - mean_c)^2
  const X* x;
  const double* stats; // (mean, inv_std) per channel; only the mean is set yet
  __device__ void operator()(int64_t i, int64_t c, double& a, double&) const {
    double d = ld(x[i]) - stats[c * 2];
    a += d * d;
  }
};

template <typename X, typename P> struct SumDyXhat { // a += dy, b += dy (x - mean) inv_std
  const X* x;
  const X* dy;
  const P* mean;
  const P* invstd;
  __device__ void operator()(int64_t i, int64_t c, double& a, double& b) const {
    double g = ld(dy[i]);
    a += g;
    b += g * (ld(x[i]) - (double)mean[c]) * (double)invstd[c];
  }
};

// ---- pass 2 and the elementwise kernels ---------------------------------------------------------------

// stats[c] = (mean, unused) from the sums of x.
__global__ void finish_mean(const double* partial, int64_t pieces, int64_t C, double M,
                            double* stats) {
  TB_GRID_STRIDE_LOOP(c, C) {
    double a, b;
    total_of(partial, pieces, C, c, a, b);
    stats[c * 2] = a / M;
  }
}

// From the sums of (x - mean)^2: var, the running-stat update, save_mean / save_invstd, and
// stats[c] = (mean, inv_std) for the normalisation.
template <typename P>
__global__ void finish_var(const double* partial, int64_t pieces, int64_t C, double M,
                           double momentum, double eps, P* running_mean, P* running_var,
                           P* save_mean, P* save_invstd, double* stats) {
  TB_GRID_STRIDE_LOOP(c, C) {
    double sq, unused;
    total_of(partial, pieces, C, c, sq, unused);
    double mean = stats[c * 2], var = sq / M;
    if (running_mean) {
      running_mean[c] = P((1 - momentum) * (double)running_mean[c] + momentum * mean);
      running_var[c] = P((1 - momentum) * (double)running_var[c] + momentum * var * M / (M - 1));
    }
    double inv_std = 1.0 / sqrt(var + eps);
    save_mean[c] = P(mean);
    save_invstd[c] = P(inv_std);
    stats[c * 2 + 1] = inv_std;
  }
}

// Eval: the running statistics are the statistics.
template <typename P>
__global__ void eval_stats(int64_t C, double eps, const P* running_mean, const P* running_var,
                           P* save_mean, P* save_invstd, double* stats) {
  TB_GRID_STRIDE_LOOP(c, C) {
    double mean = running_mean[c], var = running_var[c];
    double inv_std = 1.0 / sqrt(var + eps);
    save_mean[c] = P(mean);
    save_invstd[c] = P(inv_std);
    stats[c * 2] = mean;
    stats[c * 2 + 1] = inv_std;
  }
}

// The (n, c, s) of flat index e, visiting memory in order (c fastest when channels are adjacent).
__device__ inline void ncs_of(const BatchNormLayout& l, bool c_inner, int64_t e, int64_t& n,
                              int64_t& c, int64_t& s) {
  if (c_inner) {
    c = e % l.C;
    int64_t m = e / l.C;
    n = m / l.S, s = m % l.S;
  } else {
    s = e % l.S;
    c = (e / l.S) % l.C;
    n = e / (l.S * l.C);
  }
}

// y = (x - mean_c) inv_std_c w_c + b_c
template <typename X, typename P>
__global__ void normalize_kernel(BatchNormLayout l, bool c_inner, const X* x, const P* w,
                                 const P* b, const double* stats, X* y) {
  TB_GRID_STRIDE_LOOP(e, l.N * l.C * l.S) {
    int64_t n, c, s;
    ncs_of(l, c_inner, e, n, c, s);
    int64_t i = at(l, n, c, s);
    double wc = w ? (double)w[c] : 1.0, bc = b ? (double)b[c] : 0.0;
    st(y[i], (ld(x[i]) - stats[c * 2]) * stats[c * 2 + 1] * wc + bc);
  }
}

// sums[c] = (sum dy, sum dy xhat) -> db, dw.
template <typename P>
__global__ void finish_backward(const double* partial, int64_t pieces, int64_t C, double* sums,
                                P* dw, P* db) {
  TB_GRID_STRIDE_LOOP(c, C) {
    double a, b;
    total_of(partial, pieces, C, c, a, b);
    sums[c * 2] = a;
    sums[c * 2 + 1] = b;
    if (dw) dw[c] = P(b);
    if (db) db[c] = P(a);
  }
}

//   batch statistics: dx = w inv_std (dy - sum dy / M - xhat sum dy xhat / M)
//   fixed statistics: dx = w inv_std dy   (sums unused, may be nullptr)
template <typename X, typename P>
__global__ void dx_kernel(BatchNormLayout l, bool c_inner, const X* x, const X* dy, const P* w,
                          const P* mean, const P* invstd, const double* sums, bool use_batch_stats,
                          X* dx) {
  double M = double(l.N * l.S);
  TB_GRID_STRIDE_LOOP(e, l.N * l.C * l.S) {
    int64_t n, c, s;
    ncs_of(l, c_inner, e, n, c, s);
    int64_t i = at(l, n, c, s);
    double inv_std = invstd[c], wc = w ? (double)w[c] : 1.0;
    double g = ld(dy[i]);
    if (use_batch_stats) {
      double xhat = (ld(x[i]) - (double)mean[c]) * inv_std;
      g = g - sums[c * 2] / M - xhat * sums[c * 2 + 1] / M;
    }
    st(dx[i], wc * inv_std * g);
  }
}

// ---- drivers ------------------------------------------------------------------------------------------

template <typename X, typename P>
void forward(const BatchNormLayout& l, const X* x, const P* w, const P* b, bool use_batch_stats,
             double momentum, double eps, P* running_mean, P* running_var, X* y, P* save_mean,
             P* save_invstd) {
  const char* op = "batch_norm";
  if (l.C == 0) return;
  cudaStream_t s = cuda_stream();
  int64_t M = l.N * l.S;
  DeviceScratch stats(l.C * 2 * sizeof(double)); // (mean, inv_std) per channel
  if (use_batch_stats) {
    TB_CHECK(M > 0, "batch_norm: no values to take batch statistics of (N = {}, S = {})", l.N,
             l.S);
    Pieces pc = pieces_for(l);
    DeviceScratch partial(pc.count * l.C * 2 * sizeof(double));
    channel_sums(l, pc, SumX<X>{x}, partial.as<double>(), op);
    finish_mean<<<grid_for(l.C), kBlock, 0, s>>>(partial.as<double>(), pc.count, l.C, double(M),
                                                 stats.as<double>());
    cuda_check_launch(op);
    channel_sums(l, pc, SumSqDev<X>{x, stats.as<double>()}, partial.as<double>(), op);
    finish_var<P><<<grid_for(l.C), kBlock, 0, s>>>(partial.as<double>(), pc.count, l.C, double(M),
                                                   momentum, eps, running_mean, running_var,
                                                   save_mean, save_invstd, stats.as<double>());
    cuda_check_launch(op);
  } else {
    TB_CHECK(running_mean && running_var,
             "batch_norm: evaluation with running statistics needs running_mean and running_var");
    eval_stats<P><<<grid_for(l.C), kBlock, 0, s>>>(l.C, eps, running_mean, running_var, save_mean,
                                                   save_invstd, stats.as<double>());
    cuda_check_launch(op);
  }
  int64_t n = l.N * l.C * l.S;
  if (n == 0) return;
  normalize_kernel<X, P><<<grid_for(n), kBlock, 0, s>>>(l, channels_adjacent(l), x, w, b,
                                                        stats.as<double>(), y);
  cuda_check_launch(op);
}

template <typename X, typename P>
void backward(const BatchNormLayout& l, const X* x, const X* dy, const P* w, const P* save_mean,
              const P* save_invstd, bool use_batch_stats, X* dx, P* dw, P* db) {
  const char* op = "batch_norm backward";
  if (l.C == 0) return;
  cudaStream_t s = cuda_stream();
  int64_t M = l.N * l.S, n = l.N * l.C * l.S;
  bool need_sums = dw || db || (dx && use_batch_stats);
  DeviceScratch sums(l.C * 2 * sizeof(double));
  if (need_sums) {
    Pieces pc = pieces_for(l);
    DeviceScratch partial(pc.count * l.C * 2 * sizeof(double));
    if (M > 0) {
      channel_sums(l, pc, SumDyXhat<X, P>{x, dy, save_mean, save_invstd}, partial.as<double>(),
                   op);
    } else { // no values: every sum is 0
      cuda_check(cudaMemsetAsync(partial.data, 0, partial.nbytes, s), op);
    }
    finish_backward<P><<<grid_for(l.C), kBlock, 0, s>>>(partial.as<double>(), pc.count, l.C,
                                                        sums.as<double>(), dw, db);
    cuda_check_launch(op);
  }
  if (!dx || n == 0) return;
  dx_kernel<X, P><<<grid_for(n), kBlock, 0, s>>>(l, channels_adjacent(l), x, dy, w, save_mean,
                                                 save_invstd, sums.as<double>(), use_batch_stats,
                                                 dx);
  cuda_check_launch(op);
}

void cuda_batch_norm_forward(DType dtype, const BatchNormLayout& l, const void* x, const void* w,
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
    case kFloat16:
      return forward(l, (const __half*)x, (const float*)w, (const float*)b, use_batch_stats,
                     momentum, eps, (float*)running_mean, (float*)running_var, (__half*)y,
                     (float*)save_mean, (float*)save_invstd);
    case kBFloat16:
      return forward(l, (const __nv_bfloat16*)x, (const float*)w, (const float*)b,
                     use_batch_stats, momentum, eps, (float*)running_mean, (float*)running_var,
                     (__nv_bfloat16*)y, (float*)save_mean, (float*)save_invstd);
    default: cuda_no_kernel("batch_norm", dtype);
  }
}

void cuda_batch_norm_backward(DType dtype, const BatchNormLayout& l, const void* x, const void* dy,
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
    case kFloat16:
      return backward(l, (const __half*)x, (const __half*)dy, (const float*)w,
                      (const float*)save_mean, (const float*)save_invstd, use_batch_stats,
                      (__half*)dx, (float*)dw, (float*)db);
    case kBFloat16:
      return backward(l, (const __nv_bfloat16*)x, (const __nv_bfloat16*)dy, (const float*)w,
                      (const float*)save_mean, (const float*)save_invstd, use_batch_stats,
                      (__nv_bfloat16*)dx, (float*)dw, (float*)db);
    default: cuda_no_kernel("batch_norm backward", dtype);
  }
}

} // namespace

const BatchNormKernels BatchNormKernels::cuda = {
    .forward = cuda_batch_norm_forward,
    .backward = cuda_batch_norm_backward,
};

} // namespace tb::kernels
