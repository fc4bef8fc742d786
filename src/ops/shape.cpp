// src/ops/shape.cpp — ops that move elements between tensors without arithmetic: cat, stack,
// split, chunk, index_select, gather, pad, flatten.
//
// Copies of slices go through the strided-copy kernel (kernels/copy.h), so cat and constant pad
// work on every device. index_select and gather index with raw loops on the CPU (below); their
// backward (index_add, scatter_add) is a loop as well. Every index is checked against its dim
// before anything is read: an out-of-range index is a tb::Error, never an out-of-bounds read.
#include <cstring>

#include <tb/ops.h>

namespace tb {

constexpr int64_t kParallelMinBytes = 1 << 18;

namespace detail {
// Defined in src/ops/copy.cpp: dst[...] = src[...] for same-shape tensors on one device (any
// strides; dtype converted) through the strided-copy kernel.
void copy_same_device(const char* op, const Tensor& dst, const Tensor& src);
} // namespace detail

using detail::copy_same_device;

static Tensor as_dtype(const Tensor& t, DType d) { return t.dtype() == d ? t : t.to(d); }

// Product of sizes in [from, to).
static int64_t span(const Shape& s, int64_t from, int64_t to) {
  int64_t p = 1;
  for (int64_t k = from; k < to; k++) p *= s[k];
  return p;
}

// ---- cat: out = [t0; t1; ...] along dim;  dti = narrow(g, dim, offset_i, size_i) -----------------

// PyTorch still skips 1-D tensors of shape [0] in cat, whatever the others' shapes.
static bool legacy_empty(const Tensor& t) { return t.dim() == 1 && t.size(0) == 0; }

Tensor cat(const std::vector<Tensor>& ts, int64_t dim) {
  TB_CHECK(!ts.empty(), "cat: expected a non-empty list of tensors");
  for (size_t i = 0; i < ts.size(); i++) check_defined("cat", ts[i], "tensor");
  size_t r = 0;
  while (r + 1 < ts.size() && legacy_empty(ts[r])) r++;
  const Tensor& ref = ts[r];
  TB_CHECK(ref.dim() > 0, "cat: zero-dimensional tensor (at position {}) cannot be concatenated", r);
  int64_t d = wrap_dim("cat", dim, ref.dim());
  Shape shape = ref.shape();
  shape[d] = 0;
  DType dt = ref.dtype();
  bool channels_last = ref.dim() == 4;
  for (size_t i = 0; i < ts.size(); i++) {
    const Tensor& t = ts[i];
    check_same_device("cat", ref, t);
    if (legacy_empty(t) && !legacy_empty(ref)) continue;
    TB_CHECK(t.dim() == ref.dim(),
             "cat: tensors must have the same number of dims: tensor {} has shape {}, tensor {} "
             "has shape {}", r, shape_str(ref.shape()), i, shape_str(t.shape()));
    for (int64_t k = 0; k < t.dim(); k++)
      TB_CHECK(k == d || t.size(k) == ref.size(k),
               "cat: sizes must match except in dim {}: tensor {} has shape {}, tensor {} has "
               "shape {}", d, r, shape_str(ref.shape()), i, shape_str(t.shape()));
    shape[d] += t.size(d);
    dt = promote_types(dt, t.dtype());
    // ambiguous layouts (C = 1 or H = W = 1) count as contiguous, as PyTorch's memory-format rule
    channels_last = channels_last && t.is_channels_last() && !t.is_contiguous();
  }
  TensorOptions opts(dt, ref.device());
  Tensor out = channels_last ? empty_channels_last(shape, opts) : empty(shape, opts);

  std::vector<int64_t> offsets(ts.size(), -1), sizes(ts.size(), 0); // -1: skipped
  int64_t off = 0;
  for (size_t i = 0; i < ts.size(); i++) {
    if (legacy_empty(ts[i]) && !legacy_empty(ref)) continue;
    offsets[i] = off;
    sizes[i] = ts[i].size(d);
    if (sizes[i] > 0) copy_same_device("cat", out.narrow(d, off, sizes[i]), ts[i].detach());
    off += sizes[i];
  }
  if (auto node = make_node("cat", ts)) {
    std::vector<DType> dts;
    for (auto& t : ts) dts.push_back(t.dtype());
    node->backward = [d, offsets, sizes, dts](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      std::vector<Tensor> dx(offsets.size());
      if (!g[0].defined()) return dx;
      for (size_t i = 0; i < offsets.size(); i++)
        if (offsets[i] >= 0) dx[i] = as_dtype(g[0].narrow(d, offsets[i], sizes[i]), dts[i]);
      return dx;
    };
    attach_outputs(node, {out});
  }
  return out;
}

// stack = cat of the inputs each unsqueezed at dim (its backward comes from cat and unsqueeze).
Tensor stack(const std::vector<Tensor>& ts, int64_t dim) {
  TB_CHECK(!ts.empty(), "stack: expected a non-empty list of tensors");
  for (size_t i = 0; i < ts.size(); i++) {
    check_defined("stack", ts[i], "tensor");
    TB_CHECK(ts[i].shape() == ts[0].shape(),
             "stack: all tensors must have the same shape: tensor 0 has shape {}, tensor {} has "
             "shape {}", shape_str(ts[0].shape()), i, shape_str(ts[i].shape()));
  }
  int64_t d = wrap_dim("stack", dim, ts[0].dim() + 1);
  std::vector<Tensor> us;
  for (auto& t : ts) us.push_back(t.unsqueeze(d));
  return cat(us, d);
}

// ---- split / chunk: views (narrow), so their gradients flow through narrow's backward ----------

std::vector<Tensor> split(const Tensor& x, int64_t split_size, int64_t dim) {
  check_defined("split", x, "input");
  TB_CHECK(x.dim() > 0, "split: expected a tensor with at least one dim");
  int64_t d = wrap_dim("split", dim, x.dim());
  int64_t n = x.size(d);
  TB_CHECK(split_size > 0 || (split_size == 0 && n == 0),
           "split: split_size must be positive, got {} (dim {} of shape {})", split_size, d,
           shape_str(x.shape()));
  std::vector<Tensor> out;
  if (n == 0) return {x.narrow(d, 0, 0)};
  for (int64_t start = 0; start < n; start += split_size)
    out.push_back(x.narrow(d, start, std::min(split_size, n - start)));
  return out;
}

std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim) {
  check_defined("split", x, "input");
  TB_CHECK(x.dim() > 0, "split: expected a tensor with at least one dim");
  int64_t d = wrap_dim("split", dim, x.dim());
  int64_t total = 0;
  for (int64_t s : sizes) {
    TB_CHECK(s >= 0, "split: sizes must be non-negative, got {}", shape_str(sizes));
    total += s;
  }
  TB_CHECK(total == x.size(d), "split: sizes {} sum to {} but dim {} of shape {} has size {}",
           shape_str(sizes), total, d, shape_str(x.shape()), x.size(d));
  std::vector<Tensor> out;
  int64_t start = 0;
  for (int64_t s : sizes) {
    out.push_back(x.narrow(d, start, s));
    start += s;
  }
  return out;
}

