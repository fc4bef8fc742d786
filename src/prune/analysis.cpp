// Pruning analysis: how sparse each weight is (a table and JSON for tools/plot_pruning.py), and
// sensitivity (each layer pruned alone at several sparsities, then evaluated).
#include <tb/prune.h>

namespace tb::prune {

SparsityReport sparsity_report(nn::Module& root, const std::vector<std::string>& names_in) {
  std::vector<std::string> names = names_in.empty() ? prunable_weights(root) : names_in;
  SparsityReport r;
  for (auto& path : names) {
    size_t dot = path.rfind('.');
    nn::Module& m = dot == std::string::npos ? root : root.get_submodule(path.substr(0, dot));
    std::string name = dot == std::string::npos ? path : path.substr(dot + 1);
    // The effective tensor: orig * mask when pruned (the stored "weight" may predate the last
    // optimizer step), else the parameter.
    Tensor w;
    if (m.has_parameter(name + "_orig") && m.has_buffer(name + "_mask")) {
      no_grad g;
      w = mul(m.get(name + "_orig"), m.get(name + "_mask"));
    } else {
      w = m.get(name);
    }
    SparsityRow row{.name = path, .shape = w.shape(), .numel = w.numel()};
    for (double v : w.detach().cpu().to_vector()) row.zeros += v == 0;
    r.numel += row.numel;
    r.zeros += row.zeros;
    r.rows.push_back(row);
  }
  return r;
}

std::string SparsityReport::str() const {
  size_t width = 5;
  for (auto& r : rows) width = std::max(width, r.name.size());
  std::string s = fmt::format("{:<{}}  {:>16}  {:>10}  {:>10}  {:>8}\n", "layer", width, "shape",
                              "numel", "zeros", "sparsity");
  for (auto& r : rows)
    s += fmt::format("{:<{}}  {:>16}  {:>10}  {:>10}  {:>7.2f}%\n", r.name, width,
                     shape_str(r.shape), r.numel, r.zeros, 100 * r.sparsity());
  s += fmt::format("{:<{}}  {:>16}  {:>10}  {:>10}  {:>7.2f}%\n", "total", width, "", numel, zeros,
                   100 * sparsity());
  return s;
}

std::string SparsityReport::json() const {
  std::string s = "{\"rows\": [";
  for (size_t i = 0; i < rows.size(); i++) {
    const auto& r = rows[i];
    std::string shape;
    for (size_t d = 0; d < r.shape.size(); d++) shape += (d ? ", " : "") + std::to_string(r.shape[d]);
    s += fmt::format("{}\n  {{\"name\": \"{}\", \"shape\": [{}], \"numel\": {}, \"zeros\": {}, "
                     "\"sparsity\": {:.6f}}}", i ? "," : "", r.name, shape, r.numel, r.zeros,
                     r.sparsity());
  }
  s += fmt::format("\n], \"numel\": {}, \"zeros\": {}, \"sparsity\": {:.6f}}}\n", numel, zeros,
                   sparsity());
  return s;
}

std::vector<SensitivityRow> sensitivity(nn::Module& root,
                                        const std::function<double(nn::Module&)>& evaluate,
                                        const SensitivityOptions& o) {
  std::vector<std::string> names = o.names.empty() ? prunable_weights(root) : o.names;
  std::vector<SensitivityRow> out;
  for (auto& name : names)
    for (double s : o.sparsities) {
      nn::ModulePtr copy = root.clone();
      prune_to_sparsity(*copy, {name}, s, false);
      out.push_back({.name = name, .sparsity = s, .metric = evaluate(*copy)});
    }
  return out;
}

std::string sensitivity_json(const std::vector<SensitivityRow>& rows) {
  std::string s = "{\"rows\": [";
  for (size_t i = 0; i < rows.size(); i++)
    s += fmt::format("{}\n  {{\"name\": \"{}\", \"sparsity\": {:.6f}, \"metric\": {:.6f}}}",
                     i ? "," : "", rows[i].name, rows[i].sparsity, rows[i].metric);
  return s + "\n]}\n";
}

} // namespace tb::prune
