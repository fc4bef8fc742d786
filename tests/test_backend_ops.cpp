// tests/test_backend_ops.cpp — one table of op cases, run on every backend present, as ggml's
// tests/test-backend-ops.cpp: the reference CPU kernels (kernels/ref/, the specification), the fast
// CPU kernels (kernels/cpu/) and, when a GPU is there, the CUDA kernels (kernels/cuda/). Each case
// runs on fresh copies of the same inputs (same strides: channels-last stays channels-last) on
// every backend, then backward with the same random upward gradient; the forward output (values
// and strides) and the gradients of the floating inputs must match the reference backend's.
//
// A new op (or a new kernel of an existing family) gets its rows in op_cases() below; nothing else
// in this file changes. A backend that has no kernel for an op yet (gather on CUDA today) raises
// "<op>: no CUDA kernel yet"; the case is then listed as skipped on that backend, and starts being
// compared the day its kernel lands.
//
// Tolerance, per dtype, on max |got - want| <= tol (1 + max |want|) per tensor: the fast kernels
// sum in other orders (OpenBLAS, oneDNN and CUDA blocking, OpenMP partial sums, tree reductions)
// and some evaluate exp/tanh/erf in the dtype where the reference works in double. float32: sums
// of up to a few hundred terms here, each order differing by ~1e-7 relative, so 1e-5; float64 the
// same rounding at 1e-16, so 1e-12. Integer and bool results (argmax, comparisons, integer
// arithmetic) must be equal.
#include "gradcheck.h"

#include <tb/quant.h>

#include <functional>
#include <set>
#include <string>

using namespace tb;

