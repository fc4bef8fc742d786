// quant: affine quantization against PyTorch 1.13 fixtures (tools/make_quant_fixtures.py), the
// straight-through rule, reference vs fast kernels, observers, LSQ / PACT, fusion and QAT
// Conv-BN, prepare / convert on Sequentials, the zoo and a user's module, checkpoints, and every
// bad input the issue names.
//
// Tolerances: fake-quant outputs, masks, observer statistics and qparams are compared EXACTLY
// (the code repeats PyTorch's float32 operations). Exceptions, each with its reason:
//  - LSQ scale / zero-point gradients: sums over the tensor, float32 in PyTorch (vectorised
//    order) and float64 here: relative 1e-5.
//  - histograms after re-binning: PyTorch's cumsum adds every sub-bin; here whole bins are
//    multiplied (same float64 values up to rounding of the sums): 1e-5 of the largest bin.
//  - QAT Conv-BN outputs and gradients: float32 convolutions and BN reductions in a different
//    order than PyTorch (oneDNN vs MKLDNN/ATen): 2e-4 of the largest value.
#include "gradcheck.h"

#include <tb/models.h>
#include <tb/quant.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <set>

using namespace tb;
using tbtest::randomise_bn;
using tbtest::check_error;
using tbtest::fixture_file;
using tbtest::max_abs_diff;
namespace q = tb::quant;

namespace {

// Case names of a fixture file: the prefixes of keys ending in `.<marker>`.
std::vector<std::string> cases_with(const TensorDict& fx, const std::string& marker) {
  std::vector<std::string> out;
  for (const auto& k : fx.keys())
    if (k.size() > marker.size() + 1 && k.substr(k.size() - marker.size() - 1) == "." + marker)
      out.push_back(k.substr(0, k.size() - marker.size() - 1));
  return out;
}

struct KernelsGuard {
  CpuKernels prev = cpu_kernels();
  ~KernelsGuard() { set_cpu_kernels(prev); }
};

void expect_equal(const Tensor& got, const Tensor& want, const std::string& what) {
  INFO(what);
  REQUIRE_MESSAGE(got.shape() == want.shape(), what << ": shape " << shape_str(got.shape())
                                                    << " vs " << shape_str(want.shape()));
  auto a = got.to_vector(), b = want.to_vector();
  int bad = 0;
  for (size_t i = 0; i < a.size(); i++)
    if (a[i] != b[i] && !(std::isnan(a[i]) && std::isnan(b[i])) && bad++ < 3)
      FAIL_CHECK(fmt::format("{}[{}]: tb {:.9g} vs torch {:.9g}", what, i, a[i], b[i]));
  CHECK_MESSAGE(bad == 0, what << ": " << bad << " of " << a.size() << " differ");
}

void expect_close(const Tensor& got, const Tensor& want, double tol, const std::string& what) {
  INFO(what);
  REQUIRE(got.defined());
  REQUIRE_MESSAGE(got.shape() == want.shape(), what << ": shape " << shape_str(got.shape())
                                                    << " vs " << shape_str(want.shape()));
  auto a = got.to_vector(), b = want.to_vector();
  double scale = 1e-30;
  for (double v : b) scale = std::max(scale, std::abs(v));
  int bad = 0;
  for (size_t i = 0; i < a.size(); i++)
    if (!(std::abs(a[i] - b[i]) <= tol * scale) && bad++ < 3)
      FAIL_CHECK(fmt::format("{}[{}]: tb {:.9g} vs torch {:.9g}", what, i, a[i], b[i]));
  CHECK_MESSAGE(bad == 0, what << ": " << bad << " of " << a.size() << " differ");
}

// The QuantSpec a fixture case was made with (see the script's doc for the layout).
q::QuantSpec spec_of(const Tensor& t) {
  auto v = t.to_int_vector();
  q::QuantSpec s;
  s.dtype = v[0] == 0 ? q::QDType::QUInt8 : q::QDType::QInt8;
  s.qscheme = (q::QScheme)v[1];
  s.bits = (int)v[2];
  if (v[3] != -1000) s.quant_min = v[3], s.quant_max = v[4];
  if (s.quant_min) s.bits = 8; // the explicit range decides; keep bits valid
  s.reduce_range = v[5] != 0;
  s.ch_axis = v[6];
  return s;
}

bool starts_with(const std::string& s, const std::string& p) { return s.rfind(p, 0) == 0; }

q::ObserverPtr observer_for(const std::string& name, const q::QuantSpec& spec, int64_t bins) {
  if (starts_with(name, "minmax")) return std::make_shared<q::MinMaxObserver>(spec);
  if (name == "moving_avg") return std::make_shared<q::MovingAverageMinMaxObserver>(spec, 0.1);
  if (name == "pc_moving")
    return std::make_shared<q::MovingAveragePerChannelMinMaxObserver>(spec, 0.01);
  if (starts_with(name, "pc_")) return std::make_shared<q::PerChannelMinMaxObserver>(spec);
  if (starts_with(name, "hist")) return std::make_shared<q::HistogramObserver>(spec, bins);
  throw Error("unknown case " + name);
}

// The small CNN of the main job (examples/train_fashion_mnist.cpp) on 1x12x12 inputs.
std::shared_ptr<nn::Sequential> small_cnn() {
  using namespace nn;
  auto net = std::make_shared<Sequential>();
  net->push_back(std::make_shared<Conv2d>(Conv2dOptions{.in_channels = 1, .out_channels = 4,
                                                        .kernel_size = 3, .padding = 1}));
  net->push_back(std::make_shared<BatchNorm2d>(4));
  net->push_back(std::make_shared<ReLU>());
  net->push_back(std::make_shared<MaxPool2d>(2));
  net->push_back(std::make_shared<Conv2d>(Conv2dOptions{.in_channels = 4, .out_channels = 6,
                                                        .kernel_size = 3, .padding = 1}));
  net->push_back(std::make_shared<BatchNorm2d>(6));
  net->push_back(std::make_shared<ReLU>());
  net->push_back(std::make_shared<MaxPool2d>(2));
  net->push_back(std::make_shared<Flatten>());
  net->push_back(std::make_shared<Linear>(6 * 3 * 3, 16));
  net->push_back(std::make_shared<ReLU>());
  net->push_back(std::make_shared<Linear>(16, 10));
  return net;
}


} // namespace

