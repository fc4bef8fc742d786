// Coupled channels, found by one traced forward pass.
//
// The model is cloned in float64 and run on a label tensor: every channel of every tensor that a
// module with parameters, a join (nn::Add/Mul/Cat) or the input produces is given its own id,
// written as the value kBase + id into all of that channel's elements. Functional code between
// modules moves these values without changing them (ReLU, max/avg pooling of a constant map,
// flatten, chunk, channel shuffle), so every module reads at its input, per channel, the id of the
// channel it really receives: the maximum over the channel's elements decodes back to the id.
// A parameter-free module that changes values (Sigmoid, ReLU6 on large values) passes its input's
// labels on as an elementwise op. Then:
//   * BatchNorm, depthwise convs and joins tie ("unite") their input and output ids;
//   * a consumer that does not see a producer's channels whole and in order (a slice, a
//     permutation) locks that producer's channels: removing one would move the others;
//   * the input's channels, the output's, and those of unknown or grouped modules are locked.
// Classes of united ids are the removable units; the classes of one tensor form a group.
#include "channels.h"

#include <tb/prune.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <unordered_map>
#include <unordered_set>

namespace tb::prune {

int64_t ChannelGraph::find(int64_t a) {
  while (parent[a] != a) {
    parent[a] = parent[parent[a]];
    a = parent[a];
  }
  return a;
}

void ChannelGraph::unite(int64_t a, int64_t b) {
  a = find(a);
  b = find(b);
  if (a != b) parent[std::max(a, b)] = std::min(a, b);
}

void ChannelGraph::lock(int64_t id, const std::string& why) {
  if (lock_reason[id].empty()) lock_reason[id] = why;
}

namespace {

constexpr double kBase = 1048576.0; // 2^20: labels stay exact in float64 through sums and means

struct Tracer {
  ChannelGraph& g;
  std::unordered_map<const nn::Module*, std::string> paths;
  std::vector<std::string> errors;

  int64_t new_ids(int64_t c) {
    int64_t base = g.num_ids;
    g.num_ids += c;
    for (int64_t i = base; i < g.num_ids; i++) {
      g.parent.push_back(i);
      g.lock_reason.emplace_back();
    }
    return base;
  }

  // A float64 tensor of `shape` whose channel c (dim 1) holds kBase + base + c everywhere.
  static Tensor labels(const Shape& shape, int64_t base) {
    int64_t n = numel_of(shape), c = shape.size() >= 2 ? shape[1] : 1, inner = 1;
    for (size_t d = 2; d < shape.size(); d++) inner *= shape[d];
    std::vector<double> v(n);
    for (int64_t i = 0; i < n; i++) v[i] = kBase + (double)(base + (i / inner) % c);
    return from_vector(v, shape);
  }

  // The id of each channel along dim 1 (-1 where the values are not a label).
  std::vector<int64_t> decode(const Tensor& t) const {
    if (!t.defined() || t.dim() < 2) return {};
    std::vector<double> v = t.detach().to(kFloat64).contiguous().to_vector();
    int64_t c = t.size(1), inner = 1;
    for (int64_t d = 2; d < t.dim(); d++) inner *= t.size(d);
    std::vector<double> mx(c, -INFINITY);
    for (size_t i = 0; i < v.size(); i++) {
      int64_t ch = ((int64_t)i / inner) % c;
      mx[ch] = std::max(mx[ch], v[i]);
    }
    std::vector<int64_t> ids(c, -1);
    for (int64_t i = 0; i < c; i++) {
      double r = std::nearbyint(mx[i]);
      if (std::fabs(mx[i] - r) < 1e-6 && r >= kBase && r - kBase < (double)g.num_ids)
        ids[i] = (int64_t)(r - kBase);
    }
    return ids;
  }

  static bool all_valid(const std::vector<int64_t>& ids) {
    return !ids.empty() && std::all_of(ids.begin(), ids.end(), [](int64_t i) { return i >= 0; });
  }

