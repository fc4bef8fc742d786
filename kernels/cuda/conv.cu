// kernels/cuda/conv.cu — 2-D convolution on the device through cuDNN 9 (the contract is
// kernels/conv.h; the specification kernels/ref/conv.cpp): forward, backward-data and
// backward-weights, groups (depthwise included), stride, padding and dilation.
//
// cuDNN runs all tensors of a call in one layout:
//   float32, float16, bfloat16: NHWC (channels-last: what tb's conv2d writes, and what cuDNN's fast
//     kernels read), with the filter in cuDNN's NHWC order [O, KH, KW, C/groups];
//   float64: NCHW with the OIHW filter (PyTorch does the same: cuDNN's float64 kernels are NCHW).
// An activation already in that layout (canonical strides) is used in place; any other strides are
// copied into a scratch buffer first (inputs) or after (outputs) by copy4d_kernel, one thread per
// element. The OIHW weight is transposed to [O, KH, KW, C/groups] for NHWC (not needed when
// C/groups = 1 or KH = KW = 1: the two orders are then the same bytes). If cuDNN offers no
// algorithm for a direction in NHWC, that direction runs in NCHW instead.
//
// Precision: float32 runs with CUDNN_FMA_MATH, so no TF32 tensor cores (cuDNN's default math
// allows TF32 on A100 and later): float32 results match the reference within float32 rounding, as
// PyTorch with allow_tf32 = False. float64 accumulates in double. float16/bfloat16 accumulate in
// float32 (CUDNN_DATA_FLOAT compute) and may use tensor cores (CUDNN_TENSOR_OP_MATH).
// The bias is added by add_bias_kernel after the convolution (one rounding more than the
// reference's single rounding of b + sum), and db is a per-channel sum of dy in double,
// bias_grad_kernel, one block per output channel.
//
// Algorithm choice, once per (device, dtype, layout, geometry) and direction: cuDNN's
// cudnnFind*AlgorithmEx runs every algorithm it has on the call's own buffers (a workspace of up
// to 256 MiB from tb's caching allocator) and reports their times; we take the fastest one that
// is deterministic (same bits on every run) and, for float32, not a tensor-core algorithm; if no
// deterministic one succeeded, the fastest one that did. The choice, the descriptors and the
// workspace size are cached for the life of the process (like the oneDNN primitive cache,
// kernels/cpu/onednn_common.h), so a training step pays the search once per layer shape. The
// chosen algorithm can differ between processes (timing noise), and with it the last bits.
//
// One cuDNN handle per device, bound to tb's stream (common.cuh), so convolutions are ordered with
// every other kernel; workspaces come from the caching allocator and are freed after the launch
// (safe: the next user of the block runs after it on the same stream).
//
// cuDNN's descriptors take int sizes; a tensor of more than 2^31 - 1 elements is a tb::Error.
// This file uses cuDNN's legacy convolution API (cudnnConvolutionForward and friends), which
// cuDNN 9 still ships (deprecated in favour of its graph API).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/access.cuh"
#include "kernels/conv.h"

#include <cudnn.h>

#include <algorithm>
#include <climits>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

