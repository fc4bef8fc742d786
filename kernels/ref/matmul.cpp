// kernels/ref/matmul.cpp — reference strided batched GEMM: the triple loop, accumulating in double.
// The specification for cpu_gemm (OpenBLAS; oneDNN for bfloat16) and cuda_gemm (cuBLAS); see
// kernels/matmul.h. float16/bfloat16 are read exactly, accumulated in double and each output
// rounded once (kernels/ref/half.h).
#include "kernels/matmul.h"
#include "kernels/ref/half.h"

namespace tb::kernels {
namespace {

using ref_half::BF16;
using ref_half::F16;
using ref_half::load;
using ref_half::store;

template <typename T>
void gemm_impl(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha,
               const T* a, int64_t lda, int64_t stride_a, const T* b, int64_t ldb,
               int64_t stride_b, double beta, T* c, int64_t ldc, int64_t stride_c,
               int64_t batch) {
  for (int64_t p = 0; p < batch; p++) {
    const T* A = a + p * stride_a;
    const T* B = b + p * stride_b;
    T* C = c + p * stride_c;
    for (int64_t i = 0; i < m; i++)
      for (int64_t j = 0; j < n; j++) {
        double acc = 0;
        for (int64_t l = 0; l < k; l++) {
          double av = load(trans_a ? A[l * lda + i] : A[i * lda + l]);  // op(A)[i, l]
          double bv = load(trans_b ? B[j * ldb + l] : B[l * ldb + j]);  // op(B)[l, j]
          acc += av * bv;
        }
        // beta == 0: C is not read (it may be uninitialised), as BLAS.
        double prev = beta == 0.0 ? 0.0 : beta * load(C[i * ldc + j]);
        store(C[i * ldc + j], alpha * acc + prev);
      }
  }
}

template <typename T> void broadcast_rows_impl(const T* row, T* out, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; r++)
    for (int64_t j = 0; j < cols; j++) out[r * cols + j] = row[j];
}

void ref_gemm(DType dtype, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
              double alpha, const void* a, int64_t lda, int64_t stride_a, const void* b,
              int64_t ldb, int64_t stride_b, double beta, void* c, int64_t ldc, int64_t stride_c,
              int64_t batch) {
  switch (dtype) {
    case kFloat32:
      return gemm_impl(trans_a, trans_b, m, n, k, alpha, (const float*)a, lda, stride_a,
                       (const float*)b, ldb, stride_b, beta, (float*)c, ldc, stride_c, batch);
    case kFloat64:
      return gemm_impl(trans_a, trans_b, m, n, k, alpha, (const double*)a, lda, stride_a,
                       (const double*)b, ldb, stride_b, beta, (double*)c, ldc, stride_c, batch);
    case kBFloat16:
      return gemm_impl(trans_a, trans_b, m, n, k, alpha, (const BF16*)a, lda, stride_a,
                       (const BF16*)b, ldb, stride_b, beta, (BF16*)c, ldc, stride_c, batch);
    case kFloat16:
      return gemm_impl(trans_a, trans_b, m, n, k, alpha, (const F16*)a, lda, stride_a,
                       (const F16*)b, ldb, stride_b, beta, (F16*)c, ldc, stride_c, batch);
    default:
      TB_CHECK(false, "ref_gemm: no kernel for dtype {} on cpu", dtype);
  }
}

void ref_broadcast_rows(DType dtype, const void* row, void* out, int64_t rows, int64_t cols) {
  switch (dtype) {
    case kFloat32: return broadcast_rows_impl((const float*)row, (float*)out, rows, cols);
    case kFloat64: return broadcast_rows_impl((const double*)row, (double*)out, rows, cols);
    case kBFloat16:
    case kFloat16:
      return broadcast_rows_impl((const uint16_t*)row, (uint16_t*)out, rows, cols);
    default: TB_CHECK(false, "ref_broadcast_rows: no kernel for dtype {} on cpu", dtype);
  }
}

} // namespace

const MatmulKernels MatmulKernels::ref = {
    .gemm = ref_gemm,
    .broadcast_rows = ref_broadcast_rows,
};

} // namespace tb::kernels
