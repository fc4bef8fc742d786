// src/models/zoo.cpp — the reference architectures, as torchvision 0.14 defines them: the same
// children, names, order and shapes (so state_dict keys equal torchvision's), and the same
// initialisation. Small-input variants only change the stem (3×3 stride 1, `in_channels`) and
// drop the stem max-pool.
#include <tb/models.h>

#include <algorithm>
#include <functional>
#include <map>

namespace tb::models {

using namespace tb::nn;

namespace {

Tensor call(const Module& m, const std::string& name, const Tensor& x) {
  return (*m.child(name))(x);
}

// The 3×3 stem of the mobile nets: stride 2, or 1 for small inputs.
ModulePtr stem(const ModelOptions& o, int64_t out, Act act, BatchNorm2dOptions bn = {}) {
  return std::make_shared<ConvBNAct>(ConvBNActOptions{.in_channels = o.in_channels,
                                                      .out_channels = out,
                                                      .stride = o.small_input ? 1 : 2,
                                                      .act = act, .bn = bn});
}
// The last 1×1 ConvBNAct before the classifier.
ModulePtr pointwise(int64_t in, int64_t out, Act act, BatchNorm2dOptions bn = {}) {
  return std::make_shared<ConvBNAct>(ConvBNActOptions{.in_channels = in, .out_channels = out,
                                                      .kernel_size = 1, .act = act, .bn = bn});
}
// The 3×3 max-pool of the ResNet and ShuffleNet stems.
ModulePtr stem_maxpool() {
  return std::make_shared<MaxPool2d>(MaxPool2dOptions{.kernel_size = 3, .stride = 2, .padding = 1});
}

void check_options(const char* model, const ModelOptions& o) {
  TB_CHECK(o.num_classes > 0, "{}: num_classes must be positive, got {}", model, o.num_classes);
  TB_CHECK(o.in_channels > 0, "{}: in_channels must be positive, got {}", model, o.in_channels);
  TB_CHECK(o.width_mult > 0, "{}: width_mult must be positive, got {}", model, o.width_mult);
  TB_CHECK(!o.dropout || (*o.dropout >= 0 && *o.dropout < 1),
           "{}: dropout must be in [0, 1), got {}", model, o.dropout.value_or(0));
}

// ---- initialisation (torchvision's, per model family) ------------------------------------------

enum class LinearInit { Default, Normal001, UniformFanOut };

// Conv2d: kaiming_normal_(fan_out, relu), bias 0; BatchNorm: weight 1, bias 0 (already the
// default); Linear: per family (ResNet and ShuffleNet keep PyTorch's default).
void init_weights(Module& model, LinearInit linear, bool convs = true) {
  no_grad ng;
  model.apply([&](Module& m) {
    if (auto* c = dynamic_cast<Conv2d*>(&m); c && convs) {
      Tensor w = c->weight();
      kaiming_normal_(w, 0, "fan_out", "relu");
      if (Tensor b = c->bias(); b.defined()) b.zero_();
    } else if (auto* l = dynamic_cast<Linear*>(&m)) {
      Tensor w = l->weight(), b = l->bias();
      if (linear == LinearInit::Normal001) {
        normal_(w, 0.0, 0.01);
        if (b.defined()) b.zero_();
      } else if (linear == LinearInit::UniformFanOut) {
        double r = 1.0 / std::sqrt((double)l->out_features());
        uniform_(w, -r, r);
        if (b.defined()) b.zero_();
      }
    }
  });
}

// ---- ResNet ------------------------------------------------------------------------------------

// conv1 bn1 relu [maxpool] layer1..layer4 avgpool fc.
class ResNet : public Module {
 public:
  template <class Block>
  ResNet(Block* /*tag*/, const std::vector<int64_t>& layers, const ModelOptions& o,
         std::string name)
      : name_(std::move(name)) {
    check_options(name_.c_str(), o);
    // 7×7 stride 2 (3×3 stride 1 for small inputs)
    int64_t k = o.small_input ? 3 : 7;
    register_module("conv1", std::make_shared<Conv2d>(Conv2dOptions{
        .in_channels = o.in_channels, .out_channels = 64, .kernel_size = k,
        .stride = o.small_input ? 1 : 2, .padding = k / 2, .bias = false}));
    register_module("bn1", std::make_shared<BatchNorm2d>(64));
    register_module("relu", std::make_shared<ReLU>());
    if (!o.small_input) register_module("maxpool", stem_maxpool());
    int64_t inplanes = 64;
    for (size_t i = 0; i < 4; i++) {
      int64_t planes = 64 << i, stride = i == 0 ? 1 : 2;
      auto layer = std::make_shared<Sequential>();
      bool ds = stride != 1 || inplanes != planes * Block::expansion;
      layer->push_back(std::make_shared<Block>(inplanes, planes, stride, ds));
      inplanes = planes * Block::expansion;
      for (int64_t b = 1; b < layers[i]; b++)
        layer->push_back(std::make_shared<Block>(inplanes, planes, 1, false));
      register_module("layer" + std::to_string(i + 1), layer);
    }
    register_module("avgpool", std::make_shared<AdaptiveAvgPool2d>(1));
    register_module("fc", std::make_shared<Linear>(inplanes, o.num_classes));
    init_weights(*this, LinearInit::Default);
  }

