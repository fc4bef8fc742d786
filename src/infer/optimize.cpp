// src/infer/optimize.cpp — optimize_for_inference: rewrites a deep copy of a model's module tree
// into fused, eval-only modules (tb/infer.h lists the rewrites). No tracing: like fusion in
// tb::quant, it works on the tree, recognising
//   * runs of a Sequential: Conv2d [BatchNorm2d] [ReLU | ReLU6 | Hardswish | SiLU] -> FusedConv2d
//     (PyTorch's fuse_modules groups, tb::quant::find_fusable_groups' rule, with the activations
//     oneDNN has as post-ops); Dropout, StochasticDepth and Identity children are dropped, and a
//     Sequential left with one child is replaced by it;
//   * the zoo's residual blocks, whose forward ends in skip_add(branch(x), shortcut(x)):
//     BasicBlock, Bottleneck (ReLU after the add), InvertedResidual and MBConv with a skip
//     connection (no activation) -> FusedResidual, the add a sum post-op of the last conv;
//   * the ResNet stem (conv1, bn1, relu children of the zoo's ResNet) -> FusedConv2d;
//   * Dropout / StochasticDepth anywhere else -> Identity.
// Anything not recognised (a block whose children were swapped, a conv with children such as a
// quantization observer or a conv whose "weight" is not a parameter, as pruning makes it) is left
// as it is and its children are visited, so the result is always the original function.
#include <tb/infer.h>
#include <tb/models.h>
#include <tb/quant.h>

#include <typeinfo>

namespace tb::infer {

namespace {

using nn::ModulePtr;

template <class T> bool is(const ModulePtr& m) { return m && typeid(*m) == typeid(T); }

// The activation a module computes, if a post-op can run it.
std::optional<Activation> activation_of(const ModulePtr& m) {
  if (is<nn::ReLU>(m)) return Activation::ReLU;
  if (is<nn::ReLU6>(m)) return Activation::ReLU6;
  if (is<nn::Hardswish>(m)) return Activation::Hardswish;
  if (is<nn::SiLU>(m)) return Activation::SiLU;
  return std::nullopt;
}

// A conv whose weight is a plain parameter and that has no children (observers, wrappers).
bool plain_conv(const ModulePtr& m) {
  return is<nn::Conv2d>(m) && m->has_parameter("weight") && m->named_children().empty();
}
// A BN that folds: running statistics (eval uses them), no children.
bool foldable_bn(const ModulePtr& m) {
  auto* bn = dynamic_cast<nn::BatchNorm2d*>(m.get());
  return is<nn::BatchNorm2d>(m) && bn->track_running_stats() && m->named_children().empty();
}
bool removable(const ModulePtr& m) {
  return is<nn::Dropout>(m) || is<nn::StochasticDepth>(m) || is<nn::Identity>(m);
}

class Optimizer {
 public:
  explicit Optimizer(OptimizeReport& r) : report_(r) {}

  // The module that replaces `m` (m itself, with its children rewritten, when nothing applies).
  ModulePtr rewrite(const ModulePtr& m) {
    if (is<nn::Dropout>(m) || is<nn::StochasticDepth>(m)) {
      report_.dropouts_removed++;
      return std::make_shared<nn::Identity>();
    }
    if (ModulePtr r = residual_block(m)) return r;
    if (is<nn::Sequential>(m) || is<nn::ConvBNAct>(m)) return sequential(*m);
    resnet_stem(*m);
    rewrite_children(*m);
    return m;
  }

 private:
  void rewrite_children(nn::Module& m) {
    auto children = m.named_children(); // a copy: set_module edits the list
    for (auto& [name, c] : children) {
      ModulePtr r = rewrite(c);
      if (r != c) m.set_module(name, r);
    }
  }

