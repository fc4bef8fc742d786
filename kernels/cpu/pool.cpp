// kernels/cpu/pool.cpp — 2-D max / average / adaptive-average pooling with OpenMP; same math and
// windows as kernels/ref/pool.cpp (the specification), laid out for speed.
//
// Two loop orders:
//   channels-last (dense NHWC x and y, what conv produces): each (n, oh) row of the
//     output runs on one thread; for every window tap the innermost loop walks the C contiguous
//     channels, so it vectorises and reads x sequentially.
//   otherwise (NCHW): one (n, c) plane per thread, the ref loops on that plane.
// Backward scatters into dx; windows overlap along h and w (kernel > stride), so threads split
// dx by image n (channels-last) or plane (n, c) (NCHW), which never overlap.
// Why not oneDNN pooling: it would need its workspace for max indices (a layout of its own) and
// primitives per shape; these loops are memory-bound and already run at the speed of a copy.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/pool.h"

namespace tb::kernels {
namespace {

// Dense NHWC x and y (the layout the op layer passes for channels-last tensors).
inline bool channels_last(const Pool2dGeom& g, Strides4 xs, Strides4 ys) {
  return xs.c == 1 && xs.w == g.C && xs.h == g.W * g.C && ys.c == 1 && ys.w == g.C &&
         ys.h == g.OW * g.C;
}

inline int64_t at(Strides4 s, int64_t n, int64_t c, int64_t h, int64_t w) {
  return n * s.n + c * s.c + h * s.h + w * s.w;
}

// Zeroes the N×C×H×W tensor `dx` (any strides) for image n, channel c (or all channels: c < 0).
template <typename T>
void zero_image(const Pool2dGeom& g, T* dx, Strides4 xs, int64_t n, int64_t c) {
  if (c < 0 && xs.c == 1 && xs.w == g.C && xs.h == g.W * g.C) // a dense NHWC image
    return (void)std::fill_n(dx + n * xs.n, g.H * g.W * g.C, T(0));
  if (c >= 0 && xs.w == 1 && xs.h == g.W) // a dense plane
    return (void)std::fill_n(dx + n * xs.n + c * xs.c, g.H * g.W, T(0));
  int64_t c0 = c < 0 ? 0 : c, c1 = c < 0 ? g.C : c + 1;
  for (int64_t h = 0; h < g.H; h++)
    for (int64_t w = 0; w < g.W; w++)
      for (int64_t cc = c0; cc < c1; cc++) dx[at(xs, n, cc, h, w)] = T(0);
}

template <typename T>
void max_forward(const Pool2dGeom& g, const T* x, Strides4 xs, T* y, int64_t* idx, Strides4 ys) {
  const T neg_inf = -std::numeric_limits<T>::infinity();
  if (channels_last(g, xs, ys)) {
    const int64_t C = g.C; // a local: the int64 index writes below could alias g.C
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t n = 0; n < g.N; n++)
      for (int64_t oh = 0; oh < g.OH; oh++)
        for (int64_t ow = 0; ow < g.OW; ow++) {
          PoolWindow win = pool_window(g, oh, ow);
          T* yr = y + at(ys, n, 0, oh, ow);
          int64_t* ir = idx + at(ys, n, 0, oh, ow);
          for (int64_t c = 0; c < C; c++) yr[c] = neg_inf, ir[c] = win.h0 * g.W + win.w0;
          for (int64_t h = win.h0; h < win.h1; h++)
            for (int64_t w = win.w0; w < win.w1; w++) {
              const T* xr = x + at(xs, n, 0, h, w);
              int64_t i = h * g.W + w;
              for (int64_t c = 0; c < C; c++) {
                T v = xr[c];
                bool take = v > yr[c] || v != v; // NaN propagates, as in the ref kernel
                yr[c] = take ? v : yr[c];
                ir[c] = take ? i : ir[c];
              }
            }
        }
    return;
  }
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t n = 0; n < g.N; n++)
    for (int64_t c = 0; c < g.C; c++)
      for (int64_t oh = 0; oh < g.OH; oh++)
        for (int64_t ow = 0; ow < g.OW; ow++) {
          PoolWindow win = pool_window(g, oh, ow);
          T best = neg_inf;
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
  if (channels_last(g, xs, ys)) {
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < g.N; n++) {
      zero_image(g, dx, xs, n, -1);
      for (int64_t oh = 0; oh < g.OH; oh++)
        for (int64_t ow = 0; ow < g.OW; ow++) {
          const T* dyr = dy + at(ys, n, 0, oh, ow);
          const int64_t* ir = idx + at(ys, n, 0, oh, ow);
          // plane index i = h W + w sits at offset h (W C) + w C + c = i C + c in dense NHWC
          T* dxn = dx + n * xs.n;
          for (int64_t c = 0; c < g.C; c++) dxn[ir[c] * g.C + c] += dyr[c];
        }
    }
    return;
  }
  bool plane_dense = xs.w == 1 && xs.h == g.W; // then i = h W + w is the offset in the plane
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t n = 0; n < g.N; n++)
    for (int64_t c = 0; c < g.C; c++) {
      zero_image(g, dx, xs, n, c);
      for (int64_t oh = 0; oh < g.OH; oh++)
        for (int64_t ow = 0; ow < g.OW; ow++) {
          int64_t i = idx[at(ys, n, c, oh, ow)];
          int64_t off = plane_dense ? n * xs.n + c * xs.c + i : at(xs, n, c, i / g.W, i % g.W);
          dx[off] += dy[at(ys, n, c, oh, ow)];
        }
    }
}

