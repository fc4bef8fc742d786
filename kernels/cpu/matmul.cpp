// kernels/cpu/matmul.cpp — strided batched GEMM on OpenBLAS (the OpenMP build, which shares
// libgomp's thread pool; see meson.build). Row-major cblas_?gemm per batch entry. Small matrices
// in a big batch run one per OpenMP thread instead (OpenBLAS then runs single-threaded inside the
// parallel region); large ones get all threads inside OpenBLAS.
// bfloat16: oneDNN's matmul primitive (bf16 A, B, C; float32 accumulation inside, C rounded once;
// brg:avx512_core_amx_bf16 on this CPU), cached per geometry like the convolutions; alpha is an
// output scale and beta a sum post-op.
// float16: oneDNN 2.6.3 has no float16 matmul on the CPU (primitive creation fails) and OpenBLAS
// none at all, so float16 runs as float32: A and B converted exactly to float32, sgemm, each C
// element rounded once to float16. Correct, not faster.
#include "kernels/matmul.h"

#include <cblas.h>

#include <climits>
#include <cstring>
#include <optional>

#include "kernels/cpu/half.h"
#include "kernels/cpu/onednn_common.h"

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

// ---- bfloat16 on oneDNN ----------------------------------------------------------------------

namespace on = onednn;
using dnnl::memory;

struct MatmulEntry {
  dnnl::matmul prim;
  memory::desc a, b, c, scratchpad;
};

// A [batch or 1, rows, cols] operand stored row-major with leading dimension ld, or transposed
// (stored cols×rows); batch stride 0 broadcasts one matrix.
memory::desc operand_md(int64_t batch, int64_t stride, int64_t rows, int64_t cols, bool trans,
                        int64_t ld) {
  int64_t nb = stride == 0 ? 1 : batch;
  memory::dims strides = trans ? memory::dims{stride, 1, ld} : memory::dims{stride, ld, 1};
  if (nb == 1) strides[0] = rows * cols; // any value: one matrix
  return memory::desc({nb, rows, cols}, memory::data_type::bf16, strides);
}

void bf16_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha,
               const void* a, int64_t lda, int64_t stride_a, const void* b, int64_t ldb,
               int64_t stride_b, double beta, void* c, int64_t ldc, int64_t stride_c,
               int64_t batch) {
  if (m == 0 || n == 0 || batch == 0) return;
  if (k == 0) { // C = beta C (C not read when beta == 0)
    for (int64_t p = 0; p < batch; p++)
      for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
          uint16_t& v = ((uint16_t*)c)[p * stride_c + i * ldc + j];
          v = beta == 0.0 ? 0 : float_to_bfloat16((float)(beta * bfloat16_to_float(v)));
        }
    return;
  }
  int64_t alpha_bits, beta_bits;
  std::memcpy(&alpha_bits, &alpha, 8);
  std::memcpy(&beta_bits, &beta, 8);
  on::Key key{on::num_threads(), trans_a, trans_b, m, n, k, lda, ldb, ldc, stride_a == 0,
              stride_b == 0, stride_a, stride_b, stride_c, batch, alpha_bits, beta_bits};
  static on::Cache<MatmulEntry> cache;
  const MatmulEntry& e = cache.get(key, [&] {
    memory::desc a_md = operand_md(batch, stride_a, m, k, trans_a, lda);
    memory::desc b_md = operand_md(batch, stride_b, k, n, trans_b, ldb);
    memory::desc c_md({batch, m, n}, memory::data_type::bf16,
                      memory::dims{batch == 1 ? m * n : stride_c, ldc, 1});
    dnnl::primitive_attr attr = on::scratchpad_attr();
    if (alpha != 1.0) attr.set_output_scales(0, {(float)alpha});
    if (beta != 0.0) {
      dnnl::post_ops po;
      po.append_sum((float)beta);
      attr.set_post_ops(po);
    }
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a_md, b_md, c_md), attr, on::engine());
    on::count_primitive_created();
    return MatmulEntry{dnnl::matmul(pd), a_md, b_md, c_md, pd.scratchpad_desc()};
  });
  auto mem = [](const memory::desc& md, const void* p) {
    return memory(md, on::engine(), const_cast<void*>(p));
  };
  on::execute(e.prim, e.scratchpad,
              {{DNNL_ARG_SRC, mem(e.a, a)}, {DNNL_ARG_WEIGHTS, mem(e.b, b)},
               {DNNL_ARG_DST, mem(e.c, c)}});
}

