// src/ops/pool.cpp — max_pool2d, avg_pool2d, adaptive_avg_pool2d, forward and backward.
//
// x [N, C, H, W] -> y [N, C, OH, OW]. For max/avg pooling (PyTorch's pooling_output_shape):
//   OH = floor_or_ceil((H + 2 pad_h - KH) / stride_h) + 1, and in ceil_mode the last window must
//   start inside the input or its left padding: if (OH - 1) stride_h >= H + pad_h, OH -= 1.
// Padding is at most half the kernel, so no window lies entirely in the padding.
//   max:      y = max over the window; backward routes dy to the saved argmax: dx[idx] += dy
//   avg:      y = sum / divisor (divisor: window incl. padding if count_include_pad, else the
//             elements inside the input); backward spreads dy / divisor over the window
//   adaptive: window rows [floor(i H / OH), ceil((i+1) H / OH)), likewise columns; y = mean
// Layout: y (and dx) take x's layout: channels-last stays channels-last (conv outputs are), NCHW
// stays NCHW; any other layout is copied to channels-last first.
#include <tb/ops.h>

#include "dispatch.h"
#include "qactivation.h"
#include "kernels/pool.h"

namespace tb {
namespace {

using kernels::Pool2dGeom;
using kernels::Pool2dKernels;
using kernels::Strides4;

void check_pool_input(const char* op, const Tensor& x) {
  check_defined(op, x, "input");
  check_not_quantized(op, x);
  TB_CHECK(x.dim() == 4, "{}: expected input [N, C, H, W], got {}", op, shape_str(x.shape()));
  TB_CHECK(x.dtype() == kFloat32 || x.dtype() == kFloat64,
           "{}: expected a float32 or float64 input, got {}", op, x.dtype());
}

// t (detached) in the given layout: itself when it already has it, else a copy.
Tensor in_layout(const Tensor& t, bool channels_last) {
  Tensor d = t.detach();
  if (channels_last) return d.is_channels_last() ? d : d.contiguous_channels_last();
  return d.is_contiguous() ? d : d.contiguous();
}

// Canonical strides of an N×C×H×W layout (a size-1 dim's stride never matters, so these address
// the same elements as the tensor's own strides).
Strides4 strides_of(bool channels_last, int64_t C, int64_t H, int64_t W) {
  return channels_last ? kernels::nhwc_strides(C, H, W) : kernels::nchw_strides(C, H, W);
}

Tensor empty_in(bool channels_last, const Shape& s, TensorOptions o) {
  return channels_last ? empty_channels_last(s, o) : empty(s, o);
}

// The layout kernels see: x's own if it is NCHW-contiguous or channels-last, else channels-last.
bool choose_channels_last(const Tensor& x) { return x.is_channels_last() || !x.is_contiguous(); }

int64_t pool_output_size(int64_t in, int64_t k, int64_t pad, int64_t stride, bool ceil_mode) {
  int64_t num = in + 2 * pad - k + (ceil_mode ? stride - 1 : 0);
  int64_t out = (num >= 0 ? num / stride : -((-num + stride - 1) / stride)) + 1; // floor division
  if (ceil_mode && (out - 1) * stride >= in + pad) out--;
  return out;
}

// The geometry of a max/avg pooling; a stride of 0 means "the kernel size" (PyTorch's stride=None).
Pool2dGeom pool_geometry(const char* op, const Tensor& x, const Pool2dParams& p) {
  TB_CHECK(p.kernel_h >= 1 && p.kernel_w >= 1,
           "{}: expected a kernel size >= 1 (Pool2dParams::kernel_h/kernel_w must be set), got "
           "kernel ({}, {}) for input {}",
           op, p.kernel_h, p.kernel_w, shape_str(x.shape()));
  TB_CHECK(p.stride_h >= 0 && p.stride_w >= 0,
           "{}: expected a stride >= 1 (or 0: the kernel size), got stride ({}, {})", op,
           p.stride_h, p.stride_w);
  int64_t stride_h = p.stride_h == 0 ? p.kernel_h : p.stride_h;
  int64_t stride_w = p.stride_w == 0 ? p.kernel_w : p.stride_w;
  TB_CHECK(p.pad_h >= 0 && p.pad_w >= 0 && p.pad_h <= p.kernel_h / 2 && p.pad_w <= p.kernel_w / 2,
           "{}: padding should be >= 0 and at most half of the kernel size, got padding ({}, {}) "
           "for kernel ({}, {})",
           op, p.pad_h, p.pad_w, p.kernel_h, p.kernel_w);
  Pool2dGeom g;
  g.N = x.size(0), g.C = x.size(1), g.H = x.size(2), g.W = x.size(3);
  g.OH = pool_output_size(g.H, p.kernel_h, p.pad_h, stride_h, p.ceil_mode);
  g.OW = pool_output_size(g.W, p.kernel_w, p.pad_w, stride_w, p.ceil_mode);
  TB_CHECK(g.OH >= 1 && g.OW >= 1,
           "{}: input {} is too small for kernel ({}, {}) with padding ({}, {}): output size "
           "would be {}x{}",
           op, shape_str(x.shape()), p.kernel_h, p.kernel_w, p.pad_h, p.pad_w, g.OH, g.OW);
  g.KH = p.kernel_h, g.KW = p.kernel_w, g.stride_h = stride_h, g.stride_w = stride_w;
  g.pad_h = p.pad_h, g.pad_w = p.pad_w, g.count_include_pad = p.count_include_pad;
  return g;
}

// Runs one of the average-pool kernel pairs (avg or adaptive) and records its backward.
using AvgForwardFn = decltype(Pool2dKernels::avg_forward);
using AvgBackwardFn = decltype(Pool2dKernels::avg_backward);

Tensor run_avg(const char* op, const Tensor& x, const Pool2dGeom& g,
               AvgForwardFn Pool2dKernels::*forward, AvgBackwardFn Pool2dKernels::*backward) {
  auto fwd = kernel(forward, op, x.device(), x.dtype());
  bool cl = choose_channels_last(x);
  Tensor xd = in_layout(x, cl);
  TensorOptions opts(x.dtype(), x.device());
  Tensor y = empty_in(cl, {g.N, g.C, g.OH, g.OW}, opts);
  Strides4 xs = strides_of(cl, g.C, g.H, g.W), ys = strides_of(cl, g.C, g.OH, g.OW);
  if (y.numel() > 0) fwd(x.dtype(), g, xd.raw_data(), xs, y.raw_data(), ys);
  if (auto node = make_node(op, {x})) {
    // (the closure must not capture y: y -> node -> closure -> y would never be freed)
    node->backward = [=](const std::vector<Tensor>& grads) -> std::vector<Tensor> {
      Tensor dx = empty_in(cl, {g.N, g.C, g.H, g.W}, opts);
      if (!grads[0].defined() || g.N * g.C * g.OH * g.OW == 0) return {dx.zero_()};
      Tensor dy = in_layout(grads[0], cl);
      kernel(backward, op, opts.device, opts.dtype)(opts.dtype, g, dy.raw_data(), ys,
                                                    dx.raw_data(), xs);
      return {dx};
    };
    attach_outputs(node, {y});
  }
  return y;
}

} // namespace

// float16/bfloat16 inputs are pooled in float32 and the result rounded back (exact for max).
static bool is_half(const Tensor& t) {
  return t.defined() && (t.dtype() == kBFloat16 || t.dtype() == kFloat16);
}

Tensor max_pool2d(const Tensor& x, const Pool2dParams& p) {
  const char* op = "max_pool2d";
  if (is_half(x)) return max_pool2d(x.to(kFloat32), p).to(x.dtype());
  check_pool_input(op, x);
  Pool2dGeom g = pool_geometry(op, x, p);
  auto forward = kernel(&Pool2dKernels::max_forward, op, x.device(), x.dtype());
  bool cl = choose_channels_last(x);
  Tensor xd = in_layout(x, cl);
  TensorOptions opts(x.dtype(), x.device());
  Tensor y = empty_in(cl, {g.N, g.C, g.OH, g.OW}, opts);
  Tensor idx = empty_in(cl, {g.N, g.C, g.OH, g.OW}, opts.with_dtype(kInt64));
  Strides4 xs = strides_of(cl, g.C, g.H, g.W), ys = strides_of(cl, g.C, g.OH, g.OW);
  if (y.numel() > 0)
    forward(x.dtype(), g, xd.raw_data(), xs, y.raw_data(), idx.data<int64_t>(), ys);
  if (auto node = make_node(op, {x})) {
    node->backward = [=](const std::vector<Tensor>& grads) -> std::vector<Tensor> {
      Tensor dx = empty_in(cl, {g.N, g.C, g.H, g.W}, opts);
      if (!grads[0].defined() || idx.numel() == 0) return {dx.zero_()};
      Tensor dy = in_layout(grads[0], cl);
      kernel(&Pool2dKernels::max_backward, op, opts.device, opts.dtype)(
          opts.dtype, g, dy.raw_data(), idx.data<int64_t>(), ys, dx.raw_data(), xs);
      return {dx};
    };
    attach_outputs(node, {y});
  }
  return y;
}

Tensor avg_pool2d(const Tensor& x, const Pool2dParams& p) {
  const char* op = "avg_pool2d";
  if (is_half(x)) return avg_pool2d(x.to(kFloat32), p).to(x.dtype());
  check_pool_input(op, x);
  Pool2dGeom g = pool_geometry(op, x, p);
  return run_avg(op, x, g, &Pool2dKernels::avg_forward, &Pool2dKernels::avg_backward);
}

Tensor adaptive_avg_pool2d(const Tensor& x, int64_t out_h, int64_t out_w) {
  const char* op = "adaptive_avg_pool2d";
  if (is_half(x)) return adaptive_avg_pool2d(x.to(kFloat32), out_h, out_w).to(x.dtype());
  check_pool_input(op, x);
  TB_CHECK(out_h >= 1 && out_w >= 1, "{}: expected output size >= 1, got ({}, {}) for input {}",
           op, out_h, out_w, shape_str(x.shape()));
  TB_CHECK(x.size(2) >= 1 && x.size(3) >= 1, "{}: expected a non-empty H and W, got input {}", op,
           shape_str(x.shape()));
  Pool2dGeom g;
  g.N = x.size(0), g.C = x.size(1), g.H = x.size(2), g.W = x.size(3), g.OH = out_h, g.OW = out_w;
  return run_avg(op, x, g, &Pool2dKernels::adaptive_avg_forward,
                 &Pool2dKernels::adaptive_avg_backward);
}

} // namespace tb
