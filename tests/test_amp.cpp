// amp: mixed precision (tb/amp.h). The autocast scope (state, nesting, exceptions, which op runs
// in which dtype, against PyTorch 1.13's CPU autocast in tests/fixtures/amp_autocast.safetensors),
// the bfloat16/float16 GEMM and convolution kernels against the reference loops and against
// float32 on the same inputs, gradients through casts to float32 master weights, and GradScaler:
// its scale trajectory against tools/make_amp_fixtures.py (PyTorch's _amp_update_scale_ rule),
// skipped steps on injected inf/NaN, PyTorch's misuse errors, checkpoints, static scaling, and the
// float16 underflow that loss scaling prevents. The half elementwise kernels and conversions:
// tests/test_amp_kernels.cpp (same suite); half batch norm: tests/test_batchnorm.cpp.
#include "gradcheck.h"

#include <tb/amp.h>

#include <cmath>
#include <map>
#include <set>
#include <thread>

#include <tb/models.h>

#include "kernels/conv.h"
#include "kernels/matmul.h"

using namespace tb;
using tbtest::check_error;
using tbtest::fixture_file;
using tbtest::from_half_bits;
using tbtest::to_half_bits;

namespace {

std::vector<float> normal_floats(size_t n, uint64_t seed) {
  Generator g(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = (float)g.next_normal();
  return v;
}
// The value of 1 ulp of a half dtype at magnitude |v| (relative 2^-7 bfloat16, 2^-10 float16).
double ulp(DType t, double v) {
  int e;
  std::frexp(std::max(std::abs(v), 1e-30), &e); // v = m 2^e, m in [0.5, 1)
  return std::ldexp(1.0, e - 1 - (t == kBFloat16 ? 7 : 10));
}

// Loss scaling on one float32 parameter: grads are set by hand (finite, inf or NaN).
struct OneParam {
  Tensor p = full({4}, 1.0).requires_grad_(true);
  optim::SGD opt{std::vector<Tensor>{p}, optim::SGDOptions{.lr = 0.1}};
  // One iteration: scale(loss).backward(), optionally poison the gradient, step, update. The
  // gradient is 0.125 per element (scaled: scale / 8, finite up to float32's largest scale).
  bool iterate(amp::GradScaler& s, double poison = 0.0) {
    Tensor loss = sum(mul(p, 0.125));
    opt.zero_grad();
    s.scale(loss).backward();
    if (poison != 0.0) {
      no_grad g;
      p.grad().narrow(0, 1, 1).fill_(poison);
    }
    bool stepped = s.step(opt);
    s.update();
    return stepped;
  }
};

} // namespace

TEST_SUITE("amp") {

// ---- autocast state ---------------------------------------------------------------------------

TEST_CASE("autocast: sets the thread-local state, nests, and restores it on exit") {
  CHECK_FALSE(amp::is_autocast_enabled());
  {
    amp::autocast outer({.dtype = kBFloat16});
    CHECK(amp::is_autocast_enabled());
    CHECK(amp::get_autocast_dtype() == kBFloat16);
    {
      amp::autocast inner({.dtype = kFloat16});
      CHECK(amp::get_autocast_dtype() == kFloat16);
      {
        amp::autocast off({.enabled = false});
        CHECK_FALSE(amp::is_autocast_enabled());
        Tensor y = linear(randn({2, 3}), randn({4, 3}));
        CHECK(y.dtype() == kFloat32);
      }
      CHECK(amp::is_autocast_enabled());
      CHECK(amp::get_autocast_dtype() == kFloat16);
    }
    CHECK(amp::get_autocast_dtype() == kBFloat16);
    CHECK_FALSE(amp::is_autocast_enabled(DeviceType::CUDA)); // per device type
  }
  CHECK_FALSE(amp::is_autocast_enabled());
}

TEST_CASE("autocast: an exception inside the scope restores the previous state") {
  try {
    amp::autocast guard({.dtype = kBFloat16});
    conv2d(randn({1, 3, 4, 4}), randn({2, 4, 3, 3}), Tensor(), {}); // channel mismatch: throws
    FAIL("expected tb::Error");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("conv2d") != std::string::npos);
  }
  CHECK_FALSE(amp::is_autocast_enabled());
  CHECK(linear(randn({2, 3}), randn({4, 3})).dtype() == kFloat32);
}

TEST_CASE("autocast: is per thread") {
  amp::autocast guard({.dtype = kBFloat16});
  bool other_thread_enabled = true;
  std::thread t([&] { other_thread_enabled = amp::is_autocast_enabled(); });
  t.join();
  CHECK_FALSE(other_thread_enabled);
}

TEST_CASE("autocast: a dtype the device cannot compute is a tb::Error") {
  check_error([] { amp::autocast g({.dtype = kFloat64}); }, {"autocast", "float64", "bfloat16"});
  check_error([] { amp::autocast g({.dtype = kInt8}); }, {"autocast", "int8"});
  check_error([] { amp::autocast g({.dtype = kFloat32}); }, {"autocast", "float32"});
  // no half-precision CUDA kernels yet: float16 (and bfloat16) autocast on CUDA is refused
  check_error([] { amp::autocast g({.dtype = kFloat16, .device = DeviceType::CUDA}); },
              {"autocast", "cuda", "float16"});
  CHECK_FALSE(amp::is_autocast_enabled());
  // a disabled scope never computes, so any dtype is accepted (as PyTorch's enabled=False)
  { amp::autocast g({.dtype = kFloat64, .enabled = false}); }
}

// ---- which op runs in which dtype -------------------------------------------------------------

TEST_CASE("autocast: output dtypes equal PyTorch 1.13's CPU autocast (bfloat16), with tb's "
          "documented float32 list") {
  const TensorDict& fx = fixture_file("amp_autocast.safetensors");
  auto torch_dtype = [&](const std::string& op) {
    int64_t c = (int64_t)fx.at("dtypes." + op).item();
    return c == 0 ? kFloat32 : c == 1 ? kFloat64 : c == 2 ? kFloat16 : kBFloat16;
  };
  Tensor x = randn({4, 6}), w = randn({3, 6}), img = randn({2, 3, 6, 6}), cw = randn({4, 3, 3, 3});
  Tensor tgt = from_vector(std::vector<int64_t>{0, 1, 2, 0}, {4});
  Tensor b = x.to(kBFloat16), bimg = img.to(kBFloat16);
  std::map<std::string, Tensor> outs;
  {
    amp::autocast guard({.dtype = kBFloat16});
    outs["conv2d"] = conv2d(img, cw, Tensor(), {.pad_h = 1, .pad_w = 1});
    outs["linear"] = linear(x, w);
    outs["matmul"] = matmul(x, w.t());
    outs["linear_float64"] = linear(x.to(kFloat64), w.to(kFloat64));
    outs["cross_entropy_bf16"] = cross_entropy(linear(x, w), tgt);
    outs["nll_loss_bf16"] = nll_loss(b.narrow(1, 0, 3), tgt);
    outs["mse_loss_bf16"] = mse_loss(b, mul(b, 2.0));
    outs["kl_div_bf16"] = kl_div(b, exp(b));
    outs["relu_bf16"] = relu(b);
    outs["max_pool2d_bf16"] = max_pool2d(bimg, {.kernel_h = 2, .kernel_w = 2});
    outs["avg_pool2d_bf16"] = avg_pool2d(bimg, {.kernel_h = 2, .kernel_w = 2});
    outs["batch_norm_bf16"] = batch_norm(bimg, zeros({3}), ones({3}), ones({3}), zeros({3}),
                                         {.training = true});
    outs["add_bf16_float32"] = add(b, x);
    outs["add_bf16_bf16"] = add(b, b);
    outs["softmax_bf16"] = softmax(b, 1);
    outs["log_softmax_bf16"] = log_softmax(b, 1);
    outs["sum_bf16"] = sum(b);
    outs["mean_bf16"] = mean(b);
  }
  // PyTorch's CPU list keeps softmax, log_softmax and sum in the input's dtype; tb follows the
  // CUDA list for them (float32), see docs/mixed_precision.md. batch_norm is on no list, as in
  // PyTorch: bfloat16 in, bfloat16 out (float32 statistics inside).
  const std::set<std::string> cuda_list = {"softmax_bf16", "log_softmax_bf16", "sum_bf16"};
  for (const auto& [op, y] : outs) {
    INFO(op);
    if (cuda_list.count(op)) {
      CHECK(torch_dtype(op) == kBFloat16); // what the fixture recorded for the CPU list
      CHECK(y.dtype() == kFloat32);
    } else {
      CHECK(y.dtype() == torch_dtype(op));
    }
  }
  CHECK(outs.size() == 18);
}

TEST_CASE("autocast: conv2d and linear equal PyTorch's bfloat16 autocast, and the float32 master "
          "weights get float32 gradients") {
  const TensorDict& fx = fixture_file("amp_autocast.safetensors");
  for (std::string prefix : {"conv", "linear"}) {
    INFO(prefix);
    Tensor x = fx.at(prefix + ".x").clone().requires_grad_(true);
    Tensor w = fx.at(prefix + ".weight").clone().requires_grad_(true);
    Tensor b = fx.at(prefix + ".bias").clone().requires_grad_(true);
    Tensor y;
    {
      amp::autocast guard({.dtype = kBFloat16});
      y = prefix == "conv" ? conv2d(x, w, b, {.pad_h = 1, .pad_w = 1}) : linear(x, w, b);
    }
    REQUIRE(y.dtype() == kBFloat16);
    sum(mul(y.to(kFloat32), fx.at(prefix + ".R"))).backward();
    // Both round one float32 sum of exact bfloat16 products; the summation orders differ, so the
    // rounded results may differ by one bfloat16 ulp.
    auto got = y.to_vector(), want = fx.at(prefix + ".y").to_vector();
    double worst = 0;
    for (size_t i = 0; i < got.size(); i++)
      worst = std::max(worst, std::abs(got[i] - want[i]) / ulp(kBFloat16, want[i]));
    CHECK(worst <= 1.0);
    for (auto [t, name] : {std::pair{x, "dx"}, {w, "dw"}, {b, "db"}}) {
      INFO(name);
      REQUIRE(t.grad().defined());
      CHECK(t.grad().dtype() == kFloat32);
      // gradients are bfloat16 inside (dy, dx, dw rounded once each): 1e-2 relative
      Tensor want_g = fx.at(prefix + "." + name);
      double scale = 1.0;
      for (double v : want_g.to_vector()) scale = std::max(scale, std::abs(v));
      CHECK(tbtest::max_abs_diff(t.grad(), want_g) <= 1e-2 * scale);
    }
  }
}

TEST_CASE("autocast: float64 is never cast; float32 ops cast half inputs up") {
  Tensor x64 = randn({3, 4}, kFloat64), w64 = randn({2, 4}, kFloat64);
  amp::autocast guard({.dtype = kFloat16});
  CHECK(linear(x64, w64).dtype() == kFloat64);
  CHECK(softmax(x64, 1).dtype() == kFloat64);
  Tensor h = linear(randn({3, 4}), randn({2, 4}));
  CHECK(h.dtype() == kFloat16);
  CHECK(cross_entropy(h, from_vector(std::vector<int64_t>{0, 1, 1}, {3})).dtype() == kFloat32);
  CHECK(sum(h).dtype() == kFloat32);
  CHECK(relu(h).dtype() == kFloat16); // not on a list: runs in its input's dtype
  // mixed float32 master weight and float64 input: the weight is cast, the input is not, and
  // the op refuses the mix (as PyTorch does)
  check_error([&] { linear(x64, randn({2, 4})); }, {"linear", "float64", "float16"});
}

TEST_CASE("autocast: a training step of a small CNN in bfloat16 leaves every gradient float32") {
  auto net = tbtest::small_net();
  optim::SGD opt(net->parameters(), optim::SGDOptions{.lr = 0.1});
  Tensor x = randn({4, 2, 3, 3}), y = from_vector(std::vector<int64_t>{0, 1, 2, 3}, {4});
  Tensor logits, loss;
  {
    amp::autocast guard({.dtype = kBFloat16});
    logits = (*net)(x);
    loss = cross_entropy(logits, y);
  }
  CHECK(logits.dtype() == kBFloat16);
  CHECK(loss.dtype() == kFloat32);
  {
    amp::autocast guard({.dtype = kBFloat16}); // conv, batch_norm and relu all in bfloat16
    nn::Module& features = net->get_submodule("features");
    CHECK(features.get_submodule("0")(x).dtype() == kBFloat16);
    CHECK(features(x).dtype() == kBFloat16);
  }
  loss.backward();
  for (auto& [name, p] : net->named_parameters()) {
    INFO(name);
    CHECK(p.dtype() == kFloat32);
    REQUIRE(p.grad().defined());
    CHECK(p.grad().dtype() == kFloat32);
  }
  // the same step in float32: the bfloat16 gradients agree to bfloat16 precision
  auto ref = tbtest::small_net();
  ref->load_state_dict(net->state_dict());
  cross_entropy((*ref)(x), y).backward();
  // Relative to the largest gradient of the net: the conv bias in front of batch norm has a zero
  // gradient in exact arithmetic, so only bfloat16 rounding noise is left there.
  auto pa = net->named_parameters(), pb = ref->named_parameters();
  double scale = 0;
  for (auto& [name, p] : pb)
    for (double v : p.grad().to_vector()) scale = std::max(scale, std::abs(v));
  for (size_t i = 0; i < pa.size(); i++) {
    INFO(pa[i].first);
    CHECK(tbtest::max_abs_diff(pa[i].second.grad(), pb[i].second.grad()) <= 2e-2 * scale);
  }
}

// ---- casts and their gradients ----------------------------------------------------------------

TEST_CASE("to(dtype) is differentiable: the gradient comes back in the source dtype") {
  for (DType half : {kBFloat16, kFloat16}) {
    Tensor x = from_vector(std::vector<float>{1.0f, -2.5f, 3.25f}, {3}).requires_grad_(true);
    Tensor h = x.to(half);
    CHECK(h.dtype() == half);
    Tensor g = from_vector(std::vector<float>{0.5f, 0.125f, -4.0f}, {3}).to(half);
    sum(mul(h, g)).backward();
    REQUIRE(x.grad().defined());
    CHECK(x.grad().dtype() == kFloat32);
    CHECK(x.grad().to_vector() == std::vector<double>{0.5, 0.125, -4.0});
  }
  // float64 -> float32 -> float64 round trip: a gradcheck on values exact in float32
  CHECK(tbtest::gradcheck([](auto& v) { return mul(v[0].to(kFloat32).to(kFloat64), 3.0); },
                          {from_vector(std::vector<double>{0.5, -1.25, 2.0}, {3})}, 1.0 / 1024,
                          1e-7, 1e-7)); // x +- 2^-10 is exact in float32
}

// ---- kernels: bfloat16 / float16 vs the reference and vs float32 -------------------------------

TEST_CASE("casts to and from bfloat16 / float16: the fast copy kernel rounds bit for bit as the "
          "reference (ties, subnormals, overflow, inf, NaN), in any layout") {
  std::vector<float> v = {0.0f, -0.0f, 1.0f, 1.0f + 1.0f / 256, 1.0f + 3.0f / 256,
                          1.0f + 1.0f / 2048, 1.0f + 3.0f / 2048, 65504.0f, 65520.0f, 70000.0f,
                          -1e-8f, 3e-8f, 6e-8f, 1e-5f, 3.4e38f, -3.4e38f, 1e-40f, INFINITY,
                          -INFINITY, NAN};
  Generator g(7);
  for (int i = 0; i < 4000; i++) // wide range of magnitudes
    v.push_back((float)(g.next_normal() * std::exp2((double)(i % 80) - 40.0)));
  Tensor x = from_vector(v, {(int64_t)v.size()});
  // channels-last 4-D too: the op layer orders the dims by memory before the kernel sees them
  Tensor x4 = from_vector(std::vector<float>(v.begin(), v.begin() + 4000), {4, 10, 10, 10})
                  .contiguous_channels_last();
  for (DType t : {kBFloat16, kFloat16})
    for (const Tensor& src : {x, x4}) {
      INFO(dtype_name(t) << " " << shape_str(src.shape()));
      Tensor fast = tbtest::with_kernels(CpuKernels::Fast, [&] { return src.to(t); });
      Tensor ref = tbtest::with_kernels(CpuKernels::Reference, [&] { return src.to(t); });
      CHECK(fast.strides() == src.strides());
      auto a = fast.contiguous(), b = ref.contiguous();
      const uint16_t* pa = a.data<uint16_t>();
      const uint16_t* pb = b.data<uint16_t>();
      int64_t differ = 0, nan_mismatch = 0;
      for (int64_t i = 0; i < a.numel(); i++) {
        bool na = std::isnan(t == kBFloat16 ? bfloat16_to_float(pa[i]) : half_to_float(pa[i]));
        bool nb = std::isnan(t == kBFloat16 ? bfloat16_to_float(pb[i]) : half_to_float(pb[i]));
        if (na || nb) nan_mismatch += na != nb;
        else differ += pa[i] != pb[i];
      }
      CHECK(differ == 0);
      CHECK(nan_mismatch == 0);
      // and back to float32: exact
      Tensor back_fast =
          tbtest::with_kernels(CpuKernels::Fast, [&] { return fast.to(kFloat32); });
      Tensor back_ref =
          tbtest::with_kernels(CpuKernels::Reference, [&] { return ref.to(kFloat32); });
      auto fa = back_fast.to_vector(), fb = back_ref.to_vector();
      int64_t back_differ = 0;
      for (size_t i = 0; i < fa.size(); i++)
        back_differ += !(fa[i] == fb[i] || (std::isnan(fa[i]) && std::isnan(fb[i])));
      CHECK(back_differ == 0);
    }
}

TEST_CASE("half GEMM kernels: fast = reference within one ulp, alpha, beta, batch broadcast, "
          "transposes and k = 0") {
  using kernels::MatmulKernels;
  struct G {
    bool ta, tb;
    int64_t m, n, k, batch;
    bool bcast_b;
    double alpha, beta;
  };
  for (DType t : {kBFloat16, kFloat16})
    for (G g : {G{false, false, 7, 9, 33, 1, false, 1.0, 0.0},
                G{true, false, 5, 4, 17, 3, true, 1.0, 1.0},
                G{false, true, 16, 16, 64, 2, false, 0.5, 0.25},
                G{true, true, 3, 130, 11, 1, false, 1.0, 0.0},
                G{false, false, 4, 5, 0, 2, false, 1.0, 0.5}}) {
      INFO(dtype_name(t) << " m=" << g.m << " n=" << g.n << " k=" << g.k << " batch=" << g.batch);
      int64_t lda = g.ta ? g.m : g.k, ldb = g.tb ? g.k : g.n, ldc = g.n;
      int64_t sa = g.m * g.k, sb = g.bcast_b ? 0 : g.k * g.n, sc = g.m * g.n;
      auto a = to_half_bits(normal_floats(sa * g.batch + 1, 1), t);
      auto b = to_half_bits(normal_floats(g.k * g.n * g.batch + 1, 2), t);
      auto c0 = to_half_bits(normal_floats(sc * g.batch, 3), t);
      auto run = [&](const MatmulKernels& K) {
        auto c = c0;
        K.gemm(t, g.ta, g.tb, g.m, g.n, g.k, g.alpha, a.data(), lda, sa, b.data(), ldb, sb, g.beta,
               c.data(), ldc, sc, g.batch);
        return from_half_bits(c, t);
      };
      auto fast = run(MatmulKernels::cpu), ref = run(MatmulKernels::ref);
      // float32 on the same (exact) half inputs, in double: the value both should round
      auto af = from_half_bits(a, t), bf = from_half_bits(b, t), cf = from_half_bits(c0, t);
      double worst_fast = 0, worst_ref = 0;
      for (int64_t p = 0; p < g.batch; p++)
        for (int64_t i = 0; i < g.m; i++)
          for (int64_t j = 0; j < g.n; j++) {
            double acc = 0;
            for (int64_t l = 0; l < g.k; l++) {
              double av = g.ta ? af[p * sa + l * lda + i] : af[p * sa + i * lda + l];
              double bv = g.tb ? bf[p * sb + j * ldb + l] : bf[p * sb + l * ldb + j];
              acc += av * bv;
            }
            int64_t at = p * sc + i * ldc + j;
            double want = g.alpha * acc + (g.beta == 0 ? 0.0 : g.beta * cf[at]);
            // measured in ulps of the output, with an absolute floor for results near zero
            // (cancellation: float32 accumulation differs from double by ~1e-7 * sum |terms|)
            double u = std::max(ulp(t, want), ulp(t, 1.0) * 0.25);
            worst_fast = std::max(worst_fast, std::abs(fast[at] - want) / u);
            worst_ref = std::max(worst_ref, std::abs(ref[at] - want) / u);
          }
      CHECK(worst_ref <= 0.5 + 1e-9); // rounded once, to nearest
      CHECK(worst_fast <= 1.0);       // float32 accumulation, then rounded once
    }
}

TEST_CASE("half conv2d kernels: fast = reference, forward, backward-data and backward-weights") {
  using kernels::Conv2dKernels;
  using kernels::Conv2dGeom;
  for (DType t : {kBFloat16, kFloat16})
    for (Conv2dGeom g : {Conv2dGeom{2, 8, 9, 9, 16, 3, 3, 9, 9, 1, 1, 1, 1, 1, 1, 1},
                         Conv2dGeom{2, 8, 9, 9, 8, 3, 3, 5, 5, 2, 2, 1, 1, 1, 1, 8},
                         Conv2dGeom{1, 3, 12, 12, 5, 5, 5, 8, 8, 1, 1, 0, 0, 1, 1, 1},
                         // pointwise: bfloat16's weight gradient is one AMX GEMM (+ db sums)
                         Conv2dGeom{2, 48, 5, 5, 40, 1, 1, 5, 5, 1, 1, 0, 0, 1, 1, 1},
                         // MobileNetV2's last depthwise layer at 2x2 pixels: oneDNN 2.6 has no
                         // fast bfloat16 weight gradient for it, so it runs through float32
                         Conv2dGeom{4, 960, 2, 2, 960, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 960}}) {
      INFO(dtype_name(t) << " C=" << g.C << " O=" << g.O << " groups=" << g.groups);
      auto xs = kernels::nhwc_strides(g.C, g.H, g.W), ys = kernels::nhwc_strides(g.O, g.OH, g.OW);
      int64_t nx = g.N * g.C * g.H * g.W, nw = g.O * (g.C / g.groups) * g.KH * g.KW;
      int64_t ny = g.N * g.O * g.OH * g.OW;
      auto x = to_half_bits(normal_floats(nx, 1), t), w = to_half_bits(normal_floats(nw, 2), t);
      auto b = to_half_bits(normal_floats(g.O, 3), t), dy = to_half_bits(normal_floats(ny, 4), t);
      auto compare = [&](const std::vector<uint16_t>& f, const std::vector<uint16_t>& r,
                         const char* what) {
        auto ff = from_half_bits(f, t), rf = from_half_bits(r, t);
        double worst = 0;
        for (size_t i = 0; i < ff.size(); i++)
          worst = std::max(worst, std::abs(ff[i] - rf[i]) /
                                      std::max(ulp(t, rf[i]), ulp(t, 1.0) * 0.25));
        INFO(what);
        CHECK(worst <= 1.0);
      };
      std::vector<uint16_t> yf(ny), yr(ny), dxf(nx), dxr(nx), dwf(nw), dwr(nw), dbf(g.O), dbr(g.O);
      Conv2dKernels::cpu.forward(t, g, x.data(), xs, w.data(), b.data(), yf.data(), ys);
      Conv2dKernels::ref.forward(t, g, x.data(), xs, w.data(), b.data(), yr.data(), ys);
      compare(yf, yr, "forward");
      Conv2dKernels::cpu.backward_data(t, g, dy.data(), ys, w.data(), dxf.data(), xs);
      Conv2dKernels::ref.backward_data(t, g, dy.data(), ys, w.data(), dxr.data(), xs);
      compare(dxf, dxr, "backward_data");
      Conv2dKernels::cpu.backward_weights(t, g, x.data(), xs, dy.data(), ys, dwf.data(),
                                          dbf.data());
      Conv2dKernels::ref.backward_weights(t, g, x.data(), xs, dy.data(), ys, dwr.data(),
                                          dbr.data());
      compare(dwf, dwr, "backward_weights dw");
      compare(dbf, dbr, "backward_weights db");
    }
}

TEST_CASE("autocast: MobileNetV2's conv -> batch_norm -> relu6 -> conv and residual adds run in "
          "bfloat16 with no cast between ops; only float32 parameters are cast") {
  manual_seed(3);
  auto net = models::create("mobilenet_v2", {.num_classes = 10, .small_input = true,
                                             .in_channels = 1, .width_mult = 0.25});
  Tensor x = randn({2, 1, 28, 28});
  Tensor logits;
  {
    amp::autocast guard({.dtype = kBFloat16});
    logits = (*net)(x);
  }
  REQUIRE(logits.dtype() == kBFloat16);
  // Walk the graph: every "to_dtype" node (a cast) must read a leaf (a float32 parameter, through
  // its AccumulateGrad node), never an activation; and every op on the way is a bfloat16 one.
  std::set<Node*> seen;
  std::vector<std::shared_ptr<Node>> todo{logits.grad_fn()};
  int64_t leaf_casts = 0, ops = 0;
  std::vector<std::pair<Node*, Node*>> other_casts; // (cast, the node it reads)
  std::map<std::string, int64_t> names;
  while (!todo.empty()) {
    auto node = todo.back();
    todo.pop_back();
    if (!node || !seen.insert(node.get()).second) continue;
    ops++;
    names[node->name]++;
    if (node->name == "to_dtype") {
      REQUIRE(node->next.size() == 1);
      Node* from = node->next[0].node.get();
      if (from && from->name == "AccumulateGrad") leaf_casts++;
      else other_casts.push_back({node.get(), from});
    }
    for (const Edge& e : node->next) todo.push_back(e.node);
  }
  int64_t conv_linear_params = 0;
  for (auto& [name, p] : net->named_parameters())
    conv_linear_params += p.dim() >= 2 || name == "classifier.1.bias";
  INFO(ops << " nodes in the graph");
  CHECK(names["conv2d"] == 52);
  CHECK(names["batch_norm"] == 52);
  CHECK(names["relu6"] == 35);
  CHECK(names["add"] == 11); // the residual adds (at width 0.25 the first block has one too)
  CHECK(leaf_casts == conv_linear_params); // 52 conv weights, the classifier's weight and bias
  // The only other casts are adaptive_avg_pool2d's own (its kernel computes half inputs in
  // float32; the last 1280-channel 2x2 map, small): one into it, one out of it.
  REQUIRE(other_casts.size() == 2);
  int64_t around_pool = 0;
  for (auto [cast, from] : other_casts)
    for (Node* n : seen)
      if (n->name == "adaptive_avg_pool2d")
        around_pool += from == n || (n->next.size() == 1 && n->next[0].node.get() == cast);
  CHECK(around_pool == 2);
  sum(logits.to(kFloat32)).backward();
  for (auto& [name, p] : net->named_parameters()) {
    INFO(name);
    REQUIRE(p.grad().defined());
    CHECK(p.grad().dtype() == kFloat32);
  }
}

// ---- GradScaler -------------------------------------------------------------------------------

TEST_CASE("GradScaler: the scale trajectory equals PyTorch's _amp_update_scale_ rule "
          "(fixture), steps are skipped exactly on injected inf/NaN") {
  const TensorDict& fx = fixture_file("amp_scaler.safetensors");
  for (std::string c : {"interval3", "odd_factors", "overflow_guard", "backoff_run"}) {
    INFO(c);
    auto o = fx.at(c + ".options").to_vector();
    auto infs = fx.at(c + ".found_inf").to_int_vector();
    auto scales = fx.at(c + ".scale").to_vector();
    auto trackers = fx.at(c + ".tracker").to_int_vector();
    amp::GradScaler s({.init_scale = o[0], .growth_factor = o[1], .backoff_factor = o[2],
                       .growth_interval = (int64_t)o[3]});
    OneParam net;
    for (size_t k = 0; k < infs.size(); k++) {
      INFO("step " << k);
      std::vector<double> before = net.p.to_vector();
      double poison = infs[k] ? (k % 2 ? NAN : INFINITY) : 0.0;
      bool stepped = net.iterate(s, poison);
      CHECK(stepped == !infs[k]);
      CHECK(s.last_step_skipped() == (bool)infs[k]);
      if (infs[k]) CHECK(net.p.to_vector() == before); // the optimizer did not run
      else CHECK(net.p.to_vector()[0] == doctest::Approx(before[0] - 0.1 * 0.125));
      CHECK(s.get_scale() == scales[k]); // float32 values, bit for bit
      CHECK(s.growth_tracker() == trackers[k]);
    }
  }
}

TEST_CASE("GradScaler: unscale_ divides the gradients by the scale; gradient clipping between "
          "unscale_ and step sees true gradients") {
  amp::GradScaler s({.init_scale = 1024.0});
  OneParam net;
  Tensor loss = sum(mul(net.p, 2.0));
  Tensor scaled = s.scale(loss);
  CHECK(scaled.item() == doctest::Approx(loss.item() * 1024.0));
  scaled.backward();
  CHECK(net.p.grad().to_vector()[0] == 2048.0);
  s.unscale_(net.opt);
  CHECK(net.p.grad().to_vector()[0] == 2.0);
  CHECK(s.step(net.opt)); // uses the unscaled gradients, no second unscale
  CHECK(net.p.to_vector()[0] == doctest::Approx(1.0 - 0.2));
  s.update();
  CHECK(s.get_scale() == 1024.0);
  CHECK(s.growth_tracker() == 1);
  // a float16 loss is promoted to float32 by the scale, as PyTorch's 1-element float32 tensor
  CHECK(s.scale(full({}, 1.0, kFloat16)).dtype() == kFloat32);
}

TEST_CASE("GradScaler: misuse raises tb::Error with PyTorch's messages") {
  OneParam net;
  {
    amp::GradScaler s;
    check_error([&] { s.unscale_(net.opt); }, {"unscale_", "_scale is None"});
    check_error([&] { s.step(net.opt); }, {"step", "_scale is None"});
    check_error([&] { s.update(); }, {"update", "_scale is None"});
  }
  {
    amp::GradScaler s;
    s.scale(sum(net.p)).backward();
    s.unscale_(net.opt);
    check_error([&] { s.unscale_(net.opt); },
                {"unscale_() has already been called on this optimizer since the last update()"});
    s.step(net.opt);
    check_error([&] { s.step(net.opt); },
                {"step() has already been called since the last update()"});
    check_error([&] { s.unscale_(net.opt); }, {"unscale_() is being called after step()"});
    s.update(); // back to READY: the same calls are fine again
    net.opt.zero_grad();
    s.scale(sum(net.p)).backward();
    s.unscale_(net.opt);
    s.step(net.opt);
    s.update();
  }
  {
    amp::GradScaler s;
    s.scale(sum(net.p)); // no backward, no step: no inf checks were recorded
    check_error([&] { s.update(); }, {"no inf checks were recorded prior to update"});
    net.opt.zero_grad(true);
    check_error([&] { s.step(net.opt); }, {"no inf checks were recorded for this optimizer"});
  }
  {
    // float16 gradients (a float16 parameter) cannot be unscaled, as PyTorch refuses them
    Tensor h = full({3}, 1.0, kFloat16).requires_grad_(true);
    optim::SGD opt({h}, 0.1);
    amp::GradScaler s;
    s.scale(sum(h)).backward();
    check_error([&] { s.unscale_(opt); }, {"unscale FP16 gradients"});
  }
  check_error([] { amp::GradScaler s({.growth_factor = 1.0}); }, {"growth factor", "> 1.0"});
  check_error([] { amp::GradScaler s({.backoff_factor = 1.5}); }, {"backoff factor", "< 1.0"});
  check_error([] { amp::GradScaler s({.growth_interval = 0}); }, {"growth_interval"});
  check_error([] { amp::GradScaler s({.init_scale = -1}); }, {"init_scale"});
}

TEST_CASE("GradScaler: state_dict round trip, static scaling, disabled passthrough") {
  amp::GradScaler a({.init_scale = 256.0, .growth_interval = 3});
  OneParam n1;
  n1.iterate(a);
  n1.iterate(a, INFINITY);
  n1.iterate(a);
  TensorDict d = a.state_dict();
  CHECK(d.keys() == std::vector<std::string>{"scale", "growth_factor", "backoff_factor",
                                             "growth_interval", "_growth_tracker"});
  CHECK(d.at("scale").item() == 128.0);
  amp::GradScaler b;
  b.load_state_dict(d);
  CHECK(b.get_scale() == 128.0);
  CHECK(b.growth_tracker() == 1);
  CHECK(b.options().growth_interval == 3);
  OneParam n2;
  n2.iterate(b);
  n2.iterate(b);
  CHECK(b.get_scale() == 256.0); // grew after 3 clean steps in all, as `a` would have

  amp::GradScaler fixed({.init_scale = 8.0, .growth_interval = 1, .dynamic = false});
  OneParam n3;
  CHECK(n3.iterate(fixed));
  CHECK_FALSE(n3.iterate(fixed, NAN)); // static scaling still skips a non-finite step
  CHECK(fixed.get_scale() == 8.0);

  amp::GradScaler off({.enabled = false});
  OneParam n4;
  Tensor loss = sum(mul(n4.p, 2.0));
  CHECK(off.scale(loss).is_same(loss));
  CHECK(off.get_scale() == 1.0);
  CHECK(off.state_dict().empty());
  loss.backward();
  CHECK(off.step(n4.opt));
  off.update();
  CHECK(n4.p.to_vector()[0] == doctest::Approx(0.8));
  check_error([&] { b.load_state_dict(off.state_dict()); }, {"state dict is empty"});
}

// ---- why float16 needs loss scaling -----------------------------------------------------------

TEST_CASE("float16: gradients underflow to zero without loss scaling and not with it") {
  // A linear layer fitted almost exactly: the loss gradient per output element is ~1e-8, below
  // float16's smallest subnormal (6e-8), so the float16 gradient of the layer's output is zero and
  // so is every weight gradient. Scaled by 65536 the same gradients are ~1e-3: representable.
  manual_seed(3);
  Tensor x = randn({256, 64});
  Tensor w = mul(randn({10, 64}), 0.1).requires_grad_(true);
  Tensor target;
  {
    no_grad g;
    amp::autocast guard({.dtype = kFloat16}); // the float16 output itself, plus 1e-5 noise
    target = add(linear(x, w).to(kFloat32), mul(randn({256, 10}), 1e-5));
  }
  auto zero_grads = [&](double scale) {
    w.set_grad(Tensor());
    Tensor loss;
    {
      amp::autocast guard({.dtype = kFloat16});
      loss = mse_loss(linear(x, w), target);
    }
    mul(loss, scale).backward();
    int64_t zeros = 0;
    for (double v : w.grad().to_vector()) zeros += v == 0.0;
    return zeros;
  };
  int64_t unscaled = zero_grads(1.0), scaled = zero_grads(65536.0);
  MESSAGE("float16 autocast, linear 64->10 on 256 samples: " << unscaled << " of " << w.numel()
          << " weight gradients are zero without loss scaling, " << scaled << " with scale 65536");
  CHECK(unscaled > w.numel() * 9 / 10);
  CHECK(scaled == 0);
  // bfloat16 has float32's exponent range: no underflow at this size without scaling
  w.set_grad(Tensor());
  {
    amp::autocast guard({.dtype = kBFloat16});
    mse_loss(linear(x, w), target).backward();
  }
  int64_t bf16_zeros = 0;
  for (double v : w.grad().to_vector()) bf16_zeros += v == 0.0;
  CHECK(bf16_zeros == 0);
}

} // TEST_SUITE