  Tensor forward(const Tensor& input) override {
    Tensor x = call(*this, "relu", call(*this, "bn1", call(*this, "conv1", input)));
    if (has_child("maxpool")) x = call(*this, "maxpool", x);
    for (const char* l : {"layer1", "layer2", "layer3", "layer4"}) x = call(*this, l, x);
    x = flatten(call(*this, "avgpool", x), 1);
    return call(*this, "fc", x);
  }
  std::string type_name() const override { return name_; }
  ModulePtr shallow_copy() const override { return std::make_shared<ResNet>(*this); }

 private:
  std::string name_;
};

// ---- features -> global average pool -> classifier (MobileNets, EfficientNet) -----------------

// Children "features", optional "avgpool" (else the pool is functional, as torchvision's
// MobileNetV2), "classifier".
class FeaturesClassifier : public Module {
 public:
  explicit FeaturesClassifier(std::string name) : name_(std::move(name)) {}
  Tensor forward(const Tensor& input) override {
    Tensor x = call(*this, "features", input);
    x = has_child("avgpool") ? call(*this, "avgpool", x) : adaptive_avg_pool2d(x, 1, 1);
    return call(*this, "classifier", flatten(x, 1));
  }
  std::string type_name() const override { return name_; }
  ModulePtr shallow_copy() const override { return std::make_shared<FeaturesClassifier>(*this); }

 private:
  std::string name_;
};

ModulePtr dropout_linear(double p, int64_t in, int64_t classes) {
  auto c = std::make_shared<Sequential>();
  c->push_back(std::make_shared<Dropout>(p));
  c->push_back(std::make_shared<Linear>(in, classes));
  return c;
}

// ---- ShuffleNetV2 ------------------------------------------------------------------------------

// conv1 [maxpool] stage2 stage3 stage4 conv5 fc; global pool = mean over H, W.
class ShuffleNetV2 : public Module {
 public:
  ShuffleNetV2(const std::vector<int64_t>& repeats, const std::vector<int64_t>& channels,
               const ModelOptions& o, std::string name)
      : name_(std::move(name)) {
    check_options(name_.c_str(), o);
    int64_t in = channels[0];
    auto conv1 = std::make_shared<Sequential>();
    conv1->push_back(std::make_shared<Conv2d>(Conv2dOptions{
        .in_channels = o.in_channels, .out_channels = in, .kernel_size = 3,
        .stride = o.small_input ? 1 : 2, .padding = 1, .bias = false}));
    conv1->push_back(std::make_shared<BatchNorm2d>(in));
    conv1->push_back(std::make_shared<ReLU>());
    register_module("conv1", conv1);
    if (!o.small_input) register_module("maxpool", stem_maxpool());
    for (size_t s = 0; s < 3; s++) {
      auto stage = std::make_shared<Sequential>();
      int64_t out = channels[s + 1];
      stage->push_back(std::make_shared<ShuffleNetV2Unit>(in, out, 2));
      for (int64_t i = 1; i < repeats[s]; i++)
        stage->push_back(std::make_shared<ShuffleNetV2Unit>(out, out, 1));
      register_module("stage" + std::to_string(s + 2), stage);
      in = out;
    }
    auto conv5 = std::make_shared<Sequential>();
    conv5->push_back(std::make_shared<Conv2d>(Conv2dOptions{
        .in_channels = in, .out_channels = channels[4], .kernel_size = 1, .bias = false}));
    conv5->push_back(std::make_shared<BatchNorm2d>(channels[4]));
    conv5->push_back(std::make_shared<ReLU>());
    register_module("conv5", conv5);
    register_module("fc", std::make_shared<Linear>(channels[4], o.num_classes));
  }