TEST_SUITE("quant") {

// ---- 1. ranges and qparams ----------------------------------------------------------------------

TEST_CASE("quant_range: PyTorch's ranges for 2..8 bits, signed and unsigned, reduce_range") {
  for (int b = 2; b <= 8; b++) {
    auto [u0, u1] = q::quant_range({.dtype = q::QDType::QUInt8, .bits = b});
    auto [s0, s1] = q::quant_range({.dtype = q::QDType::QInt8, .bits = b});
    CHECK(u0 == 0);
    CHECK(u1 == (1 << b) - 1);
    CHECK(s0 == -(1 << (b - 1)));
    CHECK(s1 == (1 << (b - 1)) - 1);
  }
  CHECK(q::quant_range({.reduce_range = true}) == std::pair<int64_t, int64_t>{0, 127});
  CHECK(q::quant_range({.dtype = q::QDType::QInt8, .reduce_range = true}) ==
        std::pair<int64_t, int64_t>{-64, 63});
  CHECK(q::quant_range({.dtype = q::QDType::QInt8, .bits = 4, .reduce_range = true}) ==
        std::pair<int64_t, int64_t>{-4, 3});
}

TEST_CASE("observers: min/max, moving averages, per channel and histogram equal PyTorch's") {
  const TensorDict& fx = fixture_file("quant_observers.safetensors");
  auto cases = cases_with(fx, "spec");
  REQUIRE(cases.size() > 40);
  for (const auto& c : cases) {
    INFO("case " << c);
    q::QuantSpec spec = spec_of(fx.at(c + ".spec"));
    int64_t bins = fx.contains(c + ".bins") ? fx.at(c + ".bins").to_int_vector()[0] : 2048;
    q::ObserverPtr obs = observer_for(c, spec, bins);
    int64_t n = fx.at(c + ".nbatches").to_int_vector()[0];
    for (int64_t i = 0; i < n; i++) (*obs)(fx.at(c + ".x" + std::to_string(i)));
    expect_equal(obs->get("min_val").reshape(fx.at(c + ".min_val").shape()),
                 fx.at(c + ".min_val"), c + ".min_val");
    expect_equal(obs->get("max_val").reshape(fx.at(c + ".max_val").shape()),
                 fx.at(c + ".max_val"), c + ".max_val");
    if (fx.contains(c + ".histogram"))
      expect_close(obs->get("histogram"), fx.at(c + ".histogram"), 1e-5, c + ".histogram");
    q::QParams p = obs->calculate_qparams();
    expect_equal(p.scale, fx.at(c + ".scale"), c + ".scale");
    expect_equal(p.zero_point, fx.at(c + ".zero_point"), c + ".zero_point");
  }
}

// ---- 2. fake-quant ops ----------------------------------------------------------------------------

TEST_CASE("fake_quantize_per_tensor / per_channel: forward and STE gradient equal PyTorch's") {
  const TensorDict& fx = fixture_file("quant_fake_quant.safetensors");
  KernelsGuard guard;
  for (CpuKernels k : {CpuKernels::Fast, CpuKernels::Reference}) {
    set_cpu_kernels(k);
    for (const auto& c : cases_with(fx, "range")) {
      if (starts_with(c, "lsq")) continue;
      INFO("case " << c << (k == CpuKernels::Fast ? " (fast)" : " (reference)"));
      auto r = fx.at(c + ".range").to_int_vector();
      Tensor x = fx.at(c + ".x").clone().requires_grad_(true);
      Tensor y = fx.contains(c + ".axis")
                     ? q::fake_quantize_per_channel_affine(
                           x, fx.at(c + ".scale"), fx.at(c + ".zero_point"),
                           fx.at(c + ".axis").to_int_vector()[0], r[0], r[1])
                     : q::fake_quantize_per_tensor_affine(x, fx.at(c + ".scale"),
                                                          fx.at(c + ".zero_point"), r[0], r[1]);
      expect_equal(y, fx.at(c + ".out"), c + ".out");
      sum(mul(y, fx.at(c + ".R"))).backward();
      expect_equal(x.grad(), fx.at(c + ".dx"), c + ".dx");
    }
  }
}

TEST_CASE("straight-through rule: gradient 1 where round(x/s)+z is in [qmin, qmax], else 0") {
  Generator g(7);
  Tensor x = mul(randn({500}, {kFloat64}, &g), 4.0).requires_grad_(true);
  const double s = 0.1;
  const int64_t z = 3, qmin = -8, qmax = 7;
  Tensor y = q::fake_quantize_per_tensor_affine(x, s, z, qmin, qmax);
  sum(y).backward();
  auto xv = x.to_vector(), gv = x.grad().to_vector(), yv = y.to_vector();
  int inside = 0, outside = 0;
  float inv = 1.0f / (float)s;
  for (size_t i = 0; i < xv.size(); i++) {
    double qv = std::nearbyint(xv[i] * (double)inv) + z;
    bool in = qv >= qmin && qv <= qmax;
    (in ? inside : outside)++;
    CHECK(gv[i] == (in ? 1.0 : 0.0));
    double clamped = std::min<double>(std::max<double>(qv, qmin), qmax);
    CHECK(yv[i] == (clamped - z) * (double)(float)s);
  }
  CHECK(inside > 50); // both sides of the rule were exercised
  CHECK(outside > 50);
  // Per channel: each channel's own range decides.
  Tensor w = mul(randn({3, 40}, {kFloat32}, &g), 2.0).requires_grad_(true);
  Tensor sc = from_vector(std::vector<float>{0.01f, 0.1f, 1.0f}, {3});
  Tensor zp = zeros({3}, TensorOptions(kInt32));
  sum(q::fake_quantize_per_channel_affine(w, sc, zp, 0, -8, 7)).backward();
  auto wv = w.to_vector(), wg = w.grad().to_vector();
  for (int64_t c = 0; c < 3; c++)
    for (int64_t i = 0; i < 40; i++) {
      float inv_c = 1.0f / sc.to_vector()[c];
      float qv = std::nearbyint((float)wv[c * 40 + i] * inv_c);
      CHECK(wg[c * 40 + i] == (qv >= -8 && qv <= 7 ? 1.0 : 0.0));
    }
}

TEST_CASE("fast fake-quant kernels equal the reference ones (shapes, axes, layouts, dtypes)") {
  Generator g(3);
  KernelsGuard guard;
  struct Case {
    Shape shape;
    int64_t axis; // -1: per tensor
    DType dtype;
    bool channels_last;
  };
  std::vector<Case> cases = {{{1000}, -1, kFloat32, false},     {{70001}, -1, kFloat32, false},
                             {{4, 8, 9, 9}, -1, kFloat32, true}, {{4, 8, 9, 9}, 1, kFloat32, false},
                             {{16, 3, 3, 3}, 0, kFloat64, false}, {{5, 7, 300}, 2, kFloat32, false},
                             {{64, 32, 33}, 1, kFloat32, false}};
  for (const auto& c : cases) {
    INFO("shape " << shape_str(c.shape) << " axis " << c.axis);
    Tensor x = mul(randn(c.shape, {c.dtype}, &g), 3.0);
    if (c.channels_last) x = x.contiguous_channels_last();
    int64_t C = c.axis < 0 ? 1 : c.shape[c.axis];
    Tensor sc = add(mul(rand({C}, {}, &g), 0.05), 0.01);
    Tensor zp = randint(0, 16, {C}, {kInt64}, &g).to(kInt32);
    auto run = [&](CpuKernels k) {
      set_cpu_kernels(k);
      Tensor xl = x.detach().requires_grad_(true);
      Tensor y = c.axis < 0 ? q::fake_quantize_per_tensor_affine(xl, sc.narrow(0, 0, 1),
                                                                 zp.narrow(0, 0, 1), 0, 15)
                            : q::fake_quantize_per_channel_affine(xl, sc, zp, c.axis, 0, 15);
      sum(mul(y, y)).backward();
      return std::pair{y, xl.grad()};
    };
    auto [yf, gf] = run(CpuKernels::Fast);
    auto [yr, gr] = run(CpuKernels::Reference);
    expect_equal(yf, yr, "y");
    expect_equal(gf, gr, "dx");
    if (c.channels_last) CHECK(yf.is_channels_last()); // the layout is kept
    // LSQ backward, both kernels.
    if (c.dtype == kFloat32) {
      auto lsq = [&](CpuKernels k) {
        set_cpu_kernels(k);
        Tensor xl = x.detach().requires_grad_(true);
        Tensor s = sc.clone().requires_grad_(true);
        Tensor z = zp.to(kFloat32).requires_grad_(true);
        Tensor y = c.axis < 0
                       ? q::fake_quantize_learnable_per_tensor_affine(
                             xl, s.narrow(0, 0, 1), z.narrow(0, 0, 1), 0, 15, 0.01)
                       : q::fake_quantize_learnable_per_channel_affine(xl, s, z, c.axis, 0, 15,
                                                                       0.01);
        sum(mul(y, y)).backward();
        return std::tuple{xl.grad(), s.grad(), z.grad()};
      };
      auto [dxf, dsf, dzf] = lsq(CpuKernels::Fast);
      auto [dxr, dsr, dzr] = lsq(CpuKernels::Reference);
      expect_equal(dxf, dxr, "lsq dx");
      // per-row sums vs one running sum, both in float64
      expect_close(dsf, dsr, 1e-9, "lsq dscale");
      expect_close(dzf, dzr, 1e-9, "lsq dzero_point");
    }
  }
}

TEST_CASE("LSQ ops: forward and scale / zero-point gradients equal PyTorch's learnable ops") {
  const TensorDict& fx = fixture_file("quant_fake_quant.safetensors");
  KernelsGuard guard;
  for (CpuKernels k : {CpuKernels::Fast, CpuKernels::Reference}) {
    set_cpu_kernels(k);
    for (const auto& c : cases_with(fx, "grad_factor")) {
      INFO("case " << c);
      auto r = fx.at(c + ".range").to_int_vector();
      double gf = fx.at(c + ".grad_factor").item();
      Tensor x = fx.at(c + ".x").clone().requires_grad_(true);
      Tensor s = fx.at(c + ".scale").clone().requires_grad_(true);
      Tensor z = fx.at(c + ".zero_point").clone().requires_grad_(true);
      Tensor y = fx.contains(c + ".axis")
                     ? q::fake_quantize_learnable_per_channel_affine(
                           x, s, z, fx.at(c + ".axis").to_int_vector()[0], r[0], r[1], gf)
                     : q::fake_quantize_learnable_per_tensor_affine(x, s, z, r[0], r[1], gf);
      expect_equal(y, fx.at(c + ".out"), c + ".out");
      sum(mul(y, fx.at(c + ".R"))).backward();
      expect_equal(x.grad(), fx.at(c + ".dx"), c + ".dx");
      expect_close(s.grad(), fx.at(c + ".dscale"), 1e-5, c + ".dscale");
      expect_close(z.grad(), fx.at(c + ".dzero_point"), 1e-5, c + ".dzero_point");
    }
  }
}

TEST_CASE("LearnableFakeQuantize (LSQ): grad scale 1/sqrt(N Qp) as PyTorch's module; init") {
  const TensorDict& fx = fixture_file("quant_fake_quant.safetensors");
  q::LearnableFakeQuantize m({.dtype = q::QDType::QUInt8, .bits = 4});
  {
    no_grad ng;
    m.get("scale").fill_(0.3);
    m.get("zero_point").fill_(1.0);
    m.get("initialized").fill_(1);
  }
  Tensor y = m(fx.at("lsq_module.x"));
  expect_equal(y, fx.at("lsq_module.out"), "out");
  sum(mul(y, fx.at("lsq_module.R"))).backward();
  expect_close(m.get("scale").grad(), fx.at("lsq_module.dscale"), 1e-5, "dscale");
  expect_close(m.get("zero_point").grad(), fx.at("lsq_module.dzero_point"), 1e-5, "dzero_point");
  // Initialisation: s = 2 mean|x| / sqrt(Qp), per channel for per-channel specs.
  q::LearnableFakeQuantize w({.dtype = q::QDType::QInt8,
                              .qscheme = q::QScheme::PerChannelSymmetric, .bits = 4}, 2);
  Tensor wt = from_vector(std::vector<float>{1, -1, 2, -2, 0.5, 0.5, -0.5, 0.5}, {2, 4});
  w(wt);
  auto s = w.get("scale").to_vector();
  CHECK(s[0] == doctest::Approx(2 * 1.5 / std::sqrt(7.0)).epsilon(1e-6));
  CHECK(s[1] == doctest::Approx(2 * 0.5 / std::sqrt(7.0)).epsilon(1e-6));
  CHECK(w.get("zero_point").to_vector() == std::vector<double>{0, 0});
}

TEST_CASE("PACT: clipped forward, dx = dy on [0, alpha), d alpha = sum dy where x >= alpha") {
  q::PACTFakeQuantize m(4, 2.0);
  Tensor x = from_vector(std::vector<float>{-1.0f, 0.1f, 0.7f, 1.9f, 2.0f, 3.5f}, {6});
  x.requires_grad_(true);
  Tensor y = m(x);
  // scale 2/15: 0.1 -> 1 step, 0.7 -> round(5.25) = 5 steps, >= 2 -> 15 steps.
  auto yv = y.to_vector();
  float s = 2.0f / 15.0f;
  CHECK(yv[0] == 0.0);
  CHECK(yv[1] == doctest::Approx(1 * s));
  CHECK(yv[2] == doctest::Approx(5 * s));
  CHECK(yv[4] == doctest::Approx(2.0));
  CHECK(yv[5] == doctest::Approx(2.0));
  Tensor r = from_vector(std::vector<float>{1, 2, 3, 4, 5, 6}, {6});
  sum(mul(y, r)).backward();
  CHECK(x.grad().to_vector() == std::vector<double>{0, 2, 3, 4, 0, 0});
  CHECK(m.get("alpha").grad().item() == 11.0);
}

// ---- 3. observers: properties -------------------------------------------------------------------

TEST_CASE("Percentile and Entropy observers clip outliers that MinMax keeps") {
  Generator g(11);
  Tensor x = randn({20000}, {}, &g);
  {
    no_grad ng;
    x.data<float>()[0] = 60.0f; // one far outlier
    x.data<float>()[1] = -45.0f;
  }
  q::MinMaxObserver mm;
  q::PercentileObserver pct({}, 99.9);
  q::EntropyObserver ent({.dtype = q::QDType::QInt8, .qscheme = q::QScheme::PerTensorSymmetric});
  q::EntropyObserver ent_affine; // quint8 affine: clips the upper tail only
  mm(x), pct(x), ent(x), ent_affine(x);
  double s_mm = mm.calculate_qparams().scale.item(), s_p = pct.calculate_qparams().scale.item(),
         s_e = ent.calculate_qparams().scale.item();
  CHECK(s_mm == doctest::Approx(105.0 / 255).epsilon(1e-4));
  // 99.9% of N(0, 1) lies within about +-3.3 (two-sided 0.1% tails: 3.29)
  auto [lo, hi] = pct.observed_range();
  CHECK(hi.item() == doctest::Approx(3.29).epsilon(0.08));
  CHECK(lo.item() == doctest::Approx(-3.29).epsilon(0.08));
  CHECK(s_p < s_mm / 10);
  auto [elo, ehi] = ent.observed_range();
  CHECK(ehi.item() > 2.0);
  CHECK(ehi.item() < 10.0);
  CHECK(elo.item() == doctest::Approx(-ehi.item()));
  CHECK(s_e < 2 * 60.0 / 255 / 5); // symmetric: 60 would give scale 60 / 127.5
  auto [alo, ahi] = ent_affine.observed_range();
  CHECK(alo.item() == -45.0);
  CHECK(ahi.item() < 30.0);
  // Non-negative data (post-ReLU): entropy keeps [0, T].
  q::EntropyObserver ent_relu;
  ent_relu(relu(x));
  CHECK(ent_relu.observed_range().first.item() == 0.0);
  CHECK(ent_relu.calculate_qparams().zero_point.item() == 0);
}

TEST_CASE("Histogram: a range that grows by orders of magnitude keeps the old mass in one bin") {
  q::HistogramObserver h;
  h(mul(rand({100}), 1e-9)); // a range of 1e-9 ...
  h(mul(randn({100}), 10.0)); // ... then of about 50: 1e10 times wider
  CHECK(sum(h.get("histogram")).item() == doctest::Approx(200.0));
  q::QParams p = h.calculate_qparams();
  CHECK(p.scale.item() > 0.01);
  CHECK(std::isfinite(p.scale.item()));
}

TEST_CASE("observer state lives in buffers: state_dict round trip, per-channel sized on use") {
  q::PerChannelMinMaxObserver a;
  a(randn({5, 3}));
  StateDict sd = a.state_dict();
  CHECK(sd.contains("min_val"));
  CHECK(sd.at("min_val").shape() == Shape{5});
  q::PerChannelMinMaxObserver b;
  b.load_state_dict(sd);
  expect_equal(b.calculate_qparams().scale, a.calculate_qparams().scale, "scale");
  q::HistogramObserver h;
  h(randn({300}));
  q::HistogramObserver h2;
  h2.load_state_dict(h.state_dict());
  expect_equal(h2.calculate_qparams().scale, h.calculate_qparams().scale, "histogram scale");
}

// ---- 4. FakeQuantize module ---------------------------------------------------------------------

TEST_CASE("FakeQuantize: observer + fake-quant, toggled with model.apply as in PyTorch's QAT") {
  auto net = std::make_shared<nn::Sequential>();
  net->push_back(std::make_shared<q::FakeQuantize>(
      std::make_shared<q::MovingAverageMinMaxObserver>(q::QuantSpec{})));
  auto& fq = dynamic_cast<q::FakeQuantize&>(*(*net)[0]);
  Tensor x = mul(randn({100}), 2.0);
  Tensor y = (*net)(x);
  q::QParams p = fq.observer().calculate_qparams();
  expect_equal(y, q::fake_quantize(x, p), "y");
  expect_equal(fq.get("scale"), p.scale, "scale buffer");
  net->apply(q::disable_observer);
  CHECK_FALSE(fq.observer_enabled());
  (*net)(mul(x, 10.0)); // not observed: qparams stay
  expect_equal(fq.get("scale"), p.scale, "scale after disable_observer");
  net->apply(q::disable_fake_quant);
  expect_equal((*net)(x), x, "identity with fake-quant off");
  net->apply(q::enable_fake_quant);
  net->apply(q::enable_observer);
  CHECK(fq.observer_enabled());
  CHECK(fq.fake_quant_enabled());
  CHECK(net->state_dict().contains("0.activation_post_process.min_val"));
}

// ---- 5. fusion and QAT Conv-BN ------------------------------------------------------------------

TEST_CASE("fuse_modules: conv-BN(-ReLU) folded in eval equals the unfused modules") {
  auto net = small_cnn();
  randomise_bn(*net, 5);
  net->eval();
  Tensor x = randn({3, 1, 12, 12});
  Tensor ref = (*net)(x);
  auto fused = nn::clone(*net);
  auto groups = q::find_fusable_groups(*fused);
  REQUIRE(groups.size() == 3); // two conv-bn-relu, one linear-relu
  CHECK(groups[0] == std::vector<std::string>{"0", "1", "2"});
  q::fuse_modules(*fused, groups);
  CHECK(fused->child("0")->type_name() == "ConvReLU2d");
  CHECK(fused->child("1")->type_name() == "Identity");
  CHECK(max_abs_diff((*fused)(x), ref) < 1e-5);
  // Conv + BN only, and PyTorch's fuse_conv_bn_weights on the fixture's parameters.
  const TensorDict& fx = fixture_file("quant_qat.safetensors");
  auto bn = std::make_shared<nn::BatchNorm2d>(6);
  {
    no_grad ng;
    bn->weight().copy_(fx.at("convbnrelu.bn_weight"));
    bn->bias().copy_(fx.at("convbnrelu.bn_bias"));
    bn->running_mean().copy_(fx.at("convbnrelu.running_mean2"));
    bn->running_var().copy_(fx.at("convbnrelu.running_var2"));
  }
  auto [w, b] = q::fuse_conv_bn_weights(fx.at("convbnrelu.weight"), fx.at("convbnrelu.bias"), *bn);
  expect_close(w, fx.at("convbnrelu.fused_weight"), 1e-6, "fused weight");
  expect_close(b, fx.at("convbnrelu.fused_bias"), 1e-6, "fused bias");
}

TEST_CASE("QAT Conv-BN(-ReLU) follows PyTorch's forward before and after freeze_bn_stats") {
  const TensorDict& fx = fixture_file("quant_qat.safetensors");
  for (std::string c : {"convbn", "convbnrelu", "convbn_dw"}) {
    INFO("case " << c);
    Tensor w = fx.at(c + ".weight");
    bool has_bias = fx.contains(c + ".bias");
    int64_t out = w.size(0), groups = c == "convbn_dw" ? 4 : 1;
    auto conv = std::make_shared<nn::Conv2d>(nn::Conv2dOptions{
        .in_channels = 4, .out_channels = out, .kernel_size = 3, .padding = 1, .groups = groups,
        .bias = has_bias});
    auto bn = std::make_shared<nn::BatchNorm2d>(out);
    {
      no_grad ng;
      conv->weight().copy_(w);
      if (has_bias) conv->bias().copy_(fx.at(c + ".bias"));
      for (const char* k : {"weight", "bias", "running_mean", "running_var"})
        bn->get(k).copy_(fx.at(c + ".bn_" + std::string(k)));
    }
    auto net = std::make_shared<nn::Sequential>();
    net->push_back(conv);
    net->push_back(bn);
    if (c == "convbnrelu") net->push_back(std::make_shared<nn::ReLU>());
    std::vector<std::string> group = {"0", "1"};
    if (c == "convbnrelu") group.push_back("2");
    q::fuse_modules_qat(*net, {group});
    q::QConfigMapping cfg;
    cfg.global = q::default_qat_qconfig();
    cfg.global.activation.observer = q::ObserverKind::MovingAverageMinMax;
    q::prepare_qat(*net, cfg);
    auto& qat = dynamic_cast<q::QATConvBn2d&>(*(*net)[0]);
    qat.child("activation_post_process")->apply(q::disable_fake_quant); // PyTorch's fixture has none
    net->train();
    Tensor y1 = qat(fx.at(c + ".x1"));
    expect_close(y1, fx.at(c + ".y1"), 2e-4, "y1 (batch statistics)");
    sum(mul(y1, fx.at(c + ".R1"))).backward();
    expect_close(qat.get("weight").grad(), fx.at(c + ".dweight1"), 2e-4, "dweight1");
    expect_close(qat.child("bn")->get("weight").grad(), fx.at(c + ".dbn_weight1"), 2e-4,
                 "dbn_weight1");
    expect_close(qat.child("bn")->get("running_mean"), fx.at(c + ".running_mean1"), 1e-5, "rm1");
    expect_close(qat.child("bn")->get("running_var"), fx.at(c + ".running_var1"), 1e-5, "rv1");
    Tensor rm1 = qat.child("bn")->get("running_mean").clone();
    net->zero_grad();
    net->apply(q::freeze_bn_stats);
    net->train(); // a frozen BN stays in eval mode
    CHECK_FALSE(qat.child("bn")->is_training());
    Tensor y2 = qat(fx.at(c + ".x2"));
    expect_close(y2, fx.at(c + ".y2"), 2e-4, "y2 (running statistics)");
    sum(mul(y2, fx.at(c + ".R2"))).backward();
    expect_close(qat.get("weight").grad(), fx.at(c + ".dweight2"), 2e-4, "dweight2");
    expect_close(qat.child("bn")->get("running_mean"), fx.at(c + ".running_mean2"), 1e-5, "rm2");
    expect_equal(qat.child("bn")->get("running_mean"), rm1, "frozen: running mean unchanged");
  }
}

// ---- 6. prepare / convert ---------------------------------------------------------------------

TEST_CASE("PTQ on a Sequential: prepare, calibrate, convert; int8 weights; report") {
  auto net = small_cnn();
  randomise_bn(*net, 2);
  net->eval();
  auto model = std::make_shared<q::QuantWrapper>(net);
  q::fuse_modules(*model, q::find_fusable_groups(*model));
  q::ConversionReport rep = q::prepare(*model);
  CHECK(q::stage(*model) == "prepared");
  CHECK(model->get_submodule("quant").has_child("activation_post_process"));
  CHECK(model->get_submodule("module.0").has_child("weight_post_process"));
  CHECK_FALSE(model->get_submodule("module.3").has_child("activation_post_process")); // max pool
  Tensor x = randn({8, 1, 12, 12});
  Tensor yf = (*model)(x);
  q::ConversionReport conv = q::convert(*model);
  CHECK(q::stage(*model) == "converted");
  auto& qc = dynamic_cast<q::QuantizedConv2d&>(model->get_submodule("module.0"));
  CHECK(qc.get("weight").dtype() == kInt8);
  CHECK(qc.get("weight_scale").numel() == 4); // per channel
  CHECK(conv.quantized >= 5);
  CHECK(conv.str().find("module.0") != std::string::npos);
  Tensor yq = (*model)(x);
  CHECK(max_abs_diff(yq, yf) < 0.1 * (1 + max_abs_diff(yf, zeros_like(yf))));
}

TEST_CASE("find_fusable_groups from the data flow: ResNet blocks' conv/BN pairs, never a shared ReLU") {
  manual_seed(11);
  auto net = models::create("resnet18", {.num_classes = 10, .small_input = true, .in_channels = 1});
  randomise_bn(*net, 5);
  net->train(); // the trace must not move BN statistics, and must leave the modes as they were
  net->get_submodule("layer1.0").eval();
  Tensor rm = net->get_submodule("layer2.0.bn1").get("running_mean").clone();
  auto groups = q::find_fusable_groups(*net, {2, 1, 28, 28});
  CHECK(net->is_training());
  CHECK_FALSE(net->get_submodule("layer1.0").is_training());
  CHECK(net->get_submodule("layer1.1").is_training());
  CHECK(allclose(net->get_submodule("layer2.0.bn1").get("running_mean"), rm));
  // 20 convs, each with its BN: the stem (with its ReLU, called once), conv1/bn1 and conv2/bn2 of
  // 8 blocks and 3 downsamples; the blocks' ReLU is called twice and stays out.
  std::set<std::vector<std::string>> got(groups.begin(), groups.end());
  CHECK(groups.size() == 20);
  CHECK(got.count({"conv1", "bn1", "relu"}));
  CHECK(got.count({"layer1.0.conv1", "layer1.0.bn1"}));
  CHECK(got.count({"layer3.1.conv2", "layer3.1.bn2"}));
  CHECK(got.count({"layer2.0.downsample.0", "layer2.0.downsample.1"}));
  for (const auto& g : groups) CHECK(g.back().find(".relu") == std::string::npos);
  // The tree rule sees only the downsample Sequentials' pairs.
  CHECK(q::find_fusable_groups(*net).size() == 3);
  // Fused in eval: the same function.
  net->eval();
  auto fused = nn::clone(*net);
  q::fuse_modules(*fused, groups);
  Tensor x = randn({2, 1, 28, 28});
  no_grad ng;
  Tensor y0 = (*net)(x), y1 = (*fused)(x);
  CHECK(max_abs_diff(y0, y1) < 1e-4 * (1 + max_abs_diff(y0, zeros_like(y0))));
  // The CNN (a Sequential): the same groups as the tree rule.
  auto cnn = models::create("cnn", {.num_classes = 10, .in_channels = 1});
  CHECK(q::find_fusable_groups(*cnn, {1, 1, 28, 28}) == q::find_fusable_groups(*cnn));
}

TEST_CASE("converted model equals the fake-quant (QAT) model in eval") {
  auto net = small_cnn();
  randomise_bn(*net, 4);
  auto model = std::make_shared<q::QuantWrapper>(net);
  q::fuse_modules_qat(*model, q::find_fusable_groups(*model));
  q::QConfigMapping cfg;
  cfg.global = q::default_qat_qconfig();
  q::prepare_qat(*model, cfg);
  CHECK(q::stage(*model) == "qat");
  model->train();
  for (int i = 0; i < 3; i++) (*model)(randn({8, 1, 12, 12}));
  model->apply(q::freeze_bn_stats);
  model->apply(q::disable_observer);
  model->eval();
  Tensor x = randn({8, 1, 12, 12});
  Tensor y_fq = (*model)(x);
  q::convert(*model);
  Tensor y_q = (*model)(x);
  // Equal up to the float rounding of BN folding, which can move an output across a rounding
  // step of the last layer's activation quantizer: at most one step (its scale) anywhere.
  auto& last = dynamic_cast<q::Quantize&>(
      *model->get_submodule("module.11").child("activation_post_process"));
  double step = last.get("scale").item();
  CHECK(max_abs_diff(y_q, y_fq) <= step * 1.001);
  double mean_diff = mean(abs(sub(y_q, y_fq))).item();
  CHECK(mean_diff < step * 0.05);
}

TEST_CASE("prepare works on every zoo model: joins observed, unknown leaves reported") {
  for (std::string name : {"mobilenet_v2", "resnet18", "shufflenet_v2_x0_5", "mobilenet_v3_small"}) {
    INFO(name);
    auto m = models::create(name, {.num_classes = 10, .small_input = true, .in_channels = 1});
    m->eval();
    q::fuse_modules(*m, q::find_fusable_groups(*m));
    auto model = std::make_shared<q::QuantWrapper>(m);
    q::ConversionReport rep = q::prepare(*model);
    int joins = 0;
    for (auto& [path, mod] : model->named_modules()) {
      std::string t = mod->type_name();
      if (t == "Add" || t == "Mul" || t == "Cat") {
        CHECK_MESSAGE(mod->has_child("activation_post_process"), path);
        joins++;
      }
    }
    CHECK(joins > 0); // residual adds, SE multiplies, concatenations
    Tensor x = randn({2, 1, 28, 28});
    {
      no_grad ng;
      (*model)(x);
    }
    q::convert(*model);
    Tensor y = (*model)(x);
    CHECK(y.shape() == Shape{2, 10});
    CHECK(allclose(isfinite(y).to(kFloat32), ones_like(y)));
  }
}

TEST_CASE("qconfig overrides by type and path, the skip list, a user's module stays float") {
  struct Custom : nn::Module {
    Tensor forward(const Tensor& x) override { return mul(x, 2.0); }
    TB_MODULE(Custom)
  };
  auto net = small_cnn();
  net->set_module("8", std::make_shared<Custom>()); // replaces Flatten: a leaf of no known kind
  auto flat = std::make_shared<nn::Sequential>();
  flat->push_back(net);
  q::QConfigMapping cfg;
  cfg.by_type["Linear"] = q::default_qconfig(4, 8);
  cfg.by_path["0.4"] = q::default_qconfig(8, 8);
  cfg.by_path["0.4"].activation.observer = q::ObserverKind::MinMax;
  cfg.skip = {"0.11"};
  q::ConversionReport rep = q::prepare(*flat, cfg);
  auto find = [&](const std::string& p) {
    for (auto& l : rep.layers)
      if (l.path == p) return l;
    return q::LayerReport{};
  };
  CHECK(find("0.8").action == "skipped");
  CHECK(find("0.8").reason.find("no quantized form") != std::string::npos);
  CHECK(find("0.11").action == "skipped");
  CHECK(find("0.11").reason.find("skip list") != std::string::npos);
  CHECK(find("0.9").reason.find("4-bit") != std::string::npos);
  CHECK(flat->get_submodule("0.4.activation_post_process").type_name() == "MinMaxObserver");
  CHECK(flat->get_submodule("0.0.activation_post_process").type_name() == "HistogramObserver");
  CHECK_FALSE(flat->get_submodule("0.11").has_child("activation_post_process"));
}

TEST_CASE("quantize() and get_quantization_statistics on a data loader") {
  auto images = randn({64, 1, 12, 12});
  auto labels = randint(0, 10, {64});
  auto ds = std::make_shared<data::TensorDataset>(images, labels);
  data::DataLoader loader(ds, {.batch_size = 16});
  auto net = small_cnn();
  randomise_bn(*net, 9);
  net->eval();
  auto stats_model = std::make_shared<q::QuantWrapper>(nn::clone(*net));
  q::prepare(*stats_model);
  q::QuantizationStatistics st = q::get_quantization_statistics(*stats_model, loader);
  REQUIRE(st.layers.size() >= 6);
  CHECK(st.layers[0].path == "quant");
  CHECK(st.layers[0].min < st.layers[0].max);
  CHECK(st.str().find("HistogramObserver") != std::string::npos);
  auto model = std::make_shared<q::QuantWrapper>(nn::clone(*net));
  q::ConversionReport rep = q::quantize(*model, {}, loader);
  CHECK(q::stage(*model) == "converted");
  CHECK(rep.quantized > 0);
}

TEST_CASE("checkpoints: prepared, QAT and converted models round-trip through safetensors") {
  auto dir = std::filesystem::temp_directory_path() / "tb_quant_ckpt";
  std::filesystem::create_directories(dir);
  Tensor x = randn({4, 1, 12, 12});
  auto build = [&](const std::string& stage_name, bool calibrate) {
    manual_seed(1);
    auto net = small_cnn();
    auto model = std::make_shared<q::QuantWrapper>(net);
    if (stage_name == "qat") {
      q::fuse_modules_qat(*model, q::find_fusable_groups(*model));
      q::QConfigMapping cfg;
      cfg.global = q::default_qat_qconfig(4, 8);
      cfg.global.weight.fake_quant = q::FakeQuantKind::LSQ;
      q::prepare_qat(*model, cfg);
    } else {
      model->eval();
      q::fuse_modules(*model, q::find_fusable_groups(*model));
      q::prepare(*model);
    }
    if (calibrate) {
      no_grad ng;
      (*model)(randn({8, 1, 12, 12}));
    }
    if (stage_name == "converted") q::convert(*model, {.allow_uncalibrated = !calibrate});
    return model;
  };
  for (std::string st : {"prepared", "qat", "converted"}) {
    INFO(st);
    auto a = build(st, true);
    a->eval();
    a->apply(q::disable_observer);
    std::string path = (dir / (st + ".safetensors")).string();
    q::save(*a, path);
    auto b = build(st, false);
    b->eval();
    b->apply(q::disable_observer);
    q::load(*b, path);
    no_grad ng;
    expect_equal((*b)(x), (*a)(x), st + " outputs after load");
    auto sd = b->state_dict();
    if (st == "converted")
      CHECK(sd.at("module.0.weight").dtype() == kInt8);
  }
  // Loading a checkpoint of another stage is refused.
  auto prepared = build("prepared", false);
  check_error([&] { q::load(*prepared, (dir / "converted.safetensors").string()); },
              {"converted", "prepared"});
  std::filesystem::remove_all(dir);
}

TEST_CASE("4-bit weights are packed two a byte; unpacked they equal quantize_tensor's") {
  Generator g(21);
  Tensor w = randn({5, 3, 3, 3}, {}, &g); // 135 values: an odd count
  q::PerChannelMinMaxObserver obs({.dtype = q::QDType::QInt8,
                                   .qscheme = q::QScheme::PerChannelSymmetric, .bits = 4});
  obs(w);
  q::QParams wq = obs.calculate_qparams();
  q::QuantizedConv2d conv(w, Tensor(), {}, wq, q::FusedAct::None);
  CHECK(conv.get("weight").dtype() == kUInt8);
  CHECK(conv.get("weight").shape() == Shape{68});
  expect_equal(conv.int_weight(), q::quantize_tensor(w, wq, q::QDType::QInt8), "unpacked");
  CHECK(conv.int_weight().dtype() == kInt8);
  // The dequantized weight is the fake-quantized one, bit for bit.
  expect_equal(q::dequantize_tensor(conv.int_weight(), wq), q::fake_quantize(w, wq), "dequant");
  // 8 bits stay one value a byte.
  q::PerChannelMinMaxObserver obs8;
  obs8(w);
  q::QuantizedConv2d conv8(w, Tensor(), {}, obs8.calculate_qparams(), q::FusedAct::None);
  CHECK(conv8.get("weight").dtype() == kInt8);
  CHECK(conv8.get("weight").shape() == w.shape());
}

// ---- 7. bad input -------------------------------------------------------------------------------

TEST_CASE("bad input: each a tb::Error saying what was expected") {
  check_error([] { q::quant_range({.bits = 1}); }, {"bits must be in 2..8", "got 1"});
  check_error([] { q::quant_range({.bits = 9}); }, {"bits must be in 2..8", "got 9"});
  check_error([] { q::MinMaxObserver({.bits = 12}); }, {"bits"});
  check_error([] { q::quant_range({.quant_min = 5, .quant_max = 5}); }, {"qmin < qmax"});
  check_error([] { q::fake_quantize_per_tensor_affine(randn({4}), 0.1, 0, 7, 3); },
              {"fake_quantize_per_tensor_affine", "qmin < qmax", "7", "3"});
  Tensor x = randn({2, 3, 4, 4});
  check_error(
      [&] {
        q::fake_quantize_per_channel_affine(x, ones({3}), zeros({3}, TensorOptions(kInt32)), 4, 0,
                                            255);
      },
      {"fake_quantize_per_channel_affine", "axis 4", "[2, 3, 4, 4]"});
  check_error(
      [&] {
        q::fake_quantize_per_channel_affine(x, ones({4}), zeros({4}, TensorOptions(kInt32)), 1, 0,
                                            255);
      },
      {"shape [3]", "[4]"});
  check_error([&] { q::fake_quantize_per_tensor_affine(x, 0.0, 0, 0, 255); },
              {"scale > 0", "got 0"});
  check_error([&] { q::fake_quantize_per_tensor_affine(x, -0.5, 0, 0, 255); },
              {"scale > 0", "-0.5"});
  check_error([&] { q::fake_quantize_per_tensor_affine(x, 0.1, 300, 0, 255); },
              {"zero_point 300", "[0, 255]"});
  check_error([&] { q::fake_quantize_per_tensor_affine(x.to(kInt64), 0.1, 0, 0, 255); },
              {"float32 or float64", "int64"});
  check_error([] { q::MinMaxObserver().calculate_qparams(); },
              {"MinMaxObserver", "before any data"});
  check_error([] { q::PerChannelMinMaxObserver().calculate_qparams(); }, {"before any data"});
  check_error([] { q::HistogramObserver().calculate_qparams(); }, {"before any data"});
  check_error([] { q::PerChannelMinMaxObserver({.qscheme = q::QScheme::PerChannelAffine,
                                                .ch_axis = 3})(randn({2, 2})); },
              {"ch_axis 3", "[2, 2]"});
  {
    auto model = std::make_shared<q::QuantWrapper>(small_cnn());
    q::prepare(*model);
    check_error([&] { q::convert(*model); }, {"never calibrated", "quant"});
  }
  {
    auto net = small_cnn();
    net->eval();
    check_error([&] { q::fuse_modules(*net, {{"0", "2", "1"}}); },
                {"cannot fuse", "'0' (Conv2d)", "'2' (ReLU)", "'1' (BatchNorm2d)",
                 "expected Conv2d, BatchNorm2d"});
    check_error([&] { q::fuse_modules(*net, {{"3", "4"}}); }, {"cannot fuse", "MaxPool2d"});
    check_error([&] { q::fuse_modules(*net, {{"0"}}); }, {"2 or 3 modules"});
    net->train();
    check_error([&] { q::fuse_modules(*net, {{"0", "1", "2"}}); }, {"eval mode", "fuse_modules_qat"});
  }
  {
    auto model = std::make_shared<q::QuantWrapper>(small_cnn());
    q::prepare(*model);
    check_error([&] { q::prepare(*model); }, {"already prepared"});
  }
  check_error([] { q::PACTFakeQuantize(4, -1.0); }, {"init_alpha > 0"});
}

} // TEST_SUITE
