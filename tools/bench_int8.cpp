// tools/bench_int8.cpp — integer (u8 x s8, kernels/qconv.h) against float32 (oneDNN) layers, and
// the whole Fashion-MNIST CNN converted to int8 against float32. Figures go to docs/benchmarks.md
// ("INT8 kernels").
//
//   build/tools/bench_int8 [--runs N] [--threads N] [--quick] [--cpu-time]
//
// --cpu-time times with the process's CPU clock instead of the wall clock (as bench_sparse): with
// --threads 1 on a shared, oversubscribed machine it leaves out the time spent waiting for a core.
// Kernels: the same geometry through Conv2dKernels::cpu (float32, NHWC, oneDNN) and
// QConvKernels::cpu (uint8 NHWC, oneDNN int8, requantized to uint8); the fc layer through
// tb::linear (float32) and QConvKernels::cpu.linear. Both sides are the kernel call alone (the
// float side reorders its OIHW weights per call, and so does the integer one). GOP/s counts
// 2 x multiply-adds. Whole model: the CNN of examples/train_fashion_mnist.cpp in eval mode
// (float32, channels-last input) against the same model fused, prepared, calibrated on random
// inputs and converted (integer conv / linear; the float glue between them: quantize at the
// input, max pools and flatten on float carriers); the same for MobileNetV2 (small-input
// 1x28x28 and 3x224x224). Median of --runs after 3 warm-up calls.
#include <tb/models.h>
#include <tb/quant.h>
#include <tb/tb.h>

#include "kernels/conv.h"
#include "kernels/qconv.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <functional>
#include <string>
#include <vector>

