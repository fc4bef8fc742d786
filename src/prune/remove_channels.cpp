// Structured removal: the channels chosen in each coupled group (src/prune/channels.cpp) are cut
// out of every tensor that indexes them — conv/linear weights along dim 0 (outputs) and dim 1
// (inputs), biases, BatchNorm's weight, bias and running statistics, depthwise convs (and their
// `groups`) — with Module::set_data, so the model becomes a smaller dense one.
#include "channels.h"

#include <tb/prune.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>
#include <unordered_set>

namespace tb::prune {

namespace {

// Per class (root id): the summed norm of the producing filters (Conv2d with groups 1, Linear),
// whether all of them are zero, and whether there is any.
struct ClassStats {
  std::vector<double> importance;
  std::vector<bool> has_producer, all_zero;
};

Tensor effective_weight(nn::Module& m, const std::string& name) {
  no_grad g;
  if (m.has_parameter(name + "_orig") && m.has_buffer(name + "_mask"))
    return mul(m.get(name + "_orig"), m.get(name + "_mask"));
  return m.get(name);
}

ClassStats class_stats(nn::Module& root, ChannelGraph& g, Importance imp, Generator* gen) {
  ClassStats s;
  s.importance.assign(g.num_ids, 0.0);
  s.has_producer.assign(g.num_ids, false);
  s.all_zero.assign(g.num_ids, true);
  for (auto& node : g.nodes) {
    if (node.kind != NodeKind::Conv && node.kind != NodeKind::Linear) continue;
    nn::Module& m = root.get_submodule(node.path);
    Tensor w = effective_weight(m, "weight");
    Tensor b = m.find("bias");
    std::vector<double> wv = w.detach().cpu().to_vector();
    std::vector<double> bv = b.defined() ? b.detach().cpu().to_vector() : std::vector<double>();
    int64_t per = w.numel() / w.size(0);
    for (int64_t o = 0; o < node.out_channels; o++) {
      double l1 = 0, l2 = 0;
      bool zero = true;
      for (int64_t i = 0; i < per; i++) {
        double v = wv[o * per + i];
        l1 += std::fabs(v);
        l2 += v * v;
        zero = zero && v == 0;
      }
      int64_t cls = g.class_of[node.out_base + o];
      s.importance[cls] += imp == Importance::L1 ? l1 : std::sqrt(l2);
      s.has_producer[cls] = true;
      s.all_zero[cls] = s.all_zero[cls] && zero;
    }
  }
  if (imp == Importance::Random) {
    Generator& r = gen ? *gen : default_generator();
    for (auto& v : s.importance) v = r.next_double();
  }
  return s;
}

// Rows [idx] of t along dim.
Tensor take(const Tensor& t, int64_t dim, const std::vector<int64_t>& idx) {
  return index_select(t.detach(), dim, from_vector(idx, {(int64_t)idx.size()})).contiguous();
}

// Gives tensor `name` of the module at `path` (and its pruning orig/mask/effective twins) the
// rows keep0 along dim 0 and keep1 along dim 1 (empty: all). Remaps the optimizer's state.
void slice(nn::Module& root, const std::string& path, const std::string& name,
           const std::vector<int64_t>* keep0, const std::vector<int64_t>* keep1,
           optim::Optimizer* opt) {
  nn::Module& m = root.get_submodule(path);
  auto cut = [&](const Tensor& t) {
    Tensor r = t.detach();
    if (keep0 && r.dim() >= 1 && (int64_t)keep0->size() != r.size(0)) r = take(r, 0, *keep0);
    if (keep1 && r.dim() >= 2 && (int64_t)keep1->size() != r.size(1)) r = take(r, 1, *keep1);
    return r;
  };
  std::string prefix = path.empty() ? "" : path + ".";
  bool pruned = m.has_parameter(name + "_orig") && m.has_buffer(name + "_mask");
  std::vector<std::string> names = pruned ? std::vector<std::string>{name + "_orig", name + "_mask"}
                                          : std::vector<std::string>{name};
  if (pruned && m.has_buffer(name)) names.push_back(name);
  for (auto& n : names) {
    if (!m.has_parameter(n) && !m.has_buffer(n)) continue;
    Tensor t = m.get(n);
    Shape old = t.shape();
    Tensor data = cut(t);
    if (data.shape() == old) continue;
    root.set_data(prefix + n, data);
    if (opt && m.has_parameter(n) && opt->state(t))
      opt->remap_state(t, [&](const std::string&, const Tensor& st) {
        return st.shape() == old ? cut(st) : st;
      });
  }
}

} // namespace

RemovalReport remove_channels(nn::Module& root, const ChannelGraph& graph,
                              const std::map<int, std::vector<int64_t>>& channels,
                              optim::Optimizer* optimizer) {
  const ChannelGraph& g = graph;
  RemovalReport report;
  report.params_before = root.num_parameters();
  std::vector<bool> removed(g.num_ids, false);
  for (auto& [gid, list] : channels) {
    TB_CHECK(gid >= 0 && gid < (int)g.groups.size(), "prune::remove_channels: no group {} (the "
             "graph has {})", gid, g.groups.size());
    const ChannelGroup& grp = g.groups[gid];
    const auto& classes = g.group_classes[gid];
    std::set<int64_t> uniq(list.begin(), list.end());
    TB_CHECK(uniq.size() == list.size(), "prune::remove_channels: {}: a channel is listed twice",
             grp.str());
    for (int64_t c : list) {
      TB_CHECK(c >= 0 && c < grp.channels, "prune::remove_channels: channel {} is out of range "
               "for {}", c, grp.str());
      TB_CHECK(g.lock_reason[classes[c]].empty(), "prune::remove_channels: channel {} of {} "
               "cannot be removed: {}", c, grp.str(), g.lock_reason[classes[c]]);
      removed[classes[c]] = true;
    }
    TB_CHECK((int64_t)list.size() < grp.channels, "prune::remove_channels: {} would lose all "
             "its channels", grp.str());
    if (!list.empty())
      report.rows.push_back({.group = gid, .before = grp.channels,
                             .after = grp.channels - (int64_t)list.size(),
                             .members = grp.str().substr(grp.str().find(':') + 1)});
  }
  auto kept = [&](int64_t id) { return !removed[g.class_of[id]]; };
  auto keep_out = [&](const TraceNode& n) {
    std::vector<int64_t> k;
    for (int64_t c = 0; c < n.out_channels; c++)
      if (kept(n.out_base + c)) k.push_back(c);
    return k;
  };
  auto keep_in = [&](const TraceNode& n) {
    std::vector<int64_t> k;
    for (size_t j = 0; j < n.inputs[0].size(); j++)
      if (kept(n.inputs[0][j])) k.push_back((int64_t)j);
    return k;
  };
  std::unordered_set<std::string> done;
  for (auto& node : g.nodes) {
    if (!done.insert(node.path).second) continue; // a module called twice is cut once
    switch (node.kind) {
      case NodeKind::Conv:
      case NodeKind::Linear: {
        auto k0 = keep_out(node), k1 = keep_in(node);
        slice(root, node.path, "weight", &k0, &k1, optimizer);
        slice(root, node.path, "bias", &k0, nullptr, optimizer);
        break;
      }
      case NodeKind::Depthwise: {
        auto k0 = keep_out(node);
        slice(root, node.path, "weight", &k0, nullptr, optimizer);
        slice(root, node.path, "bias", &k0, nullptr, optimizer);
        auto& conv = dynamic_cast<nn::Conv2d&>(root.get_submodule(node.path));
        conv.params.groups = (int64_t)keep_in(node).size();
        break;
      }
      case NodeKind::BatchNorm: {
        auto k0 = keep_out(node);
        for (const char* n : {"weight", "bias", "running_mean", "running_var"})
          slice(root, node.path, n, &k0, nullptr, optimizer);
        break;
      }
      default: break;
    }
  }
  report.params_after = root.num_parameters();
  return report;
}

namespace {

bool skipped(const ChannelGroup& grp, const std::vector<std::string>& skip) {
  for (auto& m : grp.members)
    for (auto& s : skip)
      if (m.module == s || m.module.rfind(s + ".", 0) == 0) return true;
  return false;
}

// Kept channels: at least min_channels, rounded up to a multiple of round_to, at most all.
int64_t rounded_keep(int64_t keep, int64_t total, const ChannelPruneOptions& o) {
  TB_CHECK(o.round_to >= 1 && o.min_channels >= 1, "prune: round_to ({}) and min_channels ({}) "
           "must be >= 1", o.round_to, o.min_channels);
  keep = std::max(keep, o.min_channels);
  keep = (keep + o.round_to - 1) / o.round_to * o.round_to;
  return std::min(keep, total);
}

// ---- latency of the layers a group touches, for a candidate channel count ---------------------

// Measured times of layer shapes, cached by shape: the "latency table" of this machine.
struct LatencyTable {
  std::map<std::string, double> ms;
  int64_t batch = 64;

