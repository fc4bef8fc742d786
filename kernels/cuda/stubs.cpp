// kernels/cuda/stubs.cpp — the cuda_* kernels when there is nothing to run them.
//
// Part 1 (only without nvcc, TB_HAVE_CUDA undefined): the whole CUDA runtime and kernel set of
// kernels/cuda/*.cu, so the library links without CUDA. cuda_built()/cuda_available() say false
// and cuda_device_count() 0; everything else raises tb::Error. No CUDA tensor can exist in such a
// build (the allocator refuses it first), so these are a safety net, not a code path.
//
// Part 2 (always): the cuda_* twins declared by kernels/conv.h, pool.h and batchnorm.h that have
// no CUDA kernel yet. They raise tb::Error naming the op. Delete a line here when its .cu lands.
#include "kernels/batchnorm.h"
#include "kernels/conv.h"
#include "kernels/copy.h"
#include "kernels/cuda_runtime.h"
#include "kernels/elementwise.h"
#include "kernels/matmul.h"
#include "kernels/pool.h"
#include "kernels/reduce.h"
#include "kernels/softmax.h"

namespace tb::kernels {

[[noreturn]] static void no_cuda_kernel(const char* op, DType dtype) {
  throw Error(fmt::format("{}: no CUDA kernel yet (device cuda, dtype {})", op, dtype_name(dtype)));
}

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

// kernels/copy.h
void cuda_copy_strided(DType, const void*, const StridedLayout&, DType, void*, const StridedLayout&) { no_cuda("copy"); }
void cuda_fill(DType, void*, int64_t, double) { no_cuda("fill"); }

// kernels/elementwise.h
void cuda_binary(BinaryOp, DType, const void*, int64_t, const void*, int64_t, void*, int64_t, double) { no_cuda("binary op"); }
void cuda_unary(UnaryOp, DType, const void*, void*, int64_t, double, double) { no_cuda("unary op"); }
void cuda_unary_backward(UnaryOp, DType, const void*, const void*, void*, int64_t, double, double) { no_cuda("unary op backward"); }
void cuda_where(DType, const bool*, int64_t, const void*, int64_t, const void*, int64_t, void*, int64_t) { no_cuda("where"); }

// kernels/reduce.h
void cuda_reduce_sum(DType, const void*, void*, int64_t, int64_t, int64_t, double) { no_cuda("sum"); }
void cuda_reduce_arg(ArgReduceOp, DType, const void*, void*, int64_t*, int64_t, int64_t, int64_t) { no_cuda("max/min"); }
void cuda_reduce_arg_backward(DType, const void*, const int64_t*, void*, int64_t, int64_t, int64_t) { no_cuda("max/min backward"); }
void cuda_reduce_var(DType, const void*, void*, void*, int64_t, int64_t, int64_t, int64_t) { no_cuda("var"); }

// kernels/matmul.h
void cuda_gemm(DType, bool, bool, int64_t, int64_t, int64_t, double, const void*, int64_t, int64_t, const void*, int64_t, int64_t, double, void*, int64_t, int64_t, int64_t) { no_cuda("matmul"); }
void cuda_broadcast_rows(DType, const void*, void*, int64_t, int64_t) { no_cuda("linear (bias)"); }

// kernels/softmax.h
void cuda_softmax_forward(DType, bool, const void*, void*, int64_t, int64_t, int64_t) { no_cuda("softmax"); }
void cuda_softmax_backward(DType, bool, const void*, const void*, void*, int64_t, int64_t, int64_t) { no_cuda("softmax backward"); }
void cuda_cross_entropy_forward(DType, const void*, const int64_t*, void*, void*, int64_t, int64_t, double, int64_t) { no_cuda("cross_entropy"); }
void cuda_cross_entropy_backward(DType, const void*, const int64_t*, const void*, const void*, int64_t, double, void*, int64_t, int64_t, double, int64_t) { no_cuda("cross_entropy backward"); }
void cuda_nll_forward(DType, const void*, const int64_t*, void*, int64_t, int64_t, int64_t) { no_cuda("nll_loss"); }
void cuda_nll_backward(DType, const int64_t*, const void*, int64_t, double, void*, int64_t, int64_t, int64_t) { no_cuda("nll_loss backward"); }

#endif // TB_HAVE_CUDA

// kernels/conv.h, pool.h, batchnorm.h: no CUDA kernels written yet (with or without nvcc).
void cuda_conv2d_forward(DType t, const Conv2dGeom&, const void*, Strides4, const void*, const void*, void*, Strides4) { no_cuda_kernel("conv2d", t); }
void cuda_conv2d_backward_data(DType t, const Conv2dGeom&, const void*, Strides4, const void*, void*, Strides4) { no_cuda_kernel("conv2d backward", t); }
void cuda_conv2d_backward_weights(DType t, const Conv2dGeom&, const void*, Strides4, const void*, Strides4, void*, void*) { no_cuda_kernel("conv2d backward", t); }
void cuda_max_pool2d_forward(DType t, const Pool2dGeom&, const void*, Strides4, void*, int64_t*, Strides4) { no_cuda_kernel("max_pool2d", t); }
void cuda_max_pool2d_backward(DType t, const Pool2dGeom&, const void*, const int64_t*, Strides4, void*, Strides4) { no_cuda_kernel("max_pool2d backward", t); }
void cuda_avg_pool2d_forward(DType t, const Pool2dGeom&, const void*, Strides4, void*, Strides4) { no_cuda_kernel("avg_pool2d", t); }
void cuda_avg_pool2d_backward(DType t, const Pool2dGeom&, const void*, Strides4, void*, Strides4) { no_cuda_kernel("avg_pool2d backward", t); }
void cuda_adaptive_avg_pool2d_forward(DType t, const Pool2dGeom&, const void*, Strides4, void*, Strides4) { no_cuda_kernel("adaptive_avg_pool2d", t); }
void cuda_adaptive_avg_pool2d_backward(DType t, const Pool2dGeom&, const void*, Strides4, void*, Strides4) { no_cuda_kernel("adaptive_avg_pool2d backward", t); }
void cuda_batch_norm_forward(DType t, const BatchNormLayout&, const void*, const void*, const void*, bool, double, double, void*, void*, void*, void*, void*) { no_cuda_kernel("batch_norm", t); }
void cuda_batch_norm_backward(DType t, const BatchNormLayout&, const void*, const void*, const void*, const void*, const void*, bool, void*, void*, void*) { no_cuda_kernel("batch_norm backward", t); }

} // namespace tb::kernels
