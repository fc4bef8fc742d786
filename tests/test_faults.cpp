// Fault tests: what the library does when the world misbehaves.
//  * Readers of outside data: every input a fuzzer ever crashed on (tests/fuzz/regressions/) is
//    rejected with tb::Error; the seed corpora are accepted; hostile headers (10^12 elements,
//    negative or overflowing offsets, files shorter than their header) fail before allocating.
//  * Checkpoints: a save killed half-way (SIGKILL, from a forked child) or failing (file size
//    limit = disk full) leaves the previous checkpoint whole and loadable.
//  * Training: NaN/Inf gradients are found and named (tb::nn::check_finite_grads).
//  * Resuming: a checkpoint that does not match the model lists every mismatch in one tb::Error.
#include "gradcheck.h"
#include "fuzz/harness.h"

#include <tb/nn_checks.h>

#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

namespace fs = std::filesystem;
using namespace tb;

namespace {

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

using Runner = bool (*)(const uint8_t*, size_t);
const std::pair<const char*, Runner> kTargets[] = {{"safetensors", tbfuzz::run_safetensors},
                                                   {"idx", tbfuzz::run_idx},
                                                   {"cifar", tbfuzz::run_cifar},
                                                   {"image", tbfuzz::run_image}};

// Files of tests/fuzz/<kind>/<target>, sorted (a missing folder has none).
std::vector<std::string> fuzz_files(const char* kind, const char* target) {
  fs::path dir = fs::path(TB_SOURCE_DIR) / "tests" / "fuzz" / kind / target;
  std::vector<std::string> out;
  if (fs::is_directory(dir))
    for (auto& e : fs::directory_iterator(dir))
      if (e.is_regular_file()) out.push_back(e.path().string());
  std::sort(out.begin(), out.end());
  return out;
}

// A fresh folder for one test, removed by the destructor.
struct TempDir {
  std::string path;
  TempDir() {
    std::string templ = (fs::temp_directory_path() / "tb_faults_XXXXXX").string();
    REQUIRE(mkdtemp(templ.data()) != nullptr);
    path = templ;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return path + "/" + name; }
};

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), (std::streamsize)bytes.size());
}

// A safetensors file from a header text and `data_bytes` bytes of data (value 1).
std::string safetensors_bytes(const std::string& header, size_t data_bytes) {
  std::string s(8, '\0');
  for (int k = 0; k < 8; k++) s[k] = (char)((uint64_t)header.size() >> (8 * k));
  return s + header + std::string(data_bytes, '\1');
}

// The header of a file holding one tensor "w": dtype, shape and data_offsets as JSON text.
std::string one_tensor(const std::string& dtype, const std::string& shape, const std::string& offsets) {
  return R"({"w":{"dtype":")" + dtype + R"(","shape":[)" + shape + R"(],"data_offsets":[)" + offsets + "]}}";
}

std::string be32(uint32_t v) {
  return {(char)(v >> 24), (char)(v >> 16), (char)(v >> 8), (char)v};
}

// load_safetensors must raise tb::Error containing `needle` without taking memory from the
// allocator (the tensors are allocated only after the whole header is checked).
void check_safetensors_rejected(const TempDir& dir, const std::string& bytes, const std::string& needle) {
  std::string path = dir / "bad.safetensors";
  write_bytes(path, bytes);
  const size_t before = memory_stats().in_use;
  reset_peak_memory();
  tbtest::check_error([&] { load_safetensors(path); }, {needle, path});
  CHECK(memory_stats().peak <= before + (1 << 20));
}

} // namespace

