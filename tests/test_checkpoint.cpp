// checkpoint: gradient checkpointing (tb/utils.h) gives the same gradients as the plain run, in
// float64 and exactly (the recompute runs the same kernels on the same data): a module with
// parameters, dropout (the RNG state is restored), BatchNorm in training mode (its running
// statistics are updated twice, as in PyTorch), checkpoint_sequential's split, an input that does
// not need grad, a segment under bfloat16 autocast (recomputed in bfloat16), and the errors.
#include "gradcheck.h"

#include <tb/amp.h>
#include <tb/utils.h>

using namespace tb;
using tbtest::check_error;
using tbtest::max_abs_diff;

namespace {

// Linear -> BN1d -> ReLU -> Dropout -> Linear -> Tanh, float64, repeated `blocks` times.
std::shared_ptr<nn::Sequential> deep_net(int blocks, bool bn, bool dropout) {
  manual_seed(7);
  auto net = std::make_shared<nn::Sequential>();
  TensorOptions f64(kFloat64);
  for (int b = 0; b < blocks; b++) {
    auto lin = std::make_shared<nn::Linear>(6, 6, true, f64);
    net->push_back(lin);
    if (bn) net->push_back(std::make_shared<nn::BatchNorm1d>(6, nn::BatchNorm1dOptions{.tensor = f64}));
    net->push_back(std::make_shared<nn::ReLU>());
    if (dropout) net->push_back(std::make_shared<nn::Dropout>(0.3));
    net->push_back(std::make_shared<nn::Linear>(6, 6, true, f64));
    net->push_back(std::make_shared<nn::Tanh>());
  }
  return net;
}

struct Grads {
  Tensor y, dx;
  std::vector<Tensor> dparams;
};

Grads run(nn::Sequential& net, const Tensor& x0, const std::function<Tensor(const Tensor&)>& f) {
  net.zero_grad();
  Tensor x = x0.detach().clone().requires_grad_(true);
  manual_seed(99); // the same dropout draws for both runs
  Tensor y = f(x);
  Tensor r = tbtest::r64(y.shape(), 5);
  sum(mul(y, r)).backward();
  Grads g{y.detach(), x.grad(), {}};
  for (auto& p : net.parameters()) g.dparams.push_back(p.grad());
  return g;
}

void check_equal(const Grads& a, const Grads& b) {
  CHECK(max_abs_diff(a.y, b.y) == 0);
  CHECK(max_abs_diff(a.dx, b.dx) == 0);
  REQUIRE(a.dparams.size() == b.dparams.size());
  for (size_t i = 0; i < a.dparams.size(); i++) {
    CAPTURE(i);
    REQUIRE(a.dparams[i].defined());
    REQUIRE(b.dparams[i].defined());
    CHECK(max_abs_diff(a.dparams[i], b.dparams[i]) == 0);
  }
}

} // namespace

