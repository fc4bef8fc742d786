// src/ops/elementwise.cpp — binary ops (broadcasting, dtype promotion), unary math ops,
// comparisons, where, and the in-place Tensor members add_/mul_/clamp_.
//
// Layout rule (kernels/elementwise.h walks flat arrays):
//   - inputs with the output's shape, identical strides and a dense layout are passed as they are,
//     and the output gets those strides (channels-last activations stay channels-last);
//   - a 1-element input is passed with step 0;
//   - anything else is expanded to the output shape and materialised in the layout of the first
//     dense full-shape input (contiguous when there is none), which the output gets too; so a
//     per-channel factor [1, C, 1, 1] times a channels-last activation stays channels-last.
// Dtypes: the result dtype is promote_types(a, b) (div: float32 for integer inputs, true division).
// Kernels compute in float32/float64/int32/int64; int8/uint8/bool compute in int32 and the result
// is converted back. float16/bfloat16 go to the CPU kernels as they are (each element computed in
// float32 and rounded once inside the kernel: half the memory traffic of a float32 tensor, no
// conversion passes); on CUDA, whose kernels take no half dtypes yet, they are converted to
// float32 and back. The values are the same either way.
// Backward of a broadcasting op sums the gradient over the broadcast dims (sum_to_shape).
#include <cmath>
#include <limits>

#include <tb/ops.h>

#include "kernels/elementwise.h"
#include "dispatch.h"
#include "qactivation.h"