TEST_SUITE("faults") {

// ---- fuzzing: seeds and regressions ---------------------------------------------------------

TEST_CASE("fuzz seed corpora are valid inputs that every reader accepts") {
  for (auto& t : kTargets) {
    const char* target = t.first; // (not a structured binding: clang 14 cannot capture those)
    auto files = fuzz_files("corpus", target);
    CHECK_MESSAGE(!files.empty(), "no seeds for " << target);
    for (auto& f : files) {
      auto bytes = read_bytes(f);
      CHECK_MESSAGE(t.second(bytes.data(), bytes.size()), "seed rejected: " << f);
    }
  }
}

TEST_CASE("inputs that crashed a fuzzer are now rejected with tb::Error (or load, if valid)") {
  // Files named valid-* are well-formed inputs that crashed a reader: they must now load.
  int replayed = 0;
  for (auto& t : kTargets)
    for (auto& f : fuzz_files("regressions", t.first)) {
      auto bytes = read_bytes(f);
      bool valid = fs::path(f).filename().string().rfind("valid-", 0) == 0;
      CHECK_MESSAGE(t.second(bytes.data(), bytes.size()) == valid, "regression input " << f);
      replayed++;
    }
  MESSAGE("replayed " << replayed << " fuzzer regression inputs");
}

TEST_CASE("image: a JPEG scan that decodes with a Huffman table no DHT defined is refused") {
  // A valid baseline JPEG (a fuzz seed; its first byte is the harness's channel count) whose
  // second and third components are switched to DC/AC table 2, which it never defines. stb_image
  // 2.27 would decode them with whatever its heap held (found by fuzzing).
  auto seed = read_bytes((fs::path(TB_SOURCE_DIR) / "tests/fuzz/corpus/image/jpeg_rgb_q95").string());
  std::string jpeg(seed.begin() + 1, seed.end());
  size_t sos = jpeg.find("\xff\xda");
  REQUIRE(sos != std::string::npos);
  REQUIRE(jpeg[sos + 4] == 3); // three components: id, tables; id, tables; id, tables
  TempDir dir;
  write_bytes(dir / "ok.jpg", jpeg);
  CHECK(data::read_image(dir / "ok.jpg", 3).size(2) == 3);
  jpeg[sos + 8] = jpeg[sos + 10] = 0x22;
  write_bytes(dir / "bad.jpg", jpeg);
  tbtest::check_error([&] { data::read_image(dir / "bad.jpg", 3); },
                      {"read_image", dir / "bad.jpg", "Huffman table DC 2", "no DHT segment"});
}

// ---- limits: hostile headers fail before any large allocation -------------------------------

TEST_CASE("safetensors: huge, negative, overflowing and truncated headers") {
  TempDir dir;
  // 10^12 float32 elements claimed by a 16-byte data buffer
  check_safetensors_rejected(dir, safetensors_bytes(one_tensor("F32", "1000000,1000000", "0,4000000000000"), 16),
                             "outside the 16-byte data buffer");
  // the same claim with offsets that agree with the buffer size
  check_safetensors_rejected(dir, safetensors_bytes(one_tensor("F32", "1000000,1000000", "0,16"), 16),
                             "needs 4000000000000");
  // element count overflowing int64
  check_safetensors_rejected(dir, safetensors_bytes(one_tensor("F64", "4294967296,4294967296", "0,8"), 8),
                             "overflows int64");
  // negative and overflowing offsets
  check_safetensors_rejected(dir, safetensors_bytes(one_tensor("U8", "8", "-8,0"), 8), "[-8, 0] outside");
  check_safetensors_rejected(
      dir, safetensors_bytes(one_tensor("U8", "8", "9223372036854775800,9223372036854775807"), 8), "outside");
  check_safetensors_rejected(dir, safetensors_bytes(one_tensor("U8", "8", "0,99999999999999999999"), 8),
                             "does not fit in int64");
  // file shorter than its header says: header length, then tensor data
  std::string header = one_tensor("F32", "4", "0,16");
  std::string bytes = safetensors_bytes(header, 16);
  check_safetensors_rejected(dir, bytes.substr(0, 8 + header.size() / 2), "larger than");
  check_safetensors_rejected(dir, bytes.substr(0, bytes.size() - 4), "outside the 12-byte data buffer");
  std::string absurd(8, '\xff');
  check_safetensors_rejected(dir, absurd + "{}", "absurd");
}

TEST_CASE("safetensors: a header with 100,000 entries parses in linear time") {
  // Duplicate keys used to be found by a scan per key: 5·10^9 string compares here (tens of
  // seconds), and days for a 100 MB header of short keys.
  std::string header = R"({"__metadata__":{)";
  for (int i = 0; i < 100000; i++) header += fmt::format(R"({}"key{}":"v")", i ? "," : "", i);
  header += R"(},"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})";
  TempDir dir;
  write_bytes(dir / "many.safetensors", safetensors_bytes(header, 1));
  auto t0 = std::chrono::steady_clock::now();
  SafetensorsFile f = load_safetensors(dir / "many.safetensors");
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(f.metadata.size() == 100000);
  CHECK(seconds < 10);
  // and a duplicate among them is still found
  write_bytes(dir / "dup.safetensors",
              safetensors_bytes(R"({"__metadata__":{"a":"1","b":"2","a":"3"}})", 0));
  tbtest::check_error([&] { load_safetensors(dir / "dup.safetensors"); }, {"duplicate key 'a'"});
}

