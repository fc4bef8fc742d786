// tools/bench_sparse.cpp — where does the sparse kernel beat the dense one?
//
// For the Linear and conv shapes of the pruning example (the Fashion-MNIST CNN's convs and
// classifier, MobileNetV2-like pointwise convs, a 512×512 layer) and unstructured sparsities 0..98%, times the
// dense layer (tb::linear on OpenBLAS, tb::conv2d on oneDNN) and prune::sparse_linear /
// SparseLinear (kernels/cpu/sparse.cpp) on the same input, median of --runs after warm-up, and
// prints the speed-up (dense / sparse) and the crossover: the lowest sparsity from which the
// sparse kernel stays faster. Figures go to docs/benchmarks.md ("Sparse kernels").
//
//   build/tools/bench_sparse [--runs N] [--threads N] [--quick] [--cpu-time]
//
// --cpu-time times with the process's CPU clock instead of the wall clock: with --threads 1 on a
// shared, oversubscribed machine it leaves out the time the process waited for a core (wall-clock
// medians there swing 10x between runs).
#include <tb/tb.h>
#include <tb/prune.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <functional>
#include <string>
#include <vector>

namespace {

bool cpu_time = false; // --cpu-time: process CPU time instead of wall time

double now_ms() {
  if (!cpu_time)
    return std::chrono::duration<double, std::milli>(
               std::chrono::steady_clock::now().time_since_epoch()).count();
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

double median_ms(const std::function<void()>& fn, int reps) {
  for (int i = 0; i < 2; i++) fn();
  std::vector<double> t;
  for (int i = 0; i < reps; i++) {
    double t0 = now_ms();
    fn();
    t.push_back(now_ms() - t0);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// W [out, in] with `sparsity` of its entries zero (smallest magnitudes, as L1 pruning leaves it).
tb::Tensor pruned_weight(int64_t out, int64_t in, double sparsity) {
  auto lin = std::make_shared<tb::nn::Linear>(in, out);
  if (sparsity > 0) tb::prune::l1_unstructured(*lin, "weight", {.amount = sparsity});
  tb::prune::remove_all(*lin);
  return lin->get("weight").detach();
}

struct Shape2 {
  const char* name;
  bool conv;
  int64_t out, in, n, hw; // Linear: batch n; conv: batch n of hw×hw images
  int64_t k = 1;          // conv kernel k×k, padding k/2
};

} // namespace

int main(int argc, char** argv) {
  int runs = 15;
  bool quick = false;
  for (int i = 1; i < argc; i++) {
    if (!std::strcmp(argv[i], "--runs") && i + 1 < argc) runs = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) tb::set_num_threads(std::atoi(argv[++i]));
    else if (!std::strcmp(argv[i], "--quick")) quick = true;
    else if (!std::strcmp(argv[i], "--cpu-time")) cpu_time = true;
    else {
      std::fprintf(stderr, "usage: bench_sparse [--runs N] [--threads N] [--quick] [--cpu-time]\n");
      return 2;
    }
  }
  if (quick) runs = 3;
  std::vector<Shape2> shapes = {
      {"cnn fc1 3136->128, batch 64", false, 128, 3136, 64, 1},
      {"cnn fc1 3136->128, batch 1", false, 128, 3136, 1, 1},
      {"cnn fc2 128->10, batch 64", false, 10, 128, 64, 1},
      {"linear 512->512, batch 64", false, 512, 512, 64, 1},
      {"1x1 conv 96->24, 14x14, batch 64", true, 24, 96, 64, 14},
      {"1x1 conv 64->384, 7x7, batch 64", true, 384, 64, 64, 7},
      {"1x1 conv 320->1280, 4x4, batch 64", true, 1280, 320, 64, 4},
      {"cnn conv1 3x3 1->32, 28x28, batch 64", true, 32, 1, 64, 28, 3},
      {"cnn conv2 3x3 32->64, 14x14, batch 64", true, 64, 32, 64, 14, 3},
  };
  if (quick) shapes.resize(2);
  std::vector<double> sparsities = {0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98};
  std::printf("threads %d, median of %d runs (%s); speed-up = dense ms / sparse ms\n\n",
              tb::get_num_threads(), runs, cpu_time ? "process CPU time" : "wall time");
  tb::no_grad ng;
  for (auto& s : shapes) {
    std::printf("%s\n  %-9s %10s %10s %8s\n", s.name, "sparsity", "dense ms", "sparse ms",
                "speed-up");
    double crossover = -1;
    for (double sp : sparsities) {
      tb::Tensor w = pruned_weight(s.out, s.in * s.k * s.k, sp), b = tb::randn({s.out});
      double dense, sparse;
      if (!s.conv) {
        tb::Tensor x = tb::randn({s.n, s.in});
        tb::prune::CsrMatrix csr = tb::prune::to_csr(w);
        dense = median_ms([&] { tb::linear(x, w, b); }, runs);
        sparse = median_ms([&] { tb::prune::sparse_linear(x, csr, b); }, runs);
      } else {
        tb::Tensor x = tb::randn({s.n, s.in, s.hw, s.hw});
        tb::Tensor w4 = w.reshape({s.out, s.in, s.k, s.k}).contiguous();
        tb::Conv2dParams p{.pad_h = s.k / 2, .pad_w = s.k / 2};
        tb::prune::SparseConv2d sl(w4, b, p);
        dense = median_ms([&] { tb::conv2d(x, w4, b, p); }, runs);
        sparse = median_ms([&] { sl(x); }, runs);
      }
      double ratio = dense / sparse;
      if (ratio > 1 && crossover < 0) crossover = sp;
      if (ratio <= 1) crossover = -1;
      std::printf("  %8.0f%% %10.3f %10.3f %7.2fx\n", 100 * sp, dense, sparse, ratio);
    }
    if (crossover >= 0) std::printf("  crossover: sparse faster from %.0f%%\n\n", 100 * crossover);
    else std::printf("  crossover: dense faster up to 98%%\n\n");
  }
}
