// Pooling: PyTorch's values and output sizes (padding, ceil_mode, count_include_pad, adaptive
// bins, the default stride), float64 gradient checks, layouts, and bad input. The OpenMP kernels
// against the reference: tests/test_backend_ops.cpp.
#include "gradcheck.h"

#include <cmath>

using namespace tb;
using tbtest::check_error;
using tbtest::gradcheck;
using tbtest::max_abs_diff;

namespace {

Pool2dParams pool(int64_t k, int64_t stride, int64_t pad = 0, bool ceil_mode = false,
                  bool count_include_pad = true) {
  Pool2dParams p;
  p.kernel_h = p.kernel_w = k;
  p.stride_h = p.stride_w = stride;
  p.pad_h = p.pad_w = pad;
  p.ceil_mode = ceil_mode;
  p.count_include_pad = count_include_pad;
  return p;
}

Tensor iota(const Shape& s, DType t = kFloat64) {
  std::vector<double> v(numel_of(s));
  for (size_t i = 0; i < v.size(); i++) v[i] = double(i);
  return from_vector(v, s).to(t);
}

using PoolFn = std::function<Tensor(const Tensor&)>;

} // namespace

TEST_SUITE("pool") {

TEST_CASE("max_pool2d values and indices routing") {
  Tensor x = iota({1, 1, 4, 4});
  Tensor y = max_pool2d(x, pool(2, 2));
  CHECK(y.to_vector() == std::vector<double>{5, 7, 13, 15});
  // Padding counts as -inf: 3x3 windows, stride 2, padding 1 on the 4x4 ramp.
  CHECK(max_pool2d(x, pool(3, 2, 1)).to_vector() == std::vector<double>{5, 7, 13, 15});
  // ceil_mode keeps a partial last window: 5x5, k2 s2 -> 3x3 (floor would give 2x2).
  Tensor x5 = iota({1, 1, 5, 5});
  Tensor yc = max_pool2d(x5, pool(2, 2, 0, true));
  CHECK(yc.shape() == Shape{1, 1, 3, 3});
  CHECK(yc.to_vector() == std::vector<double>{6, 8, 9, 16, 18, 19, 21, 23, 24});
  CHECK(max_pool2d(x5, pool(2, 2)).shape() == Shape{1, 1, 2, 2});
  // Backward sends dy to the argmax; overlapping windows (k3 s1) add up.
  Tensor xr = from_vector(std::vector<double>{1, 2, 3, 4, 9, 5, 6, 7, 8}, {1, 1, 3, 3})
                  .requires_grad_(true);
  Tensor yr = max_pool2d(xr, pool(2, 1));
  CHECK(yr.to_vector() == std::vector<double>{9, 9, 9, 9});
  yr.backward(ones({1, 1, 2, 2}, kFloat64));
  CHECK(xr.grad().to_vector() == std::vector<double>{0, 0, 0, 0, 4, 0, 0, 0, 0});
}

TEST_CASE("max_pool2d propagates NaN, as PyTorch") {
  Tensor x = from_vector(std::vector<float>{1, NAN, 3, 4}, {1, 1, 2, 2});
  for (CpuKernels k : {CpuKernels::Reference, CpuKernels::Fast}) {
    set_cpu_kernels(k);
    CHECK(std::isnan(max_pool2d(x, pool(2, 2)).item()));
    CHECK(std::isnan(max_pool2d(x.contiguous_channels_last(), pool(2, 2)).item()));
  }
  set_cpu_kernels(CpuKernels::Fast);
}

TEST_CASE("output sizes follow PyTorch's ceil_mode rule") {
  Tensor x = randn({1, 1, 5, 5});
  // k3 s2 p1, ceil: (5 + 2 - 3 + 1) / 2 + 1 = 3
  CHECK(max_pool2d(x, pool(3, 2, 1, true)).shape() == Shape{1, 1, 3, 3});
  // k2 s3 p1, ceil: (5 + 2 - 2 + 2) / 3 + 1 = 3, but window 3 would start at 6 - 1 = 5 >= H: 2
  CHECK(max_pool2d(x, pool(2, 3, 1, true)).shape() == Shape{1, 1, 2, 2});
  CHECK(avg_pool2d(x, pool(2, 3, 1, true)).shape() == Shape{1, 1, 2, 2});
  CHECK(max_pool2d(randn({1, 1, 6, 6}), pool(3, 2, 0, true)).shape() == Shape{1, 1, 3, 3});
  CHECK(max_pool2d(randn({1, 1, 6, 6}), pool(3, 2, 0, false)).shape() == Shape{1, 1, 2, 2});
}

TEST_CASE("avg_pool2d values: count_include_pad and ceil_mode as PyTorch") {
  Tensor o = ones({1, 1, 2, 2}, kFloat64);
  // k2 s1 p1: corner windows hold 1 real element of 4
  CHECK(avg_pool2d(o, pool(2, 1, 1, false, true)).to_vector() ==
        std::vector<double>{0.25, 0.5, 0.25, 0.5, 1, 0.5, 0.25, 0.5, 0.25});
  CHECK(avg_pool2d(o, pool(2, 1, 1, false, false)).to_vector() == std::vector<double>(9, 1.0));
  // ceil_mode on 3x3, k2 s2: the partial windows (beyond the input, no padding) divide by their
  // clipped size, so all-ones stays all-ones (torch gives [[1, 1], [1, 1]]).
  CHECK(avg_pool2d(ones({1, 1, 3, 3}, kFloat64), pool(2, 2, 0, true, true)).to_vector() ==
        std::vector<double>(4, 1.0));
  Tensor x = iota({1, 1, 4, 4});
  CHECK(avg_pool2d(x, pool(2, 2)).to_vector() == std::vector<double>{2.5, 4.5, 10.5, 12.5});
}

TEST_CASE("adaptive_avg_pool2d bins: [floor(i H / out), ceil((i + 1) H / out))") {
  Tensor x = iota({1, 1, 1, 5});
  // 5 -> 2: bins [0, 3) and [2, 5)
  CHECK(adaptive_avg_pool2d(x, 1, 2).to_vector() == std::vector<double>{1, 3});
  // 5 -> 3: [0, 2), [1, 4), [3, 5)
  CHECK(adaptive_avg_pool2d(x, 1, 3).to_vector() == std::vector<double>{0.5, 2, 3.5});
  // Global average pooling
  Tensor g = adaptive_avg_pool2d(iota({2, 3, 4, 4}), 1, 1);
  CHECK(g.shape() == Shape{2, 3, 1, 1});
  CHECK(g.to_vector()[0] == 7.5);
  // Upsampling: 2 -> 3 bins [0, 1), [0, 2), [1, 2)
  CHECK(adaptive_avg_pool2d(iota({1, 1, 1, 2}), 1, 3).to_vector() ==
        std::vector<double>{0, 0.5, 1});
}

TEST_CASE("gradcheck: max, avg, adaptive with padding and ceil_mode") {
  manual_seed(3);
  TensorOptions o(kFloat64);
  // Random normals: ties in a max window (the kink) have probability ~0.
  std::vector<std::pair<const char*, PoolFn>> fns = {
      {"max k3 s2 p1 ceil", [](const Tensor& x) { return max_pool2d(x, pool(3, 2, 1, true)); }},
      {"max k2 s2", [](const Tensor& x) { return max_pool2d(x, pool(2, 2)); }},
      {"avg k3 s2 p1 ceil incl",
       [](const Tensor& x) { return avg_pool2d(x, pool(3, 2, 1, true)); }},
      {"avg k3 s2 p1 excl",
       [](const Tensor& x) { return avg_pool2d(x, pool(3, 2, 1, false, false)); }},
      {"avg k2 s1 p1 ceil excl",
       [](const Tensor& x) { return avg_pool2d(x, pool(2, 1, 1, true, false)); }},
      {"adaptive 3x2", [](const Tensor& x) { return adaptive_avg_pool2d(x, 3, 2); }},
      {"adaptive 1x1", [](const Tensor& x) { return adaptive_avg_pool2d(x, 1, 1); }},
      {"max channels-last",
       [](const Tensor& x) { return max_pool2d(x.contiguous_channels_last(), pool(3, 2, 1)); }},
  };
  for (auto& [name, f] : fns) {
    CAPTURE(name);
    CHECK(gradcheck([&](const std::vector<Tensor>& in) { return f(in[0]); },
                    {randn({2, 3, 7, 6}, o)}));
  }
}

TEST_CASE("the output and dx keep the input's memory order") {
  // (the values of every kernel against the reference: tests/test_backend_ops.cpp)
  std::vector<std::pair<const char*, PoolFn>> fns = {
      {"max", [](const Tensor& x) { return max_pool2d(x, pool(3, 2, 1, true)); }},
      {"avg", [](const Tensor& x) { return avg_pool2d(x, pool(2, 2, 0, true, false)); }},
      {"adaptive", [](const Tensor& x) { return adaptive_avg_pool2d(x, 3, 3); }},
  };
  for (auto& [name, f] : fns) {
    for (bool cl : {false, true}) {
      CAPTURE(name);
      CAPTURE(cl);
      Tensor x = randn({2, 5, 9, 7});
      if (cl) x = x.contiguous_channels_last();
      x.requires_grad_(true);
      Tensor y = f(x);
      y.backward(ones(y.shape()));
      CHECK((cl ? y.is_channels_last() : y.is_contiguous()));
      CHECK((cl ? x.grad().is_channels_last() : x.grad().is_contiguous()));
    }
  }
}

TEST_CASE("Pool2dParams: the stride defaults to the kernel size, rectangular kernels too") {
  Pool2dParams p;
  p.kernel_h = 3, p.kernel_w = 2; // stride left at 0: (3, 2), as PyTorch's stride=None
  Tensor x = iota({1, 1, 6, 6});
  Tensor y = max_pool2d(x, p);
  CHECK(y.shape() == Shape{1, 1, 2, 3});
  CHECK(y.to_vector() == std::vector<double>{13, 15, 17, 31, 33, 35});
  CHECK(avg_pool2d(x, Pool2dParams{.kernel_h = 2, .kernel_w = 2}).shape() == Shape{1, 1, 3, 3});
  p.stride_h = 1; // an explicit stride wins; the other one still follows the kernel
  CHECK(max_pool2d(x, p).shape() == Shape{1, 1, 4, 3});
}

TEST_CASE("pooling refuses bad input") {
  check_error([] { max_pool2d(randn({3, 4, 4}), pool(2, 2)); },
              {"max_pool2d", "expected input [N, C, H, W]", "[3, 4, 4]"});
  check_error([] { avg_pool2d(randn({1, 1, 4, 4}), pool(2, 2, 2)); },
              {"avg_pool2d", "padding", "half"});
  check_error([] { max_pool2d(randn({1, 1, 2, 2}), pool(3, 1)); },
              {"max_pool2d", "[1, 1, 2, 2]", "too small"});
  check_error([] { max_pool2d(randn({1, 1, 4, 4}), pool(2, -1)); },
              {"max_pool2d", "stride", "(-1, -1)"});
  check_error([] { max_pool2d(randn({1, 1, 4, 4}), Pool2dParams{}); },
              {"max_pool2d", "kernel size", "kernel_h/kernel_w must be set", "(0, 0)", "[1, 1, 4, 4]"});
  check_error([] { avg_pool2d(randn({1, 1, 4, 4}), Pool2dParams{.kernel_h = 2}); },
              {"avg_pool2d", "kernel (2, 0)"});
  check_error([] { adaptive_avg_pool2d(randn({1, 1, 4, 4}), 0, 2); },
              {"adaptive_avg_pool2d", "output size"});
  check_error([] { avg_pool2d(ones({1, 1, 4, 4}, kInt64), pool(2, 2)); }, {"avg_pool2d", "int64"});
}

} // TEST_SUITE
