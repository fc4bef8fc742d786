// batch_norm: normalised outputs, the running-statistics update (unbiased variance), eval mode,
// float64 gradient checks in training and eval mode (affine or not), statistics of data far from
// zero, and bad input (options included). Mixed precision: bfloat16 input with float32 parameters
// against PyTorch 1.13 (tests/fixtures/amp_batchnorm.safetensors, tools/make_amp_fixtures.py),
// and the bfloat16/float16 kernels (fast and reference) against float64 on the same values. The
// OpenMP kernel against the reference on every layout: tests/test_backend_ops.cpp.
#include "gradcheck.h"

#include <cmath>

#include "kernels/batchnorm.h"

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

// One unit in the last place of a half dtype at magnitude |v| (2^-7 relative for bfloat16, 2^-10
// for float16), with a floor at the smallest normal so zeros have a size.
double half_ulp(DType t, double v) {
  int e;
  std::frexp(std::max(std::abs(v), 1e-30), &e); // v = m 2^e, m in [0.5, 1)
  return std::ldexp(1.0, e - 1 - (t == kBFloat16 ? 7 : 10));
}

// max over elements of |got - want| / (ulp(want) + floor): errors in ulps of the half dtype.
double worst_ulps(const Tensor& got, const Tensor& want, DType t, double floor) {
  auto g = got.to_vector(), w = want.to_vector();
  double worst = 0;
  for (size_t i = 0; i < w.size(); i++)
    worst = std::max(worst, std::abs(g[i] - w[i]) / (half_ulp(t, w[i]) + floor));
  return worst;
}

