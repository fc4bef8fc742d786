// kernels/cuda/elementwise.cu — flat elementwise kernels on the device: one thread per element
// (grid-stride loop), the op chosen by a switch that is the same for every thread.
//
// The formulas are kernels/ref/elementwise.cpp's, line for line (that file is the specification):
// arithmetic in the storage type T, integer Add/Sub/Mul wrap around, NaN propagates through
// maximum/minimum/relu/clamp, Round is half-to-even (rint), the gradient kinks follow PyTorch.
// An input step is 1 (one element per output) or 0 (a broadcast scalar).
#include "kernels/cuda/common.cuh"
#include "kernels/elementwise.h"

#include <type_traits>

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

// ---- binary ------------------------------------------------------------------------------------

// Wrapping integer arithmetic (signed overflow is undefined; unsigned wraps); plain for floats.
template <typename T> __device__ T wrap_add(T a, T b) {
  if constexpr (std::is_integral_v<T>) {
    using U = std::make_unsigned_t<T>;
    return (T)((U)a + (U)b);
  } else {
    return a + b;
  }
}
template <typename T> __device__ T wrap_mul(T a, T b) {
  if constexpr (std::is_integral_v<T>) {
    using U = std::make_unsigned_t<T>;
    return (T)((U)a * (U)b);
  } else {
    return a * b;
  }
}

template <typename T>
__global__ void binary_arith_kernel(BinaryOp op, const T* a, int64_t as, const T* b, int64_t bs,
                                    T* out, int64_t n, double alpha) {
  const T al = (T)alpha;
  TB_GRID_STRIDE_LOOP(i, n) {
    T x = a[i * as], y = b[i * bs];
    T r;
    switch (op) {
      case BinaryOp::Add: r = wrap_add(x, alpha == 1.0 ? y : wrap_mul(al, y)); break;
      case BinaryOp::Sub: r = wrap_add(x, wrap_mul((T)(-al), y)); break;
      case BinaryOp::Mul: r = wrap_mul(x, y); break;
      case BinaryOp::Div: r = x / y; break; // floats only (checked on the host)
      case BinaryOp::Pow:
        if constexpr (std::is_floating_point_v<T>) r = pow(x, y);
        else r = T(0);
        break;
      case BinaryOp::Maximum: r = (x != x) ? x : (y != y) ? y : (x > y ? x : y); break;
      case BinaryOp::Minimum: r = (x != x) ? x : (y != y) ? y : (x < y ? x : y); break;
      default: r = T(0); break;
    }
    out[i] = r;
  }
}

