// tb/distill.h — knowledge distillation: a student learns from a teacher's logits (Hinton et
// al. 2015), from its intermediate features (FitNets, MSE through a 1×1 conv adapter) and from
// its attention maps (Zagoruyko & Komodakis 2017). Works on any module tree: features are found
// by dotted path (Module::get_submodule) and captured with forward hooks. docs/distillation.md
// has the recipe that works on Fashion-MNIST and the measured numbers.
//
//   namespace kd = tb::distill;
//   kd::DistillationLoss loss_fn({.temperature = 4, .alpha = 0.9,
//                                 .alpha_weights = kd::AlphaWeights::hard_loss});
//   kd::Teacher teacher(teacher_net);                 // eval mode, no_grad, no gradients
//   for (const auto& b : loader) {
//     tb::Tensor s = (*student)(b.inputs);
//     tb::Tensor loss = loss_fn(s, teacher.logits(b.inputs), b.targets);
//     ...
//   }
#pragma once

#include <tb/data.h>
#include <tb/nn.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace tb::distill {

// ---------------------------------------------------------------------------------------------
// The logit loss

// Which term `alpha` weights. Texts disagree: Hinton's paper and most deployment guides put
// alpha on the hard (label) loss, many courses on the soft (teacher) loss. There is no default:
// a DistillationLoss with `unset` raises tb::Error, so nobody gets the weighting backwards
// silently.
enum class AlphaWeights {
  unset,
  hard_loss, // alpha·CE(student, labels) + (1 − alpha)·T²·KL(teacher ‖ student)
  soft_loss, // (1 − alpha)·CE(student, labels) + alpha·T²·KL(teacher ‖ student)
};

// How the KL term is averaged.
//  batchmean: sum over classes and samples, divided by the batch size N. This is the KL
//             divergence per sample, PyTorch's kl_div(reduction="batchmean"); the T² factor
//             then keeps the soft gradients on the scale of the hard ones (Hinton et al.).
//  elementwise_mean: divided by N·C instead, what kl_div(reduction="mean") computes and what
//             many hand-written KD losses use by mistake: the soft term comes out C times too
//             small (10× on Fashion-MNIST), so "alpha = 0.5" weights the teacher ~10× less than
//             intended. Only for reproducing such code; batchmean is the default.
enum class KLReduction { batchmean, elementwise_mean };

struct DistillationOptions {
  double temperature = 1.0;                    // T > 0; softmax(logits / T) on both sides
  double alpha = 0.5;                          // in [0, 1], on the term alpha_weights names
  AlphaWeights alpha_weights = AlphaWeights::unset; // required (see AlphaWeights)
  KLReduction kl_reduction = KLReduction::batchmean;
};

// The two terms and their weighted sum (`total` is what backward runs on).
struct DistillationTerms {
  Tensor total; // hard_weight·hard + soft_weight·soft, a scalar
  Tensor hard;  // CE(student, labels), mean over the batch
  Tensor soft;  // T²·KL(softmax(teacher/T) ‖ softmax(student/T)), see KLReduction
  double hard_weight = 0, soft_weight = 0;
};

// T²·KL(softmax(teacher/T) ‖ softmax(student/T)) for logits [N, C] of equal shape; the teacher
// gets no gradient (it is detached). tb::Error for T ≤ 0 or different shapes.
Tensor soft_kl(const Tensor& student_logits, const Tensor& teacher_logits, double temperature,
               KLReduction reduction = KLReduction::batchmean);

// The classic distillation loss; equal to PyTorch's
//   alpha·F.cross_entropy(s, y) + (1 − alpha)·T²·F.kl_div(F.log_softmax(s / T, 1),
//                                                           F.softmax(t / T, 1), "batchmean")
// (for AlphaWeights::hard_loss). The constructor checks the options (tb::Error for T ≤ 0, alpha
// outside [0, 1], alpha_weights unset); a call checks the shapes: student and teacher logits
// [N, C] alike, labels [N] int64.
class DistillationLoss {
 public:
  explicit DistillationLoss(const DistillationOptions& o);
  Tensor operator()(const Tensor& student_logits, const Tensor& teacher_logits,
                    const Tensor& labels) const {
    return terms(student_logits, teacher_logits, labels).total;
  }
  DistillationTerms terms(const Tensor& student_logits, const Tensor& teacher_logits,
                          const Tensor& labels) const;
  const DistillationOptions& options() const { return o_; }
  double hard_weight() const; // the weight of CE(student, labels), whatever alpha_weights says
  double soft_weight() const; // the weight of T²·KL

 private:
  DistillationOptions o_;
};

// ---------------------------------------------------------------------------------------------
// Features

