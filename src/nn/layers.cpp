// The layers: constructors (PyTorch's default initialisation), forward, printing.
#include <tb/nn.h>

#include <cmath>

namespace tb::nn {

namespace {
// PyTorch's reset_parameters for Linear and _ConvNd: weight kaiming_uniform_(a = sqrt(5)), which
// is U(-1/sqrt(fan_in), 1/sqrt(fan_in)); bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
void default_init(Tensor& weight, Tensor* bias) {
  kaiming_uniform_(weight, std::sqrt(5.0));
  if (bias) {
    int64_t fan_in = fan_in_out(weight.shape()).first;
    double bound = fan_in > 0 ? 1.0 / std::sqrt((double)fan_in) : 0.0;
    uniform_(*bias, -bound, bound);
  }
}
const char* py_bool(bool b) { return b ? "True" : "False"; }
} // namespace

// ---------------------------------------------------------------------------------------------
// Linear

Linear::Linear(int64_t in, int64_t out, bool bias, TensorOptions o)
    : in_features(in), out_features(out) {
  TB_CHECK(in >= 0 && out >= 0, "Linear: in_features and out_features must be >= 0, got {} and {}",
           in, out);
  o.requires_grad = false;
  Tensor w = empty({out, in}, o);
  Tensor b = bias ? empty({out}, o) : Tensor();
  default_init(w, bias ? &b : nullptr);
  register_parameter("weight", w);
  if (bias) register_parameter("bias", b);
}

Tensor Linear::forward(const Tensor& x) {
  TB_CHECK(x.dim() >= 1 && x.size(-1) == in_features, "Linear: expected input [..., {}], got {}",
           in_features, shape_str(x.shape()));
  return linear(x, weight(), bias());
}

std::string Linear::extra_repr() const {
  return fmt::format("in_features={}, out_features={}, bias={}", in_features, out_features,
                     py_bool(bias().defined()));
}

// ---------------------------------------------------------------------------------------------
// Conv2d

Conv2d::Conv2d(int64_t in, int64_t out, int64_t k, int64_t stride, int64_t padding,
               int64_t dilation, int64_t groups, bool bias, TensorOptions o)
    : in_channels(in), out_channels(out), kernel_size(k) {
  TB_CHECK(groups > 0, "Conv2d: groups must be positive, got {}", groups);
  TB_CHECK(in > 0 && out > 0 && in % groups == 0 && out % groups == 0,
           "Conv2d: in_channels ({}) and out_channels ({}) must be positive and divisible by "
           "groups ({})", in, out, groups);
  TB_CHECK(k > 0 && stride > 0 && dilation > 0 && padding >= 0,
           "Conv2d: need kernel_size, stride, dilation > 0 and padding >= 0, got kernel_size={}, "
           "stride={}, padding={}, dilation={}", k, stride, padding, dilation);
  params = Conv2dParams{stride, stride, padding, padding, dilation, dilation, groups};
  o.requires_grad = false;
  Tensor w = empty({out, in / groups, k, k}, o);
  Tensor b = bias ? empty({out}, o) : Tensor();
  default_init(w, bias ? &b : nullptr);
  register_parameter("weight", w);
  if (bias) register_parameter("bias", b);
}

Tensor Conv2d::forward(const Tensor& x) {
  TB_CHECK(x.dim() == 4 && x.size(1) == in_channels, "Conv2d: expected input [N, {}, H, W], got {}",
           in_channels, shape_str(x.shape()));
  return conv2d(x, weight(), bias(), params);
}

std::string Conv2d::extra_repr() const {
  std::string s = fmt::format("{}, {}, kernel_size=({}, {}), stride=({}, {})", in_channels,
                              out_channels, kernel_size, kernel_size, params.stride_h,
                              params.stride_w);
  if (params.pad_h || params.pad_w) s += fmt::format(", padding=({}, {})", params.pad_h, params.pad_w);
  if (params.dilation_h != 1 || params.dilation_w != 1)
    s += fmt::format(", dilation=({}, {})", params.dilation_h, params.dilation_w);
  if (params.groups != 1) s += fmt::format(", groups={}", params.groups);
  if (!bias().defined()) s += ", bias=False";
  return s;
}

// ---------------------------------------------------------------------------------------------
// BatchNorm

BatchNormBase::BatchNormBase(int64_t num_features, double eps, std::optional<double> momentum,
                             bool affine, bool track_running_stats, TensorOptions o)
    : num_features(num_features), eps(eps), momentum(momentum), affine(affine),
      track_running_stats(track_running_stats) {
  TB_CHECK(num_features > 0, "BatchNorm: num_features must be positive, got {}", num_features);
  TB_CHECK(eps > 0, "BatchNorm: eps must be positive, got {}", eps);
  o.requires_grad = false;
  if (affine) {
    register_parameter("weight", ones({num_features}, o));
    register_parameter("bias", zeros({num_features}, o));
  }
  if (track_running_stats) {
    register_buffer("running_mean", zeros({num_features}, o));
    register_buffer("running_var", ones({num_features}, o));
    register_buffer("num_batches_tracked", zeros({}, o.with_dtype(kInt64)));
  }
}

// As PyTorch's _BatchNorm.forward: in training with running stats, num_batches_tracked += 1 and
// the running update uses `momentum` (or 1/num_batches_tracked when momentum is nullopt).
Tensor BatchNormBase::forward(const Tensor& x) {
  check_input(x);
  TB_CHECK(x.size(1) == num_features, "{}: expected {} channels in dim 1, got input {}",
           type_name(), num_features, shape_str(x.shape()));
  double factor = momentum.value_or(0.0);
  if (is_training() && track_running_stats) {
    Tensor n = num_batches_tracked();
    no_grad guard;
    if (n.device().is_cpu()) {
      n.data<int64_t>()[0] += 1;
      n.bump_version();
    } else {
      n.add_(ones({}, TensorOptions(kInt64, n.device())));
    }
    if (!momentum) factor = 1.0 / n.item();
  }
  bool use_batch_stats = is_training() || !track_running_stats;
  return batch_norm(x, running_mean(), running_var(), weight(), bias(), use_batch_stats, factor,
                    eps);
}

std::string BatchNormBase::extra_repr() const {
  return fmt::format("{}, eps={}, momentum={}, affine={}, track_running_stats={}", num_features,
                     eps, momentum ? fmt::format("{}", *momentum) : std::string("None"),
                     py_bool(affine), py_bool(track_running_stats));
}

void BatchNorm1d::check_input(const Tensor& x) const {
  TB_CHECK(x.dim() == 2 || x.dim() == 3, "BatchNorm1d: expected 2D or 3D input, got {}",
           shape_str(x.shape()));
}

void BatchNorm2d::check_input(const Tensor& x) const {
  TB_CHECK(x.dim() == 4, "BatchNorm2d: expected 4D input [N, C, H, W], got {}",
           shape_str(x.shape()));
}

// ---------------------------------------------------------------------------------------------
// Activations, pooling, reshaping, dropout

std::string LeakyReLU::extra_repr() const {
  return fmt::format("negative_slope={}", negative_slope);
}

std::string GELU::extra_repr() const { return fmt::format("approximate='{}'", approximate); }

static Pool2dParams pool_params(const char* op, int64_t k, std::optional<int64_t> stride,
                                int64_t padding, bool ceil_mode) {
  int64_t s = stride.value_or(k);
  TB_CHECK(k > 0 && s > 0 && padding >= 0, "{}: need kernel_size > 0, stride > 0 and padding >= 0, "
           "got kernel_size={}, stride={}, padding={}", op, k, s, padding);
  TB_CHECK(2 * padding <= k, "{}: padding ({}) should be at most half the kernel size ({})", op,
           padding, k);
  Pool2dParams p;
  p.kernel_h = p.kernel_w = k;
  p.stride_h = p.stride_w = s;
  p.pad_h = p.pad_w = padding;
  p.ceil_mode = ceil_mode;
  return p;
}

MaxPool2d::MaxPool2d(int64_t k, std::optional<int64_t> stride, int64_t padding, bool ceil_mode)
    : params(pool_params("MaxPool2d", k, stride, padding, ceil_mode)) {}

std::string MaxPool2d::extra_repr() const {
  return fmt::format("kernel_size={}, stride={}, padding={}, dilation=1, ceil_mode={}",
                     params.kernel_h, params.stride_h, params.pad_h, py_bool(params.ceil_mode));
}

AvgPool2d::AvgPool2d(int64_t k, std::optional<int64_t> stride, int64_t padding, bool ceil_mode,
                     bool count_include_pad)
    : params(pool_params("AvgPool2d", k, stride, padding, ceil_mode)) {
  params.count_include_pad = count_include_pad;
}

std::string AvgPool2d::extra_repr() const {
  return fmt::format("kernel_size={}, stride={}, padding={}", params.kernel_h, params.stride_h,
                     params.pad_h);
}

std::string AdaptiveAvgPool2d::extra_repr() const {
  return out_h == out_w ? fmt::format("output_size={}", out_h)
                        : fmt::format("output_size=({}, {})", out_h, out_w);
}

std::string Flatten::extra_repr() const {
  return fmt::format("start_dim={}, end_dim={}", start_dim, end_dim);
}

Dropout::Dropout(double p) : p(p) {
  TB_CHECK(p >= 0 && p <= 1, "Dropout: probability must be in [0, 1], got {}", p);
}

std::string Dropout::extra_repr() const { return fmt::format("p={}, inplace=False", p); }

} // namespace tb::nn
