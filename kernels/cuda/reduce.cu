// kernels/cuda/reduce.cu — reductions over the middle dim of [outer, reduce, inner] on the device
// (the specification is kernels/ref/reduce.cpp; the layout is described in kernels/reduce.h).
//
// Two shapes of work:
//   inner == 1 (reducing the last dims, the common case): one block of kBlock threads per output;
//     thread t takes r = t, t + kBlock, ... and a shared-memory tree combines the partials;
//   inner > 1: one thread per output (o, i), looping over r; neighbouring threads read neighbouring
//     i, so the loads coalesce.
// Floating sums accumulate in double, as the reference; the tree order is fixed, so results are
// the same on every run (not bit-equal to the reference's sequential order).
#include "kernels/cuda/common.cuh"
#include "kernels/reduce.h"

namespace tb::kernels {

// ---- sum / mean --------------------------------------------------------------------------------
// out[o, i] = scale * sum_r x[o, r, i]; Acc is double for floats, int64 for int64.

template <typename T, typename Acc>
__global__ void sum_rows_kernel(const T* x, T* out, int64_t reduce, double scale) {
  const T* row = x + (int64_t)blockIdx.x * reduce;
  Acc acc = 0;
  for (int64_t r = threadIdx.x; r < reduce; r += kBlock) acc += (Acc)row[r];
  acc = block_reduce(acc, SumOp{});
  if (threadIdx.x == 0) out[blockIdx.x] = scale == 1.0 ? (T)acc : (T)(acc * scale);
}

template <typename T, typename Acc>
__global__ void sum_cols_kernel(const T* x, T* out, int64_t outer, int64_t reduce, int64_t inner,
                                double scale) {
  TB_GRID_STRIDE_LOOP(k, outer * inner) {
    int64_t o = k / inner, i = k % inner;
    const T* p = x + o * reduce * inner + i;
    Acc acc = 0;
    for (int64_t r = 0; r < reduce; r++) acc += (Acc)p[r * inner];
    out[k] = scale == 1.0 ? (T)acc : (T)(acc * scale);
  }
}

template <typename T, typename Acc>
static void launch_sum(const void* x, void* out, int64_t outer, int64_t reduce, int64_t inner,
                       double scale) {
  if (inner == 1 && outer < (int64_t)1 << 31)
    sum_rows_kernel<T, Acc><<<(unsigned)outer, kBlock, 0, cuda_stream()>>>((const T*)x, (T*)out,
                                                                          reduce, scale);
  else
    sum_cols_kernel<T, Acc><<<grid_for(outer * inner), kBlock, 0, cuda_stream()>>>(
        (const T*)x, (T*)out, outer, reduce, inner, scale);
  cuda_check_launch("sum");
}

void cuda_reduce_sum(DType dtype, const void* x, void* out, int64_t outer, int64_t reduce,
                     int64_t inner, double scale) {
  if (dtype == kInt64)
    TB_CHECK(scale == 1.0, "cuda_reduce_sum: int64 sums take scale 1, got {}", scale);
  if (dtype != kFloat32 && dtype != kFloat64 && dtype != kInt64) cuda_no_kernel("sum", dtype);
  if (outer * inner == 0) return;
  switch (dtype) {
    case kFloat32: return launch_sum<float, double>(x, out, outer, reduce, inner, scale);
    case kFloat64: return launch_sum<double, double>(x, out, outer, reduce, inner, scale);
    default: return launch_sum<int64_t, int64_t>(x, out, outer, reduce, inner, 1.0);
  }
}

// ---- max / min with their index -------------------------------------------------------------------

// Should candidate (v, r) replace (best, best_r)? NaN beats every number; among equals (two NaNs,
// or two equal numbers) the smaller index wins, so the FIRST extreme is returned as the reference.
template <typename T>
__device__ bool arg_better(ArgReduceOp op, T v, int64_t r, T best, int64_t best_r) {
  bool v_nan = v != v, best_nan = best != best;
  if (v_nan || best_nan) return v_nan && (!best_nan || r < best_r);
  if (v == best) return r < best_r;
  return op == ArgReduceOp::Max ? v > best : v < best;
}

template <typename T>
__global__ void arg_rows_kernel(ArgReduceOp op, const T* x, T* values, int64_t* indices,
                                int64_t reduce) {
  __shared__ T best_v[kBlock];
  __shared__ int64_t best_r[kBlock];
  const T* row = x + (int64_t)blockIdx.x * reduce;
  int t = threadIdx.x;
  // Every thread starts from its first element (reduce >= kBlock) or from element 0.
  int64_t r0 = t < reduce ? t : 0;
  T bv = row[r0];
  int64_t br = r0;
  for (int64_t r = r0 + kBlock; r < reduce; r += kBlock)
    if (arg_better(op, row[r], r, bv, br)) bv = row[r], br = r;
  best_v[t] = bv;
  best_r[t] = br;
  __syncthreads();
  for (int s = kBlock / 2; s > 0; s >>= 1) {
    if (t < s && arg_better(op, best_v[t + s], best_r[t + s], best_v[t], best_r[t])) {
      best_v[t] = best_v[t + s];
      best_r[t] = best_r[t + s];
    }
    __syncthreads();
  }
  if (t == 0) {
    if (values) values[blockIdx.x] = best_v[0];
    if (indices) indices[blockIdx.x] = best_r[0];
  }
}

template <typename T>
__global__ void arg_cols_kernel(ArgReduceOp op, const T* x, T* values, int64_t* indices,
                                int64_t outer, int64_t reduce, int64_t inner) {
  TB_GRID_STRIDE_LOOP(k, outer * inner) {
    int64_t o = k / inner, i = k % inner;
    const T* p = x + o * reduce * inner + i;
    T bv = p[0];
    int64_t br = 0;
    for (int64_t r = 1; r < reduce; r++)
      if (arg_better(op, p[r * inner], r, bv, br)) bv = p[r * inner], br = r;
    if (values) values[k] = bv;
    if (indices) indices[k] = br;
  }
}

template <typename T>
static void launch_arg(ArgReduceOp op, const void* x, void* values, int64_t* indices,
                       int64_t outer, int64_t reduce, int64_t inner) {
  if (inner == 1 && outer < (int64_t)1 << 31)
    arg_rows_kernel<T><<<(unsigned)outer, kBlock, 0, cuda_stream()>>>(op, (const T*)x, (T*)values,
                                                                     indices, reduce);
  else
    arg_cols_kernel<T><<<grid_for(outer * inner), kBlock, 0, cuda_stream()>>>(
        op, (const T*)x, (T*)values, indices, outer, reduce, inner);
  cuda_check_launch(op == ArgReduceOp::Max ? "max" : "min");
}

void cuda_reduce_arg(ArgReduceOp op, DType dtype, const void* x, void* values, int64_t* indices,
                     int64_t outer, int64_t reduce, int64_t inner) {
  const char* name = op == ArgReduceOp::Max ? "max" : "min";
  TB_CHECK(reduce > 0, "{}: cannot reduce an empty dim", name);
  if (outer * inner == 0) return;
  switch (dtype) {
    case kFloat32: return launch_arg<float>(op, x, values, indices, outer, reduce, inner);
    case kFloat64: return launch_arg<double>(op, x, values, indices, outer, reduce, inner);
    case kInt64: return launch_arg<int64_t>(op, x, values, indices, outer, reduce, inner);
    default: cuda_no_kernel(name, dtype);
  }
}

// dx[o, r, i] = (r == indices[o, i]) ? dy[o, i] : 0, one thread per element of dx.
template <typename T>
__global__ void arg_backward_kernel(const T* dy, const int64_t* indices, T* dx, int64_t reduce,
                                    int64_t inner, int64_t n) {
  TB_GRID_STRIDE_LOOP(e, n) {
    int64_t i = e % inner, r = (e / inner) % reduce, o = e / (inner * reduce);
    int64_t k = o * inner + i;
    dx[e] = indices[k] == r ? dy[k] : T(0);
  }
}

void cuda_reduce_arg_backward(DType dtype, const void* dy, const int64_t* indices, void* dx,
                              int64_t outer, int64_t reduce, int64_t inner) {
  if (dtype != kFloat32 && dtype != kFloat64) cuda_no_kernel("max/min backward", dtype);
  int64_t n = outer * reduce * inner;
  if (n == 0) return;
  if (dtype == kFloat32)
    arg_backward_kernel<float><<<grid_for(n), kBlock, 0, cuda_stream()>>>(
        (const float*)dy, indices, (float*)dx, reduce, inner, n);
  else
    arg_backward_kernel<double><<<grid_for(n), kBlock, 0, cuda_stream()>>>(
        (const double*)dy, indices, (double*)dx, reduce, inner, n);
  cuda_check_launch("max/min backward");
}

// ---- variance (two passes, in double) -------------------------------------------------------------
// mean = sum_r x / reduce;  var = sum_r (x - mean)^2 / max(0, reduce - correction).

template <typename T>
__global__ void var_rows_kernel(const T* x, T* var, T* mean, int64_t reduce, int64_t correction) {
  const T* row = x + (int64_t)blockIdx.x * reduce;
  double s = 0;
  for (int64_t r = threadIdx.x; r < reduce; r += kBlock) s += (double)row[r];
  double m = block_reduce(s, SumOp{}) / (double)reduce;
  double ss = 0;
  for (int64_t r = threadIdx.x; r < reduce; r += kBlock) {
    double d = (double)row[r] - m;
    ss += d * d;
  }
  ss = block_reduce(ss, SumOp{});
  if (threadIdx.x == 0) {
    int64_t div = reduce - correction > 0 ? reduce - correction : 0;
    var[blockIdx.x] = (T)(ss / (double)div);
    if (mean) mean[blockIdx.x] = (T)m;
  }
}

template <typename T>
__global__ void var_cols_kernel(const T* x, T* var, T* mean, int64_t outer, int64_t reduce,
                                int64_t inner, int64_t correction) {
  TB_GRID_STRIDE_LOOP(k, outer * inner) {
    int64_t o = k / inner, i = k % inner;
    const T* p = x + o * reduce * inner + i;
    double s = 0;
    for (int64_t r = 0; r < reduce; r++) s += (double)p[r * inner];
    double m = s / (double)reduce;
    double ss = 0;
    for (int64_t r = 0; r < reduce; r++) {
      double d = (double)p[r * inner] - m;
      ss += d * d;
    }
    int64_t div = reduce - correction > 0 ? reduce - correction : 0;
    var[k] = (T)(ss / (double)div);
    if (mean) mean[k] = (T)m;
  }
}

template <typename T>
static void launch_var(const void* x, void* var, void* mean, int64_t outer, int64_t reduce,
                       int64_t inner, int64_t correction) {
  if (inner == 1 && outer < (int64_t)1 << 31)
    var_rows_kernel<T><<<(unsigned)outer, kBlock, 0, cuda_stream()>>>((const T*)x, (T*)var,
                                                                     (T*)mean, reduce, correction);
  else
    var_cols_kernel<T><<<grid_for(outer * inner), kBlock, 0, cuda_stream()>>>(
        (const T*)x, (T*)var, (T*)mean, outer, reduce, inner, correction);
  cuda_check_launch("var");
}

void cuda_reduce_var(DType dtype, const void* x, void* var, void* mean, int64_t outer,
                     int64_t reduce, int64_t inner, int64_t correction) {
  if (dtype != kFloat32 && dtype != kFloat64) cuda_no_kernel("var", dtype);
  if (outer * inner == 0) return;
  if (dtype == kFloat32) launch_var<float>(x, var, mean, outer, reduce, inner, correction);
  else launch_var<double>(x, var, mean, outer, reduce, inner, correction);
}

} // namespace tb::kernels
