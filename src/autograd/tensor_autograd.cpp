// Tensor's autograd members: requires_grad, .grad, detach, backward, hooks, retain_grad.
#include <tb/autograd.h>

#include <algorithm>

namespace tb {

static const TensorImpl& impl_of(const std::shared_ptr<TensorImpl>& p) {
  TB_CHECK(p, "tensor: use of an undefined tensor");
  return *p;
}

bool Tensor::requires_grad() const {
  const auto& im = impl_of(impl_);
  return im.autograd && (im.autograd->requires_grad || im.autograd->grad_fn);
}

Tensor& Tensor::requires_grad_(bool r) {
  TB_CHECK(is_leaf() || r,
           "requires_grad_: only leaf tensors can change requires_grad (this one comes from '{}')",
           grad_fn() ? grad_fn()->name : "?");
  TB_CHECK(!r || is_floating(dtype()),
           "requires_grad_: only floating-point tensors can require grad, got {} (shape {})",
           dtype_name(dtype()), shape_str(shape()));
  impl_->meta().requires_grad = r;
  return *this;
}

bool Tensor::is_leaf() const {
  const auto& im = impl_of(impl_);
  return !im.autograd || !im.autograd->grad_fn;
}

Tensor Tensor::grad() const {
  const auto& im = impl_of(impl_);
  return im.autograd ? im.autograd->grad : Tensor();
}

void Tensor::set_grad(const Tensor& g) const { impl_->meta().grad = g; }

std::shared_ptr<Node> Tensor::grad_fn() const {
  const auto& im = impl_of(impl_);
  return im.autograd ? im.autograd->grad_fn : nullptr;
}

int Tensor::output_nr() const {
  const auto& im = impl_of(impl_);
  return im.autograd ? im.autograd->output_nr : 0;
}

Tensor Tensor::detach() const {
  const auto& im = impl_of(impl_);
  auto d = std::make_shared<TensorImpl>();
  d->storage = im.storage;
  d->sizes = im.sizes;
  d->strides = im.strides;
  d->offset = im.offset;
  d->dtype = im.dtype;
  return Tensor(d);
}

void Tensor::backward(const Tensor& grad, bool retain_graph) const {
  TB_CHECK(requires_grad(),
           "backward: tensor (shape {}) does not require grad and has no grad_fn; call "
           "requires_grad_() on the inputs before computing it",
           shape_str(shape()));
  Tensor g = grad;
  if (!g.defined()) {
    TB_CHECK(numel() == 1,
             "backward: grad can be implicitly created only for scalar outputs; this output has "
             "shape {}, so pass a gradient of that shape",
             shape_str(shape()));
    g = ones(shape(), TensorOptions(dtype(), device()));
  }
  run_backward({*this}, {g}, retain_graph);
}

// Leaf hooks live on the tensor (the engine runs them before accumulating into .grad); hooks of
// a non-leaf become pre-hooks of its grad_fn for its output slot.
int Tensor::register_hook(TensorHook hook) const {
  TB_CHECK(requires_grad(), "register_hook: tensor (shape {}) does not require grad",
           shape_str(shape()));
  int id = next_hook_id();
  if (is_leaf()) impl_->meta().hooks.emplace_back(id, std::move(hook));
  else grad_fn()->pre_hooks.push_back({output_nr(), id, std::move(hook)});
  return id;
}

void Tensor::remove_hook(int handle) const {
  if (!impl_ || !impl_->autograd) return;
  auto& hooks = impl_->autograd->hooks;
  std::erase_if(hooks, [&](const auto& h) { return h.first == handle; });
  if (auto fn = grad_fn()) std::erase_if(fn->pre_hooks, [&](const auto& h) { return h.id == handle; });
}

// A non-leaf keeps its gradient through a pre-hook on its grad_fn that stores it in .grad.
void Tensor::retain_grad() const {
  TB_CHECK(requires_grad(), "retain_grad: tensor (shape {}) does not require grad",
           shape_str(shape()));
  auto& m = impl_->meta();
  if (is_leaf() || m.retains_grad) return;
  m.retains_grad = true;
  std::weak_ptr<TensorImpl> weak = impl_;
  grad_fn()->pre_hooks.push_back({output_nr(), next_hook_id(), [weak](const Tensor& g) {
    if (auto impl = weak.lock()) {
      Tensor self(impl);
      Tensor old = self.grad();
      if (old.defined()) old.add_(g);
      else self.set_grad(g.clone());
    }
    return Tensor();
  }});
}


const char* node_name(const Node* n) { return n ? n->name.c_str() : ""; }

} // namespace tb
