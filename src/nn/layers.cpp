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

Linear::Linear(int64_t in, int64_t out, bool bias, TensorOptions o) {
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
  TB_CHECK(x.dim() >= 1 && x.size(-1) == in_features(), "Linear: expected input [..., {}], got {}",
           in_features(), shape_str(x.shape()));
  return linear(x, weight(), bias());
}

std::string Linear::extra_repr() const {
  return fmt::format("in_features={}, out_features={}, bias={}", in_features(), out_features(),
                     py_bool(bias().defined()));
}

// ---------------------------------------------------------------------------------------------
// Conv2d

Conv2d::Conv2d(int64_t in, int64_t out, Size2 kernel_size)
    : Conv2d(Conv2dOptions{.in_channels = in, .out_channels = out, .kernel_size = kernel_size}) {}

Conv2d::Conv2d(const Conv2dOptions& c) {
  int64_t in = c.in_channels, out = c.out_channels, groups = c.groups;
  TB_CHECK(groups > 0, "Conv2d: groups must be positive, got {}", groups);
  TB_CHECK(in > 0 && out > 0 && in % groups == 0 && out % groups == 0,
           "Conv2d: in_channels ({}) and out_channels ({}) must be positive and divisible by "
           "groups ({})", in, out, groups);
  auto pair = [](Size2 s) { return fmt::format("({}, {})", s.h, s.w); };
  TB_CHECK(c.kernel_size.h > 0 && c.kernel_size.w > 0 && c.stride.h > 0 && c.stride.w > 0 &&
           c.dilation.h > 0 && c.dilation.w > 0 && c.padding.h >= 0 && c.padding.w >= 0,
           "Conv2d: need kernel_size, stride, dilation > 0 and padding >= 0, got kernel_size={}, "
           "stride={}, padding={}, dilation={}", pair(c.kernel_size), pair(c.stride),
           pair(c.padding), pair(c.dilation));
  params = Conv2dParams{.stride_h = c.stride.h, .stride_w = c.stride.w,
                        .pad_h = c.padding.h, .pad_w = c.padding.w,
                        .dilation_h = c.dilation.h, .dilation_w = c.dilation.w, .groups = groups};
  TensorOptions o = c.tensor;
  o.requires_grad = false;
  Tensor w = empty({out, in / groups, c.kernel_size.h, c.kernel_size.w}, o);
  Tensor b = c.bias ? empty({out}, o) : Tensor();
  default_init(w, c.bias ? &b : nullptr);
  register_parameter("weight", w);
  if (c.bias) register_parameter("bias", b);
}

Tensor Conv2d::forward(const Tensor& x) {
  TB_CHECK(x.dim() == 4 && x.size(1) == in_channels(),
           "Conv2d: expected input [N, {}, H, W], got {}", in_channels(), shape_str(x.shape()));
  return conv2d(x, weight(), bias(), params);
}

std::string Conv2d::extra_repr() const {
  Size2 k = kernel_size();
  std::string s = fmt::format("{}, {}, kernel_size=({}, {}), stride=({}, {})", in_channels(),
                              out_channels(), k.h, k.w, params.stride_h, params.stride_w);
  if (params.pad_h || params.pad_w) s += fmt::format(", padding=({}, {})", params.pad_h, params.pad_w);
  if (params.dilation_h != 1 || params.dilation_w != 1)
    s += fmt::format(", dilation=({}, {})", params.dilation_h, params.dilation_w);
  if (params.groups != 1) s += fmt::format(", groups={}", params.groups);
  if (!bias().defined()) s += ", bias=False";
  return s;
}

// ---------------------------------------------------------------------------------------------
// BatchNorm

BatchNormBase::BatchNormBase(int64_t num_features, const BatchNorm2dOptions& c)
    : eps(c.eps), momentum(c.momentum), num_features_(num_features) {
  TB_CHECK(num_features > 0, "BatchNorm: num_features must be positive, got {}", num_features);
  TB_CHECK(eps > 0, "BatchNorm: eps must be positive, got {}", eps);
  TB_CHECK(!momentum || (*momentum >= 0 && *momentum <= 1),
           "BatchNorm: momentum must be in [0, 1] (or nullopt: cumulative average), got {}",
           momentum.value_or(0));
  TensorOptions o = c.tensor;
  o.requires_grad = false;
  if (c.affine) {
    register_parameter("weight", ones({num_features}, o));
    register_parameter("bias", zeros({num_features}, o));
  }
  if (c.track_running_stats) {
    register_buffer("running_mean", zeros({num_features}, o));
    register_buffer("running_var", ones({num_features}, o));
    register_buffer("num_batches_tracked", zeros({}, o.with_dtype(kInt64)));
  }
}

// As PyTorch's _BatchNorm.forward: in training with running stats, num_batches_tracked += 1 and
// the running update uses `momentum` (or 1/num_batches_tracked when momentum is nullopt).
Tensor BatchNormBase::forward(const Tensor& x) {
  check_input(x);
  TB_CHECK(x.size(1) == num_features(), "{}: expected {} channels in dim 1, got input {}",
           type_name(), num_features(), shape_str(x.shape()));
  double factor = momentum.value_or(0.0);
  bool track_running_stats = this->track_running_stats();
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
  return batch_norm(x, running_mean(), running_var(), weight(), bias(),
                    {.training = use_batch_stats, .momentum = factor, .eps = eps});
}

int64_t BatchNormBase::num_features() const {
  if (Tensor w = weight(); w.defined()) return w.size(0);
  if (Tensor m = running_mean(); m.defined()) return m.size(0);
  return num_features_;
}

