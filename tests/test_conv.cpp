// conv2d: hand-computed values, float64 gradient checks (the reference loops), layouts, the
// primitive cache, and bad input. The oneDNN kernel against the reference on many geometries and
// both layouts: tests/test_backend_ops.cpp.
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

TEST_CASE("dx takes x's layout (NCHW or channels-last), whatever dy's") {
  // (the values of every kernel against the reference: tests/test_backend_ops.cpp)
  Tensor w = randn({4, 3, 3, 3});
  for (bool channels_last : {false, true}) {
    CAPTURE(channels_last);
    Tensor x = randn({2, 3, 6, 6});
    if (channels_last) x = x.contiguous_channels_last();
    x.requires_grad_(true);
    Tensor y = conv2d(x, w, Tensor(), params(1, 1, 1, 1));
    y.backward(channels_last ? ones(y.shape()) : ones(y.shape()).contiguous_channels_last());
    CHECK((channels_last ? x.grad().is_channels_last() : x.grad().is_contiguous()));
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
