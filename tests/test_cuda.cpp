// tests/test_cuda.cpp — what is particular to CUDA: device information, copies and dtype
// conversion on the device, the caching allocator, mixing devices, reductions long enough for the
// multi-block (two-pass) kernels, an MLP trained on the GPU, and the CNN's kernels (conv2d on
// cuDNN, pooling, batch norm) against the reference kernels case by case, forward and backward, in
// both layouts, then one training step of the Fashion-MNIST CNN on both devices. Every op against
// the reference kernels, case by case: tests/test_backend_ops.cpp, which also runs on CUDA. Without a GPU each
// case says "no CUDA device: skipped" and passes; the first case checks that such a machine
// refuses CUDA tensors with a clear tb::Error instead of crashing.
//
// Tolerances: float64 results differ only by the order of the additions (tree reductions, cuBLAS
// and cuDNN blocking) and by a few ulps in exp/log/erf, so 1e-10 relative; float32 the same at
// 1e-4. float16/bfloat16 outputs are rounded once on each side from sums taken in another order,
// so they may differ by an ulp: 4e-3 and 2e-2 (as tests/test_backend_ops.cpp).
#include "gradcheck.h"

#include "kernels/batchnorm.h"
#include "kernels/conv.h"
#include "kernels/pool.h"

#include <tb/models.h>

#include <functional>
#include <optional>
#include <string>

namespace {

using namespace tb;

const Device kGPU = cuda_device(0);

// True, after saying so, when there is no GPU to run on.
bool no_gpu() {
  if (cuda::is_available()) return false;
  MESSAGE("no CUDA device: skipped");
  return true;
}

double tol_for(DType t) { return t == kFloat64 ? 1e-10 : 1e-4; }

// |got - want| <= tol (1 + |want|) elementwise (NaN only where want is NaN); both brought to the CPU.
void check_close(const Tensor& got, const Tensor& want, double tol, const std::string& what) {
  REQUIRE_MESSAGE(got.shape() == want.shape(), what << ": shape " << shape_str(got.shape())
                                                    << " vs " << shape_str(want.shape()));
  auto g = got.cpu().to_vector(), w = want.cpu().to_vector();
  double worst = 0;
  int64_t at = -1;
  for (size_t i = 0; i < w.size(); i++) {
    if (std::isnan(w[i]) && std::isnan(g[i])) continue;
    double err = std::abs(g[i] - w[i]) / (1 + std::abs(w[i]));
    if (!(err <= worst)) worst = err, at = (int64_t)i;
  }
  CHECK_MESSAGE(worst <= tol, what << ": element " << at << " is " << (at >= 0 ? g[at] : 0)
                                   << " on cuda, " << (at >= 0 ? w[at] : 0) << " on cpu");
}

void check_equal(const Tensor& got, const Tensor& want, const std::string& what) {
  CHECK_MESSAGE(got.dtype() == want.dtype(), what << ": dtype " << dtype_name(got.dtype()));
  check_close(got, want, 0.0, what);
}

double half_tol(DType t) { return t == kBFloat16 ? 2e-2 : 4e-3; }

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

void compare_on(const std::string& what, const Fn& f, const std::vector<Tensor>& inputs,
                bool grads, std::optional<double> tol_override) {
  std::vector<Tensor> xc, xg;
  for (const Tensor& x : inputs) {
    Tensor c = x.detach().clone(), g = x.detach().to(kGPU);
    if (grads && is_floating(x.dtype())) {
      c.requires_grad_(true);
      g.requires_grad_(true);
    }
    xc.push_back(c);
    xg.push_back(g);
  }
  Tensor yc = f(xc), yg = f(xg);
  CHECK_MESSAGE(yg.device() == kGPU, what << ": result on " << yg.device().str());
  double tol = tol_override ? *tol_override : tol_for(yc.dtype());
  check_close(yg, yc, tol, what);
  if (!grads || !yc.requires_grad()) return;
  Generator gen(7);
  Tensor r = randn(yc.shape(), {yc.dtype()}, &gen);
  sum(mul(yc, r)).backward();
  sum(mul(yg, r.to(kGPU))).backward();
  for (size_t i = 0; i < xc.size(); i++) {
    if (!xc[i].requires_grad() || !xc[i].grad().defined()) continue;
    REQUIRE_MESSAGE(xg[i].grad().defined(), what << ": no gradient for input " << i << " on cuda");
    CHECK(xg[i].grad().device() == kGPU);
    check_close(xg[i].grad(), xc[i].grad(), tol, what + " d/dinput" + std::to_string(i));
  }
}

struct UseReferenceKernels { // restored even when a REQUIRE ends the test case
  CpuKernels prev = cpu_kernels();
  UseReferenceKernels() { set_cpu_kernels(CpuKernels::Reference); }
  ~UseReferenceKernels() { set_cpu_kernels(prev); }
};

// Runs f on CPU copies and on GPU copies of `inputs`; compares outputs, then the gradients of
// sum(f * r) for a fixed random r with respect to every floating input (when `grads`). The CPU
// side runs the reference kernels (kernels/ref/), so every CUDA kernel is checked against the
// readable specification of its op. `tol`: instead of the output dtype's tolerance.
void compare(const std::string& what, const Fn& f, const std::vector<Tensor>& inputs,
             bool grads = true, std::optional<double> tol = {}) {
  UseReferenceKernels scope;
  compare_on(what, f, inputs, grads, tol);
}

Tensor rnd(const Shape& s, DType t = kFloat32, double scale = 1.0) {
  return mul(randn(s, {kFloat64}), scale).to(t);
}

} // namespace

