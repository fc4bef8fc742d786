// nn: module registration and traversal, state_dict order, train/eval, hooks, load_state_dict
// errors, to(), and every layer's shapes, parameter names/counts and default initialisation.
#include "gradcheck.h"

#include <cmath>
#include <cstdio>
#include <unistd.h>

using namespace tb;
using tbtest::check_error;
using tbtest::small_net;

namespace {

std::vector<std::string> names_of(const std::vector<std::pair<std::string, Tensor>>& v) {
  std::vector<std::string> out;
  for (auto& [n, t] : v) out.push_back(n);
  return out;
}

double max_abs(const Tensor& t) {
  double m = 0;
  for (double v : t.to_vector()) m = std::max(m, std::abs(v));
  return m;
}

} // namespace

TEST_SUITE("nn") {

TEST_CASE("Linear: parameters, default init bounds, forward = x W^T + b") {
  manual_seed(1);
  nn::Linear lin(4, 3);
  CHECK(names_of(lin.named_parameters()) == std::vector<std::string>{"weight", "bias"});
  CHECK(lin.weight().shape() == Shape{3, 4});
  CHECK(lin.bias().shape() == Shape{3});
  CHECK(lin.num_parameters() == 15);
  CHECK(lin.weight().requires_grad());
  CHECK(lin.weight().is_leaf());

  // kaiming_uniform_(a = sqrt(5)) and the bias are both U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  nn::Linear big(400, 50);
  double bound = 1.0 / std::sqrt(400.0);
  CHECK(max_abs(big.weight()) <= bound);
  CHECK(max_abs(big.weight()) > 0.95 * bound); // 20000 uniform draws reach the edge
  CHECK(max_abs(big.bias()) <= bound);

  Tensor x = randn({2, 4});
  Tensor y = lin(x);
  CHECK(y.shape() == Shape{2, 3});
  auto xv = x.to_vector(), wv = lin.weight().to_vector(), bv = lin.bias().to_vector(),
       yv = y.to_vector();
  for (int n = 0; n < 2; n++)
    for (int o = 0; o < 3; o++) {
      double s = bv[o];
      for (int i = 0; i < 4; i++) s += xv[n * 4 + i] * wv[o * 4 + i];
      CHECK(yv[n * 3 + o] == doctest::Approx(s).epsilon(1e-5));
    }

  nn::Linear nobias(4, 3, false);
  CHECK(names_of(nobias.named_parameters()) == std::vector<std::string>{"weight"});
  CHECK_FALSE(nobias.bias().defined());
  CHECK(nobias(x).shape() == Shape{2, 3});
  CHECK(nobias.str() == "Linear(in_features=4, out_features=3, bias=False)");
  check_error([&] { lin(randn({2, 5})); }, {"Linear", "[2, 5]"});
}

TEST_CASE("Conv2d: parameter counts, shapes, groups, errors") {
  nn::Conv2d c(3, 64, 3);
  CHECK(c.weight().shape() == Shape{64, 3, 3, 3});
  CHECK(c.num_parameters() == 1728 + 64);
  CHECK(c(randn({2, 3, 8, 8})).shape() == Shape{2, 64, 6, 6});
  double bound = 1.0 / std::sqrt(27.0);
  CHECK(max_abs(c.weight()) <= bound);
  CHECK(max_abs(c.bias()) <= bound);

  nn::Conv2d s2({.in_channels = 3, .out_channels = 8, .kernel_size = 3, .stride = 2, .padding = 1});
  CHECK(s2(randn({1, 3, 9, 9})).shape() == Shape{1, 8, 5, 5});
  CHECK(s2.str() == "Conv2d(3, 8, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1))");

  nn::Conv2d dw({.in_channels = 4, .out_channels = 8, .kernel_size = 3, .padding = 1,
                 .groups = 2, .bias = false});
  CHECK(dw.weight().shape() == Shape{8, 2, 3, 3});
  CHECK(names_of(dw.named_parameters()) == std::vector<std::string>{"weight"});
  CHECK(dw(randn({1, 4, 5, 5})).shape() == Shape{1, 8, 5, 5});

  nn::Conv2d dil({.in_channels = 1, .out_channels = 1, .kernel_size = 3, .dilation = 2});
  CHECK(dil(randn({1, 1, 7, 7})).shape() == Shape{1, 1, 3, 3});

  check_error([] { nn::Conv2d({.in_channels = 3, .out_channels = 4, .kernel_size = 3, .groups = 2}); }, {"Conv2d", "divisible", "groups"});
  check_error([] { nn::Conv2d(3, 4, 0); }, {"Conv2d", "kernel_size=(0, 0)"});
  check_error([&] { c(randn({2, 4, 8, 8})); }, {"Conv2d", "[2, 4, 8, 8]"});
}

TEST_CASE("BatchNorm2d: names, buffers, train updates running stats and num_batches_tracked") {
  nn::BatchNorm2d bn(3);
  auto sd = bn.state_dict();
  CHECK(sd.keys() == std::vector<std::string>{"weight", "bias", "running_mean", "running_var",
                                              "num_batches_tracked"});
  CHECK(names_of(bn.named_parameters()) == std::vector<std::string>{"weight", "bias"});
  CHECK(names_of(bn.named_buffers()) ==
        std::vector<std::string>{"running_mean", "running_var", "num_batches_tracked"});
  CHECK(bn.num_batches_tracked().dtype() == kInt64);
  CHECK(bn.num_batches_tracked().dim() == 0);
  CHECK(bn.weight().to_vector() == std::vector<double>{1, 1, 1});
  CHECK(bn.bias().to_vector() == std::vector<double>{0, 0, 0});
  CHECK(bn.str() == "BatchNorm2d(3, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)");

  // Channel c of x is the constant c + 1 plus a zero-mean pattern, so the batch mean is c + 1.
  std::vector<float> xv;
  for (int n = 0; n < 2; n++)
    for (int c = 0; c < 3; c++)
      for (int i = 0; i < 4; i++) xv.push_back((float)(c + 1) + (i % 2 ? 0.5f : -0.5f) * (n ? 1 : -1));
  Tensor x = from_vector(xv, {2, 3, 2, 2});
  Tensor y = bn(x);
  CHECK(y.shape() == Shape{2, 3, 2, 2});
  CHECK(bn.num_batches_tracked().item() == 1);
  auto rm = bn.running_mean().to_vector();
  for (int c = 0; c < 3; c++) CHECK(rm[c] == doctest::Approx(0.1 * (c + 1)).epsilon(1e-6));
  // Batch-normalised output has zero mean per channel.
  auto yv = y.to_vector();
  for (int c = 0; c < 3; c++) {
    double s = 0;
    for (int n = 0; n < 2; n++)
      for (int i = 0; i < 4; i++) s += yv[(n * 3 + c) * 4 + i];
    CHECK(std::abs(s) < 1e-5);
  }

  // Eval: running statistics, counter untouched. y = (x - rm) / sqrt(rv + eps).
  bn.eval();
  Tensor ye = bn(x);
  CHECK(bn.num_batches_tracked().item() == 1);
  auto rv = bn.running_var().to_vector();
  auto yev = ye.to_vector();
  for (int c = 0; c < 3; c++)
    CHECK(yev[c * 4] == doctest::Approx((xv[c * 4] - rm[c]) / std::sqrt(rv[c] + 1e-5)).epsilon(1e-5));

  // momentum = nullopt: cumulative average (factor 1 / num_batches_tracked): the first batch's
  // mean replaces the running mean entirely.
  nn::BatchNorm2d cum(3, {.momentum = std::nullopt});
  cum(x);
  auto cm = cum.running_mean().to_vector();
  for (int c = 0; c < 3; c++) CHECK(cm[c] == doctest::Approx(c + 1).epsilon(1e-6));
  CHECK(cum.str() == "BatchNorm2d(3, eps=1e-05, momentum=None, affine=True, track_running_stats=True)");

  nn::BatchNorm2d plain(3, {.affine = false, .track_running_stats = false});
  CHECK(plain.state_dict().size() == 0);
  plain.eval(); // no running stats: batch statistics even in eval
  CHECK(plain(x).shape() == Shape{2, 3, 2, 2});

  check_error([&] { bn(randn({2, 3, 4})); }, {"BatchNorm2d", "4D", "[2, 3, 4]"});
  check_error([&] { bn(randn({2, 5, 2, 2})); }, {"BatchNorm2d", "3 channels", "[2, 5, 2, 2]"});
}

TEST_CASE("BatchNorm1d: 2D and 3D inputs") {
  nn::BatchNorm1d bn(4);
  CHECK(bn(randn({8, 4})).shape() == Shape{8, 4});
  CHECK(bn(randn({8, 4, 5})).shape() == Shape{8, 4, 5});
  CHECK(bn.num_batches_tracked().item() == 2);
  check_error([&] { bn(randn({8, 4, 5, 5})); }, {"BatchNorm1d", "2D or 3D"});
}

TEST_CASE("activation modules: shapes and values") {
  Tensor x = from_vector(std::vector<double>{-2.0, 0.0, 1.0, 7.0}, {2, 2});
  auto v = [&](nn::Module&& m) { return m(x).to_vector(); };
  auto approx = [](const std::vector<double>& a, const std::vector<double>& b) {
    REQUIRE(a.size() == b.size());
    for (size_t i = 0; i < a.size(); i++) CHECK(a[i] == doctest::Approx(b[i]).epsilon(1e-7));
  };
  approx(v(nn::ReLU()), {0, 0, 1, 7});
  approx(v(nn::ReLU6()), {0, 0, 1, 6});
  approx(v(nn::LeakyReLU(0.1)), {-0.2, 0, 1, 7});
  approx(v(nn::Sigmoid()), {1 / (1 + std::exp(2.0)), 0.5, 1 / (1 + std::exp(-1.0)), 1 / (1 + std::exp(-7.0))});
  approx(v(nn::Tanh()), {std::tanh(-2.0), 0, std::tanh(1.0), std::tanh(7.0)});
  approx(v(nn::SiLU()), {-2 / (1 + std::exp(2.0)), 0, 1 / (1 + std::exp(-1.0)), 7 / (1 + std::exp(-7.0))});
  approx(v(nn::Hardswish()), {-2.0 / 6, 0, 4.0 / 6, 7});
  approx(v(nn::Hardsigmoid()), {1.0 / 6, 0.5, 4.0 / 6, 1});
  approx(v(nn::GELU()), {-2 * 0.5 * std::erfc(2 / std::sqrt(2.0)), 0, 0.5 * std::erfc(-1 / std::sqrt(2.0)),
                         7 * 0.5 * std::erfc(-7 / std::sqrt(2.0))});
  approx(v(nn::Identity()), {-2, 0, 1, 7});
  CHECK(nn::ReLU().num_parameters() == 0);
  CHECK(nn::ReLU().str() == "ReLU()");
}

TEST_CASE("pooling, flatten, dropout modules") {
  Tensor x = randn({2, 3, 8, 8});
  CHECK(nn::MaxPool2d(2)(x).shape() == Shape{2, 3, 4, 4});
  CHECK(nn::MaxPool2d({.kernel_size = 3, .stride = 2, .padding = 1})(x).shape() == Shape{2, 3, 4, 4});
  CHECK(nn::AvgPool2d(2)(x).shape() == Shape{2, 3, 4, 4});
  CHECK(nn::AvgPool2d({.kernel_size = 3, .stride = 1, .padding = 1})(x).shape() == Shape{2, 3, 8, 8});
  CHECK(nn::AdaptiveAvgPool2d(1)(x).shape() == Shape{2, 3, 1, 1});
  CHECK(nn::AdaptiveAvgPool2d({2, 4})(x).shape() == Shape{2, 3, 2, 4});
  CHECK(nn::Flatten()(x).shape() == Shape{2, 192});
  CHECK(nn::Flatten(0)(x).shape() == Shape{384});
  Tensor m = nn::MaxPool2d(2)(from_vector(std::vector<float>{1, 5, 3, 2}, {1, 1, 2, 2}));
  CHECK(m.item() == 5);
  check_error([] { nn::MaxPool2d({.kernel_size = 2, .stride = 2, .padding = 2}); }, {"MaxPool2d", "half"});

  nn::Dropout d(0.5);
  Tensor ones_x = ones({1000});
  auto tv = d(ones_x).to_vector();
  int zeros_n = 0;
  for (double e : tv) {
    CHECK((e == 0.0 || e == doctest::Approx(2.0)));
    zeros_n += e == 0.0;
  }
  CHECK(zeros_n > 400);
  CHECK(zeros_n < 600);
  d.eval();
  CHECK(d(ones_x).to_vector() == ones_x.to_vector());
  check_error([] { nn::Dropout(1.5); }, {"Dropout", "1.5"});
}

TEST_CASE("nested Sequential: state_dict keys in PyTorch order, traversal, printing") {
  auto net = small_net();
  CHECK(net->state_dict().keys() ==
        std::vector<std::string>{"features.0.weight", "features.0.bias", "features.1.weight",
                                 "features.1.bias", "features.1.running_mean",
                                 "features.1.running_var", "features.1.num_batches_tracked",
                                 "classifier.weight", "classifier.bias"});
  CHECK(names_of(net->named_parameters()) ==
        std::vector<std::string>{"features.0.weight", "features.0.bias", "features.1.weight",
                                 "features.1.bias", "classifier.weight", "classifier.bias"});
  CHECK(names_of(net->named_buffers()) ==
        std::vector<std::string>{"features.1.running_mean", "features.1.running_var",
                                 "features.1.num_batches_tracked"});
  CHECK(net->parameters().size() == 6);
  CHECK(net->num_parameters() == (2 * 4 * 9 + 4) + 8 + (36 * 5 + 5));
  std::vector<std::string> mods;
  for (auto& [name, m] : net->named_modules()) mods.push_back(name + ":" + m->type_name());
  CHECK(mods == std::vector<std::string>{":Sequential", "features:Sequential", "features.0:Conv2d",
                                         "features.1:BatchNorm2d", "features.2:ReLU",
                                         "flatten:Flatten", "classifier:Linear"});
  CHECK(net->get_submodule("features.1").type_name() == "BatchNorm2d");
  CHECK(net->children().size() == 3);
  auto features = net->at<nn::Sequential>(0);
  CHECK(features->size() == 3);
  CHECK(features->at<nn::Conv2d>(0)->out_channels() == 4);
  check_error([&] { net->at<nn::Linear>(0); }, {"Sequential", "Sequential"});
  check_error([&] { (*net)[7]; }, {"Sequential", "index 7"});
  check_error([&] { net->get_submodule("features.9"); }, {"get_submodule('features.9')", "no child '9'"});

  CHECK((*net)(randn({2, 2, 3, 3})).shape() == Shape{2, 5});

  CHECK(net->str() ==
        "Sequential(\n"
        "  (features): Sequential(\n"
        "    (0): Conv2d(2, 4, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))\n"
        "    (1): BatchNorm2d(4, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)\n"
        "    (2): ReLU()\n"
        "  )\n"
        "  (flatten): Flatten(start_dim=1, end_dim=-1)\n"
        "  (classifier): Linear(in_features=36, out_features=5, bias=True)\n"
        ")");

  // A parameter shared by two modules is listed once by parameters(), but is in state_dict twice.
  auto a = std::make_shared<nn::Linear>(2, 2);
  nn::Sequential shared{a, a};
  CHECK(shared.parameters().size() == 2);
  CHECK(shared.state_dict().size() == 4);
  // apply visits children before parents.
  std::vector<std::string> order;
  net->apply([&](nn::Module& m) { order.push_back(m.type_name()); });
  CHECK(order.front() == "Conv2d");
  CHECK(order.back() == "Sequential");
  CHECK(order.size() == 7);
}

TEST_CASE("train/eval switches BatchNorm and Dropout recursively") {
  auto net = std::make_shared<nn::Sequential>();
  net->push_back(std::make_shared<nn::Linear>(4, 4));
  net->push_back(std::make_shared<nn::BatchNorm1d>(4));
  net->push_back(std::make_shared<nn::Dropout>(0.5));
  auto bn = net->at<nn::BatchNorm1d>(1);
  Tensor x = randn({16, 4});
  (*net)(x);
  CHECK(bn->num_batches_tracked().item() == 1);
  net->eval();
  for (auto* m : net->modules()) CHECK_FALSE(m->is_training());
  Tensor y1 = (*net)(x), y2 = (*net)(x);
  CHECK(bn->num_batches_tracked().item() == 1);
  CHECK(tbtest::max_abs_diff(y1, y2) == 0); // no dropout, fixed statistics
  net->train();
  for (auto* m : net->modules()) CHECK(m->is_training());
  (*net)(x);
  CHECK(bn->num_batches_tracked().item() == 2);
}

TEST_CASE("forward hooks and pre-hooks run in order, can replace values, and are removable") {
  auto net = std::make_shared<nn::Sequential>();
  net->push_back(std::make_shared<nn::Identity>());
  net->push_back(std::make_shared<nn::ReLU>());
  Tensor x = from_vector(std::vector<double>{-1.0, 2.0}, {2});

  std::vector<std::string> log;
  auto h1 = net->register_forward_pre_hook([&](nn::Module& m, const Tensor& in) {
    log.push_back("pre:" + m.type_name());
    return in * 3.0; // replaces the input
  });
  std::vector<double> seen_in, seen_out;
  auto h2 = (*net)[1]->register_forward_hook([&](nn::Module& m, const Tensor& in, const Tensor& out) {
    log.push_back("post:" + m.type_name());
    seen_in = in.to_vector();
    seen_out = out.to_vector();
  });
  auto h3 = net->register_forward_hook([&](nn::Module&, const Tensor&, const Tensor& out) {
    log.push_back("post:net");
    return out + 1.0; // replaces the output
  });
  CHECK((*net)(x).to_vector() == std::vector<double>{1.0, 7.0});
  CHECK(log == std::vector<std::string>{"pre:Sequential", "post:ReLU", "post:net"});
  CHECK(seen_in == std::vector<double>{-3.0, 6.0}); // the child saw the replaced input
  CHECK(seen_out == std::vector<double>{0.0, 6.0});
  CHECK(h1.active());

  // forward() bypasses hooks; operator() runs them.
  log.clear();
  CHECK(net->forward(x).to_vector() == std::vector<double>{0.0, 2.0});
  CHECK(log == std::vector<std::string>{"post:ReLU"});

  h1.remove();
  h3.remove();
  h3.remove(); // twice is fine
  CHECK_FALSE(h1.active());
  log.clear();
  CHECK((*net)(x).to_vector() == std::vector<double>{0.0, 2.0});
  CHECK(log == std::vector<std::string>{"post:ReLU"});

  // A hook that removes itself while running (one-shot observer).
  int calls = 0;
  nn::HookHandle self;
  self = net->register_forward_pre_hook([&](nn::Module&, const Tensor&) {
    calls++;
    self.remove();
  });
  (*net)(x);
  (*net)(x);
  CHECK(calls == 1);
  // Removing after the module is gone is harmless.
  nn::HookHandle orphan;
  {
    nn::ReLU r;
    orphan = r.register_forward_hook([](nn::Module&, const Tensor&, const Tensor&) {});
  }
  CHECK_FALSE(orphan.active());
  orphan.remove();
  h2.remove();
}

TEST_CASE("pruning-style reparametrisation: forward uses the 'weight' attribute set by a hook") {
  nn::Linear lin(3, 2);
  Tensor w = lin.remove_parameter("weight");
  lin.register_parameter("weight_orig", w);
  Tensor mask = from_vector(std::vector<float>{1, 0, 1, 0, 1, 0}, {2, 3});
  lin.register_buffer("weight_mask", mask);
  lin.register_forward_pre_hook([](nn::Module& m, const Tensor&) {
    m.set_tensor("weight", m.get("weight_orig") * m.get("weight_mask"));
  });
  CHECK(lin.state_dict().keys() == std::vector<std::string>{"bias", "weight_orig", "weight_mask"});
  Tensor x = ones({1, 3});
  Tensor y = lin(x);
  auto wv = w.to_vector(), bv = lin.bias().to_vector(), yv = y.to_vector();
  CHECK(yv[0] == doctest::Approx(wv[0] + wv[2] + bv[0]));
  CHECK(yv[1] == doctest::Approx(wv[4] + bv[1]));
  // The gradient flows to weight_orig through the mask.
  sum(y).backward();
  CHECK(w.grad().to_vector() == std::vector<double>{1, 0, 1, 0, 1, 0});
  check_error([&] { lin.set_tensor("bias", ones({2})); }, {"'bias' is a parameter"});
}

TEST_CASE("registration errors") {
  nn::Module m;
  m.register_parameter("w", zeros({2}));
  check_error([&] { m.register_parameter("w", zeros({2})); }, {"'w' already exists"});
  check_error([&] { m.register_buffer("w", zeros({2})); }, {"'w' already exists"});
  check_error([&] { m.register_parameter("a.b", zeros({2})); }, {"'a.b'", "'.'"});
  check_error([&] { m.register_parameter("", zeros({2})); }, {"empty name"});
  Tensor leaf = ones({2}, TensorOptions(kFloat32).with_requires_grad(true));
  check_error([&] { m.register_parameter("nl", leaf * 2.0); }, {"'nl'", "leaves"});
  check_error([&] { m.register_parameter("i", zeros({2}, TensorOptions(kInt64))); }, {"int64"});
  check_error([&] { m(ones({1})); }, {"no forward"});
  check_error([&] { m.get("nope"); }, {"'nope'"});
  check_error([&] { m.remove_buffer("w"); }, {"no buffer 'w'"});
  m.register_buffer("scratch", zeros({2}), {.persistent = false});
  CHECK(m.state_dict().keys() == std::vector<std::string>{"w"});
  CHECK(m.buffers().size() == 1);
}

TEST_CASE("load_state_dict copies values, and reports every mismatch in one error") {
  auto a = small_net(), b = small_net();
  Tensor x = randn({2, 2, 3, 3});
  a->eval();
  b->eval();
  CHECK(tbtest::max_abs_diff((*a)(x), (*b)(x)) > 0);
  auto res = b->load_state_dict(a->state_dict());
  CHECK(res.missing_keys.empty());
  CHECK(res.unexpected_keys.empty());
  CHECK(tbtest::max_abs_diff((*a)(x), (*b)(x)) == 0);
  // Loading copies: parameters keep their identity and stay separate from the source.
  CHECK_FALSE(b->parameters()[0].storage() == a->parameters()[0].storage());

  StateDict bad;
  for (auto& [k, t] : a->state_dict()) bad.insert(k, t);
  bad.erase("features.0.bias");                                             // missing
  bad.insert("features.3.weight", zeros({1}));                              // unexpected
  bad.set("classifier.weight", zeros({5, 35}));                             // shape
  bad.set("features.1.num_batches_tracked", zeros({}, TensorOptions(kFloat32))); // dtype
  auto before = b->state_dict().at("features.0.weight").clone();
  check_error([&] { b->load_state_dict(bad); },
              {"4 error(s)", "missing keys: 'features.0.bias'", "unexpected keys: 'features.3.weight'",
               "size mismatch for 'classifier.weight'", "[5, 35]", "[5, 36]",
               "dtype mismatch for 'features.1.num_batches_tracked'", "float32", "int64"});
  // All or nothing: nothing was copied.
  CHECK(tbtest::max_abs_diff(b->state_dict().at("features.0.weight"), before) == 0);

  // Non-strict: missing / unexpected keys are returned, shape errors still raise.
  StateDict partial;
  partial.insert("classifier.bias", ones({5}));
  partial.insert("extra", ones({1}));
  auto r = b->load_state_dict(partial, /*strict=*/false);
  CHECK(r.missing_keys.size() == 8);
  CHECK(r.unexpected_keys == std::vector<std::string>{"extra"});
  CHECK(b->state_dict().at("classifier.bias").to_vector() == std::vector<double>(5, 1.0));
  StateDict wrong;
  wrong.insert("classifier.bias", ones({6}));
  check_error([&] { b->load_state_dict(wrong, false); }, {"size mismatch for 'classifier.bias'"});
}

TEST_CASE("to(dtype) keeps parameter identity; buffers that are not floating stay") {
  auto net = small_net();
  Tensor w = net->parameters()[0];
  Tensor nbt = net->state_dict().at("features.1.num_batches_tracked");
  Tensor before = w.clone(); // a graph holding w's AccumulateGrad node stays alive across to()
  optim::SGD opt(net->parameters(), 0.1);
  net->to(kFloat64);
  CHECK(w.dtype() == kFloat64); // the handle taken before to() sees the conversion
  CHECK(net->get_submodule("features.0").get("weight").dtype() == kFloat64);
  CHECK(net->get_submodule("features.1").get("num_batches_tracked").dtype() == kInt64);
  CHECK(net->get_submodule("features.1").get("running_var").dtype() == kFloat64);
  CHECK(tbtest::max_abs_diff(w, before) < 1e-7);
  CHECK(w.requires_grad());
  Tensor y = (*net)(randn({2, 2, 3, 3}, TensorOptions(kFloat64)));
  CHECK(y.dtype() == kFloat64);
  sum(y).backward();
  CHECK(w.grad().dtype() == kFloat64);
  opt.step(); // the optimizer made before to() updates the converted parameter
  CHECK(tbtest::max_abs_diff(w, before) > 0);
  net->to(kCPU); // same device: no-op
  CHECK(w.dtype() == kFloat64);
  net->zero_grad();
  CHECK_FALSE(w.grad().defined());
}

TEST_CASE("nn::save / nn::load round trip through a safetensors file") {
  auto a = small_net(), b = small_net();
  std::string path = "/tmp/tb_test_nn_" + std::to_string(::getpid()) + ".safetensors";
  a->train();
  (*a)(randn({4, 2, 3, 3})); // moves the BN statistics
  nn::save(*a, path, {{"epoch", "3"}});
  nn::load(*b, path);
  auto sa = a->state_dict(), sb = b->state_dict();
  CHECK(sa.keys() == sb.keys());
  for (auto& [k, t] : sa) CHECK(tbtest::max_abs_diff(t, sb.at(k)) == 0);
  CHECK(sb.at("features.1.num_batches_tracked").item() == 1);
  CHECK(load_safetensors(path).metadata.at("epoch") == "3");
  nn::Linear wrong(3, 3);
  check_error([&] { nn::load(wrong, path); }, {path, "unexpected keys"});
  std::remove(path.c_str());
}

} // TEST_SUITE
