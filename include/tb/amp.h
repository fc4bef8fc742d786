// tb/amp.h — mixed precision: an autocast scope and a gradient scaler, with PyTorch's semantics
// (torch.autocast, torch.cuda.amp.GradScaler). docs/mixed_precision.md lists what runs in which
// dtype and the measured figures.
//
//   tb::amp::GradScaler scaler;                       // float16 needs it; bfloat16 does not
//   for (auto& b : loader) {
//     tb::Tensor loss;
//     {
//       tb::amp::autocast guard({.dtype = tb::kFloat16});
//       loss = tb::cross_entropy((*net)(b.inputs), b.targets);   // float32 (losses run in float32)
//     }
//     opt.zero_grad();
//     scaler.scale(loss).backward();   // float32 gradients reach the float32 master weights
//     scaler.step(opt);                // unscales; skips the step if any gradient is inf/NaN
//     scaler.update();                 // x0.5 after an overflow, x2 after 2000 clean steps
//   }
#pragma once

#include <tb/core.h>
#include <tb/autograd.h>
#include <tb/io.h>
#include <tb/optim.h>

#include <map>

namespace tb::amp {

// ---------------------------------------------------------------------------------------------
// Autocast

struct AutocastOptions {
  DType dtype = kBFloat16;              // bfloat16 or float16 (tb::Error for anything else)
  bool enabled = true;                  // false: a scope with autocast off (nests like PyTorch's)
  DeviceType device = DeviceType::CPU;  // which device's ops it affects
};

// RAII scope, thread-local (like tb::no_grad). While it lives, on its device:
//   lower precision (to `dtype`): conv2d, linear, matmul — inputs, weights and bias are cast per
//     call; float32 master weights stay float32 and receive float32 gradients through the cast;
//   float32: softmax, log_softmax, sum, nll_loss, cross_entropy, mse_loss, kl_div —
//     half inputs are cast up and the result is float32;
//   everything else runs in its inputs' dtype (batch_norm: half activations with float32
//     parameters and statistics; relu, pooling, mean; binary ops promote, bf16 + f32 -> f32).
// Compared with PyTorch 1.13: softmax, log_softmax and sum follow its CUDA list (its CPU list keeps
// them in bfloat16; docs/mixed_precision.md explains why); the rest is its CPU list.
// float64 tensors are never cast. The previous state comes back when the scope ends, also by an
// exception. tb::Error for a dtype the device cannot compute: anything but bfloat16/float16, and
// any CUDA autocast (tb has no half-precision CUDA kernels yet).
class autocast {
 public:
  explicit autocast(AutocastOptions o = {});
  ~autocast();
  autocast(const autocast&) = delete;
  autocast& operator=(const autocast&) = delete;

 private:
  DeviceType device_;
  AutocastState prev_;
};

bool is_autocast_enabled(DeviceType device = DeviceType::CPU);
DType get_autocast_dtype(DeviceType device = DeviceType::CPU);

// ---------------------------------------------------------------------------------------------
// Gradient scaling

struct GradScalerOptions {
  double init_scale = 65536.0;   // 2^16
  double growth_factor = 2.0;    // scale *= growth_factor after growth_interval clean steps
  double backoff_factor = 0.5;   // scale *= backoff_factor after a step with an inf/NaN gradient
  int64_t growth_interval = 2000;
  bool enabled = true;           // false: scale() returns the loss, step() just steps
  bool dynamic = true;           // false: static loss scaling (the scale never changes; steps
                                 // with inf/NaN gradients are still skipped)
};

// torch.cuda.amp.GradScaler's state machine, per optimizer: READY -> unscale_ -> UNSCALED ->
// step -> STEPPED; update() returns every optimizer to READY. Misuse raises tb::Error with
// PyTorch's messages: unscale_ twice before update, unscale_ after step, step twice before
// update, update when no step recorded an inf check, unscale_/step/update before any scale(),
// step with no gradients, unscaling float16 gradients. The scale is a float32 value and its
// update is PyTorch's _amp_update_scale_ kernel (docs/mixed_precision.md).
class GradScaler {
 public:
  explicit GradScaler(GradScalerOptions o = {});

  // loss * scale (differentiable); the loss itself when disabled.
  Tensor scale(const Tensor& loss);
  // Divides every gradient of `opt` by the scale in place and records whether any is inf/NaN.
  void unscale_(optim::Optimizer& opt);
  // unscale_ (unless already done), then opt.step() when every gradient was finite. True when it
  // stepped.
  bool step(optim::Optimizer& opt);
  // Backoff or growth from the inf checks of this iteration (see GradScalerOptions); resets the
  // per-optimizer states. update(s) sets the scale to s instead.
  void update();
  void update(double new_scale);

  double get_scale() const;                  // 1.0 when disabled
  int64_t growth_tracker() const { return growth_tracker_; }
  bool is_enabled() const { return o_.enabled; }
  const GradScalerOptions& options() const { return o_; }
  // True when the last step() skipped the optimizer (an inf/NaN gradient).
  bool last_step_skipped() const { return last_skipped_; }

  // "scale" (float32), "growth_factor", "backoff_factor" (float64), "growth_interval",
  // "_growth_tracker" (int64): PyTorch's keys; empty when disabled. load_state_dict refuses an
  // empty dict (a disabled scaler's) as PyTorch does, and is a no-op on a disabled scaler.
  TensorDict state_dict() const;
  void load_state_dict(const TensorDict& d);

 private:
  enum class Stage { ready, unscaled, stepped };
  struct PerOptimizer {
    Stage stage = Stage::ready;
    bool has_inf_check = false; // any gradient was unscaled (PyTorch's found_inf_per_device)
    bool found_inf = false;
  };
  void check_scale(const char* fn) const;

  GradScalerOptions o_;
  float scale_ = 0.0f;
  bool scale_initialised_ = false; // PyTorch creates _scale lazily in scale()
  int64_t growth_tracker_ = 0;
  bool last_skipped_ = false;
  std::map<const optim::Optimizer*, PerOptimizer> per_opt_;
};

// The scale update of PyTorch's _amp_update_scale_ kernel, on a float32 scale:
//   found_inf: scale = float(scale * backoff), tracker = 0
//   else:      tracker + 1 == interval ? (scale = float(scale * growth) if finite, tracker = 0)
//                                      : tracker += 1
void update_scale(float& scale, int64_t& growth_tracker, bool found_inf, double growth_factor,
                  double backoff_factor, int64_t growth_interval);

} // namespace tb::amp