namespace tb::kernels {
namespace {

void cudnn_check(cudnnStatus_t status, const char* what) {
  if (status == CUDNN_STATUS_SUCCESS) return;
  throw Error(fmt::format("conv2d: cuDNN error in {}: {}", what, cudnnGetErrorString(status)));
}

// The current device's cuDNN handle, bound to cuda_stream() (created on first use, never
// destroyed, as the stream).
cudnnHandle_t cudnn_handle() {
  constexpr int kMaxDevices = 64; // runtime.cu's limit
  static std::mutex mu;
  static cudnnHandle_t* handles = new cudnnHandle_t[kMaxDevices]();
  cudaStream_t stream = cuda_stream(); // checks that there is a device
  int d = 0;
  cuda_check(cudaGetDevice(&d), "conv2d: cudaGetDevice");
  TB_CHECK(d >= 0 && d < kMaxDevices, "conv2d: device index {} beyond the {} supported", d,
           kMaxDevices);
  std::lock_guard<std::mutex> lock(mu);
  if (!handles[d]) {
    cudnnHandle_t h = nullptr;
    cudnn_check(cudnnCreate(&h), "cudnnCreate");
    cudnn_check(cudnnSetStream(h, stream), "cudnnSetStream");
    handles[d] = h;
  }
  return handles[d];
}

// ---- dtypes -----------------------------------------------------------------------------------------

struct TypeInfo {
  cudnnDataType_t data, compute;
  cudnnMathType_t math;
  size_t size;
};

TypeInfo type_info(DType dtype) {
  switch (dtype) {
    case kFloat32: return {CUDNN_DATA_FLOAT, CUDNN_DATA_FLOAT, CUDNN_FMA_MATH, 4};
    case kFloat64: return {CUDNN_DATA_DOUBLE, CUDNN_DATA_DOUBLE, CUDNN_DEFAULT_MATH, 8};
    case kFloat16: return {CUDNN_DATA_HALF, CUDNN_DATA_FLOAT, CUDNN_TENSOR_OP_MATH, 2};
    case kBFloat16: return {CUDNN_DATA_BFLOAT16, CUDNN_DATA_FLOAT, CUDNN_TENSOR_OP_MATH, 2};
    default: cuda_no_kernel("conv2d", dtype);
  }
}

// cuDNN's alpha and beta: double for double data, float otherwise.
const double kOneD = 1, kZeroD = 0;
const float kOneF = 1, kZeroF = 0;
const void* one(DType t) { return t == kFloat64 ? (const void*)&kOneD : (const void*)&kOneF; }
const void* zero(DType t) { return t == kFloat64 ? (const void*)&kZeroD : (const void*)&kZeroF; }

// The layouts to try, in order of preference (see the top of the file).
std::vector<bool> layouts_to_try(DType dtype) {
  if (dtype == kFloat64) return {false};
  return {true, false};
}

Strides4 canonical(bool nhwc, int64_t C, int64_t H, int64_t W) {
  return nhwc ? nhwc_strides(C, H, W) : nchw_strides(C, H, W);
}

// ---- small kernels: layout copies, zero fill, bias ----------------------------------------------------

// dst[n, c, h, w] = src[n, c, h, w], bits copied (U: an unsigned type of the element's size).
template <typename U>
__global__ void copy4d_kernel(const U* src, Strides4 ss, U* dst, Strides4 ds, int64_t N,
                              int64_t C, int64_t H, int64_t W) {
  bool c_inner = channels_inner(ds);
  TB_GRID_STRIDE_LOOP(e, N * C * H * W) {
    Coord4 p = coord_of(e, C, H, W, c_inner);
    dst[offset_of(ds, p)] = src[offset_of(ss, p)];
  }
}

void copy4d(size_t esize, const void* src, Strides4 ss, void* dst, Strides4 ds, int64_t N,
            int64_t C, int64_t H, int64_t W) {
  int64_t n = N * C * H * W;
  if (n == 0) return;
  cudaStream_t s = cuda_stream();
  if (esize == 2)
    copy4d_kernel<<<grid_for(n), kBlock, 0, s>>>((const uint16_t*)src, ss, (uint16_t*)dst, ds, N,
                                                 C, H, W);
  else if (esize == 4)
    copy4d_kernel<<<grid_for(n), kBlock, 0, s>>>((const uint32_t*)src, ss, (uint32_t*)dst, ds, N,
                                                 C, H, W);
  else
    copy4d_kernel<<<grid_for(n), kBlock, 0, s>>>((const uint64_t*)src, ss, (uint64_t*)dst, ds, N,
                                                 C, H, W);
  cuda_check_launch("conv2d (layout copy)");
}

// Every element of a strided N×C×H×W tensor set to 0 (all-zero bits: +0 in every float type).
template <typename U>
__global__ void zero4d_kernel(U* dst, Strides4 ds, int64_t N, int64_t C, int64_t H, int64_t W) {
  bool c_inner = channels_inner(ds);
  TB_GRID_STRIDE_LOOP(e, N * C * H * W) dst[offset_of(ds, coord_of(e, C, H, W, c_inner))] = 0;
}

void zero4d(size_t esize, void* dst, Strides4 ds, int64_t N, int64_t C, int64_t H, int64_t W) {
  int64_t n = N * C * H * W;
  if (n == 0) return;
  cudaStream_t s = cuda_stream();
  if (esize == 2) zero4d_kernel<<<grid_for(n), kBlock, 0, s>>>((uint16_t*)dst, ds, N, C, H, W);
  else if (esize == 4) zero4d_kernel<<<grid_for(n), kBlock, 0, s>>>((uint32_t*)dst, ds, N, C, H, W);
  else zero4d_kernel<<<grid_for(n), kBlock, 0, s>>>((uint64_t*)dst, ds, N, C, H, W);
  cuda_check_launch("conv2d (zero fill)");
}

// y[n, o, oh, ow] += b[o], in double, rounded once.
template <typename T>
__global__ void add_bias_kernel(T* y, Strides4 ys, const T* b, int64_t N, int64_t O, int64_t OH,
                                int64_t OW) {
  bool c_inner = channels_inner(ys);
  TB_GRID_STRIDE_LOOP(e, N * O * OH * OW) {
    Coord4 p = coord_of(e, O, OH, OW, c_inner);
    T& v = y[offset_of(ys, p)];
    st(v, ld(v) + ld(b[p.c]));
  }
}

// db[o] = sum over n, oh, ow of dy[n, o, oh, ow]: one block per o, double accumulation, a fixed
// tree (block_reduce), rounded once.
template <typename T>
__global__ void bias_grad_kernel(const T* dy, Strides4 dys, int64_t N, int64_t OH, int64_t OW,
                                 T* db) {
  int64_t o = blockIdx.x, per_image = OH * OW;
  double acc = 0;
  for (int64_t e = threadIdx.x; e < N * per_image; e += kBlock) {
    int64_t n = e / per_image, r = e % per_image;
    acc += ld(dy[offset_of(dys, n, o, r / OW, r % OW)]);
  }
  acc = block_reduce(acc, SumOp{});
  if (threadIdx.x == 0) st(db[o], acc);
}

template <typename F> void by_type(DType dtype, F f) {
  switch (dtype) {
    case kFloat32: return f((float*)nullptr);
    case kFloat64: return f((double*)nullptr);
    case kFloat16: return f((__half*)nullptr);
    case kBFloat16: return f((__nv_bfloat16*)nullptr);
    default: cuda_no_kernel("conv2d", dtype);
  }
}

void add_bias(DType dtype, void* y, Strides4 ys, const void* b, const Conv2dGeom& g) {
  int64_t n = g.N * g.O * g.OH * g.OW;
  if (n == 0) return;
  by_type(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    add_bias_kernel<T><<<grid_for(n), kBlock, 0, cuda_stream()>>>((T*)y, ys, (const T*)b, g.N,
                                                                  g.O, g.OH, g.OW);
  });
  cuda_check_launch("conv2d (bias)");
}

void bias_grad(DType dtype, const void* dy, Strides4 dys, const Conv2dGeom& g, void* db) {
  if (g.O == 0) return;
  by_type(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    bias_grad_kernel<T><<<(unsigned)g.O, kBlock, 0, cuda_stream()>>>((const T*)dy, dys, g.N, g.OH,
                                                                     g.OW, (T*)db);
  });
  cuda_check_launch("conv2d backward (bias)");
}

