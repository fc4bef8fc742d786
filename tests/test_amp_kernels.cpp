// amp, kernel level (suite `amp`): the float16/bfloat16 paths of the CPU elementwise kernels and
// the widen / narrow runs they and the batch-norm kernels use (kernels/cpu/half.h), on raw
// buffers, against tb's scalar conversions, the reference kernels and the float32 kernels. (The
// GEMM and convolution kernels: tests/test_amp.cpp; batch norm: tests/test_batchnorm.cpp.)
#include "gradcheck.h"

#include <cmath>
#include <cstring>

#include "kernels/cpu/half.h"
#include "kernels/elementwise.h"

using namespace tb;
using tbtest::from_half_bits;
using tbtest::to_half_bits;

namespace {


} // namespace

TEST_SUITE("amp") {

TEST_CASE("half widen / narrow runs (kernels/cpu/half.h) convert bit for bit as tb's scalar "
          "conversions, over a sample of every float32 bit pattern") {
  namespace ch = kernels::cpu_half;
  // every 4099th float32 pattern (about a million: every exponent, mantissas across each binade,
  // NaN payloads) plus the edges; n not a multiple of 16, so the scalar tail runs too
  std::vector<float> f;
  for (uint64_t u = 0; u < (1ull << 32); u += 4099) {
    uint32_t b = (uint32_t)u;
    float v;
    std::memcpy(&v, &b, 4);
    f.push_back(v);
  }
  for (float v : {0.0f, -0.0f, 1.0f + 1.0f / 256, 1.0f + 3.0f / 256, 65504.0f, 65520.0f, 1e-40f,
                  -1e-45f, 3.4e38f, INFINITY, -INFINITY, NAN})
    f.push_back(v);
  int64_t n = (int64_t)f.size();
  REQUIRE(n % 16 != 0);
  std::vector<ch::BF16> b(n);
  std::vector<ch::F16> h(n);
  ch::narrow(f.data(), b.data(), n);
  ch::narrow(f.data(), h.data(), n);
  int64_t bad_b = 0, bad_h = 0;
  for (int64_t i = 0; i < n; i++) {
    bool nan = std::isnan(f[i]);
    bad_b += nan ? !std::isnan(bfloat16_to_float(b[i].bits)) : b[i].bits != float_to_bfloat16(f[i]);
    bad_h += nan ? !std::isnan(half_to_float(h[i].bits)) : h[i].bits != float_to_half(f[i]);
  }
  CHECK(bad_b == 0);
  CHECK(bad_h == 0);
  // widen: every one of the 65536 half patterns (the run is 65533 long: a tail again)
  std::vector<ch::BF16> all_b(65536);
  std::vector<ch::F16> all_h(65536);
  for (int i = 0; i < 65536; i++) all_b[i].bits = all_h[i].bits = (uint16_t)i;
  std::vector<float> wb(65536), wh(65536);
  ch::widen(all_b.data(), wb.data(), 65533);
  ch::widen(all_h.data(), wh.data(), 65533);
  bad_b = bad_h = 0;
  for (int i = 0; i < 65533; i++) {
    float rb = bfloat16_to_float((uint16_t)i), rh = half_to_float((uint16_t)i);
    bad_b += std::isnan(rb) ? !std::isnan(wb[i]) : wb[i] != rb || std::signbit(wb[i]) != std::signbit(rb);
    bad_h += std::isnan(rh) ? !std::isnan(wh[i]) : wh[i] != rh || std::signbit(wh[i]) != std::signbit(rh);
  }
  CHECK(bad_b == 0);
  CHECK(bad_h == 0);
}

TEST_CASE("half elementwise kernels: fast = reference = the float32 kernel rounded once, every "
          "unary op and its backward, every binary op and step pattern") {
  using kernels::BinaryOp;
  using kernels::ElementwiseKernels;
  using kernels::UnaryOp;
  const ElementwiseKernels &fast = ElementwiseKernels::cpu, &ref = ElementwiseKernels::ref;
  auto round_to = [](DType t, const std::vector<float>& v) { return to_half_bits(v, t); };
  // n around the 16-lane vectors and the 512-element blocks, and above the OpenMP threshold
  for (DType t : {kBFloat16, kFloat16})
    for (int64_t n : {1, 15, 17, 511, 512, 1030, 40000}) {
      INFO(dtype_name(t) << " n=" << n);
      Generator g(n);
      std::vector<float> xs(n), ys(n), gs(n);
      for (int64_t i = 0; i < n; i++) {
        xs[i] = (float)(g.next_normal() * 4);
        ys[i] = i % 7 == 3 ? xs[i] : (float)(g.next_normal() * 4); // ties for comparisons
        gs[i] = (float)g.next_normal();
      }
      if (n > 5) xs[1] = NAN, xs[2] = 0, xs[3] = 6, xs[4] = -3; // NaN and the kinks
      auto xh = round_to(t, xs), yh = round_to(t, ys), gh = round_to(t, gs);
      auto xf = from_half_bits(xh, t), yf = from_half_bits(yh, t), gf = from_half_bits(gh, t);
      auto same_bits = [&](const std::vector<uint16_t>& a, const std::vector<uint16_t>& b) {
        int64_t bad = 0;
        for (int64_t i = 0; i < n; i++) {
          float fa = t == kBFloat16 ? bfloat16_to_float(a[i]) : half_to_float(a[i]);
          bad += std::isnan(fa) ? !std::isnan(t == kBFloat16 ? bfloat16_to_float(b[i])
                                                             : half_to_float(b[i]))
                                : a[i] != b[i];
        }
        return bad;
      };
      for (int ui = 0; ui <= (int)UnaryOp::PowScalar; ui++) {
        UnaryOp op = (UnaryOp)ui;
        INFO("unary op " << ui);
        double p0 = op == UnaryOp::PowScalar ? 2.5 : op == UnaryOp::Clamp ? -1.0 : 0.1;
        double p1 = op == UnaryOp::Clamp ? 2.0 : 0.0;
        std::vector<uint16_t> of(n), orf(n), bf(n), brf(n);
        std::vector<float> want(n), bwant(n);
        fast.unary(op, t, xh.data(), of.data(), n, p0, p1);
        ref.unary(op, t, xh.data(), orf.data(), n, p0, p1);
        fast.unary(op, kFloat32, xf.data(), want.data(), n, p0, p1);
        fast.unary_backward(op, t, xh.data(), gh.data(), bf.data(), n, p0, p1);
        ref.unary_backward(op, t, xh.data(), gh.data(), brf.data(), n, p0, p1);
        fast.unary_backward(op, kFloat32, xf.data(), gf.data(), bwant.data(), n, p0, p1);
        CHECK(same_bits(of, round_to(t, want)) == 0);
        CHECK(same_bits(of, orf) == 0);
        CHECK(same_bits(bf, round_to(t, bwant)) == 0);
        CHECK(same_bits(bf, brf) == 0);
      }
      for (int bi = 0; bi <= (int)BinaryOp::Ge; bi++) {
        BinaryOp op = (BinaryOp)bi;
        bool cmp = op >= BinaryOp::Eq;
        for (auto [as, bs] : {std::pair<int64_t, int64_t>{1, 1}, {1, 0}, {0, 1}}) {
          INFO("binary op " << bi << " steps " << as << ", " << bs);
          std::vector<uint16_t> of(n), orf(n);
          std::vector<float> want(n);
          std::vector<uint8_t> cf(n, 2), cr(n, 2), cw(n, 2);
          void* pf = cmp ? (void*)cf.data() : (void*)of.data();
          void* pr = cmp ? (void*)cr.data() : (void*)orf.data();
          void* pw = cmp ? (void*)cw.data() : (void*)want.data();
          fast.binary(op, t, xh.data(), as, yh.data(), bs, pf, n, 0.5);
          ref.binary(op, t, xh.data(), as, yh.data(), bs, pr, n, 0.5);
          fast.binary(op, kFloat32, xf.data(), as, yf.data(), bs, pw, n, 0.5);
          if (cmp) {
            CHECK(cf == cw);
            CHECK(cr == cw);
          } else {
            CHECK(same_bits(of, round_to(t, want)) == 0);
            CHECK(same_bits(of, orf) == 0);
          }
        }
      }
    }
}

} // TEST_SUITE
