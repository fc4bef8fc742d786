// tb/nn.h — modules: named parameters, buffers and children; hooks; state_dict; the layers.
//
//   auto net = std::make_shared<tb::nn::Sequential>();
//   net->push_back(std::make_shared<tb::nn::Conv2d>(1, 32, 3, 1, 1));
//   net->push_back(std::make_shared<tb::nn::BatchNorm2d>(32));
//   net->push_back(std::make_shared<tb::nn::ReLU>());
//   tb::Tensor y = (*net)(x);                  // runs pre-hooks, forward, hooks
//   tb::nn::save(*net, "ckpt.safetensors");    // state_dict keys as PyTorch: "0.weight", ...
//
// Design: where a module's tensors live.
//  * A module keeps its parameters, buffers and plain tensor attributes in ordered vectors of
//    (name, Tensor) and its children in an ordered vector of (name, shared_ptr<Module>), so
//    state_dict() keys and their order equal PyTorch's for the same architecture.
//  * Layers hold no Tensor fields: forward looks its tensors up by name (`weight()` is
//    `get("weight")`, a scan over a handful of entries). That is PyTorch's attribute lookup
//    (parameters, then buffers, then plain attributes) and it is what makes wrappers generic:
//    pruning removes the parameter "weight", registers "weight_orig" and the buffer
//    "weight_mask", and a forward-pre hook sets the plain attribute "weight" = orig * mask, which
//    Linear/Conv2d's forward then picks up without knowing about pruning.
//  * to(Device) / to(DType) keep tensor identity: the converted data is swapped into the SAME
//    TensorImpl (storage, strides, dtype; as PyTorch's `param.data = ...`), so every handle to a
//    parameter (an optimizer's list, a user's copy) sees the move. Gradients move along.
#pragma once

#include <tb/io.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace tb::nn {

class Module;
using ModulePtr = std::shared_ptr<Module>;

// Forward-pre hook: sees the input; may return a replacement (or an undefined Tensor to keep it).
using ForwardPreHook = std::function<Tensor(Module&, const Tensor& input)>;
// Forward hook: sees input and output; may return a replacement output (or undefined to keep it).
using ForwardHook = std::function<Tensor(Module&, const Tensor& input, const Tensor& output)>;

namespace detail {
struct HookLists {
  std::vector<std::pair<int, ForwardPreHook>> pre;
  std::vector<std::pair<int, ForwardHook>> post;
  int next_id = 0;
};
} // namespace detail

// Returned by register_forward_(pre_)hook; remove() detaches the hook (safe to call twice, or
// after the module is gone, or from inside the hook itself).
class HookHandle {
 public:
  HookHandle() = default;
  void remove();
  bool active() const;

 private:
  friend class Module;
  HookHandle(std::weak_ptr<detail::HookLists> lists, int id, bool pre)
      : lists_(std::move(lists)), id_(id), pre_(pre) {}
  std::weak_ptr<detail::HookLists> lists_;
  int id_ = -1;
  bool pre_ = false;
};

// What load_state_dict(strict = false) skipped (as PyTorch's _IncompatibleKeys).
struct LoadResult {
  std::vector<std::string> missing_keys, unexpected_keys;
};

class Module {
 public:
  Module();
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // The computation; the base raises tb::Error. Call modules through operator(), not forward,
  // so that hooks run.
  virtual Tensor forward(const Tensor& x);
  // Runs forward-pre hooks (in registration order), forward, then forward hooks.
  Tensor operator()(const Tensor& x);

