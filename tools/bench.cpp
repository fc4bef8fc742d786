// tools/bench.cpp — how fast are tb's two hot paths on this machine?
//
//  (a) GEMM: tb::matmul against a raw cblas_sgemm on the same buffers (what tb's CPU path should
//      reach: its own overhead is the gap), square 256..2048 and a few training-shaped ones.
//  (b) conv2d forward + backward (dx, dw, db) on ResNet-like layer shapes at batch 32, channels-last
//      activations (tb's layout for conv), with GFLOP/s and the peak memory the step used.
//
// Every figure is the median of several timed runs after warm-up runs (first runs pay oneDNN's
// primitive creation and the allocator's page faults). Flags:
//   --quick        small sizes, batch 8, 3 runs (a smoke run in seconds)
//   --tsv FILE     also write rows kind<TAB>name<TAB>ms<TAB>gflops (for tools/bench_compare.sh)
//   --threads N    tb::set_num_threads(N) (default: tb's default, the number of cores)
// tools/bench_torch.py times the same shapes in PyTorch; tools/bench_compare.sh runs both and
// prints tb / torch ratios. Keep the shape lists in sync with bench_torch.py.
#include <tb/tb.h>

#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

namespace {

struct Row {
  std::string kind, name;
  double ms, gflops;
};

// Median wall time in milliseconds of `reps` calls after `warmup` untimed ones.
double median_ms(const std::function<void()>& fn, int reps, int warmup = 2) {
  for (int i = 0; i < warmup; i++) fn();
  std::vector<double> t;
  for (int i = 0; i < reps; i++) {
    auto t0 = std::chrono::steady_clock::now();
    fn();
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return reps % 2 ? t[reps / 2] : 0.5 * (t[reps / 2 - 1] + t[reps / 2]);
}

// ---- (a) GEMM: C[M, N] = A[M, K] B[K, N], row-major float32 -----------------------------------
struct Gemm {
  std::string name;
  int64_t m, n, k;
};

void bench_gemm(const Gemm& g, int reps, std::vector<Row>& rows) {
  tb::Tensor a = tb::randn({g.m, g.k}), b = tb::randn({g.k, g.n});
  tb::Tensor c = tb::empty({g.m, g.n});
  const float *pa = a.data<float>(), *pb = b.data<float>();
  float* pc = c.data<float>();
  auto blas = [&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)g.m, (int)g.n, (int)g.k, 1.0f, pa,
                (int)g.k, pb, (int)g.n, 0.0f, pc, (int)g.n);
  };
  tb::Tensor out;
  auto ours = [&] { out = tb::matmul(a, b); };
  double ms_blas = median_ms(blas, reps), ms_tb = median_ms(ours, reps);
  // Sanity: both computed the same product (float32 sums of K terms: relative 1e-4 is generous).
  double err = 0, ref = 0;
  auto x = out.to_vector();
  for (size_t i = 0; i < x.size(); i++) {
    err = std::max(err, std::abs(x[i] - (double)pc[i]));
    ref = std::max(ref, std::abs((double)pc[i]));
  }
  double flop = 2.0 * g.m * g.n * g.k;
  double gf_tb = flop / (ms_tb * 1e6), gf_blas = flop / (ms_blas * 1e6);
  fmt::print("{:<28}{:>10.3f}{:>10.1f}{:>12.3f}{:>10.1f}{:>8.2f}{}\n", g.name, ms_tb, gf_tb, ms_blas,
             gf_blas, gf_tb / gf_blas, err > 1e-4 * ref ? "  MISMATCH vs cblas!" : "");
  rows.push_back({"gemm", g.name, ms_tb, gf_tb});
}

// ---- (b) conv2d forward + backward ---------------------------------------------------------------
struct Conv {
  std::string name;
  int64_t c, o, hw, k, stride, pad, groups;
};

void bench_conv(const Conv& cv, int64_t batch, int reps, std::vector<Row>& rows) {
  tb::Conv2dParams p;
  p.stride_h = p.stride_w = cv.stride;
  p.pad_h = p.pad_w = cv.pad;
  p.groups = cv.groups;
  int64_t ho = (cv.hw + 2 * cv.pad - cv.k) / cv.stride + 1;
  tb::Tensor x, w, b, gout;
  {
    tb::no_grad ng;
    x = tb::randn({batch, cv.c, cv.hw, cv.hw}).contiguous_channels_last();
    w = tb::mul(tb::randn({cv.o, cv.c / cv.groups, cv.k, cv.k}), 0.1);
    b = tb::zeros({cv.o});
    gout = tb::randn({batch, cv.o, ho, ho}).contiguous_channels_last();
  }
  x.requires_grad_(true);
  w.requires_grad_(true);
  b.requires_grad_(true);
  auto step = [&] {
    for (auto* t : {&x, &w, &b}) t->set_grad(tb::Tensor());
    tb::Tensor y = tb::conv2d(x, w, b, p);
    y.backward(gout);
  };
  step(); // warm the primitive cache and the allocator before measuring the peak
  tb::reset_peak_memory();
  size_t base = tb::memory_stats().in_use;
  double ms = median_ms(step, reps, 1);
  size_t peak = tb::memory_stats().peak;
  // forward, backward-data and backward-weight each cost 2 N O Ho Wo (C/g) k k
  double flop = 3 * 2.0 * batch * cv.o * ho * ho * (cv.c / cv.groups) * cv.k * cv.k;
  double gf = flop / (ms * 1e6);
  fmt::print("{:<28}{:>10.2f}{:>10.1f}{:>12.1f}{:>12.1f}\n", cv.name, ms, gf, base / 1048576.0,
             peak / 1048576.0);
  rows.push_back({"conv", cv.name, ms, gf});
}

} // namespace

