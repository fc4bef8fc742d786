// tools/tb_cli.cpp — the `tb` command-line tool for the model zoo.
//
//   tb list                                    the model names
//   tb summary MODEL --input NxCxHxW [opts]    per-layer table: output shapes, params, mult-adds
//   tb forward MODEL WEIGHTS INPUT OUTPUT [opts]
//       loads WEIGHTS (a safetensors state_dict, strict), runs INPUT's tensor "input" through
//       the model in eval mode and writes {"output": y} to OUTPUT (safetensors); used by
//       tools/convert_torch_weights.py --check-model to compare against torchvision.
// opts: --num-classes K (default 1000), --small (3×3 stride-1 stem, no stem max-pool),
//       --width W (mobilenet_v1/v2), --in-channels C (summary: taken from --input by default)
//
//   tb bench MODEL [--precision fp32|int8|dynamic] [--batch N] [--input CxHxW] [--threads N]
//                  [--warmup N] [--iters N] [--checkpoint FILE] [--data DIR] [--json]
//                  [--no-optimize]
//       inference speed of a zoo model or the CNN (`cnn`, 1x28x28): latency mean / p50 / p95 /
//       p99 after warm-up, images/s, parameters, multiply-adds, safetensors size, peak memory of
//       the caching allocator, and with --data the Fashion-MNIST test accuracy. See bench() below
//       and docs/inference.md.
#include <tb/experiment.h>
#include <tb/infer.h>
#include <tb/models.h>
#include <tb/quant.h>
#include <tb/tb.h>

#include <nlohmann/json.hpp>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

namespace {

int usage() {
  std::fprintf(stderr,
               "usage: tb list\n"
               "       tb summary MODEL --input NxCxHxW [--num-classes K] [--small] [--width W]\n"
               "       tb forward MODEL WEIGHTS INPUT OUTPUT [--num-classes K] [--small] "
               "[--width W] [--in-channels C]\n"
               "       tb bench MODEL [--precision fp32|int8|dynamic] [--batch N] "
               "[--input CxHxW] [--threads N] [--warmup N] [--iters N] [--checkpoint FILE] "
               "[--data DIR] [--json]   (tb bench --help)\n");
  return 2;
}

tb::Shape parse_shape(const std::string& s) {
  tb::Shape shape;
  size_t pos = 0;
  while (pos <= s.size()) {
    size_t x = s.find('x', pos);
    std::string part = s.substr(pos, x == std::string::npos ? std::string::npos : x - pos);
    size_t used = 0;
    int64_t v = 0;
    try {
      v = std::stoll(part, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    TB_CHECK(used == part.size() && !part.empty() && v > 0,
             "tb: --input wants positive sizes joined by 'x' (e.g. 1x3x224x224), got '{}'", s);
    shape.push_back(v);
    if (x == std::string::npos) break;
    pos = x + 1;
  }
  TB_CHECK(shape.size() == 4, "tb: --input wants 4 sizes NxCxHxW, got '{}'", s);
  return shape;
}

// Splits argv into positional arguments and options, filling `o` and `input`.
std::vector<std::string> parse(int argc, char** argv, tb::models::ModelOptions& o,
                               std::string& input, bool& in_channels_set) {
  std::vector<std::string> pos;
  for (int i = 2; i < argc; i++) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      TB_CHECK(i + 1 < argc, "tb: option {} needs a value", a);
      return argv[++i];
    };
    if (a == "--input") input = value();
    else if (a == "--num-classes") o.num_classes = std::stoll(value());
    else if (a == "--width") o.width_mult = std::stod(value());
    else if (a == "--in-channels") o.in_channels = std::stoll(value()), in_channels_set = true;
    else if (a == "--small") o.small_input = true;
    else if (a.rfind("--", 0) == 0) throw tb::Error(fmt::format("tb: unknown option '{}'", a));
    else pos.push_back(a);
  }
  return pos;
}

// ---- tb bench ------------------------------------------------------------------------------------

namespace ex = tb::experiment;
namespace q = tb::quant;

enum class Precision { fp32, int8, dynamic };
const std::vector<std::pair<std::string, Precision>> kPrecisions = {
    {"fp32", Precision::fp32}, {"int8", Precision::int8}, {"dynamic", Precision::dynamic}};

struct BenchOptions {
  std::string model;
  Precision precision = Precision::fp32;
  int64_t batch = 1;
  std::string input; // CxHxW; empty: 1x28x28 for cnn, 3x224x224 for the zoo
  int threads = 0;   // 0: tb's default (the cores)
  int64_t warmup = 10, iters = 100;
  std::string checkpoint, data;
  bool json = false;
  bool no_optimize = false; // fp32: the model as built (eval mode), for before/after figures
  bool keep_faster = false; // int8: convert keeps float where int8 is not faster (timed)
  bool fuse_add = false;    // int8: residual adds folded into their conv (sum post-op)
};

// "3x224x224" -> {3, 224, 224}; tb::Error otherwise.
tb::Shape parse_chw(const std::string& s) {
  tb::Shape shape;
  size_t pos = 0;
  bool ok = !s.empty();
  while (ok) {
    size_t x = s.find('x', pos);
    std::string part = s.substr(pos, x == std::string::npos ? std::string::npos : x - pos);
    auto v = ex::parse_number<int64_t>(part);
    ok = v && *v > 0;
    if (ok) shape.push_back(*v);
    if (x == std::string::npos) break;
    pos = x + 1;
  }
  TB_CHECK(ok && shape.size() == 3, "tb bench: --input '{}': expected CxHxW, e.g. 3x224x224", s);
  return shape;
}

// Linear interpolation between order statistics (numpy.percentile's default), q in [0, 100].
double percentile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  double pos = q / 100.0 * (double)(v.size() - 1);
  size_t lo = (size_t)pos, hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (pos - (double)lo) * (v[hi] - v[lo]);
}

