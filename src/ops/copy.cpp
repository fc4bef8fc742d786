// Copies: contiguous(), channels-last, clone, dtype and device conversion, copy_/fill_/zero_.
// All go through one strided-copy kernel (kernels/copy.h); crossing devices goes through a
// contiguous staging buffer and a memcpy.
#include <algorithm>

#include <tb/ops.h>

#include "dispatch.h"
#include "qactivation.h"
#include "kernels/copy.h"
#include "kernels/cuda_runtime.h"

namespace tb {

namespace detail {
// dst[...] = src[...] for tensors of the same shape on the same device (any layouts, dtypes): one
// strided-copy kernel. Also the copy of src/ops/shape.cpp (cat, index_select, pad); `op` names
// the caller in errors.
void copy_same_device(const char* op, const Tensor& dst, const Tensor& src) {
  TB_CHECK(dst.dim() <= kernels::kMaxDims, "{}: at most {} dims are supported, got shape {}", op,
           kernels::kMaxDims, shape_str(dst.shape()));
  // Dims in dst's memory order (largest stride first; the same permutation for src): the kernel
  // then merges the dims of a channels-last -> channels-last copy (a dtype cast under autocast)
  // into one contiguous run, instead of walking C with stride 1 outermost and H·W with stride C
  // innermost. Any order copies the same elements; this one is the fastest for dense dst.
  int nd = (int)dst.dim();
  std::vector<int> order(nd);
  for (int d = 0; d < nd; d++) order[d] = d;
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return dst.stride(a) > dst.stride(b); });
  kernels::StridedLayout sl, dl;
  sl.ndim = dl.ndim = nd;
  for (int k = 0; k < nd; k++) {
    int d = order[k];
    sl.sizes[k] = dl.sizes[k] = dst.size(d);
    sl.strides[k] = src.stride(d);
    dl.strides[k] = dst.stride(d);
  }
  kernel(&kernels::CopyKernels::strided, op, dst.device(), dst.dtype())(
      src.dtype(), src.raw_data(), sl, dst.dtype(), dst.raw_data(), dl);
}
} // namespace detail

static void copy_same_device(const Tensor& dst, const Tensor& src) {
  detail::copy_same_device("copy", dst, src);
}

// Copies a tensor to another device, keeping dtype; the result is contiguous.
static Tensor transfer(const Tensor& src, Device to) {
  Tensor s = src.contiguous();
  Tensor out = empty(s.shape(), {s.dtype(), to});
  size_t n = s.numel() * s.element_size();
  if (n == 0) return out;
  if (to.is_cuda() && s.device().is_cpu()) {
    kernels::cuda_set_device(to.index);
    kernels::cuda_memcpy_h2d(out.raw_data(), s.raw_data(), n);
  } else if (to.is_cpu() && s.device().is_cuda()) {
    kernels::cuda_set_device(s.device().index);
    kernels::cuda_memcpy_d2h(out.raw_data(), s.raw_data(), n);
  } else {
    kernels::cuda_memcpy_d2d(out.raw_data(), s.raw_data(), n);
  }
  return out;
}

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  Tensor out = empty(shape(), {dtype(), device()});
  copy_same_device(out, *this);
  if (auto node = make_node("contiguous", {*this})) {
    node->backward = [](const std::vector<Tensor>& g) -> std::vector<Tensor> { return {g[0]}; };
    attach_outputs(node, {out});
  }
  return out;
}

Tensor Tensor::contiguous_channels_last() const {
  TB_CHECK(dim() == 4, "contiguous_channels_last: expected a 4-d tensor [N, C, H, W], got shape {}",
           shape_str(shape()));
  if (is_channels_last()) return *this;
  Tensor out = empty_channels_last(shape(), {dtype(), device()});
  copy_same_device(out, *this);
  if (auto node = make_node("contiguous_channels_last", {*this})) {
    node->backward = [](const std::vector<Tensor>& g) -> std::vector<Tensor> { return {g[0]}; };
    attach_outputs(node, {out});
  }
  return out;
}

// clone keeps a dense layout (a channels-last tensor clones channels-last).
Tensor Tensor::clone() const {
  Tensor out = is_dense(*this) ? empty_strided(shape(), strides(), {dtype(), device()})
                               : empty(shape(), {dtype(), device()});
  copy_same_device(out, *this);
  if (auto node = make_node("clone", {*this})) {
    node->backward = [](const std::vector<Tensor>& g) -> std::vector<Tensor> { return {g[0]}; };
    attach_outputs(node, {out});
  }
  return out;
}

Tensor Tensor::to(DType t) const {
  if (t == dtype()) return *this;
  // A quantized activation's levels are not its values (src/ops/qactivation.h).
  if (dtype() == kUInt8) check_not_quantized("to", *this);
  Tensor out = is_dense(*this) ? empty_strided(shape(), strides(), {t, device()})
                               : empty(shape(), {t, device()});
  copy_same_device(out, *this);
  if (is_floating(t) && is_floating(dtype())) {
    if (auto node = make_node("to_dtype", {*this})) {
      DType from = dtype();
      node->backward = [from](const std::vector<Tensor>& g) -> std::vector<Tensor> {
        return {g[0].to(from)};
      };
      attach_outputs(node, {out});
    }
  }
  return out;
}

Tensor Tensor::to(Device d) const {
  if (d == device()) return *this;
  if (d.is_cuda())
    TB_CHECK(kernels::cuda_available(), "to: cannot move a tensor (shape {}) to {}: no CUDA device "
             "is available ({})", shape_str(shape()), d.str(),
             kernels::cuda_built() ? "no GPU or driver found" : "built without CUDA");
  Tensor out = transfer(*this, d);
  if (auto node = make_node("to_device", {*this})) {
    Device from = device();
    node->backward = [from](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      return {g[0].to(from)};
    };
    attach_outputs(node, {out});
  }
  return out;
}

// In-place writes are refused on tensors that take part in a graph while grad mode is on: the
// gradient would silently be wrong. Optimizers and initialisers write under tb::no_grad.
static void check_inplace(const char* op, const Tensor& t) {
  TB_CHECK(!(is_grad_enabled() && t.requires_grad()),
           "{}: in-place write to a tensor (shape {}) that requires grad while grad mode is on; "
           "wrap it in tb::no_grad or use an out-of-place op",
           op, shape_str(t.shape()));
}

Tensor& Tensor::copy_(const Tensor& src) {
  check_defined("copy_", src, "src");
  check_inplace("copy_", *this);
  if (src.dtype() == kUInt8 && dtype() != kUInt8) check_not_quantized("copy_", src);
  Tensor s = src.detach();
  if (s.device() != device()) s = transfer(s, device());
  if (s.shape() != shape()) {
    broadcast_shapes("copy_", s.shape(), shape()); // raises with both shapes if incompatible
    TB_CHECK(s.dim() <= dim(), "copy_: cannot copy shape {} into shape {}", shape_str(s.shape()),
             shape_str(shape()));
    s = s.expand(shape());
  }
  copy_same_device(*this, s);
  bump_version();
  return *this;
}

Tensor& Tensor::fill_(double v) {
  check_inplace("fill_", *this);
  if (is_contiguous() || is_dense(*this)) {
    if (device().is_cuda()) kernels::cuda_fill(dtype(), raw_data(), numel(), v);
    else kernels::ref_fill(dtype(), raw_data(), numel(), v);
  } else {
    copy_same_device(*this, full({}, v, {dtype(), device()}).expand(shape()));
  }
  bump_version();
  return *this;
}

Tensor& Tensor::zero_() { return fill_(0.0); }

} // namespace tb
