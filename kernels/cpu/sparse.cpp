// kernels/cpu/sparse.cpp — fast CSR × dense product (kernels/sparse.h).
//
// Y = W X with W sparse [rows, cols], X dense [cols, n]. Each non-zero w[r, c] adds w * X[c, :]
// to Y[r, :]: an axpy over the columns of X. What makes it fast:
//  * slabs of 64 columns of X/Y: the 64 partial sums of a row live in registers (4 AVX-512
//    vectors) while the row's non-zeros stream past;
//  * blocks of X's rows (the weight's input columns) small enough to stay in L2 (~96 KB): every
//    weight row walks the same block before the next one is touched, so X is read from cache,
//    not from L3 or memory, once per row. A cursor per row remembers where its non-zeros of the
//    next block start (columns are sorted within a row);
//  * weight rows split into equal ranges over the OpenMP threads.
#include "kernels/sparse.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace tb::kernels {
namespace {

constexpr int64_t kSlab = 64;

// 16 floats as one value (GCC/Clang vector extension): an AVX-512 register, or two AVX ones.
typedef float v16 __attribute__((vector_size(64)));

inline v16 load16(const float* p) {
  v16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// y[0 .. 64) += sum over p in [p0, p1) of values[p] * x[col_idx[p] * n + 0 .. 64), the 64 sums in
// four vector registers (written with vector types: left alone, GCC vectorises the loop over p
// with gathers instead).
inline void axpy_slab64(int32_t p0, int32_t p1, const int32_t* col_idx, const float* values,
                        const float* x, int64_t n, float* y) {
  // Two non-zeros per iteration into separate sums: eight independent FMA chains, so the FMA
  // latency (4 cycles) does not serialise the loop.
  v16 a0 = load16(y), a1 = load16(y + 16), a2 = load16(y + 32), a3 = load16(y + 48);
  v16 b0 = {}, b1 = {}, b2 = {}, b3 = {};
  int32_t p = p0;
  for (; p + 1 < p1; p += 2) {
    const float u = values[p], v = values[p + 1];
    const float* xu = x + (int64_t)col_idx[p] * n;
    const float* xv = x + (int64_t)col_idx[p + 1] * n;
    a0 += u * load16(xu);
    a1 += u * load16(xu + 16);
    a2 += u * load16(xu + 32);
    a3 += u * load16(xu + 48);
    b0 += v * load16(xv);
    b1 += v * load16(xv + 16);
    b2 += v * load16(xv + 32);
    b3 += v * load16(xv + 48);
  }
  if (p < p1) {
    const float u = values[p];
    const float* xu = x + (int64_t)col_idx[p] * n;
    a0 += u * load16(xu);
    a1 += u * load16(xu + 16);
    a2 += u * load16(xu + 32);
    a3 += u * load16(xu + 48);
  }
  a0 += b0;
  a1 += b1;
  a2 += b2;
  a3 += b3;
  std::memcpy(y, &a0, sizeof a0);
  std::memcpy(y + 16, &a1, sizeof a1);
  std::memcpy(y + 32, &a2, sizeof a2);
  std::memcpy(y + 48, &a3, sizeof a3);
}

// The same for a slab narrower than 64 (a 7×7 plane, a batch of 49): 16-wide vector pieces,
// each a pass over the row's non-zeros, then the last w % 16 columns.
inline void axpy_narrow(int64_t w, int32_t p0, int32_t p1, const int32_t* col_idx,
                        const float* values, const float* x, int64_t n, float* y) {
  int64_t j = 0;
  for (; j + 16 <= w; j += 16) { // four independent chains, as above
    v16 a[4] = {load16(y + j), {}, {}, {}};
    int32_t p = p0;
    for (; p + 3 < p1; p += 4)
      for (int k = 0; k < 4; k++) a[k] += values[p + k] * load16(x + (int64_t)col_idx[p + k] * n + j);
    for (; p < p1; p++) a[0] += values[p] * load16(x + (int64_t)col_idx[p] * n + j);
    v16 sum = (a[0] + a[1]) + (a[2] + a[3]);
    std::memcpy(y + j, &sum, sizeof sum);
  }
  if (j == w) return;
  float acc[16];
  for (int64_t k = 0; k < w - j; k++) acc[k] = y[j + k];
  for (int32_t p = p0; p < p1; p++) {
    const float v = values[p];
    const float* xc = x + (int64_t)col_idx[p] * n + j;
    for (int64_t k = 0; k < w - j; k++) acc[k] += v * xc[k];
  }
  for (int64_t k = 0; k < w - j; k++) y[j + k] = acc[k];
}

void cpu_spmm(int64_t rows, int64_t cols, int64_t n, const int32_t* row_ptr,
              const int32_t* col_idx, const float* values, const float* bias, const float* x,
              float* y) {
  if (rows == 0 || n == 0) return;
  if (n < 8) { // a few columns (batch-1 inference): one gathered dot product per output
#pragma omp parallel for if (rows * n >= 4096) schedule(static)
    for (int64_t r = 0; r < rows; r++)
      for (int64_t j = 0; j < n; j++) {
        float acc = bias ? bias[r] : 0.0f;
        for (int32_t p = row_ptr[r]; p < row_ptr[r + 1]; p++)
          acc += values[p] * x[(int64_t)col_idx[p] * n + j];
        y[r * n + j] = acc;
      }
    return;
  }
  // Input columns per block: a [block, 64] piece of X is ~96 KB.
  const int64_t block = std::max<int64_t>(64, 96 * 1024 / (4 * std::min(n, kSlab)));
  const bool par = (int64_t)row_ptr[rows] * n >= (1 << 16) && rows >= 2;
#pragma omp parallel if (par)
  {
    const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t r0 = rows * t / nt, r1 = rows * (t + 1) / nt;
    std::vector<int32_t> cursor(std::max<int64_t>(0, r1 - r0));
    for (int64_t j0 = 0; j0 < n; j0 += kSlab) {
      const int64_t w = std::min(kSlab, n - j0);
      for (int64_t r = r0; r < r1; r++) {
        const float b = bias ? bias[r] : 0.0f;
        for (int64_t j = 0; j < w; j++) y[r * n + j0 + j] = b;
        cursor[r - r0] = row_ptr[r];
      }
      for (int64_t c0 = 0; c0 < cols; c0 += block) {
        const int64_t c1 = std::min(cols, c0 + block);
        for (int64_t r = r0; r < r1; r++) {
          const int32_t p = cursor[r - r0], end = row_ptr[r + 1];
          int32_t q = p;
          while (q < end && col_idx[q] < c1) q++;
          if (q == p) continue;
          if (w == kSlab) axpy_slab64(p, q, col_idx, values, x + j0, n, y + r * n + j0);
          else axpy_narrow(w, p, q, col_idx, values, x + j0, n, y + r * n + j0);
          cursor[r - r0] = q;
        }
      }
    }
  }
}

} // namespace

const SparseKernels SparseKernels::cpu = {.spmm = cpu_spmm};

} // namespace tb::kernels
