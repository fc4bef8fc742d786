// surgery: what the compression layer does to a model — dotted paths at any depth, swapping
// modules, deep copies, parameters given data of a new shape (and what optimizers do then),
// buffers sized on first use, joins as modules that hooks see, and the option structs.
#include "gradcheck.h"

#include <tb/models.h>

using namespace tb;
using tbtest::check_error;
using tbtest::small_net;

namespace {

std::vector<std::string> keys_of(const StateDict& d) { return d.keys(); }

bool same_values(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.to_vector() == b.to_vector();
}

// A module class that forgot TB_MODULE: clone() must refuse it by name.
struct NoCopy : nn::Module {
  Tensor forward(const Tensor& x) override { return x; }
  std::string type_name() const override { return "NoCopy"; }
};

// A module with a buffer whose shape is only known after data was seen (as a per-channel
// observer's running minimum).
struct ChannelMin : nn::Module {
  ChannelMin() {
    register_buffer("min_val", empty({0}), {.sized_on_first_use = true});
    register_buffer("count", zeros({3}));
  }
  TB_MODULE(ChannelMin)
};

} // namespace

TEST_SUITE("surgery") {

TEST_CASE("get_submodule / set_submodule at any depth, errors naming the path") {
  auto net = small_net();
  CHECK(&net->get_submodule("") == net.get());
  CHECK(net->get_submodule("features.1").type_name() == "BatchNorm2d");

  auto six = std::make_shared<nn::ReLU6>();
  nn::ModulePtr old = net->set_submodule("features.2", six);
  CHECK(old->type_name() == "ReLU");
  CHECK(&net->get_submodule("features.2") == six.get());
  // same name, same position
  CHECK(net->named_modules()[4].first == "features.2");
  // the new module is the one that runs
  net->set_submodule("features.2", std::make_shared<nn::Identity>());
  Tensor x = full({1, 2, 3, 3}, -1.0);
  net->eval();
  Tensor with_identity = net->get_submodule("features")(x);
  CHECK(min(with_identity).item() < 0); // no ReLU any more: negatives pass

  // a deep swap in a zoo model: hooks and forward go through the new child
  auto mv2 = models::mobilenet_v2({.num_classes = 10, .small_input = true, .in_channels = 1});
  nn::ModulePtr dw = mv2->set_submodule("features.2.conv.1.2", std::make_shared<nn::ReLU>());
  CHECK(dw->type_name() == "ReLU6");
  CHECK(mv2->get_submodule("features.2.conv.1.2").type_name() == "ReLU");

  check_error([&] { net->get_submodule("features.7"); },
              {"get_submodule('features.7')", "'features'", "no child '7'", "0, 1, 2"});
  check_error([&] { net->get_submodule("nothing.0"); },
              {"get_submodule('nothing.0')", "root module", "features, flatten, classifier"});
  check_error([&] { net->set_submodule("features.9", std::make_shared<nn::ReLU>()); },
              {"set_submodule('features.9')", "no child '9'"});
  check_error([&] { net->set_submodule("features.0", nullptr); },
              {"set_submodule('features.0')", "null"});
  check_error([&] { net->set_submodule("", std::make_shared<nn::ReLU>()); }, {"empty path"});
}

TEST_CASE("clone: an independent deep copy with the same keys, values, flags and hooks") {
  manual_seed(3);
  auto net = small_net();
  net->eval();
  int calls = 0;
  net->get_submodule("classifier").register_forward_hook(
      [&](nn::Module&, const Tensor&, const Tensor&) { calls++; });
  std::shared_ptr<nn::Sequential> copy = nn::clone(*net);

  CHECK(keys_of(copy->state_dict()) == keys_of(net->state_dict()));
  StateDict copy_state = copy->state_dict();
  for (auto& [k, t] : net->state_dict()) {
    const Tensor& c = copy_state.at(k);
    CHECK(same_values(c, t));
    CHECK(c.dtype() == t.dtype());
    CHECK(c.storage() != t.storage()); // own storage
  }
  CHECK_FALSE(copy->is_training());
  CHECK(copy->parameters()[0].requires_grad());
  CHECK(copy->parameters()[0].is_leaf());
  CHECK(copy->str() == net->str());

  // same outputs; the hook came along (it counts calls of both)
  Tensor x = randn({2, 2, 3, 3});
  CHECK(same_values((*copy)(x), (*net)(x)));
  CHECK(calls == 2);

  // independent: changing the copy leaves the original alone, and vice versa
  Tensor w_before = net->get_submodule("classifier").get("weight").clone();
  {
    no_grad ng;
    copy->get_submodule("classifier").get("weight").fill_(7.0);
  }
  CHECK(same_values(net->get_submodule("classifier").get("weight"), w_before));
  copy->set_submodule("features.2", std::make_shared<nn::Identity>());
  CHECK(net->get_submodule("features.2").type_name() == "ReLU");
  copy->train();
  CHECK_FALSE(net->is_training());

  // gradients are not copied
  Tensor loss = sum((*net)(x));
  loss.backward();
  CHECK(net->parameters()[0].grad().defined());
  CHECK_FALSE(nn::clone(*net)->parameters()[0].grad().defined());
}

TEST_CASE("clone keeps sharing inside the tree, layouts, and refuses classes without TB_MODULE") {
  // tied weights: one parameter in two modules stays one parameter in the copy
  auto a = std::make_shared<nn::Linear>(3, 3, false);
  auto b = std::make_shared<nn::Linear>(3, 3, false);
  b->remove_parameter("weight");
  b->register_parameter("weight", a->weight());
  auto net = std::make_shared<nn::Sequential>(std::initializer_list<nn::ModulePtr>{a, b, a});
  CHECK(net->parameters().size() == 1);
  auto copy = nn::clone(*net);
  CHECK(copy->parameters().size() == 1);
  CHECK((*copy)[0].get() == (*copy)[2].get()); // a shared module stays shared
  CHECK((*copy)[0].get() != a.get());

  // a channels-last buffer clones channels-last
  auto m = std::make_shared<ChannelMin>();
  m->set_tensor("min_val", randn({2, 3, 4, 5}).contiguous_channels_last());
  CHECK(nn::clone(*m)->get("min_val").is_channels_last());

  // every zoo model clones to the same function
  for (const char* name : {"resnet18", "mobilenet_v2", "shufflenet_v2_x0_5", "efficientnet_b0"}) {
    auto model = models::create(name, {.num_classes = 10, .small_input = true, .in_channels = 1});
    model->eval();
    auto twin = model->clone();
    Tensor x = randn({1, 1, 28, 28});
    no_grad ng;
    CHECK_MESSAGE(same_values((*twin)(x), (*model)(x)), name);
    CHECK(twin->str() == model->str());
  }

  auto seq = std::make_shared<nn::Sequential>();
  seq->push_back("mine", std::make_shared<NoCopy>());
  check_error([&] { seq->clone(); }, {"clone", "NoCopy", "TB_MODULE(NoCopy)"});
}

TEST_CASE("set_data: new shape, same parameter; layer sizes follow the weights") {
  manual_seed(4);
  auto net = small_net();
  Tensor w = net->get_submodule("features.0").get("weight"); // a handle, as an optimizer has
  auto names_before = net->named_parameters();

  // keep 3 of the 4 output channels of the conv, and of the BN, and the classifier's inputs
  Tensor keep = from_vector(std::vector<int64_t>{0, 2, 3}, {3});
  auto& conv = dynamic_cast<nn::Conv2d&>(net->get_submodule("features.0"));
  auto& bn = dynamic_cast<nn::BatchNorm2d&>(net->get_submodule("features.1"));
  auto& fc = dynamic_cast<nn::Linear&>(net->get_submodule("classifier"));
  Tensor fc_keep = from_vector(std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 18, 19, 20, 21, 22,
                                                    23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33,
                                                    34, 35}, {27});
  Tensor new_w = index_select(w.detach(), 0, keep);
  net->set_data("features.0.weight", new_w);
  net->set_data("features.0.bias", index_select(conv.bias().detach(), 0, keep));
  for (const char* t : {"weight", "bias", "running_mean", "running_var"})
    net->set_data(std::string("features.1.") + t, index_select(bn.get(t).detach(), 0, keep));
  net->set_data("classifier.weight", index_select(fc.weight().detach(), 1, fc_keep));

  CHECK(w.shape() == Shape{3, 2, 3, 3}); // the old handle sees the new data
  CHECK(same_values(w, new_w));
  CHECK(w.storage() != new_w.storage()); // copied, not aliased
  CHECK(w.requires_grad());
  auto names_after = net->named_parameters();
  REQUIRE(names_after.size() == names_before.size());
  for (size_t i = 0; i < names_after.size(); i++) {
    CHECK(names_after[i].first == names_before[i].first);
    CHECK(names_after[i].second.impl() == names_before[i].second.impl());
  }
  CHECK(conv.out_channels() == 3);
  CHECK(conv.in_channels() == 2);
  CHECK(bn.num_features() == 3);
  CHECK(fc.in_features() == 27);
  CHECK(fc.out_features() == 5);
  CHECK(conv.str() == "Conv2d(2, 3, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))");

  // the smaller model trains: forward, backward, gradients of the new shapes
  Tensor y = (*net)(randn({2, 2, 3, 3}));
  CHECK(y.shape() == Shape{2, 5});
  sum(y).backward();
  CHECK(w.grad().shape() == Shape{3, 2, 3, 3});
  // the gradient of the old shape is dropped by set_data
  net->set_data("features.0.weight", w.detach());
  CHECK_FALSE(w.grad().defined());

  check_error([&] { net->set_data("features.0.weight", randn({3, 2, 3, 3}, kFloat64)); },
              {"set_data('features.0.weight')", "float32", "float64", "[3, 2, 3, 3]"});
  check_error([&] { net->set_data("features.0.kernel", randn({3})); },
              {"set_data('features.0.kernel')", "Conv2d", "no parameter or buffer 'kernel'"});
  check_error([&] { net->set_data("features.5.weight", randn({3})); },
              {"set_data('features.5.weight')", "no child '5'"});
  check_error([&] { net->set_data("features.0.weight", Tensor()); }, {"undefined"});
  if (cuda::is_available())
    check_error([&] { net->set_data("features.0.weight", randn({3, 2, 3, 3}).cuda()); },
                {"set_data('features.0.weight')", "cpu", "cuda"});
}

