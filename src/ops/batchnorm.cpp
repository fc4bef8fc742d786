// src/ops/batchnorm.cpp — batch_norm, forward and backward.
//
// x [N, C, ...] seen as [N, C, S]; each channel c normalises its M = N*S values:
//   y = (x - mean_c) / sqrt(var_c + eps) * w_c + b_c        (w = 1, b = 0 when undefined)
// training (or no running stats): mean_c, var_c are the batch's (var biased, 1/M), and the running
//   stats (if given) move toward them in place: running = (1 - momentum) running + momentum batch,
//   with the UNBIASED batch variance var_c M / (M - 1), as PyTorch.
// eval: mean_c, var_c are the running stats.
// Backward (derivation in kernels/ref/batchnorm.cpp), xhat = (x - mean) inv_std, sums over M:
//   db = sum dy,  dw = sum dy xhat
//   batch stats: dx = w inv_std / M (M dy - sum dy - xhat sum dy xhat)
//   eval:        dx = w inv_std dy
// Layout: y and dx take x's layout; 4-D inputs stay channels-last (what conv produces) or NCHW,
// anything else is copied to a dense layout first.
// Dtypes: float32 or float64 throughout; or float16/bfloat16 x (mixed precision) with float32
// weight, bias and running stats: y and dx in x's dtype, the statistics computed and saved in
// float32 (double inside the kernels), dw and db in float32, as PyTorch's CPU batch_norm. Autocast
// leaves batch_norm alone (PyTorch lists it nowhere): a bfloat16 conv output is normalised as it
// is, so conv -> batch_norm -> relu6 -> conv runs in bfloat16 without casts.
#include <tb/ops.h>

#include "dispatch.h"
#include "qactivation.h"
#include "kernels/batchnorm.h"

