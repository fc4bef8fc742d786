// Pruning schedules: to a target sparsity (the step every schedule takes), AGP's cubic ramp,
// iterative magnitude pruning with fine-tuning, and the lottery ticket's rewinding.
#include <tb/prune.h>

#include <cmath>

namespace tb::prune {

namespace {

// Zeros of the mask of `path` (0 when not pruned) and its element count.
std::pair<int64_t, int64_t> mask_zeros(nn::Module& root, const std::string& path) {
  size_t dot = path.rfind('.');
  nn::Module& m = dot == std::string::npos ? root : root.get_submodule(path.substr(0, dot));
  std::string name = dot == std::string::npos ? path : path.substr(dot + 1);
  if (!m.has_buffer(name + "_mask")) return {0, m.get(name).numel()};
  Tensor mask = m.get(name + "_mask");
  int64_t z = 0;
  for (double v : mask.detach().cpu().to_vector()) z += v == 0;
  return {z, mask.numel()};
}

int64_t round_half_even(double x) { return (int64_t)std::nearbyint(x); }

} // namespace

void prune_to_sparsity(nn::Module& root, const std::vector<std::string>& names, double sparsity,
                       bool global) {
  TB_CHECK(sparsity >= 0 && sparsity <= 1, "prune_to_sparsity: sparsity {} is outside [0, 1]",
           sparsity);
  if (global) {
    int64_t zeros = 0, total = 0;
    for (auto& n : names) {
      auto [z, t] = mask_zeros(root, n);
      zeros += z;
      total += t;
    }
    int64_t more = round_half_even(sparsity * (double)total) - zeros;
    if (more > 0) global_unstructured(root, names, {.amount = (long long)more});
    return;
  }
  for (auto& n : names) {
    auto [z, t] = mask_zeros(root, n);
    int64_t more = round_half_even(sparsity * (double)t) - z;
    if (more > 0) l1_unstructured(root, n, {.amount = (long long)more});
  }
}

double agp_sparsity(const AGPOptions& o, int64_t step) {
  if (step <= o.start_step) return o.initial_sparsity;
  double span = (double)(o.num_steps * o.frequency);
  double progress = std::min(1.0, (double)(step - o.start_step) / span);
  return o.final_sparsity +
         (o.initial_sparsity - o.final_sparsity) * std::pow(1.0 - progress, 3.0);
}

AGP::AGP(nn::Module& root, std::vector<std::string> names, const AGPOptions& o)
    : root_(root), names_(names.empty() ? prunable_weights(root) : std::move(names)), o_(o) {
  TB_CHECK(o.frequency >= 1 && o.num_steps >= 1, "AGP: frequency ({}) and num_steps ({}) must be "
           ">= 1", o.frequency, o.num_steps);
  TB_CHECK(o.initial_sparsity >= 0 && o.final_sparsity <= 1 &&
               o.initial_sparsity <= o.final_sparsity,
           "AGP: expected 0 <= initial_sparsity ({}) <= final_sparsity ({}) <= 1",
           o.initial_sparsity, o.final_sparsity);
}

bool AGP::step(int64_t t) {
  if (t < o_.start_step || (t - o_.start_step) % o_.frequency != 0 ||
      t > o_.start_step + o_.num_steps * o_.frequency)
    return false;
  double s = agp_sparsity(o_, t);
  prune_to_sparsity(root_, names_, s, o_.global);
  current_ = s;
  return true;
}

void iterative_pruning(nn::Module& root, const std::vector<std::string>& names_in,
                       const IterativeOptions& o, const std::function<void(int)>& fine_tune) {
  std::vector<std::string> names = names_in.empty() ? prunable_weights(root) : names_in;
  for (int r = 0; r < o.rounds; r++) {
    if (o.global) {
      global_unstructured(root, names, {.amount = o.amount_per_round});
    } else {
      for (auto& n : names) l1_unstructured(root, n, {.amount = o.amount_per_round});
    }
    if (fine_tune) fine_tune(r);
  }
}

// ---------------------------------------------------------------------------------------------
// Lottery ticket

namespace {
// "fc.weight_orig" -> "fc.weight": the snapshot is keyed by the tensor, pruned or not.
std::string base_name(const std::string& path) {
  if (path.size() > 5 && path.compare(path.size() - 5, 5, "_orig") == 0)
    return path.substr(0, path.size() - 5);
  return path;
}
} // namespace

LotteryTicket::LotteryTicket(nn::Module& root) : root_(root) { snapshot(); }

void LotteryTicket::snapshot() {
  saved_.clear();
  no_grad g;
  for (auto& [path, p] : root_.named_parameters()) saved_[base_name(path)] = p.detach().clone();
}

void LotteryTicket::rewind() {
  no_grad g;
  for (auto& [path, p] : root_.named_parameters()) {
    auto it = saved_.find(base_name(path));
    TB_CHECK(it != saved_.end(), "LotteryTicket::rewind: parameter '{}' was not in the snapshot",
             path);
    TB_CHECK(it->second.shape() == p.shape(), "LotteryTicket::rewind: '{}' has shape {}, the "
             "snapshot {} (channels removed since? take a new snapshot)", path,
             shape_str(p.shape()), shape_str(it->second.shape()));
    Tensor d = p.detach();
    d.copy_(it->second);
  }
}

void LotteryTicket::random_reinit(Generator* gen) {
  no_grad g;
  for (auto& [path, m] : root_.named_modules()) {
    bool conv = dynamic_cast<nn::Conv2d*>(m) != nullptr;
    bool lin = dynamic_cast<nn::Linear*>(m) != nullptr;
    auto param = [&](const std::string& n) {
      if (m->has_parameter(n + "_orig")) return m->get(n + "_orig").detach();
      return m->has_parameter(n) ? m->get(n).detach() : Tensor();
    };
    if (conv || lin) {
      Tensor w = param("weight");
      kaiming_uniform_(w, std::sqrt(5.0), "fan_in", "leaky_relu", gen);
      Tensor b = param("bias");
      if (b.defined()) {
        double bound = 1.0 / std::sqrt((double)fan_in_out(w.shape()).first);
        uniform_(b, -bound, bound, gen);
      }
    } else if (dynamic_cast<nn::BatchNormBase*>(m)) {
      Tensor w = param("weight"), b = param("bias");
      if (w.defined()) w.fill_(1.0);
      if (b.defined()) b.zero_();
    }
  }
}

} // namespace tb::prune