TEST_CASE("optimizer state after set_data: starts afresh on a new shape, or remapped") {
  auto run = [](bool remap) {
    manual_seed(5);
    nn::Linear lin(3, 4, false);
    optim::SGD opt(lin.parameters(), {.lr = 0.1, .momentum = 0.9});
    Tensor x = randn({2, 3});
    sum(lin(x)).backward();
    opt.step();
    Tensor w = lin.weight();
    Tensor buf = opt.state(w)->at("momentum_buffer").clone();
    Tensor keep = from_vector(std::vector<int64_t>{1, 3}, {2});
    lin.set_data("weight", index_select(w.detach(), 0, keep));
    if (remap)
      opt.remap_state(w, [&](const std::string&, const Tensor& t) {
        return index_select(t, 0, keep);
      });
    Tensor w0 = w.clone();
    opt.zero_grad();
    sum(lin(x)).backward();
    Tensor g = w.grad().clone();
    opt.step();
    // fresh state: buf = g, w = w0 - lr g; remapped: buf = 0.9 buf_kept + g
    Tensor expect_buf = remap ? add(mul(index_select(buf, 0, keep), 0.9), g) : g;
    CHECK(allclose(opt.state(w)->at("momentum_buffer"), expect_buf, 1e-6, 1e-7));
    CHECK(allclose(w, sub(w0, mul(expect_buf, 0.1)), 1e-6, 1e-7));
  };
  run(false);
  run(true);

  // Adam: the step count starts again with the moments
  nn::Linear lin(2, 2, false);
  optim::Adam adam(lin.parameters(), {.lr = 0.1});
  sum(lin(randn({1, 2}))).backward();
  adam.step();
  lin.set_data("weight", randn({3, 2}));
  adam.zero_grad();
  sum(lin(randn({1, 2}))).backward();
  adam.step();
  CHECK(adam.state(lin.weight())->at("step").item() == 1);
  CHECK(adam.state(lin.weight())->at("exp_avg").shape() == Shape{3, 2});
  adam.reset_state(lin.weight());
  CHECK(adam.state(lin.weight()) == nullptr);
  check_error([&] {
    adam.zero_grad();
    sum(lin(randn({1, 2}))).backward();
    adam.step();
    adam.remap_state(lin.weight(), [](const std::string&, const Tensor& t) { return t.to(kFloat64); });
  }, {"remap_state", "exp_avg", "float32", "float64"});
}