// ---- float16 as float32 ------------------------------------------------------------------------

// float16 <-> float32 per element: cpu_half::f16_to_f32 / f32_to_f16 (kernels/cpu/half.h: the
// compiler's _Float16, vectorised F16C / AVX512-FP16 conversions, round to nearest even).

// Elements spanned by a [batch, rows, cols] operand (see operand_md).
int64_t operand_span(int64_t batch, int64_t stride, int64_t rows, int64_t cols, bool trans,
                     int64_t ld) {
  if (rows == 0 || cols == 0) return 0;
  int64_t one = trans ? (cols - 1) * ld + rows : (rows - 1) * ld + cols;
  return (stride == 0 ? 0 : (batch - 1) * stride) + one;
}

void f16_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha,
              const void* a, int64_t lda, int64_t stride_a, const void* b, int64_t ldb,
              int64_t stride_b, double beta, void* c, int64_t ldc, int64_t stride_c,
              int64_t batch) {
  if (m == 0 || n == 0 || batch == 0) return;
  auto to_f32 = [](const void* src, on::Buffer& buf, int64_t count) {
    const uint16_t* h = (const uint16_t*)src;
    float* f = (float*)buf.data();
#pragma omp parallel for schedule(static) if (count > 32768)
    for (int64_t i = 0; i < count; i++) f[i] = cpu_half::f16_to_f32(h[i]);
    return f;
  };
  int64_t na = operand_span(batch, stride_a, m, k, trans_a, lda);
  int64_t nb = operand_span(batch, stride_b, k, n, trans_b, ldb);
  int64_t nc = operand_span(batch, stride_c, m, n, false, ldc);
  on::Buffer af(na * sizeof(float)), bf(nb * sizeof(float)), cf(nc * sizeof(float));
  float* C = beta == 0.0 ? (float*)cf.data() : to_f32(c, cf, nc);
  gemm_impl(trans_a, trans_b, m, n, k, alpha, to_f32(a, af, na), lda, stride_a, to_f32(b, bf, nb),
            ldb, stride_b, beta, C, ldc, stride_c, batch);
  if (k == 0 && beta == 0.0) // gemm_impl leaves C unwritten only when there is nothing to do
    for (int64_t i = 0; i < nc; i++) C[i] = 0.0f;
  uint16_t* h = (uint16_t*)c;
#pragma omp parallel for collapse(2) schedule(static) if (batch * m * n > 32768)
  for (int64_t p = 0; p < batch; p++)
    for (int64_t i = 0; i < m; i++)
      for (int64_t j = 0; j < n; j++) {
        int64_t idx = p * stride_c + i * ldc + j;
        h[idx] = cpu_half::f32_to_f16(C[idx]);
      }
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
    case kBFloat16:
      return bf16_gemm(trans_a, trans_b, m, n, k, alpha, a, lda, stride_a, b, ldb, stride_b, beta,
                       c, ldc, stride_c, batch);
    case kFloat16:
      return f16_gemm(trans_a, trans_b, m, n, k, alpha, a, lda, stride_a, b, ldb, stride_b, beta,
                      c, ldc, stride_c, batch);
    default:
      TB_CHECK(false, "cpu_gemm: no kernel for dtype {} on cpu", dtype);
  }
}

void cpu_broadcast_rows(DType dtype, const void* row, void* out, int64_t rows, int64_t cols) {
  switch (dtype) {
    case kFloat32: return broadcast_rows_impl((const float*)row, (float*)out, rows, cols);
    case kFloat64: return broadcast_rows_impl((const double*)row, (double*)out, rows, cols);
    case kBFloat16:
    case kFloat16:
      return broadcast_rows_impl((const uint16_t*)row, (uint16_t*)out, rows, cols);
    default: TB_CHECK(false, "cpu_broadcast_rows: no kernel for dtype {} on cpu", dtype);
  }
}

} // namespace

const MatmulKernels MatmulKernels::cpu = {
    .gemm = cpu_gemm,
    .broadcast_rows = cpu_broadcast_rows,
};

} // namespace tb::kernels
