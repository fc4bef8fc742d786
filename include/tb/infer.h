// tb/infer.h — inference-graph optimization: a trained model rewritten for fast eval-only
// forward passes (PyTorch's torch.jit.optimize_for_inference / ONNX Runtime's graph
// optimizations, done on the module tree). Not part of tb.h:
//
//   #include <tb/infer.h>
//   auto fast = tb::infer::optimize_for_inference(*model);   // model itself is left as it was
//   tb::no_grad ng;
//   tb::Tensor y = (*fast)(x);                               // == (*model)(x) in eval mode
//
// What it does (docs/inference.md):
//  1. deep-copies the model (Module::clone) and puts the copy in eval mode;
//  2. folds every BatchNorm2d into the conv before it (tb::quant::fuse_conv_bn_weights on the
//     groups tb::quant::find_fusable_groups finds, extended to the zoo's activations);
//  3. turns each conv [+ BN] [+ ReLU | ReLU6 | Hardswish | SiLU] run of a Sequential into ONE
//     FusedConv2d: a oneDNN convolution with the activation as an eltwise post-op, whose weights
//     are reordered to the kernel's blocked layout once and whose primitive is created once per
//     input shape (kernels/cpu/conv_infer_onednn.cpp);
//  4. rewrites the residual blocks of the zoo (BasicBlock, Bottleneck, InvertedResidual and
//     MBConv with a skip connection) into a FusedResidual whose last conv adds the shortcut as a
//     `sum` post-op (and applies ResNet's ReLU after the add in the same primitive);
//  5. drops Dropout and eval-mode StochasticDepth (identities in eval), and removes the
//     Identity placeholders left in Sequentials.
// Everything else (pools, Linear, squeeze-excitation gates, shuffles, user modules) runs as in
// the original. Outputs equal the original model's eval outputs within float32 rounding (tests:
// suite `infer`, every zoo model and the CNN).
//
// Hooks: the fused modules replace conv / BN / activation modules and the rebuilt Sequentials and
// blocks, so forward hooks registered on those (feature captures, observers) do not run in the
// copy; hooks on modules it keeps (Linear, pools, user modules, a root that is not a Sequential)
// do.
// The copy is eval-only: float32 on the CPU, no autograd (outputs carry no gradient history),
// and train(true) on it raises tb::Error. Its state_dict has the folded weights under the fused
// modules' names, so it is not a checkpoint of the original architecture: save the original.
#pragma once

#include <tb/nn.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace tb::infer {

// The activation a FusedConv2d applies last (PyTorch's formulas; see kernels/conv_infer.h).
enum class Activation { None, ReLU, ReLU6, Hardswish, SiLU };
const char* activation_name(Activation a); // "none", "relu", "relu6", "hardswish", "silu"

// What optimize_for_inference changed (counts over the whole tree).
struct OptimizeReport {
  int64_t convs_fused = 0;        // convs now run as FusedConv2d
  int64_t bn_folded = 0;          // BatchNorm2d folded into a conv
  int64_t activations_fused = 0;  // activations run as an eltwise post-op
  int64_t residuals_fused = 0;    // residual adds run as a sum post-op
  int64_t dropouts_removed = 0;   // Dropout / StochasticDepth removed
  std::string str() const;        // one line
};

// The optimized, eval-only deep copy of `model` (see the top of this file). `model` is not
// changed (nor its training flag). tb::Error when a parameter or buffer is not float32 on the
// CPU (the fused kernels are float32 CPU only) naming it.
nn::ModulePtr optimize_for_inference(const nn::Module& model, OptimizeReport* report = nullptr);

// y = act(conv2d(x, weight, bias) [+ residual]) in one kernel call, without autograd:
// x [N, C, H, W] float32 CPU (any layout), weight [O, C/groups, kh, kw], bias [O] or undefined,
// residual undefined or of y's shape. y is channels-last. The op FusedConv2d runs (it keeps the
// prepared kernel between calls; this function prepares one per call). tb::Error for bad
// shapes, dtypes or devices, naming them.
Tensor fused_conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias,
                    const Conv2dParams& p, Activation act, const Tensor& residual = {});

namespace detail {
// Prepared kernels of one FusedConv2d, one per input geometry. Copying a module (clone) gives the
// copy an empty cache: plans refer to the weights they were made from.
struct PlanCache {
  PlanCache() = default;
  PlanCache(const PlanCache&) {}
  PlanCache& operator=(const PlanCache&) { return *this; }
  std::mutex mutex;
  std::vector<std::pair<std::vector<int64_t>, std::shared_ptr<void>>> plans;
};
} // namespace detail

// Conv2d with a BN folded in and an activation, as one primitive. Buffers "weight"
// [O, C/groups, kh, kw] and "bias" [O] (float32, the folded values); params as Conv2d's.
// forward(x) = act(conv(x) + bias); forward_residual(x, r) = act(conv(x) + bias + r).
class FusedConv2d : public nn::Module {
 public:
  // From a conv and the optional BN after it (folded here) and the activation.
  FusedConv2d(const nn::Conv2d& conv, const nn::BatchNormBase* bn, Activation act);
  Tensor forward(const Tensor& x) override;
  Tensor forward_residual(const Tensor& x, const Tensor& residual);
  Module& train(bool on = true) override; // tb::Error for on = true
  TB_MODULE(FusedConv2d)
  std::string extra_repr() const override;
  Conv2dParams params;
  Activation act;

 private:
  Tensor run(const Tensor& x, const Tensor& residual);
  detail::PlanCache cache_;
};

// A residual block as one unit: y = conv(body(x), shortcut(x)) where `conv` is a FusedConv2d
// whose residual add is a sum post-op (and whose activation comes after the add: ResNet's ReLU).
// Children "body" (a Sequential, possibly empty), "conv" (FusedConv2d) and, when the shortcut is
// not the identity, "shortcut" (ResNet's downsample, itself fused).
class FusedResidual : public nn::Module {
 public:
  FusedResidual(nn::ModulePtr body, std::shared_ptr<FusedConv2d> conv, nn::ModulePtr shortcut);
  Tensor forward(const Tensor& x) override;
  Module& train(bool on = true) override; // tb::Error for on = true
  TB_MODULE(FusedResidual)
};

} // namespace tb::infer
