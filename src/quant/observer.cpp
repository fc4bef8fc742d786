// src/quant/observer.cpp — min/max observers (per tensor and per channel, running or moving
// average), their factory, and the base that holds the spec. Histogram-based observers are in
// histogram.cpp. Statistics are float32, updated in float32 arithmetic as PyTorch does:
//   MinMax:         min = min(min, min(x)),      max = max(max, max(x))
//   MovingAverage:  min = min + c (min(x) - min) (the first batch sets min = min(x)), same for max
// No fused multiply-add: every product and sum is rounded on its own, as in PyTorch's kernels
// (-march=native would otherwise let GCC contract a + b * c and move results by an ulp).
#pragma GCC optimize("fp-contract=off")
#include <tb/quant.h>

#include <cmath>
#include <limits>

namespace tb::quant {

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

Tensor scalar_f32(float v) { return full({}, v, TensorOptions(kFloat32)); }

float value(const Tensor& t) { return t.data<float>()[0]; }

// Writes v into a float32 scalar buffer in place (the buffer keeps its identity).
void set_value(const Tensor& t, float v) {
  t.data<float>()[0] = v;
  t.bump_version();
}

// min and max of all elements. The order does not matter, so a dense float32 tensor in any
// layout (channels-last activations) is walked as it lies, without a copy.
std::pair<float, float> minmax_all(const Tensor& x) {
  Tensor xc = x.detach().to(kFloat32);
  if (!is_dense(xc)) xc = xc.contiguous();
  const float* p = xc.data<float>();
  float mn = kInf, mx = -kInf;
  const int64_t n = xc.numel();
  for (int64_t i = 0; i < n; i++) {
    mn = std::min(mn, p[i]);
    mx = std::max(mx, p[i]);
  }
  return {mn, mx};
}

} // namespace

// ---- base ---------------------------------------------------------------------------------------

ObserverBase::ObserverBase(QuantSpec s) : spec(s) {
  std::tie(quant_min, quant_max) = quant_range(spec, "observer");
  register_buffer("eps", from_vector(std::vector<float>{spec.eps}, {1}));
}

// ---- MinMax -------------------------------------------------------------------------------------

MinMaxObserver::MinMaxObserver(QuantSpec s) : ObserverBase(s) {
  TB_CHECK(!is_per_channel(s.qscheme), "MinMaxObserver: expected a per-tensor qscheme, got {}",
           qscheme_name(s.qscheme));
  register_buffer("min_val", scalar_f32(kInf));
  register_buffer("max_val", scalar_f32(-kInf));
}

Tensor MinMaxObserver::forward(const Tensor& x) {
  if (x.numel() == 0) return x;
  no_grad ng;
  auto [mn, mx] = minmax_all(x);
  set_value(get("min_val"), std::min(mn, value(get("min_val"))));
  set_value(get("max_val"), std::max(mx, value(get("max_val"))));
  return x;
}

bool MinMaxObserver::has_data() const {
  return !(value(get("min_val")) == kInf && value(get("max_val")) == -kInf);
}

std::pair<Tensor, Tensor> MinMaxObserver::observed_range() {
  return {get("min_val").clone(), get("max_val").clone()};
}

// PyTorch's rule on the observed range; tb::Error before any data.
static QParams qparams_of(ObserverBase& o) {
  TB_CHECK(o.has_data(), "{}: calculate_qparams before any data was observed (run calibration "
           "data through the model first)", o.type_name());
  auto [mn, mx] = o.observed_range();
  return calculate_qparams(mn, mx, o.spec, o.type_name());
}

QParams MinMaxObserver::calculate_qparams() { return qparams_of(*this); }

MovingAverageMinMaxObserver::MovingAverageMinMaxObserver(QuantSpec s, double c)
    : MinMaxObserver(s), averaging_constant(c) {}

Tensor MovingAverageMinMaxObserver::forward(const Tensor& x) {
  if (x.numel() == 0) return x;
  no_grad ng;
  auto [mn, mx] = minmax_all(x);
  if (has_data()) {
    float c = (float)averaging_constant, omn = value(get("min_val")), omx = value(get("max_val"));
    mn = omn + c * (mn - omn);
    mx = omx + c * (mx - omx);
  }
  set_value(get("min_val"), mn);
  set_value(get("max_val"), mx);
  return x;
}

// ---- per channel --------------------------------------------------------------------------------

PerChannelMinMaxObserver::PerChannelMinMaxObserver(QuantSpec s) : ObserverBase(s) {
  TB_CHECK(is_per_channel(s.qscheme),
           "PerChannelMinMaxObserver: expected a per-channel qscheme, got {}",
           qscheme_name(s.qscheme));
  register_buffer("min_val", empty({0}, TensorOptions(kFloat32)), {.sized_on_first_use = true});
  register_buffer("max_val", empty({0}, TensorOptions(kFloat32)), {.sized_on_first_use = true});
}

