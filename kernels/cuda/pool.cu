// kernels/cuda/pool.cu — 2-D max / average / adaptive-average pooling on the device (the contract
// is kernels/pool.h; the specification kernels/ref/pool.cpp). float32 and float64; x, y, dy, dx
// (and max's indices) with any strides, so NCHW and channels-last both run without copies.
//
// We follow the reference's arithmetic step by step, so results equal its bit for bit:
//   max: compares in T, window rows then columns, `v > best || isnan(v)` (NaN wins, ties keep the
//        first), index h W + w of the maximum within its (n, c) plane;
//   avg / adaptive avg: the window's sum in double, in the same order, / the same divisor.
//
// Forward: one thread per output element (n, c, oh, ow), looping over its window.
// Backward: one thread per INPUT element (n, c, h, w), gathering from the outputs whose windows
// contain it; no atomics, so no races and no order that changes from run to run. Each thread
// visits a range of output rows and columns that contains every such window (derived below) and
// tests each candidate with the same window function as the forward, then adds in (oh, ow)
// ascending order, the order in which the reference's scatter reaches that element:
//   max: dx = sum of dy over the outputs whose saved index is h W + w (in T, as the ref's +=)
//   avg: dx = sum of dy / divisor over the outputs whose window contains (h, w) (in double)
// Every dx element is written, so the "dx = 0 first" of the header needs no separate pass.
//
// Launch: grid-stride loops (common.cuh: 256 threads a block, up to 65536 blocks) on the device's
// stream; flat indices walk the tensor in its memory order (access.cuh) for coalesced access.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/access.cuh"
#include "kernels/pool.h"

