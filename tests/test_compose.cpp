// compose: the compression methods in the presence of each other (issue 14 §4). Each method has
// its own suite (quant, prune, distill, amp); here they run together on a small CNN and a
// synthetic 3-class task that it learns in a few dozen steps:
//   QAT under autocast (PyTorch 1.13 raises "not implemented for 'BFloat16'" there): the
//     fake-quant nodes run in float32 and stay on their grid, the step trains;
//   pruning masks under Adam with momentum and weight decay: the moments keep moving the pruned
//     entries of weight_orig, the mask keeps the effective weight exactly zero, also through the
//     weights' fake-quant;
//   a distilled student, then channel-pruned and quantized to int8, keeps its accuracy;
//   all four in one loop (QAT + masks + KD + float16 autocast with a GradScaler), then converted.
#include "gradcheck.h"

#include <tb/amp.h>
#include <tb/distill.h>
#include <tb/prune.h>
#include <tb/quant.h>

#include <cmath>

using namespace tb;
namespace q = tb::quant;
namespace kd = tb::distill;

namespace {

// conv(1->c) bn relu maxpool | conv(c->2c) bn relu | avgpool flatten | linear(2c->16) relu |
// linear(16->3): every fusable pattern (conv-bn-relu, linear-relu) and a plain linear.
std::shared_ptr<nn::Sequential> make_net(int64_t c, uint64_t seed) {
  manual_seed(seed);
  auto net = std::make_shared<nn::Sequential>();
  net->push_back(std::make_shared<nn::Conv2d>(
      nn::Conv2dOptions{.in_channels = 1, .out_channels = c, .kernel_size = 3, .padding = 1}));
  net->push_back(std::make_shared<nn::BatchNorm2d>(c));
  net->push_back(std::make_shared<nn::ReLU>());
  net->push_back(std::make_shared<nn::MaxPool2d>(2));
  net->push_back(std::make_shared<nn::Conv2d>(
      nn::Conv2dOptions{.in_channels = c, .out_channels = 2 * c, .kernel_size = 3, .padding = 1}));
  net->push_back(std::make_shared<nn::BatchNorm2d>(2 * c));
  net->push_back(std::make_shared<nn::ReLU>());
  net->push_back(std::make_shared<nn::AdaptiveAvgPool2d>(1));
  net->push_back(std::make_shared<nn::Flatten>());
  net->push_back(std::make_shared<nn::Linear>(2 * c, 16));
  net->push_back(std::make_shared<nn::ReLU>());
  net->push_back(std::make_shared<nn::Linear>(16, 3));
  return net;
}

// n images 1x8x8: noise plus a bright 3x3 patch whose place is the class.
struct Batch {
  Tensor x, y;
};
Batch make_data(int64_t n, uint64_t seed) {
  manual_seed(seed);
  Tensor x = mul(randn({n, 1, 8, 8}), 0.5);
  std::vector<int64_t> labels(n);
  const int rows[3] = {1, 1, 4}, cols[3] = {1, 4, 2};
  float* p = x.data<float>();
  for (int64_t i = 0; i < n; i++) {
    int64_t k = i % 3;
    labels[i] = k;
    for (int r = 0; r < 3; r++)
      for (int c = 0; c < 3; c++) p[i * 64 + (rows[k] + r) * 8 + cols[k] + c] += 2.0f;
  }
  return {x, from_vector(labels, {n})};
}
Batch slice(const Batch& b, int64_t start, int64_t len) {
  return {b.x.narrow(0, start, len).contiguous(), b.y.narrow(0, start, len).contiguous()};
}

double accuracy(nn::Module& m, const Batch& b) {
  no_grad ng;
  bool was = m.is_training();
  m.eval();
  Tensor pred = argmax(m(b.x), 1);
  m.train(was);
  return mean(eq(pred, b.y).to(kFloat32)).item();
}

// `steps` SGD steps over 32-image batches of `data`; `loss_of(logits, batch)` gives the loss.
void train(nn::Module& m, const Batch& data, int steps, double lr,
           const std::function<Tensor(const Tensor&, const Batch&)>& loss_of = {}) {
  optim::SGD opt(m.parameters(), {.lr = lr, .momentum = 0.9});
  m.train();
  int64_t n = data.x.size(0) / 32;
  for (int s = 0; s < steps; s++) {
    Batch b = slice(data, (s % n) * 32, 32);
    Tensor logits = m(b.x);
    Tensor loss = loss_of ? loss_of(logits, b) : cross_entropy(logits, b.y);
    opt.zero_grad();
    loss.backward();
    opt.step();
  }
}

// QuantWrapper + conv-bn-relu / linear-relu fused for QAT + prepare_qat (int8 defaults).
std::shared_ptr<q::QuantWrapper> qat_model(nn::ModulePtr float_model) {
  auto model = std::make_shared<q::QuantWrapper>(float_model);
  model->train();
  q::fuse_modules_qat(*model, q::find_fusable_groups(*model));
  q::prepare_qat(*model, {.global = q::default_qat_qconfig()});
  return model;
}

// Every FakeQuantize of `m` with its path.
std::vector<std::pair<std::string, q::FakeQuantize*>> fake_quants(nn::Module& m) {
  std::vector<std::pair<std::string, q::FakeQuantize*>> out;
  for (auto& [path, sub] : m.named_modules())
    if (auto* f = dynamic_cast<q::FakeQuantize*>(sub)) out.push_back({path, f});
  return out;
}

// Largest distance of y / scale + zero_point from an integer (per-tensor qparams).
double off_grid(const Tensor& y, const q::QParams& p) {
  double s = p.scale.item(), z = (double)p.zero_point.to_int_vector()[0], worst = 0;
  for (double v : y.to(kFloat64).to_vector()) {
    double t = v / s + z;
    worst = std::max(worst, std::abs(t - std::nearbyint(t)));
  }
  return worst;
}

// Converted conv / linear layers that run the integer kernels.
int count_integer_layers(nn::Module& m) {
  int n = 0;
  for (auto& [path, sub] : m.named_modules()) {
    if (auto* c = dynamic_cast<q::QuantizedConv2d*>(sub)) n += c->integer;
    if (auto* l = dynamic_cast<q::QuantizedLinear*>(sub)) n += l->integer;
  }
  return n;
}

const Batch& train_data() {
  static Batch b = make_data(384, 11);
  return b;
}
const Batch& test_data() {
  static Batch b = make_data(300, 12);
  return b;
}

// The teacher of the distillation cases: make_net(8) trained with cross-entropy.
nn::ModulePtr trained_teacher() {
  static nn::ModulePtr t = [] {
    auto net = make_net(8, 1);
    train(*net, train_data(), 60, 0.05);
    net->eval();
    return nn::ModulePtr(net);
  }();
  return t;
}

} // namespace