  // ---- registration (names must be new to this module, non-empty, without '.') ----------------
  // Registers `t` (a leaf; requires_grad is switched on) as parameter `name`; returns it.
  Tensor register_parameter(const std::string& name, const Tensor& t);
  // Buffers are state that is not trained (running statistics, masks). Non-persistent buffers
  // are moved by to() but left out of state_dict().
  Tensor register_buffer(const std::string& name, const Tensor& t, bool persistent = true);
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    register_child(name, m);
    return m;
  }
  // Remove and return an entry (tb::Error when absent); the order of the others is kept.
  Tensor remove_parameter(const std::string& name);
  Tensor remove_buffer(const std::string& name);
  // Replaces a buffer's or plain attribute's value in place, or creates a plain attribute (not in
  // state_dict, moved by to()). tb::Error for a parameter name: remove it first, or copy_ into it.
  void set_tensor(const std::string& name, const Tensor& t);
  // Replaces child `name` keeping its position, or appends it (module swapping: fusion, quant).
  void set_module(const std::string& name, ModulePtr m);

  // ---- lookup ---------------------------------------------------------------------------------
  // Parameter, buffer or plain attribute `name` of this module; tb::Error when absent.
  Tensor get(const std::string& name) const;
  // Same, or an undefined Tensor when absent (e.g. Linear without bias).
  Tensor find(const std::string& name) const;
  bool has_parameter(const std::string& name) const;
  bool has_buffer(const std::string& name) const;
  // Direct child `name` (tb::Error when absent); a dotted path "features.0" for get_submodule.
  ModulePtr child(const std::string& name) const;
  Module& get_submodule(const std::string& path);

  // ---- traversal (pre-order: own entries, then each child's; shared tensors listed once) -------
  std::vector<Tensor> parameters(bool recurse = true) const;
  std::vector<std::pair<std::string, Tensor>> named_parameters(bool recurse = true) const;
  std::vector<Tensor> buffers(bool recurse = true) const;
  std::vector<std::pair<std::string, Tensor>> named_buffers(bool recurse = true) const;
  std::vector<ModulePtr> children() const;
  const std::vector<std::pair<std::string, ModulePtr>>& named_children() const { return children_; }
  // This module (name "") and every descendant, pre-order, with dotted names.
  std::vector<std::pair<std::string, Module*>> named_modules();
  std::vector<Module*> modules();
  // fn on every descendant (children first) and then on this module, as PyTorch's apply.
  void apply(const std::function<void(Module&)>& fn);
  int64_t num_parameters() const; // total elements over parameters()

  // ---- mode and placement ---------------------------------------------------------------------
  virtual Module& train(bool on = true); // recursive
  Module& eval() { return train(false); }
  bool is_training() const { return training_; }
  Module& to(Device d);
  Module& to(DType t); // floating tensors only (num_batches_tracked stays int64), as PyTorch
  void zero_grad(bool set_to_none = true);

  // ---- hooks (fn may return void, or a Tensor to replace the input / output) -------------------
  template <class F>
  HookHandle register_forward_pre_hook(F fn) {
    if constexpr (std::is_void_v<std::invoke_result_t<F&, Module&, const Tensor&>>)
      return add_pre_hook([fn](Module& m, const Tensor& x) mutable { fn(m, x); return Tensor(); });
    else
      return add_pre_hook(ForwardPreHook(std::move(fn)));
  }
  template <class F>
  HookHandle register_forward_hook(F fn) {
    if constexpr (std::is_void_v<std::invoke_result_t<F&, Module&, const Tensor&, const Tensor&>>)
      return add_hook([fn](Module& m, const Tensor& x, const Tensor& y) mutable {
        fn(m, x, y);
        return Tensor();
      });
    else
      return add_hook(ForwardHook(std::move(fn)));
  }

  // ---- checkpoints ----------------------------------------------------------------------------
  // Parameters and persistent buffers, detached (sharing storage), keys and order as PyTorch.
  StateDict state_dict() const;
  // Copies `dict` into this module's tensors (all or nothing). Missing and unexpected keys are
  // errors when strict (returned otherwise); shape and dtype mismatches are always errors. Every
  // problem found is listed in ONE tb::Error message.
  LoadResult load_state_dict(const StateDict& dict, bool strict = true);

  // ---- printing -------------------------------------------------------------------------------
  virtual std::string type_name() const { return "Module"; }
  virtual std::string extra_repr() const { return ""; }
  std::string str() const; // PyTorch-like tree: "Sequential(\n  (0): Conv2d(1, 32, ...)\n)"

 protected:
  bool training_ = true;

 private:
  void register_child(const std::string& name, ModulePtr m);
  void check_new_name(const char* what, const std::string& name) const;
  HookHandle add_pre_hook(ForwardPreHook fn);
  HookHandle add_hook(ForwardHook fn);
  void collect_state(const std::string& prefix, StateDict& out) const;
  template <class Fn> void for_each_tensor(Fn&& fn);

  std::vector<std::pair<std::string, Tensor>> params_, buffers_, attrs_;
  std::vector<std::string> non_persistent_;
  std::vector<std::pair<std::string, ModulePtr>> children_;
  std::shared_ptr<detail::HookLists> hooks_;
};

