// Sparse inference: weights in CSR, a Linear / 1×1-conv module that multiplies with them
// (kernels/sparse.h), and sparsify(), which swaps that module in only where it measures faster
// than the dense layer on the layer's real input shape.
#include <tb/prune.h>

#include <algorithm>
#include <chrono>
#include <unordered_map>

#include "channels.h"
#include "kernels/sparse.h"
#include "src/ops/dispatch.h"

namespace tb::prune {

CsrMatrix to_csr(const Tensor& w) {
  TB_CHECK(w.defined() && w.dim() == 2 && w.dtype() == kFloat32,
           "prune::to_csr: expected a 2-D float32 tensor, got {} {}",
           w.defined() ? shape_str(w.shape()) : "undefined", w.defined() ? w.dtype() : kFloat32);
  Tensor c = w.detach().cpu().contiguous();
  const float* p = c.data<float>();
  CsrMatrix m{.rows = w.size(0), .cols = w.size(1)};
  m.row_ptr.reserve(m.rows + 1);
  m.row_ptr.push_back(0);
  for (int64_t r = 0; r < m.rows; r++) {
    for (int64_t j = 0; j < m.cols; j++)
      if (p[r * m.cols + j] != 0.0f) {
        m.col_idx.push_back((int32_t)j);
        m.values.push_back(p[r * m.cols + j]);
      }
    TB_CHECK(m.values.size() < (size_t)INT32_MAX, "prune::to_csr: more than 2^31 non-zeros");
    m.row_ptr.push_back((int32_t)m.values.size());
  }
  return m;
}

namespace {

// Y [rows, n] = W X [cols, n] (+ bias per row) through the dispatched kernel.
void spmm(const CsrMatrix& w, const Tensor& bias, const float* x, int64_t n, float* y,
          Device d) {
  auto fn = kernel(&kernels::SparseKernels::spmm, "sparse_linear", d, kFloat32);
  fn(w.rows, w.cols, n, w.row_ptr.data(), w.col_idx.data(), w.values.data(),
     bias.defined() ? bias.data<float>() : nullptr, x, y);
}

void check_input(const char* op, const Tensor& x, const CsrMatrix& w, const Tensor& bias) {
  TB_CHECK(x.defined() && x.dtype() == kFloat32 && x.device().is_cpu(),
           "{}: expected a float32 CPU input, got {} on {}", op, x.defined() ? x.dtype() : kFloat32,
           x.defined() ? x.device().str() : "-");
  TB_CHECK(!(is_grad_enabled() && x.requires_grad()),
           "{}: inference only (no gradient); run it under tb::no_grad", op);
  TB_CHECK(!bias.defined() || (bias.dim() == 1 && bias.size(0) == w.rows),
           "{}: bias has shape {}, expected [{}]", op, shape_str(bias.shape()), w.rows);
}

} // namespace

Tensor sparse_linear(const Tensor& x, const CsrMatrix& w, const Tensor& bias) {
  check_input("sparse_linear", x, w, bias);
  TB_CHECK(x.dim() >= 1 && x.size(-1) == w.cols, "sparse_linear: x has shape {}, expected [..., "
           "{}] for a weight [{}, {}]", shape_str(x.shape()), w.cols, w.rows, w.cols);
  int64_t m = x.numel() / std::max<int64_t>(1, w.cols);
  Tensor xt = x.detach().reshape({m, w.cols}).t().contiguous(); // [cols, m]
  Tensor yt = empty({w.rows, m});
  Tensor b = bias.defined() ? bias.detach().contiguous() : Tensor();
  spmm(w, b, xt.data<float>(), m, yt.data<float>(), x.device());
  Shape out = x.shape();
  out.back() = w.rows;
  return yt.t().contiguous().view(out);
}

// ---------------------------------------------------------------------------------------------
// SparseLinear, SparseConv2d

namespace {
// The CSR copy of `w` (as a [rows, numel/rows] matrix), rebuilt when w's data changed.
const CsrMatrix& cached_csr(const Tensor& w, CsrMatrix& csr, uint64_t& version,
                            const TensorImpl*& built_from) {
  if (w.impl().get() != built_from || w.version() != version) {
    csr = to_csr(w.detach().reshape({w.size(0), w.numel() / std::max<int64_t>(1, w.size(0))}));
    built_from = w.impl().get();
    version = w.version();
  }
  return csr;
}

} // namespace

SparseLinear::SparseLinear(const Tensor& weight, const Tensor& bias) {
  TB_CHECK(weight.defined() && weight.dim() == 2, "SparseLinear: expected a weight [out, in], got "
           "{}", weight.defined() ? shape_str(weight.shape()) : "undefined");
  register_parameter("weight", weight.detach().clone());
  if (bias.defined()) register_parameter("bias", bias.detach().clone());
}

const CsrMatrix& SparseLinear::csr() {
  return cached_csr(get("weight"), csr_, version_, built_from_);
}

Tensor SparseLinear::forward(const Tensor& x) { return sparse_linear(x, csr(), find("bias")); }

std::string SparseLinear::extra_repr() const {
  Tensor w = get("weight");
  return fmt::format("in_features={}, out_features={}", w.size(1), w.size(0));
}

SparseConv2d::SparseConv2d(const Tensor& weight, const Tensor& bias, const Conv2dParams& p)
    : params(p) {
  TB_CHECK(weight.defined() && weight.dim() == 4, "SparseConv2d: expected a weight [O, C, kh, kw], "
           "got {}", weight.defined() ? shape_str(weight.shape()) : "undefined");
  TB_CHECK(p.groups == 1, "SparseConv2d: groups must be 1, got {}", p.groups);
  register_parameter("weight", weight.detach().clone());
  if (bias.defined()) register_parameter("bias", bias.detach().clone());
}

const CsrMatrix& SparseConv2d::csr() {
  return cached_csr(get("weight"), csr_, version_, built_from_);
}

// Image x [C, H, W] (NCHW) unrolled into its Ho*Wo columns of cols [C*kh*kw, ld] (zero
// padding), as conv2d sees it: cols[(c*kh + ki)*kw + kj, oh*Wo + ow] = x[c, ih, iw].
static void im2col(const float* x, int64_t c, int64_t h, int64_t w, int64_t kh, int64_t kw,
                   const Conv2dParams& p, int64_t ho, int64_t wo, float* cols, int64_t ld) {
  for (int64_t ci = 0; ci < c; ci++)
    for (int64_t ki = 0; ki < kh; ki++)
      for (int64_t kj = 0; kj < kw; kj++) {
        float* row = cols + ((ci * kh + ki) * kw + kj) * ld;
        for (int64_t oh = 0; oh < ho; oh++) {
          int64_t ih = oh * p.stride_h - p.pad_h + ki * p.dilation_h;
          for (int64_t ow = 0; ow < wo; ow++) {
            int64_t iw = ow * p.stride_w - p.pad_w + kj * p.dilation_w;
            row[oh * wo + ow] =
                ih >= 0 && ih < h && iw >= 0 && iw < w ? x[(ci * h + ih) * w + iw] : 0.0f;
          }
        }
      }
}

// Images split over the threads; each unrolls its image into a buffer of its own (im2col,
// [C*kh*kw, Ho*Wo], small enough to stay in L2) and multiplies it by the CSR weight into its
// NCHW output plane [O, Ho*Wo]. 1×1 stride-1 convs use the input planes directly. (Unrolling the
// whole batch into one [C*kh*kw, N*Ho*Wo] product measured slower: the buffer leaves the cache.)
Tensor SparseConv2d::forward(const Tensor& x) {
  Tensor w = get("weight"), b = find("bias");
  const CsrMatrix& m = csr();
  check_input("SparseConv2d", x, m, b);
  int64_t c = w.size(1), kh = w.size(2), kw = w.size(3);
  TB_CHECK(x.dim() == 4 && x.size(1) == c, "SparseConv2d: x has shape {}, expected [N, {}, H, W]",
           shape_str(x.shape()), c);
  const Conv2dParams& p = params;
  int64_t n = x.size(0), h = x.size(2), wd = x.size(3);
  int64_t ho = (h + 2 * p.pad_h - p.dilation_h * (kh - 1) - 1) / p.stride_h + 1;
  int64_t wo = (wd + 2 * p.pad_w - p.dilation_w * (kw - 1) - 1) / p.stride_w + 1;
  TB_CHECK(ho > 0 && wo > 0, "SparseConv2d: input {} is too small for a {}x{} kernel",
           shape_str(x.shape()), kh, kw);
  bool direct = kh == 1 && kw == 1 && p.stride_h == 1 && p.stride_w == 1 && p.pad_h == 0 &&
                p.pad_w == 0;
  int64_t plane = ho * wo;
  Tensor xc = x.detach().contiguous();
  Tensor y = empty({n, m.rows, ho, wo});
  Tensor bc = b.defined() ? b.detach().contiguous() : Tensor();
  auto fn = kernel(&kernels::SparseKernels::spmm, "SparseConv2d", x.device(), kFloat32);
  const float* xp = xc.data<float>();
  float* yp = y.data<float>();
  const float* bp = bc.defined() ? bc.data<float>() : nullptr;
#pragma omp parallel if (n > 1)
  {
    std::vector<float> cols(direct ? 0 : (size_t)(m.cols * plane));
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; i++) {
      const float* xi = xp + i * c * h * wd;
      if (!direct) im2col(xi, c, h, wd, kh, kw, p, ho, wo, cols.data(), plane);
      fn(m.rows, m.cols, plane, m.row_ptr.data(), m.col_idx.data(), m.values.data(), bp,
         direct ? xi : cols.data(), yp + i * m.rows * plane);
    }
  }
  return y;
}

