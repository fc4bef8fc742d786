// tb/models.h — the model zoo: efficient-CNN building blocks (tb::nn), the reference
// architectures (tb::models) with torchvision's parameter names, and a per-layer cost summary.
//
//   auto net = tb::models::create("mobilenet_v2", {.num_classes = 10, .small_input = true,
//                                                  .in_channels = 1});
//   tb::Tensor logits = (*net)(x);                         // x [N, 1, 28, 28] -> [N, 10]
//   std::cout << tb::summary(*net, {1, 1, 28, 28}).str();  // per-layer table with totals
//
// State-dict keys, shapes and order equal torchvision 0.14's for the same model (e.g.
// 'features.1.conv.0.0.weight', 'layer1.0.bn1.running_mean', 'fc.bias'), so its checkpoints load
// by name (tools/convert_torch_weights.py writes them as safetensors). Blocks look their children
// up by name in forward, so set_module (fusion, quantisation) swaps a child for real.
//
// Costs below: k kernel size, H×W output size, C channels; "MACs" are multiply-adds per image.
#pragma once

#include <tb/nn.h>

#include <optional>
#include <string>
#include <vector>

namespace tb::nn {

// Activation choice for the blocks (None: no activation module is created).
enum class Act { None, ReLU, ReLU6, SiLU, Hardswish, Hardsigmoid, Sigmoid };
ModulePtr make_activation(Act a); // tb::Error for Act::None


// ConvBNAct (torchvision's Conv2dNormActivation): Conv2d without bias ("0"), BatchNorm2d ("1"),
// activation ("2", absent for Act::None); padding (k-1)/2*dilation keeps H×W at stride 1.
// The unit every mobile net is built from. Cost: Cin/groups*Cout*k*k weights, as many MACs per
// output pixel; BN folds into the conv at inference.
struct ConvBNActOptions {
  int64_t in_channels = 0, out_channels = 0;
  int64_t kernel_size = 3, stride = 1, groups = 1, dilation = 1;
  Act act = Act::ReLU;
  BatchNorm2dOptions bn = {}; // torchvision's MobileNetV3 uses eps 1e-3, momentum 0.01
};
class ConvBNAct : public Sequential {
 public:
  // The common case: stride 1, groups 1, ReLU.
  ConvBNAct(int64_t in, int64_t out, int64_t kernel_size = 3)
      : ConvBNAct(ConvBNActOptions{.in_channels = in, .out_channels = out,
                                   .kernel_size = kernel_size}) {}
  // E.g. a depthwise 3×3 stride 2 with ReLU6:
  //   ConvBNAct({.in_channels = c, .out_channels = c, .stride = 2, .groups = c, .act = Act::ReLU6})
  explicit ConvBNAct(const ConvBNActOptions& o);
  TB_MODULE(ConvBNAct)
};

// DepthwiseSeparable (MobileNetV1): a 3×3 depthwise conv (one filter per channel, spatial
// mixing) then a 1×1 pointwise conv (channel mixing), each with BN + ReLU; children "dw", "pw".
// A full 3×3 conv costs 9*Cin*Cout MACs per pixel; this costs 9*Cin + Cin*Cout, about 8-9× less
// for Cout >= 64, with 9*Cin + Cin*Cout weights. The stride sits on the depthwise conv.
class DepthwiseSeparable : public Module {
 public:
  DepthwiseSeparable(int64_t in, int64_t out, int64_t stride = 1, BatchNorm2dOptions bn = {});
  Tensor forward(const Tensor& x) override;
  TB_MODULE(DepthwiseSeparable)
};

// InvertedResidual (MobileNetV2): 1×1 expansion to t*Cin channels (ReLU6; skipped when t = 1),
// 3×3 depthwise (ReLU6), then a LINEAR 1×1 projection back to a narrow Cout (no activation: ReLU
// in a low-dimensional space destroys information). The residual joins the narrow ends when
// stride = 1 and Cin = Cout. Child "conv" as torchvision. Cost per output pixel, hidden h = t*Cin:
// Cin*h + 9*h + h*Cout MACs; the wide tensor exists only inside the block.
struct InvertedResidualOptions {
  int64_t in_channels = 0, out_channels = 0;
  int64_t stride = 1;
  int64_t expand_ratio = 0; // t; must be set (>= 1; MobileNetV2 uses 1 and 6)
  BatchNorm2dOptions bn = {}; // torchvision's MobileNetV3 uses eps 1e-3, momentum 0.01
};
class InvertedResidual : public Module {
 public:
  explicit InvertedResidual(const InvertedResidualOptions& o);
  Tensor forward(const Tensor& x) override;
  TB_MODULE(InvertedResidual)
  bool use_res_connect;
};

// SqueezeExcitation (torchvision's): s = scale_act(fc2(act(fc1(avgpool(x))))), y = x * s.
// Global pooling "squeezes" each channel to one number; two 1×1 convs (C -> S -> C, with bias,
// names 'fc1', 'fc2') learn per-channel gates that re-weight the channels. Cost: 2*C*S + C + S
// weights and 2*C*S MACs per image, negligible against the convs (HW times fewer).
class SqueezeExcitation : public Module {
 public:
  SqueezeExcitation(int64_t channels, int64_t squeeze_channels, Act act = Act::ReLU,
                    Act scale_act = Act::Sigmoid);
  Tensor forward(const Tensor& x) override;
  TB_MODULE(SqueezeExcitation)
};

// ChannelShuffle and channel_shuffle, which ShuffleNetV2Unit uses, are in tb/nn.h (PyTorch's
// nn.ChannelShuffle; the quantization layer gives it an integer twin).

// ShuffleNetV2 unit (torchvision's shufflenetv2.InvertedResidual). stride 1: split the channels in
// halves, keep one, run the other through branch2 (1×1, 3×3 depthwise, 1×1), concat, shuffle.
// stride 2: both halves see the full input (branch1: 3×3 depthwise stride 2 + 1×1; branch2 as
// above with stride 2), so channels double while H×W halve. Equal in/out widths of the 1×1 convs
// and no grouped 1×1 keep memory traffic low (the paper's guidelines). Children "branch1" (empty
// Sequential at stride 1) and "branch2". Cost per pixel, b = Cout/2: about 2*b*b + 9*b MACs.
class ShuffleNetV2Unit : public Module {
 public:
  ShuffleNetV2Unit(int64_t in, int64_t out, int64_t stride);
  Tensor forward(const Tensor& x) override;
  TB_MODULE(ShuffleNetV2Unit)
  int64_t stride;
};

// StochasticDepth (torchvision.ops, mode "row"): in training, each sample's residual branch is
// dropped with probability p and the survivors are scaled by 1/(1-p); identity in eval mode.
// A network trained this way behaves like an ensemble of shallower ones. No parameters.
class StochasticDepth : public Module {
 public:
  explicit StochasticDepth(double p, std::string mode = "row");
  Tensor forward(const Tensor& x) override;
  TB_MODULE(StochasticDepth)
  std::string extra_repr() const override;
  double p;
  std::string mode; // "row" (per sample) or "batch" (whole batch)
};

// MBConv (EfficientNet; also MobileNetV3's block): [1×1 expansion] -> k×k depthwise -> [SE] ->
// linear 1×1 projection, residual when stride = 1 and Cin = Cout. Child "block" (Sequential of
// ConvBNAct / SqueezeExcitation) and, for EfficientNet, "stochastic_depth" on the residual branch.
// Cost per output pixel as InvertedResidual with k*k instead of 9, plus the SE's per-image cost.
struct MBConvConfig {
  int64_t in = 0, expanded = 0, out = 0; // channels (expanded == in: no expansion conv)
  int64_t kernel = 3, stride = 1;
  int64_t squeeze = 0;                   // SE squeeze channels; 0: no SE
  Act act = Act::SiLU;                   // activation of the expansion and depthwise convs
  Act se_act = Act::SiLU, se_scale_act = Act::Sigmoid;
  std::optional<double> stochastic_depth_prob; // nullopt: no StochasticDepth child (MobileNetV3)
  BatchNorm2dOptions bn;
};
class MBConv : public Module {
 public:
  explicit MBConv(const MBConvConfig& c);
  Tensor forward(const Tensor& x) override;
  TB_MODULE(MBConv)
  bool use_res_connect;
};

// BasicBlock (ResNet-18/34): two 3×3 convs with BN (ReLU between and after the add) and an
// identity shortcut; "downsample" (1×1 conv stride s + BN) matches shapes when stride or width
// change. Shortcuts let gradients skip layers, so very deep nets train. Cost: 9*Cin*C + 9*C*C
// weights and MACs per output pixel. Children conv1 bn1 relu conv2 bn2 [downsample].
class BasicBlock : public Module {
 public:
  static constexpr int64_t expansion = 1;
  BasicBlock(int64_t inplanes, int64_t planes, int64_t stride = 1, bool downsample = false);
  Tensor forward(const Tensor& x) override;
  TB_MODULE(BasicBlock)
};

// Bottleneck (ResNet-50+, torchvision v1.5: stride on the 3×3): 1×1 reduce to C, 3×3 at C,
// 1×1 expand to 4C, shortcut as BasicBlock. Per output pixel Cin*C + 9*C*C + C*4C MACs: about
// the cost of a BasicBlock at C while the residual stream is 4× wider. Children conv1 bn1 conv2
// bn2 conv3 bn3 relu [downsample].
class Bottleneck : public Module {
 public:
  static constexpr int64_t expansion = 4;
  Bottleneck(int64_t inplanes, int64_t planes, int64_t stride = 1, bool downsample = false);
  Tensor forward(const Tensor& x) override;
  TB_MODULE(Bottleneck)
};

// torchvision's _make_divisible: round v to the nearest multiple of divisor (at least
// min_value, default divisor) without going below 90% of v.
int64_t make_divisible(double v, int64_t divisor = 8, std::optional<int64_t> min_value = {});

} // namespace tb::nn

