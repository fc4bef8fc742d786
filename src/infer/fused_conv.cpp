// src/infer/fused_conv.cpp — the fused inference conv: the op fused_conv2d, and the modules
// optimize_for_inference builds from it (FusedConv2d, FusedResidual).
//
//   y = act(conv2d(x, w) + b [+ r])     (kernels/conv_infer.h; no autograd)
//
// The kernel is split in prepare (primitive + weights in the kernel's layout, once) and run. A
// FusedConv2d keeps its prepared plans in a small list keyed by everything they depend on: the
// kernel table (fast or reference, tb::set_cpu_kernels), the input geometry and layout, the
// residual flag, the thread count, and the identity and version of its weight and bias (a
// set_data or an in-place write makes a new plan instead of running stale weights).
#include <tb/infer.h>
#include <tb/quant.h>

#include "kernels/conv_infer.h"
#include "src/ops/dispatch.h"

#include <omp.h>

namespace tb::infer {

using kernels::ConvInferKernels;
using kernels::Strides4;

const char* activation_name(Activation a) {
  switch (a) {
    case Activation::None: return "none";
    case Activation::ReLU: return "relu";
    case Activation::ReLU6: return "relu6";
    case Activation::Hardswish: return "hardswish";
    case Activation::SiLU: return "silu";
  }
  return "?";
}

namespace {

kernels::PostAct post_act(Activation a) {
  switch (a) {
    case Activation::None: return kernels::PostAct::None;
    case Activation::ReLU: return kernels::PostAct::ReLU;
    case Activation::ReLU6: return kernels::PostAct::ReLU6;
    case Activation::Hardswish: return kernels::PostAct::Hardswish;
    case Activation::SiLU: return kernels::PostAct::SiLU;
  }
  throw Error("fused_conv2d: unknown activation");
}

// What one call needs: checked inputs, the geometry, and y allocated channels-last.
struct Call {
  Tensor x, w, b, r, y;
  kernels::ConvInferDesc d;
};

Call check_and_plan(const Tensor& x_in, const Tensor& weight, const Tensor& bias,
                    const Conv2dParams& p, Activation act, const Tensor& residual) {
  const char* op = "fused_conv2d";
  check_defined(op, x_in, "input");
  check_defined(op, weight, "weight");
  TB_CHECK(x_in.dim() == 4, "fused_conv2d: expected input [N, C, H, W], got {}",
           shape_str(x_in.shape()));
  TB_CHECK(weight.dim() == 4, "fused_conv2d: expected weight [O, C/groups, kH, kW], got {}",
           shape_str(weight.shape()));
  TB_CHECK(x_in.device().is_cpu() && weight.device().is_cpu(),
           "fused_conv2d: CPU tensors only, got input on {} and weight on {}", x_in.device(),
           weight.device());
  TB_CHECK(x_in.dtype() == kFloat32 && weight.dtype() == kFloat32,
           "fused_conv2d: float32 only, got input {} and weight {}", x_in.dtype(),
           weight.dtype());
  int64_t N = x_in.size(0), C = x_in.size(1), H = x_in.size(2), W = x_in.size(3);
  int64_t O = weight.size(0), KH = weight.size(2), KW = weight.size(3), G = p.groups;
  TB_CHECK(G >= 1 && C % G == 0 && O % G == 0 && weight.size(1) * G == C,
           "fused_conv2d: input {} does not fit weight {} with groups = {} (expected "
           "weight.size(1) * groups input channels)",
           shape_str(x_in.shape()), shape_str(weight.shape()), G);
  if (bias.defined())
    TB_CHECK(bias.dim() == 1 && bias.size(0) == O && bias.dtype() == kFloat32 &&
                 bias.device().is_cpu(),
             "fused_conv2d: expected a float32 CPU bias [{}], got {} {}", O,
             shape_str(bias.shape()), bias.dtype());
  TB_CHECK(p.stride_h >= 1 && p.stride_w >= 1 && p.dilation_h >= 1 && p.dilation_w >= 1 &&
               p.pad_h >= 0 && p.pad_w >= 0,
           "fused_conv2d: expected stride >= 1, dilation >= 1, padding >= 0");
  int64_t eff_h = H + 2 * p.pad_h - p.dilation_h * (KH - 1) - 1;
  int64_t eff_w = W + 2 * p.pad_w - p.dilation_w * (KW - 1) - 1;
  TB_CHECK(eff_h >= 0 && eff_w >= 0,
           "fused_conv2d: input {} (padded) is smaller than the kernel of weight {}",
           shape_str(x_in.shape()), shape_str(weight.shape()));
  int64_t OH = eff_h / p.stride_h + 1, OW = eff_w / p.stride_w + 1;

  Call c;
  // x as is when NCHW-contiguous or channels-last (the kernel reorders NCHW itself), else a
  // channels-last copy.
  c.x = x_in.detach();
  if (!c.x.is_channels_last() && !c.x.is_contiguous()) c.x = c.x.contiguous_channels_last();
  Strides4 xs = c.x.is_channels_last() ? kernels::nhwc_strides(C, H, W)
                                       : kernels::nchw_strides(C, H, W);
  c.w = weight.detach().contiguous();
  if (bias.defined()) c.b = bias.detach().contiguous();
  Strides4 ys = kernels::nhwc_strides(O, OH, OW);
  if (residual.defined()) {
    TB_CHECK(residual.shape() == Shape({N, O, OH, OW}) && residual.dtype() == kFloat32 &&
                 residual.device().is_cpu(),
             "fused_conv2d: the residual must be a float32 CPU tensor of the output's shape {}, "
             "got {} {}",
             shape_str({N, O, OH, OW}), shape_str(residual.shape()), residual.dtype());
    c.r = residual.detach();
    if (!c.r.is_channels_last() || c.r.strides() != Shape{ys.n, ys.c, ys.h, ys.w})
      c.r = c.r.contiguous_channels_last();
  }
  c.y = empty_strided({N, O, OH, OW}, {ys.n, ys.c, ys.h, ys.w}, TensorOptions(kFloat32));
  c.d.g = {.N = N, .C = C, .H = H, .W = W, .O = O, .KH = KH, .KW = KW, .OH = OH, .OW = OW,
           .stride_h = p.stride_h, .stride_w = p.stride_w, .pad_h = p.pad_h, .pad_w = p.pad_w,
           .dil_h = p.dilation_h, .dil_w = p.dilation_w, .groups = G};
  c.d.xs = xs, c.d.ys = ys, c.d.residual = residual.defined(), c.d.act = post_act(act);
  return c;
}

const ConvInferKernels& table() { return kernels_for<ConvInferKernels>(kCPU); }

void execute(const ConvInferKernels& k, const kernels::ConvInferPlan& plan, Call& c) {
  k.run(plan, c.x.data<float>(), c.r.defined() ? c.r.data<float>() : nullptr,
        c.y.data<float>());
}

std::shared_ptr<kernels::ConvInferPlan> prepare(const ConvInferKernels& k, const Call& c) {
  TB_CHECK(k.prepare && k.run, "fused_conv2d: no {} kernel",
           cpu_kernels() == CpuKernels::Fast ? "fast CPU" : "reference CPU");
  return k.prepare(c.d, c.w.data<float>(), c.b.defined() ? c.b.data<float>() : nullptr);
}

} // namespace

Tensor fused_conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias,
                    const Conv2dParams& p, Activation act, const Tensor& residual) {
  Call c = check_and_plan(x, weight, bias, p, act, residual);
  const ConvInferKernels& k = table();
  auto plan = prepare(k, c);
  execute(k, *plan, c);
  return c.y;
}

