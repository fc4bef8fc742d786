// src/quant/int8.cpp — integer inference of QuantizedConv2d / QuantizedLinear (kernels/qconv.h).
//
// A converted layer still takes and returns float tensors, so that float neighbours (a layer
// that stayed float, a DeQuantStub, the loss) keep working; but the float input it gets lies on
// a quantization grid (a Quantize made it), and its output does too:
//   x (float, on grid gx) -> x_q = round(x / sx) + zx (uint8, NHWC; exact, checked)
//   -> y_q = requant(conv(x_q - zx, w_q))   (integer kernel, kernels/qconv.h)
//   -> y = (y_q - zy) sy (float, channels-last), tagged as lying on grid gy,
// and the Quantize after the layer (its activation_post_process, grid gy) passes a tensor already
// tagged with its own grid through untouched. So the float between two integer layers is only
// a carrier: the integer results are exactly those of the kernels.
//
// Which grid x lies on: first the grid a Quantize tagged x's storage with at run time (so that
// branches and shortcuts, whose producer is not the previous module in the tree, are found),
// else the input qparams convert recorded from the tree (buffers input_scale / input_zero_point:
// the quantizer that precedes the layer, through value-preserving modules such as MaxPool2d).
// The grid must pass the check that every element of x re-quantizes exactly onto it
// (x == (q - zp) * scale in float32). An input on no known grid was not quantized in the
// fake-quant model either (e.g. a functional mean in a parent's forward, which no observer
// sees): the layer then runs the float path on it, as the fake-quant model does, and counts the
// call in `off_grid_calls`.
#include "src/quant/int8.h"

#include <omp.h>

#include <array>
#include <atomic>
#include <cmath>
#include <cstring>

