// Training steps and evaluation: seeding, running loss and accuracy, a backward that catches
// NaN/Inf, loss and accuracy over a data set.
#include <tb/experiment.h>
#include <tb/nn_checks.h>

#include <chrono>
#include <cstdlib>

namespace tb::experiment {

void seed_everything(uint64_t seed) {
  manual_seed(seed);
  std::srand((unsigned)seed);
}

void Meter::add(double batch_loss_sum, const Tensor& logits, const Tensor& targets) {
  loss_sum += batch_loss_sum;
  correct += (int64_t)sum(eq(argmax(logits.detach(), 1), targets)).item();
  seen += targets.numel();
}

bool checked_backward(const Tensor& loss, nn::Module& model, OnNonFinite policy, int epoch,
                      int64_t step) {
  const char* hint = "use --on-nonfinite skip to skip such steps, or lower --lr";
  double value = loss.item();
  if (!std::isfinite(value)) {
    std::printf("\nnon-finite loss %g at epoch %d step %lld\n", value, epoch, (long long)step);
    TB_CHECK(policy == OnNonFinite::skip, "training stopped: the loss became {} at epoch {} step "
             "{} ({})", value, epoch, step, hint);
    model.zero_grad();
    return false;
  }
  loss.backward();
  // A finite loss can still give NaN/Inf gradients (an overflow inside backward): name them.
  std::vector<nn::NonFiniteGrad> bad = nn::nonfinite_grads(model);
  if (bad.empty()) return true;
  std::printf("\nnon-finite gradient at epoch %d step %lld: %s\n", epoch, (long long)step,
              bad[0].str().c_str());
  TB_CHECK(policy == OnNonFinite::skip, "training stopped at epoch {} step {}: {} ({})", epoch,
           step, bad[0].str(), hint);
  model.zero_grad();
  return false;
}

Score evaluate(nn::Module& model, data::DataLoader& loader) {
  no_grad guard;
  bool was_training = model.is_training();
  std::vector<Tensor> params = model.parameters();
  Device device = params.empty() ? kCPU : params[0].device();
  model.eval();
  Meter m;
  try {
    for (const data::Batch& b : loader) {
      Tensor x = b.inputs.to(device), y = b.targets.to(device);
      Tensor logits = model(x);
      m.add(cross_entropy(logits, y, 0.0, "sum").item(), logits, y);
    }
  } catch (...) {
    model.train(was_training);
    throw;
  }
  model.train(was_training);
  return {m.loss(), m.accuracy()};
}

FitResult fit(nn::Module& model, data::DataLoader& loader, const FitOptions& o) {
  FitResult r;
  if (o.epochs <= 0) return r;
  auto start = std::chrono::steady_clock::now();
  optim::SGD opt(model.parameters(),
                 {.lr = o.lr, .momentum = o.momentum, .weight_decay = o.weight_decay});
  int64_t per_epoch = o.max_steps > 0 ? std::min<int64_t>(o.max_steps, loader.size())
                                      : loader.size();
  int64_t total = per_epoch * o.epochs;
  int64_t warmup = o.warmup_steps < 0 ? std::max<int64_t>(1, per_epoch / 2) : o.warmup_steps;
  std::shared_ptr<optim::LRScheduler> sched;
  if (warmup > 0 && total > warmup)
    sched = optim::warmup_cosine(opt, warmup, total);
  else
    sched = std::make_shared<optim::CosineAnnealingLR>(opt, std::max<int64_t>(1, total));
  model.train();
  for (int epoch = 0; epoch < o.epochs; epoch++) {
    loader.set_epoch(epoch);
    Progress progress({.total = per_epoch,
                       .label = fmt::format("{} {}/{}", o.label, epoch + 1, o.epochs)});
    Meter meter;
    int64_t i = 0;
    for (const auto& b : loader) {
      if (i == per_epoch) break;
      if (o.before_step) o.before_step(r.steps, total);
      Tensor logits = model(b.inputs);
      Tensor loss = cross_entropy(logits, b.targets);
      opt.zero_grad();
      loss.backward();
      opt.step();
      sched->step();
      meter.add(loss.item() * (double)b.targets.numel(), logits, b.targets);
      progress.update(++i, meter);
      r.steps++;
      if (o.after_step) o.after_step(r.steps);
    }
    progress.finish();
    r.last_epoch = meter;
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

} // namespace tb::experiment