// ---- FusedConv2d -------------------------------------------------------------------------------

FusedConv2d::FusedConv2d(const nn::Conv2d& conv, const nn::BatchNormBase* bn, Activation act)
    : params(conv.params), act(act) {
  no_grad ng;
  Tensor w = conv.weight(), b = conv.bias();
  if (bn) std::tie(w, b) = quant::fuse_conv_bn_weights(w, b, *bn);
  register_buffer("weight", w.detach().contiguous().clone());
  if (b.defined()) register_buffer("bias", b.detach().contiguous().clone());
  train(false);
}

Tensor FusedConv2d::run(const Tensor& x, const Tensor& residual) {
  Tensor w = get("weight"), b = find("bias");
  Call c = check_and_plan(x, w, b, params, act, residual);
  const ConvInferKernels& k = table();
  const auto& g = c.d.g;
  std::vector<int64_t> key{(int64_t)(intptr_t)&k, g.N, g.C, g.H, g.W, c.d.xs.c == 1,
                           c.d.residual, omp_get_max_threads(),
                           (int64_t)(intptr_t)c.w.data<float>(), (int64_t)c.w.version(),
                           b.defined() ? (int64_t)(intptr_t)c.b.data<float>() : 0,
                           b.defined() ? (int64_t)c.b.version() : 0};
  std::shared_ptr<kernels::ConvInferPlan> plan;
  {
    std::lock_guard<std::mutex> lock(cache_.mutex);
    for (auto& [k2, pl] : cache_.plans)
      if (k2 == key) plan = std::static_pointer_cast<kernels::ConvInferPlan>(pl);
    if (!plan) {
      plan = prepare(k, c);
      // Shapes change rarely (batch size, image size); keep the last few.
      if (cache_.plans.size() >= 8) cache_.plans.erase(cache_.plans.begin());
      cache_.plans.emplace_back(key, plan);
    }
  }
  execute(k, *plan, c);
  return c.y;
}

