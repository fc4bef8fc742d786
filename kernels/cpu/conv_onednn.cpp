// kernels/cpu/conv_onednn.cpp — 2-D convolution on oneDNN (float32, bfloat16), forward,
// backward-data and backward-weights, with primitives cached per geometry (see onednn_common.h).
//
// Layouts: every primitive runs on channels-last (NHWC) activations, the layout the op layer
// produces and the one oneDNN's fast brgconv/jit kernels want. Measured here: NCHW on both sides
// falls back to oneDNN's gemm path, and mixed NCHW/NHWC to its naive reference loops (ref:any),
// so a user activation in any other layout goes through a cached reorder into an NHWC temporary
// (and an NCHW gradient comes back through one) instead.
// Weights are the user's OIHW (goihw with groups: the same bytes seen as [G, O/G, C/G, KH, KW]);
// each primitive is created with weights format `any` so oneDNN picks its blocked layout, and a
// cached reorder converts user weights into it (forward, backward-data) or its weight gradient
// back to OIHW (backward-weights). Weights are small next to activations, so the per-call reorder
// costs little.
// float64: oneDNN has none; the reference loops are the float64 kernel (what gradchecks use).
// bfloat16: every tensor (x, w, b, y and the gradients) in bfloat16, accumulation in float32
// inside oneDNN, each output rounded once; on this CPU (Sapphire Rapids) oneDNN 2.6.3 picks
// brgconv:avx512_core_amx_bf16 forward and jit:avx512_core_amx_bf16 for both backward passes
// (jit_dw / brdgmm_dw for depthwise). Two exceptions in backward-weights, both measured: 1x1
// convolutions run as one AMX matmul, and layers for which oneDNN has only a slow bfloat16
// kernel run through float32 (see cpu_conv2d_backward_weights).
// float16: oneDNN 2.6.3 has no float16 convolution on the CPU (creating an f16 primitive fails
// with "could not create a primitive descriptor iterator", also on this avx512_fp16 CPU), so
// float16 runs as float32: the half inputs are converted exactly to float32 temporaries, the
// float32 primitive runs, and each output is rounded once to float16. Correct, not faster.
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "kernels/conv.h"
#include "kernels/matmul.h"
#include "kernels/cpu/half.h"
#include "kernels/cpu/onednn_common.h"
#include "kernels/reduce.h"

