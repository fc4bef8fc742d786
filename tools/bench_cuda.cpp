// tools/bench_cuda.cpp — how fast is tb's CUDA backend on this GPU, and how far from its ceiling?
//
//  (a) GEMM float32 (true float32, no TF32): tb::matmul against a raw cublasSgemm on the same
//      device buffers; the gap is tb's own overhead (the op layer, the allocator, the launch).
//  (b) memory-bound ops: add, relu and a full sum over 2^26 float32 values, a sum over dim 0
//      (a bias gradient) and a min over dim 0 (values and indices), in GB/s of the bytes they must move (read inputs once, write the output
//      once): the roofline is the card's memory bandwidth (H100 SXM: about 3.35 TB/s).
//  (c) softmax cross-entropy forward + backward on [4096, 1000] logits.
//  (d) one training step of an MLP 784-1024-1024-10 (ReLU), batch 64 and 1024: forward, loss,
//      backward, an SGD update of every parameter.
//  (e) the issue-15 model rows, named as ../shared/bench/torch_gpu_anchors.py's cases: one SGD
//      step (momentum 0.9) of the Fashion-MNIST CNN at batch 64 / 256 / 1024, of ResNet-18 and
//      MobileNetV2 in their small-input form (3x32x32) at batch 256, and eval inference of both at
//      1x3x224x224 (the model as built: optimize_for_inference has no CUDA kernels yet).
//      Written without a GPU (session 6): never run yet.
//
// Every figure is the median of timed runs after warm-up; each run ends with a device
// synchronisation, so the time covers the GPU's work, not just the launches.
// tools/bench_cuda_torch.py times the same cases in PyTorch (same names, same output columns).
//   build-cuda/tools/bench_cuda [--quick] [--tsv FILE]
#include <tb/models.h>
#include <tb/tb.h>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace {

struct Row {
  std::string name;
  double ms;
  double rate;      // TFLOP/s for GEMMs, GB/s for memory-bound ops, images/s for steps
  std::string unit;
};

// Median wall time in milliseconds of `reps` synchronised calls after `warmup` untimed ones.
double median_ms(const std::function<void()>& fn, int reps, int warmup = 3) {
  // tb's kernels run on tb's stream; the raw cuBLAS baseline runs on the default stream.
  auto sync = [] {
    tb::cuda::synchronize();
    cudaDeviceSynchronize();
  };
  for (int i = 0; i < warmup; i++) fn();
  sync();
  std::vector<double> t;
  for (int i = 0; i < reps; i++) {
    auto t0 = std::chrono::steady_clock::now();
    fn();
    sync();
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return reps % 2 ? t[reps / 2] : 0.5 * (t[reps / 2 - 1] + t[reps / 2]);
}

void print_row(std::vector<Row>& rows, const std::string& name, double ms, double rate,
               const std::string& unit, const std::string& extra = "") {
  fmt::print("{:<34}{:>10.3f}{:>12.1f} {:<10}{}\n", name, ms, rate, unit, extra);
  rows.push_back({name, ms, rate, unit});
}

// (a) C[n, n] = A[n, n] B[n, n]: tb::matmul and, on the same buffers, cublasSgemm itself.
void bench_gemm(int64_t n, int reps, std::vector<Row>& rows) {
  tb::Device gpu = tb::cuda_device(0);
  tb::Tensor a = tb::randn({n, n}).to(gpu), b = tb::randn({n, n}).to(gpu);
  tb::Tensor c = tb::empty({n, n}, {tb::kFloat32, gpu});
  cublasHandle_t h;
  if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) throw tb::Error("bench_cuda: cublasCreate failed");
  float one = 1, zero = 0;
  // Row-major C = A B is column-major C^T = B^T A^T: pass B first (see kernels/cuda/matmul.cu).
  auto raw = [&] {
    cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, (int)n, (int)n, (int)n, &one, b.data<float>(), (int)n,
                a.data<float>(), (int)n, &zero, c.data<float>(), (int)n);
  };
  tb::Tensor out;
  auto ours = [&] { out = tb::matmul(a, b); };
  double ms_raw = median_ms(raw, reps), ms_tb = median_ms(ours, reps);
  cublasDestroy(h);
  double diff = tb::max(tb::abs(tb::sub(out, c))).item();
  double tf = 2.0 * n * n * n / (ms_tb * 1e9), tf_raw = 2.0 * n * n * n / (ms_raw * 1e9);
  print_row(rows, fmt::format("gemm_f32_{}", n), ms_tb, tf, "TFLOP/s",
            fmt::format("raw cublasSgemm {:.1f} TFLOP/s, tb/raw {:.2f}{}", tf_raw, tf / tf_raw,
                        diff > 0 ? fmt::format(", max diff {:.2g}", diff) : ""));
}