namespace tb {
namespace {

using kernels::BatchNormKernels;

// For 4-D inputs: keep channels-last if x has it (or has no dense layout); else contiguous.
bool choose_channels_last(const Tensor& x) {
  return x.dim() == 4 && (x.is_channels_last() || !x.is_contiguous());
}

Tensor in_layout(const Tensor& t, bool channels_last) {
  Tensor d = t.detach();
  if (channels_last) return d.is_channels_last() ? d : d.contiguous_channels_last();
  return d.is_contiguous() ? d : d.contiguous();
}

Tensor empty_in(bool channels_last, const Shape& s, TensorOptions o) {
  return channels_last ? empty_channels_last(s, o) : empty(s, o);
}

// [N, C, S] view of the layout: channels-last has channel stride 1 and spatial stride C; NCHW and
// friends have spatial stride 1. [N, C] (S = 1) is described as rows of C (ss = C) so the CPU
// kernel walks its contiguous channels.
kernels::BatchNormLayout layout_of(const Tensor& x, bool channels_last) {
  int64_t N = x.size(0), C = x.size(1), S = N * C > 0 ? x.numel() / (N * C) : 0;
  if (x.dim() == 4 && channels_last) return {N, C, S, S * C, 1, C};
  if (S == 1) return {N, C, 1, C, 1, C};
  return {N, C, S, C * S, S, 1};
}

bool is_half(DType t) { return t == kBFloat16 || t == kFloat16; }

// The dtype of the per-channel vectors for input dtype t: float32 for half inputs, else t.
DType param_dtype(DType t) { return is_half(t) ? kFloat32 : t; }

void check_channel_vector(const Tensor& x, const Tensor& t, const char* name) {
  if (!t.defined()) return;
  check_same_device("batch_norm", x, t);
  TB_CHECK(t.dtype() == param_dtype(x.dtype()),
           "batch_norm: expected {} of dtype {} for input of dtype {}{}, got {}", name,
           param_dtype(x.dtype()), x.dtype(),
           is_half(x.dtype()) ? " (half-precision inputs take float32 parameters and statistics)"
                              : "",
           t.dtype());
  TB_CHECK(t.dim() == 1 && t.size(0) == x.size(1),
           "batch_norm: expected {} of shape [{}] (the channels of input {}), got {}", name,
           x.size(1), shape_str(x.shape()), shape_str(t.shape()));
}

const void* data_or_null(const Tensor& t) { return t.defined() ? t.raw_data() : nullptr; }
void* mut_data_or_null(const Tensor& t) { return t.defined() ? t.raw_data() : nullptr; }

} // namespace

Tensor batch_norm(const Tensor& x, const Tensor& running_mean, const Tensor& running_var,
                  const Tensor& weight, const Tensor& bias, const BatchNormOptions& o) {
  const char* op = "batch_norm";
  const bool training = o.training;
  const double momentum = o.momentum, eps = o.eps;
  check_defined(op, x, "input");
  check_not_quantized(op, x);
  TB_CHECK(x.dim() >= 2, "batch_norm: expected input [N, C, ...], got {}", shape_str(x.shape()));
  TB_CHECK(x.dtype() == kFloat32 || x.dtype() == kFloat64 || is_half(x.dtype()),
           "batch_norm: expected a float32, float64, bfloat16 or float16 input, got {}",
           x.dtype());
  check_channel_vector(x, running_mean, "running_mean");
  check_channel_vector(x, running_var, "running_var");
  check_channel_vector(x, weight, "weight");
  check_channel_vector(x, bias, "bias");
  TB_CHECK(running_mean.defined() == running_var.defined(),
           "batch_norm: running_mean and running_var must both be given or both be undefined");
  TB_CHECK(!running_mean.defined() || (running_mean.is_contiguous() && running_var.is_contiguous()),
           "batch_norm: running_mean and running_var must be contiguous (they are updated in "
           "place), got strides {} and {}",
           shape_str(running_mean.strides()), shape_str(running_var.strides()));
  TB_CHECK(momentum >= 0 && momentum <= 1,
           "batch_norm: expected BatchNormOptions::momentum in [0, 1], got {}", momentum);
  TB_CHECK(eps > 0, "batch_norm: expected BatchNormOptions::eps > 0, got {}", eps);
  auto forward = kernel(&BatchNormKernels::forward, op, x.device(), x.dtype());
  int64_t C = x.size(1), M = C > 0 ? x.numel() / C : 0;
  TB_CHECK(!training || M > 1,
           "batch_norm: expected more than 1 value per channel when training, got input {}",
           shape_str(x.shape()));
  bool use_batch_stats = training || !running_mean.defined();

  bool cl = choose_channels_last(x);
  Tensor xd = in_layout(x, cl);
  kernels::BatchNormLayout l = layout_of(x, cl);
  TensorOptions opts(x.dtype(), x.device()), popts(param_dtype(x.dtype()), x.device());
  Tensor y = empty_in(cl, x.shape(), opts);
  Tensor save_mean = empty({C}, popts), save_invstd = empty({C}, popts);
  Tensor wd = weight.defined() ? weight.detach().contiguous() : Tensor();
  Tensor bd = bias.defined() ? bias.detach().contiguous() : Tensor();
  // The running stats are buffers, written in place outside autograd (bumping their versions).
  bool update_running = use_batch_stats && running_mean.defined();
  if (M > 0 || !use_batch_stats)
    forward(x.dtype(), l, xd.raw_data(), data_or_null(wd), data_or_null(bd), use_batch_stats,
            momentum, eps, mut_data_or_null(running_mean), mut_data_or_null(running_var),
            y.raw_data(), save_mean.raw_data(), save_invstd.raw_data());
  if (update_running) {
    running_mean.bump_version();
    running_var.bump_version();
  }

  std::vector<Tensor> inputs{x};
  if (weight.defined()) inputs.push_back(weight);
  if (bias.defined()) inputs.push_back(bias);
  if (auto node = make_node(op, inputs)) {
    SavedTensor sx(xd), sw(wd);
    bool need_dx = x.requires_grad();
    bool need_dw = weight.defined() && weight.requires_grad();
    bool need_db = bias.defined() && bias.requires_grad();
    bool has_w = weight.defined(), has_b = bias.defined();
    node->backward = [=](const std::vector<Tensor>& grads) -> std::vector<Tensor> {
      Tensor xs = sx.unpack("batch_norm");
      Tensor ws = has_w ? sw.unpack("batch_norm") : Tensor();
      Tensor dx = need_dx ? empty_in(cl, xs.shape(), opts) : Tensor();
      Tensor dw = need_dw ? empty({C}, popts) : Tensor();
      Tensor db = need_db ? empty({C}, popts) : Tensor();
      if (!grads[0].defined() || M == 0) {
        for (Tensor* t : {&dx, &dw, &db})
          if (t->defined()) t->zero_();
      } else {
        Tensor dy = in_layout(grads[0].to(opts.dtype), cl);
        kernel(&BatchNormKernels::backward, "batch_norm", opts.device, opts.dtype)(
            opts.dtype, l, xs.raw_data(), dy.raw_data(), data_or_null(ws), save_mean.raw_data(),
            save_invstd.raw_data(), use_batch_stats, mut_data_or_null(dx), mut_data_or_null(dw),
            mut_data_or_null(db));
      }
      std::vector<Tensor> out{dx};
      if (has_w) out.push_back(dw);
      if (has_b) out.push_back(db);
      return out;
    };
    attach_outputs(node, {y});
  }
  return y;
}

} // namespace tb
