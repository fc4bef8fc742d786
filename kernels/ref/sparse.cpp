// kernels/ref/sparse.cpp — reference CSR × dense product (kernels/sparse.h): each output is the
// sum over its row's non-zeros, accumulated in double. The specification for the fast kernel.
#include "kernels/sparse.h"

namespace tb::kernels {
namespace {

void ref_spmm(int64_t rows, int64_t cols, int64_t n, const int32_t* row_ptr,
              const int32_t* col_idx, const float* values, const float* bias, const float* x,
              float* y) {
  (void)cols;
  for (int64_t r = 0; r < rows; r++)
    for (int64_t j = 0; j < n; j++) {
      double acc = bias ? bias[r] : 0.0;
      for (int32_t p = row_ptr[r]; p < row_ptr[r + 1]; p++)
        acc += (double)values[p] * (double)x[(int64_t)col_idx[p] * n + j];
      y[r * n + j] = (float)acc;
    }
}

} // namespace

const SparseKernels SparseKernels::ref = {.spmm = ref_spmm};

} // namespace tb::kernels
