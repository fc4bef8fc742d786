// conv2d: hand-computed values, float64 gradient checks (the reference loops), the oneDNN kernel
// against the reference on random geometries and layouts (forward + backward), the primitive
// cache, and bad input.
#include "gradcheck.h"

#include "kernels/cpu/onednn_common.h"

using namespace tb;
using tbtest::check_error;
using tbtest::gradcheck;
using tbtest::max_abs_diff;

namespace {

Conv2dParams params(int64_t stride, int64_t pad, int64_t dilation, int64_t groups) {
  Conv2dParams p;
  p.stride_h = p.stride_w = stride;
  p.pad_h = p.pad_w = pad;
  p.dilation_h = p.dilation_w = dilation;
  p.groups = groups;
  return p;
}

double max_abs(const Tensor& t) {
  double m = 0;
  for (double v : t.to_vector()) m = std::max(m, std::abs(v));
  return m;
}

// Runs conv2d forward + backward (with the given output gradient) on fresh leaf copies under the
// given kernel set; returns {y, dx, dw, db}.
std::vector<Tensor> conv_run(CpuKernels k, const Tensor& x, const Tensor& w, const Tensor& b,
                             const Conv2dParams& p, const Tensor& dy) {
  CpuKernels prev = cpu_kernels();
  set_cpu_kernels(k);
  // Keep x's layout (clone() may not): copy into a tensor with x's strides.
  Tensor xl = empty_strided(x.shape(), x.strides(), {x.dtype()});
  xl.copy_(x);
  xl.requires_grad_(true);
  Tensor wl = w.detach().clone().requires_grad_(true);
  Tensor bl = b.defined() ? b.detach().clone().requires_grad_(true) : Tensor();
  Tensor y = conv2d(xl, wl, bl, p);
  y.backward(dy);
  set_cpu_kernels(prev);
  return {y, xl.grad(), wl.grad(), bl.defined() ? bl.grad() : Tensor()};
}

} // namespace

