// src/quant/histogram.cpp — histogram observers: PyTorch's HistogramObserver (running histogram,
// L2-optimal range search), Percentile (tail clipping) and Entropy (TensorRT's KL calibration).
//
// The running histogram (bins B over [min, max], float32), as PyTorch:
//  * first batch (or while min == max): min, max = the batch's; histogram = histc(x, B, min, max)
//  * later: the range grows to [cmin, cmax] = [min(min, batch), max(max, batch)], widened so the
//    old bins split evenly into an upsampled grid of width w = (max - min) / (B * U) (U the
//    upsample rate): D = ceil((cmax - cmin) / (B w)), cmax += D B w - (cmax - cmin). The new batch
//    is binned over [cmin, cmax]; the old histogram is spread evenly over U sub-bins each, placed
//    at round((min - cmin) / w), and every D sub-bins are summed into one new bin.
// L2 search (caffe2's NonlinearQuantizationParamsSearch): shrink [start, end] bin by bin from
// the side with less mass while the quantization error of the range (the L2 error of rounding
// each bin's uniform density to 2^8 levels, clipped values counted at the edge) does not grow.
// Every step is written in the same float32 / float64 operations as PyTorch 1.13 so that the
// qparams match its (tests/fixtures/quant_observers.safetensors).
// No fused multiply-add: every product and sum is rounded on its own, as in PyTorch's kernels
// (-march=native would otherwise let GCC contract a + b * c and move results by an ulp).
#pragma GCC optimize("fp-contract=off")
#include <tb/quant.h>

#include <cmath>
#include <limits>

namespace tb::quant {

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

float value(const Tensor& t) { return t.data<float>()[0]; }
void set_value(const Tensor& t, float v) {
  t.data<float>()[0] = v;
  t.bump_version();
}

// torch.histc(x, bins, lo, hi) on the CPU: edges linspace(lo, hi) in float32; an element at
// (x - lo) * B / (hi - lo) (float32, truncated) with the last edge in the last bin; elements
// outside [lo, hi] are dropped. lo == hi: the data's own range, then [v - 1, v + 1].
std::vector<float> histc(const float* x, int64_t n, int64_t bins, double lo, double hi) {
  if (lo == hi && n > 0) {
    float mn = kInf, mx = -kInf;
    for (int64_t i = 0; i < n; i++) mn = std::min(mn, x[i]), mx = std::max(mx, x[i]);
    lo = mn, hi = mx;
  }
  if (lo == hi) lo -= 1, hi += 1;
  std::vector<float> h(bins, 0.0f);
  const float left = (float)lo, right = (float)hi, width = right - left;
  for (int64_t i = 0; i < n; i++) {
    float v = x[i];
    if (!(v >= left && v <= right)) continue;
    int64_t pos = (int64_t)((v - left) * (float)bins / width);
    if (pos == bins) pos -= 1;
    h[pos] += 1.0f;
  }
  return h;
}

// Python's floor division of floats (torch.div(..., rounding_mode='floor')).
float div_floor(float a, float b) {
  if (b == 0) return a / b;
  float mod = std::fmod(a, b);
  float div = (a - mod) / b;
  if (mod != 0 && (b < 0) != (mod < 0)) div -= 1.0f;
  if (div == 0) return std::copysign(0.0f, a / b);
  float fl = std::floor(div);
  if (div - fl > 0.5f) fl += 1.0f;
  return fl;
}

// L2 error of quantizing the histogram's bins [s, e] to dst_nbins levels (PyTorch's
// _compute_quantization_error, in its float32 steps; the final sum in double).
double quantization_error(const std::vector<float>& hist, float min_val, float max_val,
                          int64_t s, int64_t e, int64_t dst_nbins) {
  int64_t bins = (int64_t)hist.size();
  double bw = ((double)max_val - (double)min_val) / (double)bins;
  double dbw = bw * (double)(e - s + 1) / (double)dst_nbins;
  if (dbw == 0.0) return 0.0;
  const float bwf = (float)bw, dbwf = (float)dbw, half = (float)(dbw / 2),
              neg_half = (float)(-dbw / 2), last = (float)(dst_nbins - 1);
  // the norm of a whole destination bin: (h^3 - (-h)^3) / 3
  const float whole = (half * half * half - neg_half * neg_half * neg_half) / 3.0f;
  double total = 0;
  for (int64_t i = 0; i < bins; i++) {
    float begin = (float)(i - s) * bwf, end = begin + bwf;
    float db = std::min(std::max(div_floor(begin, dbwf), 0.0f), last);
    float de = std::min(std::max(div_floor(end, dbwf), 0.0f), last);
    float dbc = (db + 0.5f) * dbwf;
    float density = hist[i] / bwf;
    float b1 = begin - dbc;
    float norm = 0.0f + density * ((half * half * half - b1 * b1 * b1) / 3.0f);
    norm = norm + (de - db - 1.0f) * (density * whole);
    float dec = de * dbwf + half, e3 = end - dec;
    norm = norm + density * ((e3 * e3 * e3 - neg_half * neg_half * neg_half) / 3.0f);
    total += norm;
  }
  return total;
}

} // namespace

