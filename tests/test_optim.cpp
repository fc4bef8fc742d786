// optim: SGD / Adam / AdamW steps and LR schedulers against values computed with PyTorch 1.13
// (/usr/bin/python3, float64; the script is in the comments), state_dict round trips, errors.
#include "gradcheck.h"

using namespace tb;
using tbtest::check_error;

namespace {

// Reference run (PyTorch):
//   c = torch.tensor([0.1, -0.3, 0.2, 0.05], dtype=torch.float64)
//   p = torch.tensor([1.0, -2.0, 3.0, 0.5], dtype=torch.float64, requires_grad=True)
//   opt = <optimizer>([p], ...)
//   for _ in range(3): p.grad = 2 * p.detach() + c; opt.step(); print(p)
// i.e. the gradient of sum(p^2 + c p). Tolerance 1e-12: float64, and PyTorch evaluates the same
// formulas in a slightly different order (e.g. lerp for the first moment).
const std::vector<double> kC = {0.1, -0.3, 0.2, 0.05};

Tensor make_param() {
  Tensor p = from_vector(std::vector<double>{1.0, -2.0, 3.0, 0.5}, {4});
  p.requires_grad_(true);
  return p;
}

void set_quadratic_grad(const Tensor& p) {
  auto v = p.to_vector();
  std::vector<double> g(4);
  for (int i = 0; i < 4; i++) g[i] = 2 * v[i] + kC[i];
  p.set_grad(from_vector(g, {4}));
}

void check_run(optim::Optimizer& opt, const Tensor& p,
               const std::vector<std::vector<double>>& expected) {
  for (size_t s = 0; s < expected.size(); s++) {
    set_quadratic_grad(p);
    opt.step();
    auto v = p.to_vector();
    for (int i = 0; i < 4; i++)
      CHECK_MESSAGE(std::abs(v[i] - expected[s][i]) < 1e-12,
                    "step " << s + 1 << " element " << i << ": " << v[i] << " vs " << expected[s][i]);
  }
}

// lr after construction and after each of n scheduler steps (optimizer lr 0.1).
std::vector<double> lr_trace(optim::Optimizer& opt, optim::LRScheduler& s, int n) {
  std::vector<double> out{opt.lr()};
  for (int i = 0; i < n; i++) {
    s.step();
    out.push_back(opt.lr());
    CHECK(s.get_lr()[0] == opt.lr());
  }
  return out;
}

void check_close(const std::vector<double>& a, const std::vector<double>& b) {
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); i++)
    CHECK_MESSAGE(std::abs(a[i] - b[i]) < 1e-15, "entry " << i << ": " << a[i] << " vs " << b[i]);
}

} // namespace

