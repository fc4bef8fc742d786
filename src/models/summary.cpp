// src/models/summary.cpp — tb::summary: a per-layer table of output shapes, parameters and
// multiply-adds, gathered by forward hooks on the leaf modules during one forward pass.
//
// Multiply-adds (MACs), for the whole batch:
//   Conv2d: N * Cout * Ho * Wo * (Cin / groups) * kh * kw   (bias adds not counted)
//   Linear: rows * in_features * out_features               (rows = output numel / out_features)
//   others: 0 (BN folds into the conv at inference; activations, pooling and residual adds are
//           a few % of the total and are what the papers leave out too)
#include <tb/models.h>

#include <algorithm>

namespace tb {

namespace {

std::string with_commas(int64_t v) {
  std::string s = std::to_string(v < 0 ? -v : v), out;
  for (size_t i = 0; i < s.size(); i++) {
    if (i > 0 && (s.size() - i) % 3 == 0) out += ',';
    out += s[i];
  }
  return v < 0 ? "-" + out : out;
}

int64_t layer_mult_adds(nn::Module& m, const Tensor& out) {
  if (auto* c = dynamic_cast<nn::Conv2d*>(&m)) {
    const Shape& w = c->weight().shape(); // [Cout, Cin/groups, kh, kw]
    return out.numel() * w[1] * w[2] * w[3];
  }
  if (auto* l = dynamic_cast<nn::Linear*>(&m)) return out.numel() * l->in_features();
  return 0;
}

// Restores every module's own training flag (pre-order, so a parent's recursive train() is
// overwritten by its children's saved flags after it).
struct ModeGuard {
  std::vector<std::pair<nn::Module*, bool>> saved;
  explicit ModeGuard(nn::Module& root) {
    for (auto* m : root.modules()) saved.emplace_back(m, m->is_training());
  }
  ~ModeGuard() {
    for (auto& [m, on] : saved) m->train(on);
  }
};

struct HooksGuard {
  std::vector<nn::HookHandle> handles;
  ~HooksGuard() {
    for (auto& h : handles) h.remove();
  }
};

} // namespace

ModelSummary summary(nn::Module& model, const Shape& input_shape, TensorOptions o) {
  ModelSummary s;
  s.input_shape = input_shape;
  for (auto& p : model.parameters()) {
    s.total_params += p.numel();
    if (p.requires_grad()) s.trainable_params += p.numel();
  }

  std::vector<const nn::Module*> seen; // modules already given their parameter count
  {
    ModeGuard mode(model);
    HooksGuard hooks;
    model.eval();
    for (auto& [name, m] : model.named_modules()) {
      if (!m->named_children().empty()) continue;
      std::string row_name = name.empty() ? "(model)" : name;
      hooks.handles.push_back(m->register_forward_hook(
          [&s, &seen, row_name](nn::Module& mod, const Tensor&, const Tensor& out) {
            SummaryRow r;
            r.name = row_name;
            r.type = mod.type_name();
            r.output_shape = out.shape();
            if (std::find(seen.begin(), seen.end(), &mod) == seen.end()) {
              seen.push_back(&mod);
              for (auto& p : mod.parameters(false)) r.params += p.numel();
            }
            r.mult_adds = layer_mult_adds(mod, out);
            s.total_mult_adds += r.mult_adds;
            s.rows.push_back(std::move(r));
          }));
    }
    no_grad ng;
    model(zeros(input_shape, o.with_requires_grad(false)));
  }
  return s;
}

std::string ModelSummary::str() const {
  size_t name_w = 20, shape_w = 14;
  for (auto& r : rows) {
    name_w = std::max(name_w, r.name.size() + r.type.size() + 3);
    shape_w = std::max(shape_w, shape_str(r.output_shape).size());
  }
  const size_t width = name_w + 2 + shape_w + 2 + 12 + 2 + 15;
  std::string rule(width, '='), out;
  auto line = [&](const std::string& a, const std::string& b, const std::string& c,
                  const std::string& d) {
    out += fmt::format("{:<{}}  {:<{}}  {:>12}  {:>15}\n", a, name_w, b, shape_w, c, d);
  };
  out += rule + "\n";
  line("Layer (type)", "Output Shape", "Param #", "Mult-Adds");
  out += rule + "\n";
  for (auto& r : rows)
    line(r.name + " (" + r.type + ")", shape_str(r.output_shape),
         r.params ? with_commas(r.params) : "--", r.mult_adds ? with_commas(r.mult_adds) : "--");
  out += rule + "\n";
  out += fmt::format("Input shape: {}\n", shape_str(input_shape));
  out += fmt::format("Total params: {}\n", with_commas(total_params));
  out += fmt::format("Trainable params: {}\n", with_commas(trainable_params));
  out += fmt::format("Non-trainable params: {}\n", with_commas(total_params - trainable_params));
  if (total_mult_adds >= 1000000000)
    out += fmt::format("Total mult-adds (G): {:.3f}\n", total_mult_adds / 1e9);
  else
    out += fmt::format("Total mult-adds (M): {:.2f}\n", total_mult_adds / 1e6);
  out += rule + "\n";
  return out;
}

} // namespace tb
