// kernels/cuda/access.cuh — element access shared by pool.cu, batchnorm.cu and conv.cu: values of
// every floating storage type read as double and stored rounded once, and addressing a logical
// N×C×H×W tensor with element strides (kernels/conv.h's Strides4).
//
// ld / st follow kernels/ref/half.h: float16/bfloat16 are read exactly; a double is rounded to
// float first and then to the half type (as the reference kernels do, so both round alike).
//
// A flat index e walks the tensor in its memory order, so that neighbouring threads touch
// neighbouring addresses: (n, h, w, c) with c fastest for a channels-last tensor (channel stride
// below the column stride), (n, c, h, w) otherwise. Any strides give the right element; only the
// coalescing depends on the order.
#pragma once

#include "kernels/cuda/common.cuh" // first: see its note on fmt
#include "kernels/conv.h"          // Strides4

namespace tb::kernels {

__device__ inline double ld(float v) { return v; }
__device__ inline double ld(double v) { return v; }
__device__ inline double ld(__half v) { return __half2float(v); }
__device__ inline double ld(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ inline void st(float& d, double v) { d = (float)v; }
__device__ inline void st(double& d, double v) { d = v; }
__device__ inline void st(__half& d, double v) { d = __float2half_rn((float)v); }
__device__ inline void st(__nv_bfloat16& d, double v) { d = __float2bfloat16_rn((float)v); }

struct Coord4 {
  int64_t n, c, h, w;
};

// True when the channel is the fastest-moving dim in memory (NHWC); NCHW and C == 1 say false.
__host__ __device__ inline bool channels_inner(Strides4 s) { return s.c < s.w; }

// The (n, c, h, w) of flat index e of a C×H×W-per-image tensor visited in memory order.
__host__ __device__ inline Coord4 coord_of(int64_t e, int64_t C, int64_t H, int64_t W,
                                           bool c_inner) {
  Coord4 p;
  if (c_inner) {
    p.c = e % C;
    e /= C;
    p.w = e % W;
    e /= W;
    p.h = e % H;
    p.n = e / H;
  } else {
    p.w = e % W;
    e /= W;
    p.h = e % H;
    e /= H;
    p.c = e % C;
    p.n = e / C;
  }
  return p;
}

__host__ __device__ inline int64_t offset_of(Strides4 s, int64_t n, int64_t c, int64_t h,
                                             int64_t w) {
  return n * s.n + c * s.c + h * s.h + w * s.w;
}
__host__ __device__ inline int64_t offset_of(Strides4 s, Coord4 p) {
  return offset_of(s, p.n, p.c, p.h, p.w);
}

} // namespace tb::kernels