// Pieces of ceil(n / chunks); may return fewer than `chunks` pieces (as torch.chunk).
std::vector<Tensor> chunk(const Tensor& x, int64_t chunks, int64_t dim) {
  check_defined("chunk", x, "input");
  TB_CHECK(chunks > 0, "chunk: chunks must be positive, got {}", chunks);
  TB_CHECK(x.dim() > 0, "chunk: expected a tensor with at least one dim");
  int64_t d = wrap_dim("chunk", dim, x.dim());
  int64_t n = x.size(d);
  if (n == 0) return split(x, std::vector<int64_t>(chunks, 0), d);
  return split(x, (n + chunks - 1) / chunks, d);
}

// ---- index_select: out[..., j, ...] = x[..., index[j], ...];  dx = index_add(0, dim, index, g) --

// Reads an index tensor (int64 or int32, on any device) and checks every entry is in [0, size).
static std::vector<int64_t> read_index(const char* op, const Tensor& index, int64_t size,
                                       int64_t d, const Tensor& x) {
  std::vector<int64_t> idx = index.to_int_vector();
  for (size_t j = 0; j < idx.size(); j++)
    TB_CHECK(idx[j] >= 0 && idx[j] < size,
             "{}: index {} (at position {}) is out of range for dim {} of size {} (input shape {})",
             op, idx[j], j, d, size, shape_str(x.shape()));
  return idx;
}

