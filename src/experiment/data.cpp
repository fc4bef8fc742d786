// Fashion-MNIST as the examples use it (declared in tb/experiment.h).
#include <tb/experiment.h>

namespace tb::experiment {

FashionMNISTData load_fashion_mnist(const FashionMNISTOptions& o) {
  FashionMNISTData d;
  d.root = o.root.empty() ? data::default_fashion_mnist_root() : o.root;
  d.train = std::make_shared<data::FashionMNIST>(d.root, true);
  d.test = std::make_shared<data::FashionMNIST>(d.root, false);
  if (o.limit_train > 0) d.train = data::Subset::first(d.train, o.limit_train);
  if (o.limit_test > 0) d.test = data::Subset::first(d.test, o.limit_test);
  if (o.batch_size > 0) check_batch_size(o.batch_size, d.train->size());
  d.transform = data::Compose({data::ToTensor(), data::Normalize({0.2860}, {0.3530})});
  return d;
}

} // namespace tb::experiment
