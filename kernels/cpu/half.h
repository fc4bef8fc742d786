// kernels/cpu/half.h — float16/bfloat16 element access for the fast CPU kernels: 2-byte storage
// types whose load() gives the value as float32 (exact) and whose store() rounds once to nearest
// even, written branch-free so that loops over them vectorise (-march=native: AVX-512 on this
// CPU). The rounding is tb's (tb::float_to_bfloat16, tb::float_to_half: NaN stays a quiet NaN,
// subnormals and overflow to inf as IEEE), so a kernel that loads, computes in float32 and stores
// gives exactly what converting the tensor to float32, computing and converting back gives.
// float32 and float64 load and store as themselves, so one template serves every dtype.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace tb::kernels::cpu_half {

struct BF16 { uint16_t bits; };
struct F16 { uint16_t bits; };

inline float bf16_to_f32(uint16_t b) {
  uint32_t x = (uint32_t)b << 16; // a bfloat16 is the top half of a float32
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}
inline uint16_t f32_to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t nan = (x >> 16) | 0x40, rounded = (x + 0x7fff + ((x >> 16) & 1)) >> 16;
  return (uint16_t)((x & 0x7fffffff) > 0x7f800000 ? nan : rounded);
}
// float16 through the compiler's _Float16 (F16C / AVX512-FP16 conversions, nearest even).
inline float f16_to_f32(uint16_t h) {
  _Float16 v;
  std::memcpy(&v, &h, 2);
  return (float)v;
}
inline uint16_t f32_to_f16(float f) {
  _Float16 v = (_Float16)f;
  uint16_t h;
  std::memcpy(&h, &v, 2);
  return h;
}

// The type a kernel computes in for a storage type: float32 for the half types.
template <typename S> struct compute { using type = S; };
template <> struct compute<BF16> { using type = float; };
template <> struct compute<F16> { using type = float; };
template <typename S> using compute_t = typename compute<S>::type;

template <typename T> inline T load(T v) { return v; }
inline float load(BF16 v) { return bf16_to_f32(v.bits); }
inline float load(F16 v) { return f16_to_f32(v.bits); }

template <typename T, typename V> inline void store(T& d, V v) { d = (T)v; }
inline void store(BF16& d, float v) { d.bits = f32_to_bf16(v); }
inline void store(F16& d, float v) { d.bits = f32_to_f16(v); }

// Whole runs: d[i] = the float32 value of s[i] (widen) and s[i] rounded to the half type (narrow),
// 16 at a time with AVX-512 where the compiler targets it (same rounding as the scalar functions
// above, bit for bit: the scalar forms, written into one loop with an operation like relu6's
// selects, vectorise poorly, at about a third of float32's bandwidth). Kernels that compute on
// half tensors widen a block of a few hundred values into an L1 buffer, run their float32 loop on
// it and narrow the result back; those loops should be 16 lanes wide too (`omp simd simdlen(16)`:
// GCC otherwise prefers 256-bit vectors, and a 512-bit load of two just-stored 256-bit halves
// cannot be forwarded from the store buffer).
#if defined(__AVX512F__)
// The intrinsics are the zero-masking forms with every lane on (the same instructions): the plain
// ones start from _mm512_undefined_*(), which GCC 12 reports as maybe-uninitialized once inlined.
constexpr __mmask16 all = 0xffff;
#endif

inline void widen(const BF16* s, float* d, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__) && defined(__AVX512BW__)
  for (; i + 16 <= n; i += 16) {
    __m512i w = _mm512_maskz_cvtepu16_epi32(all, _mm256_loadu_si256((const __m256i*)(s + i)));
    _mm512_storeu_ps(d + i, _mm512_castsi512_ps(_mm512_maskz_slli_epi32(all, w, 16)));
  }
#endif
  for (; i < n; i++) d[i] = bf16_to_f32(s[i].bits);
}
inline void narrow(const float* s, BF16* d, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__) && defined(__AVX512BW__)
  const __m512i one = _mm512_set1_epi32(1), bias = _mm512_set1_epi32(0x7fff);
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff), inf = _mm512_set1_epi32(0x7f800000);
  const __m512i quiet = _mm512_set1_epi32(0x400000); // (x >> 16) | 0x40 == (x | 0x400000) >> 16
  for (; i + 16 <= n; i += 16) {
    __m512i x = _mm512_castps_si512(_mm512_loadu_ps(s + i));
    __m512i lsb = _mm512_and_si512(_mm512_maskz_srli_epi32(all, x, 16), one);
    __m512i r = _mm512_add_epi32(x, _mm512_add_epi32(lsb, bias));
    __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(x, abs_mask), inf);
    r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(x, quiet));
    _mm256_storeu_si256((__m256i*)(d + i),
                        _mm512_maskz_cvtepi32_epi16(all, _mm512_maskz_srli_epi32(all, r, 16)));
  }
#endif
  for (; i < n; i++) d[i].bits = f32_to_bf16(s[i]);
}
inline void widen(const F16* s, float* d, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(d + i,
                     _mm512_maskz_cvtph_ps(all, _mm256_loadu_si256((const __m256i*)(s + i))));
#endif
  for (; i < n; i++) d[i] = f16_to_f32(s[i].bits);
}
inline void narrow(const float* s, F16* d, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256((__m256i*)(d + i),
                        _mm512_maskz_cvtps_ph(all, _mm512_loadu_ps(s + i),
                                              _MM_FROUND_TO_NEAREST_INT));
#endif
  for (; i < n; i++) d[i].bits = f32_to_f16(s[i]);
}

} // namespace tb::kernels::cpu_half
