// tests/test_softmax_loss.cpp — softmax, log_softmax, nll_loss, cross_entropy (label smoothing,
// ignore_index), mse_loss, kl_div, dropout: hand-computed values, float64 gradient checks, errors,
// and the fast kernels against the reference ones (kernels/ref/softmax.cpp).
#include "gradcheck.h"

#include <cmath>

#include "kernels/softmax.h"

using namespace tb;
using tbtest::check_error;
using tbtest::gradcheck;
using tbtest::max_abs_diff;
using tbtest::r64;

namespace {

// The two CPU kernel tables, called directly on raw buffers.
const kernels::SoftmaxKernels& ref = kernels::SoftmaxKernels::ref;
const kernels::SoftmaxKernels& fast = kernels::SoftmaxKernels::cpu;

Tensor targets(const std::vector<int64_t>& v) { return from_vector(v, {(int64_t)v.size()}); }

// cross_entropy as PyTorch defines it, composed from other ops (logits [N, C], no ignored rows):
// (1 - eps) nll(log_softmax(x)) + eps mean_c(-log_softmax(x)), averaged over rows.
Tensor ce_composed(const Tensor& x, const Tensor& t, double eps) {
  Tensor lp = log_softmax(x, 1);
  return add(mul(nll_loss(lp, t), 1.0 - eps), mul(mean(neg(lp)), eps));
}

} // namespace

