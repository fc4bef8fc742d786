// kernels/ref/conv_infer.cpp — the inference convolution as the composition it replaces: the
// reference conv loops (kernels/ref/conv.cpp), then, per output element, the residual add and the
// activation in plain loops. The specification ConvInferKernels::cpu is tested against.
//   y = act(conv(x, w) + b [+ r])
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/conv_infer.h"

namespace tb::kernels {
namespace {

// PyTorch's formulas (float32 math, as its CPU kernels).
float apply_act(PostAct a, float v) {
  switch (a) {
    case PostAct::None: return v;
    case PostAct::ReLU: return std::max(v, 0.0f);
    case PostAct::ReLU6: return std::min(std::max(v, 0.0f), 6.0f);
    case PostAct::Hardswish: return v * std::min(std::max(v + 3.0f, 0.0f), 6.0f) / 6.0f;
    case PostAct::SiLU: return v / (1.0f + std::exp(-v));
  }
  return v;
}

// The reference keeps the caller's weight pointers (no copy, no layout change).
struct RefPlan : ConvInferPlan {
  ConvInferDesc d;
  const float* w = nullptr;
  const float* b = nullptr;
};

std::shared_ptr<ConvInferPlan> ref_prepare(const ConvInferDesc& d, const float* w,
                                           const float* b) {
  auto p = std::make_shared<RefPlan>();
  p->d = d, p->w = w, p->b = b;
  return p;
}

void ref_run(const ConvInferPlan& plan, const float* x, const float* r, float* y) {
  const auto& p = dynamic_cast<const RefPlan&>(plan);
  const Conv2dGeom& g = p.d.g;
  Strides4 ys = p.d.ys;
  // r may alias y: read every residual value before the conv overwrites y.
  std::vector<float> res;
  if (p.d.residual) {
    res.resize(g.N * g.O * g.OH * g.OW);
    for (int64_t n = 0; n < g.N; n++)
      for (int64_t o = 0; o < g.O; o++)
        for (int64_t oh = 0; oh < g.OH; oh++)
          for (int64_t ow = 0; ow < g.OW; ow++)
            res[((n * g.O + o) * g.OH + oh) * g.OW + ow] =
                r[n * ys.n + o * ys.c + oh * ys.h + ow * ys.w];
  }
  Conv2dKernels::ref.forward(kFloat32, g, x, p.d.xs, p.w, p.b, y, ys);
  for (int64_t n = 0; n < g.N; n++)
    for (int64_t o = 0; o < g.O; o++)
      for (int64_t oh = 0; oh < g.OH; oh++)
        for (int64_t ow = 0; ow < g.OW; ow++) {
          float& v = y[n * ys.n + o * ys.c + oh * ys.h + ow * ys.w];
          if (p.d.residual) v += res[((n * g.O + o) * g.OH + oh) * g.OW + ow];
          v = apply_act(p.d.act, v);
        }
}

} // namespace

const ConvInferKernels ConvInferKernels::ref = {.prepare = ref_prepare, .run = ref_run};

} // namespace tb::kernels
