// kernels/cpu/reduce.cpp — fast reductions over [outer, reduce, inner] (see kernels/reduce.h).
//
// Work is split into tasks (o, r-chunk, inner-block) whose sizes depend only on the shape, never on
// the thread count, and chunk partials are combined in a fixed order: results are bitwise the same
// for any number of threads. OpenMP runs the tasks; inner blocks keep loads contiguous (the r loop
// walks rows of `inner` elements, the i loop vectorises).
#include "kernels/reduce.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace tb::kernels {
namespace {

constexpr int64_t kIB = 256;          // inner elements per task
constexpr int64_t kChunk = 16384;     // elements (rows x inner block) per task, roughly
constexpr int64_t kParallelMin = 32768; // below this many elements, one thread
constexpr int64_t kEnoughTasks = 16;    // (outer, inner-block) tasks that need no r-split

// Split of a reduction into tasks; see the file comment.
struct Plan {
  int64_t outer, reduce, inner;
  int64_t ib, nib;  // inner block size, number of inner blocks
  int64_t rc, nrc;  // r-chunk size, number of r chunks
  Plan(int64_t o, int64_t r, int64_t i) : outer(o), reduce(r), inner(i) {
    ib = std::min<int64_t>(std::max<int64_t>(inner, 1), kIB);
    nib = (inner + ib - 1) / ib;
    // Split r only when (outer, inner-block) tasks are too few to share out; this depends on the
    // shape alone, so the summation order does not depend on the thread count.
    rc = outer * nib >= kEnoughTasks ? std::max<int64_t>(reduce, 1)
                                     : std::max<int64_t>(1, kChunk / ib);
    nrc = std::max<int64_t>(1, (reduce + rc - 1) / rc);
  }
  int64_t tasks() const { return outer * nrc * nib; }
};

// partial[(o * nrc + c) * inner + i] = sum over r in chunk c of f(x[o, r, i], o, i), accumulated
// in Acc; then out_acc[o * inner + i] = sum over c of the partials, in chunk order.
template <typename Acc, typename T, typename F>
void chunked_sum(const T* x, const Plan& p, F f, Acc* out_acc) {
  std::vector<Acc> partial(p.nrc > 1 ? p.outer * p.nrc * p.inner : 0);
  Acc* dst_base = p.nrc > 1 ? partial.data() : out_acc;
  int64_t total = p.outer * p.reduce * p.inner;
#pragma omp parallel for schedule(static) if (total > kParallelMin)
  for (int64_t t = 0; t < p.tasks(); t++) {
    int64_t o = t / (p.nrc * p.nib), c = (t / p.nib) % p.nrc, b = t % p.nib;
    int64_t r0 = c * p.rc, r1 = std::min(p.reduce, r0 + p.rc);
    int64_t i0 = b * p.ib, i1 = std::min(p.inner, i0 + p.ib);
    Acc* dst = dst_base + (o * p.nrc + c) * p.inner;
    if (p.inner == 1) {
      const T* row = x + o * p.reduce;
      Acc s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t r = r0; r < r1; r++) s += f(row[r], o, 0);
      dst[0] = s;
    } else {
      Acc acc[kIB] = {};
      for (int64_t r = r0; r < r1; r++) {
        const T* row = x + (o * p.reduce + r) * p.inner;
        for (int64_t i = i0; i < i1; i++) acc[i - i0] += f(row[i], o, i);
      }
      for (int64_t i = i0; i < i1; i++) dst[i] = acc[i - i0];
    }
  }
  if (p.nrc == 1) return;
#pragma omp parallel for schedule(static) if (p.outer * p.inner * p.nrc > kParallelMin)
  for (int64_t oi = 0; oi < p.outer * p.inner; oi++) {
    int64_t o = oi / p.inner, i = oi % p.inner;
    Acc s = 0;
    for (int64_t c = 0; c < p.nrc; c++) s += partial[(o * p.nrc + c) * p.inner + i];
    out_acc[oi] = s;
  }
}

