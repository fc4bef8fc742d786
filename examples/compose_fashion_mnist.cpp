// compose_fashion_mnist — every compression method in one training loop: quantization-aware
// training, pruning, distillation and mixed precision at the same time (tb::quant, tb::prune,
// tb::distill, tb::amp).
//
// A tutorial; read it top to bottom. It starts from the main job's CNN trained in float32 (the
// baseline, trained here or loaded with --baseline) and fine-tunes copies of it for --epochs,
// each with the same schedule and data order, in one loop where each technique adds a few lines:
//   finetune  plain cross-entropy: the control (what the extra epochs alone give);
//   kd        the loss is tb::distill::DistillationLoss against the float32 baseline (teacher);
//   prune     --channels of every conv's output channels removed up front (structured, the model
//             really shrinks), then masks on the weights left, raised to --sparsity by AGP
//             (Zhu & Gupta's cubic schedule) during the fine-tune, baked in at the end;
//   qat       conv-BN-ReLU fused for QAT, fake-quant on weights and activations, converted to
//             int8 at the end (the integer kernels run the test set);
//   amp       the forward under bfloat16 autocast (--amp fp16: float16 with a GradScaler);
//   composed  all four at once.
// Writes OUT/results.json {"rows": [{"method", "accuracy", "size_bytes", "params",
// "sparsity", "seconds", "images_per_s"}], "baseline": {...}, "recipe": {...}} and
// OUT/results.png (tools/plot_compose.py: accuracy against model size), and each model under
// OUT/models/.
//
//   build/examples/compose_fashion_mnist --baseline runs/distill/teacher/checkpoint.safetensors
//   build/examples/compose_fashion_mnist --methods composed --epochs 1   # a quicker look
//   build/examples/compose_fashion_mnist --help
#include <tb/tb.h>
#include <tb/amp.h>
#include <tb/data.h>
#include <tb/distill.h>
#include <tb/experiment.h>
#include <tb/models.h>
#include <tb/prune.h>
#include <tb/quant.h>

#include <nlohmann/json.hpp>

#include <cstdio>
#include <memory>

namespace ex = tb::experiment;
namespace fs = std::filesystem;
namespace kd = tb::distill;
namespace prune = tb::prune;
namespace q = tb::quant;
using nlohmann::json;
using tb::nn::ModulePtr;

// ---- 0. Flags -----------------------------------------------------------------------------------

enum class Amp { bf16, fp16 };
static const std::vector<std::pair<std::string, Amp>> kAmp = {{"bf16", Amp::bf16},
                                                              {"fp16", Amp::fp16}};
static const std::vector<std::string> kMethodNames = {"finetune", "kd",  "prune",
                                                      "qat",      "amp", "composed"};

struct Options {
  std::string baseline;          // train_fashion_mnist checkpoint of the CNN; empty: train one
  int baseline_epochs = 3;
  int epochs = 3;                // fine-tune epochs of every method
  int64_t batch_size = 64;
  double lr = 0.01, baseline_lr = 0.05;
  std::vector<std::string> methods = kMethodNames;
  double channels = 0.5;         // prune: fraction of each conv's output channels removed
  double sparsity = 0.5;         // prune: AGP's final sparsity of the weights left
  double temperature = 2.0, alpha = 0.5; // kd: alpha on the hard (label) loss
  Amp amp = Amp::bf16;
  uint64_t seed = 0;
  std::string data, out = "runs/compose";
  int threads = 0, workers = 1;
  int64_t limit_train = 0, limit_test = 0, max_steps = 0;
};

