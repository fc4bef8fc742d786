// src/ops/reduce.cpp — sum, mean, var, max/min (with indices, or over everything), argmax/argmin,
// norm, each with its backward.
//
// Every reduction runs one kernel over a dense operand viewed as [outer, reduce, inner]
// (kernels/reduce.h). plan_reduction finds that view: it orders x's dims as they lie in memory
// (contiguous, channels-last or any dense permutation); when the reduced dims are adjacent in that
// order the kernel reads x in place and the output keeps x's memory order (a channels-last
// activation reduced over H, W gives an output whose C is innermost). Otherwise x is permuted to
// (kept dims, reduced dims) and copied contiguous, and inner = 1.
//
// Gradients (g has the reduced shape; "expand" = unsqueeze the reduced dims, broadcast to x):
//   sum:  dx = expand(g)                      mean: dx = expand(g) / N
//   var:  dx = expand(g) * 2 (x - mean) / max(0, N - correction)
//   max/min over a dim: g goes to the returned index (PyTorch's value_selecting_reduction_backward)
//   max/min over all:   g is split evenly among all elements equal to the result (PyTorch's
//                       evenly_distribute_backward; NaN results select the NaN elements)
//   norm: dx = g x / ||x||, and 0 where ||x|| = 0 (PyTorch's masked norm backward)
#include <algorithm>
#include <cmath>
#include <numeric>

#include <tb/ops.h>

#include "autocast.h"
#include "dispatch.h"
#include "qactivation.h"
#include "kernels/reduce.h"

