// tb::infer: the fused inference conv (oneDNN with post-ops) against the reference composition
// on many geometries, its plan cache, and optimize_for_inference on every zoo model and the CNN
// (outputs equal the original eval model's; BN, dropout and the residual adds really gone), the
// original left untouched, eval-only, and bad input.
#include "gradcheck.h"

#include <tb/infer.h>
#include <tb/models.h>

#include "kernels/conv_infer.h"
#include "kernels/cpu/onednn_common.h"

using namespace tb;
using tbtest::check_error;
using tbtest::max_abs_diff;

namespace {

Conv2dParams params(int64_t stride, int64_t pad, int64_t dilation, int64_t groups) {
  Conv2dParams p;
  p.stride_h = p.stride_w = stride;
  p.pad_h = p.pad_w = pad;
  p.dilation_h = p.dilation_w = dilation;
  p.groups = groups;
  return p;
}

struct KernelsScope {
  CpuKernels prev = cpu_kernels();
  explicit KernelsScope(CpuKernels k) { set_cpu_kernels(k); }
  ~KernelsScope() { set_cpu_kernels(prev); }
};

// The unfused composition through the public ops: act(conv2d(x, w, b) + r).
Tensor composed(const Tensor& x, const Tensor& w, const Tensor& b, const Conv2dParams& p,
                infer::Activation a, const Tensor& r) {
  Tensor y = conv2d(x, w, b, p);
  if (r.defined()) y = add(y, r);
  switch (a) {
    case infer::Activation::None: return y;
    case infer::Activation::ReLU: return relu(y);
    case infer::Activation::ReLU6: return relu6(y);
    case infer::Activation::Hardswish: return hardswish(y);
    case infer::Activation::SiLU: return silu(y);
  }
  return y;
}

// Relative max error, as tests/test_backend_ops.cpp: max |got - want| / (1 + max |want|).
double rel_err(const Tensor& got, const Tensor& want) {
  double m = 0;
  for (double v : want.to_vector()) m = std::max(m, std::abs(v));
  return max_abs_diff(got, want) / (1 + m);
}

// Non-trivial BN statistics and affine parameters everywhere, so folding is really exercised
// (fresh models have mean 0, var 1, gamma 1, beta 0).
void randomize_bn(nn::Module& m) {
  no_grad ng;
  for (auto* mod : m.modules())
    if (auto* bn = dynamic_cast<nn::BatchNormBase*>(mod)) {
      int64_t c = bn->num_features();
      bn->running_mean().copy_(mul(randn({c}), 0.1));
      bn->running_var().copy_(add(rand({c}), 0.5));
      if (bn->affine()) {
        bn->weight().copy_(add(rand({c}), 0.5));
        bn->bias().copy_(mul(randn({c}), 0.1));
      }
    }
}

int64_t count_type(nn::Module& m, const std::string& type) {
  int64_t n = 0;
  for (auto* mod : m.modules()) n += mod->type_name() == type;
  return n;
}

} // namespace

