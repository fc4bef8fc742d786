// tb/experiment.h — what every training program needs around its loop, so that the program
// itself reads as the training: flags (CLI11, --help generated), a progress bar, metrics as JSON
// and CSV, atomic files, checkpoint and resume, evaluation, seeding. Not part of tb.h:
//
//   #include <tb/experiment.h>
//   namespace ex = tb::experiment;
//
//   CLI::App app{"Trains a CNN on Fashion-MNIST.", "train_fashion_mnist"};
//   app.add_option("--epochs", epochs, "epochs to train")->check(ex::at_least(1));
//   if (auto exit_code = ex::parse_flags(app, argc, argv)) return *exit_code;
//   ex::seed_everything(seed);
//   ex::prepare_output_dir(out);                 // fails now, not after an hour of training
//   ex::MetricsLog metrics;
//   for (int epoch = 0; epoch < epochs; epoch++) {
//     ex::Meter train;
//     ex::Progress progress({.total = loader.size(), .label = fmt::format("epoch {}", epoch + 1)});
//     for (const auto& b : loader) { ...; train.add(loss_sum, logits, b.targets);
//                                    progress.update(++step, train); }
//     ex::Score test = ex::evaluate(*net, test_loader);
//     metrics.epochs.push_back({epoch + 1, {{"train_loss", train.loss()},
//                                           {"test_acc", test.accuracy}}});
//     metrics.save(out);
//     ex::save_checkpoint(out / "checkpoint.safetensors", {.model = *net, .optimizer = &opt},
//                         {.epoch = epoch + 1, .metrics = metrics});
//   }
#pragma once

#include <tb/data.h>
#include <tb/io.h>
#include <tb/nn.h>
#include <tb/optim.h>

#include <CLI/CLI.hpp>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace tb::experiment {

// ---------------------------------------------------------------------------------------------
// Flags: CLI11 as it is (CLI::App, add_option, add_flag), plus the parse call and the checks that
// every program needs. A bad value is refused with the flag and what it accepts:
//   train_fashion_mnist: --epochs: got 'abc', accepts an integer >= 1 (see --help)

// Parses argv into `app`'s options. Returns nullopt to go on, or the exit code to leave main with:
// 0 after printing --help (to stdout), 2 after a bad flag (a message naming it on stderr, prefixed
// with the app's name). --help lists each flag's type, what it accepts and its default value.
std::optional<int> parse_flags(CLI::App& app, int argc, const char* const* argv);

// A check with the message "got '<value>', accepts <what>" when `ok(value)` is false; --help
// shows `short_desc` after the flag's type. The building block of the checks below.
CLI::Validator accepts(std::string what, std::string short_desc,
                       std::function<bool(const std::string&)> ok);

// `s` as a T (an integer type, or a floating type: finite only), the whole string; nullopt else.
template <class T>
std::optional<T> parse_number(const std::string& s) {
  T v{};
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || s.empty()) return std::nullopt;
  if constexpr (std::is_floating_point_v<T>)
    if (!std::isfinite(v)) return std::nullopt;
  return v;
}

// Numbers of T's type (an integer or floating type) that are >= lo: `->check(at_least(1))` on an
// int flag, `at_least(0.0)` on a double flag, `at_least<uint64_t>(0)` for a seed.
template <class T>
CLI::Validator at_least(T lo) {
  std::string bound = fmt::format("{}", lo);
  return accepts(fmt::format("{} >= {}", std::is_integral_v<T> ? "an integer" : "a number", bound),
                 ">=" + bound, [lo](const std::string& s) {
                   std::optional<T> v = parse_number<T>(s);
                   return v && *v >= lo;
                 });
}

// Finite numbers > lo (a learning rate: greater_than(0)).
CLI::Validator greater_than(double lo);

// One of `names` (a string flag): "--model: got 'x', accepts one of cnn, resnet18, ...".
CLI::Validator one_of(const std::vector<std::string>& names);

// An enum flag: accepts the names and stores the matching value. Use with ->transform (it turns
// the name into the enum's number, which CLI11 then stores):
//   app.add_option("--on-nonfinite", policy, "...")->transform(ex::one_of(ex::kOnNonFinite));
template <class E>
CLI::Validator one_of(const std::vector<std::pair<std::string, E>>& choices) {
  std::vector<std::string> names;
  for (const auto& c : choices) names.push_back(c.first);
  CLI::Validator v = one_of(names);
  return CLI::Validator(
      [v, choices](std::string& s) {
        std::string err = v(s);
        for (const auto& c : choices)
          if (err.empty() && c.first == s) s = std::to_string(static_cast<long long>(c.second));
        return err;
      },
      v.get_description());
}

// A device name that tb::parse_device accepts ("cpu", "cuda", "cuda:1") and that this build and
// machine can run on (a CUDA device needs a CUDA build and a GPU).
CLI::Validator device_name();

