// train_fashion_mnist — a small CNN on Fashion-MNIST, end to end, with tensorbrain.
//
// This is the project's main job and a tutorial: read it top to bottom. It shows
//   1. data: the IDX files of Debian's dataset-fashion-mnist package, a DataLoader with workers;
//   2. a model: Conv-BN-ReLU-MaxPool twice, then two Linear layers (tb::nn, PyTorch's names);
//   3. training: SGD with momentum and weight decay, a warm-up + cosine learning-rate schedule;
//   4. evaluation on the test set after every epoch;
//   5. bookkeeping: a progress bar, a checkpoint (model + optimizer + schedule) that --resume
//      continues from exactly, metrics as CSV and JSON, and a PNG plot of the curves.
//
//   build/examples/train_fashion_mnist --epochs 3 --out runs/fmnist
//   build/examples/train_fashion_mnist --help
#include <tb/tb.h>
#include <tb/data.h>
#include <tb/models.h>
#include <tb/nn_checks.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <unistd.h>

namespace fs = std::filesystem;

// ---- 0. Flags ------------------------------------------------------------------------------------

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
  int64_t limit_train = 0;          // use only the first N training images (0: all); for tests
  int64_t limit_test = 0;
  int stop_after = 0;               // stop after this many epochs, as if interrupted (tests)
  std::string on_nonfinite = "stop"; // a NaN/Inf loss or gradient: "stop" the run or "skip" the step
  std::string model = "cnn";         // "cnn" (below) or a zoo model (small-input variant)
};

static void usage() {
  std::printf(
      "usage: train_fashion_mnist [flags]\n"
      "  --epochs N          epochs to train (default 3)\n"
      "  --batch-size N      batch size (default 64)\n"
      "  --lr X              peak learning rate (default 0.05)\n"
      "  --momentum X        SGD momentum (default 0.9)\n"
      "  --weight-decay X    SGD weight decay (default 5e-4)\n"
      "  --seed N            seed for initialisation and shuffling (default 0)\n"
      "  --data DIR          Fashion-MNIST folder (default $TB_FASHION_MNIST_DIR or\n"
      "                      /usr/share/datasets/fashion-mnist)\n"
      "  --out DIR           output folder for checkpoint, metrics and plot (default runs/fashion_mnist)\n"
      "  --threads N         CPU threads (default: all cores)\n"
      "  --workers N         data-loading threads (default 1)\n"
      "  --resume            continue from OUT/checkpoint.safetensors\n"
      "  --limit-train N     train on the first N images only (quick runs)\n"
      "  --limit-test N      evaluate on the first N test images only\n"
      "  --stop-after N      stop after epoch N as if interrupted (the schedule still spans --epochs)\n"
      "  --on-nonfinite M    when the loss or a gradient is NaN/Inf: stop (default) or skip the step\n"
      "  --model NAME        cnn (default) or a zoo model, small-input variant: %s\n"
      "  --help              this text\n",
      fmt::format("{}", fmt::join(tb::models::model_names(), ", ")).c_str());
}

static Options parse_flags(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw tb::Error("flag " + a + " needs a value (see --help)");
      return argv[++i];
    };
    if (a == "--help" || a == "-h") { usage(); std::exit(0); }
    else if (a == "--epochs") o.epochs = std::stoi(value());
    else if (a == "--batch-size") o.batch_size = std::stoll(value());
    else if (a == "--lr") o.lr = std::stod(value());
    else if (a == "--momentum") o.momentum = std::stod(value());
    else if (a == "--weight-decay") o.weight_decay = std::stod(value());
    else if (a == "--seed") o.seed = std::stoull(value());
    else if (a == "--data") o.data = value();
    else if (a == "--out") o.out = value();
    else if (a == "--threads") o.threads = std::stoi(value());
    else if (a == "--workers") o.workers = std::stoi(value());
    else if (a == "--resume") o.resume = true;
    else if (a == "--limit-train") o.limit_train = std::stoll(value());
    else if (a == "--limit-test") o.limit_test = std::stoll(value());
    else if (a == "--stop-after") o.stop_after = std::stoi(value());
    else if (a == "--on-nonfinite") o.on_nonfinite = value();
    else if (a == "--model") o.model = value();
    else throw tb::Error("unknown flag '" + a + "' (see --help)");
  }
  TB_CHECK(o.epochs >= 1 && o.batch_size >= 1, "epochs and batch size must be positive");
  TB_CHECK(o.on_nonfinite == "stop" || o.on_nonfinite == "skip",
           "--on-nonfinite must be stop or skip, got '{}'", o.on_nonfinite);
  return o;
}

