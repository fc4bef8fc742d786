// Views: new sizes/strides/offset over the same storage, no copy. Each records a node whose
// backward maps the gradient back to the input's shape:
//   view/reshape/squeeze/unsqueeze: reshape back;   permute: inverse permutation;
//   narrow/slice/select: zeros of the input shape with the gradient written into the window;
//   expand: sum over the broadcast dims (sum_to_shape).
#include <tb/ops.h>

#include <numeric>

namespace tb {

// Records a view node with the given backward.
static Tensor record_view(const char* name, const Tensor& base, Tensor out,
                          std::function<Tensor(const Tensor&)> backward) {
  if (auto node = make_node(name, {base})) {
    node->backward = [backward](const std::vector<Tensor>& g) -> std::vector<Tensor> {
      return {backward(g[0])};
    };
    attach_outputs(node, {out});
  }
  return out;
}

// Resolves one -1 in a requested shape.
static Shape infer_shape(const char* op, const Shape& requested, int64_t numel, const Shape& from) {
  Shape s = requested;
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < s.size(); i++) {
    if (s[i] == -1) {
      TB_CHECK(infer < 0, "{}: only one dimension can be -1, got {}", op, shape_str(requested));
      infer = (int64_t)i;
    } else {
      TB_CHECK(s[i] >= 0, "{}: invalid size in {}", op, shape_str(requested));
      known *= s[i];
    }
  }
  if (infer >= 0) {
    TB_CHECK(known > 0 && numel % known == 0, "{}: shape {} is invalid for input of shape {} ({} elements)",
             op, shape_str(requested), shape_str(from), numel);
    s[infer] = numel / known;
  }
  TB_CHECK(numel_of(s) == numel, "{}: shape {} is invalid for input of shape {} ({} elements)", op,
           shape_str(requested), shape_str(from), numel);
  return s;
}

// Strides for viewing `t` as `shape` without a copy, or nullopt when impossible. Walks the old
// dims in chunks that are contiguous among themselves (as PyTorch's computeStride).
static std::optional<Shape> view_strides(const Tensor& t, const Shape& shape) {
  const Shape& os = t.shape();
  const Shape& ost = t.strides();
  Shape ns(shape.size());
  if (t.numel() == 0 || os.empty()) return contiguous_strides(shape); // empty, or a scalar
  int64_t view_d = (int64_t)shape.size() - 1;
  int64_t chunk_base_stride = ost.empty() ? 1 : ost.back();
  int64_t tensor_numel = 1, view_numel = 1;
  for (int64_t d = (int64_t)os.size() - 1; d >= 0; d--) {
    tensor_numel *= os[d];
    if (d == 0 || (os[d - 1] != 1 && ost[d - 1] != tensor_numel * chunk_base_stride)) {
      while (view_d >= 0 && (view_numel < tensor_numel || shape[view_d] == 1)) {
        ns[view_d] = view_numel * chunk_base_stride;
        view_numel *= shape[view_d];
        view_d--;
      }
      if (view_numel != tensor_numel) return std::nullopt;
      if (d > 0) {
        chunk_base_stride = ost[d - 1];
        tensor_numel = 1;
        view_numel = 1;
      }
    }
  }
  if (view_d != -1) return std::nullopt;
  return ns;
}

Tensor Tensor::view(const Shape& s) const {
  Shape shape_ = infer_shape("view", s, numel(), shape());
  auto st = view_strides(*this, shape_);
  TB_CHECK(st.has_value(), "view: cannot view a tensor of shape {} with strides {} as {}: its "
           "memory is not laid out compatibly; use reshape() (copies)",
           shape_str(shape()), shape_str(strides()), shape_str(shape_));
  Shape in_shape = shape();
  return record_view("view", *this, make_view(*this, shape_, *st, offset()),
                     [in_shape](const Tensor& g) { return g.reshape(in_shape); });
}

Tensor Tensor::reshape(const Shape& s) const {
  Shape shape_ = infer_shape("reshape", s, numel(), shape());
  if (view_strides(*this, shape_)) return view(shape_);
  return contiguous().view(shape_);
}

Tensor Tensor::permute(const Shape& dims) const {
  TB_CHECK((int64_t)dims.size() == dim(), "permute: expected {} dims for shape {}, got {}", dim(),
           shape_str(shape()), shape_str(dims));
  Shape ns(dim()), nst(dim()), inverse(dim());
  std::vector<bool> used(dim(), false);
  for (int64_t i = 0; i < dim(); i++) {
    int64_t d = wrap_dim("permute", dims[i], dim());
    TB_CHECK(!used[d], "permute: dim {} repeated in {}", d, shape_str(dims));
    used[d] = true;
    ns[i] = shape()[d];
    nst[i] = strides()[d];
    inverse[d] = i;
  }
  return record_view("permute", *this, make_view(*this, ns, nst, offset()),
                     [inverse](const Tensor& g) { return g.permute(inverse); });
}

Tensor Tensor::transpose(int64_t d0, int64_t d1) const {
  Shape p(dim());
  std::iota(p.begin(), p.end(), 0);
  if (dim() == 0) return *this;
  std::swap(p[wrap_dim("transpose", d0, dim())], p[wrap_dim("transpose", d1, dim())]);
  return permute(p);
}