namespace tb::quant {

namespace {
// tb::set_cpu_kernels picks the oneDNN kernels or the reference loops, as for every op.
const kernels::QConvKernels& qconv_table() {
  return cpu_kernels() == CpuKernels::Fast ? kernels::QConvKernels::cpu : kernels::QConvKernels::ref;
}
} // namespace

namespace int8 {

using kernels::QGrid;
using kernels::Strides4;

// ---- grid tags ------------------------------------------------------------------------------------

namespace {
struct Tag {
  std::weak_ptr<Storage> storage;
  uint64_t version = 0;
  QGrid grid;
};
thread_local std::array<Tag, 64> t_tags;
thread_local size_t t_next = 0;

QGrid grid_of(const QParams& p, const std::string& who) {
  TB_CHECK(!p.per_channel && p.scale.numel() == 1 && p.zero_point.numel() == 1,
           "{}: activation qparams must be per tensor ([1] scale and zero point), got scale {}",
           who, shape_str(p.scale.shape()));
  return {(float)p.scale.item(), (int32_t)p.zero_point.item()};
}
} // namespace

void tag_grid(const Tensor& y, QGrid g) {
  if (y.device() != kCPU || y.dtype() != kFloat32) return;
  t_tags[t_next % t_tags.size()] = {y.storage(), y.version(), g};
  t_next++;
}
void tag_grid(const Tensor& y, const QParams& p) { tag_grid(y, grid_of(p, "Quantize")); }

std::vector<QGrid> recent_grids() {
  std::vector<QGrid> out;
  for (size_t k = 0; k < std::min(t_next, t_tags.size()); k++) {
    QGrid g = t_tags[(t_next + t_tags.size() - 1 - k) % t_tags.size()].grid;
    bool seen = false;
    for (const QGrid& o : out) seen |= o.scale == g.scale && o.zp == g.zp;
    if (!seen) out.push_back(g);
  }
  return out;
}

std::optional<QGrid> tagged_grid(const Tensor& x) {
  for (size_t k = 0; k < t_tags.size(); k++) {
    const Tag& t = t_tags[(t_next + t_tags.size() - 1 - k) % t_tags.size()];
    auto s = t.storage.lock();
    if (s && s == x.storage() && s->version == t.version) return t.grid;
  }
  return std::nullopt;
}

std::string unsupported_reason(const QParams& w, const std::optional<QParams>& in,
                               const std::optional<QParams>& out) {
  if (w.qmin < -128 || w.qmax > 127 || w.qmin >= 0)
    return fmt::format("weights [{}, {}] are not signed int8", w.qmin, w.qmax);
  for (int64_t z : w.zero_point.to_int_vector())
    if (z != 0) return fmt::format("weight zero point {} is not 0 (only symmetric weights)", z);
  if (!in) return "its input is not quantized (no quantizer before it)";
  if (in->qmin != 0 || in->qmax != 255)
    return fmt::format("input range [{}, {}] is not uint8 [0, 255]", in->qmin, in->qmax);
  if (!out) return "its output is not quantized (no activation_post_process)";
  if (out->qmin != 0 || out->qmax != 255)
    return fmt::format("output range [{}, {}] is not uint8 [0, 255]", out->qmin, out->qmax);
  return "";
}

// ---- float <-> uint8 --------------------------------------------------------------------------------

namespace {

// x (float32 [N, C, H, W] any strides, or [N, C] as H = W = 1) to uint8 NHWC on grid g: false
// when some element is not exactly on the grid.
bool quantize_nhwc(const Tensor& x, int64_t N, int64_t C, int64_t H, int64_t W, Strides4 s, QGrid g,
                   uint8_t* out) {
  const float* xp = x.data<float>();
  float inv = 1.0f / g.scale, zpf = (float)g.zp;
  bool dense_nhwc = s.c == 1 && (H == 1 || s.h == W * C) && (W == 1 || s.w == C) && s.n == H * W * C;
  if (dense_nhwc) { // the usual case (an integer layer's output): one flat, vectorisable loop
    int64_t n = N * H * W * C;
    int bad = 0;
    float scale = g.scale;
#pragma omp parallel for simd reduction(| : bad) schedule(static)
    for (int64_t i = 0; i < n; i++) {
      float v = xp[i];
      float q = std::min(std::max(std::nearbyintf(v * inv) + zpf, 0.0f), 255.0f);
      bad |= (int)((q - zpf) * scale != v);
      out[i] = (uint8_t)(int32_t)q;
    }
    return bad == 0;
  }
  std::atomic<bool> ok{true};
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t n = 0; n < N; n++)
    for (int64_t h = 0; h < H; h++) {
      if (!ok.load(std::memory_order_relaxed)) continue; // already off this grid
      bool row_ok = true;
      for (int64_t w = 0; w < W; w++)
        for (int64_t c = 0; c < C; c++) {
          float v = xp[n * s.n + c * s.c + h * s.h + w * s.w];
          float q = std::nearbyintf(v * inv) + (float)g.zp;
          q = std::min(255.0f, std::max(0.0f, q));
          row_ok &= (q - (float)g.zp) * g.scale == v;
          out[((n * H + h) * W + w) * C + c] = (uint8_t)q;
        }
      if (!row_ok) ok = false;
    }
  return ok;
}

// Tries the tagged grid, the recorded one, then those of the last Quantize outputs (a tensor that
// a value-preserving op copied, such as a channel shuffle, lost its tag); nullopt when x is on
// none. Any grid that passes is a faithful one: every element of x is exactly (q - zp) * scale
// with q in [0, 255], so the integer kernel sees the same real values whichever grid it is.
std::optional<QGrid> quantize_input(const nn::Module& m, const Tensor& x, int64_t N, int64_t C,
                                    int64_t H, int64_t W, Strides4 s, uint8_t* out) {
  std::optional<QGrid> tagged = tagged_grid(x);
  QGrid recorded{(float)m.get("input_scale").item(), (int32_t)m.get("input_zero_point").item()};
  auto same = [](QGrid a, QGrid b) { return a.scale == b.scale && a.zp == b.zp; };
  std::vector<QGrid> tried;
  auto attempt = [&](QGrid g) {
    for (const QGrid& t : tried)
      if (same(t, g)) return false;
    tried.push_back(g);
    return quantize_nhwc(x, N, C, H, W, s, g, out);
  };
  if (tagged && attempt(*tagged)) return tagged;
  if (attempt(recorded)) return recorded;
  for (const QGrid& g : recent_grids()) // only when both failed: rare
    if (attempt(g)) return g;
  return std::nullopt;
}

// Requantization constants: M[o] = s_in s_w[o] / s_out; bias_q[o] = round(b[o] / (s_in s_w[o])).
struct RequantData {
  std::vector<float> multiplier;
  std::vector<int32_t> bias;
  kernels::Requant r;
};
RequantData requant_data(const nn::Module& m, QGrid in, QGrid out, int64_t O, FusedAct act) {
  Tensor ws = m.get("weight_scale");
  TB_CHECK(ws.numel() == 1 || ws.numel() == O, "{}: weight_scale has {} values for {} output "
           "channels", m.type_name(), ws.numel(), O);
  std::vector<double> wsv = ws.to_vector();
  RequantData d;
  d.multiplier.resize(O);
  for (int64_t o = 0; o < O; o++)
    d.multiplier[o] = in.scale * (float)wsv[ws.numel() == 1 ? 0 : o] / out.scale;
  if (Tensor b = m.find("bias"); b.defined()) {
    TB_CHECK(b.numel() == O, "{}: bias has {} values for {} output channels", m.type_name(),
             b.numel(), O);
    std::vector<double> bv = b.to_vector();
    d.bias.resize(O);
    for (int64_t o = 0; o < O; o++) {
      float s = in.scale * (float)wsv[ws.numel() == 1 ? 0 : o];
      double q = std::nearbyint((double)((float)bv[o] / s));
      d.bias[o] = (int32_t)std::clamp(q, -2147483648.0, 2147483647.0);
    }
  }
  d.r.in_zp = in.zp;
  d.r.out_zp = out.zp;
  d.r.multiplier = d.multiplier.data();
  d.r.bias = d.bias.empty() ? nullptr : d.bias.data();
  d.r.act = act == FusedAct::None ? kernels::QAct::None
            : act == FusedAct::ReLU ? kernels::QAct::ReLU : kernels::QAct::Clip;
  d.r.clip_hi = 6.0f / out.scale;
  return d;
}

QGrid output_grid(nn::Module& m) {
  auto* q = dynamic_cast<Quantize*>(m.child("activation_post_process").get());
  TB_CHECK(q != nullptr, "{}: integer inference needs a Quantize as activation_post_process",
           m.type_name());
  return grid_of(q->qparams(), m.type_name());
}

// y = (q - zp) * scale, flat (the float tensor has the same memory order as q).
void dequantize_into(const uint8_t* q, QGrid g, float* y, int64_t n) {
  float scale = g.scale;
  int32_t zp = g.zp;
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; i++) y[i] = (float)((int32_t)q[i] - zp) * scale;
}

void check_input(const nn::Module& m, const Tensor& x, int64_t dims, int64_t channels,
                 int64_t channel_dim) {
  TB_CHECK(x.dtype() == kFloat32 && x.device() == kCPU,
           "{}: integer inference takes a float32 CPU tensor (the output of a Quantize), got {} "
           "on {}", m.type_name(), dtype_name(x.dtype()), x.device().str());
  TB_CHECK(dims < 0 ? x.dim() >= 1 : x.dim() == dims, "{}: expected a {} input, got {}",
           m.type_name(), dims < 0 ? "[..., features]" : fmt::format("{}-D", dims),
           shape_str(x.shape()));
  TB_CHECK(x.size(channel_dim) == channels, "{}: input {} has {} channels, the weight expects {}",
           m.type_name(), shape_str(x.shape()), x.size(channel_dim), channels);
}

} // namespace