int main(int argc, char** argv) {
  bool quick = false;
  std::string tsv;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    if (a == "--quick") {
      quick = true;
    } else if (a == "--tsv" && i + 1 < argc) {
      tsv = argv[++i];
    } else if (a == "--threads" && i + 1 < argc) {
      tb::set_num_threads(std::atoi(argv[++i]));
    } else {
      std::fprintf(stderr, "usage: %s [--quick] [--tsv FILE] [--threads N]\n", argv[0]);
      return a == "--help" || a == "-h" ? 0 : 2;
    }
  }
  try {
    tb::manual_seed(0);
    const int reps = quick ? 3 : 7;
    const int64_t batch = quick ? 8 : 32;
    std::vector<Row> rows;
    const char* core = std::getenv("OPENBLAS_CORETYPE");
    fmt::print("tensorbrain bench: {} threads, OpenBLAS core {} (OPENBLAS_CORETYPE={})\n",
               tb::get_num_threads(), openblas_get_corename(), core ? core : "(unset)");

    // Keep in sync with tools/bench_torch.py (SQUARE, RECT).
    std::vector<Gemm> gemms;
    for (int64_t n : {256, 512, 1024, 2048})
      if (!(quick && n > 1024)) gemms.push_back({fmt::format("square_{}", n), n, n, n});
    for (const Gemm& g : std::vector<Gemm>{
             {"mlp_fwd_64x256x784", 64, 256, 784},       // batch 64 through Linear(784, 256)
             {"fc_fwd_256x1000x512", 256, 1000, 512},     // ResNet-18 classifier, batch 256
             {"im2col_12544x64x576", 12544, 64, 576},     // 3x3 64->64 conv on 56x56, batch 4
             {"wgrad_64x576x12544", 64, 576, 12544}})     // its weight gradient
      if (!(quick && (double)g.m * g.n * g.k > 2e8)) gemms.push_back(g);

    fmt::print("\n== GEMM (float32), median of {} runs; ratio = tb / cblas_sgemm\n", reps);
    fmt::print("{:<28}{:>10}{:>10}{:>12}{:>10}{:>8}\n", "name", "tb ms", "GFLOP/s", "cblas ms",
               "GFLOP/s", "ratio");
    for (auto& g : gemms) bench_gemm(g, reps, rows);

    // Keep in sync with tools/bench_torch.py (CONVS): name, C, O, H=W, k, stride, pad, groups.
    std::vector<Conv> convs = {
        {"stem_3to64_7x7s2_224", 3, 64, 224, 7, 2, 3, 1},
        {"fmnist_1to32_3x3_28", 1, 32, 28, 3, 1, 1, 1},   // few input channels: a first layer
        {"cifar_3to32_3x3_32", 3, 32, 32, 3, 1, 1, 1},
        {"3x3_64to64_56", 64, 64, 56, 3, 1, 1, 1},
        {"3x3_128to128_28", 128, 128, 28, 3, 1, 1, 1},
        {"3x3_256to256_14", 256, 256, 14, 3, 1, 1, 1},
        {"3x3_512to512_7", 512, 512, 7, 3, 1, 1, 1},
        {"1x1_64to256_56", 64, 256, 56, 1, 1, 0, 1},
        {"dw3x3_144_56", 144, 144, 56, 3, 1, 1, 144},
    };
    fmt::print("\n== conv2d forward + backward (dx, dw, db), float32 channels-last, batch {}, "
               "median of {} runs\n",
               batch, reps);
    fmt::print("{:<28}{:>10}{:>10}{:>12}{:>12}\n", "name", "ms", "GFLOP/s", "base MiB", "peak MiB");
    for (auto& cv : convs)
      if (!(quick && cv.hw > 56)) bench_conv(cv, batch, reps, rows);

    if (!tsv.empty()) {
      FILE* f = std::fopen(tsv.c_str(), "w");
      if (!f) throw tb::Error(fmt::format("bench: cannot write {}", tsv));
      for (auto& r : rows)
        std::fprintf(f, "%s\t%s\t%.4f\t%.2f\n", r.kind.c_str(), r.name.c_str(), r.ms, r.gflops);
      std::fclose(f);
    }
  } catch (const tb::Error& e) {
    std::fprintf(stderr, "bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
