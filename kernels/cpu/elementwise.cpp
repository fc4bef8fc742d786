// kernels/cpu/elementwise.cpp — the fast CPU twins of kernels/ref/elementwise.cpp.
//
// Same formulas as the reference (so results agree to the last bit for the exact ops and within a
// few ulps for the transcendental ones), but one loop per (op, dtype, step pattern): the op is a
// lambda the compiler inlines, the steps are known, so the inner loops vectorise. OpenMP splits a
// loop only above kParallelMin elements: below that, waking the thread team costs more than it saves.
// float16/bfloat16 are read and written as they are stored (kernels/cpu/half.h): blocks of 512
// elements are widened to float32 in L1, computed by the same float32 loop and rounded once, so a
// half activation costs half the memory traffic of a float32 one and no conversion passes.
#include "kernels/elementwise.h"

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "kernels/cpu/half.h"

namespace tb::kernels {
namespace {

using cpu_half::BF16;
using cpu_half::compute_t;
using cpu_half::F16;
using cpu_half::load;
using cpu_half::narrow;
using cpu_half::widen;

constexpr int64_t kParallelMin = 32768;

// out[i] = f(a[i], b[i]) with a/b steps of 1 or 0 (a scalar broadcast); OpenMP over the elements
// when `par`.
template <typename A, typename R, typename F>
static void map2_direct(const A* a, int64_t as, const A* b, int64_t bs, R* out, int64_t n, F f,
                        bool par) {
  if (as == 1 && bs == 1) {
#pragma omp parallel for if (par) schedule(static)
    for (int64_t i = 0; i < n; i++) out[i] = f(a[i], b[i]);
  } else if (as == 1 && bs == 0) {
    const A y = b[0];
#pragma omp parallel for if (par) schedule(static)
    for (int64_t i = 0; i < n; i++) out[i] = f(a[i], y);
  } else if (as == 0 && bs == 1) {
    const A x = a[0];
#pragma omp parallel for if (par) schedule(static)
    for (int64_t i = 0; i < n; i++) out[i] = f(x, b[i]);
  } else { // any other steps (not produced by the op layer, but handled for completeness)
#pragma omp parallel for if (par) schedule(static)
    for (int64_t i = 0; i < n; i++) out[i] = f(a[i * as], b[i * bs]);
  }
}

// The same loops for one block of floats, inside a parallel region (no nested OpenMP team), 16
// lanes wide (simdlen: GCC otherwise prefers 256-bit vectors here, and the block's widen/narrow
// are 512-bit).
template <typename A, typename R, typename F>
static void map2_block(const A* a, int64_t as, const A* b, int64_t bs, R* out, int64_t n, F f) {
  if (as == 1 && bs == 1) {
#pragma omp simd simdlen(16)
    for (int64_t i = 0; i < n; i++) out[i] = f(a[i], b[i]);
  } else if (as == 1) {
    const A y = b[0];
#pragma omp simd simdlen(16)
    for (int64_t i = 0; i < n; i++) out[i] = f(a[i], y);
  } else {
    const A x = a[0];
#pragma omp simd simdlen(16)
    for (int64_t i = 0; i < n; i++) out[i] = f(x, b[i]);
  }
}

template <typename T> constexpr bool is_half_v = std::is_same_v<T, BF16> || std::is_same_v<T, F16>;

// Half storage: blocks of kBlock values widened into float32 buffers (L1), the float32 loop above
// on them, the results narrowed back (kernels/cpu/half.h); a step-0 operand is widened once.
// Comparisons (R = bool) write their block straight out.
constexpr int64_t kBlock = 512;

template <typename A, typename R, typename F>
static void map2_half(const A* a, int64_t as, const A* b, int64_t bs, R* out, int64_t n, F f) {
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  float a0 = load(a[0]), b0 = load(b[0]);
#pragma omp parallel for if (n >= kParallelMin) schedule(static)
  for (int64_t q = 0; q < blocks; q++) {
    const int64_t i0 = q * kBlock, len = std::min(kBlock, n - i0);
    float xa[kBlock], xb[kBlock];
    auto fill = [&](const A* p, int64_t step, float* buf) -> const float* {
      if (step == 0) return nullptr;
      if (step == 1) widen(p + i0, buf, len);
      else
        for (int64_t j = 0; j < len; j++) buf[j] = load(p[(i0 + j) * step]);
      return buf;
    };
    const float* pa = fill(a, as, xa);
    const float* pb = fill(b, bs, xb);
    if (!pa && !pb) { // both step 0: one value, computed for every slot (the reference's loop)
      for (int64_t j = 0; j < len; j++) xa[j] = a0;
      pa = xa;
    }
    if constexpr (std::is_same_v<R, bool>) {
      map2_block(pa ? pa : &a0, pa ? 1 : 0, pb ? pb : &b0, pb ? 1 : 0, out + i0, len, f);
    } else {
      float r[kBlock];
      map2_block(pa ? pa : &a0, pa ? 1 : 0, pb ? pb : &b0, pb ? 1 : 0, r, len, f);
      narrow(r, out + i0, len);
    }
  }
}

template <typename A, typename R, typename F>
static void map2(const A* a, int64_t as, const A* b, int64_t bs, R* out, int64_t n, F f) {
  if (n <= 0) return;
  if constexpr (is_half_v<A>) map2_half(a, as, b, bs, out, n, f);
  else map2_direct(a, as, b, bs, out, n, f, n >= kParallelMin);
}

// (GCC 12 cannot see that widen() fills v[0, len) and warns that v may be used uninitialized.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
template <typename A, typename R, typename F>
static void map1(const A* x, R* out, int64_t n, F f) {
  if (n <= 0) return;
  if constexpr (is_half_v<A>) {
    const int64_t blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for if (n >= kParallelMin) schedule(static)
    for (int64_t q = 0; q < blocks; q++) {
      const int64_t i0 = q * kBlock, len = std::min(kBlock, n - i0);
      float v[kBlock], r[kBlock];
      widen(x + i0, v, len);
#pragma omp simd simdlen(16)
      for (int64_t j = 0; j < len; j++) r[j] = f(v[j]);
      narrow(r, out + i0, len);
    }
  } else {
#pragma omp parallel for if (n >= kParallelMin) schedule(static)
    for (int64_t i = 0; i < n; i++) out[i] = f(x[i]);
  }
}
#pragma GCC diagnostic pop

// Wrapping integer arithmetic (signed overflow is UB in C++); plain arithmetic for floats.
template <typename T> static inline T wrap_add(T a, T b) {
  if constexpr (std::is_integral_v<T>) {
    using U = std::make_unsigned_t<T>;
    return (T)((U)a + (U)b);
  } else {
    return a + b;
  }
}
template <typename T> static inline T wrap_mul(T a, T b) {
  if constexpr (std::is_integral_v<T>) {
    using U = std::make_unsigned_t<T>;
    return (T)((U)a * (U)b);
  } else {
    return a * b;
  }
}

template <typename S>
static bool binary_typed(BinaryOp op, const void* av, int64_t as, const void* bv, int64_t bs,
                         void* ov, int64_t n, double alpha) {
  using T = compute_t<S>;
  const S* a = (const S*)av;
  const S* b = (const S*)bv;
  S* o = (S*)ov;
  bool* ob = (bool*)ov;
  const T al = (T)alpha, nal = (T)(-al);
  switch (op) {
    case BinaryOp::Add:
      if (alpha == 1.0) map2(a, as, b, bs, o, n, [](T x, T y) { return wrap_add(x, y); });
      else map2(a, as, b, bs, o, n, [al](T x, T y) { return wrap_add(x, wrap_mul(al, y)); });
      return true;
    case BinaryOp::Sub:
      map2(a, as, b, bs, o, n, [nal](T x, T y) { return wrap_add(x, wrap_mul(nal, y)); });
      return true;
    case BinaryOp::Mul: map2(a, as, b, bs, o, n, [](T x, T y) { return wrap_mul(x, y); }); return true;
    case BinaryOp::Div:
      if constexpr (std::is_floating_point_v<T>) {
        map2(a, as, b, bs, o, n, [](T x, T y) { return x / y; });
        return true;
      }
      return false;
    case BinaryOp::Pow:
      if constexpr (std::is_floating_point_v<T>) {
        map2(a, as, b, bs, o, n, [](T x, T y) { return (T)std::pow(x, y); });
        return true;
      }
      return false;
    case BinaryOp::Maximum:
      map2(a, as, b, bs, o, n,
           [](T x, T y) { return (x != x) ? x : (y != y) ? y : (x > y ? x : y); });
      return true;
    case BinaryOp::Minimum:
      map2(a, as, b, bs, o, n,
           [](T x, T y) { return (x != x) ? x : (y != y) ? y : (x < y ? x : y); });
      return true;
    case BinaryOp::Eq: map2(a, as, b, bs, ob, n, [](T x, T y) { return x == y; }); return true;
    case BinaryOp::Ne: map2(a, as, b, bs, ob, n, [](T x, T y) { return x != y; }); return true;
    case BinaryOp::Lt: map2(a, as, b, bs, ob, n, [](T x, T y) { return x < y; }); return true;
    case BinaryOp::Le: map2(a, as, b, bs, ob, n, [](T x, T y) { return x <= y; }); return true;
    case BinaryOp::Gt: map2(a, as, b, bs, ob, n, [](T x, T y) { return x > y; }); return true;
    case BinaryOp::Ge: map2(a, as, b, bs, ob, n, [](T x, T y) { return x >= y; }); return true;
  }
  return false;
}

static const char* binary_name(BinaryOp op) {
  static const char* names[] = {"add", "sub", "mul", "div", "pow", "maximum", "minimum",
                                "eq",  "ne",  "lt",  "le",  "gt",  "ge"};
  return names[(int)op];
}

void cpu_binary(BinaryOp op, DType dtype, const void* a, int64_t a_step, const void* b,
                int64_t b_step, void* out, int64_t n, double alpha) {
  bool done = false;
  switch (dtype) {
    case DType::Float32: done = binary_typed<float>(op, a, a_step, b, b_step, out, n, alpha); break;
    case DType::Float64: done = binary_typed<double>(op, a, a_step, b, b_step, out, n, alpha); break;
    case DType::Int32: done = binary_typed<int32_t>(op, a, a_step, b, b_step, out, n, alpha); break;
    case DType::Int64: done = binary_typed<int64_t>(op, a, a_step, b, b_step, out, n, alpha); break;
    case DType::BFloat16: done = binary_typed<BF16>(op, a, a_step, b, b_step, out, n, alpha); break;
    case DType::Float16: done = binary_typed<F16>(op, a, a_step, b, b_step, out, n, alpha); break;
    default: break;
  }
  if (!done) throw Error(fmt::format("{}: no cpu kernel for dtype {}", binary_name(op), dtype));
}

// ---- unary ------------------------------------------------------------------------------------

constexpr double kGeluBeta = 0.7978845608028654, kGeluKappa = 0.044715; // sqrt(2/pi), cubic coef
constexpr double kInvSqrt2 = 0.7071067811865476, kInvSqrt2Pi = 0.3989422804014327;

static const char* unary_name(UnaryOp op) {
  static const char* names[] = {"neg",     "exp",        "log",        "sqrt",      "rsqrt",
                                "abs",     "sign",       "square",     "reciprocal", "round",
                                "floor",   "relu",       "relu6",      "leaky_relu", "sigmoid",
                                "tanh",    "silu",       "hardswish",  "hardsigmoid", "gelu",
                                "gelu",    "clamp",      "pow"};
  return names[(int)op];
}

template <typename S, typename T = compute_t<S>>
static void unary_typed(UnaryOp op, const S* x, S* o, int64_t n, T p0, T p1) {
  switch (op) {
    case UnaryOp::Neg: return map1(x, o, n, [](T v) { return -v; });
    case UnaryOp::Exp: return map1(x, o, n, [](T v) { return std::exp(v); });
    case UnaryOp::Log: return map1(x, o, n, [](T v) { return std::log(v); });
    case UnaryOp::Sqrt: return map1(x, o, n, [](T v) { return std::sqrt(v); });
    case UnaryOp::Rsqrt: return map1(x, o, n, [](T v) { return T(1) / std::sqrt(v); });
    case UnaryOp::Abs: return map1(x, o, n, [](T v) { return std::abs(v); });
    case UnaryOp::Sign: return map1(x, o, n, [](T v) { return T((T(0) < v) - (v < T(0))); });
    case UnaryOp::Square: return map1(x, o, n, [](T v) { return v * v; });
    case UnaryOp::Reciprocal: return map1(x, o, n, [](T v) { return T(1) / v; });
    case UnaryOp::Round: return map1(x, o, n, [](T v) { return std::nearbyint(v); });
    case UnaryOp::Floor: return map1(x, o, n, [](T v) { return std::floor(v); });
    case UnaryOp::Relu: return map1(x, o, n, [](T v) { return v < T(0) ? T(0) : v; });
    case UnaryOp::Relu6:
      return map1(x, o, n, [](T v) { return v < T(0) ? T(0) : (v > T(6) ? T(6) : v); });
    case UnaryOp::LeakyRelu: return map1(x, o, n, [p0](T v) { return v < T(0) ? v * p0 : v; });
    case UnaryOp::Sigmoid: return map1(x, o, n, [](T v) { return T(1) / (T(1) + std::exp(-v)); });
    case UnaryOp::Tanh: return map1(x, o, n, [](T v) { return std::tanh(v); });
    case UnaryOp::Silu: return map1(x, o, n, [](T v) { return v / (T(1) + std::exp(-v)); });
    case UnaryOp::Hardswish:
      return map1(x, o, n, [](T v) {
        T r = v + T(3);
        r = r < T(0) ? T(0) : (r > T(6) ? T(6) : r);
        return v * r / T(6);
      });
    case UnaryOp::Hardsigmoid:
      return map1(x, o, n, [](T v) {
        T r = v + T(3);
        r = r < T(0) ? T(0) : (r > T(6) ? T(6) : r);
        return r / T(6);
      });
    case UnaryOp::Gelu:
      return map1(x, o, n,
                  [](T v) { return T(0.5) * v * (T(1) + std::erf(v * T(kInvSqrt2))); });
    case UnaryOp::GeluTanh:
      return map1(x, o, n, [](T v) {
        return T(0.5) * v * (T(1) + std::tanh(T(kGeluBeta) * (v + T(kGeluKappa) * v * v * v)));
      });
    case UnaryOp::Clamp:
      return map1(x, o, n, [p0, p1](T v) { // min(max(x, lo), hi), as PyTorch
        T r = v < p0 ? p0 : v;
        return r > p1 ? p1 : r;
      });
    case UnaryOp::PowScalar:
      if (p0 == T(2)) return map1(x, o, n, [](T v) { return v * v; });
      if (p0 == T(1)) return map1(x, o, n, [](T v) { return v; });
      return map1(x, o, n, [p0](T v) { return std::pow(v, p0); });
  }
}

// dx = dy f'(x); the kink conventions are documented in kernels/ref/elementwise.cpp.
template <typename S, typename T = compute_t<S>>
static void unary_backward_typed(UnaryOp op, const S* x, const S* g, S* o, int64_t n, T p0,
                                 T p1) {
  switch (op) {
    case UnaryOp::Neg: return map2(x, 1, g, 1, o, n, [](T, T d) { return -d; });
    case UnaryOp::Exp: return map2(x, 1, g, 1, o, n, [](T v, T d) { return d * std::exp(v); });
    case UnaryOp::Log: return map2(x, 1, g, 1, o, n, [](T v, T d) { return d / v; });
    case UnaryOp::Sqrt:
      return map2(x, 1, g, 1, o, n, [](T v, T d) { return d / (T(2) * std::sqrt(v)); });
    case UnaryOp::Rsqrt:
      return map2(x, 1, g, 1, o, n, [](T v, T d) { return T(-0.5) * d / (v * std::sqrt(v)); });
    case UnaryOp::Abs:
      return map2(x, 1, g, 1, o, n, [](T v, T d) { return d * T((T(0) < v) - (v < T(0))); });
    case UnaryOp::Sign:
    case UnaryOp::Round:
    case UnaryOp::Floor: return map2(x, 1, g, 1, o, n, [](T, T) { return T(0); });
    case UnaryOp::Square: return map2(x, 1, g, 1, o, n, [](T v, T d) { return T(2) * v * d; });
    case UnaryOp::Reciprocal: return map2(x, 1, g, 1, o, n, [](T v, T d) { return -d / (v * v); });
    case UnaryOp::Relu: return map2(x, 1, g, 1, o, n, [](T v, T d) { return v > T(0) ? d : T(0); });
    case UnaryOp::Relu6:
      return map2(x, 1, g, 1, o, n,
                  [](T v, T d) { return (v > T(0) && v < T(6)) ? d : T(0); });
    case UnaryOp::LeakyRelu:
      return map2(x, 1, g, 1, o, n, [p0](T v, T d) { return v > T(0) ? d : d * p0; });
    case UnaryOp::Sigmoid:
      return map2(x, 1, g, 1, o, n, [](T v, T d) {
        T s = T(1) / (T(1) + std::exp(-v));
        return d * s * (T(1) - s);
      });
    case UnaryOp::Tanh:
      return map2(x, 1, g, 1, o, n, [](T v, T d) {
        T t = std::tanh(v);
        return d * (T(1) - t * t);
      });
    case UnaryOp::Silu:
      return map2(x, 1, g, 1, o, n, [](T v, T d) {
        T s = T(1) / (T(1) + std::exp(-v));
        return d * s * (T(1) + v * (T(1) - s));
      });
    case UnaryOp::Hardswish:
      return map2(x, 1, g, 1, o, n, [](T v, T d) {
        return v < T(-3) ? T(0) : (v <= T(3) ? d * (v / T(3) + T(0.5)) : d);
      });
    case UnaryOp::Hardsigmoid:
      return map2(x, 1, g, 1, o, n,
                  [](T v, T d) { return (v > T(-3) && v < T(3)) ? d / T(6) : T(0); });
    case UnaryOp::Gelu:
      return map2(x, 1, g, 1, o, n, [](T v, T d) {
        T cdf = T(0.5) * (T(1) + std::erf(v * T(kInvSqrt2)));
        T pdf = T(kInvSqrt2Pi) * std::exp(T(-0.5) * v * v);
        return d * (cdf + v * pdf);
      });
    case UnaryOp::GeluTanh:
      return map2(x, 1, g, 1, o, n, [](T v, T d) {
        T inner = T(kGeluBeta) * (v + T(kGeluKappa) * v * v * v);
        T t = std::tanh(inner);
        T left = T(0.5) * (T(1) + t);
        T right = T(0.5) * v * (T(1) - t * t) * T(kGeluBeta) * (T(1) + T(3 * kGeluKappa) * v * v);
        return d * (left + right);
      });
    case UnaryOp::Clamp:
      return map2(x, 1, g, 1, o, n,
                  [p0, p1](T v, T d) { return (v >= p0 && v <= p1) ? d : T(0); });
    case UnaryOp::PowScalar:
      if (p0 == T(0)) return map2(x, 1, g, 1, o, n, [](T, T) { return T(0); });
      return map2(x, 1, g, 1, o, n,
                  [p0](T v, T d) { return d * p0 * std::pow(v, p0 - T(1)); });
  }
}

void cpu_unary(UnaryOp op, DType dtype, const void* x, void* out, int64_t n, double p0, double p1) {
  switch (dtype) {
    case DType::Float32:
      return unary_typed<float>(op, (const float*)x, (float*)out, n, (float)p0, (float)p1);
    case DType::Float64:
      return unary_typed<double>(op, (const double*)x, (double*)out, n, p0, p1);
    case DType::BFloat16:
      return unary_typed<BF16>(op, (const BF16*)x, (BF16*)out, n, (float)p0, (float)p1);
    case DType::Float16:
      return unary_typed<F16>(op, (const F16*)x, (F16*)out, n, (float)p0, (float)p1);
    default: break;
  }
  throw Error(fmt::format("{}: no cpu kernel for dtype {}", unary_name(op), dtype));
}

void cpu_unary_backward(UnaryOp op, DType dtype, const void* x, const void* dy, void* dx, int64_t n,
                        double p0, double p1) {
  switch (dtype) {
    case DType::Float32:
      return unary_backward_typed<float>(op, (const float*)x, (const float*)dy, (float*)dx, n,
                                         (float)p0, (float)p1);
    case DType::Float64:
      return unary_backward_typed<double>(op, (const double*)x, (const double*)dy, (double*)dx, n,
                                          p0, p1);
    case DType::BFloat16:
      return unary_backward_typed<BF16>(op, (const BF16*)x, (const BF16*)dy, (BF16*)dx, n,
                                        (float)p0, (float)p1);
    case DType::Float16:
      return unary_backward_typed<F16>(op, (const F16*)x, (const F16*)dy, (F16*)dx, n, (float)p0,
                                       (float)p1);
    default: break;
  }
  throw Error(fmt::format("{} backward: no cpu kernel for dtype {}", unary_name(op), dtype));
}

// ---- where ------------------------------------------------------------------------------------

template <typename U>
static void where_bits(const bool* c, int64_t cs, const U* a, int64_t as, const U* b, int64_t bs,
                       U* out, int64_t n) {
  if (n <= 0) return;
  const bool par = n >= kParallelMin;
  if (cs == 1 && as == 1 && bs == 1) {
#pragma omp parallel for if (par) schedule(static)
    for (int64_t i = 0; i < n; i++) out[i] = c[i] ? a[i] : b[i];
  } else {
#pragma omp parallel for if (par) schedule(static)
    for (int64_t i = 0; i < n; i++) out[i] = c[i * cs] ? a[i * as] : b[i * bs];
  }
}

void cpu_where(DType dtype, const bool* cond, int64_t c_step, const void* a, int64_t a_step,
               const void* b, int64_t b_step, void* out, int64_t n) {
  switch (dtype_size(dtype)) {
    case 1: return where_bits<uint8_t>(cond, c_step, (const uint8_t*)a, a_step, (const uint8_t*)b,
                                       b_step, (uint8_t*)out, n);
    case 2: return where_bits<uint16_t>(cond, c_step, (const uint16_t*)a, a_step,
                                        (const uint16_t*)b, b_step, (uint16_t*)out, n);
    case 4: return where_bits<uint32_t>(cond, c_step, (const uint32_t*)a, a_step,
                                        (const uint32_t*)b, b_step, (uint32_t*)out, n);
    case 8: return where_bits<uint64_t>(cond, c_step, (const uint64_t*)a, a_step,
                                        (const uint64_t*)b, b_step, (uint64_t*)out, n);
  }
  throw Error(fmt::format("where: no cpu kernel for dtype {}", dtype));
}

} // namespace

const ElementwiseKernels ElementwiseKernels::cpu = {
    .binary = cpu_binary,
    .unary = cpu_unary,
    .unary_backward = cpu_unary_backward,
    .where = cpu_where,
};

} // namespace tb::kernels