  std::shared_ptr<FusedConv2d> fuse(const ModulePtr& conv, const ModulePtr& bn, Activation act) {
    report_.convs_fused++;
    if (bn) report_.bn_folded++;
    if (act != Activation::None) report_.activations_fused++;
    return std::make_shared<FusedConv2d>(dynamic_cast<nn::Conv2d&>(*conv),
                                         bn ? dynamic_cast<nn::BatchNormBase*>(bn.get()) : nullptr,
                                         act);
  }

  // A plain Sequential (or ConvBNAct, a Sequential without a forward of its own): children
  // rewritten, conv runs fused, removable children dropped. Returns a new Sequential keeping the
  // surviving children's names, or the only survivor itself.
  ModulePtr sequential(nn::Module& seq) {
    std::vector<std::pair<std::string, ModulePtr>> in;
    for (auto& [name, c] : seq.named_children()) {
      if (removable(c)) {
        if (!is<nn::Identity>(c)) report_.dropouts_removed++;
        continue;
      }
      in.emplace_back(name, plain_conv(c) ? c : rewrite(c));
    }
    auto out = std::make_shared<nn::Sequential>();
    for (size_t i = 0; i < in.size(); i++) {
      const ModulePtr& a = in[i].second;
      if (!plain_conv(a)) {
        out->push_back(in[i].first, a);
        continue;
      }
      size_t j = i + 1;
      ModulePtr bn;
      if (j < in.size() && foldable_bn(in[j].second)) bn = in[j++].second;
      Activation act = Activation::None;
      if (j < in.size())
        if (auto a2 = activation_of(in[j].second)) act = *a2, j++;
      out->push_back(in[i].first, fuse(a, bn, act));
      i = j - 1;
    }
    if (out->size() == 1) return (*out)[0];
    if (out->size() == 0) return std::make_shared<nn::Identity>();
    out->train(false);
    return out;
  }

  // The stem of the zoo's ResNets (type names "ResNet18", "ResNet50"; forward starts with
  // relu(bn1(conv1(x))) and uses those three children nowhere else): conv1 becomes the fused
  // conv, bn1 and relu Identity.
  void resnet_stem(nn::Module& m) {
    if (m.type_name().rfind("ResNet", 0) != 0 || !m.has_child("conv1") || !m.has_child("bn1") ||
        !m.has_child("relu"))
      return;
    ModulePtr conv = m.child("conv1"), bn = m.child("bn1"), relu = m.child("relu");
    if (!plain_conv(conv) || !foldable_bn(bn) || !is<nn::ReLU>(relu)) return;
    m.set_module("conv1", fuse(conv, bn, Activation::ReLU));
    m.set_module("bn1", std::make_shared<nn::Identity>());
    m.set_module("relu", std::make_shared<nn::Identity>());
  }

  // The fused body of a block's branch as a list of modules (a rewritten Sequential may come back
  // as a single module).
  static std::vector<ModulePtr> steps(const ModulePtr& m) {
    if (is<nn::Sequential>(m)) return (std::static_pointer_cast<nn::Sequential>(m))->children();
    return {m};
  }

  static ModulePtr as_sequential(const std::vector<ModulePtr>& ms) {
    auto s = std::make_shared<nn::Sequential>();
    for (auto& m : ms) s->push_back(m);
    s->train(false);
    return s;
  }