// (b) memory-bound ops over n float32 values.
void bench_memory(int64_t n, int reps, std::vector<Row>& rows) {
  tb::Device gpu = tb::cuda_device(0);
  tb::Tensor x = tb::randn({n}).to(gpu), y = tb::randn({n}).to(gpu), out;
  double gb = n * 4.0 / 1e9;
  double ms = median_ms([&] { out = tb::add(x, y); }, reps);
  print_row(rows, "add_f32_64M", ms, 3 * gb / (ms * 1e-3), "GB/s");
  ms = median_ms([&] { out = tb::relu(x); }, reps);
  print_row(rows, "relu_f32_64M", ms, 2 * gb / (ms * 1e-3), "GB/s");
  ms = median_ms([&] { out = tb::sum(x); }, reps);
  print_row(rows, "sum_f32_64M", ms, gb / (ms * 1e-3), "GB/s");
  // a bias gradient: the sum over the batch of [batch, features]
  tb::Tensor g = tb::randn({4096, 1024}).to(gpu);
  ms = median_ms([&] { out = tb::sum(g, {0}); }, reps);
  print_row(rows, "sum_dim0_4096x1024", ms, 4096 * 1024 * 4.0 / 1e9 / (ms * 1e-3), "GB/s");
  // a per-channel minimum over the batch (values and indices), as an observer takes
  ms = median_ms([&] { out = tb::min(g, 0).values; }, reps);
  print_row(rows, "min_dim0_4096x1024", ms, 4096 * 1024 * 4.0 / 1e9 / (ms * 1e-3), "GB/s");
}

// (c) cross_entropy(logits [rows, classes], targets) forward and backward.
void bench_cross_entropy(int64_t rows_n, int64_t classes, int reps, std::vector<Row>& rows) {
  tb::Device gpu = tb::cuda_device(0);
  tb::Tensor logits = tb::randn({rows_n, classes}).to(gpu);
  tb::Tensor target = tb::randint(0, classes, {rows_n}, {tb::kInt64}).to(gpu);
  logits.requires_grad_(true);
  double ms = median_ms([&] {
    logits.set_grad(tb::Tensor());
    tb::cross_entropy(logits, target).backward();
  }, reps);
  // bytes: forward reads the logits, backward reads them and writes the gradient
  double gb = 3.0 * rows_n * classes * 4 / 1e9;
  print_row(rows, fmt::format("cross_entropy_{}x{}", rows_n, classes), ms, gb / (ms * 1e-3), "GB/s");
}

// (d) one SGD step of an MLP 784-1024-1024-10 on a batch of random images.
void bench_mlp_step(int64_t batch, int reps, std::vector<Row>& rows) {
  tb::Device gpu = tb::cuda_device(0);
  using namespace tb::nn;
  Sequential model({std::make_shared<Linear>(784, 1024), std::make_shared<ReLU>(),
                    std::make_shared<Linear>(1024, 1024), std::make_shared<ReLU>(),
                    std::make_shared<Linear>(1024, 10)});
  model.to(gpu);
  tb::optim::SGD opt(model.parameters(), {.lr = 0.01, .momentum = 0.9});
  tb::Tensor x = tb::randn({batch, 784}).to(gpu);
  tb::Tensor y = tb::randint(0, 10, {batch}, {tb::kInt64}).to(gpu);
  double ms = median_ms([&] {
    opt.zero_grad();
    tb::Tensor loss = tb::cross_entropy(model.forward(x), y);
    loss.backward();
    opt.step();
  }, reps);
  print_row(rows, fmt::format("mlp_train_step_b{}", batch), ms, batch / (ms * 1e-3), "img/s");
}

