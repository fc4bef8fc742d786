// distill_fashion_mnist — knowledge distillation on Fashion-MNIST with tb::distill.
//
// The teacher is the main job's CNN (examples/train_fashion_mnist: 32/64 channels, 421k
// parameters), trained here with the main job's recipe or loaded from its checkpoint
// (--teacher runs/fashion_mnist/checkpoint.safetensors). The students are the same CNN with 8/16
// channels (cnn8_16) and MobileNetV2 ×0.5 (small-input, 1 channel). For every seed, each student
// is trained three ways with the same initialisation, epochs, schedule and data order:
//   scratch     cross-entropy with the labels;
//   kd          tb::distill::DistillationLoss against the teacher's logits (cached per epoch:
//               the teacher runs once per seed and epoch for all students);
//   feature_kd  kd + MSE between intermediate features (1×1 conv adapters, forward hooks).
// Then a temperature × alpha sweep of kd on one student. Writes
//   OUT/results.json  {"teacher_accuracy": a, "rows": [{"student", "seed", "method", "accuracy",
//                      "params"}]}
//   OUT/summary.json  the recipe, and per student and method the mean accuracy over the seeds and
//                      the fraction of the teacher–student gap that distillation closed
//   OUT/sweep.json, OUT/sweep.png (tools/plot_distill.py), and per run metrics and a checkpoint
//   under OUT/runs/<student>_<method>_seed<k>/.
//
//   build/examples/distill_fashion_mnist --students cnn8_16 --seeds 3 --out runs/distill
//   build/examples/distill_fashion_mnist --help
#include <tb/tb.h>
#include <tb/data.h>
#include <tb/distill.h>
#include <tb/experiment.h>
#include <tb/models.h>

#include <nlohmann/json.hpp>

#include <cstdio>
#include <map>
#include <memory>

namespace ex = tb::experiment;
namespace kd = tb::distill;
namespace fs = std::filesystem;
using nlohmann::json;

// ---- 0. Flags -----------------------------------------------------------------------------------

enum class Method { scratch, kd, feature_kd };
static const std::vector<std::pair<std::string, Method>> kMethods = {
    {"scratch", Method::scratch}, {"kd", Method::kd}, {"feature_kd", Method::feature_kd}};
static const std::vector<std::pair<std::string, kd::AlphaWeights>> kAlphaWeights = {
    {"hard_loss", kd::AlphaWeights::hard_loss}, {"soft_loss", kd::AlphaWeights::soft_loss}};

struct Options {
  int epochs = 3;
  int64_t batch_size = 64;
  double lr = 0.05, momentum = 0.9, weight_decay = 5e-4;
  int seeds = 3; // seeds 0 .. seeds-1
  std::vector<std::string> students = {"cnn8_16", "mobilenet_v2_x0_5"};
  std::vector<std::string> methods = {"scratch", "kd", "feature_kd"};
  // The recipe (docs/distillation.md; chosen by the sweep): T = 2, alpha = 0.9 on the hard loss.
  double temperature = 2.0, alpha = 0.9;
  kd::AlphaWeights alpha_weights = kd::AlphaWeights::hard_loss;
  double feature_weight = 1.0; // beta: loss = kd + beta · Σ MSE(adapter(f_s), f_t)
  std::string teacher;         // a checkpoint of train_fashion_mnist's CNN; empty: train one
  int teacher_epochs = 3;
  std::vector<double> sweep_temperatures = {1, 2, 4, 8};
  std::vector<double> sweep_alphas = {0.1, 0.5, 0.9};
  std::string sweep_student = "cnn8_16";
  int sweep_epochs = 0; // 0: --epochs
  bool no_sweep = false;
  std::string data, out = "runs/distill";
  int threads = 0, workers = 1;
  int64_t limit_train = 0, limit_test = 0, max_steps = 0;
};

static const std::vector<std::string> kStudents = {"cnn8_16", "mobilenet_v2_x0_5"};