namespace {

// ---- the inputs of a case -----------------------------------------------------------------------

// How an input is filled. Floating values take the dtype of the run (float32 or float64; for the
// integer runs of the integer cases, normal values x 20 rounded).
enum class Fill {
  Normal,   // standard normal (times `scale`)
  Positive, // |normal| + 0.5: log, sqrt, divisors, pow bases, variances
  Halves,   // normal rounded to halves: ties for max/min/comparisons, round-half-to-even
  Index,    // int64 in [0, hi): class targets, indices
  Mask,     // bool
  WithNaN,  // normal, every 5th element NaN
};

struct In {
  Shape shape;
  Fill fill = Fill::Normal;
  bool grad = true;           // a floating input whose gradient is compared
  bool channels_last = false; // 4-D, NHWC memory order
  double scale = 1.0;
  int64_t hi = 0;             // Index: values in [0, hi)
  bool float32 = false;       // float32 in every run (mixed precision: a half row's parameters)
};

In x(Shape s, double scale = 1.0) { return {s, Fill::Normal, true, false, scale}; }
In pos(Shape s) { return {s, Fill::Positive}; }
In halves(Shape s) { return {s, Fill::Halves}; }
In nhwc(Shape s) { return {s, Fill::Normal, true, true}; }
In index(Shape s, int64_t hi) { return {s, Fill::Index, false, false, 1.0, hi}; }
In mask(Shape s) { return {s, Fill::Mask, false}; }
In buffer(Shape s) { return {s, Fill::Positive, false}; } // running statistics: no gradient
In nan(Shape s) { return {s, Fill::WithNaN, false}; }
// Mixed-precision parameters of the half rows: float32 whatever the run's dtype.
In x32(Shape s) { return {s, Fill::Normal, true, false, 1.0, 0, true}; }
In buffer32(Shape s) { return {s, Fill::Positive, false, false, 1.0, 0, true}; }

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

const std::vector<DType> kFloats = {kFloat32, kFloat64};
const std::vector<DType> kInts = {kInt32, kInt64};
const std::vector<DType> kHalves = {kBFloat16, kFloat16}; // mixed-precision kernels

struct OpCase {
  std::string name;
  std::vector<In> inputs;
  Fn fn; // the op on the inputs; one tensor out (several outputs: return them concatenated)
  std::vector<DType> dtypes = kFloats;
};

// ---- helpers for the cases ----------------------------------------------------------------------

Conv2dParams conv(int64_t stride, int64_t pad, int64_t dilation = 1, int64_t groups = 1) {
  return {stride, stride, pad, pad, dilation, dilation, groups};
}

// A kh x kw window; stride 0: the kernel size.
Pool2dParams pool(int64_t kh, int64_t kw, int64_t stride = 0, int64_t pad = 0,
                  bool ceil_mode = false, bool count_include_pad = true) {
  return {kh, kw, stride, stride, pad, pad, ceil_mode, count_include_pad};
}

// Class targets with rows 1 and 2 set to ignore_index (-100).
Tensor with_ignored(const Tensor& t) {
  Tensor r = t.clone();
  r.narrow(0, 1, 2).fill_(-100);
  return r;
}

// The output of batch_norm in training followed by the running statistics it updated in place.
Tensor bn_train(const std::vector<Tensor>& v, bool affine) {
  Tensor rm = v[1], rv = v[2];
  Tensor y = batch_norm(v[0], rm, rv, affine ? v[3] : Tensor(), affine ? v[4] : Tensor(),
                        {.training = true, .momentum = 0.3});
  return cat({flatten(y, 0), rm, rv});
}

// Half rows: y (half) and the float32 running statistics are separate cases (one dtype a case).
Tensor bn_train_half_y(const std::vector<Tensor>& v) {
  return batch_norm(v[0], v[1], v[2], v.size() > 3 ? v[3] : Tensor(),
                    v.size() > 4 ? v[4] : Tensor(), {.training = true, .momentum = 0.3});
}
Tensor bn_train_half_stats(const std::vector<Tensor>& v) {
  batch_norm(v[0], v[1], v[2], v[3], v[4], {.training = true, .momentum = 0.3});
  return cat({v[1], v[2]});
}

// ---- the table ----------------------------------------------------------------------------------

const std::vector<OpCase>& op_cases() {
  static const std::vector<OpCase> cases = {
      // binary elementwise, broadcasting, scalars, layouts
      {"add alpha, broadcast", {x({3, 1, 5}), x({4, 5})},
       [](auto& v) { return add(v[0], v[1], 0.5); }},
      {"sub alpha", {x({4, 5}), x({4, 5})}, [](auto& v) { return sub(v[0], v[1], 2.0); }},
      {"mul, 0-d operand", {x({3, 4}), x({})}, [](auto& v) { return mul(v[0], v[1]); }},
      {"div", {x({6, 7}), pos({7})}, [](auto& v) { return div(v[0], v[1]); }},
      {"pow", {pos({5, 6}), x({5, 6})}, [](auto& v) { return pow(v[0], v[1]); }},
      {"maximum with ties", {halves({4, 9}), halves({4, 9})},
       [](auto& v) { return maximum(v[0], v[1]); }},
      {"minimum with ties", {halves({4, 9}), halves({9})},
       [](auto& v) { return minimum(v[0], v[1]); }},
      {"scalar ops", {x({5, 3})},
       [](auto& v) { return rsub(div(mul(add(v[0], 2.0), 3.0), 4.0), 1.0); }},
      {"add, channels-last operands", {nhwc({2, 3, 4, 5}), nhwc({2, 3, 4, 5})},
       [](auto& v) { return add(v[0], v[1]); }},
      {"mul, transposed view", {x({6, 4}), x({4, 6})}, [](auto& v) { return mul(v[0].t(), v[1]); }},
      {"eq", {halves({5, 6}), halves({5, 6})}, [](auto& v) { return eq(v[0], v[1]); }},
      {"ne", {halves({5, 6}), halves({6})}, [](auto& v) { return ne(v[0], v[1]); }},
      {"lt", {halves({5, 6}), halves({5, 6})}, [](auto& v) { return lt(v[0], v[1]); }},
      {"le", {halves({5, 6}), halves({5, 1})}, [](auto& v) { return le(v[0], v[1]); }},
      {"gt", {halves({5, 6}), halves({5, 6})}, [](auto& v) { return gt(v[0], v[1]); }},
      {"ge scalar", {halves({5, 6})}, [](auto& v) { return ge(v[0], 0.5); }},
      {"int add, broadcast", {x({6, 7}), x({7})},
       [](auto& v) { return add(v[0], v[1], 3.0); }, kInts},
      {"int sub", {x({6, 7}), x({6, 7})}, [](auto& v) { return sub(v[0], v[1]); }, kInts},
      {"int mul", {x({6, 7}), x({6, 7})}, [](auto& v) { return mul(v[0], v[1]); }, kInts},
      {"int maximum", {x({6, 7}), x({6, 7})}, [](auto& v) { return maximum(v[0], v[1]); }, kInts},
      {"int minimum", {x({6, 7}), x({1, 7})}, [](auto& v) { return minimum(v[0], v[1]); }, kInts},
      {"int lt", {x({6, 7}), x({6, 7})}, [](auto& v) { return lt(v[0], v[1]); }, kInts},
      {"int eq", {halves({6, 7}), halves({7})}, [](auto& v) { return eq(v[0], v[1]); }, kInts},
      {"maximum NaN", {nan({3, 7}), nan({7})}, [](auto& v) { return maximum(v[0], v[1]); }},
      {"minimum NaN", {nan({3, 7}), x({3, 7})}, [](auto& v) { return minimum(v[0], v[1]); }},
      {"where", {mask({4, 5}), x({4, 5}), x({5})}, [](auto& v) { return where(v[0], v[1], v[2]); }},
      // unary elementwise (inputs spread over [-6, 6] so every piece of relu6/hardswish is hit)
      {"neg", {x({7, 33})}, [](auto& v) { return neg(v[0]); }},
      {"exp", {x({7, 33})}, [](auto& v) { return exp(v[0]); }},
      {"log", {pos({7, 33})}, [](auto& v) { return log(v[0]); }},
      {"sqrt", {pos({7, 33})}, [](auto& v) { return sqrt(v[0]); }},
      {"rsqrt", {pos({7, 33})}, [](auto& v) { return rsqrt(v[0]); }},
      {"abs", {x({7, 33})}, [](auto& v) { return abs(v[0]); }},
      {"sign", {x({7, 33})}, [](auto& v) { return sign(v[0]); }},
      {"square", {x({7, 33})}, [](auto& v) { return square(v[0]); }},
      {"reciprocal", {pos({7, 33})}, [](auto& v) { return reciprocal(v[0]); }},
      {"round half to even", {halves({7, 33})}, [](auto& v) { return round(v[0]); }},
      {"floor", {x({7, 33}, 3.0)}, [](auto& v) { return floor(v[0]); }},
      {"clamp", {x({7, 33})}, [](auto& v) { return clamp(v[0], -0.5, 0.7); }},
      {"clamp max only", {x({7, 33})}, [](auto& v) { return clamp(v[0], std::nullopt, 0.3); }},
      {"pow 3", {x({7, 33})}, [](auto& v) { return pow(v[0], 3.0); }},
      {"pow 0.5", {pos({7, 33})}, [](auto& v) { return pow(v[0], 0.5); }},
      {"relu", {x({7, 33}, 3.0)}, [](auto& v) { return relu(v[0]); }},
      {"relu6", {x({7, 33}, 3.0)}, [](auto& v) { return relu6(v[0]); }},
      {"leaky_relu", {x({7, 33}, 3.0)}, [](auto& v) { return leaky_relu(v[0], 0.2); }},
      {"sigmoid", {x({7, 33}, 3.0)}, [](auto& v) { return sigmoid(v[0]); }},
      {"tanh", {x({7, 33}, 3.0)}, [](auto& v) { return tanh(v[0]); }},
      {"silu", {x({7, 33}, 3.0)}, [](auto& v) { return silu(v[0]); }},
      {"hardswish", {x({7, 33}, 3.0)}, [](auto& v) { return hardswish(v[0]); }},
      {"hardsigmoid", {x({7, 33}, 3.0)}, [](auto& v) { return hardsigmoid(v[0]); }},
      {"gelu", {x({7, 33}, 3.0)}, [](auto& v) { return gelu(v[0]); }},
      {"gelu tanh", {x({7, 33}, 3.0)}, [](auto& v) { return gelu(v[0], "tanh"); }},
      {"relu, channels-last", {nhwc({2, 5, 3, 4})}, [](auto& v) { return relu(v[0]); }},
      {"gelu of a transposed view", {x({8, 5})}, [](auto& v) { return gelu(v[0].t()); }},
      {"activations at their kinks", {halves({9, 20})},
       [](auto& v) {
         return stack({relu(v[0]), relu6(v[0]), leaky_relu(v[0], 0.1), hardswish(v[0]),
                       hardsigmoid(v[0]), abs(v[0]), clamp(v[0], -0.5, 1.0)});
       }},
      // reductions
      {"sum all", {x({4, 6, 5})}, [](auto& v) { return sum(v[0]); }},
      {"sum dim 1", {x({4, 6, 5})}, [](auto& v) { return sum(v[0], {1}); }},
      {"sum dims 0,2 keepdim", {x({4, 6, 5})}, [](auto& v) { return sum(v[0], {0, 2}, true); }},
      {"sum long rows", {x({3, 5000})}, [](auto& v) { return sum(v[0], {-1}); }},
      {"sum long columns", {x({5000, 3})}, [](auto& v) { return sum(v[0], {0}); }},
      {"int sum", {x({7, 9})}, [](auto& v) { return sum(v[0], {1}); }, kInts},
      {"mean dim 2", {x({4, 6, 5})}, [](auto& v) { return mean(v[0], {2}); }},
      {"mean all", {x({3, 700})}, [](auto& v) { return mean(v[0]); }},
      {"var", {x({4, 6, 5})}, [](auto& v) { return var(v[0], {1}); }},
      {"var correction 0 keepdim", {x({3, 500})}, [](auto& v) { return var(v[0], {-1}, 0, true); }},
      {"var shifted", {x({2, 300})}, [](auto& v) { return var(add(v[0], 100.0), {0, 1}); }},
      {"norm", {x({4, 6, 5})}, [](auto& v) { return norm(v[0]); }},
      {"var tall", {x({5000, 3})}, [](auto& v) { return var(v[0], {0}); }},
      {"max dim with ties", {halves({6, 300})}, [](auto& v) { return max(v[0], 1).values; }},
      {"min dim with ties, keepdim", {halves({300, 6})},
       [](auto& v) { return min(v[0], 0, true).values; }},
      {"max dim indices with ties", {halves({6, 300})},
       [](auto& v) { return max(v[0], 1).indices; }},
      {"min dim indices with ties", {halves({300, 6})},
       [](auto& v) { return min(v[0], 0).indices; }},
      {"max dim with NaN", {nan({4, 9})}, [](auto& v) { return max(v[0], 1).indices; }},
      {"max all", {x({3, 40})}, [](auto& v) { return max(v[0]); }},
      {"min all", {x({3, 40})}, [](auto& v) { return min(v[0]); }},
      {"argmax with ties", {halves({300, 6})}, [](auto& v) { return argmax(v[0], 0); }},
      {"argmin with ties", {halves({6, 300})}, [](auto& v) { return argmin(v[0], 1, true); }},
      {"int max dim", {x({7, 9})}, [](auto& v) { return max(v[0], 0).values; }, kInts},
      // matmul, linear
      {"matmul 2-D", {x({7, 5}), x({5, 9})}, [](auto& v) { return matmul(v[0], v[1]); }},
      {"matmul transposed views", {x({5, 7}), x({9, 5})},
       [](auto& v) { return matmul(v[0].t(), v[1].t()); }},
      {"matmul batched", {x({2, 3, 4, 5}), x({5, 6})}, [](auto& v) { return matmul(v[0], v[1]); }},
      {"matmul broadcast batch", {x({3, 1, 4, 5}), x({2, 5, 6})},
       [](auto& v) { return matmul(v[0], v[1]); }},
      {"matmul dot", {x({11}), x({11})}, [](auto& v) { return matmul(v[0], v[1]); }},
      {"matmul matrix-vector", {x({4, 11}), x({11})}, [](auto& v) { return matmul(v[0], v[1]); }},
      {"matmul vector-matrix", {x({11}), x({11, 3})}, [](auto& v) { return matmul(v[0], v[1]); }},
      {"matmul large", {x({65, 130}), x({130, 33})}, [](auto& v) { return matmul(v[0], v[1]); }},
      {"linear", {x({8, 5}), x({3, 5}), x({3})}, [](auto& v) { return linear(v[0], v[1], v[2]); }},
      {"linear 3-D input, no bias", {x({2, 8, 5}), x({3, 5})},
       [](auto& v) { return linear(v[0], v[1]); }},
      // conv2d (x, weight, bias)
      {"conv2d 3x3 same", {x({2, 4, 9, 8}), x({6, 4, 3, 3}), x({6})},
       [](auto& v) { return conv2d(v[0], v[1], v[2], conv(1, 1)); }},
      {"conv2d stride 2, no bias", {x({3, 8, 11, 10}), x({16, 8, 3, 3})},
       [](auto& v) { return conv2d(v[0], v[1], Tensor(), conv(2, 1)); }},
      {"conv2d dilation 2", {x({2, 6, 12, 12}), x({4, 6, 3, 3}), x({4})},
       [](auto& v) { return conv2d(v[0], v[1], v[2], conv(1, 2, 2)); }},
      {"conv2d groups 3, rectangular 3x1", {x({2, 6, 7, 7}), x({9, 2, 3, 1}), x({9})},
       [](auto& v) { return conv2d(v[0], v[1], v[2], conv(1, 0, 1, 3)); }},
      {"conv2d depthwise", {nhwc({2, 8, 9, 9}), x({8, 1, 3, 3}), x({8})},
       [](auto& v) { return conv2d(v[0], v[1], v[2], conv(1, 1, 1, 8)); }},
      {"conv2d depthwise x2, stride 2", {x({2, 8, 10, 9}), x({16, 1, 3, 3})},
       [](auto& v) { return conv2d(v[0], v[1], Tensor(), conv(2, 1, 1, 8)); }},
      {"conv2d rectangular 4x2, stride 3", {x({1, 3, 13, 11}), x({5, 3, 4, 2}), x({5})},
       [](auto& v) { return conv2d(v[0], v[1], v[2], conv(3, 1)); }},
      {"conv2d channels-last", {nhwc({2, 4, 9, 8}), x({6, 4, 3, 3}), x({6})},
       [](auto& v) { return conv2d(v[0], v[1], v[2], conv(1, 1)); }},
      {"conv2d 1-channel stem", {nhwc({2, 1, 12, 12}), x({8, 1, 5, 5}), x({8})},
       [](auto& v) { return conv2d(v[0], v[1], v[2], conv(1, 2)); }},
      {"conv2d pointwise", {nhwc({2, 16, 5, 5}), x({8, 16, 1, 1})},
       [](auto& v) { return conv2d(v[0], v[1], Tensor(), conv(1, 0)); }},
      {"conv2d 28x28 stem, 32 channels", {x({2, 1, 28, 28}), x({32, 1, 3, 3}), x({32})},
       [](auto& v) { return conv2d(v[0], v[1], v[2], conv(1, 1)); }},
      {"conv2d RGB stem, stride 2, no padding", {x({2, 3, 17, 17}), x({8, 3, 3, 3})},
       [](auto& v) { return conv2d(v[0], v[1], Tensor(), conv(2, 0)); }},
      // pooling (stride 0: the kernel size)
      {"max_pool2d 2x2", {x({2, 5, 9, 7})}, [](auto& v) { return max_pool2d(v[0], pool(2, 2)); }},
      {"max_pool2d 3x3 s2 p1 ceil", {x({2, 5, 9, 7})},
       [](auto& v) { return max_pool2d(v[0], pool(3, 3, 2, 1, true)); }},
      {"max_pool2d rectangular 3x2, channels-last", {nhwc({2, 5, 9, 7})},
       [](auto& v) { return max_pool2d(v[0], pool(3, 2)); }},
      {"max_pool2d with ties", {halves({1, 3, 8, 8})},
       [](auto& v) { return max_pool2d(v[0], pool(2, 2)); }},
      {"avg_pool2d 3x3 s1 p1", {x({2, 5, 9, 7})},
       [](auto& v) { return avg_pool2d(v[0], pool(3, 3, 1, 1)); }},
      {"avg_pool2d ceil, excluding padding", {nhwc({2, 5, 9, 7})},
       [](auto& v) { return avg_pool2d(v[0], pool(3, 3, 2, 1, true, false)); }},
      {"avg_pool2d rectangular 2x3", {x({2, 5, 9, 7})},
       [](auto& v) { return avg_pool2d(v[0], pool(2, 3)); }},
      {"adaptive_avg_pool2d 3x2", {x({2, 5, 9, 7})},
       [](auto& v) { return adaptive_avg_pool2d(v[0], 3, 2); }},
      {"adaptive_avg_pool2d 1x1, channels-last", {nhwc({3, 16, 5, 5})},
       [](auto& v) { return adaptive_avg_pool2d(v[0], 1, 1); }},
      {"adaptive_avg_pool2d 3x3 of 5x6", {nhwc({1, 1, 5, 6})},
       [](auto& v) { return adaptive_avg_pool2d(v[0], 3, 3); }},
      {"max_pool2d with NaN", {nan({1, 2, 6, 6})},
       [](auto& v) { return max_pool2d(v[0], pool(2, 2)); }},
      // batch_norm (x, running_mean, running_var, weight, bias)
      {"batch_norm train NCHW", {x({4, 6, 5, 7}), buffer({6}), buffer({6}), x({6}), x({6})},
       [](auto& v) { return bn_train(v, true); }},
      {"batch_norm train channels-last",
       {nhwc({4, 6, 5, 7}), buffer({6}), buffer({6}), x({6}), x({6})},
       [](auto& v) { return bn_train(v, true); }},
      {"batch_norm train [N, C], not affine", {x({16, 10}), buffer({10}), buffer({10})},
       [](auto& v) { return bn_train(v, false); }},
      {"batch_norm train [N, C, L]", {x({5, 4, 9}), buffer({4}), buffer({4}), x({4}), x({4})},
       [](auto& v) { return bn_train(v, true); }},
      {"batch_norm eval", {x({4, 6, 5, 7}), buffer({6}), buffer({6}), x({6}), x({6})},
       [](auto& v) { return batch_norm(v[0], v[1], v[2], v[3], v[4]); }},
      {"batch_norm eval channels-last, not affine", {nhwc({4, 6, 5, 7}), buffer({6}), buffer({6})},
       [](auto& v) { return batch_norm(v[0], v[1], v[2], Tensor(), Tensor(), {.eps = 1e-3}); }},
      {"batch_norm batch stats, no running stats", {x({8, 33, 3, 3})},
       [](auto& v) { return batch_norm(v[0], Tensor(), Tensor(), Tensor(), Tensor()); }},
      // a network block: the gradients reach conv and batch_norm in channels-last layout
      {"conv2d, batch_norm, relu, max_pool2d",
       {x({2, 3, 10, 10}), x({8, 3, 3, 3}), buffer({8}), buffer({8})},
       [](auto& v) {
         Tensor h = conv2d(v[0], v[1], Tensor(), conv(1, 1));
         h = batch_norm(h, v[2], v[3], Tensor(), Tensor(), {.training = true});
         return max_pool2d(relu(h), pool(2, 2));
       }},
      // softmax and losses
      {"softmax last", {x({4, 6, 5}, 3.0)}, [](auto& v) { return softmax(v[0], -1); }},
      {"softmax middle", {x({4, 6, 5}, 3.0)}, [](auto& v) { return softmax(v[0], 1); }},
      {"softmax long rows", {x({3, 3000}, 3.0)}, [](auto& v) { return softmax(v[0], 1); }},
      {"log_softmax last", {x({4, 6, 5}, 3.0)}, [](auto& v) { return log_softmax(v[0], -1); }},
      {"log_softmax first", {x({4, 6, 5}, 3.0)}, [](auto& v) { return log_softmax(v[0], 0); }},
      {"cross_entropy mean", {x({16, 10}, 2.0), index({16}, 10)},
       [](auto& v) { return cross_entropy(v[0], v[1]); }},
      {"cross_entropy smoothed, ignored, sum", {x({16, 10}, 2.0), index({16}, 10)},
       [](auto& v) { return cross_entropy(v[0], with_ignored(v[1]), 0.1, "sum"); }},
      {"cross_entropy none, 2000 classes", {x({5, 2000}, 2.0), index({5}, 2000)},
       [](auto& v) { return cross_entropy(v[0], v[1], 0.05, "none"); }},
      {"cross_entropy [N, C, d]", {x({4, 5, 3}), index({4, 3}, 5)},
       [](auto& v) { return cross_entropy(v[0], v[1]); }},
      {"nll_loss mean, ignored", {x({16, 10}, 2.0), index({16}, 10)},
       [](auto& v) { return nll_loss(log_softmax(v[0], 1), with_ignored(v[1])); }},
      {"cross_entropy smoothed, ignored, none", {x({16, 10}, 2.0), index({16}, 10)},
       [](auto& v) { return cross_entropy(v[0], with_ignored(v[1]), 0.1, "none"); }},
      {"nll_loss none", {x({16, 10}, 2.0), index({16}, 10)},
       [](auto& v) { return nll_loss(log_softmax(v[0], 1), v[1], "none"); }},
      {"nll_loss sum, ignored", {x({16, 10}, 2.0), index({16}, 10)},
       [](auto& v) { return nll_loss(log_softmax(v[0], 1), with_ignored(v[1]), "sum"); }},
      {"mse_loss", {x({16, 10}), x({16, 10})}, [](auto& v) { return mse_loss(v[0], v[1]); }},
      {"mse_loss sum", {x({16, 10}), x({16, 10})},
       [](auto& v) { return mse_loss(v[0], v[1], "sum"); }},
      {"mse_loss none", {x({16, 10}), x({16, 10})},
       [](auto& v) { return mse_loss(v[0], v[1], "none"); }},
      {"kl_div batchmean", {x({8, 6}), x({8, 6})},
       [](auto& v) { return kl_div(log_softmax(v[0], 1), softmax(v[1], 1)); }},
      {"kl_div log_target sum", {x({8, 6}), x({8, 6})},
       [](auto& v) { return kl_div(log_softmax(v[0], 1), log_softmax(v[1], 1), "sum", true); }},
      // shape ops
      {"cat dim 1", {x({3, 2, 4}), x({3, 5, 4})}, [](auto& v) { return cat({v[0], v[1]}, 1); }},
      {"cat channels-last", {nhwc({2, 3, 4, 5}), nhwc({2, 2, 4, 5})},
       [](auto& v) { return cat({v[0], v[1]}, 1); }},
      {"split", {x({7, 4})},
       [](auto& v) {
         auto p = split(v[0], std::vector<int64_t>{2, 4, 1}, 0);
         return cat({mul(p[2], 3.0), p[0]}, 0);
       }},
      {"index_select repeated", {x({5, 6, 3})},
       [](auto& v) {
         Tensor idx = from_vector(std::vector<int64_t>{4, 0, 4, 2}, {4}).to(v[0].device());
         return index_select(v[0], 1, idx);
       }},
      {"gather", {x({4, 6}), index({4, 5}, 6)}, [](auto& v) { return gather(v[0], 1, v[1]); }},
      {"pad constant", {x({2, 3, 4, 5})},
       [](auto& v) { return pad(v[0], {1, 2, 0, 1}, "constant", 0.5); }},
      {"pad reflect", {x({2, 3, 4, 5})},
       [](auto& v) { return pad(v[0], {2, 1, 1, 3}, "reflect"); }},
      {"pad replicate", {x({2, 3, 4, 5})},
       [](auto& v) { return pad(v[0], {1, 1, 2, 0}, "replicate"); }},
      // dropout is random; p = 0 and p = 1 are not
      {"dropout p=0", {x({4, 5})}, [](auto& v) { return dropout(v[0], 0.0, true); }},
      {"dropout p=1", {x({4, 5})}, [](auto& v) { return dropout(v[0], 1.0, true); }},
      // fake quantization (tb::quant; kernels/fake_quant.h): values on both sides of the clamp,
      // ties of round-half-to-even, NaN; the straight-through gradient is compared too
      {"fake_quantize per tensor uint8", {x({6, 37}, 3.0)},
       [](auto& v) { return quant::fake_quantize_per_tensor_affine(v[0], 0.05, 60, 0, 255); }},
      {"fake_quantize per tensor ties", {halves({6, 37})},
       [](auto& v) { return quant::fake_quantize_per_tensor_affine(v[0], 0.5, 3, -8, 7); }},
      {"fake_quantize per tensor NaN", {nan({5, 9})},
       [](auto& v) { return quant::fake_quantize_per_tensor_affine(v[0], 0.1, 0, -128, 127); }},
      {"fake_quantize per channel axis 1, channels-last", {nhwc({2, 5, 3, 4})},
       [](auto& v) {
         Tensor s = from_vector(std::vector<float>{0.01f, 0.02f, 0.05f, 0.1f, 0.3f}, {5});
         Tensor z = from_vector(std::vector<int64_t>{0, 3, -2, 7, 0}, {5}).to(kInt32);
         return quant::fake_quantize_per_channel_affine(v[0], s, z, 1, -8, 7);
       }},
      {"fake_quantize per channel axis 0, 4 bits", {x({4, 3, 3, 3}, 2.0)},
       [](auto& v) {
         Tensor s = from_vector(std::vector<float>{0.1f, 0.2f, 0.25f, 0.5f}, {4});
         Tensor z = from_vector(std::vector<int64_t>{8, 0, 15, 4}, {4}).to(kInt32);
         return quant::fake_quantize_per_channel_affine(v[0], s, z, 0, 0, 15);
       }},
      {"fake_quantize learnable per tensor (LSQ)", {x({6, 37}, 2.0), pos({1}), x({1}, 2.0)},
       [](auto& v) {
         return quant::fake_quantize_learnable_per_tensor_affine(v[0], mul(v[1], 0.1), v[2], -8, 7,
                                                                 1.0 / std::sqrt(222.0 * 7));
       },
       {kFloat32}},
      {"fake_quantize learnable per channel (LSQ)", {x({5, 4, 6}, 2.0), pos({4}), x({4}, 2.0)},
       [](auto& v) {
         return quant::fake_quantize_learnable_per_channel_affine(v[0], mul(v[1], 0.1), v[2], 1, 0,
                                                                  15, 0.05);
       },
       {kFloat32}},
      {"PACT", {x({6, 37}, 3.0), pos({1})},
       [](auto& v) { return quant::pact_fake_quantize(v[0], mul(v[1], 2.0), 15); }, {kFloat32}},
      // mixed precision (tb::amp): bfloat16 / float16 GEMM and convolution, float32 accumulation
      // (oneDNN bf16 on AMX; float16 through float32, oneDNN 2.6 has no CPU f16 kernels), against
      // the reference loops that read the half inputs exactly and round each output once
      {"half matmul 2-D", {x({7, 5}), x({5, 9})}, [](auto& v) { return matmul(v[0], v[1]); },
       kHalves},
      {"half matmul transposed views", {x({5, 7}), x({9, 5})},
       [](auto& v) { return matmul(v[0].t(), v[1].t()); }, kHalves},
      {"half matmul batched", {x({2, 3, 4, 5}), x({5, 6})},
       [](auto& v) { return matmul(v[0], v[1]); }, kHalves},
      {"half matmul broadcast batch", {x({3, 1, 4, 5}), x({2, 5, 6})},
       [](auto& v) { return matmul(v[0], v[1]); }, kHalves},
      {"half matmul large", {x({65, 130}), x({130, 33})},
       [](auto& v) { return matmul(v[0], v[1]); }, kHalves},
      {"half linear", {x({8, 5}), x({3, 5}), x({3})},
       [](auto& v) { return linear(v[0], v[1], v[2]); }, kHalves},
      {"half linear 3-D input, no bias", {x({2, 8, 5}), x({3, 5})},
       [](auto& v) { return linear(v[0], v[1]); }, kHalves},
      {"half conv2d 3x3 same", {x({2, 4, 9, 8}), x({6, 4, 3, 3}), x({6})},
       [](auto& v) { return conv2d(v[0], v[1], v[2], conv(1, 1)); }, kHalves},
      {"half conv2d stride 2, no bias", {x({3, 8, 11, 10}), x({16, 8, 3, 3})},
       [](auto& v) { return conv2d(v[0], v[1], Tensor(), conv(2, 1)); }, kHalves},
      {"half conv2d groups 3, rectangular 3x1", {x({2, 6, 7, 7}), x({9, 2, 3, 1}), x({9})},
       [](auto& v) { return conv2d(v[0], v[1], v[2], conv(1, 0, 1, 3)); }, kHalves},
      {"half conv2d depthwise", {nhwc({2, 8, 9, 9}), x({8, 1, 3, 3}), x({8})},
       [](auto& v) { return conv2d(v[0], v[1], v[2], conv(1, 1, 1, 8)); }, kHalves},
      {"half conv2d depthwise x2, stride 2", {x({2, 8, 10, 9}), x({16, 1, 3, 3})},
       [](auto& v) { return conv2d(v[0], v[1], Tensor(), conv(2, 1, 1, 8)); }, kHalves},
      {"half conv2d channels-last", {nhwc({2, 4, 9, 8}), x({6, 4, 3, 3}), x({6})},
       [](auto& v) { return conv2d(v[0], v[1], v[2], conv(1, 1)); }, kHalves},
      {"half conv2d 1-channel stem", {nhwc({2, 1, 12, 12}), x({8, 1, 5, 5}), x({8})},
       [](auto& v) { return conv2d(v[0], v[1], v[2], conv(1, 2)); }, kHalves},
      {"half conv2d pointwise", {nhwc({2, 16, 5, 5}), x({8, 16, 1, 1})},
       [](auto& v) { return conv2d(v[0], v[1], Tensor(), conv(1, 0)); }, kHalves},
      {"half conv2d dilation 2", {x({2, 6, 12, 12}), x({4, 6, 3, 3}), x({4})},
       [](auto& v) { return conv2d(v[0], v[1], v[2], conv(1, 2, 2)); }, kHalves},
      {"half conv-bn-relu-pool (batch_norm and relu6 in the half dtype, pool in float32 inside)",
       {nhwc({2, 4, 8, 8}), x({6, 4, 3, 3}), pos({6}), x({6})},
       [](auto& v) {
         Tensor rm = zeros({6}, TensorOptions(kFloat32, v[0].device()));
         Tensor rv = ones({6}, TensorOptions(kFloat32, v[0].device()));
         Tensor y = conv2d(v[0], v[1], Tensor(), conv(1, 1));
         y = batch_norm(y, rm, rv, v[2].to(kFloat32), v[3].to(kFloat32), {.training = true});
         return max_pool2d(relu6(y), pool(2, 2));
       },
       kHalves},
      // batch_norm on half activations with float32 weight, bias and running stats (PyTorch's
      // mixed-precision batch norm, what autocast runs); dw, db come back in float32
      {"half batch_norm train channels-last", {nhwc({4, 20, 5, 7}), buffer32({20}),
        buffer32({20}), x32({20}), x32({20})}, bn_train_half_y, kHalves},
      {"half batch_norm train NCHW", {x({4, 6, 5, 7}), buffer32({6}), buffer32({6}), x32({6}),
        x32({6})}, bn_train_half_y, kHalves},
      {"half batch_norm train [N, C] over 256 channels, not affine",
       {x({16, 300}), buffer32({300}), buffer32({300})}, bn_train_half_y, kHalves},
      {"half batch_norm running stats (float32) after training",
       {nhwc({4, 20, 5, 7}), buffer32({20}), buffer32({20}), x32({20}), x32({20})},
       bn_train_half_stats, kHalves},
      {"half batch_norm eval channels-last", {nhwc({4, 6, 5, 7}), buffer32({6}), buffer32({6}),
        x32({6}), x32({6})},
       [](auto& v) { return batch_norm(v[0], v[1], v[2], v[3], v[4]); }, kHalves},
      {"half batch_norm batch stats, no running stats", {x({8, 33, 3, 3})},
       [](auto& v) { return batch_norm(v[0], Tensor(), Tensor(), Tensor(), Tensor()); },
       kHalves},
      // elementwise ops on half tensors: the CPU kernels take them as they are (each element in
      // float32, rounded once)
      {"half relu6", {{{2, 24, 5, 5}, Fill::Normal, true, true, 4.0}},
       [](auto& v) { return relu6(v[0]); }, kHalves},
      {"half relu", {x({3, 1000})}, [](auto& v) { return relu(v[0]); }, kHalves},
      {"half hardswish", {x({4, 300}, 4.0)}, [](auto& v) { return hardswish(v[0]); }, kHalves},
      {"half sigmoid, tanh, silu, gelu", {x({5, 77})},
       [](auto& v) { return cat({sigmoid(v[0]), tanh(v[0]), silu(v[0]), gelu(v[0])}); },
       kHalves},
      {"half add, channels-last (residual)", {nhwc({2, 8, 5, 5}), nhwc({2, 8, 5, 5})},
       [](auto& v) { return add(v[0], v[1]); }, kHalves},
      {"half mul, per-channel factor", {nhwc({2, 8, 4, 4}), x({1, 8, 1, 1})},
       [](auto& v) { return mul(v[0], v[1]); }, kHalves},
      {"half sub alpha, div, scalar", {x({6, 7}), pos({7})},
       [](auto& v) { return div(sub(mul(v[0], 3.0), v[1], 0.5), v[1]); }, kHalves},
      {"half maximum with ties", {halves({4, 9}), halves({4, 9})},
       [](auto& v) { return maximum(v[0], v[1]); }, kHalves},
      {"half lt", {halves({5, 6}), halves({6})}, [](auto& v) { return lt(v[0], v[1]); }, kHalves},
      // an inverted residual block as autocast runs it: every activation in the half dtype (the
      // batch-norm parameters are cast to float32 inside, so their gradients come back in the
      // half dtype and are compared at its tolerance: upstream convolutions round differently)
      {"half conv-bn-relu6-conv-bn + residual add",
       {nhwc({2, 8, 6, 6}), x({16, 8, 1, 1}), x({16}), x({16}), x({8, 16, 1, 1}), x({8}), x({8})},
       [](auto& v) {
         TensorOptions o(kFloat32, v[0].device());
         auto f32 = [](const Tensor& t) { return t.to(kFloat32); };
         Tensor h = conv2d(v[0], v[1], Tensor(), conv(1, 0));
         h = relu6(batch_norm(h, zeros({16}, o), ones({16}, o), f32(v[2]), f32(v[3]),
                              {.training = true}));
         h = conv2d(h, v[4], Tensor(), conv(1, 0));
         h = batch_norm(h, zeros({8}, o), ones({8}, o), f32(v[5]), f32(v[6]), {.training = true});
         return add(v[0], h);
       },
       kHalves},
  };
  return cases;
}

// ---- running a case -----------------------------------------------------------------------------

struct Backend {
  const char* name;
  Device device;
  CpuKernels cpu; // which CPU kernels (the CUDA backend runs its own)
};

const Backend kReference{"reference", kCPU, CpuKernels::Reference};

// The inputs of case `c` in dtype `t`, on the CPU, from a generator seeded by the case's number.
std::vector<Tensor> make_inputs(const OpCase& c, DType t, uint64_t seed) {
  Generator g(seed);
  std::vector<Tensor> out;
  for (const In& in : c.inputs) {
    Tensor v;
    switch (in.fill) {
      case Fill::Normal: v = mul(randn(in.shape, {kFloat64}, &g), in.scale); break;
      case Fill::Positive: v = add(abs(randn(in.shape, {kFloat64}, &g)), 0.5); break;
      case Fill::Halves: v = div(round(mul(randn(in.shape, {kFloat64}, &g), 4.0)), 2.0); break;
      case Fill::Index: v = randint(0, in.hi, in.shape, {kInt64}, &g); break;
      case Fill::Mask: v = gt(randn(in.shape, {kFloat64}, &g), 0.0); break;
      case Fill::WithNaN:
        v = randn(in.shape, {kFloat64}, &g);
        for (int64_t i = 0; i < v.numel(); i += 5) v.data<double>()[i] = NAN;
        break;
    }
    if (in.fill != Fill::Index && in.fill != Fill::Mask)
      v = is_floating(t) ? v.to(in.float32 ? kFloat32 : t) : round(mul(v, 20.0)).to(t);
    if (in.channels_last) v = v.contiguous_channels_last();
    out.push_back(v);
  }
  return out;
}

// What one backend computed: the output and the gradient of every input (undefined: none).
struct Result {
  Tensor y;
  std::vector<Tensor> grads;
};

// Runs the case on `b`: fresh copies of the inputs with their strides, forward, then (when the
// output is floating and has a graph) backward with a random upward gradient drawn from `seed`,
// the same on every backend.
Result run_on(const Backend& b, const OpCase& c, const std::vector<Tensor>& inputs, uint64_t seed) {
  struct KernelsScope { // restored even when the op throws
    CpuKernels prev = cpu_kernels();
    explicit KernelsScope(CpuKernels k) { set_cpu_kernels(k); }
    ~KernelsScope() { set_cpu_kernels(prev); }
  } scope(b.cpu);
  std::vector<Tensor> xs;
  for (size_t i = 0; i < inputs.size(); i++) {
    Tensor v = empty_strided(inputs[i].shape(), inputs[i].strides(), {inputs[i].dtype(), b.device});
    v.copy_(inputs[i]);
    if (c.inputs[i].grad && is_floating(v.dtype())) v.requires_grad_(true);
    xs.push_back(v);
  }
  Result r;
  r.y = c.fn(xs);
  if (r.y.requires_grad()) {
    Generator g(seed);
    r.y.backward(randn(r.y.shape(), {kFloat64}, &g).to(r.y.dtype()).to(b.device));
  }
  for (const Tensor& v : xs) r.grads.push_back(v.requires_grad() ? v.grad() : Tensor());
  return r;
}

// bfloat16 / float16 (the half rows): each output is rounded once from a float32 (fast) or double
// (reference) sum, so the two may differ by one unit in the last place, 2^-7 (bfloat16) or 2^-10
// (float16) relative at most, and backward chains a few such roundings (matmul then sum_to_shape):
// 2e-2 and 4e-3 allow about two and a half ulps.
double tolerance(DType t) {
  if (t == kBFloat16) return 2e-2;
  if (t == kFloat16) return 4e-3;
  return t == kFloat64 ? 1e-12 : t == kFloat32 ? 1e-5 : 0.0;
}

// "" when got matches want (see the tolerance at the top), else what differs.
std::string mismatch(const Tensor& got, const Tensor& want, const std::string& what) {
  if (!want.defined()) return got.defined() ? what + ": a gradient the reference lacks" : "";
  if (!got.defined()) return what + ": no gradient where the reference has one";
  if (got.shape() != want.shape() || got.dtype() != want.dtype())
    return fmt::format("{}: {} {} vs the reference's {} {}", what, dtype_name(got.dtype()),
                       shape_str(got.shape()), dtype_name(want.dtype()), shape_str(want.shape()));
  if (got.strides() != want.strides()) // e.g. channels-last must stay channels-last everywhere
    return fmt::format("{}: strides {} vs the reference's {}", what, shape_str(got.strides()),
                       shape_str(want.strides()));
  auto g = got.cpu().to_vector(), w = want.to_vector();
  double scale = 1, worst = 0;
  int64_t at = -1;
  for (double v : w) scale = std::max(scale, 1 + std::abs(v));
  for (size_t i = 0; i < w.size(); i++) {
    if (std::isnan(w[i]) && std::isnan(g[i])) continue;
    double err = std::abs(g[i] - w[i]);
    if (!(err <= worst)) worst = err, at = (int64_t)i;
  }
  if (worst <= tolerance(want.dtype()) * scale) return "";
  return fmt::format("{}: element {} is {} vs {} (max error {:.3g}, allowed {:.3g})", what, at,
                     g[at], w[at], worst, tolerance(want.dtype()) * scale);
}

// Compares `b`'s result on case `c` in dtype `t` with the reference kernels'. Returns the
// mismatches; "no kernel" when b has no kernel for the op yet.
std::vector<std::string> compare_case(const Backend& b, const OpCase& c, DType t, uint64_t seed) {
  std::vector<Tensor> inputs = make_inputs(c, t, seed);
  Result want = run_on(kReference, c, inputs, seed + 1), got;
  try {
    got = run_on(b, c, inputs, seed + 1);
  } catch (const Error& e) {
    // No kernel for the op, or none for this dtype (half precision on CUDA today): listed as
    // skipped on that backend, compared the day the kernel lands.
    std::string what = e.what();
    if (what.find("no CUDA kernel yet") != std::string::npos ||
        what.find("no CUDA kernel for dtype") != std::string::npos)
      return {"no kernel"};
    throw;
  }
  std::vector<std::string> bad;
  auto note = [&](const std::string& m) {
    if (!m.empty()) bad.push_back(m);
  };
  note(mismatch(got.y, want.y.detach(), "output"));
  for (size_t i = 0; i < want.grads.size(); i++)
    note(mismatch(got.grads[i], want.grads[i], fmt::format("d/dinput{}", i)));
  return bad;
}

std::vector<Backend> backends_to_test() {
  std::vector<Backend> b = {{"fast", kCPU, CpuKernels::Fast}};
  if (cuda::is_available()) b.push_back({"cuda", cuda_device(0), CpuKernels::Reference});
  return b;
}

} // namespace