// ---- HistogramObserver -------------------------------------------------------------------------

HistogramObserver::HistogramObserver(QuantSpec s, int64_t bins, int64_t upsample_rate)
    : ObserverBase(s), bins(bins), upsample_rate(upsample_rate) {
  TB_CHECK(!is_per_channel(s.qscheme), "{}: expected a per-tensor qscheme, got {}", "Histogram",
           qscheme_name(s.qscheme));
  TB_CHECK(bins >= 1 && upsample_rate >= 1,
           "HistogramObserver: expected bins >= 1 and upsample_rate >= 1, got {} and {}", bins,
           upsample_rate);
  register_buffer("histogram", zeros({bins}, TensorOptions(kFloat32)));
  register_buffer("min_val", full({}, kInf, TensorOptions(kFloat32)));
  register_buffer("max_val", full({}, -kInf, TensorOptions(kFloat32)));
}

Tensor HistogramObserver::forward(const Tensor& x) {
  if (x.numel() == 0) return x;
  no_grad ng;
  Tensor xc = x.detach().to(kFloat32); // values in any order: a dense layout is walked as it is
  observe(is_dense(xc) ? xc : xc.contiguous());
  return x;
}

void HistogramObserver::observe(const Tensor& xc) {
  const float* x = xc.data<float>();
  int64_t n = xc.numel();
  float bmin = kInf, bmax = -kInf;
  for (int64_t i = 0; i < n; i++) bmin = std::min(bmin, x[i]), bmax = std::max(bmax, x[i]);
  Tensor hist_t = get("histogram").contiguous();
  TB_CHECK(hist_t.numel() == bins, "{}: histogram buffer has {} bins, expected {}", type_name(),
           hist_t.numel(), bins);
  float min_val = value(get("min_val")), max_val = value(get("max_val"));
  std::vector<float> out;
  if ((min_val == kInf && max_val == -kInf) || min_val == max_val) {
    min_val = bmin, max_val = bmax;
    out = histc(x, n, bins, min_val, max_val);
  } else {
    float cmin = std::min(bmin, min_val), cmax = std::max(bmax, max_val);
    // _adjust_min_max, float32 as PyTorch
    float hbw = (max_val - min_val) / (float)(bins * upsample_rate);
    float ratio = (cmax - cmin) / ((float)bins * hbw);
    if (!(ratio < 1e7f)) {
      // The old range is a vanishing part of the new one (PyTorch would allocate bins * ratio
      // sub-bins here): all of the old mass falls into the one new bin that holds min_val.
      out = histc(x, n, bins, cmin, cmax);
      double mass = 0;
      for (int64_t i = 0; i < bins; i++) mass += hist_t.data<float>()[i];
      int64_t at = std::min<int64_t>(
          bins - 1, (int64_t)(((double)min_val - cmin) / ((double)cmax - cmin) * (double)bins));
      out[at] += (float)mass;
      get("histogram").copy_(from_vector(out, {bins}));
      set_value(get("min_val"), cmin);
      set_value(get("max_val"), cmax);
      return;
    }
    int64_t down = (int64_t)std::ceil(ratio);
    float e = (float)down * ((float)bins * hbw) - (cmax - cmin);
    cmax = cmax + e;
    int64_t start_idx = (int64_t)std::nearbyint((min_val - cmin) / hbw);
    out = histc(x, n, bins, cmin, cmax);
    const float* old = hist_t.data<float>();
    if (cmin == min_val && cmax == max_val) {
      for (int64_t i = 0; i < bins; i++) out[i] += old[i];
    } else {
      // _combine_histograms: old bin k covers sub-bins [start + k U, start + (k+1) U) of a grid of
      // B*D sub-bins, each holding old[k] (the sub-bins beyond the grid are dropped); new bin i
      // gets the mass of sub-bins [i D, (i+1) D) / U. cumsum in float64, the shifted copy in
      // float32, as PyTorch.
      const int64_t U = upsample_rate, total_sub = bins * down;
      std::vector<double> pre(bins + 1, 0.0); // pre[k] = mass of old bins [0, k)
      for (int64_t k = 0; k < bins; k++) pre[k + 1] = pre[k] + (double)old[k] * (double)U;
      auto cumsum_to = [&](int64_t p) { // sum of sub-bins [0, p] in float64
        int64_t hi = std::min(p + 1, std::min(start_idx + bins * U, total_sub)) - start_idx;
        if (hi <= 0) return 0.0;
        int64_t full_blocks = hi / U;
        double acc = pre[full_blocks];
        if (full_blocks < bins) acc += (double)old[full_blocks] * (double)(hi - full_blocks * U);
        return acc;
      };
      double prev = 0;
      for (int64_t i = 0; i < bins; i++) {
        double integral = cumsum_to(i * down + down - 1);
        float shifted = i == 0 ? 0.0f : (float)prev;
        out[i] = out[i] + (float)((integral - (double)shifted) / (double)U);
        prev = integral;
      }
    }
    min_val = cmin, max_val = cmax;
  }
  Tensor h = from_vector(out, {bins});
  get("histogram").copy_(h);
  set_value(get("min_val"), min_val);
  set_value(get("max_val"), max_val);
}

