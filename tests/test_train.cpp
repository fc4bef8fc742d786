// tests/test_train.cpp — end-to-end: small networks learn small synthetic problems on the CPU.
//
// These tests exercise everything at once (modules, conv/bn/pool/linear forward and backward,
// cross_entropy, SGD with momentum, the allocator) and catch what unit tests miss: a gradient
// with the wrong sign or scale still passes a shape test but makes the loss rise. Each problem is
// easy on purpose: a correct framework solves it in a few dozen steps, so the thresholds have a
// wide margin and the suite runs in about a second.
#include "gradcheck.h"

#include <cmath>
#include <vector>

namespace {

using tb::Tensor;

struct Data {
  Tensor x, y; // x float32 [N, ...], y int64 [N] class indices
};

// Four Gaussian blobs in 2-D (class k centred at (±1.5, ±1.5), std 0.5): linearly separable up to
// the few points in the tails, so a small MLP should reach > 95% training accuracy.
Data make_blobs(int64_t n, uint64_t seed) {
  tb::Generator g(seed);
  const float cx[4] = {-1.5f, 1.5f, -1.5f, 1.5f}, cy[4] = {-1.5f, -1.5f, 1.5f, 1.5f};
  std::vector<float> x(n * 2);
  std::vector<int64_t> y(n);
  for (int64_t i = 0; i < n; i++) {
    int64_t k = i % 4;
    y[i] = k;
    x[2 * i] = cx[k] + 0.5f * (float)g.next_normal();
    x[2 * i + 1] = cy[k] + 0.5f * (float)g.next_normal();
  }
  return {tb::from_vector(x, {n, 2}), tb::from_vector(y, {n})};
}

// 1×8×8 images of four classes: a horizontal bar, a vertical bar, the main diagonal, the
// anti-diagonal, each at a random position (bars) plus Gaussian noise (std 0.3). Position varies,
// so the network needs the convolution's translation invariance, not one fixed pixel.
Data make_patterns(int64_t n, uint64_t seed) {
  tb::Generator g(seed);
  std::vector<float> x(n * 64);
  std::vector<int64_t> y(n);
  for (int64_t i = 0; i < n; i++) {
    int64_t k = i % 4, pos = (int64_t)(g.next_double() * 6) + 1;
    float* img = &x[i * 64];
    for (int p = 0; p < 64; p++) img[p] = 0.3f * (float)g.next_normal();
    for (int j = 0; j < 8; j++) {
      if (k == 0) img[pos * 8 + j] += 1.0f;     // row `pos`
      if (k == 1) img[j * 8 + pos] += 1.0f;     // column `pos`
      if (k == 2) img[j * 8 + j] += 1.0f;       // diagonal
      if (k == 3) img[j * 8 + 7 - j] += 1.0f;   // anti-diagonal
    }
    y[i] = k;
  }
  return {tb::from_vector(x, {n, 1, 8, 8}), tb::from_vector(y, {n})};
}

// Fraction of samples whose argmax logit is the label (eval mode, no graph).
double accuracy(tb::nn::Module& net, const Data& d) {
  tb::no_grad ng;
  net.eval();
  Tensor pred = tb::argmax(net(d.x), 1);
  net.train();
  return tb::sum(tb::eq(pred, d.y)).item() / (double)d.y.numel();
}

// Minibatch SGD with momentum for `steps` steps; batches are drawn by a seeded permutation per
// epoch. Returns the loss of every step.
std::vector<double> train(tb::nn::Module& net, const Data& d, int steps, int64_t batch, double lr,
                          uint64_t seed) {
  tb::Generator g(seed);
  tb::optim::SGD opt(net.parameters(), {.lr = lr, .momentum = 0.9});
  const int64_t n = d.y.numel();
  Tensor perm;
  int64_t at = n;
  std::vector<double> losses;
  for (int s = 0; s < steps; s++) {
    if (at + batch > n) perm = tb::randperm(n, &g), at = 0;
    Tensor idx = perm.narrow(0, at, batch);
    at += batch;
    Tensor xb = tb::index_select(d.x, 0, idx), yb = tb::index_select(d.y, 0, idx);
    opt.zero_grad();
    Tensor loss = tb::cross_entropy(net(xb), yb);
    loss.backward();
    opt.step();
    losses.push_back(loss.item());
  }
  return losses;
}

double mean_of(const std::vector<double>& v, size_t from, size_t to) {
  double s = 0;
  for (size_t i = from; i < to; i++) s += v[i];
  return s / (double)(to - from);
}

std::shared_ptr<tb::nn::Sequential> make_mlp() {
  using namespace tb::nn;
  return std::make_shared<Sequential>(std::initializer_list<ModulePtr>{
      std::make_shared<Linear>(2, 32), std::make_shared<ReLU>(), std::make_shared<Linear>(32, 4)});
}

// conv-bn-relu-pool-linear: [N, 1, 8, 8] -> [N, 8, 8, 8] -> pool -> [N, 8, 4, 4] -> [N, 4].
std::shared_ptr<tb::nn::Sequential> make_cnn() {
  using namespace tb::nn;
  return std::make_shared<Sequential>(std::initializer_list<ModulePtr>{
      std::make_shared<Conv2d>(Conv2dOptions{.in_channels = 1, .out_channels = 8, .kernel_size = 3, .padding = 1}), std::make_shared<BatchNorm2d>(8),
      std::make_shared<ReLU>(), std::make_shared<MaxPool2d>(2), std::make_shared<Flatten>(),
      std::make_shared<Linear>(8 * 4 * 4, 4)});
}

struct Run {
  std::vector<double> losses;
  double acc_before, acc_after, test_acc;
};

template <class MakeNet, class MakeData>
Run run(MakeNet make_net, MakeData make_data, int steps, double lr, uint64_t seed) {
  tb::manual_seed(seed); // the modules' initialisation draws from the default generator
  auto net = make_net();
  Data train_set = make_data(256, seed + 1), test_set = make_data(256, seed + 2);
  Run r;
  r.acc_before = accuracy(*net, train_set);
  r.losses = train(*net, train_set, steps, 32, lr, seed + 3);
  r.acc_after = accuracy(*net, train_set);
  r.test_acc = accuracy(*net, test_set);
  return r;
}

void check_learned(const Run& r, double min_acc) {
  const size_t n = r.losses.size();
  double first = mean_of(r.losses, 0, 5), last = mean_of(r.losses, n - 5, n);
  MESSAGE("loss over the first 5 steps " << first << ", last 5 steps " << last << "; accuracy "
       << r.acc_before << " -> " << r.acc_after << " (test " << r.test_acc << ")");
  for (double l : r.losses) REQUIRE(std::isfinite(l));
  CHECK(last < 0.1 * first);   // chance level is log(4) = 1.39; a working net ends far below
  CHECK(r.acc_after >= min_acc);
  CHECK(r.test_acc >= min_acc - 0.05);
  CHECK(r.acc_after > r.acc_before); // before: random weights (chance is 0.25, luck can do better)
}

} // namespace

TEST_SUITE("train") {

TEST_CASE("an MLP learns four Gaussian blobs with SGD") {
  Run r = run(make_mlp, make_blobs, 150, 0.05, 7);
  check_learned(r, 0.95);
}

TEST_CASE("a conv-bn-relu-pool-linear CNN learns 8x8 bar and diagonal patterns with SGD") {
  Run r = run(make_cnn, make_patterns, 150, 0.05, 11);
  check_learned(r, 0.95);
}

TEST_CASE("training is deterministic: the same seed gives identical losses") {
  Run a = run(make_cnn, make_patterns, 20, 0.05, 3), b = run(make_cnn, make_patterns, 20, 0.05, 3);
  REQUIRE(a.losses.size() == b.losses.size());
  for (size_t i = 0; i < a.losses.size(); i++) {
    INFO("step " << i);
    CHECK(a.losses[i] == b.losses[i]); // bit-identical, not just close
  }
  Run c = run(make_cnn, make_patterns, 20, 0.05, 4); // and a different seed really differs
  CHECK(c.losses != a.losses);
}

} // TEST_SUITE