TEST_CASE("safetensors: an empty tensor with huge dimensions is no undefined behaviour") {
  // [0, 2^40, 2^40] has no elements, but its row-major strides overflow int64.
  TempDir dir;
  std::string path = dir / "zero.safetensors";
  write_bytes(path, safetensors_bytes(one_tensor("F32", "0,1099511627776,1099511627776", "0,0"), 0));
  try {
    SafetensorsFile f = load_safetensors(path);
    CHECK(f.tensors.at("w").numel() == 0);
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("overflow") != std::string::npos);
  }
}

TEST_CASE("IDX: headers claiming more than the file holds fail before allocating") {
  TempDir dir;
  const std::string labels = dir / "labels";
  write_bytes(labels, be32(0x801) + be32(2) + std::string("\1\2", 2));
  // 10^12 pixels (10^6 images of 1000×1000) in a 16-byte file, plain and gzip
  const std::string huge = be32(0x803) + be32(1000000) + be32(1000) + be32(1000);
  write_bytes(dir / "huge", huge);
  tbtest::check_error([&] { data::IdxDataset(dir / "huge", labels); },
                      {"truncated", "1000000 images of 1000×1000", "only 16 bytes"});
  tbfuzz::write_file(dir / "huge.gz", (const uint8_t*)huge.data(), huge.size(), true);
  tbtest::check_error([&] { data::IdxDataset(dir / "huge.gz", labels); }, {"truncated", "(gzip)"});
  // 2 images of 28×28 but only 100 pixel bytes
  write_bytes(dir / "short", be32(0x803) + be32(2) + be32(28) + be32(28) + std::string(100, '\0'));
  tbtest::check_error([&] { data::IdxDataset(dir / "short", labels); }, {"truncated", "2 images of 28×28"});
  // a gzip stream cut in the middle
  std::string full = be32(0x803) + be32(2) + be32(28) + be32(28) + std::string(2 * 28 * 28, '\7');
  tbfuzz::write_file(dir / "cut.gz", (const uint8_t*)full.data(), full.size(), true);
  auto gz = read_bytes(dir / "cut.gz");
  write_bytes(dir / "cut.gz", std::string(gz.begin(), gz.begin() + (std::ptrdiff_t)gz.size() / 2));
  tbtest::check_error([&] { data::IdxDataset(dir / "cut.gz", labels); }, {"cut.gz"});
  // more bytes than the header describes, and a labels count that differs
  write_bytes(dir / "long", be32(0x803) + be32(2) + be32(1) + be32(1) + std::string(3, '\0'));
  tbtest::check_error([&] { data::IdxDataset(dir / "long", labels); }, {"more bytes than"});
  write_bytes(dir / "three", be32(0x803) + be32(3) + be32(1) + be32(1) + std::string(3, '\0'));
  tbtest::check_error([&] { data::IdxDataset(dir / "three", labels); }, {"3 images", "2 labels"});
}

TEST_CASE("CIFAR: truncated records and bad labels are named") {
  TempDir dir;
  write_bytes(dir / "test_batch.bin", std::string(3073 + 100, '\0'));
  tbtest::check_error([&] { data::CIFAR10(dir.path, false); }, {"test_batch.bin", "3173 bytes", "3073-byte record"});
  write_bytes(dir / "test_batch.bin", std::string(1, '\x0a') + std::string(3072, '\0'));
  tbtest::check_error([&] { data::CIFAR10(dir.path, false); }, {"record 0 has label 10"});
}