static void add_flags(CLI::App& app, Options& o) {
  app.add_option("--epochs", o.epochs, "epochs per student (scratch and distilled alike)")
      ->check(ex::at_least(1));
  app.add_option("--batch-size", o.batch_size, "batch size")->check(ex::at_least<int64_t>(1));
  app.add_option("--lr", o.lr, "peak learning rate")->check(ex::greater_than(0));
  app.add_option("--momentum", o.momentum, "SGD momentum")->check(ex::at_least(0.0));
  app.add_option("--weight-decay", o.weight_decay, "SGD weight decay")->check(ex::at_least(0.0));
  app.add_option("--seeds", o.seeds, "seeds 0..N-1 for every student and method")
      ->check(ex::at_least(1));
  app.add_option("--students", o.students, "students, comma-separated")->delimiter(',')
      ->check(ex::one_of(kStudents));
  app.add_option("--methods", o.methods, "methods, comma-separated")->delimiter(',')
      ->check(ex::one_of(std::vector<std::string>{"scratch", "kd", "feature_kd"}));
  app.add_option("--temperature", o.temperature, "distillation temperature T")
      ->check(ex::greater_than(0));
  app.add_option("--alpha", o.alpha, "alpha, the weight of the term --alpha-weights names")
      ->check(ex::accepts("a number in [0, 1]", "[0,1]", [](const std::string& s) {
        auto v = ex::parse_number<double>(s);
        return v && *v >= 0 && *v <= 1;
      }));
  app.add_option("--alpha-weights", o.alpha_weights, "the term alpha weights: hard_loss "
                 "(alpha·CE + (1−alpha)·T²·KL) or soft_loss")
      ->transform(ex::one_of(kAlphaWeights))->default_str("hard_loss");
  app.add_option("--feature-weight", o.feature_weight, "weight of the feature MSE (feature_kd)")
      ->check(ex::at_least(0.0));
  app.add_option("--teacher", o.teacher, "teacher checkpoint of train_fashion_mnist (--model "
                 "cnn); empty: train the teacher here")->type_name("FILE");
  app.add_option("--teacher-epochs", o.teacher_epochs, "epochs to train the teacher")
      ->check(ex::at_least(1));
  app.add_option("--sweep-temperatures", o.sweep_temperatures, "sweep: temperatures")
      ->delimiter(',')->check(ex::greater_than(0));
  app.add_option("--sweep-alphas", o.sweep_alphas, "sweep: alphas (on --alpha-weights' term)")
      ->delimiter(',')->check(ex::at_least(0.0));
  app.add_option("--sweep-student", o.sweep_student, "sweep: the student")
      ->check(ex::one_of(kStudents));
  app.add_option("--sweep-epochs", o.sweep_epochs, "sweep: epochs per cell, 0 for --epochs")
      ->check(ex::at_least(0));
  app.add_flag("--no-sweep", o.no_sweep, "skip the temperature × alpha sweep");
  app.add_option("--data", o.data, "Fashion-MNIST folder (default $TB_FASHION_MNIST_DIR or "
                 "/usr/share/datasets/fashion-mnist)")->type_name("DIR");
  app.add_option("--out", o.out, "output folder")->type_name("DIR");
  app.add_option("--threads", o.threads, "CPU threads, 0 for all cores")->check(ex::at_least(0));
  app.add_option("--workers", o.workers, "data-loading threads")->check(ex::at_least(0));
  app.add_option("--limit-train", o.limit_train, "train on the first N images, 0 for all")
      ->check(ex::at_least<int64_t>(0));
  app.add_option("--limit-test", o.limit_test, "evaluate on the first N test images, 0 for all")
      ->check(ex::at_least<int64_t>(0));
  app.add_option("--max-steps", o.max_steps, "at most N steps per epoch, 0 for all (tests)")
      ->check(ex::at_least<int64_t>(0));
}

// ---- 1. Models ----------------------------------------------------------------------------------

static tb::nn::ModulePtr make_model(const std::string& name) {
  // The main job's CNN (32/64 channels) is the teacher; at width 0.25 (8/16 channels), a student.
  if (name == "cnn") return tb::models::cnn({.num_classes = 10, .in_channels = 1});
  if (name == "cnn8_16") return tb::models::cnn({.num_classes = 10, .in_channels = 1, .width_mult = 0.25});
  return tb::models::mobilenet_v2(
      {.num_classes = 10, .small_input = true, .in_channels = 1, .width_mult = 0.5});
}

// Feature pairs (student path, teacher path) for feature_kd: after the first block's ReLU
// (28×28) and the second's (14×14). MobileNetV2's maps are pooled to the teacher's size where
// they differ (FeatureDistiller does it).
static std::vector<kd::FeaturePair> feature_pairs(const std::string& student) {
  if (student == "cnn8_16") return {{"2", "2"}, {"6", "6"}};
  return {{"features.1", "2"}, {"features.3", "6"}};
}

