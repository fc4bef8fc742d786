// kernels/ref/fake_quant.cpp — reference affine fake quantization and the LSQ backward: plain
// loops over [outer, channels, inner], one element at a time (the specification, see
// kernels/fake_quant.h).
// No fused multiply-add: every product and sum is rounded on its own, as in PyTorch's kernels
// (-march=native would otherwise let GCC contract a + b * c and move results by an ulp).
#pragma GCC optimize("fp-contract=off")
#include "kernels/fake_quant.h"

#include <cmath>

namespace tb::kernels {
namespace {

template <typename T>
void forward_impl(const T* x, T* y, uint8_t* mask, const float* scale, const int32_t* zero_point,
                  int64_t outer, int64_t channels, int64_t inner, int64_t qmin, int64_t qmax) {
  for (int64_t o = 0; o < outer; o++)
    for (int64_t c = 0; c < channels; c++) {
      float inv = 1.0f / scale[c];
      for (int64_t i = 0; i < inner; i++) {
        int64_t e = (o * channels + c) * inner + i;
        T q = (T)zero_point[c] + std::nearbyint(x[e] * (T)inv);
        bool inside = q >= (T)qmin && q <= (T)qmax;
        double qc = inside ? (double)q : q > (T)qmax ? (double)qmax : (double)qmin; // NaN: qmin
        y[e] = (T)((qc - zero_point[c]) * (double)scale[c]);
        mask[e] = inside;
      }
    }
}

void fq_forward(DType dtype, const void* x, void* y, uint8_t* mask, const float* scale,
             const int32_t* zero_point, int64_t outer, int64_t channels, int64_t inner,
             int64_t qmin, int64_t qmax) {
  if (dtype == kFloat64)
    forward_impl((const double*)x, (double*)y, mask, scale, zero_point, outer, channels, inner,
                 qmin, qmax);
  else
    forward_impl((const float*)x, (float*)y, mask, scale, zero_point, outer, channels, inner,
                 qmin, qmax);
}

void fq_learnable_backward(const float* x, const float* dy, float* dx, double* dscale,
                        double* dzero_point, const float* scale, const float* zero_point,
                        int64_t outer, int64_t channels, int64_t inner, int64_t qmin,
                        int64_t qmax, float g) {
  for (int64_t c = 0; c < channels; c++) dscale[c] = dzero_point[c] = 0;
  for (int64_t o = 0; o < outer; o++)
    for (int64_t c = 0; c < channels; c++) {
      float s = scale[c], z = zero_point[c], inv = 1.0f / s;
      float ds_small = (float)qmin - z, ds_big = (float)qmax - z;
      for (int64_t i = 0; i < inner; i++) {
        int64_t e = (o * channels + c) * inner + i;
        float xq = std::nearbyint(z + x[e] * inv);
        bool inside = xq >= (float)qmin && xq <= (float)qmax;
        dx[e] = inside ? dy[e] : 0.0f;
        if (inside) {
          float xfq = (xq - z) * s;
          dscale[c] += dy[e] * (xfq - x[e]) * inv * g;
        } else {
          dzero_point[c] += dy[e] * -1.0f * s * g;
          dscale[c] += (xq < (float)qmin ? dy[e] * ds_small : dy[e] * ds_big) * g;
        }
      }
    }
}

} // namespace

const FakeQuantKernels FakeQuantKernels::ref = {.forward = fq_forward, .learnable_backward = fq_learnable_backward};

} // namespace tb::kernels
