// kernels/pool.h — 2-D pooling kernels (max, average, adaptive average): raw pointers, a geometry
// struct and element strides (kernels/conv.h's Strides4), never a Tensor.
//
// x [N, C, H, W] -> y [N, C, OH, OW]; the op layer computes OH/OW (PyTorch's rule, ceil_mode
// included) and passes dy with y's strides and dx with x's strides. Windows start at
// oh*stride - pad and are clipped to the input; max pooling treats padding as -inf.
// Three tables of the same kernels:
//   Pool2dKernels::ref  — kernels/ref/pool.cpp: plain loops, the specification;
//   Pool2dKernels::cpu  — kernels/cpu/pool.cpp: OpenMP loops, vectorised over C for channels-last
//                         inputs;
//   Pool2dKernels::cuda — kernels/cuda/pool.cu: one thread per output element forward, one per
//                         input element backward (gathering, no atomics); the reference's
//                         arithmetic, any strides. Written and compiled, but NOT yet run on a
//                         GPU: its tests (tests/test_cuda.cpp) have only skipped so far.
// dtypes: float32, float64.
#pragma once

#include <algorithm>
#include <cstdint>

#include "kernels/conv.h" // Strides4

namespace tb::kernels {

struct Pool2dGeom {
  int64_t N = 0, C = 0, H = 0, W = 0; // input
  int64_t OH = 0, OW = 0;             // output
  int64_t KH = 1, KW = 1, stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0;
  bool count_include_pad = true;      // avg only: divide by the padded window size
};

// The input window of output pixel (oh, ow): rows [h0, h1), columns [w0, w1), and the divisor an
// average uses. Shared by the ref and cpu kernels so both pool exactly the same elements
// (kernels/cuda/pool.cu repeats the same arithmetic in device functions).
struct PoolWindow {
  int64_t h0, h1, w0, w1;
  double divisor;
};

// max/avg: the kernel placed at (oh*stride - pad), clipped to the input. avg's divisor counts the
// window clipped to the padded input [-pad, H + pad) (count_include_pad) or to the input only.
inline PoolWindow pool_window(const Pool2dGeom& g, int64_t oh, int64_t ow) {
  int64_t h0 = oh * g.stride_h - g.pad_h, w0 = ow * g.stride_w - g.pad_w;
  int64_t h1 = std::min(h0 + g.KH, g.H + g.pad_h), w1 = std::min(w0 + g.KW, g.W + g.pad_w);
  double padded_size = double((h1 - h0) * (w1 - w0));
  h0 = std::max<int64_t>(h0, 0), w0 = std::max<int64_t>(w0, 0);
  h1 = std::min(h1, g.H), w1 = std::min(w1, g.W);
  double divisor = g.count_include_pad ? padded_size : double((h1 - h0) * (w1 - w0));
  return {h0, h1, w0, w1, divisor};
}

// adaptive: rows [floor(oh H / OH), ceil((oh + 1) H / OH)), same for columns.
inline PoolWindow adaptive_window(const Pool2dGeom& g, int64_t oh, int64_t ow) {
  int64_t h0 = oh * g.H / g.OH, h1 = ((oh + 1) * g.H + g.OH - 1) / g.OH;
  int64_t w0 = ow * g.W / g.OW, w1 = ((ow + 1) * g.W + g.OW - 1) / g.OW;
  return {h0, h1, w0, w1, double((h1 - h0) * (w1 - w0))};
}

struct Pool2dKernels {
  // y = max over the window; idx (int64, y's strides) = h * W + w of the maximum within its
  // (n, c) plane, as PyTorch's return_indices. NaN wins (propagates), ties keep the first.
  void (*max_forward)(DType dtype, const Pool2dGeom& g, const void* x, Strides4 xs, void* y,
                      int64_t* idx, Strides4 ys);
  // dx = 0, then dx[plane, idx] += dy (dy and idx with strides ys, dx with strides xs).
  void (*max_backward)(DType dtype, const Pool2dGeom& g, const void* dy, const int64_t* idx,
                       Strides4 ys, void* dx, Strides4 xs);

  // y = sum over the clipped window / divisor, divisor = the window clipped to input + padding
  // (count_include_pad) or to the input only; a window entirely in the padding gives 0.
  void (*avg_forward)(DType dtype, const Pool2dGeom& g, const void* x, Strides4 xs, void* y,
                      Strides4 ys);
  // dx = 0, then every x in a window gets dy / divisor.
  void (*avg_backward)(DType dtype, const Pool2dGeom& g, const void* dy, Strides4 ys, void* dx,
                       Strides4 xs);

  // Adaptive average: output cell (i, j) averages rows [floor(i H / OH), ceil((i+1) H / OH)) and
  // columns [floor(j W / OW), ceil((j+1) W / OW)). Only N, C, H, W, OH, OW of g are used.
  void (*adaptive_avg_forward)(DType dtype, const Pool2dGeom& g, const void* x, Strides4 xs,
                               void* y, Strides4 ys);
  void (*adaptive_avg_backward)(DType dtype, const Pool2dGeom& g, const void* dy, Strides4 ys,
                                void* dx, Strides4 xs);

  static const Pool2dKernels ref, cpu, cuda;
};

} // namespace tb::kernels