// Checkpoint helpers: state_dict to / from a safetensors file (atomic write; see io.h).
void save(const Module& m, const std::string& path, const Metadata& metadata = {});
LoadResult load(Module& m, const std::string& path, bool strict = true);

// =============================================================================================
// Containers

// Children named "0", "1", ...; forward chains them (through operator(), so their hooks run).
class Sequential : public Module {
 public:
  Sequential() = default;
  Sequential(std::initializer_list<ModulePtr> modules);
  void push_back(ModulePtr m);
  void push_back(const std::string& name, ModulePtr m); // as Sequential(OrderedDict(...))
  size_t size() const { return named_children().size(); }
  ModulePtr operator[](size_t i) const;
  template <class M> std::shared_ptr<M> at(size_t i) const {
    auto p = std::dynamic_pointer_cast<M>((*this)[i]);
    TB_CHECK(p, "Sequential::at: child {} is a {}, not the requested type", i,
             (*this)[i]->type_name());
    return p;
  }
  Tensor forward(const Tensor& x) override;
  std::string type_name() const override { return "Sequential"; }
};

// =============================================================================================
// Layers. Default initialisation is PyTorch's: Linear/Conv2d weight kaiming_uniform_(a = sqrt(5))
// (i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in))), bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)); BatchNorm
// weight 1, bias 0, running_mean 0, running_var 1, num_batches_tracked 0 (int64 scalar).

// y = x W^T + b; x [..., in], W [out, in], b [out].
class Linear : public Module {
 public:
  Linear(int64_t in_features, int64_t out_features, bool bias = true, TensorOptions o = {});
  Tensor forward(const Tensor& x) override;
  Tensor weight() const { return get("weight"); }
  Tensor bias() const { return find("bias"); }
  std::string type_name() const override { return "Linear"; }
  std::string extra_repr() const override;
  int64_t in_features, out_features;
};

// x [N, C_in, H, W] -> [N, C_out, Ho, Wo]; weight [C_out, C_in/groups, k, k], bias [C_out].
class Conv2d : public Module {
 public:
  Conv2d(int64_t in_channels, int64_t out_channels, int64_t kernel_size, int64_t stride = 1,
         int64_t padding = 0, int64_t dilation = 1, int64_t groups = 1, bool bias = true,
         TensorOptions o = {});
  Tensor forward(const Tensor& x) override;
  Tensor weight() const { return get("weight"); }
  Tensor bias() const { return find("bias"); }
  std::string type_name() const override { return "Conv2d"; }
  std::string extra_repr() const override;
  int64_t in_channels, out_channels, kernel_size;
  Conv2dParams params;
};

// Batch normalisation over dim 1. Training: batch statistics, running stats updated with
// `momentum` (nullopt: cumulative average 1/num_batches_tracked), num_batches_tracked += 1.
// Eval uses the running statistics; without running stats (track_running_stats = false) batch
// statistics are used in both modes.
class BatchNormBase : public Module {
 public:
  BatchNormBase(int64_t num_features, double eps, std::optional<double> momentum, bool affine,
                bool track_running_stats, TensorOptions o);
  Tensor forward(const Tensor& x) override;
  Tensor weight() const { return find("weight"); }
  Tensor bias() const { return find("bias"); }
  Tensor running_mean() const { return find("running_mean"); }
  Tensor running_var() const { return find("running_var"); }
  Tensor num_batches_tracked() const { return find("num_batches_tracked"); }
  std::string extra_repr() const override;
  int64_t num_features;
  double eps;
  std::optional<double> momentum;
  bool affine, track_running_stats;

 protected:
  virtual void check_input(const Tensor& x) const = 0;
};
// x [N, C] or [N, C, L].
class BatchNorm1d : public BatchNormBase {
 public:
  explicit BatchNorm1d(int64_t num_features, double eps = 1e-5,
                       std::optional<double> momentum = 0.1, bool affine = true,
                       bool track_running_stats = true, TensorOptions o = {})
      : BatchNormBase(num_features, eps, momentum, affine, track_running_stats, o) {}
  std::string type_name() const override { return "BatchNorm1d"; }

 protected:
  void check_input(const Tensor& x) const override;
};
// x [N, C, H, W].
class BatchNorm2d : public BatchNormBase {
 public:
  explicit BatchNorm2d(int64_t num_features, double eps = 1e-5,
                       std::optional<double> momentum = 0.1, bool affine = true,
                       bool track_running_stats = true, TensorOptions o = {})
      : BatchNormBase(num_features, eps, momentum, affine, track_running_stats, o) {}
  std::string type_name() const override { return "BatchNorm2d"; }

