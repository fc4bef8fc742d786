// tb/prune.h — pruning: masks with torch.nn.utils.prune's semantics, schedules (iterative, AGP,
// lottery ticket), analysis (sparsity report, sensitivity), structured channel removal that
// really shrinks a model, and sparse inference kernels.
//
//   namespace prune = tb::prune;
//   prune::l1_unstructured(*net, "0.weight", {.amount = 0.3});      // 30% of the entries
//   prune::ln_structured(*net, "4.weight", {.amount = 2, .n = 2, .dim = 0}); // 2 filters
//   prune::global_unstructured(*net, prune::prunable_weights(*net), {.amount = 0.8});
//   prune::remove(*net, "0.weight");                                // bake the mask in
//   prune::RemovalReport r = prune::remove_zero_channels(*net, {1, 1, 28, 28}); // shrink
//
// Reparametrization (as PyTorch): pruning tensor "weight" of a module moves the parameter to
// "weight_orig" (same tensor object, so optimizers keep following it), adds the buffer
// "weight_mask" (1 keeps, 0 prunes; the weight's dtype) and a forward-pre hook that sets
// weight = weight_orig * weight_mask before every forward, which Linear/Conv2d read without
// knowing about pruning. The gradient reaching weight_orig is mask * dL/dweight, so pruned entries
// get zero gradients and the effective weight stays exactly zero under any optimizer (momentum or
// Adam moments may still move weight_orig there; the mask hides it). Pruning the same tensor again
// prunes the given amount of what is left and multiplies into the mask. The state_dict holds
// weight_orig and weight_mask (keys ordered as PyTorch's), so a pruned checkpoint reloads into a
// model pruned the same way, or into a fresh one after reparametrize_like().
//
// Deviation from PyTorch, until nn::Module can delete a plain attribute: the effective "weight" is
// a NON-PERSISTENT buffer (not in the state_dict, moved by to(), listed by named_buffers()),
// where PyTorch uses a plain attribute.
//
// Names: every `name` below is a tensor of `module`, or a dotted path relative to it
// ("features.3.conv.0.weight"); errors name that path, the shapes and what was expected.
#pragma once

#include <tb/nn.h>
#include <tb/optim.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

