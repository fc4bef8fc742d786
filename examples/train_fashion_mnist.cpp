// train_fashion_mnist — a small CNN on Fashion-MNIST, end to end, with tensorbrain.
//
// This is the project's main job and a tutorial: read it top to bottom. It shows
//   1. data: the IDX files of Debian's dataset-fashion-mnist package, a DataLoader with workers;
//   2. a model: Conv-BN-ReLU-MaxPool twice, then two Linear layers (tb::nn, PyTorch's names);
//   3. training: SGD with momentum and weight decay, a warm-up + cosine learning-rate schedule;
//   4. evaluation on the test set after every epoch;
//   5. bookkeeping, from <tb/experiment.h>: flags, a progress bar, a checkpoint (model, optimizer
//      and schedule) that --resume continues from exactly, metrics as CSV and JSON, a PNG plot;
//   6. optionally mixed precision (<tb/amp.h>): --amp bf16 runs conv and linear in bfloat16 under
//      autocast; --amp fp16 in float16 with a GradScaler (docs/mixed_precision.md).
//
//   build/examples/train_fashion_mnist --epochs 3 --out runs/fmnist
//   build/examples/train_fashion_mnist --amp bf16 --epochs 3 --out runs/fmnist_bf16
//   build/examples/train_fashion_mnist --help
#include <tb/tb.h>
#include <tb/amp.h>
#include <tb/data.h>
#include <tb/experiment.h>
#include <tb/models.h>

#include <cstdio>
#include <optional>

namespace ex = tb::experiment;
namespace fs = std::filesystem;

// ---- 0. Flags -----------------------------------------------------------------------------------

// Mixed precision: none (float32), bf16 (autocast to bfloat16), fp16 (float16 + loss scaling).
enum class Amp { none, bf16, fp16 };
static const std::vector<std::pair<std::string, Amp>> kAmp = {
    {"none", Amp::none}, {"bf16", Amp::bf16}, {"fp16", Amp::fp16}};

struct Options {
  int epochs = 3;
  int64_t batch_size = 64;
  double lr = 0.05, momentum = 0.9, weight_decay = 5e-4;
  uint64_t seed = 0;
  std::string data;                 // empty: $TB_FASHION_MNIST_DIR or the Debian package's folder
  std::string out = "runs/fashion_mnist";
  int threads = 0;                  // 0: all cores
  int workers = 1;                  // DataLoader threads preparing batches ahead
  bool resume = false;
  int64_t limit_train = 0, limit_test = 0; // use only the first N images (0: all); quick runs
  int stop_after = 0;               // stop after this many epochs, as if interrupted (tests)
  ex::OnNonFinite on_nonfinite = ex::OnNonFinite::stop;
  std::string model = "cnn";        // "cnn" (tb::models::cnn) or a zoo model (small-input variant)
  Amp amp = Amp::none;
  int64_t max_steps = 0;            // stop each epoch after N steps (0: all); speed measurements
};

static void add_flags(CLI::App& app, Options& o) {
  std::vector<std::string> models = tb::models::model_names();
  models.insert(models.begin(), "cnn");
  app.add_option("--epochs", o.epochs, "epochs to train")->check(ex::at_least(1));
  app.add_option("--batch-size", o.batch_size, "batch size")->check(ex::at_least<int64_t>(1));
  app.add_option("--lr", o.lr, "peak learning rate")->check(ex::greater_than(0));
  app.add_option("--momentum", o.momentum, "SGD momentum")->check(ex::at_least(0.0));
  app.add_option("--weight-decay", o.weight_decay, "SGD weight decay")->check(ex::at_least(0.0));
  app.add_option("--seed", o.seed, "seed for initialisation and shuffling")
      ->check(ex::at_least<uint64_t>(0));
  app.add_option("--data", o.data, "Fashion-MNIST folder (default $TB_FASHION_MNIST_DIR or "
                 "/usr/share/datasets/fashion-mnist)")->type_name("DIR");
  app.add_option("--out", o.out, "output folder for checkpoint, metrics and plot")
      ->type_name("DIR");
  app.add_option("--threads", o.threads, "CPU threads, 0 for all cores")->check(ex::at_least(0));
  app.add_option("--workers", o.workers, "data-loading threads")->check(ex::at_least(0));
  app.add_flag("--resume", o.resume, "continue from OUT/checkpoint.safetensors");
  app.add_option("--limit-train", o.limit_train, "train on the first N images, 0 for all")
      ->check(ex::at_least<int64_t>(0));
  app.add_option("--limit-test", o.limit_test, "evaluate on the first N test images, 0 for all")
      ->check(ex::at_least<int64_t>(0));
  app.add_option("--stop-after", o.stop_after, "stop after epoch N as if interrupted, 0 for "
                 "never (the schedule still spans --epochs)")->check(ex::at_least(0));
  app.add_option("--on-nonfinite", o.on_nonfinite, "when the loss or a gradient is NaN/Inf: stop "
                 "the run or skip the step")->transform(ex::one_of(ex::kOnNonFinite))
      ->default_str("stop");
  app.add_option("--model", o.model,
                 "cnn (the main job's CNN, tb::models::cnn) or a zoo model, small-input variant")
      ->check(ex::one_of(models));
  app.add_option("--amp", o.amp, "mixed precision: none, bf16 (autocast to bfloat16) or fp16 "
                 "(float16 with a GradScaler)")->transform(ex::one_of(kAmp))->default_str("none");
  app.add_option("--max-steps", o.max_steps, "train at most N steps per epoch, 0 for all (speed "
                 "measurements)")->check(ex::at_least<int64_t>(0));
}

