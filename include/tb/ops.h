// tb/ops.h — the differentiable ops. Each op family lives in one file under src/ops/ with its
// forward and backward side by side; kernels under kernels/{ref,cpu,cuda}/.
//
// Conventions (as PyTorch): binary elementwise ops broadcast; dims may be negative; reductions take
// a list of dims (empty = all) and keepdim. Inputs must share a device; float ops need a floating
// dtype. Every violation raises tb::Error naming the op and the offending shapes/dtypes/devices.
#pragma once

#include <tb/autograd.h>

namespace tb {

// Sums `g` over the broadcast dims so it has shape `shape` (the backward of broadcasting).
Tensor sum_to_shape(const Tensor& g, const Shape& shape);

// ---- Elementwise binary (broadcasting, dtype promotion) — src/ops/elementwise.cpp -------------
Tensor add(const Tensor& a, const Tensor& b, double alpha = 1.0); // a + alpha*b
Tensor sub(const Tensor& a, const Tensor& b, double alpha = 1.0); // a - alpha*b
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor pow(const Tensor& a, const Tensor& b);
Tensor maximum(const Tensor& a, const Tensor& b);
Tensor minimum(const Tensor& a, const Tensor& b);
// With a scalar (the scalar takes the tensor's dtype).
Tensor add(const Tensor& a, double b);
Tensor sub(const Tensor& a, double b);
Tensor mul(const Tensor& a, double b);
Tensor div(const Tensor& a, double b);
Tensor pow(const Tensor& a, double exponent);
Tensor rsub(const Tensor& a, double b); // b - a

// ---- Elementwise unary — src/ops/elementwise.cpp ---------------------------------------------
Tensor neg(const Tensor& a);
Tensor exp(const Tensor& a);
Tensor log(const Tensor& a);
Tensor sqrt(const Tensor& a);
Tensor rsqrt(const Tensor& a);
Tensor abs(const Tensor& a);
Tensor sign(const Tensor& a);   // no gradient (zero)
Tensor square(const Tensor& a);
Tensor reciprocal(const Tensor& a);
Tensor clamp(const Tensor& a, std::optional<double> lo, std::optional<double> hi);
Tensor round(const Tensor& a);  // half to even; gradient zero
Tensor floor(const Tensor& a);  // gradient zero
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b); // cond bool, broadcasting

// ---- Comparisons (bool result, no gradient) — src/ops/elementwise.cpp -------------------------
Tensor eq(const Tensor& a, const Tensor& b);
Tensor ne(const Tensor& a, const Tensor& b);
Tensor lt(const Tensor& a, const Tensor& b);
Tensor le(const Tensor& a, const Tensor& b);
Tensor gt(const Tensor& a, const Tensor& b);
Tensor ge(const Tensor& a, const Tensor& b);
Tensor eq(const Tensor& a, double b);
Tensor lt(const Tensor& a, double b);
Tensor le(const Tensor& a, double b);
Tensor gt(const Tensor& a, double b);
Tensor ge(const Tensor& a, double b);
Tensor logical_not(const Tensor& a);
Tensor isfinite(const Tensor& a);
bool allclose(const Tensor& a, const Tensor& b, double rtol = 1e-5, double atol = 1e-8);

// ---- Activations — src/ops/activation.cpp ----------------------------------------------------
Tensor relu(const Tensor& x);
Tensor relu6(const Tensor& x);
Tensor leaky_relu(const Tensor& x, double negative_slope = 0.01);
Tensor sigmoid(const Tensor& x);
Tensor tanh(const Tensor& x);
Tensor silu(const Tensor& x);        // x * sigmoid(x)
Tensor hardswish(const Tensor& x);   // x * relu6(x + 3) / 6
Tensor hardsigmoid(const Tensor& x); // relu6(x + 3) / 6
Tensor gelu(const Tensor& x, const std::string& approximate = "none"); // "none" (erf) or "tanh"

