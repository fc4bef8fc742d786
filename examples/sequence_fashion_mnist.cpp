// sequence_fashion_mnist — an LSTM reads each Fashion-MNIST image as a sequence of 28 rows (28
// pixels each) and classifies it from its last hidden state; then dynamic quantization
// (tb::quant::quantize_dynamic: int8 weights, activations quantized per batch) and both models
// side by side: accuracy, file size, latency.
//
//   build/examples/sequence_fashion_mnist --epochs 3 --layers 1 --out runs/sequence
//
// It writes OUT/results.json
//   {"rows": [{"model": "lstm", "precision": "fp32" | "dynamic_int8", "layers", "accuracy",
//              "size_bytes", "latency_ms" (batch 1), "latency_b64_ms"}]}
// OUT/metrics.{json,csv}, OUT/metrics.png, and the two checkpoints (model_fp32.safetensors,
// model_dynamic_int8.safetensors).
#include <tb/tb.h>
#include <tb/data.h>
#include <tb/experiment.h>
#include <tb/quant.h>

#include <algorithm>
#include <chrono>
#include <cstdio>

namespace ex = tb::experiment;
namespace fs = std::filesystem;

// ---- 0. Flags -----------------------------------------------------------------------------------

struct Options {
  int epochs = 3;
  int64_t batch_size = 64;
  int layers = 1;
  int64_t hidden = 128;
  double lr = 2e-3;
  uint64_t seed = 0;
  std::string data;
  std::string out = "runs/sequence";
  int threads = 0;
  int workers = 1;
  int64_t limit_train = 0, limit_test = 0;
  int64_t max_steps = 0; // > 0: at most this many steps per epoch (tests)
  int bench_runs = 50;
};

static void add_flags(CLI::App& app, Options& o) {
  app.add_option("--epochs", o.epochs, "epochs to train")->check(ex::at_least(1));
  app.add_option("--batch-size", o.batch_size, "batch size")->check(ex::at_least<int64_t>(1));
  app.add_option("--layers", o.layers, "LSTM layers")->check(ex::at_least(1));
  app.add_option("--hidden", o.hidden, "LSTM hidden size")->check(ex::at_least<int64_t>(1));
  app.add_option("--lr", o.lr, "Adam learning rate")->check(ex::greater_than(0));
  app.add_option("--seed", o.seed, "seed for initialisation and shuffling")
      ->check(ex::at_least<uint64_t>(0));
  app.add_option("--data", o.data, "Fashion-MNIST folder (default $TB_FASHION_MNIST_DIR or "
                 "/usr/share/datasets/fashion-mnist)")->type_name("DIR");
  app.add_option("--out", o.out, "output folder")->type_name("DIR");
  app.add_option("--threads", o.threads, "CPU threads, 0 for all cores")->check(ex::at_least(0));
  app.add_option("--workers", o.workers, "data-loading threads")->check(ex::at_least(0));
  app.add_option("--limit-train", o.limit_train, "train on the first N images, 0 for all")
      ->check(ex::at_least<int64_t>(0));
  app.add_option("--limit-test", o.limit_test, "evaluate on the first N test images, 0 for all")
      ->check(ex::at_least<int64_t>(0));
  app.add_option("--max-steps", o.max_steps, "at most N steps per epoch, 0 for all (quick runs)")
      ->check(ex::at_least<int64_t>(0));
  app.add_option("--bench-runs", o.bench_runs, "timed forward passes per latency figure")
      ->check(ex::at_least(1));
}

// ---- 1. The model -------------------------------------------------------------------------------

// [N, 1, 28, 28] -> rows [N, 28, 28] -> LSTM (batch_first) -> last step's h [N, H] -> Linear -> 10.
// The children are called through operator(), so after quantize_dynamic the same forward runs
// the DynamicQuantizedLSTM and DynamicQuantizedLinear that replaced them.
class RowLSTM : public tb::nn::Module {
 public:
  RowLSTM(int64_t hidden, int64_t layers) {
    register_module("lstm", std::make_shared<tb::nn::LSTM>(tb::nn::LSTMOptions{
                                .input_size = 28, .hidden_size = hidden, .num_layers = layers,
                                .batch_first = true}));
    register_module("head", std::make_shared<tb::nn::Linear>(hidden, 10));
  }
  tb::Tensor forward(const tb::Tensor& x) override {
    tb::Tensor rows = x.reshape({x.size(0), 28, 28});
    tb::Tensor seq = (*child("lstm"))(rows);          // [N, 28, H]
    tb::Tensor last = seq.select(1, seq.size(1) - 1); // [N, H]
    return (*child("head"))(last);
  }
  TB_MODULE(RowLSTM)
};

// ---- 2. Measurements ----------------------------------------------------------------------------

