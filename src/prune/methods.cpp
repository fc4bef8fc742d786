// Pruning methods: how each computes its mask (PyTorch's compute_mask of L1Unstructured,
// RandomUnstructured, LnStructured, RandomStructured, Identity, CustomFromMask), global pruning
// across tensors, and the named entry points (l1_unstructured, ln_structured, ...).
//
// Masks are computed on the CPU in float64 from the scores (float32 weights convert exactly, so
// the ranking is the one PyTorch sees). Ties rank by position (lower index pruned first).
#include <tb/prune.h>

#include <algorithm>
#include <cmath>
#include <numeric>

namespace tb::prune {

namespace {

// Indices 0..n-1 ordered by score ascending, ties by index.
std::vector<int64_t> argsort_ascending(const std::vector<double>& s) {
  std::vector<int64_t> order(s.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return s[a] < s[b]; });
  return order;
}

// k distinct indices of 0..n-1, uniformly at random (a partial Fisher-Yates shuffle).
std::vector<int64_t> random_subset(int64_t n, int64_t k, Generator* g) {
  Generator& gen = g ? *g : default_generator();
  std::vector<int64_t> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  for (int64_t i = 0; i < k; i++) {
    int64_t j = i + (int64_t)(gen.next_u64() % (uint64_t)(n - i));
    std::swap(idx[i], idx[j]);
  }
  idx.resize(k);
  return idx;
}

// ||x||_n over each channel along dim (every other dim reduced), as torch.norm(t, p=n, dim=rest).
std::vector<double> channel_norms(const Tensor& t, int64_t dim, double n) {
  Shape sh = t.shape();
  int64_t inner = 1;
  for (size_t d = dim + 1; d < sh.size(); d++) inner *= sh[d];
  int64_t size = sh[dim];
  std::vector<double> v = t.to_vector(), acc(size, 0.0);
  std::vector<bool> seen(size, false);
  for (size_t i = 0; i < v.size(); i++) {
    int64_t c = ((int64_t)i / inner) % size;
    double a = std::fabs(v[i]);
    if (std::isinf(n) && n > 0) acc[c] = std::max(acc[c], a);
    else if (std::isinf(n)) acc[c] = seen[c] ? std::min(acc[c], a) : a;
    else if (n == 0) acc[c] += a != 0;
    else acc[c] += std::pow(a, n);
    seen[c] = true;
  }
  if (!std::isinf(n) && n != 0)
    for (auto& x : acc) x = std::pow(x, 1.0 / n);
  return acc;
}

int64_t wrap_structured_dim(const Tensor& t, int64_t dim, const char* method) {
  int64_t nd = t.dim();
  TB_CHECK(nd >= 2, "{}: structured pruning needs a tensor of at least 2 dims, got shape {}",
           method, shape_str(t.shape()));
  TB_CHECK(dim >= -nd && dim < nd, "{}: dim {} is out of range for shape {} (expected {} <= dim "
           "< {})", method, dim, shape_str(t.shape()), -nd, nd);
  return dim < 0 ? dim + nd : dim;
}

// A mask of t's shape with ones on the channels along dim listed in keep, times default_mask.
Tensor channel_mask(const Tensor& t, int64_t dim, const std::vector<bool>& keep,
                    const Tensor& default_mask) {
  Shape sh = t.shape();
  int64_t inner = 1;
  for (size_t d = dim + 1; d < sh.size(); d++) inner *= sh[d];
  std::vector<double> dm = default_mask.to_vector(), out(dm.size());
  for (size_t i = 0; i < dm.size(); i++)
    out[i] = keep[((int64_t)i / inner) % sh[dim]] ? dm[i] : 0.0;
  return from_vector(out, sh);
}

} // namespace

// ---------------------------------------------------------------------------------------------
// Methods

Method l1_unstructured_method(Amount amount) {
  amount.validate("l1_unstructured");
  return {.name = "l1_unstructured", .type = PruningType::Unstructured,
          .compute_mask = [amount](const Tensor& t, const Tensor& default_mask) {
            int64_t k = amount.units(t.numel());
            std::vector<double> s = t.to_vector(), mask = default_mask.to_vector();
            for (auto& x : s) x = std::fabs(x);
            std::vector<int64_t> order = argsort_ascending(s);
            for (int64_t i = 0; i < k; i++) mask[order[i]] = 0;
            return from_vector(mask, t.shape());
          }};
}

