// src/quant/fake_quant.cpp — the fake-quant ops, forward and backward, and integer
// (de)quantization of whole tensors.
//
// x viewed as [outer, C, inner] around the channel axis (per tensor: C = 1), s = scale[c],
// z = zero_point[c]:
//   q  = round_half_even(x * (1/s)) + z          (1/s in float32, as PyTorch)
//   y  = (clamp(q, qmin, qmax) - z) * s
//   dx = dy * [qmin <= q <= qmax]                (straight-through estimator)
// Learnable (LSQ) variant: see tb/quant.h and kernels/fake_quant.h for ds, dz.
// PACT: y = fake_quant(clamp(x, 0, a), s = a / qmax, z = 0); dx = dy [0 <= x < a],
//   da = sum dy [x >= a].
// No fused multiply-add: every product and sum is rounded on its own, as in PyTorch's kernels
// (-march=native would otherwise let GCC contract a + b * c and move results by an ulp).
//
// Under autocast the fake-quant ops are on the float32 list: a bfloat16/float16 input (a conv's
// or linear's output in a QAT model) is cast up and the result is float32, so the grid values
// (q - z)·s are exact and QAT composes with mixed precision. (PyTorch 1.13 raises "not
// implemented for 'BFloat16'" there instead.) Outside autocast a half input is refused.
#pragma GCC optimize("fp-contract=off")
#include <tb/quant.h>

#include "kernels/fake_quant.h"
#include "src/ops/autocast.h"
#include "src/ops/dispatch.h"

#include <cmath>

