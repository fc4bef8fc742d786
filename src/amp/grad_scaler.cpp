// src/amp/grad_scaler.cpp — tb::amp::GradScaler: PyTorch 1.13's torch/cuda/amp/grad_scaler.py
// state machine and its _amp_update_scale_ / _amp_foreach_non_finite_check_and_unscale_ kernels
// (aten/src/ATen/native/cuda/AmpKernels.cu), device-agnostic.
//
// Per optimizer: READY --unscale_--> UNSCALED --step--> STEPPED; update() resets all to READY.
// unscale_: inv = float(1 / double(scale)); every gradient g: found_inf |= any(!isfinite(g)),
//   g *= inv (always, as the kernel does). step: unscale_ if READY, then opt.step() unless
//   found_inf. update: scale and growth tracker as update_scale() below, from the OR of the
//   found_inf flags of every optimizer stepped this iteration.
#include <tb/amp.h>

#include <cmath>

namespace tb::amp {

namespace {

// Elements of a floating tensor whose exponent bits are all set (inf or NaN).
template <class U> int64_t count_all_ones(const U* p, int64_t n, U mask) {
  int64_t c = 0;
  for (int64_t i = 0; i < n; i++) c += (p[i] & mask) == mask;
  return c;
}

bool any_nonfinite(const Tensor& g_in) {
  Tensor g = g_in.device().is_cpu() ? g_in.contiguous() : g_in.cpu().contiguous();
  int64_t n = g.numel();
  switch (g.dtype()) {
    case kFloat32: return count_all_ones((const uint32_t*)g.raw_data(), n, 0x7f800000u) > 0;
    case kFloat64: {
      const uint64_t mask = 0x7ff0000000000000ull;
      return count_all_ones((const uint64_t*)g.raw_data(), n, mask) > 0;
    }
    case kFloat16: return count_all_ones((const uint16_t*)g.raw_data(), n, (uint16_t)0x7c00) > 0;
    case kBFloat16: return count_all_ones((const uint16_t*)g.raw_data(), n, (uint16_t)0x7f80) > 0;
    default: return false;
  }
}

const char* kFix = "This may indicate your script did not use scaler.scale(loss or outputs) "
                   "earlier in the iteration.";

} // namespace

void update_scale(float& scale, int64_t& growth_tracker, bool found_inf, double growth_factor,
                  double backoff_factor, int64_t growth_interval) {
  if (found_inf) {
    scale = (float)((double)scale * backoff_factor);
    growth_tracker = 0;
    return;
  }
  int64_t successful = growth_tracker + 1;
  if (successful == growth_interval) {
    float grown = (float)((double)scale * growth_factor);
    if (std::isfinite(grown)) scale = grown;
    growth_tracker = 0;
  } else {
    growth_tracker = successful;
  }
}

GradScaler::GradScaler(GradScalerOptions o) : o_(o) {
  TB_CHECK(o.init_scale > 0 && std::isfinite(o.init_scale),
           "GradScaler: init_scale must be finite and > 0, got {}", o.init_scale);
  TB_CHECK(o.growth_factor > 1.0, "GradScaler: the growth factor must be > 1.0, got {}",
           o.growth_factor);
  TB_CHECK(o.backoff_factor < 1.0 && o.backoff_factor > 0.0,
           "GradScaler: the backoff factor must be < 1.0 (and > 0), got {}", o.backoff_factor);
  TB_CHECK(o.growth_interval > 0, "GradScaler: growth_interval must be a positive integer, got {}",
           o.growth_interval);
}

void GradScaler::check_scale(const char* fn) const {
  TB_CHECK(scale_initialised_, "GradScaler: attempted {} but _scale is None.  {}", fn, kFix);
}

Tensor GradScaler::scale(const Tensor& loss) {
  if (!o_.enabled) return loss;
  check_defined("GradScaler::scale", loss, "outputs");
  if (!scale_initialised_) {
    scale_ = (float)o_.init_scale;
    scale_initialised_ = true;
  }
  // PyTorch multiplies by a 1-element float32 tensor: a float16 loss is promoted to float32.
  return mul(loss, full({}, scale_, TensorOptions(kFloat32, loss.device())));
}

void GradScaler::unscale_(optim::Optimizer& opt) {
  if (!o_.enabled) return;
  check_scale("unscale_");
  PerOptimizer& st = per_opt_[&opt];
  TB_CHECK(st.stage != Stage::unscaled,
           "GradScaler: unscale_() has already been called on this optimizer since the last "
           "update().");
  TB_CHECK(st.stage != Stage::stepped, "GradScaler: unscale_() is being called after step().");
  float inv_scale = (float)(1.0 / (double)scale_);
  no_grad guard;
  bool found_inf = false, any = false;
  for (auto& group : opt.param_groups())
    for (auto& p : group.params) {
      Tensor g = p.grad();
      if (!g.defined()) continue;
      TB_CHECK(g.dtype() != kFloat16,
               "GradScaler: attempting to unscale FP16 gradients (parameter of shape {}): keep "
               "master weights in float32 and let autocast cast them", shape_str(p.shape()));
      if (any_nonfinite(g)) found_inf = true;
      g.mul_((double)inv_scale);
      any = true;
    }
  st.has_inf_check = any;
  st.found_inf = found_inf;
  st.stage = Stage::unscaled;
}

bool GradScaler::step(optim::Optimizer& opt) {
  if (!o_.enabled) {
    opt.step();
    last_skipped_ = false;
    return true;
  }
  check_scale("step");
  PerOptimizer& st = per_opt_[&opt];
  TB_CHECK(st.stage != Stage::stepped,
           "GradScaler: step() has already been called since the last update().");
  if (st.stage == Stage::ready) unscale_(opt);
  PerOptimizer& after = per_opt_[&opt];
  TB_CHECK(after.has_inf_check, "GradScaler: no inf checks were recorded for this optimizer "
           "(none of its parameters has a gradient).");
  last_skipped_ = after.found_inf;
  if (!after.found_inf) opt.step();
  after.stage = Stage::stepped;
  return !last_skipped_;
}

void GradScaler::update(double new_scale) {
  if (!o_.enabled) return;
  check_scale("update");
  TB_CHECK(std::isfinite(new_scale) && new_scale > 0,
           "GradScaler: update(new_scale) expects a finite scale > 0, got {}", new_scale);
  scale_ = (float)new_scale;
  per_opt_.clear();
}

void GradScaler::update() {
  if (!o_.enabled) return;
  check_scale("update");
  bool any_check = false, found_inf = false;
  for (const auto& [opt, st] : per_opt_) {
    if (!st.has_inf_check) continue;
    any_check = true;
    found_inf = found_inf || st.found_inf;
  }
  TB_CHECK(any_check, "GradScaler: no inf checks were recorded prior to update() (call "
           "step() or unscale_() with gradients first).");
  if (o_.dynamic)
    update_scale(scale_, growth_tracker_, found_inf, o_.growth_factor, o_.backoff_factor,
                 o_.growth_interval);
  per_opt_.clear();
}

double GradScaler::get_scale() const {
  if (!o_.enabled) return 1.0;
  return scale_initialised_ ? (double)scale_ : o_.init_scale;
}

TensorDict GradScaler::state_dict() const {
  if (!o_.enabled) return {};
  TensorDict d;
  d.insert("scale", full({}, get_scale(), kFloat32));
  d.insert("growth_factor", full({}, o_.growth_factor, kFloat64));
  d.insert("backoff_factor", full({}, o_.backoff_factor, kFloat64));
  d.insert("growth_interval", full({}, (double)o_.growth_interval, kInt64));
  d.insert("_growth_tracker", full({}, (double)growth_tracker_, kInt64));
  return d;
}

void GradScaler::load_state_dict(const TensorDict& d) {
  if (!o_.enabled) return;
  TB_CHECK(!d.empty(), "GradScaler: the source state dict is empty, possibly because it was "
           "saved from a disabled instance of GradScaler.");
  for (const char* key : {"scale", "growth_factor", "backoff_factor", "growth_interval",
                          "_growth_tracker"})
    TB_CHECK(d.contains(key) && d.at(key).numel() == 1,
             "GradScaler::load_state_dict: expected a one-element entry '{}'", key);
  GradScalerOptions o = o_;
  o.growth_factor = d.at("growth_factor").item();
  o.backoff_factor = d.at("backoff_factor").item();
  o.growth_interval = (int64_t)d.at("growth_interval").item();
  GradScaler check(o); // validates the loaded factors with the constructor's messages
  o_ = o;
  scale_ = (float)d.at("scale").item();
  scale_initialised_ = true;
  growth_tracker_ = (int64_t)d.at("_growth_tracker").item();
  per_opt_.clear();
}

} // namespace tb::amp