TEST_CASE("images: bombs, truncated files and 16-bit PNM channel conversion") {
  TempDir dir;
  // PNG signature + IHDR of 10000 × 10000 RGBA + an empty IDAT: 400 MB claimed by 65 bytes (stb
  // itself refuses PNGs over 1 GB, and would allocate this one before finding the IDAT empty).
  std::string png = "\x89PNG\r\n\x1a\n";
  auto chunk = [](const std::string& type, const std::string& body) {
    std::string c = be32((uint32_t)body.size()) + type + body;
    uint32_t crc = (uint32_t)crc32(0, (const Bytef*)c.data() + 4, (uInt)(c.size() - 4));
    return c + be32(crc);
  };
  png += chunk("IHDR", be32(10000) + be32(10000) + std::string("\x08\x06\x00\x00\x00", 5));
  png += chunk("IDAT", std::string("\x78\x9c\x03\x00\x00\x00\x00\x01", 8));
  png += chunk("IEND", "");
  write_bytes(dir / "bomb.png", png);
  tbtest::check_error([&] { data::read_image(dir / "bomb.png", 4); }, {"bomb.png", "10000×10000", "decompression bomb"});
  // a PGM shorter than its header says (stb_image returned uninitialised memory)
  write_bytes(dir / "short.pgm", std::string("P5 4 4 255\n\1\2\3", 14));
  tbtest::check_error([&] { data::read_image(dir / "short.pgm", 1); }, {"short.pgm", "truncated PNM", "4×4 pixels of 1 byte", "holds 3 bytes"});
  // 16-bit PGM asked for as RGBA (stb_image 2.27 read past its buffer): samples >> 8, alpha 255
  write_bytes(dir / "gray16.pgm", std::string("P5 2 1 65535\n\x12\x34\xff\xff", 17));
  Tensor img = data::read_image(dir / "gray16.pgm", 4);
  CHECK(img.shape() == Shape{1, 2, 4});
  CHECK(img.to_int_vector() == std::vector<int64_t>{0x12, 0x12, 0x12, 255, 255, 255, 255, 255});
  // a "JPEG" packed with 300 Huffman-table markers, each spanning 64 KB of empty tables: refused
  // after a bounded amount of work instead of checking 300 × 3855 tables
  std::string many = "\xff\xd8";
  for (int k = 0; k < 300; k++) many += std::string("\xff\xc4\xff\xff", 4) + std::string(65540, '\0');
  write_bytes(dir / "tables.jpg", many);
  tbtest::check_error([&] { data::read_image(dir / "tables.jpg"); }, {"tables.jpg", "over 1048576 Huffman tables"});
  write_bytes(dir / "garbage.png", "not an image at all");
  tbtest::check_error([&] { data::read_image(dir / "garbage.png"); }, {"garbage.png"});
  tbtest::check_error([&] { data::read_image(dir / "missing.png"); }, {"missing.png"});
}

// ---- checkpoints ----------------------------------------------------------------------------

namespace {

// Version v of a 16 MB state: 4 float32 tensors whose every element is v * 10 + k.
TensorDict checkpoint_version(int v) {
  TensorDict d;
  for (int k = 0; k < 4; k++) d.insert(fmt::format("layer{}.weight", k), full({1024, 1024}, v * 10 + k));
  return d;
}

// The version number stored in a loaded checkpoint, after checking every element agrees with it.
int loaded_version(const std::string& path) {
  SafetensorsFile f = load_safetensors(path);
  int v = std::stoi(f.metadata.at("version"));
  REQUIRE(f.tensors.size() == 4);
  for (int k = 0; k < 4; k++) {
    const Tensor& t = f.tensors.at(fmt::format("layer{}.weight", k));
    REQUIRE(t.shape() == Shape{1024, 1024});
    const float* p = t.data<float>();
    const float want = (float)(v * 10 + k);
    for (int64_t i = 0; i < t.numel(); i++)
      if (p[i] != want) FAIL("checkpoint mixes versions: element " << i << " of layer" << k << " is "
                              << p[i] << ", expected " << want);
  }
  return v;
}

} // namespace