// ---- 2. One training run ------------------------------------------------------------------------

using Data = ex::FashionMNISTData; // training and test sets, and their transform

struct Run {
  std::string model;       // "cnn" (the teacher), "cnn8_16", "mobilenet_v2_x0_5"
  uint64_t seed = 0;
  Method method = Method::scratch;
  kd::DistillationOptions loss;
  int epochs = 1;
  fs::path dir;            // metrics and checkpoint
};

struct Trained {
  tb::nn::ModulePtr model;
  double accuracy = 0;
};

// Teacher logits per (seed, epoch): every student of a seed sees the same batches.
using LogitCaches = std::map<std::pair<uint64_t, int>, kd::TeacherLogitCache>;

static Trained train(const Options& o, const Data& d, const Run& r, kd::Teacher* teacher,
                     LogitCaches& caches) {
  ex::seed_everything(r.seed); // the same initialisation for every method of a seed
  tb::nn::ModulePtr net = make_model(r.model);
  tb::data::DataLoader loader(d.train, {.batch_size = o.batch_size, .shuffle = true,
                                        .seed = r.seed, .num_workers = o.workers,
                                        .transform = d.transform});
  tb::data::DataLoader test_loader(d.test, {.batch_size = 500, .num_workers = o.workers,
                                            .transform = d.transform});
  std::unique_ptr<kd::FeatureDistiller> features;
  std::vector<tb::Tensor> params = net->parameters();
  if (r.method == Method::feature_kd) {
    features = std::make_unique<kd::FeatureDistiller>(*net, teacher->model(),
                                                      feature_pairs(r.model),
                                                      tb::Shape{1, 1, 28, 28});
    for (const auto& p : features->parameters()) params.push_back(p); // the adapters train too
  }
  std::optional<kd::DistillationLoss> distill;
  if (r.method != Method::scratch) distill.emplace(r.loss);

  // The main job's schedule: SGD with momentum, warm-up over half an epoch, cosine to zero.
  tb::optim::SGD opt(params, {.lr = o.lr, .momentum = o.momentum,
                              .weight_decay = o.weight_decay});
  int64_t steps_per_epoch = o.max_steps > 0 ? std::min(o.max_steps, loader.size()) : loader.size();
  int64_t warmup = std::max<int64_t>(1, steps_per_epoch / 2);
  auto sched = tb::optim::warmup_cosine(opt, warmup, std::max(steps_per_epoch * r.epochs,
                                                              warmup + 1));
  ex::MetricsLog metrics;
  double accuracy = 0;
  for (int epoch = 0; epoch < r.epochs; epoch++) {
    kd::TeacherLogitCache* cache = nullptr;
    if (r.method == Method::kd) { // one teacher pass per (seed, epoch), shared by all students
      cache = &caches[{r.seed, epoch}];
      if (cache->epoch() != epoch) cache->compute(*teacher, loader, epoch);
    }
    loader.set_epoch(epoch); // the order depends on (seed, epoch) only: equal for every method
    net->train();
    ex::Progress progress({.total = steps_per_epoch, .label = fmt::format(
        "{} {} seed {} epoch {}/{}", r.model, kMethods[(int)r.method].first, r.seed,
        epoch + 1, r.epochs)});
    ex::Meter meter;
    int64_t step = 0;
    for (const auto& b : loader) {
      if (step >= steps_per_epoch) break;
      tb::Tensor logits = (*net)(b.inputs), loss;
      if (r.method == Method::scratch) {
        loss = tb::cross_entropy(logits, b.targets);
      } else if (r.method == Method::kd) {
        loss = (*distill)(logits, cache->logits(step, b.targets), b.targets);
      } else { // the teacher's forward fills the feature hooks: run it before features->loss()
        tb::Tensor teacher_logits = teacher->logits(b.inputs);
        loss = (*distill)(logits, teacher_logits, b.targets) + features->loss() * o.feature_weight;
      }
      opt.zero_grad();
      if (ex::checked_backward(loss, *net, ex::OnNonFinite::stop, epoch + 1, step)) {
        double lr = opt.lr(), value = loss.item();
        opt.step();
        meter.add(value * b.targets.numel(), logits, b.targets);
        metrics.steps.push_back({epoch * steps_per_epoch + step + 1, epoch + 1, value, lr});
        progress.update(step + 1, meter);
      }
      if (features) features->clear(); // drop the captured activations and their graphs
      sched->step();
      step++;
    }
    progress.finish();
    ex::Score test = ex::evaluate(*net, test_loader);
    accuracy = test.accuracy;
    std::printf("  epoch %d: train loss %.4f acc %.2f%% | test acc %.2f%% | %.1f s\n", epoch + 1,
                meter.loss(), 100 * meter.accuracy(), 100 * test.accuracy, progress.seconds());
    metrics.epochs.push_back({epoch + 1, {{"train_loss", meter.loss()},
                                          {"train_acc", meter.accuracy()},
                                          {"test_loss", test.loss}, {"test_acc", test.accuracy},
                                          {"seconds", progress.seconds()}}});
  }
  fs::create_directories(r.dir);
  metrics.save(r.dir);
  ex::save_checkpoint(r.dir / "checkpoint.safetensors", {.model = *net, .optimizer = &opt},
                      {.epoch = r.epochs, .metrics = metrics,
                       .metadata = {{"model", r.model}}});
  return {net, accuracy};
}

