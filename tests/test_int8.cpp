// int8: integer inference (kernels/qconv.h, src/quant/int8.cpp) — oneDNN u8 x s8 kernels against
// the reference loops, the requantization rounding rule on hand-computed cases, the reference
// against the fake-quant formula, the integer joins / pools / activations (OpenMP table against
// the reference, the reference against float op + fake-quant), converted models (the small CNN,
// the zoo at small input) against their fake-quant twins layer by layer with uint8 activations
// flowing between the integer layers, convert's keep_faster report, and the bad inputs (among
// them a quantized activation given to a float op).
//
// Tolerances, each with its reason:
//  - oneDNN vs reference kernels: exact (both do the float32 requantization of kernels/qconv.h in
//    the same order; measured equal on every case below).
//  - reference kernel vs the fake-quant formula: exact where the float computation is exact
//    (power-of-two scales, small integers) and the output zero point is even (adding an even
//    integer does not change a round-half-even tie; with an odd one the two rules differ by one
//    step at exact ties, see kernels/qconv.h).
//  - an integer layer vs the same layer's fake-quant (dequantized-weight) path on the same input:
//    at most one step of the output grid. The float path rounds a float32 convolution of
//    dequantized values plus the float bias; the integer path an exact int32 sum plus the bias
//    rounded to int32: a value near a rounding boundary can land on either side.
#include "gradcheck.h"

#include <tb/models.h>
#include <tb/quant.h>

#include "kernels/cpu/onednn_common.h"
#include "kernels/qconv.h"

#include <cmath>
#include <filesystem>
#include <set>

using namespace tb;
using tbtest::randomise_bn;
using tbtest::check_error;
namespace q = tb::quant;
namespace k = tb::kernels;

namespace {

struct QConvCase {
  int64_t N, C, H, W, O, KH, KW, stride, pad, dil, groups;
  bool bias;
  k::QAct act;
  int32_t in_zp, out_zp;
  float mult; // base multiplier (per-channel ones vary around it)
};

std::vector<uint8_t> random_u8(int64_t n, Generator& g) {
  std::vector<uint8_t> v(n);
  std::vector<int64_t> r = randint(0, 256, {n}, {}, &g).to_int_vector();
  for (int64_t i = 0; i < n; i++) v[i] = (uint8_t)r[i];
  return v;
}
std::vector<int8_t> random_s8(int64_t n, Generator& g) {
  std::vector<int8_t> v(n);
  std::vector<int64_t> r = randint(-127, 128, {n}, {}, &g).to_int_vector();
  for (int64_t i = 0; i < n; i++) v[i] = (int8_t)r[i];
  return v;
}

// Runs one case on both tables; returns {elements differing, largest difference}. With `sum`,
// the conv has a fused residual add: every output buffer starts as the same random residual,
// and the fused reference is first checked against the two layers it replaces (the conv onto
// its own grid, then the integer add).
std::pair<int64_t, int> compare_conv(const QConvCase& c, uint64_t seed,
                                     const k::QSum* sum = nullptr) {
  Generator g(seed);
  k::Conv2dGeom geom{.N = c.N, .C = c.C, .H = c.H, .W = c.W, .O = c.O, .KH = c.KH, .KW = c.KW};
  geom.stride_h = geom.stride_w = c.stride;
  geom.pad_h = geom.pad_w = c.pad;
  geom.dil_h = geom.dil_w = c.dil;
  geom.groups = c.groups;
  geom.OH = (c.H + 2 * c.pad - c.dil * (c.KH - 1) - 1) / c.stride + 1;
  geom.OW = (c.W + 2 * c.pad - c.dil * (c.KW - 1) - 1) / c.stride + 1;
  auto x = random_u8(c.N * c.H * c.W * c.C, g);
  auto w = random_s8(c.O * (c.C / c.groups) * c.KH * c.KW, g);
  std::vector<float> m(c.O);
  std::vector<double> u = rand({c.O}, {}, &g).to_vector();
  for (int64_t o = 0; o < c.O; o++) m[o] = c.mult * (float)(0.5 + u[o]);
  std::vector<int32_t> b(c.O);
  std::vector<int64_t> br = randint(-20000, 20000, {c.O}, {}, &g).to_int_vector();
  for (int64_t o = 0; o < c.O; o++) b[o] = (int32_t)br[o];
  k::Requant r{.in_zp = c.in_zp, .out_zp = c.out_zp, .multiplier = m.data(),
               .bias = c.bias ? b.data() : nullptr, .act = c.act, .clip_hi = 97.0f, .sum = sum};
  int64_t ny = c.N * geom.OH * geom.OW * c.O;
  std::vector<uint8_t> residual = sum ? random_u8(ny, g) : std::vector<uint8_t>(ny);
  std::vector<uint8_t> y_ref = residual, y_cpu = residual;
  k::QConvKernels::ref.conv2d(geom, x.data(), w.data(), r, y_ref.data());
  k::QConvKernels::cpu.conv2d(geom, x.data(), w.data(), r, y_cpu.data());
  if (sum) {
    k::Requant plain = r;
    plain.sum = nullptr;
    std::vector<uint8_t> q(ny), y_two(ny);
    k::QConvKernels::ref.conv2d(geom, x.data(), w.data(), plain, q.data());
    const uint8_t* a = sum->conv_input == 1 ? residual.data() : q.data();
    const uint8_t* bb = sum->conv_input == 1 ? q.data() : residual.data();
    k::QGrid ga = sum->conv_input == 1 ? sum->residual : sum->conv;
    k::QGrid gb = sum->conv_input == 1 ? sum->conv : sum->residual;
    k::QElementwiseKernels::ref.add(a, ga, bb, gb, y_two.data(), sum->out, ny);
    CHECK(y_two == y_ref);
  }
  // The prepared (plan) path of both tables, weights freed after prepare: the same outputs.
  std::vector<uint8_t> y_plan_cpu = residual, y_plan_ref = residual;
  {
    std::vector<int8_t> w_copy = w;
    auto pc = k::QConvKernels::cpu.prepare_conv2d(geom, w_copy.data(), r);
    auto pr = k::QConvKernels::ref.prepare_conv2d(geom, w_copy.data(), r);
    std::fill(w_copy.begin(), w_copy.end(), 0);
    k::QConvKernels::cpu.run_conv2d(*pc, x.data(), r, y_plan_cpu.data());
    k::QConvKernels::ref.run_conv2d(*pr, x.data(), r, y_plan_ref.data());
  }
  CHECK(y_plan_cpu == y_cpu);
  CHECK(y_plan_ref == y_ref);
  // Every implementation oneDNN offers for this geometry (the cpu table runs the fastest one;
  // which one that is depends on timing), each equal to the reference.
  std::vector<std::string> impls = k::cpu_qconv2d_impls(geom, r);
  CHECK(!impls.empty());
  for (int pos = 0; pos < (int)impls.size(); pos++) {
    std::vector<uint8_t> y_impl = residual;
    k::cpu_qconv2d_at(pos, geom, x.data(), w.data(), r, y_impl.data());
    CHECK_MESSAGE(y_impl == y_ref, "oneDNN implementation " << impls[pos]);
  }
  int64_t bad = 0;
  int worst = 0;
  for (int64_t i = 0; i < ny; i++) {
    int d = std::abs((int)y_ref[i] - (int)y_cpu[i]);
    bad += d != 0;
    worst = std::max(worst, d);
  }
  return {bad, worst};
}


// The quantized model and its fake-quant twin: two converts of the same calibrated model, the
// twin's layers forced onto the dequantized-weight path (= the fake-quant model in eval). With
// `uint8_flow` the integer model is converted with the input shape, so that uint8 activations
// travel between its integer modules; else its layers pass float carriers.
struct Twins {
  nn::ModulePtr integer, fake;
  q::ConversionReport report;
};
Twins convert_twins(nn::ModulePtr float_model, const Shape& input, int batches,
                    bool uint8_flow = true) {
  randomise_bn(*float_model, 12);
  float_model->eval();
  q::fuse_modules(*float_model, q::find_fusable_groups(*float_model, input));
  auto model = std::make_shared<q::QuantWrapper>(float_model);
  q::prepare(*model);
  Generator g(7);
  {
    no_grad ng;
    for (int i = 0; i < batches; i++) (*model)(randn(input, {}, &g));
  }
  nn::ModulePtr fake = nn::clone(*model);
  q::ConversionReport rep = q::convert(*model, {.input_shape = uint8_flow ? input : Shape{}});
  q::convert(*fake);
  for (auto* m : fake->modules()) {
    if (auto* c = dynamic_cast<q::QuantizedConv2d*>(m)) c->integer = false;
    if (auto* l = dynamic_cast<q::QuantizedLinear*>(m)) l->integer = false;
  }
  return {model, fake, rep};
}

double out_scale(nn::Module& layer) {
  return layer.child("activation_post_process")->get("scale").item();
}

// Every integer layer of `t.integer` against the same layer of `t.fake` on the same input
// (captured by a hook, dequantized when it is a uint8 activation): at most one output step
// apart. Returns the number of layers checked. `off_grid`: the layers whose input no quantizer
// made (they ran the float path, as the fake-quant model does); every other integer layer must
// have run the integer kernel. `uint8_inputs` (when given) counts the layers whose input was a
// uint8 activation. The integer joins, activations and pools given uint8 inputs are checked the
// same way against their twin's float op + Quantize (`joins` counts those calls).
int check_layers(Twins& t, const Tensor& x, int64_t* differing = nullptr,
                 const std::set<std::string>& off_grid = {}, int* uint8_inputs = nullptr,
                 int* joins = nullptr) {
  std::vector<nn::HookHandle> hooks;
  int checked = 0;
  int64_t diff_count = 0;
  for (auto& [path, m] : t.integer->named_modules()) {
    bool join = dynamic_cast<q::QuantizedAdd*>(m) || dynamic_cast<q::QuantizedMul*>(m) ||
                dynamic_cast<q::QuantizedCat*>(m) || dynamic_cast<q::QuantizedReLU*>(m) ||
                dynamic_cast<q::QuantizedReLU6*>(m) || dynamic_cast<q::QuantizedHardswish*>(m) ||
                dynamic_cast<q::QuantizedSigmoid*>(m) || dynamic_cast<q::QuantizedSiLU*>(m) ||
                dynamic_cast<q::QuantizedHardsigmoid*>(m) ||
                dynamic_cast<q::QuantizedChannelShuffle*>(m) ||
                dynamic_cast<q::QuantizedMaxPool2d*>(m) || dynamic_cast<q::QuantizedAvgPool2d*>(m) ||
                dynamic_cast<q::QuantizedAdaptiveAvgPool2d*>(m) ||
                dynamic_cast<q::QuantizedFlatten*>(m);
    if (join) {
      nn::Module* twin = &t.fake->get_submodule(path);
      std::string p = path;
      hooks.push_back(m->register_forward_hook(
          [twin, p, joins](nn::Module& mod, const std::vector<Tensor>& in, const Tensor& y) {
            bool all_u8 = true;
            std::vector<Tensor> fin;
            for (const Tensor& t : in) {
              all_u8 &= q::is_quantized_activation(t);
              fin.push_back(q::dequantize(t));
            }
            if (!all_u8) return;
            Tensor yf = (*twin)(fin);
            // Max pooling, flatten and channel shuffle keep the input's grid: exact. The others
            // requantize (one step at most: an average's or hardswish's float sum order).
            bool keeps = !mod.has_child("activation_post_process");
            double step = keeps ? 0 : out_scale(mod);
            double d = tbtest::max_abs_diff(q::dequantize(y), q::dequantize(yf));
            CHECK_MESSAGE(d <= step * 1.001, p << " (" << mod.type_name() << "): integer vs "
                                               << "fake-quant differ by " << d);
            if (joins) (*joins)++;
          }));
      continue;
    }
    bool conv = dynamic_cast<q::QuantizedConv2d*>(m) != nullptr;
    bool lin = dynamic_cast<q::QuantizedLinear*>(m) != nullptr;
    if (!conv && !lin) continue;
    bool integer = conv ? dynamic_cast<q::QuantizedConv2d*>(m)->integer
                        : dynamic_cast<q::QuantizedLinear*>(m)->integer;
    CHECK_MESSAGE(integer, path << " runs the float kernel");
    nn::Module* twin = &t.fake->get_submodule(path);
    std::string p = path;
    hooks.push_back(m->register_forward_hook(
        [twin, p, &checked, &diff_count, uint8_inputs](nn::Module& mod,
                                                       const std::vector<Tensor>& in,
                                                       const Tensor& y) {
          if (uint8_inputs && q::is_quantized_activation(in[0])) (*uint8_inputs)++;
          Tensor yf = (*twin)(q::dequantize(in[0]));
          double step = out_scale(mod);
          std::vector<double> a = q::dequantize(y).to_vector(), b = q::dequantize(yf).to_vector();
          REQUIRE(a.size() == b.size());
          double worst = 0;
          for (size_t i = 0; i < a.size(); i++) {
            worst = std::max(worst, std::abs(a[i] - b[i]));
            diff_count += a[i] != b[i];
          }
          CHECK_MESSAGE(worst <= step * 1.001, p << ": integer vs fake-quant differ by " << worst
                                                 << " (step " << step << ")");
          checked++;
        }));
  }
  {
    no_grad ng;
    (*t.integer)(x);
  }
  for (auto& h : hooks) h.remove();
  for (auto& [path, m] : t.integer->named_modules()) { // which layers ran the integer kernel
    int64_t want = off_grid.count(path) ? 1 : 0;
    if (auto* c = dynamic_cast<q::QuantizedConv2d*>(m)) CHECK_MESSAGE(c->off_grid_calls == want, path);
    if (auto* l = dynamic_cast<q::QuantizedLinear*>(m)) CHECK_MESSAGE(l->off_grid_calls == want, path);
  }
  if (differing) *differing = diff_count;
  return checked;
}

} // namespace

