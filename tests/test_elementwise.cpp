// Elementwise binary/unary ops, comparisons, where, activations, in-place members: kernels (ref vs
// cpu), broadcasting, dtype promotion, layouts, gradients (float64 finite differences), errors.
#include "gradcheck.h"

#include <array>
#include <cmath>
#include <limits>
#include <random>

#include "kernels/elementwise.h"

using namespace tb;
using tbtest::check_error;
using tbtest::gradcheck;
using tbtest::max_abs_diff;
namespace k = tb::kernels;

namespace {

// The two CPU kernel tables, called directly on raw buffers.
const k::ElementwiseKernels& ref = k::ElementwiseKernels::ref;
const k::ElementwiseKernels& fast = k::ElementwiseKernels::cpu;

template <typename T> std::vector<T> random_vec(int64_t n, double lo, double hi, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(lo, hi);
  std::vector<T> v(std::max<int64_t>(n, 1));
  for (auto& x : v) x = (T)u(rng);
  return v;
}

// Uniform in [lo, hi) as a float64 tensor.
Tensor urand(const Shape& s, double lo, double hi, uint64_t seed) {
  Generator g(seed);
  Tensor r = rand(s, kFloat64, &g);
  no_grad ng;
  return add(mul(r, hi - lo), lo);
}

// Uniform in ±[lo, hi): away from the kinks at 0 of abs/relu/sign.
Tensor away_from_zero(const Shape& s, double lo, double hi, uint64_t seed) {
  Tensor m = urand(s, lo, hi, seed);
  Tensor sg = sign(urand(s, -1, 1, seed + 1));
  return where(eq(sg, 0.0), m, mul(m, sg));
}

// A tensor whose device is cuda:0 but whose memory is host memory: only for tests of device
// checks, which must fail before any data is touched.
Tensor fake_cuda_tensor(std::vector<float>& buf, const Shape& s) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::make_shared<Storage>(buf.data(), buf.size() * sizeof(float), cuda_device(0));
  impl->sizes = s;
  impl->strides = contiguous_strides(s);
  impl->dtype = kFloat32;
  return Tensor(impl);
}

// Equal (infinities and NaN included) or within tol relative to |a|.
bool close(double a, double b, double tol) {
  if (a == b || (std::isnan(a) && std::isnan(b))) return true;
  return std::abs(a - b) <= tol * (1 + std::abs(a));
}

const int64_t kSizes[] = {0, 1, 3, 7, 8, 15, 16, 17, 31, 33, 100, 1023, 40000};

} // namespace