// (e) one SGD step of a zoo model (or the CNN) on a batch of random inputs of `shape`.
void bench_model_step(const std::string& case_name, const std::string& model, bool small_input,
                      tb::Shape shape, int64_t batch, int reps, std::vector<Row>& rows) {
  tb::Device gpu = tb::cuda_device(0);
  tb::manual_seed(0);
  auto net = tb::models::create(model, {.num_classes = 10, .small_input = small_input,
                                        .in_channels = shape[0]});
  net->to(gpu);
  tb::optim::SGD opt(net->parameters(), {.lr = 0.01, .momentum = 0.9});
  shape.insert(shape.begin(), batch);
  tb::Tensor x = tb::randn(shape).to(gpu);
  tb::Tensor y = tb::randint(0, 10, {batch}, {tb::kInt64}).to(gpu);
  double ms = median_ms([&] {
    opt.zero_grad();
    tb::Tensor loss = tb::cross_entropy((*net)(x), y);
    loss.backward();
    opt.step();
  }, reps);
  print_row(rows, fmt::format("{}_train_b{}", case_name, batch), ms, batch / (ms * 1e-3), "img/s");
}

// (e) eval inference of a zoo model at batch `batch` of 3x224x224.
void bench_model_infer(const std::string& model, int64_t batch, int reps, std::vector<Row>& rows) {
  tb::Device gpu = tb::cuda_device(0);
  tb::manual_seed(0);
  auto net = tb::models::create(model, {});
  net->eval();
  net->to(gpu);
  tb::Tensor x = tb::randn({batch, 3, 224, 224}).to(gpu);
  tb::no_grad ng;
  double ms = median_ms([&] { (*net)(x); }, reps);
  print_row(rows, fmt::format("{}_224_infer_b{}", model, batch), ms, batch / (ms * 1e-3), "img/s");
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
    } else {
      std::fprintf(stderr, "usage: %s [--quick] [--tsv FILE]\n", argv[0]);
      return a == "--help" || a == "-h" ? 0 : 2;
    }
  }
  if (!tb::cuda::is_available()) {
    std::fprintf(stderr, "bench_cuda: %s\n", tb::cuda::is_built() ? "no CUDA GPU on this machine"
                                                                  : "tb was built without CUDA");
    return 1;
  }
  try {
    tb::manual_seed(0);
    const int reps = quick ? 5 : 21;
    std::vector<Row> rows;
    fmt::print("tensorbrain bench_cuda on {}, median of {} runs\n", tb::cuda::device_name(0), reps);
    fmt::print("{:<34}{:>10}{:>12}\n", "name", "ms", "rate");
    for (int64_t n : {1024, 4096, 8192})
      if (!(quick && n > 1024)) bench_gemm(n, reps, rows);
    bench_memory(quick ? (1 << 20) : (1 << 26), reps, rows);
    bench_cross_entropy(4096, 1000, reps, rows);
    for (int64_t batch : {64, 1024}) bench_mlp_step(batch, reps, rows);
    for (int64_t batch : {64, 256, 1024})
      bench_model_step("fmnist_cnn", "cnn", false, {1, 28, 28}, batch, reps, rows);
    bench_model_step("resnet18_32px", "resnet18", true, {3, 32, 32}, 256, reps, rows);
    bench_model_step("mobilenet_v2_32px", "mobilenet_v2", true, {3, 32, 32}, 256, reps, rows);
    for (const char* m : {"resnet18", "mobilenet_v2"}) bench_model_infer(m, 1, reps, rows);
    if (!tsv.empty()) {
      FILE* f = std::fopen(tsv.c_str(), "w");
      if (!f) throw tb::Error(fmt::format("bench_cuda: cannot write {}", tsv));
      for (auto& r : rows)
        std::fprintf(f, "%s\t%.4f\t%.2f\t%s\n", r.name.c_str(), r.ms, r.rate, r.unit.c_str());
      std::fclose(f);
    }
  } catch (const tb::Error& e) {
    std::fprintf(stderr, "bench_cuda: %s\n", e.what());
    return 1;
  }
  return 0;
}