// ---- 1. The model -------------------------------------------------------------------------------

// "cnn": the main job's CNN, defined once in tb::models (28x28 -> conv 32 -> pool 14x14 ->
// conv 64 -> pool 7x7 -> 3136 -> 128 -> 10 classes); any other name: a zoo model with its 3x3
// stride-1 stem for 1x28x28 inputs.
static tb::nn::ModulePtr make_model(const std::string& name) {
  if (name == "cnn") return tb::models::cnn({.num_classes = 10, .in_channels = 1});
  return tb::models::create(name, {.num_classes = 10, .small_input = true, .in_channels = 1});
}

// ---- 2. Training --------------------------------------------------------------------------------

static int train(const Options& o) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0); // a log file sees each line as it is printed
  if (o.threads > 0) tb::set_num_threads(o.threads);
  ex::seed_everything(o.seed);
  // Output folder first: a run that cannot write its results should fail now, not after an epoch.
  fs::path out = o.out, ckpt_path = out / "checkpoint.safetensors";
  ex::prepare_output_dir(out);

  // Data: uint8 images in memory; the loader scales to [0, 1] and normalises with the training
  // set's mean and standard deviation.
  auto [root, train_set, test_set, transform] = ex::load_fashion_mnist(
      {.root = o.data, .limit_train = o.limit_train, .limit_test = o.limit_test,
       .batch_size = o.batch_size});
  tb::data::DataLoader train_loader(train_set, {.batch_size = o.batch_size, .shuffle = true,
                                                .seed = o.seed, .drop_last = false,
                                                .num_workers = o.workers, .transform = transform});
  tb::data::DataLoader test_loader(test_set, {.batch_size = 500, .shuffle = false, .seed = 0,
                                              .drop_last = false, .num_workers = o.workers,
                                              .transform = transform});

  // Model, optimizer and a per-step schedule: linear warm-up over the first half epoch, then
  // cosine annealing to zero at the end of the last epoch (at least one step after the warm-up).
  tb::nn::ModulePtr net = make_model(o.model);
  tb::optim::SGD opt(net->parameters(),
                     {.lr = o.lr, .momentum = o.momentum, .weight_decay = o.weight_decay});
  int64_t steps_per_epoch = train_loader.size();
  int64_t warmup = std::max<int64_t>(1, steps_per_epoch / 2);
  int64_t total_steps = std::max(steps_per_epoch * o.epochs, warmup + 1);
  auto sched = tb::optim::warmup_cosine(opt, warmup, total_steps);

  // Mixed precision: autocast around the forward pass and the loss; float16 also scales the loss
  // so small gradients do not underflow (the scaler skips steps whose gradients overflowed).
  // The master weights, the optimizer and the evaluation stay float32.
  std::string amp_name = o.amp == Amp::none ? "none" : o.amp == Amp::bf16 ? "bf16" : "fp16";
  tb::amp::GradScaler scaler({.enabled = o.amp == Amp::fp16});
  auto autocast = [&](std::optional<tb::amp::autocast>& guard) {
    if (o.amp != Amp::none)
      guard.emplace(tb::amp::AutocastOptions{.dtype = o.amp == Amp::bf16 ? tb::kBFloat16
                                                                         : tb::kFloat16});
  };

  // Resume: model, optimizer and schedule state, the epoch reached and the metrics so far (and
  // the loss scale, kept in the checkpoint's metadata).
  ex::TrainState state{.model = *net, .optimizer = &opt, .scheduler = sched.get()};
  ex::Checkpoint run{.metadata = {{"model", o.model}, {"amp", amp_name}}};
  if (o.resume) {
    run = ex::load_checkpoint(ckpt_path, state, {{"model", o.model}, {"amp", amp_name}});
    if (scaler.is_enabled() && run.metadata.count("amp.scale"))
      scaler.load_state_dict(
          {{"scale", tb::full({}, std::stod(run.metadata.at("amp.scale")))},
           {"growth_factor", tb::full({}, scaler.options().growth_factor, tb::kFloat64)},
           {"backoff_factor", tb::full({}, scaler.options().backoff_factor, tb::kFloat64)},
           {"growth_interval", tb::full({}, (double)scaler.options().growth_interval, tb::kInt64)},
           {"_growth_tracker",
            tb::full({}, std::stod(run.metadata.at("amp.growth_tracker")), tb::kInt64)}});
    std::printf("resumed from %s after epoch %d\n", ckpt_path.c_str(), run.epoch);
  }

  std::printf("Fashion-MNIST: %lld train / %lld test images from %s; %lld parameters; %d threads; "
              "amp %s\n", (long long)train_set->size(), (long long)test_set->size(), root.c_str(),
              (long long)net->num_parameters(), tb::get_num_threads(), amp_name.c_str());

  for (int epoch = run.epoch; epoch < o.epochs; epoch++) {
    train_loader.set_epoch(epoch); // the shuffle depends on (seed, epoch) only: resumable
    ex::Progress progress({.total = steps_per_epoch,
                           .label = fmt::format("epoch {}/{}", epoch + 1, o.epochs)});
    ex::Meter train; // running loss and accuracy of this epoch
    int64_t step = 0, skipped = 0;
    for (const auto& b : train_loader) {
      if (o.max_steps > 0 && step >= o.max_steps) break;
      tb::Tensor logits, loss;
      {
        std::optional<tb::amp::autocast> guard;
        autocast(guard);
        logits = (*net)(b.inputs);
        loss = tb::cross_entropy(logits, b.targets); // float32 under autocast too
      }
      logits = logits.detach().to(tb::kFloat32);
      opt.zero_grad();
      if (scaler.is_enabled()) { // fp16: scaled backward; an overflow skips the step
        scaler.scale(loss).backward();
        double lr = opt.lr(), loss_value = loss.item();
        if (scaler.step(opt)) {
          train.add(loss_value * b.targets.numel(), logits, b.targets);
          int64_t global_step = epoch * steps_per_epoch + step + 1;
          run.metrics.steps.push_back({global_step, epoch + 1, loss_value, lr});
          progress.update(step + 1, train);
        } else {
          skipped++;
        }
        scaler.update();
      } else if (ex::checked_backward(loss, *net, o.on_nonfinite, epoch + 1, step)) {
        // backward, unless the loss is NaN/Inf; then (or for a NaN/Inf gradient) stop or skip.
        double lr = opt.lr(), loss_value = loss.item();
        opt.step();
        train.add(loss_value * b.targets.numel(), logits, b.targets);
        int64_t global_step = epoch * steps_per_epoch + step + 1;
        run.metrics.steps.push_back({global_step, epoch + 1, loss_value, lr});
        progress.update(step + 1, train);
      }
      sched->step();
      step++;
    }
    progress.finish();
    double seconds = progress.seconds(), images_per_s = (double)train.seen / seconds;
    ex::Score test = ex::evaluate(*net, test_loader);
    std::printf("epoch %d: train loss %.4f acc %.2f%% | test loss %.4f acc %.2f%% | %.1f s, "
                "%.0f img/s\n", epoch + 1, train.loss(), 100 * train.accuracy(), test.loss,
                100 * test.accuracy, seconds, images_per_s);
    if (scaler.is_enabled())
      std::printf("  loss scale %g, %lld steps skipped (inf/NaN gradients)\n", scaler.get_scale(),
                  (long long)skipped);
    run.epoch = epoch + 1;
    run.metrics.epochs.push_back(
        {epoch + 1, {{"train_loss", train.loss()}, {"train_acc", train.accuracy()},
                     {"test_loss", test.loss}, {"test_acc", test.accuracy}, {"seconds", seconds},
                     {"images_per_s", images_per_s}, {"lr", opt.lr()}}});

    // Checkpoint and metrics, each written atomically: an interruption loses one epoch at most.
    if (scaler.is_enabled()) {
      run.metadata["amp.scale"] = fmt::format("{}", scaler.get_scale());
      run.metadata["amp.growth_tracker"] = std::to_string(scaler.growth_tracker());
    }
    ex::save_checkpoint(ckpt_path, state, run);
    run.metrics.save(out);
    if (o.stop_after > 0 && epoch + 1 >= o.stop_after && epoch + 1 < o.epochs) {
      std::printf("stopping after epoch %d as asked (--stop-after); continue with --resume\n",
                  epoch + 1);
      return 0;
    }
  }

  // The plot: matplotlib (Debian's python3-matplotlib) reads the JSON and draws the curves.
  fs::path plot = out / "metrics.png";
  bool plotted =
      ex::plot_metrics(TB_SOURCE_DIR "/tools/plot_metrics.py", out / "metrics.json", plot);
  std::printf("final test accuracy: %.2f%%\n", 100 * run.metrics.epochs.back().at("test_acc"));
  std::printf("checkpoint: %s\nmetrics: %s, %s\nplot: %s\n", ckpt_path.c_str(),
              (out / "metrics.csv").c_str(), (out / "metrics.json").c_str(),
              plotted ? plot.c_str() : "not drawn (python3-matplotlib missing?)");
  return 0;
}

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"Trains a small CNN (or a zoo model) on Fashion-MNIST.", "train_fashion_mnist"};
  add_flags(app, o);
  if (auto exit_code = ex::parse_flags(app, argc, argv)) return *exit_code;
  try {
    return train(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "train_fashion_mnist: %s\n", e.what());
    return 1;
  }
}
