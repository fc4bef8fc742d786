// src/ops/matmul.cpp — matmul (torch.matmul semantics) and linear, on one strided batched GEMM
// kernel (kernels/matmul.h: OpenBLAS on CPU, cuBLAS on CUDA, a triple loop as reference).
//
// Shapes and gradients (G = dL/dY):
//   matmul  Y[b] = A[b] B[b], A [..., m, k], B [..., k, n], batch dims broadcast;
//           1-D A is [1, k] and 1-D B is [k, 1], the added dim dropped from Y (as torch.matmul).
//           dA = G B^T, dB = A^T G, each summed over the batch dims its operand was broadcast on.
//   linear  Y = X W^T + b, X [..., in] flattened to [M, in], W [out, in], b [out]:
//           one GEMM whose C starts as the broadcast bias (beta = 1).
//           dX = G W, dW = G^T X, db = sum_rows G (G flattened to [M, out]).
// Operands whose last two dims are row-major or column-major (a transposed view such as W.t())
// go to the kernel as they are, with a transpose flag; anything else is copied contiguous first.
// Dtypes: float32, float64, bfloat16, float16 (operands the same; half precision accumulates in
// float32). Under autocast (tb/amp.h) the operands are first cast to the autocast dtype.
#include <algorithm>

#include <tb/ops.h>

#include "autocast.h"
#include "dispatch.h"
#include "qactivation.h"
#include "kernels/matmul.h"