// ---- layers -----------------------------------------------------------------------------------------

namespace {

// QuantizedConv2d::int8_plan: the kernel plan and everything it was made from. Holding the weight
// buffer keeps its storage alive, so a storage pointer in the key cannot be reused by another.
struct ConvPlanCache {
  std::vector<int64_t> key;
  Tensor weight;
  std::shared_ptr<const kernels::QConvPlan> plan;
};

int64_t bits_of(float f) {
  int32_t i;
  std::memcpy(&i, &f, 4);
  return i;
}

const kernels::QConvPlan& conv_plan(QuantizedConv2d& m, const kernels::Conv2dGeom& g,
                                    const kernels::Requant& r) {
  const kernels::QConvKernels& table = qconv_table();
  Tensor wbuf = m.get("weight");
  std::vector<int64_t> key{(int64_t)(intptr_t)&table, g.N, g.C, g.H, g.W, (int64_t)r.act,
                           bits_of(r.clip_hi), r.bias != nullptr,
                           (int64_t)(intptr_t)wbuf.storage().get(), wbuf.offset(),
                           (int64_t)wbuf.version()};
  for (int64_t o = 0; o < g.O; o++) key.push_back(bits_of(r.multiplier[o]));
  auto* c = static_cast<ConvPlanCache*>(m.int8_plan.get());
  if (c && c->key == key) return *c->plan;
  Tensor w = m.int_weight().contiguous();
  auto fresh = std::make_shared<ConvPlanCache>();
  fresh->key = std::move(key);
  fresh->weight = wbuf;
  fresh->plan = table.prepare_conv2d(g, w.data<int8_t>(), r);
  m.int8_plan = fresh;
  return *fresh->plan;
}

} // namespace

