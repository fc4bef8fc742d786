// kernels/ref/conv.cpp — 2-D convolution as plain loops: the specification the oneDNN kernel is
// tested against, and the float64 kernel that gradient checks use. Slow on purpose: no blocking,
// no vectorisation, one multiply-add per loop step. Accumulation in double; float16/bfloat16 are
// read exactly and each output is rounded once (kernels/ref/half.h).
//
// Shapes: x [N, C, H, W], w [O, C/G, KH, KW], y [N, O, OH, OW]; G = groups, Cg = C/G input
// channels and Og = O/G output channels per group. Output channel o belongs to group o / Og and
// sees input channels g*Cg .. g*Cg + Cg - 1. An output pixel (oh, ow) reads input pixel
//   ih = oh*stride_h - pad_h + kh*dil_h,  iw = ow*stride_w - pad_w + kw*dil_w
// (outside the input = zero padding). Forward:
//   y[n, o, oh, ow] = b[o] + sum_{ci < Cg, kh, kw} x[n, g*Cg + ci, ih, iw] w[o, ci, kh, kw]
// The two backward kernels visit the same (output pixel, tap) pairs and scatter instead:
//   dx[n, g*Cg + ci, ih, iw] += dy[n, o, oh, ow] w[o, ci, kh, kw]
//   dw[o, ci, kh, kw]        += dy[n, o, oh, ow] x[n, g*Cg + ci, ih, iw]
//   db[o]                    += dy[n, o, oh, ow]
#include <vector>

#include "kernels/conv.h"
#include "kernels/ref/half.h"

