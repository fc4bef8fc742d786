// distill: the distillation loss against PyTorch 1.13 fixtures (tools/make_distill_fixtures.py),
// both alpha conventions, the 'mean' vs 'batchmean' mis-scaling, float64 finite-difference
// gradients, attention transfer, feature capture by hooks and the 1×1 adapters, the teacher in
// eval mode under no_grad, the per-epoch logit cache, and every bad input the issue names.
//
// Tolerance: the fixtures and our computation are float64 compositions of the same formulas
// (log_softmax, softmax, kl_div, cross_entropy) in a different summation order: 1e-12 relative.
#include "gradcheck.h"

#include <tb/distill.h>

#include <cmath>
#include <map>

using namespace tb;
using tbtest::check_error;
using tbtest::max_abs_diff;
namespace kd = tb::distill;

namespace {

const TensorDict& fixtures() {
  static TensorDict fx = load_safetensors(tbtest::fixture("distill_losses.safetensors")).tensors;
  return fx;
}

void expect_close(const Tensor& got, const Tensor& want, const std::string& what,
                  double tol = 1e-12) {
  INFO(what);
  REQUIRE(got.shape() == want.shape());
  double scale = std::max(1.0, max_abs_diff(want, zeros_like(want)));
  CHECK(max_abs_diff(got, want) <= tol * scale);
}

kd::DistillationLoss hinton(double T, double alpha) {
  return kd::DistillationLoss(
      {.temperature = T, .alpha = alpha, .alpha_weights = kd::AlphaWeights::hard_loss});
}

// A small conv net: conv(1->4) bn relu | conv(4->c2) relu | pool flatten linear(c2 -> 3).
std::shared_ptr<nn::Sequential> small_net(int64_t c2, uint64_t seed) {
  manual_seed(seed);
  auto net = std::make_shared<nn::Sequential>();
  net->push_back(std::make_shared<nn::Conv2d>(
      nn::Conv2dOptions{.in_channels = 1, .out_channels = 4, .kernel_size = 3, .padding = 1}));
  net->push_back(std::make_shared<nn::BatchNorm2d>(4));
  net->push_back(std::make_shared<nn::ReLU>());
  net->push_back(std::make_shared<nn::Conv2d>(
      nn::Conv2dOptions{.in_channels = 4, .out_channels = c2, .kernel_size = 3, .padding = 1}));
  net->push_back(std::make_shared<nn::ReLU>());
  net->push_back(std::make_shared<nn::AdaptiveAvgPool2d>(1));
  net->push_back(std::make_shared<nn::Flatten>());
  net->push_back(std::make_shared<nn::Linear>(c2, 3));
  return net;
}

} // namespace

