// kernels/fake_quant.h — affine fake quantization over a contiguous tensor viewed as
// [outer, channels, inner] (element (o, c, i) at x[(o * channels + c) * inner + i]); per-tensor
// is channels = 1. Raw pointers and sizes, never a Tensor. Three tables of the same kernels:
//   FakeQuantKernels::ref  — kernels/ref/fake_quant.cpp: plain loops, the specification;
//   FakeQuantKernels::cpu  — kernels/cpu/fake_quant.cpp: OpenMP, vectorisable inner loops;
//   FakeQuantKernels::cuda — none yet (the CUDA issue).
// dtype float32 or float64 for x / y / dy / dx. PyTorch's arithmetic exactly: inv = 1.0f / scale
// (float), r = round_half_even(x * inv) in x's dtype, q = r + zero_point.
#pragma once

#include <cstdint>

#include <tb/core.h>

namespace tb::kernels {

struct FakeQuantKernels {
  // y = (clamp(q, qmin, qmax) - zp[c]) * scale[c], mask = (qmin <= q <= qmax) (1/0 bytes), with
  // q = round(x * (1.0f / scale[c])) + zp[c]. NaN gives qmin and mask 0.
  void (*forward)(DType dtype, const void* x, void* y, uint8_t* mask, const float* scale,
                  const int32_t* zero_point, int64_t outer, int64_t channels, int64_t inner,
                  int64_t qmin, int64_t qmax);

  // The learnable (LSQ) backward, float32 only, zero points given as floats (already rounded the
  // way the caller wants). With inv = 1 / s, xq = round(z + x * inv):
  //   inside:  dx = dy, ds_e = dy * (x̂ - x) * inv * g, dz_e = 0, x̂ = (clamp(xq) - z) * s
  //   outside: dx = 0,  ds_e = dy * (qmin - z or qmax - z) * g, dz_e = dy * (-1) * s * g
  // and dscale[c] / dzero_point[c] = the sums of ds_e / dz_e over channel c (in double).
  void (*learnable_backward)(const float* x, const float* dy, float* dx, double* dscale,
                             double* dzero_point, const float* scale, const float* zero_point,
                             int64_t outer, int64_t channels, int64_t inner, int64_t qmin,
                             int64_t qmax, float grad_factor);

  static const FakeQuantKernels ref, cpu, cuda;
};

} // namespace tb::kernels
