// kernels/copy.h — the one N-d strided kernel: copy (with dtype conversion) from any strided
// layout to any strided layout. contiguous(), to(dtype), expand+materialise, cat and friends are
// all built on it, so every other kernel may assume dense inputs. Three tables of the same kernel:
//   CopyKernels::ref  — kernels/ref/copy.cpp: an odometer over the N-d index, the specification;
//   CopyKernels::cpu  — kernels/cpu/copy.cpp: merged dims, OpenMP over rows, memcpy when it can;
//   CopyKernels::cuda — kernels/cuda/copy.cu.
#pragma once

#include <cstdint>

#include <tb/core.h>

namespace tb::kernels {

// Geometry of one strided operand: up to kMaxDims dims; strides in elements.
constexpr int kMaxDims = 8;
struct StridedLayout {
  int ndim = 0;
  int64_t sizes[kMaxDims] = {};
  int64_t strides[kMaxDims] = {};
};

struct CopyKernels {
  // dst[i] = convert(src[i]) for every logical index i of `sizes` (dst and src share sizes).
  // Pointers already include the tensors' offsets.
  void (*strided)(DType src_dtype, const void* src, const StridedLayout& src_layout,
                  DType dst_dtype, void* dst, const StridedLayout& dst_layout);

  static const CopyKernels ref, cpu, cuda;
};

// Fills n elements of dtype with value. Called by the factories in src/core (below the op layer,
// so outside the tables): plain loop on the CPU, one kernel on CUDA.
void ref_fill(DType dtype, void* dst, int64_t n, double value);
void cuda_fill(DType dtype, void* dst, int64_t n, double value);

} // namespace tb::kernels
