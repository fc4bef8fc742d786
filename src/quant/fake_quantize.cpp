// src/quant/fake_quantize.cpp — fake-quantize modules: FakeQuantize (observer + fake-quant, as
// PyTorch's), LearnableFakeQuantize (LSQ) and PACTFakeQuantize, and the model.apply helpers.
//
// LSQ (Esser et al., "Learned Step Size Quantization", ICLR 2020): the step size s is a parameter
// trained with the straight-through estimator; its gradient is scaled by g = 1/sqrt(N Qp) (N the
// tensor's size, Qp = qmax) so that it moves as fast as the weights, and it starts at
// s = 2 mean|v| / sqrt(Qp).
// PACT (Choi et al. 2018): the activation is clipped to a learned alpha before quantization.
#include <tb/quant.h>

#include "src/ops/autocast.h"

#include <cmath>

namespace tb::quant {

namespace {

Tensor flag(bool on) { return full({1}, on ? 1.0 : 0.0, TensorOptions(kUInt8)); }
bool flag_value(const Tensor& t) { return t.data<uint8_t>()[0] != 0; }
void set_flag(const Tensor& t, bool on) {
  t.data<uint8_t>()[0] = on ? 1 : 0;
  t.bump_version();
}

// For a per-channel spec, the wrapped channel axis of x; -1 per tensor.
int64_t channel_axis(const QuantSpec& spec, const Tensor& x, const std::string& who) {
  if (!is_per_channel(spec.qscheme)) return -1;
  TB_CHECK(x.dim() > 0 && spec.ch_axis >= -x.dim() && spec.ch_axis < x.dim(),
           "{}: ch_axis {} is outside the input's dims (input {})", who, spec.ch_axis,
           shape_str(x.shape()));
  return spec.ch_axis < 0 ? spec.ch_axis + x.dim() : spec.ch_axis;
}

} // namespace

// ---- base ---------------------------------------------------------------------------------------

FakeQuantizeBase::FakeQuantizeBase() {
  register_buffer("fake_quant_enabled", flag(true));
  register_buffer("observer_enabled", flag(true));
}
void FakeQuantizeBase::enable_fake_quant(bool on) { set_flag(get("fake_quant_enabled"), on); }
void FakeQuantizeBase::enable_observer(bool on) { set_flag(get("observer_enabled"), on); }
bool FakeQuantizeBase::fake_quant_enabled() const { return flag_value(get("fake_quant_enabled")); }
bool FakeQuantizeBase::observer_enabled() const { return flag_value(get("observer_enabled")); }

void enable_observer(nn::Module& m) {
  if (auto* f = dynamic_cast<FakeQuantizeBase*>(&m)) f->enable_observer(true);
}
void disable_observer(nn::Module& m) {
  if (auto* f = dynamic_cast<FakeQuantizeBase*>(&m)) f->enable_observer(false);
}
void enable_fake_quant(nn::Module& m) {
  if (auto* f = dynamic_cast<FakeQuantizeBase*>(&m)) f->enable_fake_quant(true);
}
void disable_fake_quant(nn::Module& m) {
  if (auto* f = dynamic_cast<FakeQuantizeBase*>(&m)) f->enable_fake_quant(false);
}

// ---- FakeQuantize -------------------------------------------------------------------------------

FakeQuantize::FakeQuantize(ObserverPtr observer) {
  TB_CHECK(observer != nullptr, "FakeQuantize: needs an observer");
  register_buffer("scale", full({1}, 1.0, TensorOptions(kFloat32)), {.sized_on_first_use = true});
  register_buffer("zero_point", zeros({1}, TensorOptions(kInt32)), {.sized_on_first_use = true});
  register_module("activation_post_process", observer);
}

ObserverBase& FakeQuantize::observer() const {
  auto* o = dynamic_cast<ObserverBase*>(child("activation_post_process").get());
  TB_CHECK(o, "FakeQuantize: child activation_post_process is not an observer");
  return *o;
}

Tensor FakeQuantize::forward(const Tensor& x_in) {
  // Under autocast the observer and the fake-quant both see the float32 value (see fake_quant.cpp).
  Tensor x = autocast_fp32(x_in);
  ObserverBase& obs = observer();
  if (observer_enabled()) {
    obs(x.detach());
    QParams p = obs.calculate_qparams();
    set_tensor("scale", p.scale);
    set_tensor("zero_point", p.zero_point);
  }
  if (!fake_quant_enabled()) return x;
  TB_CHECK(obs.has_data(), "FakeQuantize: fake-quant with the observer disabled before it saw "
           "any data (no qparams yet)");
  return fake_quantize(x, qparams());
}

bool FakeQuantize::has_qparams() const { return observer().has_data(); }

QParams FakeQuantize::qparams() {
  const QuantSpec& s = observer().spec;
  QParams p;
  p.scale = get("scale").clone();
  p.zero_point = get("zero_point").clone();
  p.per_channel = is_per_channel(s.qscheme);
  p.axis = s.ch_axis;
  p.qmin = observer().quant_min;
  p.qmax = observer().quant_max;
  return p;
}

// ---- LSQ ------------------------------------------------------------------------------------------

LearnableFakeQuantize::LearnableFakeQuantize(QuantSpec s, int64_t channels) : spec(s) {
  std::tie(quant_min, quant_max) = quant_range(spec, "LearnableFakeQuantize");
  TB_CHECK(quant_max > 0, "LearnableFakeQuantize: expected qmax > 0, got {}", quant_max);
  TB_CHECK(channels >= 1, "LearnableFakeQuantize: expected channels >= 1, got {}", channels);
  int64_t n = is_per_channel(spec.qscheme) ? channels : 1;
  register_parameter("scale", full({n}, 1.0, TensorOptions(kFloat32)));
  register_parameter("zero_point", zeros({n}, TensorOptions(kFloat32)));
  register_buffer("initialized", flag(false));
  register_buffer("eps", from_vector(std::vector<float>{spec.eps}, {1}));
}

Tensor LearnableFakeQuantize::forward(const Tensor& x) {
  const std::string who = "LearnableFakeQuantize";
  int64_t axis = channel_axis(spec, x, who);
  if (!flag_value(get("initialized"))) {
    // s = 2 mean|x| / sqrt(Qp) per tensor or per channel; z = 0 (symmetric) or from min(x, 0).
    no_grad ng;
    Tensor xa = abs(x.detach().to(kFloat32));
    Tensor mean_abs, mins;
    if (axis < 0) {
      mean_abs = mean(xa).reshape({1});
      mins = min(x.detach().to(kFloat32)).reshape({1});
    } else {
      Tensor moved = xa.transpose(0, axis).contiguous().reshape({x.size(axis), -1});
      mean_abs = mean(moved, {1});
      mins = min(x.detach().to(kFloat32).transpose(0, axis).contiguous().reshape({x.size(axis), -1}),
                 1).values;
    }
    std::vector<double> m = mean_abs.to_vector(), lo = mins.to_vector();
    std::vector<float> s(m.size()), z(m.size());
    for (size_t c = 0; c < m.size(); c++) {
      s[c] = std::max((float)(2.0 * m[c] / std::sqrt((double)quant_max)), spec.eps);
      float zc = is_symmetric(spec.qscheme)
                     ? 0.0f
                     : (float)quant_min - std::nearbyint(std::min((float)lo[c], 0.0f) / s[c]);
      z[c] = std::min(std::max(zc, (float)quant_min), (float)quant_max);
    }
    set_data("scale", from_vector(s, {(int64_t)s.size()}));
    set_data("zero_point", from_vector(z, {(int64_t)z.size()}));
    set_flag(get("initialized"), true);
  }
  Tensor scale = get("scale"), zp = get("zero_point");
  {
    no_grad ng;
    scale.clamp_(spec.eps, std::numeric_limits<double>::max()); // PyTorch: scale.data.clamp_(eps)
    if (is_symmetric(spec.qscheme)) zp.zero_();
  }
  if (!fake_quant_enabled()) return x;
  double g = 1.0 / std::sqrt((double)x.numel() * (double)quant_max);
  if (axis < 0)
    return fake_quantize_learnable_per_tensor_affine(x, scale, zp, quant_min, quant_max, g);
  return fake_quantize_learnable_per_channel_affine(x, scale, zp, axis, quant_min, quant_max, g);
}

bool LearnableFakeQuantize::has_qparams() const { return flag_value(get("initialized")); }

QParams LearnableFakeQuantize::qparams() {
  // PyTorch's calculate_qparams: scale clamped to eps, zero point rounded and clamped.
  std::vector<double> s = get("scale").to_vector(), z = get("zero_point").to_vector();
  std::vector<float> sf(s.size());
  std::vector<int64_t> zi(z.size());
  for (size_t i = 0; i < s.size(); i++) {
    sf[i] = std::max((float)s[i], spec.eps);
    zi[i] = std::min(std::max((int64_t)std::nearbyint((float)z[i]), quant_min), quant_max);
  }
  QParams p;
  p.scale = from_vector(sf, {(int64_t)sf.size()});
  p.zero_point = from_vector(zi, {(int64_t)zi.size()}).to(kInt32);
  p.per_channel = is_per_channel(spec.qscheme);
  p.axis = spec.ch_axis;
  p.qmin = quant_min;
  p.qmax = quant_max;
  return p;
}

// ---- PACT -----------------------------------------------------------------------------------------

PACTFakeQuantize::PACTFakeQuantize(int bits, double init_alpha) {
  TB_CHECK(bits >= 2 && bits <= 8, "PACTFakeQuantize: bits must be in 2..8, got {}", bits);
  TB_CHECK(init_alpha > 0, "PACTFakeQuantize: expected init_alpha > 0, got {}", init_alpha);
  quant_max = (int64_t(1) << bits) - 1;
  register_parameter("alpha", full({1}, init_alpha, TensorOptions(kFloat32)));
}

Tensor PACTFakeQuantize::forward(const Tensor& x) {
  if (!fake_quant_enabled()) return x;
  return pact_fake_quantize(x, get("alpha"), quant_max);
}

QParams PACTFakeQuantize::qparams() {
  QParams p;
  p.scale = from_vector(std::vector<float>{(float)(get("alpha").item() / (double)quant_max)}, {1});
  p.zero_point = zeros({1}, TensorOptions(kInt32));
  p.qmin = 0;
  p.qmax = quant_max;
  return p;
}

} // namespace tb::quant