// ---- operands in cuDNN's layout ---------------------------------------------------------------------

// An activation as cuDNN needs it: the caller's memory when its strides are already the
// canonical ones of the layout, else a scratch buffer in that layout (an input is copied in now;
// an output is copied back by finish()).
class Operand {
 public:
  Operand(size_t esize, const void* data, Strides4 s, int64_t N, int64_t C, int64_t H, int64_t W,
          bool nhwc, bool is_input)
      : esize_(esize), user_((void*)data), s_(s), N_(N), C_(C), H_(H), W_(W),
        cs_(canonical(nhwc, C, H, W)) {
    if (s == cs_) return;
    tmp_ = std::make_unique<DeviceScratch>(std::max<size_t>(esize * N * C * H * W, 1));
    if (is_input) copy4d(esize, data, s, tmp_->data, cs_, N, C, H, W);
  }
  void* ptr() const { return tmp_ ? tmp_->data : user_; }
  void finish() const {
    if (tmp_) copy4d(esize_, tmp_->data, cs_, user_, s_, N_, C_, H_, W_);
  }

 private:
  size_t esize_;
  void* user_;
  Strides4 s_;
  int64_t N_, C_, H_, W_;
  Strides4 cs_;
  std::unique_ptr<DeviceScratch> tmp_;
};

