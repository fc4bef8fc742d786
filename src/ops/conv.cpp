// src/ops/conv.cpp — conv2d, forward and backward.
//
// x [N, C, H, W], weight [O, C/groups, KH, KW], bias [O] (optional) -> y [N, O, OH, OW],
//   OH = (H + 2 pad_h - dil_h (KH - 1) - 1) / stride_h + 1   (floor; same for OW)
//   y[n, o] = b[o] + sum over the C/groups input channels of o's group of x (*) w[o]
// Backward (kernels/conv.h has the loops' math):
//   dx = conv_transpose(dy, w)            (backward-data)
//   dw = correlate(x, dy), db = sum dy    (backward-weights, over n, oh, ow)
//
// Layout: y is channels-last (NHWC strides, logical NCHW), as DESIGN.md "oneDNN" explains: it is
// what oneDNN's fast kernels read and write. x may be NCHW-contiguous or channels-last and is used
// as is; any other layout is copied to channels-last first. dx takes x's layout.
// Dtypes: float32, float64, bfloat16, float16 (all tensors the same; half precision accumulates in
// float32). Under autocast (tb/amp.h) x, weight and bias are first cast to the autocast dtype.
#include <tb/ops.h>

#include "autocast.h"
#include "dispatch.h"
#include "qactivation.h"
#include "kernels/conv.h"