// Loads a float checkpoint into `model`: a state_dict (nn::save) or a training checkpoint
// (ex::save_checkpoint, keys "model.<name>"; the optimizer's and schedule's entries are ignored).
void load_float_checkpoint(tb::nn::Module& model, const std::string& path,
                           const tb::SafetensorsFile& f) {
  tb::StateDict sd;
  bool training = false;
  for (const auto& [k, v] : f.tensors) training |= k.rfind("model.", 0) == 0;
  for (const auto& [k, v] : f.tensors) {
    if (!training) sd.insert(k, v);
    else if (k.rfind("model.", 0) == 0) sd.insert(k.substr(6), v);
  }
  try {
    model.load_state_dict(sd, /*strict=*/true);
  } catch (const tb::Error& e) {
    throw tb::Error(fmt::format("tb bench: --checkpoint {} does not fit the model: {}", path,
                                e.what()));
  }
}

size_t file_size_of_saved(const std::function<void(const std::string&)>& save) {
  namespace fs = std::filesystem;
  fs::path path = fs::temp_directory_path() /
                  fmt::format("tb_bench_{}_{}.safetensors", (long)getpid(),
                              std::chrono::steady_clock::now().time_since_epoch().count());
  save(path.string());
  size_t n = fs::file_size(path);
  fs::remove(path);
  return n;
}