namespace tb {

using kernels::BinaryOp;
using kernels::ElementwiseKernels;
using kernels::UnaryOp;

// ---- layout and dtype helpers ------------------------------------------------------------------

// The dtype a kernel computes in for a given tensor dtype and device.
static DType kernel_dtype(DType t, Device d) {
  switch (t) {
    case DType::Float16:
    case DType::BFloat16: return d.type == DeviceType::CPU ? t : kFloat32;
    case DType::Int8:
    case DType::UInt8:
    case DType::Bool: return kInt32;
    default: return t;
  }
}

static Tensor as_dtype(const Tensor& t, DType d) { return t.dtype() == d ? t : t.to(d); }

// Operands ready for a flat kernel over `shape` (see the layout rule at the top).
struct FlatOperands {
  std::vector<Tensor> xs;
  std::vector<int64_t> steps;
  Shape out_strides;
};

static FlatOperands flat_operands(const Shape& shape, const std::vector<Tensor>& xs) {
  // The layout of the output: that of the first dense operand of the full shape, else contiguous.
  const Tensor* lead = nullptr;
  for (const Tensor& x : xs)
    if (x.numel() != 1 && x.shape() == shape && is_dense(x)) {
      lead = &x;
      break;
    }
  FlatOperands f{xs, std::vector<int64_t>(xs.size(), 1),
                 lead ? lead->strides() : contiguous_strides(shape)};
  for (size_t i = 0; i < xs.size(); i++) {
    if (xs[i].numel() == 1) {
      f.steps[i] = 0;
    } else if (xs[i].shape() != shape || xs[i].strides() != f.out_strides) {
      // Broadcast or laid out differently: materialised in the output's layout (a per-channel
      // [1, C, 1, 1] factor against a channels-last activation copies the factor, not the activation).
      Tensor m = empty_strided(shape, f.out_strides, TensorOptions(xs[i].dtype(), xs[i].device()));
      m.copy_(xs[i].expand(shape));
      f.xs[i] = m;
    }
  }
  return f;
}

static bool is_comparison(BinaryOp op) {
  return op == BinaryOp::Eq || op == BinaryOp::Ne || op == BinaryOp::Lt || op == BinaryOp::Le ||
         op == BinaryOp::Gt || op == BinaryOp::Ge;
}

// out = a (op) b on tensors without history: broadcast to `shape`, computed in kernel_dtype(rdt),
// returned in rdt (comparisons: bool).
static Tensor binary_compute(const char* name, BinaryOp op, const Tensor& a, const Tensor& b,
                             double alpha, const Shape& shape, DType rdt) {
  DType kdt = kernel_dtype(rdt, a.device());
  auto f = flat_operands(shape, {as_dtype(a, kdt), as_dtype(b, kdt)});
  bool cmp = is_comparison(op);
  Tensor out = empty_strided(shape, f.out_strides, TensorOptions(cmp ? kBool : kdt, a.device()));
  kernel(&ElementwiseKernels::binary, name, a.device(), kdt)(
      op, kdt, f.xs[0].raw_data(), f.steps[0], f.xs[1].raw_data(), f.steps[1], out.raw_data(),
      out.numel(), alpha);
  return cmp ? out : as_dtype(out, rdt);
}

// Checks, broadcasts and computes a binary op; autograd is recorded by the caller.
static Tensor binary_forward(const char* name, BinaryOp op, const Tensor& a, const Tensor& b,
                             double alpha = 1.0) {
  check_defined(name, a, "input");
  check_defined(name, b, "other");
  check_not_quantized(name, a);
  check_not_quantized(name, b);
  check_same_device(name, a, b);
  Shape shape = broadcast_shapes(name, a.shape(), b.shape());
  DType rdt = promote_types(a.dtype(), b.dtype());
  if (op == BinaryOp::Div && !is_floating(rdt)) rdt = kFloat32;
  return binary_compute(name, op, a.detach(), b.detach(), alpha, shape, rdt);
}

// The gradient for one input of a broadcasting op: summed to its shape, in its dtype.
static Tensor grad_for(const Tensor& g, const Shape& shape, DType dt) {
  return as_dtype(sum_to_shape(g, shape), dt);
}

static Tensor zero_like_scalar(const Tensor& g) {
  return scalar_tensor(0.0, TensorOptions(g.dtype(), g.device()));
}

// ---- add, sub: out = a ± alpha b;  da = g, db = ±alpha g ----------------------------------------

static Tensor add_sub(const char* name, BinaryOp op, const Tensor& a, const Tensor& b,
                      double alpha) {
  Tensor out = binary_forward(name, op, a, b, alpha);
  if (auto node = make_node(name, {a, b})) {
    Shape as = a.shape(), bs = b.shape();
    DType ad = a.dtype(), bd = b.dtype();
    bool na = a.requires_grad(), nb = b.requires_grad();
    double scale = op == BinaryOp::Add ? alpha : -alpha;
    node->backward = [as, bs, ad, bd, na, nb, scale](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      if (!g[0].defined()) return {Tensor(), Tensor()};
      Tensor da = na ? grad_for(g[0], as, ad) : Tensor();
      Tensor db = nb ? grad_for(scale == 1.0 ? g[0] : mul(g[0], scale), bs, bd) : Tensor();
      return {da, db};
    };
    attach_outputs(node, {out});
  }
  return out;
}

Tensor add(const Tensor& a, const Tensor& b, double alpha) {
  return add_sub("add", BinaryOp::Add, a, b, alpha);
}
Tensor sub(const Tensor& a, const Tensor& b, double alpha) {
  return add_sub("sub", BinaryOp::Sub, a, b, alpha);
}

// ---- mul: out = a b;  da = g b, db = g a --------------------------------------------------------

Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward("mul", BinaryOp::Mul, a, b);
  if (auto node = make_node("mul", {a, b})) {
    SavedTensor sa(a), sb(b);
    bool na = a.requires_grad(), nb = b.requires_grad();
    node->backward = [sa, sb, na, nb](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      if (!g[0].defined()) return {Tensor(), Tensor()};
      Tensor a = sa.unpack("mul"), b = sb.unpack("mul");
      Tensor da = na ? grad_for(mul(g[0], b), a.shape(), a.dtype()) : Tensor();
      Tensor db = nb ? grad_for(mul(g[0], a), b.shape(), b.dtype()) : Tensor();
      return {da, db};
    };
    attach_outputs(node, {out});
  }
  return out;
}

// ---- div: out = a / b;  da = g / b, db = -g a / b^2 ---------------------------------------------

Tensor div(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward("div", BinaryOp::Div, a, b);
  if (auto node = make_node("div", {a, b})) {
    SavedTensor sa(a), sb(b);
    bool na = a.requires_grad(), nb = b.requires_grad();
    node->backward = [sa, sb, na, nb](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      if (!g[0].defined()) return {Tensor(), Tensor()};
      Tensor a = sa.unpack("div"), b = sb.unpack("div");
      Tensor da = na ? grad_for(div(g[0], b), a.shape(), a.dtype()) : Tensor();
      Tensor db = nb ? grad_for(neg(div(mul(g[0], a), mul(b, b))), b.shape(), b.dtype()) : Tensor();
      return {da, db};
    };
    attach_outputs(node, {out});
  }
  return out;
}

// ---- pow: out = a^b;  da = g b a^(b-1) (0 where b = 0), db = g a^b log a (0 where a = 0, b >= 0) -