namespace tb::kernels {
namespace {

using dnnl::memory;
namespace on = onednn;

using dt = memory::data_type;
dt dnnl_dtype(DType t) { return t == kBFloat16 ? dt::bf16 : dt::f32; }

// A user activation with its own strides, and the NHWC layout the primitives run on.
memory::desc act_md(int64_t N, int64_t C, int64_t H, int64_t W, Strides4 s, dt t) {
  return memory::desc({N, C, H, W}, t, memory::dims{s.n, s.c, s.h, s.w});
}
memory::desc nhwc_md(int64_t N, int64_t C, int64_t H, int64_t W, dt t) {
  return act_md(N, C, H, W, nhwc_strides(C, H, W), t);
}

// The user's OIHW weights, or [G, O/G, C/G, KH, KW] with groups; `tag` is plain or `any`.
memory::desc weights_md(const Conv2dGeom& g, bool any, dt t) {
  using tag = memory::format_tag;
  int64_t Cg = g.C / g.groups;
  if (g.groups == 1) return memory::desc({g.O, Cg, g.KH, g.KW}, t, any ? tag::any : tag::oihw);
  return memory::desc({g.groups, g.O / g.groups, Cg, g.KH, g.KW}, t, any ? tag::any : tag::goihw);
}

memory::desc bias_md(const Conv2dGeom& g, bool with_bias, dt t) {
  if (!with_bias) return memory::desc(); // a zero desc means "no bias" to oneDNN
  return memory::desc({g.O}, t, memory::format_tag::x);
}

// oneDNN's dilation counts the gaps between taps: PyTorch's dilation - 1. Right padding equals
// left padding; oneDNN then checks OH = (H + 2 pad - dil (KH - 1) - 1) / stride + 1 with floor
// division, exactly PyTorch's rule.
struct ConvDims {
  memory::dims strides, dilates, pad;
  explicit ConvDims(const Conv2dGeom& g)
      : strides{g.stride_h, g.stride_w}, dilates{g.dil_h - 1, g.dil_w - 1}, pad{g.pad_h, g.pad_w} {}
};

dnnl::convolution_forward::primitive_desc forward_pd(const Conv2dGeom& g, const memory::desc& src,
                                                      const memory::desc& dst, bool with_bias,
                                                      dt t) {
  ConvDims d(g);
  dnnl::convolution_forward::desc desc(
      dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src,
      weights_md(g, true, t), bias_md(g, with_bias, t), dst, d.strides, d.dilates, d.pad, d.pad);
  return {desc, on::scratchpad_attr(), on::engine()};
}

// Everything that determines a primitive: which one, the thread count, geometry, both
// activation layouts, whether there is a bias, and the data type.
enum Which : int64_t { kForward = 1, kBackwardData = 2, kBackwardWeights = 3 };
on::Key make_key(Which which, const Conv2dGeom& g, Strides4 a, Strides4 b, bool with_bias, dt t) {
  return {which,       on::num_threads(), g.N,       g.C,      g.H,      g.W,      g.O,
          g.KH,        g.KW,              g.OH,      g.OW,     g.stride_h, g.stride_w, g.pad_h,
          g.pad_w,     g.dil_h,           g.dil_w,   g.groups, a.n,      a.c,      a.h,
          a.w,         b.n,               b.c,       b.h,      b.w,      with_bias, (int64_t)t};
}

// ---- float16 as float32 (see the top of the file) ------------------------------------------

// Elements from the first to one past the last of an N×C×H×W tensor with strides s (>= 0).
int64_t span4(int64_t N, int64_t C, int64_t H, int64_t W, Strides4 s) {
  if (N * C * H * W == 0) return 0;
  return 1 + (N - 1) * s.n + (C - 1) * s.c + (H - 1) * s.h + (W - 1) * s.w;
}
// float16 <-> float32 per element: cpu_half::f16_to_f32 / f32_to_f16 (kernels/cpu/half.h: the
// compiler's _Float16, vectorised F16C / AVX512-FP16 conversions, round to nearest even).

// A float32 copy of n float16 values (same element offsets, so the same strides address it),
// in `buf` (n floats).
void* f16_to_f32(const void* src, on::Buffer& buf, int64_t n) {
  const uint16_t* h = (const uint16_t*)src;
  float* f = (float*)buf.data();
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; i++) f[i] = cpu_half::f16_to_f32(h[i]);
  return f;
}
void* bf16_to_f32(const void* src, on::Buffer& buf, int64_t n) {
  const uint16_t* b = (const uint16_t*)src;
  uint32_t* f = (uint32_t*)buf.data(); // a bfloat16 is the top half of a float32
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; i++) f[i] = (uint32_t)b[i] << 16;
  return f;
}
void f32_to_f16(const void* src, void* dst, int64_t n) {
  const float* f = (const float*)src;
  uint16_t* h = (uint16_t*)dst;
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; i++) h[i] = cpu_half::f32_to_f16(f[i]);
}
// Writes the elements of an N×C×H×W float32 tensor (strides s) to a float16 one (same strides).
void f32_to_f16_4d(const float* f, uint16_t* h, int64_t N, int64_t C, int64_t H, int64_t W,
                   Strides4 s) {
#pragma omp parallel for collapse(2) schedule(static) if (N * C * H * W > 32768)
  for (int64_t n = 0; n < N; n++)
    for (int64_t c = 0; c < C; c++)
      for (int64_t y = 0; y < H; y++)
        for (int64_t x = 0; x < W; x++) {
          int64_t i = n * s.n + c * s.c + y * s.h + x * s.w;
          h[i] = cpu_half::f32_to_f16(f[i]);
        }
}

struct ForwardEntry {
  dnnl::convolution_forward prim;
  memory::desc bias, scratchpad;
  on::Reorder src, weights, dst; // user x -> NHWC, user OIHW -> primitive's, NHWC -> user y
};

struct BackwardDataEntry {
  dnnl::convolution_backward_data prim;
  memory::desc scratchpad;
  on::Reorder diff_dst, weights, diff_src; // user dy -> NHWC, OIHW -> primitive's, NHWC -> dx
};

struct BackwardWeightsEntry {
  dnnl::convolution_backward_weights prim;
  memory::desc diff_bias, scratchpad;
  on::Reorder src, diff_dst, diff_weights; // user x, dy -> NHWC; primitive's -> user OIHW dw
  bool via_f32 = false; // bfloat16 run as float32 instead (see cpu_conv2d_backward_weights)
};

void* mut(const void* p) { return const_cast<void*>(p); } // oneDNN memories take void*