namespace tb::kernels {
namespace {

// ---- windows: the arithmetic of pool_window / adaptive_window in kernels/pool.h, on the device --

struct Window {
  int64_t h0, h1, w0, w1;
  double divisor;
};

__device__ inline Window pool_window_dev(const Pool2dGeom& g, int64_t oh, int64_t ow) {
  int64_t h0 = oh * g.stride_h - g.pad_h, w0 = ow * g.stride_w - g.pad_w;
  int64_t h1 = min(h0 + g.KH, g.H + g.pad_h), w1 = min(w0 + g.KW, g.W + g.pad_w);
  double padded_size = double((h1 - h0) * (w1 - w0));
  h0 = max(h0, (int64_t)0), w0 = max(w0, (int64_t)0);
  h1 = min(h1, g.H), w1 = min(w1, g.W);
  double divisor = g.count_include_pad ? padded_size : double((h1 - h0) * (w1 - w0));
  return {h0, h1, w0, w1, divisor};
}

__device__ inline Window adaptive_window_dev(const Pool2dGeom& g, int64_t oh, int64_t ow) {
  int64_t h0 = oh * g.H / g.OH, h1 = ((oh + 1) * g.H + g.OH - 1) / g.OH;
  int64_t w0 = ow * g.W / g.OW, w1 = ((ow + 1) * g.W + g.OW - 1) / g.OW;
  return {h0, h1, w0, w1, double((h1 - h0) * (w1 - w0))};
}

template <bool Adaptive>
__device__ inline Window window_of(const Pool2dGeom& g, int64_t oh, int64_t ow) {
  return Adaptive ? adaptive_window_dev(g, oh, ow) : pool_window_dev(g, oh, ow);
}

// The output rows whose windows may contain input row h: [lo, hi] (then tested one by one).
//   max/avg: window rows [oh s - p, oh s - p + K) contain h  <=>
//            ceil((h + p - K + 1) / s) <= oh <= floor((h + p) / s)   (clipping only removes rows
//            outside [0, H), never h itself)
//   adaptive: [floor(oh H / OH), ceil((oh + 1) H / OH)) contains h  <=>
//            floor(h OH / H) <= oh < ceil((h + 1) OH / H)
struct Range {
  int64_t lo, hi;
};
__device__ inline Range rows_over(int64_t h, int64_t K, int64_t s, int64_t p, int64_t out) {
  int64_t first = h + p - K + 1;
  int64_t lo = first <= 0 ? 0 : (first + s - 1) / s;
  int64_t hi = min((h + p) / s, out - 1);
  return {lo, hi};
}
__device__ inline Range adaptive_rows_over(int64_t h, int64_t in, int64_t out) {
  int64_t lo = h * out / in, hi = ((h + 1) * out + in - 1) / in - 1;
  return {lo, min(hi, out - 1)};
}

template <bool Adaptive>
__device__ inline void candidates(const Pool2dGeom& g, int64_t h, int64_t w, Range& rh, Range& rw) {
  if (Adaptive) {
    rh = adaptive_rows_over(h, g.H, g.OH);
    rw = adaptive_rows_over(w, g.W, g.OW);
  } else {
    rh = rows_over(h, g.KH, g.stride_h, g.pad_h, g.OH);
    rw = rows_over(w, g.KW, g.stride_w, g.pad_w, g.OW);
  }
}

// ---- max ------------------------------------------------------------------------------------------

template <typename T>
__global__ void max_forward_kernel(Pool2dGeom g, const T* x, Strides4 xs, T* y, int64_t* idx,
                                   Strides4 ys) {
  bool c_inner = channels_inner(ys);
  TB_GRID_STRIDE_LOOP(e, g.N * g.C * g.OH * g.OW) {
    Coord4 p = coord_of(e, g.C, g.OH, g.OW, c_inner);
    Window win = pool_window_dev(g, p.h, p.w);
    const T* plane = x + p.n * xs.n + p.c * xs.c;
    T best = (T)-INFINITY;
    int64_t best_i = win.h0 * g.W + win.w0;
    for (int64_t h = win.h0; h < win.h1; h++)
      for (int64_t w = win.w0; w < win.w1; w++) {
        T v = plane[h * xs.h + w * xs.w];
        if (v > best || isnan(v)) best = v, best_i = h * g.W + w;
      }
    int64_t o = offset_of(ys, p);
    y[o] = best;
    idx[o] = best_i;
  }
}

template <typename T>
__global__ void max_backward_kernel(Pool2dGeom g, const T* dy, const int64_t* idx, Strides4 ys,
                                    T* dx, Strides4 xs) {
  bool c_inner = channels_inner(xs);
  TB_GRID_STRIDE_LOOP(e, g.N * g.C * g.H * g.W) {
    Coord4 p = coord_of(e, g.C, g.H, g.W, c_inner);
    Range rh, rw;
    candidates<false>(g, p.h, p.w, rh, rw);
    int64_t me = p.h * g.W + p.w;
    int64_t base = p.n * ys.n + p.c * ys.c;
    T acc = 0;
    for (int64_t oh = rh.lo; oh <= rh.hi; oh++)
      for (int64_t ow = rw.lo; ow <= rw.hi; ow++) {
        int64_t o = base + oh * ys.h + ow * ys.w;
        if (idx[o] == me) acc += dy[o];
      }
    dx[offset_of(xs, p)] = acc;
  }
}

// ---- average (plain and adaptive) -------------------------------------------------------------------

template <typename T, bool Adaptive>
__global__ void avg_forward_kernel(Pool2dGeom g, const T* x, Strides4 xs, T* y, Strides4 ys) {
  bool c_inner = channels_inner(ys);
  TB_GRID_STRIDE_LOOP(e, g.N * g.C * g.OH * g.OW) {
    Coord4 p = coord_of(e, g.C, g.OH, g.OW, c_inner);
    Window win = window_of<Adaptive>(g, p.h, p.w);
    const T* plane = x + p.n * xs.n + p.c * xs.c;
    double sum = 0;
    for (int64_t h = win.h0; h < win.h1; h++)
      for (int64_t w = win.w0; w < win.w1; w++) sum += plane[h * xs.h + w * xs.w];
    // A window entirely inside the padding has nothing to average: 0, as PyTorch.
    bool empty = win.h0 >= win.h1 || win.w0 >= win.w1;
    y[offset_of(ys, p)] = empty ? T(0) : T(sum / win.divisor);
  }
}

template <typename T, bool Adaptive>
__global__ void avg_backward_kernel(Pool2dGeom g, const T* dy, Strides4 ys, T* dx, Strides4 xs) {
  bool c_inner = channels_inner(xs);
  TB_GRID_STRIDE_LOOP(e, g.N * g.C * g.H * g.W) {
    Coord4 p = coord_of(e, g.C, g.H, g.W, c_inner);
    Range rh, rw;
    candidates<Adaptive>(g, p.h, p.w, rh, rw);
    int64_t base = p.n * ys.n + p.c * ys.c;
    double acc = 0;
    for (int64_t oh = rh.lo; oh <= rh.hi; oh++)
      for (int64_t ow = rw.lo; ow <= rw.hi; ow++) {
        Window win = window_of<Adaptive>(g, oh, ow);
        if (p.h < win.h0 || p.h >= win.h1 || p.w < win.w0 || p.w >= win.w1) continue;
        acc += (double)dy[base + oh * ys.h + ow * ys.w] / win.divisor;
      }
    dx[offset_of(xs, p)] = T(acc);
  }
}

// ---- entry points -----------------------------------------------------------------------------------

bool has_elements(int64_t a, int64_t b, int64_t c, int64_t d) { return a * b * c * d > 0; }

void check_dtype(const char* op, DType dtype) {
  if (dtype != kFloat32 && dtype != kFloat64) cuda_no_kernel(op, dtype);
}

void cuda_max_pool2d_forward(DType dtype, const Pool2dGeom& g, const void* x, Strides4 xs, void* y,
                             int64_t* idx, Strides4 ys) {
  const char* op = "max_pool2d";
  check_dtype(op, dtype);
  int64_t n = g.N * g.C * g.OH * g.OW;
  if (!has_elements(g.N, g.C, g.OH, g.OW)) return;
  if (dtype == kFloat32)
    max_forward_kernel<float><<<grid_for(n), kBlock, 0, cuda_stream()>>>(g, (const float*)x, xs,
                                                                         (float*)y, idx, ys);
  else
    max_forward_kernel<double><<<grid_for(n), kBlock, 0, cuda_stream()>>>(g, (const double*)x, xs,
                                                                          (double*)y, idx, ys);
  cuda_check_launch(op);
}

void cuda_max_pool2d_backward(DType dtype, const Pool2dGeom& g, const void* dy, const int64_t* idx,
                              Strides4 ys, void* dx, Strides4 xs) {
  const char* op = "max_pool2d backward";
  check_dtype(op, dtype);
  int64_t n = g.N * g.C * g.H * g.W;
  if (!has_elements(g.N, g.C, g.H, g.W)) return;
  if (dtype == kFloat32)
    max_backward_kernel<float><<<grid_for(n), kBlock, 0, cuda_stream()>>>(
        g, (const float*)dy, idx, ys, (float*)dx, xs);
  else
    max_backward_kernel<double><<<grid_for(n), kBlock, 0, cuda_stream()>>>(
        g, (const double*)dy, idx, ys, (double*)dx, xs);
  cuda_check_launch(op);
}

template <bool Adaptive>
void launch_avg_forward(const char* op, DType dtype, const Pool2dGeom& g, const void* x,
                        Strides4 xs, void* y, Strides4 ys) {
  check_dtype(op, dtype);
  int64_t n = g.N * g.C * g.OH * g.OW;
  if (!has_elements(g.N, g.C, g.OH, g.OW)) return;
  if (dtype == kFloat32)
    avg_forward_kernel<float, Adaptive><<<grid_for(n), kBlock, 0, cuda_stream()>>>(
        g, (const float*)x, xs, (float*)y, ys);
  else
    avg_forward_kernel<double, Adaptive><<<grid_for(n), kBlock, 0, cuda_stream()>>>(
        g, (const double*)x, xs, (double*)y, ys);
  cuda_check_launch(op);
}

template <bool Adaptive>
void launch_avg_backward(const char* op, DType dtype, const Pool2dGeom& g, const void* dy,
                         Strides4 ys, void* dx, Strides4 xs) {
  check_dtype(op, dtype);
  int64_t n = g.N * g.C * g.H * g.W;
  if (!has_elements(g.N, g.C, g.H, g.W)) return;
  if (dtype == kFloat32)
    avg_backward_kernel<float, Adaptive><<<grid_for(n), kBlock, 0, cuda_stream()>>>(
        g, (const float*)dy, ys, (float*)dx, xs);
  else
    avg_backward_kernel<double, Adaptive><<<grid_for(n), kBlock, 0, cuda_stream()>>>(
        g, (const double*)dy, ys, (double*)dx, xs);
  cuda_check_launch(op);
}

void cuda_avg_pool2d_forward(DType dtype, const Pool2dGeom& g, const void* x, Strides4 xs, void* y,
                             Strides4 ys) {
  launch_avg_forward<false>("avg_pool2d", dtype, g, x, xs, y, ys);
}

void cuda_avg_pool2d_backward(DType dtype, const Pool2dGeom& g, const void* dy, Strides4 ys,
                              void* dx, Strides4 xs) {
  launch_avg_backward<false>("avg_pool2d backward", dtype, g, dy, ys, dx, xs);
}

void cuda_adaptive_avg_pool2d_forward(DType dtype, const Pool2dGeom& g, const void* x, Strides4 xs,
                                      void* y, Strides4 ys) {
  launch_avg_forward<true>("adaptive_avg_pool2d", dtype, g, x, xs, y, ys);
}

void cuda_adaptive_avg_pool2d_backward(DType dtype, const Pool2dGeom& g, const void* dy,
                                       Strides4 ys, void* dx, Strides4 xs) {
  launch_avg_backward<true>("adaptive_avg_pool2d backward", dtype, g, dy, ys, dx, xs);
}

} // namespace

const Pool2dKernels Pool2dKernels::cuda = {
    .max_forward = cuda_max_pool2d_forward,
    .max_backward = cuda_max_pool2d_backward,
    .avg_forward = cuda_avg_pool2d_forward,
    .avg_backward = cuda_avg_pool2d_backward,
    .adaptive_avg_forward = cuda_adaptive_avg_pool2d_forward,
    .adaptive_avg_backward = cuda_adaptive_avg_pool2d_backward,
};

} // namespace tb::kernels
