// src/models/blocks.cpp — the building blocks of the zoo (declared in tb/models.h).
//
// Every block registers its children under torchvision's names and, in forward, looks them up
// by name (`call(*this, "conv1", x)`), so a child swapped with set_submodule is the one that runs
// and hooks on children fire. Joins are child modules too (`skip_add`, `skip_mul`, `cat`,
// `shuffle`, as torchvision's quantizable models name their FloatFunctionals), so observers and
// feature captures attach to residual adds like to any layer. They hold no tensors: state_dict
// keys stay torchvision's.
#include <tb/models.h>

#include <cmath>

namespace tb::nn {

namespace {

// Runs child `name` of `m` on its inputs through operator() (hooks included).
Tensor call(const Module& m, const std::string& name, const Tensor& x) {
  return (*m.child(name))(x);
}
Tensor call(const Module& m, const std::string& name, const Tensor& a, const Tensor& b) {
  return (*m.child(name))(a, b);
}

// A 1×1 conv without bias (the pointwise convs of every block).
ModulePtr conv1x1(int64_t in, int64_t out, int64_t stride = 1) {
  return std::make_shared<Conv2d>(Conv2dOptions{.in_channels = in, .out_channels = out,
                                                .kernel_size = 1, .stride = stride, .bias = false});
}
// A 3×3 depthwise conv without bias, padding 1.
ModulePtr depthwise3x3(int64_t channels, int64_t stride) {
  return std::make_shared<Conv2d>(Conv2dOptions{.in_channels = channels, .out_channels = channels,
                                                .kernel_size = 3, .stride = stride, .padding = 1,
                                                .groups = channels, .bias = false});
}

} // namespace

ModulePtr make_activation(Act a) {
  switch (a) {
    case Act::ReLU: return std::make_shared<ReLU>();
    case Act::ReLU6: return std::make_shared<ReLU6>();
    case Act::SiLU: return std::make_shared<SiLU>();
    case Act::Hardswish: return std::make_shared<Hardswish>();
    case Act::Hardsigmoid: return std::make_shared<Hardsigmoid>();
    case Act::Sigmoid: return std::make_shared<Sigmoid>();
    case Act::None: break;
  }
  throw Error("make_activation: Act::None has no module");
}

int64_t make_divisible(double v, int64_t divisor, std::optional<int64_t> min_value) {
  int64_t lo = min_value.value_or(divisor);
  int64_t r = std::max(lo, (int64_t)(v + divisor / 2.0) / divisor * divisor);
  if ((double)r < 0.9 * v) r += divisor;
  return r;
}

// ---- ConvBNAct ---------------------------------------------------------------------------------

ConvBNAct::ConvBNAct(const ConvBNActOptions& o) {
  int64_t padding = (o.kernel_size - 1) / 2 * o.dilation;
  push_back(std::make_shared<Conv2d>(Conv2dOptions{
      .in_channels = o.in_channels, .out_channels = o.out_channels, .kernel_size = o.kernel_size,
      .stride = o.stride, .padding = padding, .dilation = o.dilation, .groups = o.groups,
      .bias = false}));
  push_back(std::make_shared<BatchNorm2d>(o.out_channels, o.bn));
  if (o.act != Act::None) push_back(make_activation(o.act));
}

// ---- DepthwiseSeparable (MobileNetV1) ----------------------------------------------------------

DepthwiseSeparable::DepthwiseSeparable(int64_t in, int64_t out, int64_t stride, BatchNorm2dOptions bn) {
  register_module("dw", std::make_shared<ConvBNAct>(ConvBNActOptions{
      .in_channels = in, .out_channels = in, .stride = stride, .groups = in, .bn = bn}));
  register_module("pw", std::make_shared<ConvBNAct>(ConvBNActOptions{
      .in_channels = in, .out_channels = out, .kernel_size = 1, .bn = bn}));
}

Tensor DepthwiseSeparable::forward(const Tensor& x) {
  return call(*this, "pw", call(*this, "dw", x));
}

// ---- InvertedResidual (MobileNetV2) ------------------------------------------------------------

InvertedResidual::InvertedResidual(const InvertedResidualOptions& o) {
  int64_t in = o.in_channels, out = o.out_channels, stride = o.stride;
  TB_CHECK(in > 0 && out > 0, "InvertedResidual: in_channels ({}) and out_channels ({}) must be "
           "positive", in, out);
  TB_CHECK(stride == 1 || stride == 2, "InvertedResidual: stride must be 1 or 2, got {}", stride);
  TB_CHECK(o.expand_ratio >= 1, "InvertedResidual: expand_ratio must be >= 1, got {}",
           o.expand_ratio);
  int64_t hidden = in * o.expand_ratio;
  use_res_connect = stride == 1 && in == out;
  auto conv = std::make_shared<Sequential>();
  if (o.expand_ratio != 1)
    conv->push_back(std::make_shared<ConvBNAct>(ConvBNActOptions{
        .in_channels = in, .out_channels = hidden, .kernel_size = 1, .act = Act::ReLU6,
        .bn = o.bn}));
  conv->push_back(std::make_shared<ConvBNAct>(ConvBNActOptions{
      .in_channels = hidden, .out_channels = hidden, .stride = stride, .groups = hidden,
      .act = Act::ReLU6, .bn = o.bn}));
  conv->push_back(std::make_shared<Conv2d>(
      Conv2dOptions{.in_channels = hidden, .out_channels = out, .kernel_size = 1, .bias = false}));
  conv->push_back(std::make_shared<BatchNorm2d>(out, o.bn));
  register_module("conv", conv);
  if (use_res_connect) register_module("skip_add", std::make_shared<Add>());
}

Tensor InvertedResidual::forward(const Tensor& x) {
  Tensor y = call(*this, "conv", x);
  return use_res_connect ? call(*this, "skip_add", x, y) : y;
}

// ---- SqueezeExcitation -------------------------------------------------------------------------

SqueezeExcitation::SqueezeExcitation(int64_t channels, int64_t squeeze_channels, Act act,
                                     Act scale_act) {
  TB_CHECK(channels > 0 && squeeze_channels > 0,
           "SqueezeExcitation: channels ({}) and squeeze_channels ({}) must be positive", channels,
           squeeze_channels);
  register_module("avgpool", std::make_shared<AdaptiveAvgPool2d>(1));
  register_module("fc1", std::make_shared<Conv2d>(channels, squeeze_channels, 1));
  register_module("fc2", std::make_shared<Conv2d>(squeeze_channels, channels, 1));
  register_module("activation", make_activation(act));
  register_module("scale_activation", make_activation(scale_act));
  register_module("skip_mul", std::make_shared<Mul>());
}

// s = scale_act(fc2(act(fc1(mean_hw(x))))) [N, C, 1, 1]; y = x * s (broadcast over H, W).
Tensor SqueezeExcitation::forward(const Tensor& x) {
  Tensor s = call(*this, "avgpool", x);
  s = call(*this, "activation", call(*this, "fc1", s));
  s = call(*this, "scale_activation", call(*this, "fc2", s));
  return call(*this, "skip_mul", s, x);
}

// ---- ShuffleNetV2 unit -------------------------------------------------------------------------

ShuffleNetV2Unit::ShuffleNetV2Unit(int64_t in, int64_t out, int64_t stride) : stride(stride) {
  TB_CHECK(stride >= 1 && stride <= 3, "ShuffleNetV2Unit: stride must be in [1, 3], got {}",
           stride);
  int64_t b = out / 2;
  TB_CHECK(stride > 1 || in == 2 * b,
           "ShuffleNetV2Unit: with stride 1, in ({}) must equal out ({}) rounded down to even", in,
           out);
  auto branch1 = std::make_shared<Sequential>();
  if (stride > 1) {
    branch1->push_back(depthwise3x3(in, stride));
    branch1->push_back(std::make_shared<BatchNorm2d>(in));
    branch1->push_back(conv1x1(in, b));
    branch1->push_back(std::make_shared<BatchNorm2d>(b));
    branch1->push_back(std::make_shared<ReLU>());
  }
  auto branch2 = std::make_shared<Sequential>();
  branch2->push_back(conv1x1(stride > 1 ? in : b, b));
  branch2->push_back(std::make_shared<BatchNorm2d>(b));
  branch2->push_back(std::make_shared<ReLU>());
  branch2->push_back(depthwise3x3(b, stride));
  branch2->push_back(std::make_shared<BatchNorm2d>(b));
  branch2->push_back(conv1x1(b, b));
  branch2->push_back(std::make_shared<BatchNorm2d>(b));
  branch2->push_back(std::make_shared<ReLU>());
  register_module("branch1", branch1);
  register_module("branch2", branch2);
  register_module("cat", std::make_shared<Cat>(1));
  register_module("shuffle", std::make_shared<ChannelShuffle>(2));
}

Tensor ShuffleNetV2Unit::forward(const Tensor& x) {
  Tensor out;
  if (stride == 1) {
    auto halves = chunk(x, 2, 1);
    out = call(*this, "cat", halves[0], call(*this, "branch2", halves[1]));
  } else {
    out = call(*this, "cat", call(*this, "branch1", x), call(*this, "branch2", x));
  }
  return call(*this, "shuffle", out);
}

// ---- StochasticDepth ---------------------------------------------------------------------------

StochasticDepth::StochasticDepth(double p, std::string mode) : p(p), mode(std::move(mode)) {
  TB_CHECK(p >= 0.0 && p <= 1.0, "StochasticDepth: drop probability must be in [0, 1], got {}", p);
  TB_CHECK(this->mode == "row" || this->mode == "batch",
           "StochasticDepth: mode must be 'row' or 'batch', got '{}'", this->mode);
}

// noise ~ Bernoulli(1 - p) of shape [N, 1, 1, ...] ("row") or [1, 1, ...] ("batch"), divided by
// 1 - p so the expectation is x; y = x * noise.
Tensor StochasticDepth::forward(const Tensor& x) {
  if (!is_training() || p == 0.0) return x;
  check_defined("StochasticDepth", x, "input");
  check_floating("StochasticDepth", x);
  double survival = 1.0 - p;
  Shape size(x.dim(), 1);
  if (mode == "row" && x.dim() > 0) size[0] = x.size(0);
  Tensor noise = lt(rand(size), survival).to(x.dtype());
  if (survival > 0.0) noise = div(noise, survival);
  return mul(x, noise.to(x.device()));
}

std::string StochasticDepth::extra_repr() const { return fmt::format("p={}, mode={}", p, mode); }

// ---- MBConv ------------------------------------------------------------------------------------

MBConv::MBConv(const MBConvConfig& c) {
  TB_CHECK(c.stride == 1 || c.stride == 2, "MBConv: stride must be 1 or 2, got {}", c.stride);
  TB_CHECK(c.in > 0 && c.expanded > 0 && c.out > 0,
           "MBConv: channels must be positive, got in={}, expanded={}, out={}", c.in, c.expanded,
           c.out);
  use_res_connect = c.stride == 1 && c.in == c.out;
  auto block = std::make_shared<Sequential>();
  if (c.expanded != c.in)
    block->push_back(std::make_shared<ConvBNAct>(ConvBNActOptions{
        .in_channels = c.in, .out_channels = c.expanded, .kernel_size = 1, .act = c.act,
        .bn = c.bn}));
  block->push_back(std::make_shared<ConvBNAct>(ConvBNActOptions{
      .in_channels = c.expanded, .out_channels = c.expanded, .kernel_size = c.kernel,
      .stride = c.stride, .groups = c.expanded, .act = c.act, .bn = c.bn}));
  if (c.squeeze > 0)
    block->push_back(
        std::make_shared<SqueezeExcitation>(c.expanded, c.squeeze, c.se_act, c.se_scale_act));
  block->push_back(std::make_shared<ConvBNAct>(ConvBNActOptions{
      .in_channels = c.expanded, .out_channels = c.out, .kernel_size = 1, .act = Act::None,
      .bn = c.bn}));
  register_module("block", block);
  if (c.stochastic_depth_prob)
    register_module("stochastic_depth", std::make_shared<StochasticDepth>(*c.stochastic_depth_prob));
  if (use_res_connect) register_module("skip_add", std::make_shared<Add>());
}

Tensor MBConv::forward(const Tensor& x) {
  Tensor y = call(*this, "block", x);
  if (!use_res_connect) return y;
  if (has_child("stochastic_depth")) y = call(*this, "stochastic_depth", y);
  return call(*this, "skip_add", y, x);
}

// ---- BasicBlock / Bottleneck (ResNet) ----------------------------------------------------------

namespace {
ModulePtr conv3x3(int64_t in, int64_t out, int64_t stride) {
  return std::make_shared<Conv2d>(Conv2dOptions{.in_channels = in, .out_channels = out,
                                                .kernel_size = 3, .stride = stride, .padding = 1,
                                                .bias = false});
}
ModulePtr downsample_path(int64_t in, int64_t out, int64_t stride) {
  auto ds = std::make_shared<Sequential>();
  ds->push_back(conv1x1(in, out, stride));
  ds->push_back(std::make_shared<BatchNorm2d>(out));
  return ds;
}
} // namespace

BasicBlock::BasicBlock(int64_t inplanes, int64_t planes, int64_t stride, bool downsample) {
  TB_CHECK(downsample || (stride == 1 && inplanes == planes),
           "BasicBlock: stride {} or inplanes {} != planes {} needs downsample = true", stride,
           inplanes, planes);
  register_module("conv1", conv3x3(inplanes, planes, stride));
  register_module("bn1", std::make_shared<BatchNorm2d>(planes));
  register_module("relu", std::make_shared<ReLU>());
  register_module("conv2", conv3x3(planes, planes, 1));
  register_module("bn2", std::make_shared<BatchNorm2d>(planes));
  if (downsample) register_module("downsample", downsample_path(inplanes, planes, stride));
  register_module("skip_add", std::make_shared<Add>());
}

// y = relu(bn2(conv2(relu(bn1(conv1 x)))) + shortcut(x)).
Tensor BasicBlock::forward(const Tensor& x) {
  Tensor y = call(*this, "relu", call(*this, "bn1", call(*this, "conv1", x)));
  y = call(*this, "bn2", call(*this, "conv2", y));
  Tensor identity = has_child("downsample") ? call(*this, "downsample", x) : x;
  return call(*this, "relu", call(*this, "skip_add", y, identity));
}

Bottleneck::Bottleneck(int64_t inplanes, int64_t planes, int64_t stride, bool downsample) {
  int64_t outp = planes * expansion;
  TB_CHECK(downsample || (stride == 1 && inplanes == outp),
           "Bottleneck: stride {} or inplanes {} != 4*planes {} needs downsample = true", stride,
           inplanes, outp);
  register_module("conv1", conv1x1(inplanes, planes));
  register_module("bn1", std::make_shared<BatchNorm2d>(planes));
  register_module("conv2", conv3x3(planes, planes, stride));
  register_module("bn2", std::make_shared<BatchNorm2d>(planes));
  register_module("conv3", conv1x1(planes, outp));
  register_module("bn3", std::make_shared<BatchNorm2d>(outp));
  register_module("relu", std::make_shared<ReLU>());
  if (downsample) register_module("downsample", downsample_path(inplanes, outp, stride));
  register_module("skip_add", std::make_shared<Add>());
}

Tensor Bottleneck::forward(const Tensor& x) {
  Tensor y = call(*this, "relu", call(*this, "bn1", call(*this, "conv1", x)));
  y = call(*this, "relu", call(*this, "bn2", call(*this, "conv2", y)));
  y = call(*this, "bn3", call(*this, "conv3", y));
  Tensor identity = has_child("downsample") ? call(*this, "downsample", x) : x;
  return call(*this, "relu", call(*this, "skip_add", y, identity));
}

} // namespace tb::nn
