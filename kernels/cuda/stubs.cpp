// kernels/cuda/stubs.cpp — the CUDA side when there is nothing to run on it.
//
// Part 1 (only without nvcc, TB_HAVE_CUDA undefined): the CUDA runtime of kernels/cuda/runtime.cu
// and copy.cu's fill, which raise tb::Error (cuda_built()/cuda_available() say false and
// cuda_device_count() 0), and an all-null CUDA table for every kernel family that has a .cu file.
// No CUDA tensor can exist in such a build (the allocator refuses it first), so these are a safety
// net, not a code path.
//
// Part 2 (always): the CUDA tables of the families with no CUDA kernels yet. A null entry makes
// the op raise tb::Error "<op>: no CUDA kernel yet (device cuda:0, dtype float32)" (see
// src/ops/dispatch.h). When a family's .cu lands, move its line up into part 1.
#include "kernels/batchnorm.h"
#include "kernels/conv.h"
#include "kernels/conv_infer.h"
#include "kernels/copy.h"
#include "kernels/cuda_runtime.h"
#include "kernels/elementwise.h"
#include "kernels/fake_quant.h"
#include "kernels/matmul.h"
#include "kernels/pool.h"
#include "kernels/qconv.h"
#include "kernels/reduce.h"
#include "kernels/softmax.h"
#include "kernels/sparse.h"

namespace tb::kernels {

#ifndef TB_HAVE_CUDA

[[noreturn]] static void no_cuda(const char* op) {
  throw Error(fmt::format("{}: tensorbrain was built without CUDA (no CUDA device can be used)", op));
}

// kernels/cuda_runtime.h
bool cuda_built() { return false; }
bool cuda_available() { return false; }
int cuda_device_count() { return 0; }
void cuda_set_device(int) { no_cuda("cuda_set_device"); }
void* cuda_malloc(size_t) { no_cuda("cuda_malloc"); }
void cuda_free(void*) { no_cuda("cuda_free"); }
void cuda_memcpy_h2d(void*, const void*, size_t) { no_cuda("cuda_memcpy_h2d"); }
void cuda_memcpy_d2h(void*, const void*, size_t) { no_cuda("cuda_memcpy_d2h"); }
void cuda_memcpy_d2d(void*, const void*, size_t) { no_cuda("cuda_memcpy_d2d"); }
void cuda_synchronize() { no_cuda("cuda_synchronize"); }
const char* cuda_device_name(int) { no_cuda("cuda_device_name"); }
void cuda_fill(DType, void*, int64_t, double) { no_cuda("fill"); }

// The families of kernels/cuda/*.cu, without their kernels.
const CopyKernels CopyKernels::cuda = {};
const ElementwiseKernels ElementwiseKernels::cuda = {};
const ReduceKernels ReduceKernels::cuda = {};
const MatmulKernels MatmulKernels::cuda = {};
const SoftmaxKernels SoftmaxKernels::cuda = {};
const Conv2dKernels Conv2dKernels::cuda = {};
const Pool2dKernels Pool2dKernels::cuda = {};
const BatchNormKernels BatchNormKernels::cuda = {};

#endif // TB_HAVE_CUDA

// No CUDA kernels written yet (with or without nvcc).
const FakeQuantKernels FakeQuantKernels::cuda = {};
const SparseKernels SparseKernels::cuda = {};
const ConvInferKernels ConvInferKernels::cuda = {};
const QConvKernels QConvKernels::cuda = {};

} // namespace tb::kernels
