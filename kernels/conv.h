// kernels/conv.h — 2-D convolution kernels: raw pointers, a geometry struct and element strides,
// never a Tensor.
//
// Shapes (PyTorch's): x [N, C, H, W], weight [O, C/groups, KH, KW] (always contiguous OIHW),
// bias [O] (or nullptr), y [N, O, OH, OW] with
//   OH = (H + 2 pad_h - dil_h (KH - 1) - 1) / stride_h + 1   (same for OW).
// Activations (x, y and their gradients) are logical N×C×H×W with any strides; in practice the
// op layer passes NCHW-contiguous or channels-last (NHWC) ones; oneDNN runs NHWC without reorders.
// Three tables of the same kernels:
//   Conv2dKernels::ref  — kernels/ref/conv.cpp: plain loops, the specification (float32, float64,
//                         bfloat16, float16; half values read exactly, double accumulation, each
//                         output rounded once);
//   Conv2dKernels::cpu  — kernels/cpu/conv_onednn.cpp: oneDNN for float32 and bfloat16 (float32
//                         accumulation), primitives cached per geometry; oneDNN has no float64, so
//                         float64 runs the reference loops; oneDNN 2.6 has no CPU float16
//                         convolution, so float16 is converted to float32, run, rounded once;
//   Conv2dKernels::cuda — kernels/cuda/conv.cu: cuDNN 9 for float32 (FMA math, no TF32), float64,
//                         float16 and bfloat16 (float32 accumulation); NHWC (float64: NCHW), other
//                         strides copied; the fastest deterministic algorithm per geometry, found
//                         once and cached. Written and compiled, but NOT yet run on a GPU: its
//                         tests (tests/test_cuda.cpp) have only skipped so far.
// Every pointer of one call has the same dtype (bias and gradients included).
#pragma once

#include <cstdint>

#include <tb/core.h>

namespace tb::kernels {

// Element strides of a logical N×C×H×W tensor.
struct Strides4 {
  int64_t n = 0, c = 0, h = 0, w = 0;
  bool operator==(const Strides4&) const = default;
};
inline Strides4 nchw_strides(int64_t C, int64_t H, int64_t W) { return {C * H * W, H * W, W, 1}; }
inline Strides4 nhwc_strides(int64_t C, int64_t H, int64_t W) { return {H * W * C, 1, W * C, C}; }

struct Conv2dGeom {
  int64_t N = 0, C = 0, H = 0, W = 0; // input
  int64_t O = 0, KH = 0, KW = 0;      // weight [O, C / groups, KH, KW]
  int64_t OH = 0, OW = 0;             // output
  int64_t stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0, dil_h = 1, dil_w = 1, groups = 1;
};

struct Conv2dKernels {
  // y = conv(x, w) + b (b may be nullptr).
  void (*forward)(DType dtype, const Conv2dGeom& g, const void* x, Strides4 xs, const void* w,
                  const void* b, void* y, Strides4 ys);

  // dx = conv_transpose(dy, w): every dx element is written (no accumulation into old values).
  void (*backward_data)(DType dtype, const Conv2dGeom& g, const void* dy, Strides4 dys,
                        const void* w, void* dx, Strides4 dxs);

  // dw [O, C/groups, KH, KW] (contiguous) = sum over n, oh, ow of dy * x-window; db [O] = sum of
  // dy over n, oh, ow (db may be nullptr). Both are overwritten.
  void (*backward_weights)(DType dtype, const Conv2dGeom& g, const void* x, Strides4 xs,
                           const void* dy, Strides4 dys, void* dw, void* db);

  static const Conv2dKernels ref, cpu, cuda;
};

} // namespace tb::kernels
