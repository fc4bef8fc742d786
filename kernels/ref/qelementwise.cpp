// kernels/ref/qelementwise.cpp — integer add, multiply, concatenation, activations and pooling
// on uint8 activations (kernels/qconv.h, QElementwiseKernels): dequantize, compute in float32,
// quantize onto the output grid with fake-quant's rule. Plain loops: the specification that the
// OpenMP table (kernels/cpu/qelementwise.cpp) is tested against.
#include <algorithm>
#include <cmath>

#include "kernels/qconv.h"

namespace tb::kernels {
namespace {

void ref_qadd(const uint8_t* a, QGrid ga, const uint8_t* b, QGrid gb, uint8_t* y, QGrid gy,
              int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = qquant(qdeq(a[i], ga) + qdeq(b[i], gb), gy);
}

void ref_qmul(const uint8_t* a, QGrid ga, const uint8_t* b, QGrid gb, uint8_t* y, QGrid gy,
              int64_t N, int64_t P, int64_t C, bool b_broadcast) {
  for (int64_t n = 0; n < N; n++)
    for (int64_t p = 0; p < P; p++)
      for (int64_t c = 0; c < C; c++) {
        int64_t i = (n * P + p) * C + c;
        uint8_t bv = b_broadcast ? b[n * C + c] : b[i];
        y[i] = qquant(qdeq(a[i], ga) * qdeq(bv, gb), gy);
      }
}

void ref_qcat(const uint8_t* const* xs, const QGrid* gs, const int64_t* widths, int64_t k,
              uint8_t* y, QGrid gy, int64_t outer) {
  int64_t total = 0;
  for (int64_t j = 0; j < k; j++) total += widths[j];
  for (int64_t o = 0; o < outer; o++) {
    int64_t col = 0;
    for (int64_t j = 0; j < k; j++) {
      for (int64_t i = 0; i < widths[j]; i++)
        y[o * total + col + i] = qquant(qdeq(xs[j][o * widths[j] + i], gs[j]), gy);
      col += widths[j];
    }
  }
}

void ref_qactivation(QActivation kind, const uint8_t* x, QGrid gx, uint8_t* y, QGrid gy,
                     int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    float v = qdeq(x[i], gx), r = 0;
    switch (kind) {
      case QActivation::ReLU: r = std::max(v, 0.0f); break;
      case QActivation::ReLU6: r = std::min(std::max(v, 0.0f), 6.0f); break;
      case QActivation::Hardswish: r = v * std::min(std::max(v + 3.0f, 0.0f), 6.0f) / 6.0f; break;
      case QActivation::Sigmoid: r = 1.0f / (1.0f + std::exp(-v)); break;
      case QActivation::SiLU: r = v / (1.0f + std::exp(-v)); break;
      case QActivation::Hardsigmoid: r = std::min(std::max(v + 3.0f, 0.0f), 6.0f) / 6.0f; break;
    }
    y[i] = qquant(r, gy);
  }
}

void ref_qmax_pool2d(const uint8_t* x, int64_t N, int64_t C, int64_t H, int64_t W, int64_t KH,
                     int64_t KW, int64_t sh, int64_t sw, int64_t ph, int64_t pw, uint8_t* y,
                     int64_t OH, int64_t OW) {
  for (int64_t n = 0; n < N; n++)
    for (int64_t oh = 0; oh < OH; oh++)
      for (int64_t ow = 0; ow < OW; ow++)
        for (int64_t c = 0; c < C; c++) {
          int m = -1; // no tap inside: PyTorch's output size rules make this impossible
          for (int64_t kh = 0; kh < KH; kh++)
            for (int64_t kw = 0; kw < KW; kw++) {
              int64_t ih = oh * sh - ph + kh, iw = ow * sw - pw + kw;
              if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
              m = std::max(m, (int)x[((n * H + ih) * W + iw) * C + c]);
            }
          y[((n * OH + oh) * OW + ow) * C + c] = (uint8_t)std::max(m, 0);
        }
}

void ref_qavg_pool2d(const uint8_t* x, QGrid gx, int64_t N, int64_t C, int64_t H, int64_t W,
                     int64_t KH, int64_t KW, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                     uint8_t* y, QGrid gy, int64_t OH, int64_t OW) {
  for (int64_t n = 0; n < N; n++)
    for (int64_t oh = 0; oh < OH; oh++)
      for (int64_t ow = 0; ow < OW; ow++)
        for (int64_t c = 0; c < C; c++) {
          // PyTorch's count_include_pad divisor: the window clipped to the padded input.
          int64_t h0 = oh * sh - ph, w0 = ow * sw - pw;
          int64_t h1 = std::min(h0 + KH, H + ph), w1 = std::min(w0 + KW, W + pw);
          float s = 0;
          for (int64_t ih = std::max<int64_t>(h0, 0); ih < std::min(h1, H); ih++)
            for (int64_t iw = std::max<int64_t>(w0, 0); iw < std::min(w1, W); iw++)
              s += qdeq(x[((n * H + ih) * W + iw) * C + c], gx);
          y[((n * OH + oh) * OW + ow) * C + c] = qquant(s / (float)((h1 - h0) * (w1 - w0)), gy);
        }
}

} // namespace

const QElementwiseKernels QElementwiseKernels::ref = {
    .add = ref_qadd,
    .mul = ref_qmul,
    .cat = ref_qcat,
    .activation = ref_qactivation,
    .max_pool2d = ref_qmax_pool2d,
    .avg_pool2d = ref_qavg_pool2d,
};

} // namespace tb::kernels