Tensor pow(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward("pow", BinaryOp::Pow, a, b);
  if (auto node = make_node("pow", {a, b})) {
    SavedTensor sa(a), sb(b);
    bool na = a.requires_grad(), nb = b.requires_grad();
    node->backward = [sa, sb, na, nb](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      if (!g[0].defined()) return {Tensor(), Tensor()};
      Tensor a = sa.unpack("pow"), b = sb.unpack("pow");
      Tensor zero = zero_like_scalar(g[0]);
      Tensor da, db;
      if (na) {
        Tensor d = mul(mul(g[0], b), pow(a, sub(b, 1.0)));
        da = grad_for(where(eq(b, 0.0), zero, d), a.shape(), a.dtype());
      }
      if (nb) {
        Tensor d = mul(mul(g[0], pow(a, b)), log(a));
        Tensor mask = mul(eq(a, 0.0), ge(b, 0.0)); // a = 0 and b >= 0 (bool product)
        db = grad_for(where(mask, zero, d), b.shape(), b.dtype());
      }
      return {da, db};
    };
    attach_outputs(node, {out});
  }
  return out;
}

// ---- maximum / minimum: the gradient goes to the larger (smaller) input; ties split it half-half,
// as PyTorch: da = g [a > b] + g/2 [a = b] (maximum).

static Tensor max_min(const char* name, BinaryOp op, const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(name, op, a, b);
  if (auto node = make_node(name, {a, b})) {
    SavedTensor sa(a), sb(b);
    bool is_max = op == BinaryOp::Maximum;
    node->backward = [sa, sb, is_max, name](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      if (!g[0].defined()) return {Tensor(), Tensor()};
      Tensor a = sa.unpack(name), b = sb.unpack(name);
      Tensor zero = zero_like_scalar(g[0]);
      Tensor shared = where(eq(a, b), mul(g[0], 0.5), g[0]);
      Tensor a_wins = is_max ? gt(a, b) : lt(a, b), b_wins = is_max ? lt(a, b) : gt(a, b);
      Tensor da = where(b_wins, zero, shared), db = where(a_wins, zero, shared);
      return {grad_for(da, a.shape(), a.dtype()), grad_for(db, b.shape(), b.dtype())};
    };
    attach_outputs(node, {out});
  }
  return out;
}

Tensor maximum(const Tensor& a, const Tensor& b) { return max_min("maximum", BinaryOp::Maximum, a, b); }
Tensor minimum(const Tensor& a, const Tensor& b) { return max_min("minimum", BinaryOp::Minimum, a, b); }

// ---- with a scalar: the scalar takes the tensor's dtype (div: float32 for integer tensors) -----

static Tensor scalar_like(const char* name, const Tensor& a, double v, DType dt) {
  check_defined(name, a, "input");
  return scalar_tensor(v, TensorOptions(dt, a.device()));
}

Tensor add(const Tensor& a, double b) { return add(a, scalar_like("add", a, b, a.dtype())); }
Tensor sub(const Tensor& a, double b) { return sub(a, scalar_like("sub", a, b, a.dtype())); }
Tensor mul(const Tensor& a, double b) { return mul(a, scalar_like("mul", a, b, a.dtype())); }
Tensor div(const Tensor& a, double b) {
  return div(a, scalar_like("div", a, b, is_floating(a.dtype()) ? a.dtype() : kFloat32));
}
Tensor rsub(const Tensor& a, double b) { return sub(scalar_like("rsub", a, b, a.dtype()), a); }

// ---- unary ops on the unary kernels: out = f(x); dx = dy f'(x) by the unary_backward kernel ----

// f(x) on a tensor without history; the output keeps x's layout when x is dense.
static Tensor unary_compute(const char* name, UnaryOp op, const Tensor& x, double p0, double p1) {
  DType kdt = kernel_dtype(x.dtype(), x.device());
  Tensor xc = as_dtype(x, kdt);
  if (!is_dense(xc)) xc = xc.contiguous();
  Tensor out = empty_strided(xc.shape(), xc.strides(), TensorOptions(kdt, xc.device()));
  kernel(&ElementwiseKernels::unary, name, xc.device(), kdt)(op, kdt, xc.raw_data(),
                                                             out.raw_data(), out.numel(), p0, p1);
  return as_dtype(out, x.dtype());
}

