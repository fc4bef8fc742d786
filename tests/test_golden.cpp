// tests/test_golden.cpp — PyTorch parity from committed fixtures.
//
// tools/make_fixtures.py (PyTorch 1.13) wrote tests/fixtures/golden_*.safetensors. Every case `c`
// holds its inputs, its parameters (small int64/float64 tensors), the forward output `c.out`, a
// random weight `c.R` and the gradients `c.d<input>` of L = sum(out * R). Here we run the tb op on
// the same inputs, compare the output, run backward from the same L and compare the gradients.
// Each case runs with the fast CPU kernels and with the reference kernels.
//
// Tolerances (|tb - torch| <= tol * scale + tol * |torch|, scale = max(1, max |torch|)):
//  - float64: tol = 1e-10. Both sides compute in double and differ only in summation order; the
//    shapes here sum at most a few hundred terms, so honest rounding differences stay near 1e-15
//    of the largest value (the worst seen: 1.2e-15). An error near 1e-10 is a wrong formula.
//  - float32: tol = 1e-5. Float32 has a 6e-8 unit roundoff; oneDNN/OpenBLAS and PyTorch block
//    and vectorise their sums differently, so sums of up to ~300 terms (conv weight and bias
//    gradients) differ by a few 1e-7 of the largest term (the worst seen: 3.3e-7).
#include "gradcheck.h"

#include <tb/io.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace {

using tb::Tensor;
using Leaves = std::map<std::string, Tensor>;

using tbtest::fixture_file; // fixture files are loaded once per process

struct Case {
  const tb::TensorDict& fx;
  std::string name;
  bool channels_last = false; // feed 4-D inputs in N×H×W×C memory order (same logical values)
  bool has(const std::string& key) const { return fx.contains(name + "." + key); }
  const Tensor& at(const std::string& key) const { return fx.at(name + "." + key); }
  int64_t i(const std::string& key, size_t k = 0) const { return at(key).to_int_vector().at(k); }
  double f(const std::string& key) const { return at(key).item(); }
};

// Restores the CPU kernel choice when a test leaves (also on a failed REQUIRE).
struct KernelsGuard {
  tb::CpuKernels prev = tb::cpu_kernels();
  ~KernelsGuard() { tb::set_cpu_kernels(prev); }
};

const char* kernels_name(tb::CpuKernels k) {
  return k == tb::CpuKernels::Fast ? "fast" : "reference";
}

// Compares `got` with the fixture tensor `want` (shape, dtype and values; see the tolerances above).
void expect_close(const Tensor& got, const Tensor& want, const std::string& what) {
  INFO(what);
  REQUIRE_MESSAGE(got.defined(), what << ": tb gave no tensor (no gradient?)");
  CHECK_MESSAGE(got.shape() == want.shape(),
                what << ": shape " << tb::shape_str(got.shape()) << " vs " << tb::shape_str(want.shape()));
  CHECK_MESSAGE(got.dtype() == want.dtype(), what << ": dtype " << tb::dtype_name(got.dtype())
                                                  << " vs " << tb::dtype_name(want.dtype()));
  if (got.shape() != want.shape()) return;
  const double tol = want.dtype() == tb::kFloat64 ? 1e-10 : 1e-5;
  auto a = got.to_vector(), b = want.to_vector();
  double scale = 1.0;
  for (double v : b) scale = std::max(scale, std::abs(v));
  int bad = 0;
  double worst = 0;
  for (size_t k = 0; k < a.size(); k++) {
    double err = std::abs(a[k] - b[k]);
    worst = std::max(worst, err / scale);
    if (!(err <= tol * scale + tol * std::abs(b[k])) && bad++ < 3)
      FAIL_CHECK(fmt::format("{}[{}]: tb {:.17g} vs torch {:.17g}", what, k, a[k], b[k]));
  }
  CHECK_MESSAGE(bad == 0, what << ": " << bad << " of " << a.size()
                               << " elements off, worst error / scale " << worst);
}

