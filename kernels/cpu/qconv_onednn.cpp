// kernels/cpu/qconv_onednn.cpp — integer convolution and linear on oneDNN: u8 activations x s8
// weights, int32 accumulation, and the requantization of kernels/qconv.h as primitive attributes:
//   output scales  per output channel (mask 1 << 1: the O dimension of dst);
//   zero points    src and dst, one each (mask 0), runtime values; only those that are not 0
//                  (a zero point of 0 leaves the arithmetic unchanged, and without one oneDNN
//                  has faster kernels: its brdgmm depthwise conv takes no zero points, measured
//                  0.13 against 0.16 ms on MobileNetV2's 144-channel 56x56 layer, one thread;
//                  the layers after a ReLU6 have both at 0);
//   bias           s32 (oneDNN 2.x adds it to the accumulator before the output scale);
//   post-ops       eltwise ReLU or clip(0, clip_hi) (applied before the dst zero point).
// Zero points are given at run time. Output scales are too for the matmul, but oneDNN 2.6 has
// no convolution with run-time output scales (measured: every implementation refuses them), so
// a convolution's scales are creation-time constants and their bits are part of its cache key:
// one primitive per layer and input shape, created on the first call. clip_hi is a
// creation-time constant as well.
// Activations are NHWC (conv) / row-major [N, I] (linear), the layouts the module layer makes;
// conv weights are created with format `any` and reordered per call from the user's OIHW /
// goihw (the reorder also computes the compensation term for the src zero point, the sum of
// weights per output channel). Linear runs as a matmul (oneDNN 2.6's inner product has no zero
// points) on the user's [O, I] weights seen as [I, O] with strides (1, I), without a reorder:
// measured on the CNN's fc1 (3136 -> 128), reordering into the `any` layout on every call cost
// 0.136 ms at batch 1 against 0.026 ms without it, and 0.48 against 0.39 ms at batch 64.
#include <array>
#include <cstring>
#include <memory>
#include <optional>

#include "kernels/cpu/onednn_common.h"
#include "kernels/qconv.h"