// A batch size that fits the data set: tb::Error "--batch-size 5000 is larger than the training
// set (2000 images); accepts 1 to 2000" otherwise. (The data set's size is only known once it
// is loaded, after the flags are parsed.)
void check_batch_size(int64_t batch_size, int64_t dataset_size);

// ---------------------------------------------------------------------------------------------
// Data: Fashion-MNIST as every example uses it

struct FashionMNISTOptions {
  std::string root;                        // empty: $TB_FASHION_MNIST_DIR or Debian's folder
  int64_t limit_train = 0, limit_test = 0; // > 0: only the first N images (quick runs, tests)
  int64_t batch_size = 0;                  // > 0: checked against the training set's size
};
struct FashionMNISTData {
  std::string root; // where the files were read
  std::shared_ptr<const data::Dataset> train, test;
  // uint8 [28, 28] -> float32 [1, 28, 28] in [0, 1], normalised with the training set's mean
  // and standard deviation (0.2860, 0.3530).
  data::Transform transform;
};
// The training and test sets of Debian's dataset-fashion-mnist (uint8 images in memory; the
// DataLoader's fast path), cut to their first images when asked, and the transform. tb::Error
// from check_batch_size for a batch larger than the (cut) training set.
//   auto [root, train_set, test_set, transform] = ex::load_fashion_mnist({.root = o.data});
FashionMNISTData load_fashion_mnist(const FashionMNISTOptions& o);

// ---------------------------------------------------------------------------------------------
// Seeding

// Seeds everything random in a run: tb's default generator (weight initialisation, dropout,
// randn) and the C library's rand(). A DataLoader takes its own seed in its options.
void seed_everything(uint64_t seed);

// ---------------------------------------------------------------------------------------------
// Files

// Writes `bytes` to `path` so that a reader sees the old file or the whole new one, never a
// part, even across a crash: a temporary file in the same folder, write, fflush, fsync, rename,
// fsync of the folder. tb::Error names the path, the failing step and errno's text; the
// temporary file is removed on failure.
void write_file_atomic(const std::filesystem::path& path, std::string_view bytes);

// Creates `dir` (with its parents) and checks that a file can be written there, so a run that
// cannot save its results fails before training; tb::Error naming the folder otherwise.
void prepare_output_dir(const std::filesystem::path& dir);

// ---------------------------------------------------------------------------------------------
// Metrics

// One optimizer step: global step (from 1), epoch (from 1), the batch's loss and the lr it used.
struct StepRecord {
  int64_t step = 0;
  int epoch = 0;
  double loss = 0, lr = 0;
};

// One epoch: its number (from 1) and named figures in order (they become the CSV's columns).
struct EpochRecord {
  int epoch = 0;
  std::vector<std::pair<std::string, double>> values;
  // The figure called `name`; tb::Error naming it and the epoch when absent.
  double at(const std::string& name) const;
};

// The metrics of a run, saved as metrics.json (both lists) and metrics.csv (the epochs).
struct MetricsLog {
  std::vector<StepRecord> steps;
  std::vector<EpochRecord> epochs;

  // {"epochs": [{"epoch": 1, "train_loss": 0.51, ...}, ...],
  //  "steps": [{"step": 1, "epoch": 1, "loss": 2.3, "lr": 0.005}, ...]}; NaN/Inf become null.
  std::string to_json() const;
  // "epoch,<names in order of first appearance>" then one line per epoch; numbers in their
  // shortest exact form (they read back to the same double), a figure an epoch lacks left empty.
  std::string to_csv() const;
  // Reads to_json()'s text back (null -> NaN); tb::Error naming what is malformed.
  static MetricsLog from_json(const std::string& text);
  // Writes folder/metrics.json and folder/metrics.csv, each atomically.
  void save(const std::filesystem::path& folder) const;
};

// Draws metrics.json as a PNG with `script` (tools/plot_metrics.py, matplotlib): per-epoch loss
// and accuracy, and the per-step training loss. Runs python3 without a shell, its output
// discarded; true when the plot was drawn (false when python3 or matplotlib is missing).
bool plot_metrics(const std::filesystem::path& script, const std::filesystem::path& metrics_json,
                  const std::filesystem::path& png);

// ---------------------------------------------------------------------------------------------
// Training steps and evaluation

// Running loss and accuracy of a classifier over the batches seen so far.
struct Meter {
  double loss_sum = 0; // summed over samples
  int64_t correct = 0, seen = 0;
  // A batch: its summed loss (mean loss * batch size), logits [B, C], class indices [B].
  void add(double batch_loss_sum, const Tensor& logits, const Tensor& targets);
  double loss() const { return loss_sum / (double)std::max<int64_t>(seen, 1); }
  double accuracy() const { return (double)correct / (double)std::max<int64_t>(seen, 1); }
};

// What to do when the loss or a gradient is NaN or Inf.
enum class OnNonFinite { stop, skip };
inline const std::vector<std::pair<std::string, OnNonFinite>> kOnNonFinite = {
    {"stop", OnNonFinite::stop}, {"skip", OnNonFinite::skip}};

