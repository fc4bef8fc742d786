// kernels/batchnorm.h — batch normalisation kernels: raw pointers, sizes and strides, never a
// Tensor.
//
// x [N, C, ...] is seen as [N, C, S] (S = product of the trailing dims, 1 for [N, C]) with element
// strides (sn, sc, ss); y, dy and dx share x's strides. The op layer passes dense layouts: NCHW
// contiguous (ss = 1) or channels-last / [N, C] (sc = 1). Per-channel vectors (weight, bias,
// running and saved statistics, dw, db) are contiguous [C] of x's dtype, or float32 when x is
// float16/bfloat16 (mixed precision: half activations, float32 parameters and statistics, as
// PyTorch's CPU batch norm); M = N*S values per channel.
// Three tables of the same kernels:
//   BatchNormKernels::ref  — kernels/ref/batchnorm.cpp: plain loops, the specification;
//   BatchNormKernels::cpu  — kernels/cpu/batchnorm.cpp: OpenMP, vectorised along the contiguous
//                            dim;
//   BatchNormKernels::cuda — kernels/cuda/batchnorm.cu: per-channel sums in double in two passes
//                            (fixed pieces, fixed order), then one thread per element; all four
//                            dtypes. Written and compiled, but NOT yet run on a GPU: its tests
//                            (tests/test_cuda.cpp) have only skipped so far.
// dtypes: float32, float64, and float16/bfloat16 activations with float32 vectors (sums in double;
// the CPU kernel's half path sums each chunk of ~64 rows in float32 first; y and dx rounded once
// to the half type).
#pragma once

#include <cstdint>

#include <tb/core.h>

namespace tb::kernels {

struct BatchNormLayout {
  int64_t N = 0, C = 0, S = 1;
  int64_t sn = 0, sc = 0, ss = 0;
};

struct BatchNormKernels {
  // Forward. With batch statistics (use_batch_stats):
  //   mean_c = (1/M) sum x,  var_c = (1/M) sum (x - mean_c)^2   (biased, used to normalise)
  //   running_mean = (1 - momentum) running_mean + momentum mean_c
  //   running_var  = (1 - momentum) running_var  + momentum var_c M / (M - 1)   (unbiased)
  //   (running_* may be nullptr: no update; M must be > 1 when they are given)
  // Otherwise mean_c = running_mean, var_c = running_var (both required).
  // Then y = (x - mean_c) inv_std_c w_c + b_c with inv_std_c = 1 / sqrt(var_c + eps); w, b may be
  // nullptr (1 and 0). save_mean / save_invstd [C] receive mean_c and inv_std_c for backward.
  void (*forward)(DType dtype, const BatchNormLayout& l, const void* x, const void* w,
                  const void* b, bool use_batch_stats, double momentum, double eps,
                  void* running_mean, void* running_var, void* y, void* save_mean,
                  void* save_invstd);

  // Backward, with xhat = (x - mean_c) inv_std_c, sums over the M values of channel c:
  //   db_c = sum dy,  dw_c = sum dy xhat
  //   batch statistics (they depend on x):  dx = w_c inv_std_c (dy - db_c / M - xhat dw_c / M)
  //   fixed statistics (eval):              dx = w_c inv_std_c dy
  // Any of dx, dw, db may be nullptr (not needed); w may be nullptr (1).
  void (*backward)(DType dtype, const BatchNormLayout& l, const void* x, const void* dy,
                   const void* w, const void* save_mean, const void* save_invstd,
                   bool use_batch_stats, void* dx, void* dw, void* db);

  static const BatchNormKernels ref, cpu, cuda;
};

} // namespace tb::kernels
