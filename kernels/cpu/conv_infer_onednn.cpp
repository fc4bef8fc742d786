// kernels/cpu/conv_infer_onednn.cpp — the inference convolution (kernels/conv_infer.h) as ONE
// oneDNN primitive: convolution_forward (forward_inference) with the residual add as a `sum`
// post-op and the activation as an `eltwise` post-op, so y is written once and never re-read.
//
//   y = act(conv(x, w) + b [+ r]):  post-ops [sum(1.0)] [eltwise(act)]
//
// prepare() creates the primitive (weights format `any`: oneDNN picks its blocked layout) and
// reorders the weights into that layout ONCE, into a buffer the plan owns; run() only executes.
// The training kernel (conv_onednn.cpp) instead reorders the user's OIHW weights on every call.
// Activations: y is NHWC (channels-last), the layout the fast jit/brgconv kernels run on; an x
// in another layout goes through a reorder built in prepare(). The sum post-op adds what y holds
// before the primitive runs, so run() first copies r into y (skipped when r is y).
#include <algorithm>
#include <cstring>
#include <memory>
#include <optional>

#include "kernels/conv_infer.h"
#include "kernels/cpu/onednn_common.h"

namespace tb::kernels {
namespace {

using dnnl::memory;
namespace on = onednn;

memory::desc act_md(int64_t N, int64_t C, int64_t H, int64_t W, Strides4 s) {
  return memory::desc({N, C, H, W}, memory::data_type::f32, memory::dims{s.n, s.c, s.h, s.w});
}

// The user's OIHW weights ([G, O/G, C/G, KH, KW] with groups), or `any` for the primitive.
memory::desc weights_md(const Conv2dGeom& g, bool any) {
  using tag = memory::format_tag;
  int64_t Cg = g.C / g.groups;
  if (g.groups == 1)
    return memory::desc({g.O, Cg, g.KH, g.KW}, memory::data_type::f32, any ? tag::any : tag::oihw);
  return memory::desc({g.groups, g.O / g.groups, Cg, g.KH, g.KW}, memory::data_type::f32,
                      any ? tag::any : tag::goihw);
}

// (algorithm, alpha, beta) of oneDNN's eltwise for each activation; same formulas as the
// reference (silu = swish with alpha 1; relu6 = clip to [0, 6]).
struct Eltwise {
  dnnl::algorithm alg;
  float alpha, beta;
};
Eltwise eltwise_of(PostAct a) {
  switch (a) {
    case PostAct::ReLU: return {dnnl::algorithm::eltwise_relu, 0.0f, 0.0f};
    case PostAct::ReLU6: return {dnnl::algorithm::eltwise_clip, 0.0f, 6.0f};
    case PostAct::Hardswish: return {dnnl::algorithm::eltwise_hardswish, 0.0f, 0.0f};
    case PostAct::SiLU: return {dnnl::algorithm::eltwise_swish, 1.0f, 0.0f};
    case PostAct::None: break;
  }
  throw Error("conv_infer: PostAct::None has no eltwise");
}

struct CpuPlan : ConvInferPlan {
  ConvInferDesc d;
  dnnl::convolution_forward prim;
  memory::desc src, weights, bias, dst, scratchpad;
  on::Reorder src_reorder;                 // user x -> NHWC (a no-op for NHWC x)
  std::unique_ptr<on::Buffer> w_buf, b_buf; // weights in the primitive's layout; bias copy
  std::unique_ptr<on::Bound> bound;         // the primitive with its argument memories
};

// The residual add as a sum post-op and the activation as an eltwise one.
dnnl::primitive_attr infer_attr(const ConvInferDesc& d) {
  dnnl::post_ops ops;
  if (d.residual) ops.append_sum(1.0f);
  if (d.act != PostAct::None) {
    Eltwise e = eltwise_of(d.act);
    ops.append_eltwise(1.0f, e.alg, e.alpha, e.beta);
  }
  dnnl::primitive_attr attr = on::scratchpad_attr();
  attr.set_post_ops(ops);
  return attr;
}

// The problem. oneDNN's dilation counts the gaps between taps (PyTorch's dilation - 1); symmetric
// padding. It must outlive the primitive descriptors made from it (on::fastest_impl).
dnnl::convolution_forward::desc infer_desc(const ConvInferDesc& d, const memory::desc& src,
                                           const memory::desc& bias, const memory::desc& dst) {
  const Conv2dGeom& g = d.g;
  return dnnl::convolution_forward::desc(
      dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct, src,
      weights_md(g, true), bias, dst, {g.stride_h, g.stride_w}, {g.dil_h - 1, g.dil_w - 1},
      {g.pad_h, g.pad_w}, {g.pad_h, g.pad_w});
}

// position: which of oneDNN's implementations to use (see on::fastest_impl); -1 = the fastest.
std::shared_ptr<ConvInferPlan> prepare_at(const ConvInferDesc& d, const float* w, const float* b,
                                          int position) {
  const Conv2dGeom& g = d.g;
  TB_CHECK(d.ys == nhwc_strides(g.O, g.OH, g.OW),
           "conv_infer: the output must be channels-last (NHWC strides)");
  auto p = std::make_shared<CpuPlan>();
  p->d = d;
  p->src = act_md(g.N, g.C, g.H, g.W, nhwc_strides(g.C, g.H, g.W));
  p->dst = act_md(g.N, g.O, g.OH, g.OW, d.ys);
  p->bias = b ? memory::desc({g.O}, memory::data_type::f32, memory::format_tag::x) : memory::desc();

  dnnl::primitive_attr attr = infer_attr(d);
  dnnl::convolution_forward::desc desc = infer_desc(d, p->src, p->bias, p->dst);
  // Of the implementations oneDNN offers, the one that measures fastest on this shape
  // (on::fastest_impl; zero-filled buffers: the values do not change the speed).
  using PD = dnnl::convolution_forward::primitive_desc;
  auto make = [&] { return PD(desc, attr, on::engine()); };
  auto time_pd = [&](const PD& cand) {
    dnnl::convolution_forward prim(cand);
    on::Buffer x(cand.src_desc().get_size()), w(cand.weights_desc().get_size()),
        bias(cand.bias_desc().get_size()), y(cand.dst_desc().get_size());
    std::memset(x.data(), 0, cand.src_desc().get_size());
    std::memset(w.data(), 0, cand.weights_desc().get_size());
    std::memset(y.data(), 0, cand.dst_desc().get_size()); // the sum post-op reads it
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, x.memory(cand.src_desc())},
                                         {DNNL_ARG_WEIGHTS, w.memory(cand.weights_desc())},
                                         {DNNL_ARG_DST, y.memory(cand.dst_desc())}};
    if (b) args[DNNL_ARG_BIAS] = bias.memory(cand.bias_desc());
    return on::time_runs_ms([&] { on::execute(prim, cand.scratchpad_desc(), args); });
  };
  PD pd = on::at_impl(make(), position >= 0 ? position : on::fastest_impl<PD>(make, time_pd));
  p->prim = dnnl::convolution_forward(pd);
  on::count_primitive_created();
  p->weights = pd.weights_desc();
  p->scratchpad = pd.scratchpad_desc();
  p->src_reorder = on::Reorder(act_md(g.N, g.C, g.H, g.W, d.xs), p->src);

