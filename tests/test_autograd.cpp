// Autograd: the engine, accumulation, retain_graph, no_grad, hooks, saved-tensor versions,
// deep graphs, grad(), and gradient checks of the view and copy ops.
#include "gradcheck.h"

#include <thread>

using namespace tb;
using tbtest::check_error;
using tbtest::gradcheck;

TEST_SUITE("autograd") {

TEST_CASE("backward of a scalar accumulates into leaves") {
  Tensor x = from_vector(std::vector<double>{1, 2, 3}, {3}).requires_grad_();
  Tensor y = sum(mul(x, x)); // dy/dx = 2x
  CHECK(y.requires_grad());
  CHECK(!y.is_leaf());
  y.backward();
  CHECK(x.grad().to_vector() == std::vector<double>{2, 4, 6});
  sum(x).backward(); // accumulates
  CHECK(x.grad().to_vector() == std::vector<double>{3, 5, 7});
}

TEST_CASE("a leaf used twice gets the sum of both paths") {
  Tensor x = from_vector(std::vector<double>{2}, {1}).requires_grad_();
  Tensor y = add(mul(x, 3.0), mul(x, x)); // 3x + x^2 -> 3 + 2x = 7
  sum(y).backward();
  CHECK(x.grad().item() == 7);
}

TEST_CASE("backward errors: non-scalar without gradient, no grad, second pass") {
  Tensor x = ones({2, 2}, kFloat64).requires_grad_();
  Tensor y = mul(x, 2.0);
  check_error([&] { y.backward(); }, {"backward", "scalar", "[2, 2]"});
  y.backward(ones({2, 2}, kFloat64)); // with an explicit gradient it works
  CHECK(x.grad().to_vector() == std::vector<double>(4, 2.0));
  check_error([] { ones({1}).backward(); }, {"backward", "does not require grad"});
  Tensor z = sum(mul(x, x));
  z.backward();
  check_error([&] { z.backward(); }, {"second time", "retain_graph"});
  check_error([&] { y.backward(ones({3})); }, {"backward", "[2, 2]", "[3]"});
}

TEST_CASE("retain_graph allows a second backward") {
  Tensor x = full({1}, 3.0, kFloat64).requires_grad_();
  Tensor z = sum(mul(x, x));
  z.backward(Tensor(), true);
  z.backward();
  CHECK(x.grad().item() == 12);
}

TEST_CASE("no_grad records nothing; detach cuts history; grad mode is per thread") {
  Tensor x = ones({2}).requires_grad_();
  {
    no_grad guard;
    CHECK(!is_grad_enabled());
    Tensor y = mul(x, 2.0);
    CHECK(!y.requires_grad());
    {
      enable_grad eg;
      CHECK(mul(x, 2.0).requires_grad());
    }
  }
  CHECK(is_grad_enabled());
  Tensor d = mul(x, 2.0).detach();
  CHECK(!d.requires_grad());
  CHECK(d.is_leaf());
  bool other_thread = true;
  std::thread([&] {
    no_grad g;
    other_thread = is_grad_enabled();
  }).join();
  CHECK(!other_thread);
  CHECK(is_grad_enabled());
}

TEST_CASE("the graph is freed after backward") {
  Tensor x = ones({3}, kFloat64).requires_grad_();
  std::weak_ptr<Node> node;
  {
    Tensor y = sum(mul(x, x));
    node = y.grad_fn();
    y.backward();
    CHECK(!node.lock()->backward); // saved state released
  }
  CHECK(node.expired()); // nothing keeps the graph alive once the output is gone
}

TEST_CASE("tensor hooks see and may replace gradients") {
  Tensor x = full({2}, 1.0, kFloat64).requires_grad_();
  std::vector<double> seen;
  int h = x.register_hook([&](const Tensor& g) {
    seen = g.to_vector();
    return mul(g, 10.0);
  });
  Tensor y = mul(x, 3.0);
  Tensor mid_grad;
  y.register_hook([&](const Tensor& g) {
    mid_grad = g;
    return Tensor();
  });
  sum(y).backward();
  CHECK(seen == std::vector<double>{3, 3});
  CHECK(x.grad().to_vector() == std::vector<double>{30, 30});
  CHECK(mid_grad.to_vector() == std::vector<double>{1, 1});
  x.remove_hook(h);
  x.set_grad(Tensor());
  sum(mul(x, 3.0)).backward();
  CHECK(x.grad().to_vector() == std::vector<double>{3, 3});
}

TEST_CASE("retain_grad keeps a non-leaf gradient") {
  Tensor x = full({2}, 2.0, kFloat64).requires_grad_();
  Tensor y = mul(x, x);
  y.retain_grad();
  sum(mul(y, 3.0)).backward();
  CHECK(y.grad().to_vector() == std::vector<double>{3, 3});
  CHECK(x.grad().to_vector() == std::vector<double>{12, 12});
}

TEST_CASE("a saved tensor modified in place is refused") {
  Tensor x = full({2}, 2.0, kFloat64).requires_grad_();
  Tensor a = mul(x, 1.0); // a non-leaf
  Tensor y = mul(a, a);   // saves a
  {
    no_grad g;
    a.fill_(5.0);
  }
  check_error([&] { sum(y).backward(); }, {"modified by an in-place operation"});
  check_error([&] { x.fill_(1.0); }, {"fill_", "requires grad"});
}

TEST_CASE("deep graphs do not overflow the stack") {
  Tensor x = full({1}, 1.0, kFloat64).requires_grad_();
  Tensor y = x;
  for (int i = 0; i < 20000; i++) y = add(y, 1.0);
  sum(y).backward();
  CHECK(x.grad().item() == 1.0);
}

TEST_CASE("grad() returns gradients without touching .grad") {
  Tensor x = full({2}, 3.0, kFloat64).requires_grad_();
  Tensor y = sum(mul(x, x));
  auto g = tb::grad({y}, {x});
  CHECK(g[0].to_vector() == std::vector<double>{6, 6});
  CHECK(!x.grad().defined());
}

TEST_CASE("requires_grad only on floating leaves") {
  check_error([] { ones({2}, kInt64).requires_grad_(); }, {"requires_grad_", "int64"});
  Tensor x = ones({2}).requires_grad_();
  check_error([&] { mul(x, 2.0).requires_grad_(false); }, {"requires_grad_", "leaf"});
}

TEST_CASE("gradcheck: views and copies") {
  Generator g(5);
  Tensor a = randn({2, 3, 4}, kFloat64, &g);
  auto f = [](const std::vector<Tensor>& v) { return v[0]; };
  (void)f;
  CHECK(gradcheck([](auto& v) { return v[0].reshape({4, 6}); }, {a}));
  CHECK(gradcheck([](auto& v) { return v[0].permute({2, 0, 1}).contiguous(); }, {a}));
  CHECK(gradcheck([](auto& v) { return v[0].transpose(0, 2); }, {a}));
  CHECK(gradcheck([](auto& v) { return v[0].narrow(1, 1, 2); }, {a}));
  CHECK(gradcheck([](auto& v) { return v[0].slice(2, 0, 4, 3); }, {a}));
  CHECK(gradcheck([](auto& v) { return v[0].select(0, 1); }, {a}));
  CHECK(gradcheck([](auto& v) { return v[0].unsqueeze(1).squeeze(1); }, {a}));
  CHECK(gradcheck([](auto& v) { return v[0].flatten(1); }, {a}));
  CHECK(gradcheck([](auto& v) { return v[0].to(kFloat32).to(kFloat64); }, {a}, 1e-3, 1e-4, 1e-3));
  Tensor b = randn({3, 1}, kFloat64, &g);
  CHECK(gradcheck([](auto& v) { return v[0].expand({2, 3, 4}); }, {b}));
  Tensor c = randn({2, 3, 4, 5}, kFloat64, &g);
  CHECK(gradcheck([](auto& v) { return v[0].contiguous_channels_last(); }, {c}));
  CHECK(gradcheck([](auto& v) { return v[0].clone(); }, {c}));
}

} // TEST_SUITE
