// batch_norm: normalised outputs, the running-statistics update (unbiased variance), eval mode,
// float64 gradient checks in training and eval mode (affine or not), statistics of data far from
// zero, and bad input (options included). The OpenMP kernel against the reference on every layout:
// tests/test_backend_ops.cpp.
#include "gradcheck.h"

#include <cmath>

using namespace tb;
using tbtest::check_error;
using tbtest::gradcheck;
using tbtest::max_abs_diff;

namespace {

// Per-channel mean and biased variance of x [N, C, ...] computed directly from its values.
void channel_stats(const Tensor& x, std::vector<double>& mean, std::vector<double>& var) {
  int64_t N = x.size(0), C = x.size(1), S = x.numel() / (N * C);
  auto v = x.to_vector(); // logical row-major order
  mean.assign(C, 0.0);
  var.assign(C, 0.0);
  for (int64_t n = 0; n < N; n++)
    for (int64_t c = 0; c < C; c++)
      for (int64_t s = 0; s < S; s++) mean[c] += v[(n * C + c) * S + s] / double(N * S);
  for (int64_t n = 0; n < N; n++)
    for (int64_t c = 0; c < C; c++)
      for (int64_t s = 0; s < S; s++) {
        double d = v[(n * C + c) * S + s] - mean[c];
        var[c] += d * d / double(N * S);
      }
}

double max_abs(const Tensor& t) {
  double m = 0;
  for (double v : t.to_vector()) m = std::max(m, std::abs(v));
  return m;
}

} // namespace