TEST_SUITE("conv") {

TEST_CASE("conv2d matches hand-computed values") {
  // x = 1..16 as 4x4, w = [[1, 0], [0, -1]]: y[i, j] = x[i, j] - x[i+1, j+1] = -5 everywhere.
  std::vector<double> xv(16);
  for (int i = 0; i < 16; i++) xv[i] = i + 1;
  Tensor x = from_vector(xv, {1, 1, 4, 4});
  Tensor w = from_vector(std::vector<double>{1, 0, 0, -1}, {1, 1, 2, 2});
  Tensor y = conv2d(x, w, Tensor(), Conv2dParams{});
  CHECK(y.shape() == Shape{1, 1, 3, 3});
  CHECK(y.to_vector() == std::vector<double>(9, -5.0));
  // All-ones 3x3 kernel with padding 1 and bias 0.5 on a 3x3 ones image: counts of in-image taps.
  Tensor ones3 = ones({1, 1, 3, 3}, kFloat32);
  Tensor y2 = conv2d(ones3, ones({1, 1, 3, 3}, kFloat32), full({1}, 0.5, kFloat32),
                     params(1, 1, 1, 1));
  CHECK(y2.to_vector() == std::vector<double>{4.5, 6.5, 4.5, 6.5, 9.5, 6.5, 4.5, 6.5, 4.5});
  // Stride 2, dilation 2 on 5x5: one output, taps at (0,0), (0,2), (2,0), (2,2) -> 1+3+11+13.
  std::vector<double> x5(25);
  for (int i = 0; i < 25; i++) x5[i] = i + 1;
  Tensor y3 = conv2d(from_vector(x5, {1, 1, 5, 5}), ones({1, 1, 2, 2}, kFloat64), Tensor(),
                     params(2, 0, 2, 1));
  CHECK(y3.shape() == Shape{1, 1, 2, 2});
  CHECK(y3.to_vector()[0] == 1 + 3 + 11 + 13);
  // Groups: channel 0 only sees input 0, channel 1 only input 1.
  Tensor xg = from_vector(std::vector<double>{1, 10}, {1, 2, 1, 1});
  Tensor wg = from_vector(std::vector<double>{2, 3}, {2, 1, 1, 1});
  CHECK(conv2d(xg, wg, Tensor(), params(1, 0, 1, 2)).to_vector() == std::vector<double>{2, 30});
}

TEST_CASE("conv2d output is channels-last; output size follows PyTorch") {
  Tensor x = randn({2, 3, 9, 8});
  Tensor y = conv2d(x, randn({5, 3, 3, 3}), Tensor(), params(2, 1, 1, 1));
  CHECK(y.shape() == Shape{2, 5, 5, 4});
  CHECK(y.is_channels_last());
  // 9x8, kernel 3x2, dilation 2: OH = 9 - 2*2 = 5, OW = 8 - 2*1 = 6; groups = 3 (1 in, 2 out each)
  Tensor y2 = conv2d(x, randn({6, 1, 3, 2}), randn({6}), params(1, 0, 2, 3));
  CHECK(y2.shape() == Shape{2, 6, 5, 6});
  CHECK(y2.is_channels_last());
}

TEST_CASE("gradcheck: plain, strided+padded+dilated+grouped, depthwise, channels-last") {
  manual_seed(1);
  auto opts = TensorOptions(kFloat64);
  SUBCASE("plain 3x3 with bias") {
    Conv2dParams p = params(1, 0, 1, 1);
    CHECK(gradcheck([&](const std::vector<Tensor>& in) { return conv2d(in[0], in[1], in[2], p); },
                    {randn({2, 3, 5, 6}, opts), randn({4, 3, 3, 3}, opts), randn({4}, opts)}));
  }
  SUBCASE("stride 2, padding 1, dilation 2, groups 2") {
    Conv2dParams p = params(2, 1, 2, 2);
    CHECK(gradcheck([&](const std::vector<Tensor>& in) { return conv2d(in[0], in[1], in[2], p); },
                    {randn({2, 4, 7, 8}, opts), randn({6, 2, 3, 3}, opts), randn({6}, opts)}));
  }
  SUBCASE("depthwise (groups = C), no bias, rectangular params") {
    Conv2dParams p;
    p.stride_h = 1, p.stride_w = 2, p.pad_h = 1, p.pad_w = 0, p.dilation_h = 1, p.dilation_w = 2;
    p.groups = 3;
    CHECK(gradcheck(
        [&](const std::vector<Tensor>& in) { return conv2d(in[0], in[1], Tensor(), p); },
                    {randn({2, 3, 6, 7}, opts), randn({6, 1, 3, 2}, opts)}));
  }
  SUBCASE("channels-last input") {
    Conv2dParams p = params(1, 1, 1, 1);
    CHECK(gradcheck(
        [&](const std::vector<Tensor>& in) {
          return conv2d(in[0].contiguous_channels_last(), in[1], in[2], p);
        },
        {randn({1, 3, 5, 5}, opts), randn({2, 3, 3, 3}, opts), randn({2}, opts)}));
  }
}

TEST_CASE("oneDNN kernel matches the reference (forward, dx, dw, db; float32)") {
  // Tolerance: float32 sums of K = C/groups * KH * KW products (and of N*OH*OW for dw/db) in a
  // different order than the reference's double accumulation: relative error ~ 1e-6 * sqrt(K);
  // 1e-4 of the result's magnitude leaves a wide margin and still catches any wrong index.
  struct Case {
    Shape x;
    int64_t O, KH, KW, stride, pad, dilation, groups;
    bool bias;
  };
  std::vector<Case> cases = {
      {{2, 4, 9, 8}, 6, 3, 3, 1, 1, 1, 1, true},     // plain 3x3 same-padding
      {{3, 8, 11, 10}, 16, 3, 3, 2, 1, 1, 1, false}, // stride 2
      {{2, 6, 12, 12}, 4, 3, 3, 1, 2, 2, 1, true},   // dilation 2
      {{2, 8, 9, 9}, 8, 3, 3, 1, 1, 1, 8, true},     // depthwise
      {{2, 8, 10, 9}, 16, 3, 3, 2, 1, 1, 8, false},  // depthwise, multiplier 2, stride 2
      {{2, 6, 7, 7}, 9, 3, 1, 1, 0, 1, 3, true},     // grouped, rectangular kernel
      {{4, 1, 28, 28}, 8, 5, 5, 1, 2, 1, 1, true},   // 1-channel stem (Fashion-MNIST)
      {{2, 16, 7, 7}, 32, 1, 1, 1, 0, 1, 1, false},  // pointwise
      {{1, 3, 13, 11}, 5, 4, 2, 3, 1, 1, 1, true},   // odd sizes, kernel > stride
      {{4, 1, 28, 28}, 32, 3, 3, 1, 1, 1, 1, true},  // the Fashion-MNIST first layer
      {{3, 2, 12, 12}, 4, 3, 3, 1, 2, 2, 1, true},   // 2 channels, dilation 2
      {{2, 3, 17, 17}, 8, 3, 3, 2, 0, 1, 1, false},  // RGB stem, stride 2, no padding
  };
  Generator gen(7);
  for (const Case& c : cases) {
    for (bool channels_last : {true, false}) {
      CAPTURE(shape_str(c.x));
      CAPTURE(c.groups);
      CAPTURE(channels_last);
      Conv2dParams p = params(c.stride, c.pad, c.dilation, c.groups);
      Tensor x = randn(c.x, {kFloat32}, &gen);
      if (channels_last) x = x.contiguous_channels_last();
      Tensor w = randn({c.O, c.x[1] / c.groups, c.KH, c.KW}, {kFloat32}, &gen);
      Tensor b = c.bias ? randn({c.O}, {kFloat32}, &gen) : Tensor();
      Shape y_shape = conv2d(x, w, b, p).shape();
      // The output gradient in the other layout than x, to exercise the kernels' reorders.
      Tensor dy = randn(y_shape, {kFloat32}, &gen);
      if (!channels_last) dy = dy.contiguous_channels_last();
      auto ref = conv_run(CpuKernels::Reference, x, w, b, p, dy);
      auto fast = conv_run(CpuKernels::Fast, x, w, b, p, dy);
      for (size_t i = 0; i < ref.size(); i++) {
        if (!ref[i].defined()) continue;
        CAPTURE(i);
        REQUIRE(fast[i].defined());
        CHECK(max_abs_diff(fast[i], ref[i]) <= 1e-4 * (1 + max_abs(ref[i])));
      }
      // dx keeps x's layout
      CHECK((channels_last ? fast[1].is_channels_last() : fast[1].is_contiguous()));
    }
  }
}

TEST_CASE("non-dense input is copied first; x without grad skips dx") {
  Tensor big = randn({2, 4, 8, 10});
  Tensor x = big.narrow(3, 1, 7); // not dense
  Tensor w = randn({3, 4, 3, 3}).requires_grad_(true);
  Tensor y = conv2d(x, w, Tensor(), params(1, 1, 1, 1));
  Tensor yc = conv2d(x.contiguous(), w, Tensor(), params(1, 1, 1, 1));
  CHECK(max_abs_diff(y, yc) == 0);
  y.backward(ones(y.shape()));
  CHECK(w.grad().defined());
  CHECK(w.grad().shape() == w.shape());
}

TEST_CASE("oneDNN primitives are cached: repeated calls create none") {
  Tensor x = randn({2, 8, 10, 10}).contiguous_channels_last().requires_grad_(true);
  Tensor w = randn({8, 8, 3, 3}).requires_grad_(true);
  Tensor b = randn({8}).requires_grad_(true);
  auto step = [&] {
    Tensor y = conv2d(x, w, b, params(1, 1, 1, 1));
    y.backward(ones(y.shape()).contiguous_channels_last());
  };
  step();
  int64_t created = kernels::onednn::primitives_created();
  for (int i = 0; i < 3; i++) step();
  CHECK(kernels::onednn::primitives_created() == created);
}

TEST_CASE("conv2d refuses bad input") {
  Tensor w = randn({4, 3, 3, 3});
  check_error([&] { conv2d(randn({3, 4}), w, Tensor(), Conv2dParams{}); },
              {"conv2d", "expected input [N, C, H, W], got [3, 4]"});
  check_error([&] { conv2d(randn({1, 3, 5, 5}), randn({4, 3, 3}), Tensor(), Conv2dParams{}); },
              {"conv2d", "weight", "[4, 3, 3]"});
  check_error([&] { conv2d(randn({1, 5, 6, 6}), w, Tensor(), Conv2dParams{}); },
              {"conv2d", "[1, 5, 6, 6]", "[4, 3, 3, 3]", "groups = 1"});
  check_error([&] { conv2d(randn({1, 6, 6, 6}), w, Tensor(), params(1, 0, 1, 4)); },
              {"conv2d", "groups = 4", "[1, 6, 6, 6]"});
  check_error([&] { conv2d(randn({1, 3, 2, 2}), w, Tensor(), Conv2dParams{}); },
              {"conv2d", "output size", "[1, 3, 2, 2]", "[4, 3, 3, 3]"});
  check_error([&] { conv2d(randn({1, 3, 5, 5}), w.to(kFloat64), Tensor(), Conv2dParams{}); },
              {"conv2d", "float32", "float64"});
  check_error([&] { conv2d(ones({1, 3, 5, 5}, kInt32), w.to(kInt32), Tensor(), Conv2dParams{}); },
              {"conv2d", "int32"});
  check_error([&] { conv2d(randn({1, 3, 5, 5}), w, randn({3}), Conv2dParams{}); },
              {"conv2d", "bias", "[3]"});
  check_error([&] { conv2d(randn({1, 3, 5, 5}), w, Tensor(), params(0, 0, 1, 1)); },
              {"conv2d", "stride"});
}

TEST_CASE("conv2d refuses a weight modified in place after the forward") {
  Tensor x = randn({1, 2, 4, 4}, kFloat64).requires_grad_(true);
  Tensor w = randn({2, 2, 3, 3}, kFloat64).requires_grad_(true);
  Tensor y = conv2d(x, w, Tensor(), Conv2dParams{});
  {
    no_grad ng;
    w.add_(ones({2, 2, 3, 3}, kFloat64));
  }
  check_error([&] { y.backward(ones(y.shape(), kFloat64)); }, {"conv2d"});
}

} // TEST_SUITE
