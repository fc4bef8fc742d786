// prune_fashion_mnist — pruning that ends in a smaller, faster model, step by step (tb::prune).
//
// A tutorial; read it top to bottom. It trains (or reuses) FP32 baselines on Fashion-MNIST and
// prunes copies of them:
//   1. the CNN: global L1 unstructured 50/80/90% of its conv/linear weights (+ fine-tuning, then
//      + the sparse CSR kernel where it measures faster), Ln-structured filter pruning 30/50%
//      with the zeroed channels really removed (+ fine-tuning), and AGP (gradual, to 90%);
//   2. MobileNetV2 (small input, 1 channel): 50% of the channels of every prunable group removed
//      (counts rounded to multiples of 8), + fine-tuning;
//   3. the lottery ticket on LeNet-300-100: iterative magnitude pruning with rewinding to the
//      initial weights, against the random re-initialisation control.
// Also: OUT/sensitivity.{json,png} (each CNN layer pruned alone), OUT/sparsity_<s>.{json,png}
// (zeros per layer after global pruning), OUT/sparse_layers.json (dense vs sparse kernel times).
// Every model state becomes one row of OUT/results.json {"rows": [...]} with the keys model,
// method, sparsity, accuracy, params, size_bytes, images_per_s_b64, latency_b1_ms, and
// tools/plot_pruning.py draws OUT/pruning.png from it (accuracy against sparsity and speed).
//
//   build/examples/prune_fashion_mnist --out runs/prune          # everything (long on 2 cores)
//   build/examples/prune_fashion_mnist --models cnn --epochs 1   # a quicker look
//   build/examples/prune_fashion_mnist --help
#include <tb/tb.h>
#include <tb/data.h>
#include <tb/experiment.h>
#include <tb/models.h>
#include <tb/prune.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <sstream>

namespace ex = tb::experiment;
namespace fs = std::filesystem;
namespace prune = tb::prune;
using tb::nn::ModulePtr;

// ---- 0. Flags ------------------------------------------------------------------------------------

struct Options {
  int epochs = 3;                  // baseline training
  int finetune_epochs = 1;         // after each pruning
  int64_t batch_size = 64;
  double lr = 0.05, finetune_lr = 0.01;
  uint64_t seed = 0;
  std::string data;                // empty: $TB_FASHION_MNIST_DIR or the Debian package's folder
  std::string out = "runs/prune";
  std::string models = "cnn,mobilenet_v2,lenet";
  int threads = 0, workers = 1;
  int64_t limit_train = 0, limit_test = 0;
  int64_t max_steps = 0;           // per epoch, 0: all (quick tests)
  int bench_runs = 20;             // timing runs per speed figure (median)
  int lottery_rounds = 8;          // 0.8^8 = 17% of the weights left
  int lottery_epochs = 2;
  bool retrain = false;            // ignore saved baselines in OUT
};

static void add_flags(CLI::App& app, Options& o) {
  app.add_option("--epochs", o.epochs, "baseline training epochs")->check(ex::at_least(1));
  app.add_option("--finetune-epochs", o.finetune_epochs, "fine-tuning epochs after pruning")
      ->check(ex::at_least(0));
  app.add_option("--batch-size", o.batch_size, "batch size")->check(ex::at_least<int64_t>(1));
  app.add_option("--lr", o.lr, "baseline peak learning rate")->check(ex::greater_than(0));
  app.add_option("--finetune-lr", o.finetune_lr, "fine-tuning learning rate")
      ->check(ex::greater_than(0));
  app.add_option("--seed", o.seed, "seed")->check(ex::at_least<uint64_t>(0));
  app.add_option("--data", o.data, "Fashion-MNIST folder")->type_name("DIR");
  app.add_option("--out", o.out, "output folder")->type_name("DIR");
  app.add_option("--models", o.models, "comma-separated: cnn, mobilenet_v2, lenet");
  app.add_option("--threads", o.threads, "CPU threads, 0 for all cores")->check(ex::at_least(0));
  app.add_option("--workers", o.workers, "data-loading threads")->check(ex::at_least(0));
  app.add_option("--limit-train", o.limit_train, "first N training images, 0 for all")
      ->check(ex::at_least<int64_t>(0));
  app.add_option("--limit-test", o.limit_test, "first N test images, 0 for all")
      ->check(ex::at_least<int64_t>(0));
  app.add_option("--max-steps", o.max_steps, "at most N steps an epoch, 0 for all")
      ->check(ex::at_least<int64_t>(0));
  app.add_option("--bench-runs", o.bench_runs, "timing runs per speed figure")
      ->check(ex::at_least(1));
  app.add_option("--lottery-rounds", o.lottery_rounds, "lottery ticket: pruning rounds of 20%")
      ->check(ex::at_least(1));
  app.add_option("--lottery-epochs", o.lottery_epochs, "lottery ticket: epochs per round")
      ->check(ex::at_least(1));
  app.add_flag("--retrain", o.retrain, "train the baselines even if OUT holds them");
}