TEST_SUITE("int8") {

// ---- 1. kernels: oneDNN against the reference ------------------------------------------------------

TEST_CASE("integer conv: oneDNN u8 x s8 equals the reference loops (geometry, zero points, acts)") {
  using A = k::QAct;
  std::vector<QConvCase> cases = {
      // N  C   H   W   O  KH KW s  p  d  g  bias act     in_zp out_zp mult
      {1, 3, 7, 5, 5, 3, 3, 1, 1, 1, 1, true, A::None, 128, 128, 0.004f},  // odd sizes, padding
      {2, 8, 9, 9, 16, 3, 3, 2, 1, 1, 1, true, A::ReLU, 0, 0, 0.002f},     // stride 2, zp 0
      {1, 16, 6, 6, 16, 3, 3, 1, 1, 1, 16, true, A::None, 255, 255, 0.01f}, // depthwise, zp 255
      {2, 12, 8, 7, 18, 3, 3, 1, 2, 2, 3, false, A::Clip, 17, 3, 0.003f},  // groups, dilation
      {3, 32, 5, 5, 8, 1, 1, 1, 0, 1, 1, true, A::None, 100, 60, 0.001f},  // pointwise
      {1, 5, 11, 13, 7, 5, 3, 2, 2, 1, 1, true, A::ReLU, 90, 200, 0.002f}, // KH != KW, odd
      {1, 4, 6, 6, 4, 3, 3, 1, 1, 1, 1, true, A::None, 128, 128, 0.5f},    // saturates at 0 / 255
      {2, 24, 10, 10, 24, 3, 3, 2, 1, 1, 24, true, A::Clip, 0, 0, 0.02f},  // depthwise stride 2
      // Shapes where oneDNN picks its AMX kernels (3x3 and 1x1; ONEDNN_VERBOSE=1 shows them).
      {2, 64, 14, 14, 64, 3, 3, 1, 1, 1, 1, true, A::ReLU, 7, 0, 0.0005f},
      {2, 32, 9, 9, 192, 1, 1, 1, 0, 1, 1, true, A::Clip, 250, 5, 0.001f},
      // More depthwise: 5x5, stride 2, dilation 2, zero points at the ends, channel counts that
      // are not multiples of 16.
      {1, 24, 9, 11, 24, 5, 5, 1, 2, 1, 24, true, A::Clip, 255, 0, 0.01f},
      {2, 40, 8, 8, 40, 3, 3, 2, 1, 1, 40, false, A::ReLU, 0, 255, 0.02f},
      {1, 17, 7, 7, 17, 3, 3, 1, 2, 2, 17, true, A::None, 128, 3, 0.004f},
      // MobileNetV2's narrow 1x1s (AMX first in oneDNN's list, VNNI brgconv_1x1 second).
      {1, 16, 12, 12, 96, 1, 1, 1, 0, 1, 1, true, A::Clip, 0, 0, 0.003f},
      {1, 96, 7, 7, 24, 1, 1, 1, 0, 1, 1, true, A::None, 0, 128, 0.003f},
  };
  int i = 0;
  for (const auto& c : cases) {
    INFO("case " << i);
    auto [bad, worst] = compare_conv(c, 100 + i++);
    CHECK_MESSAGE(bad == 0, bad << " outputs differ, by up to " << worst);
  }
}

TEST_CASE("integer conv with a fused residual add (sum post-op) equals conv, then the add") {
  // The conv's grid, the residual's and the sum's all differ; the conv as either input of the
  // add; MobileNetV2's projection (1x1, no activation) and ResNet's 3x3, plus an activation, a
  // depthwise conv and zero points at the range ends.
  using A = k::QAct;
  std::vector<QConvCase> cases = {
      // N  C   H   W   O  KH KW s  p  d  g  bias act     in_zp out_zp mult
      {1, 96, 7, 7, 24, 1, 1, 1, 0, 1, 1, true, A::None, 0, 128, 0.003f},
      {1, 144, 6, 5, 32, 1, 1, 1, 0, 1, 1, true, A::None, 3, 121, 0.002f},
      {2, 64, 9, 9, 64, 3, 3, 1, 1, 1, 1, true, A::None, 0, 64, 0.0005f},
      {1, 16, 8, 8, 16, 3, 3, 1, 1, 1, 16, true, A::Clip, 255, 0, 0.01f},
      {2, 12, 5, 7, 20, 3, 3, 1, 1, 1, 1, false, A::ReLU, 17, 255, 0.003f},
  };
  std::vector<k::QSum> sums = {
      {.conv = {0.05f, 128}, .residual = {0.04f, 100}, .out = {0.07f, 117}, .conv_input = 1},
      {.conv = {0.02f, 121}, .residual = {0.1f, 0}, .out = {0.09f, 60}, .conv_input = 0},
      {.conv = {0.03f, 64}, .residual = {0.03f, 64}, .out = {0.03f, 64}, .conv_input = 1},
      {.conv = {0.5f, 0}, .residual = {0.002f, 255}, .out = {0.01f, 3}, .conv_input = 0},
      {.conv = {0.013f, 255}, .residual = {0.02f, 7}, .out = {0.04f, 255}, .conv_input = 1},
  };
  for (size_t i = 0; i < cases.size(); i++) {
    INFO("case " << i);
    auto [bad, worst] = compare_conv(cases[i], 300 + i, &sums[i]);
    CHECK_MESSAGE(bad == 0, bad << " outputs differ, by up to " << worst);
  }
}

TEST_CASE("integer linear: oneDNN matmul equals the reference loops") {
  Generator g(5);
  struct LCase { int64_t N, I, O; bool bias; k::QAct act; int32_t in_zp, out_zp; float mult; };
  std::vector<LCase> cases = {{1, 17, 5, true, k::QAct::None, 128, 128, 0.003f},
                              {7, 64, 33, false, k::QAct::ReLU, 0, 0, 0.001f},
                              {64, 3136, 128, true, k::QAct::ReLU, 5, 0, 0.0002f},
                              {3, 10, 10, true, k::QAct::Clip, 255, 255, 0.3f}};
  for (const auto& c : cases) {
    INFO("N " << c.N << " I " << c.I << " O " << c.O);
    auto x = random_u8(c.N * c.I, g);
    auto w = random_s8(c.O * c.I, g);
    std::vector<float> m(c.O);
    std::vector<int32_t> b(c.O);
    for (int64_t o = 0; o < c.O; o++) m[o] = c.mult * (1.0f + 0.01f * (float)o), b[o] = 37 * o - 500;
    k::Requant r{.in_zp = c.in_zp, .out_zp = c.out_zp, .multiplier = m.data(),
                 .bias = c.bias ? b.data() : nullptr, .act = c.act, .clip_hi = 50.0f};
    std::vector<uint8_t> y_ref(c.N * c.O), y_cpu(c.N * c.O);
    k::QConvKernels::ref.linear(c.N, c.I, c.O, x.data(), w.data(), r, y_ref.data());
    k::QConvKernels::cpu.linear(c.N, c.I, c.O, x.data(), w.data(), r, y_cpu.data());
    int64_t bad = 0;
    for (size_t j = 0; j < y_ref.size(); j++) bad += y_ref[j] != y_cpu[j];
    CHECK_MESSAGE(bad == 0, bad << " outputs differ");
  }
}

TEST_CASE("integer kernels: primitives are cached per geometry") {
  Generator g(3);
  auto x = random_u8(1 * 6 * 6 * 4, g);
  auto w = random_s8(8 * 4 * 9, g);
  std::vector<float> m(8, 0.01f);
  std::vector<uint8_t> y(1 * 6 * 6 * 8);
  k::Conv2dGeom geom{.N = 1, .C = 4, .H = 6, .W = 6, .O = 8, .KH = 3, .KW = 3, .OH = 6, .OW = 6,
                     .pad_h = 1, .pad_w = 1};
  k::Requant r{.in_zp = 3, .out_zp = 9, .multiplier = m.data()};
  k::QConvKernels::cpu.conv2d(geom, x.data(), w.data(), r, y.data());
  // Changing only run-time values (zero points) reuses the primitive; the output scales are
  // part of a convolution's key (oneDNN 2.6 has no run-time scales for it).
  r.in_zp = 200, r.out_zp = 1;
  int64_t before = k::onednn::primitives_created();
  k::QConvKernels::cpu.conv2d(geom, x.data(), w.data(), r, y.data());
  CHECK(k::onednn::primitives_created() == before);
  std::vector<uint8_t> y_ref(y.size());
  k::QConvKernels::ref.conv2d(geom, x.data(), w.data(), r, y_ref.data());
  CHECK(y == y_ref);
}

// ---- 2. the requantization rule -----------------------------------------------------------------

TEST_CASE("requantization: round half to even after adding the zero point, saturation, acts") {
  // A 1-input linear: acc = (x - in_zp) * w, v = (acc + bias) * M, y = clamp(rne(v + out_zp)).
  struct R { int x; int w; int32_t bias; float mult; int32_t out_zp; k::QAct act; float hi; int want; };
  std::vector<R> rows = {
      {1, 1, 0, 0.5f, 0, k::QAct::None, 0, 0},      // 0.5 -> 0 (even)
      {3, 1, 0, 0.5f, 0, k::QAct::None, 0, 2},      // 1.5 -> 2
      {5, 1, 0, 0.5f, 0, k::QAct::None, 0, 2},      // 2.5 -> 2
      {1, 1, 0, 0.5f, 1, k::QAct::None, 0, 2},      // 0.5 + 1 = 1.5 -> 2 (fake-quant: 0 + 1 = 1)
      {-1, 1, 0, 0.5f, 3, k::QAct::None, 0, 2},     // -0.5 + 3 = 2.5 -> 2
      {-3, 1, 0, 0.5f, 0, k::QAct::None, 0, 0},     // negative saturates at 0
      {100, 100, 0, 1.0f, 0, k::QAct::None, 0, 255}, // 10000 saturates at 255
      {2, 3, 4, 0.25f, 10, k::QAct::None, 0, 12},   // (6 + 4) / 4 = 2.5, + 10 = 12.5 -> 12
      {2, 3, 5, 0.25f, 10, k::QAct::None, 0, 13},   // (6 + 5) / 4 = 2.75 + 10 -> 13
      {-8, 1, 0, 1.0f, 20, k::QAct::ReLU, 0, 20},   // ReLU clamps at the zero point
      {9, 1, 0, 1.0f, 20, k::QAct::ReLU, 0, 29},
      {9, 1, 0, 1.0f, 20, k::QAct::Clip, 6.5f, 26}, // clip at 6.5, + 20 = 26.5 -> 26
      {9, 1, 0, 1.0f, 21, k::QAct::Clip, 6.5f, 28}, // 6.5 + 21 = 27.5 -> 28
      {-9, 1, 0, 1.0f, 21, k::QAct::Clip, 6.5f, 21},
  };
  for (const auto& row : rows) {
    INFO("x " << row.x << " w " << row.w << " bias " << row.bias << " M " << row.mult
              << " zp " << row.out_zp);
    uint8_t x = (uint8_t)(row.x + 128);
    int8_t w = (int8_t)row.w;
    float m = row.mult;
    int32_t b = row.bias;
    k::Requant r{.in_zp = 128, .out_zp = row.out_zp, .multiplier = &m, .bias = &b, .act = row.act,
                 .clip_hi = row.hi};
    uint8_t y_ref = 0, y_cpu = 0;
    k::QConvKernels::ref.linear(1, 1, 1, &x, &w, r, &y_ref);
    k::QConvKernels::cpu.linear(1, 1, 1, &x, &w, r, &y_cpu);
    CHECK((int)y_ref == row.want);
    CHECK((int)y_cpu == row.want);
  }
}

TEST_CASE("reference integer conv equals the fake-quant formula where float32 is exact") {
  // Power-of-two scales and small integers: the float conv of dequantized values is exact, so
  // fake_quant(conv(x~, w~) + b) must equal the integer kernel bit for bit (even out zero point).
  Generator g(11);
  int64_t N = 2, C = 6, H = 7, W = 5, O = 4;
  Tensor xq = randint(0, 256, {N, C, H, W}, {}, &g).to(kFloat32);
  Tensor wq = randint(-127, 128, {O, C / 2, 3, 3}, {}, &g).to(kFloat32);
  Tensor bq = randint(-3000, 3000, {O}, {}, &g).to(kFloat32);
  float sx = 1.0f / 16, sw = 1.0f / 32, sy = 4.0f;
  int32_t zx = 77, zy = 100;
  Tensor x = mul(sub(xq, (double)zx), (double)sx);
  Tensor w = mul(wq, (double)sw);
  Tensor b = mul(bq, (double)(sx * sw));
  Conv2dParams p{.stride_h = 2, .stride_w = 1, .pad_h = 1, .pad_w = 1, .groups = 2};
  Tensor y = relu(conv2d(x, w, b, p));
  Tensor want = add(div(q::fake_quantize_per_tensor_affine(y, sy, zy, 0, 255), (double)sy),
                    (double)zy); // back to the integers
  // The integer kernel on the same data.
  k::Conv2dGeom geom{.N = N, .C = C, .H = H, .W = W, .O = O, .KH = 3, .KW = 3,
                     .OH = y.size(2), .OW = y.size(3), .stride_h = 2, .stride_w = 1, .pad_h = 1,
                     .pad_w = 1, .groups = 2};
  Tensor x_nhwc = xq.permute({0, 2, 3, 1}).contiguous().to(kUInt8);
  Tensor w_s8 = wq.to(kInt8);
  std::vector<float> m(O, sx * sw / sy);
  std::vector<int32_t> bias(O);
  for (int64_t o = 0; o < O; o++) bias[o] = (int32_t)bq.to_vector()[o];
  k::Requant r{.in_zp = zx, .out_zp = zy, .multiplier = m.data(), .bias = bias.data(),
               .act = k::QAct::ReLU};
  Tensor yq = empty({N, y.size(2), y.size(3), O}, TensorOptions(kUInt8));
  k::QConvKernels::ref.conv2d(geom, x_nhwc.data<uint8_t>(), w_s8.data<int8_t>(), r,
                              yq.data<uint8_t>());
  std::vector<double> a = yq.permute({0, 3, 1, 2}).contiguous().to_vector(), e = want.to_vector();
  int64_t bad = 0;
  for (size_t i = 0; i < a.size(); i++) bad += a[i] != e[i];
  CHECK_MESSAGE(bad == 0, bad << " of " << a.size() << " differ");
}

// ---- integer elementwise and pooling (reference loops) against tb's float ops + fake-quant --------

namespace {
// The real values of uint8 `q` (shape `shape`, row-major) on grid g, as a float32 tensor.
Tensor deq_tensor(const std::vector<uint8_t>& q, const Shape& shape, k::QGrid g) {
  std::vector<float> v(q.begin(), q.end());
  return mul(sub(from_vector(v, shape), (double)g.zp), (double)g.scale);
}
// fake_quant(y) back to integers: round(y / s) + zp (exact: y lies on the grid).
std::vector<int64_t> to_q(const Tensor& y, k::QGrid g) {
  Tensor fq = q::fake_quantize_per_tensor_affine(y.contiguous(), g.scale, g.zp, 0, 255);
  std::vector<int64_t> out;
  for (double v : fq.to_vector()) out.push_back((int64_t)std::nearbyint(v / g.scale) + g.zp);
  return out;
}
int max_diff(const std::vector<uint8_t>& a, const std::vector<int64_t>& b) {
  REQUIRE(a.size() == b.size());
  int d = 0;
  for (size_t i = 0; i < a.size(); i++) d = std::max(d, (int)std::abs((int64_t)a[i] - b[i]));
  return d;
}
} // namespace

TEST_CASE("integer add / mul / cat / activations / pools equal float op + fake-quant") {
  Generator g(17);
  const auto& K = k::QElementwiseKernels::ref;
  k::QGrid ga{0.05f, 3}, gb{0.02f, 250}, gy{0.07f, 128};
  int64_t N = 2, C = 5, H = 7, W = 6, n = N * C * H * W;
  auto a = random_u8(n, g), b = random_u8(n, g);
  // Tensors in NHWC memory order, seen as [N, H, W, C].
  Shape nhwc{N, H, W, C};
  Tensor ta = deq_tensor(a, nhwc, ga), tb_ = deq_tensor(b, nhwc, gb);
  std::vector<uint8_t> y(n);
  K.add(a.data(), ga, b.data(), gb, y.data(), gy, n);
  CHECK(max_diff(y, to_q(add(ta, tb_), gy)) == 0);
  // SE scale: a [N*C, H*W] times b [N*C].
  auto s = random_u8(N * C, g);
  K.mul(a.data(), ga, s.data(), gb, y.data(), gy, N * C, H * W, 1, true);
  Tensor prod = mul(deq_tensor(a, {N * C, H * W}, ga), deq_tensor(s, {N * C, 1}, gb));
  CHECK(max_diff(y, to_q(prod, gy)) == 0);
  K.mul(a.data(), ga, b.data(), gb, y.data(), gy, 1, n, 1, false);
  CHECK(max_diff(y, to_q(mul(ta, tb_), gy)) == 0);
  // Concatenation along the channels of NHWC: [N*H*W, C] and [N*H*W, 3] -> [N*H*W, C + 3].
  auto c2 = random_u8(N * H * W * 3, g);
  const uint8_t* xs[2] = {a.data(), c2.data()};
  k::QGrid gs[2] = {ga, gb};
  int64_t widths[2] = {C, 3};
  std::vector<uint8_t> yc(N * H * W * (C + 3));
  K.cat(xs, gs, widths, 2, yc.data(), gy, N * H * W);
  Tensor tc = cat({deq_tensor(a, {N * H * W, C}, ga), deq_tensor(c2, {N * H * W, 3}, gb)}, 1);
  CHECK(max_diff(yc, to_q(tc, gy)) == 0);
  // Activations: ReLU on its own grid is max(x, zp) exactly.
  K.activation(k::QActivation::ReLU, a.data(), ga, y.data(), ga, n);
  for (int64_t i = 0; i < n; i++) REQUIRE((int)y[i] == std::max((int)a[i], ga.zp));
  K.activation(k::QActivation::ReLU6, a.data(), ga, y.data(), gy, n);
  CHECK(max_diff(y, to_q(relu6(ta), gy)) == 0);
  // Hardswish: tb's op may associate x * relu6(x + 3) / 6 differently: one step at most.
  K.activation(k::QActivation::Hardswish, a.data(), ga, y.data(), gy, n);
  CHECK(max_diff(y, to_q(hardswish(ta), gy)) <= 1);
  // Sigmoid / SiLU / Hardsigmoid on every one of the 256 levels, several grids (saturating ones
  // too): the kernel evaluates the float op's own float32 formula, so it equals float op +
  // fake-quant exactly.
  std::vector<uint8_t> all(256), yl(256);
  for (int i = 0; i < 256; i++) all[i] = (uint8_t)i;
  struct Act { k::QActivation kind; const char* name; std::vector<k::QGrid> outs; };
  std::vector<Act> acts = {
      {k::QActivation::Sigmoid, "sigmoid", {{1.0f / 256, 0}, {0.0037f, 0}, {0.002f, 3}}},
      {k::QActivation::SiLU, "silu", {{0.03f, 10}, {0.05f, 0}, {0.0125f, 40}}},
      {k::QActivation::Hardsigmoid, "hardsigmoid", {{1.0f / 256, 0}, {0.0041f, 1}, {0.003f, 200}}}};
  for (const Act& act : acts)
    for (k::QGrid gx : {k::QGrid{0.05f, 128}, k::QGrid{0.1f, 0}, k::QGrid{0.02f, 255},
                        k::QGrid{0.031f, 77}, k::QGrid{0.0625f, 100}})
      for (k::QGrid go : act.outs) {
        INFO(act.name << " in (" << gx.scale << ", " << gx.zp << ") out (" << go.scale << ", "
                      << go.zp << ")");
        K.activation(act.kind, all.data(), gx, yl.data(), go, 256);
        Tensor v = deq_tensor(all, {256}, gx);
        Tensor f = act.kind == k::QActivation::Sigmoid ? sigmoid(v)
                   : act.kind == k::QActivation::SiLU  ? silu(v)
                                                       : hardsigmoid(v);
        CHECK(max_diff(yl, to_q(f, go)) == 0);
      }
  // Pools on [N, C, H, W] = the NHWC data permuted; 3x3 stride 2 padding 1 (odd sizes).
  Tensor tn = ta.permute({0, 3, 1, 2});
  Pool2dParams pp{.kernel_h = 3, .kernel_w = 3, .stride_h = 2, .stride_w = 2, .pad_h = 1,
                  .pad_w = 1};
  Tensor mp = max_pool2d(tn, pp);
  int64_t OH = mp.size(2), OW = mp.size(3);
  std::vector<uint8_t> yp(N * OH * OW * C);
  K.max_pool2d(a.data(), N, C, H, W, 3, 3, 2, 2, 1, 1, yp.data(), OH, OW);
  CHECK(max_diff(yp, to_q(mp.permute({0, 2, 3, 1}), ga)) == 0);
  // Average: the sum order differs from tb's kernel: one step at most.
  K.avg_pool2d(a.data(), ga, N, C, H, W, 3, 3, 2, 2, 1, 1, yp.data(), gy, OH, OW);
  CHECK(max_diff(yp, to_q(avg_pool2d(tn, pp).permute({0, 2, 3, 1}), gy)) <= 1);
}

TEST_CASE("integer add / mul / cat / activations / pools: the OpenMP table equals the reference") {
  Generator g(23);
  const auto& R = k::QElementwiseKernels::ref;
  const auto& F = k::QElementwiseKernels::cpu;
  // Odd sizes; grids with zero points at the range ends.
  k::QGrid ga{0.031f, 0}, gb{0.017f, 255}, gy{0.05f, 131};
  int64_t N = 3, C = 19, H = 11, W = 9, n = N * C * H * W;
  auto a = random_u8(n, g), b = random_u8(n, g), s = random_u8(N * C, g);
  auto same = [](const std::vector<uint8_t>& x, const std::vector<uint8_t>& y) { return x == y; };
  std::vector<uint8_t> yr(n), yf(n);
  R.add(a.data(), ga, b.data(), gb, yr.data(), gy, n);
  F.add(a.data(), ga, b.data(), gb, yf.data(), gy, n);
  CHECK(same(yr, yf));
  R.mul(a.data(), ga, s.data(), gb, yr.data(), gy, N, H * W, C, true);
  F.mul(a.data(), ga, s.data(), gb, yf.data(), gy, N, H * W, C, true);
  CHECK(same(yr, yf));
  R.mul(a.data(), ga, b.data(), gb, yr.data(), gy, N, H * W, C, false);
  F.mul(a.data(), ga, b.data(), gb, yf.data(), gy, N, H * W, C, false);
  CHECK(same(yr, yf));
  const auto kinds = {k::QActivation::ReLU,    k::QActivation::ReLU6, k::QActivation::Hardswish,
                      k::QActivation::Sigmoid, k::QActivation::SiLU,  k::QActivation::Hardsigmoid};
  for (auto kind : kinds) {
    R.activation(kind, a.data(), ga, yr.data(), gy, n);
    F.activation(kind, a.data(), ga, yf.data(), gy, n);
    CHECK(same(yr, yf));
  }
  // Every level on several grids (the cpu table of sigmoid / silu / hardsigmoid against the
  // reference's per-element formula), and a large input (the OpenMP lookup).
  std::vector<uint8_t> all(256), ar(256), af(256);
  for (int i = 0; i < 256; i++) all[i] = (uint8_t)i;
  for (auto kind : kinds)
    for (k::QGrid gx : {ga, gb, k::QGrid{0.07f, 128}, k::QGrid{0.0039f, 3}})
      for (k::QGrid go : {gy, k::QGrid{1.0f / 256, 0}, k::QGrid{0.011f, 250}}) {
        INFO("kind " << (int)kind << " in (" << gx.scale << ", " << gx.zp << ") out ("
                     << go.scale << ", " << go.zp << ")");
        R.activation(kind, all.data(), gx, ar.data(), go, 256);
        F.activation(kind, all.data(), gx, af.data(), go, 256);
        CHECK(same(ar, af));
      }
  int64_t big = (1 << 17) + 5;
  auto xb = random_u8(big, g);
  std::vector<uint8_t> br(big), bf(big);
  for (auto kind : kinds) {
    R.activation(kind, xb.data(), gb, br.data(), gy, big);
    F.activation(kind, xb.data(), gb, bf.data(), gy, big);
    CHECK(same(br, bf));
  }
  auto c2 = random_u8(N * H * W * 5, g);
  const uint8_t* xs[2] = {a.data(), c2.data()};
  k::QGrid gs[2] = {ga, gb};
  int64_t widths[2] = {C, 5};
  std::vector<uint8_t> cr(N * H * W * (C + 5)), cf(cr.size());
  R.cat(xs, gs, widths, 2, cr.data(), gy, N * H * W);
  F.cat(xs, gs, widths, 2, cf.data(), gy, N * H * W);
  CHECK(same(cr, cf));
  struct P { int64_t k, s, p; };
  for (P pp : std::vector<P>{{3, 2, 1}, {2, 2, 0}, {3, 1, 1}, {5, 3, 2}}) {
    INFO("pool k " << pp.k << " s " << pp.s << " p " << pp.p);
    int64_t OH = (H + 2 * pp.p - pp.k) / pp.s + 1, OW = (W + 2 * pp.p - pp.k) / pp.s + 1;
    std::vector<uint8_t> pr(N * OH * OW * C), pf(pr.size());
    R.max_pool2d(a.data(), N, C, H, W, pp.k, pp.k, pp.s, pp.s, pp.p, pp.p, pr.data(), OH, OW);
    F.max_pool2d(a.data(), N, C, H, W, pp.k, pp.k, pp.s, pp.s, pp.p, pp.p, pf.data(), OH, OW);
    CHECK(same(pr, pf));
    R.avg_pool2d(a.data(), ga, N, C, H, W, pp.k, pp.k, pp.s, pp.s, pp.p, pp.p, pr.data(), gy, OH, OW);
    F.avg_pool2d(a.data(), ga, N, C, H, W, pp.k, pp.k, pp.s, pp.s, pp.p, pp.p, pf.data(), gy, OH, OW);
    CHECK(same(pr, pf));
  }
}

TEST_CASE("integer channel shuffle: the uint8 levels permuted, equal to the float shuffle") {
  q::QParams p{.scale = full({1}, 0.05), .zero_point = full({1}, 11.0, TensorOptions(kInt32))};
  q::Quantize quant(p);
  quant.emit_uint8 = true;
  struct Case { Shape shape; int64_t groups; };
  for (const Case& c : std::vector<Case>{{{2, 6, 3, 5}, 2}, {{1, 12, 4, 4}, 3}, {{3, 8, 1, 1}, 4},
                                         {{2, 5, 2, 3}, 1}, {{1, 64, 32, 33}, 2}}) {
    INFO("shape " << shape_str(c.shape) << " groups " << c.groups);
    Tensor xf = mul(randint(-11, 245, c.shape).to(kFloat32), 0.05); // on the grid
    Tensor a = quant(xf);
    REQUIRE(q::is_quantized_activation(a));
    nn::ChannelShuffle shuffle(c.groups);
    q::QuantizedChannelShuffle qs(shuffle);
    CHECK(qs.extra_repr() == shuffle.extra_repr());
    Tensor want = nn::channel_shuffle(q::dequantize(a), c.groups);
    qs.emit_uint8 = true;
    Tensor y = qs(a);
    REQUIRE(q::is_quantized_activation(y)); // the same grid, no requantization
    CHECK(y.is_channels_last());
    CHECK(y.shape() == c.shape);
    CHECK(tbtest::max_abs_diff(q::dequantize(y), want) == 0);
    CHECK(tbtest::max_abs_diff(q::dequantize(y), q::dequantize(quant(want))) == 0);
    qs.emit_uint8 = false; // the float carrier for float readers
    Tensor yf = qs(a);
    CHECK(yf.dtype() == kFloat32);
    CHECK(tbtest::max_abs_diff(yf, want) == 0);
    CHECK(tbtest::max_abs_diff(qs(xf), nn::channel_shuffle(xf, c.groups)) == 0); // float in
  }
  // The integer activations without an output grid (no Quantize after them) run the float op on
  // the dequantized input.
  Tensor a = quant(mul(randint(-11, 245, {2, 3, 4, 4}).to(kFloat32), 0.05));
  Tensor d = q::dequantize(a);
  CHECK(tbtest::max_abs_diff(q::QuantizedSigmoid(nn::Sigmoid())(a), sigmoid(d)) == 0);
  CHECK(tbtest::max_abs_diff(q::QuantizedSiLU(nn::SiLU())(a), silu(d)) == 0);
  CHECK(tbtest::max_abs_diff(q::QuantizedHardsigmoid(nn::Hardsigmoid())(a), hardsigmoid(d)) == 0);
}

// ---- 3. converted models: integer = fake-quant -----------------------------------------------------

TEST_CASE("small_net: every integer layer equals its fake-quant twin within one step") {
  manual_seed(3);
  Twins t = convert_twins(tbtest::small_net(), {8, 2, 3, 3}, 4, /*uint8_flow=*/false);
  Tensor x = randn({8, 2, 3, 3});
  CHECK(check_layers(t, x) == 2);
  no_grad ng;
  Tensor yi = (*t.integer)(x), yf = (*t.fake)(x);
  double step = out_scale(t.integer->get_submodule("module.classifier"));
  CHECK(tbtest::max_abs_diff(yi, yf) <= step * 1.001);
  // An integer layer's output passes its Quantize unchanged: it is on that grid already, and
  // fake-quantizing it again gives the same values (what makes the pass-through exact).
  auto& conv = t.integer->get_submodule("module.features.0");
  auto& qz = dynamic_cast<q::Quantize&>(*conv.child("activation_post_process"));
  Tensor xin = (*t.integer->get_submodule("quant").child("activation_post_process"))(
      (t.integer->get_submodule("quant"))(x));
  Tensor y = conv(xin);
  CHECK(qz(y).is_same(y));
  CHECK(tbtest::max_abs_diff(q::fake_quantize(y, qz.qparams()), y) == 0);
  Tensor other = add(y, 0.0); // same values, but no quantizer made it: quantized again
  CHECK_FALSE(qz(other).is_same(other));
}

TEST_CASE("the main job's CNN: integer layers, model output, reference kernels agree") {
  manual_seed(4);
  // The main job's CNN at width 0.25 (8/16 channels): the same layers, a quicker test.
  auto net = std::dynamic_pointer_cast<nn::Sequential>(
      models::cnn({.num_classes = 10, .in_channels = 1, .width_mult = 0.25}));
  REQUIRE(net);
  Twins t = convert_twins(net, {16, 1, 28, 28}, 3);
  Tensor x = randn({16, 1, 28, 28});
  int64_t differing = 0;
  int uint8_inputs = 0, joins = 0;
  CHECK(check_layers(t, x, &differing, {}, &uint8_inputs, &joins) == 4);
  CHECK(joins == 3); // the two max pools and the flatten, on uint8
  // uint8 activations all the way: the QuantStub's output, the max pools, the flatten and the
  // ReLU-fused fc1 hand uint8 to the next integer layer, the last one to the DeQuantStub.
  CHECK(uint8_inputs == 4);
  CHECK(t.report.float_outputs == 0);
  CHECK(t.report.uint8_outputs >= 7);
  MESSAGE("CNN: " << differing << " layer outputs differ by one step from fake-quant");
  no_grad ng;
  Tensor yi = (*t.integer)(x), yf = (*t.fake)(x);
  double step = out_scale(t.integer->get_submodule("module.11"));
  double d = tbtest::max_abs_diff(yi, yf);
  MESSAGE("CNN output: max |integer - fake-quant| = " << d / step << " steps");
  CHECK(d <= 3 * step * 1.001); // one step per layer can add up through the 4 layers
  // The reference kernels (every op's, set_cpu_kernels) give the same integer layer outputs as
  // oneDNN; the float glue between them (max pools) is exact either way.
  CpuKernels prev = cpu_kernels();
  set_cpu_kernels(CpuKernels::Reference);
  Tensor yr = (*t.integer)(x);
  set_cpu_kernels(prev);
  CHECK(tbtest::max_abs_diff(yr, yi) == 0);
}

TEST_CASE("mobilenet_v2 (small input): every integer layer within one step of fake-quant") {
  manual_seed(5);
  auto m = models::create("mobilenet_v2", {.num_classes = 10, .small_input = true,
                                           .in_channels = 1});
  Twins t = convert_twins(m, {4, 1, 28, 28}, 2);
  Tensor x = randn({4, 1, 28, 28});
  int64_t differing = 0;
  // The classifier's input comes from the functional adaptive_avg_pool2d in MobileNetV2's
  // forward, which no observer sees: unquantized in the fake-quant model too, so that Linear runs
  // the float path on it.
  int uint8_inputs = 0, joins = 0;
  int n = check_layers(t, x, &differing, {"module.classifier.1"}, &uint8_inputs, &joins);
  CHECK(joins == 10); // the residual adds, integer
  CHECK(n >= 50);
  CHECK(uint8_inputs == n - 1); // all but the classifier
  // The last feature conv's output is read by the functional pool only: it stays float.
  bool features_out_float = false;
  for (const auto& r : t.report.float_output_reasons)
    features_out_float |= r.find("no module reads it") != std::string::npos;
  CHECK(features_out_float);
  MESSAGE("mobilenet_v2: " << n << " integer layers, " << differing
                           << " outputs differ by one step from fake-quant");
  no_grad ng;
  Tensor yi = (*t.integer)(x), yf = (*t.fake)(x);
  double step = out_scale(t.integer->get_submodule("module.classifier.1"));
  MESSAGE("mobilenet_v2 output: max |integer - fake-quant| = "
          << tbtest::max_abs_diff(yi, yf) / step << " steps of the classifier's output grid");
  // Per-layer differences of one step could add up through 53 layers; measured: they do not
  // (this seed, fixed): within one step of the output grid.
  CHECK(tbtest::max_abs_diff(yi, yf) <= step * 1.001);
  CHECK(allclose(isfinite(yi).to(kFloat32), ones_like(yi)));
}

TEST_CASE("the zoo (small input): uint8 activations between integer layers, each within one step") {
  // Per model: the layers whose input is computed by code in the model's forward that no
  // observer sees (a functional mean), so it is not quantized in the fake-quant model either.
  // `float_inputs`: how many integer layers may get a float carrier: those after a functional op.
  // `twins`: whether the model has sigmoid / silu / hardsigmoid / channel shuffle modules (their
  // integer twins must all run on uint8 and hand uint8 on). `float_outputs`: the module outputs
  // that stay float: ResNet-18's none (its blocks' conv/BN pairs are fused, found from the data
  // flow), EfficientNet's none (its StochasticDepth passes uint8 on in eval), MobileNetV3's none,
  // ShuffleNetV2's last conv (read by the functional mean).
  struct Z {
    const char* name;
    std::set<std::string> off_grid;
    int float_inputs;
    bool twins;
    int float_outputs;
  };
  std::vector<Z> zoo = {{"resnet18", {}, 0, false, 0},
                        {"mobilenet_v1", {}, 0, false, 0},
                        {"mobilenet_v3_small", {}, 0, true, 0},
                        {"shufflenet_v2_x0_5", {"module.fc"}, 1, true, 1},
                        {"efficientnet_b0", {}, 0, true, 0}};
  uint64_t seed = 30;
  for (const Z& z : zoo) {
    INFO(z.name);
    manual_seed(seed++);
    auto m = models::create(z.name, {.num_classes = 10, .small_input = true, .in_channels = 1});
    Twins t = convert_twins(m, {2, 1, 28, 28}, 2);
    Tensor x = randn({2, 1, 28, 28});
    int twin_calls = 0, twin_u8 = 0;
    std::vector<nn::HookHandle> twin_hooks;
    for (nn::Module* mod : t.integer->modules())
      if (dynamic_cast<q::QuantizedSigmoid*>(mod) || dynamic_cast<q::QuantizedSiLU*>(mod) ||
          dynamic_cast<q::QuantizedHardsigmoid*>(mod) ||
          dynamic_cast<q::QuantizedChannelShuffle*>(mod))
        twin_hooks.push_back(mod->register_forward_hook(
            [&](nn::Module&, const std::vector<Tensor>& in, const Tensor& y) {
              twin_calls++;
              twin_u8 += q::is_quantized_activation(in[0]) && q::is_quantized_activation(y);
            }));
    int64_t differing = 0;
    int uint8_inputs = 0, joins = 0;
    int n = check_layers(t, x, &differing, z.off_grid, &uint8_inputs, &joins);
    for (auto& h : twin_hooks) h.remove();
    CHECK(joins > 0);
    CHECK(twin_u8 == twin_calls);
    CHECK((twin_calls > 0) == z.twins);
    CHECK(t.report.float_outputs == z.float_outputs);
    MESSAGE(std::string(z.name) << ": " << joins << " integer joins / activations / pools, "
                                << twin_calls << " of them sigmoid / silu / hardsigmoid / shuffle");
    MESSAGE(std::string(z.name) << ": " << n << " integer layers, " << uint8_inputs << " with uint8 input, "
                   << differing << " outputs one step from fake-quant; " << t.report.uint8_outputs
                   << " module outputs uint8, " << t.report.float_outputs << " float");
    for (const auto& r : t.report.float_output_reasons) MESSAGE("  " << r);
    CHECK(n > 10);
    CHECK(uint8_inputs == n - z.float_inputs);
    no_grad ng;
    Tensor yi = (*t.integer)(x), yf = (*t.fake)(x);
    CHECK(yi.dtype() == kFloat32); // the DeQuantStub turned the last uint8 activation into float
    CHECK(allclose(isfinite(yi).to(kFloat32), ones_like(yi)));
  }
}

namespace {
// A module whose forward reads its conv's output twice: through a module (the ReLU, which takes
// uint8) and through a float function the trace cannot see.
class TwoReaders : public nn::Module {
 public:
  TwoReaders() {
    register_module("quant", std::make_shared<q::QuantStub>());
    register_module("conv", std::make_shared<nn::Conv2d>(2, 4, 3));
    register_module("relu", std::make_shared<nn::ReLU>());
    register_module("dequant", std::make_shared<q::DeQuantStub>());
  }
  Tensor forward(const Tensor& x) override {
    Tensor y = (*child("conv"))((*child("quant"))(x));
    Tensor r = (*child("dequant"))((*child("relu"))(y));
    return mode == 0 ? r : add(r, mean(y)); // mode 1: a float function reads y too
  }
  TB_MODULE(TwoReaders)
  int mode = 0;
};
} // namespace

TEST_CASE("residual adds fused into their conv: the model's output bit for bit the unfused one") {
  // MobileNetV2: x + conv(x), the projection conv fused (10 adds). ResNet-18: conv2's output +
  // identity, conv2 fused in the blocks without downsample; with downsample the identity is made
  // after conv2, so the downsample conv is fused, with conv2's output as the residual (8 adds).
  struct Case { const char* name; int64_t adds; };
  for (Case z : {Case{"mobilenet_v2", 10}, Case{"resnet18", 8}}) {
    CAPTURE(z.name);
    manual_seed(21);
    nn::ModulePtr m = models::create(z.name, {.num_classes = 10, .small_input = true,
                                              .in_channels = 1});
    Shape input{2, 1, 28, 28};
    randomise_bn(*m, 12);
    m->eval();
    q::fuse_modules(*m, q::find_fusable_groups(*m, input));
    auto model = std::make_shared<q::QuantWrapper>(m);
    q::prepare(*model);
    {
      no_grad ng;
      for (int i = 0; i < 2; i++) (*model)(randn(input));
    }
    nn::ModulePtr plain = nn::clone(*model);
    q::ConversionReport fused_rep = q::convert(*model, {.input_shape = input, .fuse_add = true});
    q::ConversionReport plain_rep = q::convert(*plain, {.input_shape = input});
    CHECK(fused_rep.fused_adds == z.adds);
    CHECK(plain_rep.fused_adds == 0);
    int named = 0;
    for (const auto& l : fused_rep.layers) named += l.reason.find("sum post-op") != std::string::npos;
    CHECK(named == z.adds);
    no_grad ng;
    for (int pass = 0; pass < 2; pass++) { // the second pass on the cached plans
      Tensor x = randn(input);
      Tensor yf = (*model)(x), yp = (*plain)(x);
      CHECK(tbtest::max_abs_diff(yf, yp) == 0);
    }
    // The fused add hands on the conv's result only with the traced inputs; other tensors are a
    // tb::Error (the residual is already in the sum), not a second addition.
    q::QuantizedAdd* add = nullptr;
    for (auto* mod : model->modules())
      if (auto* a = dynamic_cast<q::QuantizedAdd*>(mod); a && a->fused_conv.f && !add) add = a;
    REQUIRE(add != nullptr);
    Tensor levels = randn({2, 8, 4, 4});
    add->fused_conv.f->result = levels;
    add->fused_conv.f->residual_used = levels.clone();
    check_error([&] { (*add)(levels, levels); }, {"QuantizedAdd", "fuse_add", "traced"});
  }
}

TEST_CASE("uint8 flow: an output also read by code the trace cannot see fails loudly") {
  manual_seed(13);
  auto m = std::make_shared<TwoReaders>();
  m->eval();
  q::prepare(*m);
  {
    no_grad ng;
    (*m)(randn({2, 2, 6, 6}));
  }
  q::ConversionReport rep = q::convert(*m, {.input_shape = {2, 2, 6, 6}});
  CHECK(rep.uint8_outputs == 3); // the QuantStub's, the conv's and the ReLU's
  no_grad ng;
  Tensor x = randn({2, 2, 6, 6});
  CHECK((*m)(x).dtype() == kFloat32);
  m->mode = 1; // the forward changed after convert planned the flow: mean() gets uint8
  check_error([&] { (*m)(x); }, {"mean", "quantized activation", "dequantize it first"});
}

TEST_CASE("convert keep_faster: each integer layer timed both ways, the report says which and why") {
  manual_seed(12);
  auto net = models::cnn({.num_classes = 10, .in_channels = 1, .width_mult = 0.25});
  net->eval();
  q::fuse_modules(*net, q::find_fusable_groups(*net));
  auto model = std::make_shared<q::QuantWrapper>(net);
  q::prepare(*model);
  {
    no_grad ng;
    (*model)(randn({4, 1, 28, 28}));
  }
  check_error([&] { q::convert(*nn::clone(*model), {.keep_faster = true}); },
              {"keep_faster", "input_shape"});
  q::ConversionReport rep =
      q::convert(*model, {.input_shape = {4, 1, 28, 28}, .keep_faster = true, .timing_runs = 3});
  int timed = 0;
  for (const auto& l : rep.layers) {
    if (l.type != "QuantizedConv2d" && l.type != "QuantizedLinear") continue;
    INFO(l.path << ": " << l.reason);
    CHECK(l.int8_ms > 0);
    CHECK(l.float_ms > 0);
    bool integer = l.type == "QuantizedConv2d"
                       ? dynamic_cast<q::QuantizedConv2d&>(model->get_submodule(l.path)).integer
                       : dynamic_cast<q::QuantizedLinear&>(model->get_submodule(l.path)).integer;
    // The choice follows the times, and the report says it with both of them.
    CHECK(integer == (l.int8_ms < l.float_ms));
    std::string want = integer ? "int8 kept: " : "kept float (keep_faster): int8 ";
    CHECK(l.reason.find(want) != std::string::npos);
    CHECK(l.reason.find("ms") != std::string::npos);
    CHECK(l.reason.find("[4, ") != std::string::npos); // the traced input shape
    if (!integer) {
      const std::string& why =
          l.type == "QuantizedConv2d"
              ? dynamic_cast<q::QuantizedConv2d&>(model->get_submodule(l.path)).float_reason
              : dynamic_cast<q::QuantizedLinear&>(model->get_submodule(l.path)).float_reason;
      CHECK(why.find("keep_faster") != std::string::npos);
    }
    timed++;
  }
  CHECK(timed == 4);
  MESSAGE(rep.str());
  // Whatever was chosen, the model runs and its uint8 flow respects the float layers.
  no_grad ng;
  Tensor y = (*model)(randn({4, 1, 28, 28}));
  CHECK(y.shape() == Shape{4, 10});
  CHECK(y.dtype() == kFloat32);
}

TEST_CASE("quantized activations: float ops refuse them, dequantize / DeQuantStub turn them back") {
  Tensor xf = mul(randint(-7, 20, {2, 3, 4, 5}).to(kFloat32), 0.1);
  Tensor xq = q::dequantize(xf); // a float tensor is returned as it is
  CHECK(xq.is_same(xf));
  // Quantize with emit_uint8 makes a uint8 activation (channels-last) on its grid.
  q::QParams p{.scale = full({1}, 0.1), .zero_point = full({1}, 7.0, TensorOptions(kInt32))};
  q::Quantize quant(p);
  quant.emit_uint8 = true;
  Tensor a = quant(xf);
  REQUIRE(q::is_quantized_activation(a));
  CHECK(a.dtype() == kUInt8);
  CHECK(a.shape() == xf.shape());
  CHECK(a.is_channels_last());
  CHECK(tbtest::max_abs_diff(q::dequantize(a), q::fake_quantize(xf, p)) == 0);
  CHECK(quant(a).is_same(a)); // already on its grid
  quant.emit_uint8 = false;
  CHECK(quant(a).dtype() == kFloat32);
  CHECK(tbtest::max_abs_diff(q::DeQuantStub()(a), q::fake_quantize(xf, p)) == 0);
  // Float ops given one: tb::Error naming the op, saying what it is and what to do.
  std::vector<std::string> want = {"quantized activation", "dequantize it first"};
  auto with = [&](const char* op) {
    std::vector<std::string> w = want;
    w.push_back(op);
    return w;
  };
  check_error([&] { conv2d(a, randn({2, 3, 3, 3}), Tensor(), {}); }, with("conv2d"));
  check_error([&] { add(a, xf); }, with("add"));
  check_error([&] { mul(xf, a); }, with("mul"));
  check_error([&] { relu(a); }, with("relu"));
  check_error([&] { max_pool2d(a, {.kernel_h = 2, .kernel_w = 2}); }, with("max_pool2d"));
  check_error([&] { adaptive_avg_pool2d(a, 1, 1); }, with("adaptive_avg_pool2d"));
  check_error([&] { mean(a, {2, 3}); }, with("mean"));
  // Reading the levels as values: a dtype conversion or a copy into a float tensor.
  check_error([&] { a.to(kFloat32); }, with("to"));
  check_error([&] { zeros(a.shape()).copy_(a); }, with("copy_"));
  CHECK(a.clone().dtype() == kUInt8); // a uint8 copy is still levels, not values: allowed
  check_error([&] { softmax(a, 1); }, with("softmax"));
  check_error([&] { batch_norm(a, zeros({3}), ones({3}), Tensor(), Tensor(), {}); },
              with("batch_norm"));
  quant.emit_uint8 = true;
  Tensor a2 = quant(xf.reshape({6, 20})); // 2-D: row-major
  REQUIRE(q::is_quantized_activation(a2));
  CHECK(a2.is_contiguous());
  check_error([&] { linear(a2, randn({4, 20}), Tensor()); }, with("linear"));
  check_error([&] { nn::ReLU()(a); }, with("relu"));
  // An ordinary uint8 tensor (no integer layer made it) is not a quantized activation.
  Tensor plain = randint(0, 5, {2, 3}).to(kUInt8);
  CHECK_FALSE(q::is_quantized_activation(plain));
  CHECK(add(plain, plain).dtype() == kUInt8);
  // Views share the grid (flatten, narrow); a copy does not.
  CHECK(q::is_quantized_activation(a2.narrow(0, 1, 2)));
  CHECK_FALSE(q::is_quantized_activation(a2.clone()));
}

TEST_CASE("quantizing an NCHW float input: levels in channels-last order, any channel count") {
  // The model's first Quantize reads NCHW images: tiles of pixels, quantized per channel and
  // transposed (three channels: the vector interleave, 64 pixels a step, then the rest one by
  // one). Every level is checked against the fake-quant value at its own logical index.
  q::QParams p{.scale = full({1}, 0.05), .zero_point = full({1}, 100.0, TensorOptions(kInt32))};
  q::Quantize quant(p);
  quant.emit_uint8 = true;
  for (Shape s : {Shape{2, 3, 37, 41}, Shape{1, 3, 67, 61}, Shape{1, 3, 8, 8}, Shape{2, 4, 9, 7},
                  Shape{1, 3, 1, 5}}) {
    CAPTURE(shape_str(s));
    Tensor xf = mul(randn(s), 3.0); // beyond the grid's range at both ends: saturation too
    Tensor a = quant(xf);
    REQUIRE(q::is_quantized_activation(a));
    CHECK(a.is_channels_last());
    CHECK(tbtest::max_abs_diff(q::dequantize(a), q::fake_quantize(xf, p)) == 0);
  }
}

TEST_CASE("convert's report says which kernel each layer runs, and why a layer stays float") {
  manual_seed(6);
  auto net = tbtest::small_net();
  net->eval();
  auto model = std::make_shared<q::QuantWrapper>(net);
  q::QConfigMapping cfg;
  cfg.by_type["Linear"] = q::default_qconfig();
  cfg.by_type["Linear"].weight.spec = {.dtype = q::QDType::QInt8,
                                       .qscheme = q::QScheme::PerTensorAffine};
  cfg.by_type["Linear"].weight.observer = q::ObserverKind::MinMax;
  q::prepare(*model, cfg);
  {
    no_grad ng;
    (*model)(randn({4, 2, 3, 3}));
  }
  q::ConversionReport rep = q::convert(*model);
  std::string s = rep.str();
  CHECK(s.find("integer kernel") != std::string::npos);
  auto& conv = dynamic_cast<q::QuantizedConv2d&>(model->get_submodule("module.features.0"));
  CHECK(conv.integer);
  auto& fc = dynamic_cast<q::QuantizedLinear&>(model->get_submodule("module.classifier"));
  // Affine int8 weights have a non-zero zero point: the layer keeps the float kernel and says so.
  CHECK(fc.weight_qparams().zero_point.item() != 0);
  CHECK_FALSE(fc.integer);
  CHECK(fc.float_reason.find("zero point") != std::string::npos);
  CHECK(s.find("float kernel (dequantized weights): weight zero point") != std::string::npos);
  no_grad ng;
  Tensor y = (*model)(randn({4, 2, 3, 3}));
  CHECK(y.shape() == Shape{4, 5});
}

TEST_CASE("integer conv plans: made once per layer, remade when the weights change") {
  manual_seed(10);
  Twins t = convert_twins(tbtest::small_net(), {8, 2, 3, 3}, 2, /*uint8_flow=*/false);
  Tensor x = randn({8, 2, 3, 3});
  no_grad ng;
  Tensor y1 = (*t.integer)(x);
  int64_t before = k::onednn::primitives_created();
  Tensor y2 = (*t.integer)(x);
  CHECK(k::onednn::primitives_created() == before); // no new primitive or reorder
  CHECK(tbtest::max_abs_diff(y1, y2) == 0);
  // New weights written in place (as load_state_dict does): the plan follows them.
  auto& conv = t.integer->get_submodule("module.features.0");
  auto& twin = t.fake->get_submodule("module.features.0");
  Tensor xin = (*t.integer->get_submodule("quant").child("activation_post_process"))(x);
  Tensor y_old = conv(xin);
  Tensor w = randint(-100, 100, conv.get("weight").shape()).to(kInt8);
  conv.get("weight").copy_(w);
  twin.get("weight").copy_(w);
  Tensor yi = conv(xin), yf = twin(xin);
  CHECK(tbtest::max_abs_diff(yi, y_old) > 0);
  CHECK(tbtest::max_abs_diff(yi, yf) <= out_scale(conv) * 1.001);
}

namespace {
// small_net converted (seed 8): calibrated on one random batch, or not (its qparams are then to be
// loaded from a checkpoint); with `flow`, the uint8 flow planned for [4, 2, 3, 3].
nn::ModulePtr converted_small_net(bool calibrate, bool flow = false) {
  manual_seed(8);
  auto model = std::make_shared<q::QuantWrapper>(tbtest::small_net());
  model->eval();
  q::prepare(*model);
  if (calibrate) {
    no_grad ng;
    (*model)(randn({8, 2, 3, 3}));
  }
  q::convert(*model, {.allow_uncalibrated = !calibrate,
                      .input_shape = flow ? Shape{4, 2, 3, 3} : Shape{}});
  return model;
}
} // namespace

TEST_CASE("a converted integer model round-trips through a checkpoint") {
  auto build = [](bool calibrate) { return converted_small_net(calibrate); };
  auto a = build(true);
  auto path = (std::filesystem::temp_directory_path() / "tb_int8_ckpt.safetensors").string();
  q::save(*a, path);
  auto b = build(false);
  q::load(*b, path);
  CHECK(b->state_dict().contains("module.features.0.input_scale"));
  no_grad ng;
  Tensor x = randn({3, 2, 3, 3});
  CHECK(tbtest::max_abs_diff((*a)(x), (*b)(x)) == 0);
  std::filesystem::remove(path);
}

TEST_CASE("the uint8 plan and the layers kept float travel with the checkpoint") {
  auto build = converted_small_net;
  auto emitting = [](nn::Module& m) {
    std::vector<std::string> out;
    for (auto& [p, mod] : m.named_modules())
      if (auto* q = dynamic_cast<q::Quantize*>(mod); q && q->emit_uint8) out.push_back(p);
    return out;
  };
  auto a = build(true, true);
  REQUIRE(!emitting(*a).empty());
  // One layer kept float, as keep_faster would.
  q::QuantizedConv2d* kept = nullptr;
  for (auto* m : a->modules())
    if (auto* c = dynamic_cast<q::QuantizedConv2d*>(m); c && !kept) kept = c;
  REQUIRE(kept);
  kept->integer = false;
  kept->float_reason = "kept float: int8 measured slower";
  auto path = (std::filesystem::temp_directory_path() / "tb_int8_plan.safetensors").string();
  q::save(*a, path);
  auto b = build(false, false); // no uint8 flow planned
  CHECK(emitting(*b).empty());
  q::load(*b, path);
  CHECK(emitting(*b) == emitting(*a));
  int kept_float = 0;
  for (auto* m : b->modules())
    if (auto* c = dynamic_cast<q::QuantizedConv2d*>(m); c && !c->integer) {
      kept_float++;
      CHECK(c->float_reason == "kept float: int8 measured slower");
    }
  CHECK(kept_float == 1);
  no_grad ng;
  Tensor x = randn({4, 2, 3, 3});
  CHECK(tbtest::max_abs_diff((*a)(x), (*b)(x)) == 0);
  // Malformed plan metadata: a tb::Error naming the file, not a crash.
  nn::save(*a, path, {{"tb.quant", "converted"}, {"tb.quant.schema", "1"},
                      {"tb.quant.uint8", "{not json"}, {"tb.quant.float_kernel", "{}"}});
  check_error([&] { q::load(*b, path); }, {"malformed", "tb.quant.uint8", path});
  std::filesystem::remove(path);
}

// ---- 4. bad input ---------------------------------------------------------------------------------

TEST_CASE("bad input: int8 tensors in float ops, off-grid inputs, qparams, uncalibrated") {
  // An int8 tensor given to a float op without dequantizing.
  Tensor w8 = randint(-5, 5, {4, 2, 3, 3}).to(kInt8);
  CHECK_THROWS_AS(conv2d(randn({1, 2, 5, 5}), w8, Tensor(), {}), Error);
  CHECK_THROWS_AS(linear(randn({2, 3}), randint(-5, 5, {4, 3}).to(kInt8), Tensor()), Error);
  // An integer layer given a float input that no quantizer made.
  manual_seed(9);
  auto model = std::make_shared<q::QuantWrapper>(tbtest::small_net());
  model->eval();
  q::prepare(*model);
  {
    no_grad ng;
    (*model)(randn({8, 2, 3, 3}));
  }
  q::convert(*model);
  auto& conv = model->get_submodule("module.features.0");
  REQUIRE(dynamic_cast<q::QuantizedConv2d&>(conv).integer);
  // An input that no quantizer made runs the float path (as in the fake-quant model), counted.
  auto& qconv = dynamic_cast<q::QuantizedConv2d&>(conv);
  CHECK(qconv.off_grid_calls == 0);
  {
    no_grad ng;
    conv(randn({1, 2, 3, 3}));
  }
  CHECK(qconv.off_grid_calls == 1);
  check_error([&] { conv(randn({1, 3, 3, 3})); }, {"QuantizedConv2d", "3 channels", "expects 2"});
  // A channel shuffle whose groups do not divide the channels of a uint8 activation, or given a
  // 2-D one: the float op's error.
  q::QParams pq{.scale = full({1}, 0.1), .zero_point = full({1}, 3.0, TensorOptions(kInt32))};
  q::Quantize quant(pq);
  quant.emit_uint8 = true;
  q::QuantizedChannelShuffle shuffle(nn::ChannelShuffle(4));
  Tensor a6 = quant(randn({1, 6, 2, 2}));
  REQUIRE(q::is_quantized_activation(a6));
  check_error([&] { shuffle(a6); }, {"channel_shuffle", "divisible by groups (4)", "[1, 6, 2, 2]"});
  check_error([&] { shuffle(quant(randn({2, 8}))); }, {"channel_shuffle", "4-D", "[2, 8]"});
  check_error([&] { conv(randn({1, 2, 3, 3}).to(kInt8)); }, {"QuantizedConv2d", "float32"});
  // Qparams that do not fit the tensor.
  q::QParams pc{.scale = ones({3}), .zero_point = zeros({3}, TensorOptions(kInt32)),
                .per_channel = true, .axis = 0, .qmin = -128, .qmax = 127};
  CHECK_THROWS_AS(q::dequantize_tensor(randint(-5, 5, {4, 2}).to(kInt8), pc), Error);
  check_error([&] { dynamic_cast<q::QuantizedConv2d&>(conv).set_input_qparams(pc); },
              {"QuantizedConv2d", "per tensor"});
  // A model converted but never calibrated.
  auto raw = std::make_shared<q::QuantWrapper>(tbtest::small_net());
  raw->eval();
  q::prepare(*raw);
  check_error([&] { q::convert(*raw); }, {"never calibrated"});
}

} // TEST_SUITE