namespace tb::kernels {
namespace {

using dnnl::memory;
namespace on = onednn;
using dt = memory::data_type;
using tag = memory::format_tag;

void* mut(const void* p) { return const_cast<void*>(p); }

// The fused add's binary post-ops (qattr): each reads one float, a {1, 1, 1, 1} tensor broadcast
// over the output: + zp_c, - zp_c, * (1 / s_out), at these positions of the chain.
memory::desc scalar_md() { return memory::desc({1, 1, 1, 1}, dt::f32, tag::abcd); }
std::array<int, 3> sum_binary_positions(const Requant& r) {
  int b = r.act != QAct::None; // the activation comes first
  return {b, b + 3, b + 6};
}
std::array<float, 3> sum_scalars(const Requant& r) {
  return {(float)r.out_zp, -(float)r.out_zp, 1.0f / r.sum->out.scale};
}

// The destination zero point oneDNN adds last: the sum's when an add is fused (the conv's own
// is then one of the post-ops), else the conv's.
int32_t dst_zp(const Requant& r) { return r.sum ? r.sum->out.zp : r.out_zp; }

// Output scales (`O` constants, or run-time values when O == 0), run-time zero points (those that
// are not 0), the activation post-op and a fused add's chain.
dnnl::primitive_attr qattr(const Requant& r, int64_t O) {
  dnnl::primitive_attr attr = on::scratchpad_attr();
  if (O > 0)
    attr.set_output_scales(1 << 1, std::vector<float>(r.multiplier, r.multiplier + O));
  else
    attr.set_output_scales(1 << 1, {DNNL_RUNTIME_F32_VAL});
  if (r.in_zp != 0) attr.set_zero_points(DNNL_ARG_SRC, 0, {DNNL_RUNTIME_S32_VAL});
  if (dst_zp(r) != 0) attr.set_zero_points(DNNL_ARG_DST, 0, {DNNL_RUNTIME_S32_VAL});
  dnnl::post_ops po;
  if (r.act == QAct::ReLU) po.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
  if (r.act == QAct::Clip) po.append_eltwise(1.0f, dnnl::algorithm::eltwise_clip, 0.0f, r.clip_hi);
  if (r.sum) {
    // The fused add of kernels/qconv.h, one float32 operation of the reference per post-op, in
    // its order: the conv's level q = clamp(round(v + zp_c), 0, 255), its value (q - zp_c) * s_c,
    // plus (residual - zp_r) * s_r (the sum post-op, reading dst), times 1 / s_out, rounded; the
    // destination zero point is the sum's. The additions of zp_c and the 1 / s_out are binary
    // post-ops reading one float each (sum_scalars): oneDNN 2.6 gives every eltwise_linear of a
    // chain the alpha and beta of the first one, so only one linear is used.
    const QSum& s = *r.sum;
    using dnnl::algorithm;
    po.append_binary(algorithm::binary_add, scalar_md());
    po.append_eltwise(1.0f, algorithm::eltwise_round, 0.0f, 0.0f);
    po.append_eltwise(1.0f, algorithm::eltwise_clip, 0.0f, 255.0f);
    po.append_binary(algorithm::binary_add, scalar_md());
    po.append_eltwise(1.0f, algorithm::eltwise_linear, s.conv.scale, 0.0f);
    po.append_sum(s.residual.scale, s.residual.zp, dt::u8);
    po.append_binary(algorithm::binary_mul, scalar_md());
    po.append_eltwise(1.0f, algorithm::eltwise_round, 0.0f, 0.0f);
  }
  attr.set_post_ops(po);
  return attr;
}

int64_t float_bits(float f) {
  int32_t i;
  std::memcpy(&i, &f, 4);
  return i;
}

// The run-time arguments: the zero points that are not 0, a fused add's scalars, and the output
// scales when `runtime_scales`. zps (2 values) and scalars (3) are the caller's storage for the
// argument memories.
void add_runtime_args(std::unordered_map<int, memory>& args, const Requant& r, int64_t O,
                      bool runtime_scales, int32_t* zps, float* scalars) {
  if (r.sum) {
    std::array<float, 3> v = sum_scalars(r);
    std::array<int, 3> pos = sum_binary_positions(r);
    for (int i = 0; i < 3; i++) {
      scalars[i] = v[i];
      args[DNNL_ARG_ATTR_MULTIPLE_POST_OP(pos[i]) | DNNL_ARG_SRC_1] =
          memory(scalar_md(), on::engine(), &scalars[i]);
    }
  }
  zps[0] = r.in_zp;
  zps[1] = dst_zp(r);
  if (runtime_scales)
    args[DNNL_ARG_ATTR_OUTPUT_SCALES] =
        memory(memory::desc({O}, dt::f32, tag::x), on::engine(), mut(r.multiplier));
  if (r.in_zp != 0)
    args[DNNL_ARG_ATTR_ZERO_POINTS | DNNL_ARG_SRC] =
        memory(memory::desc({1}, dt::s32, tag::x), on::engine(), &zps[0]);
  if (zps[1] != 0)
    args[DNNL_ARG_ATTR_ZERO_POINTS | DNNL_ARG_DST] =
        memory(memory::desc({1}, dt::s32, tag::x), on::engine(), &zps[1]);
}

// ---- convolution ----------------------------------------------------------------------------------

memory::desc qweights_md(const Conv2dGeom& g, bool any) {
  int64_t Cg = g.C / g.groups;
  if (g.groups == 1) return memory::desc({g.O, Cg, g.KH, g.KW}, dt::s8, any ? tag::any : tag::oihw);
  return memory::desc({g.groups, g.O / g.groups, Cg, g.KH, g.KW}, dt::s8,
                      any ? tag::any : tag::goihw);
}

struct QConvEntry {
  dnnl::convolution_forward prim;
  memory::desc src, dst, bias, scratchpad;
  on::Reorder weights; // user OIHW s8 -> the primitive's blocked layout (+ compensation)
};

using QConvPD = dnnl::convolution_forward::primitive_desc;

// The problem as oneDNN's operation descriptor. It must outlive every primitive descriptor made
// from it: oneDNN 2.6's implementation list (next_impl) keeps a pointer to it.
dnnl::convolution_forward::desc qconv_desc(const Conv2dGeom& g, const Requant& r) {
  memory::desc src({g.N, g.C, g.H, g.W}, dt::u8, tag::nhwc);
  memory::desc dst({g.N, g.O, g.OH, g.OW}, dt::u8, tag::nhwc);
  memory::desc bias = r.bias ? memory::desc({g.O}, dt::s32, tag::x) : memory::desc();
  // oneDNN's dilation counts the gaps between taps (PyTorch's dilation - 1).
  return dnnl::convolution_forward::desc(
      dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct, src,
      qweights_md(g, true), bias, dst, {g.stride_h, g.stride_w}, {g.dil_h - 1, g.dil_w - 1},
      {g.pad_h, g.pad_w}, {g.pad_h, g.pad_w});
}

QConvEntry make_entry(const Conv2dGeom& g, const QConvPD& pd) {
  on::count_primitive_created();
  return QConvEntry{dnnl::convolution_forward(pd), pd.src_desc(), pd.dst_desc(), pd.bias_desc(),
                    pd.scratchpad_desc(), on::Reorder(qweights_md(g, false), pd.weights_desc())};
}

// Runs entry `e` on weights already in its layout.
void run_entry(const QConvEntry& e, const Conv2dGeom& g, const uint8_t* x, const memory& w,
               const Requant& r, uint8_t* y) {
  int32_t zps[2];
  float scalars[3];
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, memory(e.src, on::engine(), mut(x))},
                                       {DNNL_ARG_WEIGHTS, w},
                                       {DNNL_ARG_DST, memory(e.dst, on::engine(), y)}};
  if (r.bias) args[DNNL_ARG_BIAS] = memory(e.bias, on::engine(), mut(r.bias));
  add_runtime_args(args, r, g.O, false, zps, scalars);
  on::execute(e.prim, e.scratchpad, std::move(args));
}