  // The forward hook of every leaf module: records what it reads, replaces what it produces.
  Tensor on_call(nn::Module& m, const std::vector<Tensor>& xs, const Tensor& y) {
    const std::string& path = paths.at(&m);
    bool join = dynamic_cast<nn::Add*>(&m) || dynamic_cast<nn::Mul*>(&m) ||
                dynamic_cast<nn::Cat*>(&m);
    bool params = !m.named_parameters(false).empty();
    if (!params && !join) {
      if (all_valid(decode(y))) return Tensor(); // the labels flowed through (ReLU, pooling, ...)
      if (xs.size() == 1 && xs[0].shape() == y.shape()) return xs[0]; // elementwise (Sigmoid)
    }
    TraceNode node{.path = path, .type = m.type_name()};
    for (auto& x : xs) node.inputs.push_back(decode(x));
    if (!xs.empty()) node.in_shape = xs[0].shape();
    if (join) {
      node.kind = NodeKind::Join;
    } else if (auto* conv = dynamic_cast<nn::Conv2d*>(&m)) {
      int64_t groups = conv->params.groups, cin = xs[0].size(1);
      node.kind = groups == 1 ? NodeKind::Conv
                  : groups == cin ? NodeKind::Depthwise
                                  : NodeKind::Opaque;
    } else if (dynamic_cast<nn::Linear*>(&m)) {
      node.kind = NodeKind::Linear;
    } else if (dynamic_cast<nn::BatchNormBase*>(&m)) {
      node.kind = NodeKind::BatchNorm;
    } else {
      node.kind = NodeKind::Opaque;
    }
    if (y.dim() < 2) {
      errors.push_back(fmt::format("'{}' ({}) returned a tensor of shape {} (no channel dim)", path,
                                   node.type, shape_str(y.shape())));
      return Tensor();
    }
    node.out_channels = y.size(1);
    node.out_base = new_ids(node.out_channels);
    g.nodes.push_back(node);
    return labels(y.shape(), g.nodes.back().out_base);
  }
};

const char* role_of(NodeKind k) {
  switch (k) {
    case NodeKind::Input: return "input";
    case NodeKind::Conv: return "out";
    case NodeKind::Depthwise: return "depthwise";
    case NodeKind::Linear: return "out";
    case NodeKind::BatchNorm: return "bn";
    case NodeKind::Join: return "join";
    case NodeKind::Opaque: return "opaque";
  }
  return "?";
}

// Ties and locks the ids of the traced nodes; then classes and groups.
void build(ChannelGraph& g, const std::vector<int64_t>& output_ids) {
  std::vector<int> node_of(g.num_ids, -1);
  for (size_t n = 0; n < g.nodes.size(); n++)
    for (int64_t c = 0; c < g.nodes[n].out_channels; c++) node_of[g.nodes[n].out_base + c] = (int)n;
  std::vector<bool> observed(g.num_ids, false);

  auto lock_node_outputs = [&](int n, const std::string& why) {
    for (int64_t c = 0; c < g.nodes[n].out_channels; c++) g.lock(g.nodes[n].out_base + c, why);
  };
  // A reference is clean when it is one producer's channels, whole and in order, each channel
  // possibly repeated L times in a row (flatten of [N, C, H, W] -> [N, C*H*W]).
  auto check_reference = [&](const std::vector<int64_t>& ids, const std::string& who) {
    for (int64_t id : ids)
      if (id >= 0) observed[id] = true;
    if (ids.empty()) return;
    int p = ids[0] >= 0 ? node_of[ids[0]] : -1;
    bool clean = p >= 0;
    if (clean) {
      int64_t c = g.nodes[p].out_channels, n = (int64_t)ids.size();
      clean = n % c == 0;
      for (int64_t j = 0; clean && j < n; j++)
        clean = ids[j] == g.nodes[p].out_base + j / (n / c);
    }
    if (clean) return;
    std::unordered_set<int> producers;
    for (int64_t id : ids)
      if (id >= 0) producers.insert(node_of[id]);
    for (int q : producers)
      lock_node_outputs(q, fmt::format("'{}' reads its channels by position (a slice, a "
                                       "permutation: chunk, channel shuffle)", who));
  };

  for (auto& node : g.nodes) {
    std::string who = node.path.empty() ? "the input" : node.path;
    for (auto& in : node.inputs) check_reference(in, who);
    switch (node.kind) {
      case NodeKind::Input:
        for (int64_t c = 0; c < node.out_channels; c++) g.lock(node.out_base + c, "the model's input");
        break;
      case NodeKind::Depthwise: {
        auto& in = node.inputs[0];
        int64_t k = node.out_channels / (int64_t)in.size();
        for (int64_t c = 0; c < (int64_t)in.size(); c++)
          for (int64_t r = 0; r < k; r++) g.unite(node.out_base + c * k + r, in[c]);
        break;
      }
      case NodeKind::BatchNorm:
        for (int64_t c = 0; c < node.out_channels; c++) g.unite(node.out_base + c, node.inputs[0][c]);
        break;
      case NodeKind::Join: {
        bool cat = node.type == "Cat";
        int64_t offset = 0;
        for (auto& in : node.inputs) {
          int64_t n = (int64_t)in.size();
          if (cat) {
            for (int64_t c = 0; c < n && offset + c < node.out_channels; c++)
              g.unite(node.out_base + offset + c, in[c]);
            offset += n;
          } else if (n == node.out_channels) {
            for (int64_t c = 0; c < n; c++) g.unite(node.out_base + c, in[c]);
          } else if (n != 1) {
            for (int64_t id : in) g.lock(id, fmt::format("'{}' broadcasts it", node.path));
          }
        }
        break;
      }
      case NodeKind::Opaque: {
        std::string why = fmt::format("'{}' ({}) is not a module whose channels tb can slice "
                                      "(grouped conv or unknown module with parameters)",
                                      node.path, node.type);
        for (int64_t c = 0; c < node.out_channels; c++) g.lock(node.out_base + c, why);
        for (auto& in : node.inputs)
          for (int64_t id : in) g.lock(id, why);
        break;
      }
      default: break;
    }
  }
  check_reference(output_ids, "the model's output");
  for (int64_t id : output_ids) g.lock(id, "the model's output");
  for (int64_t id = 0; id < g.num_ids; id++)
    if (!observed[id] && node_of[id] >= 0 && g.nodes[node_of[id]].kind != NodeKind::Input)
      g.lock(id, fmt::format("'{}' feeds code tb cannot follow", g.nodes[node_of[id]].path));

  // Modules called more than once share their weights: tie their calls channel by channel.
  std::unordered_map<std::string, int> first_call;
  for (int n = 0; n < (int)g.nodes.size(); n++) {
    auto& node = g.nodes[n];
    if (node.kind == NodeKind::Input || node.kind == NodeKind::Join) continue;
    auto [it, fresh] = first_call.emplace(node.path, n);
    if (fresh) continue;
    auto& a = g.nodes[it->second];
    for (int64_t c = 0; c < std::min(a.out_channels, node.out_channels); c++)
      g.unite(a.out_base + c, node.out_base + c);
    for (size_t i = 0; i < std::min(a.inputs.size(), node.inputs.size()); i++)
      for (size_t c = 0; c < std::min(a.inputs[i].size(), node.inputs[i].size()); c++)
        if (a.inputs[i][c] >= 0 && node.inputs[i][c] >= 0) g.unite(a.inputs[i][c], node.inputs[i][c]);
  }

  // Classes, locks per class.
  g.class_of.resize(g.num_ids);
  std::vector<std::string> class_lock(g.num_ids);
  for (int64_t id = 0; id < g.num_ids; id++) {
    g.class_of[id] = g.find(id);
    if (!g.lock_reason[id].empty() && class_lock[g.class_of[id]].empty())
      class_lock[g.class_of[id]] = g.lock_reason[id];
  }
  for (int64_t id = 0; id < g.num_ids; id++) g.lock_reason[id] = class_lock[g.class_of[id]];

  // Groups: the classes of each node's output tensor belong together.
  std::vector<int64_t> gparent(g.num_ids);
  std::iota(gparent.begin(), gparent.end(), 0);
  std::function<int64_t(int64_t)> gfind = [&](int64_t a) {
    return gparent[a] == a ? a : gparent[a] = gfind(gparent[a]);
  };
  for (auto& node : g.nodes)
    for (int64_t c = 1; c < node.out_channels; c++) {
      int64_t a = gfind(g.class_of[node.out_base]), b = gfind(g.class_of[node.out_base + c]);
      if (a != b) gparent[std::max(a, b)] = std::min(a, b);
    }
  g.group_of_class.assign(g.num_ids, -1);
  std::unordered_map<int64_t, int> group_index;
  for (auto& node : g.nodes)
    for (int64_t c = 0; c < node.out_channels; c++) {
      int64_t cls = g.class_of[node.out_base + c];
      if (g.group_of_class[cls] >= 0) continue;
      int64_t root = gfind(cls);
      auto [it, fresh] = group_index.emplace(root, (int)g.group_classes.size());
      if (fresh) g.group_classes.emplace_back();
      g.group_of_class[cls] = it->second;
      g.group_classes[it->second].push_back(cls);
    }

  // Describe each group: members (module, role) and lock state.
  g.groups.assign(g.group_classes.size(), ChannelGroup{});
  std::vector<std::unordered_set<std::string>> seen(g.groups.size());
  auto add_member = [&](int grp, const TraceNode& node, const char* role) {
    if (grp < 0 || node.kind == NodeKind::Input) return;
    std::string key = node.path + "|" + role;
    if (!seen[grp].insert(key).second) return;
    g.groups[grp].members.push_back({.module = node.path, .type = node.type, .role = role});
  };
  for (auto& node : g.nodes) {
    if (node.out_channels > 0)
      add_member(g.group_of_class[g.class_of[node.out_base]], node, role_of(node.kind));
    if ((node.kind == NodeKind::Conv || node.kind == NodeKind::Linear) && !node.inputs.empty())
      for (int64_t id : node.inputs[0])
        if (id >= 0) add_member(g.group_of_class[g.class_of[id]], node, "in");
  }
  for (size_t i = 0; i < g.groups.size(); i++) {
    auto& grp = g.groups[i];
    grp.id = (int)i;
    grp.channels = (int64_t)g.group_classes[i].size();
    grp.locked = true;
    for (int64_t cls : g.group_classes[i]) {
      if (g.lock_reason[cls].empty()) grp.locked = false;
      else if (grp.why_locked.empty()) grp.why_locked = g.lock_reason[cls];
    }
  }
}

} // namespace

std::string ChannelGroup::str() const {
  std::string s = fmt::format("group {} ({} channels", id, channels);
  s += locked ? ", locked: " + why_locked + "):" : "):";
  for (size_t i = 0; i < members.size(); i++)
    s += fmt::format("{} {} {}", i ? "," : "", members[i].module, members[i].role);
  return s;
}

std::shared_ptr<ChannelGraph> trace_channels(nn::Module& root, const Shape& input_shape) {
  TB_CHECK(input_shape.size() >= 2, "prune::trace_channels: input_shape {} has no channel dim",
           shape_str(input_shape));
  auto g = std::make_shared<ChannelGraph>();
  Tracer tr{.g = *g};
  nn::ModulePtr copy = root.clone();
  copy->to(kFloat64);
  copy->eval();
  for (auto& [path, m] : copy->named_modules()) {
    tr.paths[m] = path;
    bool own_params = !m->named_parameters(false).empty();
    if (!m->named_children().empty()) {
      TB_CHECK(!own_params, "prune::trace_channels: module '{}' ({}) has parameters of its own "
               "and children; tb cannot tell how its parameters index channels", path,
               m->type_name());
      continue;
    }
    m->register_forward_hook([&tr](nn::Module& mod, const std::vector<Tensor>& xs,
                                   const Tensor& y) { return tr.on_call(mod, xs, y); });
  }
  TraceNode input{.path = "", .type = "input", .kind = NodeKind::Input,
                  .out_channels = input_shape[1]};
  input.out_base = tr.new_ids(input.out_channels);
  g->nodes.push_back(input);
  Tensor y;
  {
    no_grad guard;
    y = (*copy)(Tracer::labels(input_shape, input.out_base));
  }
  TB_CHECK(tr.errors.empty(), "prune::trace_channels: {}", tr.errors[0]);
  // Every module input must decode: an unknown channel means functional code changed values.
  for (auto& node : g->nodes)
    for (size_t i = 0; i < node.inputs.size(); i++) {
      auto& in = node.inputs[i];
      TB_CHECK(std::all_of(in.begin(), in.end(), [](int64_t id) { return id >= 0; }),
               "prune::trace_channels: cannot tell which channels reach input {} of '{}' ({}): "
               "code between modules changes their values (a functional add, scale or "
               "activation such as x * 2 or sigmoid(x)); use modules for it (nn::Add, nn::Mul, "
               "nn::Cat, nn::Sigmoid, ...)", i, node.path, node.type);
    }
  build(*g, tr.decode(y));
  return g;
}

std::vector<ChannelGroup> channel_groups(const ChannelGraph& g) { return g.groups; }

} // namespace tb::prune