namespace tb::prune {

// =============================================================================================
// Masks and methods (src/prune/mask.cpp, src/prune/methods.cpp)

// How much to prune, as PyTorch's `amount`: a fraction in [0, 1] of the units (entries or
// channels) still unpruned, rounded half to even as Python's round(), or an absolute count.
// `{.amount = 0.3}` is a fraction, `{.amount = 10}` a count (as 0.3 and 10 in Python).
struct Amount {
  double value = 0;
  bool is_count = false;
  Amount() = default;
  Amount(double fraction) : value(fraction) {}
  Amount(int count) : value(count), is_count(true) {}
  Amount(long count) : value((double)count), is_count(true) {}
  Amount(long long count) : value((double)count), is_count(true) {}
  // How many of n units to prune; tb::Error (naming `what`) for a count above n.
  int64_t units(int64_t n, const std::string& what = "") const;
  // tb::Error (naming `what`) for a fraction outside [0, 1] or a negative count.
  void validate(const std::string& what = "") const;
  std::string str() const; // "0.3" or "10 (count)"
};

// What a method's mask is computed over (PyTorch's PRUNING_TYPE): when the tensor is already
// pruned, Unstructured methods see only the entries still unpruned (flattened), Structured ones
// only the channels along `dim` that are not entirely zero, Global ones the whole tensor.
enum class PruningType { Unstructured, Structured, Global };

// A pruning method is how a mask is computed (PyTorch's compute_mask): from importance scores
// `t` and the mask so far `default_mask` (same shape, ones on a first pruning), the new mask,
// of t's shape, that must keep default_mask's zeros. A custom method sets only this:
//   prune::Method m{.name = "threshold", .compute_mask = [](const Tensor& t, const Tensor& mask) {
//     return tb::mul(mask, tb::gt(tb::abs(t), 0.1).to(mask.dtype())); }};
//   prune::apply(conv, "weight", m);
struct Method {
  std::string name = "custom";
  PruningType type = PruningType::Unstructured;
  int64_t dim = -1; // the channel dim of Structured methods
  std::function<Tensor(const Tensor& t, const Tensor& default_mask)> compute_mask;
};

// The built-in methods (PyTorch's L1Unstructured, RandomUnstructured, LnStructured,
// RandomStructured, Identity, CustomFromMask). `n` of Ln: any p > 0, 0 (count of non-zeros),
// INFINITY (max |x|) or -INFINITY (min |x|); norms are taken over every dim except `dim`.
Method l1_unstructured_method(Amount amount);
Method random_unstructured_method(Amount amount, Generator* generator = nullptr);
Method ln_structured_method(Amount amount, double n, int64_t dim);
Method random_structured_method(Amount amount, int64_t dim, Generator* generator = nullptr);
Method identity_method();
Method custom_from_mask_method(const Tensor& mask);

// Prunes tensor `name` of `module` with `method` (PyTorch's BasePruningMethod.apply): the first
// time it reparametrizes (see the top), later it combines with the existing mask. The scores are
// `importance_scores` (same shape) or the tensor itself (orig * mask when already pruned).
// Nothing changes when the method fails.
void apply(nn::Module& module, const std::string& name, const Method& method,
           const Tensor& importance_scores = Tensor());

struct L1Options {
  Amount amount;
  Tensor importance_scores = {}; // default: |weight|
};
// Zeroes the `amount` entries of smallest |score| among those still unpruned.
void l1_unstructured(nn::Module& module, const std::string& name, const L1Options& o);

struct RandomOptions {
  Amount amount;
  Generator* generator = nullptr; // default: tb's default generator
};
// Zeroes `amount` entries chosen uniformly at random among those still unpruned.
void random_unstructured(nn::Module& module, const std::string& name, const RandomOptions& o);

struct LnStructuredOptions {
  Amount amount;                 // of the channels along dim still alive
  double n = 2;                  // the norm's order (see Method)
  int64_t dim = 0;               // 0: output channels of a Conv2d/Linear weight; 1: inputs
  Tensor importance_scores = {}; // default: the weight (orig * mask when already pruned)
};
// Zeroes the `amount` channels along `dim` of smallest Ln norm.
void ln_structured(nn::Module& module, const std::string& name, const LnStructuredOptions& o);

struct RandomStructuredOptions {
  Amount amount;
  int64_t dim = -1;
  Generator* generator = nullptr;
};
void random_structured(nn::Module& module, const std::string& name,
                       const RandomStructuredOptions& o);

// A mask of ones: the reparametrization without pruning (to load a pruned checkpoint, or to mask
// by hand later).
void identity(nn::Module& module, const std::string& name);
// Prunes with a given mask (1 keep, 0 prune; the tensor's shape; any dtype).
void custom_from_mask(nn::Module& module, const std::string& name, const Tensor& mask);

// Global pruning: the amount is taken across all `names` (paths relative to `root`) together, so
// layers with small weights lose more. Only unstructured methods (as PyTorch).
enum class GlobalMethod { L1, Random };
struct GlobalOptions {
  Amount amount;
  GlobalMethod method = GlobalMethod::L1;
  std::map<std::string, Tensor> importance_scores = {}; // by path; default: the (masked) weight
  Generator* generator = nullptr;                       // GlobalMethod::Random
};
void global_unstructured(nn::Module& root, const std::vector<std::string>& names,
                         const GlobalOptions& o);

// The paths of the weights of every Conv2d and Linear in `root`, and of every other module with
// a parameter "weight" of 2 or more dims (e.g. tb::quant's QATConv2d, QATConvBn2d, QATLinear), in
// named_modules() order ("0.weight", "4.weight", "9.weight", ...): the usual targets of global
// pruning.
std::vector<std::string> prunable_weights(nn::Module& root);

// Makes the pruning of `name` permanent (PyTorch's remove): the parameter `name` comes back (the
// same tensor object as weight_orig, now holding orig * mask), weight_orig, weight_mask and the
// effective tensor go. tb::Error when `name` is not pruned.
void remove(nn::Module& module, const std::string& name);
// remove() on every pruned tensor under `root`; returns their paths.
std::vector<std::string> remove_all(nn::Module& root);
// True when any tensor of `module` or of its descendants is pruned.
bool is_pruned(nn::Module& module);
// True when tensor `name` (a path relative to module) is pruned.
bool is_pruned(nn::Module& module, const std::string& name);
// Paths (without the _orig suffix) of every pruned tensor under root: "0.weight", ...
std::vector<std::string> pruned_tensors(nn::Module& root);

// Prepares a fresh model to load a pruned state_dict: every X with X_orig and X_mask in `dict`
// gets the identity reparametrization, so load_state_dict then restores masks and weights.
//   auto net = make_model(); prune::reparametrize_like(*net, ckpt); net->load_state_dict(ckpt);
void reparametrize_like(nn::Module& root, const StateDict& dict);

// =============================================================================================
// Analysis (src/prune/analysis.cpp)

// Zeros of the effective weights (orig * mask for pruned tensors), per tensor and in total.
struct SparsityRow {
  std::string name;   // "features.0.weight"
  Shape shape;
  int64_t numel = 0, zeros = 0;
  double sparsity() const { return numel ? (double)zeros / (double)numel : 0; }
};
struct SparsityReport {
  std::vector<SparsityRow> rows;
  int64_t numel = 0, zeros = 0; // over the rows
  double sparsity() const { return numel ? (double)zeros / (double)numel : 0; }
  std::string str() const;  // a table with a total line
  std::string json() const; // {"rows": [{"name", "shape", "numel", "zeros", "sparsity"}], ...}
};
// Over `names` (default: prunable_weights(root)).
SparsityReport sparsity_report(nn::Module& root, const std::vector<std::string>& names = {});

// Sensitivity analysis: each layer pruned alone (L1 unstructured on a clone) at each sparsity and
// evaluated by `evaluate(model)` (e.g. test accuracy). Used to choose per-layer amounts.
struct SensitivityRow {
  std::string name;
  double sparsity = 0, metric = 0;
};
struct SensitivityOptions {
  std::vector<double> sparsities = {0.3, 0.5, 0.7, 0.8, 0.9, 0.95};
  std::vector<std::string> names = {}; // default: prunable_weights(root)
};
std::vector<SensitivityRow> sensitivity(nn::Module& root,
                                        const std::function<double(nn::Module&)>& evaluate,
                                        const SensitivityOptions& o = {});
std::string sensitivity_json(const std::vector<SensitivityRow>& rows);

// =============================================================================================
// Schedules (src/prune/schedule.cpp)

// Gradual pruning (Zhu & Gupta 2017, "automated gradual pruning"):
//   s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3  for t0 <= t <= t0 + n dt,
// s_i before t0, s_f after; pruning happens every dt steps.
struct AGPOptions {
  double initial_sparsity = 0, final_sparsity = 0.9;
  int64_t start_step = 0;  // t0
  int64_t frequency = 100; // dt
  int64_t num_steps = 10;  // n: pruning events until s_f is reached
  bool global = true;      // one threshold over all tensors (else each tensor to s_t)
};
double agp_sparsity(const AGPOptions& o, int64_t step);

// Applies the AGP schedule to the weights `names` of `root` (L1): call step(t) after each
// optimizer step; at t = t0 + k dt the weights are pruned (composing with their masks) to s_t.
class AGP {
 public:
  AGP(nn::Module& root, std::vector<std::string> names, const AGPOptions& o);
  // Returns true when it pruned at this step.
  bool step(int64_t t);
  double current_sparsity() const { return current_; }
  const AGPOptions& options() const { return o_; }