TEST_SUITE("distill") {

TEST_CASE("KD loss equals PyTorch: hard, soft (batchmean), total and the student gradient") {
  const TensorDict& fx = fixtures();
  for (std::string c : {"kd_a", "kd_b", "kd_c", "kd_d", "kd_e"}) {
    INFO(c);
    auto cfg = fx[c + ".cfg"].to_vector();
    Tensor s = fx[c + ".s"].detach().clone().requires_grad_(true);
    kd::DistillationTerms r = hinton(cfg[0], cfg[1]).terms(s, fx[c + ".t"], fx[c + ".y"]);
    expect_close(r.hard, fx[c + ".kd_hard"], "hard");
    expect_close(r.soft, fx[c + ".kd_soft"], "soft");
    expect_close(r.total, fx[c + ".kd_total"], "total");
    CHECK(r.hard_weight == cfg[1]);
    CHECK(r.soft_weight == 1 - cfg[1]);
    r.total.backward();
    expect_close(s.grad(), fx[c + ".ds"], "d total / d student");
  }
}

TEST_CASE("alpha on the soft loss is the same loss with alpha -> 1 - alpha, never confused") {
  const TensorDict& fx = fixtures();
  const std::string c = "kd_a"; // alpha 0.5 would hide a swap: use 0.9 vs 0.1 on the same data
  Tensor s = fx[c + ".s"], t = fx[c + ".t"], y = fx[c + ".y"];
  kd::DistillationLoss hard_09({.temperature = 4, .alpha = 0.9,
                                .alpha_weights = kd::AlphaWeights::hard_loss});
  kd::DistillationLoss soft_01({.temperature = 4, .alpha = 0.1,
                                .alpha_weights = kd::AlphaWeights::soft_loss});
  kd::DistillationLoss soft_09({.temperature = 4, .alpha = 0.9,
                                .alpha_weights = kd::AlphaWeights::soft_loss});
  CHECK(hard_09.hard_weight() == 0.9);
  CHECK(soft_09.hard_weight() == doctest::Approx(0.1));
  CHECK(soft_09.soft_weight() == 0.9);
  expect_close(soft_01(s, t, y), hard_09(s, t, y), "soft_loss 0.1 == hard_loss 0.9");
  kd::DistillationTerms r = soft_09.terms(s, t, y);
  expect_close(r.total, add(mul(r.hard, 0.1), mul(r.soft, 0.9)), "soft_loss 0.9");
  CHECK(std::abs(r.total.item() - hard_09(s, t, y).item()) > 1e-3); // the two really differ
  // No default: a loss that does not say which term alpha weights is refused.
  check_error([] { kd::DistillationLoss({.temperature = 4, .alpha = 0.5}); },
              {"which term alpha weights", "AlphaWeights::hard_loss", "AlphaWeights::soft_loss"});
}

TEST_CASE("'mean' instead of 'batchmean' makes the soft term C times too small (PyTorch too)") {
  const TensorDict& fx = fixtures();
  for (std::string c : {"kd_a", "kd_b", "kd_c"}) {
    INFO(c);
    auto cfg = fx[c + ".cfg"].to_vector();
    Tensor s = fx[c + ".s"].detach().clone().requires_grad_(true);
    Tensor t = fx[c + ".t"];
    double C = (double)s.size(1);
    Tensor batchmean = kd::soft_kl(s, t, cfg[0]);
    Tensor mean = kd::soft_kl(s, t, cfg[0], kd::KLReduction::elementwise_mean);
    expect_close(mean, fx[c + ".kd_soft_mean"], "elementwise_mean == kl_div(reduction='mean')");
    CHECK(batchmean.item() == doctest::Approx(C * mean.item()).epsilon(1e-12));
    kd::DistillationLoss loss({.temperature = cfg[0], .alpha = cfg[1],
                               .alpha_weights = kd::AlphaWeights::hard_loss,
                               .kl_reduction = kd::KLReduction::elementwise_mean});
    Tensor total = loss(s, t, fx[c + ".y"]);
    expect_close(total, fx[c + ".kd_total_mean"], "total with 'mean'");
    total.backward();
    expect_close(s.grad(), fx[c + ".ds_mean"], "gradient with 'mean'");
  }
}

TEST_CASE("KD gradients: float64 finite differences; the teacher gets none") {
  Tensor s = tbtest::r64({4, 5}, 1) * 2.0, t = tbtest::r64({4, 5}, 2) * 2.0;
  Tensor y = from_vector(std::vector<int64_t>{0, 4, 2, 2}, {4});
  for (double T : {0.5, 1.0, 4.0}) {
    INFO("T = " << T);
    CHECK(tbtest::gradcheck([&](const std::vector<Tensor>& x) { return kd::soft_kl(x[0], t, T); },
                            {s}));
    for (auto w : {kd::AlphaWeights::hard_loss, kd::AlphaWeights::soft_loss})
      CHECK(tbtest::gradcheck(
          [&](const std::vector<Tensor>& x) {
            return kd::DistillationLoss({.temperature = T, .alpha = 0.3, .alpha_weights = w})(
                x[0], t, y);
          },
          {s}));
  }
  Tensor tg = t.detach().clone().requires_grad_(true), sg = s.detach().clone().requires_grad_(true);
  hinton(4, 0.5)(sg, tg, y).backward();
  CHECK(sg.grad().defined());
  CHECK_FALSE(tg.grad().defined());
  // Soft-only KD at T: the gradient is T (softmax(s/T) - softmax(t/T)) / N.
  Tensor s2 = s.detach().clone().requires_grad_(true);
  kd::soft_kl(s2, t, 4.0).backward();
  Tensor want = mul(sub(softmax(div(s, 4.0), 1), softmax(div(t, 4.0), 1)), 4.0 / 4);
  CHECK(max_abs_diff(s2.grad(), want) < 1e-14);
}

TEST_CASE("bad input: temperature, alpha, shapes, labels") {
  Tensor s = randn({4, 10}), t = randn({4, 10}), y = randint(0, 10, {4});
  for (double T : {0.0, -1.0, std::nan(""), (double)INFINITY})
    check_error([&] { hinton(T, 0.5); }, {"temperature must be a finite number > 0"});
  check_error([&] { kd::soft_kl(s, t, 0.0); }, {"temperature", "got 0"});
  for (double a : {-0.1, 1.5, std::nan("")})
    check_error([&] { hinton(4, a); }, {"alpha must be in [0, 1]", "hard loss"});
  check_error([&] { kd::DistillationLoss({.temperature = 4, .alpha = 2,
                                          .alpha_weights = kd::AlphaWeights::soft_loss}); },
              {"alpha must be in [0, 1]", "soft loss", "got 2"});
  CHECK_NOTHROW(hinton(4, 0.0));
  CHECK_NOTHROW(hinton(4, 1.0));
  check_error([&] { hinton(4, 0.5)(s, randn({4, 100}), y); },
              {"teacher and student logits must have the same shape", "[4, 10]", "[4, 100]"});
  check_error([&] { kd::soft_kl(s, randn({5, 10}), 2.0); }, {"same shape", "[5, 10]"});
  check_error([&] { hinton(4, 0.5)(randn({4, 10, 2}), randn({4, 10, 2}), y); },
              {"must be [N, C]", "[4, 10, 2]"});
  check_error([&] { hinton(4, 0.5)(s, t, randint(0, 10, {3})); }, {"labels must be [N] = [4]"});
}

TEST_CASE("attention transfer equals Zagoruyko & Komodakis' code; float64 gradients") {
  const TensorDict& fx = fixtures();
  for (std::string c : {"at_a", "at_b"}) {
    INFO(c);
    Tensor fs = fx[c + ".fs"].detach().clone().requires_grad_(true);
    expect_close(kd::attention_map(fs), fx[c + ".at_map_s"], "attention map");
    Tensor l = kd::attention_transfer_loss(fs, fx[c + ".ft"]);
    expect_close(l, fx[c + ".at_loss"], "loss");
    l.backward();
    expect_close(fs.grad(), fx[c + ".dfs"], "d loss / d student features");
  }
  Tensor ft = tbtest::r64({2, 5, 3, 3}, 4);
  CHECK(tbtest::gradcheck(
      [&](const std::vector<Tensor>& x) { return kd::attention_transfer_loss(x[0], ft); },
      {tbtest::r64({2, 3, 3, 3}, 3)}));
  check_error([&] { kd::attention_transfer_loss(randn({2, 3, 4, 4}), randn({2, 3, 5, 4})); },
              {"same batch and spatial size", "[2, 3, 4, 4]", "[2, 3, 5, 4]"});
  check_error([&] { kd::attention_map(randn({2, 3})); }, {"must be [N, C, H, W]"});
}

TEST_CASE("FeatureCapture: hooks capture the outputs of the named modules, also of a join") {
  auto net = small_net(6, 1);
  Tensor x = randn({2, 1, 5, 5});
  kd::FeatureCapture cap(*net, {"2", "4"});
  check_error([&] { cap.get("2"); }, {"nothing captured at '2'"});
  Tensor y = (*net)(x);
  // The same tensors by hand, one layer at a time.
  Tensor h = x;
  std::vector<Tensor> outs;
  for (size_t i = 0; i < net->size(); i++) outs.push_back(h = (*(*net)[i])(h));
  CHECK(max_abs_diff(cap.get("2"), outs[2]) == 0);
  CHECK(max_abs_diff(cap.get(1), outs[4]) == 0);
  CHECK(cap.get("4").requires_grad()); // the student's feature keeps its graph
  check_error([&] { cap.get("7"); }, {"'7' is not one of the captured paths"});
  check_error([&] { kd::FeatureCapture(*net, {"9"}); }, {"9"});
  cap.clear();
  check_error([&] { cap.get(0); }, {"nothing captured"});
  { // a residual join: nn::Add as a child, called with two inputs
    auto add = std::make_shared<nn::Add>();
    kd::FeatureCapture join_cap(*add, {""});
    Tensor a = randn({2, 3}), b = randn({2, 3});
    (*add)(a, b);
    CHECK(max_abs_diff(join_cap.get(0), a + b) == 0);
  }
  { // hooks go away with the capture
    kd::FeatureCapture tmp(*net, {"0"});
  }
  (*net)(x);
  CHECK(max_abs_diff(cap.get("2"), outs[2]) == 0);
}

TEST_CASE("FeatureDistiller: 1x1 adapter when channels differ, pooling, loss and gradients") {
  auto student = small_net(6, 1), teacher = small_net(8, 2);
  kd::FeatureDistiller fd(*student, *teacher, {{"2", "2"}, {"4", "4"}}, {1, 1, 6, 6});
  // pair 0: 4 vs 4 channels -> Identity; pair 1: 6 -> 8 -> Conv2d(6, 8, 1) without bias.
  CHECK(fd.child("0")->type_name() == "Identity");
  auto conv = std::dynamic_pointer_cast<nn::Conv2d>(fd.child("1"));
  REQUIRE(conv);
  CHECK(conv->weight().shape() == Shape{8, 6, 1, 1});
  CHECK_FALSE(conv->bias().defined());
  CHECK(fd.parameters().size() == 1);
  CHECK(student->is_training()); // the probe restored the training flags
  check_error([&] { fd.loss(); }, {"nothing captured"}); // the probe's features were dropped

  Tensor x = randn({3, 1, 6, 6});
  Tensor ys = (*student)(x);
  { no_grad ng; teacher->eval(); (*teacher)(x); }
  Tensor l = fd.loss();
  // By hand: the same features through the layers.
  Tensor s2 = (*(*student)[2])((*(*student)[1])((*(*student)[0])(x)));
  Tensor s4 = (*(*student)[4])((*(*student)[3])(s2));
  Tensor t2, t4;
  {
    no_grad ng;
    t2 = (*(*teacher)[2])((*(*teacher)[1])((*(*teacher)[0])(x)));
    t4 = (*(*teacher)[4])((*(*teacher)[3])(t2));
  }
  Tensor want = mse_loss(s2, t2) + mse_loss((*conv)(s4), t4);
  CHECK(l.item() == doctest::Approx(want.item()).epsilon(1e-6));
  l.backward();
  CHECK(conv->weight().grad().defined());
  CHECK(student->at<nn::Conv2d>(0)->weight().grad().defined());
  CHECK_FALSE(teacher->at<nn::Conv2d>(0)->weight().grad().defined());

  // Attention transfer: no adapters; different spatial sizes are pooled to the smaller.
  auto big = small_net(5, 3);
  big->set_submodule("5", std::make_shared<nn::Identity>()); // keep 6x6 maps (flatten: 180)
  big->set_submodule("7", std::make_shared<nn::Linear>(5 * 6 * 6, 3));
  auto pooled = std::make_shared<nn::Sequential>(std::initializer_list<nn::ModulePtr>{
      std::make_shared<nn::AvgPool2d>(2), std::make_shared<nn::Conv2d>(1, 7, 1)});
  kd::FeatureDistiller at(*big, *pooled, {{"4", "1"}}, {1, 1, 6, 6}, kd::FeatureLoss::attention);
  CHECK(at.parameters().empty());
  (*big)(x);
  { no_grad ng; (*pooled)(x); }
  Tensor got = at.loss();
  Tensor fb = (*(*big)[4])((*(*big)[3])((*(*big)[2])((*(*big)[1])((*(*big)[0])(x)))));
  Tensor fp;
  { no_grad ng; fp = (*pooled)(x); }
  Tensor want_at = kd::attention_transfer_loss(adaptive_avg_pool2d(fb, 3, 3), fp);
  CHECK(got.item() == doctest::Approx(want_at.item()).epsilon(1e-6));
  check_error([&] { kd::FeatureDistiller(*student, *teacher, {{"7", "7"}}, {1, 1, 6, 6}); },
              {"must be [N, C, H, W]", "student '7'"});
}

TEST_CASE("Teacher: eval mode under no_grad; BN statistics untouched; logit cache by batch") {
  auto net = small_net(6, 4);
  kd::Teacher teacher(net);
  CHECK_FALSE(net->is_training());
  net->train(); // somebody switches it back
  Tensor rm = net->at<nn::BatchNorm2d>(1)->running_mean().clone();
  Tensor x = randn({4, 1, 6, 6});
  Tensor l = teacher.logits(x);
  CHECK_FALSE(l.requires_grad());
  CHECK_FALSE(net->is_training());
  CHECK(max_abs_diff(net->at<nn::BatchNorm2d>(1)->running_mean(), rm) == 0);

  manual_seed(9);
  auto ds = std::make_shared<data::TensorDataset>(randn({10, 1, 6, 6}), randint(0, 3, {10}));
  data::DataLoader loader(ds, {.batch_size = 4, .shuffle = true, .seed = 3});
  kd::TeacherLogitCache cache;
  cache.compute(teacher, loader, 2);
  CHECK(cache.size() == 3);
  CHECK(loader.epoch() == 2);
  int64_t b = 0;
  for (const auto& batch : loader) {
    CHECK(max_abs_diff(cache.logits(b, batch.targets), teacher.logits(batch.inputs)) == 0);
    b++;
  }
  check_error([&] { cache.logits(3, randint(0, 3, {4})); }, {"batch 3 of epoch 2 is not cached"});
  // Epoch 3's order differs from the cached epoch 2's.
  bool mismatch = false;
  b = 0;
  for (const auto& batch : loader) { // epoch 3 now
    try {
      cache.logits(b++, batch.targets);
    } catch (const Error& e) {
      mismatch = std::string(e.what()).find("differs from the cached batch") != std::string::npos;
      break;
    }
  }
  CHECK(mismatch);
}

TEST_CASE("distillation moves the student toward the teacher (a few SGD steps)") {
  auto teacher = small_net(8, 5), student = small_net(4, 6);
  kd::Teacher t(teacher);
  Tensor x = randn({32, 1, 6, 6}), y = randint(0, 3, {32});
  kd::DistillationLoss loss_fn({.temperature = 2, .alpha = 0.0,
                                .alpha_weights = kd::AlphaWeights::hard_loss}); // soft only
  optim::SGD opt(student->parameters(), {.lr = 0.5, .momentum = 0.9});
  Tensor tl = t.logits(x);
  double first = 0, last = 0;
  for (int step = 0; step < 30; step++) {
    Tensor l = loss_fn((*student)(x), tl, y);
    if (step == 0) first = l.item();
    last = l.item();
    opt.zero_grad();
    l.backward();
    opt.step();
  }
  CHECK(last < 0.5 * first);
}

} // TEST_SUITE
