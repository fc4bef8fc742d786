// src/quant/qparams.cpp — quantization ranges and PyTorch's scale / zero-point rule.
//
// Range (PyTorch's calculate_qmin_qmax): bits b give [0, 2^b - 1] (quint8) or
// [-2^(b-1), 2^(b-1) - 1] (qint8); reduce_range halves it ([0, 127], [-64, 63] at 8 bits, or
// floor(qmin/2), floor(qmax/2) for a customized range).
// qparams (UniformQuantizationObserverBase._calculate_qparams), all in float32:
//   lo = min(min, 0), hi = max(max, 0)
//   affine:    scale = max((hi - lo) / float(qmax - qmin), eps)
//              zp    = clamp(qmin - int(round_half_even(lo / scale)), qmin, qmax)
//   symmetric: scale = max(max(-lo, hi) / (float(qmax - qmin) / 2), eps)
//              zp    = 0 for qint8; for quint8 128, or (qmin + qmax) / 2 for a customized range
// No fused multiply-add: every product and sum is rounded on its own, as in PyTorch's kernels
// (-march=native would otherwise let GCC contract a + b * c and move results by an ulp).
#pragma GCC optimize("fp-contract=off")
#include <tb/quant.h>

#include <cmath>

namespace tb::quant {

bool is_per_channel(QScheme s) {
  return s == QScheme::PerChannelAffine || s == QScheme::PerChannelSymmetric;
}
bool is_symmetric(QScheme s) {
  return s == QScheme::PerTensorSymmetric || s == QScheme::PerChannelSymmetric;
}
const char* qscheme_name(QScheme s) {
  switch (s) {
    case QScheme::PerTensorAffine: return "per_tensor_affine";
    case QScheme::PerTensorSymmetric: return "per_tensor_symmetric";
    case QScheme::PerChannelAffine: return "per_channel_affine";
    case QScheme::PerChannelSymmetric: return "per_channel_symmetric";
  }
  return "?";
}
const char* qdtype_name(QDType t) { return t == QDType::QInt8 ? "qint8" : "quint8"; }

bool has_customized_qrange(const QuantSpec& s) {
  return (s.quant_min && s.quant_max) || s.bits != 8;
}

static int64_t floor_div2(int64_t v) { return v >= 0 ? v / 2 : -((-v + 1) / 2); }

std::pair<int64_t, int64_t> quant_range(const QuantSpec& s, const std::string& who) {
  bool is_signed = s.dtype == QDType::QInt8;
  int64_t lo = is_signed ? -128 : 0, hi = is_signed ? 127 : 255;
  TB_CHECK(s.quant_min.has_value() == s.quant_max.has_value(),
           "{}: quant_min and quant_max must be given together", who);
  int64_t qmin, qmax;
  if (s.quant_min) {
    qmin = *s.quant_min;
    qmax = *s.quant_max;
  } else {
    TB_CHECK(s.bits >= 2 && s.bits <= 8, "{}: bits must be in 2..8, got {}", who, s.bits);
    qmin = is_signed ? -(int64_t(1) << (s.bits - 1)) : 0;
    qmax = is_signed ? (int64_t(1) << (s.bits - 1)) - 1 : (int64_t(1) << s.bits) - 1;
  }
  TB_CHECK(qmin < qmax, "{}: expected qmin < qmax, got qmin {} >= qmax {}", who, qmin, qmax);
  TB_CHECK(qmin <= 0 && qmax >= 0, "{}: the range [{}, {}] must include 0", who, qmin, qmax);
  TB_CHECK(qmin >= lo && qmax <= hi, "{}: the range [{}, {}] does not fit {} ([{}, {}])", who,
           qmin, qmax, qdtype_name(s.dtype), lo, hi);
  if (s.reduce_range) {
    TB_CHECK(!(is_symmetric(s.qscheme) && !is_signed),
             "{}: cannot reduce the range of symmetric quint8 (as PyTorch)", who);
    if (has_customized_qrange(s)) return {floor_div2(qmin), floor_div2(qmax)};
    return is_signed ? std::pair<int64_t, int64_t>{-64, 63} : std::pair<int64_t, int64_t>{0, 127};
  }
  return {qmin, qmax};
}

QParams calculate_qparams(const Tensor& min_val, const Tensor& max_val, const QuantSpec& s,
                          const std::string& who) {
  auto [qmin, qmax] = quant_range(s, who);
  std::vector<double> mins = min_val.to_vector(), maxs = max_val.to_vector();
  TB_CHECK(mins.size() == maxs.size() && !mins.empty(),
           "{}: expected min and max of the same non-empty shape, got {} and {}", who,
           shape_str(min_val.shape()), shape_str(max_val.shape()));
  size_t n = mins.size();
  std::vector<float> scale(n);
  std::vector<int64_t> zp(n);
  const float eps = s.eps;
  for (size_t c = 0; c < n; c++) {
    float mn = (float)mins[c], mx = (float)maxs[c];
    TB_CHECK(mn <= mx, "{}: min {} should not be above max {} (channel {})", who, mn, mx, c);
    float lo = std::min(mn, 0.0f), hi = std::max(mx, 0.0f);
    if (is_symmetric(s.qscheme)) {
      float m = std::max(-lo, hi);
      scale[c] = std::max(m / ((float)(qmax - qmin) / 2.0f), eps);
      zp[c] = 0;
      if (s.dtype == QDType::QUInt8) zp[c] = has_customized_qrange(s) ? (qmin + qmax) / 2 : 128;
    } else {
      scale[c] = std::max((hi - lo) / (float)(qmax - qmin), eps);
      int64_t z = qmin - (int64_t)std::nearbyint(lo / scale[c]);
      zp[c] = std::min(std::max(z, qmin), qmax);
    }
  }
  QParams p;
  p.scale = from_vector(scale, {(int64_t)n});
  p.zero_point = from_vector(zp, {(int64_t)n}).to(kInt32);
  p.per_channel = is_per_channel(s.qscheme);
  p.axis = s.ch_axis;
  p.qmin = qmin;
  p.qmax = qmax;
  return p;
}

} // namespace tb::quant