 private:
  nn::Module& root_;
  std::vector<std::string> names_;
  AGPOptions o_;
  double current_ = 0;
};

// Prunes the weights `names` to exactly `sparsity` of their entries (L1, composing with the
// masks they have: never un-prunes). global: one ranking across the tensors.
void prune_to_sparsity(nn::Module& root, const std::vector<std::string>& names, double sparsity,
                       bool global = true);

// Iterative magnitude pruning (the lab's loop): `rounds` times, prune `amount_per_round` of what
// is left (L1; global or per tensor), then call fine_tune(round).
struct IterativeOptions {
  double amount_per_round = 0.2;
  int rounds = 5;
  bool global = true;
};
void iterative_pruning(nn::Module& root, const std::vector<std::string>& names,
                       const IterativeOptions& o, const std::function<void(int round)>& fine_tune);

// Lottery ticket (Frankle & Carbin 2019): save the weights at initialization (or at an early
// step k: "rewinding"), train, prune p% of the remaining weights by magnitude, rewind the
// surviving weights to the saved values, and repeat. The control re-initializes them randomly.
class LotteryTicket {
 public:
  // Snapshots every parameter of root now (call at init, or at the rewind step).
  explicit LotteryTicket(nn::Module& root);
  void snapshot();
  // Copies the snapshot into the parameters (weight_orig for pruned tensors); masks stay.
  void rewind();
  // The control: fresh random values (PyTorch's default init for Conv2d/Linear; BN to 1/0) for
  // every parameter; masks stay.
  void random_reinit(Generator* g = nullptr);

