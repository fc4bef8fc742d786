// prune: masks equal torch.nn.utils.prune's (fixtures from tools/make_prune_fixtures.py), the
// reparametrization and its hook, remove(), checkpoints, optimizers on pruned weights, errors;
// schedules and analysis; structured channel removal on the zoo; the sparse kernels.
#include "gradcheck.h"

#include <tb/models.h>
#include <tb/prune.h>

#include <cmath>
#include <cstdio>

using namespace tb;
using tbtest::check_error;
namespace prune = tb::prune;

namespace {

const SafetensorsFile& masks_fixture() {
  static SafetensorsFile f = load_safetensors(tbtest::fixture("prune_masks.safetensors"));
  return f;
}
Tensor fx(const std::string& key) { return masks_fixture().tensors.at(key); }

// A Linear/Conv2d whose weight is the fixture's `case.w` (float32, as in PyTorch).
std::shared_ptr<nn::Linear> linear_from(const std::string& c) {
  Tensor w = fx(c + ".w");
  auto m = std::make_shared<nn::Linear>(w.size(1), w.size(0));
  m->set_data("weight", w);
  return m;
}
std::shared_ptr<nn::Conv2d> conv_from(const std::string& c) {
  Tensor w = fx(c + ".w");
  auto m = std::make_shared<nn::Conv2d>(w.size(1), w.size(0), nn::Size2(w.size(2), w.size(3)));
  m->set_data("weight", w);
  return m;
}

bool same(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.to_vector() == b.to_vector();
}

int64_t count_zeros(const Tensor& t) {
  int64_t z = 0;
  for (double v : t.to_vector()) z += v == 0;
  return z;
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (auto& x : v) s += (s.empty() ? "" : ",") + x;
  return s;
}

} // namespace

