// Metrics: per-step and per-epoch records, as JSON (nlohmann-json) and CSV, and back from JSON.
#include <tb/experiment.h>

#include <nlohmann/json.hpp>

#include <limits>

namespace tb::experiment {

using nlohmann::ordered_json; // keeps the figures in the order they were logged

double EpochRecord::at(const std::string& name) const {
  for (const auto& [k, v] : values)
    if (k == name) return v;
  throw Error(fmt::format("metrics: epoch {} has no figure '{}'", epoch, name));
}

namespace {

// NaN and Inf have no JSON form: null, read back as NaN.
ordered_json number(double v) { return std::isfinite(v) ? ordered_json(v) : ordered_json(); }
double number(const ordered_json& j) {
  return j.is_null() ? std::numeric_limits<double>::quiet_NaN() : j.get<double>();
}

} // namespace

std::string MetricsLog::to_json() const {
  ordered_json j = {{"epochs", ordered_json::array()}, {"steps", ordered_json::array()}};
  for (const EpochRecord& e : epochs) {
    ordered_json row = {{"epoch", e.epoch}};
    for (const auto& [name, v] : e.values) row[name] = number(v);
    j["epochs"].push_back(row);
  }
  for (const StepRecord& s : steps)
    j["steps"].push_back(
        {{"step", s.step}, {"epoch", s.epoch}, {"loss", number(s.loss)}, {"lr", number(s.lr)}});
  return j.dump(1) + "\n";
}

MetricsLog MetricsLog::from_json(const std::string& text) {
  MetricsLog log;
  try {
    ordered_json j = ordered_json::parse(text);
    for (const auto& row : j.at("epochs")) {
      EpochRecord e{row.at("epoch").get<int>(), {}};
      for (const auto& [name, v] : row.items())
        if (name != "epoch") e.values.emplace_back(name, number(v));
      log.epochs.push_back(std::move(e));
    }
    for (const auto& s : j.at("steps"))
      log.steps.push_back({s.at("step").get<int64_t>(), s.at("epoch").get<int>(),
                           number(s.at("loss")), number(s.at("lr"))});
  } catch (const nlohmann::json::exception& e) {
    throw Error(fmt::format("metrics: malformed metrics JSON ({})", e.what()));
  }
  return log;
}

std::string MetricsLog::to_csv() const {
  std::vector<std::string> names; // every figure's name, in order of first appearance
  for (const EpochRecord& e : epochs)
    for (const auto& kv : e.values)
      if (std::find(names.begin(), names.end(), kv.first) == names.end()) names.push_back(kv.first);
  std::string csv = fmt::format("epoch{}{}\n", names.empty() ? "" : ",", fmt::join(names, ","));
  for (const EpochRecord& e : epochs) {
    csv += std::to_string(e.epoch);
    for (const std::string& name : names) {
      csv += ',';
      for (const auto& [k, v] : e.values)
        if (k == name) csv += fmt::format("{}", v); // shortest form that reads back exactly
    }
    csv += '\n';
  }
  return csv;
}

void MetricsLog::save(const std::filesystem::path& folder) const {
  write_file_atomic(folder / "metrics.json", to_json());
  write_file_atomic(folder / "metrics.csv", to_csv());
}

} // namespace tb::experiment
