// tools/tb_cli.cpp — the `tb` command-line tool for the model zoo.
//
//   tb list                                    the model names
//   tb summary MODEL --input NxCxHxW [opts]    per-layer table: output shapes, params, mult-adds
//   tb forward MODEL WEIGHTS INPUT OUTPUT [opts]
//       loads WEIGHTS (a safetensors state_dict, strict), runs INPUT's tensor "input" through
//       the model in eval mode and writes {"output": y} to OUTPUT (safetensors); used by
//       tools/convert_torch_weights.py --check-model to compare against torchvision.
// opts: --num-classes K (default 1000), --small (3×3 stride-1 stem, no stem max-pool),
//       --width W (mobilenet_v1/v2), --in-channels C (summary: taken from --input by default)
#include <tb/models.h>
#include <tb/tb.h>

#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

namespace {

int usage() {
  std::fprintf(stderr,
               "usage: tb list\n"
               "       tb summary MODEL --input NxCxHxW [--num-classes K] [--small] [--width W]\n"
               "       tb forward MODEL WEIGHTS INPUT OUTPUT [--num-classes K] [--small] "
               "[--width W] [--in-channels C]\n");
  return 2;
}

tb::Shape parse_shape(const std::string& s) {
  tb::Shape shape;
  size_t pos = 0;
  while (pos <= s.size()) {
    size_t x = s.find('x', pos);
    std::string part = s.substr(pos, x == std::string::npos ? std::string::npos : x - pos);
    size_t used = 0;
    int64_t v = 0;
    try {
      v = std::stoll(part, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    TB_CHECK(used == part.size() && !part.empty() && v > 0,
             "tb: --input wants positive sizes joined by 'x' (e.g. 1x3x224x224), got '{}'", s);
    shape.push_back(v);
    if (x == std::string::npos) break;
    pos = x + 1;
  }
  TB_CHECK(shape.size() == 4, "tb: --input wants 4 sizes NxCxHxW, got '{}'", s);
  return shape;
}

// Splits argv into positional arguments and options, filling `o` and `input`.
std::vector<std::string> parse(int argc, char** argv, tb::models::ModelOptions& o,
                               std::string& input, bool& in_channels_set) {
  std::vector<std::string> pos;
  for (int i = 2; i < argc; i++) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      TB_CHECK(i + 1 < argc, "tb: option {} needs a value", a);
      return argv[++i];
    };
    if (a == "--input") input = value();
    else if (a == "--num-classes") o.num_classes = std::stoll(value());
    else if (a == "--width") o.width_mult = std::stod(value());
    else if (a == "--in-channels") o.in_channels = std::stoll(value()), in_channels_set = true;
    else if (a == "--small") o.small_input = true;
    else if (a.rfind("--", 0) == 0) throw tb::Error(fmt::format("tb: unknown option '{}'", a));
    else pos.push_back(a);
  }
  return pos;
}

int run(int argc, char** argv) {
  if (argc < 2) return usage();
  std::string cmd = argv[1];
  tb::models::ModelOptions o;
  std::string input;
  bool in_channels_set = false;
  auto pos = parse(argc, argv, o, input, in_channels_set);

  if (cmd == "list") {
    for (auto& n : tb::models::model_names()) std::printf("%s\n", n.c_str());
    return 0;
  }
  if (cmd == "summary") {
    if (pos.size() != 1 || input.empty()) return usage();
    tb::Shape shape = parse_shape(input);
    if (!in_channels_set) o.in_channels = shape[1];
    auto model = tb::models::create(pos[0], o);
    std::printf("%s (%s)\n", pos[0].c_str(), model->type_name().c_str());
    std::fputs(tb::summary(*model, shape).str().c_str(), stdout);
    return 0;
  }
  if (cmd == "forward") {
    if (pos.size() != 4) return usage();
    auto model = tb::models::create(pos[0], o);
    tb::nn::load(*model, pos[1], /*strict=*/true);
    auto in = tb::load_safetensors(pos[2]);
    TB_CHECK(in.tensors.contains("input"), "tb forward: {} has no tensor named 'input'", pos[2]);
    model->eval();
    tb::no_grad ng;
    tb::Tensor y = (*model)(in.tensors.at("input"));
    tb::save_safetensors(pos[3], tb::TensorDict{{"output", y.contiguous()}});
    return 0;
  }
  return usage();
}

} // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
