// The backward engine.
//
// 1. Walk the graph from the roots (explicit stack) and count, for every node, how many edges
//    point into it: its dependencies.
// 2. Seed the roots' input buffers with the given gradients.
// 3. Pop nodes whose dependencies are all satisfied; run the node's pre-hooks on its summed
//    output gradients, then its backward; add each input gradient into the buffer of the node it
//    flows to and release that node when its count reaches zero. AccumulateGrad nodes add into
//    the leaf's .grad (after the leaf's hooks).
// 4. Unless retain_graph, each node frees its saved state right after it ran.
#include <tb/autograd.h>

#include <deque>
#include <unordered_map>
#include <unordered_set>

namespace tb {

namespace {

struct GraphTask {
  bool retain_graph = false;
  bool accumulate_into_leaves = true;
  // grad(): gradients arriving at these edges are captured instead of flowing on.
  std::vector<Edge> capture_edges;
  std::vector<Tensor> captured;
  std::unordered_map<Node*, int> dependencies;
  std::unordered_map<Node*, std::vector<Tensor>> buffers;
};

// buffer += g (no graph is recorded during backward). In place when nobody else holds the
// buffer's memory (an op may return one gradient tensor for two inputs: then copy first).
bool exclusively_owned(const Tensor& t) {
  return t.impl().use_count() == 1 && t.storage().use_count() == 1 && is_dense(t);
}

void accumulate(Tensor& buffer, const Tensor& g) {
  if (!g.defined()) return;
  if (!buffer.defined()) {
    buffer = g;
  } else if (exclusively_owned(buffer)) {
    buffer.add_(g);
  } else {
    Tensor sum = buffer.clone();
    sum.add_(g);
    buffer = sum;
  }
}

void check_gradient(const Node& node, int i, const Tensor& g) {
  TB_CHECK(g.shape() == node.out_shapes[i] && g.dtype() == node.out_dtypes[i] &&
               g.device() == node.out_devices[i],
           "backward of '{}': gradient for output {} has shape {} {} on {}, expected shape {} {} on {}",
           node.name, i, shape_str(g.shape()), dtype_name(g.dtype()), g.device().str(),
           shape_str(node.out_shapes[i]), dtype_name(node.out_dtypes[i]), node.out_devices[i].str());
}

void accumulate_into_leaf(Node& acc, Tensor g) {
  auto impl = acc.leaf.lock();
  if (!impl) return; // the leaf is gone: nobody can read its gradient
  Tensor leaf(impl);
  for (auto& [id, hook] : impl->meta().hooks) {
    Tensor r = hook(g);
    if (r.defined()) g = r;
  }
  Tensor old = leaf.grad();
  if (old.defined()) {
    old.add_(g);
    return;
  }
  // Take the gradient's memory when nobody else holds it; otherwise copy (an op may hand the
  // same gradient tensor to two inputs).
  leaf.set_grad(exclusively_owned(g) ? g : g.clone());
}

void execute(GraphTask& task, const std::vector<Edge>& root_edges, const std::vector<Tensor>& grads) {
  // 1. dependencies
  std::vector<Node*> stack;
  std::unordered_set<Node*> seen;
  for (const auto& e : root_edges)
    if (e.node && seen.insert(e.node.get()).second) stack.push_back(e.node.get());
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    for (const auto& e : n->next) {
      if (!e.node) continue;
      task.dependencies[e.node.get()]++;
      if (seen.insert(e.node.get()).second) stack.push_back(e.node.get());
    }
  }
  // 2. seeds; keep the root nodes alive while we run
  std::vector<std::shared_ptr<Node>> keep_alive;
  for (size_t i = 0; i < root_edges.size(); i++) {
    const Edge& e = root_edges[i];
    if (!e.node) continue;
    keep_alive.push_back(e.node);
    auto& buf = task.buffers[e.node.get()];
    buf.resize(std::max<int>(e.node->num_outputs, e.input_nr + 1));
    accumulate(buf[e.input_nr], grads[i]);
  }
  std::deque<std::shared_ptr<Node>> ready;
  for (const auto& n : keep_alive)
    if (task.dependencies[n.get()] == 0 &&
        std::find(ready.begin(), ready.end(), n) == ready.end())
      ready.push_back(n);