// ---- 3. The experiment --------------------------------------------------------------------------

static std::string alpha_weights_name(kd::AlphaWeights w) {
  for (const auto& [name, value] : kAlphaWeights)
    if (value == w) return name;
  return "unset";
}

static json recipe_json(const Options& o) {
  return {{"temperature", o.temperature}, {"alpha", o.alpha},
          {"alpha_weights", alpha_weights_name(o.alpha_weights)},
          {"feature_weight", o.feature_weight}, {"epochs", o.epochs},
          {"batch_size", o.batch_size}, {"lr", o.lr}};
}

// Mean accuracy per (student, method) over the seeds, and the gap closed:
// (mean distilled − mean scratch) / (teacher − mean scratch).
static json summarize(const json& rows, double teacher_acc) {
  std::map<std::pair<std::string, std::string>, std::pair<double, int>> mean;
  for (const auto& r : rows) {
    auto& m = mean[{r["student"], r["method"]}];
    m.first += r["accuracy"].get<double>();
    m.second++;
  }
  json out = json::array();
  for (const auto& [key, m] : mean) {
    double acc = m.first / m.second;
    json row = {{"student", key.first}, {"method", key.second}, {"mean_accuracy", acc},
                {"runs", m.second}};
    auto scratch = mean.find({key.first, "scratch"});
    if (key.second != "scratch" && scratch != mean.end()) {
      double base = scratch->second.first / scratch->second.second;
      row["gap_closed"] = (acc - base) / (teacher_acc - base);
    }
    out.push_back(row);
  }
  return out;
}