// loss.backward() unless the loss is NaN/Inf, then a check of every gradient of `model`. True
// when the optimizer may step. Otherwise it prints "non-finite loss nan at epoch 2 step 17" (or
// the gradient's name) to stdout, and then OnNonFinite::stop raises tb::Error "training stopped:
// ... at epoch 2 step 17 (use --on-nonfinite skip ...)", skip zeroes the gradients and returns
// false. epoch counts from 1, step (within the epoch) from 0.
bool checked_backward(const Tensor& loss, nn::Module& model, OnNonFinite policy, int epoch,
                      int64_t step);

// Mean cross-entropy and accuracy.
struct Score {
  double loss = 0, accuracy = 0;
};

// `model` on every batch of `loader` in eval mode under no_grad (its training flag restored
// after): the mean cross-entropy per sample and the fraction whose top logit is the target.
// Batches go to the device of the model's first parameter.
Score evaluate(nn::Module& model, data::DataLoader& loader);

// A plain supervised run, what the examples use for float baselines and fine-tunes: SGD with
// momentum and weight decay, cross-entropy, a linear warm-up then cosine decay to 0 (or cosine
// alone), a progress line per epoch. A method that changes the step itself (distillation,
// autocast, a loss scaler) writes its own loop, as examples/compose_fashion_mnist does.
//   ex::fit(*net, loader, {.epochs = 3, .lr = 0.05, .label = "baseline"});
struct FitOptions {
  int epochs = 1;
  double lr = 0.05, momentum = 0.9, weight_decay = 5e-4;
  int64_t warmup_steps = -1; // -1: half an epoch; 0: no warm-up (cosine from lr)
  int64_t max_steps = 0;     // > 0: at most this many steps per epoch (quick runs, tests)
  std::string label = "train"; // the progress line's label: "<label> 2/3"
  // Called before every step with (steps done, total steps): QAT freezes BN statistics and
  // observers from it.
  std::function<void(int64_t step, int64_t total)> before_step = {};
  // Called after every optimizer step with the steps done so far (from 1): AGP prunes there.
  std::function<void(int64_t steps_done)> after_step = {};
};
struct FitResult {
  int64_t steps = 0;
  double seconds = 0;
  Meter last_epoch; // training loss and accuracy of the last epoch
};
// Trains `model` (train mode; left in train mode) for o.epochs over `loader` (set_epoch(e) per
// epoch, so the order depends only on the loader's seed and the epoch).
FitResult fit(nn::Module& model, data::DataLoader& loader, const FitOptions& o);

// ---------------------------------------------------------------------------------------------
// Progress

struct ProgressOptions {
  int64_t total = 0;             // steps that make the bar full (batches per epoch)
  std::string label;             // printed first: "epoch 2/3"
  std::FILE* out = stdout;
  std::optional<bool> tty;       // unset: isatty(out)
};

// A progress line with loss, accuracy, images per second and the time left. On a terminal a bar
// is redrawn in place ("epoch 1/3 [#####.....] 310/938 loss 0.52 ..."); into a log file it writes
// a plain line every 10% of the steps and at the end.
class Progress {
 public:
  explicit Progress(ProgressOptions options);
  // `done` of total steps are finished; `m` holds the figures so far (m.seen images).
  void update(int64_t done, const Meter& m);
  // Ends the bar's line on a terminal.
  void finish();
  // Seconds since construction.
  double seconds() const;

 private:
  ProgressOptions o_;
  bool tty_;
  int64_t last_tenth_ = -1;
  std::chrono::steady_clock::time_point start_;
};

// ---------------------------------------------------------------------------------------------
// Checkpoints: one safetensors file holding the model's state_dict (keys "model.<name>"), the
// optimizer's ("optim.<name>") and the schedule's ("sched.<name>"), with the epoch and the
// metrics in its metadata; written atomically.

// What a checkpoint saves and restores (optimizer and scheduler may be null: not saved).
struct TrainState {
  nn::Module& model;
  optim::Optimizer* optimizer = nullptr;
  optim::LRScheduler* scheduler = nullptr;
};

// Where a run stands: epochs completed, metrics so far, and free-form strings (e.g. {"model",
// "cnn"}) that load_checkpoint can require to match.
struct Checkpoint {
  int epoch = 0;
  MetricsLog metrics;
  Metadata metadata;
};

void save_checkpoint(const std::filesystem::path& path, const TrainState& state,
                     const Checkpoint& checkpoint);

// Restores `state` from `path` (model, then optimizer, then schedule) and returns the rest. Every
// metadata entry of `expect` must equal the file's. tb::Error names the file and the problem:
// missing, not a training checkpoint, an expected entry that differs (checked before anything is
// loaded), or a state_dict that does not fit the model, optimizer or schedule.
Checkpoint load_checkpoint(const std::filesystem::path& path, const TrainState& state,
                           const Metadata& expect = {});

} // namespace tb::experiment
