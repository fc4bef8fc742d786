// kernels/cpu/matmul.cpp — strided batched GEMM on OpenBLAS (the OpenMP build, which shares
// libgomp's thread pool; see meson.build). Row-major cblas_?gemm per batch entry. Small matrices
// in a big batch run one per OpenMP thread instead (OpenBLAS then runs single-threaded inside the
// parallel region); large ones get all threads inside OpenBLAS.
#include "kernels/matmul.h"

#include <cblas.h>

#include <climits>

namespace tb::kernels {
namespace {

// Below this many multiply-adds per matrix, parallelise over the batch instead of inside BLAS.
constexpr int64_t kSmallGemm = 64 * 64 * 64;

inline void gemm_one(const float* A, const float* B, float* C, CBLAS_TRANSPOSE ta,
                     CBLAS_TRANSPOSE tb, int m, int n, int k, float alpha, int lda, int ldb,
                     float beta, int ldc) {
  cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}
inline void gemm_one(const double* A, const double* B, double* C, CBLAS_TRANSPOSE ta,
                     CBLAS_TRANSPOSE tb, int m, int n, int k, double alpha, int lda, int ldb,
                     double beta, int ldc) {
  cblas_dgemm(CblasRowMajor, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}

template <typename T>
void gemm_impl(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha,
               const T* a, int64_t lda, int64_t stride_a, const T* b, int64_t ldb,
               int64_t stride_b, double beta, T* c, int64_t ldc, int64_t stride_c,
               int64_t batch) {
  if (m == 0 || n == 0 || batch == 0) return;
  CBLAS_TRANSPOSE ta = trans_a ? CblasTrans : CblasNoTrans;
  CBLAS_TRANSPOSE tb = trans_b ? CblasTrans : CblasNoTrans;
  auto one = [&](int64_t p) {
    gemm_one(a + p * stride_a, b + p * stride_b, c + p * stride_c, ta, tb, (int)m, (int)n, (int)k,
             (T)alpha, (int)lda, (int)ldb, (T)beta, (int)ldc);
  };
  if (batch > 1 && m * n * k < kSmallGemm) {
#pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < batch; p++) one(p);
  } else {
    for (int64_t p = 0; p < batch; p++) one(p);
  }
}

template <typename T> void broadcast_rows_impl(const T* row, T* out, int64_t rows, int64_t cols) {
#pragma omp parallel for schedule(static) if (rows * cols > 32768)
  for (int64_t r = 0; r < rows; r++)
    for (int64_t j = 0; j < cols; j++) out[r * cols + j] = row[j];
}

void cpu_gemm(DType dtype, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
              double alpha, const void* a, int64_t lda, int64_t stride_a, const void* b,
              int64_t ldb, int64_t stride_b, double beta, void* c, int64_t ldc, int64_t stride_c,
              int64_t batch) {
  // cblas takes int sizes and leading dimensions.
  TB_CHECK(m <= INT_MAX && n <= INT_MAX && k <= INT_MAX && lda <= INT_MAX && ldb <= INT_MAX &&
               ldc <= INT_MAX,
           "cpu_gemm: sizes m={} n={} k={} (lda={}, ldb={}, ldc={}) exceed BLAS's int range", m,
           n, k, lda, ldb, ldc);
  switch (dtype) {
    case kFloat32:
      return gemm_impl(trans_a, trans_b, m, n, k, alpha, (const float*)a, lda, stride_a,
                       (const float*)b, ldb, stride_b, beta, (float*)c, ldc, stride_c, batch);
    case kFloat64:
      return gemm_impl(trans_a, trans_b, m, n, k, alpha, (const double*)a, lda, stride_a,
                       (const double*)b, ldb, stride_b, beta, (double*)c, ldc, stride_c, batch);
    default:
      TB_CHECK(false, "cpu_gemm: no kernel for dtype {} on cpu", dtype);
  }
}

void cpu_broadcast_rows(DType dtype, const void* row, void* out, int64_t rows, int64_t cols) {
  switch (dtype) {
    case kFloat32: return broadcast_rows_impl((const float*)row, (float*)out, rows, cols);
    case kFloat64: return broadcast_rows_impl((const double*)row, (double*)out, rows, cols);
    default: TB_CHECK(false, "cpu_broadcast_rows: no kernel for dtype {} on cpu", dtype);
  }
}

} // namespace

const MatmulKernels MatmulKernels::cpu = {
    .gemm = cpu_gemm,
    .broadcast_rows = cpu_broadcast_rows,
};

} // namespace tb::kernels