TEST_SUITE("batchnorm") {

TEST_CASE("training normalises each channel and updates running stats with unbiased var") {
  manual_seed(5);
  for (bool cl : {false, true}) {
    CAPTURE(cl);
    Tensor x = add(mul(randn({4, 3, 5, 5}, kFloat64), 2.0), 1.5);
    if (cl) x = x.contiguous_channels_last();
    Tensor rm = from_vector(std::vector<double>{0.1, 0.2, 0.3}, {3});
    Tensor rv = from_vector(std::vector<double>{1.0, 2.0, 3.0}, {3});
    Tensor w = from_vector(std::vector<double>{1.0, 2.0, -1.0}, {3});
    Tensor b = from_vector(std::vector<double>{0.0, 0.5, 1.0}, {3});
    uint64_t v0 = rm.version();
    double momentum = 0.1, eps = 1e-5;
    Tensor y = batch_norm(x, rm, rv, w, b, {.training = true, .momentum = momentum, .eps = eps});
    CHECK(rm.version() > v0); // in-place update is visible to autograd's version checks
    CHECK(y.is_channels_last() == cl);
    std::vector<double> mean, var, ymean, yvar;
    channel_stats(x, mean, var);
    channel_stats(y, ymean, yvar);
    double M = 4 * 25;
    std::vector<double> w_v{1, 2, -1}, b_v{0, 0.5, 1}, rm0{0.1, 0.2, 0.3}, rv0{1, 2, 3};
    for (int c = 0; c < 3; c++) {
      CAPTURE(c);
      CHECK(ymean[c] == doctest::Approx(b_v[c]).epsilon(1e-9));
      CHECK(yvar[c] == doctest::Approx(w_v[c] * w_v[c] * var[c] / (var[c] + eps)).epsilon(1e-9));
      CHECK(rm.to_vector()[c] == doctest::Approx(0.9 * rm0[c] + 0.1 * mean[c]).epsilon(1e-12));
      CHECK(rv.to_vector()[c] ==
            doctest::Approx(0.9 * rv0[c] + 0.1 * var[c] * M / (M - 1)).epsilon(1e-12));
    }
  }
}

TEST_CASE("eval uses the running statistics and leaves them alone") {
  Tensor x = randn({3, 2}, kFloat64);
  Tensor rm = from_vector(std::vector<double>{1.0, -1.0}, {2});
  Tensor rv = from_vector(std::vector<double>{4.0, 0.25}, {2});
  Tensor w = from_vector(std::vector<double>{2.0, 3.0}, {2});
  Tensor b = from_vector(std::vector<double>{0.5, -0.5}, {2});
  Tensor y = batch_norm(x, rm, rv, w, b); // the defaults: eval, eps = 1e-5
  auto xv = x.to_vector(), yv = y.to_vector();
  double s0 = std::sqrt(4.0 + 1e-5), s1 = std::sqrt(0.25 + 1e-5);
  for (int n = 0; n < 3; n++) {
    CHECK(yv[n * 2 + 0] == doctest::Approx((xv[n * 2 + 0] - 1.0) / s0 * 2.0 + 0.5));
    CHECK(yv[n * 2 + 1] == doctest::Approx((xv[n * 2 + 1] + 1.0) / s1 * 3.0 - 0.5));
  }
  CHECK(rm.to_vector() == std::vector<double>{1.0, -1.0});
  CHECK(rv.to_vector() == std::vector<double>{4.0, 0.25});
  // Without running stats, eval normalises with the batch's statistics (PyTorch's rule).
  Tensor y2 = batch_norm(x, Tensor(), Tensor(), Tensor(), Tensor());
  std::vector<double> m2, v2;
  channel_stats(y2, m2, v2);
  CHECK(std::abs(m2[0]) < 1e-9);
}

TEST_CASE("gradcheck: training and eval, affine and not, NCHW / channels-last / [N, C]") {
  manual_seed(9);
  TensorOptions o(kFloat64);
  Tensor rm = randn({3}, o), rv = add(rand({3}, o), 0.5);
  SUBCASE("training, affine, NCHW") {
    CHECK(gradcheck(
        [&](const std::vector<Tensor>& in) {
          return batch_norm(in[0], Tensor(), Tensor(), in[1], in[2], {.training = true});
        },
        {randn({3, 3, 2, 3}, o), randn({3}, o), randn({3}, o)}));
  }
  SUBCASE("training, affine, channels-last, with running stats") {
    CHECK(gradcheck(
        [&](const std::vector<Tensor>& in) {
          return batch_norm(in[0].contiguous_channels_last(), rm.clone(), rv.clone(), in[1], in[2],
                            {.training = true});
        },
        {randn({2, 3, 3, 2}, o), randn({3}, o), randn({3}, o)}));
  }
  SUBCASE("training, not affine, [N, C]") {
    CHECK(gradcheck(
        [&](const std::vector<Tensor>& in) {
          return batch_norm(in[0], Tensor(), Tensor(), Tensor(), Tensor(), {.training = true});
        },
        {randn({5, 3}, o)}));
  }
  SUBCASE("training, weight only, [N, C, L]") {
    CHECK(gradcheck(
        [&](const std::vector<Tensor>& in) {
          return batch_norm(in[0], Tensor(), Tensor(), in[1], Tensor(), {.training = true});
        },
        {randn({2, 3, 4}, o), randn({3}, o)}));
  }
  SUBCASE("eval, affine") {
    CHECK(gradcheck(
        [&](const std::vector<Tensor>& in) {
          return batch_norm(in[0], rm, rv, in[1], in[2]);
        },
        {randn({2, 3, 2, 2}, o), randn({3}, o), randn({3}, o)}));
  }
  SUBCASE("eval, not affine, channels-last") {
    CHECK(gradcheck(
        [&](const std::vector<Tensor>& in) {
          return batch_norm(in[0].contiguous_channels_last(), rm, rv, Tensor(), Tensor());
        },
        {randn({2, 3, 2, 2}, o)}));
  }
}

TEST_CASE("the fast kernel keeps the statistics of data far from zero") {
  // (every kernel against the reference on all layouts and modes: tests/test_backend_ops.cpp)
  Generator gen(21);
  // Data far from zero (mean 1000, std 0.01): the fast kernel's one-sweep variance
  // (shifted by the first row) must not lose it to cancellation.
  Tensor x = add(mul(randn({64, 8, 6, 6}, {kFloat64}, &gen), 0.01), 1000.0).to(kFloat32);
  x = x.contiguous_channels_last();
  Tensor rv[2];
  for (int k = 0; k < 2; k++) {
    set_cpu_kernels(k == 0 ? CpuKernels::Reference : CpuKernels::Fast);
    Tensor rm = zeros({8}), v = zeros({8});
    batch_norm(x, rm, v, Tensor(), Tensor(), {.training = true, .momentum = 1.0}); // v = batch var
    rv[k] = v;
  }
  set_cpu_kernels(CpuKernels::Fast);
  CHECK(max_abs(rv[0]) > 5e-5); // about 1e-4, not 0
  CHECK(max_abs_diff(rv[1], rv[0]) <= 1e-3 * max_abs(rv[0]));
}

TEST_CASE("batch_norm refuses bad input") {
  Tensor x = randn({4, 3, 2, 2}), none;
  auto bn = [&](const Tensor& in, const Tensor& rm, const Tensor& rv, const Tensor& w,
                bool training) { return batch_norm(in, rm, rv, w, none, {.training = training}); };
  check_error([&] { bn(randn({4}), none, none, none, true); },
              {"batch_norm", "[N, C, ...]", "[4]"});
  check_error([&] { bn(x, none, none, randn({4}), true); },
              {"batch_norm", "weight", "[4, 3, 2, 2]", "[4]"});
  check_error([&] { bn(x, zeros({3}), none, none, true); }, {"batch_norm", "running_var"});
  check_error([&] { bn(randn({1, 3}), none, none, none, true); },
              {"batch_norm", "more than 1 value per channel", "[1, 3]"});
  check_error([&] { bn(x, none, none, randn({3}, kFloat64), true); },
              {"batch_norm", "float32", "float64"});
  check_error([&] { bn(ones({4, 3}, kInt64), none, none, none, true); }, {"batch_norm", "int64"});
  // The options are checked by name: momentum in [0, 1], eps > 0.
  check_error([&] { batch_norm(x, none, none, none, none, {.training = true, .momentum = 1.5}); },
              {"batch_norm", "momentum", "[0, 1]", "1.5"});
  check_error([&] { batch_norm(x, none, none, none, none, {.momentum = -0.1}); },
              {"batch_norm", "momentum", "-0.1"});
  check_error([&] { batch_norm(x, none, none, none, none, {.momentum = NAN}); },
              {"batch_norm", "momentum", "nan"});
  check_error([&] { batch_norm(x, none, none, none, none, {.eps = 0.0}); },
              {"batch_norm", "eps > 0", "got 0"});
  check_error([&] { batch_norm(x, none, none, none, none, {.eps = -1e-5}); },
              {"batch_norm", "eps", "-1e-05"});
  // One value per channel is fine in eval mode.
  CHECK(bn(randn({1, 3}), zeros({3}), ones({3}), none, false).shape() == Shape{1, 3});
}

} // TEST_SUITE