// Runs one case: fresh copies of `inputs` (those in `diff` require grad) go through `fn`; the
// output is compared with c.out; backward of sum(out * R) gives gradients compared with c.d<name>.
// An input absent from the fixture (e.g. a conv without bias) is passed as an undefined Tensor.
using CaseFn = std::function<Tensor(const Case&, Leaves&)>;
Leaves run_case(const Case& c, const std::vector<std::string>& inputs,
                const std::vector<std::string>& diff, const CaseFn& fn) {
  Leaves leaves;
  for (auto& name : inputs) {
    if (!c.has(name)) {
      leaves[name] = Tensor();
      continue;
    }
    Tensor t = c.at(name).clone();
    if (c.channels_last && t.dim() == 4) t = t.contiguous_channels_last();
    if (std::find(diff.begin(), diff.end(), name) != diff.end()) t.requires_grad_(true);
    leaves[name] = t;
  }
  Tensor out = fn(c, leaves);
  expect_close(out, c.at("out"), c.name + ".out");
  Tensor loss = tb::sum(tb::mul(out, c.at("R")));
  loss.backward();
  for (auto& name : diff) {
    if (!c.has(name)) continue;
    expect_close(leaves[name].grad(), c.at("d" + name), c.name + ".d" + name);
  }
  return leaves;
}

// Every case of a file whose name starts with `prefix`, in file order (keys look like case.name).
std::vector<std::string> cases_with_prefix(const tb::TensorDict& fx, const std::string& prefix) {
  std::vector<std::string> out;
  for (auto& [key, t] : fx) {
    std::string name = key.substr(0, key.find('.'));
    if (name.rfind(prefix, 0) == 0 && (out.empty() || out.back() != name)) out.push_back(name);
  }
  return out;
}

const std::string kReductions[] = {"mean", "sum", "none"}; // make_fixtures.py REDUCTIONS

// Runs `body` for every case with `prefix` in `file`, with the fast and the reference kernels,
// and with 4-D inputs in contiguous (NCHW) and channels-last (NHWC) memory order.
void for_each_case(const std::string& file, const std::string& prefix,
                   const std::function<void(const Case&)>& body) {
  const auto& fx = fixture_file(file);
  auto names = cases_with_prefix(fx, prefix);
  REQUIRE_MESSAGE(!names.empty(), "no case " << prefix << "* in " << file);
  KernelsGuard guard;
  for (auto kernels : {tb::CpuKernels::Fast, tb::CpuKernels::Reference}) {
    tb::set_cpu_kernels(kernels);
    for (bool channels_last : {false, true}) {
      for (auto& name : names) {
        INFO("case " << name << ", " << kernels_name(kernels) << " kernels, "
                     << (channels_last ? "channels-last" : "contiguous") << " inputs");
        body(Case{fx, name, channels_last});
      }
    }
  }
}

} // namespace

