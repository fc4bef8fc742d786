// TensorDataset: samples sliced from tensors already in memory (synthetic data, tests); Subset:
// the samples of another data set at given indices.
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

Subset::Subset(std::shared_ptr<const Dataset> dataset, std::vector<int64_t> indices)
    : dataset_(std::move(dataset)), indices_(std::move(indices)) {
  TB_CHECK(dataset_ != nullptr, "Subset: the data set is null");
  for (size_t i = 0; i < indices_.size(); i++)
    TB_CHECK(indices_[i] >= 0 && indices_[i] < dataset_->size(), "Subset: indices[{}] = {} is out "
             "of range for a data set of {} samples", i, indices_[i], dataset_->size());
}

std::shared_ptr<Subset> Subset::first(std::shared_ptr<const Dataset> dataset, int64_t n) {
  TB_CHECK(dataset != nullptr, "Subset::first: the data set is null");
  TB_CHECK(n >= 0, "Subset::first: n must be >= 0, got {}", n);
  std::vector<int64_t> indices((size_t)std::min(n, dataset->size()));
  for (size_t i = 0; i < indices.size(); i++) indices[i] = (int64_t)i;
  return std::make_shared<Subset>(std::move(dataset), std::move(indices));
}

Example Subset::get(int64_t index) const {
  TB_CHECK(index >= 0 && index < size(), "Subset: index {} out of range for {} samples", index,
           size());
  return dataset_->get(indices_[(size_t)index]);
}

std::optional<UInt8Images> Subset::uint8_images() const {
  std::optional<UInt8Images> im = dataset_->uint8_images();
  if (!im || indices_.empty()) return std::nullopt;
  for (size_t i = 1; i < indices_.size(); i++) // a window [start, start + n) of the pixels only
    if (indices_[i] != indices_[0] + (int64_t)i) return std::nullopt;
  im->pixels += indices_[0] * im->channels * im->height * im->width;
  im->targets += indices_[0];
  im->n = size();
  return im;
}

} // namespace tb::data
