// tests/test_models.cpp — the model zoo: torchvision-identical state_dicts, forward shapes,
// summary costs, and block-level parity with PyTorch from committed fixtures.
//
// Fixtures: tools/convert_torch_weights.py fixtures (torch 1.13, torchvision 0.14) wrote
// tests/fixtures/blocks_*.safetensors: a block's state_dict, "input", and the eval-mode "output".
// Tolerance 1e-4 absolute (outputs are at most ~3.5): float32 blocks of <= 4 convs whose sums
// have at most ~600 terms, which oneDNN, the reference loops and PyTorch order differently; the
// worst difference seen is 3.6e-7. A wrong formula or a misplaced weight is off by > 1e-2.
#include "gradcheck.h"

#include <tb/models.h>

#include <zlib.h>

#include <sstream>
#include <string>
#include <vector>

namespace {

using tb::Shape;
using tb::Tensor;
using namespace tb::nn;
namespace tm = tb::models;

// zlib.crc32 of "key:d0,d1,...\n" over the state_dict in order — the same string Python builds:
//   ''.join(k + ':' + ','.join(str(d) for d in v.shape) + '\n' for k, v in sd.items())
uint32_t state_dict_signature(const Module& m) {
  std::string s;
  for (auto& [k, v] : m.state_dict()) {
    s += k + ":";
    for (int64_t d = 0; d < v.dim(); d++) s += (d ? "," : "") + std::to_string(v.size(d));
    s += "\n";
  }
  return (uint32_t)crc32(0L, reinterpret_cast<const Bytef*>(s.data()), (uInt)s.size());
}

struct Expected {
  const char* name;
  int64_t params;
  size_t keys;
  const char* first_key;
  const char* last_key;
  uint32_t signature;
};

// From /usr/bin/python3 (torchvision 0.14.1, weights=None), for each name:
//   mod = getattr(torchvision.models, name)(); sd = mod.state_dict()
//   sum(p.numel() for p in mod.parameters()), len(sd), list(sd)[0], list(sd)[-1],
//   zlib.crc32(<the string above>)
const Expected kTorchvision[] = {
    {"resnet18", 11689512, 122, "conv1.weight", "fc.bias", 0xa55a8bb4u},
    {"resnet50", 25557032, 320, "conv1.weight", "fc.bias", 0xe0021936u},
    {"mobilenet_v2", 3504872, 314, "features.0.0.weight", "classifier.1.bias", 0x2f1f79abu},
    {"mobilenet_v3_small", 2542856, 244, "features.0.0.weight", "classifier.3.bias", 0x9b8ad893u},
    {"shufflenet_v2_x0_5", 1366792, 338, "conv1.0.weight", "fc.bias", 0xf9e7be5fu},
    {"shufflenet_v2_x1_0", 2278604, 338, "conv1.0.weight", "fc.bias", 0x6e79ec3eu},
    {"efficientnet_b0", 5288548, 360, "features.0.0.weight", "classifier.1.bias", 0x192ef392u},
};

void check_against(const Module& m, const Expected& e) {
  CAPTURE(e.name);
  auto sd = m.state_dict();
  CHECK(m.num_parameters() == e.params);
  CHECK(sd.size() == e.keys);
  REQUIRE(sd.size() > 0);
  CHECK(sd.item(0).first == e.first_key);
  CHECK(sd.item(sd.size() - 1).first == e.last_key);
  CHECK(state_dict_signature(m) == e.signature);
}

// Restores the CPU kernel choice when a test leaves.
struct KernelsGuard {
  tb::CpuKernels prev = tb::cpu_kernels();
  ~KernelsGuard() { tb::set_cpu_kernels(prev); }
};

// Loads blocks_<name>.safetensors into `block` (strict, by torchvision's keys) and compares the
// eval-mode output on the fixture's input, with the fast and the reference CPU kernels.
void check_fixture(const std::string& name, Module& block) {
  CAPTURE(name);
  auto fx = tb::load_safetensors(tbtest::fixture("blocks_" + name + ".safetensors")).tensors;
  tb::StateDict sd;
  for (auto& [k, v] : fx)
    if (k != "input" && k != "output") sd.insert(k, v);
  block.load_state_dict(sd, /*strict=*/true);
  block.eval();
  KernelsGuard guard;
  for (auto k : {tb::CpuKernels::Fast, tb::CpuKernels::Reference}) {
    tb::set_cpu_kernels(k);
    tb::no_grad ng;
    Tensor y = block(fx.at("input"));
    REQUIRE(y.shape() == fx.at("output").shape());
    double err = tbtest::max_abs_diff(y, fx.at("output"));
    CHECK_MESSAGE(err <= 1e-4, (k == tb::CpuKernels::Fast ? "fast" : "reference")
                                   << " kernels: max abs diff " << err);
  }
}

} // namespace

