// kernels/ref/elementwise.cpp — the specification of the flat elementwise kernels: one plain loop,
// one switch per element. kernels/cpu/elementwise.cpp must match these (tests compare them).
//
// Arithmetic happens in the storage type T (float32 stays float32), as PyTorch does on the CPU;
// float16/bfloat16 values are read exactly as float32, computed in float32 and rounded once to
// the half type (ref_half::H), as PyTorch's CPU kernels compute half tensors (and as converting
// the tensor to float32, computing and converting back does).
// Integer Add/Sub/Mul wrap around (computed in the unsigned twin: signed overflow is UB in C++).
// NaN propagates through maximum/minimum/relu/clamp, as in PyTorch.
#include "kernels/elementwise.h"

#include <cmath>
#include <cstring>
#include <type_traits>

#include "kernels/ref/half.h"

namespace tb::kernels {
namespace {

static const char* binary_name(BinaryOp op) {
  switch (op) {
    case BinaryOp::Add: return "add";
    case BinaryOp::Sub: return "sub";
    case BinaryOp::Mul: return "mul";
    case BinaryOp::Div: return "div";
    case BinaryOp::Pow: return "pow";
    case BinaryOp::Maximum: return "maximum";
    case BinaryOp::Minimum: return "minimum";
    case BinaryOp::Eq: return "eq";
    case BinaryOp::Ne: return "ne";
    case BinaryOp::Lt: return "lt";
    case BinaryOp::Le: return "le";
    case BinaryOp::Gt: return "gt";
    case BinaryOp::Ge: return "ge";
  }
  return "binary";
}

static bool is_comparison(BinaryOp op) {
  return op == BinaryOp::Eq || op == BinaryOp::Ne || op == BinaryOp::Lt || op == BinaryOp::Le ||
         op == BinaryOp::Gt || op == BinaryOp::Ge;
}

// Wrapping integer arithmetic; plain arithmetic for floats.
template <typename T> static T wrap_add(T a, T b) {
  if constexpr (std::is_integral_v<T>) {
    using U = std::make_unsigned_t<T>;
    return (T)((U)a + (U)b);
  } else {
    return a + b;
  }
}
template <typename T> static T wrap_mul(T a, T b) {
  if constexpr (std::is_integral_v<T>) {
    using U = std::make_unsigned_t<T>;
    return (T)((U)a * (U)b);
  } else {
    return a * b;
  }
}

template <typename T>
static void binary_arith(BinaryOp op, const T* a, int64_t as, const T* b, int64_t bs, T* out,
                         int64_t n, double alpha) {
  const T al = (T)alpha;
  for (int64_t i = 0; i < n; i++) {
    T x = a[i * as], y = b[i * bs];
    T r;
    switch (op) {
      case BinaryOp::Add: r = wrap_add(x, alpha == 1.0 ? y : wrap_mul(al, y)); break;
      case BinaryOp::Sub: r = wrap_add(x, wrap_mul((T)(-al), y)); break;
      case BinaryOp::Mul: r = wrap_mul(x, y); break;
      case BinaryOp::Div: r = x / y; break;           // floats only (checked by the caller)
      case BinaryOp::Pow: r = (T)std::pow(x, y); break; // floats only
      case BinaryOp::Maximum: r = (x != x) ? x : (y != y) ? y : (x > y ? x : y); break;
      case BinaryOp::Minimum: r = (x != x) ? x : (y != y) ? y : (x < y ? x : y); break;
      default: r = T(0); break;
    }
    out[i] = r;
  }
}

template <typename T>
static void binary_compare(BinaryOp op, const T* a, int64_t as, const T* b, int64_t bs, bool* out,
                           int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    T x = a[i * as], y = b[i * bs];
    bool r = false;
    switch (op) {
      case BinaryOp::Eq: r = x == y; break;
      case BinaryOp::Ne: r = x != y; break;
      case BinaryOp::Lt: r = x < y; break;
      case BinaryOp::Le: r = x <= y; break;
      case BinaryOp::Gt: r = x > y; break;
      case BinaryOp::Ge: r = x >= y; break;
      default: break;
    }
    out[i] = r;
  }
}

template <typename T>
static void binary_typed(BinaryOp op, const void* a, int64_t as, const void* b, int64_t bs,
                         void* out, int64_t n, double alpha) {
  if (is_comparison(op))
    binary_compare<T>(op, (const T*)a, as, (const T*)b, bs, (bool*)out, n);
  else
    binary_arith<T>(op, (const T*)a, as, (const T*)b, bs, (T*)out, n, alpha);
}

// float16/bfloat16 (H = ref_half::BF16 or F16): each operand widened to float32, the float32
// kernel above on one element at a time, the result rounded once.
template <typename H>
static void binary_half(BinaryOp op, const void* a, int64_t as, const void* b, int64_t bs,
                        void* out, int64_t n, double alpha) {
  const H* ah = (const H*)a;
  const H* bh = (const H*)b;
  for (int64_t i = 0; i < n; i++) {
    float x = (float)ref_half::load(ah[i * as]), y = (float)ref_half::load(bh[i * bs]);
    if (is_comparison(op)) {
      binary_compare<float>(op, &x, 0, &y, 0, (bool*)out + i, 1);
    } else {
      float r;
      binary_arith<float>(op, &x, 0, &y, 0, &r, 1, alpha);
      ref_half::store(((H*)out)[i], r);
    }
  }
}

void ref_binary(BinaryOp op, DType dtype, const void* a, int64_t a_step, const void* b,
                int64_t b_step, void* out, int64_t n, double alpha) {
  bool int_ok = op != BinaryOp::Div && op != BinaryOp::Pow;
  switch (dtype) {
    case DType::Float32: return binary_typed<float>(op, a, a_step, b, b_step, out, n, alpha);
    case DType::Float64: return binary_typed<double>(op, a, a_step, b, b_step, out, n, alpha);
    case DType::Int32:
      if (int_ok) return binary_typed<int32_t>(op, a, a_step, b, b_step, out, n, alpha);
      break;
    case DType::Int64:
      if (int_ok) return binary_typed<int64_t>(op, a, a_step, b, b_step, out, n, alpha);
      break;
    case DType::BFloat16:
      return binary_half<ref_half::BF16>(op, a, a_step, b, b_step, out, n, alpha);
    case DType::Float16:
      return binary_half<ref_half::F16>(op, a, a_step, b, b_step, out, n, alpha);
    default: break;
  }
  throw Error(fmt::format("{}: no reference cpu kernel for dtype {}", binary_name(op), dtype));
}

// ---- unary ------------------------------------------------------------------------------------

static const char* unary_name(UnaryOp op) {
  switch (op) {
    case UnaryOp::Neg: return "neg";
    case UnaryOp::Exp: return "exp";
    case UnaryOp::Log: return "log";
    case UnaryOp::Sqrt: return "sqrt";
    case UnaryOp::Rsqrt: return "rsqrt";
    case UnaryOp::Abs: return "abs";
    case UnaryOp::Sign: return "sign";
    case UnaryOp::Square: return "square";
    case UnaryOp::Reciprocal: return "reciprocal";
    case UnaryOp::Round: return "round";
    case UnaryOp::Floor: return "floor";
    case UnaryOp::Relu: return "relu";
    case UnaryOp::Relu6: return "relu6";
    case UnaryOp::LeakyRelu: return "leaky_relu";
    case UnaryOp::Sigmoid: return "sigmoid";
    case UnaryOp::Tanh: return "tanh";
    case UnaryOp::Silu: return "silu";
    case UnaryOp::Hardswish: return "hardswish";
    case UnaryOp::Hardsigmoid: return "hardsigmoid";
    case UnaryOp::Gelu: return "gelu";
    case UnaryOp::GeluTanh: return "gelu";
    case UnaryOp::Clamp: return "clamp";
    case UnaryOp::PowScalar: return "pow";
  }
  return "unary";
}

// sqrt(2/pi) and the cubic coefficient of GELU's tanh approximation.
constexpr double kGeluBeta = 0.7978845608028654, kGeluKappa = 0.044715;
constexpr double kInvSqrt2 = 0.7071067811865476, kInvSqrt2Pi = 0.3989422804014327;

template <typename T> static T unary_scalar(UnaryOp op, T x, T p0, T p1) {
  switch (op) {
    case UnaryOp::Neg: return -x;
    case UnaryOp::Exp: return std::exp(x);
    case UnaryOp::Log: return std::log(x);
    case UnaryOp::Sqrt: return std::sqrt(x);
    case UnaryOp::Rsqrt: return T(1) / std::sqrt(x);
    case UnaryOp::Abs: return std::abs(x);
    case UnaryOp::Sign: return T((T(0) < x) - (x < T(0)));
    case UnaryOp::Square: return x * x;
    case UnaryOp::Reciprocal: return T(1) / x;
    case UnaryOp::Round: return std::nearbyint(x); // default rounding mode: half to even
    case UnaryOp::Floor: return std::floor(x);
    case UnaryOp::Relu: return x < T(0) ? T(0) : x;
    case UnaryOp::Relu6: return x < T(0) ? T(0) : (x > T(6) ? T(6) : x);
    case UnaryOp::LeakyRelu: return x < T(0) ? x * p0 : x;
    case UnaryOp::Sigmoid: return T(1) / (T(1) + std::exp(-x));
    case UnaryOp::Tanh: return std::tanh(x);
    case UnaryOp::Silu: return x / (T(1) + std::exp(-x));
    case UnaryOp::Hardswish: {
      T r = x + T(3);
      r = r < T(0) ? T(0) : (r > T(6) ? T(6) : r);
      return x * r / T(6);
    }
    case UnaryOp::Hardsigmoid: {
      T r = x + T(3);
      r = r < T(0) ? T(0) : (r > T(6) ? T(6) : r);
      return r / T(6);
    }
    case UnaryOp::Gelu: return T(0.5) * x * (T(1) + std::erf(x * T(kInvSqrt2)));
    case UnaryOp::GeluTanh:
      return T(0.5) * x * (T(1) + std::tanh(T(kGeluBeta) * (x + T(kGeluKappa) * x * x * x)));
    case UnaryOp::Clamp: { // min(max(x, lo), hi): all hi when lo > hi, as PyTorch
      T r = x < p0 ? p0 : x;
      return r > p1 ? p1 : r;
    }
    case UnaryOp::PowScalar: return std::pow(x, p0);
  }
  return x;
}

// f'(x) times dy. Kinks follow PyTorch: relu' = 0 at 0; relu6/hardtanh and hardsigmoid pass the
// gradient only strictly inside (lo, hi); clamp passes it on the closed [lo, hi]; abs'(0) = 0.
template <typename T> static T unary_grad_scalar(UnaryOp op, T x, T dy, T p0, T p1) {
  switch (op) {
    case UnaryOp::Neg: return -dy;
    case UnaryOp::Exp: return dy * std::exp(x);
    case UnaryOp::Log: return dy / x;
    case UnaryOp::Sqrt: return dy / (T(2) * std::sqrt(x));
    case UnaryOp::Rsqrt: return T(-0.5) * dy / (x * std::sqrt(x));
    case UnaryOp::Abs: return dy * T((T(0) < x) - (x < T(0)));
    case UnaryOp::Sign:
    case UnaryOp::Round:
    case UnaryOp::Floor: return T(0);
    case UnaryOp::Square: return T(2) * x * dy;
    case UnaryOp::Reciprocal: return -dy / (x * x);
    case UnaryOp::Relu: return x > T(0) ? dy : T(0);
    case UnaryOp::Relu6: return (x > T(0) && x < T(6)) ? dy : T(0);
    case UnaryOp::LeakyRelu: return x > T(0) ? dy : dy * p0;
    case UnaryOp::Sigmoid: {
      T s = T(1) / (T(1) + std::exp(-x));
      return dy * s * (T(1) - s);
    }
    case UnaryOp::Tanh: {
      T t = std::tanh(x);
      return dy * (T(1) - t * t);
    }
    case UnaryOp::Silu: { // d/dx x s(x) = s (1 + x (1 - s))
      T s = T(1) / (T(1) + std::exp(-x));
      return dy * s * (T(1) + x * (T(1) - s));
    }
    case UnaryOp::Hardswish:
      return x < T(-3) ? T(0) : (x <= T(3) ? dy * (x / T(3) + T(0.5)) : dy);
    case UnaryOp::Hardsigmoid: return (x > T(-3) && x < T(3)) ? dy / T(6) : T(0);
    case UnaryOp::Gelu: { // Phi(x) + x phi(x)
      T cdf = T(0.5) * (T(1) + std::erf(x * T(kInvSqrt2)));
      T pdf = T(kInvSqrt2Pi) * std::exp(T(-0.5) * x * x);
      return dy * (cdf + x * pdf);
    }
    case UnaryOp::GeluTanh: { // 0.5 (1 + t) + 0.5 x (1 - t^2) beta (1 + 3 kappa x^2)
      T inner = T(kGeluBeta) * (x + T(kGeluKappa) * x * x * x);
      T t = std::tanh(inner);
      T left = T(0.5) * (T(1) + t);
      T right = T(0.5) * x * (T(1) - t * t) * T(kGeluBeta) * (T(1) + T(3 * kGeluKappa) * x * x);
      return dy * (left + right);
    }
    case UnaryOp::Clamp: return (x >= p0 && x <= p1) ? dy : T(0);
    case UnaryOp::PowScalar: // d/dx x^p = p x^(p-1); 0 for p = 0 (as PyTorch, even at x = 0)
      return p0 == T(0) ? T(0) : dy * p0 * std::pow(x, p0 - T(1));
  }
  return T(0);
}

// float16/bfloat16: x (and dy) widened to float32, the float32 formula, the result rounded once.
template <typename H>
static void unary_half(UnaryOp op, const void* x, const void* dy, void* out, int64_t n, double p0,
                       double p1) {
  const H* xh = (const H*)x;
  const H* gh = (const H*)dy;
  H* o = (H*)out;
  for (int64_t i = 0; i < n; i++) {
    float v = (float)ref_half::load(xh[i]);
    float r = gh ? unary_grad_scalar<float>(op, v, (float)ref_half::load(gh[i]), (float)p0,
                                            (float)p1)
                 : unary_scalar<float>(op, v, (float)p0, (float)p1);
    ref_half::store(o[i], r);
  }
}

void ref_unary(UnaryOp op, DType dtype, const void* x, void* out, int64_t n, double p0, double p1) {
  switch (dtype) {
    case DType::Float32: {
      const float* xp = (const float*)x;
      float* o = (float*)out;
      for (int64_t i = 0; i < n; i++) o[i] = unary_scalar<float>(op, xp[i], (float)p0, (float)p1);
      return;
    }
    case DType::Float64: {
      const double* xp = (const double*)x;
      double* o = (double*)out;
      for (int64_t i = 0; i < n; i++) o[i] = unary_scalar<double>(op, xp[i], p0, p1);
      return;
    }
    case DType::BFloat16: return unary_half<ref_half::BF16>(op, x, nullptr, out, n, p0, p1);
    case DType::Float16: return unary_half<ref_half::F16>(op, x, nullptr, out, n, p0, p1);
    default: break;
  }
  throw Error(fmt::format("{}: no reference cpu kernel for dtype {}", unary_name(op), dtype));
}

void ref_unary_backward(UnaryOp op, DType dtype, const void* x, const void* dy, void* dx, int64_t n,
                        double p0, double p1) {
  switch (dtype) {
    case DType::Float32: {
      const float *xp = (const float*)x, *g = (const float*)dy;
      float* o = (float*)dx;
      for (int64_t i = 0; i < n; i++)
        o[i] = unary_grad_scalar<float>(op, xp[i], g[i], (float)p0, (float)p1);
      return;
    }
    case DType::Float64: {
      const double *xp = (const double*)x, *g = (const double*)dy;
      double* o = (double*)dx;
      for (int64_t i = 0; i < n; i++) o[i] = unary_grad_scalar<double>(op, xp[i], g[i], p0, p1);
      return;
    }
    case DType::BFloat16: return unary_half<ref_half::BF16>(op, x, dy, dx, n, p0, p1);
    case DType::Float16: return unary_half<ref_half::F16>(op, x, dy, dx, n, p0, p1);
    default: break;
  }
  throw Error(
      fmt::format("{} backward: no reference cpu kernel for dtype {}", unary_name(op), dtype));
}

// ---- where: a pure select, so any dtype works by element size ---------------------------------

template <typename U>
static void where_bits(const bool* c, int64_t cs, const U* a, int64_t as, const U* b, int64_t bs,
                       U* out, int64_t n) {
  for (int64_t i = 0; i < n; i++) out[i] = c[i * cs] ? a[i * as] : b[i * bs];
}

void ref_where(DType dtype, const bool* cond, int64_t c_step, const void* a, int64_t a_step,
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
  throw Error(fmt::format("where: no reference cpu kernel for dtype {}", dtype));
}

} // namespace

const ElementwiseKernels ElementwiseKernels::ref = {
    .binary = ref_binary,
    .unary = ref_unary,
    .unary_backward = ref_unary_backward,
    .where = ref_where,
};

} // namespace tb::kernels