template <typename T>
void sum_float(const T* x, T* out, int64_t outer, int64_t reduce, int64_t inner, double scale) {
  Plan p(outer, reduce, inner);
  std::vector<double> acc(outer * inner);
  chunked_sum<double>(x, p, [](T v, int64_t, int64_t) { return (double)v; }, acc.data());
  for (int64_t j = 0; j < outer * inner; j++) out[j] = (T)(acc[j] * scale);
}

void sum_int64(const int64_t* x, int64_t* out, int64_t outer, int64_t reduce, int64_t inner) {
  Plan p(outer, reduce, inner);
  chunked_sum<int64_t>(x, p, [](int64_t v, int64_t, int64_t) { return v; }, out);
}

template <typename T>
void var_float(const T* x, T* var, T* mean, int64_t outer, int64_t reduce, int64_t inner,
               int64_t correction) {
  Plan p(outer, reduce, inner);
  std::vector<double> m(outer * inner), ss(outer * inner);
  chunked_sum<double>(x, p, [](T v, int64_t, int64_t) { return (double)v; }, m.data());
  for (auto& v : m) v /= (double)reduce;
  const double* mp = m.data();
  chunked_sum<double>(x, p, [mp, inner](T v, int64_t o, int64_t i) {
    double d = (double)v - mp[o * inner + i];
    return d * d;
  }, ss.data());
  for (int64_t j = 0; j < outer * inner; j++) {
    var[j] = (T)(ss[j] / (double)std::max<int64_t>(0, reduce - correction));
    if (mean) mean[j] = (T)m[j];
  }
}

// Is v a better max (or min) than best? NaN beats everything but an earlier NaN (as ref).
template <typename T> inline bool better(ArgReduceOp op, T v, T best) {
  if constexpr (std::is_floating_point_v<T>) {
    if (std::isnan(best)) return false;
    if (std::isnan(v)) return true;
  }
  return op == ArgReduceOp::Max ? v > best : v < best;
}

// Arg-reductions: per task the best (value, r) of its chunk; chunks are then merged in r order with
// a strict comparison, so the first occurrence wins as in the reference.
template <typename T>
void arg_impl(ArgReduceOp op, const T* x, T* values, int64_t* indices, int64_t outer,
              int64_t reduce, int64_t inner) {
  Plan p(outer, reduce, inner);
  std::vector<T> pv(p.outer * p.nrc * p.inner);
  std::vector<int64_t> pi(p.outer * p.nrc * p.inner);
  int64_t total = outer * reduce * inner;
#pragma omp parallel for schedule(static) if (total > kParallelMin)
  for (int64_t t = 0; t < p.tasks(); t++) {
    int64_t o = t / (p.nrc * p.nib), c = (t / p.nib) % p.nrc, b = t % p.nib;
    int64_t r0 = c * p.rc, r1 = std::min(p.reduce, r0 + p.rc);
    int64_t i0 = b * p.ib, i1 = std::min(p.inner, i0 + p.ib);
    T* bv = pv.data() + (o * p.nrc + c) * p.inner;
    int64_t* bi = pi.data() + (o * p.nrc + c) * p.inner;
    if (r0 >= r1) continue;  // reduce == 0 is refused by the entry point
    const T* first = x + (o * reduce + r0) * inner;
    for (int64_t i = i0; i < i1; i++) bv[i] = first[i], bi[i] = r0;
    for (int64_t r = r0 + 1; r < r1; r++) {
      const T* row = x + (o * reduce + r) * inner;
      for (int64_t i = i0; i < i1; i++)
        if (better(op, row[i], bv[i])) bv[i] = row[i], bi[i] = r;
    }
  }
#pragma omp parallel for schedule(static) if (outer * inner * p.nrc > kParallelMin)
  for (int64_t oi = 0; oi < outer * inner; oi++) {
    int64_t o = oi / inner, i = oi % inner;
    T best = pv[o * p.nrc * inner + i];
    int64_t best_r = pi[o * p.nrc * inner + i];
    for (int64_t c = 1; c < p.nrc; c++) {
      int64_t j = (o * p.nrc + c) * inner + i;
      if (better(op, pv[j], best)) best = pv[j], best_r = pi[j];
    }
    if (values) values[oi] = best;
    if (indices) indices[oi] = best_r;
  }
}