template <typename T>
__global__ void binary_compare_kernel(BinaryOp op, const T* a, int64_t as, const T* b, int64_t bs,
                                      bool* out, int64_t n) {
  TB_GRID_STRIDE_LOOP(i, n) {
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
static void launch_binary(BinaryOp op, const void* a, int64_t as, const void* b, int64_t bs,
                          void* out, int64_t n, double alpha) {
  if (is_comparison(op))
    binary_compare_kernel<T><<<grid_for(n), kBlock, 0, cuda_stream()>>>(
        op, (const T*)a, as, (const T*)b, bs, (bool*)out, n);
  else
    binary_arith_kernel<T><<<grid_for(n), kBlock, 0, cuda_stream()>>>(
        op, (const T*)a, as, (const T*)b, bs, (T*)out, n, alpha);
  cuda_check_launch(binary_name(op));
}

void cuda_binary(BinaryOp op, DType dtype, const void* a, int64_t a_step, const void* b,
                 int64_t b_step, void* out, int64_t n, double alpha) {
  bool int_ok = op != BinaryOp::Div && op != BinaryOp::Pow;
  bool known = dtype == DType::Float32 || dtype == DType::Float64 ||
               (int_ok && (dtype == DType::Int32 || dtype == DType::Int64));
  if (!known) cuda_no_kernel(binary_name(op), dtype);
  if (n <= 0) return;
  switch (dtype) {
    case DType::Float32: return launch_binary<float>(op, a, a_step, b, b_step, out, n, alpha);
    case DType::Float64: return launch_binary<double>(op, a, a_step, b, b_step, out, n, alpha);
    case DType::Int32: return launch_binary<int32_t>(op, a, a_step, b, b_step, out, n, alpha);
    case DType::Int64: return launch_binary<int64_t>(op, a, a_step, b, b_step, out, n, alpha);
    default: cuda_no_kernel(binary_name(op), dtype);
  }
}

// ---- unary ---------------------------------------------------------------------------------------

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

// sqrt(2/pi) and the cubic coefficient of GELU's tanh approximation; 1/sqrt(2), 1/sqrt(2 pi).
constexpr double kGeluBeta = 0.7978845608028654, kGeluKappa = 0.044715;
constexpr double kInvSqrt2 = 0.7071067811865476, kInvSqrt2Pi = 0.3989422804014327;

// The unqualified math functions below are CUDA's overloads (expf for float, exp for double).
template <typename T> __device__ T unary_scalar(UnaryOp op, T x, T p0, T p1) {
  switch (op) {
    case UnaryOp::Neg: return -x;
    case UnaryOp::Exp: return exp(x);
    case UnaryOp::Log: return log(x);
    case UnaryOp::Sqrt: return sqrt(x);
    case UnaryOp::Rsqrt: return T(1) / sqrt(x);
    case UnaryOp::Abs: return fabs(x);
    case UnaryOp::Sign: return T((T(0) < x) - (x < T(0)));
    case UnaryOp::Square: return x * x;
    case UnaryOp::Reciprocal: return T(1) / x;
    case UnaryOp::Round: return rint(x); // half to even
    case UnaryOp::Floor: return floor(x);
    case UnaryOp::Relu: return x < T(0) ? T(0) : x;
    case UnaryOp::Relu6: return x < T(0) ? T(0) : (x > T(6) ? T(6) : x);
    case UnaryOp::LeakyRelu: return x < T(0) ? x * p0 : x;
    case UnaryOp::Sigmoid: return T(1) / (T(1) + exp(-x));
    case UnaryOp::Tanh: return tanh(x);
    case UnaryOp::Silu: return x / (T(1) + exp(-x));
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
    case UnaryOp::Gelu: return T(0.5) * x * (T(1) + erf(x * T(kInvSqrt2)));
    case UnaryOp::GeluTanh:
      return T(0.5) * x * (T(1) + tanh(T(kGeluBeta) * (x + T(kGeluKappa) * x * x * x)));
    case UnaryOp::Clamp: return x < p0 ? p0 : (x > p1 ? p1 : x);
    case UnaryOp::PowScalar: return pow(x, p0);
  }
  return x;
}

// dy * f'(x). Kinks as PyTorch: relu'(0) = 0; relu6 and hardsigmoid pass the gradient only
// strictly inside (lo, hi); clamp passes it on the closed [lo, hi]; abs'(0) = 0.
template <typename T> __device__ T unary_grad_scalar(UnaryOp op, T x, T dy, T p0, T p1) {
  switch (op) {
    case UnaryOp::Neg: return -dy;
    case UnaryOp::Exp: return dy * exp(x);
    case UnaryOp::Log: return dy / x;
    case UnaryOp::Sqrt: return dy / (T(2) * sqrt(x));
    case UnaryOp::Rsqrt: return T(-0.5) * dy / (x * sqrt(x));
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
      T s = T(1) / (T(1) + exp(-x));
      return dy * s * (T(1) - s);
    }
    case UnaryOp::Tanh: {
      T t = tanh(x);
      return dy * (T(1) - t * t);
    }
    case UnaryOp::Silu: { // d/dx x s(x) = s (1 + x (1 - s))
      T s = T(1) / (T(1) + exp(-x));
      return dy * s * (T(1) + x * (T(1) - s));
    }
    case UnaryOp::Hardswish:
      return x < T(-3) ? T(0) : (x <= T(3) ? dy * (x / T(3) + T(0.5)) : dy);
    case UnaryOp::Hardsigmoid: return (x > T(-3) && x < T(3)) ? dy / T(6) : T(0);
    case UnaryOp::Gelu: { // Phi(x) + x phi(x)
      T cdf = T(0.5) * (T(1) + erf(x * T(kInvSqrt2)));
      T pdf = T(kInvSqrt2Pi) * exp(T(-0.5) * x * x);
      return dy * (cdf + x * pdf);
    }
    case UnaryOp::GeluTanh: { // 0.5 (1 + t) + 0.5 x (1 - t^2) beta (1 + 3 kappa x^2)
      T inner = T(kGeluBeta) * (x + T(kGeluKappa) * x * x * x);
      T t = tanh(inner);
      T left = T(0.5) * (T(1) + t);
      T right = T(0.5) * x * (T(1) - t * t) * T(kGeluBeta) * (T(1) + T(3 * kGeluKappa) * x * x);
      return dy * (left + right);
    }
    case UnaryOp::Clamp: return (x >= p0 && x <= p1) ? dy : T(0);
    case UnaryOp::PowScalar: // p x^(p-1); 0 for p = 0 (as PyTorch, even at x = 0)
      return p0 == T(0) ? T(0) : dy * p0 * pow(x, p0 - T(1));
  }
  return T(0);
}

template <typename T>
__global__ void unary_kernel(UnaryOp op, const T* x, T* out, int64_t n, T p0, T p1) {
  TB_GRID_STRIDE_LOOP(i, n) out[i] = unary_scalar<T>(op, x[i], p0, p1);
}

template <typename T>
__global__ void unary_backward_kernel(UnaryOp op, const T* x, const T* dy, T* dx, int64_t n, T p0,
                                      T p1) {
  TB_GRID_STRIDE_LOOP(i, n) dx[i] = unary_grad_scalar<T>(op, x[i], dy[i], p0, p1);
}

void cuda_unary(UnaryOp op, DType dtype, const void* x, void* out, int64_t n, double p0, double p1) {
  if (dtype != DType::Float32 && dtype != DType::Float64) cuda_no_kernel(unary_name(op), dtype);
  if (n <= 0) return;
  if (dtype == DType::Float32)
    unary_kernel<float><<<grid_for(n), kBlock, 0, cuda_stream()>>>(op, (const float*)x,
                                                                   (float*)out, n, (float)p0,
                                                                   (float)p1);
  else
    unary_kernel<double><<<grid_for(n), kBlock, 0, cuda_stream()>>>(op, (const double*)x,
                                                                    (double*)out, n, p0, p1);
  cuda_check_launch(unary_name(op));
}

void cuda_unary_backward(UnaryOp op, DType dtype, const void* x, const void* dy, void* dx,
                         int64_t n, double p0, double p1) {
  if (dtype != DType::Float32 && dtype != DType::Float64)
    cuda_no_kernel(fmt::format("{} backward", unary_name(op)).c_str(), dtype);
  if (n <= 0) return;
  if (dtype == DType::Float32)
    unary_backward_kernel<float><<<grid_for(n), kBlock, 0, cuda_stream()>>>(
        op, (const float*)x, (const float*)dy, (float*)dx, n, (float)p0, (float)p1);
  else
    unary_backward_kernel<double><<<grid_for(n), kBlock, 0, cuda_stream()>>>(
        op, (const double*)x, (const double*)dy, (double*)dx, n, p0, p1);
  cuda_check_launch(unary_name(op));
}

// ---- where: a pure select, so any dtype works by element size ----------------------------------

template <typename U>
__global__ void where_kernel(const bool* c, int64_t cs, const U* a, int64_t as, const U* b,
                             int64_t bs, U* out, int64_t n) {
  TB_GRID_STRIDE_LOOP(i, n) out[i] = c[i * cs] ? a[i * as] : b[i * bs];
}

template <typename U>
static void launch_where(const bool* c, int64_t cs, const void* a, int64_t as, const void* b,
                         int64_t bs, void* out, int64_t n) {
  where_kernel<U><<<grid_for(n), kBlock, 0, cuda_stream()>>>(c, cs, (const U*)a, as, (const U*)b,
                                                             bs, (U*)out, n);
  cuda_check_launch("where");
}

void cuda_where(DType dtype, const bool* cond, int64_t c_step, const void* a, int64_t a_step,
                const void* b, int64_t b_step, void* out, int64_t n) {
  if (n <= 0) return;
  switch (dtype_size(dtype)) {
    case 1: return launch_where<uint8_t>(cond, c_step, a, a_step, b, b_step, out, n);
    case 2: return launch_where<uint16_t>(cond, c_step, a, a_step, b, b_step, out, n);
    case 4: return launch_where<uint32_t>(cond, c_step, a, a_step, b, b_step, out, n);
    case 8: return launch_where<uint64_t>(cond, c_step, a, a_step, b, b_step, out, n);
  }
  cuda_no_kernel("where", dtype);
}

} // namespace

const ElementwiseKernels ElementwiseKernels::cuda = {
    .binary = cuda_binary,
    .unary = cuda_unary,
    .unary_backward = cuda_unary_backward,
    .where = cuda_where,
};

} // namespace tb::kernels
