// kernels/ref/qconv.cpp — reference integer convolution and linear: plain loops, the
// specification of kernels/qconv.h (u8 activations x s8 weights, int32 accumulation, float32
// requantization rounding half to even).
#include <cmath>
#include <vector>

#include "kernels/qconv.h"

namespace tb::kernels {
namespace {

// v = (acc + bias) M, the fused activation, + out_zp, rounded half to even, saturated to u8.
// nearbyintf rounds in the current mode: round-to-nearest-even unless a caller changed it.
uint8_t requantize(int32_t acc, int64_t o, const Requant& r) {
  float v = (float)acc;
  if (r.bias) v += (float)r.bias[o];
  v *= r.multiplier[o];
  if (r.act != QAct::None) v = std::max(v, 0.0f);
  if (r.act == QAct::Clip) v = std::min(v, r.clip_hi);
  v += (float)r.out_zp;
  float q = std::nearbyintf(v);
  return (uint8_t)std::min(255.0f, std::max(0.0f, q));
}

void ref_qconv2d(const Conv2dGeom& g, const uint8_t* x, const int8_t* w, const Requant& r,
                 uint8_t* y) {
  int64_t Cg = g.C / g.groups, Og = g.O / g.groups;
  for (int64_t n = 0; n < g.N; n++)
    for (int64_t oh = 0; oh < g.OH; oh++)
      for (int64_t ow = 0; ow < g.OW; ow++)
        for (int64_t o = 0; o < g.O; o++) {
          int64_t grp = o / Og;
          int32_t acc = 0;
          for (int64_t c = 0; c < Cg; c++)
            for (int64_t kh = 0; kh < g.KH; kh++)
              for (int64_t kw = 0; kw < g.KW; kw++) {
                int64_t ih = oh * g.stride_h - g.pad_h + kh * g.dil_h;
                int64_t iw = ow * g.stride_w - g.pad_w + kw * g.dil_w;
                if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) continue; // real zero
                int32_t xv = x[((n * g.H + ih) * g.W + iw) * g.C + grp * Cg + c];
                int32_t wv = w[((o * Cg + c) * g.KH + kh) * g.KW + kw];
                acc += (xv - r.in_zp) * wv;
              }
          uint8_t q = requantize(acc, o, r);
          uint8_t& out = y[((n * g.OH + oh) * g.OW + ow) * g.O + o];
          if (r.sum) { // the fused add: `out` holds the residual level
            const QSum& s = *r.sum;
            out = s.conv_input == 1 ? qquant(qdeq(out, s.residual) + qdeq(q, s.conv), s.out)
                                    : qquant(qdeq(q, s.conv) + qdeq(out, s.residual), s.out);
          } else {
            out = q;
          }
        }
}

void ref_qlinear(int64_t N, int64_t I, int64_t O, const uint8_t* x, const int8_t* w,
                 const Requant& r, uint8_t* y) {
  for (int64_t n = 0; n < N; n++)
    for (int64_t o = 0; o < O; o++) {
      int32_t acc = 0;
      for (int64_t i = 0; i < I; i++) acc += ((int32_t)x[n * I + i] - r.in_zp) * w[o * I + i];
      y[n * O + o] = requantize(acc, o, r);
    }
}

// The reference plan: the geometry and a copy of the weights; run is the plain loop.
struct RefQConvPlan : QConvPlan {
  Conv2dGeom g;
  std::vector<int8_t> w;
};

std::shared_ptr<const QConvPlan> ref_prepare_qconv2d(const Conv2dGeom& g, const int8_t* w,
                                                     const Requant&) {
  auto p = std::make_shared<RefQConvPlan>();
  p->g = g;
  p->w.assign(w, w + g.O * (g.C / g.groups) * g.KH * g.KW);
  return p;
}

void ref_run_qconv2d(const QConvPlan& plan, const uint8_t* x, const Requant& r, uint8_t* y) {
  const auto& p = dynamic_cast<const RefQConvPlan&>(plan);
  ref_qconv2d(p.g, x, p.w.data(), r, y);
}

} // namespace

const QConvKernels QConvKernels::ref = {.conv2d = ref_qconv2d,
                                        .prepare_conv2d = ref_prepare_qconv2d,
                                        .run_conv2d = ref_run_qconv2d,
                                        .linear = ref_qlinear};

} // namespace tb::kernels
