// src/quant/int8.cpp — integer inference of converted models (kernels/qconv.h).
//
// Between integer layers the activations are uint8 tensors (channels-last for 4-D), "quantized
// activations" whose grid (scale, zero point) is recorded by storage (src/ops/qactivation.h):
//   x_q (uint8 NHWC, grid gx) -> y_q = requant(conv(x_q - zx, w_q))   (kernels/qconv.h)
//   -> y_q (uint8 NHWC, grid gy) -> the next integer layer, join, pool or activation
// with no float in between. Every integer forward here returns a uint8 activation; the layer's
// Quantize (its activation_post_process, run by a forward hook) then either passes it on
// (`emit_uint8`: convert found that every consumer of this output takes uint8) or dequantizes
// it to a float "carrier" tagged with its grid, for float neighbours (functional code in a
// parent's forward, a layer kept in float, the model's output).
//
// The float-carrier fallback: an integer conv / linear given a float tensor looks for the grid
// it lies on: first the grid a Quantize tagged x's storage with at run time (so that branches
// and shortcuts, whose producer is not the previous module in the tree, are found), else the
// input qparams convert recorded from the tree (buffers input_scale / input_zero_point), else
// one of the last tagged grids. The grid must pass the check that every element of x
// re-quantizes exactly onto it (x == (q - zp) * scale in float32). An input on no known grid
// was not quantized in the fake-quant model either (e.g. a functional mean in a parent's
// forward, which no observer sees): the layer then runs the float path on it, as the fake-quant
// model does, and counts the call in `off_grid_calls`.
#include "src/quant/int8.h"

#include "src/ops/qactivation.h"

#include <immintrin.h>
#include <omp.h>

#include <array>
#include <atomic>
#include <cmath>
#include <cstring>

