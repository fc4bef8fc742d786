// src/quant/prepare.cpp — qconfigs and the prepare / prepare_qat walks over the module tree.
//
// Eager mode, as PyTorch's torch.ao.quantization.prepare: no tracing. Every quantizable leaf gets
// a child "activation_post_process" (an observer, or a fake-quant module for QAT) and a forward
// hook that passes the leaf's output through it; conv / linear layers also get their weight
// quantizer ("weight_post_process" observer for PTQ, read by convert; QAT swaps the layer for a
// QAT module whose "weight_fake_quant" runs in every forward). Joins (Add, Mul, Cat) are leaves
// like any other, so residual adds, SE multiplies and concatenations are observed.
#include <tb/quant.h>

#include "src/quant/walk.h"

namespace tb::quant {

QConfig default_qconfig(int weight_bits, int act_bits) {
  QConfig c;
  c.weight.observer = ObserverKind::PerChannelMinMax;
  c.weight.spec = {.dtype = QDType::QInt8, .qscheme = QScheme::PerChannelSymmetric,
                   .bits = weight_bits};
  c.activation.observer = ObserverKind::Histogram;
  c.activation.spec = {.dtype = QDType::QUInt8, .qscheme = QScheme::PerTensorAffine,
                       .bits = act_bits};
  return c;
}

QConfig default_qat_qconfig(int weight_bits, int act_bits) {
  QConfig c = default_qconfig(weight_bits, act_bits);
  c.weight.observer = ObserverKind::MovingAveragePerChannelMinMax;
  c.activation.observer = ObserverKind::MovingAverageMinMax;
  return c;
}

namespace walk {

bool under(const std::string& path, const std::string& prefix) {
  return path == prefix || (path.size() > prefix.size() && path.compare(0, prefix.size(), prefix) == 0 &&
                            path[prefix.size()] == '.');
}

const QConfig& resolve(const QConfigMapping& m, const std::string& path, const nn::Module& mod) {
  const QConfig* best = nullptr;
  size_t best_len = 0;
  for (const auto& [p, c] : m.by_path)
    if (under(path, p) && (best == nullptr || p.size() >= best_len)) best = &c, best_len = p.size();
  if (best) return *best;
  if (auto it = m.by_type.find(mod.type_name()); it != m.by_type.end()) return it->second;
  return m.global;
}

Role role(nn::Module& m) {
  if (dynamic_cast<nn::Conv2d*>(&m) || dynamic_cast<ConvReLU2d*>(&m) ||
      dynamic_cast<ConvBn2d*>(&m) || dynamic_cast<QATConv2d*>(&m) ||
      dynamic_cast<QATConvBn2d*>(&m))
    return Role::Conv;
  if (dynamic_cast<nn::Linear*>(&m) || dynamic_cast<LinearReLU*>(&m) ||
      dynamic_cast<QATLinear*>(&m))
    return Role::Linear;
  if (dynamic_cast<QuantizedConv2d*>(&m) || dynamic_cast<QuantizedLinear*>(&m))
    return Role::Converted;
  if (dynamic_cast<ObserverBase*>(&m) || dynamic_cast<FakeQuantizeBase*>(&m) ||
      dynamic_cast<Quantize*>(&m))
    return Role::Internal;
  if (dynamic_cast<nn::BatchNormBase*>(&m) || dynamic_cast<nn::ReLU*>(&m) ||
      dynamic_cast<nn::ReLU6*>(&m) || dynamic_cast<nn::Hardswish*>(&m) ||
      dynamic_cast<nn::Hardsigmoid*>(&m) || dynamic_cast<nn::SiLU*>(&m) ||
      dynamic_cast<nn::Sigmoid*>(&m) || dynamic_cast<nn::Tanh*>(&m) ||
      dynamic_cast<nn::LeakyReLU*>(&m) || dynamic_cast<nn::GELU*>(&m) ||
      dynamic_cast<nn::AvgPool2d*>(&m) || dynamic_cast<nn::AdaptiveAvgPool2d*>(&m) ||
      dynamic_cast<nn::Add*>(&m) || dynamic_cast<nn::Mul*>(&m) || dynamic_cast<nn::Cat*>(&m) ||
      dynamic_cast<QuantStub*>(&m))
    return Role::Activation;
  std::string t = m.type_name();
  if (dynamic_cast<nn::Identity*>(&m) || dynamic_cast<nn::Flatten*>(&m) ||
      dynamic_cast<nn::Dropout*>(&m) || dynamic_cast<nn::MaxPool2d*>(&m) ||
      dynamic_cast<nn::ChannelShuffle*>(&m) || dynamic_cast<DeQuantStub*>(&m) ||
      t == "StochasticDepth")
    return Role::PassThrough;
  if (!m.named_children().empty()) return Role::Container;
  return Role::Unknown;
}

void attach_output(nn::Module& m, nn::ModulePtr post) {
  if (m.has_child("activation_post_process")) {
    m.set_module("activation_post_process", post);
    return;
  }
  m.register_module("activation_post_process", post);
  m.register_forward_hook([](nn::Module& mod, const std::vector<Tensor>&, const Tensor& y) {
    // A conv that ran its fused add returns the sum (uint8, on the add's grid): not its own
    // quantizer's. The dtype test first keeps the cast off the float models' calls (QAT).
    bool u8 = y.defined() && y.dtype() == kUInt8;
    if (auto* c = u8 ? dynamic_cast<QuantizedConv2d*>(&mod) : nullptr;
        c && c->fused_add.f && c->fused_add.f->result.is_same(y))
      return Tensor();
    return (*mod.child("activation_post_process"))(y);
  });
}

ObserverPtr make_tensor_observer(const TensorQConfig& c) {
  if (c.observer == ObserverKind::Percentile)
    return std::make_shared<PercentileObserver>(c.spec, c.percentile);
  return make_observer(c.observer, c.spec);
}

nn::ModulePtr make_fake_quant(const TensorQConfig& c, int64_t channels, const std::string& path) {
  switch (c.fake_quant) {
    case FakeQuantKind::Observer: return std::make_shared<FakeQuantize>(make_tensor_observer(c));
    case FakeQuantKind::LSQ: return std::make_shared<LearnableFakeQuantize>(c.spec, channels);
    case FakeQuantKind::PACT:
      TB_CHECK(!is_per_channel(c.spec.qscheme),
               "prepare_qat: '{}': PACT clips activations per tensor; got a {} spec", path,
               qscheme_name(c.spec.qscheme));
      return std::make_shared<PACTFakeQuantize>(c.spec.bits);
  }
  throw Error("make_fake_quant: unknown kind");
}

std::string spec_str(const TensorQConfig& c) {
  return fmt::format("{} {}-bit {} ({})", qdtype_name(c.spec.dtype), c.spec.bits,
                     qscheme_name(c.spec.qscheme),
                     c.fake_quant == FakeQuantKind::LSQ    ? "lsq"
                     : c.fake_quant == FakeQuantKind::PACT ? "pact"
                                                           : observer_kind_name(c.observer));
}

FusedAct act_of(const nn::ModulePtr& m) {
  if (!m) return FusedAct::None;
  if (dynamic_cast<nn::ReLU6*>(m.get())) return FusedAct::ReLU6;
  if (dynamic_cast<nn::ReLU*>(m.get())) return FusedAct::ReLU;
  throw Error(fmt::format("quantization: unsupported fused activation {}", m->type_name()));
}

} // namespace walk

namespace {

using namespace walk;

// The QAT module for a weighted layer.
nn::ModulePtr to_qat(nn::ModulePtr m, const QConfig& cfg, const std::string& path) {
  auto wfq = [&](int64_t channels) { return make_fake_quant(cfg.weight, channels, path); };
  if (auto c = std::dynamic_pointer_cast<nn::Conv2d>(m))
    return std::make_shared<QATConv2d>(*c, wfq(c->out_channels()), FusedAct::None);
  if (auto f = std::dynamic_pointer_cast<ConvReLU2d>(m)) {
    auto& c = dynamic_cast<nn::Conv2d&>(*f->child("0"));
    return std::make_shared<QATConv2d>(c, wfq(c.out_channels()), act_of(f->child("1")));
  }
  if (auto f = std::dynamic_pointer_cast<ConvBn2d>(m)) {
    auto& c = dynamic_cast<nn::Conv2d&>(*f->child("0"));
    auto bn = std::dynamic_pointer_cast<nn::BatchNorm2d>(f->child("1"));
    return std::make_shared<QATConvBn2d>(c, bn, wfq(c.out_channels()),
                                         act_of(f->has_child("2") ? f->child("2") : nullptr));
  }
  if (auto l = std::dynamic_pointer_cast<nn::Linear>(m))
    return std::make_shared<QATLinear>(*l, wfq(l->out_features()), FusedAct::None);
  if (auto f = std::dynamic_pointer_cast<LinearReLU>(m)) {
    auto& l = dynamic_cast<nn::Linear&>(*f->child("0"));
    return std::make_shared<QATLinear>(l, wfq(l.out_features()), act_of(f->child("1")));
  }
  return m; // already a QAT module
}

void visit(nn::Module& parent, const std::string& prefix, const QConfigMapping& config, bool qat,
           ConversionReport& report) {
  for (auto [name, c] : std::vector(parent.named_children())) {
    std::string path = prefix.empty() ? name : prefix + "." + name;
    std::string type = c->type_name();
    bool skipped = false;
    for (const auto& s : config.skip) skipped = skipped || under(path, s);
    if (skipped) {
      report.layers.push_back({path, type, "skipped", "in the skip list: stays float"});
      report.skipped++;
      continue;
    }
    Role r = role(*c);
    const QConfig& cfg = resolve(config, path, *c);
    if (r == Role::Conv || r == Role::Linear) {
      TB_CHECK(!c->has_child("activation_post_process"),
               "prepare: '{}' ({}) is already prepared", path, type);
      nn::ModulePtr m = c;
      if (qat) {
        m = to_qat(c, cfg, path);
        parent.set_module(name, m);
      } else {
        m->register_module("weight_post_process", make_tensor_observer(cfg.weight));
      }
      attach_output(*m, qat ? make_fake_quant(cfg.activation, 1, path)
                            : nn::ModulePtr(make_tensor_observer(cfg.activation)));
      report.layers.push_back({path, m->type_name(), "quantized",
                               fmt::format("weights {}, output {}", spec_str(cfg.weight),
                                           spec_str(cfg.activation))});
      report.quantized++;
    } else if (r == Role::Activation) {
      TB_CHECK(!c->has_child("activation_post_process"),
               "prepare: '{}' ({}) is already prepared", path, type);
      attach_output(*c, qat ? make_fake_quant(cfg.activation, 1, path)
                            : nn::ModulePtr(make_tensor_observer(cfg.activation)));
      report.layers.push_back({path, type, "quantized",
                               fmt::format("float op, output {}", spec_str(cfg.activation))});
      report.quantized++;
    } else if (r == Role::PassThrough) {
      report.layers.push_back({path, type, "unchanged",
                               "keeps its input's values (no requantization needed)"});
    } else if (r == Role::Container) {
      visit(*c, path, config, qat, report);
    } else if (r == Role::Unknown) {
      report.layers.push_back({path, type, "skipped", "no quantized form: stays float"});
      report.skipped++;
    }
  }
}

} // namespace

ConversionReport prepare(nn::Module& model, const QConfigMapping& config) {
  ConversionReport report;
  visit(model, "", config, false, report);
  return report;
}

ConversionReport prepare_qat(nn::Module& model, const QConfigMapping& config) {
  ConversionReport report;
  visit(model, "", config, true, report);
  return report;
}

std::string ConversionReport::str() const {
  size_t wp = 4, wt = 4, wa = 6;
  for (const auto& l : layers)
    wp = std::max(wp, l.path.size()), wt = std::max(wt, l.type.size()), wa = std::max(wa, l.action.size());
  std::string s = fmt::format("{:<{}}  {:<{}}  {:<{}}  {}\n", "layer", wp, "type", wt, "action",
                              wa, "why");
  for (const auto& l : layers)
    s += fmt::format("{:<{}}  {:<{}}  {:<{}}  {}\n", l.path, wp, l.type, wt, l.action, wa,
                     l.reason);
  s += fmt::format("{} quantized, {} skipped\n", quantized, skipped);
  return s;
}

} // namespace tb::quant
