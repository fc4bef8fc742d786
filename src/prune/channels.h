// src/prune/channels.h — the traced channel graph shared by channels.cpp (tracing, groups) and
// remove_channels.cpp (slicing the tensors), and the timing helper; private to src/prune.
#pragma once

#include <tb/prune.h>

#include <string>
#include <vector>

namespace tb::prune {

// How one module call touches channel ids.
enum class NodeKind { Input, Conv, Depthwise, Linear, BatchNorm, Join, Opaque };

// One traced call of a leaf module with parameters, a join, or the graph input.
struct TraceNode {
  std::string path;                         // module path ("" for the input)
  std::string type;                         // type_name()
  NodeKind kind = NodeKind::Opaque;
  int64_t out_base = 0, out_channels = 0;   // its output's ids: out_base .. out_base + C - 1
  std::vector<std::vector<int64_t>> inputs; // the ids along dim 1 of each input (-1: unknown)
  Shape in_shape;                           // of the first input (latency estimates)
};

class ChannelGraph {
 public:
  std::vector<TraceNode> nodes;
  int64_t num_ids = 0;
  std::vector<int64_t> parent;           // union-find over ids (coupled channels)
  std::vector<std::string> lock_reason;  // per id; non-empty: cannot be removed
  // After finish(): per id its class (the root id), per class its group.
  std::vector<int64_t> class_of;
  std::vector<int> group_of_class;       // indexed by class root id; -1 when unused
  std::vector<std::vector<int64_t>> group_classes; // per group, its classes (root ids), in order
  std::vector<ChannelGroup> groups;

  int64_t find(int64_t a);
  void unite(int64_t a, int64_t b);
  void lock(int64_t id, const std::string& why);
};

// The fastest wall time (ms) of `repeats` forwards of m on x under no_grad, after one warm-up
// (src/prune/sparse.cpp). For choosing between two layers: on a shared machine the minimum is
// what the code can do, a median also measures the neighbours (sparsify, the latency table).
double fastest_forward_ms(nn::Module& m, const Tensor& x, int repeats);

} // namespace tb::prune
