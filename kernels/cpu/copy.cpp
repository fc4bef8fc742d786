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

// bfloat16 <-> float32 inline (the same rounding as tb::float_to_bfloat16: nearest even, NaN
// kept quiet), so mixed-precision casts vectorise instead of going through double per element.
// Branch-free, so the loops below vectorise.
static inline uint16_t f32_to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t nan = (x >> 16) | 0x40, rounded = (x + 0x7fff + ((x >> 16) & 1)) >> 16;
  return (uint16_t)((x & 0x7fffffff) > 0x7f800000 ? nan : rounded);
}
// float16 through the compiler's _Float16 (vectorised F16C conversions with -march=native).
static inline float f16_to_f32(uint16_t h) {
  _Float16 v;
  std::memcpy(&v, &h, 2);
  return (float)v;
}
static inline uint16_t f32_to_f16(float f) {
  _Float16 v = (_Float16)f;
  uint16_t h;
  std::memcpy(&h, &v, 2);
  return h;
}
static inline float bf16_to_f32(uint16_t b) {
  uint32_t x = (uint32_t)b << 16;
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

// d[i] = f(s[i]) along a row; the unit-stride case is a separate loop so it vectorises.
template <typename S, typename D, typename F>
static void convert_row(const S* s, int64_t ss, D* d, int64_t ds, int64_t n, F f) {
  if (ss == 1 && ds == 1)
    for (int64_t i = 0; i < n; i++) d[i] = f(s[i]);
  else
    for (int64_t i = 0; i < n; i++) d[i * ds] = f(s[i * ss]);
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
    } else if (src_dtype == kFloat32 && dst_dtype == kBFloat16) {
      convert_row((const float*)s, ss, (uint16_t*)dst + doff, ds, inner, f32_to_bf16);
    } else if (src_dtype == kBFloat16 && dst_dtype == kFloat32) {
      convert_row((const uint16_t*)s, ss, (float*)dst + doff, ds, inner, bf16_to_f32);
    } else if (src_dtype == kFloat32 && dst_dtype == kFloat16) {
      convert_row((const float*)s, ss, (uint16_t*)dst + doff, ds, inner, f32_to_f16);
    } else if (src_dtype == kFloat16 && dst_dtype == kFloat32) {
      convert_row((const uint16_t*)s, ss, (float*)dst + doff, ds, inner, f16_to_f32);
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
