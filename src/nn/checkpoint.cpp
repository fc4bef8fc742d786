// Gradient checkpointing (tb/utils.h): forward without keeping activations, one autograd node
// whose backward recomputes the segment and back-propagates through the recomputation.
//
//   forward:  y = fn(x) under no_grad;  node "checkpoint"(x, p_1..p_n) -> y
//   backward: x' = x.detach() (requires grad as x), with grad on and the forward's RNG and
//             autocast state: y' = fn(x');  (dx, dp_1..dp_n) = grad(y', {x', p_1..p_n}, dy)
#include <tb/utils.h>

namespace tb::utils {

namespace {

// The state a recompute must see as forward saw it: the default generator (dropout masks) and
// the autocast state of both device types (the engine runs backward with autocast off).
struct ForwardState {
  Generator rng;
  AutocastState cpu, cuda;
  static ForwardState now() {
    return {default_generator(), autocast_state(DeviceType::CPU), autocast_state(DeviceType::CUDA)};
  }
  void make_current() const {
    default_generator() = rng;
    set_autocast_state(DeviceType::CPU, cpu);
    set_autocast_state(DeviceType::CUDA, cuda);
  }
};

// Sets a saved state for its lifetime and puts back what was there (also on an exception).
struct ScopedState {
  explicit ScopedState(const ForwardState& s) : prev(ForwardState::now()) { s.make_current(); }
  ~ScopedState() { prev.make_current(); }
  ForwardState prev;
};

} // namespace

Tensor checkpoint(const std::function<Tensor(const Tensor&)>& fn, const Tensor& x,
                  const std::vector<Tensor>& params) {
  check_defined("checkpoint", x, "input");
  // The node's differentiable inputs: x (if it needs grad) and the parameters that do.
  std::vector<Tensor> inputs;
  bool x_grad = x.requires_grad();
  if (x_grad) inputs.push_back(x);
  for (const auto& p : params)
    if (p.defined() && p.requires_grad()) inputs.push_back(p);
  if (!is_grad_enabled() || inputs.empty()) return fn(x); // nothing to differentiate: plain run

  ForwardState state = ForwardState::now(); // what dropout draws from, autocast's dtype
  Tensor y;
  {
    no_grad ng;
    y = fn(x);
  }
  TB_CHECK(y.defined() && is_floating(y.dtype()),
           "checkpoint: the segment must return a defined floating tensor, got {}",
           y.defined() ? dtype_name(y.dtype()) : "an undefined tensor");
  auto node = make_node("checkpoint", inputs);
  if (!node) return y;
  SavedTensor saved_x(x);
  std::vector<SavedTensor> saved_params;
  for (size_t i = x_grad ? 1 : 0; i < inputs.size(); i++) saved_params.emplace_back(inputs[i]);
  node->backward = [fn, saved_x, saved_params, x_grad, state](const std::vector<Tensor>& g) {
    Tensor x0 = saved_x.unpack("checkpoint");
    std::vector<Tensor> wrt;
    Tensor xr = x0.detach();
    if (x_grad) {
      xr.requires_grad_(true);
      wrt.push_back(xr);
    }
    for (const auto& sp : saved_params) wrt.push_back(sp.unpack("checkpoint"));
    // Recompute with the forward's random and autocast state, then put the current one back.
    Tensor yr;
    {
      ScopedState scoped(state);
      enable_grad eg;
      yr = fn(xr);
    }
    TB_CHECK(yr.defined() && yr.shape() == g[0].shape() && yr.dtype() == g[0].dtype(),
             "checkpoint: the recomputed output is {} {}, but forward gave {} {} (the segment "
             "must compute the same thing twice)",
             yr.defined() ? shape_str(yr.shape()) : std::string("undefined"),
             yr.defined() ? dtype_name(yr.dtype()) : "", shape_str(g[0].shape()),
             dtype_name(g[0].dtype()));
    if (!yr.requires_grad()) return std::vector<Tensor>(wrt.size()); // no path to the inputs
    return grad({yr}, wrt, {g[0]});
  };
  attach_outputs(node, {y});
  return y;
}

Tensor checkpoint(nn::Module& module, const Tensor& x) {
  nn::Module* m = &module;
  return checkpoint([m](const Tensor& in) { return (*m)(in); }, x, module.parameters());
}

Tensor checkpoint_sequential(nn::Sequential& seq, int64_t segments, const Tensor& x) {
  int64_t n = (int64_t)seq.size();
  TB_CHECK(segments >= 1 && segments <= n,
           "checkpoint_sequential: segments must be in [1, {}] (the Sequential's children), got {}",
           n, segments);
  // PyTorch's split: segments - 1 checkpointed groups of n / segments children, the rest run
  // normally.
  int64_t size = n / segments;
  std::vector<nn::ModulePtr> children = seq.children();
  auto run = [children](int64_t start, int64_t end) { // children[start..end], inclusive
    return [children, start, end](const Tensor& in) {
      Tensor h = in;
      for (int64_t i = start; i <= end; i++) h = (*children[i])(h);
      return h;
    };
  };
  Tensor h = x;
  int64_t end = -1;
  for (int64_t start = 0; start < size * (segments - 1); start += size) {
    end = start + size - 1;
    std::vector<Tensor> params;
    for (int64_t i = start; i <= end; i++)
      for (const auto& p : children[i]->parameters()) params.push_back(p);
    h = checkpoint(run(start, end), h, params);
  }
  return run(end + 1, n - 1)(h);
}

} // namespace tb::utils