std::string BatchNormBase::extra_repr() const {
  return fmt::format("{}, eps={}, momentum={}, affine={}, track_running_stats={}", num_features(),
                     eps, momentum ? fmt::format("{}", *momentum) : std::string("None"),
                     py_bool(affine()), py_bool(track_running_stats()));
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

// PyTorch's checks and stride default (stride unset: the kernel size).
static Pool2dParams pool2d_params(const char* op, Size2 k, std::optional<Size2> stride,
                                  Size2 padding, bool ceil_mode) {
  Size2 s = stride.value_or(k);
  TB_CHECK(k.h > 0 && k.w > 0 && s.h > 0 && s.w > 0 && padding.h >= 0 && padding.w >= 0,
           "{}: need kernel_size > 0, stride > 0 and padding >= 0, got kernel_size=({}, {}), "
           "stride=({}, {}), padding=({}, {})", op, k.h, k.w, s.h, s.w, padding.h, padding.w);
  TB_CHECK(2 * padding.h <= k.h && 2 * padding.w <= k.w,
           "{}: padding ({}, {}) should be at most half the kernel size ({}, {})", op, padding.h,
           padding.w, k.h, k.w);
  Pool2dParams p;
  p.kernel_h = k.h, p.kernel_w = k.w;
  p.stride_h = s.h, p.stride_w = s.w;
  p.pad_h = padding.h, p.pad_w = padding.w;
  p.ceil_mode = ceil_mode;
  return p;
}

// Prints "3" for a square pair and "(3, 1)" otherwise, as PyTorch prints what it was given.
static std::string pair_str(int64_t h, int64_t w) {
  return h == w ? fmt::format("{}", h) : fmt::format("({}, {})", h, w);
}

MaxPool2d::MaxPool2d(const MaxPool2dOptions& o)
    : params(pool2d_params("MaxPool2d", o.kernel_size, o.stride, o.padding, o.ceil_mode)) {}

std::string MaxPool2d::extra_repr() const {
  return fmt::format("kernel_size={}, stride={}, padding={}, dilation=1, ceil_mode={}",
                     pair_str(params.kernel_h, params.kernel_w),
                     pair_str(params.stride_h, params.stride_w),
                     pair_str(params.pad_h, params.pad_w), py_bool(params.ceil_mode));
}

AvgPool2d::AvgPool2d(const AvgPool2dOptions& o)
    : params(pool2d_params("AvgPool2d", o.kernel_size, o.stride, o.padding, o.ceil_mode)) {
  params.count_include_pad = o.count_include_pad;
}

std::string AvgPool2d::extra_repr() const {
  return fmt::format("kernel_size={}, stride={}, padding={}",
                     pair_str(params.kernel_h, params.kernel_w),
                     pair_str(params.stride_h, params.stride_w),
                     pair_str(params.pad_h, params.pad_w));
}

std::string AdaptiveAvgPool2d::extra_repr() const {
  return "output_size=" + pair_str(output_size.h, output_size.w);
}

std::string Flatten::extra_repr() const {
  return fmt::format("start_dim={}, end_dim={}", start_dim, end_dim);
}

Dropout::Dropout(double p) : p(p) {
  TB_CHECK(p >= 0 && p <= 1, "Dropout: probability must be in [0, 1], got {}", p);
}

std::string Dropout::extra_repr() const { return fmt::format("p={}, inplace=False", p); }

// ---------------------------------------------------------------------------------------------
// ChannelShuffle: [N, g*c, H, W] -> [N, g, c, H, W] -> transpose(1, 2) -> [N, c*g, H, W].

Tensor channel_shuffle(const Tensor& x, int64_t groups) {
  check_defined("channel_shuffle", x, "input");
  TB_CHECK(x.dim() == 4, "channel_shuffle: expected a 4-D [N, C, H, W] input, got shape {}",
           shape_str(x.shape()));
  int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  TB_CHECK(groups > 0 && c % groups == 0,
           "channel_shuffle: channels ({}) must be divisible by groups ({}); input shape {}", c,
           groups, shape_str(x.shape()));
  if (x.is_channels_last() && !x.is_contiguous()) {
    // Work on the N×H×W×C memory view so the result stays channels-last.
    Tensor t = x.permute({0, 2, 3, 1}).reshape({n, h, w, groups, c / groups});
    t = t.transpose(3, 4).contiguous().view({n, h, w, c});
    return t.permute({0, 3, 1, 2});
  }
  Tensor t = x.reshape({n, groups, c / groups, h, w}).transpose(1, 2).contiguous();
  return t.view({n, c, h, w});
}

std::string ChannelShuffle::extra_repr() const { return fmt::format("groups={}", groups); }

// ---------------------------------------------------------------------------------------------
// Joins

static void check_inputs(const char* op, const std::vector<Tensor>& xs, size_t n) {
  TB_CHECK(xs.size() == n, "{}: takes {} inputs, got {}", op, n, xs.size());
}

Tensor Add::forward_list(const std::vector<Tensor>& xs) {
  check_inputs("Add", xs, 2);
  return add(xs[0], xs[1]);
}

Tensor Mul::forward_list(const std::vector<Tensor>& xs) {
  check_inputs("Mul", xs, 2);
  return mul(xs[0], xs[1]);
}

Tensor Cat::forward_list(const std::vector<Tensor>& xs) {
  TB_CHECK(!xs.empty(), "Cat: takes at least one input, got none");
  return cat(xs, dim);
}

std::string Cat::extra_repr() const { return fmt::format("dim={}", dim); }

} // namespace tb::nn
