// lstm: nn::LSTM against PyTorch 1.13 fixtures (tools/make_lstm_fixtures.py: forward, final
// states and the gradients of inputs, initial states and every parameter), a float64
// finite-difference gradcheck, and the bad inputs.
// dynamic_quant: quantize_dynamic (Linear, LSTM) against PyTorch's dynamic quantization
// (onednn engine; the fbgemm engine is not built into Debian's torch 1.13), the integer GEMM's fast
// path against its reference loop, the report, and checkpoints.
//
// Tolerances: float64 LSTM cases 1e-10 (same math, different summation order); the float32 case
// 2e-6 (float32 matmuls, OpenBLAS vs MKL order). Dynamic quantization: the integer accumulators
// are exact, and the int8 weights are compared exactly; outputs differ by the float rounding of
// scale products and bias adds (PyTorch's oneDNN order): 1e-5 absolute (outputs are O(1)), and
// for the LSTM where a 1-LSB flip of a requantized hidden state can propagate, 1e-4.
#include "gradcheck.h"

#include <tb/quant.h>

#include <array>
#include <cstdio>
#include <filesystem>

using namespace tb;
using tbtest::check_error;
using tbtest::max_abs_diff;

namespace {

// An LSTM built from a fixture case's config with the case's parameters loaded.
std::shared_ptr<nn::LSTM> lstm_from(const TensorDict& fx, const std::string& c) {
  auto cfg = fx.at(c + ".config").to_int_vector();
  DType dt = fx.at(c + ".x").dtype();
  auto m = std::make_shared<nn::LSTM>(nn::LSTMOptions{.input_size = cfg[0], .hidden_size = cfg[1],
                                                      .num_layers = cfg[2],
                                                      .batch_first = cfg[3] != 0,
                                                      .tensor = TensorOptions(dt)});
  StateDict sd;
  for (const auto& [k, v] : m->state_dict()) sd.insert(k, fx.at(c + "." + k));
  m->load_state_dict(sd);
  return m;
}

} // namespace

