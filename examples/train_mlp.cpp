// examples/train_mlp.cpp — your first tensorbrain program: train a small neural network.
//
// The task: points in the plane lie on three interleaved spiral arms, one arm per class. No
// straight line separates them, so a linear classifier stays near 33-50% accuracy; a small MLP
// with two hidden layers learns the curved boundaries and reaches well above 90%.
//
//   ./build/examples/train_mlp                 # 300 steps on the CPU, a second or two
//   ./build/examples/train_mlp --steps 1000    # longer
//   ./build/examples/train_mlp --device cuda   # on the GPU (needs a CUDA build and a GPU)
//
// Reading order: make the data (1), define the model (2), the optimizer (3), the training loop
// (4), evaluation (5). Every step is a handful of lines; the comments say what PyTorch call each
// one corresponds to.
#include <tb/tb.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

// (1) Data: `per_class` points on each of `classes` spiral arms. Point i of arm k sits at radius
// r = i / per_class and angle theta = 4 r + 2 pi k / classes, plus Gaussian noise on the angle.
// Returns x float32 [N, 2] and y int64 [N] (class indices), as torch.tensor would.
struct Dataset {
  tb::Tensor x, y;
};

Dataset make_spirals(int64_t per_class, int64_t classes, uint64_t seed) {
  tb::Generator gen(seed); // our own seeded generator: the data never changes between runs
  std::vector<float> xs;
  std::vector<int64_t> ys;
  for (int64_t k = 0; k < classes; k++) {
    for (int64_t i = 0; i < per_class; i++) {
      double r = (double)i / per_class;
      double theta = 4.0 * r + 2.0 * M_PI * k / classes + 0.2 * gen.next_normal();
      xs.push_back((float)(r * std::sin(theta)));
      xs.push_back((float)(r * std::cos(theta)));
      ys.push_back(k);
    }
  }
  int64_t n = per_class * classes;
  return {tb::from_vector(xs, {n, 2}), tb::from_vector(ys, {n})};
}

// Fraction of points whose highest logit is the true class.
double accuracy(const tb::Tensor& logits, const tb::Tensor& y) {
  tb::Tensor pred = tb::argmax(logits, /*dim=*/1);
  return tb::sum(tb::eq(pred, y)).item() / (double)y.numel();
}

int main(int argc, char** argv) {
  // Command line: --steps N, --device cpu|cuda.
  int steps = 300;
  std::string device_name = "cpu";
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    if (a == "--steps" && i + 1 < argc) {
      steps = std::atoi(argv[++i]);
    } else if (a == "--device" && i + 1 < argc) {
      device_name = argv[++i];
    } else {
      std::fprintf(stderr, "usage: %s [--steps N] [--device cpu|cuda]\n", argv[0]);
      return 2;
    }
  }

  try {
    tb::Device device = tb::parse_device(device_name);
    if (device.is_cuda() && !tb::cuda::is_available()) {
      std::fprintf(stderr, "train_mlp: --device %s asked for, but %s\n", device_name.c_str(),
                   tb::cuda::is_built() ? "no CUDA GPU is available on this machine"
                                        : "this build has no CUDA support (meson -Dcuda=enabled)");
      return 1;
    }

    // Everything random below (weight initialisation) draws from the default generator.
    tb::manual_seed(0);

    // (1) A training set and a separate test set (different seed: new noise, same spirals).
    Dataset train = make_spirals(/*per_class=*/200, /*classes=*/3, /*seed=*/1);
    Dataset test = make_spirals(200, 3, /*seed=*/2);
    train.x = train.x.to(device), train.y = train.y.to(device); // explicit moves: ops never
    test.x = test.x.to(device), test.y = test.y.to(device);     // copy between devices

    // (2) The model: 2 -> 64 -> 64 -> 3 with ReLU, like torch.nn.Sequential. Linear layers start
    // with PyTorch's default initialisation; module->to(device) moves every parameter.
    using namespace tb::nn;
    auto model = std::make_shared<Sequential>(std::initializer_list<ModulePtr>{
        std::make_shared<Linear>(2, 64), std::make_shared<ReLU>(),
        std::make_shared<Linear>(64, 64), std::make_shared<ReLU>(),
        std::make_shared<Linear>(64, 3)});
    model->to(device);
    std::printf("model: %lld parameters on %s\n", (long long)model->num_parameters(),
                device.str().c_str());

    // (3) The optimizer: SGD with momentum, like torch.optim.SGD(model.parameters(), ...).
    tb::optim::SGD opt(model->parameters(), {.lr = 0.1, .momentum = 0.9});

    // (4) The training loop. Each step uses the whole training set (600 points: small enough):
    //     forward -> loss -> zero the old gradients -> backward -> update.
    double loss_value = 0;
    for (int step = 1; step <= steps; step++) {
      tb::Tensor logits = (*model)(train.x);               // [600, 3]
      tb::Tensor loss = tb::cross_entropy(logits, train.y); // mean over the batch, a scalar
      opt.zero_grad();
      loss.backward(); // fills .grad() of every parameter
      opt.step();
      loss_value = loss.item();
      if (step == 1 || step % 50 == 0 || step == steps) {
        tb::no_grad ng; // no graph needed just to measure
        std::printf("step %4d  loss %.4f  train accuracy %5.1f%%\n", step, loss_value,
                    100 * accuracy(logits, train.y));
      }
    }

    // (5) Evaluation on points the model never saw. no_grad: no graph is recorded.
    tb::no_grad ng;
    model->eval();
    double train_acc = accuracy((*model)(train.x), train.y);
    double test_acc = accuracy((*model)(test.x), test.y);
    std::printf("final: %d steps, loss %.4f, train accuracy %.1f%%, test accuracy %.1f%%\n", steps,
                loss_value, 100 * train_acc, 100 * test_acc);
  } catch (const tb::Error& e) {
    // Every bad input (a typo in --device, a shape mismatch) ends here with a readable message.
    std::fprintf(stderr, "train_mlp: %s\n", e.what());
    return 1;
  }
  return 0;
}
