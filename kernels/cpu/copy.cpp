// Fast strided copy: merge dims that are contiguous in both layouts, then copy rows of the
// innermost dim in parallel (OpenMP over rows). Same-dtype rows with unit strides are memcpy.
#include <kernels/copy.h>

#include <cstring>

namespace tb::kernels {

double load_as_double(DType t, const void* p, int64_t i);
void store_from_double(DType t, void* p, int64_t i, double v);

// Drops size-1 dims and merges dim d into d+1 when both layouts step over d+1 exactly.
static void coalesce(StridedLayout& a, StridedLayout& b) {
  StridedLayout na, nb;
  for (int d = 0; d < a.ndim; d++) {
    if (a.sizes[d] == 1) continue;
    int k = na.ndim;
    if (k > 0 && na.strides[k - 1] == a.strides[d] * a.sizes[d] &&
        nb.strides[k - 1] == b.strides[d] * a.sizes[d]) {
      na.sizes[k - 1] *= a.sizes[d];
      nb.sizes[k - 1] = na.sizes[k - 1];
      na.strides[k - 1] = a.strides[d];
      nb.strides[k - 1] = b.strides[d];
      continue;
    }
    na.sizes[k] = nb.sizes[k] = a.sizes[d];
    na.strides[k] = a.strides[d];
    nb.strides[k] = b.strides[d];
    na.ndim = nb.ndim = k + 1;
  }
  if (na.ndim == 0) { // a single element
    na.ndim = nb.ndim = 1;
    na.sizes[0] = nb.sizes[0] = 1;
    na.strides[0] = nb.strides[0] = 1;
  }
  a = na;
  b = nb;
}

template <typename T>
static void copy_row(const T* s, int64_t ss, T* d, int64_t ds, int64_t n) {
  for (int64_t i = 0; i < n; i++) d[i * ds] = s[i * ss];
}

static void cpu_copy_strided(DType src_dtype, const void* src, const StridedLayout& src_layout,
                             DType dst_dtype, void* dst, const StridedLayout& dst_layout) {
  StridedLayout sl = src_layout, dl = dst_layout;
  for (int d = 0; d < sl.ndim; d++)
    if (sl.sizes[d] == 0) return;
  coalesce(sl, dl);
  int last = sl.ndim - 1;
  int64_t inner = sl.sizes[last], ss = sl.strides[last], ds = dl.strides[last];
  int64_t rows = 1;
  for (int d = 0; d < last; d++) rows *= sl.sizes[d];
  size_t esize = dtype_size(src_dtype);
  bool same = src_dtype == dst_dtype;

#pragma omp parallel for schedule(static) if (rows * inner > 32768)
  for (int64_t r = 0; r < rows; r++) {
    int64_t so = 0, doff = 0, rem = r;
    for (int d = last - 1; d >= 0; d--) { // row index -> offsets
      int64_t i = rem % sl.sizes[d];
      rem /= sl.sizes[d];
      so += i * sl.strides[d];
      doff += i * dl.strides[d];
    }
    const char* s = (const char*)src + so * esize;
    if (same) {
      char* d = (char*)dst + doff * esize;
      if (ss == 1 && ds == 1) std::memcpy(d, s, inner * esize);
      else if (esize == 4) copy_row((const uint32_t*)s, ss, (uint32_t*)d, ds, inner);
      else if (esize == 8) copy_row((const uint64_t*)s, ss, (uint64_t*)d, ds, inner);
      else if (esize == 2) copy_row((const uint16_t*)s, ss, (uint16_t*)d, ds, inner);
      else copy_row((const uint8_t*)s, ss, (uint8_t*)d, ds, inner);
    } else if (src_dtype == kFloat32 && dst_dtype == kFloat64) {
      const float* sf = (const float*)s;
      double* d = (double*)dst + doff;
      for (int64_t i = 0; i < inner; i++) d[i * ds] = sf[i * ss];
    } else if (src_dtype == kFloat64 && dst_dtype == kFloat32) {
      const double* sd = (const double*)s;
      float* d = (float*)dst + doff;
      for (int64_t i = 0; i < inner; i++) d[i * ds] = (float)sd[i * ss];
    } else if (src_dtype == kUInt8 && dst_dtype == kFloat32) {
      const uint8_t* su = (const uint8_t*)s;
      float* d = (float*)dst + doff;
      for (int64_t i = 0; i < inner; i++) d[i * ds] = su[i * ss];
    } else {
      for (int64_t i = 0; i < inner; i++)
        store_from_double(dst_dtype, dst, doff + i * ds, load_as_double(src_dtype, s, i * ss));
    }
  }
}

const CopyKernels CopyKernels::cpu = {.strided = cpu_copy_strided};

} // namespace tb::kernels