bool HistogramObserver::has_data() const {
  return !(value(get("min_val")) == kInf && value(get("max_val")) == -kInf);
}

std::pair<Tensor, Tensor> HistogramObserver::search_range() {
  // _non_linear_param_search
  Tensor ht = get("histogram").contiguous();
  std::vector<float> hist(ht.data<float>(), ht.data<float>() + bins);
  float min_val = value(get("min_val")), max_val = value(get("max_val"));
  float bin_width = (max_val - min_val) / (float)bins;
  double total_d = 0;
  for (float v : hist) total_d += v;
  double total = (float)total_d;
  std::vector<float> csum(bins);
  double acc = 0;
  for (int64_t i = 0; i < bins; i++) acc += hist[i], csum[i] = (float)acc;
  const int64_t dst_nbins = 256; // 2 ** iinfo(quint8 / qint8).bits, whatever quant_min/max are
  const double stepsize = 1e-5;
  double alpha = 0.0, beta = 1.0, norm_min = std::numeric_limits<double>::infinity();
  int64_t start_bin = 0, end_bin = bins - 1;
  while (alpha < beta) {
    double next_alpha = alpha + stepsize, next_beta = beta - stepsize;
    int64_t l = start_bin, r = end_bin;
    while (l < end_bin && csum[l] < (float)(next_alpha * total)) l++;
    while (r > start_bin && csum[r] > (float)(next_beta * total)) r--;
    int64_t next_start = start_bin, next_end = end_bin;
    if (l - start_bin > end_bin - r) {
      next_start = l;
      alpha = next_alpha;
    } else {
      next_end = r;
      beta = next_beta;
    }
    if (next_start == start_bin && next_end == end_bin) continue;
    double norm = quantization_error(hist, min_val, max_val, next_start, next_end, dst_nbins);
    if (norm > norm_min) break;
    norm_min = norm;
    start_bin = next_start;
    end_bin = next_end;
  }
  float new_min = min_val + bin_width * (float)start_bin;
  float new_max = min_val + bin_width * (float)(end_bin + 1);
  return {full({}, new_min, TensorOptions(kFloat32)), full({}, new_max, TensorOptions(kFloat32))};
}