TEST_CASE("load_state_dict: buffers sized on first use take the checkpoint's shape") {
  ChannelMin fresh;
  Tensor handle = fresh.get("min_val");
  StateDict ckpt{{"min_val", from_vector(std::vector<float>{-1, -2, -3, -4, -5}, {5})},
                 {"count", from_vector(std::vector<float>{1, 2, 3}, {3})}};
  fresh.load_state_dict(ckpt);
  CHECK(handle.shape() == Shape{5}); // same buffer object, new shape
  CHECK(handle.to_vector() == std::vector<double>{-1, -2, -3, -4, -5});
  CHECK(fresh.get("count").to_vector() == std::vector<double>{1, 2, 3});
  // and a model that contains it, cloned, saves and reloads the same
  auto net = std::make_shared<nn::Sequential>();
  net->push_back("obs", std::make_shared<ChannelMin>());
  StateDict nested{{"obs.min_val", zeros({2, 7})}, {"obs.count", zeros({3})}};
  net->load_state_dict(nested);
  CHECK(net->get_submodule("obs").get("min_val").shape() == Shape{2, 7});

  // a buffer not sized on first use still refuses another shape; dtype always must match
  StateDict wrong{{"min_val", zeros({2})}, {"count", zeros({4})}};
  check_error([&] { fresh.load_state_dict(wrong); },
              {"'count'", "[4]", "[3]", "not a buffer sized on first use"});
  StateDict wrong_dtype{{"min_val", zeros({2}, kFloat64)}, {"count", zeros({3})}};
  check_error([&] { fresh.load_state_dict(wrong_dtype); }, {"dtype mismatch", "'min_val'"});
  CHECK(handle.shape() == Shape{5}); // all or nothing: nothing changed on error
  // removing the buffer forgets the flag
  fresh.remove_buffer("min_val");
  fresh.register_buffer("min_val", zeros({5}));
  check_error([&] { fresh.load_state_dict(StateDict{{"min_val", zeros({2})}, {"count", zeros({3})}}); },
              {"size mismatch for 'min_val'"});
}