namespace tb::quant {

namespace {
// tb::set_cpu_kernels picks the oneDNN / OpenMP kernels or the reference loops, as for every op.
const kernels::QConvKernels& qconv_table() {
  return cpu_kernels() == CpuKernels::Fast ? kernels::QConvKernels::cpu : kernels::QConvKernels::ref;
}
const kernels::QElementwiseKernels& qelem_table() {
  return cpu_kernels() == CpuKernels::Fast ? kernels::QElementwiseKernels::cpu
                                           : kernels::QElementwiseKernels::ref;
}
} // namespace

namespace int8 {

using kernels::QGrid;
using kernels::Strides4;

// Loops over fewer elements run on one thread: an OpenMP region costs microseconds.
constexpr int64_t kParallelMin = 1 << 15;

// ---- grid tags ------------------------------------------------------------------------------------

namespace {
struct Tag {
  std::weak_ptr<Storage> storage;
  uint64_t version = 0;
  QGrid grid;
};
thread_local std::array<Tag, 64> t_tags;
thread_local size_t t_next = 0;
} // namespace

QGrid grid_of(const QParams& p, const std::string& who) {
  TB_CHECK(!p.per_channel && p.scale.numel() == 1 && p.zero_point.numel() == 1,
           "{}: activation qparams must be per tensor ([1] scale and zero point), got scale {}",
           who, shape_str(p.scale.shape()));
  return {(float)p.scale.item(), (int32_t)p.zero_point.item()};
}

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

// ---- uint8 activations ---------------------------------------------------------------------------

std::optional<QGrid> activation_grid(const Tensor& x) {
  std::optional<ActivationGrid> g = quantized_activation_grid(x);
  if (!g) return std::nullopt;
  return QGrid{g->scale, g->zero_point};
}

Tensor new_activation(const Shape& s, QGrid g) {
  TensorOptions u8(kUInt8);
  Tensor t = s.size() == 4 ? empty_channels_last(s, u8) : empty(s, u8);
  mark_quantized_activation(t, {g.scale, g.zp});
  return t;
}

namespace {

// True when x's memory is dense in the order the kernels read: N×H×W×C for 4-D (size-1 dims may
// have any stride), row-major otherwise.
bool is_dense_activation(const Tensor& x) {
  if (x.dim() != 4) return x.is_contiguous();
  int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  return (C == 1 || x.stride(1) == 1) && (W == 1 || x.stride(3) == C) &&
         (H == 1 || x.stride(2) == W * C) && (N == 1 || x.stride(0) == H * W * C);
}

// Float x as [N, C, H, W] with strides s (2-D: [N, C] as H = W = 1) to levels on grid g, written
// N×H×W×C into out; false when some element is not exactly on the grid (when `exact`).
bool quantize_nhwc(const Tensor& x, int64_t N, int64_t C, int64_t H, int64_t W, Strides4 s,
                   QGrid g, uint8_t* out, bool exact);

} // namespace

Tensor dense_activation(const Tensor& x, QGrid g) {
  if (is_dense_activation(x)) return x;
  Tensor y = new_activation(x.shape(), g);
  y.copy_(x);
  return y;
}

Tensor quantize_activation(const Tensor& x_in, QGrid g) {
  TB_CHECK(x_in.device() == kCPU && is_floating(x_in.dtype()),
           "quantize_activation: expected a float CPU tensor, got {} on {}",
           dtype_name(x_in.dtype()), x_in.device().str());
  Tensor x = x_in.dtype() == kFloat32 ? x_in : x_in.to(kFloat32);
  Tensor y = new_activation(x.shape(), g);
  if (x.dim() == 4) {
    quantize_nhwc(x, x.size(0), x.size(1), x.size(2), x.size(3),
                  {x.stride(0), x.stride(1), x.stride(2), x.stride(3)}, g, y.data<uint8_t>(), false);
  } else {
    Tensor xc = x.contiguous();
    int64_t n = xc.numel();
    quantize_nhwc(xc, 1, n, 1, 1, {n, 1, 1, 1}, g, y.data<uint8_t>(), false);
  }
  return y;
}

Tensor dequantize_activation(const Tensor& q_in, QGrid g) {
  Tensor q = dense_activation(q_in, g);
  Tensor y = q.dim() == 4 ? empty_channels_last(q.shape()) : empty(q.shape());
  const uint8_t* qp = q.data<uint8_t>();
  float* yp = y.data<float>();
  float scale = g.scale;
  int32_t zp = g.zp;
  int64_t n = q.numel();
#pragma omp parallel for simd schedule(static) if (n > kParallelMin)
  for (int64_t i = 0; i < n; i++) yp[i] = (float)((int32_t)qp[i] - zp) * scale;
  tag_grid(y, g);
  return y;
}

Tensor flatten_nhwc(const Tensor& x_in, QGrid g) {
  Tensor x = dense_activation(x_in, g);
  int64_t N = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  Tensor y = new_activation({N, C * P}, g);
  const uint8_t* xp = x.data<uint8_t>();
  uint8_t* yp = y.data<uint8_t>();
#pragma omp parallel for schedule(static) if (N * C * P > kParallelMin)
  for (int64_t n = 0; n < N; n++)
    for (int64_t c = 0; c < C; c++)
      for (int64_t p = 0; p < P; p++) yp[(n * C + c) * P + p] = xp[(n * P + p) * C + c];
  return y;
}

std::optional<QGrid> output_grid_of(const nn::Module& m) {
  if (!m.has_child("activation_post_process")) return std::nullopt;
  return quantize_grid(*m.child("activation_post_process"), m.type_name());
}

std::optional<QGrid> quantize_grid(const nn::Module& module, const std::string& owner) {
  auto* q = dynamic_cast<const Quantize*>(&module);
  if (q == nullptr || q->qmin != 0 || q->qmax != 255) return std::nullopt;
  Tensor s = q->get("scale"), z = q->get("zero_point");
  if (s.device() == kCPU && s.dtype() == kFloat32 && z.dtype() == kInt32 && s.numel() == 1 &&
      z.numel() == 1) // the usual buffers, read without a dispatch (once per layer and call)
    return QGrid{s.data<float>()[0], z.data<int32_t>()[0]};
  return grid_of(q->qparams(), owner);
}

namespace {

// Elements [i0, i1) of contiguous floats onto the grid (grid as values: see
// kernels/cpu/qelementwise.cpp, add_range); with `check`, returns whether any was off the grid
// (the check's vector compares and mask reductions doubled the loop's time, so it is left out
// when nobody asks).
template <bool check>
int quantize_range(const float* x, uint8_t* out, int64_t i0, int64_t i1, float inv, float zpf,
                   float scale) {
  int bad = 0;
#pragma omp simd reduction(| : bad)
  for (int64_t i = i0; i < i1; i++) {
    float v = x[i];
    float q = std::min(std::max(std::nearbyintf(v * inv) + zpf, 0.0f), 255.0f);
    if constexpr (check) bad |= (int)((q - zpf) * scale != v);
    out[i] = (uint8_t)(int32_t)q;
  }
  return bad;
}
int quantize_range(bool check, const float* x, uint8_t* out, int64_t i0, int64_t i1, float inv,
                   float zpf, float scale) {
  return check ? quantize_range<true>(x, out, i0, i1, inv, zpf, scale)
               : quantize_range<false>(x, out, i0, i1, inv, zpf, scale);
}

// n contiguous floats, in parallel when n is large.
int quantize_flat(bool check, const float* x, uint8_t* out, int64_t n, QGrid g) {
  float inv = 1.0f / g.scale, zpf = (float)g.zp, scale = g.scale;
  int64_t chunks = n > kParallelMin ? omp_get_max_threads() : 1;
  int bad = 0;
#pragma omp parallel for reduction(| : bad) schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; c++)
    bad |= quantize_range(check, x, out, n * c / chunks, n * (c + 1) / chunks, inv, zpf, scale);
  return bad;
}

// The three rows t[0, m), t[B, B + m), t[2B, 2B + m) (an RGB tile's channels) interleaved into
// o as o[3p + c] = t[cB + p]; returns how many pixels it wrote (a multiple of 64, the rest is
// left to the caller's loop). With AVX-512 VBMI, 64 pixels per step: each of the three output
// vectors picks its bytes from channels 0 and 1 with one two-source byte permute and from
// channel 2 with a masked one (the tables say which byte of which channel goes where). Measured
// on MobileNetV2's 3x224x224 input: the whole quantize 0.094 -> 0.035 ms (2 threads).
int64_t interleave3(const uint8_t* t, int64_t B, int64_t m, uint8_t* o) {
#if defined(__AVX512VBMI__)
  struct Tables {
    alignas(64) uint8_t idx01[3][64], idx2[3][64];
    uint64_t from2[3];
  };
  static const Tables tab = [] {
    Tables k{};
    for (int v = 0; v < 3; v++) {
      k.from2[v] = 0;
      for (int j = 0; j < 64; j++) {
        int byte = 64 * v + j, p = byte / 3, c = byte % 3;
        k.idx01[v][j] = (uint8_t)(c == 1 ? 64 + p % 64 : p % 64); // 0 / 1 by bit 6
        k.idx2[v][j] = (uint8_t)(p % 64);
        if (c == 2) k.from2[v] |= uint64_t{1} << j;
      }
    }
    return k;
  }();
  int64_t p = 0;
  for (; p + 64 <= m; p += 64) {
    __m512i c0 = _mm512_loadu_si512(t + p), c1 = _mm512_loadu_si512(t + B + p);
    __m512i c2 = _mm512_loadu_si512(t + 2 * B + p);
    for (int v = 0; v < 3; v++) {
      __m512i y = _mm512_permutex2var_epi8(c0, _mm512_load_si512(tab.idx01[v]), c1);
      y = _mm512_mask_permutexvar_epi8(y, tab.from2[v], _mm512_load_si512(tab.idx2[v]), c2);
      _mm512_storeu_si512(o + 3 * p + 64 * v, y);
    }
  }
  return p;
#else
  (void)t, (void)B, (void)m, (void)o;
  return 0;
#endif
}

bool quantize_nhwc(const Tensor& x, int64_t N, int64_t C, int64_t H, int64_t W, Strides4 s,
                   QGrid g, uint8_t* out, bool exact) {
  const float* xp = x.data<float>();
  // Whether x has strides `want` (a size-1 dimension may have any stride).
  auto strides_are = [&](Strides4 want) {
    return (N == 1 || s.n == want.n) && (C == 1 || s.c == want.c) && (H == 1 || s.h == want.h) &&
           (W == 1 || s.w == want.w);
  };
  int64_t P = H * W;
  // The usual case (a carrier from an integer layer, NHWC): one flat loop.
  if (strides_are({.n = P * C, .c = 1, .h = W * C, .w = C}))
    return quantize_flat(exact, xp, out, N * P * C, g) == 0 || !exact;
  // An NCHW input (a model's first layer): tiles of B pixels (about 8 KB of levels); each
  // channel's B floats are quantized on vectors into the tile, then the tile is written out pixel
  // by pixel (one pass over the input, the transpose in L1; each thread writes its own tiles).
  if (strides_are({.n = C * P, .c = P, .h = W, .w = 1})) {
    const int64_t B = std::clamp<int64_t>(8192 / C, 64, 2048), tiles = (P + B - 1) / B;
    float inv = 1.0f / g.scale, zpf = (float)g.zp, scale = g.scale;
    int bad = 0;
#pragma omp parallel reduction(| : bad) if (N * C * P > kParallelMin)
    {
      std::vector<uint8_t> tile(C * B);
#pragma omp for collapse(2) schedule(static)
      for (int64_t n = 0; n < N; n++)
        for (int64_t t = 0; t < tiles; t++) {
          int64_t p0 = t * B, m = std::min(B, P - p0);
          for (int64_t c = 0; c < C; c++)
            bad |= quantize_range(exact, xp + (n * C + c) * P + p0, tile.data() + c * B, 0, m, inv, zpf,
                                  scale);
          uint8_t* o = out + (n * P + p0) * C;
          int64_t p = C == 3 ? interleave3(tile.data(), B, m, o) : 0;
          for (; p < m; p++)
            for (int64_t c = 0; c < C; c++) o[p * C + c] = tile[c * B + p];
        }
    }
    return bad == 0 || !exact;
  }
  // Any other strides: one element at a time.
  float inv = 1.0f / g.scale, zpf = (float)g.zp, scale = g.scale;
  int bad = 0;
  for (int64_t n = 0; n < N; n++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t w = 0; w < W; w++)
        for (int64_t c = 0; c < C; c++) {
          float v = xp[n * s.n + c * s.c + h * s.h + w * s.w];
          bad |= quantize_range(exact, &v, out + ((n * H + h) * W + w) * C + c, 0, 1, inv, zpf, scale);
        }
  return bad == 0 || !exact;
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
    return quantize_nhwc(x, N, C, H, W, s, g, out, true);
  };
  if (tagged && attempt(*tagged)) return tagged;
  if (attempt(recorded)) return recorded;
  for (const QGrid& g : recent_grids()) // only when both failed: rare
    if (attempt(g)) return g;
  return std::nullopt;
}

// Requantization constants: M[o] = s_in s_w[o] / s_out; bias_q[o] = round(b[o] / (s_in s_w[o])).
// Kept in the layer's plan (the pointers in r point into the vectors).
struct RequantData {
  std::vector<float> multiplier;
  std::vector<int32_t> bias;
  kernels::QSum sum; // a fused add's grids (r.sum points here when there is one)
  kernels::Requant r;
};
void fill_requant(RequantData& d, const nn::Module& m, QGrid in, QGrid out, int64_t O,
                  FusedAct act) {
  Tensor ws = m.get("weight_scale");
  TB_CHECK(ws.numel() == 1 || ws.numel() == O, "{}: weight_scale has {} values for {} output "
           "channels", m.type_name(), ws.numel(), O);
  std::vector<double> wsv = ws.to_vector();
  d.multiplier.resize(O);
  for (int64_t o = 0; o < O; o++)
    d.multiplier[o] = in.scale * (float)wsv[ws.numel() == 1 ? 0 : o] / out.scale;
  d.bias.clear();
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
}

QGrid output_grid(nn::Module& m) {
  std::optional<QGrid> g = output_grid_of(m);
  TB_CHECK(g.has_value(), "{}: integer inference needs a uint8 [0, 255] Quantize as "
           "activation_post_process", m.type_name());
  return *g;
}

// x: a float32 carrier or a uint8 quantized activation, on the CPU, of the expected size.
void check_input(const nn::Module& m, const Tensor& x, int64_t dims, int64_t channels,
                 int64_t channel_dim) {
  bool activation = x.dtype() == kUInt8 && activation_grid(x).has_value();
  TB_CHECK((x.dtype() == kFloat32 || activation) && x.device() == kCPU,
           "{}: integer inference takes a float32 CPU tensor (the output of a Quantize) or a "
           "uint8 quantized activation (the output of an integer layer), got {} on {}",
           m.type_name(), dtype_name(x.dtype()), x.device().str());
  TB_CHECK(dims < 0 ? x.dim() >= 1 : x.dim() == dims, "{}: expected a {} input, got {}",
           m.type_name(), dims < 0 ? "[..., features]" : fmt::format("{}-D", dims),
           shape_str(x.shape()));
  TB_CHECK(x.size(channel_dim) == channels, "{}: input {} has {} channels, the weight expects {}",
           m.type_name(), shape_str(x.shape()), x.size(channel_dim), channels);
}

int64_t bits_of(float f) {
  int32_t i;
  std::memcpy(&i, &f, 4);
  return i;
}

// The key of everything a layer's plan is made from: kernel table, input shape, grids, and the
// buffers (storage and version: load_state_dict writes them in place).
std::vector<int64_t> plan_key(const nn::Module& m, const void* table, const Shape& in_shape,
                              QGrid in, QGrid out) {
  std::vector<int64_t> key{(int64_t)(intptr_t)table, bits_of(in.scale), in.zp, bits_of(out.scale),
                           out.zp};
  for (int64_t d : in_shape) key.push_back(d);
  for (const char* name : {"weight", "weight_scale", "bias"})
    if (Tensor t = m.find(name); t.defined()) {
      key.push_back((int64_t)(intptr_t)t.storage().get());
      key.push_back(t.offset());
      key.push_back((int64_t)t.version());
    }
  return key;
}

} // namespace

// ---- conv / linear ----------------------------------------------------------------------------------

namespace {

// QuantizedConv2d::int8_plan / QuantizedLinear::int8_plan: the requantization constants, the
// kernel plan and everything they were made from. Holding the buffers keeps their storages
// alive, so a storage pointer in the key cannot be reused by another.
struct LayerPlan {
  std::vector<int64_t> key;
  std::vector<Tensor> buffers;
  RequantData rd;
  std::shared_ptr<const kernels::QConvPlan> conv; // conv only
  Tensor weight;                                  // linear only: int8 [O, I] contiguous
};

template <class Layer>
LayerPlan& layer_plan(Layer& m, const Shape& in_shape, QGrid in, QGrid out, int64_t O,
                      const std::function<void(LayerPlan&)>& make,
                      const kernels::QSum* sum = nullptr) {
  const kernels::QConvKernels& table = qconv_table();
  std::vector<int64_t> key = plan_key(m, &table, in_shape, in, out);
  if (sum)
    for (int64_t v : {bits_of(sum->residual.scale), (int64_t)sum->residual.zp,
                      bits_of(sum->out.scale), (int64_t)sum->out.zp, (int64_t)sum->conv_input})
      key.push_back(v);
  auto* c = static_cast<LayerPlan*>(m.int8_plan.get());
  if (c && c->key == key) return *c;
  auto fresh = std::make_shared<LayerPlan>();
  fresh->key = std::move(key);
  for (const char* name : {"weight", "weight_scale", "bias"})
    if (Tensor t = m.find(name); t.defined()) fresh->buffers.push_back(t);
  fill_requant(fresh->rd, m, in, out, O, m.act);
  if (sum) {
    fresh->rd.sum = *sum;
    fresh->rd.r.sum = &fresh->rd.sum;
  }
  make(*fresh);
  m.int8_plan = fresh;
  return *fresh;
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
  QGrid in, out = output_grid(m);
  Tensor xq;
  if (x.dtype() == kUInt8) { // a quantized activation: its levels as they are
    in = *activation_grid(x);
    xq = dense_activation(x, in);
  } else { // a float carrier: its levels, if it lies on a known grid
    xq = empty({g.N, g.H, g.W, g.C}, TensorOptions(kUInt8));
    Strides4 s{x.stride(0), x.stride(1), x.stride(2), x.stride(3)};
    std::optional<QGrid> in_grid = quantize_input(m, x, g.N, g.C, g.H, g.W, s, xq.data<uint8_t>());
    if (!in_grid) return Tensor();
    in = *in_grid;
  }
  // A fused add (ConvAddFusion): the residual its producer's hook stored, if it is a uint8
  // activation of the output's shape and the add's grid is known; else the plain conv (the add
  // then adds as usual).
  Shape out_shape{g.N, O, g.OH, g.OW};
  Tensor residual;
  std::optional<kernels::QSum> sum;
  if (ConvAddFusion* f = m.fused_add.f.get()) {
    residual = std::move(f->residual);
    f->residual = f->result = f->residual_used = Tensor();
    std::optional<QGrid> gr = residual.defined() ? activation_grid(residual) : std::nullopt;
    nn::ModulePtr add_quantize = f->add_output.lock(); // gone if the add was removed
    std::optional<QGrid> gs =
        add_quantize ? quantize_grid(*add_quantize, "QuantizedAdd") : std::nullopt;
    if (gr && gs && residual.shape() == out_shape)
      sum = kernels::QSum{.conv = out, .residual = *gr, .out = *gs, .conv_input = f->conv_input};
  }
  LayerPlan& plan = layer_plan(
      m, x.shape(), in, out, O,
      [&](LayerPlan& p) {
        Tensor w = m.int_weight().contiguous();
        p.conv = qconv_table().prepare_conv2d(g, w.data<int8_t>(), p.rd.r);
      },
      sum ? &*sum : nullptr);
  Tensor y = new_activation(out_shape, sum ? sum->out : out);
  if (sum) // the sum post-op reads the residual from the output buffer
    std::memcpy(y.data<uint8_t>(), dense_activation(residual, sum->residual).data<uint8_t>(),
                (size_t)y.numel());
  qconv_table().run_conv2d(*plan.conv, xq.data<uint8_t>(), plan.rd.r, y.data<uint8_t>());
  if (sum) {
    m.fused_add.f->result = y;
    m.fused_add.f->residual_used = residual;
  }
  return y;
}

Tensor linear_forward(QuantizedLinear& m, const Tensor& x) {
  int64_t O = m.weight_shape[0], I = m.weight_shape[1];
  check_input(m, x, -1, I, -1);
  int64_t N = x.numel() / I;
  QGrid in, out = output_grid(m);
  Tensor xq;
  if (x.dtype() == kUInt8) {
    in = *activation_grid(x);
    xq = x.is_contiguous() ? x : dense_activation(x.contiguous(), in);
  } else {
    Tensor xc = x.contiguous(); // [..., I] as [N, I]; same storage (and tag) when contiguous
    if (std::optional<QGrid> tagged = tagged_grid(x); tagged && xc.storage() != x.storage())
      tag_grid(xc, *tagged); // a copy of a tagged tensor holds the same values
    xq = empty({N, I}, TensorOptions(kUInt8));
    std::optional<QGrid> in_grid = quantize_input(m, xc, N, I, 1, 1, {I, 1, 1, 1},
                                                  xq.data<uint8_t>());
    if (!in_grid) return Tensor();
    in = *in_grid;
  }
  LayerPlan& plan = layer_plan(m, {I}, in, out, O, [&](LayerPlan& p) {
    p.weight = m.int_weight().contiguous();
  });
  Shape ys = x.shape();
  ys.back() = O;
  Tensor y = new_activation(ys, out);
  qconv_table().linear(N, I, O, xq.data<uint8_t>(), plan.weight.data<int8_t>(), plan.rd.r,
                       y.data<uint8_t>());
  return y;
}

// ---- joins, activations, pools --------------------------------------------------------------------

namespace {

// The inputs' grids when every one is a uint8 activation on the CPU, else nullopt.
std::optional<std::vector<QGrid>> activation_grids(const std::vector<Tensor>& xs) {
  std::vector<QGrid> gs;
  for (const Tensor& x : xs) {
    std::optional<QGrid> g = activation_grid(x);
    if (!g || x.device() != kCPU) return std::nullopt;
    gs.push_back(*g);
  }
  return gs;
}

const uint8_t* levels(const Tensor& dense) { return dense.data<uint8_t>(); }

} // namespace

Tensor add_forward(const nn::Module& m, const std::vector<Tensor>& xs) {
  std::optional<QGrid> gy = output_grid_of(m);
  auto gs = activation_grids(xs);
  if (!gy || !gs || xs.size() != 2 || xs[0].shape() != xs[1].shape()) return Tensor();
  Tensor a = dense_activation(xs[0], (*gs)[0]), b = dense_activation(xs[1], (*gs)[1]);
  Tensor y = new_activation(a.shape(), *gy);
  qelem_table().add(levels(a), (*gs)[0], levels(b), (*gs)[1], y.data<uint8_t>(), *gy, y.numel());
  return y;
}

Tensor mul_forward(const nn::Module& m, const std::vector<Tensor>& xs) {
  std::optional<QGrid> gy = output_grid_of(m);
  auto gs = activation_grids(xs);
  if (!gy || !gs || xs.size() != 2) return Tensor();
  Tensor a = dense_activation(xs[0], (*gs)[0]), b = dense_activation(xs[1], (*gs)[1]);
  QGrid ga = (*gs)[0], gb = (*gs)[1];
  if (a.shape() == b.shape()) {
    Tensor y = new_activation(a.shape(), *gy);
    qelem_table().mul(levels(a), ga, levels(b), gb, y.data<uint8_t>(), *gy, 1, a.numel(), 1, false);
    return y;
  }
  // The SE gate: [N, C, H, W] times [N, C, 1, 1] (either order; the product commutes exactly).
  if (a.dim() == 4 && b.dim() == 4 && a.size(2) * a.size(3) < b.size(2) * b.size(3)) {
    std::swap(a, b);
    std::swap(ga, gb);
  }
  if (a.dim() != 4 || b.dim() != 4 || b.size(0) != a.size(0) || b.size(1) != a.size(1) ||
      b.size(2) != 1 || b.size(3) != 1)
    return Tensor();
  Tensor y = new_activation(a.shape(), *gy);
  int64_t N = a.size(0), C = a.size(1), P = a.size(2) * a.size(3);
  qelem_table().mul(levels(a), ga, levels(b), gb, y.data<uint8_t>(), *gy, N, P, C, true);
  return y;
}

Tensor cat_forward(const nn::Module& m, const std::vector<Tensor>& xs, int64_t dim) {
  std::optional<QGrid> gy = output_grid_of(m);
  auto gs = activation_grids(xs);
  if (!gy || !gs || xs.empty()) return Tensor();
  int64_t nd = xs[0].dim();
  // Along the channels of 4-D (NHWC: the last memory dim) or the last dim of 2-D tensors.
  if (!((nd == 4 && (dim == 1 || dim == -3)) || (nd == 2 && (dim == 1 || dim == -1)))) return Tensor();
  std::vector<Tensor> dense;
  std::vector<const uint8_t*> ptrs;
  std::vector<int64_t> widths;
  Shape ys = xs[0].shape();
  ys[1] = 0;
  for (size_t j = 0; j < xs.size(); j++) {
    const Tensor& x = xs[j];
    if (x.dim() != nd || x.size(0) != ys[0] || (nd == 4 && (x.size(2) != ys[2] || x.size(3) != ys[3])))
      return Tensor();
    dense.push_back(dense_activation(x, (*gs)[j]));
    ptrs.push_back(levels(dense.back()));
    widths.push_back(x.size(1));
    ys[1] += x.size(1);
  }
  Tensor y = new_activation(ys, *gy);
  int64_t outer = nd == 4 ? ys[0] * ys[2] * ys[3] : ys[0];
  qelem_table().cat(ptrs.data(), gs->data(), widths.data(), (int64_t)xs.size(), y.data<uint8_t>(),
                    *gy, outer);
  return y;
}

Tensor activation_forward(const nn::Module& m, kernels::QActivation kind, const Tensor& x) {
  std::optional<QGrid> gy = output_grid_of(m), gx = activation_grid(x);
  if (!gy || !gx || x.device() != kCPU) return Tensor();
  Tensor a = dense_activation(x, *gx);
  Tensor y = new_activation(a.shape(), *gy);
  qelem_table().activation(kind, levels(a), *gx, y.data<uint8_t>(), *gy, y.numel());
  return y;
}

namespace {
// The pool's kernel, stride and padding when the integer kernels cover it: 4-D input, no
// ceil_mode (whose last windows PyTorch clips differently), count_include_pad for averages.
bool plain_pool(const Tensor& x, const Pool2dParams& p, bool average) {
  return x.dim() == 4 && !p.ceil_mode && (!average || p.count_include_pad) && p.kernel_h >= 1 &&
         p.kernel_w >= 1;
}
int64_t pool_out(int64_t in, int64_t k, int64_t pad, int64_t stride) {
  return (in + 2 * pad - k) / stride + 1;
}
} // namespace

Tensor max_pool2d_forward(const Tensor& x, const Pool2dParams& p) {
  std::optional<QGrid> gx = activation_grid(x);
  if (!gx || !plain_pool(x, p, false) || x.device() != kCPU) return Tensor();
  Tensor a = dense_activation(x, *gx);
  int64_t sh = p.stride_h ? p.stride_h : p.kernel_h, sw = p.stride_w ? p.stride_w : p.kernel_w;
  int64_t N = a.size(0), C = a.size(1), H = a.size(2), W = a.size(3);
  int64_t OH = pool_out(H, p.kernel_h, p.pad_h, sh), OW = pool_out(W, p.kernel_w, p.pad_w, sw);
  if (OH < 1 || OW < 1) return Tensor();
  Tensor y = new_activation({N, C, OH, OW}, *gx); // max commutes with the affine map: same grid
  qelem_table().max_pool2d(levels(a), N, C, H, W, p.kernel_h, p.kernel_w, sh, sw, p.pad_h,
                           p.pad_w, y.data<uint8_t>(), OH, OW);
  return y;
}

Tensor avg_pool2d_forward(const nn::Module& m, const Tensor& x, const Pool2dParams& p) {
  std::optional<QGrid> gy = output_grid_of(m), gx = activation_grid(x);
  if (!gy || !gx || !plain_pool(x, p, true) || x.device() != kCPU) return Tensor();
  Tensor a = dense_activation(x, *gx);
  int64_t sh = p.stride_h ? p.stride_h : p.kernel_h, sw = p.stride_w ? p.stride_w : p.kernel_w;
  int64_t N = a.size(0), C = a.size(1), H = a.size(2), W = a.size(3);
  int64_t OH = pool_out(H, p.kernel_h, p.pad_h, sh), OW = pool_out(W, p.kernel_w, p.pad_w, sw);
  if (OH < 1 || OW < 1) return Tensor();
  Tensor y = new_activation({N, C, OH, OW}, *gy);
  qelem_table().avg_pool2d(levels(a), *gx, N, C, H, W, p.kernel_h, p.kernel_w, sh, sw, p.pad_h,
                           p.pad_w, y.data<uint8_t>(), *gy, OH, OW);
  return y;
}

Tensor adaptive_avg_pool2d_forward(const nn::Module& m, const Tensor& x, int64_t oh, int64_t ow) {
  // PyTorch's adaptive windows [floor(i H / OH), ceil((i + 1) H / OH)) are a plain pool with
  // kernel = stride = H / OH when OH divides H (the global pool: OH = 1).
  if (x.dim() != 4 || oh < 1 || ow < 1 || x.size(2) % oh != 0 || x.size(3) % ow != 0)
    return Tensor();
  int64_t kh = x.size(2) / oh, kw = x.size(3) / ow;
  return avg_pool2d_forward(m, x, {.kernel_h = kh, .kernel_w = kw, .stride_h = kh, .stride_w = kw});
}

// channel_shuffle on N×H×W×C levels: output channel j*g + i is input channel i*c + j (C = g*c),
// within each pixel's row of C bytes.
Tensor channel_shuffle_forward(const Tensor& x, int64_t groups) {
  std::optional<QGrid> gx = activation_grid(x);
  if (!gx || x.dim() != 4 || x.device() != kCPU || groups < 1 || x.size(1) % groups != 0)
    return Tensor();
  Tensor a = dense_activation(x, *gx);
  int64_t C = a.size(1), c = C / groups, P = a.size(0) * a.size(2) * a.size(3);
  Tensor y = new_activation(a.shape(), *gx);
  const uint8_t* xp = a.data<uint8_t>();
  uint8_t* yp = y.data<uint8_t>();
#pragma omp parallel for schedule(static) if (P * C > kParallelMin)
  for (int64_t p = 0; p < P; p++)
    for (int64_t i = 0; i < groups; i++)
      for (int64_t j = 0; j < c; j++) yp[p * C + j * groups + i] = xp[p * C + i * c + j];
  return y;
}

} // namespace int8
} // namespace tb::quant
