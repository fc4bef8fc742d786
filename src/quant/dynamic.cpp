// src/quant/dynamic.cpp — dynamic quantization (PyTorch's quantize_dynamic): int8 weights ahead
// of time, uint8 activations quantized per call from their own range, int8 GEMM with int32
// accumulation, float output. The numerics are PyTorch 1.13's x86 dynamic linear (qparams from
// ChooseQuantizationParams with reduce_range; see tb/quant.h), checked against its outputs by
// tests/test_lstm.cpp (suite dynamic_quant).
//
// The GEMM has two kernels with one signature, chosen by tb::cpu_kernels():
//   gemm_u8s8_ref:    plain loops, acc[m][n] = sum_k (x[m][k] - zp) * w[n][k]
//   gemm_u8s8_onednn: oneDNN's u8 x s8 -> s32 matmul with the zero point as a runtime attribute
// Both give the same int32 sums exactly; the float epilogue is shared.
#include <tb/quant.h>

#include "kernels/cpu/onednn_common.h"

#include <algorithm>
#include <cmath>

namespace tb::quant {

namespace {

namespace on = tb::kernels::onednn;

// ---- the integer GEMM ---------------------------------------------------------------------------
// x uint8 [M, K], w int8 [N, K] (row-major), acc int32 [M, N].

void gemm_u8s8_ref(const uint8_t* x, int32_t zp, const int8_t* w, int32_t* acc, int64_t M,
                   int64_t N, int64_t K) {
  for (int64_t m = 0; m < M; m++)
    for (int64_t n = 0; n < N; n++) {
      int32_t s = 0;
      for (int64_t k = 0; k < K; k++) s += ((int32_t)x[m * K + k] - zp) * (int32_t)w[n * K + k];
      acc[m * N + n] = s;
    }
}

struct MatmulEntry {
  dnnl::matmul prim;
  dnnl::memory::desc src, wei, dst, scratchpad;
};

void gemm_u8s8_onednn(const uint8_t* x, int32_t zp, const int8_t* w, int32_t* acc, int64_t M,
                      int64_t N, int64_t K) {
  using dnnl::memory;
  static on::Cache<MatmulEntry> cache;
  const MatmulEntry& e = cache.get({M, N, K, on::num_threads()}, [&] {
    memory::desc src({M, K}, memory::data_type::u8, memory::format_tag::ab);
    memory::desc wei({K, N}, memory::data_type::s8, memory::format_tag::ba); // w is [N, K]
    memory::desc dst({M, N}, memory::data_type::s32, memory::format_tag::ab);
    dnnl::primitive_attr attr = on::scratchpad_attr();
    attr.set_zero_points(DNNL_ARG_SRC, 0, {DNNL_RUNTIME_S32_VAL});
    dnnl::matmul::desc d(src, wei, dst);
    dnnl::matmul::primitive_desc pd(d, attr, on::engine());
    on::count_primitive_created();
    return MatmulEntry{dnnl::matmul(pd), src, wei, dst, pd.scratchpad_desc()};
  });
  int32_t zp_value = zp;
  memory zp_mem({{1}, memory::data_type::s32, memory::format_tag::x}, on::engine(), &zp_value);
  on::execute(e.prim, e.scratchpad,
              {{DNNL_ARG_SRC, memory(e.src, on::engine(), const_cast<uint8_t*>(x))},
               {DNNL_ARG_WEIGHTS, memory(e.wei, on::engine(), const_cast<int8_t*>(w))},
               {DNNL_ARG_DST, memory(e.dst, on::engine(), acc)},
               {DNNL_ARG_ATTR_ZERO_POINTS | DNNL_ARG_SRC, zp_mem}});
}

// Per-tensor symmetric or per-channel symmetric int8 weights, through the static flow's qparams
// (PyTorch's MinMaxObserver / PerChannelMinMaxObserver with qint8, per_tensor_symmetric /
// per_channel_symmetric: scale = max|w| / 127.5).
std::pair<Tensor, Tensor> quantize_weight(const Tensor& w_in, bool per_channel, const char* who) {
  TB_CHECK(w_in.dtype() == kFloat32 && w_in.device().is_cpu(),
           "{}: dynamic quantization needs float32 CPU weights, got {} on {}", who, w_in.dtype(),
           w_in.device());
  no_grad ng;
  Tensor w = w_in.detach().contiguous();
  QuantSpec spec{.dtype = QDType::QInt8,
                 .qscheme = per_channel ? QScheme::PerChannelSymmetric : QScheme::PerTensorSymmetric};
  Tensor lo, hi;
  if (per_channel) {
    lo = min(w, 1).values, hi = max(w, 1).values;
  } else {
    lo = min(w).reshape({1}), hi = max(w).reshape({1});
  }
  QParams p = calculate_qparams(lo, hi, spec, who);
  p.axis = 0;
  return {quantize_tensor(w, p, QDType::QInt8), p.scale};
}

} // namespace

// ---- activation qparams: PyTorch's quant_utils::ChooseQuantizationParams ----------------------

DynamicQParams choose_dynamic_qparams(float min, float max, bool reduce_range) {
  TB_CHECK(std::isfinite(min) && std::isfinite(max) && min <= max,
           "dynamic quantization: the input's range [{}, {}] is not finite (NaN or inf in the "
           "input?)", min, max);
  int32_t qmin = 0, qmax = 255;
  if (reduce_range) qmin /= 2, qmax /= 2;
  min = std::min(min, 0.0f);
  max = std::max(max, 0.0f);
  double scale = ((double)max - min) / (qmax - qmin);
  if ((float)scale == 0.0f || std::isinf(1.0f / (float)scale)) scale = 0.1;
  const double kSmallScale = 6.1e-5; // PyTorch's SMALL_SCALE_THRESHOLD: keeps 1/scale finite
  if (scale < kSmallScale) {
    double org = scale;
    scale = kSmallScale;
    if (min == 0.0f) max = (float)(kSmallScale * (qmax - qmin));
    else if (max == 0.0f) min = (float)(-kSmallScale * (qmax - qmin));
    else min = (float)(min * (kSmallScale / org)), max = (float)(max * (kSmallScale / org));
  }
  float s = (float)scale;
  double zp_from_min = qmin - min / (double)s, zp_from_max = qmax - max / (double)s;
  double err_min = std::abs((double)qmin) - std::abs(min / (double)s);
  double err_max = std::abs((double)qmax) - std::abs(max / (double)s);
  double zp0 = err_min < err_max ? zp_from_min : zp_from_max;
  int32_t zp = zp0 < qmin ? qmin : zp0 > qmax ? qmax : (int32_t)std::nearbyint(zp0);
  return {s, zp};
}

// ---- the dynamic linear -------------------------------------------------------------------------

Tensor dynamic_linear(const Tensor& x_in, const Tensor& wq, const Tensor& wscale,
                      const Tensor& bias, bool reduce_range) {
  const char* op = "dynamic_linear";
  check_defined(op, x_in, "input");
  TB_CHECK(wq.dtype() == kInt8 && wq.dim() == 2, "{}: weight must be int8 [N, K], got {} {}", op,
           wq.dtype(), shape_str(wq.shape()));
  int64_t N = wq.size(0), K = wq.size(1);
  TB_CHECK(x_in.dim() >= 1 && x_in.size(-1) == K, "{}: expected input [..., {}], got {}", op, K,
           shape_str(x_in.shape()));
  TB_CHECK(x_in.dtype() == kFloat32 && x_in.device().is_cpu(),
           "{}: expected a float32 CPU input, got {} on {}", op, x_in.dtype(), x_in.device());
  TB_CHECK(wscale.dtype() == kFloat32 && (wscale.numel() == N || wscale.numel() == 1),
           "{}: weight_scale must be float32 [{}] or [1], got {} {}", op, N, wscale.dtype(),
           shape_str(wscale.shape()));
  TB_CHECK(!bias.defined() || (bias.dtype() == kFloat32 && bias.numel() == N),
           "{}: bias must be float32 [{}], got {} {}", op, N, bias.dtype(),
           shape_str(bias.shape()));
  TB_CHECK(!(is_grad_enabled() && x_in.requires_grad()),
           "{}: dynamic quantized layers are inference-only, but the input requires grad (run "
           "under tb::no_grad)", op);
  Shape out_shape = x_in.shape();
  out_shape.back() = N;
  Tensor y = empty(out_shape, kFloat32);
  int64_t M = K > 0 ? x_in.numel() / K : 0;
  if (M == 0) return y;
  Tensor x = x_in.contiguous();
  const float* xp = x.data<float>();
  float lo = xp[0], hi = xp[0];
  bool nan = false;
  for (int64_t i = 0; i < M * K; i++) {
    lo = std::min(lo, xp[i]), hi = std::max(hi, xp[i]);
    nan |= std::isnan(xp[i]);
  }
  if (nan) lo = NAN; // choose_dynamic_qparams names it
  DynamicQParams q = choose_dynamic_qparams(lo, hi, reduce_range);

  // xq = clamp(nearbyint(x * (1/scale)) + zp, 0, 255)
  Tensor xq = empty({M, K}, kUInt8);
  uint8_t* qp = xq.data<uint8_t>();
  const float inv = 1.0f / q.scale;
  for (int64_t i = 0; i < M * K; i++) {
    float v = std::nearbyint(xp[i] * inv) + (float)q.zero_point;
    qp[i] = (uint8_t)std::min(255.0f, std::max(0.0f, v));
  }
  Tensor wc = wq.contiguous();
  Tensor acc = empty({M, N}, kInt32);
  if (cpu_kernels() == CpuKernels::Reference)
    gemm_u8s8_ref(qp, q.zero_point, wc.data<int8_t>(), acc.data<int32_t>(), M, N, K);
  else
    gemm_u8s8_onednn(qp, q.zero_point, wc.data<int8_t>(), acc.data<int32_t>(), M, N, K);

  // y = float(acc) * (x_scale * w_scale[n]) + bias[n]
  Tensor ws = wscale.contiguous();
  const float* wsp = ws.data<float>();
  std::vector<float> mult(N);
  for (int64_t n = 0; n < N; n++) mult[n] = q.scale * wsp[ws.numel() == 1 ? 0 : n];
  Tensor bc = bias.defined() ? bias.contiguous() : Tensor();
  const float* bp = bc.defined() ? bc.data<float>() : nullptr;
  const int32_t* ap = acc.data<int32_t>();
  float* yp = y.data<float>();
  for (int64_t m = 0; m < M; m++)
    for (int64_t n = 0; n < N; n++) {
      float v = (float)ap[m * N + n] * mult[n];
      yp[m * N + n] = bp ? v + bp[n] : v;
    }
  return y;
}

// ---- DynamicQuantizedLinear -------------------------------------------------------------------

DynamicQuantizedLinear::DynamicQuantizedLinear(const nn::Linear& linear, DynamicQuantOptions o)
    : reduce_range(o.reduce_range) {
  auto [wq, scale] = quantize_weight(linear.weight(), o.per_channel, "DynamicQuantizedLinear");
  register_buffer("weight", wq);
  register_buffer("weight_scale", scale); // symmetric: the zero point is 0, not stored
  if (Tensor b = linear.bias(); b.defined()) register_buffer("bias", b.detach().clone());
}

Tensor DynamicQuantizedLinear::forward(const Tensor& x) {
  TB_CHECK(x.dim() >= 1 && x.size(-1) == in_features(),
           "DynamicQuantizedLinear: expected input [..., {}], got {}", in_features(),
           shape_str(x.shape()));
  return dynamic_linear(x, get("weight"), get("weight_scale"), find("bias"), reduce_range);
}

std::string DynamicQuantizedLinear::extra_repr() const {
  return fmt::format("in_features={}, out_features={}, dtype=qint8, qscheme={}", in_features(),
                     out_features(),
                     get("weight_scale").numel() == 1 ? "per_tensor_symmetric"
                                                      : "per_channel_symmetric");
}

// ---- DynamicQuantizedLSTM ---------------------------------------------------------------------

DynamicQuantizedLSTM::DynamicQuantizedLSTM(const nn::LSTM& lstm, DynamicQuantOptions o)
    : num_layers(lstm.num_layers()), batch_first(lstm.batch_first()),
      reduce_range(o.reduce_range) {
  for (int64_t k = 0; k < num_layers; k++) {
    for (const char* which : {"ih", "hh"}) {
      std::string name = fmt::format("weight_{}_l{}", which, k);
      auto [wq, scale] = quantize_weight(lstm.get(name), o.per_channel, "DynamicQuantizedLSTM");
      register_buffer(name, wq);
      register_buffer(name + "_scale", scale);
    }
    for (const char* which : {"ih", "hh"}) {
      std::string name = fmt::format("bias_{}_l{}", which, k);
      if (Tensor b = lstm.find(name); b.defined()) register_buffer(name, b.detach().clone());
    }
  }
}

Tensor DynamicQuantizedLSTM::forward(const Tensor& x) { return forward_with_state(x).output; }

// nn::LSTM's recurrence (src/nn/rnn.cpp) with every x W^T + b a dynamic_linear; the input
// projection of a layer is one call over all T steps, as in PyTorch.
nn::LSTMResult DynamicQuantizedLSTM::forward_with_state(const Tensor& x_in, const Tensor& h0,
                                                        const Tensor& c0) {
  int64_t H = hidden_size(), L = num_layers;
  bool batched = nn::check_lstm_input("DynamicQuantizedLSTM", x_in, h0, c0, input_size(), H, L,
                                      batch_first);
  TB_CHECK(x_in.dtype() == kFloat32, "DynamicQuantizedLSTM: expected a float32 input, got {}",
           x_in.dtype());
  TB_CHECK(!(is_grad_enabled() && (x_in.requires_grad() || (h0.defined() && h0.requires_grad()))),
           "DynamicQuantizedLSTM: inference-only, but the input requires grad (run under "
           "tb::no_grad)");
  no_grad ng;
  Tensor x = batched ? (batch_first ? x_in.transpose(0, 1) : x_in) : x_in.unsqueeze(1);
  x = x.contiguous();
  int64_t T = x.size(0), N = x.size(1);
  Tensor h_init = h0, c_init = c0;
  if (h_init.defined() && !batched) h_init = h_init.unsqueeze(1), c_init = c_init.unsqueeze(1);
  std::vector<Tensor> h_last, c_last;
  for (int64_t k = 0; k < L; k++) {
    std::string ih = fmt::format("weight_ih_l{}", k), hh = fmt::format("weight_hh_l{}", k);
    Tensor gx = dynamic_linear(x, get(ih), get(ih + "_scale"), find(fmt::format("bias_ih_l{}", k)),
                               reduce_range); // [T, N, 4H]
    Tensor w_hh = get(hh), s_hh = get(hh + "_scale"), b_hh = find(fmt::format("bias_hh_l{}", k));
    Tensor h = h_init.defined() ? h_init.select(0, k).contiguous() : zeros({N, H});
    Tensor c = c_init.defined() ? c_init.select(0, k).contiguous() : zeros({N, H});
    Tensor out = empty({T, N, H});
    for (int64_t t = 0; t < T; t++) {
      Tensor g = add(dynamic_linear(h, w_hh, s_hh, b_hh, reduce_range), gx.select(0, t));
      Tensor s = sigmoid(g);
      Tensor i = s.narrow(1, 0, H), f = s.narrow(1, H, H), o = s.narrow(1, 3 * H, H);
      c = add(mul(f, c), mul(i, tanh(g.narrow(1, 2 * H, H))));
      h = mul(o, tanh(c));
      out.select(0, t).copy_(h);
    }
    x = out;
    h_last.push_back(h);
    c_last.push_back(c);
  }
  return nn::lstm_result(x, h_last, c_last, batched, batch_first);
}

std::string DynamicQuantizedLSTM::extra_repr() const {
  std::string s = fmt::format("{}, {}", input_size(), hidden_size());
  if (num_layers != 1) s += fmt::format(", num_layers={}", num_layers);
  if (batch_first) s += ", batch_first=True";
  return s + ", dtype=qint8";
}

// ---- quantize_dynamic -------------------------------------------------------------------------

ConversionReport quantize_dynamic(nn::Module& model, const std::vector<DynamicType>& types,
                                  DynamicQuantOptions o) {
  auto wants = [&](DynamicType t) { return std::find(types.begin(), types.end(), t) != types.end(); };
  TB_CHECK(!dynamic_cast<nn::Linear*>(&model) && !dynamic_cast<nn::LSTM*>(&model),
           "quantize_dynamic: the root module is a {} itself; wrap it in a Sequential so it can be "
           "replaced", model.type_name());
  ConversionReport report;
  // Collect first, swap after: the walk must not see a tree that changes under it.
  std::vector<std::pair<std::string, nn::ModulePtr>> swaps;
  for (auto& [path, m] : model.named_modules()) {
    if (path.empty()) continue;
    // Inside a module already converted or about to be: skip its children.
    bool below = false;
    for (auto& [p, _] : swaps)
      if (path.rfind(p + ".", 0) == 0) below = true;
    if (below) continue;
    if (auto* lin = dynamic_cast<nn::Linear*>(m); lin && wants(DynamicType::Linear)) {
      swaps.push_back({path, std::make_shared<DynamicQuantizedLinear>(*lin, o)});
      report.layers.push_back({path, m->type_name(), "quantized",
                               o.per_channel ? "dynamic int8, per-channel weights"
                                             : "dynamic int8, per-tensor weights"});
      report.quantized++;
    } else if (auto* lstm = dynamic_cast<nn::LSTM*>(m); lstm && wants(DynamicType::LSTM)) {
      swaps.push_back({path, std::make_shared<DynamicQuantizedLSTM>(*lstm, o)});
      report.layers.push_back({path, m->type_name(), "quantized",
                               o.per_channel ? "dynamic int8, per-channel weights"
                                             : "dynamic int8, per-tensor weights"});
      report.quantized++;
    } else if (!m->parameters(false).empty()) {
      report.layers.push_back(
          {path, m->type_name(), "skipped",
           dynamic_cast<nn::Linear*>(m) || dynamic_cast<nn::LSTM*>(m)
               ? "type not in the list given to quantize_dynamic"
               : "no dynamic quantized form (Linear and LSTM only)"});
      report.skipped++;
    }
  }
  for (auto& [path, q] : swaps) {
    q->train(false);
    model.set_submodule(path, q);
  }
  return report;
}

} // namespace tb::quant