// Views x as [outer, size, inner] (contiguous): out[o, j, :] = x[o, idx[j], :].
template <typename U>
static void select_rows(const U* x, U* out, int64_t outer, int64_t size, int64_t inner,
                        const std::vector<int64_t>& idx) {
  const int64_t n = (int64_t)idx.size();
  bool par = outer * n * inner * (int64_t)sizeof(U) >= kParallelMinBytes;
#pragma omp parallel for if (par) schedule(static)
  for (int64_t o = 0; o < outer; o++)
    for (int64_t j = 0; j < n; j++) {
      const U* src = x + (o * size + idx[j]) * inner;
      U* dst = out + (o * n + j) * inner;
      for (int64_t k = 0; k < inner; k++) dst[k] = src[k];
    }
}

// dx[o, idx[j], :] += g[o, j, :] (repeated indices accumulate; rows of one o never race).
template <typename T>
static void index_add_rows(const T* g, T* dx, int64_t outer, int64_t size, int64_t inner,
                           const std::vector<int64_t>& idx) {
  const int64_t n = (int64_t)idx.size();
  bool par = outer * n * inner * (int64_t)sizeof(T) >= kParallelMinBytes;
#pragma omp parallel for if (par) schedule(static)
  for (int64_t o = 0; o < outer; o++)
    for (int64_t j = 0; j < n; j++) {
      const T* src = g + (o * n + j) * inner;
      T* dst = dx + (o * size + idx[j]) * inner;
      for (int64_t k = 0; k < inner; k++) dst[k] += src[k];
    }
}

static Tensor index_select_forward(const Tensor& x, int64_t d, const std::vector<int64_t>& idx) {
  Shape shape = x.shape();
  shape[d] = (int64_t)idx.size();
  Tensor out = empty(shape, TensorOptions(x.dtype(), x.device()));
  if (x.device().is_cuda()) { // one strided copy per index
    for (size_t j = 0; j < idx.size(); j++)
      copy_same_device("index_select", out.narrow(d, (int64_t)j, 1), x.narrow(d, idx[j], 1));
    return out;
  }
  Tensor xc = x.contiguous();
  int64_t outer = span(x.shape(), 0, d), inner = span(x.shape(), d + 1, x.dim());
  switch (x.element_size()) {
    case 1: select_rows((const uint8_t*)xc.raw_data(), (uint8_t*)out.raw_data(), outer, x.size(d), inner, idx); break;
    case 2: select_rows((const uint16_t*)xc.raw_data(), (uint16_t*)out.raw_data(), outer, x.size(d), inner, idx); break;
    case 4: select_rows((const uint32_t*)xc.raw_data(), (uint32_t*)out.raw_data(), outer, x.size(d), inner, idx); break;
    case 8: select_rows((const uint64_t*)xc.raw_data(), (uint64_t*)out.raw_data(), outer, x.size(d), inner, idx); break;
    default: TB_CHECK(false, "index_select: unsupported element size for dtype {}", x.dtype());
  }
  return out;
}

