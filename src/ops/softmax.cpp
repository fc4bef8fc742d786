// src/ops/softmax.cpp — softmax and log_softmax over one dim (numerically stable), with backward.
//
// x is viewed as [outer, n, inner] around `dim` (contiguous; float16/bfloat16 compute in float32):
//   softmax:     y_j = exp(x_j - max x) / sum_k exp(x_k - max x)
//                dx_j = y_j (dy_j - sum_k dy_k y_k)
//   log_softmax: y_j = x_j - max x - log sum_k exp(x_k - max x)
//                dx_j = dy_j - exp(y_j) sum_k dy_k
// The backward needs only the output y, which the node saves (detached: a node must not own the
// tensor whose grad_fn it is).
#include <tb/ops.h>

#include "autocast.h"
#include "dispatch.h"
#include "qactivation.h"
#include "kernels/softmax.h"

namespace tb {

using kernels::SoftmaxKernels;

static Tensor as_dtype(const Tensor& t, DType d) { return t.dtype() == d ? t : t.to(d); }

static Tensor softmax_common(const char* op, bool log, const Tensor& x, int64_t dim) {
  check_defined(op, x, "input");
  check_not_quantized(op, x);
  check_floating(op, x);
  int64_t d = wrap_dim(op, dim, x.dim());
  int64_t outer = 1, n = x.dim() == 0 ? 1 : x.size(d), inner = 1;
  for (int64_t i = 0; i < d; i++) outer *= x.size(i);
  for (int64_t i = d + 1; i < x.dim(); i++) inner *= x.size(i);
  DType cdt = x.dtype() == kFloat64 ? kFloat64 : kFloat32;
  Tensor xc = as_dtype(x.detach(), cdt).contiguous();
  Tensor y = empty(x.shape(), TensorOptions(cdt, x.device()));
  kernel(&SoftmaxKernels::forward, op, x.device(), cdt)(cdt, log, xc.raw_data(), y.raw_data(),
                                                        outer, n, inner);
  Tensor out = as_dtype(y, x.dtype());

  if (auto node = make_node(op, {x})) {
    SavedTensor sy(y.detach());
    DType xdt = x.dtype();
    node->backward = [sy, log, outer, n, inner, xdt, op](const std::vector<Tensor>& g)
        -> std::vector<Tensor> {
      Tensor yv = sy.unpack(op);
      Tensor dy = as_dtype(g[0], yv.dtype()).contiguous();
      Tensor dx = empty(yv.shape(), TensorOptions(yv.dtype(), yv.device()));
      kernel(&SoftmaxKernels::backward, op, yv.device(), yv.dtype())(
          yv.dtype(), log, yv.raw_data(), dy.raw_data(), dx.raw_data(), outer, n, inner);
      return {as_dtype(dx, xdt)};
    };
    attach_outputs(node, {out});
  }
  return out;
}

// Under autocast both run in float32 (PyTorch's CUDA autocast list; see docs/mixed_precision.md).
Tensor softmax(const Tensor& x, int64_t dim) {
  return softmax_common("softmax", false, autocast_fp32(x), dim);
}
Tensor log_softmax(const Tensor& x, int64_t dim) {
  return softmax_common("log_softmax", true, autocast_fp32(x), dim);
}

} // namespace tb