namespace tb {

using kernels::MatmulKernels;

// ---- operands ------------------------------------------------------------------------------------

// A 3-D [batch, rows, cols] operand as the kernel reads it.
struct GemmOperand {
  Tensor t;              // keeps the memory alive
  bool trans = false;    // stored as cols×rows (column-major rows×cols)
  int64_t ld = 1;        // leading dimension of the stored matrix
  int64_t batch_stride = 0;
};

static GemmOperand gemm_operand(const Tensor& t3) {
  int64_t r = t3.size(1), c = t3.size(2), sr = t3.stride(1), sc = t3.stride(2);
  GemmOperand op;
  op.t = t3;
  // Row-major: unit stride along cols, rows ld >= cols apart (size-1 dims have free strides).
  if ((sc == 1 || c == 1) && (r == 1 || sr >= std::max<int64_t>(1, c))) {
    op.ld = r == 1 ? std::max<int64_t>(1, c) : sr;
  } else if ((sr == 1 || r == 1) && (c == 1 || sc >= std::max<int64_t>(1, r))) {
    op.trans = true;
    op.ld = c == 1 ? std::max<int64_t>(1, r) : sc;
  } else {
    op.t = t3.contiguous();
    op.ld = std::max<int64_t>(1, c);
  }
  op.batch_stride = t3.size(0) > 1 ? op.t.stride(0) : 0;
  return op;
}

// C [batch, m, n] = A [1 or batch, m, k] · B [1 or batch, k, n] (+ bias [n] on every row), one
// kernel call. Inputs have no history; the result is contiguous. `op` names the caller in errors.
static Tensor gemm3(const char* op, const Tensor& a3, const Tensor& b3, const Tensor& bias) {
  int64_t batch = std::max(a3.size(0), b3.size(0));
  int64_t m = a3.size(1), k = a3.size(2), n = b3.size(2);
  Tensor c = empty({batch, m, n}, TensorOptions(a3.dtype(), a3.device()));
  if (c.numel() == 0) return c;
  GemmOperand A = gemm_operand(a3), B = gemm_operand(b3);
  double beta = 0.0;
  if (bias.defined()) {
    kernel(&MatmulKernels::broadcast_rows, op, c.device(), c.dtype())(
        c.dtype(), bias.contiguous().raw_data(), c.raw_data(), batch * m, n);
    beta = 1.0;
  }
  kernel(&MatmulKernels::gemm, op, c.device(), c.dtype())(
      c.dtype(), A.trans, B.trans, m, n, k, 1.0, A.t.raw_data(), A.ld, A.batch_stride,
      B.t.raw_data(), B.ld, B.batch_stride, beta, c.raw_data(), std::max<int64_t>(1, n), m * n,
      batch);
  return c;
}

static void check_gemm_dtype(const char* op, const Tensor& t) {
  TB_CHECK(is_floating(t.dtype()),
           "{}: no kernel for dtype {} on {} (shape {}); expected float32, float64, bfloat16 or "
           "float16", op,
           dtype_name(t.dtype()), t.device().str(), shape_str(t.shape()));
}

static Shape batch_of(const Tensor& t) { return Shape(t.shape().begin(), t.shape().end() - 2); }

// Y = A B for A [..., m, k], B [..., k, n] (both at least 2-D, no history), as torch.matmul.
static Tensor matmul_nd(const Tensor& A, const Tensor& B) {
  int64_t m = A.size(-2), k = A.size(-1), n = B.size(-1);
  Shape ba = batch_of(A), bb = batch_of(B);
  Shape batch = broadcast_shapes("matmul", ba, bb);
  Shape out_shape = batch;
  out_shape.push_back(m);
  out_shape.push_back(n);
  if (numel_of(out_shape) == 0 || k == 0)
    return zeros(out_shape, TensorOptions(A.dtype(), A.device()));
  // B without batch: fold A's batch into its rows, one plain GEMM.
  if (numel_of(bb) == 1 && !ba.empty()) {
    Tensor c = gemm3("matmul", A.reshape({1, -1, k}), B.reshape({1, k, n}), Tensor());
    return c.view(out_shape);
  }
  // Otherwise a batched GEMM; a batch-free operand is read with batch stride 0 (no copy).
  auto as3 = [&](const Tensor& t, const Shape& tb, int64_t r, int64_t c) {
    if (numel_of(tb) == 1) return t.reshape({1, r, c});
    Shape full = batch;
    full.push_back(r);
    full.push_back(c);
    return t.expand(full).reshape({-1, r, c});
  };
  Tensor c = gemm3("matmul", as3(A, ba, m, k), as3(B, bb, k, n), Tensor());
  return c.view(out_shape);
}

// ---- matmul ------------------------------------------------------------------------------------

Tensor matmul(const Tensor& a_in, const Tensor& b_in) {
  const char* op = "matmul";
  Tensor a = autocast_lower(a_in), b = autocast_lower(b_in);
  check_defined(op, a, "input");
  check_not_quantized(op, a);
  check_defined(op, b, "other");
  check_same_device(op, a, b);
  check_same_dtype(op, a, b);
  check_gemm_dtype(op, a);
  TB_CHECK(a.dim() >= 1 && b.dim() >= 1,
           "matmul: both arguments need at least 1 dimension, got shapes {} and {}",
           shape_str(a.shape()), shape_str(b.shape()));
  bool a1 = a.dim() == 1, b1 = b.dim() == 1;
  Tensor A = a1 ? a.detach().unsqueeze(0) : a.detach();   // [..., m, k]
  Tensor B = b1 ? b.detach().unsqueeze(-1) : b.detach();  // [..., k, n]
  TB_CHECK(A.size(-1) == B.size(-2),
           "matmul: shapes {} and {} cannot be multiplied ({} != {}: the last dim of the first "
           "must equal the {} dim of the second)",
           shape_str(a.shape()), shape_str(b.shape()), A.size(-1), B.size(-2),
           b1 ? "only" : "second-to-last");
  Shape ba = batch_of(A), bb = batch_of(B);
  {
    // Batch dims must broadcast; name the op and the original shapes on failure.
    Shape x = ba, y = bb;
    size_t nd = std::max(x.size(), y.size());
    x.insert(x.begin(), nd - x.size(), 1);
    y.insert(y.begin(), nd - y.size(), 1);
    for (size_t i = 0; i < nd; i++)
      TB_CHECK(x[i] == y[i] || x[i] == 1 || y[i] == 1,
               "matmul: shapes {} and {}: batch dims {} and {} do not broadcast",
               shape_str(a.shape()), shape_str(b.shape()), shape_str(ba), shape_str(bb));
  }
  Tensor y = matmul_nd(A, B);
  // Drop the dims that 1-D operands added.
  Shape ys = y.shape();
  if (b1) ys.erase(ys.end() - 1);
  if (a1) ys.erase(ys.end() - (b1 ? 1 : 2));
  Tensor out = y.view(ys);

  if (auto node = make_node(op, {a, b})) {
    SavedTensor sa(a), sb(b);
    bool need_a = a.requires_grad(), need_b = b.requires_grad();
    node->backward = [sa, sb, a1, b1, need_a, need_b](const std::vector<Tensor>& g)
        -> std::vector<Tensor> {
      Tensor av = sa.unpack("matmul"), bv = sb.unpack("matmul");
      Tensor A = a1 ? av.unsqueeze(0) : av, B = b1 ? bv.unsqueeze(-1) : bv;
      Tensor G = g[0];  // back to [..., m, n]
      if (b1) G = G.unsqueeze(-1);
      if (a1) G = G.unsqueeze(-2);
      Tensor da, db;
      if (need_a) {
        da = sum_to_shape(matmul(G, B.transpose(-1, -2)), A.shape());
        if (a1) da = da.squeeze(0);
      }
      if (need_b) {
        if (B.dim() == 2 && A.dim() > 2) {  // B was shared by every batch: fold the batch
          int64_t k = A.size(-1), n = G.size(-1), rows = A.numel() / std::max<int64_t>(1, k);
          if (k == 0) rows = numel_of(Shape(A.shape().begin(), A.shape().end() - 1));
          db = matmul(A.reshape({rows, k}).t(), G.reshape({rows, n}));
        } else {
          db = sum_to_shape(matmul(A.transpose(-1, -2), G), B.shape());
        }
        if (b1) db = db.squeeze(-1);
      }
      return {da, db};
    };
    attach_outputs(node, {out});
  }
  return out;
}

// ---- linear ------------------------------------------------------------------------------------

Tensor linear(const Tensor& x_in, const Tensor& weight_in, const Tensor& bias_in) {
  const char* op = "linear";
  Tensor x = autocast_lower(x_in), weight = autocast_lower(weight_in);
  Tensor bias = autocast_lower(bias_in);
  check_defined(op, x, "input");
  check_not_quantized(op, x);
  check_defined(op, weight, "weight");
  check_same_device(op, x, weight);
  check_same_dtype(op, x, weight);
  check_gemm_dtype(op, x);
  TB_CHECK(weight.dim() == 2, "linear: expected weight [out_features, in_features], got shape {}",
           shape_str(weight.shape()));
  TB_CHECK(x.dim() >= 1 && x.size(-1) == weight.size(1),
           "linear: input shape {} and weight shape {} do not match: the input's last dim must "
           "equal in_features = {}",
           shape_str(x.shape()), shape_str(weight.shape()), weight.size(1));
  int64_t in = weight.size(1), out_f = weight.size(0);
  if (bias.defined()) {
    check_same_device(op, x, bias);
    check_same_dtype(op, x, bias);
    TB_CHECK(bias.dim() == 1 && bias.size(0) == out_f,
             "linear: expected bias of shape [{}] for weight shape {}, got shape {}", out_f,
             shape_str(weight.shape()), shape_str(bias.shape()));
  }
  int64_t rows = numel_of(Shape(x.shape().begin(), x.shape().end() - 1));  // M
  Tensor x2 = x.detach().reshape({1, rows, in});
  Tensor wt = weight.detach().t().unsqueeze(0); // [1, in, out], a transposed view: no copy
  Tensor y = gemm3(op, x2, wt, bias.defined() ? bias.detach() : Tensor());
  Shape ys = x.shape();
  ys.back() = out_f;
  Tensor out = y.view(ys);

  std::vector<Tensor> inputs = {x, weight};
  if (bias.defined()) inputs.push_back(bias);
  if (auto node = make_node(op, inputs)) {
    SavedTensor sx(x), sw(weight);
    bool need_x = x.requires_grad(), need_w = weight.requires_grad();
    bool has_b = bias.defined(), need_b = has_b && bias.requires_grad();
    node->backward = [sx, sw, need_x, need_w, has_b, need_b, in, out_f,
                      rows](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      Tensor G = g[0].reshape({rows, out_f});
      std::vector<Tensor> d(has_b ? 3 : 2);
      if (need_x) {
        Tensor xv = sx.unpack("linear");
        d[0] = matmul(G, sw.unpack("linear")).view(xv.shape());
      }
      if (need_w) d[1] = matmul(G.t(), sx.unpack("linear").reshape({rows, in}));
      if (need_b) d[2] = sum(G, {0});
      return d;
    };
    attach_outputs(node, {out});
  }
  return out;
}

} // namespace tb
