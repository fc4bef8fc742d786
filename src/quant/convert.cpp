// src/quant/convert.cpp — convert (integer weights + qparams), one-call PTQ, calibration
// statistics, and checkpoints of prepared / QAT / converted models.
//
// convert walks the tree as prepare did: each activation_post_process (observer or fake-quant)
// becomes a fixed Quantize with the qparams it computed; each conv / linear (float with its
// weight_post_process observer, fused, or QAT) becomes a QuantizedConv2d / QuantizedLinear whose
// int8 weight is quantized with the weight quantizer's qparams (a BN is folded first with its
// running statistics, as PyTorch's convert of intrinsic QAT modules does). The converted model's
// outputs equal the fake-quant model's in eval mode, up to float rounding of the folding and, for
// the layers that run integer kernels, one output step per layer (tests/test_int8.cpp).
//
// Integer inference: the walk also follows which quantizer's grid the data is on, in the order
// of the tree (a module with an activation_post_process sets it; value-preserving modules such as
// MaxPool2d, Flatten and Dropout keep it; any other module clears it). A converted conv / linear
// whose input is quantized that way, with 8-bit uint8 activations and symmetric int8 weights,
// records the input qparams and runs the integer kernels (src/quant/int8.cpp); the report says
// for each layer which kernel it runs and, for the float ones, why. The tree order is only the
// fallback for the input grid: at run time the layer first uses the grid its input was tagged
// with by the Quantize that made it (branches, shortcuts), and checks that the input lies on it.
#include <tb/quant.h>

#include "src/quant/int8.h"
#include "src/quant/walk.h"

#include <chrono>