// ---- 1. The model --------------------------------------------------------------------------------

// 28x28 -> conv 32 -> pool 14x14 -> conv 64 -> pool 7x7 -> 3136 -> 128 -> 10 classes.
static tb::nn::ModulePtr make_model(const std::string& name) {
  if (name != "cnn") // any model of the zoo, with its 3x3 stride-1 stem for 1x28x28 inputs
    return tb::models::create(name, {.num_classes = 10, .small_input = true, .in_channels = 1});
  using namespace tb::nn;
  auto net = std::make_shared<Sequential>();
  net->push_back(std::make_shared<Conv2d>(
      Conv2dOptions{.in_channels = 1, .out_channels = 32, .kernel_size = 3, .padding = 1}));
  net->push_back(std::make_shared<BatchNorm2d>(32));
  net->push_back(std::make_shared<ReLU>());
  net->push_back(std::make_shared<MaxPool2d>(2));
  net->push_back(std::make_shared<Conv2d>(
      Conv2dOptions{.in_channels = 32, .out_channels = 64, .kernel_size = 3, .padding = 1}));
  net->push_back(std::make_shared<BatchNorm2d>(64));
  net->push_back(std::make_shared<ReLU>());
  net->push_back(std::make_shared<MaxPool2d>(2));
  net->push_back(std::make_shared<Flatten>());
  net->push_back(std::make_shared<Linear>(64 * 7 * 7, 128));
  net->push_back(std::make_shared<ReLU>());
  net->push_back(std::make_shared<Linear>(128, 10));
  return net;
}

// ---- 2. Small helpers: subsets, progress, files --------------------------------------------------

// The first n samples of a data set (keeps the uint8 fast path of the DataLoader).
struct FirstN : tb::data::Dataset {
  std::shared_ptr<const tb::data::Dataset> base;
  int64_t n;
  FirstN(std::shared_ptr<const tb::data::Dataset> b, int64_t n_) : base(std::move(b)), n(n_) {}
  int64_t size() const override { return std::min(n, base->size()); }
  tb::data::Example get(int64_t i) const override { return base->get(i); }
  std::optional<tb::data::UInt8Images> uint8_images() const override {
    auto im = base->uint8_images();
    if (im) im->n = size();
    return im;
  }
};

// A progress line: a bar on a terminal (redrawn in place), plain lines every 10% in a log.
struct Progress {
  bool tty = isatty(fileno(stdout));
  int64_t total = 0, last_logged = -1;
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  void update(int epoch, int epochs, int64_t done, double loss, double acc, int64_t images) {
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    double ips = images / std::max(secs, 1e-9);
    double eta = done > 0 ? secs / done * (total - done) : 0;
    if (tty) {
      int width = 30, filled = (int)(width * done / std::max<int64_t>(total, 1));
      std::printf("\repoch %d/%d [%s%s] %lld/%lld loss %.4f acc %.2f%% %.0f img/s eta %.0fs ", epoch,
                  epochs, std::string(filled, '#').c_str(), std::string(width - filled, '.').c_str(),
                  (long long)done, (long long)total, loss, 100 * acc, ips, eta);
      std::fflush(stdout);
    } else if (done * 10 / std::max<int64_t>(total, 1) != last_logged || done == total) {
      last_logged = done * 10 / std::max<int64_t>(total, 1);
      std::printf("epoch %d/%d batch %lld/%lld loss %.4f acc %.2f%% %.0f img/s eta %.0fs\n", epoch,
                  epochs, (long long)done, (long long)total, loss, 100 * acc, ips, eta);
    }
  }
  void finish() {
    if (tty) std::printf("\n");
  }
};

