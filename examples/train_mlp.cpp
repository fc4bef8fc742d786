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
// Reading order: the data (1), the model (2), the optimizer (3), the training loop (4),
// evaluation (5); the comments name the PyTorch call each step corresponds to.
#include <tb/tb.h>
#include <tb/experiment.h>

#include <cmath>
#include <cstdio>

namespace ex = tb::experiment;

// (1) Data: `per_class` points on each of `classes` spiral arms. Point i of arm k sits at radius
// r = i / per_class and angle theta = 4 r + 2 pi k / classes, plus Gaussian noise on the angle.
// x float32 [N, 2] and y int64 [N] (class indices), as torch.tensor would make them.
struct Points {
  tb::Tensor x, y;
};

Points make_spirals(int64_t per_class, int64_t classes, uint64_t seed) {
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

int main(int argc, char** argv) {
  int steps = 300;
  std::string device_name = "cpu";
  CLI::App app{"Trains a small MLP to tell three interleaved spirals apart.", "train_mlp"};
  app.add_option("--steps", steps, "training steps")->check(ex::at_least(1));
  app.add_option("--device", device_name, "where to train")->check(ex::device_name());
  if (auto exit_code = ex::parse_flags(app, argc, argv)) return *exit_code;
  tb::Device device = tb::parse_device(device_name);
  ex::seed_everything(0); // everything random below (weight initialisation) is now repeatable

  // (1) A training set and a separate test set (different seed: new noise, same spirals).
  Points train = make_spirals(/*per_class=*/200, /*classes=*/3, /*seed=*/1);
  Points test = make_spirals(200, 3, /*seed=*/2);
  tb::Tensor x = train.x.to(device), y = train.y.to(device); // explicit: ops never copy devices

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
    tb::Tensor logits = (*model)(x);               // [600, 3]
    tb::Tensor loss = tb::cross_entropy(logits, y); // mean over the batch, a scalar
    opt.zero_grad();
    loss.backward(); // fills .grad() of every parameter
    opt.step();
    loss_value = loss.item();
    if (step == 1 || step % 50 == 0 || step == steps) {
      ex::Meter m; // the accuracy of this step's predictions
      m.add(loss_value * (double)y.numel(), logits, y);
      std::printf("step %4d  loss %.4f  train accuracy %5.1f%%\n", step, loss_value,
                  100 * m.accuracy());
    }
  }

  // (5) Evaluation, also on points the model never saw: eval mode, no graph recorded.
  using tb::data::DataLoader, tb::data::TensorDataset;
  DataLoader train_set(std::make_shared<TensorDataset>(train.x, train.y), {.batch_size = 600});
  DataLoader test_set(std::make_shared<TensorDataset>(test.x, test.y), {.batch_size = 600});
  ex::Score on_train = ex::evaluate(*model, train_set), on_test = ex::evaluate(*model, test_set);
  std::printf("final: %d steps, loss %.4f, train accuracy %.1f%%, test accuracy %.1f%%\n", steps,
              loss_value, 100 * on_train.accuracy, 100 * on_test.accuracy);
  return 0;
}
