// src/distill/loss.cpp — the logit distillation loss (Hinton et al. 2015), as compositions of
// existing ops (their gradients come for free; tests check them by finite differences).
//
//   p_t = softmax(t / T), log q_s = log_softmax(s / T)                logits s, t: [N, C]
//   soft = T² · Σ_{n,c} p_t (log p_t − log q_s) / N        (batchmean; / (N·C) for elementwise_mean)
//   hard = mean_n CE(s_n, y_n)
//   total = w_hard · hard + w_soft · soft,  (w_hard, w_soft) = (α, 1 − α) or (1 − α, α)
// d soft / d s = T · (q_s − p_t) / N: the T² keeps the soft gradient's size independent of T.
#include <tb/distill.h>
#include <tb/ops.h>

namespace tb::distill {

static void check_temperature(double t) {
  TB_CHECK(t > 0 && std::isfinite(t),
           "distill: temperature must be a finite number > 0 (softmax(logits / T)), got {}", t);
}

static void check_logits(const Tensor& s, const Tensor& t) {
  TB_CHECK(s.defined() && t.defined(), "distill: student and teacher logits must be defined");
  TB_CHECK(s.dim() == 2, "distill: student logits must be [N, C], got {}", shape_str(s.shape()));
  TB_CHECK(s.shape() == t.shape(),
           "distill: teacher and student logits must have the same shape [N, C]; got student {} "
           "and teacher {}", shape_str(s.shape()), shape_str(t.shape()));
}

Tensor soft_kl(const Tensor& student_logits, const Tensor& teacher_logits, double temperature,
               KLReduction reduction) {
  check_temperature(temperature);
  check_logits(student_logits, teacher_logits);
  const double T = temperature;
  Tensor log_q = log_softmax(div(student_logits, T), 1);
  Tensor p = softmax(div(teacher_logits.detach(), T), 1);
  const char* red = reduction == KLReduction::batchmean ? "batchmean" : "mean";
  return mul(kl_div(log_q, p, red), T * T);
}

DistillationLoss::DistillationLoss(const DistillationOptions& o) : o_(o) {
  check_temperature(o.temperature);
  TB_CHECK(o.alpha >= 0 && o.alpha <= 1,
           "DistillationLoss: alpha must be in [0, 1] (the weight of the {} loss), got {}",
           o.alpha_weights == AlphaWeights::soft_loss ? "soft" : "hard", o.alpha);
  TB_CHECK(o.alpha_weights != AlphaWeights::unset,
           "DistillationLoss: say which term alpha weights: .alpha_weights = "
           "AlphaWeights::hard_loss (alpha·CE + (1 − alpha)·T²·KL, Hinton's convention) or "
           "AlphaWeights::soft_loss (alpha·T²·KL + (1 − alpha)·CE)");
}

double DistillationLoss::hard_weight() const {
  return o_.alpha_weights == AlphaWeights::hard_loss ? o_.alpha : 1 - o_.alpha;
}
double DistillationLoss::soft_weight() const { return 1 - hard_weight(); }

DistillationTerms DistillationLoss::terms(const Tensor& student_logits,
                                          const Tensor& teacher_logits,
                                          const Tensor& labels) const {
  check_logits(student_logits, teacher_logits);
  TB_CHECK(labels.defined() && labels.dim() == 1 && labels.size(0) == student_logits.size(0),
           "DistillationLoss: labels must be [N] = [{}] class indices, got {}",
           student_logits.size(0), labels.defined() ? shape_str(labels.shape()) : "undefined");
  DistillationTerms r;
  r.hard_weight = hard_weight();
  r.soft_weight = soft_weight();
  r.hard = cross_entropy(student_logits, labels);
  r.soft = soft_kl(student_logits, teacher_logits, o_.temperature, o_.kl_reduction);
  r.total = add(mul(r.hard, r.hard_weight), mul(r.soft, r.soft_weight));
  return r;
}

} // namespace tb::distill