// ---- 1. Models -----------------------------------------------------------------------------------

// LeNet-300-100, the lottery ticket paper's MLP.
static ModulePtr make_lenet() {
  using namespace tb::nn;
  return std::make_shared<Sequential>(std::initializer_list<ModulePtr>{
      std::make_shared<Flatten>(), std::make_shared<Linear>(784, 300), std::make_shared<ReLU>(),
      std::make_shared<Linear>(300, 100), std::make_shared<ReLU>(),
      std::make_shared<Linear>(100, 10)});
}

static ModulePtr make_model(const std::string& name) {
  if (name == "cnn") return tb::models::cnn({.num_classes = 10, .in_channels = 1});
  if (name == "lenet_300_100") return make_lenet();
  return tb::models::create(name, {.num_classes = 10, .small_input = true, .in_channels = 1});
}

// ---- 2. Training and measuring -------------------------------------------------------------------

struct Data {
  tb::data::DataLoader* train;
  tb::data::DataLoader* test;
};

// SGD with momentum (0.9, weight decay 5e-4); cosine from lr to 0 over the epochs, no warm-up
// (ex::fit). `after_step(t)` runs after every optimizer step (AGP prunes there). Pruned weights
// stay pruned: the optimizer updates weight_orig and the mask hides what it does to pruned
// entries.
static void train(tb::nn::Module& net, const Data& d, int epochs, double lr, const Options& o,
                  const std::string& label,
                  const std::function<void(int64_t)>& after_step = nullptr) {
  ex::fit(net, *d.train, {.epochs = epochs, .lr = lr, .warmup_steps = 0,
                          .max_steps = o.max_steps, .label = label, .after_step = after_step});
  net.eval();
}