namespace tb::quant {

using kernels::FakeQuantKernels;

namespace {

// Checks shared by every fake-quant entry: x floating, the range, the qparams' dtypes and shapes.
void check_args(const char* op, const Tensor& x, const Tensor& scale, const Tensor& zp,
                int64_t channels, int64_t qmin, int64_t qmax, DType zp_dtype) {
  check_defined(op, x, "input");
  check_defined(op, scale, "scale");
  check_defined(op, zp, "zero_point");
  TB_CHECK(x.dtype() == kFloat32 || x.dtype() == kFloat64,
           "{}: expected a float32 or float64 input, got {} {}", op, dtype_name(x.dtype()),
           shape_str(x.shape()));
  TB_CHECK(qmin < qmax, "{}: expected qmin < qmax, got qmin {} and qmax {}", op, qmin, qmax);
  TB_CHECK(scale.dtype() == kFloat32 && zp.dtype() == zp_dtype,
           "{}: expected scale float32 and zero_point {}, got {} and {}", op, dtype_name(zp_dtype),
           dtype_name(scale.dtype()), dtype_name(zp.dtype()));
  TB_CHECK(scale.dim() == 1 && zp.dim() == 1 && scale.numel() == channels &&
               zp.numel() == channels,
           "{}: expected scale and zero_point of shape [{}], got {} and {} (input {})", op,
           channels, shape_str(scale.shape()), shape_str(zp.shape()), shape_str(x.shape()));
  TB_CHECK(x.device().is_cpu() && scale.device().is_cpu() && zp.device().is_cpu(),
           "{}: only CPU tensors for now (input on {})", op, x.device());
  for (double s : scale.to_vector())
    TB_CHECK(s > 0 && std::isfinite(s), "{}: expected every scale > 0 and finite, got {}", op, s);
  if (zp_dtype == kInt32)
    for (int64_t z : zp.to_int_vector())
      TB_CHECK(z >= qmin && z <= qmax, "{}: zero_point {} outside [qmin, qmax] = [{}, {}]", op, z,
               qmin, qmax);
}

struct Geometry {
  int64_t outer = 1, channels = 1, inner = 1;
};

// [outer, C, inner] around axis (x contiguous), or C = 1 for per-tensor (axis < 0).
Geometry geometry(const Tensor& x, int64_t axis) {
  Geometry g;
  if (axis < 0) {
    g.inner = x.numel();
    return g;
  }
  for (int64_t d = 0; d < axis; d++) g.outer *= x.size(d);
  g.channels = x.size(axis);
  for (int64_t d = axis + 1; d < x.dim(); d++) g.inner *= x.size(d);
  return g;
}

// The shared forward: y and the STE mask; backward dx = dy * mask.
Tensor fake_quant_impl(const char* op, const Tensor& x, const Tensor& scale, const Tensor& zp,
                       int64_t axis, int64_t qmin, int64_t qmax) {
  // Per tensor, any dense layout is walked flat (channels-last activations stay channels-last).
  Tensor xd = x.detach();
  if (!(axis < 0 && is_dense(xd))) xd = xd.contiguous();
  Geometry g = geometry(xd, axis);
  Tensor y = empty_strided(xd.shape(), xd.strides(), TensorOptions(x.dtype(), x.device()));
  Tensor mask = empty_strided(xd.shape(), xd.strides(), TensorOptions(kUInt8, x.device()));
  Tensor sc = scale.contiguous(), z = zp.contiguous();
  kernel(&FakeQuantKernels::forward, op, x.device(), x.dtype())(
      x.dtype(), xd.raw_data(), y.raw_data(), mask.data<uint8_t>(), sc.data<float>(),
      z.data<int32_t>(), g.outer, g.channels, g.inner, qmin, qmax);
  if (auto node = make_node(op, {x})) {
    DType dt = x.dtype();
    node->backward = [mask, dt](const std::vector<Tensor>& grads) -> std::vector<Tensor> {
      return {mul(grads[0], mask.to(dt))};
    };
    attach_outputs(node, {y});
  }
  return y;
}

int64_t wrap_axis(const char* op, int64_t axis, const Tensor& x) {
  TB_CHECK(axis >= -x.dim() && axis < x.dim() && x.dim() > 0,
           "{}: axis {} is outside the input's dims (input {}, {} dims)", op, axis,
           shape_str(x.shape()), x.dim());
  return axis < 0 ? axis + x.dim() : axis;
}

} // namespace

Tensor fake_quantize_per_tensor_affine(const Tensor& x_in, const Tensor& scale,
                                       const Tensor& zero_point, int64_t qmin, int64_t qmax) {
  const char* op = "fake_quantize_per_tensor_affine";
  Tensor x = autocast_fp32(x_in);
  check_args(op, x, scale, zero_point, 1, qmin, qmax, kInt32);
  return fake_quant_impl(op, x, scale, zero_point, -1, qmin, qmax);
}

Tensor fake_quantize_per_tensor_affine(const Tensor& x, double scale, int64_t zero_point,
                                       int64_t qmin, int64_t qmax) {
  return fake_quantize_per_tensor_affine(x, from_vector(std::vector<float>{(float)scale}, {1}),
                                         from_vector(std::vector<int64_t>{zero_point}, {1})
                                             .to(kInt32),
                                         qmin, qmax);
}

Tensor fake_quantize_per_channel_affine(const Tensor& x_in, const Tensor& scale,
                                        const Tensor& zero_point, int64_t axis, int64_t qmin,
                                        int64_t qmax) {
  const char* op = "fake_quantize_per_channel_affine";
  check_defined(op, x_in, "input");
  Tensor x = autocast_fp32(x_in);
  int64_t a = wrap_axis(op, axis, x);
  check_args(op, x, scale, zero_point, x.size(a), qmin, qmax, kInt32);
  return fake_quant_impl(op, x, scale, zero_point, a, qmin, qmax);
}

Tensor fake_quantize(const Tensor& x, const QParams& p) {
  if (p.per_channel)
    return fake_quantize_per_channel_affine(x, p.scale, p.zero_point, p.axis, p.qmin, p.qmax);
  return fake_quantize_per_tensor_affine(x, p.scale, p.zero_point, p.qmin, p.qmax);
}

// ---- learnable (LSQ) -------------------------------------------------------------------------

namespace {

// Forward with the zero point rounded half to even and clamped; backward through the LSQ kernel
// with zero points `zp_backward` (float, as PyTorch's per-tensor / per-channel backward use).
Tensor learnable_impl(const char* op, const Tensor& x, const Tensor& scale, const Tensor& zp,
                      int64_t axis, int64_t qmin, int64_t qmax, double grad_factor,
                      bool per_tensor_backward_rounding) {
  TB_CHECK(x.dtype() == kFloat32, "{}: expected a float32 input, got {} {}", op,
           dtype_name(x.dtype()), shape_str(x.shape()));
  TB_CHECK(qmin <= 0 && qmax >= 0, "{}: the range [{}, {}] must include 0", op, qmin, qmax);
  Tensor zp_forward, zp_backward;
  {
    no_grad ng;
    std::vector<double> z = zp.to_vector(), zf(z.size()), zb(z.size());
    for (size_t i = 0; i < z.size(); i++) {
      float v = (float)z[i];
      zf[i] = std::min(std::max(std::nearbyint(v), (float)qmin), (float)qmax);
      // PyTorch: per-tensor backward truncates z + 0.5 after clamping; per-channel rounds.
      zb[i] = per_tensor_backward_rounding
                  ? (double)(int64_t)std::min(std::max(v + 0.5f, (float)qmin), (float)qmax)
                  : zf[i];
    }
    zp_forward = from_vector(zf, {(int64_t)z.size()}).to(kInt32);
    zp_backward = from_vector(zb, {(int64_t)z.size()}).to(kFloat32);
  }
  Tensor y;
  {
    no_grad ng;
    y = fake_quant_impl(op, x.detach(), scale.detach(), zp_forward, axis, qmin, qmax);
  }
  if (auto node = make_node(op, {x, scale, zp})) {
    Tensor xs = x.detach().contiguous(), sc = scale.detach().contiguous();
    Shape zshape = zp.shape();
    node->backward = [xs, sc, zp_backward, axis, qmin, qmax, grad_factor, zshape,
                      op](const std::vector<Tensor>& grads) -> std::vector<Tensor> {
      Tensor dy = grads[0].to(kFloat32).contiguous();
      Geometry g = geometry(xs, axis);
      Tensor dx = empty(xs.shape(), TensorOptions(kFloat32));
      std::vector<double> ds(g.channels), dz(g.channels);
      kernel(&FakeQuantKernels::learnable_backward, op, xs.device(), kFloat32)(
          xs.data<float>(), dy.data<float>(), dx.data<float>(), ds.data(), dz.data(),
          sc.data<float>(), zp_backward.data<float>(), g.outer, g.channels, g.inner, qmin, qmax,
          (float)grad_factor);
      Tensor dscale = from_vector(ds, {g.channels}).to(kFloat32).reshape(sc.shape());
      Tensor dzp = from_vector(dz, {g.channels}).to(kFloat32).reshape(zshape);
      return {dx, dscale, dzp};
    };
    attach_outputs(node, {y});
  }
  return y;
}

} // namespace

Tensor fake_quantize_learnable_per_tensor_affine(const Tensor& x_in, const Tensor& scale,
                                                 const Tensor& zero_point, int64_t qmin,
                                                 int64_t qmax, double grad_factor) {
  const char* op = "fake_quantize_learnable_per_tensor_affine";
  Tensor x = autocast_fp32(x_in);
  check_args(op, x, scale, zero_point, 1, qmin, qmax, kFloat32);
  return learnable_impl(op, x, scale, zero_point, -1, qmin, qmax, grad_factor, true);
}

Tensor fake_quantize_learnable_per_channel_affine(const Tensor& x_in, const Tensor& scale,
                                                  const Tensor& zero_point, int64_t axis,
                                                  int64_t qmin, int64_t qmax,
                                                  double grad_factor) {
  const char* op = "fake_quantize_learnable_per_channel_affine";
  check_defined(op, x_in, "input");
  Tensor x = autocast_fp32(x_in);
  int64_t a = wrap_axis(op, axis, x);
  check_args(op, x, scale, zero_point, x.size(a), qmin, qmax, kFloat32);
  return learnable_impl(op, x, scale, zero_point, a, qmin, qmax, grad_factor, false);
}

// ---- PACT -------------------------------------------------------------------------------------

Tensor pact_fake_quantize(const Tensor& x_in, const Tensor& alpha, int64_t qmax) {
  const char* op = "pact_fake_quantize";
  check_defined(op, x_in, "input");
  Tensor x = autocast_fp32(x_in);
  check_defined(op, alpha, "alpha");
  TB_CHECK(alpha.numel() == 1 && alpha.dtype() == kFloat32,
           "{}: expected alpha float32 [1], got {} {}", op, dtype_name(alpha.dtype()),
           shape_str(alpha.shape()));
  TB_CHECK(qmax >= 1, "{}: expected qmax >= 1, got {}", op, qmax);
  double a = alpha.item();
  TB_CHECK(a > 0 && std::isfinite(a), "{}: expected alpha > 0, got {}", op, a);
  Tensor y;
  {
    no_grad ng;
    Tensor xc = clamp(x.detach(), 0.0, a);
    y = fake_quant_impl(op, xc, from_vector(std::vector<float>{(float)(a / qmax)}, {1}),
                        from_vector(std::vector<int64_t>{0}, {1}).to(kInt32), -1, 0, qmax);
  }
  if (auto node = make_node(op, {x, alpha})) {
    Tensor xs = x.detach();
    Shape ashape = alpha.shape();
    node->backward = [xs, a, ashape](const std::vector<Tensor>& grads) -> std::vector<Tensor> {
      Tensor dy = grads[0];
      DType dt = xs.dtype();
      Tensor inside = mul(ge(xs, 0.0).to(dt), lt(xs, a).to(dt));
      Tensor above = ge(xs, a).to(dt);
      return {mul(dy, inside), sum(mul(dy, above)).to(kFloat32).reshape(ashape)};
    };
    attach_outputs(node, {y});
  }
  return y;
}

// ---- integer tensors --------------------------------------------------------------------------

Tensor quantize_tensor(const Tensor& x, const QParams& p, QDType dtype) {
  const char* op = "quantize_tensor";
  check_defined(op, x, "input");
  Tensor xc = x.detach().to(kFloat32).contiguous();
  int64_t axis = p.per_channel ? wrap_axis(op, p.axis, xc) : -1;
  Geometry g = geometry(xc, axis);
  check_args(op, xc, p.scale, p.zero_point, g.channels, p.qmin, p.qmax, kInt32);
  int64_t lo = dtype == QDType::QInt8 ? -128 : 0, hi = dtype == QDType::QInt8 ? 127 : 255;
  TB_CHECK(p.qmin >= lo && p.qmax <= hi, "{}: range [{}, {}] does not fit {}", op, p.qmin, p.qmax,
           qdtype_name(dtype));
  Tensor q = empty(xc.shape(), TensorOptions(dtype == QDType::QInt8 ? kInt8 : kUInt8));
  std::vector<double> s = p.scale.to_vector();
  std::vector<int64_t> z = p.zero_point.to_int_vector();
  const float* xv = xc.data<float>();
  for (int64_t o = 0; o < g.outer; o++)
    for (int64_t c = 0; c < g.channels; c++) {
      float inv = 1.0f / (float)s[c];
      for (int64_t i = 0; i < g.inner; i++) {
        int64_t e = (o * g.channels + c) * g.inner + i;
        float r = (float)z[c] + std::nearbyint(xv[e] * inv);
        int64_t v = !(r >= (float)p.qmin) ? p.qmin : r > (float)p.qmax ? p.qmax : (int64_t)r;
        if (dtype == QDType::QInt8)
          q.data<int8_t>()[e] = (int8_t)v;
        else
          q.data<uint8_t>()[e] = (uint8_t)v;
      }
    }
  return q;
}

Tensor dequantize_tensor(const Tensor& q, const QParams& p) {
  const char* op = "dequantize_tensor";
  check_defined(op, q, "input");
  TB_CHECK(q.dtype() == kInt8 || q.dtype() == kUInt8, "{}: expected int8 or uint8, got {}", op,
           dtype_name(q.dtype()));
  Tensor qc = q.contiguous();
  int64_t axis = p.per_channel ? wrap_axis(op, p.axis, qc) : -1;
  Geometry g = geometry(qc, axis);
  Tensor y = empty(qc.shape(), TensorOptions(kFloat32));
  std::vector<double> s = p.scale.to_vector();
  std::vector<int64_t> z = p.zero_point.to_int_vector();
  TB_CHECK((int64_t)s.size() == g.channels && (int64_t)z.size() == g.channels,
           "{}: expected {} scales and zero points, got {} and {}", op, g.channels, s.size(),
           z.size());
  float* yv = y.data<float>();
  for (int64_t o = 0; o < g.outer; o++)
    for (int64_t c = 0; c < g.channels; c++)
      for (int64_t i = 0; i < g.inner; i++) {
        int64_t e = (o * g.channels + c) * g.inner + i;
        int64_t v = q.dtype() == kInt8 ? qc.data<int8_t>()[e] : qc.data<uint8_t>()[e];
        yv[e] = (float)((double)(v - z[c]) * s[c]);
      }
  return y;
}

} // namespace tb::quant