// One run of pd's primitive on zero-filled buffers (the values do not change these kernels'
// speed), for on::fastest_impl.
double time_qconv(const Conv2dGeom& g, const Requant& r, const QConvPD& pd) {
  QConvEntry e{dnnl::convolution_forward(pd), pd.src_desc(), pd.dst_desc(), pd.bias_desc(),
               pd.scratchpad_desc(), {}};
  on::Buffer x(e.src.get_size()), y(e.dst.get_size()), w(pd.weights_desc().get_size());
  std::memset(x.data(), 0, e.src.get_size());
  std::memset(w.data(), 0, pd.weights_desc().get_size());
  memory wm = w.memory(pd.weights_desc());
  return on::time_runs_ms(
      [&] { run_entry(e, g, (const uint8_t*)x.data(), wm, r, (uint8_t*)y.data()); });
}

// The primitive for (geometry, requantization constants), created once per process with the
// implementation that measured fastest on this geometry (on::fastest_impl).
const QConvEntry& qconv_entry(const Conv2dGeom& g, const Requant& r) {
  static on::Cache<QConvEntry> cache;
  on::Key key{on::num_threads(), g.N,       g.C,       g.H,     g.W,     g.O,
              g.KH,              g.KW,      g.OH,      g.OW,    g.stride_h, g.stride_w,
              g.pad_h,           g.pad_w,   g.dil_h,   g.dil_w, g.groups, r.bias != nullptr,
              (int64_t)r.act,    float_bits(r.clip_hi), r.in_zp != 0, dst_zp(r) != 0};
  for (int64_t o = 0; o < g.O; o++) key.push_back(float_bits(r.multiplier[o]));
  if (r.sum) // the fused add's constants are in the post-ops (the conv's zero point too)
    for (int64_t v : {(int64_t)float_bits(r.sum->conv.scale), (int64_t)r.sum->conv.zp,
                      (int64_t)float_bits(r.sum->residual.scale), (int64_t)r.sum->residual.zp,
                      (int64_t)float_bits(r.sum->out.scale), (int64_t)r.out_zp})
      key.push_back(v);
  return cache.get(key, [&] {
    auto desc = qconv_desc(g, r);
    dnnl::primitive_attr attr = qattr(r, g.O);
    auto make = [&] { return QConvPD(desc, attr, on::engine()); };
    int best = on::fastest_impl<QConvPD>(
        make, [&](const QConvPD& pd) { return time_qconv(g, r, pd); });
    return make_entry(g, on::at_impl(make(), best));
  });
}

void cpu_qconv2d(const Conv2dGeom& g, const uint8_t* x, const int8_t* w, const Requant& r,
                 uint8_t* y) {
  const QConvEntry& e = qconv_entry(g, r);
  std::optional<on::Buffer> w_tmp;
  run_entry(e, g, x, e.weights.input(w, w_tmp), r, y);
}

// The plan: the cached primitive, the weights reordered once into a buffer it owns, copies of
// the bias and zero points, and the primitive's argument memories made once (on::Bound).
struct CpuQConvPlan : QConvPlan {
  std::unique_ptr<on::Buffer> weights;
  std::vector<int32_t> bias;
  int32_t zps[2] = {0, 0};
  std::array<float, 3> scalars{}; // the fused add's (sum_scalars)
  std::unique_ptr<on::Bound> bound;
};