// The OIHW weight (or dw) in cuDNN's filter layout: OIHW itself for NCHW, [O, KH, KW, C/groups]
// for NHWC (the same bytes when C/groups = 1 or KH = KW = 1).
class Filter {
 public:
  Filter(size_t esize, const void* oihw, const Conv2dGeom& g, bool nhwc, bool is_input)
      : esize_(esize), user_((void*)oihw), O_(g.O), Cg_(g.C / g.groups), KH_(g.KH), KW_(g.KW) {
    if (!nhwc || Cg_ == 1 || KH_ * KW_ == 1) return;
    tmp_ = std::make_unique<DeviceScratch>(std::max<size_t>(esize * O_ * Cg_ * KH_ * KW_, 1));
    if (is_input)
      copy4d(esize, oihw, nchw_strides(Cg_, KH_, KW_), tmp_->data, nhwc_strides(Cg_, KH_, KW_), O_,
             Cg_, KH_, KW_);
  }
  void* ptr() const { return tmp_ ? tmp_->data : user_; }
  void finish() const {
    if (tmp_)
      copy4d(esize_, tmp_->data, nhwc_strides(Cg_, KH_, KW_), user_, nchw_strides(Cg_, KH_, KW_),
             O_, Cg_, KH_, KW_);
  }

 private:
  size_t esize_;
  void* user_;
  int64_t O_, Cg_, KH_, KW_;
  std::unique_ptr<DeviceScratch> tmp_;
};

// ---- plans: descriptors and chosen algorithms, cached per geometry -----------------------------------

enum Direction { kForward = 0, kBackwardData = 1, kBackwardFilter = 2 };
const char* direction_name(int d) {
  return d == kForward ? "forward" : d == kBackwardData ? "backward-data" : "backward-weights";
}

struct Choice {
  bool searched = false, ok = false;
  int algo = 0;
  size_t workspace = 0;
  std::string tried; // what cuDNN said about each algorithm (for the error when none runs)
};

struct Plan {
  DType dtype;
  Conv2dGeom g;
  bool nhwc;
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  Choice choice[3];
  std::mutex mu; // held while an algorithm is searched and while choice is read
};

const char* layout_name(bool nhwc) { return nhwc ? "NHWC" : "NCHW"; }

std::string describe(DType dtype, const Conv2dGeom& g) {
  return fmt::format("{}, input [{}, {}, {}, {}], weight [{}, {}, {}, {}], output [{}, {}, {}, "
                     "{}], stride ({}, {}), padding ({}, {}), dilation ({}, {}), groups {}",
                     dtype_name(dtype), g.N, g.C, g.H, g.W, g.O,
                     g.C / g.groups, g.KH, g.KW, g.N, g.O, g.OH, g.OW, g.stride_h, g.stride_w,
                     g.pad_h, g.pad_w, g.dil_h, g.dil_w, g.groups);
}

void check_int_range(DType dtype, const Conv2dGeom& g) {
  bool ok = true;
  for (int64_t v : {g.N, g.C, g.H, g.W, g.O, g.KH, g.KW, g.OH, g.OW, g.stride_h, g.stride_w,
                    g.pad_h, g.pad_w, g.dil_h, g.dil_w, g.groups})
    ok = ok && v >= 0 && v <= INT_MAX;
  ok = ok && g.N * g.C * g.H * g.W <= INT_MAX && g.N * g.O * g.OH * g.OW <= INT_MAX;
  TB_CHECK(ok, "conv2d: too large for cuDNN's 32-bit sizes (at most 2^31 - 1 elements a tensor): {}",
           describe(dtype, g));
}

