// safetensors: round trip of every dtype and layout, the byte layout, metadata, atomic writes,
// every kind of corrupt / truncated / absurd file, and the PyTorch fixture
// (tools/make_safetensors_fixture.py) loading into the equivalent tb model.
#include "gradcheck.h"

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <sys/stat.h>
#include <unistd.h>

using namespace tb;
using tbtest::check_error;
namespace fs = std::filesystem;

namespace {

// A scratch directory per test process, removed by the last test case.
const std::string& scratch() {
  static const std::string dir = [] {
    std::string d = (fs::temp_directory_path() / ("tb_test_safetensors_" + std::to_string(::getpid()))).string();
    fs::create_directories(d);
    return d;
  }();
  return dir;
}

std::string write_raw(const std::string& name, const std::string& bytes) {
  std::string path = scratch() + "/" + name;
  std::ofstream(path, std::ios::binary).write(bytes.data(), (std::streamsize)bytes.size());
  return path;
}

std::string read_raw(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string le64(uint64_t n) {
  std::string s(8, '\0');
  for (int k = 0; k < 8; k++) s[k] = (char)(n >> (8 * k));
  return s;
}

// A file with the given header and data bytes (length field = header size).
std::string st_file(const std::string& header, const std::string& data) {
  return le64(header.size()) + header + data;
}

void check_same(const Tensor& a, const Tensor& b) {
  CHECK(a.dtype() == b.dtype());
  CHECK(a.shape() == b.shape());
  if (a.dtype() == kInt64) CHECK(a.to_int_vector() == b.to_int_vector());
  else CHECK(a.to_vector() == b.to_vector());
}

} // namespace

TEST_SUITE("safetensors") {

TEST_CASE("round trip of every dtype, scalars, empty and non-contiguous tensors, in order") {
  manual_seed(5);
  Tensor f32 = randn({2, 3});
  TensorDict d;
  d.insert("z_f32", f32);
  d.insert("f64", randn({4}, TensorOptions(kFloat64)));
  d.insert("f16", randn({3, 2}).to(kFloat16));
  d.insert("bf16", randn({5}).to(kBFloat16));
  d.insert("i64", from_vector(std::vector<int64_t>{1, -2, (int64_t)1 << 40, INT64_MIN + 1}, {2, 2}));
  d.insert("i32", from_vector(std::vector<int64_t>{7, -8, 2147483647}, {3}).to(kInt32));
  d.insert("i8", from_vector(std::vector<int64_t>{-128, 0, 127}, {3}).to(kInt8));
  d.insert("u8", from_vector(std::vector<int64_t>{0, 1, 255}, {3}).to(kUInt8));
  d.insert("bool", gt(f32, 0.0));
  d.insert("scalar", scalar_tensor(3.5));
  d.insert("empty", zeros({0, 3}));
  d.insert("transposed", randn({3, 4}).t());
  d.insert("channels_last", randn({2, 3, 4, 5}).contiguous_channels_last());
  d.insert("a_last", ones({1}));
  CHECK_FALSE(d.at("transposed").is_contiguous());

  std::string path = scratch() + "/all.safetensors";
  save_safetensors(path, d, {{"format", "pt"}, {"note", "tb"}});
  SafetensorsFile f = load_safetensors(path);
  CHECK(f.tensors.keys() == d.keys()); // header order = insertion order
  for (auto& [name, t] : d) {
    INFO(name);
    check_same(f.tensors.at(name), t);
    CHECK(f.tensors.at(name).is_contiguous());
  }
  CHECK(f.tensors.at("scalar").dim() == 0);
  CHECK(f.metadata == Metadata{{"format", "pt"}, {"note", "tb"}});

  // Layout: little-endian length, JSON object, data 8-byte aligned, first tensor at offset 0.
  std::string raw = read_raw(path);
  uint64_t n = 0;
  for (int k = 0; k < 8; k++) n |= (uint64_t)(uint8_t)raw[k] << (8 * k);
  CHECK((8 + n) % 8 == 0);
  CHECK(raw[8] == '{');
  CHECK(raw.find("\"z_f32\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}") != std::string::npos);
  float first;
  std::memcpy(&first, raw.data() + 8 + n, 4);
  CHECK(first == f32.to_vector()[0]);
}

TEST_CASE("metadata and names with escapes and unicode round trip") {
  Metadata md = {{"quote\"key", "line\nbreak\ttab\\ back\x01 ctl"}, {"unicode", "caf\xc3\xa9 \xf0\x9f\x98\x80"}};
  TensorDict d;
  d.insert("we\"ird/na\\me \xc3\xa9", ones({2}));
  std::string path = scratch() + "/escapes.safetensors";
  save_safetensors(path, d, md);
  SafetensorsFile f = load_safetensors(path);
  CHECK(f.metadata == md);
  CHECK(f.tensors.keys() == d.keys());
  // \u escapes written by other tools (here a surrogate pair for U+1F600) decode to UTF-8.
  std::string h = "{\"__metadata__\":{\"k\":\"\\u00e9\\ud83d\\ude00\\/\"},\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}";
  f = load_safetensors(write_raw("uescape.safetensors", st_file(h, "\x07")));
  CHECK(f.metadata.at("k") == "\xc3\xa9\xf0\x9f\x98\x80/");
  CHECK(f.tensors.at("t").to_vector() == std::vector<double>{7});
  // An empty file (no tensors) is valid.
  save_safetensors(path, TensorDict{});
  CHECK(load_safetensors(path).tensors.empty());
}

TEST_CASE("corrupt, truncated and absurd files raise tb::Error naming the file and the problem") {
  const std::string f32x2 = std::string(8, '\0'); // data for one F32 [2]
  auto entry = [](const std::string& name, const std::string& dtype, const std::string& shape,
                  const std::string& offsets) {
    return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape +
           ",\"data_offsets\":" + offsets + "}";
  };
  struct Case {
    const char* name;
    std::string bytes;
    std::vector<std::string> needles;
  };
  std::vector<Case> cases = {
      {"empty", "", {"shorter than the 8-byte"}},
      {"short", "abcde", {"file is 5 bytes"}},
      {"absurd_len", le64(1ull << 40) + "{}", {"absurd"}},
      {"len_past_end", le64(1000) + "{}      ", {"header length 1000", "larger than"}},
      {"truncated_json", st_file("{\"a\":", ""), {"invalid JSON", "unexpected end"}},
      {"trailing", st_file("{} x", ""), {"trailing"}},
      {"deep", st_file("{\"a\":[[[[[[[[[[[[1]]]]]]]]]]]}", ""), {"nesting deeper"}},
      {"float_shape", st_file("{" + entry("t", "F32", "[2.0]", "[0,8]") + "}", f32x2), {"non-integer"}},
      {"unknown_dtype", st_file("{" + entry("t", "C64", "[1]", "[0,8]") + "}", f32x2),
       {"tensor 't'", "unsupported dtype 'C64'"}},
      {"out_of_range", st_file("{" + entry("t", "F32", "[4]", "[0,16]") + "}", f32x2),
       {"[0, 16] outside the 8-byte"}},
      {"size_mismatch", st_file("{" + entry("t", "F32", "[3]", "[0,8]") + "}", f32x2),
       {"span 8 bytes", "needs 12"}},
      {"reversed", st_file("{" + entry("t", "F32", "[0]", "[8,0]") + "}", f32x2), {"outside"}},
      {"overlap", st_file("{" + entry("a", "F32", "[2]", "[0,8]") + "," + entry("b", "F32", "[2]", "[4,12]") + "}",
                          std::string(12, '\0')),
       {"'a' [0, 8] and 'b' [4, 12] overlap"}},
      {"hole", st_file("{" + entry("a", "F32", "[1]", "[0,4]") + "," + entry("b", "F32", "[1]", "[8,12]") + "}",
                       std::string(12, '\0')),
       {"bytes [4, 8) before tensor 'b' belong to no tensor"}},
      {"leftover", st_file("{" + entry("a", "F32", "[1]", "[0,4]") + "}", f32x2), {"has 8 bytes", "cover 4"}},
      {"overflow", st_file("{" + entry("t", "F32", "[4611686018427387904,4]", "[0,8]") + "}", f32x2),
       {"overflows int64"}},
      {"huge_tensor", st_file("{" + entry("t", "F64", "[1000000000000]", "[0,8000000000000]") + "}", f32x2),
       {"outside the 8-byte"}},
      {"negative_dim", st_file("{" + entry("t", "F32", "[-1]", "[0,8]") + "}", f32x2), {"non-negative"}},
      {"int64_overflow", st_file("{" + entry("t", "F32", "[2]", "[0,99999999999999999999]") + "}", f32x2),
       {"does not fit in int64"}},
      {"leading_zero", st_file("{" + entry("t", "F32", "[02]", "[0,8]") + "}", f32x2), {"leading zeros"}},
      {"duplicate", st_file("{" + entry("t", "F32", "[2]", "[0,8]") + "," + entry("t", "F32", "[0]", "[8,8]") + "}", f32x2),
       {"duplicate key 't'"}},
      {"bad_escape", st_file("{\"\\q\":1}", ""), {"unknown escape"}},
      {"lone_surrogate", st_file("{\"\\ud800\":1}", ""), {"surrogate"}},
      {"control_char", st_file("{\"a\x01\":1}", ""), {"control character"}},
      {"bad_utf8", st_file("{\"\xc3\x28\":1}", ""), {"invalid UTF-8"}},
      {"literal", st_file("{\"a\":true}", ""), {"unexpected character 't'"}},
      {"not_object", st_file("[1,2]", ""), {"header is an array, expected a JSON object"}},
      {"entry_not_object", st_file("{\"t\":[1]}", ""), {"entry 't' is an array"}},
      {"missing_field", st_file("{\"t\":{\"dtype\":\"F32\",\"shape\":[2]}}", f32x2), {"lacks data_offsets"}},
      {"unknown_field", st_file("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"x\":1}}", f32x2),
       {"unknown field 'x'"}},
      {"bad_offsets", st_file("{" + entry("t", "F32", "[2]", "[0]") + "}", f32x2), {"[begin, end]"}},
      {"metadata_int", st_file("{\"__metadata__\":{\"k\":1}}", ""), {"__metadata__ value of 'k'"}},
      {"bool_byte", st_file("{" + entry("t", "BOOL", "[2]", "[0,2]") + "}", std::string("\x01\x02", 2)),
       {"BOOL tensor 't' holds byte 2"}},
  };
  for (auto& c : cases) {
    INFO(c.name);
    std::string path = write_raw(std::string(c.name) + ".safetensors", c.bytes);
    auto needles = c.needles;
    needles.push_back(path);
    check_error([&] { load_safetensors(path); }, needles);
  }
  check_error([&] { load_safetensors(scratch() + "/does_not_exist.safetensors"); },
              {"cannot open", "does_not_exist"});
  // Truncating a valid file anywhere gives an error, never a crash.
  TensorDict d;
  d.insert("w", randn({3, 3}));
  d.insert("b", ones({3}, TensorOptions(kInt64)));
  std::string good = scratch() + "/good.safetensors";
  save_safetensors(good, d);
  std::string raw = read_raw(good);
  for (size_t len = 0; len < raw.size(); len += 7) {
    std::string p = write_raw("cut.safetensors", raw.substr(0, len));
    CHECK_THROWS_AS(load_safetensors(p), Error);
  }
  check_error([&] { save_safetensors(good, TensorDict{{"__metadata__", ones({1})}}); },
              {"reserved"});
}

TEST_CASE("writes are atomic: a failed save leaves the old file intact and no temp file") {
  std::string path = scratch() + "/ckpt.safetensors";
  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  TensorDict old_d;
  old_d.insert("v", from_vector(std::vector<float>{1, 2, 3}, {3}));
  save_safetensors(path, old_d);
  CHECK_FALSE(fs::exists(tmp));
  std::string old_bytes = read_raw(path);
  TensorDict new_d;
  new_d.insert("v", from_vector(std::vector<float>{4, 5}, {2}));

  // The temporary file cannot be created (a directory is in the way).
  fs::create_directory(tmp);
  check_error([&] { save_safetensors(path, new_d); }, {path, "cannot create temporary file"});
  fs::remove(tmp);
  CHECK(read_raw(path) == old_bytes);

  // An undefined tensor fails before anything is written.
  check_error([&] { save_safetensors(path, TensorDict{{"v", Tensor()}}); }, {"'v' is undefined"});
  CHECK(read_raw(path) == old_bytes);
  CHECK_FALSE(fs::exists(tmp));

  // The rename fails (the target is a non-empty directory): the temp file is removed.
  std::string dir_target = scratch() + "/is_a_dir";
  fs::create_directories(dir_target + "/child");
  check_error([&] { save_safetensors(dir_target, new_d); }, {dir_target, "rename failed"});
  CHECK_FALSE(fs::exists(dir_target + ".tmp." + std::to_string(::getpid())));
  CHECK(fs::is_directory(dir_target + "/child"));

  // A missing directory.
  check_error([&] { save_safetensors(scratch() + "/no/such/dir/x.safetensors", new_d); },
              {"cannot create temporary file"});

  // An unwritable directory (permission bits do not stop root, so only as a normal user).
  if (::geteuid() != 0) {
    std::string ro = scratch() + "/readonly";
    fs::create_directory(ro);
    save_safetensors(ro + "/c.safetensors", old_d);
    ::chmod(ro.c_str(), 0555);
    check_error([&] { save_safetensors(ro + "/c.safetensors", new_d); }, {"cannot create temporary file"});
    ::chmod(ro.c_str(), 0755);
    check_same(load_safetensors(ro + "/c.safetensors").tensors.at("v"), old_d.at("v"));
  }

  // A successful save replaces the file.
  save_safetensors(path, new_d);
  check_same(load_safetensors(path).tensors.at("v"), new_d.at("v"));
  CHECK_FALSE(fs::exists(tmp));
}

TEST_CASE("PyTorch fixture: dtype byte layouts match torch's") {
  SafetensorsFile f = load_safetensors(tbtest::fixture("nn_tiny_cnn_io.safetensors"));
  auto& t = f.tensors;
  CHECK(f.metadata.at("what") == "tb test fixture");
  CHECK(t.at("f64").to_vector() == std::vector<double>{1.5, -2.25, 1e-300, 3.141592653589793});
  CHECK(t.at("f32").to_vector() == std::vector<double>{1.5, -2.25, 65504.0, (double)1e-7f});
  // torch.tensor([...], dtype=torch.float16 / bfloat16).float().tolist()
  CHECK(t.at("f16").dtype() == kFloat16);
  CHECK(t.at("f16").to_vector() == std::vector<double>{1.5, -2.25, 65504.0, 6.103515625e-05, 0.0999755859375});
  CHECK(t.at("bf16").dtype() == kBFloat16);
  CHECK(t.at("bf16").to_vector() == std::vector<double>{1.5, -2.25, 3.00405527047391e+38, 0.10009765625});
  CHECK(t.at("i64").to_int_vector() == std::vector<int64_t>{1, -2, (int64_t)1 << 40, -((int64_t)1 << 62)});
  CHECK(t.at("i32").shape() == Shape{1, 3});
  CHECK(t.at("i32").to_int_vector() == std::vector<int64_t>{7, -8, 2147483647});
  CHECK(t.at("i8").to_int_vector() == std::vector<int64_t>{-128, 0, 127});
  CHECK(t.at("u8").to_int_vector() == std::vector<int64_t>{0, 1, 255});
  CHECK(t.at("bool").dtype() == kBool);
  CHECK(t.at("bool").to_int_vector() == std::vector<int64_t>{1, 0, 1});
  CHECK(t.at("scalar").dim() == 0);
  CHECK(t.at("scalar").item() == 2.5);
  CHECK(t.at("empty").shape() == Shape{0, 3});
}

TEST_CASE("PyTorch fixture: a torch state_dict loads into the equivalent tb model") {
  // torch.nn.Sequential(Conv2d(2, 3, 3, padding=1), BatchNorm2d(3), ReLU(), Flatten(),
  //                     Linear(48, 5)), BN trained on 3 batches, then eval.
  auto net = std::make_shared<nn::Sequential>();
  net->push_back(std::make_shared<nn::Conv2d>(nn::Conv2dOptions{.in_channels = 2, .out_channels = 3, .kernel_size = 3, .padding = 1}));
  net->push_back(std::make_shared<nn::BatchNorm2d>(3));
  net->push_back(std::make_shared<nn::ReLU>());
  net->push_back(std::make_shared<nn::Flatten>());
  net->push_back(std::make_shared<nn::Linear>(48, 5));
  std::string path = tbtest::fixture("nn_tiny_cnn.safetensors");
  SafetensorsFile f = load_safetensors(path);
  CHECK(f.tensors.keys() == net->state_dict().keys());
  CHECK(f.metadata.at("format") == "pt");
  nn::load(*net, path);

  auto sd = net->state_dict();
  CHECK(sd.at("0.weight").shape() == Shape{3, 2, 3, 3});
  CHECK(sd.at("4.weight").shape() == Shape{5, 48});
  CHECK(sd.at("1.num_batches_tracked").dtype() == kInt64);
  CHECK(sd.at("1.num_batches_tracked").item() == 3);
  // Values printed by the script (float32, so compared as float).
  auto w = sd.at("0.weight").to_vector();
  CHECK((float)w[0] == -0.0017646604683250189f);
  CHECK((float)w[1] == 0.12644097208976746f);
  CHECK((float)sd.at("1.running_mean").to_vector()[1] == -0.16061770915985107f);
  CHECK((float)sd.at("1.running_var").to_vector()[2] == 0.9653239846229553f);
  CHECK((float)sd.at("4.bias").to_vector()[0] == -0.10744836181402206f);

  // Eval-mode forward equals torch's. Tolerance 1e-5: float32 sums in a different order.
  SafetensorsFile io = load_safetensors(tbtest::fixture("nn_tiny_cnn_io.safetensors"));
  net->eval();
  Tensor y = (*net)(io.tensors.at("input"));
  CHECK(y.shape() == Shape{2, 5});
  CHECK(tbtest::max_abs_diff(y, io.tensors.at("output")) < 1e-5);
  CHECK(std::abs(io.tensors.at("output").to_vector()[0] - 0.24072200059890747) < 1e-7);

  // The same file into a model with a different head: every mismatch named.
  auto other = std::make_shared<nn::Sequential>();
  other->push_back(std::make_shared<nn::Conv2d>(nn::Conv2dOptions{.in_channels = 2, .out_channels = 3, .kernel_size = 3, .padding = 1}));
  other->push_back(std::make_shared<nn::BatchNorm2d>(3));
  other->push_back(std::make_shared<nn::ReLU>());
  other->push_back(std::make_shared<nn::Flatten>());
  other->push_back(std::make_shared<nn::Linear>(48, 10));
  check_error([&] { nn::load(*other, path); },
              {path, "size mismatch for '4.weight'", "size mismatch for '4.bias'"});

  fs::remove_all(scratch()); // last test case of the suite: clean up
}

} // TEST_SUITE
