// kernels/cuda/matmul.cu — strided batched GEMM through cuBLAS (the contract is kernels/matmul.h;
// the specification kernels/ref/matmul.cpp).
//
// cuBLAS is column-major, tb is row-major. A row-major r×c matrix with row stride ld is, to
// cuBLAS, a column-major c×r matrix with leading dimension ld: its transpose. So instead of
//   C = op(A) op(B)          (row-major, m×n)
// we ask cuBLAS for
//   C^T = op(B)^T op(A)^T    (column-major, n×m),
// passing B first and keeping each operand's transpose flag: a row-major B that is not transposed
// is, seen column-major, exactly the op(B)^T we need (CUBLAS_OP_N), and a transposed one needs
// CUBLAS_OP_T. No data moves.
//
// One product (batch 1) goes through cublasSgemm/cublasDgemm rather than the strided-batched
// call: cuBLAS picks its kernels per entry point, and the plain GEMM's are the tuned ones (on an
// H100 the batched call with batch 1 ran 8192^3 at half the plain call's speed).
//
// Math mode stays cuBLAS's default (true float32, no TF32), so float32 products match the CPU's
// within float32 rounding, as PyTorch's default (allow_tf32 = False).
#include "kernels/cuda/common.cuh"
#include "kernels/matmul.h"

#include <climits>

namespace tb::kernels {
namespace {

void cuda_gemm(DType dtype, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
               double alpha, const void* a, int64_t lda, int64_t stride_a, const void* b,
               int64_t ldb, int64_t stride_b, double beta, void* c, int64_t ldc, int64_t stride_c,
               int64_t batch) {
  if (dtype != kFloat32 && dtype != kFloat64) cuda_no_kernel("matmul", dtype);
  if (m == 0 || n == 0 || batch == 0) return;
  // cuBLAS takes int sizes and leading dimensions.
  for (int64_t v : {m, n, k, lda, ldb, ldc, batch})
    TB_CHECK(v >= 0 && v <= INT_MAX,
             "matmul: size {} is too large for cuBLAS (m={}, n={}, k={}, lda={}, ldb={}, ldc={}, "
             "batch={})",
             v, m, n, k, lda, ldb, ldc, batch);
  cublasHandle_t h = cuda_cublas();
  cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  if (batch == 1 && dtype == kFloat32) {
    float al = (float)alpha, be = (float)beta;
    cublas_check(cublasSgemm(h, op_b, op_a, (int)n, (int)m, (int)k, &al, (const float*)b, (int)ldb,
                             (const float*)a, (int)lda, &be, (float*)c, (int)ldc),
                 "matmul (cublasSgemm)");
  } else if (batch == 1) {
    cublas_check(cublasDgemm(h, op_b, op_a, (int)n, (int)m, (int)k, &alpha, (const double*)b,
                             (int)ldb, (const double*)a, (int)lda, &beta, (double*)c, (int)ldc),
                 "matmul (cublasDgemm)");
  } else if (dtype == kFloat32) {
    float al = (float)alpha, be = (float)beta;
    cublas_check(cublasSgemmStridedBatched(h, op_b, op_a, (int)n, (int)m, (int)k, &al,
                                           (const float*)b, (int)ldb, stride_b, (const float*)a,
                                           (int)lda, stride_a, &be, (float*)c, (int)ldc, stride_c,
                                           (int)batch),
                 "matmul (cublasSgemmStridedBatched)");
  } else {
    cublas_check(cublasDgemmStridedBatched(h, op_b, op_a, (int)n, (int)m, (int)k, &alpha,
                                           (const double*)b, (int)ldb, stride_b,
                                           (const double*)a, (int)lda, stride_a, &beta,
                                           (double*)c, (int)ldc, stride_c, (int)batch),
                 "matmul (cublasDgemmStridedBatched)");
  }
}

// out[r, j] = row[j], one thread per element.
template <typename T>
__global__ void broadcast_rows_kernel(const T* row, T* out, int64_t rows, int64_t cols) {
  TB_GRID_STRIDE_LOOP(e, rows * cols) out[e] = row[e % cols];
}

void cuda_broadcast_rows(DType dtype, const void* row, void* out, int64_t rows, int64_t cols) {
  if (dtype != kFloat32 && dtype != kFloat64) cuda_no_kernel("linear (bias)", dtype);
  int64_t n = rows * cols;
  if (n == 0) return;
  if (dtype == kFloat32)
    broadcast_rows_kernel<float><<<grid_for(n), kBlock, 0, cuda_stream()>>>(
        (const float*)row, (float*)out, rows, cols);
  else
    broadcast_rows_kernel<double><<<grid_for(n), kBlock, 0, cuda_stream()>>>(
        (const double*)row, (double*)out, rows, cols);
  cuda_check_launch("linear (bias)");
}

} // namespace

const MatmulKernels MatmulKernels::cuda = {
    .gemm = cuda_gemm,
    .broadcast_rows = cuda_broadcast_rows,
};

} // namespace tb::kernels
