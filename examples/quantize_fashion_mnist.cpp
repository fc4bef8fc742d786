// quantize_fashion_mnist — quantizing Fashion-MNIST classifiers to 8 and 4 bits, end to end.
//
// A tutorial: read it top to bottom. For each model (the main job's CNN, and MobileNetV2 in its
// small-input, 1-channel variant, whose depthwise convolutions make quantization hard) it
//   1. trains a float32 baseline (or reuses OUT/<model>_fp32.safetensors with --reuse);
//   2. post-training quantization (PTQ): weights int8 per tensor or per channel, activations
//      uint8 calibrated with MinMax, Histogram (PyTorch's L2 search), Percentile (99.99%) or
//      Entropy (TensorRT's KL) observers; and per-channel 4-bit weights with 8-bit activations;
//   3. quantization-aware training (QAT) from the float model at 8 and 4 bits: a short fine-tune
//      with fake-quant in the loop, BN statistics frozen half-way, observers frozen at 80%;
//      and LSQ (learned step sizes) at 4 bits.
// Every run is evaluated on the 10,000 test images and saved as safetensors (its size is the
// model's size: int8 weights plus qparams); OUT/results.json holds one row per run, the table
// is printed, and tools/plot_quantization.py draws accuracy against size (OUT/results.png).
//
//   build/examples/quantize_fashion_mnist --out runs/quantize
//   build/examples/quantize_fashion_mnist --models cnn --epochs 1 --limit-train 512 ...   (quick)
//   build/examples/quantize_fashion_mnist --models cnn --reuse --methods ptq   (PTQ rows only)
#include <tb/tb.h>
#include <tb/data.h>
#include <tb/experiment.h>
#include <tb/models.h>
#include <tb/quant.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <sstream>

namespace ex = tb::experiment;
namespace fs = std::filesystem;
namespace q = tb::quant;
using tb::nn::ModulePtr;

// ---- 0. Flags ------------------------------------------------------------------------------------

struct Options {
  std::string models = "cnn,mobilenet_v2";
  std::string methods = "ptq,qat,lsq"; // after the fp32 baseline, which always runs
  int epochs = 3;            // float baseline
  int qat_epochs = 1;        // QAT / LSQ fine-tune
  int64_t batch_size = 64;
  double lr = 0.05, qat_lr = 0.005;
  int64_t calib_batches = 32; // calibration images = calib_batches * batch_size
  uint64_t seed = 0;
  std::string data, out = "runs/quantize";
  int threads = 0, workers = 1;
  bool reuse = false;
  int64_t limit_train = 0, limit_test = 0, max_steps = 0;
};

static void add_flags(CLI::App& app, Options& o) {
  app.add_option("--models", o.models, "comma-separated: cnn, mobilenet_v2");
  app.add_option("--methods", o.methods, "comma-separated: ptq, qat, lsq (the fp32 baseline "
                 "always runs)");
  app.add_option("--epochs", o.epochs, "float baseline epochs")->check(ex::at_least(1));
  app.add_option("--qat-epochs", o.qat_epochs, "QAT / LSQ fine-tune epochs")
      ->check(ex::at_least(1));
  app.add_option("--batch-size", o.batch_size, "batch size")->check(ex::at_least<int64_t>(1));
  app.add_option("--lr", o.lr, "peak learning rate of the baseline")->check(ex::greater_than(0));
  app.add_option("--qat-lr", o.qat_lr, "peak learning rate of QAT")->check(ex::greater_than(0));
  app.add_option("--calib-batches", o.calib_batches, "calibration batches for PTQ")
      ->check(ex::at_least<int64_t>(1));
  app.add_option("--seed", o.seed, "seed")->check(ex::at_least<uint64_t>(0));
  app.add_option("--data", o.data, "Fashion-MNIST folder")->type_name("DIR");
  app.add_option("--out", o.out, "output folder")->type_name("DIR");
  app.add_option("--threads", o.threads, "CPU threads, 0 for all cores")->check(ex::at_least(0));
  app.add_option("--workers", o.workers, "data-loading threads")->check(ex::at_least(0));
  app.add_flag("--reuse", o.reuse, "reuse OUT/<model>_fp32.safetensors instead of training");
  app.add_option("--limit-train", o.limit_train, "first N training images, 0 for all")
      ->check(ex::at_least<int64_t>(0));
  app.add_option("--limit-test", o.limit_test, "first N test images, 0 for all")
      ->check(ex::at_least<int64_t>(0));
  app.add_option("--max-steps", o.max_steps, "at most N steps per epoch, 0 for all (tests)")
      ->check(ex::at_least<int64_t>(0));
}

// ---- 1. Models -----------------------------------------------------------------------------------

// The main job's CNN: conv-bn-relu-pool twice, then two Linear layers (28x28 -> 10 classes).
static ModulePtr make_model(const std::string& name) {
  if (name == "mobilenet_v2")
    return tb::models::create(name, {.num_classes = 10, .small_input = true, .in_channels = 1});
  TB_CHECK(name == "cnn", "--models: unknown model '{}' (accepts cnn, mobilenet_v2)", name);
  return tb::models::cnn({.num_classes = 10, .in_channels = 1}); // the main job's CNN
}

