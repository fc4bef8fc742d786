// tb/autograd.h — the dynamic graph that ops record as they run, and the engine that walks it
// backwards.
//
// Every differentiable op output points (grad_fn) to a Node. A Node keeps what its backward needs
// (saved tensors, scalars, captured in its `backward` closure) and one Edge per input: the input's
// own grad_fn, or the AccumulateGrad node of a leaf. backward() walks the graph in dependency
// order with an explicit queue (no recursion: deep nets would overflow the stack) and frees each
// node's saved state after it ran, unless retain_graph is set.
#pragma once

#include <tb/core.h>

namespace tb {

// Where a gradient flows: input `input_nr` of `node`. A null node means "no gradient needed".
struct Edge {
  std::shared_ptr<Node> node;
  int input_nr = 0;
};

// A saved tensor remembers the storage version at save time; unpacking it after an in-place
// modification raises tb::Error (PyTorch's "modified by an inplace operation").
struct SavedTensor {
  SavedTensor() = default;
  SavedTensor(const Tensor& t);
  Tensor unpack(const char* op) const;
  Tensor tensor;
  uint64_t saved_version = 0;
};

// Gradients of a node's outputs in, gradients of its inputs out (undefined = zero / not needed).
using BackwardFn = std::function<std::vector<Tensor>(const std::vector<Tensor>& grad_outputs)>;

struct Node {
  std::string name;            // "conv2d", "add", ... (shown in errors and graph dumps)
  std::vector<Edge> next;      // one per differentiable input, in the op's input order
  int num_outputs = 1;
  BackwardFn backward;         // null once released
  // Tensor hooks of this node's outputs, run on the summed gradient before `backward`.
  struct PreHook {
    int output_nr;
    int id;
    TensorHook fn;
  };
  std::vector<PreHook> pre_hooks;
  // Output shapes/dtypes/devices, to materialise zero gradients for unused outputs.
  std::vector<Shape> out_shapes;
  std::vector<DType> out_dtypes;
  std::vector<Device> out_devices;
  // For AccumulateGrad nodes: the leaf they add into (weak: the leaf owns the graph, not vice versa).
  std::weak_ptr<TensorImpl> leaf;
  // Releases saved state (called after the node ran, unless retain_graph).
  void release() { backward = nullptr; }
  virtual ~Node() = default;
};

// Records an op in the graph: `outputs` get `node` as grad_fn when grad mode is on and any input
// requires grad. Returns true when it recorded. The node's `next` edges are filled from `inputs`.
// Typical use in an op:
//   if (auto node = make_node("mul", {a, b})) {
//     SavedTensor sa(a), sb(b);
//     node->backward = [sa, sb](const std::vector<Tensor>& g) { ... return {da, db}; };
//     attach_outputs(node, {out});
//   }
std::shared_ptr<Node> make_node(const char* name, const std::vector<Tensor>& inputs);
void attach_outputs(const std::shared_ptr<Node>& node, const std::vector<Tensor>& outputs);

// The edge a gradient for `t` should flow into (grad_fn or the leaf's accumulator); null node when
// t does not require grad.
Edge gradient_edge(const Tensor& t);

// Runs backward from `roots` with the given gradients (same shapes as the roots).
void run_backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grads,
                  bool retain_graph);

// Computes d(outputs)/d(inputs) without touching .grad (like torch.autograd.grad).
std::vector<Tensor> grad(const std::vector<Tensor>& outputs, const std::vector<Tensor>& inputs,
                         const std::vector<Tensor>& grad_outputs = {}, bool retain_graph = false);

// Grad mode is thread-local: DataLoader threads and evaluation never build graphs.
bool is_grad_enabled();
void set_grad_enabled(bool on);

// RAII: no graph is recorded while a no_grad lives (tb::no_grad guard;).
struct no_grad {
  no_grad() : prev_(is_grad_enabled()) { set_grad_enabled(false); }
  ~no_grad() { set_grad_enabled(prev_); }
  no_grad(const no_grad&) = delete;
  no_grad& operator=(const no_grad&) = delete;
 private:
  bool prev_;
};
struct enable_grad {
  enable_grad() : prev_(is_grad_enabled()) { set_grad_enabled(true); }
  ~enable_grad() { set_grad_enabled(prev_); }
 private:
  bool prev_;
};

// Autocast (mixed precision) state, thread-local like grad mode, one per device type. The user
// API is tb::amp::autocast (tb/amp.h); it lives here so ops can read it. When `enabled`, conv2d,
// linear and matmul cast their float32/float16/bfloat16 inputs to `dtype`, and the float32 ops
// (softmax, log_softmax, sum, losses) cast them up to float32; float64 is never cast.
struct AutocastState {
  bool enabled = false;
  DType dtype = kBFloat16;
};
AutocastState autocast_state(DeviceType device);
void set_autocast_state(DeviceType device, AutocastState s);
// The engine runs backward with autocast off (backward ops run in the dtypes of their forward).
struct autocast_off {
  autocast_off() : cpu_(autocast_state(DeviceType::CPU)), cuda_(autocast_state(DeviceType::CUDA)) {
    set_autocast_state(DeviceType::CPU, {});
    set_autocast_state(DeviceType::CUDA, {});
  }
  ~autocast_off() {
    set_autocast_state(DeviceType::CPU, cpu_);
    set_autocast_state(DeviceType::CUDA, cuda_);
  }
  autocast_off(const autocast_off&) = delete;
  autocast_off& operator=(const autocast_off&) = delete;
 private:
  AutocastState cpu_, cuda_;
};

// A process-wide unique id for a new hook (tensor or module hooks).
int next_hook_id();

} // namespace tb
