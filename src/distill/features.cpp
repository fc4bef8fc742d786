// src/distill/features.cpp — feature capture by forward hooks, FitNets-style MSE through 1×1
// conv adapters, and attention transfer (Zagoruyko & Komodakis 2017).
//
//   attention_map(f) = a / max(‖a‖₂, 1e-12),  a_n = mean_c f²_{n,c,:,:} flattened  [N, H·W]
//   attention_transfer_loss(s, t) = mean((attention_map(s) − attention_map(t))²)
// Compositions of existing ops; the tests check them against PyTorch and by finite differences.
#include <tb/distill.h>
#include <tb/ops.h>

namespace tb::distill {

// ---- FeatureCapture ----------------------------------------------------------------------------

FeatureCapture::FeatureCapture(nn::Module& model, std::vector<std::string> paths)
    : paths_(std::move(paths)), captured_(std::make_shared<std::vector<Tensor>>(paths_.size())) {
  TB_CHECK(!paths_.empty(), "FeatureCapture: expected at least one module path");
  for (size_t i = 0; i < paths_.size(); i++) {
    nn::Module& m = model.get_submodule(paths_[i]); // tb::Error naming what exists
    std::weak_ptr<std::vector<Tensor>> slot = captured_;
    handles_.push_back(m.register_forward_hook(
        [slot, i](nn::Module&, const Tensor&, const Tensor& y) {
          if (auto c = slot.lock()) (*c)[i] = y;
        }));
  }
}

FeatureCapture::~FeatureCapture() {
  for (auto& h : handles_) h.remove();
}

const Tensor& FeatureCapture::get(size_t i) const {
  TB_CHECK(i < paths_.size(), "FeatureCapture: index {} out of range ({} paths)", i,
           paths_.size());
  TB_CHECK((*captured_)[i].defined(),
           "FeatureCapture: nothing captured at '{}' (run the model forward first)", paths_[i]);
  return (*captured_)[i];
}

const Tensor& FeatureCapture::get(const std::string& path) const {
  for (size_t i = 0; i < paths_.size(); i++)
    if (paths_[i] == path) return get(i);
  TB_CHECK(false, "FeatureCapture: '{}' is not one of the captured paths", path);
  return (*captured_)[0]; // unreachable
}

void FeatureCapture::clear() {
  for (auto& t : *captured_) t = Tensor();
}

// ---- attention transfer ------------------------------------------------------------------------

static void check_4d(const char* op, const char* which, const Tensor& f) {
  TB_CHECK(f.defined() && f.dim() == 4, "{}: {} features must be [N, C, H, W], got {}", op, which,
           f.defined() ? shape_str(f.shape()) : "undefined");
}

Tensor attention_map(const Tensor& features) {
  check_4d("attention_map", "the", features);
  Tensor a = flatten(mean(square(features), {1}), 1); // [N, H·W]
  Tensor n = clamp(sqrt(sum(square(a), {1}, true)), 1e-12, std::nullopt);
  return div(a, n);
}

Tensor attention_transfer_loss(const Tensor& student_features, const Tensor& teacher_features) {
  check_4d("attention_transfer_loss", "student", student_features);
  check_4d("attention_transfer_loss", "teacher", teacher_features);
  const Shape& s = student_features.shape();
  const Shape& t = teacher_features.shape();
  TB_CHECK(s[0] == t[0] && s[2] == t[2] && s[3] == t[3],
           "attention_transfer_loss: student {} and teacher {} features must have the same "
           "batch and spatial size (channels may differ)", shape_str(s), shape_str(t));
  return mean(square(sub(attention_map(student_features),
                         attention_map(teacher_features.detach()))));
}

// ---- FeatureDistiller --------------------------------------------------------------------------

// Both maps pooled to the smaller spatial size (a no-op where they match).
static std::pair<Tensor, Tensor> match_spatial(Tensor s, Tensor t) {
  int64_t h = std::min(s.size(2), t.size(2)), w = std::min(s.size(3), t.size(3));
  if (s.size(2) != h || s.size(3) != w) s = adaptive_avg_pool2d(s, h, w);
  if (t.size(2) != h || t.size(3) != w) t = adaptive_avg_pool2d(t, h, w);
  return {s, t};
}

static std::vector<std::string> paths_of(const std::vector<FeaturePair>& pairs, bool student) {
  std::vector<std::string> out;
  for (const auto& p : pairs) out.push_back(student ? p.student : p.teacher);
  return out;
}

// Runs `m` once on zeros in eval mode under no_grad, restoring its training flag.
static void probe(nn::Module& m, const Shape& input_shape) {
  bool was_training = m.is_training();
  TensorOptions o;
  auto params = m.parameters();
  if (!params.empty()) o = TensorOptions(params[0].dtype(), params[0].device());
  m.eval();
  {
    no_grad ng;
    m(zeros(input_shape, o));
  }
  m.train(was_training);
}

FeatureDistiller::FeatureDistiller(nn::Module& student, nn::Module& teacher,
                                   std::vector<FeaturePair> pairs, const Shape& input_shape,
                                   FeatureLoss loss)
    : pairs_(std::move(pairs)), kind_(loss) {
  student_cap_ = std::make_shared<FeatureCapture>(student, paths_of(pairs_, true));
  teacher_cap_ = std::make_shared<FeatureCapture>(teacher, paths_of(pairs_, false));
  probe(student, input_shape);
  probe(teacher, input_shape);
  for (size_t i = 0; i < pairs_.size(); i++) {
    const Tensor& s = student_cap_->get(i);
    const Tensor& t = teacher_cap_->get(i);
    check_4d("FeatureDistiller", ("student '" + pairs_[i].student + "'").c_str(), s);
    check_4d("FeatureDistiller", ("teacher '" + pairs_[i].teacher + "'").c_str(), t);
    int64_t cs = s.size(1), ct = t.size(1);
    nn::ModulePtr adapter = std::make_shared<nn::Identity>();
    if (kind_ == FeatureLoss::mse && cs != ct)
      adapter = std::make_shared<nn::Conv2d>(nn::Conv2dOptions{
          .in_channels = cs, .out_channels = ct, .kernel_size = 1, .bias = false,
          .tensor = TensorOptions(s.dtype(), s.device())});
    register_module(std::to_string(i), adapter);
  }
  clear();
}

Tensor FeatureDistiller::loss() const {
  Tensor total;
  for (size_t i = 0; i < pairs_.size(); i++) {
    auto [s, t] = match_spatial(student_cap_->get(i), teacher_cap_->get(i).detach());
    Tensor l;
    if (kind_ == FeatureLoss::mse) {
      s = (*child(std::to_string(i)))(s);
      l = mse_loss(s, t);
    } else {
      l = attention_transfer_loss(s, t);
    }
    total = total.defined() ? add(total, l) : l;
  }
  return total;
}

void FeatureDistiller::clear() {
  student_cap_->clear();
  teacher_cap_->clear();
}

} // namespace tb::distill