static Tensor index_add_backward(const Tensor& g, const Shape& x_shape, DType x_dtype, int64_t d,
                                 const std::vector<int64_t>& idx) {
  DType kd = (g.dtype() == kFloat64) ? kFloat64 : kFloat32;
  Tensor gc = as_dtype(g, kd).contiguous();
  Tensor dx = zeros(x_shape, TensorOptions(kd, g.device()));
  if (g.device().is_cuda()) { // one add per index (repeated indices accumulate in order)
    for (size_t j = 0; j < idx.size(); j++) {
      Tensor row = dx.narrow(d, idx[j], 1);
      row.add_(gc.narrow(d, (int64_t)j, 1));
    }
    return as_dtype(dx, x_dtype);
  }
  int64_t outer = span(x_shape, 0, d), inner = span(x_shape, d + 1, (int64_t)x_shape.size());
  if (kd == kFloat64)
    index_add_rows(gc.data<double>(), dx.data<double>(), outer, x_shape[d], inner, idx);
  else
    index_add_rows(gc.data<float>(), dx.data<float>(), outer, x_shape[d], inner, idx);
  return as_dtype(dx, x_dtype);
}

Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index) {
  check_defined("index_select", x, "input");
  check_defined("index_select", index, "index");
  check_same_device("index_select", x, index);
  TB_CHECK(index.dtype() == kInt64 || index.dtype() == kInt32,
           "index_select: index must be int64 or int32, got {}", index.dtype());
  TB_CHECK(index.dim() <= 1, "index_select: index must be 1-D, got shape {}",
           shape_str(index.shape()));
  TB_CHECK(x.dim() > 0, "index_select: expected an input with at least one dim");
  int64_t d = wrap_dim("index_select", dim, x.dim());
  std::vector<int64_t> idx = read_index("index_select", index, x.size(d), d, x);
  Tensor out = index_select_forward(x.detach(), d, idx);
  if (auto node = make_node("index_select", {x})) {
    Shape xs = x.shape();
    DType xd = x.dtype();
    node->backward = [xs, xd, d, idx](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      if (!g[0].defined()) return {Tensor()};
      return {index_add_backward(g[0], xs, xd, d, idx)};
    };
    attach_outputs(node, {out});
  }
  return out;
}

// ---- gather: out[i][j][k] = x[i][index[i][j][k]][k] (dim = 1);  dx = scatter_add(0, dim, index, g)

// Calls f(i, x_offset) for every element i (row-major) of `shape`, where x_offset addresses
// x (strides xs) at the same coordinates except along dim d, which takes idx[i].
template <typename F>
static void for_each_gathered(const Shape& shape, const Shape& xs, int64_t d, const int64_t* idx,
                              F f) {
  int64_t nd = (int64_t)shape.size(), n = numel_of(shape);
  std::vector<int64_t> c(nd, 0);
  int64_t base = 0; // offset of the current coordinates in x, dim d excluded
  for (int64_t i = 0; i < n; i++) {
    f(i, base + idx[i] * xs[d]);
    for (int64_t k = nd - 1; k >= 0; k--) { // increment the coordinate counter
      if (++c[k] < shape[k]) {
        if (k != d) base += xs[k];
        break;
      }
      if (k != d) base -= (shape[k] - 1) * xs[k];
      c[k] = 0;
    }
  }
}

template <typename U>
static void gather_typed(const U* x, const Shape& xs, U* out, const Shape& shape, int64_t d,
                         const int64_t* idx) {
  for_each_gathered(shape, xs, d, idx, [&](int64_t i, int64_t off) { out[i] = x[off]; });
}

template <typename T>
static void scatter_add_typed(const T* g, T* dx, const Shape& dxs, const Shape& shape, int64_t d,
                              const int64_t* idx) {
  for_each_gathered(shape, dxs, d, idx, [&](int64_t i, int64_t off) { dx[off] += g[i]; });
}

