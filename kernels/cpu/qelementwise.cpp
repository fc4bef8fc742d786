// kernels/cpu/qelementwise.cpp — integer add, multiply, concatenation, activations and pooling
// on uint8 activations (kernels/qconv.h, QElementwiseKernels), the fast table: the float32
// arithmetic of kernels/ref/qelementwise.cpp, operation for operation (so the results are equal
// bit for bit, tests/test_int8.cpp), in OpenMP-parallel loops the compiler can vectorise; the
// requantization inside a concatenation and every activation as 256-entry tables built with the
// reference formulas.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

#include "kernels/qconv.h"

namespace tb::kernels {
namespace {

// Loops over fewer elements run on one thread: an OpenMP region costs about a microsecond, so it
// pays once one thread would take a few. The add and multiply (dequantize, add, requantize: about
// 0.3 ns an element) split from 4k elements (MobileNetV2's ten joins, 8k to 75k elements each:
// 0.085 -> 0.060 ms in all); a table lookup or a pool (ten times cheaper) from 32k.
constexpr int64_t kParallelMin = 1 << 15, kParallelMinArith = 1 << 12;

// The per-element loops are compute-bound (u8 -> f32 -> u8): 512-bit vectors where the CPU has
// them (GCC prefers 256-bit ones by default), in functions of their own (inlined into a lambda
// they lost the attribute): the add of 200k elements 0.085 -> 0.058 ms on one thread.
#if defined(__AVX512F__) && defined(__GNUC__) && !defined(__clang__)
#define TB_WIDE __attribute__((target("prefer-vector-width=512"), noinline))
#else
#define TB_WIDE
#endif

// As the reference: v * (1 / scale), rounded half to even, plus zp, clamped.
inline uint8_t quant(float v, float inv_scale, float zp) {
  float r = std::nearbyintf(v * inv_scale) + zp;
  return (uint8_t)std::min(255.0f, std::max(0.0f, r));
}

// Calls f(i0, i1) over [0, n): one range, or one per thread when n is large.
template <class F> void split(int64_t n, int64_t min, F f) {
  int64_t chunks = n > min ? omp_get_max_threads() : 1;
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; c++) f(n * c / chunks, n * (c + 1) / chunks);
}

// Elements [i0, i1) of the add. The grids arrive as plain values: read through the QGrid
// structs that an OpenMP region shares by pointer, every uint8 store (which may alias anything)
// forced the compiler to reload them, and the loop ran scalar (measured 45 us on MobileNetV2's
// 56x56x24 join, 6 us vectorised).
TB_WIDE void add_range(const uint8_t* a, float sa, float za, const uint8_t* b, float sb, float zb,
                       uint8_t* y, float inv, float zp, int64_t i0, int64_t i1) {
#pragma omp simd
  for (int64_t i = i0; i < i1; i++)
    y[i] = quant(((float)a[i] - za) * sa + ((float)b[i] - zb) * sb, inv, zp);
}

void cpu_qadd(const uint8_t* a, QGrid ga, const uint8_t* b, QGrid gb, uint8_t* y, QGrid gy,
              int64_t n) {
  float inv = 1.0f / gy.scale, zp = (float)gy.zp;
  split(n, kParallelMinArith, [&](int64_t i0, int64_t i1) {
    add_range(a, ga.scale, (float)ga.zp, b, gb.scale, (float)gb.zp, y, inv, zp, i0, i1);
  });
}

// One row of C channels of the multiply (grids as values, as add_range).
TB_WIDE void mul_row(const uint8_t* a, float sa, float za, const uint8_t* b, float sb, float zb,
                     uint8_t* y, float inv, float zp, int64_t C) {
#pragma omp simd
  for (int64_t c = 0; c < C; c++)
    y[c] = quant((((float)a[c] - za) * sa) * (((float)b[c] - zb) * sb), inv, zp);
}

void cpu_qmul(const uint8_t* a, QGrid ga, const uint8_t* b, QGrid gb, uint8_t* y, QGrid gy,
              int64_t N, int64_t P, int64_t C, bool b_broadcast) {
  float inv = 1.0f / gy.scale, zp = (float)gy.zp;
#pragma omp parallel for collapse(2) schedule(static) if (N * P * C > kParallelMinArith)
  for (int64_t n = 0; n < N; n++)
    for (int64_t p = 0; p < P; p++) {
      const uint8_t* br = b_broadcast ? b + n * C : b + (n * P + p) * C;
      mul_row(a + (n * P + p) * C, ga.scale, (float)ga.zp, br, gb.scale, (float)gb.zp,
              y + (n * P + p) * C, inv, zp, C);
    }
}

// table[q] = quant(f(deq(q))) for every level q.
template <class F> std::array<uint8_t, 256> level_table(QGrid gx, QGrid gy, F f) {
  std::array<uint8_t, 256> t;
  float inv = 1.0f / gy.scale, zp = (float)gy.zp;
  for (int q = 0; q < 256; q++) t[q] = quant(f(qdeq(q, gx)), inv, zp);
  return t;
}

// y[i] = table[x[i]] for i in [i0, i1). With AVX-512 VBMI, 64 lookups per step: vpermi2b picks
// bytes by the low 7 bits of each index from two 64-byte quarters of the table, once from the
// lower half and once from the upper one, and the index's top bit chooses between the two
// (measured 0.006 ms on ResNet-18's 56x56x64 ReLU, against 0.03 ms for the formula on vectors).
void lookup_range(const uint8_t* t, const uint8_t* x, uint8_t* y, int64_t i0, int64_t i1) {
  int64_t i = i0;
#if defined(__AVX512VBMI__)
  __m512i q0 = _mm512_loadu_si512(t), q1 = _mm512_loadu_si512(t + 64);
  __m512i q2 = _mm512_loadu_si512(t + 128), q3 = _mm512_loadu_si512(t + 192);
  for (; i + 64 <= i1; i += 64) {
    __m512i idx = _mm512_loadu_si512(x + i);
    __m512i lo = _mm512_permutex2var_epi8(q0, idx, q1), hi = _mm512_permutex2var_epi8(q2, idx, q3);
    _mm512_storeu_si512(y + i, _mm512_mask_blend_epi8(_mm512_movepi8_mask(idx), lo, hi));
  }
#endif
  for (; i < i1; i++) y[i] = t[x[i]];
}

void lookup(const std::array<uint8_t, 256>& table, const uint8_t* x, uint8_t* y, int64_t n) {
  split(n, kParallelMin,
        [&](int64_t i0, int64_t i1) { lookup_range(table.data(), x, y, i0, i1); });
}

void cpu_qcat(const uint8_t* const* xs, const QGrid* gs, const int64_t* widths, int64_t k,
              uint8_t* y, QGrid gy, int64_t outer) {
  int64_t total = 0;
  std::vector<std::array<uint8_t, 256>> tables(k);
  std::vector<int64_t> col(k);
  for (int64_t j = 0; j < k; j++) {
    tables[j] = level_table(gs[j], gy, [](float v) { return v; });
    col[j] = total;
    total += widths[j];
  }
#pragma omp parallel for schedule(static) if (outer * total > kParallelMin)
  for (int64_t o = 0; o < outer; o++)
    for (int64_t j = 0; j < k; j++) {
      const uint8_t* src = xs[j] + o * widths[j];
      uint8_t* dst = y + o * total + col[j];
      lookup_range(tables[j].data(), src, dst, 0, widths[j]);
    }
}

// Every activation is a function of one input level, so the exact kernel is a 256-entry table
// built with the reference formula (table[q] = quant(f(deq(q)))) and one lookup per element.
void cpu_qactivation(QActivation kind, const uint8_t* x, QGrid gx, uint8_t* y, QGrid gy,
                     int64_t n) {
  auto f = [kind](float v) {
    switch (kind) {
      case QActivation::ReLU: return std::max(v, 0.0f);
      case QActivation::ReLU6: return std::min(std::max(v, 0.0f), 6.0f);
      case QActivation::Hardswish: return v * std::min(std::max(v + 3.0f, 0.0f), 6.0f) / 6.0f;
      case QActivation::Sigmoid: return 1.0f / (1.0f + std::exp(-v));
      case QActivation::SiLU: return v / (1.0f + std::exp(-v));
      case QActivation::Hardsigmoid: return std::min(std::max(v + 3.0f, 0.0f), 6.0f) / 6.0f;
    }
    return v;
  };
  lookup(level_table(gx, gy, f), x, y, n);
}

// y[c] = max(y[c], x[c]): 32 bytes at a time (one vector op), then the rest.
inline void max_row(uint8_t* __restrict y, const uint8_t* __restrict x, int64_t C) {
  int64_t c = 0;
  for (; c + 32 <= C; c += 32)
    for (int j = 0; j < 32; j++) y[c + j] = std::max(y[c + j], x[c + j]);
  for (; c < C; c++) y[c] = std::max(y[c], x[c]);
}

void cpu_qmax_pool2d(const uint8_t* x, int64_t N, int64_t C, int64_t H, int64_t W, int64_t KH,
                     int64_t KW, int64_t sh, int64_t sw, int64_t ph, int64_t pw, uint8_t* y,
                     int64_t OH, int64_t OW) {
#pragma omp parallel for collapse(2) schedule(static) if (N * H * W * C > kParallelMin)
  for (int64_t n = 0; n < N; n++)
    for (int64_t oh = 0; oh < OH; oh++)
      for (int64_t ow = 0; ow < OW; ow++) {
        uint8_t* yr = y + ((n * OH + oh) * OW + ow) * C;
        bool first = true; // the first tap inside is copied (there is one: PyTorch's size rules)
        for (int64_t kh = 0; kh < KH; kh++) {
          int64_t ih = oh * sh - ph + kh;
          if (ih < 0 || ih >= H) continue;
          for (int64_t kw = 0; kw < KW; kw++) {
            int64_t iw = ow * sw - pw + kw;
            if (iw < 0 || iw >= W) continue;
            const uint8_t* xr = x + ((n * H + ih) * W + iw) * C;
            if (first) std::copy(xr, xr + C, yr);
            else max_row(yr, xr, C);
            first = false;
          }
        }
        if (first) std::fill(yr, yr + C, (uint8_t)0); // no tap inside (the reference's 0)
      }
}

void cpu_qavg_pool2d(const uint8_t* x, QGrid gx, int64_t N, int64_t C, int64_t H, int64_t W,
                     int64_t KH, int64_t KW, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                     uint8_t* y, QGrid gy, int64_t OH, int64_t OW) {
  float inv = 1.0f / gy.scale, zp = (float)gy.zp;
#pragma omp parallel for collapse(2) schedule(static) if (N * H * W * C > kParallelMin)
  for (int64_t n = 0; n < N; n++)
    for (int64_t oh = 0; oh < OH; oh++) {
      std::vector<float> s(C);
      for (int64_t ow = 0; ow < OW; ow++) {
        int64_t h0 = oh * sh - ph, w0 = ow * sw - pw;
        int64_t h1 = std::min(h0 + KH, H + ph), w1 = std::min(w0 + KW, W + pw);
        std::fill(s.begin(), s.end(), 0.0f);
        // The reference's order of the sum: rows, then columns, per channel.
        for (int64_t ih = std::max<int64_t>(h0, 0); ih < std::min(h1, H); ih++)
          for (int64_t iw = std::max<int64_t>(w0, 0); iw < std::min(w1, W); iw++) {
            const uint8_t* xr = x + ((n * H + ih) * W + iw) * C;
#pragma omp simd
            for (int64_t c = 0; c < C; c++) s[c] += qdeq(xr[c], gx);
          }
        float count = (float)((h1 - h0) * (w1 - w0));
        uint8_t* yr = y + ((n * OH + oh) * OW + ow) * C;
#pragma omp simd
        for (int64_t c = 0; c < C; c++) yr[c] = quant(s[c] / count, inv, zp);
      }
    }
}

} // namespace

const QElementwiseKernels QElementwiseKernels::cpu = {
    .add = cpu_qadd,
    .mul = cpu_qmul,
    .cat = cpu_qcat,
    .activation = cpu_qactivation,
    .max_pool2d = cpu_qmax_pool2d,
    .avg_pool2d = cpu_qavg_pool2d,
};

} // namespace tb::kernels
