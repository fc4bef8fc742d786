// kernels/cpu/fake_quant.cpp — fast affine fake quantization and LSQ backward (see
// kernels/fake_quant.h): OpenMP over (outer, channel) rows, branch-free inner loops that the
// compiler vectorises (round to nearest even is one instruction). Same arithmetic as the
// reference, so results are bit-identical to it; the LSQ sums accumulate per row in double.
// No fused multiply-add: every product and sum is rounded on its own, as in PyTorch's kernels
// (-march=native would otherwise let GCC contract a + b * c and move results by an ulp).
#pragma GCC optimize("fp-contract=off")
#include "kernels/fake_quant.h"

#include <cmath>
#include <vector>

namespace tb::kernels {
namespace {

constexpr int64_t kParallelMin = 32768; // below this many elements, one thread

template <typename T>
void forward_impl(const T* __restrict x, T* __restrict y, uint8_t* __restrict mask,
                  const float* scale, const int32_t* zero_point, int64_t outer, int64_t channels,
                  int64_t inner, int64_t qmin, int64_t qmax) {
  int64_t rows = outer * channels;
#pragma omp parallel for schedule(static) if (rows * inner > kParallelMin)
  for (int64_t r = 0; r < rows; r++) {
    int64_t c = r % channels;
    const T inv = (T)(1.0f / scale[c]), zp = (T)zero_point[c], lo = (T)qmin, hi = (T)qmax;
    const double s = scale[c];
    const T* xr = x + r * inner;
    T* yr = y + r * inner;
    uint8_t* mr = mask + r * inner;
    for (int64_t i = 0; i < inner; i++) {
      T q = zp + std::nearbyint(xr[i] * inv);
      bool inside = q >= lo && q <= hi;
      T qc = q > hi ? hi : q;
      qc = qc >= lo ? qc : lo; // also NaN -> qmin
      yr[i] = (T)(((double)qc - (double)zp) * s);
      mr[i] = inside;
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
  int64_t rows = outer * channels;
  std::vector<double> row_ds(rows), row_dz(rows);
#pragma omp parallel for schedule(static) if (rows * inner > kParallelMin)
  for (int64_t r = 0; r < rows; r++) {
    int64_t c = r % channels;
    const float s = scale[c], z = zero_point[c], inv = 1.0f / s;
    const float ds_small = (float)qmin - z, ds_big = (float)qmax - z, lo = (float)qmin,
                hi = (float)qmax;
    const float* xr = x + r * inner;
    const float* dyr = dy + r * inner;
    float* dxr = dx + r * inner;
    double ds = 0, dz = 0;
    for (int64_t i = 0; i < inner; i++) {
      float xq = std::nearbyint(z + xr[i] * inv);
      bool inside = xq >= lo && xq <= hi;
      dxr[i] = inside ? dyr[i] : 0.0f;
      float in_ds = dyr[i] * ((xq - z) * s - xr[i]) * inv * g;
      float out_ds = (xq < lo ? dyr[i] * ds_small : dyr[i] * ds_big) * g;
      ds += inside ? in_ds : out_ds;
      dz += inside ? 0.0f : dyr[i] * -1.0f * s * g;
    }
    row_ds[r] = ds;
    row_dz[r] = dz;
  }
  for (int64_t c = 0; c < channels; c++) dscale[c] = dzero_point[c] = 0;
  for (int64_t r = 0; r < rows; r++) {
    dscale[r % channels] += row_ds[r];
    dzero_point[r % channels] += row_dz[r];
  }
}

} // namespace

const FakeQuantKernels FakeQuantKernels::cpu = {.forward = fq_forward, .learnable_backward = fq_learnable_backward};

} // namespace tb::kernels
