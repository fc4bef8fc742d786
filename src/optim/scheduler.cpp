// Learning-rate schedulers as closed forms lr(epoch, base_lr) (formulas in include/tb/optim.h).
#include <tb/optim.h>

#include <algorithm>
#include <cmath>
#include <numbers>

namespace tb::optim {

// ---------------------------------------------------------------------------------------------
// Base

LRScheduler::LRScheduler(Optimizer& opt) : opt_(opt) {
  for (auto& g : opt.param_groups()) base_lrs_.push_back(g.initial_lr);
}

void LRScheduler::apply() {
  auto& groups = opt_.param_groups();
  TB_CHECK(groups.size() == base_lrs_.size(), "LRScheduler: the optimizer has {} parameter groups "
           "but the scheduler was made for {}", groups.size(), base_lrs_.size());
  for (size_t i = 0; i < groups.size(); i++) groups[i].lr = lr_at(last_epoch_, base_lrs_[i]);
}

void LRScheduler::step() {
  last_epoch_++;
  apply();
}

std::vector<double> LRScheduler::get_lr() const {
  std::vector<double> lrs;
  for (auto& g : opt_.param_groups()) lrs.push_back(*g.lr);
  return lrs;
}

TensorDict LRScheduler::state_dict() const {
  TensorDict out;
  out.insert("last_epoch", scalar_tensor((double)last_epoch_, TensorOptions(kInt64)));
  out.insert("base_lrs", from_vector(base_lrs_, {(int64_t)base_lrs_.size()}));
  return out;
}

void LRScheduler::load_state_dict(const TensorDict& dict) {
  const Tensor* epoch = dict.find("last_epoch");
  const Tensor* base = dict.find("base_lrs");
  TB_CHECK(epoch && base && dict.size() == 2, "LRScheduler::load_state_dict: expected exactly the "
           "keys 'last_epoch' and 'base_lrs', got {} keys", dict.size());
  TB_CHECK(epoch->defined() && epoch->numel() == 1 && epoch->item() >= 0,
           "LRScheduler::load_state_dict: 'last_epoch' must be a non-negative scalar");
  TB_CHECK(base->defined() && base->dim() == 1 && (size_t)base->numel() == base_lrs_.size(),
           "LRScheduler::load_state_dict: 'base_lrs' has shape {}, expected [{}]",
           base->defined() ? shape_str(base->shape()) : "undefined", base_lrs_.size());
  last_epoch_ = (int64_t)epoch->item();
  base_lrs_ = base->to_vector();
  apply();
}

// ---------------------------------------------------------------------------------------------
// StepLR: lr = base * gamma ^ floor(epoch / step_size)

StepLR::StepLR(Optimizer& opt, int64_t step_size, double gamma)
    : LRScheduler(opt), step_size(step_size), gamma(gamma) {
  TB_CHECK(step_size > 0, "StepLR: step_size must be positive, got {}", step_size);
  apply();
}

double StepLR::lr_at(int64_t epoch, double base) const {
  return base * std::pow(gamma, (double)(epoch / step_size));
}

// ---------------------------------------------------------------------------------------------
// CosineAnnealingLR: lr = eta_min + (base - eta_min) (1 + cos(pi epoch / T_max)) / 2

CosineAnnealingLR::CosineAnnealingLR(Optimizer& opt, int64_t T_max, double eta_min)
    : LRScheduler(opt), T_max(T_max), eta_min(eta_min) {
  TB_CHECK(T_max > 0, "CosineAnnealingLR: T_max must be positive, got {}", T_max);
  apply();
}

double CosineAnnealingLR::lr_at(int64_t epoch, double base) const {
  return eta_min + (base - eta_min) * (1 + std::cos(std::numbers::pi * (double)epoch / (double)T_max)) / 2;
}

// ---------------------------------------------------------------------------------------------
// LinearWarmup (PyTorch's LinearLR): factor goes linearly from start to end over warmup_steps.

LinearWarmup::LinearWarmup(Optimizer& opt, double start_factor, int64_t warmup_steps,
                           double end_factor)
    : LRScheduler(opt), start_factor(start_factor), end_factor(end_factor),
      warmup_steps(warmup_steps) {
  TB_CHECK(start_factor > 0 && start_factor <= 1, "LinearWarmup: start_factor must be in (0, 1], "
           "got {}", start_factor);
  TB_CHECK(end_factor >= 0 && end_factor <= 1, "LinearWarmup: end_factor must be in [0, 1], got {}",
           end_factor);
  TB_CHECK(warmup_steps > 0, "LinearWarmup: warmup_steps must be positive, got {}", warmup_steps);
  apply();
}

double LinearWarmup::lr_at(int64_t epoch, double base) const {
  double progress = (double)std::min(epoch, warmup_steps) / (double)warmup_steps;
  return base * (start_factor + (end_factor - start_factor) * progress);
}

// ---------------------------------------------------------------------------------------------
// SequentialLR

SequentialLR::SequentialLR(Optimizer& opt, std::vector<std::shared_ptr<LRScheduler>> schedulers,
                           std::vector<int64_t> milestones)
    : LRScheduler(opt), schedulers_(std::move(schedulers)), milestones_(std::move(milestones)) {
  TB_CHECK(!schedulers_.empty(), "SequentialLR: needs at least one scheduler");
  TB_CHECK(milestones_.size() + 1 == schedulers_.size(), "SequentialLR: {} schedulers need {} "
           "milestones, got {}", schedulers_.size(), schedulers_.size() - 1, milestones_.size());
  for (size_t i = 0; i < schedulers_.size(); i++)
    TB_CHECK(schedulers_[i] && &schedulers_[i]->optimizer() == &opt, "SequentialLR: scheduler {} "
             "is null or drives a different optimizer", i);
  for (size_t i = 0; i < milestones_.size(); i++)
    TB_CHECK(milestones_[i] > (i ? milestones_[i - 1] : 0), "SequentialLR: milestones must be "
             "positive and increasing, got {} at position {}", milestones_[i], i);
  apply();
}

double SequentialLR::lr_at(int64_t epoch, double base) const {
  size_t i = (size_t)(std::upper_bound(milestones_.begin(), milestones_.end(), epoch) -
                      milestones_.begin());
  int64_t start = i ? milestones_[i - 1] : 0;
  return schedulers_[i]->lr_at(epoch - start, base);
}

std::shared_ptr<SequentialLR> warmup_cosine(Optimizer& opt, int64_t warmup_steps,
                                            int64_t total_steps, double start_factor,
                                            double eta_min) {
  TB_CHECK(warmup_steps > 0 && total_steps > warmup_steps, "warmup_cosine: need 0 < warmup_steps "
           "< total_steps, got {} and {}", warmup_steps, total_steps);
  auto warmup = std::make_shared<LinearWarmup>(opt, start_factor, warmup_steps);
  auto cosine = std::make_shared<CosineAnnealingLR>(opt, total_steps - warmup_steps, eta_min);
  return std::make_shared<SequentialLR>(
      opt, std::vector<std::shared_ptr<LRScheduler>>{warmup, cosine},
      std::vector<int64_t>{warmup_steps});
}

} // namespace tb::optim