 protected:
  void check_input(const Tensor& x) const override;
};

// Elementwise activations (no parameters).
#define TB_NN_ACTIVATION(Name, expr)                                      \
  class Name : public Module {                                            \
   public:                                                                \
    Tensor forward(const Tensor& x) override { return expr; }             \
    std::string type_name() const override { return #Name; }              \
  };
TB_NN_ACTIVATION(ReLU, relu(x))
TB_NN_ACTIVATION(ReLU6, relu6(x))
TB_NN_ACTIVATION(Sigmoid, sigmoid(x))
TB_NN_ACTIVATION(Tanh, tanh(x))
TB_NN_ACTIVATION(SiLU, silu(x))
TB_NN_ACTIVATION(Hardswish, hardswish(x))
TB_NN_ACTIVATION(Hardsigmoid, hardsigmoid(x))
TB_NN_ACTIVATION(Identity, x)
#undef TB_NN_ACTIVATION

class LeakyReLU : public Module {
 public:
  explicit LeakyReLU(double negative_slope = 0.01) : negative_slope(negative_slope) {}
  Tensor forward(const Tensor& x) override { return leaky_relu(x, negative_slope); }
  std::string type_name() const override { return "LeakyReLU"; }
  std::string extra_repr() const override;
  double negative_slope;
};

class GELU : public Module {
 public:
  explicit GELU(std::string approximate = "none") : approximate(std::move(approximate)) {}
  Tensor forward(const Tensor& x) override { return gelu(x, approximate); }
  std::string type_name() const override { return "GELU"; }
  std::string extra_repr() const override;
  std::string approximate; // "none" (erf) or "tanh"
};

// Pooling over [N, C, H, W]; stride defaults to the kernel size.
class MaxPool2d : public Module {
 public:
  explicit MaxPool2d(int64_t kernel_size, std::optional<int64_t> stride = std::nullopt,
                     int64_t padding = 0, bool ceil_mode = false);
  Tensor forward(const Tensor& x) override { return max_pool2d(x, params); }
  std::string type_name() const override { return "MaxPool2d"; }
  std::string extra_repr() const override;
  Pool2dParams params;
};
class AvgPool2d : public Module {
 public:
  explicit AvgPool2d(int64_t kernel_size, std::optional<int64_t> stride = std::nullopt,
                     int64_t padding = 0, bool ceil_mode = false, bool count_include_pad = true);
  Tensor forward(const Tensor& x) override { return avg_pool2d(x, params); }
  std::string type_name() const override { return "AvgPool2d"; }
  std::string extra_repr() const override;
  Pool2dParams params;
};
// [N, C, H, W] -> [N, C, out_h, out_w].
class AdaptiveAvgPool2d : public Module {
 public:
  explicit AdaptiveAvgPool2d(int64_t output_size) : out_h(output_size), out_w(output_size) {}
  AdaptiveAvgPool2d(int64_t out_h, int64_t out_w) : out_h(out_h), out_w(out_w) {}
  Tensor forward(const Tensor& x) override { return adaptive_avg_pool2d(x, out_h, out_w); }
  std::string type_name() const override { return "AdaptiveAvgPool2d"; }
  std::string extra_repr() const override;
  int64_t out_h, out_w;
};

// Flattens dims start_dim..end_dim into one ([N, C, H, W] -> [N, C*H*W] by default).
class Flatten : public Module {
 public:
  explicit Flatten(int64_t start_dim = 1, int64_t end_dim = -1)
      : start_dim(start_dim), end_dim(end_dim) {}
  Tensor forward(const Tensor& x) override { return flatten(x, start_dim, end_dim); }
  std::string type_name() const override { return "Flatten"; }
  std::string extra_repr() const override;
  int64_t start_dim, end_dim;
};

// Zeroes elements with probability p in training mode (scaling the rest by 1/(1-p)); identity in
// eval mode.
class Dropout : public Module {
 public:
  explicit Dropout(double p = 0.5);
  Tensor forward(const Tensor& x) override { return dropout(x, p, is_training()); }
  std::string type_name() const override { return "Dropout"; }
  std::string extra_repr() const override;
  double p;
};

} // namespace tb::nn