std::pair<Tensor, Tensor> PerChannelMinMaxObserver::channel_minmax(const Tensor& x) const {
  const std::string who = type_name();
  TB_CHECK(x.dim() > 0 && spec.ch_axis >= -x.dim() && spec.ch_axis < x.dim(),
           "{}: ch_axis {} is outside the input's dims (input {})", who, spec.ch_axis,
           shape_str(x.shape()));
  int64_t axis = spec.ch_axis < 0 ? spec.ch_axis + x.dim() : spec.ch_axis;
  Tensor xc = x.detach().to(kFloat32).contiguous();
  int64_t outer = 1, C = x.size(axis), inner = 1;
  for (int64_t d = 0; d < axis; d++) outer *= x.size(d);
  for (int64_t d = axis + 1; d < x.dim(); d++) inner *= x.size(d);
  Tensor mn = full({C}, kInf, TensorOptions(kFloat32)), mx = full({C}, -kInf, TensorOptions(kFloat32));
  const float* p = xc.data<float>();
  float *pm = mn.data<float>(), *px = mx.data<float>();
  for (int64_t o = 0; o < outer; o++)
    for (int64_t c = 0; c < C; c++)
      for (int64_t i = 0; i < inner; i++) {
        float v = p[(o * C + c) * inner + i];
        pm[c] = std::min(pm[c], v);
        px[c] = std::max(px[c], v);
      }
  Tensor old = get("min_val");
  TB_CHECK(old.numel() == 0 || old.numel() == C,
           "{}: expected {} channels along axis {} (as the data seen so far), got input {}", who,
           old.numel(), axis, shape_str(x.shape()));
  return {mn, mx};
}

Tensor PerChannelMinMaxObserver::forward(const Tensor& x) {
  if (x.numel() == 0) return x;
  no_grad ng;
  auto [mn, mx] = channel_minmax(x);
  if (has_data()) {
    mn = minimum(mn, get("min_val"));
    mx = maximum(mx, get("max_val"));
  }
  set_tensor("min_val", mn);
  set_tensor("max_val", mx);
  return x;
}

bool PerChannelMinMaxObserver::has_data() const { return get("min_val").numel() > 0; }

std::pair<Tensor, Tensor> PerChannelMinMaxObserver::observed_range() {
  return {get("min_val").clone(), get("max_val").clone()};
}

QParams PerChannelMinMaxObserver::calculate_qparams() { return qparams_of(*this); }

MovingAveragePerChannelMinMaxObserver::MovingAveragePerChannelMinMaxObserver(QuantSpec s,
                                                                             double c)
    : PerChannelMinMaxObserver(s), averaging_constant(c) {}

Tensor MovingAveragePerChannelMinMaxObserver::forward(const Tensor& x) {
  if (x.numel() == 0) return x;
  no_grad ng;
  auto [mn, mx] = channel_minmax(x);
  if (has_data()) {
    Tensor omn = get("min_val").contiguous(), omx = get("max_val").contiguous();
    float c = (float)averaging_constant;
    float *pm = mn.data<float>(), *px = mx.data<float>();
    const int64_t C = mn.numel();
    for (int64_t i = 0; i < C; i++) {
      float a = omn.data<float>()[i], b = omx.data<float>()[i];
      pm[i] = a + c * (pm[i] - a);
      px[i] = b + c * (px[i] - b);
    }
  }
  set_tensor("min_val", mn);
  set_tensor("max_val", mx);
  return x;
}

// ---- factory ------------------------------------------------------------------------------------

const char* observer_kind_name(ObserverKind k) {
  switch (k) {
    case ObserverKind::MinMax: return "minmax";
    case ObserverKind::MovingAverageMinMax: return "moving_average_minmax";
    case ObserverKind::PerChannelMinMax: return "per_channel_minmax";
    case ObserverKind::MovingAveragePerChannelMinMax: return "moving_average_per_channel_minmax";
    case ObserverKind::Histogram: return "histogram";
    case ObserverKind::Percentile: return "percentile";
    case ObserverKind::Entropy: return "entropy";
  }
  return "?";
}

ObserverPtr make_observer(ObserverKind k, const QuantSpec& spec) {
  switch (k) {
    case ObserverKind::MinMax: return std::make_shared<MinMaxObserver>(spec);
    case ObserverKind::MovingAverageMinMax:
      return std::make_shared<MovingAverageMinMaxObserver>(spec);
    case ObserverKind::PerChannelMinMax: return std::make_shared<PerChannelMinMaxObserver>(spec);
    case ObserverKind::MovingAveragePerChannelMinMax:
      return std::make_shared<MovingAveragePerChannelMinMaxObserver>(spec);
    case ObserverKind::Histogram: return std::make_shared<HistogramObserver>(spec);
    case ObserverKind::Percentile: return std::make_shared<PercentileObserver>(spec);
    case ObserverKind::Entropy: return std::make_shared<EntropyObserver>(spec);
  }
  throw Error("make_observer: unknown observer kind");
}

} // namespace tb::quant
