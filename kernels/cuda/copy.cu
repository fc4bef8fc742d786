// kernels/cuda/copy.cu — the N-d strided copy with dtype conversion, and fill, on the device.
// Same rules as kernels/ref/copy.cpp (the specification): same-dtype copies move the bits;
// converting copies go through a double (float -> integer truncates toward zero; float16/bfloat16
// round to nearest even from float32; anything -> bool is v != 0).
#include "kernels/cuda/common.cuh"
#include "kernels/copy.h"

namespace tb::kernels {

__device__ static double load_as_double(DType t, const void* p, int64_t i) {
  switch (t) {
    case DType::Float32: return ((const float*)p)[i];
    case DType::Float64: return ((const double*)p)[i];
    case DType::Float16: return __half2float(((const __half*)p)[i]);
    case DType::BFloat16: return __bfloat162float(((const __nv_bfloat16*)p)[i]);
    case DType::Int8: return ((const int8_t*)p)[i];
    case DType::UInt8: return ((const uint8_t*)p)[i];
    case DType::Int32: return ((const int32_t*)p)[i];
    case DType::Int64: return (double)((const int64_t*)p)[i];
    case DType::Bool: return ((const bool*)p)[i] ? 1.0 : 0.0;
  }
  return 0;
}

__device__ static void store_from_double(DType t, void* p, int64_t i, double v) {
  switch (t) {
    case DType::Float32: ((float*)p)[i] = (float)v; break;
    case DType::Float64: ((double*)p)[i] = v; break;
    case DType::Float16: ((__half*)p)[i] = __float2half_rn((float)v); break;
    case DType::BFloat16: ((__nv_bfloat16*)p)[i] = __float2bfloat16_rn((float)v); break;
    case DType::Int8: ((int8_t*)p)[i] = (int8_t)(int64_t)v; break;
    case DType::UInt8: ((uint8_t*)p)[i] = (uint8_t)(int64_t)v; break;
    case DType::Int32: ((int32_t*)p)[i] = (int32_t)(int64_t)v; break;
    case DType::Int64: ((int64_t*)p)[i] = (int64_t)v; break;
    case DType::Bool: ((bool*)p)[i] = v != 0; break;
  }
}

// Element i of the logical row-major order -> its offsets in src and dst (strides in elements).
// Layouts travel by value in the kernel's parameters (they are small).
__global__ void copy_strided_kernel(DType st, const void* src, StridedLayout sl, DType dt, void* dst,
                                    StridedLayout dl, int64_t n, int esize) {
  TB_GRID_STRIDE_LOOP(i, n) {
    int64_t rest = i, so = 0, doff = 0;
    for (int d = sl.ndim - 1; d >= 0; d--) {
      int64_t idx = rest % sl.sizes[d];
      rest /= sl.sizes[d];
      so += idx * sl.strides[d];
      doff += idx * dl.strides[d];
    }
    if (st == dt) {
      switch (esize) {  // same dtype: move the bits
        case 1: ((uint8_t*)dst)[doff] = ((const uint8_t*)src)[so]; break;
        case 2: ((uint16_t*)dst)[doff] = ((const uint16_t*)src)[so]; break;
        case 4: ((uint32_t*)dst)[doff] = ((const uint32_t*)src)[so]; break;
        default: ((uint64_t*)dst)[doff] = ((const uint64_t*)src)[so]; break;
      }
    } else {
      store_from_double(dt, dst, doff, load_as_double(st, src, so));
    }
  }
}

static bool is_row_major(const StridedLayout& l) {
  int64_t expected = 1;
  for (int d = l.ndim - 1; d >= 0; d--) {
    if (l.sizes[d] != 1 && l.strides[d] != expected) return false;
    expected *= l.sizes[d];
  }
  return true;
}

static void cuda_copy_strided(DType src_dtype, const void* src, const StridedLayout& src_layout,
                              DType dst_dtype, void* dst, const StridedLayout& dst_layout) {
  TB_CHECK(src_layout.ndim >= 0 && src_layout.ndim <= kMaxDims && src_layout.ndim == dst_layout.ndim,
           "copy: expected layouts of equal rank <= {}, got {} and {}", kMaxDims, src_layout.ndim,
           dst_layout.ndim);
  int64_t n = 1;
  for (int d = 0; d < src_layout.ndim; d++) n *= src_layout.sizes[d];
  if (n == 0) return;
  if (src_dtype == dst_dtype && is_row_major(src_layout) && is_row_major(dst_layout)) {
    cuda_check(cudaMemcpyAsync(dst, src, n * dtype_size(src_dtype), cudaMemcpyDeviceToDevice,
                               cuda_stream()),
               "copy");
    return;
  }
  copy_strided_kernel<<<grid_for(n), kBlock, 0, cuda_stream()>>>(src_dtype, src, src_layout,
                                                                   dst_dtype, dst, dst_layout, n,
                                                                   (int)dtype_size(src_dtype));
  cuda_check_launch("copy");
}

// ---- fill ----------------------------------------------------------------------------------------

template <typename T> __global__ void fill_kernel(T* dst, int64_t n, T value) {
  TB_GRID_STRIDE_LOOP(i, n) dst[i] = value;
}

template <typename T> static void launch_fill(void* dst, int64_t n, T value) {
  fill_kernel<T><<<grid_for(n), kBlock, 0, cuda_stream()>>>((T*)dst, n, value);
  cuda_check_launch("fill");
}

// The value is converted once on the host with the reference's rules, then its bits are stored.
void cuda_fill(DType dtype, void* dst, int64_t n, double value) {
  if (n <= 0) return;
  switch (dtype) {
    case DType::Float32: return launch_fill<float>(dst, n, (float)value);
    case DType::Float64: return launch_fill<double>(dst, n, value);
    case DType::Float16: return launch_fill<uint16_t>(dst, n, float_to_half((float)value));
    case DType::BFloat16: return launch_fill<uint16_t>(dst, n, float_to_bfloat16((float)value));
    case DType::Int8: return launch_fill<int8_t>(dst, n, (int8_t)(int64_t)value);
    case DType::UInt8: return launch_fill<uint8_t>(dst, n, (uint8_t)(int64_t)value);
    case DType::Int32: return launch_fill<int32_t>(dst, n, (int32_t)(int64_t)value);
    case DType::Int64: return launch_fill<int64_t>(dst, n, (int64_t)value);
    case DType::Bool: return launch_fill<bool>(dst, n, value != 0);
  }
  cuda_no_kernel("fill", dtype);
}

const CopyKernels CopyKernels::cuda = {.strided = cuda_copy_strided};

} // namespace tb::kernels