int bench(int argc, char** argv) {
  BenchOptions o;
  CLI::App app{"Measures inference: latency (mean, p50, p95, p99 after warm-up), throughput, "
               "parameters, multiply-adds, the safetensors size, peak memory of tb's caching "
               "allocator and, with --data, the Fashion-MNIST test accuracy. fp32 runs the "
               "tb::infer::optimize_for_inference model; int8 the tb::quant converted model; "
               "dynamic tb::quant::quantize_dynamic (Linear layers) on the optimized model.",
               "tb bench"};
  app.add_option("model", o.model, "a zoo model (tb list) or cnn (the Fashion-MNIST CNN)")
      ->required();
  app.add_option("--precision", o.precision, "fp32, int8 or dynamic")
      ->transform(ex::one_of(kPrecisions))->default_str("fp32");
  app.add_option("--batch", o.batch, "images per forward pass")->check(ex::at_least<int64_t>(1));
  app.add_option("--input", o.input, "image size CxHxW (default 1x28x28 for cnn, 3x224x224 "
                 "otherwise; H <= 64 builds the zoo's small-input variant with 10 classes)");
  app.add_option("--threads", o.threads, "OpenMP threads, 0 for all cores")
      ->check(ex::at_least(0));
  app.add_option("--warmup", o.warmup, "untimed passes first")->check(ex::at_least<int64_t>(0));
  app.add_option("--iters", o.iters, "timed passes")->check(ex::at_least<int64_t>(1));
  app.add_option("--checkpoint", o.checkpoint, "weights: a float state_dict or training "
                 "checkpoint, or (int8) a converted tb::quant checkpoint");
  app.add_option("--data", o.data, "Fashion-MNIST folder: measure the test accuracy (1x28x28 "
                 "inputs); int8 then calibrates on training images");
  app.add_flag("--json", o.json, "print one JSON object instead of the table");
  app.add_flag("--no-optimize", o.no_optimize, "fp32: run the model as built, in eval mode, "
               "without optimize_for_inference (the 'before' figure)");
  app.add_flag("--keep-faster", o.keep_faster, "int8: time each integer layer against its float "
               "version on the benchmark's shape and keep float where int8 is not faster");
  app.add_flag("--fuse-add", o.fuse_add, "int8: fold each residual add into the conv before it "
               "(oneDNN's sum post-op, exact; quant::ConvertOptions::fuse_add)");
  // argv[1] is "bench": CLI11 sees "tb bench" as the program name.
  if (auto code = ex::parse_flags(app, argc - 1, argv + 1)) return *code;

  // The model and its input.
  bool is_cnn = o.model == "cnn";
  tb::Shape chw = o.input.empty() ? (is_cnn ? tb::Shape{1, 28, 28} : tb::Shape{3, 224, 224})
                                  : parse_chw(o.input);
  bool small = chw[1] <= 64;
  tb::models::ModelOptions mo{.num_classes = is_cnn || small ? 10 : 1000, .small_input = small,
                              .in_channels = chw[0]};
  auto model = tb::models::create(o.model, mo);
  if (o.threads > 0) tb::set_num_threads(o.threads);
  TB_CHECK(o.data.empty() || chw == tb::Shape({1, 28, 28}),
           "tb bench: --data measures Fashion-MNIST accuracy, which needs --input 1x28x28, got {}",
           tb::shape_str(chw));

  std::optional<tb::SafetensorsFile> ckpt;
  std::string ckpt_stage = "float";
  if (!o.checkpoint.empty()) {
    ckpt = tb::load_safetensors(o.checkpoint);
    if (auto it = ckpt->metadata.find("tb.quant"); it != ckpt->metadata.end())
      ckpt_stage = it->second;
    TB_CHECK(ckpt_stage == "float" || (ckpt_stage == "converted" && o.precision == Precision::int8),
             "tb bench: --checkpoint {} is a '{}' tb::quant checkpoint; {} needs a float "
             "checkpoint{}", o.checkpoint, ckpt_stage,
             o.precision == Precision::int8 ? "int8" : "fp32/dynamic",
             o.precision == Precision::int8 ? " or a converted one" : "");
    if (ckpt_stage == "float") load_float_checkpoint(*model, o.checkpoint, *ckpt);
  }
  model->eval();
  tb::ModelSummary sum = tb::summary(*model, {1, chw[0], chw[1], chw[2]});

  std::optional<ex::FashionMNISTData> fm;
  if (!o.data.empty()) fm = ex::load_fashion_mnist({.root = o.data});

  // What runs, and the file it ships as.
  tb::nn::ModulePtr run_model;
  size_t size_bytes = 0;
  std::string notes;
  TB_CHECK(!o.no_optimize || o.precision == Precision::fp32,
           "tb bench: --no-optimize applies to --precision fp32 only");
  if (o.precision == Precision::fp32 && o.no_optimize) {
    run_model = model;
    notes = "not optimized (--no-optimize)";
    size_bytes = file_size_of_saved([&](const std::string& p) { tb::nn::save(*model, p); });
  } else if (o.precision == Precision::fp32) {
    tb::infer::OptimizeReport r;
    run_model = tb::infer::optimize_for_inference(*model, &r);
    notes = r.str();
    size_bytes = file_size_of_saved([&](const std::string& p) { tb::nn::save(*model, p); });
  } else if (o.precision == Precision::dynamic) {
    tb::infer::OptimizeReport r;
    run_model = tb::infer::optimize_for_inference(*model, &r);
    q::ConversionReport qr = q::quantize_dynamic(*run_model);
    notes = fmt::format("{}; quantize_dynamic: {} quantized, {} float", r.str(), qr.quantized,
                        qr.skipped);
    // The file: the float model with its Linear layers quantized dynamically.
    auto shipped = model->clone();
    q::quantize_dynamic(*shipped);
    size_bytes = file_size_of_saved([&](const std::string& p) { q::save(*shipped, p); });
  } else {
    auto qm = std::make_shared<q::QuantWrapper>(model->clone());
    qm->eval();
    tb::Shape in_shape{o.batch, chw[0], chw[1], chw[2]};
    // The conv-BN(-ReLU) groups from the data flow (a ResNet block's conv/BN pairs too; its ReLU,
    // called twice, stays a module: a table lookup on uint8 as a QuantizedReLU).
    q::fuse_modules(*qm, q::find_fusable_groups(*qm, in_shape));
    q::ConversionReport qr;
    if (ckpt_stage == "converted") {
      q::prepare(*qm);
      qr = q::convert(*qm, {.allow_uncalibrated = true, .input_shape = in_shape,
                            .keep_faster = o.keep_faster, .fuse_add = o.fuse_add});
      try {
        q::load(*qm, o.checkpoint);
      } catch (const tb::Error& e) {
        throw tb::Error(fmt::format("tb bench: --checkpoint {} does not fit the converted {} "
                                    "(QuantWrapper, fuse_modules, default qconfig): {}",
                                    o.checkpoint, o.model, e.what()));
      }
      notes = "converted checkpoint " + o.checkpoint;
    } else {
      // Calibration: training images with --data, else random inputs (speed does not depend on
      // the values; accuracy then does).
      int64_t cb = std::min<int64_t>(o.batch, 32);
      std::shared_ptr<tb::data::Dataset> calib;
      tb::data::Transform transform;
      if (fm) {
        std::vector<int64_t> idx(std::min<int64_t>(256, fm->train->size()));
        for (size_t i = 0; i < idx.size(); i++) idx[i] = (int64_t)i;
        calib = std::make_shared<tb::data::Subset>(fm->train, idx);
        transform = fm->transform;
      } else {
        int64_t n = std::max<int64_t>(cb * 4, 8);
        calib = std::make_shared<tb::data::TensorDataset>(
            tb::randn({n, chw[0], chw[1], chw[2]}), tb::zeros({n}, {tb::kInt64}));
      }
      tb::data::DataLoader loader(calib, {.batch_size = cb, .transform = transform});
      q::prepare(*qm);
      {
        tb::no_grad ng;
        for (const auto& b : loader) (*qm)(b.inputs);
      }
      // The uint8 flow is planned (and, with --keep-faster, each layer timed) on the bench shape.
      qr = q::convert(*qm, {.input_shape = in_shape, .keep_faster = o.keep_faster,
                            .fuse_add = o.fuse_add});
      notes = fmt::format("calibrated on {} {} images; {} layers quantized",
                          calib->size(), fm ? "training" : "random", qr.quantized);
    }
    int64_t integer = 0, kept_float = 0;
    for (tb::nn::Module* m : qm->modules()) {
      if (auto* c = dynamic_cast<q::QuantizedConv2d*>(m)) (c->integer ? integer : kept_float)++;
      if (auto* l = dynamic_cast<q::QuantizedLinear*>(m)) (l->integer ? integer : kept_float)++;
    }
    notes += fmt::format("; conv/linear: {} integer, {} float{}; module outputs: {} uint8, {} "
                         "float", integer, kept_float, o.keep_faster ? " (--keep-faster)" : "",
                         qr.uint8_outputs, qr.float_outputs);
    if (o.fuse_add) notes += fmt::format("; {} adds fused into their conv", qr.fused_adds);
    run_model = qm;
    size_bytes = file_size_of_saved([&](const std::string& p) { q::save(*qm, p); });
  }

  // Timing: warm-up (primitives created, caches filled), then one clock reading per pass. The
  // CPU kernels return when done; a CUDA run would synchronize the device before each reading.
  tb::Tensor x = tb::randn({o.batch, chw[0], chw[1], chw[2]});
  std::vector<double> ms;
  size_t peak = 0;
  {
    tb::no_grad ng;
    for (int64_t i = 0; i < o.warmup; i++) (*run_model)(x);
    tb::reset_peak_memory(tb::kCPU);
    for (int64_t i = 0; i < o.iters; i++) {
      auto t0 = std::chrono::steady_clock::now();
      tb::Tensor y = (*run_model)(x);
      auto t1 = std::chrono::steady_clock::now();
      ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    }
    peak = tb::memory_stats(tb::kCPU).peak;
  }
  double mean = 0;
  for (double v : ms) mean += v;
  mean /= (double)ms.size();
  double ips = (double)o.batch / (mean / 1000.0);

  std::optional<double> accuracy;
  if (fm) {
    tb::data::DataLoader test(fm->test, {.batch_size = 500, .transform = fm->transform});
    accuracy = ex::evaluate(*run_model, test).accuracy;
  }

  std::string precision_name = kPrecisions[(size_t)o.precision].first;
  if (o.json) {
    nlohmann::ordered_json j = {
        {"model", o.model},
        {"precision", precision_name},
        {"batch", o.batch},
        {"input", chw},
        {"threads", tb::get_num_threads()},
        {"warmup", o.warmup},
        {"iters", o.iters},
        {"images_per_s", ips},
        {"latency_ms", {{"mean", mean}, {"p50", percentile(ms, 50)}, {"p95", percentile(ms, 95)},
                        {"p99", percentile(ms, 99)}}},
        {"params", sum.total_params},
        {"madds", sum.total_mult_adds},
        {"size_bytes", size_bytes},
        {"peak_bytes", peak},
        {"notes", notes}};
    if (accuracy) j["accuracy"] = *accuracy;
    std::printf("%s\n", j.dump().c_str());
    return 0;
  }
  std::printf("%s %s, batch %lld, input %s, %d threads, %lld warm-up + %lld timed passes\n",
              o.model.c_str(), precision_name.c_str(), (long long)o.batch,
              tb::shape_str(chw).c_str(), tb::get_num_threads(), (long long)o.warmup,
              (long long)o.iters);
  std::printf("  %s\n", notes.c_str());
  std::printf("  latency ms   mean %.3f  p50 %.3f  p95 %.3f  p99 %.3f\n", mean,
              percentile(ms, 50), percentile(ms, 95), percentile(ms, 99));
  std::printf("  throughput   %.1f images/s\n", ips);
  std::printf("  params       %lld\n", (long long)sum.total_params);
  std::printf("  mult-adds    %lld per image\n", (long long)sum.total_mult_adds);
  std::printf("  file size    %zu bytes (safetensors)\n", size_bytes);
  std::printf("  peak memory  %zu bytes (caching allocator, timed passes)\n", peak);
  if (accuracy) std::printf("  accuracy     %.4f (Fashion-MNIST test)\n", *accuracy);
  return 0;
}

