// Pruning masks: the reparametrization weight = weight_orig * weight_mask (torch.nn.utils.prune's),
// the forward-pre hook that recomputes it, composition of a new method with an existing mask
// (PyTorch's PruningContainer.compute_mask), remove(), is_pruned(), amounts.
#include <tb/prune.h>

#include <cfenv>
#include <cmath>
#include <mutex>
#include <unordered_map>

namespace tb::prune {

// ---------------------------------------------------------------------------------------------
// Amounts

void Amount::validate(const std::string& what) const {
  if (is_count)
    TB_CHECK(value >= 0, "{}amount={} should be a non-negative count or a fraction in [0, 1]",
             what.empty() ? "" : what + ": ", (int64_t)value);
  else
    TB_CHECK(value >= 0.0 && value <= 1.0,
             "{}amount={} should be a fraction in [0, 1] or a non-negative count",
             what.empty() ? "" : what + ": ", value);
}

// Python's round(amount * n): half to even on the double product (0.3 * 15 = 4.5 -> 4).
int64_t Amount::units(int64_t n, const std::string& what) const {
  validate(what);
  int64_t k;
  if (is_count) {
    k = (int64_t)value;
  } else {
    int mode = std::fegetround();
    std::fesetround(FE_TONEAREST);
    k = (int64_t)std::nearbyint(value * (double)n);
    std::fesetround(mode);
  }
  TB_CHECK(k <= n, "{}amount={} should be at most the number of units left to prune ({})",
           what.empty() ? "" : what + ": ", (int64_t)value, n);
  return k;
}

std::string Amount::str() const {
  return is_count ? fmt::format("{} (count)", (int64_t)value) : fmt::format("{}", value);
}

// ---------------------------------------------------------------------------------------------
// Where a tensor lives

namespace {

struct Target {
  nn::Module* module;
  std::string name; // the tensor's name inside module
};

Target resolve(nn::Module& root, const std::string& path) {
  size_t dot = path.rfind('.');
  if (dot == std::string::npos) return {&root, path};
  return {&root.get_submodule(path.substr(0, dot)), path.substr(dot + 1)};
}

bool pruned_here(const nn::Module& m, const std::string& name) {
  return m.has_parameter(name + "_orig") && m.has_buffer(name + "_mask");
}

std::string param_names(const nn::Module& m) {
  std::string s;
  for (auto& [n, t] : m.named_parameters(false)) s += (s.empty() ? "" : ", ") + n;
  return s.empty() ? "none" : s;
}

// The effective tensor `name` = orig * mask. A non-persistent buffer until nn can delete plain
// attributes (see prune.h): forward finds it by name as it would find the parameter.
void set_effective(nn::Module& m, const std::string& name, const Tensor& value) {
  if (m.has_buffer(name)) m.set_tensor(name, value);
  else m.register_buffer(name, value, {.persistent = false});
}

Tensor effective(const Tensor& orig, const Tensor& mask) {
  return mul(orig, mask.dtype() == orig.dtype() ? mask : mask.to(orig.dtype()));
}

// One hook per module recomputes every pruned tensor of the module it runs on, so it also works
// on clones (which copy hooks). The registry remembers the handle to remove it with the last
// mask; a handle whose module died reads as inactive, so a reused address is harmless.
std::mutex registry_mutex;
std::unordered_map<const nn::Module*, nn::HookHandle> registry;

void recompute(nn::Module& m) {
  for (auto& [pname, orig] : m.named_parameters(false)) {
    if (pname.size() <= 5 || pname.compare(pname.size() - 5, 5, "_orig") != 0) continue;
    std::string base = pname.substr(0, pname.size() - 5);
    if (!m.has_buffer(base + "_mask")) continue;
    set_effective(m, base, effective(orig, m.get(base + "_mask")));
  }
}

bool any_pruned_here(const nn::Module& m) {
  for (auto& [pname, t] : m.named_parameters(false))
    if (pname.size() > 5 && pname.compare(pname.size() - 5, 5, "_orig") == 0 &&
        m.has_buffer(pname.substr(0, pname.size() - 5) + "_mask"))
      return true;
  return false;
}

// `had_pruned`: the module held a pruned tensor before this call, so it carries the hook (ours,
// or a copy made by clone()).
void ensure_hook(nn::Module& m, bool had_pruned) {
  std::lock_guard<std::mutex> lock(registry_mutex);
  auto it = registry.find(&m);
  if (it != registry.end() && it->second.active()) return;
  if (had_pruned) return; // a clone: its copied hook is already there
  registry[&m] = m.register_forward_pre_hook(
      [](nn::Module& mod, const std::vector<Tensor>&) { recompute(mod); });
}

void drop_hook_if_unused(nn::Module& m) {
  if (any_pruned_here(m)) return;
  std::lock_guard<std::mutex> lock(registry_mutex);
  auto it = registry.find(&m);
  if (it == registry.end()) return; // a clone's hook stays, inert: it finds nothing to recompute
  it->second.remove();
  registry.erase(it);
}

// Indices of elements whose channel along `dim` is in `keep` (row-major order), for the
// structured slice of an existing mask.
std::vector<int64_t> elements_of_channels(const Shape& shape, int64_t dim,
                                          const std::vector<bool>& keep) {
  int64_t inner = 1;
  for (size_t d = dim + 1; d < shape.size(); d++) inner *= shape[d];
  int64_t n = numel_of(shape), size = shape[dim];
  std::vector<int64_t> idx;
  for (int64_t i = 0; i < n; i++)
    if (keep[(i / inner) % size]) idx.push_back(i);
  return idx;
}

Tensor gather_flat(const Tensor& t, const std::vector<int64_t>& idx, const Shape& shape) {
  std::vector<double> v = t.to_vector(), out(idx.size());
  for (size_t i = 0; i < idx.size(); i++) out[i] = v[idx[i]];
  return from_vector(out, shape).to(t.dtype());
}

} // namespace

// ---------------------------------------------------------------------------------------------
// apply: PyTorch's BasePruningMethod.apply + PruningContainer.compute_mask

void apply(nn::Module& root, const std::string& path, const Method& method,
           const Tensor& importance_scores) {
  TB_CHECK(method.compute_mask, "prune::apply('{}'): method '{}' has no compute_mask", path,
           method.name);
  Target tg = resolve(root, path);
  nn::Module& m = *tg.module;
  const std::string& name = tg.name;
  bool pruned = pruned_here(m, name);
  bool had_pruned = any_pruned_here(m);
  TB_CHECK(pruned || m.has_parameter(name),
           "prune::{}('{}'): {} has no parameter '{}' (parameters: {})", method.name, path,
           m.type_name(), name, param_names(m));
  Tensor orig = pruned ? m.get(name + "_orig") : m.get(name);
  std::string what = fmt::format("prune::{}('{}' {})", method.name, path, shape_str(orig.shape()));
  TB_CHECK(is_floating(orig.dtype()), "{}: only floating tensors can be pruned, got {}", what,
           orig.dtype());
  // Default scores: the tensor as the module holds it, i.e. the effective orig * mask when
  // already pruned (PyTorch's getattr(module, name)), so pruned entries score zero.
  Tensor scores = importance_scores.defined() ? importance_scores : m.get(name);
  TB_CHECK(scores.shape() == orig.shape(),
           "{}: importance_scores have shape {}, expected the tensor's shape {}", what,
           shape_str(scores.shape()), shape_str(orig.shape()));
  scores = scores.detach().cpu().to(kFloat64).contiguous();

  Tensor new_mask;
  try {
    if (!pruned) {
      // First pruning: the method sees the whole tensor and a mask of ones.
      new_mask = method.compute_mask(scores, ones(orig.shape(), kFloat64));
    } else {
      Tensor mask = m.get(name + "_mask").detach().cpu().to(kFloat64).contiguous();
      TB_CHECK(mask.shape() == orig.shape(), "{}: the existing mask has shape {}, the tensor {}",
               what, shape_str(mask.shape()), shape_str(orig.shape()));
      std::vector<double> mv = mask.to_vector();
      std::vector<int64_t> idx; // the slice the new method acts on
      Shape sub_shape;
      if (method.type == PruningType::Unstructured) {
        for (size_t i = 0; i < mv.size(); i++)
          if (mv[i] == 1) idx.push_back((int64_t)i);
        sub_shape = {(int64_t)idx.size()};
      } else if (method.type == PruningType::Structured) {
        int64_t nd = orig.dim();
        TB_CHECK(nd >= 2, "{}: structured pruning needs a tensor of at least 2 dims", what);
        TB_CHECK(method.dim >= -nd && method.dim < nd,
                 "{}: dim {} is out of range for a {}-dim tensor (expected -{} <= dim < {})", what,
                 method.dim, nd, nd, nd);
        int64_t dim = method.dim < 0 ? method.dim + nd : method.dim;
        // Channels not yet entirely zero.
        Shape sh = orig.shape();
        int64_t inner = 1;
        for (int64_t d = dim + 1; d < nd; d++) inner *= sh[d];
        std::vector<bool> alive(sh[dim], false);
        for (size_t i = 0; i < mv.size(); i++)
          if (mv[i] != 0) alive[(i / inner) % sh[dim]] = true;
        idx = elements_of_channels(sh, dim, alive);
        sub_shape = sh;
        sub_shape[dim] = 0;
        for (bool a : alive) sub_shape[dim] += a;
      } else {
        for (size_t i = 0; i < mv.size(); i++) idx.push_back((int64_t)i);
        sub_shape = orig.shape();
      }
      Tensor partial = method.compute_mask(gather_flat(scores, idx, sub_shape),
                                           gather_flat(mask, idx, sub_shape));
      TB_CHECK(partial.defined() && partial.shape() == sub_shape,
               "{}: compute_mask returned shape {}, expected {}", what,
               partial.defined() ? shape_str(partial.shape()) : "undefined", shape_str(sub_shape));
      std::vector<double> pv = partial.to_vector();
      for (size_t i = 0; i < idx.size(); i++) mv[idx[i]] = pv[i];
      new_mask = from_vector(mv, orig.shape());
    }
  } catch (const Error& e) {
    std::string msg = e.what();
    if (msg.rfind("prune::", 0) == 0) throw;
    throw Error(fmt::format("{}: {}", what, msg));
  }
  TB_CHECK(new_mask.defined() && new_mask.shape() == orig.shape(),
           "{}: compute_mask returned shape {}, expected {}", what,
           new_mask.defined() ? shape_str(new_mask.shape()) : "undefined",
           shape_str(orig.shape()));
  new_mask = new_mask.to(orig.dtype()).to(orig.device()).contiguous();

  // Reparametrize (first time) or replace the mask. Only now does the module change.
  no_grad guard;
  if (!pruned) {
    Tensor p = m.remove_parameter(name);
    m.register_parameter(name + "_orig", p);
    m.register_buffer(name + "_mask", new_mask);
  } else {
    m.set_tensor(name + "_mask", new_mask);
  }
  {
    enable_grad g; // as PyTorch's apply: the effective tensor is set at once
    set_effective(m, name, effective(orig, new_mask));
  }
  ensure_hook(m, had_pruned);
}

// ---------------------------------------------------------------------------------------------
// remove, is_pruned, reparametrize_like

void remove(nn::Module& root, const std::string& path) {
  Target tg = resolve(root, path);
  nn::Module& m = *tg.module;
  const std::string& name = tg.name;
  TB_CHECK(pruned_here(m, name),
           "prune::remove('{}'): {} has no pruned tensor '{}' (it needs parameter '{}_orig' and "
           "buffer '{}_mask'; parameters: {})", path, m.type_name(), name, name, name,
           param_names(m));
  no_grad guard;
  Tensor mask = m.remove_buffer(name + "_mask");
  Tensor orig = m.remove_parameter(name + "_orig");
  if (m.has_buffer(name)) m.remove_buffer(name);
  orig.mul_(mask.to(orig.dtype())); // same tensor object: optimizers keep following it
  m.register_parameter(name, orig);
  drop_hook_if_unused(m);
}

std::vector<std::string> pruned_tensors(nn::Module& root) {
  std::vector<std::string> out;
  for (auto& [mpath, m] : root.named_modules())
    for (auto& [pname, t] : m->named_parameters(false)) {
      if (pname.size() <= 5 || pname.compare(pname.size() - 5, 5, "_orig") != 0) continue;
      std::string base = pname.substr(0, pname.size() - 5);
      if (m->has_buffer(base + "_mask")) out.push_back(mpath.empty() ? base : mpath + "." + base);
    }
  return out;
}

std::vector<std::string> remove_all(nn::Module& root) {
  std::vector<std::string> names = pruned_tensors(root);
  for (auto& n : names) remove(root, n);
  return names;
}

bool is_pruned(nn::Module& module) { return !pruned_tensors(module).empty(); }

bool is_pruned(nn::Module& root, const std::string& path) {
  Target tg = resolve(root, path);
  return pruned_here(*tg.module, tg.name);
}

void reparametrize_like(nn::Module& root, const StateDict& dict) {
  for (auto& [key, t] : dict) {
    if (key.size() <= 5 || key.compare(key.size() - 5, 5, "_orig") != 0) continue;
    std::string base = key.substr(0, key.size() - 5);
    if (!dict.contains(base + "_mask")) continue;
    if (!is_pruned(root, base)) identity(root, base);
  }
}

} // namespace tb::prune