TEST_SUITE("checkpoint") {

TEST_CASE("checkpoint(module) gives the plain gradients, with dropout") {
  auto net = deep_net(2, false, true);
  Tensor x = tbtest::r64({4, 6}, 1);
  Grads plain = run(*net, x, [&](const Tensor& in) { return (*net)(in); });
  Grads ck = run(*net, x, [&](const Tensor& in) { return utils::checkpoint(*net, in); });
  check_equal(plain, ck);
  // The node stands for the whole segment: no intermediate activation is in the graph.
  Tensor xin = x.clone().requires_grad_(true);
  Tensor y = utils::checkpoint(*net, xin);
  REQUIRE(y.grad_fn());
  CHECK(y.grad_fn()->name == "checkpoint");
  CHECK(y.grad_fn()->next.size() == 1 + net->parameters().size());
  // And the RNG after forward + backward is where the plain run leaves it.
  manual_seed(3);
  sum(utils::checkpoint(*net, xin)).backward();
  uint64_t after_ck = default_generator().next_u64();
  manual_seed(3);
  sum((*net)(xin)).backward();
  CHECK(default_generator().next_u64() == after_ck);
}

TEST_CASE("BatchNorm in training mode: same gradients, running stats updated twice") {
  auto net = deep_net(2, true, false);
  Tensor x = tbtest::r64({5, 6}, 2);
  auto bn = net->at<nn::BatchNorm1d>(1);
  Grads plain = run(*net, x, [&](const Tensor& in) { return (*net)(in); });
  CHECK(bn->num_batches_tracked().item() == 1);
  Grads ck = run(*net, x, [&](const Tensor& in) { return utils::checkpoint(*net, in); });
  check_equal(plain, ck);
  // forward + recompute: two more updates (PyTorch's checkpoint does the same)
  CHECK(bn->num_batches_tracked().item() == 3);
}

TEST_CASE("checkpoint_sequential: PyTorch's split, same gradients") {
  auto net = deep_net(3, true, true); // 18 children
  Tensor x = tbtest::r64({4, 6}, 3);
  for (int64_t segments : {1, 2, 4, 18}) {
    CAPTURE(segments);
    auto a = nn::clone(*net), b = nn::clone(*net);
    Grads plain = run(*a, x, [&](const Tensor& in) { return (*a)(in); });
    Grads ck = run(*b, x, [&](const Tensor& in) {
      return utils::checkpoint_sequential(*b, segments, in);
    });
    check_equal(plain, ck);
  }
  check_error([&] { utils::checkpoint_sequential(*net, 0, x); }, {"checkpoint_sequential", "[1, 18]"});
  check_error([&] { utils::checkpoint_sequential(*net, 19, x); }, {"got 19"});
}

TEST_CASE("float64 finite differences through a checkpoint") {
  auto net = deep_net(1, false, false);
  CHECK(tbtest::gradcheck(
      [&](const std::vector<Tensor>& in) { return utils::checkpoint(*net, in[0]); },
      {tbtest::r64({3, 6}, 4)}));
}

TEST_CASE("input without grad, no_grad mode, function form") {
  auto net = deep_net(1, false, false);
  Tensor x = tbtest::r64({3, 6}, 6); // does not require grad: only the parameters get gradients
  net->zero_grad();
  sum(utils::checkpoint(*net, x)).backward();
  for (auto& p : net->parameters()) CHECK(p.grad().defined());
  {
    no_grad ng;
    CHECK(!utils::checkpoint(*net, x).grad_fn());
  }
  // a function and explicit parameters
  Tensor w = tbtest::r64({6, 6}, 8).requires_grad_(true);
  Tensor xi = x.clone().requires_grad_(true);
  Tensor y = utils::checkpoint([&](const Tensor& in) { return tanh(matmul(in, w)); }, xi, {w});
  sum(y).backward();
  Tensor w2 = w.detach().clone().requires_grad_(true), x2 = x.clone().requires_grad_(true);
  sum(tanh(matmul(x2, w2))).backward();
  CHECK(max_abs_diff(w.grad(), w2.grad()) == 0);
  CHECK(max_abs_diff(xi.grad(), x2.grad()) == 0);
}

TEST_CASE("a parameter changed in place before backward, or a different recompute, is refused") {
  auto net = deep_net(1, false, false);
  Tensor x = tbtest::r64({3, 6}, 9).requires_grad_(true);
  Tensor y = utils::checkpoint(*net, x);
  {
    no_grad ng;
    net->parameters()[0].mul_(2.0);
  }
  check_error([&] { sum(y).backward(); }, {"checkpoint"});
  // A segment that computes something else the second time is named.
  int calls = 0;
  Tensor w = tbtest::r64({6, 6}, 10).requires_grad_(true);
  Tensor z = utils::checkpoint(
      [&](const Tensor& in) { return ++calls == 1 ? matmul(in, w) : matmul(in, w).narrow(0, 0, 1); },
      x, {w});
  check_error([&] { sum(z).backward(); },
              {"checkpoint", "recomputed output is [1, 6] float64", "forward gave [3, 6]"});
}

TEST_CASE("a segment run under autocast is recomputed under it") {
  manual_seed(11);
  auto net = std::make_shared<nn::Sequential>(std::initializer_list<nn::ModulePtr>{
      std::make_shared<nn::Linear>(16, 32), std::make_shared<nn::ReLU>(),
      std::make_shared<nn::Linear>(32, 8)});
  Tensor x0 = randn({4, 16});
  auto grads = [&](bool checkpointed, bool autocast) {
    net->zero_grad();
    Tensor x = x0.clone().requires_grad_(true);
    Tensor y;
    {
      amp::autocast guard({.enabled = autocast});
      y = checkpointed ? utils::checkpoint(*net, x) : (*net)(x);
    }
    sum(mul(y.to(kFloat32), randn(y.shape(), {}, nullptr).fill_(0.5))).backward();
    std::vector<Tensor> g = {x.grad()};
    for (auto& p : net->parameters()) g.push_back(p.grad());
    return g;
  };
  auto plain = grads(false, true), ck = grads(true, true), f32 = grads(false, false);
  double diff_ck = 0, diff_f32 = 0;
  for (size_t i = 0; i < plain.size(); i++) {
    diff_ck = std::max(diff_ck, max_abs_diff(plain[i], ck[i]));
    diff_f32 = std::max(diff_f32, max_abs_diff(plain[i], f32[i]));
  }
  CHECK(diff_ck == 0);
  CHECK(diff_f32 > 0); // bfloat16 really changed the numbers, so the check above can fail
  CHECK(!amp::is_autocast_enabled()); // and the state is back to what it was
}

} // TEST_SUITE checkpoint