  double conv(const nn::Conv2d& c, int64_t in, int64_t out, int64_t groups, const Shape& x) {
    const Conv2dParams& p = c.params;
    nn::Size2 k = c.kernel_size();
    std::string key = fmt::format("conv {} {} {} {}x{} s{} p{} d{} @{}x{}", in, out, groups, k.h,
                                  k.w, p.stride_h, p.pad_h, p.dilation_h, x[2], x[3]);
    auto it = ms.find(key);
    if (it != ms.end()) return it->second;
    nn::Conv2d m({.in_channels = in, .out_channels = out, .kernel_size = k,
                  .stride = {p.stride_h, p.stride_w}, .padding = {p.pad_h, p.pad_w},
                  .dilation = {p.dilation_h, p.dilation_w}, .groups = groups});
    return ms[key] = fastest_forward_ms(m, randn({batch, in, x[2], x[3]}), 5);
  }
  double linear(int64_t in, int64_t out) {
    std::string key = fmt::format("linear {} {}", in, out);
    auto it = ms.find(key);
    if (it != ms.end()) return it->second;
    nn::Linear m(in, out);
    return ms[key] = fastest_forward_ms(m, randn({batch, in}), 5);
  }
};

// The summed time of the convs and linears whose channels group gi sets, with `keep` of its
// `total` channels (every other dim as traced).
double group_latency(nn::Module& root, const ChannelGraph& g, int gi, int64_t keep, int64_t total,
                     LatencyTable& table) {
  double sum = 0;
  auto group_of = [&](int64_t id) { return g.group_of_class[g.class_of[id]]; };
  for (auto& node : g.nodes) {
    if (node.kind != NodeKind::Conv && node.kind != NodeKind::Depthwise &&
        node.kind != NodeKind::Linear)
      continue;
    bool out_here = group_of(node.out_base) == gi;
    bool in_here = !node.inputs[0].empty() && group_of(node.inputs[0][0]) == gi;
    if (!out_here && !in_here) continue;
    int64_t in = (int64_t)node.inputs[0].size(), out = node.out_channels;
    // Scaled with the group (a Linear after flatten reads each channel H*W times; a conv
    // feeding a concatenation holds part of the group).
    auto scale = [&](int64_t n) {
      return std::max<int64_t>(1, std::llround((double)n * (double)keep / (double)total));
    };
    if (in_here) in = scale(in);
    if (out_here) out = scale(out);
    nn::Module& m = root.get_submodule(node.path);
    if (node.kind == NodeKind::Linear) {
      sum += table.linear(in, out);
    } else {
      auto& conv = dynamic_cast<nn::Conv2d&>(m);
      bool dw = node.kind == NodeKind::Depthwise;
      if (dw) in = out / (node.out_channels / (int64_t)node.inputs[0].size());
      sum += table.conv(conv, in, out, dw ? in : 1, node.in_shape);
    }
  }
  return sum;
}

RemovalReport prune_groups(nn::Module& root, const Shape& input_shape, const ChannelPruneOptions& o,
                           bool zeros_only) {
  TB_CHECK(o.amount >= 0 && o.amount <= 1, "prune::prune_channels: amount {} is outside [0, 1]",
           o.amount);
  auto g = trace_channels(root, input_shape);
  ClassStats st = class_stats(root, *g, o.importance, o.generator);
  std::map<int, std::vector<int64_t>> plan;
  std::map<int, std::string> latency_notes;
  LatencyTable table{.batch = o.latency_batch};
  for (size_t gi = 0; gi < g->groups.size(); gi++) {
    const ChannelGroup& grp = g->groups[gi];
    if (grp.locked || skipped(grp, o.skip)) continue;
    const auto& classes = g->group_classes[gi];
    std::vector<int64_t> candidates; // indices into the group
    for (int64_t c = 0; c < grp.channels; c++) {
      int64_t cls = classes[c];
      if (!g->lock_reason[cls].empty() || !st.has_producer[cls]) continue;
      if (zeros_only && !st.all_zero[cls]) continue;
      candidates.push_back(c);
    }
    int64_t total = grp.channels;
    int64_t target = zeros_only ? (int64_t)candidates.size()
                                : std::min<int64_t>((int64_t)candidates.size(),
                                                    (int64_t)std::nearbyint(o.amount * total));
    int64_t keep = rounded_keep(total - target, total, o);
    std::string latency;
    if (o.latency_candidates > 1 && keep < total) {
      // Try keep, keep + round_to, ... and take the fastest (the smallest on ties).
      double best = INFINITY;
      int64_t best_keep = keep;
      for (int i = 0; i < o.latency_candidates; i++) {
        int64_t k = std::min(total, keep + i * o.round_to);
        double ms = group_latency(root, *g, (int)gi, k, total, table);
        latency += fmt::format("{}{}: {:.3f} ms", i ? ", " : "", k, ms);
        if (ms < best * 0.97) { // a clear win only: timing noise should not add channels
          best = ms;
          best_keep = k;
        }
        if (k == total) break;
      }
      keep = best_keep;
      latency += fmt::format(" -> {}", keep);
    }
    int64_t n_remove = std::min<int64_t>(total - keep, (int64_t)candidates.size());
    if (n_remove <= 0) continue;
    std::stable_sort(candidates.begin(), candidates.end(), [&](int64_t a, int64_t b) {
      return st.importance[classes[a]] < st.importance[classes[b]];
    });
    candidates.resize(n_remove);
    std::sort(candidates.begin(), candidates.end());
    plan[(int)gi] = candidates;
    latency_notes[(int)gi] = latency;
  }
  RemovalReport report = remove_channels(root, *g, plan, o.optimizer);
  for (auto& row : report.rows) row.latency = latency_notes[row.group];
  return report;
}

} // namespace

RemovalReport prune_channels(nn::Module& root, const Shape& input_shape,
                             const ChannelPruneOptions& o) {
  return prune_groups(root, input_shape, o, false);
}

RemovalReport remove_zero_channels(nn::Module& root, const Shape& input_shape,
                                   const ChannelPruneOptions& o) {
  return prune_groups(root, input_shape, o, true);
}

std::string RemovalReport::str() const {
  std::string s;
  for (auto& r : rows)
    s += fmt::format("group {:>3}: {:>5} -> {:<5} {}{}\n", r.group, r.before, r.after, r.members,
                     r.latency.empty() ? "" : " [latency " + r.latency + "]");
  s += fmt::format("parameters: {} -> {} ({:.1f}%)\n", params_before, params_after,
                   params_before ? 100.0 * (double)params_after / (double)params_before : 0.0);
  return s;
}

} // namespace tb::prune

