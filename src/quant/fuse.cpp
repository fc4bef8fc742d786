// src/quant/fuse.cpp — module fusion on the module tree (PyTorch's fuse_modules /
// fuse_modules_qat): the first module of a group becomes the fused module, the others Identity.
//   eval:  Conv2d+BatchNorm2d -> Conv2d with the BN folded in (see fuse_conv_bn_weights);
//          ... + ReLU|ReLU6 -> ConvReLU2d; Conv2d+act -> ConvReLU2d; Linear+act -> LinearReLU
//   QAT:   Conv2d+BatchNorm2d(+act) -> ConvBn2d (BN kept; prepare_qat makes it a QATConvBn2d)
#include <tb/quant.h>

#include <map>

#include "src/quant/walk.h"

namespace tb::quant {

namespace {

bool is_act(nn::Module* m) {
  return dynamic_cast<nn::ReLU*>(m) || dynamic_cast<nn::ReLU6*>(m);
}

std::string describe(const std::vector<std::string>& paths, const std::vector<nn::ModulePtr>& ms) {
  std::string s;
  for (size_t i = 0; i < paths.size(); i++)
    s += fmt::format("{}'{}' ({})", i ? ", " : "", paths[i], ms[i]->type_name());
  return "[" + s + "]";
}

// The module at `path` as a shared pointer (the parent's child entry).
nn::ModulePtr module_at(nn::Module& root, const std::string& path) {
  TB_CHECK(!path.empty(), "fuse_modules: a group names the root module (empty path)");
  size_t dot = path.rfind('.');
  nn::Module& parent = dot == std::string::npos ? root : root.get_submodule(path.substr(0, dot));
  return parent.child(dot == std::string::npos ? path : path.substr(dot + 1));
}

void fuse_group(nn::Module& model, const std::vector<std::string>& paths, bool qat) {
  TB_CHECK(paths.size() == 2 || paths.size() == 3,
           "fuse_modules: a group has 2 or 3 modules (conv, bn[, relu] / conv, relu / linear, "
           "relu), got {}", paths.size());
  std::vector<nn::ModulePtr> ms;
  for (const auto& p : paths) ms.push_back(module_at(model, p));
  auto conv = std::dynamic_pointer_cast<nn::Conv2d>(ms[0]);
  auto lin = std::dynamic_pointer_cast<nn::Linear>(ms[0]);
  auto bn = std::dynamic_pointer_cast<nn::BatchNorm2d>(ms[1]);
  nn::ModulePtr fused;
  if (conv && bn && (ms.size() == 2 || is_act(ms[2].get()))) {
    nn::ModulePtr act = ms.size() == 3 ? ms[2] : nullptr;
    if (qat) {
      fused = std::make_shared<ConvBn2d>(conv, bn, act);
    } else {
      TB_CHECK(!bn->is_training(),
               "fuse_modules: {} folds the BN's running statistics, so the model must be in eval "
               "mode (for QAT use fuse_modules_qat)", describe(paths, ms));
      auto [w, b] = fuse_conv_bn_weights(conv->weight(), conv->bias(), *bn);
      auto folded = nn::clone(*conv);
      folded->set_data("weight", w);
      if (folded->bias().defined())
        folded->set_data("bias", b);
      else
        folded->register_parameter("bias", b);
      fused = act ? nn::ModulePtr(std::make_shared<ConvReLU2d>(folded, act)) : folded;
    }
  } else if (conv && ms.size() == 2 && is_act(ms[1].get())) {
    fused = std::make_shared<ConvReLU2d>(conv, ms[1]);
  } else if (lin && ms.size() == 2 && is_act(ms[1].get())) {
    fused = std::make_shared<LinearReLU>(lin, ms[1]);
  } else {
    throw Error(fmt::format("fuse_modules: cannot fuse {}: expected Conv2d, BatchNorm2d "
                            "[, ReLU|ReLU6] or Conv2d, ReLU|ReLU6 or Linear, ReLU|ReLU6",
                            describe(paths, ms)));
  }
  model.set_submodule(paths[0], fused);
  for (size_t i = 1; i < paths.size(); i++)
    model.set_submodule(paths[i], std::make_shared<nn::Identity>());
}

} // namespace

void fuse_modules(nn::Module& model, const std::vector<std::vector<std::string>>& groups) {
  for (const auto& g : groups) fuse_group(model, g, false);
}

void fuse_modules_qat(nn::Module& model, const std::vector<std::vector<std::string>>& groups) {
  for (const auto& g : groups) fuse_group(model, g, true);
}

std::vector<std::vector<std::string>> find_fusable_groups(nn::Module& model) {
  std::vector<std::vector<std::string>> groups;
  for (auto& [path, m] : model.named_modules()) {
    if (!dynamic_cast<nn::Sequential*>(m)) continue;
    const auto& ch = m->named_children();
    std::string prefix = path.empty() ? "" : path + ".";
    for (size_t i = 0; i < ch.size(); i++) {
      nn::Module* a = ch[i].second.get();
      nn::Module* b = i + 1 < ch.size() ? ch[i + 1].second.get() : nullptr;
      nn::Module* c = i + 2 < ch.size() ? ch[i + 2].second.get() : nullptr;
      std::vector<std::string> g;
      if (dynamic_cast<nn::Conv2d*>(a) && dynamic_cast<nn::BatchNorm2d*>(b)) {
        g = {ch[i].first, ch[i + 1].first};
        if (c && is_act(c)) g.push_back(ch[i + 2].first);
      } else if ((dynamic_cast<nn::Conv2d*>(a) || dynamic_cast<nn::Linear*>(a)) && b && is_act(b)) {
        g = {ch[i].first, ch[i + 1].first};
      }
      if (g.empty()) continue;
      for (auto& n : g) n = prefix + n;
      i += g.size() - 1;
      groups.push_back(g);
    }
  }
  return groups;
}

// The data-flow version. Trace the model once (eval mode, so no BN statistic moves), then, among
// the calls of leaf modules: a Conv2d called once whose output is read by exactly one call, that
// of a BatchNorm2d (its channels) called once, groups with it, and so does a ReLU / ReLU6 called
// once that alone reads the BN's output; a Conv2d or Linear whose output only such an
// activation reads groups with that. A module called twice (a ResNet block's one ReLU) is never
// fused: it would disappear from its other call.
std::vector<std::vector<std::string>> find_fusable_groups(nn::Module& model,
                                                          const Shape& input_shape) {
  std::vector<std::pair<nn::Module*, bool>> modes; // parents before children (pre-order)
  for (auto& [path, m] : model.named_modules()) modes.push_back({m, m->is_training()});
  auto restore = [&] {
    for (auto& [m, on] : modes) m->train(on); // a child's own call comes after its parent's
  };
  model.eval();
  std::vector<walk::TraceCall> calls;
  try {
    calls = walk::trace(model, input_shape);
  } catch (...) {
    restore();
    throw;
  }
  restore();

  std::map<nn::Module*, std::string> path_of;
  for (auto& [path, m] : model.named_modules()) path_of[m] = path;
  std::map<nn::Module*, std::vector<const walk::TraceCall*>> calls_of;
  std::map<walk::StorageId, std::vector<const walk::TraceCall*>> readers; // leaf calls + caller
  for (const auto& c : calls) {
    if (c.module && !c.module->named_children().empty()) continue; // a container: see its leaves
    if (c.module) calls_of[c.module].push_back(&c);
    for (walk::StorageId id : c.inputs) readers[id].push_back(&c);
  }
  // The one call reading storage `id`, if it is the only call of its module.
  auto sole_reader = [&](walk::StorageId id) -> const walk::TraceCall* {
    auto it = readers.find(id);
    if (it == readers.end() || it->second.size() != 1 || !it->second[0]->module) return nullptr;
    const walk::TraceCall* r = it->second[0];
    return calls_of[r->module].size() == 1 ? r : nullptr;
  };

  std::vector<std::vector<std::string>> groups;
  for (const auto& c : calls) {
    if (!c.module || calls_of[c.module].size() != 1) continue;
    auto* conv = dynamic_cast<nn::Conv2d*>(c.module);
    bool lin = dynamic_cast<nn::Linear*>(c.module) != nullptr;
    if (!conv && !lin) continue;
    const walk::TraceCall* next = sole_reader(c.output);
    if (!next) continue;
    std::vector<std::string> g{path_of[c.module]};
    auto* bn = dynamic_cast<nn::BatchNorm2d*>(next->module);
    if (conv && bn && bn->num_features() == conv->weight().size(0)) {
      g.push_back(path_of[bn]);
      if (const walk::TraceCall* act = sole_reader(next->output); act && is_act(act->module))
        g.push_back(path_of[act->module]);
    } else if (is_act(next->module)) {
      g.push_back(path_of[next->module]);
    } else {
      continue;
    }
    groups.push_back(g);
  }
  return groups;
}

} // namespace tb::quant
