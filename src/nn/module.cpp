// nn::Module: named parameters / buffers / children in insertion order, hooks, train/eval,
// to(device/dtype) by swapping data inside the same TensorImpl, surgery (paths, set_data,
// clone), state_dict and its loading.
#include <tb/nn.h>

#include <algorithm>
#include <typeinfo>
#include <unordered_map>
#include <unordered_set>

namespace tb::nn {

// ---------------------------------------------------------------------------------------------
// Hooks

namespace {
// A copy of list l without the hook `id`, or with `fn` appended as `id`.
template <class Fn>
std::shared_ptr<const std::vector<std::pair<int, Fn>>> without(
    const std::shared_ptr<const std::vector<std::pair<int, Fn>>>& l, int id) {
  auto v = std::make_shared<std::vector<std::pair<int, Fn>>>();
  if (l)
    for (const auto& h : *l)
      if (h.first != id) v->push_back(h);
  return v;
}
template <class Fn>
std::shared_ptr<const std::vector<std::pair<int, Fn>>> with(
    const std::shared_ptr<const std::vector<std::pair<int, Fn>>>& l, int id, Fn fn) {
  auto v = std::make_shared<std::vector<std::pair<int, Fn>>>();
  if (l) *v = *l;
  v->emplace_back(id, std::move(fn));
  return v;
}
template <class L> bool has(const L& l, int id) {
  return l && std::any_of(l->begin(), l->end(), [&](auto& h) { return h.first == id; });
}
} // namespace

void HookHandle::remove() {
  auto lists = lists_.lock();
  if (!lists) return;
  if (pre_)
    lists->pre = without(lists->pre, id_);
  else
    lists->post = without(lists->post, id_);
  lists_.reset();
}

bool HookHandle::active() const {
  auto lists = lists_.lock();
  return lists && (pre_ ? has(lists->pre, id_) : has(lists->post, id_));
}

Module::Module() : hooks_(std::make_shared<detail::HookLists>()) {}

// A shallow copy shares tensors and children (clone() replaces them next) but gets hook lists
// of its own, so removing a hook from one module never touches the other.
Module::Module(const Module& o)
    : training_(o.training_), params_(o.params_), buffers_(o.buffers_), attrs_(o.attrs_),
      non_persistent_(o.non_persistent_), sized_on_first_use_(o.sized_on_first_use_),
      children_(o.children_), hooks_(std::make_shared<detail::HookLists>(*o.hooks_)) {}

HookHandle Module::add_pre_hook(ForwardPreHook fn) {
  TB_CHECK(fn, "{}::register_forward_pre_hook: empty function", type_name());
  int id = hooks_->next_id++;
  hooks_->pre = with(hooks_->pre, id, std::move(fn));
  return HookHandle(hooks_, id, true);
}

HookHandle Module::add_hook(ForwardHook fn) {
  TB_CHECK(fn, "{}::register_forward_hook: empty function", type_name());
  int id = hooks_->next_id++;
  hooks_->post = with(hooks_->post, id, std::move(fn));
  return HookHandle(hooks_, id, false);
}

Tensor Module::forward(const Tensor&) {
  throw Error(fmt::format("{}: this module has no forward for one input (override forward(x), "
                          "or forward_list(xs) for a module of several inputs)", type_name()));
}

Tensor Module::forward_list(const std::vector<Tensor>& xs) {
  TB_CHECK(xs.size() == 1, "{}: takes one input, got {}", type_name(), xs.size());
  return forward(xs[0]);
}

Tensor Module::operator()(const Tensor& x) { return (*this)(std::vector<Tensor>{x}); }
Tensor Module::operator()(const Tensor& a, const Tensor& b) {
  return (*this)(std::vector<Tensor>{a, b});
}

// Runs the hooks of the lists as they were when the call began (each list is immutable, so
// holding its pointer is the snapshot); the inputs are copied only if a pre-hook replaces them.
Tensor Module::operator()(const std::vector<Tensor>& xs) {
  const std::vector<Tensor>* in = &xs;
  std::vector<Tensor> replaced;
  if (auto pre = hooks_->pre; pre && !pre->empty()) {
    for (auto& [id, fn] : *pre) {
      std::vector<Tensor> r = fn(*this, *in);
      if (!r.empty()) replaced = std::move(r), in = &replaced;
    }
  }
  Tensor out = forward_list(*in);
  if (auto post = hooks_->post; post && !post->empty()) {
    for (auto& [id, fn] : *post) {
      Tensor r = fn(*this, *in, out);
      if (r.defined()) out = r;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Registration and lookup

namespace {
using Entries = std::vector<std::pair<std::string, Tensor>>;

Entries::iterator find_entry(Entries& v, std::string_view name) {
  return std::find_if(v.begin(), v.end(), [&](auto& e) { return e.first == name; });
}
Entries::const_iterator find_entry(const Entries& v, std::string_view name) {
  return std::find_if(v.begin(), v.end(), [&](auto& e) { return e.first == name; });
}
} // namespace

void Module::check_new_name(const char* what, const std::string& name) const {
  TB_CHECK(!name.empty(), "{}::{}: empty name", type_name(), what);
  TB_CHECK(name.find('.') == std::string::npos, "{}::{}: name '{}' must not contain '.'",
           type_name(), what, name);
  bool taken = find_entry(params_, name) != params_.end() ||
               find_entry(buffers_, name) != buffers_.end() ||
               find_entry(attrs_, name) != attrs_.end() ||
               std::any_of(children_.begin(), children_.end(),
                           [&](auto& c) { return c.first == name; });
  TB_CHECK(!taken, "{}::{}: '{}' already exists in this module", type_name(), what, name);
}

Tensor Module::register_parameter(const std::string& name, const Tensor& t) {
  check_new_name("register_parameter", name);
  TB_CHECK(t.defined(), "{}::register_parameter: '{}' is undefined", type_name(), name);
  TB_CHECK(t.is_leaf(), "{}::register_parameter: '{}' has autograd history (grad_fn {}); "
           "parameters must be leaves (use detach())", type_name(), name,
           t.grad_fn() ? t.grad_fn()->name : "?");
  TB_CHECK(is_floating(t.dtype()), "{}::register_parameter: '{}' has dtype {}; only floating "
           "tensors can require gradients", type_name(), name, t.dtype());
  Tensor p = t;
  p.requires_grad_(true);
  params_.emplace_back(name, p);
  return p;
}

Tensor Module::register_buffer(const std::string& name, const Tensor& t, BufferOptions o) {
  check_new_name("register_buffer", name);
  TB_CHECK(t.defined(), "{}::register_buffer: '{}' is undefined", type_name(), name);
  buffers_.emplace_back(name, t);
  if (!o.persistent) non_persistent_.push_back(name);
  if (o.sized_on_first_use) sized_on_first_use_.push_back(name);
  return t;
}

void Module::register_child(const std::string& name, ModulePtr m) {
  check_new_name("register_module", name);
  TB_CHECK(m != nullptr, "{}::register_module: '{}' is null", type_name(), name);
  TB_CHECK(m.get() != this, "{}::register_module: a module cannot be its own child", type_name());
  children_.emplace_back(name, std::move(m));
}

Tensor Module::remove_parameter(const std::string& name) {
  auto it = find_entry(params_, name);
  TB_CHECK(it != params_.end(), "{}::remove_parameter: no parameter '{}'", type_name(), name);
  Tensor t = it->second;
  params_.erase(it);
  return t;
}

Tensor Module::remove_buffer(const std::string& name) {
  auto it = find_entry(buffers_, name);
  TB_CHECK(it != buffers_.end(), "{}::remove_buffer: no buffer '{}'", type_name(), name);
  Tensor t = it->second;
  buffers_.erase(it);
  std::erase(non_persistent_, name);
  std::erase(sized_on_first_use_, name);
  return t;
}

void Module::set_tensor(const std::string& name, const Tensor& t) {
  TB_CHECK(find_entry(params_, name) == params_.end(), "{}::set_tensor: '{}' is a parameter; "
           "give it new data with set_data, or remove_parameter() it first", type_name(), name);
  if (auto it = find_entry(buffers_, name); it != buffers_.end()) {
    it->second = t;
    return;
  }
  if (auto it = find_entry(attrs_, name); it != attrs_.end()) {
    it->second = t;
    return;
  }
  check_new_name("set_tensor", name);
  attrs_.emplace_back(name, t);
}

void Module::set_module(const std::string& name, ModulePtr m) {
  TB_CHECK(m != nullptr, "{}::set_module: '{}' is null", type_name(), name);
  for (auto& c : children_)
    if (c.first == name) {
      c.second = std::move(m);
      return;
    }
  register_child(name, std::move(m));
}

Tensor Module::find(std::string_view name) const {
  if (auto it = find_entry(params_, name); it != params_.end()) return it->second;
  if (auto it = find_entry(buffers_, name); it != buffers_.end()) return it->second;
  if (auto it = find_entry(attrs_, name); it != attrs_.end()) return it->second;
  return Tensor();
}

Tensor Module::get(std::string_view name) const {
  Tensor t = find(name);
  TB_CHECK(t.defined(), "{}: no parameter, buffer or tensor attribute named '{}'", type_name(),
           name);
  return t;
}

bool Module::has_parameter(std::string_view name) const {
  return find_entry(params_, name) != params_.end();
}
bool Module::has_buffer(std::string_view name) const {
  return find_entry(buffers_, name) != buffers_.end();
}
bool Module::has_child(std::string_view name) const {
  for (auto& c : children_)
    if (c.first == name) return true;
  return false;
}

namespace {
std::string child_names(const Module& m) {
  std::string s;
  for (auto& [name, c] : m.named_children()) s += (s.empty() ? "" : ", ") + name;
  return s.empty() ? "none" : s;
}
} // namespace

ModulePtr Module::child(std::string_view name) const {
  for (auto& c : children_)
    if (c.first == name) return c.second;
  throw Error(fmt::format("{}: no child module named '{}' (children: {})", type_name(), name,
                          child_names(*this)));
}

// ---------------------------------------------------------------------------------------------
// Surgery

namespace {
std::vector<std::string> split_path(const std::string& path) {
  std::vector<std::string> parts;
  if (path.empty()) return parts;
  size_t start = 0;
  while (true) {
    size_t dot = path.find('.', start);
    parts.push_back(path.substr(start, dot == std::string::npos ? std::string::npos : dot - start));
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return parts;
}

// Walks `parts[0 .. n)` from `root`; errors name the whole path, the part that failed and what
// exists there.
Module& walk_path(Module& root, const std::vector<std::string>& parts, size_t n, const char* op,
                  const std::string& path) {
  Module* m = &root;
  std::string at; // the path walked so far
  for (size_t i = 0; i < n; i++) {
    TB_CHECK(m->has_child(parts[i]), "{}('{}'): {} ({}) has no child '{}' (children: {})", op,
             path, at.empty() ? "the root module" : "'" + at + "'", m->type_name(), parts[i],
             child_names(*m));
    m = m->child(parts[i]).get();
    at += (at.empty() ? "" : ".") + parts[i];
  }
  return *m;
}
} // namespace

Module& Module::get_submodule(const std::string& path) {
  auto parts = split_path(path);
  return walk_path(*this, parts, parts.size(), "get_submodule", path);
}

ModulePtr Module::set_submodule(const std::string& path, ModulePtr m) {
  TB_CHECK(!path.empty(), "set_submodule: empty path (a module cannot replace itself)");
  TB_CHECK(m != nullptr, "set_submodule('{}'): the new module is null", path);
  auto parts = split_path(path);
  walk_path(*this, parts, parts.size(), "set_submodule", path); // the whole path must exist
  Module& parent = walk_path(*this, parts, parts.size() - 1, "set_submodule", path);
  ModulePtr old;
  for (auto& c : parent.children_)
    if (c.first == parts.back()) {
      old = c.second;
      c.second = std::move(m);
    }
  return old;
}

namespace {
// Puts `data`'s storage, sizes, strides and dtype into t's own TensorImpl, so every handle to t
// sees the new data (see the design note in nn.h). A live graph may still hold the leaf's
// AccumulateGrad node, which remembers the old dtype, device and shape: forget it so the next
// forward makes one for the new data.
void swap_impl_data(const Tensor& t, const Tensor& data) {
  TensorImpl& dst = *t.impl();
  const TensorImpl& src = *data.impl();
  if (&dst != &src) {
    dst.storage = src.storage;
    dst.sizes = src.sizes;
    dst.strides = src.strides;
    dst.offset = src.offset;
    dst.dtype = src.dtype;
  }
  if (dst.autograd) dst.autograd->grad_accumulator.reset();
}
} // namespace

void Module::set_data(const std::string& path, const Tensor& data) {
  auto parts = split_path(path);
  TB_CHECK(!parts.empty(), "set_data: empty path (expected 'module.path.tensor_name')");
  Module& m = walk_path(*this, parts, parts.size() - 1, "set_data", path);
  const std::string& name = parts.back();
  auto p = find_entry(m.params_, name);
  auto b = find_entry(m.buffers_, name);
  TB_CHECK(p != m.params_.end() || b != m.buffers_.end(),
           "set_data('{}'): {} has no parameter or buffer '{}'", path, m.type_name(), name);
  Tensor t = p != m.params_.end() ? p->second : b->second;
  TB_CHECK(data.defined(), "set_data('{}'): the new data is undefined", path);
  TB_CHECK(data.dtype() == t.dtype() && data.device() == t.device(),
           "set_data('{}'): expected dtype {} on {} (those of the tensor it replaces), got {} on "
           "{} with shape {}", path, t.dtype(), t.device().str(), data.dtype(),
           data.device().str(), shape_str(data.shape()));
  no_grad guard;
  Tensor copy = data.detach().clone(); // a storage of its own; keeps a dense layout
  swap_impl_data(t, copy);
  if (t.impl()->autograd) t.impl()->autograd->grad = Tensor();
  t.bump_version();
}

// clone(): a shallow copy of every module, then fresh copies of its tensors and children. The
// maps keep sharing inside the tree: a tensor (or module) met twice is copied once.
struct CloneContext {
  std::unordered_map<const TensorImpl*, Tensor> tensors;
  std::unordered_map<const Module*, ModulePtr> modules;

  Tensor copy_tensor(const Tensor& t) {
    if (!t.defined()) return t;
    auto it = tensors.find(t.impl().get());
    if (it != tensors.end()) return it->second;
    Tensor c = t.detach().clone();
    if (t.requires_grad()) c.requires_grad_(true);
    tensors.emplace(t.impl().get(), c);
    return c;
  }

  ModulePtr copy_module(const Module& m) {
    auto it = modules.find(&m);
    if (it != modules.end()) return it->second;
    ModulePtr c = m.shallow_copy();
    TB_CHECK(c && typeid(*c) == typeid(m), "clone: module class {} (type_name '{}') has no "
             "shallow_copy of its own; add TB_MODULE({}) to its declaration",
             typeid(m).name(), m.type_name(), m.type_name());
    modules.emplace(&m, c);
    for (auto& [name, t] : c->params_) t = copy_tensor(t);
    for (auto& [name, t] : c->buffers_) t = copy_tensor(t);
    for (auto& [name, t] : c->attrs_) t = copy_tensor(t);
    for (auto& [name, child] : c->children_) child = copy_module(*child);
    return c;
  }
};

ModulePtr Module::clone() const {
  no_grad guard;
  CloneContext ctx;
  return ctx.copy_module(*this);
}

// ---------------------------------------------------------------------------------------------
// Traversal

namespace {
// Pre-order walk of (prefix, module), own entries before children, as PyTorch's named_modules.
template <class Fn>
void walk(const Module& m, const std::string& prefix, Fn&& fn) {
  fn(prefix, m);
  for (auto& [name, c] : m.named_children()) walk(*c, prefix + name + ".", fn);
}
} // namespace

std::vector<std::pair<std::string, Tensor>> Module::named_parameters(bool recurse) const {
  std::vector<std::pair<std::string, Tensor>> out;
  std::unordered_set<const TensorImpl*> seen;
  auto add = [&](const std::string& prefix, const Module& m) {
    for (auto& [name, t] : m.params_)
      if (seen.insert(t.impl().get()).second) out.emplace_back(prefix + name, t);
  };
  if (recurse) walk(*this, "", add);
  else add("", *this);
  return out;
}

std::vector<Tensor> Module::parameters(bool recurse) const {
  std::vector<Tensor> out;
  for (auto& [name, t] : named_parameters(recurse)) out.push_back(t);
  return out;
}

std::vector<std::pair<std::string, Tensor>> Module::named_buffers(bool recurse) const {
  std::vector<std::pair<std::string, Tensor>> out;
  std::unordered_set<const TensorImpl*> seen;
  auto add = [&](const std::string& prefix, const Module& m) {
    for (auto& [name, t] : m.buffers_)
      if (seen.insert(t.impl().get()).second) out.emplace_back(prefix + name, t);
  };
  if (recurse) walk(*this, "", add);
  else add("", *this);
  return out;
}

std::vector<Tensor> Module::buffers(bool recurse) const {
  std::vector<Tensor> out;
  for (auto& [name, t] : named_buffers(recurse)) out.push_back(t);
  return out;
}

std::vector<ModulePtr> Module::children() const {
  std::vector<ModulePtr> out;
  for (auto& [name, c] : children_) out.push_back(c);
  return out;
}

std::vector<std::pair<std::string, Module*>> Module::named_modules() {
  std::vector<std::pair<std::string, Module*>> out;
  std::unordered_set<const Module*> seen;
  walk(*this, "", [&](const std::string& prefix, const Module& m) {
    if (!seen.insert(&m).second) return;
    std::string name = prefix.empty() ? "" : prefix.substr(0, prefix.size() - 1);
    out.emplace_back(name, const_cast<Module*>(&m));
  });
  return out;
}

std::vector<Module*> Module::modules() {
  std::vector<Module*> out;
  for (auto& [name, m] : named_modules()) out.push_back(m);
  return out;
}

void Module::apply(const std::function<void(Module&)>& fn) {
  for (auto& [name, c] : children_) c->apply(fn);
  fn(*this);
}

int64_t Module::num_parameters() const {
  int64_t n = 0;
  for (auto& p : parameters()) n += p.numel();
  return n;
}

// ---------------------------------------------------------------------------------------------
// Mode and placement

Module& Module::train(bool on) {
  training_ = on;
  for (auto& [name, c] : children_) c->train(on);
  return *this;
}

template <class Fn>
void Module::for_each_tensor(Fn&& fn) {
  for (auto& [name, t] : params_) fn(t);
  for (auto& [name, t] : buffers_) fn(t);
  for (auto& [name, t] : attrs_) fn(t);
  for (auto& [name, c] : children_) c->for_each_tensor(fn);
}

namespace {
// Converts t's data (and gradient) with `convert`, keeping t's identity.
template <class Convert>
void swap_data(Tensor& t, Convert&& convert) {
  if (!t.defined()) return;
  Tensor grad = t.impl()->autograd ? t.impl()->autograd->grad : Tensor();
  swap_impl_data(t, convert(t.detach()));
  if (grad.defined()) t.impl()->autograd->grad = convert(grad);
}
} // namespace

Module& Module::to(Device d) {
  no_grad guard;
  for_each_tensor([&](Tensor& t) { swap_data(t, [&](const Tensor& x) { return x.to(d); }); });
  return *this;
}

Module& Module::to(DType dt) {
  no_grad guard;
  for_each_tensor([&](Tensor& t) {
    if (t.defined() && is_floating(t.dtype()))
      swap_data(t, [&](const Tensor& x) { return x.to(dt); });
  });
  return *this;
}

void Module::zero_grad(bool set_to_none) {
  no_grad guard;
  for (auto& p : parameters()) {
    auto& meta = p.impl()->autograd;
    if (!meta || !meta->grad.defined()) continue;
    if (set_to_none) meta->grad = Tensor();
    else meta->grad.zero_();
  }
}

// ---------------------------------------------------------------------------------------------
// state_dict

void Module::collect_state(const std::string& prefix, StateDict& out,
                           std::unordered_map<std::string, Tensor>* sized) const {
  auto contains = [](const std::vector<std::string>& v, const std::string& n) {
    return std::find(v.begin(), v.end(), n) != v.end();
  };
  for (auto& [name, t] : params_) out.insert(prefix + name, t.detach());
  for (auto& [name, t] : buffers_) {
    if (contains(non_persistent_, name)) continue;
    out.insert(prefix + name, t.detach());
    if (sized && contains(sized_on_first_use_, name)) sized->emplace(prefix + name, t);
  }
  for (auto& [name, c] : children_) c->collect_state(prefix + name + ".", out, sized);
}

StateDict Module::state_dict() const {
  StateDict out;
  collect_state("", out);
  return out;
}

LoadResult Module::load_state_dict(const StateDict& dict, bool strict) {
  StateDict own; // detached handles sharing storage with the live tensors
  std::unordered_map<std::string, Tensor> sized; // buffers sized on first use, by key
  collect_state("", own, &sized);
  LoadResult result;
  std::vector<std::string> errors;
  for (auto& [key, dst] : own) {
    const Tensor* src = dict.find(key);
    if (!src) {
      result.missing_keys.push_back(key);
      continue;
    }
    if (!src->defined()) {
      errors.push_back(fmt::format("'{}': the checkpoint's tensor is undefined", key));
      continue;
    }
    if (src->shape() != dst.shape() && !sized.count(key))
      errors.push_back(fmt::format("size mismatch for '{}': checkpoint has shape {}, the model {} "
                                   "(not a buffer sized on first use)",
                                   key, shape_str(src->shape()), shape_str(dst.shape())));
    if (src->dtype() != dst.dtype())
      errors.push_back(fmt::format("dtype mismatch for '{}': checkpoint has {}, the model {}", key,
                                   src->dtype(), dst.dtype()));
  }
  for (auto& [key, t] : dict)
    if (!own.contains(key)) result.unexpected_keys.push_back(key);

  auto join = [](const std::vector<std::string>& v) {
    std::string s;
    for (auto& k : v) s += (s.empty() ? "'" : ", '") + k + "'";
    return s;
  };
  if (strict && !result.missing_keys.empty())
    errors.push_back(fmt::format("missing keys: {}", join(result.missing_keys)));
  if (strict && !result.unexpected_keys.empty())
    errors.push_back(fmt::format("unexpected keys: {}", join(result.unexpected_keys)));
  if (!errors.empty()) {
    std::string msg = fmt::format("load_state_dict: {} error(s) loading the state_dict of {}:",
                                  errors.size(), type_name());
    for (auto& e : errors) msg += "\n  " + e;
    throw Error(msg);
  }

  no_grad guard;
  for (auto& [key, dst] : own)
    if (const Tensor* src = dict.find(key)) {
      Tensor d = dst;
      if (src->shape() != dst.shape()) { // a buffer sized on first use takes the new shape
        Tensor live = sized.at(key);
        swap_impl_data(live, empty(src->shape(), TensorOptions(live.dtype(), live.device())));
        d = live.detach();
      }
      d.copy_(*src);
    }
  return result;
}

// ---------------------------------------------------------------------------------------------
// Printing

std::string Module::str() const {
  std::string s = type_name() + "(";
  std::string extra = extra_repr();
  if (children_.empty()) return s + extra + ")";
  auto indent = [](const std::string& text) {
    std::string out;
    for (char c : text) {
      out += c;
      if (c == '\n') out += "  ";
    }
    return out;
  };
  if (!extra.empty()) s += "\n  " + indent(extra);
  for (auto& [name, c] : children_) s += "\n  (" + name + "): " + indent(c->str());
  return s + "\n)";
}

// ---------------------------------------------------------------------------------------------
// Checkpoint helpers

void save(const Module& m, const std::string& path, const Metadata& metadata) {
  save_safetensors(path, m.state_dict(), metadata);
}

LoadResult load(Module& m, const std::string& path, bool strict) {
  SafetensorsFile f = load_safetensors(path);
  try {
    return m.load_state_dict(f.tensors, strict);
  } catch (const Error& e) {
    throw Error(fmt::format("nn::load: '{}': {}", path, e.what()));
  }
}

// ---------------------------------------------------------------------------------------------
// Sequential

Sequential::Sequential(std::initializer_list<ModulePtr> modules) {
  for (auto& m : modules) push_back(m);
}

void Sequential::push_back(ModulePtr m) { register_module(std::to_string(size()), std::move(m)); }

void Sequential::push_back(const std::string& name, ModulePtr m) {
  register_module(name, std::move(m));
}

ModulePtr Sequential::operator[](size_t i) const {
  TB_CHECK(i < size(), "Sequential: index {} out of range for {} modules", i, size());
  return named_children()[i].second;
}

Tensor Sequential::forward(const Tensor& x) {
  Tensor y = x;
  for (auto& [name, m] : named_children()) y = (*m)(y);
  return y;
}

} // namespace tb::nn
