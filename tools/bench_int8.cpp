// tools/bench_int8.cpp — integer (u8 x s8, kernels/qconv.h) against float32 (oneDNN) layers, and
// the whole Fashion-MNIST CNN converted to int8 against float32. Figures go to docs/benchmarks.md
// ("INT8 kernels").
//
//   build/tools/bench_int8 [--runs N] [--threads N] [--quick] [--cpu-time]
//   build/tools/bench_int8 --profile MODEL [--batch N] [--runs N] [--threads N] [--keep-faster]
//   build/tools/bench_int8 --profile elementwise [--runs N] [--threads N]
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
#include <map>
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
  quant::ConversionReport rep = quant::convert(*model, {.input_shape = input});
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

// The integer elementwise kernels (QElementwiseKernels::cpu) on ResNet-18's and MobileNetV2's
// largest shapes at batch 1, against the float op on the same number of float32 elements.
void bench_elementwise(int runs) {
  const auto& K = k::QElementwiseKernels::cpu;
  k::QGrid ga{0.02f, 3}, gb{0.03f, 128}, gy{0.05f, 0};
  for (int64_t n : {64 * 112 * 112, 64 * 56 * 56, 128 * 28 * 28}) {
    std::vector<uint8_t> a(n, 7), b(n, 200), y(n);
    Tensor f = randn({n}), g = randn({n});
    double relu_q = median_ms([&] { K.activation(k::QActivation::ReLU, a.data(), ga, y.data(), gy, n); }, runs);
    double add_q = median_ms([&] { K.add(a.data(), ga, b.data(), gb, y.data(), gy, n); }, runs);
    double relu_f = median_ms([&] { relu(f); }, runs);
    double add_f = median_ms([&] { add(f, g); }, runs);
    std::printf("%9lld elements: relu int8 %.3f ms (f32 %.3f), add int8 %.3f ms (f32 %.3f)\n",
                (long long)n, relu_q, relu_f, add_q, add_f);
  }
  // The CNN's first max pool at batch 64: [64, 32, 28, 28] -> 14x14, 2x2 stride 2.
  int64_t N = 64, C = 32, H = 28, W = 28;
  std::vector<uint8_t> x(N * C * H * W, 9), y(N * C * 14 * 14);
  Tensor xf = randn({N, C, H, W}).contiguous_channels_last();
  double mp_q = median_ms([&] { K.max_pool2d(x.data(), N, C, H, W, 2, 2, 2, 2, 0, 0, y.data(), 14, 14); }, runs);
  double mp_f = median_ms([&] { max_pool2d(xf, {.kernel_h = 2, .kernel_w = 2}); }, runs);
  std::printf("max pool 2x2 [64, 32, 28, 28]: int8 %.3f ms (f32 channels-last %.3f)\n", mp_q, mp_f);
}

// --profile MODEL: the converted model (zoo name at 3x224x224, or "cnn" at 1x28x28; batch
// --batch) timed per module type: each leaf module's call, from its pre-hook to its last hook
// (so a layer's time includes its Quantize; Quantize is also listed on its own), summed over
// --runs passes, in ms per pass.
void profile(const std::string& name, int64_t batch, int runs, bool keep_faster) {
  bool is_cnn = name == "cnn";
  nn::ModulePtr net = is_cnn ? cnn() : models::create(name, {});
  Shape input = is_cnn ? Shape{batch, 1, 28, 28} : Shape{batch, 3, 224, 224};
  net->eval();
  auto groups = quant::find_fusable_groups(*net, input); // from the data flow (as tb bench)
  quant::fuse_modules(*net, groups);
  auto model = std::make_shared<quant::QuantWrapper>(net);
  quant::prepare(*model);
  {
    no_grad ng;
    Shape calib = input;
    calib[0] = std::min<int64_t>(batch, 8);
    for (int i = 0; i < 2; i++) (*model)(randn(calib));
  }
  quant::ConversionReport rep =
      quant::convert(*model, {.input_shape = input, .keep_faster = keep_faster});
  if (keep_faster)
    for (const auto& l : rep.layers)
      if (l.int8_ms > 0)
        std::printf("  %-40s int8 %8.4f ms  float %8.4f ms  %s\n", l.path.c_str(), l.int8_ms,
                    l.float_ms, l.int8_ms < l.float_ms ? "int8" : "FLOAT");
  std::printf("%s batch %lld: %lld module outputs uint8, %lld float\n", name.c_str(),
              (long long)batch, (long long)rep.uint8_outputs, (long long)rep.float_outputs);
  std::map<std::string, double> total;
  std::map<std::string, int64_t> calls;
  std::map<nn::Module*, std::chrono::steady_clock::time_point> start;
  std::vector<nn::HookHandle> hooks;
  for (auto& [path, m] : model->named_modules()) {
    bool leaf = true;
    for (auto& [cn, c] : m->named_children()) leaf &= cn == "activation_post_process";
    if (!leaf) continue;
    hooks.push_back(m->register_forward_pre_hook(
        [&start](nn::Module& mod, const std::vector<Tensor>&) { start[&mod] = std::chrono::steady_clock::now(); }));
    hooks.push_back(m->register_forward_hook(
        [&start, &total, &calls](nn::Module& mod, const std::vector<Tensor>&, const Tensor&) {
          double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() -
                                                                start[&mod]).count();
          total[mod.type_name()] += ms;
          calls[mod.type_name()]++;
        }));
  }
  no_grad ng;
  Tensor x = randn(input);
  for (int i = 0; i < 3; i++) (*model)(x);
  total.clear(), calls.clear();
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < runs; i++) (*model)(x);
  double all = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  std::printf("whole model %.3f ms per pass (mean of %d, with hooks)\n", all / runs, runs);
  for (auto& [type, ms] : total)
    std::printf("  %-28s %8.3f ms  %5lld calls\n", type.c_str(), ms / runs,
                (long long)(calls[type] / runs));
  for (auto& h : hooks) h.remove();
}

} // namespace

int main(int argc, char** argv) {
  int runs = 30, threads = 0;
  bool quick = false;
  std::string profile_model;
  int64_t profile_batch = 1;
  bool keep_faster = false;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    if (a == "--profile" && i + 1 < argc) {
      profile_model = argv[++i];
      continue;
    }
    if (a == "--keep-faster") {
      keep_faster = true;
      continue;
    }
    if (a == "--batch" && i + 1 < argc) {
      profile_batch = std::atoll(argv[++i]);
      continue;
    }
    if (a == "--runs" && i + 1 < argc) runs = std::atoi(argv[++i]);
    else if (a == "--threads" && i + 1 < argc) threads = std::atoi(argv[++i]);
    else if (a == "--quick") quick = true;
    else if (a == "--cpu-time") cpu_time = true;
    else {
      std::fprintf(stderr, "usage: bench_int8 [--runs N] [--threads N] [--quick] [--cpu-time] "
                           "[--profile MODEL|elementwise [--batch N] [--keep-faster]]\n");
      return 2;
    }
  }
  if (threads > 0) set_num_threads(threads);
  if (profile_model == "elementwise") {
    bench_elementwise(runs);
    return 0;
  }
  if (!profile_model.empty()) {
    manual_seed(0);
    profile(profile_model, profile_batch, runs, keep_faster);
    return 0;
  }
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
