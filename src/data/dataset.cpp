// TensorDataset: samples sliced from tensors already in memory (synthetic data, tests).
#include <tb/data.h>

namespace tb::data {

TensorDataset::TensorDataset(Tensor inputs, Tensor targets) : inputs_(std::move(inputs)) {
  check_defined("TensorDataset", inputs_, "inputs");
  check_defined("TensorDataset", targets, "targets");
  TB_CHECK(inputs_.dim() >= 1, "TensorDataset: inputs need a sample dim, got shape {}",
           shape_str(inputs_.shape()));
  TB_CHECK(targets.dim() == 1 && targets.size(0) == inputs_.size(0) &&
               (targets.dtype() == kInt64 || targets.dtype() == kInt32 ||
                targets.dtype() == kUInt8),
           "TensorDataset: targets must be an integer tensor [N] with N = {} (inputs {}), got {} {}",
           inputs_.size(0), shape_str(inputs_.shape()), targets.dtype(),
           shape_str(targets.shape()));
  targets_ = targets.to_int_vector();
}

Example TensorDataset::get(int64_t index) const {
  TB_CHECK(index >= 0 && index < size(), "TensorDataset: index {} out of range for {} samples",
           index, size());
  tb::no_grad guard; // a sample is data, never part of a graph
  return {inputs_.select(0, index).clone(), targets_[index]};
}

} // namespace tb::data