static void add_flags(CLI::App& app, Options& o) {
  app.add_option("--baseline", o.baseline,
                 "float32 CNN checkpoint of train_fashion_mnist (--model cnn); empty: train it")
      ->check(CLI::ExistingFile);
  app.add_option("--baseline-epochs", o.baseline_epochs, "epochs to train the baseline")
      ->check(ex::at_least(1));
  app.add_option("--epochs", o.epochs, "fine-tune epochs of every method")
      ->check(ex::at_least(1));
  app.add_option("--batch-size", o.batch_size, "batch size")->check(ex::at_least<int64_t>(1));
  app.add_option("--lr", o.lr, "peak fine-tune learning rate")->check(ex::greater_than(0));
  app.add_option("--methods", o.methods, "methods, comma-separated")
      ->delimiter(',')
      ->check(ex::one_of(kMethodNames));
  app.add_option("--channels", o.channels,
                 "prune: fraction of each conv's output channels removed before fine-tuning")
      ->check(CLI::Range(0.0, 0.9));
  app.add_option("--sparsity", o.sparsity, "prune: final sparsity of the remaining weights (AGP)")
      ->check(CLI::Range(0.0, 0.99));
  app.add_option("--temperature", o.temperature, "kd: temperature T")->check(ex::greater_than(0));
  app.add_option("--alpha", o.alpha, "kd: weight of the hard (label) loss")
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--amp", o.amp, "amp: bf16 (autocast) or fp16 (autocast + GradScaler)")
      ->transform(ex::one_of(kAmp));
  app.add_option("--seed", o.seed, "seed of the initialisation and the data order");
  app.add_option("--data", o.data, "Fashion-MNIST folder (default $TB_FASHION_MNIST_DIR or "
                                   "/usr/share/datasets/fashion-mnist)");
  app.add_option("--out", o.out, "output folder");
  app.add_option("--threads", o.threads, "CPU threads, 0 for all cores")->check(ex::at_least(0));
  app.add_option("--workers", o.workers, "data-loading threads")->check(ex::at_least(0));
  app.add_option("--limit-train", o.limit_train, "train on the first N images, 0 for all")
      ->check(ex::at_least<int64_t>(0));
  app.add_option("--limit-test", o.limit_test, "evaluate on the first N test images, 0 for all")
      ->check(ex::at_least<int64_t>(0));
  app.add_option("--max-steps", o.max_steps, "at most N steps per epoch, 0 for all (tests)")
      ->check(ex::at_least<int64_t>(0));
}

// ---- 1. One fine-tuning loop; each technique adds its lines --------------------------------------

struct Recipe {
  bool kd = false, prune = false, qat = false, amp = false;
};

static Recipe recipe_of(const std::string& method) {
  if (method == "kd") return {.kd = true};
  if (method == "prune") return {.prune = true};
  if (method == "qat") return {.qat = true};
  if (method == "amp") return {.amp = true};
  if (method == "composed") return {.kd = true, .prune = true, .qat = true, .amp = true};
  return {}; // finetune
}

struct Data {
  tb::data::DataLoader* train;
  tb::data::DataLoader* test;
};

struct Row {
  std::string method;
  double accuracy = 0, sparsity = 0, seconds = 0, images_per_s = 0;
  int64_t size_bytes = 0, params = 0;
};

// Zeros among the conv / linear weights (after remove_all / convert: the deployed weights).
static double weight_sparsity(tb::nn::Module& net) {
  int64_t zeros = 0, total = 0;
  for (auto& [path, m] : net.named_modules()) {
    tb::Tensor w;
    if (auto* c = dynamic_cast<q::QuantizedConv2d*>(m)) w = c->int_weight();
    else if (auto* l = dynamic_cast<q::QuantizedLinear*>(m)) w = l->int_weight();
    else if (dynamic_cast<tb::nn::Conv2d*>(m) || dynamic_cast<tb::nn::Linear*>(m)) w = m->get("weight");
    if (!w.defined()) continue;
    zeros += (int64_t)tb::sum(tb::eq(w, 0.0).to(tb::kFloat64)).item();
    total += w.numel();
  }
  return total ? (double)zeros / (double)total : 0;
}