namespace tb::quant {

namespace {

using namespace walk;

// The qparams an activation quantizer gives, or tb::Error when it never saw data.
QParams output_qparams(nn::Module& post, const std::string& path, const std::string& type,
                       bool allow_uncalibrated) {
  if (auto* o = dynamic_cast<ObserverBase*>(&post)) {
    if (o->has_data()) return o->calculate_qparams();
    TB_CHECK(allow_uncalibrated, "convert: '{}' ({}) was never calibrated: its {} saw no data "
             "(run calibration batches through the prepared model before convert)", path, type,
             o->type_name());
    QParams p = calculate_qparams(zeros({1}), ones({1}), o->spec, "convert");
    return p;
  }
  if (auto* f = dynamic_cast<FakeQuantizeBase*>(&post)) {
    TB_CHECK(f->has_qparams() || allow_uncalibrated,
             "convert: '{}' ({}) was never calibrated: its {} has no qparams yet (run data "
             "through the QAT model before convert)", path, type, f->type_name());
    if (!f->has_qparams()) {
      if (auto* fq = dynamic_cast<FakeQuantize*>(f))
        return calculate_qparams(zeros({1}), ones({1}), fq->observer().spec, "convert");
    }
    return f->qparams();
  }
  if (auto* q = dynamic_cast<Quantize*>(&post)) return q->qparams();
  throw Error(fmt::format("convert: '{}' ({}): activation_post_process is a {}, not an observer "
                          "or fake-quant module", path, type, post.type_name()));
}

// Weight qparams from a weight quantizer (observer or fake-quant) run on `w` (no grad).
QParams weight_qparams(nn::Module& q, const Tensor& w) {
  no_grad ng;
  if (auto* o = dynamic_cast<ObserverBase*>(&q)) {
    (*o)(w);
    return o->calculate_qparams();
  }
  if (auto* fq = dynamic_cast<FakeQuantize*>(&q)) {
    bool was = fq->observer_enabled();
    if (!fq->has_qparams()) fq->enable_observer(true); // weights are data: never "uncalibrated"
    (*fq)(w);
    fq->enable_observer(was);
    return fq->qparams();
  }
  if (auto* l = dynamic_cast<LearnableFakeQuantize*>(&q)) {
    if (!l->has_qparams()) (*l)(w);
    return l->qparams();
  }
  throw Error(fmt::format("convert: {} is not a weight quantizer", q.type_name()));
}

// The converted module for a weighted layer (nullptr: not prepared, stays as is).
nn::ModulePtr convert_weighted(nn::ModulePtr m) {
  FusedAct act = FusedAct::None;
  if (auto* c = dynamic_cast<nn::Conv2d*>(m.get())) {
    if (!c->has_child("weight_post_process")) return nullptr;
    QParams wq = weight_qparams(*c->child("weight_post_process"), c->weight());
    return std::make_shared<QuantizedConv2d>(c->weight(), c->bias(), c->params, wq, act);
  }
  if (auto* f = dynamic_cast<ConvReLU2d*>(m.get())) {
    if (!f->has_child("weight_post_process")) return nullptr;
    auto& c = dynamic_cast<nn::Conv2d&>(*f->child("0"));
    QParams wq = weight_qparams(*f->child("weight_post_process"), c.weight());
    return std::make_shared<QuantizedConv2d>(c.weight(), c.bias(), c.params, wq,
                                             act_of(f->child("1")));
  }
  if (auto* f = dynamic_cast<ConvBn2d*>(m.get())) {
    if (!f->has_child("weight_post_process")) return nullptr;
    auto& c = dynamic_cast<nn::Conv2d&>(*f->child("0"));
    auto [w, b] = fuse_conv_bn_weights(c.weight(), c.bias(),
                                       dynamic_cast<nn::BatchNormBase&>(*f->child("1")));
    QParams wq = weight_qparams(*f->child("weight_post_process"), w);
    return std::make_shared<QuantizedConv2d>(
        w, b, c.params, wq, act_of(f->has_child("2") ? f->child("2") : nullptr));
  }
  if (auto* q = dynamic_cast<QATConv2d*>(m.get())) {
    QParams wq = weight_qparams(*q->child("weight_fake_quant"), q->get("weight"));
    return std::make_shared<QuantizedConv2d>(q->get("weight"), q->find("bias"), q->params, wq,
                                             q->act);
  }
  if (auto* q = dynamic_cast<QATConvBn2d*>(m.get())) {
    auto [w, b] = fuse_conv_bn_weights(q->get("weight"), q->find("bias"),
                                       dynamic_cast<nn::BatchNormBase&>(*q->child("bn")));
    QParams wq = weight_qparams(*q->child("weight_fake_quant"), w);
    return std::make_shared<QuantizedConv2d>(w, b, q->params, wq, q->act);
  }
  if (auto* l = dynamic_cast<nn::Linear*>(m.get())) {
    if (!l->has_child("weight_post_process")) return nullptr;
    QParams wq = weight_qparams(*l->child("weight_post_process"), l->weight());
    return std::make_shared<QuantizedLinear>(l->weight(), l->bias(), wq, act);
  }
  if (auto* f = dynamic_cast<LinearReLU*>(m.get())) {
    if (!f->has_child("weight_post_process")) return nullptr;
    auto& l = dynamic_cast<nn::Linear&>(*f->child("0"));
    QParams wq = weight_qparams(*f->child("weight_post_process"), l.weight());
    return std::make_shared<QuantizedLinear>(l.weight(), l.bias(), wq, act_of(f->child("1")));
  }
  if (auto* q = dynamic_cast<QATLinear*>(m.get())) {
    QParams wq = weight_qparams(*q->child("weight_fake_quant"), q->get("weight"));
    return std::make_shared<QuantizedLinear>(q->get("weight"), q->find("bias"), wq, q->act);
  }
  return nullptr;
}

std::string qparams_str(const QParams& p) {
  std::vector<double> s = p.scale.to_vector();
  double smax = 0;
  for (double v : s) smax = std::max(smax, v);
  if (p.per_channel) return fmt::format("{} scales (max {:.4g}), [{}, {}]", s.size(), smax, p.qmin, p.qmax);
  return fmt::format("scale {:.4g} zp {} [{}, {}]", smax, p.zero_point.to_int_vector()[0], p.qmin,
                     p.qmax);
}

// Decides whether a converted layer runs the integer kernels (input grid `in` from the walk,
// output grid `out` its own quantizer's); returns what the report says about it.
template <typename Q>
std::string choose_kernel(Q& q, const std::optional<QParams>& in, const std::optional<QParams>& out) {
  q.float_reason = int8::unsupported_reason(q.weight_qparams(), in, out);
  q.integer = q.float_reason.empty();
  if (!q.integer) return "float kernel (dequantized weights): " + q.float_reason;
  q.set_input_qparams(*in);
  return "integer kernel (u8 x s8)";
}

// `flow`: the qparams of the quantizer whose grid the data is on at this point of the walk.
void convert_visit(nn::Module& parent, const std::string& prefix, const ConvertOptions& o,
                   ConversionReport& report, std::optional<QParams>& flow) {
  for (auto [name, c] : std::vector(parent.named_children())) {
    std::string path = prefix.empty() ? name : prefix + "." + name;
    std::string type = c->type_name();
    Role r = role(*c);
    if (r == Role::Internal) continue;
    nn::ModulePtr post;
    std::optional<QParams> out;
    std::string out_desc = "float output";
    if (c->has_child("activation_post_process")) {
      QParams p = output_qparams(*c->child("activation_post_process"), path, type,
                                 o.allow_uncalibrated);
      out_desc = "output " + qparams_str(p);
      post = std::make_shared<Quantize>(p);
      out = p;
    }
    if (r == Role::Conv || r == Role::Linear) {
      nn::ModulePtr q = convert_weighted(c);
      if (q) {
        if (post) attach_output(*q, post);
        parent.set_module(name, q);
        QParams wq;
        std::string kernel;
        if (auto* qc = dynamic_cast<QuantizedConv2d*>(q.get())) {
          wq = qc->weight_qparams();
          kernel = choose_kernel(*qc, flow, out);
        } else {
          auto& ql = dynamic_cast<QuantizedLinear&>(*q);
          wq = ql.weight_qparams();
          kernel = choose_kernel(ql, flow, out);
        }
        report.layers.push_back({path, q->type_name(), "quantized",
                                 fmt::format("from {}: int weights {}; {}; {}", type,
                                             qparams_str(wq), out_desc, kernel)});
        report.quantized++;
        flow = out;
        continue;
      }
    }
    if (post) {
      attach_output(*c, post);
      report.layers.push_back({path, type, "quantized", "float op; " + out_desc});
      report.quantized++;
    }
    if (r == Role::Container) convert_visit(*c, path, o, report, flow);
    if (r != Role::PassThrough && r != Role::Container) flow = out;
    else if (post) flow = out;
  }
}

} // namespace

// Runs (at most max_batches, 0 = all) batches of `loader` through the model in eval mode under
// no_grad, so that its observers see them; the training flag is restored.
static void calibrate(nn::Module& model, data::DataLoader& loader, int64_t max_batches) {
  bool was_training = model.is_training();
  model.eval();
  no_grad ng;
  int64_t n = 0;
  for (const auto& b : loader) {
    if (max_batches > 0 && n++ >= max_batches) break;
    model(b.inputs);
  }
  model.train(was_training);
}

ConversionReport convert(nn::Module& model, ConvertOptions o) {
  ConversionReport report;
  std::optional<QParams> flow; // the model's input is float
  convert_visit(model, "", o, report, flow);
  return report;
}

ConversionReport quantize(nn::Module& model, const QConfigMapping& config,
                          data::DataLoader& calibration, int64_t max_batches) {
  ConversionReport prepared = prepare(model, config);
  bool was_training = model.is_training();
  calibrate(model, calibration, max_batches);
  model.eval();
  ConversionReport converted = convert(model);
  model.train(was_training);
  // Layers prepare skipped or left unchanged, then what convert did.
  for (const auto& l : prepared.layers)
    if (l.action != "quantized") converted.layers.push_back(l);
  converted.skipped = prepared.skipped;
  return converted;
}

// ---- statistics ---------------------------------------------------------------------------------

QuantizationStatistics get_quantization_statistics(nn::Module& model, data::DataLoader& loader,
                                                   int64_t max_batches) {
  calibrate(model, loader, max_batches);
  QuantizationStatistics st;
  for (auto& [path, m] : model.named_modules()) {
    if (!m->has_child("activation_post_process")) continue;
    nn::Module& post = *m->child("activation_post_process");
    ObserverBase* obs = dynamic_cast<ObserverBase*>(&post);
    if (auto* fq = dynamic_cast<FakeQuantize*>(&post)) obs = &fq->observer();
    TB_CHECK(obs != nullptr, "get_quantization_statistics: '{}' has a {}, not an observer (prepare "
             "the model with observers first)", path, post.type_name());
    TB_CHECK(obs->has_data(), "get_quantization_statistics: '{}' ({}) saw no data: is it used in "
             "forward?", path, m->type_name());
    auto [lo, hi] = obs->observed_range();
    QParams p = obs->calculate_qparams();
    LayerStatistics s{.path = path, .observer = obs->type_name()};
    std::vector<double> l = lo.to_vector(), h = hi.to_vector(), sc = p.scale.to_vector();
    s.min = *std::min_element(l.begin(), l.end());
    s.max = *std::max_element(h.begin(), h.end());
    s.scale = *std::max_element(sc.begin(), sc.end());
    s.zero_point = p.zero_point.to_int_vector()[0];
    s.qmin = p.qmin;
    s.qmax = p.qmax;
    st.layers.push_back(s);
  }
  TB_CHECK(!st.layers.empty(), "get_quantization_statistics: the model has no observers (call "
           "tb::quant::prepare first)");
  return st;
}

std::string QuantizationStatistics::str() const {
  size_t wp = 5, wo = 8;
  for (const auto& l : layers) wp = std::max(wp, l.path.size()), wo = std::max(wo, l.observer.size());
  std::string s = fmt::format("{:<{}}  {:<{}}  {:>11}  {:>11}  {:>11}  {:>5}  {}\n", "layer", wp,
                              "observer", wo, "min", "max", "scale", "zp", "range");
  for (const auto& l : layers)
    s += fmt::format("{:<{}}  {:<{}}  {:>11.5g}  {:>11.5g}  {:>11.5g}  {:>5}  [{}, {}]\n", l.path,
                     wp, l.observer, wo, l.min, l.max, l.scale, l.zero_point, l.qmin, l.qmax);
  return s;
}

// ---- checkpoints ----------------------------------------------------------------------------------

std::string stage(nn::Module& model) {
  bool prepared = false, qat = false;
  for (auto* m : model.modules()) {
    if (dynamic_cast<QuantizedConv2d*>(m) || dynamic_cast<QuantizedLinear*>(m) ||
        dynamic_cast<Quantize*>(m))
      return "converted";
    if (dynamic_cast<DynamicQuantizedLinear*>(m) || dynamic_cast<DynamicQuantizedLSTM*>(m))
      return "dynamic";
    if (dynamic_cast<FakeQuantizeBase*>(m) || dynamic_cast<QATConv2d*>(m) ||
        dynamic_cast<QATLinear*>(m) || dynamic_cast<QATConvBn2d*>(m))
      qat = true;
    if (dynamic_cast<ObserverBase*>(m)) prepared = true;
  }
  return qat ? "qat" : prepared ? "prepared" : "float";
}

void save(nn::Module& model, const std::string& path) {
  nn::save(model, path, {{"tb.quant", stage(model)}, {"tb.quant.schema", "1"}});
}

void load(nn::Module& model, const std::string& path) {
  SafetensorsFile f = load_safetensors(path);
  auto it = f.metadata.find("tb.quant");
  TB_CHECK(it != f.metadata.end(), "tb::quant::load: {} has no 'tb.quant' metadata (not saved by "
           "tb::quant::save)", path);
  std::string want = stage(model);
  TB_CHECK(it->second == want, "tb::quant::load: {} holds a {} model, but the model given is {} "
           "(prepare / prepare_qat / convert it the same way first)", path, it->second, want);
  model.load_state_dict(f.tensors);
}

} // namespace tb::quant