TEST_SUITE("models") {
  TEST_CASE("zoo state_dicts equal torchvision's (names, shapes, order, counts)") {
    for (auto& e : kTorchvision) check_against(*tm::create(e.name), e);
    // Other widths and class counts, from the same Python with the keyword arguments shown.
    {  // mobilenet_v2(width_mult=0.5)
      tm::ModelOptions o;
      o.width_mult = 0.5;
      check_against(*tm::mobilenet_v2(o), {"mobilenet_v2 w0.5", 1968680, 314,
                                           "features.0.0.weight", "classifier.1.bias",
                                           0xe1950fd2u});
    }
    {  // mobilenet_v2(width_mult=1.4, num_classes=10)
      tm::ModelOptions o;
      o.width_mult = 1.4, o.num_classes = 10;
      check_against(*tm::mobilenet_v2(o), {"mobilenet_v2 w1.4 c10", 4333706, 314,
                                           "features.0.0.weight", "classifier.1.bias",
                                           0x95f04c9eu});
    }
    {  // resnet18(num_classes=10)
      check_against(*tm::resnet18({.num_classes = 10}),
                    {"resnet18 c10", 11181642, 122, "conv1.weight", "fc.bias", 0x18d47a2eu});
    }
  }

  TEST_CASE("mobilenet_v1: the paper's parameter count and our key names") {
    auto m = tm::mobilenet_v1();
    CHECK(m->num_parameters() == 4231976); // Howard et al. 2017, Table 4: 4.2M
    auto sd = m->state_dict();
    CHECK(sd.item(0).first == "features.0.0.weight");
    CHECK(sd.contains("features.1.dw.0.weight"));
    CHECK(sd.at("features.1.dw.0.weight").shape() == Shape{32, 1, 3, 3});
    CHECK(sd.at("features.13.pw.0.weight").shape() == Shape{1024, 1024, 1, 1});
    CHECK(sd.item(sd.size() - 1).first == "classifier.1.bias");
    tm::ModelOptions half;
    half.width_mult = 0.5;
    CHECK(tm::mobilenet_v1(half)->state_dict().at("classifier.1.weight").shape() ==
          Shape{1000, 512});
  }

  TEST_CASE("small-input variants: 3x3 stride-1 stem, 1 or 3 channels, output shapes") {
    for (auto& name : tm::model_names()) {
      CAPTURE(name);
      for (int64_t c : {1, 3}) {
        tm::ModelOptions o;
        o.num_classes = 10, o.small_input = true, o.in_channels = c;
        auto m = tm::create(name, o);
        Tensor stem = m->state_dict().item(0).second;
        CHECK(stem.shape() == Shape{stem.size(0), c, 3, 3});
        m->eval();
        tb::no_grad ng;
        int64_t hw = c == 1 ? 28 : 32;
        Tensor y = (*m)(tb::randn({1, c, hw, hw}));
        CHECK(y.shape() == Shape{1, 10});
      }
    }
    // the stem max-pool is gone, everything else keeps torchvision's names
    auto r = tm::resnet18({.num_classes = 10, .small_input = true, .in_channels = 1});
    CHECK(r->state_dict().size() == 122);
    bool has_maxpool = false;
    for (auto& [n, c] : r->named_children()) has_maxpool |= n == "maxpool";
    CHECK_FALSE(has_maxpool);
  }

  TEST_CASE("full-size forward at a small batch") {
    for (const char* name : {"mobilenet_v3_small", "shufflenet_v2_x0_5"}) {
      CAPTURE(name);
      auto m = tm::create(name, {.num_classes = 7});
      m->eval();
      tb::no_grad ng;
      CHECK((*m)(tb::randn({2, 3, 224, 224})).shape() == Shape{2, 7});
    }
  }

  TEST_CASE("summary: multiply-adds near the published figures at 1x3x224x224") {
    struct Case {
      const char* name;
      double lo, hi; // multiply-adds, published: V1 569M, V2 300M, ShuffleNetV2 146M,
    };               // EfficientNet-B0 390M, ResNet-18 1.8G
    const Case cases[] = {{"mobilenet_v1", 560e6, 575e6},
                          {"mobilenet_v2", 295e6, 305e6},
                          {"shufflenet_v2_x1_0", 140e6, 150e6},
                          {"efficientnet_b0", 380e6, 400e6},
                          {"resnet18", 1.78e9, 1.85e9}};
    for (auto& c : cases) {
      CAPTURE(c.name);
      auto m = tm::create(c.name);
      auto s = tb::summary(*m, {1, 3, 224, 224});
      CHECK(s.total_mult_adds >= (int64_t)c.lo);
      CHECK(s.total_mult_adds <= (int64_t)c.hi);
      CHECK(s.total_params == m->num_parameters());
      REQUIRE_FALSE(s.rows.empty());
      CHECK(s.rows.back().output_shape == Shape{1, 1000});
      int64_t row_params = 0;
      for (auto& r : s.rows) row_params += r.params;
      CHECK(row_params == s.total_params); // every parameter counted once
    }
  }

  TEST_CASE("summary: per-layer formula, table, training mode and hooks restored") {
    auto net = std::make_shared<Sequential>();
    net->push_back(std::make_shared<Conv2d>(Conv2dOptions{
        .in_channels = 4, .out_channels = 8, .kernel_size = 3, .stride = 2, .padding = 1,
        .groups = 2}));
    net->push_back(std::make_shared<BatchNorm2d>(8));
    net->push_back(std::make_shared<ReLU>());
    net->push_back(std::make_shared<Flatten>());
    net->push_back(std::make_shared<Linear>(8 * 4 * 4, 10));
    auto s = tb::summary(*net, {2, 4, 8, 8});
    REQUIRE(s.rows.size() == 5);
    CHECK(s.rows[0].name == "0");
    CHECK(s.rows[0].type == "Conv2d");
    CHECK(s.rows[0].output_shape == Shape{2, 8, 4, 4});
    CHECK(s.rows[0].params == 8 * 2 * 9 + 8);
    CHECK(s.rows[0].mult_adds == 2 * 8 * 4 * 4 * (4 / 2) * 3 * 3); // N*Cout*Ho*Wo*Cin/g*k*k
    CHECK(s.rows[1].mult_adds == 0);
    CHECK(s.rows[4].mult_adds == 2 * 128 * 10);                    // rows*in*out
    CHECK(s.total_mult_adds == 2 * 8 * 4 * 4 * 2 * 9 + 2 * 128 * 10);
    CHECK(s.total_params == net->num_parameters());
    std::string table = s.str();
    CHECK(table.find("0 (Conv2d)") != std::string::npos);
    CHECK(table.find("Total params: 1,458") != std::string::npos);
    CHECK(net->is_training()); // restored
    (*net)[1]->eval();         // mixed modes survive a summary
    tb::summary(*net, {1, 4, 8, 8});
    CHECK(net->is_training());
    CHECK_FALSE((*net)[1]->is_training());
    // hooks were removed: a second summary sees 5 rows again, not 10
    CHECK(tb::summary(*net, {1, 4, 8, 8}).rows.size() == 5);
  }

  TEST_CASE("block parity with PyTorch (committed fixtures, eval mode)") {
    {
      // mobilenetv2.InvertedResidual(16, 16, 1, 6)
      InvertedResidual b({.in_channels = 16, .out_channels = 16, .stride = 1, .expand_ratio = 6});
      CHECK(b.use_res_connect);
      check_fixture("inverted_residual", b);
    }
    {
      BasicBlock b(8, 16, 2, true); // resnet.BasicBlock(8, 16, 2, downsample=1x1 conv + BN)
      check_fixture("basic_block", b);
    }
    {
      Bottleneck b(16, 8, 2, true);
      check_fixture("bottleneck", b);
    }
    {
      SqueezeExcitation b(16, 4); // torchvision.ops.misc.SqueezeExcitation(16, 4)
      check_fixture("squeeze_excitation", b);
    }
    {
      Sequential b{std::make_shared<ShuffleNetV2Unit>(24, 48, 2),
                   std::make_shared<ShuffleNetV2Unit>(48, 48, 1)};
      check_fixture("shufflenet_units", b);
    }
    {
      MBConvConfig c; // efficientnet.MBConv(MBConvConfig(6, 5, 1, 16, 16, 1), 0.1, BatchNorm2d)
      c.in = 16, c.expanded = make_divisible(16 * 6), c.out = 16, c.kernel = 5, c.stride = 1;
      c.squeeze = 4, c.act = c.se_act = Act::SiLU, c.se_scale_act = Act::Sigmoid;
      c.stochastic_depth_prob = 0.1;
      MBConv b(c);
      check_fixture("mbconv", b);
    }
    {
      MBConvConfig c; // mobilenetv3.InvertedResidual(24, k5, 96, 24, SE, HS, s1), BN eps 1e-3
      c.in = 24, c.expanded = 96, c.out = 24, c.kernel = 5, c.stride = 1;
      c.squeeze = make_divisible(96 / 4), c.act = Act::Hardswish;
      c.se_act = Act::ReLU, c.se_scale_act = Act::Hardsigmoid;
      c.bn = {1e-3, 0.01};
      MBConv b(c);
      check_fixture("mobilenet_v3", b);
    }
  }

  TEST_CASE("channel_shuffle: channel i*c+j moves to j*g+i, in both memory layouts") {
    Tensor x = tb::arange(0.0, 12.0, 1.0, {tb::kFloat32}).reshape({1, 6, 2, 1});
    const std::vector<double> order = {0, 3, 1, 4, 2, 5}; // g = 2, c = 3
    for (bool cl : {false, true}) {
      CAPTURE(cl);
      Tensor in = cl ? x.contiguous_channels_last() : x;
      Tensor y = tb::nn::channel_shuffle(in, 2);
      REQUIRE(y.shape() == Shape{1, 6, 2, 1});
      CHECK(y.is_channels_last() == cl);
      auto v = y.to_vector();
      for (int64_t ch = 0; ch < 6; ch++)
        for (int64_t h = 0; h < 2; h++) CHECK(v[ch * 2 + h] == order[ch] * 2 + h);
    }
    tbtest::check_error([&] { tb::nn::channel_shuffle(x, 4); },
                        {"channel_shuffle", "divisible", "[1, 6, 2, 1]"});
    tbtest::check_error([&] { tb::nn::channel_shuffle(x.reshape({6, 2}), 2); },
                        {"channel_shuffle", "4-D", "[6, 2]"});
  }

  TEST_CASE("gradients through the block compositions (float64 finite differences)") {
    tb::Generator g(7);
    for (bool cl : {false, true}) {
      CAPTURE(cl);
      Tensor x = tb::randn({2, 6, 3, 2}, {tb::kFloat64}, &g);
      CHECK(tbtest::gradcheck(
          [cl](const std::vector<Tensor>& in) {
            return tb::nn::channel_shuffle(cl ? in[0].contiguous_channels_last() : in[0], 3);
          },
          {x}));
    }
    SqueezeExcitation se(6, 2);
    se.to(tb::kFloat64);
    CHECK(tbtest::gradcheck([&](const std::vector<Tensor>& in) { return se(in[0]); },
                            {tb::randn({2, 6, 3, 3}, {tb::kFloat64}, &g)}));
    ShuffleNetV2Unit unit(8, 8, 1); // split, branch, concat, shuffle
    unit.to(tb::kFloat64);
    unit.eval();
    CHECK(tbtest::gradcheck([&](const std::vector<Tensor>& in) { return unit(in[0]); },
                            {tb::randn({1, 8, 3, 3}, {tb::kFloat64}, &g)}));
  }

  TEST_CASE("the usage snippet of tb/models.h") {
    Tensor x = tb::randn({2, 1, 28, 28});
    std::ostringstream out;
    // ---- verbatim from the header ----
    auto net = tb::models::create("mobilenet_v2", {.num_classes = 10, .small_input = true,
                                                   .in_channels = 1});
    tb::Tensor logits = (*net)(x);                         // x [N, 1, 28, 28] -> [N, 10]
    out << tb::summary(*net, {1, 1, 28, 28}).str();        // per-layer table with totals
    // ----
    CHECK(logits.shape() == Shape{2, 10});
    CHECK(out.str().find("features.18.0 (Conv2d)") != std::string::npos);
  }

  TEST_CASE("StochasticDepth: rows dropped and rescaled in training only") {
    StochasticDepth sd(0.5);
    Tensor x = tb::ones({64, 3, 2, 2});
    auto v = sd(x).to_vector();
    int dropped = 0;
    for (int64_t n = 0; n < 64; n++) {
      double first = v[n * 12];
      CHECK((first == 0.0 || first == 2.0)); // survivors scaled by 1 / (1 - p)
      for (int64_t i = 1; i < 12; i++) CHECK(v[n * 12 + i] == first); // whole row
      dropped += first == 0.0;
    }
    CHECK(dropped > 10);
    CHECK(dropped < 54);
    sd.eval();
    CHECK(sd(x).is_same(x));
    StochasticDepth all(1.0);
    CHECK(tb::max(all(x)).item() == 0.0);
    tbtest::check_error([] { StochasticDepth(1.5); }, {"StochasticDepth", "1.5"});
    tbtest::check_error([] { StochasticDepth(0.1, "col"); }, {"StochasticDepth", "col"});
  }

  TEST_CASE("training step through the blocks: every parameter gets a gradient") {
    for (const char* name : {"shufflenet_v2_x0_5", "efficientnet_b0", "mobilenet_v3_small"}) {
      CAPTURE(name);
      auto m = tm::create(name, {.num_classes = 10, .small_input = true, .in_channels = 1});
      m->train();
      Tensor y = (*m)(tb::randn({2, 1, 28, 28}));
      Tensor loss = tb::cross_entropy(y, tb::from_vector(std::vector<int64_t>{3, 7}, {2}));
      loss.backward();
      int64_t missing = 0;
      for (auto& [n, p] : m->named_parameters()) missing += !p.grad().defined();
      CHECK(missing == 0);
      CHECK(std::isfinite(loss.item()));
    }
  }

  TEST_CASE("children are looked up by name: set_module swaps a layer for real") {
    auto m = tm::shufflenet_v2_x0_5({.num_classes = 10, .small_input = true, .in_channels = 1});
    m->set_module("fc", std::make_shared<Linear>(1024, 3));
    m->eval();
    tb::no_grad ng;
    CHECK((*m)(tb::randn({2, 1, 28, 28})).shape() == Shape{2, 3});
  }

  TEST_CASE("bad arguments raise tb::Error naming the problem") {
    tbtest::check_error([] { tm::create("resnet19"); }, {"resnet19", "resnet18", "mobilenet_v2"});
    tbtest::check_error([] { tm::resnet18({.num_classes = 0}); }, {"num_classes", "0"});
    tbtest::check_error([] { tm::shufflenet_v2(0.75); }, {"shufflenet_v2", "0.75"});
    tbtest::check_error([] { InvertedResidual({.in_channels = 8, .out_channels = 8, .stride = 3, .expand_ratio = 6}); }, {"InvertedResidual", "stride", "3"});
    tbtest::check_error([] { ShuffleNetV2Unit(24, 48, 1); }, {"ShuffleNetV2Unit", "24", "48"});
    tbtest::check_error([] { BasicBlock(8, 16, 1, false); }, {"BasicBlock", "downsample"});
    tbtest::check_error([] { Bottleneck(64, 64, 1, false); }, {"Bottleneck", "downsample"});
    tbtest::check_error([] { MBConv(MBConvConfig{}); }, {"MBConv", "channels"});
    auto m = tm::mobilenet_v2({.num_classes = 10, .small_input = true, .in_channels = 1});
    tbtest::check_error([&] { (*m)(tb::randn({1, 3, 28, 28})); }, {"Conv2d", "[1, 3, 28, 28]"});
    tbtest::check_error([&] { tb::summary(*m, {1, 3, 28, 28}); }, {"Conv2d", "[1, 3, 28, 28]"});
    CHECK(m->is_training()); // restored after the failed forward too
  }

  TEST_CASE("make_divisible follows torchvision's _make_divisible") {
    CHECK(make_divisible(32 * 0.5) == 16);
    CHECK(make_divisible(24 * 0.35) == 8);   // 8.4 -> 8 (min_value = divisor)
    CHECK(make_divisible(96 / 4) == 24);
    CHECK(make_divisible(20) == 24);         // 20 + 4 = 24 rounds to 24
    CHECK(make_divisible(1280 * 1.4) == 1792);
    CHECK(make_divisible(10.0, 8) == 16);    // 8 < 0.9 * 10 -> +8
  }
}
