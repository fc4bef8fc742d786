// tb/optim.h — optimizers (SGD, Adam, AdamW) and learning-rate schedulers, as PyTorch's.
//
//   tb::optim::SGD opt(net->parameters(), {.lr = 0.1, .momentum = 0.9});
//   tb::optim::CosineAnnealingLR sched(opt, /*T_max=*/epochs);
//   for (...) { opt.zero_grad(); loss.backward(); opt.step(); }  sched.step();  // per epoch
//
// Updates run under tb::no_grad with in-place ops on the parameters, so every handle to a
// parameter (the module's, the user's) sees them. Parameters without a gradient are skipped.
// Optimizer state (momentum buffers, Adam moments, step counts) is a set of named tensors so a
// training checkpoint can hold it next to the model's state_dict (see state_dict()). State lives
// on each parameter's device and dtype when created: move the model (Module::to) before the first
// step; existing state is not moved with it (as in PyTorch).
//
// State follows a parameter by identity, so it survives Module::set_data. When that changed the
// parameter's shape (structured pruning), the old state no longer fits: the next step() finds a
// state tensor whose shape differs from the parameter's and starts that parameter's state afresh
// (no momentum, Adam's step count 0), as for a new parameter. To keep it instead, transform it
// first with remap_state (e.g. index_select the kept channels of the momentum buffer).
#pragma once

#include <tb/io.h>

#include <functional>
#include <memory>
#include <optional>
#include <unordered_map>
#include <utility>
#include <vector>

namespace tb::optim {

// Parameters sharing hyper-parameters. lr / weight_decay left unset take the optimizer's values
// (filled in by the optimizer's constructor). initial_lr is the lr schedulers start from.
struct ParamGroup {
  std::vector<Tensor> params;
  std::optional<double> lr, weight_decay;
  double initial_lr = 0;
};

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // One update of every parameter that has a gradient.
  virtual void step() = 0;
  // Clears the parameters' gradients (set_to_none: undefined; else zero-filled in place).
  void zero_grad(bool set_to_none = true);

  std::vector<ParamGroup>& param_groups() { return groups_; }
  const std::vector<ParamGroup>& param_groups() const { return groups_; }
  // lr and weight_decay unset take the optimizer's defaults.
  void add_param_group(ParamGroup g);
  double lr() const { return *groups_.at(0).lr; } // group 0's
  void set_lr(double lr);                         // every group's

  // The state of parameter p ("momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq",
  // "step"), or nullptr before its first update.
  const TensorDict* state(const Tensor& p) const;
  // Forgets p's state: the next step treats p as new.
  void reset_state(const Tensor& p);
  // Replaces each state tensor of p (except the "step" count) by fn(name, tensor), e.g. to follow
  // a shape change of p. tb::Error if a result's dtype or device differs from the old tensor's.
  void remap_state(const Tensor& p,
                   const std::function<Tensor(const std::string& name, const Tensor& t)>& fn);

  // Named tensors, PyTorch's layout flattened (parameters numbered across groups in order):
  //   "param_groups.<g>.lr", ".initial_lr", ".weight_decay"  float64 scalars
  //   "state.<i>.<name>"                                      per-parameter state
  TensorDict state_dict() const;
  // Restores a state_dict made for the same parameter list (shapes checked; state tensors are
  // copied to each parameter's device). Every mismatch is listed in one tb::Error; nothing is
  // changed on error.
  void load_state_dict(const TensorDict& dict);

  const std::string& name() const { return name_; }

 protected:
  Optimizer(const char* name, std::vector<ParamGroup> groups, double lr, double weight_decay);
  // The state of p, created empty on first use, and emptied when a state tensor's shape no longer
  // matches p's (see the note on set_data at the top).
  TensorDict& mutable_state(const Tensor& p);
  // Increments and returns the "step" count of p's state (an int64 scalar on the CPU).
  int64_t increment_step(TensorDict& state);

 private:
  std::string name_;
  double default_lr_, default_weight_decay_;
  std::vector<ParamGroup> groups_;
  std::unordered_map<const TensorImpl*, TensorDict> state_;
};

// Plain parameter lists become one group.
std::vector<ParamGroup> single_group(std::vector<Tensor> params);

// SGD, PyTorch's rule: g = grad + wd * p;
//   momentum: buf = g (first step) else buf = momentum * buf + (1 - dampening) * g;
//             g = nesterov ? g + momentum * buf : buf;
//   p -= lr * g.
// Settings with PyTorch's names and defaults:
//   SGD opt(net->parameters(), {.lr = 0.05, .momentum = 0.9, .weight_decay = 5e-4});
struct SGDOptions {
  double lr = 1e-3;
  double momentum = 0, dampening = 0, weight_decay = 0;
  bool nesterov = false;
};
class SGD : public Optimizer {
 public:
  SGD(std::vector<Tensor> params, double lr) : SGD(std::move(params), SGDOptions{.lr = lr}) {}
  SGD(std::vector<Tensor> params, const SGDOptions& o);
  SGD(std::vector<ParamGroup> groups, const SGDOptions& o);
  void step() override;
  double momentum, dampening;
  bool nesterov;
};

