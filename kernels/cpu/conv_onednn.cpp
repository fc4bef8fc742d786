// kernels/cpu/conv_onednn.cpp — 2-D convolution on oneDNN (float32), forward, backward-data and
// backward-weights, with primitives cached per geometry (see onednn_common.h for why).
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
#include <optional>

#include "kernels/conv.h"
#include "kernels/cpu/onednn_common.h"
#include "kernels/reduce.h"

namespace tb::kernels {
namespace {

using dnnl::memory;
namespace on = onednn;

// A user activation with its own strides, and the NHWC layout the primitives run on.
memory::desc act_md(int64_t N, int64_t C, int64_t H, int64_t W, Strides4 s) {
  return memory::desc({N, C, H, W}, memory::data_type::f32, memory::dims{s.n, s.c, s.h, s.w});
}
memory::desc nhwc_md(int64_t N, int64_t C, int64_t H, int64_t W) {
  return act_md(N, C, H, W, nhwc_strides(C, H, W));
}

// The user's OIHW weights, or [G, O/G, C/G, KH, KW] with groups; `tag` is plain or `any`.
memory::desc weights_md(const Conv2dGeom& g, bool any) {
  using tag = memory::format_tag;
  int64_t Cg = g.C / g.groups;
  if (g.groups == 1)
    return memory::desc({g.O, Cg, g.KH, g.KW}, memory::data_type::f32, any ? tag::any : tag::oihw);
  return memory::desc({g.groups, g.O / g.groups, Cg, g.KH, g.KW}, memory::data_type::f32,
                      any ? tag::any : tag::goihw);
}

memory::desc bias_md(const Conv2dGeom& g, bool with_bias) {
  if (!with_bias) return memory::desc(); // a zero desc means "no bias" to oneDNN
  return memory::desc({g.O}, memory::data_type::f32, memory::format_tag::x);
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
                                                      const memory::desc& dst, bool with_bias) {
  ConvDims d(g);
  dnnl::convolution_forward::desc desc(
      dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src,
      weights_md(g, true), bias_md(g, with_bias), dst, d.strides, d.dilates, d.pad, d.pad);
  return {desc, on::scratchpad_attr(), on::engine()};
}

// Everything that determines a primitive: which one, the thread count, geometry, both
// activation layouts, and whether there is a bias.
enum Which : int64_t { kForward = 1, kBackwardData = 2, kBackwardWeights = 3 };
on::Key make_key(Which which, const Conv2dGeom& g, Strides4 a, Strides4 b, bool with_bias) {
  return {which,       on::num_threads(), g.N,       g.C,      g.H,      g.W,      g.O,
          g.KH,        g.KW,              g.OH,      g.OW,     g.stride_h, g.stride_w, g.pad_h,
          g.pad_w,     g.dil_h,           g.dil_w,   g.groups, a.n,      a.c,      a.h,
          a.w,         b.n,               b.c,       b.h,      b.w,      with_bias};
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
};

void* mut(const void* p) { return const_cast<void*>(p); } // oneDNN memories take void*

void cpu_conv2d_forward(DType dtype, const Conv2dGeom& g, const void* x, Strides4 xs, const void* w,
                        const void* b, void* y, Strides4 ys) {
  if (dtype == kFloat64) return Conv2dKernels::ref.forward(dtype, g, x, xs, w, b, y, ys);
  TB_CHECK(dtype == kFloat32, "cpu_conv2d_forward: no kernel for dtype {}", dtype);
  static on::Cache<ForwardEntry> cache;
  const ForwardEntry& e = cache.get(make_key(kForward, g, xs, ys, b != nullptr), [&] {
    memory::desc src = nhwc_md(g.N, g.C, g.H, g.W), dst = nhwc_md(g.N, g.O, g.OH, g.OW);
    auto pd = forward_pd(g, src, dst, b != nullptr);
    on::count_primitive_created();
    return ForwardEntry{dnnl::convolution_forward(pd), bias_md(g, b != nullptr),
                        pd.scratchpad_desc(), on::Reorder(act_md(g.N, g.C, g.H, g.W, xs), src),
                        on::Reorder(weights_md(g, false), pd.weights_desc()),
                        on::Reorder(dst, act_md(g.N, g.O, g.OH, g.OW, ys))};
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
  TB_CHECK(dtype == kFloat32, "cpu_conv2d_backward_data: no kernel for dtype {}", dtype);
  static on::Cache<BackwardDataEntry> cache;
  const BackwardDataEntry& e = cache.get(make_key(kBackwardData, g, dxs, dys, false), [&] {
    memory::desc diff_src = nhwc_md(g.N, g.C, g.H, g.W), diff_dst = nhwc_md(g.N, g.O, g.OH, g.OW);
    ConvDims d(g);
    dnnl::convolution_backward_data::desc desc(dnnl::algorithm::convolution_direct, diff_src,
                                               weights_md(g, true), diff_dst, d.strides,
                                               d.dilates, d.pad, d.pad);
    auto hint = forward_pd(g, diff_src, diff_dst, false);
    dnnl::convolution_backward_data::primitive_desc pd(desc, on::scratchpad_attr(), on::engine(),
                                                       hint);
    on::count_primitive_created();
    return BackwardDataEntry{dnnl::convolution_backward_data(pd), pd.scratchpad_desc(),
                             on::Reorder(act_md(g.N, g.O, g.OH, g.OW, dys), diff_dst),
                             on::Reorder(weights_md(g, false), pd.weights_desc()),
                             on::Reorder(diff_src, act_md(g.N, g.C, g.H, g.W, dxs))};
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
  TB_CHECK(dtype == kFloat32, "cpu_conv2d_backward_weights: no kernel for dtype {}", dtype);
  static on::Cache<BackwardWeightsEntry> cache;
  // db = the sum of dy over n, h, w. oneDNN 2.6 computes it in plain (SSE) C++ loops, measured as
  // slow as the weight gradient itself for the Fashion-MNIST layers; for NHWC dy it is a column sum
  // of a [N H W, O] matrix, which tb's reduction kernel does in one vectorised sweep.
  bool own_db = db != nullptr && dys == nhwc_strides(g.O, g.OH, g.OW);
  bool with_bias = db != nullptr && !own_db;
  const BackwardWeightsEntry& e = cache.get(make_key(kBackwardWeights, g, xs, dys, with_bias), [&] {
    memory::desc src = nhwc_md(g.N, g.C, g.H, g.W), diff_dst = nhwc_md(g.N, g.O, g.OH, g.OW);
    ConvDims d(g);
    dnnl::convolution_backward_weights::desc desc(
        dnnl::algorithm::convolution_direct, src, weights_md(g, true), bias_md(g, with_bias),
        diff_dst, d.strides, d.dilates, d.pad, d.pad);
    auto hint = forward_pd(g, src, diff_dst, with_bias);
    dnnl::convolution_backward_weights::primitive_desc pd(desc, on::scratchpad_attr(),
                                                          on::engine(), hint);
    on::count_primitive_created();
    return BackwardWeightsEntry{dnnl::convolution_backward_weights(pd), bias_md(g, with_bias),
                                pd.scratchpad_desc(),
                                on::Reorder(act_md(g.N, g.C, g.H, g.W, xs), src),
                                on::Reorder(act_md(g.N, g.O, g.OH, g.OW, dys), diff_dst),
                                on::Reorder(pd.diff_weights_desc(), weights_md(g, false))};
  });
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