TEST_SUITE("lstm") {

TEST_CASE("state_dict keys, shapes and init follow PyTorch") {
  nn::LSTM m({.input_size = 3, .hidden_size = 5, .num_layers = 2});
  std::vector<std::string> keys;
  for (const auto& [k, v] : m.state_dict()) keys.push_back(k);
  CHECK(keys == std::vector<std::string>{"weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
                                         "weight_ih_l1", "weight_hh_l1", "bias_ih_l1",
                                         "bias_hh_l1"});
  CHECK(m.get("weight_ih_l0").shape() == Shape{20, 3});
  CHECK(m.get("weight_ih_l1").shape() == Shape{20, 5});
  CHECK(m.get("weight_hh_l1").shape() == Shape{20, 5});
  double bound = 1.0 / std::sqrt(5.0);
  for (const auto& p : m.parameters()) {
    CHECK(max(p).item() <= bound);
    CHECK(min(p).item() >= -bound);
    CHECK(max(p).item() > 0.5 * bound); // actually spread over the range
  }
  nn::LSTM nb({.input_size = 3, .hidden_size = 5, .bias = false});
  CHECK(nb.state_dict().size() == 2);
  CHECK(m.str() == "LSTM(3, 5, num_layers=2)");
  auto copy = nn::clone(m);
  CHECK(copy->num_layers() == 2);
  CHECK(!copy->get("weight_ih_l0").is_same(m.get("weight_ih_l0")));
}

TEST_CASE("forward and gradients equal PyTorch's") {
  const TensorDict& fx = tbtest::fixture_file("lstm_reference.safetensors");
  for (std::string c : {"l1", "l2", "bf", "init", "init_bf", "unbatched", "f32"}) {
    CAPTURE(c);
    auto m = lstm_from(fx, c);
    bool init = fx.at(c + ".config").to_int_vector()[4] != 0;
    double tol = c == "f32" ? 2e-6 : 1e-10;
    Tensor x = fx.at(c + ".x").clone().requires_grad_(true);
    Tensor h0, c0;
    if (init) {
      h0 = fx.at(c + ".h0").clone().requires_grad_(true);
      c0 = fx.at(c + ".c0").clone().requires_grad_(true);
    }
    auto [y, h, cn] = m->forward_with_state(x, h0, c0);
    REQUIRE(y.shape() == fx.at(c + ".out").shape());
    REQUIRE(h.shape() == fx.at(c + ".h_n").shape());
    CHECK(max_abs_diff(y, fx.at(c + ".out")) < tol);
    CHECK(max_abs_diff(h, fx.at(c + ".h_n")) < tol);
    CHECK(max_abs_diff(cn, fx.at(c + ".c_n")) < tol);
    Tensor loss = add(add(sum(mul(y, fx.at(c + ".R_out"))), sum(mul(h, fx.at(c + ".R_h")))),
                      sum(mul(cn, fx.at(c + ".R_c"))));
    loss.backward();
    CHECK(max_abs_diff(x.grad(), fx.at(c + ".dx")) < tol);
    if (init) {
      CHECK(max_abs_diff(h0.grad(), fx.at(c + ".dh0")) < tol);
      CHECK(max_abs_diff(c0.grad(), fx.at(c + ".dc0")) < tol);
    }
    for (const auto& [k, p] : m->named_parameters()) {
      CAPTURE(k);
      CHECK(max_abs_diff(p.grad(), fx.at(c + ".d" + k)) < tol);
    }
    // forward(x) is the output of forward_with_state with zero states.
    if (!init) {
      no_grad ng;
      CHECK(max_abs_diff((*m)(x), fx.at(c + ".out")) < tol);
    }
  }
}

TEST_CASE("float64 finite-difference gradcheck") {
  nn::LSTM m({.input_size = 3, .hidden_size = 2, .num_layers = 2, .batch_first = true,
              .tensor = TensorOptions(kFloat64)});
  auto params = m.parameters();
  std::vector<Tensor> inputs = {tbtest::r64({2, 3, 3}, 1), tbtest::r64({2, 2, 2}, 2),
                                tbtest::r64({2, 2, 2}, 3)};
  for (auto& p : params) inputs.push_back(p.detach().clone());
  // Inputs and initial states.
  CHECK(tbtest::gradcheck([&](const std::vector<Tensor>& in) {
          auto r = m.forward_with_state(in[0], in[1], in[2]);
          return cat({r.output.flatten(), r.h_n.flatten(), r.c_n.flatten()}, 0);
        },
        {inputs[0], inputs[1], inputs[2]}));
  // The parameters: a copy whose parameters are replaced by the gradcheck's leaves (plain
  // attributes, which forward looks up by the same names).
  auto g = [&](const std::vector<Tensor>& in) {
    auto mm = nn::clone(m);
    auto names = mm->named_parameters();
    for (size_t i = 0; i < names.size(); i++) mm->remove_parameter(names[i].first);
    for (size_t i = 0; i < names.size(); i++) mm->set_tensor(names[i].first, in[1 + i]);
    return mm->forward_with_state(in[0]).output.flatten();
  };
  std::vector<Tensor> pin = {inputs[0]};
  for (auto& p : params) pin.push_back(p.detach().clone());
  CHECK(tbtest::gradcheck(g, pin));
}

TEST_CASE("bad inputs name what was expected") {
  nn::LSTM m({.input_size = 5, .hidden_size = 4, .num_layers = 2});
  check_error([&] { m(zeros({5})); }, {"LSTM", "3-D input", "[T, N, 5]", "[5]"});
  check_error([&] { m(zeros({2, 3, 4, 5})); }, {"LSTM", "[2, 3, 4, 5]"});
  check_error([&] { m(zeros({7, 3, 6})); }, {"LSTM", "input_size 5", "[7, 3, 6]"});
  check_error([&] { m.forward_with_state(zeros({7, 3, 5}), zeros({1, 3, 4}), zeros({1, 3, 4})); },
              {"LSTM", "expected h0 of shape [2, 3, 4]", "got [1, 3, 4]"});
  check_error([&] { m.forward_with_state(zeros({7, 3, 5}), zeros({2, 3, 4}), zeros({2, 3, 3})); },
              {"LSTM", "expected c0 of shape [2, 3, 4]", "got [2, 3, 3]"});
  check_error([&] { m.forward_with_state(zeros({7, 3, 5}), zeros({2, 3, 4})); },
              {"LSTM", "both h0 and c0"});
  check_error([&] { m(zeros({7, 3, 5}, kFloat64)); }, {"LSTM", "float64", "float32"});
  check_error([&] { m(zeros({7, 3, 5}, kInt64)); }, {"LSTM", "int64"});
  check_error([&] { m(zeros({0, 3, 5})); }, {"LSTM", "at least one time step"});
  nn::LSTM bf({.input_size = 5, .hidden_size = 4, .batch_first = true});
  check_error([&] { bf.forward_with_state(zeros({3, 7, 5}), zeros({1, 7, 4}), zeros({1, 7, 4})); },
              {"expected h0 of shape [1, 3, 4]"});
  check_error([&] { nn::LSTM({.input_size = 5, .hidden_size = 4, .bidirectional = true}); },
              {"LSTM", "bidirectional"});
  check_error([&] { nn::LSTM({.input_size = 5, .hidden_size = 4, .dropout = 0.5}); },
              {"LSTM", "dropout"});
  check_error([&] { nn::LSTM({.input_size = 5, .hidden_size = 4, .proj_size = 2}); },
              {"LSTM", "proj_size"});
  check_error([&] { nn::LSTM({.input_size = 0, .hidden_size = 4}); }, {"LSTM", "positive"});
}

} // TEST_SUITE lstm

