// kernels/ref/pool.cpp — 2-D max / average / adaptive-average pooling as plain loops: the
// specification the OpenMP kernels are tested against.
//
// For output pixel (oh, ow) of plane (n, c) the window covers rows [h0, h1) and columns [w0, w1)
// (pool_window / adaptive_window in kernels/pool.h):
//   max, avg:  h0 = oh*stride_h - pad_h, h1 = h0 + KH, clipped to [0, H) (avg's divisor may count
//              the padded part, clipped to [-pad, H + pad), PyTorch's count_include_pad rule)
//   adaptive:  h0 = floor(oh H / OH),  h1 = ceil((oh + 1) H / OH)
// Forward:  max: y = max x over the window (index of the max saved: h W + w within the plane)
//           avg: y = sum x over the window / divisor
// Backward: max: dx[idx] += dy;   avg: dx[window] += dy / divisor
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/pool.h"

namespace tb::kernels {
namespace {

inline int64_t at(Strides4 s, int64_t n, int64_t c, int64_t h, int64_t w) {
  return n * s.n + c * s.c + h * s.h + w * s.w;
}

template <typename T>
void max_forward(const Pool2dGeom& g, const T* x, Strides4 xs, T* y, int64_t* idx, Strides4 ys) {
  for (int64_t n = 0; n < g.N; n++)
    for (int64_t c = 0; c < g.C; c++)
      for (int64_t oh = 0; oh < g.OH; oh++)
        for (int64_t ow = 0; ow < g.OW; ow++) {
          PoolWindow win = pool_window(g, oh, ow);
          T best = -std::numeric_limits<T>::infinity();
          int64_t best_i = win.h0 * g.W + win.w0;
          for (int64_t h = win.h0; h < win.h1; h++)
            for (int64_t w = win.w0; w < win.w1; w++) {
              T v = x[at(xs, n, c, h, w)];
              if (v > best || std::isnan(v)) best = v, best_i = h * g.W + w;
            }
          y[at(ys, n, c, oh, ow)] = best;
          idx[at(ys, n, c, oh, ow)] = best_i;
        }
}

template <typename T>
void max_backward(const Pool2dGeom& g, const T* dy, const int64_t* idx, Strides4 ys, T* dx,
                  Strides4 xs) {
  for (int64_t n = 0; n < g.N; n++)
    for (int64_t c = 0; c < g.C; c++)
      for (int64_t h = 0; h < g.H; h++)
        for (int64_t w = 0; w < g.W; w++) dx[at(xs, n, c, h, w)] = 0;
  for (int64_t n = 0; n < g.N; n++)
    for (int64_t c = 0; c < g.C; c++)
      for (int64_t oh = 0; oh < g.OH; oh++)
        for (int64_t ow = 0; ow < g.OW; ow++) {
          int64_t i = idx[at(ys, n, c, oh, ow)];
          dx[at(xs, n, c, i / g.W, i % g.W)] += dy[at(ys, n, c, oh, ow)];
        }
}

template <typename T, typename WindowFn>
void avg_forward(const Pool2dGeom& g, WindowFn window, const T* x, Strides4 xs, T* y,
                 Strides4 ys) {
  for (int64_t n = 0; n < g.N; n++)
    for (int64_t c = 0; c < g.C; c++)
      for (int64_t oh = 0; oh < g.OH; oh++)
        for (int64_t ow = 0; ow < g.OW; ow++) {
          PoolWindow win = window(g, oh, ow);
          double sum = 0;
          for (int64_t h = win.h0; h < win.h1; h++)
            for (int64_t w = win.w0; w < win.w1; w++) sum += x[at(xs, n, c, h, w)];
          // A window entirely inside the padding has nothing to average: 0, as PyTorch.
          bool empty = win.h0 >= win.h1 || win.w0 >= win.w1;
          y[at(ys, n, c, oh, ow)] = empty ? T(0) : T(sum / win.divisor);
        }
}

template <typename T, typename WindowFn>
void avg_backward(const Pool2dGeom& g, WindowFn window, const T* dy, Strides4 ys, T* dx,
                  Strides4 xs) {
  std::vector<double> acc(g.N * g.C * g.H * g.W, 0.0); // dense NCHW accumulator
  Strides4 as = nchw_strides(g.C, g.H, g.W);
  for (int64_t n = 0; n < g.N; n++)
    for (int64_t c = 0; c < g.C; c++)
      for (int64_t oh = 0; oh < g.OH; oh++)
        for (int64_t ow = 0; ow < g.OW; ow++) {
          PoolWindow win = window(g, oh, ow);
          double d = dy[at(ys, n, c, oh, ow)] / win.divisor;
          for (int64_t h = win.h0; h < win.h1; h++)
            for (int64_t w = win.w0; w < win.w1; w++) acc[at(as, n, c, h, w)] += d;
        }
  for (int64_t n = 0; n < g.N; n++)
    for (int64_t c = 0; c < g.C; c++)
      for (int64_t h = 0; h < g.H; h++)
        for (int64_t w = 0; w < g.W; w++) dx[at(xs, n, c, h, w)] = T(acc[at(as, n, c, h, w)]);
}

#define TB_POOL_DISPATCH(name, call_f32, call_f64)                              \
  switch (dtype) {                                                              \
    case kFloat32: call_f32; return;                                            \
    case kFloat64: call_f64; return;                                            \
    default: TB_CHECK(false, "{}: no kernel for dtype {}", name, dtype);        \
  }

void ref_max_pool2d_forward(DType dtype, const Pool2dGeom& g, const void* x, Strides4 xs, void* y,
                            int64_t* idx, Strides4 ys) {
  TB_POOL_DISPATCH("ref_max_pool2d_forward",
                   max_forward(g, (const float*)x, xs, (float*)y, idx, ys),
                   max_forward(g, (const double*)x, xs, (double*)y, idx, ys));
}

void ref_max_pool2d_backward(DType dtype, const Pool2dGeom& g, const void* dy, const int64_t* idx,
                             Strides4 ys, void* dx, Strides4 xs) {
  TB_POOL_DISPATCH("ref_max_pool2d_backward",
                   max_backward(g, (const float*)dy, idx, ys, (float*)dx, xs),
                   max_backward(g, (const double*)dy, idx, ys, (double*)dx, xs));
}

void ref_avg_pool2d_forward(DType dtype, const Pool2dGeom& g, const void* x, Strides4 xs, void* y,
                            Strides4 ys) {
  TB_POOL_DISPATCH("ref_avg_pool2d_forward",
                   avg_forward(g, pool_window, (const float*)x, xs, (float*)y, ys),
                   avg_forward(g, pool_window, (const double*)x, xs, (double*)y, ys));
}

void ref_avg_pool2d_backward(DType dtype, const Pool2dGeom& g, const void* dy, Strides4 ys,
                             void* dx, Strides4 xs) {
  TB_POOL_DISPATCH("ref_avg_pool2d_backward",
                   avg_backward(g, pool_window, (const float*)dy, ys, (float*)dx, xs),
                   avg_backward(g, pool_window, (const double*)dy, ys, (double*)dx, xs));
}

void ref_adaptive_avg_pool2d_forward(DType dtype, const Pool2dGeom& g, const void* x, Strides4 xs,
                                     void* y, Strides4 ys) {
  TB_POOL_DISPATCH("ref_adaptive_avg_pool2d_forward",
                   avg_forward(g, adaptive_window, (const float*)x, xs, (float*)y, ys),
                   avg_forward(g, adaptive_window, (const double*)x, xs, (double*)y, ys));
}

void ref_adaptive_avg_pool2d_backward(DType dtype, const Pool2dGeom& g, const void* dy,
                                      Strides4 ys, void* dx, Strides4 xs) {
  TB_POOL_DISPATCH("ref_adaptive_avg_pool2d_backward",
                   avg_backward(g, adaptive_window, (const float*)dy, ys, (float*)dx, xs),
                   avg_backward(g, adaptive_window, (const double*)dy, ys, (double*)dx, xs));
}

} // namespace

const Pool2dKernels Pool2dKernels::ref = {
    .max_forward = ref_max_pool2d_forward,
    .max_backward = ref_max_pool2d_backward,
    .avg_forward = ref_avg_pool2d_forward,
    .avg_backward = ref_avg_pool2d_backward,
    .adaptive_avg_forward = ref_adaptive_avg_pool2d_forward,
    .adaptive_avg_backward = ref_adaptive_avg_pool2d_backward,
};

} // namespace tb::kernels
