// tests/test_experiment.cpp — tb/experiment.h: flags, files, metrics, progress, checkpoints,
// evaluation and the NaN/Inf guard of a training step; and tb::data::Subset, which the examples
// use for their quick runs.
#include "gradcheck.h"

#include <tb/experiment.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include <unistd.h>

namespace fs = std::filesystem;
namespace ex = tb::experiment;
using tbtest::check_error;

namespace {

// A fresh scratch folder per test case.
fs::path scratch(const std::string& name) {
  fs::path d = fs::temp_directory_path() /
               fmt::format("tb_test_experiment_{}_{}", ::getpid(), name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::string read_text(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

// The flags of a small training program, parsed from `args`; exit code and what went to
// stdout/stderr.
struct Flags {
  int epochs = 3, threads = 0;
  int64_t batch_size = 64;
  double lr = 0.05;
  ex::OnNonFinite on_nonfinite = ex::OnNonFinite::stop;
  std::string model = "cnn";
  std::optional<int> exit_code;
  std::string out, err;
};

Flags parse(std::vector<const char*> args) {
  Flags f;
  CLI::App app{"A test program.", "prog"};
  app.add_option("--epochs", f.epochs, "epochs")->check(ex::at_least(1));
  app.add_option("--threads", f.threads, "threads")->check(ex::at_least(0));
  app.add_option("--batch-size", f.batch_size, "batch size")->check(ex::at_least<int64_t>(1));
  app.add_option("--lr", f.lr, "learning rate")->check(ex::greater_than(0));
  app.add_option("--on-nonfinite", f.on_nonfinite, "on NaN")
      ->transform(ex::one_of(ex::kOnNonFinite))->default_str("stop");
  app.add_option("--model", f.model, "model")->check(ex::one_of({"cnn", "mlp"}));
  args.insert(args.begin(), "prog");
  std::stringstream out, err;
  std::streambuf* old_out = std::cout.rdbuf(out.rdbuf());
  std::streambuf* old_err = std::cerr.rdbuf(err.rdbuf());
  f.exit_code = ex::parse_flags(app, (int)args.size(), args.data());
  std::cout.rdbuf(old_out);
  std::cerr.rdbuf(old_err);
  f.out = out.str(), f.err = err.str();
  return f;
}

void check_contains(const std::string& text, const std::vector<std::string>& needles) {
  for (const auto& n : needles)
    CHECK_MESSAGE(text.find(n) != std::string::npos, "'" << text << "' lacks '" << n << "'");
}

// Linear(2, 3) with weights set by hand, bias zero.
std::shared_ptr<tb::nn::Linear> small_linear() {
  auto lin = std::make_shared<tb::nn::Linear>(2, 3);
  tb::no_grad guard;
  lin->weight().copy_(tb::from_vector(std::vector<float>{1, 0, 0, 1, -1, -1}, {3, 2}));
  lin->bias().copy_(tb::zeros({3}));
  return lin;
}

} // namespace

TEST_SUITE("experiment") {

TEST_CASE("flags: good values parse; bad ones exit 2 naming the flag and what it accepts") {
  Flags ok =
      parse({"--epochs", "5", "--batch-size", "128", "--on-nonfinite", "skip", "--lr", "0.1"});
  CHECK_FALSE(ok.exit_code.has_value());
  CHECK(ok.epochs == 5);
  CHECK(ok.batch_size == 128);
  CHECK(ok.on_nonfinite == ex::OnNonFinite::skip);
  CHECK(ok.lr == 0.1);
  CHECK(ok.err.empty());

  struct Case {
    std::vector<const char*> args;
    std::vector<std::string> needles;
  };
  std::vector<Case> cases = {
      {{"--epochs", "abc"}, {"prog: --epochs", "'abc'", "accepts an integer >= 1", "--help"}},
      {{"--epochs", "0"}, {"--epochs", "'0'", "accepts an integer >= 1"}},
      {{"--epochs", "2.5"}, {"--epochs", "'2.5'", "an integer >= 1"}},
      {{"--epochs", "99999999999"}, {"--epochs", "99999999999", "an integer"}},
      {{"--threads", "-3"}, {"--threads", "'-3'", "accepts an integer >= 0"}},
      {{"--lr", "0"}, {"--lr", "accepts a number > 0"}},
      {{"--lr", "nan"}, {"--lr", "accepts a number > 0"}},
      {{"--on-nonfinite", "maybe"}, {"--on-nonfinite", "'maybe'", "one of stop, skip"}},
      {{"--model", "vgg"}, {"--model", "'vgg'", "one of cnn, mlp"}},
      {{"--epochs"}, {"--epochs", "missing value", "accepts INT"}},
      {{"--bogus"}, {"--bogus", "not expected", "--help"}},
      {{"stray"}, {"stray", "not expected"}},
  };
  for (const Case& c : cases) {
    CAPTURE(c.args[0]);
    Flags f = parse(c.args);
    CHECK(f.exit_code == 2);
    check_contains(f.err, c.needles);
  }
}

TEST_CASE("flags: --help exits 0 and lists each flag with its checks and default") {
  Flags f = parse({"--help"});
  CHECK(f.exit_code == 0);
  check_contains(f.out, {"Usage: prog", "--epochs INT:>=1", "epochs (default 3)", "--lr FLOAT:>0",
                         "--on-nonfinite ENUM:stop|skip", "(default stop)",
                         "--model TEXT:cnn|mlp"});
}

TEST_CASE("flags: the checks on their own, and a batch larger than the data set") {
  std::string s = "17";
  CHECK(ex::at_least(1)(s).empty());
  s = "-1";
  CHECK(ex::at_least<uint64_t>(0)(s) == "got '-1', accepts an integer >= 0");
  s = "1e30";
  CHECK(ex::greater_than(0)(s).empty());
  s = "inf";
  CHECK_FALSE(ex::greater_than(0)(s).empty());
  CHECK(ex::parse_number<int>("12") == 12);
  CHECK_FALSE(ex::parse_number<int>("12x").has_value());
  CHECK_FALSE(ex::parse_number<int>("").has_value());
  ex::check_batch_size(1000, 1000);
  check_error([] { ex::check_batch_size(5000, 1000); },
              {"--batch-size 5000", "larger than the training set (1000 images)", "1 to 1000"});
  s = "cpu";
  CHECK(ex::device_name()(s).empty());
  s = "tpu";
  check_contains(ex::device_name()(s), {"'tpu'", "accepts cpu"});
}

TEST_CASE("write_file_atomic: the content, no temporary file left, errors name the path") {
  fs::path dir = scratch("atomic");
  fs::path file = dir / "a.txt";
  ex::write_file_atomic(file, "first\n");
  ex::write_file_atomic(file, std::string("second\0line\n", 12)); // replaces, bytes as given
  CHECK(read_text(file) == std::string("second\0line\n", 12));
  CHECK(std::distance(fs::directory_iterator(dir), fs::directory_iterator()) == 1);

  check_error([&] { ex::write_file_atomic(dir / "missing" / "b.txt", "x"); },
              {(dir / "missing" / "b.txt").string(), "No such file or directory"});
  fs::create_directory(dir / "c.txt"); // the rename fails: a folder is in the way
  fs::create_directory(dir / "c.txt" / "inside");
  check_error([&] { ex::write_file_atomic(dir / "c.txt", "x"); }, {"c.txt", "rename"});
  CHECK(std::distance(fs::directory_iterator(dir), fs::directory_iterator()) == 2);
  fs::remove_all(dir);
}

TEST_CASE("prepare_output_dir: creates the folder, or names the one it cannot write") {
  fs::path dir = scratch("out");
  ex::prepare_output_dir(dir / "a" / "b");
  CHECK(fs::is_directory(dir / "a" / "b"));
  CHECK(fs::is_empty(dir / "a" / "b")); // the probe file is gone
  check_error([] { ex::prepare_output_dir("/proc/tb_cannot_write/x"); },
              {"output folder", "/proc/tb_cannot_write/x"});
  fs::remove_all(dir);
}

TEST_CASE("metrics: JSON round trip (NaN as null), CSV in logged order and exact") {
  ex::MetricsLog log;
  log.steps = {{1, 1, 2.25, 0.1}, {2, 1, std::nan(""), 0.1}};
  log.epochs.push_back({1, {{"train_loss", 0.1 + 0.2}, {"test_acc", 0.75}, {"lr", 1e-3}}});
  log.epochs.push_back({2, {{"train_loss", 1.0 / 3}, {"test_acc", 0.8}}});
  ex::MetricsLog back = ex::MetricsLog::from_json(log.to_json());
  REQUIRE(back.epochs.size() == 2);
  REQUIRE(back.steps.size() == 2);
  CHECK(back.epochs[0].epoch == 1);
  CHECK(back.epochs[0].values == log.epochs[0].values); // same names, order and doubles
  CHECK(back.epochs[1].at("train_loss") == 1.0 / 3);
  CHECK(back.steps[0].step == 1);
  CHECK(back.steps[0].loss == 2.25);
  CHECK(std::isnan(back.steps[1].loss));
  CHECK(back.to_json() == log.to_json());

  CHECK(log.to_csv() == "epoch,train_loss,test_acc,lr\n"
                        "1,0.30000000000000004,0.75,0.001\n"
                        "2,0.3333333333333333,0.8,\n");
  check_error([&] { log.epochs[1].at("lr"); }, {"epoch 2", "'lr'"});
  check_error([] { ex::MetricsLog::from_json("{\"epochs\": [{\"epoch\": 1}]"); },
              {"malformed metrics JSON"});
  check_error([] { ex::MetricsLog::from_json("{\"epochs\": []}"); }, {"malformed", "steps"});

  fs::path dir = scratch("metrics");
  log.save(dir);
  CHECK(read_text(dir / "metrics.csv") == log.to_csv());
  CHECK(ex::MetricsLog::from_json(read_text(dir / "metrics.json")).to_json() == log.to_json());
  fs::remove_all(dir);
}

TEST_CASE("progress: plain lines every 10% when not a terminal, a bar redrawn on one") {
  std::FILE* f = std::tmpfile();
  REQUIRE(f != nullptr);
  {
    ex::Progress p({.total = 20, .label = "epoch 1/2", .out = f, .tty = false});
    ex::Meter m{.loss_sum = 10, .correct = 3, .seen = 4};
    for (int64_t done = 1; done <= 20; done++) p.update(done, m);
    p.finish();
  }
  auto text = [&] {
    std::string s(std::ftell(f), '\0');
    std::rewind(f);
    CHECK(std::fread(s.data(), 1, s.size(), f) == s.size());
    return s;
  };
  std::string log = text();
  CHECK(std::count(log.begin(), log.end(), '\n') == 11); // done = 1, 2, 4, ..., 20
  CHECK(log.find('\r') == std::string::npos);
  CHECK(log.rfind("epoch 1/2 batch 1/20 loss 2.5000 acc 75.00% ", 0) == 0);
  CHECK(log.find("epoch 1/2 batch 20/20 loss") != std::string::npos);
  CHECK(log.find("epoch 1/2 batch 3/20") == std::string::npos);
  std::fclose(f);

  f = std::tmpfile();
  {
    ex::Progress p({.total = 4, .label = "e", .out = f, .tty = true});
    p.update(2, ex::Meter{.loss_sum = 1, .correct = 1, .seen = 2});
    p.finish();
  }
  std::string bar = text();
  CHECK(bar.rfind("\re [###############...............] 2/4 loss 0.5000 acc 50.00%", 0) == 0);
  CHECK(bar.back() == '\n');
  std::fclose(f);
}

TEST_CASE("evaluate: mean cross-entropy and accuracy by hand, training flag restored") {
  auto lin = small_linear(); // logits = (x0, x1, -x0 - x1)
  std::vector<float> xs = {2, 0, 0, 1, 1, 1, -1, -2, 0.5f, 0};
  std::vector<int64_t> ys = {0, 1, 0, 2, 1};
  auto set = std::make_shared<tb::data::TensorDataset>(tb::from_vector(xs, {5, 2}),
                                                       tb::from_vector(ys, {5}));
  tb::data::DataLoader loader(set, {.batch_size = 2}); // batches of 2, 2, 1
  double loss = 0;
  int correct = 0;
  for (int i = 0; i < 5; i++) {
    double l[3] = {xs[2 * i], xs[2 * i + 1], -xs[2 * i] - xs[2 * i + 1]};
    double lse = std::log(std::exp(l[0]) + std::exp(l[1]) + std::exp(l[2]));
    loss += lse - l[ys[i]];
    correct += (int)(std::max_element(l, l + 3) - l) == ys[i];
  }
  CHECK(correct == 4); // sample 2 ties (1, 1): argmax takes the first, class 0, which is right
  ex::Score s = ex::evaluate(*lin, loader);
  CHECK(s.loss == doctest::Approx(loss / 5).epsilon(1e-6));
  CHECK(s.accuracy == doctest::Approx(0.8));
  CHECK(lin->is_training());
  lin->eval();
  ex::evaluate(*lin, loader);
  CHECK_FALSE(lin->is_training());
}

TEST_CASE("checked_backward: a finite step goes on; NaN stops naming the step, or is skipped") {
  auto lin = small_linear();
  tb::Tensor x = tb::from_vector(std::vector<float>{1, 2}, {1, 2});
  tb::Tensor y = tb::from_vector(std::vector<int64_t>{1}, {1});
  CHECK(ex::checked_backward(tb::cross_entropy((*lin)(x), y), *lin, ex::OnNonFinite::stop, 1, 0));
  CHECK(lin->weight().grad().defined());

  tb::Tensor nan_loss = tb::mul(tb::sum((*lin)(x)), tb::full({}, NAN));
  check_error([&] { ex::checked_backward(nan_loss, *lin, ex::OnNonFinite::stop, 2, 5); },
              {"training stopped", "nan", "epoch 2 step 5", "--on-nonfinite skip"});
  CHECK_FALSE(ex::checked_backward(nan_loss, *lin, ex::OnNonFinite::skip, 2, 5));
  CHECK_FALSE(lin->weight().grad().defined()); // gradients cleared: the step is skipped

  // A finite loss with an infinite gradient (a hook stands in for an overflow in backward).
  lin->weight().register_hook(
      [](const tb::Tensor& g) { return tb::mul(g, tb::full({}, INFINITY)); });
  check_error([&] {
    ex::checked_backward(tb::cross_entropy((*lin)(x), y), *lin, ex::OnNonFinite::stop, 1, 3);
  }, {"training stopped at epoch 1 step 3", "'weight'"});
}

TEST_CASE("checkpoint: round trip of model, optimizer, schedule, epoch and metrics") {
  fs::path dir = scratch("ckpt");
  fs::path path = dir / "checkpoint.safetensors";
  tb::manual_seed(1);
  auto lin = std::make_shared<tb::nn::Linear>(2, 3);
  tb::optim::Adam opt(lin->parameters());
  tb::optim::StepLR sched(opt, 2, 0.5);
  tb::Tensor x = tb::randn({4, 2}), y = tb::from_vector(std::vector<int64_t>{0, 1, 2, 1}, {4});
  for (int i = 0; i < 3; i++) { // momentum state and a schedule past its first decay
    opt.zero_grad();
    tb::cross_entropy((*lin)(x), y).backward();
    opt.step();
    sched.step();
  }
  ex::Checkpoint saved{.epoch = 3, .metadata = {{"model", "linear"}}};
  saved.metrics.epochs.push_back({1, {{"test_acc", 0.5}}});
  saved.metrics.steps.push_back({1, 1, 1.5, 0.1});
  ex::save_checkpoint(path, {.model = *lin, .optimizer = &opt, .scheduler = &sched}, saved);

  tb::manual_seed(2); // different weights, fresh optimizer and schedule
  auto lin2 = std::make_shared<tb::nn::Linear>(2, 3);
  tb::optim::Adam opt2(lin2->parameters());
  tb::optim::StepLR sched2(opt2, 2, 0.5);
  ex::Checkpoint back = ex::load_checkpoint(
      path, {.model = *lin2, .optimizer = &opt2, .scheduler = &sched2}, {{"model", "linear"}});
  CHECK(back.epoch == 3);
  CHECK(back.metadata == saved.metadata);
  CHECK(back.metrics.to_json() == saved.metrics.to_json());
  CHECK(tbtest::max_abs_diff(lin2->weight(), lin->weight()) == 0);
  CHECK(opt2.lr() == opt.lr());
  CHECK(sched2.last_epoch() == sched.last_epoch());
  CHECK(opt2.state_dict().keys() == opt.state_dict().keys());
  tb::SafetensorsFile file = tb::load_safetensors(path.string()); // the file format
  CHECK(file.tensors.contains("model.weight"));
  CHECK(file.tensors.contains("optim.param_groups.0.lr"));
  CHECK(file.tensors.contains("sched.last_epoch"));
  CHECK(file.metadata.at("epoch") == "3");

  // Mismatches: each names the file and what differs; the model is left as it was.
  check_error([&] { ex::load_checkpoint(dir / "none.safetensors", {.model = *lin2}); },
              {"no checkpoint", "none.safetensors"});
  check_error([&] { ex::load_checkpoint(path, {.model = *lin2}, {{"model", "cnn"}}); },
              {path.string(), "model = 'linear'", "this run has 'cnn'"});
  auto wider = std::make_shared<tb::nn::Linear>(2, 4);
  tb::Tensor before = wider->weight().clone();
  check_error([&] { ex::load_checkpoint(path, {.model = *wider}); },
              {path.string(), "does not fit", "weight"});
  CHECK(tbtest::max_abs_diff(wider->weight(), before) == 0);
  tb::nn::save(*lin, (dir / "plain.safetensors").string()); // weights only, no training metadata
  check_error([&] { ex::load_checkpoint(dir / "plain.safetensors", {.model = *lin2}); },
              {"plain.safetensors", "not a training checkpoint", "'epoch'"});
  check_error([&] { ex::save_checkpoint(path, {.model = *lin}, {.metadata = {{"epoch", "1"}}}); },
              {"'epoch' is reserved"});
  fs::remove_all(dir);
}

TEST_CASE("plot_metrics: false when the script cannot run; a PNG when matplotlib is there") {
  fs::path dir = scratch("plot");
  ex::MetricsLog log;
  for (int e = 1; e <= 2; e++)
    log.epochs.push_back({e, {{"train_loss", 1.0 / e}, {"test_loss", 1.2 / e},
                              {"train_acc", 0.4 * e}, {"test_acc", 0.3 * e}}});
  for (int s = 1; s <= 200; s++) log.steps.push_back({s, 1 + (s > 100), 1.0 / s, 0.1});
  log.save(dir);
  CHECK_FALSE(ex::plot_metrics(dir / "no_such_script.py", dir / "metrics.json", dir / "a.png"));
  if (std::system("/usr/bin/python3 -c 'import matplotlib' >/dev/null 2>&1") != 0) {
    MESSAGE("python3-matplotlib missing: the drawing itself is not tested");
  } else {
    CHECK(ex::plot_metrics(fs::path(TB_SOURCE_DIR) / "tools/plot_metrics.py", dir / "metrics.json",
                           dir / "a.png"));
    CHECK(fs::file_size(dir / "a.png") > 1000);
  }
  fs::remove_all(dir);
}

TEST_CASE("data::Subset: chosen samples, range checks, and the uint8 fast path for a window") {
  auto base = std::make_shared<tb::data::TensorDataset>(
      tb::arange(0, 10, 1, {tb::kFloat32}).reshape({10, 1}), tb::arange(0, 10, 1, {tb::kInt64}));
  tb::data::Subset odd(base, {1, 3, 5});
  CHECK(odd.size() == 3);
  CHECK(odd.get(1).target == 3);
  CHECK(tb::data::Subset::first(base, 4)->size() == 4);
  CHECK(tb::data::Subset::first(base, 100)->size() == 10);
  check_error([&] { tb::data::Subset(base, {0, 10}); }, {"indices[1] = 10", "10 samples"});
  check_error([&] { odd.get(3); }, {"index 3", "3 samples"});

  // A uint8 image set: a window of consecutive samples keeps the fast path, other orders do not.
  struct Bytes : tb::data::Dataset {
    std::vector<uint8_t> pixels = std::vector<uint8_t>(6 * 4);
    std::vector<int64_t> targets = {0, 1, 2, 3, 4, 5};
    int64_t size() const override { return 6; }
    tb::data::Example get(int64_t i) const override { return {tb::Tensor(), targets[i]}; }
    std::optional<tb::data::UInt8Images> uint8_images() const override {
      return tb::data::UInt8Images{pixels.data(), targets.data(), 6, 1, 2, 2};
    }
  };
  auto bytes = std::make_shared<Bytes>();
  auto window = tb::data::Subset(bytes, {2, 3, 4}).uint8_images();
  REQUIRE(window.has_value());
  CHECK(window->n == 3);
  CHECK(window->pixels == bytes->pixels.data() + 2 * 4);
  CHECK(window->targets[0] == 2);
  CHECK_FALSE(tb::data::Subset(bytes, {4, 2}).uint8_images().has_value());
}

} // TEST_SUITE