// dx = dy f'(x) in x's layout: a dy laid out differently is staged into x's layout (the saved
// activation is usually the bigger, channels-last one; copying the gradient is cheaper).
static Tensor unary_backward_compute(const char* name, UnaryOp op, const Tensor& x,
                                     const Tensor& dy, double p0, double p1) {
  DType kdt = kernel_dtype(x.dtype(), x.device());
  Tensor xc = as_dtype(x, kdt), gc = as_dtype(dy, kdt);
  if (!is_dense(xc)) xc = xc.contiguous();
  TensorOptions opts(kdt, x.device());
  if (gc.strides() != xc.strides() || !is_dense(gc)) {
    Tensor staged = empty_strided(xc.shape(), xc.strides(), opts);
    no_grad ng;
    staged.copy_(gc);
    gc = staged;
  }
  Tensor dx = empty_strided(xc.shape(), xc.strides(), opts);
  kernel(&ElementwiseKernels::unary_backward, name, x.device(), kdt)(
      op, kdt, xc.raw_data(), gc.raw_data(), dx.raw_data(), dx.numel(), p0, p1);
  return as_dtype(dx, x.dtype());
}

namespace detail {
// A unary kernel op with its autograd node (also used by src/ops/activation.cpp). `name` must be
// a string literal (the backward closure keeps the pointer).
Tensor unary_op(const char* name, UnaryOp op, const Tensor& x, double p0, double p1) {
  check_defined(name, x, "input");
  check_not_quantized(name, x);
  check_floating(name, x);
  Tensor out = unary_compute(name, op, x.detach(), p0, p1);
  if (auto node = make_node(name, {x})) {
    SavedTensor sx(x);
    node->backward = [sx, name, op, p0, p1](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      if (!g[0].defined()) return {Tensor()};
      Tensor x = sx.unpack(name);
      TB_CHECK(g[0].shape() == x.shape(), "{} backward: gradient shape {} != input shape {}", name,
               shape_str(g[0].shape()), shape_str(x.shape()));
      return {unary_backward_compute(name, op, x.detach(), g[0], p0, p1)};
    };
    attach_outputs(node, {out});
  }
  return out;
}
} // namespace detail

using detail::unary_op;

Tensor neg(const Tensor& a) {
  check_defined("neg", a, "input");
  TB_CHECK(a.dtype() != kBool, "neg: not defined for bool tensors (use logical_not)");
  if (!is_floating(a.dtype())) return mul(a, -1.0); // integers: wrap-around like PyTorch
  return unary_op("neg", UnaryOp::Neg, a, 0, 0);
}
Tensor exp(const Tensor& a) { return unary_op("exp", UnaryOp::Exp, a, 0, 0); }
Tensor log(const Tensor& a) { return unary_op("log", UnaryOp::Log, a, 0, 0); }
Tensor sqrt(const Tensor& a) { return unary_op("sqrt", UnaryOp::Sqrt, a, 0, 0); }
Tensor rsqrt(const Tensor& a) { return unary_op("rsqrt", UnaryOp::Rsqrt, a, 0, 0); }
Tensor abs(const Tensor& a) { return unary_op("abs", UnaryOp::Abs, a, 0, 0); }
Tensor sign(const Tensor& a) { return unary_op("sign", UnaryOp::Sign, a, 0, 0); }
Tensor square(const Tensor& a) { return unary_op("square", UnaryOp::Square, a, 0, 0); }
Tensor reciprocal(const Tensor& a) { return unary_op("reciprocal", UnaryOp::Reciprocal, a, 0, 0); }
Tensor round(const Tensor& a) { return unary_op("round", UnaryOp::Round, a, 0, 0); }
Tensor floor(const Tensor& a) { return unary_op("floor", UnaryOp::Floor, a, 0, 0); }
Tensor pow(const Tensor& a, double exponent) {
  return unary_op("pow", UnaryOp::PowScalar, a, exponent, 0);
}

// clamp = min(max(x, lo), hi); the gradient passes where lo <= x <= hi (PyTorch's convention).
Tensor clamp(const Tensor& a, std::optional<double> lo, std::optional<double> hi) {
  TB_CHECK(lo || hi, "clamp: at least one of min and max must be given");
  const double inf = std::numeric_limits<double>::infinity();
  return unary_op("clamp", UnaryOp::Clamp, a, lo ? *lo : -inf, hi ? *hi : inf);
}

