// Training steps and evaluation: seeding, running loss and accuracy, a backward that catches
// NaN/Inf, loss and accuracy over a data set.
#include <tb/experiment.h>
#include <tb/nn_checks.h>

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

} // namespace tb::experiment
