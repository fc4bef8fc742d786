// kernels/matmul.h — strided batched GEMM, row-major, as cblas_?gemm with CblasRowMajor:
//
//   C[b] = alpha * op(A[b]) · op(B[b]) + beta * C[b],   b = 0 .. batch-1
//
// op(A[b]) is m×k: stored m×k with row stride lda (>= max(1, k)) when !trans_a, else stored k×m
// (lda >= max(1, m)). op(B[b]) is k×n: stored k×n (ldb >= max(1, n)) or n×k when trans_b (ldb >=
// max(1, k)). C[b] is m×n with ldc >= max(1, n). A[b] starts at a + b * stride_a (elements; 0
// broadcasts one matrix to every batch), likewise B and C. When beta == 0, C is not read (it may
// hold garbage or NaN), as BLAS. k == 0 gives C = beta * C. dtype float32, float64, bfloat16 or
// float16 (A, B and C all of it; half precision accumulates in float32 or wider and rounds each
// C element once).
// Three tables of the same kernels:
//   MatmulKernels::ref  — kernels/ref/matmul.cpp: triple loop with double accumulation, the
//                         specification;
//   MatmulKernels::cpu  — kernels/cpu/matmul.cpp: OpenBLAS (OpenMP build); bfloat16 on oneDNN's
//                         matmul (AMX here); float16 converted to float32 for OpenBLAS (oneDNN 2.6
//                         has no CPU float16 matmul);
//   MatmulKernels::cuda — kernels/cuda/matmul.cu: cuBLAS (column-major: compute
//                         C^T = op(B)^T op(A)^T).
#pragma once

#include <cstdint>

#include <tb/core.h>

namespace tb::kernels {

struct MatmulKernels {
  // The batched GEMM above.
  void (*gemm)(DType dtype, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
               double alpha, const void* a, int64_t lda, int64_t stride_a, const void* b,
               int64_t ldb, int64_t stride_b, double beta, void* c, int64_t ldc,
               int64_t stride_c, int64_t batch);

  // out[r, j] = row[j] for a contiguous rows×cols out: linear's bias, written before a gemm with
  // beta = 1 so the bias is added inside the product. dtype float32, float64, bfloat16, float16.
  void (*broadcast_rows)(DType dtype, const void* row, void* out, int64_t rows, int64_t cols);

  static const MatmulKernels ref, cpu, cuda;
};

} // namespace tb::kernels