static int run(const Options& o) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  if (o.threads > 0) tb::set_num_threads(o.threads);
  fs::path out = o.out;
  ex::prepare_output_dir(out);
  kd::DistillationOptions recipe{.temperature = o.temperature, .alpha = o.alpha,
                                 .alpha_weights = o.alpha_weights};
  kd::DistillationLoss check(recipe); // bad settings fail now, not after the teacher

  Data d = ex::load_fashion_mnist({.root = o.data, .limit_train = o.limit_train,
                                    .limit_test = o.limit_test, .batch_size = o.batch_size});
  LogitCaches caches;

  // The teacher: loaded, or trained with the main job's recipe (seed 0).
  tb::nn::ModulePtr teacher_net;
  if (!o.teacher.empty()) {
    teacher_net = make_model("cnn");
    ex::load_checkpoint(o.teacher, {.model = *teacher_net}, {{"model", "cnn"}});
    std::printf("teacher: loaded from %s\n", o.teacher.c_str());
  } else {
    std::printf("teacher: training the main job's CNN for %d epochs\n", o.teacher_epochs);
    teacher_net = train(o, d, {.model = "cnn", .seed = 0, .epochs = o.teacher_epochs,
                               .dir = out / "teacher"}, nullptr, caches).model;
  }
  kd::Teacher teacher(teacher_net);
  tb::data::DataLoader test_loader(d.test, {.batch_size = 500, .transform = d.transform});
  double teacher_acc = ex::evaluate(teacher.model(), test_loader).accuracy;
  std::printf("teacher: %.2f%% test accuracy, %lld parameters\n", 100 * teacher_acc,
              (long long)teacher_net->num_parameters());

  json results = {{"teacher_accuracy", teacher_acc}, {"rows", json::array()}};
  for (int seed = 0; seed < o.seeds; seed++)
    for (const auto& student : o.students)
      for (const auto& [name, method] : kMethods) {
        if (std::find(o.methods.begin(), o.methods.end(), name) == o.methods.end()) continue;
        std::string tag = fmt::format("{}_{}_seed{}", student, name, seed);
        Trained t = train(o, d, {.model = student, .seed = (uint64_t)seed, .method = method,
                                 .loss = recipe, .epochs = o.epochs,
                                 .dir = out / "runs" / tag}, &teacher, caches);
        std::printf("%s: %.2f%%\n", tag.c_str(), 100 * t.accuracy);
        results["rows"].push_back({{"student", student}, {"seed", seed}, {"method", name},
                                   {"accuracy", t.accuracy},
                                   {"params", t.model->num_parameters()}});
        ex::write_file_atomic(out / "results.json", results.dump(2) + "\n");
      }
  json summary = {{"teacher_accuracy", teacher_acc}, {"recipe", recipe_json(o)},
                  {"seeds", o.seeds}, {"students", summarize(results["rows"], teacher_acc)}};
  ex::write_file_atomic(out / "summary.json", summary.dump(2) + "\n");
  std::printf("\n%-20s %-11s %9s %11s\n", "student", "method", "mean acc", "gap closed");
  for (const auto& s : summary["students"])
    std::printf("%-20s %-11s %8.2f%% %10s\n", s["student"].get<std::string>().c_str(),
                s["method"].get<std::string>().c_str(), 100 * s["mean_accuracy"].get<double>(),
                s.contains("gap_closed")
                    ? fmt::format("{:.1f}%", 100 * s["gap_closed"].get<double>()).c_str()
                    : "-");

  // The temperature × alpha sweep (seed 0), with its scratch baseline.
  if (!o.no_sweep) {
    int epochs = o.sweep_epochs > 0 ? o.sweep_epochs : o.epochs;
    auto sweep_run = [&](Method m, double T, double alpha, const std::string& tag) {
      kd::DistillationOptions l{.temperature = T, .alpha = alpha,
                                .alpha_weights = o.alpha_weights};
      return train(o, d, {.model = o.sweep_student, .seed = 0, .method = m, .loss = l,
                          .epochs = epochs, .dir = out / "sweep" / tag}, &teacher, caches)
          .accuracy;
    };
    json sweep = {{"student", o.sweep_student}, {"seed", 0}, {"epochs", epochs},
                  {"alpha_weights", alpha_weights_name(o.alpha_weights)},
                  {"teacher_accuracy", teacher_acc},
                  {"scratch_accuracy", sweep_run(Method::scratch, 1, 0, "scratch")},
                  {"cells", json::array()}};
    for (double T : o.sweep_temperatures)
      for (double a : o.sweep_alphas) {
        double acc = sweep_run(Method::kd, T, a, fmt::format("T{}_alpha{}", T, a));
        std::printf("sweep T=%g alpha=%g: %.2f%%\n", T, a, 100 * acc);
        sweep["cells"].push_back({{"temperature", T}, {"alpha", a}, {"accuracy", acc}});
        ex::write_file_atomic(out / "sweep.json", sweep.dump(2) + "\n");
      }
    bool plotted = ex::plot_metrics(TB_SOURCE_DIR "/tools/plot_distill.py", out / "sweep.json",
                                    out / "sweep.png");
    std::printf("sweep: %s\n", plotted ? (out / "sweep.png").c_str()
                                       : "plot not drawn (python3-matplotlib missing?)");
  }
  std::printf("results: %s\nsummary: %s\n", (out / "results.json").c_str(),
              (out / "summary.json").c_str());
  return 0;
}

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"Distils the Fashion-MNIST CNN into smaller students.", "distill_fashion_mnist"};
  add_flags(app, o);
  if (auto exit_code = ex::parse_flags(app, argc, argv)) return *exit_code;
  try {
    return run(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "distill_fashion_mnist: %s\n", e.what());
    return 1;
  }
}
