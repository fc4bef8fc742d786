// src/quant/int8_modules.cpp — the integer joins, activations and pools that convert puts between
// integer layers (tb/quant.h), DeQuantStub, and tb::quant::dequantize. Each tries the integer
// kernel (src/quant/int8.cpp) and otherwise runs its float op on dequantized inputs, exactly what
// the fake-quant model computes.
#include <tb/quant.h>

#include "src/quant/int8.h"

namespace tb::quant {

namespace {

std::vector<Tensor> dequantized(const std::vector<Tensor>& xs) {
  std::vector<Tensor> out;
  for (const Tensor& x : xs) out.push_back(dequantize(x));
  return out;
}

// A value-preserving module's result: the uint8 activation when its consumers take one, else the
// float carrier.
Tensor emit(const Tensor& y, bool emit_uint8) { return emit_uint8 ? y : dequantize(y); }

} // namespace

bool is_quantized_activation(const Tensor& x) { return int8::activation_grid(x).has_value(); }

Tensor dequantize(const Tensor& x) {
  std::optional<kernels::QGrid> g = int8::activation_grid(x);
  return g ? int8::dequantize_activation(x, *g) : x;
}

Tensor DeQuantStub::forward(const Tensor& x) { return dequantize(x); }

// A fused add (ConvAddFusion): the conv already returned conv + residual; it is handed on when
// this call's inputs are that result and that residual (else the forward is not the traced one:
// the sum cannot be undone, so it is an error, never a second addition).
Tensor QuantizedAdd::forward_list(const std::vector<Tensor>& xs) {
  if (ConvAddFusion* f = fused_conv.f.get(); f && f->result.defined()) {
    Tensor y = f->result, r = f->residual_used;
    f->result = f->residual_used = Tensor();
    int k = f->conv_input;
    TB_CHECK(xs.size() == 2 && xs[k].is_same(y) && xs[1 - k].is_same(r),
             "QuantizedAdd: its conv already added the residual (an add fused into the conv, "
             "ConvertOptions::fuse_add), but this call's inputs are not that conv's output and "
             "that residual: the forward differs from the one convert traced (convert with "
             "fuse_add = false for such a model)");
    return y;
  }
  if (Tensor y = int8::add_forward(*this, xs); y.defined()) return y;
  return nn::Add::forward_list(dequantized(xs));
}

Tensor QuantizedMul::forward_list(const std::vector<Tensor>& xs) {
  if (Tensor y = int8::mul_forward(*this, xs); y.defined()) return y;
  return nn::Mul::forward_list(dequantized(xs));
}

Tensor QuantizedCat::forward_list(const std::vector<Tensor>& xs) {
  if (Tensor y = int8::cat_forward(*this, xs, dim); y.defined()) return y;
  return nn::Cat::forward_list(dequantized(xs));
}

Tensor QuantizedReLU::forward(const Tensor& x) {
  if (Tensor y = int8::activation_forward(*this, kernels::QActivation::ReLU, x); y.defined())
    return y;
  return nn::ReLU::forward(dequantize(x));
}

Tensor QuantizedReLU6::forward(const Tensor& x) {
  if (Tensor y = int8::activation_forward(*this, kernels::QActivation::ReLU6, x); y.defined())
    return y;
  return nn::ReLU6::forward(dequantize(x));
}

Tensor QuantizedHardswish::forward(const Tensor& x) {
  if (Tensor y = int8::activation_forward(*this, kernels::QActivation::Hardswish, x); y.defined())
    return y;
  return nn::Hardswish::forward(dequantize(x));
}

Tensor QuantizedSigmoid::forward(const Tensor& x) {
  if (Tensor y = int8::activation_forward(*this, kernels::QActivation::Sigmoid, x); y.defined())
    return y;
  return nn::Sigmoid::forward(dequantize(x));
}

Tensor QuantizedSiLU::forward(const Tensor& x) {
  if (Tensor y = int8::activation_forward(*this, kernels::QActivation::SiLU, x); y.defined())
    return y;
  return nn::SiLU::forward(dequantize(x));
}

Tensor QuantizedHardsigmoid::forward(const Tensor& x) {
  if (Tensor y = int8::activation_forward(*this, kernels::QActivation::Hardsigmoid, x);
      y.defined())
    return y;
  return nn::Hardsigmoid::forward(dequantize(x));
}

Tensor QuantizedChannelShuffle::forward(const Tensor& x) {
  if (Tensor y = int8::channel_shuffle_forward(x, groups); y.defined()) return emit(y, emit_uint8);
  return nn::ChannelShuffle::forward(dequantize(x));
}

Tensor QuantizedMaxPool2d::forward(const Tensor& x) {
  if (Tensor y = int8::max_pool2d_forward(x, params); y.defined()) return emit(y, emit_uint8);
  return nn::MaxPool2d::forward(dequantize(x));
}

Tensor QuantizedAvgPool2d::forward(const Tensor& x) {
  if (Tensor y = int8::avg_pool2d_forward(*this, x, params); y.defined()) return y;
  return nn::AvgPool2d::forward(dequantize(x));
}

Tensor QuantizedAdaptiveAvgPool2d::forward(const Tensor& x) {
  if (Tensor y = int8::adaptive_avg_pool2d_forward(*this, x, output_size.h, output_size.w);
      y.defined())
    return y;
  return nn::AdaptiveAvgPool2d::forward(dequantize(x));
}

// Flatten is a view when the memory order allows (the grid comes with the storage), else a copy
// in the logical order (channels-last [N, C, H, W] -> [N, C*H*W]), which gets the same grid.
Tensor QuantizedFlatten::forward(const Tensor& x) {
  std::optional<kernels::QGrid> g = int8::activation_grid(x);
  if (!g) return nn::Flatten::forward(x);
  if (x.dim() == 4 && start_dim == 1 && (end_dim == -1 || end_dim == 3) && x.size(2) * x.size(3) > 1)
    return emit(int8::flatten_nhwc(x, *g), emit_uint8); // the CNN's conv -> fc
  Tensor y = flatten(x, start_dim, end_dim);
  if (!int8::activation_grid(y)) {
    Tensor d = int8::new_activation(y.shape(), *g);
    d.copy_(y);
    y = d;
  }
  return emit(y, emit_uint8);
}

} // namespace tb::quant
