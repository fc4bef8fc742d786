// Checkpoints: model + optimizer + schedule state in one safetensors file, with the epoch and the
// metrics in its metadata, so --resume continues exactly where a run stopped.
#include <tb/experiment.h>

namespace tb::experiment {

namespace {

// The state_dict keys of each part carry its prefix in the file.
const char* const kModel = "model.";
const char* const kOptim = "optim.";
const char* const kSched = "sched.";

void add_prefixed(StateDict& all, const char* prefix, const StateDict& part) {
  for (const auto& [k, v] : part) all.insert(prefix + k, v);
}

StateDict with_prefix(const StateDict& all, const std::string& prefix) {
  StateDict part;
  for (const auto& [k, v] : all)
    if (k.rfind(prefix, 0) == 0) part.insert(k.substr(prefix.size()), v);
  return part;
}

} // namespace

void save_checkpoint(const std::filesystem::path& path, const TrainState& state,
                     const Checkpoint& checkpoint) {
  StateDict all;
  add_prefixed(all, kModel, state.model.state_dict());
  if (state.optimizer) add_prefixed(all, kOptim, state.optimizer->state_dict());
  if (state.scheduler) add_prefixed(all, kSched, state.scheduler->state_dict());
  Metadata meta = checkpoint.metadata;
  for (const char* key : {"epoch", "metrics_json"})
    TB_CHECK(!meta.count(key), "save_checkpoint: '{}': metadata key '{}' is reserved",
             path.string(), key);
  meta["epoch"] = std::to_string(checkpoint.epoch);
  meta["metrics_json"] = checkpoint.metrics.to_json();
  save_safetensors(path.string(), all, meta); // atomic: temporary file, fsync, rename
}

Checkpoint load_checkpoint(const std::filesystem::path& path, const TrainState& state,
                           const Metadata& expect) {
  std::string name = path.string();
  TB_CHECK(std::filesystem::exists(path), "load_checkpoint: no checkpoint at '{}'", name);
  SafetensorsFile file = load_safetensors(name);
  Checkpoint c;
  c.metadata = file.metadata;
  for (const char* key : {"epoch", "metrics_json"})
    TB_CHECK(c.metadata.count(key), "load_checkpoint: '{}' is not a training checkpoint: its "
             "metadata has no '{}'", name, key);
  for (const auto& [key, want] : expect) {
    auto it = c.metadata.find(key);
    std::string got = it == c.metadata.end() ? "(none)" : "'" + it->second + "'";
    TB_CHECK(it != c.metadata.end() && it->second == want, "load_checkpoint: '{}' was written "
             "with {} = {}, this run has '{}'", name, key, got, want);
  }
  std::optional<int> epoch = parse_number<int>(c.metadata.at("epoch"));
  TB_CHECK(epoch && *epoch >= 0, "load_checkpoint: '{}': bad epoch '{}' in its metadata", name,
           c.metadata.at("epoch"));
  c.epoch = *epoch;
  c.metrics = MetricsLog::from_json(c.metadata.at("metrics_json"));
  c.metadata.erase("epoch");
  c.metadata.erase("metrics_json");
  try {
    state.model.load_state_dict(with_prefix(file.tensors, kModel));
    if (state.optimizer) state.optimizer->load_state_dict(with_prefix(file.tensors, kOptim));
    if (state.scheduler) state.scheduler->load_state_dict(with_prefix(file.tensors, kSched));
  } catch (const Error& e) {
    throw Error(fmt::format("load_checkpoint: '{}' does not fit this run: {}", name, e.what()));
  }
  return c;
}

} // namespace tb::experiment
