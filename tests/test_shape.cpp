// Shape ops: cat, stack, split, chunk, index_select, gather, pad, flatten — values, gradients
// (float64 finite differences), layouts, and errors. Every backend against the reference kernels:
// tests/test_backend_ops.cpp.
#include "gradcheck.h"

using namespace tb;
using tbtest::check_error;
using tbtest::gradcheck;
using tbtest::max_abs_diff;

namespace {

Tensor seq(const Shape& s, DType dt = kFloat64) {
  return arange(0.0, (double)numel_of(s), 1.0, dt).reshape(s);
}

Tensor rnd(const Shape& s, uint64_t seed) {
  Generator g(seed);
  return randn(s, kFloat64, &g);
}

Tensor idx(std::vector<int64_t> v) { return from_vector(v, {(int64_t)v.size()}); }

} // namespace

TEST_SUITE("shape") {

// ---- cat / stack ------------------------------------------------------------------------------------

TEST_CASE("cat: values along every dim, dtype promotion, legacy empty tensors") {
  Tensor a = seq({2, 2}), b = add(seq({2, 1}), 10.0);
  CHECK(cat({a, b}, 1).to_vector() == std::vector<double>{0, 1, 10, 2, 3, 11});
  CHECK(cat({a, b.t()}, 0).to_vector() == std::vector<double>{0, 1, 2, 3, 10, 11});
  CHECK(cat({a, b}, -1).shape() == Shape{2, 3});
  CHECK(cat({a}, 0).to_vector() == a.to_vector());
  CHECK(cat({seq({2}, kInt64), seq({1}, kFloat32)}).dtype() == kFloat32);
  CHECK(cat({zeros({0}), a, zeros({0})}, 1).shape() == Shape{2, 2}); // [0] tensors are skipped
  CHECK(cat({zeros({2, 0}), a}, 1).to_vector() == a.to_vector());
  // non-contiguous input
  Tensor t = seq({3, 2}).t();
  CHECK(cat({t, t}, 0).to_vector() == std::vector<double>{0, 2, 4, 1, 3, 5, 0, 2, 4, 1, 3, 5});
}

TEST_CASE("cat keeps channels-last when every input is channels-last") {
  Tensor a = rnd({2, 3, 4, 4}, 1).contiguous_channels_last();
  Tensor b = rnd({2, 5, 4, 4}, 2).contiguous_channels_last();
  Tensor c = cat({a, b}, 1);
  CHECK(c.is_channels_last());
  CHECK(max_abs_diff(c, cat({a.contiguous(), b.contiguous()}, 1)) == 0);
  CHECK(cat({a, b.contiguous()}, 1).is_contiguous());
}

TEST_CASE("stack: values and shapes") {
  Tensor a = seq({2, 3}), b = mul(seq({2, 3}), -1.0);
  CHECK(stack({a, b}).shape() == Shape{2, 2, 3});
  CHECK(stack({a, b}, 2).shape() == Shape{2, 3, 2});
  CHECK(stack({a, b}, -1).to_vector() ==
        std::vector<double>{0, -0.0, 1, -1, 2, -2, 3, -3, 4, -4, 5, -5});
}

TEST_CASE("gradcheck: cat and stack") {
  CHECK(gradcheck([](auto& x) { return cat({x[0], x[1], x[2]}, 1); },
                  {rnd({2, 3}, 1), rnd({2, 1}, 2), rnd({2, 4}, 3)}));
  CHECK(gradcheck([](auto& x) { return cat({x[0], x[1]}, 0); }, {rnd({1, 3, 2}, 4), rnd({2, 3, 2}, 5)}));
  CHECK(gradcheck([](auto& x) { return stack({x[0], x[1]}, 1); }, {rnd({2, 3}, 6), rnd({2, 3}, 7)}));
  // a float32 input gets a float32 gradient from a float64 cat
  Tensor f = ones({2}).requires_grad_(true);
  Tensor d = ones({2}, kFloat64).requires_grad_(true);
  sum(cat({f, d})).backward();
  CHECK(f.grad().dtype() == kFloat32);
  CHECK(d.grad().to_vector() == std::vector<double>{1, 1});
}

TEST_CASE("cat and stack errors") {
  check_error([] { cat({}, 0); }, {"cat", "non-empty"});
  check_error([] { cat({ones({2, 3}), ones({3, 3})}, 1); }, {"cat", "[2, 3]", "[3, 3]"});
  check_error([] { cat({ones({2, 3}), ones({2, 3, 1})}, 0); }, {"cat", "[2, 3]", "[2, 3, 1]"});
  check_error([] { cat({ones({2, 3})}, 2); }, {"cat"});
  check_error([] { cat({scalar_tensor(1.0)}); }, {"cat", "zero-dimensional"});
  check_error([] { stack({ones({2}), ones({3})}); }, {"stack", "[2]", "[3]"});
}

// ---- split / chunk ------------------------------------------------------------------------------------

TEST_CASE("split and chunk: sizes, values, views") {
  Tensor x = seq({7, 2});
  auto p = split(x, 3);
  REQUIRE(p.size() == 3);
  CHECK(p[0].shape() == Shape{3, 2});
  CHECK(p[2].shape() == Shape{1, 2});
  CHECK(p[2].to_vector() == std::vector<double>{12, 13});
  CHECK(p[1].storage() == x.storage()); // a view
  auto q = split(x, std::vector<int64_t>{1, 0, 6});
  REQUIRE(q.size() == 3);
  CHECK(q[1].shape() == Shape{0, 2});
  CHECK(q[2].to_vector()[0] == 2);
  auto c = chunk(x, 3);
  REQUIRE(c.size() == 3);
  CHECK(c[0].shape() == Shape{3, 2});
  CHECK(c[2].shape() == Shape{1, 2});
  CHECK(chunk(seq({6}), 4).size() == 3); // ceil(6 / 4) = 2 per piece -> 3 pieces, as torch
  CHECK(chunk(seq({2, 5}), 5, 1).size() == 5);
  CHECK(chunk(zeros({0}), 3).size() == 3);
  CHECK(split(x, 2, -1).size() == 1);
}

TEST_CASE("gradcheck: split and chunk") {
  CHECK(gradcheck([](auto& x) {
    auto p = split(x[0], 2, 1);
    return cat({mul(p[0], 2.0), p[2], mul(p[1], p[1])}, 1);
  }, {rnd({3, 5}, 8)}));
  CHECK(gradcheck([](auto& x) {
    auto p = chunk(x[0], 2, 0);
    return mul(p[0], p[1]);
  }, {rnd({4, 3}, 9)}));
  CHECK(gradcheck([](auto& x) {
    auto p = split(x[0], std::vector<int64_t>{1, 3}, 0);
    return p[1];
  }, {rnd({4, 2}, 10)}));
}

TEST_CASE("split and chunk errors") {
  check_error([] { split(ones({4}), 0); }, {"split", "0"});
  check_error([] { split(ones({4}), std::vector<int64_t>{1, 2}); }, {"split", "[1, 2]", "[4]"});
  check_error([] { chunk(ones({4}), 0); }, {"chunk"});
  check_error([] { split(ones({4}), 2, 1); }, {"split"});
}

// ---- index_select ----------------------------------------------------------------------------------

TEST_CASE("index_select: values on every dim, repeated indices, dtypes, int32 index") {
  Tensor x = seq({3, 4});
  CHECK(index_select(x, 0, idx({2, 0, 2})).to_vector() ==
        std::vector<double>{8, 9, 10, 11, 0, 1, 2, 3, 8, 9, 10, 11});
  CHECK(index_select(x, 1, idx({3, 1})).to_vector() == std::vector<double>{3, 1, 7, 5, 11, 9});
  CHECK(index_select(x, -1, idx({})).shape() == Shape{3, 0});
  CHECK(index_select(x, 1, idx({3}).to(kInt32)).to_vector() == std::vector<double>{3, 7, 11});
  CHECK(index_select(x, 0, scalar_tensor(1.0, kInt64)).shape() == Shape{1, 4});
  CHECK(index_select(x.t(), 0, idx({1})).to_vector() == std::vector<double>{1, 5, 9});
}

TEST_CASE("index_select: exact values for small dtypes") {
  for (DType dt : {kFloat32, kFloat16, kInt8, kInt64}) {
    Tensor r = index_select(seq({4, 2}).to(dt), 0, idx({3, 1}));
    CHECK(r.dtype() == dt);
    CHECK(r.to(kFloat64).to_vector() == std::vector<double>{6, 7, 2, 3});
  }
}

TEST_CASE("gradcheck: index_select (repeated indices accumulate)") {
  CHECK(gradcheck([](auto& x) { return index_select(x[0], 0, idx({2, 0, 2, 2})); }, {rnd({3, 4}, 11)}));
  CHECK(gradcheck([](auto& x) { return index_select(x[0], 1, idx({1, 1, 0})); }, {rnd({2, 3, 2}, 12)}));
  Tensor x = zeros({3}, kFloat64).requires_grad_(true);
  sum(index_select(x, 0, idx({0, 2, 2, 2}))).backward();
  CHECK(x.grad().to_vector() == std::vector<double>{1, 0, 3});
}

TEST_CASE("index_select errors: out-of-range indices never read out of bounds") {
  Tensor x = seq({3, 4});
  check_error([&] { index_select(x, 0, idx({0, 3})); }, {"index_select", "3", "out of range", "[3, 4]"});
  check_error([&] { index_select(x, 1, idx({-1})); }, {"index_select", "-1", "out of range"});
  check_error([&] { index_select(x, 0, idx({0}).to(kFloat32)); }, {"index_select", "float32"});
  check_error([&] { index_select(x, 0, zeros({1, 1}, kInt64)); }, {"index_select", "[1, 1]"});
  check_error([&] { index_select(x, 2, idx({0})); }, {"index_select"});
}

// ---- gather -----------------------------------------------------------------------------------------

TEST_CASE("gather: values along each dim, smaller index shapes, strided input") {
  Tensor x = seq({2, 3});
  Tensor i1 = from_vector(std::vector<int64_t>{2, 0, 1, 1}, {2, 2});
  CHECK(gather(x, 1, i1).to_vector() == std::vector<double>{2, 0, 4, 4});
  Tensor i0 = from_vector(std::vector<int64_t>{1, 0, 1}, {1, 3});
  CHECK(gather(x, 0, i0).to_vector() == std::vector<double>{3, 1, 5});
  CHECK(gather(x.t(), 1, from_vector(std::vector<int64_t>{1, 0, 1}, {3, 1})).to_vector() ==
        std::vector<double>{3, 1, 5});
  CHECK(gather(x, 1, zeros({2, 0}, kInt64)).shape() == Shape{2, 0});
  Tensor y = seq({2, 3, 4});
  Tensor i2 = from_vector(std::vector<int64_t>{3, 0, 2, 1, 0, 0}, {1, 2, 3});
  CHECK(gather(y, 2, i2).to_vector() == std::vector<double>{3, 0, 2, 5, 4, 4});
  CHECK(gather(seq({2, 3}, kInt64), 1, i1).dtype() == kInt64);
}

TEST_CASE("gradcheck: gather (repeated indices accumulate)") {
  Tensor i = from_vector(std::vector<int64_t>{2, 2, 0, 1, 1, 1}, {2, 3});
  CHECK(gradcheck([i](auto& x) { return gather(x[0], 1, i); }, {rnd({2, 4}, 14)}));
  Tensor j = from_vector(std::vector<int64_t>{1, 0, 1, 1}, {2, 2, 1});
  CHECK(gradcheck([j](auto& x) { return gather(x[0], 0, j); }, {rnd({2, 3, 2}, 15)}));
  Tensor x = zeros({1, 3}, kFloat64).requires_grad_(true);
  sum(gather(x, 1, from_vector(std::vector<int64_t>{2, 2, 0}, {1, 3}))).backward();
  CHECK(x.grad().to_vector() == std::vector<double>{1, 0, 2});
}

TEST_CASE("gather errors") {
  Tensor x = seq({2, 3});
  check_error([&] { gather(x, 1, from_vector(std::vector<int64_t>{0, 3}, {2, 1})); },
              {"gather", "3", "out of range", "[2, 3]"});
  check_error([&] { gather(x, 1, from_vector(std::vector<int64_t>{-1, 0}, {2, 1})); },
              {"gather", "-1", "out of range"});
  check_error([&] { gather(x, 1, idx({0})); }, {"gather", "[1]", "[2, 3]"});
  check_error([&] { gather(x, 1, zeros({3, 1}, kInt64)); }, {"gather", "[3, 1]", "[2, 3]"});
  check_error([&] { gather(x, 1, zeros({2, 1}, kInt32)); }, {"gather", "int32"});
}

// ---- pad --------------------------------------------------------------------------------------------

TEST_CASE("pad: constant, reflect and replicate values as F.pad") {
  Tensor x = seq({1, 2, 3}); // rows [0 1 2], [3 4 5]
  CHECK(pad(x, {1, 2}, "constant", -1).to_vector() ==
        std::vector<double>{-1, 0, 1, 2, -1, -1, -1, 3, 4, 5, -1, -1});
  CHECK(pad(x, {0, 0, 1, 0}).to_vector() == std::vector<double>{0, 0, 0, 0, 1, 2, 3, 4, 5});
  CHECK(pad(x, {-1, 0}).to_vector() == std::vector<double>{1, 2, 4, 5}); // negative pads crop
  CHECK(pad(x, {-3, 1}).to_vector() == std::vector<double>{0, 0});
  // F.pad(torch.arange(6.).view(1, 2, 3), (2, 1), 'reflect') -> [[2,1,0,1,2,1],[5,4,3,4,5,4]]
  CHECK(pad(x, {2, 1}, "reflect").to_vector() ==
        std::vector<double>{2, 1, 0, 1, 2, 1, 5, 4, 3, 4, 5, 4});
  CHECK(pad(x, {2, 1}, "replicate").to_vector() ==
        std::vector<double>{0, 0, 0, 1, 2, 2, 3, 3, 3, 4, 5, 5});
  // 4 values: (left, right, top, bottom)
  Tensor r = pad(x, {1, 0, 1, 1}, "reflect");
  CHECK(r.shape() == Shape{1, 4, 4});
  CHECK(r.to_vector() == std::vector<double>{4, 3, 4, 5, 1, 0, 1, 2, 4, 3, 4, 5, 1, 0, 1, 2});
  Tensor p = pad(x, {0, 1, 2, 0}, "replicate");
  CHECK(p.to_vector() == std::vector<double>{0, 1, 2, 2, 0, 1, 2, 2, 0, 1, 2, 2, 3, 4, 5, 5});
  // 4-D with a batch of images, values match a hand-made constant pad
  Tensor img = rnd({2, 3, 4, 5}, 16);
  Tensor pc = pad(img, {1, 1, 2, 2});
  CHECK(pc.shape() == Shape{2, 3, 8, 7});
  CHECK(max_abs_diff(pc.narrow(2, 2, 4).narrow(3, 1, 5), img) == 0);
  CHECK(sum(abs(pc)).item() == doctest::Approx(sum(abs(img)).item()));
}

TEST_CASE("gradcheck: pad in every mode") {
  for (const char* mode : {"constant", "reflect", "replicate"}) {
    CAPTURE(mode);
    CHECK(gradcheck([mode](auto& x) { return pad(x[0], {2, 1}, mode, 0.5); }, {rnd({2, 4}, 17)}));
    CHECK(gradcheck([mode](auto& x) { return pad(x[0], {1, 2, 2, 1}, mode, 0.0); }, {rnd({1, 2, 3, 4}, 18)}));
  }
  CHECK(gradcheck([](auto& x) { return pad(x[0], {-1, 2, 1, -1}); }, {rnd({3, 4}, 19)}));
}

TEST_CASE("pad errors") {
  Tensor x = seq({1, 2, 3});
  check_error([&] { pad(x, {1}); }, {"pad", "[1]"});
  check_error([&] { pad(x, {1, 1}, "circular"); }, {"pad", "circular"});
  check_error([&] { pad(x, {3, 0}, "reflect"); }, {"pad", "reflect", "[1, 2, 3]"});
  check_error([&] { pad(x, {1, 1, 1, 1, 1, 1}, "replicate"); }, {"pad", "replicate"});
  check_error([&] { pad(x, {-1, 0}, "replicate"); }, {"pad", "non-negative"});
  check_error([&] { pad(x, {-2, -2}); }, {"pad", "negative"});
  check_error([&] { pad(seq({2}), {1, 1, 1, 1}); }, {"pad", "[2]"});
}

// ---- flatten ------------------------------------------------------------------------------------------

TEST_CASE("flatten: shapes, defaults (start_dim = 1), channels-last input") {
  Tensor x = seq({2, 3, 4, 5});
  CHECK(flatten(x).shape() == Shape{2, 60});
  CHECK(flatten(x, 0).shape() == Shape{120});
  CHECK(flatten(x, 1, 2).shape() == Shape{2, 12, 5});
  CHECK(flatten(x, -2, -1).shape() == Shape{2, 3, 20});
  CHECK(flatten(x, 2, 2).shape() == Shape{2, 3, 4, 5});
  CHECK(flatten(scalar_tensor(3.0), 0, -1).shape() == Shape{1});
  Tensor cl = x.contiguous_channels_last();
  CHECK(flatten(cl).to_vector() == flatten(x).to_vector());
  CHECK(gradcheck([](auto& v) { return flatten(v[0]); }, {rnd({2, 3, 2}, 20)}));
  check_error([&] { flatten(x, 3, 1); }, {"flatten"});
  check_error([&] { flatten(x, 5); }, {"flatten"});
}

} // TEST_SUITE