void cpu_conv2d_forward(DType dtype, const Conv2dGeom& g, const void* x, Strides4 xs, const void* w,
                        const void* b, void* y, Strides4 ys) {
  if (dtype == kFloat64) return Conv2dKernels::ref.forward(dtype, g, x, xs, w, b, y, ys);
  if (dtype == kFloat16) {
    int64_t nx = span4(g.N, g.C, g.H, g.W, xs), nw = g.O * (g.C / g.groups) * g.KH * g.KW;
    on::Buffer xf(nx * sizeof(float)), wf(nw * sizeof(float)), bf(b ? g.O * sizeof(float) : 0);
    on::Buffer yf(span4(g.N, g.O, g.OH, g.OW, ys) * sizeof(float));
    cpu_conv2d_forward(kFloat32, g, f16_to_f32(x, xf, nx), xs, f16_to_f32(w, wf, nw),
                       b ? f16_to_f32(b, bf, g.O) : nullptr, yf.data(), ys);
    f32_to_f16_4d((const float*)yf.data(), (uint16_t*)y, g.N, g.O, g.OH, g.OW, ys);
    return;
  }
  TB_CHECK(dtype == kFloat32 || dtype == kBFloat16, "cpu_conv2d_forward: no kernel for dtype {}",
           dtype);
  dt t = dnnl_dtype(dtype);
  static on::Cache<ForwardEntry> cache;
  const ForwardEntry& e = cache.get(make_key(kForward, g, xs, ys, b != nullptr, t), [&] {
    memory::desc src = nhwc_md(g.N, g.C, g.H, g.W, t), dst = nhwc_md(g.N, g.O, g.OH, g.OW, t);
    auto pd = forward_pd(g, src, dst, b != nullptr, t);
    on::count_primitive_created();
    return ForwardEntry{dnnl::convolution_forward(pd), bias_md(g, b != nullptr, t),
                        pd.scratchpad_desc(), on::Reorder(act_md(g.N, g.C, g.H, g.W, xs, t), src),
                        on::Reorder(weights_md(g, false, t), pd.weights_desc()),
                        on::Reorder(dst, act_md(g.N, g.O, g.OH, g.OW, ys, t))};
  });
  std::optional<on::Buffer> x_tmp, w_tmp, y_tmp;
  memory y_mem = e.dst.output(y, y_tmp);
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, e.src.input(x, x_tmp)},
                                       {DNNL_ARG_WEIGHTS, e.weights.input(w, w_tmp)},
                                       {DNNL_ARG_DST, y_mem}};
  if (b) args[DNNL_ARG_BIAS] = memory(e.bias, on::engine(), mut(b));
  on::execute(e.prim, e.scratchpad, std::move(args));
  e.dst.commit(y_mem, y);
}

void cpu_conv2d_backward_data(DType dtype, const Conv2dGeom& g, const void* dy, Strides4 dys,
                              const void* w, void* dx, Strides4 dxs) {
  if (dtype == kFloat64) return Conv2dKernels::ref.backward_data(dtype, g, dy, dys, w, dx, dxs);
  if (dtype == kFloat16) {
    int64_t ndy = span4(g.N, g.O, g.OH, g.OW, dys), nw = g.O * (g.C / g.groups) * g.KH * g.KW;
    on::Buffer dyf(ndy * sizeof(float)), wf(nw * sizeof(float));
    on::Buffer dxf(span4(g.N, g.C, g.H, g.W, dxs) * sizeof(float));
    cpu_conv2d_backward_data(kFloat32, g, f16_to_f32(dy, dyf, ndy), dys, f16_to_f32(w, wf, nw),
                             dxf.data(), dxs);
    f32_to_f16_4d((const float*)dxf.data(), (uint16_t*)dx, g.N, g.C, g.H, g.W, dxs);
    return;
  }
  TB_CHECK(dtype == kFloat32 || dtype == kBFloat16,
           "cpu_conv2d_backward_data: no kernel for dtype {}", dtype);
  dt t = dnnl_dtype(dtype);
  static on::Cache<BackwardDataEntry> cache;
  const BackwardDataEntry& e = cache.get(make_key(kBackwardData, g, dxs, dys, false, t), [&] {
    memory::desc diff_src = nhwc_md(g.N, g.C, g.H, g.W, t);
    memory::desc diff_dst = nhwc_md(g.N, g.O, g.OH, g.OW, t);
    ConvDims d(g);
    dnnl::convolution_backward_data::desc desc(dnnl::algorithm::convolution_direct, diff_src,
                                               weights_md(g, true, t), diff_dst, d.strides,
                                               d.dilates, d.pad, d.pad);
    auto hint = forward_pd(g, diff_src, diff_dst, false, t);
    dnnl::convolution_backward_data::primitive_desc pd(desc, on::scratchpad_attr(), on::engine(),
                                                       hint);
    on::count_primitive_created();
    return BackwardDataEntry{dnnl::convolution_backward_data(pd), pd.scratchpad_desc(),
                             on::Reorder(act_md(g.N, g.O, g.OH, g.OW, dys, t), diff_dst),
                             on::Reorder(weights_md(g, false, t), pd.weights_desc()),
                             on::Reorder(diff_src, act_md(g.N, g.C, g.H, g.W, dxs, t))};
  });
  std::optional<on::Buffer> dy_tmp, w_tmp, dx_tmp;
  memory dx_mem = e.diff_src.output(dx, dx_tmp);
  on::execute(e.prim, e.scratchpad,
              {{DNNL_ARG_DIFF_DST, e.diff_dst.input(dy, dy_tmp)},
               {DNNL_ARG_WEIGHTS, e.weights.input(w, w_tmp)},
               {DNNL_ARG_DIFF_SRC, dx_mem}});
  e.diff_src.commit(dx_mem, dx);
}