// Writes a text file atomically: a temporary file in the same folder, then rename.
static void write_file_atomic(const fs::path& path, const std::string& text) {
  fs::path tmp = path;
  tmp += ".tmp." + std::to_string(getpid());
  {
    std::ofstream f(tmp, std::ios::binary);
    f << text;
    f.flush();
    TB_CHECK(f.good(), "cannot write {}", tmp.string());
  }
  fs::rename(tmp, path);
}

struct EpochMetrics {
  int epoch;
  double train_loss, train_acc, test_loss, test_acc, seconds, images_per_s, lr;
};

static std::string metrics_csv(const std::vector<EpochMetrics>& ms) {
  std::string s = "epoch,train_loss,train_acc,test_loss,test_acc,seconds,images_per_s,lr\n";
  for (auto& m : ms)
    s += fmt::format("{},{:.6f},{:.6f},{:.6f},{:.6f},{:.3f},{:.1f},{:.6g}\n", m.epoch, m.train_loss,
                     m.train_acc, m.test_loss, m.test_acc, m.seconds, m.images_per_s, m.lr);
  return s;
}

static std::string metrics_json(const std::vector<EpochMetrics>& ms) {
  std::string s = "{\"epochs\": [\n";
  for (size_t i = 0; i < ms.size(); i++) {
    auto& m = ms[i];
    s += fmt::format("  {{\"epoch\": {}, \"train_loss\": {:.6f}, \"train_acc\": {:.6f}, "
                     "\"test_loss\": {:.6f}, \"test_acc\": {:.6f}, \"seconds\": {:.3f}, "
                     "\"images_per_s\": {:.1f}, \"lr\": {:.6g}}}{}\n",
                     m.epoch, m.train_loss, m.train_acc, m.test_loss, m.test_acc, m.seconds,
                     m.images_per_s, m.lr, i + 1 < ms.size() ? "," : "");
  }
  return s + "]}\n";
}

// Parses our own CSV back (used on --resume so the metrics files keep every epoch).
static std::vector<EpochMetrics> parse_metrics_csv(const std::string& csv) {
  std::vector<EpochMetrics> ms;
  std::istringstream in(csv);
  std::string line;
  std::getline(in, line); // header
  while (std::getline(in, line)) {
    EpochMetrics m{};
    if (std::sscanf(line.c_str(), "%d,%lf,%lf,%lf,%lf,%lf,%lf,%lf", &m.epoch, &m.train_loss,
                    &m.train_acc, &m.test_loss, &m.test_acc, &m.seconds, &m.images_per_s,
                    &m.lr) == 8)
      ms.push_back(m);
  }
  return ms;
}

// ---- 3. Evaluation ---------------------------------------------------------------------------------

static std::pair<double, double> evaluate(tb::nn::Module& net, tb::data::DataLoader& loader) {
  tb::no_grad guard;
  net.eval();
  double loss_sum = 0;
  int64_t correct = 0, seen = 0;
  for (const auto& b : loader) {
    tb::Tensor logits = net(b.inputs);
    loss_sum += tb::cross_entropy(logits, b.targets, 0.0, "sum").item();
    correct += (int64_t)tb::sum(tb::eq(tb::argmax(logits, 1), b.targets)).item();
    seen += b.targets.numel();
  }
  net.train();
  return {loss_sum / std::max<int64_t>(seen, 1), (double)correct / std::max<int64_t>(seen, 1)};
}

// ---- 4. Training -------------------------------------------------------------------------------------