Tensor conv2d_forward(QuantizedConv2d& m, const Tensor& x) {
  const Shape& ws = m.weight_shape;
  int64_t O = ws[0], Cg = ws[1], G = m.params.groups;
  check_input(m, x, 4, Cg * G, 1);
  kernels::Conv2dGeom g{.N = x.size(0), .C = x.size(1), .H = x.size(2), .W = x.size(3), .O = O,
                        .KH = ws[2], .KW = ws[3]};
  g.stride_h = m.params.stride_h, g.stride_w = m.params.stride_w;
  g.pad_h = m.params.pad_h, g.pad_w = m.params.pad_w;
  g.dil_h = m.params.dilation_h, g.dil_w = m.params.dilation_w, g.groups = G;
  g.OH = (g.H + 2 * g.pad_h - g.dil_h * (g.KH - 1) - 1) / g.stride_h + 1;
  g.OW = (g.W + 2 * g.pad_w - g.dil_w * (g.KW - 1) - 1) / g.stride_w + 1;
  TB_CHECK(g.OH > 0 && g.OW > 0, "QuantizedConv2d: input {} is too small for the kernel {}x{}",
           shape_str(x.shape()), g.KH, g.KW);
  Strides4 s{x.stride(0), x.stride(1), x.stride(2), x.stride(3)};
  Tensor xq = empty({g.N, g.H, g.W, g.C}, TensorOptions(kUInt8));
  std::optional<QGrid> in_grid = quantize_input(m, x, g.N, g.C, g.H, g.W, s, xq.data<uint8_t>());
  if (!in_grid) return Tensor();
  QGrid in = *in_grid, out = output_grid(m);
  RequantData rd = requant_data(m, in, out, O, m.act);
  const kernels::QConvPlan& plan = conv_plan(m, g, rd.r);
  Tensor yq = empty({g.N, g.OH, g.OW, O}, TensorOptions(kUInt8));
  qconv_table().run_conv2d(plan, xq.data<uint8_t>(), rd.r, yq.data<uint8_t>());
  Tensor y = empty_channels_last({g.N, O, g.OH, g.OW});
  dequantize_into(yq.data<uint8_t>(), out, y.data<float>(), y.numel());
  tag_grid(y, out);
  return y;
}

Tensor linear_forward(QuantizedLinear& m, const Tensor& x) {
  int64_t O = m.weight_shape[0], I = m.weight_shape[1];
  check_input(m, x, -1, I, -1);
  int64_t N = x.numel() / I;
  Tensor xc = x.contiguous(); // [..., I] as [N, I]; same storage (and tag) when already contiguous
  Tensor xq = empty({N, I}, TensorOptions(kUInt8));
  if (std::optional<QGrid> tagged = tagged_grid(x); tagged && xc.storage() != x.storage())
    tag_grid(xc, *tagged); // a copy of a tagged tensor holds the same values
  std::optional<QGrid> in_grid = quantize_input(m, xc, N, I, 1, 1, {I, 1, 1, 1},
                                                xq.data<uint8_t>());
  if (!in_grid) return Tensor();
  QGrid in = *in_grid, out = output_grid(m);
  RequantData rd = requant_data(m, in, out, O, m.act);
  Tensor w = m.int_weight().contiguous();
  Tensor yq = empty({N, O}, TensorOptions(kUInt8));
  qconv_table().linear(N, I, O, xq.data<uint8_t>(), w.data<int8_t>(), rd.r, yq.data<uint8_t>());
  Shape ys = x.shape();
  ys.back() = O;
  Tensor y = empty(ys);
  dequantize_into(yq.data<uint8_t>(), out, y.data<float>(), y.numel());
  tag_grid(y, out);
  return y;
}

} // namespace int8
} // namespace tb::quant