static Row compress(const std::string& method, const ModulePtr& baseline, const Data& d,
                    const Options& o, const fs::path& out) {
  const Recipe r = recipe_of(method);
  std::printf("== %s ==\n", method.c_str());
  ex::seed_everything(o.seed);
  ModulePtr net = baseline->clone(); // every method starts from the same float32 weights

  // Pruning, structured part: remove the least important output channels of every conv (L2 norm
  // of their filters) with the BN and the next layer's inputs: a smaller model from the start.
  if (r.prune && o.channels > 0) {
    prune::RemovalReport rep = prune::prune_channels(*net, {1, 1, 28, 28},
                                                     {.amount = o.channels});
    std::printf("  channels: parameters %lld -> %lld\n", (long long)rep.params_before,
                (long long)rep.params_after);
  }
  // QAT: the input is quantized (QuantWrapper), conv-BN-ReLU become QATConvBn2d, every weight
  // and activation gets a FakeQuantize (int8 per-channel weights, uint8 activations).
  if (r.qat) {
    net = std::make_shared<q::QuantWrapper>(net);
    net->train();
    q::fuse_modules_qat(*net, q::find_fusable_groups(*net));
    q::prepare_qat(*net, {.global = q::default_qat_qconfig()});
  }
  // Pruning, unstructured part: masks on every conv / linear weight (the QAT ones too), raised by
  // AGP from 0 to --sparsity over the first 2/3 of the steps, 10 pruning events.
  int64_t per_epoch = o.max_steps > 0 ? std::min<int64_t>(o.max_steps, d.train->size())
                                      : d.train->size();
  int64_t total = per_epoch * o.epochs;
  std::unique_ptr<prune::AGP> agp;
  if (r.prune && o.sparsity > 0)
    agp = std::make_unique<prune::AGP>(
        *net, prune::prunable_weights(*net),
        prune::AGPOptions{.initial_sparsity = 0, .final_sparsity = o.sparsity, .start_step = 0,
                          .frequency = std::max<int64_t>(1, 2 * total / 30), .num_steps = 10});
  // Distillation: the float32 baseline is the teacher (eval mode, no_grad).
  kd::Teacher teacher(baseline);
  kd::DistillationLoss kd_loss({.temperature = o.temperature, .alpha = o.alpha,
                                .alpha_weights = kd::AlphaWeights::hard_loss});
  // Mixed precision: bfloat16 needs no loss scaling; float16 does (the scaler is a no-op when
  // disabled, so the loop below is the same for every method).
  tb::DType amp_dtype = o.amp == Amp::fp16 ? tb::kFloat16 : tb::kBFloat16;
  tb::amp::GradScaler scaler({.enabled = r.amp && o.amp == Amp::fp16});

  tb::optim::SGD opt(net->parameters(), {.lr = o.lr, .momentum = 0.9, .weight_decay = 5e-4});
  auto sched = tb::optim::warmup_cosine(opt, std::max<int64_t>(1, per_epoch / 10), total);
  net->train();
  auto start = std::chrono::steady_clock::now();
  int64_t step = 0;
  for (int epoch = 0; epoch < o.epochs; epoch++) {
    d.train->set_epoch(epoch);
    ex::Progress progress({.total = per_epoch,
                           .label = fmt::format("  {} {}/{}", method, epoch + 1, o.epochs)});
    ex::Meter meter;
    int64_t i = 0;
    for (const auto& b : *d.train) {
      if (i == per_epoch) break;
      // QAT: BN statistics freeze half-way, the observers at 80% (the qparams settle).
      if (r.qat && step == total / 2) net->apply(q::freeze_bn_stats);
      if (r.qat && step == total * 4 / 5) net->apply(q::disable_observer);
      if (agp) agp->step(step);
      tb::Tensor teacher_logits = r.kd ? teacher.logits(b.inputs) : tb::Tensor();
      tb::Tensor logits, loss;
      {
        tb::amp::autocast ac({.dtype = amp_dtype, .enabled = r.amp});
        logits = (*net)(b.inputs);
        loss = r.kd ? kd_loss(logits, teacher_logits, b.targets)
                    : tb::cross_entropy(logits, b.targets);
      }
      opt.zero_grad();
      scaler.scale(loss).backward();
      scaler.step(opt);
      scaler.update();
      sched->step();
      meter.add(loss.item() * b.targets.numel(), logits, b.targets);
      progress.update(++i, meter);
      step++;
    }
    progress.finish();
  }
  Row row{.method = method};
  row.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  row.images_per_s = (double)(total * o.batch_size) / std::max(row.seconds, 1e-9);

  // Deploy: masks baked into the weights, the QAT model converted to int8.
  if (r.prune) prune::remove_all(*net);
  net->eval();
  fs::path file = out / "models" / (method + ".safetensors");
  fs::create_directories(file.parent_path());
  if (r.qat) {
    q::convert(*net);
    q::save(*net, file.string());
  } else {
    tb::nn::save(*net, file.string());
  }
  row.accuracy = ex::evaluate(*net, *d.test).accuracy;
  row.size_bytes = (int64_t)fs::file_size(file);
  row.sparsity = weight_sparsity(*net);
  // Parameters: the float ones, plus the weights and biases converted layers keep as buffers.
  row.params = net->num_parameters();
  for (auto& [path, m] : net->named_modules())
    if (dynamic_cast<q::QuantizedConv2d*>(m) || dynamic_cast<q::QuantizedLinear*>(m))
      for (const char* name : {"weight", "bias"})
        if (m->has_buffer(name) && !m->has_parameter(name)) row.params += m->get(name).numel();
  std::printf("  %s: %.2f%%, %lld B, sparsity %.1f%%, %.0f s\n", method.c_str(),
              100 * row.accuracy, (long long)row.size_bytes, 100 * row.sparsity, row.seconds);
  return row;
}

// ---- 2. The baseline and the runs -----------------------------------------------------------------

static ModulePtr make_cnn() { return tb::models::cnn({.num_classes = 10, .in_channels = 1}); }