Plan* make_plan(DType dtype, const Conv2dGeom& g, bool nhwc) {
  TypeInfo t = type_info(dtype);
  auto p = std::make_unique<Plan>();
  p->dtype = dtype, p->g = g, p->nhwc = nhwc;
  cudnnTensorFormat_t format = nhwc ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW;
  cudnn_check(cudnnCreateTensorDescriptor(&p->x), "cudnnCreateTensorDescriptor");
  cudnn_check(cudnnCreateTensorDescriptor(&p->y), "cudnnCreateTensorDescriptor");
  cudnn_check(cudnnCreateFilterDescriptor(&p->w), "cudnnCreateFilterDescriptor");
  cudnn_check(cudnnCreateConvolutionDescriptor(&p->conv), "cudnnCreateConvolutionDescriptor");
  cudnn_check(cudnnSetTensor4dDescriptor(p->x, format, t.data, (int)g.N, (int)g.C, (int)g.H,
                                         (int)g.W),
              "cudnnSetTensor4dDescriptor (input)");
  cudnn_check(cudnnSetTensor4dDescriptor(p->y, format, t.data, (int)g.N, (int)g.O, (int)g.OH,
                                         (int)g.OW),
              "cudnnSetTensor4dDescriptor (output)");
  cudnn_check(cudnnSetFilter4dDescriptor(p->w, t.data, format, (int)g.O, (int)(g.C / g.groups),
                                         (int)g.KH, (int)g.KW),
              "cudnnSetFilter4dDescriptor");
  cudnn_check(cudnnSetConvolution2dDescriptor(p->conv, (int)g.pad_h, (int)g.pad_w, (int)g.stride_h,
                                              (int)g.stride_w, (int)g.dil_h, (int)g.dil_w,
                                              CUDNN_CROSS_CORRELATION, t.compute),
              "cudnnSetConvolution2dDescriptor");
  cudnn_check(cudnnSetConvolutionGroupCount(p->conv, (int)g.groups),
              "cudnnSetConvolutionGroupCount");
  cudnn_check(cudnnSetConvolutionMathType(p->conv, t.math), "cudnnSetConvolutionMathType");
  int n = 0, c = 0, h = 0, w = 0;
  cudnn_check(cudnnGetConvolution2dForwardOutputDim(p->conv, p->x, p->w, &n, &c, &h, &w),
              "cudnnGetConvolution2dForwardOutputDim");
  TB_CHECK(n == g.N && c == g.O && h == g.OH && w == g.OW,
           "conv2d: cuDNN computes an output of [{}, {}, {}, {}] for {} ({})", n, c, h, w,
           describe(dtype, g), layout_name(nhwc));
  return p.release();
}

// The cached plan of (current device, dtype, geometry, layout). Plans are never destroyed.
Plan& plan_for(DType dtype, const Conv2dGeom& g, bool nhwc) {
  static std::mutex mu;
  static auto* plans = new std::map<std::vector<int64_t>, Plan*>();
  int d = 0;
  cuda_check(cudaGetDevice(&d), "conv2d: cudaGetDevice");
  std::vector<int64_t> key = {d,        (int64_t)dtype, nhwc,       g.N,        g.C,     g.H,
                              g.W,      g.O,            g.KH,       g.KW,       g.OH,    g.OW,
                              g.stride_h, g.stride_w,   g.pad_h,    g.pad_w,    g.dil_h, g.dil_w,
                              g.groups};
  std::lock_guard<std::mutex> lock(mu);
  auto it = plans->find(key);
  if (it != plans->end()) return *it->second;
  Plan* p = make_plan(dtype, g, nhwc);
  plans->emplace(key, p);
  return *p;
}

