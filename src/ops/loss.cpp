// src/ops/loss.cpp — nll_loss, cross_entropy, mse_loss, kl_div, with PyTorch's semantics.
//
// Class-index losses take x [N, C] (also [C] with a 0-d target, and [N, C, d1, ...] with target
// [N, d1, ...], moved to rows [R, C]) and int64 targets in [0, C) or == ignore_index. Per row r:
//   nll_loss:      l_r = -logp_{r,t_r}
//   cross_entropy: l_r = (1 - eps) (-log p_{r,t_r}) + eps mean_c(-log p_rc),  p = softmax(x_r)
//                  (label smoothing eps: the target is q = (1 - eps) onehot + eps / C)
// and l_r = 0 for ignored rows. reduction "none" keeps l (target's shape), "sum" sums it, "mean"
// divides the sum by the number of non-ignored rows (NaN when there is none, as PyTorch).
// Gradients: dnll/dlogp_rj = -[j == t_r];  dce/dx_rj = p_rj - q_rj  (times the row's gradient).
// cross_entropy on [N, C] rows is one fused kernel (kernels/softmax.h), and it matches the
// composition nll_loss(log_softmax(x)) blended with -mean(log_softmax(x)) that the tests check.
// cross_entropy also takes class probabilities (a floating target shaped like x), by composition.
//
//   mse_loss: (x - y)^2, reduced.    kl_div: t (log t - x) (xlogy: 0 where t = 0), or with
//   log_target exp(t) (t - x); "batchmean" = sum / N. Both are compositions of differentiable ops.
#include <cmath>

#include <tb/ops.h>

#include "autocast.h"
#include "dispatch.h"
#include "kernels/softmax.h"