// ---- where: out = cond ? a : b (all three broadcast);  da = g [cond], db = g [!cond] ------------

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  check_defined("where", cond, "condition");
  check_defined("where", a, "input");
  check_defined("where", b, "other");
  TB_CHECK(cond.dtype() == kBool, "where: condition must be bool, got {}", cond.dtype());
  check_same_device("where", cond, a);
  check_same_device("where", a, b);
  Shape shape = broadcast_shapes("where", broadcast_shapes("where", cond.shape(), a.shape()),
                                 b.shape());
  DType rdt = promote_types(a.dtype(), b.dtype());
  auto f = flat_operands(shape, {cond.detach(), as_dtype(a.detach(), rdt), as_dtype(b.detach(), rdt)});
  Tensor out = empty_strided(shape, f.out_strides, TensorOptions(rdt, a.device()));
  kernel(&ElementwiseKernels::where, "where", a.device(), rdt)(
      rdt, (const bool*)f.xs[0].raw_data(), f.steps[0], f.xs[1].raw_data(), f.steps[1],
      f.xs[2].raw_data(), f.steps[2], out.raw_data(), out.numel());
  if (auto node = make_node("where", {a, b})) {
    Tensor c = cond.detach();
    Shape as = a.shape(), bs = b.shape();
    DType ad = a.dtype(), bd = b.dtype();
    node->backward = [c, as, bs, ad, bd](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      if (!g[0].defined()) return {Tensor(), Tensor()};
      Tensor zero = zero_like_scalar(g[0]);
      return {grad_for(where(c, g[0], zero), as, ad), grad_for(where(c, zero, g[0]), bs, bd)};
    };
    attach_outputs(node, {out});
  }
  return out;
}

// ---- comparisons: bool results, no gradient --------------------------------------------------

static Tensor compare(const char* name, BinaryOp op, const Tensor& a, const Tensor& b) {
  return binary_forward(name, op, a, b);
}
// An integer tensor against a fractional scalar compares in float64 (x < 2.5 is not x < 2).
static Tensor compare_scalar(const char* name, BinaryOp op, const Tensor& a, double b) {
  check_defined(name, a, "input");
  DType t = (!is_floating(a.dtype()) && b != std::floor(b)) ? kFloat64 : a.dtype();
  return compare(name, op, a, scalar_tensor(b, TensorOptions(t, a.device())));
}

Tensor eq(const Tensor& a, const Tensor& b) { return compare("eq", BinaryOp::Eq, a, b); }
Tensor ne(const Tensor& a, const Tensor& b) { return compare("ne", BinaryOp::Ne, a, b); }
Tensor lt(const Tensor& a, const Tensor& b) { return compare("lt", BinaryOp::Lt, a, b); }
Tensor le(const Tensor& a, const Tensor& b) { return compare("le", BinaryOp::Le, a, b); }
Tensor gt(const Tensor& a, const Tensor& b) { return compare("gt", BinaryOp::Gt, a, b); }
Tensor ge(const Tensor& a, const Tensor& b) { return compare("ge", BinaryOp::Ge, a, b); }
Tensor eq(const Tensor& a, double b) { return compare_scalar("eq", BinaryOp::Eq, a, b); }
Tensor lt(const Tensor& a, double b) { return compare_scalar("lt", BinaryOp::Lt, a, b); }
Tensor le(const Tensor& a, double b) { return compare_scalar("le", BinaryOp::Le, a, b); }
Tensor gt(const Tensor& a, double b) { return compare_scalar("gt", BinaryOp::Gt, a, b); }
Tensor ge(const Tensor& a, double b) { return compare_scalar("ge", BinaryOp::Ge, a, b); }

// true where a is zero (false, 0, 0.0); NaN counts as true-ish, as in PyTorch.
Tensor logical_not(const Tensor& a) { return compare_scalar("logical_not", BinaryOp::Eq, a, 0.0); }

// x - x is 0 for finite x and NaN for inf and NaN.
Tensor isfinite(const Tensor& a) {
  check_defined("isfinite", a, "input");
  if (!is_floating(a.dtype())) return full(a.shape(), 1.0, TensorOptions(kBool, a.device()));
  Tensor x = a.detach();
  return eq(sub(x, x), 0.0);
}