// From cudnnFind*'s results (fastest first): the fastest deterministic one, else the fastest.
// float32 never takes a tensor-core (TF32) algorithm.
template <typename Perf>
void choose(const Perf* perf, int n, DType dtype, size_t workspace_limit, Choice& c) {
  for (int i = 0; i < n; i++)
    c.tried += fmt::format("{}algo {}: {}", c.tried.empty() ? "" : "; ", (int)perf[i].algo,
                           cudnnGetErrorString(perf[i].status));
  for (int pass = 0; pass < 2 && !c.ok; pass++)
    for (int i = 0; i < n; i++) {
      const Perf& r = perf[i];
      if (r.status != CUDNN_STATUS_SUCCESS || r.memory > workspace_limit) continue;
      if (dtype == kFloat32 && r.mathType != CUDNN_DEFAULT_MATH && r.mathType != CUDNN_FMA_MATH)
        continue;
      if (pass == 0 && r.determinism != CUDNN_DETERMINISTIC) continue;
      c.ok = true, c.algo = (int)r.algo, c.workspace = r.memory;
      break;
    }
}

constexpr size_t kMaxWorkspace = size_t(256) << 20;

// A cudnnFind* that itself reports "not supported" (or a parameter it rejects for this layout)
// means no algorithm in this layout; the caller may try the other one. Other failures throw.
bool search_failed(cudnnStatus_t status, const char* what, Choice& c) {
  int category = CUDNN_STATUS_CATEGORY((int)status);
  if (category != CUDNN_STATUS_NOT_SUPPORTED && category != CUDNN_STATUS_BAD_PARAM) {
    cudnn_check(status, what);
    return false;
  }
  c.tried = fmt::format("{}: {}", what, cudnnGetErrorString(status));
  return true;
}

// The workspace for the search: the largest any algorithm asks for, at most kMaxWorkspace.
template <typename SizeFn> size_t search_workspace(int algo_count, SizeFn size_of) {
  size_t most = 0;
  for (int a = 0; a < algo_count; a++) {
    size_t bytes = 0;
    if (size_of(a, &bytes) == CUDNN_STATUS_SUCCESS) most = std::max(most, bytes);
  }
  return std::min(most, kMaxWorkspace);
}

// The algorithm of direction `dir` on plan p, searched on the given buffers at first use.
Choice choice_for(Plan& p, int dir, const void* a, const void* b, void* out) {
  std::lock_guard<std::mutex> lock(p.mu);
  Choice& c = p.choice[dir];
  if (c.searched) return c;
  cudnnHandle_t h = cudnn_handle();
  if (dir == kForward) {
    size_t ws_bytes = search_workspace(CUDNN_CONVOLUTION_FWD_ALGO_COUNT, [&](int algo, size_t* s) {
      return cudnnGetConvolutionForwardWorkspaceSize(h, p.x, p.w, p.conv, p.y,
                                                     (cudnnConvolutionFwdAlgo_t)algo, s);
    });
    DeviceScratch ws(std::max<size_t>(ws_bytes, 1));
    cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    int n = 0;
    cudnnStatus_t st = cudnnFindConvolutionForwardAlgorithmEx(
        h, p.x, a, p.w, b, p.conv, p.y, out, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &n, perf, ws.data,
        ws_bytes);
    if (!search_failed(st, "cudnnFindConvolutionForwardAlgorithmEx", c))
      choose(perf, n, p.dtype, ws_bytes, c);
  } else if (dir == kBackwardData) { // a = dy, b = w, out = dx
    size_t ws_bytes =
        search_workspace(CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, [&](int algo, size_t* s) {
          return cudnnGetConvolutionBackwardDataWorkspaceSize(
              h, p.w, p.y, p.conv, p.x, (cudnnConvolutionBwdDataAlgo_t)algo, s);
        });
    DeviceScratch ws(std::max<size_t>(ws_bytes, 1));
    cudnnConvolutionBwdDataAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
    int n = 0;
    cudnnStatus_t st = cudnnFindConvolutionBackwardDataAlgorithmEx(
        h, p.w, b, p.y, a, p.conv, p.x, out, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &n, perf,
        ws.data, ws_bytes);
    if (!search_failed(st, "cudnnFindConvolutionBackwardDataAlgorithmEx", c))
      choose(perf, n, p.dtype, ws_bytes, c);
  } else { // a = x, b = dy, out = dw
    size_t ws_bytes =
        search_workspace(CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, [&](int algo, size_t* s) {
          return cudnnGetConvolutionBackwardFilterWorkspaceSize(
              h, p.x, p.y, p.conv, p.w, (cudnnConvolutionBwdFilterAlgo_t)algo, s);
        });
    DeviceScratch ws(std::max<size_t>(ws_bytes, 1));
    cudnnConvolutionBwdFilterAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
    int n = 0;
    cudnnStatus_t st = cudnnFindConvolutionBackwardFilterAlgorithmEx(
        h, p.x, a, p.y, b, p.conv, p.w, out, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &n, perf,
        ws.data, ws_bytes);
    if (!search_failed(st, "cudnnFindConvolutionBackwardFilterAlgorithmEx", c))
      choose(perf, n, p.dtype, ws_bytes, c);
  }
  c.searched = true;
  return c;
}

