// tests/gradcheck.h — float64 finite-difference gradient checks.
//
// For f: inputs -> output, we check the vector-Jacobian product that backward computes:
// with a fixed random R shaped like the output, L(inputs) = sum(f(inputs) * R), and
// dL/dx_i ≈ (L(x + eps e_i) - L(x - eps e_i)) / (2 eps) for every element i of every input.
// Inputs must be float64 leaves; non-smooth ops should be fed points away from their kinks.
#pragma once

#include <doctest/doctest.h>
#include <tb/io.h>
#include <tb/tb.h>

#include <cmath>
#include <functional>
#include <map>
#include <vector>

namespace tbtest {

using Fn = std::function<tb::Tensor(const std::vector<tb::Tensor>&)>;

inline double weighted_sum(const tb::Tensor& out, const tb::Tensor& r) {
  auto o = out.to_vector(), w = r.to_vector();
  double s = 0;
  for (size_t i = 0; i < o.size(); i++) s += o[i] * w[i];
  return s;
}

// Returns true when every analytic gradient element matches the numeric one within
// atol + rtol * |numeric|; reports the first mismatches through doctest.
inline bool gradcheck(const Fn& f, std::vector<tb::Tensor> inputs, double eps = 1e-6,
                      double atol = 1e-6, double rtol = 1e-5) {
  for (auto& x : inputs) {
    REQUIRE(x.dtype() == tb::kFloat64);
    x = x.detach().contiguous();
    x.requires_grad_(true);
  }
  tb::Tensor out = f(inputs);
  tb::Generator g(1234);
  tb::Tensor r = tb::randn(out.shape(), {tb::kFloat64}, &g);
  tb::Tensor loss = tb::sum(tb::mul(out, r));
  loss.backward();

  bool ok = true;
  int reported = 0;
  for (size_t k = 0; k < inputs.size(); k++) {
    tb::Tensor x = inputs[k];
    std::vector<double> analytic(x.numel(), 0.0);
    if (x.grad().defined()) analytic = x.grad().to_vector();
    double* p = x.data<double>();
    for (int64_t i = 0; i < x.numel(); i++) {
      double saved = p[i];
      double lp, lm;
      {
        tb::no_grad ng;
        p[i] = saved + eps;
        lp = weighted_sum(f(inputs), r);
        p[i] = saved - eps;
        lm = weighted_sum(f(inputs), r);
        p[i] = saved;
      }
      double numeric = (lp - lm) / (2 * eps);
      if (std::abs(numeric - analytic[i]) > atol + rtol * std::abs(numeric)) {
        ok = false;
        if (reported++ < 5)
          FAIL_CHECK("gradcheck: input " << k << " element " << i << ": analytic " << analytic[i]
                                         << " vs numeric " << numeric);
      }
    }
  }
  return ok;
}

// max |a - b| over all elements (any dtype, same numel).
inline double max_abs_diff(const tb::Tensor& a, const tb::Tensor& b) {
  auto x = a.to_vector(), y = b.to_vector();
  REQUIRE(x.size() == y.size());
  double m = 0;
  for (size_t i = 0; i < x.size(); i++) m = std::max(m, std::abs(x[i] - y[i]));
  return m;
}

// Checks that `fn` throws tb::Error whose message contains every one of `needles`.
inline void check_error(const std::function<void()>& fn, const std::vector<std::string>& needles) {
  try {
    fn();
    FAIL_CHECK("expected tb::Error, nothing was thrown");
  } catch (const tb::Error& e) {
    std::string msg = e.what();
    for (auto& n : needles)
      CHECK_MESSAGE(msg.find(n) != std::string::npos, "message '" << msg << "' lacks '" << n << "'");
  }
}

// A float64 tensor of standard-normal values from its own seeded generator.
inline tb::Tensor r64(const tb::Shape& s, uint64_t seed) {
  tb::Generator g(seed);
  return tb::randn(s, {tb::kFloat64}, &g);
}

// Runs f with the given CPU kernels (fast or reference) and restores the previous choice.
template <typename F> auto with_kernels(tb::CpuKernels k, F f) {
  tb::CpuKernels prev = tb::cpu_kernels();
  tb::set_cpu_kernels(k);
  auto r = f();
  tb::set_cpu_kernels(prev);
  return r;
}

// Path to a committed fixture under tests/fixtures.
inline std::string fixture(const std::string& name) {
  return std::string(TB_SOURCE_DIR) + "/tests/fixtures/" + name;
}
// The tensors of fixture file `name`, read once per test run.
inline const tb::TensorDict& fixture_file(const std::string& name) {
  static std::map<std::string, tb::TensorDict> cache;
  auto it = cache.find(name);
  if (it == cache.end()) it = cache.emplace(name, tb::load_safetensors(fixture(name)).tensors).first;
  return it->second;
}

// A small CNN for module tests: "features" = (Conv2d 2->4 3x3 padding 1, BatchNorm2d, ReLU),
// Non-trivial BN statistics and affine parameters (a trained model's look), so that activations
// spread over many quantization steps instead of collapsing after a few random layers.
inline void randomise_bn(tb::nn::Module& m, uint64_t seed) {
  using namespace tb;
  Generator g(seed);
  no_grad ng;
  for (auto* mod : m.modules())
    if (auto* bn = dynamic_cast<nn::BatchNormBase*>(mod)) {
      int64_t c = bn->num_features();
      bn->running_mean().copy_(mul(randn({c}, {}, &g), 0.2));
      bn->running_var().copy_(add(rand({c}, {}, &g), 0.5));
      if (bn->affine()) {
        bn->weight().copy_(add(rand({c}, {}, &g), 0.5));
        bn->bias().copy_(mul(randn({c}, {}, &g), 0.1));
      }
    }
}

// Half bits (bfloat16 or float16, as `t` says) of float32 values, and back.
inline std::vector<uint16_t> to_half_bits(const std::vector<float>& v, tb::DType t) {
  std::vector<uint16_t> out(v.size());
  for (size_t i = 0; i < v.size(); i++)
    out[i] = t == tb::kBFloat16 ? tb::float_to_bfloat16(v[i]) : tb::float_to_half(v[i]);
  return out;
}
inline std::vector<float> from_half_bits(const std::vector<uint16_t>& v, tb::DType t) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); i++)
    out[i] = t == tb::kBFloat16 ? tb::bfloat16_to_float(v[i]) : tb::half_to_float(v[i]);
  return out;
}

// "flatten", "classifier" = Linear(4*3*3 -> 5); takes [N, 2, 3, 3].
inline std::shared_ptr<tb::nn::Sequential> small_net() {
  using namespace tb::nn;
  auto features = std::make_shared<Sequential>();
  features->push_back(std::make_shared<Conv2d>(
      Conv2dOptions{.in_channels = 2, .out_channels = 4, .kernel_size = 3, .padding = 1}));
  features->push_back(std::make_shared<BatchNorm2d>(4));
  features->push_back(std::make_shared<ReLU>());
  auto net = std::make_shared<Sequential>();
  net->push_back("features", features);
  net->push_back("flatten", std::make_shared<Flatten>());
  net->push_back("classifier", std::make_shared<Linear>(4 * 3 * 3, 5));
  return net;
}

} // namespace tbtest