static double median_latency_ms(tb::nn::Module& net, int64_t batch, int runs) {
  tb::no_grad ng;
  tb::Tensor x = tb::randn({batch, 1, 28, 28});
  for (int i = 0; i < 3; i++) net(x); // warm-up (primitive creation, caches)
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

struct Row {
  std::string precision;
  double accuracy = 0, latency_ms = 0, latency_b64_ms = 0;
  int64_t size_bytes = 0;
};

// ---- 3. Train, quantize, compare ----------------------------------------------------------------

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
  tb::data::DataLoader test_loader(test_set, {.batch_size = 500, .shuffle = false,
                                              .num_workers = o.workers, .transform = transform});

  auto net = std::make_shared<RowLSTM>(o.hidden, o.layers);
  tb::optim::Adam opt(net->parameters(), {.lr = o.lr});
  std::printf("Fashion-MNIST rows as sequences: %lld train / %lld test images from %s; LSTM %d "
              "layer(s), hidden %lld, %lld parameters; %d threads\n",
              (long long)train_set->size(), (long long)test_set->size(), root.c_str(), o.layers,
              (long long)o.hidden, (long long)net->num_parameters(), tb::get_num_threads());

  ex::MetricsLog metrics;
  int64_t steps_per_epoch = train_loader.size();
  if (o.max_steps > 0) steps_per_epoch = std::min(steps_per_epoch, o.max_steps);
  for (int epoch = 0; epoch < o.epochs; epoch++) {
    train_loader.set_epoch(epoch);
    ex::Progress progress({.total = steps_per_epoch,
                           .label = fmt::format("epoch {}/{}", epoch + 1, o.epochs)});
    ex::Meter train;
    int64_t step = 0;
    for (const auto& b : train_loader) {
      if (step >= steps_per_epoch) break;
      tb::Tensor logits = (*net)(b.inputs);
      tb::Tensor loss = tb::cross_entropy(logits, b.targets);
      opt.zero_grad();
      if (ex::checked_backward(loss, *net, ex::OnNonFinite::stop, epoch + 1, step)) {
        double loss_value = loss.item();
        opt.step();
        train.add(loss_value * b.targets.numel(), logits, b.targets);
        metrics.steps.push_back({epoch * steps_per_epoch + step + 1, epoch + 1, loss_value, o.lr});
        progress.update(step + 1, train);
      }
      step++;
    }
    progress.finish();
    double seconds = progress.seconds();
    ex::Score test = ex::evaluate(*net, test_loader);
    std::printf("epoch %d: train loss %.4f acc %.2f%% | test loss %.4f acc %.2f%% | %.1f s\n",
                epoch + 1, train.loss(), 100 * train.accuracy(), test.loss, 100 * test.accuracy,
                seconds);
    metrics.epochs.push_back({epoch + 1, {{"train_loss", train.loss()},
                                          {"train_acc", train.accuracy()},
                                          {"test_loss", test.loss}, {"test_acc", test.accuracy},
                                          {"seconds", seconds}}});
    metrics.save(out);
  }

  // FP32 row.
  std::vector<Row> rows;
  fs::path fp32_path = out / "model_fp32.safetensors", int8_path = out / "model_dynamic_int8.safetensors";
  tb::nn::save(*net, fp32_path.string());
  Row fp32{.precision = "fp32"};
  fp32.accuracy = ex::evaluate(*net, test_loader).accuracy;
  fp32.size_bytes = (int64_t)fs::file_size(fp32_path);
  net->eval();
  fp32.latency_ms = median_latency_ms(*net, 1, o.bench_runs);
  fp32.latency_b64_ms = median_latency_ms(*net, 64, o.bench_runs);
  rows.push_back(fp32);

  // Dynamic int8: a copy of the trained model, its LSTM and Linear converted.
  auto qnet = tb::nn::clone(*net);
  tb::quant::ConversionReport report = tb::quant::quantize_dynamic(*qnet);
  std::printf("quantize_dynamic:\n%s", report.str().c_str());
  tb::quant::save(*qnet, int8_path.string());
  Row q{.precision = "dynamic_int8"};
  q.accuracy = ex::evaluate(*qnet, test_loader).accuracy;
  q.size_bytes = (int64_t)fs::file_size(int8_path);
  q.latency_ms = median_latency_ms(*qnet, 1, o.bench_runs);
  q.latency_b64_ms = median_latency_ms(*qnet, 64, o.bench_runs);
  rows.push_back(q);

  std::string json = "{\"rows\": [\n";
  for (size_t i = 0; i < rows.size(); i++) {
    const Row& r = rows[i];
    std::printf("%-13s accuracy %.2f%%  size %lld bytes  latency b1 %.3f ms  b64 %.3f ms\n",
                r.precision.c_str(), 100 * r.accuracy, (long long)r.size_bytes, r.latency_ms,
                r.latency_b64_ms);
    json += fmt::format("  {{\"model\": \"lstm\", \"precision\": \"{}\", \"layers\": {}, "
                        "\"accuracy\": {:.4f}, \"size_bytes\": {}, \"latency_ms\": {:.4f}, "
                        "\"latency_b64_ms\": {:.4f}}}{}\n",
                        r.precision, o.layers, r.accuracy, r.size_bytes, r.latency_ms,
                        r.latency_b64_ms, i + 1 < rows.size() ? "," : "");
  }
  json += "]}\n";
  ex::write_file_atomic(out / "results.json", json);
  bool plotted = ex::plot_metrics(TB_SOURCE_DIR "/tools/plot_metrics.py", out / "metrics.json",
                                  out / "metrics.png");
  std::printf("results: %s\nplot: %s\n", (out / "results.json").c_str(),
              plotted ? (out / "metrics.png").c_str() : "not drawn (python3-matplotlib missing?)");
  return 0;
}

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"An LSTM on Fashion-MNIST rows, then dynamic int8 quantization.",
               "sequence_fashion_mnist"};
  add_flags(app, o);
  if (auto exit_code = ex::parse_flags(app, argc, argv)) return *exit_code;
  try {
    return run(o);
  } catch (const tb::Error& e) {
    std::fprintf(stderr, "sequence_fashion_mnist: %s\n", e.what());
    return 1;
  }
}