namespace tb {
namespace {

using kernels::Conv2dKernels;
using kernels::Strides4;

// t itself when NCHW-contiguous or channels-last, else a channels-last copy (detached: callers
// record their own autograd node). `s` receives the canonical strides of the layout (a size-1
// dim's stride is irrelevant, so the canonical one addresses the same elements).
Tensor dense_4d(const Tensor& t, Strides4& s) {
  Tensor d = t.detach();
  if (!d.is_channels_last() && !d.is_contiguous()) d = d.contiguous_channels_last();
  int64_t C = d.size(1), H = d.size(2), W = d.size(3);
  s = d.is_channels_last() ? kernels::nhwc_strides(C, H, W) : kernels::nchw_strides(C, H, W);
  return d;
}

Tensor empty_with(const Shape& shape, Strides4 s, TensorOptions o) {
  return empty_strided(shape, {s.n, s.c, s.h, s.w}, o);
}

bool y_has_elements(const kernels::Conv2dGeom& g) { return g.N * g.O * g.OH * g.OW > 0; }

} // namespace

Tensor conv2d(const Tensor& x_in, const Tensor& weight_in, const Tensor& bias_in,
              const Conv2dParams& p) {
  const char* op = "conv2d";
  Tensor x = autocast_lower(x_in), weight = autocast_lower(weight_in);
  Tensor bias = autocast_lower(bias_in);
  check_defined(op, x, "input");
  check_not_quantized(op, x);
  check_defined(op, weight, "weight");
  TB_CHECK(x.dim() == 4, "conv2d: expected input [N, C, H, W], got {}", shape_str(x.shape()));
  TB_CHECK(weight.dim() == 4, "conv2d: expected weight [O, C/groups, kH, kW], got {}",
           shape_str(weight.shape()));
  check_same_device(op, x, weight);
  check_same_dtype(op, x, weight);
  TB_CHECK(is_floating(x.dtype()),
           "conv2d: expected float32, float64, bfloat16 or float16 tensors, got {}", x.dtype());
  if (bias.defined()) {
    check_same_device(op, x, bias);
    check_same_dtype(op, x, bias);
    TB_CHECK(bias.dim() == 1 && bias.size(0) == weight.size(0),
             "conv2d: expected bias [{}] for weight {}, got {}", weight.size(0),
             shape_str(weight.shape()), shape_str(bias.shape()));
  }
  TB_CHECK(p.stride_h >= 1 && p.stride_w >= 1 && p.dilation_h >= 1 && p.dilation_w >= 1 &&
               p.pad_h >= 0 && p.pad_w >= 0,
           "conv2d: expected stride >= 1, dilation >= 1, padding >= 0, got stride ({}, {}), "
           "dilation ({}, {}), padding ({}, {})",
           p.stride_h, p.stride_w, p.dilation_h, p.dilation_w, p.pad_h, p.pad_w);
  int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  int64_t O = weight.size(0), KH = weight.size(2), KW = weight.size(3), G = p.groups;
  TB_CHECK(G >= 1 && C % G == 0 && O % G == 0,
           "conv2d: groups = {} must divide the input channels and output channels, got input {} "
           "and weight {}",
           G, shape_str(x.shape()), shape_str(weight.shape()));
  TB_CHECK(weight.size(1) * G == C,
           "conv2d: input {} has {} channels, but weight {} with groups = {} expects {} "
           "(weight.size(1) * groups)",
           shape_str(x.shape()), C, shape_str(weight.shape()), G, weight.size(1) * G);
  TB_CHECK(KH >= 1 && KW >= 1, "conv2d: expected a non-empty kernel, got weight {}",
           shape_str(weight.shape()));
  int64_t eff_h = H + 2 * p.pad_h - p.dilation_h * (KH - 1) - 1;
  int64_t eff_w = W + 2 * p.pad_w - p.dilation_w * (KW - 1) - 1;
  TB_CHECK(eff_h >= 0 && eff_w >= 0,
           "conv2d: output size would be <= 0: input {} padded by ({}, {}) is smaller than the "
           "dilated kernel of weight {} (dilation ({}, {}))",
           shape_str(x.shape()), p.pad_h, p.pad_w, shape_str(weight.shape()), p.dilation_h,
           p.dilation_w);
  auto forward = kernel(&Conv2dKernels::forward, op, x.device(), x.dtype());

  kernels::Conv2dGeom g{N, C, H, W, O, KH, KW, eff_h / p.stride_h + 1, eff_w / p.stride_w + 1,
                        p.stride_h, p.stride_w, p.pad_h, p.pad_w, p.dilation_h, p.dilation_w, G};
  TensorOptions opts(x.dtype(), x.device());
  Strides4 xs, ys = kernels::nhwc_strides(O, g.OH, g.OW);
  Tensor xd = dense_4d(x, xs);
  Tensor wd = weight.detach().contiguous();
  Tensor bd = bias.defined() ? bias.detach().contiguous() : Tensor();
  Tensor y = empty_channels_last({N, O, g.OH, g.OW}, opts);
  if (y.numel() > 0)
    forward(x.dtype(), g, xd.raw_data(), xs, wd.raw_data(), bd.defined() ? bd.raw_data() : nullptr,
            y.raw_data(), ys);

  std::vector<Tensor> inputs{x, weight};
  if (bias.defined()) inputs.push_back(bias);
  if (auto node = make_node(op, inputs)) {
    SavedTensor sx(xd), sw(wd);
    bool need_dx = x.requires_grad(), need_dw = weight.requires_grad();
    bool with_bias = bias.defined(), need_db = with_bias && bias.requires_grad();
    node->backward = [=](const std::vector<Tensor>& grads) -> std::vector<Tensor> {
      Tensor xs_t = sx.unpack("conv2d"), ws_t = sw.unpack("conv2d");
      Tensor dx, dw, db;
      if (grads[0].defined() && y_has_elements(g)) {
        Strides4 dys;
        Tensor dy = dense_4d(grads[0].to(opts.dtype), dys);
        if (need_dx) {
          dx = empty_with(xs_t.shape(), xs, opts);
          kernel(&Conv2dKernels::backward_data, "conv2d", opts.device, opts.dtype)(
              opts.dtype, g, dy.raw_data(), dys, ws_t.raw_data(), dx.raw_data(), xs);
        }
        if (need_dw || need_db) {
          dw = empty(ws_t.shape(), opts);
          if (with_bias) db = empty({g.O}, opts);
          kernel(&Conv2dKernels::backward_weights, "conv2d", opts.device, opts.dtype)(
              opts.dtype, g, xs_t.raw_data(), xs, dy.raw_data(), dys, dw.raw_data(),
              with_bias ? db.raw_data() : nullptr);
        }
      } else {
        // Empty output (N = 0): nothing flows back, but the gradients are well defined zeros.
        if (need_dx) dx = zeros(xs_t.shape(), opts);
        if (need_dw) dw = zeros(ws_t.shape(), opts);
        if (with_bias) db = zeros({g.O}, opts);
      }
      if (!need_dw) dw = Tensor();
      if (!need_db) db = Tensor();
      if (with_bias) return {dx, dw, db};
      return {dx, dw};
    };
    attach_outputs(node, {y});
  }
  return y;
}

} // namespace tb
