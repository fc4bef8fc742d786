// kernels/conv_infer.h — the inference convolution: conv2d + bias, optionally + a residual
// tensor, then an activation, in one kernel call (float32, no backward). What
// tb::infer::optimize_for_inference runs a conv+BN+activation group (and a residual join) as.
//
//   y = act(conv(x, w) + b [+ r])          (shapes and geometry as kernels/conv.h)
//
// Unlike Conv2dKernels, the work is split in two: prepare() does everything that depends only on
// the geometry and the weights once — the oneDNN kernel creates its primitive with the activation
// and the residual add as post-ops (eltwise, sum) and reorders the weights into the primitive's
// preferred blocked layout — and run() then only executes. The caller (src/infer/fused_conv.cpp)
// keeps one plan per input geometry.
//   ConvInferKernels::ref — kernels/ref/conv_infer.cpp: Conv2dKernels::ref.forward, then plain
//                           loops for the residual add and the activation (the specification);
//   ConvInferKernels::cpu — kernels/cpu/conv_infer_onednn.cpp: one oneDNN primitive with post-ops;
//   ConvInferKernels::cuda — not written: null (the op raises tb::Error).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "kernels/conv.h"

namespace tb::kernels {

// The activation after the add (PyTorch's formulas):
//   ReLU max(x, 0); ReLU6 min(max(x, 0), 6); Hardswish x min(max(x + 3, 0), 6) / 6;
//   SiLU x / (1 + exp(-x)).
enum class PostAct { None, ReLU, ReLU6, Hardswish, SiLU };

struct ConvInferDesc {
  Conv2dGeom g;
  Strides4 xs, ys;        // x: any strides; y: NHWC (what the op layer allocates)
  bool residual = false;  // run() gets r with strides ys (same shape as y)
  PostAct act = PostAct::None;
};

// What prepare() built; opaque to the caller.
struct ConvInferPlan {
  virtual ~ConvInferPlan() = default;
};

struct ConvInferKernels {
  // w [O, C/groups, KH, KW] contiguous, b [O] (or nullptr). The ref plan keeps the pointers (the
  // caller keeps the tensors alive and unchanged while it uses the plan); the cpu plan copies the
  // weights into its own layout.
  std::shared_ptr<ConvInferPlan> (*prepare)(const ConvInferDesc& d, const float* w,
                                            const float* b);
  // y = act(conv(x) + b [+ r]). r (nullptr unless d.residual) may equal y (in place).
  void (*run)(const ConvInferPlan& plan, const float* x, const float* r, float* y);

  static const ConvInferKernels ref, cpu, cuda;
};

// The cpu table's prepare() times the implementations oneDNN offers for the geometry and keeps
// the fastest (kernels/cpu/onednn_common.h, fastest_impl). For tests, which check each against the
// reference: their names in oneDNN's order (with a bias), and a prepare() that takes the one at
// `position`.
std::vector<std::string> cpu_conv_infer_impls(const ConvInferDesc& d);
std::shared_ptr<ConvInferPlan> cpu_conv_infer_prepare_at(int position, const ConvInferDesc& d,
                                                         const float* w, const float* b);

} // namespace tb::kernels
