// tests/test_matmul.cpp — matmul (torch.matmul semantics) and linear: values, shapes, gradients
// in float64, error messages, and the OpenBLAS GEMM against the reference triple loop.
#include "gradcheck.h"

#include <cmath>
#include <limits>

#include "kernels/matmul.h"

using namespace tb;
using tbtest::check_error;
using tbtest::gradcheck;
using tbtest::max_abs_diff;
using tbtest::r64;

namespace {

// Plain matmul on 2-D float64 tensors, for checking.
std::vector<double> naive_mm(const Tensor& a, const Tensor& b) {
  auto A = a.to_vector(), B = b.to_vector();
  int64_t m = a.size(0), k = a.size(1), n = b.size(1);
  std::vector<double> c(m * n, 0.0);
  for (int64_t i = 0; i < m; i++)
    for (int64_t j = 0; j < n; j++)
      for (int64_t l = 0; l < k; l++) c[i * n + j] += A[i * k + l] * B[l * n + j];
  return c;
}

} // namespace

TEST_SUITE("matmul") {

TEST_CASE("matmul 2-D by hand") {
  Tensor a = from_vector(std::vector<double>{1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor b = from_vector(std::vector<double>{7, 8, 9, 10, 11, 12}, {3, 2});
  Tensor c = matmul(a, b);
  CHECK(c.shape() == Shape{2, 2});
  CHECK(c.to_vector() == std::vector<double>{58, 64, 139, 154});
  // transposed views go to the kernel with transpose flags, no copy needed
  CHECK(matmul(b.t(), a.t()).to_vector() == std::vector<double>{58, 139, 64, 154});
  // float32 too
  CHECK(matmul(a.to(kFloat32), b.to(kFloat32)).to_vector() ==
        std::vector<double>{58, 64, 139, 154});
}

TEST_CASE("matmul shapes follow torch.matmul") {
  Tensor v3 = r64({3}, 1), v4 = r64({4}, 2);
  CHECK(matmul(v3, r64({3}, 3)).dim() == 0);                       // dot
  CHECK(matmul(r64({2, 3}, 4), v3).shape() == Shape{2});           // matrix-vector
  CHECK(matmul(v3, r64({3, 4}, 5)).shape() == Shape{4});           // vector-matrix
  CHECK(matmul(r64({5, 2, 3}, 6), r64({3, 4}, 7)).shape() == Shape{5, 2, 4});
  CHECK(matmul(r64({2, 3}, 8), r64({5, 3, 4}, 9)).shape() == Shape{5, 2, 4});
  CHECK(matmul(r64({2, 1, 2, 3}, 10), r64({5, 3, 4}, 11)).shape() == Shape{2, 5, 2, 4});
  CHECK(matmul(r64({5, 2, 3}, 12), v3).shape() == Shape{5, 2});
  CHECK(matmul(v3, r64({5, 3, 4}, 13)).shape() == Shape{5, 4});
  CHECK(matmul(r64({0, 3}, 14), r64({3, 4}, 15)).shape() == Shape{0, 4});
  // k = 0: a sum of nothing
  CHECK(matmul(zeros({2, 0}, {kFloat64}), zeros({0, 3}, {kFloat64})).to_vector() ==
        std::vector<double>(6, 0.0));
  // dot value
  Tensor d = matmul(from_vector(std::vector<double>{1, 2, 3}, {3}),
                    from_vector(std::vector<double>{4, 5, 6}, {3}));
  CHECK(d.item() == 32);
  // broadcast batch values against per-batch 2-D products
  Tensor a = r64({2, 1, 3, 4}, 16), b = r64({3, 4, 2}, 17);
  Tensor c = matmul(a, b);
  for (int64_t i = 0; i < 2; i++)
    for (int64_t j = 0; j < 3; j++) {
      auto want = naive_mm(a[i][0], b[j]);
      auto got = c[i][j].to_vector();
      for (size_t e = 0; e < want.size(); e++) CHECK(got[e] == doctest::Approx(want[e]));
    }
}

TEST_CASE("matmul and linear errors name the op and both shapes") {
  check_error([] { matmul(zeros({2, 3}), zeros({4, 5})); },
              {"matmul", "[2, 3]", "[4, 5]", "3 != 4"});
  check_error([] { matmul(zeros({3}), zeros({4})); }, {"matmul", "[3]", "[4]"});
  check_error([] { matmul(zeros({2, 2, 3}), zeros({3, 3, 4})); },
              {"matmul", "[2, 2, 3]", "[3, 3, 4]", "broadcast"});
  check_error([] { matmul(zeros({}), zeros({3})); }, {"matmul", "at least 1 dimension"});
  check_error([] { matmul(zeros({2, 3}), zeros({3, 2}, {kFloat64})); },
              {"matmul", "float32", "float64"});
  check_error([] { matmul(arange(6).reshape({2, 3}), arange(6).reshape({3, 2})); },
              {"matmul", "int64", "cpu"});
  check_error([] { linear(zeros({4, 3}), zeros({5, 2})); }, {"linear", "[4, 3]", "[5, 2]"});
  check_error([] { linear(zeros({4, 3}), zeros({5, 3}), zeros({4})); },
              {"linear", "bias", "[4]"});
  check_error([] { linear(zeros({4, 3}), zeros({3})); }, {"linear", "weight", "[3]"});
}

TEST_CASE("linear: y = x W^T + b over leading dims") {
  Tensor x = from_vector(std::vector<double>{1, 2, 3, 4}, {2, 2});
  Tensor w = from_vector(std::vector<double>{1, 0, 0, 1, 1, 1}, {3, 2});
  Tensor b = from_vector(std::vector<double>{10, 20, 30}, {3});
  CHECK(linear(x, w, b).to_vector() == std::vector<double>{11, 22, 33, 13, 24, 37});
  CHECK(linear(x, w).to_vector() == std::vector<double>{1, 2, 3, 3, 4, 7});
  Tensor x3 = r64({2, 5, 4}, 20), w3 = r64({6, 4}, 21), b3 = r64({6}, 22);
  Tensor y = linear(x3, w3, b3);
  CHECK(y.shape() == Shape{2, 5, 6});
  CHECK(max_abs_diff(y, add(matmul(x3, w3.t()), b3)) < 1e-12);
  CHECK(linear(r64({4}, 23), w3).shape() == Shape{6});  // 1-D input
  // in_features = 0: the bias alone
  CHECK(linear(zeros({2, 0}, {kFloat64}), zeros({3, 0}, {kFloat64}), b).to_vector() ==
        std::vector<double>{10, 20, 30, 10, 20, 30});
}

TEST_CASE("gradcheck: matmul in every shape combination") {
  std::vector<std::pair<Shape, Shape>> cases = {
      {{3}, {3}},          {{2, 3}, {3}},       {{3}, {3, 4}},       {{2, 3}, {3, 4}},
      {{2, 2, 3}, {3, 4}}, {{2, 3}, {2, 3, 4}}, {{2, 1, 2, 3}, {3, 3, 2}},
      {{2, 2, 3}, {3}},    {{3}, {2, 3, 4}},    {{1, 2, 3}, {2, 3, 2}}};
  uint64_t seed = 30;
  for (auto& [sa, sb] : cases) {
    CAPTURE(shape_str(sa));
    CAPTURE(shape_str(sb));
    Tensor a = r64(sa, seed++), b = r64(sb, seed++);
    CHECK(gradcheck([](auto& in) { return matmul(in[0], in[1]); }, {a, b}));
  }
  // transposed operands
  Tensor a = r64({4, 3}, 50), b = r64({5, 4}, 51);
  CHECK(gradcheck([](auto& in) { return matmul(in[0].t(), in[1].t()); }, {a, b}));
}

TEST_CASE("gradcheck: linear with and without bias") {
  Tensor x = r64({2, 3, 4}, 60), w = r64({5, 4}, 61), b = r64({5}, 62);
  CHECK(gradcheck([](auto& in) { return linear(in[0], in[1], in[2]); }, {x, w, b}));
  CHECK(gradcheck([](auto& in) { return linear(in[0], in[1]); }, {x, w}));
  CHECK(gradcheck([](auto& in) { return linear(in[0], in[1], in[2]); }, {r64({4}, 63), w, b}));
  // only some inputs need a gradient
  Tensor xs = r64({3, 4}, 64);
  Tensor wl = w.detach().clone();
  wl.requires_grad_(true);
  sum(linear(xs, wl)).backward();
  CHECK(wl.grad().defined());
  CHECK(max_abs_diff(wl.grad(), matmul(ones({5, 3}, {kFloat64}), xs)) < 1e-12);
}

TEST_CASE("OpenBLAS gemm matches the reference: transposes, odd sizes, strides, batches") {
  Generator g(70);
  struct Case { int64_t m, n, k, batch; };
  std::vector<Case> cases = {{1, 1, 1, 1},  {7, 5, 3, 1},   {17, 33, 65, 2}, {64, 1, 9, 3},
                             {1, 70, 13, 1}, {5, 3, 0, 2},  {130, 67, 129, 1}, {3, 4, 5, 40}};
  for (auto c : cases)
    for (DType dt : {kFloat32, kFloat64})
      for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
          for (double beta : {0.0, 0.5}) {
            CAPTURE(c.m); CAPTURE(c.n); CAPTURE(c.k); CAPTURE(c.batch);
            CAPTURE(ta); CAPTURE(tb); CAPTURE(beta); CAPTURE(dtype_name(dt));
            // padded leading dimensions (+2) exercise lda/ldb/ldc > cols
            int64_t ar = ta ? c.k : c.m, ac = ta ? c.m : c.k;
            int64_t br = tb ? c.n : c.k, bc = tb ? c.k : c.n;
            int64_t lda = ac + 2, ldb = bc + 1, ldc = c.n + 3;
            int64_t sa = ar * lda, sb = (c.batch > 2 ? 0 : br * ldb), sc = c.m * ldc;
            Tensor A = randn({c.batch * std::max<int64_t>(1, sa)}, {dt}, &g);
            Tensor B = randn({c.batch * std::max<int64_t>(1, br * ldb)}, {dt}, &g);
            Tensor C0 = randn({c.batch * std::max<int64_t>(1, sc)}, {dt}, &g);
            if (beta == 0.0) C0.fill_(std::numeric_limits<double>::quiet_NaN());  // never read
            Tensor Cr = C0.clone(), Cf = C0.clone();
            kernels::MatmulKernels::ref.gemm(dt, ta, tb, c.m, c.n, c.k, 1.5, A.raw_data(), lda, sa,
                                             B.raw_data(), ldb, sb, beta, Cr.raw_data(), ldc, sc,
                                             c.batch);
            kernels::MatmulKernels::cpu.gemm(dt, ta, tb, c.m, c.n, c.k, 1.5, A.raw_data(), lda, sa,
                                             B.raw_data(), ldb, sb, beta, Cf.raw_data(), ldc, sc,
                                             c.batch);
            // compare only the m×n blocks (the padding is untouched by both, NaN when beta == 0)
            auto r = Cr.to_vector(), f = Cf.to_vector();
            double worst = 0;
            for (int64_t p = 0; p < c.batch; p++)
              for (int64_t i = 0; i < c.m; i++)
                for (int64_t j = 0; j < c.n; j++) {
                  int64_t e = p * sc + i * ldc + j;
                  worst = std::max(worst, std::abs(r[e] - f[e]));
                  if (std::isnan(r[e]) || std::isnan(f[e])) worst = INFINITY;
                }
            // float32: cblas accumulates in float, the reference in double
            CHECK(worst < (dt == kFloat32 ? 1e-4 * std::sqrt((double)c.k + 1) * 4 : 1e-11));
          }
}

} // TEST_SUITE