TEST_SUITE("infer") {

TEST_CASE("fused_conv2d: fast (oneDNN post-ops) = reference = the composed ops") {
  struct Case {
    Shape x, w;
    Conv2dParams p;
    bool bias, residual, nhwc;
    infer::Activation act;
  };
  using A = infer::Activation;
  std::vector<Case> cases = {
      {{2, 3, 9, 7}, {5, 3, 3, 3}, params(1, 1, 1, 1), true, false, false, A::ReLU},
      {{1, 8, 11, 11}, {8, 1, 3, 3}, params(2, 1, 1, 8), false, false, true, A::ReLU6},  // dw
      {{2, 6, 8, 8}, {9, 2, 3, 3}, params(1, 2, 2, 3), true, false, false, A::Hardswish}, // groups
      {{3, 16, 5, 5}, {16, 16, 1, 1}, params(1, 0, 1, 1), false, true, true, A::None},   // proj+add
      {{1, 4, 7, 9}, {4, 4, 3, 3}, params(1, 1, 1, 1), true, true, false, A::ReLU},      // resnet
      {{2, 5, 6, 6}, {7, 5, 5, 5}, params(1, 2, 1, 1), true, false, true, A::SiLU},
      {{1, 3, 13, 13}, {4, 3, 3, 3}, params(3, 0, 1, 1), false, false, false, A::None},
      {{2, 12, 6, 6}, {12, 1, 5, 5}, params(1, 2, 1, 12), true, true, true, A::SiLU},
  };
  for (size_t i = 0; i < cases.size(); i++) {
    const Case& c = cases[i];
    CAPTURE(i);
    Tensor x = mul(randn(c.x), 3.0);
    if (c.nhwc) x = x.contiguous_channels_last();
    Tensor w = randn(c.w), b = c.bias ? randn({c.w[0]}) : Tensor();
    // every branch of the activations is exercised: pre-activations below -3 and above 6
    Tensor pre = composed(x, w, b, c.p, infer::Activation::None, Tensor());
    CHECK(min(pre).item() < -3.5);
    CHECK(max(pre).item() > 6.5);
    Tensor want = composed(x, w, b, c.p, c.act, Tensor());
    Tensor r = c.residual ? mul(randn(want.shape()), 2.0) : Tensor();
    if (c.residual) want = composed(x, w, b, c.p, c.act, r);
    Tensor fast = infer::fused_conv2d(x, w, b, c.p, c.act, r);
    Tensor ref;
    {
      KernelsScope k(CpuKernels::Reference);
      ref = infer::fused_conv2d(x, w, b, c.p, c.act, r);
    }
    CHECK(fast.shape() == want.shape());
    CHECK(fast.is_channels_last());
    CHECK(rel_err(ref, want) < 1e-5);
    CHECK(rel_err(fast, ref) < 1e-5);
  }
}

TEST_CASE("conv_infer: every oneDNN implementation the cpu table can pick equals the reference") {
  namespace k = tb::kernels;
  struct Case { int64_t N, C, H, W, O, KH, stride, pad, groups; bool residual; k::PostAct act; };
  std::vector<Case> cases = {
      {1, 16, 7, 7, 32, 3, 1, 1, 1, true, k::PostAct::ReLU},      // a ResNet block's tail
      {1, 32, 9, 9, 32, 3, 2, 1, 32, false, k::PostAct::ReLU6},   // depthwise stride 2
      {2, 24, 6, 6, 48, 1, 1, 0, 1, false, k::PostAct::Hardswish}, // pointwise
      {1, 3, 15, 15, 8, 7, 2, 3, 1, false, k::PostAct::SiLU},     // a 7x7 stem
  };
  for (const Case& c : cases) {
    k::ConvInferDesc d;
    d.g = {.N = c.N, .C = c.C, .H = c.H, .W = c.W, .O = c.O, .KH = c.KH, .KW = c.KH};
    d.g.stride_h = d.g.stride_w = c.stride;
    d.g.pad_h = d.g.pad_w = c.pad;
    d.g.groups = c.groups;
    d.g.OH = (c.H + 2 * c.pad - c.KH) / c.stride + 1;
    d.g.OW = (c.W + 2 * c.pad - c.KH) / c.stride + 1;
    d.xs = k::nhwc_strides(c.C, c.H, c.W);
    d.ys = k::nhwc_strides(c.O, d.g.OH, d.g.OW);
    d.residual = c.residual;
    d.act = c.act;
    Tensor x = randn({c.N * c.H * c.W * c.C}), w = randn({c.O * (c.C / c.groups) * c.KH * c.KH});
    Tensor b = randn({c.O}), r = randn({c.N * d.g.OH * d.g.OW * c.O});
    const float* rp = c.residual ? r.data<float>() : nullptr;
    Tensor want = zeros({r.numel()});
    auto ref = k::ConvInferKernels::ref.prepare(d, w.data<float>(), b.data<float>());
    k::ConvInferKernels::ref.run(*ref, x.data<float>(), rp, want.data<float>());
    std::vector<std::string> impls = k::cpu_conv_infer_impls(d);
    CHECK(!impls.empty());
    for (int pos = 0; pos < (int)impls.size(); pos++) {
      CAPTURE(impls[pos]);
      auto plan = k::cpu_conv_infer_prepare_at(pos, d, w.data<float>(), b.data<float>());
      Tensor got = zeros({r.numel()});
      k::ConvInferKernels::cpu.run(*plan, x.data<float>(), rp, got.data<float>());
      CHECK(rel_err(got, want) < 1e-5);
    }
  }
}

TEST_CASE("FusedConv2d prepares once per geometry; a new weight makes a new plan") {
  nn::Conv2d conv({.in_channels = 4, .out_channels = 6, .kernel_size = 3, .padding = 1});
  nn::BatchNorm2d bn(6);
  randomize_bn(bn);
  bn.eval();
  infer::FusedConv2d f(conv, &bn, infer::Activation::ReLU);
  Tensor x = randn({2, 4, 8, 8});
  Tensor y0 = f(x);
  int64_t created = kernels::onednn::primitives_created();
  for (int i = 0; i < 3; i++) f(x);
  CHECK(kernels::onednn::primitives_created() == created);
  {
    no_grad ng;
    Tensor want = relu(bn(conv(x)));
    CHECK(rel_err(y0, want) < 1e-5);
  }
  // an in-place change of the folded weight must not run stale reordered weights
  f.get("weight").zero_();
  Tensor y1 = f(x);
  Tensor b = f.get("bias");
  Tensor want1 = relu(b.view({1, 6, 1, 1}).expand({2, 6, 8, 8}));
  CHECK(max_abs_diff(y1, want1) < 1e-6);
}

TEST_CASE("optimize_for_inference: every zoo model and the CNN give the eval outputs") {
  std::vector<std::string> names = models::model_names();
  names.push_back("cnn");
  for (auto& name : names) {
    CAPTURE(name);
    int64_t c = name == "cnn" ? 1 : 3, hw = name == "cnn" ? 28 : 32;
    auto model = models::create(name, {.num_classes = 10, .small_input = true, .in_channels = c});
    randomize_bn(*model);
    model->eval();
    infer::OptimizeReport report;
    auto fast = infer::optimize_for_inference(*model, &report);
    INFO(report.str());
    Tensor x = randn({2, c, hw, hw});
    Tensor want, got, got_ref;
    {
      no_grad ng;
      want = (*model)(x);
      got = (*fast)(x);
      KernelsScope k(CpuKernels::Reference);
      if (name == "cnn" || name == "mobilenet_v2" || name == "mobilenet_v3_small")
        got_ref = (*fast)(x); // the reference kernels, residual post-ops included
    }
    CHECK(got.shape() == want.shape());
    CHECK(rel_err(got, want) < 1e-4);
    if (got_ref.defined()) CHECK(rel_err(got_ref, want) < 1e-4);
    // the rewrite really happened: no BN, no dropout left; every conv of a block fused
    CHECK(count_type(*fast, "BatchNorm2d") == 0);
    CHECK(count_type(*fast, "Dropout") == 0);
    CHECK(count_type(*fast, "StochasticDepth") == 0);
    CHECK(report.convs_fused > 0);
    CHECK(report.bn_folded == count_type(*model, "BatchNorm2d"));
    CHECK(count_type(*fast, "FusedConv2d") == report.convs_fused);
    if (name == "resnet18") CHECK(report.residuals_fused == 8);
    if (name == "resnet50") CHECK(report.residuals_fused == 16);
    if (name == "mobilenet_v2") CHECK(report.residuals_fused == 10);
    if (name == "efficientnet_b0") CHECK(report.residuals_fused == 9);
    CHECK(report.dropouts_removed ==
          count_type(*model, "Dropout") + count_type(*model, "StochasticDepth"));
    if (name.rfind("mobilenet", 0) == 0 || name == "efficientnet_b0")
      CHECK(report.dropouts_removed >= 1);
  }
}

TEST_CASE("optimize_for_inference at full size: resnet18 and mobilenet_v2, 1x3x224x224") {
  for (const char* name : {"resnet18", "mobilenet_v2"}) {
    CAPTURE(name);
    auto model = models::create(name);
    randomize_bn(*model);
    model->eval();
    auto fast = infer::optimize_for_inference(*model);
    Tensor x = randn({1, 3, 224, 224});
    no_grad ng;
    CHECK(rel_err((*fast)(x), (*model)(x)) < 1e-4);
  }
}

TEST_CASE("optimize_for_inference leaves the original alone; the copy is eval-only") {
  auto model = models::create("cnn", {.num_classes = 10, .in_channels = 1});
  randomize_bn(*model);
  auto before = model->state_dict();
  std::vector<std::pair<std::string, Tensor>> saved;
  for (auto& [k, v] : model->named_parameters()) saved.emplace_back(k, v.clone());
  CHECK(model->is_training());
  auto fast = infer::optimize_for_inference(*model);
  CHECK(model->is_training()); // its flag is kept; the copy runs in eval mode
  CHECK(count_type(*model, "BatchNorm2d") == 2);
  for (auto& [k, v] : saved) CHECK(max_abs_diff(model->state_dict().at(k), v) == 0);
  CHECK_FALSE(fast->is_training());
  check_error([&] { fast->train(); }, {"eval-only", "optimize_for_inference"});
  // the CNN keeps its MaxPool / Flatten / Linear and gets two fused conv+BN+ReLU
  CHECK(count_type(*fast, "FusedConv2d") == 2);
  CHECK(count_type(*fast, "Linear") == 2);
  // outputs carry no autograd history even with grad mode on
  Tensor y = (*fast)(randn({1, 1, 28, 28}).requires_grad_(true));
  CHECK_FALSE(y.requires_grad());
}

TEST_CASE("models::create(\"cnn\"): the examples' CNN, keys and shapes") {
  auto net = models::create("cnn", {.num_classes = 10, .in_channels = 1});
  auto sd = net->state_dict();
  CHECK(sd.at("0.weight").shape() == Shape{32, 1, 3, 3});
  CHECK(sd.at("4.weight").shape() == Shape{64, 32, 3, 3});
  CHECK(sd.at("5.running_var").shape() == Shape{64});
  CHECK(sd.at("9.weight").shape() == Shape{128, 3136});
  CHECK(sd.at("11.bias").shape() == Shape{10});
  CHECK(sd.item(sd.size() - 1).first == "11.bias");
  CHECK(net->num_parameters() == 421834);
  check_error([] { models::create("no_such_net"); }, {"unknown model 'no_such_net'", "cnn"});
}

TEST_CASE("infer refuses bad input") {
  Tensor w = randn({4, 3, 3, 3});
  using A = infer::Activation;
  check_error([&] { infer::fused_conv2d(randn({3, 4}), w, Tensor(), {}, A::ReLU); },
              {"fused_conv2d", "expected input [N, C, H, W], got [3, 4]"});
  check_error([&] { infer::fused_conv2d(randn({1, 2, 5, 5}), w, Tensor(), {}, A::ReLU); },
              {"fused_conv2d", "[1, 2, 5, 5]", "[4, 3, 3, 3]"});
  check_error([&] { infer::fused_conv2d(randn({1, 3, 5, 5}, {kFloat64}), w.to(kFloat64), {}, {},
                                        A::None); },
              {"fused_conv2d", "float32 only"});
  check_error([&] { infer::fused_conv2d(randn({1, 3, 5, 5}), w, Tensor(), {}, A::None,
                                        randn({1, 4, 2, 2})); },
              {"fused_conv2d", "residual", "[1, 4, 3, 3]", "[1, 4, 2, 2]"});
  check_error([&] { infer::fused_conv2d(randn({1, 3, 2, 2}), w, Tensor(), {}, A::None); },
              {"fused_conv2d", "smaller than the kernel"});
  auto model = models::create("cnn", {.num_classes = 10, .in_channels = 1});
  model->to(kFloat64);
  check_error([&] { infer::optimize_for_inference(*model); },
              {"optimize_for_inference", "float32 CPU models only", "0.weight", "float64"});
}

} // TEST_SUITE