  // The ResNet / MobileNet / EfficientNet residual blocks -> FusedResidual; nullptr when `m` is
  // none of them or its children are not the ones the block was built with.
  ModulePtr residual_block(const ModulePtr& m) {
    auto child = [&](const char* n) { return m->has_child(n) ? m->child(n) : nullptr; };
    if (is<nn::BasicBlock>(m) || is<nn::Bottleneck>(m)) {
      bool basic = is<nn::BasicBlock>(m);
      std::vector<std::string> convs = basic ? std::vector<std::string>{"conv1", "conv2"}
                                             : std::vector<std::string>{"conv1", "conv2", "conv3"};
      for (size_t i = 0; i < convs.size(); i++)
        if (!plain_conv(child(convs[i].c_str())) ||
            !foldable_bn(child(("bn" + std::to_string(i + 1)).c_str())))
          return nullptr;
      if (!is<nn::ReLU>(child("relu")) || !is<nn::Add>(child("skip_add"))) return nullptr;
      ModulePtr ds = child("downsample");
      if (ds && !(is<nn::Sequential>(ds) && ds->named_children().size() == 2 &&
                  plain_conv(ds->child("0")) && foldable_bn(ds->child("1"))))
        return nullptr;
      std::vector<ModulePtr> body;
      for (size_t i = 0; i + 1 < convs.size(); i++)
        body.push_back(fuse(child(convs[i].c_str()), child(("bn" + std::to_string(i + 1)).c_str()),
                            Activation::ReLU));
      size_t last = convs.size() - 1;
      auto conv = fuse(child(convs[last].c_str()),
                       child(("bn" + std::to_string(last + 1)).c_str()), Activation::ReLU);
      ModulePtr shortcut = ds ? ModulePtr(fuse(ds->child("0"), ds->child("1"), Activation::None))
                              : nullptr;
      report_.residuals_fused++;
      return std::make_shared<FusedResidual>(as_sequential(body), conv, shortcut);
    }
    bool inverted = is<nn::InvertedResidual>(m) &&
                    std::static_pointer_cast<nn::InvertedResidual>(m)->use_res_connect;
    bool mbconv = is<nn::MBConv>(m) && std::static_pointer_cast<nn::MBConv>(m)->use_res_connect;
    if (!inverted && !mbconv) return nullptr;
    ModulePtr branch = child(inverted ? "conv" : "block");
    if (!is<nn::Add>(child("skip_add")) || !is<nn::Sequential>(branch)) return nullptr;
    if (mbconv && child("stochastic_depth") && !is<nn::StochasticDepth>(child("stochastic_depth")))
      return nullptr;
    // Fuse a copy of the branch first; the block qualifies when it ends in a fused conv without
    // an activation (the linear projection), which then takes the add.
    ModulePtr fused_branch = sequential(*branch);
    std::vector<ModulePtr> body = steps(fused_branch);
    auto conv = std::dynamic_pointer_cast<FusedConv2d>(body.back());
    if (!conv || conv->act != Activation::None) {
      m->set_module(inverted ? "conv" : "block", fused_branch);
      rewrite_children(*m);
      return m;
    }
    body.pop_back();
    if (mbconv && child("stochastic_depth")) report_.dropouts_removed++;
    report_.residuals_fused++;
    return std::make_shared<FusedResidual>(as_sequential(body), conv, nullptr);
  }

  OptimizeReport& report_;
};

// tb::Error for a tensor the fused float32 CPU kernels cannot take.
void check_float32_cpu(nn::Module& m) {
  for (auto& [name, t] : m.named_parameters())
    TB_CHECK(t.dtype() == kFloat32 && t.device().is_cpu(),
             "optimize_for_inference: float32 CPU models only; parameter '{}' is {} on {}", name,
             t.dtype(), t.device());
  for (auto& [name, t] : m.named_buffers())
    TB_CHECK(!is_floating(t.dtype()) || (t.dtype() == kFloat32 && t.device().is_cpu()),
             "optimize_for_inference: float32 CPU models only; buffer '{}' is {} on {}", name,
             t.dtype(), t.device());
}

} // namespace

std::string OptimizeReport::str() const {
  return fmt::format("{} convs fused ({} BN folded, {} activations and {} residual adds as "
                     "post-ops), {} dropouts removed",
                     convs_fused, bn_folded, activations_fused, residuals_fused, dropouts_removed);
}

ModulePtr optimize_for_inference(const nn::Module& model, OptimizeReport* report) {
  ModulePtr copy = model.clone();
  check_float32_cpu(*copy);
  copy->eval();
  for (Tensor& p : copy->parameters()) p.requires_grad_(false); // no autograd graph is built
  OptimizeReport r;
  no_grad ng;
  ModulePtr out = Optimizer(r).rewrite(copy);
  out->eval();
  if (report) *report = r;
  return out;
}

} // namespace tb::infer