// How many elements differ at all.
int64_t count_differ(const Tensor& got, const Tensor& want) {
  auto g = got.to_vector(), w = want.to_vector();
  int64_t n = 0;
  for (size_t i = 0; i < w.size(); i++) n += g[i] != w[i];
  return n;
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

// ---- mixed precision: half activations, float32 parameters and statistics ---------------------

TEST_CASE("bfloat16 input with float32 parameters equals PyTorch 1.13's CPU batch_norm, "
          "training and eval, NCHW and channels-last, fast and reference kernels") {
  TensorDict fx = load_safetensors(tbtest::fixture("amp_batchnorm.safetensors")).tensors;
  REQUIRE(fx.at("x").dtype() == kBFloat16);
  for (CpuKernels k : {CpuKernels::Fast, CpuKernels::Reference})
    for (bool cl : {false, true}) {
      INFO((k == CpuKernels::Fast ? "fast" : "reference") << (cl ? ", channels-last" : ", NCHW"));
      set_cpu_kernels(k);
      Tensor rm = fx.at("running_mean").clone(), rv = fx.at("running_var").clone();
      for (std::string mode : {"train", "eval"}) {
        INFO(mode);
        Tensor x = fx.at("x").clone();
        if (cl) x = x.contiguous_channels_last();
        x.requires_grad_(true);
        Tensor w = fx.at("weight").clone().requires_grad_(true);
        Tensor b = fx.at("bias").clone().requires_grad_(true);
        Tensor y = batch_norm(x, rm, rv, w, b, {.training = mode == "train"});
        REQUIRE(y.dtype() == kBFloat16);
        CHECK(y.is_channels_last() == cl);
        sum(mul(y.to(kFloat32), fx.at("R"))).backward();
        REQUIRE(x.grad().dtype() == kBFloat16);
        REQUIRE(w.grad().dtype() == kFloat32);
        // y and dx: both round a float32 (tb: double statistics, float32 x scale + shift;
        // PyTorch: float32 throughout) to bfloat16, so a value near a rounding boundary may land
        // one ulp apart; measured: all 600 equal. At most 1% may differ, by one ulp (dx relative
        // to its largest value: it cancels, dy - mean dy - xhat mean(dy xhat)).
        Tensor want_y = fx.at(mode + ".y"), want_dx = fx.at(mode + ".dx");
        CHECK(worst_ulps(y, want_y, kBFloat16, 0) <= 1.0);
        CHECK(count_differ(y, want_y) <= y.numel() / 100);
        CHECK(max_abs_diff(x.grad().to(kFloat32), want_dx.to(kFloat32)) <=
              half_ulp(kBFloat16, max_abs(want_dx)));
        CHECK(count_differ(x.grad(), want_dx) <= y.numel() / 100);
        // dw, db, running stats: float32 results of sums of 100 exact products (PyTorch sums in
        // float32, tb in double): measured 2.3e-7 relative to the largest, allowed 1e-6.
        for (auto [got, key] : {std::pair{w.grad(), ".dw"}, {b.grad(), ".db"}}) {
          INFO(key);
          Tensor want = fx.at(mode + key);
          CHECK(max_abs_diff(got, want) <= 1e-6 * (1 + max_abs(want)));
        }
        if (mode == "train") {
          CHECK(max_abs_diff(rm, fx.at("train.running_mean")) <= 1e-6);
          CHECK(max_abs_diff(rv, fx.at("train.running_var")) <= 1e-6);
        }
      }
    }
  set_cpu_kernels(CpuKernels::Fast);
}

TEST_CASE("half kernels (fast and reference) against float64 on the same values: odd channel "
          "counts, rows and planes, training and eval") {
  using kernels::BatchNormKernels;
  using kernels::BatchNormLayout;
  struct Geom {
    int64_t N, C, S;
    bool rows; // channels-last / [N, C] (channel stride 1) or NCHW planes (spatial stride 1)
  };
  for (DType t : {kBFloat16, kFloat16})
    for (Geom g : {Geom{4, 3, 25, true}, Geom{4, 3, 25, false}, Geom{3, 20, 7, true},
                   Geom{2, 300, 9, true}, Geom{70, 37, 1, true}, Geom{2, 5, 300, false},
                   Geom{129, 17, 1, true}})
      for (bool train : {true, false}) {
        INFO(dtype_name(t) << " N=" << g.N << " C=" << g.C << " S=" << g.S
                           << (g.rows ? " rows" : " planes") << (train ? " train" : " eval"));
        BatchNormLayout l{g.N, g.C, g.S, g.C * g.S, g.rows ? 1 : g.S, g.rows ? g.C : 1};
        int64_t n = g.N * g.C * g.S;
        Generator gen(g.C * 131 + g.S);
        // x: mean 2, std 3 per channel; dy standard normal; both exactly representable in t
        Tensor x64 = add(mul(randn({n}, {kFloat64}, &gen), 3.0), 2.0).to(t).to(kFloat64);
        Tensor dy64 = randn({n}, {kFloat64}, &gen).to(t).to(kFloat64);
        Tensor w64 = add(randn({g.C}, {kFloat64}, &gen), 1.0).to(kFloat32).to(kFloat64);
        Tensor b64 = randn({g.C}, {kFloat64}, &gen).to(kFloat32).to(kFloat64);
        Tensor rm64 = randn({g.C}, {kFloat64}, &gen).to(kFloat32).to(kFloat64);
        Tensor rv64 = add(abs(randn({g.C}, {kFloat64}, &gen)), 0.5).to(kFloat32).to(kFloat64);
        // the specification in float64: the reference kernel on the exact values
        Tensor y_w = empty({n}, kFloat64), dx_w = empty({n}, kFloat64);
        Tensor m_w = empty({g.C}, kFloat64), is_w = empty({g.C}, kFloat64);
        Tensor dw_w = empty({g.C}, kFloat64), db_w = empty({g.C}, kFloat64);
        Tensor rm_w = rm64.clone(), rv_w = rv64.clone();
        BatchNormKernels::ref.forward(kFloat64, l, x64.raw_data(), w64.raw_data(), b64.raw_data(),
                                      train, 0.1, 1e-5, rm_w.raw_data(), rv_w.raw_data(),
                                      y_w.raw_data(), m_w.raw_data(), is_w.raw_data());
        BatchNormKernels::ref.backward(kFloat64, l, x64.raw_data(), dy64.raw_data(),
                                       w64.raw_data(), m_w.raw_data(), is_w.raw_data(), train,
                                       dx_w.raw_data(), dw_w.raw_data(), db_w.raw_data());
        for (const BatchNormKernels* K : {&BatchNormKernels::cpu, &BatchNormKernels::ref}) {
          INFO((K == &BatchNormKernels::cpu ? "fast" : "reference"));
          Tensor x = x64.to(t), dy = dy64.to(t), w = w64.to(kFloat32), b = b64.to(kFloat32);
          Tensor rm = rm64.to(kFloat32), rv = rv64.to(kFloat32);
          Tensor y = empty({n}, t), dx = empty({n}, t), m = empty({g.C}), is = empty({g.C});
          Tensor dw = empty({g.C}), db = empty({g.C});
          K->forward(t, l, x.raw_data(), w.raw_data(), b.raw_data(), train, 0.1, 1e-5,
                     rm.raw_data(), rv.raw_data(), y.raw_data(), m.raw_data(), is.raw_data());
          K->backward(t, l, x.raw_data(), dy.raw_data(), w.raw_data(), m.raw_data(),
                      is.raw_data(), train, dx.raw_data(), dw.raw_data(), db.raw_data());
          // y and dx are rounded once to nearest: half an ulp from the float64 value, up to the
          // float32 arithmetic before the rounding (float32 statistics and coefficients; the fast
          // kernel's x scale + shift, A dy + B x + K), which matters only where the result is
          // small next to those terms (cancellation): an absolute floor of a few float32 ulps
          // of the terms covers it. (Measured: at most 0.499 ulps with the floor; truncating
          // instead of rounding would show about 1.)
          double floor_y = 1e-6 * (1 + max_abs(y_w) + 12 * max_abs(w64));
          CHECK(worst_ulps(y, y_w, t, floor_y) <= 0.5 + 0.02);
          CHECK(worst_ulps(dx, dx_w, t, 8e-6 * (1 + max_abs(dx_w))) <= 0.5 + 0.02);
          // float32 outputs of double sums over exact values: float32 rounding of the results
          // and of the saved statistics they use (measured <= 5e-7 relative), 1e-6 relative
          CHECK(max_abs_diff(m, m_w) <= 1e-6 * (1 + max_abs(m_w)));
          CHECK(max_abs_diff(is, is_w) <= 1e-6 * max_abs(is_w));
          CHECK(max_abs_diff(rm, rm_w) <= 1e-6 * (1 + max_abs(rm_w)));
          CHECK(max_abs_diff(rv, rv_w) <= 1e-6 * (1 + max_abs(rv_w)));
          CHECK(max_abs_diff(dw, dw_w) <= 1e-6 * (1 + max_abs(dw_w)));
          CHECK(max_abs_diff(db, db_w) <= 1e-6 * (1 + max_abs(db_w)));
        }
      }
}

TEST_CASE("half-precision batch_norm: eval mode, no running stats, and [N, C] inputs keep the "
          "half dtype; parameters must be float32") {
  Tensor x = randn({8, 5}).to(kBFloat16), none;
  Tensor rm = zeros({5}), rv = ones({5}), w = ones({5}), b = zeros({5});
  CHECK(batch_norm(x, rm, rv, w, b).dtype() == kBFloat16);                   // eval
  CHECK(batch_norm(x, none, none, none, none).dtype() == kBFloat16);         // batch stats only
  CHECK(batch_norm(randn({4, 5, 3, 3}).to(kFloat16), rm, rv, w, b, {.training = true}).dtype() ==
        kFloat16);
  check_error([&] { batch_norm(x, rm, rv, w.to(kBFloat16), b); },
              {"batch_norm", "weight", "float32", "bfloat16",
               "half-precision inputs take float32 parameters"});
  check_error([&] { batch_norm(x, rm.to(kFloat64), rv, w, b); },
              {"batch_norm", "running_mean", "float32", "float64"});
  check_error([&] { batch_norm(randn({8, 5}, kFloat64), rm, rv, none, none); },
              {"batch_norm", "running_mean", "float64", "float32"});
  check_error([&] { batch_norm(ones({8, 5}, kInt8), none, none, none, none); },
              {"batch_norm", "bfloat16", "int8"});
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