TEST_CASE("a checkpoint write killed half-way leaves the previous checkpoint intact") {
  TempDir dir;
  const std::string path = dir / "ckpt.safetensors";
  const TensorDict v1 = checkpoint_version(1), v2 = checkpoint_version(2);
  save_safetensors(path, checkpoint_version(0), {{"version", "0"}});
  std::mt19937 rng(6);
  int interrupted = 0;
  for (int round = 0; round < 16; round++) {
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      // Child: save versions 1, 2, 1, 2, ... over the same path until killed.
      try {
        for (int v = 1;; v = 3 - v) save_safetensors(path, v == 1 ? v1 : v2, {{"version", std::to_string(v)}});
      } catch (...) {
        _exit(3);
      }
    }
    usleep(std::uniform_int_distribution<int>(1000, 60000)(rng));
    kill(pid, SIGKILL);
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    REQUIRE_MESSAGE((WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL), "the saving child failed");
    // Killed inside a save: its temporary file is left behind (and only that; path is whole).
    const std::string tmp = fmt::format("{}.tmp.{}", path, (long)pid);
    if (fs::exists(tmp)) {
      interrupted++;
      fs::remove(tmp);
    }
    int v = loaded_version(path);
    CHECK((v >= 0 && v <= 2));
  }
  MESSAGE(interrupted << " of 16 kills landed in the middle of a write");
  CHECK(interrupted >= 2); // else the test did not test anything (about 60% land mid-write)
}

TEST_CASE("a checkpoint write that fails (disk full) raises tb::Error and keeps the old file") {
  TempDir dir;
  const std::string path = dir / "ckpt.safetensors";
  save_safetensors(path, checkpoint_version(0), {{"version", "0"}});
  const TensorDict v1 = checkpoint_version(1);
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    // Child: files may not grow past 1 MB, as on a full disk (EFBIG instead of ENOSPC).
    signal(SIGXFSZ, SIG_IGN);
    rlimit lim{1 << 20, 1 << 20};
    setrlimit(RLIMIT_FSIZE, &lim);
    try {
      save_safetensors(path, v1, {{"version", "1"}});
      _exit(1); // no error: the failure went unnoticed
    } catch (const Error& e) {
      _exit(std::strstr(e.what(), path.c_str()) && std::strstr(e.what(), "failed") ? 0 : 2);
    } catch (...) {
      _exit(3);
    }
  }
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  CHECK_MESSAGE(WEXITSTATUS(status) == 0, "child status " << WEXITSTATUS(status)
                << " (1: no error, 2: message lacks the path, 3: other exception)");
  CHECK(loaded_version(path) == 0);
  CHECK_FALSE(fs::exists(fmt::format("{}.tmp.{}", path, (long)pid))); // cleaned up
}

TEST_CASE("a checkpoint into a folder that does not exist fails at once, naming it") {
  TempDir dir;
  tbtest::check_error([&] { save_safetensors(dir / "no/such/dir/ckpt.safetensors", {{"w", ones({2})}}); },
                      {"no/such/dir/ckpt.safetensors"});
  CHECK(fs::is_empty(dir.path));
}

// ---- NaN / Inf gradients --------------------------------------------------------------------

namespace {

std::shared_ptr<nn::Sequential> small_net() {
  manual_seed(3);
  return std::make_shared<nn::Sequential>(std::initializer_list<nn::ModulePtr>{
      std::make_shared<nn::Linear>(4, 3), std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(3, 2)});
}

void backward_once(nn::Module& net, double scale) {
  net.zero_grad();
  Tensor y = net(randn({5, 4}));
  mul(sum(y), scale).backward();
}

} // namespace

TEST_CASE("finite gradients pass the check") {
  auto net = small_net();
  backward_once(*net, 1.0);
  CHECK(nn::nonfinite_grads(*net).empty());
  CHECK_NOTHROW(nn::check_finite_grads(*net, 3));
  net->zero_grad(); // no gradients at all: nothing to report
  CHECK_NOTHROW(nn::check_finite_grads(*net));
}