namespace tb::prune {

void resize_like(nn::Module& root, const StateDict& dict) {
  reparametrize_like(root, dict);
  for (auto& [path, m] : root.named_modules()) {
    auto* conv = dynamic_cast<nn::Conv2d*>(m);
    bool depthwise = conv && conv->params.groups > 1 && conv->params.groups == conv->in_channels() &&
                     conv->weight().size(1) == 1;
    int64_t multiplier = depthwise ? conv->out_channels() / conv->params.groups : 1;
    std::string prefix = path.empty() ? "" : path + ".";
    std::vector<std::string> names;
    for (auto& [n, t] : m->named_parameters(false)) names.push_back(n);
    for (auto& [n, t] : m->named_buffers(false)) names.push_back(n);
    for (auto& n : names) {
      const Tensor* src = dict.find(prefix + n);
      Tensor t = m->get(n);
      if (src && src->shape() != t.shape())
        root.set_data(prefix + n, zeros(src->shape(), TensorOptions(t.dtype(), t.device())));
    }
    // The effective tensor of a pruned weight is not in the dict: follow orig's shape.
    for (auto& [n, t] : m->named_parameters(false))
      if (n.size() > 5 && n.compare(n.size() - 5, 5, "_orig") == 0) {
        std::string base = n.substr(0, n.size() - 5);
        if (m->has_buffer(base) && m->get(base).shape() != t.shape())
          root.set_data(prefix + base, zeros(t.shape(), TensorOptions(t.dtype(), t.device())));
      }
    if (depthwise) conv->params.groups = conv->out_channels() / multiplier;
  }
}

} // namespace tb::prune
