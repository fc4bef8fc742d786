// src/quant/modules.cpp — the modules quantization puts into a model: stubs and QuantWrapper,
// fused float modules, QAT modules (weights fake-quantized; PyTorch's intrinsic QAT ConvBn2d),
// and the converted ones (int8 weights + qparams; integer kernels via src/quant/int8.cpp, or
// dequantized weights where the layer cannot run them).
//
// QAT Conv-BN (PyTorch's _ConvBnNd._forward_approximate), per output channel c:
//   s_c = gamma_c / sqrt(running_var_c + eps)
//   y   = bn(conv(x, fake_quant(W_c s_c)) / s_c + b_c)
// so the weights are quantized as they will be after folding, while bn still normalises with the
// batch statistics (training) or, once frozen, the running ones. Folding (eval):
//   W'_c = W_c s_c,  b'_c = (b_c - running_mean_c) s_c + beta_c
#include <tb/quant.h>

#include "src/quant/int8.h"

#include <cmath>

namespace tb::quant {

namespace {

Tensor apply_act(FusedAct a, const Tensor& y) {
  switch (a) {
    case FusedAct::None: return y;
    case FusedAct::ReLU: return relu(y);
    case FusedAct::ReLU6: return relu6(y);
  }
  return y;
}

Tensor channel_view(const Tensor& v, int64_t dim, int64_t ndim) {
  Shape s(ndim, 1);
  s[dim] = -1;
  return v.reshape(s);
}

} // namespace

// ---- stubs ----------------------------------------------------------------------------------------

QuantWrapper::QuantWrapper(nn::ModulePtr module) {
  TB_CHECK(module != nullptr, "QuantWrapper: needs a module");
  register_module("quant", std::make_shared<QuantStub>());
  register_module("dequant", std::make_shared<DeQuantStub>());
  register_module("module", module);
}

Tensor QuantWrapper::forward(const Tensor& x) {
  Tensor y = (*child("quant"))(x);
  y = (*child("module"))(y);
  return (*child("dequant"))(y);
}

// ---- fused float modules --------------------------------------------------------------------------

ConvReLU2d::ConvReLU2d(nn::ModulePtr conv, nn::ModulePtr act) {
  register_module("0", conv);
  register_module("1", act);
}
Tensor ConvReLU2d::forward(const Tensor& x) { return (*child("1"))((*child("0"))(x)); }

LinearReLU::LinearReLU(nn::ModulePtr linear, nn::ModulePtr act) {
  register_module("0", linear);
  register_module("1", act);
}
Tensor LinearReLU::forward(const Tensor& x) { return (*child("1"))((*child("0"))(x)); }

ConvBn2d::ConvBn2d(nn::ModulePtr conv, nn::ModulePtr bn, nn::ModulePtr act) {
  register_module("0", conv);
  register_module("1", bn);
  if (act) register_module("2", act);
}
Tensor ConvBn2d::forward(const Tensor& x) {
  Tensor y = (*child("1"))((*child("0"))(x));
  return has_child("2") ? (*child("2"))(y) : y;
}

// ---- QAT ------------------------------------------------------------------------------------------

QATConv2d::QATConv2d(const nn::Conv2d& conv, nn::ModulePtr weight_fake_quant, FusedAct act)
    : params(conv.params), act(act) {
  register_parameter("weight", conv.weight());
  if (conv.bias().defined()) register_parameter("bias", conv.bias());
  register_module("weight_fake_quant", weight_fake_quant);
}

Tensor QATConv2d::forward(const Tensor& x) {
  Tensor w = (*child("weight_fake_quant"))(get("weight"));
  return apply_act(act, conv2d(x, w, find("bias"), params));
}

QATLinear::QATLinear(const nn::Linear& linear, nn::ModulePtr weight_fake_quant, FusedAct act)
    : act(act) {
  register_parameter("weight", linear.weight());
  if (linear.bias().defined()) register_parameter("bias", linear.bias());
  register_module("weight_fake_quant", weight_fake_quant);
}

Tensor QATLinear::forward(const Tensor& x) {
  Tensor w = (*child("weight_fake_quant"))(get("weight"));
  return apply_act(act, linear(x, w, find("bias")));
}

QATConvBn2d::QATConvBn2d(const nn::Conv2d& conv, std::shared_ptr<nn::BatchNorm2d> bn,
                         nn::ModulePtr weight_fake_quant, FusedAct act)
    : params(conv.params), act(act) {
  TB_CHECK(bn && bn->affine() && bn->track_running_stats(),
           "QATConvBn2d: needs a BatchNorm2d with affine parameters and running statistics");
  TB_CHECK(bn->num_features() == conv.out_channels(),
           "QATConvBn2d: BatchNorm2d has {} features, the conv {} output channels",
           bn->num_features(), conv.out_channels());
  register_parameter("weight", conv.weight());
  if (conv.bias().defined()) register_parameter("bias", conv.bias());
  register_module("bn", bn);
  register_module("weight_fake_quant", weight_fake_quant);
  training_ = bn->is_training();
}

Tensor QATConvBn2d::forward(const Tensor& x) {
  auto& bn = dynamic_cast<nn::BatchNorm2d&>(*child("bn"));
  Tensor w = get("weight");
  Tensor running_std = sqrt(add(bn.running_var(), bn.eps));
  Tensor s = div(bn.weight(), running_std);
  Tensor scaled_w = (*child("weight_fake_quant"))(mul(w, channel_view(s, 0, w.dim())));
  Tensor y = conv2d(x, scaled_w, Tensor(), params);
  Tensor y_orig = div(y, channel_view(s, 1, 4));
  if (Tensor b = find("bias"); b.defined()) y_orig = add(y_orig, channel_view(b, 1, 4));
  return apply_act(act, bn(y_orig));
}

nn::Module& QATConvBn2d::train(bool on) {
  training_ = on;
  for (auto& [name, c] : named_children())
    if (!(freeze_bn && name == "bn")) c->train(on);
  return *this;
}

void QATConvBn2d::freeze_bn_stats() {
  freeze_bn = true;
  child("bn")->train(false);
}
void QATConvBn2d::update_bn_stats() {
  freeze_bn = false;
  child("bn")->train(training_);
}
void freeze_bn_stats(nn::Module& m) {
  if (auto* c = dynamic_cast<QATConvBn2d*>(&m)) c->freeze_bn_stats();
}
void update_bn_stats(nn::Module& m) {
  if (auto* c = dynamic_cast<QATConvBn2d*>(&m)) c->update_bn_stats();
}

std::pair<Tensor, Tensor> fuse_conv_bn_weights(const Tensor& w, const Tensor& b,
                                               const nn::BatchNormBase& bn) {
  TB_CHECK(bn.track_running_stats(), "fuse_conv_bn_weights: the BN has no running statistics");
  TB_CHECK(bn.num_features() == w.size(0),
           "fuse_conv_bn_weights: BN has {} features, the weight {} output channels ({})",
           bn.num_features(), w.size(0), shape_str(w.shape()));
  no_grad ng;
  int64_t C = w.size(0);
  Tensor gamma = bn.weight().defined() ? bn.weight() : ones({C}, TensorOptions(w.dtype()));
  Tensor beta = bn.bias().defined() ? bn.bias() : zeros({C}, TensorOptions(w.dtype()));
  Tensor bias = b.defined() ? b : zeros({C}, TensorOptions(w.dtype()));
  Tensor s = mul(rsqrt(add(bn.running_var(), bn.eps)), gamma);
  Tensor w2 = mul(w, channel_view(s, 0, w.dim())).contiguous();
  Tensor b2 = add(mul(sub(bias, bn.running_mean()), s), beta).contiguous();
  return {w2, b2};
}

// ---- converted ------------------------------------------------------------------------------------

namespace {

// Ranges of at most 16 levels (4 bits and fewer) are stored two values a byte: uint8
// [ceil(n/2)] holding q - qmin, element 2i in the low nibble and 2i+1 in the high one.
bool packs_int4(int64_t qmin, int64_t qmax) { return qmax - qmin + 1 <= 16; }

void register_weight(nn::Module& m, const Tensor& w, const QParams& wq) {
  QDType dt = wq.qmin < 0 ? QDType::QInt8 : QDType::QUInt8;
  Tensor q = quantize_tensor(w, wq, dt);
  if (packs_int4(wq.qmin, wq.qmax)) {
    std::vector<int64_t> v = q.to_int_vector();
    Tensor packed = zeros({((int64_t)v.size() + 1) / 2}, TensorOptions(kUInt8));
    uint8_t* p = packed.data<uint8_t>();
    for (size_t i = 0; i < v.size(); i++)
      p[i / 2] |= (uint8_t)((v[i] - wq.qmin) << (i % 2 ? 4 : 0));
    q = packed;
  }
  m.register_buffer("weight", q);
  m.register_buffer("weight_scale", wq.scale.clone(), {.sized_on_first_use = true});
  m.register_buffer("weight_zero_point", wq.zero_point.clone(), {.sized_on_first_use = true});
}

// The integer weight of shape `shape` (int8 for signed ranges, uint8 else), unpacked if needed.
Tensor int_weight_of(const nn::Module& m, const Shape& shape, int64_t qmin, int64_t qmax) {
  Tensor w = m.get("weight");
  if (!packs_int4(qmin, qmax)) return w;
  int64_t n = numel_of(shape);
  TB_CHECK(w.dtype() == kUInt8 && w.numel() == (n + 1) / 2,
           "{}: packed 4-bit weight should be uint8 [{}], got {} {}", m.type_name(), (n + 1) / 2,
           dtype_name(w.dtype()), shape_str(w.shape()));
  Tensor out = empty(shape, TensorOptions(qmin < 0 ? kInt8 : kUInt8));
  const uint8_t* p = w.contiguous().data<uint8_t>();
  for (int64_t i = 0; i < n; i++) {
    int64_t v = ((p[i / 2] >> (i % 2 ? 4 : 0)) & 15) + qmin;
    if (qmin < 0)
      out.data<int8_t>()[i] = (int8_t)v;
    else
      out.data<uint8_t>()[i] = (uint8_t)v;
  }
  return out;
}

QParams weight_qparams_of(const nn::Module& m, bool per_channel, int64_t qmin, int64_t qmax) {
  QParams p;
  p.scale = m.get("weight_scale");
  p.zero_point = m.get("weight_zero_point");
  p.per_channel = per_channel;
  p.axis = 0;
  p.qmin = qmin;
  p.qmax = qmax;
  return p;
}

} // namespace

QuantizedConv2d::QuantizedConv2d(const Tensor& weight_float, const Tensor& bias,
                                 Conv2dParams params, const QParams& wq, FusedAct act)
    : params(params), act(act), wqmin(wq.qmin), wqmax(wq.qmax), weight_shape(weight_float.shape()) {
  register_weight(*this, weight_float, wq);
  if (bias.defined()) register_buffer("bias", bias.detach().to(kFloat32).contiguous().clone());
}

QParams QuantizedConv2d::weight_qparams() const {
  return weight_qparams_of(*this, get("weight_scale").numel() > 1, wqmin, wqmax);
}

Tensor QuantizedConv2d::int_weight() const {
  return int_weight_of(*this, weight_shape, wqmin, wqmax);
}

void set_input_buffers(nn::Module& m, const QParams& p) {
  TB_CHECK(!p.per_channel && p.scale.numel() == 1, "{}: input qparams must be per tensor",
           m.type_name());
  if (m.has_buffer("input_scale")) {
    m.get("input_scale").copy_(p.scale.reshape({1}));
    m.get("input_zero_point").copy_(p.zero_point.reshape({1}));
    return;
  }
  m.register_buffer("input_scale", p.scale.detach().to(kFloat32).reshape({1}).clone());
  m.register_buffer("input_zero_point", p.zero_point.detach().to(kInt32).reshape({1}).clone());
}

void QuantizedConv2d::set_input_qparams(const QParams& p) { set_input_buffers(*this, p); }
void QuantizedLinear::set_input_qparams(const QParams& p) { set_input_buffers(*this, p); }

// The float path's weight: dequantized once and kept with the weight buffer it came from (its
// storage and version: a load_state_dict writing new integers in place makes a new one).
namespace {
struct FloatWeight {
  Tensor source, weight;
  uint64_t version = 0;
};
template <class Layer> Tensor cached_float_weight(Layer& m) {
  Tensor src = m.get("weight");
  auto* c = static_cast<FloatWeight*>(m.float_weight.get());
  if (c && c->source.storage() == src.storage() && c->version == src.version() &&
      c->source.offset() == src.offset())
    return c->weight;
  auto fresh = std::make_shared<FloatWeight>();
  fresh->source = src;
  fresh->version = src.version();
  fresh->weight = dequantize_tensor(m.int_weight(), m.weight_qparams());
  m.float_weight = fresh;
  return fresh->weight;
}
} // namespace

Tensor QuantizedConv2d::forward(const Tensor& x) {
  if (integer) {
    if (Tensor y = int8::conv2d_forward(*this, x); y.defined()) return y;
    off_grid_calls++; // an input no quantizer made: the float path, as the fake-quant model
  }
  return apply_act(act, conv2d(dequantize(x), cached_float_weight(*this), find("bias"), params));
}

QuantizedLinear::QuantizedLinear(const Tensor& weight_float, const Tensor& bias, const QParams& wq,
                                 FusedAct act)
    : act(act), wqmin(wq.qmin), wqmax(wq.qmax), weight_shape(weight_float.shape()) {
  register_weight(*this, weight_float, wq);
  if (bias.defined()) register_buffer("bias", bias.detach().to(kFloat32).contiguous().clone());
}

QParams QuantizedLinear::weight_qparams() const {
  return weight_qparams_of(*this, get("weight_scale").numel() > 1, wqmin, wqmax);
}

Tensor QuantizedLinear::int_weight() const {
  return int_weight_of(*this, weight_shape, wqmin, wqmax);
}

Tensor QuantizedLinear::forward(const Tensor& x) {
  if (integer) {
    if (Tensor y = int8::linear_forward(*this, x); y.defined()) return y;
    off_grid_calls++;
  }
  return apply_act(act, linear(dequantize(x), cached_float_weight(*this), find("bias")));
}

Quantize::Quantize(const QParams& p) : qmin(p.qmin), qmax(p.qmax) {
  TB_CHECK(!p.per_channel, "Quantize: activations are quantized per tensor");
  register_buffer("scale", p.scale.clone());
  register_buffer("zero_point", p.zero_point.clone());
}

Tensor Quantize::forward(const Tensor& x_in) {
  bool u8 = qmin == 0 && qmax == 255; // the grids integer layers use
  Tensor x = x_in;
  if (std::optional<kernels::QGrid> g = int8::activation_grid(x)) { // a uint8 activation
    const Tensor &s = get("scale"), &z = get("zero_point");
    bool on_grid = s.device() == kCPU && s.dtype() == kFloat32 && z.dtype() == kInt32
                       ? g->scale == s.data<float>()[0] && g->zp == z.data<int32_t>()[0]
                       : g->scale == (float)s.item() && g->zp == (int32_t)z.item();
    if (u8 && on_grid) return emit_uint8 ? x : int8::dequantize_activation(x, *g);
    x = int8::dequantize_activation(x, *g); // another grid: requantized below
  }
  if (u8 && emit_uint8) return int8::quantize_activation(x, int8::grid_of(qparams(), "Quantize"));
  // Tags are only made for [0, 255] grids: a tensor tagged with this same grid is already
  // quantized onto it (an integer layer's carrier), and quantizing again would not change it.
  if (auto g = int8::tagged_grid(x); g && u8 && !x.requires_grad() &&
                                      g->scale == get("scale").item() &&
                                      g->zp == (int32_t)get("zero_point").item())
    return x;
  Tensor y = fake_quantize_per_tensor_affine(x, get("scale"), get("zero_point"), qmin, qmax);
  if (u8) int8::tag_grid(y, qparams());
  return y;
}

QParams Quantize::qparams() const {
  QParams p;
  p.scale = get("scale");
  p.zero_point = get("zero_point");
  p.qmin = qmin;
  p.qmax = qmax;
  return p;
}

} // namespace tb::quant