[[noreturn]] void no_algorithm(int dir, DType dtype, const Conv2dGeom& g,
                               const std::string& tried) {
  throw Error(fmt::format("conv2d: cuDNN offers no {} algorithm for {} (tried: {})",
                          direction_name(dir), describe(dtype, g), tried));
}

// True (and what was tried added to `tried`) when an earlier search found no algorithm for
// direction `dir` of plan p: the caller goes on to the next layout without copying anything.
bool known_unusable(Plan& p, int dir, std::string& tried) {
  std::lock_guard<std::mutex> lock(p.mu);
  const Choice& c = p.choice[dir];
  if (!c.searched || c.ok) return false;
  tried += fmt::format("{}{}: {}", tried.empty() ? "" : "; ", layout_name(p.nhwc), c.tried);
  return true;
}

// ---- the three kernels ---------------------------------------------------------------------------------

void cuda_conv2d_forward(DType dtype, const Conv2dGeom& g, const void* x, Strides4 xs,
                         const void* w, const void* b, void* y, Strides4 ys) {
  TypeInfo t = type_info(dtype);
  if (g.N * g.O * g.OH * g.OW == 0) return;
  if (g.C == 0) { // no input channels: y = b (or 0)
    zero4d(t.size, y, ys, g.N, g.O, g.OH, g.OW);
    if (b) add_bias(dtype, y, ys, b, g);
    return;
  }
  check_int_range(dtype, g);
  std::string tried;
  for (bool nhwc : layouts_to_try(dtype)) {
    Plan& p = plan_for(dtype, g, nhwc);
    if (known_unusable(p, kForward, tried)) continue;
    Operand xin(t.size, x, xs, g.N, g.C, g.H, g.W, nhwc, true);
    Operand yout(t.size, y, ys, g.N, g.O, g.OH, g.OW, nhwc, false);
    Filter win(t.size, w, g, nhwc, true);
    Choice c = choice_for(p, kForward, xin.ptr(), win.ptr(), yout.ptr());
    if (!c.ok) {
      tried += fmt::format("{}{}: {}", tried.empty() ? "" : "; ", layout_name(nhwc), c.tried);
      continue;
    }
    DeviceScratch ws(std::max<size_t>(c.workspace, 1));
    cudnn_check(cudnnConvolutionForward(cudnn_handle(), one(dtype), p.x, xin.ptr(), p.w, win.ptr(),
                                        p.conv, (cudnnConvolutionFwdAlgo_t)c.algo, ws.data,
                                        c.workspace, zero(dtype), p.y, yout.ptr()),
                "cudnnConvolutionForward");
    yout.finish();
    if (b) add_bias(dtype, y, ys, b, g);
    return;
  }
  no_algorithm(kForward, dtype, g, tried);
}

