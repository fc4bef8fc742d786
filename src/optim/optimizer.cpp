// Optimizers: the parameter-group / state bookkeeping, SGD, Adam and AdamW (PyTorch's rules; the
// formulas are in include/tb/optim.h). Updates run under no_grad with in-place ops.
#include <tb/optim.h>

#include <cmath>
#include <unordered_set>

namespace tb::optim {

// ---------------------------------------------------------------------------------------------
// Optimizer base

std::vector<ParamGroup> single_group(std::vector<Tensor> params) {
  ParamGroup g;
  g.params = std::move(params);
  return {std::move(g)};
}

Optimizer::Optimizer(const char* name, std::vector<ParamGroup> groups, double lr,
                     double weight_decay)
    : name_(name), default_lr_(lr), default_weight_decay_(weight_decay) {
  TB_CHECK(lr >= 0, "{}: invalid learning rate {} (must be >= 0)", name_, lr);
  TB_CHECK(weight_decay >= 0, "{}: invalid weight_decay {} (must be >= 0)", name_, weight_decay);
  TB_CHECK(!groups.empty(), "{}: got an empty list of parameter groups", name_);
  for (auto& g : groups) add_param_group(std::move(g));
}

void Optimizer::add_param_group(ParamGroup g) {
  TB_CHECK(!g.params.empty(), "{}: parameter group {} is empty (optimizer got an empty parameter "
           "list)", name_, groups_.size());
  std::unordered_set<const TensorImpl*> seen;
  for (auto& grp : groups_)
    for (auto& p : grp.params) seen.insert(p.impl().get());
  for (size_t i = 0; i < g.params.size(); i++) {
    const Tensor& p = g.params[i];
    TB_CHECK(p.defined(), "{}: parameter {} of group {} is undefined", name_, i, groups_.size());
    TB_CHECK(p.is_leaf(), "{}: can only optimize leaf tensors; parameter {} of group {} has "
             "autograd history", name_, i, groups_.size());
    TB_CHECK(is_floating(p.dtype()), "{}: parameter {} of group {} has dtype {}, expected a "
             "floating dtype", name_, i, groups_.size(), p.dtype());
    TB_CHECK(seen.insert(p.impl().get()).second, "{}: parameter {} of group {} appears more than "
             "once among the parameter groups", name_, i, groups_.size());
  }
  if (!g.lr) g.lr = default_lr_;
  if (!g.weight_decay) g.weight_decay = default_weight_decay_;
  TB_CHECK(*g.lr >= 0 && *g.weight_decay >= 0, "{}: group {} has lr {} and weight_decay {}; both "
           "must be >= 0", name_, groups_.size(), *g.lr, *g.weight_decay);
  g.initial_lr = *g.lr;
  groups_.push_back(std::move(g));
}

void Optimizer::set_lr(double lr) {
  TB_CHECK(lr >= 0, "{}::set_lr: invalid learning rate {}", name_, lr);
  for (auto& g : groups_) g.lr = lr;
}

void Optimizer::zero_grad(bool set_to_none) {
  no_grad guard;
  for (auto& g : groups_)
    for (auto& p : g.params) {
      auto& meta = p.impl()->autograd;
      if (!meta || !meta->grad.defined()) continue;
      if (set_to_none) meta->grad = Tensor();
      else meta->grad.zero_();
    }
}

const TensorDict* Optimizer::state(const Tensor& p) const {
  auto it = state_.find(p.impl().get());
  return it == state_.end() ? nullptr : &it->second;
}

TensorDict& Optimizer::mutable_state(const Tensor& p) {
  TensorDict& st = state_[p.impl().get()];
  // p got data of a new shape (Module::set_data): state of the old shape starts afresh.
  for (auto& [name, t] : st)
    if (name != "step" && t.shape() != p.shape()) {
      st = TensorDict();
      break;
    }
  return st;
}

void Optimizer::reset_state(const Tensor& p) { state_.erase(p.impl().get()); }

void Optimizer::remap_state(
    const Tensor& p, const std::function<Tensor(const std::string& name, const Tensor& t)>& fn) {
  auto it = state_.find(p.impl().get());
  if (it == state_.end()) return;
  no_grad guard;
  TensorDict remapped;
  for (auto& [name, t] : it->second) {
    if (name == "step") {
      remapped.set(name, t);
      continue;
    }
    Tensor r = fn(name, t);
    TB_CHECK(r.defined() && r.dtype() == t.dtype() && r.device() == t.device(),
             "{}::remap_state: the new '{}' must be a tensor of dtype {} on {}, got {}", name_,
             name, t.dtype(), t.device().str(),
             r.defined() ? fmt::format("{} on {}", r.dtype(), r.device().str()) : "undefined");
    remapped.set(name, r.detach());
  }
  it->second = std::move(remapped);
}

int64_t Optimizer::increment_step(TensorDict& st) {
  if (!st.contains("step")) st.set("step", zeros({}, TensorOptions(kInt64)));
  Tensor s = st.at("step");
  int64_t v = ++s.data<int64_t>()[0];
  s.bump_version();
  return v;
}

TensorDict Optimizer::state_dict() const {
  TensorDict out;
  for (size_t g = 0; g < groups_.size(); g++) {
    auto opt = TensorOptions(kFloat64);
    out.insert(fmt::format("param_groups.{}.lr", g), scalar_tensor(*groups_[g].lr, opt));
    out.insert(fmt::format("param_groups.{}.initial_lr", g),
               scalar_tensor(groups_[g].initial_lr, opt));
    out.insert(fmt::format("param_groups.{}.weight_decay", g),
               scalar_tensor(*groups_[g].weight_decay, opt));
  }
  size_t index = 0;
  for (auto& g : groups_)
    for (auto& p : g.params) {
      if (const TensorDict* st = state(p))
        for (auto& [name, t] : *st) out.insert(fmt::format("state.{}.{}", index, name), t.detach());
      index++;
    }
  return out;
}

void Optimizer::load_state_dict(const TensorDict& dict) {
  std::vector<const Tensor*> params;
  for (auto& g : groups_)
    for (auto& p : g.params) params.push_back(&p);

  std::vector<std::string> errors;
  auto scalar = [&](const std::string& key) -> double {
    const Tensor* t = dict.find(key);
    if (!t) {
      errors.push_back(fmt::format("missing key '{}'", key));
      return 0;
    }
    if (!t->defined() || t->numel() != 1) {
      errors.push_back(fmt::format("'{}' must be a scalar", key));
      return 0;
    }
    return t->item();
  };
  std::vector<double> lrs, initial_lrs, wds;
  for (size_t g = 0; g < groups_.size(); g++) {
    lrs.push_back(scalar(fmt::format("param_groups.{}.lr", g)));
    initial_lrs.push_back(scalar(fmt::format("param_groups.{}.initial_lr", g)));
    wds.push_back(scalar(fmt::format("param_groups.{}.weight_decay", g)));
  }
  // "state.<i>.<name>": i indexes the parameters across groups in order.
  struct Entry {
    size_t index;
    std::string name;
    const Tensor* t;
  };
  std::vector<Entry> entries;
  for (auto& [key, t] : dict) {
    if (key.rfind("param_groups.", 0) == 0) {
      size_t dot = key.find('.', 13);
      std::string g = key.substr(13, dot == std::string::npos ? std::string::npos : dot - 13);
      std::string field = dot == std::string::npos ? "" : key.substr(dot + 1);
      bool known = field == "lr" || field == "initial_lr" || field == "weight_decay";
      bool in_range = !g.empty() && g.size() < 10 &&
                      g.find_first_not_of("0123456789") == std::string::npos &&
                      std::stoul(g) < groups_.size();
      if (!known || !in_range)
        errors.push_back(fmt::format("unexpected key '{}' (the optimizer has {} groups)", key,
                                     groups_.size()));
      continue;
    }
    if (key.rfind("state.", 0) == 0) {
      size_t dot = key.find('.', 6);
      std::string idx = key.substr(6, dot == std::string::npos ? std::string::npos : dot - 6);
      bool ok = dot != std::string::npos && dot + 1 < key.size() && !idx.empty() &&
                idx.size() < 10 && idx.find_first_not_of("0123456789") == std::string::npos &&
                std::stoul(idx) < params.size();
      if (!ok) {
        errors.push_back(fmt::format("unexpected key '{}' (the optimizer has {} parameters)", key,
                                     params.size()));
        continue;
      }
      Entry e{std::stoul(idx), key.substr(dot + 1), &t};
      const Tensor& p = *params[e.index];
      if (!t.defined()) {
        errors.push_back(fmt::format("'{}' is undefined", key));
      } else if (e.name == "step") {
        if (t.numel() != 1) errors.push_back(fmt::format("'{}' must be a scalar", key));
      } else if (t.shape() != p.shape()) {
        errors.push_back(fmt::format("'{}' has shape {}, but parameter {} has shape {}", key,
                                     shape_str(t.shape()), e.index, shape_str(p.shape())));
      }
      entries.push_back(std::move(e));
      continue;
    }
    errors.push_back(fmt::format("unexpected key '{}'", key));
  }
  if (!errors.empty()) {
    std::string msg = fmt::format("{}::load_state_dict: {} error(s):", name_, errors.size());
    for (auto& e : errors) msg += "\n  " + e;
    throw Error(msg);
  }

  no_grad guard;
  for (size_t g = 0; g < groups_.size(); g++) {
    groups_[g].lr = lrs[g];
    groups_[g].initial_lr = initial_lrs[g];
    groups_[g].weight_decay = wds[g];
  }
  state_.clear();
  for (auto& e : entries) {
    const Tensor& p = *params[e.index];
    Tensor t = e.t->detach();
    Tensor v = e.name == "step" ? t.cpu().to(kInt64).reshape({}).clone()
                                : t.to(p.device()).to(p.dtype()).clone();
    mutable_state(p).set(e.name, v);
  }
}

// ---------------------------------------------------------------------------------------------
// SGD

SGD::SGD(std::vector<Tensor> params, const SGDOptions& o)
    : SGD(single_group(std::move(params)), o) {}

SGD::SGD(std::vector<ParamGroup> groups, const SGDOptions& o)
    : Optimizer("SGD", std::move(groups), o.lr, o.weight_decay), momentum(o.momentum),
      dampening(o.dampening), nesterov(o.nesterov) {
  TB_CHECK(momentum >= 0, "SGD: invalid momentum {} (must be >= 0)", momentum);
  TB_CHECK(!nesterov || (momentum > 0 && dampening == 0),
           "SGD: Nesterov momentum requires a momentum > 0 and zero dampening, got momentum {} "
           "and dampening {}", momentum, dampening);
}

void SGD::step() {
  no_grad guard;
  for (auto& group : param_groups()) {
    const double lr = *group.lr, wd = *group.weight_decay;
    for (auto& p : group.params) {
      Tensor d = p.grad();
      if (!d.defined()) continue;
      if (wd != 0) d = add(d, p, wd);                  // g + wd p
      if (momentum != 0) {
        TensorDict& st = mutable_state(p);
        if (const Tensor* found = st.find("momentum_buffer")) {
          Tensor buf = *found;
          buf.mul_(momentum).add_(d, 1 - dampening);   // buf = m buf + (1 - dampening) g
          d = nesterov ? add(d, buf, momentum) : buf;
        } else {
          Tensor buf = d.clone();                      // first step: buf = g
          st.set("momentum_buffer", buf);
          d = nesterov ? add(d, buf, momentum) : buf;
        }
      }
      p.add_(d, -lr);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Adam / AdamW

Adam::Adam(std::vector<Tensor> params, const AdamOptions& o)
    : Adam("Adam", false, single_group(std::move(params)), o) {}

Adam::Adam(std::vector<ParamGroup> groups, const AdamOptions& o)
    : Adam("Adam", false, std::move(groups), o) {}

Adam::Adam(const char* name, bool decoupled, std::vector<ParamGroup> groups, const AdamOptions& o)
    : Optimizer(name, std::move(groups), o.lr, o.weight_decay), beta1(o.betas.first),
      beta2(o.betas.second), eps(o.eps), amsgrad(o.amsgrad), decoupled_weight_decay_(decoupled) {
  TB_CHECK(0 <= beta1 && beta1 < 1 && 0 <= beta2 && beta2 < 1,
           "{}: betas must be in [0, 1), got ({}, {})", name, beta1, beta2);
  TB_CHECK(eps >= 0, "{}: invalid epsilon {} (must be >= 0)", name, eps);
}

void Adam::step() {
  no_grad guard;
  for (auto& group : param_groups()) {
    const double lr = *group.lr, wd = *group.weight_decay;
    for (auto& p : group.params) {
      Tensor g = p.grad();
      if (!g.defined()) continue;
      if (wd != 0) {
        if (decoupled_weight_decay_) p.mul_(1 - lr * wd); // AdamW: p *= 1 - lr wd
        else g = add(g, p, wd);                          // Adam: g + wd p
      }
      TensorDict& st = mutable_state(p);
      if (!st.contains("exp_avg")) {
        st.set("exp_avg", zeros_like(p));
        st.set("exp_avg_sq", zeros_like(p));
        if (amsgrad) st.set("max_exp_avg_sq", zeros_like(p));
      }
      const int64_t t = increment_step(st);
      Tensor m = st.at("exp_avg"), v = st.at("exp_avg_sq");
      m.mul_(beta1).add_(g, 1 - beta1);
      v.mul_(beta2).add_(mul(g, g), 1 - beta2);
      const double bias1 = 1 - std::pow(beta1, (double)t);
      const double bias2 = 1 - std::pow(beta2, (double)t);
      Tensor second = v;
      if (amsgrad) {
        Tensor vmax = st.at("max_exp_avg_sq");
        vmax.copy_(maximum(vmax, v));
        second = vmax;
      }
      Tensor denom = add(div(sqrt(second), std::sqrt(bias2)), eps);
      p.add_(div(m, denom), -lr / bias1);
    }
  }
}

// AdamWOptions and AdamOptions hold the same fields (only the weight_decay default differs).
static AdamOptions adam_options(const AdamWOptions& o) {
  return {.lr = o.lr, .betas = o.betas, .eps = o.eps, .weight_decay = o.weight_decay,
          .amsgrad = o.amsgrad};
}

AdamW::AdamW(std::vector<Tensor> params, const AdamWOptions& o)
    : Adam("AdamW", true, single_group(std::move(params)), adam_options(o)) {}

AdamW::AdamW(std::vector<ParamGroup> groups, const AdamWOptions& o)
    : Adam("AdamW", true, std::move(groups), adam_options(o)) {}

} // namespace tb::optim