Tensor FusedConv2d::forward(const Tensor& x) { return run(x, Tensor()); }

Tensor FusedConv2d::forward_residual(const Tensor& x, const Tensor& residual) {
  check_defined("FusedConv2d::forward_residual", residual, "residual");
  return run(x, residual);
}

nn::Module& FusedConv2d::train(bool on) {
  TB_CHECK(!on, "FusedConv2d: a module of an optimize_for_inference model is eval-only (its BN "
           "is folded); train the original model instead");
  return Module::train(false);
}

std::string FusedConv2d::extra_repr() const {
  Tensor w = get("weight");
  return fmt::format("{}, {}, kernel_size=({}, {}), stride=({}, {}), padding=({}, {}), "
                     "dilation=({}, {}), groups={}, act={}",
                     w.size(1) * params.groups, w.size(0), w.size(2), w.size(3), params.stride_h,
                     params.stride_w, params.pad_h, params.pad_w, params.dilation_h,
                     params.dilation_w, params.groups, activation_name(act));
}

// ---- FusedResidual -----------------------------------------------------------------------------

FusedResidual::FusedResidual(nn::ModulePtr body, std::shared_ptr<FusedConv2d> conv,
                             nn::ModulePtr shortcut) {
  TB_CHECK(body && conv, "FusedResidual: body and conv are required");
  register_module("body", body);
  register_module("conv", conv);
  if (shortcut) register_module("shortcut", shortcut);
  Module::train(false);
}

// y = conv(body(x)) + shortcut(x), the add (and the activation after it) inside conv's kernel.
Tensor FusedResidual::forward(const Tensor& x) {
  Tensor y = (*child("body"))(x);
  Tensor s = has_child("shortcut") ? (*child("shortcut"))(x) : x;
  return std::static_pointer_cast<FusedConv2d>(child("conv"))->forward_residual(y, s);
}

nn::Module& FusedResidual::train(bool on) {
  TB_CHECK(!on, "FusedResidual: a module of an optimize_for_inference model is eval-only; train "
           "the original model instead");
  return Module::train(false);
}

} // namespace tb::infer