TEST_SUITE("elementwise") {

// ---- kernels: cpu twin against the reference -----------------------------------------------------

template <typename T> void check_binary_kernels(DType dt, k::BinaryOp op, double lo, double hi) {
  bool cmp = op >= k::BinaryOp::Eq;
  for (int64_t n : kSizes)
    for (auto [as, bs] : {std::pair<int64_t, int64_t>{1, 1}, {1, 0}, {0, 1}}) {
      auto a = random_vec<T>(n, lo, hi, 11 + n), b = random_vec<T>(n, lo, hi, 12 + n);
      if (n > 2) b[1] = a[1]; // ties for the comparisons and maximum/minimum
      std::vector<T> o1(std::max<int64_t>(n, 1), T(7)), o2 = o1;
      std::vector<uint8_t> c1(std::max<int64_t>(n, 1), 2), c2 = c1;
      void* p1 = cmp ? (void*)c1.data() : (void*)o1.data();
      void* p2 = cmp ? (void*)c2.data() : (void*)o2.data();
      ref.binary(op, dt, a.data(), as, b.data(), bs, p1, n, 0.5);
      fast.binary(op, dt, a.data(), as, b.data(), bs, p2, n, 0.5);
      if (cmp) {
        CHECK(c1 == c2);
        continue;
      }
      int64_t bad = 0;
      for (int64_t i = 0; i < n; i++) bad += !close((double)o1[i], (double)o2[i], 1e-6);
      CHECK_MESSAGE(bad == 0, "op " << (int)op << " dtype " << dtype_name(dt) << " n " << n);
      if (n == 0) CHECK(o2[0] == T(7)); // n = 0 writes nothing
    }
}

TEST_CASE("binary kernels: cpu matches reference on odd sizes, steps and dtypes") {
  using B = k::BinaryOp;
  for (B op : {B::Add, B::Sub, B::Mul, B::Div, B::Pow, B::Maximum, B::Minimum, B::Eq, B::Ne, B::Lt,
               B::Le, B::Gt, B::Ge}) {
    check_binary_kernels<float>(kFloat32, op, 0.1, 3);
    check_binary_kernels<double>(kFloat64, op, 0.1, 3);
    if (op == B::Div || op == B::Pow) continue;
    check_binary_kernels<int32_t>(kInt32, op, -100, 100);
    check_binary_kernels<int64_t>(kInt64, op, -100, 100);
  }
}

TEST_CASE("binary kernels: exact values, integer wrap-around, NaN propagation, missing dtypes") {
  float a[] = {1, -2, 3, NAN}, b[] = {4, 5, NAN, 1}, o[4];
  fast.binary(k::BinaryOp::Sub, kFloat32, a, 1, b, 1, o, 4, 2.0); // a - 2 b
  CHECK(o[0] == -7);
  CHECK(o[1] == -12);
  fast.binary(k::BinaryOp::Maximum, kFloat32, a, 1, b, 1, o, 4, 1.0);
  CHECK(o[0] == 4);
  CHECK(std::isnan(o[2]));
  CHECK(std::isnan(o[3]));
  ref.binary(k::BinaryOp::Minimum, kFloat32, a, 1, b, 1, o, 4, 1.0);
  CHECK(std::isnan(o[2]));
  CHECK(std::isnan(o[3]));
  int32_t big[] = {std::numeric_limits<int32_t>::max()}, one[] = {1}, r1[1], r2[1];
  ref.binary(k::BinaryOp::Add, kInt32, big, 1, one, 1, r1, 1, 1.0);
  fast.binary(k::BinaryOp::Add, kInt32, big, 1, one, 1, r2, 1, 1.0);
  CHECK(r1[0] == std::numeric_limits<int32_t>::min());
  CHECK(r2[0] == r1[0]);
  CHECK_THROWS_AS(fast.binary(k::BinaryOp::Div, kInt32, one, 1, one, 1, r1, 1, 1.0), Error);
  CHECK_THROWS_AS(ref.binary(k::BinaryOp::Add, kUInt8, one, 1, one, 1, r1, 1, 1.0), Error);
  check_error([&] { fast.unary(k::UnaryOp::Exp, kInt64, one, r1, 1, 0, 0); }, {"exp", "int64"});
}

TEST_CASE("unary kernels and their backward: cpu matches reference") {
  using U = k::UnaryOp;
  for (int ui = 0; ui <= (int)U::PowScalar; ui++) {
    U op = (U)ui;
    bool positive = op == U::Log || op == U::Sqrt || op == U::Rsqrt || op == U::PowScalar;
    double lo = positive ? 0.05 : -8, hi = 8;
    for (double p0 : {0.0, 2.0, 0.37, -1.5}) {
      double p1 = op == U::Clamp ? p0 + 1.0 : 0.0;
      for (int64_t n : kSizes) {
        auto x = random_vec<double>(n, lo, hi, 100 + n), dy = random_vec<double>(n, -1, 1, 200 + n);
        if (n > 4) x[2] = 0.0, x[3] = -3.0, x[4] = 6.0; // kinks
        if (positive && n > 4) x[2] = 1.0, x[3] = 3.0, x[4] = 6.0;
        auto xf = std::vector<float>(x.begin(), x.end()), dyf = std::vector<float>(dy.begin(), dy.end());
        std::vector<double> r(x.size()), c(x.size());
        std::vector<float> rf(x.size()), cf(x.size());
        ref.unary(op, kFloat64, x.data(), r.data(), n, p0, p1);
        fast.unary(op, kFloat64, x.data(), c.data(), n, p0, p1);
        ref.unary(op, kFloat32, xf.data(), rf.data(), n, p0, p1);
        fast.unary(op, kFloat32, xf.data(), cf.data(), n, p0, p1);
        int64_t bad = 0;
        for (int64_t i = 0; i < n; i++) bad += !close(r[i], c[i], 1e-12) + !close(rf[i], cf[i], 1e-5);
        CHECK_MESSAGE(bad == 0, "op " << ui << " p0 " << p0 << " n " << n);
        ref.unary_backward(op, kFloat64, x.data(), dy.data(), r.data(), n, p0, p1);
        fast.unary_backward(op, kFloat64, x.data(), dy.data(), c.data(), n, p0, p1);
        ref.unary_backward(op, kFloat32, xf.data(), dyf.data(), rf.data(), n, p0, p1);
        fast.unary_backward(op, kFloat32, xf.data(), dyf.data(), cf.data(), n, p0, p1);
        bad = 0;
        for (int64_t i = 0; i < n; i++) bad += !close(r[i], c[i], 1e-12) + !close(rf[i], cf[i], 1e-5);
        CHECK_MESSAGE(bad == 0, "bwd op " << ui << " p0 " << p0 << " n " << n);
      }
      if (op != U::LeakyRelu && op != U::Clamp && op != U::PowScalar) break; // p0 unused
    }
  }
}

TEST_CASE("where kernels: every element size, every step pattern") {
  for (int64_t n : kSizes) {
    std::vector<uint8_t> cb(std::max<int64_t>(n, 1));
    for (int64_t i = 0; i < (int64_t)cb.size(); i++) cb[i] = (i * 7 + 3) % 5 < 2;
    const bool* c = (const bool*)cb.data();
    auto a = random_vec<double>(n, -5, 5, n), b = random_vec<double>(n, -5, 5, n + 1);
    for (auto steps : {std::array<int64_t, 3>{1, 1, 1}, {0, 1, 1}, {1, 0, 1}, {1, 1, 0}}) {
      std::vector<double> r(a.size()), o(a.size());
      ref.where(kFloat64, c, steps[0], a.data(), steps[1], b.data(), steps[2], r.data(), n);
      fast.where(kFloat64, c, steps[0], a.data(), steps[1], b.data(), steps[2], o.data(), n);
      bool ok = true;
      for (int64_t i = 0; i < n; i++)
        ok = ok && r[i] == (c[i * steps[0]] ? a[i * steps[1]] : b[i * steps[2]]) && o[i] == r[i];
      CHECK_MESSAGE(ok, "n " << n);
    }
    std::vector<uint16_t> h1(cb.size(), 1), h2(cb.size(), 2), ho(cb.size());
    fast.where(kFloat16, c, 1, h1.data(), 1, h2.data(), 1, ho.data(), n);
    std::vector<uint8_t> b1(cb.size(), 1), b0(cb.size(), 0), bo(cb.size());
    ref.where(kBool, c, 1, b1.data(), 1, b0.data(), 1, bo.data(), n);
    bool ok = true;
    for (int64_t i = 0; i < n; i++) ok = ok && ho[i] == (c[i] ? 1 : 2) && bo[i] == cb[i];
    CHECK_MESSAGE(ok, "n " << n);
  }
}

// ---- ops: values, broadcasting, dtypes, layouts ------------------------------------------------

TEST_CASE("binary ops broadcast like numpy and give the right values") {
  Tensor a = from_vector(std::vector<double>{1, 2}, {2, 1});
  Tensor b = from_vector(std::vector<double>{10, 20, 30}, {1, 3});
  Tensor s = add(a, b);
  CHECK(s.shape() == Shape{2, 3});
  CHECK(s.to_vector() == std::vector<double>{11, 21, 31, 12, 22, 32});
  CHECK(sub(a, b, 0.5).to_vector() == std::vector<double>{-4, -9, -14, -3, -8, -13});
  CHECK(mul(a, b).to_vector() == std::vector<double>{10, 20, 30, 20, 40, 60});
  CHECK(div(b, a).to_vector() == std::vector<double>{10, 20, 30, 5, 10, 15});
  CHECK(pow(a, from_vector(std::vector<double>{2, 3}, {2})).to_vector() ==
        std::vector<double>{1, 1, 4, 8});
  Tensor m = from_vector(std::vector<double>{1, 5, 3}, {3});
  Tensor n = from_vector(std::vector<double>{2, 4, 3}, {3});
  CHECK(maximum(m, n).to_vector() == std::vector<double>{2, 5, 3});
  CHECK(minimum(m, n).to_vector() == std::vector<double>{1, 4, 3});
  // 0-d tensors, empty tensors and a [1] against [0]
  CHECK(add(scalar_tensor(2.0, kFloat64), scalar_tensor(3.0, kFloat64)).shape() == Shape{});
  CHECK(add(zeros({0, 3}), ones({3})).shape() == Shape{0, 3});
  CHECK(mul(ones({1}), zeros({0})).shape() == Shape{0});
  // scalar overloads and operators
  CHECK((m + 1.0).to_vector() == std::vector<double>{2, 6, 4});
  CHECK((m - 1.0).to_vector() == std::vector<double>{0, 4, 2});
  CHECK((10.0 - m).to_vector() == std::vector<double>{9, 5, 7});
  CHECK((m * 2.0).to_vector() == std::vector<double>{2, 10, 6});
  CHECK((m / 2.0).to_vector() == std::vector<double>{0.5, 2.5, 1.5});
  CHECK((-m).to_vector() == std::vector<double>{-1, -5, -3});
  CHECK(pow(m, 2.0).to_vector() == std::vector<double>{1, 25, 9});
  CHECK((m + n * 2.0 - m / n).shape() == Shape{3});
}

TEST_CASE("dtype promotion: tensor-tensor promotes, scalars keep the tensor's dtype") {
  Tensor i64 = from_vector(std::vector<int64_t>{1, 2, 3}, {3});
  Tensor f32 = ones({3});
  Tensor i32 = ones({3}, kInt32);
  CHECK(add(i64, f32).dtype() == kFloat32);
  CHECK(add(i32, i64).dtype() == kInt64);
  CHECK(add(f32, ones({3}, kFloat64)).dtype() == kFloat64);
  CHECK(mul(i64, i64).to_vector() == std::vector<double>{1, 4, 9});
  CHECK(div(i64, from_vector(std::vector<int64_t>{2, 2, 2}, {3})).dtype() == kFloat32); // true div
  CHECK(div(i64, 2.0).to_vector() == std::vector<double>{0.5, 1, 1.5});
  CHECK(add(f32, 1.0).dtype() == kFloat32);
  CHECK(mul(i64, 3.0).dtype() == kInt64);
  CHECK(mul(i64, 3.0).to_vector() == std::vector<double>{3, 6, 9});
  CHECK(neg(i64).to_vector() == std::vector<double>{-1, -2, -3});
  CHECK(maximum(i64, from_vector(std::vector<int64_t>{2, 2, 2}, {3})).to_vector() ==
        std::vector<double>{2, 2, 3});
  // small integer and half types compute in int32/float32 and convert back
  Tensor u8 = from_vector(std::vector<int64_t>{250, 3}, {2}).to(kUInt8);
  CHECK(add(u8, u8).dtype() == kUInt8);
  CHECK(add(u8, u8).to_vector() == std::vector<double>{244, 6}); // wraps mod 256
  Tensor h = from_vector(std::vector<float>{1.5f, -2.0f}, {2}).to(kFloat16);
  CHECK(mul(h, h).dtype() == kFloat16);
  CHECK(mul(h, h).to_vector() == std::vector<double>{2.25, 4});
  CHECK(exp(h).dtype() == kFloat16);
  CHECK(relu(h).to_vector() == std::vector<double>{1.5, 0});
  Tensor bf = from_vector(std::vector<float>{1.0f, 4.0f}, {2}).to(kBFloat16);
  CHECK(sqrt(bf).to_vector() == std::vector<double>{1, 2});
}

TEST_CASE("unary ops and activations give PyTorch's values") {
  Tensor x = from_vector(std::vector<double>{-4, -1, 0, 0.5, 2.5, 7}, {6});
  auto v = [](const Tensor& t) { return t.to_vector(); };
  CHECK(v(relu(x)) == std::vector<double>{0, 0, 0, 0.5, 2.5, 7});
  CHECK(v(relu6(x)) == std::vector<double>{0, 0, 0, 0.5, 2.5, 6});
  CHECK(v(leaky_relu(x, 0.1)) == std::vector<double>{-0.4, -0.1, 0, 0.5, 2.5, 7});
  CHECK(v(hardsigmoid(x)) == std::vector<double>{0, 2.0 / 6, 0.5, 3.5 / 6, 5.5 / 6, 1});
  CHECK(v(hardswish(x)) == std::vector<double>{0, -2.0 / 6, 0, 0.5 * 3.5 / 6, 2.5 * 5.5 / 6, 7});
  CHECK(v(abs(x)) == std::vector<double>{4, 1, 0, 0.5, 2.5, 7});
  CHECK(v(sign(x)) == std::vector<double>{-1, -1, 0, 1, 1, 1});
  CHECK(v(clamp(x, -1.0, 2.0)) == std::vector<double>{-1, -1, 0, 0.5, 2, 2});
  CHECK(v(clamp(x, std::nullopt, 0.0)) == std::vector<double>{-4, -1, 0, 0, 0, 0});
  CHECK(v(clamp(x, 3.0, 1.0)) == std::vector<double>(6, 1.0)); // lo > hi: all hi, as PyTorch
  CHECK(v(round(from_vector(std::vector<double>{0.5, 1.5, 2.5, -0.5, -1.7}, {5}))) ==
        std::vector<double>{0, 2, 2, -0, -2}); // half to even
  CHECK(v(floor(from_vector(std::vector<double>{-0.5, 1.5}, {2}))) == std::vector<double>{-1, 1});
  // sigmoid / tanh / silu / gelu against the closed forms (PyTorch: gelu(1) = 0.8413447460685429,
  // gelu(1, tanh) = 0.8411919906082768)
  Tensor one = from_vector(std::vector<double>{1.0}, {1});
  CHECK(sigmoid(one).item() == doctest::Approx(1 / (1 + std::exp(-1.0))).epsilon(1e-15));
  CHECK(tanh(one).item() == doctest::Approx(std::tanh(1.0)).epsilon(1e-15));
  CHECK(silu(one).item() == doctest::Approx(1 / (1 + std::exp(-1.0))).epsilon(1e-15));
  CHECK(gelu(one).item() == doctest::Approx(0.8413447460685429).epsilon(1e-14));
  CHECK(gelu(one, "tanh").item() == doctest::Approx(0.8411919906082768).epsilon(1e-14));
  CHECK(sigmoid(from_vector(std::vector<double>{-1000, 1000}, {2})).to_vector() ==
        std::vector<double>{0, 1});
  Tensor p = from_vector(std::vector<double>{4, 0.25}, {2});
  CHECK(v(sqrt(p)) == std::vector<double>{2, 0.5});
  CHECK(v(rsqrt(p)) == std::vector<double>{0.5, 2});
  CHECK(v(reciprocal(p)) == std::vector<double>{0.25, 4});
  CHECK(v(square(p)) == std::vector<double>{16, 0.0625});
  CHECK(log(exp(p)).to_vector()[0] == doctest::Approx(4.0));
  // relu propagates NaN like PyTorch
  CHECK(std::isnan(relu(from_vector(std::vector<double>{NAN}, {1})).item()));
}

TEST_CASE("comparisons, where, logical_not, isfinite, allclose") {
  Tensor a = from_vector(std::vector<double>{1, 2, 3}, {3});
  Tensor b = from_vector(std::vector<double>{3, 2, 1}, {3});
  CHECK(eq(a, b).dtype() == kBool);
  CHECK(eq(a, b).to_vector() == std::vector<double>{0, 1, 0});
  CHECK(ne(a, b).to_vector() == std::vector<double>{1, 0, 1});
  CHECK(lt(a, b).to_vector() == std::vector<double>{1, 0, 0});
  CHECK(le(a, b).to_vector() == std::vector<double>{1, 1, 0});
  CHECK(gt(a, b).to_vector() == std::vector<double>{0, 0, 1});
  CHECK(ge(a, b).to_vector() == std::vector<double>{0, 1, 1});
  CHECK(gt(a, 1.5).to_vector() == std::vector<double>{0, 1, 1});
  CHECK(le(a, 2.0).to_vector() == std::vector<double>{1, 1, 0});
  CHECK(eq(a, 3.0).to_vector() == std::vector<double>{0, 0, 1});
  CHECK(lt(a, 2.0).to_vector() == std::vector<double>{1, 0, 0});
  CHECK(ge(a, 3.0).to_vector() == std::vector<double>{0, 0, 1});
  Tensor ints = from_vector(std::vector<int64_t>{1, 2, 3}, {3});
  CHECK(lt(ints, 2.5).to_vector() == std::vector<double>{1, 1, 0}); // not truncated to 2
  CHECK(eq(eq(a, b), eq(b, a)).to_vector() == std::vector<double>{1, 1, 1}); // bool inputs
  // broadcasting comparison
  CHECK(lt(a.reshape({3, 1}), b).shape() == Shape{3, 3});
  Tensor ar = a.detach().requires_grad_(true);
  CHECK(!gt(ar, 0.0).requires_grad());

  Tensor c = gt(a, 1.5);
  CHECK(where(c, a, b).to_vector() == std::vector<double>{3, 2, 3});
  CHECK(where(c, a, scalar_tensor(0.0, kFloat64)).to_vector() == std::vector<double>{0, 2, 3});
  CHECK(where(c.reshape({3, 1}), a, b).shape() == Shape{3, 3});
  CHECK(where(c, ones({3}, kInt64), zeros({3}, kInt64)).dtype() == kInt64);
  CHECK(where(c, ones({3}), zeros({3}, kFloat64)).dtype() == kFloat64);

  CHECK(logical_not(c).to_vector() == std::vector<double>{1, 0, 0});
  CHECK(logical_not(from_vector(std::vector<double>{0, 2, NAN}, {3})).to_vector() ==
        std::vector<double>{1, 0, 0});
  double inf = std::numeric_limits<double>::infinity();
  CHECK(isfinite(from_vector(std::vector<double>{1, inf, -inf, NAN}, {4})).to_vector() ==
        std::vector<double>{1, 0, 0, 0});
  CHECK(isfinite(ints).to_vector() == std::vector<double>{1, 1, 1});

  CHECK(allclose(a, a + 1e-9));
  CHECK(!allclose(a, a + 1e-3));
  CHECK(allclose(a, a + 1e-3, 1e-2));
  CHECK(allclose(from_vector(std::vector<double>{inf}, {1}), from_vector(std::vector<double>{inf}, {1})));
  CHECK(!allclose(from_vector(std::vector<double>{NAN}, {1}), from_vector(std::vector<double>{NAN}, {1})));
  CHECK(allclose(ones({2, 3}), ones({3})));
}

TEST_CASE("layouts: channels-last and permuted inputs keep their layout; others materialise") {
  Generator g(3);
  Tensor x = randn({2, 3, 4, 5}, kFloat32, &g).contiguous_channels_last();
  Tensor y = randn({2, 3, 4, 5}, kFloat32, &g).contiguous_channels_last();
  REQUIRE(x.is_channels_last());
  Tensor r = relu(x);
  CHECK(r.is_channels_last());
  CHECK(r.strides() == x.strides());
  CHECK(max_abs_diff(r, relu(x.contiguous())) == 0);
  Tensor s = add(x, y);
  CHECK(s.is_channels_last());
  CHECK(max_abs_diff(s, add(x.contiguous(), y.contiguous())) == 0);
  CHECK(mul(x, 2.0).is_channels_last()); // a 1-element operand walks with step 0
  CHECK(gelu(x).is_channels_last());
  // mixed layouts: values right, the output follows the first full-shape dense operand
  Tensor m = add(x, y.contiguous());
  CHECK(m.is_channels_last());
  CHECK(max_abs_diff(m, s) == 0);
  Tensor mc = add(x.contiguous(), y);
  CHECK(mc.is_contiguous());
  CHECK(max_abs_diff(mc, s) == 0);
  // a per-channel factor broadcast against a channels-last activation keeps channels-last
  Tensor bias = randn({3, 1, 1}, kFloat32, &g);
  Tensor xb = add(x, bias);
  CHECK(xb.is_channels_last());
  CHECK(max_abs_diff(xb, add(x.contiguous(), bias)) == 0);
  Tensor bx = mul(bias, x);
  CHECK(bx.is_channels_last());
  CHECK(max_abs_diff(bx, mul(bias, x.contiguous())) == 0);
  // non-dense input (a transposed slice) -> correct values
  Tensor base = randn({6, 5}, kFloat64, &g);
  Tensor t = base.t().narrow(0, 1, 3);
  REQUIRE(!is_dense(t));
  Tensor e = exp(t);
  CHECK(max_abs_diff(e, exp(t.contiguous())) == 0);
  // relu backward keeps channels-last gradients
  Tensor xr = x.detach().requires_grad_(true);
  sum(relu(xr)).backward();
  CHECK(max_abs_diff(xr.grad(), gt(x, 0.0).to(kFloat32)) == 0);
  Tensor gy = randn({2, 3, 4, 5}, kFloat32, &g); // a contiguous gradient meets channels-last x
  Tensor dx = tb::grad({relu(xr)}, {xr}, {gy})[0];
  CHECK(dx.is_channels_last());
  CHECK(max_abs_diff(dx, mul(gy, gt(x, 0.0).to(kFloat32))) == 0);
}

// ---- gradients (float64 finite differences) ------------------------------------------------------

TEST_CASE("gradcheck: binary ops, with broadcasting") {
  std::vector<std::pair<Shape, Shape>> shapes = {{{2, 3}, {2, 3}}, {{2, 3}, {3}}, {{2, 1}, {1, 3}}, {{}, {2, 2}}, {{4, 1, 3}, {2, 1}}};
  for (auto& [sa, sb] : shapes) {
    Tensor a = urand(sa, 0.5, 2, 5), b = urand(sb, 0.5, 2, 6);
    Tensor a2 = away_from_zero(sa, 0.5, 2, 7), b2 = away_from_zero(sb, 0.5, 2, 8);
    CHECK(gradcheck([](auto& x) { return add(x[0], x[1], 0.7); }, {a2, b2}));
    CHECK(gradcheck([](auto& x) { return sub(x[0], x[1], 1.3); }, {a2, b2}));
    CHECK(gradcheck([](auto& x) { return mul(x[0], x[1]); }, {a2, b2}));
    CHECK(gradcheck([](auto& x) { return div(x[0], x[1]); }, {a2, b2}));
    CHECK(gradcheck([](auto& x) { return pow(x[0], x[1]); }, {a, sub(b, 1.0)}));
    // maximum/minimum: keep the inputs apart (ties have their own test below)
    CHECK(gradcheck([](auto& x) { return maximum(x[0], x[1]); }, {a2, add(b2, 0.05)}));
    CHECK(gradcheck([](auto& x) { return minimum(x[0], x[1]); }, {a2, add(b2, 0.05)}));
    Tensor c = gt(urand(broadcast_shapes("t", sa, sb), 0, 1, 9), 0.5);
    CHECK(gradcheck([c](auto& x) { return where(c, x[0], x[1]); }, {a, b}));
  }
}

TEST_CASE("gradcheck: scalar overloads and unary ops") {
  Tensor x = away_from_zero({3, 4}, 0.2, 2, 10), pos = urand({3, 4}, 0.3, 3, 11);
  CHECK(gradcheck([](auto& v) { return add(v[0], 2.0); }, {x}));
  CHECK(gradcheck([](auto& v) { return sub(v[0], 2.0); }, {x}));
  CHECK(gradcheck([](auto& v) { return mul(v[0], -3.0); }, {x}));
  CHECK(gradcheck([](auto& v) { return div(v[0], 4.0); }, {x}));
  CHECK(gradcheck([](auto& v) { return rsub(v[0], 1.5); }, {x}));
  CHECK(gradcheck([](auto& v) { return -v[0]; }, {x}));
  CHECK(gradcheck([](auto& v) { return neg(v[0]); }, {x}));
  CHECK(gradcheck([](auto& v) { return exp(v[0]); }, {x}));
  CHECK(gradcheck([](auto& v) { return abs(v[0]); }, {x}));
  CHECK(gradcheck([](auto& v) { return square(v[0]); }, {x}));
  CHECK(gradcheck([](auto& v) { return reciprocal(v[0]); }, {x}));
  CHECK(gradcheck([](auto& v) { return log(v[0]); }, {pos}));
  CHECK(gradcheck([](auto& v) { return sqrt(v[0]); }, {pos}));
  CHECK(gradcheck([](auto& v) { return rsqrt(v[0]); }, {pos}));
  CHECK(gradcheck([](auto& v) { return pow(v[0], 2.5); }, {pos}));
  CHECK(gradcheck([](auto& v) { return pow(v[0], -1.5); }, {pos}));
  CHECK(gradcheck([](auto& v) { return pow(v[0], 3.0); }, {x}));
  CHECK(gradcheck([](auto& v) { return pow(v[0], 0.0); }, {x}));
  Tensor cl = from_vector(std::vector<double>{-2, -0.5, 0.3, 0.9, 1.7, 3}, {6});
  CHECK(gradcheck([](auto& v) { return clamp(v[0], -1.0, 1.0); }, {cl}));
  CHECK(gradcheck([](auto& v) { return clamp(v[0], 0.0, std::nullopt); }, {cl}));
  // sign, round and floor have zero gradient (checked away from their steps)
  Tensor st = from_vector(std::vector<double>{-1.3, -0.2, 0.4, 1.2}, {4});
  CHECK(gradcheck([](auto& v) { return sign(v[0]); }, {st}));
  CHECK(gradcheck([](auto& v) { return round(v[0]); }, {st}));
  CHECK(gradcheck([](auto& v) { return floor(v[0]); }, {st}));
}

TEST_CASE("gradcheck: activations (inputs away from kinks)") {
  // points in every linear piece of relu6/hardswish/hardsigmoid, none on a kink
  Tensor x = from_vector(std::vector<double>{-5, -3.5, -2.2, -0.7, 0.4, 1.1, 2.6, 3.4, 5.5, 7}, {2, 5});
  CHECK(gradcheck([](auto& v) { return relu(v[0]); }, {x}));
  CHECK(gradcheck([](auto& v) { return relu6(v[0]); }, {x}));
  CHECK(gradcheck([](auto& v) { return leaky_relu(v[0], 0.2); }, {x}));
  CHECK(gradcheck([](auto& v) { return sigmoid(v[0]); }, {x}));
  CHECK(gradcheck([](auto& v) { return tanh(v[0]); }, {x}));
  CHECK(gradcheck([](auto& v) { return silu(v[0]); }, {x}));
  CHECK(gradcheck([](auto& v) { return hardswish(v[0]); }, {x}));
  CHECK(gradcheck([](auto& v) { return hardsigmoid(v[0]); }, {x}));
  CHECK(gradcheck([](auto& v) { return gelu(v[0]); }, {x}));
  CHECK(gradcheck([](auto& v) { return gelu(v[0], "tanh"); }, {x}));
}

TEST_CASE("gradients at the kinks follow PyTorch") {
  auto grad_of = [](std::function<Tensor(const Tensor&)> f, std::vector<double> xs) {
    Tensor x = from_vector(xs, {(int64_t)xs.size()}).requires_grad_(true);
    sum(f(x)).backward();
    return x.grad().to_vector();
  };
  CHECK(grad_of([](auto& x) { return relu(x); }, {0.0}) == std::vector<double>{0});
  CHECK(grad_of([](auto& x) { return relu6(x); }, {0.0, 6.0}) == std::vector<double>{0, 0});
  CHECK(grad_of([](auto& x) { return abs(x); }, {0.0}) == std::vector<double>{0});
  CHECK(grad_of([](auto& x) { return clamp(x, 0.0, 1.0); }, {0.0, 1.0}) == std::vector<double>{1, 1});
  CHECK(grad_of([](auto& x) { return hardsigmoid(x); }, {-3.0, 3.0}) == std::vector<double>{0, 0});
  CHECK(grad_of([](auto& x) { return hardswish(x); }, {-3.0, 3.0}) == std::vector<double>{-0.5, 1.5});
  CHECK(grad_of([](auto& x) { return leaky_relu(x, 0.1); }, {0.0}) == std::vector<double>{0.1});
  CHECK(grad_of([](auto& x) { return pow(x, 0.0); }, {0.0}) == std::vector<double>{0});
  // maximum/minimum split ties half-half
  Tensor a = from_vector(std::vector<double>{1, 2, 3}, {3}).requires_grad_(true);
  Tensor b = from_vector(std::vector<double>{1, 5, 0}, {3}).requires_grad_(true);
  sum(maximum(a, b)).backward();
  CHECK(a.grad().to_vector() == std::vector<double>{0.5, 0, 1});
  CHECK(b.grad().to_vector() == std::vector<double>{0.5, 1, 0});
  Tensor c = from_vector(std::vector<double>{1, 2, 3}, {3}).requires_grad_(true);
  Tensor d = from_vector(std::vector<double>{1, 5, 0}, {3}).requires_grad_(true);
  sum(minimum(c, d)).backward();
  CHECK(c.grad().to_vector() == std::vector<double>{0.5, 1, 0});
  CHECK(d.grad().to_vector() == std::vector<double>{0.5, 0, 1});
  // pow: d/db at a = 0 is 0 for b >= 0 (PyTorch masks the 0 * -inf)
  Tensor pa = from_vector(std::vector<double>{0, 0}, {2}).requires_grad_(true);
  Tensor pb = from_vector(std::vector<double>{2, 0}, {2}).requires_grad_(true);
  sum(pow(pa, pb)).backward();
  CHECK(pb.grad().to_vector() == std::vector<double>{0, 0});
  CHECK(pa.grad().to_vector() == std::vector<double>{0, 0});
}

TEST_CASE("gradients of mixed-dtype ops arrive in each input's dtype") {
  Tensor a = ones({2, 3}, kFloat32).requires_grad_(true);
  Tensor b = full({3}, 2.0, kFloat64).requires_grad_(true);
  Tensor y = mul(a, b);
  CHECK(y.dtype() == kFloat64);
  sum(y).backward();
  CHECK(a.grad().dtype() == kFloat32);
  CHECK(b.grad().dtype() == kFloat64);
  CHECK(a.grad().to_vector() == std::vector<double>(6, 2.0));
  CHECK(b.grad().to_vector() == std::vector<double>(3, 2.0));
}

// ---- in-place members ------------------------------------------------------------------------------

TEST_CASE("in-place add_, mul_, clamp_: values, broadcasting, layouts, versions") {
  Tensor x = from_vector(std::vector<double>{1, 2, 3, 4, 5, 6}, {2, 3});
  uint64_t v0 = x.version();
  x.add_(from_vector(std::vector<double>{1, 1, 1}, {3}), 2.0);
  CHECK(x.to_vector() == std::vector<double>{3, 4, 5, 6, 7, 8});
  CHECK(x.version() > v0);
  x.mul_(0.5);
  CHECK(x.to_vector() == std::vector<double>{1.5, 2, 2.5, 3, 3.5, 4});
  x.mul_(from_vector(std::vector<double>{2, 0}, {2, 1}));
  CHECK(x.to_vector() == std::vector<double>{3, 4, 5, 0, 0, 0});
  x.clamp_(3.5, 4.5);
  CHECK(x.to_vector() == std::vector<double>{3.5, 4, 4.5, 3.5, 3.5, 3.5});
  x.add_(x); // self-alias
  CHECK(x.to_vector() == std::vector<double>{7, 8, 9, 7, 7, 7});
  // a non-dense view writes through to its base
  Tensor base = zeros({3, 4}, kFloat64);
  Tensor col = base.narrow(1, 1, 2);
  col.add_(ones({2}, kFloat64));
  CHECK(base.to_vector() == std::vector<double>{0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0});
  base.t().clamp_(0.0, 0.5);
  CHECK(base.to_vector() == std::vector<double>{0, 0.5, 0.5, 0, 0, 0.5, 0.5, 0, 0, 0.5, 0.5, 0});
  // overlapping views of the same storage: staged, not read after write
  Tensor r = from_vector(std::vector<double>{1, 2, 3, 4}, {4});
  r.narrow(0, 1, 3).add_(r.narrow(0, 0, 3));
  CHECK(r.to_vector() == std::vector<double>{1, 3, 5, 7});
  // dtype: float32 += float64 stays float32; int += float refused
  Tensor f = ones({2});
  f.add_(full({2}, 0.5, kFloat64));
  CHECK(f.dtype() == kFloat32);
  CHECK(f.to_vector() == std::vector<double>{1.5, 1.5});
  Tensor h = ones({2}, kFloat16);
  h.mul_(3.0);
  CHECK(h.to_vector() == std::vector<double>{3, 3});
  check_error([] { Tensor i = ones({2}, kInt64); i.add_(ones({2})); }, {"add_", "float32", "int64"});
  check_error([] { Tensor s = ones({3}); s.add_(ones({2, 3})); }, {"add_", "[2, 3]", "[3]"});
  // channels-last stays channels-last
  Tensor cl = ones({1, 2, 2, 2}).contiguous_channels_last();
  cl.mul_(ones({1, 2, 2, 2}).contiguous_channels_last());
  CHECK(cl.is_channels_last());
}

TEST_CASE("in-place ops refuse tensors that require grad while grad mode is on") {
  Tensor w = ones({3}).requires_grad_(true);
  check_error([&] { w.add_(ones({3})); }, {"add_", "requires grad"});
  check_error([&] { w.mul_(2.0); }, {"mul_", "requires grad"});
  check_error([&] { w.clamp_(0, 1); }, {"clamp_", "requires grad"});
  {
    no_grad ng;
    w.add_(ones({3}));
    w.clamp_(0, 1.5);
  }
  CHECK(w.to_vector() == std::vector<double>{1.5, 1.5, 1.5});
  // a saved tensor modified in place is detected at backward
  Tensor a = ones({3}).requires_grad_(true);
  Tensor b = ones({3});
  Tensor y = mul(a, b);
  b.add_(ones({3}));
  CHECK_THROWS_AS(sum(y).backward(), Error);
}

// ---- errors ------------------------------------------------------------------------------------

TEST_CASE("errors name the op, the shapes, dtypes and devices") {
  check_error([] { add(ones({2, 3}), ones({4})); }, {"add", "[2, 3]", "[4]"});
  check_error([] { mul(ones({2}), ones({3})); }, {"mul", "[2]", "[3]"});
  check_error([] { where(ones({2}), ones({2}), ones({2})); }, {"where", "bool", "float32"});
  check_error([] { exp(ones({2}, kBool)); }, {"exp", "bool"});
  check_error([] { relu(ones({2}, kInt64)); }, {"relu", "int64"});
  check_error([] { gelu(ones({2}), "fast"); }, {"gelu", "fast"});
  check_error([] { clamp(ones({2}), std::nullopt, std::nullopt); }, {"clamp"});
  check_error([] { pow(ones({2}, kInt64), ones({2}, kInt64)); }, {"pow", "int64"});
  check_error([] { neg(ones({2}, kBool)); }, {"neg", "bool"});
  check_error([] { add(Tensor(), ones({2})); }, {"add"});
  check_error([] { allclose(ones({2}), ones({2}, kFloat64)); }, {"allclose"});
  std::vector<float> buf(4, 1.0f);
  Tensor gpu = fake_cuda_tensor(buf, {4});
  check_error([&] { add(ones({4}), gpu); }, {"add", "cpu", "cuda:0"});
  check_error([&] { where(gt(ones({4}), 0.0), ones({4}), gpu); }, {"where", "cpu", "cuda:0"});
  check_error([&] { eq(gpu, ones({4})); }, {"eq", "cpu", "cuda:0"});
}

} // TEST_SUITE
