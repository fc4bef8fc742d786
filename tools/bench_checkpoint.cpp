// bench_checkpoint — peak memory (the caching allocator's statistics) and time of one training
// step (forward + backward) of a deep MLP, plain and with gradient checkpointing
// (tb::utils::checkpoint_sequential) at several segment counts. docs/checkpointing.md quotes it.
//
//   build/tools/bench_checkpoint --blocks 20 --width 512 --batch 2048 --threads 1
//
// The model: `blocks` x (Linear(width, width) -> ReLU), then Linear(width, 10). "peak" is the
// highest in-use byte count during the step; "activations" is that minus what was in use before
// it (parameters and the input; gradients are reset to none before each step, so the figure
// includes the gradients as they appear). The defaults make activations dominate: with a wide
// layer and a small batch (1024 x 256) the peak is set by the parameters' gradients at the end
// of backward, and checkpointing cannot lower it.
#include <tb/tb.h>
#include <tb/utils.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

using namespace tb;

struct Figures {
  double peak_mb = 0, act_mb = 0, ms = 0;
};

static Figures measure(nn::Sequential& net, const Tensor& x, const Tensor& y, int64_t segments,
                       int runs) {
  std::vector<double> times;
  Figures f;
  for (int r = 0; r < runs + 1; r++) { // the first run warms the allocator's cache up
    net.zero_grad(true);
    size_t before = memory_stats().in_use;
    reset_peak_memory();
    auto t0 = std::chrono::steady_clock::now();
    Tensor out = segments == 0 ? net(x) : utils::checkpoint_sequential(net, segments, x);
    cross_entropy(out, y).backward();
    double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    size_t peak = memory_stats().peak;
    if (r == 0) continue;
    times.push_back(ms);
    f.peak_mb = peak / 1048576.0;
    f.act_mb = (peak - before) / 1048576.0;
  }
  std::sort(times.begin(), times.end());
  f.ms = times[times.size() / 2];
  return f;
}

int main(int argc, char** argv) {
  int64_t blocks = 20, width = 512, batch = 2048;
  int runs = 5, threads = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i];
    long long v = std::atoll(argv[i + 1]);
    if (k == "--blocks") blocks = v;
    else if (k == "--width") width = v;
    else if (k == "--batch") batch = v;
    else if (k == "--runs") runs = (int)v;
    else if (k == "--threads") threads = (int)v;
    else {
      std::fprintf(stderr, "bench_checkpoint: unknown flag %s (--blocks, --width, --batch, "
                   "--runs, --threads)\n", k.c_str());
      return 2;
    }
  }
  if (blocks < 1 || width < 1 || batch < 1 || runs < 1) {
    std::fprintf(stderr, "bench_checkpoint: sizes and --runs must be >= 1\n");
    return 2;
  }
  if (threads > 0) set_num_threads(threads);
  manual_seed(0);
  auto net = std::make_shared<nn::Sequential>();
  for (int64_t b = 0; b < blocks; b++) {
    net->push_back(std::make_shared<nn::Linear>(width, width));
    net->push_back(std::make_shared<nn::ReLU>());
  }
  net->push_back(std::make_shared<nn::Linear>(width, 10));
  Tensor x = randn({batch, width}), y = randint(0, 10, {batch});
  int64_t children = (int64_t)net->size();
  std::printf("MLP: %lld blocks of Linear(%lld, %lld) + ReLU, batch %lld, %lld parameters "
              "(%.1f MB), %d threads, median of %d steps\n",
              (long long)blocks, (long long)width, (long long)width, (long long)batch,
              (long long)net->num_parameters(), net->num_parameters() * 4 / 1048576.0,
              get_num_threads(), runs);
  std::printf("%-22s %10s %16s %10s\n", "mode", "peak MB", "activations MB", "step ms");
  std::vector<int64_t> modes = {0, 2, 4, 5, 10, blocks};
  for (int64_t s : modes) {
    if (s > children) continue;
    Figures f = measure(*net, x, y, s, runs);
    std::string name = s == 0 ? "plain" : fmt::format("checkpoint, {} segments", s);
    std::printf("%-22s %10.1f %16.1f %10.1f\n", name.c_str(), f.peak_mb, f.act_mb, f.ms);
  }
  return 0;
}