Method random_unstructured_method(Amount amount, Generator* g) {
  amount.validate("random_unstructured");
  return {.name = "random_unstructured", .type = PruningType::Unstructured,
          .compute_mask = [amount, g](const Tensor& t, const Tensor& default_mask) {
            int64_t k = amount.units(t.numel());
            std::vector<double> mask = default_mask.to_vector();
            for (int64_t i : random_subset(t.numel(), k, g)) mask[i] = 0;
            return from_vector(mask, t.shape());
          }};
}

// A structured method: `keep(t, d, k)` says which channels along dim d stay when k of them go;
// the mask keeps those channels of default_mask (PyTorch's make_mask * default_mask).
static Method structured_method(const char* name, Amount amount, int64_t dim,
                                std::function<std::vector<bool>(const Tensor&, int64_t, int64_t)>
                                    keep) {
  amount.validate(name);
  return {.name = name, .type = PruningType::Structured, .dim = dim,
          .compute_mask = [=](const Tensor& t, const Tensor& default_mask) {
            int64_t d = wrap_structured_dim(t, dim, name);
            int64_t size = t.size(d);
            int64_t k = amount.units(size, fmt::format("{} channels along dim {}", size, d));
            if (k == 0) return default_mask;
            return channel_mask(t, d, keep(t, d, k), default_mask);
          }};
}

Method ln_structured_method(Amount amount, double n, int64_t dim) {
  return structured_method("ln_structured", amount, dim, [n](const Tensor& t, int64_t d,
                                                             int64_t k) {
    // Keep the size - k channels of largest norm (PyTorch: topk(norm, size - k)).
    std::vector<double> norms = channel_norms(t, d, n);
    int64_t size = (int64_t)norms.size();
    std::vector<int64_t> order(size);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return norms[a] > norms[b]; });
    std::vector<bool> keep(size, false);
    for (int64_t i = 0; i < size - k; i++) keep[order[i]] = true;
    return keep;
  });
}

Method random_structured_method(Amount amount, int64_t dim, Generator* g) {
  return structured_method("random_structured", amount, dim, [g](const Tensor& t, int64_t d,
                                                                 int64_t k) {
    std::vector<bool> keep(t.size(d), true);
    for (int64_t c : random_subset(t.size(d), k, g)) keep[c] = false;
    return keep;
  });
}

Method identity_method() {
  return {.name = "identity", .type = PruningType::Unstructured,
          .compute_mask = [](const Tensor&, const Tensor& default_mask) { return default_mask; }};
}

Method custom_from_mask_method(const Tensor& mask) {
  Tensor m = mask.detach().cpu().to(kFloat64).contiguous();
  return {.name = "custom_from_mask", .type = PruningType::Global,
          .compute_mask = [m](const Tensor& t, const Tensor& default_mask) {
            TB_CHECK(m.shape() == t.shape(), "custom_from_mask: the mask has shape {}, expected "
                     "the tensor's shape {}", shape_str(m.shape()), shape_str(t.shape()));
            return mul(default_mask, m);
          }};
}

// ---------------------------------------------------------------------------------------------
// Entry points

void l1_unstructured(nn::Module& module, const std::string& name, const L1Options& o) {
  o.amount.validate(fmt::format("prune::l1_unstructured('{}')", name));
  apply(module, name, l1_unstructured_method(o.amount), o.importance_scores);
}

void random_unstructured(nn::Module& module, const std::string& name, const RandomOptions& o) {
  o.amount.validate(fmt::format("prune::random_unstructured('{}')", name));
  apply(module, name, random_unstructured_method(o.amount, o.generator));
}

void ln_structured(nn::Module& module, const std::string& name, const LnStructuredOptions& o) {
  o.amount.validate(fmt::format("prune::ln_structured('{}')", name));
  TB_CHECK(!std::isnan(o.n), "prune::ln_structured('{}'): n is NaN", name);
  apply(module, name, ln_structured_method(o.amount, o.n, o.dim), o.importance_scores);
}

void random_structured(nn::Module& module, const std::string& name,
                       const RandomStructuredOptions& o) {
  o.amount.validate(fmt::format("prune::random_structured('{}')", name));
  apply(module, name, random_structured_method(o.amount, o.dim, o.generator));
}

void identity(nn::Module& module, const std::string& name) {
  apply(module, name, identity_method());
}