void cpu_conv2d_backward_weights(DType dtype, const Conv2dGeom& g, const void* x, Strides4 xs,
                                 const void* dy, Strides4 dys, void* dw, void* db) {
  if (dtype == kFloat64)
    return Conv2dKernels::ref.backward_weights(dtype, g, x, xs, dy, dys, dw, db);
  // float16 (always), and bfloat16 where oneDNN has only a slow kernel: x and dy to float32,
  // the float32 primitive, dw and db rounded once to the half dtype.
  auto via_f32 = [&](DType half) {
    int64_t nw = g.O * (g.C / g.groups) * g.KH * g.KW;
    int64_t nx = span4(g.N, g.C, g.H, g.W, xs), ndy = span4(g.N, g.O, g.OH, g.OW, dys);
    on::Buffer xf(nx * sizeof(float)), dyf(ndy * sizeof(float));
    on::Buffer dwf(nw * sizeof(float)), dbf(db ? g.O * sizeof(float) : 0);
    auto up = [&](const void* src, on::Buffer& buf, int64_t n) {
      return half == kFloat16 ? f16_to_f32(src, buf, n) : bf16_to_f32(src, buf, n);
    };
    cpu_conv2d_backward_weights(kFloat32, g, up(x, xf, nx), xs, up(dy, dyf, ndy), dys,
                                dwf.data(), db ? dbf.data() : nullptr);
    auto down = [&](const void* src, void* dst, int64_t n) {
      if (half == kFloat16) return f32_to_f16(src, dst, n);
      for (int64_t i = 0; i < n; i++)
        ((uint16_t*)dst)[i] = float_to_bfloat16(((const float*)src)[i]);
    };
    down(dwf.data(), dw, nw);
    if (db) down(dbf.data(), db, g.O);
  };
  if (dtype == kFloat16) return via_f32(kFloat16);
  // bfloat16 1x1 convolution (stride 1, no padding, one group) on NHWC tensors: the weight
  // gradient is one GEMM, dw [O, C] = dy^T [O, N H W] · x [N H W, C], which oneDNN's AMX matmul
  // runs 4x faster than its AMX convolution backward-weights kernel: over MobileNetV2's pointwise
  // layers (batch 64, one thread) 1.6 ms a layer for jit:avx512_core_amx_bf16 (float32's jit_1x1:
  // 0.9 ms), 0.36 ms for brg:avx512_core_amx_bf16 matmul. db = the column sums of dy,
  // accumulated in float32, rounded once.
  if (dtype == kBFloat16 && g.KH == 1 && g.KW == 1 && g.groups == 1 && g.stride_h == 1 &&
      g.stride_w == 1 && g.pad_h == 0 && g.pad_w == 0 && xs == nhwc_strides(g.C, g.H, g.W) &&
      dys == nhwc_strides(g.O, g.OH, g.OW)) {
    int64_t M = g.N * g.H * g.W;
    MatmulKernels::cpu.gemm(kBFloat16, true, false, g.O, g.C, M, 1.0, dy, g.O, 0, x, g.C, 0, 0.0,
                            dw, g.C, 0, 1);
    if (db) {
      std::vector<float> acc(g.O, 0.0f);
      const uint16_t* d = (const uint16_t*)dy;
      for (int64_t r = 0; r < M; r++)
        for (int64_t o = 0; o < g.O; o++) acc[o] += bfloat16_to_float(d[r * g.O + o]);
      for (int64_t o = 0; o < g.O; o++) ((uint16_t*)db)[o] = float_to_bfloat16(acc[o]);
    }
    return;
  }
  TB_CHECK(dtype == kFloat32 || dtype == kBFloat16,
           "cpu_conv2d_backward_weights: no kernel for dtype {}", dtype);
  dt t = dnnl_dtype(dtype);
  static on::Cache<BackwardWeightsEntry> cache;
  // db = the sum of dy over n, h, w. oneDNN 2.6 computes it in plain (SSE) C++ loops, measured as
  // slow as the weight gradient itself for the Fashion-MNIST layers; for NHWC dy it is a column sum
  // of a [N H W, O] matrix, which tb's reduction kernel does in one vectorised sweep (float32;
  // bfloat16's db comes from oneDNN, accumulated in float32 there).
  bool own_db = db != nullptr && dys == nhwc_strides(g.O, g.OH, g.OW) && dtype == kFloat32;
  bool with_bias = db != nullptr && !own_db;
  const BackwardWeightsEntry& e =
      cache.get(make_key(kBackwardWeights, g, xs, dys, with_bias, t), [&] {
    memory::desc src = nhwc_md(g.N, g.C, g.H, g.W, t);
    memory::desc diff_dst = nhwc_md(g.N, g.O, g.OH, g.OW, t);
    ConvDims d(g);
    dnnl::convolution_backward_weights::desc desc(
        dnnl::algorithm::convolution_direct, src, weights_md(g, true, t),
        bias_md(g, with_bias, t), diff_dst, d.strides, d.dilates, d.pad, d.pad);
    auto hint = forward_pd(g, src, diff_dst, with_bias, t);
    dnnl::convolution_backward_weights::primitive_desc pd(desc, on::scratchpad_attr(),
                                                          on::engine(), hint);
    on::count_primitive_created();
    // oneDNN 2.6 has no fast bfloat16 weight gradient for grouped convolutions that its depthwise
    // kernel does not take (MobileNetV2's 960-channel depthwise 3x3 at 2x2 pixels): it picks
    // jit_bf16:avx512_core_bf16, measured 90 ms against float32's 13 ms per call (batch 64, one
    // thread). Those, and any reference or gemm fallback, run through float32 instead.
    std::string impl = pd.impl_info_str();
    bool slow = t == dt::bf16 && (impl.rfind("jit_bf16:", 0) == 0 ||
                                  impl.find("ref") != std::string::npos ||
                                  impl.find("gemm") != std::string::npos);
    return BackwardWeightsEntry{dnnl::convolution_backward_weights(pd), bias_md(g, with_bias, t),
                                pd.scratchpad_desc(),
                                on::Reorder(act_md(g.N, g.C, g.H, g.W, xs, t), src),
                                on::Reorder(act_md(g.N, g.O, g.OH, g.OW, dys, t), diff_dst),
                                on::Reorder(pd.diff_weights_desc(), weights_md(g, false, t)),
                                slow};
  });
  if (e.via_f32) return via_f32(kBFloat16);
  std::optional<on::Buffer> x_tmp, dy_tmp, dw_tmp;
  memory dw_mem = e.diff_weights.output(dw, dw_tmp);
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, e.src.input(x, x_tmp)},
                                       {DNNL_ARG_DIFF_DST, e.diff_dst.input(dy, dy_tmp)},
                                       {DNNL_ARG_DIFF_WEIGHTS, dw_mem}};
  if (with_bias) args[DNNL_ARG_DIFF_BIAS] = memory(e.diff_bias, on::engine(), db);
  on::execute(e.prim, e.scratchpad, std::move(args));
  e.diff_weights.commit(dw_mem, dw);
  if (own_db) ReduceKernels::cpu.sum(kFloat32, dy, db, 1, g.N * g.OH * g.OW, g.O, 1.0);
}

} // namespace

const Conv2dKernels Conv2dKernels::cpu = {
    .forward = cpu_conv2d_forward,
    .backward_data = cpu_conv2d_backward_data,
    .backward_weights = cpu_conv2d_backward_weights,
};

} // namespace tb::kernels