Tensor Tensor::slice(int64_t d, int64_t start, int64_t end, int64_t step) const {
  d = wrap_dim("slice", d, dim());
  TB_CHECK(step > 0, "slice: step must be positive, got {}", step);
  int64_t n = shape()[d];
  if (start < 0) start += n;
  if (end < 0) end += n;
  start = std::clamp<int64_t>(start, 0, n);
  end = std::clamp<int64_t>(end, start, n);
  Shape ns = shape(), nst = strides();
  ns[d] = (end - start + step - 1) / step;
  nst[d] *= step;
  Shape in_shape = shape();
  DType dt = dtype();
  Device dev = device();
  return record_view("slice", *this, make_view(*this, ns, nst, offset() + start * strides()[d]),
                     [=](const Tensor& g) {
                       Tensor dx = zeros(in_shape, {dt, dev});
                       dx.slice(d, start, end, step).copy_(g);
                       return dx;
                     });
}

Tensor Tensor::narrow(int64_t d, int64_t start, int64_t length) const {
  d = wrap_dim("narrow", d, dim());
  int64_t n = shape()[d];
  if (start < 0) start += n;
  TB_CHECK(start >= 0 && length >= 0 && start + length <= n,
           "narrow: window [{}, {}) is outside dim {} of size {} (shape {})", start, start + length, d,
           n, shape_str(shape()));
  return slice(d, start, start + length);
}

Tensor Tensor::select(int64_t d, int64_t index) const {
  d = wrap_dim("select", d, dim());
  int64_t n = shape()[d];
  TB_CHECK(index >= -n && index < n, "select: index {} out of range for dim {} of size {} (shape {})",
           index, d, n, shape_str(shape()));
  if (index < 0) index += n;
  return narrow(d, index, 1).squeeze(d);
}

Tensor Tensor::expand(const Shape& s) const {
  TB_CHECK(s.size() >= shape().size(), "expand: cannot expand shape {} to {} (fewer dims)",
           shape_str(shape()), shape_str(s));
  size_t lead = s.size() - shape().size();
  Shape ns(s.size()), nst(s.size());
  for (size_t i = 0; i < s.size(); i++) {
    if (i < lead) {
      TB_CHECK(s[i] >= 0, "expand: size -1 not allowed for new leading dim in {}", shape_str(s));
      ns[i] = s[i];
      nst[i] = 0;
      continue;
    }
    int64_t have = shape()[i - lead];
    int64_t want = s[i] == -1 ? have : s[i];
    TB_CHECK(want == have || have == 1, "expand: cannot expand shape {} to {} (dim {}: {} vs {})",
             shape_str(shape()), shape_str(s), i, have, want);
    ns[i] = want;
    nst[i] = want == have ? strides()[i - lead] : 0;
  }
  if (ns == shape()) return *this;
  Shape in_shape = shape();
  return record_view("expand", *this, make_view(*this, ns, nst, offset()),
                     [in_shape](const Tensor& g) { return sum_to_shape(g, in_shape); });
}

Tensor Tensor::squeeze(int64_t d) const {
  if (dim() == 0) return *this;
  d = wrap_dim("squeeze", d, dim());
  if (shape()[d] != 1) return *this;
  Shape ns = shape(), nst = strides();
  ns.erase(ns.begin() + d);
  nst.erase(nst.begin() + d);
  Shape in_shape = shape();
  return record_view("squeeze", *this, make_view(*this, ns, nst, offset()),
                     [in_shape](const Tensor& g) { return g.reshape(in_shape); });
}

Tensor Tensor::unsqueeze(int64_t d) const {
  d = wrap_dim("unsqueeze", d, dim() + 1);
  Shape ns = shape(), nst = strides();
  int64_t st = d < dim() ? strides()[d] * shape()[d] : 1;
  ns.insert(ns.begin() + d, 1);
  nst.insert(nst.begin() + d, st);
  Shape in_shape = shape();
  return record_view("unsqueeze", *this, make_view(*this, ns, nst, offset()),
                     [in_shape](const Tensor& g) { return g.reshape(in_shape); });
}

Tensor Tensor::flatten(int64_t start, int64_t end) const {
  if (dim() == 0) return reshape({1});
  start = wrap_dim("flatten", start, dim());
  end = wrap_dim("flatten", end, dim());
  TB_CHECK(start <= end, "flatten: start_dim {} after end_dim {}", start, end);
  Shape ns;
  for (int64_t i = 0; i < start; i++) ns.push_back(shape()[i]);
  int64_t m = 1;
  for (int64_t i = start; i <= end; i++) m *= shape()[i];
  ns.push_back(m);
  for (int64_t i = end + 1; i < dim(); i++) ns.push_back(shape()[i]);
  return reshape(ns);
}

// Sum over leading dims that broadcasting added, then over dims that were size 1.
Tensor sum_to_shape(const Tensor& g, const Shape& shape) {
  if (g.shape() == shape) return g;
  Shape dims;
  int64_t lead = g.dim() - (int64_t)shape.size();
  TB_CHECK(lead >= 0, "sum_to_shape: gradient shape {} has fewer dims than {}", shape_str(g.shape()),
           shape_str(shape));
  for (int64_t i = 0; i < g.dim(); i++)
    if (i < lead || (shape[i - lead] == 1 && g.shape()[i] != 1)) dims.push_back(i);
  Tensor r = dims.empty() ? g : sum(g, dims, true);
  return r.reshape(shape);
}

} // namespace tb