// ---- 2. Training (the float baseline and the QAT fine-tunes) ------------------------------------

// Training is ex::fit: SGD with momentum 0.9 and weight decay 5e-4, linear warm-up over half an
// epoch then cosine decay, cross-entropy. QAT passes a before_step callback that freezes BN
// statistics and observers at fixed fractions of the run.

// ---- 3. Results ------------------------------------------------------------------------------------

struct Row {
  std::string model, method;
  int weight_bits = 32, act_bits = 32;
  std::optional<std::string> granularity, calibration;
  double accuracy = 0;
  int64_t size_bytes = 0;
  double seconds = 0;
};

static nlohmann::json to_json(const std::vector<Row>& rows) {
  nlohmann::json out = {{"rows", nlohmann::json::array()}};
  auto opt = [](const std::optional<std::string>& s) {
    return s ? nlohmann::json(*s) : nlohmann::json(nullptr);
  };
  for (const Row& r : rows)
    out["rows"].push_back({{"model", r.model}, {"method", r.method},
                           {"weight_bits", r.weight_bits}, {"act_bits", r.act_bits},
                           {"granularity", opt(r.granularity)}, {"calibration", opt(r.calibration)},
                           {"accuracy", r.accuracy}, {"size_bytes", r.size_bytes},
                           {"seconds", r.seconds}});
  return out;
}

static void print_table(const std::vector<Row>& rows) {
  std::printf("\n%-13s %-5s %3s %3s %-12s %-11s %9s %11s %9s\n", "model", "method", "W", "A",
              "granularity", "calibration", "accuracy", "size (B)", "seconds");
  for (const Row& r : rows)
    std::printf("%-13s %-5s %3d %3d %-12s %-11s %8.2f%% %11lld %9.2f\n", r.model.c_str(),
                r.method.c_str(), r.weight_bits, r.act_bits,
                r.granularity.value_or("-").c_str(), r.calibration.value_or("-").c_str(),
                100 * r.accuracy, (long long)r.size_bytes, r.seconds);
}

// ---- 4. The runs ---------------------------------------------------------------------------------

// Calibration name -> activation observer.
static const std::vector<std::pair<std::string, q::ObserverKind>> kCalibrations = {
    {"minmax", q::ObserverKind::MinMax}, {"histogram", q::ObserverKind::Histogram},
    {"percentile", q::ObserverKind::Percentile}, {"entropy", q::ObserverKind::Entropy}};

// PTQ config: int8 (or `wbits`) symmetric weights per tensor or per channel, uint8 activations.
static q::QConfigMapping ptq_config(bool per_channel, q::ObserverKind act, int wbits) {
  q::QConfigMapping cfg;
  cfg.global = q::default_qconfig(wbits, 8);
  cfg.global.activation.observer = act;
  if (!per_channel) {
    cfg.global.weight.observer = q::ObserverKind::MinMax;
    cfg.global.weight.spec.qscheme = q::QScheme::PerTensorSymmetric;
  }
  return cfg;
}

static int64_t size_of(const fs::path& p) { return (int64_t)fs::file_size(p); }