std::shared_ptr<const QConvPlan> cpu_prepare_qconv2d(const Conv2dGeom& g, const int8_t* w,
                                                     const Requant& r) {
  auto p = std::make_shared<CpuQConvPlan>();
  const QConvEntry& e = qconv_entry(g, r);
  const on::Reorder& ro = e.weights;
  p->weights = std::make_unique<on::Buffer>(ro.to.get_size());
  memory dst = p->weights->memory(ro.to);
  if (ro.needed)
    on::execute(ro.prim, ro.scratchpad_md,
                {{DNNL_ARG_FROM, memory(ro.from, on::engine(), mut(w))}, {DNNL_ARG_TO, dst}});
  else
    std::memcpy(p->weights->data(), w, ro.to.get_size());
  p->zps[0] = r.in_zp;
  p->zps[1] = dst_zp(r);
  p->bound = std::make_unique<on::Bound>(e.prim, e.scratchpad);
  p->bound->bind(DNNL_ARG_SRC, e.src);
  p->bound->bind(DNNL_ARG_DST, e.dst);
  p->bound->bind(DNNL_ARG_WEIGHTS, ro.to, p->weights->data());
  if (r.bias) {
    p->bias.assign(r.bias, r.bias + g.O);
    p->bound->bind(DNNL_ARG_BIAS, e.bias, p->bias.data());
  }
  if (r.in_zp != 0)
    p->bound->bind(DNNL_ARG_ATTR_ZERO_POINTS | DNNL_ARG_SRC, memory::desc({1}, dt::s32, tag::x),
                  &p->zps[0]);
  if (p->zps[1] != 0)
    p->bound->bind(DNNL_ARG_ATTR_ZERO_POINTS | DNNL_ARG_DST, memory::desc({1}, dt::s32, tag::x),
                  &p->zps[1]);
  if (r.sum) {
    p->scalars = sum_scalars(r);
    std::array<int, 3> pos = sum_binary_positions(r);
    for (int i = 0; i < 3; i++)
      p->bound->bind(DNNL_ARG_ATTR_MULTIPLE_POST_OP(pos[i]) | DNNL_ARG_SRC_1, scalar_md(),
                     &p->scalars[i]);
  }
  return p;
}

void cpu_run_qconv2d(const QConvPlan& plan, const uint8_t* x, const Requant& r, uint8_t* y) {
  const auto& p = dynamic_cast<const CpuQConvPlan&>(plan);
  TB_CHECK(r.in_zp == p.zps[0] && dst_zp(r) == p.zps[1],
           "qconv2d: the plan was made for zero points {} / {}, run with {} / {}", p.zps[0],
           p.zps[1], r.in_zp, dst_zp(r));
  p.bound->run({{DNNL_ARG_SRC, x}, {DNNL_ARG_DST, y}});
}

} // namespace

std::vector<std::string> cpu_qconv2d_impls(const Conv2dGeom& g, const Requant& r) {
  auto desc = qconv_desc(g, r);
  return on::impl_names(QConvPD(desc, qattr(r, g.O), on::engine()));
}

void cpu_qconv2d_at(int position, const Conv2dGeom& g, const uint8_t* x, const int8_t* w,
                    const Requant& r, uint8_t* y) {
  auto desc = qconv_desc(g, r);
  QConvEntry e = make_entry(g, on::at_impl(QConvPD(desc, qattr(r, g.O), on::engine()), position));
  std::optional<on::Buffer> w_tmp;
  run_entry(e, g, x, e.weights.input(w, w_tmp), r, y);
}

namespace {

// ---- linear (matmul) ------------------------------------------------------------------------------

struct QLinearEntry {
  dnnl::matmul prim;
  memory::desc src, weights, dst, bias, scratchpad; // weights: the user's [O, I] as [I, O]
};

void cpu_qlinear(int64_t N, int64_t I, int64_t O, const uint8_t* x, const int8_t* w,
                 const Requant& r, uint8_t* y) {
  static on::Cache<QLinearEntry> cache;
  bool with_bias = r.bias != nullptr;
  on::Key key{on::num_threads(), N, I, O, with_bias, (int64_t)r.act, float_bits(r.clip_hi),
              r.in_zp != 0, r.out_zp != 0};
  const QLinearEntry& e = cache.get(key, [&] {
    memory::desc src({N, I}, dt::u8, tag::ab), dst({N, O}, dt::u8, tag::ab);
    memory::desc user_w({I, O}, dt::s8, memory::dims{1, I});
    memory::desc bias = with_bias ? memory::desc({1, O}, dt::s32, tag::ab) : memory::desc();
    dnnl::matmul::desc desc(src, user_w, bias, dst);
    dnnl::matmul::primitive_desc pd(desc, qattr(r, 0), on::engine());
    on::count_primitive_created();
    return QLinearEntry{dnnl::matmul(pd), src, user_w, dst, bias, pd.scratchpad_desc()};
  });
  int32_t zps[2];
  float scalars[3];
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, memory(e.src, on::engine(), mut(x))},
                                       {DNNL_ARG_WEIGHTS, memory(e.weights, on::engine(), mut(w))},
                                       {DNNL_ARG_DST, memory(e.dst, on::engine(), y)}};
  if (with_bias) args[DNNL_ARG_BIAS] = memory(e.bias, on::engine(), mut(r.bias));
  add_runtime_args(args, r, O, true, zps, scalars);
  on::execute(e.prim, e.scratchpad, std::move(args));
}

} // namespace

const QConvKernels QConvKernels::cpu = {.conv2d = cpu_qconv2d,
                                        .prepare_conv2d = cpu_prepare_qconv2d,
                                        .run_conv2d = cpu_run_qconv2d,
                                        .linear = cpu_qlinear};

} // namespace tb::kernels
