// Recording the graph: nodes, edges, saved tensors and the thread-local grad mode.
#include <tb/autograd.h>

#include <atomic>

namespace tb {

static thread_local bool t_grad_enabled = true;
bool is_grad_enabled() { return t_grad_enabled; }
void set_grad_enabled(bool on) { t_grad_enabled = on; }

int next_hook_id() {
  static std::atomic<int> counter{1};
  return counter++;
}

SavedTensor::SavedTensor(const Tensor& t) : tensor(t) {
  if (t.defined()) saved_version = t.version();
}

Tensor SavedTensor::unpack(const char* op) const {
  if (tensor.defined())
    TB_CHECK(tensor.version() == saved_version,
             "{} backward: a tensor of shape {} saved for the gradient was modified by an in-place "
             "operation afterwards (version {} at save time, now {}); clone it before modifying it",
             op, shape_str(tensor.shape()), saved_version, tensor.version());
  return tensor;
}

// A leaf's accumulator is created on first use and shared by every later use of that leaf, so
// its hooks run once on the total gradient.
static std::shared_ptr<Node> grad_accumulator(const Tensor& leaf) {
  auto& meta = leaf.impl()->meta();
  if (auto acc = meta.grad_accumulator.lock()) return acc;
  auto acc = std::make_shared<Node>();
  acc->name = "AccumulateGrad";
  acc->leaf = leaf.impl();
  acc->out_shapes = {leaf.shape()};
  acc->out_dtypes = {leaf.dtype()};
  acc->out_devices = {leaf.device()};
  meta.grad_accumulator = acc;
  return acc;
}

Edge gradient_edge(const Tensor& t) {
  if (!t.defined() || !t.requires_grad()) return {};
  if (auto fn = t.grad_fn()) return {fn, t.output_nr()};
  return {grad_accumulator(t), 0};
}

std::shared_ptr<Node> make_node(const char* name, const std::vector<Tensor>& inputs) {
  if (!is_grad_enabled()) return nullptr;
  bool any = false;
  for (const auto& t : inputs) any = any || (t.defined() && t.requires_grad());
  if (!any) return nullptr;
  auto node = std::make_shared<Node>();
  node->name = name;
  for (const auto& t : inputs) node->next.push_back(gradient_edge(t));
  return node;
}

void attach_outputs(const std::shared_ptr<Node>& node, const std::vector<Tensor>& outputs) {
  node->num_outputs = (int)outputs.size();
  for (size_t i = 0; i < outputs.size(); i++) {
    const Tensor& out = outputs[i];
    node->out_shapes.push_back(out.shape());
    node->out_dtypes.push_back(out.dtype());
    node->out_devices.push_back(out.device());
    if (!is_floating(out.dtype())) continue; // integer outputs (indices) carry no gradient
    auto& meta = out.impl()->meta();
    meta.grad_fn = node;
    meta.output_nr = (int)i;
  }
}

} // namespace tb