Tensor gather(const Tensor& x, int64_t dim, const Tensor& index) {
  check_defined("gather", x, "input");
  check_defined("gather", index, "index");
  check_same_device("gather", x, index);
  TB_CHECK(index.dtype() == kInt64, "gather: index must be int64, got {}", index.dtype());
  TB_CHECK(x.dim() > 0 && index.dim() == x.dim(),
           "gather: index {} must have the same number of dims (at least 1) as input {}",
           shape_str(index.shape()), shape_str(x.shape()));
  int64_t d = wrap_dim("gather", dim, x.dim());
  for (int64_t k = 0; k < x.dim(); k++)
    TB_CHECK(k == d || index.size(k) <= x.size(k),
             "gather: index shape {} exceeds input shape {} in dim {}", shape_str(index.shape()),
             shape_str(x.shape()), k);
  TB_CHECK(x.device().is_cpu(), "gather: no CUDA kernel yet (device {}, dtype {})", x.device(),
           x.dtype());
  Tensor ic = index.contiguous();
  read_index("gather", ic, x.size(d), d, x); // bounds check before any read
  Tensor xd = x.detach();
  Tensor out = empty(index.shape(), TensorOptions(x.dtype(), x.device()));
  const int64_t* ip = ic.data<int64_t>();
  switch (x.element_size()) {
    case 1: gather_typed((const uint8_t*)xd.raw_data(), xd.strides(), (uint8_t*)out.raw_data(), out.shape(), d, ip); break;
    case 2: gather_typed((const uint16_t*)xd.raw_data(), xd.strides(), (uint16_t*)out.raw_data(), out.shape(), d, ip); break;
    case 4: gather_typed((const uint32_t*)xd.raw_data(), xd.strides(), (uint32_t*)out.raw_data(), out.shape(), d, ip); break;
    case 8: gather_typed((const uint64_t*)xd.raw_data(), xd.strides(), (uint64_t*)out.raw_data(), out.shape(), d, ip); break;
    default: TB_CHECK(false, "gather: unsupported element size for dtype {}", x.dtype());
  }
  if (auto node = make_node("gather", {x})) {
    Shape xs = x.shape();
    DType xdt = x.dtype();
    node->backward = [xs, xdt, d, ic](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      if (!g[0].defined()) return {Tensor()};
      DType kd = (g[0].dtype() == kFloat64) ? kFloat64 : kFloat32;
      Tensor gc = as_dtype(g[0], kd).contiguous();
      Tensor dx = zeros(xs, TensorOptions(kd, g[0].device()));
      const int64_t* ip = ic.data<int64_t>();
      if (kd == kFloat64)
        scatter_add_typed(gc.data<double>(), dx.data<double>(), dx.strides(), gc.shape(), d, ip);
      else
        scatter_add_typed(gc.data<float>(), dx.data<float>(), dx.strides(), gc.shape(), d, ip);
      return {as_dtype(dx, xdt)};
    };
    attach_outputs(node, {out});
  }
  return out;
}

// ---- pad ---------------------------------------------------------------------------------------
// pads = (left, right[, top, bottom, ...]) from the last dim backwards, as F.pad.
//   constant: out = value outside, x inside; negative pads crop. dx = pad(g, -pads) (a crop).
//   reflect:  out[o] = x[|o - l|] mirrored at both ends without repeating the edge (pad < size).
//   replicate: out[o] = x[clamp(o - l, 0, n - 1)].
// reflect/replicate are index_selects along each padded dim, so their backward is index_add.