static int run(const Options& o) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  if (o.threads > 0) tb::set_num_threads(o.threads);
  ex::seed_everything(o.seed);
  fs::path out = o.out;
  ex::prepare_output_dir(out);

  // Data, as in train_fashion_mnist: uint8 images normalised with the training set's statistics.
  auto [root, train_set, test_set, transform] = ex::load_fashion_mnist(
      {.root = o.data, .limit_train = o.limit_train, .limit_test = o.limit_test,
       .batch_size = o.batch_size});
  tb::data::DataLoader train_loader(train_set, {.batch_size = o.batch_size, .shuffle = true,
                                                .seed = o.seed, .num_workers = o.workers,
                                                .transform = transform});
  // Calibration: the first batches of the training set in a fixed order.
  tb::data::DataLoader calib_loader(train_set, {.batch_size = o.batch_size, .shuffle = false,
                                                .num_workers = o.workers, .transform = transform});
  tb::data::DataLoader test_loader(test_set, {.batch_size = 500, .num_workers = o.workers,
                                              .transform = transform});

  std::vector<Row> rows;
  auto save_results = [&] {
    ex::write_file_atomic(out / "results.json", to_json(rows).dump(2) + "\n");
  };
  std::stringstream models_flag(o.models);
  for (std::string name; std::getline(models_flag, name, ',');) {
    std::printf("== %s ==\n", name.c_str());
    // 1. Float baseline.
    ModulePtr fp32 = make_model(name);
    fs::path fp32_path = out / (name + "_fp32.safetensors");
    double seconds = 0;
    if (o.reuse && fs::exists(fp32_path)) {
      tb::nn::load(*fp32, fp32_path);
      std::printf("reusing %s\n", fp32_path.c_str());
    } else {
      std::printf("training the float baseline (%d epochs)\n", o.epochs);
      seconds = ex::fit(*fp32, train_loader, {.epochs = o.epochs, .lr = o.lr,
                                              .max_steps = o.max_steps, .label = "  epoch"})
                    .seconds;
      tb::nn::save(*fp32, fp32_path);
    }
    fp32->eval();
    rows.push_back({name, "fp32", 32, 32, {}, {}, ex::evaluate(*fp32, test_loader).accuracy,
                    size_of(fp32_path), seconds});
    std::printf("fp32: %.2f%%\n", 100 * rows.back().accuracy);
    save_results();

    // 2. Post-training quantization: a fresh copy of the float model each time, wrapped so its
    // input is quantized, conv-BN-ReLU folded (eval), observers inserted, calibrated, converted.
    auto ptq = [&](bool per_channel, const std::pair<std::string, q::ObserverKind>& calib,
                   int wbits) {
      auto model = std::make_shared<q::QuantWrapper>(fp32->clone());
      model->eval();
      auto start = std::chrono::steady_clock::now();
      q::fuse_modules(*model, q::find_fusable_groups(*model));
      q::quantize(*model, ptq_config(per_channel, calib.second, wbits), calib_loader,
                  o.calib_batches);
      double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      fs::path path = out / fmt::format("{}_ptq_w{}_{}_{}.safetensors", name, wbits,
                                        per_channel ? "per_channel" : "per_tensor", calib.first);
      q::save(*model, path.string());
      rows.push_back({name, "ptq", wbits, 8, per_channel ? "per_channel" : "per_tensor",
                      calib.first, ex::evaluate(*model, test_loader).accuracy, size_of(path),
                      s});
      std::printf("ptq w%d a8 %-11s %-10s: %.2f%% (%.2f s)\n", wbits,
                  per_channel ? "per_channel" : "per_tensor", calib.first.c_str(),
                  100 * rows.back().accuracy, s);
      save_results();
    };
    auto wanted = [&](const std::string& m) { return ("," + o.methods + ",").find("," + m + ",") !=
                                                     std::string::npos; };
    if (wanted("ptq")) {
      for (const auto& calib : kCalibrations)
        for (bool per_channel : {false, true}) ptq(per_channel, calib, 8);
      ptq(true, kCalibrations[1], 4);
    }

    // 3. QAT from the float model: fake-quant in the forward pass, straight-through gradients.
    // BN keeps using batch statistics until half-way (then frozen), observers freeze at 80%.
    auto qat = [&](const std::string& method, int wbits) {
      auto model = std::make_shared<q::QuantWrapper>(fp32->clone());
      model->train();
      q::fuse_modules_qat(*model, q::find_fusable_groups(*model));
      q::QConfigMapping cfg;
      cfg.global = q::default_qat_qconfig(wbits, 8);
      if (method == "lsq") cfg.global.weight.fake_quant = q::FakeQuantKind::LSQ;
      q::prepare_qat(*model, cfg);
      std::printf("%s w%d a8: fine-tuning %d epoch(s)\n", method.c_str(), wbits, o.qat_epochs);
      double s = ex::fit(*model, train_loader,
                         {.epochs = o.qat_epochs, .lr = o.qat_lr, .max_steps = o.max_steps,
                          .label = "  epoch", .before_step = [&](int64_t step, int64_t total) {
                            if (step == total / 2) model->apply(q::freeze_bn_stats);
                            if (step == total * 4 / 5) model->apply(q::disable_observer);
                          }})
                     .seconds;
      model->eval();
      q::convert(*model);
      fs::path path = out / fmt::format("{}_{}_w{}.safetensors", name, method, wbits);
      q::save(*model, path.string());
      rows.push_back({name, method, wbits, 8, "per_channel", {},
                      ex::evaluate(*model, test_loader).accuracy, size_of(path), s});
      std::printf("%s w%d a8: %.2f%% (%.1f s)\n", method.c_str(), wbits,
                  100 * rows.back().accuracy, s);
      save_results();
    };
    if (wanted("qat")) qat("qat", 8), qat("qat", 4);
    if (wanted("lsq")) qat("lsq", 4);
  }

  print_table(rows);
  fs::path plot = out / "results.png";
  bool plotted = ex::plot_metrics(TB_SOURCE_DIR "/tools/plot_quantization.py",
                                  out / "results.json", plot);
  std::printf("results: %s\nplot: %s\n", (out / "results.json").c_str(),
              plotted ? plot.c_str() : "not drawn (python3-matplotlib missing?)");
  return 0;
}

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"Post-training quantization and QAT of Fashion-MNIST models.",
               "quantize_fashion_mnist"};
  add_flags(app, o);
  if (auto exit_code = ex::parse_flags(app, argc, argv)) return *exit_code;
  try {
    return run(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "quantize_fashion_mnist: %s\n", e.what());
    return 1;
  }
}