TEST_SUITE("prune") {

TEST_CASE("amounts: fractions round half to even as Python's round, counts are exact") {
  CHECK(prune::Amount(0.3).units(15) == 4);  // 4.5 -> 4
  CHECK(prune::Amount(0.1).units(15) == 2);  // 1.5 -> 2
  CHECK(prune::Amount(0.5).units(5) == 2);   // 2.5 -> 2
  CHECK(prune::Amount(0.5).units(7) == 4);   // 3.5 -> 4
  CHECK(prune::Amount(0.3).units(10) == 3);  // 3.0000000000000004 -> 3
  CHECK(prune::Amount(1.0).units(9) == 9);
  CHECK(prune::Amount(0.0).units(9) == 0);
  CHECK(prune::Amount(7).units(9) == 7);
  CHECK(prune::Amount(1).is_count);
  CHECK_FALSE(prune::Amount(1.0).is_count);
  check_error([] { prune::Amount(1.5).validate("x"); }, {"amount=1.5", "[0, 1]"});
  check_error([] { prune::Amount(-0.1).validate(); }, {"amount=-0.1"});
  check_error([] { prune::Amount(-3).validate(); }, {"amount=-3", "non-negative"});
  check_error([] { prune::Amount(10).units(9); }, {"amount=10", "(9)"});
}

TEST_CASE("L1 unstructured masks equal PyTorch's: by fraction, rounding, by count") {
  for (std::string c : {"l1_frac", "l1_round_up"}) {
    auto m = linear_from(c);
    prune::l1_unstructured(*m, "weight", {.amount = c == "l1_frac" ? 0.3 : 0.1});
    CHECK_MESSAGE(same(m->get("weight_mask"), fx(c + ".mask0")), c);
  }
  CHECK(count_zeros(fx("l1_frac.mask0")) == 4);
  CHECK(count_zeros(fx("l1_round_up.mask0")) == 2);
  auto conv = conv_from("l1_count");
  prune::l1_unstructured(*conv, "weight", {.amount = 50});
  CHECK(same(conv->get("weight_mask"), fx("l1_count.mask0")));
  CHECK(count_zeros(conv->get("weight_mask")) == 50);
}

TEST_CASE("iterative pruning prunes the amount of what is left and multiplies into the mask") {
  auto conv = conv_from("l1_iter");
  prune::l1_unstructured(*conv, "weight", {.amount = 0.5});
  CHECK(same(conv->get("weight_mask"), fx("l1_iter.mask0")));
  prune::l1_unstructured(*conv, "weight", {.amount = 0.5});
  CHECK(same(conv->get("weight_mask"), fx("l1_iter.mask1")));
  prune::l1_unstructured(*conv, "weight", {.amount = 10});
  CHECK(same(conv->get("weight_mask"), fx("l1_iter.mask2")));
  CHECK(count_zeros(conv->get("weight_mask")) == 54 + 27 + 10);
  // Still one reparametrization: one orig, one mask.
  CHECK(conv->has_parameter("weight_orig"));
  CHECK_FALSE(conv->has_parameter("weight"));
}

TEST_CASE("Ln structured masks equal PyTorch's along every dim and norm") {
  struct Case {
    std::string name;
    prune::Amount amount;
    double n;
    int64_t dim;
  };
  const double inf = INFINITY;
  for (const Case& c : {Case{"ln_l2_dim0", 0.5, 2, 0}, Case{"ln_l1_dim1", 0.25, 1, 1},
                        Case{"ln_inf_dimm1", 1, inf, -1}, Case{"ln_ninf_dim2", 2, -inf, 2}}) {
    auto conv = conv_from(c.name);
    prune::ln_structured(*conv, "weight", {.amount = c.amount, .n = c.n, .dim = c.dim});
    CHECK_MESSAGE(same(conv->get("weight_mask"), fx(c.name + ".mask0")), c.name);
  }
  auto lin = linear_from("ln_l3_linear");
  prune::ln_structured(*lin, "weight", {.amount = 0.4, .n = 3, .dim = 0});
  CHECK(same(lin->get("weight_mask"), fx("ln_l3_linear.mask0")));
}

TEST_CASE("iterative structured and mixed pruning compose as PyTorch's PruningContainer") {
  auto conv = conv_from("ln_iter");
  prune::ln_structured(*conv, "weight", {.amount = 0.5, .n = 2, .dim = 0});
  CHECK(same(conv->get("weight_mask"), fx("ln_iter.mask0")));
  prune::ln_structured(*conv, "weight", {.amount = 0.5, .n = 2, .dim = 0});
  CHECK(same(conv->get("weight_mask"), fx("ln_iter.mask1")));
  prune::l1_unstructured(*conv, "weight", {.amount = 0.3});
  CHECK(same(conv->get("weight_mask"), fx("ln_iter.mask2")));
  prune::ln_structured(*conv, "weight", {.amount = 1, .n = 1, .dim = 1});
  CHECK(same(conv->get("weight_mask"), fx("ln_iter.mask3")));

  auto conv2 = conv_from("l1_then_ln");
  prune::l1_unstructured(*conv2, "weight", {.amount = 0.6});
  CHECK(same(conv2->get("weight_mask"), fx("l1_then_ln.mask0")));
  prune::ln_structured(*conv2, "weight", {.amount = 0.5, .n = 1, .dim = 0});
  CHECK(same(conv2->get("weight_mask"), fx("l1_then_ln.mask1")));
}

TEST_CASE("importance scores replace the weight in the ranking") {
  auto lin = linear_from("scores");
  prune::l1_unstructured(*lin, "weight", {.amount = 0.5, .importance_scores = fx("scores.s")});
  CHECK(same(lin->get("weight_mask"), fx("scores.mask0")));
}

TEST_CASE("global unstructured equals PyTorch's, by fraction then by count") {
  auto net = std::make_shared<nn::Sequential>();
  Tensor wa = fx("global.a.w"), wb = fx("global.b.w"), wc = fx("global.c.w");
  net->push_back("a", std::make_shared<nn::Linear>(8, 6));
  net->push_back("b", std::make_shared<nn::Conv2d>(2, 3, 3));
  net->push_back("c", std::make_shared<nn::Linear>(6, 4));
  net->set_data("a.weight", wa);
  net->set_data("b.weight", wb);
  net->set_data("c.weight", wc);
  std::vector<std::string> names = {"a.weight", "b.weight", "c.weight"};
  CHECK(prune::prunable_weights(*net) == names);
  prune::global_unstructured(*net, names, {.amount = 0.4});
  for (std::string m : {"a", "b", "c"})
    CHECK_MESSAGE(same(net->get_submodule(m).get("weight_mask"), fx("global." + m + ".mask0")), m);
  prune::global_unstructured(*net, names, {.amount = 20});
  for (std::string m : {"a", "b", "c"})
    CHECK_MESSAGE(same(net->get_submodule(m).get("weight_mask"), fx("global." + m + ".mask1")), m);
  auto r = prune::sparsity_report(*net);
  int64_t total = 48 + 54 + 24;
  CHECK(r.numel == total);
  CHECK(r.zeros == (int64_t)std::nearbyint(0.4 * total) + 20);
}

TEST_CASE("the hook recomputes weight = orig * mask before every forward; gradients are masked") {
  manual_seed(1);
  nn::Linear lin(4, 3);
  prune::l1_unstructured(lin, "weight", {.amount = 0.5});
  CHECK(prune::is_pruned(lin));
  CHECK(prune::is_pruned(lin, "weight"));
  CHECK_FALSE(prune::is_pruned(lin, "bias"));
  Tensor orig = lin.get("weight_orig"), mask = lin.get("weight_mask");
  {
    no_grad g;
    orig.add_(ones_like(orig)); // change orig: the next forward must see it
  }
  Tensor x = randn({2, 4});
  Tensor y = lin(x);
  Tensor want = linear(x, mul(orig, mask), lin.get("bias"));
  CHECK(allclose(y, want, 1e-6, 1e-6));
  CHECK(same(lin.get("weight"), mul(orig, mask)));
  sum(y).backward();
  std::vector<double> g = orig.grad().to_vector(), mv = mask.to_vector();
  for (size_t i = 0; i < g.size(); i++)
    if (mv[i] == 0) CHECK(g[i] == 0);
  // Optimizers see weight_orig only.
  auto names = lin.named_parameters();
  REQUIRE(names.size() == 2);
  CHECK(names[0].first == "bias");
  CHECK(names[1].first == "weight_orig");
}

TEST_CASE("state_dict keys as PyTorch's; remove() is exact and keeps the tensor object") {
  manual_seed(2);
  nn::Linear lin(3, 2);
  Tensor p = lin.get("weight");
  prune::l1_unstructured(lin, "weight", {.amount = 0.5});
  CHECK(join(lin.state_dict().keys()) == masks_fixture().metadata.at("keys_pruned"));
  CHECK(lin.get("weight_orig").is_same(p));
  Tensor expect = mul(lin.get("weight_orig"), lin.get("weight_mask")).detach().clone();
  prune::remove(lin, "weight");
  CHECK(join(lin.state_dict().keys()) == masks_fixture().metadata.at("keys_removed"));
  CHECK(lin.get("weight").is_same(p));
  CHECK(lin.has_parameter("weight"));
  CHECK_FALSE(lin.has_buffer("weight_mask"));
  CHECK_FALSE(lin.has_buffer("weight"));
  CHECK(same(lin.get("weight"), expect));
  CHECK_FALSE(prune::is_pruned(lin));
  check_error([&] { prune::remove(lin, "weight"); }, {"prune::remove('weight')", "no pruned"});
  // Pruning again after remove works (fresh reparametrization, one hook).
  prune::l1_unstructured(lin, "weight", {.amount = 1});
  CHECK(count_zeros(lin.get("weight_mask")) == 1);
}

TEST_CASE("training a pruned Linear with SGD (momentum, weight decay) and Adam equals PyTorch") {
  nn::Linear lin(5, 3);
  lin.set_data("weight", fx("train.w"));
  lin.set_data("bias", fx("train.b"));
  prune::l1_unstructured(lin, "weight", {.amount = 0.4});
  CHECK(same(lin.get("weight_mask"), fx("train.mask")));
  Tensor x = fx("train.x"), y = fx("train.y");
  auto steps = [&](optim::Optimizer& opt) {
    for (int i = 0; i < 3; i++) {
      opt.zero_grad();
      Tensor d = sub(lin(x), y);
      Tensor loss = mean(mul(d, d));
      loss.backward();
      opt.step();
    }
  };
  optim::SGD sgd(lin.parameters(), {.lr = 0.1, .momentum = 0.9, .weight_decay = 0.01});
  steps(sgd);
  // float32 in both; a few ulps of difference in the sums is expected.
  CHECK(allclose(lin.get("weight_orig"), fx("train.sgd.weight_orig"), 1e-5, 1e-6));
  CHECK(allclose(lin.get("weight_orig").grad(), fx("train.sgd.grad"), 1e-5, 1e-6));
  lin(x);
  CHECK(allclose(lin.get("weight"), fx("train.sgd.weight"), 1e-5, 1e-6));
  optim::Adam adam(lin.parameters(), {.lr = 0.01});
  steps(adam);
  CHECK(allclose(lin.get("weight_orig"), fx("train.adam.weight_orig"), 1e-5, 1e-6));
  lin(x);
  CHECK(allclose(lin.get("weight"), fx("train.adam.weight"), 1e-5, 1e-6));
  // The effective weight is exactly zero where the mask is.
  std::vector<double> w = lin.get("weight").to_vector(), m = lin.get("weight_mask").to_vector();
  for (size_t i = 0; i < w.size(); i++)
    if (m[i] == 0) CHECK(w[i] == 0);
}

TEST_CASE("momentum and Adam moments built before pruning do not revive pruned weights") {
  manual_seed(3);
  for (int which = 0; which < 2; which++) {
    nn::Linear lin(6, 4);
    Tensor x = randn({8, 6}), y = randn({8, 4});
    std::unique_ptr<optim::Optimizer> opt;
    if (which == 0) opt = std::make_unique<optim::SGD>(lin.parameters(),
                                                       optim::SGDOptions{.lr = 0.1, .momentum = 0.9});
    else opt = std::make_unique<optim::Adam>(lin.parameters(), optim::AdamOptions{.lr = 0.05});
    auto step = [&] {
      opt->zero_grad();
      Tensor d = sub(lin(x), y);
      mean(mul(d, d)).backward();
      opt->step();
    };
    for (int i = 0; i < 3; i++) step(); // momentum / moments are non-zero everywhere now
    prune::l1_unstructured(lin, "weight", {.amount = 0.5});
    for (int i = 0; i < 5; i++) step();
    lin(x);
    std::vector<double> w = lin.get("weight").to_vector(), m = lin.get("weight_mask").to_vector();
    std::vector<double> g = lin.get("weight_orig").grad().to_vector();
    for (size_t i = 0; i < w.size(); i++)
      if (m[i] == 0) {
        CHECK(w[i] == 0);
        CHECK(g[i] == 0);
      }
    prune::remove(lin, "weight");
    CHECK(count_zeros(lin.get("weight")) >= 12);
  }
}

TEST_CASE("a pruned checkpoint reloads into a fresh model and training resumes") {
  manual_seed(4);
  auto make = [] {
    auto net = std::make_shared<nn::Sequential>();
    net->push_back(std::make_shared<nn::Conv2d>(
        nn::Conv2dOptions{.in_channels = 1, .out_channels = 4, .kernel_size = 3, .padding = 1}));
    net->push_back(std::make_shared<nn::ReLU>());
    net->push_back(std::make_shared<nn::Flatten>());
    net->push_back(std::make_shared<nn::Linear>(4 * 5 * 5, 3));
    return net;
  };
  auto a = make();
  prune::global_unstructured(*a, prune::prunable_weights(*a), {.amount = 0.6});
  prune::ln_structured(*a, "0.weight", {.amount = 1, .n = 1, .dim = 0});
  std::string path = "/tmp/tb_prune_ckpt_" + std::to_string(::getpid()) + ".safetensors";
  nn::save(*a, path);
  auto b = make();
  StateDict ckpt = load_safetensors(path).tensors;
  std::remove(path.c_str());
  check_error([&] { b->load_state_dict(ckpt); }, {"weight_orig"}); // not reparametrized yet
  prune::reparametrize_like(*b, ckpt);
  b->load_state_dict(ckpt);
  CHECK(prune::pruned_tensors(*b) == std::vector<std::string>{"0.weight", "3.weight"});
  Tensor x = randn({2, 1, 5, 5});
  CHECK(same((*a)(x), (*b)(x)));
  // Training resumes: both take the same steps.
  optim::SGD oa(a->parameters(), {.lr = 0.1, .momentum = 0.9}),
      ob(b->parameters(), {.lr = 0.1, .momentum = 0.9});
  Tensor t = randint(0, 3, {2});
  for (int i = 0; i < 2; i++) {
    for (auto [net, opt] : {std::pair{a.get(), &oa}, std::pair{b.get(), &ob}}) {
      opt->zero_grad();
      cross_entropy((*net)(x), t).backward();
      opt->step();
    }
  }
  CHECK(same((*a)(x), (*b)(x)));
  CHECK(prune::sparsity_report(*b).zeros == prune::sparsity_report(*a).zeros);
}

TEST_CASE("random pruning: exact counts, only unpruned entries, uniform over positions") {
  Generator g(7);
  std::vector<int> hits(20, 0);
  for (int trial = 0; trial < 2000; trial++) {
    nn::Linear lin(5, 4);
    prune::random_unstructured(lin, "weight", {.amount = 0.25, .generator = &g});
    std::vector<double> m = lin.get("weight_mask").to_vector();
    REQUIRE(count_zeros(lin.get("weight_mask")) == 5);
    for (int i = 0; i < 20; i++) hits[i] += m[i] == 0;
    if (trial < 20) { // iterative: the second call prunes 0.5 of the 15 left (8), never twice
      prune::random_unstructured(lin, "weight", {.amount = 0.5, .generator = &g});
      CHECK(count_zeros(lin.get("weight_mask")) == 5 + 8);
      std::vector<double> m2 = lin.get("weight_mask").to_vector();
      for (int i = 0; i < 20; i++)
        if (m[i] == 0) CHECK(m2[i] == 0);
    }
  }
  // Each position is pruned with probability 1/4: 500 of 2000 expected, sd ~19.4; 5 sd bounds.
  for (int h : hits) {
    CHECK(h > 500 - 97);
    CHECK(h < 500 + 97);
  }
  nn::Conv2d conv(3, 8, 3);
  prune::random_structured(conv, "weight", {.amount = 3, .dim = 0, .generator = &g});
  std::vector<double> m = conv.get("weight_mask").to_vector();
  int zero_filters = 0;
  for (int o = 0; o < 8; o++) {
    double s = 0;
    for (int i = 0; i < 27; i++) s += m[o * 27 + i];
    CHECK((s == 0 || s == 27));
    zero_filters += s == 0;
  }
  CHECK(zero_filters == 3);
}

TEST_CASE("identity, custom_from_mask and a custom method") {
  nn::Linear lin(3, 2);
  prune::identity(lin, "weight");
  CHECK(count_zeros(lin.get("weight_mask")) == 0);
  CHECK(prune::is_pruned(lin));
  prune::custom_from_mask(lin, "bias", from_vector(std::vector<float>{0, 1}, {2}));
  CHECK(lin.get("bias_mask").to_vector() == std::vector<double>{0, 1});
  CHECK(lin.get("bias").to_vector()[0] == 0);
  // A custom method only says how the mask is computed: here |w| <= 0.2 is pruned.
  {
    no_grad g;
    lin.get("weight_orig").copy_(from_vector(std::vector<float>{0.1f, -0.5f, 0.3f, 0.05f,
                                                                -0.15f, 0.9f}, {2, 3}));
  }
  lin(ones({1, 3})); // the scores are the effective weight, as the last forward left it
  prune::Method threshold{.name = "threshold", .compute_mask = [](const Tensor& t,
                                                                  const Tensor& mask) {
    return mul(mask, gt(abs(t), 0.2).to(mask.dtype()));
  }};
  prune::apply(lin, "weight", threshold);
  CHECK(lin.get("weight_mask").to_vector() == std::vector<double>{0, 1, 1, 0, 0, 1});
  CHECK(prune::pruned_tensors(lin) == std::vector<std::string>{"weight", "bias"});
  CHECK(prune::remove_all(lin).size() == 2);
  CHECK_FALSE(prune::is_pruned(lin));
}

TEST_CASE("bad input: amounts, counts, names, dims, shapes; nothing changes on error") {
  auto net = std::make_shared<nn::Sequential>();
  net->push_back("fc", std::make_shared<nn::Linear>(4, 3));
  check_error([&] { prune::l1_unstructured(*net, "fc.weight", {.amount = 1.5}); },
              {"fc.weight", "amount=1.5", "[0, 1]"});
  check_error([&] { prune::l1_unstructured(*net, "fc.weight", {.amount = -2}); },
              {"fc.weight", "amount=-2"});
  check_error([&] { prune::l1_unstructured(*net, "fc.weight", {.amount = 13}); },
              {"'fc.weight' [3, 4]", "amount=13", "(12)"});
  check_error([&] { prune::l1_unstructured(*net, "fc.wieght", {.amount = 0.5}); },
              {"fc.wieght", "Linear has no parameter 'wieght'", "weight, bias"});
  check_error([&] { prune::l1_unstructured(*net, "fx.weight", {.amount = 0.5}); },
              {"fx"});
  check_error([&] { prune::ln_structured(*net, "fc.weight", {.amount = 1, .dim = 2}); },
              {"'fc.weight' [3, 4]", "dim 2", "out of range"});
  check_error([&] { prune::ln_structured(*net, "fc.bias", {.amount = 1, .dim = 0}); },
              {"fc.bias", "at least 2 dims"});
  check_error([&] { prune::l1_unstructured(*net, "fc.weight", {.amount = 0.5,
                                                 .importance_scores = ones({4, 3})}); },
              {"importance_scores", "[4, 3]", "[3, 4]"});
  CHECK_FALSE(prune::is_pruned(*net));
  CHECK(net->get_submodule("fc").has_parameter("weight"));
  // A second structured pruning along a dim that is out of range for the tensor.
  prune::ln_structured(*net, "fc.weight", {.amount = 1, .dim = 0});
  Tensor before = net->get_submodule("fc").get("weight_mask").clone();
  check_error([&] { prune::ln_structured(*net, "fc.weight", {.amount = 1, .dim = -3}); },
              {"fc.weight", "dim -3"});
  // The count is of what is left: 3 of 12 entries are gone (one row of 4... 4 are gone).
  check_error([&] { prune::l1_unstructured(*net, "fc.weight", {.amount = 9}); },
              {"amount=9", "(8)"});
  CHECK(same(net->get_submodule("fc").get("weight_mask"), before));
  check_error([&] { prune::remove(*net, "fc.bias"); }, {"fc.bias", "no pruned tensor"});
  check_error([&] { prune::global_unstructured(*net, {"fc.weight"}, {.amount = 100}); },
              {"global_unstructured", "amount=100", "(8)"});
}

TEST_CASE("clones of a pruned model keep pruning: the hook works on the copy") {
  manual_seed(5);
  auto net = std::make_shared<nn::Sequential>();
  net->push_back(std::make_shared<nn::Linear>(4, 4));
  prune::l1_unstructured(*net, "0.weight", {.amount = 0.5});
  auto copy = nn::clone(*net);
  {
    no_grad g;
    copy->get_submodule("0").get("weight_orig").fill_(1.0);
  }
  Tensor x = ones({1, 4});
  Tensor y = (*copy)(x); // each output: 2 of 4 weights survive per row... on average
  CHECK(same(copy->get_submodule("0").get("weight"), copy->get_submodule("0").get("weight_mask")));
  prune::remove(*copy, "0.weight");
  CHECK_FALSE(prune::is_pruned(*copy));
  CHECK(prune::is_pruned(*net));
  (void)y;
}


// ============================================================================================
// Structured removal

namespace {

// The Fashion-MNIST CNN of examples/train_fashion_mnist.cpp.
std::shared_ptr<nn::Sequential> fmnist_cnn() {
  auto net = std::make_shared<nn::Sequential>();
  net->push_back(std::make_shared<nn::Conv2d>(
      nn::Conv2dOptions{.in_channels = 1, .out_channels = 32, .kernel_size = 3, .padding = 1}));
  net->push_back(std::make_shared<nn::BatchNorm2d>(32));
  net->push_back(std::make_shared<nn::ReLU>());
  net->push_back(std::make_shared<nn::MaxPool2d>(2));
  net->push_back(std::make_shared<nn::Conv2d>(
      nn::Conv2dOptions{.in_channels = 32, .out_channels = 64, .kernel_size = 3, .padding = 1}));
  net->push_back(std::make_shared<nn::BatchNorm2d>(64));
  net->push_back(std::make_shared<nn::ReLU>());
  net->push_back(std::make_shared<nn::MaxPool2d>(2));
  net->push_back(std::make_shared<nn::Flatten>());
  net->push_back(std::make_shared<nn::Linear>(64 * 7 * 7, 128));
  net->push_back(std::make_shared<nn::ReLU>());
  net->push_back(std::make_shared<nn::Linear>(128, 10));
  return net;
}

// BatchNorm running statistics made non-trivial, so a BN is not the identity in eval mode.
void randomize_bn(nn::Module& net, uint64_t seed) {
  Generator g(seed);
  no_grad guard;
  for (auto& [path, m] : net.named_modules())
    if (dynamic_cast<nn::BatchNormBase*>(m)) {
      Tensor rm = m->get("running_mean"), rv = m->get("running_var");
      rm.copy_(mul(randn(rm.shape(), {}, &g), 0.1));
      rv.copy_(add(rand(rv.shape(), {}, &g), 0.5));
      Tensor w = m->get("weight"), b = m->get("bias");
      w.copy_(add(rand(w.shape(), {}, &g), 0.5));
      b.copy_(mul(randn(b.shape(), {}, &g), 0.1));
    }
}

// Makes channel c of group `grp` carry zeros: the producing filters and biases, BN scale and
// shift, depthwise filters (members index the channel at the same position: no concatenation).
void zero_channel(nn::Module& net, const prune::ChannelGroup& grp, int64_t c) {
  no_grad guard;
  for (auto& mem : grp.members) {
    if (mem.role != "out" && mem.role != "bn" && mem.role != "depthwise") continue;
    nn::Module& m = net.get_submodule(mem.module);
    for (const char* n : {"weight", "bias"}) {
      Tensor t = m.find(n);
      if (t.defined()) t.select(0, c).zero_();
    }
  }
}

bool uses_cat(const prune::ChannelGroup& grp) {
  for (auto& m : grp.members)
    if (m.type == "Cat") return true;
  return false;
}

// Zeroes channels in up to `max_groups` unlocked groups, removes them with remove_zero_channels,
// and checks the outputs did not change and the model shrank.
void check_zero_channel_removal(nn::Module& net, const Shape& in, int max_groups) {
  net.eval();
  randomize_bn(net, 11);
  auto graph = prune::trace_channels(net, in);
  auto groups = prune::channel_groups(*graph);
  int zeroed = 0;
  int64_t removed_channels = 0;
  for (auto& grp : groups) {
    if (grp.locked || uses_cat(grp) || grp.channels < 4 || zeroed >= max_groups) continue;
    zero_channel(net, grp, 1);
    zero_channel(net, grp, grp.channels - 1);
    zeroed++;
    removed_channels += 2;
  }
  REQUIRE(zeroed > 0);
  Tensor x = randn(in);
  Tensor before = net(x);
  int64_t params = net.num_parameters();
  auto report = prune::remove_zero_channels(net, in);
  CHECK(report.rows.size() == (size_t)zeroed);
  int64_t got = 0;
  for (auto& r : report.rows) got += r.before - r.after;
  CHECK(got == removed_channels);
  CHECK(report.params_after < params);
  CHECK(net.num_parameters() == report.params_after);
  Tensor after = net(x);
  CHECK(after.shape() == before.shape());
  CHECK(allclose(after, before, 1e-4, 1e-4));
  // The shrunk model still trains: forward and backward in training mode.
  net.train();
  Tensor loss = sum(net(x));
  loss.backward();
  net.eval();
}

} // namespace

TEST_CASE("channel groups of the CNN: conv -> BN -> next conv, conv -> flatten -> linear") {
  auto net = fmnist_cnn();
  auto g = prune::channel_groups(*prune::trace_channels(*net, {1, 1, 28, 28}));
  std::vector<std::string> desc;
  for (auto& grp : g) desc.push_back(grp.str());
  REQUIRE(g.size() == 5);
  CHECK(g[0].locked); // the input
  CHECK(desc[1] == "group 1 (32 channels): 0 out, 1 bn, 4 in");
  CHECK(desc[2] == "group 2 (64 channels): 4 out, 5 bn, 9 in");
  CHECK(desc[3] == "group 3 (128 channels): 9 out, 11 in");
  CHECK(g[4].locked);
  CHECK(g[4].why_locked == "the model's output");
}

TEST_CASE("structured removal keeps the outputs when only zero channels go (CNN, ResNet-18)") {
  manual_seed(21);
  auto cnn = fmnist_cnn();
  check_zero_channel_removal(*cnn, {2, 1, 28, 28}, 3);
  CHECK(cnn->get_submodule("9").get("weight").size(1) == 62 * 49);
  manual_seed(22);
  auto resnet = models::resnet18({.num_classes = 10, .small_input = true, .in_channels = 1});
  check_zero_channel_removal(*resnet, {1, 1, 16, 16}, 6);
}

TEST_CASE("structured removal keeps the outputs on MobileNetV2 and ShuffleNetV2 (depthwise, "
          "residual, concat, shuffle)") {
  manual_seed(23);
  auto mbv2 = models::mobilenet_v2({.num_classes = 10, .small_input = true, .in_channels = 1});
  check_zero_channel_removal(*mbv2, {2, 1, 16, 16}, 8);
  manual_seed(24);
  auto shuf = models::shufflenet_v2_x0_5({.num_classes = 10, .small_input = true,
                                          .in_channels = 1});
  auto groups = prune::channel_groups(*prune::trace_channels(*shuf, {1, 1, 16, 16}));
  int locked = 0, open = 0;
  for (auto& grp : groups) (grp.locked ? locked : open)++;
  CHECK(locked > 0); // the concatenated, shuffled stream
  CHECK(open > 0);   // the channels inside each branch
  check_zero_channel_removal(*shuf, {2, 1, 16, 16}, 8);
}

TEST_CASE("prune_channels on MobileNetV2: rounding to multiples of 8, smaller, still trains") {
  manual_seed(25);
  auto net = models::mobilenet_v2({.num_classes = 10, .small_input = true, .in_channels = 1});
  int64_t before = net->num_parameters();
  auto summary_before = tb::summary(*net, {1, 1, 28, 28});
  auto report = prune::prune_channels(*net, {1, 1, 28, 28}, {.amount = 0.5, .round_to = 8});
  CHECK(!report.rows.empty());
  for (auto& r : report.rows) CHECK((r.after % 8 == 0 || r.after == r.before));
  CHECK(net->num_parameters() == report.params_after);
  CHECK(report.params_after < before * 0.6);
  auto summary_after = tb::summary(*net, {1, 1, 28, 28});
  CHECK(summary_after.total_mult_adds < summary_before.total_mult_adds * 0.6);
  optim::SGD opt(net->parameters(), {.lr = 0.01, .momentum = 0.9});
  Tensor x = randn({4, 1, 28, 28}), y = randint(0, 10, {4});
  opt.zero_grad();
  cross_entropy((*net)(x), y).backward();
  opt.step();
  // A checkpoint of the shrunk model reloads into a fresh model resized like it.
  std::string path = "/tmp/tb_prune_shrunk_" + std::to_string(::getpid()) + ".safetensors";
  nn::save(*net, path);
  auto fresh = models::mobilenet_v2({.num_classes = 10, .small_input = true, .in_channels = 1});
  StateDict ckpt = load_safetensors(path).tensors;
  std::remove(path.c_str());
  prune::resize_like(*fresh, ckpt);
  fresh->load_state_dict(ckpt);
  net->eval();
  fresh->eval();
  CHECK(same((*net)(x), (*fresh)(x)));
}

TEST_CASE("ln_structured then remove_zero_channels really removes the pruned filters") {
  manual_seed(26);
  auto net = fmnist_cnn();
  prune::ln_structured(*net, "0.weight", {.amount = 0.5, .n = 2, .dim = 0});
  prune::ln_structured(*net, "4.weight", {.amount = 0.25, .n = 1, .dim = 0});
  auto report = prune::remove_zero_channels(*net, {1, 1, 28, 28});
  REQUIRE(report.rows.size() == 2);
  CHECK(net->get_submodule("0").get("weight_orig").size(0) == 16);
  CHECK(net->get_submodule("0").get("weight_mask").size(0) == 16);
  CHECK(net->get_submodule("1").get("running_mean").size(0) == 16);
  CHECK(net->get_submodule("4").get("weight_orig").shape() == Shape{48, 16, 3, 3});
  CHECK(net->get_submodule("9").get("weight").shape() == Shape{128, 48 * 49});
  // Nothing zero is left in the masks: only the pruned filters had zeros.
  CHECK(count_zeros(net->get_submodule("0").get("weight_mask")) == 0);
  Tensor y = (*net)(randn({2, 1, 28, 28}));
  CHECK(y.shape() == Shape{2, 10});
  prune::remove_all(*net);
  CHECK(net->get_submodule("0").get("weight").shape() == Shape{16, 1, 3, 3});
}

TEST_CASE("removal slices the optimizer's momentum with the parameters") {
  manual_seed(27);
  auto net = fmnist_cnn();
  optim::SGD opt(net->parameters(), {.lr = 0.01, .momentum = 0.9});
  Tensor x = randn({4, 1, 28, 28}), y = randint(0, 10, {4});
  opt.zero_grad();
  cross_entropy((*net)(x), y).backward();
  opt.step();
  Tensor w4 = net->get_submodule("4").get("weight");
  Tensor old_buf = opt.state(w4)->at("momentum_buffer").clone();
  auto graph = prune::trace_channels(*net, {1, 1, 28, 28});
  // Remove channels 0 and 5 of the first conv's group (32 channels): conv 4 loses inputs 0, 5.
  prune::remove_channels(*net, *graph, {{1, {0, 5}}}, &opt);
  Tensor buf = opt.state(w4)->at("momentum_buffer");
  REQUIRE(buf.shape() == Shape{64, 30, 3, 3});
  std::vector<int64_t> kept;
  for (int64_t i = 0; i < 32; i++)
    if (i != 0 && i != 5) kept.push_back(i);
  CHECK(same(buf, index_select(old_buf, 1, from_vector(kept, {30}))));
  opt.zero_grad();
  cross_entropy((*net)(x), y).backward();
  opt.step(); // shapes agree: no reset, no error
}

TEST_CASE("locked groups: a clear error naming the group, its members and why") {
  auto net = fmnist_cnn();
  auto graph = prune::trace_channels(*net, {1, 1, 28, 28});
  check_error([&] { prune::remove_channels(*net, *graph, {{4, {0}}}); },
              {"group 4 (10 channels", "11 out", "cannot be removed", "the model's output"});
  check_error([&] { prune::remove_channels(*net, *graph, {{0, {0}}}); },
              {"group 0", "the model's input"});
  std::vector<int64_t> all(32);
  for (int i = 0; i < 32; i++) all[i] = i;
  check_error([&] { prune::remove_channels(*net, *graph, {{1, all}}); },
              {"group 1 (32 channels)", "lose all"});
  check_error([&] { prune::remove_channels(*net, *graph, {{1, {40}}}); }, {"out of range"});
  manual_seed(28);
  auto shuf = models::shufflenet_v2_x0_5({.num_classes = 10, .small_input = true,
                                          .in_channels = 1});
  auto sg = prune::trace_channels(*shuf, {1, 1, 16, 16});
  for (auto& grp : prune::channel_groups(*sg))
    if (grp.locked && uses_cat(grp)) {
      check_error([&] { prune::remove_channels(*shuf, *sg, {{grp.id, {0}}}); },
                  {fmt::format("group {}", grp.id), "by position"});
      break;
    }
  // Functional code that changes values between modules cannot be followed.
  struct Scaled : nn::Module {
    Scaled() {
      register_module("a", std::make_shared<nn::Conv2d>(1, 4, 3));
      register_module("b", std::make_shared<nn::Conv2d>(4, 4, 3));
    }
    Tensor forward(const Tensor& x) override { return (*child("b"))(mul((*child("a"))(x), 2.0)); }
    TB_MODULE(Scaled)
  };
  Scaled s;
  check_error([&] { prune::trace_channels(s, {1, 1, 8, 8}); },
              {"input 0 of 'b'", "functional"});
}

// ============================================================================================
// Sparse kernels

namespace {

// A float32 [rows, cols] matrix with about `sparsity` of its entries zero.
Tensor sparse_matrix(int64_t rows, int64_t cols, double sparsity, Generator& g) {
  Tensor w = randn({rows, cols}, {}, &g);
  Tensor keep = ge(rand({rows, cols}, {}, &g), sparsity).to(kFloat32);
  return mul(w, keep);
}

} // namespace

TEST_CASE("sparse kernel: the fast CSR product equals the reference on random shapes") {
  Generator g(31);
  struct Case { int64_t rows, cols, n; double sparsity; };
  for (Case c : {Case{1, 1, 1, 0.0}, Case{7, 5, 3, 0.5}, Case{64, 128, 64, 0.9},
                 Case{33, 70, 130, 0.75}, Case{128, 3136, 17, 0.95}, Case{10, 20, 0, 0.5},
                 Case{16, 16, 80, 1.0}}) {
    Tensor w = sparse_matrix(c.rows, c.cols, c.sparsity, g);
    Tensor x = randn({c.n, c.cols}, {}, &g), b = randn({c.rows}, {}, &g);
    prune::CsrMatrix csr = prune::to_csr(w);
    CHECK(csr.row_ptr.back() == csr.nnz());
    Tensor ref = tbtest::with_kernels(CpuKernels::Reference,
                                      [&] { return prune::sparse_linear(x, csr, b); });
    Tensor fast = prune::sparse_linear(x, csr, b);
    Tensor dense = linear(x, w, b);
    CAPTURE(c.rows); CAPTURE(c.cols); CAPTURE(c.n);
    // float32 sums in another order than the double reference: a few ulps of the magnitudes.
    CHECK(allclose(fast, ref, 1e-5, 1e-5));
    CHECK(allclose(dense, ref, 1e-4, 1e-4));
    Tensor nobias = prune::sparse_linear(x, csr);
    CHECK(allclose(nobias, linear(x, w), 1e-4, 1e-4));
  }
}

TEST_CASE("SparseConv2d equals conv2d: kernels, strides, padding, dilation") {
  Generator g(35);
  struct Case { int64_t n, c, o, h, w, kh, kw; Conv2dParams p; };
  for (Case k : {Case{2, 3, 8, 9, 9, 1, 1, {}}, Case{1, 4, 6, 7, 8, 3, 3, {.pad_h = 1, .pad_w = 1}},
                 Case{3, 5, 7, 11, 9, 3, 3, {.stride_h = 2, .stride_w = 2, .pad_h = 1, .pad_w = 1}},
                 Case{1, 2, 4, 10, 10, 3, 2, {.stride_h = 1, .stride_w = 3, .pad_h = 2,
                                             .dilation_h = 2, .dilation_w = 1}},
                 Case{2, 3, 5, 6, 6, 1, 1, {.stride_h = 2, .stride_w = 2}}}) {
    Tensor w = mul(randn({k.o, k.c, k.kh, k.kw}, {}, &g),
                   ge(rand({k.o, k.c, k.kh, k.kw}, {}, &g), 0.7).to(kFloat32));
    Tensor b = randn({k.o}, {}, &g), x = randn({k.n, k.c, k.h, k.w}, {}, &g);
    prune::SparseConv2d sc(w, b, k.p);
    no_grad ng;
    Tensor want = conv2d(x, w, b, k.p), got = sc(x);
    CAPTURE(k.kh); CAPTURE(k.p.stride_h); CAPTURE(k.p.pad_h);
    CHECK(got.shape() == want.shape());
    CHECK(allclose(got, want, 1e-4, 1e-4));
    Tensor ref = tbtest::with_kernels(CpuKernels::Reference, [&] { return sc(x); });
    CHECK(allclose(got, ref, 1e-5, 1e-5));
  }
  // The CSR copy follows the weight's data.
  Tensor w = ones({2, 1, 1, 1});
  prune::SparseConv2d sc(w, Tensor(), {});
  CHECK(sc.csr().nnz() == 2);
  sc.set_data("weight", zeros({2, 1, 1, 1}));
  CHECK(sc.csr().nnz() == 0);
}

TEST_CASE("SparseLinear and SparseConv2d in a model; sparsify keeps the outputs") {
  manual_seed(32);
  Generator g(33);
  auto net = std::make_shared<nn::Sequential>();
  net->push_back(std::make_shared<nn::Conv2d>(3, 16, 1));
  net->push_back(std::make_shared<nn::ReLU>());
  net->push_back(std::make_shared<nn::Conv2d>(16, 8, 1));
  net->push_back(std::make_shared<nn::Flatten>());
  net->push_back(std::make_shared<nn::Linear>(8 * 5 * 5, 10));
  prune::global_unstructured(*net, prune::prunable_weights(*net), {.amount = 0.8});
  prune::remove_all(*net);
  Tensor x = randn({4, 3, 5, 5}, {}, &g);
  Tensor before;
  {
    no_grad ng;
    before = (*net)(x);
  }
  auto rows = prune::sparsify(*net, {1, 3, 5, 5}, {.min_sparsity = 0.0, .measure = false});
  REQUIRE(rows.size() == 3);
  for (auto& r : rows) CHECK(r.replaced);
  CHECK(net->get_submodule("2").type_name() == "SparseConv2d");
  CHECK(net->get_submodule("4").type_name() == "SparseLinear");
  CHECK(net->state_dict().keys() == std::vector<std::string>{"0.weight", "0.bias", "2.weight",
                                                              "2.bias", "4.weight", "4.bias"});
  no_grad ng;
  CHECK(allclose((*net)(x), before, 1e-5, 1e-5));
  // Measured: replaced or not, the outputs stay.
  auto net2 = nn::clone(*net);
  (void)net2;
  check_error([&] {
    enable_grad eg;
    Tensor xg = randn({1, 3, 5, 5}).requires_grad_(true);
    (*net)(xg);
  }, {"inference only"});
  auto pruned = std::make_shared<nn::Sequential>();
  pruned->push_back(std::make_shared<nn::Linear>(4, 4));
  prune::l1_unstructured(*pruned, "0.weight", {.amount = 0.5});
  check_error([&] { prune::sparsify(*pruned, {1, 4}); }, {"remove_all", "0.weight"});
}

TEST_CASE("sparsify measures: it replaces a layer only when the sparse kernel is faster") {
  manual_seed(34);
  auto net = std::make_shared<nn::Sequential>();
  net->push_back(std::make_shared<nn::Linear>(256, 256));
  net->push_back(std::make_shared<nn::ReLU>());
  net->push_back(std::make_shared<nn::Linear>(256, 256));
  prune::l1_unstructured(*net, "0.weight", {.amount = 0.97});
  prune::l1_unstructured(*net, "2.weight", {.amount = 0.1});
  prune::remove_all(*net);
  Tensor x = randn({8, 256});
  Tensor before;
  {
    no_grad ng;
    before = (*net)(x);
  }
  auto rows = prune::sparsify(*net, {1, 256}, {.min_sparsity = 0.5, .batch = 8, .repeats = 3});
  REQUIRE(rows.size() == 2);
  CHECK(rows[1].dense_ms == 0); // below min_sparsity: not measured
  CHECK_FALSE(rows[1].replaced);
  CHECK(rows[0].dense_ms > 0);
  CHECK(rows[0].replaced == (rows[0].sparse_ms < rows[0].dense_ms));
  no_grad ng;
  CHECK(allclose((*net)(x), before, 1e-5, 1e-5));
}

// ============================================================================================
// Schedules and analysis

TEST_CASE("AGP: Zhu & Gupta's cubic schedule, pruning every dt steps to s_t") {
  prune::AGPOptions o{.initial_sparsity = 0.0, .final_sparsity = 0.9, .start_step = 10,
                      .frequency = 5, .num_steps = 4};
  CHECK(prune::agp_sparsity(o, 0) == 0.0);
  CHECK(prune::agp_sparsity(o, 10) == 0.0);
  // s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3
  CHECK(prune::agp_sparsity(o, 15) == doctest::Approx(0.9 - 0.9 * std::pow(0.75, 3)));
  CHECK(prune::agp_sparsity(o, 20) == doctest::Approx(0.9 - 0.9 * 0.125));
  CHECK(prune::agp_sparsity(o, 30) == doctest::Approx(0.9));
  CHECK(prune::agp_sparsity(o, 100) == doctest::Approx(0.9));
  manual_seed(41);
  auto net = fmnist_cnn();
  prune::AGP agp(*net, {}, o);
  std::vector<int64_t> pruned_at;
  double last = 0;
  for (int64_t t = 0; t <= 40; t++) {
    if (agp.step(t)) {
      pruned_at.push_back(t);
      auto r = prune::sparsity_report(*net);
      CHECK(r.sparsity() == doctest::Approx(prune::agp_sparsity(o, t)).epsilon(1e-4));
      CHECK(r.sparsity() >= last); // masks only grow
      last = r.sparsity();
    }
  }
  CHECK(pruned_at == std::vector<int64_t>{10, 15, 20, 25, 30});
  CHECK(last == doctest::Approx(0.9).epsilon(1e-4));
  CHECK(agp.current_sparsity() == doctest::Approx(0.9));
  // Per-tensor AGP: every tensor at s_t.
  auto net2 = fmnist_cnn();
  o.global = false;
  prune::AGP per(*net2, {}, o);
  per.step(30);
  for (auto& row : prune::sparsity_report(*net2).rows)
    CHECK(row.sparsity() == doctest::Approx(0.9).epsilon(1e-3));
  check_error([&] { prune::AGP bad(*net2, {}, {.final_sparsity = 1.5}); }, {"final_sparsity"});
}

TEST_CASE("iterative pruning: each round prunes the fraction of what is left, then fine-tunes") {
  manual_seed(42);
  auto net = fmnist_cnn();
  std::vector<double> seen;
  prune::iterative_pruning(*net, {}, {.amount_per_round = 0.5, .rounds = 3}, [&](int round) {
    seen.push_back(prune::sparsity_report(*net).sparsity());
    CHECK(round == (int)seen.size() - 1);
  });
  REQUIRE(seen.size() == 3);
  CHECK(seen[0] == doctest::Approx(0.5).epsilon(1e-4));
  CHECK(seen[1] == doctest::Approx(0.75).epsilon(1e-4));
  CHECK(seen[2] == doctest::Approx(0.875).epsilon(1e-4));
  // Per layer: each tensor loses the same fraction.
  auto net2 = fmnist_cnn();
  prune::iterative_pruning(*net2, {}, {.amount_per_round = 0.2, .rounds = 2, .global = false},
                           nullptr);
  for (auto& row : prune::sparsity_report(*net2).rows)
    CHECK(row.sparsity() == doctest::Approx(0.36).epsilon(0.02));
}

TEST_CASE("lottery ticket: rewinding restores the saved weights under the masks") {
  manual_seed(43);
  auto net = fmnist_cnn();
  prune::LotteryTicket ticket(*net);
  Tensor w0 = net->get_submodule("9").get("weight").clone();
  optim::SGD opt(net->parameters(), {.lr = 0.1});
  Tensor x = randn({4, 1, 28, 28}), y = randint(0, 10, {4});
  opt.zero_grad();
  cross_entropy((*net)(x), y).backward();
  opt.step();
  CHECK_FALSE(same(net->get_submodule("9").get("weight"), w0));
  prune::global_unstructured(*net, prune::prunable_weights(*net), {.amount = 0.8});
  ticket.rewind();
  CHECK(same(net->get_submodule("9").get("weight_orig"), w0)); // by name, through _orig
  Tensor mask = net->get_submodule("9").get("weight_mask").clone();
  (*net)(x);
  CHECK(same(net->get_submodule("9").get("weight"), mul(w0, mask)));
  ticket.random_reinit();
  CHECK_FALSE(same(net->get_submodule("9").get("weight_orig"), w0));
  CHECK(same(net->get_submodule("9").get("weight_mask"), mask)); // masks stay
  // Kaiming-uniform(a = sqrt(5)) bound 1/sqrt(fan_in).
  double bound = 1.0 / std::sqrt(3136.0);
  CHECK(max(abs(net->get_submodule("9").get("weight_orig"))).item() <= bound);
}

TEST_CASE("sparsity report and sensitivity analysis") {
  manual_seed(44);
  auto net = fmnist_cnn();
  prune::l1_unstructured(*net, "9.weight", {.amount = 0.5});
  auto r = prune::sparsity_report(*net);
  REQUIRE(r.rows.size() == 4);
  CHECK(r.rows[2].name == "9.weight");
  CHECK(r.rows[2].zeros == 128 * 3136 / 2);
  CHECK(r.rows[0].zeros == 0);
  CHECK(r.str().find("9.weight") != std::string::npos);
  CHECK(r.json().find("\"sparsity\": 0.500000") != std::string::npos);
  // Sensitivity: the metric here is the fraction of zeros the evaluation sees; the model itself
  // is never changed.
  auto rows = prune::sensitivity(*net, [](nn::Module& m) {
    return prune::sparsity_report(m).sparsity();
  }, {.sparsities = {0.5, 0.9}, .names = {"0.weight", "11.weight"}});
  REQUIRE(rows.size() == 4);
  CHECK(rows[0].name == "0.weight");
  CHECK(rows[1].sparsity == 0.9);
  CHECK(rows[3].metric > rows[2].metric);
  CHECK(prune::sparsity_report(*net).zeros == r.zeros);
  CHECK(prune::sensitivity_json(rows).find("11.weight") != std::string::npos);
}

TEST_CASE("the usage snippet at the top of tb/prune.h runs") {
  manual_seed(45);
  auto net = fmnist_cnn();
  namespace prune = tb::prune;
  prune::l1_unstructured(*net, "0.weight", {.amount = 0.3});      // 30% of the entries
  prune::ln_structured(*net, "4.weight", {.amount = 2, .n = 2, .dim = 0}); // 2 filters
  prune::global_unstructured(*net, prune::prunable_weights(*net), {.amount = 0.8});
  prune::remove(*net, "0.weight");                                // bake the mask in
  prune::RemovalReport r = prune::remove_zero_channels(*net, {1, 1, 28, 28}); // shrink
  CHECK(net->get_submodule("4").get("weight_orig").size(0) <= 62);
  CHECK(r.params_after < r.params_before);
  Tensor y = (*net)(randn({1, 1, 28, 28}));
  CHECK(y.shape() == Shape{1, 10});
}

TEST_CASE("global pruning with importance scores by path") {
  auto net = std::make_shared<nn::Sequential>();
  net->push_back(std::make_shared<nn::Linear>(2, 2));
  net->push_back(std::make_shared<nn::Linear>(2, 2));
  // Scores rank the second layer's entries lowest, whatever the weights are.
  prune::global_unstructured(*net, {"0.weight", "1.weight"},
                             {.amount = 4, .importance_scores = {{"0.weight", full({2, 2}, 5.0)},
                                                                 {"1.weight", full({2, 2}, 1.0)}}});
  CHECK(count_zeros(net->get_submodule("0").get("weight_mask")) == 0);
  CHECK(count_zeros(net->get_submodule("1").get("weight_mask")) == 4);
  check_error([&] { prune::global_unstructured(*net, {"0.weight"}, {.amount = 0.5,
                       .importance_scores = {{"0.weight", ones({3})}}}); },
              {"importance_scores of '0.weight'", "[3]", "[2, 2]"});
}

TEST_CASE("latency-aware channel counts: candidates measured, the choice among them") {
  manual_seed(46);
  auto net = fmnist_cnn();
  auto report = prune::prune_channels(*net, {1, 1, 28, 28},
                                      {.amount = 0.5, .round_to = 8, .latency_candidates = 3,
                                       .latency_batch = 8});
  // A group whose fastest candidate is its full width keeps all its channels (no row).
  CHECK(report.rows.size() <= 3);
  for (auto& r : report.rows) {
    CAPTURE(r.latency);
    CHECK(r.latency.find(" ms") != std::string::npos);
    // 50% rounded to 8 is the first candidate; the choice is one of the candidates.
    int64_t first = (r.before / 2 + 7) / 8 * 8;
    CHECK((r.after == first || r.after == first + 8 || r.after == first + 16));
    CHECK(r.latency.find("-> " + std::to_string(r.after)) != std::string::npos);
  }
  if (!report.rows.empty()) CHECK(report.str().find("[latency ") != std::string::npos);
  Tensor y = (*net)(randn({2, 1, 28, 28}));
  CHECK(y.shape() == Shape{2, 10});
}

} // TEST_SUITE