void custom_from_mask(nn::Module& module, const std::string& name, const Tensor& mask) {
  TB_CHECK(mask.defined(), "prune::custom_from_mask('{}'): the mask is undefined", name);
  apply(module, name, custom_from_mask_method(mask));
}

std::vector<std::string> prunable_weights(nn::Module& root) {
  std::vector<std::string> out;
  for (auto& [path, m] : root.named_modules()) {
    // Conv2d and Linear, and any other module whose "weight" parameter (or, when pruned,
    // "weight_orig") is a matrix or a filter bank: the QAT conv / linear of tb::quant, so masks
    // can be added to a model that prepare_qat() has already rewritten.
    std::string p = m->has_parameter("weight_orig") ? "weight_orig" : "weight";
    bool matrix_like = m->has_parameter(p) && m->get(p).dim() >= 2;
    if (dynamic_cast<nn::Conv2d*>(m) || dynamic_cast<nn::Linear*>(m) || matrix_like)
      out.push_back(path.empty() ? "weight" : path + ".weight");
  }
  return out;
}

// PyTorch's global_unstructured: one score vector over all tensors (the effective, masked
// weights unless scores are given), one mask vector (existing masks or ones), the method applied
// to the entries still unpruned, then custom_from_mask on each tensor's slice.
void global_unstructured(nn::Module& root, const std::vector<std::string>& names,
                         const GlobalOptions& o) {
  const char* method = o.method == GlobalMethod::L1 ? "l1" : "random";
  o.amount.validate(fmt::format("prune::global_unstructured({})", method));
  TB_CHECK(!names.empty(), "prune::global_unstructured: no tensors given");
  std::vector<double> scores, mask;
  std::vector<Shape> shapes;
  for (auto& path : names) {
    size_t dot = path.rfind('.');
    nn::Module& m = dot == std::string::npos ? root : root.get_submodule(path.substr(0, dot));
    std::string name = dot == std::string::npos ? path : path.substr(dot + 1);
    bool pruned = m.has_parameter(name + "_orig") && m.has_buffer(name + "_mask");
    TB_CHECK(pruned || m.has_parameter(name),
             "prune::global_unstructured: '{}': {} has no parameter '{}'", path, m.type_name(),
             name);
    Tensor w = m.get(name);
    Tensor s = w;
    if (auto it = o.importance_scores.find(path); it != o.importance_scores.end()) {
      s = it->second;
      TB_CHECK(s.shape() == w.shape(), "prune::global_unstructured: importance_scores of '{}' "
               "have shape {}, expected {}", path, shape_str(s.shape()), shape_str(w.shape()));
    }
    std::vector<double> sv = s.detach().cpu().to_vector();
    scores.insert(scores.end(), sv.begin(), sv.end());
    if (pruned) {
      std::vector<double> mv = m.get(name + "_mask").detach().cpu().to_vector();
      mask.insert(mask.end(), mv.begin(), mv.end());
    } else {
      mask.insert(mask.end(), sv.size(), 1.0);
    }
    shapes.push_back(w.shape());
  }
  // The container's unstructured slice: entries whose mask is 1.
  std::vector<int64_t> idx;
  std::vector<double> alive;
  for (size_t i = 0; i < mask.size(); i++)
    if (mask[i] == 1) {
      idx.push_back((int64_t)i);
      alive.push_back(scores[i]);
    }
  Method m = o.method == GlobalMethod::L1 ? l1_unstructured_method(o.amount)
                                          : random_unstructured_method(o.amount, o.generator);
  Tensor partial;
  try {
    partial = m.compute_mask(from_vector(alive, {(int64_t)alive.size()}),
                             ones({(int64_t)alive.size()}, kFloat64));
  } catch (const Error& e) {
    throw Error(fmt::format("prune::global_unstructured({}) over {} tensors ({} entries, {} "
                            "unpruned): {}", method, names.size(), mask.size(), alive.size(),
                            e.what()));
  }
  std::vector<double> pv = partial.to_vector();
  for (size_t i = 0; i < idx.size(); i++) mask[idx[i]] = pv[i];
  int64_t offset = 0;
  for (size_t i = 0; i < names.size(); i++) {
    int64_t n = numel_of(shapes[i]);
    std::vector<double> slice(mask.begin() + offset, mask.begin() + offset + n);
    custom_from_mask(root, names[i], from_vector(slice, shapes[i]));
    offset += n;
  }
}

} // namespace tb::prune
