// Reference strided copy with dtype conversion, and fill. Plain loops over an N-d index.
#include <kernels/copy.h>

#include <cstring>

namespace tb::kernels {

// One element of any dtype, read as a double (int64 beyond 2^53 rounds: same-dtype copies never
// come through here).
double load_as_double(DType t, const void* p, int64_t i) {
  switch (t) {
    case DType::Float32: return ((const float*)p)[i];
    case DType::Float64: return ((const double*)p)[i];
    case DType::Float16: return half_to_float(((const uint16_t*)p)[i]);
    case DType::BFloat16: return bfloat16_to_float(((const uint16_t*)p)[i]);
    case DType::Int8: return ((const int8_t*)p)[i];
    case DType::UInt8: return ((const uint8_t*)p)[i];
    case DType::Int32: return ((const int32_t*)p)[i];
    case DType::Int64: return (double)((const int64_t*)p)[i];
    case DType::Bool: return ((const bool*)p)[i] ? 1.0 : 0.0;
  }
  return 0;
}

// Stores v converted to dtype t. Float -> integer truncates toward zero, as a C cast and PyTorch.
void store_from_double(DType t, void* p, int64_t i, double v) {
  switch (t) {
    case DType::Float32: ((float*)p)[i] = (float)v; break;
    case DType::Float64: ((double*)p)[i] = v; break;
    case DType::Float16: ((uint16_t*)p)[i] = float_to_half((float)v); break;
    case DType::BFloat16: ((uint16_t*)p)[i] = float_to_bfloat16((float)v); break;
    case DType::Int8: ((int8_t*)p)[i] = (int8_t)(int64_t)v; break;
    case DType::UInt8: ((uint8_t*)p)[i] = (uint8_t)(int64_t)v; break;
    case DType::Int32: ((int32_t*)p)[i] = (int32_t)(int64_t)v; break;
    case DType::Int64: ((int64_t*)p)[i] = (int64_t)v; break;
    case DType::Bool: ((bool*)p)[i] = v != 0; break;
  }
}

static void ref_copy_strided(DType src_dtype, const void* src, const StridedLayout& sl,
                             DType dst_dtype, void* dst, const StridedLayout& dl) {
  int64_t n = 1;
  for (int d = 0; d < sl.ndim; d++) n *= sl.sizes[d];
  if (n == 0) return;
  size_t esize = dtype_size(src_dtype);
  int64_t index[kMaxDims] = {};
  for (int64_t k = 0; k < n; k++) {
    int64_t so = 0, doff = 0;
    for (int d = 0; d < sl.ndim; d++) {
      so += index[d] * sl.strides[d];
      doff += index[d] * dl.strides[d];
    }
    if (src_dtype == dst_dtype)
      std::memcpy((char*)dst + doff * esize, (const char*)src + so * esize, esize);
    else
      store_from_double(dst_dtype, dst, doff, load_as_double(src_dtype, src, so));
    for (int d = sl.ndim - 1; d >= 0; d--) { // odometer increment of the N-d index
      if (++index[d] < sl.sizes[d]) break;
      index[d] = 0;
    }
  }
}

void ref_fill(DType dtype, void* dst, int64_t n, double value) {
  if (dtype == kFloat32) {
    float v = (float)value;
    for (int64_t i = 0; i < n; i++) ((float*)dst)[i] = v;
    return;
  }
  for (int64_t i = 0; i < n; i++) store_from_double(dtype, dst, i, value);
}

const CopyKernels CopyKernels::ref = {.strided = ref_copy_strided};

} // namespace tb::kernels