// avg and adaptive avg differ only in their window (pool_window / adaptive_window).
template <typename T, typename WindowFn>
void avg_forward(const Pool2dGeom& g, WindowFn window, const T* x, Strides4 xs, T* y,
                 Strides4 ys) {
  if (channels_last(g, xs, ys)) {
#pragma omp parallel
    {
      std::vector<double> acc(g.C); // per-thread channel sums
#pragma omp for collapse(2) schedule(static)
      for (int64_t n = 0; n < g.N; n++)
        for (int64_t oh = 0; oh < g.OH; oh++)
          for (int64_t ow = 0; ow < g.OW; ow++) {
            PoolWindow win = window(g, oh, ow);
            std::fill(acc.begin(), acc.end(), 0.0);
            for (int64_t h = win.h0; h < win.h1; h++)
              for (int64_t w = win.w0; w < win.w1; w++) {
                const T* xr = x + at(xs, n, 0, h, w);
                for (int64_t c = 0; c < g.C; c++) acc[c] += xr[c];
              }
            bool empty = win.h0 >= win.h1 || win.w0 >= win.w1;
            T* yr = y + at(ys, n, 0, oh, ow);
            for (int64_t c = 0; c < g.C; c++) yr[c] = empty ? T(0) : T(acc[c] / win.divisor);
          }
    }
    return;
  }
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t n = 0; n < g.N; n++)
    for (int64_t c = 0; c < g.C; c++)
      for (int64_t oh = 0; oh < g.OH; oh++)
        for (int64_t ow = 0; ow < g.OW; ow++) {
          PoolWindow win = window(g, oh, ow);
          double sum = 0;
          for (int64_t h = win.h0; h < win.h1; h++)
            for (int64_t w = win.w0; w < win.w1; w++) sum += x[at(xs, n, c, h, w)];
          bool empty = win.h0 >= win.h1 || win.w0 >= win.w1;
          y[at(ys, n, c, oh, ow)] = empty ? T(0) : T(sum / win.divisor);
        }
}

template <typename T, typename WindowFn>
void avg_backward(const Pool2dGeom& g, WindowFn window, const T* dy, Strides4 ys, T* dx,
                  Strides4 xs) {
  if (channels_last(g, xs, ys)) {
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < g.N; n++) {
      zero_image(g, dx, xs, n, -1);
      for (int64_t oh = 0; oh < g.OH; oh++)
        for (int64_t ow = 0; ow < g.OW; ow++) {
          PoolWindow win = window(g, oh, ow);
          const T* dyr = dy + at(ys, n, 0, oh, ow);
          T inv = T(1.0 / win.divisor);
          for (int64_t h = win.h0; h < win.h1; h++)
            for (int64_t w = win.w0; w < win.w1; w++) {
              T* dxr = dx + at(xs, n, 0, h, w);
              for (int64_t c = 0; c < g.C; c++) dxr[c] += dyr[c] * inv;
            }
        }
    }
    return;
  }
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t n = 0; n < g.N; n++)
    for (int64_t c = 0; c < g.C; c++) {
      zero_image(g, dx, xs, n, c);
      for (int64_t oh = 0; oh < g.OH; oh++)
        for (int64_t ow = 0; ow < g.OW; ow++) {
          PoolWindow win = window(g, oh, ow);
          T d = T(dy[at(ys, n, c, oh, ow)] / win.divisor);
          for (int64_t h = win.h0; h < win.h1; h++)
            for (int64_t w = win.w0; w < win.w1; w++) dx[at(xs, n, c, h, w)] += d;
        }
    }
}

