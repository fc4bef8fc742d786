// tests/test_reduce.cpp — sum, mean, var, max/min, argmax/argmin, norm: values against hand
// computations, float64 gradient checks, errors, and the fast kernels against their reference
// twins (kernels/ref/reduce.cpp) on random shapes.
#include "gradcheck.h"

#include <cmath>
#include <limits>

#include "kernels/reduce.h"

using namespace tb;
using tbtest::check_error;
using tbtest::gradcheck;
using tbtest::max_abs_diff;
using tbtest::r64;

namespace {

// The two CPU kernel tables, called directly on raw buffers.
const kernels::ReduceKernels& ref = kernels::ReduceKernels::ref;
const kernels::ReduceKernels& fast = kernels::ReduceKernels::cpu;

} // namespace

TEST_SUITE("reduce") {

TEST_CASE("sum and mean: values, dims, keepdim") {
  Tensor x = from_vector(std::vector<double>{1, 2, 3, 4, 5, 6}, {2, 3});
  CHECK(sum(x).item() == 21);
  CHECK(sum(x).dim() == 0);
  CHECK(sum(x, {0}).to_vector() == std::vector<double>{5, 7, 9});
  CHECK(sum(x, {1}).to_vector() == std::vector<double>{6, 15});
  CHECK(sum(x, {-1}, true).shape() == Shape{2, 1});
  CHECK(sum(x, {0, 1}, true).shape() == Shape{1, 1});
  CHECK(mean(x).item() == doctest::Approx(3.5));
  CHECK(mean(x, {0}).to_vector() == std::vector<double>{2.5, 3.5, 4.5});
  // non-adjacent dims of a 3-D tensor (the permute-and-copy path)
  Tensor y = arange(24, {kFloat64}).reshape({2, 3, 4});
  Tensor s02 = sum(y, {0, 2});
  CHECK(s02.shape() == Shape{3});
  CHECK(s02.to_vector() == std::vector<double>{0 + 1 + 2 + 3 + 12 + 13 + 14 + 15,
                                               4 + 5 + 6 + 7 + 16 + 17 + 18 + 19,
                                               8 + 9 + 10 + 11 + 20 + 21 + 22 + 23});
  CHECK(sum(y, {2, 0}, true).shape() == Shape{1, 3, 1});
  // a transposed input and a channels-last one read in place
  CHECK(sum(y.transpose(0, 2), {1}).to_vector() == sum(y, {1}).t().contiguous().to_vector());
  Tensor z = r64({2, 3, 4, 5}, 1);
  Tensor zc = z.contiguous_channels_last();
  for (Shape dims : {Shape{0, 2, 3}, Shape{1}, Shape{2, 3}, Shape{0}, Shape{1, 3}}) {
    CHECK(max_abs_diff(sum(zc, dims), sum(z, dims)) < 1e-12);
    CHECK(max_abs_diff(mean(zc, dims, true), mean(z, dims, true)) < 1e-12);
  }
  // integer and bool sums are int64 (counting correct predictions)
  Tensor b = from_vector(std::vector<double>{1, 0, 2, 2}, {4});
  Tensor hits = eq(b, from_vector(std::vector<double>{1, 1, 2, 0}, {4}));
  CHECK(sum(hits).dtype() == kInt64);
  CHECK(sum(hits).item() == 2);
  CHECK(sum(from_vector(std::vector<int64_t>{3, 4, 5}, {3})).item() == 12);
  // empty reductions
  CHECK(sum(zeros({0, 3}, {kFloat64}), {0}).to_vector() == std::vector<double>{0, 0, 0});
  // scalars
  Tensor s = scalar_tensor(2.5, {kFloat64});
  CHECK(sum(s).item() == 2.5);
  CHECK(sum(s, {0}).item() == 2.5);
  CHECK(mean(s, {-1}, true).dim() == 0);
  // float32 sums accumulate in double: 1e6 ones of magnitude 0.1 stay accurate
  CHECK(sum(full({1000000}, 0.1, {kFloat32})).item() == doctest::Approx(100000.0).epsilon(1e-6));
}

TEST_CASE("var: Bessel correction, dims, keepdim") {
  Tensor x = from_vector(std::vector<double>{1, 2, 3, 4, 6, 8}, {2, 3});
  CHECK(var(x).item() == doctest::Approx(34.0 / 5));  // mean 4, squared deviations sum to 34
  CHECK(var(x, {}, 0).item() == doctest::Approx(34.0 / 6));
  CHECK(var(x, {1}).to_vector() == std::vector<double>{1.0, 4.0});
  CHECK(var(x, {0}, 1, true).shape() == Shape{1, 3});
  auto v0 = var(x, {0}).to_vector();
  CHECK(v0[0] == doctest::Approx(4.5));
  CHECK(v0[2] == doctest::Approx(12.5));
  CHECK(std::isnan(var(from_vector(std::vector<double>{3}, {1})).item()));  // 0/0, as PyTorch
  check_error([] { var(arange(4)); }, {"var", "int64"});
}

TEST_CASE("max/min over a dim: values, indices, first index on ties, NaN") {
  Tensor x = from_vector(std::vector<double>{1, 5, 5, -2, 0, -2}, {2, 3});
  auto mx = max(x, 1);
  CHECK(mx.values.to_vector() == std::vector<double>{5, 0});
  CHECK(mx.indices.to_int_vector() == std::vector<int64_t>{1, 1});
  CHECK(mx.indices.dtype() == kInt64);
  auto mn = min(x, 1, true);
  CHECK(mn.values.shape() == Shape{2, 1});
  CHECK(mn.indices.to_int_vector() == std::vector<int64_t>{0, 0});
  CHECK(max(x, 0).indices.to_int_vector() == std::vector<int64_t>{0, 0, 0});
  CHECK(argmax(x, 1).to_int_vector() == std::vector<int64_t>{1, 1});
  CHECK(argmin(x, -1).to_int_vector() == std::vector<int64_t>{0, 0});
  CHECK(argmax(x, 0, true).shape() == Shape{1, 3});
  double nan = std::numeric_limits<double>::quiet_NaN();
  Tensor xn = from_vector(std::vector<double>{1, nan, 3, nan}, {4});
  CHECK(std::isnan(max(xn, 0).values.item()));
  CHECK(max(xn, 0).indices.item() == 1);
  CHECK(std::isnan(min(xn).item()));  // NaN propagates in the full reduction too
  // int64 inputs keep their dtype; no gradient
  Tensor xi = from_vector(std::vector<int64_t>{4, 9, 2}, {3});
  CHECK(max(xi, 0).values.dtype() == kInt64);
  CHECK(max(xi).item() == 9);
  CHECK(min(xi).item() == 2);
  check_error([] { max(zeros({2, 0}), 1); }, {"max", "size 0", "[2, 0]"});
  check_error([] { min(zeros({0})); }, {"min", "empty"});
  check_error([] { argmax(zeros({2, 3}), 2); }, {"argmax", "dim 2"});
}

TEST_CASE("reduction errors name the op") {
  check_error([] { sum(zeros({2, 3}), {0, 0}); }, {"sum", "multiple times"});
  check_error([] { mean(zeros({2, 3}), {3}); }, {"mean", "out of range"});
  check_error([] { mean(arange(3)); }, {"mean", "int64"});
  check_error([] { norm(arange(3)); }, {"norm", "int64"});
}

TEST_CASE("gradcheck: sum, mean, var") {
  Tensor x = r64({3, 4, 5}, 2);
  for (Shape dims : {Shape{}, Shape{0}, Shape{1}, Shape{2}, Shape{0, 2}, Shape{-1, 0}}) {
    for (bool keep : {false, true}) {
      CAPTURE(shape_str(dims));
      CAPTURE(keep);
      CHECK(gradcheck([&](auto& in) { return sum(in[0], dims, keep); }, {x}));
      CHECK(gradcheck([&](auto& in) { return mean(in[0], dims, keep); }, {x}));
      CHECK(gradcheck([&](auto& in) { return var(in[0], dims, 1, keep); }, {x}));
    }
  }
  CHECK(gradcheck([&](auto& in) { return var(in[0], {1}, 0); }, {x}));
  // a channels-last input: the kernel reads it in place and the output has its memory order
  Tensor xc = r64({2, 3, 4, 4}, 3);
  CHECK(gradcheck([&](auto& in) { return sum(in[0].contiguous_channels_last(), {0, 2, 3}); }, {xc}));
  CHECK(gradcheck([&](auto& in) { return var(in[0].contiguous_channels_last(), {0, 2, 3}); }, {xc}));
}

TEST_CASE("gradcheck: max/min over a dim, over everything, norm") {
  // distinct values keep finite differences away from ties
  Tensor x = r64({3, 4, 5}, 4);
  for (int64_t d : {0, 1, 2, -1}) {
    for (bool keep : {false, true}) {
      CHECK(gradcheck([&](auto& in) { return max(in[0], d, keep).values; }, {x}));
      CHECK(gradcheck([&](auto& in) { return min(in[0], d, keep).values; }, {x}));
    }
  }
  CHECK(gradcheck([&](auto& in) { return max(in[0].transpose(0, 2), 1).values; }, {x}));
  CHECK(gradcheck([&](auto& in) { return max(in[0]); }, {x}));
  CHECK(gradcheck([&](auto& in) { return min(in[0]); }, {x}));
  CHECK(gradcheck([&](auto& in) { return norm(in[0]); }, {x}));
}

TEST_CASE("max/min gradients on ties follow PyTorch") {
  // over a dim: all of g goes to the returned (first) index
  Tensor x = from_vector(std::vector<double>{2, 7, 7, 1}, {4});
  x.requires_grad_(true);
  max(x, 0).values.backward();
  CHECK(x.grad().to_vector() == std::vector<double>{0, 1, 0, 0});
  // over everything: g is split evenly among the tied elements
  Tensor y = from_vector(std::vector<double>{2, 7, 7, 1, 7}, {5});
  y.requires_grad_(true);
  mul(max(y), 3.0).backward();
  CHECK(y.grad().to_vector() == std::vector<double>{0, 1, 1, 0, 1});
  Tensor z = from_vector(std::vector<double>{-1, -1, 4}, {3});
  z.requires_grad_(true);
  min(z).backward();
  CHECK(z.grad().to_vector() == std::vector<double>{0.5, 0.5, 0});
  // norm at zero: gradient 0, not NaN
  Tensor w = zeros({3}, {kFloat64});
  w.requires_grad_(true);
  norm(w).backward();
  CHECK(w.grad().to_vector() == std::vector<double>{0, 0, 0});
  CHECK(norm(from_vector(std::vector<double>{3, 4}, {2})).item() == doctest::Approx(5.0));
}

TEST_CASE("fast reduce kernels match the reference on random shapes") {
  Generator g(7);
  struct Case { int64_t o, r, i; };
  std::vector<Case> cases = {{1, 1, 1},   {1, 100000, 1}, {3, 40000, 1}, {7, 13, 1},  {1, 17, 300},
                             {5, 33, 257}, {2, 20000, 3},  {64, 1, 1},   {1, 0, 5},    {4, 9, 1000},
                             {300, 5, 2},  {1, 70000, 2}, {20, 5000, 1}, {16, 3000, 300}};
  for (auto c : cases) {
    CAPTURE(c.o);
    CAPTURE(c.r);
    CAPTURE(c.i);
    for (DType dt : {kFloat32, kFloat64}) {
      Tensor x = randn({c.o, c.r, c.i}, {dt}, &g);
      Tensor a = empty({c.o, c.i}, {dt}), b = empty({c.o, c.i}, {dt});
      ref.sum(dt, x.raw_data(), a.raw_data(), c.o, c.r, c.i, 0.5);
      fast.sum(dt, x.raw_data(), b.raw_data(), c.o, c.r, c.i, 0.5);
      // both accumulate in double; only the order differs
      CHECK(max_abs_diff(a, b) < (dt == kFloat32 ? 1e-4 : 1e-9));
      Tensor va = empty({c.o, c.i}, {dt}), vb = empty({c.o, c.i}, {dt});
      Tensor ma = empty({c.o, c.i}, {dt}), mb = empty({c.o, c.i}, {dt});
      ref.var(dt, x.raw_data(), va.raw_data(), ma.raw_data(), c.o, c.r, c.i, 1);
      fast.var(dt, x.raw_data(), vb.raw_data(), mb.raw_data(), c.o, c.r, c.i, 1);
      if (c.r > 1) {
        CHECK(max_abs_diff(va, vb) < (dt == kFloat32 ? 1e-5 : 1e-12));
        CHECK(max_abs_diff(ma, mb) < (dt == kFloat32 ? 1e-6 : 1e-12));
      }
      if (c.r == 0) continue;
      for (auto op : {kernels::ArgReduceOp::Max, kernels::ArgReduceOp::Min}) {
        Tensor ia = empty({c.o, c.i}, {kInt64}), ib = empty({c.o, c.i}, {kInt64});
        ref.arg(op, dt, x.raw_data(), a.raw_data(), ia.data<int64_t>(), c.o, c.r, c.i);
        fast.arg(op, dt, x.raw_data(), b.raw_data(), ib.data<int64_t>(), c.o, c.r, c.i);
        CHECK(max_abs_diff(a, b) == 0);
        CHECK(ia.to_int_vector() == ib.to_int_vector());
        Tensor dy = randn({c.o, c.i}, {dt}, &g);
        Tensor da = empty({c.o, c.r, c.i}, {dt}), db = empty({c.o, c.r, c.i}, {dt});
        ref.arg_backward(dt, dy.raw_data(), ia.data<int64_t>(), da.raw_data(), c.o, c.r, c.i);
        fast.arg_backward(dt, dy.raw_data(), ia.data<int64_t>(), db.raw_data(), c.o, c.r, c.i);
        CHECK(max_abs_diff(da, db) == 0);
      }
    }
    // int64 sums and arg-reductions, with many ties (small value range)
    Tensor xi = randint(-3, 4, {c.o, c.r, c.i}, {kInt64}, &g);
    Tensor a = empty({c.o, c.i}, {kInt64}), b = empty({c.o, c.i}, {kInt64});
    ref.sum(kInt64, xi.raw_data(), a.raw_data(), c.o, c.r, c.i, 1.0);
    fast.sum(kInt64, xi.raw_data(), b.raw_data(), c.o, c.r, c.i, 1.0);
    CHECK(a.to_int_vector() == b.to_int_vector());
    if (c.r == 0) continue;
    Tensor ia = empty({c.o, c.i}, {kInt64}), ib = empty({c.o, c.i}, {kInt64});
    ref.arg(kernels::ArgReduceOp::Max, kInt64, xi.raw_data(), a.raw_data(), ia.data<int64_t>(),
            c.o, c.r, c.i);
    fast.arg(kernels::ArgReduceOp::Max, kInt64, xi.raw_data(), b.raw_data(), ib.data<int64_t>(),
             c.o, c.r, c.i);
    CHECK(ia.to_int_vector() == ib.to_int_vector());
    CHECK(a.to_int_vector() == b.to_int_vector());
  }
}

TEST_CASE("fast reductions give the same bits for any thread count") {
  Tensor x = randn({3, 50000}, {kFloat32});
  int prev = get_num_threads();
  set_num_threads(1);
  auto a = sum(x, {1}).to_vector();
  set_num_threads(2);
  auto b = sum(x, {1}).to_vector();
  set_num_threads(prev);
  CHECK(a == b);
}

} // TEST_SUITE