// |a - b| <= atol + rtol |b| everywhere (broadcasting); equal infinities are close, NaN is not.
bool allclose(const Tensor& a, const Tensor& b, double rtol, double atol) {
  check_defined("allclose", a, "input");
  check_defined("allclose", b, "other");
  check_same_device("allclose", a, b);
  check_same_dtype("allclose", a, b);
  Shape shape = broadcast_shapes("allclose", a.shape(), b.shape());
  std::vector<double> x = a.detach().expand(shape).to_vector();
  std::vector<double> y = b.detach().expand(shape).to_vector();
  for (size_t i = 0; i < x.size(); i++) {
    if (x[i] == y[i]) continue;
    if (!(std::abs(x[i] - y[i]) <= atol + rtol * std::abs(y[i]))) return false;
  }
  return true;
}

// ---- Tensor members: negation and the in-place ops ----------------------------------------------

Tensor Tensor::operator-() const { return neg(*this); }

// In-place writes would corrupt values autograd saved, so they are refused on tensors that need
// grad while grad mode is on (optimisers and initialisers run under tb::no_grad).
static void check_inplace(const char* op, const Tensor& t) {
  check_defined(op, t, "self");
  TB_CHECK(!(is_grad_enabled() && t.requires_grad()),
           "{}: in-place op on a tensor of shape {} that requires grad while grad mode is on "
           "(use tb::no_grad)",
           op, shape_str(t.shape()));
}

// self = self (op) other, other broadcast to self's shape, result cast to self's dtype.
static void inplace_binary(const char* name, BinaryOp op, Tensor& self, const Tensor& other,
                           double alpha) {
  check_inplace(name, self);
  check_defined(name, other, "other");
  check_same_device(name, self, other);
  Shape shape = broadcast_shapes(name, self.shape(), other.shape());
  TB_CHECK(shape == self.shape(), "{}: other of shape {} does not broadcast to self's shape {}",
           name, shape_str(other.shape()), shape_str(self.shape()));
  TB_CHECK(is_floating(self.dtype()) || !is_floating(other.dtype()),
           "{}: result dtype {} can't be cast to self's dtype {}", name, other.dtype(),
           self.dtype());
  Tensor s = self.detach(), o = other.detach();
  DType dt = self.dtype();
  if (kernel_dtype(dt, s.device()) == dt && is_dense(s)) {
    // Walk self's memory flat: other must be a 1-element operand or laid out exactly like self
    // (and, if it shares self's storage, be the very same elements); otherwise stage a copy.
    bool aliased = o.storage() == s.storage();
    bool same = o.shape() == s.shape() && o.strides() == s.strides() && o.dtype() == dt;
    bool exact_alias = same && o.raw_data() == s.raw_data();
    int64_t step = 1;
    if (o.numel() == 1 && s.numel() != 1) {
      o = as_dtype(o, dt);
      step = 0;
      if (aliased) o = o.clone();
    } else if (!same || (aliased && !exact_alias)) {
      Tensor staged = empty_strided(s.shape(), s.strides(), TensorOptions(dt, s.device()));
      no_grad ng;
      staged.copy_(o);
      o = staged;
    }
    kernel(&ElementwiseKernels::binary, name, s.device(), dt)(
        op, dt, s.raw_data(), 1, o.raw_data(), step, s.raw_data(), s.numel(), alpha);
  } else {
    Tensor r = binary_compute(name, op, s, o, alpha, shape, dt);
    no_grad ng;
    s.copy_(r);
  }
  self.bump_version();
}

Tensor& Tensor::add_(const Tensor& o, double alpha) {
  inplace_binary("add_", BinaryOp::Add, *this, o, alpha);
  return *this;
}
Tensor& Tensor::mul_(const Tensor& o) {
  inplace_binary("mul_", BinaryOp::Mul, *this, o, 1.0);
  return *this;
}
Tensor& Tensor::mul_(double v) {
  check_defined("mul_", *this, "self");
  inplace_binary("mul_", BinaryOp::Mul, *this, scalar_tensor(v, TensorOptions(dtype(), device())),
                 1.0);
  return *this;
}

Tensor& Tensor::clamp_(double lo, double hi) {
  check_inplace("clamp_", *this);
  check_floating("clamp_", *this);
  Tensor s = detach();
  if (kernel_dtype(dtype(), device()) == dtype() && is_dense(s)) {
    kernel(&ElementwiseKernels::unary, "clamp_", s.device(), dtype())(
        UnaryOp::Clamp, dtype(), s.raw_data(), s.raw_data(), s.numel(), lo, hi);
  } else {
    Tensor r = unary_compute("clamp_", UnaryOp::Clamp, s, lo, hi);
    no_grad ng;
    s.copy_(r);
  }
  bump_version();
  return *this;
}

} // namespace tb