std::string SparseConv2d::extra_repr() const {
  Tensor w = get("weight");
  return fmt::format("{}, {}, kernel_size=({}, {}), stride=({}, {}), padding=({}, {})", w.size(1),
                     w.size(0), w.size(2), w.size(3), params.stride_h, params.stride_w,
                     params.pad_h, params.pad_w);
}

// ---------------------------------------------------------------------------------------------
// sparsify

double fastest_forward_ms(nn::Module& m, const Tensor& x, int repeats) {
  no_grad g;
  m(x); // warm-up
  std::vector<double> t;
  for (int i = 0; i < std::max(1, repeats); i++) {
    auto t0 = std::chrono::steady_clock::now();
    m(x);
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                    .count());
  }
  return *std::min_element(t.begin(), t.end());
}

std::vector<SparsifyRow> sparsify(nn::Module& root, const Shape& input_shape,
                                  const SparsifyOptions& o) {
  TB_CHECK(!is_pruned(root), "prune::sparsify: the model still has pruning masks ({}...); call "
           "prune::remove_all first", pruned_tensors(root)[0]);
  // The input shape each candidate sees, from one forward at batch o.batch.
  std::unordered_map<const nn::Module*, Shape> seen;
  std::vector<nn::HookHandle> hooks;
  std::vector<std::pair<std::string, nn::Module*>> candidates;
  for (auto& [path, m] : root.named_modules()) {
    auto* lin = dynamic_cast<nn::Linear*>(m);
    auto* conv = dynamic_cast<nn::Conv2d*>(m);
    if (!lin && !(conv && conv->params.groups == 1)) continue;
    if (m->get("weight").dtype() != kFloat32 || !m->get("weight").device().is_cpu()) continue;
    candidates.emplace_back(path, m);
    hooks.push_back(m->register_forward_hook(
        [&seen](nn::Module& mod, const Tensor& x, const Tensor&) { seen[&mod] = x.shape(); }));
  }
  bool was_training = root.is_training();
  root.eval();
  Shape in = input_shape;
  in[0] = o.batch;
  {
    no_grad g;
    root(zeros(in));
  }
  for (auto& h : hooks) h.remove();

  std::vector<SparsifyRow> rows;
  for (auto& [path, m] : candidates) {
    Tensor w = m->get("weight");
    int64_t zeros_n = 0;
    for (double v : w.to_vector()) zeros_n += v == 0;
    SparsifyRow row{.name = path, .sparsity = (double)zeros_n / (double)w.numel()};
    auto* conv = dynamic_cast<nn::Conv2d*>(m);
    if (row.sparsity >= o.min_sparsity && seen.count(m)) {
      nn::ModulePtr sparse;
      if (conv) sparse = std::make_shared<SparseConv2d>(w, m->find("bias"), conv->params);
      else sparse = std::make_shared<SparseLinear>(w, m->find("bias"));
      if (o.measure) {
        Tensor x = randn(seen[m]);
        row.dense_ms = fastest_forward_ms(*m, x, o.repeats);
        row.sparse_ms = fastest_forward_ms(*sparse, x, o.repeats);
      }
      row.replaced = !o.measure || row.sparse_ms < row.dense_ms;
      if (row.replaced) {
        TB_CHECK(!path.empty(), "prune::sparsify: the root module itself cannot be replaced");
        root.set_submodule(path, sparse);
      }
    }
    rows.push_back(row);
  }
  root.train(was_training);
  return rows;
}

} // namespace tb::prune