std::pair<Tensor, Tensor> HistogramObserver::observed_range() {
  TB_CHECK(has_data(), "{}: no data observed yet", type_name());
  return search_range();
}

QParams HistogramObserver::calculate_qparams() {
  TB_CHECK(has_data(), "{}: calculate_qparams before any data was observed (run calibration "
           "data through the model first)", type_name());
  auto [mn, mx] = search_range();
  return quant::calculate_qparams(mn, mx, spec, type_name());
}

// ---- PercentileObserver ------------------------------------------------------------------------

PercentileObserver::PercentileObserver(QuantSpec s, double percentile, int64_t bins)
    : HistogramObserver(s, bins), percentile(percentile) {
  TB_CHECK(percentile > 50 && percentile <= 100,
           "PercentileObserver: expected a percentile in (50, 100], got {}", percentile);
}

std::pair<Tensor, Tensor> PercentileObserver::search_range() {
  Tensor ht = get("histogram").contiguous();
  const float* h = ht.data<float>();
  float min_val = value(get("min_val")), max_val = value(get("max_val"));
  double bw = ((double)max_val - (double)min_val) / (double)bins, total = 0;
  for (int64_t i = 0; i < bins; i++) total += h[i];
  double p = percentile / 100.0;
  // The value below which a fraction f of the mass lies (uniform inside a bin).
  auto quantile = [&](double f) {
    double target = f * total, acc = 0;
    for (int64_t i = 0; i < bins; i++) {
      if (h[i] > 0 && acc + h[i] >= target)
        return (double)min_val + bw * ((double)i + (target - acc) / h[i]);
      acc += h[i];
    }
    return (double)max_val;
  };
  double lo = std::max((double)min_val, quantile(1.0 - p));
  double hi = std::min((double)max_val, quantile(p));
  if (is_symmetric(spec.qscheme)) {
    double m = std::max(std::abs(lo), std::abs(hi));
    lo = std::max((double)min_val, -m), hi = std::min((double)max_val, m);
  }
  return {full({}, (float)lo, TensorOptions(kFloat32)), full({}, (float)hi, TensorOptions(kFloat32))};
}

// ---- EntropyObserver ---------------------------------------------------------------------------