// The float32 CNN: loaded from --baseline, or trained here (ex::fit: the main job's recipe)
// and saved as OUT/baseline/checkpoint.safetensors.
static ModulePtr baseline_model(const Options& o, const Data& d, const fs::path& out) {
  ModulePtr net = make_cnn();
  if (!o.baseline.empty()) {
    ex::load_checkpoint(o.baseline, {.model = *net}, {{"model", "cnn"}});
    std::printf("baseline: loaded from %s\n", o.baseline.c_str());
    return net;
  }
  ex::fit(*net, *d.train, {.epochs = o.baseline_epochs, .lr = o.baseline_lr,
                           .max_steps = o.max_steps, .label = "baseline"});
  fs::create_directories(out / "baseline");
  ex::save_checkpoint(out / "baseline" / "checkpoint.safetensors", {.model = *net},
                      {.epoch = o.baseline_epochs, .metadata = {{"model", "cnn"}}});
  return net;
}

static json row_json(const Row& r) {
  return {{"method", r.method},       {"accuracy", r.accuracy}, {"size_bytes", r.size_bytes},
          {"params", r.params},       {"sparsity", r.sparsity}, {"seconds", r.seconds},
          {"images_per_s", r.images_per_s}};
}

static int run(const Options& o) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  if (o.threads > 0) tb::set_num_threads(o.threads);
  ex::seed_everything(o.seed);
  fs::path out = o.out;
  ex::prepare_output_dir(out);
  auto [root, train_set, test_set, transform] = ex::load_fashion_mnist(
      {.root = o.data, .limit_train = o.limit_train, .limit_test = o.limit_test,
       .batch_size = o.batch_size});
  tb::data::DataLoader train_loader(train_set, {.batch_size = o.batch_size, .shuffle = true,
                                                .seed = o.seed, .num_workers = o.workers,
                                                .transform = transform});
  tb::data::DataLoader test_loader(test_set, {.batch_size = 500, .num_workers = o.workers,
                                              .transform = transform});
  Data d{&train_loader, &test_loader};

  ModulePtr baseline = baseline_model(o, d, out);
  baseline->eval();
  fs::create_directories(out / "models");
  tb::nn::save(*baseline, (out / "models" / "fp32.safetensors").string());
  Row base{.method = "fp32", .accuracy = ex::evaluate(*baseline, test_loader).accuracy,
           .sparsity = weight_sparsity(*baseline),
           .size_bytes = (int64_t)fs::file_size(out / "models" / "fp32.safetensors"),
           .params = baseline->num_parameters()};
  std::printf("baseline: %.2f%%, %lld B\n", 100 * base.accuracy, (long long)base.size_bytes);

  json results = {{"baseline", row_json(base)},
                  {"recipe", {{"epochs", o.epochs}, {"lr", o.lr}, {"batch_size", o.batch_size},
                              {"channels", o.channels}, {"target_sparsity", o.sparsity},
                              {"temperature", o.temperature}, {"alpha", o.alpha},
                              {"alpha_weights", "hard_loss"},
                              {"amp", o.amp == Amp::fp16 ? "fp16" : "bf16"},
                              {"seed", o.seed}}},
                  {"rows", json::array({row_json(base)})}};
  for (const std::string& method : o.methods) {
    results["rows"].push_back(row_json(compress(method, baseline, d, o, out)));
    ex::write_file_atomic(out / "results.json", results.dump(2) + "\n");
  }
  ex::write_file_atomic(out / "results.json", results.dump(2) + "\n");

  std::printf("\n%-9s %9s %11s %9s %9s %9s\n", "method", "accuracy", "size (B)", "vs fp32",
              "sparsity", "seconds");
  for (const auto& r : results["rows"])
    std::printf("%-9s %8.2f%% %11lld %8.1f%% %8.1f%% %9.1f\n",
                r["method"].get<std::string>().c_str(), 100 * r["accuracy"].get<double>(),
                (long long)r["size_bytes"].get<int64_t>(),
                100.0 * r["size_bytes"].get<double>() / (double)base.size_bytes,
                100 * r["sparsity"].get<double>(), r["seconds"].get<double>());
  fs::path plot = out / "results.png";
  bool plotted = ex::plot_metrics(TB_SOURCE_DIR "/tools/plot_compose.py", out / "results.json",
                                  plot);
  std::printf("results: %s\nplot: %s\n", (out / "results.json").c_str(),
              plotted ? plot.c_str() : "not drawn (python3-matplotlib missing?)");
  return 0;
}

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"Compresses the Fashion-MNIST CNN with QAT, pruning, distillation and mixed "
               "precision, alone and all at once.",
               "compose_fashion_mnist"};
  add_flags(app, o);
  if (auto exit_code = ex::parse_flags(app, argc, argv)) return *exit_code;
  try {
    return run(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "compose_fashion_mnist: %s\n", e.what());
    return 1;
  }
}
