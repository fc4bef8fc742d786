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
//
// The uint8 flow: convert also swaps the joins, activations and pools of the tree for their
// integer twins (QuantizedAdd, ..., QuantizedFlatten: subclasses, same state_dict). Given an
// input shape it then traces the model once (forward hooks on every module record the storages
// each call reads and writes) and lets an output travel as a uint8 activation where every module
// that reads it takes one (plan_flow below). A read the hooks cannot see (a float function in a
// parent's forward whose input some module also reads) would get uint8 and fail loudly: float
// ops refuse quantized activations (src/ops/qactivation.h). An output that no module reads
// (the model's output, or one only code in a parent's forward reads, as MobileNetV2's functional
// pool) stays float.
#include <tb/quant.h>

#include "src/quant/int8.h"
#include "src/quant/walk.h"

#include <algorithm>
#include <chrono>
#include <functional>
#include <map>
#include <set>
#include <typeinfo>

#include <nlohmann/json.hpp>

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

// The integer twin of a float join / activation / pool (nullptr for any other module). Exact
// types only: a subclass may compute something else.
template <class Float, class Twin> nn::ModulePtr twin_if(const nn::ModulePtr& m) {
  if (typeid(*m) != typeid(Float)) return nullptr;
  return std::make_shared<Twin>(static_cast<const Float&>(*m));
}
nn::ModulePtr integer_twin(const nn::ModulePtr& m) {
  using Make = nn::ModulePtr (*)(const nn::ModulePtr&);
  static const Make makers[] = {twin_if<nn::Add, QuantizedAdd>, twin_if<nn::Mul, QuantizedMul>,
                    twin_if<nn::Cat, QuantizedCat>, twin_if<nn::ReLU, QuantizedReLU>,
                    twin_if<nn::ReLU6, QuantizedReLU6>, twin_if<nn::Hardswish, QuantizedHardswish>,
                    twin_if<nn::Sigmoid, QuantizedSigmoid>, twin_if<nn::SiLU, QuantizedSiLU>,
                    twin_if<nn::Hardsigmoid, QuantizedHardsigmoid>,
                    twin_if<nn::ChannelShuffle, QuantizedChannelShuffle>,
                    twin_if<nn::MaxPool2d, QuantizedMaxPool2d>,
                    twin_if<nn::AvgPool2d, QuantizedAvgPool2d>,
                    twin_if<nn::AdaptiveAvgPool2d, QuantizedAdaptiveAvgPool2d>,
                    twin_if<nn::Flatten, QuantizedFlatten>};
  for (Make make : makers)
    if (nn::ModulePtr t = make(m)) return t;
  return nullptr;
}