// =============================================================================================

namespace {

namespace q = tb::quant;

std::shared_ptr<nn::Sequential> fixture_mlp(const TensorDict& fx, const std::string& c) {
  auto net = std::make_shared<nn::Sequential>(std::initializer_list<nn::ModulePtr>{
      std::make_shared<nn::Linear>(16, 24), std::make_shared<nn::ReLU>(),
      std::make_shared<nn::Linear>(24, 5)});
  StateDict sd;
  for (const auto& [k, v] : net->state_dict()) sd.insert(k, fx.at(c + "." + k));
  net->load_state_dict(sd);
  return net;
}

std::shared_ptr<nn::Sequential> fixture_lstm(const TensorDict& fx, const std::string& c) {
  auto lstm = std::make_shared<nn::LSTM>(
      nn::LSTMOptions{.input_size = 6, .hidden_size = 8, .num_layers = 2, .batch_first = true});
  StateDict sd;
  for (const auto& [k, v] : lstm->state_dict()) sd.insert(k, fx.at(c + "." + k));
  lstm->load_state_dict(sd);
  auto net = std::make_shared<nn::Sequential>();
  net->push_back(lstm);
  return net;
}

} // namespace

TEST_SUITE("dynamic_quant") {

TEST_CASE("activation qparams follow ChooseQuantizationParams") {
  // [-1, 3] -> scale 4/127, the zero point from the side with the smaller error.
  auto p = q::choose_dynamic_qparams(-1.0f, 3.0f);
  CHECK(p.scale == doctest::Approx(4.0 / 127).epsilon(1e-7));
  CHECK(p.zero_point == 32); // 0 + 1 / (4/127) = 31.75
  // all positive: zero point 0; full range without reduce_range
  CHECK(q::choose_dynamic_qparams(0.5f, 2.0f).zero_point == 0);
  CHECK(q::choose_dynamic_qparams(0.5f, 2.0f, false).scale ==
        doctest::Approx(2.0 / 255).epsilon(1e-7));
  CHECK(q::choose_dynamic_qparams(-2.0f, -0.5f).zero_point == 127);
  // all zero: PyTorch's 0.1 fallback; tiny ranges: the 6.1e-5 floor
  CHECK(q::choose_dynamic_qparams(0.0f, 0.0f).scale == 0.1f);
  CHECK(q::choose_dynamic_qparams(0.0f, 1e-6f).scale == (float)6.1e-5);
  check_error([] { q::choose_dynamic_qparams(NAN, 1.0f); }, {"not finite"});
}

TEST_CASE("dynamic Linear equals PyTorch's quantize_dynamic") {
  const TensorDict& fx = tbtest::fixture_file("dynamic_quant.safetensors");
  for (std::string c : {"lin_pc", "lin_pt"}) {
    CAPTURE(c);
    bool per_channel = c == "lin_pc";
    auto net = fixture_mlp(fx, c);
    auto report = q::quantize_dynamic(*net, {q::DynamicType::Linear}, {.per_channel = per_channel});
    CHECK(report.quantized == 2);
    CHECK(report.skipped == 0);
    for (std::string i : {"0", "2"}) {
      auto& m = net->get_submodule(i);
      REQUIRE(m.type_name() == "DynamicQuantizedLinear");
      // int8 weights and their scales exactly as PyTorch's
      CHECK(max_abs_diff(m.get("weight"), fx.at(c + "." + i + ".qweight")) == 0);
      CHECK(max_abs_diff(m.get("weight_scale"), fx.at(c + "." + i + ".wscale")) == 0);
    }
    no_grad ng;
    double worst = 0;
    for (int k = 0; k < 4; k++) {
      Tensor y = (*net)(fx.at(c + ".x" + std::to_string(k)));
      Tensor want = fx.at(c + ".y" + std::to_string(k));
      REQUIRE(y.shape() == want.shape());
      worst = std::max(worst, max_abs_diff(y, want));
    }
    MESSAGE(c << ": max |tb - PyTorch| = " << worst);
    CHECK(worst < 1e-5);
  }
}

TEST_CASE("dynamic LSTM equals PyTorch's quantize_dynamic") {
  const TensorDict& fx = tbtest::fixture_file("dynamic_quant.safetensors");
  for (std::string c : {"lstm_pc", "lstm_pt"}) {
    CAPTURE(c);
    auto net = fixture_lstm(fx, c);
    Tensor x = fx.at(c + ".x");
    Tensor yf;
    {
      no_grad ng;
      yf = (*net)(x);
    }
    auto report = q::quantize_dynamic(*net, {q::DynamicType::LSTM},
                                      {.per_channel = c == "lstm_pc"});
    CHECK(report.quantized == 1);
    auto& m = dynamic_cast<q::DynamicQuantizedLSTM&>(net->get_submodule("0"));
    no_grad ng;
    auto [y, h, cn] = m.forward_with_state(x);
    double d = std::max({max_abs_diff(y, fx.at(c + ".out")), max_abs_diff(h, fx.at(c + ".h_n")),
                         max_abs_diff(cn, fx.at(c + ".c_n"))});
    MESSAGE(c << ": max |tb - PyTorch| = " << d << ", int8 vs float " << max_abs_diff(y, yf));
    CHECK(d < 1e-4);
    CHECK(max_abs_diff(y, yf) > 1e-4); // the weights really are quantized
    CHECK(max_abs_diff((*net)(x), y) == 0);
  }
}

TEST_CASE("integer GEMM: oneDNN path equals the reference loop") {
  no_grad ng;
  for (auto mkn : std::vector<std::array<int64_t, 3>>{
           {1, 1, 1}, {3, 7, 5}, {17, 33, 9}, {64, 128, 512}, {5, 300, 31}}) {
    int64_t M = mkn[0], K = mkn[1], N = mkn[2];
    CAPTURE(M);
    CAPTURE(K);
    CAPTURE(N);
    Generator g(M * 1000 + K);
    nn::Linear lin(K, N);
    q::DynamicQuantizedLinear dq(lin);
    Tensor x = add(mul(randn({M, K}, {}, &g), 3.0), 0.7);
    Tensor fast = tbtest::with_kernels(CpuKernels::Fast, [&] { return dq(x); });
    Tensor ref = tbtest::with_kernels(CpuKernels::Reference, [&] { return dq(x); });
    CHECK(max_abs_diff(fast, ref) == 0);
    // and close to the float layer (int8 error only)
    CHECK(max_abs_diff(fast, lin(x)) < 0.05 * (1 + max(abs(lin(x))).item()));
  }
}

TEST_CASE("report lists converted and skipped layers") {
  auto net = std::make_shared<nn::Sequential>();
  net->push_back("rnn", std::make_shared<nn::LSTM>(nn::LSTMOptions{.input_size = 4, .hidden_size = 3}));
  net->push_back("conv", std::make_shared<nn::Conv2d>(1, 2, 3));
  net->push_back("head", std::make_shared<nn::Linear>(3, 2));
  auto r = q::quantize_dynamic(*net, {q::DynamicType::Linear});
  CHECK(r.quantized == 1);
  CHECK(r.skipped == 2);
  CHECK(net->get_submodule("head").type_name() == "DynamicQuantizedLinear");
  CHECK(net->get_submodule("rnn").type_name() == "LSTM");
  std::string s = r.str();
  CHECK(s.find("head") != std::string::npos);
  CHECK(s.find("type not in the list") != std::string::npos);
  CHECK(s.find("no dynamic quantized form") != std::string::npos);
  auto r2 = q::quantize_dynamic(*net);
  CHECK(r2.quantized == 1); // the LSTM now; the converted head has no parameters
  CHECK(net->get_submodule("rnn").type_name() == "DynamicQuantizedLSTM");
}

TEST_CASE("checkpoint round trip, about a quarter of the float file") {
  auto make = [] {
    auto net = std::make_shared<nn::Sequential>();
    net->push_back(std::make_shared<nn::LSTM>(
        nn::LSTMOptions{.input_size = 28, .hidden_size = 64, .batch_first = true}));
    return net;
  };
  auto net = make();
  auto dir = std::filesystem::temp_directory_path();
  std::string fp = (dir / "tb_dyn_float.safetensors").string();
  std::string qp = (dir / "tb_dyn_int8.safetensors").string();
  nn::save(*net, fp);
  q::quantize_dynamic(*net);
  CHECK(q::stage(*net) == "dynamic");
  q::save(*net, qp);
  double ratio = (double)std::filesystem::file_size(qp) / std::filesystem::file_size(fp);
  MESSAGE("int8 / float file size = " << ratio);
  CHECK(ratio < 0.3);
  auto other = make(); // different random weights
  q::quantize_dynamic(*other);
  q::load(*other, qp);
  auto plain = make(); // a float model is refused: the file's stage is "dynamic"
  CHECK_THROWS_AS(q::load(*plain, qp), Error);
  no_grad ng;
  Tensor x = randn({2, 5, 28});
  CHECK(max_abs_diff((*other)(x), (*net)(x)) == 0);
  std::remove(fp.c_str());
  std::remove(qp.c_str());
}

TEST_CASE("bad inputs") {
  nn::Linear lin(4, 3);
  q::DynamicQuantizedLinear dq(lin);
  check_error([&] { dq(zeros({2, 5})); }, {"DynamicQuantizedLinear", "[..., 4]", "[2, 5]"});
  check_error([&] { dq(full({2, 4}, NAN)); }, {"not finite"});
  check_error([&] { dq(zeros({2, 4}, kFloat64)); }, {"float32", "float64"});
  check_error([&] { dq(zeros({2, 4}).requires_grad_(true)); }, {"inference-only"});
  nn::LSTM lstm({.input_size = 4, .hidden_size = 3});
  q::DynamicQuantizedLSTM dl(lstm);
  check_error([&] { dl(zeros({2, 3, 5})); }, {"DynamicQuantizedLSTM", "input_size 4"});
  check_error([&] { dl.forward_with_state(zeros({2, 3, 4}), zeros({1, 2, 3}), zeros({1, 2, 3})); },
              {"expected h0 of shape [1, 3, 3]"});
  auto root = std::make_shared<nn::Linear>(4, 3);
  check_error([&] { q::quantize_dynamic(*root); }, {"quantize_dynamic", "root", "Sequential"});
  nn::Linear l64(4, 3, true, TensorOptions(kFloat64));
  check_error([&] { q::DynamicQuantizedLinear bad(l64); }, {"float32", "float64"});
}

} // TEST_SUITE dynamic_quant
