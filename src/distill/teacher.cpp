// src/distill/teacher.cpp — the teacher in the training loop: eval mode, no_grad, and an
// optional per-epoch cache of its logits.
#include <tb/distill.h>
#include <tb/ops.h>

namespace tb::distill {

Teacher::Teacher(nn::ModulePtr model) : model_(std::move(model)) {
  TB_CHECK(model_ != nullptr, "Teacher: expected a model, got nullptr");
  model_->eval();
}

Tensor Teacher::logits(const Tensor& inputs) {
  model_->eval(); // again: a caller may have switched the tree back to training
  no_grad ng;
  return (*model_)(inputs);
}

void TeacherLogitCache::compute(Teacher& teacher, data::DataLoader& loader, int64_t epoch) {
  logits_.clear();
  labels_.clear();
  loader.set_epoch(epoch);
  for (const auto& b : loader) {
    logits_.push_back(teacher.logits(b.inputs).contiguous());
    labels_.push_back(b.targets);
  }
  loader.set_epoch(epoch); // the training loop that follows sees the same batches
  epoch_ = epoch;
}

const Tensor& TeacherLogitCache::logits(int64_t b, const Tensor& labels) const {
  TB_CHECK(b >= 0 && b < size(),
           "TeacherLogitCache: batch {} of epoch {} is not cached ({} batches; call compute "
           "for this epoch first)", b, epoch_, size());
  const Tensor& want = labels_[(size_t)b];
  TB_CHECK(labels.shape() == want.shape() && labels.to_vector() == want.to_vector(),
           "TeacherLogitCache: batch {} differs from the cached batch of epoch {} (labels {} "
           "vs {}): the loader's order or epoch is not the one the cache was computed for", b,
           epoch_, shape_str(labels.shape()), shape_str(want.shape()));
  return logits_[(size_t)b];
}

} // namespace tb::distill