static Tensor pad_constant(const Tensor& x, const std::vector<int64_t>& pads, double value) {
  Shape shape = x.shape();
  int64_t np = (int64_t)pads.size() / 2;
  for (int64_t p = 0; p < np; p++) {
    int64_t k = x.dim() - 1 - p;
    shape[k] += pads[2 * p] + pads[2 * p + 1];
    TB_CHECK(shape[k] >= 0, "pad: padding {} makes dim {} of input {} negative", shape_str(pads), k,
             shape_str(x.shape()));
  }
  Tensor out = full(shape, value, TensorOptions(x.dtype(), x.device()));
  Tensor src = x.detach(), dst = out;
  bool empty_window = false;
  for (int64_t p = 0; p < np; p++) {
    int64_t k = x.dim() - 1 - p, l = pads[2 * p], r = pads[2 * p + 1];
    int64_t len = x.size(k) - std::max<int64_t>(0, -l) - std::max<int64_t>(0, -r);
    if (len <= 0) {
      empty_window = true;
      break;
    }
    src = src.narrow(k, std::max<int64_t>(0, -l), len);
    dst = dst.narrow(k, std::max<int64_t>(0, l), len);
  }
  if (!empty_window && src.numel() > 0) copy_same_device("pad", dst, src);
  if (auto node = make_node("pad", {x})) {
    std::vector<int64_t> neg_pads;
    for (int64_t v : pads) neg_pads.push_back(-v);
    node->backward = [neg_pads](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      if (!g[0].defined()) return {Tensor()};
      return {pad_constant(g[0], neg_pads, 0.0)};
    };
    attach_outputs(node, {out});
  }
  return out;
}

Tensor pad(const Tensor& x, const std::vector<int64_t>& pads, const std::string& mode,
           double value) {
  check_defined("pad", x, "input");
  TB_CHECK(pads.size() % 2 == 0 && !pads.empty() && (int64_t)pads.size() <= 2 * x.dim(),
           "pad: expected an even number of pads, at most 2 per dim, got {} for input {}",
           shape_str(pads), shape_str(x.shape()));
  if (mode == "constant") return pad_constant(x, pads, value);
  TB_CHECK(mode == "reflect" || mode == "replicate",
           "pad: mode must be \"constant\", \"reflect\" or \"replicate\", got \"{}\"", mode);
  TB_CHECK(pads.size() == 2 || pads.size() == 4,
           "pad: {} mode pads the last 1 or 2 dims (2 or 4 values), got {}", mode, shape_str(pads));
  Tensor out = x;
  for (size_t p = 0; p < pads.size() / 2; p++) {
    int64_t k = x.dim() - 1 - (int64_t)p, l = pads[2 * p], r = pads[2 * p + 1], n = x.size(k);
    TB_CHECK(l >= 0 && r >= 0, "pad: {} mode needs non-negative pads, got {}", mode,
             shape_str(pads));
    if (mode == "reflect")
      TB_CHECK(l < n && r < n,
               "pad: reflect padding {} must be smaller than dim {} of input {} (size {})",
               shape_str(pads), k, shape_str(x.shape()), n);
    else
      TB_CHECK(n > 0, "pad: replicate mode needs a non-empty dim {} in input {}", k,
               shape_str(x.shape()));
    std::vector<int64_t> src(n + l + r);
    for (int64_t o = 0; o < n + l + r; o++) {
      int64_t i = o - l;
      if (mode == "reflect") src[o] = i < 0 ? -i : (i >= n ? 2 * (n - 1) - i : i);
      else src[o] = i < 0 ? 0 : (i >= n ? n - 1 : i);
    }
    Tensor idx = from_vector(src, {(int64_t)src.size()}).to(x.device());
    out = index_select(out, k, idx);
  }
  return out;
}

// ---- flatten: dims [start, end] merged into one (a view when the strides allow) ---------------

Tensor flatten(const Tensor& x, int64_t start_dim, int64_t end_dim) {
  check_defined("flatten", x, "input");
  if (x.dim() == 0) return x.unsqueeze(0); // (reshape of a 0-d tensor to [1] fails in view.cpp)
  int64_t s = wrap_dim("flatten", start_dim, x.dim()), e = wrap_dim("flatten", end_dim, x.dim());
  TB_CHECK(s <= e, "flatten: start_dim {} comes after end_dim {} (input {})", start_dim, end_dim,
           shape_str(x.shape()));
  Shape shape(x.shape().begin(), x.shape().begin() + s);
  shape.push_back(span(x.shape(), s, e + 1));
  shape.insert(shape.end(), x.shape().begin() + e + 1, x.shape().end());
  return x.reshape(shape);
}

} // namespace tb
