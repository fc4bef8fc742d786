// kernels/softmax.h — softmax / log_softmax over the middle dim of a contiguous tensor viewed as
// [outer, dim, inner] (element (o, j, i) at x[(o * dim + j) * inner + i]), and the fused
// cross-entropy / nll kernels on [N, C] rows. Raw pointers and sizes, never a Tensor.
// Three tables of the same kernels:
//   SoftmaxKernels::ref  — kernels/ref/softmax.cpp: plain loops, the specification;
//   SoftmaxKernels::cpu  — kernels/cpu/softmax.cpp: OpenMP over rows;
//   SoftmaxKernels::cuda — kernels/cuda/softmax.cu.
// dtype float32 or float64 everywhere. ref computes in double; the fast twins may evaluate exp in
// the dtype but accumulate sums in double.
// Targets are int64; the op layer has already checked them (each in [0, C) or == ignore_index), so
// kernels never see a bad class index.
#pragma once

#include <cstdint>

#include <tb/core.h>

namespace tb::kernels {

struct SoftmaxKernels {
  // Numerically stable, with m = max_j x_j:
  //   softmax:     y_j = exp(x_j - m) / sum_k exp(x_k - m)
  //   log_softmax: y_j = x_j - m - log(sum_k exp(x_k - m))
  void (*forward)(DType dtype, bool log, const void* x, void* y, int64_t outer, int64_t dim,
                  int64_t inner);

  // From the forward output y and the output gradient dy:
  //   softmax:     dx_j = y_j (dy_j - sum_k dy_k y_k)
  //   log_softmax: dx_j = dy_j - exp(y_j) sum_k dy_k
  void (*backward)(DType dtype, bool log, const void* y, const void* dy, void* dx, int64_t outer,
                   int64_t dim, int64_t inner);

  // Fused cross-entropy from logits x [n, c] with label smoothing eps (PyTorch's definition):
  //   lse_r  = log sum_j exp(x_rj)
  //   loss_r = (1 - eps) (lse_r - x_{r,t_r}) + eps (lse_r - mean_j x_rj)
  //          = (1 - eps) * nll + eps * mean_j(-log p_rj)
  // and loss_r = 0 when t_r == ignore_index. Writes loss [n] and lse [n] (kept for backward).
  void (*cross_entropy_forward)(DType dtype, const void* x, const int64_t* target, void* loss,
                                void* lse, int64_t n, int64_t c, double label_smoothing,
                                int64_t ignore_index);

  // dx_rj = scale * dloss[r * dloss_step] * (exp(x_rj - lse_r) - (1 - eps) [j == t_r] - eps / c),
  // and the whole row 0 when t_r == ignore_index. dloss_step is 1 (reduction "none": one
  // gradient per row) or 0 (one scalar gradient for all rows); scale is 1/count for "mean",
  // else 1.
  void (*cross_entropy_backward)(DType dtype, const void* x, const int64_t* target,
                                 const void* lse, const void* dloss, int64_t dloss_step,
                                 double scale, void* dx, int64_t n, int64_t c,
                                 double label_smoothing, int64_t ignore_index);

  // nll on log-probabilities logp [n, c]: loss_r = -logp_{r,t_r}, 0 when t_r == ignore_index.
  void (*nll_forward)(DType dtype, const void* logp, const int64_t* target, void* loss, int64_t n,
                      int64_t c, int64_t ignore_index);

  // dlogp_rj = -scale * dloss[r * dloss_step] if j == t_r (and t_r != ignore_index), else 0;
  // writes every element of dlogp.
  void (*nll_backward)(DType dtype, const int64_t* target, const void* dloss, int64_t dloss_step,
                       double scale, void* dlogp, int64_t n, int64_t c, int64_t ignore_index);

  static const SoftmaxKernels ref, cpu, cuda;
};

} // namespace tb::kernels