  // 3. run
  while (!ready.empty()) {
    std::shared_ptr<Node> node = ready.front();
    ready.pop_front();
    std::vector<Tensor> g = std::move(task.buffers[node.get()]);
    task.buffers.erase(node.get());
    g.resize(node->num_outputs);
    for (auto& h : node->pre_hooks) {
      if (!g[h.output_nr].defined()) continue;
      Tensor r = h.fn(g[h.output_nr]);
      if (r.defined()) g[h.output_nr] = r;
    }
    for (size_t c = 0; c < task.capture_edges.size(); c++) {
      const Edge& e = task.capture_edges[c];
      if (e.node.get() == node.get()) accumulate(task.captured[c], g[e.input_nr]);
    }
    if (node->name == "AccumulateGrad") {
      if (task.accumulate_into_leaves && g[0].defined()) {
        check_gradient(*node, 0, g[0]);
        accumulate_into_leaf(*node, std::move(g[0]));
      }
      continue;
    }
    TB_CHECK(node->backward,
             "backward: trying to run backward through '{}' a second time (or after its saved "
             "tensors were freed); pass retain_graph = true to the first backward",
             node->name);
    for (int i = 0; i < node->num_outputs; i++) {
      if (g[i].defined()) check_gradient(*node, i, g[i]);
      else g[i] = zeros(node->out_shapes[i], {node->out_dtypes[i], node->out_devices[i]});
    }
    std::vector<Tensor> dinputs = node->backward(g);
    TB_CHECK(dinputs.size() == node->next.size(),
             "backward of '{}': returned {} gradients for {} inputs", node->name, dinputs.size(),
             node->next.size());
    if (!task.retain_graph) node->release();
    for (size_t i = 0; i < dinputs.size(); i++) {
      const Edge& e = node->next[i];
      if (!e.node) continue;
      auto& buf = task.buffers[e.node.get()];
      buf.resize(std::max<int>(e.node->num_outputs, e.input_nr + 1));
      accumulate(buf[e.input_nr], dinputs[i]);
      if (--task.dependencies[e.node.get()] == 0) ready.push_back(e.node);
    }
  }
}

} // namespace

void run_backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grads,
                  bool retain_graph) {
  TB_CHECK(roots.size() == grads.size(), "backward: {} outputs but {} gradients", roots.size(),
           grads.size());
  std::vector<Edge> edges;
  for (size_t i = 0; i < roots.size(); i++) {
    TB_CHECK(roots[i].requires_grad(), "backward: output {} (shape {}) does not require grad", i,
             shape_str(roots[i].shape()));
    TB_CHECK(grads[i].defined() && grads[i].shape() == roots[i].shape(),
             "backward: gradient for output {} must have the output's shape {}, got {}", i,
             shape_str(roots[i].shape()),
             grads[i].defined() ? shape_str(grads[i].shape()) : std::string("undefined"));
    check_same_device("backward", roots[i], grads[i]);
    edges.push_back(gradient_edge(roots[i]));
  }
  no_grad guard; // backward records no graph (no higher-order gradients)
  autocast_off no_autocast; // backward ops run in their forward's dtypes
  GraphTask task;
  task.retain_graph = retain_graph;
  std::vector<Tensor> g;
  for (size_t i = 0; i < grads.size(); i++) g.push_back(grads[i].to(roots[i].dtype()).detach());
  execute(task, edges, g);
}

std::vector<Tensor> grad(const std::vector<Tensor>& outputs, const std::vector<Tensor>& inputs,
                         const std::vector<Tensor>& grad_outputs, bool retain_graph) {
  std::vector<Tensor> gos = grad_outputs;
  if (gos.empty())
    for (const auto& o : outputs) {
      TB_CHECK(o.numel() == 1, "grad: output of shape {} is not a scalar; pass grad_outputs",
               shape_str(o.shape()));
      gos.push_back(ones(o.shape(), {o.dtype(), o.device()}));
    }
  TB_CHECK(gos.size() == outputs.size(), "grad: {} outputs but {} grad_outputs", outputs.size(),
           gos.size());
  std::vector<Edge> edges;
  for (const auto& o : outputs) {
    TB_CHECK(o.requires_grad(), "grad: an output (shape {}) does not require grad",
             shape_str(o.shape()));
    edges.push_back(gradient_edge(o));
  }
  GraphTask task;
  task.retain_graph = retain_graph;
  task.accumulate_into_leaves = false;
  for (const auto& x : inputs) {
    TB_CHECK(x.requires_grad(), "grad: an input (shape {}) does not require grad",
             shape_str(x.shape()));
    task.capture_edges.push_back(gradient_edge(x));
  }
  task.captured.resize(inputs.size());
  no_grad guard;
  autocast_off no_autocast;
  execute(task, edges, gos);
  return task.captured;
}

} // namespace tb