namespace tb::models {

struct ModelOptions {
  int64_t num_classes = 1000;
  // Small inputs (Fashion-MNIST 28×28, CIFAR 32×32): the stem conv becomes 3×3 stride 1 and the
  // stem max-pool (ResNet, ShuffleNet) is dropped; everything else (names, later strides) stays.
  bool small_input = false;
  int64_t in_channels = 3;
  double width_mult = 1.0;        // mobilenet_v1 / mobilenet_v2 / cnn only
  std::optional<double> dropout;  // classifier dropout; nullopt: the model's default (0.2)
  double stochastic_depth_prob = 0.2; // efficientnet_b0 (torchvision's default)
};

using nn::ModulePtr;

ModulePtr resnet18(const ModelOptions& o = {});
ModulePtr resnet50(const ModelOptions& o = {});
ModulePtr mobilenet_v1(const ModelOptions& o = {}); // not in torchvision: keys are ours (below)
ModulePtr mobilenet_v2(const ModelOptions& o = {});
ModulePtr mobilenet_v3_small(const ModelOptions& o = {});
ModulePtr shufflenet_v2(double width, const ModelOptions& o = {}); // width 0.5 or 1.0
ModulePtr shufflenet_v2_x0_5(const ModelOptions& o = {});
ModulePtr shufflenet_v2_x1_0(const ModelOptions& o = {});
ModulePtr efficientnet_b0(const ModelOptions& o = {});

// The main job's Fashion-MNIST CNN (the one examples/train_fashion_mnist.cpp,
// quantize_fashion_mnist.cpp and prune_fashion_mnist.cpp train), defined once here. A Sequential,
// so its state_dict keys are "0.weight" ... "11.bias" as in those examples' checkpoints:
//   0 Conv2d(in_channels, 32, 3, padding 1)  1 BatchNorm2d(32)  2 ReLU  3 MaxPool2d(2)
//   4 Conv2d(32, 64, 3, padding 1)           5 BatchNorm2d(64)  6 ReLU  7 MaxPool2d(2)
//   8 Flatten  9 Linear(64*7*7, 128)  10 ReLU  11 Linear(128, num_classes)
// Input [N, in_channels, 28, 28]; PyTorch's default initialisation; 421,834 parameters and about
// 4.2M multiply-adds per image (10 classes, 1 channel). The main job's model is
// cnn({.num_classes = 10, .in_channels = 1}); create("cnn", o) passes o through. width_mult scales
// the two convs (round(32w), round(64w)): 0.25 is the distillation example's 8/16-channel student;
// small_input and dropout do not apply.
ModulePtr cnn(const ModelOptions& o);

// Names create() knows: resnet18 resnet50 mobilenet_v1 mobilenet_v2 mobilenet_v3_small
// shufflenet_v2_x0_5 shufflenet_v2_x1_0 efficientnet_b0.
std::vector<std::string> model_names();
// Builds a model by name (one of model_names(), or "cnn" for the CNN above, which model_names()
// leaves out: it only takes 28×28 inputs); tb::Error listing the known names otherwise.
ModulePtr create(const std::string& name, const ModelOptions& o = {});

} // namespace tb::models

namespace tb {

// One row per call of a leaf module (a module without children) during the summary's forward.
struct SummaryRow {
  std::string name;  // dotted path ("features.1.conv.0.0")
  std::string type;  // type_name()
  Shape output_shape;
  int64_t params = 0;     // the module's own parameters (0 on repeated calls of the same module)
  int64_t mult_adds = 0;  // for the whole batch; see summary()
};
struct ModelSummary {
  std::vector<SummaryRow> rows;
  Shape input_shape;
  int64_t total_params = 0, trainable_params = 0;
  int64_t total_mult_adds = 0;
  std::string str() const; // the table with totals, torchinfo-style
};

// Runs one forward pass (eval mode, no_grad; the training flag is restored) on zeros of
// `input_shape` with forward hooks on every leaf module and tabulates them. Multiply-adds (for
// the whole batch, as torchinfo): Conv2d Cout*Ho*Wo*(Cin/groups)*kh*kw per image; Linear
// in*out per row; everything else (BN, activations, pooling, adds) counts 0 — these are what
// papers report as "MACs"/"FLOPs" (MobileNetV2 300M, ResNet-18 1.8G). Params: all parameters.
ModelSummary summary(nn::Module& model, const Shape& input_shape, TensorOptions o = {});

} // namespace tb
