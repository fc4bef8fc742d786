// kernels/sparse.h — sparse × dense products for pruned weights (CSR: compressed sparse rows).
//
//   Y[r, j] = bias[r] + sum over the non-zeros p of row r: values[p] * X[col_idx[p], j]
//   r = 0 .. rows-1, j = 0 .. n-1
//
// W is rows×cols with its non-zeros of row r at p = row_ptr[r] .. row_ptr[r+1]-1 (col_idx sorted
// within a row). X is cols×n and Y rows×n, both contiguous row-major; bias may be null. float32.
// A Linear y = x W^T runs it on x^T (n = batch rows); a 1×1 convolution runs it per image on the
// NCHW planes directly (X = [C_in, H*W], Y = [C_out, H*W]).
// Tables:
//   SparseKernels::ref  — kernels/ref/sparse.cpp: the sum above, in double, one output at a time;
//   SparseKernels::cpu  — kernels/cpu/sparse.cpp: rows split over OpenMP threads, each non-zero
//                         an axpy over a 64-column slab of X kept in registers;
//   SparseKernels::cuda — none yet (null table: dispatch raises tb::Error).
#pragma once

#include <cstdint>

#include <tb/core.h>

namespace tb::kernels {

struct SparseKernels {
  void (*spmm)(int64_t rows, int64_t cols, int64_t n, const int32_t* row_ptr,
               const int32_t* col_idx, const float* values, const float* bias, const float* x,
               float* y);
  static const SparseKernels ref, cpu, cuda;
};

} // namespace tb::kernels