#define TB_POOL_DISPATCH(name, call_f32, call_f64)                              \
  switch (dtype) {                                                              \
    case kFloat32: call_f32; return;                                            \
    case kFloat64: call_f64; return;                                            \
    default: TB_CHECK(false, "{}: no kernel for dtype {}", name, dtype);        \
  }

void cpu_max_pool2d_forward(DType dtype, const Pool2dGeom& g, const void* x, Strides4 xs, void* y,
                            int64_t* idx, Strides4 ys) {
  TB_POOL_DISPATCH("cpu_max_pool2d_forward",
                   max_forward(g, (const float*)x, xs, (float*)y, idx, ys),
                   max_forward(g, (const double*)x, xs, (double*)y, idx, ys));
}

void cpu_max_pool2d_backward(DType dtype, const Pool2dGeom& g, const void* dy, const int64_t* idx,
                             Strides4 ys, void* dx, Strides4 xs) {
  TB_POOL_DISPATCH("cpu_max_pool2d_backward",
                   max_backward(g, (const float*)dy, idx, ys, (float*)dx, xs),
                   max_backward(g, (const double*)dy, idx, ys, (double*)dx, xs));
}

void cpu_avg_pool2d_forward(DType dtype, const Pool2dGeom& g, const void* x, Strides4 xs, void* y,
                            Strides4 ys) {
  TB_POOL_DISPATCH("cpu_avg_pool2d_forward",
                   avg_forward(g, pool_window, (const float*)x, xs, (float*)y, ys),
                   avg_forward(g, pool_window, (const double*)x, xs, (double*)y, ys));
}

void cpu_avg_pool2d_backward(DType dtype, const Pool2dGeom& g, const void* dy, Strides4 ys,
                             void* dx, Strides4 xs) {
  TB_POOL_DISPATCH("cpu_avg_pool2d_backward",
                   avg_backward(g, pool_window, (const float*)dy, ys, (float*)dx, xs),
                   avg_backward(g, pool_window, (const double*)dy, ys, (double*)dx, xs));
}

void cpu_adaptive_avg_pool2d_forward(DType dtype, const Pool2dGeom& g, const void* x, Strides4 xs,
                                     void* y, Strides4 ys) {
  TB_POOL_DISPATCH("cpu_adaptive_avg_pool2d_forward",
                   avg_forward(g, adaptive_window, (const float*)x, xs, (float*)y, ys),
                   avg_forward(g, adaptive_window, (const double*)x, xs, (double*)y, ys));
}

void cpu_adaptive_avg_pool2d_backward(DType dtype, const Pool2dGeom& g, const void* dy,
                                      Strides4 ys, void* dx, Strides4 xs) {
  TB_POOL_DISPATCH("cpu_adaptive_avg_pool2d_backward",
                   avg_backward(g, adaptive_window, (const float*)dy, ys, (float*)dx, xs),
                   avg_backward(g, adaptive_window, (const double*)dy, ys, (double*)dx, xs));
}

} // namespace

const Pool2dKernels Pool2dKernels::cpu = {
    .max_forward = cpu_max_pool2d_forward,
    .max_backward = cpu_max_pool2d_backward,
    .avg_forward = cpu_avg_pool2d_forward,
    .avg_backward = cpu_avg_pool2d_backward,
    .adaptive_avg_forward = cpu_adaptive_avg_pool2d_forward,
    .adaptive_avg_backward = cpu_adaptive_avg_pool2d_backward,
};

} // namespace tb::kernels