namespace {

// TensorRT's threshold search on histogram h (bins over [edge, edge + B bw)): the number of bins i
// (nq <= i <= B) whose range [edge, edge + i bw) loses least information when quantized to nq
// levels: P = h[0, i) with the outliers h[i, B) added to its last bin, Q = h[0, i) merged into nq
// groups and each group's mass spread evenly over its non-empty bins; i = argmin KL(P || Q), ties
// to the widest. h[0] takes h[1]'s count first: the spike of exact zeros (post-ReLU) or of the
// minimum (a background colour) would otherwise decide alone (as NVIDIA's pytorch-quantization).
int64_t kl_threshold(std::vector<double> h, int64_t nq) {
  const int64_t B = (int64_t)h.size();
  if (B > 1) h[0] = h[1];
  std::vector<double> tail(B + 1, 0.0); // tail[i] = sum of h[i, B)
  for (int64_t j = B - 1; j >= 0; j--) tail[j] = tail[j + 1] + h[j];
  int64_t best_i = B;
  double best_kl = std::numeric_limits<double>::infinity();
  std::vector<double> Q(B);
  for (int64_t i = std::min(nq, B); i <= B; i++) {
    for (int64_t g = 0; g < nq; g++) {
      int64_t j0 = g * i / nq, j1 = (g + 1) * i / nq;
      double mass = 0;
      int64_t nonempty = 0;
      for (int64_t j = j0; j < j1; j++) mass += h[j], nonempty += h[j] > 0;
      for (int64_t j = j0; j < j1; j++) Q[j] = h[j] > 0 ? mass / (double)nonempty : 0.0;
    }
    double psum = tail[0], qsum = tail[0] - tail[i];
    if (psum <= 0 || qsum <= 0) continue;
    double kl = 0;
    for (int64_t j = 0; j < i; j++) {
      double pj = h[j] + (j == i - 1 ? tail[i] : 0.0);
      if (pj <= 0) continue;
      if (Q[j] <= 0) {
        kl = std::numeric_limits<double>::infinity();
        break;
      }
      kl += pj / psum * std::log((pj / psum) / (Q[j] / qsum));
    }
    if (kl <= best_kl) best_kl = kl, best_i = i;
  }
  return best_i;
}

} // namespace

EntropyObserver::EntropyObserver(QuantSpec s, int64_t bins) : HistogramObserver(s, bins) {
  register_buffer("data_min", full({}, kInf, TensorOptions(kFloat32)));
}

Tensor EntropyObserver::forward(const Tensor& x) {
  if (x.numel() == 0) return x;
  no_grad ng;
  Tensor xc = x.detach().to(kFloat32);
  if (!is_dense(xc)) xc = xc.contiguous();
  const int64_t n = xc.numel();
  const float* p = xc.data<float>();
  float dmin = value(get("data_min"));
  for (int64_t i = 0; i < n; i++) dmin = std::min(dmin, p[i]);
  set_value(get("data_min"), dmin);
  if (!is_symmetric(spec.qscheme)) {
    observe(xc); // affine: the signed histogram; the search clips its upper tail
    return x;
  }
  // symmetric (TensorRT): the histogram of |x| over [0, max |x|]; a 0 is appended so that its
  // range starts at 0.
  Tensor a = empty({n + 1}, TensorOptions(kFloat32));
  float* q = a.data<float>();
  for (int64_t i = 0; i < n; i++) q[i] = std::abs(p[i]);
  q[n] = 0.0f;
  observe(a);
  return x;
}

std::pair<Tensor, Tensor> EntropyObserver::search_range() {
  Tensor ht = get("histogram").contiguous();
  std::vector<double> h(ht.data<float>(), ht.data<float>() + bins);
  float lo = value(get("min_val")), hi = value(get("max_val")), dmin = value(get("data_min"));
  double bw = ((double)hi - (double)lo) / (double)bins;
  int64_t levels = quant_max - quant_min + 1;
  if (!is_symmetric(spec.qscheme)) {
    // affine: every level covers [min, min + T]; only the upper tail is clipped
    double T = bw * (double)kl_threshold(h, levels);
    return {full({}, lo, TensorOptions(kFloat32)),
            full({}, (float)((double)lo + T), TensorOptions(kFloat32))};
  }
  // symmetric: the positive half of the levels covers [0, T] (all of them for data >= 0)
  double T = bw * (double)kl_threshold(h, dmin >= 0 ? levels : levels / 2);
  double new_lo = dmin >= 0 ? 0.0 : std::max((double)dmin, -T);
  return {full({}, (float)new_lo, TensorOptions(kFloat32)), full({}, (float)T, TensorOptions(kFloat32))};
}

} // namespace tb::quant
