// bench_amp — training speed of float32 against mixed precision (tb::amp) in the same process:
// the same model and batch, SGD with momentum, `steps` training steps per mode per round, the
// modes interleaved step by step (none, bf16, fp16, none, ...) so that a busy host slows every
// mode alike. Prints the median images/s of each mode over the rounds (round 0 warms up:
// primitive creation, allocator cache, and is dropped) and the median of the per-round ratios to
// float32. docs/mixed_precision.md quotes it.
//
//   build/tools/bench_amp --model cnn --batch 64 --steps 50 --rounds 5 --threads 1
//   build/tools/bench_amp --model mobilenet_v2 --steps 10 --rounds 5 --threads 1
//
// Modes: none (float32), bf16 (autocast to bfloat16), fp16 (autocast to float16 with a
// GradScaler). Inputs are random [batch, 1, 28, 28] images (Fashion-MNIST's shape) and labels.
#include <tb/tb.h>
#include <tb/amp.h>
#include <tb/models.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>
#include <string>

using namespace tb;

static double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int main(int argc, char** argv) {
  std::string model = "cnn";
  int64_t batch = 64, steps = 50;
  int rounds = 5, threads = 1;
  bool fp16 = true;
  std::string only; // --only none|bf16|fp16: run one mode alone (for a profiler)
  const char* usage =
      "usage: bench_amp [--model cnn|mobilenet_v2|...] [--batch 64] [--steps 50] [--rounds 5]\n"
      "                 [--threads 1] [--fp16 0|1] [--only none|bf16|fp16]\n";
  for (int i = 1; i < argc; i += 2) {
    std::string k = argv[i];
    if (k == "--help" || k == "-h") {
      std::printf("%s", usage);
      return 0;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "bench_amp: flag %s needs a value\n%s", k.c_str(), usage);
      return 2;
    }
    std::string v = argv[i + 1];
    if (k == "--model") model = v;
    else if (k == "--batch") batch = std::atoll(v.c_str());
    else if (k == "--steps") steps = std::atoll(v.c_str());
    else if (k == "--rounds") rounds = std::atoi(v.c_str());
    else if (k == "--threads") threads = std::atoi(v.c_str());
    else if (k == "--fp16") fp16 = v != "0";
    else if (k == "--only") only = v;
    else {
      std::fprintf(stderr, "bench_amp: unknown flag %s\n%s", k.c_str(), usage);
      return 2;
    }
  }
  if (threads > 0) set_num_threads(threads);
  manual_seed(0);
  auto net = models::create(model, {.num_classes = 10, .small_input = true, .in_channels = 1});
  optim::SGD opt(net->parameters(), optim::SGDOptions{.lr = 0.01, .momentum = 0.9});
  Tensor x = randn({batch, 1, 28, 28}), y = randint(0, 10, {batch});
  std::vector<std::string> modes = {"none", "bf16"};
  if (fp16) modes.push_back("fp16");
  if (!only.empty()) {
    if (only != "none" && only != "bf16" && only != "fp16") {
      std::fprintf(stderr, "bench_amp: --only expects none, bf16 or fp16, got %s\n", only.c_str());
      return 2;
    }
    modes = {only};
  }
  amp::GradScaler scaler;

  auto step = [&](const std::string& mode) { // one training step; its seconds
    auto t0 = std::chrono::steady_clock::now();
    {
      Tensor loss;
      {
        std::optional<amp::autocast> guard;
        if (mode != "none")
          guard.emplace(amp::AutocastOptions{.dtype = mode == "bf16" ? kBFloat16 : kFloat16});
        loss = cross_entropy((*net)(x), y);
      }
      opt.zero_grad();
      if (mode == "fp16") {
        scaler.scale(loss).backward();
        scaler.step(opt);
        scaler.update();
      } else {
        loss.backward();
        opt.step();
      }
    }
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };

  std::printf("bench_amp: %s, batch %lld, %lld steps x %d rounds per mode, %d threads\n",
              model.c_str(), (long long)batch, (long long)steps, rounds, get_num_threads());
  std::map<std::string, std::vector<double>> ips, ratio;
  for (int r = 0; r <= rounds; r++) {
    std::map<std::string, double> now; // seconds, then images/s
    for (int64_t s = 0; s < steps; s++)
      for (const auto& m : modes) now[m] += step(m);
    for (const auto& m : modes) now[m] = (double)(steps * batch) / now[m];
    if (r == 0) continue; // warm-up
    std::printf("round %d:", r);
    for (const auto& m : modes) {
      ips[m].push_back(now[m]);
      if (now.count("none")) ratio[m].push_back(now[m] / now["none"]);
      std::printf("  %s %.0f img/s", m.c_str(), now[m]);
    }
    std::printf("\n");
  }
  for (const auto& m : modes) {
    if (ratio[m].empty()) { // --only: no float32 to compare with
      std::printf("%-5s median %.0f img/s\n", m.c_str(), median(ips[m]));
      continue;
    }
    std::printf("%-5s median %.0f img/s, x%.2f of float32 (median of per-round ratios; range "
                "%.2f-%.2f)\n", m.c_str(), median(ips[m]), median(ratio[m]),
                *std::min_element(ratio[m].begin(), ratio[m].end()),
                *std::max_element(ratio[m].begin(), ratio[m].end()));
  }
  return 0;
}