TEST_SUITE("optim") {

TEST_CASE("SGD plain, momentum with dampening and weight decay, nesterov vs PyTorch") {
  {
    Tensor p = make_param();
    optim::SGD opt({p}, 0.1);
    check_run(opt, p, {{0.7899999999999999, -1.57, 2.38, 0.39499999999999996},
                       {0.6219999999999999, -1.226, 1.884, 0.31099999999999994},
                       {0.48759999999999987, -0.9508, 1.4871999999999999, 0.24379999999999993}});
    CHECK(opt.state(p) == nullptr); // no momentum: no state
  }
  {
    // SGD(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01)
    Tensor p = make_param();
    optim::SGD opt({p}, {.lr = 0.1, .momentum = 0.9, .dampening = 0.1, .weight_decay = 0.01});
    check_run(opt, p, {{0.789, -1.568, 2.377, 0.3945},
                       {0.4473699, -0.8685488000000001, 1.3683006999999998, 0.22368495},
                       {0.04997359508999997, -0.05492224208000009, 0.19494573336999974,
                        0.024986797544999984}});
    REQUIRE(opt.state(p) != nullptr);
    CHECK(opt.state(p)->contains("momentum_buffer"));
  }
  {
    // SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
    Tensor p = make_param();
    optim::SGD opt({p}, {.lr = 0.1, .momentum = 0.9, .weight_decay = 0.01, .nesterov = true});
    check_run(opt, p, {{0.5991000000000001, -1.1792, 1.8162999999999998, 0.29955000000000004},
                       {0.18039370999999998, -0.32194352000000015, 0.5800250299999997,
                        0.09019685499999999},
                       {-0.16695711884900008, 0.3892202622879999, -0.4455653319570002,
                        -0.08347855942450004}});
  }
}

TEST_CASE("Adam, Adam with weight decay + amsgrad, AdamW vs PyTorch") {
  {
    Tensor p = make_param();
    optim::Adam opt({p}, {.lr = 0.1});
    check_run(opt, p, {{0.9000000004761904, -1.900000000232558, 2.9000000001612904, 0.4000000009523809},
                       {0.8003851112106427, -1.8001524222844993, 2.800098885496118, 0.3010952780538724},
                       {0.70147780687543, -1.700569748619489, 2.7003671459298215, 0.20446455547433962}});
    CHECK(opt.state(p)->at("step").item() == 3);
    CHECK(opt.state(p)->at("step").dtype() == kInt64);
    CHECK(opt.state(p)->keys() == std::vector<std::string>{"exp_avg", "exp_avg_sq", "step"});
  }
  {
    // Adam(lr=0.1, weight_decay=0.1, amsgrad=True)
    Tensor p = make_param();
    optim::Adam opt({p}, {.lr = 0.1, .weight_decay = 0.1, .amsgrad = true});
    check_run(opt, p, {{0.9000000004545454, -1.9000000002222222, 2.900000000153846, 0.40000000090909094},
                       {0.8003863261352664, -1.8001530391886036, 2.800099061108041, 0.30109937633674266},
                       {0.7014826554728615, -1.7005720981156949, 2.700367806296655, 0.20448256246931723}});
    CHECK(opt.state(p)->contains("max_exp_avg_sq"));
  }
  {
    // AdamW(lr=0.1, weight_decay=0.1)
    Tensor p = make_param();
    optim::AdamW opt({p}, {.lr = 0.1, .weight_decay = 0.1});
    check_run(opt, p, {{0.8900000004761904, -1.880000000232558, 2.87000000016129, 0.3950000009523809},
                       {0.781540165876426, -1.7613907838648861, 2.7414345511410354, 0.2922374215518988},
                       {0.6749743037576278, -1.6442993062622295, 2.614385315428969, 0.19296846855349192}});
    CHECK(opt.name() == "AdamW");
  }
}

TEST_CASE("optimizers train a module end to end; parameters without grad are skipped") {
  manual_seed(3);
  nn::Linear lin(3, 1);
  Tensor frozen = from_vector(std::vector<float>{5.f}, {1});
  frozen.requires_grad_(true);
  std::vector<Tensor> params = lin.parameters();
  params.push_back(frozen); // never gets a gradient
  optim::Adam opt(params, {.lr = 0.05});
  Tensor x = randn({32, 3});
  Tensor target = x.narrow(1, 0, 1) * 2.0 - x.narrow(1, 2, 1) + 0.5; // y = 2 x0 - x2 + 0.5
  double first = 0, last = 0;
  for (int it = 0; it < 300; it++) {
    opt.zero_grad();
    Tensor loss = mse_loss(lin(x), target);
    loss.backward();
    opt.step();
    if (it == 0) first = loss.item();
    last = loss.item();
  }
  CHECK(last < 1e-3 * first);
  CHECK(frozen.item() == 5.f);
  CHECK(opt.state(frozen) == nullptr);
  CHECK(lin.weight().grad().defined());
  opt.zero_grad();
  CHECK_FALSE(lin.weight().grad().defined());
  // zero_grad(false) zero-fills instead.
  mse_loss(lin(x), target).backward();
  opt.zero_grad(false);
  CHECK(lin.weight().grad().to_vector() == std::vector<double>{0, 0, 0});
}

TEST_CASE("param groups with their own lr and weight decay") {
  Tensor a = make_param(), b = make_param();
  optim::ParamGroup ga, gb;
  ga.params = {a};
  gb.params = {b};
  gb.lr = 0.01;
  optim::SGD opt(std::vector<optim::ParamGroup>{ga, gb}, {.lr = 0.1});
  CHECK(*opt.param_groups()[0].lr == 0.1);
  CHECK(*opt.param_groups()[1].lr == 0.01);
  CHECK(*opt.param_groups()[1].weight_decay == 0);
  set_quadratic_grad(a);
  set_quadratic_grad(b);
  opt.step();
  CHECK(a.to_vector()[0] == doctest::Approx(1.0 - 0.1 * 2.1));
  CHECK(b.to_vector()[0] == doctest::Approx(1.0 - 0.01 * 2.1));
  opt.set_lr(0.5);
  CHECK(*opt.param_groups()[1].lr == 0.5);
  CHECK(opt.param_groups()[1].initial_lr == 0.01);
}

TEST_CASE("optimizer state_dict round trip continues identically") {
  for (int kind = 0; kind < 3; kind++) {
    auto make = [&](std::vector<Tensor> ps) -> std::unique_ptr<optim::Optimizer> {
      if (kind == 0) return std::make_unique<optim::SGD>(ps, optim::SGDOptions{.lr = 0.1, .momentum = 0.9});
      if (kind == 1) return std::make_unique<optim::Adam>(ps, optim::AdamOptions{.lr = 0.1, .amsgrad = true});
      return std::make_unique<optim::AdamW>(ps, optim::AdamWOptions{.lr = 0.1});
    };
    Tensor p = make_param();
    auto opt = make({p});
    set_quadratic_grad(p);
    opt->step();
    set_quadratic_grad(p);
    opt->step();
    opt->set_lr(0.05);
    TensorDict sd = opt->state_dict();
    CHECK(sd.contains("param_groups.0.lr"));
    CHECK(sd.contains("state.0.step") == (kind != 0));

    // Through a safetensors file, as a training checkpoint would.
    std::string path = "/tmp/tb_test_optim_" + std::to_string(kind) + ".safetensors";
    save_safetensors(path, sd);
    TensorDict loaded = load_safetensors(path).tensors;
    std::remove(path.c_str());

    Tensor q = p.detach().clone();
    q.requires_grad_(true);
    auto opt2 = make({q});
    opt2->load_state_dict(loaded);
    CHECK(opt2->lr() == 0.05);
    for (int s = 0; s < 2; s++) {
      set_quadratic_grad(p);
      opt->step();
      set_quadratic_grad(q);
      opt2->step();
    }
    CHECK(tbtest::max_abs_diff(p, q) == 0);
  }
}

TEST_CASE("optimizer load_state_dict lists every mismatch") {
  Tensor p = make_param();
  optim::Adam opt({p}, {.lr = 0.1});
  set_quadratic_grad(p);
  opt.step();
  TensorDict sd = opt.state_dict();
  TensorDict bad;
  for (auto& [k, t] : sd)
    if (k != "param_groups.0.weight_decay") bad.insert(k, t);
  bad.set("state.0.exp_avg", zeros({3}, TensorOptions(kFloat64)));
  bad.insert("state.5.exp_avg", zeros({4}, TensorOptions(kFloat64)));
  bad.insert("momentum", zeros({1}));
  Tensor q = make_param();
  optim::Adam opt2({q}, {.lr = 0.1});
  check_error([&] { opt2.load_state_dict(bad); },
              {"Adam::load_state_dict: 4 error(s)", "missing key 'param_groups.0.weight_decay'",
               "'state.0.exp_avg' has shape [3]", "unexpected key 'state.5.exp_avg'",
               "unexpected key 'momentum'"});
  CHECK(opt2.state(q) == nullptr); // unchanged
}

TEST_CASE("optimizer argument errors") {
  Tensor p = make_param();
  check_error([&] { optim::SGD({p}, -0.1); }, {"SGD", "learning rate -0.1"});
  check_error([&] { optim::SGD({p}, {.lr = 0.1, .momentum = 0.9, .dampening = 0.1, .nesterov = true}); }, {"Nesterov", "dampening"});
  check_error([&] { optim::SGD(std::vector<Tensor>{}, 0.1); }, {"SGD", "empty"});
  check_error([&] { optim::Adam({p}, {.lr = 0.1, .betas = {1.0, 0.999}}); }, {"Adam", "betas"});
  check_error([&] { optim::SGD({p, p}, 0.1); }, {"more than once"});
  Tensor nonleaf = p * 2.0;
  check_error([&] { optim::SGD({nonleaf}, 0.1); }, {"leaf"});
}

TEST_CASE("schedulers match PyTorch") {
  // for each: opt = SGD([p], lr=0.1); s = <scheduler>; record lr, then (opt.step(); s.step()) n times
  Tensor p = make_param();
  {
    optim::SGD opt({p}, 0.1);
    optim::StepLR s(opt, 3, 0.5); // StepLR(opt, 3, 0.5)
    check_close(lr_trace(opt, s, 10),
                {0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025, 0.0125, 0.0125});
  }
  {
    optim::SGD opt({p}, 0.1);
    optim::CosineAnnealingLR s(opt, 10, 0.01); // CosineAnnealingLR(opt, 10, 0.01)
    check_close(lr_trace(opt, s, 12),
                {0.1, 0.09779754323328192, 0.09140576474687263, 0.08145033635316129,
                 0.06890576474687264, 0.05500000000000001, 0.04109423525312737,
                 0.028549663646838717, 0.01859423525312737, 0.012202456766718092, 0.01,
                 0.012202456766718092, 0.0185942352531274});
  }
  {
    optim::SGD opt({p}, 0.1);
    optim::LinearWarmup s(opt, 0.25, 4); // LinearLR(opt, 0.25, 1.0, 4)
    check_close(lr_trace(opt, s, 6),
                {0.025, 0.043750000000000004, 0.06250000000000001, 0.08125000000000002,
                 0.10000000000000002, 0.10000000000000002, 0.10000000000000002});
  }
  // SequentialLR(opt, [LinearLR(opt, 0.1, 1.0, 3), CosineAnnealingLR(opt, 7)], [3])
  const std::vector<double> seq = {0.010000000000000002, 0.04, 0.07, 0.1, 0.09504844339512096,
                                   0.08117449009293669, 0.061126046697815725, 0.03887395330218429,
                                   0.018825509907063328, 0.004951556604879048, 0.0};
  {
    optim::SGD opt({p}, 0.1);
    auto warm = std::make_shared<optim::LinearWarmup>(opt, 0.1, 3);
    auto cos = std::make_shared<optim::CosineAnnealingLR>(opt, 7);
    optim::SequentialLR s(opt, {warm, cos}, {3});
    check_close(lr_trace(opt, s, 10), seq);
  }
  {
    optim::SGD opt({p}, 0.1);
    auto s = optim::warmup_cosine(opt, 3, 10, 0.1);
    check_close(lr_trace(opt, *s, 10), seq);
  }
}

TEST_CASE("scheduler state_dict resumes; scheduler errors") {
  Tensor p = make_param();
  optim::SGD opt({p}, 0.1);
  optim::CosineAnnealingLR s(opt, 10);
  for (int i = 0; i < 4; i++) s.step();
  TensorDict sd = s.state_dict();
  double lr4 = opt.lr();

  optim::SGD opt2({p}, 0.1);
  optim::CosineAnnealingLR s2(opt2, 10);
  s2.load_state_dict(sd);
  CHECK(s2.last_epoch() == 4);
  CHECK(opt2.lr() == lr4);
  s.step();
  s2.step();
  CHECK(opt2.lr() == opt.lr());

  check_error([&] { optim::StepLR(opt, 0); }, {"StepLR", "step_size"});
  check_error([&] { optim::CosineAnnealingLR(opt, 0); }, {"CosineAnnealingLR", "T_max"});
  check_error([&] { optim::LinearWarmup(opt, 0.0, 3); }, {"LinearWarmup", "start_factor"});
  auto a = std::make_shared<optim::StepLR>(opt, 2);
  check_error([&] { optim::SequentialLR(opt, {a, a}, {}); }, {"SequentialLR", "milestones"});
  check_error([&] { optim::SequentialLR(opt2, {a}, {}); }, {"different optimizer"});
  check_error([&] { optim::warmup_cosine(opt, 5, 5); }, {"warmup_cosine"});
  TensorDict junk;
  junk.insert("last_epoch", scalar_tensor(1, TensorOptions(kInt64)));
  check_error([&] { s2.load_state_dict(junk); }, {"LRScheduler::load_state_dict"});
}

} // TEST_SUITE