TEST_CASE("joins are modules: hooks see residual adds, SE multiplies, concatenations") {
  nn::Add add_m;
  nn::Mul mul_m;
  nn::Cat cat_m(1);
  Tensor a = randn({2, 3}), b = randn({2, 3});
  CHECK(same_values(add_m(a, b), add(a, b)));
  CHECK(same_values(mul_m(a, b), mul(a, b)));
  CHECK(same_values(cat_m({a, b, a}), cat({a, b, a}, 1)));
  CHECK(same_values(cat_m(a), a)); // one input
  check_error([&] { add_m(std::vector<Tensor>{a, b, a}); }, {"Add", "takes 2 inputs, got 3"});
  check_error([&] { mul_m(a); }, {"Mul", "takes 2 inputs, got 1"});
  check_error([&] { cat_m(std::vector<Tensor>{}); }, {"Cat", "at least one"});
  check_error([&] { nn::Linear(2, 2)(a, b); }, {"Linear", "takes one input, got 2"});

  // list-form hooks see every input; a pre-hook can replace them; one-input hooks see the first
  std::vector<Shape> seen;
  auto h1 = add_m.register_forward_hook(
      [&](nn::Module&, const std::vector<Tensor>& in, const Tensor& out) {
        for (auto& t : in) seen.push_back(t.shape());
        seen.push_back(out.shape());
      });
  auto h2 = add_m.register_forward_pre_hook([&](nn::Module&, const std::vector<Tensor>& in) {
    return std::vector<Tensor>{in[0], zeros_like(in[1])};
  });
  Tensor first;
  auto h3 = add_m.register_forward_hook(
      [&](nn::Module&, const Tensor& in, const Tensor&) { first = in; });
  CHECK(same_values(add_m(a, b), a)); // b was replaced by zeros
  CHECK(seen == std::vector<Shape>{{2, 3}, {2, 3}, {2, 3}});
  CHECK(same_values(first, a));
  h2.remove();

  // every residual add of ResNet-18 is a module a hook can observe
  auto net = models::resnet18({.num_classes = 10, .small_input = true, .in_channels = 1});
  net->eval();
  int adds = 0, muls = 0;
  for (auto& [name, m] : net->named_modules())
    if (m->type_name() == "Add")
      m->register_forward_hook([&](nn::Module&, const Tensor&, const Tensor&) { adds++; });
  no_grad ng;
  (*net)(randn({1, 1, 28, 28}));
  CHECK(adds == 8);
  CHECK(net->get_submodule("layer1.0.skip_add").type_name() == "Add");
  // SE gates (MobileNetV3), concatenations and shuffles (ShuffleNetV2) too
  auto v3 = models::mobilenet_v3_small({.num_classes = 10, .small_input = true, .in_channels = 1});
  for (auto& [name, m] : v3->named_modules())
    if (m->type_name() == "Mul")
      m->register_forward_hook([&](nn::Module&, const Tensor&, const Tensor&) { muls++; });
  v3->eval();
  (*v3)(randn({1, 1, 28, 28}));
  CHECK(muls == 9); // the 9 blocks with squeeze-excitation
  auto sh = models::shufflenet_v2_x0_5({.num_classes = 10, .small_input = true, .in_channels = 1});
  CHECK(sh->get_submodule("stage2.0.cat").type_name() == "Cat");
  CHECK(sh->get_submodule("stage2.0.shuffle").type_name() == "ChannelShuffle");
}