template <typename T>
void arg_backward_impl(const T* dy, const int64_t* indices, T* dx, int64_t outer, int64_t reduce,
                       int64_t inner) {
#pragma omp parallel for schedule(static) if (outer * reduce * inner > kParallelMin)
  for (int64_t orow = 0; orow < outer * reduce; orow++) {
    int64_t o = orow / reduce, r = orow % reduce;
    const int64_t* idx = indices + o * inner;
    const T* g = dy + o * inner;
    T* d = dx + orow * inner;
    for (int64_t i = 0; i < inner; i++) d[i] = idx[i] == r ? g[i] : T(0);
  }
}

void cpu_reduce_sum(DType dtype, const void* x, void* out, int64_t outer, int64_t reduce,
                    int64_t inner, double scale) {
  switch (dtype) {
    case kFloat32:
      return sum_float((const float*)x, (float*)out, outer, reduce, inner, scale);
    case kFloat64:
      return sum_float((const double*)x, (double*)out, outer, reduce, inner, scale);
    case kInt64:
      TB_CHECK(scale == 1.0, "cpu_reduce_sum: int64 sums take scale 1, got {}", scale);
      return sum_int64((const int64_t*)x, (int64_t*)out, outer, reduce, inner);
    default:
      TB_CHECK(false, "cpu_reduce_sum: no kernel for dtype {} on cpu", dtype);
  }
}

void cpu_reduce_arg(ArgReduceOp op, DType dtype, const void* x, void* values, int64_t* indices,
                    int64_t outer, int64_t reduce, int64_t inner) {
  TB_CHECK(reduce > 0, "cpu_reduce_arg: cannot reduce an empty dim");
  switch (dtype) {
    case kFloat32:
      return arg_impl(op, (const float*)x, (float*)values, indices, outer, reduce, inner);
    case kFloat64:
      return arg_impl(op, (const double*)x, (double*)values, indices, outer, reduce, inner);
    case kInt64:
      return arg_impl(op, (const int64_t*)x, (int64_t*)values, indices, outer, reduce, inner);
    default:
      TB_CHECK(false, "cpu_reduce_arg: no kernel for dtype {} on cpu", dtype);
  }
}

void cpu_reduce_arg_backward(DType dtype, const void* dy, const int64_t* indices, void* dx,
                             int64_t outer, int64_t reduce, int64_t inner) {
  switch (dtype) {
    case kFloat32:
      return arg_backward_impl((const float*)dy, indices, (float*)dx, outer, reduce, inner);
    case kFloat64:
      return arg_backward_impl((const double*)dy, indices, (double*)dx, outer, reduce, inner);
    default:
      TB_CHECK(false, "cpu_reduce_arg_backward: no kernel for dtype {} on cpu", dtype);
  }
}

void cpu_reduce_var(DType dtype, const void* x, void* var, void* mean, int64_t outer,
                    int64_t reduce, int64_t inner, int64_t correction) {
  switch (dtype) {
    case kFloat32:
      return var_float((const float*)x, (float*)var, (float*)mean, outer, reduce, inner,
                       correction);
    case kFloat64:
      return var_float((const double*)x, (double*)var, (double*)mean, outer, reduce, inner,
                       correction);
    default:
      TB_CHECK(false, "cpu_reduce_var: no kernel for dtype {} on cpu", dtype);
  }
}

} // namespace

const ReduceKernels ReduceKernels::cpu = {
    .sum = cpu_reduce_sum,
    .arg = cpu_reduce_arg,
    .arg_backward = cpu_reduce_arg_backward,
    .var = cpu_reduce_var,
};

} // namespace tb::kernels