// The outputs of chosen modules of a model, captured by forward hooks at every forward:
//   FeatureCapture cap(*net, {"3", "7"});  (*net)(x);  Tensor f = cap.get("7");
// Paths are get_submodule's (tb::Error for a missing one, naming what exists). The hooks are
// removed when the capture is destroyed. Captured tensors keep their graph (a student's) or
// have none (a teacher run under no_grad).
class FeatureCapture {
 public:
  FeatureCapture(nn::Module& model, std::vector<std::string> paths);
  ~FeatureCapture();
  FeatureCapture(const FeatureCapture&) = delete;
  FeatureCapture& operator=(const FeatureCapture&) = delete;
  // The last output of the module at paths()[i] / at `path`; tb::Error when none was captured
  // since the last clear() (the module did not run).
  const Tensor& get(size_t i) const;
  const Tensor& get(const std::string& path) const;
  const std::vector<std::string>& paths() const { return paths_; }
  void clear(); // forget the captured tensors (they hold activations and graphs)

 private:
  std::vector<std::string> paths_;
  std::shared_ptr<std::vector<Tensor>> captured_; // shared with the hooks
  std::vector<nn::HookHandle> handles_;
};

// Attention map of Zagoruyko & Komodakis: features [N, C, H, W] -> [N, H·W],
// a = mean_c(f²) flattened, divided by its L2 norm (at least 1e-12), as their code's
// F.normalize(f.pow(2).mean(1).view(N, -1)).
Tensor attention_map(const Tensor& features);
// mean((attention_map(s) − attention_map(t))²) over N·H·W; channel counts may differ, the
// spatial sizes must match (tb::Error otherwise). The teacher is detached.
Tensor attention_transfer_loss(const Tensor& student_features, const Tensor& teacher_features);

// What a feature pair's loss compares.
enum class FeatureLoss {
  mse,       // FitNets: mse_loss(adapter(student), teacher), mean over elements
  attention, // attention_transfer_loss(student, teacher); no adapter needed
};

// A student feature matched to a teacher feature, by module path.
struct FeaturePair {
  std::string student, teacher;
};

// Feature distillation between two models. The pairs' features are captured by hooks on both
// models; when a pair's channel counts differ, a 1×1 conv adapter (no bias, PyTorch's default
// init) maps the student's channels to the teacher's. Where the spatial sizes differ the larger
// map is average-pooled to the smaller (adaptive_avg_pool2d). The adapters are children of this
// module ("0", "1", ... by pair; Identity where none is needed): give parameters() to the
// optimizer with the student's and save them with it.
//
// The constructor runs each model once on zeros of `input_shape` (eval mode, no_grad; training
// flags restored) to learn the feature shapes. Features must be 4-D [N, C, H, W].
class FeatureDistiller : public nn::Module {
 public:
  FeatureDistiller(nn::Module& student, nn::Module& teacher, std::vector<FeaturePair> pairs,
                   const Shape& input_shape, FeatureLoss loss = FeatureLoss::mse);
  // Sum over pairs of the pair loss, from the features captured by the last forward of each
  // model (run the teacher under no_grad: Teacher does). tb::Error when a feature is missing.
  Tensor loss() const;
  const std::vector<FeaturePair>& pairs() const { return pairs_; }
  void clear(); // drop the captured features of both models
  TB_MODULE(FeatureDistiller)

 private:
  std::vector<FeaturePair> pairs_;
  FeatureLoss kind_;
  std::shared_ptr<FeatureCapture> student_cap_, teacher_cap_; // shared by clones
};

// ---------------------------------------------------------------------------------------------
// The teacher in the loop

// Runs a trained teacher: eval mode (its training flag is set to false at construction and at
// every call, so a BN layer never updates) under no_grad. Its logits carry no graph.
class Teacher {
 public:
  explicit Teacher(nn::ModulePtr model);
  Tensor logits(const Tensor& inputs);
  nn::Module& model() { return *model_; }

 private:
  nn::ModulePtr model_;
};

// The teacher's logits for every batch of one epoch of `loader`, computed in one pass and
// looked up by batch number in the training loop. The loader makes the same batches for the same
// (seed, epoch) (DataLoader's contract), so batch b of the training loop is batch b here: the
// cache is checked against each batch's size and the first label. Worth it when several
// students train on the same data order (the teacher runs once for all of them); with random
// augmentation it must be recomputed every epoch, which is why it is per epoch.
class TeacherLogitCache {
 public:
  // Runs the teacher over epoch `epoch` of `loader` (iterating it: the loader's next epoch is
  // restored to `epoch`, so the training loop that follows sees the same batches).
  void compute(Teacher& teacher, data::DataLoader& loader, int64_t epoch);
  // Logits [B, C] of batch `b` of the cached epoch; `labels` are that batch's targets, checked
  // against the cached ones (tb::Error when the batch does not match: a different order).
  const Tensor& logits(int64_t b, const Tensor& labels) const;
  int64_t epoch() const { return epoch_; }
  int64_t size() const { return (int64_t)logits_.size(); }

 private:
  int64_t epoch_ = -1;
  std::vector<Tensor> logits_, labels_;
};

} // namespace tb::distill