 private:
  nn::Module& root_;
  std::map<std::string, Tensor> saved_; // by parameter path, with "_orig" names mapped back
};

// =============================================================================================
// Structured removal (src/prune/channels.cpp, src/prune/remove_channels.cpp)
//
// Channels that must go together are found from one traced forward pass: forward hooks on every
// leaf module and join (nn::Add, Mul, Cat) replace outputs by channel labels, which flow through
// the functional code between modules (activations, pooling, flatten, chunk) and are read back at
// every module's input. Couplings: Conv2d/Linear outputs feed consumers' inputs, BatchNorm and
// depthwise convs tie their input and output channels, Add/Mul tie their inputs (residuals, SE
// gates), Cat offsets its inputs. A channel cannot be removed when it reaches the model's input or
// output, a module tb does not know with parameters, a grouped (non-depthwise) conv, or code that
// depends on channel positions (chunk, channel shuffle, reshape): such groups are "locked".

// One tensor dim touched by a group: the weight's dim 0 of a conv it feeds from ("out"), dim 1
// of its consumer ("in"), a BatchNorm's channels, ...
struct GroupMember {
  std::string module; // path
  std::string type;   // "Conv2d", "Linear", "BatchNorm2d", "Add", ...
  std::string role;   // "out", "in", "bn", "depthwise", "join"
};
struct ChannelGroup {
  int id = 0;
  int64_t channels = 0;          // the coupled channels (each removable as a unit)
  std::vector<GroupMember> members;
  bool locked = false;
  std::string why_locked;        // when locked
  std::string str() const;       // "group 3 (64 channels): layer1.0.conv1 out, layer1.0.bn1, ..."
};

class ChannelGraph; // the traced dependency structure (src/prune/channels.cpp)

// Traces `root` on zeros of `input_shape` (eval mode, no_grad; mode restored).
std::shared_ptr<ChannelGraph> trace_channels(nn::Module& root, const Shape& input_shape);
std::vector<ChannelGroup> channel_groups(const ChannelGraph& g);

enum class Importance { L1, L2, Random };
struct ChannelPruneOptions {
  double amount = 0.3;           // fraction of each unlocked group's channels to remove
  Importance importance = Importance::L2; // of the producing filters (summed over the group)
  int64_t round_to = 1;          // kept channels rounded UP to a multiple (8, 16); 1: exact
  int64_t min_channels = 1;      // never keep fewer
  std::vector<std::string> skip = {}; // module paths whose groups are left alone
  // > 1: try this many kept counts (the rounded target, + round_to, + 2 round_to, ...) and keep
  // the one whose layers (the group's convs/linears at their traced shapes, batch
  // latency_batch) measure fastest on this machine: the smallest count is not always the
  // fastest. 1: the rounded target.
  int latency_candidates = 1;
  int64_t latency_batch = 64;
  optim::Optimizer* optimizer = nullptr; // if set, its state is sliced with the parameters
  Generator* generator = nullptr;        // Importance::Random
};
struct RemovalReport {
  struct Row {
    int group = 0;
    int64_t before = 0, after = 0;
    std::string members; // short description
    std::string latency; // with latency_candidates > 1: "16: 0.31 ms, 24: 0.28 ms*, ..."
  };
  std::vector<Row> rows;
  int64_t params_before = 0, params_after = 0;
  std::string str() const;
};

// Removes `amount` of the channels of every unlocked group (least important first), shrinking
// convs, BNs (running statistics too) and linears through Module::set_data. Pruning
// reparametrizations (orig, mask) are sliced too. With an optimizer its state is sliced
// (remap_state); otherwise the state of reshaped parameters starts afresh at the next step.
RemovalReport prune_channels(nn::Module& root, const Shape& input_shape,
                             const ChannelPruneOptions& o);

// Removes exactly the channels whose producing filters are entirely zero (e.g. after
// ln_structured(dim = 0) and remove(), or masks: effective weights count), in every unlocked
// group; round_to keeps some zero channels to reach a multiple. Outputs are unchanged when those
// channels carry zeros into the next layers (zero bias / BN shift).
RemovalReport remove_zero_channels(nn::Module& root, const Shape& input_shape,
                                   const ChannelPruneOptions& o = {.amount = 0});

// Gives a fresh model the shapes of a checkpoint of its shrunk version: every parameter and
// buffer takes the dict's shape (depthwise convs keep one filter per group), so
// load_state_dict then loads it. Pruning reparametrizations (X_orig, X_mask) are followed.
void resize_like(nn::Module& root, const StateDict& dict);

// Removes the given channels (indices into each group) of the groups given by id; tb::Error
// naming the group and its members when a group is locked or would lose all its channels.
RemovalReport remove_channels(nn::Module& root, const ChannelGraph& g,
                              const std::map<int, std::vector<int64_t>>& channels,
                              optim::Optimizer* optimizer = nullptr);

// =============================================================================================
// Sparse inference (src/prune/sparse.cpp, kernels/sparse.h)

// A weight in compressed sparse rows: W [rows, cols] with nnz non-zeros.
struct CsrMatrix {
  int64_t rows = 0, cols = 0;
  std::vector<int32_t> row_ptr; // rows + 1
  std::vector<int32_t> col_idx; // nnz
  std::vector<float> values;    // nnz
  int64_t nnz() const { return (int64_t)values.size(); }
};
// From a 2-D float32 tensor (zeros dropped).
CsrMatrix to_csr(const Tensor& w);
// y [N, rows] = x [N, cols] W^T + b (bias optional), with W in CSR. Fast or reference kernel as
// tb::set_cpu_kernels chose.
Tensor sparse_linear(const Tensor& x, const CsrMatrix& w, const Tensor& bias = Tensor());

// Linear computed with a CSR weight; inference only (no gradient). Made by sparsify(); keeps
// "weight" (dense) and "bias" as parameters so the state_dict is unchanged. The CSR copy is
// rebuilt when the weight's data changes (load_state_dict, set_data).
class SparseLinear : public nn::Module {
 public:
  SparseLinear(const Tensor& weight, const Tensor& bias);
  Tensor forward(const Tensor& x) override;
  TB_MODULE(SparseLinear)
  std::string extra_repr() const override;
  const CsrMatrix& csr();