int run(int argc, char** argv) {
  if (argc < 2) return usage();
  std::string cmd = argv[1];
  if (cmd == "bench") return bench(argc, argv);
  tb::models::ModelOptions o;
  std::string input;
  bool in_channels_set = false;
  auto pos = parse(argc, argv, o, input, in_channels_set);

  if (cmd == "list") {
    for (auto& n : tb::models::model_names()) std::printf("%s\n", n.c_str());
    return 0;
  }
  if (cmd == "summary") {
    if (pos.size() != 1 || input.empty()) return usage();
    tb::Shape shape = parse_shape(input);
    if (!in_channels_set) o.in_channels = shape[1];
    auto model = tb::models::create(pos[0], o);
    std::printf("%s (%s)\n", pos[0].c_str(), model->type_name().c_str());
    std::fputs(tb::summary(*model, shape).str().c_str(), stdout);
    return 0;
  }
  if (cmd == "forward") {
    if (pos.size() != 4) return usage();
    auto model = tb::models::create(pos[0], o);
    tb::nn::load(*model, pos[1], /*strict=*/true);
    auto in = tb::load_safetensors(pos[2]);
    TB_CHECK(in.tensors.contains("input"), "tb forward: {} has no tensor named 'input'", pos[2]);
    model->eval();
    tb::no_grad ng;
    tb::Tensor y = (*model)(in.tensors.at("input"));
    tb::save_safetensors(pos[3], tb::TensorDict{{"output", y.contiguous()}});
    return 0;
  }
  return usage();
}

} // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