namespace tb {

using kernels::ArgReduceOp;
using kernels::ReduceKernels;

// ---- geometry ------------------------------------------------------------------------------------

// How one reduction maps onto the kernels' [outer, reduce, inner] view.
struct Reduction {
  Tensor x;                  // dense operand the kernel reads (x, or a contiguous copy)
  int64_t outer = 1, reduce = 1, inner = 1;
  std::vector<bool> reduced; // per dim of the input
  Shape keep_shape, keep_strides; // the kernel's output with keepdim: reduced dims have size 1
  Shape out_shape, out_strides;   // without keepdim: reduced dims dropped
};

// Parses `dims` (empty = all; negative wrap; repeats refused) and plans the kernel view.
static Reduction plan_reduction(const char* op, const Tensor& x, const Shape& dims) {
  int64_t nd = x.dim();
  Reduction p;
  p.reduced.assign(std::max<int64_t>(nd, 1), dims.empty());
  std::vector<bool> seen(std::max<int64_t>(nd, 1), false);
  for (int64_t d : dims) {
    int64_t w = wrap_dim(op, d, nd);
    TB_CHECK(!seen[w], "{}: dim {} appears multiple times in the list of dims {}", op, w,
             shape_str(dims));
    seen[w] = true;
    p.reduced[w] = true;
  }
  if (nd == 0) {  // a scalar: nothing to reduce, the kernel copies the one element
    p.x = x.contiguous();
    p.reduced.clear();
    return p;
  }
  const Shape& sz = x.shape();

  // Memory order of x's dims (outermost first). x is already detached: these views record nothing.
  std::vector<int64_t> order(nd);
  std::iota(order.begin(), order.end(), 0);
  Tensor base = x;
  if (!x.is_contiguous()) {
    bool in_place = is_dense(x);
    if (in_place) {
      std::stable_sort(order.begin(), order.end(),
                       [&](int64_t a, int64_t b) { return x.stride(a) > x.stride(b); });
      in_place = x.permute(order).is_contiguous();
    }
    if (!in_place) {
      base = x.contiguous();
      std::iota(order.begin(), order.end(), 0);
    }
  }

  // Are the reduced dims (ignoring size-1 dims, which take no memory) one run in that order?
  int64_t first = -1, last = -1;
  for (int64_t k = 0; k < nd; k++)
    if (p.reduced[order[k]] && sz[order[k]] != 1) {
      if (first < 0) first = k;
      last = k;
    }
  bool run = true;
  for (int64_t k = first; first >= 0 && k <= last; k++)
    if (!p.reduced[order[k]] && sz[order[k]] != 1) run = false;

  Shape strides(nd, 0);
  if (run) {
    p.x = base;
    for (int64_t k = 0; k < nd; k++) {
      int64_t s = sz[order[k]];
      if (p.reduced[order[k]]) p.reduce *= s;
      else if (first < 0 || k < first) p.outer *= s;
      else p.inner *= s;
    }
    int64_t running = 1;  // output strides: kept dims in the same memory order as x
    for (int64_t k = nd - 1; k >= 0; k--) {
      strides[order[k]] = running;
      if (!p.reduced[order[k]]) running *= sz[order[k]];
    }
  } else {
    Shape perm;
    for (int64_t d = 0; d < nd; d++)
      if (!p.reduced[d]) perm.push_back(d);
    for (int64_t d = 0; d < nd; d++)
      if (p.reduced[d]) perm.push_back(d);
    p.x = x.permute(perm).contiguous();
    for (int64_t d = 0; d < nd; d++) (p.reduced[d] ? p.reduce : p.outer) *= sz[d];
    int64_t running = 1;
    for (int64_t d = nd - 1; d >= 0; d--) {
      strides[d] = running;
      if (!p.reduced[d]) running *= sz[d];
    }
  }
  for (int64_t d = 0; d < nd; d++) {
    p.keep_shape.push_back(p.reduced[d] ? 1 : sz[d]);
    p.keep_strides.push_back(strides[d]);
    if (!p.reduced[d]) p.out_shape.push_back(sz[d]), p.out_strides.push_back(strides[d]);
  }
  return p;
}

// The kernel's output buffer (keepdim geometry) and the tensor handed to the user.
struct ReduceOut {
  Tensor buf;  // keep_shape / keep_strides
  Tensor out;  // buf, or a view of it without the reduced dims
};
static ReduceOut make_output(const Reduction& p, bool keepdim, TensorOptions o) {
  ReduceOut r;
  r.buf = empty_strided(p.keep_shape, p.keep_strides, o);
  r.out = keepdim ? r.buf : make_view(r.buf, p.out_shape, p.out_strides, 0);
  return r;
}

// g (reduced shape, keepdim or not) laid out like the kernel's output buffer: unsqueezed at the
// reduced dims and copied into keep_strides when its layout differs.
static Tensor grad_in_keep_layout(const Reduction& p, const Tensor& g, bool keepdim) {
  Tensor gk = g;
  if (!keepdim)
    for (size_t d = 0; d < p.reduced.size(); d++)
      if (p.reduced[d]) gk = gk.unsqueeze((int64_t)d);
  if (gk.strides() == p.keep_strides || gk.numel() <= 1) return gk;
  Tensor out = empty_strided(p.keep_shape, p.keep_strides, TensorOptions(g.dtype(), g.device()));
  out.copy_(gk);
  return out;
}

// expand(g) of the gradient table: g back to x's shape (a broadcast view).
static Tensor expand_grad(const Reduction& p, const Tensor& g, bool keepdim, const Shape& x_shape) {
  Tensor gk = g;
  if (!keepdim)
    for (size_t d = 0; d < p.reduced.size(); d++)
      if (p.reduced[d]) gk = gk.unsqueeze((int64_t)d);
  return gk.expand(x_shape);
}

static Tensor as_dtype(const Tensor& t, DType d) { return t.dtype() == d ? t : t.to(d); }

// ---- sum, mean ---------------------------------------------------------------------------------

// sum: integer and bool inputs sum in int64 (as PyTorch); float16/bfloat16 compute in float32.
static DType sum_compute_dtype(DType t) {
  if (t == kFloat32 || t == kFloat64) return t;
  if (is_floating(t)) return kFloat32;
  return kInt64;
}

// Shared forward of sum and mean: scale = 1 or 1/N.
static Tensor sum_forward(const char* op, const Tensor& x, const Shape& dims, bool keepdim,
                          bool mean, Reduction* plan_out) {
  check_defined(op, x, "input");
  check_not_quantized(op, x);
  if (mean)
    TB_CHECK(is_floating(x.dtype()), "{}: expected a floating-point input, got {} (shape {}); "
             "convert it first", op, dtype_name(x.dtype()), shape_str(x.shape()));
  DType cdt = sum_compute_dtype(x.dtype());
  DType rdt = is_floating(x.dtype()) ? x.dtype() : kInt64;
  Reduction p = plan_reduction(op, as_dtype(x.detach(), cdt), dims);
  ReduceOut r = make_output(p, keepdim, TensorOptions(cdt, x.device()));
  double scale = mean ? 1.0 / (double)p.reduce : 1.0;
  kernel(&ReduceKernels::sum, op, x.device(), cdt)(cdt, p.x.raw_data(), r.buf.raw_data(), p.outer,
                                                   p.reduce, p.inner, scale);
  *plan_out = p;
  return as_dtype(r.out, rdt);
}

Tensor sum(const Tensor& x_in, const Shape& dims, bool keepdim) {
  Tensor x = autocast_fp32(x_in); // autocast: sum runs in float32 (PyTorch's CUDA list)
  Reduction p;
  Tensor out = sum_forward("sum", x, dims, keepdim, false, &p);
  if (auto node = make_node("sum", {x})) {
    Shape xs = x.shape();
    DType xdt = x.dtype();
    p.x = Tensor();  // the backward needs only the geometry
    node->backward = [p, xs, xdt, keepdim](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      return {as_dtype(expand_grad(p, g[0], keepdim, xs), xdt)};
    };
    attach_outputs(node, {out});
  }
  return out;
}

Tensor mean(const Tensor& x, const Shape& dims, bool keepdim) {
  Reduction p;
  Tensor out = sum_forward("mean", x, dims, keepdim, true, &p);
  if (auto node = make_node("mean", {x})) {
    Shape xs = x.shape();
    double n = (double)p.reduce;
    p.x = Tensor();
    node->backward = [p, xs, n, keepdim](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      return {expand_grad(p, mul(g[0], 1.0 / n), keepdim, xs)};
    };
    attach_outputs(node, {out});
  }
  return out;
}

// ---- var ---------------------------------------------------------------------------------------

Tensor var(const Tensor& x, const Shape& dims, int64_t correction, bool keepdim) {
  const char* op = "var";
  check_defined(op, x, "input");
  check_floating(op, x);
  TB_CHECK(correction >= 0, "var: correction must be >= 0, got {}", correction);
  DType cdt = sum_compute_dtype(x.dtype());
  Reduction p = plan_reduction(op, as_dtype(x.detach(), cdt), dims);
  ReduceOut v = make_output(p, keepdim, TensorOptions(cdt, x.device()));
  ReduceOut m = make_output(p, true, TensorOptions(cdt, x.device()));
  kernel(&ReduceKernels::var, op, x.device(), cdt)(cdt, p.x.raw_data(), v.buf.raw_data(),
                                                   m.buf.raw_data(), p.outer, p.reduce, p.inner,
                                                   correction);
  Tensor out = as_dtype(v.out, x.dtype());
  if (auto node = make_node("var", {x})) {
    SavedTensor sx(x);
    Tensor mean_keep = as_dtype(m.buf, x.dtype());  // keepdim shape: broadcasts against x
    double k = 2.0 / (double)std::max<int64_t>(0, p.reduce - correction);
    p.x = Tensor();
    node->backward = [p, sx, mean_keep, k, keepdim](const std::vector<Tensor>& g)
        -> std::vector<Tensor> {
      Tensor xv = sx.unpack("var");
      Tensor gk = expand_grad(p, mul(g[0], k), keepdim, xv.shape());
      return {mul(sub(xv, mean_keep), gk)};
    };
    attach_outputs(node, {out});
  }
  return out;
}

// ---- max / min / argmax / argmin over one dim --------------------------------------------------

// Arg-reductions compute in float32/float64/int64; other dtypes are converted and the values
// converted back.
static DType arg_compute_dtype(DType t) {
  if (t == kFloat32 || t == kFloat64 || t == kInt64) return t;
  return is_floating(t) ? kFloat32 : kInt64;
}

// values (may be skipped) and int64 indices of the max/min over `dim`.
static ValuesIndices arg_forward(const char* op, ArgReduceOp kind, const Tensor& x, int64_t dim,
                                 bool keepdim, bool want_values, Reduction* plan_out) {
  check_defined(op, x, "input");
  int64_t d = wrap_dim(op, dim, x.dim());
  TB_CHECK(x.dim() == 0 || x.size(d) > 0,
           "{}: cannot reduce dim {} of size 0 (input shape {}): the result has no value", op, d,
           shape_str(x.shape()));
  DType cdt = arg_compute_dtype(x.dtype());
  Reduction p = plan_reduction(op, as_dtype(x.detach(), cdt), {dim});
  ReduceOut idx = make_output(p, keepdim, TensorOptions(kInt64, x.device()));
  ReduceOut val;
  if (want_values) val = make_output(p, keepdim, TensorOptions(cdt, x.device()));
  kernel(&ReduceKernels::arg, op, x.device(), cdt)(
      kind, cdt, p.x.raw_data(), want_values ? val.buf.raw_data() : nullptr,
      idx.buf.data<int64_t>(), p.outer, p.reduce, p.inner);
  *plan_out = p;
  ValuesIndices r;
  r.indices = idx.out;
  if (want_values) r.values = as_dtype(val.out, x.dtype());
  return r;
}

static ValuesIndices max_min_dim(const char* op, ArgReduceOp kind, const Tensor& x, int64_t dim,
                                 bool keepdim) {
  Reduction p;
  ValuesIndices r = arg_forward(op, kind, x, dim, keepdim, true, &p);
  if (!is_floating(x.dtype())) return r;
  if (auto node = make_node(op, {x})) {
    Tensor idx_keep = r.indices;  // shares the kernel's output buffer
    if (!keepdim)
      for (size_t d = 0; d < p.reduced.size(); d++)
        if (p.reduced[d]) idx_keep = idx_keep.unsqueeze((int64_t)d);
    // One dim is always a run (plan_reduction), so the kernel read x in place with p.x's strides:
    // dx is laid out the same way.
    Shape xs = x.shape(), x_strides = p.x.strides();
    DType xdt = x.dtype();
    p.x = Tensor();
    node->backward = [op, p, idx_keep, xs, x_strides, xdt, keepdim](
                         const std::vector<Tensor>& g) -> std::vector<Tensor> {
      DType cdt = arg_compute_dtype(xdt);
      Tensor gk = grad_in_keep_layout(p, as_dtype(g[0], cdt), keepdim);
      Tensor dx = empty_strided(xs, x_strides, TensorOptions(cdt, g[0].device()));
      kernel(&ReduceKernels::arg_backward, op, g[0].device(), cdt)(
          cdt, gk.raw_data(), idx_keep.data<int64_t>(), dx.raw_data(), p.outer, p.reduce,
          p.inner);
      return {as_dtype(dx, xdt)};
    };
    attach_outputs(node, {r.values});
  }
  return r;
}

ValuesIndices max(const Tensor& x, int64_t dim, bool keepdim) {
  return max_min_dim("max", ArgReduceOp::Max, x, dim, keepdim);
}
ValuesIndices min(const Tensor& x, int64_t dim, bool keepdim) {
  return max_min_dim("min", ArgReduceOp::Min, x, dim, keepdim);
}

Tensor argmax(const Tensor& x, int64_t dim, bool keepdim) {
  Reduction p;
  return arg_forward("argmax", ArgReduceOp::Max, x, dim, keepdim, false, &p).indices;
}
Tensor argmin(const Tensor& x, int64_t dim, bool keepdim) {
  Reduction p;
  return arg_forward("argmin", ArgReduceOp::Min, x, dim, keepdim, false, &p).indices;
}

// ---- max / min over all elements ---------------------------------------------------------------

static Tensor max_min_all(const char* op, ArgReduceOp kind, const Tensor& x) {
  check_defined(op, x, "input");
  TB_CHECK(x.numel() > 0, "{}: cannot reduce an empty tensor (shape {}): the result has no value",
           op, shape_str(x.shape()));
  DType cdt = arg_compute_dtype(x.dtype());
  Tensor xc = as_dtype(x.detach(), cdt).contiguous();
  Tensor val = empty({}, TensorOptions(cdt, x.device()));
  kernel(&ReduceKernels::arg, op, x.device(), cdt)(kind, cdt, xc.raw_data(), val.raw_data(),
                                                   nullptr, 1, x.numel(), 1);
  Tensor out = as_dtype(val, x.dtype());
  if (!is_floating(x.dtype())) return out;
  if (auto node = make_node(op, {x})) {
    SavedTensor sx(x);
    Tensor result = out.detach();  // not `out`: the node would keep itself alive
    node->backward = [sx, result, op](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      Tensor xv = sx.unpack(op);
      // The elements that attain the result (all NaNs when the result is NaN) share g evenly.
      Tensor hit = std::isnan(result.item()) ? ne(xv, xv) : eq(xv, result);
      Tensor mask = hit.to(xv.dtype());
      return {mul(mask, div(g[0], sum(mask)))};
    };
    attach_outputs(node, {out});
  }
  return out;
}

Tensor max(const Tensor& x) { return max_min_all("max", ArgReduceOp::Max, x); }
Tensor min(const Tensor& x) { return max_min_all("min", ArgReduceOp::Min, x); }

// ---- norm --------------------------------------------------------------------------------------

Tensor norm(const Tensor& x) {
  const char* op = "norm";
  check_defined(op, x, "input");
  check_floating(op, x);
  Tensor out;
  {
    no_grad ng;
    out = sqrt(sum(square(x.detach())));
  }
  if (auto node = make_node(op, {x})) {
    SavedTensor sx(x);
    Tensor result = out.detach();  // not `out`: the node would keep itself alive
    node->backward = [sx, result](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      Tensor xv = sx.unpack("norm");
      if (result.item() == 0.0) return {zeros_like(xv)};
      return {mul(xv, div(g[0], result))};
    };
    attach_outputs(node, {out});
  }
  return out;
}

} // namespace tb