  // The weights, once, into the primitive's layout (and the bias into a buffer of our own).
  p->w_buf = std::make_unique<on::Buffer>(p->weights.get_size());
  on::Reorder w_reorder(weights_md(g, false), p->weights);
  memory w_dst = p->w_buf->memory(p->weights);
  memory w_src(weights_md(g, false), on::engine(), const_cast<float*>(w));
  if (w_reorder.needed)
    on::execute(w_reorder.prim, w_reorder.scratchpad_md,
                {{DNNL_ARG_FROM, w_src}, {DNNL_ARG_TO, w_dst}});
  else
    std::memcpy(p->w_buf->data(), w, p->weights.get_size());
  if (b) {
    p->b_buf = std::make_unique<on::Buffer>(g.O * sizeof(float));
    std::memcpy(p->b_buf->data(), b, g.O * sizeof(float));
  }
  p->bound = std::make_unique<on::Bound>(p->prim, p->scratchpad);
  p->bound->bind(DNNL_ARG_SRC, p->src);
  p->bound->bind(DNNL_ARG_DST, p->dst);
  p->bound->bind(DNNL_ARG_WEIGHTS, p->weights, p->w_buf->data());
  if (p->b_buf) p->bound->bind(DNNL_ARG_BIAS, p->bias, p->b_buf->data());
  return p;
}

std::shared_ptr<ConvInferPlan> cpu_prepare(const ConvInferDesc& d, const float* w,
                                           const float* b) {
  return prepare_at(d, w, b, -1);
}

void cpu_run(const ConvInferPlan& plan, const float* x, const float* r, float* y) {
  const auto& p = dynamic_cast<const CpuPlan&>(plan);
  const Conv2dGeom& g = p.d.g;
  if (p.d.residual && r != y) {
    // Large at big batches (ResNet's 64×56×56 maps at batch 64: 51 MB): split over the threads.
    const int64_t n = g.N * g.O * g.OH * g.OW, chunk = 1 << 16;
#pragma omp parallel for schedule(static) if (n > chunk)
    for (int64_t i = 0; i < n; i += chunk)
      std::memcpy(y + i, r + i, (size_t)std::min(chunk, n - i) * sizeof(float));
  }
  std::optional<on::Buffer> x_tmp;
  const void* xs = p.src_reorder.needed ? p.src_reorder.input(x, x_tmp).get_data_handle() : x;
  p.bound->run({{DNNL_ARG_SRC, xs}, {DNNL_ARG_DST, y}});
}

} // namespace

std::vector<std::string> cpu_conv_infer_impls(const ConvInferDesc& d) {
  const Conv2dGeom& g = d.g;
  auto desc = infer_desc(d, act_md(g.N, g.C, g.H, g.W, nhwc_strides(g.C, g.H, g.W)),
                         memory::desc({g.O}, memory::data_type::f32, memory::format_tag::x),
                         act_md(g.N, g.O, g.OH, g.OW, d.ys));
  return on::impl_names(dnnl::convolution_forward::primitive_desc(desc, infer_attr(d), on::engine()));
}

std::shared_ptr<ConvInferPlan> cpu_conv_infer_prepare_at(int position, const ConvInferDesc& d,
                                                         const float* w, const float* b) {
  return prepare_at(d, w, b, position);
}

const ConvInferKernels ConvInferKernels::cpu = {.prepare = cpu_prepare, .run = cpu_run};

} // namespace tb::kernels