TEST_SUITE("backend_ops") {

TEST_CASE("every op case matches the reference kernels on every backend, forward and backward") {
  if (!cuda::is_available()) MESSAGE("no CUDA device: the CUDA backend is skipped");
  std::set<std::string> no_kernel;
  int compared = 0;
  const auto& cases = op_cases();
  for (const Backend& b : backends_to_test()) {
    for (size_t k = 0; k < cases.size(); k++) {
      for (DType t : cases[k].dtypes) {
        INFO("case '" << cases[k].name << "', " << std::string(dtype_name(t)) << ", backend "
                       << std::string(b.name));
        auto bad = compare_case(b, cases[k], t, 1000 + 7 * k);
        if (bad.size() == 1 && bad[0] == "no kernel") {
          no_kernel.insert(std::string(b.name) + ": " + cases[k].name);
          continue;
        }
        compared++;
        for (const std::string& m : bad) FAIL_CHECK(m);
      }
    }
  }
  MESSAGE(compared << " case runs compared with the reference kernels");
  if (!no_kernel.empty()) {
    std::string list;
    for (const std::string& s : no_kernel) list += "\n  " + s;
    MESSAGE("skipped, no kernel on that backend yet:" << list);
  }
}

// The harness itself: a backend that computes something slightly different must be caught, in
// the output and in a gradient.
TEST_CASE("the table catches a kernel that is off by a little") {
  const Backend fast{"fast", kCPU, CpuKernels::Fast};
  OpCase off_forward{"off", {x({5, 4})}, [](auto& v) {
                       return cpu_kernels() == CpuKernels::Fast ? add(v[0], 1e-3) : v[0] * 1.0;
                     }};
  auto bad = compare_case(fast, off_forward, kFloat32, 1);
  REQUIRE(bad.size() == 1);
  CHECK(bad[0].find("output") != std::string::npos);
  OpCase off_backward{"off", {x({5, 4})}, [](auto& v) {
                        // same forward values; the fast path's gradient is 1.001 dy
                        if (cpu_kernels() == CpuKernels::Reference) return v[0] * 1.0;
                        return add(mul(v[0], 1.001), mul(v[0].detach(), -0.001));
                      }};
  bad = compare_case(fast, off_backward, kFloat64, 2);
  REQUIRE(bad.size() == 1);
  CHECK(bad[0].find("d/dinput0") != std::string::npos);
  CHECK(compare_case(fast, {"same", {x({5, 4})}, [](auto& v) { return gelu(v[0]); }}, kFloat32, 3)
            .empty());
}

// Without a GPU, a tensor that claims cuda:0 (over host memory, never touched) reaches the
// dispatch point: the families with no CUDA kernels yet raise a clear tb::Error there. conv2d,
// pooling and batch_norm have CUDA kernels in a CUDA build (kernels/cuda/conv.cu, pool.cu,
// batchnorm.cu): there they pass the dispatch point and the allocator refuses their output, as it
// refuses any CUDA tensor without a GPU; built without nvcc their tables are still null.
TEST_CASE("an op without a kernel for the device raises tb::Error naming op, device and dtype") {
  if (cuda::is_available()) return; // real CUDA tensors: the table above covers them
  std::vector<float> buf(4 * 3 * 8 * 8, 1.0f);
  TensorOptions on_cuda(kFloat32, cuda_device(0));
  Tensor xg = from_blob(buf.data(), {4, 3, 8, 8}, on_cuda);
  Tensor wg = from_blob(buf.data(), {3, 3, 3, 3}, on_cuda), rm = from_blob(buf.data(), {3}, on_cuda);
  const std::vector<std::string> device = {"no CUDA kernel yet", "cuda:0", "float32"};
  auto expect = [&](const char* op, const std::function<void()>& f) {
    std::vector<std::string> needles = device;
    needles.insert(needles.begin(), std::string(op) + ":");
    tbtest::check_error(f, needles);
  };
#ifdef TB_HAVE_CUDA
  auto expect_cnn = [&](const char*, const std::function<void()>& f) {
    tbtest::check_error(f, {"cuda:0", "no CUDA device is available"});
  };
#else
  auto expect_cnn = expect;
#endif
  expect_cnn("conv2d", [&] { conv2d(xg, wg, Tensor(), Conv2dParams{}); });
  expect_cnn("max_pool2d", [&] { max_pool2d(xg, pool(2, 2)); });
  expect_cnn("avg_pool2d", [&] { avg_pool2d(xg, pool(3, 3, 1, 1)); });
  expect_cnn("adaptive_avg_pool2d", [&] { adaptive_avg_pool2d(xg, 1, 1); });
  expect_cnn("batch_norm", [&] { batch_norm(xg, rm, rm, Tensor(), Tensor()); });
  std::vector<int64_t> ibuf(4 * 3, 0);
  Tensor ig = from_blob(ibuf.data(), {4, 3}, {kInt64, cuda_device(0)});
  expect("gather", [&] { gather(xg.select(3, 0).select(2, 0), 1, ig); });
}

} // TEST_SUITE
