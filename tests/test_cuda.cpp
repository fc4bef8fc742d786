// tests/test_cuda.cpp — what is particular to CUDA: device information, copies and dtype
// conversion on the device, the caching allocator, mixing devices, reductions long enough for the
// multi-block (two-pass) kernels, and an MLP trained on the GPU. Every op against the reference
// kernels, case by case: tests/test_backend_ops.cpp, which also runs on CUDA. Without a GPU each
// case says "no CUDA device: skipped" and passes; the first case checks that such a machine
// refuses CUDA tensors with a clear tb::Error instead of crashing.
//
// Tolerances: float64 results differ only by the order of the additions (tree reductions, cuBLAS
// blocking) and by a few ulps in exp/log/erf, so 1e-10 relative; float32 the same at 1e-4.
#include "gradcheck.h"

#include <functional>
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

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

void compare_on(const std::string& what, const Fn& f, const std::vector<Tensor>& inputs,
                bool grads) {
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
  double tol = tol_for(yc.dtype());
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

// Runs f on CPU copies and on GPU copies of `inputs`; compares outputs, then the gradients of
// sum(f * r) for a fixed random r with respect to every floating input (when `grads`). The CPU
// side runs the reference kernels (kernels/ref/), so every CUDA kernel is checked against the
// readable specification of its op.
void compare(const std::string& what, const Fn& f, const std::vector<Tensor>& inputs,
             bool grads = true) {
  struct UseReferenceKernels { // restored even when a REQUIRE ends the test case
    CpuKernels prev = cpu_kernels();
    UseReferenceKernels() { set_cpu_kernels(CpuKernels::Reference); }
    ~UseReferenceKernels() { set_cpu_kernels(prev); }
  } scope;
  compare_on(what, f, inputs, grads);
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

} // TEST_SUITE