TEST_CASE("option structs: rectangular kernels, PyTorch's defaults, out-of-range values") {
  manual_seed(6);
  // Conv2d with a 3x1 kernel equals the op with the same settings
  nn::Conv2d conv({.in_channels = 2, .out_channels = 3, .kernel_size = {3, 1}, .stride = {2, 1},
                   .padding = {1, 0}});
  CHECK(conv.weight().shape() == Shape{3, 2, 3, 1});
  CHECK(conv.kernel_size() == nn::Size2{3, 1});
  Tensor x = randn({1, 2, 6, 5});
  Tensor y = conv(x);
  CHECK(y.shape() == Shape{1, 3, 3, 5});
  Conv2dParams p{.stride_h = 2, .stride_w = 1, .pad_h = 1, .pad_w = 0};
  CHECK(same_values(y, conv2d(x, conv.weight(), conv.bias(), p)));
  CHECK(conv.str() == "Conv2d(2, 3, kernel_size=(3, 1), stride=(2, 1), padding=(1, 0))");
  // the short form: stride 1, no padding, bias
  nn::Conv2d plain(2, 3, 3);
  CHECK(plain.params.stride_h == 1);
  CHECK(plain.params.pad_w == 0);
  CHECK(plain.bias().defined());

  // pooling: stride follows the kernel unless given (PyTorch's stride=None)
  nn::MaxPool2d pool3(3);
  CHECK(pool3.params.stride_h == 3);
  CHECK(pool3(randn({1, 1, 9, 9})).shape() == Shape{1, 1, 3, 3});
  nn::AvgPool2d rect({.kernel_size = {2, 1}});
  CHECK(rect(randn({1, 1, 4, 4})).shape() == Shape{1, 1, 2, 4});
  CHECK(rect.str() == "AvgPool2d(kernel_size=(2, 1), stride=(2, 1), padding=0)");
  nn::MaxPool2d strided({.kernel_size = 3, .stride = 2, .padding = 1});
  CHECK(strided.str() ==
        "MaxPool2d(kernel_size=3, stride=2, padding=1, dilation=1, ceil_mode=False)");

  check_error([] { nn::Conv2d({.in_channels = 2, .out_channels = 3, .kernel_size = {3, 0}}); },
              {"Conv2d", "kernel_size=(3, 0)"});
  check_error([] { nn::Conv2d({.in_channels = 2, .out_channels = 3, .kernel_size = 3,
                               .stride = {1, -1}}); },
              {"Conv2d", "stride=(1, -1)"});
  check_error([] { nn::MaxPool2d({.kernel_size = 2, .stride = 0}); }, {"MaxPool2d", "stride=(0, 0)"});
  check_error([] { nn::BatchNorm2d(4, {.momentum = 1.5}); }, {"BatchNorm", "momentum", "1.5"});
  check_error([] { nn::BatchNorm2d(4, {.eps = 0}); }, {"BatchNorm", "eps"});
  check_error([] { optim::SGD({randn({2}, TensorOptions().with_requires_grad(true))},
                              {.lr = 0.1, .momentum = -1}); },
              {"SGD", "momentum", "-1"});
  check_error([] { nn::ConvBNAct({.in_channels = 4, .out_channels = 6, .groups = 4}); },
              {"Conv2d", "divisible", "groups (4)"});
  check_error([] { nn::InvertedResidual({.in_channels = 8, .out_channels = 8}); },
              {"InvertedResidual", "expand_ratio"});
  // a BatchNorm whose weights were shrunk reports the new width
  nn::BatchNorm2d bn(4);
  bn.set_data("weight", ones({2}));
  CHECK(bn.num_features() == 2);
}

} // TEST_SUITE