// ---- Reductions — src/ops/reduce.cpp ----------------------------------------------------------
Tensor sum(const Tensor& x, const Shape& dims = {}, bool keepdim = false);
Tensor mean(const Tensor& x, const Shape& dims = {}, bool keepdim = false);
// Variance with Bessel's correction (correction = 1) by default, as torch.var.
Tensor var(const Tensor& x, const Shape& dims = {}, int64_t correction = 1, bool keepdim = false);
struct ValuesIndices {
  Tensor values, indices; // indices int64
};
ValuesIndices max(const Tensor& x, int64_t dim, bool keepdim = false);
ValuesIndices min(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor max(const Tensor& x); // over all elements
Tensor min(const Tensor& x);
Tensor argmax(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor argmin(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor norm(const Tensor& x); // Frobenius / L2 over all elements

// ---- Linear algebra — src/ops/matmul.cpp (OpenBLAS on CPU, cuBLAS on CUDA) -------------------
// matmul: 1-D·1-D dot, 2-D·2-D, batched (broadcast batch dims), as torch.matmul.
Tensor matmul(const Tensor& a, const Tensor& b);
// linear: y = x W^T + b, x [..., in], W [out, in], b [out] (optional).
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor());

// ---- Convolution — src/ops/conv.cpp (oneDNN on CPU, reference loops) -------------------------
struct Conv2dParams {
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_h = 0, pad_w = 0;
  int64_t dilation_h = 1, dilation_w = 1;
  int64_t groups = 1;
};
// x [N, C, H, W], weight [O, C/groups, kh, kw], bias [O] or undefined.
// Output [N, O, Ho, Wo] with Ho = (H + 2 pad - dilation (kh - 1) - 1) / stride + 1.
Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dParams& p);

// ---- Pooling — src/ops/pool.cpp ---------------------------------------------------------------
// As F.max_pool2d / F.avg_pool2d: the kernel must be set; a stride left at 0 takes the kernel
// size (PyTorch's stride=None), e.g. Pool2dParams{.kernel_h = 3, .kernel_w = 3} pools 3x3
// windows with stride 3. Padding is at most half the kernel.
struct Pool2dParams {
  int64_t kernel_h = 0, kernel_w = 0; // required (>= 1)
  int64_t stride_h = 0, stride_w = 0; // 0: = kernel_h, kernel_w
  int64_t pad_h = 0, pad_w = 0;
  bool ceil_mode = false;
  bool count_include_pad = true; // avg_pool2d only
};
Tensor max_pool2d(const Tensor& x, const Pool2dParams& p);
Tensor avg_pool2d(const Tensor& x, const Pool2dParams& p);
Tensor adaptive_avg_pool2d(const Tensor& x, int64_t out_h, int64_t out_w);

// ---- Normalisation — src/ops/batchnorm.cpp ----------------------------------------------------
// F.batch_norm's options and defaults, by name: batch_norm(x, rm, rv, w, b, {.training = true}).
struct BatchNormOptions {
  bool training = false;  // batch statistics (and a running-stat update) instead of running stats
  double momentum = 0.1;  // in [0, 1]: running = (1 - momentum) running + momentum batch
  double eps = 1e-5;      // > 0, added to the variance
};
// x [N, C, ...]. training: normalise with batch statistics and update running_mean/var in place
// (with the unbiased batch variance). eval: use the running statistics (the batch's when they are
// undefined). weight/bias [C] may be undefined (affine = false). Dtypes: float32/float64 all
// alike, or a bfloat16/float16 x (mixed precision) with float32 weight, bias and running stats:
// y and dx in x's dtype, statistics in float32, weight/bias gradients float32 (PyTorch's CPU rule).
Tensor batch_norm(const Tensor& x, const Tensor& running_mean, const Tensor& running_var,
                  const Tensor& weight, const Tensor& bias, const BatchNormOptions& o = {});

// ---- Softmax and losses — src/ops/softmax.cpp, src/ops/loss.cpp -----------------------------
Tensor softmax(const Tensor& x, int64_t dim);
Tensor log_softmax(const Tensor& x, int64_t dim);
// reduction: "mean", "sum" or "none".
// nll_loss: logp [N, C], target [N] int64 class indices; ignore_index skips targets.
Tensor nll_loss(const Tensor& logp, const Tensor& target, const std::string& reduction = "mean",
                int64_t ignore_index = -100);
// cross_entropy: logits [N, C], target [N] int64; label smoothing eps mixes the one-hot target
// with the uniform distribution: q = (1 - eps) onehot + eps / C.
Tensor cross_entropy(const Tensor& logits, const Tensor& target, double label_smoothing = 0.0,
                     const std::string& reduction = "mean", int64_t ignore_index = -100);
Tensor mse_loss(const Tensor& input, const Tensor& target, const std::string& reduction = "mean");
// kl_div: input log-probabilities, target probabilities (or log-probabilities if log_target);
// pointwise target * (log target - input); reduction "batchmean" divides the sum by N.
Tensor kl_div(const Tensor& input, const Tensor& target, const std::string& reduction = "batchmean",
              bool log_target = false);

// ---- Shape ops — src/ops/shape.cpp ------------------------------------------------------------
Tensor cat(const std::vector<Tensor>& ts, int64_t dim = 0);
Tensor stack(const std::vector<Tensor>& ts, int64_t dim = 0);
std::vector<Tensor> split(const Tensor& x, int64_t split_size, int64_t dim = 0);
std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim = 0);
std::vector<Tensor> chunk(const Tensor& x, int64_t chunks, int64_t dim = 0);
Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index); // index int64 1-D
Tensor gather(const Tensor& x, int64_t dim, const Tensor& index);       // index int64, same ndim
// pad: (left, right, top, bottom) for the last two dims, as F.pad with 4 values; mode "constant"
// (with value), "reflect" or "replicate".
Tensor pad(const Tensor& x, const std::vector<int64_t>& pads, const std::string& mode = "constant",
           double value = 0.0);
Tensor flatten(const Tensor& x, int64_t start_dim = 1, int64_t end_dim = -1);

// ---- Dropout — src/ops/dropout.cpp ------------------------------------------------------------
// Zeroes each element with probability p and scales the rest by 1/(1-p) when training.
Tensor dropout(const Tensor& x, double p, bool training, Generator* g = nullptr);

// ---- Operators --------------------------------------------------------------------------------
inline Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
inline Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
inline Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
inline Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
inline Tensor operator+(const Tensor& a, double b) { return add(a, b); }
inline Tensor operator-(const Tensor& a, double b) { return sub(a, b); }
inline Tensor operator*(const Tensor& a, double b) { return mul(a, b); }
inline Tensor operator/(const Tensor& a, double b) { return div(a, b); }
inline Tensor operator+(double a, const Tensor& b) { return add(b, a); }
inline Tensor operator-(double a, const Tensor& b) { return rsub(b, a); }
inline Tensor operator*(double a, const Tensor& b) { return mul(b, a); }

} // namespace tb