static double median_ms(tb::nn::Module& net, const tb::Tensor& x, int runs) {
  tb::no_grad g;
  for (int i = 0; i < 3; i++) net(x);
  std::vector<double> t;
  for (int i = 0; i < runs; i++) {
    auto t0 = std::chrono::steady_clock::now();
    net(x);
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                    .count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Conv2d / Linear weight elements: the denominator of "sparsity".
static std::pair<int64_t, int64_t> weight_counts(tb::nn::Module& net) {
  auto r = prune::sparsity_report(net);
  int64_t numel = r.numel, zeros = r.zeros;
  for (auto& [path, m] : net.named_modules()) // sparse layers keep their weight as a parameter
    if (dynamic_cast<prune::SparseLinear*>(m) || dynamic_cast<prune::SparseConv2d*>(m)) {
      tb::Tensor w = m->get("weight");
      numel += w.numel();
      for (double v : w.to_vector()) zeros += v == 0;
    }
  return {numel, zeros};
}

struct Row {
  std::string model, method;
  double sparsity = 0, accuracy = 0;
  int64_t params = 0, size_bytes = 0;
  double images_per_s_b64 = 0, latency_b1_ms = 0;
};

// Accuracy, size of the saved state_dict, speed at batch 64 and 1 (eval, no_grad, median).
static Row measure(const std::string& model, const std::string& method, tb::nn::Module& net,
                   int64_t base_weights, const Data& d, const Options& o, const fs::path& out) {
  Row r{.model = model, .method = method};
  net.eval();
  r.accuracy = ex::evaluate(net, *d.test).accuracy;
  auto [numel, zeros] = weight_counts(net);
  r.sparsity = (double)(base_weights - numel + zeros) / (double)base_weights;
  r.params = net.num_parameters();
  std::string file = model + "_" + method + "_" + std::to_string((int)std::lround(100 * r.sparsity));
  for (char& c : file)
    if (!std::isalnum((unsigned char)c) && c != '_') c = '_';
  fs::path ckpt = out / "checkpoints" / (file + ".safetensors");
  fs::create_directories(ckpt.parent_path());
  tb::nn::save(net, ckpt.string());
  r.size_bytes = (int64_t)fs::file_size(ckpt);
  r.images_per_s_b64 = 64.0 / (median_ms(net, tb::randn({64, 1, 28, 28}), o.bench_runs) / 1000.0);
  r.latency_b1_ms = median_ms(net, tb::randn({1, 1, 28, 28}), o.bench_runs);
  std::printf("%-28s %-20s sparsity %5.1f%%  acc %6.2f%%  params %8lld  %8lld B  %8.0f img/s  "
              "%.3f ms\n", model.c_str(), method.c_str(), 100 * r.sparsity, 100 * r.accuracy,
              (long long)r.params, (long long)r.size_bytes, r.images_per_s_b64, r.latency_b1_ms);
  return r;
}

static void save_results(const std::vector<Row>& rows, const fs::path& out) {
  std::string s = "{\"rows\": [";
  for (size_t i = 0; i < rows.size(); i++) {
    const Row& r = rows[i];
    s += fmt::format("{}\n  {{\"model\": \"{}\", \"method\": \"{}\", \"sparsity\": {:.6f}, "
                     "\"accuracy\": {:.6f}, \"params\": {}, \"size_bytes\": {}, "
                     "\"images_per_s_b64\": {:.1f}, \"latency_b1_ms\": {:.4f}}}",
                     i ? "," : "", r.model, r.method, r.sparsity, r.accuracy, r.params,
                     r.size_bytes, r.images_per_s_b64, r.latency_b1_ms);
  }
  ex::write_file_atomic(out / "results.json", s + "\n]}\n");
}

// A trained baseline: loaded from OUT/baseline_<name>.safetensors, or trained and saved there.
static ModulePtr baseline(const std::string& name, const Data& d, const Options& o,
                          const fs::path& out) {
  ModulePtr net = make_model(name);
  fs::path path = out / ("baseline_" + name + ".safetensors");
  if (!o.retrain && fs::exists(path)) {
    tb::nn::load(*net, path.string());
    std::printf("%s: baseline loaded from %s\n", name.c_str(), path.c_str());
  } else {
    train(*net, d, o.epochs, o.lr, o, name);
    tb::nn::save(*net, path.string());
  }
  net->eval();
  return net;
}

// ---- 3. The experiments --------------------------------------------------------------------------

static void cnn_experiments(const Data& d, const Options& o, const fs::path& out,
                            std::vector<Row>& rows) {
  ModulePtr base = baseline("cnn", d, o, out);
  const int64_t base_weights = weight_counts(*base).first;
  auto record = [&](const std::string& model, const std::string& method, tb::nn::Module& net) {
    rows.push_back(measure(model, method, net, base_weights, d, o, out));
    save_results(rows, out);
  };
  record("cnn", "fp32", *base);

  // Sensitivity: each layer pruned alone (L1) at several sparsities, test accuracy of each; the
  // layers that lose little can be pruned harder. OUT/sensitivity.json and .png.
  auto sens = prune::sensitivity(*base, [&](tb::nn::Module& m) {
    return ex::evaluate(m, *d.test).accuracy;
  }, {.sparsities = {0.5, 0.8, 0.9, 0.95, 0.99}});
  ex::write_file_atomic(out / "sensitivity.json", prune::sensitivity_json(sens));
  ex::plot_metrics(TB_SOURCE_DIR "/tools/plot_pruning.py", out / "sensitivity.json",
                   out / "sensitivity.png");
  for (auto& r : sens)
    std::printf("sensitivity %-9s alone at %4.0f%%: accuracy %.2f%%\n", r.name.c_str(),
                100 * r.sparsity, 100 * r.metric);

  // (a) Global L1 unstructured: one magnitude threshold over all conv/linear weights. The masks
  // stay during fine-tuning (pruned weights stay zero), remove_all() bakes them in, and
  // sparsify() swaps in the CSR kernel where it is faster on the layer's real shape.
  std::string layers_json = "{\"layers\": [";
  for (double s : {0.5, 0.8, 0.9}) {
    ModulePtr net = base->clone();
    prune::global_unstructured(*net, prune::prunable_weights(*net), {.amount = s});
    train(*net, d, o.finetune_epochs, o.finetune_lr, o, fmt::format("global {:.0f}%", 100 * s));
    prune::remove_all(*net);
    record("cnn", "global_unstructured", *net);
    // Where the global threshold put the zeros: OUT/sparsity_<s>.json and .png.
    prune::SparsityReport rep = prune::sparsity_report(*net);
    std::printf("%s", rep.str().c_str());
    std::string name = fmt::format("sparsity_{:.0f}", 100 * s);
    ex::write_file_atomic(out / (name + ".json"), rep.json());
    ex::plot_metrics(TB_SOURCE_DIR "/tools/plot_pruning.py", out / (name + ".json"),
                     out / (name + ".png"));
    auto layers = prune::sparsify(*net, {1, 1, 28, 28}, {.min_sparsity = 0.5,
                                                          .repeats = o.bench_runs});
    for (auto& l : layers) {
      std::printf("  sparse kernel %-4s sparsity %5.1f%%: dense %.3f ms, sparse %.3f ms (%.2fx)%s\n",
                  l.name.c_str(), 100 * l.sparsity, l.dense_ms, l.sparse_ms,
                  l.sparse_ms > 0 ? l.dense_ms / l.sparse_ms : 0.0, l.replaced ? ", used" : "");
      layers_json += fmt::format("{}\n  {{\"global_sparsity\": {}, \"layer\": \"{}\", "
                                 "\"sparsity\": {:.4f}, \"dense_ms\": {:.4f}, \"sparse_ms\": "
                                 "{:.4f}, \"replaced\": {}}}", layers_json.back() == '[' ? "" : ",",
                                 s, l.name, l.sparsity, l.dense_ms, l.sparse_ms,
                                 l.replaced ? "true" : "false");
    }
    record("cnn+sparse_kernel", "global_unstructured", *net);
  }
  ex::write_file_atomic(out / "sparse_layers.json", layers_json + "\n]}\n");

  // (b) Ln-structured filter pruning (PyTorch's ln_structured, dim 0: whole output channels of
  // each conv and of the hidden Linear), then the zeroed channels are removed for real: the next
  // layers lose the matching inputs, BN its statistics. A smaller dense model, fine-tuned.
  for (double s : {0.3, 0.5}) {
    ModulePtr net = base->clone();
    for (const char* w : {"0.weight", "4.weight", "9.weight"})
      prune::ln_structured(*net, w, {.amount = s, .n = 2, .dim = 0});
    prune::remove_all(*net);
    prune::RemovalReport rep = prune::remove_zero_channels(*net, {1, 1, 28, 28});
    std::printf("%s", rep.str().c_str());
    train(*net, d, o.finetune_epochs, o.finetune_lr, o, fmt::format("structured {:.0f}%", 100 * s));
    record("cnn", "structured", *net);
  }

  // (c) AGP: from the baseline, sparsity follows Zhu & Gupta's cubic ramp to 90% during
  // fine-tuning (ten pruning events spread over the first 3/4 of the steps).
  {
    ModulePtr net = base->clone();
    int64_t steps = d.train->size();
    if (o.max_steps > 0) steps = std::min(steps, o.max_steps);
    int64_t total = std::max<int64_t>(1, steps * std::max(1, o.finetune_epochs + 1));
    prune::AGP agp(*net, {}, {.initial_sparsity = 0, .final_sparsity = 0.9, .start_step = 0,
                              .frequency = std::max<int64_t>(1, total * 3 / 40),
                              .num_steps = 10});
    agp.step(0);
    train(*net, d, std::max(1, o.finetune_epochs + 1), o.finetune_lr, o, "agp",
          [&](int64_t t) { agp.step(t); });
    prune::prune_to_sparsity(*net, prune::prunable_weights(*net), 0.9); // if the run was short
    prune::remove_all(*net);
    record("cnn", "agp", *net);
    prune::sparsify(*net, {1, 1, 28, 28}, {.min_sparsity = 0.5, .repeats = o.bench_runs});
    record("cnn+sparse_kernel", "agp", *net);
  }
}

static void mobilenet_experiments(const Data& d, const Options& o, const fs::path& out,
                                  std::vector<Row>& rows) {
  ModulePtr base = baseline("mobilenet_v2", d, o, out);
  const int64_t base_weights = weight_counts(*base).first;
  rows.push_back(measure("mobilenet_v2", "fp32", *base, base_weights, d, o, out));
  save_results(rows, out);
  // 50% of the channels of every group that can lose channels (the expanded channels inside
  // each block, the residual streams, the last 1x1 conv), smallest L2 filter norms first; kept
  // counts rounded up to multiples of 8 (vector-friendly widths).
  ModulePtr net = base->clone();
  prune::RemovalReport rep = prune::prune_channels(*net, {1, 1, 28, 28},
                                                   {.amount = 0.5, .round_to = 8});
  std::printf("mobilenet_v2: %zu groups pruned, parameters %lld -> %lld\n", rep.rows.size(),
              (long long)rep.params_before, (long long)rep.params_after);
  train(*net, d, o.finetune_epochs, o.finetune_lr, o, "mobilenet_v2 structured");
  rows.push_back(measure("mobilenet_v2", "structured", *net, base_weights, d, o, out));
  save_results(rows, out);
  // Training speed too (one step at batch 64, median): the smaller model also trains faster.
  for (auto [name, m] : {std::pair{"fp32", base.get()}, std::pair{"structured", net.get()}}) {
    tb::nn::Module& mm = *m;
    ModulePtr copy = mm.clone();
    tb::optim::SGD opt(copy->parameters(), {.lr = 1e-3, .momentum = 0.9});
    tb::Tensor x = tb::randn({64, 1, 28, 28}), y = tb::randint(0, 10, {64});
    copy->train();
    std::vector<double> t;
    for (int i = 0; i < std::max(3, o.bench_runs / 4) + 2; i++) {
      auto t0 = std::chrono::steady_clock::now();
      opt.zero_grad();
      tb::cross_entropy((*copy)(x), y).backward();
      opt.step();
      t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                      .count());
    }
    std::sort(t.begin() + 2, t.end());
    std::printf("mobilenet_v2 %s: training step (batch 64) %.1f ms\n", name,
                t[2 + (t.size() - 2) / 2]);
  }
}

// The lottery ticket (Frankle & Carbin 2019) on LeNet-300-100: train, prune 20% of the remaining
// weights (global magnitude), rewind the survivors to their initial values, repeat; the final
// sparse network is trained from its initial weights (the ticket) and from a fresh random
// initialisation under the same mask (the control).
static void lottery_experiments(const Data& d, const Options& o, const fs::path& out,
                                std::vector<Row>& rows) {
  ModulePtr net = make_lenet();
  const int64_t base_weights = weight_counts(*net).first;
  prune::LotteryTicket ticket(*net); // the weights at initialisation
  train(*net, d, o.lottery_epochs, o.lr, o, "lenet dense");
  rows.push_back(measure("lenet_300_100", "fp32", *net, base_weights, d, o, out));
  save_results(rows, out);
  for (int r = 0; r < o.lottery_rounds; r++) {
    prune::global_unstructured(*net, prune::prunable_weights(*net), {.amount = 0.2});
    ticket.rewind();
    if (r + 1 < o.lottery_rounds)
      train(*net, d, o.lottery_epochs, o.lr, o, fmt::format("lenet round {}", r + 1));
  }
  ModulePtr control = net->clone(); // same masks
  train(*net, d, o.lottery_epochs, o.lr, o, "lenet ticket");
  prune::remove_all(*net);
  rows.push_back(measure("lenet_300_100 ticket", "unstructured", *net, base_weights, d, o, out));
  prune::LotteryTicket(*control).random_reinit();
  train(*control, d, o.lottery_epochs, o.lr, o, "lenet random reinit");
  prune::remove_all(*control);
  rows.push_back(measure("lenet_300_100 random reinit", "unstructured", *control, base_weights, d,
                         o, out));
  save_results(rows, out);
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
                                                .seed = o.seed, .drop_last = true,
                                                .num_workers = o.workers, .transform = transform});
  tb::data::DataLoader test_loader(test_set, {.batch_size = 500, .shuffle = false, .seed = 0,
                                              .drop_last = false, .num_workers = o.workers,
                                              .transform = transform});
  Data d{&train_loader, &test_loader};
  std::printf("Fashion-MNIST: %lld train / %lld test images; %d threads\n",
              (long long)train_set->size(), (long long)test_set->size(), tb::get_num_threads());

  std::vector<Row> rows;
  std::stringstream list(o.models);
  for (std::string m; std::getline(list, m, ',');) {
    if (m == "cnn") cnn_experiments(d, o, out, rows);
    else if (m == "mobilenet_v2") mobilenet_experiments(d, o, out, rows);
    else if (m == "lenet") lottery_experiments(d, o, out, rows);
    else throw tb::Error(fmt::format("--models: unknown model '{}' (cnn, mobilenet_v2, lenet)", m));
  }
  save_results(rows, out);
  fs::path png = out / "pruning.png";
  bool plotted = ex::plot_metrics(TB_SOURCE_DIR "/tools/plot_pruning.py", out / "results.json", png);
  std::printf("results: %s\nplot: %s\n", (out / "results.json").c_str(),
              plotted ? png.c_str() : "not drawn (python3-matplotlib missing?)");
  return 0;
}

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"Prunes Fashion-MNIST models: unstructured, structured with real removal, AGP, "
               "sparse kernels, lottery ticket.", "prune_fashion_mnist"};
  add_flags(app, o);
  if (auto exit_code = ex::parse_flags(app, argc, argv)) return *exit_code;
  try {
    return run(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "prune_fashion_mnist: %s\n", e.what());
    return 1;
  }
}
