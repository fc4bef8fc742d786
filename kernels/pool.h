// kernels/pool.h — 2-D pooling kernels (max, average, adaptive average): raw pointers, a geometry
// struct and element strides (kernels/conv.h's Strides4), never a Tensor.
//
// x [N, C, H, W] -> y [N, C, OH, OW]; the op layer computes OH/OW (PyTorch's rule, ceil_mode
// included) and passes dy with y's strides and dx with x's strides. Windows start at
// oh*stride - pad and are clipped to the input; max pooling treats padding as -inf.
// Three twins with the same signature:
//   ref_*  — kernels/ref/pool.cpp: plain loops, the specification;
//   cpu_*  — kernels/cpu/pool.cpp: OpenMP loops, vectorised over C for channels-last inputs;
//   cuda_* — not written yet (the op layer raises tb::Error for CUDA tensors).
// dtypes: float32, float64.
#pragma once

#include <cstdint>

#include "kernels/conv.h" // Strides4

namespace tb::kernels {

struct Pool2dGeom {
  int64_t N = 0, C = 0, H = 0, W = 0; // input
  int64_t OH = 0, OW = 0;             // output
  int64_t KH = 1, KW = 1, stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0;
  bool count_include_pad = true;      // avg only: divide by the padded window size
};

// y = max over the window; idx (int64, y's strides) = h * W + w of the maximum within its
// (n, c) plane, as PyTorch's return_indices. NaN wins (propagates), ties keep the first.
void ref_max_pool2d_forward(DType dtype, const Pool2dGeom& g, const void* x, Strides4 xs, void* y,
                            int64_t* idx, Strides4 ys);
void cpu_max_pool2d_forward(DType dtype, const Pool2dGeom& g, const void* x, Strides4 xs, void* y,
                            int64_t* idx, Strides4 ys);
void cuda_max_pool2d_forward(DType dtype, const Pool2dGeom& g, const void* x, Strides4 xs, void* y,
                             int64_t* idx, Strides4 ys);
// dx = 0, then dx[plane, idx] += dy (dy and idx with strides ys, dx with strides xs).
void ref_max_pool2d_backward(DType dtype, const Pool2dGeom& g, const void* dy, const int64_t* idx,
                             Strides4 ys, void* dx, Strides4 xs);
void cpu_max_pool2d_backward(DType dtype, const Pool2dGeom& g, const void* dy, const int64_t* idx,
                             Strides4 ys, void* dx, Strides4 xs);
void cuda_max_pool2d_backward(DType dtype, const Pool2dGeom& g, const void* dy,
                              const int64_t* idx, Strides4 ys, void* dx, Strides4 xs);

// y = sum over the clipped window / divisor, divisor = the window clipped to input + padding
// (count_include_pad) or to the input only; a window entirely in the padding gives 0.
void ref_avg_pool2d_forward(DType dtype, const Pool2dGeom& g, const void* x, Strides4 xs, void* y,
                            Strides4 ys);
void cpu_avg_pool2d_forward(DType dtype, const Pool2dGeom& g, const void* x, Strides4 xs, void* y,
                            Strides4 ys);
void cuda_avg_pool2d_forward(DType dtype, const Pool2dGeom& g, const void* x, Strides4 xs, void* y,
                             Strides4 ys);
// dx = 0, then every x in a window gets dy / divisor.
void ref_avg_pool2d_backward(DType dtype, const Pool2dGeom& g, const void* dy, Strides4 ys,
                             void* dx, Strides4 xs);
void cpu_avg_pool2d_backward(DType dtype, const Pool2dGeom& g, const void* dy, Strides4 ys,
                             void* dx, Strides4 xs);
void cuda_avg_pool2d_backward(DType dtype, const Pool2dGeom& g, const void* dy, Strides4 ys,
                              void* dx, Strides4 xs);

// Adaptive average: output cell (i, j) averages rows [floor(i H / OH), ceil((i+1) H / OH)) and
// columns [floor(j W / OW), ceil((j+1) W / OW)). Only N, C, H, W, OH, OW of g are used.
void ref_adaptive_avg_pool2d_forward(DType dtype, const Pool2dGeom& g, const void* x, Strides4 xs,
                                     void* y, Strides4 ys);
void cpu_adaptive_avg_pool2d_forward(DType dtype, const Pool2dGeom& g, const void* x, Strides4 xs,
                                     void* y, Strides4 ys);
void cuda_adaptive_avg_pool2d_forward(DType dtype, const Pool2dGeom& g, const void* x,
                                      Strides4 xs, void* y, Strides4 ys);
void ref_adaptive_avg_pool2d_backward(DType dtype, const Pool2dGeom& g, const void* dy,
                                      Strides4 ys, void* dx, Strides4 xs);
void cpu_adaptive_avg_pool2d_backward(DType dtype, const Pool2dGeom& g, const void* dy,
                                      Strides4 ys, void* dx, Strides4 xs);
void cuda_adaptive_avg_pool2d_backward(DType dtype, const Pool2dGeom& g, const void* dy,
                                       Strides4 ys, void* dx, Strides4 xs);

} // namespace tb::kernels