TEST_SUITE("softmax_loss") {

TEST_CASE("softmax and log_softmax values, stability, dims") {
  Tensor x = from_vector(std::vector<double>{1, 2, 3}, {3});
  auto s = softmax(x, 0).to_vector();
  CHECK(s[0] == doctest::Approx(0.09003057317038046));
  CHECK(s[1] == doctest::Approx(0.24472847105479764));
  CHECK(s[2] == doctest::Approx(0.6652409557748219));
  auto ls = log_softmax(x, -1).to_vector();
  CHECK(ls[2] == doctest::Approx(-0.4076059644443803));
  // huge logits: no overflow
  Tensor big = from_vector(std::vector<double>{1000, 1001, 1002}, {1, 3});
  CHECK(max_abs_diff(softmax(big, 1), softmax(x, 0).reshape({1, 3})) < 1e-12);
  // float32 spacing at 1000 is 6e-5: the result is as exact as the input allows
  CHECK(max_abs_diff(log_softmax(big.to(kFloat32), 1), log_softmax(x, 0).reshape({1, 3})) < 1e-4);
  // over a middle dim: slices along that dim sum to 1
  Tensor y = r64({2, 5, 3}, 1);
  Tensor p = softmax(y, 1);
  CHECK(max_abs_diff(sum(p, {1}), ones({2, 3}, {kFloat64})) < 1e-12);
  CHECK(max_abs_diff(exp(log_softmax(y, 1)), p) < 1e-12);
  CHECK(max_abs_diff(softmax(y, 0), softmax(y.transpose(0, 1), 1).transpose(0, 1)) < 1e-12);
  check_error([] { softmax(arange(3), 0); }, {"softmax", "int64"});
  check_error([] { log_softmax(zeros({2, 3}), 2); }, {"log_softmax", "dim 2"});
}

TEST_CASE("gradcheck: softmax and log_softmax over every dim") {
  Tensor x = r64({3, 4, 5}, 2);
  for (int64_t d : {0, 1, 2, -1}) {
    CAPTURE(d);
    CHECK(gradcheck([&](auto& in) { return softmax(in[0], d); }, {x}));
    CHECK(gradcheck([&](auto& in) { return log_softmax(in[0], d); }, {x}));
  }
}

TEST_CASE("nll_loss: reductions and ignore_index by hand") {
  Tensor lp = from_vector(std::vector<double>{-1, -2, -3, -4, -5, -6}, {3, 2});
  Tensor t = targets({1, 0, 1});
  CHECK(nll_loss(lp, t, "sum").item() == doctest::Approx(2 + 3 + 6));
  CHECK(nll_loss(lp, t).item() == doctest::Approx(11.0 / 3));
  CHECK(nll_loss(lp, t, "none").to_vector() == std::vector<double>{2, 3, 6});
  // ignored rows count neither in the sum nor in the mean's divisor
  Tensor ti = targets({1, -100, 1});
  CHECK(nll_loss(lp, ti).item() == doctest::Approx(4.0));
  CHECK(nll_loss(lp, ti, "none").to_vector() == std::vector<double>{2, 0, 6});
  CHECK(nll_loss(lp, targets({1, 0, 0}), "mean", 0).item() == doctest::Approx(2.0));
  CHECK(std::isnan(nll_loss(lp, targets({-100, -100, -100})).item()));  // 0/0 as PyTorch
}

TEST_CASE("cross_entropy by hand, label smoothing, composition") {
  Tensor x = from_vector(std::vector<double>{1, 2, 3}, {1, 3});
  CHECK(cross_entropy(x, targets({2})).item() == doctest::Approx(0.4076059644443803));
  // eps = 0.1: 0.9 * 0.40760596 + 0.1 * (lse - mean x) = 0.9 * 0.40760596 + 0.1 * 1.40760596
  CHECK(cross_entropy(x, targets({2}), 0.1).item() == doctest::Approx(0.5076059644443803));
  // 1-D input with a 0-d target
  CHECK(cross_entropy(x.reshape({3}), from_vector(std::vector<int64_t>{2}, {})).item() ==
        doctest::Approx(0.4076059644443803));
  Tensor l = r64({6, 5}, 3);
  Tensor t = targets({0, 4, 2, 2, 1, 3});
  for (double eps : {0.0, 0.1, 0.5, 1.0}) {
    CAPTURE(eps);
    CHECK(std::abs(cross_entropy(l, t, eps).item() - ce_composed(l, t, eps).item()) < 1e-12);
    CHECK(std::abs(cross_entropy(l, t, eps, "sum").item() - 6 * ce_composed(l, t, eps).item()) <
          1e-11);
  }
  // ignore_index with smoothing: ignored rows vanish from both terms and from the divisor
  Tensor ti = targets({0, -1, 2, -1, 1, 3});
  Tensor keep = targets({0, 2, 4, 5});
  Tensor lk = index_select(l, 0, keep);
  CHECK(std::abs(cross_entropy(l, ti, 0.2, "mean", -1).item() -
                 ce_composed(lk, targets({0, 2, 1, 3}), 0.2).item()) < 1e-12);
  auto none = cross_entropy(l, ti, 0.2, "none", -1).to_vector();
  CHECK(none[1] == 0);
  CHECK(none[3] == 0);
  // [N, C, d] inputs equal the flattened [N*d, C] rows
  Tensor x3 = r64({2, 4, 3}, 4);
  Tensor t3 = from_vector(std::vector<int64_t>{0, 1, 3, 2, 2, 0}, {2, 3});
  Tensor rows = x3.permute({0, 2, 1}).reshape({6, 4});
  CHECK(std::abs(cross_entropy(x3, t3, 0.1).item() -
                 cross_entropy(rows, t3.reshape({6}), 0.1).item()) < 1e-12);
  CHECK(cross_entropy(x3, t3, 0.0, "none").shape() == Shape{2, 3});
  // class-probability targets: one-hot probabilities give the index loss
  Tensor onehot = from_vector(std::vector<double>{0, 0, 1}, {1, 3});
  CHECK(cross_entropy(x, onehot, 0.1).item() == doctest::Approx(0.5076059644443803));
  // float32 logits give float32 loss
  CHECK(cross_entropy(l.to(kFloat32), t).dtype() == kFloat32);
}

TEST_CASE("loss errors: targets out of range, wrong dtype or shape, bad options") {
  Tensor x = zeros({2, 3});
  check_error([&] { cross_entropy(x, targets({0, 3})); }, {"cross_entropy", "target 3", "3 classes"});
  check_error([&] { cross_entropy(x, targets({-2, 0})); }, {"cross_entropy", "target -2"});
  check_error([&] { nll_loss(x, targets({0, 7})); }, {"nll_loss", "target 7", "3 classes"});
  check_error([&] { cross_entropy(x, targets({0, 1}).to(kInt32)); },
              {"cross_entropy", "int64", "int32"});
  check_error([&] { nll_loss(x, from_vector(std::vector<float>{0, 1}, {2})); },
              {"nll_loss", "int64", "float32"});
  check_error([&] { cross_entropy(x, targets({0, 1, 2})); },
              {"cross_entropy", "[2, 3]", "[3]", "[2]"});
  check_error([&] { cross_entropy(x, targets({0, 1}), 1.5); }, {"cross_entropy", "label_smoothing"});
  check_error([&] { cross_entropy(x, targets({0, 1}), 0.0, "avg"); }, {"cross_entropy", "avg"});
  check_error([&] { mse_loss(x, x, "batchmean"); }, {"mse_loss", "batchmean"});
  check_error([&] { kl_div(x, x, "average"); }, {"kl_div", "average"});
  check_error([&] { cross_entropy(arange(6).reshape({2, 3}), targets({0, 1})); },
              {"cross_entropy", "floating"});
}

TEST_CASE("gradcheck: nll_loss and cross_entropy (smoothing, ignore_index, reductions)") {
  Tensor x = r64({5, 4}, 5);
  Tensor t = targets({3, 0, 2, 1, 2});
  Tensor ti = targets({3, 7, 2, 7, 0});
  for (std::string red : {"mean", "sum", "none"}) {
    CAPTURE(red);
    CHECK(gradcheck([&](auto& in) { return nll_loss(in[0], t, red); }, {x}));
    CHECK(gradcheck([&](auto& in) { return nll_loss(in[0], ti, red, 7); }, {x}));
    for (double eps : {0.0, 0.15}) {
      CAPTURE(eps);
      CHECK(gradcheck([&](auto& in) { return cross_entropy(in[0], t, eps, red); }, {x}));
      CHECK(gradcheck([&](auto& in) { return cross_entropy(in[0], ti, eps, red, 7); }, {x}));
    }
  }
  Tensor x3 = r64({2, 4, 3}, 6);
  Tensor t3 = from_vector(std::vector<int64_t>{0, 1, -100, 2, 2, 0}, {2, 3});
  CHECK(gradcheck([&](auto& in) { return cross_entropy(in[0], t3, 0.1); }, {x3}));
  CHECK(gradcheck([&](auto& in) { return cross_entropy(in[0], t3, 0.1, "none"); }, {x3}));
  CHECK(gradcheck([&](auto& in) { return nll_loss(in[0], t3, "sum"); }, {x3}));
  CHECK(gradcheck([&](auto& in) { return cross_entropy(in[0], from_vector(std::vector<int64_t>{1}, {}), 0.2); },
                  {r64({4}, 7)}));
  // probability targets: gradient for both logits and target
  Tensor q = softmax(r64({5, 4}, 8), 1);
  CHECK(gradcheck([&](auto& in) { return cross_entropy(in[0], in[1], 0.1); }, {x, q}));
}

TEST_CASE("mse_loss and kl_div by hand and gradcheck") {
  Tensor a = from_vector(std::vector<double>{1, 2, 3, 4}, {2, 2});
  Tensor b = from_vector(std::vector<double>{1, 0, 0, 4}, {2, 2});
  CHECK(mse_loss(a, b).item() == doctest::Approx(13.0 / 4));
  CHECK(mse_loss(a, b, "sum").item() == doctest::Approx(13.0));
  CHECK(mse_loss(a, b, "none").to_vector() == std::vector<double>{0, 4, 9, 0});
  CHECK(gradcheck([](auto& in) { return mse_loss(in[0], in[1]); }, {r64({3, 4}, 9), r64({3, 4}, 10)}));

  // kl_div: input log-probabilities, target probabilities (one zero: xlogy gives 0)
  Tensor lp = log(from_vector(std::vector<double>{0.25, 0.75, 0.5, 0.5}, {2, 2}));
  Tensor tp = from_vector(std::vector<double>{0.5, 0.5, 0.0, 1.0}, {2, 2});
  double row0 = 0.5 * std::log(0.5 / 0.25) + 0.5 * std::log(0.5 / 0.75);
  double row1 = 1.0 * std::log(1.0 / 0.5);
  CHECK(kl_div(lp, tp).item() == doctest::Approx((row0 + row1) / 2));            // batchmean
  CHECK(kl_div(lp, tp, "sum").item() == doctest::Approx(row0 + row1));
  CHECK(kl_div(lp, tp, "mean").item() == doctest::Approx((row0 + row1) / 4));
  CHECK(kl_div(lp, tp, "none").to_vector()[2] == 0.0);
  // log_target: the same loss from log-probabilities (a zero target would give exp(-inf) * -inf =
  // NaN, as in PyTorch, so use positive ones)
  Tensor tq = from_vector(std::vector<double>{0.5, 0.5, 0.1, 0.9}, {2, 2});
  CHECK(kl_div(lp, log(tq), "batchmean", true).item() ==
        doctest::Approx(kl_div(lp, tq, "batchmean").item()));
  // gradients: input everywhere; target too (positive, away from 0)
  Tensor in = log_softmax(r64({3, 4}, 11), 1);
  Tensor tg = softmax(r64({3, 4}, 12), 1);
  for (std::string red : {"batchmean", "sum", "mean", "none"}) {
    CAPTURE(red);
    CHECK(gradcheck([&](auto& v) { return kl_div(v[0], v[1], red); }, {in, tg}));
    CHECK(gradcheck([&](auto& v) { return kl_div(v[0], v[1], red, true); }, {in, log(tg)}));
  }
  // a zero target: the gradient for the input is finite (-t = 0), no NaN from log(0)
  Tensor x = lp.detach().clone();
  x.requires_grad_(true);
  kl_div(x, tp, "sum").backward();
  CHECK(x.grad().to_vector() == std::vector<double>{-0.5, -0.5, 0.0, -1.0});
}

TEST_CASE("dropout: identity, zeros, mask statistics, scaling, gradient") {
  Tensor x = ones({200, 100});
  CHECK(dropout(x, 0.5, false).is_same(x));
  CHECK(dropout(x, 0.0, true).is_same(x));
  CHECK(max_abs_diff(dropout(x, 1.0, true), zeros({200, 100})) == 0);
  Generator g1(5), g2(5);
  Tensor y = dropout(x, 0.3, true, &g1);
  CHECK(max_abs_diff(y, dropout(x, 0.3, true, &g2)) == 0);  // same seed, same mask
  auto v = y.to_vector();
  int64_t kept = 0;
  for (double e : v) {
    CHECK((e == 0.0 || std::abs(e - 1.0 / 0.7) < 1e-6));
    kept += e != 0.0;
  }
  CHECK(std::abs((double)kept / (double)v.size() - 0.7) < 0.02);  // 20000 draws: ~0.003 std
  // gradient: the same mask, scaled
  Tensor xd = r64({50, 40}, 13);
  xd.requires_grad_(true);
  Generator g3(9);
  Tensor yd = dropout(xd, 0.4, true, &g3);
  sum(yd).backward();
  auto gy = xd.grad().to_vector(), yy = yd.to_vector(), xx = xd.to_vector();
  for (size_t i = 0; i < gy.size(); i++) {
    bool kept_i = yy[i] != 0.0;
    CHECK(gy[i] == doctest::Approx(kept_i ? 1.0 / 0.6 : 0.0));
    if (kept_i) CHECK(yy[i] == doctest::Approx(xx[i] / 0.6));
  }
  check_error([&] { dropout(x, 1.5, true); }, {"dropout", "1.5"});
  check_error([&] { dropout(x, -0.1, false); }, {"dropout", "-0.1"});
}

TEST_CASE("fast softmax / cross-entropy / nll kernels match the reference") {
  Generator g(20);
  struct Case { int64_t o, d, i; };
  for (auto c : std::vector<Case>{{1, 1, 1}, {7, 10, 1}, {300, 129, 1}, {3, 17, 5}, {2, 9, 130},
                                  {1, 1000, 1}, {4, 3, 64}}) {
    for (DType dt : {kFloat32, kFloat64}) {
      for (bool lg : {false, true}) {
        CAPTURE(c.o); CAPTURE(c.d); CAPTURE(c.i); CAPTURE(lg); CAPTURE(dtype_name(dt));
        double tol = dt == kFloat32 ? 2e-5 : 1e-12;
        Tensor x = mul(randn({c.o, c.d, c.i}, {dt}, &g), 4.0);
        Tensor ya = empty_like(x), yb = empty_like(x);
        ref.forward(dt, lg, x.raw_data(), ya.raw_data(), c.o, c.d, c.i);
        fast.forward(dt, lg, x.raw_data(), yb.raw_data(), c.o, c.d, c.i);
        CHECK(max_abs_diff(ya, yb) < tol * 10);
        Tensor dy = randn({c.o, c.d, c.i}, {dt}, &g);
        Tensor da = empty_like(x), db = empty_like(x);
        ref.backward(dt, lg, ya.raw_data(), dy.raw_data(), da.raw_data(), c.o, c.d, c.i);
        fast.backward(dt, lg, ya.raw_data(), dy.raw_data(), db.raw_data(), c.o, c.d, c.i);
        CHECK(max_abs_diff(da, db) < tol * 10 * std::sqrt((double)c.d));
      }
    }
  }
  for (auto [n, c] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {5, 7}, {300, 10}, {33, 1001}}) {
    for (DType dt : {kFloat32, kFloat64}) {
      for (double eps : {0.0, 0.1}) {
        CAPTURE(n); CAPTURE(c); CAPTURE(eps); CAPTURE(dtype_name(dt));
        double tol = dt == kFloat32 ? 1e-5 : 1e-12;
        Tensor x = mul(randn({n, c}, {dt}, &g), 3.0);
        Tensor t = randint(0, c, {n}, {kInt64}, &g);
        t.data<int64_t>()[0] = -100;  // one ignored row
        Tensor la = empty({n}, {dt}), lb = empty({n}, {dt}), sa = empty({n}, {dt}),
               sb = empty({n}, {dt});
        ref.cross_entropy_forward(dt, x.raw_data(), t.data<int64_t>(), la.raw_data(),
                                  sa.raw_data(), n, c, eps, -100);
        fast.cross_entropy_forward(dt, x.raw_data(), t.data<int64_t>(), lb.raw_data(),
                                   sb.raw_data(), n, c, eps, -100);
        CHECK(max_abs_diff(la, lb) < tol * 10);
        CHECK(max_abs_diff(sa, sb) < tol * 10);
        CHECK(la.to_vector()[0] == 0.0);
        for (int64_t step : {0, 1}) {
          Tensor dl = randn({n}, {dt}, &g);
          Tensor da = empty({n, c}, {dt}), db = empty({n, c}, {dt});
          ref.cross_entropy_backward(dt, x.raw_data(), t.data<int64_t>(), sa.raw_data(),
                                     dl.raw_data(), step, 0.5, da.raw_data(), n, c, eps, -100);
          fast.cross_entropy_backward(dt, x.raw_data(), t.data<int64_t>(), sa.raw_data(),
                                      dl.raw_data(), step, 0.5, db.raw_data(), n, c, eps, -100);
          CHECK(max_abs_diff(da, db) < tol);
          ref.nll_backward(dt, t.data<int64_t>(), dl.raw_data(), step, 0.5, da.raw_data(), n, c,
                           -100);
          fast.nll_backward(dt, t.data<int64_t>(), dl.raw_data(), step, 0.5, db.raw_data(), n, c,
                            -100);
          CHECK(max_abs_diff(da, db) == 0);
        }
        ref.nll_forward(dt, x.raw_data(), t.data<int64_t>(), la.raw_data(), n, c, -100);
        fast.nll_forward(dt, x.raw_data(), t.data<int64_t>(), lb.raw_data(), n, c, -100);
        CHECK(max_abs_diff(la, lb) == 0);
      }
    }
  }
}

} // TEST_SUITE