TEST_SUITE("cuda") {

TEST_CASE("without a GPU, CUDA tensors are refused with a clear error") {
#ifdef TB_HAVE_CUDA
  CHECK(cuda::is_built());
#else
  CHECK_FALSE(cuda::is_built());
#endif
  if (cuda::is_available()) {
    CHECK(cuda::device_count() >= 1);
    int n = cuda::device_count(); // one past the last device
    tbtest::check_error([&] { zeros({2}, {kFloat32, cuda_device(n)}); },
                        {fmt::format("cuda:{}", n)});
    return;
  }
  CHECK(cuda::device_count() == 0);
  cuda::synchronize(); // a no-op, not an error
  tbtest::check_error([] { zeros({2, 3}, {kFloat32, kGPU}); }, {"no CUDA device", "cuda:0"});
  tbtest::check_error([] { randn({2, 3}).to(kGPU); }, {"no CUDA device", "cuda:0"});
  tbtest::check_error([] { ones({4}).cuda(); }, {"no CUDA device"});
}

TEST_CASE("device information") {
  if (no_gpu()) return;
  CHECK(cuda::device_count() >= 1);
  CHECK_FALSE(cuda::device_name(0).empty());
  MESSAGE("running on " << cuda::device_name(0));
  cuda::synchronize();
}

TEST_CASE("copies: round trips, strided views, dtype conversion and fill match the CPU") {
  if (no_gpu()) return;
  const std::vector<DType> dtypes = {kFloat32, kFloat64, kFloat16, kBFloat16, kInt8,
                                     kUInt8,   kInt32,   kInt64,   kBool};
  Tensor base = rnd({5, 7}, kFloat64, 10.0);
  for (DType t : dtypes) {
    Tensor x = base.to(t);
    check_equal(x.to(kGPU).cpu(), x, fmt::format("round trip {}", dtype_name(t)));
    for (DType u : dtypes) // converted on the device vs on the CPU: identical bits
      check_equal(x.to(kGPU).to(u).cpu(), x.to(u),
                  fmt::format("convert {} -> {}", dtype_name(t), dtype_name(u)));
    check_equal(full({3, 4}, -2.5, {t, kGPU}).cpu(), full({3, 4}, -2.5, {t}),
                fmt::format("fill {}", dtype_name(t)));
  }
  Tensor big = rnd({1 << 20});
  check_equal(big.to(kGPU).cpu(), big, "1M-element round trip");
  CHECK(empty({0, 3}, {kFloat32, kGPU}).cpu().numel() == 0);

  // Strided views materialised on the device.
  Tensor x = rnd({4, 5, 6});
  Tensor g = x.to(kGPU);
  check_equal(g.permute({2, 0, 1}).contiguous().cpu(), x.permute({2, 0, 1}).contiguous(), "permute");
  check_equal(g.slice(2, 1, 6, 2).contiguous().cpu(), x.slice(2, 1, 6, 2).contiguous(), "slice");
  check_equal(g.narrow(0, 1, 2).transpose(1, 2).contiguous().cpu(),
              x.narrow(0, 1, 2).transpose(1, 2).contiguous(), "narrow+transpose");
  check_equal(g.select(1, 3).unsqueeze(0).expand({3, 4, 6}).contiguous().cpu(),
              x.select(1, 3).unsqueeze(0).expand({3, 4, 6}).contiguous(), "expand");
  check_equal(g.permute({1, 0, 2}).to(kFloat16).cpu(), x.permute({1, 0, 2}).to(kFloat16),
              "strided + convert");
  Tensor img = rnd({2, 3, 4, 5});
  check_equal(img.to(kGPU).contiguous_channels_last().contiguous().cpu(), img, "channels-last");

  // In-place copy_ and fill_ on the device, and a CPU -> GPU copy_.
  Tensor dst = zeros({4, 6}, {kFloat64, kGPU});
  dst.copy_(x.select(1, 0)); // crosses devices, converts float32 -> float64
  check_equal(dst.cpu(), x.select(1, 0).to(kFloat64), "copy_ across devices");
  dst.narrow(1, 2, 3).fill_(7.0);
  Tensor want = x.select(1, 0).to(kFloat64).contiguous();
  want.narrow(1, 2, 3).fill_(7.0);
  check_equal(dst.cpu(), want, "fill_ of a strided view");
}

TEST_CASE("the caching allocator reuses freed CUDA blocks") {
  if (no_gpu()) return;
  const size_t n = 3 << 20; // 12 MiB of float32, a size no other test uses
  { Tensor t = empty({(int64_t)n}, {kFloat32, kGPU}); }
  MemoryStats s1 = memory_stats(kGPU);
  {
    Tensor t = empty({(int64_t)n}, {kFloat32, kGPU});
    MemoryStats s2 = memory_stats(kGPU);
    CHECK(s2.cache_hits == s1.cache_hits + 1);
    CHECK(s2.reserved == s1.reserved);
    CHECK(s2.in_use >= s1.in_use + n * 4);
    CHECK(s2.peak >= s2.in_use);
  }
  CHECK(memory_stats(kGPU).in_use == s1.in_use);
  empty_cache(kGPU);
  MemoryStats s3 = memory_stats(kGPU);
  CHECK(s3.reserved == s3.in_use);
  CHECK(memory_stats().reserved >= memory_stats().in_use); // the CPU allocator is separate
}

TEST_CASE("mixing devices is an error that names both") {
  if (no_gpu()) return;
  Tensor a = rnd({2, 3}), b = rnd({2, 3}).to(kGPU);
  tbtest::check_error([&] { add(a, b); }, {"cpu", "cuda:0"});
  tbtest::check_error([&] { mul(b, a); }, {"cpu", "cuda:0"});
  tbtest::check_error([&] { matmul(a, b.t()); }, {"cpu", "cuda:0"});
}

// A few long rows are cut into pieces reduced by many blocks, then combined (kernels/cuda/reduce.cu):
// the pieces' boundaries must not lose values, and the first extreme must still win across pieces.
TEST_CASE("reductions over a few long rows (two-pass) match the CPU") {
  if (no_gpu()) return;
  for (DType t : {kFloat32, kFloat64}) {
    std::string d = dtype_name(t);
    Tensor one_row = rnd({1, 1000003}, t), few_rows = rnd({3, 200001}, t);
    compare("sum all, 1M " + d, [](auto& v) { return sum(v[0]); }, {one_row});
    compare("mean rows " + d, [](auto& v) { return mean(v[0], {1}); }, {few_rows});
    compare("var rows " + d, [](auto& v) { return var(v[0], {1}, 1, true); }, {few_rows});
    compare("var all, shifted " + d, [](auto& v) { return var(add(v[0], 100.0)); }, {one_row});
    compare("max all " + d, [](auto& v) { return max(v[0]); }, {one_row}, false);
    compare("argmin rows " + d, [](auto& v) { return argmin(v[0], 1); }, {few_rows}, false);
    // Columns: tiles of 32 (the last one partial), pieces of r, two passes.
    Tensor tall = rnd({20000, 70}, t), cube = rnd({2, 5000, 33}, t), bias_grad = rnd({1024, 1000}, t);
    compare("sum dim 0, tall " + d, [](auto& v) { return sum(v[0], {0}); }, {tall});
    compare("mean dim 0, batch x features " + d, [](auto& v) { return mean(v[0], {0}); }, {bias_grad});
    compare("var middle dim " + d, [](auto& v) { return var(v[0], {1}); }, {cube});
    compare("argmin dim 0, tall " + d, [](auto& v) { return argmin(v[0], 0); }, {tall}, false);
    compare("max middle dim " + d, [](auto& v) { return max(v[0], 1).values; }, {cube});
    auto cube_c = max(cube, 1), cube_g = max(cube.to(kGPU), 1);
    check_equal(cube_g.indices.cpu(), cube_c.indices, "max middle dim indices " + d);
    // Column ties across pieces and tiles, and a NaN late in one column.
    Tensor col_ties = randint(0, 2, {300000, 3}, {kInt64}).to(t);
    check_equal(argmax(col_ties.to(kGPU), 0).cpu(), argmax(col_ties, 0), "argmax column ties " + d);
    check_equal(argmin(col_ties.to(kGPU), 0).cpu(), argmin(col_ties, 0), "argmin column ties " + d);
    Tensor col_nan = rnd({100000, 40}, t);
    col_nan[99998][37].fill_(NAN);
    auto nc = min(col_nan, 0), ng = min(col_nan.to(kGPU), 0);
    check_equal(ng.indices.cpu(), nc.indices, "min with a late NaN in a column " + d);
    // Ties across piece boundaries: the first index wins; a NaN late in a row beats every number.
    Tensor ties = randint(0, 2, {2, 300000}, {kInt64}).to(t);
    check_equal(argmax(ties.to(kGPU), 1).cpu(), argmax(ties, 1), "argmax ties " + d);
    Tensor late_nan = rnd({2, 300000}, t);
    late_nan[1][299999].fill_(NAN);  // in the row's last piece
    auto mc = max(late_nan, 1), mg = max(late_nan.to(kGPU), 1);
    check_equal(mg.indices.cpu(), mc.indices, "max with a late NaN " + d);
  }
  Tensor ints = randint(-1000, 1000, {2, 100000}, {kInt64});
  compare("int64 sum, long rows", [](auto& v) { return sum(v[0], {1}); }, {ints}, false);
}

TEST_CASE("an MLP's loss and gradients agree on CPU and GPU") {
  if (no_gpu()) return;
  Generator g(3);
  for (DType t : {kFloat32, kFloat64}) {
    Tensor x = randn({32, 10}, {t}, &g), y = randint(0, 4, {32}, {kInt64}, &g);
    Tensor w1 = mul(randn({16, 10}, {t}, &g), 0.3), b1 = mul(randn({16}, {t}, &g), 0.1);
    Tensor w2 = mul(randn({4, 16}, {t}, &g), 0.3), b2 = mul(randn({4}, {t}, &g), 0.1);
    compare(std::string("mlp ") + dtype_name(t),
            [](auto& v) {
              Tensor h = gelu(linear(v[0], v[2], v[3]));
              return cross_entropy(linear(h, v[4], v[5]), v[1], 0.1);
            },
            {x, y, w1, b1, w2, b2});
  }
}

TEST_CASE("a tiny MLP trains on CUDA: the loss falls") {
  if (no_gpu()) return;
  Generator g(11);
  // Four Gaussian blobs in 2-D, one class each.
  Tensor y = randint(0, 4, {256}, {kInt64}, &g);
  Tensor centers = from_vector(std::vector<float>{2, 2, -2, 2, -2, -2, 2, -2}, {4, 2});
  Tensor x = add(index_select(centers, 0, y), mul(randn({256, 2}, {}, &g), 0.5)).to(kGPU);
  y = y.to(kGPU);
  std::vector<Tensor> params = {mul(randn({32, 2}, {}, &g), 0.5), zeros({32}),
                                mul(randn({4, 32}, {}, &g), 0.2), zeros({4})};
  for (Tensor& p : params) {
    p = p.to(kGPU);
    p.requires_grad_(true);
  }
  double first = 0, last = 0;
  for (int step = 0; step < 100; step++) {
    Tensor h = relu(linear(x, params[0], params[1]));
    Tensor loss = cross_entropy(linear(h, params[2], params[3]), y);
    loss.backward();
    double l = loss.item();
    if (step == 0) first = l;
    last = l;
    no_grad ng;
    for (Tensor& p : params) {
      p.add_(p.grad(), -0.5);
      p.grad().zero_();
    }
  }
  MESSAGE("cuda training loss " << first << " -> " << last);
  CHECK(last < 0.3 * first);
  CHECK(params[0].device() == kGPU);
}

// ---- the CNN's kernels: conv2d (cuDNN), pooling, batch norm -----------------------------------------

// Runs without a GPU too: a CUDA build has these tables filled, and a dtype a kernel does not
// handle is a tb::Error naming the op and the dtype, raised before anything touches a device
// (the ops reject such dtypes earlier; this is the kernels' own guard).
TEST_CASE("the CUDA conv, pooling and batch-norm kernels refuse an unsupported dtype by name") {
  using namespace tb::kernels;
#ifndef TB_HAVE_CUDA
  CHECK((Conv2dKernels::cuda.forward == nullptr)); // (parentheses: doctest cannot print these)
  CHECK((Pool2dKernels::cuda.max_forward == nullptr));
  CHECK((BatchNormKernels::cuda.forward == nullptr));
#else
  const Conv2dKernels& conv = Conv2dKernels::cuda;
  const Pool2dKernels& pool = Pool2dKernels::cuda;
  const BatchNormKernels& bn = BatchNormKernels::cuda;
  for (auto* f : {(void*)conv.forward, (void*)conv.backward_data, (void*)conv.backward_weights,
                  (void*)pool.max_forward, (void*)pool.max_backward, (void*)pool.avg_forward,
                  (void*)pool.avg_backward, (void*)pool.adaptive_avg_forward,
                  (void*)pool.adaptive_avg_backward, (void*)bn.forward, (void*)bn.backward})
    CHECK(f != nullptr);
  Conv2dGeom cg{.N = 1, .C = 1, .H = 3, .W = 3, .O = 1, .KH = 1, .KW = 1, .OH = 3, .OW = 3};
  Strides4 s = nchw_strides(1, 3, 3);
  const std::vector<std::string> conv_int32 = {"conv2d", "no CUDA kernel", "int32"};
  tbtest::check_error([&] { conv.forward(kInt32, cg, nullptr, s, nullptr, nullptr, nullptr, s); },
                      conv_int32);
  tbtest::check_error([&] { conv.backward_data(kInt32, cg, nullptr, s, nullptr, nullptr, s); },
                      conv_int32);
  tbtest::check_error(
      [&] { conv.backward_weights(kInt32, cg, nullptr, s, nullptr, s, nullptr, nullptr); },
      conv_int32);
  Pool2dGeom pg{.N = 1, .C = 1, .H = 3, .W = 3, .OH = 1, .OW = 1, .KH = 3, .KW = 3};
  // float16 pooling runs in float32 inside the op, so the kernels themselves take no half
  tbtest::check_error([&] { pool.max_forward(kFloat16, pg, nullptr, s, nullptr, nullptr, s); },
                      {"max_pool2d", "no CUDA kernel", "float16"});
  tbtest::check_error([&] { pool.max_backward(kInt64, pg, nullptr, nullptr, s, nullptr, s); },
                      {"max_pool2d backward", "int64"});
  tbtest::check_error([&] { pool.avg_forward(kBFloat16, pg, nullptr, s, nullptr, s); },
                      {"avg_pool2d", "bfloat16"});
  tbtest::check_error([&] { pool.avg_backward(kInt8, pg, nullptr, s, nullptr, s); },
                      {"avg_pool2d backward", "int8"});
  tbtest::check_error([&] { pool.adaptive_avg_forward(kInt32, pg, nullptr, s, nullptr, s); },
                      {"adaptive_avg_pool2d", "int32"});
  tbtest::check_error([&] { pool.adaptive_avg_backward(kUInt8, pg, nullptr, s, nullptr, s); },
                      {"adaptive_avg_pool2d backward", "uint8"});
  BatchNormLayout l{.N = 2, .C = 3, .S = 4, .sn = 12, .sc = 4, .ss = 1};
  tbtest::check_error([&] {
    bn.forward(kInt32, l, nullptr, nullptr, nullptr, true, 0.1, 1e-5, nullptr, nullptr, nullptr,
               nullptr, nullptr);
  }, {"batch_norm", "no CUDA kernel", "int32"});
  tbtest::check_error([&] {
    bn.backward(kInt64, l, nullptr, nullptr, nullptr, nullptr, nullptr, true, nullptr, nullptr,
                nullptr);
  }, {"batch_norm backward", "int64"});
#endif
}
// Each case runs on NCHW inputs and on channels-last ones: the layout is set inside f, so both
// devices see the same strides, and the gradient flows back through the layout copy.

Tensor in_layout(const Tensor& x, bool channels_last) {
  return channels_last ? x.contiguous_channels_last() : x;
}
const char* layout_str(bool channels_last) { return channels_last ? "channels-last" : "NCHW"; }

struct ConvCase {
  std::string name;
  Shape x, w;
  bool bias;
  Conv2dParams p;
};

const std::vector<ConvCase>& conv_cases() {
  static const std::vector<ConvCase> cases = {
      {"3x3 pad 1, odd sizes", {2, 3, 7, 9}, {5, 3, 3, 3}, true, {.pad_h = 1, .pad_w = 1}},
      {"stride 2, pad 1, no bias", {3, 4, 11, 10}, {6, 4, 3, 3}, false,
       {.stride_h = 2, .stride_w = 2, .pad_h = 1, .pad_w = 1}},
      {"rectangular 5x3, stride (2, 1), pad (2, 1)", {2, 3, 13, 8}, {4, 3, 5, 3}, true,
       {.stride_h = 2, .stride_w = 1, .pad_h = 2, .pad_w = 1}},
      {"dilation 2", {2, 4, 12, 11}, {3, 4, 3, 3}, true,
       {.pad_h = 2, .pad_w = 2, .dilation_h = 2, .dilation_w = 2}},
      {"dilation (3, 1), no padding", {1, 2, 13, 9}, {3, 2, 3, 3}, false,
       {.dilation_h = 3, .dilation_w = 1}},
      {"groups 2, rectangular 3x1", {2, 6, 7, 8}, {4, 3, 3, 1}, true, {.groups = 2}},
      {"groups 3, stride 2", {2, 6, 9, 9}, {9, 2, 3, 3}, true,
       {.stride_h = 2, .stride_w = 2, .pad_h = 1, .pad_w = 1, .groups = 3}},
      {"depthwise 3x3", {2, 8, 9, 9}, {8, 1, 3, 3}, true, {.pad_h = 1, .pad_w = 1, .groups = 8}},
      {"depthwise x2, stride 2, no bias", {2, 8, 10, 9}, {16, 1, 3, 3}, false,
       {.stride_h = 2, .stride_w = 2, .pad_h = 1, .pad_w = 1, .groups = 8}},
      {"depthwise 5x5, dilation 2", {1, 6, 13, 12}, {6, 1, 5, 5}, true,
       {.pad_h = 4, .pad_w = 4, .dilation_h = 2, .dilation_w = 2, .groups = 6}},
      {"pointwise 1x1", {2, 16, 5, 5}, {8, 16, 1, 1}, false, {}},
      {"the CNN's stem: 1 channel, 28x28, 32 filters", {2, 1, 28, 28}, {32, 1, 3, 3}, true,
       {.pad_h = 1, .pad_w = 1}},
      {"the CNN's second conv: 32 -> 64 at 14x14", {2, 32, 14, 14}, {64, 32, 3, 3}, true,
       {.pad_h = 1, .pad_w = 1}},
      {"kernel as large as the padded input", {2, 3, 4, 5}, {2, 3, 6, 7}, true,
       {.pad_h = 1, .pad_w = 1}},
  };
  return cases;
}

Tensor conv_of(const std::vector<Tensor>& v, const Conv2dParams& p, bool channels_last) {
  return conv2d(in_layout(v[0], channels_last), v[1], v.size() > 2 ? v[2] : Tensor(), p);
}

TEST_CASE("conv2d on cuDNN matches the reference: forward, backward-data, backward-weights") {
  if (no_gpu()) return;
  for (DType t : {kFloat32, kFloat64})
    for (bool cl : {false, true})
      for (const ConvCase& c : conv_cases()) {
        std::vector<Tensor> in = {rnd(c.x, t), rnd(c.w, t, 0.5)};
        if (c.bias) in.push_back(rnd({c.w[0]}, t));
        Conv2dParams p = c.p;
        compare(fmt::format("conv2d {}, {}, {}", c.name, dtype_name(t), layout_str(cl)),
                [p, cl](auto& v) { return conv_of(v, p, cl); }, in);
      }
}

// Half precision on cuDNN: float32 accumulation (tensor cores allowed) against the reference's
// double sums, each rounded once to the half type: an ulp apart at most.
TEST_CASE("conv2d in float16 and bfloat16 on cuDNN matches the reference") {
  if (no_gpu()) return;
  for (DType t : {kFloat16, kBFloat16})
    for (bool cl : {false, true})
      for (const ConvCase& c : conv_cases()) {
        std::vector<Tensor> in = {rnd(c.x, t), rnd(c.w, t, 0.5)};
        if (c.bias) in.push_back(rnd({c.w[0]}, t));
        Conv2dParams p = c.p;
        compare(fmt::format("conv2d {}, {}, {}", c.name, dtype_name(t), layout_str(cl)),
                [p, cl](auto& v) { return conv_of(v, p, cl).to(kFloat32); }, in, true,
                half_tol(t));
      }
}

TEST_CASE("conv2d on CUDA: a geometry seen before (cached algorithm) and a new one both match") {
  if (no_gpu()) return;
  // The same geometry twice (the second call runs the cached plan), then a batch size not seen
  // before (a new search): the reference's results every time.
  Tensor w = rnd({6, 4, 3, 3}, kFloat32, 0.5), b = rnd({6});
  for (int64_t n : {2, 2, 5}) {
    Tensor x = rnd({n, 4, 9, 8});
    compare(fmt::format("conv2d batch {}", n),
            [](auto& v) { return conv2d(v[0], v[1], v[2], {.pad_h = 1, .pad_w = 1}); }, {x, w, b});
  }
}

struct PoolCase {
  std::string name;
  Shape x;
  std::function<Tensor(const Tensor&)> f;
};

const std::vector<PoolCase>& pool_cases() {
  static const std::vector<PoolCase> cases = {
      {"max_pool2d 2x2", {2, 5, 9, 7},
       [](const Tensor& x) { return max_pool2d(x, {.kernel_h = 2, .kernel_w = 2}); }},
      {"max_pool2d 3x3 s2 p1 ceil", {2, 5, 9, 7},
       [](const Tensor& x) {
         return max_pool2d(x, {.kernel_h = 3, .kernel_w = 3, .stride_h = 2, .stride_w = 2,
                               .pad_h = 1, .pad_w = 1, .ceil_mode = true});
       }},
      {"max_pool2d 3x2, stride (1, 2)", {2, 5, 9, 7},
       [](const Tensor& x) {
         return max_pool2d(x, {.kernel_h = 3, .kernel_w = 2, .stride_h = 1, .stride_w = 2});
       }},
      {"max_pool2d 3x3 s1 p1 (each input in up to 9 windows)", {2, 4, 8, 9},
       [](const Tensor& x) {
         return max_pool2d(x, {.kernel_h = 3, .kernel_w = 3, .stride_h = 1, .stride_w = 1,
                               .pad_h = 1, .pad_w = 1});
       }},
      {"max_pool2d 2x2 of the CNN's 64x14x14", {8, 64, 14, 14},
       [](const Tensor& x) { return max_pool2d(x, {.kernel_h = 2, .kernel_w = 2}); }},
      {"avg_pool2d 3x3 s1 p1", {2, 5, 9, 7},
       [](const Tensor& x) {
         return avg_pool2d(x, {.kernel_h = 3, .kernel_w = 3, .stride_h = 1, .stride_w = 1,
                               .pad_h = 1, .pad_w = 1});
       }},
      {"avg_pool2d 3x3 s2 p1 ceil, excluding padding", {2, 5, 9, 7},
       [](const Tensor& x) {
         return avg_pool2d(x, {.kernel_h = 3, .kernel_w = 3, .stride_h = 2, .stride_w = 2,
                               .pad_h = 1, .pad_w = 1, .ceil_mode = true,
                               .count_include_pad = false});
       }},
      {"avg_pool2d rectangular 2x3", {2, 5, 9, 7},
       [](const Tensor& x) { return avg_pool2d(x, {.kernel_h = 2, .kernel_w = 3}); }},
      {"adaptive_avg_pool2d 3x2 of 9x7", {2, 5, 9, 7},
       [](const Tensor& x) { return adaptive_avg_pool2d(x, 3, 2); }},
      {"adaptive_avg_pool2d 1x1", {3, 16, 5, 5},
       [](const Tensor& x) { return adaptive_avg_pool2d(x, 1, 1); }},
      {"adaptive_avg_pool2d 3x3 of 5x6", {2, 3, 5, 6},
       [](const Tensor& x) { return adaptive_avg_pool2d(x, 3, 3); }},
      {"adaptive_avg_pool2d 7x5 of 5x3 (overlapping windows)", {2, 3, 5, 3},
       [](const Tensor& x) { return adaptive_avg_pool2d(x, 7, 5); }},
      {"adaptive_avg_pool2d 1x1 of 512 channels", {4, 512, 4, 4},
       [](const Tensor& x) { return adaptive_avg_pool2d(x, 1, 1); }},
  };
  return cases;
}

// The pooling kernels repeat the reference's arithmetic step by step (kernels/cuda/pool.cu), so
// their outputs must be equal, not just close; gradients are compared through autograd.
TEST_CASE("pooling on CUDA equals the reference forward and matches it backward") {
  if (no_gpu()) return;
  UseReferenceKernels scope;
  for (DType t : {kFloat32, kFloat64})
    for (bool cl : {false, true})
      for (const PoolCase& c : pool_cases()) {
        std::string what = fmt::format("{}, {}, {}", c.name, dtype_name(t), layout_str(cl));
        Tensor x = in_layout(rnd(c.x, t), cl);
        Tensor yc = c.f(x), yg = c.f(x.to(kGPU));
        CHECK(yg.is_channels_last() == yc.is_channels_last());
        check_equal(yg.cpu(), yc, what + " (forward, exact)");
        auto f = c.f;
        compare(what, [f, cl](auto& v) { return f(in_layout(v[0], cl)); }, {rnd(c.x, t)});
      }
}

TEST_CASE("max_pool2d on CUDA: ties keep the first, NaN wins, as the reference") {
  if (no_gpu()) return;
  UseReferenceKernels scope;
  for (DType t : {kFloat32, kFloat64})
    for (bool cl : {false, true}) {
      std::string d = fmt::format("{}, {}", dtype_name(t), layout_str(cl));
      // Values on a grid of halves: many ties in each window; the gradient goes to the first.
      Tensor ties = in_layout(div(round(mul(randn({2, 3, 8, 8}, {kFloat64}), 4.0)), 2.0).to(t), cl);
      Pool2dParams p{.kernel_h = 2, .kernel_w = 2};
      check_equal(max_pool2d(ties.to(kGPU), p).cpu(), max_pool2d(ties, p), "ties " + d);
      compare("ties " + d, [p, cl](auto& v) { return max_pool2d(in_layout(v[0], cl), p); },
              {ties.contiguous()});
      Tensor nan = randn({1, 2, 6, 6}, {kFloat64});
      for (int64_t i = 0; i < nan.numel(); i += 5) nan.data<double>()[i] = NAN;
      nan = in_layout(nan.to(t), cl);
      Pool2dParams q{.kernel_h = 3, .kernel_w = 3, .stride_h = 1, .stride_w = 1, .pad_h = 1,
                     .pad_w = 1};
      check_equal(max_pool2d(nan.to(kGPU), q).cpu(), max_pool2d(nan, q), "NaN " + d);
    }
}

struct BnCase {
  std::string name;
  Shape x;
  bool channels_last, affine, training, running;
};

// batch_norm with running statistics created inside (so both devices start from the same ones);
// in training the updated statistics are appended to the output, so they are compared too.
Tensor bn_of(const std::vector<Tensor>& v, const BnCase& c) {
  int64_t C = c.x[1];
  TensorOptions po(v.size() > 1 ? v[1].dtype() : v[0].dtype(), v[0].device());
  if (v[0].dtype() == kFloat16 || v[0].dtype() == kBFloat16) po = po.with_dtype(kFloat32);
  Tensor rm = c.running ? full({C}, 0.2, po) : Tensor(), rv = c.running ? full({C}, 1.5, po) : Tensor();
  Tensor x = c.x.size() == 4 ? in_layout(v[0], c.channels_last) : v[0];
  Tensor y = batch_norm(x, rm, rv, c.affine ? v[1] : Tensor(), c.affine ? v[2] : Tensor(),
                        {.training = c.training, .momentum = 0.3, .eps = 1e-4});
  if (!(c.training && c.running)) return y;
  return cat({y.reshape({-1}).to(rm.dtype()), rm, rv});
}

// x (dtype t, scaled by 2), then weight and bias (dtype p) when the case is affine.
std::vector<Tensor> bn_inputs(const BnCase& c, DType t, DType p) {
  Tensor x = rnd(c.x, t, 2.0);
  if (!c.affine) return {x};
  return {x, rnd({c.x[1]}, p), rnd({c.x[1]}, p)};
}

const std::vector<BnCase>& bn_cases() {
  static const std::vector<BnCase> cases = {
      {"train NCHW", {4, 6, 5, 7}, false, true, true, true},
      {"train channels-last", {4, 6, 5, 7}, true, true, true, true},
      {"train [N, C], not affine", {16, 10}, false, false, true, true},
      {"train [N, C, L]", {5, 4, 9}, false, true, true, true},
      {"train channels-last, 70 channels (a partial tile of 32)", {8, 70, 3, 5}, true, true, true,
       true},
      {"train [N, C] over 300 channels", {16, 300}, false, true, true, true},
      {"eval NCHW", {4, 6, 5, 7}, false, true, false, true},
      {"eval channels-last, not affine", {4, 6, 5, 7}, true, false, false, true},
      {"batch statistics without running statistics", {8, 33, 3, 3}, false, true, false, false},
      {"train NCHW, 12544 values a channel (several pieces)", {64, 8, 14, 14}, false, true, true,
       true},
      {"train channels-last, 50176 values a channel (the CNN's first batch norm at batch 64)",
       {64, 32, 28, 28}, true, true, true, true},
  };
  return cases;
}

TEST_CASE("batch_norm on CUDA matches the reference: train and eval, running stats, backward") {
  if (no_gpu()) return;
  for (DType t : {kFloat32, kFloat64})
    for (const BnCase& c : bn_cases()) {
      std::string what = fmt::format("batch_norm {}, {}", c.name, dtype_name(t));
      compare(what, [c](auto& v) { return bn_of(v, c); }, bn_inputs(c, t, t));
    }
}

// float16/bfloat16 activations with float32 weight, bias and statistics (mixed precision).
TEST_CASE("batch_norm on half activations with float32 parameters matches the reference") {
  if (no_gpu()) return;
  for (DType t : {kFloat16, kBFloat16})
    for (const BnCase& c : bn_cases()) {
      if (c.x.size() != 4) continue;
      std::string what = fmt::format("batch_norm {}, {}", c.name, dtype_name(t));
      compare(what, [c](auto& v) { return bn_of(v, c).to(kFloat32); }, bn_inputs(c, t, kFloat32),
              true, half_tol(t));
    }
}

// The CNN of examples/train_fashion_mnist.cpp (tb::models::cnn): the same weights on both
// devices, two SGD steps with momentum and weight decay on the same batch; the losses, every
// gradient, the updated parameters and the batch-norm buffers must agree. The CPU side runs the
// default CPU kernels, as the training program does.
TEST_CASE("the Fashion-MNIST CNN: two training steps on CUDA match the CPU's") {
  if (no_gpu()) return;
  for (DType t : {kFloat32, kFloat64}) {
    std::string d = dtype_name(t);
    manual_seed(5);
    auto net = models::create("cnn", {.num_classes = 10, .in_channels = 1});
    net->to(t);
    auto gnet = net->clone();
    gnet->to(kGPU);
    net->train();
    gnet->train();
    Generator g(9);
    Tensor x = randn({16, 1, 28, 28}, {t}, &g), y = randint(0, 10, {16}, {kInt64}, &g);
    Tensor xg = x.to(kGPU), yg = y.to(kGPU);
    optim::SGDOptions o{.lr = 0.05, .momentum = 0.9, .weight_decay = 5e-4};
    optim::SGD opt_c(net->parameters(), o), opt_g(gnet->parameters(), o);
    double tol = tol_for(t);
    for (int step = 0; step < 2; step++) {
      std::string at = fmt::format("{} step {}", d, step);
      Tensor lc = cross_entropy((*net)(x), y), lg = cross_entropy((*gnet)(xg), yg);
      CHECK(lg.device() == kGPU);
      opt_c.zero_grad();
      opt_g.zero_grad();
      lc.backward();
      lg.backward();
      check_close(lg, lc, tol, "loss, " + at);
      auto pc = net->named_parameters(), pg = gnet->named_parameters();
      REQUIRE(pc.size() == pg.size());
      for (size_t i = 0; i < pc.size(); i++) {
        REQUIRE_MESSAGE(pg[i].second.grad().defined(), pc[i].first << ": no gradient on cuda");
        check_close(pg[i].second.grad(), pc[i].second.grad(), tol,
                    "grad " + pc[i].first + ", " + at);
      }
      opt_c.step();
      opt_g.step();
    }
    auto pc = net->named_parameters(), pg = gnet->named_parameters();
    for (size_t i = 0; i < pc.size(); i++) {
      CHECK(pg[i].second.device() == kGPU);
      check_close(pg[i].second, pc[i].second, tol, pc[i].first + " after two steps, " + d);
    }
    auto bc = net->named_buffers(), bg = gnet->named_buffers();
    REQUIRE(bc.size() == bg.size());
    for (size_t i = 0; i < bc.size(); i++)
      check_close(bg[i].second, bc[i].second, tol, bc[i].first + " after two steps, " + d);
  }
}

} // TEST_SUITE