  Tensor forward(const Tensor& input) override {
    Tensor x = call(*this, "conv1", input);
    if (has_child("maxpool")) x = call(*this, "maxpool", x);
    for (const char* s : {"stage2", "stage3", "stage4", "conv5"}) x = call(*this, s, x);
    return call(*this, "fc", mean(x, {2, 3}));
  }
  std::string type_name() const override { return name_; }
  ModulePtr shallow_copy() const override { return std::make_shared<ShuffleNetV2>(*this); }

 private:
  std::string name_;
};

} // namespace

// ---- factories ---------------------------------------------------------------------------------

ModulePtr resnet18(const ModelOptions& o) {
  return std::make_shared<ResNet>((BasicBlock*)nullptr, std::vector<int64_t>{2, 2, 2, 2}, o,
                                  "ResNet18");
}

ModulePtr resnet50(const ModelOptions& o) {
  return std::make_shared<ResNet>((Bottleneck*)nullptr, std::vector<int64_t>{3, 4, 6, 3}, o,
                                  "ResNet50");
}

// MobileNetV1 (Howard et al. 2017): stem 3×3 conv stride 2, 13 depthwise-separable blocks,
// global pool, classifier. Not in torchvision; keys: features.0.{0,1} (stem), features.i.dw.*,
// features.i.pw.*, classifier.1.* (classifier.0 is Dropout). Widths are scaled by width_mult and
// rounded as MobileNetV2's (_make_divisible by 8).
ModulePtr mobilenet_v1(const ModelOptions& o) {
  check_options("mobilenet_v1", o);
  const int64_t cfg[13][2] = {{64, 1},  {128, 2}, {128, 1}, {256, 2}, {256, 1},
                              {512, 2}, {512, 1}, {512, 1}, {512, 1}, {512, 1},
                              {512, 1}, {1024, 2}, {1024, 1}};
  auto w = [&](int64_t c) { return make_divisible(c * o.width_mult, 8); };
  auto features = std::make_shared<Sequential>();
  int64_t in = w(32);
  features->push_back(stem(o, in, Act::ReLU));
  for (auto& [c, s] : cfg) {
    features->push_back(std::make_shared<DepthwiseSeparable>(in, w(c), s));
    in = w(c);
  }
  auto net = std::make_shared<FeaturesClassifier>("MobileNetV1");
  net->register_module("features", features);
  net->register_module("avgpool", std::make_shared<AdaptiveAvgPool2d>(1));
  net->register_module("classifier", dropout_linear(o.dropout.value_or(0.2), in, o.num_classes));
  init_weights(*net, LinearInit::Normal001);
  return net;
}

ModulePtr mobilenet_v2(const ModelOptions& o) {
  check_options("mobilenet_v2", o);
  // t (expansion), c (out channels), n (repeats), s (stride of the first)
  const int64_t cfg[7][4] = {{1, 16, 1, 1},  {6, 24, 2, 2},  {6, 32, 3, 2},  {6, 64, 4, 2},
                             {6, 96, 3, 1},  {6, 160, 3, 2}, {6, 320, 1, 1}};
  int64_t in = make_divisible(32 * o.width_mult, 8);
  int64_t last = make_divisible(1280 * std::max(1.0, o.width_mult), 8);
  auto features = std::make_shared<Sequential>();
  features->push_back(stem(o, in, Act::ReLU6));
  for (auto& [t, c, n, s] : cfg) {
    int64_t out = make_divisible(c * o.width_mult, 8);
    for (int64_t i = 0; i < n; i++) {
      features->push_back(std::make_shared<InvertedResidual>(InvertedResidualOptions{
          .in_channels = in, .out_channels = out, .stride = i == 0 ? s : 1, .expand_ratio = t}));
      in = out;
    }
  }
  features->push_back(pointwise(in, last, Act::ReLU6));
  auto net = std::make_shared<FeaturesClassifier>("MobileNetV2");
  net->register_module("features", features);
  net->register_module("classifier", dropout_linear(o.dropout.value_or(0.2), last, o.num_classes));
  init_weights(*net, LinearInit::Normal001);
  return net;
}

ModulePtr mobilenet_v3_small(const ModelOptions& o) {
  check_options("mobilenet_v3_small", o);
  const BatchNorm2dOptions bn{.eps = 1e-3, .momentum = 0.01};
  struct Cfg {
    int64_t in, kernel, expanded, out;
    bool se, hs;
    int64_t stride;
  };
  const Cfg cfg[] = {{16, 3, 16, 16, true, false, 2},   {16, 3, 72, 24, false, false, 2},
                     {24, 3, 88, 24, false, false, 1},  {24, 5, 96, 40, true, true, 2},
                     {40, 5, 240, 40, true, true, 1},   {40, 5, 240, 40, true, true, 1},
                     {40, 5, 120, 48, true, true, 1},   {48, 5, 144, 48, true, true, 1},
                     {48, 5, 288, 96, true, true, 2},   {96, 5, 576, 96, true, true, 1},
                     {96, 5, 576, 96, true, true, 1}};
  auto features = std::make_shared<Sequential>();
  features->push_back(stem(o, 16, Act::Hardswish, bn));
  for (auto& c : cfg) {
    MBConvConfig m;
    m.in = c.in, m.expanded = c.expanded, m.out = c.out, m.kernel = c.kernel, m.stride = c.stride;
    m.squeeze = c.se ? make_divisible(c.expanded / 4, 8) : 0;
    m.act = c.hs ? Act::Hardswish : Act::ReLU;
    m.se_act = Act::ReLU, m.se_scale_act = Act::Hardsigmoid;
    m.bn = bn; // no stochastic depth in MobileNetV3
    features->push_back(std::make_shared<MBConv>(m));
  }
  features->push_back(pointwise(96, 576, Act::Hardswish, bn));
  auto classifier = std::make_shared<Sequential>();
  classifier->push_back(std::make_shared<Linear>(576, 1024));
  classifier->push_back(std::make_shared<Hardswish>());
  classifier->push_back(std::make_shared<Dropout>(o.dropout.value_or(0.2)));
  classifier->push_back(std::make_shared<Linear>(1024, o.num_classes));
  auto net = std::make_shared<FeaturesClassifier>("MobileNetV3Small");
  net->register_module("features", features);
  net->register_module("avgpool", std::make_shared<AdaptiveAvgPool2d>(1));
  net->register_module("classifier", classifier);
  init_weights(*net, LinearInit::Normal001);
  return net;
}

ModulePtr shufflenet_v2(double width, const ModelOptions& o) {
  if (width == 0.5)
    return std::make_shared<ShuffleNetV2>(std::vector<int64_t>{4, 8, 4},
                                          std::vector<int64_t>{24, 48, 96, 192, 1024}, o,
                                          "ShuffleNetV2x0_5");
  if (width == 1.0)
    return std::make_shared<ShuffleNetV2>(std::vector<int64_t>{4, 8, 4},
                                          std::vector<int64_t>{24, 116, 232, 464, 1024}, o,
                                          "ShuffleNetV2x1_0");
  throw Error(fmt::format("shufflenet_v2: width must be 0.5 or 1.0, got {}", width));
}
ModulePtr shufflenet_v2_x0_5(const ModelOptions& o) { return shufflenet_v2(0.5, o); }
ModulePtr shufflenet_v2_x1_0(const ModelOptions& o) { return shufflenet_v2(1.0, o); }

ModulePtr efficientnet_b0(const ModelOptions& o) {
  check_options("efficientnet_b0", o);
  TB_CHECK(o.stochastic_depth_prob >= 0 && o.stochastic_depth_prob <= 1,
           "efficientnet_b0: stochastic_depth_prob must be in [0, 1], got {}",
           o.stochastic_depth_prob);
  // expand ratio, kernel, stride, in, out, layers
  const int64_t cfg[7][6] = {{1, 3, 1, 32, 16, 1},   {6, 3, 2, 16, 24, 2},   {6, 5, 2, 24, 40, 2},
                             {6, 3, 2, 40, 80, 3},   {6, 5, 1, 80, 112, 3},  {6, 5, 2, 112, 192, 4},
                             {6, 3, 1, 192, 320, 1}};
  int64_t total_blocks = 0;
  for (auto& c : cfg) total_blocks += c[5];
  auto features = std::make_shared<Sequential>();
  features->push_back(stem(o, 32, Act::SiLU));
  int64_t block_id = 0;
  for (auto& [t, k, s, in, out, n] : cfg) {
    auto stage = std::make_shared<Sequential>();
    for (int64_t i = 0; i < n; i++) {
      MBConvConfig m;
      m.in = i == 0 ? in : out, m.out = out, m.kernel = k, m.stride = i == 0 ? s : 1;
      m.expanded = make_divisible((double)(m.in * t), 8);
      m.squeeze = std::max<int64_t>(1, m.in / 4);
      m.act = m.se_act = Act::SiLU, m.se_scale_act = Act::Sigmoid;
      // linearly increasing drop rate: the deeper the block, the more often it is skipped
      m.stochastic_depth_prob = o.stochastic_depth_prob * (double)block_id / (double)total_blocks;
      stage->push_back(std::make_shared<MBConv>(m));
      block_id++;
    }
    features->push_back(stage);
  }
  features->push_back(pointwise(320, 1280, Act::SiLU));
  auto net = std::make_shared<FeaturesClassifier>("EfficientNetB0");
  net->register_module("features", features);
  net->register_module("avgpool", std::make_shared<AdaptiveAvgPool2d>(1));
  net->register_module("classifier", dropout_linear(o.dropout.value_or(0.2), 1280, o.num_classes));
  init_weights(*net, LinearInit::UniformFanOut);
  return net;
}

// ---- the main job's CNN ------------------------------------------------------------------------

// 28x28 -> conv 32w -> pool 14x14 -> conv 64w -> pool 7x7 -> 7*7*64w -> 128 -> num_classes.
ModulePtr cnn(const ModelOptions& o) {
  check_options("cnn", o);
  auto conv3x3 = [](int64_t in, int64_t out) {
    return std::make_shared<Conv2d>(
        Conv2dOptions{.in_channels = in, .out_channels = out, .kernel_size = 3, .padding = 1});
  };
  int64_t c1 = std::max<int64_t>(1, std::llround(32 * o.width_mult));
  int64_t c2 = std::max<int64_t>(1, std::llround(64 * o.width_mult));
  auto net = std::make_shared<Sequential>();
  net->push_back(conv3x3(o.in_channels, c1));
  net->push_back(std::make_shared<BatchNorm2d>(c1));
  net->push_back(std::make_shared<ReLU>());
  net->push_back(std::make_shared<MaxPool2d>(2));
  net->push_back(conv3x3(c1, c2));
  net->push_back(std::make_shared<BatchNorm2d>(c2));
  net->push_back(std::make_shared<ReLU>());
  net->push_back(std::make_shared<MaxPool2d>(2));
  net->push_back(std::make_shared<Flatten>());
  net->push_back(std::make_shared<Linear>(c2 * 7 * 7, 128));
  net->push_back(std::make_shared<ReLU>());
  net->push_back(std::make_shared<Linear>(128, o.num_classes));
  return net;
}

// ---- by name -----------------------------------------------------------------------------------

namespace {
const std::vector<std::pair<std::string, std::function<ModulePtr(const ModelOptions&)>>>&
registry() {
  static const std::vector<std::pair<std::string, std::function<ModulePtr(const ModelOptions&)>>>
      r = {{"resnet18", resnet18},
           {"resnet50", resnet50},
           {"mobilenet_v1", mobilenet_v1},
           {"mobilenet_v2", mobilenet_v2},
           {"mobilenet_v3_small", mobilenet_v3_small},
           {"shufflenet_v2_x0_5", shufflenet_v2_x0_5},
           {"shufflenet_v2_x1_0", shufflenet_v2_x1_0},
           {"efficientnet_b0", efficientnet_b0}};
  return r;
}
} // namespace

std::vector<std::string> model_names() {
  std::vector<std::string> out;
  for (auto& [n, f] : registry()) out.push_back(n);
  return out;
}

ModulePtr create(const std::string& name, const ModelOptions& o) {
  for (auto& [n, f] : registry())
    if (n == name) return f(o);
  if (name == "cnn") return cnn(o);
  std::string known;
  for (auto& n : model_names()) known += n + ", ";
  known += "cnn";
  throw Error(fmt::format("models::create: unknown model '{}'; known: {}", name, known));
}

} // namespace tb::models