TEST_SUITE("golden") {

TEST_CASE("conv2d matches PyTorch (plain, stride/pad, dilation, groups, depthwise; fwd + bwd)") {
  for_each_case("golden_conv2d.safetensors", "conv_", [](const Case& c) {
    run_case(c, {"x", "w", "b"}, {"x", "w", "b"}, [](const Case& c, Leaves& l) {
      tb::Conv2dParams p;
      p.stride_h = c.i("stride", 0), p.stride_w = c.i("stride", 1);
      p.pad_h = c.i("padding", 0), p.pad_w = c.i("padding", 1);
      p.dilation_h = c.i("dilation", 0), p.dilation_w = c.i("dilation", 1);
      p.groups = c.i("groups");
      return tb::conv2d(l["x"], l["w"], l["b"], p);
    });
  });
}

TEST_CASE("batch_norm matches PyTorch (train with running-stat update, eval; 2-D and 4-D)") {
  for_each_case("golden_batchnorm.safetensors", "bn_", [](const Case& c) {
    bool training = c.i("training") != 0;
    Leaves l = run_case(c, {"x", "running_mean", "running_var", "weight", "bias"},
                        {"x", "weight", "bias"}, [training](const Case& c, Leaves& l) {
                          return tb::batch_norm(
                              l["x"], l["running_mean"], l["running_var"], l["weight"], l["bias"],
                              {.training = training, .momentum = c.f("momentum"), .eps = c.f("eps")});
                        });
    // Training updates the running statistics in place (unbiased batch variance); eval leaves them.
    expect_close(l["running_mean"], c.at(training ? "running_mean_after" : "running_mean"),
                 c.name + ".running_mean (after)");
    expect_close(l["running_var"], c.at(training ? "running_var_after" : "running_var"),
                 c.name + ".running_var (after)");
  });
}

TEST_CASE("cross_entropy matches PyTorch (label smoothing, ignore_index, reductions)") {
  for_each_case("golden_loss.safetensors", "ce_", [](const Case& c) {
    run_case(c, {"logits", "target"}, {"logits"}, [](const Case& c, Leaves& l) {
      return tb::cross_entropy(l["logits"], l["target"], c.f("label_smoothing"),
                               kReductions[c.i("reduction")], c.i("ignore_index"));
    });
  });
}

TEST_CASE("kl_div batchmean and mse_loss match PyTorch (gradients for input and target)") {
  for_each_case("golden_loss.safetensors", "kl_", [](const Case& c) {
    run_case(c, {"input", "target"}, {"input", "target"}, [](const Case& c, Leaves& l) {
      return tb::kl_div(l["input"], l["target"], "batchmean", c.i("log_target") != 0);
    });
  });
  for_each_case("golden_loss.safetensors", "mse_", [](const Case& c) {
    run_case(c, {"input", "target"}, {"input", "target"}, [](const Case& c, Leaves& l) {
      return tb::mse_loss(l["input"], l["target"], kReductions[c.i("reduction")]);
    });
  });
}

TEST_CASE("softmax and log_softmax match PyTorch") {
  for_each_case("golden_misc.safetensors", "softmax_", [](const Case& c) {
    run_case(c, {"x"}, {"x"}, [](const Case& c, Leaves& l) { return tb::softmax(l["x"], c.i("dim")); });
  });
  for_each_case("golden_misc.safetensors", "log_softmax_", [](const Case& c) {
    run_case(c, {"x"}, {"x"},
             [](const Case& c, Leaves& l) { return tb::log_softmax(l["x"], c.i("dim")); });
  });
}

TEST_CASE("max_pool2d, avg_pool2d and adaptive_avg_pool2d match PyTorch") {
  auto params = [](const Case& c) {
    tb::Pool2dParams p;
    p.kernel_h = c.i("kernel", 0), p.kernel_w = c.i("kernel", 1);
    p.stride_h = c.i("stride", 0), p.stride_w = c.i("stride", 1);
    p.pad_h = c.i("padding", 0), p.pad_w = c.i("padding", 1);
    p.ceil_mode = c.i("ceil_mode") != 0;
    p.count_include_pad = c.i("count_include_pad") != 0;
    return p;
  };
  for_each_case("golden_misc.safetensors", "maxpool_", [&](const Case& c) {
    run_case(c, {"x"}, {"x"},
             [&](const Case& c, Leaves& l) { return tb::max_pool2d(l["x"], params(c)); });
  });
  for_each_case("golden_misc.safetensors", "avgpool_", [&](const Case& c) {
    run_case(c, {"x"}, {"x"},
             [&](const Case& c, Leaves& l) { return tb::avg_pool2d(l["x"], params(c)); });
  });
  for_each_case("golden_misc.safetensors", "adaptive_", [](const Case& c) {
    run_case(c, {"x"}, {"x"}, [](const Case& c, Leaves& l) {
      return tb::adaptive_avg_pool2d(l["x"], c.i("output_size", 0), c.i("output_size", 1));
    });
  });
}

TEST_CASE("linear and gelu match PyTorch") {
  for_each_case("golden_misc.safetensors", "linear_", [](const Case& c) {
    run_case(c, {"x", "weight", "bias"}, {"x", "weight", "bias"},
             [](const Case&, Leaves& l) { return tb::linear(l["x"], l["weight"], l["bias"]); });
  });
  for_each_case("golden_misc.safetensors", "gelu_", [](const Case& c) {
    run_case(c, {"x"}, {"x"}, [](const Case& c, Leaves& l) {
      return tb::gelu(l["x"], c.i("approximate") ? "tanh" : "none");
    });
  });
}

TEST_CASE("golden fixtures are complete") {
  // Guards against a silently truncated fixture: every case has out, R and its gradients.
  for (const char* file : {"golden_conv2d.safetensors", "golden_batchnorm.safetensors",
                           "golden_loss.safetensors", "golden_misc.safetensors"}) {
    const auto& fx = fixture_file(file);
    auto names = cases_with_prefix(fx, "");
    CHECK(names.size() >= 7);
    for (auto& n : names) {
      INFO(file << ": " << n);
      CHECK(fx.contains(n + ".out"));
      CHECK(fx.contains(n + ".R"));
      CHECK(fx.at(n + ".R").shape() == fx.at(n + ".out").shape());
    }
  }
}

} // TEST_SUITE