namespace tb {

using kernels::SoftmaxKernels;

// ---- shared checks -------------------------------------------------------------------------------

static Tensor as_dtype(const Tensor& t, DType d) { return t.dtype() == d ? t : t.to(d); }

enum class Reduction { None, Sum, Mean, BatchMean };

static Reduction parse_reduction(const char* op, const std::string& r, bool allow_batchmean) {
  if (r == "none") return Reduction::None;
  if (r == "sum") return Reduction::Sum;
  if (r == "mean") return Reduction::Mean;
  if (allow_batchmean && r == "batchmean") return Reduction::BatchMean;
  TB_CHECK(false, "{}: unknown reduction '{}' (expected 'none', 'sum', 'mean'{})", op, r,
           allow_batchmean ? " or 'batchmean'" : "");
  return Reduction::None;
}

// x (class scores or log-probabilities) as rows [R, C] next to int64 targets [R], both contiguous.
struct ClassRows {
  Tensor x;            // [R, C], detached, contiguous, float32/float64
  Tensor target;       // [R] int64, contiguous, on x's device
  Shape loss_shape;    // shape of the unreduced loss (the target's)
  Shape moved_shape;   // x with C moved last, before flattening (for x of 3+ dims)
  int64_t rows = 0, classes = 0;
  int64_t count = 0;   // rows whose target is not ignore_index
};

static ClassRows class_rows(const char* op, const Tensor& x, const Tensor& target,
                            int64_t ignore_index) {
  check_defined(op, x, "input");
  check_defined(op, target, "target");
  check_floating(op, x);
  check_same_device(op, x, target);
  TB_CHECK(target.dtype() == kInt64,
           "{}: expected target of dtype int64 (class indices), got {} (target shape {}, input "
           "shape {})", op, dtype_name(target.dtype()), shape_str(target.shape()),
           shape_str(x.shape()));
  TB_CHECK(x.dim() >= 1, "{}: expected input [N, C] (or [C], [N, C, d1, ...]), got shape {}", op,
           shape_str(x.shape()));
  ClassRows r;
  r.classes = x.dim() == 1 ? x.size(0) : x.size(1);
  // Expected target shape: x without its class dim.
  Shape want = x.shape();
  want.erase(want.begin() + (x.dim() == 1 ? 0 : 1));
  TB_CHECK(target.shape() == want,
           "{}: input shape {} needs target shape {} (class indices), got target shape {}", op,
           shape_str(x.shape()), shape_str(want), shape_str(target.shape()));
  r.loss_shape = want;
  r.rows = numel_of(want);
  DType cdt = x.dtype() == kFloat64 ? kFloat64 : kFloat32;
  Tensor xd = as_dtype(x.detach(), cdt);
  if (x.dim() >= 3) {  // [N, C, d...] -> [N, d..., C]
    Shape perm = {0};
    for (int64_t d = 2; d < x.dim(); d++) perm.push_back(d);
    perm.push_back(1);
    xd = xd.permute(perm);
    r.moved_shape = xd.shape();
  }
  r.x = xd.contiguous().reshape({r.rows, r.classes});
  Tensor t1 = target.dim() == 0 ? target.detach().unsqueeze(0) : target.detach();  // [] -> [1]
  r.target = t1.contiguous().reshape({r.rows});
  // Every target must be a class or ignore_index (checked on the host: a bad index would read out
  // of bounds in the kernel).
  Tensor host = r.target.device().is_cpu() ? r.target : r.target.to(kCPU);
  const int64_t* t = host.data<int64_t>();
  for (int64_t i = 0; i < r.rows; i++) {
    if (t[i] == ignore_index) continue;
    TB_CHECK(t[i] >= 0 && t[i] < r.classes,
             "{}: target {} is out of bounds for {} classes (input shape {}); expected 0 <= "
             "target < {} or ignore_index = {}", op, t[i], r.classes, shape_str(x.shape()),
             r.classes, ignore_index);
    r.count++;
  }
  return r;
}

// Per-row losses [R] -> the reduced loss (no history), in x's dtype.
static Tensor reduce_rows(const ClassRows& r, const Tensor& rows, Reduction red, DType xdt) {
  no_grad ng;
  Tensor out;
  if (red == Reduction::None) out = rows.reshape(r.loss_shape);
  else if (red == Reduction::Sum) out = sum(rows);
  else out = mul(sum(rows), 1.0 / (double)r.count);  // 0/0 = NaN when all rows are ignored
  return as_dtype(out, xdt);
}

// The row gradient for the kernels: g contiguous in dtype dt, step 0 (one scalar) or 1 (per row),
// scale 1/count for "mean".
static std::pair<Tensor, int64_t> row_grad(const Tensor& g, Reduction red, DType dt) {
  Tensor gc = as_dtype(g, dt).contiguous();
  return {gc, red == Reduction::None ? 1 : 0};
}

// dx rows [R, C] back to x's shape and dtype.
static Tensor rows_to_input(const ClassRows& r, const Tensor& dx_rows, const Shape& x_shape,
                            DType xdt) {
  Tensor d = dx_rows;
  if (x_shape.size() >= 3) {  // [N, d..., C] -> [N, C, d...]
    Shape inv = {0, (int64_t)x_shape.size() - 1};
    for (int64_t k = 1; k < (int64_t)x_shape.size() - 1; k++) inv.push_back(k);
    d = d.reshape(r.moved_shape).permute(inv);
  } else {
    d = d.reshape(x_shape);
  }
  return as_dtype(d, xdt);
}

// ---- nll_loss ----------------------------------------------------------------------------------

Tensor nll_loss(const Tensor& logp_in, const Tensor& target, const std::string& reduction,
                int64_t ignore_index) {
  const char* op = "nll_loss";
  Tensor logp = autocast_fp32(logp_in); // autocast: losses run in float32
  Reduction red = parse_reduction(op, reduction, false);
  ClassRows r = class_rows(op, logp, target, ignore_index);
  DType cdt = r.x.dtype();
  Tensor rows = empty({r.rows}, TensorOptions(cdt, logp.device()));
  kernel(&SoftmaxKernels::nll_forward, op, logp.device(), cdt)(
      cdt, r.x.raw_data(), r.target.data<int64_t>(), rows.raw_data(), r.rows, r.classes,
      ignore_index);
  Tensor out = reduce_rows(r, rows, red, logp.dtype());

  if (auto node = make_node(op, {logp})) {
    Shape xs = logp.shape();
    DType xdt = logp.dtype();
    double scale = red == Reduction::Mean ? 1.0 / (double)r.count : 1.0;
    r.x = Tensor();  // the backward needs only the targets
    node->backward = [r, red, scale, xs, xdt, ignore_index](const std::vector<Tensor>& g)
        -> std::vector<Tensor> {
      DType cdt = xdt == kFloat64 ? kFloat64 : kFloat32;
      auto [gc, step] = row_grad(g[0], red, cdt);
      Tensor d = empty({r.rows, r.classes}, TensorOptions(cdt, gc.device()));
      kernel(&SoftmaxKernels::nll_backward, "nll_loss", gc.device(), cdt)(
          cdt, r.target.data<int64_t>(), gc.raw_data(), step, scale, d.raw_data(), r.rows,
          r.classes, ignore_index);
      return {rows_to_input(r, d, xs, xdt)};
    };
    attach_outputs(node, {out});
  }
  return out;
}

// ---- cross_entropy -----------------------------------------------------------------------------

// Class-probability targets (floating, shaped like x): -sum_c q_c log p_c with
// q = (1 - eps) target + eps / C; "mean" averages over all but the class dim (as PyTorch).
static Tensor cross_entropy_probs(const Tensor& x, const Tensor& target, double eps,
                                  Reduction red) {
  const char* op = "cross_entropy";
  check_same_device(op, x, target);
  TB_CHECK(target.shape() == x.shape(),
           "cross_entropy: probability targets must have the input's shape {}, got {}",
           shape_str(x.shape()), shape_str(target.shape()));
  int64_t cdim = x.dim() == 1 ? 0 : 1;
  Tensor q = eps > 0 ? add(mul(target, 1.0 - eps), eps / (double)x.size(cdim)) : target;
  Tensor l = neg(sum(mul(q, log_softmax(x, cdim)), {cdim}));
  if (red == Reduction::None) return l;
  return red == Reduction::Sum ? sum(l) : mean(l);
}

Tensor cross_entropy(const Tensor& logits_in, const Tensor& target, double label_smoothing,
                     const std::string& reduction, int64_t ignore_index) {
  const char* op = "cross_entropy";
  Tensor logits = autocast_fp32(logits_in); // autocast: losses run in float32
  Reduction red = parse_reduction(op, reduction, false);
  TB_CHECK(label_smoothing >= 0.0 && label_smoothing <= 1.0,
           "cross_entropy: label_smoothing must be in [0, 1], got {}", label_smoothing);
  check_defined(op, logits, "input");
  check_defined(op, target, "target");
  if (is_floating(target.dtype()) && target.dim() == logits.dim())
    return cross_entropy_probs(logits, target, label_smoothing, red);
  ClassRows r = class_rows(op, logits, target, ignore_index);
  DType cdt = r.x.dtype();
  TensorOptions o(cdt, logits.device());
  Tensor rows = empty({r.rows}, o), lse = empty({r.rows}, o);
  kernel(&SoftmaxKernels::cross_entropy_forward, op, logits.device(), cdt)(
      cdt, r.x.raw_data(), r.target.data<int64_t>(), rows.raw_data(), lse.raw_data(), r.rows,
      r.classes, label_smoothing, ignore_index);
  Tensor out = reduce_rows(r, rows, red, logits.dtype());

  if (auto node = make_node(op, {logits})) {
    Shape xs = logits.shape();
    DType xdt = logits.dtype();
    double scale = red == Reduction::Mean ? 1.0 / (double)r.count : 1.0;
    SavedTensor sx(r.x);  // may share logits' storage: refused if modified in place meanwhile
    r.x = Tensor();
    node->backward = [r, sx, lse, red, scale, xs, xdt, label_smoothing,
                      ignore_index](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      Tensor xr = sx.unpack("cross_entropy");
      DType cdt = xr.dtype();
      auto [gc, step] = row_grad(g[0], red, cdt);
      Tensor d = empty({r.rows, r.classes}, TensorOptions(cdt, gc.device()));
      kernel(&SoftmaxKernels::cross_entropy_backward, "cross_entropy", gc.device(), cdt)(
          cdt, xr.raw_data(), r.target.data<int64_t>(), lse.raw_data(), gc.raw_data(), step,
          scale, d.raw_data(), r.rows, r.classes, label_smoothing, ignore_index);
      return {rows_to_input(r, d, xs, xdt)};
    };
    attach_outputs(node, {out});
  }
  return out;
}

// ---- mse_loss, kl_div --------------------------------------------------------------------------

static Tensor apply_reduction(const Tensor& l, Reduction red, const Tensor& input) {
  switch (red) {
    case Reduction::None: return l;
    case Reduction::Sum: return sum(l);
    case Reduction::Mean: return mean(l);
    case Reduction::BatchMean:  // sum / N (a 0-d input has no batch dim: just the sum)
      return input.dim() == 0 ? sum(l) : div(sum(l), (double)input.size(0));
  }
  return l;
}

Tensor mse_loss(const Tensor& input_in, const Tensor& target_in, const std::string& reduction) {
  const char* op = "mse_loss";
  Tensor input = autocast_fp32(input_in), target = autocast_fp32(target_in); // autocast: float32
  Reduction red = parse_reduction(op, reduction, false);
  check_defined(op, input, "input");
  check_defined(op, target, "target");
  check_floating(op, input);
  check_same_device(op, input, target);
  return apply_reduction(square(sub(input, target)), red, input);
}

Tensor kl_div(const Tensor& input_in, const Tensor& target_in, const std::string& reduction,
              bool log_target) {
  const char* op = "kl_div";
  Tensor input = autocast_fp32(input_in), target = autocast_fp32(target_in); // autocast: float32
  Reduction red = parse_reduction(op, reduction, true);
  check_defined(op, input, "input");
  check_defined(op, target, "target");
  check_floating(op, input);
  check_floating(op, target);
  check_same_device(op, input, target);
  Tensor l;
  if (log_target) {
    l = mul(exp(target), sub(target, input));
  } else {
    // xlogy(t, t) = t log t with 0 where t == 0: log reads 1 there, so neither the value nor the
    // gradient sees log(0). Negative targets still give NaN, as PyTorch.
    Tensor safe = where(eq(target, 0.0), ones_like(target), target);
    l = sub(mul(target, log(safe)), mul(target, input));
  }
  return apply_reduction(l, red, input);
}

} // namespace tb
