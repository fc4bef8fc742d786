// tb/nn.h — modules: named parameters, buffers and children; hooks; state_dict; the layers.
//
//   using namespace tb::nn;
//   auto net = std::make_shared<Sequential>();
//   net->push_back(std::make_shared<Conv2d>(Conv2dOptions{.in_channels = 1, .out_channels = 32,
//                                                         .kernel_size = 3, .padding = 1}));
//   net->push_back(std::make_shared<BatchNorm2d>(32));
//   net->push_back(std::make_shared<ReLU>());
//   tb::Tensor y = (*net)(x);                  // runs pre-hooks, forward, hooks
//   tb::nn::save(*net, "ckpt.safetensors");    // state_dict keys as PyTorch: "0.weight", ...
//
// Surgery (what the compression layer does to a model):
//   auto copy = tb::nn::clone(*net);                   // independent deep copy
//   copy->set_submodule("2", std::make_shared<ReLU6>()); // swap a module at any depth
//   copy->set_data("0.weight", w_smaller);             // new shape, same parameter
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
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace tb::nn {

class Module;
using ModulePtr = std::shared_ptr<Module>;

// Hooks. Most modules take one input; joins (Add, Mul, Cat) take several. A hook may be written
// for one input — it then sees the first input — or for the list of inputs:
//   forward-pre hook: (Module&, const Tensor& input)               -> void, or Tensor (replaces it)
//                     (Module&, const std::vector<Tensor>& inputs) -> void, or vector (replaces them)
//   forward hook:     (Module&, const Tensor& input, const Tensor& output)               -> void/Tensor
//                     (Module&, const std::vector<Tensor>& inputs, const Tensor& output) -> void/Tensor
// A returned undefined Tensor (or empty vector) keeps what was there.
using ForwardPreHook = std::function<std::vector<Tensor>(Module&, const std::vector<Tensor>& inputs)>;
using ForwardHook =
    std::function<Tensor(Module&, const std::vector<Tensor>& inputs, const Tensor& output)>;

namespace detail {
// Copy on write: registering or removing a hook makes a new list, so a call only copies the
// pointer to the list it runs (a hook may remove itself while running).
struct HookLists {
  std::shared_ptr<const std::vector<std::pair<int, ForwardPreHook>>> pre;
  std::shared_ptr<const std::vector<std::pair<int, ForwardHook>>> post;
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

// How register_buffer treats a buffer.
struct BufferOptions {
  // In state_dict() (and so in checkpoints). Non-persistent buffers are still moved by to().
  bool persistent = true;
  // The buffer's shape is only known once data has been seen (per-channel observer statistics,
  // a mask sized by the first pruning): load_state_dict gives it the checkpoint's shape instead
  // of refusing the difference. The dtype must still match.
  bool sized_on_first_use = false;
};

// Declares the two per-class members every module needs: its name for printing, and the shallow
// copy that clone() starts from. One line in each module class: `TB_MODULE(Conv2d)`.
#define TB_MODULE(Class)                                                                   \
  std::string type_name() const override { return #Class; }                                \
  ::tb::nn::ModulePtr shallow_copy() const override { return std::make_shared<Class>(*this); }

class Module {
 public:
  Module();
  virtual ~Module() = default;
  Module& operator=(const Module&) = delete;

  // The computation. Override forward(x) for one input, forward_list(xs) for several; the other
  // raises tb::Error naming the module. Call modules through operator(), so that hooks run.
  virtual Tensor forward(const Tensor& x);
  virtual Tensor forward_list(const std::vector<Tensor>& xs); // default: forward(xs[0]) for one
  // Runs forward-pre hooks (in registration order), forward, then forward hooks.
  Tensor operator()(const Tensor& x);
  Tensor operator()(const Tensor& a, const Tensor& b);
  Tensor operator()(const std::vector<Tensor>& xs);

  // ---- registration (names must be new to this module, non-empty, without '.') ----------------
  // Registers `t` (a leaf; requires_grad is switched on) as parameter `name`; returns it.
  Tensor register_parameter(const std::string& name, const Tensor& t);
  // Buffers are state that is not trained (running statistics, masks); see BufferOptions.
  Tensor register_buffer(const std::string& name, const Tensor& t, BufferOptions o = {});
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    register_child(name, m);
    return m;
  }
  // Remove and return an entry (tb::Error when absent); the order of the others is kept.
  Tensor remove_parameter(const std::string& name);
  Tensor remove_buffer(const std::string& name);
  // Replaces a buffer's or plain attribute's value (a new tensor object), or creates a plain
  // attribute (not in state_dict, moved by to()). tb::Error for a parameter name: use set_data.
  void set_tensor(const std::string& name, const Tensor& t);
  // Replaces direct child `name` keeping its position, or appends it.
  void set_module(const std::string& name, ModulePtr m);

  // ---- surgery (paths are dotted, relative to this module: "features.3.conv.1") ---------------
  // The module at `path` ("" is this module). tb::Error naming the part of the path that does
  // not exist and the children that do.
  Module& get_submodule(const std::string& path);
  // Replaces the module at `path` (which must exist) by `m`, keeping its name and position in
  // its parent; returns the module that was there. The swap used by fusion and quantization.
  ModulePtr set_submodule(const std::string& path, ModulePtr m);
  // Gives the parameter or buffer at `path` ("features.0.weight") new data, of any shape, while
  // it keeps its name, its position and its identity (every handle to it, an optimizer's
  // included, sees the new data; as libtorch's set_data / PyTorch's `p.data = ...`). `data` is
  // copied (no autograd history); its dtype and device must equal the old ones (tb::Error
  // otherwise). The gradient is dropped. Optimizers keep per-parameter state by identity: see
  // Optimizer::step for what happens to state of the old shape.
  void set_data(const std::string& path, const Tensor& data);
  // An independent deep copy: parameters, buffers and attributes copied (same keys, order,
  // dtypes, devices, layouts, requires_grad; no gradients), children cloned (a module or tensor
  // shared inside the tree stays shared in the copy), same training flag, hooks copied (a hook
  // receives the module it runs on, so hooks written against that argument work on the copy;
  // state a hook captured is shared). Every module class in the tree needs TB_MODULE (tb::Error
  // naming the class otherwise). clone<M>(m) below keeps the static type.
  ModulePtr clone() const;

  // ---- lookup ---------------------------------------------------------------------------------
  // Parameter, buffer or plain attribute `name` of this module; tb::Error when absent. (Names as
  // string_view: integer inference looks some up on every call, and a literal longer than 15
  // characters made as std::string is a heap allocation each time.)
  Tensor get(std::string_view name) const;
  // Same, or an undefined Tensor when absent (e.g. Linear without bias).
  Tensor find(std::string_view name) const;
  bool has_parameter(std::string_view name) const;
  bool has_buffer(std::string_view name) const;
  bool has_child(std::string_view name) const;
  // Direct child `name`; tb::Error naming the children that exist when absent.
  ModulePtr child(std::string_view name) const;

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

  // ---- hooks (see ForwardPreHook / ForwardHook for the accepted signatures) --------------------
  template <class F>
  HookHandle register_forward_pre_hook(F fn) {
    using In = std::vector<Tensor>;
    if constexpr (std::is_invocable_v<F&, Module&, const In&>) {
      if constexpr (std::is_void_v<std::invoke_result_t<F&, Module&, const In&>>)
        return add_pre_hook([fn](Module& m, const In& xs) mutable { fn(m, xs); return In(); });
      else
        return add_pre_hook(ForwardPreHook(std::move(fn)));
    } else if constexpr (std::is_void_v<std::invoke_result_t<F&, Module&, const Tensor&>>) {
      return add_pre_hook([fn](Module& m, const In& xs) mutable { fn(m, xs[0]); return In(); });
    } else {
      return add_pre_hook([fn](Module& m, const In& xs) mutable {
        Tensor r = fn(m, xs[0]);
        if (!r.defined()) return In();
        In out = xs;
        out[0] = r;
        return out;
      });
    }
  }
  template <class F>
  HookHandle register_forward_hook(F fn) {
    using In = std::vector<Tensor>;
    if constexpr (std::is_invocable_v<F&, Module&, const In&, const Tensor&>) {
      if constexpr (std::is_void_v<std::invoke_result_t<F&, Module&, const In&, const Tensor&>>)
        return add_hook([fn](Module& m, const In& xs, const Tensor& y) mutable {
          fn(m, xs, y);
          return Tensor();
        });
      else
        return add_hook(ForwardHook(std::move(fn)));
    } else if constexpr (std::is_void_v<
                             std::invoke_result_t<F&, Module&, const Tensor&, const Tensor&>>) {
      return add_hook([fn](Module& m, const In& xs, const Tensor& y) mutable {
        fn(m, xs[0], y);
        return Tensor();
      });
    } else {
      return add_hook([fn](Module& m, const In& xs, const Tensor& y) mutable {
        return Tensor(fn(m, xs[0], y));
      });
    }
  }

  // ---- checkpoints ----------------------------------------------------------------------------
  // Parameters and persistent buffers, detached (sharing storage), keys and order as PyTorch.
  StateDict state_dict() const;
  // Copies `dict` into this module's tensors (all or nothing). Missing and unexpected keys are
  // errors when strict (returned otherwise); dtype mismatches are always errors, and so are shape
  // mismatches except for buffers registered sized_on_first_use, which take the checkpoint's
  // shape. Every problem found is listed in ONE tb::Error message.
  LoadResult load_state_dict(const StateDict& dict, bool strict = true);

  // ---- printing -------------------------------------------------------------------------------
  virtual std::string type_name() const { return "Module"; }
  virtual std::string extra_repr() const { return ""; }
  std::string str() const; // PyTorch-like tree: "Sequential(\n  (0): Conv2d(1, 32, ...)\n)"

  // A new object of this module's class with the same fields, sharing tensors and children (the
  // first step of clone(); TB_MODULE writes it). The base returns nullptr.
  virtual ModulePtr shallow_copy() const { return nullptr; }

 protected:
  // Copies the entries (sharing the tensors and children) and the hooks; for shallow_copy.
  Module(const Module& other);
  bool training_ = true;

 private:
  void register_child(const std::string& name, ModulePtr m);
  void check_new_name(const char* what, const std::string& name) const;
  HookHandle add_pre_hook(ForwardPreHook fn);
  HookHandle add_hook(ForwardHook fn);
  // `sized` (optional) receives the live buffers registered sized_on_first_use, by key.
  void collect_state(const std::string& prefix, StateDict& out,
                     std::unordered_map<std::string, Tensor>* sized = nullptr) const;
  template <class Fn> void for_each_tensor(Fn&& fn);
  friend struct CloneContext;

  std::vector<std::pair<std::string, Tensor>> params_, buffers_, attrs_;
  std::vector<std::string> non_persistent_, sized_on_first_use_;
  std::vector<std::pair<std::string, ModulePtr>> children_;
  std::shared_ptr<detail::HookLists> hooks_;
};

// clone() with the static type kept: `std::shared_ptr<Sequential> copy = nn::clone(*net);`.
template <class M>
std::shared_ptr<M> clone(const M& m) {
  return std::static_pointer_cast<M>(m.clone());
}

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
  TB_MODULE(Sequential)
};

// =============================================================================================
// Layers. Default initialisation is PyTorch's: Linear/Conv2d weight kaiming_uniform_(a = sqrt(5))
// (i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in))), bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)); BatchNorm
// weight 1, bias 0, running_mean 0, running_var 1, num_batches_tracked 0 (int64 scalar).
//
// Sizes (in/out features, channels, kernel size) are read from the weights, never stored beside
// them, so they stay true when surgery gives a weight a new shape (Module::set_data).

// A height × width pair that a single number also initialises: `.kernel_size = 3` or
// `.kernel_size = {3, 1}` (PyTorch's int-or-tuple arguments).
struct Size2 {
  int64_t h = 0, w = 0;
  Size2() = default;
  Size2(int64_t v) : h(v), w(v) {}
  Size2(int64_t h_, int64_t w_) : h(h_), w(w_) {}
  bool operator==(const Size2&) const = default;
};

// y = x W^T + b; x [..., in], W [out, in], b [out].
class Linear : public Module {
 public:
  Linear(int64_t in_features, int64_t out_features, bool bias = true, TensorOptions o = {});
  Tensor forward(const Tensor& x) override;
  Tensor weight() const { return get("weight"); }
  Tensor bias() const { return find("bias"); }
  int64_t in_features() const { return weight().size(1); }
  int64_t out_features() const { return weight().size(0); }
  TB_MODULE(Linear)
  std::string extra_repr() const override;
};

// Conv2d's settings, PyTorch's names and defaults:
//   Conv2d conv({.in_channels = 32, .out_channels = 64, .kernel_size = 3, .padding = 1});
struct Conv2dOptions {
  int64_t in_channels = 0, out_channels = 0;
  Size2 kernel_size = 0;
  Size2 stride = 1;
  Size2 padding = 0;
  Size2 dilation = 1;
  int64_t groups = 1;
  bool bias = true;
  TensorOptions tensor = {}; // dtype and device of the weights
};

// x [N, C_in, H, W] -> [N, C_out, Ho, Wo]; weight [C_out, C_in/groups, kh, kw], bias [C_out].
class Conv2d : public Module {
 public:
  // The common case: stride 1, no padding, with bias.
  Conv2d(int64_t in_channels, int64_t out_channels, Size2 kernel_size);
  explicit Conv2d(const Conv2dOptions& o);
  Tensor forward(const Tensor& x) override;
  Tensor weight() const { return get("weight"); }
  Tensor bias() const { return find("bias"); }
  int64_t in_channels() const { return weight().size(1) * params.groups; }
  int64_t out_channels() const { return weight().size(0); }
  Size2 kernel_size() const { return {weight().size(2), weight().size(3)}; }
  TB_MODULE(Conv2d)
  std::string extra_repr() const override;
  Conv2dParams params; // stride, padding, dilation, groups
};

// BatchNorm settings (PyTorch's names and defaults). momentum nullopt: the cumulative average
// 1/num_batches_tracked.
struct BatchNorm2dOptions {
  double eps = 1e-5;
  std::optional<double> momentum = 0.1;
  bool affine = true;
  bool track_running_stats = true;
  TensorOptions tensor = {};
};
using BatchNorm1dOptions = BatchNorm2dOptions;

// Batch normalisation over dim 1. Training: batch statistics, running stats updated with
// `momentum` (nullopt: cumulative average 1/num_batches_tracked), num_batches_tracked += 1.
// Eval uses the running statistics; without running stats (track_running_stats = false) batch
// statistics are used in both modes.
class BatchNormBase : public Module {
 public:
  BatchNormBase(int64_t num_features, const BatchNorm2dOptions& o);
  Tensor forward(const Tensor& x) override;
  Tensor weight() const { return find("weight"); }
  Tensor bias() const { return find("bias"); }
  Tensor running_mean() const { return find("running_mean"); }
  Tensor running_var() const { return find("running_var"); }
  Tensor num_batches_tracked() const { return find("num_batches_tracked"); }
  // From the weight or running_mean; the constructor's value when there is neither.
  int64_t num_features() const;
  bool affine() const { return has_parameter("weight"); }
  bool track_running_stats() const { return has_buffer("running_mean"); }
  std::string extra_repr() const override;
  double eps;
  std::optional<double> momentum;

 protected:
  virtual void check_input(const Tensor& x) const = 0;
  int64_t num_features_;
};
// x [N, C] or [N, C, L].
class BatchNorm1d : public BatchNormBase {
 public:
  explicit BatchNorm1d(int64_t num_features, const BatchNorm1dOptions& o = {})
      : BatchNormBase(num_features, o) {}
  TB_MODULE(BatchNorm1d)

 protected:
  void check_input(const Tensor& x) const override;
};
// x [N, C, H, W].
class BatchNorm2d : public BatchNormBase {
 public:
  explicit BatchNorm2d(int64_t num_features, const BatchNorm2dOptions& o = {})
      : BatchNormBase(num_features, o) {}
  TB_MODULE(BatchNorm2d)

 protected:
  void check_input(const Tensor& x) const override;
};

// Elementwise activations (no parameters).
#define TB_NN_ACTIVATION(Name, expr)                                      \
  class Name : public Module {                                            \
   public:                                                                \
    Tensor forward(const Tensor& x) override { return expr; }             \
    TB_MODULE(Name)                                                       \
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
  TB_MODULE(LeakyReLU)
  std::string extra_repr() const override;
  double negative_slope;
};

class GELU : public Module {
 public:
  explicit GELU(std::string approximate = "none") : approximate(std::move(approximate)) {}
  Tensor forward(const Tensor& x) override { return gelu(x, approximate); }
  TB_MODULE(GELU)
  std::string extra_repr() const override;
  std::string approximate; // "none" (erf) or "tanh"
};

// Pooling over [N, C, H, W], PyTorch's names and defaults; stride unset follows the kernel size
// (PyTorch's stride=None):
//   MaxPool2d pool({.kernel_size = 3, .stride = 2, .padding = 1});
struct MaxPool2dOptions {
  Size2 kernel_size = 0;
  std::optional<Size2> stride;
  Size2 padding = 0;
  bool ceil_mode = false;
};
struct AvgPool2dOptions {
  Size2 kernel_size = 0;
  std::optional<Size2> stride;
  Size2 padding = 0;
  bool ceil_mode = false;
  bool count_include_pad = true;
};
class MaxPool2d : public Module {
 public:
  explicit MaxPool2d(Size2 kernel_size) : MaxPool2d(MaxPool2dOptions{.kernel_size = kernel_size}) {}
  explicit MaxPool2d(const MaxPool2dOptions& o);
  Tensor forward(const Tensor& x) override { return max_pool2d(x, params); }
  TB_MODULE(MaxPool2d)
  std::string extra_repr() const override;
  Pool2dParams params;
};
class AvgPool2d : public Module {
 public:
  explicit AvgPool2d(Size2 kernel_size) : AvgPool2d(AvgPool2dOptions{.kernel_size = kernel_size}) {}
  explicit AvgPool2d(const AvgPool2dOptions& o);
  Tensor forward(const Tensor& x) override { return avg_pool2d(x, params); }
  TB_MODULE(AvgPool2d)
  std::string extra_repr() const override;
  Pool2dParams params;
};
// [N, C, H, W] -> [N, C, out_h, out_w].
class AdaptiveAvgPool2d : public Module {
 public:
  explicit AdaptiveAvgPool2d(Size2 output_size) : output_size(output_size) {}
  Tensor forward(const Tensor& x) override {
    return adaptive_avg_pool2d(x, output_size.h, output_size.w);
  }
  TB_MODULE(AdaptiveAvgPool2d)
  std::string extra_repr() const override;
  Size2 output_size;
};

// Flattens dims start_dim..end_dim into one ([N, C, H, W] -> [N, C*H*W] by default).
class Flatten : public Module {
 public:
  explicit Flatten(int64_t start_dim = 1, int64_t end_dim = -1)
      : start_dim(start_dim), end_dim(end_dim) {}
  Tensor forward(const Tensor& x) override { return flatten(x, start_dim, end_dim); }
  TB_MODULE(Flatten)
  std::string extra_repr() const override;
  int64_t start_dim, end_dim;
};

// Zeroes elements with probability p in training mode (scaling the rest by 1/(1-p)); identity in
// eval mode.
class Dropout : public Module {
 public:
  explicit Dropout(double p = 0.5);
  Tensor forward(const Tensor& x) override { return dropout(x, p, is_training()); }
  TB_MODULE(Dropout)
  std::string extra_repr() const override;
  double p;
};

// channel_shuffle (PyTorch's nn.ChannelShuffle): [N, g*c, H, W] -> view [N, g, c, H, W] ->
// transpose(1, 2) -> [N, c*g, H, W], so channel i*c + j moves to j*g + i and the next grouped
// op sees channels from every group (ShuffleNet). No parameters, no MACs (one copy).
// Channels-last inputs stay channels-last. tb::Error unless x is 4-D and groups divides C.
Tensor channel_shuffle(const Tensor& x, int64_t groups);
class ChannelShuffle : public Module {
 public:
  explicit ChannelShuffle(int64_t groups) : groups(groups) {}
  Tensor forward(const Tensor& x) override { return channel_shuffle(x, groups); }
  TB_MODULE(ChannelShuffle)
  std::string extra_repr() const override;
  int64_t groups;
};

// =============================================================================================
// Joins: the ops that combine several tensors, as modules (the role of PyTorch's
// FloatFunctional), so that forward hooks see them. A quantization observer or a feature
// capture attaches to a residual add exactly as to a conv. Call them with the inputs:
// `y = (*child("skip_add"))(a, b)`.

// y = a + b (broadcasting).
class Add : public Module {
 public:
  Tensor forward_list(const std::vector<Tensor>& xs) override;
  TB_MODULE(Add)
};

// y = a * b (broadcasting), e.g. a squeeze-excitation gate times the features.
class Mul : public Module {
 public:
  Tensor forward_list(const std::vector<Tensor>& xs) override;
  TB_MODULE(Mul)
};

// y = cat(xs, dim).
class Cat : public Module {
 public:
  explicit Cat(int64_t dim = 0) : dim(dim) {}
  Tensor forward_list(const std::vector<Tensor>& xs) override;
  TB_MODULE(Cat)
  std::string extra_repr() const override;
  int64_t dim;
};

// =============================================================================================
// Recurrent layers (src/nn/rnn.cpp)

// nn.LSTM's settings, PyTorch's names and defaults:
//   LSTM lstm({.input_size = 28, .hidden_size = 128, .num_layers = 2, .batch_first = true});
// dropout, bidirectional and proj_size are refused (tb::Error) unless left at their defaults.
struct LSTMOptions {
  int64_t input_size = 0, hidden_size = 0;
  int64_t num_layers = 1;
  bool bias = true;
  bool batch_first = false; // input/output [N, T, F] instead of [T, N, F]
  double dropout = 0.0;
  bool bidirectional = false;
  int64_t proj_size = 0;
  TensorOptions tensor = {}; // dtype and device of the weights
};

// What LSTM::forward_with_state returns: `auto [y, h_n, c_n] = lstm.forward_with_state(x);`.
struct LSTMResult {
  Tensor output;   // [T, N, H] ([N, T, H] batch_first; [T, H] unbatched): h of the last layer
  Tensor h_n, c_n; // [num_layers, N, H] ([num_layers, H] unbatched): the final states
};

// PyTorch's nn.LSTM (unidirectional). Per layer k and time step t, with gates in the order
// i, f, g, o (rows of the weights):
//   G = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh          [N, 4H]
//   i = σ(G_i), f = σ(G_f), g = tanh(G_g), o = σ(G_o)
//   c_t = f ⊙ c_{t-1} + i ⊙ g,   h_t = o ⊙ tanh(c_t)
// Layer k > 0 takes layer k-1's h_t as its x_t. Parameters weight_ih_l{k} [4H, in],
// weight_hh_l{k} [4H, H], bias_ih_l{k}, bias_hh_l{k} [4H], all initialised
// U(-1/sqrt(H), 1/sqrt(H)). Input [T, N, input_size] (batch_first: [N, T, input_size]) or
// unbatched [T, input_size]. Autograd runs through the ops (x W_ih^T for all steps is one matmul).
class LSTM : public Module {
 public:
  explicit LSTM(const LSTMOptions& o);
  // The output sequence only (zero initial state).
  Tensor forward(const Tensor& x) override;
  // Output and final states; h0, c0 [num_layers, N, H] ([num_layers, H] unbatched), both or
  // neither (zeros).
  LSTMResult forward_with_state(const Tensor& x, const Tensor& h0 = Tensor(),
                                const Tensor& c0 = Tensor());
  int64_t input_size() const { return get("weight_ih_l0").size(1); }
  int64_t hidden_size() const { return get("weight_hh_l0").size(1); }
  int64_t num_layers() const { return num_layers_; }
  bool batch_first() const { return batch_first_; }
  bool has_bias() const { return has_parameter("bias_ih_l0"); }
  TB_MODULE(LSTM)
  std::string extra_repr() const override;

 private:
  int64_t num_layers_ = 1;
  bool batch_first_ = false;
};

// Checks an LSTM input and initial state against the sizes (for LSTM and its quantized twin).
// Returns true when the input is batched (3-D). Names `who` in the tb::Error.
bool check_lstm_input(const char* who, const Tensor& x, const Tensor& h0, const Tensor& c0,
                      int64_t input_size, int64_t hidden_size, int64_t num_layers,
                      bool batch_first);
// The result from the last layer's output sequence x [T, N, H] and every layer's final h and c
// ([N, H] each), in the input's form: unbatched drops N, batch_first gives [N, T, H]. For LSTM
// and its quantized twin.
LSTMResult lstm_result(const Tensor& x, const std::vector<Tensor>& h_last,
                       const std::vector<Tensor>& c_last, bool batched, bool batch_first);

} // namespace tb::nn