void cuda_conv2d_backward_data(DType dtype, const Conv2dGeom& g, const void* dy, Strides4 dys,
                               const void* w, void* dx, Strides4 dxs) {
  TypeInfo t = type_info(dtype);
  if (g.N * g.C * g.H * g.W == 0) return;
  if (g.O * g.OH * g.OW == 0) { // nothing flows back
    zero4d(t.size, dx, dxs, g.N, g.C, g.H, g.W);
    return;
  }
  check_int_range(dtype, g);
  std::string tried;
  for (bool nhwc : layouts_to_try(dtype)) {
    Plan& p = plan_for(dtype, g, nhwc);
    if (known_unusable(p, kBackwardData, tried)) continue;
    Operand dyin(t.size, dy, dys, g.N, g.O, g.OH, g.OW, nhwc, true);
    Operand dxout(t.size, dx, dxs, g.N, g.C, g.H, g.W, nhwc, false);
    Filter win(t.size, w, g, nhwc, true);
    Choice c = choice_for(p, kBackwardData, dyin.ptr(), win.ptr(), dxout.ptr());
    if (!c.ok) {
      tried += fmt::format("{}{}: {}", tried.empty() ? "" : "; ", layout_name(nhwc), c.tried);
      continue;
    }
    DeviceScratch ws(std::max<size_t>(c.workspace, 1));
    cudnn_check(cudnnConvolutionBackwardData(cudnn_handle(), one(dtype), p.w, win.ptr(), p.y,
                                             dyin.ptr(), p.conv,
                                             (cudnnConvolutionBwdDataAlgo_t)c.algo, ws.data,
                                             c.workspace, zero(dtype), p.x, dxout.ptr()),
                "cudnnConvolutionBackwardData");
    dxout.finish();
    return;
  }
  no_algorithm(kBackwardData, dtype, g, tried);
}

void cuda_conv2d_backward_weights(DType dtype, const Conv2dGeom& g, const void* x, Strides4 xs,
                                  const void* dy, Strides4 dys, void* dw, void* db) {
  TypeInfo t = type_info(dtype);
  check_int_range(dtype, g);
  int64_t w_numel = g.O * (g.groups > 0 ? g.C / g.groups : 0) * g.KH * g.KW;
  if (g.N * g.C * g.O * g.OH * g.OW == 0) { // dw: a sum with no terms; db still sums dy
    if (w_numel > 0)
      cuda_check(cudaMemsetAsync(dw, 0, w_numel * t.size, cuda_stream()),
                 "conv2d backward (zero dw)");
    if (db) bias_grad(dtype, dy, dys, g, db);
    return;
  }
  std::string tried;
  for (bool nhwc : layouts_to_try(dtype)) {
    Plan& p = plan_for(dtype, g, nhwc);
    if (known_unusable(p, kBackwardFilter, tried)) continue;
    Operand xin(t.size, x, xs, g.N, g.C, g.H, g.W, nhwc, true);
    Operand dyin(t.size, dy, dys, g.N, g.O, g.OH, g.OW, nhwc, true);
    Filter dwout(t.size, dw, g, nhwc, false);
    Choice c = choice_for(p, kBackwardFilter, xin.ptr(), dyin.ptr(), dwout.ptr());
    if (!c.ok) {
      tried += fmt::format("{}{}: {}", tried.empty() ? "" : "; ", layout_name(nhwc), c.tried);
      continue;
    }
    DeviceScratch ws(std::max<size_t>(c.workspace, 1));
    cudnn_check(cudnnConvolutionBackwardFilter(cudnn_handle(), one(dtype), p.x, xin.ptr(), p.y,
                                               dyin.ptr(), p.conv,
                                               (cudnnConvolutionBwdFilterAlgo_t)c.algo, ws.data,
                                               c.workspace, zero(dtype), p.w, dwout.ptr()),
                "cudnnConvolutionBackwardFilter");
    dwout.finish();
    if (db) bias_grad(dtype, dy, dys, g, db);
    return;
  }
  no_algorithm(kBackwardFilter, dtype, g, tried);
}

} // namespace

const Conv2dKernels Conv2dKernels::cuda = {
    .forward = cuda_conv2d_forward,
    .backward_data = cuda_conv2d_backward_data,
    .backward_weights = cuda_conv2d_backward_weights,
};

} // namespace tb::kernels