int run(const Options& o) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0); // a log file sees each line as it is printed
  if (o.threads > 0) tb::set_num_threads(o.threads);
  tb::manual_seed(o.seed);

  // Output folder first: a run that cannot write its results should fail now, not after an epoch.
  fs::path out = o.out;
  fs::create_directories(out);
  write_file_atomic(out / ".write_test", "ok\n");
  fs::remove(out / ".write_test");
  fs::path ckpt_path = out / "checkpoint.safetensors";

  // Data: uint8 images in memory; the loader scales to [0, 1] and normalises with the training
  // set's mean and standard deviation.
  std::string root = o.data.empty() ? tb::data::default_fashion_mnist_root() : o.data;
  std::shared_ptr<const tb::data::Dataset> train_set =
      std::make_shared<tb::data::FashionMNIST>(root, true);
  std::shared_ptr<const tb::data::Dataset> test_set =
      std::make_shared<tb::data::FashionMNIST>(root, false);
  if (o.limit_train > 0) train_set = std::make_shared<FirstN>(train_set, o.limit_train);
  if (o.limit_test > 0) test_set = std::make_shared<FirstN>(test_set, o.limit_test);
  tb::data::Compose transform({tb::data::ToTensor(), tb::data::Normalize({0.2860}, {0.3530})});
  tb::data::DataLoader train_loader(train_set, {.batch_size = o.batch_size, .shuffle = true,
                                                .seed = o.seed, .drop_last = false,
                                                .num_workers = o.workers, .transform = transform});
  tb::data::DataLoader test_loader(test_set, {.batch_size = 500, .shuffle = false, .seed = 0,
                                              .drop_last = false, .num_workers = o.workers,
                                              .transform = transform});

  // Model, optimizer and a per-step schedule: linear warm-up over the first half epoch, then
  // cosine annealing to zero at the end of the last epoch.
  tb::nn::ModulePtr net = make_model(o.model);
  tb::optim::SGD opt(net->parameters(),
                     {.lr = o.lr, .momentum = o.momentum, .weight_decay = o.weight_decay});
  int64_t steps_per_epoch = train_loader.size();
  int64_t total_steps = steps_per_epoch * o.epochs;
  auto sched = tb::optim::warmup_cosine(opt, std::max<int64_t>(1, steps_per_epoch / 2), total_steps);

  // Resume: model, optimizer and schedule state, the epoch reached and the metrics so far.
  int start_epoch = 0;
  std::vector<EpochMetrics> history;
  if (o.resume) {
    TB_CHECK(fs::exists(ckpt_path), "--resume: no checkpoint at {}", ckpt_path.string());
    tb::SafetensorsFile ckpt = tb::load_safetensors(ckpt_path.string());
    const tb::Metadata& meta = ckpt.metadata;
    tb::StateDict model_sd, opt_sd, sched_sd;
    for (const auto& [k, v] : ckpt.tensors) {
      if (k.rfind("model.", 0) == 0) model_sd.insert(k.substr(6), v);
      else if (k.rfind("optim.", 0) == 0) opt_sd.insert(k.substr(6), v);
      else if (k.rfind("sched.", 0) == 0) sched_sd.insert(k.substr(6), v);
    }
    net->load_state_dict(model_sd);
    opt.load_state_dict(opt_sd);
    sched->load_state_dict(sched_sd);
    start_epoch = std::stoi(meta.at("epoch"));
    history = parse_metrics_csv(meta.at("metrics_csv"));
    std::printf("resumed from %s after epoch %d\n", ckpt_path.string().c_str(), start_epoch);
  }

  std::printf("Fashion-MNIST: %lld train / %lld test images from %s; %lld parameters; %d threads\n",
              (long long)train_set->size(), (long long)test_set->size(), root.c_str(),
              (long long)net->num_parameters(), tb::get_num_threads());

  for (int epoch = start_epoch; epoch < o.epochs; epoch++) {
    train_loader.set_epoch(epoch); // the shuffle depends on (seed, epoch) only: resumable
    Progress progress;
    progress.total = steps_per_epoch;
    double loss_sum = 0;
    int64_t correct = 0, seen = 0, step = 0;
    for (const auto& b : train_loader) {
      tb::Tensor logits = (*net)(b.inputs);
      tb::Tensor loss = tb::cross_entropy(logits, b.targets);
      double loss_value = loss.item();
      if (!std::isfinite(loss_value)) {
        std::printf("\nnon-finite loss %g at epoch %d step %lld\n", loss_value, epoch + 1,
                    (long long)step);
        TB_CHECK(o.on_nonfinite == "skip", "training stopped: the loss became {} at epoch {} step "
                 "{} (use --on-nonfinite skip to skip such steps, or lower --lr)", loss_value,
                 epoch + 1, step);
        opt.zero_grad();
        sched->step();
        step++;
        continue;
      }
      opt.zero_grad();
      loss.backward();
      // A finite loss can still give NaN/Inf gradients (an overflow inside backward): name them.
      auto bad = tb::nn::nonfinite_grads(*net);
      if (!bad.empty()) {
        std::printf("\nnon-finite gradient at epoch %d step %lld: %s\n", epoch + 1, (long long)step,
                    bad[0].str().c_str());
        TB_CHECK(o.on_nonfinite == "skip", "training stopped at epoch {} step {}: {} (use "
                 "--on-nonfinite skip to skip such steps, or lower --lr)", epoch + 1, step,
                 bad[0].str());
        opt.zero_grad();
        sched->step();
        step++;
        continue;
      }
      opt.step();
      sched->step();

      loss_sum += loss_value * b.targets.numel();
      correct += (int64_t)tb::sum(tb::eq(tb::argmax(logits.detach(), 1), b.targets)).item();
      seen += b.targets.numel();
      step++;
      progress.update(epoch + 1, o.epochs, step, loss_sum / seen, (double)correct / seen, seen);
    }
    progress.finish();
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                                   progress.start).count();
    auto [test_loss, test_acc] = evaluate(*net, test_loader);
    history.push_back({epoch + 1, loss_sum / std::max<int64_t>(seen, 1),
                       (double)correct / std::max<int64_t>(seen, 1), test_loss, test_acc, seconds,
                       seen / seconds, opt.lr()});
    std::printf("epoch %d: train loss %.4f acc %.2f%% | test loss %.4f acc %.2f%% | %.1f s, %.0f img/s\n",
                epoch + 1, history.back().train_loss, 100 * history.back().train_acc, test_loss,
                100 * test_acc, seconds, seen / seconds);

    // Checkpoint: one safetensors file, written atomically (temporary file, then rename).
    tb::StateDict all;
    for (const auto& [k, v] : net->state_dict()) all.insert("model." + k, v);
    for (const auto& [k, v] : opt.state_dict()) all.insert("optim." + k, v);
    for (const auto& [k, v] : sched->state_dict()) all.insert("sched." + k, v);
    tb::save_safetensors(ckpt_path.string(), all,
                         {{"epoch", std::to_string(epoch + 1)}, {"metrics_csv", metrics_csv(history)},
                          {"model", o.model}});
    write_file_atomic(out / "metrics.csv", metrics_csv(history));
    write_file_atomic(out / "metrics.json", metrics_json(history));
    if (o.stop_after > 0 && epoch + 1 >= o.stop_after && epoch + 1 < o.epochs) {
      std::printf("stopping after epoch %d as asked (--stop-after); continue with --resume\n",
                  epoch + 1);
      return 0;
    }
  }

  // The plot: matplotlib (Debian's python3-matplotlib) reads the JSON and draws the curves.
  fs::path plot = out / "metrics.png";
  std::string python = fs::exists("/usr/bin/python3") ? "/usr/bin/python3" : "python3";
  std::string cmd = fmt::format("{} {}/tools/plot_metrics.py '{}' '{}' >/dev/null 2>&1", python,
                                TB_SOURCE_DIR, (out / "metrics.json").string(), plot.string());
  bool plotted = std::system(cmd.c_str()) == 0;

  std::printf("final test accuracy: %.2f%%\n", 100 * history.back().test_acc);
  std::printf("checkpoint: %s\nmetrics: %s, %s\nplot: %s\n", ckpt_path.string().c_str(),
              (out / "metrics.csv").string().c_str(), (out / "metrics.json").string().c_str(),
              plotted ? plot.string().c_str() : "not drawn (python3-matplotlib missing?)");
  return 0;
}

int main(int argc, char** argv) {
  try {
    return run(parse_flags(argc, argv));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "train_fashion_mnist: %s\n", e.what());
    return 1;
  }
}