TEST_CASE("a NaN or Inf gradient is reported with the step and the parameter name") {
  auto net = small_net();
  backward_once(*net, 1.0);
  Tensor g = net->get_submodule("2").get("bias").grad();
  g.data<float>()[1] = std::numeric_limits<float>::quiet_NaN();
  tbtest::check_error([&] { nn::check_finite_grads(*net, 7); },
                      {"step 7", "'2.bias'", "[2]", "1 NaN/Inf value", "nan at [1]"});
  // a second bad parameter: the first in named_parameters() order is detailed, the other named
  Tensor w = net->get_submodule("0").get("weight").grad();
  w.data<float>()[1 * 4 + 2] = -std::numeric_limits<float>::infinity();
  w.data<float>()[2 * 4 + 0] = std::numeric_limits<float>::infinity();
  auto bad = nn::nonfinite_grads(*net);
  REQUIRE(bad.size() == 2);
  CHECK(bad[0].name == "0.weight");
  CHECK(bad[0].count == 2);
  CHECK(bad[0].first == 6);
  CHECK(bad[0].value == -std::numeric_limits<double>::infinity());
  tbtest::check_error([&] { nn::check_finite_grads(*net, 12); },
                      {"step 12", "'0.weight' [3, 4] has 2 NaN/Inf values (first: -inf at [1, 2])",
                       "1 more parameter", "'2.bias'"});
}

TEST_CASE("an overflowing loss makes every gradient non-finite, and the check names them") {
  auto net = small_net();
  backward_once(*net, std::numeric_limits<double>::infinity());
  auto bad = nn::nonfinite_grads(*net);
  REQUIRE(!bad.empty());
  CHECK(bad.back().name == "2.bias"); // d loss / d bias = inf for every output
  tbtest::check_error([&] { nn::check_finite_grads(*net, 0); }, {"step 0", "2.bias"});
}

TEST_CASE("all_finite on every float width, integer tensors and empty tensors") {
  for (DType dt : {kFloat32, kFloat64, kFloat16, kBFloat16}) {
    CAPTURE(dt);
    Tensor t = zeros({3, 5}, dt);
    CHECK(nn::all_finite(t));
    t.select(0, 2).select(0, 4).fill_(std::numeric_limits<double>::infinity());
    CHECK_FALSE(nn::all_finite(t));
    t.fill_(std::numeric_limits<double>::quiet_NaN());
    CHECK_FALSE(nn::all_finite(t.narrow(1, 1, 2))); // a non-contiguous view
    CHECK(nn::all_finite(t.narrow(1, 1, 0)));
  }
  CHECK(nn::all_finite(full({4}, 7, kInt64)));
  CHECK(nn::all_finite(ones({2}, kBool)));
  // a huge but finite value is finite
  CHECK(nn::all_finite(full({2}, std::numeric_limits<float>::max(), kFloat32)));
}

// ---- mismatched checkpoints -----------------------------------------------------------------

TEST_CASE("loading a checkpoint that does not match the model names every mismatch at once") {
  auto make = [] {
    return std::make_shared<nn::Sequential>(std::initializer_list<nn::ModulePtr>{
        std::make_shared<nn::Linear>(4, 3), std::make_shared<nn::BatchNorm1d>(3), std::make_shared<nn::Linear>(3, 2)});
  };
  auto saved = make();
  StateDict sd = saved->state_dict();
  REQUIRE(sd.erase("0.bias"));                                  // missing key
  sd.set("2.weight", zeros({2, 4}));                            // shape differs
  sd.set("1.running_mean", zeros({3}, kFloat64));               // dtype differs
  sd.insert("3.weight", zeros({1}));                            // not in the model
  TempDir dir;
  const std::string path = dir / "mismatch.safetensors";
  save_safetensors(path, sd);

  auto model = make();
  StateDict before = model->state_dict();
  std::vector<std::vector<double>> values;
  for (auto& [k, t] : before) values.push_back(t.to_vector());
  tbtest::check_error([&] { nn::load(*model, path); },
                      {path, "4 error(s)", "missing keys: '0.bias'", "size mismatch for '2.weight'", "[2, 4]",
                       "[2, 3]", "dtype mismatch for '1.running_mean'", "float64", "unexpected keys: '3.weight'"});
  // all or nothing: the model is unchanged
  size_t i = 0;
  for (auto& item : model->state_dict()) CHECK_MESSAGE(item.second.to_vector() == values[i++], item.first);
}

} // TEST_SUITE