// Adam: t += 1; g = grad (+ wd * p for Adam; AdamW instead first does p *= 1 - lr * wd);
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  (amsgrad: vmax = max(vmax, v), used for v)
//   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
//   Adam opt(net->parameters(), {.lr = 3e-4, .betas = {0.9, 0.98}});
struct AdamOptions {
  double lr = 1e-3;
  std::pair<double, double> betas = {0.9, 0.999};
  double eps = 1e-8;
  double weight_decay = 0;
  bool amsgrad = false;
};
class Adam : public Optimizer {
 public:
  Adam(std::vector<Tensor> params, const AdamOptions& o = {});
  Adam(std::vector<ParamGroup> groups, const AdamOptions& o = {});
  void step() override;
  double beta1, beta2, eps;
  bool amsgrad;

 protected:
  Adam(const char* name, bool decoupled, std::vector<ParamGroup> groups, const AdamOptions& o);
  bool decoupled_weight_decay_ = false;
};

// AdamW: Adam with decoupled weight decay; PyTorch's default weight_decay 0.01.
struct AdamWOptions {
  double lr = 1e-3;
  std::pair<double, double> betas = {0.9, 0.999};
  double eps = 1e-8;
  double weight_decay = 1e-2;
  bool amsgrad = false;
};
class AdamW : public Adam {
 public:
  AdamW(std::vector<Tensor> params, const AdamWOptions& o = {});
  AdamW(std::vector<ParamGroup> groups, const AdamWOptions& o = {});
};

// =============================================================================================
// Learning-rate schedulers. Each is a closed form lr(epoch, base_lr), base_lr = the group's
// initial_lr. Construction sets lr(0) (epoch 0); step() advances the epoch by one and sets every
// group's lr; get_lr() returns the lrs currently set (PyTorch's get_last_lr()).

class LRScheduler {
 public:
  virtual ~LRScheduler() = default;
  void step();
  std::vector<double> get_lr() const;
  int64_t last_epoch() const { return last_epoch_; }
  const Optimizer& optimizer() const { return opt_; }
  // The lr of a group whose initial lr is `base_lr`, after `epoch` steps.
  virtual double lr_at(int64_t epoch, double base_lr) const = 0;
  // "last_epoch" (int64 scalar) and "base_lrs" (float64 [groups]), for checkpoints.
  TensorDict state_dict() const;
  void load_state_dict(const TensorDict& dict); // also sets the groups' lrs

 protected:
  explicit LRScheduler(Optimizer& opt);
  void apply(); // sets every group's lr to lr_at(last_epoch, base)
  Optimizer& opt_;
  std::vector<double> base_lrs_;
  int64_t last_epoch_ = 0;
};

// lr = base * gamma ^ floor(epoch / step_size).
class StepLR : public LRScheduler {
 public:
  StepLR(Optimizer& opt, int64_t step_size, double gamma = 0.1);
  double lr_at(int64_t epoch, double base_lr) const override;
  int64_t step_size;
  double gamma;
};

// lr = eta_min + (base - eta_min) (1 + cos(pi epoch / T_max)) / 2 (periodic past T_max, as
// PyTorch's closed form).
class CosineAnnealingLR : public LRScheduler {
 public:
  CosineAnnealingLR(Optimizer& opt, int64_t T_max, double eta_min = 0);
  double lr_at(int64_t epoch, double base_lr) const override;
  int64_t T_max;
  double eta_min;
};

// Linear ramp (PyTorch's LinearLR): lr = base * (start + (end - start) min(epoch, steps) / steps).
class LinearWarmup : public LRScheduler {
 public:
  LinearWarmup(Optimizer& opt, double start_factor, int64_t warmup_steps, double end_factor = 1.0);
  double lr_at(int64_t epoch, double base_lr) const override;
  double start_factor, end_factor;
  int64_t warmup_steps;
};

// Runs schedulers one after another (PyTorch's SequentialLR): scheduler i is active from
// milestones[i-1] on, seeing the epoch counted from its own start. E.g. warmup then cosine:
//   SequentialLR(opt, {warmup, cosine}, {warmup_steps}).
class SequentialLR : public LRScheduler {
 public:
  SequentialLR(Optimizer& opt, std::vector<std::shared_ptr<LRScheduler>> schedulers,
               std::vector<int64_t> milestones);
  double lr_at(int64_t epoch, double base_lr) const override;

 private:
  std::vector<std::shared_ptr<LRScheduler>> schedulers_;
  std::vector<int64_t> milestones_;
};

// Linear warmup from start_factor over warmup_steps, then cosine annealing to eta_min at
// total_steps.
std::shared_ptr<SequentialLR> warmup_cosine(Optimizer& opt, int64_t warmup_steps,
                                            int64_t total_steps, double start_factor = 0.1,
                                            double eta_min = 0);

} // namespace tb::optim