 private:
  CsrMatrix csr_;
  uint64_t version_ = ~0ull;
  const TensorImpl* built_from_ = nullptr;
};

// Conv2d (groups 1, any kernel, stride, padding, dilation) with a CSR weight [O, C*kh*kw]: the
// batch is unrolled (im2col) into [C*kh*kw, N*Ho*Wo] and multiplied by the CSR weight in one
// product. Inference only; "weight" and "bias" kept as parameters.
class SparseConv2d : public nn::Module {
 public:
  SparseConv2d(const Tensor& weight, const Tensor& bias, const Conv2dParams& params);
  Tensor forward(const Tensor& x) override;
  TB_MODULE(SparseConv2d)
  std::string extra_repr() const override;
  const CsrMatrix& csr();
  Conv2dParams params;

 private:
  CsrMatrix csr_;
  uint64_t version_ = ~0ull;
  const TensorImpl* built_from_ = nullptr;
};

struct SparsifyOptions {
  double min_sparsity = 0.5; // layers below are left dense without measuring
  int64_t batch = 64;        // the batch size to measure at
  int repeats = 5;           // timing runs per kernel (the fastest counts: load-robust)
  bool measure = true;       // false: replace every layer above min_sparsity
};
struct SparsifyRow {
  std::string name;
  double sparsity = 0, dense_ms = 0, sparse_ms = 0;
  bool replaced = false;
};
// Replaces every Linear and Conv2d (groups 1) of `root` (after remove_all: plain weights) whose
// weight is sparse enough by a SparseLinear / SparseConv2d where the sparse kernel measures
// faster than the dense layer on the layer's actual input shape (traced on zeros of input_shape
// at batch o.batch). Returns one row per candidate layer.
std::vector<SparsifyRow> sparsify(nn::Module& root, const Shape& input_shape,
                                  const SparsifyOptions& o = {});

} // namespace tb::prune