// `flow`: the qparams of the quantizer whose grid the data is on at this point of the walk.
void convert_visit(nn::Module& parent, const std::string& prefix, const ConvertOptions& o,
                   ConversionReport& report, std::optional<QParams>& flow) {
  for (auto [name, c] : std::vector(parent.named_children())) {
    std::string path = prefix.empty() ? name : prefix + "." + name;
    std::string type = c->type_name();
    Role r = role(*c);
    if (r == Role::Internal) continue;
    if (nn::ModulePtr twin = integer_twin(c)) { // same options, children and hooks
      parent.set_module(name, twin);
      c = twin;
    }
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

// ---- the uint8 flow ---------------------------------------------------------------------------------

// Identity, eval Dropout and eval StochasticDepth (EfficientNet's; a module of the model layer,
// known here by its type name as in prepare's role()) pass their input on.
bool identity_in_eval(const nn::Module& m) {
  return typeid(m) == typeid(nn::Identity) || typeid(m) == typeid(nn::Dropout) ||
         m.type_name() == "StochasticDepth";
}

// The flag that makes module m hand on uint8 activations (plan_flow sets it, save / load keep
// it), if m has one: Quantize, and the value-preserving twins that keep their input's grid.
bool* emit_flag(nn::Module* m) {
  if (auto* q = dynamic_cast<Quantize*>(m)) return &q->emit_uint8;
  if (auto* p = dynamic_cast<QuantizedMaxPool2d*>(m)) return &p->emit_uint8;
  if (auto* f = dynamic_cast<QuantizedFlatten*>(m)) return &f->emit_uint8;
  if (auto* c = dynamic_cast<QuantizedChannelShuffle*>(m)) return &c->emit_uint8;
  return nullptr;
}

// A converted layer's kernel choice: integer, or float with the reason.
std::pair<bool*, std::string*> kernel_choice(nn::Module* m) {
  if (auto* c = dynamic_cast<QuantizedConv2d*>(m)) return {&c->integer, &c->float_reason};
  if (auto* l = dynamic_cast<QuantizedLinear*>(m)) return {&l->integer, &l->float_reason};
  return {nullptr, nullptr};
}

// Whether module m takes uint8 activations (the integer layers and twins, DeQuantStub), with
// the reason when not. Identity and Dropout pass their input on (the trace saw the same
// storage come out), so their readers are the input's readers.
std::string uint8_refusal(nn::Module& m, const std::vector<TraceCall>& calls) {
  if (auto [integer, reason] = kernel_choice(&m); integer)
    return *integer ? "" : "it runs the float kernel (" + *reason + ")";
  if (dynamic_cast<QuantizedAdd*>(&m) || dynamic_cast<QuantizedMul*>(&m) ||
      dynamic_cast<QuantizedCat*>(&m) || dynamic_cast<QuantizedReLU*>(&m) ||
      dynamic_cast<QuantizedReLU6*>(&m) || dynamic_cast<QuantizedHardswish*>(&m) ||
      dynamic_cast<QuantizedSigmoid*>(&m) || dynamic_cast<QuantizedSiLU*>(&m) ||
      dynamic_cast<QuantizedHardsigmoid*>(&m) || dynamic_cast<QuantizedChannelShuffle*>(&m) ||
      dynamic_cast<QuantizedMaxPool2d*>(&m) || dynamic_cast<QuantizedAvgPool2d*>(&m) ||
      dynamic_cast<QuantizedAdaptiveAvgPool2d*>(&m) || dynamic_cast<QuantizedFlatten*>(&m) ||
      dynamic_cast<DeQuantStub*>(&m))
    return "";
  if (identity_in_eval(m))
    return "it made a new float tensor"; // (when it passes its input on, it is no reader)
  return "it is a float module";
}

// Such a module returning its input: not a reader itself, its readers are the input's.
bool passes_input_on(const TraceCall& c) {
  return c.module && identity_in_eval(*c.module) && !c.inputs.empty() && c.inputs[0] == c.output;
}

// Layers whose input quantizer the tree order did not show (a branch fed from a parent's
// forward, as ShuffleNetV2's channel split): the trace shows the Quantize whose output (through
// value-preserving modules) they read. Such a layer gets that grid as its input qparams and, when
// nothing else stands in the way, the integer kernel.
void find_input_grids(nn::Module& model, const std::vector<TraceCall>& calls,
                      ConversionReport& report) {
  std::map<const nn::Module*, std::string> path_of;
  for (auto& [path, m] : model.named_modules()) path_of[m] = path;
  std::map<StorageId, QParams> grid; // storages that hold values on a Quantize's grid
  std::set<nn::Module*> seen;
  for (const TraceCall& c : calls) {
    if (!c.module) continue;
    if (auto* q = dynamic_cast<Quantize*>(c.module)) {
      if (q->qmin == 0 && q->qmax == 255) grid[c.output] = q->qparams();
      continue;
    }
    if (role(*c.module) == Role::PassThrough && !c.inputs.empty() && grid.count(c.inputs[0]) &&
        !dynamic_cast<DeQuantStub*>(c.module)) {
      QParams p = grid[c.inputs[0]];
      grid[c.output] = p;
      continue;
    }
    if (c.inputs.empty() || !grid.count(c.inputs[0]) || seen.count(c.module)) continue;
    seen.insert(c.module);
    auto fix = [&](auto& layer) {
      if (layer.integer || !layer.has_child("activation_post_process")) return;
      auto* post = dynamic_cast<Quantize*>(layer.child("activation_post_process").get());
      if (!post) return;
      const QParams& in = grid[c.inputs[0]];
      if (!int8::unsupported_reason(layer.weight_qparams(), in, post->qparams()).empty()) return;
      std::string was = layer.float_reason;
      layer.float_reason.clear();
      layer.integer = true;
      layer.set_input_qparams(in);
      for (LayerReport& l : report.layers)
        if (l.path == path_of[c.module]) {
          size_t at = l.reason.find("float kernel (dequantized weights)");
          if (at != std::string::npos) l.reason = l.reason.substr(0, at);
          l.reason += "integer kernel (u8 x s8; input grid found by the trace)";
        }
    };
    if (auto* qc = dynamic_cast<QuantizedConv2d*>(c.module)) fix(*qc);
    if (auto* ql = dynamic_cast<QuantizedLinear*>(c.module)) fix(*ql);
  }
}

// Median milliseconds of `runs` calls of fn after one warm-up call.
double time_ms(const std::function<void()>& fn, int runs) {
  fn();
  std::vector<double> ms;
  for (int i = 0; i < runs; i++) {
    auto t0 = std::chrono::steady_clock::now();
    fn();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                     .count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// keep_faster: each integer layer timed on its traced input shape both ways (module forward,
// no hooks: the u8 x s8 kernel on a uint8 input, the float conv / linear with the dequantized
// weight on a float input); float kept where int8 is not faster.
template <class Layer>
void time_layer(Layer& m, const std::string& path, const Shape& shape, int runs,
                ConversionReport& report) {
  no_grad ng;
  Generator g(1);
  kernels::QGrid in{(float)m.get("input_scale").item(), (int32_t)m.get("input_zero_point").item()};
  Tensor xf = randn(shape, {}, &g);
  if (xf.dim() == 4) xf = xf.contiguous_channels_last(); // the carriers' layout
  Tensor xq = int8::quantize_activation(xf, in);
  double int8_ms = time_ms([&] { m.forward(xq); }, runs);
  m.integer = false;
  double float_ms = time_ms([&] { m.forward(xf); }, runs);
  m.integer = int8_ms < float_ms;
  std::string verdict =
      m.integer ? fmt::format("int8 kept: {:.4f} ms vs float {:.4f} ms per call on {}", int8_ms,
                              float_ms, shape_str(shape))
                : fmt::format("kept float (keep_faster): int8 {:.4f} ms is not faster than float "
                              "{:.4f} ms per call on {}", int8_ms, float_ms, shape_str(shape));
  if (!m.integer) m.float_reason = verdict;
  for (LayerReport& l : report.layers)
    if (l.path == path) {
      l.int8_ms = int8_ms;
      l.float_ms = float_ms;
      l.reason += "; " + verdict;
    }
}

// ConvertOptions::fuse_add, once the uint8 flow is planned: each add (called once) whose input k
// is the output of an integer conv (called once) that travels as uint8 and that no other module
// reads, and whose other input was made before that conv ran, is folded into the conv
// (ConvAddFusion). A hook on the module that made the other input (the first one, innermost, to
// return it) hands it to the conv at each call. `readers` as plan_flow's.
void plan_conv_add(const std::vector<TraceCall>& calls,
                   const std::map<StorageId, std::vector<nn::Module*>>& readers,
                   std::map<const nn::Module*, std::string>& path_of, ConversionReport& report) {
  std::map<const nn::Module*, int> times_called;
  std::map<StorageId, size_t> made_by; // the first call returning each storage (not a Quantize)
  for (size_t i = 0; i < calls.size(); i++) {
    nn::Module* m = calls[i].module;
    if (!m) continue;
    times_called[m]++;
    if (role(*m) != Role::Internal) made_by.emplace(calls[i].output, i);
  }
  for (const TraceCall& c : calls) {
    auto* add = dynamic_cast<QuantizedAdd*>(c.module);
    if (!add || times_called[add] != 1 || c.inputs.size() != 2 || !int8::output_grid_of(*add))
      continue;
    for (int k : {1, 0}) { // the conv as the add's second input first (MobileNetV2's x + conv(x))
      StorageId s = c.inputs[k], r = c.inputs[1 - k];
      auto ic = made_by.find(s), ir = made_by.find(r);
      if (s == r || ic == made_by.end() || ir == made_by.end() || ir->second >= ic->second) continue;
      auto* conv = dynamic_cast<QuantizedConv2d*>(calls[ic->second].module);
      if (!conv || !conv->integer || times_called[conv] != 1 || conv->fused_add.f) continue;
      auto* q = conv->has_child("activation_post_process")
                    ? dynamic_cast<Quantize*>(conv->child("activation_post_process").get())
                    : nullptr;
      auto rd = readers.find(s);
      if (!q || !q->emit_uint8 || rd == readers.end() ||
          rd->second != std::vector<nn::Module*>{add})
        continue;
      auto f = std::make_shared<ConvAddFusion>();
      f->conv_input = k;
      f->add_output = add->child("activation_post_process");
      f->producer = calls[ir->second].module;
      conv->fused_add.f = add->fused_conv.f = f;
      std::weak_ptr<ConvAddFusion> w = f;
      calls[ir->second].module->register_forward_hook(
          [w](nn::Module& mod, const std::vector<Tensor>&, const Tensor& y) {
            if (auto f = w.lock(); f && &mod == f->producer) f->residual = y; // not a clone's
            return Tensor();
          });
      report.fused_adds++;
      for (LayerReport& l : report.layers)
        if (l.path == path_of[conv])
          l.reason += fmt::format("; with the add '{}' (sum post-op, residual from '{}')",
                                  path_of[add], path_of[f->producer]);
      break;
    }
  }
}

void plan_flow(nn::Module& model, const ConvertOptions& o, ConversionReport& report) {
  std::map<const nn::Module*, std::string> path_of;
  for (auto& [path, m] : model.named_modules()) path_of[m] = path.empty() ? "(root)" : path;
  std::vector<TraceCall> calls = trace(model, o.input_shape);
  find_input_grids(model, calls, report);

  if (o.keep_faster) {
    std::set<nn::Module*> timed;
    for (const TraceCall& c : calls) {
      if (!c.module || timed.count(c.module)) continue;
      if (auto* q = dynamic_cast<QuantizedConv2d*>(c.module); q && q->integer) {
        time_layer(*q, path_of[q], c.input_shape, o.timing_runs, report);
        timed.insert(q);
      } else if (auto* l = dynamic_cast<QuantizedLinear*>(c.module); l && l->integer) {
        time_layer(*l, path_of[l], c.input_shape, o.timing_runs, report);
        timed.insert(l);
      }
    }
  }

  // Readers of each storage: the calls of modules that compute (not containers, not Quantize).
  std::map<StorageId, std::vector<nn::Module*>> readers;
  for (const TraceCall& c : calls) {
    if (c.module && (role(*c.module) == Role::Container || role(*c.module) == Role::Internal ||
                     passes_input_on(c)))
      continue;
    for (StorageId s : c.inputs) readers[s].push_back(c.module); // nullptr: the caller
  }
  // Each emitter (a Quantize, or a value-preserving twin that keeps its input's grid) goes uint8
  // when, at every call, every reader of its output takes uint8.
  std::map<nn::Module*, std::string> refusal; // "" = uint8
  std::vector<nn::Module*> order;
  for (const TraceCall& c : calls) {
    nn::Module* e = c.module;
    auto* q = dynamic_cast<Quantize*>(e);
    if (!e || !emit_flag(e) || (q && (q->qmin != 0 || q->qmax != 255))) continue; // 8-bit grids only
    if (!refusal.count(e)) order.push_back(e), refusal[e] = "";
    if (!refusal[e].empty()) continue;
    auto it = readers.find(c.output);
    std::vector<nn::Module*> rs;
    if (it != readers.end())
      for (nn::Module* r : it->second)
        if (r != e) rs.push_back(r);
    if (rs.empty()) refusal[e] = "no module reads it (code in a parent's forward does)";
    for (nn::Module* r : rs) {
      if (!refusal[e].empty()) break;
      if (r == nullptr) {
        refusal[e] = "it is the model's output";
        continue;
      }
      std::string why = uint8_refusal(*r, calls);
      if (!why.empty())
        refusal[e] = fmt::format("read by '{}' ({}): {}", path_of[r], r->type_name(), why);
    }
  }
  // The trace's own calls are not the caller's.
  for (nn::Module* m : model.modules()) {
    if (auto* c = dynamic_cast<QuantizedConv2d*>(m)) c->off_grid_calls = 0;
    if (auto* l = dynamic_cast<QuantizedLinear*>(m)) l->off_grid_calls = 0;
  }
  for (nn::Module* e : order) {
    bool u8 = refusal[e].empty();
    *emit_flag(e) = u8;
    if (u8) {
      report.uint8_outputs++;
    } else {
      report.float_outputs++;
      report.float_output_reasons.push_back(path_of[e] + ": float, " + refusal[e]);
    }
  }
  if (o.fuse_add) plan_conv_add(calls, readers, path_of, report);
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
  TB_CHECK(!o.keep_faster || !o.input_shape.empty(), "convert: keep_faster times each layer on "
           "the shape it sees: give ConvertOptions::input_shape too");
  TB_CHECK(o.timing_runs >= 1, "convert: timing_runs must be >= 1, got {}", o.timing_runs);
  ConversionReport report;
  std::optional<QParams> flow; // the model's input is float
  convert_visit(model, "", o, report, flow);
  if (!o.input_shape.empty()) plan_flow(model, o, report);
  return report;
}

ConversionReport quantize(nn::Module& model, const QConfigMapping& config,
                          data::DataLoader& calibration, int64_t max_batches) {
  ConversionReport prepared = prepare(model, config);
  bool was_training = model.is_training();
  calibrate(model, calibration, max_batches);
  model.eval();
  Shape input_shape; // the uint8 flow is planned on the shape of a calibration batch
  for (const auto& b : calibration) {
    input_shape = b.inputs.shape();
    break;
  }
  ConversionReport converted = convert(model, {.input_shape = input_shape});
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
  std::map<std::string, std::string> meta{{"tb.quant", stage(model)}, {"tb.quant.schema", "1"}};
  if (meta["tb.quant"] == "converted") {
    // The run plan convert made: which outputs travel as uint8, which layers run float and why.
    nlohmann::json uint8 = nlohmann::json::array(), float_kernel = nlohmann::json::object();
    for (auto& [p, m] : model.named_modules()) {
      if (bool* e = emit_flag(m); e && *e) uint8.push_back(p);
      if (auto [integer, reason] = kernel_choice(m); integer && !*integer) float_kernel[p] = *reason;
    }
    meta["tb.quant.uint8"] = uint8.dump();
    meta["tb.quant.float_kernel"] = float_kernel.dump();
  }
  nn::save(model, path, meta);
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
  // The saved run plan, when there is one: the uint8 flow and the layers kept float.
  auto u8 = f.metadata.find("tb.quant.uint8"), fk = f.metadata.find("tb.quant.float_kernel");
  if (u8 == f.metadata.end() || fk == f.metadata.end()) return;
  nlohmann::json uint8 = nlohmann::json::parse(u8->second, nullptr, false),
                 float_kernel = nlohmann::json::parse(fk->second, nullptr, false);
  TB_CHECK(uint8.is_array() && float_kernel.is_object(), "tb::quant::load: {}: malformed "
           "'tb.quant.uint8' / 'tb.quant.float_kernel' metadata", path);
  std::set<std::string> emitting;
  for (const auto& p : uint8) {
    TB_CHECK(p.is_string(), "tb::quant::load: {}: malformed 'tb.quant.uint8' metadata", path);
    emitting.insert(p.get<std::string>());
  }
  for (auto& [p, m] : model.named_modules()) {
    if (bool* e = emit_flag(m)) *e = emitting.count(p) > 0;
    auto [integer, reason] = kernel_choice(m);
    if (integer && float_kernel.contains(p) && float_kernel[p].is_string()) {
      *integer = false;
      *reason = float_kernel[p].get<std::string>();
    }
  }
}

namespace walk {

namespace {
struct StorageIds {
  std::map<const Storage*, std::pair<std::weak_ptr<Storage>, StorageId>> ids;
  StorageId next = 1;
  StorageId of(const Tensor& t) {
    if (!t.defined()) return 0;
    auto it = ids.find(t.storage().get());
    if (it != ids.end() && it->second.first.lock() == t.storage()) return it->second.second;
    ids[t.storage().get()] = {t.storage(), next};
    return next++;
  }
};

} // namespace

std::vector<TraceCall> trace(nn::Module& model, const Shape& shape) {
  std::vector<TraceCall> calls;
  std::vector<nn::HookHandle> hooks;
  StorageIds ids;
  for (nn::Module* m : model.modules()) {
    bool dequant = dynamic_cast<DeQuantStub*>(m) != nullptr;
    hooks.push_back(m->register_forward_hook(
        [&calls, &ids, dequant](nn::Module& mod, const std::vector<Tensor>& in, const Tensor& y) {
          TraceCall c{&mod, {}, 0, in.empty() ? Shape{} : in[0].shape()};
          for (const Tensor& t : in)
            if (t.defined()) c.inputs.push_back(ids.of(t));
          // A DeQuantStub makes a new float tensor from a uint8 one: so in the trace too, so that
          // the model's output is not mistaken for its input.
          Tensor out = dequant && y.defined() ? y.clone() : y;
          c.output = ids.of(out);
          calls.push_back(std::move(c));
          return out;
        }));
  }
  Tensor out;
  {
    no_grad ng;
    Generator g(0);
    try {
      out = model(randn(shape, {}, &g));
    } catch (...) {
      for (auto& h : hooks) h.remove();
      throw;
    }
  }
  for (auto& h : hooks) h.remove();
  // The root's own call is last; its output is read by the caller.
  calls.push_back({nullptr, {ids.of(out)}, 0, {}});
  return calls;
}


} // namespace walk

} // namespace tb::quant