namespace {

using namespace tb;
namespace k = tb::kernels;

bool cpu_time = false; // --cpu-time

double now_ms() {
  if (cpu_time) {
    timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
  }
  return std::chrono::duration<double, std::milli>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

double median_ms(const std::function<void()>& fn, int runs) {
  for (int i = 0; i < 3; i++) fn();
  std::vector<double> t;
  for (int i = 0; i < runs; i++) {
    double t0 = now_ms();
    fn();
    t.push_back(now_ms() - t0);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

struct ConvShape {
  const char* name;
  int64_t N, C, H, W, O, K, stride, pad, groups;
};

void bench_conv(const ConvShape& s, int runs) {
  k::Conv2dGeom g{.N = s.N, .C = s.C, .H = s.H, .W = s.W, .O = s.O, .KH = s.K, .KW = s.K};
  g.stride_h = g.stride_w = s.stride;
  g.pad_h = g.pad_w = s.pad;
  g.groups = s.groups;
  g.OH = (s.H + 2 * s.pad - s.K) / s.stride + 1;
  g.OW = (s.W + 2 * s.pad - s.K) / s.stride + 1;
  int64_t Cg = s.C / s.groups;
  Tensor xf = randn({s.N, s.H, s.W, s.C}), wf = randn({s.O, Cg, s.K, s.K}), bf = randn({s.O});
  Tensor yf = empty({s.N, g.OH, g.OW, s.O});
  Tensor xq = randint(0, 256, {s.N, s.H, s.W, s.C}).to(kUInt8);
  Tensor wq = randint(-127, 128, {s.O, Cg, s.K, s.K}).to(kInt8);
  Tensor yq = empty({s.N, g.OH, g.OW, s.O}, TensorOptions(kUInt8));
  std::vector<float> m(s.O, 0.001f);
  std::vector<int32_t> b(s.O, 100);
  k::Requant r{.in_zp = 3, .out_zp = 0, .multiplier = m.data(), .bias = b.data(),
               .act = k::QAct::ReLU};
  k::Strides4 xs = k::nhwc_strides(s.C, s.H, s.W), ys = k::nhwc_strides(s.O, g.OH, g.OW);
  double t_f = median_ms([&] {
    k::Conv2dKernels::cpu.forward(kFloat32, g, xf.raw_data(), xs, wf.raw_data(), bf.raw_data(),
                                  yf.raw_data(), ys);
  }, runs);
  double t_q = median_ms([&] {
    k::QConvKernels::cpu.conv2d(g, xq.data<uint8_t>(), wq.data<int8_t>(), r, yq.data<uint8_t>());
  }, runs);
  double gop = 2.0 * s.N * g.OH * g.OW * s.O * Cg * s.K * s.K * 1e-9;
  std::printf("%-34s %9.3f %9.3f %9.0f %9.0f %7.2fx\n", s.name, t_f, t_q, gop / (t_f * 1e-3),
              gop / (t_q * 1e-3), t_f / t_q);
}

void bench_linear(const char* name, int64_t N, int64_t I, int64_t O, int runs) {
  Tensor xf = randn({N, I}), wf = randn({O, I}), bf = randn({O});
  Tensor xq = randint(0, 256, {N, I}).to(kUInt8), wq = randint(-127, 128, {O, I}).to(kInt8);
  Tensor yq = empty({N, O}, TensorOptions(kUInt8));
  std::vector<float> m(O, 0.001f);
  std::vector<int32_t> b(O, 100);
  k::Requant r{.in_zp = 3, .out_zp = 0, .multiplier = m.data(), .bias = b.data(),
               .act = k::QAct::ReLU};
  no_grad ng;
  double t_f = median_ms([&] { linear(xf, wf, bf); }, runs);
  double t_q = median_ms([&] {
    k::QConvKernels::cpu.linear(N, I, O, xq.data<uint8_t>(), wq.data<int8_t>(), r,
                                yq.data<uint8_t>());
  }, runs);
  double gop = 2.0 * N * I * O * 1e-9;
  std::printf("%-34s %9.3f %9.3f %9.0f %9.0f %7.2fx\n", name, t_f, t_q, gop / (t_f * 1e-3),
              gop / (t_q * 1e-3), t_f / t_q);
}

// The CNN of examples/train_fashion_mnist.cpp.
std::shared_ptr<nn::Sequential> cnn() {
  using namespace nn;
  auto net = std::make_shared<Sequential>();
  net->push_back(std::make_shared<Conv2d>(
      Conv2dOptions{.in_channels = 1, .out_channels = 32, .kernel_size = 3, .padding = 1}));
  net->push_back(std::make_shared<BatchNorm2d>(32));
  net->push_back(std::make_shared<ReLU>());
  net->push_back(std::make_shared<MaxPool2d>(2));
  net->push_back(std::make_shared<Conv2d>(
      Conv2dOptions{.in_channels = 32, .out_channels = 64, .kernel_size = 3, .padding = 1}));
  net->push_back(std::make_shared<BatchNorm2d>(64));
  net->push_back(std::make_shared<ReLU>());
  net->push_back(std::make_shared<MaxPool2d>(2));
  net->push_back(std::make_shared<Flatten>());
  net->push_back(std::make_shared<Linear>(64 * 7 * 7, 128));
  net->push_back(std::make_shared<ReLU>());
  net->push_back(std::make_shared<Linear>(128, 10));
  return net;
}

// A float model (eval) against its int8 conversion: fused, prepared, calibrated on 4 random
// batches of `calib` inputs, converted. Rows for each batch size.
void bench_model(const std::string& name, nn::ModulePtr f32, Shape input,
                 std::vector<int64_t> batches, int runs) {
  f32->eval();
  auto model = std::make_shared<quant::QuantWrapper>(nn::clone(*f32));
  model->eval();
  quant::fuse_modules(*model, quant::find_fusable_groups(*model));
  quant::prepare(*model);
  {
    no_grad ng;
    Shape calib = input;
    calib[0] = 8;
    for (int i = 0; i < 4; i++) (*model)(randn(calib));
  }
  quant::ConversionReport rep = quant::convert(*model);
  int integer = 0, layers = 0;
  for (auto& l : rep.layers) {
    integer += l.reason.find("integer kernel") != std::string::npos;
    layers += l.reason.find("kernel") != std::string::npos;
  }
  no_grad ng;
  for (int64_t n : batches) {
    Shape s = input;
    s[0] = n;
    Tensor x = randn(s).contiguous_channels_last();
    double t_f = median_ms([&] { (*f32)(x); }, runs);
    double t_q = median_ms([&] { (*model)(x); }, runs);
    std::printf("%-26s %5d/%-5d %6lld %10.3f %12.0f %10.3f %12.0f %7.2fx\n", name.c_str(), integer,
                layers, (long long)n, t_f, n / t_f * 1e3, t_q, n / t_q * 1e3, t_f / t_q);
  }
}

} // namespace

int main(int argc, char** argv) {
  int runs = 30, threads = 0;
  bool quick = false;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    if (a == "--runs" && i + 1 < argc) runs = std::atoi(argv[++i]);
    else if (a == "--threads" && i + 1 < argc) threads = std::atoi(argv[++i]);
    else if (a == "--quick") quick = true;
    else if (a == "--cpu-time") cpu_time = true;
    else {
      std::fprintf(stderr, "usage: bench_int8 [--runs N] [--threads N] [--quick] [--cpu-time]\n");
      return 2;
    }
  }
  if (threads > 0) omp_set_num_threads(threads);
  if (quick) runs = 3;
  std::printf("threads %d, median of %d runs, %s clock\n", omp_get_max_threads(), runs,
              cpu_time ? "process CPU" : "wall");
  std::printf("%-34s %9s %9s %9s %9s %8s\n", "layer", "f32 ms", "int8 ms", "f32 GOP/s",
              "int8 GOP/s", "speedup");
  std::vector<ConvShape> shapes = {
      {"3x3 64->64 56x56 b1", 1, 64, 56, 56, 64, 3, 1, 1, 1},
      {"3x3 64->64 56x56 b32", 32, 64, 56, 56, 64, 3, 1, 1, 1},
      {"dw 3x3 144 28x28 b1", 1, 144, 28, 28, 144, 3, 1, 1, 144},
      {"dw 3x3 144 28x28 b32", 32, 144, 28, 28, 144, 3, 1, 1, 144},
      {"1x1 32->192 28x28 b1", 1, 32, 28, 28, 192, 1, 1, 0, 1},
      {"1x1 32->192 28x28 b32", 32, 32, 28, 28, 192, 1, 1, 0, 1},
      {"CNN conv1 3x3 1->32 28x28 b64", 64, 1, 28, 28, 32, 3, 1, 1, 1},
      {"CNN conv2 3x3 32->64 14x14 b64", 64, 32, 14, 14, 64, 3, 1, 1, 1},
  };
  if (quick) shapes.resize(1), shapes[0].N = 1;
  for (const auto& s : shapes) bench_conv(s, runs);
  bench_linear("CNN fc 3136->128 b64", 64, 3136, 128, runs);
  std::printf("\nwhole models: float32 (eval, unfused) vs int8 (converted), ms per batch\n");
  std::printf("%-26s %11s %6s %10s %12s %10s %12s %8s\n", "model", "int layers", "batch",
              "f32 ms", "f32 img/s", "int8 ms", "int8 img/s", "speedup");
  manual_seed(0);
  bench_model("cnn 1x28x28", cnn(), {1, 1, 28, 28}, {1, 64}, runs);
  if (!quick) {
    bench_model("mobilenet_v2 small 1x28x28",
                models::create("mobilenet_v2", {.num_classes = 10, .small_input = true,
                                                .in_channels = 1}),
                {1, 1, 28, 28}, {1, 64}, runs);
    bench_model("mobilenet_v2 3x224x224", models::create("mobilenet_v2", {}), {1, 3, 224, 224},
                {1}, runs);
  }
  return 0;
}