namespace tb::kernels {
namespace {

using ref_half::BF16;
using ref_half::F16;
using ref_half::load;
using ref_half::store;

// Calls f(ci, kh, kw, ih, iw) for every tap of output pixel (oh, ow) that lands inside the input.
template <typename F>
inline void for_each_tap(const Conv2dGeom& g, int64_t oh, int64_t ow, F f) {
  int64_t Cg = g.C / g.groups;
  for (int64_t ci = 0; ci < Cg; ci++)
    for (int64_t kh = 0; kh < g.KH; kh++) {
      int64_t ih = oh * g.stride_h - g.pad_h + kh * g.dil_h;
      if (ih < 0 || ih >= g.H) continue;
      for (int64_t kw = 0; kw < g.KW; kw++) {
        int64_t iw = ow * g.stride_w - g.pad_w + kw * g.dil_w;
        if (iw < 0 || iw >= g.W) continue;
        f(ci, kh, kw, ih, iw);
      }
    }
}

inline int64_t w_index(const Conv2dGeom& g, int64_t o, int64_t ci, int64_t kh, int64_t kw) {
  return ((o * (g.C / g.groups) + ci) * g.KH + kh) * g.KW + kw;
}

template <typename T>
void forward(const Conv2dGeom& g, const T* x, Strides4 xs, const T* w, const T* b, T* y,
             Strides4 ys) {
  int64_t Cg = g.C / g.groups, Og = g.O / g.groups;
  for (int64_t n = 0; n < g.N; n++)
    for (int64_t o = 0; o < g.O; o++) {
      int64_t c0 = (o / Og) * Cg; // first input channel of o's group
      for (int64_t oh = 0; oh < g.OH; oh++)
        for (int64_t ow = 0; ow < g.OW; ow++) {
          double acc = b ? load(b[o]) : 0.0;
          for_each_tap(g, oh, ow, [&](int64_t ci, int64_t kh, int64_t kw, int64_t ih, int64_t iw) {
            double xv = load(x[n * xs.n + (c0 + ci) * xs.c + ih * xs.h + iw * xs.w]);
            acc += xv * load(w[w_index(g, o, ci, kh, kw)]);
          });
          store(y[n * ys.n + o * ys.c + oh * ys.h + ow * ys.w], acc);
        }
    }
}

template <typename T>
void backward_data(const Conv2dGeom& g, const T* dy, Strides4 dys, const T* w, T* dx,
                   Strides4 dxs) {
  // Accumulate in a dense double NCHW buffer, then write dx once (dx's old values are ignored).
  std::vector<double> acc(g.N * g.C * g.H * g.W, 0.0);
  Strides4 as = nchw_strides(g.C, g.H, g.W);
  int64_t Cg = g.C / g.groups, Og = g.O / g.groups;
  for (int64_t n = 0; n < g.N; n++)
    for (int64_t o = 0; o < g.O; o++) {
      int64_t c0 = (o / Og) * Cg;
      for (int64_t oh = 0; oh < g.OH; oh++)
        for (int64_t ow = 0; ow < g.OW; ow++) {
          double d = load(dy[n * dys.n + o * dys.c + oh * dys.h + ow * dys.w]);
          for_each_tap(g, oh, ow, [&](int64_t ci, int64_t kh, int64_t kw, int64_t ih, int64_t iw) {
            acc[n * as.n + (c0 + ci) * as.c + ih * as.h + iw * as.w] +=
                d * load(w[w_index(g, o, ci, kh, kw)]);
          });
        }
    }
  for (int64_t n = 0; n < g.N; n++)
    for (int64_t c = 0; c < g.C; c++)
      for (int64_t ih = 0; ih < g.H; ih++)
        for (int64_t iw = 0; iw < g.W; iw++)
          store(dx[n * dxs.n + c * dxs.c + ih * dxs.h + iw * dxs.w],
                acc[n * as.n + c * as.c + ih * as.h + iw * as.w]);
}

template <typename T>
void backward_weights(const Conv2dGeom& g, const T* x, Strides4 xs, const T* dy, Strides4 dys,
                      T* dw, T* db) {
  int64_t Cg = g.C / g.groups, Og = g.O / g.groups;
  std::vector<double> acc_w(g.O * Cg * g.KH * g.KW, 0.0), acc_b(g.O, 0.0);
  for (int64_t n = 0; n < g.N; n++)
    for (int64_t o = 0; o < g.O; o++) {
      int64_t c0 = (o / Og) * Cg;
      for (int64_t oh = 0; oh < g.OH; oh++)
        for (int64_t ow = 0; ow < g.OW; ow++) {
          double d = load(dy[n * dys.n + o * dys.c + oh * dys.h + ow * dys.w]);
          acc_b[o] += d;
          for_each_tap(g, oh, ow, [&](int64_t ci, int64_t kh, int64_t kw, int64_t ih, int64_t iw) {
            acc_w[w_index(g, o, ci, kh, kw)] +=
                d * load(x[n * xs.n + (c0 + ci) * xs.c + ih * xs.h + iw * xs.w]);
          });
        }
    }
  for (size_t i = 0; i < acc_w.size(); i++) store(dw[i], acc_w[i]);
  if (db)
    for (int64_t o = 0; o < g.O; o++) store(db[o], acc_b[o]);
}

void ref_conv2d_forward(DType dtype, const Conv2dGeom& g, const void* x, Strides4 xs, const void* w,
                        const void* b, void* y, Strides4 ys) {
  switch (dtype) {
    case kFloat32:
      return forward(g, (const float*)x, xs, (const float*)w, (const float*)b, (float*)y, ys);
    case kFloat64:
      return forward(g, (const double*)x, xs, (const double*)w, (const double*)b, (double*)y, ys);
    case kBFloat16:
      return forward(g, (const BF16*)x, xs, (const BF16*)w, (const BF16*)b, (BF16*)y, ys);
    case kFloat16:
      return forward(g, (const F16*)x, xs, (const F16*)w, (const F16*)b, (F16*)y, ys);
    default: TB_CHECK(false, "ref_conv2d_forward: no kernel for dtype {}", dtype);
  }
}

void ref_conv2d_backward_data(DType dtype, const Conv2dGeom& g, const void* dy, Strides4 dys,
                              const void* w, void* dx, Strides4 dxs) {
  switch (dtype) {
    case kFloat32:
      return backward_data(g, (const float*)dy, dys, (const float*)w, (float*)dx, dxs);
    case kFloat64:
      return backward_data(g, (const double*)dy, dys, (const double*)w, (double*)dx, dxs);
    case kBFloat16:
      return backward_data(g, (const BF16*)dy, dys, (const BF16*)w, (BF16*)dx, dxs);
    case kFloat16:
      return backward_data(g, (const F16*)dy, dys, (const F16*)w, (F16*)dx, dxs);
    default: TB_CHECK(false, "ref_conv2d_backward_data: no kernel for dtype {}", dtype);
  }
}

void ref_conv2d_backward_weights(DType dtype, const Conv2dGeom& g, const void* x, Strides4 xs,
                                 const void* dy, Strides4 dys, void* dw, void* db) {
  switch (dtype) {
    case kFloat32:
      return backward_weights(g, (const float*)x, xs, (const float*)dy, dys, (float*)dw,
                              (float*)db);
    case kFloat64:
      return backward_weights(g, (const double*)x, xs, (const double*)dy, dys, (double*)dw,
                              (double*)db);
    case kBFloat16:
      return backward_weights(g, (const BF16*)x, xs, (const BF16*)dy, dys, (BF16*)dw, (BF16*)db);
    case kFloat16:
      return backward_weights(g, (const F16*)x, xs, (const F16*)dy, dys, (F16*)dw, (F16*)db);
    default: TB_CHECK(false, "ref_conv2d_backward_weights: no kernel for dtype {}", dtype);
  }
}

} // namespace

const Conv2dKernels Conv2dKernels::ref = {
    .forward = ref_conv2d_forward,
    .backward_data = ref_conv2d_backward_data,
    .backward_weights = ref_conv2d_backward_weights,
};

} // namespace tb::kernels