TEST_SUITE("compose") {

TEST_CASE("fake-quant ops are on autocast's float32 list; a half input outside autocast is an "
          "error") {
  Tensor x = randn({4, 6}).to(kBFloat16);
  Tensor want = q::fake_quantize_per_tensor_affine(x.to(kFloat32), 0.05, 3, 0, 255);
  {
    amp::autocast ac({.dtype = kBFloat16});
    Tensor y = q::fake_quantize_per_tensor_affine(x, 0.05, 3, 0, 255);
    CHECK(y.dtype() == kFloat32);
    CHECK(tbtest::max_abs_diff(y, want) == 0);
    Tensor s = from_vector(std::vector<float>{0.05f, 0.1f, 0.02f, 0.07f}, {4});
    Tensor z = zeros({4}, TensorOptions(kInt32));
    Tensor yc = q::fake_quantize_per_channel_affine(x, s, z, 0, -128, 127);
    CHECK(yc.dtype() == kFloat32);
    CHECK(tbtest::max_abs_diff(
              yc, q::fake_quantize_per_channel_affine(x.to(kFloat32), s, z, 0, -128, 127)) == 0);
  }
  tbtest::check_error([&] { q::fake_quantize_per_tensor_affine(x, 0.05, 3, 0, 255); },
                      {"fake_quantize_per_tensor_affine", "float32 or float64", "bfloat16"});
}

TEST_CASE("QAT under autocast: fake-quant in float32 on its grid, float32 gradients, it trains") {
  const Batch& data = train_data();
  Batch b = slice(data, 0, 32);
  auto model = qat_model(make_net(8, 2));
  (*model)(b.x); // observers see one float32 batch first
  auto ref = model->clone();

  // Capture what every per-tensor (activation) fake-quant emits under autocast.
  std::vector<std::pair<q::FakeQuantize*, Tensor>> outputs;
  std::vector<nn::HookHandle> hooks;
  for (auto& [path, f] : fake_quants(*model))
    hooks.push_back(f->register_forward_hook([&outputs, f = f](nn::Module&, const Tensor&,
                                                                const Tensor& y) {
      outputs.push_back({f, y.detach()});
    }));
  Tensor logits;
  {
    amp::autocast ac({.dtype = kBFloat16});
    logits = (*model)(b.x);
  }
  for (auto& h : hooks) h.remove();
  CHECK(logits.dtype() == kFloat32);
  int per_tensor = 0;
  for (auto& [f, y] : outputs) {
    CHECK(y.dtype() == kFloat32);
    q::QParams p = f->qparams();
    if (p.per_channel) continue;
    per_tensor++;
    CHECK(off_grid(y, p) < 1e-3);
  }
  CHECK(per_tensor >= 4); // the input and the outputs of the 4 layers

  // The same model in float32: the bfloat16 convs move the logits by little.
  Tensor logits32 = (*ref)(b.x);
  double scale = tbtest::max_abs_diff(logits32, zeros_like(logits32));
  CHECK(tbtest::max_abs_diff(logits, logits32) < 0.15 * scale);

  Tensor loss = cross_entropy(logits, b.y);
  loss.backward();
  int grads = 0;
  for (auto& [name, p] : model->named_parameters()) {
    INFO(name);
    REQUIRE(p.grad().defined());
    CHECK(p.grad().dtype() == kFloat32);
    CHECK(std::isfinite(sum(abs(p.grad())).item()));
    grads++;
  }
  CHECK(grads >= 8);

  // The same steps under autocast and in float32 from the same state: both learn the batch, and
  // bfloat16 costs little.
  auto steps = [&](nn::Module& m, bool bf16) {
    m.zero_grad();
    optim::SGD opt(m.parameters(), {.lr = 0.05, .momentum = 0.9});
    double first = 0, last = 0;
    for (int s = 0; s < 40; s++) {
      Tensor l;
      {
        amp::autocast ac({.dtype = kBFloat16, .enabled = bf16});
        l = cross_entropy(m(b.x), b.y);
      }
      opt.zero_grad();
      l.backward();
      opt.step();
      (s == 0 ? first : last) = l.item();
    }
    return std::pair{first, last};
  };
  auto float_copy = model->clone();
  auto [first16, last16] = steps(*model, true);
  auto [first32, last32] = steps(*float_copy, false);
  INFO("bfloat16 " << first16 << " -> " << last16 << ", float32 " << first32 << " -> " << last32);
  CHECK(std::isfinite(last16));
  CHECK(last16 < 0.8 * first16);
  CHECK(last16 < 1.25 * last32 + 0.05);
}

TEST_CASE("pruning masks under Adam with momentum and weight decay stay exactly zero, also "
          "through QAT's weight fake-quant") {
  const Batch& data = train_data();
  auto check_masked_zero = [](nn::Module& root, const std::vector<std::string>& names) {
    for (const auto& name : names) {
      INFO(name);
      nn::Module& m = root.get_submodule(name.substr(0, name.rfind('.')));
      Tensor w = m.get("weight"), mask = m.get("weight_mask");
      CHECK(sum(abs(mul(w, rsub(mask, 1.0)))).item() == 0);
    }
  };
  for (bool with_qat : {false, true}) {
    CAPTURE(with_qat);
    nn::ModulePtr net = make_net(8, 3);
    if (with_qat) net = qat_model(net);
    optim::Adam opt(net->parameters(), {.lr = 1e-2, .weight_decay = 1e-3});
    auto step = [&](int s) {
      Batch b = slice(data, (s % 12) * 32, 32);
      Tensor loss = cross_entropy((*net)(b.x), b.y);
      opt.zero_grad();
      loss.backward();
      opt.step();
    };
    for (int s = 0; s < 5; s++) step(s); // the moments fill up before pruning
    std::vector<std::string> names = prune::prunable_weights(*net);
    REQUIRE(names.size() == 4); // QAT: QATConvBn2d x2, QATLinear x2
    prune::global_unstructured(*net, names, {.amount = 0.5});
    std::vector<Tensor> orig_before;
    for (const auto& name : names)
      orig_before.push_back(
          net->get_submodule(name.substr(0, name.rfind('.'))).get("weight_orig").clone());
    // What the weights' fake-quant emits (QAT): captured at each layer's forward.
    std::vector<std::pair<nn::Module*, Tensor>> fq_out;
    std::vector<nn::HookHandle> hooks;
    if (with_qat)
      for (const auto& name : names) {
        nn::Module& layer = net->get_submodule(name.substr(0, name.rfind('.')));
        nn::Module* owner = &layer;
        hooks.push_back(layer.child("weight_fake_quant")
                            ->register_forward_hook([&fq_out, owner](nn::Module&, const Tensor&,
                                                                     const Tensor& y) {
                              fq_out.push_back({owner, y.detach()});
                            }));
      }
    for (int s = 5; s < 20; s++) step(s);
    { no_grad ng; (*net)(slice(data, 0, 8).x); } // refreshes the effective weights
    check_masked_zero(*net, names);
    // The test has teeth: Adam did move the pruned entries of weight_orig.
    double moved = 0;
    for (size_t i = 0; i < names.size(); i++) {
      nn::Module& m = net->get_submodule(names[i].substr(0, names[i].rfind('.')));
      Tensor pruned = rsub(m.get("weight_mask"), 1.0);
      moved = std::max(moved, sum(abs(mul(sub(m.get("weight_orig"), orig_before[i]), pruned)))
                                  .item());
    }
    CHECK(moved > 0);
    if (with_qat) {
      REQUIRE(!fq_out.empty());
      for (auto& [layer, y] : fq_out) {
        // QATConvBn2d fake-quantizes W·s (s = gamma / std > 0 per channel): zero stays zero.
        Tensor mask = layer->get("weight_mask");
        CHECK(sum(abs(mul(y, rsub(mask, 1.0)))).item() == 0);
      }
    }
    for (auto& h : hooks) h.remove();
    prune::remove_all(*net);
    prune::SparsityReport r = prune::sparsity_report(*net, names);
    CHECK(r.sparsity() >= 0.5);
  }
}

TEST_CASE("a distilled student, then channel-pruned and quantized to int8, keeps its accuracy") {
  nn::ModulePtr teacher = trained_teacher();
  CHECK(accuracy(*teacher, test_data()) >= 0.95);
  kd::Teacher t(teacher);
  kd::DistillationLoss kd_loss(
      {.temperature = 2, .alpha = 0.5, .alpha_weights = kd::AlphaWeights::hard_loss});
  auto distill = [&](const Tensor& logits, const Batch& b) {
    return kd_loss(logits, t.logits(b.x), b.y);
  };
  auto student = make_net(4, 4);
  train(*student, train_data(), 60, 0.05, distill);
  double acc_student = accuracy(*student, test_data());
  CHECK(acc_student >= 0.9);

  int64_t params_before = 0, params_after = 0;
  for (auto& p : student->parameters()) params_before += p.numel();
  prune::RemovalReport removed =
      prune::prune_channels(*student, {1, 1, 8, 8}, {.amount = 0.5, .importance = prune::Importance::L1});
  for (auto& p : student->parameters()) params_after += p.numel();
  CHECK(params_after < params_before * 3 / 4);
  CHECK(removed.params_after == params_after);
  train(*student, train_data(), 30, 0.02, distill); // a short distilled fine-tune

  auto model = std::make_shared<q::QuantWrapper>(student);
  model->eval();
  q::fuse_modules(*model, q::find_fusable_groups(*model));
  q::prepare(*model, {.global = q::default_qconfig()});
  {
    no_grad ng;
    (*model)(train_data().x);
  }
  q::convert(*model);
  CHECK(count_integer_layers(*model) == 4);
  double acc_int8 = accuracy(*model, test_data());
  INFO("student " << acc_student << ", pruned and int8 " << acc_int8);
  CHECK(acc_int8 >= 0.9);
  CHECK(acc_int8 >= acc_student - 0.05);
}

TEST_CASE("QAT + pruning masks + distillation + float16 autocast with a GradScaler in one loop, "
          "then converted to int8") {
  nn::ModulePtr teacher = trained_teacher();
  kd::Teacher t(teacher);
  kd::DistillationLoss kd_loss(
      {.temperature = 2, .alpha = 0.5, .alpha_weights = kd::AlphaWeights::hard_loss});
  // The student starts as a copy of the teacher and is compressed while it trains.
  auto student = qat_model(teacher->clone());
  std::vector<std::string> names = prune::prunable_weights(*student);
  prune::AGP agp(*student, names, {.initial_sparsity = 0, .final_sparsity = 0.6,
                                   .start_step = 0, .frequency = 5, .num_steps = 4});
  optim::SGD opt(student->parameters(), {.lr = 0.02, .momentum = 0.9});
  amp::GradScaler scaler({.init_scale = 1024});
  const Batch& data = train_data();
  double first = 0, last = 0;
  for (int s = 0; s < 36; s++) {
    Batch b = slice(data, (s % 12) * 32, 32);
    agp.step(s);
    Tensor teacher_logits = t.logits(b.x);
    Tensor loss;
    {
      amp::autocast ac({.dtype = kFloat16});
      loss = kd_loss((*student)(b.x), teacher_logits, b.y);
    }
    CHECK(loss.dtype() == kFloat32);
    opt.zero_grad();
    scaler.scale(loss).backward();
    scaler.step(opt);
    scaler.update();
    if (s == 0) first = loss.item();
    last = loss.item();
  }
  CHECK(std::isfinite(last));
  CHECK(last < first * 1.5); // the student started as the teacher; compression costs a little
  CHECK(scaler.get_scale() > 0);
  CHECK(std::abs(agp.current_sparsity() - 0.6) < 1e-9);
  for (auto& [path, f] : fake_quants(*student)) {
    INFO(path);
    CHECK(f->has_qparams());
  }
  double acc_fake = accuracy(*student, test_data());
  CHECK(acc_fake >= 0.9);

  // Deploy: bake the masks in, convert to int8; the sparsity survives and so does the accuracy.
  prune::remove_all(*student);
  student->eval();
  q::convert(*student);
  CHECK(count_integer_layers(*student) == 4);
  int64_t zeros = 0, total = 0;
  for (auto& [path, m] : student->named_modules())
    if (auto* c = dynamic_cast<q::QuantizedConv2d*>(m)) {
      Tensor w = c->int_weight();
      zeros += (int64_t)sum(eq(w, 0.0).to(kFloat64)).item(), total += w.numel();
    } else if (auto* l = dynamic_cast<q::QuantizedLinear*>(m)) {
      Tensor w = l->int_weight();
      zeros += (int64_t)sum(eq(w, 0.0).to(kFloat64)).item(), total += w.numel();
    }
  CHECK((double)zeros / (double)total >= 0.6);
  double acc_int8 = accuracy(*student, test_data());
  INFO("fake-quant " << acc_fake << ", int8 " << acc_int8);
  CHECK(std::abs(acc_int8 - acc_fake) <= 0.02);
}

} // TEST_SUITE
